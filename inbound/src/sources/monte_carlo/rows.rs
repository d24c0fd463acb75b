//! The incident rows of a pre-ingest transform's output.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type};
use lily_transforms::EVENT;
use lily_transforms::incident_output::{
    ASSET_FULL_TABLE_IDS, ASSET_QUALIFIED_NAMES, ASSET_TABLE_NAMES, CLEARED_COLUMNS, REOPENS,
};

/// Columns an event may clear (set to NULL).
const CLEARABLE: &[&str] = &["severity", "owner", "url"];

/// What one row of the output says of its incident. A `None` keeps the
/// incident's current value.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct IncidentRow {
    pub source_system: String,
    pub external_id: String,
    pub incident_type: Option<String>,
    pub title: Option<String>,
    pub state: Option<String>,
    pub severity: Option<String>,
    pub url: Option<String>,
    pub owner: Option<String>,
    pub source_status: Option<String>,
    /// The state may move a resolved incident back.
    pub reopens: bool,
    /// Columns set to NULL (among [`CLEARABLE`]).
    pub cleared: Vec<String>,
    /// Catalog qualified names, linked exactly.
    pub qualified_names: Vec<String>,
    /// Warehouse table ids, mapped by the tenant's naming rule.
    pub full_table_ids: Vec<String>,
    /// Bare table names.
    pub table_names: Vec<String>,
    /// Which event of a run the row comes from (`_event`), when the
    /// transform says.
    pub event: Option<usize>,
}

fn text_column(out: &RecordBatch, name: &str) -> Result<Option<Vec<Option<String>>>, String> {
    let Some(col) = out.column_by_name(name) else {
        return Ok(None);
    };
    let col = arrow::compute::cast(col, &DataType::Utf8).map_err(|e| e.to_string())?;
    let col = col.as_string::<i32>();
    Ok(Some(
        (0..col.len())
            .map(|i| col.is_valid(i).then(|| col.value(i).to_owned()))
            .collect(),
    ))
}

fn list_column(out: &RecordBatch, name: &str) -> Result<Vec<Vec<String>>, String> {
    let n = out.num_rows();
    let Some(col) = out.column_by_name(name) else {
        return Ok(vec![Vec::new(); n]);
    };
    let list = col
        .as_list_opt::<i32>()
        .ok_or_else(|| format!("{name} is not a list"))?;
    (0..n)
        .map(|i| {
            if list.is_null(i) {
                return Ok(Vec::new());
            }
            let values = arrow::compute::cast(&list.value(i), &DataType::Utf8)
                .map_err(|e| format!("{name}: {e}"))?;
            Ok(values
                .as_string::<i32>()
                .iter()
                .flatten()
                .map(str::to_owned)
                .collect())
        })
        .collect()
}

/// The incident rows of a transform output.
pub(crate) fn rows(out: &RecordBatch) -> Result<Vec<IncidentRow>, String> {
    let n = out.num_rows();
    let required = |name: &str| -> Result<Vec<Option<String>>, String> {
        text_column(out, name)?.ok_or_else(|| format!("its output has no column {name}"))
    };
    let optional = |name: &str| -> Result<Vec<Option<String>>, String> {
        Ok(text_column(out, name)?.unwrap_or_else(|| vec![None; n]))
    };
    let source_system = required("source_system")?;
    let external_id = required("external_id")?;
    let incident_type = optional("incident_type")?;
    let title = optional("title")?;
    let state = optional("state")?;
    let severity = optional("severity")?;
    let url = optional("url")?;
    let owner = optional("owner")?;
    let source_status = optional("source_status")?;
    let reopens = match out.column_by_name(REOPENS) {
        None => vec![false; n],
        Some(col) => {
            let col = col
                .as_boolean_opt()
                .ok_or_else(|| format!("{REOPENS} is not a boolean"))?;
            (0..n).map(|i| col.is_valid(i) && col.value(i)).collect()
        }
    };
    let cleared = list_column(out, CLEARED_COLUMNS)?;
    let qualified_names = list_column(out, ASSET_QUALIFIED_NAMES)?;
    let full_table_ids = list_column(out, ASSET_FULL_TABLE_IDS)?;
    let table_names = list_column(out, ASSET_TABLE_NAMES)?;
    let events = match out.column_by_name(EVENT) {
        None => vec![None; n],
        Some(col) => {
            let col = arrow::compute::cast(col, &DataType::Int64).map_err(|e| e.to_string())?;
            let col = col.as_primitive::<Int64Type>();
            (0..n)
                .map(|i| {
                    col.is_valid(i)
                        .then(|| usize::try_from(col.value(i)).ok())
                        .flatten()
                })
                .collect()
        }
    };
    let mut rows = Vec::with_capacity(n);
    for i in 0..n {
        let (Some(source_system), Some(external_id)) =
            (source_system[i].clone(), external_id[i].clone())
        else {
            return Err(format!("row {i} has no source_system or external_id"));
        };
        if let Some(bad) = cleared[i].iter().find(|c| !CLEARABLE.contains(&c.as_str())) {
            return Err(format!(
                "{CLEARED_COLUMNS} names {bad:?}; only {} can be cleared",
                CLEARABLE.join(", ")
            ));
        }
        rows.push(IncidentRow {
            source_system,
            external_id,
            incident_type: incident_type[i].clone(),
            title: title[i].clone(),
            state: state[i].clone(),
            severity: severity[i].clone(),
            url: url[i].clone(),
            owner: owner[i].clone(),
            source_status: source_status[i].clone(),
            reopens: reopens[i],
            cleared: cleared[i].clone(),
            qualified_names: qualified_names[i].clone(),
            full_table_ids: full_table_ids[i].clone(),
            table_names: table_names[i].clone(),
            event: events[i],
        });
    }
    Ok(rows)
}
