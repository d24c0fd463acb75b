//! The MetadataChangeProposal (MCP) and snapshot (MCE) forms DataHub's
//! clients send, read into [`Proposal`]s: the REST emitter's
//! (`aspect.value` is the aspect's JSON as a string, union members keyed
//! by `com.linkedin.*` names) and the `file` sink's (`aspect.json` is the
//! aspect itself; snapshots use `com.linkedin.pegasus2avro.*` names).
//! Field names are those of `MetadataChangeProposal.pdl` and of
//! `datahub/emitter/rest_emitter.py` in acryl-datahub 1.7.

use serde_json::{Map, Value};

use crate::bulk::Unreadable;

/// One aspect of one entity, as proposed.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    /// The entity's URN.
    pub entity_urn: String,
    /// `UPSERT`, `PATCH`, `DELETE`, … (`MetadataChangeProposal.changeType`).
    pub change_type: String,
    /// The aspect (`schemaMetadata`, `globalTags`, …).
    pub aspect_name: String,
    /// The aspect's value; `None` for a DELETE.
    pub value: Option<Value>,
}

/// Reads one MCP object. `position` names it in the error.
pub fn proposal(v: &Value, position: &str) -> Result<Proposal, Unreadable> {
    let fail = |error: String| Unreadable {
        position: position.to_owned(),
        error,
    };
    let text = |key: &str| -> Result<String, Unreadable> {
        v.get(key)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| fail(format!("{key} is missing or not a string")))
    };
    let entity_urn = text("entityUrn")?;
    let change_type = text("changeType")?;
    let aspect_name = v
        .get("aspectName")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let value = match v.get("aspect") {
        None | Some(Value::Null) => None,
        Some(aspect) => Some(
            aspect_value(aspect)
                .map_err(|e| fail(format!("{aspect_name} of {entity_urn}: {e}")))?,
        ),
    };
    if value.is_none() && change_type != "DELETE" {
        return Err(fail(format!(
            "{aspect_name} of {entity_urn}: a {change_type} proposal without an aspect"
        )));
    }
    Ok(Proposal {
        entity_urn,
        change_type,
        aspect_name,
        value,
    })
}

/// The aspect of an MCP: `{"value": "<json>", "contentType": …}` on the
/// wire, `{"json": {…}}` in a file.
fn aspect_value(aspect: &Value) -> Result<Value, String> {
    if let Some(json) = aspect.get("json") {
        return Ok(json.clone());
    }
    match aspect.get("value") {
        Some(Value::String(s)) => {
            let content = aspect
                .get("contentType")
                .and_then(Value::as_str)
                .unwrap_or("application/json");
            if !content.starts_with("application/json") {
                return Err(format!("content type {content:?} is not JSON"));
            }
            serde_json::from_str(s).map_err(|e| format!("the aspect's value is not JSON: {e}"))
        }
        _ => Err("the aspect has neither a JSON string `value` nor `json`".into()),
    }
}

/// The proposals of a snapshot: `{"<…Snapshot>": {"urn", "aspects": [{"<…Aspect>": {…}}]}}`
/// (the MCE's `proposedSnapshot`, or the REST `entity.value`), one UPSERT
/// per aspect, as the emitter's own `mcps_from_mce` unpacks it.
pub fn snapshot(v: &Value, position: &str) -> Result<Vec<Proposal>, Unreadable> {
    let fail = |error: &str| Unreadable {
        position: position.to_owned(),
        error: error.to_owned(),
    };
    let (_, body) = single_member(v).ok_or_else(|| fail("not a snapshot union"))?;
    let urn = body
        .get("urn")
        .and_then(Value::as_str)
        .ok_or_else(|| fail("the snapshot has no urn"))?;
    let aspects = body
        .get("aspects")
        .and_then(Value::as_array)
        .ok_or_else(|| fail("the snapshot has no aspects"))?;
    aspects
        .iter()
        .map(|a| {
            let (fqn, value) = single_member(a).ok_or_else(|| fail("an aspect is not a union"))?;
            Ok(Proposal {
                entity_urn: urn.to_owned(),
                change_type: "UPSERT".to_owned(),
                aspect_name: aspect_name(fqn),
                value: Some(value.clone()),
            })
        })
        .collect()
}

/// A record of a `file` sink's output (a JSON array of MCPs and MCEs).
pub fn file_record(v: &Value, position: &str) -> Result<Vec<Proposal>, Unreadable> {
    match v.get("proposedSnapshot") {
        Some(snap) => snapshot(snap, position),
        None => proposal(v, position).map(|p| vec![p]),
    }
}

/// The one `{key: value}` of a union.
pub fn single_member(v: &Value) -> Option<(&str, &Value)> {
    let map: &Map<String, Value> = v.as_object()?;
    if map.len() != 1 {
        return None;
    }
    map.iter().next().map(|(k, v)| (k.as_str(), v))
}

/// A union member's short name: `com.linkedin.pegasus2avro.schema.NumberType`
/// is `NumberType`.
pub fn member_name(fqn: &str) -> &str {
    fqn.rsplit('.').next().unwrap_or(fqn)
}

/// The aspect name of a record class: `com.linkedin.common.GlobalTags`
/// is `globalTags`.
fn aspect_name(fqn: &str) -> String {
    let short = member_name(fqn);
    let mut chars = short.chars();
    match chars.next() {
        Some(first) => first.to_ascii_lowercase().to_string() + chars.as_str(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn both_aspect_forms_read_alike() {
        let wire = json!({"entityType": "dataset", "entityUrn": "urn:x", "changeType": "UPSERT",
            "aspectName": "status", "aspect": {"value": "{\"removed\": false}", "contentType": "application/json"}});
        let file = json!({"entityType": "dataset", "entityUrn": "urn:x", "changeType": "UPSERT",
            "aspectName": "status", "aspect": {"json": {"removed": false}}});
        assert_eq!(proposal(&wire, "a"), proposal(&file, "b"));
        let bad = json!({"entityUrn": "urn:x", "changeType": "UPSERT", "aspectName": "status",
            "aspect": {"value": "{not json"}});
        let err = proposal(&bad, "proposals[7]").unwrap_err();
        assert_eq!(err.position, "proposals[7]");
        assert!(err.error.contains("status of urn:x"), "{}", err.error);
    }

    #[test]
    fn a_snapshot_is_one_upsert_per_aspect() {
        let mce = json!({"proposedSnapshot": {"com.linkedin.pegasus2avro.metadata.snapshot.DatasetSnapshot": {
            "urn": "urn:li:dataset:(urn:li:dataPlatform:postgres,a.b.c,PROD)",
            "aspects": [{"com.linkedin.pegasus2avro.common.Status": {"removed": false}},
                        {"com.linkedin.pegasus2avro.dataset.DatasetProperties": {"name": "c"}}]}}});
        let ps = file_record(&mce, "record 1").unwrap();
        let names: Vec<&str> = ps.iter().map(|p| p.aspect_name.as_str()).collect();
        assert_eq!(names, ["status", "datasetProperties"]);
        assert_eq!(ps[1].value, Some(json!({"name": "c"})));
    }
}
