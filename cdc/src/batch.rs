//! Change batches: the Arrow record batches the reader hands to sinks.
//!
//! Every batch holds changes of one table. Its schema is the change metadata
//! (`_op`, `_commit_lsn`, `_commit_time`, `_xid`, `_seq`), the table's columns
//! in their Arrow types, the before-image as a struct (`_before`, when the
//! replica identity sends one) and the names of columns whose TOASTed value
//! did not change (`_unchanged_toast`; such a column is NULL in the row but
//! was not set to NULL).

use std::sync::Arc;

use arrow::array::{
    ArrayRef, ListBuilder, RecordBatch, StringBuilder, StructArray, TimestampMicrosecondBuilder,
    UInt32Builder, UInt64Builder,
};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

use crate::checkpoint::BatchSeq;
use crate::column::ColumnBuilder;
use crate::error::{CdcError, Result};
use crate::lsn::Position;
use crate::pgoutput::{RelationMessage, ReplicaIdentity, TupleValue};
use crate::types::{PG_TYPE_OID, ValueKind};

/// Name of the change-kind column.
pub const OP: &str = "_op";
/// Name of the commit LSN column.
pub const COMMIT_LSN: &str = "_commit_lsn";
/// Name of the commit time column.
pub const COMMIT_TIME: &str = "_commit_time";
/// Name of the transaction id column.
pub const XID: &str = "_xid";
/// Name of the position-in-transaction column.
pub const SEQ: &str = "_seq";
/// Name of the before-image struct column.
pub const BEFORE: &str = "_before";
/// Name of the unchanged-TOAST column list.
pub const UNCHANGED_TOAST: &str = "_unchanged_toast";

/// What happened to a row. The codes are Debezium's, which users know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeOp {
    /// Read by the initial snapshot (`r`).
    Read,
    /// Inserted (`c`).
    Insert,
    /// Updated (`u`).
    Update,
    /// Deleted (`d`).
    Delete,
    /// The table was truncated (`t`).
    Truncate,
}

impl ChangeOp {
    /// The one-letter code stored in `_op`.
    pub fn code(self) -> &'static str {
        match self {
            ChangeOp::Read => "r",
            ChangeOp::Insert => "c",
            ChangeOp::Update => "u",
            ChangeOp::Delete => "d",
            ChangeOp::Truncate => "t",
        }
    }
}

/// One column of a replicated table.
#[derive(Debug, Clone)]
pub struct ColumnSpec {
    /// Column name.
    pub name: String,
    /// PostgreSQL type oid.
    pub type_oid: u32,
    /// How its values are decoded.
    pub kind: ValueKind,
    /// Part of the replica identity.
    pub is_key: bool,
}

/// A replicated table: its name, columns and the Arrow schema of its batches.
#[derive(Debug, Clone)]
pub struct TableSchema {
    /// Table oid.
    pub relation_id: u32,
    /// Schema name.
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// Which old values updates and deletes carry.
    pub replica_identity: ReplicaIdentity,
    /// Columns in table order.
    pub columns: Vec<ColumnSpec>,
    /// Schema of the table's change batches.
    pub arrow: SchemaRef,
}

impl TableSchema {
    /// Builds the table schema from a pgoutput Relation message.
    pub fn from_relation(rel: &RelationMessage) -> Self {
        let columns: Vec<ColumnSpec> = rel
            .columns
            .iter()
            .map(|c| ColumnSpec {
                name: c.name.clone(),
                type_oid: c.type_oid,
                kind: ValueKind::for_type(c.type_oid),
                is_key: c.is_key,
            })
            .collect();
        let row_fields: Vec<Field> = columns
            .iter()
            .map(|c| {
                let f = c.kind.field(&c.name);
                let mut md = f.metadata().clone();
                md.insert(PG_TYPE_OID.to_string(), c.type_oid.to_string());
                f.with_metadata(md)
            })
            .collect();
        let mut fields = vec![
            Field::new(OP, DataType::Utf8, false),
            Field::new(COMMIT_LSN, DataType::UInt64, false),
            Field::new(
                COMMIT_TIME,
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new(XID, DataType::UInt32, false),
            Field::new(SEQ, DataType::UInt64, false),
        ];
        fields.extend(row_fields.iter().cloned());
        fields.push(Field::new(
            BEFORE,
            DataType::Struct(Fields::from(row_fields)),
            true,
        ));
        fields.push(Field::new(
            UNCHANGED_TOAST,
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            false,
        ));
        TableSchema {
            relation_id: rel.relation_id,
            namespace: rel.namespace.clone(),
            name: rel.name.clone(),
            replica_identity: rel.replica_identity,
            columns,
            arrow: Arc::new(Schema::new(fields)),
        }
    }

    /// `namespace.name`.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.namespace, self.name)
    }

    /// Index of the first row column in the batch schema.
    pub const FIRST_ROW_COLUMN: usize = 5;
}

/// A batch of changes to one table, in commit order.
#[derive(Debug, Clone)]
pub struct ChangeBatch {
    /// Pipeline-wide sequence number of the batch; sinks acknowledge by it.
    pub seq: BatchSeq,
    /// The table.
    pub table: Arc<TableSchema>,
    /// The rows.
    pub records: RecordBatch,
    /// Position of the first row.
    pub first: Position,
    /// Position of the last row.
    pub last: Position,
    /// Earliest commit time in the batch, microseconds since the Unix epoch.
    pub first_commit_micros: i64,
}

impl ChangeBatch {
    /// Number of rows.
    pub fn num_rows(&self) -> usize {
        self.records.num_rows()
    }
}

/// The metadata of one change.
#[derive(Debug, Clone, Copy)]
pub struct ChangeMeta {
    /// What happened.
    pub op: ChangeOp,
    /// Where it sits in the stream.
    pub position: Position,
    /// Commit time, microseconds since the Unix epoch.
    pub commit_micros: i64,
    /// Transaction id.
    pub xid: u32,
}

/// Accumulates the changes of one table until the batch closes.
pub struct TableBatchBuilder {
    table: Arc<TableSchema>,
    op: StringBuilder,
    lsn: UInt64Builder,
    time: TimestampMicrosecondBuilder,
    xid: UInt32Builder,
    seq: UInt64Builder,
    row: Vec<ColumnBuilder>,
    before: Vec<ColumnBuilder>,
    before_valid: Vec<bool>,
    toast: ListBuilder<StringBuilder>,
    rows: usize,
    bytes: usize,
    first: Option<Position>,
    last: Position,
    first_commit_micros: i64,
}

impl TableBatchBuilder {
    /// An empty builder for `table`.
    pub fn new(table: Arc<TableSchema>) -> Self {
        let row = table
            .columns
            .iter()
            .map(|c| ColumnBuilder::new(&c.kind))
            .collect();
        let before = table
            .columns
            .iter()
            .map(|c| ColumnBuilder::new(&c.kind))
            .collect();
        TableBatchBuilder {
            table,
            op: StringBuilder::new(),
            lsn: UInt64Builder::new(),
            time: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            xid: UInt32Builder::new(),
            seq: UInt64Builder::new(),
            row,
            before,
            before_valid: Vec::new(),
            toast: ListBuilder::new(StringBuilder::new()),
            rows: 0,
            bytes: 0,
            first: None,
            last: Position::default(),
            first_commit_micros: i64::MAX,
        }
    }

    /// The table this builder is for.
    pub fn table(&self) -> &Arc<TableSchema> {
        &self.table
    }

    /// Rows appended since the last finish.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Approximate payload bytes appended since the last finish.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Position of the first buffered row.
    pub fn first_position(&self) -> Option<Position> {
        self.first
    }

    /// Appends one change. `row` is the new row (or the old one for deletes),
    /// `before` the old values when the server sent them.
    pub fn append(
        &mut self,
        meta: ChangeMeta,
        row: Option<&[TupleValue<'_>]>,
        before: Option<&[TupleValue<'_>]>,
    ) -> Result<()> {
        let ncols = self.table.columns.len();
        for t in [row, before].into_iter().flatten() {
            if t.len() != ncols {
                return Err(CdcError::Protocol(format!(
                    "{} has {ncols} columns but a row with {} arrived (relation changed without a Relation message)",
                    self.table.qualified_name(),
                    t.len()
                )));
            }
        }
        match row {
            Some(values) => {
                for (i, v) in values.iter().enumerate() {
                    self.append_value(i, *v, false)?;
                    if *v == TupleValue::UnchangedToast {
                        self.toast
                            .values()
                            .append_value(&self.table.columns[i].name);
                    }
                }
            }
            None => self.row.iter_mut().for_each(ColumnBuilder::append_null),
        }
        self.toast.append(true);
        match before {
            Some(values) => {
                for (i, v) in values.iter().enumerate() {
                    self.append_value(i, *v, true)?;
                }
                self.before_valid.push(true);
            }
            None => {
                self.before.iter_mut().for_each(ColumnBuilder::append_null);
                self.before_valid.push(false);
            }
        }
        self.op.append_value(meta.op.code());
        self.lsn.append_value(meta.position.commit_lsn.0);
        self.time.append_value(meta.commit_micros);
        self.xid.append_value(meta.xid);
        self.seq.append_value(meta.position.seq);
        self.rows += 1;
        self.bytes += 48;
        if self.first.is_none() {
            self.first = Some(meta.position);
        }
        self.last = meta.position;
        self.first_commit_micros = self.first_commit_micros.min(meta.commit_micros);
        Ok(())
    }

    fn append_value(&mut self, i: usize, v: TupleValue<'_>, before: bool) -> Result<()> {
        if let TupleValue::Binary(b) | TupleValue::Text(b) = v {
            self.bytes += b.len();
        }
        let col = if before {
            &mut self.before[i]
        } else {
            &mut self.row[i]
        };
        col.append(v).map_err(|message| CdcError::Value {
            table: self.table.qualified_name(),
            column: self.table.columns[i].name.clone(),
            type_oid: self.table.columns[i].type_oid,
            message,
        })
    }

    /// Closes the batch with sequence number `seq`; `None` when it is empty.
    pub fn finish(&mut self, seq: BatchSeq) -> Result<Option<ChangeBatch>> {
        let Some(first) = self.first.take() else {
            return Ok(None);
        };
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.op.finish()),
            Arc::new(self.lsn.finish()),
            Arc::new(self.time.finish()),
            Arc::new(self.xid.finish()),
            Arc::new(self.seq.finish()),
        ];
        columns.extend(self.row.iter_mut().map(ColumnBuilder::finish));
        let before_children: Vec<ArrayRef> =
            self.before.iter_mut().map(ColumnBuilder::finish).collect();
        let DataType::Struct(before_fields) =
            self.table.arrow.field(columns.len()).data_type().clone()
        else {
            unreachable!("the before-image column is a struct")
        };
        let nulls = NullBuffer::from(std::mem::take(&mut self.before_valid));
        columns.push(Arc::new(StructArray::try_new(
            before_fields,
            before_children,
            Some(nulls),
        )?));
        columns.push(Arc::new(self.toast.finish()));
        let records = RecordBatch::try_new(self.table.arrow.clone(), columns)?;
        let batch = ChangeBatch {
            seq,
            table: self.table.clone(),
            records,
            first,
            last: self.last,
            first_commit_micros: self.first_commit_micros,
        };
        self.rows = 0;
        self.bytes = 0;
        self.first_commit_micros = i64::MAX;
        Ok(Some(batch))
    }
}
