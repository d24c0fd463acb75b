//! Planning a transform once and running it on batch after batch.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use arrow::datatypes::SchemaRef;
use datafusion::common::TableReference;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::execution::SessionState;
use datafusion::logical_expr::{DdlStatement, LogicalPlan};
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::{ExecutionPlan, collect};
use datafusion::sql::parser::{DFParserBuilder, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::{Spanned, Statement as SqlStatement};
use lily_cdc::{ChangeBatch, TableSchema};
use tracing::{error, info};

use crate::error::{Result, TransformError};
use crate::output::{OutputContract, check_output};
use crate::session::{TransformSession, new_session};
use crate::set::TransformSet;
use crate::source::{TransformKind, TransformSource};
use crate::state::CatalogState;
use crate::tables::SwapTable;

/// Name of the table a pre-ingest transform reads its payload from.
pub const PAYLOAD: &str = "payload";

/// A planned transform.
pub(crate) struct Compiled {
    /// The optimized logical plan.
    pub plan: LogicalPlan,
    /// Its output schema.
    pub schema: SchemaRef,
    /// The `payload` table a pre-ingest transform declares.
    pub payload: Option<Arc<SwapTable>>,
    /// Whether the plan reads nothing but the payload, whose scans read
    /// their rows when they run: then one physical plan serves every run.
    pub reusable: bool,
    /// That physical plan, once made.
    pub physical: Option<Arc<dyn ExecutionPlan>>,
}

/// Whether `plan` reads no table other than the declared [`PAYLOAD`] (named
/// bare, as the file declares it: `changes.payload` would be another table).
fn reads_only_payload(plan: &LogicalPlan) -> bool {
    let payload = TableReference::bare(PAYLOAD);
    let mut only = true;
    let walked = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && scan.table_name != payload
        {
            only = false;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    only && walked.is_ok()
}

fn statement_at(source: &TransformSource, stmt: &DfStatement, message: String) -> TransformError {
    match stmt {
        DfStatement::Statement(s) => {
            let span = s.span();
            if span.start.line > 0 {
                return source.error_at(span.start.line, span.start.column, message);
            }
            source.error(message)
        }
        _ => source.error(message),
    }
}

/// Plans `source` in `session`: pre-ingest files first declare `CREATE TABLE
/// payload (...)`; every file ends with exactly one query.
pub(crate) async fn compile(
    session: &TransformSession,
    source: &TransformSource,
    contract: &OutputContract,
) -> Result<Compiled> {
    let state = session.ctx.state();
    let mut statements = DFParserBuilder::new(source.sql.as_str())
        .build()
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| source.datafusion_error(&e))?;
    let Some(query) = statements.pop_back() else {
        return Err(source.error("the file holds no SQL statement"));
    };
    if !matches!(&query, DfStatement::Statement(s) if matches!(**s, SqlStatement::Query(_))) {
        return Err(statement_at(
            source,
            &query,
            "a transform ends with one query (SELECT or WITH ...)".into(),
        ));
    }
    // Output problems are reported at the query.
    let query_at = match &query {
        DfStatement::Statement(s) if s.span().start.line > 0 => {
            Some((s.span().start.line, s.span().start.column))
        }
        _ => None,
    };
    let mut payload = None;
    for stmt in statements {
        let declares_payload = source.kind == TransformKind::PreIngest
            && payload.is_none()
            && matches!(&stmt, DfStatement::Statement(s) if matches!(**s, SqlStatement::CreateTable(_)));
        if !declares_payload {
            let message = match source.kind {
                TransformKind::PreIngest => {
                    "a pre-ingest transform holds CREATE TABLE payload (...) and then one query"
                }
                _ => "a transform holds exactly one query; this is a second statement",
            };
            return Err(statement_at(source, &stmt, message.into()));
        }
        let plan = state
            .statement_to_plan(stmt)
            .await
            .map_err(|e| source.datafusion_error(&e))?;
        let LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(create)) = &plan else {
            return Err(source.error("CREATE TABLE payload (...) declares the payload's columns"));
        };
        if create.name.table() != PAYLOAD {
            return Err(source.error(format!(
                "the declared table must be named {PAYLOAD}, not {}",
                create.name
            )));
        }
        let table = Arc::new(SwapTable::live(create.input.schema().inner().clone()));
        let _ = session.ctx.deregister_table(PAYLOAD);
        session
            .ctx
            .register_table(PAYLOAD, table.clone())
            .map_err(|e| source.datafusion_error(&e))?;
        payload = Some(table);
    }
    if source.kind == TransformKind::PreIngest && payload.is_none() {
        return Err(source.error(format!(
            "a pre-ingest transform first declares its input: CREATE TABLE {PAYLOAD} (column type, ...)"
        )));
    }
    let plan = state
        .statement_to_plan(query)
        .await
        .and_then(|p| state.optimize(&p))
        .map_err(|e| source.datafusion_error(&e))?;
    let schema: SchemaRef = plan.schema().inner().clone();
    check_output(source, &schema, contract).map_err(|e| match (e, query_at) {
        (TransformError::Invalid { file, message, .. }, Some((line, column))) => {
            TransformError::Invalid {
                file,
                line,
                column,
                message,
            }
        }
        (e, _) => e,
    })?;
    let reusable = payload.is_some() && reads_only_payload(&plan);
    Ok(Compiled {
        plan,
        schema,
        payload,
        reusable,
        physical: None,
    })
}

/// One transform ready to run: planned once, re-planned only when its file
/// changes (and still plans).
pub struct TransformRunner {
    name: String,
    set: TransformSet,
    contract: OutputContract,
    session: TransformSession,
    compiled: Compiled,
    sql: String,
    generation: u64,
}

impl TransformRunner {
    /// Plans the transform `name` of `set` against `state`. `inputs` are
    /// extra tables it reads (propagation's `origins`); its output must meet
    /// `contract`.
    pub async fn new(
        set: &TransformSet,
        name: &str,
        state: Arc<CatalogState>,
        inputs: Vec<(String, SchemaRef)>,
        contract: OutputContract,
    ) -> Result<Self> {
        let session = new_session(state, inputs).map_err(|e| TransformError::Run {
            name: name.to_owned(),
            source: e,
        })?;
        let generation = set.generation();
        let source = set
            .get(name)
            .ok_or_else(|| TransformError::Unknown(name.to_owned()))?;
        let compiled = compile(&session, &source, &contract).await?;
        Ok(Self {
            name: name.to_owned(),
            set: set.clone(),
            contract,
            session,
            compiled,
            sql: source.sql,
            generation,
        })
    }

    /// The transform's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Picks up a new version of the file, if the set has one that plans and
    /// meets the contract; otherwise keeps running the last good one.
    /// Returns whether the plan changed.
    pub async fn refresh(&mut self) -> bool {
        let generation = self.set.generation();
        if generation == self.generation {
            return false;
        }
        self.generation = generation;
        let Some(source) = self.set.get(&self.name) else {
            return false;
        };
        if source.sql == self.sql {
            return false;
        }
        match compile(&self.session, &source, &self.contract).await {
            Ok(compiled) => {
                self.compiled = compiled;
                self.sql = source.sql;
                info!(transform = %self.name, "transform reloaded");
                true
            }
            Err(e) => {
                metrics::counter!("lily_transform_errors_total", "transform" => self.name.clone(), "stage" => "load")
                    .increment(1);
                error!(transform = %self.name, error = %e, "the new version of the transform does not load here; the last good version keeps running");
                false
            }
        }
    }

    /// Runs the transform on a change batch: `changes.<its table>` holds the
    /// batch, the other `changes.` tables are empty.
    pub async fn run_changes(&mut self, batch: &ChangeBatch) -> Result<RecordBatch> {
        self.run_table(&batch.table, vec![batch.records.clone()])
            .await
    }

    /// Runs the transform once over several batches of changes of `table`
    /// (consecutive in the stream): `changes.<table>` holds them all.
    pub async fn run_table(
        &mut self,
        table: &TableSchema,
        records: Vec<RecordBatch>,
    ) -> Result<RecordBatch> {
        let name = table.name.as_str();
        let mut records = Some(records);
        for (table_name, swap) in &self.session.changes {
            if table_name == name && table.namespace == lily_metastore::METASTORE_SCHEMA {
                swap.set(records.take().unwrap_or_default())
                    .map_err(|e| self.run_error(e.into()))?;
            } else {
                swap.clear();
            }
        }
        let out = self.execute().await;
        if let Some(swap) = self.session.changes.get(name) {
            swap.clear();
        }
        out
    }

    /// Runs the transform with `table` (an input given at construction, or
    /// `payload`) holding `batches`.
    pub async fn run_with(
        &mut self,
        table: &str,
        batches: Vec<RecordBatch>,
    ) -> Result<RecordBatch> {
        let swap = if table == PAYLOAD {
            self.compiled.payload.clone()
        } else {
            self.session.inputs.get(table).cloned()
        }
        .ok_or_else(|| {
            TransformError::State(format!("transform {} reads no table {table}", self.name))
        })?;
        swap.set(batches).map_err(|e| self.run_error(e.into()))?;
        let out = self.execute().await;
        swap.clear();
        out
    }

    /// The payload columns a pre-ingest transform declared.
    pub fn payload_schema(&self) -> Option<SchemaRef> {
        self.compiled
            .payload
            .as_ref()
            .map(|p| p.schema_ref().clone())
    }

    fn run_error(&self, source: datafusion::error::DataFusionError) -> TransformError {
        TransformError::Run {
            name: self.name.clone(),
            source,
        }
    }

    /// The physical plan of this run: made once for a plan that reads only
    /// the payload (planning costs more than running it on a few events),
    /// else per run, over the rows the input tables hold now.
    async fn physical_plan(&mut self, state: &SessionState) -> Result<Arc<dyn ExecutionPlan>> {
        if let Some(plan) = &self.compiled.physical {
            return reset_plan_states(plan.clone()).map_err(|e| self.run_error(e));
        }
        if !self.compiled.reusable {
            return state
                .query_planner()
                .create_physical_plan(&self.compiled.plan, state)
                .await
                .map_err(|e| self.run_error(e));
        }
        // A plan with dynamic filters cannot be executed twice.
        let mut state = state.clone();
        state
            .config_mut()
            .options_mut()
            .set(
                "datafusion.optimizer.enable_dynamic_filter_pushdown",
                "false",
            )
            .map_err(|e| self.run_error(e))?;
        let plan = state
            .query_planner()
            .create_physical_plan(&self.compiled.plan, &state)
            .await
            .map_err(|e| self.run_error(e))?;
        self.compiled.physical = Some(plan.clone());
        Ok(plan)
    }

    async fn execute(&mut self) -> Result<RecordBatch> {
        let started = std::time::Instant::now();
        // The logical plan was optimized once.
        let state = self.session.ctx.state();
        let physical = self.physical_plan(&state).await?;
        let batches = collect(physical, state.task_ctx())
            .await
            .map_err(|e| self.run_error(e))?;
        let out = concat_batches(&self.compiled.schema, &batches)
            .map_err(|e| self.run_error(e.into()))?;
        metrics::histogram!("lily_transform_seconds", "transform" => self.name.clone())
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("lily_transform_rows_total", "transform" => self.name.clone())
            .increment(out.num_rows() as u64);
        Ok(out)
    }
}
