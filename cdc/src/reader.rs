//! The change reader: streams a slot, turns pgoutput into change batches and
//! reports the confirmed position back to the server.
//!
//! Its life, per slot: `Snapshot` (first start, or a snapshot that never
//! became durable: the slot is recreated with an exported snapshot, every
//! published table is copied at it, then the state is marked done once every
//! sink holds it) → `Streaming` (from the slot's confirmed position).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::batch::{ChangeBatch, ChangeMeta, ChangeOp, TableBatchBuilder, TableSchema};
use crate::catalog::{self, quote_ident};
use crate::checkpoint::{AckTracker, BatchSeq};
use crate::copy::{self, CopyRow};
use crate::error::{CdcError, Result};
use crate::lsn::{Lsn, Position};
use crate::pgoutput::{self, LogicalMessage, TupleValue};
use crate::slot::{ReplicationSlot, SnapshotState};
use crate::wire::{ConnectParams, PG_EPOCH_OFFSET_MICROS, ReplicationConnection, StreamMessage};

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

    async fn stream(
        &mut self,
        conn: &mut ReplicationConnection,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<()> {
        let mut last_sent = Lsn::ZERO;
        let mut status_due = Instant::now();
        loop {
            let mut deadline = status_due;
            if let Some(d) = self.batch_deadline {
                deadline = deadline.min(d);
            }
            let mut reply_now = false;
            tokio::select! {
                biased;
                _ = shutdown.changed() => return Ok(()),
                msg = tokio::time::timeout_at(deadline, conn.next_message()) => match msg {
                    Err(_) => {}
                    Ok(msg) => match msg? {
                        StreamMessage::XLogData { wal_start, wal_end, data } => {
                            self.server_wal_end = self.server_wal_end.max(wal_end);
                            self.handle(wal_start, &data)?;
                        }
                        StreamMessage::Keepalive { wal_end, reply_requested } => {
                            self.server_wal_end = self.server_wal_end.max(wal_end);
                            self.mark_position(wal_end, 0);
                            reply_now = reply_requested;
                        }
                        StreamMessage::End => {
                            return Err(CdcError::Protocol("the server ended the replication stream".into()));
                        }
                    },
                },
            }
            if self.should_flush(conn) {
                self.flush(Some(&mut *conn)).await?;
            }
            let confirmed = self.acks.confirmed();
            let now = Instant::now();
            if reply_now || now >= status_due || confirmed > last_sent {
                conn.send_status(confirmed, false).await?;
                last_sent = confirmed;
                status_due = now + self.config.status_interval;
                self.record_lag(confirmed);
            }
        }
    }

    fn should_flush(&self, conn: &ReplicationConnection) -> bool {
        if self.buffered_rows == 0 {
            return false;
        }
        self.buffered_rows >= self.config.batch_max_rows
            || self.buffered_bytes >= self.config.batch_max_bytes
            || self.batch_deadline.is_some_and(|d| Instant::now() >= d)
            // At a transaction boundary with nothing more waiting: ship now, latency first.
            || (self.tx.is_none() && !conn.has_buffered_message())
    }

    fn handle(&mut self, wal_start: Lsn, data: &[u8]) -> Result<()> {
        let msg = pgoutput::decode(data).map_err(|message| CdcError::Decode {
            lsn: wal_start,
            message,
        })?;
        match msg {
            LogicalMessage::Begin {
                final_lsn,
                commit_time,
                xid,
            } => {
                self.tx = Some(OpenTransaction {
                    commit_lsn: final_lsn,
                    commit_micros: commit_time + PG_EPOCH_OFFSET_MICROS,
                    xid,
                    next_seq: 0,
                });
            }
            LogicalMessage::Commit {
                end_lsn,
                commit_time,
                ..
            } => {
                let tx = self.tx.take();
                let micros = commit_time + PG_EPOCH_OFFSET_MICROS;
                if tx.is_some_and(|t| t.next_seq > 0) || !self.unflushed_commits.is_empty() {
                    self.unflushed_commits.push((end_lsn, micros));
                } else {
                    self.acks
                        .confirm_after(self.last_batch_seq, end_lsn, micros);
                }
                self.last_marker = self.last_marker.max(end_lsn);
            }
            LogicalMessage::Relation(rel) => {
                let table = Arc::new(TableSchema::from_relation(&rel));
                self.register_table(table);
            }
            LogicalMessage::Insert { relation_id, new } => {
                let row: Vec<_> = new.values().collect();
                self.append_change(relation_id, ChangeOp::Insert, Some(&row), None)?;
            }
            LogicalMessage::Update {
                relation_id,
                old,
                new,
                ..
            } => {
                let row: Vec<_> = new.values().collect();
                let before: Option<Vec<_>> = old.map(|o| o.values().collect());
                self.append_change(relation_id, ChangeOp::Update, Some(&row), before.as_deref())?;
            }
            LogicalMessage::Delete {
                relation_id, old, ..
            } => {
                let before: Vec<_> = old.values().collect();
                self.append_change(relation_id, ChangeOp::Delete, Some(&before), Some(&before))?;
            }
            LogicalMessage::Truncate { relation_ids, .. } => {
                for id in relation_ids {
                    self.append_change(id, ChangeOp::Truncate, None, None)?;
                }
            }
            LogicalMessage::Message {
                transactional: false,
                lsn,
                prefix,
                ..
            } => {
                debug!(%lsn, %prefix, "logical message");
                self.mark_position(lsn, 0);
            }
            LogicalMessage::Message { .. }
            | LogicalMessage::Type { .. }
            | LogicalMessage::Origin { .. } => {}
        }
        Ok(())
    }

    /// Records that everything before `lsn` has been received; confirmable
    /// once the rows still buffered are durable.
    fn mark_position(&mut self, lsn: Lsn, micros: i64) {
        if self.tx.is_some() || lsn <= self.last_marker {
            return;
        }
        self.last_marker = lsn;
        if self.buffered_rows > 0 || !self.unflushed_commits.is_empty() {
            self.unflushed_commits.push((lsn, micros));
        } else {
            self.acks.confirm_after(self.last_batch_seq, lsn, micros);
        }
    }

    fn register_table(&mut self, table: Arc<TableSchema>) {
        match self.tables.get(&table.relation_id) {
            Some(&i) if self.builders[i].table().arrow == table.arrow => {}
            Some(&i) => {
                // The table's shape changed: rows already buffered keep the
                // old schema, so that builder is retired at the next flush.
                let retired =
                    std::mem::replace(&mut self.builders[i], TableBatchBuilder::new(table));
                if retired.rows() > 0 {
                    self.builders.push(retired);
                }
            }
            None => {
                self.tables.insert(table.relation_id, self.builders.len());
                self.builders.push(TableBatchBuilder::new(table));
            }
        }
    }

    fn append_change(
        &mut self,
        relation_id: u32,
        op: ChangeOp,
        row: Option<&[TupleValue<'_>]>,
        before: Option<&[TupleValue<'_>]>,
    ) -> Result<()> {
        let tx = self
            .tx
            .as_mut()
            .ok_or_else(|| CdcError::Protocol("row change outside a transaction".into()))?;
        let meta = ChangeMeta {
            op,
            position: Position {
                commit_lsn: tx.commit_lsn,
                seq: tx.next_seq,
            },
            commit_micros: tx.commit_micros,
            xid: tx.xid,
        };
        tx.next_seq += 1;
        self.append(relation_id, meta, row, before)
    }

    fn append(
        &mut self,
        relation_id: u32,
        meta: ChangeMeta,
        row: Option<&[TupleValue<'_>]>,
        before: Option<&[TupleValue<'_>]>,
    ) -> Result<()> {
        let &i = self.tables.get(&relation_id).ok_or_else(|| {
            CdcError::Protocol(format!(
                "row for relation {relation_id} before its Relation message"
            ))
        })?;
        // Batches go out in stream order, so every sink sees positions only
        // grow. A transaction that goes back to a table after touching
        // another (assets, classifications, assets) would put a later row in
        // an earlier batch: close what is buffered first.
        if self.builders[i].rows() > 0 && self.last_builder != Some(i) {
            self.seal()?;
        }
        self.last_builder = Some(i);
        let builder = &mut self.builders[i];
        let before_bytes = builder.bytes();
        builder.append(meta, row, before)?;
        self.buffered_bytes += builder.bytes() - before_bytes;
        self.buffered_rows += 1;
        if self.batch_deadline.is_none() {
            self.batch_deadline = Some(Instant::now() + self.config.batch_max_wait);
        }
        Ok(())
    }

    /// Closes every non-empty builder into a batch kept for the next flush,
    /// in stream order.
    fn seal(&mut self) -> Result<()> {
        let mut order: Vec<usize> = (0..self.builders.len())
            .filter(|&i| self.builders[i].rows() > 0)
            .collect();
        order.sort_by_key(|&i| self.builders[i].first_position());
        for i in order {
            // The sequence number is given when the batch is sent.
            if let Some(batch) = self.builders[i].finish(BatchSeq::ZERO)? {
                self.sealed.push(batch);
            }
        }
        Ok(())
    }

    /// Closes every non-empty builder into a batch and hands them on, in stream order.
    /// `conn`, when streaming, is kept alive while the pipeline applies
    /// backpressure: status updates go out although nothing more is read, so
    /// the server does not take a slow sink for a dead client.
    async fn flush(&mut self, mut conn: Option<&mut ReplicationConnection>) -> Result<()> {
        self.seal()?;
        self.last_builder = None;
        for mut batch in std::mem::take(&mut self.sealed) {
            self.last_batch_seq = self.last_batch_seq.next();
            batch.seq = self.last_batch_seq;
            let table = batch.table.qualified_name();
            metrics::counter!("lily_changes_read_total", "table" => table.clone())
                .increment(batch.num_rows() as u64);
            metrics::histogram!("lily_batch_rows", "table" => table)
                .record(batch.num_rows() as f64);
            let output = self.output.clone().ok_or(CdcError::Closed)?;
            let mut batch = Some(Arc::new(batch));
            while let Some(b) = batch.take() {
                tokio::select! {
                    permit = output.reserve() => permit.map_err(|_| CdcError::Closed)?.send(b),
                    _ = tokio::time::sleep(self.config.status_interval), if conn.is_some() => {
                        batch = Some(b);
                        if let Some(c) = conn.as_deref_mut() {
                            c.send_status(self.acks.confirmed(), false).await?;
                        }
                        metrics::counter!("lily_backpressure_waits_total").increment(1);
                    }
                }
            }
        }
        // Retired builders (old table shapes) are empty now.
        let live: std::collections::HashSet<usize> = self.tables.values().copied().collect();
        if live.len() != self.builders.len() {
            let mut keep = Vec::new();
            let mut remap = HashMap::new();
            for (i, b) in std::mem::take(&mut self.builders).into_iter().enumerate() {
                if live.contains(&i) {
                    remap.insert(i, keep.len());
                    keep.push(b);
                }
            }
            self.builders = keep;
            for v in self.tables.values_mut() {
                *v = remap[v];
            }
        }
        metrics::histogram!("lily_batch_bytes").record(self.buffered_bytes as f64);
        for (lsn, micros) in self.unflushed_commits.drain(..) {
            self.acks.confirm_after(self.last_batch_seq, lsn, micros);
        }
        self.buffered_rows = 0;
        self.buffered_bytes = 0;
        self.batch_deadline = None;
        Ok(())
    }

    /// Creates the slot with an exported snapshot and copies every published table at it.
    async fn snapshot(&mut self, conn: &mut ReplicationConnection) -> Result<Lsn> {
        self.slot.drop_if_exists(&self.sql).await?;
        let (point, snapshot) = self.slot.create_exporting_snapshot(conn).await?;
        SnapshotState::InProgress { at: point }
            .save(&self.sql, &self.config.slot)
            .await?;
        info!(consistent_point = %point, %snapshot, "slot created; copying tables at its snapshot");
        let tables = catalog::published_tables(&self.sql, &self.config.publication).await?;
        let sql = self.sql.clone();
        sql.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(CdcError::sql("opening the snapshot transaction"))?;
        sql.batch_execute(&format!("SET TRANSACTION SNAPSHOT '{snapshot}'"))
            .await
            .map_err(CdcError::sql("importing the slot's snapshot"))?;
        let micros = crate::wire::now_pg_micros() + PG_EPOCH_OFFSET_MICROS;
        self.tx = Some(OpenTransaction {
            commit_lsn: point,
            commit_micros: micros,
            xid: 0,
            next_seq: 0,
        });
        for (schema, name) in tables {
            let rel = catalog::relation(&sql, &schema, &name).await?;
            let table = Arc::new(TableSchema::from_relation(&rel));
            let relation_id = table.relation_id;
            let cols = table
                .columns
                .iter()
                .map(|c| quote_ident(&c.name))
                .collect::<Vec<_>>()
                .join(", ");
            self.register_table(table);
            let query = format!(
                "COPY {}.{} ({cols}) TO STDOUT (FORMAT binary)",
                quote_ident(&schema),
                quote_ident(&name)
            );
            let rows = self.copy_table(&sql, &query, relation_id).await?;
            info!(table = %format!("{schema}.{name}"), rows, "table copied");
        }
        self.tx = None;
        sql.batch_execute("COMMIT")
            .await
            .map_err(CdcError::sql("closing the snapshot transaction"))?;
        if self.buffered_rows > 0 {
            self.flush(None).await?;
        }
        self.last_marker = point;
        Ok(point)
    }

    async fn copy_table(
        &mut self,
        sql: &tokio_postgres::Client,
        query: &str,
        relation_id: u32,
    ) -> Result<u64> {
        let stream = sql
            .copy_out(query)
            .await
            .map_err(CdcError::sql(query.to_string()))?;
        futures::pin_mut!(stream);
        let mut buf = BytesMut::new();
        let mut header_done = false;
        let mut rows = 0u64;
        while let Some(chunk) = stream.next().await {
            let mut values = Vec::new();
            let chunk = chunk.map_err(CdcError::sql(query.to_string()))?;
            buf.extend_from_slice(&chunk);
            let mut pos = 0;
            if !header_done {
                match copy::header_len(&buf).map_err(CdcError::Protocol)? {
                    Some(n) => {
                        pos = n;
                        header_done = true;
                    }
                    None => continue,
                }
            }
            loop {
                let tx = self
                    .tx
                    .as_mut()
                    .ok_or_else(|| CdcError::Protocol("snapshot without transaction".into()))?;
                let meta = ChangeMeta {
                    op: ChangeOp::Read,
                    position: Position {
                        commit_lsn: tx.commit_lsn,
                        seq: tx.next_seq,
                    },
                    commit_micros: tx.commit_micros,
                    xid: 0,
                };
                match copy::read_row(&buf[pos..], &mut values).map_err(CdcError::Protocol)? {
                    CopyRow::Row(n) => {
                        tx.next_seq += 1;
                        self.append(relation_id, meta, Some(&values), None)?;
                        pos += n;
                        rows += 1;
                    }
                    CopyRow::End | CopyRow::Incomplete => break,
                }
            }
            drop(values);
            let _ = buf.split_to(pos);
            if self.buffered_rows >= self.config.batch_max_rows
                || self.buffered_bytes >= self.config.batch_max_bytes
            {
                self.flush(None).await?;
            }
        }
        Ok(rows)
    }

    fn spawn_heartbeat(&self) -> Option<tokio::task::JoinHandle<()>> {
        if self.config.heartbeat_interval.is_zero() {
            return None;
        }
        let sql = self.sql.clone();
        let every = self.config.heartbeat_interval;
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let r = sql
                    .execute(
                        "SELECT pg_logical_emit_message(false, $1, '')",
                        &[&HEARTBEAT_PREFIX],
                    )
                    .await;
                if let Err(e) = r {
                    warn!(error = %e, "heartbeat failed");
                    metrics::counter!("lily_errors_total", "stage" => "cdc", "kind" => "heartbeat")
                        .increment(1);
                }
            }
        }))
    }

    fn record_lag(&self, confirmed: Lsn) {
        let lag_bytes = self.server_wal_end.bytes_after(confirmed);
        metrics::gauge!("lily_slot_lag_bytes").set(lag_bytes as f64);
        metrics::gauge!("lily_slot_confirmed_lsn").set(confirmed.0 as f64);
        let now = crate::wire::now_pg_micros() + PG_EPOCH_OFFSET_MICROS;
        let lag_seconds = self
            .acks
            .oldest_unconfirmed_commit()
            .map(|t| (now - t).max(0) as f64 / 1e6)
            .unwrap_or(0.0);
        metrics::gauge!("lily_slot_lag_seconds").set(lag_seconds);
        let over = lag_bytes > self.config.max_lag_bytes;
        metrics::gauge!("lily_slot_lag_over_budget").set(if over { 1.0 } else { 0.0 });
        if over {
            warn!(
                lag_bytes,
                budget = self.config.max_lag_bytes,
                "the slot retains more WAL than its budget: a sink is behind"
            );
        }
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
