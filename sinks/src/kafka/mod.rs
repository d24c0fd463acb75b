//! `type = "kafka"`: Kafka change streams, every change as a keyed record on
//! `<prefix>.<tenant>.<stream>` ([`envelope`]).
//!
//! The producer is idempotent with `acks=all`, so librdkafka's retries
//! neither lose, duplicate nor reorder records within a partition. A batch
//! counts as durable only when the broker confirmed every record of it: the
//! flush awaits the delivery reports. A broker outage makes the flush fail
//! (the runner retries, the slot holds the changes); a record the broker
//! refuses for good (too large, not authorized) goes to the dead-letter
//! store and the rest flow on. Consumers deduplicate a redelivery by
//! (key, `commit_lsn`, `seq`).

pub mod avro;
mod config;
pub mod envelope;
mod sink;

pub use config::{Format, KafkaSinkConfig};
pub use envelope::{ChangeRecord, ChangeRows, JsonEnvelope, SCHEMA, change_records, key_column};
pub use sink::{KafkaSink, KafkaSinkError, healthcheck};
