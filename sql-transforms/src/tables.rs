//! Table providers whose contents change between runs of one planned query.

use std::sync::{Arc, RwLock};

use arrow::array::{ArrayRef, RecordBatch, new_null_array};
use arrow::compute::cast;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use crate::state::{CatalogState, StateTable};

/// A scan of rows held in memory, as one partition.
fn memory_scan(
    rows: Vec<RecordBatch>,
    schema: SchemaRef,
    projection: Option<&Vec<usize>>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    Ok(MemorySourceConfig::try_new_exec(
        &[rows],
        schema,
        projection.cloned(),
    )?)
}

/// A table with a fixed schema whose rows are swapped before each run: the
/// current change batch, the payload, the propagation origins.
#[derive(Debug)]
pub struct SwapTable {
    schema: SchemaRef,
    rows: RwLock<Arc<Vec<RecordBatch>>>,
}

impl SwapTable {
    /// An empty table of `schema`.
    pub fn new(schema: SchemaRef) -> Self {
        Self {
            schema,
            rows: RwLock::new(Arc::new(Vec::new())),
        }
    }

    /// The table's schema.
    pub fn schema_ref(&self) -> &SchemaRef {
        &self.schema
    }

    /// Replaces the rows. Batches of another shape are matched to the table
    /// by column name: columns it lacks are NULL, types are cast.
    pub fn set(&self, batches: Vec<RecordBatch>) -> arrow::error::Result<()> {
        let batches = batches
            .into_iter()
            .map(|b| self.conform(b))
            .collect::<arrow::error::Result<Vec<_>>>()?;
        *self.rows.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(batches);
        Ok(())
    }

    /// The rows it holds now.
    pub fn rows(&self) -> Arc<Vec<RecordBatch>> {
        self.rows.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Empties the table.
    pub fn clear(&self) {
        *self.rows.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Vec::new());
    }

    fn conform(&self, batch: RecordBatch) -> arrow::error::Result<RecordBatch> {
        if batch.schema().fields() == self.schema.fields() {
            return RecordBatch::try_new(self.schema.clone(), batch.columns().to_vec());
        }
        let columns: Vec<ArrayRef> = self
            .schema
            .fields()
            .iter()
            .map(|f| match batch.column_by_name(f.name()) {
                Some(c) if c.data_type() == f.data_type() => Ok(c.clone()),
                Some(c) => cast(c, f.data_type()),
                None => Ok(new_null_array(f.data_type(), batch.num_rows())),
            })
            .collect::<arrow::error::Result<_>>()?;
        RecordBatch::try_new(self.schema.clone(), columns)
    }
}

#[async_trait]
impl TableProvider for SwapTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        memory_scan(
            self.rows().as_ref().clone(),
            self.schema.clone(),
            projection,
        )
    }
}

/// A table of the catalog state, read at the moment a query runs.
#[derive(Debug)]
pub struct StateTableProvider {
    state: Arc<CatalogState>,
    table: StateTable,
    /// For `state.assets`: the session's `changes.assets`, whose assets the
    /// state may not hold (columns nothing refers to) but a run must see.
    changed_assets: Option<Arc<SwapTable>>,
}

impl StateTableProvider {
    /// The provider of `table`.
    pub fn new(state: Arc<CatalogState>, table: StateTable) -> Self {
        Self {
            state,
            table,
            changed_assets: None,
        }
    }

    /// The provider of `state.assets`, which also shows the assets of the
    /// batch in `changes` the state does not hold.
    pub fn assets(state: Arc<CatalogState>, changes: Arc<SwapTable>) -> Self {
        Self {
            state,
            table: StateTable::Assets,
            changed_assets: Some(changes),
        }
    }
}

#[async_trait]
impl TableProvider for StateTableProvider {
    fn schema(&self) -> SchemaRef {
        self.table.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let mut rows = vec![self.state.snapshot(self.table)];
        if let Some(changes) = &self.changed_assets {
            let changed = changes.rows();
            if !changed.is_empty()
                && let Some(batch) = self
                    .state
                    .batch_assets(&changed)
                    .map_err(|e| DataFusionError::External(Box::new(e)))?
            {
                rows.push(batch);
            }
        }
        memory_scan(rows, self.table.schema(), projection)
    }
}
