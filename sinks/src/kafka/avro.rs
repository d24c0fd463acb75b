//! Avro envelopes, for a kafka sink with `format = "avro"`.
//!
//! Each stream has a record schema made from its Arrow schema: `Change` in
//! namespace `lily.<stream>`, with the envelope's fields and `before` and
//! `after` as `Row` records (each column nullable; uuids as `string` with
//! logical type `uuid`, timestamps as `timestamp-micros`, dates as `date`,
//! text arrays as arrays). Values use Avro's single-object encoding: the
//! two marker bytes `C3 01`, the schema's 8-byte CRC-64-AVRO (Rabin)
//! fingerprint, little-endian, then the datum. Lily publishes every schema
//! it writes with on `<prefix>._schemas`, keyed by the fingerprint in hex,
//! before the first record that uses it: a consumer looks the writer's
//! schema up by the fingerprint a value starts with.

use std::collections::HashMap;

use apache_avro::headers::HeaderBuilder;
use apache_avro::types::Value;
use apache_avro::{GenericSingleObjectWriter, Schema};
use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Date32Type, Field, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type,
    SchemaRef, TimeUnit, TimestampMicrosecondType, UInt32Type, UInt64Type,
};
use lily_cdc::json::value_text;
use serde_json::json;

use super::envelope::{ChangeMeta, ChangeRows};

/// Suffix of the topic the schemas are published on.
pub const SCHEMAS_TOPIC: &str = "_schemas";

/// A schema that cannot be made or a value that does not fit it.
#[derive(Debug, thiserror::Error)]
#[error("Avro: {0}")]
pub struct AvroError(String);

fn err(e: impl std::fmt::Display) -> AvroError {
    AvroError(e.to_string())
}

/// The Avro type of an Arrow column.
fn avro_type(dt: &DataType) -> serde_json::Value {
    match dt {
        DataType::Boolean => json!("boolean"),
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::UInt8 | DataType::UInt16 => {
            json!("int")
        }
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => json!("long"),
        DataType::Float32 => json!("float"),
        DataType::Float64 => json!("double"),
        DataType::FixedSizeBinary(16) => json!({"type": "string", "logicalType": "uuid"}),
        DataType::Binary | DataType::LargeBinary | DataType::FixedSizeBinary(_) => json!("bytes"),
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            json!({"type": "long", "logicalType": "timestamp-micros"})
        }
        DataType::Date32 => json!({"type": "int", "logicalType": "date"}),
        DataType::List(item) => {
            json!({"type": "array", "items": ["null", avro_type(item.data_type())]})
        }
        // Text, JSON (jsonb arrives as text) and anything else: its text.
        _ => json!("string"),
    }
}

/// The 64-bit Rabin fingerprint the Avro specification calls CRC-64-AVRO.
pub fn crc64_avro(bytes: &[u8]) -> u64 {
    const EMPTY: u64 = 0xc15d_213a_a4d7_a795;
    let table: [u64; 256] = std::array::from_fn(|i| {
        let mut fp = i as u64;
        for _ in 0..8 {
            fp = (fp >> 1) ^ (EMPTY & 0u64.wrapping_sub(fp & 1));
        }
        fp
    });
    bytes.iter().fold(EMPTY, |fp, b| {
        (fp >> 8) ^ table[((fp ^ u64::from(*b)) & 0xff) as usize]
    })
}

/// The schema's Parsing Canonical Form as the specification defines it.
///
/// apache-avro 0.21 leaves a logical type's primitive wrapped
/// (`{"type":"long"}`) where the specification asks for the plain name
/// (`"long"`), which gives a fingerprint no other Avro library computes;
/// the wrapped primitives are unwrapped here.
pub fn canonical_form(schema: &Schema) -> String {
    let mut pcf = schema.canonical_form();
    for primitive in [
        "null", "boolean", "int", "long", "float", "double", "bytes", "string",
    ] {
        pcf = pcf.replace(
            &format!("{{\"type\":\"{primitive}\"}}"),
            &format!("\"{primitive}\""),
        );
    }
    pcf
}

/// The single-object header: `C3 01` and the fingerprint, little-endian.
struct Header([u8; 8]);

impl HeaderBuilder for Header {
    fn build_header(&self) -> Vec<u8> {
        let mut h = vec![0xC3, 0x01];
        h.extend_from_slice(&self.0);
        h
    }
}

/// The schema of a stream's envelopes, from the data columns of its batches.
pub fn stream_schema(stream: &str, columns: &[Field]) -> serde_json::Value {
    let row_fields: Vec<serde_json::Value> = columns
        .iter()
        .map(|f| json!({"name": f.name(), "type": ["null", avro_type(f.data_type())], "default": null}))
        .collect();
    let row = json!({"type": "record", "name": "Row", "fields": row_fields});
    json!({
        "type": "record",
        "name": "Change",
        "namespace": format!("lily.{stream}"),
        "fields": [
            {"name": "tenant", "type": "string"},
            {"name": "stream", "type": "string"},
            {"name": "op", "type": "string"},
            {"name": "key", "type": "string"},
            {"name": "commit_lsn", "type": "string"},
            {"name": "seq", "type": "long"},
            {"name": "commit_time", "type": ["null", {"type": "long", "logicalType": "timestamp-micros"}], "default": null},
            {"name": "xid", "type": ["null", "long"], "default": null},
            {"name": "before", "type": ["null", row], "default": null},
            {"name": "after", "type": ["null", "Row"], "default": null},
        ]
    })
}

/// The Avro value of a cell, as the branch of its `["null", T]` union.
fn cell(field: &Field, array: &ArrayRef, row: usize) -> Value {
    if array.is_null(row) {
        return Value::Union(0, Box::new(Value::Null));
    }
    Value::Union(1, Box::new(plain(field, array, row)))
}

fn plain(field: &Field, array: &ArrayRef, row: usize) -> Value {
    match array.data_type() {
        DataType::Boolean => Value::Boolean(array.as_boolean().value(row)),
        DataType::Int16 => Value::Int(array.as_primitive::<Int16Type>().value(row) as i32),
        DataType::Int32 => Value::Int(array.as_primitive::<Int32Type>().value(row)),
        DataType::Int64 => Value::Long(array.as_primitive::<Int64Type>().value(row)),
        DataType::UInt32 => Value::Long(array.as_primitive::<UInt32Type>().value(row) as i64),
        DataType::UInt64 => Value::Long(array.as_primitive::<UInt64Type>().value(row) as i64),
        DataType::Float32 => Value::Float(array.as_primitive::<Float32Type>().value(row)),
        DataType::Float64 => Value::Double(array.as_primitive::<Float64Type>().value(row)),
        DataType::FixedSizeBinary(16) => {
            match uuid::Uuid::from_slice(array.as_fixed_size_binary().value(row)) {
                Ok(u) => Value::Uuid(u),
                Err(_) => Value::String(value_text(field, array, row).unwrap_or_default()),
            }
        }
        DataType::Binary => Value::Bytes(array.as_binary::<i32>().value(row).to_vec()),
        DataType::FixedSizeBinary(_) => {
            Value::Bytes(array.as_fixed_size_binary().value(row).to_vec())
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            Value::TimestampMicros(array.as_primitive::<TimestampMicrosecondType>().value(row))
        }
        DataType::Date32 => Value::Date(array.as_primitive::<Date32Type>().value(row)),
        DataType::List(item) => {
            let values = array.as_list::<i32>().value(row);
            Value::Array((0..values.len()).map(|i| cell(item, &values, i)).collect())
        }
        _ => Value::String(value_text(field, array, row).unwrap_or_default()),
    }
}

/// A `Row` record of the columns `columns` of `batch` (or of a before-image).
fn row_record(columns: &[(Field, ArrayRef)], row: usize) -> Value {
    Value::Record(
        columns
            .iter()
            .map(|(f, a)| (f.name().clone(), cell(f, a, row)))
            .collect(),
    )
}

struct StreamWriter {
    arrow: SchemaRef,
    writer: GenericSingleObjectWriter,
}

/// Avro envelopes of every stream, with their schemas.
#[derive(Default)]
pub struct AvroEnvelopes {
    streams: HashMap<String, StreamWriter>,
}

/// A schema used for the first time: publish it before its records.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSchema {
    /// The fingerprint, 16 hex digits (the bytes as they follow `C3 01`).
    pub fingerprint: String,
    /// The schema as JSON.
    pub json: String,
}

impl AvroEnvelopes {
    /// Makes (or finds) the schema of `rows`' stream; returns it if it is new.
    pub fn prepare(&mut self, rows: &ChangeRows<'_>) -> Result<Option<NewSchema>, AvroError> {
        let arrow = rows.records.schema();
        if self
            .streams
            .get(rows.stream)
            .is_some_and(|s| s.arrow == arrow)
        {
            return Ok(None);
        }
        let columns: Vec<Field> = data_columns(rows.records)
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        let json = stream_schema(rows.stream, &columns).to_string();
        let schema = Schema::parse_str(&json).map_err(err)?;
        let fingerprint = crc64_avro(canonical_form(&schema).as_bytes()).to_le_bytes();
        let writer = GenericSingleObjectWriter::new_with_capacity_and_header_builder(
            &schema,
            1024,
            Header(fingerprint),
        )
        .map_err(err)?;
        let fingerprint = hex::encode(fingerprint);
        self.streams
            .insert(rows.stream.to_owned(), StreamWriter { arrow, writer });
        Ok(Some(NewSchema { fingerprint, json }))
    }

    /// The single-object encoding of row `row` (after [`AvroEnvelopes::prepare`]).
    pub fn encode(
        &mut self,
        rows: &ChangeRows<'_>,
        row: usize,
        meta: &ChangeMeta,
    ) -> Result<Vec<u8>, AvroError> {
        let stream = self
            .streams
            .get_mut(rows.stream)
            .ok_or_else(|| AvroError(format!("no schema prepared for {}", rows.stream)))?;
        let columns = data_columns(rows.records);
        let row_value = row_record(&columns, row);
        let before = match (meta.op.as_str(), &rows.before) {
            ("d", _) => Value::Union(1, Box::new(row_value.clone())),
            (_, Some(b)) if rows.has_before(row) => {
                let children: Vec<(Field, ArrayRef)> = b
                    .fields()
                    .iter()
                    .map(|f| f.as_ref().clone())
                    .zip(b.columns().iter().cloned())
                    .collect();
                Value::Union(1, Box::new(row_record(&children, row)))
            }
            _ => Value::Union(0, Box::new(Value::Null)),
        };
        let after = match meta.op.as_str() {
            "d" | "t" => Value::Union(0, Box::new(Value::Null)),
            _ => Value::Union(1, Box::new(row_value)),
        };
        let opt = |v: Option<Value>| match v {
            Some(v) => Value::Union(1, Box::new(v)),
            None => Value::Union(0, Box::new(Value::Null)),
        };
        let value = Value::Record(vec![
            ("tenant".into(), Value::String(meta.tenant.clone())),
            ("stream".into(), Value::String(rows.stream.to_owned())),
            ("op".into(), Value::String(meta.op.clone())),
            ("key".into(), Value::String(meta.key.clone())),
            (
                "commit_lsn".into(),
                Value::String(meta.commit_lsn.to_string()),
            ),
            ("seq".into(), Value::Long(meta.seq as i64)),
            (
                "commit_time".into(),
                opt(meta.commit_micros.map(Value::TimestampMicros)),
            ),
            ("xid".into(), opt(meta.xid.map(|x| Value::Long(x as i64)))),
            ("before".into(), before),
            ("after".into(), after),
        ]);
        let mut out = Vec::with_capacity(256);
        stream.writer.write_value(value, &mut out).map_err(err)?;
        Ok(out)
    }
}

/// The data columns of `batch`: those whose names do not start with `_`.
fn data_columns(batch: &RecordBatch) -> Vec<(Field, ArrayRef)> {
    let schema = batch.schema();
    schema
        .fields()
        .iter()
        .zip(batch.columns())
        .filter(|(f, _)| !f.name().starts_with('_'))
        .map(|(f, a)| (f.as_ref().clone(), a.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canonical_form_is_the_specifications() {
        let columns = vec![
            Field::new("guid", DataType::FixedSizeBinary(16), true),
            Field::new(
                "owners",
                DataType::List(Field::new("item", DataType::Utf8, true).into()),
                true,
            ),
            Field::new(
                "updated_at",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new("version", DataType::Int64, true),
        ];
        let json = stream_schema("assets", &columns).to_string();
        let schema = Schema::parse_str(&json).unwrap();
        assert!(json.contains("\"logicalType\":\"uuid\""), "{json}");
        let pcf = canonical_form(&schema);
        assert!(pcf.starts_with("{\"name\":\"lily.assets.Change\""), "{pcf}");
        assert!(
            pcf.contains("{\"name\":\"guid\",\"type\":[\"null\",\"string\"]}"),
            "{pcf}"
        );
        assert!(!pcf.contains("{\"type\":\"long\"}"), "{pcf}");
    }

    #[test]
    fn the_fingerprint_starts_from_the_specifications_seed() {
        assert_eq!(crc64_avro(b""), 0xc15d_213a_a4d7_a795);
        assert_ne!(crc64_avro(b"\"int\""), crc64_avro(b"\"long\""));
    }
}
