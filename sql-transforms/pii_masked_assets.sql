-- Asset changes for tools without PII clearance: the description of an
-- asset tagged PII (directly or by propagation) is masked; the asset itself
-- stays visible. Joins the change against the catalog state, no round trip.
SELECT
    c._op,
    c._commit_lsn,
    c._seq,
    c.guid,
    c.tenant_id,
    c.type_name,
    c.qualified_name,
    CASE WHEN pii.asset_guid IS NULL THEN c.description ELSE '****' END AS description,
    pii.asset_guid IS NOT NULL AS pii
FROM changes.assets c
LEFT JOIN (
    SELECT DISTINCT tenant_id, asset_guid
    FROM state.classifications
    WHERE tag = 'PII'
) pii
  ON pii.tenant_id = c.tenant_id AND pii.asset_guid = c.guid
