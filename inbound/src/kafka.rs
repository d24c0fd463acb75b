//! The Kafka source: Monte Carlo events consumed from topics (each topic
//! belongs to one tenant) by a consumer group, through the same schema,
//! pre-ingest transform and writer as the webhook. An offset is committed
//! only after its event is in the metastore, so a crash redelivers, and the
//! upsert makes a redelivered event change nothing. An event that can never
//! be written (not JSON, breaks the schema, unknown tenant) goes to
//! `lily.dead_letters` and its offset is committed, so it does not block
//! the partition; a metastore outage is retried without committing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use lily_config::KafkaSourceConfig;
use rdkafka::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::BorrowedMessage;
use tokio::sync::watch;
use tracing::{error, info, instrument, warn};

use lily_cdc::sink::dead_letter::{DeadLetters, NewDeadLetter};

use crate::error::{InboundError, Result};
use crate::server::Inbound;
use crate::sources::monte_carlo::SCHEMA;

/// The Kafka source.
pub struct KafkaSource {
    inbound: Arc<Inbound>,
    topics: BTreeMap<String, String>,
    consumer: Option<StreamConsumer>,
}

impl KafkaSource {
    /// Connects the consumer group of `config` and subscribes its topics.
    pub fn new(inbound: Arc<Inbound>, config: &KafkaSourceConfig) -> Result<Self> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &config.brokers)
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest");
        for (k, v) in &config.options {
            client.set(k, v);
        }
        let consumer: StreamConsumer = client
            .create()
            .map_err(|e| InboundError::Internal(format!("Kafka consumer: {e}")))?;
        let topics: Vec<&str> = config.topics.keys().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| InboundError::Internal(format!("subscribing to {topics:?}: {e}")))?;
        info!(brokers = %config.brokers, group = %config.group_id, ?topics, "Kafka source subscribed");
        Ok(Self {
            inbound,
            topics: config.topics.clone(),
            consumer: Some(consumer),
        })
    }

    /// Consumes until `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<()> {
        let Some(consumer) = self.consumer.take() else {
            return Ok(());
        };
        let result = loop {
            let message = tokio::select! {
                m = consumer.recv() => m,
                _ = shutdown.changed() => break Ok(()),
            };
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    metrics::counter!("lily_kafka_source_errors_total", "kind" => "consume")
                        .increment(1);
                    warn!(error = %e, "Kafka consume error");
                    continue;
                }
            };
            if !self.handle(&message, &mut shutdown).await {
                break Ok(());
            }
            if let Err(e) = consumer.commit_message(&message, CommitMode::Sync) {
                metrics::counter!("lily_kafka_source_errors_total", "kind" => "commit")
                    .increment(1);
                // Not fatal: the event is written, a redelivery changes nothing.
                warn!(error = %e, "Kafka offset commit failed");
            }
        };
        // librdkafka's destructor can block on a broker that went away; it
        // must not hold up the shutdown of the process.
        std::thread::spawn(move || drop(consumer));
        result
    }

    /// Writes one event, retrying transient failures; returns false when
    /// shutdown came first (the offset is then not committed).
    #[instrument(skip_all, fields(topic = message.topic(), partition = message.partition(), offset = message.offset()))]
    async fn handle(
        &self,
        message: &BorrowedMessage<'_>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let reference = format!(
            "{}/{}/{}",
            message.topic(),
            message.partition(),
            message.offset()
        );
        let tenant = self.topics.get(message.topic()).cloned();
        let payload = message.payload().unwrap_or_default();
        let mut delay = Duration::from_millis(200);
        loop {
            let outcome = match &tenant {
                None => Err(InboundError::UnknownTenant(format!(
                    "(no tenant for topic {})",
                    message.topic()
                ))),
                Some(tenant) => self.write(tenant, payload).await,
            };
            match outcome {
                Ok(()) => {
                    metrics::counter!("lily_kafka_source_events_total", "outcome" => "written")
                        .increment(1);
                    return true;
                }
                Err(e) if e.is_transient() => {
                    metrics::counter!("lily_kafka_source_errors_total", "kind" => "retry")
                        .increment(1);
                    warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "writing a Kafka event failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.changed() => return false,
                    }
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
                Err(e) => {
                    metrics::counter!("lily_kafka_source_events_total", "outcome" => "dead_letter")
                        .increment(1);
                    error!(error = %e, code = e.code(), reference, "Kafka event refused; kept as a dead letter");
                    if let Err(dl) = self
                        .dead_letter(message, tenant.as_deref(), &reference, &e)
                        .await
                    {
                        // Without the record the event would be lost: retry it.
                        warn!(error = %dl, "could not store the dead letter; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => continue,
                            _ = shutdown.changed() => return false,
                        }
                    }
                    return true;
                }
            }
        }
    }

    async fn write(&self, tenant: &str, payload: &[u8]) -> Result<()> {
        let event = self.inbound.json(SCHEMA, payload)?;
        self.inbound
            .incidents()?
            .ingest(tenant, &event)
            .await
            .map(|_| ())
    }

    /// Keeps the event with its topic and key, so `lily dlq replay` can put
    /// it back on the topic once the problem is fixed.
    async fn dead_letter(
        &self,
        message: &BorrowedMessage<'_>,
        tenant: Option<&str>,
        reference: &str,
        e: &InboundError,
    ) -> Result<()> {
        let key = message
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned());
        DeadLetters::new(self.inbound.db.pool().clone())
            .record(&NewDeadLetter {
                source: lily_sinks::registry::source::KAFKA_SOURCE,
                tenant_id: tenant,
                reference,
                error_code: e.code(),
                error: &e.to_string(),
                payload: Some(message.payload().unwrap_or_default()),
                details: serde_json::json!({"topic": message.topic(), "key": key}),
            })
            .await
            .map(|_| ())
            .map_err(|e| InboundError::Unavailable(e.to_string()))
    }
}
