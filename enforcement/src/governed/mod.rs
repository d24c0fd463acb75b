//! Governed data: the tables a tenant registers for the SQL endpoint,
//! opened from their sources (PostgreSQL, Delta, Parquet) and served
//! behind their masks.

mod masked;
mod postgres;
mod schema;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::catalog::TableProvider;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::prelude::{SessionConfig, SessionContext};
use lily_cdc::wire::PgConnect;
use tokio::sync::Mutex;

pub use masked::MaskedTable;
pub use postgres::PostgresTable;
pub use schema::GovernedSchema;

use crate::error::{EnforcementError, Result};
use crate::policy::{GovernedTable, Source};

/// Opens governed tables' sources, once per registration: a table is
/// opened again only when its registration changes.
pub struct Sources {
    config: lily_config::SqlConfig,
    connections: BTreeMap<String, Arc<PgConnect>>,
    runtime: Arc<RuntimeEnv>,
    opened: Mutex<HashMap<(String, GovernedTable), Opened>>,
}

/// A source's table and when it was opened.
type Opened = (Arc<dyn TableProvider>, Instant);

/// How long a Delta or Parquet table's listing of files is used before it
/// is read again (new commits and files show up within this).
const FILES_TTL: Duration = Duration::from_secs(5);

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("connections", &self.connections.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Sources {
    /// The sources of `[sql]`: its connections, what each tenant may use
    /// (`tenant_sources`), and the memory all statements share.
    pub fn new(config: &lily_config::SqlConfig) -> Result<Self> {
        let mut parsed = BTreeMap::new();
        for (name, url) in &config.connections {
            let connect = PgConnect::parse(url)
                .map_err(|e| EnforcementError::Config(format!("sql.connections.{name}: {e}")))?;
            parsed.insert(name.clone(), Arc::new(connect));
        }
        Ok(Self {
            config: config.clone(),
            connections: parsed,
            runtime: RuntimeEnvBuilder::new()
                .with_memory_limit(config.memory_limit_mb * 1024 * 1024, 1.0)
                .build_arc()?,
            opened: Mutex::new(HashMap::new()),
        })
    }

    /// The runtime every session shares: the object stores Delta tables
    /// were opened with are registered there.
    pub fn runtime(&self) -> Arc<RuntimeEnv> {
        self.runtime.clone()
    }

    /// The table of `table`'s source, opened now or before.
    pub async fn open(
        &self,
        tenant: &str,
        table: &GovernedTable,
    ) -> Result<Arc<dyn TableProvider>> {
        let key = (tenant.to_owned(), table.clone());
        if let Some((p, at)) = self.opened.lock().await.get(&key) {
            // A PostgreSQL table's rows are read live; its columns are fixed
            // at registration. Files are listed again now and then.
            if matches!(table.source, Source::Postgres { .. }) || at.elapsed() < FILES_TTL {
                return Ok(p.clone());
            }
        }
        // Opened without the lock: a slow source of one tenant never holds
        // up another's lookups.
        let err = |message: String| EnforcementError::Table {
            table: table.table_name.clone(),
            message,
        };
        // Checked again here: the configuration may have changed since the
        // registration was accepted.
        let (connection, location) = match &table.source {
            Source::Postgres { connection, table } => (Some(connection.as_str()), table.as_str()),
            Source::Delta(l) | Source::Parquet(l) => (None, l.as_str()),
        };
        self.config
            .source_allowed(tenant, connection, location)
            .map_err(err)?;
        let provider: Arc<dyn TableProvider> = match &table.source {
            Source::Postgres {
                connection,
                table: source,
            } => {
                let connect = self.connections.get(connection).ok_or_else(|| {
                    err(format!(
                        "its connection {connection:?} is not in [sql.connections] ({})",
                        self.connections
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?;
                Arc::new(PostgresTable::open(connect.clone(), source).await?)
            }
            Source::Delta(location) => {
                let url = url::Url::parse(location).map_err(|e| err(format!("{location}: {e}")))?;
                let delta = deltalake::open_table(url)
                    .await
                    .map_err(|e| err(format!("opening the Delta table: {e}")))?;
                let ctx =
                    SessionContext::new_with_config_rt(SessionConfig::new(), self.runtime.clone());
                delta
                    .update_datafusion_session(&ctx.state())
                    .map_err(|e| err(format!("its object store: {e}")))?;
                delta
                    .table_provider()
                    .await
                    .map_err(|e| err(format!("reading the Delta table: {e}")))?
            }
            Source::Parquet(location) => {
                let url = ListingTableUrl::parse(location)
                    .map_err(|e| err(format!("{location}: {e}")))?;
                let ctx =
                    SessionContext::new_with_config_rt(SessionConfig::new(), self.runtime.clone());
                let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
                    .with_file_extension(".parquet");
                let schema = options
                    .infer_schema(&ctx.state(), &url)
                    .await
                    .map_err(|e| err(format!("reading the Parquet schema: {e}")))?;
                let config = ListingTableConfig::new(url)
                    .with_listing_options(options)
                    .with_schema(schema);
                Arc::new(ListingTable::try_new(config)?)
            }
        };
        // Registrations that changed leave their old entries behind; drop them.
        let mut opened = self.opened.lock().await;
        opened.retain(|(t, g), _| !(t == tenant && g.table_name == table.table_name));
        opened.insert(key, (provider.clone(), Instant::now()));
        Ok(provider)
    }
}
