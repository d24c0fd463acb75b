//! The policy snapshot: every tenant's masking policies, governed tables
//! and the tags of the governed columns (direct and propagated), compiled
//! from the metastore in one consistent read. Statements read the snapshot
//! current when they are planned; a commit that touches policies, tags or
//! governed tables makes a new one.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tokio_postgres::Client;

use super::mask::Mask;
use crate::error::{EnforcementError, Result};

/// A tenant's masking policy: columns carrying any of `tags` are masked
/// with `mask`, except for callers holding one of `unmasked_roles`.
#[derive(Debug, Clone, PartialEq)]
pub struct MaskingPolicy {
    /// Its name, unique in the tenant.
    pub name: String,
    /// The tags it applies to.
    pub tags: Vec<String>,
    /// The mask.
    pub mask: Mask,
    /// Roles that see the raw values.
    pub unmasked_roles: Vec<String>,
}

/// Where a governed table's rows are read from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// A table (`schema.table`) of a database of `[sql.connections]`.
    Postgres {
        /// The connection's name.
        connection: String,
        /// `schema.table` there.
        table: String,
    },
    /// A Delta table at a URL.
    Delta(String),
    /// Parquet files at a URL (a file or a directory).
    Parquet(String),
}

/// A table the endpoint serves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GovernedTable {
    /// The name SQL uses.
    pub table_name: String,
    /// The qualified name of the catalog asset whose columns' tags govern it.
    pub asset: String,
    /// Where its rows are.
    pub source: Source,
    /// The row's version: a changed registration opens the source again.
    pub version: i64,
}

/// A mask that applies to one column for one caller, with why.
#[derive(Debug, Clone, PartialEq)]
pub struct AppliedMask {
    /// The mask.
    pub mask: Mask,
    /// The policies that asked for a mask on this column.
    pub policies: Vec<String>,
}

/// What one tenant's statements are governed by.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenantPolicies {
    /// Enabled policies.
    pub policies: Vec<MaskingPolicy>,
    /// Governed tables by name.
    pub tables: BTreeMap<String, GovernedTable>,
    /// Tags of governed columns: (table name, column name) → tags.
    pub column_tags: HashMap<(String, String), BTreeSet<String>>,
}

impl TenantPolicies {
    /// The mask of `column` of `table` for a caller holding `roles`, if any
    /// policy masks it: the strictest of the masks of every policy whose
    /// tag the column carries and whose unmasking roles the caller lacks.
    pub fn column_mask(&self, table: &str, column: &str, roles: &[String]) -> Option<AppliedMask> {
        let tags = self
            .column_tags
            .get(&(table.to_owned(), column.to_ascii_lowercase()))?;
        let mut applied: Option<AppliedMask> = None;
        for p in &self.policies {
            if !p.tags.iter().any(|t| tags.contains(t)) {
                continue;
            }
            if p.unmasked_roles.iter().any(|r| roles.contains(r)) {
                continue;
            }
            applied = Some(match applied {
                None => AppliedMask {
                    mask: p.mask.clone(),
                    policies: vec![p.name.clone()],
                },
                Some(a) => {
                    let mut policies = a.policies;
                    policies.push(p.name.clone());
                    AppliedMask {
                        mask: a.mask.strictest(p.mask.clone()),
                        policies,
                    }
                }
            });
        }
        applied
    }
}

/// Every tenant's policies at one point of the metastore's history.
#[derive(Debug, Clone, Default)]
pub struct PolicySnapshot {
    /// Grows by one with every compilation: the version statements are audited with.
    pub version: u64,
    /// Tenants by id.
    pub tenants: HashMap<String, TenantPolicies>,
}

impl PolicySnapshot {
    /// A tenant's policies (none: an empty set).
    pub fn tenant(&self, tenant: &str) -> Option<&TenantPolicies> {
        self.tenants.get(tenant)
    }

    /// Reads every tenant's policies, governed tables and governed columns'
    /// tags in one repeatable-read transaction.
    pub async fn compile(client: &mut Client, version: u64) -> Result<PolicySnapshot> {
        let sql = |context: &'static str| {
            move |source: tokio_postgres::Error| EnforcementError::Sql { context, source }
        };
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(sql("starting the policy read"))?;
        let mut tenants: HashMap<String, TenantPolicies> = HashMap::new();
        for r in tx
            .query(
                "SELECT tenant_id, name, tags, mask, expression, unmasked_roles
                   FROM metastore.masking_policies WHERE enabled ORDER BY tenant_id, name",
                &[],
            )
            .await
            .map_err(sql("reading masking policies"))?
        {
            let tenant: String = r.get(0);
            let name: String = r.get(1);
            let mask =
                Mask::parse(r.get(3), r.get(4)).map_err(|message| EnforcementError::Policy {
                    tenant: tenant.clone(),
                    name: name.clone(),
                    message,
                })?;
            tenants
                .entry(tenant)
                .or_default()
                .policies
                .push(MaskingPolicy {
                    name,
                    tags: r.get(2),
                    mask,
                    unmasked_roles: r.get(5),
                });
        }
        for r in tx
            .query(
                "SELECT tenant_id, table_name, asset, kind, connection, location, version
                   FROM metastore.governed_tables",
                &[],
            )
            .await
            .map_err(sql("reading governed tables"))?
        {
            let kind: &str = r.get(3);
            let location: String = r.get(5);
            let source = match kind {
                "postgres" => Source::Postgres {
                    connection: r.get::<_, Option<String>>(4).unwrap_or_default(),
                    table: location,
                },
                "delta" => Source::Delta(location),
                _ => Source::Parquet(location),
            };
            let table = GovernedTable {
                table_name: r.get(1),
                asset: r.get(2),
                source,
                version: r.get(6),
            };
            tenants
                .entry(r.get(0))
                .or_default()
                .tables
                .insert(table.table_name.clone(), table);
        }
        for r in tx
            .query(
                "SELECT g.tenant_id, g.table_name, lower(c.name), array_agg(DISTINCT cl.tag)
                   FROM metastore.governed_tables g
                   JOIN metastore.assets t ON t.tenant_id = g.tenant_id AND t.qualified_name = g.asset
                   JOIN metastore.assets c ON c.tenant_id = t.tenant_id AND c.parent_guid = t.guid
                   JOIN metastore.classifications cl ON cl.tenant_id = c.tenant_id AND cl.asset_guid = c.guid
                  GROUP BY 1, 2, 3",
                &[],
            )
            .await
            .map_err(sql("reading the tags of governed columns"))?
        {
            let tags: Vec<String> = r.get(3);
            tenants
                .entry(r.get(0))
                .or_default()
                .column_tags
                .insert((r.get(1), r.get(2)), tags.into_iter().collect());
        }
        tx.commit().await.map_err(sql("ending the policy read"))?;
        Ok(PolicySnapshot { version, tenants })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, tag: &str, mask: Mask, unmasked: &[&str]) -> MaskingPolicy {
        MaskingPolicy {
            name: name.into(),
            tags: vec![tag.into()],
            mask,
            unmasked_roles: unmasked.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn tenant() -> TenantPolicies {
        let mut t = TenantPolicies {
            policies: vec![
                policy("pii", "PII", Mask::Hash, &["pii_reader"]),
                policy("gdpr", "GDPR", Mask::Null, &["gdpr_reader"]),
                policy("card", "PCI", Mask::ShowLast4, &[]),
            ],
            ..Default::default()
        };
        let tags = |ts: &[&str]| ts.iter().map(|s| s.to_string()).collect();
        t.column_tags
            .insert(("customers".into(), "email".into()), tags(&["PII"]));
        t.column_tags
            .insert(("customers".into(), "name".into()), tags(&["PII", "GDPR"]));
        t.column_tags
            .insert(("payments".into(), "card".into()), tags(&["PCI"]));
        t
    }

    #[test]
    fn a_tagged_column_is_masked_unless_the_role_unmasks_it() {
        let t = tenant();
        let viewer = vec!["viewer".to_string()];
        let reader = vec!["viewer".to_string(), "pii_reader".to_string()];
        assert_eq!(
            t.column_mask("customers", "email", &viewer).map(|a| a.mask),
            Some(Mask::Hash)
        );
        assert_eq!(t.column_mask("customers", "EMAIL", &reader), None);
        assert_eq!(t.column_mask("customers", "city", &viewer), None);
        assert_eq!(
            t.column_mask("payments", "card", &reader).map(|a| a.mask),
            Some(Mask::ShowLast4)
        );
    }

    #[test]
    fn two_tags_give_the_strictest_mask_and_name_both_policies() {
        let t = tenant();
        let a = t
            .column_mask("customers", "name", &["viewer".to_string()])
            .unwrap();
        assert_eq!(a.mask, Mask::Null);
        assert_eq!(a.policies, vec!["pii".to_string(), "gdpr".to_string()]);
        // Unmasked for PII only: the GDPR mask remains.
        let a = t
            .column_mask("customers", "name", &["pii_reader".to_string()])
            .unwrap();
        assert_eq!((a.mask, a.policies), (Mask::Null, vec!["gdpr".to_string()]));
    }
}
