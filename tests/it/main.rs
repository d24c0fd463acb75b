//! Integration tests: real PostgreSQL clusters, the real `lily` binary, real Delta tables.

mod cdc_types;
mod crash;
mod handoff;
