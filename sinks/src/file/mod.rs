//! `type = "file"`: every change as one line of JSON (the `lily.change.v1`
//! envelope, the same as a Kafka record's value), in one file per tenant
//! and day: `<path>/<tenant>/<YYYY-MM-DD>.ndjson`, the day of the commit
//! (UTC). For an operator debugging a stream or replaying it into another
//! tool (`jq`, `duckdb read_json`, `kcat -P`).
//!
//! Idempotent across restarts by position: after each flush the sink
//! records, in `<path>/_lily_file_sink.json`, how long each file is and
//! the last position (commit LSN, place in the transaction) written per
//! stream. On start it cuts every file back to its recorded length (what a
//! crash left half-written), and it skips rows at or before a stream's
//! recorded position, so the changes the slot sends again are not written
//! twice.

mod config;
mod sink;

pub use config::FileConfig;
pub use sink::{FileSink, STATE_FILE};
