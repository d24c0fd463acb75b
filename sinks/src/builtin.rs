//! The sinks every pipeline has, registered like the others: the Delta
//! audit store (`[lake]`), lineage propagation (`[propagation]`) and the
//! masking-policy compiler of the SQL endpoint (`[sql]`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lily_cdc::sink::{DeadLetters, FlushPolicy, Sink};
use lily_config::{LilyConfig, PropagationConfig};
use lily_lakehouse::{AuditSink, LakeLocation};
use lily_transforms::propagation::{self, PropagationSink};
use tracing::error;

use crate::registry::{BuildError, BuiltSink, Healthcheck, RunContext, no_healthcheck, source};

/// The name of the Delta audit sink.
pub const AUDIT: &str = "lake.audit";
/// The name of the propagation stage.
pub const PROPAGATION: &str = "propagation";
/// The name of the stage that compiles masking policies.
pub const POLICIES: &str = "policies";

/// A built-in sink: its name, dead-letter source, flush policy and builder.
pub(crate) type BuiltIn = (&'static str, &'static str, FlushPolicy, Box<dyn BuiltSink>);

/// The lake location of `config`.
pub fn lake_location(config: &LilyConfig) -> Result<LakeLocation, BuildError> {
    let options = config
        .lake
        .storage_options
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    LakeLocation::parse(&config.lake.root, options).map_err(|e| BuildError::new(AUDIT, e))
}

/// The built-in sinks of `config`: the audit store always, propagation
/// when `propagation.enabled`.
pub(crate) fn entries(
    config: &LilyConfig,
    dead_letters: &DeadLetters,
) -> Result<Vec<BuiltIn>, BuildError> {
    let location = lake_location(config)?;
    let mut out: Vec<BuiltIn> = vec![(
        AUDIT,
        source::AUDIT,
        FlushPolicy {
            max_rows: config.lake.flush_max_rows,
            max_wait: Duration::from_millis(config.lake.flush_interval_ms),
        },
        Box::new(Audit { location }),
    )];
    if config.propagation.enabled {
        out.push((
            PROPAGATION,
            source::PROPAGATION,
            // Propagation is latency-sensitive (tag to enforcement): flush
            // right away; batches that queue meanwhile are merged into one pass.
            FlushPolicy {
                max_rows: 100_000,
                max_wait: Duration::from_millis(5),
            },
            Box::new(Propagation {
                url: config.postgres.url.clone(),
                config: config.propagation.clone(),
                dead_letters: dead_letters.clone(),
            }),
        ));
    }
    // Every enforcement point (the SQL endpoint, Trino's decisions, the
    // policy API, masking views, policy events) reads its snapshot.
    out.push((
        POLICIES,
        source::POLICIES,
        // Tag to enforcement: a new snapshot as soon as a change commits.
        FlushPolicy {
            max_rows: 100_000,
            max_wait: Duration::from_millis(5),
        },
        Box::new(Policies),
    ));
    Ok(out)
}

struct Policies;

#[async_trait]
impl BuiltSink for Policies {
    async fn sink(
        &self,
        run: &RunContext<'_>,
    ) -> Result<Option<(Box<dyn Sink>, Healthcheck)>, BuildError> {
        Ok(run.policies.map(|store| {
            (
                Box::new(lily_enforcement::PolicySink::new(store.clone())) as Box<dyn Sink>,
                no_healthcheck(),
            )
        }))
    }
}

struct Audit {
    location: LakeLocation,
}

#[async_trait]
impl BuiltSink for Audit {
    async fn sink(
        &self,
        _run: &RunContext<'_>,
    ) -> Result<Option<(Box<dyn Sink>, Healthcheck)>, BuildError> {
        let sink = AuditSink::open(&self.location)
            .await
            .map_err(|e| BuildError::new(AUDIT, format!("opening the audit table: {e}")))?;
        Ok(Some((Box::new(sink), no_healthcheck())))
    }
}

struct Propagation {
    url: String,
    config: PropagationConfig,
    dead_letters: DeadLetters,
}

#[async_trait]
impl BuiltSink for Propagation {
    /// After one full re-computation (what changed while Lily was not
    /// running); none when its transforms did not load.
    async fn sink(
        &self,
        run: &RunContext<'_>,
    ) -> Result<Option<(Box<dyn Sink>, Healthcheck)>, BuildError> {
        let mut needed = vec![propagation::CLASSIFICATIONS];
        if !self.config.attributes.is_empty() {
            needed.push(propagation::ATTRIBUTES);
        }
        let missing: Vec<&str> = needed
            .into_iter()
            .filter(|t| run.transforms.get(t).is_none())
            .collect();
        if !missing.is_empty() {
            metrics::counter!("lily_errors_total", "stage" => "propagation", "kind" => "not_loaded")
                .increment(1);
            error!(missing = ?missing, dir = %run.transforms.dir().display(), "lineage propagation is off: its transforms did not load");
            return Ok(None);
        }
        let err = |e: &dyn std::fmt::Display, what: &str| {
            BuildError::new(
                PROPAGATION,
                format!("{what}: {e} (set propagation.enabled = false to run without it)"),
            )
        };
        let mut sink = PropagationSink::new(
            &self.url,
            Arc::clone(run.state),
            run.transforms.clone(),
            &self.config,
            self.dead_letters.clone(),
        )
        .await
        .map_err(|e| err(&e, "starting lineage propagation"))?;
        sink.flush()
            .await
            .map_err(|e| err(&e, "the start-up propagation pass"))?;
        Ok(Some((Box::new(sink), no_healthcheck())))
    }
}
