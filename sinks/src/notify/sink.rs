//! The pipeline's side of a target: queues the filter's notifications in the
//! outbox. That is all the checkpoint waits for; delivery happens after.

use std::sync::Arc;

use lily_cdc::{ChangeBatch, Lsn};
use serde_json::json;
use tokio::sync::Notify;
use tracing::warn;

use super::event::{BadRow, Notification, notifications, required_columns};
use super::outbox::Outbox;
use lily_cdc::sink::dead_letter::{DeadLetters, NewDeadLetter};
use lily_cdc::sink::{Sink, SinkError};

/// Queues a target's notifications (the output of its filter transform).
pub struct NotifySink {
    sink_name: String,
    target: String,
    tenants: Vec<String>,
    outbox: Outbox,
    dead_letters: DeadLetters,
    pending: Vec<Notification>,
    bad: Vec<BadRow>,
    wake: Arc<Notify>,
}

impl NotifySink {
    /// The sink of `target`, keeping only `tenants` (all when empty); wakes
    /// the target's worker through `wake` after each flush.
    pub fn new(
        target: &str,
        tenants: Vec<String>,
        outbox: Outbox,
        dead_letters: DeadLetters,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            sink_name: target.to_owned(),
            target: target.to_owned(),
            tenants,
            outbox,
            dead_letters,
            pending: Vec::new(),
            bad: Vec::new(),
            wake,
        }
    }

    fn unavailable(&self, message: impl std::fmt::Display) -> SinkError {
        SinkError::Unavailable {
            sink: self.sink_name.clone(),
            message: message.to_string(),
        }
    }
}

#[async_trait::async_trait]
impl Sink for NotifySink {
    fn name(&self) -> &str {
        &self.sink_name
    }

    async fn write(&mut self, batch: Arc<ChangeBatch>) -> Result<(), SinkError> {
        let (good, bad) =
            notifications(&self.target, &batch.records).map_err(|e| SinkError::Rejected {
                sink: self.sink_name.clone(),
                message: e.to_string(),
            })?;
        self.pending.extend(
            good.into_iter()
                .filter(|n| self.tenants.is_empty() || self.tenants.contains(&n.tenant_id)),
        );
        self.bad.extend(bad);
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        while let Some(bad) = self.bad.first() {
            metrics::counter!("lily_errors_total", "stage" => "notify", "kind" => "bad_output")
                .increment(1);
            warn!(target = %self.target, error = %bad.error, "a filter row is not a notification; kept as a dead letter");
            self.dead_letters
                .record(&NewDeadLetter {
                    source: crate::registry::source::NOTIFY,
                    tenant_id: bad.tenant_id.as_deref(),
                    reference: &format!("{}:bad-row", self.target),
                    error_code: "bad_output",
                    error: &bad.error,
                    payload: Some(bad.row.as_bytes()),
                    details: json!({"target": self.target}),
                })
                .await
                .map_err(|e| self.unavailable(e))?;
            self.bad.remove(0);
        }
        let queued = self
            .outbox
            .enqueue(&self.target, &self.pending)
            .await
            .map_err(|e| self.unavailable(e))?;
        metrics::counter!("lily_notify_queued_total", "target" => self.target.clone())
            .increment(queued);
        self.pending.clear();
        if queued > 0 {
            self.wake.notify_one();
        }
        Ok(())
    }

    fn buffered_rows(&self) -> usize {
        self.pending.len() + self.bad.len()
    }

    async fn discard_snapshot(&mut self, _snapshot_lsn: Lsn) -> Result<(), SinkError> {
        // Filters skip snapshot rows (`_op = 'r'`): there is nothing to take back.
        Ok(())
    }

    fn transform_input(&self) -> Option<Vec<arrow::datatypes::Field>> {
        Some(required_columns())
    }
}
