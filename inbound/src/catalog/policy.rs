//! `GET /v1/tenants/{tenant}/policy`: the effective policy of a tenant or
//! of one table, for tools that pull it. The answer carries an `ETag` of
//! its content; with `If-None-Match` it is 304 while nothing changed, and
//! with `wait=N` the request stays open up to N seconds until something
//! does, so a puller learns of a change at once instead of polling.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use lily_enforcement::policy::EffectivePolicy;
use serde::Deserialize;
use serde_json::json;

use crate::auth::{Action, Caller};
use crate::error::Result;
use crate::server::{Inbound, Query, Tenant, header_text, in_range};

#[derive(Deserialize)]
pub struct PolicyQuery {
    /// One table's qualified name; none: the whole tenant.
    table: Option<String>,
    /// Seconds to wait for a change past `If-None-Match`.
    wait: Option<i64>,
}

/// `GET /policy?table=&wait=`.
pub async fn get(
    State(inbound): State<Arc<Inbound>>,
    Tenant(tenant): Tenant,
    mut caller: Caller,
    headers: HeaderMap,
    Query(q): Query<PolicyQuery>,
) -> Result<Response> {
    caller.require(tenant.as_str(), Action::Read)?;
    // A long poll must not hold one of the tenant's request slots.
    caller.slot = None;
    let wait = Duration::from_secs(in_range("wait", q.wait, 0, 0..=60)? as u64);
    let store = inbound.policy_store()?;
    let seen = header_text(&headers, "if-none-match").map(str::to_owned);
    let deadline = tokio::time::Instant::now() + wait;
    let mut compiled = store.subscribe();
    loop {
        compiled.borrow_and_update();
        let snapshot = inbound.policy_snapshot().await?;
        let policy = EffectivePolicy::of(snapshot.tenant(tenant.as_str()), q.table.as_deref());
        let etag = policy.etag();
        // Weak comparison (RFC 9110, 13.1.2): a proxy that compresses the
        // answer may have weakened the tag.
        let unchanged = seen.as_deref().is_some_and(|s| {
            s.split(',')
                .map(str::trim)
                .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
        });
        if !unchanged {
            metrics::counter!("lily_policy_reads_total", "status" => "200").increment(1);
            let mut body = json!({
                "tenant": tenant.as_str(),
                "version": snapshot.version,
                "policies": policy.policies,
                "columns": policy.columns,
            });
            if let Some(t) = &q.table {
                body["table"] = json!(t);
            }
            return Ok((
                [
                    (header::ETAG, etag),
                    (header::CACHE_CONTROL, "no-cache".to_owned()),
                ],
                axum::Json(body),
            )
                .into_response());
        }
        // Unchanged: wait for the next snapshot, or answer 304 at the
        // deadline. A tenant holds a bounded number of open polls; past
        // it, the answer does not wait.
        let Some(_poll) = inbound.polls.try_enter(tenant.as_str()) else {
            metrics::counter!("lily_policy_reads_total", "status" => "304").increment(1);
            return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
        };
        if !matches!(
            tokio::time::timeout_at(deadline, compiled.changed()).await,
            Ok(Ok(()))
        ) {
            metrics::counter!("lily_policy_reads_total", "status" => "304").increment(1);
            return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
        }
    }
}
