//! Every sink gets every batch, each through its own bounded queue, so the
//! slowest sink sets the pace (backpressure, not buffering).

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::SinkRunner;
use crate::batch::ChangeBatch;

/// The running sinks of one pipeline and the task feeding them.
pub struct Fanout {
    feeder: JoinHandle<()>,
    runners: Vec<JoinHandle<()>>,
}

impl Fanout {
    /// Starts `runners`, each with a queue of `capacity` batches, fed from
    /// `input`; `before_each` sees every batch before any sink does. The
    /// runners stop when `input` closes (after a last flush) or `abort`
    /// turns true.
    pub fn start(
        mut input: mpsc::Receiver<Arc<ChangeBatch>>,
        runners: Vec<SinkRunner>,
        capacity: usize,
        mut before_each: impl FnMut(&ChangeBatch) + Send + 'static,
        abort: watch::Receiver<bool>,
    ) -> Self {
        let mut queues = Vec::with_capacity(runners.len());
        let mut tasks = Vec::with_capacity(runners.len());
        for runner in runners {
            let (tx, rx) = mpsc::channel(capacity.max(1));
            tasks.push(tokio::spawn(runner.run(rx, abort.clone())));
            queues.push(tx);
        }
        let feeder = tokio::spawn(async move {
            while let Some(batch) = input.recv().await {
                before_each(&batch);
                for queue in &queues {
                    if queue.send(batch.clone()).await.is_err() {
                        return;
                    }
                }
            }
        });
        Self {
            feeder,
            runners: tasks,
        }
    }

    /// Waits until the feeder and every runner have stopped.
    pub async fn join(self) {
        let _ = self.feeder.await;
        for task in self.runners {
            let _ = task.await;
        }
    }
}
