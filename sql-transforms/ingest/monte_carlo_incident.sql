-- target: incidents
--
-- A Monte Carlo incident notification, flattened into a metastore incident.
-- The first statement declares the payload's fields (others are ignored);
-- the query maps them onto columns of metastore.incidents. The tenant comes
-- from the authenticated sender, not from the payload.
CREATE TABLE payload (
    incident_id   VARCHAR,
    incident_type VARCHAR,
    title         VARCHAR,
    state         VARCHAR,
    severity      VARCHAR,
    url           VARCHAR
);

SELECT
    'monte_carlo'                   AS source_system,
    incident_id                     AS external_id,
    lower(incident_type)            AS incident_type,
    coalesce(title, incident_type)  AS title,
    coalesce(lower(state), 'open')  AS state,
    upper(severity)                 AS severity,
    url
FROM payload
WHERE incident_id IS NOT NULL
