-- Notifications: an incident opened (trigger), changed (update: its state
-- or severity moved) and resolved (resolve). The subject is the incident,
-- so a JIRA issue or a PagerDuty alert opened for it follows it to the end.
-- Snapshot rows are not news.
SELECT
    i.tenant_id,
    i._commit_lsn,
    i._seq,
    i._commit_time,
    CASE
        WHEN i._op = 'c' THEN 'trigger'
        WHEN i.state = 'resolved' THEN 'resolve'
        ELSE 'update'
    END AS action,
    uuid_text(i.incident_id) AS subject,
    uuid_text(i.incident_id) AS incident_id,
    coalesce(i.title, concat(i.source_system, ' incident ', i.external_id)) AS title,
    i.severity,
    i.url,
    i.state,
    i.incident_type,
    i.source_system AS source
FROM changes.incidents i
WHERE i._op IN ('c', 'u')
