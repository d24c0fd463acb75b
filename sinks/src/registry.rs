//! The sink registry: the kinds of sink `[sinks.<name>]` can name (their
//! `type`), the built-in sinks every pipeline has, and what the pipeline
//! and `lily dlq` get from them.
//!
//! A kind is a config struct (its folder's `config.rs`) implementing
//! [`SinkKind`]: its flush policy, its checks, and a builder returning a
//! [`BuiltSink`], which makes a sink and its healthcheck for each pipeline
//! run, starts work beside the pipeline (a notification target's
//! delivery), and sends its dead letters again. Adding a kind is its
//! folder and one line in the list in `lib.rs`.
//!
//! Every sink may name one `transform` (a post-consume SQL transform) that
//! its changes go through first. The dead letters of a sink carry its
//! `type` as their source ([`source`]), and a replay goes to the sink the
//! letter names.

use std::sync::Arc;

use async_trait::async_trait;
use deadpool_postgres::Pool;
use futures::future::BoxFuture;
use lily_cdc::sink::dead_letter::{CHANGES, DeadLetter};
use lily_cdc::sink::{DeadLetters, FlushPolicy, Sink, SinkError};
use lily_config::{ApiConfig, ConfigError, LilyConfig, invalid_str};
use lily_transforms::{CatalogState, TransformSet, TransformedSink};
use tokio::sync::watch;
use tracing::info;

use crate::SinkConfig;
use crate::builtin;
use crate::elasticsearch::SearchCluster;
use crate::kafka::{KafkaSink, KafkaSinkConfig};

/// The sources of dead letters: who gave up on what.
pub mod source {
    /// Refused search documents.
    pub const ELASTICSEARCH: &str = "elasticsearch";
    /// Refused Kafka records.
    pub const KAFKA: &str = "kafka";
    /// Notifications that could not be delivered.
    pub const NOTIFY: &str = "notify";
    /// Changes the Delta audit sink refused.
    pub const AUDIT: &str = "audit";
    /// Changes lineage propagation refused.
    pub const PROPAGATION: &str = "propagation";
    /// Changes the policy compiler refused.
    pub const POLICIES: &str = "policies";
    /// Changes a post-consume transform failed on.
    pub const TRANSFORM: &str = lily_transforms::sink::DEAD_LETTER_SOURCE;
    /// Monte Carlo events from Kafka that could not be written.
    pub const KAFKA_SOURCE: &str = "kafka_source";
}

/// The names of the built-in sinks; no `[sinks.<name>]` may take them.
pub const BUILT_IN: [&str; 3] = [builtin::AUDIT, builtin::PROPAGATION, builtin::POLICIES];

/// A sink's healthcheck: an error stops the start.
pub type Healthcheck = BoxFuture<'static, Result<(), SinkError>>;

/// A healthcheck that always passes.
pub fn no_healthcheck() -> Healthcheck {
    Box::pin(async { Ok(()) })
}

/// What a kind's builder may use.
pub struct SinkContext<'a> {
    /// The sink's name (`[sinks.<name>]`).
    pub name: &'a str,
    /// The whole configuration.
    pub config: &'a LilyConfig,
    /// The metastore pool (outbox, references).
    pub pool: &'a Pool,
    /// The dead-letter store.
    pub dead_letters: &'a DeadLetters,
    /// The policy snapshot (none when the process enforces nothing, as
    /// when it replays dead letters).
    pub policies: Option<&'a Arc<lily_enforcement::PolicyStore>>,
}

impl SinkContext<'_> {
    /// A build error of this sink.
    pub fn error(&self, e: impl std::fmt::Display) -> BuildError {
        BuildError::new(self.name, e)
    }
}

/// What one pipeline run hands its sinks.
pub struct RunContext<'a> {
    /// The loaded transforms.
    pub transforms: &'a TransformSet,
    /// The catalog state transforms join against.
    pub state: &'a Arc<CatalogState>,
    /// The masking-policy snapshot the SQL endpoint reads (none without one).
    pub policies: Option<&'a Arc<lily_enforcement::PolicyStore>>,
}

/// A sink that cannot be built.
#[derive(Debug, thiserror::Error)]
#[error("sink {sink}: {message}")]
pub struct BuildError {
    /// The sink's name.
    pub sink: String,
    /// What went wrong.
    pub message: String,
}

impl BuildError {
    /// The error of sink `sink`.
    pub fn new(sink: &str, e: impl std::fmt::Display) -> Self {
        Self {
            sink: sink.to_owned(),
            message: e.to_string(),
        }
    }
}

/// Why a dead letter was not sent again.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Nothing can send it again from here.
    #[error("{0}")]
    NotReplayable(String),
    /// Sending it failed.
    #[error("{0}")]
    Failed(String),
}

/// A kind of sink, configured: what a `[sinks.<name>]` table says for its
/// `type`.
#[async_trait]
pub trait SinkKind: Send + Sync {
    /// When its sink flushes.
    fn flush_policy(&self) -> FlushPolicy;

    /// The transform feeding it when its table names none.
    fn default_transform(&self) -> Option<&str> {
        None
    }

    /// Whether it needs a transform (a notification target's filter).
    fn needs_transform(&self) -> bool {
        false
    }

    /// Checks values its types accept but the kind does not; `key` is
    /// `sinks.<name>`.
    fn validate(&self, _key: &str) -> Result<(), ConfigError> {
        Ok(())
    }

    /// Builds its clients, once per process; nothing runs yet.
    async fn build(&self, cx: &SinkContext<'_>) -> Result<Box<dyn BuiltSink>, BuildError>;
}

/// A sink kind's clients, built once.
#[async_trait]
pub trait BuiltSink: Send + Sync {
    /// Starts the work it does beside the pipeline, until `shutdown`.
    fn start(&self, _shutdown: watch::Receiver<bool>) {}

    /// A sink for one pipeline run and its healthcheck; `None` when it does
    /// not run this time (and has said why).
    async fn sink(
        &self,
        run: &RunContext<'_>,
    ) -> Result<Option<(Box<dyn Sink>, Healthcheck)>, BuildError>;

    /// Sends one of its dead letters again.
    async fn replay(&self, letter: &DeadLetter) -> Result<(), ReplayError> {
        Err(ReplayError::NotReplayable(format!(
            "dead letters of {} cannot be replayed",
            letter.source
        )))
    }
}

/// One `[sinks.<name>]` table, read and checked.
#[derive(Debug, Clone)]
pub struct ConfiguredSink {
    /// Its name.
    pub name: String,
    /// The transform feeding it, if any.
    pub transform: Option<String>,
    /// Its kind's settings.
    pub config: SinkConfig,
}

/// Reads every `[sinks.<name>]` table of `config` (whose `${NAME}` and
/// `${file:PATH}` references the configuration has already read): values
/// set from the environment take the types of the kind's defaults, and
/// each kind checks its own settings. An error names the table and key.
pub fn parse(config: &LilyConfig) -> Result<Vec<ConfiguredSink>, ConfigError> {
    let mut out = Vec::with_capacity(config.sinks.len());
    for (name, table) in &config.sinks {
        let key = format!("sinks.{name}");
        if BUILT_IN.contains(&name.as_str()) {
            return Err(invalid_str(
                "sinks",
                name,
                "a built-in sink has this name; choose another",
            ));
        }
        let mut table = table.clone();
        let type_name = match table.get("type") {
            Some(toml::Value::String(t)) => t.clone(),
            _ => {
                return Err(invalid_str(
                    &format!("{key}.type"),
                    "",
                    &format!(
                        "give the kind of sink, one of: {}",
                        SinkConfig::TYPES.join(", ")
                    ),
                ));
            }
        };
        let Some(defaults) = SinkConfig::defaults(&type_name) else {
            return Err(invalid_str(
                &format!("{key}.type"),
                &type_name,
                &format!(
                    "no such kind of sink; one of: {}",
                    SinkConfig::TYPES.join(", ")
                ),
            ));
        };
        let transform = match table.remove("transform") {
            None => None,
            Some(toml::Value::String(t)) if !t.trim().is_empty() => Some(t),
            Some(other) => {
                return Err(invalid_str(
                    &format!("{key}.transform"),
                    &other.to_string(),
                    "name a transform (its file name without .sql)",
                ));
            }
        };
        coerce_strings(&mut table, &defaults, &key)?;
        table.remove("type");
        let sink = SinkConfig::parse(&type_name, table)
            .unwrap_or_else(|| Err(format!("no such kind of sink {type_name:?}")))
            .map_err(|message| ConfigError::Table {
                key: key.clone(),
                message,
            })?;
        let kind = sink.kind();
        kind.validate(&key)?;
        let transform = transform.or_else(|| kind.default_transform().map(str::to_owned));
        if transform.is_none() && kind.needs_transform() {
            return Err(invalid_str(
                &format!("{key}.transform"),
                "",
                "name the transform that chooses what this sink receives",
            ));
        }
        out.push(ConfiguredSink {
            name: name.clone(),
            transform,
            config: sink,
        });
    }
    Ok(out)
}

/// Gives strings set from the environment the type the kind's default has
/// at the same key (`"5000"` for a number, `"a,b"` for a list).
fn coerce_strings(
    table: &mut toml::Table,
    defaults: &toml::Table,
    key: &str,
) -> Result<(), ConfigError> {
    for (k, v) in table.iter_mut() {
        let (toml::Value::String(raw), Some(template)) = (&*v, defaults.get(k)) else {
            continue;
        };
        if template.is_str() {
            continue;
        }
        let dotted = format!("{key}.{k}");
        *v = lily_config::coerce(Some(template), raw, &dotted).map_err(|message| {
            ConfigError::Invalid {
                key: dotted.clone(),
                value: raw.clone(),
                message,
            }
        })?;
    }
    Ok(())
}

/// The cluster the search API queries: the `elasticsearch` sink
/// `api.search_sink` names, or the only one; `None` without one.
pub fn search_cluster(
    sinks: &[ConfiguredSink],
    api: &ApiConfig,
) -> Result<Option<SearchCluster>, ConfigError> {
    let clusters: Vec<(&str, &crate::elasticsearch::ElasticsearchConfig)> = sinks
        .iter()
        .filter_map(|s| match &s.config {
            SinkConfig::Elasticsearch(c) => Some((s.name.as_str(), c)),
            _ => None,
        })
        .collect();
    let chosen = if api.search_sink.is_empty() {
        match clusters.as_slice() {
            [] => return Ok(None),
            [one] => one,
            _ => {
                return Err(invalid_str(
                    "api.search_sink",
                    "",
                    "there is more than one elasticsearch sink: name the one the search API queries",
                ));
            }
        }
    } else {
        match clusters.iter().find(|(n, _)| *n == api.search_sink) {
            Some(c) => c,
            None => {
                return Err(invalid_str(
                    "api.search_sink",
                    &api.search_sink,
                    "no elasticsearch sink has this name",
                ));
            }
        }
    };
    SearchCluster::connect(chosen.1)
        .map(Some)
        .map_err(|e| ConfigError::Table {
            key: format!("sinks.{}", chosen.0),
            message: e.to_string(),
        })
}

/// A sink the registry built, with what the pipeline needs to run it.
struct Entry {
    name: String,
    source: &'static str,
    transform: Option<String>,
    policy: FlushPolicy,
    built: Box<dyn BuiltSink>,
}

/// A sink of one pipeline run.
pub struct RunSink {
    /// The sink (behind its transform, if it has one).
    pub sink: Box<dyn Sink>,
    /// Its healthcheck.
    pub healthcheck: Healthcheck,
    /// When it flushes.
    pub policy: FlushPolicy,
    /// The source of the dead letters of what it refuses.
    pub source: &'static str,
}

/// Every sink of the configuration, built: the built-in ones (the Delta
/// audit store, lineage propagation) and each `[sinks.<name>]`.
pub struct Registry {
    entries: Vec<Entry>,
    dead_letters: DeadLetters,
    kafka_source: lily_config::KafkaSourceConfig,
}

impl Registry {
    /// Builds the sinks `sinks` (from [`parse`]) and the built-in ones;
    /// nothing runs until [`Registry::start`] and [`Registry::run_sinks`].
    pub async fn build(
        config: &LilyConfig,
        sinks: &[ConfiguredSink],
        pool: &Pool,
        policies: Option<&Arc<lily_enforcement::PolicyStore>>,
    ) -> Result<Registry, BuildError> {
        let dead_letters = DeadLetters::new(pool.clone());
        let mut entries = builtin::entries(config, &dead_letters)?
            .into_iter()
            .map(|(name, source, policy, built)| Entry {
                name: name.to_owned(),
                source,
                transform: None,
                policy,
                built,
            })
            .collect::<Vec<_>>();
        for sink in sinks {
            let cx = SinkContext {
                name: &sink.name,
                config,
                pool,
                dead_letters: &dead_letters,
                policies,
            };
            let kind = sink.config.kind();
            entries.push(Entry {
                name: sink.name.clone(),
                source: sink.config.type_name(),
                transform: sink.transform.clone(),
                policy: kind.flush_policy(),
                built: kind.build(&cx).await?,
            });
        }
        Ok(Registry {
            entries,
            dead_letters,
            kafka_source: config.kafka_source.clone(),
        })
    }

    /// Starts what the sinks do beside the pipeline, until `shutdown`.
    pub fn start(&self, shutdown: watch::Receiver<bool>) {
        for e in &self.entries {
            e.built.start(shutdown.clone());
        }
    }

    /// The dead-letter store the sinks share.
    pub fn dead_letters(&self) -> &DeadLetters {
        &self.dead_letters
    }

    /// Each sink that has a transform, with it: `(sink, transform)`.
    pub fn transforms(&self) -> Vec<(&str, &str)> {
        self.entries
            .iter()
            .filter_map(|e| Some((e.name.as_str(), e.transform.as_deref()?)))
            .collect()
    }

    /// The sinks of one pipeline run, each behind its transform.
    pub async fn run_sinks(&self, run: &RunContext<'_>) -> Result<Vec<RunSink>, BuildError> {
        let mut out = Vec::with_capacity(self.entries.len());
        for e in &self.entries {
            let Some((sink, healthcheck)) = e.built.sink(run).await? else {
                continue;
            };
            let sink: Box<dyn Sink> = match &e.transform {
                Some(transform) => {
                    let fed =
                        TransformedSink::new(sink, run.transforms, transform, run.state.clone())
                            .await
                            .map_err(|err| {
                                BuildError::new(&e.name, format!("transform {transform}: {err}"))
                            })?
                            .with_dead_letters(self.dead_letters.clone(), e.source);
                    info!(sink = %e.name, transform = %transform, "sink fed by a transform");
                    Box::new(fed)
                }
                None => sink,
            };
            out.push(RunSink {
                sink,
                healthcheck,
                policy: e.policy,
                source: e.source,
            });
        }
        Ok(out)
    }

    /// Sends dead letter `letter` again, through the sink it names (or the
    /// first of its source's kind).
    pub async fn replay(&self, letter: &DeadLetter) -> Result<(), ReplayError> {
        if letter.details["kind"] == CHANGES {
            let fix = match letter.details["transform"].as_str() {
                Some(t) if letter.source == source::TRANSFORM => {
                    format!("fix the transform {t} (lily transforms check)")
                }
                _ => format!(
                    "fix what sink {} refused them for",
                    letter.details["sink"].as_str().unwrap_or(&letter.source)
                ),
            };
            return Err(ReplayError::NotReplayable(format!(
                "changes are not replayed from here: {fix}, then apply the changes again in the \
                 catalog; the rows are the payload of dead letter {} in lily.dead_letters (JSON lines)",
                letter.id
            )));
        }
        if letter.source == source::KAFKA_SOURCE {
            return self.replay_to_source_topic(letter).await;
        }
        let named = letter.details["sink"]
            .as_str()
            .or_else(|| letter.details["target"].as_str());
        let entry = named
            .and_then(|n| {
                self.entries
                    .iter()
                    .find(|e| e.name == n && e.source == letter.source)
            })
            .or_else(|| self.entries.iter().find(|e| e.source == letter.source));
        match entry {
            Some(e) => e.built.replay(letter).await,
            None => Err(ReplayError::NotReplayable(format!(
                "no sink of type {} is configured to replay it to",
                letter.source
            ))),
        }
    }

    /// A Monte Carlo event the Kafka source could not write goes back to
    /// the topic it came from, through the source's brokers.
    async fn replay_to_source_topic(&self, letter: &DeadLetter) -> Result<(), ReplayError> {
        if self.kafka_source.brokers.is_empty() {
            return Err(ReplayError::NotReplayable(format!(
                "kafka_source.brokers is empty: no brokers to replay {} to",
                letter.reference
            )));
        }
        let config = KafkaSinkConfig {
            brokers: self.kafka_source.brokers.clone(),
            options: self.kafka_source.options.clone(),
            create_topics: false,
            ..Default::default()
        };
        let producer = KafkaSink::new(source::KAFKA_SOURCE, &config, self.dead_letters.clone())
            .map_err(|e| ReplayError::Failed(e.to_string()))?;
        producer
            .replay(letter)
            .await
            .map_err(|e| ReplayError::Failed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> LilyConfig {
        LilyConfig::from_toml_str(text, []).unwrap()
    }

    #[test]
    fn every_type_parses_and_its_source_is_its_type() {
        for t in SinkConfig::TYPES {
            assert!(SinkConfig::defaults(t).is_some(), "{t}");
        }
        // The enum reads a whole table by its tag as well.
        let c: SinkConfig = toml::from_str("type = \"console\"").unwrap();
        assert_eq!(c.type_name(), "console");
        for s in [source::ELASTICSEARCH, source::KAFKA, source::NOTIFY] {
            assert!(SinkConfig::TYPES.contains(&s), "{s}");
        }
    }

    #[test]
    fn tables_are_read_by_their_type_with_one_transform_each() {
        let hook = [("HOOK".to_owned(), "https://hooks.example/x".to_owned())];
        let c = LilyConfig::from_toml_str(
            r#"
            [sinks.search]
            type = "elasticsearch"
            urls = ["http://127.0.0.1:9200"]
            [sinks.events]
            type = "kafka"
            brokers = "k:9092"
            transform = "pii_masked_assets"
            [sinks.governance]
            type = "notify"
            kind = "slack"
            transform = "notify_pii_tagged"
            url = "${HOOK}"
            "#,
            hook,
        )
        .unwrap();
        let sinks = parse(&c).unwrap();
        let by_name = |n: &str| sinks.iter().find(|s| s.name == n).unwrap();
        assert_eq!(
            by_name("search").transform.as_deref(),
            Some("search_documents")
        );
        assert_eq!(
            by_name("events").transform.as_deref(),
            Some("pii_masked_assets")
        );
        match &by_name("governance").config {
            SinkConfig::Notify(n) => {
                assert_eq!(n.settings["url"].as_str(), Some("https://hooks.example/x"))
            }
            other => panic!("{other:?}"),
        }
        assert!(search_cluster(&sinks, &c.api).unwrap().is_some());
    }

    #[test]
    fn errors_name_the_table_and_key() {
        let cases = [
            ("[sinks.x]\nurls = []", "sinks.x.type"),
            ("[sinks.x]\ntype = \"carrier-pigeon\"", "carrier-pigeon"),
            (
                "[sinks.x]\ntype = \"kafka\"\nbrokers = \"k\"\nbrokres = \"k\"",
                "brokres",
            ),
            ("[sinks.x]\ntype = \"kafka\"", "sinks.x.brokers"),
            (
                "[sinks.x]\ntype = \"notify\"\nkind = \"slack\"",
                "sinks.x.transform",
            ),
            ("[sinks.propagation]\ntype = \"console\"", "built-in"),
            (
                "[sinks.x]\ntype = \"kafka\"\nbrokers = \"k\"\npartitions = true",
                "partitions",
            ),
        ];
        for (text, want) in cases {
            let e = parse(&config(text)).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn environment_values_take_the_kinds_types() {
        let env = [
            ("LILY_SINKS__SEARCH__TYPE", "elasticsearch"),
            ("LILY_SINKS__SEARCH__URLS", "http://a:9200,http://b:9200"),
            ("LILY_SINKS__SEARCH__FLUSH_MAX_DOCS", "10"),
            ("LILY_SINKS__SEARCH__TRANSFORM", "my_documents"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let c = LilyConfig::from_toml_str("", env).unwrap();
        let sinks = parse(&c).unwrap();
        assert_eq!(sinks[0].transform.as_deref(), Some("my_documents"));
        match &sinks[0].config {
            SinkConfig::Elasticsearch(es) => {
                assert_eq!(es.urls.len(), 2);
                assert_eq!(es.flush_max_docs, 10);
            }
            other => panic!("{other:?}"),
        }
        let bad = [("LILY_SINKS__SEARCH__FLUSH_MAX_DOCS", "many")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let c = LilyConfig::from_toml_str(
            "[sinks.search]\ntype = \"elasticsearch\"\nurls = [\"http://a:9200\"]",
            bad,
        )
        .unwrap();
        let e = parse(&c).unwrap_err().to_string();
        assert!(e.contains("sinks.search.flush_max_docs"), "{e}");
    }

    #[test]
    fn two_search_clusters_need_a_choice() {
        let c = config(
            "[sinks.a]\ntype = \"elasticsearch\"\nurls = [\"http://a:9200\"]\n\
             [sinks.b]\ntype = \"elasticsearch\"\nurls = [\"http://b:9200\"]",
        );
        let sinks = parse(&c).unwrap();
        let e = search_cluster(&sinks, &c.api).err().unwrap();
        assert!(e.to_string().contains("api.search_sink"), "{e}");
        let mut api = c.api.clone();
        api.search_sink = "b".into();
        assert!(search_cluster(&sinks, &api).unwrap().is_some());
    }
}
