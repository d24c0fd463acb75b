-- Lineage propagation: tags blocked at a lineage edge, asset attributes
-- propagated downstream, and the indexes propagation's write-back needs.

-- A tag named here does not propagate through this edge (Atlas's
-- "blocked propagated classifications").
ALTER TABLE metastore.lineage_edges ADD COLUMN blocked_tags text[] NOT NULL DEFAULT '{}';

-- One index serves "which assets carry this tag" and finding the copies of
-- an origin when they are re-computed; one index fewer to maintain on every
-- propagated write.
DROP INDEX metastore.classifications_tag;
CREATE INDEX classifications_tag_origin ON metastore.classifications (tenant_id, tag, propagated_from);

-- Asset attributes (a deprecated certificate, an owner) carried to every
-- downstream asset, one row per (asset, attribute, value, origin), so that
-- removing the value at its origin retracts exactly what it justified.
CREATE TABLE metastore.propagated_attributes (
    tenant_id       text NOT NULL,
    asset_guid      uuid NOT NULL,
    attribute       text NOT NULL,
    value           text NOT NULL,
    propagated_from uuid NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, asset_guid, attribute, value, propagated_from),
    FOREIGN KEY (tenant_id, asset_guid) REFERENCES metastore.assets (tenant_id, guid) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, propagated_from) REFERENCES metastore.assets (tenant_id, guid) ON DELETE CASCADE
);
CREATE INDEX propagated_attributes_origin ON metastore.propagated_attributes (tenant_id, propagated_from, attribute);
ALTER TABLE metastore.propagated_attributes REPLICA IDENTITY FULL;

GRANT SELECT, INSERT, UPDATE, DELETE ON metastore.propagated_attributes TO "${tenant_role}";
ALTER TABLE metastore.propagated_attributes ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON metastore.propagated_attributes
    USING (tenant_id = current_setting('lily.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('lily.tenant_id', true));
