//! The enforcement points benchmark.
//!
//! Tag to enforced: a tag (then its removal) commits in the metastore, and
//! three watchers start at the commit: Trino's batch column-mask decision
//! (polled until the column's mask appears or goes), an analyst's query of
//! the downstream PostgreSQL's masking view (polled until the value is
//! hashed or raw again), and a Kafka consumer of the policy events (until
//! the column's event arrives). p50 and p99 of each over `tags` tags each
//! way.
//!
//! OPA decisions per second: `concurrency` clients for `seconds` each,
//! single `allow` decisions, single column masks, and batch column masks
//! of a 500-column table.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use lily_embedded::PgCluster;
use lily_tests::broker::KafkaBroker;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use serde_json::{Value, json};

use crate::DB;
use crate::sql::percentile;

const WIDE: usize = 500;

/// p50, p99 and max of `v` but its first sample, which is printed apart:
/// the first tag also creates the Kafka topic and warms every path.
fn summary(name: &str, mut v: Vec<f64>) {
    let first = if v.is_empty() { f64::NAN } else { v.remove(0) };
    v.sort_by(|a, b| a.total_cmp(b));
    println!(
        "  {name:<34} p50 {:>7.1} ms   p99 {:>7.1} ms   max {:>7.1} ms   ({} samples; the first {:.0} ms)",
        percentile(&v, 0.5),
        percentile(&v, 0.99),
        v.last().copied().unwrap_or(f64::NAN),
        v.len(),
        first
    );
}

fn opa(action: Value) -> Value {
    json!({"input": {"context": {"identity": {"user": "bob", "groups": []},
        "softwareStack": {"trinoVersion": "476"}}, "action": action}})
}

fn column(table: &str, name: &str) -> Value {
    json!({"column": {"catalogName": "lakehouse", "schemaName": "s", "tableName": table,
        "columnName": name, "columnType": "varchar"}})
}

/// Polls until `check` says yes; ms since `from`.
async fn until<F, Fut>(from: Instant, mut check: F) -> anyhow::Result<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = from + Duration::from_secs(60);
    loop {
        if check().await? {
            return Ok(from.elapsed().as_secs_f64() * 1000.0);
        }
        anyhow::ensure!(Instant::now() < deadline, "no change in 60 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Runs the benchmark; prints its figures.
pub async fn run(
    cluster: &PgCluster,
    dir: &Path,
    tags: usize,
    seconds: u64,
    concurrency: usize,
) -> anyhow::Result<()> {
    let client = cluster.connect(DB).await?;
    // The downstream database, with an analyst reading through the view.
    cluster.create_database("shop").await?;
    let shop = cluster.connect("shop").await?;
    shop.batch_execute(
        "CREATE TABLE customers (id int PRIMARY KEY, email text, city text);
         INSERT INTO customers SELECT g, 'user' || g || '@example.com', 'Oslo' FROM generate_series(1, 1000) g;
         CREATE ROLE analyst LOGIN; GRANT SELECT ON customers TO analyst;",
    )
    .await?;
    let wide_columns: Vec<String> = (0..WIDE).map(|i| format!("'c{i}'")).collect();
    client
        .batch_execute(&format!(
            "INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name) VALUES
                ('bench', 'table', 'wh.s.customers', 'customers'), ('bench', 'table', 'wh.s.wide', 'wide');
             INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name, parent_guid)
             SELECT 'bench', 'column', t.qualified_name || '.' || c, c, t.guid
               FROM metastore.assets t,
                    LATERAL unnest(CASE WHEN t.name = 'customers' THEN ARRAY['id','email','city']
                                        ELSE ARRAY[{}] END) c
              WHERE t.tenant_id = 'bench' AND t.qualified_name LIKE 'wh.s.%';
             INSERT INTO metastore.classifications (tenant_id, asset_guid, tag)
             SELECT 'bench', guid, 'PII' FROM metastore.assets
              WHERE tenant_id = 'bench' AND qualified_name IN ('wh.s.wide.c7', 'wh.s.wide.c300');
             INSERT INTO metastore.governed_tables (tenant_id, table_name, asset, kind, connection, location) VALUES
                ('bench', 'customers', 'wh.s.customers', 'postgres', 'shop', 'public.customers');",
            wide_columns.join(",")
        ))
        .await?;

    let broker = KafkaBroker::start().await?;
    let api_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = dir.join("enforcement.toml");
    std::fs::write(
        &config,
        format!(
            "[sql.connections]\nshop = \"{}\"\n[sql.tenant_sources]\nbench = \"shop\"\n\
             [trino.catalogs]\nbench = \"lakehouse=wh\"\n\
             [sinks.shop-masks]\ntype = \"postgres_masking\"\nconnection = \"shop\"\nconsumer_roles = [\"analyst\"]\n\
             [sinks.events]\ntype = \"kafka\"\nbrokers = \"{}\"\npartitions = 1\n\
             [sinks.events.options]\n\"linger.ms\" = \"1\"\n",
            cluster.url("shop"),
            broker.bootstrap_servers()
        ),
    )?;
    let lily = std::env::current_exe()?
        .parent()
        .map(|d| d.join("lily"))
        .context("no folder")?;
    let log = std::fs::File::create(dir.join("lily-enforcement.log"))?;
    let mut child = Command::new(&lily)
        .args(["-c", &config.display().to_string(), "run"])
        .env("LILY_POSTGRES__URL", cluster.url(DB))
        .env("LILY_LAKE__ROOT", dir.join("lake-enforcement"))
        .env("LILY_METRICS__LISTEN", "")
        .env("LILY_API__LISTEN", format!("127.0.0.1:{api_port}"))
        .env("LILY_SQL__LISTEN", "")
        .env(
            "RUST_LOG",
            std::env::var("LILY_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stderr(log)
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", lily.display()))?;
    // A key made for Trino, as an operator would make it.
    let out = Command::new(&lily)
        .args([
            "api-key", "create", "--tenant", "bench", "--role", "viewer", "--name", "trino",
        ])
        .env("LILY_POSTGRES__URL", cluster.url(DB))
        .output()
        .context("lily api-key create")?;
    let key = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("lily_"))
        .map(|l| l.trim().to_owned())
        .context("lily api-key create printed no key")?;
    let port = cluster.port().to_string();
    let result = measure(
        &client,
        &broker,
        api_port,
        &key,
        &port,
        tags,
        seconds,
        concurrency,
    )
    .await;
    // SIGTERM: the pipeline stops cleanly.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let _ = child.wait();
    result
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    client: &tokio_postgres::Client,
    broker: &KafkaBroker,
    api_port: u16,
    key: &str,
    pg_port: &str,
    tags: usize,
    seconds: u64,
    concurrency: usize,
) -> anyhow::Result<()> {
    let base = format!("http://127.0.0.1:{api_port}/v1/tenants/bench/trino");
    let http = reqwest::Client::new();
    let started = Instant::now();
    loop {
        if http
            .get(format!("http://127.0.0.1:{api_port}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(120),
            "lily run did not start"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let shop_port = pg_port.to_owned();
    let analyst_query = move || -> anyhow::Result<String> {
        let out = Command::new("psql")
            .args([
                "-X",
                "-A",
                "-t",
                "-h",
                "127.0.0.1",
                "-p",
                &shop_port,
                "-U",
                "analyst",
                "-d",
                "shop",
            ])
            .args(["-c", "SELECT email FROM lily_bench.customers WHERE id = 1"])
            .env("PGSSLMODE", "disable")
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    // The view exists once the sink has run.
    until(Instant::now(), || {
        let q = analyst_query.clone();
        async move { Ok(q()? == "user1@example.com") }
    })
    .await
    .context("the masking view never appeared")?;

    let customers_batch = opa(json!({"operation": "GetColumnMask", "filterResources": [
        column("customers", "id"), column("customers", "email"), column("customers", "city")]}));
    let consumer: StreamConsumer = broker.consumer_config("bench-policy-events").create()?;
    consumer.subscribe(&["lily.bench.column_policies"])?;
    let consumer = Arc::new(consumer);

    println!(
        "\ntag to enforced: commit of the tag (or of its removal) → each enforcement point ({tags} tags each way)"
    );
    let (mut opa_on, mut opa_off, mut pg_on, mut pg_off, mut ev_on, mut ev_off) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for _ in 0..tags {
        for on in [true, false] {
            let sql = if on {
                "INSERT INTO metastore.classifications (tenant_id, asset_guid, tag)
                 SELECT 'bench', guid, 'PII' FROM metastore.assets WHERE tenant_id = 'bench' AND qualified_name = 'wh.s.customers.email'"
            } else {
                "DELETE FROM metastore.classifications c USING metastore.assets a
                  WHERE a.guid = c.asset_guid AND a.tenant_id = 'bench' AND a.qualified_name = 'wh.s.customers.email'"
            };
            client.execute(sql, &[]).await?;
            let at = Instant::now();
            let opa_wait = until(at, || {
                let http = http.clone();
                let url = format!("{base}/batch-column-masks/{key}");
                let body = customers_batch.clone();
                async move {
                    let v: Value = http.post(url).json(&body).send().await?.json().await?;
                    let masked = v["result"].as_array().is_some_and(|a| !a.is_empty());
                    Ok(masked == on)
                }
            });
            let pg_wait = until(at, || {
                let q = analyst_query.clone();
                async move {
                    let v = tokio::task::spawn_blocking(q).await??;
                    Ok((v.len() == 64) == on)
                }
            });
            let consumer = consumer.clone();
            let event_wait = async move {
                let deadline = at + Duration::from_secs(60);
                loop {
                    let m = tokio::time::timeout_at(deadline.into(), consumer.recv())
                        .await
                        .context("no policy event in 60 s")??;
                    let v: Value = serde_json::from_slice(m.payload().unwrap_or_default())?;
                    let after = &v["after"];
                    if after["qualified_name"] == "wh.s.customers.email"
                        && after["mask"].is_null() != on
                    {
                        return anyhow::Ok(at.elapsed().as_secs_f64() * 1000.0);
                    }
                }
            };
            let (o, p, e) = tokio::try_join!(opa_wait, pg_wait, event_wait)?;
            if on {
                opa_on.push(o);
                pg_on.push(p);
                ev_on.push(e);
            } else {
                opa_off.push(o);
                pg_off.push(p);
                ev_off.push(e);
            }
        }
    }
    summary("Trino OPA answer, tag added", opa_on);
    summary("Trino OPA answer, tag removed", opa_off);
    summary("downstream PostgreSQL, tag added", pg_on);
    summary("downstream PostgreSQL, tag removed", pg_off);
    summary("policy event on Kafka, tag added", ev_on);
    summary("policy event on Kafka, tag removed", ev_off);
    println!("  (PostgreSQL: polled with psql, one process per poll, ~10 ms each)");

    println!("\nOPA decisions per second ({concurrency} clients, {seconds} s each)");
    let wide: Vec<Value> = (0..WIDE)
        .map(|i| column("wide", &format!("c{i}")))
        .collect();
    for (name, decision, body, items) in [
        (
            "allow (single)",
            "allow",
            opa(json!({"operation": "ExecuteQuery"})),
            1,
        ),
        (
            "column mask (single)",
            "column-mask",
            opa(json!({"operation": "GetColumnMask", "resource": column("wide", "c7")})),
            1,
        ),
        (
            "batch column masks (500 columns)",
            "batch-column-masks",
            opa(json!({"operation": "GetColumnMask", "filterResources": wide})),
            WIDE,
        ),
    ] {
        let url = format!("{base}/{decision}/{key}");
        let body = Arc::new(serde_json::to_vec(&body)?);
        let done = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut latencies = Vec::new();
        let mut clients = tokio::task::JoinSet::new();
        for _ in 0..concurrency {
            let (http, url, body, done) = (http.clone(), url.clone(), body.clone(), done.clone());
            clients.spawn(async move {
                let mut mine = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let r = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.to_vec())
                        .send()
                        .await?;
                    anyhow::ensure!(r.status().is_success(), "{}", r.status());
                    r.bytes().await?;
                    mine.push(t.elapsed().as_secs_f64() * 1000.0);
                    done.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(mine)
            });
        }
        while let Some(r) = clients.join_next().await {
            latencies.extend(r??);
        }
        latencies.sort_by(|a, b| a.total_cmp(b));
        let n = done.load(Ordering::Relaxed) as f64;
        println!(
            "  {name:<34} {:>8.0} requests/s {:>10.0} columns/s   p50 {:.2} ms   p99 {:.2} ms",
            n / seconds as f64,
            n * items as f64 / seconds as f64,
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
        );
    }
    Ok(())
}
