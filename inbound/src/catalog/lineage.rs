//! `/v1/tenants/{tenant}/lineage`: lineage edges between assets named by
//! qualified name.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{decode, resolve};
use crate::auth::{Action, Caller};
use crate::error::{InboundError, Result};
use crate::server::{Body, Inbound, Tenant};

#[derive(Deserialize)]
struct Edges {
    edges: Vec<EdgeIn>,
}

#[derive(Deserialize)]
struct EdgeIn {
    upstream: String,
    downstream: String,
    process: Option<String>,
    blocked_tags: Option<Vec<String>>,
}

fn names(edges: &[EdgeIn]) -> Vec<&str> {
    edges
        .iter()
        .flat_map(|e| {
            [
                Some(e.upstream.as_str()),
                Some(e.downstream.as_str()),
                e.process.as_deref(),
            ]
        })
        .flatten()
        .collect()
}

/// `POST`: adds edges (or updates their blocked tags). All or nothing.
pub async fn upsert(
    State(inbound): State<Arc<Inbound>>,
    Tenant(tenant): Tenant,
    caller: Caller,
    Body(body): Body,
) -> Result<Json<Value>> {
    caller.require(&tenant, Action::Ingest)?;
    let Edges { edges } = decode(inbound.json("lineage.v1", &body)?)?;
    let mut conn = inbound.db.connection().await?;
    let tx = inbound.db.tenant_transaction(&mut conn, &tenant).await?;
    let guids = resolve(&inbound, &tx, &tenant, &names(&edges)).await?;
    // Blocked tags stop PII from propagating: an ingest caller may add
    // edges but not change what they block.
    if !caller.may(&tenant, Action::Curate) {
        for (i, e) in edges.iter().enumerate() {
            let Some(blocked) = &e.blocked_tags else {
                continue;
            };
            let process: Option<Uuid> = e.process.as_ref().map(|p| guids[p]);
            let current: Vec<String> = tx
                .query_opt(
                    "SELECT blocked_tags FROM metastore.lineage_edges
                      WHERE tenant_id = $1 AND upstream_guid = $2 AND downstream_guid = $3
                        AND process_guid IS NOT DISTINCT FROM $4",
                    &[
                        &tenant,
                        &guids[&e.upstream],
                        &guids[&e.downstream],
                        &process,
                    ],
                )
                .await?
                .map(|r| r.get(0))
                .unwrap_or_default();
            if *blocked != current {
                return Err(InboundError::Forbidden(format!(
                    "edges[{i}] ({} -> {}): blocked_tags decides which tags propagate; changing it needs the steward or admin role",
                    e.upstream, e.downstream
                )));
            }
        }
    }
    let stmt = tx
        .prepare(
            "INSERT INTO metastore.lineage_edges AS e (tenant_id, upstream_guid, downstream_guid, process_guid, blocked_tags)
             VALUES ($1, $2, $3, $4, coalesce($5::text[], '{}'))
             ON CONFLICT (tenant_id, upstream_guid, downstream_guid, process_guid)
             DO UPDATE SET blocked_tags = coalesce($5::text[], e.blocked_tags)
             WHERE e.blocked_tags IS DISTINCT FROM coalesce($5::text[], e.blocked_tags)",
        )
        .await?;
    let mut written = 0;
    for e in &edges {
        let process: Option<Uuid> = e.process.as_ref().map(|p| guids[p]);
        written += tx
            .execute(
                &stmt,
                &[
                    &tenant,
                    &guids[&e.upstream],
                    &guids[&e.downstream],
                    &process,
                    &e.blocked_tags,
                ],
            )
            .await?;
    }
    tx.commit().await?;
    Ok(Json(json!({ "edges": edges.len(), "written": written })))
}

/// `DELETE`: removes edges.
pub async fn remove(
    State(inbound): State<Arc<Inbound>>,
    Tenant(tenant): Tenant,
    caller: Caller,
    Body(body): Body,
) -> Result<Json<Value>> {
    caller.require(&tenant, Action::Curate)?;
    let Edges { edges } = decode(inbound.json("lineage.v1", &body)?)?;
    let mut conn = inbound.db.connection().await?;
    let tx = inbound.db.tenant_transaction(&mut conn, &tenant).await?;
    let guids = resolve(&inbound, &tx, &tenant, &names(&edges)).await?;
    let mut removed = 0;
    for e in &edges {
        let process: Option<Uuid> = e.process.as_ref().map(|p| guids[p]);
        removed += tx
            .execute(
                "DELETE FROM metastore.lineage_edges
                  WHERE tenant_id = $1 AND upstream_guid = $2 AND downstream_guid = $3
                    AND process_guid IS NOT DISTINCT FROM $4",
                &[
                    &tenant,
                    &guids[&e.upstream],
                    &guids[&e.downstream],
                    &process,
                ],
            )
            .await?;
    }
    tx.commit().await?;
    Ok(Json(json!({ "removed": removed })))
}
