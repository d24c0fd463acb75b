//! `/v1/tenants/{tenant}/api-keys`: a tenant admin's API keys.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{Action, Caller, Role};
use crate::error::{InboundError, Result};
use crate::server::{Body, Inbound, Tenant};

#[derive(Deserialize)]
struct NewKey {
    role: String,
    name: String,
}

/// `POST`: creates a key; the response is the only time it is shown.
pub async fn create(
    State(inbound): State<Arc<Inbound>>,
    Tenant(tenant): Tenant,
    caller: Caller,
    Body(body): Body,
) -> Result<Json<Value>> {
    caller.require(&tenant, Action::Administer)?;
    let value = crate::schemas::parse_json(&body)?;
    let NewKey { role, name } = serde_json::from_value(value).map_err(|e| {
        InboundError::Unprocessable(format!("expected {{\"role\": ..., \"name\": ...}}: {e}"))
    })?;
    let role: Role = role.parse().map_err(InboundError::Unprocessable)?;
    let created = inbound
        .auth
        .api_keys()
        .create(&tenant, role, &name, &caller.subject)
        .await?;
    Ok(Json(
        json!({ "key_id": created.key_id, "key": created.key, "role": role.as_str(), "name": name }),
    ))
}

/// `GET`: the tenant's keys, without secrets.
pub async fn list(
    State(inbound): State<Arc<Inbound>>,
    Tenant(tenant): Tenant,
    caller: Caller,
) -> Result<Json<Value>> {
    caller.require(&tenant, Action::Administer)?;
    let keys = inbound.auth.api_keys().list(Some(&tenant)).await?;
    Ok(Json(json!({
        "api_keys": keys.iter().map(|k| json!({
            "key_id": k.key_id, "role": k.role.as_str(), "name": k.name, "revoked": k.revoked,
        })).collect::<Vec<_>>()
    })))
}

/// `DELETE /api-keys/{key_id}`: revokes a key of the tenant.
pub async fn revoke(
    State(inbound): State<Arc<Inbound>>,
    Tenant(tenant): Tenant,
    Path((_, key_id)): Path<(String, String)>,
    caller: Caller,
) -> Result<Json<Value>> {
    caller.require(&tenant, Action::Administer)?;
    let keys = inbound.auth.api_keys().list(Some(&tenant)).await?;
    if !keys.iter().any(|k| k.key_id == key_id) {
        return Err(InboundError::NotFound(format!("API key {key_id}")));
    }
    inbound
        .auth
        .api_keys()
        .revoke(&key_id, &caller.subject)
        .await?;
    Ok(Json(json!({ "key_id": key_id, "revoked": true })))
}
