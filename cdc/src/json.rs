//! Rows of Arrow columns as compact JSON objects. Written by hand rather than
//! with arrow-json so that uuids print as uuids and jsonb stays JSON (not a
//! string holding JSON): what an auditor reading a change, a Kafka consumer
//! and a search index expect.

use std::fmt::Write;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StructArray};
use arrow::datatypes::{
    DataType, Date32Type, Field, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type,
    TimeUnit, TimestampMicrosecondType, UInt32Type, UInt64Type,
};

const EXTENSION_NAME: &str = "ARROW:extension:name";

struct Column {
    name_json: String,
    array: ArrayRef,
    raw_json: bool,
}

fn is_json(field: &Field) -> bool {
    field
        .metadata()
        .get(EXTENSION_NAME)
        .is_some_and(|e| e == "arrow.json")
}

fn columns<'a>(fields: impl Iterator<Item = (&'a Field, ArrayRef)>) -> Vec<Column> {
    fields
        .map(|(f, array)| Column {
            name_json: serde_json::to_string(f.name()).unwrap_or_else(|_| "\"?\"".into()),
            raw_json: is_json(f),
            array,
        })
        .collect()
}

fn encode_object(cols: &[Column], row: usize, out: &mut String) {
    out.push('{');
    for (i, c) in cols.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&c.name_json);
        out.push(':');
        encode(&c.array, row, c.raw_json, out);
    }
    out.push('}');
}

/// Encodes chosen columns of a record batch, row by row.
pub struct RowEncoder {
    cols: Vec<Column>,
}

impl RowEncoder {
    /// An encoder of the columns at `indices` of `batch`.
    pub fn new(batch: &RecordBatch, indices: &[usize]) -> Self {
        let schema = batch.schema();
        RowEncoder {
            cols: columns(
                indices
                    .iter()
                    .map(|&i| (schema.field(i), batch.column(i).clone())),
            ),
        }
    }

    /// An encoder of the data columns of `batch`: those whose names do not
    /// start with `_` (Lily's change metadata and a transform's directives).
    pub fn data_columns(batch: &RecordBatch) -> Self {
        let indices: Vec<usize> = batch
            .schema()
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, f)| !f.name().starts_with('_'))
            .map(|(i, _)| i)
            .collect();
        Self::new(batch, &indices)
    }

    /// An encoder of every column of `batch`.
    pub fn all_columns(batch: &RecordBatch) -> Self {
        let indices: Vec<usize> = (0..batch.num_columns()).collect();
        Self::new(batch, &indices)
    }

    /// Appends row `row` as a JSON object.
    pub fn encode(&self, row: usize, out: &mut String) {
        encode_object(&self.cols, row, out)
    }
}

/// The value at `row` of column `name` as text: a string as it is, any
/// other value as its JSON (a uuid as `8-4-4-4-12`, a list as an array);
/// `None` for NULL or a missing column.
pub fn cell_text(batch: &RecordBatch, name: &str, row: usize) -> Option<String> {
    let i = batch.schema().index_of(name).ok()?;
    value_text(batch.schema().field(i), batch.column(i), row)
}

/// The value at `row` of `array` (a column described by `field`) as text,
/// as [`cell_text`] gives it.
pub fn value_text(field: &Field, array: &ArrayRef, row: usize) -> Option<String> {
    if array.is_null(row) {
        return None;
    }
    match array.data_type() {
        DataType::Utf8 => return Some(array.as_string::<i32>().value(row).to_owned()),
        DataType::FixedSizeBinary(16) => {
            if let Ok(u) = uuid::Uuid::from_slice(array.as_fixed_size_binary().value(row)) {
                return Some(u.to_string());
            }
        }
        _ => {}
    }
    let mut out = String::new();
    encode_value(field, array, row, &mut out);
    Some(match serde_json::from_str::<String>(&out) {
        Ok(unquoted) => unquoted,
        Err(_) => out,
    })
}

/// Encodes the rows of a struct column.
pub struct StructEncoder {
    cols: Vec<Column>,
}

impl StructEncoder {
    /// An encoder of every child of `array`.
    pub fn new(array: &StructArray) -> Self {
        StructEncoder {
            cols: columns(
                array
                    .fields()
                    .iter()
                    .map(|f| f.as_ref())
                    .zip(array.columns().iter().cloned()),
            ),
        }
    }

    /// Appends row `row` as a JSON object.
    pub fn encode(&self, row: usize, out: &mut String) {
        encode_object(&self.cols, row, out)
    }
}

/// Appends the value at `row` of `array` (a column described by `field`) as JSON.
pub fn encode_value(field: &Field, array: &ArrayRef, row: usize, out: &mut String) {
    encode(array, row, is_json(field), out)
}

fn push_str(s: &str, out: &mut String) {
    // serde_json's escaping is correct for every code point.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "null".into()));
}

fn encode(array: &ArrayRef, row: usize, raw_json: bool, out: &mut String) {
    if array.is_null(row) {
        out.push_str("null");
        return;
    }
    match array.data_type() {
        DataType::Boolean => out.push_str(if array.as_boolean().value(row) {
            "true"
        } else {
            "false"
        }),
        DataType::Int16 => {
            let _ = write!(out, "{}", array.as_primitive::<Int16Type>().value(row));
        }
        DataType::Int32 => {
            let _ = write!(out, "{}", array.as_primitive::<Int32Type>().value(row));
        }
        DataType::Int64 => {
            let _ = write!(out, "{}", array.as_primitive::<Int64Type>().value(row));
        }
        DataType::UInt32 => {
            let _ = write!(out, "{}", array.as_primitive::<UInt32Type>().value(row));
        }
        DataType::UInt64 => {
            let _ = write!(out, "{}", array.as_primitive::<UInt64Type>().value(row));
        }
        DataType::Float32 => push_float(array.as_primitive::<Float32Type>().value(row) as f64, out),
        DataType::Float64 => push_float(array.as_primitive::<Float64Type>().value(row), out),
        DataType::Utf8 => {
            let s = array.as_string::<i32>().value(row);
            if raw_json {
                out.push_str(s)
            } else {
                push_str(s, out)
            }
        }
        DataType::Utf8View => push_str(array.as_string_view().value(row), out),
        DataType::LargeUtf8 => push_str(array.as_string::<i64>().value(row), out),
        DataType::FixedSizeBinary(16) => {
            let b = array.as_fixed_size_binary().value(row);
            match uuid::Uuid::from_slice(b) {
                Ok(u) => {
                    let _ = write!(out, "\"{u}\"");
                }
                Err(_) => push_hex(b, out),
            }
        }
        DataType::Date32 => {
            let days = array.as_primitive::<Date32Type>().value(row);
            match chrono::DateTime::from_timestamp(days as i64 * 86_400, 0) {
                Some(d) => {
                    let _ = write!(out, "\"{}\"", d.format("%Y-%m-%d"));
                }
                None => {
                    let _ = write!(out, "{days}");
                }
            }
        }
        DataType::Timestamp(TimeUnit::Microsecond, tz) => {
            let micros = array.as_primitive::<TimestampMicrosecondType>().value(row);
            match chrono::DateTime::from_timestamp_micros(micros) {
                Some(t) if tz.is_some() => {
                    let _ = write!(out, "\"{}\"", t.format("%Y-%m-%dT%H:%M:%S%.6fZ"));
                }
                Some(t) => {
                    let _ = write!(out, "\"{}\"", t.format("%Y-%m-%dT%H:%M:%S%.6f"));
                }
                None => {
                    let _ = write!(out, "{micros}");
                }
            }
        }
        DataType::List(item) => {
            let list = array.as_list::<i32>();
            let values = list.value(row);
            let raw = is_json(item);
            out.push('[');
            for i in 0..values.len() {
                if i > 0 {
                    out.push(',');
                }
                encode(&values, i, raw, out);
            }
            out.push(']');
        }
        DataType::Struct(_) => StructEncoder::new(array.as_struct()).encode(row, out),
        DataType::Binary => push_hex(array.as_binary::<i32>().value(row), out),
        DataType::FixedSizeBinary(_) => push_hex(array.as_fixed_size_binary().value(row), out),
        other => push_str(&format!("<{other}>"), out),
    }
}

fn push_float(v: f64, out: &mut String) {
    if v.is_finite() {
        let _ = write!(out, "{v}");
    } else {
        out.push_str("null");
    }
}

fn push_hex(b: &[u8], out: &mut String) {
    out.push_str("\"\\\\x");
    for byte in b {
        let _ = write!(out, "{byte:02x}");
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, ListBuilder, StringArray, StructBuilder};
    use arrow::datatypes::{Fields, Schema};

    use super::*;

    #[test]
    fn lists_of_structs_become_arrays_of_objects() {
        let fields = Fields::from(vec![
            Field::new("state", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
        ]);
        let mut list = ListBuilder::new(StructBuilder::from_fields(fields.clone(), 2));
        {
            let s = list.values();
            s.field_builder::<arrow::array::StringBuilder>(0)
                .unwrap()
                .append_value("open");
            s.field_builder::<arrow::array::Int64Builder>(1)
                .unwrap()
                .append_value(3);
            s.append(true);
        }
        list.append(true);
        let list = list.finish();
        let schema = Schema::new(vec![
            Field::new("name", DataType::Utf8, true),
            Field::new("count", DataType::Int64, true),
            Field::new("incidents", list.data_type().clone(), true),
        ]);
        let batch = RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(StringArray::from(vec!["a \"quoted\" name"])),
                Arc::new(Int64Array::from(vec![None])),
                Arc::new(list),
            ],
        )
        .unwrap();
        let mut out = String::new();
        RowEncoder::new(&batch, &[0, 1, 2]).encode(0, &mut out);
        assert_eq!(
            out,
            r#"{"name":"a \"quoted\" name","count":null,"incidents":[{"state":"open","n":3}]}"#
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["incidents"][0]["n"], 3);
    }
}
