//! The stream loop: reads the replication stream, decodes each pgoutput
//! message, and answers the server's keepalives with the confirmed position.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::debug;

use super::{ChangeReader, OpenTransaction};
use crate::batch::{ChangeOp, TableSchema};
use crate::error::{CdcError, Result};
use crate::lsn::Lsn;
use crate::pgoutput::{self, LogicalMessage};
use crate::wire::{PG_EPOCH_OFFSET_MICROS, ReplicationConnection, StreamMessage};

impl ChangeReader {
    pub(super) async fn stream(
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

    pub(super) fn should_flush(&self, conn: &ReplicationConnection) -> bool {
        if self.buffered_rows == 0 {
            return false;
        }
        self.buffered_rows >= self.config.batch_max_rows
            || self.buffered_bytes >= self.config.batch_max_bytes
            || self.batch_deadline.is_some_and(|d| Instant::now() >= d)
            // At a transaction boundary with nothing more waiting: ship now, latency first.
            || (self.tx.is_none() && !conn.has_buffered_message())
    }

    pub(super) fn handle(&mut self, wal_start: Lsn, data: &[u8]) -> Result<()> {
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
    pub(super) fn mark_position(&mut self, lsn: Lsn, micros: i64) {
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
}
