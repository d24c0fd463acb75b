//! Faults on purpose: PostgreSQL itself goes away mid-stream.

use std::time::Duration;

use lily_tests::{TestEnv, wait_for, wait_streaming};

const WAIT: Duration = Duration::from_secs(120);

async fn insert(env: &TestEnv, from: i32, to: i32) -> anyhow::Result<()> {
    env.client()
        .await?
        .execute(
            "INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name)
             SELECT 'acme', 'column', 'db.t.c' || g, 'c' || g FROM generate_series($1::int, $2::int) g",
            &[&from, &to],
        )
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_restarted_mid_stream_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    env.client()
        .await?
        .batch_execute("INSERT INTO metastore.tenants (tenant_id, name) VALUES ('acme', 'Acme')")
        .await?;
    let mut lily = env.spawn_lily(&["run"])?;
    wait_streaming(&env, "lily").await?;
    insert(&env, 1, 1000).await?;

    // Killed without a checkpoint (the way a crash or a failover looks to
    // a client), then back on the same port.
    env.cluster.stop_immediate()?;
    env.cluster.restart().await?;
    insert(&env, 1001, 2000).await?;

    let filter = "table_name = 'metastore.assets' AND op = 'c'";
    wait_for("both halves in the audit table", WAIT, || async {
        Ok((env.audit_count(filter).await? >= 2000).then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", lily.output()))?;
    let distinct = env
        .query_audit(&format!(
            "SELECT count(*) FROM (SELECT DISTINCT commit_lsn, seq FROM audit WHERE {filter})"
        ))
        .await?;
    assert_eq!(env.audit_count(filter).await?, 2000, "nothing twice");
    assert_eq!(lily_tests::first_i64(&distinct), 2000);
    assert!(
        lily.wait(Duration::from_millis(10)).await.is_err(),
        "lily run is still running, reconnected:\n{}",
        lily.output()
    );
    assert!(lily.output().contains("reconnecting"), "{}", lily.output());
    lily.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalidated_slot_stops_with_its_recovery_and_a_new_snapshot_loses_nothing()
-> anyhow::Result<()> {
    let env = TestEnv::with_settings(&[("max_slot_wal_keep_size", "1MB")]).await?;
    let db = env.client().await?;
    db.batch_execute("INSERT INTO metastore.tenants (tenant_id, name) VALUES ('acme', 'Acme')")
        .await?;
    let lily = env.spawn_lily(&["run"])?;
    wait_streaming(&env, "lily").await?;
    insert(&env, 1, 100).await?;
    wait_for("the first rows in the lake", WAIT, || async {
        Ok((env.audit_count("table_name = 'metastore.assets'").await? >= 100).then_some(()))
    })
    .await?;
    lily.stop().await?;

    // While Lily is down, more changes and far more WAL than the slot may
    // keep: the server invalidates it at a checkpoint.
    insert(&env, 101, 200).await?;
    wait_for("the slot to be invalidated", WAIT, || async {
        db.batch_execute(
            "CREATE TABLE IF NOT EXISTS public.filler (n int, pad text);
             INSERT INTO public.filler SELECT g, repeat('x', 500) FROM generate_series(1, 5000) g;
             SELECT pg_switch_wal(); CHECKPOINT;",
        )
        .await?;
        let status: Option<String> = db
            .query_one(
                "SELECT wal_status::text FROM pg_replication_slots WHERE slot_name = 'lily'",
                &[],
            )
            .await?
            .get(0);
        Ok((status.as_deref() == Some("lost")).then_some(()))
    })
    .await?;

    // A clear stop that says how to recover, never streaming on silently.
    let (code, out) = lily_tests::run_lily(&["run"], &env.lily_env())?;
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("was invalidated") && out.contains("pg_drop_replication_slot('lily')"),
        "{out}"
    );

    // The documented recovery: drop the slot, setup, run: a new snapshot.
    db.batch_execute("SELECT pg_drop_replication_slot('lily')")
        .await?;
    let (code, out) = lily_tests::run_lily(&["setup"], &env.lily_env())?;
    assert_eq!(code, 0, "{out}");
    let lily = env.spawn_lily(&["run"])?;
    wait_for("every asset in the lake again", WAIT, || async {
        let b = env
            .query_audit(
                "SELECT count(DISTINCT after) FROM audit
                  WHERE table_name = 'metastore.assets' AND after LIKE '%db.t.c%'",
            )
            .await?;
        Ok((lily_tests::first_i64(&b) >= 200).then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", lily.output()))?;
    lily.stop().await?;
    Ok(())
}
