//! The change reader: streams a slot, turns pgoutput into change batches and
//! reports the confirmed position back to the server.
//!
//! Its life, per slot: `Snapshot` (first start, or a snapshot that never
//! became durable: the slot is recreated with an exported snapshot, every
//! published table is copied at it, then the state is marked done once every
//! sink holds it) → `Streaming` (from the slot's confirmed position).
//!
//! This module is the reader's life (plan, run, stop); each job it does on
//! the way has its own: the stream loop (`stream.rs`), cutting batches and the
//! backpressure of handing them on (`batching.rs`), the snapshot
//! (`snapshot.rs`), heartbeats and lag (`liveness.rs`).

mod batching;
mod liveness;
mod snapshot;
mod stream;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{Instrument, info, info_span, warn};

use crate::batch::{ChangeBatch, TableBatchBuilder};
use crate::checkpoint::{AckTracker, BatchSeq};
use crate::error::{CdcError, Result};
use crate::lsn::Lsn;
use crate::slot::{ReplicationSlot, SnapshotState};
use crate::wire::{ConnectParams, ReplicationConnection};

/// Prefix of the logical messages the reader emits so an idle database never pins WAL.
pub const HEARTBEAT_PREFIX: &str = "lily.heartbeat";

/// How the reader batches and talks to the server.
#[derive(Debug, Clone)]
pub struct ReaderConfig {
    /// Slot name.
    pub slot: String,
    /// Publication name.
    pub publication: String,
    /// A batch closes at this many rows...
    pub batch_max_rows: usize,
    /// ...or this many payload bytes...
    pub batch_max_bytes: usize,
    /// ...or this long after its first row; and at a commit when nothing more is waiting.
    pub batch_max_wait: Duration,
    /// Standby status updates at least this often.
    pub status_interval: Duration,
    /// A heartbeat message this often; zero disables it.
    pub heartbeat_interval: Duration,
    /// Retained WAL beyond which the lag alert metric is raised.
    pub max_lag_bytes: u64,
}

impl Default for ReaderConfig {
    fn default() -> Self {
        ReaderConfig {
            slot: "lily".into(),
            publication: "lily_metastore".into(),
            batch_max_rows: 8192,
            batch_max_bytes: 8 << 20,
            batch_max_wait: Duration::from_millis(20),
            status_interval: Duration::from_secs(1),
            heartbeat_interval: Duration::from_secs(10),
            max_lag_bytes: 1 << 30,
        }
    }
}

/// How a run starts, decided before it so sinks can prepare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartPlan {
    /// Copy every published table first. A snapshot begun earlier at
    /// `discard` never completed: sinks drop its rows before the new one.
    Snapshot {
        /// Consistent point of an unfinished earlier snapshot.
        discard: Option<Lsn>,
    },
    /// Stream from the slot's confirmed position.
    Resume {
        /// Where the slot stands.
        from: Lsn,
    },
}

struct OpenTransaction {
    commit_lsn: Lsn,
    commit_micros: i64,
    xid: u32,
    next_seq: u64,
}

/// Reads a slot into change batches.
pub struct ChangeReader {
    params: ConnectParams,
    sql: Arc<tokio_postgres::Client>,
    config: ReaderConfig,
    acks: AckTracker,
    output: Option<mpsc::Sender<Arc<ChangeBatch>>>,
    slot: ReplicationSlot,
    tables: HashMap<u32, usize>,
    builders: Vec<TableBatchBuilder>,
    /// Batches closed early to keep stream order, waiting for the next flush.
    sealed: Vec<ChangeBatch>,
    /// The builder that took the last row.
    last_builder: Option<usize>,
    last_batch_seq: BatchSeq,
    buffered_rows: usize,
    buffered_bytes: usize,
    batch_deadline: Option<Instant>,
    tx: Option<OpenTransaction>,
    /// Ends of transactions (or heartbeat positions) whose rows are still in builders.
    unflushed_commits: Vec<(Lsn, i64)>,
    server_wal_end: Lsn,
    last_marker: Lsn,
}

impl ChangeReader {
    /// A reader of `config.slot`. `sql` is a regular connection to the same database.
    pub fn new(
        params: ConnectParams,
        sql: Arc<tokio_postgres::Client>,
        config: ReaderConfig,
        acks: AckTracker,
        output: mpsc::Sender<Arc<ChangeBatch>>,
    ) -> Self {
        let slot = ReplicationSlot::new(config.slot.clone());
        ChangeReader {
            params,
            sql,
            config,
            acks,
            output: Some(output),
            slot,
            tables: HashMap::new(),
            builders: Vec::new(),
            sealed: Vec::new(),
            last_builder: None,
            last_batch_seq: BatchSeq::ZERO,
            buffered_rows: 0,
            buffered_bytes: 0,
            batch_deadline: None,
            tx: None,
            unflushed_commits: Vec::new(),
            server_wal_end: Lsn::ZERO,
            last_marker: Lsn::ZERO,
        }
    }

    /// Decides whether this run snapshots or resumes.
    pub async fn plan(&self) -> Result<StartPlan> {
        let state = SnapshotState::load(&self.sql, &self.config.slot).await?;
        let slot = self.slot.inspect(&self.sql).await?;
        let lost = slot
            .as_ref()
            .is_some_and(|s| s.wal_status.as_deref() == Some("lost"));
        metrics::gauge!("lily_slot_invalidated").set(if lost { 1.0 } else { 0.0 });
        if lost && state.is_delivered() {
            return Err(CdcError::SlotInvalidated {
                slot: self.config.slot.clone(),
            });
        }
        Ok(match slot {
            Some(info) if state.is_delivered() => StartPlan::Resume {
                from: info.confirmed_flush.unwrap_or(Lsn::ZERO),
            },
            _ => StartPlan::Snapshot {
                discard: state.point(),
            },
        })
    }

    /// Runs until `shutdown` turns true or an error stops it.
    pub async fn run(mut self, plan: StartPlan, mut shutdown: watch::Receiver<bool>) -> Result<()> {
        let mut conn = ReplicationConnection::connect(&self.params).await?;
        let start = match plan {
            StartPlan::Resume { from } => {
                info!(slot = %self.config.slot, %from, "resuming from the slot");
                self.acks.start_at(from);
                Lsn::ZERO
            }
            StartPlan::Snapshot { .. } => {
                let span = info_span!("snapshot", slot = %self.config.slot);
                let point = self.snapshot(&mut conn).instrument(span).await?;
                // The snapshot counts only once every sink holds it.
                let last = self.last_batch_seq;
                tokio::select! {
                    _ = self.acks.wait_durable(last) => {}
                    _ = shutdown.changed() => return self.shutdown(conn).await,
                }
                SnapshotState::Delivered { at: Some(point) }
                    .save(&self.sql, &self.config.slot)
                    .await?;
                self.acks.start_at(point);
                info!(consistent_point = %point, "snapshot delivered to every sink");
                point
            }
        };
        let publication = self.config.publication.clone();
        conn.start_replication(
            &self.config.slot,
            start,
            &[
                ("proto_version", "1"),
                ("publication_names", &publication),
                ("binary", "true"),
                ("messages", "true"),
            ],
        )
        .await?;
        info!(slot = %self.config.slot, publication = %publication, "streaming");
        let heartbeat = self.spawn_heartbeat();
        let span = info_span!("stream", slot = %self.config.slot);
        let result = self.stream(&mut conn, &mut shutdown).instrument(span).await;
        if let Some(h) = heartbeat {
            h.abort();
        }
        result?;
        self.shutdown(conn).await
    }

    /// Ships what is buffered, lets the sinks finish, confirms what they hold.
    async fn shutdown(mut self, mut conn: ReplicationConnection) -> Result<()> {
        if self.buffered_rows > 0 {
            self.flush(None).await?;
        }
        self.output = None;
        let last = self.last_batch_seq;
        if tokio::time::timeout(Duration::from_secs(30), self.acks.wait_durable(last))
            .await
            .is_err()
        {
            warn!("sinks did not finish within 30 s; their changes will be redelivered");
        }
        let confirmed = self.acks.confirmed();
        // The connection may be mid-snapshot (not streaming); a failed final status is harmless.
        let _ = conn.send_status(confirmed, false).await;
        let _ = conn.close().await;
        info!(%confirmed, "reader stopped");
        Ok(())
    }
}
