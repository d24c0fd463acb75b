//! Drives one sink: feeds it batches, flushes on size or time, retries a
//! failing destination with backoff, and acknowledges what is durable.

use std::sync::Arc;
use std::time::Duration;

use lily_cdc::{ChangeBatch, SinkAck};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{Instrument, debug, info, warn};

use crate::{Sink, SinkError};

/// When a sink flushes.
#[derive(Debug, Clone, Copy)]
pub struct FlushPolicy {
    /// Flush once this many rows are buffered...
    pub max_rows: usize,
    /// ...or this long after the first unflushed batch arrived.
    pub max_wait: Duration,
}

/// Runs a sink until its input closes.
pub struct SinkRunner {
    sink: Box<dyn Sink>,
    ack: SinkAck,
    policy: FlushPolicy,
    last_seq: u64,
    oldest_commit_micros: Option<i64>,
    flush_deadline: Option<Instant>,
    written: Vec<(String, u64)>,
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

impl SinkRunner {
    /// A runner for `sink`, acknowledging through `ack`.
    pub fn new(sink: Box<dyn Sink>, ack: SinkAck, policy: FlushPolicy) -> Self {
        SinkRunner {
            sink,
            ack,
            policy,
            last_seq: 0,
            oldest_commit_micros: None,
            flush_deadline: None,
            written: Vec::new(),
        }
    }

    /// Runs until `input` closes (then flushes what is left) or `abort` turns true.
    pub async fn run(self, input: mpsc::Receiver<Arc<ChangeBatch>>, abort: watch::Receiver<bool>) {
        let span = tracing::info_span!("sink", name = %self.sink.name());
        self.run_inner(input, abort).instrument(span).await
    }

    async fn run_inner(
        mut self,
        mut input: mpsc::Receiver<Arc<ChangeBatch>>,
        mut abort: watch::Receiver<bool>,
    ) {
        let name = self.sink.name().to_string();
        loop {
            let deadline = self.flush_deadline;
            tokio::select! {
                _ = abort.changed() => return,
                batch = input.recv() => match batch {
                    Some(batch) => {
                        if !self.write(batch, &mut abort).await {
                            return;
                        }
                        if self.sink.buffered_rows() >= self.policy.max_rows && !self.flush(&mut abort).await {
                            return;
                        }
                    }
                    None => {
                        self.flush(&mut abort).await;
                        info!(sink = %name, "sink stopped");
                        return;
                    }
                },
                _ = sleep_until(deadline) => {
                    if !self.flush(&mut abort).await {
                        return;
                    }
                }
            }
        }
    }

    async fn write(&mut self, batch: Arc<ChangeBatch>, abort: &mut watch::Receiver<bool>) -> bool {
        let seq = batch.seq;
        let commit = batch.first_commit_micros;
        let table = batch.table.qualified_name();
        let rows = batch.num_rows() as u64;
        let mut attempt = 0u32;
        loop {
            match self.sink.write(batch.clone()).await {
                Ok(()) => break,
                Err(e) => {
                    if !self.backoff(&e, &mut attempt, abort).await {
                        return false;
                    }
                }
            }
        }
        self.last_seq = seq;
        self.oldest_commit_micros =
            Some(self.oldest_commit_micros.map_or(commit, |o| o.min(commit)));
        self.flush_deadline
            .get_or_insert_with(|| Instant::now() + self.policy.max_wait);
        match self.written.iter_mut().find(|(t, _)| *t == table) {
            Some((_, n)) => *n += rows,
            None => self.written.push((table, rows)),
        }
        true
    }

    /// Flushes until it succeeds (an outage holds the pipeline, it never drops data).
    async fn flush(&mut self, abort: &mut watch::Receiver<bool>) -> bool {
        if self.flush_deadline.is_none() {
            self.ack.durable_through(self.last_seq);
            return true;
        }
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            match self.sink.flush().await {
                Ok(()) => break,
                Err(e) => {
                    if !self.backoff(&e, &mut attempt, abort).await {
                        return false;
                    }
                }
            }
        }
        let sink = self.sink.name().to_string();
        metrics::histogram!("lily_sink_flush_seconds", "sink" => sink.clone())
            .record(started.elapsed().as_secs_f64());
        if let Some(oldest) = self.oldest_commit_micros.take() {
            let latency = (now_micros() - oldest).max(0) as f64 / 1e6;
            metrics::histogram!("lily_commit_to_sink_seconds", "sink" => sink.clone())
                .record(latency);
        }
        for (table, rows) in self.written.drain(..) {
            metrics::counter!("lily_changes_written_total", "sink" => sink.clone(), "table" => table).increment(rows);
        }
        self.flush_deadline = None;
        self.ack.durable_through(self.last_seq);
        debug!(through_batch = self.last_seq, "flushed");
        true
    }

    async fn backoff(
        &self,
        e: &SinkError,
        attempt: &mut u32,
        abort: &mut watch::Receiver<bool>,
    ) -> bool {
        *attempt += 1;
        let kind = match e {
            SinkError::Unavailable { .. } => "unavailable",
            SinkError::Rejected { .. } => "rejected",
        };
        metrics::counter!("lily_errors_total", "stage" => "sink", "sink" => self.sink.name().to_string(), "kind" => kind)
            .increment(1);
        let delay = Duration::from_millis(100u64.saturating_mul(1 << (*attempt).min(8)));
        warn!(sink = %self.sink.name(), error = %e, attempt = *attempt, retry_in_ms = delay.as_millis() as u64, "sink failed; retrying");
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = abort.changed() => false,
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
