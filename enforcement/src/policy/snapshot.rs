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

/// Where one tag of a column comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TagOrigin {
    /// Tagged on the column itself.
    pub direct: bool,
    /// Qualified names of the upstream columns it was propagated from.
    pub propagated_from: BTreeSet<String>,
}

/// The tags of one column of the catalog.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColumnTags {
    /// The column's qualified name.
    pub qualified_name: String,
    /// The qualified name of its table.
    pub table: String,
    /// Its name.
    pub name: String,
    /// Each tag, with where it comes from.
    pub tags: BTreeMap<String, TagOrigin>,
}

/// What one tenant's statements are governed by.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenantPolicies {
    /// Enabled policies.
    pub policies: Vec<MaskingPolicy>,
    /// Governed tables by name.
    pub tables: BTreeMap<String, GovernedTable>,
    /// Every tagged column of the catalog: table's qualified name
    /// (lower-case) → column name (lower-case) → its tags. Only tagged
    /// columns are here, so the snapshot grows with tags, not with the estate.
    pub columns: HashMap<String, BTreeMap<String, ColumnTags>>,
}

impl TenantPolicies {
    /// The tagged columns of the table whose qualified name is `table`
    /// (case-insensitive).
    pub fn tagged_columns(&self, table: &str) -> Option<&BTreeMap<String, ColumnTags>> {
        self.columns.get(&table.to_lowercase())
    }

    /// The tags of column `column` of catalog table `table` (both
    /// case-insensitive).
    pub fn column_tags(&self, table: &str, column: &str) -> Option<&ColumnTags> {
        self.tagged_columns(table)?.get(&column.to_lowercase())
    }

    /// The mask of `column` of governed table `table` for a caller holding
    /// `roles`, if any policy masks it: the strictest of the masks of every
    /// policy whose tag the column carries and whose unmasking roles the
    /// caller lacks.
    pub fn column_mask(&self, table: &str, column: &str, roles: &[String]) -> Option<AppliedMask> {
        let asset = &self.tables.get(table)?.asset;
        self.asset_column_mask(asset, column, roles)
    }

    /// The mask of `column` of the catalog table whose qualified name is
    /// `table`, for a caller holding `roles`, as [`TenantPolicies::column_mask`].
    pub fn asset_column_mask(
        &self,
        table: &str,
        column: &str,
        roles: &[String],
    ) -> Option<AppliedMask> {
        let tags = self.column_tags(table, column)?;
        self.mask_for_tags(tags.tags.keys(), roles)
    }

    /// The mask that columns carrying `tags` get for a caller holding `roles`.
    pub fn mask_for_tags<'a>(
        &self,
        tags: impl Iterator<Item = &'a String> + Clone,
        roles: &[String],
    ) -> Option<AppliedMask> {
        let mut applied: Option<AppliedMask> = None;
        for p in &self.policies {
            if !p.tags.iter().any(|t| tags.clone().any(|c| c == t)) {
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
    /// The metastore's WAL position when it was read (at least one more
    /// than the snapshot before): the version statements are audited with,
    /// pullers compare and policy events carry.
    pub version: u64,
    /// Tenants by id.
    pub tenants: HashMap<String, TenantPolicies>,
}

impl PolicySnapshot {
    /// A tenant's policies (none: an empty set).
    pub fn tenant(&self, tenant: &str) -> Option<&TenantPolicies> {
        self.tenants.get(tenant)
    }

    /// Reads every tenant's policies, governed tables and tagged columns in
    /// one repeatable-read transaction; its version is the WAL position it
    /// read at, and at least `version`.
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
        // The WAL position the read starts at: it grows across restarts,
        // so a version a puller or an event consumer saw stays older than
        // every later one.
        let lsn: i64 = tx
            .query_one("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint", &[])
            .await
            .map_err(sql("reading the WAL position"))?
            .get(0);
        let version = version.max(lsn as u64);
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
        // Every tagged column, with the table it belongs to and where each
        // tag comes from: what the SQL endpoint, Trino, the downstream
        // databases and the policy API enforce alike.
        for r in tx
            .query(
                "SELECT cl.tenant_id, t.qualified_name, c.name, c.qualified_name, cl.tag, o.qualified_name
                   FROM metastore.classifications cl
                   JOIN metastore.assets c ON c.tenant_id = cl.tenant_id AND c.guid = cl.asset_guid
                   JOIN metastore.assets t ON t.tenant_id = c.tenant_id AND t.guid = c.parent_guid
                   LEFT JOIN metastore.assets o ON o.tenant_id = cl.tenant_id AND o.guid = cl.propagated_from
                  WHERE c.type_name IN ('column', 'bi_field')",
                &[],
            )
            .await
            .map_err(sql("reading the tags of columns"))?
        {
            let table: String = r.get(1);
            let name: String = r.get(2);
            let column = tenants
                .entry(r.get(0))
                .or_default()
                .columns
                .entry(table.to_lowercase())
                .or_default()
                .entry(name.to_lowercase())
                .or_insert_with(|| ColumnTags {
                    qualified_name: r.get(3),
                    table: table.clone(),
                    name: name.clone(),
                    tags: BTreeMap::new(),
                });
            let origin = column.tags.entry(r.get(4)).or_default();
            match r.get::<_, Option<String>>(5) {
                Some(from) => {
                    origin.propagated_from.insert(from);
                }
                None => origin.direct = true,
            }
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
        for (table, asset) in [
            ("customers", "db.s.Customers"),
            ("payments", "db.s.payments"),
        ] {
            t.tables.insert(
                table.into(),
                GovernedTable {
                    table_name: table.into(),
                    asset: asset.into(),
                    source: Source::Delta("file:///x".into()),
                    version: 1,
                },
            );
        }
        let mut tag = |table: &str, column: &str, tags: &[&str]| {
            t.columns.entry(table.to_lowercase()).or_default().insert(
                column.into(),
                ColumnTags {
                    qualified_name: format!("{table}.{column}"),
                    table: table.into(),
                    name: column.into(),
                    tags: tags
                        .iter()
                        .map(|s| {
                            (
                                s.to_string(),
                                TagOrigin {
                                    direct: true,
                                    ..Default::default()
                                },
                            )
                        })
                        .collect(),
                },
            );
        };
        tag("db.s.Customers", "email", &["PII"]);
        tag("db.s.Customers", "name", &["PII", "GDPR"]);
        tag("db.s.payments", "card", &["PCI"]);
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
        // The same column, named as the catalog names it (any case).
        assert_eq!(
            t.asset_column_mask("DB.S.CUSTOMERS", "Name", &["viewer".to_string()])
                .map(|a| a.mask),
            Some(Mask::Null)
        );
        // Unmasked for PII only: the GDPR mask remains.
        let a = t
            .column_mask("customers", "name", &["pii_reader".to_string()])
            .unwrap();
        assert_eq!((a.mask, a.policies), (Mask::Null, vec!["gdpr".to_string()]));
    }
}
