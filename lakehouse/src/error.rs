//! Errors of the lake.

/// What went wrong in the Delta Lake store.
#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    /// The lake root is neither a folder nor an object-store URL.
    #[error("lake root {root:?}: {message}")]
    Location {
        /// The configured root.
        root: String,
        /// What is wrong with it.
        message: String,
    },
    /// A Delta operation failed.
    #[error("Delta table {table}: {source}")]
    Delta {
        /// Table URL.
        table: String,
        /// The delta-rs error.
        #[source]
        source: deltalake::DeltaTableError,
    },
    /// Turning changes into audit rows failed.
    #[error("building audit rows: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// A query of a lake table failed.
    #[error("querying the lake: {0}")]
    Query(String),
}
