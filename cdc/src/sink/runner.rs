//! Drives one sink: feeds it batches, flushes on size or time, retries an
//! unavailable destination with backoff, dead-letters what the destination
//! refuses, and acknowledges what is durable or dead-lettered.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{Instrument, debug, error, info, warn};

use super::dead_letter::{ChangesRefused, DeadLetters};
use super::{Backoff, Sink, SinkError};
use crate::batch::ChangeBatch;
use crate::checkpoint::{BatchSeq, SinkAck};

/// When a sink flushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushPolicy {
    /// Flush once this many rows are buffered...
    pub max_rows: usize,
    /// ...or this long after the first unflushed batch arrived.
    pub max_wait: Duration,
}

/// First and longest wait between attempts at an unavailable destination.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Runs a sink until its input closes.
pub struct SinkRunner {
    sink: Box<dyn Sink>,
    ack: SinkAck,
    policy: FlushPolicy,
    dead_letters: DeadLetters,
    source: String,
    last_seq: BatchSeq,
    oldest_commit_micros: Option<i64>,
    flush_deadline: Option<Instant>,
    /// Batches written since the last flush: what a refused flush dead-letters.
    unflushed: Vec<Arc<ChangeBatch>>,
    written: Vec<(String, u64)>,
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

/// What one attempt came to.
enum Step {
    Done,
    Refused(SinkError),
    Aborted,
}

impl SinkRunner {
    /// A runner for `sink`, acknowledging through `ack`; what the sink
    /// refuses goes to `dead_letters` under `source` (the sink's kind).
    pub fn new(
        sink: Box<dyn Sink>,
        ack: SinkAck,
        policy: FlushPolicy,
        dead_letters: DeadLetters,
        source: impl Into<String>,
    ) -> Self {
        SinkRunner {
            sink,
            ack,
            policy,
            dead_letters,
            source: source.into(),
            last_seq: BatchSeq::ZERO,
            oldest_commit_micros: None,
            flush_deadline: None,
            unflushed: Vec::new(),
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
        let mut backoff = Backoff::new(RETRY_FIRST, RETRY_MAX);
        let step = loop {
            match self.sink.write(batch.clone()).await {
                Ok(()) => break Step::Done,
                Err(e @ SinkError::Rejected { .. }) => break Step::Refused(e),
                Err(e) => {
                    if !self.retry_after(&e, &mut backoff, abort).await {
                        break Step::Aborted;
                    }
                }
            }
        };
        match step {
            Step::Aborted => return false,
            Step::Refused(e) => {
                // The batch counts as taken: it is acknowledged with the
                // next flush, like the batches around it.
                if !self.refuse(std::slice::from_ref(&batch), &e, abort).await {
                    return false;
                }
            }
            Step::Done => {
                let table = batch.table.qualified_name();
                let rows = batch.num_rows() as u64;
                match self.written.iter_mut().find(|(t, _)| *t == table) {
                    Some((_, n)) => *n += rows,
                    None => self.written.push((table, rows)),
                }
                self.unflushed.push(batch.clone());
            }
        }
        self.last_seq = batch.seq;
        let commit = batch.first_commit_micros;
        self.oldest_commit_micros =
            Some(self.oldest_commit_micros.map_or(commit, |o| o.min(commit)));
        self.flush_deadline
            .get_or_insert_with(|| Instant::now() + self.policy.max_wait);
        true
    }

    /// Flushes until it succeeds or is refused: an outage holds the
    /// pipeline, a refusal is dead-lettered; neither drops data.
    async fn flush(&mut self, abort: &mut watch::Receiver<bool>) -> bool {
        if self.flush_deadline.is_none() {
            self.ack.durable_through(self.last_seq);
            return true;
        }
        let started = Instant::now();
        let mut backoff = Backoff::new(RETRY_FIRST, RETRY_MAX);
        let step = loop {
            match self.sink.flush().await {
                Ok(()) => break Step::Done,
                Err(e @ SinkError::Rejected { .. }) => break Step::Refused(e),
                Err(e) => {
                    if !self.retry_after(&e, &mut backoff, abort).await {
                        break Step::Aborted;
                    }
                }
            }
        };
        let unflushed = std::mem::take(&mut self.unflushed);
        match step {
            Step::Aborted => return false,
            Step::Refused(e) => {
                self.written.clear();
                if !self.refuse(&unflushed, &e, abort).await {
                    return false;
                }
            }
            Step::Done => {}
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
        debug!(through_batch = %self.last_seq, "flushed");
        true
    }

    /// Records `batches`, refused with `e`, as dead letters; retries the
    /// store (never the sink) until it takes them.
    async fn refuse(
        &mut self,
        batches: &[Arc<ChangeBatch>],
        e: &SinkError,
        abort: &mut watch::Receiver<bool>,
    ) -> bool {
        let sink = self.sink.name().to_owned();
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        metrics::counter!("lily_errors_total", "stage" => "sink", "sink" => sink.clone(), "kind" => e.kind())
            .increment(1);
        metrics::counter!("lily_sink_refused_rows_total", "sink" => sink.clone())
            .increment(rows as u64);
        error!(sink = %sink, error = %e, batches = batches.len(), rows, "sink refused changes; recording them as dead letters");
        let message = e.to_string();
        let mut backoff = Backoff::new(RETRY_FIRST, RETRY_MAX);
        for batch in batches {
            let refused = ChangesRefused {
                source: &self.source,
                sink: &sink,
                transform: None,
                error_code: "refused",
                error: &message,
            };
            while let Err(store) = self
                .dead_letters
                .bury_changes(refused, std::slice::from_ref(batch))
                .await
            {
                let wait = backoff.next_delay();
                warn!(sink = %sink, error = %store, retry_in_ms = wait.as_millis() as u64, "cannot record refused changes; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = abort.changed() => return false,
                }
            }
        }
        true
    }

    /// Counts `e` and waits before the next attempt; false when aborted meanwhile.
    async fn retry_after(
        &self,
        e: &SinkError,
        backoff: &mut Backoff,
        abort: &mut watch::Receiver<bool>,
    ) -> bool {
        let delay = backoff.next_delay();
        metrics::counter!("lily_errors_total", "stage" => "sink", "sink" => self.sink.name().to_string(), "kind" => e.kind())
            .increment(1);
        metrics::counter!("lily_sink_retries_total", "sink" => self.sink.name().to_string())
            .increment(1);
        warn!(sink = %self.sink.name(), error = %e, attempt = backoff.attempts(), retry_in_ms = delay.as_millis() as u64, "sink unavailable; retrying");
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
