//! The outbound side of `lily run`: the search, Kafka and notification
//! sinks the configuration asks for, the notification delivery workers, and
//! `lily dlq` over the dead-letter store they share.

use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::Pool;
use lily_cdc::sink::FlushPolicy;
use lily_cdc::sink::dead_letter::{DeadLetter, DeadLetterFilter, DeadLetters};
use lily_config::LilyConfig;
use lily_inbound::db::Metastore;
use lily_sinks::elasticsearch::SearchCluster;
use lily_sinks::kafka::KafkaSink;
use lily_sinks::notify::{NotifyTarget, Outbox, build_targets};
use tokio::sync::watch;
use tracing::info;

use crate::pipeline::SinkSpec;

/// The metastore pool of the outbound side (outbox, dead letters, references).
pub fn pool(config: &LilyConfig) -> anyhow::Result<Pool> {
    Ok(
        Metastore::new(&config.postgres.url, 4, &config.postgres.tenant_role)
            .context("the metastore connection pool")?
            .pool()
            .clone(),
    )
}

/// Every outbound sink the configuration names.
pub struct Outbound {
    pool: Pool,
    search: Option<SearchCluster>,
    targets: Vec<NotifyTarget>,
}

impl Outbound {
    /// Builds the search cluster and the notification targets, and starts
    /// each target's delivery worker (they run until `shutdown`).
    pub fn start(config: &LilyConfig, shutdown: watch::Receiver<bool>) -> anyhow::Result<Self> {
        let pool = pool(config)?;
        let search = SearchCluster::from_config(&config.elasticsearch)?;
        let lookup = |name: &str| std::env::var(name).ok();
        let mut targets = Vec::new();
        for (target, worker) in build_targets(&config.notify, &pool, &lookup)? {
            info!(target = %target.name, filter = %target.filter, "notification target");
            tokio::spawn(worker.run(shutdown.clone()));
            targets.push(target);
        }
        Ok(Self {
            pool,
            search,
            targets,
        })
    }

    /// The sinks of one pipeline run, each with its transform.
    pub fn sinks(&self, config: &LilyConfig) -> anyhow::Result<Vec<SinkSpec>> {
        let mut out = Vec::new();
        if let Some(search) = &self.search {
            let es = &config.elasticsearch;
            out.push(SinkSpec {
                sink: Box::new(search.sink(DeadLetters::new(self.pool.clone()))),
                policy: FlushPolicy {
                    max_rows: es.flush_max_docs,
                    max_wait: Duration::from_millis(es.flush_interval_ms),
                },
                transform: Some(es.transform.clone()),
                kind: lily_sinks::elasticsearch::DEAD_LETTER_SOURCE,
            });
        }
        let kafka = &config.kafka_sink;
        if !kafka.brokers.is_empty() {
            let sink = KafkaSink::new(kafka, DeadLetters::new(self.pool.clone()))?;
            out.push(SinkSpec {
                sink: Box::new(sink),
                policy: FlushPolicy {
                    max_rows: 50_000,
                    max_wait: Duration::from_millis(kafka.flush_interval_ms),
                },
                transform: (!kafka.transform.is_empty()).then(|| kafka.transform.clone()),
                kind: lily_sinks::kafka::DEAD_LETTER_SOURCE,
            });
        }
        for target in &self.targets {
            out.push(SinkSpec {
                sink: Box::new(target.sink(&self.pool)),
                policy: FlushPolicy {
                    max_rows: 1000,
                    max_wait: Duration::from_millis(50),
                },
                transform: Some(target.filter.clone()),
                kind: lily_sinks::notify::DEAD_LETTER_SOURCE,
            });
        }
        Ok(out)
    }
}

/// What `lily dlq list` and `lily dlq replay` select.
#[derive(Debug, Clone, Default)]
pub struct DlqSelection {
    /// Only these ids.
    pub ids: Vec<i64>,
    /// Only this source.
    pub source: Option<String>,
    /// Only this tenant.
    pub tenant: Option<String>,
    /// Also the replayed ones.
    pub all: bool,
    /// At most this many.
    pub limit: i64,
}

impl DlqSelection {
    fn filter(&self) -> DeadLetterFilter {
        DeadLetterFilter {
            ids: self.ids.clone(),
            source: self.source.clone(),
            tenant_id: self.tenant.clone(),
            include_replayed: self.all,
            limit: self.limit,
        }
    }
}

fn one_line(s: &str, max: usize) -> String {
    let line: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() > max {
        format!("{}…", line.chars().take(max).collect::<String>())
    } else {
        line
    }
}

/// `lily dlq list`: one line per dead letter.
pub async fn list(config: &LilyConfig, selection: &DlqSelection) -> anyhow::Result<()> {
    let letters = DeadLetters::new(pool(config)?)
        .list(&selection.filter())
        .await?;
    println!("id\tcreated_at\tsource\ttenant\treference\terror_code\terror\treplayed_at");
    for l in &letters {
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            l.id,
            l.created_at.format("%Y-%m-%dT%H:%M:%SZ"),
            l.source,
            l.tenant_id.as_deref().unwrap_or("-"),
            l.reference,
            l.error_code,
            one_line(&l.error, 160),
            l.replayed_at
                .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
                .unwrap_or_else(|| "-".into())
        );
    }
    eprintln!("{} dead letters", letters.len());
    Ok(())
}

/// Sends one dead letter again, by its source.
async fn replay_one(
    config: &LilyConfig,
    letter: &DeadLetter,
    outbox: &Outbox,
    search: &Option<SearchCluster>,
    kafka: &mut Option<KafkaSink>,
) -> anyhow::Result<()> {
    if letter.details["kind"] == lily_cdc::sink::dead_letter::CHANGES {
        let fix = match letter.details["transform"].as_str() {
            Some(t) if letter.source == lily_transforms::sink::DEAD_LETTER_SOURCE => {
                format!("fix the transform {t} (lily transforms check)")
            }
            _ => format!(
                "fix what sink {} refused them for",
                letter.details["sink"].as_str().unwrap_or(&letter.source)
            ),
        };
        anyhow::bail!(
            "changes are not replayed from here: {fix}, then apply the changes again in the \
             catalog; the rows are the payload of dead letter {} in lily.dead_letters (JSON lines)",
            letter.id
        );
    }
    match letter.source.as_str() {
        lily_sinks::notify::DEAD_LETTER_SOURCE => lily_sinks::notify::replay(outbox, letter)
            .await
            .map_err(anyhow::Error::msg),
        lily_sinks::elasticsearch::DEAD_LETTER_SOURCE => {
            let search = search
                .as_ref()
                .context("elasticsearch.urls is empty: no cluster to replay to")?;
            Ok(search.replay(letter).await?)
        }
        lily_sinks::kafka::DEAD_LETTER_SOURCE | "kafka_source" => {
            if kafka.is_none() {
                let mut sink_config = config.kafka_sink.clone();
                if letter.source == "kafka_source" {
                    // Back to the topic it came from, through the source's brokers.
                    sink_config.brokers = config.kafka_source.brokers.clone();
                    sink_config.options = config.kafka_source.options.clone();
                }
                anyhow::ensure!(
                    !sink_config.brokers.is_empty(),
                    "no brokers configured to replay {} to",
                    letter.reference
                );
                *kafka = Some(KafkaSink::new(
                    &sink_config,
                    DeadLetters::new(outbox.pool().clone()),
                )?);
            }
            let sink = kafka.as_ref().context("a producer")?;
            Ok(sink.replay(letter).await?)
        }
        other => anyhow::bail!("dead letters of {other} cannot be replayed"),
    }
}

/// `lily dlq replay`: sends the selected dead letters again and marks the
/// ones that went; the others stay, with the reason printed.
pub async fn replay(config: &LilyConfig, selection: &DlqSelection) -> anyhow::Result<()> {
    let pool = pool(config)?;
    let store = DeadLetters::new(pool.clone());
    let outbox = Outbox::new(pool);
    let search = SearchCluster::from_config(&config.elasticsearch)?;
    let mut kafka: Option<KafkaSink> = None;
    let letters = store.list(&selection.filter()).await?;
    let (mut sent, mut failed) = (0, 0);
    for letter in &letters {
        match replay_one(config, letter, &outbox, &search, &mut kafka).await {
            Ok(()) => {
                store.mark_replayed(letter.id).await?;
                println!("{}\treplayed\t{}", letter.id, letter.reference);
                sent += 1;
            }
            Err(e) => {
                println!(
                    "{}\tfailed\t{}\t{}",
                    letter.id,
                    letter.reference,
                    one_line(&format!("{e:#}"), 300)
                );
                failed += 1;
            }
        }
    }
    eprintln!("{sent} replayed, {failed} failed");
    anyhow::ensure!(failed == 0, "{failed} dead letters could not be replayed");
    Ok(())
}
