//! The Kafka sink: produces each change, awaits the delivery reports in
//! `flush`, and dead-letters what the brokers refuse for good.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use lily_cdc::{ChangeBatch, Lsn};
use super::config::{Format, KafkaSinkConfig};
use crate::registry::source;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use serde_json::json;
use tracing::{info, warn};

use super::avro::{AvroEnvelopes, SCHEMAS_TOPIC};
use super::envelope::{self, ChangeRecord, ChangeRows, JsonEnvelope, SCHEMA, change_records};

use lily_cdc::sink::dead_letter::{DeadLetter, DeadLetters, NewDeadLetter};
use lily_cdc::sink::{Sink, SinkError};

/// Why the Kafka sink cannot start, or a replay failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KafkaSinkError(String);

struct InFlight {
    record: ChangeRecord,
    delivery: DeliveryFuture,
}

/// The Kafka sink.
pub struct KafkaSink {
    name: String,
    producer: FutureProducer,
    admin: Option<AdminClient<DefaultClientContext>>,
    prefix: String,
    partitions: i32,
    replication: i32,
    flush_timeout: Duration,
    known_topics: HashSet<String>,
    /// Produced, delivery not yet confirmed; in stream order.
    in_flight: VecDeque<InFlight>,
    /// To produce again (a retriable failure), in stream order.
    resend: Vec<ChangeRecord>,
    dead_letters: DeadLetters,
    /// Avro envelopes, when the format is Avro.
    avro: Option<AvroEnvelopes>,
}

/// Settings librdkafka gets before the user's `options`.
fn producer_config(config: &KafkaSinkConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        // Never give up on a record inside librdkafka: an outage holds the
        // pipeline (and the slot) instead of failing records.
        .set("message.timeout.ms", "0");
    for (k, v) in &config.options {
        c.set(k, v);
    }
    c
}

impl KafkaSink {
    /// The sink `name`, producing as `config` says (it must name brokers).
    pub fn new(
        name: &str,
        config: &KafkaSinkConfig,
        dead_letters: DeadLetters,
    ) -> Result<Self, KafkaSinkError> {
        let producer: FutureProducer = producer_config(config)
            .create()
            .map_err(|e| KafkaSinkError(format!("producer: {e}")))?;
        let admin = if config.create_topics {
            let mut c = ClientConfig::new();
            c.set("bootstrap.servers", &config.brokers);
            for (k, v) in &config.options {
                // Connection settings (TLS, SASL) apply to the admin client
                // too; producer settings would only make it warn.
                if k.starts_with("security.") || k.starts_with("sasl.") || k.starts_with("ssl.") {
                    c.set(k, v);
                }
            }
            Some(
                c.create()
                    .map_err(|e| KafkaSinkError(format!("admin client: {e}")))?,
            )
        } else {
            None
        };
        Ok(Self {
            name: name.to_owned(),
            producer,
            admin,
            prefix: config.topic_prefix.clone(),
            partitions: config.partitions.max(1),
            replication: config.replication_factor.max(1),
            flush_timeout: Duration::from_millis(config.flush_timeout_ms.max(1)),
            known_topics: HashSet::new(),
            in_flight: VecDeque::new(),
            resend: Vec::new(),
            dead_letters,
            avro: (config.format == Format::Avro).then(AvroEnvelopes::default),
        })
    }

    /// The records of `batch` in the configured format; an Avro schema used
    /// for the first time comes first, on the schemas topic.
    async fn records(&mut self, batch: &ChangeBatch) -> Result<Vec<ChangeRecord>, SinkError> {
        let records = self.encode(batch).await?;
        let mut out = Vec::with_capacity(records.len());
        for record in records {
            match envelope::valid_tenant(&record) {
                Ok(()) => out.push(record),
                Err(e) => {
                    metrics::counter!("lily_kafka_records_total", "outcome" => "dead_letter")
                        .increment(1);
                    self.bury(&record, "invalid_tenant", &e.to_string())
                        .await
                        .map_err(|e| unavailable(&self.name, e))?;
                }
            }
        }
        Ok(out)
    }

    async fn encode(&mut self, batch: &ChangeBatch) -> Result<Vec<ChangeRecord>, SinkError> {
        let Some(avro) = self.avro.as_mut() else {
            return Ok(change_records(&self.prefix, batch));
        };
        let rows = ChangeRows::new(batch);
        let mut out = Vec::with_capacity(rows.len() + 1);
        let schema = avro.prepare(&rows).map_err(|e| SinkError::Rejected {
            sink: self.name.clone(),
            message: e.to_string(),
        })?;
        if let Some(schema) = schema {
            info!(stream = rows.stream, fingerprint = %schema.fingerprint, "Avro schema published");
            out.push(ChangeRecord {
                topic: format!("{}.{SCHEMAS_TOPIC}", self.prefix),
                key: schema.fingerprint,
                payload: schema.json.into_bytes(),
                tenant: envelope::NO_TENANT.to_owned(),
                commit_lsn: batch.first.commit_lsn,
                seq: batch.first.seq,
            });
        }
        let mut refused = Vec::new();
        for row in 0..rows.len() {
            let meta = rows.meta(row);
            match avro.encode(&rows, row, &meta) {
                Ok(payload) => out.push(ChangeRecord::of(&rows, &self.prefix, meta, payload)),
                Err(e) => {
                    // Kept as JSON, which anything can read.
                    let payload = JsonEnvelope::new(&rows).encode(row, &meta);
                    let record = ChangeRecord::of(&rows, &self.prefix, meta, payload);
                    refused.push((record, e.to_string()));
                }
            }
        }
        for (record, error) in refused {
            metrics::counter!("lily_kafka_records_total", "outcome" => "dead_letter").increment(1);
            self.bury(&record, "avro_encoding", &error)
                .await
                .map_err(|e| unavailable(&self.name, e))?;
        }
        Ok(out)
    }


    async fn ensure_topic(&mut self, topic: &str) -> Result<(), SinkError> {
        if self.known_topics.contains(topic) {
            return Ok(());
        }
        if let Some(admin) = &self.admin {
            let new = NewTopic::new(
                topic,
                self.partitions,
                TopicReplication::Fixed(self.replication),
            );
            let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
            let results = admin
                .create_topics([&new], &opts)
                .await
                .map_err(|e| unavailable(&self.name, format!("creating topic {topic}: {e}")))?;
            for r in results {
                match r {
                    Ok(_) => info!(topic, partitions = self.partitions, "topic created"),
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((t, code)) => {
                        return Err(unavailable(&self.name, format!("creating topic {t}: {code}")));
                    }
                }
            }
        }
        self.known_topics.insert(topic.to_owned());
        Ok(())
    }

    /// Hands `record` to librdkafka, waiting for room when its queue is
    /// full; gives the record back with the error when it cannot.
    async fn produce(&mut self, record: ChangeRecord) -> Result<(), (SinkError, ChangeRecord)> {
        if let Err(e) = self.ensure_topic(&record.topic).await {
            return Err((e, record));
        }
        let lsn = record.commit_lsn.to_string();
        loop {
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "lily-schema",
                    value: Some(SCHEMA),
                })
                .insert(Header {
                    key: "lily-commit-lsn",
                    value: Some(&lsn),
                });
            let sent = self.producer.send_result(
                FutureRecord::to(&record.topic)
                    .key(&record.key)
                    .payload(&record.payload)
                    .headers(headers),
            );
            match sent {
                Ok(delivery) => {
                    self.in_flight.push_back(InFlight { record, delivery });
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    // Backpressure: wait for the oldest delivery before queueing more.
                    self.await_oldest().await;
                }
                Err((e, _)) => {
                    return Err((unavailable(&self.name, format!("producing: {e}")), record));
                }
            }
        }
    }

    /// Produces `records` in order; what cannot be produced now is kept,
    /// in order, to be produced again first.
    async fn produce_all(&mut self, records: Vec<ChangeRecord>) -> Result<(), SinkError> {
        let mut records = records.into_iter();
        while let Some(record) = records.next() {
            if let Err((e, record)) = self.produce(record).await {
                self.resend.push(record);
                self.resend.extend(records);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Waits for the oldest record in flight and settles it.
    async fn await_oldest(&mut self) {
        let Some(f) = self.in_flight.pop_front() else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            return;
        };
        self.settle(f.record, f.delivery.await).await;
    }

    async fn settle(
        &mut self,
        record: ChangeRecord,
        result: Result<
            rdkafka::producer::future_producer::OwnedDeliveryResult,
            futures::channel::oneshot::Canceled,
        >,
    ) {
        match result {
            Ok(Ok(_)) => {
                metrics::counter!("lily_kafka_records_total", "outcome" => "delivered")
                    .increment(1);
            }
            Ok(Err((e, _))) if permanent(&e) => {
                metrics::counter!("lily_kafka_records_total", "outcome" => "dead_letter")
                    .increment(1);
                let code = e
                    .rdkafka_error_code()
                    .map(|c| format!("{c:?}"))
                    .unwrap_or_else(|| "kafka_error".to_owned());
                if let Err(dl) = self.bury(&record, &code, &e.to_string()).await {
                    warn!(error = %dl, "could not store the dead letter; producing again");
                    self.resend.push(record);
                }
            }
            Ok(Err((e, _))) => {
                metrics::counter!("lily_kafka_records_total", "outcome" => "retry").increment(1);
                warn!(error = %e, topic = %record.topic, "delivery failed; producing again");
                self.resend.push(record);
            }
            Err(_) => self.resend.push(record),
        }
    }

    async fn bury(
        &self,
        record: &ChangeRecord,
        code: &str,
        error: &str,
    ) -> Result<(), lily_cdc::sink::dead_letter::DeadLetterError> {
        warn!(error, topic = %record.topic, key = %record.key, "record refused; kept as a dead letter");
        self.dead_letters
            .record(&NewDeadLetter {
                source: source::KAFKA,
                tenant_id: Some(&record.tenant),
                reference: &format!("{}/{}@{}", record.topic, record.key, record.commit_lsn),
                error_code: code,
                error,
                payload: Some(&record.payload),
                details: json!({"topic": record.topic, "key": record.key, "sink": self.name}),
            })
            .await
            .map(|_| ())
    }

    /// The producer, for a healthcheck.
    pub fn producer(&self) -> FutureProducer {
        self.producer.clone()
    }

    /// Produces a dead letter of this sink again, to its topic and key.
    pub async fn replay(&self, letter: &DeadLetter) -> Result<(), KafkaSinkError> {
        let topic = letter.details["topic"]
            .as_str()
            .ok_or_else(|| KafkaSinkError("the dead letter names no topic".into()))?;
        let key = letter.details["key"].as_str().unwrap_or_default();
        let payload = letter.payload.clone().unwrap_or_default();
        self.producer
            .send(
                FutureRecord::to(topic).key(key).payload(&payload),
                Duration::from_secs(30),
            )
            .await
            .map(|_| ())
            .map_err(|(e, _)| KafkaSinkError(format!("producing to {topic}: {e}")))
    }
}

fn unavailable(sink: &str, message: impl std::fmt::Display) -> SinkError {
    SinkError::Unavailable {
        sink: sink.to_owned(),
        message: message.to_string(),
    }
}

/// Checks the brokers answer: an unreachable cluster is only reported, since
/// the runner retries until it is back.
pub async fn healthcheck(sink: String, producer: FutureProducer) -> Result<(), SinkError> {
    let metadata = tokio::task::spawn_blocking(move || {
        use rdkafka::producer::Producer;
        producer
            .client()
            .fetch_metadata(None, Duration::from_secs(10))
            .map(|_| ())
    })
    .await;
    match metadata {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            warn!(sink, error = %e, "the Kafka brokers are unreachable; records wait until they are back");
            Ok(())
        }
        Err(e) => Err(unavailable(&sink, e)),
    }
}

/// Errors that producing the same record again cannot fix.
fn permanent(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::InvalidTopic
                | RDKafkaErrorCode::InvalidRecord
        )
    )
}

#[async_trait::async_trait]
impl Sink for KafkaSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn write(&mut self, batch: Arc<ChangeBatch>) -> Result<(), SinkError> {
        // Records that failed earlier go first, to keep the stream's order.
        let retry = std::mem::take(&mut self.resend);
        self.produce_all(retry).await?;
        let records = self.records(&batch).await?;
        self.produce_all(records).await
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        let deadline = tokio::time::Instant::now() + self.flush_timeout;
        while let Some(f) = self.in_flight.front_mut() {
            let result = match tokio::time::timeout_at(deadline, &mut f.delivery).await {
                Ok(r) => r,
                Err(_) => {
                    return Err(unavailable(&self.name, format!(
                        "{} records not confirmed by the brokers within {:?}",
                        self.in_flight.len(),
                        self.flush_timeout
                    )));
                }
            };
            let Some(f) = self.in_flight.pop_front() else {
                break;
            };
            self.settle(f.record, result).await;
        }
        if self.resend.is_empty() {
            return Ok(());
        }
        let retry = std::mem::take(&mut self.resend);
        let n = retry.len();
        self.produce_all(retry).await?;
        Err(unavailable(&self.name, format!(
            "{n} records are being produced again"
        )))
    }

    fn buffered_rows(&self) -> usize {
        self.in_flight.len() + self.resend.len()
    }

    async fn discard_snapshot(&mut self, snapshot_lsn: Lsn) -> Result<(), SinkError> {
        // Records cannot be taken back; consumers see the new snapshot's
        // rows (`op` "r") with a later LSN and supersede the old ones.
        info!(%snapshot_lsn, "an unfinished snapshot's records stay in Kafka; the next snapshot supersedes them");
        Ok(())
    }
}
