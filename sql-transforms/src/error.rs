//! What can go wrong in a transform, and where.

use std::path::PathBuf;

use datafusion::error::DataFusionError;

/// A transform error.
#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    /// A file does not parse, plan or produce what it must; `line` and
    /// `column` point into the file (1-based).
    #[error("{}:{line}:{column}: {message}", file.display())]
    Invalid {
        /// The `.sql` file.
        file: PathBuf,
        /// Line of the problem.
        line: u64,
        /// Column of the problem.
        column: u64,
        /// What is wrong.
        message: String,
    },
    /// A file or folder could not be read.
    #[error("reading {}: {source}", path.display())]
    Io {
        /// What was read.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// No loaded transform has this name.
    #[error("no transform named {0:?} (a file name under the transforms folder, without .sql)")]
    Unknown(String),
    /// Running a transform on a batch failed.
    #[error("transform {name} failed on a batch: {source}")]
    Run {
        /// The transform.
        name: String,
        /// DataFusion's error.
        source: DataFusionError,
    },
    /// A statement against the metastore failed.
    #[error("{context}: {message}")]
    Sql {
        /// What was being done.
        context: String,
        /// The server's message.
        message: String,
        /// The SQLSTATE, when the server sent one.
        code: Option<String>,
    },
    /// An inbound payload does not decode into the declared columns.
    #[error("payload: {0}")]
    Payload(String),
    /// A value in the change stream is not what the catalog state expects.
    #[error("catalog state: {0}")]
    State(String),
}

impl TransformError {
    /// Wraps a PostgreSQL error with what was being done.
    pub fn sql(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Self {
        let context = context.into();
        move |e| {
            let (message, code) = match e.as_db_error() {
                Some(db) => (db.message().to_owned(), Some(db.code().code().to_owned())),
                None => (e.to_string(), None),
            };
            TransformError::Sql {
                context,
                message,
                code,
            }
        }
    }
}

/// Result of the transform engine.
pub type Result<T, E = TransformError> = std::result::Result<T, E>;
