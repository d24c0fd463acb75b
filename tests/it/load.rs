//! What tenants share: one tenant's flood waits in its own queue, and slow
//! or silent clients are cut off, so another tenant's requests keep their
//! latency.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use lily_tests::api::ApiClient;
use lily_tests::{TestEnv, wait_for};
use serde_json::json;

/// Tenant b's requests may take at most this long at the 99th percentile
/// while tenant a floods the API (on two cores, with the pipeline running).
const P99_BOUND: Duration = Duration::from_secs(2);

fn p99(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    let i = ((samples.len() as f64) * 0.99).ceil() as usize;
    samples[i.saturating_sub(1).min(samples.len() - 1)]
}

/// `n` sequential upserts of one asset by tenant `tenant`: their latencies,
/// and the statuses that were not 200.
async fn steady(
    api: &ApiClient,
    tenant: &str,
    key: &str,
    n: usize,
) -> anyhow::Result<(Vec<Duration>, Vec<u16>)> {
    let path = format!("/v1/tenants/{tenant}/assets");
    let (mut took, mut failed) = (Vec::new(), Vec::new());
    for i in 0..n {
        let body = json!({"assets": [{"qualified_name": format!("steady.t{i}"), "type": "table"}]});
        let started = Instant::now();
        let r = api.post(&path, &body, &[("x-api-key", key)]).await?;
        took.push(started.elapsed());
        if r.status != 200 {
            failed.push(r.status);
        }
    }
    Ok((took, failed))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flooding_tenant_does_not_slow_another() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    let base = env.enable_api()?;
    env.client()
        .await?
        .batch_execute(
            "INSERT INTO metastore.tenants (tenant_id, name) VALUES ('a', 'A'), ('b', 'B')",
        )
        .await?;
    let key_a = env.create_api_key("a", "ingest", "flood")?;
    let key_b = env.create_api_key("b", "ingest", "steady")?;
    let lily = env.spawn_lily_with(
        &["run"],
        &[
            ("LILY_API__TENANT_CONCURRENCY".into(), "2".into()),
            ("LILY_API__TENANT_QUEUE_MS".into(), "200".into()),
        ],
    )?;
    let api = ApiClient::new(&base);
    api.wait_ready().await?;

    let (quiet, failed) = steady(&api, "b", &key_b, 40).await?;
    assert!(failed.is_empty(), "b refused while quiet: {failed:?}");

    // Tenant a: 24 clients, each posting 200 assets a request, until b is done.
    let flooding = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut flood = Vec::new();
    for c in 0..24 {
        let (api, key, flooding) = (api.clone(), key_a.clone(), flooding.clone());
        flood.push(tokio::spawn(async move {
            let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
            let mut round = 0;
            while flooding.load(std::sync::atomic::Ordering::Relaxed) {
                let assets: Vec<_> = (0..200)
                    .map(|i| json!({"qualified_name": format!("flood.c{c}.t{i}"), "type": "table", "description": format!("round {round}")}))
                    .collect();
                let r = api
                    .post("/v1/tenants/a/assets", &json!({"assets": assets}), &[("x-api-key", &key)])
                    .await?;
                *statuses.entry(r.status).or_default() += 1;
                round += 1;
            }
            anyhow::Ok(statuses)
        }));
    }
    // Let the flood fill a's slots before b measures.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (loaded, failed) = steady(&api, "b", &key_b, 40).await?;
    flooding.store(false, std::sync::atomic::Ordering::Relaxed);
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for f in flood {
        for (s, n) in f.await?? {
            *statuses.entry(s).or_default() += n;
        }
    }
    let (quiet, loaded) = (p99(quiet), p99(loaded));
    println!(
        "tenant b p99: quiet {quiet:?}, under a's flood {loaded:?}; a's statuses {statuses:?}"
    );
    assert!(failed.is_empty(), "b refused under a's flood: {failed:?}");
    assert!(
        statuses.get(&429).copied().unwrap_or(0) > 0,
        "a's flood beyond its slots is refused with 429: {statuses:?}"
    );
    assert!(
        statuses.keys().all(|s| *s == 200 || *s == 429),
        "a gets 200 or 429, nothing else: {statuses:?}"
    );
    assert!(
        loaded <= P99_BOUND,
        "b's p99 under a's flood is {loaded:?} (quiet: {quiet:?}), over {P99_BOUND:?}"
    );
    lily.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_and_trickling_clients_are_cut_off() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    let base = env.enable_api()?;
    env.client()
        .await?
        .batch_execute("INSERT INTO metastore.tenants (tenant_id, name) VALUES ('a', 'A')")
        .await?;
    let key = env.create_api_key("a", "ingest", "slow")?;
    let lily = env.spawn_lily_with(
        &["run"],
        &[
            ("LILY_API__HEADER_TIMEOUT_MS".into(), "500".into()),
            ("LILY_API__BODY_TIMEOUT_MS".into(), "500".into()),
        ],
    )?;
    ApiClient::new(&base).wait_ready().await?;
    let addr = base.trim_start_matches("http://").to_owned();

    // Headers that never end: the server closes the connection.
    let mut silent = std::net::TcpStream::connect(&addr)?;
    silent.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")?;
    silent.set_read_timeout(Some(Duration::from_secs(10)))?;
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = silent.read_to_end(&mut rest);
    let closed_after = started.elapsed();
    assert!(
        closed_after < Duration::from_secs(10),
        "the server kept a connection without headers open"
    );

    // A body announced and never sent: 408 with the JSON error.
    let mut trickle = std::net::TcpStream::connect(&addr)?;
    write!(
        trickle,
        "POST /v1/tenants/a/assets HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"assets\""
    )?;
    trickle.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut answer = Vec::new();
    let _ = trickle.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"request_timeout\""), "{answer}");

    // The API still answers.
    wait_for(
        "the API after slow clients",
        Duration::from_secs(10),
        || async {
            Ok(ApiClient::new(&base)
                .get("/healthz", &[])
                .await
                .ok()
                .filter(|r| r.status == 200))
        },
    )
    .await?;
    println!("a connection without headers was closed after {closed_after:?}");
    lily.stop().await?;
    Ok(())
}
