//! Where changes leave Lily: the contract every destination keeps.
//!
//! The contract lives here, beside the checkpoint it feeds, so that every
//! crate with a destination (the concrete sinks, the lakehouse, the SQL
//! transforms) depends on the CDC core only, never on another
//! destination's clients.
//!
//! # The contract
//! Delivery is at least once. A sink receives change batches in stream order
//! through [`Sink::write`], may buffer them, and makes everything written
//! durable in [`Sink::flush`]. Only after `flush` returns does the runner tell
//! the checkpoint that those batches are safe; the replication slot never
//! moves past data some sink could still lose. After a crash the same changes
//! arrive again, so every sink must be idempotent: each row carries its
//! [`Position`](crate::Position) (commit LSN, place in the transaction),
//! which only grows.
//!
//! A sink answers a failure with one of two errors. [`SinkError::Unavailable`]
//! (the destination is down or overloaded) is retried with [`Backoff`] until
//! it passes: an outage holds the pipeline, it never drops data.
//! [`SinkError::Rejected`] (the data itself is refused: retrying cannot help)
//! is never retried: the [`SinkRunner`] records what was refused in the
//! dead-letter store once, acknowledges it, and goes on, so one bad batch
//! never stalls the other sinks or the slot.

mod backoff;
pub mod dead_letter;
mod fanout;
mod fault;
mod runner;

use std::sync::Arc;

use crate::batch::ChangeBatch;
use crate::lsn::Lsn;

pub use backoff::Backoff;
pub use dead_letter::{ChangesRefused, DeadLetters};
pub use fanout::Fanout;
pub use fault::{Fault, FaultInjector, Faults};
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
    /// The destination refused the data itself; retrying will not help. The
    /// runner dead-letters what was refused and moves on.
    #[error("{sink} rejected the data: {message}")]
    Rejected {
        /// Sink name.
        sink: String,
        /// Why.
        message: String,
    },
}

impl SinkError {
    /// A stable label for metrics: `unavailable` or `rejected`.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkError::Unavailable { .. } => "unavailable",
            SinkError::Rejected { .. } => "rejected",
        }
    }
}

/// An error with its causes, `outer: inner: innermost` (an HTTP client's
/// error says little without the connection error under it).
pub fn error_chain(e: &dyn std::error::Error) -> String {
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
///
/// `write` returning [`SinkError::Rejected`] refuses that batch alone: the
/// sink keeps nothing of it. `flush` returning `Rejected` means nothing
/// buffered can ever be stored: the sink drops its buffer, and the runner
/// dead-letters every batch written since the last successful flush.
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
}
