//! What a batch of DataHub proposals asks of the catalog, worked out
//! before anything is written. Each aspect maps onto assets, parent links,
//! lineage edges and classifications (docs/inbound.md has the table, with
//! the `.pdl` each field comes from); aspects that carry no catalog
//! metadata are counted and skipped, and a proposal that cannot be read
//! is set aside with its position while the rest of the batch goes on.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::{Value, json};

use super::urn::{Urn, id_of, simple_field_path};
use super::wire::{Proposal, member_name};
use crate::bulk::Unreadable;
use crate::bulk::{AssetChange, MAX_NAME, Plan, Target, leaf};

/// The most lineage edges one fine-grained lineage entry may give (its
/// upstreams times its downstreams).
const MAX_FAN: usize = 10_000;

/// The aspects Lily reads, and the ones it knows carry no catalog metadata;
/// used as metric labels (anything else is `other`, so a caller cannot
/// mint label values).
const KNOWN_ASPECTS: &[&str] = &[
    "status",
    "datasetProperties",
    "editableDatasetProperties",
    "containerProperties",
    "editableContainerProperties",
    "container",
    "subTypes",
    "viewProperties",
    "schemaMetadata",
    "editableSchemaMetadata",
    "upstreamLineage",
    "globalTags",
    "glossaryTerms",
    "ownership",
    "dataPlatformInstance",
    "dashboardInfo",
    "chartInfo",
    "dataFlowInfo",
    "dataJobInfo",
    "dataJobInputOutput",
    "datahubIngestionCheckpoint",
    "browsePaths",
    "browsePathsV2",
    "datasetProfile",
    "operation",
    "queryProperties",
    "querySubjects",
];

/// The metric label of an aspect name.
pub fn aspect_label(name: &str) -> &'static str {
    KNOWN_ASPECTS
        .iter()
        .find(|k| **k == name)
        .copied()
        .unwrap_or("other")
}

impl Plan {
    /// The plan of `proposals`, each with its position.
    pub fn of<'a>(proposals: impl IntoIterator<Item = (String, &'a Proposal)>) -> Plan {
        let mut plan = Plan::default();
        for (position, p) in proposals {
            let label = aspect_label(&p.aspect_name);
            match plan.proposal(p, &position) {
                Ok(true) => *plan.applied.entry(label).or_default() += 1,
                Ok(false) => *plan.skipped.entry(label).or_default() += 1,
                Err(error) => plan.rejected.push(Unreadable {
                    position,
                    error: format!("{} of {}: {error}", p.aspect_name, p.entity_urn),
                }),
            }
        }
        // A removal wins over the other aspects of the same batch.
        let removed = plan.removals.clone();
        plan.assets.retain(|t, _| !removed.contains(t));
        plan.links.retain(|t, _| !removed.contains(t));
        plan.tags.retain(|(t, _), _| !removed.contains(t));
        plan
    }

    /// Maps one proposal; `Ok(false)` when it carries nothing Lily keeps.
    fn proposal(&mut self, p: &Proposal, position: &str) -> Result<bool, String> {
        let Some(urn) = Urn::parse(&p.entity_urn) else {
            return Err("the entity URN cannot be read".into());
        };
        if matches!(urn, Urn::Other(_)) {
            return Ok(false);
        }
        match p.change_type.as_str() {
            "UPSERT" | "CREATE" | "UPDATE" | "RESTATE" | "CREATE_ENTITY" => {}
            "DELETE" if p.aspect_name.ends_with("Key") => {
                let target = self.target(&urn)?;
                self.removals.insert(target);
                return Ok(true);
            }
            "PATCH" => return self.patch(&urn, p, position),
            _ => return Ok(false),
        }
        let Some(value) = &p.value else {
            return Ok(false);
        };
        self.aspect(&urn, &p.entity_urn, &p.aspect_name, value, position, false)
    }

    /// A JSON Patch (`mcp_patch_builder`): its `add` operations on tags,
    /// glossary terms and lineage are applied as additions; other
    /// operations are skipped.
    fn patch(&mut self, urn: &Urn, p: &Proposal, position: &str) -> Result<bool, String> {
        let ops = match &p.value {
            Some(Value::Array(ops)) => ops.clone(),
            Some(Value::Object(o)) => match o.get("patch") {
                Some(Value::Array(ops)) => ops.clone(),
                _ => return Err("a PATCH without a `patch` array".into()),
            },
            _ => return Err("a PATCH that is not a JSON Patch".into()),
        };
        let mut any = false;
        for op in &ops {
            let (Some("add"), Some(path), Some(value)) = (
                op.get("op").and_then(Value::as_str),
                op.get("path").and_then(Value::as_str),
                op.get("value"),
            ) else {
                continue;
            };
            let aspect = match (p.aspect_name.as_str(), path.split('/').nth(1)) {
                ("globalTags", Some("tags")) => json!({"tags": [value]}),
                ("glossaryTerms", Some("terms")) => json!({"terms": [value]}),
                ("upstreamLineage", Some("upstreams")) => json!({"upstreams": [value]}),
                ("upstreamLineage", Some("fineGrainedLineages")) => {
                    json!({"upstreams": [], "fineGrainedLineages": [value]})
                }
                _ => continue,
            };
            any |= self.aspect(urn, &p.entity_urn, &p.aspect_name, &aspect, position, true)?;
        }
        Ok(any)
    }

    /// The qualified name (or container URN) of an entity.
    fn target(&self, urn: &Urn) -> Result<Target, String> {
        let name = match urn {
            Urn::Dataset { name, .. } => name.clone(),
            Urn::SchemaField { dataset, field } => format!("{dataset}.{field}"),
            Urn::Container(guid) => return Ok(Target::Container(guid.clone())),
            Urn::Chart { platform, id } => format!("{platform}.charts.{id}"),
            Urn::Dashboard { platform, id } => format!("{platform}.dashboards.{id}"),
            Urn::DataFlow { orchestrator, flow } => format!("{orchestrator}.{flow}"),
            Urn::DataJob {
                orchestrator,
                flow,
                job,
            } => format!("{orchestrator}.{flow}.{job}"),
            Urn::Other(kind) => return Err(format!("a {kind} is not a catalog asset")),
        };
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(format!(
                "its qualified name has {} characters; the catalog takes 1 to {MAX_NAME}",
                name.len()
            ));
        }
        Ok(Target::Named(name))
    }

    /// The change to the entity `urn`, created with its defaults.
    fn entity(&mut self, urn: &Urn, raw: &str) -> Result<(Target, &mut AssetChange), String> {
        let target = self.target(urn)?;
        let (default_type, leaf, parent) = match (urn, &target) {
            (Urn::Container(_), _) => ("container", String::new(), None),
            (Urn::Dataset { .. }, Target::Named(n)) => ("table", leaf(n), None),
            (Urn::SchemaField { dataset, field }, _) => {
                ("column", leaf(field), Some(dataset.clone()))
            }
            (Urn::Chart { id, .. }, _) => ("chart", id.clone(), None),
            (Urn::Dashboard { id, .. }, _) => ("dashboard", id.clone(), None),
            (Urn::DataFlow { flow, .. }, _) => ("process", flow.clone(), None),
            (Urn::DataJob { job, .. }, _) => ("process", job.clone(), None),
            _ => ("table", String::new(), None),
        };
        if let Some(table) = &parent {
            self.ensure_dataset(table);
        }
        let change = self.assets.entry(target.clone()).or_insert_with(|| {
            let mut c = AssetChange::new(default_type, leaf);
            c.parent = parent;
            c
        });
        if let Urn::Dataset { platform, env, .. } = urn {
            change
                .attributes
                .insert("platform".into(), platform.clone().into());
            change.attributes.insert("env".into(), env.clone().into());
        }
        if !matches!(urn, Urn::SchemaField { .. }) {
            change
                .attributes
                .insert("datahub_urn".into(), raw.to_owned().into());
        }
        Ok((target, change))
    }

    /// A dataset named by another's aspect (an upstream, a column's table):
    /// created if new, left as it is otherwise.
    fn ensure_dataset(&mut self, name: &str) {
        self.assets
            .entry(Target::Named(name.to_owned()))
            .or_insert_with(|| AssetChange::new("table", leaf(name)));
    }

    /// A column of `table` at `field` (a simple or v2 path).
    fn column(&mut self, table: &str, field: &str) -> Result<(String, &mut AssetChange), String> {
        let field = simple_field_path(field);
        let name = format!("{table}.{field}");
        if name.len() > MAX_NAME {
            return Err(format!(
                "the column {field:?} makes a qualified name of {} characters; the catalog takes at most {MAX_NAME}",
                name.len()
            ));
        }
        self.ensure_dataset(table);
        let change = self
            .assets
            .entry(Target::Named(name.clone()))
            .or_insert_with(|| {
                let mut c = AssetChange::new("column", leaf(&field));
                c.parent = Some(table.to_owned());
                c
            });
        Ok((name, change))
    }

    /// An asset named by a dataset or schemaField URN in a lineage aspect.
    fn lineage_end(&mut self, urn: &str) -> Result<String, String> {
        match Urn::parse(urn) {
            Some(Urn::Dataset { name, .. }) => {
                self.ensure_dataset(&name);
                Ok(name)
            }
            Some(Urn::SchemaField { dataset, field }) => Ok(self.column(&dataset, &field)?.0),
            Some(other @ (Urn::Chart { .. } | Urn::Dashboard { .. })) => {
                let (Target::Named(name), _) = self.entity(&other, urn)? else {
                    return Err(format!("{urn} is not an asset"));
                };
                Ok(name)
            }
            _ => Err(format!("{urn} is neither a dataset nor a field")),
        }
    }

    fn tag(&mut self, target: Target, tag: String, position: &str, at: &str) {
        self.tags
            .entry((target, tag))
            .or_insert_with(|| format!("{position}: {at}"));
    }

    /// Maps one aspect of `urn`. `additive` (a PATCH): lineage is added
    /// to, not restated.
    fn aspect(
        &mut self,
        urn: &Urn,
        raw: &str,
        aspect: &str,
        value: &Value,
        position: &str,
        additive: bool,
    ) -> Result<bool, String> {
        fn read<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, String> {
            T::deserialize(v).map_err(|e| e.to_string())
        }
        match aspect {
            "status" => {
                let s: Status = read(value)?;
                if s.removed {
                    let target = self.target(urn)?;
                    self.removals.insert(target);
                } else {
                    self.entity(urn, raw)?;
                }
            }
            "datasetProperties"
            | "editableDatasetProperties"
            | "containerProperties"
            | "editableContainerProperties" => {
                let p: Properties = read(value)?;
                if aspect == "containerProperties"
                    && let Urn::Container(guid) = urn
                {
                    let name = container_name(&p).ok_or("a container without a name")?;
                    if name.len() > MAX_NAME {
                        return Err(format!(
                            "the container's qualified name has {} characters; the catalog takes at most {MAX_NAME}",
                            name.len()
                        ));
                    }
                    self.container_names.insert(guid.clone(), name);
                }
                let (_, change) = self.entity(urn, raw)?;
                if let Some(name) = p.name.filter(|n| !n.is_empty()) {
                    change.name = Some(name);
                }
                if let Some(d) = p.description.filter(|d| !d.is_empty()) {
                    change.description = Some(d);
                }
                if let Some(url) = p.external_url {
                    change.attributes.insert("external_url".into(), url.into());
                }
                if let Some(platform) = p.custom_properties.get("platform") {
                    change
                        .attributes
                        .insert("platform".into(), platform.clone().into());
                }
                if !p.custom_properties.is_empty() {
                    change
                        .attributes
                        .insert("properties".into(), json!(p.custom_properties));
                }
            }
            "container" => {
                let c: ContainerLink = read(value)?;
                let Some(Urn::Container(parent)) = Urn::parse(&c.container) else {
                    return Err(format!("{} is not a container URN", c.container));
                };
                let (target, _) = self.entity(urn, raw)?;
                self.links.insert(target, parent);
            }
            "subTypes" => {
                let s: SubTypes = read(value)?;
                let Some(sub) = s.type_names.first() else {
                    return Ok(false);
                };
                let (_, change) = self.entity(urn, raw)?;
                let stated = match (urn, sub.to_ascii_lowercase().as_str()) {
                    (Urn::Container(_), "database" | "catalog") => Some("database"),
                    (Urn::Container(_), "schema") => Some("schema"),
                    (Urn::Dataset { .. }, "view" | "materialized view") => Some("view"),
                    (Urn::Dataset { .. }, "table") => Some("table"),
                    _ => None,
                };
                if stated.is_some() {
                    change.type_name = stated;
                }
                change
                    .attributes
                    .insert("subtype".into(), sub.clone().into());
            }
            "viewProperties" => {
                let v: ViewProperties = read(value)?;
                let (_, change) = self.entity(urn, raw)?;
                change.type_name = Some("view");
                change
                    .attributes
                    .insert("view_definition".into(), v.view_logic.into());
                change
                    .attributes
                    .insert("materialized".into(), v.materialized.into());
            }
            "schemaMetadata" => {
                let s: SchemaMetadata = read(value)?;
                let Target::Named(table) = self.entity(urn, raw)?.0 else {
                    return Err("schemaMetadata of a container".into());
                };
                let mut columns = BTreeSet::new();
                for f in &s.fields {
                    let (name, change) = self.column(&table, &f.field_path)?;
                    let a = &mut change.attributes;
                    if let Some(t) = &f.native_data_type {
                        a.insert("data_type".into(), t.clone().into());
                    }
                    if let Some(t) = f.logical_type() {
                        a.insert("logical_type".into(), t.into());
                    }
                    a.insert("nullable".into(), f.nullable.into());
                    a.insert("primary_key".into(), f.is_part_of_key.into());
                    if let Some(d) = f.description.clone().filter(|d| !d.is_empty()) {
                        change.description = Some(d);
                    }
                    let target = Target::Named(name.clone());
                    for (i, t) in f.tag_names().into_iter().enumerate() {
                        let at =
                            format!("fields[{}].globalTags or glossaryTerms [{i}]", f.field_path);
                        self.tag(target.clone(), t, position, &at);
                    }
                    columns.insert(name);
                }
                for fk in &s.foreign_keys {
                    for (source, target) in fk.source_fields.iter().zip(&fk.foreign_fields) {
                        let (Some(Urn::SchemaField { dataset, field }), Some(to)) =
                            (Urn::parse(source), Urn::parse(target))
                        else {
                            continue;
                        };
                        let Urn::SchemaField {
                            dataset: to_table,
                            field: to_field,
                        } = to
                        else {
                            continue;
                        };
                        let (_, change) = self.column(&dataset, &field)?;
                        change.attributes.insert(
                            "foreign_key".into(),
                            format!("{to_table}.{to_field}").into(),
                        );
                    }
                }
                self.schemas.insert(table, columns);
            }
            "editableSchemaMetadata" => {
                let s: EditableSchemaMetadata = read(value)?;
                let Target::Named(table) = self.entity(urn, raw)?.0 else {
                    return Err("editableSchemaMetadata of a container".into());
                };
                for f in &s.editable_schema_field_info {
                    let (name, change) = self.column(&table, &f.field_path)?;
                    if let Some(d) = f.description.clone().filter(|d| !d.is_empty()) {
                        change.description = Some(d);
                    }
                    let target = Target::Named(name);
                    for t in f.tags() {
                        let at = format!("editableSchemaFieldInfo[{}]", f.field_path);
                        self.tag(target.clone(), t, position, &at);
                    }
                }
            }
            "upstreamLineage" => {
                let l: UpstreamLineage = read(value)?;
                let Target::Named(down) = self.entity(urn, raw)?.0 else {
                    return Err("upstreamLineage of a container".into());
                };
                if !additive {
                    self.lineage_of.insert(down.clone());
                }
                for u in &l.upstreams {
                    let up = self.lineage_end(&u.dataset)?;
                    if up != down {
                        self.edges.insert((up, down.clone(), None));
                    }
                }
                self.fine_grained(&l.fine_grained_lineages, None)?;
            }
            "globalTags" | "glossaryTerms" => {
                let t: Tagging = read(value)?;
                let (target, _) = self.entity(urn, raw)?;
                for (i, tag) in t.names().into_iter().enumerate() {
                    let at = format!("{aspect}[{i}]");
                    self.tag(target.clone(), tag, position, &at);
                }
            }
            "ownership" => {
                let o: Ownership = read(value)?;
                let owners = o
                    .owners
                    .iter()
                    .filter_map(|o| {
                        id_of(&o.owner, "corpuser")
                            .or_else(|| id_of(&o.owner, "corpGroup").map(|g| format!("group:{g}")))
                    })
                    .collect();
                self.entity(urn, raw)?.1.owners = Some(owners);
            }
            "dataPlatformInstance" => {
                let d: PlatformInstance = read(value)?;
                let (_, change) = self.entity(urn, raw)?;
                if let Some(p) = id_of(&d.platform, "dataPlatform") {
                    change.attributes.insert("platform".into(), p.into());
                }
                if let Some(i) = d.instance {
                    change
                        .attributes
                        .insert("platform_instance".into(), i.into());
                }
            }
            "dashboardInfo" | "chartInfo" => {
                let b: BiInfo = read(value)?;
                let Target::Named(down) = self.entity(urn, raw)?.0 else {
                    return Err(format!("{aspect} of a container"));
                };
                {
                    let change = self
                        .assets
                        .get_mut(&Target::Named(down.clone()))
                        .ok_or("the asset went missing")?;
                    if !b.title.is_empty() {
                        change.name = Some(b.title.clone());
                    }
                    if let Some(d) = b.description.clone().filter(|d| !d.is_empty()) {
                        change.description = Some(d);
                    }
                    if let Some(url) = b.dashboard_url.clone().or(b.chart_url.clone()) {
                        change.attributes.insert("url".into(), url.into());
                    }
                }
                self.lineage_of.insert(down.clone());
                for up in b.upstream_urns() {
                    let up = self.lineage_end(&up)?;
                    if up != down {
                        self.edges.insert((up, down.clone(), None));
                    }
                }
            }
            "dataFlowInfo" | "dataJobInfo" => {
                let j: JobInfo = read(value)?;
                let (_, change) = self.entity(urn, raw)?;
                if !j.name.is_empty() {
                    change.name = Some(j.name);
                }
                if let Some(d) = j.description.filter(|d| !d.is_empty()) {
                    change.description = Some(d);
                }
            }
            "dataJobInputOutput" => {
                let io: JobInputOutput = read(value)?;
                let Target::Named(job) = self.entity(urn, raw)?.0 else {
                    return Err("dataJobInputOutput of a container".into());
                };
                let inputs: Vec<String> = io.inputs().collect();
                let outputs: Vec<String> = io.outputs().collect();
                if inputs.len().saturating_mul(outputs.len()) > MAX_FAN {
                    return Err(format!(
                        "{} inputs by {} outputs make more than {MAX_FAN} edges",
                        inputs.len(),
                        outputs.len()
                    ));
                }
                let ins: Vec<String> = inputs
                    .iter()
                    .map(|u| self.lineage_end(u))
                    .collect::<Result<_, _>>()?;
                let outs: Vec<String> = outputs
                    .iter()
                    .map(|u| self.lineage_end(u))
                    .collect::<Result<_, _>>()?;
                for i in &ins {
                    for o in &outs {
                        if i != o {
                            self.edges.insert((i.clone(), o.clone(), Some(job.clone())));
                        }
                    }
                }
                self.fine_grained(&io.fine_grained_lineages, Some(&job))?;
            }
            "datahubIngestionCheckpoint" => {
                self.checkpoints
                    .push((raw.to_owned(), aspect.to_owned(), value.to_string()));
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Column lineage: each upstream field to each downstream field.
    fn fine_grained(
        &mut self,
        lineages: &[FineGrained],
        process: Option<&str>,
    ) -> Result<(), String> {
        for f in lineages {
            if f.upstreams.len().saturating_mul(f.downstreams.len()) > MAX_FAN {
                return Err(format!(
                    "a fine-grained lineage of {} upstreams by {} downstreams makes more than {MAX_FAN} edges",
                    f.upstreams.len(),
                    f.downstreams.len()
                ));
            }
            let ups: Vec<String> = f
                .upstreams
                .iter()
                .map(|u| self.lineage_end(u))
                .collect::<Result<_, _>>()?;
            let downs: Vec<String> = f
                .downstreams
                .iter()
                .map(|u| self.lineage_end(u))
                .collect::<Result<_, _>>()?;
            for u in &ups {
                for d in &downs {
                    if u != d {
                        self.edges
                            .insert((u.clone(), d.clone(), process.map(str::to_owned)));
                    }
                }
            }
        }
        Ok(())
    }
}

/// A container's qualified name: its `qualifiedName`, else the key its
/// SQL source put in `customProperties` (`[instance.]database[.schema]`,
/// BigQuery's `project_id.dataset_id`, Unity Catalog's
/// `catalog.unity_schema`), which is the prefix of its tables' names;
/// else its own name.
fn container_name(p: &Properties) -> Option<String> {
    if let Some(q) = p.qualified_name.clone().filter(|q| !q.is_empty()) {
        return Some(q);
    }
    let c = &p.custom_properties;
    let top = ["database", "project_id", "catalog"]
        .iter()
        .find_map(|k| c.get(*k));
    if let Some(top) = top {
        let mut parts: Vec<&str> = Vec::new();
        if let Some(instance) = c.get("instance").filter(|i| c.get("env") != Some(*i)) {
            parts.push(instance);
        }
        parts.push(top);
        if let Some(inner) = ["schema", "dataset_id", "unity_schema"]
            .iter()
            .find_map(|k| c.get(*k))
        {
            parts.push(inner);
        }
        return Some(parts.join("."));
    }
    p.name.clone().filter(|n| !n.is_empty())
}

// The aspects, with the fields Lily reads (names as in their `.pdl`).

#[derive(Deserialize)]
struct Status {
    #[serde(default)]
    removed: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Properties {
    name: Option<String>,
    qualified_name: Option<String>,
    description: Option<String>,
    external_url: Option<String>,
    #[serde(default)]
    custom_properties: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct ContainerLink {
    container: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SubTypes {
    #[serde(default)]
    type_names: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ViewProperties {
    #[serde(default)]
    materialized: bool,
    #[serde(default)]
    view_logic: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaMetadata {
    fields: Vec<SchemaField>,
    #[serde(default)]
    foreign_keys: Vec<ForeignKey>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaField {
    field_path: String,
    #[serde(default)]
    nullable: bool,
    description: Option<String>,
    #[serde(rename = "type")]
    data_type: Option<Value>,
    native_data_type: Option<String>,
    #[serde(default)]
    is_part_of_key: bool,
    global_tags: Option<Tagging>,
    glossary_terms: Option<Tagging>,
}

impl SchemaField {
    /// DataHub's logical type (`{"type": {"com.linkedin.schema.NumberType": {}}}`)
    /// as `number`.
    fn logical_type(&self) -> Option<String> {
        let inner = self.data_type.as_ref()?.get("type")?;
        let (fqn, _) = super::wire::single_member(inner)?;
        let short = member_name(fqn);
        Some(
            short
                .strip_suffix("Type")
                .unwrap_or(short)
                .to_ascii_lowercase(),
        )
    }

    fn tag_names(&self) -> Vec<String> {
        classifications(&self.global_tags, &self.glossary_terms)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ForeignKey {
    #[serde(default)]
    foreign_fields: Vec<String>,
    #[serde(default)]
    source_fields: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EditableSchemaMetadata {
    #[serde(default)]
    editable_schema_field_info: Vec<EditableField>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EditableField {
    field_path: String,
    description: Option<String>,
    global_tags: Option<Tagging>,
    glossary_terms: Option<Tagging>,
}

impl EditableField {
    fn tags(&self) -> Vec<String> {
        classifications(&self.global_tags, &self.glossary_terms)
    }
}

/// The classifications of a field's `globalTags` and `glossaryTerms`.
fn classifications(tags: &Option<Tagging>, terms: &Option<Tagging>) -> Vec<String> {
    [tags, terms]
        .into_iter()
        .flatten()
        .flat_map(Tagging::names)
        .collect()
}

/// `globalTags` (`{"tags": [{"tag": urn}]}`) or `glossaryTerms`
/// (`{"terms": [{"urn": urn}]}`).
#[derive(Deserialize)]
struct Tagging {
    #[serde(default)]
    tags: Vec<TagAssociation>,
    #[serde(default)]
    terms: Vec<TermAssociation>,
}

#[derive(Deserialize)]
struct TagAssociation {
    tag: String,
}

#[derive(Deserialize)]
struct TermAssociation {
    urn: String,
}

impl Tagging {
    /// Classification names: a tag's name (`urn:li:tag:PII` is `PII`), a
    /// term's (`urn:li:glossaryTerm:Finance.Revenue` is `Finance.Revenue`).
    fn names(&self) -> Vec<String> {
        self.tags
            .iter()
            .filter_map(|t| id_of(&t.tag, "tag"))
            .chain(
                self.terms
                    .iter()
                    .filter_map(|t| id_of(&t.urn, "glossaryTerm")),
            )
            .collect()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpstreamLineage {
    #[serde(default)]
    upstreams: Vec<Upstream>,
    #[serde(default)]
    fine_grained_lineages: Vec<FineGrained>,
}

#[derive(Deserialize)]
struct Upstream {
    dataset: String,
}

#[derive(Deserialize)]
struct FineGrained {
    #[serde(default)]
    upstreams: Vec<String>,
    #[serde(default)]
    downstreams: Vec<String>,
}

#[derive(Deserialize)]
struct Ownership {
    #[serde(default)]
    owners: Vec<Owner>,
}

#[derive(Deserialize)]
struct Owner {
    owner: String,
}

#[derive(Deserialize)]
struct PlatformInstance {
    platform: String,
    instance: Option<String>,
}

/// `dashboardInfo` or `chartInfo`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BiInfo {
    #[serde(default)]
    title: String,
    description: Option<String>,
    dashboard_url: Option<String>,
    chart_url: Option<String>,
    #[serde(default)]
    charts: Vec<String>,
    #[serde(default)]
    chart_edges: Vec<EdgeTo>,
    #[serde(default)]
    datasets: Vec<String>,
    #[serde(default)]
    dataset_edges: Vec<EdgeTo>,
    /// A chart's deprecated inputs: a union array, `[{"string": urn}]`.
    #[serde(default)]
    inputs: Vec<Value>,
    #[serde(default)]
    input_edges: Vec<EdgeTo>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EdgeTo {
    destination_urn: String,
}

impl BiInfo {
    /// What feeds the dashboard or chart: its charts and datasets.
    fn upstream_urns(&self) -> BTreeSet<String> {
        let edges = self
            .chart_edges
            .iter()
            .chain(&self.dataset_edges)
            .chain(&self.input_edges)
            .map(|e| e.destination_urn.clone());
        let inputs = self.inputs.iter().filter_map(|i| match i {
            Value::String(s) => Some(s.clone()),
            other => other
                .get("string")
                .and_then(Value::as_str)
                .map(str::to_owned),
        });
        self.charts
            .iter()
            .chain(&self.datasets)
            .cloned()
            .chain(edges)
            .chain(inputs)
            .collect()
    }
}

#[derive(Deserialize)]
struct JobInfo {
    #[serde(default)]
    name: String,
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JobInputOutput {
    #[serde(default)]
    input_datasets: Vec<String>,
    #[serde(default)]
    output_datasets: Vec<String>,
    #[serde(default)]
    input_dataset_edges: Vec<EdgeTo>,
    #[serde(default)]
    output_dataset_edges: Vec<EdgeTo>,
    #[serde(default)]
    fine_grained_lineages: Vec<FineGrained>,
}

impl JobInputOutput {
    fn inputs(&self) -> impl Iterator<Item = String> + '_ {
        let set: BTreeSet<String> = self
            .input_datasets
            .iter()
            .cloned()
            .chain(
                self.input_dataset_edges
                    .iter()
                    .map(|e| e.destination_urn.clone()),
            )
            .collect();
        set.into_iter()
    }

    fn outputs(&self) -> impl Iterator<Item = String> + '_ {
        let set: BTreeSet<String> = self
            .output_datasets
            .iter()
            .cloned()
            .chain(
                self.output_dataset_edges
                    .iter()
                    .map(|e| e.destination_urn.clone()),
            )
            .collect();
        set.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDERS: &str = "urn:li:dataset:(urn:li:dataPlatform:postgres,shop.sales.orders,PROD)";
    const CUSTOMERS: &str =
        "urn:li:dataset:(urn:li:dataPlatform:postgres,shop.sales.customers,PROD)";

    fn upsert(urn: &str, aspect: &str, value: Value) -> Proposal {
        Proposal {
            entity_urn: urn.into(),
            change_type: "UPSERT".into(),
            aspect_name: aspect.into(),
            value: Some(value),
        }
    }

    fn plan(ps: &[Proposal]) -> Plan {
        Plan::of(
            ps.iter()
                .enumerate()
                .map(|(i, p)| (format!("proposals[{i}]"), p)),
        )
    }

    #[test]
    fn a_postgres_table_gives_its_columns_types_container_and_keys() {
        let schema_urn = "urn:li:container:bd81a7cee40a653e7511c89b04ee6749";
        let p = plan(&[
            upsert(
                schema_urn,
                "containerProperties",
                json!({"name": "sales",
                "customProperties": {"platform": "postgres", "env": "PROD", "database": "shop", "schema": "sales"}}),
            ),
            upsert(schema_urn, "subTypes", json!({"typeNames": ["Schema"]})),
            upsert(ORDERS, "container", json!({"container": schema_urn})),
            upsert(
                ORDERS,
                "datasetProperties",
                json!({"name": "orders", "description": "Orders", "customProperties": {}}),
            ),
            upsert(
                ORDERS,
                "schemaMetadata",
                json!({"schemaName": "shop.sales.orders", "fields": [
                {"fieldPath": "id", "nullable": false, "type": {"type": {"com.linkedin.schema.NumberType": {}}},
                 "nativeDataType": "BIGINT", "isPartOfKey": true},
                {"fieldPath": "customer_id", "nullable": true, "type": {"type": {"com.linkedin.schema.NumberType": {}}},
                 "nativeDataType": "INTEGER", "description": "who ordered",
                 "globalTags": {"tags": [{"tag": "urn:li:tag:PII"}]}}],
                "foreignKeys": [{"name": "fk", "foreignDataset": CUSTOMERS,
                    "sourceFields": [format!("urn:li:schemaField:({ORDERS},customer_id)")],
                    "foreignFields": [format!("urn:li:schemaField:({CUSTOMERS},id)")]}]}),
            ),
            upsert("urn:li:corpuser:datahub", "corpUserInfo", json!({})),
            upsert(ORDERS, "browsePathsV2", json!({"path": []})),
        ]);
        assert!(p.rejected.is_empty(), "{:?}", p.rejected);
        assert_eq!(p.container_names[&schema_urn[17..]], "shop.sales");
        let container = &p.assets[&Target::Container(schema_urn[17..].into())];
        assert_eq!(container.type_name, Some("schema"));
        assert_eq!(container.name.as_deref(), Some("sales"));
        let orders = &p.assets[&Target::Named("shop.sales.orders".into())];
        assert_eq!(
            (orders.default_type, orders.name.as_deref()),
            ("table", Some("orders"))
        );
        assert_eq!(orders.attributes["platform"], "postgres");
        let id = &p.assets[&Target::Named("shop.sales.orders.id".into())];
        assert_eq!(id.parent.as_deref(), Some("shop.sales.orders"));
        assert_eq!(id.attributes["data_type"], "BIGINT");
        assert_eq!(id.attributes["logical_type"], "number");
        assert_eq!(id.attributes["primary_key"], true);
        let customer = &p.assets[&Target::Named("shop.sales.orders.customer_id".into())];
        assert_eq!(
            customer.attributes["foreign_key"],
            "shop.sales.customers.id"
        );
        assert_eq!(customer.description.as_deref(), Some("who ordered"));
        assert!(p.tags.contains_key(&(
            Target::Named("shop.sales.orders.customer_id".into()),
            "PII".into()
        )));
        assert_eq!(
            p.links[&Target::Named("shop.sales.orders".into())],
            &schema_urn[17..]
        );
        assert_eq!(p.schemas["shop.sales.orders"].len(), 2);
        assert_eq!(p.skipped.values().sum::<u64>(), 2);
        assert_eq!(p.applied.values().sum::<u64>(), 5);
    }

    #[test]
    fn lineage_tables_and_columns_with_a_bad_aspect_set_aside() {
        let view = "urn:li:dataset:(urn:li:dataPlatform:postgres,shop.sales.big_orders,PROD)";
        let p = plan(&[
            upsert(
                view,
                "upstreamLineage",
                json!({"upstreams": [{"dataset": ORDERS, "type": "VIEW"}],
                "fineGrainedLineages": [{"upstreamType": "FIELD_SET", "downstreamType": "FIELD",
                    "upstreams": [format!("urn:li:schemaField:({ORDERS},id)")],
                    "downstreams": [format!("urn:li:schemaField:({view},id)")]}]}),
            ),
            upsert(view, "schemaMetadata", json!({"fields": "not a list"})),
            upsert(
                view,
                "viewProperties",
                json!({"materialized": false, "viewLogic": "SELECT 1", "viewLanguage": "SQL"}),
            ),
        ]);
        let edges: Vec<(&str, &str)> = p
            .edges
            .iter()
            .map(|(u, d, _)| (u.as_str(), d.as_str()))
            .collect();
        assert_eq!(
            edges,
            [
                ("shop.sales.orders", "shop.sales.big_orders"),
                ("shop.sales.orders.id", "shop.sales.big_orders.id"),
            ]
        );
        assert!(p.lineage_of.contains("shop.sales.big_orders"));
        assert_eq!(p.rejected.len(), 1);
        assert_eq!(p.rejected[0].position, "proposals[1]");
        assert!(
            p.rejected[0]
                .error
                .starts_with("schemaMetadata of urn:li:dataset"),
            "{}",
            p.rejected[0].error
        );
        assert_eq!(
            p.assets[&Target::Named("shop.sales.big_orders".into())].type_name,
            Some("view")
        );
    }

    #[test]
    fn a_removal_wins_and_a_patch_adds() {
        let p = plan(&[
            upsert(
                ORDERS,
                "globalTags",
                json!({"tags": [{"tag": "urn:li:tag:PII"}]}),
            ),
            upsert(ORDERS, "status", json!({"removed": true})),
            Proposal {
                entity_urn: CUSTOMERS.into(),
                change_type: "PATCH".into(),
                aspect_name: "globalTags".into(),
                value: Some(
                    json!({"arrayPrimaryKeys": {"tags": ["attribution\u{241f}source", "tag"]},
                    "patch": [{"op": "add", "path": "/tags//urn:li:tag:GDPR", "value": {"tag": "urn:li:tag:GDPR"}}]}),
                ),
            },
        ]);
        assert!(
            p.removals
                .contains(&Target::Named("shop.sales.orders".into()))
        );
        let tags: Vec<&(Target, String)> = p.tags.keys().collect();
        assert_eq!(
            tags,
            [&(
                Target::Named("shop.sales.customers".into()),
                "GDPR".to_owned()
            )]
        );
    }
}
