//! The HTTP service: shared state, the router of every route, request
//! metrics and spans, and the body reader with its size limit.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, RawPathParams, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use lily_cdc::TenantId;
use lily_config::{LilyConfig, OktaConfig};
use lily_transforms::{CatalogState, TransformSet};
use serde_json::Value;
use tracing::{Instrument, info, info_span};

use crate::auth::{ApiKeys, Authenticator, JwtVerifier};
use crate::db::Metastore;
use crate::error::{ErrorCode, InboundError, Result};
use crate::schemas::{Schemas, parse_json};
use crate::sources::monte_carlo::IncidentIngest;

/// How long a read of the policy snapshot waits for a change being compiled.
pub const POLICY_WAIT: Duration = Duration::from_secs(5);

/// Policy long polls one tenant may hold open at once; past them, a poll
/// answers at once instead of waiting.
pub const POLICY_POLLS: usize = 256;

/// The OpenAPI description of every route, served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// What the routes share: each field is something a handler uses, not
/// the whole configuration.
pub struct Inbound {
    /// Metastore connections.
    pub db: Metastore,
    /// Credential checks.
    pub auth: Authenticator,
    /// Compiled JSON Schemas.
    pub schemas: Schemas,
    /// Monte Carlo incidents: transform and writer, or why there is none
    /// (the transform did not load; the webhook then answers 503).
    pub incidents: std::result::Result<IncidentIngest, String>,
    /// The search cluster (None without an elasticsearch sink).
    pub search: Option<lily_sinks::elasticsearch::SearchCluster>,
    /// Each tenant's webhook secrets.
    pub secrets: WebhookSecrets,
    /// What an Okta deactivation does.
    pub okta: OktaConfig,
    /// Largest request body, in bytes.
    pub body_limit_bytes: usize,
    /// Largest body of a bulk route, in bytes.
    pub bulk_body_limit_bytes: usize,
    /// How long a body may take to arrive.
    pub body_timeout: Duration,
    /// How long request headers may take to arrive.
    pub header_timeout: Duration,
    /// How long a request may take in all.
    pub request_timeout: Duration,
    /// Each tenant's request slots.
    pub slots: crate::limits::TenantSlots,
    /// Each tenant's open policy long polls (`POLICY_POLLS` at once).
    pub polls: crate::limits::TenantSlots,
    /// Asset fields only a steward or admin may change: `certificate`, and
    /// every attribute lineage propagates (`propagation.attributes`).
    pub governed_asset_fields: Vec<String>,
    /// The SQL endpoint's settings: what each tenant may register as
    /// governed tables (`sql.tenant_sources`).
    pub sql: lily_config::SqlConfig,
    /// Where bulk uploads put columns, and the backlog they may leave.
    pub bulk: crate::bulk::LakeLane,
    /// The policy snapshot the pipeline keeps current (None: no pipeline
    /// in this process; the policy and Trino routes answer 503).
    pub policies: Option<Arc<lily_enforcement::PolicyStore>>,
    /// How Trino's names and identities map onto tenants.
    pub trino: lily_config::TrinoConfig,
}

/// Each tenant's webhook signing secrets, by source.
#[derive(Debug, Clone, Default)]
pub struct WebhookSecrets {
    /// Monte Carlo's (`monte_carlo.secrets`).
    pub monte_carlo: BTreeMap<String, String>,
    /// JIRA's (`jira.secrets`).
    pub jira: BTreeMap<String, String>,
}

impl Inbound {
    /// Everything the routes need: connection pool, JWKS, schemas, the
    /// Monte Carlo pre-ingest transform planned from `transforms`, and the
    /// cluster the search API queries.
    pub async fn new(
        config: &LilyConfig,
        transforms: &TransformSet,
        state: Arc<CatalogState>,
        search: Option<lily_sinks::elasticsearch::SearchCluster>,
        policies: Option<Arc<lily_enforcement::PolicyStore>>,
    ) -> Result<Arc<Self>> {
        let pool_wait = Duration::from_millis(config.api.pool_wait_ms);
        let db = Metastore::new(
            &config.postgres.url,
            config.api.pool_size,
            &config.postgres.tenant_role,
            pool_wait,
        )?;
        // API keys are looked up on connections of their own, so writes
        // that hold every pooled connection cannot stall authentication.
        let key_db = Metastore::new(
            &config.postgres.url,
            2,
            &config.postgres.tenant_role,
            pool_wait,
        )?;
        let auth = Authenticator::new(
            JwtVerifier::new(&config.auth)?,
            ApiKeys::new(key_db, Duration::from_millis(config.api.api_key_cache_ms)),
        );
        let incidents = IncidentIngest::new(db.clone(), transforms, state, &config.monte_carlo)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "Monte Carlo incidents cannot be received");
                format!(
                    "the pre-ingest transform {} is not loaded; see `lily transforms check`",
                    config.monte_carlo.transform
                )
            });
        Ok(Arc::new(Self {
            db,
            auth,
            schemas: Schemas::compile()?,
            incidents,
            search,
            secrets: WebhookSecrets {
                monte_carlo: config.monte_carlo.secrets.clone(),
                jira: config.jira.secrets.clone(),
            },
            okta: config.okta.clone(),
            body_limit_bytes: config.api.body_limit_bytes,
            bulk_body_limit_bytes: config.api.bulk_body_limit_bytes,
            body_timeout: Duration::from_millis(config.api.body_timeout_ms),
            header_timeout: Duration::from_millis(config.api.header_timeout_ms),
            request_timeout: Duration::from_millis(config.api.request_timeout_ms),
            slots: crate::limits::TenantSlots::new(
                config.api.tenant_concurrency,
                Duration::from_millis(config.api.tenant_queue_ms),
            ),
            polls: crate::limits::TenantSlots::new(POLICY_POLLS, Duration::ZERO),
            sql: config.sql.clone(),
            policies,
            trino: config.trino.clone(),
            bulk: crate::bulk::LakeLane {
                location: if config.bulk.lake_lane {
                    Some(
                        lily_sinks::builtin::lake_location(config)
                            .map_err(|e| InboundError::Internal(e.to_string()))?,
                    )
                } else {
                    None
                },
                max_backlog: config.bulk.max_backlog_rows,
            },
            governed_asset_fields: {
                let mut fields = vec!["certificate".to_owned()];
                for a in &config.propagation.attributes {
                    if !fields.contains(&a.name) {
                        fields.push(a.name.clone());
                    }
                }
                fields
            },
        }))
    }

    /// The policy store, or 503 when this process keeps none.
    pub fn policy_store(&self) -> Result<&Arc<lily_enforcement::PolicyStore>> {
        self.policies.as_ref().ok_or_else(|| {
            InboundError::Unavailable("the policy snapshot is not kept by this process".into())
        })
    }

    /// The current policy snapshot. While a change is being compiled it
    /// waits up to `POLICY_WAIT` for it, then 503: a decision is never made
    /// from a snapshot known to be stale (fail closed).
    pub async fn policy_snapshot(&self) -> Result<Arc<lily_enforcement::policy::PolicySnapshot>> {
        self.policy_store()?
            .current(POLICY_WAIT)
            .await
            .map_err(|e| InboundError::Unavailable(e.to_string()))
    }

    /// The incident writer, or why there is none.
    pub fn incidents(&self) -> Result<&IncidentIngest> {
        self.incidents
            .as_ref()
            .map_err(|why| InboundError::Unavailable(why.clone()))
    }

    /// Parses `body` as JSON and checks it against the schema `schema`.
    pub fn json(&self, schema: &str, body: &[u8]) -> Result<Value> {
        let value = parse_json(body)?;
        self.schemas.validate(schema, &value)?;
        Ok(value)
    }
}

/// Refuses a tenant name that cannot exist (the metastore's own rule), so
/// it never reaches a query; the checked id names its indices and topics.
pub fn check_tenant(tenant: &str) -> Result<TenantId> {
    TenantId::parse(tenant).map_err(|e| InboundError::UnknownTenant(e.0))
}

/// The `{tenant}` of a route, checked once: a name that cannot be a tenant
/// is refused before anything reads it, and the checked id names what the
/// handler touches.
pub struct Tenant(pub TenantId);

impl<S: Send + Sync> FromRequestParts<S> for Tenant {
    type Rejection = InboundError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self> {
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|e| InboundError::Internal(format!("route parameters: {e}")))?;
        let raw = params
            .iter()
            .find(|(name, _)| *name == "tenant")
            .map(|(_, value)| value.to_owned())
            .ok_or_else(|| InboundError::Internal("the route has no {tenant}".into()))?;
        Ok(Tenant(check_tenant(&raw)?))
    }
}

/// A route's query parameters; a bad one is a JSON `400 bad_query`, not
/// the framework's plain text.
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = InboundError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(q)| Query(q))
            .map_err(|e| InboundError::BadQuery(e.body_text()))
    }
}

/// A paging parameter: `default` when absent, else within `range` (as
/// the description declares it), or 400 `bad_query` naming it.
pub fn in_range(
    name: &str,
    value: Option<i64>,
    default: i64,
    range: std::ops::RangeInclusive<i64>,
) -> Result<i64> {
    match value {
        None => Ok(default),
        Some(v) if range.contains(&v) => Ok(v),
        Some(v) => Err(InboundError::BadQuery(format!(
            "{name}={v}: give {} to {}",
            range.start(),
            range.end()
        ))),
    }
}

/// A request body, read up to `api.body_limit_bytes`. A body declared as
/// anything but JSON is refused (415): every body route takes JSON.
pub struct Body(pub Bytes);

impl FromRequest<Arc<Inbound>> for Body {
    type Rejection = InboundError;

    async fn from_request(req: Request, state: &Arc<Inbound>) -> Result<Self> {
        read_body(req, state, state.body_limit_bytes)
            .await
            .map(Body)
    }
}

/// The body of a bulk route (DataHub's batches), read up to
/// `api.bulk_body_limit_bytes`; otherwise as [`Body`].
pub struct BulkBody(pub Bytes);

impl FromRequest<Arc<Inbound>> for BulkBody {
    type Rejection = InboundError;

    async fn from_request(req: Request, state: &Arc<Inbound>) -> Result<Self> {
        read_body(req, state, state.bulk_body_limit_bytes)
            .await
            .map(BulkBody)
    }
}

async fn read_body(req: Request, state: &Arc<Inbound>, limit: usize) -> Result<Bytes> {
    if let Some(declared) = req.headers().get(header::CONTENT_TYPE) {
        let media = declared
            .to_str()
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let json = media == "application/json"
            || (media.starts_with("application/") && media.ends_with("+json"));
        if !json {
            return Err(InboundError::UnsupportedMediaType(format!(
                "the body is declared as {media:?}; send application/json"
            )));
        }
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(InboundError::TooLarge { limit });
    }
    let timeout = state.body_timeout;
    tokio::time::timeout(timeout, axum::body::to_bytes(req.into_body(), limit))
        .await
        .map_err(|_| {
            InboundError::RequestTimeout(format!(
                "the body did not arrive within {} ms",
                timeout.as_millis()
            ))
        })?
        .map_err(|e| {
            if e.to_string().contains("length limit") {
                InboundError::TooLarge { limit }
            } else {
                InboundError::MalformedJson(format!("the body could not be read: {e}"))
            }
        })
}

/// A header's text, if present.
pub fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Every route.
pub fn router(inbound: Arc<Inbound>) -> Router {
    Router::new()
        .merge(crate::catalog::routes())
        .merge(crate::sources::routes())
        .route(
            "/v1/tenants/{tenant}/trino/{decision}",
            axum::routing::post(crate::trino::decide_route),
        )
        .route(
            "/v1/tenants/{tenant}/trino/{decision}/{key}",
            axum::routing::post(crate::trino::decide_route),
        )
        .route_layer(middleware::from_fn_with_state(
            inbound.request_timeout,
            deadline,
        ))
        // A bulk upload runs as long as its body keeps coming (each part
        // within `api.body_timeout_ms`), and a policy long poll as long as
        // its `wait`, not within the request deadline.
        .merge(crate::catalog::upload_routes())
        .route_layer(middleware::from_fn(track))
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        // The JSON Schemas the description refers to (`schemas/<name>.json`),
        // so the served description resolves on its own.
        .route(
            "/schemas/{file}",
            get(
                |axum::extract::Path(file): axum::extract::Path<String>| async move {
                    crate::schemas::SCHEMAS
                        .iter()
                        .find(|(name, _)| file.strip_suffix(".json") == Some(name))
                        .map(|(_, text)| {
                            ([(header::CONTENT_TYPE, "application/schema+json")], *text)
                        })
                        .ok_or_else(|| InboundError::NotFound(format!("no schema {file}")))
                },
            ),
        )
        // Every refusal is JSON with a stable code, the framework's too.
        .fallback(|req: Request| async move {
            InboundError::NotFound(format!("no route {}", req.uri().path()))
        })
        .method_not_allowed_fallback(|req: Request| async move {
            InboundError::MethodNotAllowed(format!("{} {}", req.method(), req.uri().path()))
        })
        .with_state(inbound)
}

/// Abandons a request that runs past `api.request_timeout_ms`: its
/// future is dropped, so an open transaction rolls back and its
/// connection and tenant slot go back.
async fn deadline(
    axum::extract::State(limit): axum::extract::State<Duration>,
    req: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => InboundError::TimedOut(limit.as_millis() as u64).into_response(),
    }
}

/// Counts and times every request by route and outcome, inside a span.
async fn track(matched: Option<MatchedPath>, req: Request, next: Next) -> Response {
    let route = matched
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().as_str().to_owned();
    let span = info_span!("request", method = %method, route = %route);
    let started = Instant::now();
    let response = next.run(req).instrument(span).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!("lily_inbound_request_duration_seconds", "route" => route.clone(), "method" => method.clone())
        .record(started.elapsed().as_secs_f64());
    if let Some(ErrorCode(code)) = response.extensions().get::<ErrorCode>() {
        metrics::counter!("lily_inbound_rejected_total", "route" => route.clone(), "reason" => *code)
            .increment(1);
    }
    metrics::counter!("lily_inbound_requests_total", "route" => route, "method" => method, "status" => status)
        .increment(1);
    response.into_response()
}

/// Binds the API's address (so a taken port fails `lily run` at once).
pub async fn bind(listen: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| InboundError::Internal(format!("cannot listen on {listen}: {e}")))
}

/// Serves the API on `listener` until `shutdown` completes, then lets the
/// requests in progress finish. Each connection has `api.header_timeout_ms`
/// to send a request's headers (hyper closes slower ones), so idle or
/// trickling connections cannot pile up.
pub async fn serve(
    inbound: Arc<Inbound>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    if let Ok(addr) = listener.local_addr() {
        info!(listen = %addr, "API listening");
    }
    let header_timeout = inbound.header_timeout;
    let app = router(inbound);
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: back off.
                        tracing::warn!(error = %e, "accepting an API connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                let mut stopping = stopping.clone();
                connections.spawn(async move {
                    let connection = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(header_timeout)
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                    tokio::pin!(connection);
                    let result = tokio::select! {
                        r = connection.as_mut() => r,
                        _ = stopping.changed() => {
                            connection.as_mut().graceful_shutdown();
                            connection.await
                        }
                    };
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "API connection closed");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    let _ = stop.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}
