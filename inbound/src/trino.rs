//! `/v1/tenants/{tenant}/trino/{decision}`: the URIs Trino's `opa` access
//! control is pointed at (`opa.policy.uri`, `opa.policy.batched-uri`,
//! `opa.policy.row-filters-uri`, `opa.policy.column-masking-uri`,
//! `opa.policy.batch-column-masking-uri`), answered from the policy
//! snapshot the pipeline keeps current.
//!
//! Trino's OPA client sends no credential of its own (it has no setting for
//! headers, trinodb/trino#27022), so the API key may also be the last
//! segment of the URI (`.../trino/allow/{key}`, read by the `Caller`
//! extractor); a proxy or client that can send `Authorization` uses the
//! shorter form.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::{Path, State};
use lily_enforcement::trino::{Decision, DecisionContext, OpaQuery, decide};
use serde_json::Value;
use tracing::{Instrument, info_span};

use crate::auth::{Action, Caller};
use crate::error::{InboundError, Result};
use crate::schemas::parse_json;
use crate::server::{BulkBody, Inbound, Tenant};

fn decision(name: &str) -> Result<Decision> {
    Ok(match name {
        "allow" => Decision::Allow,
        "batch" => Decision::Batch,
        "row-filters" => Decision::RowFilters,
        "column-mask" => Decision::ColumnMask,
        "batch-column-masks" => Decision::BatchColumnMasks,
        other => {
            return Err(InboundError::NotFound(format!(
                "no Trino decision {other:?} (allow, batch, row-filters, column-mask, batch-column-masks)"
            )));
        }
    })
}

/// `POST /trino/{decision}[/{key}]`: the key, if in the path, is read by
/// the [`Caller`] extractor.
pub async fn decide_route(
    State(inbound): State<Arc<Inbound>>,
    Tenant(tenant): Tenant,
    Path(params): Path<HashMap<String, String>>,
    caller: Caller,
    BulkBody(body): BulkBody,
) -> Result<Json<Value>> {
    let name = params.get("decision").map_or("", String::as_str);
    answer(&inbound, tenant.as_str(), name, caller, &body).await
}

async fn answer(
    inbound: &Inbound,
    tenant: &str,
    name: &str,
    caller: Caller,
    body: &[u8],
) -> Result<Json<Value>> {
    caller.require(tenant, Action::Read)?;
    let decision = decision(name)?;
    let query: OpaQuery = serde_json::from_value(parse_json(body)?).map_err(|e| {
        InboundError::Unprocessable(format!("not a request of Trino's opa plugin: {e}"))
    })?;
    let span = info_span!(
        "trino_decision",
        tenant,
        decision = decision.name(),
        operation = %query.input.action.operation,
        user = %query.input.context.identity.user,
        items = tracing::field::Empty,
    );
    async move {
        let started = Instant::now();
        // Trino fails the query on the 503 of a stale snapshot.
        let snapshot = inbound.policy_snapshot().await?;
        let cx = DecisionContext {
            tenant,
            policies: snapshot.tenant(tenant),
            config: &inbound.trino,
        };
        let (answer, items) =
            decide(decision, &cx, &query).map_err(|e| InboundError::Unprocessable(e.0))?;
        tracing::Span::current().record("items", items);
        metrics::counter!("lily_trino_decisions_total", "decision" => decision.name()).increment(1);
        metrics::counter!("lily_trino_decision_items_total", "decision" => decision.name())
            .increment(items as u64);
        metrics::histogram!("lily_trino_decision_seconds", "decision" => decision.name())
            .record(started.elapsed().as_secs_f64());
        Ok(Json(answer))
    }
    .instrument(span)
    .await
}
