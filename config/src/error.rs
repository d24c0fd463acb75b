//! The error returned when the configuration cannot be loaded.

use std::path::{Path, PathBuf};

/// Why the configuration could not be loaded. Every variant's message names
/// the offending file, variable or setting and says what is allowed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error(
        "cannot read the configuration file {}: {source}; check that the path is right and the file is readable",
        path.display()
    )]
    Io {
        /// The file that was asked for.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The configuration is not valid TOML, has an unknown key or a value of
    /// the wrong type.
    #[error("{}", parse_message(path.as_deref(), message))]
    Parse {
        /// The file the text came from; `None` for text given directly.
        path: Option<PathBuf>,
        /// The TOML error, with line and column and the expected keys or type.
        message: String,
    },
    /// An environment override (`LILY_<SECTION>__<KEY>`) is wrong.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable, e.g. `LILY_REPLICATION__BATCH_MAX_ROWS`.
        var: String,
        /// What is wrong with it.
        message: String,
    },
    /// A table of settings (a sink's) cannot be read as a whole.
    #[error("[{key}]: {message}")]
    Table {
        /// The table, e.g. `sinks.search`.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A setting has a value outside what is allowed.
    #[error("invalid setting {key} = {value}: {message}")]
    Invalid {
        /// The dotted key, e.g. `replication.slot`.
        key: String,
        /// The offending value as TOML, e.g. `"My-Slot"` or `0`.
        value: String,
        /// What is allowed.
        message: String,
    },
}

fn parse_message(path: Option<&Path>, message: &str) -> String {
    let message = message.trim_end();
    match path {
        Some(path) => format!(
            "the configuration file {} is not valid: {message}",
            path.display()
        ),
        None => format!("the configuration is not valid: {message}"),
    }
}
