-- The metastore: tenants, assets, lineage, classifications, incidents.
-- Every tenant-owned table carries tenant_id and row-level security keyed on
-- the session setting lily.tenant_id; foreign keys include tenant_id so no
-- row can point into another tenant.

CREATE SCHEMA IF NOT EXISTS metastore;

-- Lily's own bookkeeping (not replicated).
CREATE TABLE lily.replication_state (
    slot_name     text PRIMARY KEY,
    snapshot_lsn  pg_lsn,
    snapshot_done boolean NOT NULL DEFAULT false,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- The asset type vocabulary, shared by all tenants. `consistency` says how
-- ingestion treats the type: immediately consistent or eventually (through
-- the lake), the 80/20 rule of bulk extraction.
CREATE TABLE lily.asset_types (
    type_name   text PRIMARY KEY,
    consistency text NOT NULL DEFAULT 'immediate' CHECK (consistency IN ('immediate', 'eventual')),
    description text
);
INSERT INTO lily.asset_types (type_name, consistency, description) VALUES
    ('database',  'immediate', 'A database or warehouse'),
    ('schema',    'immediate', 'A schema inside a database'),
    ('table',     'immediate', 'A table'),
    ('view',      'immediate', 'A view or materialized view'),
    ('column',    'eventual',  'A column of a table or view'),
    ('dashboard', 'immediate', 'A BI dashboard'),
    ('bi_field',  'eventual',  'A field of a BI dashboard or data source'),
    ('process',   'immediate', 'A job that moves data: the process of a lineage edge');

CREATE TABLE metastore.tenants (
    tenant_id  text PRIMARY KEY CHECK (tenant_id ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    name       text NOT NULL,
    isolation  text NOT NULL DEFAULT 'shared' CHECK (isolation IN ('shared', 'dedicated')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE metastore.assets (
    guid           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id      text NOT NULL REFERENCES metastore.tenants ON DELETE CASCADE,
    type_name      text NOT NULL REFERENCES lily.asset_types,
    qualified_name text NOT NULL,
    name           text NOT NULL,
    parent_guid    uuid,
    attributes     jsonb NOT NULL DEFAULT '{}',
    owners         text[] NOT NULL DEFAULT '{}',
    certificate    text CHECK (certificate IN ('verified', 'draft', 'deprecated')),
    description    text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    version        bigint NOT NULL DEFAULT 1,
    UNIQUE (tenant_id, qualified_name),
    UNIQUE (tenant_id, guid),
    FOREIGN KEY (tenant_id, parent_guid) REFERENCES metastore.assets (tenant_id, guid) ON DELETE CASCADE
);
CREATE INDEX assets_parent ON metastore.assets (tenant_id, parent_guid);

CREATE TABLE metastore.lineage_edges (
    edge_id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       text NOT NULL,
    upstream_guid   uuid NOT NULL,
    downstream_guid uuid NOT NULL,
    process_guid    uuid,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (upstream_guid <> downstream_guid),
    UNIQUE NULLS NOT DISTINCT (tenant_id, upstream_guid, downstream_guid, process_guid),
    FOREIGN KEY (tenant_id, upstream_guid) REFERENCES metastore.assets (tenant_id, guid) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, downstream_guid) REFERENCES metastore.assets (tenant_id, guid) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, process_guid) REFERENCES metastore.assets (tenant_id, guid) ON DELETE SET NULL (process_guid)
);
CREATE INDEX lineage_downstream ON metastore.lineage_edges (tenant_id, downstream_guid);

CREATE TABLE metastore.classifications (
    classification_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id         text NOT NULL,
    asset_guid        uuid NOT NULL,
    tag               text NOT NULL,
    source            text NOT NULL DEFAULT 'direct' CHECK (source IN ('direct', 'propagated')),
    propagated_from   uuid,
    propagate         boolean NOT NULL DEFAULT true,
    created_at        timestamptz NOT NULL DEFAULT now(),
    CHECK ((source = 'direct') = (propagated_from IS NULL)),
    UNIQUE NULLS NOT DISTINCT (tenant_id, asset_guid, tag, propagated_from),
    FOREIGN KEY (tenant_id, asset_guid) REFERENCES metastore.assets (tenant_id, guid) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, propagated_from) REFERENCES metastore.assets (tenant_id, guid) ON DELETE CASCADE
);
CREATE INDEX classifications_tag ON metastore.classifications (tenant_id, tag);

CREATE TABLE metastore.incidents (
    incident_id   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     text NOT NULL REFERENCES metastore.tenants ON DELETE CASCADE,
    source_system text NOT NULL,
    external_id   text NOT NULL,
    incident_type text,
    title         text,
    state         text NOT NULL DEFAULT 'open',
    severity      text,
    url           text,
    payload       jsonb NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    version       bigint NOT NULL DEFAULT 1,
    UNIQUE (tenant_id, source_system, external_id),
    UNIQUE (tenant_id, incident_id)
);

-- An incident names assets by qualified name; the link to the asset's guid
-- is filled in when (or as soon as) the asset exists.
CREATE TABLE metastore.incident_assets (
    tenant_id      text NOT NULL,
    incident_id    uuid NOT NULL,
    qualified_name text NOT NULL,
    asset_guid     uuid,
    PRIMARY KEY (incident_id, qualified_name),
    FOREIGN KEY (tenant_id, incident_id) REFERENCES metastore.incidents (tenant_id, incident_id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, asset_guid) REFERENCES metastore.assets (tenant_id, guid) ON DELETE SET NULL (asset_guid)
);
CREATE INDEX incident_assets_name ON metastore.incident_assets (tenant_id, qualified_name);

-- Every update bumps version and updated_at, so each change of a row is
-- distinguishable downstream (Elasticsearch external versions, audits).
CREATE FUNCTION lily.bump_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := OLD.version + 1;
    NEW.updated_at := now();
    RETURN NEW;
END $$;
CREATE TRIGGER assets_version BEFORE UPDATE ON metastore.assets
    FOR EACH ROW EXECUTE FUNCTION lily.bump_version();
CREATE TRIGGER incidents_version BEFORE UPDATE ON metastore.incidents
    FOR EACH ROW EXECUTE FUNCTION lily.bump_version();

CREATE FUNCTION lily.link_incident_assets() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE metastore.incident_assets SET asset_guid = NEW.guid
     WHERE tenant_id = NEW.tenant_id AND qualified_name = NEW.qualified_name AND asset_guid IS NULL;
    RETURN NULL;
END $$;
CREATE TRIGGER assets_link_incidents AFTER INSERT ON metastore.assets
    FOR EACH ROW EXECUTE FUNCTION lily.link_incident_assets();

CREATE FUNCTION lily.resolve_incident_asset() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.asset_guid IS NULL THEN
        SELECT guid INTO NEW.asset_guid FROM metastore.assets
         WHERE tenant_id = NEW.tenant_id AND qualified_name = NEW.qualified_name;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER incident_assets_resolve BEFORE INSERT ON metastore.incident_assets
    FOR EACH ROW EXECUTE FUNCTION lily.resolve_incident_asset();

-- Before-images: a removed classification, lineage edge or incident link
-- must say what it was, so downstream retractions need no lookup.
ALTER TABLE metastore.classifications REPLICA IDENTITY FULL;
ALTER TABLE metastore.lineage_edges REPLICA IDENTITY FULL;
ALTER TABLE metastore.incident_assets REPLICA IDENTITY FULL;

-- Row-level security: sessions that switch to the tenant role see and write
-- only the rows of the tenant named in lily.tenant_id. The pipeline's own
-- role owns the tables and reads across tenants.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '${tenant_role}') THEN
        CREATE ROLE "${tenant_role}" NOLOGIN;
    END IF;
END $$;
GRANT USAGE ON SCHEMA metastore, lily TO "${tenant_role}";
GRANT SELECT ON lily.asset_types TO "${tenant_role}";
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA metastore TO "${tenant_role}";
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['tenants', 'assets', 'lineage_edges', 'classifications', 'incidents', 'incident_assets'] LOOP
        EXECUTE format('ALTER TABLE metastore.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON metastore.%I USING (tenant_id = current_setting(''lily.tenant_id'', true)) '
            'WITH CHECK (tenant_id = current_setting(''lily.tenant_id'', true))', t);
    END LOOP;
END $$;
