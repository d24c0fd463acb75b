//! What can go wrong enforcing policies.

/// An error of the enforcement crate.
#[derive(Debug, thiserror::Error)]
pub enum EnforcementError {
    /// A query of the metastore or a governed database failed.
    #[error("{context}: {source}")]
    Sql {
        /// What was being done.
        context: &'static str,
        /// The error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A stored policy cannot be used.
    #[error("masking policy {name:?} of tenant {tenant:?}: {message}")]
    Policy {
        /// The tenant.
        tenant: String,
        /// The policy.
        name: String,
        /// Why.
        message: String,
    },
    /// A change to policies or tags has not been compiled in time.
    #[error(
        "the masking policies are being updated and could not be compiled in time; retry the statement"
    )]
    PoliciesStale,
    /// A governed table cannot be opened.
    #[error("governed table {table:?}: {message}")]
    Table {
        /// The table.
        table: String,
        /// Why.
        message: String,
    },
    /// A tenant holds all its connections (`sql.tenant_connections`).
    #[error("sorry, too many clients already for tenant {0:?} (sql.tenant_connections)")]
    TooManyConnections(String),
    /// Bad configuration.
    #[error("{0}")]
    Config(String),
    /// DataFusion refused a plan.
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
}

/// Result of the enforcement crate.
pub type Result<T, E = EnforcementError> = std::result::Result<T, E>;
