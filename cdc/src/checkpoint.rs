//! The checkpoint rule: the slot's confirmed flush position moves only after
//! every sink has durably taken everything up to it.
//!
//! The reader numbers its batches. When a transaction ends (or the server
//! tells us, with nothing in flight, how far it has read) the reader records
//! "LSN X may be confirmed once every sink is durable through batch N". Sinks
//! report the highest batch number they have made durable; the confirmed LSN
//! is the largest X whose batch every sink has passed.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::lsn::Lsn;

/// The reader's number of a change batch: 1, 2, 3, ... in stream order
/// within one run of the reader (0: none yet).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BatchSeq(pub u64);

impl BatchSeq {
    /// No batch yet.
    pub const ZERO: BatchSeq = BatchSeq(0);

    /// The batch after this one.
    pub fn next(self) -> BatchSeq {
        BatchSeq(self.0 + 1)
    }
}

impl std::fmt::Display for BatchSeq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

#[derive(Debug)]
struct Pending {
    batch_seq: BatchSeq,
    lsn: Lsn,
    commit_micros: i64,
}

#[derive(Debug, Default)]
struct State {
    pending: VecDeque<Pending>,
    sinks: Vec<(String, BatchSeq)>,
    confirmed: Lsn,
    confirmed_commit_micros: i64,
}

/// Shared between the reader and the sinks; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct AckTracker {
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
}

/// A sink's handle for reporting durable progress.
#[derive(Debug, Clone)]
pub struct SinkAck {
    tracker: AckTracker,
    index: usize,
}

impl SinkAck {
    /// Everything in batches up to and including `batch_seq` is durable in this sink.
    pub fn durable_through(&self, batch_seq: BatchSeq) {
        self.tracker.sink_durable(self.index, batch_seq);
    }

    /// The sink's name.
    pub fn name(&self) -> String {
        self.tracker.lock().sinks[self.index].0.clone()
    }
}

impl AckTracker {
    /// A tracker that confirms nothing until the reader records positions.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves consistent data behind (every
        // update is a single assignment or push), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a sink; every registered sink must acknowledge a batch before its LSN is confirmed.
    pub fn register_sink(&self, name: impl Into<String>) -> SinkAck {
        let mut s = self.lock();
        s.sinks.push((name.into(), BatchSeq::ZERO));
        SinkAck {
            tracker: self.clone(),
            index: s.sinks.len() - 1,
        }
    }

    /// `lsn` may be confirmed once every sink is durable through `batch_seq`.
    pub fn confirm_after(&self, batch_seq: BatchSeq, lsn: Lsn, commit_micros: i64) {
        let mut s = self.lock();
        if s.pending.back().is_some_and(|p| p.lsn >= lsn) || s.confirmed >= lsn {
            return;
        }
        s.pending.push_back(Pending {
            batch_seq,
            lsn,
            commit_micros,
        });
        Self::advance(&mut s);
        drop(s);
        self.changed.notify_waiters();
    }

    fn sink_durable(&self, index: usize, batch_seq: BatchSeq) {
        let mut s = self.lock();
        if let Some(entry) = s.sinks.get_mut(index) {
            entry.1 = entry.1.max(batch_seq);
        }
        Self::advance(&mut s);
        drop(s);
        self.changed.notify_waiters();
    }

    fn advance(s: &mut State) {
        let durable = s
            .sinks
            .iter()
            .map(|(_, seq)| *seq)
            .min()
            .unwrap_or(BatchSeq(u64::MAX));
        while s.pending.front().is_some_and(|p| p.batch_seq <= durable) {
            if let Some(p) = s.pending.pop_front() {
                s.confirmed = p.lsn;
                s.confirmed_commit_micros = p.commit_micros;
            }
        }
    }

    /// The LSN that may be reported to the server as flushed.
    pub fn confirmed(&self) -> Lsn {
        self.lock().confirmed
    }

    /// Sets the starting point (the slot's confirmed flush position on startup).
    pub fn start_at(&self, lsn: Lsn) {
        let mut s = self.lock();
        s.confirmed = s.confirmed.max(lsn);
    }

    /// Commit time (µs since the Unix epoch) of the oldest transaction not yet
    /// confirmed, if any: how far behind the sinks are.
    pub fn oldest_unconfirmed_commit(&self) -> Option<i64> {
        self.lock()
            .pending
            .iter()
            .map(|p| p.commit_micros)
            .filter(|t| *t > 0)
            .min()
    }

    /// The slowest sink's durable batch number.
    pub fn min_durable(&self) -> BatchSeq {
        self.lock()
            .sinks
            .iter()
            .map(|(_, seq)| *seq)
            .min()
            .unwrap_or(BatchSeq(u64::MAX))
    }

    /// Waits until every sink is durable through `batch_seq`.
    pub async fn wait_durable(&self, batch_seq: BatchSeq) {
        loop {
            let notified = self.changed.notified();
            if self.min_durable() >= batch_seq {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirms_only_what_every_sink_has() {
        let t = AckTracker::new();
        let a = t.register_sink("a");
        let b = t.register_sink("b");
        t.confirm_after(BatchSeq(2), Lsn(100), 1);
        t.confirm_after(BatchSeq(5), Lsn(200), 2);
        assert_eq!(t.confirmed(), Lsn(0));
        a.durable_through(BatchSeq(5));
        assert_eq!(t.confirmed(), Lsn(0), "b has nothing yet");
        b.durable_through(BatchSeq(3));
        assert_eq!(t.confirmed(), Lsn(100));
        b.durable_through(BatchSeq(5));
        assert_eq!(t.confirmed(), Lsn(200));
        assert_eq!(t.oldest_unconfirmed_commit(), None);
    }

    #[test]
    fn positions_never_go_backwards() {
        let t = AckTracker::new();
        t.start_at(Lsn(500));
        t.confirm_after(BatchSeq::ZERO, Lsn(400), 0);
        assert_eq!(t.confirmed(), Lsn(500));
    }
}
