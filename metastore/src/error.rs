//! Errors of `lily setup`.

use std::fmt;

/// One thing wrong with the server, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What is wrong.
    pub what: String,
    /// What to change.
    pub fix: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\n    fix: {}", self.what, self.fix)
    }
}

/// Why setup stopped.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The server cannot be reached.
    #[error(
        "cannot connect to PostgreSQL at {target}: {source}\n    fix: start the server, or point postgres.url (LILY_POSTGRES__URL) at it"
    )]
    Connect {
        /// Host and port tried.
        target: String,
        /// The driver error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The server is not ready for logical replication; nothing was changed.
    #[error("PostgreSQL is not ready for Lily; nothing was changed:\n  - {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  - "))]
    Preflight(Vec<Problem>),
    /// Row-level security would not hold for the tenant role.
    #[error("row-level security would not hold for tenant sessions:\n  - {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  - "))]
    TenantRole(Vec<Problem>),
    /// A migration that was applied earlier has been edited since.
    #[error(
        "migration {version} ({name}) was changed after it was applied; migrations are append-only: add a new one instead"
    )]
    MigrationChanged {
        /// Its version.
        version: i32,
        /// Its name.
        name: String,
    },
    /// A statement failed.
    #[error("{context}: {source}")]
    Sql {
        /// What we were doing.
        context: String,
        /// The driver error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// Creating the replication slot failed.
    #[error("replication slot: {0}")]
    Slot(#[from] lily_cdc::CdcError),
}

impl SetupError {
    /// Wraps a driver error with what we were doing.
    pub fn sql(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> SetupError {
        let context = context.into();
        move |source| SetupError::Sql { context, source }
    }
}
