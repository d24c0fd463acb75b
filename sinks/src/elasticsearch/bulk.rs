//! Documents from a transform's output, and the `_bulk` lines that write
//! them with their commit LSN as external version.
//!
//! `version_type=external_gte`: a write with an older LSN than the stored
//! document is refused (409), so a replayed or late change never overwrites
//! a newer one; an equal LSN overwrites, because two batches of one
//! transaction (an asset and its tag) both carry its LSN and the later one
//! was built from the later catalog state.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::UInt64Type;
use lily_cdc::json::{RowEncoder, cell_text};
use lily_cdc::{Lsn, TenantId};
use serde_json::{Value, json};

/// One document write.
#[derive(Debug, Clone, PartialEq)]
pub struct DocWrite {
    /// Tenant (which alias).
    pub tenant: TenantId,
    /// Document id.
    pub id: String,
    /// The commit LSN: the external version.
    pub version: Lsn,
    /// The document, or `None` to delete it.
    pub source: Option<String>,
}

impl DocWrite {
    /// The action line and, for an index, the source line.
    pub fn lines(&self, alias: &str) -> Vec<String> {
        let meta = json!({
            "_index": alias,
            "_id": self.id,
            "version": self.version.0,
            "version_type": "external_gte",
        });
        match &self.source {
            Some(source) => vec![json!({ "index": meta }).to_string(), source.clone()],
            None => vec![json!({ "delete": meta }).to_string()],
        }
    }
}

/// A row that cannot be a document.
#[derive(Debug, Clone, PartialEq)]
pub struct BadDoc {
    /// Tenant, when the row has one.
    pub tenant: Option<String>,
    /// What is wrong.
    pub error: String,
    /// The row as JSON.
    pub row: String,
}

/// The document writes of a transform's output: `_op` (`d` deletes),
/// `_commit_lsn` (the version), `tenant_id`, `_id`; the columns not starting
/// with `_` are the document.
pub fn doc_writes(batch: &RecordBatch) -> (Vec<DocWrite>, Vec<BadDoc>) {
    let encoder = RowEncoder::data_columns(batch);
    let op = batch
        .column_by_name(lily_cdc::batch::OP)
        .and_then(|a| a.as_string_opt::<i32>().cloned());
    let lsn = batch
        .column_by_name(lily_cdc::batch::COMMIT_LSN)
        .and_then(|a| a.as_primitive_opt::<UInt64Type>().cloned());
    let mut writes = Vec::with_capacity(batch.num_rows());
    let mut bad = Vec::new();
    for row in 0..batch.num_rows() {
        let tenant_id = cell_text(batch, "tenant_id", row);
        let doc_id = cell_text(batch, "_id", row);
        let version = lsn
            .as_ref()
            .filter(|l| l.is_valid(row))
            .map(|l| Lsn(l.value(row)));
        let tenant = tenant_id.as_deref().map(TenantId::parse);
        match (tenant, doc_id, version) {
            (Some(Ok(tenant)), Some(id), Some(version)) if !id.is_empty() => {
                let delete = op
                    .as_ref()
                    .is_some_and(|o| o.is_valid(row) && o.value(row) == "d");
                let source = (!delete).then(|| {
                    let mut s = String::new();
                    encoder.encode(row, &mut s);
                    s
                });
                writes.push(DocWrite {
                    tenant,
                    id,
                    version,
                    source,
                });
            }
            (tenant, ..) => {
                let mut row_json = String::new();
                RowEncoder::all_columns(batch).encode(row, &mut row_json);
                let error = match tenant {
                    Some(Err(e)) => e.to_string(),
                    _ => "a search document needs tenant_id, _id and _commit_lsn".into(),
                };
                bad.push(BadDoc {
                    tenant: tenant_id,
                    error,
                    row: row_json,
                });
            }
        }
    }
    (writes, bad)
}

/// What became of one item of a bulk request.
#[derive(Debug, Clone, PartialEq)]
pub enum ItemOutcome {
    /// Written (or deleted).
    Done,
    /// A newer version is already there, or a deleted document was never
    /// indexed: nothing to do.
    Superseded,
    /// Worth retrying (429, 5xx).
    Retry(String),
    /// Refused for good (a mapping error): a dead letter.
    Refused {
        /// Elasticsearch's error type.
        code: String,
        /// Its reason.
        reason: String,
    },
}

/// The outcome of each item of a `_bulk` response, in request order.
pub fn item_outcomes(response: &Value) -> Vec<ItemOutcome> {
    let Some(items) = response["items"].as_array() else {
        return Vec::new();
    };
    items
        .iter()
        .map(|item| {
            let Some((action, r)) = item.as_object().and_then(|o| o.iter().next()) else {
                return ItemOutcome::Retry("an empty bulk item".into());
            };
            let status = r["status"].as_u64().unwrap_or(0);
            let error_type = r["error"]["type"].as_str().unwrap_or("").to_owned();
            let reason = r["error"]["reason"].as_str().unwrap_or("").to_owned();
            match status {
                200..=299 => ItemOutcome::Done,
                409 => ItemOutcome::Superseded,
                404 if action == "delete" => ItemOutcome::Superseded,
                429 | 500..=599 | 0 => {
                    ItemOutcome::Retry(format!("HTTP {status} {error_type}: {reason}"))
                }
                _ => ItemOutcome::Refused {
                    code: if error_type.is_empty() {
                        format!("http_{status}")
                    } else {
                        error_type
                    },
                    reason,
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{StringArray, UInt64Array};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    #[test]
    fn rows_become_versioned_writes_and_deletes() {
        let schema = Schema::new(vec![
            Field::new("_op", DataType::Utf8, true),
            Field::new("_commit_lsn", DataType::UInt64, true),
            Field::new("_id", DataType::Utf8, true),
            Field::new("tenant_id", DataType::Utf8, true),
            Field::new("name", DataType::Utf8, true),
        ]);
        let batch = RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(StringArray::from(vec!["u", "d", "u"])),
                Arc::new(UInt64Array::from(vec![10, 11, 12])),
                Arc::new(StringArray::from(vec![Some("a"), Some("b"), None])),
                Arc::new(StringArray::from(vec!["acme", "acme", "acme"])),
                Arc::new(StringArray::from(vec![Some("orders"), None, Some("x")])),
            ],
        )
        .unwrap();
        let (writes, bad) = doc_writes(&batch);
        assert_eq!(writes.len(), 2);
        assert_eq!(
            writes[0].source.as_deref(),
            Some(r#"{"tenant_id":"acme","name":"orders"}"#)
        );
        assert_eq!(writes[1].source, None);
        assert_eq!(bad.len(), 1);
        let lines = writes[0].lines("lily-acme-assets");
        let meta: Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(meta["index"]["version"], 10);
        assert_eq!(meta["index"]["version_type"], "external_gte");
        assert_eq!(writes[1].lines("x").len(), 1);
        assert_eq!(writes[0].tenant.as_str(), "acme");
        assert_eq!(writes[0].version, Lsn(10));
    }

    #[test]
    fn a_row_whose_tenant_is_not_a_tenant_id_is_a_bad_document() {
        let schema = Schema::new(vec![
            Field::new("_commit_lsn", DataType::UInt64, true),
            Field::new("_id", DataType::Utf8, true),
            Field::new("tenant_id", DataType::Utf8, true),
        ]);
        let batch = RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(UInt64Array::from(vec![10, 11])),
                Arc::new(StringArray::from(vec!["a", "b"])),
                Arc::new(StringArray::from(vec!["acme", "../acme"])),
            ],
        )
        .unwrap();
        let (writes, bad) = doc_writes(&batch);
        assert_eq!(writes.len(), 1);
        assert!(
            bad[0].error.contains("is not a tenant id"),
            "{}",
            bad[0].error
        );
    }

    #[test]
    fn bulk_items_are_sorted_into_outcomes() {
        let response = json!({"errors": true, "items": [
            {"index": {"status": 201}},
            {"index": {"status": 409, "error": {"type": "version_conflict_engine_exception"}}},
            {"delete": {"status": 404}},
            {"index": {"status": 429, "error": {"type": "es_rejected_execution_exception", "reason": "busy"}}},
            {"index": {"status": 400, "error": {"type": "strict_dynamic_mapping_exception", "reason": "no [x]"}}}
        ]});
        assert_eq!(
            item_outcomes(&response),
            vec![
                ItemOutcome::Done,
                ItemOutcome::Superseded,
                ItemOutcome::Superseded,
                ItemOutcome::Retry("HTTP 429 es_rejected_execution_exception: busy".into()),
                ItemOutcome::Refused {
                    code: "strict_dynamic_mapping_exception".into(),
                    reason: "no [x]".into()
                },
            ]
        );
    }
}
