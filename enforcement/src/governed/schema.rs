//! A session's `public` schema: the tenant's governed tables as the policy
//! snapshot lists them now, so a table registered or dropped reaches an
//! open session at its next statement, whatever protocol it speaks.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::common::DataFusionError;
use tracing::warn;

use super::{MaskedTable, Sources};
use crate::policy::PolicyStore;

/// The governed tables of one tenant, each behind its masks.
#[derive(Debug)]
pub struct GovernedSchema {
    tenant: String,
    policies: Arc<PolicyStore>,
    sources: Arc<Sources>,
    policy_wait: Duration,
}

impl GovernedSchema {
    /// The schema of `tenant`.
    pub fn new(
        tenant: &str,
        policies: Arc<PolicyStore>,
        sources: Arc<Sources>,
        policy_wait: Duration,
    ) -> Self {
        Self {
            tenant: tenant.to_owned(),
            policies,
            sources,
            policy_wait,
        }
    }
}

#[async_trait]
impl SchemaProvider for GovernedSchema {
    fn table_names(&self) -> Vec<String> {
        self.policies
            .snapshot()
            .tenant(&self.tenant)
            .map(|t| t.tables.keys().cloned().collect())
            .unwrap_or_default()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>, DataFusionError> {
        let snapshot = self
            .policies
            .current(self.policy_wait)
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let Some(table) = snapshot
            .tenant(&self.tenant)
            .and_then(|t| t.tables.get(name))
        else {
            return Ok(None);
        };
        match self.sources.open(&self.tenant, table).await {
            Ok(inner) => Ok(Some(Arc::new(MaskedTable::new(
                &self.tenant,
                table.clone(),
                inner,
                self.policies.clone(),
                self.policy_wait,
            )))),
            Err(e) => {
                metrics::counter!("lily_errors_total", "stage" => "sql", "kind" => "open_table")
                    .increment(1);
                warn!(tenant = %self.tenant, table = name, error = %e, "governed table could not be opened");
                Err(DataFusionError::External(Box::new(e)))
            }
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        self.policies
            .snapshot()
            .tenant(&self.tenant)
            .is_some_and(|t| t.tables.contains_key(name))
    }
}
