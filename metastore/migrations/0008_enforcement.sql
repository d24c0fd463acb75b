-- Enforcement: masking policies attached to tags, and the governed tables
-- the SQL endpoint serves. Both are catalog data: they stream, land in the
-- Delta audit and reach search like the rest of the metastore.

-- "Columns tagged <tags> are masked with <mask> except for <unmasked_roles>"
-- (Snowflake's and Unity Catalog's tag-based masking; Ranger's mask names).
CREATE TABLE metastore.masking_policies (
    tenant_id      text NOT NULL REFERENCES metastore.tenants ON DELETE CASCADE,
    name           text NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$'),
    tags           text[] NOT NULL CHECK (cardinality(tags) > 0),
    mask           text NOT NULL CHECK (mask IN ('MASK', 'MASK_SHOW_LAST_4', 'MASK_SHOW_FIRST_4',
                       'MASK_HASH', 'MASK_NULL', 'MASK_DATE_SHOW_YEAR', 'MASK_NONE', 'CUSTOM')),
    expression     text CHECK ((mask = 'CUSTOM') = (expression IS NOT NULL)),
    unmasked_roles text[] NOT NULL DEFAULT '{}',
    enabled        boolean NOT NULL DEFAULT true,
    description    text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    version        bigint NOT NULL DEFAULT 1,
    PRIMARY KEY (tenant_id, name)
);
CREATE TRIGGER masking_policies_version BEFORE UPDATE ON metastore.masking_policies
    FOR EACH ROW EXECUTE FUNCTION lily.bump_version();

-- A table the SQL endpoint serves under `table_name`, read from a
-- PostgreSQL table of a configured connection, a Delta table or Parquet
-- files, and governed by the catalog asset `asset` (its columns' tags).
CREATE TABLE metastore.governed_tables (
    tenant_id   text NOT NULL REFERENCES metastore.tenants ON DELETE CASCADE,
    table_name  text NOT NULL CHECK (table_name ~ '^[a-z_][a-z0-9_]{0,62}$'),
    asset       text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('postgres', 'delta', 'parquet')),
    connection  text CHECK ((kind = 'postgres') = (connection IS NOT NULL)),
    location    text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    version     bigint NOT NULL DEFAULT 1,
    PRIMARY KEY (tenant_id, table_name)
);
CREATE TRIGGER governed_tables_version BEFORE UPDATE ON metastore.governed_tables
    FOR EACH ROW EXECUTE FUNCTION lily.bump_version();

ALTER TABLE metastore.masking_policies REPLICA IDENTITY FULL;
ALTER TABLE metastore.governed_tables REPLICA IDENTITY FULL;

-- Every tenant starts with PII and GDPR columns hashed for everyone
-- without an unmasking role; stewards change or disable these like any
-- other policy.
CREATE FUNCTION lily.default_masking_policies() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO metastore.masking_policies (tenant_id, name, tags, mask, unmasked_roles, description)
    VALUES (NEW.tenant_id, 'pii', '{PII}', 'MASK_HASH', '{pii_reader}',
            'Default: PII columns hashed (SHA-256) unless the reader holds pii_reader'),
           (NEW.tenant_id, 'gdpr', '{GDPR}', 'MASK_HASH', '{gdpr_reader}',
            'Default: GDPR columns hashed (SHA-256) unless the reader holds gdpr_reader')
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;
CREATE TRIGGER tenants_default_masking_policies AFTER INSERT ON metastore.tenants
    FOR EACH ROW EXECUTE FUNCTION lily.default_masking_policies();
INSERT INTO metastore.masking_policies (tenant_id, name, tags, mask, unmasked_roles, description)
SELECT tenant_id, p.name, p.tags, 'MASK_HASH', p.roles, p.description
  FROM metastore.tenants,
       (VALUES ('pii', '{PII}'::text[], '{pii_reader}'::text[],
                'Default: PII columns hashed (SHA-256) unless the reader holds pii_reader'),
               ('gdpr', '{GDPR}'::text[], '{gdpr_reader}'::text[],
                'Default: GDPR columns hashed (SHA-256) unless the reader holds gdpr_reader'))
       AS p(name, tags, roles, description)
ON CONFLICT DO NOTHING;

GRANT SELECT, INSERT, UPDATE, DELETE ON metastore.masking_policies, metastore.governed_tables TO "${tenant_role}";
DO $$
DECLARE t regclass;
BEGIN
    FOREACH t IN ARRAY ARRAY['metastore.masking_policies', 'metastore.governed_tables']::regclass[] LOOP
        EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %s USING (tenant_id = current_setting(''lily.tenant_id'', true)) '
            'WITH CHECK (tenant_id = current_setting(''lily.tenant_id'', true))', t);
        EXECUTE format('CREATE POLICY lily_service ON %s TO %I USING (true) WITH CHECK (true)', t, current_user);
    END LOOP;
END $$;
