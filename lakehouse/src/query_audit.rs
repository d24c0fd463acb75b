//! [`QueryAuditLog`]: every statement run on governed data, appended to the
//! Delta table `audit/queries` (partitioned by tenant and day), readable by
//! any Delta reader (DuckDB, Spark, DataFusion).

use std::sync::Arc;

use crate::location::append_batch;
use arrow::array::{
    ArrayRef, Int64Builder, ListBuilder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use deltalake::DeltaTable;
use tracing::info;

use crate::error::LakeError;
use crate::location::LakeLocation;

/// The query audit table, under the lake root.
pub const QUERY_AUDIT_TABLE: &str = "audit/queries";

/// One statement on governed data.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryRecord {
    /// When it started, µs since the epoch (UTC).
    pub started_micros: i64,
    /// The tenant.
    pub tenant_id: String,
    /// The user name the client gave.
    pub user_name: String,
    /// Token subject or API key id.
    pub subject: String,
    /// The caller's roles in the tenant.
    pub roles: Vec<String>,
    /// The statement as sent.
    pub sql: String,
    /// Governed tables read.
    pub tables: Vec<String>,
    /// Columns read, `table.column`.
    pub columns: Vec<String>,
    /// Masks applied, `table.column=MASK(policy, ...)`.
    pub masks: Vec<String>,
    /// The policy snapshot the statement was planned against.
    pub policy_version: Option<i64>,
    /// Rows sent to the client.
    pub rows: i64,
    /// From start to the last row, in ms.
    pub duration_ms: i64,
    /// `ok`, or the SQLSTATE of the error.
    pub status: String,
    /// The error, if any.
    pub error: Option<String>,
}

/// The Arrow schema of `audit/queries`.
pub fn query_audit_schema() -> SchemaRef {
    let list = || DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)));
    Arc::new(Schema::new(vec![
        Field::new(
            "started_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("tenant_id", DataType::Utf8, false),
        Field::new("day", DataType::Utf8, false),
        Field::new("user_name", DataType::Utf8, false),
        Field::new("subject", DataType::Utf8, false),
        Field::new("roles", list(), true),
        Field::new("sql", DataType::Utf8, false),
        Field::new("tables", list(), true),
        Field::new("columns", list(), true),
        Field::new("masks", list(), true),
        Field::new("policy_version", DataType::Int64, true),
        Field::new("rows", DataType::Int64, false),
        Field::new("duration_ms", DataType::Int64, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("error", DataType::Utf8, true),
    ]))
}

fn to_batch(records: &[QueryRecord]) -> Result<RecordBatch, LakeError> {
    let mut started = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    let mut strings: Vec<StringBuilder> = (0..6).map(|_| StringBuilder::new()).collect();
    let mut lists: Vec<ListBuilder<StringBuilder>> = (0..4)
        .map(|_| ListBuilder::new(StringBuilder::new()))
        .collect();
    let mut ints: Vec<Int64Builder> = (0..3).map(|_| Int64Builder::new()).collect();
    let mut error = StringBuilder::new();
    for r in records {
        started.append_value(r.started_micros);
        let day = chrono::DateTime::from_timestamp_micros(r.started_micros)
            .map(|t| t.format("%Y-%m-%d").to_string())
            .unwrap_or_default();
        for (b, v) in strings.iter_mut().zip([
            &r.tenant_id,
            &day,
            &r.user_name,
            &r.subject,
            &r.sql,
            &r.status,
        ]) {
            b.append_value(v);
        }
        for (b, v) in lists
            .iter_mut()
            .zip([&r.roles, &r.tables, &r.columns, &r.masks])
        {
            for s in v {
                b.values().append_value(s);
            }
            b.append(true);
        }
        ints[0].append_option(r.policy_version);
        ints[1].append_value(r.rows);
        ints[2].append_value(r.duration_ms);
        error.append_option(r.error.as_deref());
    }
    let mut s = strings
        .into_iter()
        .map(|mut b| Arc::new(b.finish()) as ArrayRef);
    let mut l = lists
        .into_iter()
        .map(|mut b| Arc::new(b.finish()) as ArrayRef);
    let mut i = ints
        .into_iter()
        .map(|mut b| Arc::new(b.finish()) as ArrayRef);
    let next = |it: &mut dyn Iterator<Item = ArrayRef>| {
        it.next()
            .ok_or_else(|| arrow::error::ArrowError::SchemaError("column count".into()))
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(started.finish()),
        next(&mut s)?, // tenant_id
        next(&mut s)?, // day
        next(&mut s)?, // user_name
        next(&mut s)?, // subject
        next(&mut l)?, // roles
        next(&mut s)?, // sql
        next(&mut l)?, // tables
        next(&mut l)?, // columns
        next(&mut l)?, // masks
        next(&mut i)?, // policy_version
        next(&mut i)?, // rows
        next(&mut i)?, // duration_ms
        next(&mut s)?, // status
        Arc::new(error.finish()),
    ];
    Ok(RecordBatch::try_new(query_audit_schema(), columns)?)
}

/// Appends query records to `audit/queries`.
pub struct QueryAuditLog {
    table: DeltaTable,
}

impl QueryAuditLog {
    /// Opens `audit/queries` under `location`, creating it if missing.
    pub async fn open(location: &LakeLocation) -> Result<Self, LakeError> {
        let table = location
            .open_or_create(
                QUERY_AUDIT_TABLE,
                &query_audit_schema(),
                &["tenant_id", "day"],
                "Every statement run on governed data through Lily's SQL endpoint",
            )
            .await?;
        info!(table = %table.table_url(), "query audit table opened");
        Ok(Self { table })
    }

    /// Appends `records` in one Delta commit.
    pub async fn append(&mut self, records: &[QueryRecord]) -> Result<(), LakeError> {
        if records.is_empty() {
            return Ok(());
        }
        self.table = append_batch(&self.table, to_batch(records)?, &["tenant_id", "day"]).await?;
        Ok(())
    }
}
