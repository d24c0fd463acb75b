-- Propagation of classifications through lineage.
--
-- Input `origins` lists the (tenant_id, origin_guid, tag) to re-compute.
-- An origin propagates when it carries that tag directly with propagate on.
-- Every asset downstream of it, at any depth, gets the tag, propagated from
-- the origin. UNION (not UNION ALL) keeps each (origin, tag, asset) once, so
-- the recursion ends on cycles. A lineage edge whose blocked_tags names the
-- tag stops it there. Output: the propagated classifications the origins
-- justify; Lily writes them back and retracts what they no longer justify.
WITH RECURSIVE reach (tenant_id, origin_guid, tag, asset_guid) AS (
    SELECT c.tenant_id, c.asset_guid AS origin_guid, c.tag, c.asset_guid
    FROM origins o
    JOIN state.classifications c
      ON c.tenant_id = o.tenant_id
     AND c.asset_guid = o.origin_guid
     AND c.tag = o.tag
    WHERE c.source = 'direct' AND c.propagate
  UNION
    SELECT r.tenant_id, r.origin_guid, r.tag, e.downstream_guid
    FROM reach r
    JOIN state.lineage_edges e
      ON e.tenant_id = r.tenant_id
     AND e.upstream_guid = r.asset_guid
    WHERE NOT array_has(e.blocked_tags, r.tag)
)
SELECT tenant_id, asset_guid, tag, origin_guid AS propagated_from
FROM reach
WHERE asset_guid <> origin_guid
