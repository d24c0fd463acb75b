//! A table of a PostgreSQL database as a DataFusion table: columns,
//! filters and limits are pushed into the query, rows arrive through
//! binary `COPY` and are decoded by the CDC core's column builders (the
//! same decoder as the snapshot's).

use std::fmt;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use bytes::BytesMut;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DataFusionError, Result as DfResult, ScalarValue};
use datafusion::datasource::TableType;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use futures::{StreamExt, TryStreamExt};
use lily_cdc::ColumnBuilder;
use lily_cdc::catalog::quote_ident;
use lily_cdc::copy::{self, CopyRow};
use lily_cdc::types::ValueKind;
use lily_cdc::wire::PgConnect;

use crate::error::{EnforcementError, Result};

/// Rows per Arrow batch read from the source.
const BATCH_ROWS: usize = 8192;

/// One column: how it is selected, decoded and typed.
#[derive(Debug, Clone)]
struct PgColumn {
    /// `"name"` or `"name"::text` for types read as text.
    select: String,
    kind: ValueKind,
    /// The Arrow type the decoded column is cast to (numeric → decimal).
    cast_to: Option<DataType>,
}

/// A PostgreSQL table served as a governed table.
pub struct PostgresTable {
    connect: Arc<PgConnect>,
    /// `"schema"."table"`.
    table: String,
    columns: Vec<PgColumn>,
    schema: SchemaRef,
}

impl fmt::Debug for PostgresTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresTable")
            .field("table", &self.table)
            .finish()
    }
}

/// numeric(p, s) from the attribute's type modifier.
fn numeric_type(typmod: i32) -> DataType {
    if typmod < 4 {
        return DataType::Float64;
    }
    let m = typmod - 4;
    let precision = ((m >> 16) & 0xffff) as u8;
    let scale = (m & 0xffff) as i8;
    if (1..=38).contains(&precision) {
        DataType::Decimal128(precision, scale)
    } else {
        DataType::Float64
    }
}

impl PostgresTable {
    /// Reads the columns of `table` (`schema.table`) through `connect`.
    pub async fn open(connect: Arc<PgConnect>, table: &str) -> Result<Self> {
        let err = |message: String| EnforcementError::Table {
            table: table.to_owned(),
            message,
        };
        let (schema_name, table_name) = table.split_once('.').unwrap_or(("public", table));
        let quoted = format!("{}.{}", quote_ident(schema_name), quote_ident(table_name));
        let client = connect
            .connect()
            .await
            .map_err(|e| err(format!("connecting: {e}")))?;
        let rows = client
            .query(
                "SELECT a.attname, a.atttypid::int8, a.atttypmod, a.attnotnull
                   FROM pg_attribute a
                  WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped
                  ORDER BY a.attnum",
                &[&quoted],
            )
            .await
            .map_err(|e| err(format!("reading its columns: {e}")))?;
        if rows.is_empty() {
            return Err(err("it has no columns".into()));
        }
        let mut columns = Vec::with_capacity(rows.len());
        let mut fields = Vec::with_capacity(rows.len());
        for r in rows {
            let name: String = r.get(0);
            let oid = r.get::<_, i64>(1) as u32;
            let typmod: i32 = r.get(2);
            let not_null: bool = r.get(3);
            let ident = quote_ident(&name);
            let kind = ValueKind::for_type(oid);
            let (column, data_type) = match kind {
                ValueKind::Bool
                | ValueKind::Int16
                | ValueKind::Int32
                | ValueKind::Int64
                | ValueKind::Float32
                | ValueKind::Float64
                | ValueKind::Text
                | ValueKind::Date
                | ValueKind::Timestamp
                | ValueKind::TimestampTz
                | ValueKind::Bytea => {
                    let t = kind.data_type();
                    (
                        PgColumn {
                            select: ident,
                            kind,
                            cast_to: None,
                        },
                        t,
                    )
                }
                ValueKind::Numeric => {
                    let t = numeric_type(typmod);
                    (
                        PgColumn {
                            select: format!("{ident}::text"),
                            kind: ValueKind::Text,
                            cast_to: Some(t.clone()),
                        },
                        t,
                    )
                }
                // uuid, json, arrays and the rest are served as their text.
                _ => (
                    PgColumn {
                        select: format!("{ident}::text"),
                        kind: ValueKind::Text,
                        cast_to: None,
                    },
                    DataType::Utf8,
                ),
            };
            columns.push(column);
            fields.push(Field::new(name, data_type, !not_null));
        }
        Ok(Self {
            connect,
            table: quoted,
            columns,
            schema: Arc::new(Schema::new(fields)),
        })
    }
}

/// A literal as PostgreSQL reads it, for the types whose comparison means
/// the same in PostgreSQL and DataFusion.
fn sql_literal(v: &ScalarValue) -> Option<String> {
    Some(match v {
        ScalarValue::Boolean(Some(b)) => b.to_string(),
        ScalarValue::Int8(Some(n)) => n.to_string(),
        ScalarValue::Int16(Some(n)) => n.to_string(),
        ScalarValue::Int32(Some(n)) => n.to_string(),
        ScalarValue::Int64(Some(n)) => n.to_string(),
        ScalarValue::UInt8(Some(n)) => n.to_string(),
        ScalarValue::UInt16(Some(n)) => n.to_string(),
        ScalarValue::UInt32(Some(n)) => n.to_string(),
        ScalarValue::UInt64(Some(n)) => n.to_string(),
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => {
            if s.contains('\0') {
                return None;
            }
            format!("'{}'", s.replace('\'', "''"))
        }
        _ => return None,
    })
}

/// `filter` as a PostgreSQL condition on the source's columns, when it
/// can be said exactly: comparisons of a column with a literal (text:
/// equality only, as orderings depend on collation), `IS [NOT] NULL`,
/// `IN` lists, and `AND`/`OR`/`NOT` of those.
fn to_sql(filter: &Expr, schema: &Schema) -> Option<String> {
    let column = |e: &Expr| -> Option<(String, DataType)> {
        let Expr::Column(c) = e else { return None };
        let field = schema.field_with_name(&c.name).ok()?;
        Some((quote_ident(&c.name), field.data_type().clone()))
    };
    match filter {
        Expr::BinaryExpr(b) => match b.op {
            Operator::And | Operator::Or => {
                let l = to_sql(&b.left, schema)?;
                let r = to_sql(&b.right, schema)?;
                let op = if b.op == Operator::And { "AND" } else { "OR" };
                Some(format!("({l} {op} {r})"))
            }
            Operator::Eq
            | Operator::NotEq
            | Operator::Lt
            | Operator::LtEq
            | Operator::Gt
            | Operator::GtEq => {
                let (col, lit, op) = match (&*b.left, &*b.right) {
                    (c @ Expr::Column(_), Expr::Literal(v, _)) => (c, v, b.op),
                    (Expr::Literal(v, _), c @ Expr::Column(_)) => (c, v, b.op.swap()?),
                    _ => return None,
                };
                let (name, data_type) = column(col)?;
                let text = matches!(data_type, DataType::Utf8);
                if text && !matches!(op, Operator::Eq | Operator::NotEq) {
                    return None;
                }
                if !(text || data_type.is_integer()) {
                    return None;
                }
                Some(format!("{name} {op} {}", sql_literal(lit)?))
            }
            _ => None,
        },
        Expr::IsNull(e) => Some(format!("{} IS NULL", column(e)?.0)),
        Expr::IsNotNull(e) => Some(format!("{} IS NOT NULL", column(e)?.0)),
        Expr::Not(e) => Some(format!("NOT ({})", to_sql(e, schema)?)),
        Expr::InList(l) => {
            let (name, data_type) = column(&l.expr)?;
            if !(matches!(data_type, DataType::Utf8) || data_type.is_integer()) {
                return None;
            }
            let items = l
                .list
                .iter()
                .map(|e| match e {
                    Expr::Literal(v, _) => sql_literal(v),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?;
            let not = if l.negated { "NOT " } else { "" };
            Some(format!("{name} {not}IN ({})", items.join(", ")))
        }
        _ => None,
    }
}

#[async_trait]
impl TableProvider for PostgresTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| match to_sql(f, &self.schema) {
                Some(_) => TableProviderFilterPushDown::Exact,
                None => TableProviderFilterPushDown::Unsupported,
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let indices: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.columns.len()).collect(),
        };
        let schema = Arc::new(self.schema.project(&indices)?);
        let select = indices
            .iter()
            .map(|&i| self.columns[i].select.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let mut sql = format!("SELECT {select} FROM {}", self.table);
        let conditions: Vec<String> = filters
            .iter()
            .filter_map(|f| to_sql(f, &self.schema))
            .collect();
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        // A limit is only pushed when every filter went with it.
        if let Some(n) = limit
            && conditions.len() == filters.len()
        {
            sql.push_str(&format!(" LIMIT {n}"));
        }
        let columns = indices.iter().map(|&i| self.columns[i].clone()).collect();
        let partition = Arc::new(CopyPartition {
            connect: self.connect.clone(),
            query: format!("COPY ({sql}) TO STDOUT (FORMAT binary)"),
            columns,
            schema: schema.clone(),
        });
        Ok(Arc::new(StreamingTableExec::try_new(
            schema,
            vec![partition],
            None,
            [],
            false,
            None,
        )?))
    }
}

/// One scan: a `COPY` of the pushed-down query.
struct CopyPartition {
    connect: Arc<PgConnect>,
    query: String,
    columns: Vec<PgColumn>,
    schema: SchemaRef,
}

impl fmt::Debug for CopyPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CopyPartition")
            .field("query", &self.query)
            .finish()
    }
}

/// Decodes COPY rows into Arrow batches.
struct Decoder {
    columns: Vec<PgColumn>,
    builders: Vec<ColumnBuilder>,
    schema: SchemaRef,
    rows: usize,
}

impl Decoder {
    fn new(columns: Vec<PgColumn>, schema: SchemaRef) -> Self {
        let builders = columns
            .iter()
            .map(|c| ColumnBuilder::new(&c.kind))
            .collect();
        Self {
            columns,
            builders,
            schema,
            rows: 0,
        }
    }

    fn finish(&mut self) -> DfResult<RecordBatch> {
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.builders.len());
        for ((b, c), f) in self
            .builders
            .iter_mut()
            .zip(&self.columns)
            .zip(self.schema.fields())
        {
            let a = b.finish();
            arrays.push(match &c.cast_to {
                Some(_) => arrow::compute::cast(&a, f.data_type())?,
                None => a,
            });
        }
        let options = RecordBatchOptions::new().with_row_count(Some(self.rows));
        self.rows = 0;
        Ok(RecordBatch::try_new_with_options(
            self.schema.clone(),
            arrays,
            &options,
        )?)
    }
}

fn source_error(e: impl fmt::Display) -> DataFusionError {
    DataFusionError::External(format!("reading the governed table's source: {e}").into())
}

impl PartitionStream for CopyPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let connect = self.connect.clone();
        let query = self.query.clone();
        let mut decoder = Decoder::new(self.columns.clone(), self.schema.clone());
        let (tx, rx) = futures::channel::mpsc::channel::<DfResult<RecordBatch>>(2);
        tokio::spawn(async move {
            let mut tx = tx;
            let result: DfResult<()> = async {
                let client = connect.connect().await.map_err(source_error)?;
                let stream = client.copy_out(&query).await.map_err(source_error)?;
                futures::pin_mut!(stream);
                let mut buf = BytesMut::new();
                let mut header_done = false;
                while let Some(chunk) = stream.next().await {
                    let mut values = Vec::new();
                    buf.extend_from_slice(&chunk.map_err(source_error)?);
                    let mut pos = 0;
                    if !header_done {
                        match copy::header_len(&buf).map_err(source_error)? {
                            Some(n) => {
                                pos = n;
                                header_done = true;
                            }
                            None => continue,
                        }
                    }
                    while let CopyRow::Row(n) =
                        copy::read_row(&buf[pos..], &mut values).map_err(source_error)?
                    {
                        for (b, v) in decoder.builders.iter_mut().zip(values.drain(..)) {
                            b.append(v).map_err(source_error)?;
                        }
                        decoder.rows += 1;
                        pos += n;
                        if decoder.rows >= BATCH_ROWS {
                            let batch = decoder.finish()?;
                            if futures::SinkExt::send(&mut tx, Ok(batch)).await.is_err() {
                                // The reader went away (a LIMIT was met).
                                return Ok(());
                            }
                        }
                    }
                    drop(values);
                    let _ = buf.split_to(pos);
                }
                if decoder.rows > 0 {
                    let batch = decoder.finish()?;
                    let _ = futures::SinkExt::send(&mut tx, Ok(batch)).await;
                }
                Ok(())
            }
            .await;
            if let Err(e) = result {
                let _ = futures::SinkExt::send(&mut tx, Err(e)).await;
            }
        });
        Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            rx.map_err(|e| e),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{col, lit};

    fn schema() -> Schema {
        Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("email", DataType::Utf8, true),
            Field::new("amount", DataType::Decimal128(12, 2), true),
        ])
    }

    #[test]
    fn filters_that_mean_the_same_in_postgres_are_pushed() {
        let s = schema();
        assert_eq!(
            to_sql(
                &col("id").gt_eq(lit(10i64)).and(col("email").eq(lit("a'b"))),
                &s
            )
            .as_deref(),
            Some("(\"id\" >= 10 AND \"email\" = 'a''b')")
        );
        assert_eq!(
            to_sql(&lit(3i64).lt(col("id")), &s).as_deref(),
            Some("\"id\" > 3")
        );
        assert_eq!(
            to_sql(&col("email").is_null(), &s).as_deref(),
            Some("\"email\" IS NULL")
        );
        // Text orderings depend on the collation; decimals on their scale.
        assert_eq!(to_sql(&col("email").lt(lit("m")), &s), None);
        assert_eq!(to_sql(&col("amount").gt(lit(1i64)), &s), None);
        assert_eq!(to_sql(&col("id").eq(col("id")), &s), None);
    }

    #[test]
    fn numeric_type_modifiers_become_decimals() {
        // numeric(12, 2): ((12 << 16) | 2) + 4
        assert_eq!(
            numeric_type((12 << 16 | 2) + 4),
            DataType::Decimal128(12, 2)
        );
        assert_eq!(numeric_type(-1), DataType::Float64);
    }
}
