//! Metastore connections for inbound writes. Every tenant write runs in a
//! transaction that has switched to the tenant role with `lily.tenant_id`
//! set, so row-level security holds even if a query forgot its tenant.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Transaction};

use crate::error::{InboundError, Result};

/// A pool of metastore connections.
#[derive(Clone)]
pub struct Metastore {
    pool: Pool,
    tenant_role: String,
}

impl Metastore {
    /// A pool of at most `size` connections to `url`; `tenant_role` is the
    /// role tenant transactions switch to. A request waits at most `wait`
    /// for a connection (then 503 `busy`).
    pub fn new(url: &str, size: usize, tenant_role: &str, wait: Duration) -> Result<Self> {
        let pg = lily_cdc::wire::PgConnect::parse(url)
            .map_err(|e| InboundError::Internal(format!("bad postgres.url: {e}")))?;
        let manager = Manager::from_config(
            pg.config,
            pg.tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(size)
            .wait_timeout(Some(wait))
            .create_timeout(Some(wait))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| InboundError::Internal(format!("building the connection pool: {e}")))?;
        Ok(Self {
            pool,
            tenant_role: tenant_role.to_owned(),
        })
    }

    /// The pool itself, for components that share it (the dead-letter store).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// A connection of the pool (not tenant-scoped: Lily's own bookkeeping).
    pub async fn connection(&self) -> Result<Object> {
        Ok(self.pool.get().await?)
    }

    /// Starts a transaction scoped to `tenant` on `conn`. Fails with
    /// [`InboundError::UnknownTenant`] if the tenant does not exist.
    pub async fn tenant_transaction<'a>(
        &self,
        conn: &'a mut Object,
        tenant: &str,
    ) -> Result<Transaction<'a>> {
        let tx = conn.transaction().await?;
        let scope = tx
            .prepare_cached("SELECT set_config('lily.tenant_id', $1, true)")
            .await?;
        let known = tx
            .prepare_cached("SELECT 1 FROM metastore.tenants WHERE tenant_id = $1")
            .await?;
        // The role name was validated as an identifier by the config.
        let role = format!("SET LOCAL ROLE \"{}\"", self.tenant_role);
        // Sent together and answered in order: one round trip, not three.
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&tenant];
        let (_, _, found) = tokio::try_join!(
            biased;
            tx.execute(&scope, &params),
            tx.batch_execute(&role),
            tx.query_opt(&known, &params),
        )?;
        let exists = found.is_some();
        if !exists {
            return Err(InboundError::UnknownTenant(tenant.to_owned()));
        }
        Ok(tx)
    }
}

impl Metastore {
    /// Whether `tenant` exists.
    pub async fn tenant_exists(&self, tenant: &str) -> Result<bool> {
        let conn = self.connection().await?;
        Ok(conn
            .query_opt(
                "SELECT 1 FROM metastore.tenants WHERE tenant_id = $1",
                &[&tenant],
            )
            .await?
            .is_some())
    }
}
