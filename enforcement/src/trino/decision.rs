//! Trino's decisions answered from the policy snapshot, in the shapes the
//! `opa` plugin decodes (`OpaQueryResult`, `OpaBatchQueryResult`,
//! `OpaRowFiltersQueryResult`, `OpaColumnMaskQueryResult`,
//! `OpaBatchColumnMaskQueryResult` in plugin/trino-opa).

use lily_config::TrinoConfig;
use serde_json::{Value, json};

use super::expression::trino_mask;
use super::request::{OpaQuery, TrinoColumn};
use crate::policy::TenantPolicies;

/// Which of the plugin's URIs a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// `opa.policy.uri`: one operation, `{"result": bool}`.
    Allow,
    /// `opa.policy.batched-uri`: `Filter*` operations, `{"result": [indices]}`.
    Batch,
    /// `opa.policy.row-filters-uri`: `{"result": [{"expression"}]}`.
    RowFilters,
    /// `opa.policy.column-masking-uri`: `{"result": {"expression"} | null}`.
    ColumnMask,
    /// `opa.policy.batch-column-masking-uri`:
    /// `{"result": [{"index", "viewExpression": {"expression"}}]}`.
    BatchColumnMasks,
}

impl Decision {
    /// The name metrics and spans use.
    pub fn name(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Batch => "batch",
            Decision::RowFilters => "row_filters",
            Decision::ColumnMask => "column_mask",
            Decision::BatchColumnMasks => "batch_column_masks",
        }
    }
}

/// A request the plugin would not send: the reason, for a 400.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest(pub String);

/// What a decision needs besides the request.
pub struct DecisionContext<'a> {
    /// The tenant of the request's URL.
    pub tenant: &'a str,
    /// The tenant's policies in the current snapshot (none: no policy).
    pub policies: Option<&'a TenantPolicies>,
    /// How Trino's names and identities map onto the tenant.
    pub config: &'a TrinoConfig,
}

/// The answer to `query` at `decision`, and how many items it covered.
pub fn decide(
    decision: Decision,
    cx: &DecisionContext<'_>,
    query: &OpaQuery,
) -> Result<(Value, usize), BadRequest> {
    let identity = &query.input.context.identity;
    let roles = cx
        .config
        .roles_of(cx.tenant, &identity.user, &identity.groups);
    let mapped = !(cx.config.deny_unmapped && roles.is_empty());
    let action = &query.input.action;
    // As Trino's default access control: everything but impersonation
    // (acting as another user would take that user's unmasking roles) and
    // writing system information (a graceful shutdown), unless the user is
    // one of the tenant's configured impersonators.
    let allowed = mapped
        && match action.operation.as_str() {
            "ImpersonateUser" => cx.config.may_impersonate(cx.tenant, &identity.user),
            "WriteSystemInformation" => false,
            _ => true,
        };
    let decision_id = uuid::Uuid::new_v4().to_string();
    Ok(match decision {
        Decision::Allow => (json!({"decision_id": decision_id, "result": allowed}), 1),
        Decision::Batch => {
            // FilterColumns asks about one table's columns and answers with
            // indices into them; every other filter with indices into
            // filterResources.
            let n = match action.operation.as_str() {
                "FilterColumns" => action
                    .filter_resources
                    .first()
                    .and_then(|r| r.table.as_ref())
                    .map_or(0, |t| t.columns.len()),
                _ => action.filter_resources.len(),
            };
            let result: Vec<usize> = if allowed {
                (0..n).collect()
            } else {
                Vec::new()
            };
            (json!({"decision_id": decision_id, "result": result}), n)
        }
        Decision::RowFilters => (json!({"decision_id": decision_id, "result": []}), 1),
        Decision::ColumnMask => {
            let column = action
                .resource
                .as_ref()
                .and_then(|r| r.column.as_ref())
                .ok_or_else(|| BadRequest("GetColumnMask needs action.resource.column".into()))?;
            let result = mask_of(cx, column, &roles).map(|e| json!({"expression": e}));
            (json!({"decision_id": decision_id, "result": result}), 1)
        }
        Decision::BatchColumnMasks => {
            let mut result = Vec::new();
            for (index, r) in action.filter_resources.iter().enumerate() {
                let column = r.column.as_ref().ok_or_else(|| {
                    BadRequest(format!(
                        "action.filterResources[{index}] has no column; batch column masks are asked per column"
                    ))
                })?;
                if let Some(e) = mask_of(cx, column, &roles) {
                    result.push(json!({"index": index, "viewExpression": {"expression": e}}));
                }
            }
            (
                json!({"decision_id": decision_id, "result": result}),
                action.filter_resources.len(),
            )
        }
    })
}

/// The Trino expression masking `column` for a caller holding `roles`.
fn mask_of(cx: &DecisionContext<'_>, column: &TrinoColumn, roles: &[String]) -> Option<String> {
    let policies = cx.policies?;
    let table = format!(
        "{}.{}.{}",
        cx.config.catalog_database(cx.tenant, &column.catalog_name),
        column.schema_name,
        column.table_name
    );
    let applied = policies.asset_column_mask(&table, &column.column_name, roles)?;
    trino_mask(&applied.mask, &column.column_name, &column.column_type)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::policy::{ColumnTags, Mask, MaskingPolicy, TagOrigin};

    fn policies() -> TenantPolicies {
        let mut t = TenantPolicies {
            policies: vec![MaskingPolicy {
                name: "pii".into(),
                tags: vec!["PII".into()],
                mask: Mask::Hash,
                unmasked_roles: vec!["pii_reader".into()],
            }],
            ..Default::default()
        };
        let mut tags = BTreeMap::new();
        tags.insert("PII".to_string(), TagOrigin::default());
        t.columns
            .entry("analytics.sales.customers".into())
            .or_default()
            .insert(
                "email".into(),
                ColumnTags {
                    qualified_name: "analytics.sales.customers.email".into(),
                    table: "analytics.sales.customers".into(),
                    name: "email".into(),
                    tags,
                },
            );
        t
    }

    fn query(user: &str, action: Value) -> OpaQuery {
        serde_json::from_value(json!({"input": {
            "context": {"identity": {"user": user, "groups": []}, "softwareStack": {"trinoVersion": "476"}},
            "action": action}}))
        .unwrap()
    }

    fn config() -> TrinoConfig {
        let mut c = TrinoConfig::default();
        c.catalogs
            .insert("acme".into(), "lakehouse=analytics".into());
        c.roles.insert("acme".into(), "user:ana=pii_reader".into());
        c
    }

    #[test]
    fn batch_column_masks_answer_the_tagged_columns_by_index() {
        let p = policies();
        let c = config();
        let cx = DecisionContext {
            tenant: "acme",
            policies: Some(&p),
            config: &c,
        };
        let column = |name: &str| {
            json!({"column": {"catalogName": "lakehouse", "schemaName": "sales",
            "tableName": "customers", "columnName": name, "columnType": "varchar"}})
        };
        let q = |user| {
            query(
                user,
                json!({"operation": "GetColumnMask",
            "filterResources": [column("id"), column("email"), column("city")]}),
            )
        };
        let (answer, n) = decide(Decision::BatchColumnMasks, &cx, &q("bob")).unwrap();
        assert_eq!(n, 3);
        assert_eq!(
            answer["result"],
            json!([{"index": 1, "viewExpression": {"expression":
            r#"CAST(lower(to_hex(sha256(to_utf8("email")))) AS varchar)"#}}])
        );
        let (answer, _) = decide(Decision::BatchColumnMasks, &cx, &q("ana")).unwrap();
        assert_eq!(answer["result"], json!([]));
    }

    #[test]
    fn unmapped_identities_are_denied_only_when_configured() {
        let p = policies();
        let mut c = config();
        let filter = json!({"operation": "FilterColumns", "filterResources": [{"table": {
            "catalogName": "lakehouse", "schemaName": "sales", "tableName": "customers",
            "columns": ["id", "email"]}}]});
        let cx = DecisionContext {
            tenant: "acme",
            policies: Some(&p),
            config: &c,
        };
        let (a, _) = decide(Decision::Batch, &cx, &query("bob", filter.clone())).unwrap();
        assert_eq!(a["result"], json!([0, 1]));
        c.deny_unmapped = true;
        let cx = DecisionContext {
            tenant: "acme",
            policies: Some(&p),
            config: &c,
        };
        let (a, _) = decide(Decision::Batch, &cx, &query("bob", filter.clone())).unwrap();
        assert_eq!(a["result"], json!([]));
        let (a, _) = decide(
            Decision::Allow,
            &cx,
            &query("bob", json!({"operation": "ExecuteQuery"})),
        )
        .unwrap();
        assert_eq!(a["result"], json!(false));
        let (a, _) = decide(
            Decision::Allow,
            &cx,
            &query("ana", json!({"operation": "ExecuteQuery"})),
        )
        .unwrap();
        assert_eq!(a["result"], json!(true));
    }

    #[test]
    fn a_single_column_mask_is_an_expression_or_null() {
        let p = policies();
        let c = config();
        let cx = DecisionContext {
            tenant: "acme",
            policies: Some(&p),
            config: &c,
        };
        let q = |name: &str| {
            query(
                "bob",
                json!({"operation": "GetColumnMask", "resource": {"column": {
            "catalogName": "lakehouse", "schemaName": "sales", "tableName": "customers",
            "columnName": name, "columnType": "integer"}}}),
            )
        };
        let (a, _) = decide(Decision::ColumnMask, &cx, &q("EMAIL")).unwrap();
        assert_eq!(a["result"], json!({"expression": "NULL"}));
        let (a, _) = decide(Decision::ColumnMask, &cx, &q("id")).unwrap();
        assert_eq!(a["result"], Value::Null);
        let bad = query("bob", json!({"operation": "GetColumnMask"}));
        assert!(decide(Decision::ColumnMask, &cx, &bad).is_err());
    }
}
