//! The catalog API for people and extraction jobs: bulk upserts and
//! removals of assets, lineage and classifications, bulk uploads and their
//! lag, reads of assets and incidents, search, tickets linked to incidents, the tenant's API keys,
//! what the SQL endpoint masks and serves, and the effective policy.
//! Every route checks the caller's role in the tenant of its path, and
//! writes run in a transaction scoped to that tenant.

mod assets;
mod classifications;
mod enforcement;
mod incidents;
mod keys;
mod lineage;
mod loads;
mod policy;
mod search;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::routing::{delete, get, post, put};
use deadpool_postgres::Transaction;
use uuid::Uuid;

use crate::error::{InboundError, Result};
use crate::server::Inbound;

/// The catalog routes.
pub fn routes() -> Router<Arc<Inbound>> {
    Router::new()
        .route(
            "/v1/tenants/{tenant}/assets",
            post(assets::upsert).delete(assets::remove),
        )
        .route(
            "/v1/tenants/{tenant}/assets/{qualified_name}",
            get(assets::get_one),
        )
        .route(
            "/v1/tenants/{tenant}/lineage",
            post(lineage::upsert).delete(lineage::remove),
        )
        .route(
            "/v1/tenants/{tenant}/classifications",
            post(classifications::upsert).delete(classifications::remove),
        )
        .route("/v1/tenants/{tenant}/search", get(search::search))
        .route("/v1/tenants/{tenant}/incidents", get(incidents::list))
        .route(
            "/v1/tenants/{tenant}/incidents/{incident_id}",
            get(incidents::get_one),
        )
        .route(
            "/v1/tenants/{tenant}/incidents/{incident_id}/tickets",
            post(incidents::link_ticket),
        )
        .route(
            "/v1/tenants/{tenant}/api-keys",
            post(keys::create).get(keys::list),
        )
        .route(
            "/v1/tenants/{tenant}/api-keys/{key_id}",
            delete(keys::revoke),
        )
        .route(
            "/v1/tenants/{tenant}/masking-policies",
            get(enforcement::list_policies),
        )
        .route(
            "/v1/tenants/{tenant}/masking-policies/{name}",
            put(enforcement::put_policy).delete(enforcement::delete_policy),
        )
        .route(
            "/v1/tenants/{tenant}/governed-tables",
            get(enforcement::list_tables),
        )
        .route(
            "/v1/tenants/{tenant}/governed-tables/{table_name}",
            put(enforcement::put_table).delete(enforcement::delete_table),
        )
        .route("/v1/tenants/{tenant}/bulk/loads", get(loads::list))
}

/// The routes without the request deadline (see `router`): bulk uploads,
/// which run as long as their body keeps coming, and the policy long poll,
/// bounded by its own `wait`.
pub fn upload_routes() -> Router<Arc<Inbound>> {
    Router::new()
        .route(
            "/v1/tenants/{tenant}/bulk/loads/{load_id}",
            get(loads::get_one).post(loads::upload),
        )
        .route("/v1/tenants/{tenant}/policy", get(policy::get))
}

/// The guids of the assets named `names` in the transaction's tenant,
/// and the names that are not in the metastore.
async fn lookup<'a>(
    tx: &Transaction<'_>,
    names: &[&'a str],
) -> Result<(HashMap<String, Uuid>, Vec<&'a str>)> {
    let mut unique: Vec<&str> = names.to_vec();
    unique.sort_unstable();
    unique.dedup();
    let rows = tx
        .query(
            "SELECT qualified_name, guid FROM metastore.assets
              WHERE tenant_id = current_setting('lily.tenant_id') AND qualified_name = ANY($1)",
            &[&unique],
        )
        .await?;
    let found: HashMap<String, Uuid> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let missing: Vec<&str> = unique
        .iter()
        .copied()
        .filter(|n| !found.contains_key(*n))
        .collect();
    Ok((found, missing))
}

/// The guids of the assets named `names` in `tenant` (the transaction's).
/// A name that is not in the metastore but waits in the lake (a column of
/// a bulk load not promoted yet) is promoted first, in `tx`; an error
/// lists the names that are in neither.
async fn resolve(
    inbound: &Inbound,
    tx: &Transaction<'_>,
    tenant: &str,
    names: &[&str],
) -> Result<HashMap<String, Uuid>> {
    let (mut found, mut missing) = lookup(tx, names).await?;
    if !missing.is_empty()
        && let Some(location) = &inbound.bulk.location
        && crate::bulk::load::promote_named(tx, location, tenant, &missing).await? > 0
    {
        (found, missing) = lookup(tx, names).await?;
    }
    if !missing.is_empty() {
        return Err(InboundError::Unprocessable(format!(
            "not in the catalog: {}",
            missing.join(", ")
        )));
    }
    Ok(found)
}

/// Deserializes a body that its schema has already checked.
fn decode<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T> {
    serde_json::from_value(value).map_err(|e| InboundError::Unprocessable(e.to_string()))
}
