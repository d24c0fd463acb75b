//! `[sinks.<name>] type = "console"`: no settings of its own.

use std::time::Duration;

use async_trait::async_trait;
use lily_cdc::sink::{FlushPolicy, Sink};
use serde::{Deserialize, Serialize};

use super::ConsoleSink;
use crate::registry::{
    BuildError, BuiltSink, Healthcheck, RunContext, SinkContext, SinkKind, no_healthcheck,
};

/// The settings of a `console` sink: none.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {}

#[async_trait]
impl SinkKind for ConsoleConfig {
    fn flush_policy(&self) -> FlushPolicy {
        // A line as soon as the change arrives.
        FlushPolicy {
            max_rows: 1,
            max_wait: Duration::from_millis(1),
        }
    }

    async fn build(&self, cx: &SinkContext<'_>) -> Result<Box<dyn BuiltSink>, BuildError> {
        Ok(Box::new(Built {
            name: cx.name.to_owned(),
        }))
    }
}

struct Built {
    name: String,
}

#[async_trait]
impl BuiltSink for Built {
    async fn sink(
        &self,
        _run: &RunContext<'_>,
    ) -> Result<Option<(Box<dyn Sink>, Healthcheck)>, BuildError> {
        Ok(Some((Box::new(ConsoleSink::new(&self.name)), no_healthcheck())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_no_settings() {
        assert!(toml::from_str::<ConsoleConfig>("").is_ok());
        let e = toml::from_str::<ConsoleConfig>("colour = true").unwrap_err();
        assert!(e.to_string().contains("unknown field `colour`"), "{e}");
    }
}
