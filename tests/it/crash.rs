//! Crash safety: `lily run` is SIGKILLed at random moments while 100k changes
//! are committed; after restarts the Delta audit table holds every committed
//! change exactly once, as PostgreSQL and an independent reader (DuckDB) agree.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use arrow::array::{Array, AsArray};
use lily_tests::{TestEnv, duckdb_query, first_i64, wait_for, wait_streaming};
use rand::Rng;

const ASSETS: i32 = 20_000;
const UPDATE_ROUNDS: i32 = 4;
const CHANGES: i64 = (ASSETS * (1 + UPDATE_ROUNDS)) as i64;

async fn write_changes(url: String) -> anyhow::Result<()> {
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let insert = c
        .prepare(
            "INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name, attributes)
             SELECT 'crash', 'column', 'c.' || lpad(g::text, 6, '0'), 'col' || g, jsonb_build_object('n', g)
             FROM generate_series($1::int, $2::int) g",
        )
        .await?;
    let update = c
        .prepare(
            "UPDATE metastore.assets SET description = 'round ' || $3::int
             WHERE tenant_id = 'crash' AND qualified_name BETWEEN 'c.' || lpad($1::int::text, 6, '0') AND 'c.' || lpad($2::int::text, 6, '0')",
        )
        .await?;
    for start in (1..=ASSETS).step_by(200) {
        c.execute(&insert, &[&start, &(start + 199)]).await?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for round in 1..=UPDATE_ROUNDS {
        for start in (1..=ASSETS).step_by(500) {
            c.execute(&update, &[&start, &(start + 499), &round])
                .await?;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_moments_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let c = env.client().await?;
    c.batch_execute(
        "INSERT INTO metastore.tenants (tenant_id, name) VALUES ('crash', 'Crash test')",
    )
    .await?;
    let mut lily = env.spawn_lily(&["run"])?;
    wait_streaming(&env, "lily").await?;

    let writer = tokio::spawn(write_changes(env.config.postgres.url.clone()));
    let mut kills = 0;
    // The random kill moments are the test's input, not a wait for a condition.
    while !writer.is_finished() || kills < 4 {
        let pause = rand::rng().random_range(200..2000);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        lily.crash();
        kills += 1;
        lily = env.spawn_lily(&["run"])?;
    }
    writer.await??;

    let filter = "table_name = 'metastore.assets'";
    wait_for(
        "every change in the audit table",
        Duration::from_secs(600),
        || async { Ok((env.audit_count(filter).await? >= CHANGES).then_some(())) },
    )
    .await?;
    // The last instance may have been started after everything was stored:
    // stop it once it runs, not while it is still starting (a SIGTERM
    // before its handler is installed ends it by the signal).
    wait_for(
        "the last instance to stream",
        Duration::from_secs(60),
        || async { Ok(lily.output().contains(" streaming").then_some(())) },
    )
    .await?;
    assert_eq!(lily.stop().await?, 0, "a clean stop after catching up");

    // Exactly once: the count, the distinct stream positions and the content.
    assert_eq!(env.audit_count(filter).await?, CHANGES);
    let distinct = env
        .query_audit(&format!(
            "SELECT count(*) FROM (SELECT DISTINCT commit_lsn, seq FROM audit WHERE {filter})"
        ))
        .await?;
    assert_eq!(first_i64(&distinct), CHANGES);

    let batches = env
        .query_audit(&format!("SELECT after FROM audit WHERE {filter}"))
        .await?;
    let mut seen = HashSet::new();
    let mut last_description: HashMap<String, (i64, String)> = HashMap::new();
    for b in &batches {
        let after = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8)?;
        let after = after.as_string::<i32>();
        for i in 0..after.len() {
            let row: serde_json::Value = serde_json::from_str(after.value(i))?;
            let guid = row["guid"].as_str().unwrap_or_default().to_string();
            let version = row["version"].as_i64().unwrap_or_default();
            assert!(
                seen.insert((guid.clone(), version)),
                "change {guid} v{version} stored twice"
            );
            let description = row["description"].as_str().unwrap_or_default().to_string();
            let e = last_description.entry(guid).or_insert((0, String::new()));
            if version > e.0 {
                *e = (version, description);
            }
        }
    }
    // PostgreSQL's side: each asset went through versions 1..=version.
    let rows = c
        .query("SELECT guid::text, version, coalesce(description, '') FROM metastore.assets WHERE tenant_id = 'crash'", &[])
        .await?;
    assert_eq!(rows.len(), ASSETS as usize);
    let mut expected = 0i64;
    let mut checksum_pg = 0i64;
    for r in &rows {
        let (guid, version, description): (String, i64, String) = (r.get(0), r.get(1), r.get(2));
        for v in 1..=version {
            assert!(
                seen.contains(&(guid.clone(), v)),
                "change {guid} v{v} is missing from the lake"
            );
            expected += 1;
            checksum_pg += v;
        }
        assert_eq!(
            last_description[&guid],
            (version, description),
            "latest state of {guid}"
        );
    }
    assert_eq!(expected, CHANGES);
    let checksum_lake: i64 = seen.iter().map(|(_, v)| v).sum();
    assert_eq!(checksum_lake, checksum_pg);

    // An independent reader agrees.
    let table = Path::new(&env.config.lake.root).join(lily_lakehouse::AUDIT_TABLE);
    let duck = duckdb_query(
        &table,
        &format!(
            "SELECT count(*), count(DISTINCT (commit_lsn, seq)), sum(CAST(json_extract_string(after, '$.version') AS BIGINT)) \
             FROM {{table}} WHERE {filter}"
        ),
    )?;
    assert_eq!(duck[0][0], serde_json::json!(CHANGES));
    assert_eq!(duck[0][1], serde_json::json!(CHANGES));
    assert_eq!(
        duck[0][2]
            .as_f64()
            .map(|v| v as i64)
            .or(duck[0][2].as_str().and_then(|s| s.parse().ok())),
        Some(checksum_pg)
    );
    eprintln!("survived {kills} SIGKILLs; {CHANGES} changes exactly once");
    Ok(())
}
