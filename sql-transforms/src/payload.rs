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

/// Decodes JSON objects into a batch of `schema`, as [`payload_from_json`].
pub fn payload_from_values(schema: SchemaRef, rows: &[serde_json::Value]) -> Result<RecordBatch> {
    let mut decoder = ReaderBuilder::new(schema.clone())
        .with_strict_mode(false)
        .build_decoder()
        .map_err(|e| TransformError::Payload(e.to_string()))?;
    decoder
        .serialize(rows)
        .map_err(|e| TransformError::Payload(e.to_string()))?;
    Ok(decoder
        .flush()
        .map_err(|e| TransformError::Payload(e.to_string()))?
        .unwrap_or_else(|| RecordBatch::new_empty(schema)))
}
