//! `[sinks.<name>] type = "elasticsearch"`: search documents in
//! Elasticsearch (or OpenSearch), one index per tenant behind an alias; the
//! search API queries the same cluster.

use std::time::Duration;

use async_trait::async_trait;
use lily_cdc::sink::dead_letter::DeadLetter;
use lily_cdc::sink::{FlushPolicy, Sink};
use lily_config::{ConfigError, at_least, invalid_str, is_index_part};
use serde::{Deserialize, Serialize};

use super::SearchCluster;
use crate::registry::{
    BuildError, BuiltSink, Healthcheck, ReplayError, RunContext, SinkContext, SinkKind,
};

/// The settings of an `elasticsearch` sink.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ElasticsearchConfig {
    /// URLs of the cluster's nodes, e.g. `["https://es-1:9200"]`. From the
    /// environment, comma-separated.
    ///
    /// Required.
    pub urls: Vec<String>,
    /// Basic-auth user; empty: none.
    ///
    /// Default `""`.
    pub username: String,
    /// Basic-auth password (`"${ES_PASSWORD}"` reads it from the environment).
    ///
    /// Default `""`.
    pub password: String,
    /// An API key (the base64 `encoded` value Elasticsearch returns); used
    /// instead of the user when set.
    ///
    /// Default `""`.
    pub api_key: String,
    /// First part of every alias and index name: `<prefix>-<tenant>-<index>`.
    /// Lower case letters, digits, `-` and `_`.
    ///
    /// Default `"lily"`.
    pub index_prefix: String,
    /// Last part of every alias: what the documents are.
    ///
    /// Default `"assets"`.
    pub index: String,
    /// A JSON file with the settings and mappings of new indices; empty:
    /// the built-in asset mapping. Its fingerprint names the index behind
    /// each alias.
    ///
    /// Default `""`.
    pub mapping: String,
    /// `refresh` of each bulk request: `""` (the index's own refresh
    /// interval), `"wait_for"` or `"true"`.
    ///
    /// Default `""`.
    pub refresh: Refresh,
    /// The sink sends what it holds at least this often, in milliseconds.
    ///
    /// Default `100`.
    pub flush_interval_ms: u64,
    /// ... or as soon as it holds this many documents.
    ///
    /// Default `5000`.
    pub flush_max_docs: usize,
    /// Largest bulk request, in bytes; larger flushes are split.
    ///
    /// Default `10485760` (10 MiB).
    pub bulk_max_bytes: usize,
    /// Timeout of each request, in milliseconds.
    ///
    /// Default `30000`.
    pub timeout_ms: u64,
}

impl Default for ElasticsearchConfig {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            username: String::new(),
            password: String::new(),
            api_key: String::new(),
            index_prefix: "lily".to_owned(),
            index: "assets".to_owned(),
            mapping: String::new(),
            refresh: Refresh::IndexInterval,
            flush_interval_ms: 100,
            flush_max_docs: 5000,
            bulk_max_bytes: 10 * 1024 * 1024,
            timeout_ms: 30_000,
        }
    }
}

/// When written documents become searchable (the bulk request's `refresh`).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum Refresh {
    /// At the index's own refresh interval (`""`).
    #[default]
    #[serde(rename = "")]
    IndexInterval,
    /// The request waits for the next refresh (`"wait_for"`).
    #[serde(rename = "wait_for")]
    WaitFor,
    /// Refreshed at once (`"true"`; costly, for tests and demos).
    #[serde(rename = "true")]
    Immediately,
}

/// The transform producing search documents when the sink names none.
pub const DEFAULT_TRANSFORM: &str = "search_documents";

#[async_trait]
impl SinkKind for ElasticsearchConfig {
    fn flush_policy(&self) -> FlushPolicy {
        FlushPolicy {
            max_rows: self.flush_max_docs,
            max_wait: Duration::from_millis(self.flush_interval_ms),
        }
    }

    fn default_transform(&self) -> Option<&str> {
        Some(DEFAULT_TRANSFORM)
    }

    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.urls.is_empty() {
            return Err(invalid_str(
                &format!("{key}.urls"),
                "",
                "give the node URLs of the cluster, such as [\"https://es-1.example:9200\"]",
            ));
        }
        for u in &self.urls {
            if url::Url::parse(u).is_err() {
                return Err(invalid_str(
                    &format!("{key}.urls"),
                    u,
                    "give node URLs such as \"https://es-1.example:9200\"",
                ));
            }
        }
        for (name, value) in [("index_prefix", &self.index_prefix), ("index", &self.index)] {
            if !is_index_part(value) {
                return Err(invalid_str(
                    &format!("{key}.{name}"),
                    value,
                    "index names take lower-case letters, digits, - and _, and do not start with - or _",
                ));
            }
        }
        at_least(
            &format!("{key}.flush_interval_ms"),
            self.flush_interval_ms,
            1,
        )?;
        at_least(
            &format!("{key}.flush_max_docs"),
            self.flush_max_docs as u64,
            1,
        )?;
        at_least(
            &format!("{key}.bulk_max_bytes"),
            self.bulk_max_bytes as u64,
            1024,
        )
    }

    async fn build(&self, cx: &SinkContext<'_>) -> Result<Box<dyn BuiltSink>, BuildError> {
        let cluster = SearchCluster::connect(self).map_err(|e| cx.error(e))?;
        Ok(Box::new(Built {
            name: cx.name.to_owned(),
            cluster,
            dead_letters: cx.dead_letters.clone(),
        }))
    }
}

struct Built {
    name: String,
    cluster: SearchCluster,
    dead_letters: lily_cdc::sink::DeadLetters,
}

#[async_trait]
impl BuiltSink for Built {
    async fn sink(
        &self,
        _run: &RunContext<'_>,
    ) -> Result<Option<(Box<dyn Sink>, Healthcheck)>, BuildError> {
        let sink = self.cluster.sink(&self.name, self.dead_letters.clone());
        let healthcheck = Box::pin(self.cluster.clone().healthcheck(self.name.clone()));
        Ok(Some((Box::new(sink), healthcheck)))
    }

    async fn replay(&self, letter: &DeadLetter) -> Result<(), ReplayError> {
        self.cluster
            .replay(letter)
            .await
            .map_err(|e| ReplayError::Failed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_defaults_and_refuses_unknown_keys() {
        let c: ElasticsearchConfig = toml::from_str(
            "urls = [\"http://127.0.0.1:9200\"]\nrefresh = \"wait_for\"\nflush_max_docs = 10",
        )
        .unwrap();
        assert_eq!(c.refresh, Refresh::WaitFor);
        assert_eq!(c.flush_max_docs, 10);
        assert_eq!(c.index_prefix, "lily");
        assert!(c.validate("sinks.search").is_ok());
        let e = toml::from_str::<ElasticsearchConfig>("urls = []\nurl = \"x\"").unwrap_err();
        assert!(e.to_string().contains("unknown field `url`"), "{e}");
        let e = toml::from_str::<ElasticsearchConfig>("refresh = \"sometimes\"").unwrap_err();
        assert!(e.to_string().contains("sometimes"), "{e}");
        let e = ElasticsearchConfig::default()
            .validate("sinks.search")
            .unwrap_err();
        assert!(e.to_string().contains("sinks.search.urls"), "{e}");
    }
}
