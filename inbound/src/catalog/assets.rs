//! `/v1/tenants/{tenant}/assets`: upsert, remove, read.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::decode;
use crate::auth::{Action, Caller};
use crate::error::{InboundError, Result};
use crate::server::{Body, Inbound, Tenant};

#[derive(Deserialize)]
struct Assets {
    assets: Vec<AssetIn>,
}

#[derive(Deserialize)]
struct AssetIn {
    qualified_name: String,
    #[serde(rename = "type")]
    type_name: String,
    name: Option<String>,
    parent: Option<String>,
    description: Option<String>,
    owners: Option<Vec<String>>,
    certificate: Option<String>,
    attributes: Option<Value>,
}

#[derive(Deserialize)]
struct Names {
    qualified_names: Vec<String>,
}

const UPSERT: &str = "
INSERT INTO metastore.assets AS a
    (tenant_id, type_name, qualified_name, name, parent_guid, description, owners, certificate, attributes)
VALUES ($1, $2, $3, $4, $5, $6, coalesce($7::text[], '{}'), $8, coalesce($9::jsonb, '{}'))
ON CONFLICT (tenant_id, qualified_name) DO UPDATE SET
    type_name   = EXCLUDED.type_name,
    name        = EXCLUDED.name,
    parent_guid = coalesce($5, a.parent_guid),
    description = coalesce($6, a.description),
    owners      = coalesce($7::text[], a.owners),
    certificate = coalesce($8, a.certificate),
    attributes  = coalesce($9::jsonb, a.attributes)
WHERE (a.type_name, a.name, a.parent_guid, a.description, a.owners, a.certificate, a.attributes)
      IS DISTINCT FROM
      (EXCLUDED.type_name, EXCLUDED.name, coalesce($5, a.parent_guid), coalesce($6, a.description),
       coalesce($7::text[], a.owners), coalesce($8, a.certificate), coalesce($9::jsonb, a.attributes))
RETURNING (xmax = 0) AS created";

/// `POST`: creates or updates assets by qualified name, in request order
/// (a parent may come earlier in the same request). Fields left out keep
/// their values. All or nothing.
pub async fn upsert(
    State(inbound): State<Arc<Inbound>>,
    Tenant(tenant): Tenant,
    caller: Caller,
    Body(body): Body,
) -> Result<Json<Value>> {
    caller.require(&tenant, Action::Ingest)?;
    let Assets { assets } = decode(inbound.json("assets.v1", &body)?)?;
    let mut conn = inbound.db.connection().await?;
    let tx = inbound.db.tenant_transaction(&mut conn, &tenant).await?;
    if !caller.may(&tenant, Action::Curate) {
        refuse_governance_changes(&tx, &tenant, &assets, &inbound.governed_asset_fields).await?;
    }
    refuse_unknown_types(&tx, &assets).await?;
    let (mut created, mut updated) = (0, 0);
    for (i, a) in assets.iter().enumerate() {
        let at = |e: InboundError| {
            InboundError::Unprocessable(format!("assets[{i}] ({}): {e}", a.qualified_name))
        };
        let parent: Option<Uuid> = match &a.parent {
            None => None,
            Some(p) => Some(
                tx.query_opt(
                    "SELECT guid FROM metastore.assets WHERE tenant_id = $1 AND qualified_name = $2",
                    &[&tenant, p],
                )
                .await?
                .ok_or_else(|| at(InboundError::Unprocessable(format!("its parent {p} is not in the catalog"))))?
                .get(0),
            ),
        };
        let name = a.name.clone().unwrap_or_else(|| {
            a.qualified_name
                .rsplit('.')
                .next()
                .unwrap_or(&a.qualified_name)
                .to_owned()
        });
        let row = tx
            .query_opt(
                UPSERT,
                &[
                    &tenant,
                    &a.type_name,
                    &a.qualified_name,
                    &name,
                    &parent,
                    &a.description,
                    &a.owners,
                    &a.certificate,
                    &a.attributes,
                ],
            )
            .await
            .map_err(|e| at(e.into()))?;
        match row {
            Some(r) if r.get::<_, bool>(0) => created += 1,
            Some(_) => updated += 1,
            None => {}
        }
    }
    tx.commit().await?;
    metrics::counter!("lily_inbound_assets_written_total").increment((created + updated) as u64);
    Ok(Json(json!({
        "assets": assets.len(),
        "created": created,
        "updated": updated,
        "unchanged": assets.len() - created - updated,
    })))
}

/// An asset type the catalog does not know is named in the refusal, with
/// the types it knows, instead of surfacing as a foreign-key violation.
async fn refuse_unknown_types(
    tx: &deadpool_postgres::Transaction<'_>,
    assets: &[AssetIn],
) -> Result<()> {
    let mut wanted: Vec<&str> = assets.iter().map(|a| a.type_name.as_str()).collect();
    wanted.sort_unstable();
    wanted.dedup();
    let known: Vec<String> = tx
        .query(
            "SELECT type_name FROM lily.asset_types ORDER BY type_name",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let unknown: Vec<&str> = wanted
        .into_iter()
        .filter(|t| !known.iter().any(|k| k == t))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    Err(InboundError::Unprocessable(format!(
        "unknown asset type {}; the catalog knows {}",
        unknown
            .iter()
            .map(|t| format!("{t:?}"))
            .collect::<Vec<_>>()
            .join(", "),
        known.join(", ")
    )))
}

/// An ingest caller may describe assets but not change what governs them:
/// the certificate and the attributes lineage propagates (a deprecated
/// certificate or an owner travels downstream). 403 naming the field when
/// a request would change one.
async fn refuse_governance_changes(
    tx: &deadpool_postgres::Transaction<'_>,
    tenant: &str,
    assets: &[AssetIn],
    governed: &[String],
) -> Result<()> {
    for (i, a) in assets.iter().enumerate() {
        let current = tx
            .query_opt(
                "SELECT certificate, owners FROM metastore.assets WHERE tenant_id = $1 AND qualified_name = $2",
                &[&tenant, &a.qualified_name],
            )
            .await?;
        let (certificate, owners): (Option<String>, Vec<String>) =
            current.map(|r| (r.get(0), r.get(1))).unwrap_or_default();
        let changes = [
            (
                "certificate",
                a.certificate
                    .as_ref()
                    .is_some_and(|c| Some(c) != certificate.as_ref()),
            ),
            ("owners", a.owners.as_ref().is_some_and(|o| *o != owners)),
        ];
        if let Some((field, _)) = changes
            .iter()
            .find(|(field, changed)| *changed && governed.iter().any(|g| g == field))
        {
            return Err(InboundError::Forbidden(format!(
                "assets[{i}] ({}): {field} governs what propagates downstream; changing it needs the steward or admin role",
                a.qualified_name
            )));
        }
    }
    Ok(())
}

/// `DELETE`: removes assets by qualified name; their lineage, tags and
/// children go with them.
pub async fn remove(
    State(inbound): State<Arc<Inbound>>,
    Tenant(tenant): Tenant,
    caller: Caller,
    Body(body): Body,
) -> Result<Json<Value>> {
    caller.require(&tenant, Action::Curate)?;
    let Names { qualified_names } = decode(inbound.json("asset-names.v1", &body)?)?;
    let mut conn = inbound.db.connection().await?;
    let tx = inbound.db.tenant_transaction(&mut conn, &tenant).await?;
    let removed: Vec<String> = tx
        .query(
            "DELETE FROM metastore.assets WHERE tenant_id = $1 AND qualified_name = ANY($2) RETURNING qualified_name",
            &[&tenant, &qualified_names],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    tx.commit().await?;
    let not_found: Vec<&String> = qualified_names
        .iter()
        .filter(|n| !removed.contains(n))
        .collect();
    Ok(Json(
        json!({ "removed": removed.len(), "not_found": not_found }),
    ))
}

/// `GET /assets/{qualified_name}`: the asset with its tags (direct and
/// propagated) and its incidents.
pub async fn get_one(
    State(inbound): State<Arc<Inbound>>,
    Tenant(tenant): Tenant,
    Path((_, qualified_name)): Path<(String, String)>,
    caller: Caller,
) -> Result<Json<Value>> {
    caller.require(&tenant, Action::Read)?;
    let mut conn = inbound.db.connection().await?;
    let tx = inbound.db.tenant_transaction(&mut conn, &tenant).await?;
    let row = tx
        .query_opt(
            "SELECT a.guid, a.type_name, a.qualified_name, a.name, a.description, a.owners,
                    a.certificate, a.attributes, a.version, p.qualified_name
               FROM metastore.assets a
               LEFT JOIN LATERAL (SELECT qualified_name FROM metastore.assets
                                   WHERE tenant_id = a.tenant_id AND guid = a.parent_guid) p ON true
              WHERE a.tenant_id = $1 AND a.qualified_name = $2",
            &[&tenant, &qualified_name],
        )
        .await?
        .ok_or_else(|| InboundError::NotFound(format!("asset {qualified_name}")))?;
    let guid: Uuid = row.get(0);
    let tags: Vec<Value> = tx
        .query(
            "SELECT c.tag, c.source, o.qualified_name
               FROM metastore.classifications c
               LEFT JOIN metastore.assets o ON o.tenant_id = c.tenant_id AND o.guid = c.propagated_from
              WHERE c.tenant_id = $1 AND c.asset_guid = $2 ORDER BY c.tag, o.qualified_name NULLS FIRST",
            &[&tenant, &guid],
        )
        .await?
        .iter()
        .map(|r| json!({"tag": r.get::<_, String>(0), "source": r.get::<_, String>(1), "propagated_from": r.get::<_, Option<String>>(2)}))
        .collect();
    let incidents: Vec<Value> = tx
        .query(
            "SELECT i.incident_id, i.source_system, i.external_id, i.state, i.severity, i.title
               FROM metastore.incident_assets ia JOIN metastore.incidents i USING (incident_id)
              WHERE ia.tenant_id = $1 AND ia.asset_guid = $2 ORDER BY i.created_at",
            &[&tenant, &guid],
        )
        .await?
        .iter()
        .map(|r| {
            json!({
                "incident_id": r.get::<_, Uuid>(0),
                "source_system": r.get::<_, String>(1),
                "external_id": r.get::<_, String>(2),
                "state": r.get::<_, String>(3),
                "severity": r.get::<_, Option<String>>(4),
                "title": r.get::<_, Option<String>>(5),
            })
        })
        .collect();
    tx.commit().await?;
    Ok(Json(json!({
        "guid": guid,
        "type": row.get::<_, String>(1),
        "qualified_name": row.get::<_, String>(2),
        "name": row.get::<_, String>(3),
        "description": row.get::<_, Option<String>>(4),
        "owners": row.get::<_, Vec<String>>(5),
        "certificate": row.get::<_, Option<String>>(6),
        "attributes": row.get::<_, Value>(7),
        "version": row.get::<_, i64>(8),
        "parent": row.get::<_, Option<String>>(9),
        "tags": tags,
        "incidents": incidents,
    })))
}
