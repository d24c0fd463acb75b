//! A sink fed by a post-consume transform.
//!
//! Batches are held until the sink flushes, then the transform runs once
//! over all the batches of each table. A steady trickle of small
//! transactions therefore costs one transform run per table and flush, not
//! one per transaction: planning and joining against the catalog state are
//! paid a few times a second, whatever the commit rate.
//!
//! Changes the transform fails on are skipped for this sink only, and
//! recorded in the dead-letter store (source `transform`) with the error
//! and the rows, so what the sink missed is never only a log line.

use std::sync::Arc;

use lily_cdc::json::{RowEncoder, cell_text};
use lily_cdc::{ChangeBatch, Lsn};
use lily_sinks::dead_letter::{DeadLetters, NewDeadLetter};
use lily_sinks::{Sink, SinkError};
use tracing::{Instrument, error, info_span};

use crate::error::Result;
use crate::output::OutputContract;
use crate::runner::TransformRunner;
use crate::set::TransformSet;
use crate::state::CatalogState;

/// Runs a transform on the batches of a sink before handing it the result.
pub struct TransformedSink {
    inner: Box<dyn Sink>,
    runner: TransformRunner,
    /// Batches not yet transformed, in stream order.
    pending: Vec<Arc<ChangeBatch>>,
    pending_rows: usize,
    dead_letters: Option<DeadLetters>,
}

/// `source` of the dead letters of changes a transform failed on.
pub const DEAD_LETTER_SOURCE: &str = "transform";

impl TransformedSink {
    /// Feeds `inner` through the transform `name`; an error if the sink
    /// takes no transform or the output lacks what it needs.
    pub async fn new(
        inner: Box<dyn Sink>,
        set: &TransformSet,
        name: &str,
        state: Arc<CatalogState>,
    ) -> Result<Self> {
        let Some(required) = inner.transform_input() else {
            let message = format!(
                "sink {} takes the changes as they are; no transform can feed it",
                inner.name()
            );
            return Err(match set.get(name) {
                Some(source) => source.error(message),
                None => crate::error::TransformError::Unknown(name.to_owned()),
            });
        };
        let contract = if required.is_empty() {
            OutputContract::Any
        } else {
            OutputContract::Columns(required)
        };
        let runner = TransformRunner::new(set, name, state, Vec::new(), contract).await?;
        Ok(Self {
            inner,
            runner,
            pending: Vec::new(),
            pending_rows: 0,
            dead_letters: None,
        })
    }

    /// Records the changes the transform fails on in `store`.
    pub fn with_dead_letters(mut self, store: DeadLetters) -> Self {
        self.dead_letters = Some(store);
        self
    }

    /// Records that the transform failed on `batches` (of one table): the
    /// error, where in the stream, and the rows as JSON lines.
    async fn dead_letter(
        &self,
        batches: &[Arc<ChangeBatch>],
        error: &str,
    ) -> std::result::Result<(), SinkError> {
        let Some(store) = &self.dead_letters else {
            return Ok(());
        };
        let (Some(first), Some(last)) = (batches.first(), batches.last()) else {
            return Ok(());
        };
        let mut payload = String::new();
        let mut tenants: Vec<String> = Vec::new();
        for batch in batches {
            let encoder = RowEncoder::all_columns(&batch.records);
            for row in 0..batch.num_rows() {
                encoder.encode(row, &mut payload);
                payload.push('\n');
                if let Some(t) = cell_text(&batch.records, "tenant_id", row)
                    && !tenants.contains(&t)
                {
                    tenants.push(t);
                }
            }
        }
        let table = first.table.qualified_name();
        let reference = format!(
            "{} via {}: {table} {}..{}",
            self.inner.name(),
            self.runner.name(),
            first.first.commit_lsn,
            last.last.commit_lsn
        );
        let letter = NewDeadLetter {
            source: DEAD_LETTER_SOURCE,
            tenant_id: (tenants.len() == 1).then(|| tenants[0].as_str()),
            reference: &reference,
            error_code: "transform_run",
            error,
            payload: Some(payload.as_bytes()),
            details: serde_json::json!({
                "sink": self.inner.name(),
                "transform": self.runner.name(),
                "table": table,
                "first_commit_lsn": first.first.commit_lsn.to_string(),
                "last_commit_lsn": last.last.commit_lsn.to_string(),
                "rows": batches.iter().map(|b| b.num_rows()).sum::<usize>(),
            }),
        };
        store
            .record(&letter)
            .await
            .map(|_| ())
            .map_err(|e| SinkError::Unavailable {
                sink: self.inner.name().to_owned(),
                message: format!(
                    "recording the changes transform {} failed on: {e}",
                    self.runner.name()
                ),
            })
    }

    /// Transforms the pending batches, all those of one table at a time (in
    /// the order the tables first appear), and hands each result to the
    /// inner sink. Within a table the stream's order is kept; across tables
    /// it need not be, since each output is built against the catalog state
    /// of the moment. A table's batches leave the pending ones only once
    /// the inner sink took their output, so a failed write is retried from
    /// there.
    async fn transform_pending(&mut self) -> std::result::Result<(), SinkError> {
        self.runner.refresh().await;
        while let Some(first) = self.pending.first().cloned() {
            let same_table = |b: &Arc<ChangeBatch>| {
                b.table.relation_id == first.table.relation_id && b.table.arrow == first.table.arrow
            };
            let batches: Vec<Arc<ChangeBatch>> = self
                .pending
                .iter()
                .filter(|b| same_table(b))
                .cloned()
                .collect();
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            let last = batches.last().unwrap_or(&first).clone();
            let span = info_span!("transform", transform = %self.runner.name(), rows, batches = batches.len());
            let records = batches.iter().map(|b| b.records.clone()).collect();
            match self
                .runner
                .run_table(&first.table, records)
                .instrument(span)
                .await
            {
                Ok(out) => {
                    let merged = ChangeBatch {
                        seq: batches.iter().map(|b| b.seq).max().unwrap_or(last.seq),
                        table: first.table.clone(),
                        records: out,
                        first: first.first,
                        last: last.last,
                        first_commit_micros: batches
                            .iter()
                            .map(|b| b.first_commit_micros)
                            .min()
                            .unwrap_or(first.first_commit_micros),
                    };
                    self.inner.write(Arc::new(merged)).await?;
                }
                Err(e) => {
                    // Batches the transform cannot process are reported and
                    // skipped; the batches around them still flow.
                    metrics::counter!("lily_transform_errors_total", "transform" => self.runner.name().to_owned(), "stage" => "run")
                        .increment(1);
                    metrics::counter!("lily_errors_total", "stage" => "transform", "kind" => "run")
                        .increment(1);
                    error!(error = %e, sink = self.inner.name(), first = ?first.first, last = ?last.last, "transform failed; batches skipped for this sink and dead-lettered");
                    // Until they are recorded, the batches stay pending.
                    self.dead_letter(&batches, &e.to_string()).await?;
                }
            }
            self.pending.retain(|b| !same_table(b));
            self.pending_rows -= rows;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Sink for TransformedSink {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn write(&mut self, batch: Arc<ChangeBatch>) -> Result<(), SinkError> {
        self.pending_rows += batch.num_rows();
        self.pending.push(batch);
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        self.transform_pending().await?;
        self.inner.flush().await
    }

    fn buffered_rows(&self) -> usize {
        self.pending_rows + self.inner.buffered_rows()
    }

    async fn discard_snapshot(&mut self, snapshot_lsn: Lsn) -> Result<(), SinkError> {
        self.inner.discard_snapshot(snapshot_lsn).await
    }

    fn transform_input(&self) -> Option<Vec<arrow::datatypes::Field>> {
        None
    }

    async fn healthcheck(&mut self) -> Result<(), SinkError> {
        self.inner.healthcheck().await
    }
}
