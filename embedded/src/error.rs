//! The one error type of the crate.

use std::path::PathBuf;

/// Everything that can go wrong while setting up, running or talking to the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// `initdb`, `pg_ctl` or `postgres` is missing from the binaries folder.
    #[error(
        "PostgreSQL 15 binaries not found in {}: install the Debian package postgresql-15 or set LILY_PG_BIN",
        dir.display()
    )]
    BinariesNotFound {
        /// The folder that was searched.
        dir: PathBuf,
    },

    /// Running as root, but there is no `postgres` system user to run the server as.
    #[error(
        "running as root, but there is no `postgres` system user to run PostgreSQL as (PostgreSQL refuses to run as root)"
    )]
    NoPostgresUser,

    /// The `postgres` user cannot reach or write the cluster folder.
    #[error(
        "the postgres user cannot reach or write {}: every parent folder must be traversable by it (o+x); put the cluster under /tmp or /var/lib for instance",
        dir.display()
    )]
    NotAccessible {
        /// The cluster's base folder.
        dir: PathBuf,
    },

    /// The cluster folder's path cannot be used by PostgreSQL.
    #[error("cannot use {} as a cluster folder: {reason}", dir.display())]
    BadPath {
        /// The cluster's base folder.
        dir: PathBuf,
        /// Why not.
        reason: String,
    },

    /// A setting name or value that cannot go into a postgresql.conf file.
    #[error("invalid PostgreSQL setting `{name}`: {reason}")]
    InvalidSetting {
        /// The setting's name.
        name: String,
        /// Why it was refused.
        reason: String,
    },

    /// An external command exited with a failure.
    #[error("`{cmd}` failed ({status}):\n{output}")]
    Command {
        /// The command line, for the reader.
        cmd: String,
        /// How it exited.
        status: String,
        /// Its stdout and stderr, plus the end of `postgres.log` for start failures.
        output: String,
    },

    /// A file system or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },

    /// Could not connect to the server.
    #[error("could not connect to the embedded PostgreSQL: {0}")]
    Connect(#[source] tokio_postgres::Error),

    /// A statement sent by this crate failed.
    #[error("{context}: {source}")]
    Query {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: tokio_postgres::Error,
    },

    /// The background task running the blocking work panicked or was cancelled.
    #[error("the task running PostgreSQL commands failed: {0}")]
    Task(String),
}

impl ClusterError {
    /// Builds a closure turning an `io::Error` into [`ClusterError::Io`] with some context.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| ClusterError::Io { context, source }
    }
}
