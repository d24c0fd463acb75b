//! `.slt` files (sqllogictest) beside the transforms: each shows a
//! transform's inputs and the output expected from them, in plain SQL.
//!
//! An `.slt` file runs in a fresh session where the `state.` and `changes.`
//! tables (and propagation's `origins`) are ordinary tables to `INSERT`
//! into, and the transform of the same name (`x.slt` or `x.<behaviour>.slt`
//! beside `x.sql`) is the view `output`. `id('orders')` makes a uuid from a short label and
//! `label(guid)` turns it back, so files stay readable.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::catalog::{
    MemTable, MemorySchemaProvider, SchemaProvider, TableProvider, view::ViewTable,
};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::DFParserBuilder;
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType};

use crate::functions::{text_to_uuid_udf, uuid_to_text_udf};
use crate::session::new_session;
use crate::set::shape_of;
use crate::source::{TransformSource, discover};
use crate::state::{CatalogState, StateTable};

/// A session for one `.slt` file.
pub struct SltSession {
    ctx: SessionContext,
}

fn memory_table(schema: arrow::datatypes::SchemaRef) -> DfResult<Arc<dyn TableProvider>> {
    Ok(Arc::new(MemTable::try_new(schema, vec![Vec::new()])?))
}

impl SltSession {
    /// A session whose `output` view is `transform` (when given).
    pub async fn new(transform: Option<&TransformSource>) -> DfResult<Self> {
        let session = new_session(Arc::new(CatalogState::new(Vec::new())), Vec::new())?;
        let ctx = session.ctx;
        register_label_functions(&ctx);
        let catalog = ctx
            .catalog("datafusion")
            .ok_or_else(|| DataFusionError::Internal("no default catalog".into()))?;
        let state = Arc::new(MemorySchemaProvider::new());
        for t in StateTable::ALL {
            state.register_table(t.name().to_owned(), memory_table(t.schema())?)?;
        }
        catalog.register_schema("state", state)?;
        let changes = Arc::new(MemorySchemaProvider::new());
        for (name, swap) in &session.changes {
            changes.register_table(name.clone(), memory_table(swap.schema_ref().clone())?)?;
        }
        catalog.register_schema("changes", changes)?;

        if let Some(source) = transform {
            let (inputs, _) = shape_of(source).map_err(|e| DataFusionError::Plan(e.to_string()))?;
            for (name, schema) in inputs {
                ctx.register_table(name.as_str(), memory_table(schema)?)?;
            }
            let mut statements = DFParserBuilder::new(source.sql.as_str())
                .build()?
                .parse_statements()?;
            let query = statements
                .pop_back()
                .ok_or_else(|| DataFusionError::Plan(format!("{} holds no query", source.name)))?;
            for stmt in statements {
                // The payload declaration of a pre-ingest transform.
                let plan = ctx.state().statement_to_plan(stmt).await?;
                ctx.execute_logical_plan(plan).await?.collect().await?;
            }
            let plan = ctx.state().statement_to_plan(query).await?;
            ctx.register_table("output", Arc::new(ViewTable::new(plan, None)))?;
        }
        Ok(Self { ctx })
    }
}

/// `id(label)` and `label(guid)`: readable stand-ins for uuids in tests.
fn register_label_functions(ctx: &SessionContext) {
    ctx.register_udf(text_to_uuid_udf("id", |s| {
        if s.len() > 16 {
            return Err(DataFusionError::Execution(format!(
                "id({s:?}): a label is at most 16 bytes"
            )));
        }
        let mut b = [0u8; 16];
        b[..s.len()].copy_from_slice(s.as_bytes());
        Ok(b)
    }));
    ctx.register_udf(uuid_to_text_udf("label", |v| {
        let end = v.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1);
        Ok(String::from_utf8_lossy(&v[..end]).into_owned())
    }));
}

/// A failed statement in an `.slt` file.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SltError(String);

fn column_type(t: &DataType) -> DefaultColumnType {
    if t.is_integer() {
        DefaultColumnType::Integer
    } else if t.is_floating() || matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..)) {
        DefaultColumnType::FloatingPoint
    } else if matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) {
        DefaultColumnType::Text
    } else {
        DefaultColumnType::Any
    }
}

fn rows(batches: &[RecordBatch]) -> Result<Vec<Vec<String>>, SltError> {
    let options = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for batch in batches {
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SltError(e.to_string()))?;
        for i in 0..batch.num_rows() {
            out.push(
                formatters
                    .iter()
                    .map(|f| {
                        let s = f.value(i).to_string();
                        if s.is_empty() {
                            "(empty)".to_owned()
                        } else {
                            s
                        }
                    })
                    .collect(),
            );
        }
    }
    Ok(out)
}

#[async_trait::async_trait]
impl AsyncDB for SltSession {
    type Error = SltError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SltError> {
        let df = self
            .ctx
            .sql(sql)
            .await
            .map_err(|e| SltError(e.strip_backtrace()))?;
        let schema = df.schema().inner().clone();
        let batches = df
            .collect()
            .await
            .map_err(|e| SltError(e.strip_backtrace()))?;
        let head = sql.trim_start().to_ascii_lowercase();
        if head.starts_with("select") || head.starts_with("with") || head.starts_with("values") {
            return Ok(DBOutput::Rows {
                types: schema
                    .fields()
                    .iter()
                    .map(|f| column_type(f.data_type()))
                    .collect(),
                rows: rows(&batches)?,
            });
        }
        let count = batches
            .first()
            .and_then(|b| b.column_by_name("count"))
            .and_then(|c| c.as_primitive_opt::<arrow::datatypes::UInt64Type>())
            .map_or(0, |c| c.value(0));
        Ok(DBOutput::StatementComplete(count))
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "lily"
    }
}

/// Every `.slt` file under `dir`, with the transform it tests (same name).
pub fn discover_slt(dir: &Path) -> crate::Result<Vec<(PathBuf, Option<TransformSource>)>> {
    let sources = discover(dir)?;
    let mut out = Vec::new();
    let mut folders = vec![dir.to_owned()];
    while let Some(folder) = folders.pop() {
        let entries = std::fs::read_dir(&folder).map_err(|source| crate::TransformError::Io {
            path: folder.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|e| e == "slt") {
                // x.slt and x.<behaviour>.slt test x.sql.
                let stem = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.split('.').next())
                    .unwrap_or_default();
                let sql = path.with_file_name(format!("{stem}.sql"));
                let source = sources.iter().find(|s| s.path == sql).cloned();
                out.push((path, source));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Runs one `.slt` file; the error says which record failed and how.
pub async fn run_slt(path: &Path, transform: Option<&TransformSource>) -> Result<(), String> {
    let transform = transform.cloned();
    let mut runner = sqllogictest::Runner::new(move || {
        let transform = transform.clone();
        async move {
            SltSession::new(transform.as_ref())
                .await
                .map_err(|e| SltError(e.strip_backtrace()))
        }
    });
    runner
        .run_file_async(path)
        .await
        .map_err(|e| e.display(true).to_string())
}

/// Runs every `.slt` file under `dir`, printing a line per file (and what
/// failed); returns (passed, failed).
pub async fn run_all(dir: &Path) -> crate::Result<(usize, usize)> {
    let (mut passed, mut failed) = (0, 0);
    for (path, transform) in discover_slt(dir)? {
        let shown = path.strip_prefix(dir).unwrap_or(&path).display();
        match run_slt(&path, transform.as_ref()).await {
            Ok(()) => {
                println!("ok      {shown}");
                passed += 1;
            }
            Err(e) => {
                println!("FAILED  {shown}\n{e}");
                failed += 1;
            }
        }
    }
    Ok((passed, failed))
}
