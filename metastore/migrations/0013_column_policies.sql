-- Policy events: the effective policy of every column that is or was
-- tagged, one row per column, written by `lily run` whenever what applies
-- to the column changes (a tag added or removed, directly or by
-- propagation; a policy edited). Each write is a policy event: it streams
-- like any change, to Kafka keyed by the column, to the notify targets and
-- to the Delta audit. A column whose last tag is removed keeps its row,
-- with no tags and no mask, so that change is an event too.
CREATE TABLE metastore.column_policies (
    tenant_id            text NOT NULL REFERENCES metastore.tenants ON DELETE CASCADE,
    qualified_name       text NOT NULL,
    table_qualified_name text NOT NULL,
    column_name          text NOT NULL,
    tags                 text[] NOT NULL,
    -- The mask a reader without an exempting role gets; NULL: raw.
    mask                 text,
    -- [{"name", "mask", "unmasked_roles"}]: every policy whose tag it carries.
    policies             jsonb NOT NULL,
    -- [{"tag", "direct", "propagated_from"}]: where each tag comes from.
    origins              jsonb NOT NULL,
    -- What changed, e.g. "tag PII added", "tag PII propagated from a.b.c".
    cause                text NOT NULL,
    -- The policy snapshot that made the change (the metastore's WAL position).
    policy_version       bigint NOT NULL,
    changed_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, qualified_name)
);
ALTER TABLE metastore.column_policies REPLICA IDENTITY FULL;

GRANT SELECT ON metastore.column_policies TO "${tenant_role}";
ALTER TABLE metastore.column_policies ENABLE ROW LEVEL SECURITY;
ALTER TABLE metastore.column_policies FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON metastore.column_policies
    USING (tenant_id = current_setting('lily.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('lily.tenant_id', true));
DO $$
BEGIN
    EXECUTE format('CREATE POLICY lily_service ON metastore.column_policies TO %I USING (true) WITH CHECK (true)', current_user);
END $$;
