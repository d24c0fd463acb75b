//! The settings of a `postgres_masking` sink.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lily_cdc::sink::FlushPolicy;
use lily_config::{ConfigError, at_least, invalid_str};
use serde::{Deserialize, Serialize};

use super::sink::MaskingViews;
use crate::registry::{
    BuildError, BuiltSink, Healthcheck, RunContext, SinkContext, SinkKind,
};

/// The settings of a `postgres_masking` sink.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresMaskingConfig {
    /// The `[sql.connections]` name of the downstream database: the
    /// governed tables registered on it get masking views there. The
    /// connection's role must own the tables (to create views over them,
    /// grant and revoke).
    ///
    /// Required.
    pub connection: String,
    /// The schema the views go to (created if missing); it must hold
    /// `{tenant}`, replaced by the tenant, so tenants sharing a database do
    /// not share views. A view has its governed table's name.
    ///
    /// Default `"lily_{tenant}"`.
    pub view_schema: String,
    /// Roles that read the views: granted `USAGE` on the schema and
    /// `SELECT` on the views, and their privileges on the base tables
    /// revoked.
    ///
    /// Default `[]`.
    pub consumer_roles: Vec<String>,
    /// Milliseconds between checks of every view even when no policy
    /// changed (a column added to a base table, a view changed by hand).
    ///
    /// Default `30000`.
    pub recheck_interval_ms: u64,
}

impl Default for PostgresMaskingConfig {
    fn default() -> Self {
        Self {
            connection: String::new(),
            view_schema: "lily_{tenant}".to_owned(),
            consumer_roles: Vec::new(),
            recheck_interval_ms: 30_000,
        }
    }
}

#[async_trait]
impl SinkKind for PostgresMaskingConfig {
    fn flush_policy(&self) -> FlushPolicy {
        // It follows the policy snapshot, not the change stream.
        FlushPolicy {
            max_rows: 1,
            max_wait: Duration::from_secs(1),
        }
    }

    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.connection.trim().is_empty() {
            return Err(invalid_str(
                &format!("{key}.connection"),
                &self.connection,
                "name the [sql.connections] entry of the downstream database",
            ));
        }
        if !self.view_schema.contains("{tenant}") {
            // Tenants sharing a database would overwrite each other's views.
            return Err(invalid_str(
                &format!("{key}.view_schema"),
                &self.view_schema,
                "name the schema the views go to with {tenant} in it (e.g. \"lily_{tenant}\"), so tenants do not share views",
            ));
        }
        at_least(
            &format!("{key}.recheck_interval_ms"),
            self.recheck_interval_ms,
            100,
        )
    }

    async fn build(&self, cx: &SinkContext<'_>) -> Result<Box<dyn BuiltSink>, BuildError> {
        let url = cx
            .config
            .sql
            .connections
            .get(&self.connection)
            .ok_or_else(|| {
                cx.error(format!(
                    "connection {:?} is not in [sql.connections]",
                    self.connection
                ))
            })?;
        let views = match cx.policies {
            Some(store) => Some(Arc::new(
                MaskingViews::new(cx.name, self.clone(), url, cx.config.sql.clone(), store.clone())
                    .map_err(|e| cx.error(e))?,
            )),
            // Without a policy snapshot (replaying dead letters) there is
            // nothing to enforce.
            None => None,
        };
        Ok(Box::new(Built { views }))
    }
}

struct Built {
    views: Option<Arc<MaskingViews>>,
}

#[async_trait]
impl BuiltSink for Built {
    fn start(&self, shutdown: tokio::sync::watch::Receiver<bool>) {
        if let Some(v) = &self.views {
            tokio::spawn(v.clone().run(shutdown));
        }
    }

    async fn sink(
        &self,
        _run: &RunContext<'_>,
    ) -> Result<Option<(Box<dyn lily_cdc::sink::Sink>, Healthcheck)>, BuildError> {
        // The views follow the policy snapshot beside the pipeline; the
        // change stream has nothing for this sink.
        Ok(None)
    }
}
