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

#[tokio::test(flavor = "multi_thread")]
async fn an_ingest_key_cannot_change_what_governs_propagation() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    let base = env.enable_api()?;
    let db = env.client().await?;
    db.batch_execute(
        "INSERT INTO metastore.tenants (tenant_id, name) VALUES ('acme', 'Acme');
         INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name)
           VALUES ('acme', 'column', 'crm.customers.email', 'email'),
                  ('acme', 'column', 'dw.users.email', 'email');
         INSERT INTO metastore.lineage_edges (tenant_id, upstream_guid, downstream_guid)
           SELECT 'acme', u.guid, d.guid FROM metastore.assets u, metastore.assets d
            WHERE u.qualified_name = 'crm.customers.email' AND d.qualified_name = 'dw.users.email';",
    )
    .await?;
    let key = |role: &str| env.create_api_key("acme", role, role);
    let (ingest, steward) = (key("ingest")?, key("steward")?);
    let lily = env.spawn_lily(&["run"])?;
    let api = ApiClient::new(&base);
    api.wait_ready().await?;
    let edge = |blocked: &[&str]| {
        serde_json::json!({"edges": [{
            "upstream": "crm.customers.email", "downstream": "dw.users.email", "blocked_tags": blocked
        }]})
    };
    let blocked = || async {
        anyhow::Ok(
            db.query_one("SELECT blocked_tags FROM metastore.lineage_edges", &[])
                .await?
                .get::<_, Vec<String>>(0),
        )
    };

    // The attacker's side: block PII from propagating, deprecate a table.
    let r = api
        .post(
            "/v1/tenants/acme/lineage",
            &edge(&["PII"]),
            &[("x-api-key", &ingest)],
        )
        .await?;
    assert_eq!((r.status, r.error()), (403, "forbidden"), "{r:?}");
    assert!(
        r.body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("blocked_tags"),
        "{r:?}"
    );
    assert!(blocked().await?.is_empty(), "nothing written");
    let deprecate = serde_json::json!({"assets": [
        {"qualified_name": "crm.customers.email", "type": "column", "certificate": "deprecated"}
    ]});
    let r = api
        .post(
            "/v1/tenants/acme/assets",
            &deprecate,
            &[("x-api-key", &ingest)],
        )
        .await?;
    assert_eq!((r.status, r.error()), (403, "forbidden"), "{r:?}");
    assert!(
        r.body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("certificate"),
        "{r:?}"
    );

    // What ingest is for still works: describing assets and edges, and
    // restating a governance field as it is.
    let describe = serde_json::json!({"assets": [
        {"qualified_name": "crm.customers.email", "type": "column", "description": "e-mail", "owners": ["ana@acme.example"]}
    ]});
    let r = api
        .post(
            "/v1/tenants/acme/assets",
            &describe,
            &[("x-api-key", &ingest)],
        )
        .await?;
    assert_eq!(r.status, 200, "{r:?}");
    let r = api
        .post(
            "/v1/tenants/acme/lineage",
            &edge(&[]),
            &[("x-api-key", &ingest)],
        )
        .await?;
    assert_eq!(r.status, 200, "{r:?}");

    // A steward may.
    let r = api
        .post(
            "/v1/tenants/acme/lineage",
            &edge(&["PII"]),
            &[("x-api-key", &steward)],
        )
        .await?;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(blocked().await?, vec!["PII".to_owned()]);
    let r = api
        .post(
            "/v1/tenants/acme/assets",
            &deprecate,
            &[("x-api-key", &steward)],
        )
        .await?;
    assert_eq!(r.status, 200, "{r:?}");

    // Every key created or revoked leaves a trail: what, which tenant and
    // role, and who (the CLI's user, or the admin's credential).
    let admin = key("admin")?;
    let ingest_id = ingest.split('_').nth(1).unwrap_or_default().to_owned();
    let r = api
        .send(
            reqwest::Method::DELETE,
            &format!("/v1/tenants/acme/api-keys/{ingest_id}"),
            None,
            &[("x-api-key", admin.as_str())],
        )
        .await?;
    assert_eq!(r.status, 200, "{r:?}");
    let trail: Vec<(String, String, String, String)> = db
        .query(
            "SELECT key_id, event, role, actor FROM lily.api_key_events ORDER BY event_id",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(trail.len(), 4, "{trail:?}");
    assert!(
        trail[..3]
            .iter()
            .all(|(_, e, _, a)| e == "created" && a.starts_with("cli:")),
        "{trail:?}"
    );
    let admin_id = admin.split('_').nth(1).unwrap_or_default();
    assert_eq!(
        trail[3],
        (
            ingest_id.clone(),
            "revoked".to_owned(),
            "ingest".to_owned(),
            format!("api key {admin_id}")
        ),
        "{trail:?}"
    );
    lily.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_refusal_is_json_with_a_stable_code() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    let base = env.enable_api()?;
    env.client()
        .await?
        .batch_execute("INSERT INTO metastore.tenants (tenant_id, name) VALUES ('acme', 'Acme')")
        .await?;
    let key = env.create_api_key("acme", "steward", "t")?;
    let lily = env.spawn_lily(&["run"])?;
    let api = ApiClient::new(&base);
    api.wait_ready().await?;
    let http = reqwest::Client::new();
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (http.get(format!("{base}/v1/nowhere")), 404, "not_found"),
        (
            http.put(format!("{base}/v1/tenants/acme/assets")),
            405,
            "method_not_allowed",
        ),
        (
            http.get(format!("{base}/v1/tenants/acme/search?offset=null")),
            400,
            "bad_query",
        ),
        (
            http.post(format!("{base}/v1/tenants/acme/assets"))
                .header("x-api-key", &key)
                .header("content-type", "text/plain")
                .body("{\"assets\": []}"),
            415,
            "unsupported_media_type",
        ),
    ];
    for (request, status, code) in cases {
        let r = request.send().await?;
        let got = r.status().as_u16();
        let body: serde_json::Value = r.json().await?;
        assert_eq!(
            (got, body["error"].as_str()),
            (status, Some(code)),
            "{body}"
        );
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }
    lily.stop().await?;
    Ok(())
}
