//! Keeping the slot moving and watched: heartbeats so an idle database
//! never pins WAL, and the lag metrics.

use tracing::warn;

use super::{ChangeReader, HEARTBEAT_PREFIX};
use crate::lsn::Lsn;
use crate::wire::PG_EPOCH_OFFSET_MICROS;

impl ChangeReader {
    pub(super) fn spawn_heartbeat(&self) -> Option<tokio::task::JoinHandle<()>> {
        if self.config.heartbeat_interval.is_zero() {
            return None;
        }
        let sql = self.sql.clone();
        let every = self.config.heartbeat_interval;
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let r = sql
                    .execute(
                        "SELECT pg_logical_emit_message(false, $1, '')",
                        &[&HEARTBEAT_PREFIX],
                    )
                    .await;
                if let Err(e) = r {
                    warn!(error = %e, "heartbeat failed");
                    metrics::counter!("lily_errors_total", "stage" => "cdc", "kind" => "heartbeat")
                        .increment(1);
                }
            }
        }))
    }

    pub(super) fn record_lag(&self, confirmed: Lsn) {
        let lag_bytes = self.server_wal_end.bytes_after(confirmed);
        metrics::gauge!("lily_slot_lag_bytes").set(lag_bytes as f64);
        metrics::gauge!("lily_slot_confirmed_lsn").set(confirmed.0 as f64);
        let now = crate::wire::now_pg_micros() + PG_EPOCH_OFFSET_MICROS;
        let lag_seconds = self
            .acks
            .oldest_unconfirmed_commit()
            .map(|t| (now - t).max(0) as f64 / 1e6)
            .unwrap_or(0.0);
        metrics::gauge!("lily_slot_lag_seconds").set(lag_seconds);
        let over = lag_bytes > self.config.max_lag_bytes;
        metrics::gauge!("lily_slot_lag_over_budget").set(if over { 1.0 } else { 0.0 });
        if over {
            warn!(
                lag_bytes,
                budget = self.config.max_lag_bytes,
                "the slot retains more WAL than its budget: a sink is behind"
            );
        }
    }
}
