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
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::info;
use uuid::Uuid;

use crate::auth::{Action, Caller};
use crate::error::{InboundError, Result};
use crate::server::{Body, Inbound, Tenant, header_text};

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

    /// Refuses, before anything is planned, an event that would write more
    /// than one request should or name an asset longer than the catalog
    /// takes: counted (from above) and measured without building a name.
    fn precheck(event: &Event) -> Result<()> {
        fn walk(fields: &[SchemaField], prefix: usize, count: &mut usize, longest: &mut usize) {
            for f in fields {
                let len = prefix + 1 + f.name.len();
                *count += 1;
                *longest = (*longest).max(len);
                walk(&f.fields, len, count, longest);
            }
        }
        let datasets = event
            .inputs
            .iter()
            .chain(&event.outputs)
            .chain(event.dataset.as_ref());
        let (mut writes, mut longest) = (0usize, 0usize);
        let mut edges = event.inputs.len().saturating_mul(event.outputs.len());
        if let Some(job) = &event.job {
            longest = job.namespace.len() + 1 + job.name.len();
        }
        for d in datasets {
            writes += 1;
            longest = longest.max(d.name.len());
            if let Some(schema) = &d.facets.schema {
                walk(&schema.fields, d.name.len(), &mut writes, &mut longest);
            }
            if let Some(lineage) = &d.facets.column_lineage {
                for (field, inputs) in &lineage.fields {
                    writes += 1 + inputs.input_fields.len();
                    edges += inputs.input_fields.len();
                    longest = longest.max(d.name.len() + 1 + field.len());
                    for i in &inputs.input_fields {
                        longest = longest.max(i.name.len() + 1 + i.field.len());
                    }
                }
            }
            if let Some(tags) = &d.facets.tags {
                writes += tags.tags.len();
                for field in tags.tags.iter().filter_map(|t| t.field.as_ref()) {
                    longest = longest.max(d.name.len() + 1 + field.len());
                }
            }
        }
        if writes > MAX_WRITES || edges > MAX_WRITES {
            return Err(InboundError::Unprocessable(format!(
                "the event names about {writes} assets and tags and {edges} lineage edges; \
                 at most {MAX_WRITES} of each are taken in one event"
            )));
        }
        if longest > MAX_NAME {
            return Err(InboundError::Unprocessable(format!(
                "a dataset name with its field path makes a qualified name of {longest} characters; \
                 the catalog takes at most {MAX_NAME}"
            )));
        }
        Ok(())
    }

    fn of(event: &Event) -> Plan {
        let mut plan = Plan::default();
        // Each dataset with where it is in the event, for refusals.
        let datasets: Vec<(String, &Dataset)> = (event.inputs.iter().enumerate())
            .map(|(i, d)| (format!("inputs[{i}]"), d))
            .chain((event.outputs.iter().enumerate()).map(|(i, d)| (format!("outputs[{i}]"), d)))
            .chain(event.dataset.iter().map(|d| ("dataset".to_owned(), d)))
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
        for (at, d) in &datasets {
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
/// alone and an existing asset keeps its type. Nothing is returned when the
/// asset exists unchanged (`upsert_unchanged` then reads it, in a statement
/// of its own, which also sees an asset another request just committed).
const UPSERT_ASSET: &str = "
INSERT INTO metastore.assets AS a (tenant_id, type_name, qualified_name, name, parent_guid, description)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (tenant_id, qualified_name) DO UPDATE SET
    parent_guid = coalesce($5, a.parent_guid),
    description = coalesce($6, a.description)
WHERE (a.parent_guid, a.description) IS DISTINCT FROM (coalesce($5, a.parent_guid), coalesce($6, a.description))
RETURNING guid";

const ASSET_GUID: &str =
    "SELECT guid FROM metastore.assets WHERE tenant_id = $1 AND qualified_name = $2";

const ADD_EDGE: &str = "
INSERT INTO metastore.lineage_edges (tenant_id, upstream_guid, downstream_guid, process_guid)
VALUES ($1, $2, $3, $4)
ON CONFLICT (tenant_id, upstream_guid, downstream_guid, process_guid) DO NOTHING";

const ADD_TAG: &str = "
INSERT INTO metastore.classifications (tenant_id, asset_guid, tag)
VALUES ($1, $2, $3) ON CONFLICT DO NOTHING";

async fn receive(
    State(inbound): State<Arc<Inbound>>,
    Tenant(tenant): Tenant,
    headers: HeaderMap,
    caller: Caller,
    Body(body): Body,
) -> Result<Json<Value>> {
    caller.require(&tenant, Action::Ingest)?;
    if header_text(&headers, "content-encoding")
        .is_some_and(|e| !e.eq_ignore_ascii_case("identity"))
    {
        return Err(InboundError::UnsupportedMediaType(
            "compressed OpenLineage events are not accepted yet: leave the transport's compression unset".into(),
        ));
    }
    let event: Event = serde_json::from_value(inbound.json("openlineage-event.v1", &body)?)
        .map_err(|e| InboundError::Unprocessable(e.to_string()))?;
    let kind = match (&event.run, &event.job, &event.dataset) {
        (Some(_), Some(_), _) => "run",
        (_, _, Some(_)) => "dataset",
        _ => "job",
    };
    Plan::precheck(&event)?;
    let plan = Plan::of(&event);
    // Tags are classifications: like the catalog API, they need a steward.
    if let Some(at) = plan.tags.values().next()
        && !caller.may(&tenant, Action::Curate)
    {
        return Err(InboundError::Forbidden(format!(
            "{at}: tags become classifications, which need the steward or admin role"
        )));
    }
    let mut conn = inbound.db.connection().await?;
    let tx = inbound.db.tenant_transaction(&mut conn, &tenant).await?;
    let (upsert, read, add_edge, add_tag) = (
        tx.prepare(UPSERT_ASSET).await?,
        tx.prepare(ASSET_GUID).await?,
        tx.prepare(ADD_EDGE).await?,
        tx.prepare(ADD_TAG).await?,
    );
    let mut guids: HashMap<&str, Uuid> = HashMap::new();
    // Parents first: tables before their columns (a column's parent is
    // always a table of the same event).
    let mut ordered: Vec<(&String, &PlannedAsset)> = plan.assets.iter().collect();
    ordered.sort_by_key(|(_, a)| a.type_name == "column");
    for (qualified, a) in ordered {
        let parent = a.parent.as_deref().and_then(|p| guids.get(p).copied());
        let row = tx
            .query_opt(
                &upsert,
                &[
                    &tenant.as_str(),
                    &a.type_name,
                    qualified,
                    &a.name,
                    &parent,
                    &a.description,
                ],
            )
            .await?;
        let row = match row {
            Some(row) => row,
            None => tx.query_one(&read, &[&tenant.as_str(), qualified]).await?,
        };
        guids.insert(qualified, row.get(0));
    }
    let process = plan.process.as_deref().and_then(|p| guids.get(p).copied());
    let mut edges = 0;
    for (up, down) in &plan.edges {
        edges += tx
            .execute(
                &add_edge,
                &[
                    &tenant.as_str(),
                    &guids[up.as_str()],
                    &guids[down.as_str()],
                    &process,
                ],
            )
            .await?;
    }
    let mut tagged = 0;
    for (asset, tag) in plan.tags.keys() {
        tagged += tx
            .execute(&add_tag, &[&tenant.as_str(), &guids[asset.as_str()], tag])
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
        let Err(InboundError::Unprocessable(why)) = Plan::precheck(&e) else {
            panic!("150 inputs by 150 outputs were planned");
        };
        assert!(why.contains("22500 lineage edges"), "{why}");
        // Names grow with nesting: measured before they are built.
        let deep = (0..30).fold(
            json!([]),
            |inner, i| json!([{"name": format!("level{i}_{}", "x".repeat(80)), "fields": inner}]),
        );
        let e = event(json!({
            "dataset": {"namespace": "n", "name": "t", "facets": {"schema": {"fields": deep}}}
        }));
        let Err(InboundError::Unprocessable(why)) = Plan::precheck(&e) else {
            panic!("a 2,700-character name was planned");
        };
        assert!(why.contains("at most 2000"), "{why}");
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
