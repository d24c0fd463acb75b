//! `/v1/tenants/{tenant}/classifications`: direct tags on assets. Their
//! propagated copies are lineage propagation's to add and take back.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{decode, resolve};
use crate::auth::{Action, Caller};
use crate::error::Result;
use crate::server::{Body, Inbound, Tenant};

#[derive(Deserialize)]
struct Classifications {
    classifications: Vec<ClassificationIn>,
}

#[derive(Deserialize)]
struct ClassificationIn {
    qualified_name: String,
    tag: String,
    propagate: Option<bool>,
}

/// `POST`: tags assets (or changes whether a tag propagates).
pub async fn upsert(
    State(inbound): State<Arc<Inbound>>,
    Tenant(tenant): Tenant,
    caller: Caller,
    Body(body): Body,
) -> Result<Json<Value>> {
    caller.require(&tenant, Action::Curate)?;
    let Classifications { classifications } = decode(inbound.json("classifications.v1", &body)?)?;
    let mut conn = inbound.db.connection().await?;
    let tx = inbound.db.tenant_transaction(&mut conn, &tenant).await?;
    let names: Vec<&str> = classifications
        .iter()
        .map(|c| c.qualified_name.as_str())
        .collect();
    let guids = resolve(&inbound, &tx, &tenant, &names).await?;
    let stmt = tx
        .prepare(
            "INSERT INTO metastore.classifications AS c (tenant_id, asset_guid, tag, propagate)
             VALUES ($1, $2, $3, coalesce($4, true))
             ON CONFLICT (tenant_id, asset_guid, tag, propagated_from)
             DO UPDATE SET propagate = coalesce($4, c.propagate)
             WHERE c.propagate IS DISTINCT FROM coalesce($4, c.propagate)",
        )
        .await?;
    let mut written = 0;
    for c in &classifications {
        written += tx
            .execute(
                &stmt,
                &[&tenant, &guids[&c.qualified_name], &c.tag, &c.propagate],
            )
            .await?;
    }
    tx.commit().await?;
    metrics::counter!("lily_inbound_classifications_written_total").increment(written);
    Ok(Json(
        json!({ "classifications": classifications.len(), "written": written }),
    ))
}

/// `DELETE`: removes direct tags.
pub async fn remove(
    State(inbound): State<Arc<Inbound>>,
    Tenant(tenant): Tenant,
    caller: Caller,
    Body(body): Body,
) -> Result<Json<Value>> {
    caller.require(&tenant, Action::Curate)?;
    let Classifications { classifications } = decode(inbound.json("classifications.v1", &body)?)?;
    let mut conn = inbound.db.connection().await?;
    let tx = inbound.db.tenant_transaction(&mut conn, &tenant).await?;
    let names: Vec<&str> = classifications
        .iter()
        .map(|c| c.qualified_name.as_str())
        .collect();
    let guids = resolve(&inbound, &tx, &tenant, &names).await?;
    let mut removed = 0;
    for c in &classifications {
        removed += tx
            .execute(
                "DELETE FROM metastore.classifications
                  WHERE tenant_id = $1 AND asset_guid = $2 AND tag = $3 AND source = 'direct'",
                &[&tenant, &guids[&c.qualified_name], &c.tag],
            )
            .await?;
    }
    tx.commit().await?;
    Ok(Json(json!({ "removed": removed })))
}
