//! Keeps the masking views of one downstream database in step with the
//! policy snapshot. After every snapshot (and every `recheck_interval_ms`)
//! it works out each view's definition from the snapshot, the base table's
//! columns and the roles that exist downstream, and rewrites only the views
//! whose definition changed, each in one transaction (the view, its
//! comment, the grants): a reader sees the old policy or the new one, never
//! half of it. The digest of the definition lives in the view's comment,
//! so a restart or a replay rewrites nothing that is already right, and a
//! policy change made while Lily was down is applied when it starts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lily_cdc::wire::PgConnect;
use lily_config::SqlConfig;
use lily_enforcement::PolicyStore;
use lily_enforcement::policy::{PolicySnapshot, Source};
use tokio::sync::watch;
use tokio_postgres::Client;
use tracing::{Instrument, info, info_span, warn};

use super::config::PostgresMaskingConfig;
use super::views::{BaseColumn, ident, view_query};

/// The comment that marks a view as this sink's: `lily-policy <digest>`.
const MARK: &str = "lily-policy ";

/// The digest of a view's definition together with the roles granted it.
fn grants_digest(query_digest: &str, consumers: &[&String]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(query_digest.as_bytes());
    for c in consumers {
        h.update(b"\0");
        h.update(c.as_bytes());
    }
    h.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// PostgreSQL's longest identifier, in bytes; longer ones are cut.
const NAME_MAX: usize = 63;

/// How long a pass waits for a snapshot being compiled.
const POLICY_WAIT: Duration = Duration::from_secs(10);

/// One view the snapshot asks for.
#[derive(Debug, Clone)]
struct WantedView {
    tenant: String,
    schema: String,
    name: String,
    /// The catalog table whose columns' tags govern it.
    asset: String,
    /// `schema.table` of the base table.
    base: String,
}

/// What one pass did.
#[derive(Debug, Default)]
struct Pass {
    written: usize,
    dropped: usize,
    unchanged: usize,
    failed: usize,
}

/// The masking views of one downstream database.
pub struct MaskingViews {
    name: String,
    config: PostgresMaskingConfig,
    connect: PgConnect,
    sql: SqlConfig,
    store: Arc<PolicyStore>,
}

impl MaskingViews {
    /// The views of sink `name` in the database at `url`.
    pub fn new(
        name: &str,
        config: PostgresMaskingConfig,
        url: &str,
        sql: SqlConfig,
        store: Arc<PolicyStore>,
    ) -> Result<Self, String> {
        let connect = PgConnect::parse(url).map_err(|e| format!("connection {:?}: {e}", config.connection))?;
        Ok(Self {
            name: name.to_owned(),
            config,
            connect,
            sql,
            store,
        })
    }

    /// Follows the snapshot until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        let mut client: Option<Client> = None;
        let recheck = Duration::from_millis(self.config.recheck_interval_ms);
        let mut follower = self
            .store
            .follower("postgres_masking", Some(recheck), shutdown);
        while follower.next().await {
            let result = self.checked(&mut client).await;
            follower.done(result);
        }
    }

    /// One pass, with its metrics and its log line.
    async fn checked(&self, client: &mut Option<Client>) -> Result<(), String> {
        let span = info_span!("masking_views", sink = %self.name);
        let started = Instant::now();
        let (version, pass) = self.pass(client).instrument(span).await.map_err(|e| {
            *client = None;
            format!(
                "the masking views of sink {} could not be checked ({e}); the downstream keeps its last policy until they are",
                self.name
            )
        })?;
        let sink = self.name.clone();
        metrics::histogram!("lily_masking_pass_seconds", "sink" => sink.clone())
            .record(started.elapsed().as_secs_f64());
        metrics::gauge!("lily_masking_policy_version", "sink" => sink.clone())
            .set(version as f64);
        metrics::counter!("lily_masking_views_written_total", "sink" => sink.clone())
            .increment(pass.written as u64);
        metrics::counter!("lily_masking_views_dropped_total", "sink" => sink)
            .increment(pass.dropped as u64);
        if pass.written + pass.dropped + pass.failed > 0 {
            info!(
                sink = %self.name,
                version,
                written = pass.written,
                dropped = pass.dropped,
                unchanged = pass.unchanged,
                failed = pass.failed,
                ms = started.elapsed().as_millis() as u64,
                "masking views brought in step with the policies"
            );
        }
        Ok(())
    }

    /// The views the snapshot asks for in this database.
    fn wanted(&self, snapshot: &PolicySnapshot) -> Vec<WantedView> {
        let mut wanted = Vec::new();
        for (tenant, policies) in &snapshot.tenants {
            for t in policies.tables.values() {
                let Source::Postgres { connection, table } = &t.source else {
                    continue;
                };
                if *connection != self.config.connection {
                    continue;
                }
                // The grant may have been withdrawn since the registration.
                if let Err(why) = self.sql.source_allowed(tenant, Some(connection), table) {
                    warn!(sink = %self.name, tenant, table = %t.table_name, %why, "no masking view");
                    continue;
                }
                let schema = self.config.view_schema.replace("{tenant}", tenant);
                if schema.len() > NAME_MAX {
                    // PostgreSQL would cut the name, and the view would be
                    // written and dropped again at every pass.
                    warn!(sink = %self.name, tenant, %schema, "the view schema's name is longer than 63 bytes; no masking view");
                    continue;
                }
                wanted.push(WantedView {
                    tenant: tenant.clone(),
                    schema,
                    name: t.table_name.clone(),
                    asset: t.asset.clone(),
                    base: table.clone(),
                });
            }
        }
        wanted
    }

    /// One pass over every view; the snapshot version it enforced.
    async fn pass(&self, client: &mut Option<Client>) -> Result<(u64, Pass), String> {
        let snapshot = self
            .store
            .current(POLICY_WAIT)
            .await
            .map_err(|e| e.to_string())?;
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            *client = Some(
                self.connect
                    .connect()
                    .await
                    .map_err(|e| format!("connecting: {e}"))?,
            );
        }
        let Some(client) = client.as_mut() else {
            return Err("no connection".into());
        };
        let wanted = self.wanted(&snapshot);
        let sql = |what: &'static str| move |e: tokio_postgres::Error| format!("{what}: {e}");

        let bases: Vec<String> = wanted.iter().map(|w| w.base.clone()).collect();
        let mut columns: BTreeMap<String, Vec<BaseColumn>> = BTreeMap::new();
        for r in client
            .query(
                "SELECT b.name, a.attname::text, format_type(a.atttypid, a.atttypmod)
                   FROM unnest($1::text[]) b(name)
                   JOIN pg_attribute a ON a.attrelid = to_regclass(b.name)
                  WHERE a.attnum > 0 AND NOT a.attisdropped
                  ORDER BY b.name, a.attnum",
                &[&bases],
            )
            .await
            .map_err(sql("reading the base tables' columns"))?
        {
            columns.entry(r.get(0)).or_default().push(BaseColumn {
                name: r.get(1),
                data_type: r.get(2),
            });
        }
        let mut named: BTreeSet<String> = self.config.consumer_roles.iter().cloned().collect();
        for p in snapshot.tenants.values().flat_map(|t| &t.policies) {
            named.extend(p.unmasked_roles.iter().cloned());
        }
        let named: Vec<String> = named.into_iter().collect();
        let existing_roles: BTreeSet<String> = client
            .query(
                "SELECT rolname::text FROM pg_roles WHERE rolname = ANY($1)",
                &[&named],
            )
            .await
            .map_err(sql("reading the roles"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        // The views this sink made, with the digest of their definition.
        let mark = format!("{MARK}sink={} ", self.name);
        let mut ours: BTreeMap<(String, String), String> = client
            .query(
                "SELECT n.nspname::text, c.relname::text, obj_description(c.oid, 'pg_class')
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.relkind = 'v' AND obj_description(c.oid, 'pg_class') LIKE $1 || '%'",
                &[&mark],
            )
            .await
            .map_err(sql("reading the masking views"))?
            .iter()
            .map(|r| ((r.get(0), r.get(1)), r.get::<_, String>(2)))
            .filter(|(_, comment)| comment.starts_with(&mark))
            .collect();

        let consumers: Vec<&String> = self
            .config
            .consumer_roles
            .iter()
            .filter(|r| existing_roles.contains(*r))
            .collect();
        let mut pass = Pass::default();
        for w in &wanted {
            let Some(cols) = columns.get(&w.base) else {
                warn!(sink = %self.name, tenant = %w.tenant, table = %w.base, "the base table does not exist downstream; no masking view");
                pass.failed += 1;
                continue;
            };
            let Some(policies) = snapshot.tenant(&w.tenant) else {
                continue;
            };
            let (query, digest) = view_query(policies, &w.asset, &w.base, cols, &existing_roles);
            // The grants are part of what is applied: a consumer role added
            // (or created downstream) later gets them at the next pass.
            let digest = grants_digest(&digest, &consumers);
            let comment = format!("{mark}digest={digest} version={}", snapshot.version);
            let existing = ours.remove(&(w.schema.clone(), w.name.clone()));
            if existing
                .as_deref()
                .is_some_and(|c| c.contains(&format!("digest={digest} ")))
            {
                pass.unchanged += 1;
                continue;
            }
            match self
                .write_view(client, w, &query, &comment, &consumers)
                .await
            {
                Ok(()) => pass.written += 1,
                Err(e) => {
                    pass.failed += 1;
                    metrics::counter!("lily_errors_total", "stage" => "postgres_masking", "kind" => "view")
                        .increment(1);
                    // Fail closed: the old view may leave a new tag raw, so
                    // its consumers are refused until it can be written.
                    let refused = self.refuse(client, w, &consumers).await;
                    warn!(sink = %self.name, tenant = %w.tenant, view = %format!("{}.{}", w.schema, w.name), error = %e,
                        consumers_refused = refused.is_ok(),
                        "the masking view could not be written; its consumers are refused until it is");
                }
            }
        }
        // Views of tables no longer governed here.
        for (schema, name) in ours.keys() {
            let drop = format!("DROP VIEW IF EXISTS {}.{}", ident(schema), ident(name));
            match client.batch_execute(&drop).await {
                Ok(()) => pass.dropped += 1,
                Err(e) => {
                    pass.failed += 1;
                    warn!(sink = %self.name, view = %format!("{schema}.{name}"), error = %e, "a masking view could not be dropped");
                }
            }
        }
        metrics::gauge!("lily_masking_views", "sink" => self.name.clone())
            .set((wanted.len() - pass.failed.min(wanted.len())) as f64);
        Ok((snapshot.version, pass))
    }

    /// Takes the consumers' SELECT on a view that could not be brought in step.
    async fn refuse(
        &self,
        client: &mut Client,
        w: &WantedView,
        consumers: &[&String],
    ) -> Result<(), tokio_postgres::Error> {
        if consumers.is_empty() {
            return Ok(());
        }
        let to: Vec<String> = consumers.iter().map(|r| ident(r)).collect();
        let sql = format!(
            "DO $$ BEGIN IF to_regclass('{view}') IS NOT NULL THEN REVOKE SELECT ON {view} FROM {to}; END IF; END $$",
            view = format!("{}.{}", ident(&w.schema), ident(&w.name)).replace('\'', "''"),
            to = to.join(", ")
        );
        client.batch_execute(&sql).await
    }

    /// Creates or replaces one view, its comment and its grants, in one
    /// transaction.
    async fn write_view(
        &self,
        client: &mut Client,
        w: &WantedView,
        query: &str,
        comment: &str,
        consumers: &[&String],
    ) -> Result<(), tokio_postgres::Error> {
        let view = format!("{}.{}", ident(&w.schema), ident(&w.name));
        let base = match w.base.split_once('.') {
            Some((s, t)) => format!("{}.{}", ident(s), ident(t)),
            None => ident(&w.base),
        };
        let mut tx = client.transaction().await?;
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {}",
            ident(&w.schema)
        ))
        .await?;
        let create = format!("CREATE OR REPLACE VIEW {view} WITH (security_barrier = true) AS {query}");
        let sp = {
            let sp = tx.savepoint("replace_view").await?;
            let replaced = sp.batch_execute(&create).await;
            match replaced {
                Ok(()) => {
                    sp.commit().await?;
                    true
                }
                Err(_) => {
                    // A column removed or retyped: CREATE OR REPLACE cannot
                    // do that; drop and create in the same transaction.
                    sp.rollback().await?;
                    false
                }
            }
        };
        if !sp {
            tx.batch_execute(&format!(
                "DROP VIEW IF EXISTS {view}; CREATE VIEW {view} WITH (security_barrier = true) AS {query}"
            ))
            .await?;
        }
        tx.batch_execute(&format!(
            "COMMENT ON VIEW {view} IS '{}'",
            comment.replace('\'', "''")
        ))
        .await?;
        if !consumers.is_empty() {
            let to: Vec<String> = consumers.iter().map(|r| ident(r)).collect();
            let to = to.join(", ");
            tx.batch_execute(&format!(
                "GRANT USAGE ON SCHEMA {} TO {to}; GRANT SELECT ON {view} TO {to}; REVOKE ALL ON {base} FROM {to}",
                ident(&w.schema)
            ))
            .await?;
        }
        tx.commit().await
    }
}
