//! An idle metastore does not make the slot hold WAL without bound: while
//! other databases write, the slot's confirmed position keeps up.

use std::time::Duration;

use lily_tests::{TestEnv, wait_for, wait_streaming};

#[tokio::test(flavor = "multi_thread")]
async fn idle_slot_follows_the_servers_wal() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    env.config.replication.heartbeat_interval_ms = 300;
    let lily = env.spawn_lily(&["run"])?;
    wait_streaming(&env, "lily").await?;
    let other = env.cluster.connect("postgres").await?;
    other
        .batch_execute(
            "CREATE TABLE filler AS SELECT g, md5(g::text) AS h FROM generate_series(1, 200000) g",
        )
        .await?;
    let target: String = other
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    let c = env.client().await?;
    let retained = wait_for("the slot to confirm past the other database's writes", Duration::from_secs(60), || async {
        let row = c
            .query_one(
                "SELECT confirmed_flush_lsn >= $1::text::pg_lsn, (pg_current_wal_lsn() - restart_lsn)::bigint \
                 FROM pg_replication_slots WHERE slot_name = 'lily'",
                &[&target],
            )
            .await?;
        let caught_up: bool = row.get(0);
        Ok(caught_up.then(|| row.get::<_, i64>(1)))
    })
    .await?;
    eprintln!("slot retains {retained} bytes of WAL after 20 MB written elsewhere");
    assert_eq!(lily.stop().await?, 0);
    Ok(())
}
