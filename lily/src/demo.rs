//! `lily demo`: the whole pipeline on one machine. A private PostgreSQL
//! cluster under a local folder, the sample estate, the Delta store beside
//! it, and a stream of catalog edits printed as they flow through.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lily_config::LilyConfig;
use lily_embedded::ClusterBuilder;
use tokio::sync::watch;
use tracing::info;

use crate::pipeline;

const DATABASE: &str = "lily";

/// Catalog edits the demo makes, one every few seconds, round and round.
const EDITS: &[(&str, &str)] = &[
    (
        "describe a table",
        "UPDATE metastore.assets SET description = 'Orders placed on the web shop, edited at ' || now()::time(0) WHERE tenant_id = 'acme' AND qualified_name = 'analytics.sales.orders'",
    ),
    (
        "certify the revenue mart",
        "UPDATE metastore.assets SET certificate = CASE WHEN certificate = 'verified' THEN 'draft' ELSE 'verified' END WHERE tenant_id = 'acme' AND qualified_name = 'analytics.marts.daily_revenue'",
    ),
    (
        "tag a column GDPR (propagates downstream through lineage)",
        "INSERT INTO metastore.classifications (tenant_id, asset_guid, tag) SELECT 'acme', guid, 'GDPR' FROM metastore.assets WHERE tenant_id = 'acme' AND qualified_name = 'analytics.raw.customers.country' ON CONFLICT DO NOTHING",
    ),
    (
        "Monte Carlo raises a freshness incident on orders",
        "WITH i AS (INSERT INTO metastore.incidents (tenant_id, source_system, external_id, incident_type, title, severity) VALUES ('acme', 'monte-carlo', 'demo-' || txid_current(), 'freshness_anomaly', 'orders is late', 'SEV-2') RETURNING tenant_id, incident_id) INSERT INTO metastore.incident_assets (tenant_id, incident_id, qualified_name) SELECT tenant_id, incident_id, 'analytics.sales.orders' FROM i",
    ),
    (
        "the incident is acknowledged",
        "UPDATE metastore.incidents SET state = 'acknowledged' WHERE tenant_id = 'acme' AND state = 'open'",
    ),
    (
        "remove the GDPR tag (its propagated copies go too)",
        "DELETE FROM metastore.classifications WHERE tenant_id = 'acme' AND tag = 'GDPR'",
    ),
    (
        "the incident is resolved",
        "UPDATE metastore.incidents SET state = 'resolved', severity = 'SEV-3' WHERE tenant_id = 'acme' AND state = 'acknowledged'",
    ),
];

/// Runs the demo in `dir` until Ctrl-C.
pub async fn run(dir: &Path, base: LilyConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = std::fs::canonicalize(dir)?;
    println!("Lily demo in {}", dir.display());
    println!("  starting a private PostgreSQL cluster (wal_level=logical) ...");
    let cluster = ClusterBuilder::new(dir.join("postgres"))
        .start()
        .await
        .context("starting PostgreSQL")?;
    cluster.create_database(DATABASE).await?;
    println!("  PostgreSQL listening on 127.0.0.1:{}", cluster.port());

    // Everything but where PostgreSQL and the lake are comes from the usual
    // config (file and LILY_* variables).
    let mut config = base;
    config.postgres.url = cluster.url(DATABASE);
    config.lake.root = dir.join("lake").display().to_string();
    // The written config must find the transforms from any folder.
    if let Ok(transforms) = std::fs::canonicalize(&config.transforms.dir) {
        config.transforms.dir = transforms.display().to_string();
    }
    let config_path = dir.join("lily.toml");
    std::fs::write(&config_path, config.to_toml())
        .with_context(|| format!("writing {}", config_path.display()))?;
    crate::telemetry::init_metrics(&config.metrics.listen)?;

    let report = crate::setup(&config).await?;
    println!(
        "  metastore ready: {} tables published, slot '{}'",
        report.published_tables.len(),
        config.replication.slot
    );
    let client = cluster.connect(DATABASE).await?;
    client
        .batch_execute(include_str!("../sample/estate.sql"))
        .await
        .context("loading the sample estate")?;
    println!(
        "  sample estate loaded (tenant acme); streaming it to the Delta store at {}",
        config.lake.root
    );
    println!("  Ctrl-C stops. Changes as they arrive:\n");

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let pipeline_config = config.clone();
    let pipeline = tokio::spawn(async move {
        let console = || vec![pipeline::console_sink()];
        pipeline::run(&pipeline_config, console, shutdown_rx).await
    });

    let client = Arc::new(client);
    let editor = tokio::spawn(edit_forever(client.clone()));
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        r = wait_for_terminate() => r?,
    }
    println!("\n  stopping ...");
    editor.abort();
    let _ = shutdown_tx.send(true);
    pipeline.await.context("pipeline task")??;
    let rows = crate::lake::count_audit_rows(&config).await.unwrap_or(0);
    println!(
        "  the audit table holds {rows} changes: {}",
        PathBuf::from(&config.lake.root)
            .join(lily_lakehouse::AUDIT_TABLE)
            .display()
    );
    println!(
        "  rerun `lily demo` to continue where it stopped; the config is {}",
        config_path.display()
    );
    drop(cluster);
    info!("demo stopped");
    Ok(())
}

async fn wait_for_terminate() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    term.recv().await;
    Ok(())
}

async fn edit_forever(client: Arc<tokio_postgres::Client>) {
    let mut tick = tokio::time::interval(Duration::from_secs(3));
    tick.tick().await;
    for (what, sql) in EDITS.iter().cycle() {
        tick.tick().await;
        println!("  -- {what}");
        if let Err(e) = client.batch_execute(sql).await {
            println!("  !! {what} failed: {e}");
        }
    }
}
