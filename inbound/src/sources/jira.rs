//! JIRA webhooks: `POST /v1/tenants/{tenant}/ingest/jira`. JIRA signs with
//! the webhook's secret (`X-Hub-Signature: sha256=...`, `[jira] secrets`);
//! an API key or token with role ingest also works. An issue whose status
//! reaches the Done category resolves the incidents it is linked to
//! (`POST /incidents/{id}/tickets`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::info;

use crate::auth::{Action, Caller};
use crate::error::{InboundError, Result};
use crate::server::{Body, Inbound, Tenant, header_text};
use crate::signature::{HUB_HEADER, verify_hub_sha256};

pub(super) fn routes() -> Router<Arc<Inbound>> {
    Router::new().route("/v1/tenants/{tenant}/ingest/jira", post(receive))
}

#[derive(Deserialize)]
struct Webhook {
    #[serde(rename = "webhookEvent")]
    webhook_event: String,
    issue: Option<Issue>,
}

#[derive(Deserialize)]
struct Issue {
    key: String,
    #[serde(default)]
    fields: Option<Fields>,
}

#[derive(Deserialize)]
struct Fields {
    status: Option<Status>,
}

#[derive(Deserialize)]
struct Status {
    name: Option<String>,
    #[serde(rename = "statusCategory")]
    category: Option<Category>,
}

#[derive(Deserialize)]
struct Category {
    key: Option<String>,
}

impl Issue {
    /// Whether the issue is done: its status category is `done` (JIRA's
    /// own grouping of Done, Closed, Resolved, ...), or, without a
    /// category, its status is named Done.
    fn is_done(&self) -> bool {
        let Some(status) = self.fields.as_ref().and_then(|f| f.status.as_ref()) else {
            return false;
        };
        match status.category.as_ref().and_then(|c| c.key.as_deref()) {
            Some(key) => key.eq_ignore_ascii_case("done"),
            None => status
                .name
                .as_deref()
                .is_some_and(|n| n.eq_ignore_ascii_case("done")),
        }
    }
}

async fn receive(
    State(inbound): State<Arc<Inbound>>,
    Tenant(tenant): Tenant,
    headers: HeaderMap,
    caller: Result<Caller, InboundError>,
    Body(body): Body,
) -> Result<Json<Value>> {
    // Held until the request ends.
    let _slot = match header_text(&headers, HUB_HEADER) {
        Some(signature) => {
            let secret = inbound
                .secrets
                .jira
                .get(tenant.as_str())
                .ok_or(InboundError::BadSignature(HUB_HEADER))?;
            if !verify_hub_sha256(secret.as_bytes(), &body, signature) {
                return Err(InboundError::BadSignature(HUB_HEADER));
            }
            Some(inbound.slots.enter(&tenant).await?)
        }
        None => {
            let caller = caller?;
            caller.require(&tenant, Action::Ingest)?;
            caller.slot
        }
    };
    let hook: Webhook = serde_json::from_value(inbound.json("jira-webhook.v1", &body)?)
        .map_err(|e| InboundError::Unprocessable(e.to_string()))?;
    let Some(issue) = hook.issue else {
        return Ok(Json(json!({ "event": hook.webhook_event, "resolved": [] })));
    };
    let done = issue.is_done();
    let mut conn = inbound.db.connection().await?;
    let tx = inbound.db.tenant_transaction(&mut conn, &tenant).await?;
    let mut resolved: Vec<String> = Vec::new();
    if done {
        resolved = tx
            .query(
                "UPDATE metastore.incidents SET state = 'resolved'
                  WHERE tenant_id = $1 AND state <> 'resolved'
                    AND incident_id IN (SELECT incident_id FROM metastore.incident_tickets
                                         WHERE tenant_id = $1 AND system = 'jira' AND ticket_key = $2)
                  RETURNING external_id",
                &[&tenant, &issue.key],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
    }
    tx.commit().await?;
    if !resolved.is_empty() {
        info!(tenant = %tenant, issue = %issue.key, incidents = resolved.len(), "JIRA issue done: incidents resolved");
        metrics::counter!("lily_inbound_incidents_total", "outcome" => "resolved_by_ticket")
            .increment(resolved.len() as u64);
    }
    Ok(Json(json!({
        "event": hook.webhook_event,
        "issue": issue.key,
        "done": done,
        "resolved": resolved,
    })))
}
