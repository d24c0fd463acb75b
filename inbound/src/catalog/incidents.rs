//! `/v1/tenants/{tenant}/incidents`: reading incidents, and linking a
//! ticket (a JIRA issue) to one so that closing the ticket resolves it.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_postgres::Row;
use uuid::Uuid;

use super::decode;
use crate::auth::{Action, Caller};
use crate::error::{InboundError, Result};
use crate::server::{Body, Inbound, Query, Tenant, in_range};
use crate::sources::monte_carlo::read_links;

/// How many of an incident's latest events `GET /incidents/{id}` returns.
const EVENTS: i64 = 20;

/// Filters of the incident list.
#[derive(Deserialize)]
pub struct ListQuery {
    state: Option<String>,
    source_system: Option<String>,
    external_id: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

#[derive(Deserialize)]
struct TicketIn {
    system: String,
    key: String,
}

const COLUMNS: &str = "incident_id, source_system, external_id, incident_type, title, state, severity, url, version, created_at::text, updated_at::text, owner, source_status";

fn incident_json(r: &Row) -> Value {
    json!({
        "incident_id": r.get::<_, Uuid>(0),
        "source_system": r.get::<_, String>(1),
        "external_id": r.get::<_, String>(2),
        "incident_type": r.get::<_, Option<String>>(3),
        "title": r.get::<_, Option<String>>(4),
        "state": r.get::<_, String>(5),
        "severity": r.get::<_, Option<String>>(6),
        "url": r.get::<_, Option<String>>(7),
        "version": r.get::<_, i64>(8),
        "created_at": r.get::<_, String>(9),
        "updated_at": r.get::<_, String>(10),
        "owner": r.get::<_, Option<String>>(11),
        "source_status": r.get::<_, Option<String>>(12),
    })
}

/// `GET`: incidents, newest first, filtered by state, source and external
/// id, paged by `limit` (at most 1000, default 100) and `offset`.
pub async fn list(
    State(inbound): State<Arc<Inbound>>,
    Tenant(tenant): Tenant,
    Query(q): Query<ListQuery>,
    caller: Caller,
) -> Result<Json<Value>> {
    caller.require(&tenant, Action::Read)?;
    let limit = in_range("limit", q.limit, 100, 1..=1000)?;
    let offset = in_range("offset", q.offset, 0, 0..=i64::MAX)?;
    let mut conn = inbound.db.connection().await?;
    let tx = inbound.db.tenant_transaction(&mut conn, &tenant).await?;
    let rows = tx
        .query(
            &format!(
                "SELECT {COLUMNS} FROM metastore.incidents
                  WHERE tenant_id = $1 AND ($2::text IS NULL OR state = $2)
                    AND ($3::text IS NULL OR source_system = $3) AND ($4::text IS NULL OR external_id = $4)
                  ORDER BY created_at DESC, incident_id LIMIT $5 OFFSET $6"
            ),
            &[&tenant, &q.state, &q.source_system, &q.external_id, &limit, &offset],
        )
        .await?;
    tx.commit().await?;
    Ok(Json(json!({
        "incidents": rows.iter().map(incident_json).collect::<Vec<_>>(),
        "limit": limit,
        "offset": offset,
    })))
}

fn incident_id(raw: &str) -> Result<Uuid> {
    raw.parse()
        .map_err(|_| InboundError::NotFound(format!("incident {raw} (not a uuid)")))
}

/// `GET /incidents/{id}`: one incident with its assets and tickets.
pub async fn get_one(
    State(inbound): State<Arc<Inbound>>,
    Tenant(tenant): Tenant,
    Path((_, id)): Path<(String, String)>,
    caller: Caller,
) -> Result<Json<Value>> {
    caller.require(&tenant, Action::Read)?;
    let id = incident_id(&id)?;
    let mut conn = inbound.db.connection().await?;
    let tx = inbound.db.tenant_transaction(&mut conn, &tenant).await?;
    let row = tx
        .query_opt(
            &format!("SELECT {COLUMNS} FROM metastore.incidents WHERE tenant_id = $1 AND incident_id = $2"),
            &[&tenant, &id],
        )
        .await?
        .ok_or_else(|| InboundError::NotFound(format!("incident {id}")))?;
    let mut incident = incident_json(&row);
    incident["assets"] = serde_json::to_value(read_links(&tx, &tenant, id).await?)
        .map_err(|e| InboundError::Internal(e.to_string()))?;
    // The events applied to it, oldest first (the last EVENTS of them).
    incident["events"] = tx
        .query(
            "SELECT notification, received_at::text, payload FROM (
                 SELECT * FROM lily.incident_events WHERE tenant_id = $1 AND incident_id = $2
                  ORDER BY received_at DESC LIMIT $3) e
              ORDER BY received_at",
            &[&tenant, &id, &EVENTS],
        )
        .await?
        .iter()
        .map(|r| {
            json!({
                "notification": r.get::<_, Option<String>>(0),
                "received_at": r.get::<_, String>(1),
                "payload": r.get::<_, Value>(2),
            })
        })
        .collect();
    incident["tickets"] = tx
        .query(
            "SELECT system, ticket_key FROM metastore.incident_tickets
              WHERE tenant_id = $1 AND incident_id = $2 ORDER BY system, ticket_key",
            &[&tenant, &id],
        )
        .await?
        .iter()
        .map(|r| json!({"system": r.get::<_, String>(0), "key": r.get::<_, String>(1)}))
        .collect();
    tx.commit().await?;
    Ok(Json(incident))
}

/// `POST /incidents/{id}/tickets`: links a ticket to the incident.
pub async fn link_ticket(
    State(inbound): State<Arc<Inbound>>,
    Tenant(tenant): Tenant,
    Path((_, id)): Path<(String, String)>,
    caller: Caller,
    Body(body): Body,
) -> Result<Json<Value>> {
    caller.require(&tenant, Action::Ingest)?;
    let id = incident_id(&id)?;
    let TicketIn { system, key } = decode(inbound.json("ticket.v1", &body)?)?;
    let mut conn = inbound.db.connection().await?;
    let tx = inbound.db.tenant_transaction(&mut conn, &tenant).await?;
    let exists = tx
        .query_opt(
            "SELECT 1 FROM metastore.incidents WHERE tenant_id = $1 AND incident_id = $2",
            &[&tenant, &id],
        )
        .await?
        .is_some();
    if !exists {
        return Err(InboundError::NotFound(format!("incident {id}")));
    }
    let linked = tx
        .execute(
            "INSERT INTO metastore.incident_tickets (tenant_id, incident_id, system, ticket_key)
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            &[&tenant, &id, &system, &key],
        )
        .await?;
    tx.commit().await?;
    Ok(Json(
        json!({ "incident_id": id, "system": system, "key": key, "linked": linked == 1 }),
    ))
}
