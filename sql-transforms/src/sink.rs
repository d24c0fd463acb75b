//! A sink fed by a post-consume transform.

use std::sync::Arc;

use lily_cdc::{ChangeBatch, Lsn};
use lily_sinks::{Sink, SinkError};
use tracing::{Instrument, error, info_span};

use crate::error::Result;
use crate::output::OutputContract;
use crate::runner::TransformRunner;
use crate::set::TransformSet;
use crate::state::CatalogState;

/// Runs a transform on every batch before handing the result to a sink.
pub struct TransformedSink {
    inner: Box<dyn Sink>,
    runner: TransformRunner,
}

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
        Ok(Self { inner, runner })
    }
}

#[async_trait::async_trait]
impl Sink for TransformedSink {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn write(&mut self, batch: Arc<ChangeBatch>) -> Result<(), SinkError> {
        self.runner.refresh().await;
        let span =
            info_span!("transform", transform = %self.runner.name(), rows = batch.num_rows());
        match self.runner.run_changes(&batch).instrument(span).await {
            Ok(records) => {
                let mut out = (*batch).clone();
                out.records = records;
                self.inner.write(Arc::new(out)).await
            }
            Err(e) => {
                // A batch the transform cannot process is reported and
                // skipped; the batches around it still flow.
                metrics::counter!("lily_transform_errors_total", "transform" => self.runner.name().to_owned(), "stage" => "run")
                    .increment(1);
                metrics::counter!("lily_errors_total", "stage" => "transform", "kind" => "run")
                    .increment(1);
                error!(error = %e, sink = self.inner.name(), first = ?batch.first, last = ?batch.last, "transform failed; batch skipped for this sink");
                Ok(())
            }
        }
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        self.inner.flush().await
    }

    fn buffered_rows(&self) -> usize {
        self.inner.buffered_rows()
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
