//! The versioned JSON Schemas of everything that enters through the API,
//! kept in `inbound/schemas/` and compiled once.

use std::collections::HashMap;

use serde_json::Value;

use crate::error::{InboundError, Result};

/// Every schema: name (file name without `.json`) and text.
pub const SCHEMAS: &[(&str, &str)] = &[
    (
        "monte-carlo-event.v1",
        include_str!("../schemas/monte-carlo-event.v1.json"),
    ),
    ("assets.v1", include_str!("../schemas/assets.v1.json")),
    (
        "bulk-asset.v1",
        include_str!("../schemas/bulk-asset.v1.json"),
    ),
    (
        "datahub-aspects.v1",
        include_str!("../schemas/datahub-aspects.v1.json"),
    ),
    (
        "datahub-entity.v1",
        include_str!("../schemas/datahub-entity.v1.json"),
    ),
    (
        "datahub-batch-get.v1",
        include_str!("../schemas/datahub-batch-get.v1.json"),
    ),
    (
        "asset-names.v1",
        include_str!("../schemas/asset-names.v1.json"),
    ),
    ("lineage.v1", include_str!("../schemas/lineage.v1.json")),
    (
        "classifications.v1",
        include_str!("../schemas/classifications.v1.json"),
    ),
    ("ticket.v1", include_str!("../schemas/ticket.v1.json")),
    (
        "masking-policy.v1",
        include_str!("../schemas/masking-policy.v1.json"),
    ),
    (
        "governed-table.v1",
        include_str!("../schemas/governed-table.v1.json"),
    ),
    (
        "okta-event-hook.v1",
        include_str!("../schemas/okta-event-hook.v1.json"),
    ),
    (
        "jira-webhook.v1",
        include_str!("../schemas/jira-webhook.v1.json"),
    ),
    (
        "openlineage-event.v1",
        include_str!("../schemas/openlineage-event.v1.json"),
    ),
];

/// The compiled schemas.
pub struct Schemas {
    validators: HashMap<&'static str, jsonschema::Validator>,
}

impl Schemas {
    /// Compiles every schema.
    pub fn compile() -> Result<Self> {
        let mut validators = HashMap::new();
        for (name, text) in SCHEMAS {
            let schema: Value = serde_json::from_str(text)
                .map_err(|e| InboundError::Internal(format!("schema {name} is not JSON: {e}")))?;
            let validator = jsonschema::validator_for(&schema).map_err(|e| {
                InboundError::Internal(format!("schema {name} does not compile: {e}"))
            })?;
            validators.insert(*name, validator);
        }
        Ok(Self { validators })
    }

    /// Checks `value` against the schema `name`; the error names the first
    /// offending value by its JSON pointer.
    pub fn validate(&self, name: &str, value: &Value) -> Result<()> {
        let validator = self
            .validators
            .get(name)
            .ok_or_else(|| InboundError::Internal(format!("no schema {name}")))?;
        match validator.iter_errors(value).next() {
            None => match nul_at(value) {
                // PostgreSQL's text cannot hold U+0000: refuse it here, by
                // its place, rather than as an encoding error of the write.
                Some(path) => Err(InboundError::SchemaViolation {
                    schema: name.to_owned(),
                    path,
                    message: "text may not contain the NUL character (U+0000)".to_owned(),
                }),
                None => Ok(()),
            },
            Some(e) => {
                let path = e.instance_path().to_string();
                Err(InboundError::SchemaViolation {
                    schema: name.to_owned(),
                    path: if path.is_empty() {
                        "/".to_owned()
                    } else {
                        path
                    },
                    message: e.to_string(),
                })
            }
        }
    }
}

/// Parses a JSON body.
pub fn parse_json(body: &[u8]) -> Result<Value> {
    serde_json::from_slice(body).map_err(|e| InboundError::MalformedJson(e.to_string()))
}

/// The JSON pointer of the first string or key holding U+0000, if any.
fn nul_at(value: &Value) -> Option<String> {
    fn escape(segment: &str) -> String {
        segment.replace('~', "~0").replace('/', "~1")
    }
    fn find(value: &Value) -> Option<String> {
        match value {
            Value::String(s) if s.contains('\0') => Some(String::new()),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .find_map(|(i, v)| find(v).map(|rest| format!("/{i}{rest}"))),
            Value::Object(fields) => fields.iter().find_map(|(k, v)| {
                if k.contains('\0') {
                    return Some(format!("/{}", escape(k)));
                }
                find(v).map(|rest| format!("/{}{rest}", escape(k)))
            }),
            _ => None,
        }
    }
    find(value).map(|p| if p.is_empty() { "/".to_owned() } else { p })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_compiles_and_names_the_bad_value() {
        let schemas = Schemas::compile().unwrap();
        let ok = serde_json::json!({"assets": [{"qualified_name": "a", "type": "table"}]});
        schemas.validate("assets.v1", &ok).unwrap();
        let bad = serde_json::json!({"assets": [{"qualified_name": "a", "type": "table", "owners": "me"}]});
        let e = schemas.validate("assets.v1", &bad).unwrap_err();
        assert!(
            matches!(&e, InboundError::SchemaViolation { path, .. } if path == "/assets/0/owners"),
            "{e}"
        );
    }

    #[test]
    fn a_nul_character_is_named_by_its_place() {
        let schemas = Schemas::compile().unwrap();
        let bad = serde_json::json!({"assets": [{"qualified_name": "a\u{0}b", "type": "table"}]});
        let e = schemas.validate("assets.v1", &bad).unwrap_err();
        assert!(
            matches!(&e, InboundError::SchemaViolation { path, .. } if path == "/assets/0/qualified_name"),
            "{e}"
        );
    }
}
