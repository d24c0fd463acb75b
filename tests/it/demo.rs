//! `lily demo`: the one command a new user runs.

use std::time::Duration;

use lily_tests::{LilyProcess, free_port, query_delta, wait_for};

#[tokio::test(flavor = "multi_thread")]
async fn demo_streams_the_sample_estate_and_live_edits_then_stops_cleanly() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("lily-demo-").tempdir()?;
    let demo_dir = dir.path().join("demo");
    let env = vec![
        (
            "LILY_METRICS__LISTEN".to_string(),
            format!("127.0.0.1:{}", free_port()?),
        ),
        (
            "LILY_API__LISTEN".to_string(),
            format!("127.0.0.1:{}", free_port()?),
        ),
        (
            "LILY_SQL__LISTEN".to_string(),
            format!("127.0.0.1:{}", free_port()?),
        ),
        (
            "LILY_TRANSFORMS__DIR".to_string(),
            lily_tests::transforms_dir().display().to_string(),
        ),
        (
            "LILY_DEMO_SEARCH_SERVER".to_string(),
            lily_tests::search_server::server_bin()?
                .display()
                .to_string(),
        ),
    ];
    let mut demo = LilyProcess::spawn(
        &["demo", "--dir", demo_dir.to_str().unwrap_or_default()],
        &env,
        &dir.path().join("demo.log"),
    )?;
    wait_for(
        "the snapshot and a live edit on screen",
        Duration::from_secs(120),
        || async {
            let out = demo.output();
            Ok((out.contains("snapshot metastore.assets")
                && out.contains("update   metastore.assets")
                && out
                    .lines()
                    .any(|l| l.contains("search: ") && l.contains("hits: analytics."))
                // The sample warehouse through the SQL endpoint: the e-mail
                // hashed, the card number down to its last four digits.
                && out.lines().any(|l| {
                    l.contains("sql: 1 | ")
                        && l.contains(" | xxxx-xxxx-xxxx-")
                        && !l.contains('@')
                }))
            .then_some(()))
        },
    )
    .await?;
    demo.signal(libc::SIGINT);
    let code = demo.wait(Duration::from_secs(60)).await?;
    let out = demo.output();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("the audit table holds"), "{out}");
    let rows = query_delta(
        &demo_dir.join("lake").join(lily_lakehouse::AUDIT_TABLE),
        "SELECT count(*) FROM audit WHERE tenant_id = 'acme' AND op = 'r'",
    )
    .await?;
    assert!(
        lily_tests::first_i64(&rows) >= 30,
        "the sample estate is in the lake"
    );
    Ok(())
}
