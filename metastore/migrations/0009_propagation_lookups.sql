-- Propagation's write-back looks up each copy by tenant, tag (or attribute),
-- origin and asset. The origin indexes stopped at the origin, and a planner
-- without statistics (a table not yet analyzed, as after a first large
-- write-back) chose them and then filtered every copy of the origin for each
-- copy: 10k copies took 3-7 s instead of 0.3 s. With the asset as their last
-- column, each probe is exact whichever index the planner picks; look-ups by
-- tag or by origin use the same prefix as before.
DROP INDEX metastore.classifications_tag_origin;
CREATE INDEX classifications_tag_origin
    ON metastore.classifications (tenant_id, tag, propagated_from, asset_guid);
DROP INDEX metastore.propagated_attributes_origin;
CREATE INDEX propagated_attributes_origin
    ON metastore.propagated_attributes (tenant_id, propagated_from, attribute, asset_guid);
