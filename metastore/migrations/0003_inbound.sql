-- Inbound: API keys for machine senders, and tickets (JIRA issues and the
-- like) linked to incidents, so that closing the ticket resolves them.

-- API keys are Lily's own bookkeeping (not replicated): only a hash of the
-- secret is kept. A key is `lily_<key_id>_<secret>`; the id finds the row,
-- the SHA-256 of the whole key must match secret_hash.
CREATE TABLE lily.api_keys (
    key_id      text PRIMARY KEY CHECK (key_id ~ '^[a-z0-9]{12}$'),
    tenant_id   text NOT NULL REFERENCES metastore.tenants ON DELETE CASCADE,
    role        text NOT NULL CHECK (role IN ('admin', 'steward', 'viewer', 'ingest')),
    name        text NOT NULL,
    secret_hash bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_tenant ON lily.api_keys (tenant_id);

-- API and inbound writes switch to the tenant role (SET LOCAL ROLE) so that
-- row-level security applies; the role running Lily must be a member of it.
-- Granted here when this role may; otherwise a warning names the GRANT an
-- administrator must run before the API can write.
DO $$
BEGIN
    IF NOT pg_has_role(current_user, '${tenant_role}', 'MEMBER') THEN
        EXECUTE format('GRANT %I TO %I', '${tenant_role}', current_user);
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE WARNING 'the API needs: GRANT "%" TO "%"', '${tenant_role}', current_user;
END $$;

CREATE TABLE metastore.incident_tickets (
    tenant_id   text NOT NULL,
    incident_id uuid NOT NULL,
    system      text NOT NULL,
    ticket_key  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, system, ticket_key, incident_id),
    FOREIGN KEY (tenant_id, incident_id) REFERENCES metastore.incidents (tenant_id, incident_id) ON DELETE CASCADE
);
ALTER TABLE metastore.incident_tickets REPLICA IDENTITY FULL;

GRANT SELECT, INSERT, UPDATE, DELETE ON metastore.incident_tickets TO "${tenant_role}";
ALTER TABLE metastore.incident_tickets ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON metastore.incident_tickets
    USING (tenant_id = current_setting('lily.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('lily.tenant_id', true));

-- What could not be delivered, with why: an event from a Kafka topic that
-- is malformed or breaks its schema, and (later) sink deliveries that fail
-- after their retries. Lily's own bookkeeping (not replicated).
CREATE TABLE lily.dead_letters (
    dead_letter_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source         text NOT NULL,
    tenant_id      text,
    reference      text NOT NULL,
    error_code     text NOT NULL,
    error          text NOT NULL,
    payload        bytea,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letters_source ON lily.dead_letters (source, created_at);
