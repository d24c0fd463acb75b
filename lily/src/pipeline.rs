//! `lily run`: the reader, the sinks, and the checkpoint between them.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lily_cdc::sink::{Backoff, Fanout, SinkRunner};
use lily_cdc::wire::{ConnectParams, PgConnect};
use lily_cdc::{AckTracker, CdcError, ChangeBatch, ChangeReader, ReaderConfig, StartPlan};
use lily_config::LilyConfig;
use lily_sinks::registry::{Registry, RunContext};
use lily_transforms::{CatalogState, TransformSet};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::transforms::{load_transforms, watch_transforms};

/// Adds a sink printing every change to standard output (`lily run
/// --console`, the demo), unless a sink named `console` exists.
pub fn add_console(config: &mut LilyConfig) {
    config
        .sinks
        .entry("console".to_owned())
        .or_insert_with(|| toml::toml! { type = "console" });
}

/// Refuses to serve tenants while row-level security would not hold for
/// their sessions (the tenant role is a superuser, bypasses RLS, or owns a
/// table): `lily setup` checks the same.
async fn check_tenant_role(
    client: &tokio_postgres::Client,
    config: &LilyConfig,
) -> anyhow::Result<()> {
    let problems =
        lily_metastore::tenant_role_problems(client, &config.postgres.tenant_role).await?;
    if !problems.is_empty() {
        return Err(lily_metastore::SetupError::TenantRole(problems).into());
    }
    Ok(())
}

/// Tenants whose topic and index names are another tenant's old names
/// (before tenant ids were written as segments) are named at every start,
/// so an operator moves consumers and grants off those names.
async fn warn_about_renamed_tenants(client: &tokio_postgres::Client) {
    let Ok(rows) = client
        .query("SELECT tenant_id FROM metastore.tenants", &[])
        .await
    else {
        return;
    };
    let ids: Vec<lily_cdc::TenantId> = rows
        .iter()
        .filter_map(|r| lily_cdc::TenantId::parse(r.get::<_, &str>(0)).ok())
        .collect();
    for (renamed, other) in lily_cdc::renamed_onto_others(&ids) {
        warn!(
            tenant = %renamed,
            old_names_of = %other,
            "this tenant's topics and indices carry the names tenant {other}'s had before tenant ids were written as segments; move consumers and grants of {other} to its new names (docs/outbound.md)"
        );
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

/// Runs `work` on a thread and runtime of its own, so that nothing the
/// other tasks do (a burst of API requests, a slow transform) can delay it:
/// the reader's standby status updates keep their pace, and the server
/// never drops replication for a busy process (`wal_sender_timeout`).
async fn on_own_runtime<F>(name: &str, work: F) -> anyhow::Result<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => {
                    let _ = tx.send(Ok(runtime.block_on(work)));
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        })
        .with_context(|| format!("starting the {name} thread"))?;
    rx.await
        .with_context(|| format!("the {name} thread ended without an answer"))?
        .with_context(|| format!("the {name} runtime"))
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
pub async fn run(config: &LilyConfig, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let configured = lily_sinks::registry::parse(config)?;
    let pool = crate::dlq::pool(config)?;
    // Every enforcement point (the SQL endpoint, Trino's decisions, the
    // policy API, downstream masking views) starts from the policies as
    // they are; from then on the pipeline compiles a new snapshot at every
    // commit touching them.
    let policies = lily_enforcement::PolicyStore::new(&config.postgres.url)?;
    policies
        .refresh()
        .await
        .context("compiling the masking policies")?;
    let registry = Registry::build(config, &configured, &pool, Some(&policies)).await?;
    // Each change of a column's effective policy becomes a row of
    // metastore.column_policies, which streams like any change.
    tokio::spawn(
        lily_enforcement::PolicyEvents::new(&config.postgres.url, policies.clone())?
            .run(shutdown.clone()),
    );
    {
        let conn = pool.get().await.context("connecting to the metastore")?;
        check_tenant_role(&conn, config).await?;
        warn_about_renamed_tenants(&conn).await;
    }
    let transforms = load_transforms(config, &registry).await?;
    let state = Arc::new(CatalogState::new(config.propagation.attributes.clone()));
    tokio::spawn(watch_transforms(
        transforms.clone(),
        config.postgres.url.clone(),
        Duration::from_millis(config.transforms.reload_interval_ms),
        shutdown.clone(),
    ));
    let search = lily_sinks::registry::search_cluster(&configured, &config.api)?;
    crate::inbound::start(
        config,
        &transforms,
        &state,
        search,
        &policies,
        shutdown.clone(),
    )
    .await?;
    crate::promote::start(config, shutdown.clone())?;
    let endpoint = if config.sql.listen.is_empty() {
        None
    } else {
        crate::sql::start(config, &policies, shutdown.clone())
            .await?
            .map(|(_, task)| task)
    };
    let result = run_pipeline(
        config,
        &registry,
        &transforms,
        &state,
        Some(&policies),
        shutdown.clone(),
    )
    .await;
    // The endpoint stops with the same signal; its last audit rows are written.
    if let Some(task) = endpoint
        && *shutdown.borrow()
    {
        let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
    }
    result
}

/// The reader and the sinks, reconnecting after transient failures.
async fn run_pipeline(
    config: &LilyConfig,
    registry: &Registry,
    transforms: &TransformSet,
    state: &Arc<CatalogState>,
    policies: Option<&Arc<lily_enforcement::PolicyStore>>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    registry.start(shutdown.clone());
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        match run_once(
            config,
            registry,
            transforms,
            state,
            policies,
            shutdown.clone(),
        )
        .await
        {
            Ok(()) => return Ok(()),
            Err(e) => {
                let transient = e.downcast_ref::<CdcError>().is_some_and(retryable);
                if !transient || *shutdown.borrow() {
                    return Err(e);
                }
                metrics::counter!("lily_errors_total", "stage" => "cdc", "kind" => "reconnect")
                    .increment(1);
                // Tags committed meanwhile are not seen: governed statements
                // wait (and fail closed) until the pipeline is back.
                if let Some(p) = policies {
                    p.invalidate();
                }
                let delay = backoff.next_delay();
                warn!(error = %format!("{e:#}"), retry_in_ms = delay.as_millis() as u64, "replication interrupted; reconnecting");
                let mut sd = shutdown.clone();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = sd.changed() => return Ok(()),
                }
            }
        }
    }
}

async fn run_once(
    config: &LilyConfig,
    registry: &Registry,
    transforms: &TransformSet,
    state: &Arc<CatalogState>,
    policies: Option<&Arc<lily_enforcement::PolicyStore>>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let pg = PgConnect::parse(&config.postgres.url).context("postgres.url")?;
    let client = pg.connect().await.map_err(|source| CdcError::Sql {
        context: "connecting to the metastore".into(),
        source,
    })?;
    let params = ConnectParams::from_connect(&pg)?;
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
        pg.config
            .connect(pg.tls.clone())
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

    let run = RunContext {
        transforms,
        state,
        policies,
    };
    let mut sinks = registry.run_sinks(&run).await?;
    for s in &mut sinks {
        let name = s.sink.name().to_owned();
        let healthcheck =
            std::mem::replace(&mut s.healthcheck, lily_sinks::registry::no_healthcheck());
        healthcheck
            .await
            .with_context(|| format!("sink {name} failed its health check"))?;
        if let StartPlan::Snapshot { discard: Some(lsn) } = plan {
            s.sink.discard_snapshot(lsn).await?;
        }
    }
    info!(plan = ?plan, sinks = sinks.len(), "pipeline starting");
    if let Some(p) = policies {
        // After an interruption: the metastore as it is now; what changed
        // meanwhile arrives through the stream and compiles again.
        p.refresh()
            .await
            .context("compiling the masking policies")?;
    }

    let (abort_tx, abort_rx) = watch::channel(false);
    let runners = sinks
        .into_iter()
        .map(|s| {
            let ack = acks.register_sink(s.sink.name());
            SinkRunner::new(
                s.sink,
                ack,
                s.policy,
                registry.dead_letters().clone(),
                s.source,
            )
        })
        .collect();
    let fanout_state = state.clone();
    // Columns the state leaves out are fetched when a tag, a propagated
    // value or an incident first refers to them.
    let resolver = crate::dlq::own_metastore(config, 1)?;
    // The state moves first, so every transform of a batch joins against a
    // catalog that includes it.
    // A batch the state cannot take stops the pipeline: transforms joined
    // against a state without it could retract a PII tag downstream.
    let apply_to_state = move |batch: Arc<ChangeBatch>| {
        let state = fanout_state.clone();
        let resolver = resolver.clone();
        async move {
            let result = async {
                let missing = state.unresolved(&batch)?;
                // A metastore that is briefly away (a failover) is waited
                // for, not a reason to stop the stream.
                let mut attempt = 0;
                while !missing.is_empty() {
                    attempt += 1;
                    let fetched = match resolver.connection().await {
                        Ok(conn) => state.admit(&conn, &missing).await.map(|_| ()),
                        Err(e) => Err(lily_transforms::TransformError::State(format!(
                            "no metastore connection to fetch assets: {e}"
                        ))),
                    };
                    match fetched {
                        Ok(()) => break,
                        Err(e) if attempt < 10 => {
                            warn!(error = %e, attempt, "fetching assets the catalog state refers to; retrying");
                            tokio::time::sleep(Duration::from_millis(500 * attempt)).await;
                        }
                        Err(e) => return Err(e),
                    }
                }
                state.apply(&batch)
            }
            .await;
            result.map_err(|e| {
                metrics::counter!("lily_errors_total", "stage" => "state", "kind" => "apply")
                    .increment(1);
                error!(error = %e, table = %batch.table.qualified_name(), "catalog state could not take a batch; stopping");
                format!(
                    "the catalog state could not take a batch of {}: {e}",
                    batch.table.qualified_name()
                )
            })
        }
    };
    let fanout = Fanout::start(
        rx,
        runners,
        config.replication.channel_capacity,
        apply_to_state,
        abort_rx,
    );

    let result = on_own_runtime("lily-reader", reader.run(plan, shutdown)).await?;
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
    if let Some(stopped) = fanout.join().await {
        return Err(anyhow::anyhow!(stopped));
    }
    result.map_err(Into::into)
}
