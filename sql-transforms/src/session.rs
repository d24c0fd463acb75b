//! The DataFusion session every transform is planned and run in: the
//! `changes` and `state` schemas, Lily's functions, and settings that keep
//! results in the types sinks expect.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::prelude::{SessionConfig, SessionContext};
use lily_cdc::TableSchema;
use lily_cdc::types::PG_TYPE_OID;

use crate::functions;
use crate::state::{CatalogState, StateTable};
use crate::tables::{StateTableProvider, SwapTable};

/// A session with the transform inputs registered.
pub struct TransformSession {
    /// The DataFusion session.
    pub ctx: SessionContext,
    /// `changes.<table>`, by table name.
    pub changes: HashMap<String, Arc<SwapTable>>,
    /// Extra input tables (propagation's `origins`), by name.
    pub inputs: HashMap<String, Arc<SwapTable>>,
}

/// `schema` without the PostgreSQL type oids on its fields. SQL has no use
/// for them, and a uuid from `changes.` must look like one from `state.`:
/// DataFusion refuses a UNION whose inputs differ in field metadata.
fn without_type_oids(schema: &Schema) -> SchemaRef {
    fn field(f: &Field) -> Field {
        let mut md = f.metadata().clone();
        md.remove(PG_TYPE_OID);
        let f = match f.data_type() {
            DataType::Struct(children) => f.clone().with_data_type(DataType::Struct(
                children.iter().map(|c| Arc::new(field(c))).collect(),
            )),
            _ => f.clone(),
        };
        f.with_metadata(md)
    }
    Arc::new(Schema::new_with_metadata(
        schema.fields().iter().map(|f| field(f)).collect::<Vec<_>>(),
        schema.metadata().clone(),
    ))
}

/// A session over `state`, with one empty `changes.<table>` per metastore
/// table and an empty table for each of `inputs`.
pub fn new_session(
    state: Arc<CatalogState>,
    inputs: Vec<(String, SchemaRef)>,
) -> DfResult<TransformSession> {
    let mut config = SessionConfig::new()
        .with_target_partitions(1)
        .with_information_schema(false);
    let options = config.options_mut();
    // Errors then point at the offending text of the file.
    options.sql_parser.collect_spans = true;
    // Text stays Utf8, the type change batches and sinks use.
    options.sql_parser.map_string_types_to_utf8view = false;
    let ctx = SessionContext::new_with_config(config);
    functions::register(&ctx);

    let catalog = ctx
        .catalog("datafusion")
        .ok_or_else(|| DataFusionError::Internal("no default catalog".into()))?;
    let changes_schema = Arc::new(MemorySchemaProvider::new());
    let mut changes = HashMap::new();
    for rel in lily_metastore::metastore_relations() {
        let table = TableSchema::from_relation(&rel);
        let swap = Arc::new(SwapTable::new(without_type_oids(&table.arrow)));
        changes_schema.register_table(rel.name.clone(), swap.clone())?;
        changes.insert(rel.name, swap);
    }
    catalog.register_schema("changes", changes_schema)?;

    let state_schema = Arc::new(MemorySchemaProvider::new());
    for t in StateTable::ALL {
        let provider = match changes.get("assets") {
            Some(assets) if t == StateTable::Assets => {
                StateTableProvider::assets(state.clone(), assets.clone())
            }
            _ => StateTableProvider::new(state.clone(), t),
        };
        state_schema.register_table(t.name().to_owned(), Arc::new(provider))?;
    }
    catalog.register_schema("state", state_schema)?;

    let mut tables = HashMap::new();
    for (name, schema) in inputs {
        let swap = Arc::new(SwapTable::new(schema));
        ctx.register_table(name.as_str(), swap.clone())?;
        tables.insert(name, swap);
    }
    Ok(TransformSession {
        ctx,
        changes,
        inputs: tables,
    })
}
