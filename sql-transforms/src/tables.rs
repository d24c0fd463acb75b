//! Table providers whose contents change between runs of one planned query.

use std::sync::{Arc, RwLock};

use arrow::array::{ArrayRef, RecordBatch, new_null_array};
use arrow::compute::cast;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    ReplaceChildrenOptions, SendableRecordBatchStream,
};

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

/// The rows of a [`SwapTable`], shared with its live scans.
type Rows = Arc<RwLock<Arc<Vec<RecordBatch>>>>;

/// A table with a fixed schema whose rows are swapped before each run: the
/// current change batch, the payload, the propagation origins.
#[derive(Debug)]
pub struct SwapTable {
    schema: SchemaRef,
    rows: Rows,
    /// Whether a scan reads the rows when it runs rather than when it is
    /// planned, so that one physical plan serves every run.
    live: bool,
}

impl SwapTable {
    /// An empty table of `schema`.
    pub fn new(schema: SchemaRef) -> Self {
        Self {
            schema,
            rows: Arc::default(),
            live: false,
        }
    }

    /// An empty table of `schema` whose scans read the rows when they run
    /// (see [`LiveScanExec`]).
    pub fn live(schema: SchemaRef) -> Self {
        Self {
            live: true,
            ..Self::new(schema)
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
        if self.live {
            return Ok(Arc::new(LiveScanExec::new(
                self.rows.clone(),
                &self.schema,
                projection,
            )?));
        }
        memory_scan(
            self.rows().as_ref().clone(),
            self.schema.clone(),
            projection,
        )
    }
}

/// A scan of a live [`SwapTable`]: it reads the rows the table holds when it
/// is executed. Its statistics are unknown, so a plan made over it does not
/// depend on one run's rows and can be executed again.
#[derive(Debug)]
pub struct LiveScanExec {
    rows: Rows,
    projection: Option<Vec<usize>>,
    properties: Arc<PlanProperties>,
}

impl LiveScanExec {
    fn new(rows: Rows, schema: &SchemaRef, projection: Option<&Vec<usize>>) -> DfResult<Self> {
        let projected = match projection {
            Some(p) => Arc::new(schema.project(p)?),
            None => schema.clone(),
        };
        let properties = PlanProperties::new(
            EquivalenceProperties::new(projected),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Self {
            rows,
            projection: projection.cloned(),
            properties: Arc::new(properties),
        })
    }
}

impl DisplayAs for LiveScanExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "LiveScanExec")
    }
}

impl ExecutionPlan for LiveScanExec {
    fn name(&self) -> &str {
        "LiveScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        _: Vec<Arc<dyn ExecutionPlan>>,
        _: ReplaceChildrenOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn with_new_children(
        self: Arc<Self>,
        _: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        _: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "LiveScanExec has one partition, not {partition}"
            )));
        }
        let rows = self.rows.read().unwrap_or_else(|e| e.into_inner()).clone();
        Ok(Box::pin(MemoryStream::try_new(
            rows.as_ref().clone(),
            self.properties.eq_properties.schema().clone(),
            self.projection.clone(),
        )?))
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
