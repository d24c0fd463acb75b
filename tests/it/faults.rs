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
