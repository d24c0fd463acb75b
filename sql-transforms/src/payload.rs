//! Inbound payloads as Arrow: JSON documents decoded into the columns a
//! pre-ingest transform declares (`CREATE TABLE payload (...)`).

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::json::reader::ReaderBuilder;

use crate::error::{Result, TransformError};

/// Decodes a JSON object, or an array of objects, into a batch of `schema`.
/// Fields the schema does not name are ignored; a field of the wrong type
/// is an error naming it.
pub fn payload_from_json(schema: SchemaRef, body: &[u8]) -> Result<RecordBatch> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| TransformError::Payload(format!("not JSON: {e}")))?;
    let rows = match value {
        serde_json::Value::Array(items) => items,
        object @ serde_json::Value::Object(_) => vec![object],
        other => {
            return Err(TransformError::Payload(format!(
                "expected a JSON object or an array of objects, got {}",
                match other {
                    serde_json::Value::Null => "null",
                    serde_json::Value::Bool(_) => "a boolean",
                    serde_json::Value::Number(_) => "a number",
                    _ => "a string",
                }
            )));
        }
    };
    payload_from_values(schema, &rows)
}

/// A payload column a transform may declare (`json_keys VARCHAR[]`) to
/// receive the dotted path of every key each document has, objects within
/// objects included (`payload`, `payload.owner`): JSON's `null` and a key
/// left out both decode as NULL, and this tells them apart.
pub const JSON_KEYS: &str = "json_keys";

/// A payload column a transform may declare (`_event BIGINT`) to receive
/// each document's position among the documents of one run. A transform
/// that selects it into its output lets Lily map concurrent events through
/// one run and give each its own rows.
pub const EVENT: &str = "_event";

/// Decodes JSON objects into a batch of `schema`, as [`payload_from_json`].
pub fn payload_from_values(schema: SchemaRef, rows: &[serde_json::Value]) -> Result<RecordBatch> {
    let mut decoder = ReaderBuilder::new(schema.clone())
        .with_strict_mode(false)
        .build_decoder()
        .map_err(|e| TransformError::Payload(e.to_string()))?;
    let keys = schema.field_with_name(JSON_KEYS).is_ok();
    let numbered = schema.field_with_name(EVENT).is_ok();
    let serialized = if keys || numbered {
        let prepared: Vec<serde_json::Value> = rows
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let mut row = if keys {
                    with_json_keys(row)
                } else {
                    row.clone()
                };
                // Set here, never taken from the sender.
                if numbered && let serde_json::Value::Object(object) = &mut row {
                    object.insert(EVENT.to_owned(), i.into());
                }
                row
            })
            .collect();
        decoder.serialize(&prepared)
    } else {
        decoder.serialize(rows)
    };
    serialized.map_err(|e| TransformError::Payload(e.to_string()))?;
    Ok(decoder
        .flush()
        .map_err(|e| TransformError::Payload(e.to_string()))?
        .unwrap_or_else(|| RecordBatch::new_empty(schema)))
}

/// `row` with its key paths under [`JSON_KEYS`] (replacing any it had).
fn with_json_keys(row: &serde_json::Value) -> serde_json::Value {
    fn walk(
        object: &serde_json::Map<String, serde_json::Value>,
        prefix: &str,
        out: &mut Vec<String>,
    ) {
        for (key, value) in object {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            if let serde_json::Value::Object(inner) = value {
                walk(inner, &path, out);
            }
            out.push(path);
        }
    }
    let mut row = row.clone();
    if let serde_json::Value::Object(object) = &mut row {
        object.remove(JSON_KEYS);
        let mut keys = Vec::new();
        walk(object, "", &mut keys);
        object.insert(JSON_KEYS.to_owned(), keys.into());
    }
    row
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    #[test]
    fn json_keys_tell_null_from_absent() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Utf8, true),
            Field::new(
                JSON_KEYS,
                DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
                true,
            ),
        ]));
        let rows = [
            serde_json::json!({"a": null, "p": {"q": 1}}),
            serde_json::json!({"json_keys": ["forged"]}),
        ];
        let batch = payload_from_values(schema, &rows).unwrap();
        assert!(batch.column(0).is_null(0) && batch.column(0).is_null(1));
        let keys = batch.column(1).as_list::<i32>();
        let of = |i: usize| -> Vec<String> {
            let mut v: Vec<String> = keys
                .value(i)
                .as_string::<i32>()
                .iter()
                .flatten()
                .map(str::to_owned)
                .collect();
            v.sort();
            v
        };
        assert_eq!(of(0), ["a", "p", "p.q"]);
        assert!(
            of(1).is_empty(),
            "a sender cannot forge the keys: {:?}",
            of(1)
        );
    }
}
