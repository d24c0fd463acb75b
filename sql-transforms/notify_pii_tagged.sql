-- Notifications: a PII or GDPR tag put directly on an asset, or taken off
-- it. Propagated copies are not announced one by one (a table's tag can
-- reach thousands of columns); snapshot rows are not news.
--
-- A notification row names tenant_id, action (trigger, update, resolve),
-- subject (what it is about, the same for its trigger and its resolve) and
-- title; body, severity, url and incident_id are optional; every other
-- column is shown as a fact.
SELECT
    c.tenant_id,
    c._commit_lsn,
    c._seq,
    c._commit_time,
    CASE WHEN c._op = 'd' THEN 'resolve' ELSE 'trigger' END AS action,
    concat(uuid_text(c.asset_guid), '/', c.tag) AS subject,
    concat(
        c.tag,
        CASE WHEN c._op = 'd' THEN ' removed from ' ELSE ' added to ' END,
        coalesce(a.qualified_name, uuid_text(c.asset_guid))
    ) AS title,
    'medium' AS severity,
    c.tag,
    a.type_name AS asset_type,
    a.qualified_name
FROM changes.classifications c
LEFT JOIN state.assets a ON a.guid = c.asset_guid AND a.tenant_id = c.tenant_id
WHERE c._op IN ('c', 'd')
  AND c.source = 'direct'
  AND c.tag IN ('PII', 'GDPR')
