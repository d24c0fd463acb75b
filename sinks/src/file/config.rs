//! `[sinks.<name>] type = "file"`: where the files go and how often they
//! are made durable.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use lily_cdc::sink::{FlushPolicy, Sink};
use lily_config::{ConfigError, at_least, invalid_str};
use serde::{Deserialize, Serialize};

use super::FileSink;
use crate::registry::{
    BuildError, BuiltSink, Healthcheck, RunContext, SinkContext, SinkKind, no_healthcheck,
};

/// The settings of a `file` sink.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    /// The folder the files go to (created if needed); one folder per
    /// tenant below it.
    ///
    /// Required.
    pub path: String,
    /// The sink makes what it wrote durable (fsync) at least this often,
    /// in milliseconds.
    ///
    /// Default `1000`.
    pub flush_interval_ms: u64,
    /// ... or as soon as it holds this many changes.
    ///
    /// Default `10000`.
    pub flush_max_rows: usize,
}

impl Default for FileConfig {
    fn default() -> Self {
        Self {
            path: String::new(),
            flush_interval_ms: 1000,
            flush_max_rows: 10_000,
        }
    }
}

#[async_trait]
impl SinkKind for FileConfig {
    fn flush_policy(&self) -> FlushPolicy {
        FlushPolicy {
            max_rows: self.flush_max_rows,
            max_wait: Duration::from_millis(self.flush_interval_ms),
        }
    }

    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.path.trim().is_empty() {
            return Err(invalid_str(
                &format!("{key}.path"),
                &self.path,
                "name the folder the files go to",
            ));
        }
        at_least(
            &format!("{key}.flush_interval_ms"),
            self.flush_interval_ms,
            1,
        )?;
        at_least(
            &format!("{key}.flush_max_rows"),
            self.flush_max_rows as u64,
            1,
        )
    }

    async fn build(&self, cx: &SinkContext<'_>) -> Result<Box<dyn BuiltSink>, BuildError> {
        Ok(Box::new(Built {
            name: cx.name.to_owned(),
            path: PathBuf::from(&self.path),
        }))
    }
}

struct Built {
    name: String,
    path: PathBuf,
}

#[async_trait]
impl BuiltSink for Built {
    async fn sink(
        &self,
        _run: &RunContext<'_>,
    ) -> Result<Option<(Box<dyn Sink>, Healthcheck)>, BuildError> {
        let sink = FileSink::open(&self.name, &self.path)
            .map_err(|e| BuildError::new(&self.name, e))?;
        Ok(Some((Box::new(sink), no_healthcheck())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_defaults_and_refuses_unknown_keys() {
        let c: FileConfig = toml::from_str("path = \"/var/lib/lily/changes\"").unwrap();
        assert_eq!(c.flush_interval_ms, 1000);
        assert!(c.validate("sinks.debug").is_ok());
        let e = toml::from_str::<FileConfig>("path = \"x\"\ncompress = true").unwrap_err();
        assert!(e.to_string().contains("unknown field `compress`"), "{e}");
        let e = FileConfig::default().validate("sinks.debug").unwrap_err();
        assert!(e.to_string().contains("sinks.debug.path"), "{e}");
    }
}
