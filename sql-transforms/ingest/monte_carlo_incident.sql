-- target: incidents
--
-- A Monte Carlo incident notification (inbound/schemas/monte-carlo-event.v1
-- has already checked its shape), mapped onto a metastore incident and the
-- assets it concerns. The tenant comes from the authenticated sender, never
-- from the payload.
--
-- A column left NULL keeps the incident's current value, so a status update
-- that carries no tables or severity changes only what it says.
CREATE TABLE payload (
    type    VARCHAR,
    payload STRUCT<
        incident_id   VARCHAR,
        incident_type VARCHAR,
        url           VARCHAR,
        severity      VARCHAR,
        status        VARCHAR,
        event_list    STRUCT<table_name VARCHAR, type VARCHAR>[]
    >
);

WITH events AS (
    SELECT p.payload['incident_id'] AS incident_id,
           unnest(p.payload['event_list']) AS event
    FROM payload p
),
tables AS (
    -- Monte Carlo names a table "warehouse:schema.table"; the catalog's
    -- qualified names are dotted.
    SELECT incident_id,
           array_agg(DISTINCT replace(event['table_name'], ':', '.')) AS names,
           min(event['table_name']) AS first_table
    FROM events
    WHERE event['table_name'] IS NOT NULL
    GROUP BY incident_id
),
incidents AS (
    SELECT p.payload['incident_id'] AS incident_id,
           lower(p.type) AS notification,
           lower(coalesce(
               p.payload['incident_type'],
               -- new_freshness_anomaly_incident -> freshness_anomaly
               CASE WHEN p.type LIKE '%\_incident' ESCAPE '\'
                    THEN regexp_replace(p.type, '^(new|open|opened)_|_incident$', '', 'g') END
           )) AS incident_type,
           p.payload['url'] AS url,
           upper(p.payload['severity']) AS severity,
           lower(p.payload['status']) AS status
    FROM payload p
)
SELECT
    'monte_carlo' AS source_system,
    i.incident_id AS external_id,
    i.incident_type,
    CASE WHEN i.incident_type IS NOT NULL AND t.first_table IS NOT NULL
         THEN replace(i.incident_type, '_', ' ') || ' on ' || replace(t.first_table, ':', '.') END AS title,
    CASE
        WHEN i.status IN ('fixed', 'resolved', 'closed', 'expected', 'no_action_needed', 'false_positive') THEN 'resolved'
        WHEN i.status IN ('acknowledged', 'investigating', 'work_in_progress') THEN 'acknowledged'
        WHEN i.status IN ('open', 'active', 'no_status') THEN 'open'
        WHEN i.notification LIKE '%resolved%' THEN 'resolved'
    END AS state,
    i.severity,
    i.url,
    t.names AS asset_qualified_names
FROM incidents i
LEFT JOIN tables t ON t.incident_id = i.incident_id
WHERE i.incident_id IS NOT NULL
