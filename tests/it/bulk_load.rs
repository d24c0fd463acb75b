//! `lily ingest` of Lily's bulk NDJSON, the 80/20 rule: databases, schemas,
//! tables and tagged columns are in the metastore when the command returns,
//! the other columns are in the lake's `catalog/assets` (read here by
//! DuckDB) and `lily run` promotes them until `lily status` shows no lag.
//! Bad lines are dead letters naming their line while the rest loads, and a
//! load killed half-way and run again ends with every asset once, in the
//! lake and in the metastore, and nothing rewritten.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::Duration;

use lily_tests::{LilyProcess, TestEnv, duckdb_query, run_lily, wait_for};
use serde_json::json;

const SCHEMAS: usize = 10;
const TABLES: usize = 40;
const COLUMNS: usize = 12;

/// The estate as NDJSON, parents before children; a line that is not
/// JSON and one of an unknown type after the first schema.
fn estate(db: &str) -> (String, usize) {
    let mut out = String::new();
    let mut lines = 0;
    let mut line = |out: &mut String, v: serde_json::Value| {
        writeln!(out, "{v}").expect("a string takes writes");
        lines += 1;
    };
    line(&mut out, json!({"qualified_name": db, "type": "database"}));
    for s in 0..SCHEMAS {
        let schema = format!("{db}.s{s}");
        line(
            &mut out,
            json!({"qualified_name": schema, "type": "schema", "parent": db}),
        );
        if s == 0 {
            out.push_str("{\"qualified_name\": \"broken\n");
            line(
                &mut out,
                json!({"qualified_name": format!("{schema}.odd"), "type": "tabel"}),
            );
        }
        for t in 0..TABLES {
            let table = format!("{schema}.t{t}");
            let mut asset = json!({"qualified_name": table, "type": "table", "parent": schema,
                "description": format!("table {t} of schema {s}")});
            if t > 0 {
                asset["upstreams"] = json!([format!("{schema}.t{}", t - 1)]);
                asset["process"] = json!("etl.daily");
            }
            line(&mut out, asset);
            for c in 0..COLUMNS {
                let mut col = json!({"qualified_name": format!("{table}.c{c}"), "type": "column",
                    "parent": table, "attributes": {"data_type": if c == 0 { "bigint" } else { "text" }}});
                if c == 1 {
                    col["tags"] = json!(["PII"]);
                }
                line(&mut out, col);
            }
        }
    }
    (out, lines)
}

async fn scalar(c: &tokio_postgres::Client, sql: &str) -> anyhow::Result<i64> {
    Ok(c.query_one(sql, &[]).await?.get(0))
}

fn expected_assets() -> i64 {
    // The database, schemas, tables, columns and the process.
    (1 + SCHEMAS + SCHEMAS * TABLES * (1 + COLUMNS) + 1) as i64
}

async fn check_estate(c: &tokio_postgres::Client, tenant: &str) -> anyhow::Result<()> {
    let t = |sql: &str| sql.replace("$T", tenant);
    assert_eq!(
        scalar(
            c,
            &t("SELECT count(*) FROM metastore.assets WHERE tenant_id = '$T'")
        )
        .await?,
        expected_assets()
    );
    // Every column under its table, every table under its schema.
    let orphans = scalar(
        c,
        &t("SELECT count(*) FROM metastore.assets a LEFT JOIN metastore.assets p ON p.guid = a.parent_guid
             WHERE a.tenant_id = '$T' AND a.type_name IN ('schema', 'table', 'column')
               AND (p.guid IS NULL OR a.qualified_name NOT LIKE p.qualified_name || '.%')"),
    )
    .await?;
    assert_eq!(orphans, 0);
    assert_eq!(
        scalar(
            c,
            &t("SELECT count(*) FROM metastore.lineage_edges WHERE tenant_id = '$T'")
        )
        .await?,
        (SCHEMAS * (TABLES - 1)) as i64
    );
    assert_eq!(
        scalar(
            c,
            &t("SELECT count(*) FROM metastore.classifications
                 WHERE tenant_id = '$T' AND tag = 'PII' AND source = 'direct'")
        )
        .await?,
        (SCHEMAS * TABLES) as i64
    );
    Ok(())
}

/// Lake rows of `tenant`, and how many distinct assets they are.
fn lake_rows(env: &TestEnv, tenant: &str) -> anyhow::Result<(i64, i64)> {
    let table = std::path::Path::new(&env.config.lake.root).join("catalog/assets");
    let rows = duckdb_query(
        &table,
        &format!(
            "SELECT count(*), count(DISTINCT qualified_name) FROM {{table}} WHERE tenant_id = '{tenant}'"
        ),
    )?;
    let n = |i: usize| rows[0][i].as_i64().unwrap_or(-1);
    Ok((n(0), n(1)))
}

/// (state, consistency, backlog) of the tenant's one load, from `lily status`.
fn status(env: &TestEnv, tenant: &str) -> anyhow::Result<(String, String, i64)> {
    let (code, out) = run_lily(&["status", "--tenant", tenant], &env.lily_env())?;
    anyhow::ensure!(code == 0, "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with(tenant))
        .ok_or_else(|| anyhow::anyhow!("no load of {tenant}: {out}"))?;
    let f: Vec<&str> = line.split_whitespace().collect();
    Ok((f[2].to_owned(), f[3].to_owned(), f[7].parse()?))
}

#[tokio::test(flavor = "multi_thread")]
async fn lily_ingest_loads_an_estate_in_two_lanes_sets_bad_lines_aside_and_resumes_after_a_kill()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let c = env.client().await?;
    c.batch_execute(
        "INSERT INTO metastore.tenants (tenant_id, name) VALUES ('acme', 'Acme'), ('beta', 'Beta')",
    )
    .await?;
    let (text, _) = estate("shop");
    let file = env.dir.path().join("estate.ndjson");
    std::fs::write(&file, &text)?;
    let file_arg = file.display().to_string();
    let lake_columns = (SCHEMAS * TABLES * (COLUMNS - 1)) as i64;

    let (code, out) = run_lily(
        &["ingest", "--tenant", "acme", "--chunk", "500", &file_arg],
        &env.lily_env(),
    )?;
    assert_eq!(code, 0, "{out}");
    // At once: every container and tagged column in the metastore, the
    // other columns in the lake, once each.
    let in_metastore = scalar(
        &c,
        "SELECT count(*) FROM metastore.assets WHERE tenant_id = 'acme'",
    )
    .await?;
    assert_eq!(in_metastore, expected_assets() - lake_columns);
    assert_eq!(lake_rows(&env, "acme")?, (lake_columns, lake_columns));
    let (state, consistency, backlog) = status(&env, "acme")?;
    assert_eq!(
        (state.as_str(), consistency.as_str(), backlog),
        ("promoting", "partial", lake_columns)
    );
    // The two bad lines are dead letters naming their line; nothing else is.
    let letters: BTreeSet<String> = c
        .query(
            "SELECT reference || ' ' || error FROM lily.dead_letters WHERE source = 'bulk' AND tenant_id = 'acme'",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let refs: Vec<&str> = letters
        .iter()
        .map(|l| &l[..l.find(' ').unwrap_or(0)])
        .collect();
    assert_eq!(refs, ["estate.ndjson:3", "estate.ndjson:4"], "{letters:?}");
    assert!(
        letters.iter().any(|l| l.contains("not JSON")),
        "{letters:?}"
    );
    assert!(letters.iter().any(|l| l.contains("/type")), "{letters:?}");
    assert!(out.contains("2 records could not be read"), "{out}");

    // `lily run` promotes the lake's columns; the lag shrinks to zero.
    let lily = env.spawn_lily(&["run"])?;
    let seen = std::cell::RefCell::new(Vec::new());
    wait_for(
        "the load to be promoted",
        Duration::from_secs(180),
        || async {
            let s = status(&env, "acme")?;
            seen.borrow_mut().push(s.2);
            Ok((s.0 == "complete" && s.2 == 0).then_some(()))
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", lily.output()))?;
    let seen = seen.into_inner();
    assert!(
        seen.windows(2).all(|w| w[1] <= w[0]),
        "the backlog went {seen:?}"
    );
    check_estate(&c, "acme").await?;
    // Per table: every table's lake columns promoted.
    let (_, out) = run_lily(&["status", "--tenant", "acme"], &env.lily_env())?;
    let load = out
        .lines()
        .find(|l| l.starts_with("acme"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_default()
        .to_owned();
    let (code, out) = run_lily(
        &["status", "--tenant", "acme", "--load", &load],
        &env.lily_env(),
    )?;
    assert_eq!(code, 0, "{out}");
    let tables: Vec<&str> = out.lines().filter(|l| l.starts_with("shop.")).collect();
    assert_eq!(tables.len(), SCHEMAS * TABLES, "{out}");
    assert!(
        tables
            .iter()
            .all(|l| l.ends_with("complete") && l.contains(&format!(" {} ", COLUMNS - 1))),
        "{out}"
    );

    // Killed half-way, then run again: every asset once, none rewritten.
    let log = env.dir.path().join("killed.log");
    let load = LilyProcess::spawn(
        &["ingest", "--tenant", "beta", "--chunk", "100", &file_arg],
        &env.lily_env(),
        &log,
    )?;
    let total = expected_assets();
    wait_for(
        "a part of the load to commit",
        Duration::from_secs(120),
        || async {
            let n = scalar(
                &c,
                "SELECT count(*) FROM metastore.assets WHERE tenant_id = 'beta'",
            )
            .await?;
            Ok((n > 0).then_some(()))
        },
    )
    .await?;
    load.crash();
    let partial = scalar(
        &c,
        "SELECT count(*) FROM metastore.assets WHERE tenant_id = 'beta'",
    )
    .await?;
    let (code, out) = run_lily(
        &["ingest", "--tenant", "beta", "--chunk", "100", &file_arg],
        &env.lily_env(),
    )?;
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        lake_rows(&env, "beta")?,
        (lake_columns, lake_columns),
        "the lake holds each column once"
    );
    wait_for(
        "the resumed load to be promoted",
        Duration::from_secs(180),
        || async {
            let s = status(&env, "beta")?;
            Ok((s.0 == "complete" && s.2 == 0).then_some(()))
        },
    )
    .await?;
    check_estate(&c, "beta").await?;
    // Assets the first run committed were not written again.
    let rewritten = scalar(
        &c,
        "SELECT count(*) FROM metastore.assets WHERE tenant_id = 'beta' AND version > 1",
    )
    .await?;
    assert_eq!(
        rewritten, 0,
        "{partial} of {total} had committed before the kill"
    );
    lily.stop().await?;
    // An unknown tenant is refused, naming it.
    let (code, out) = run_lily(
        &["ingest", "--tenant", "nobody", &file_arg],
        &env.lily_env(),
    )?;
    assert_ne!(code, 0);
    assert!(out.contains("\"nobody\" does not exist"), "{out}");
    Ok(())
}

/// Writes `ndjson` as Parquet with DuckDB (a writer users run), one row
/// per line, the nested fields as lists and structs.
fn parquet_by_duckdb(ndjson: &std::path::Path, parquet: &std::path::Path) -> anyhow::Result<()> {
    let script = format!(
        "import duckdb\nduckdb.sql(\"COPY (SELECT * FROM read_json('{}', format = 'newline_delimited')) TO '{}' (FORMAT parquet)\")",
        ndjson.display(),
        parquet.display()
    );
    let out = std::process::Command::new(lily_tests::test_python()?)
        .args(["-c", &script])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "DuckDB: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn parquet_files_and_http_uploads_load_in_the_same_two_lanes() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    let base = env.enable_api()?;
    let c = env.client().await?;
    c.batch_execute(
        "INSERT INTO metastore.tenants (tenant_id, name) VALUES ('pq', 'Parquet'), ('up', 'Upload'), ('other', 'Other')",
    )
    .await?;
    let (text, lines) = estate("shop");
    let lake_columns = (SCHEMAS * TABLES * (COLUMNS - 1)) as i64;

    // Parquet, written by DuckDB from the estate less its broken line: the
    // same lanes, and the row of an unknown type is a dead letter by row.
    let clean: String = text
        .lines()
        .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
        .map(|l| format!("{l}\n"))
        .collect();
    let ndjson = env.dir.path().join("clean.ndjson");
    std::fs::write(&ndjson, &clean)?;
    let parquet = env.dir.path().join("estate.parquet");
    parquet_by_duckdb(&ndjson, &parquet)?;
    let (code, out) = run_lily(
        &[
            "ingest",
            "--tenant",
            "pq",
            "--chunk",
            "700",
            &parquet.display().to_string(),
        ],
        &env.lily_env(),
    )?;
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        scalar(
            &c,
            "SELECT count(*) FROM metastore.assets WHERE tenant_id = 'pq'"
        )
        .await?,
        expected_assets() - lake_columns
    );
    assert_eq!(lake_rows(&env, "pq")?, (lake_columns, lake_columns));
    let letter: String = c
        .query_one(
            "SELECT reference || ' ' || error FROM lily.dead_letters WHERE source = 'bulk' AND tenant_id = 'pq'",
            &[],
        )
        .await?
        .get(0);
    assert!(
        letter.starts_with("estate.parquet:row 3 ") && letter.contains("/type"),
        "{letter}"
    );
    assert_eq!(
        scalar(
            &c,
            "SELECT count(*) FROM metastore.assets WHERE tenant_id = 'pq' AND type_name = 'column'
                AND attributes->>'data_type' IN ('bigint', 'text')"
        )
        .await?,
        (SCHEMAS * TABLES) as i64,
        "the tagged columns, with their attributes from the struct column"
    );

    // A tag and an edge on columns that are only in the lake (this lily
    // run does not promote) promote them at once.
    let pq_steward = env.create_api_key("pq", "steward", "tagger")?;
    let quiet = env.spawn_lily_with(&["run"], &[("LILY_BULK__PROMOTE_ROWS".into(), "0".into())])?;
    let api = lily_tests::api::ApiClient::new(&base);
    api.wait_ready().await?;
    let auth = format!("Bearer {pq_steward}");
    let a = [("authorization", auth.as_str())];
    let r = api
        .post(
            "/v1/tenants/pq/classifications",
            &json!({"classifications": [{"qualified_name": "shop.s3.t5.c7", "tag": "PII"}]}),
            &a,
        )
        .await?;
    assert_eq!(r.status, 200, "{r:?}");
    let r = api
        .post(
            "/v1/tenants/pq/lineage",
            &json!({"edges": [{"upstream": "shop.s3.t5.c8", "downstream": "shop.s3.t6.c8"}]}),
            &a,
        )
        .await?;
    assert_eq!(r.status, 200, "{r:?}");
    let r = api
        .post(
            "/v1/tenants/pq/classifications",
            &json!({"classifications": [{"qualified_name": "shop.s3.t5.nowhere", "tag": "PII"}]}),
            &a,
        )
        .await?;
    assert_eq!((r.status, r.error()), (422, "unprocessable"), "{r:?}");
    assert_eq!(
        scalar(
            &c,
            "SELECT count(*) FROM metastore.assets WHERE tenant_id = 'pq'"
        )
        .await?,
        expected_assets() - lake_columns + 3,
        "the three named columns are in the metastore, no other"
    );
    assert_eq!(
        scalar(
            &c,
            "SELECT count(*) FROM metastore.classifications c JOIN metastore.assets a ON a.guid = c.asset_guid
              WHERE a.qualified_name = 'shop.s3.t5.c7' AND a.parent_guid IS NOT NULL
                AND a.attributes->>'data_type' = 'text' AND c.tag = 'PII'"
        )
        .await?,
        1,
        "tagged, under its table, with the attributes of its lake row"
    );
    quiet.stop().await?;

    // Over HTTP: the same estate streamed into a named load.
    let steward = env.create_api_key("up", "steward", "loader")?;
    let ingest_only = env.create_api_key("up", "ingest", "robot")?;
    let other = env.create_api_key("other", "steward", "other")?;
    let lily = env.spawn_lily(&["run"])?;
    api.wait_ready().await?;
    let upload = |key: &str, load: &str, body: Vec<u8>, media: &str| {
        let auth = format!("Bearer {key}");
        let (api, load, media) = (&api, load.to_owned(), media.to_owned());
        async move {
            api.send_as(
                reqwest::Method::POST,
                &format!("/v1/tenants/up/bulk/loads/{load}?chunk=500"),
                Some((media.as_str(), body)),
                &[("authorization", auth.as_str())],
            )
            .await
        }
    };
    let ndjson_type = "application/x-ndjson";
    // Refusals: no key, another tenant's key, not NDJSON, a bad load id.
    let r = api
        .send_as(
            reqwest::Method::POST,
            "/v1/tenants/up/bulk/loads/first",
            Some((ndjson_type, b"{}\n".to_vec())),
            &[],
        )
        .await?;
    assert_eq!(r.status, 401, "{r:?}");
    // (Refusals come before the body is read, so they are sent small: a
    // client still sending a large body may see the connection close.)
    let r = upload(&other, "first", b"{}\n".to_vec(), ndjson_type).await?;
    assert_eq!((r.status, r.error()), (403, "forbidden"), "{r:?}");
    let r = upload(&steward, "first", b"{}".to_vec(), "application/json").await?;
    assert_eq!(r.status, 415, "{r:?}");
    let r = upload(&steward, "no%20spaces", b"{}\n".to_vec(), ndjson_type).await?;
    assert_eq!((r.status, r.error()), (400, "bad_query"), "{r:?}");
    assert_eq!(
        scalar(
            &c,
            "SELECT count(*) FROM lily.bulk_loads WHERE tenant_id = 'up'"
        )
        .await?,
        0,
        "a refused upload starts no load"
    );
    // A full backlog refuses a new upload with 429 and when to come back.
    c.execute(
        "INSERT INTO lily.bulk_loads (tenant_id, load_id, source, state, rows_lake) VALUES ('up', 'stuck', 'test', 'promoting', 6000000)",
        &[],
    )
    .await?;
    let r = upload(&steward, "first", b"{}\n".to_vec(), ndjson_type).await?;
    assert_eq!((r.status, r.error()), (429, "backlog_full"), "{r:?}");
    c.execute("DELETE FROM lily.bulk_loads WHERE load_id = 'stuck'", &[])
        .await?;
    assert_eq!(
        scalar(
            &c,
            "SELECT count(*) FROM lily.bulk_loads WHERE tenant_id = 'up'"
        )
        .await?,
        0,
        "a refused upload starts no load"
    );

    let r = upload(&steward, "first", text.clone().into_bytes(), ndjson_type).await?;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["lines"], lines as i64 + 1, "{r:?}");
    assert_eq!(r.body["rows_lake"], lake_columns, "{r:?}");
    assert_eq!(r.body["dead_letters"], 2, "{r:?}");
    let auth = format!("Bearer {steward}");
    let a = [("authorization", auth.as_str())];
    wait_for(
        "the upload to be promoted",
        Duration::from_secs(180),
        || async {
            let r = api.get("/v1/tenants/up/bulk/loads/first", &a).await?;
            Ok((r.body["state"] == "complete" && r.body["backlog"] == 0).then_some(r))
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", lily.output()))?;
    check_estate(&c, "up").await?;
    let r = api.get("/v1/tenants/up/bulk/loads/first", &a).await?;
    let tables = r.body["tables"].as_array().cloned().unwrap_or_default();
    assert_eq!(tables.len(), SCHEMAS * TABLES, "{r:?}");
    assert!(
        tables
            .iter()
            .all(|t| t["state"] == "complete" && t["promoted_rows"] == (COLUMNS - 1) as i64),
        "{r:?}"
    );
    let r = api.get("/v1/tenants/up/bulk/loads", &a).await?;
    assert_eq!(r.body["loads"][0]["consistency"], "complete", "{r:?}");
    // Another tenant sees nothing of it.
    let o = format!("Bearer {other}");
    let r = api
        .get(
            "/v1/tenants/up/bulk/loads",
            &[("authorization", o.as_str())],
        )
        .await?;
    assert_eq!(r.status, 403, "{r:?}");

    // The same upload again: nothing new, nothing rewritten.
    let r = upload(&steward, "first", text.clone().into_bytes(), ndjson_type).await?;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["created"], 0, "{r:?}");
    // Without a role that may classify, a tagged line is a dead letter
    // and the rest of the upload is written.
    let body = "{\"qualified_name\": \"shop.new\", \"type\": \"table\", \"parent\": \"shop.s0\"}\n\
                {\"qualified_name\": \"shop.new.a\", \"type\": \"column\", \"parent\": \"shop.new\", \"tags\": [\"PII\"]}\n";
    let r = upload(
        &ingest_only,
        "second",
        body.as_bytes().to_vec(),
        ndjson_type,
    )
    .await?;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        (r.body["created"].clone(), r.body["dead_letters"].clone()),
        (json!(1), json!(1)),
        "{r:?}"
    );
    let letter: String = c
        .query_one(
            "SELECT error FROM lily.dead_letters WHERE tenant_id = 'up' AND reference = 'second:2'",
            &[],
        )
        .await?
        .get(0);
    assert!(letter.contains("may classify"), "{letter}");
    lily.stop().await?;
    Ok(())
}
