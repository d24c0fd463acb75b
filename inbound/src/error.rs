//! Errors of the inbound API: each names the problem, maps to one HTTP
//! status and one stable `error` code in the JSON body, and is counted.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Result of the inbound crate.
pub type Result<T, E = InboundError> = std::result::Result<T, E>;

/// Why a request (or a Kafka event) was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    /// The body is not JSON.
    #[error("the body is not valid JSON: {0}")]
    MalformedJson(String),
    /// The body is JSON but breaks its schema.
    #[error("the body does not match schema {schema}: {message} (at {path})")]
    SchemaViolation {
        /// Schema name and version, e.g. `monte-carlo-event.v1`.
        schema: String,
        /// JSON pointer of the offending value.
        path: String,
        /// What is wrong there.
        message: String,
    },
    /// The body is larger than `api.body_limit_bytes`.
    #[error("the body is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// No credential was sent.
    #[error("missing credentials: {0}")]
    Unauthenticated(String),
    /// A credential was sent and is not valid.
    #[error("invalid credentials: {0}")]
    BadCredentials(String),
    /// A signed webhook without a signature header.
    #[error("missing signature: the {0} header is required")]
    MissingSignature(&'static str),
    /// A signed webhook whose signature does not match.
    #[error("bad signature: {0} does not match the body signed with the tenant's secret")]
    BadSignature(&'static str),
    /// The credential is valid but does not allow this.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The tenant in the path does not exist.
    #[error("unknown tenant {0:?}")]
    UnknownTenant(String),
    /// A named thing does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The route exists, not with this method.
    #[error("method not allowed: {0}")]
    MethodNotAllowed(String),
    /// A query parameter is not what the route takes.
    #[error("bad query: {0}")]
    BadQuery(String),
    /// The body is declared as something other than JSON.
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    /// The request is well-formed but cannot be applied (a reference to an
    /// asset that does not exist, an unknown asset type, ...).
    #[error("{0}")]
    Unprocessable(String),
    /// The pre-ingest transform refused or failed on the payload.
    #[error("the pre-ingest transform {name} could not map the payload: {message}")]
    Transform {
        /// Transform name.
        name: String,
        /// What went wrong.
        message: String,
    },
    /// The tenant already has `api.tenant_concurrency` requests in
    /// progress, and none finished within `api.tenant_queue_ms`.
    #[error("tenant {tenant:?} has {limit} requests in progress; retry shortly")]
    TenantBusy {
        /// The tenant.
        tenant: String,
        /// Its limit.
        limit: usize,
    },
    /// Every metastore connection stayed busy for `api.pool_wait_ms`.
    #[error("busy: {0}")]
    Busy(String),
    /// The tenant's bulk-loaded rows waiting for promotion reached
    /// `bulk.max_backlog_rows`.
    #[error(
        "tenant {tenant:?} has {backlog} bulk-loaded rows waiting to be promoted (bulk.max_backlog_rows = {limit}); retry later"
    )]
    BacklogFull {
        /// The tenant.
        tenant: String,
        /// Rows waiting.
        backlog: i64,
        /// Its limit.
        limit: u64,
    },
    /// The body did not arrive within `api.body_timeout_ms`.
    #[error("request timeout: {0}")]
    RequestTimeout(String),
    /// The request took longer than `api.request_timeout_ms`; whatever it
    /// wrote was rolled back.
    #[error("the request took longer than {0} ms and was abandoned; nothing was written")]
    TimedOut(u64),
    /// A part of the service is not available (not configured, or its
    /// transform does not load).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The metastore failed.
    #[error("metastore error: {0}")]
    Database(String),
    /// Anything else on our side.
    #[error("internal error: {0}")]
    Internal(String),
}

impl InboundError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MalformedJson(_) => StatusCode::BAD_REQUEST,
            Self::SchemaViolation { .. } | Self::Unprocessable(_) | Self::Transform { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthenticated(_)
            | Self::BadCredentials(_)
            | Self::MissingSignature(_)
            | Self::BadSignature(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::UnknownTenant(_) | Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::BadQuery(_) => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unavailable(_) | Self::Busy(_) | Self::TimedOut(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::TenantBusy { .. } | Self::BacklogFull { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Database(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable error code of the JSON body and of the metric label.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MalformedJson(_) => "malformed_json",
            Self::SchemaViolation { .. } => "schema_violation",
            Self::TooLarge { .. } => "body_too_large",
            Self::Unauthenticated(_) => "unauthenticated",
            Self::BadCredentials(_) => "bad_credentials",
            Self::MissingSignature(_) => "missing_signature",
            Self::BadSignature(_) => "bad_signature",
            Self::Forbidden(_) => "forbidden",
            Self::UnknownTenant(_) => "unknown_tenant",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::BadQuery(_) => "bad_query",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::Unprocessable(_) => "unprocessable",
            Self::Transform { .. } => "transform_failed",
            Self::Unavailable(_) => "unavailable",
            Self::TenantBusy { .. } => "tenant_busy",
            Self::BacklogFull { .. } => "backlog_full",
            Self::Busy(_) => "busy",
            Self::RequestTimeout(_) => "request_timeout",
            Self::TimedOut(_) => "timed_out",
            Self::Database(_) => "database_error",
            Self::Internal(_) => "internal_error",
        }
    }

    /// Whether retrying the same input later can succeed (our side failed).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Database(_)
                | Self::Internal(_)
                | Self::Unavailable(_)
                | Self::Busy(_)
                | Self::TimedOut(_)
                | Self::TenantBusy { .. }
                | Self::BacklogFull { .. }
        )
    }
}

/// PostgreSQL errors: constraint violations are the caller's problem (422),
/// the rest ours.
impl From<tokio_postgres::Error> for InboundError {
    fn from(e: tokio_postgres::Error) -> Self {
        if let Some(db) = e.as_db_error() {
            let class = &db.code().code()[..2];
            // 23: integrity constraint violation; 22: data exception.
            if class == "23" || class == "22" {
                let detail = db.detail().map(|d| format!(" ({d})")).unwrap_or_default();
                return Self::Unprocessable(format!("{}{detail}", db.message()));
            }
            return Self::Database(db.message().to_owned());
        }
        Self::Database(e.to_string())
    }
}

/// The lake (bulk loads' `catalog/assets`) is ours, and retrying may work.
impl From<lily_lakehouse::LakeError> for InboundError {
    fn from(e: lily_lakehouse::LakeError) -> Self {
        Self::Unavailable(format!("the lake: {e}"))
    }
}

impl From<deadpool_postgres::PoolError> for InboundError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Timeout(_) => {
                metrics::counter!("lily_inbound_pool_timeouts_total").increment(1);
                Self::Busy("every metastore connection is in use; retry shortly".into())
            }
            e => Self::Database(format!("no metastore connection: {e}")),
        }
    }
}

impl IntoResponse for InboundError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, code = self.code(), "request failed");
        } else {
            tracing::info!(error = %self, code = self.code(), "request refused");
        }
        let mut body = json!({ "error": self.code(), "message": self.to_string() });
        if let Self::SchemaViolation { schema, path, .. } = &self {
            body["schema"] = json!(schema);
            body["path"] = json!(path);
        }
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        // Load refusals say when to come back (RFC 9110, 10.2.3).
        let retry_after = match &self {
            Self::TenantBusy { .. } | Self::Busy(_) | Self::TimedOut(_) => Some("1"),
            // A backlog drains in minutes, not seconds.
            Self::BacklogFull { .. } => Some("30"),
            _ => None,
        };
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static(seconds),
            );
        }
        // The metrics layer labels the request with this code.
        response.extensions_mut().insert(ErrorCode(self.code()));
        response
    }
}

/// The error code of a refused request, left on the response for the
/// metrics layer.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_refusals_say_when_to_come_back() {
        for e in [
            InboundError::TenantBusy {
                tenant: "a".into(),
                limit: 4,
            },
            InboundError::Busy("pool".into()),
            InboundError::TimedOut(100),
        ] {
            let r = e.into_response();
            assert_eq!(
                r.headers()
                    .get(axum::http::header::RETRY_AFTER)
                    .map(|v| v.as_bytes()),
                Some(&b"1"[..])
            );
        }
        let r = InboundError::NotFound("x".into()).into_response();
        assert!(r.headers().get(axum::http::header::RETRY_AFTER).is_none());
    }
}
