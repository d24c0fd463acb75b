//! Where changes leave Lily: the [`Sink`] trait, its acknowledgement
//! contract, the [`SinkRunner`] that drives a sink, and the sinks:
//! Elasticsearch ([`elasticsearch`]), Kafka ([`kafka`]), SaaS notifications
//! ([`notify`]), and the dead-letter store ([`dead_letter`]) they share.
//!
//! # The contract
//! Delivery is at least once. A sink receives change batches in stream order
//! through [`Sink::write`], may buffer them, and makes everything written
//! durable in [`Sink::flush`]. Only after `flush` returns does the runner tell
//! the checkpoint that those batches are safe; the replication slot never
//! moves past data some sink could still lose. After a crash the same changes
//! arrive again, so every sink must be idempotent: each row carries its
//! [`Position`](lily_cdc::Position) (commit LSN, place in the transaction),
//! which only grows.

mod console;
pub mod dead_letter;
pub mod elasticsearch;
pub mod kafka;
pub mod notify;
mod null;
mod runner;

use std::sync::Arc;

use lily_cdc::{ChangeBatch, Lsn};

pub use console::ConsoleSink;
pub use null::NullSink;
pub use runner::{FlushPolicy, SinkRunner};

/// Why a sink could not take or store changes.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The destination is unreachable or overloaded; retrying later may work.
    #[error("{sink} is unavailable: {message}")]
    Unavailable {
        /// Sink name.
        sink: String,
        /// What failed.
        message: String,
    },
    /// The destination refused the data itself; retrying will not help.
    #[error("{sink} rejected the data: {message}")]
    Rejected {
        /// Sink name.
        sink: String,
        /// Why.
        message: String,
    },
}

/// An error with its causes, `outer: inner: innermost` (an HTTP client's
/// error says little without the connection error under it).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

/// A destination of change batches.
#[async_trait::async_trait]
pub trait Sink: Send + Sync {
    /// Name used in logs and metrics.
    fn name(&self) -> &str;

    /// Takes a batch. It may only be buffered: nothing is acknowledged until `flush`.
    async fn write(&mut self, batch: Arc<ChangeBatch>) -> Result<(), SinkError>;

    /// Makes everything written so far durable.
    async fn flush(&mut self) -> Result<(), SinkError>;

    /// Rows written but not yet flushed.
    fn buffered_rows(&self) -> usize;

    /// Removes rows of a snapshot taken at `snapshot_lsn` that never
    /// completed, before a new snapshot is delivered.
    async fn discard_snapshot(&mut self, snapshot_lsn: Lsn) -> Result<(), SinkError>;

    /// What a SQL transform feeding this sink must output: `None` when the
    /// sink takes only the change batches as they are; otherwise the columns
    /// it needs (empty: any output).
    fn transform_input(&self) -> Option<Vec<arrow::datatypes::Field>> {
        Some(Vec::new())
    }

    /// Checks that the destination is reachable and usable.
    async fn healthcheck(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}
