//! Propagation as a pipeline stage: it consumes the change stream like a
//! sink, and its flush is the re-computation and write-back.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use lily_cdc::sink::{Sink, SinkError};
use lily_cdc::{ChangeBatch, Lsn};
use lily_config::PropagationConfig;
use tokio_postgres::{Client, NoTls};
use tracing::{Instrument, debug, info, info_span, warn};

use super::origins::{Dirty, Origin, origins_batch};
use super::writeback::{WriteStats, write_back};
use super::{ORIGINS, Propagated};
use crate::error::{Result, TransformError};
use crate::output::OutputContract;
use crate::runner::TransformRunner;
use crate::set::TransformSet;
use crate::state::CatalogState;

const NAME: &str = "propagation";

/// Re-computes and writes back propagation for what the stream changes.
pub struct PropagationSink {
    url: String,
    client: Option<Client>,
    state: Arc<CatalogState>,
    set: TransformSet,
    generation: u64,
    tags: Vec<String>,
    attribute_names: Vec<String>,
    runners: Vec<(Propagated, TransformRunner)>,
    dirty: Dirty,
}

impl PropagationSink {
    /// A propagation stage writing to the metastore at `url`. The first
    /// flush re-computes everything (what changed while Lily was stopped).
    pub async fn new(
        url: &str,
        state: Arc<CatalogState>,
        set: TransformSet,
        config: &PropagationConfig,
    ) -> Result<Self> {
        let mut runners = Vec::new();
        for what in [Propagated::Tags, Propagated::Attributes] {
            if what == Propagated::Attributes && config.attributes.is_empty() {
                continue;
            }
            let runner = TransformRunner::new(
                &set,
                what.transform(),
                state.clone(),
                vec![(ORIGINS.to_owned(), what.origins_schema())],
                OutputContract::Exactly(what.output_fields()),
            )
            .await?;
            runners.push((what, runner));
        }
        let mut attribute_names: Vec<String> =
            config.attributes.iter().map(|a| a.name.clone()).collect();
        attribute_names.dedup();
        Ok(Self {
            url: url.to_owned(),
            client: None,
            state,
            generation: set.generation(),
            set,
            tags: config.tags.clone(),
            attribute_names,
            runners,
            dirty: Dirty::everything(),
        })
    }

    async fn client(&mut self) -> Result<&mut Client> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            let (client, connection) =
                tokio_postgres::connect(&self.url, NoTls)
                    .await
                    .map_err(TransformError::sql(
                        "connecting to the metastore for propagation",
                    ))?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    warn!(error = %e, "propagation's metastore connection closed");
                }
            });
            self.client = Some(client);
        }
        self.client
            .as_mut()
            .ok_or_else(|| TransformError::State("no metastore connection".into()))
    }

    fn all_origins(&self, what: Propagated) -> BTreeSet<Origin> {
        match what {
            Propagated::Tags => self.state.tag_origins().into_iter().collect(),
            Propagated::Attributes => self.state.attribute_origins().into_iter().collect(),
        }
    }

    /// One re-computation and write-back of everything dirty.
    async fn propagate(&mut self) -> Result<WriteStats> {
        let mut total = WriteStats::default();
        let full = self.dirty.full;
        for i in 0..self.runners.len() {
            let what = self.runners[i].0;
            let dirty = self.dirty.origins(what, &self.state, &self.attribute_names);
            let mut origins = dirty.clone().unwrap_or_else(|| self.all_origins(what));
            if what == Propagated::Tags && !self.tags.is_empty() {
                origins.retain(|o| self.tags.contains(&o.2));
            }
            if !full && origins.is_empty() {
                continue;
            }
            let started = Instant::now();
            let batch = origins_batch(what, &origins)?;
            // New file versions were picked up in `flush`.
            let rows = self.runners[i].1.run_with(ORIGINS, vec![batch]).await?;
            let computed = started.elapsed();
            // Deletion covers every re-computed origin, including those
            // the allow-list filtered out (their copies must go).
            let scope = dirty.as_ref();
            let client = self.client().await?;
            let stats = write_back(client, what, scope, &rows).await?;
            let kind = what.key();
            metrics::counter!("lily_propagation_origins_total", "kind" => kind)
                .increment(origins.len() as u64);
            metrics::counter!("lily_propagation_rows_total", "kind" => kind, "op" => "insert")
                .increment(stats.inserted);
            metrics::counter!("lily_propagation_rows_total", "kind" => kind, "op" => "delete")
                .increment(stats.deleted);
            metrics::histogram!("lily_propagation_seconds", "kind" => kind)
                .record(started.elapsed().as_secs_f64());
            info!(
                kind,
                full,
                origins = origins.len(),
                reached = rows.num_rows(),
                inserted = stats.inserted,
                deleted = stats.deleted,
                compute_ms = computed.as_millis() as u64,
                total_ms = started.elapsed().as_millis() as u64,
                "propagated"
            );
            total.inserted += stats.inserted;
            total.deleted += stats.deleted;
        }
        Ok(total)
    }
}

fn unavailable(e: TransformError) -> SinkError {
    SinkError::Unavailable {
        sink: NAME.into(),
        message: e.to_string(),
    }
}

#[async_trait::async_trait]
impl Sink for PropagationSink {
    fn name(&self) -> &str {
        NAME
    }

    async fn write(&mut self, batch: Arc<ChangeBatch>) -> Result<(), SinkError> {
        let attributes = !self.attribute_names.is_empty();
        if let Err(e) = self.dirty.collect(&batch, attributes, &self.state) {
            // Retrying the same batch would fail the same way; a full
            // re-computation covers whatever it changed.
            metrics::counter!("lily_errors_total", "stage" => "propagation", "kind" => "batch")
                .increment(1);
            warn!(error = %e, table = %batch.table.qualified_name(), "cannot tell what this batch changes; re-computing everything");
            self.dirty.full = true;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        // A new version of a propagation file re-computes everything.
        let generation = self.set.generation();
        if generation != self.generation {
            self.generation = generation;
            for (_, runner) in &mut self.runners {
                if runner.refresh().await {
                    self.dirty.full = true;
                }
            }
        }
        if self.dirty.is_empty() {
            return Ok(());
        }
        let span = info_span!(
            "propagate",
            full = self.dirty.full,
            pending = self.dirty.len()
        );
        match self.propagate().instrument(span).await {
            Ok(stats) => {
                debug!(?stats, "propagation written back");
                self.dirty = Dirty::default();
                Ok(())
            }
            Err(e) => {
                metrics::counter!("lily_errors_total", "stage" => "propagation", "kind" => "write_back")
                    .increment(1);
                if matches!(&e, TransformError::Sql { .. }) {
                    self.client = None;
                }
                Err(unavailable(e))
            }
        }
    }

    fn buffered_rows(&self) -> usize {
        self.dirty.len()
    }

    async fn discard_snapshot(&mut self, _snapshot_lsn: Lsn) -> Result<(), SinkError> {
        Ok(())
    }

    fn transform_input(&self) -> Option<Vec<arrow::datatypes::Field>> {
        None
    }
}
