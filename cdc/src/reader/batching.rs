//! Cutting batches: rows appended per table, batches closed on size, time or
//! a commit, and handed to the sinks in stream order through a bounded
//! channel (the backpressure: a full channel makes the reader wait).

use std::collections::HashMap;
use std::sync::Arc;

use tokio::time::Instant;

use super::ChangeReader;
use crate::batch::{ChangeMeta, ChangeOp, TableBatchBuilder, TableSchema};
use crate::checkpoint::BatchSeq;
use crate::error::{CdcError, Result};
use crate::lsn::Position;
use crate::pgoutput::TupleValue;
use crate::wire::ReplicationConnection;

impl ChangeReader {
    pub(super) fn register_table(&mut self, table: Arc<TableSchema>) {
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

    pub(super) fn append_change(
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

    pub(super) fn append(
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
    pub(super) fn seal(&mut self) -> Result<()> {
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
    pub(super) async fn flush(
        &mut self,
        mut conn: Option<&mut ReplicationConnection>,
    ) -> Result<()> {
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
}
