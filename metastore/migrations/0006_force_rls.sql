-- Row-level security holds for a table's owner too (FORCE). Should the
-- tenant role ever come to own a tenant table, its sessions would still see
-- one tenant. The role that runs the migrations (Lily's own, which reads
-- across tenants: the pipeline, propagation, the catalog loader) keeps
-- doing so through a policy of its own.
DO $$
DECLARE t regclass;
BEGIN
    FOREACH t IN ARRAY ARRAY[
        'metastore.tenants', 'metastore.assets', 'metastore.lineage_edges',
        'metastore.classifications', 'metastore.incidents', 'metastore.incident_assets',
        'metastore.propagated_attributes', 'metastore.incident_tickets', 'lily.incident_events'
    ]::regclass[] LOOP
        EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY lily_service ON %s TO %I USING (true) WITH CHECK (true)', t, current_user);
    END LOOP;
END $$;
