//! Requests an attacker can send without credentials cost bounded work,
//! are refused alike whatever they guess, and never hold the replication
//! stream.

use std::time::{Duration, Instant};

use lily_tests::api::ApiClient;
use lily_tests::{TestEnv, wait_for, wait_streaming};

/// A JSON object of `n` distinct keys: about 11 bytes a key.
fn many_keys(n: usize) -> Vec<u8> {
    let keys: Vec<String> = (0..n).map(|i| format!("\"k{i}\":1")).collect();
    format!("{{{}}}", keys.join(",")).into_bytes()
}

/// When the server last heard from the reader (its standby status updates).
async fn reply_time(env: &TestEnv) -> anyhow::Result<Option<String>> {
    Ok(env
        .client()
        .await?
        .query_opt(
            "SELECT reply_time::text FROM pg_stat_replication WHERE reply_time IS NOT NULL
              ORDER BY reply_time DESC LIMIT 1",
            &[],
        )
        .await?
        .map(|r| r.get(0)))
}

#[tokio::test(flavor = "multi_thread")]
async fn unsigned_floods_get_a_quick_401_and_replication_keeps_reporting() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    let base = env.enable_api()?;
    env.client()
        .await?
        .batch_execute(
            "INSERT INTO metastore.tenants (tenant_id, name) VALUES ('acme', 'Acme'), ('beta', 'Beta')",
        )
        .await?;
    let lily = env.spawn_lily_with(
        &["run"],
        &[(
            "LILY_MONTE_CARLO__SECRETS__ACME".into(),
            "mc-secret-acme".into(),
        )],
    )?;
    let api = ApiClient::new(&base);
    api.wait_ready().await?;
    wait_streaming(&env, "lily").await?;
    let bogus = "00".repeat(64);
    let post = |tenant: &str, body: Vec<u8>| {
        let api = ApiClient::new(&base);
        let path = format!("/v1/tenants/{tenant}/ingest/monte-carlo");
        let bogus = bogus.clone();
        async move {
            let started = Instant::now();
            let r = api
                .send(
                    reqwest::Method::POST,
                    &path,
                    Some(body),
                    &[("x-mcd-signature", bogus.as_str())],
                )
                .await?;
            anyhow::Ok((r, started.elapsed()))
        }
    };

    // Unknown tenant, tenant without a secret, wrong signature: alike.
    for tenant in ["acme", "beta", "nosuch"] {
        let (r, _) = post(tenant, b"{\"type\": \"x\"}".to_vec()).await?;
        assert_eq!(
            (r.status, r.error()),
            (401, "bad_signature"),
            "{tenant}: {r:?}"
        );
    }

    // Four 1 MB bodies of 90,000 keys at once (each encoded in Python's
    // form before the signature can be checked), and one over the budget.
    // Before the fix each took about a minute of CPU, quadratic in the keys.
    let before = reply_time(&env).await?;
    let flood: Vec<_> = (0..4)
        .map(|_| tokio::spawn(post("acme", many_keys(90_000))))
        .chain(std::iter::once(tokio::spawn(post(
            "acme",
            many_keys(95_000),
        ))))
        .collect();
    let mut slowest = Duration::ZERO;
    for f in flood {
        let (r, took) = f.await??;
        assert_eq!((r.status, r.error()), (401, "bad_signature"), "{r:?}");
        slowest = slowest.max(took);
    }
    eprintln!("slowest refusal of a 1 MB body: {slowest:?}");
    // A bound far above what the work takes now (tens of ms) and far below
    // what it took before (a minute each).
    assert!(slowest < Duration::from_secs(15), "{slowest:?}");

    // The reader kept reporting to the server meanwhile.
    wait_for(
        "a standby status update after the flood",
        Duration::from_secs(30),
        || async {
            let now = reply_time(&env).await?;
            Ok((now.is_some() && now > before).then_some(()))
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", lily.output()))?;
    lily.stop().await?;
    Ok(())
}
