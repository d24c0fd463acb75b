//! `lily transforms ...` and the reloading of transform files while `lily
//! run` runs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use lily_config::LilyConfig;
use lily_sinks::registry::Registry;
use lily_transforms::slt::run_all;
use lily_transforms::{TransformError, TransformSet, check_source, discover};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

/// The channel `lily transforms reload` notifies.
pub const RELOAD_CHANNEL: &str = "lily_transforms_reload";

/// The transforms folder from the config.
pub fn transforms_dir(config: &LilyConfig, dir: Option<&Path>) -> PathBuf {
    dir.map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from(&config.transforms.dir))
}

/// Loads the transforms for `lily run`. Files that do not load are reported
/// and left out; a transform a sink needs that did not load stops the start.
pub async fn load_transforms(
    config: &LilyConfig,
    registry: &Registry,
) -> anyhow::Result<TransformSet> {
    let dir = transforms_dir(config, None);
    if !dir.is_dir() {
        warn!(dir = %dir.display(), "no transforms folder (transforms.dir): running without transforms or propagation");
    }
    let (set, report) = TransformSet::load(&dir)
        .await
        .with_context(|| format!("loading transforms from {}", dir.display()))?;
    info!(dir = %dir.display(), loaded = report.loaded.len(), failed = report.errors.len(), "transforms loaded");
    for (sink, transform) in registry.transforms() {
        if set.get(transform).is_none() {
            let file = dir.join(format!("{transform}.sql"));
            let why = report
                .errors
                .iter()
                .find(|e| matches!(e, TransformError::Invalid { file: f, .. } if *f == file))
                .map(|e| format!(": {e}"))
                .unwrap_or_else(|| format!(": no file {}", file.display()));
            anyhow::bail!("sink {sink} is fed by transform {transform}, which did not load{why}");
        }
    }
    Ok(set)
}

/// Reloads `set` when its files change (checked every `interval`; zero
/// turns polling off) and when `lily transforms reload` notifies.
pub async fn watch_transforms(
    set: TransformSet,
    url: String,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let (notify_tx, mut notify_rx) = mpsc::channel::<()>(4);
    tokio::spawn(listen_for_reloads(url, notify_tx, shutdown.clone()));
    let mut fingerprint = set.fingerprint();
    let poll = if interval.is_zero() {
        Duration::from_secs(3600)
    } else {
        interval
    };
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(poll) => {
                if interval.is_zero() {
                    continue;
                }
                let now = set.fingerprint();
                if now == fingerprint {
                    continue;
                }
                fingerprint = now;
                info!("transform files changed; reloading");
            }
            Some(()) = notify_rx.recv() => {
                info!("reload requested");
                fingerprint = set.fingerprint();
            }
        }
        match set.reload().await {
            Ok(report) => info!(
                loaded = ?report.loaded,
                removed = ?report.removed,
                failed = report.errors.len(),
                "transforms reloaded"
            ),
            Err(e) => {
                warn!(error = %e, "reloading transforms failed; the loaded versions keep running")
            }
        }
    }
}

/// LISTENs on the reload channel, reconnecting when the connection drops.
async fn listen_for_reloads(
    url: String,
    tx: mpsc::Sender<()>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let connected = match lily_cdc::wire::PgConnect::parse(&url) {
            Ok(pg) => pg.config.connect(pg.tls).await.map_err(anyhow::Error::from),
            Err(e) => Err(e.into()),
        };
        match connected {
            Ok((client, mut connection)) => {
                let (msg_tx, mut msg_rx) = mpsc::unbounded_channel();
                let driver = tokio::spawn(async move {
                    let mut messages =
                        futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                    while let Some(Ok(m)) = messages.next().await {
                        if let tokio_postgres::AsyncMessage::Notification(_) = m
                            && msg_tx.send(()).is_err()
                        {
                            return;
                        }
                    }
                });
                if let Err(e) = client
                    .batch_execute(&format!("LISTEN {RELOAD_CHANNEL}"))
                    .await
                {
                    warn!(error = %e, "cannot LISTEN for transform reloads");
                } else {
                    loop {
                        tokio::select! {
                            _ = shutdown.changed() => return,
                            m = msg_rx.recv() => match m {
                                Some(()) => { let _ = tx.try_send(()); }
                                None => break,
                            },
                        }
                    }
                }
                driver.abort();
            }
            Err(e) => warn!(error = %e, "cannot connect to listen for transform reloads; retrying"),
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// `lily transforms check`: every file parses, plans and has the shape its
/// kind requires; every sink route names a transform. Prints each problem
/// as `file:line:column: message`; an error when there is any.
pub async fn check(config: &LilyConfig, dir: Option<&Path>) -> anyhow::Result<()> {
    let dir = transforms_dir(config, dir);
    if !dir.is_dir() {
        anyhow::bail!("no transforms folder at {}", dir.display());
    }
    let sources =
        discover(&dir).with_context(|| format!("reading transforms in {}", dir.display()))?;
    let mut failures = 0;
    for source in &sources {
        match check_source(source).await {
            Ok(schema) => {
                let columns: Vec<String> = schema
                    .fields()
                    .iter()
                    .map(|f| format!("{} {}", f.name(), f.data_type()))
                    .collect();
                println!("ok     {} -> ({})", source.name, columns.join(", "));
            }
            Err(e) => {
                failures += 1;
                println!("error  {e}");
            }
        }
    }
    for sink in lily_sinks::registry::parse(config)? {
        let Some(transform) = &sink.transform else {
            continue;
        };
        if !sources.iter().any(|s| &s.name == transform) {
            failures += 1;
            println!(
                "error  sinks.{}: fed by transform {transform}, which has no file in {}",
                sink.name,
                dir.display()
            );
        }
    }
    println!("{} transforms, {failures} with errors", sources.len());
    if failures > 0 {
        anyhow::bail!("{failures} transform(s) do not check");
    }
    Ok(())
}

/// `lily transforms test`: runs the `.slt` files beside the transforms.
pub async fn test(config: &LilyConfig, dir: Option<&Path>) -> anyhow::Result<()> {
    let dir = transforms_dir(config, dir);
    let (passed, failed) = run_all(&dir)
        .await
        .with_context(|| format!("reading {}", dir.display()))?;
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        anyhow::bail!("{failed} .slt file(s) failed");
    }
    Ok(())
}

/// `lily transforms reload`: tells every running `lily run` on this
/// metastore to reload its transforms now.
pub async fn reload(config: &LilyConfig) -> anyhow::Result<()> {
    let pg = lily_cdc::wire::PgConnect::parse(&config.postgres.url).context("postgres.url")?;
    let (client, connection) = pg
        .config
        .connect(pg.tls)
        .await
        .context("connecting to the metastore")?;
    let task = tokio::spawn(connection);
    client
        .batch_execute(&format!("NOTIFY {RELOAD_CHANNEL}"))
        .await
        .context("notifying running pipelines")?;
    drop(client);
    let _ = task.await;
    println!("reload requested: running pipelines reload their transforms now");
    Ok(())
}
