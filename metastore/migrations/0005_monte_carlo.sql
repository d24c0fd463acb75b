-- Incidents as Monte Carlo sends them: the owner and the source's own status
-- word on an incident, links by warehouse table id or by bare table name,
-- and the events already applied (so a redelivered one changes nothing).

-- `owner`: who the source says owns the incident (Monte Carlo: an email).
-- `source_status`: the source's own status word behind `state` (Monte
-- Carlo's alert_feedback: fixed, false_positive, work_in_progress, ...).
ALTER TABLE metastore.incidents ADD COLUMN owner text;
ALTER TABLE metastore.incidents ADD COLUMN source_status text;

-- How a link was named by its source:
--   qualified_name  the catalog's qualified name, matched exactly;
--   full_table_id   a warehouse table id (`<database>:<schema>.<table>`),
--                   mapped to a qualified name by the tenant's naming rule;
--   table_name      a bare table name: linked to the one table or view of the
--                   tenant whose qualified name ends with it, pending while
--                   there is none or more than one.
-- `reference` keeps what the source said (NULL for qualified names).
-- While a table_name link is pending, qualified_name holds the bare name.
ALTER TABLE metastore.incident_assets ADD COLUMN match_rule text NOT NULL DEFAULT 'qualified_name'
    CHECK (match_rule IN ('qualified_name', 'full_table_id', 'table_name'));
ALTER TABLE metastore.incident_assets ADD COLUMN reference text;

-- Tables and views by the last part of their qualified name: a bare table
-- name finds its candidates without scanning the tenant's assets.
CREATE INDEX assets_table_name ON metastore.assets
    (tenant_id, (substring(qualified_name FROM '[^.]*$')))
    WHERE type_name IN ('table', 'view');

-- The tables and views of tenant $1 whose qualified name is $2 or ends with
-- `.$2`. (Positional: `name` would be the column of metastore.assets.)
CREATE FUNCTION lily.tables_ending_with(text, text)
RETURNS TABLE (guid uuid, qualified_name text) LANGUAGE sql STABLE AS $$
    SELECT a.guid, a.qualified_name FROM metastore.assets a
     WHERE a.tenant_id = $1 AND a.type_name IN ('table', 'view')
       AND substring(a.qualified_name FROM '[^.]*$') = substring($2 FROM '[^.]*$')
       AND (a.qualified_name = $2 OR right(a.qualified_name, length($2) + 1) = '.' || $2)
$$;

-- A link named exactly is resolved on insert; a bare name is resolved by
-- the writer, which knows whether it is ambiguous.
CREATE OR REPLACE FUNCTION lily.resolve_incident_asset() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.asset_guid IS NULL AND NEW.match_rule <> 'table_name' THEN
        SELECT guid INTO NEW.asset_guid FROM metastore.assets
         WHERE tenant_id = NEW.tenant_id AND qualified_name = NEW.qualified_name;
    END IF;
    RETURN NEW;
END $$;

-- An asset that arrives, whichever way (the API, an extraction, SQL), takes
-- the pending links that name it: exactly, or, for a table or view, by a
-- bare name it now is the only match of.
CREATE OR REPLACE FUNCTION lily.link_incident_assets() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    parts    text[];
    suffixes text[];
    pending  record;
BEGIN
    UPDATE metastore.incident_assets SET asset_guid = NEW.guid
     WHERE tenant_id = NEW.tenant_id AND qualified_name = NEW.qualified_name
       AND asset_guid IS NULL AND match_rule <> 'table_name';
    IF NEW.type_name IN ('table', 'view') THEN
        parts := string_to_array(NEW.qualified_name, '.');
        -- a.b.c ends with c, b.c and a.b.c
        suffixes := ARRAY(SELECT array_to_string(parts[i:], '.')
                            FROM generate_subscripts(parts, 1) AS i);
        FOR pending IN
            SELECT p.ctid AS row_id, p.incident_id, p.qualified_name
              FROM metastore.incident_assets p
             WHERE p.tenant_id = NEW.tenant_id AND p.match_rule = 'table_name'
               AND p.asset_guid IS NULL AND p.qualified_name = ANY (suffixes)
        LOOP
            CONTINUE WHEN (SELECT count(*) FROM lily.tables_ending_with(NEW.tenant_id, pending.qualified_name)) <> 1;
            IF EXISTS (SELECT 1 FROM metastore.incident_assets l
                        WHERE l.incident_id = pending.incident_id AND l.qualified_name = NEW.qualified_name
                          AND l.ctid <> pending.row_id) THEN
                -- The incident already links this asset: the bare name adds nothing.
                DELETE FROM metastore.incident_assets WHERE ctid = pending.row_id;
            ELSE
                UPDATE metastore.incident_assets SET asset_guid = NEW.guid, qualified_name = NEW.qualified_name
                 WHERE ctid = pending.row_id;
            END IF;
        END LOOP;
    END IF;
    RETURN NULL;
END $$;

-- Every event applied to an incident, by the SHA-256 of its canonical JSON:
-- a redelivered event (a retry, a Kafka replay) finds its digest here and
-- changes nothing, so it cannot move the incident back. The raw event is
-- kept, as the incident's history. Lily's own bookkeeping (not replicated).
CREATE TABLE lily.incident_events (
    tenant_id    text NOT NULL,
    incident_id  uuid NOT NULL,
    digest       bytea NOT NULL,
    notification text,
    payload      jsonb NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (incident_id, digest),
    FOREIGN KEY (tenant_id, incident_id) REFERENCES metastore.incidents (tenant_id, incident_id) ON DELETE CASCADE
);
GRANT SELECT, INSERT ON lily.incident_events TO "${tenant_role}";
ALTER TABLE lily.incident_events ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON lily.incident_events
    USING (tenant_id = current_setting('lily.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('lily.tenant_id', true));
