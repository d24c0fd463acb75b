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

use lily_cdc::sink::dead_letter::{ChangesRefused, DeadLetters};
use lily_cdc::sink::{Sink, SinkError};
use lily_cdc::{ChangeBatch, Lsn};
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
    /// The inner sink's kind: the source of dead letters of what it refuses.
    inner_kind: String,
    /// Batches whose output the inner sink took since its last flush: what
    /// a refused flush dead-letters.
    delivered: Vec<Arc<ChangeBatch>>,
    /// Those of a refused flush not recorded yet, by table, and why.
    refused: Vec<Vec<Arc<ChangeBatch>>>,
    refused_error: String,
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
            inner_kind: String::new(),
            delivered: Vec::new(),
            refused: Vec::new(),
            refused_error: String::new(),
        })
    }

    /// Records the changes the transform fails on in `store`, and those
    /// the inner sink (of kind `inner_kind`) refuses.
    pub fn with_dead_letters(mut self, store: DeadLetters, inner_kind: &str) -> Self {
        self.dead_letters = Some(store);
        self.inner_kind = inner_kind.to_owned();
        self
    }

    /// Records that `batches` (of one table) could not be delivered: the
    /// transform failed on them (`refused_by_sink` false) or the inner sink
    /// refused their output.
    async fn dead_letter(
        &self,
        batches: &[Arc<ChangeBatch>],
        error: &str,
        refused_by_sink: bool,
    ) -> std::result::Result<(), SinkError> {
        let Some(store) = &self.dead_letters else {
            return Ok(());
        };
        let (source, error_code) = if refused_by_sink {
            (self.inner_kind.as_str(), "refused")
        } else {
            (DEAD_LETTER_SOURCE, "transform_run")
        };
        let refused = ChangesRefused {
            source,
            sink: self.inner.name(),
            transform: Some(self.runner.name()),
            error_code,
            error,
        };
        store
            .bury_changes(refused, batches)
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

    /// Records the batches of a refused flush; what the store does not take
    /// stays for the next attempt.
    async fn bury_refused(&mut self) -> std::result::Result<(), SinkError> {
        while let Some(batches) = self.refused.first() {
            self.dead_letter(batches, &self.refused_error, true).await?;
            self.refused.remove(0);
        }
        Ok(())
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
                    match self.inner.write(Arc::new(merged)).await {
                        Ok(()) => self.delivered.extend(batches.iter().cloned()),
                        Err(e @ SinkError::Rejected { .. }) => {
                            // Only this table's output is refused; the
                            // other tables' batches still go.
                            error!(error = %e, sink = self.inner.name(), "sink refused a transform's output; dead-lettered");
                            self.dead_letter(&batches, &e.to_string(), true).await?;
                        }
                        Err(e) => return Err(e),
                    }
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
                    self.dead_letter(&batches, &e.to_string(), false).await?;
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
        self.bury_refused().await?;
        self.transform_pending().await?;
        match self.inner.flush().await {
            Ok(()) => {
                self.delivered.clear();
                Ok(())
            }
            Err(e @ SinkError::Rejected { .. }) => {
                // The inner sink dropped what it held: the batches it came
                // from become dead letters here, once, naming the transform
                // (those dead-lettered already are not among them).
                error!(error = %e, sink = self.inner.name(), "sink refused a flush of a transform's output; dead-lettered");
                for b in std::mem::take(&mut self.delivered) {
                    match self
                        .refused
                        .iter_mut()
                        .find(|t| t[0].table.relation_id == b.table.relation_id)
                    {
                        Some(t) => t.push(b),
                        None => self.refused.push(vec![b]),
                    }
                }
                self.refused_error = e.to_string();
                self.bury_refused().await
            }
            Err(e) => Err(e),
        }
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
}
