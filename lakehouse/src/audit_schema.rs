//! The audit table's schema and the conversion of change batches into it.
//!
//! One table holds every change of every metastore table, so the row itself
//! is kept as JSON (`after`, `before`, `row_key`) next to typed metadata.
//! Partitioned by tenant and day: audits are per tenant and per period.

use std::sync::{Arc, LazyLock};

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Date32Array, Int64Array, RecordBatch, StringArray,
    StringBuilder,
};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit, UInt32Type, UInt64Type};
use lily_cdc::batch::{BEFORE, COMMIT_LSN, COMMIT_TIME, OP, SEQ, UNCHANGED_TOAST, XID};
use lily_cdc::{ChangeBatch, Lsn, Position, TableSchema};

use lily_cdc::json::{RowEncoder, StructEncoder};

/// Path of the audit table under the lake root.
pub const AUDIT_TABLE: &str = "audit/changes";

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("tenant_id", DataType::Utf8, true),
        Field::new("day", DataType::Date32, true),
        Field::new("table_name", DataType::Utf8, true),
        Field::new("op", DataType::Utf8, true),
        Field::new("commit_lsn", DataType::Int64, true),
        Field::new(
            "commit_time",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new("xid", DataType::Int64, true),
        Field::new("seq", DataType::Int64, true),
        Field::new("row_key", DataType::Utf8, true),
        Field::new("after", DataType::Utf8, true),
        Field::new("before", DataType::Utf8, true),
        Field::new(
            "unchanged_toast",
            DataType::List(Arc::new(Field::new("element", DataType::Utf8, true))),
            true,
        ),
    ]))
});

/// Arrow schema of `audit/changes`.
pub fn audit_schema() -> SchemaRef {
    SCHEMA.clone()
}

/// Tenant of rows that belong to no tenant (e.g. a TRUNCATE).
const NO_TENANT: &str = "_none";

/// The rows of `batch` after `watermark`, as audit rows; `None` if none are left.
pub fn to_audit_rows(
    batch: &ChangeBatch,
    watermark: Option<Position>,
) -> Result<Option<RecordBatch>, arrow::error::ArrowError> {
    let records = match watermark {
        Some(w) if batch.last <= w => return Ok(None),
        Some(w) if batch.first <= w => {
            let lsn = batch
                .records
                .column_by_name(COMMIT_LSN)
                .map(|c| c.as_primitive::<UInt64Type>());
            let seq = batch
                .records
                .column_by_name(SEQ)
                .map(|c| c.as_primitive::<UInt64Type>());
            let (Some(lsn), Some(seq)) = (lsn, seq) else {
                return Err(arrow::error::ArrowError::SchemaError(
                    "change batch without positions".into(),
                ));
            };
            let keep: BooleanArray = (0..batch.num_rows())
                .map(|i| {
                    Some(
                        Position {
                            commit_lsn: Lsn(lsn.value(i)),
                            seq: seq.value(i),
                        } > w,
                    )
                })
                .collect();
            filter_record_batch(&batch.records, &keep)?
        }
        _ => batch.records.clone(),
    };
    if records.num_rows() == 0 {
        return Ok(None);
    }
    Ok(Some(convert(&batch.table, &records)?))
}

fn convert(
    table: &TableSchema,
    records: &RecordBatch,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let n = records.num_rows();
    let col = |name: &str| {
        records.column_by_name(name).cloned().ok_or_else(|| {
            arrow::error::ArrowError::SchemaError(format!("change batch without {name}"))
        })
    };
    let op = col(OP)?;
    let lsn = col(COMMIT_LSN)?;
    let time = col(COMMIT_TIME)?;
    let times = time.as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
    let day: Date32Array = times
        .iter()
        .map(|t| t.map(|t| t.div_euclid(86_400_000_000) as i32))
        .collect();
    let tenant: ArrayRef = match records.column_by_name("tenant_id") {
        Some(t) if t.data_type() == &DataType::Utf8 => {
            let t = t.as_string::<i32>();
            Arc::new(
                t.iter()
                    .map(|v| Some(v.unwrap_or(NO_TENANT)))
                    .collect::<StringArray>(),
            )
        }
        _ => Arc::new(StringArray::from(vec![NO_TENANT; n])),
    };
    let first_row = TableSchema::FIRST_ROW_COLUMN;
    let row_fields: Vec<usize> = (first_row..first_row + table.columns.len()).collect();
    let key_fields: Vec<usize> = table
        .columns
        .iter()
        .enumerate()
        .filter(|(_, c)| c.is_key)
        .map(|(i, _)| first_row + i)
        .collect();
    let row_enc = RowEncoder::new(records, &row_fields);
    let key_enc = RowEncoder::new(records, &key_fields);
    let ops = op.as_string::<i32>();
    let mut after = StringBuilder::with_capacity(n, n * 256);
    let mut key = StringBuilder::with_capacity(n, n * 48);
    let mut buf = String::new();
    for i in 0..n {
        let code = ops.value(i);
        if matches!(code, "r" | "c" | "u") {
            buf.clear();
            row_enc.encode(i, &mut buf);
            after.append_value(&buf);
        } else {
            after.append_null();
        }
        if code == "t" || key_fields.is_empty() {
            key.append_null();
        } else {
            buf.clear();
            key_enc.encode(i, &mut buf);
            key.append_value(&buf);
        }
    }
    let before_col = col(BEFORE)?;
    let before_struct = before_col.as_struct();
    let before_enc = StructEncoder::new(before_struct);
    let mut before = StringBuilder::with_capacity(n, n * 64);
    for i in 0..n {
        if before_struct.is_null(i) {
            before.append_null();
        } else {
            buf.clear();
            before_enc.encode(i, &mut buf);
            before.append_value(&buf);
        }
    }
    let table_name = StringArray::from(vec![table.qualified_name(); n]);
    let to_i64 = |a: &ArrayRef| -> Int64Array {
        match a.data_type() {
            DataType::UInt64 => a.as_primitive::<UInt64Type>().unary(|v| v as i64),
            _ => a.as_primitive::<UInt32Type>().unary(|v| v as i64),
        }
    };
    let toast = col(UNCHANGED_TOAST)?;
    let toast = arrow::compute::cast(&toast, SCHEMA.field(11).data_type())?;
    RecordBatch::try_new(
        SCHEMA.clone(),
        vec![
            tenant,
            Arc::new(day),
            Arc::new(table_name),
            op,
            Arc::new(to_i64(&lsn)),
            time,
            Arc::new(to_i64(&col(XID)?)),
            Arc::new(to_i64(&col(SEQ)?)),
            Arc::new(key.finish()),
            Arc::new(after.finish()),
            Arc::new(before.finish()),
            toast,
        ],
    )
}
