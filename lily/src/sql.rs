//! The SQL endpoint of `lily run`: sessions authenticate with the API's
//! credentials (API keys and JWTs), read the tenant's governed tables, and
//! see them masked by the policy snapshot the pipeline keeps current.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use lily_config::LilyConfig;
use lily_enforcement::{
    CredentialError, Credentials, EndpointConfig, Identity, PolicyStore, Sources, SqlEndpoint,
};
use lily_inbound::InboundError;
use lily_inbound::auth::{Action, ApiKeys, Authenticator, JwtVerifier};
use lily_inbound::db::Metastore;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

/// The API's credential checks, for SQL sessions.
struct ApiCredentials(Authenticator);

#[async_trait]
impl Credentials for ApiCredentials {
    async fn verify(&self, password: &str) -> Result<Identity, CredentialError> {
        match self.0.verify_credential(password).await {
            Ok(caller) => Ok(Identity {
                subject: caller.subject.clone(),
                grants: caller
                    .grants
                    .iter()
                    .map(|g| (g.tenant.clone(), g.role.as_str().to_owned()))
                    .chain(caller.named_roles.iter().cloned())
                    .collect(),
                readable: caller
                    .grants
                    .iter()
                    .filter(|g| caller.may(&g.tenant, Action::Read))
                    .map(|g| g.tenant.clone())
                    .collect(),
            }),
            Err(e @ (InboundError::BadCredentials(_) | InboundError::Unauthenticated(_))) => {
                Err(CredentialError::Invalid(e.to_string()))
            }
            Err(e) => Err(CredentialError::Unavailable(e.to_string())),
        }
    }
}

/// Starts the SQL endpoint unless `sql.listen` is empty; it stops when
/// `shutdown` turns true. Returns the address it listens on, and the task
/// to await after shutdown (it writes the last of the query audit).
pub async fn start(
    config: &LilyConfig,
    policies: &Arc<PolicyStore>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Option<(SocketAddr, JoinHandle<()>)>> {
    if config.sql.listen.is_empty() {
        return Ok(None);
    }
    let listen: SocketAddr = config.sql.listen.parse().context("sql.listen")?;
    // Its own small pool: sessions authenticating never wait behind API writes.
    let db = Metastore::new(
        &config.postgres.url,
        2,
        &config.postgres.tenant_role,
        Duration::from_millis(config.api.pool_wait_ms),
    )?;
    let auth = Authenticator::new(
        JwtVerifier::new(&config.auth)?,
        ApiKeys::new(db, Duration::from_millis(config.api.api_key_cache_ms)),
    );
    let sources = Arc::new(Sources::new(&config.sql)?);
    let lake = lily_sinks::builtin::lake_location(config)?;
    let endpoint = SqlEndpoint::bind(
        EndpointConfig {
            listen,
            max_connections: config.sql.max_connections,
            tenant_connections: config.sql.tenant_connections,
            tls: (!config.sql.tls_cert_file.is_empty()).then(|| {
                (
                    config.sql.tls_cert_file.clone().into(),
                    config.sql.tls_key_file.clone().into(),
                )
            }),
            statement_timeout: (config.sql.statement_timeout_ms > 0)
                .then(|| Duration::from_millis(config.sql.statement_timeout_ms)),
            audit_flush: Duration::from_millis(config.sql.audit_flush_ms),
            // As long as the API trusts a checked API key.
            credential_recheck: Duration::from_millis(config.api.api_key_cache_ms),
            lake,
        },
        Arc::new(ApiCredentials(auth)),
        policies.clone(),
        sources,
    )
    .await?;
    let addr = endpoint.local_addr()?;
    info!(%addr, "SQL endpoint started");
    Ok(Some((addr, tokio::spawn(endpoint.serve(shutdown)))))
}
