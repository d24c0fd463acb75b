//! Propagation as a pipeline stage: it consumes the change stream like a
//! sink, and its flush is the re-computation and write-back.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use lily_cdc::sink::dead_letter::NewDeadLetter;
use lily_cdc::sink::{DeadLetters, Sink, SinkError};
use lily_cdc::{ChangeBatch, Lsn};
use lily_config::PropagationConfig;
use tokio_postgres::Client;
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::origins::{Dirty, Origin, OwnWrites, origins_batch};
use super::writeback::{WriteStats, write_back};
use super::{ORIGINS, Propagated};
use crate::error::{Result, TransformError};
use crate::output::OutputContract;
use crate::runner::TransformRunner;
use crate::set::TransformSet;
use crate::state::{CatalogState, Reach, ReachLimits};

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
    limits: ReachLimits,
    dead_letters: DeadLetters,
    /// Origins held back for passing the limits, by what they propagate:
    /// looked at again whenever lineage changes.
    held: [BTreeSet<Origin>; 2],
    /// The write-backs whose copies are still to come back.
    own: OwnWrites,
}

impl PropagationSink {
    /// A propagation stage writing to the metastore at `url`. The first
    /// flush re-computes everything (what changed while Lily was stopped).
    /// Origins past `propagation.max_depth` or `max_assets` are recorded
    /// in `dead_letters`.
    pub async fn new(
        url: &str,
        state: Arc<CatalogState>,
        set: TransformSet,
        config: &PropagationConfig,
        dead_letters: DeadLetters,
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
            limits: ReachLimits {
                max_depth: config.max_depth,
                max_assets: config.max_assets,
            },
            dead_letters,
            held: Default::default(),
            own: OwnWrites::default(),
        })
    }

    async fn client(&mut self) -> Result<&mut Client> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            let pg = lily_cdc::wire::PgConnect::parse(&self.url)
                .map_err(|e| TransformError::State(format!("postgres.url: {e}")))?;
            let client = pg.connect().await.map_err(TransformError::sql(
                "connecting to the metastore for propagation",
            ))?;
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
            if self.dirty.lineage_changed() {
                origins.extend(self.held[what as usize].iter().cloned());
            }
            if !full && origins.is_empty() {
                continue;
            }
            let started = Instant::now();
            let held = self.hold_oversized(what, &mut origins).await;
            let batch = origins_batch(what, &origins)?;
            // New file versions were picked up in `flush`.
            let rows = self.runners[i].1.run_with(ORIGINS, vec![batch]).await?;
            let computed = started.elapsed();
            // Deletion covers every re-computed origin, including those
            // the allow-list filtered out (their copies must go), and none
            // that was held back (its copies stay as they are).
            let scope: Option<BTreeSet<Origin>> =
                dirty.map(|d| d.difference(&held).cloned().collect());
            let client = self.client().await?;
            let stats = write_back(client, what, scope.as_ref(), &held, &rows).await?;
            if let Some(xid) = stats.xid {
                self.own.record(xid);
            }
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

impl PropagationSink {
    /// Takes out of `origins` each one whose downstream passes the limits,
    /// and reports it: a dead letter, a metric and an error line. The
    /// closure of a runaway chain is never computed, so it cannot hold the
    /// stream; the copies the origin gave before stay until it is in
    /// bounds again.
    async fn hold_oversized(
        &mut self,
        what: Propagated,
        origins: &mut BTreeSet<Origin>,
    ) -> BTreeSet<Origin> {
        let mut held = BTreeSet::new();
        for origin in origins.iter() {
            // One that no longer propagates is computed (to nothing), so
            // its copies are taken back.
            if !self.still_origin(what, origin) {
                self.held[what as usize].remove(origin);
                continue;
            }
            let tag = (what == Propagated::Tags).then_some(origin.2.as_str());
            let reach = self.state.reach(origin.1, tag, self.limits);
            let (code, found, limit) = match reach {
                Reach::Within { .. } => {
                    self.held[what as usize].remove(origin);
                    continue;
                }
                Reach::TooDeep { depth } => ("lineage_too_deep", depth, self.limits.max_depth),
                Reach::TooMany { assets } => ("lineage_too_wide", assets, self.limits.max_assets),
            };
            held.insert(origin.clone());
            // Reported once, not at every look.
            if self.held[what as usize].insert(origin.clone()) {
                self.report_held(what, origin, code, found, limit).await;
            }
        }
        origins.retain(|o| !held.contains(o));
        held
    }

    /// Whether `origin` still carries what it propagates.
    fn still_origin(&self, what: Propagated, (_, guid, key): &Origin) -> bool {
        match what {
            Propagated::Tags => self
                .state
                .tags_at(*guid)
                .iter()
                .any(|t| t.propagated_from.is_none() && t.propagate && t.tag == *key),
            Propagated::Attributes => self
                .state
                .attributes_at(*guid)
                .iter()
                .any(|a| a.propagated_from.is_none() && a.attribute == *key),
        }
    }

    async fn report_held(
        &self,
        what: Propagated,
        origin: &Origin,
        code: &str,
        found: usize,
        limit: usize,
    ) {
        let (tenant, guid, key) = origin;
        let name = self
            .state
            .qualified_name(*guid)
            .unwrap_or_else(|| uuid::Uuid::from_u128(*guid).to_string());
        let message = match code {
            "lineage_too_deep" => format!(
                "{} {key} of {name} was not propagated: its lineage goes deeper than \
                 propagation.max_depth = {limit} hops (stopped at {found})",
                what.key()
            ),
            _ => format!(
                "{} {key} of {name} was not propagated: it reaches more than \
                 propagation.max_assets = {limit} assets (stopped at {found})",
                what.key()
            ),
        };
        metrics::counter!("lily_propagation_held_total", "kind" => what.key(), "reason" => code.to_owned())
            .increment(1);
        error!(tenant = %tenant, origin = %name, key = %key, reason = code, "{message}");
        let reference = format!("{} {key} from {name}", what.key());
        let letter = NewDeadLetter {
            source: NAME,
            tenant_id: Some(tenant),
            reference: &reference,
            error_code: code,
            error: &message,
            payload: None,
            details: serde_json::json!({
                "kind": "propagation_held",
                "origin_guid": uuid::Uuid::from_u128(*guid).to_string(),
                "origin": name,
                what.key(): key,
                "found": found,
                "limit": limit,
            }),
        };
        if let Err(e) = self.dead_letters.record(&letter).await {
            metrics::counter!("lily_errors_total", "stage" => "propagation", "kind" => "dead_letter")
                .increment(1);
            warn!(error = %e, "the held origin could not be recorded as a dead letter");
        }
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
        if let Err(e) = self
            .dirty
            .collect(&batch, attributes, &self.state, &self.own)
        {
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
