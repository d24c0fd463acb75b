-- Notifications: what one change of policy did to a table's columns, one
-- message per table and cause rather than one per column ("tag GDPR
-- added: 12 columns of analytics.sales.orders now MASK_HASH"). The rows
-- are policy events (metastore.column_policies), written once per
-- snapshot for every column whose effective policy changed; snapshot rows
-- are not news.
SELECT
    c.tenant_id,
    max(c._commit_lsn) AS _commit_lsn,
    min(c._seq) AS _seq,
    max(c._commit_time) AS _commit_time,
    'update' AS action,
    concat(c.table_qualified_name, ' / ', c.cause, ' / ', max(c.policy_version)) AS subject,
    concat(
        c.cause, ': ',
        count(*), CASE WHEN count(*) = 1 THEN ' column of ' ELSE ' columns of ' END,
        c.table_qualified_name,
        CASE WHEN c.mask IS NULL THEN ' now unmasked' ELSE concat(' now ', c.mask) END
    ) AS title,
    'low' AS severity,
    c.table_qualified_name AS table_name,
    c.cause,
    coalesce(c.mask, 'none') AS mask,
    count(*) AS columns,
    array_to_string(array_agg(c.column_name ORDER BY c.column_name), ', ') AS column_names,
    max(c.policy_version) AS policy_version
FROM changes.column_policies c
WHERE c._op IN ('c', 'u')
GROUP BY c.tenant_id, c.table_qualified_name, c.cause, c.mask
