//! A single 1M-row transaction streams through with bounded memory.

use std::time::Duration;

use lily_tests::{TestEnv, wait_for, wait_streaming};

const ROWS: i64 = 1_000_000;
/// Far above what the reader and the lake writer should ever hold, far below
/// what buffering a million rows would take.
const MEMORY_BOUND: u64 = 1 << 30;

#[tokio::test(flavor = "multi_thread")]
async fn a_million_row_transaction_streams_with_bounded_memory() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let c = env.client().await?;
    c.batch_execute("INSERT INTO metastore.tenants (tenant_id, name) VALUES ('big', 'Big')")
        .await?;
    let lily = env.spawn_lily(&["run"])?;
    wait_streaming(&env, "lily").await?;
    c.batch_execute(&format!(
        "INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name, attributes, owners)
         SELECT 'big', 'column', 'big.' || g, 'c' || g, jsonb_build_object('n', g), ARRAY['owner' || (g % 7)]
         FROM generate_series(1, {ROWS}) g"
    ))
    .await?;
    let mut peak = 0;
    wait_for(
        "the million rows in the lake",
        Duration::from_secs(900),
        || {
            peak = peak.max(lily.peak_rss().unwrap_or(0));
            async {
                Ok((env
                    .audit_count("tenant_id = 'big' AND table_name = 'metastore.assets'")
                    .await?
                    >= ROWS)
                    .then_some(()))
            }
        },
    )
    .await?;
    peak = peak.max(lily.peak_rss().unwrap_or(0));
    eprintln!(
        "peak RSS of lily run over the 1M-row transaction: {} MiB",
        peak >> 20
    );
    assert!(peak > 0, "could not read the process's memory");
    assert!(peak < MEMORY_BOUND, "peak RSS {} MiB", peak >> 20);
    assert_eq!(lily.stop().await?, 0);
    assert_eq!(
        env.audit_count("tenant_id = 'big' AND table_name = 'metastore.assets'")
            .await?,
        ROWS
    );
    Ok(())
}
