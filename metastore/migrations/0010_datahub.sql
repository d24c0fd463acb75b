-- DataHub's ingestion protocol: the asset types its entities add, and the
-- receiver's bookkeeping (not replicated: it lives in the lily schema).

INSERT INTO lily.asset_types (type_name, consistency, description) VALUES
    ('container', 'immediate', 'A folder, project or other grouping a source reports'),
    ('chart',     'immediate', 'A chart or tile of a BI tool')
ON CONFLICT DO NOTHING;

-- A DataHub container is named only by an opaque URN (an md5 of its key);
-- this maps it to the asset its containerProperties created.
CREATE TABLE lily.datahub_containers (
    tenant_id  text NOT NULL REFERENCES metastore.tenants ON DELETE CASCADE,
    urn        text NOT NULL,
    asset_guid uuid NOT NULL,
    PRIMARY KEY (tenant_id, urn),
    FOREIGN KEY (tenant_id, asset_guid) REFERENCES metastore.assets (tenant_id, guid) ON DELETE CASCADE
);

-- Every `container` aspect: the child and its container's URN. The
-- emitter sends from many threads, so a table may arrive before its
-- schema; the link is made whichever comes second.
CREATE TABLE lily.datahub_parents (
    tenant_id  text NOT NULL,
    child_guid uuid NOT NULL,
    parent_urn text NOT NULL,
    PRIMARY KEY (tenant_id, child_guid),
    FOREIGN KEY (tenant_id, child_guid) REFERENCES metastore.assets (tenant_id, guid) ON DELETE CASCADE
);
CREATE INDEX datahub_parents_urn ON lily.datahub_parents (tenant_id, parent_urn);

-- Stateful ingestion's checkpoints (`datahubIngestionCheckpoint`, a
-- timeseries aspect of a dataJob), kept as sent and returned by
-- getTimeseriesAspectValues, so a rerun removes what its source dropped.
CREATE TABLE lily.datahub_checkpoints (
    tenant_id  text NOT NULL REFERENCES metastore.tenants ON DELETE CASCADE,
    urn        text NOT NULL,
    aspect     text NOT NULL,
    value      text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, urn, aspect)
);

GRANT SELECT, INSERT, UPDATE, DELETE ON lily.datahub_containers, lily.datahub_parents,
    lily.datahub_checkpoints TO "${tenant_role}";
DO $$
DECLARE t regclass;
BEGIN
    FOREACH t IN ARRAY ARRAY['lily.datahub_containers', 'lily.datahub_parents',
                             'lily.datahub_checkpoints']::regclass[] LOOP
        EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %s USING (tenant_id = current_setting(''lily.tenant_id'', true)) '
            'WITH CHECK (tenant_id = current_setting(''lily.tenant_id'', true))', t);
        EXECUTE format('CREATE POLICY lily_service ON %s TO %I USING (true) WITH CHECK (true)', t, current_user);
    END LOOP;
END $$;
