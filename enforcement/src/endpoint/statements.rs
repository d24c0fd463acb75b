//! What a SQL session may run: queries that only read, PostgreSQL session
//! settings, transactions, and `COPY (query) TO STDOUT` (what psql's
//! `\copy ... TO` sends). Everything else is refused with SQLSTATE 25006:
//! DDL and DML (also inside a `WITH`, or as `SELECT ... INTO`), DataFusion's
//! `COPY ... TO 'file'` and its settings (`SET datafusion.*`: spill
//! directories, memory limits), which would reach the server's files or
//! resources; `EXPLAIN`, whose plans show source paths and statistics that
//! masks do not cover; and cursors, whose fetches would bypass the audit.

use bytes::{Buf, Bytes};
use datafusion::sql::sqlparser::ast::{
    CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, CopyTarget, Query, SetExpr,
    Statement,
};
use futures::StreamExt;
use pgwire::api::results::{CopyResponse, QueryResponse};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::copy::CopyData;
use pgwire::messages::data::DataRow;

/// What a statement is, for the endpoint.
pub enum Kind {
    /// Run as it is.
    Allowed,
    /// `COPY (query) TO STDOUT`: the query, and how to write its rows.
    CopyOut(String, CopyFormat),
    /// Refused, with why.
    Refused(String),
}

/// The text forms of `COPY ... TO STDOUT`.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyFormat {
    csv: bool,
    header: bool,
    delimiter: char,
    null: String,
    quote: char,
}

impl Default for CopyFormat {
    fn default() -> Self {
        Self {
            csv: false,
            header: false,
            delimiter: '\t',
            null: "\\N".into(),
            quote: '"',
        }
    }
}

/// An `ERROR` with SQLSTATE `code`.
pub fn error(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_owned(),
        code.to_owned(),
        message,
    )))
}

/// Whether `query` only reads: no `SELECT ... INTO`, no data-modifying
/// statement in its body or its CTEs.
fn only_reads(query: &Query) -> bool {
    body_only_reads(&query.body)
        && query
            .with
            .as_ref()
            .is_none_or(|w| w.cte_tables.iter().all(|c| only_reads(&c.query)))
}

fn body_only_reads(body: &SetExpr) -> bool {
    match body {
        SetExpr::Select(s) => s.into.is_none(),
        SetExpr::Query(q) => only_reads(q),
        SetExpr::SetOperation { left, right, .. } => {
            body_only_reads(left) && body_only_reads(right)
        }
        SetExpr::Values(_) | SetExpr::Table(_) => true,
        _ => false,
    }
}

/// Classifies one parsed statement.
pub fn classify(statement: &Statement) -> Kind {
    match statement {
        Statement::Query(q) if only_reads(q) => Kind::Allowed,
        // DataFusion's own settings (spill directories, memory limits, the
        // SQL dialect) are the server's, not a session's.
        Statement::Set(_) if statement.to_string().to_ascii_lowercase().contains("datafusion.") => {
            Kind::Refused("DataFusion settings are the server's; only PostgreSQL session settings may be SET".into())
        }
        Statement::Set(_)
        | Statement::ShowVariable { .. }
        | Statement::ShowVariables { .. }
        | Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Deallocate { .. }
        | Statement::Discard { .. } => Kind::Allowed,
        // Plans show what masks do not cover: source file paths (with the
        // values of partition columns) and raw statistics.
        Statement::Explain { .. } => Kind::Refused(
            "EXPLAIN is not served: plans show details of the sources that masks do not cover".into(),
        ),
        Statement::Declare { .. } | Statement::Fetch { .. } | Statement::Close { .. } => {
            Kind::Refused(
                "cursors are not served; use the extended protocol's row limit (a driver's fetch size) instead"
                    .into(),
            )
        }
        Statement::Copy {
            source: CopySource::Query(query),
            to: true,
            target: CopyTarget::Stdout,
            options,
            legacy_options,
            ..
        } => match copy_format(options, legacy_options) {
            Ok(f) => Kind::CopyOut(query.to_string(), f),
            Err(why) => Kind::Refused(why),
        },
        Statement::Copy { .. } => Kind::Refused(
            "COPY reads or writes only the client's side here: use COPY (query) TO STDOUT (psql's \\copy ... TO)".into(),
        ),
        other => {
            let text = other.to_string();
            let verb: String = text
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ");
            Kind::Refused(format!("{verb} is not allowed: the SQL endpoint is read-only"))
        }
    }
}

fn copy_format(options: &[CopyOption], legacy: &[CopyLegacyOption]) -> Result<CopyFormat, String> {
    let mut f = CopyFormat::default();
    let csv = |f: &mut CopyFormat| {
        f.csv = true;
        f.delimiter = ',';
        f.null = String::new();
    };
    for o in options {
        match o {
            CopyOption::Format(name) => match name.value.to_ascii_lowercase().as_str() {
                "csv" => csv(&mut f),
                "text" => {}
                other => {
                    return Err(format!(
                        "COPY format {other} is not supported (text or csv)"
                    ));
                }
            },
            CopyOption::Header(h) => f.header = *h,
            CopyOption::Delimiter(d) => f.delimiter = *d,
            CopyOption::Null(n) => f.null = n.clone(),
            CopyOption::Quote(q) => f.quote = *q,
            other => return Err(format!("COPY option {other} is not supported")),
        }
    }
    for o in legacy {
        match o {
            CopyLegacyOption::Csv(csv_options) => {
                csv(&mut f);
                for c in csv_options {
                    match c {
                        CopyLegacyCsvOption::Header => f.header = true,
                        CopyLegacyCsvOption::Quote(q) => f.quote = *q,
                        other => return Err(format!("COPY option {other} is not supported")),
                    }
                }
            }
            CopyLegacyOption::Delimiter(d) => f.delimiter = *d,
            CopyLegacyOption::Null(n) => f.null = n.clone(),
            other => return Err(format!("COPY option {other} is not supported")),
        }
    }
    Ok(f)
}

/// The text fields of a data row (text format); `None` for NULL.
fn fields(row: &DataRow) -> PgWireResult<Vec<Option<String>>> {
    let mut buf = Bytes::copy_from_slice(&row.data);
    let mut out = Vec::with_capacity(row.field_count.max(0) as usize);
    for _ in 0..row.field_count {
        if buf.remaining() < 4 {
            return Err(error("XX000", "a result row ended early".into()));
        }
        let len = buf.get_i32();
        if len < 0 {
            out.push(None);
            continue;
        }
        let len = len as usize;
        if buf.remaining() < len {
            return Err(error("XX000", "a result row ended early".into()));
        }
        out.push(Some(
            String::from_utf8_lossy(&buf.split_to(len)).into_owned(),
        ));
    }
    Ok(out)
}

impl CopyFormat {
    fn line(&self, values: &[Option<String>]) -> String {
        let mut line = String::new();
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                line.push(self.delimiter);
            }
            match v {
                None => line.push_str(&self.null),
                Some(v) if self.csv => {
                    let needs = v.is_empty()
                        || v.contains(self.delimiter)
                        || v.contains(self.quote)
                        || v.contains(['\n', '\r']);
                    if needs {
                        let q = self.quote.to_string();
                        line.push(self.quote);
                        line.push_str(&v.replace(&q, &format!("{q}{q}")));
                        line.push(self.quote);
                    } else {
                        line.push_str(v);
                    }
                }
                Some(v) => {
                    for c in v.chars() {
                        match c {
                            '\\' => line.push_str("\\\\"),
                            '\n' => line.push_str("\\n"),
                            '\r' => line.push_str("\\r"),
                            '\t' => line.push_str("\\t"),
                            c if c == self.delimiter => {
                                line.push('\\');
                                line.push(c);
                            }
                            c => line.push(c),
                        }
                    }
                }
            }
        }
        line.push('\n');
        line
    }

    /// The rows of `query` as a `COPY ... TO STDOUT` response.
    pub fn copy_out(self, query: QueryResponse) -> CopyResponse {
        let columns = query.row_schema.len();
        let header = self.header.then(|| {
            let names: Vec<Option<String>> = query
                .row_schema
                .iter()
                .map(|f| Some(f.name().to_owned()))
                .collect();
            Ok(CopyData::new(Bytes::from(self.line(&names))))
        });
        let rows = query.data_rows.map(move |row| {
            let row = row?;
            Ok(CopyData::new(Bytes::from(self.line(&fields(&row)?))))
        });
        let stream = futures::stream::iter(header).chain(rows);
        CopyResponse::new(0, columns, stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;

    fn kind(sql: &str) -> Kind {
        let statements = PostgresCompatibilityParser::new().parse(sql).unwrap();
        classify(&statements[0])
    }

    #[test]
    fn only_reads_are_allowed() {
        for sql in [
            "SELECT 1",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "SET datestyle = 'ISO'",
            "SHOW search_path",
            "SET extra_float_digits = 3",
            "SET application_name = 'PostgreSQL JDBC Driver'",
            "BEGIN",
            "COMMIT",
        ] {
            assert!(matches!(kind(sql), Kind::Allowed), "{sql}");
        }
        // DataFusion's own CREATE EXTERNAL TABLE does not even parse here.
        assert!(
            PostgresCompatibilityParser::new()
                .parse("CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'")
                .is_err()
        );
        for sql in [
            "COPY (SELECT 1) TO '/tmp/x.csv'",
            "INSERT INTO t VALUES (1)",
            "DROP TABLE customers",
            "CREATE TABLE t AS SELECT 1",
            "EXPLAIN ANALYZE INSERT INTO t VALUES (1)",
            "EXPLAIN VERBOSE SELECT email FROM customers",
            "WITH c AS (SELECT 1) INSERT INTO t SELECT * FROM c",
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
            "SELECT * INTO copy_of FROM customers",
            "SET datafusion.runtime.temp_directory = '/etc'",
            "SET datafusion.execution.target_partitions = 1",
            "DECLARE c CURSOR FOR SELECT 1",
        ] {
            match kind(sql) {
                Kind::Refused(why) => assert!(!why.is_empty()),
                _ => panic!("{sql} allowed"),
            }
        }
    }

    #[test]
    fn copy_to_stdout_in_text_and_csv() {
        let Kind::CopyOut(query, f) =
            kind("COPY (SELECT id, email FROM customers) TO STDOUT WITH (FORMAT csv, HEADER true)")
        else {
            panic!("not a copy out");
        };
        assert_eq!(query, "SELECT id, email FROM customers");
        assert_eq!(
            f.line(&[Some("1".into()), Some("a,b".into()), None]),
            "1,\"a,b\",\n"
        );
        assert!(f.header);
        let Kind::CopyOut(_, f) = kind("COPY (SELECT 1) TO STDOUT") else {
            panic!("not a copy out");
        };
        assert_eq!(f.line(&[Some("a\tb\\".into()), None]), "a\\tb\\\\\t\\N\n");
    }
}
