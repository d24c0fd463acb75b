//! Incidents from outside (Monte Carlo over HTTP or Kafka): the event runs
//! through its pre-ingest `.sql` transform, and the rows it yields are
//! applied to incidents keyed by (tenant, source, external id), with their
//! asset links, in one tenant-scoped transaction. An event already applied
//! (by the digest of its JSON) changes nothing.
//!
//! Events that arrive together (concurrent webhooks) are mapped by one run
//! of the transform and written by one transaction per tenant, when the
//! transform numbers its rows by event (`_event`, see
//! [`lily_transforms::EVENT`]); each request is still answered only after
//! the commit that wrote it. A group that fails is written again event by
//! event, so one bad event fails only itself.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use lily_config::{MonteCarloConfig, TableNaming};
use lily_transforms::{
    CatalogState, OutputContract, TransformRunner, TransformSet, payload_from_values,
};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{Mutex, mpsc, oneshot};
use tracing::{debug, instrument};
use uuid::Uuid;

pub use super::links::{IncidentLink, read as read_links};

use super::rows::{IncidentRow, rows};
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
    pub linked_assets: usize,
    /// Assets it names that are not linked yet; they are linked when they
    /// arrive (see `pending`).
    pub pending_assets: usize,
    /// The links not made yet, each with why.
    pub pending: Vec<IncidentLink>,
}

/// Maps and writes incidents.
pub struct IncidentIngest {
    core: Arc<Core>,
    /// Events waiting for a lane, when the transform numbers its rows.
    queue: Option<mpsc::Sender<Pending>>,
}

/// Most events one run of the transform and one transaction take.
const MAX_GROUP: usize = 32;

/// An event waiting to be written, and whom to tell.
struct Pending {
    tenant: String,
    event: Value,
    reply: oneshot::Sender<Result<Vec<WrittenIncident>>>,
}

struct Core {
    db: Metastore,
    transform: String,
    /// Each tenant's rule for warehouse table ids.
    naming: BTreeMap<String, TableNaming>,
    /// One runner per core: a run holds its runner (its tables are swapped
    /// per run), so concurrent requests take different ones.
    runners: Vec<Mutex<TransformRunner>>,
    next: std::sync::atomic::AtomicUsize,
}

impl IncidentIngest {
    /// Plans the transform of `config` in `set` (a pre-ingest file
    /// targeting incidents).
    pub async fn new(
        db: Metastore,
        set: &TransformSet,
        state: Arc<CatalogState>,
        config: &MonteCarloConfig,
    ) -> Result<Self> {
        let transform = config.transform.as_str();
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut runners = Vec::with_capacity(cores);
        let mut numbered = false;
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
            numbered = runner
                .payload_schema()
                .is_some_and(|s| s.field_with_name(lily_transforms::EVENT).is_ok());
            runners.push(Mutex::new(runner));
        }
        let lanes = runners.len();
        let core = Arc::new(Core {
            db,
            transform: transform.to_owned(),
            naming: config.naming.clone(),
            runners,
            next: std::sync::atomic::AtomicUsize::new(0),
        });
        let queue = numbered.then(|| {
            let (tx, rx) = mpsc::channel::<Pending>(MAX_GROUP * lanes * 4);
            let rx = Arc::new(Mutex::new(rx));
            for _ in 0..lanes {
                tokio::spawn(lane(core.clone(), rx.clone()));
            }
            tx
        });
        Ok(Self { core, queue })
    }

    /// Maps `event` (one notification) and applies it for `tenant`; the
    /// answer comes after the commit.
    pub async fn ingest(&self, tenant: &str, event: &Value) -> Result<Vec<WrittenIncident>> {
        let Some(queue) = &self.queue else {
            return self.core.ingest(tenant, event).await;
        };
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            tenant: tenant.to_owned(),
            event: event.clone(),
            reply,
        };
        let stopped = || InboundError::Internal("the incident writer stopped".into());
        queue.send(pending).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// Takes the events waiting (up to [`MAX_GROUP`]) and writes them as one
/// group, until the queue closes.
async fn lane(core: Arc<Core>, queue: Arc<Mutex<mpsc::Receiver<Pending>>>) {
    loop {
        let group = {
            let mut rx = queue.lock().await;
            let Some(first) = rx.recv().await else {
                return;
            };
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(p) => group.push(p),
                    Err(_) => break,
                }
            }
            group
        };
        core.write_group(group).await;
    }
}

impl Core {
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

    /// Maps `event` alone and applies it for `tenant`.
    #[instrument(skip_all, fields(tenant))]
    async fn ingest(&self, tenant: &str, event: &Value) -> Result<Vec<WrittenIncident>> {
        let rows = self.map(std::slice::from_ref(event)).await?;
        let mut written = self.write(tenant, vec![(event, rows)]).await?;
        Ok(written.pop().unwrap_or_default())
    }

    /// Maps `group` in one run and writes each tenant's events in one
    /// transaction; a run or a transaction that fails is done again event
    /// by event. Every event's sender gets its own answer.
    #[instrument(skip_all, fields(events = group.len()))]
    async fn write_group(&self, group: Vec<Pending>) {
        metrics::histogram!("lily_inbound_group_events", "kind" => "incidents")
            .record(group.len() as f64);
        let events: Vec<Value> = group.iter().map(|p| p.event.clone()).collect();
        let n = events.len();
        let by_event = match self.map(&events).await {
            Ok(rows) if n == 1 => Some(vec![rows]),
            Ok(rows) if rows.iter().all(|r| r.event.is_some_and(|e| e < n)) => {
                let mut by_event: Vec<Vec<IncidentRow>> = vec![Vec::new(); n];
                for row in rows {
                    if let Some(e) = row.event {
                        by_event[e].push(row);
                    }
                }
                Some(by_event)
            }
            Err(e) if n == 1 => {
                if let Some(p) = group.into_iter().next() {
                    let _ = p.reply.send(Err(e));
                }
                return;
            }
            // A transform (or a version of it) that does not number its
            // rows, or a run that failed: each event alone.
            _ => None,
        };
        let Some(mut by_event) = by_event else {
            for p in group {
                let answer = self.ingest(&p.tenant, &p.event).await;
                let _ = p.reply.send(answer);
            }
            return;
        };
        let mut tenants: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, p) in group.iter().enumerate() {
            tenants.entry(p.tenant.as_str()).or_default().push(i);
        }
        let mut answers: Vec<Option<Result<Vec<WrittenIncident>>>> =
            (0..group.len()).map(|_| None).collect();
        for (tenant, mut members) in tenants {
            // Incidents in one order whatever the lane, so two groups
            // cannot lock two incidents in opposite orders; the sort is
            // stable, so the events of one incident keep their order.
            members.sort_by(|a, b| {
                let key = |i: &usize| by_event[*i].first().map(|r| r.external_id.as_str());
                key(a).cmp(&key(b))
            });
            let writes = members
                .iter()
                .map(|&i| (&events[i], std::mem::take(&mut by_event[i])))
                .collect();
            match self.write(tenant, writes).await {
                Ok(written) => {
                    for (&i, w) in members.iter().zip(written) {
                        answers[i] = Some(Ok(w));
                    }
                }
                Err(e) if members.len() == 1 => answers[members[0]] = Some(Err(e)),
                Err(e) => {
                    debug!(error = %e, events = members.len(), "a group failed; writing its events one by one");
                    for &i in &members {
                        answers[i] = Some(self.ingest(tenant, &events[i]).await);
                    }
                }
            }
        }
        for (p, answer) in group.into_iter().zip(answers) {
            let answer = answer
                .unwrap_or_else(|| Err(InboundError::Internal("an event was not written".into())));
            let _ = p.reply.send(answer);
        }
    }

    /// Applies each event's rows for `tenant`, in order, in one
    /// transaction; what each event wrote.
    async fn write(
        &self,
        tenant: &str,
        events: Vec<(&Value, Vec<IncidentRow>)>,
    ) -> Result<Vec<Vec<WrittenIncident>>> {
        let started = Instant::now();
        let mut conn = self.db.connection().await?;
        let tx = self.db.tenant_transaction(&mut conn, tenant).await?;
        let out = super::write::write(&tx, tenant, self.naming.get(tenant), events).await?;
        tx.commit().await?;
        for w in out.iter().flatten() {
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
        Ok(out)
    }
}
