//! What a transform's output must look like, checked when it is loaded.

use arrow::datatypes::{DataType, Field, Schema};
use lily_cdc::TableSchema;

use crate::error::Result;
use crate::source::TransformSource;

/// The shape a transform's output must have.
#[derive(Debug, Clone)]
pub enum OutputContract {
    /// Anything.
    Any,
    /// At least these columns, with these types (more are allowed).
    Columns(Vec<Field>),
    /// Exactly these columns, in this order, with these types.
    Exactly(Vec<Field>),
    /// Rows for a metastore table: every column names one of its columns
    /// with its type (or text, which PostgreSQL casts).
    IntoTable(String),
}

/// Output columns a pre-ingest transform into `incidents` may add besides
/// the table's own: the assets the incident concerns, three ways of naming
/// them (lists of text, written as `incident_assets` links), and how the
/// event moves the incident.
pub mod incident_output {
    /// Catalog qualified names, linked exactly.
    pub const ASSET_QUALIFIED_NAMES: &str = "asset_qualified_names";
    /// Warehouse table ids `<database>:<schema>.<table>`, mapped to qualified
    /// names by the tenant's naming rule.
    pub const ASSET_FULL_TABLE_IDS: &str = "asset_full_table_ids";
    /// Bare table names, linked to the one table or view that ends with each.
    pub const ASSET_TABLE_NAMES: &str = "asset_table_names";
    /// Boolean: the event's state may move a resolved incident back (an
    /// explicit reopening). Without it a resolution stands.
    pub const REOPENS: &str = "reopens";
    /// Names of columns the event sets to NULL (a NULL column otherwise keeps
    /// the incident's value): e.g. `severity` when an alert is unmarked.
    pub const CLEARED_COLUMNS: &str = "cleared_columns";
}

/// The type of an extra output column of a transform into `incidents`.
fn incident_output_type(name: &str) -> Option<DataType> {
    use incident_output::*;
    let text_list = || {
        DataType::List(std::sync::Arc::new(Field::new(
            "item",
            DataType::Utf8,
            true,
        )))
    };
    match name {
        ASSET_QUALIFIED_NAMES | ASSET_FULL_TABLE_IDS | ASSET_TABLE_NAMES | CLEARED_COLUMNS => {
            Some(text_list())
        }
        REOPENS => Some(DataType::Boolean),
        _ => None,
    }
}

/// Types match when they are equal, lists by their element type.
fn same_type(a: &DataType, b: &DataType) -> bool {
    match (a, b) {
        (DataType::List(x), DataType::List(y)) => same_type(x.data_type(), y.data_type()),
        _ => a == b,
    }
}

fn describe(fields: &[Field]) -> String {
    fields
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks `schema`, the output of `source`, against `contract`.
pub fn check_output(
    source: &TransformSource,
    schema: &Schema,
    contract: &OutputContract,
) -> Result<()> {
    match contract {
        OutputContract::Any => Ok(()),
        OutputContract::Columns(required) => {
            for want in required {
                match schema.field_with_name(want.name()) {
                    Ok(got) if same_type(got.data_type(), want.data_type()) => {}
                    Ok(got) => {
                        return Err(source.error(format!(
                            "output column {} is {}, its sink needs {}",
                            want.name(),
                            got.data_type(),
                            want.data_type()
                        )));
                    }
                    Err(_) => {
                        return Err(source.error(format!(
                            "output has no column {} ({}), which its sink needs; it needs: {}",
                            want.name(),
                            want.data_type(),
                            describe(required)
                        )));
                    }
                }
            }
            Ok(())
        }
        OutputContract::Exactly(fields) => {
            let ok =
                schema.fields().len() == fields.len()
                    && schema.fields().iter().zip(fields).all(|(g, w)| {
                        g.name() == w.name() && same_type(g.data_type(), w.data_type())
                    });
            if ok {
                Ok(())
            } else {
                let got: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
                Err(source.error(format!(
                    "output must be exactly ({}), got ({})",
                    describe(fields),
                    describe(&got)
                )))
            }
        }
        OutputContract::IntoTable(table) => {
            let Some(rel) = lily_metastore::metastore_relations()
                .into_iter()
                .find(|r| r.name == *table)
            else {
                return Err(source.error(format!("target {table:?} is not a metastore table")));
            };
            let target = TableSchema::from_relation(&rel);
            for got in schema.fields() {
                if got.name() == crate::payload::EVENT {
                    if !got.data_type().is_integer() {
                        return Err(source.error(format!(
                            "output column {} is {}, it must be an integer (the payload's)",
                            got.name(),
                            got.data_type()
                        )));
                    }
                    continue;
                }
                if let Some(want) =
                    incident_output_type(got.name()).filter(|_| table == "incidents")
                {
                    if !same_type(got.data_type(), &want) {
                        return Err(source.error(format!(
                            "output column {} is {}, it must be {want}",
                            got.name(),
                            got.data_type()
                        )));
                    }
                    continue;
                }
                let Some(col) = target.columns.iter().find(|c| c.name == *got.name()) else {
                    return Err(source.error(format!(
                        "output column {} is not a column of metastore.{table}",
                        got.name()
                    )));
                };
                let want = col.kind.data_type();
                if !same_type(got.data_type(), &want) && got.data_type() != &DataType::Utf8 {
                    return Err(source.error(format!(
                        "output column {} is {}, metastore.{table}.{} takes {want} (or text)",
                        got.name(),
                        got.data_type(),
                        col.name
                    )));
                }
            }
            Ok(())
        }
    }
}
