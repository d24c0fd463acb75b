//! Integration tests: real PostgreSQL clusters, the real `lily` binary, real Delta tables.

mod api_fuzz;
mod big_transaction;
mod cdc_types;
mod crash;
mod demo;
mod faults;
mod file_sink;
mod handoff;
mod hardening;
mod heartbeat;
mod inbound;
mod kafka_sink;
mod kafka_source;
mod load;
mod names;
mod notify;
mod object_store;
mod observability;
mod propagation;
mod refusals;
mod search;
mod setup_errors;
mod sql_endpoint;
mod tenancy;
mod tls;
mod transforms;
