//! Monte Carlo incident webhooks: `POST /v1/tenants/{tenant}/ingest/monte-carlo`,
//! signed with the tenant's secret (`x-mcd-signature`, HMAC-SHA512), checked
//! against `monte-carlo-event.v1`, mapped by the pre-ingest transform
//! ([`ingest`]: the rows it yields become incident updates ([`update`]) and
//! asset links ([`links`])). The Kafka source feeds the same path.

pub mod ingest;
mod links;
mod rows;
mod update;
mod write;

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
    // Unknown tenant, tenant without a secret, wrong signature: the same
    // 401, so tenants cannot be enumerated without a secret.
    let refused = || InboundError::BadSignature(MONTE_CARLO_HEADER);
    let signature = header_text(&headers, MONTE_CARLO_HEADER)
        .ok_or(InboundError::MissingSignature(MONTE_CARLO_HEADER))?
        .to_owned();
    let secret = inbound
        .secrets
        .monte_carlo
        .get(tenant.as_str())
        .filter(|s| !s.is_empty())
        .ok_or_else(refused)?
        .clone();
    // Checked before anything is known of the sender: bounded work
    // (python_form), and off the async workers.
    let signed = body.clone();
    let verified = tokio::task::spawn_blocking(move || {
        verify_monte_carlo(secret.as_bytes(), &signed, &signature)
    })
    .await
    .map_err(|e| InboundError::Internal(format!("verifying a signature: {e}")))?;
    if !verified {
        return Err(refused());
    }
    let _slot = inbound.slots.enter(&tenant).await?;
    let event = inbound.json(SCHEMA, &body)?;
    let written = inbound.incidents()?.ingest(&tenant, &event).await?;
    Ok(Json(json!({ "incidents": written })))
}
