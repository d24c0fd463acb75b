//! The stage of the pipeline that keeps the policy snapshot current: every
//! committed change to policies, governed tables, assets or tags (direct or
//! propagated) compiles a new snapshot before it is acknowledged.

use std::sync::Arc;

use async_trait::async_trait;
use lily_cdc::sink::{Sink, SinkError};
use lily_cdc::{ChangeBatch, Lsn};

use super::store::PolicyStore;

/// The metastore tables a snapshot is compiled from.
const WATCHED: [&str; 4] = [
    "masking_policies",
    "governed_tables",
    "classifications",
    "assets",
];

/// Whether `batch` only adds assets: a new asset has no tags yet (its tags
/// arrive as `classifications` rows, which are watched), so a bulk load of
/// assets compiles nothing. Renamed, moved or removed assets are watched.
fn only_new_assets(batch: &ChangeBatch) -> bool {
    use arrow::array::AsArray;
    if batch.table.name != "assets" {
        return false;
    }
    let Some(ops) = batch.records.column_by_name(lily_cdc::batch::OP) else {
        return false;
    };
    let Some(ops) = ops.as_string_opt::<i32>() else {
        return false;
    };
    ops.iter().all(|op| matches!(op, Some("c") | Some("r")))
}

/// Compiles the policy snapshot when a flushed batch touched what it is made of.
pub struct PolicySink {
    store: Arc<PolicyStore>,
    touched: bool,
    rows: usize,
}

impl PolicySink {
    /// The stage for `store`.
    pub fn new(store: Arc<PolicyStore>) -> Self {
        Self {
            store,
            touched: false,
            rows: 0,
        }
    }
}

#[async_trait]
impl Sink for PolicySink {
    fn name(&self) -> &str {
        "policies"
    }

    async fn write(&mut self, batch: Arc<ChangeBatch>) -> Result<(), SinkError> {
        if WATCHED.contains(&batch.table.name.as_str()) && !only_new_assets(&batch) {
            // Statements planned from now on wait for the new snapshot
            // rather than read an old one.
            self.store.invalidate();
            self.touched = true;
            self.rows += batch.num_rows();
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        if !self.touched {
            return Ok(());
        }
        self.store
            .refresh()
            .await
            .map_err(|e| SinkError::Unavailable {
                sink: "policies".into(),
                message: e.to_string(),
            })?;
        self.touched = false;
        self.rows = 0;
        Ok(())
    }

    fn buffered_rows(&self) -> usize {
        self.rows
    }

    async fn discard_snapshot(&mut self, _snapshot_lsn: Lsn) -> Result<(), SinkError> {
        Ok(())
    }

    fn transform_input(&self) -> Option<Vec<arrow::datatypes::Field>> {
        None
    }
}
