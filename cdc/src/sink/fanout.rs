//! Every sink gets every batch, each through its own bounded queue, so the
//! slowest sink sets the pace (backpressure, not buffering).

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::SinkRunner;
use crate::batch::ChangeBatch;

/// The running sinks of one pipeline and the task feeding them.
pub struct Fanout {
    feeder: JoinHandle<Option<String>>,
    runners: Vec<JoinHandle<()>>,
}

impl Fanout {
    /// Starts `runners`, each with a queue of `capacity` batches, fed from
    /// `input`; `before_each` sees every batch before any sink does (and
    /// is awaited), and an error from it stops the feeding: no sink gets
    /// that batch or any after it (they flush what they had and stop). The
    /// runners stop when `input` closes (after a last flush) or `abort`
    /// turns true.
    pub fn start<F, Fut>(
        mut input: mpsc::Receiver<Arc<ChangeBatch>>,
        runners: Vec<SinkRunner>,
        capacity: usize,
        mut before_each: F,
        abort: watch::Receiver<bool>,
    ) -> Self
    where
        F: FnMut(Arc<ChangeBatch>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), String>> + Send,
    {
        let mut queues = Vec::with_capacity(runners.len());
        let mut tasks = Vec::with_capacity(runners.len());
        for runner in runners {
            let (tx, rx) = mpsc::channel(capacity.max(1));
            tasks.push(tokio::spawn(runner.run(rx, abort.clone())));
            queues.push(tx);
        }
        let feeder = tokio::spawn(async move {
            while let Some(batch) = input.recv().await {
                if let Err(e) = before_each(batch.clone()).await {
                    return Some(e);
                }
                for queue in &queues {
                    if queue.send(batch.clone()).await.is_err() {
                        return None;
                    }
                }
            }
            None
        });
        Self {
            feeder,
            runners: tasks,
        }
    }

    /// Waits until the feeder and every runner have stopped; the error
    /// that stopped the feeding, if one did.
    pub async fn join(self) -> Option<String> {
        let stopped = self.feeder.await.ok().flatten();
        for task in self.runners {
            let _ = task.await;
        }
        stopped
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use arrow::array::{RecordBatch, UInt64Array};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;
    use crate::checkpoint::{AckTracker, BatchSeq};
    use crate::lsn::{Lsn, Position};
    use crate::sink::{DeadLetters, FlushPolicy, Sink, SinkError};

    struct Collect(Arc<Mutex<Vec<BatchSeq>>>);

    #[async_trait::async_trait]
    impl Sink for Collect {
        fn name(&self) -> &str {
            "collect"
        }
        async fn write(&mut self, batch: Arc<ChangeBatch>) -> Result<(), SinkError> {
            self.0.lock().unwrap().push(batch.seq);
            Ok(())
        }
        async fn flush(&mut self) -> Result<(), SinkError> {
            Ok(())
        }
        fn buffered_rows(&self) -> usize {
            0
        }
        async fn discard_snapshot(&mut self, _: Lsn) -> Result<(), SinkError> {
            Ok(())
        }
    }

    fn batch(seq: u64) -> Arc<ChangeBatch> {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::UInt64, true)]));
        let records =
            RecordBatch::try_new(schema.clone(), vec![Arc::new(UInt64Array::from(vec![seq]))])
                .unwrap();
        let table = crate::batch::TableSchema {
            relation_id: 1,
            namespace: "metastore".into(),
            name: "assets".into(),
            replica_identity: crate::pgoutput::ReplicaIdentity::Default,
            columns: Vec::new(),
            arrow: schema,
        };
        Arc::new(ChangeBatch {
            seq: BatchSeq(seq),
            table: Arc::new(table),
            records,
            first: Position::default(),
            last: Position::default(),
            first_commit_micros: 0,
        })
    }

    #[tokio::test]
    async fn a_batch_the_hook_refuses_reaches_no_sink_and_stops_the_feeding() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let acks = AckTracker::new();
        // Never used: nothing is refused (the pool connects lazily).
        let dead_letters = DeadLetters::connect("postgres://lily@127.0.0.1:1/none", 1).unwrap();
        let runner = SinkRunner::new(
            Box::new(Collect(got.clone())),
            acks.register_sink("collect"),
            FlushPolicy {
                max_rows: 1,
                max_wait: std::time::Duration::from_millis(1),
            },
            dead_letters,
            "test",
        );
        let (tx, rx) = mpsc::channel(8);
        let (_abort_tx, abort_rx) = watch::channel(false);
        let fanout = Fanout::start(
            rx,
            vec![runner],
            4,
            |b: Arc<ChangeBatch>| async move {
                if b.seq == BatchSeq(2) {
                    Err("the state cannot take batch 2".to_owned())
                } else {
                    Ok(())
                }
            },
            abort_rx,
        );
        for seq in 1..=3 {
            let _ = tx.send(batch(seq)).await;
        }
        drop(tx);
        assert_eq!(
            fanout.join().await.as_deref(),
            Some("the state cannot take batch 2")
        );
        assert_eq!(*got.lock().unwrap(), vec![BatchSeq(1)]);
    }
}
