//! The inbound side of `lily run`: the HTTP API and the Kafka source, and
//! `lily api-key` to manage the keys machine senders use.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lily_config::LilyConfig;
use lily_inbound::auth::{ApiKeys, Role};
use lily_inbound::db::Metastore;
use lily_inbound::kafka::KafkaSource;
use lily_inbound::{Inbound, bind, serve};
use lily_sinks::elasticsearch::SearchCluster;
use lily_transforms::{CatalogState, TransformSet};
use tokio::sync::watch;
use tracing::error;

/// Starts the API (unless `api.listen` is empty) and the Kafka source
/// (when `kafka_source.brokers` is set); both stop when `shutdown` turns
/// true. A port that cannot be bound is an error here, at start-up.
pub async fn start(
    config: &LilyConfig,
    transforms: &TransformSet,
    state: &Arc<CatalogState>,
    search: Option<SearchCluster>,
    policies: &Arc<lily_enforcement::PolicyStore>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let api = !config.api.listen.is_empty();
    let kafka = !config.kafka_source.brokers.is_empty();
    if !api && !kafka {
        return Ok(());
    }
    let inbound = Inbound::new(
        config,
        transforms,
        state.clone(),
        search,
        Some(policies.clone()),
    )
    .await
    .context("starting the inbound API")?;
    if api {
        let addr: SocketAddr = config.api.listen.parse().context("api.listen")?;
        let listener = bind(addr).await?;
        let mut stop = shutdown.clone();
        let inbound = inbound.clone();
        tokio::spawn(async move {
            let until = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = serve(inbound, listener, until).await {
                error!(error = %e, "the API stopped");
            }
        });
    }
    if kafka {
        let source = KafkaSource::new(inbound, &config.kafka_source)?;
        tokio::spawn(async move {
            if let Err(e) = source.run(shutdown).await {
                error!(error = %e, "the Kafka source stopped");
            }
        });
    }
    Ok(())
}

/// Who runs `lily api-key`, for the key trail: `cli:<user>`.
fn cli_actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}")
}

fn api_keys(config: &LilyConfig) -> anyhow::Result<ApiKeys> {
    let db = Metastore::new(
        &config.postgres.url,
        1,
        &config.postgres.tenant_role,
        Duration::from_millis(config.api.pool_wait_ms),
    )?;
    Ok(ApiKeys::new(db, Duration::ZERO))
}

/// `lily api-key create`: prints the new key (the only time it is shown).
pub async fn create_key(
    config: &LilyConfig,
    tenant: &str,
    role: &str,
    name: &str,
) -> anyhow::Result<()> {
    let role: Role = role.parse().map_err(anyhow::Error::msg)?;
    let created = api_keys(config)?
        .create(tenant, role, name, &cli_actor())
        .await?;
    println!("{}", created.key);
    eprintln!(
        "API key {} ({role} in {tenant}) created; it is not shown again.",
        created.key_id
    );
    Ok(())
}

/// `lily api-key list`.
pub async fn list_keys(config: &LilyConfig, tenant: Option<&str>) -> anyhow::Result<()> {
    for k in api_keys(config)?.list(tenant).await? {
        println!(
            "{}\t{}\t{}\t{}{}",
            k.key_id,
            k.tenant,
            k.role,
            k.name,
            if k.revoked { "\trevoked" } else { "" }
        );
    }
    Ok(())
}

/// `lily api-key revoke`.
pub async fn revoke_key(config: &LilyConfig, key_id: &str) -> anyhow::Result<()> {
    if !api_keys(config)?.revoke(key_id, &cli_actor()).await? {
        anyhow::bail!("no API key {key_id}");
    }
    println!("revoked {key_id}");
    Ok(())
}
