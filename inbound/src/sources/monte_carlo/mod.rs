//! Monte Carlo incident webhooks: `POST /v1/tenants/{tenant}/ingest/monte-carlo`,
//! signed with the tenant's secret (`x-mcd-signature`, HMAC-SHA512), checked
//! against `monte-carlo-event.v1`, mapped by the pre-ingest transform
//! ([`ingest`]: the rows it yields become incident updates ([`update`]) and
//! asset links ([`links`])). The Kafka source feeds the same path.

pub mod ingest;
mod links;
mod rows;
mod update;

pub use ingest::{IncidentIngest, IncidentLink, read_links};

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::error::{InboundError, Result};
use crate::server::{Body, Inbound, Tenant, header_text};
use crate::signature::{MONTE_CARLO_HEADER, verify_monte_carlo};

/// Name of the event schema.
pub const SCHEMA: &str = "monte-carlo-event.v1";

pub(super) fn routes() -> Router<Arc<Inbound>> {
    Router::new().route("/v1/tenants/{tenant}/ingest/monte-carlo", post(receive))
}

async fn receive(
    State(inbound): State<Arc<Inbound>>,
    Tenant(tenant): Tenant,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Json<Value>> {
    let Some(secret) = inbound.secrets.monte_carlo.get(tenant.as_str()) else {
        return Err(if inbound.db.tenant_exists(&tenant).await? {
            InboundError::Forbidden(format!(
                "tenant {tenant:?} has no Monte Carlo secret (monte_carlo.secrets.{tenant})"
            ))
        } else {
            InboundError::UnknownTenant(tenant.to_string())
        });
    };
    let signature = header_text(&headers, MONTE_CARLO_HEADER)
        .ok_or(InboundError::MissingSignature(MONTE_CARLO_HEADER))?;
    if !verify_monte_carlo(secret.as_bytes(), &body, signature) {
        return Err(InboundError::BadSignature(MONTE_CARLO_HEADER));
    }
    let event = inbound.json(SCHEMA, &body)?;
    let written = inbound.incidents()?.ingest(&tenant, &event).await?;
    Ok(Json(json!({ "incidents": written })))
}
