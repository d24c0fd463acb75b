//! The dead-letter store, `lily.dead_letters`: what could not be delivered
//! (or, inbound, written), with why, kept so it can be listed and replayed
//! (`lily dlq list`, `lily dlq replay`).
//!
//! `source` says which component gave up (the kind of a sink, `transform`,
//! `kafka_source`; the sink registry owns the names and dispatches replays
//! by them), `reference` what exactly (a target and dedupe key, an index
//! and document, a topic and key), `details` what a replay needs to send it
//! again, `payload` the bytes themselves.
//!
//! Changes a sink refuses as a whole go through one helper,
//! [`DeadLetters::bury_changes`]: the rows as JSON lines, one dead letter
//! per tenant, with `details.kind = "changes"`.

use std::sync::Arc;

use deadpool_postgres::Pool;
use serde_json::Value;

use crate::batch::ChangeBatch;
use crate::json::{RowEncoder, cell_text};

/// `details.kind` of dead letters holding change rows ([`DeadLetters::bury_changes`]).
pub const CHANGES: &str = "changes";

/// Where refused changes were headed, for [`DeadLetters::bury_changes`].
#[derive(Debug, Clone, Copy)]
pub struct ChangesRefused<'a> {
    /// The component that gave up (a sink kind, `transform`).
    pub source: &'a str,
    /// The sink's name.
    pub sink: &'a str,
    /// The transform in between, if any.
    pub transform: Option<&'a str>,
    /// A stable error code.
    pub error_code: &'a str,
    /// The error in words.
    pub error: &'a str,
}

/// A dead letter to record.
#[derive(Debug, Clone)]
pub struct NewDeadLetter<'a> {
    /// Component that gave up.
    pub source: &'a str,
    /// Tenant, when known.
    pub tenant_id: Option<&'a str>,
    /// What it was: a target and dedupe key, an index and document id, ...
    pub reference: &'a str,
    /// A stable error code (`http_400`, `mapper_parsing_exception`, ...).
    pub error_code: &'a str,
    /// The error in words.
    pub error: &'a str,
    /// The undelivered bytes.
    pub payload: Option<&'a [u8]>,
    /// What a replay needs (topic, index, target, ...).
    pub details: Value,
}

/// A recorded dead letter.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Its id.
    pub id: i64,
    /// Component that gave up.
    pub source: String,
    /// Tenant, when known.
    pub tenant_id: Option<String>,
    /// What it was.
    pub reference: String,
    /// Error code.
    pub error_code: String,
    /// The error in words.
    pub error: String,
    /// The undelivered bytes.
    pub payload: Option<Vec<u8>>,
    /// What a replay needs.
    pub details: Value,
    /// When it was recorded.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// When it was last replayed, if it was.
    pub replayed_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Which dead letters to list or replay.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterFilter {
    /// Only these ids.
    pub ids: Vec<i64>,
    /// Only this source.
    pub source: Option<String>,
    /// Only this tenant.
    pub tenant_id: Option<String>,
    /// Also the ones replayed already.
    pub include_replayed: bool,
    /// At most this many (oldest first).
    pub limit: i64,
}

/// The dead-letter store.
#[derive(Clone)]
pub struct DeadLetters {
    pool: Pool,
}

/// The store could not be reached.
#[derive(Debug, thiserror::Error)]
#[error("dead-letter store: {0}")]
pub struct DeadLetterError(String);

fn db(e: impl std::fmt::Display) -> DeadLetterError {
    DeadLetterError(e.to_string())
}

impl DeadLetters {
    /// The store in the metastore behind `pool`.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// The store in the metastore at `url`, through a pool of at most
    /// `size` connections (opened when first needed).
    pub fn connect(url: &str, size: usize) -> Result<Self, DeadLetterError> {
        use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod};
        let pg = crate::wire::PgConnect::parse(url).map_err(db)?;
        let manager = Manager::from_config(
            pg.config,
            pg.tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(size.max(1))
            .build()
            .map_err(db)?;
        Ok(Self { pool })
    }

    /// The pool behind the store.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Records `letter`; returns its id.
    pub async fn record(&self, letter: &NewDeadLetter<'_>) -> Result<i64, DeadLetterError> {
        let ids = self.record_all(std::slice::from_ref(letter)).await?;
        Ok(ids[0])
    }

    /// Records `letters` in one transaction: all of them or none.
    pub async fn record_all(
        &self,
        letters: &[NewDeadLetter<'_>],
    ) -> Result<Vec<i64>, DeadLetterError> {
        let mut conn = self.pool.get().await.map_err(db)?;
        let tx = conn.transaction().await.map_err(db)?;
        let mut ids = Vec::with_capacity(letters.len());
        for letter in letters {
            let row = tx
                .query_one(
                    "INSERT INTO lily.dead_letters
                         (source, tenant_id, reference, error_code, error, payload, details)
                     VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING dead_letter_id",
                    &[
                        &letter.source,
                        &letter.tenant_id,
                        &letter.reference,
                        &letter.error_code,
                        &letter.error,
                        &letter.payload,
                        &letter.details,
                    ],
                )
                .await
                .map_err(db)?;
            ids.push(row.get(0));
        }
        tx.commit().await.map_err(db)?;
        for letter in letters {
            metrics::counter!("lily_dead_letters_total", "source" => letter.source.to_owned())
                .increment(1);
        }
        Ok(ids)
    }

    /// The dead letters `filter` selects, oldest first.
    pub async fn list(
        &self,
        filter: &DeadLetterFilter,
    ) -> Result<Vec<DeadLetter>, DeadLetterError> {
        let conn = self.pool.get().await.map_err(db)?;
        let limit = if filter.limit > 0 {
            filter.limit
        } else {
            i64::MAX
        };
        let rows = conn
            .query(
                "SELECT dead_letter_id, source, tenant_id, reference, error_code, error, payload,
                        details, created_at, replayed_at
                   FROM lily.dead_letters
                  WHERE (cardinality($1::bigint[]) = 0 OR dead_letter_id = ANY($1))
                    AND ($2::text IS NULL OR source = $2)
                    AND ($3::text IS NULL OR tenant_id = $3)
                    AND ($4 OR replayed_at IS NULL)
                  ORDER BY dead_letter_id
                  LIMIT $5",
                &[
                    &filter.ids,
                    &filter.source,
                    &filter.tenant_id,
                    &filter.include_replayed,
                    &limit,
                ],
            )
            .await
            .map_err(db)?;
        Ok(rows
            .iter()
            .map(|r| DeadLetter {
                id: r.get(0),
                source: r.get(1),
                tenant_id: r.get(2),
                reference: r.get(3),
                error_code: r.get(4),
                error: r.get(5),
                payload: r.get(6),
                details: r.get::<_, Option<Value>>(7).unwrap_or(Value::Null),
                created_at: r.get(8),
                replayed_at: r.get(9),
            })
            .collect())
    }

    /// Records changes that `refused` could not take: for each tenant, its
    /// rows of `batches` (one table) as JSON lines, with where in the stream
    /// they were. A batch without rows records nothing.
    pub async fn bury_changes(
        &self,
        refused: ChangesRefused<'_>,
        batches: &[Arc<ChangeBatch>],
    ) -> Result<usize, DeadLetterError> {
        let (Some(first), Some(last)) = (batches.first(), batches.last()) else {
            return Ok(0);
        };
        // Rows per tenant, in stream order; rows without one go together.
        let mut groups: Vec<(Option<String>, String, usize)> = Vec::new();
        for batch in batches {
            let encoder = RowEncoder::all_columns(&batch.records);
            for row in 0..batch.num_rows() {
                let tenant = cell_text(&batch.records, "tenant_id", row);
                let index = match groups.iter().position(|(t, _, _)| *t == tenant) {
                    Some(i) => i,
                    None => {
                        groups.push((tenant, String::new(), 0));
                        groups.len() - 1
                    }
                };
                let (_, lines, rows) = &mut groups[index];
                encoder.encode(row, lines);
                lines.push('\n');
                *rows += 1;
            }
        }
        let table = first.table.qualified_name();
        let via = refused
            .transform
            .map(|t| format!(" via {t}"))
            .unwrap_or_default();
        let reference = format!(
            "{}{via}: {table} {}..{}",
            refused.sink, first.first.commit_lsn, last.last.commit_lsn
        );
        let letters: Vec<NewDeadLetter<'_>> = groups
            .iter()
            .map(|(tenant, lines, rows)| NewDeadLetter {
                source: refused.source,
                tenant_id: tenant.as_deref(),
                reference: &reference,
                error_code: refused.error_code,
                error: refused.error,
                payload: Some(lines.as_bytes()),
                details: serde_json::json!({
                    "kind": CHANGES,
                    "sink": refused.sink,
                    "transform": refused.transform,
                    "table": table,
                    "first_commit_lsn": first.first.commit_lsn.to_string(),
                    "last_commit_lsn": last.last.commit_lsn.to_string(),
                    "rows": rows,
                }),
            })
            .collect();
        // One transaction: a retry after a failure records nothing twice.
        self.record_all(&letters).await?;
        Ok(groups.len())
    }

    /// Notes that dead letter `id` was sent again.
    pub async fn mark_replayed(&self, id: i64) -> Result<(), DeadLetterError> {
        let conn = self.pool.get().await.map_err(db)?;
        conn.execute(
            "UPDATE lily.dead_letters SET replayed_at = now() WHERE dead_letter_id = $1",
            &[&id],
        )
        .await
        .map_err(db)?;
        metrics::counter!("lily_dead_letters_replayed_total").increment(1);
        Ok(())
    }
}
