//! Drains one target's queue: in order, at the vendor's pace, retrying what
//! is worth retrying with backoff, and moving what still fails to the
//! dead-letter store. Each target has its own worker, so a slow or broken
//! tool holds up only its own queue.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

use super::event::Notification;
use super::outbox::{Outbox, Queued};
use super::refs::SubjectRefs;
use super::target::{DeliveryContext, DeliveryError, Target};
use lily_cdc::sink::dead_letter::{DeadLetters, NewDeadLetter};

/// At most `rate` deliveries a second, one at a time.
#[derive(Debug)]
pub struct RateLimit {
    interval: Duration,
    next: Instant,
}

impl RateLimit {
    /// A limit of `rate_per_sec` (at least one an hour).
    pub fn new(rate_per_sec: f64) -> Self {
        let rate = rate_per_sec.max(1.0 / 3600.0);
        Self {
            interval: Duration::from_secs_f64(1.0 / rate),
            next: Instant::now(),
        }
    }

    /// Waits for the next slot and takes it.
    pub async fn acquire(&mut self) {
        let now = Instant::now();
        if self.next > now {
            tokio::time::sleep(self.next - now).await;
        }
        self.next = self.next.max(Instant::now()) + self.interval;
    }

    /// Nothing is sent before `wait` from now (a vendor's Retry-After).
    pub fn hold(&mut self, wait: Duration) {
        self.next = self.next.max(Instant::now() + wait);
    }
}

/// How a worker retries.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts before a notification becomes a dead letter.
    pub max_attempts: u32,
    /// First backoff; doubled each attempt.
    pub base: Duration,
    /// Longest backoff.
    pub cap: Duration,
}

impl RetryPolicy {
    /// The wait before attempt `attempts + 1`.
    pub fn backoff(&self, attempts: u32) -> Duration {
        self.base
            .saturating_mul(1u32 << attempts.min(16))
            .min(self.cap)
    }
}

/// Drains the queue of one target.
pub struct DeliveryWorker {
    /// Target name.
    pub name: String,
    /// The vendor's renderer.
    pub target: Box<dyn Target>,
    /// The queue.
    pub outbox: Outbox,
    /// Tickets opened earlier.
    pub refs: SubjectRefs,
    /// Where what cannot be delivered goes.
    pub dead_letters: DeadLetters,
    /// The pace.
    pub rate: RateLimit,
    /// Retries.
    pub retry: RetryPolicy,
    /// Woken when notifications are queued.
    pub wake: Arc<Notify>,
}

/// How often the queue is looked at when nothing wakes the worker (a
/// replayed dead letter, a retry coming due).
const POLL: Duration = Duration::from_secs(1);
/// How long delivered notifications are kept for deduplication.
const KEEP_DELIVERED: Duration = Duration::from_secs(24 * 3600);

enum Outcome {
    Delivered,
    RetryLater,
    Dead,
}

impl DeliveryWorker {
    /// Runs until `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let span = info_span!("notify", target = %self.name);
        async move {
            info!("delivery worker started");
            let mut last_prune = Instant::now();
            while !*shutdown.borrow() {
                if last_prune.elapsed() > Duration::from_secs(3600) {
                    if let Err(e) = self.outbox.prune(KEEP_DELIVERED).await {
                        warn!(error = %e, "pruning the outbox failed");
                    }
                    last_prune = Instant::now();
                }
                let pause = match self.drain().await {
                    Ok(pause) => pause,
                    Err(e) => {
                        metrics::counter!("lily_errors_total", "stage" => "notify", "kind" => "outbox")
                            .increment(1);
                        warn!(error = %e, "the outbox is unreachable; retrying");
                        Some(POLL)
                    }
                };
                if let Ok(n) = self.outbox.backlog(&self.name).await {
                    metrics::gauge!("lily_notify_backlog", "target" => self.name.clone())
                        .set(n as f64);
                }
                let wait = pause.unwrap_or(POLL);
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => {}
                }
            }
            info!("delivery worker stopped");
        }
        .instrument(span)
        .await
    }

    /// Delivers what is due, in order; stops at the first notification that
    /// must wait, and says how long.
    async fn drain(&mut self) -> Result<Option<Duration>, super::outbox::OutboxError> {
        loop {
            let head = self.outbox.head(&self.name, 64).await?;
            if head.is_empty() {
                return Ok(None);
            }
            for item in head {
                if !item.wait.is_zero() {
                    return Ok(Some(item.wait.min(POLL * 30)));
                }
                match self.attempt(&item).await? {
                    Outcome::Delivered | Outcome::Dead => {}
                    // Order matters (a comment after its issue): the queue
                    // waits for its head.
                    Outcome::RetryLater => return Ok(Some(Duration::ZERO)),
                }
            }
        }
    }

    async fn attempt(&mut self, item: &Queued) -> Result<Outcome, super::outbox::OutboxError> {
        let notification: Notification = match serde_json::from_value(item.event.clone()) {
            Ok(n) => n,
            Err(e) => {
                let error = format!("the queued notification does not parse: {e}");
                return self.bury(item, None, "bad_event", &error).await;
            }
        };
        self.rate.acquire().await;
        let started = Instant::now();
        let cx = DeliveryContext {
            target: &self.name,
            refs: &self.refs,
        };
        let result = self.target.deliver(&notification, &cx).await;
        metrics::histogram!("lily_notify_delivery_seconds", "target" => self.name.clone())
            .record(started.elapsed().as_secs_f64());
        let count = |outcome: &'static str| {
            metrics::counter!("lily_notify_deliveries_total", "target" => self.name.clone(), "outcome" => outcome)
                .increment(1)
        };
        match result {
            Ok(()) => {
                count("delivered");
                debug!(subject = %notification.subject, action = notification.action.as_str(), "delivered");
                self.outbox.delivered(item.id).await?;
                Ok(Outcome::Delivered)
            }
            Err(e @ DeliveryError::Refused { .. }) => {
                count("refused");
                self.bury(item, Some(&notification), &e.code(), &e.to_string())
                    .await
            }
            Err(DeliveryError::Retry { message, after }) => {
                let attempts = item.attempts.max(0) as u32 + 1;
                if attempts >= self.retry.max_attempts {
                    count("dead");
                    let error = format!("{message} (gave up after {attempts} attempts)");
                    return self
                        .bury(item, Some(&notification), "retries_exhausted", &error)
                        .await;
                }
                count("retry");
                let wait = after
                    .unwrap_or_default()
                    .max(self.retry.backoff(attempts - 1));
                if let Some(after) = after {
                    self.rate.hold(after);
                }
                metrics::counter!("lily_errors_total", "stage" => "notify", "kind" => "delivery")
                    .increment(1);
                warn!(error = %message, attempts, retry_in_ms = wait.as_millis() as u64, subject = %notification.subject, "delivery failed; will retry");
                self.outbox.retry_later(item.id, wait, &message).await?;
                Ok(Outcome::RetryLater)
            }
        }
    }

    /// Moves `item` to the dead-letter store; the queue goes on.
    async fn bury(
        &self,
        item: &Queued,
        n: Option<&Notification>,
        code: &str,
        error: &str,
    ) -> Result<Outcome, super::outbox::OutboxError> {
        let payload = serde_json::to_vec(&item.event).unwrap_or_default();
        let dedupe = n.map(|n| n.dedupe_key.as_str()).unwrap_or("?");
        let reference = format!("{}:{dedupe}", self.name);
        warn!(error, code, reference, "notification kept as a dead letter");
        self.dead_letters
            .record(&NewDeadLetter {
                source: crate::registry::source::NOTIFY,
                tenant_id: n.map(|n| n.tenant_id.as_str()),
                reference: &reference,
                error_code: code,
                error,
                payload: Some(&payload),
                details: json!({"target": self.name, "outbox_id": item.id}),
            })
            .await
            .map_err(|e| super::outbox::OutboxError::from_message(e.to_string()))?;
        self.outbox.dead(item.id, error).await?;
        Ok(Outcome::Dead)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let p = RetryPolicy {
            max_attempts: 5,
            base: Duration::from_secs(1),
            cap: Duration::from_secs(10),
        };
        assert_eq!(p.backoff(0), Duration::from_secs(1));
        assert_eq!(p.backoff(2), Duration::from_secs(4));
        assert_eq!(p.backoff(9), Duration::from_secs(10));
    }

    #[tokio::test]
    async fn the_rate_limit_spaces_deliveries() {
        let mut r = RateLimit::new(20.0);
        let start = Instant::now();
        r.acquire().await;
        r.acquire().await;
        r.acquire().await;
        assert!(start.elapsed() >= Duration::from_millis(100));
        r.hold(Duration::from_millis(200));
        let held = Instant::now();
        r.acquire().await;
        assert!(held.elapsed() >= Duration::from_millis(190));
    }
}
