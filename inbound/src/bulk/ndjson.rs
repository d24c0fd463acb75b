//! Lily's own bulk format: one asset per line of NDJSON
//! (`inbound/schemas/bulk-asset.v1.json`), with its classifications and
//! upstreams, read into a [`Plan`]. A line that is not JSON or breaks the
//! schema is set aside with its position; the others are planned.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::plan::{AssetChange, Plan, Target, Unreadable, asset_type, leaf};
use crate::schemas::Schemas;

/// The schema every line is checked against.
pub const SCHEMA: &str = "bulk-asset.v1";

#[derive(Deserialize)]
struct Line {
    qualified_name: String,
    #[serde(rename = "type")]
    type_name: String,
    name: Option<String>,
    parent: Option<String>,
    description: Option<String>,
    owners: Option<Vec<String>>,
    #[serde(default)]
    attributes: Map<String, Value>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    upstreams: Vec<String>,
    process: Option<String>,
}

/// Whether a line goes to the lake lane: a valid column or BI field (an
/// `eventual` type) that names no tags, upstreams or process, which the
/// metastore must hold at once.
pub fn lake_lane(schemas: &Schemas, value: &Value) -> bool {
    value
        .get("type")
        .and_then(Value::as_str)
        .is_some_and(|t| lily_metastore::LEAF_ASSET_TYPES.contains(&t))
        && ["tags", "upstreams", "process"].iter().all(|k| {
            value
                .get(*k)
                .is_none_or(|v| v.as_array().is_some_and(|a| a.is_empty()))
        })
        && schemas.validate(SCHEMA, value).is_ok()
}

/// The plan of `lines` (each with its position, `file:line`); a line that
/// cannot be read is in the plan's `rejected`.
pub fn plan(schemas: &Schemas, lines: &[(String, Value)]) -> Plan {
    let mut plan = Plan::default();
    for (position, value) in lines {
        match read(schemas, value) {
            Ok(line) => {
                add(&mut plan, line, position);
                *plan.applied.entry("asset").or_default() += 1;
            }
            Err(error) => plan.rejected.push(Unreadable {
                position: position.clone(),
                error,
            }),
        }
    }
    plan
}

fn read(schemas: &Schemas, value: &Value) -> Result<Line, String> {
    schemas.validate(SCHEMA, value).map_err(|e| e.to_string())?;
    Line::deserialize(value).map_err(|e| e.to_string())
}

fn add(plan: &mut Plan, line: Line, position: &str) {
    let type_name = asset_type(&line.type_name).unwrap_or("table");
    let mut change = AssetChange::new(type_name, leaf(&line.qualified_name));
    change.type_name = Some(type_name);
    change.name = line.name;
    change.parent = line.parent;
    change.description = line.description;
    change.owners = line.owners;
    change.attributes = line.attributes;
    let target = Target::Named(line.qualified_name.clone());
    if let Some(p) = &line.process {
        plan.assets
            .entry(Target::Named(p.clone()))
            .or_insert_with(|| AssetChange::new("process", leaf(p)));
    }
    for up in line.upstreams {
        plan.assets
            .entry(Target::Named(up.clone()))
            .or_insert_with(|| AssetChange::new("table", leaf(&up)));
        if up != line.qualified_name {
            plan.edges
                .insert((up, line.qualified_name.clone(), line.process.clone()));
        }
    }
    for (i, tag) in line.tags.into_iter().enumerate() {
        plan.tags
            .entry((target.clone(), tag))
            .or_insert_with(|| format!("{position}: tags[{i}]"));
    }
    // A line states the asset: it wins over a placeholder an earlier
    // line's upstreams made.
    match plan.assets.get_mut(&target) {
        Some(existing) if existing.type_name.is_none() => *existing = change,
        Some(existing) => existing.merge(change),
        None => {
            plan.assets.insert(target, change);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lines_become_assets_edges_and_tags_and_a_bad_line_is_set_aside() {
        let schemas = Schemas::compile().unwrap();
        let lines = vec![
            (
                "a.ndjson:1".to_owned(),
                json!({"qualified_name": "shop", "type": "database"}),
            ),
            (
                "a.ndjson:2".to_owned(),
                json!({"qualified_name": "shop.orders.id", "type": "column",
                "parent": "shop.orders", "attributes": {"data_type": "bigint"}, "tags": ["PII"],
                "upstreams": ["raw.orders.id"], "process": "etl.load"}),
            ),
            (
                "a.ndjson:3".to_owned(),
                json!({"qualified_name": "shop.orders", "type": "tabel"}),
            ),
            (
                "a.ndjson:4".to_owned(),
                json!({"qualified_name": "raw.orders.id", "type": "column"}),
            ),
        ];
        let p = plan(&schemas, &lines);
        assert_eq!(p.rejected.len(), 1);
        assert_eq!(p.rejected[0].position, "a.ndjson:3");
        assert!(
            p.rejected[0].error.contains("/type"),
            "{}",
            p.rejected[0].error
        );
        let id = &p.assets[&Target::Named("shop.orders.id".into())];
        assert_eq!(
            (id.type_name, id.parent.as_deref()),
            (Some("column"), Some("shop.orders"))
        );
        assert_eq!(
            p.assets[&Target::Named("raw.orders.id".into())].type_name,
            Some("column")
        );
        assert_eq!(
            p.assets[&Target::Named("etl.load".into())].default_type,
            "process"
        );
        assert!(p.edges.contains(&(
            "raw.orders.id".into(),
            "shop.orders.id".into(),
            Some("etl.load".into())
        )));
        assert!(
            p.tags
                .contains_key(&(Target::Named("shop.orders.id".into()), "PII".into()))
        );
    }
}
