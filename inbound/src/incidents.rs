//! Incidents from outside (Monte Carlo over HTTP or Kafka): the event runs
//! through its pre-ingest `.sql` transform, and the rows it yields are
//! upserted by (tenant, source, external id) with their asset links, in one
//! tenant-scoped transaction.

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use lily_transforms::{
    CatalogState, INCIDENT_ASSET_NAMES, OutputContract, TransformRunner, TransformSet,
    payload_from_values,
};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::Mutex;
use tracing::{debug, instrument};
use uuid::Uuid;

use crate::db::Metastore;
use crate::error::{InboundError, Result};

/// An incident as written.
#[derive(Debug, Clone, Serialize)]
pub struct WrittenIncident {
    /// The source's id of it.
    pub external_id: String,
    /// Lily's id of it.
    pub incident_id: Uuid,
    /// Whether this event created it.
    pub created: bool,
    /// Whether this event changed it (false for a repeated event).
    pub changed: bool,
    /// Assets it names that are in the catalog.
    pub linked_assets: i64,
    /// Assets it names that are not in the catalog yet; they are linked
    /// when they arrive.
    pub pending_assets: i64,
}

/// One row of the transform's output.
struct IncidentRow {
    source_system: String,
    external_id: String,
    incident_type: Option<String>,
    title: Option<String>,
    state: Option<String>,
    severity: Option<String>,
    url: Option<String>,
    asset_names: Vec<String>,
}

/// Maps and writes incidents.
pub struct IncidentIngest {
    db: Metastore,
    transform: String,
    /// One runner per core: a run holds its runner (its tables are swapped
    /// per run), so concurrent requests take different ones.
    runners: Vec<Mutex<TransformRunner>>,
    next: std::sync::atomic::AtomicUsize,
}

const UPSERT: &str = "
INSERT INTO metastore.incidents AS i
    (tenant_id, source_system, external_id, incident_type, title, state, severity, url, payload)
VALUES ($1, $2, $3, $4, $5, coalesce($6, 'open'), $7, $8, coalesce($9::jsonb, '{}'))
ON CONFLICT (tenant_id, source_system, external_id) DO UPDATE SET
    incident_type = coalesce($4, i.incident_type),
    title         = coalesce($5, i.title),
    state         = coalesce($6, i.state),
    severity      = coalesce($7, i.severity),
    url           = coalesce($8, i.url),
    payload       = coalesce($9::jsonb, i.payload)
WHERE (i.incident_type, i.title, i.state, i.severity, i.url, i.payload)
      IS DISTINCT FROM
      (coalesce($4, i.incident_type), coalesce($5, i.title), coalesce($6, i.state),
       coalesce($7, i.severity), coalesce($8, i.url), coalesce($9::jsonb, i.payload))
RETURNING incident_id, (xmax = 0) AS created";

const LINK: &str = "
INSERT INTO metastore.incident_assets (tenant_id, incident_id, qualified_name)
SELECT $1, $2, n FROM unnest($3::text[]) AS n
ON CONFLICT DO NOTHING";

const LINKS: &str = "
SELECT count(asset_guid), count(*) - count(asset_guid)
  FROM metastore.incident_assets WHERE incident_id = $1";

impl IncidentIngest {
    /// Plans `transform` of `set` (a pre-ingest file targeting incidents).
    pub async fn new(
        db: Metastore,
        set: &TransformSet,
        state: Arc<CatalogState>,
        transform: &str,
    ) -> Result<Self> {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut runners = Vec::with_capacity(cores);
        for _ in 0..cores {
            let runner = TransformRunner::new(
                set,
                transform,
                state.clone(),
                Vec::new(),
                OutputContract::IntoTable("incidents".into()),
            )
            .await
            .map_err(|e| {
                InboundError::Internal(format!("pre-ingest transform {transform}: {e}"))
            })?;
            if runner.payload_schema().is_none() {
                return Err(InboundError::Internal(format!(
                    "{transform} is not a pre-ingest transform (it declares no payload)"
                )));
            }
            runners.push(Mutex::new(runner));
        }
        Ok(Self {
            db,
            transform: transform.to_owned(),
            runners,
            next: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    fn transform_error(&self, message: impl ToString) -> InboundError {
        metrics::counter!("lily_transform_errors_total", "transform" => self.transform.clone(), "stage" => "run")
            .increment(1);
        InboundError::Transform {
            name: self.transform.clone(),
            message: message.to_string(),
        }
    }

    /// Maps `events` with the transform.
    async fn map(&self, events: &[Value]) -> Result<Vec<IncidentRow>> {
        // A free runner if there is one, else wait for the next in turn.
        let mut runner = match self.runners.iter().find_map(|r| r.try_lock().ok()) {
            Some(free) => free,
            None => {
                let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.runners[i % self.runners.len()].lock().await
            }
        };
        runner.refresh().await;
        let schema = runner
            .payload_schema()
            .ok_or_else(|| self.transform_error("it declares no payload"))?;
        let payload = payload_from_values(schema, events).map_err(|e| self.transform_error(e))?;
        let out = runner
            .run_with(lily_transforms::PAYLOAD, vec![payload])
            .await
            .map_err(|e| self.transform_error(e))?;
        drop(runner);
        rows(&out).map_err(|e| self.transform_error(e))
    }

    /// Maps `events` (each one notification) and writes them for `tenant`.
    /// `raw` is kept as the incident's payload when there is one event.
    #[instrument(skip_all, fields(tenant, events = events.len()))]
    pub async fn ingest(&self, tenant: &str, events: &[Value]) -> Result<Vec<WrittenIncident>> {
        let started = Instant::now();
        let rows = self.map(events).await?;
        let raw = match events {
            [one] => Some(one.clone()),
            _ => None,
        };
        let mut conn = self.db.connection().await?;
        let tx = self.db.tenant_transaction(&mut conn, tenant).await?;
        let mut written = Vec::with_capacity(rows.len());
        for row in rows {
            let upserted = tx
                .query_opt(
                    UPSERT,
                    &[
                        &tenant,
                        &row.source_system,
                        &row.external_id,
                        &row.incident_type,
                        &row.title,
                        &row.state,
                        &row.severity,
                        &row.url,
                        &raw,
                    ],
                )
                .await?;
            let (incident_id, created, changed) = match upserted {
                Some(r) => (r.get::<_, Uuid>(0), r.get::<_, bool>(1), true),
                None => {
                    let r = tx
                        .query_one(
                            "SELECT incident_id FROM metastore.incidents WHERE tenant_id = $1 AND source_system = $2 AND external_id = $3",
                            &[&tenant, &row.source_system, &row.external_id],
                        )
                        .await?;
                    (r.get(0), false, false)
                }
            };
            let mut linked_new = 0;
            if !row.asset_names.is_empty() {
                linked_new = tx
                    .execute(LINK, &[&tenant, &incident_id, &row.asset_names])
                    .await?;
            }
            let links = tx.query_one(LINKS, &[&incident_id]).await?;
            written.push(WrittenIncident {
                external_id: row.external_id,
                incident_id,
                created,
                changed: changed || linked_new > 0,
                linked_assets: links.get(0),
                pending_assets: links.get(1),
            });
        }
        tx.commit().await?;
        for w in &written {
            let outcome = match (w.created, w.changed) {
                (true, _) => "created",
                (false, true) => "updated",
                (false, false) => "unchanged",
            };
            metrics::counter!("lily_inbound_incidents_total", "outcome" => outcome).increment(1);
            debug!(external_id = %w.external_id, incident_id = %w.incident_id, outcome, "incident written");
        }
        metrics::histogram!("lily_inbound_write_seconds", "kind" => "incidents")
            .record(started.elapsed().as_secs_f64());
        Ok(written)
    }
}

/// The incident rows of a transform output.
fn rows(out: &RecordBatch) -> Result<Vec<IncidentRow>, String> {
    let text = |name: &str| -> Result<Option<Vec<Option<String>>>, String> {
        let Some(col) = out.column_by_name(name) else {
            return Ok(None);
        };
        let col = arrow::compute::cast(col, &DataType::Utf8).map_err(|e| e.to_string())?;
        let col = col.as_string::<i32>();
        Ok(Some(
            (0..col.len())
                .map(|i| col.is_valid(i).then(|| col.value(i).to_owned()))
                .collect(),
        ))
    };
    let required = |name: &str| -> Result<Vec<Option<String>>, String> {
        text(name)?.ok_or_else(|| format!("its output has no column {name}"))
    };
    let source_system = required("source_system")?;
    let external_id = required("external_id")?;
    let n = out.num_rows();
    let optional = |name: &str| -> Result<Vec<Option<String>>, String> {
        Ok(text(name)?.unwrap_or_else(|| vec![None; n]))
    };
    let incident_type = optional("incident_type")?;
    let title = optional("title")?;
    let state = optional("state")?;
    let severity = optional("severity")?;
    let url = optional("url")?;
    let names: Vec<Vec<String>> = match out.column_by_name(INCIDENT_ASSET_NAMES) {
        None => vec![Vec::new(); n],
        Some(col) => {
            let list = col
                .as_list_opt::<i32>()
                .ok_or_else(|| format!("{INCIDENT_ASSET_NAMES} is not a list"))?;
            (0..n)
                .map(|i| {
                    if list.is_null(i) {
                        return Ok(Vec::new());
                    }
                    let values = list.value(i);
                    let values = values
                        .as_string_opt::<i32>()
                        .ok_or_else(|| format!("{INCIDENT_ASSET_NAMES} is not a list of text"))?;
                    Ok(values.iter().flatten().map(str::to_owned).collect())
                })
                .collect::<Result<_, String>>()?
        }
    };
    let mut rows = Vec::with_capacity(n);
    for (i, asset_names) in names.into_iter().enumerate() {
        let (Some(source_system), Some(external_id)) =
            (source_system[i].clone(), external_id[i].clone())
        else {
            return Err(format!("row {i} has no source_system or external_id"));
        };
        rows.push(IncidentRow {
            source_system,
            external_id,
            incident_type: incident_type[i].clone(),
            title: title[i].clone(),
            state: state[i].clone(),
            severity: severity[i].clone(),
            url: url[i].clone(),
            asset_names,
        });
    }
    Ok(rows)
}
