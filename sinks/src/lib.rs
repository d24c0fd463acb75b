//! The concrete sinks: Elasticsearch ([`elasticsearch`]), Kafka ([`kafka`]),
//! SaaS notifications ([`notify`]), the console and the null sink.
//!
//! Each keeps the contract of [`lily_cdc::sink`]: the [`Sink`] trait, at
//! least once, idempotent by position, `Rejected` only for data no retry
//! can store (the runner dead-letters it and moves on).

mod console;
pub mod elasticsearch;
pub mod kafka;
pub mod notify;
mod null;

pub use console::ConsoleSink;
pub use null::NullSink;
