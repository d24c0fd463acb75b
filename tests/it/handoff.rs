//! Snapshot to stream handoff: rows committed before and while the reader
//! starts each arrive exactly once.

use std::collections::HashMap;
use std::time::Duration;

use arrow::array::AsArray;
use lily_tests::{ReaderHandle, TestEnv};

#[tokio::test(flavor = "multi_thread")]
async fn rows_before_and_during_startup_arrive_exactly_once() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let c = env.client().await?;
    c.batch_execute(
        "INSERT INTO metastore.tenants (tenant_id, name) VALUES ('h', 'Handoff');
         INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name)
         SELECT 'h', 'table', 'before.' || g, 't' || g FROM generate_series(1, 5000) g;",
    )
    .await?;
    // A writer commits one row per transaction while the reader creates its
    // slot, copies the tables and starts streaming.
    let url = env.config.postgres.url.clone();
    let writer = tokio::spawn(async move {
        let (w, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        for i in 0..3000 {
            w.execute(
                "INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name) VALUES ('h', 'table', $1, 'w')",
                &[&format!("during.{i}")],
            )
            .await?;
        }
        anyhow::Ok(())
    });
    let mut reader = ReaderHandle::start(&env, "lily", "lily_metastore").await?;
    writer.await??;
    c.batch_execute("INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name) VALUES ('h', 'table', 'marker', 'm')")
        .await?;

    let mut seen: HashMap<String, Vec<String>> = HashMap::new();
    while !seen.contains_key("marker") {
        for b in reader
            .collect("metastore.assets", 1, Duration::from_secs(60))
            .await?
        {
            let names = b
                .column_by_name("qualified_name")
                .unwrap()
                .as_string::<i32>();
            let ops = b.column_by_name("_op").unwrap().as_string::<i32>();
            for i in 0..b.num_rows() {
                seen.entry(names.value(i).to_string())
                    .or_default()
                    .push(ops.value(i).to_string());
            }
        }
    }
    let dupes: Vec<_> = seen
        .iter()
        .filter(|(_, ops)| ops.len() != 1)
        .take(5)
        .collect();
    assert!(dupes.is_empty(), "rows delivered more than once: {dupes:?}");
    assert_eq!(seen.len(), 5000 + 3000 + 1, "every row exactly once");
    assert!(
        seen["before.1"] == ["r"],
        "rows committed before the slot come from the snapshot"
    );
    assert!(
        seen["marker"] == ["c"],
        "rows committed after it come from the stream"
    );
    reader.stop().await
}

/// Backpressure is not death: a consumer that stops taking batches for
/// longer than the server's wal_sender_timeout (10 s in the tests) keeps its
/// replication connection, and everything arrives once it resumes.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_consumer_keeps_its_replication_connection() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let c = env.client().await?;
    c.batch_execute("INSERT INTO metastore.tenants (tenant_id, name) VALUES ('s', 'Stall')")
        .await?;
    let mut reader = ReaderHandle::start(&env, "lily", "lily_metastore").await?;
    lily_tests::wait_streaming(&env, "lily").await?;
    for i in 0..500 {
        c.execute(
            "INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name) VALUES ('s', 'table', $1, 's')",
            &[&format!("stall.{i}")],
        )
        .await?;
    }
    // The stall itself is the test's input: longer than wal_sender_timeout.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let batches = reader
        .collect("metastore.assets", 500, Duration::from_secs(60))
        .await?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 500);
    reader.stop().await
}
