//! The effective policy of a tenant's columns, as pullers read it (the
//! policy API) and as policy events announce its changes: for each tagged
//! column, its tags and where they come from, and the mask a reader without
//! an exempting role gets.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::snapshot::{ColumnTags, TenantPolicies};

/// One tag of a column and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagState {
    /// The tag.
    pub tag: String,
    /// Tagged on the column itself.
    pub direct: bool,
    /// Upstream columns it was propagated from.
    pub propagated_from: Vec<String>,
}

/// A policy that applies to a column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedPolicy {
    /// The policy's name.
    pub name: String,
    /// Its mask type (Ranger's name).
    pub mask: String,
    /// The expression of a `CUSTOM` mask.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
    /// Roles that see the raw value under this policy.
    pub unmasked_roles: Vec<String>,
}

/// The effective policy of one column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ColumnPolicy {
    /// The column's qualified name.
    pub qualified_name: String,
    /// Its table's qualified name.
    pub table: String,
    /// The column's name.
    pub column: String,
    /// Its tags.
    pub tags: Vec<TagState>,
    /// The mask a reader holding none of the exempting roles gets; `None`:
    /// no policy applies, the value is served raw.
    pub mask: Option<String>,
    /// Every policy whose tag the column carries.
    pub policies: Vec<AppliedPolicy>,
}

impl ColumnPolicy {
    /// The effective policy of `column` under `tenant`'s policies.
    pub fn of(tenant: &TenantPolicies, column: &ColumnTags) -> ColumnPolicy {
        let policies = tenant
            .policies
            .iter()
            .filter(|p| p.tags.iter().any(|t| column.tags.contains_key(t)))
            .map(|p| AppliedPolicy {
                name: p.name.clone(),
                mask: p.mask.name().to_owned(),
                expression: custom_expression(&p.mask),
                unmasked_roles: p.unmasked_roles.clone(),
            })
            .collect();
        ColumnPolicy {
            qualified_name: column.qualified_name.clone(),
            table: column.table.clone(),
            column: column.name.clone(),
            tags: column
                .tags
                .iter()
                .map(|(tag, origin)| TagState {
                    tag: tag.clone(),
                    direct: origin.direct,
                    propagated_from: origin.propagated_from.iter().cloned().collect(),
                })
                .collect(),
            mask: tenant
                .mask_for_tags(column.tags.keys(), &[])
                .map(|a| a.mask.name().to_owned()),
            policies,
        }
    }
}

/// A policy of the tenant, as the policy API lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyState {
    /// Its name.
    pub name: String,
    /// The tags it applies to.
    pub tags: Vec<String>,
    /// Its mask type.
    pub mask: String,
    /// The expression of a `CUSTOM` mask.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
    /// Roles that see raw values.
    pub unmasked_roles: Vec<String>,
}

/// The effective policy of a tenant, or of one of its tables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EffectivePolicy {
    /// Enabled policies.
    pub policies: Vec<PolicyState>,
    /// Tagged columns, by qualified name.
    pub columns: Vec<ColumnPolicy>,
}

impl EffectivePolicy {
    /// The tenant's policies and every tagged column; with `table`, only
    /// that table's columns (its qualified name, case-insensitive).
    pub fn of(tenant: Option<&TenantPolicies>, table: Option<&str>) -> EffectivePolicy {
        let Some(tenant) = tenant else {
            return EffectivePolicy {
                policies: Vec::new(),
                columns: Vec::new(),
            };
        };
        let mut columns: Vec<ColumnPolicy> = match table {
            Some(t) => tenant
                .tagged_columns(t)
                .into_iter()
                .flat_map(|c| c.values())
                .map(|c| ColumnPolicy::of(tenant, c))
                .collect(),
            None => tenant
                .columns
                .values()
                .flat_map(|c| c.values())
                .map(|c| ColumnPolicy::of(tenant, c))
                .collect(),
        };
        columns.sort_by(|a, b| a.qualified_name.cmp(&b.qualified_name));
        EffectivePolicy {
            policies: tenant
                .policies
                .iter()
                .map(|p| PolicyState {
                    name: p.name.clone(),
                    tags: p.tags.clone(),
                    mask: p.mask.name().to_owned(),
                    expression: custom_expression(&p.mask),
                    unmasked_roles: p.unmasked_roles.clone(),
                })
                .collect(),
            columns,
        }
    }

    /// A strong entity tag of the content (not of the snapshot version):
    /// it changes only when what is enforced changes.
    pub fn etag(&self) -> String {
        let body = serde_json::to_vec(self).unwrap_or_default();
        let digest = Sha256::digest(&body);
        format!("\"{}\"", hex_prefix(&digest, 16))
    }
}

/// The expression of a `CUSTOM` mask: part of what a policy enforces.
fn custom_expression(mask: &super::Mask) -> Option<String> {
    match mask {
        super::Mask::Custom(e) => Some(e.clone()),
        _ => None,
    }
}

fn hex_prefix(bytes: &[u8], n: usize) -> String {
    bytes.iter().take(n).map(|b| format!("{b:02x}")).collect()
}

/// Every tagged column of `tenant`'s policies by qualified name: what a
/// change of snapshot is compared on to make policy events.
pub fn column_policies(tenant: Option<&TenantPolicies>) -> BTreeMap<String, ColumnPolicy> {
    tenant
        .into_iter()
        .flat_map(|t| {
            t.columns
                .values()
                .flat_map(|c| c.values())
                .map(move |c| (c.qualified_name.clone(), ColumnPolicy::of(t, c)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Mask;
    use crate::policy::snapshot::{MaskingPolicy, TagOrigin};

    fn tenant(unmasked: &[&str]) -> TenantPolicies {
        let mut t = TenantPolicies {
            policies: vec![MaskingPolicy {
                name: "pii".into(),
                tags: vec!["PII".into()],
                mask: Mask::Hash,
                unmasked_roles: unmasked.iter().map(|s| s.to_string()).collect(),
            }],
            ..Default::default()
        };
        let mut tags = BTreeMap::new();
        tags.insert(
            "PII".to_string(),
            TagOrigin {
                direct: false,
                propagated_from: ["db.s.a.email".to_string()].into(),
            },
        );
        tags.insert("Internal".to_string(), TagOrigin::default());
        t.columns.entry("db.s.b".into()).or_default().insert(
            "email".into(),
            ColumnTags {
                qualified_name: "db.s.B.email".into(),
                table: "db.s.B".into(),
                name: "email".into(),
                tags,
            },
        );
        t
    }

    #[test]
    fn a_column_policy_names_its_tags_origins_and_mask() {
        let t = tenant(&["pii_reader"]);
        let p = EffectivePolicy::of(Some(&t), Some("DB.S.b"));
        assert_eq!(p.columns.len(), 1);
        let c = &p.columns[0];
        assert_eq!(c.mask.as_deref(), Some("MASK_HASH"));
        assert_eq!(c.tags[1].tag, "PII");
        assert_eq!(c.tags[1].propagated_from, vec!["db.s.a.email".to_string()]);
        assert_eq!(c.policies[0].unmasked_roles, vec!["pii_reader".to_string()]);
        assert!(
            EffectivePolicy::of(Some(&t), Some("db.s.c"))
                .columns
                .is_empty()
        );
    }

    #[test]
    fn the_etag_follows_the_content() {
        let a = EffectivePolicy::of(Some(&tenant(&["pii_reader"])), None);
        let b = EffectivePolicy::of(Some(&tenant(&["pii_reader"])), None);
        let c = EffectivePolicy::of(Some(&tenant(&[])), None);
        assert_eq!(a.etag(), b.etag());
        assert_ne!(a.etag(), c.etag());
    }
}
