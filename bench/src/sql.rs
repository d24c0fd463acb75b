//! The SQL endpoint benchmark.
//!
//! Tag to enforcement: an open session polls a masked-to-be column while a
//! tag commits in the metastore; the time from the commit to the first
//! masked row, over `tags` tags, (a) on the governed column itself and (b)
//! on an upstream column whose downstream closure is `closure` assets, the
//! governed column among them (reached once propagation commits).
//!
//! Query overhead: a full scan of `rows` rows and a join with an aggregate,
//! run by psql through the endpoint with masks, through it without (a
//! session holding the unmasking role), and straight against the source
//! PostgreSQL; wall time of the same psql command, median of `rounds`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use lily_embedded::PgCluster;

use crate::DB;

const SECRET: &str = "bench-sql-secret";

fn token(grants: &[&str]) -> anyhow::Result<String> {
    lily_tests::api::hs256(SECRET, &lily_tests::api::claims("bench", grants, 3600))
}

async fn session(port: u16, password: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user("bench")
        .dbname(DB_TENANT)
        .password(password)
        .connect(tokio_postgres::NoTls)
        .await?;
    tokio::spawn(conn);
    Ok(client)
}

const DB_TENANT: &str = "bench";

/// The value at percentile `p` (0 to 1) of `sorted`; NaN when there is none.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(f64::NAN)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    percentile(&v, 0.5)
}

/// Tags `column` (or removes its tag) and returns when the change has committed.
async fn set_tag(
    client: &tokio_postgres::Client,
    asset: &str,
    on: bool,
) -> anyhow::Result<Instant> {
    if on {
        client
            .execute(
                "INSERT INTO metastore.classifications (tenant_id, asset_guid, tag)
                 SELECT 'bench', guid, 'PII' FROM metastore.assets WHERE tenant_id = 'bench' AND qualified_name = $1",
                &[&asset],
            )
            .await?;
    } else {
        client
            .execute(
                "DELETE FROM metastore.classifications c USING metastore.assets a
                  WHERE a.guid = c.asset_guid AND a.tenant_id = 'bench' AND a.qualified_name = $1 AND c.source = 'direct'",
                &[&asset],
            )
            .await?;
    }
    Ok(Instant::now())
}

/// Polls `sql` on `s` until `want(value)`; the time since `from`, in ms.
async fn until(
    s: &tokio_postgres::Client,
    stmt: &tokio_postgres::Statement,
    from: Instant,
    want: impl Fn(&str) -> bool,
) -> anyhow::Result<f64> {
    let deadline = from + Duration::from_secs(60);
    loop {
        let v: String = s.query_one(stmt, &[]).await?.get(0);
        if want(&v) {
            return Ok(from.elapsed().as_secs_f64() * 1000.0);
        }
        anyhow::ensure!(Instant::now() < deadline, "no change in 60 s");
    }
}

fn psql_seconds(port: u16, db: &str, user: &str, password: &str, sql: &str) -> anyhow::Result<f64> {
    let started = Instant::now();
    let status = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            user,
            "-d",
            db,
        ])
        .args(["-o", "/dev/null", "-c", sql])
        .env("PGPASSWORD", password)
        .env("PGSSLMODE", "disable")
        .stdout(Stdio::null())
        .status()
        .context("running psql")?;
    anyhow::ensure!(status.success(), "psql {sql} failed");
    Ok(started.elapsed().as_secs_f64())
}

/// Runs the benchmark; prints its figures.
pub async fn run(
    cluster: &PgCluster,
    dir: &Path,
    rows: i64,
    tags: usize,
    closure: i64,
    rounds: usize,
) -> anyhow::Result<()> {
    let client = cluster.connect(DB).await?;
    cluster.create_database("warehouse").await?;
    let wh = cluster.connect("warehouse").await?;
    println!(
        "loading the warehouse: {rows} events, {} customers",
        rows / 10
    );
    wh.execute(
        "CREATE TABLE customers AS SELECT g AS id, 'user' || g || '@example.com' AS email,
                (ARRAY['Paris','Lyon','Oslo','Kyoto'])[1 + g % 4] AS city
           FROM generate_series(1, $1::bigint) g",
        &[&(rows / 10)],
    )
    .await?;
    wh.execute(
        "CREATE TABLE events AS SELECT g AS id, 1 + g % $2::bigint AS customer_id, (g % 1000)::int AS amount,
                'note about order ' || g AS note
           FROM generate_series(1, $1::bigint) g",
        &[&rows, &(rows / 10)],
    )
    .await?;
    wh.batch_execute(
        "ALTER TABLE customers ADD PRIMARY KEY (id); ANALYZE customers; ANALYZE events;",
    )
    .await?;

    // The catalog: the two tables with their columns, and an upstream tree
    // of `closure` columns whose last leaf feeds customers.email.
    client
        .batch_execute(
            "INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name) VALUES
                ('bench', 'table', 'wh.customers', 'customers'), ('bench', 'table', 'wh.events', 'events');
             INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name, parent_guid)
             SELECT 'bench', 'column', t.qualified_name || '.' || c, c, t.guid
               FROM metastore.assets t,
                    LATERAL unnest(CASE WHEN t.name = 'customers' THEN ARRAY['id','email','city']
                                        ELSE ARRAY['id','customer_id','amount','note'] END) c
              WHERE t.tenant_id = 'bench' AND t.qualified_name LIKE 'wh.%';
             INSERT INTO metastore.governed_tables (tenant_id, table_name, asset, kind, connection, location) VALUES
                ('bench', 'customers', 'wh.customers', 'postgres', 'warehouse', 'public.customers'),
                ('bench', 'events', 'wh.events', 'postgres', 'warehouse', 'public.events');",
        )
        .await?;
    client
        .execute(
            "INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name)
             SELECT 'bench', 'column', 'up.' || g, 'up' || g FROM generate_series(0, $1::bigint - 1) g",
            &[&closure],
        )
        .await?;
    client
        .execute(
            "INSERT INTO metastore.lineage_edges (tenant_id, upstream_guid, downstream_guid)
             SELECT 'bench', u.guid, d.guid
               FROM generate_series(1, $1::bigint - 1) g
               JOIN metastore.assets u ON u.tenant_id = 'bench' AND u.qualified_name = 'up.' || ((g - 1) / 10)
               JOIN metastore.assets d ON d.tenant_id = 'bench' AND d.qualified_name = 'up.' || g",
            &[&closure],
        )
        .await?;
    client
        .execute(
            "INSERT INTO metastore.lineage_edges (tenant_id, upstream_guid, downstream_guid)
             SELECT 'bench', u.guid, d.guid FROM metastore.assets u, metastore.assets d
              WHERE u.tenant_id = 'bench' AND u.qualified_name = 'up.' || ($1::bigint - 1)
                AND d.tenant_id = 'bench' AND d.qualified_name = 'wh.customers.email'",
            &[&closure],
        )
        .await?;

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let lily = std::env::current_exe()?
        .parent()
        .map(|d| d.join("lily"))
        .context("no folder")?;
    let log = std::fs::File::create(dir.join("lily-sql.log"))?;
    let mut child = Command::new(&lily)
        .arg("run")
        .env("LILY_POSTGRES__URL", cluster.url(DB))
        .env("LILY_LAKE__ROOT", dir.join("lake-sql"))
        .env("LILY_METRICS__LISTEN", "")
        .env("LILY_API__LISTEN", "")
        .env("LILY_SQL__LISTEN", format!("127.0.0.1:{port}"))
        .env("LILY_SQL__CONNECTIONS__WAREHOUSE", cluster.url("warehouse"))
        .env("LILY_SQL__TENANT_SOURCES__BENCH", "warehouse")
        .env("LILY_AUTH__JWT_HS256_SECRETS", SECRET)
        .env(
            "LILY_PROPAGATION__MAX_ASSETS",
            (closure * 2).max(200_000).to_string(),
        )
        .env(
            "RUST_LOG",
            std::env::var("LILY_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", lily.display()))?;
    let viewer = token(&["bench:viewer"])?;
    let reader = token(&["bench:viewer", "bench:pii_reader"])?;
    let started = Instant::now();
    let s = loop {
        if let Ok(s) = session(port, &viewer).await
            && s.query_one("SELECT count(*) FROM customers WHERE id = 1", &[])
                .await
                .is_ok()
        {
            break s;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(120),
            "the endpoint did not start"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let email = s
        .prepare("SELECT email FROM customers WHERE id = 1")
        .await?;
    let hashed = |v: &str| v.len() == 64 && !v.contains('@');

    println!(
        "\ntag to enforcement: commit of the tag → first masked row in an open session ({tags} tags each)"
    );
    let mut direct = Vec::new();
    let mut upstream = Vec::new();
    for _ in 0..tags {
        let at = set_tag(&client, "wh.customers.email", true).await?;
        direct.push(until(&s, &email, at, hashed).await?);
        let at = set_tag(&client, "wh.customers.email", false).await?;
        until(&s, &email, at, |v| v.contains('@')).await?;
    }
    for _ in 0..tags {
        let at = set_tag(&client, "up.0", true).await?;
        upstream.push(until(&s, &email, at, hashed).await?);
        let at = set_tag(&client, "up.0", false).await?;
        until(&s, &email, at, |v| v.contains('@')).await?;
    }
    for (what, v) in [
        ("direct tag on the governed column", &mut direct),
        (
            &*format!("tag {closure} assets upstream (propagated)"),
            &mut upstream,
        ),
    ] {
        v.sort_by(|a, b| a.total_cmp(b));
        println!(
            "  {what:<45} p50 {:>7.1} ms   p99 {:>7.1} ms   max {:>7.1} ms",
            percentile(v, 0.5),
            percentile(v, 0.99),
            percentile(v, 1.0)
        );
    }
    println!(
        "  anchors: Apache Ranger plugins poll policies every 30 s and tags every 60 s (up to 90 s)"
    );

    // Masks on: events.note and customers.email tagged PII.
    set_tag(&client, "wh.customers.email", true).await?;
    set_tag(&client, "wh.events.note", true).await?;
    until(&s, &email, Instant::now(), hashed).await?;
    let note = s.prepare("SELECT note FROM events WHERE id = 1").await?;
    until(&s, &note, Instant::now(), |v| !v.contains("order")).await?;
    let queries = [
        ("scan", "SELECT * FROM events".to_owned()),
        // The same rows without psql's table formatting, as a loader reads them.
        ("copy", "COPY (SELECT * FROM events) TO STDOUT".to_owned()),
        (
            "join",
            "SELECT c.email, count(*), sum(e.amount) FROM events e JOIN customers c ON c.id = e.customer_id GROUP BY c.email".to_owned(),
        ),
    ];
    println!(
        "\nquery overhead: psql wall time, median of {rounds} rounds ({rows} events, {} customers)",
        rows / 10
    );
    let direct_url = lily_embedded::PgCluster::port(cluster);
    // Unmasked and straight from PostgreSQL first; then masked, once with
    // the default MASK_HASH (64-character values) and once with MASK, which
    // keeps each value's length: the second isolates the cost of masking
    // from that of sending and printing longer values.
    let mut baselines = Vec::new();
    for (_, sql) in &queries {
        let mut unmasked = Vec::new();
        let mut source = Vec::new();
        for _ in 0..rounds {
            unmasked.push(psql_seconds(port, DB_TENANT, "bench", &reader, sql)?);
            source.push(psql_seconds(direct_url, "warehouse", "postgres", "", sql)?);
        }
        baselines.push((median(unmasked), median(source)));
    }
    for mask in ["MASK_HASH", "MASK"] {
        client
            .execute(
                "UPDATE metastore.masking_policies SET mask = $1 WHERE tenant_id = 'bench' AND name = 'pii'",
                &[&mask],
            )
            .await?;
        let masked_note = |v: &str| match mask {
            "MASK" => v.starts_with("xxxx xxxxx xxxxx n"),
            _ => v.len() == 64,
        };
        until(&s, &note, Instant::now(), masked_note).await?;
        for ((name, sql), (u, d)) in queries.iter().zip(&baselines) {
            // MASK would group the join by masked e-mails: another query.
            if mask == "MASK" && *name == "join" {
                continue;
            }
            let mut masked = Vec::new();
            for _ in 0..rounds {
                masked.push(psql_seconds(port, DB_TENANT, "bench", &viewer, sql)?);
            }
            let m = median(masked);
            println!(
                "  {name:<5} {mask:<9} masked {m:>6.2} s   unmasked {u:>6.2} s   PostgreSQL direct {d:>6.2} s   unmasked/masked {:.2}   direct/masked {:.2}",
                u / m,
                d / m
            );
        }
    }
    // SAFETY: kill(2) on our own child; SIGTERM asks for a clean stop.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let _ = child.wait();
    Ok(())
}
