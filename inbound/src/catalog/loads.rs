//! `/v1/tenants/{tenant}/bulk/loads`: Lily's bulk format streamed over
//! HTTP into a named load, in the same two lanes as `lily ingest`, and
//! every load's lag (what `lily status` shows).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::header;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::{info, instrument};

use crate::auth::{Action, Caller};
use crate::bulk::load::{Record, UnreadableText};
use crate::bulk::loads::{self, LoadStatus};
use crate::bulk::{Loader, Outcome};
use crate::error::{InboundError, Result};
use crate::server::{Inbound, Query, Tenant};

/// Most records one transaction of an upload takes.
const MAX_CHUNK: usize = 10_000;

/// What an upload may say in its query.
#[derive(Deserialize)]
pub struct UploadQuery {
    /// Records per transaction (default 1,000).
    chunk: Option<usize>,
}

/// A load id: the client's name for a load, which a retry reuses.
fn load_id(raw: &str) -> Result<String> {
    let ok = !raw.is_empty()
        && raw.len() <= 64
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(InboundError::BadQuery(format!(
            "load id {raw:?}: 1 to 64 letters, digits, '-', '_' or '.'"
        )))
    }
}

fn load_json(l: &LoadStatus) -> Value {
    json!({
        "load_id": l.load_id,
        "source": l.source,
        "state": l.state,
        "consistency": l.consistency(),
        "rows_metastore": l.rows_metastore,
        "rows_lake": l.rows_lake,
        "promoted_rows": l.promoted_rows,
        "backlog": l.backlog(),
        "watermark": l.promoted_seq,
        "idle_seconds": l.idle_secs,
    })
}

/// `GET`: the tenant's loads, newest first.
pub async fn list(
    State(inbound): State<Arc<Inbound>>,
    Tenant(tenant): Tenant,
    caller: Caller,
) -> Result<Json<Value>> {
    caller.require(&tenant, Action::Read)?;
    let all = loads::list(&inbound.db, Some(&tenant)).await?;
    Ok(Json(json!({
        "loads": all.iter().map(load_json).collect::<Vec<_>>(),
    })))
}

/// `GET .../{load_id}`: one load, and each table of its lake rows with
/// how many are promoted (`pending`, `partial`, `complete`).
pub async fn get_one(
    State(inbound): State<Arc<Inbound>>,
    Tenant(tenant): Tenant,
    Path((_, id)): Path<(String, String)>,
    caller: Caller,
) -> Result<Json<Value>> {
    caller.require(&tenant, Action::Read)?;
    let id = load_id(&id)?;
    let Some(load) = loads::list(&inbound.db, Some(&tenant))
        .await?
        .into_iter()
        .find(|l| l.load_id == id)
    else {
        return Err(InboundError::NotFound(format!("no load {id}")));
    };
    let mut tables = Vec::new();
    if let Some(location) = &inbound.bulk.location {
        let mut lake = lily_lakehouse::CatalogAssets::open(location).await?;
        let parents = lake.parents(&tenant, &id, load.promoted_seq).await?;
        for (table, total, promoted) in parents {
            let state = loads::table_state(total, promoted);
            tables.push(json!({"table": table, "rows_lake": total, "promoted_rows": promoted, "state": state}));
        }
    }
    let mut out = load_json(&load);
    out["tables"] = json!(tables);
    Ok(Json(out))
}

/// `POST .../{load_id}`: NDJSON of Lily's bulk format
/// (`bulk-asset.v1`), one asset per line, read as it arrives and written
/// `chunk` lines per transaction. Answers when the whole body is written.
/// Sent again under the same id after a failure, the lines the load wrote
/// before are skipped. Refused with 429 while the tenant's backlog is
/// full; a backlog that fills during the upload pauses its reading.
#[instrument(skip_all, fields(tenant = %tenant, load))]
pub async fn upload(
    State(inbound): State<Arc<Inbound>>,
    Tenant(tenant): Tenant,
    Path((_, id)): Path<(String, String)>,
    caller: Caller,
    Query(query): Query<UploadQuery>,
    req: Request,
) -> Result<Json<Value>> {
    caller.require(&tenant, Action::Ingest)?;
    let may_curate = caller.may(&tenant, Action::Curate);
    let id = load_id(&id)?;
    tracing::Span::current().record("load", id.as_str());
    let media = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    if !matches!(media.as_str(), "application/x-ndjson" | "application/jsonl") {
        return Err(InboundError::UnsupportedMediaType(format!(
            "a bulk upload is NDJSON (application/x-ndjson), not {media:?}"
        )));
    }
    let chunk = query.chunk.unwrap_or(1_000);
    if !(1..=MAX_CHUNK).contains(&chunk) {
        return Err(InboundError::BadQuery(format!(
            "chunk {chunk}: from 1 to {MAX_CHUNK} lines"
        )));
    }
    if !inbound.db.tenant_exists(&tenant).await? {
        return Err(InboundError::UnknownTenant(tenant.to_string()));
    }
    if inbound.bulk.location.is_some() {
        let backlog = loads::backlog(&inbound.db, &tenant).await?;
        if backlog >= inbound.bulk.max_backlog as i64 {
            return Err(InboundError::BacklogFull {
                tenant: tenant.to_string(),
                backlog,
                limit: inbound.bulk.max_backlog,
            });
        }
    }
    let source = format!("upload {id}");
    let mut loader = Loader::begin(&inbound.db, &tenant, &id, &source, &inbound.bulk).await?;

    let max_line = inbound.body_limit_bytes;
    let max_chunk_bytes = inbound.bulk_body_limit_bytes;
    let idle = inbound.body_timeout;
    let mut body = req.into_body().into_data_stream();
    let mut pending: Vec<u8> = Vec::new();
    let mut lines = Lines {
        name: id.clone(),
        seq: 0,
        bytes: 0,
        may_curate,
        records: Vec::new(),
        unreadable: Vec::new(),
    };
    let mut total = Outcome::default();
    loop {
        let frame = tokio::time::timeout(idle, body.next()).await.map_err(|_| {
            InboundError::RequestTimeout(format!(
                "no bytes of the upload for {} ms",
                idle.as_millis()
            ))
        })?;
        let Some(frame) = frame else { break };
        let bytes =
            frame.map_err(|e| InboundError::MalformedJson(format!("reading the upload: {e}")))?;
        // Only the new bytes are searched for line ends, and the lines
        // found are taken out at once: linear in the body.
        let searched = pending.len();
        pending.extend_from_slice(&bytes);
        if let Some(last) = pending[searched..].iter().rposition(|b| *b == b'\n') {
            let end = searched + last;
            for line in pending[..end].split(|b| *b == b'\n') {
                lines.push(line);
            }
            pending.drain(..=end);
        }
        if pending.len() > max_line {
            return Err(InboundError::Unprocessable(format!(
                "line {} of the upload is longer than {max_line} bytes (api.body_limit_bytes); \
                 the chunks before it are written",
                lines.seq + 1
            )));
        }
        // A chunk is bounded by its lines and by its bytes.
        if lines.len() >= chunk || lines.bytes >= max_chunk_bytes {
            let (records, unreadable) = lines.take();
            total += &loader
                .write(&inbound.schemas, records, unreadable, |backlog| {
                    info!(backlog, "upload paused: the backlog is full");
                })
                .await?;
        }
    }
    if !pending.is_empty() {
        lines.push(&pending);
    }
    let (records, unreadable) = lines.take();
    total += &loader
        .write(&inbound.schemas, records, unreadable, |_| {})
        .await?;
    let (metastore, lake) = loader.rows();
    loader.finish().await?;
    metrics::counter!("lily_inbound_bulk_records_total", "lane" => "metastore")
        .increment(metastore.max(0) as u64);
    metrics::counter!("lily_inbound_bulk_records_total", "lane" => "lake")
        .increment(lake.max(0) as u64);
    Ok(Json(json!({
        "load_id": id,
        "lines": lines.seq,
        "rows_metastore": metastore,
        "rows_lake": lake,
        "created": total.applied.created,
        "updated": total.applied.updated,
        "lineage_edges_added": total.applied.edges_added,
        "classifications_added": total.applied.tags_added,
        "dead_letters": total.dead_letters,
    })))
}

/// The lines of an upload, read into records for the next chunk.
struct Lines {
    name: String,
    seq: i64,
    /// Bytes of the lines held for the next chunk.
    bytes: usize,
    may_curate: bool,
    records: Vec<Record>,
    unreadable: Vec<UnreadableText>,
}

impl Lines {
    fn len(&self) -> usize {
        self.records.len() + self.unreadable.len()
    }

    fn push(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        self.bytes += line.len();
        if line.iter().all(u8::is_ascii_whitespace) {
            // Blank lines count, so positions are the client's line numbers.
            self.seq += 1;
            return;
        }
        self.seq += 1;
        let position = format!("{}:{}", self.name, self.seq);
        let text = || String::from_utf8_lossy(line).into_owned();
        match serde_json::from_slice::<Value>(line) {
            Ok(v)
                if !self.may_curate
                    && v.get("tags")
                        .and_then(Value::as_array)
                        .is_some_and(|t| !t.is_empty()) =>
            {
                self.unreadable.push((
                    self.seq,
                    position,
                    text(),
                    "tags need a role that may classify (steward or admin)".into(),
                ));
            }
            Ok(v) => self.records.push((self.seq, position, v)),
            Err(e) => self
                .unreadable
                .push((self.seq, position, text(), format!("not JSON: {e}"))),
        }
    }

    fn take(&mut self) -> (Vec<Record>, Vec<UnreadableText>) {
        self.bytes = 0;
        (
            std::mem::take(&mut self.records),
            std::mem::take(&mut self.unreadable),
        )
    }
}
