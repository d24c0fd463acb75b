//! Errors of the CDC reader.

use crate::lsn::Lsn;

/// An error reported by the PostgreSQL server, with its SQLSTATE.
#[derive(Debug, Clone, thiserror::Error)]
#[error("PostgreSQL {severity} {code}: {message}{}{}", detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default(), hint.as_deref().map(|h| format!(" hint: {h}")).unwrap_or_default())]
pub struct ServerError {
    /// ERROR, FATAL, PANIC.
    pub severity: String,
    /// SQLSTATE, e.g. 42501 for insufficient privilege.
    pub code: String,
    /// The primary message.
    pub message: String,
    /// The server's detail line, when it sent one.
    pub detail: Option<String>,
    /// The server's hint, when it sent one.
    pub hint: Option<String>,
}

/// Everything that can stop the change reader.
#[derive(Debug, thiserror::Error)]
pub enum CdcError {
    /// The socket failed.
    #[error("replication connection: {context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The server refused something.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The server invalidated the slot (it held more WAL than
    /// `max_slot_wal_keep_size`): changes since its position are gone
    /// from it, so streaming on would lose them silently.
    #[error(
        "replication slot {slot} was invalidated by the server (it retained more WAL than max_slot_wal_keep_size): \
         the changes since its position are gone from it. To recover with a new snapshot, run \
         SELECT pg_drop_replication_slot('{slot}'); then `lily setup` and `lily run` \
         (every sink receives the catalog again; they drop what they already hold by position)"
    )]
    SlotInvalidated {
        /// The slot.
        slot: String,
    },
    /// The server sent something the protocol does not allow here.
    #[error("replication protocol: {0}")]
    Protocol(String),
    /// Authentication could not be completed.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The connection string asks for something the replication client does not do.
    #[error("unsupported connection setting: {0}")]
    Unsupported(String),
    /// A pgoutput message could not be decoded.
    #[error("pgoutput message at {lsn}: {message}")]
    Decode {
        /// WAL position of the message.
        lsn: Lsn,
        /// What was wrong.
        message: String,
    },
    /// A row value could not be decoded into its Arrow column.
    #[error("column {table}.{column} (type oid {type_oid}): {message}")]
    Value {
        /// Qualified table name.
        table: String,
        /// Column name.
        column: String,
        /// PostgreSQL type oid.
        type_oid: u32,
        /// What was wrong.
        message: String,
    },
    /// Building an Arrow batch failed.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// A regular (non-replication) SQL connection failed.
    #[error("{context}: {source}")]
    Sql {
        /// What we were doing.
        context: String,
        /// The driver error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The pipeline downstream of the reader has gone away.
    #[error("the pipeline stopped accepting change batches")]
    Closed,
}

impl CdcError {
    /// Wraps an I/O error with what we were doing.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> CdcError {
        let context = context.into();
        move |source| CdcError::Io { context, source }
    }

    /// Wraps a tokio-postgres error with what we were doing.
    pub fn sql(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> CdcError {
        let context = context.into();
        move |source| CdcError::Sql { context, source }
    }

    /// The SQLSTATE when the server refused something.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            CdcError::Server(e) => Some(&e.code),
            CdcError::Sql { source, .. } => source.code().map(|c| c.code()),
            _ => None,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = CdcError> = std::result::Result<T, E>;
