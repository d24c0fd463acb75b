//! DataHub's ingestion protocol: the endpoints of DataHub's metadata
//! service (GMS) that its REST emitter and `datahub ingest` call, under a
//! per-tenant base URL. A recipe's sink
//! `{type: datahub-rest, config: {server: https://lily/v1/tenants/acme/datahub, token: <API key>}}`
//! pushes any of DataHub's sources into the tenant's catalog unchanged.
//!
//! What each endpoint is and answers was read from acryl-datahub 1.7's
//! `emitter/rest_emitter.py`, `ingestion/sink/datahub_rest.py` and
//! `ingestion/graph/client.py`, and from GMS's `AspectResource.java` and
//! `Config.java` (docs/inbound.md names them with what they carry).

mod plan;
mod urn;
mod wire;

use std::sync::Arc;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::info;

pub use wire::Proposal;

use crate::auth::{Action, Caller};
use crate::bulk::{self, Outcome, Plan, Unreadable};
use crate::db::Metastore;
use crate::error::{InboundError, Result};
use crate::server::{BulkBody, Inbound, Query, Tenant};

/// The dead-letter source of proposals that could not be read.
pub const DEAD_LETTER_SOURCE: &str = "datahub";
/// The most proposals one request may carry (the emitter sends at most 200).
const MAX_PROPOSALS: usize = 2_000;

pub(super) fn routes() -> Router<Arc<Inbound>> {
    let base = "/v1/tenants/{tenant}/datahub";
    Router::new()
        .route(&format!("{base}/config"), get(config))
        .route(&format!("{base}/aspects"), post(aspects))
        .route(&format!("{base}/aspects/{{urn}}"), get(no_aspect))
        .route(&format!("{base}/entities"), post(entities))
        .route(
            &format!("{base}/openapi/v3/entity/platformresource"),
            get(no_platform_resources),
        )
        .route(
            &format!("{base}/openapi/v3/entity/dataset/batchGet"),
            post(no_datasets),
        )
}

/// `GET /config`: the emitter starts only when `noCode` is the string
/// `"true"`, and stateful ingestion only when `statefulIngestionCapable`
/// is true (`rest_emitter.py` `fetch_server_config`,
/// `datahub_ingestion_checkpointing_provider.py`).
async fn config(Tenant(tenant): Tenant, caller: Caller) -> Result<Json<Value>> {
    caller.require(&tenant, Action::Ingest)?;
    Ok(Json(json!({
        "noCode": "true",
        "statefulIngestionCapable": true,
        "patchCapable": true,
        "supportsImpactAnalysis": false,
        "retention": "false",
        "timeZone": "UTC",
        "versions": {"acryldata/datahub": {"version": "v1.3.0", "commit": "lily"}},
        "datahub": {"serverType": "lily"},
        "telemetry": {"enabledCli": false, "enabledIngestion": false},
        "managedIngestion": {"enabled": false},
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionQuery {
    action: String,
}

#[derive(Deserialize)]
struct TimeseriesRequest {
    urn: String,
    aspect: String,
}

/// `POST /aspects?action=…`: `ingestProposalBatch` (the sink's default),
/// `ingestProposal`, and `getTimeseriesAspectValues` (stateful
/// ingestion's checkpoint).
async fn aspects(
    State(inbound): State<Arc<Inbound>>,
    Tenant(tenant): Tenant,
    Query(q): Query<ActionQuery>,
    caller: Caller,
    BulkBody(body): BulkBody,
) -> Result<Json<Value>> {
    caller.require(&tenant, Action::Ingest)?;
    let body = inbound.json("datahub-aspects.v1", &body)?;
    let records: Vec<(String, Value)> = match q.action.as_str() {
        "ingestProposalBatch" => {
            let Some(Value::Array(ps)) = body.get("proposals") else {
                return Err(InboundError::Unprocessable(
                    "the body has no `proposals` array".into(),
                ));
            };
            ps.iter()
                .enumerate()
                .map(|(i, p)| (format!("proposals[{i}]"), p.clone()))
                .collect()
        }
        "ingestProposal" => {
            let Some(p) = body.get("proposal") else {
                return Err(InboundError::Unprocessable(
                    "the body has no `proposal`".into(),
                ));
            };
            vec![("proposal".to_owned(), p.clone())]
        }
        "getTimeseriesAspectValues" => {
            let r: TimeseriesRequest = serde_json::from_value(body)
                .map_err(|e| InboundError::Unprocessable(e.to_string()))?;
            let mut conn = inbound.db.connection().await?;
            let tx = inbound.db.tenant_transaction(&mut conn, &tenant).await?;
            let stored = bulk::checkpoint(&tx, &r.urn, &r.aspect).await?;
            tx.commit().await?;
            let values: Vec<Value> = stored
                .into_iter()
                .map(|v| json!({"aspect": {"value": v, "contentType": "application/json"}}))
                .collect();
            return Ok(Json(json!({"value": {
                "entityName": r.urn.split(':').nth(2).unwrap_or_default(),
                "aspectName": r.aspect,
                "limit": 1,
                "values": values,
            }})));
        }
        other => {
            return Err(InboundError::BadQuery(format!(
                "action={other}: this endpoint takes ingestProposal, ingestProposalBatch and getTimeseriesAspectValues"
            )));
        }
    };
    let may_curate = caller.may(&tenant, Action::Curate);
    ingest(
        &inbound.db,
        &tenant,
        Records::Proposals(records),
        may_curate,
    )
    .await?;
    Ok(Json(json!({"value": "success"})))
}

/// `POST /entities?action=ingest`: one snapshot (an MCE), which the sink
/// sends in its `SYNC` and `ASYNC` modes.
async fn entities(
    State(inbound): State<Arc<Inbound>>,
    Tenant(tenant): Tenant,
    Query(q): Query<ActionQuery>,
    caller: Caller,
    BulkBody(body): BulkBody,
) -> Result<Json<Value>> {
    caller.require(&tenant, Action::Ingest)?;
    if q.action != "ingest" {
        return Err(InboundError::BadQuery(format!(
            "action={}: this endpoint takes ingest",
            q.action
        )));
    }
    let body = inbound.json("datahub-entity.v1", &body)?;
    let Some(snapshot) = body.pointer("/entity/value") else {
        return Err(InboundError::Unprocessable(
            "the body has no `entity.value` snapshot".into(),
        ));
    };
    let records = vec![(
        "entity".to_owned(),
        json!({"proposedSnapshot": snapshot.clone()}),
    )];
    let may_curate = caller.may(&tenant, Action::Curate);
    ingest(&inbound.db, &tenant, Records::File(records), may_curate).await?;
    Ok(Json(json!({})))
}

/// `GET /aspects/{urn}`: Lily keeps no DataHub aspects to read back; 404
/// is how GMS says "absent", and the client reads it so.
async fn no_aspect(Tenant(tenant): Tenant, caller: Caller) -> Result<Json<Value>> {
    caller.require(&tenant, Action::Ingest)?;
    Err(InboundError::NotFound(
        "Lily does not serve DataHub aspects back".into(),
    ))
}

/// The SQL parser's lookup of Looker user mappings (every SQL source makes
/// it): none.
async fn no_platform_resources(Tenant(tenant): Tenant, caller: Caller) -> Result<Json<Value>> {
    caller.require(&tenant, Action::Ingest)?;
    Ok(Json(json!({"entities": [], "scrollId": null})))
}

/// The SQL parser's lookup of schemas it did not see in this run: none
/// known, so it parses without them.
async fn no_datasets(
    State(inbound): State<Arc<Inbound>>,
    Tenant(tenant): Tenant,
    caller: Caller,
    BulkBody(body): BulkBody,
) -> Result<Json<Value>> {
    caller.require(&tenant, Action::Ingest)?;
    inbound.json("datahub-batch-get.v1", &body)?;
    Ok(Json(json!([])))
}

/// Records to ingest, each with its position.
pub enum Records {
    /// MCPs as the REST emitter sends them.
    Proposals(Vec<(String, Value)>),
    /// Records of a `file` sink's output: MCPs and snapshots.
    File(Vec<(String, Value)>),
}

/// Maps and writes `records` in one transaction of `tenant`; a record that
/// cannot be read or mapped becomes a dead letter naming its position, and
/// the rest are written. Classifications need `may_curate`.
pub async fn ingest(
    db: &Metastore,
    tenant: &str,
    records: Records,
    may_curate: bool,
) -> Result<Outcome> {
    let (raw, file) = match records {
        Records::Proposals(r) => (r, false),
        Records::File(r) => (r, true),
    };
    if raw.len() > MAX_PROPOSALS {
        return Err(InboundError::Unprocessable(format!(
            "{} proposals in one request; at most {MAX_PROPOSALS} are taken",
            raw.len()
        )));
    }
    let mut proposals: Vec<(String, Proposal)> = Vec::with_capacity(raw.len());
    let mut unreadable: Vec<Unreadable> = Vec::new();
    for (position, value) in &raw {
        let read = if file {
            wire::file_record(value, position)
        } else {
            wire::proposal(value, position).map(|p| vec![p])
        };
        match read {
            Ok(ps) => proposals.extend(ps.into_iter().map(|p| (position.clone(), p))),
            Err(e) => unreadable.push(e),
        }
    }
    let plan = Plan::of(proposals.iter().map(|(at, p)| (at.clone(), p)));
    if let Some(at) = plan.tags.values().next()
        && !may_curate
    {
        return Err(InboundError::Forbidden(format!(
            "{at}: tags and glossary terms become classifications, which need the steward or admin role"
        )));
    }
    unreadable.extend(plan.rejected.iter().cloned());
    for (aspect, n) in &plan.applied {
        metrics::counter!("lily_inbound_datahub_proposals_total", "aspect" => *aspect, "outcome" => "applied").increment(*n);
    }
    for (aspect, n) in &plan.skipped {
        metrics::counter!("lily_inbound_datahub_proposals_total", "aspect" => *aspect, "outcome" => "skipped").increment(*n);
    }
    metrics::counter!("lily_inbound_datahub_proposals_total", "aspect" => "any", "outcome" => "dead_letter")
        .increment(unreadable.len() as u64);
    let outcome = bulk::write(db, tenant, DEAD_LETTER_SOURCE, plan, unreadable, &raw).await?;
    info!(
        tenant,
        proposals = outcome.records,
        skipped = outcome.skipped,
        dead_letters = outcome.dead_letters,
        created = outcome.applied.created,
        updated = outcome.applied.updated,
        edges = outcome.applied.edges_added,
        removed = outcome.applied.removed,
        "DataHub proposals"
    );
    Ok(outcome)
}
