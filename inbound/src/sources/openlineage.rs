//! OpenLineage: the endpoint of its HTTP transport, under a per-tenant base
//! URL. A producer configured with `url = https://lily/v1/tenants/acme/openlineage/`
//! and the default `endpoint = api/v1/lineage` posts one event per request
//! to `/v1/tenants/acme/openlineage/api/v1/lineage`. The client joins the
//! two with Python's `urljoin`, so a base URL without its trailing slash
//! loses its last segment; `/v1/tenants/acme/api/v1/lineage` is served too.
//!
//! What an event gives the catalog (docs/inbound.md has the mapping and
//! where each field is defined): every dataset becomes a table asset named
//! by its OpenLineage `name`, the `schema` facet gives its columns (nested
//! fields as `parent.child`), a run's inputs and outputs give table lineage
//! through the job (a `process` asset), the `columnLineage` facet gives
//! column lineage, and the `tags` facet gives classifications. The edges
//! and tags commit in one transaction, and propagation picks them up from
//! the stream like any other change.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use deadpool_postgres::Transaction;
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::info;
use uuid::Uuid;

use crate::auth::{Action, Caller};
use crate::error::{InboundError, Result};
use crate::server::{Body, Inbound, Tenant};

/// The longest qualified name, as the catalog API accepts it.
const MAX_NAME: usize = 2000;
/// The most assets, and lineage edges, one event may name: a request is one
/// transaction, and 1,000 inputs by 1,000 outputs must not become a
/// million edges.
const MAX_WRITES: usize = 20_000;

pub(super) fn routes() -> Router<Arc<Inbound>> {
    Router::new()
        .route(
            "/v1/tenants/{tenant}/openlineage/api/v1/lineage",
            post(receive),
        )
        .route("/v1/tenants/{tenant}/api/v1/lineage", post(receive))
}

/// A RunEvent (`run` and `job`), a DatasetEvent (`dataset`) or a JobEvent
/// (`job` alone), as the OpenLineage spec (2-0-2) defines them; fields Lily
/// does not use are ignored.
#[derive(Deserialize)]
struct Event {
    #[serde(rename = "eventType")]
    event_type: Option<String>,
    run: Option<Value>,
    job: Option<Job>,
    #[serde(default)]
    inputs: Vec<Dataset>,
    #[serde(default)]
    outputs: Vec<Dataset>,
    dataset: Option<Dataset>,
}

#[derive(Deserialize)]
struct Job {
    namespace: String,
    name: String,
}

#[derive(Deserialize)]
struct Dataset {
    name: String,
    #[serde(default)]
    facets: Facets,
}

#[derive(Deserialize, Default)]
struct Facets {
    schema: Option<SchemaFacet>,
    #[serde(rename = "columnLineage")]
    column_lineage: Option<ColumnLineageFacet>,
    tags: Option<TagsFacet>,
    documentation: Option<DocumentationFacet>,
}

#[derive(Deserialize)]
struct SchemaFacet {
    #[serde(default)]
    fields: Vec<SchemaField>,
}

#[derive(Deserialize)]
struct SchemaField {
    name: String,
    description: Option<String>,
    #[serde(default)]
    fields: Vec<SchemaField>,
}

#[derive(Deserialize)]
struct ColumnLineageFacet {
    #[serde(default)]
    fields: BTreeMap<String, ColumnInputs>,
}

#[derive(Deserialize)]
struct ColumnInputs {
    #[serde(rename = "inputFields", default)]
    input_fields: Vec<InputField>,
}

#[derive(Deserialize)]
struct InputField {
    name: String,
    field: String,
}

#[derive(Deserialize)]
struct TagsFacet {
    #[serde(default)]
    tags: Vec<TagField>,
}

#[derive(Deserialize)]
struct TagField {
    key: String,
    value: Option<String>,
    field: Option<String>,
}

#[derive(Deserialize)]
struct DocumentationFacet {
    description: Option<String>,
}

impl TagField {
    /// The classification a tag stands for: its key when its value is
    /// empty or `true` (`{"key": "PII", "value": "true"}`), else
    /// `key:value` (`{"key": "tier", "value": "gold"}` is `tier:gold`).
    fn classification(&self) -> String {
        match self.value.as_deref().map(str::trim) {
            None | Some("") => self.key.clone(),
            Some(v) if v.eq_ignore_ascii_case("true") => self.key.clone(),
            Some(v) => format!("{}:{v}", self.key),
        }
    }
}

/// An asset an event names.
struct PlannedAsset {
    type_name: &'static str,
    name: String,
    /// The parent's qualified name (a column's table).
    parent: Option<String>,
    description: Option<String>,
}

impl PlannedAsset {
    fn new(type_name: &'static str, qualified_name: &str, parent: Option<&str>) -> Self {
        Self {
            type_name,
            name: leaf(qualified_name),
            parent: parent.map(str::to_owned),
            description: None,
        }
    }
}

/// What one event asks of the catalog, before anything is written.
#[derive(Default)]
struct Plan {
    /// Assets by qualified name.
    assets: BTreeMap<String, PlannedAsset>,
    /// (upstream, downstream) by qualified name, through `process`.
    edges: BTreeSet<(String, String)>,
    process: Option<String>,
    /// (asset, tag) and where in the event the tag was given.
    tags: BTreeMap<(String, String), String>,
}

fn leaf(qualified_name: &str) -> String {
    qualified_name
        .rsplit('.')
        .next()
        .unwrap_or(qualified_name)
        .to_owned()
}

impl Plan {
    fn dataset(&mut self, d: &Dataset) {
        let description = d
            .facets
            .documentation
            .as_ref()
            .and_then(|f| f.description.clone());
        let entry = self
            .assets
            .entry(d.name.clone())
            .or_insert_with(|| PlannedAsset::new("table", &d.name, None));
        if description.is_some() {
            entry.description = description;
        }
        if let Some(schema) = &d.facets.schema {
            self.fields(&d.name, &d.name, &schema.fields);
        }
    }

    /// Columns of `table`; a nested field is `parent.child` under `table`,
    /// as `columnLineage` names it.
    fn fields(&mut self, table: &str, prefix: &str, fields: &[SchemaField]) {
        for f in fields {
            let qualified = format!("{prefix}.{}", f.name);
            self.column(table, &qualified, f.description.clone());
            self.fields(table, &qualified, &f.fields);
        }
    }

    fn column(&mut self, table: &str, qualified: &str, description: Option<String>) {
        self.assets
            .entry(table.to_owned())
            .or_insert_with(|| PlannedAsset::new("table", table, None));
        let entry = self
            .assets
            .entry(qualified.to_owned())
            .or_insert_with(|| PlannedAsset::new("column", qualified, Some(table)));
        if description.is_some() {
            entry.description = description;
        }
    }

    /// Refuses an event that would write more than one request should, or
    /// name an asset longer than the catalog takes.
    fn within_bounds(&self) -> Result<()> {
        if self.assets.len() > MAX_WRITES || self.edges.len() > MAX_WRITES {
            return Err(InboundError::Unprocessable(format!(
                "the event names {} assets and {} lineage edges; at most {MAX_WRITES} of each are taken in one event",
                self.assets.len(),
                self.edges.len()
            )));
        }
        if let Some(long) = self.assets.keys().find(|n| n.len() > MAX_NAME) {
            return Err(InboundError::Unprocessable(format!(
                "{}...: a dataset name with its field path makes a qualified name longer than {MAX_NAME} characters",
                &long[..long.floor_char_boundary(80)]
            )));
        }
        Ok(())
    }

    fn of(event: &Event) -> Plan {
        let mut plan = Plan::default();
        let datasets: Vec<(&str, &Dataset)> = event
            .inputs
            .iter()
            .map(|d| ("inputs", d))
            .chain(event.outputs.iter().map(|d| ("outputs", d)))
            .chain(event.dataset.iter().map(|d| ("dataset", d)))
            .collect();
        for (_, d) in &datasets {
            plan.dataset(d);
        }
        // A failed or aborted run says nothing about where its outputs
        // come from.
        let lineage = !matches!(event.event_type.as_deref(), Some("FAIL") | Some("ABORT"));
        if lineage && let Some(job) = &event.job {
            plan.process = Some(format!("{}.{}", job.namespace, job.name));
            for input in &event.inputs {
                for output in &event.outputs {
                    if input.name != output.name {
                        plan.edges.insert((input.name.clone(), output.name.clone()));
                    }
                }
            }
            for output in &event.outputs {
                let Some(columns) = &output.facets.column_lineage else {
                    continue;
                };
                for (field, inputs) in &columns.fields {
                    let downstream = format!("{}.{field}", output.name);
                    plan.column(&output.name, &downstream, None);
                    for i in &inputs.input_fields {
                        let upstream = format!("{}.{}", i.name, i.field);
                        plan.column(&i.name, &upstream, None);
                        if upstream != downstream {
                            plan.edges.insert((upstream, downstream.clone()));
                        }
                    }
                }
            }
        }
        if let Some(process) = &plan.process
            && !plan.edges.is_empty()
        {
            let name = event
                .job
                .as_ref()
                .map(|j| j.name.clone())
                .unwrap_or_default();
            plan.assets
                .entry(process.clone())
                .or_insert_with(|| PlannedAsset {
                    name,
                    ..PlannedAsset::new("process", process, None)
                });
        }
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (list, d) in &datasets {
            let i = index.entry(list).or_default();
            let at = if *list == "dataset" {
                "dataset".to_owned()
            } else {
                format!("{list}[{i}]")
            };
            *i += 1;
            let Some(tags) = &d.facets.tags else {
                continue;
            };
            for (t, tag) in tags.tags.iter().enumerate() {
                let asset = match &tag.field {
                    Some(field) => {
                        let column = format!("{}.{field}", d.name);
                        plan.column(&d.name, &column, None);
                        column
                    }
                    None => d.name.clone(),
                };
                plan.tags
                    .entry((asset, tag.classification()))
                    .or_insert_with(|| format!("{at}.facets.tags.tags[{t}]"));
            }
        }
        plan
    }
}

/// Creates or updates an asset the event names; governance fields are left
/// alone and an existing asset keeps its type. Returns its guid.
async fn upsert_asset(
    tx: &Transaction<'_>,
    tenant: &str,
    qualified_name: &str,
    (type_name, name, parent, description): (&str, &str, Option<Uuid>, Option<&str>),
) -> Result<Uuid> {
    let row = tx
        .query_one(
            "WITH up AS (
                 INSERT INTO metastore.assets AS a (tenant_id, type_name, qualified_name, name, parent_guid, description)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (tenant_id, qualified_name) DO UPDATE SET
                     parent_guid = coalesce($5, a.parent_guid),
                     description = coalesce($6, a.description)
                 WHERE (a.parent_guid, a.description) IS DISTINCT FROM (coalesce($5, a.parent_guid), coalesce($6, a.description))
                 RETURNING guid)
             SELECT guid FROM up
             UNION ALL
             SELECT guid FROM metastore.assets WHERE tenant_id = $1 AND qualified_name = $3
             LIMIT 1",
            &[&tenant, &type_name, &qualified_name, &name, &parent, &description],
        )
        .await?;
    Ok(row.get(0))
}

async fn receive(
    State(inbound): State<Arc<Inbound>>,
    Tenant(tenant): Tenant,
    caller: Caller,
    Body(body): Body,
) -> Result<Json<Value>> {
    caller.require(&tenant, Action::Ingest)?;
    let event: Event = serde_json::from_value(inbound.json("openlineage-event.v1", &body)?)
        .map_err(|e| InboundError::Unprocessable(e.to_string()))?;
    let kind = match (&event.run, &event.job, &event.dataset) {
        (Some(_), Some(_), _) => "run",
        (_, _, Some(_)) => "dataset",
        _ => "job",
    };
    let plan = Plan::of(&event);
    // Tags are classifications: like the catalog API, they need a steward.
    if let Some(at) = plan.tags.values().next()
        && !caller.may(&tenant, Action::Curate)
    {
        return Err(InboundError::Forbidden(format!(
            "{at}: tags become classifications, which need the steward or admin role"
        )));
    }
    plan.within_bounds()?;
    let mut conn = inbound.db.connection().await?;
    let tx = inbound.db.tenant_transaction(&mut conn, &tenant).await?;
    let mut guids: HashMap<&str, Uuid> = HashMap::new();
    // Parents first: tables before their columns (a column's parent is
    // always a table of the same event).
    let mut ordered: Vec<(&String, &PlannedAsset)> = plan.assets.iter().collect();
    ordered.sort_by_key(|(_, a)| a.type_name == "column");
    for (qualified, a) in ordered {
        let parent = a.parent.as_deref().and_then(|p| guids.get(p).copied());
        let guid = upsert_asset(
            &tx,
            &tenant,
            qualified,
            (a.type_name, &a.name, parent, a.description.as_deref()),
        )
        .await?;
        guids.insert(qualified, guid);
    }
    let process = plan.process.as_deref().and_then(|p| guids.get(p).copied());
    let mut edges = 0;
    for (up, down) in &plan.edges {
        edges += tx
            .execute(
                "INSERT INTO metastore.lineage_edges (tenant_id, upstream_guid, downstream_guid, process_guid)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (tenant_id, upstream_guid, downstream_guid, process_guid) DO NOTHING",
                &[&tenant, &guids[up.as_str()], &guids[down.as_str()], &process],
            )
            .await?;
    }
    let mut tagged = 0;
    for (asset, tag) in plan.tags.keys() {
        tagged += tx
            .execute(
                "INSERT INTO metastore.classifications (tenant_id, asset_guid, tag)
                 VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&tenant, &guids[asset.as_str()], tag],
            )
            .await?;
    }
    tx.commit().await?;
    metrics::counter!("lily_inbound_openlineage_events_total", "kind" => kind).increment(1);
    info!(tenant = %tenant, kind, assets = plan.assets.len(), edges, tagged, "OpenLineage event");
    Ok(Json(json!({
        "event": kind,
        "assets": plan.assets.len(),
        "edges_added": edges,
        "tags_added": tagged,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(v: Value) -> Event {
        serde_json::from_value(v).expect("an event")
    }

    #[test]
    fn a_run_gives_tables_columns_edges_and_tags() {
        let e = event(json!({
            "eventType": "COMPLETE",
            "run": {"runId": "r"},
            "job": {"namespace": "etl", "name": "daily"},
            "inputs": [{"namespace": "postgres://db:5432", "name": "shop.public.orders",
                "facets": {"schema": {"fields": [{"name": "id"}, {"name": "address", "fields": [{"name": "city"}]}]},
                           "tags": {"tags": [{"key": "PII", "value": "true", "field": "address.city"},
                                             {"key": "tier", "value": "gold"}]}}}],
            "outputs": [{"namespace": "postgres://db:5432", "name": "shop.marts.cities",
                "facets": {"columnLineage": {"fields": {"city": {"inputFields": [
                    {"namespace": "postgres://db:5432", "name": "shop.public.orders", "field": "address.city"}]}}}}}]
        }));
        let plan = Plan::of(&e);
        let names: Vec<&str> = plan.assets.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "etl.daily",
                "shop.marts.cities",
                "shop.marts.cities.city",
                "shop.public.orders",
                "shop.public.orders.address",
                "shop.public.orders.address.city",
                "shop.public.orders.id",
            ]
        );
        let city = &plan.assets["shop.public.orders.address.city"];
        assert_eq!(city.type_name, "column");
        assert_eq!(city.name, "city");
        assert_eq!(city.parent.as_deref(), Some("shop.public.orders"));
        assert_eq!(plan.assets["etl.daily"].type_name, "process");
        assert_eq!(plan.assets["etl.daily"].name, "daily");
        assert!(plan.edges.contains(&(
            "shop.public.orders".to_owned(),
            "shop.marts.cities".to_owned()
        )));
        assert!(plan.edges.contains(&(
            "shop.public.orders.address.city".to_owned(),
            "shop.marts.cities.city".to_owned()
        )));
        let tags: Vec<(&str, &str)> = plan
            .tags
            .keys()
            .map(|(a, t)| (a.as_str(), t.as_str()))
            .collect();
        assert_eq!(
            tags,
            [
                ("shop.public.orders", "tier:gold"),
                ("shop.public.orders.address.city", "PII")
            ]
        );
        assert_eq!(
            plan.tags[&("shop.public.orders".to_owned(), "tier:gold".to_owned())],
            "inputs[0].facets.tags.tags[1]"
        );
    }

    #[test]
    fn an_event_of_too_many_edges_is_refused_before_writing() {
        let datasets = |n: usize| -> Vec<Value> {
            (0..n)
                .map(|i| json!({"namespace": "n", "name": format!("d{i}")}))
                .collect()
        };
        let e = event(json!({
            "eventType": "COMPLETE", "run": {"runId": "r"}, "job": {"namespace": "etl", "name": "wide"},
            "inputs": datasets(150), "outputs": datasets(150)
        }));
        let plan = Plan::of(&e);
        let Err(InboundError::Unprocessable(why)) = plan.within_bounds() else {
            panic!("150 inputs by 150 outputs were taken");
        };
        assert!(why.contains("lineage edges"), "{why}");
    }

    #[test]
    fn a_failed_run_records_datasets_but_no_lineage() {
        let e = event(json!({
            "eventType": "FAIL", "run": {"runId": "r"}, "job": {"namespace": "etl", "name": "daily"},
            "inputs": [{"namespace": "n", "name": "a"}], "outputs": [{"namespace": "n", "name": "b"}]
        }));
        let plan = Plan::of(&e);
        assert!(plan.edges.is_empty());
        assert!(plan.process.is_none());
        assert_eq!(plan.assets.len(), 2);
    }
}
