//! [`AuditSink`]: appends every change to `audit/changes`, exactly once.
//!
//! Idempotence: each Delta commit also records, as two application
//! transactions, the position (commit LSN, place in the transaction) of the
//! last row it holds. On start the sink reads them back and drops any
//! redelivered row at or before that position, so a crash between the Delta
//! commit and the slot's confirmation never duplicates a row.

use std::sync::Arc;

use arrow::array::RecordBatch;
use deltalake::DeltaTable;
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::protocol::SaveMode;
use lily_cdc::sink::{Sink, SinkError};
use lily_cdc::{ChangeBatch, Lsn, Position};
use tracing::{debug, info};

use crate::audit_schema::{AUDIT_TABLE, audit_schema, to_audit_rows};
use crate::error::LakeError;
use crate::location::LakeLocation;

/// Application id whose version is the commit LSN of the last row written.
pub const APP_COMMIT_LSN: &str = "lily.audit.commit_lsn";
/// Application id whose version is that row's place in its transaction.
pub const APP_SEQ: &str = "lily.audit.seq";

const NAME: &str = "lake.audit";

/// Appends change batches to the Delta audit table.
pub struct AuditSink {
    table: DeltaTable,
    watermark: Option<Position>,
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    pending_last: Option<Position>,
    stale: bool,
}

fn unavailable(e: impl std::fmt::Display) -> SinkError {
    SinkError::Unavailable {
        sink: NAME.into(),
        message: e.to_string(),
    }
}

impl AuditSink {
    /// Opens (or prepares to create) `audit/changes` under `location` and reads its watermark.
    pub async fn open(location: &LakeLocation) -> Result<Self, LakeError> {
        let mut table = location.open_table(AUDIT_TABLE).await?;
        if table.version().is_none() {
            table = create_table(table).await?;
        }
        let watermark = read_watermark(&table).await?;
        info!(table = %table.table_url(), watermark = ?watermark, "audit table opened");
        Ok(AuditSink {
            table,
            watermark,
            pending: Vec::new(),
            pending_rows: 0,
            pending_last: None,
            stale: false,
        })
    }

    /// Position of the last row durably stored.
    pub fn watermark(&self) -> Option<Position> {
        self.watermark
    }

    async fn reload(&mut self) -> Result<(), LakeError> {
        if self.table.version().is_some() || self.table.load().await.is_ok() {
            self.table
                .update_state()
                .await
                .map_err(|source| LakeError::Delta {
                    table: self.table.table_url().to_string(),
                    source,
                })?;
        }
        self.watermark = read_watermark(&self.table).await?;
        Ok(())
    }
}

/// Creates the audit table with its schema and partitioning, so readers find
/// it (empty) even before the first change.
async fn create_table(table: DeltaTable) -> Result<DeltaTable, LakeError> {
    use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
    let url = table.table_url().to_string();
    let schema: deltalake::kernel::StructType = audit_schema().as_ref().try_into_kernel()?;
    table
        .create()
        .with_columns(schema.fields().cloned())
        .with_partition_columns(["tenant_id", "day"])
        .with_comment("Every change to the Lily metastore, one row per row change")
        .await
        .map_err(|source| LakeError::Delta { table: url, source })
}

async fn read_watermark(table: &DeltaTable) -> Result<Option<Position>, LakeError> {
    if table.version().is_none() {
        return Ok(None);
    }
    let err = |source| LakeError::Delta {
        table: table.table_url().to_string(),
        source,
    };
    let snapshot = table.snapshot().map_err(err)?;
    let store = table.log_store();
    let lsn = snapshot
        .transaction_version(store.as_ref(), APP_COMMIT_LSN)
        .await
        .map_err(err)?;
    let seq = snapshot
        .transaction_version(store.as_ref(), APP_SEQ)
        .await
        .map_err(err)?;
    Ok(match (lsn, seq) {
        (Some(lsn), Some(seq)) => Some(Position {
            commit_lsn: Lsn(lsn as u64),
            seq: seq as u64,
        }),
        _ => None,
    })
}

#[async_trait::async_trait]
impl Sink for AuditSink {
    fn name(&self) -> &str {
        NAME
    }

    /// The audit keeps every change as it happened: no transform feeds it.
    fn transform_input(&self) -> Option<Vec<arrow::datatypes::Field>> {
        None
    }

    async fn write(&mut self, batch: Arc<ChangeBatch>) -> Result<(), SinkError> {
        let floor = self.pending_last.or(self.watermark);
        if let Some(rows) = to_audit_rows(&batch, floor).map_err(|e| SinkError::Rejected {
            sink: NAME.into(),
            message: e.to_string(),
        })? {
            self.pending_rows += rows.num_rows();
            self.pending.push(rows);
            self.pending_last = Some(batch.last);
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        if self.stale {
            // The last commit may or may not have landed: trust only the table.
            self.reload().await.map_err(unavailable)?;
            if let Some(w) = self.watermark
                && self.pending_last.is_some_and(|last| last <= w)
            {
                debug!("the previous attempt had committed; nothing to write");
                self.pending.clear();
                self.pending_rows = 0;
                self.pending_last = None;
            }
            self.stale = false;
        }
        let Some(last) = self.pending_last else {
            return Ok(());
        };
        let props = CommitProperties::default().with_application_transactions(vec![
            Transaction::new(APP_COMMIT_LSN, last.commit_lsn.0 as i64),
            Transaction::new(APP_SEQ, last.seq as i64),
        ]);
        let result = self
            .table
            .clone()
            .write(self.pending.clone())
            .with_save_mode(SaveMode::Append)
            .with_partition_columns(["tenant_id", "day"])
            .with_commit_properties(props)
            .await;
        match result {
            Ok(table) => {
                info!(rows = self.pending_rows, version = ?table.version(), through = ?last, "audit rows committed");
                self.table = table;
                self.watermark = Some(last);
                self.pending.clear();
                self.pending_rows = 0;
                self.pending_last = None;
                Ok(())
            }
            Err(e) => {
                self.stale = true;
                Err(unavailable(e))
            }
        }
    }

    fn buffered_rows(&self) -> usize {
        self.pending_rows
    }

    async fn discard_snapshot(&mut self, snapshot_lsn: Lsn) -> Result<(), SinkError> {
        if self.table.version().is_none() {
            return Ok(());
        }
        let (table, metrics) = self
            .table
            .clone()
            .delete()
            .with_predicate(format!(
                "op = 'r' AND commit_lsn = {}",
                snapshot_lsn.0 as i64
            ))
            .await
            .map_err(unavailable)?;
        info!(%snapshot_lsn, deleted = metrics.num_deleted_rows, "discarded the rows of an unfinished snapshot");
        self.table = table;
        Ok(())
    }
}
