//! Okta Event Hooks: `/v1/tenants/{tenant}/ingest/okta`. Okta sends the
//! tenant's API key (role ingest) in its Authorization header. `GET`
//! answers the one-time verification challenge; `POST` delivers System Log
//! events, of which user deactivation and deletion change the catalog: the
//! user is removed as an owner of their assets, or flagged
//! (`[okta] on_deactivate`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use lily_config::DeactivatedOwner;
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::info;

use crate::auth::{Action, Caller};
use crate::error::{InboundError, Result};
use crate::server::{Body, Inbound, Tenant, header_text};

/// The header Okta's verification request carries.
pub const CHALLENGE_HEADER: &str = "x-okta-verification-challenge";

/// Event types after which a user owns nothing any more.
const DEACTIVATING: &[&str] = &[
    "user.lifecycle.deactivate",
    "user.lifecycle.delete.initiated",
];

pub(super) fn routes() -> Router<Arc<Inbound>> {
    Router::new().route(
        "/v1/tenants/{tenant}/ingest/okta",
        get(verify).post(receive),
    )
}

#[derive(Deserialize)]
struct Delivery {
    data: Data,
}

#[derive(Deserialize)]
struct Data {
    events: Vec<Event>,
}

#[derive(Deserialize)]
struct Event {
    #[serde(rename = "eventType")]
    event_type: String,
    #[serde(default)]
    target: Option<Vec<Target>>,
}

#[derive(Deserialize)]
struct Target {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(rename = "alternateId", default)]
    alternate_id: Option<String>,
}

async fn verify(Tenant(tenant): Tenant, caller: Caller, headers: HeaderMap) -> Result<Json<Value>> {
    caller.require(&tenant, Action::Ingest)?;
    let challenge = header_text(&headers, CHALLENGE_HEADER).ok_or_else(|| {
        InboundError::Unprocessable(format!("the {CHALLENGE_HEADER} header is missing"))
    })?;
    Ok(Json(json!({ "verification": challenge })))
}

const REMOVE: &str = "
UPDATE metastore.assets
   SET owners = ARRAY(SELECT o FROM unnest(owners) AS o WHERE lower(o) <> lower($2))
 WHERE tenant_id = $1 AND EXISTS (SELECT 1 FROM unnest(owners) AS o WHERE lower(o) = lower($2))";

const FLAG: &str = "
UPDATE metastore.assets
   SET attributes = jsonb_set(attributes, '{deactivated_owners}',
                              coalesce(attributes->'deactivated_owners', '[]') || to_jsonb($2::text))
 WHERE tenant_id = $1 AND EXISTS (SELECT 1 FROM unnest(owners) AS o WHERE lower(o) = lower($2))
   AND NOT coalesce(attributes->'deactivated_owners', '[]') ? $2";

async fn receive(
    State(inbound): State<Arc<Inbound>>,
    Tenant(tenant): Tenant,
    caller: Caller,
    Body(body): Body,
) -> Result<Json<Value>> {
    caller.require(&tenant, Action::Ingest)?;
    let delivery: Delivery = serde_json::from_value(inbound.json("okta-event-hook.v1", &body)?)
        .map_err(|e| InboundError::Unprocessable(e.to_string()))?;
    let users: Vec<String> = delivery
        .data
        .events
        .iter()
        .filter(|e| DEACTIVATING.contains(&e.event_type.as_str()))
        .flat_map(|e| e.target.iter().flatten())
        .filter(|t| t.kind.as_deref() == Some("User"))
        .filter_map(|t| t.alternate_id.clone())
        .collect::<std::collections::BTreeSet<String>>()
        .into_iter()
        .collect();
    let sql = match inbound.okta.on_deactivate {
        DeactivatedOwner::Remove => REMOVE,
        DeactivatedOwner::Flag => FLAG,
    };
    let mut conn = inbound.db.connection().await?;
    let tx = inbound.db.tenant_transaction(&mut conn, &tenant).await?;
    let mut assets = 0;
    for user in &users {
        assets += tx.execute(sql, &[&tenant, user]).await?;
    }
    tx.commit().await?;
    if !users.is_empty() {
        info!(
            tenant = %tenant,
            users = users.len(),
            assets,
            "deactivated Okta users handled"
        );
    }
    metrics::counter!("lily_inbound_okta_events_total")
        .increment(delivery.data.events.len() as u64);
    Ok(Json(json!({
        "events": delivery.data.events.len(),
        "deactivated_users": users,
        "assets_updated": assets,
    })))
}
