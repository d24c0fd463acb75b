//! A sink wrapper that fails on command, for tests of what the pipeline
//! does when a destination refuses data, goes away or hangs.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::{Sink, SinkError};
use crate::batch::ChangeBatch;
use crate::lsn::Lsn;

/// What the wrapped sink does instead of its next write or flush.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Refuse the batch ([`SinkError::Rejected`]).
    Refuse,
    /// Fail as unreachable ([`SinkError::Unavailable`]).
    Fail,
    /// Never answer (until the runner is aborted).
    Hang,
}

/// The faults waiting to happen: shared between a test and its injector.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    inner: Arc<Mutex<FaultQueue>>,
}

#[derive(Debug, Default)]
struct FaultQueue {
    on_write: VecDeque<Fault>,
    on_flush: VecDeque<Fault>,
    refuse_tables: Vec<(String, usize)>,
    /// Fail every other write and flush, when set; the count so far.
    flaky: Option<u64>,
}

impl Faults {
    fn lock(&self) -> std::sync::MutexGuard<'_, FaultQueue> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next write does `fault` instead.
    pub fn next_write(&self, fault: Fault) {
        self.lock().on_write.push_back(fault);
    }

    /// The next flush does `fault` instead.
    pub fn next_flush(&self, fault: Fault) {
        self.lock().on_flush.push_back(fault);
    }

    /// From now on every other write and flush fails as unavailable.
    pub fn fail_every_other_call(&self) {
        self.lock().flaky = Some(0);
    }

    fn flaky(q: &mut FaultQueue) -> Option<Fault> {
        let n = q.flaky.as_mut()?;
        *n += 1;
        (*n % 2 == 1).then_some(Fault::Fail)
    }

    /// The next `times` batches of `table` (`schema.table`) are refused.
    pub fn refuse_table(&self, table: &str, times: usize) {
        self.lock().refuse_tables.push((table.to_owned(), times));
    }

    fn take_write(&self, batch: &ChangeBatch) -> Option<Fault> {
        let mut q = self.lock();
        if let Some(f) = q.on_write.pop_front() {
            return Some(f);
        }
        if let Some(f) = Self::flaky(&mut q) {
            return Some(f);
        }
        let table = batch.table.qualified_name();
        let hit = q
            .refuse_tables
            .iter_mut()
            .find(|(t, n)| *t == table && *n > 0)?;
        hit.1 -= 1;
        Some(Fault::Refuse)
    }

    fn take_flush(&self) -> Option<Fault> {
        let mut q = self.lock();
        q.on_flush.pop_front().or_else(|| Self::flaky(&mut q))
    }
}

/// Wraps a sink; does what [`Faults`] says before passing calls through.
pub struct FaultInjector {
    inner: Box<dyn Sink>,
    faults: Faults,
}

impl FaultInjector {
    /// Wraps `inner`; `faults` commands it.
    pub fn new(inner: Box<dyn Sink>, faults: Faults) -> Self {
        Self { inner, faults }
    }

    async fn act(&self, fault: Fault) -> Result<(), SinkError> {
        let sink = self.inner.name().to_owned();
        match fault {
            Fault::Refuse => Err(SinkError::Rejected {
                sink,
                message: "refused by the fault injector".into(),
            }),
            Fault::Fail => Err(SinkError::Unavailable {
                sink,
                message: "failed by the fault injector".into(),
            }),
            Fault::Hang => std::future::pending().await,
        }
    }
}

#[async_trait::async_trait]
impl Sink for FaultInjector {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn write(&mut self, batch: Arc<ChangeBatch>) -> Result<(), SinkError> {
        if let Some(fault) = self.faults.take_write(&batch) {
            return self.act(fault).await;
        }
        self.inner.write(batch).await
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        if let Some(fault) = self.faults.take_flush() {
            return self.act(fault).await;
        }
        self.inner.flush().await
    }

    fn buffered_rows(&self) -> usize {
        self.inner.buffered_rows()
    }

    async fn discard_snapshot(&mut self, snapshot_lsn: Lsn) -> Result<(), SinkError> {
        self.inner.discard_snapshot(snapshot_lsn).await
    }

    fn transform_input(&self) -> Option<Vec<arrow::datatypes::Field>> {
        self.inner.transform_input()
    }
}
