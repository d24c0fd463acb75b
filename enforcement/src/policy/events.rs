//! Policy events: after every snapshot, each column whose effective policy
//! changed (a tag added or removed, directly or by propagation; a policy
//! edited) gets its row of `metastore.column_policies` rewritten, all in
//! one transaction with the snapshot's version and the cause. The rows
//! stream like every metastore change (Kafka keyed by the column, notify
//! targets, the Delta audit), so an event is never lost: the rows are what
//! was announced, and a restart compares the snapshot with them again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lily_cdc::wire::PgConnect;
use serde_json::json;
use tokio::sync::watch;
use tracing::info;

use super::effective::{ColumnPolicy, TagState, column_policies};
use super::store::PolicyStore;
use crate::error::{EnforcementError, Result};

/// How long a pass waits for a snapshot being compiled.
const POLICY_WAIT: Duration = Duration::from_secs(10);

/// What was announced, per tenant and column.
type Announced = HashMap<String, BTreeMap<String, ColumnPolicy>>;

/// Writes the policy events of one metastore.
pub struct PolicyEvents {
    connect: PgConnect,
    store: Arc<PolicyStore>,
}

/// Why a column's policy changed, in words: tags added (with where they
/// come from) and removed, then policies changed.
pub fn cause(old: Option<&ColumnPolicy>, new: &ColumnPolicy) -> String {
    let old_tags: BTreeMap<&str, &TagState> = old
        .map(|o| o.tags.iter().map(|t| (t.tag.as_str(), t)).collect())
        .unwrap_or_default();
    let new_tags: BTreeMap<&str, &TagState> =
        new.tags.iter().map(|t| (t.tag.as_str(), t)).collect();
    let mut parts = Vec::new();
    for (tag, t) in &new_tags {
        let was = old_tags.get(tag);
        if was == Some(t) {
            continue;
        }
        let from = if t.propagated_from.is_empty() {
            String::new()
        } else {
            format!(" from {}", t.propagated_from.join(", "))
        };
        parts.push(match (was, t.direct) {
            (None, true) => format!("tag {tag} added"),
            (None, false) => format!("tag {tag} propagated{from}"),
            (Some(_), true) if t.propagated_from.is_empty() => format!("tag {tag} now direct only"),
            (Some(_), _) => format!(
                "tag {tag} now{} propagated{from}",
                if t.direct { " direct and" } else { "" }
            ),
        });
    }
    for tag in old_tags.keys() {
        if !new_tags.contains_key(tag) {
            parts.push(format!("tag {tag} removed"));
        }
    }
    if parts.is_empty() {
        let old_policies = old.map(|o| o.policies.as_slice()).unwrap_or_default();
        let mut names: Vec<&str> = new
            .policies
            .iter()
            .filter(|p| !old_policies.contains(p))
            .chain(
                old_policies
                    .iter()
                    .filter(|p| !new.policies.iter().any(|n| n.name == p.name)),
            )
            .map(|p| p.name.as_str())
            .collect();
        names.dedup();
        parts.push(if names.is_empty() {
            "policy changed".to_owned()
        } else {
            format!("policy {} changed", names.join(", "))
        });
    }
    parts.join("; ")
}

/// A column that had tags and has none now: its last event.
fn untagged(old: &ColumnPolicy) -> ColumnPolicy {
    ColumnPolicy {
        tags: Vec::new(),
        mask: None,
        policies: Vec::new(),
        ..old.clone()
    }
}

impl PolicyEvents {
    /// Events of the metastore at `url`, following `store`.
    pub fn new(url: &str, store: Arc<PolicyStore>) -> Result<Self> {
        let connect = PgConnect::parse(url).map_err(|e| EnforcementError::Config(e.to_string()))?;
        Ok(Self { connect, store })
    }

    /// Writes the events of every snapshot until `shutdown`.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let mut announced: Option<Announced> = None;
        let mut client: Option<tokio_postgres::Client> = None;
        let mut follower = self.store.follower("policy_events", None, shutdown);
        while follower.next().await {
            let result = self.pass(&mut client, &mut announced).await.map_err(|e| {
                // Read what was announced again: the failed write may or
                // may not have committed.
                announced = None;
                client = None;
                format!("policy events could not be written: {e}")
            });
            follower.done(result);
        }
    }

    async fn pass(
        &self,
        client: &mut Option<tokio_postgres::Client>,
        announced: &mut Option<Announced>,
    ) -> Result<()> {
        let sql = |context: &'static str| {
            move |source: tokio_postgres::Error| EnforcementError::Sql { context, source }
        };
        let snapshot = self.store.current(POLICY_WAIT).await?;
        let started = Instant::now();
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            *client = Some(
                self.connect
                    .connect()
                    .await
                    .map_err(sql("connecting to write policy events"))?,
            );
        }
        let Some(client) = client.as_mut() else {
            return Ok(());
        };
        if announced.is_none() {
            let mut read: Announced = HashMap::new();
            for r in client
                .query(
                    "SELECT tenant_id, qualified_name, table_qualified_name, column_name, mask,
                            policies::text, origins::text
                       FROM metastore.column_policies",
                    &[],
                )
                .await
                .map_err(sql("reading the announced column policies"))?
            {
                let policy = ColumnPolicy {
                    qualified_name: r.get(1),
                    table: r.get(2),
                    column: r.get(3),
                    mask: r.get(4),
                    policies: serde_json::from_str(r.get(5)).unwrap_or_default(),
                    tags: serde_json::from_str(r.get(6)).unwrap_or_default(),
                };
                read.entry(r.get(0))
                    .or_default()
                    .insert(policy.qualified_name.clone(), policy);
            }
            *announced = Some(read);
        }
        let Some(known) = announced.as_mut() else {
            return Ok(());
        };
        // (tenant, new policy, cause) of every column that changed.
        let mut changes: Vec<(String, ColumnPolicy, String)> = Vec::new();
        let mut tenants: Vec<&String> = snapshot.tenants.keys().chain(known.keys()).collect();
        tenants.sort();
        tenants.dedup();
        for tenant in tenants {
            let now = column_policies(snapshot.tenant(tenant));
            let before = known.get(tenant);
            for (qn, policy) in &now {
                let old = before.and_then(|b| b.get(qn));
                if old != Some(policy) {
                    changes.push((
                        tenant.clone(),
                        policy.clone(),
                        cause(old.filter(|o| !o.tags.is_empty()), policy),
                    ));
                }
            }
            for (qn, old) in before.into_iter().flatten() {
                if !now.contains_key(qn) && !old.tags.is_empty() {
                    let gone = untagged(old);
                    let why = cause(Some(old), &gone);
                    changes.push((tenant.clone(), gone, why));
                }
            }
        }
        if changes.is_empty() {
            return Ok(());
        }
        let tx = client
            .transaction()
            .await
            .map_err(sql("starting the policy events"))?;
        let statement = tx
            .prepare(
                "INSERT INTO metastore.column_policies AS c
                     (tenant_id, qualified_name, table_qualified_name, column_name, tags, mask,
                      policies, origins, cause, policy_version, changed_at)
                 -- The tags are those of the origins, in their order.
                 SELECT u.tenant_id, u.qualified_name, u.table_qualified_name, u.column_name,
                        ARRAY(SELECT o.value->>'tag'
                                FROM jsonb_array_elements(u.origins::jsonb) WITH ORDINALITY o
                               ORDER BY o.ordinality),
                        u.mask, u.policies::jsonb, u.origins::jsonb, u.cause, $9::int8, now()
                   FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                               $6::text[], $7::text[], $8::text[])
                     AS u(tenant_id, qualified_name, table_qualified_name, column_name, mask,
                          policies, origins, cause)
                 ON CONFLICT (tenant_id, qualified_name) DO UPDATE SET
                     table_qualified_name = EXCLUDED.table_qualified_name,
                     column_name = EXCLUDED.column_name, tags = EXCLUDED.tags,
                     mask = EXCLUDED.mask, policies = EXCLUDED.policies, origins = EXCLUDED.origins,
                     cause = EXCLUDED.cause, policy_version = EXCLUDED.policy_version,
                     changed_at = EXCLUDED.changed_at
                 -- A writer behind (an overlapping restart) never overwrites a newer state.
                 WHERE c.policy_version <= EXCLUDED.policy_version",
            )
            .await
            .map_err(sql("preparing the policy events"))?;
        let mut cols: [Vec<Option<String>>; 8] = Default::default();
        for (tenant, p, why) in &changes {
            let values = [
                Some(tenant.clone()),
                Some(p.qualified_name.clone()),
                Some(p.table.clone()),
                Some(p.column.clone()),
                p.mask.clone(),
                Some(json!(p.policies).to_string()),
                Some(json!(p.tags).to_string()),
                Some(why.clone()),
            ];
            for (col, v) in cols.iter_mut().zip(values) {
                col.push(v);
            }
        }
        let version = snapshot.version as i64;
        tx.execute(
            &statement,
            &[
                &cols[0], &cols[1], &cols[2], &cols[3], &cols[4], &cols[5], &cols[6], &cols[7],
                &version,
            ],
        )
        .await
        .map_err(sql("writing the policy events"))?;
        tx.commit()
            .await
            .map_err(sql("committing the policy events"))?;
        for (tenant, p, _) in &changes {
            known
                .entry(tenant.clone())
                .or_default()
                .insert(p.qualified_name.clone(), p.clone());
        }
        metrics::counter!("lily_policy_events_total").increment(changes.len() as u64);
        metrics::histogram!("lily_policy_events_write_seconds")
            .record(started.elapsed().as_secs_f64());
        info!(
            events = changes.len(),
            version = snapshot.version,
            ms = started.elapsed().as_millis() as u64,
            "policy events written"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::AppliedPolicy;

    fn policy(tags: &[(&str, bool, &[&str])], mask: Option<&str>) -> ColumnPolicy {
        ColumnPolicy {
            qualified_name: "db.s.t.c".into(),
            table: "db.s.t".into(),
            column: "c".into(),
            tags: tags
                .iter()
                .map(|(t, direct, from)| TagState {
                    tag: t.to_string(),
                    direct: *direct,
                    propagated_from: from.iter().map(|s| s.to_string()).collect(),
                })
                .collect(),
            mask: mask.map(str::to_owned),
            policies: vec![AppliedPolicy {
                name: "pii".into(),
                mask: mask.unwrap_or("MASK_NONE").into(),
                expression: None,
                unmasked_roles: vec![],
            }],
        }
    }

    #[test]
    fn causes_name_what_changed() {
        let direct = policy(&[("PII", true, &[])], Some("MASK_HASH"));
        assert_eq!(cause(None, &direct), "tag PII added");
        let propagated = policy(&[("PII", false, &["db.s.u.c"])], Some("MASK_HASH"));
        assert_eq!(cause(None, &propagated), "tag PII propagated from db.s.u.c");
        assert_eq!(cause(Some(&direct), &untagged(&direct)), "tag PII removed");
        let stricter = policy(&[("PII", true, &[])], Some("MASK_NULL"));
        assert_eq!(cause(Some(&direct), &stricter), "policy pii changed");
    }
}
