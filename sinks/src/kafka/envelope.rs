//! The record of one change: its topic, its key and its envelope.
//!
//! Topic `<prefix>.<tenant>.<stream>`, the stream being the metastore table
//! (`assets`, `classifications`, ...) and the tenant written as its
//! [`segment`](lily_cdc::TenantId::segment) (`acme` stays `acme`, `acme-eu`
//! is `acme0deu`, `acme_incident` is `acme0uincident`), so no two tenants'
//! topics collide, not even under Kafka's rule that `.` and `_` clash. The key is the asset the change is
//! about, so one asset's changes share a partition and stay in order:
//! `guid` for assets; `asset_guid` for classifications and propagated
//! attributes; `downstream_guid` for lineage edges (the asset whose lineage
//! changed); `incident_id` for incidents, their assets and tickets;
//! `tenant_id` for tenants. A transform feeding the sink may name the key
//! itself in a `_key` column.
//!
//! The envelope (schema `lily.change.v1`) holds `tenant`, `stream`, `op`,
//! `key`, `commit_lsn`, `seq`, `commit_time`, `xid`, `before` and `after`;
//! `op` is Debezium's code (`r`, `c`, `u`, `d`, `t`); `before` is the old
//! row when the table's replica identity sends it (for a delete, what
//! identifies the row), `after` the new one. It is JSON, or Avro
//! ([`super::avro`]).

use std::fmt::Write;

use arrow::array::{
    Array, ArrayRef, AsArray, RecordBatch, StringArray, StructArray, TimestampMicrosecondArray,
    UInt32Array, UInt64Array,
};
use arrow::datatypes::{TimestampMicrosecondType, UInt32Type, UInt64Type};
use lily_cdc::batch::{BEFORE, COMMIT_LSN, COMMIT_TIME, OP, SEQ, UNCHANGED_TOAST, XID};
use lily_cdc::json::{RowEncoder, StructEncoder, cell_text, encode_value};
use lily_cdc::{ChangeBatch, Lsn, TenantId};

/// The value of `schema` in every JSON envelope.
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
        "column_policies" => "qualified_name",
        _ => "asset_guid",
    }
}

/// What every change has besides its rows.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeMeta {
    /// Tenant.
    pub tenant: String,
    /// Key.
    pub key: String,
    /// Debezium's op code.
    pub op: String,
    /// Commit LSN.
    pub commit_lsn: Lsn,
    /// Place in the transaction.
    pub seq: u64,
    /// Commit time, microseconds since the Unix epoch.
    pub commit_micros: Option<i64>,
    /// Transaction id.
    pub xid: Option<u32>,
}

/// The columns of a change batch (or a transform's output) a record is made of.
pub struct ChangeRows<'a> {
    /// The rows.
    pub records: &'a RecordBatch,
    /// The stream (the table's name).
    pub stream: &'a str,
    /// The before-image, when the batch has one.
    pub before: Option<StructArray>,
    op: Option<StringArray>,
    lsn: Option<UInt64Array>,
    seq: Option<UInt64Array>,
    xid: Option<UInt32Array>,
    time: Option<TimestampMicrosecondArray>,
    key_name: &'static str,
}

impl<'a> ChangeRows<'a> {
    /// The rows of `batch`.
    pub fn new(batch: &'a ChangeBatch) -> Self {
        let records = &batch.records;
        let stream = batch.table.name.as_str();
        ChangeRows {
            records,
            stream,
            before: records
                .column_by_name(BEFORE)
                .and_then(|a| a.as_struct_opt().cloned()),
            op: records
                .column_by_name(OP)
                .and_then(|a| a.as_string_opt::<i32>().cloned()),
            lsn: records
                .column_by_name(COMMIT_LSN)
                .and_then(|a| a.as_primitive_opt::<UInt64Type>().cloned()),
            seq: records
                .column_by_name(SEQ)
                .and_then(|a| a.as_primitive_opt::<UInt64Type>().cloned()),
            xid: records
                .column_by_name(XID)
                .and_then(|a| a.as_primitive_opt::<UInt32Type>().cloned()),
            time: records
                .column_by_name(COMMIT_TIME)
                .and_then(|a| a.as_primitive_opt::<TimestampMicrosecondType>().cloned()),
            key_name: if records.schema().index_of("_key").is_ok() {
                "_key"
            } else {
                key_column(stream)
            },
        }
    }

    /// Rows in the batch.
    pub fn len(&self) -> usize {
        self.records.num_rows()
    }

    /// Whether the batch has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The metadata of row `row`.
    pub fn meta(&self, row: usize) -> ChangeMeta {
        let valid = |a: &dyn Array| a.is_valid(row);
        ChangeMeta {
            tenant: cell_text(self.records, "tenant_id", row)
                .unwrap_or_else(|| NO_TENANT.to_owned()),
            key: cell_text(self.records, self.key_name, row).unwrap_or_default(),
            op: self
                .op
                .as_ref()
                .filter(|o| valid(*o))
                .map_or("c", |o| o.value(row))
                .to_owned(),
            commit_lsn: Lsn(self.lsn.as_ref().map_or(0, |l| l.value(row))),
            seq: self.seq.as_ref().map_or(0, |s| s.value(row)),
            commit_micros: self
                .time
                .as_ref()
                .filter(|t| valid(*t))
                .map(|t| t.value(row)),
            xid: self
                .xid
                .as_ref()
                .filter(|x| valid(*x))
                .map(|x| x.value(row)),
        }
    }

    /// Whether row `row` has a before-image.
    pub fn has_before(&self, row: usize) -> bool {
        self.before.as_ref().is_some_and(|b| b.is_valid(row))
    }

    /// The topic of a change with `meta`, under `prefix`. A tenant that is
    /// not a tenant id (a transform's output) keeps its text; such records
    /// are dead-lettered before they are produced ([`valid_tenant`]).
    pub fn topic(&self, prefix: &str, meta: &ChangeMeta) -> String {
        let segment = match TenantId::parse(&meta.tenant) {
            Ok(t) => t.segment(),
            Err(_) => meta.tenant.clone(),
        };
        format!("{prefix}.{segment}.{}", self.stream)
    }
}

impl ChangeRecord {
    /// The record of the change `meta` of `rows`, with `payload`, on its
    /// stream's topic under `prefix`.
    pub fn of(rows: &ChangeRows<'_>, prefix: &str, meta: ChangeMeta, payload: Vec<u8>) -> Self {
        ChangeRecord {
            topic: rows.topic(prefix, &meta),
            payload,
            key: meta.key,
            tenant: meta.tenant,
            commit_lsn: meta.commit_lsn,
            seq: meta.seq,
        }
    }
}

/// JSON envelopes.
pub struct JsonEnvelope<'a> {
    rows: &'a ChangeRows<'a>,
    after: RowEncoder,
    before: Option<StructEncoder>,
    toast: Option<ArrayRef>,
}

impl<'a> JsonEnvelope<'a> {
    /// The encoder of `rows`.
    pub fn new(rows: &'a ChangeRows<'a>) -> Self {
        Self {
            rows,
            after: RowEncoder::data_columns(rows.records),
            before: rows.before.as_ref().map(StructEncoder::new),
            toast: rows.records.column_by_name(UNCHANGED_TOAST).cloned(),
        }
    }

    /// The envelope of row `row`.
    pub fn encode(&self, row: usize, meta: &ChangeMeta) -> Vec<u8> {
        let mut p = String::with_capacity(256);
        let _ = write!(
            p,
            "{{\"schema\":\"{SCHEMA}\",\"tenant\":{},\"stream\":{},\"op\":{},\"key\":{},\"commit_lsn\":\"{}\",\"seq\":{}",
            json_str(&meta.tenant),
            json_str(self.rows.stream),
            json_str(&meta.op),
            json_str(&meta.key),
            meta.commit_lsn,
            meta.seq,
        );
        if let Some(at) = meta
            .commit_micros
            .and_then(chrono::DateTime::from_timestamp_micros)
        {
            let _ = write!(
                p,
                ",\"commit_time\":\"{}\"",
                at.format("%Y-%m-%dT%H:%M:%S%.6fZ")
            );
        }
        if let Some(x) = meta.xid {
            let _ = write!(p, ",\"xid\":{x}");
        }
        p.push_str(",\"before\":");
        match (meta.op.as_str(), &self.before) {
            // A delete's row is what identifies the deleted row.
            ("d", _) => self.after.encode(row, &mut p),
            (_, Some(enc)) if self.rows.has_before(row) => enc.encode(row, &mut p),
            _ => p.push_str("null"),
        }
        p.push_str(",\"after\":");
        match meta.op.as_str() {
            "d" | "t" => p.push_str("null"),
            _ => self.after.encode(row, &mut p),
        }
        if let Some(toast) = &self.toast
            && let Some(list) = toast.as_list_opt::<i32>()
            && list.is_valid(row)
            && !list.value(row).is_empty()
        {
            p.push_str(",\"unchanged_toast\":");
            let field = arrow::datatypes::Field::new("t", list.data_type().clone(), true);
            encode_value(&field, toast, row, &mut p);
        }
        p.push('}');
        p.into_bytes()
    }
}

/// The JSON records of a batch of changes (or of a transform's output),
/// under topic prefix `prefix`.
pub fn change_records(prefix: &str, batch: &ChangeBatch) -> Vec<ChangeRecord> {
    let rows = ChangeRows::new(batch);
    let json = JsonEnvelope::new(&rows);
    (0..rows.len())
        .map(|row| {
            let meta = rows.meta(row);
            let payload = json.encode(row, &meta);
            ChangeRecord::of(&rows, prefix, meta, payload)
        })
        .collect()
}

/// Whether `record` may be produced: its tenant is a tenant id, or none.
pub fn valid_tenant(record: &ChangeRecord) -> Result<(), lily_cdc::InvalidTenantId> {
    if record.tenant == NO_TENANT {
        return Ok(());
    }
    TenantId::parse(&record.tenant).map(|_| ())
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}
