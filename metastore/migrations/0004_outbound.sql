-- Outbound: deletes that name their tenant, the notification outbox, the
-- tickets notifications opened, and dead letters that can be replayed.

-- A deleted asset or incident must say which tenant it belonged to (its
-- search index, its Kafka topic, its audit partition): the replica
-- identity becomes the (tenant_id, id) unique index instead of the bare
-- primary key. Deletes then carry both columns; updates log nothing more.
ALTER TABLE metastore.assets REPLICA IDENTITY USING INDEX assets_tenant_id_guid_key;
ALTER TABLE metastore.incidents REPLICA IDENTITY USING INDEX incidents_tenant_id_incident_id_key;

-- Notifications for SaaS targets wait here until delivered. The pipeline
-- acknowledges a change once its notifications are queued; each target
-- drains its own queue in order. (target, dedupe_key) is unique, so a
-- change redelivered after a crash queues nothing twice; delivered rows are
-- kept a day for that, then pruned. Lily's own bookkeeping (not replicated).
CREATE TABLE lily.outbox (
    outbox_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    target          text NOT NULL,
    dedupe_key      text NOT NULL,
    tenant_id       text NOT NULL,
    event           jsonb NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    dead_at         timestamptz,
    UNIQUE (target, dedupe_key)
);
CREATE INDEX outbox_pending ON lily.outbox (target, outbox_id)
    WHERE delivered_at IS NULL AND dead_at IS NULL;

-- What a target opened for a subject (a JIRA issue key, a Freshdesk ticket
-- id), so later notifications about it become comments and notes.
CREATE TABLE lily.notification_refs (
    target     text NOT NULL,
    tenant_id  text NOT NULL,
    subject    text NOT NULL,
    reference  text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (target, tenant_id, subject)
);

-- Dead letters say what a replay needs (a topic, an index, a target) and
-- when they were replayed.
ALTER TABLE lily.dead_letters ADD COLUMN details jsonb;
ALTER TABLE lily.dead_letters ADD COLUMN replayed_at timestamptz;
