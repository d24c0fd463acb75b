//! Logs (tracing, text or JSON) and the Prometheus endpoint.

use anyhow::Context;
use lily_config::{LogConfig, LogFormat};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Libraries whose info-level chatter (every Delta snapshot, every notice)
/// drowns Lily's own events; `RUST_LOG` can still turn them up. The kernel's
/// snapshot builder logs an ERROR for a table without a log yet, which here
/// is simply a first start.
const QUIET: &str = "buoyant_kernel=warn,buoyant_kernel::snapshot::builder=off,deltalake_core=warn,deltalake=warn,tokio_postgres=warn";

/// Starts logging to standard error; `RUST_LOG` overrides the configured level.
pub fn init_logging(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(format!("{QUIET},{}", config.level)))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match config.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
        LogFormat::Text => builder.init(),
    }
}

/// Latency buckets (seconds): fine below 100 ms, where the targets are.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const SIZE_BUCKETS: &[f64] = &[
    1.0,
    10.0,
    100.0,
    1_000.0,
    10_000.0,
    100_000.0,
    1_000_000.0,
    10_000_000.0,
];

/// Serves `/metrics` on `listen` (empty: metrics are recorded but not served).
pub fn init_metrics(listen: &str) -> anyhow::Result<()> {
    let mut builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("seconds".into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("rows".into()), SIZE_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("bytes".into()), SIZE_BUCKETS)?;
    if listen.is_empty() {
        builder
            .install_recorder()
            .context("installing the metrics recorder")?;
        return Ok(());
    }
    let addr: std::net::SocketAddr = listen
        .parse()
        .with_context(|| format!("metrics.listen = {listen:?}"))?;
    builder = builder.with_http_listener(addr);
    builder.install().with_context(|| {
        format!("serving Prometheus metrics on {addr} (is the port taken? set metrics.listen)")
    })?;
    describe();
    tracing::info!(%addr, "Prometheus metrics at http://{addr}/metrics");
    Ok(())
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "lily_changes_read_total",
        Unit::Count,
        "Row changes read from the replication slot, per table"
    );
    describe_counter!(
        "lily_changes_written_total",
        Unit::Count,
        "Row changes durably written, per sink and table"
    );
    describe_counter!(
        "lily_errors_total",
        Unit::Count,
        "Errors, per stage and kind"
    );
    describe_histogram!("lily_batch_rows", Unit::Count, "Rows per change batch");
    describe_histogram!(
        "lily_batch_bytes",
        Unit::Bytes,
        "Payload bytes per flush of the reader"
    );
    describe_histogram!(
        "lily_commit_to_sink_seconds",
        Unit::Seconds,
        "From a transaction's commit in PostgreSQL to its durable write in a sink"
    );
    describe_histogram!(
        "lily_sink_flush_seconds",
        Unit::Seconds,
        "Duration of a sink flush"
    );
    describe_gauge!(
        "lily_slot_lag_bytes",
        Unit::Bytes,
        "WAL between the server's end and the slot's confirmed position"
    );
    describe_gauge!(
        "lily_slot_lag_seconds",
        Unit::Seconds,
        "Age of the oldest commit not yet confirmed"
    );
    describe_gauge!(
        "lily_slot_confirmed_lsn",
        "The slot's confirmed flush position"
    );
    describe_gauge!(
        "lily_slot_lag_over_budget",
        "1 when the slot retains more WAL than replication.max_lag_bytes"
    );
}
