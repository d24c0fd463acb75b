//! `GET /v1/tenants/{tenant}/search`: the tenant's asset documents in
//! Elasticsearch, by free text and filters. The tenant is the one of the
//! path, which the caller's credential must hold; the server, not the
//! client, puts it in the query.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use lily_sinks::elasticsearch::{SearchError, SearchQuery};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{Action, Caller};
use crate::error::{InboundError, Result};
use crate::server::{Inbound, Query, Tenant, in_range};

/// Query parameters; lists are comma-separated.
#[derive(Deserialize)]
pub struct SearchParams {
    q: Option<String>,
    #[serde(rename = "type")]
    types: Option<String>,
    tag: Option<String>,
    incident_state: Option<String>,
    limit: Option<u32>,
    offset: Option<u32>,
}

fn list(v: &Option<String>) -> Vec<String> {
    v.as_deref()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The deepest page Elasticsearch serves by default (index.max_result_window).
const MAX_WINDOW: u32 = 10_000;

/// `GET`: hits (newest relevance first), their total, and counts by type and tag.
pub async fn search(
    State(inbound): State<Arc<Inbound>>,
    Tenant(tenant): Tenant,
    Query(p): Query<SearchParams>,
    caller: Caller,
) -> Result<Json<Value>> {
    caller.require(&tenant, Action::Read)?;
    let Some(cluster) = &inbound.search else {
        return Err(InboundError::Unavailable(
            "search is not configured (no elasticsearch sink)".into(),
        ));
    };
    if !inbound.db.tenant_exists(&tenant).await? {
        return Err(InboundError::UnknownTenant(tenant.to_string()));
    }
    let limit = in_range("limit", p.limit.map(i64::from), 20, 1..=100)? as u32;
    let offset = in_range("offset", p.offset.map(i64::from), 0, 0..=MAX_WINDOW as i64)? as u32;
    // Both come from the query string: added without overflow.
    if offset.saturating_add(limit) > MAX_WINDOW {
        return Err(InboundError::Unprocessable(format!(
            "offset + limit must stay within {MAX_WINDOW}; narrow the search instead"
        )));
    }
    let query = SearchQuery {
        text: p.q.clone(),
        types: list(&p.types),
        tags: list(&p.tag),
        incident_states: list(&p.incident_state),
        limit,
        offset,
    };
    let page = cluster.search(&tenant, &query).await.map_err(|e| match e {
        SearchError::Unavailable(m) => InboundError::Unavailable(m),
        other => InboundError::Internal(other.to_string()),
    })?;
    let counts = |v: &[(String, u64)]| {
        v.iter()
            .map(|(k, n)| json!({"key": k, "count": n}))
            .collect::<Vec<_>>()
    };
    Ok(Json(json!({
        "total": page.total,
        "limit": limit,
        "offset": offset,
        "hits": page.hits.iter().map(|h| {
            let mut doc = h.document.clone();
            doc["score"] = json!(h.score);
            doc
        }).collect::<Vec<_>>(),
        "types": counts(&page.types),
        "tags": counts(&page.tags),
    })))
}
