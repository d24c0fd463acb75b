-- The trail of credentials: who created or revoked which API key, and when.
-- Kept after a key is revoked; only Lily's own role writes it.
CREATE TABLE lily.api_key_events (
    event_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key_id    text NOT NULL,
    tenant_id text NOT NULL,
    event     text NOT NULL CHECK (event IN ('created', 'revoked')),
    role      text NOT NULL,
    actor     text NOT NULL,
    at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX api_key_events_tenant ON lily.api_key_events (tenant_id, at);
