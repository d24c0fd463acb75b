-- Bulk writes: an asset insert links waiting incidents once per statement
-- (a transition table), not once per row, so a set-based load of thousands
-- of assets pays one lookup, not thousands. What it links is unchanged.

-- A new table or view of `tenant` resolves the incidents waiting for its
-- bare name, when that name is not ambiguous.
CREATE FUNCTION lily.link_bare_table_name(tenant text, asset uuid, qualified text)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    parts    text[] := string_to_array(qualified, '.');
    suffixes text[];
    pending  record;
BEGIN
    -- a.b.c ends with c, b.c and a.b.c
    suffixes := ARRAY(SELECT array_to_string(parts[i:], '.') FROM generate_subscripts(parts, 1) AS i);
    FOR pending IN
        SELECT p.ctid AS row_id, p.incident_id, p.qualified_name
          FROM metastore.incident_assets p
         WHERE p.tenant_id = tenant AND p.match_rule = 'table_name'
           AND p.asset_guid IS NULL AND p.qualified_name = ANY (suffixes)
    LOOP
        CONTINUE WHEN (SELECT count(*) FROM lily.tables_ending_with(tenant, pending.qualified_name)) <> 1;
        IF EXISTS (SELECT 1 FROM metastore.incident_assets l
                    WHERE l.incident_id = pending.incident_id AND l.qualified_name = qualified
                      AND l.ctid <> pending.row_id) THEN
            -- The incident already links this asset: the bare name adds nothing.
            DELETE FROM metastore.incident_assets WHERE ctid = pending.row_id;
        ELSE
            UPDATE metastore.incident_assets SET asset_guid = asset, qualified_name = qualified
             WHERE ctid = pending.row_id;
        END IF;
    END LOOP;
END $$;

CREATE FUNCTION lily.link_incident_assets_of_statement() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    added record;
BEGIN
    UPDATE metastore.incident_assets ia SET asset_guid = n.guid
      FROM new_assets n
     WHERE ia.tenant_id = n.tenant_id AND ia.qualified_name = n.qualified_name
       AND ia.asset_guid IS NULL AND ia.match_rule <> 'table_name';
    -- Bare table names: only looked at when some incident waits for one.
    FOR added IN
        SELECT na.tenant_id, na.guid, na.qualified_name FROM new_assets na
         WHERE na.type_name IN ('table', 'view')
           AND EXISTS (SELECT 1 FROM metastore.incident_assets p
                        WHERE p.tenant_id = na.tenant_id AND p.match_rule = 'table_name'
                          AND p.asset_guid IS NULL)
    LOOP
        PERFORM lily.link_bare_table_name(added.tenant_id, added.guid, added.qualified_name);
    END LOOP;
    RETURN NULL;
END $$;

DROP TRIGGER assets_link_incidents ON metastore.assets;
DROP FUNCTION lily.link_incident_assets();
CREATE TRIGGER assets_link_incidents AFTER INSERT ON metastore.assets
    REFERENCING NEW TABLE AS new_assets
    FOR EACH STATEMENT EXECUTE FUNCTION lily.link_incident_assets_of_statement();

-- Bulk loads (`lily ingest`) and their two lanes: what each load wrote to
-- the metastore at once, what it put in the lake's `catalog/assets`, and
-- how far `lily run` has promoted those into the metastore (`promoted_seq`,
-- a position in the load: everything up to it is consistent everywhere).
CREATE TABLE lily.bulk_loads (
    tenant_id      text NOT NULL REFERENCES metastore.tenants ON DELETE CASCADE,
    load_id        text NOT NULL,
    source         text NOT NULL,
    state          text NOT NULL DEFAULT 'loading' CHECK (state IN ('loading', 'promoting', 'complete')),
    rows_metastore bigint NOT NULL DEFAULT 0,
    rows_lake      bigint NOT NULL DEFAULT 0,
    lake_seq       bigint NOT NULL DEFAULT 0,
    promoted_rows  bigint NOT NULL DEFAULT 0,
    promoted_seq   bigint NOT NULL DEFAULT 0,
    started_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    completed_at   timestamptz,
    PRIMARY KEY (tenant_id, load_id)
);
GRANT SELECT, UPDATE ON lily.bulk_loads TO "${tenant_role}";
ALTER TABLE lily.bulk_loads ENABLE ROW LEVEL SECURITY;
ALTER TABLE lily.bulk_loads FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON lily.bulk_loads
    USING (tenant_id = current_setting('lily.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('lily.tenant_id', true));
DO $$ BEGIN
    EXECUTE format('CREATE POLICY lily_service ON lily.bulk_loads TO %I USING (true) WITH CHECK (true)', current_user);
END $$;
