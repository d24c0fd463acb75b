//! The record of one change: its topic, its key and its envelope.
//!
//! Topic `<prefix>.<tenant>.<stream>`, the stream being the metastore table
//! (`assets`, `classifications`, ...). The key is the asset the change is
//! about, so one asset's changes share a partition and stay in order:
//! `guid` for assets; `asset_guid` for classifications and propagated
//! attributes; `downstream_guid` for lineage edges (the asset whose lineage
//! changed); `incident_id` for incidents, their assets and tickets;
//! `tenant_id` for tenants. A transform feeding the sink may name the key
//! itself in a `_key` column.
//!
//! The JSON envelope (schema `lily.change.v1`):
//! `{"schema", "tenant", "stream", "op", "key", "commit_lsn", "seq",
//! "commit_time", "xid", "before", "after"}`; `op` is Debezium's code (`r`,
//! `c`, `u`, `d`, `t`); `before` is the old row when the table's replica
//! identity sends it (for a delete, what identifies the row), `after` the
//! new one.

use std::fmt::Write;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{TimestampMicrosecondType, UInt32Type, UInt64Type};
use lily_cdc::batch::{BEFORE, COMMIT_LSN, COMMIT_TIME, OP, SEQ, UNCHANGED_TOAST, XID};
use lily_cdc::json::{RowEncoder, StructEncoder, cell_text, encode_value};
use lily_cdc::{ChangeBatch, Lsn};

/// The value of `schema` in every envelope.
pub const SCHEMA: &str = "lily.change.v1";

/// Topic of rows without a tenant (a TRUNCATE).
pub const NO_TENANT: &str = "_none";

/// One record to produce.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeRecord {
    /// Topic.
    pub topic: String,
    /// Key.
    pub key: String,
    /// The envelope.
    pub payload: Vec<u8>,
    /// Tenant.
    pub tenant: String,
    /// Commit LSN.
    pub commit_lsn: Lsn,
    /// Place in the transaction.
    pub seq: u64,
}

/// The column that keys a stream's records.
pub fn key_column(stream: &str) -> &'static str {
    match stream {
        "assets" => "guid",
        "lineage_edges" => "downstream_guid",
        "incidents" | "incident_assets" | "incident_tickets" => "incident_id",
        "tenants" => "tenant_id",
        _ => "asset_guid",
    }
}

/// The records of a batch of changes (or of a transform's output) for the
/// stream `stream`, under topic prefix `prefix`.
pub fn change_records(prefix: &str, batch: &ChangeBatch) -> Vec<ChangeRecord> {
    let records = &batch.records;
    let stream = batch.table.name.as_str();
    let schema = records.schema();
    let after = RowEncoder::data_columns(records);
    let before = records
        .column_by_name(BEFORE)
        .and_then(|a| a.as_struct_opt().cloned());
    let before_enc = before.as_ref().map(StructEncoder::new);
    let op = records
        .column_by_name(OP)
        .and_then(|a| a.as_string_opt::<i32>().cloned());
    let lsn = records
        .column_by_name(COMMIT_LSN)
        .and_then(|a| a.as_primitive_opt::<UInt64Type>().cloned());
    let seq = records
        .column_by_name(SEQ)
        .and_then(|a| a.as_primitive_opt::<UInt64Type>().cloned());
    let xid = records
        .column_by_name(XID)
        .and_then(|a| a.as_primitive_opt::<UInt32Type>().cloned());
    let time = records
        .column_by_name(COMMIT_TIME)
        .and_then(|a| a.as_primitive_opt::<TimestampMicrosecondType>().cloned());
    let toast: Option<ArrayRef> = records.column_by_name(UNCHANGED_TOAST).cloned();
    let key_name = if schema.index_of("_key").is_ok() {
        "_key"
    } else {
        key_column(stream)
    };

    let mut out = Vec::with_capacity(records.num_rows());
    for row in 0..records.num_rows() {
        let op_code = op
            .as_ref()
            .filter(|o| o.is_valid(row))
            .map(|o| o.value(row))
            .unwrap_or("c");
        let tenant = cell_text(records, "tenant_id", row).unwrap_or_else(|| NO_TENANT.to_owned());
        let key = cell_text(records, key_name, row).unwrap_or_default();
        let commit_lsn = Lsn(lsn.as_ref().map_or(0, |l| l.value(row)));
        let seq_no = seq.as_ref().map_or(0, |s| s.value(row));
        let mut p = String::with_capacity(256);
        let _ = write!(
            p,
            "{{\"schema\":\"{SCHEMA}\",\"tenant\":{},\"stream\":{},\"op\":{},\"key\":{},\"commit_lsn\":\"{commit_lsn}\",\"seq\":{seq_no}",
            json_str(&tenant),
            json_str(stream),
            json_str(op_code),
            json_str(&key),
        );
        if let Some(t) = time.as_ref().filter(|t| t.is_valid(row))
            && let Some(at) = chrono::DateTime::from_timestamp_micros(t.value(row))
        {
            let _ = write!(
                p,
                ",\"commit_time\":\"{}\"",
                at.format("%Y-%m-%dT%H:%M:%S%.6fZ")
            );
        }
        if let Some(x) = xid.as_ref().filter(|x| x.is_valid(row)) {
            let _ = write!(p, ",\"xid\":{}", x.value(row));
        }
        p.push_str(",\"before\":");
        match (op_code, &before, &before_enc) {
            // A delete's row is what identifies the deleted row.
            ("d", _, _) => after.encode(row, &mut p),
            (_, Some(b), Some(enc)) if b.is_valid(row) => enc.encode(row, &mut p),
            _ => p.push_str("null"),
        }
        p.push_str(",\"after\":");
        match op_code {
            "d" | "t" => p.push_str("null"),
            _ => after.encode(row, &mut p),
        }
        if let Some(list) = toast.as_ref().and_then(|t| t.as_list_opt::<i32>())
            && list.is_valid(row)
            && !list.value(row).is_empty()
        {
            p.push_str(",\"unchanged_toast\":");
            encode_value(
                &arrow::datatypes::Field::new("t", list.data_type().clone(), true),
                toast.as_ref().expect("checked above"),
                row,
                &mut p,
            );
        }
        p.push('}');
        out.push(ChangeRecord {
            topic: format!("{prefix}.{tenant}.{stream}"),
            key,
            payload: p.into_bytes(),
            tenant,
            commit_lsn,
            seq: seq_no,
        });
    }
    out
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}
