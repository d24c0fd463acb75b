//! The lake on an object store: `lake.root = s3://...` against an S3-API
//! server, with the same exactly-once behaviour across a restart.

use std::time::Duration;

use lily_tests::{S3Server, TestEnv, first_i64, query_delta_url, wait_for, wait_streaming};

#[tokio::test(flavor = "multi_thread")]
async fn audit_table_on_s3_survives_a_restart_without_duplicates() -> anyhow::Result<()> {
    let s3 = S3Server::start().await?;
    s3.create_bucket("lily-lake")?;
    let env = TestEnv::new().await?;
    let root = "s3://lily-lake/lake";
    let mut vars = env.lily_env();
    vars.retain(|(k, _)| k != "LILY_LAKE__ROOT");
    vars.push(("LILY_LAKE__ROOT".into(), root.into()));
    for (k, v) in s3.storage_options() {
        vars.push((
            format!("LILY_LAKE__STORAGE_OPTIONS__{}", k.to_uppercase()),
            v,
        ));
    }
    let log = env.dir.path().join("lily-s3.log");
    let c = env.client().await?;
    c.batch_execute("INSERT INTO metastore.tenants (tenant_id, name) VALUES ('s3', 'S3')")
        .await?;

    let url = url::Url::parse(&format!("{root}/{}/", lily_lakehouse::AUDIT_TABLE))?;
    let options: std::collections::HashMap<String, String> =
        s3.storage_options().into_iter().collect();
    let count = |expected: i64| {
        let url = url.clone();
        let options = options.clone();
        async move {
            let b = query_delta_url(
                url,
                options,
                "SELECT count(*) FROM audit WHERE tenant_id = 's3'",
            )
            .await?;
            Ok((first_i64(&b) >= expected).then_some(first_i64(&b)))
        }
    };

    // The tenant's row, and its two default masking policies.
    const TENANT_ROWS: i64 = 3;
    let lily = lily_tests::LilyProcess::spawn(&["run"], &vars, &log)?;
    wait_streaming(&env, "lily").await?;
    c.batch_execute(
        "INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name)
         SELECT 's3', 'table', 's3.' || g, 't' FROM generate_series(1, 300) g",
    )
    .await?;
    wait_for(
        "300 rows plus the tenant on S3",
        Duration::from_secs(60),
        || count(300 + TENANT_ROWS),
    )
    .await?;
    assert_eq!(lily.stop().await?, 0);

    // A restart resumes from the slot and the table's own watermark.
    let lily = lily_tests::LilyProcess::spawn(&["run"], &vars, &log)?;
    c.batch_execute("UPDATE metastore.assets SET description = 'again' WHERE tenant_id = 's3'")
        .await?;
    let n = wait_for("the 300 updates on S3", Duration::from_secs(60), || {
        count(600 + TENANT_ROWS)
    })
    .await?;
    assert_eq!(lily.stop().await?, 0);
    assert_eq!(n, 600 + TENANT_ROWS, "every change exactly once");
    Ok(())
}
