//! The current policy snapshot, shared by the pipeline that compiles it and
//! the sessions that read it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use lily_cdc::sink::Backoff;
use lily_cdc::wire::PgConnect;
use tokio::sync::{Mutex, watch};
use tracing::{info, warn};

use super::snapshot::PolicySnapshot;
use crate::error::{EnforcementError, Result};

/// Whether the current snapshot holds every change seen so far.
#[derive(Debug, Default)]
struct Freshness {
    /// Grows with every invalidation: a compilation makes the snapshot
    /// fresh only if no change arrived after it started reading.
    changes: u64,
    stale: bool,
}

/// The current snapshot. From the moment a change to policies or tags
/// reaches the pipeline until its snapshot is compiled, the store is stale:
/// governed statements wait for the new snapshot, and are refused if it
/// does not come (fail closed), so a tag that has committed is never ignored.
pub struct PolicyStore {
    current: RwLock<Arc<PolicySnapshot>>,
    freshness: std::sync::Mutex<Freshness>,
    compiled: watch::Sender<u64>,
    next_version: AtomicU64,
    connect: PgConnect,
    compiling: Mutex<()>,
}

impl std::fmt::Debug for PolicyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyStore")
            .field("version", &self.snapshot().version)
            .field("stale", &self.is_stale())
            .finish()
    }
}

impl PolicyStore {
    /// A store that compiles from the metastore at `url`; empty until [`PolicyStore::refresh`].
    pub fn new(url: &str) -> Result<Arc<Self>> {
        let connect = PgConnect::parse(url).map_err(|e| EnforcementError::Config(e.to_string()))?;
        Ok(Arc::new(Self {
            current: RwLock::new(Arc::new(PolicySnapshot::default())),
            freshness: std::sync::Mutex::new(Freshness {
                changes: 0,
                stale: true,
            }),
            compiled: watch::Sender::new(0),
            next_version: AtomicU64::new(1),
            connect,
            compiling: Mutex::new(()),
        }))
    }

    /// The snapshot statements are planned against now; while a known
    /// change is being compiled, waits for it up to `wait`, then errs.
    pub async fn current(&self, wait: Duration) -> Result<Arc<PolicySnapshot>> {
        let mut compiled = self.compiled.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        while self.is_stale() {
            if tokio::time::timeout_at(deadline, compiled.changed())
                .await
                .is_err()
            {
                return Err(EnforcementError::PoliciesStale);
            }
        }
        Ok(self.snapshot())
    }

    /// Changes with every snapshot compiled (to its version): what pullers
    /// and the downstream enforcement wait on.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.compiled.subscribe()
    }

    /// What an enforcement point beside the pipeline follows the snapshot
    /// with: a pass now, after every snapshot compiled from then on and,
    /// with `recheck`, at least that often, until `shutdown`; a failed pass
    /// is counted (`lily_errors_total{stage}`), logged and retried with
    /// backoff.
    pub fn follower(
        &self,
        stage: &'static str,
        recheck: Option<Duration>,
        shutdown: watch::Receiver<bool>,
    ) -> SnapshotFollower {
        SnapshotFollower {
            stage,
            recheck,
            shutdown,
            compiled: self.subscribe(),
            backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
            retry: None,
            started: false,
        }
    }

    /// The last snapshot compiled, stale or not.
    pub fn snapshot(&self) -> Arc<PolicySnapshot> {
        match self.current.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn freshness(&self) -> std::sync::MutexGuard<'_, Freshness> {
        match self.freshness.lock() {
            Ok(f) => f,
            Err(p) => p.into_inner(),
        }
    }

    fn is_stale(&self) -> bool {
        self.freshness().stale
    }

    /// Marks the snapshot out of date: governed statements wait for
    /// [`PolicyStore::refresh`].
    pub fn invalidate(&self) {
        let mut f = self.freshness();
        f.changes += 1;
        f.stale = true;
    }

    /// Compiles a new snapshot from the metastore and makes it current.
    pub async fn refresh(&self) -> Result<Arc<PolicySnapshot>> {
        let _one_at_a_time = self.compiling.lock().await;
        let started = Instant::now();
        let changes = self.freshness().changes;
        let result = async {
            let mut client =
                self.connect
                    .connect()
                    .await
                    .map_err(|source| EnforcementError::Sql {
                        context: "connecting to compile policies",
                        source,
                    })?;
            let version = self.next_version.load(Ordering::Relaxed);
            PolicySnapshot::compile(&mut client, version).await
        }
        .await;
        match result {
            Ok(snapshot) => {
                self.next_version
                    .store(snapshot.version + 1, Ordering::Relaxed);
                let snapshot = Arc::new(snapshot);
                match self.current.write() {
                    Ok(mut s) => *s = snapshot.clone(),
                    Err(poisoned) => *poisoned.into_inner() = snapshot.clone(),
                }
                {
                    let mut f = self.freshness();
                    if f.changes == changes {
                        f.stale = false;
                    }
                }
                self.compiled.send_replace(snapshot.version);
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                metrics::histogram!("lily_sql_policy_compile_ms").record(ms);
                metrics::gauge!("lily_sql_policy_version").set(snapshot.version as f64);
                info!(
                    version = snapshot.version,
                    tenants = snapshot.tenants.len(),
                    ms = ms as u64,
                    "policy snapshot compiled"
                );
                Ok(snapshot)
            }
            Err(e) => {
                self.invalidate();
                metrics::counter!("lily_errors_total", "stage" => "policies", "kind" => "compile")
                    .increment(1);
                warn!(error = %e, "policies could not be compiled; governed statements are refused until they are");
                Err(e)
            }
        }
    }
}

/// The passes of one follower of the snapshot ([`PolicyStore::follower`]):
/// `while f.next().await { f.done(pass().await) }`.
pub struct SnapshotFollower {
    stage: &'static str,
    recheck: Option<Duration>,
    shutdown: watch::Receiver<bool>,
    compiled: watch::Receiver<u64>,
    backoff: Backoff,
    retry: Option<Duration>,
    started: bool,
}

impl SnapshotFollower {
    /// Waits until the next pass is due; false once it is time to stop.
    pub async fn next(&mut self) -> bool {
        if self.started {
            // The next snapshot, or the retry after a failure, or the recheck.
            let wait = self.retry.or(self.recheck);
            tokio::select! {
                changed = self.compiled.changed() => {
                    if changed.is_err() {
                        return false;
                    }
                }
                _ = tokio::time::sleep(wait.unwrap_or_default()), if wait.is_some() => {}
                _ = self.shutdown.changed() => return false,
            }
        }
        self.started = true;
        self.compiled.borrow_and_update();
        !*self.shutdown.borrow()
    }

    /// Records how a pass went.
    pub fn done(&mut self, result: std::result::Result<(), String>) {
        self.retry = match result {
            Ok(()) => {
                self.backoff.reset();
                None
            }
            Err(e) => {
                metrics::counter!("lily_errors_total", "stage" => self.stage, "kind" => "pass")
                    .increment(1);
                let delay = self.backoff.next_delay();
                warn!(stage = self.stage, error = %e, retry_in_ms = delay.as_millis() as u64, "retrying");
                Some(delay)
            }
        };
    }
}
