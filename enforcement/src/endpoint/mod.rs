//! The SQL endpoint: the PostgreSQL wire protocol (pgwire, through
//! datafusion-postgres's query handlers and `pg_catalog`), one DataFusion
//! session per connection holding its tenant's governed tables, masked by
//! the policy snapshot current at each statement, every statement on
//! governed data audited to `audit/queries`.

mod auth;
mod connection;
mod statements;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use lily_lakehouse::{LakeLocation, QueryAuditLog, QueryRecord};
use pgwire::api::PgWireServerHandlers;
use pgwire::api::auth::StartupHandler;
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::tokio::{TlsAcceptor, process_socket};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tracing::{debug, error, info, warn};

pub use auth::{CredentialError, Credentials, Identity};

use crate::error::{EnforcementError, Result};
use crate::governed::Sources;
use crate::policy::PolicyStore;
use connection::{Connection, Queries};

/// What every connection shares.
pub struct Endpoint {
    credentials: Arc<dyn Credentials>,
    policies: Arc<PolicyStore>,
    sources: Arc<Sources>,
    audit: mpsc::UnboundedSender<QueryRecord>,
    statement_timeout: Option<Duration>,
    policy_wait: Duration,
    pids: AtomicI32,
    tenant_connections: usize,
    tenant_slots: std::sync::Mutex<HashMap<String, Arc<Semaphore>>>,
    tls_required: bool,
    credential_recheck: Duration,
}

impl Endpoint {
    fn next_pid(&self) -> i32 {
        self.pids.fetch_add(1, Ordering::Relaxed)
    }

    /// One of `tenant`'s connection slots, if one is free.
    fn tenant_slot(&self, tenant: &str) -> Option<OwnedSemaphorePermit> {
        let semaphore = {
            let mut slots = match self.tenant_slots.lock() {
                Ok(s) => s,
                Err(p) => p.into_inner(),
            };
            slots
                .entry(tenant.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(self.tenant_connections)))
                .clone()
        };
        semaphore.try_acquire_owned().ok()
    }
}

/// The handlers of one connection.
struct Handlers {
    startup: Arc<auth::LilyStartup>,
    queries: Arc<Queries>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.queries.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.queries.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }
}

/// How the endpoint is set up.
pub struct EndpointConfig {
    /// Where it listens.
    pub listen: SocketAddr,
    /// Connections served at once.
    pub max_connections: usize,
    /// Connections one tenant may hold.
    pub tenant_connections: usize,
    /// PEM certificate chain and key: TLS offered and required.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Longest statement; `None`: no limit.
    pub statement_timeout: Option<Duration>,
    /// How often the query audit is written.
    pub audit_flush: Duration,
    /// How long a session's credential is trusted before its next
    /// statement checks it again (a revoked key, an expired token).
    pub credential_recheck: Duration,
    /// The lake the query audit is written to.
    pub lake: LakeLocation,
}

/// A bound endpoint, not yet serving.
pub struct SqlEndpoint {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    endpoint: Arc<Endpoint>,
    max_connections: usize,
    audit_rx: mpsc::UnboundedReceiver<QueryRecord>,
    audit_log: QueryAuditLog,
    audit_flush: Duration,
}

impl SqlEndpoint {
    /// Binds `config.listen` and opens the query audit table.
    pub async fn bind(
        config: EndpointConfig,
        credentials: Arc<dyn Credentials>,
        policies: Arc<PolicyStore>,
        sources: Arc<Sources>,
    ) -> Result<Self> {
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| EnforcementError::Config(format!("sql.listen {}: {e}", config.listen)))?;
        let audit_log = QueryAuditLog::open(&config.lake)
            .await
            .map_err(|e| EnforcementError::Config(format!("the query audit table: {e}")))?;
        let (audit, audit_rx) = mpsc::unbounded_channel();
        let tls = config.tls.clone();
        let acceptor = match &config.tls {
            Some((cert, key)) => Some(tls_acceptor(cert, key)?),
            None => None,
        };
        Ok(Self {
            tls: acceptor,
            listener,
            endpoint: Arc::new(Endpoint {
                credentials,
                policies,
                sources,
                audit,
                statement_timeout: config.statement_timeout,
                policy_wait: Duration::from_secs(5),
                pids: AtomicI32::new(1000),
                tenant_connections: config.tenant_connections,
                tenant_slots: std::sync::Mutex::new(HashMap::new()),
                tls_required: tls.is_some(),
                credential_recheck: config.credential_recheck,
            }),
            max_connections: config.max_connections,
            audit_rx,
            audit_log,
            audit_flush: config.audit_flush,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown`; the audit is flushed before it returns.
    pub async fn serve(self, mut shutdown: watch::Receiver<bool>) {
        let SqlEndpoint {
            listener,
            tls,
            endpoint,
            max_connections,
            audit_rx,
            audit_log,
            audit_flush,
        } = self;
        let audit = tokio::spawn(write_audit(
            audit_rx,
            audit_log,
            audit_flush,
            shutdown.clone(),
        ));
        let slots = Arc::new(Semaphore::new(max_connections));
        info!(addr = ?listener.local_addr().ok(), "SQL endpoint listening");
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.changed() => break,
            };
            let (socket, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "SQL endpoint: accept failed");
                    continue;
                }
            };
            let _ = socket.set_nodelay(true);
            let slot = slots.clone().try_acquire_owned().ok();
            let refused = slot.is_none().then(|| {
                metrics::counter!("lily_sql_connections_refused_total").increment(1);
                (
                    "53300".to_owned(),
                    format!(
                        "sorry, too many clients already ({max_connections}, sql.max_connections)"
                    ),
                )
            });
            let conn = Arc::new(Connection::new(endpoint.clone(), refused));
            let handlers = Arc::new(Handlers {
                startup: Arc::new(auth::LilyStartup::new(conn.clone())),
                queries: Arc::new(Queries { conn }),
            });
            let tls = tls.clone();
            tokio::spawn(async move {
                let _slot = slot;
                metrics::gauge!("lily_sql_connections").increment(1.0);
                if let Err(e) = process_socket(socket, tls, handlers).await {
                    debug!(%peer, error = %e, "SQL connection ended with an error");
                }
                metrics::gauge!("lily_sql_connections").decrement(1.0);
            });
        }
        drop(endpoint);
        let _ = audit.await;
    }
}

/// A TLS acceptor from PEM files (rustls with the ring provider, as every
/// other TLS connection of Lily).
fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let err = |what: &str, e: &dyn std::fmt::Display| {
        EnforcementError::Config(format!("sql TLS {what}: {e}"))
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| err(&format!("certificate {}", cert.display()), &e))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| err(&format!("key {}", key.display()), &e))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| err("protocol versions", &e))?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| err("certificate and key", &e))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// How long the audit writer keeps trying at shutdown.
const AUDIT_DRAIN: Duration = Duration::from_secs(10);

/// Writes audit records every `every`; at shutdown, writes what has
/// arrived (trying for up to [`AUDIT_DRAIN`]) and stops.
async fn write_audit(
    mut rx: mpsc::UnboundedReceiver<QueryRecord>,
    mut log: QueryAuditLog,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut pending: Vec<QueryRecord> = Vec::new();
    let mut tick = tokio::time::interval(every);
    let mut open = true;
    let mut drain_until: Option<tokio::time::Instant> = None;
    while open || !pending.is_empty() {
        if drain_until.is_some_and(|d| tokio::time::Instant::now() > d) {
            error!(
                records = pending.len(),
                "the query audit could not be written before shutdown"
            );
            return;
        }
        tokio::select! {
            r = rx.recv(), if open => match r {
                Some(r) => { pending.push(r); continue; }
                None => open = false,
            },
            _ = shutdown.wait_for(|s| *s), if drain_until.is_none() => {
                // Statements still streaming are not waited for.
                while let Ok(r) = rx.try_recv() {
                    pending.push(r);
                }
                open = false;
                drain_until = Some(tokio::time::Instant::now() + AUDIT_DRAIN);
            },
            _ = tick.tick() => {}
        }
        if pending.is_empty() {
            continue;
        }
        match log.append(&pending).await {
            Ok(()) => {
                metrics::counter!("lily_sql_audited_total").increment(pending.len() as u64);
                pending.clear();
            }
            Err(e) => {
                metrics::counter!("lily_errors_total", "stage" => "sql", "kind" => "audit")
                    .increment(1);
                error!(error = %e, records = pending.len(), "the query audit could not be written; retrying");
                if !open {
                    tokio::time::sleep(every).await;
                }
            }
        }
    }
}
