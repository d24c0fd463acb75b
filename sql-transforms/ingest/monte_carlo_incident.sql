-- target: incidents
--
-- A Monte Carlo notification (inbound/schemas/monte-carlo-event.v1 has
-- already checked its shape), mapped onto a metastore incident and the
-- tables it concerns. The tenant comes from the authenticated sender, never
-- from the payload. docs/inbound.md says where each field comes from in
-- Monte Carlo's documentation.
--
-- A column left NULL keeps the incident's current value, so an update
-- changes only what it says. Only an opening (an open_..._incident
-- notification with its event list) gives the incident's type and title;
-- updates change state, severity and owner.
CREATE TABLE payload (
    -- Which event of the run a row comes from: Lily numbers the events it
    -- maps together (concurrent webhooks), and splits the output by it.
    _event    BIGINT,
    type      VARCHAR,
    -- Which keys the event has: an alert unmarked as an incident sends
    -- declared_alert_severity as null, which is not the same as leaving it out.
    json_keys VARCHAR[],
    -- Monte Carlo documents the fields alert updates change in a table, not
    -- in a sample payload: they are read inside `payload` and, failing that,
    -- at the top level.
    alert_feedback          VARCHAR,
    declared_alert_severity VARCHAR,
    owner                   VARCHAR,
    payload   STRUCT<
        incident_id             VARCHAR,
        url                     VARCHAR,
        group_id                VARCHAR,
        alert_feedback          VARCHAR,
        declared_alert_severity VARCHAR,
        owner                   VARCHAR,
        event_list STRUCT<
            table_name    VARCHAR,
            full_table_id VARCHAR,
            rule          STRUCT<comparisons STRUCT<full_table_id VARCHAR>[]>
        >[],
        rule STRUCT<comparisons STRUCT<full_table_id VARCHAR>[]>
    >
);

WITH events AS (
    SELECT p._event,
           p.payload['incident_id'] AS incident_id,
           p.payload['group_id'] AS group_id,
           p.payload['event_list'] AS list,
           unnest(range(1, CAST(cardinality(p.payload['event_list']) AS BIGINT) + 1)) AS i
    FROM payload p
),
event_tables AS (
    -- The table of each event, as a full table id `<database>:<schema>.<table>`
    -- where one is known: the event's own, a table_name that is one, or a bare
    -- table_name inside the incident's group_id (`<database>:<schema>`).
    SELECT _event, incident_id, i,
           CASE
               WHEN list[i]['full_table_id'] IS NOT NULL THEN list[i]['full_table_id']
               WHEN strpos(list[i]['table_name'], ':') > 0 THEN list[i]['table_name']
               WHEN strpos(group_id, ':') > 0 AND list[i]['table_name'] IS NOT NULL
                   THEN group_id || '.' || list[i]['table_name']
           END AS full_table_id,
           list[i]['table_name'] AS table_name,
           list[i]['rule']['comparisons'] AS comparisons
    FROM events
),
rule_comparisons AS (
    -- Custom rules name their tables in their comparisons, in the event or
    -- beside the event list.
    SELECT _event, incident_id, unnest(comparisons) AS c FROM event_tables
    UNION ALL
    SELECT p._event, p.payload['incident_id'], unnest(p.payload['rule']['comparisons']) FROM payload p
),
refs AS (
    SELECT _event, incident_id, i, full_table_id,
           CASE WHEN full_table_id IS NULL THEN table_name END AS table_name
    FROM event_tables
    UNION ALL
    SELECT _event, incident_id, 1000000, c['full_table_id'], NULL FROM rule_comparisons
),
tables AS (
    SELECT _event, incident_id,
           array_agg(DISTINCT full_table_id) FILTER (WHERE full_table_id IS NOT NULL) AS full_table_ids,
           array_agg(DISTINCT table_name) FILTER (WHERE table_name IS NOT NULL) AS table_names,
           -- the title names the first table of the event list
           first_value(replace(coalesce(full_table_id, table_name), ':', '.') ORDER BY i)
               FILTER (WHERE coalesce(full_table_id, table_name) IS NOT NULL) AS first_table
    FROM refs
    GROUP BY _event, incident_id
),
incidents AS (
    SELECT p._event,
           p.payload['incident_id'] AS incident_id,
           -- An opening names its type and carries its events: updates may
           -- repeat the type, but not the event list.
           -- open_custom_rule_anomaly_incident -> custom_rule_anomaly
           CASE WHEN regexp_like(p.type, '^(new|open|opened)_.+_incident$')
                     AND cardinality(p.payload['event_list']) > 0
                THEN lower(regexp_replace(p.type, '^(new|open|opened)_|_incident$', '', 'g')) END AS opened_type,
           p.payload['url'] AS url,
           lower(coalesce(p.payload['alert_feedback'], p.alert_feedback)) AS feedback,
           coalesce(p.payload['declared_alert_severity'], p.declared_alert_severity) AS severity,
           array_has(p.json_keys, 'payload.declared_alert_severity')
               OR array_has(p.json_keys, 'declared_alert_severity') AS severity_sent,
           coalesce(p.payload['owner'], p.owner) AS owner
    FROM payload p
)
SELECT
    i._event,
    'monte_carlo' AS source_system,
    i.incident_id AS external_id,
    i.opened_type AS incident_type,
    CASE WHEN i.opened_type IS NOT NULL
         THEN replace(i.opened_type, '_', ' ') || coalesce(' on ' || t.first_table, '') END AS title,
    -- alert_feedback, as Monte Carlo's status menu and alert updates set it
    CASE
        WHEN i.feedback IN ('fixed', 'expected', 'no_action_needed', 'false_positive') THEN 'resolved'
        WHEN i.feedback IN ('investigating', 'work_in_progress') THEN 'acknowledged'
        WHEN i.feedback = 'no_status' THEN 'open'
    END AS state,
    i.feedback AS source_status,
    -- Acknowledging sends `investigating` too, so only these two statuses,
    -- which only a person choosing them sends, reopen a resolved incident.
    coalesce(i.feedback IN ('work_in_progress', 'no_status'), false) AS reopens,
    upper(i.severity) AS severity,
    CASE WHEN i.severity IS NULL AND i.severity_sent THEN ['severity'] END AS cleared_columns,
    i.owner AS owner,
    i.url,
    t.full_table_ids AS asset_full_table_ids,
    t.table_names AS asset_table_names
FROM incidents i
LEFT JOIN tables t ON (t._event IS NOT DISTINCT FROM i._event) AND t.incident_id = i.incident_id
WHERE i.incident_id IS NOT NULL
