//! `lily run` serves Prometheus metrics for throughput, lag, latency and
//! errors; `lily lake optimize` and `vacuum` keep the audit table readable.

use std::path::Path;
use std::time::Duration;

use lily_tests::{TestEnv, duckdb_query, free_port, http_get, run_lily, wait_for, wait_streaming};

#[tokio::test(flavor = "multi_thread")]
async fn metrics_endpoint_and_lake_maintenance() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    let addr = format!("127.0.0.1:{}", free_port()?);
    env.config.metrics.listen = addr.clone();
    let lily = env.spawn_lily(&["run"])?;
    wait_streaming(&env, "lily").await?;
    let c = env.client().await?;
    c.batch_execute("INSERT INTO metastore.tenants (tenant_id, name) VALUES ('m', 'M')")
        .await?;
    // Many small transactions: many small Delta commits for optimize to compact.
    for i in 0..20 {
        c.execute(
            "INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name) VALUES ('m', 'table', $1, 't')",
            &[&format!("m.{i}")],
        )
        .await?;
        let before = env.audit_count("").await?;
        wait_for("the row in the lake", Duration::from_secs(30), || async {
            Ok((env.audit_count("").await? > before).then_some(()))
        })
        .await?;
    }
    let metrics = wait_for(
        "metrics of the written rows",
        Duration::from_secs(30),
        || async {
            let body = http_get(&addr, "/metrics")?;
            Ok(body
                .contains(
                    "lily_changes_written_total{sink=\"lake.audit\",table=\"metastore.assets\"} 20",
                )
                .then_some(body))
        },
    )
    .await?;
    for name in [
        "lily_changes_read_total{table=\"metastore.assets\"} 20",
        "lily_commit_to_sink_seconds_bucket{sink=\"lake.audit\"",
        "lily_slot_lag_bytes",
        "lily_slot_lag_seconds",
        "lily_batch_rows_bucket",
        "# HELP lily_commit_to_sink_seconds",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
    if let Ok(promtool) = which("promtool") {
        let file = env.dir.path().join("metrics.txt");
        std::fs::write(&file, &metrics)?;
        let out = std::process::Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(std::fs::File::open(&file)?)
            .output()?;
        assert!(
            out.status.success(),
            "promtool: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(lily.stop().await?, 0);

    let count = env.audit_count("").await?;
    let (code, out) = run_lily(&["lake", "optimize"], &env.lily_env())?;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("small files replaced"), "{out}");
    let (code, out) = run_lily(
        &["lake", "vacuum", "--retention-hours", "0"],
        &env.lily_env(),
    )?;
    assert_eq!(code, 0, "{out}");
    assert!(
        !out.contains("deleted 0 files"),
        "the compacted files are removed: {out}"
    );
    assert_eq!(
        env.audit_count("").await?,
        count,
        "maintenance changes no row"
    );
    let table = Path::new(&env.config.lake.root).join(lily_lakehouse::AUDIT_TABLE);
    let duck = duckdb_query(&table, "SELECT count(*) FROM {table}")?;
    assert_eq!(duck[0][0], serde_json::json!(count));
    Ok(())
}

fn which(name: &str) -> anyhow::Result<std::path::PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .ok_or_else(|| anyhow::anyhow!("{name} not on PATH"))
}
