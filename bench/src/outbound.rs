//! The search and Kafka sinks at work, against the servers the tests use
//! (osmem-server for the Elasticsearch API, tansu for Kafka), started here:
//!
//! - documents indexed per second when `lily run` drains a backlog into
//!   search, next to a baseline that `_bulk`-indexes the same documents
//!   straight into the same server (what the server takes without Lily);
//! - Kafka records per second for the same backlog, next to a baseline
//!   producer sending as many records of the same size with the same
//!   settings (idempotent, `acks=all`);
//! - commit-to-searchable latency at a steady rate: sampled rows are looked
//!   up in the index every few milliseconds from the moment their
//!   transaction committed until the search returns their new value.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use lily_embedded::PgCluster;
use lily_tests::broker::KafkaBroker;
use lily_tests::search_server::SearchServer;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};

use crate::{DB, percentile_ms, resumable_slot};

const ALIAS: &str = "lily-bench-assets";

/// How often the prober asks the index: often enough to see latencies to
/// tens of milliseconds, seldom enough not to load the server it measures.
pub const PROBE_EVERY: Duration = Duration::from_millis(20);

fn lily_bin() -> anyhow::Result<std::path::PathBuf> {
    std::env::current_exe()?
        .parent()
        .map(|d| d.join("lily"))
        .context("no folder")
}

/// `lily run` on `slot` with `extra` settings; its log goes to `dir`.
fn spawn_lily(
    cluster: &PgCluster,
    dir: &Path,
    slot: &str,
    extra: &[(&str, String)],
) -> anyhow::Result<Child> {
    let transforms = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sql-transforms");
    let mut cmd = Command::new(lily_bin()?);
    cmd.arg("run")
        .env("LILY_POSTGRES__URL", cluster.url(DB))
        .env("LILY_LAKE__ROOT", dir.join(format!("lake-{slot}")))
        .env("LILY_METRICS__LISTEN", "")
        .env("LILY_API__LISTEN", "")
        .env("LILY_REPLICATION__SLOT", slot)
        .env("LILY_TRANSFORMS__DIR", &transforms)
        .env("LILY_PROPAGATION__ENABLED", "false")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("lily-{slot}.log")))?);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.spawn()
        .context("starting lily (build it with --release too)")
}

fn stop(mut child: Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let _ = child.wait();
}

async fn count(server: &SearchServer, index: &str) -> u64 {
    match server.get(&format!("/{index}/_count")).await {
        Ok((200, v)) => v["count"].as_u64().unwrap_or(0),
        _ => 0,
    }
}

async fn confirmed_at_least(cluster: &PgCluster, slot: &str, lsn: &str) -> anyhow::Result<bool> {
    let client = cluster.connect(DB).await?;
    let row = client
        .query_opt(
            "SELECT confirmed_flush_lsn >= $2::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot, &lsn],
        )
        .await?;
    Ok(row
        .map(|r| r.get::<_, Option<bool>>(0).unwrap_or(false))
        .unwrap_or(false))
}

/// Runs the three measurements over a backlog of `rows` assets, then
/// `rate` changes a second for `seconds`.
pub async fn run(
    cluster: &PgCluster,
    dir: &Path,
    rows: i64,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<()> {
    println!("\n== search and Kafka sinks: a backlog of {rows} assets ==");
    let server = SearchServer::start().await?;
    let broker = KafkaBroker::start().await?;
    let client = cluster.connect(DB).await?;
    for slot in ["search_run", "kafka_run"] {
        resumable_slot(&client, slot).await?;
    }
    let mut start = 1;
    while start <= rows {
        let end = (start + 9_999).min(rows);
        client
            .execute(
                "INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name, owners, description)
                 SELECT 'bench', 'column', 'b.' || g, 'col' || g, ARRAY['owner' || (g % 13)], 'a column of a benchmark table'
                 FROM generate_series($1::bigint, $2::bigint) g",
                &[&start, &end],
            )
            .await?;
        start = end + 1;
    }
    let end: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);

    // Search through Lily.
    let es = [
        ("LILY_SINKS__SEARCH__TYPE", "elasticsearch".to_owned()),
        ("LILY_SINKS__SEARCH__URLS", server.url().to_owned()),
        ("LILY_SINKS__SEARCH__INDEX_PREFIX", "lily".to_owned()),
    ];
    let started = Instant::now();
    let lily = spawn_lily(cluster, dir, "search_run", &es)?;
    while count(&server, ALIAS).await < rows as u64 {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "search did not fill up; see {}",
            dir.join("lily-search_run.log").display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lily_docs = rows as f64 / started.elapsed().as_secs_f64();
    stop(lily);

    // Baseline: the same documents, _bulk straight into the server.
    let (_, page) = server
        .post(
            &format!("/{ALIAS}/_search"),
            &json!({"size": 1, "query": {"match_all": {}}}),
        )
        .await?;
    let sample = page["hits"]["hits"][0]["_source"].clone();
    let http = reqwest::Client::new();
    let started = Instant::now();
    let mut i = 0;
    while i < rows {
        let mut body = String::new();
        for j in i..(i + 5000).min(rows) {
            let mut doc = sample.clone();
            doc["qualified_name"] = Value::String(format!("b.{}", j + 1));
            body.push_str(
                &json!({"index": {"_index": "baseline", "_id": j.to_string(), "version": 1, "version_type": "external_gte"}})
                    .to_string(),
            );
            body.push('\n');
            body.push_str(&doc.to_string());
            body.push('\n');
        }
        let r = http
            .post(format!("{}/_bulk", server.url()))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "baseline _bulk: {}", r.status());
        i += 5000;
    }
    let base_docs = rows as f64 / started.elapsed().as_secs_f64();
    // The baseline's documents would only weigh on the server from here on.
    http.delete(format!("{}/baseline", server.url()))
        .send()
        .await?;
    println!(
        "  search: lily {lily_docs:>9.0} docs/s   baseline _bulk {base_docs:>9.0} docs/s   ratio {:.2}",
        lily_docs / base_docs
    );

    // Kafka through Lily: done when the slot confirms the end (every
    // record acknowledged by the broker).
    let kafka = [
        ("LILY_SINKS__KAFKA__TYPE", "kafka".to_owned()),
        ("LILY_SINKS__KAFKA__BROKERS", broker.bootstrap_servers()),
    ];
    let started = Instant::now();
    let lily = spawn_lily(cluster, dir, "kafka_run", &kafka)?;
    while !confirmed_at_least(cluster, "kafka_run", &end).await? {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "Kafka did not catch up; see {}",
            dir.join("lily-kafka_run.log").display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lily_records = rows as f64 / started.elapsed().as_secs_f64();
    stop(lily);

    // Baseline: as many records of that size, same producer settings.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap_servers())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .create()?;
    let payload = vec![b'x'; 700];
    let started = Instant::now();
    let mut pending = Vec::with_capacity(10_000);
    for i in 0..rows {
        let key = format!("k{}", i % 10_000);
        loop {
            match producer.send_result(FutureRecord::to("baseline").key(&key).payload(&payload)) {
                Ok(f) => {
                    pending.push(f);
                    break;
                }
                Err(_) => {
                    for f in pending.drain(..) {
                        let _ = f.await;
                    }
                }
            }
        }
        if pending.len() >= 10_000 {
            for f in pending.drain(..) {
                let _ = f.await;
            }
        }
    }
    for f in pending.drain(..) {
        let _ = f.await;
    }
    let base_records = rows as f64 / started.elapsed().as_secs_f64();
    println!(
        "  kafka:  lily {lily_records:>9.0} records/s   baseline producer {base_records:>9.0} records/s   ratio {:.2}",
        lily_records / base_records
    );

    searchable_latency(cluster, dir, &server, rows, rate, seconds).await
}

/// Commit-to-searchable at `rate` changes a second for `seconds`.
async fn searchable_latency(
    cluster: &PgCluster,
    dir: &Path,
    server: &SearchServer,
    rows: i64,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<()> {
    let client = cluster.connect(DB).await?;
    resumable_slot(&client, "latency_run").await?;
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let es = [
        ("LILY_SINKS__SEARCH__TYPE", "elasticsearch".to_owned()),
        ("LILY_SINKS__SEARCH__URLS", server.url().to_owned()),
        ("LILY_METRICS__LISTEN", format!("127.0.0.1:{metrics_port}")),
    ];
    let lily = spawn_lily(cluster, dir, "latency_run", &es)?;
    // Wait until the pipeline streams (its slot is active).
    let ready = Instant::now();
    loop {
        let active: bool = client
            .query_one(
                "SELECT coalesce(bool_or(active), false) FROM pg_replication_slots WHERE slot_name = 'latency_run'",
                &[],
            )
            .await?
            .get(0);
        if active {
            break;
        }
        anyhow::ensure!(
            ready.elapsed() < Duration::from_secs(300),
            "lily did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Samples: (qualified name, tick) -> commit time; the prober removes
    // them as they become searchable.
    let waiting: Arc<Mutex<HashMap<String, (i64, Instant)>>> = Arc::new(Mutex::new(HashMap::new()));
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::new(Mutex::new(Vec::new()));
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let prober = {
        let waiting = waiting.clone();
        let latencies = latencies.clone();
        let url = format!("{}/{ALIAS}/_search", server.url());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            loop {
                let names: Vec<String> = waiting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .keys()
                    .cloned()
                    .collect();
                if names.is_empty() && *stop_rx.borrow() {
                    break;
                }
                if !names.is_empty() {
                    let body = json!({"size": names.len(), "_source": ["qualified_name", "description"],
                                      "query": {"terms": {"qualified_name": names}}});
                    if let Ok(r) = http.post(&url).json(&body).send().await
                        && let Ok(v) = r.json::<Value>().await
                    {
                        let now = Instant::now();
                        let mut w = waiting.lock().unwrap_or_else(|p| p.into_inner());
                        for h in v["hits"]["hits"].as_array().into_iter().flatten() {
                            let qn = h["_source"]["qualified_name"].as_str().unwrap_or_default();
                            let tick: i64 = h["_source"]["description"]
                                .as_str()
                                .and_then(|d| d.strip_prefix("tick "))
                                .and_then(|t| t.parse().ok())
                                .unwrap_or(-1);
                            if let Some((want, at)) = w.get(qn).copied()
                                && tick >= want
                            {
                                w.remove(qn);
                                latencies
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .push(now - at);
                            }
                        }
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(PROBE_EVERY) => {}
                    _ = stop_rx.changed() => {}
                }
            }
        })
    };

    // 50 transactions a second of rate/50 updates; the first row of each is a sample.
    let per_tx = (rate / 50).max(1) as i64;
    let update = client
        .prepare("UPDATE metastore.assets SET description = 'tick ' || $3::bigint WHERE tenant_id = 'bench' AND qualified_name = ANY(SELECT 'b.' || g FROM generate_series($1::bigint, $2::bigint) g)")
        .await?;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let span = (rows - per_tx).max(1);
    const WARM_UP_TICKS: i64 = 100;
    for i in 0..(seconds * 50) as i64 + WARM_UP_TICKS {
        tick.tick().await;
        let first = 1 + (i * per_tx) % span;
        client
            .execute(&update, &[&first, &(first + per_tx - 1), &i])
            .await?;
        // The first two seconds warm the pipeline up (its first transform
        // runs, the index's first writes): not sampled.
        if i >= WARM_UP_TICKS {
            waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(format!("b.{first}"), (i, Instant::now()));
        }
    }
    let drained = Instant::now();
    while !waiting.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
        && drained.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lost = waiting.lock().unwrap_or_else(|p| p.into_inner()).len();
    let _ = stop_tx.send(true);
    let _ = prober.await;
    let stages = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await?
        .text()
        .await?;
    stop(lily);
    let mut l = latencies.lock().unwrap_or_else(|p| p.into_inner()).clone();
    l.sort_unstable();
    println!(
        "  commit-to-searchable at {rate} changes/s for {seconds} s: p50 {:.0} ms   p90 {:.0} ms   p99 {:.0} ms   max {:.0} ms   ({} samples, probed every {} ms{})",
        percentile_ms(&l, 0.50),
        percentile_ms(&l, 0.90),
        percentile_ms(&l, 0.99),
        percentile_ms(&l, 1.0),
        l.len(),
        PROBE_EVERY.as_millis(),
        if lost > 0 {
            format!(", {lost} never seen")
        } else {
            String::new()
        }
    );
    print_search_stages(&stages);
    Ok(())
}

/// Prints where the search sink's time went, from `lily run`'s metrics.
pub fn print_search_stages(metrics: &str) {
    println!("  where the search sink's time went (means over the run):");
    for (label, metric, filter) in [
        (
            "commit to indexed",
            "lily_commit_to_sink_seconds",
            "sink=\"search\"",
        ),
        (
            "search_documents.sql",
            "lily_transform_seconds",
            "search_documents",
        ),
        (
            "state.assets snapshot",
            "lily_state_snapshot_seconds",
            "table=\"assets\"",
        ),
        ("_bulk request", "lily_search_bulk_seconds", ""),
        ("search flush", "lily_sink_flush_seconds", "sink=\"search\""),
    ] {
        let (sum, count) = histogram_totals(metrics, metric, filter);
        if count > 0.0 {
            println!(
                "    {label:<22} {:>7.1} ms x {count:.0}",
                sum / count * 1000.0
            );
        }
    }
}

/// The `_sum` and `_count` of a histogram in Prometheus text, over the
/// series whose labels contain `filter`.
pub(crate) fn histogram_totals(text: &str, metric: &str, filter: &str) -> (f64, f64) {
    let value = |suffix: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(&format!("{metric}_{suffix}")) && l.contains(filter))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    (value("sum"), value("count"))
}
