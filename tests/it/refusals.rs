//! A sink that refuses a batch for good never stalls the pipeline: the
//! batch becomes a dead letter once, every other sink gets every change
//! (one of them failing every other call, retried), and the slot's
//! confirmed position moves past it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lily_cdc::sink::{
    DeadLetters, Fanout, FaultInjector, Faults, FlushPolicy, Sink, SinkError, SinkRunner,
};
use lily_cdc::wire::ConnectParams;
use lily_cdc::{AckTracker, ChangeBatch, ChangeReader, Lsn, ReaderConfig};
use lily_lakehouse::{AuditSink, LakeLocation};
use lily_tests::{TestEnv, wait_for};
use tokio::sync::{mpsc, watch};

/// Rows per table a sink has flushed.
type Flushed = Arc<Mutex<BTreeMap<String, usize>>>;

/// Keeps a count of the rows it made "durable", per table.
struct Counting {
    name: String,
    buffered: Vec<Arc<ChangeBatch>>,
    flushed: Flushed,
}

impl Counting {
    fn new(name: &str) -> (Self, Flushed) {
        let flushed = Flushed::default();
        let sink = Counting {
            name: name.to_owned(),
            buffered: Vec::new(),
            flushed: flushed.clone(),
        };
        (sink, flushed)
    }
}

#[async_trait::async_trait]
impl Sink for Counting {
    fn name(&self) -> &str {
        &self.name
    }
    async fn write(&mut self, batch: Arc<ChangeBatch>) -> Result<(), SinkError> {
        self.buffered.push(batch);
        Ok(())
    }
    async fn flush(&mut self) -> Result<(), SinkError> {
        let mut flushed = self.flushed.lock().unwrap();
        for b in self.buffered.drain(..) {
            *flushed.entry(b.table.qualified_name()).or_default() += b.num_rows();
        }
        Ok(())
    }
    fn buffered_rows(&self) -> usize {
        self.buffered.iter().map(|b| b.num_rows()).sum()
    }
    async fn discard_snapshot(&mut self, _: Lsn) -> Result<(), SinkError> {
        Ok(())
    }
}

fn rows(flushed: &Flushed, table: &str) -> usize {
    flushed.lock().unwrap().get(table).copied().unwrap_or(0)
}

const ASSETS: &str = "metastore.assets";
const CLASSIFICATIONS: &str = "metastore.classifications";

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_batch_is_a_dead_letter_and_everything_else_flows() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let c = env.client().await?;
    c.batch_execute(
        "INSERT INTO metastore.tenants (tenant_id, name) VALUES ('refuse', 'Refusals')",
    )
    .await?;

    let url = &env.config.postgres.url;
    let acks = AckTracker::new();
    let (tx, rx) = mpsc::channel(16);
    let reader = ChangeReader::new(
        ConnectParams::parse(url)?,
        Arc::new(env.client().await?),
        ReaderConfig {
            slot: env.config.replication.slot.clone(),
            publication: env.config.replication.publication.clone(),
            heartbeat_interval: Duration::ZERO,
            status_interval: Duration::from_millis(100),
            ..Default::default()
        },
        acks.clone(),
        tx,
    );
    let plan = reader.plan().await?;

    // The refusing sink, a plain one, and the real Delta audit sink.
    let faults = Faults::default();
    faults.refuse_table(CLASSIFICATIONS, 1);
    let (refusing, refusing_rows) = Counting::new("refusing");
    let (plain, plain_rows) = Counting::new("plain");
    // And one whose destination fails every other call (retried, never
    // refused): it still gets every change.
    let flaky_faults = Faults::default();
    flaky_faults.fail_every_other_call();
    let (flaky, flaky_rows) = Counting::new("flaky");
    let location = LakeLocation::parse(&env.config.lake.root, Default::default())?;
    let audit = AuditSink::open(&location).await?;
    let dead_letters = DeadLetters::connect(url, 2)?;
    let policy = FlushPolicy {
        max_rows: 1000,
        max_wait: Duration::from_millis(50),
    };
    let sinks: Vec<(Box<dyn Sink>, &str)> = vec![
        (
            Box::new(FaultInjector::new(Box::new(refusing), faults)),
            "refusal_test",
        ),
        (Box::new(plain), "refusal_test"),
        (
            Box::new(FaultInjector::new(Box::new(flaky), flaky_faults)),
            "refusal_test",
        ),
        (Box::new(audit), "audit"),
    ];
    let runners = sinks
        .into_iter()
        .map(|(sink, source)| {
            let ack = acks.register_sink(sink.name());
            SinkRunner::new(sink, ack, policy, dead_letters.clone(), source)
        })
        .collect();
    let (abort_tx, abort_rx) = watch::channel(false);
    let fanout = Fanout::start(rx, runners, 16, |_| async { Ok(()) }, abort_rx);
    let (stop_tx, stop_rx) = watch::channel(false);
    let reading = tokio::spawn(reader.run(plan, stop_rx));

    // Assets, then one classification (the batch refused), then more assets.
    c.batch_execute(
        "INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name)
         SELECT 'refuse', 'table', 'db.s.t' || g, 't' || g FROM generate_series(1, 200) g",
    )
    .await?;
    c.batch_execute(
        "INSERT INTO metastore.classifications (tenant_id, asset_guid, tag)
         SELECT tenant_id, guid, 'pii' FROM metastore.assets WHERE qualified_name = 'db.s.t7'",
    )
    .await?;
    c.batch_execute(
        "INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name)
         SELECT 'refuse', 'table', 'db.s.u' || g, 'u' || g FROM generate_series(1, 200) g",
    )
    .await?;
    let end: String = c
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    let end: Lsn = end.parse()?;

    let wait = Duration::from_secs(60);
    wait_for(
        "the slot to be confirmed past the refused batch",
        wait,
        || async { Ok((acks.confirmed() >= end).then_some(())) },
    )
    .await?;
    let confirmed: String = wait_for("the server to hear of it", wait, || async {
        let row = c
            .query_one(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&env.config.replication.slot],
            )
            .await?;
        let lsn: String = row.get(0);
        Ok((lsn.parse::<Lsn>()? >= end).then_some(lsn))
    })
    .await?;

    // Every sink but the refusing one holds every change; it holds all but one.
    assert_eq!(rows(&plain_rows, ASSETS), 400);
    assert_eq!(rows(&plain_rows, CLASSIFICATIONS), 1);
    assert_eq!(rows(&flaky_rows, ASSETS), 400, "retried, not dropped");
    assert_eq!(rows(&flaky_rows, CLASSIFICATIONS), 1);
    assert_eq!(
        rows(&refusing_rows, ASSETS),
        400,
        "later batches still flow"
    );
    assert_eq!(rows(&refusing_rows, CLASSIFICATIONS), 0);
    assert_eq!(
        env.audit_count(&format!("table_name = '{ASSETS}'")).await?,
        400
    );
    assert_eq!(
        env.audit_count(&format!("table_name = '{CLASSIFICATIONS}'"))
            .await?,
        1
    );

    // The refused batch is one dead letter, with the error and the row.
    let letters = c
        .query(
            "SELECT source, tenant_id, error_code, error, convert_from(payload, 'UTF8'), details
               FROM lily.dead_letters",
            &[],
        )
        .await?;
    assert_eq!(letters.len(), 1, "one dead letter, written once");
    let l = &letters[0];
    assert_eq!(l.get::<_, String>(0), "refusal_test");
    assert_eq!(l.get::<_, Option<String>>(1).as_deref(), Some("refuse"));
    assert_eq!(l.get::<_, String>(2), "refused");
    assert!(
        l.get::<_, String>(3)
            .contains("refused by the fault injector")
    );
    let payload: String = l.get(4);
    assert_eq!(payload.lines().count(), 1);
    assert!(payload.contains("\"tag\":\"pii\""), "{payload}");
    let details: serde_json::Value = l.get(5);
    assert_eq!(details["sink"], "refusing");
    assert_eq!(details["table"], CLASSIFICATIONS);
    assert_eq!(details["kind"], "changes");

    let _ = stop_tx.send(true);
    reading.await??;
    let _ = abort_tx.send(true);
    assert_eq!(fanout.join().await, None);
    eprintln!("confirmed {confirmed} past {end}");
    Ok(())
}
