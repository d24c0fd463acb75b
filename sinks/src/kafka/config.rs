//! `[sinks.<name>] type = "kafka"`: every change as a keyed record on
//! `<topic_prefix>.<tenant>.<stream>`, produced idempotently with
//! `acks=all`; a batch is acknowledged only once the brokers confirmed it.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use lily_cdc::sink::dead_letter::DeadLetter;
use lily_cdc::sink::{DeadLetters, FlushPolicy, Sink};
use lily_config::{ConfigError, at_least, invalid_str};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::sink::{KafkaSink, healthcheck};
use crate::registry::{
    BuildError, BuiltSink, Healthcheck, ReplayError, RunContext, SinkContext, SinkKind,
};

/// The settings of a `kafka` sink.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSinkConfig {
    /// Bootstrap servers, e.g. `"kafka-1:9092,kafka-2:9092"`.
    ///
    /// Required.
    pub brokers: String,
    /// First part of every topic name.
    ///
    /// Default `"lily"`.
    pub topic_prefix: String,
    /// Record values: `"json"`, or `"avro"` (single-object encoding, the
    /// schemas published on `<topic_prefix>._schemas`).
    ///
    /// Default `"json"`.
    pub format: Format,
    /// Whether Lily creates a topic before its first record (with the
    /// partitions and replication factor below).
    ///
    /// Default `true`.
    pub create_topics: bool,
    /// Partitions of the topics Lily creates.
    ///
    /// Default `6`.
    pub partitions: i32,
    /// Replication factor of the topics Lily creates.
    ///
    /// Default `1`.
    pub replication_factor: i32,
    /// How long a flush waits for the brokers' confirmations before it is
    /// retried, in milliseconds.
    ///
    /// Default `30000`.
    pub flush_timeout_ms: u64,
    /// The sink flushes at least this often, in milliseconds.
    ///
    /// Default `100`.
    pub flush_interval_ms: u64,
    /// Extra librdkafka producer settings passed as they are
    /// (security.protocol, sasl.*, compression.type, ...).
    ///
    /// Default: none.
    pub options: BTreeMap<String, String>,
}

impl Default for KafkaSinkConfig {
    fn default() -> Self {
        Self {
            brokers: String::new(),
            topic_prefix: "lily".to_owned(),
            format: Format::Json,
            create_topics: true,
            partitions: 6,
            replication_factor: 1,
            flush_timeout_ms: 30_000,
            flush_interval_ms: 100,
            options: BTreeMap::new(),
        }
    }
}

/// How record values are encoded.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// JSON envelopes (`"json"`).
    #[default]
    Json,
    /// Avro single-object encoding (`"avro"`).
    Avro,
}

#[async_trait]
impl SinkKind for KafkaSinkConfig {
    fn flush_policy(&self) -> FlushPolicy {
        FlushPolicy {
            max_rows: 50_000,
            max_wait: Duration::from_millis(self.flush_interval_ms),
        }
    }

    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.brokers.trim().is_empty() {
            return Err(invalid_str(
                &format!("{key}.brokers"),
                &self.brokers,
                "give the bootstrap servers, such as \"kafka-1:9092,kafka-2:9092\"",
            ));
        }
        if self.topic_prefix.is_empty()
            || !self
                .topic_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(invalid_str(
                &format!("{key}.topic_prefix"),
                &self.topic_prefix,
                "topic names take letters, digits, '.', '_' and '-'",
            ));
        }
        at_least(
            &format!("{key}.partitions"),
            self.partitions.max(0) as u64,
            1,
        )?;
        at_least(
            &format!("{key}.replication_factor"),
            self.replication_factor.max(0) as u64,
            1,
        )?;
        at_least(
            &format!("{key}.flush_interval_ms"),
            self.flush_interval_ms,
            1,
        )
    }

    async fn build(&self, cx: &SinkContext<'_>) -> Result<Box<dyn BuiltSink>, BuildError> {
        Ok(Box::new(Built {
            name: cx.name.to_owned(),
            config: self.clone(),
            dead_letters: cx.dead_letters.clone(),
            replayer: Mutex::new(None),
        }))
    }
}

struct Built {
    name: String,
    config: KafkaSinkConfig,
    dead_letters: DeadLetters,
    /// The producer of replays, made on the first one.
    replayer: Mutex<Option<KafkaSink>>,
}

#[async_trait]
impl BuiltSink for Built {
    async fn sink(
        &self,
        _run: &RunContext<'_>,
    ) -> Result<Option<(Box<dyn Sink>, Healthcheck)>, BuildError> {
        let sink = KafkaSink::new(&self.name, &self.config, self.dead_letters.clone())
            .map_err(|e| BuildError::new(&self.name, e))?;
        let healthcheck = Box::pin(healthcheck(self.name.clone(), sink.producer()));
        Ok(Some((Box::new(sink), healthcheck)))
    }

    async fn replay(&self, letter: &DeadLetter) -> Result<(), ReplayError> {
        let mut replayer = self.replayer.lock().await;
        if replayer.is_none() {
            let sink = KafkaSink::new(&self.name, &self.config, self.dead_letters.clone())
                .map_err(|e| ReplayError::Failed(e.to_string()))?;
            *replayer = Some(sink);
        }
        match replayer.as_ref() {
            Some(sink) => sink
                .replay(letter)
                .await
                .map_err(|e| ReplayError::Failed(e.to_string())),
            None => Err(ReplayError::Failed("no producer".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_defaults_and_refuses_unknown_keys() {
        let c: KafkaSinkConfig = toml::from_str(
            "brokers = \"k:9092\"\nformat = \"avro\"\n[options]\n\"linger.ms\" = \"2\"",
        )
        .unwrap();
        assert_eq!(c.format, Format::Avro);
        assert_eq!(c.partitions, 6);
        assert_eq!(c.options["linger.ms"], "2");
        assert!(c.validate("sinks.events").is_ok());
        let e = toml::from_str::<KafkaSinkConfig>("broker = \"k\"").unwrap_err();
        assert!(e.to_string().contains("unknown field `broker`"), "{e}");
        let e = toml::from_str::<KafkaSinkConfig>("format = \"xml\"").unwrap_err();
        assert!(e.to_string().contains("xml"), "{e}");
        let e = KafkaSinkConfig::default()
            .validate("sinks.events")
            .unwrap_err();
        assert!(e.to_string().contains("sinks.events.brokers"), "{e}");
    }
}
