-- Propagation of asset attributes through lineage (which attributes and
-- values is set in the [propagation] section of the config, e.g. a
-- deprecated certificate).
--
-- Input `origins` lists the (tenant_id, origin_guid, attribute) to
-- re-compute; `state.asset_attributes` holds each asset's configured values.
-- Every asset downstream of an origin, at any depth, gets its values,
-- propagated from it; a lineage edge whose blocked_tags names the attribute
-- stops it. Cycles end because UNION keeps each row once.
WITH RECURSIVE reach (tenant_id, origin_guid, attribute, value, asset_guid) AS (
    SELECT a.tenant_id, a.asset_guid AS origin_guid, a.attribute, a.value, a.asset_guid
    FROM origins o
    JOIN state.asset_attributes a
      ON a.tenant_id = o.tenant_id
     AND a.asset_guid = o.origin_guid
     AND a.attribute = o.attribute
  UNION
    SELECT r.tenant_id, r.origin_guid, r.attribute, r.value, e.downstream_guid
    FROM reach r
    JOIN state.lineage_edges e
      ON e.tenant_id = r.tenant_id
     AND e.upstream_guid = r.asset_guid
    WHERE NOT array_has(e.blocked_tags, r.attribute)
)
SELECT tenant_id, asset_guid, attribute, value, origin_guid AS propagated_from
FROM reach
WHERE asset_guid <> origin_guid
