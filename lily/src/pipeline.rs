//! `lily run`: the reader, the sinks, and the checkpoint between them.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lily_cdc::sink::{DeadLetters, Fanout, FlushPolicy, Sink, SinkRunner};
use lily_cdc::wire::ConnectParams;
use lily_cdc::{AckTracker, CdcError, ChangeBatch, ChangeReader, ReaderConfig, StartPlan};
use lily_config::LilyConfig;
use lily_lakehouse::{AuditSink, LakeLocation};
use lily_transforms::propagation::{self, PropagationSink};
use lily_transforms::{CatalogState, TransformSet, TransformedSink};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::outbound::Outbound;
use crate::transforms::{load_transforms, watch_transforms};

/// A sink with its flush policy and the transform that feeds it.
pub struct SinkSpec {
    /// The sink.
    pub sink: Box<dyn Sink>,
    /// When it flushes.
    pub policy: FlushPolicy,
    /// The transform its own config names (`[transforms.sinks]` can name one
    /// for any sink too).
    pub transform: Option<String>,
    /// Its kind: the `source` of the dead letters of what it refuses.
    pub kind: &'static str,
}

/// A sink printing every change to standard output (`lily run --console`, the demo).
pub fn console_sink() -> SinkSpec {
    SinkSpec {
        sink: Box::new(lily_sinks::ConsoleSink::default()),
        policy: FlushPolicy {
            max_rows: 1,
            max_wait: Duration::from_millis(1),
        },
        transform: None,
        kind: "console",
    }
}

/// The reader's settings from the config.
pub fn reader_config(config: &LilyConfig) -> ReaderConfig {
    let r = &config.replication;
    ReaderConfig {
        slot: r.slot.clone(),
        publication: r.publication.clone(),
        batch_max_rows: r.batch_max_rows,
        batch_max_bytes: r.batch_max_bytes,
        batch_max_wait: Duration::from_millis(r.batch_max_wait_ms),
        status_interval: Duration::from_millis(r.status_interval_ms),
        heartbeat_interval: Duration::from_millis(r.heartbeat_interval_ms),
        max_lag_bytes: r.max_lag_bytes,
    }
}

/// The lake location from the config.
pub fn lake_location(config: &LilyConfig) -> anyhow::Result<LakeLocation> {
    let options = config
        .lake
        .storage_options
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(LakeLocation::parse(&config.lake.root, options)?)
}

/// The sinks every pipeline has: the Delta audit store.
pub async fn default_sinks(config: &LilyConfig) -> anyhow::Result<Vec<SinkSpec>> {
    let location = lake_location(config)?;
    let audit = AuditSink::open(&location)
        .await
        .context("opening the audit table")?;
    Ok(vec![SinkSpec {
        sink: Box::new(audit),
        policy: FlushPolicy {
            max_rows: config.lake.flush_max_rows,
            max_wait: Duration::from_millis(config.lake.flush_interval_ms),
        },
        transform: None,
        kind: "audit",
    }])
}

fn retryable(e: &CdcError) -> bool {
    match e {
        CdcError::Io { .. } => true,
        // Connection exceptions, operator intervention, and "slot in use"
        // (the previous walsender has not noticed its client is gone yet).
        other => other
            .sqlstate()
            .is_some_and(|s| s.starts_with("08") || s.starts_with("57") || s == "55006"),
    }
}

/// Runs the pipeline until `shutdown` turns true; reconnects after transient failures.
/// `extra_sinks` adds sinks to the default ones (the demo's console).
pub async fn run(
    config: &LilyConfig,
    extra_sinks: impl Fn() -> Vec<SinkSpec>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let transforms = load_transforms(config).await?;
    let state = Arc::new(CatalogState::new(config.propagation.attributes.clone()));
    tokio::spawn(watch_transforms(
        transforms.clone(),
        config.postgres.url.clone(),
        Duration::from_millis(config.transforms.reload_interval_ms),
        shutdown.clone(),
    ));
    crate::inbound::start(config, &transforms, &state, shutdown.clone()).await?;
    let outbound = Outbound::start(config, shutdown.clone())?;
    let mut delay = Duration::from_millis(500);
    loop {
        let mut sinks = default_sinks(config).await?;
        sinks.extend(outbound.sinks(config)?);
        sinks.extend(extra_sinks());
        match run_once(config, sinks, &transforms, &state, shutdown.clone()).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                let transient = e.downcast_ref::<CdcError>().is_some_and(retryable);
                if !transient || *shutdown.borrow() {
                    return Err(e);
                }
                metrics::counter!("lily_errors_total", "stage" => "cdc", "kind" => "reconnect")
                    .increment(1);
                warn!(error = %format!("{e:#}"), retry_in_ms = delay.as_millis() as u64, "replication interrupted; reconnecting");
                let mut sd = shutdown.clone();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = sd.changed() => return Ok(()),
                }
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Puts the sinks named in `[transforms.sinks]` behind their transform.
async fn route_through_transforms(
    config: &LilyConfig,
    dead_letters: &DeadLetters,
    sinks: Vec<SinkSpec>,
    transforms: &TransformSet,
    state: &Arc<CatalogState>,
) -> anyhow::Result<Vec<SinkSpec>> {
    for name in config.transforms.sinks.keys() {
        if !sinks.iter().any(|s| s.sink.name() == name) {
            let running: Vec<&str> = sinks.iter().map(|s| s.sink.name()).collect();
            anyhow::bail!(
                "transforms.sinks names sink {name:?}, which this pipeline does not run (it runs: {})",
                running.join(", ")
            );
        }
    }
    let dead_letters = dead_letters.clone();
    let mut out = Vec::with_capacity(sinks.len());
    for spec in sinks {
        let named = config.transforms.sinks.get(spec.sink.name());
        match named.or(spec.transform.as_ref()) {
            Some(transform) => {
                let sink_name = spec.sink.name().to_owned();
                let sink = TransformedSink::new(spec.sink, transforms, transform, state.clone())
                    .await
                    .with_context(|| format!("transform {transform} for sink {sink_name}"))?
                    .with_dead_letters(dead_letters.clone(), spec.kind);
                info!(sink = %sink_name, transform = %transform, "sink fed by a transform");
                out.push(SinkSpec {
                    sink: Box::new(sink),
                    policy: spec.policy,
                    transform: None,
                    kind: spec.kind,
                });
            }
            None => out.push(spec),
        }
    }
    Ok(out)
}

/// The propagation stage, after one full re-computation (what changed
/// while Lily was not running).
async fn propagation_stage(
    config: &LilyConfig,
    transforms: &TransformSet,
    state: &Arc<CatalogState>,
) -> anyhow::Result<SinkSpec> {
    let mut sink = PropagationSink::new(
        &config.postgres.url,
        state.clone(),
        transforms.clone(),
        &config.propagation,
    )
    .await
    .context("starting lineage propagation (set propagation.enabled = false to run without it)")?;
    sink.flush()
        .await
        .context("the start-up propagation pass")?;
    Ok(SinkSpec {
        sink: Box::new(sink),
        // Propagation is latency-sensitive (tag to enforcement): flush
        // right away; batches that queue meanwhile are merged into one pass.
        policy: FlushPolicy {
            max_rows: 100_000,
            max_wait: Duration::from_millis(5),
        },
        transform: None,
        kind: "propagation",
    })
}

async fn run_once(
    config: &LilyConfig,
    sinks: Vec<SinkSpec>,
    transforms: &TransformSet,
    state: &Arc<CatalogState>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let pg = tokio_postgres::Config::from_str(&config.postgres.url).context("postgres.url")?;
    let (client, connection) =
        pg.connect(tokio_postgres::NoTls)
            .await
            .map_err(|source| CdcError::Sql {
                context: "connecting to the metastore".into(),
                source,
            })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            warn!(error = %e, "metastore connection closed");
        }
    });
    let params = ConnectParams::from_config(&pg)?;
    let acks = AckTracker::new();
    let (tx, rx) = mpsc::channel::<Arc<ChangeBatch>>(config.replication.channel_capacity);
    let reader = ChangeReader::new(
        params,
        Arc::new(client),
        reader_config(config),
        acks.clone(),
        tx,
    );
    let plan = reader.plan().await?;

    // The catalog state starts from the database as it is now; the stream
    // then replays from the slot, which converges on the same state.
    let (mut loader, loader_conn) =
        pg.connect(tokio_postgres::NoTls)
            .await
            .map_err(|source| CdcError::Sql {
                context: "connecting to load the catalog state".into(),
                source,
            })?;
    let loader_task = tokio::spawn(loader_conn);
    let started = std::time::Instant::now();
    state.load(&mut loader).await?;
    drop(loader);
    let _ = loader_task.await;
    let (assets, edges, classifications) = state.counts();
    info!(
        assets,
        lineage_edges = edges,
        classifications,
        ms = started.elapsed().as_millis() as u64,
        "catalog state loaded"
    );

    let dead_letters = DeadLetters::new(crate::outbound::pool(config)?);
    let mut sinks =
        route_through_transforms(config, &dead_letters, sinks, transforms, state).await?;
    if config.propagation.enabled {
        let mut needed = vec![propagation::CLASSIFICATIONS];
        if !config.propagation.attributes.is_empty() {
            needed.push(propagation::ATTRIBUTES);
        }
        let missing: Vec<&str> = needed
            .into_iter()
            .filter(|t| transforms.get(t).is_none())
            .collect();
        if missing.is_empty() {
            sinks.push(propagation_stage(config, transforms, state).await?);
        } else {
            metrics::counter!("lily_errors_total", "stage" => "propagation", "kind" => "not_loaded")
                .increment(1);
            error!(missing = ?missing, dir = %transforms.dir().display(), "lineage propagation is off: its transforms did not load");
        }
    }
    for spec in &mut sinks {
        spec.sink
            .healthcheck()
            .await
            .with_context(|| format!("sink {} failed its health check", spec.sink.name()))?;
        if let StartPlan::Snapshot { discard: Some(lsn) } = plan {
            spec.sink.discard_snapshot(lsn).await?;
        }
    }
    info!(plan = ?plan, sinks = sinks.len(), "pipeline starting");

    let (abort_tx, abort_rx) = watch::channel(false);
    let runners = sinks
        .into_iter()
        .map(|spec| {
            let ack = acks.register_sink(spec.sink.name());
            SinkRunner::new(spec.sink, ack, spec.policy, dead_letters.clone(), spec.kind)
        })
        .collect();
    let fanout_state = state.clone();
    // The state moves first, so every transform of a batch joins against a
    // catalog that includes it.
    let apply_to_state = move |batch: &ChangeBatch| {
        if let Err(e) = fanout_state.apply(batch) {
            metrics::counter!("lily_errors_total", "stage" => "state", "kind" => "apply")
                .increment(1);
            error!(error = %e, table = %batch.table.qualified_name(), "catalog state could not take a batch");
        }
    };
    let fanout = Fanout::start(
        rx,
        runners,
        config.replication.channel_capacity,
        apply_to_state,
        abort_rx,
    );

    let result = reader.run(plan, shutdown).await;
    if let Err(e) = &result {
        let kind = match e {
            CdcError::Io { .. } => "connection",
            CdcError::Server(_) | CdcError::Sql { .. } => "server",
            CdcError::Decode { .. } | CdcError::Value { .. } | CdcError::Protocol(_) => "decode",
            _ => "other",
        };
        metrics::counter!("lily_errors_total", "stage" => "cdc", "kind" => kind).increment(1);
        error!(error = %e, "reader stopped");
        let _ = abort_tx.send(true);
    }
    fanout.join().await;
    result.map_err(Into::into)
}
