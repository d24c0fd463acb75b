-- Search documents for the search sink: one per asset, with its tags
-- (direct and propagated) and the incidents on it that are not resolved.
--
-- A change of an asset, of one of its tags, of an incident link or of a
-- linked incident re-indexes the asset, versioned by the commit LSN (the
-- sink never lets an older version overwrite a newer one). The document is
-- built from the catalog state, so it is always the asset as it is now; an
-- asset that is no longer there becomes a delete.
--
-- The sink needs _op ('d' deletes), _commit_lsn, _id and tenant_id; every
-- column not starting with _ is a field of the document, and must be in
-- the index mapping (sinks/src/elasticsearch/assets.json).
WITH touched AS (
    SELECT tenant_id, guid AS asset_guid, _commit_lsn, _commit_time FROM changes.assets
    UNION ALL
    SELECT tenant_id, asset_guid, _commit_lsn, _commit_time FROM changes.classifications
    UNION ALL
    SELECT tenant_id, asset_guid, _commit_lsn, _commit_time FROM changes.incident_assets
    UNION ALL
    SELECT l.tenant_id, l.asset_guid, i._commit_lsn, i._commit_time
      FROM changes.incidents i
      JOIN state.incident_assets l
        ON l.tenant_id = i.tenant_id AND l.incident_id = i.incident_id
),
docs AS (
    SELECT tenant_id, asset_guid, max(_commit_lsn) AS _commit_lsn, max(_commit_time) AS changed_at
      FROM touched
     WHERE asset_guid IS NOT NULL AND tenant_id IS NOT NULL
     GROUP BY tenant_id, asset_guid
),
tags AS (
    SELECT c.tenant_id, c.asset_guid,
           array_agg(DISTINCT c.tag) AS tags,
           array_agg(DISTINCT c.tag) FILTER (WHERE c.source = 'direct') AS direct_tags,
           array_agg(DISTINCT c.tag) FILTER (WHERE c.source = 'propagated') AS propagated_tags
      FROM state.classifications c
      JOIN docs d ON d.tenant_id = c.tenant_id AND d.asset_guid = c.asset_guid
     GROUP BY c.tenant_id, c.asset_guid
),
incidents AS (
    SELECT l.tenant_id, l.asset_guid,
           array_agg(named_struct(
               'incident_id', uuid_text(i.incident_id),
               'title', i.title,
               'state', i.state,
               'severity', i.severity,
               'incident_type', i.incident_type,
               'url', i.url,
               'updated_at', i.updated_at
           ) ORDER BY i.updated_at DESC) AS incidents,
           count(*) AS open_incidents
      FROM state.incident_assets l
      JOIN docs d ON d.tenant_id = l.tenant_id AND d.asset_guid = l.asset_guid
      JOIN state.incidents i ON i.tenant_id = l.tenant_id AND i.incident_id = l.incident_id
     WHERE i.state <> 'resolved'
     GROUP BY l.tenant_id, l.asset_guid
)
SELECT
    CASE WHEN a.guid IS NULL THEN 'd' ELSE 'u' END AS _op,
    d._commit_lsn,
    uuid_text(d.asset_guid) AS _id,
    d.tenant_id,
    uuid_text(d.asset_guid) AS guid,
    a.type_name,
    a.qualified_name,
    a.name,
    a.description,
    a.owners,
    a.certificate,
    t.tags,
    t.direct_tags,
    t.propagated_tags,
    i.incidents,
    coalesce(i.open_incidents, 0) AS open_incidents,
    d.changed_at
FROM docs d
LEFT JOIN state.assets a ON a.guid = d.asset_guid AND a.tenant_id = d.tenant_id
LEFT JOIN tags t ON t.tenant_id = d.tenant_id AND t.asset_guid = d.asset_guid
LEFT JOIN incidents i ON i.tenant_id = d.tenant_id AND i.asset_guid = d.asset_guid
