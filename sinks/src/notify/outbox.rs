//! The outbox, `lily.outbox`: notifications waiting for their target.
//!
//! A row is queued once per (target, dedupe key), so a change redelivered
//! after a crash queues nothing new; it stays after delivery (marked) long
//! enough to keep deduplicating, then is pruned.

use std::time::Duration;

use deadpool_postgres::Pool;
use serde_json::Value;

use super::event::Notification;

/// A queued notification.
#[derive(Debug, Clone)]
pub struct Queued {
    /// Row id; the queue's order.
    pub id: i64,
    /// The notification, as queued (JSON of [`Notification`]).
    pub event: Value,
    /// Attempts so far.
    pub attempts: i32,
    /// Not before this long from now.
    pub wait: Duration,
}

/// The outbox could not be reached.
#[derive(Debug, thiserror::Error)]
#[error("outbox: {0}")]
pub struct OutboxError(String);

impl OutboxError {
    /// An error with this message.
    pub fn from_message(message: String) -> Self {
        Self(message)
    }
}

fn db(e: impl std::fmt::Display) -> OutboxError {
    OutboxError(e.to_string())
}

/// The outbox in the metastore.
#[derive(Clone)]
pub struct Outbox {
    pool: Pool,
}

impl Outbox {
    /// The outbox behind `pool`.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// The connection pool (shared with the dead-letter store and references).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Queues `items` for `target`, skipping those already queued; returns
    /// how many were new.
    pub async fn enqueue(&self, target: &str, items: &[Notification]) -> Result<u64, OutboxError> {
        if items.is_empty() {
            return Ok(0);
        }
        let keys: Vec<&str> = items.iter().map(|n| n.dedupe_key.as_str()).collect();
        let tenants: Vec<&str> = items.iter().map(|n| n.tenant_id.as_str()).collect();
        let events: Vec<Value> = items
            .iter()
            .map(|n| serde_json::to_value(n).unwrap_or(Value::Null))
            .collect();
        let conn = self.pool.get().await.map_err(db)?;
        // WITH ORDINALITY keeps the stream's order in the ids.
        conn.execute(
            "INSERT INTO lily.outbox (target, dedupe_key, tenant_id, event)
             SELECT $1, k, t, e
               FROM unnest($2::text[], $3::text[], $4::jsonb[]) WITH ORDINALITY AS u(k, t, e, i)
              ORDER BY i
             ON CONFLICT (target, dedupe_key) DO NOTHING",
            &[&target, &keys, &tenants, &events],
        )
        .await
        .map_err(db)
    }

    /// The first `limit` undelivered notifications of `target`, in order.
    pub async fn head(&self, target: &str, limit: i64) -> Result<Vec<Queued>, OutboxError> {
        let conn = self.pool.get().await.map_err(db)?;
        let rows = conn
            .query(
                "SELECT outbox_id, event, attempts,
                        greatest(extract(epoch FROM next_attempt_at - now()), 0)::float8
                   FROM lily.outbox
                  WHERE target = $1 AND delivered_at IS NULL AND dead_at IS NULL
                  ORDER BY outbox_id
                  LIMIT $2",
                &[&target, &limit],
            )
            .await
            .map_err(db)?;
        Ok(rows
            .iter()
            .map(|r| Queued {
                id: r.get(0),
                event: r.get(1),
                attempts: r.get(2),
                wait: Duration::from_secs_f64(r.get::<_, f64>(3).max(0.0)),
            })
            .collect())
    }

    /// Notifications of `target` waiting to be delivered.
    pub async fn backlog(&self, target: &str) -> Result<i64, OutboxError> {
        let conn = self.pool.get().await.map_err(db)?;
        let row = conn
            .query_one(
                "SELECT count(*) FROM lily.outbox
                  WHERE target = $1 AND delivered_at IS NULL AND dead_at IS NULL",
                &[&target],
            )
            .await
            .map_err(db)?;
        Ok(row.get(0))
    }

    /// Marks `id` delivered.
    pub async fn delivered(&self, id: i64) -> Result<(), OutboxError> {
        let conn = self.pool.get().await.map_err(db)?;
        conn.execute(
            "UPDATE lily.outbox SET delivered_at = now(), attempts = attempts + 1, last_error = NULL
              WHERE outbox_id = $1",
            &[&id],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    /// Records a failed attempt of `id`; the next one is not before `after`.
    pub async fn retry_later(
        &self,
        id: i64,
        after: Duration,
        error: &str,
    ) -> Result<(), OutboxError> {
        let conn = self.pool.get().await.map_err(db)?;
        conn.execute(
            "UPDATE lily.outbox
                SET attempts = attempts + 1, last_error = $2,
                    next_attempt_at = now() + make_interval(secs => $3)
              WHERE outbox_id = $1",
            &[&id, &error, &after.as_secs_f64()],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    /// Takes `id` out of the queue for good (it went to the dead-letter store).
    pub async fn dead(&self, id: i64, error: &str) -> Result<(), OutboxError> {
        let conn = self.pool.get().await.map_err(db)?;
        conn.execute(
            "UPDATE lily.outbox SET dead_at = now(), attempts = attempts + 1, last_error = $2
              WHERE outbox_id = $1",
            &[&id, &error],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    /// Puts a notification back in `target`'s queue, as new (a dead-letter
    /// replay); it keeps its place if it is still in the outbox.
    pub async fn requeue(&self, target: &str, event: &Notification) -> Result<(), OutboxError> {
        let conn = self.pool.get().await.map_err(db)?;
        let value = serde_json::to_value(event).map_err(db)?;
        conn.execute(
            "INSERT INTO lily.outbox (target, dedupe_key, tenant_id, event)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (target, dedupe_key) DO UPDATE
                SET delivered_at = NULL, dead_at = NULL, attempts = 0, last_error = NULL,
                    next_attempt_at = now(), event = EXCLUDED.event",
            &[&target, &event.dedupe_key, &event.tenant_id, &value],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    /// Forgets delivered and dead notifications older than `age` (their
    /// changes were confirmed long ago, so no redelivery can bring them back).
    pub async fn prune(&self, age: Duration) -> Result<u64, OutboxError> {
        let conn = self.pool.get().await.map_err(db)?;
        conn.execute(
            "DELETE FROM lily.outbox
              WHERE (delivered_at IS NOT NULL OR dead_at IS NOT NULL)
                AND created_at < now() - make_interval(secs => $1)",
            &[&age.as_secs_f64()],
        )
        .await
        .map_err(db)
    }
}
