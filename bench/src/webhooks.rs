//! Signed Monte Carlo webhooks against one `lily run`: sustained requests
//! per second and request-to-commit latency (the API answers 200 only after
//! the incident's transaction committed), and request-to-searchable latency
//! (sampled incidents looked up in the search index until the tables they
//! name show them). Side by side, the baseline: the same incident upserts
//! sent straight to PostgreSQL over as many connections, which is what the
//! metastore alone can take.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use lily_embedded::PgCluster;
use lily_inbound::signature::{hmac_sha512_hex, python_form};

use crate::{DB, percentile_ms};

const SECRET: &str = "bench-monte-carlo-secret";
const TABLES: i64 = 1000;

use crate::outbound::PROBE_EVERY;

fn event(id: u64) -> Vec<u8> {
    let table = id as i64 % TABLES;
    serde_json::to_vec(&serde_json::json!({
        "account": {"id": "bench"},
        "action": "incident",
        "payload": {
            "incident_id": format!("bench-{id}"),
            "url": format!("https://getmontecarlo.com/incidents/bench-{id}"),
            "declared_alert_severity": "SEV-2",
            "event_list": [
                {"table_name": format!("dw:bench.t{table}"), "event_details": "Has 0 new rows"},
                {"table_name": format!("dw:bench.t{}", (table + 1) % TABLES), "event_details": "Has 0 new rows"}
            ]
        },
        "type": "open_anomaly_incident",
        "version": "v0.1"
    }))
    .expect("JSON")
}

/// Looks the waiting incidents up in the search index every few
/// milliseconds; an incident is searchable once a document lists it.
async fn probe(
    url: String,
    waiting: Arc<Mutex<HashMap<String, Instant>>>,
    found: Arc<Mutex<Vec<Duration>>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let http = reqwest::Client::new();
    while !*stop.borrow() {
        let ids: Vec<String> = waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        if !ids.is_empty() {
            let body = serde_json::json!({
                "size": 100, "_source": ["incidents"],
                "query": {"nested": {"path": "incidents", "query": {"terms": {"incidents.incident_id": ids}}}}
            });
            if let Ok(r) = http.post(&url).json(&body).send().await
                && let Ok(v) = r.json::<serde_json::Value>().await
            {
                let now = Instant::now();
                let mut w = waiting.lock().unwrap_or_else(|p| p.into_inner());
                for hit in v["hits"]["hits"].as_array().into_iter().flatten() {
                    for i in hit["_source"]["incidents"].as_array().into_iter().flatten() {
                        if let Some(at) = i["incident_id"].as_str().and_then(|id| w.remove(id)) {
                            found
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(now - at);
                        }
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(PROBE_EVERY) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Where a webhook's time went inside `lily run`: the groups, the
/// transform's runs and the write transactions.
fn print_inbound_stages(metrics: &str) {
    println!("  where the webhooks' time went (means over the run):");
    for (label, metric, filter) in [
        (
            "events per group",
            "lily_inbound_group_events",
            "kind=\"incidents\"",
        ),
        ("mapping (one run)", "lily_transform_seconds", "monte_carlo"),
        (
            "write transaction",
            "lily_inbound_write_seconds",
            "kind=\"incidents\"",
        ),
        (
            "request",
            "lily_inbound_request_duration_seconds",
            "monte-carlo",
        ),
    ] {
        let (sum, count) = crate::outbound::histogram_totals(metrics, metric, filter);
        if count > 0.0 && label == "events per group" {
            println!("    {label:<22} {:>7.1} x {count:.0}", sum / count);
        } else if count > 0.0 {
            println!(
                "    {label:<22} {:>7.1} ms x {count:.0}",
                sum / count * 1000.0
            );
        }
    }
}

fn report(label: &str, mut lat: Vec<Duration>, elapsed: Duration) -> f64 {
    lat.sort_unstable();
    let rate = lat.len() as f64 / elapsed.as_secs_f64();
    println!(
        "  {label:<28} {:>8.0} incidents/s   p50 {:>6.2} ms   p99 {:>6.2} ms   ({} in {:.1} s)",
        rate,
        percentile_ms(&lat, 0.50),
        percentile_ms(&lat, 0.99),
        lat.len(),
        elapsed.as_secs_f64()
    );
    rate
}

/// Runs the benchmark for `seconds` with `concurrency` senders.
pub async fn run(
    cluster: &PgCluster,
    dir: &Path,
    seconds: u64,
    concurrency: usize,
    search: bool,
) -> anyhow::Result<()> {
    println!(
        "\n== Monte Carlo webhooks: {concurrency} senders, {seconds} s each{} ==",
        if search {
            ""
        } else {
            ", without the search sink"
        }
    );
    let client = cluster.connect(DB).await?;
    client
        .execute(
            "INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name)
             SELECT 'bench', 'table', 'dw.bench.t' || n, 't' || n FROM generate_series(0, $1::bigint - 1) n",
            &[&TABLES],
        )
        .await?;

    let lily = std::env::current_exe()?
        .parent()
        .map(|d| d.join("lily"))
        .context("no folder")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let transforms = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sql-transforms");
    let log = dir.join("lily-webhooks.log");
    let search = match search {
        true => Some(lily_tests::search_server::SearchServer::start().await?),
        false => None,
    };
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut command = std::process::Command::new(&lily);
    if let Some(search) = &search {
        command
            .env("LILY_SINKS__SEARCH__TYPE", "elasticsearch")
            .env("LILY_SINKS__SEARCH__URLS", search.url());
    }
    let mut child = command
        .arg("run")
        .env("LILY_POSTGRES__URL", cluster.url(DB))
        .env("LILY_LAKE__ROOT", dir.join("lake-webhooks"))
        .env("LILY_REPLICATION__SLOT", "webhooks")
        .env("LILY_TRANSFORMS__DIR", &transforms)
        .env("LILY_API__LISTEN", format!("127.0.0.1:{port}"))
        .env("LILY_API__POOL_SIZE", concurrency.to_string())
        // One tenant sends from every sender: let all of them in at once,
        // so the events that arrive together can be written together.
        .env("LILY_API__TENANT_CONCURRENCY", concurrency.to_string())
        .env("LILY_MONTE_CARLO__SECRETS__BENCH", SECRET)
        .env("LILY_METRICS__LISTEN", format!("127.0.0.1:{metrics_port}"))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("starting {} (build it with --release too)", lily.display()))?;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let ready = Instant::now();
    while http.get(format!("{base}/healthz")).send().await.is_err() {
        anyhow::ensure!(
            ready.elapsed() < Duration::from_secs(120),
            "lily run did not start; see {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Lily: signed POSTs, each answered after its commit; one in 20 is
    // followed until it is searchable.
    let next = Arc::new(AtomicU64::new(0));
    let waiting: Arc<Mutex<HashMap<String, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let searchable: Arc<Mutex<Vec<Duration>>> = Arc::new(Mutex::new(Vec::new()));
    let (stop_probe, probe_stopped) = tokio::sync::watch::channel(false);
    let prober = search.as_ref().map(|search| {
        tokio::spawn(probe(
            format!("{}/lily-bench-assets/_search", search.url()),
            waiting.clone(),
            searchable.clone(),
            probe_stopped,
        ))
    });
    let follow = search.is_some();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (http, base, next) = (http.clone(), base.clone(), next.clone());
        let waiting = waiting.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let id = next.fetch_add(1, Ordering::Relaxed);
                let body = event(id);
                let form = python_form(&body).unwrap_or_default();
                let sig = hmac_sha512_hex(SECRET.as_bytes(), form.as_bytes());
                let t = Instant::now();
                let resp = http
                    .post(format!("{base}/v1/tenants/bench/ingest/monte-carlo"))
                    .header("x-mcd-signature", sig)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await?;
                anyhow::ensure!(
                    resp.status().is_success(),
                    "HTTP {}: {}",
                    resp.status(),
                    resp.text().await?
                );
                lat.push(t.elapsed());
                if follow && id % 20 == 0 {
                    let answer: serde_json::Value = resp.json().await?;
                    if let Some(incident) = answer["incidents"][0]["incident_id"].as_str() {
                        waiting
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(incident.to_owned(), t);
                    }
                }
            }
            anyhow::Ok(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let lily_rate = report("lily (HTTP, signed)", lat, started.elapsed());
    let drained = Instant::now();
    while !waiting.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
        && drained.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_probe.send(true);
    if let Some(prober) = prober {
        let _ = prober.await;
    }
    let mut found = searchable.lock().unwrap_or_else(|p| p.into_inner()).clone();
    found.sort_unstable();
    let unseen = waiting.lock().unwrap_or_else(|p| p.into_inner()).len();
    if follow {
        println!(
            "  request-to-searchable        p50 {:>6.0} ms   p99 {:>6.0} ms   ({} sampled incidents, probed every {} ms{})",
            percentile_ms(&found, 0.50),
            percentile_ms(&found, 0.99),
            found.len(),
            PROBE_EVERY.as_millis(),
            if unseen > 0 {
                format!(", {unseen} never seen")
            } else {
                String::new()
            }
        );
    }
    if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics")).await
        && let Ok(text) = r.text().await
    {
        if follow {
            crate::outbound::print_search_stages(&text);
        }
        print_inbound_stages(&text);
    }
    // The baseline once more while `lily run` still streams the tables it
    // writes: what the metastore takes with change data capture on.
    let (lat, elapsed) = baseline(cluster, seconds, concurrency, 1 << 33).await?;
    let streaming_rate = report("baseline, lily run streaming", lat, elapsed);
    let _ = child.kill();
    let _ = child.wait();

    let (lat, elapsed) = baseline(cluster, seconds, concurrency, 1 << 32).await?;
    let base_rate = report("baseline (SQL, no HTTP)", lat, elapsed);
    println!("  ratio lily / baseline: {:.2}", lily_rate / base_rate);
    println!(
        "  ratio lily / baseline with lily run streaming: {:.2}",
        lily_rate / streaming_rate
    );
    Ok(())
}

/// The same incident upserts sent straight to PostgreSQL over `concurrency`
/// connections for `seconds`, ids from `first`: each one's latency, and
/// how long it all took.
async fn baseline(
    cluster: &PgCluster,
    seconds: u64,
    concurrency: usize,
    first: u64,
) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let next = Arc::new(AtomicU64::new(first));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let mut pg = cluster.connect(DB).await?;
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let id = next.fetch_add(1, Ordering::Relaxed);
                let table = id as i64 % TABLES;
                let names = vec![format!("dw.bench.t{table}"), format!("dw.bench.t{}", (table + 1) % TABLES)];
                let payload: serde_json::Value = serde_json::from_slice(&event(id))?;
                let t = Instant::now();
                let tx = pg.transaction().await?;
                let row = tx
                    .query_one(
                        "INSERT INTO metastore.incidents AS i (tenant_id, source_system, external_id, incident_type, title, state, severity, url, payload)
                         VALUES ('bench', 'monte_carlo', $1, 'anomaly', $2, 'open', 'SEV-2', $3, $4)
                         ON CONFLICT (tenant_id, source_system, external_id) DO UPDATE SET payload = EXCLUDED.payload
                         RETURNING incident_id",
                        &[&format!("base-{id}"), &format!("anomaly on {}", names[0]), &format!("https://getmontecarlo.com/incidents/base-{id}"), &payload],
                    )
                    .await?;
                let incident: uuid::Uuid = row.get(0);
                tx.execute(
                    "INSERT INTO metastore.incident_assets (tenant_id, incident_id, qualified_name)
                     SELECT 'bench', $1, n FROM unnest($2::text[]) n ON CONFLICT DO NOTHING",
                    &[&incident, &names],
                )
                .await?;
                tx.commit().await?;
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    Ok((lat, started.elapsed()))
}
