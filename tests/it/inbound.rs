//! The inbound API over real HTTP against `lily run` and a real metastore:
//! signed Monte Carlo webhooks, JWTs (HS256, RS256 and ES256 from a JWKS
//! that rotates), API keys, roles and tenants, the catalog API, Okta and
//! JIRA, and bad input refused with nothing written.

use std::time::Duration;

use lily_inbound::signature::{hmac_sha256_hex, hmac_sha512_hex};
use lily_tests::api::{
    ApiClient, JwksServer, TEST_AUDIENCE, TEST_ISSUER, claims, hs256, monte_carlo_signature, signed,
};
use lily_tests::{LilyProcess, TestEnv, free_port, http_get, run_lily, wait_for};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
const HS_SECRET: &str = "hs256-test-secret";
const MC_ACME: &str = "mc-secret-acme";
const MC_BETA: &str = "mc-secret-beta";
const JIRA_ACME: &str = "jira-secret-acme";

/// A metastore with tenants acme and beta, and `lily run` serving the API.
struct Setup {
    env: TestEnv,
    lily: LilyProcess,
    api: ApiClient,
    metrics: String,
    _jwks: Option<JwksServer>,
}

async fn start(jwks: Option<JwksServer>) -> anyhow::Result<Setup> {
    let mut env = TestEnv::new().await?;
    let base = env.enable_api()?;
    let client = env.client().await?;
    client
        .batch_execute(
            "INSERT INTO metastore.tenants (tenant_id, name) VALUES ('acme', 'Acme'), ('beta', 'Beta');
             INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name)
             VALUES ('acme', 'table', 'analytics.sales.orders', 'orders'),
                    ('acme', 'table', 'analytics.sales.order_items', 'order_items')",
        )
        .await?;
    let metrics = format!("127.0.0.1:{}", free_port()?);
    let mut extra: Vec<(String, String)> = vec![
        ("LILY_METRICS__LISTEN".into(), metrics.clone()),
        ("LILY_AUTH__JWT_HS256_SECRETS".into(), HS_SECRET.into()),
        ("LILY_MONTE_CARLO__SECRETS__ACME".into(), MC_ACME.into()),
        ("LILY_MONTE_CARLO__SECRETS__BETA".into(), MC_BETA.into()),
        ("LILY_JIRA__SECRETS__ACME".into(), JIRA_ACME.into()),
        ("LILY_API__BODY_LIMIT_BYTES".into(), "16384".into()),
        ("LILY_API__API_KEY_CACHE_MS".into(), "0".into()),
    ];
    if let Some(j) = &jwks {
        extra.push(("LILY_AUTH__JWKS_URL".into(), j.url.clone()));
        extra.push(("LILY_AUTH__JWKS_MIN_REFRESH_MS".into(), "0".into()));
        extra.push(("LILY_AUTH__JWT_ISSUER".into(), TEST_ISSUER.into()));
        extra.push(("LILY_AUTH__JWT_AUDIENCE".into(), TEST_AUDIENCE.into()));
    }
    let lily = env.spawn_lily_with(&["run"], &extra)?;
    let api = ApiClient::new(&base);
    if let Err(e) = api.wait_ready().await {
        anyhow::bail!("{e}\n{}", lily.output());
    }
    Ok(Setup {
        env,
        lily,
        api,
        metrics,
        _jwks: jwks,
    })
}

fn mc_event(kind: &str, id: &str, payload: Value) -> Vec<u8> {
    let mut p = json!({ "incident_id": id });
    if let (Some(p), Value::Object(extra)) = (p.as_object_mut(), payload) {
        p.extend(extra);
    }
    // Keys in the order Monte Carlo sends them; the signature depends on it.
    serde_json::to_vec(&json!({
        "account": { "id": "9a59c6f1-203a-4c72-8cd7-132db7f21b92" },
        "action": "incident",
        "payload": p,
        "type": kind,
        "version": "v0.1",
    }))
    .expect("JSON")
}

async fn post_mc(
    api: &ApiClient,
    tenant: &str,
    body: &[u8],
    signature: Option<&str>,
) -> anyhow::Result<lily_tests::api::Reply> {
    let headers: Vec<(&str, &str)> = signature
        .map(|s| ("x-mcd-signature", s))
        .into_iter()
        .collect();
    api.send(
        reqwest::Method::POST,
        &format!("/v1/tenants/{tenant}/ingest/monte-carlo"),
        Some(body.to_vec()),
        &headers,
    )
    .await
}

async fn incident_state(env: &TestEnv) -> anyhow::Result<(String, Option<String>, i64, String)> {
    let row = env
        .client()
        .await?
        .query_one("SELECT state, severity, version, title FROM metastore.incidents WHERE external_id = 'mc-100'", &[])
        .await?;
    Ok((row.get(0), row.get(1), row.get(2), row.get(3)))
}

async fn scalar(env: &TestEnv, sql: &str) -> anyhow::Result<i64> {
    Ok(env.client().await?.query_one(sql, &[]).await?.get(0))
}

#[tokio::test(flavor = "multi_thread")]
async fn monte_carlo_incidents_are_verified_linked_updated_and_resolved() -> anyhow::Result<()> {
    let s = start(None).await?;
    let incidents = "SELECT count(*) FROM metastore.incidents";
    // An opening in the shape Monte Carlo documents: `orders` is a bare
    // table_name inside the group `analytics:sales`, `order_items` has its
    // full table id, `refunds` is a full table id the catalog lacks.
    let created = mc_event(
        "open_anomaly_incident",
        "mc-100",
        json!({
            "group_id": "analytics:sales",
            "url": "https://getmontecarlo.com/incidents/mc-100",
            "event_list": [
                {"event_details": "Has 42 rows vs. 101 expected", "table_name": "orders"},
                {"event_details": "Has 0 rows", "table_name": "order_items", "full_table_id": "analytics:sales.order_items"},
                {"event_details": "Has 0 rows", "table_name": "analytics:sales.refunds"}
            ]
        }),
    );

    // Unsigned, signed with another tenant's secret, or tampered: refused, nothing written.
    let r = post_mc(&s.api, "acme", &created, None).await?;
    assert_eq!((r.status, r.error()), (401, "missing_signature"), "{r:?}");
    let beta_sig = monte_carlo_signature(MC_BETA, &created)?;
    let r = post_mc(&s.api, "acme", &created, Some(&beta_sig)).await?;
    assert_eq!((r.status, r.error()), (401, "bad_signature"), "{r:?}");
    let acme_sig = monte_carlo_signature(MC_ACME, &created)?;
    let mut tampered = created.clone();
    let at = tampered.len() - 5;
    tampered[at] = b'9';
    let r = post_mc(&s.api, "acme", &tampered, Some(&acme_sig)).await?;
    assert_eq!((r.status, r.error()), (401, "bad_signature"), "{r:?}");
    // An unknown tenant is refused like a wrong signature: no enumeration.
    let r = post_mc(&s.api, "nosuch", &created, Some(&acme_sig)).await?;
    assert_eq!((r.status, r.error()), (401, "bad_signature"), "{r:?}");
    // A name that cannot be a tenant is refused before anything reads it.
    let r = post_mc(&s.api, "No-Such", &created, Some(&acme_sig)).await?;
    assert_eq!((r.status, r.error()), (404, "unknown_tenant"), "{r:?}");
    assert_eq!(scalar(&s.env, incidents).await?, 0);

    // Signed as Monte Carlo documents it (computed by Python): created, both
    // known tables linked by their full table id, the third pending.
    let r = post_mc(&s.api, "acme", &created, Some(&acme_sig)).await?;
    assert_eq!(r.status, 200, "{r:?}\n{}", s.lily.output());
    let written = &r.body["incidents"][0];
    assert_eq!(written["external_id"], "mc-100");
    assert_eq!(written["created"], true);
    assert_eq!(
        (
            written["linked_assets"].as_i64(),
            written["pending_assets"].as_i64()
        ),
        (Some(2), Some(1)),
        "{r:?}"
    );
    assert_eq!(
        written["pending"][0]["pending_reason"],
        "no asset named analytics.sales.refunds in the catalog yet",
        "{r:?}"
    );
    assert_eq!(
        scalar(
            &s.env,
            "SELECT count(*) FROM metastore.incident_assets
              WHERE asset_guid IS NOT NULL AND match_rule = 'full_table_id'
                AND qualified_name IN ('analytics.sales.orders', 'analytics.sales.order_items')"
        )
        .await?,
        2
    );
    let row = s
        .env
        .client()
        .await?
        .query_one(
            "SELECT incident_type, state, severity, url, title, version FROM metastore.incidents
              WHERE tenant_id = 'acme' AND source_system = 'monte_carlo' AND external_id = 'mc-100'",
            &[],
        )
        .await?;
    assert_eq!(row.get::<_, String>(0), "anomaly");
    assert_eq!(row.get::<_, String>(1), "open");
    assert_eq!(
        row.get::<_, Option<String>>(2),
        None,
        "no severity until marked"
    );
    assert_eq!(
        row.get::<_, String>(3),
        "https://getmontecarlo.com/incidents/mc-100"
    );
    assert_eq!(
        row.get::<_, String>(4),
        "anomaly on analytics.sales.orders",
        "the title names the first table of the event list"
    );
    assert_eq!(row.get::<_, i64>(5), 1);

    // The same event again is the same incident, unchanged.
    let r = post_mc(&s.api, "acme", &created, Some(&acme_sig)).await?;
    assert_eq!(
        (r.status, &r.body["incidents"][0]["changed"]),
        (200, &json!(false)),
        "{r:?}"
    );
    assert_eq!(scalar(&s.env, incidents).await?, 1);
    assert_eq!(
        scalar(&s.env, "SELECT max(version) FROM metastore.incidents").await?,
        1
    );

    // The table it named arrives later (through the catalog API): linked then.
    let token = hs256(HS_SECRET, &claims("steward@acme", &["acme:steward"], 300))?;
    let bearer = format!("Bearer {token}");
    let r = s
        .api
        .post(
            "/v1/tenants/acme/assets",
            &json!({"assets": [{"qualified_name": "analytics.sales.refunds", "type": "table"}]}),
            &[("authorization", &bearer)],
        )
        .await?;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        scalar(
            &s.env,
            "SELECT count(asset_guid) FROM metastore.incident_assets"
        )
        .await?,
        3,
        "the late table is linked"
    );

    // Alert updates, as Monte Carlo's alert-update table lists them. Each
    // repeats the opening's envelope; none may change the type or title.
    let send = |fields: Value| {
        let body = mc_event("open_anomaly_incident", "mc-100", fields);
        let api = s.api.clone();
        async move {
            let sig = monte_carlo_signature(MC_ACME, &body)?;
            let r = post_mc(&api, "acme", &body, Some(&sig)).await?;
            anyhow::ensure!(r.status == 200, "{r:?}");
            anyhow::Ok(r)
        }
    };
    let title = "anomaly on analytics.sales.orders".to_owned();
    send(json!({"alert_feedback": "investigating"})).await?;
    assert_eq!(
        incident_state(&s.env).await?,
        ("acknowledged".into(), None, 2, title.clone())
    );
    send(json!({"alert_feedback": "investigating", "declared_alert_severity": "SEV-1"})).await?;
    assert_eq!(
        incident_state(&s.env).await?,
        (
            "acknowledged".into(),
            Some("SEV-1".into()),
            3,
            title.clone()
        )
    );
    send(json!({"owner": "dana@acme.example"})).await?;
    let fixed = mc_event(
        "open_anomaly_incident",
        "mc-100",
        json!({"alert_feedback": "fixed"}),
    );
    // A signature over the raw body is accepted too.
    let raw_sig = hmac_sha512_hex(MC_ACME.as_bytes(), &fixed);
    let r = post_mc(&s.api, "acme", &fixed, Some(&raw_sig)).await?;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        incident_state(&s.env).await?,
        ("resolved".into(), Some("SEV-1".into()), 5, title.clone())
    );

    // Late events do not move it back: the acknowledgement redelivered, and
    // an acknowledgement Monte Carlo sends when an alert is marked.
    let r = send(json!({"alert_feedback": "investigating"})).await?;
    assert_eq!(r.body["incidents"][0]["changed"], false, "{r:?}");
    send(json!({"alert_feedback": "investigating", "declared_alert_severity": "SEV-2"})).await?;
    assert_eq!(incident_state(&s.env).await?.0, "resolved");

    // What a reader of the API sees.
    let id = r.body["incidents"][0]["incident_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let viewer = format!(
        "Bearer {}",
        hs256(HS_SECRET, &claims("viewer@acme", &["acme:viewer"], 300))?
    );
    let r = s
        .api
        .get(
            &format!("/v1/tenants/acme/incidents/{id}"),
            &[("authorization", &viewer)],
        )
        .await?;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        (
            &r.body["state"],
            &r.body["source_status"],
            &r.body["severity"],
            &r.body["owner"],
            &r.body["title"],
            &r.body["incident_type"],
        ),
        (
            &json!("resolved"),
            &json!("fixed"),
            &json!("SEV-2"),
            &json!("dana@acme.example"),
            &json!(title),
            &json!("anomaly"),
        ),
        "{r:?}"
    );
    let assets = r.body["assets"].as_array().cloned().unwrap_or_default();
    assert_eq!(assets.len(), 3, "{r:?}");
    assert!(
        assets.iter().all(|a| a["match"] == "full_table_id"
            && a["asset_guid"].is_string()
            && a["pending_reason"].is_null()),
        "{assets:?}"
    );
    assert_eq!(
        r.body["events"].as_array().map(Vec::len),
        Some(6),
        "every event applied, the repeats once: {r:?}"
    );

    // Unmarked as an incident: declared_alert_severity sent as null.
    send(json!({"declared_alert_severity": null})).await?;
    assert_eq!(incident_state(&s.env).await?.1, None);
    assert_eq!(scalar(&s.env, incidents).await?, 1);
    assert_eq!(
        scalar(&s.env, "SELECT count(*) FROM metastore.incident_assets").await?,
        3
    );

    // Bad input: a 4xx naming the problem, nothing written, good requests unaffected.
    let not_json = b"{\"type\": \"new_volume_incident\", \"payload\": ".to_vec();
    let r = post_mc(
        &s.api,
        "acme",
        &not_json,
        Some(&hmac_sha512_hex(MC_ACME.as_bytes(), &not_json)),
    )
    .await?;
    assert_eq!((r.status, r.error()), (400, "malformed_json"), "{r:?}");
    let no_id =
        serde_json::to_vec(&json!({"type": "new_volume_incident", "payload": {"url": "x"}}))?;
    let r = post_mc(
        &s.api,
        "acme",
        &no_id,
        Some(&monte_carlo_signature(MC_ACME, &no_id)?),
    )
    .await?;
    assert_eq!((r.status, r.error()), (422, "schema_violation"), "{r:?}");
    assert!(
        r.body["message"]
            .as_str()
            .unwrap_or("")
            .contains("incident_id"),
        "{r:?}"
    );
    let huge = mc_event(
        "new_volume_incident",
        "mc-big",
        json!({"url": "x".repeat(20_000)}),
    );
    let r = post_mc(
        &s.api,
        "acme",
        &huge,
        Some(&hmac_sha512_hex(MC_ACME.as_bytes(), &huge)),
    )
    .await?;
    assert_eq!((r.status, r.error()), (413, "body_too_large"), "{r:?}");
    assert_eq!(scalar(&s.env, incidents).await?, 1);
    let good = mc_event(
        "open_anomaly_incident",
        "mc-101",
        json!({"event_list": [{"table_name": "analytics:sales.orders"}]}),
    );
    let r = post_mc(
        &s.api,
        "acme",
        &good,
        Some(&monte_carlo_signature(MC_ACME, &good)?),
    )
    .await?;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(scalar(&s.env, incidents).await?, 2);

    // Each refusal is counted by route and reason.
    let metrics = http_get(&s.metrics, "/metrics")?;
    for reason in [
        "missing_signature",
        "bad_signature",
        "unknown_tenant",
        "malformed_json",
        "schema_violation",
        "body_too_large",
    ] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("lily_inbound_rejected_total")
                    && l.contains("ingest/monte-carlo")
                    && l.contains(&format!("reason=\"{reason}\""))),
            "no rejected metric for {reason}"
        );
    }
    s.lily.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_roles_and_tenants_are_enforced() -> anyhow::Result<()> {
    let jwks = JwksServer::start().await?;
    let s = start(Some(jwks)).await?;
    let api = &s.api;
    let asset = json!({"assets": [{"qualified_name": "analytics.sales.customers", "type": "table", "owners": ["ana@acme.example"]}]});
    let bearer = |t: String| format!("Bearer {t}");
    let post_assets = |tenant: &'static str, header: (&'static str, String)| {
        let asset = asset.clone();
        async move {
            api.post(
                &format!("/v1/tenants/{tenant}/assets"),
                &asset,
                &[(header.0, header.1.as_str())],
            )
            .await
        }
    };

    // No credentials, a wrong secret, an expired token: 401.
    let r = api.post("/v1/tenants/acme/assets", &asset, &[]).await?;
    assert_eq!((r.status, r.error()), (401, "unauthenticated"), "{r:?}");
    let r = post_assets(
        "acme",
        (
            "authorization",
            bearer(hs256("not-the-secret", &claims("x", &["acme:admin"], 300))?),
        ),
    )
    .await?;
    assert_eq!((r.status, r.error()), (401, "bad_credentials"), "{r:?}");
    let r = post_assets(
        "acme",
        (
            "authorization",
            bearer(hs256(HS_SECRET, &claims("x", &["acme:admin"], -600))?),
        ),
    )
    .await?;
    assert_eq!((r.status, r.error()), (401, "bad_credentials"), "{r:?}");
    assert!(
        r.body["message"].as_str().unwrap_or("").contains("expired"),
        "{r:?}"
    );

    // Roles: a viewer reads but does not write; a steward writes in its tenant only.
    let viewer = bearer(hs256(HS_SECRET, &claims("v", &["acme:viewer"], 300))?);
    let r = post_assets("acme", ("authorization", viewer.clone())).await?;
    assert_eq!((r.status, r.error()), (403, "forbidden"), "{r:?}");
    let steward = bearer(hs256(HS_SECRET, &claims("s", &["acme:steward"], 300))?);
    assert_eq!(
        post_assets("acme", ("authorization", steward.clone()))
            .await?
            .status,
        200
    );
    let r = post_assets("beta", ("authorization", steward.clone())).await?;
    assert_eq!((r.status, r.error()), (403, "forbidden"), "{r:?}");
    let r = api
        .get(
            "/v1/tenants/acme/assets/analytics.sales.customers",
            &[("authorization", &viewer)],
        )
        .await?;
    assert_eq!(
        (r.status, &r.body["owners"]),
        (200, &json!(["ana@acme.example"])),
        "{r:?}"
    );
    let r = api
        .get(
            "/v1/tenants/beta/assets/analytics.sales.customers",
            &[("authorization", &viewer)],
        )
        .await?;
    assert_eq!(r.status, 403, "{r:?}");

    // RS256 and ES256 from the JWKS; rotation retires rsa-a and brings rsa-b.
    let rs_a = signed("rsa-a", &claims("oidc-a", &["acme:steward"], 300))?;
    let rs_b = signed("rsa-b", &claims("oidc-b", &["acme:steward"], 300))?;
    let es = signed("ec-a", &claims("oidc-ec", &["acme:steward"], 300))?;
    assert_eq!(
        post_assets("acme", ("authorization", bearer(rs_a.clone())))
            .await?
            .status,
        200
    );
    assert_eq!(
        post_assets("acme", ("authorization", bearer(es.clone())))
            .await?
            .status,
        200
    );
    // A token the same provider issued to another client, or under another
    // issuer, with the right role claim: refused; and one without them.
    for (claim, value) in [
        ("aud", json!("another-client")),
        ("iss", json!("https://other.example")),
    ] {
        let mut c = claims("other-client", &["acme:admin"], 300);
        c[claim] = value;
        let r = post_assets("acme", ("authorization", bearer(signed("rsa-a", &c)?))).await?;
        assert_eq!(
            (r.status, r.error()),
            (401, "bad_credentials"),
            "{claim}: {r:?}"
        );
    }
    let mut c = claims("no-audience", &["acme:admin"], 300);
    c.as_object_mut().expect("claims").remove("aud");
    let r = post_assets("acme", ("authorization", bearer(signed("rsa-a", &c)?))).await?;
    assert_eq!(
        (r.status, r.error()),
        (401, "bad_credentials"),
        "no aud: {r:?}"
    );
    let r = post_assets("acme", ("authorization", bearer(rs_b.clone()))).await?;
    assert_eq!(r.status, 401, "rsa-b is not published yet: {r:?}");
    s._jwks.as_ref().expect("jwks").rotate()?;
    let r = post_assets("acme", ("authorization", bearer(rs_b))).await?;
    assert_eq!(r.status, 200, "rotated key accepted: {r:?}");
    let r = post_assets("acme", ("authorization", bearer(rs_a))).await?;
    assert_eq!(
        (r.status, r.error()),
        (401, "bad_credentials"),
        "retired key refused: {r:?}"
    );
    let r = post_assets("beta", ("authorization", bearer(es))).await?;
    assert_eq!(r.status, 403, "{r:?}");

    // API keys: created by the CLI (stored hashed), scoped to a tenant and a role, revocable.
    let (code, out) = run_lily(
        &[
            "api-key",
            "create",
            "--tenant",
            "acme",
            "--role",
            "ingest",
            "--name",
            "extractor",
        ],
        &s.env.lily_env(),
    )?;
    assert_eq!(code, 0, "{out}");
    let key = out
        .lines()
        .find(|l| l.starts_with("lily_"))
        .expect("a key")
        .trim()
        .to_owned();
    let stored: Vec<u8> = s
        .env
        .client()
        .await?
        .query_one("SELECT secret_hash FROM lily.api_keys", &[])
        .await?
        .get(0);
    assert_eq!(stored.len(), 32);
    assert!(
        !stored
            .windows(8)
            .any(|w| key.as_bytes().windows(8).any(|k| k == w)),
        "only a hash is stored"
    );
    assert_eq!(
        post_assets("acme", ("x-api-key", key.clone()))
            .await?
            .status,
        200
    );
    assert_eq!(
        post_assets("acme", ("authorization", bearer(key.clone())))
            .await?
            .status,
        200
    );
    let r = post_assets("beta", ("x-api-key", key.clone())).await?;
    assert_eq!(r.status, 403, "{r:?}");
    let r = api
        .get("/v1/tenants/acme/incidents", &[("x-api-key", &key)])
        .await?;
    assert_eq!(r.status, 403, "an ingest key reads nothing: {r:?}");
    let tag =
        json!({"classifications": [{"qualified_name": "analytics.sales.customers", "tag": "PII"}]});
    let r = api
        .post(
            "/v1/tenants/acme/classifications",
            &tag,
            &[("x-api-key", &key)],
        )
        .await?;
    assert_eq!(r.status, 403, "tagging is a steward's: {r:?}");
    // The last character changed, never to itself (a key may end in 'x').
    let last = if key.ends_with('x') { 'y' } else { 'x' };
    let wrong = format!("{}{last}", &key[..key.len() - 1]);
    assert_eq!(post_assets("acme", ("x-api-key", wrong)).await?.status, 401);

    // A tenant admin manages the tenant's keys over HTTP; another tenant's admin cannot.
    let admin = bearer(hs256(HS_SECRET, &claims("a", &["acme:admin"], 300))?);
    let beta_admin = bearer(hs256(HS_SECRET, &claims("b", &["beta:admin"], 300))?);
    let r = api
        .post(
            "/v1/tenants/acme/api-keys",
            &json!({"role": "viewer", "name": "bi"}),
            &[("authorization", &beta_admin)],
        )
        .await?;
    assert_eq!(r.status, 403, "{r:?}");
    let r = api
        .post(
            "/v1/tenants/acme/api-keys",
            &json!({"role": "viewer", "name": "bi"}),
            &[("authorization", &admin)],
        )
        .await?;
    assert_eq!(r.status, 200, "{r:?}");
    let viewer_key = r.body["key"].as_str().unwrap_or_default().to_owned();
    let r = api
        .get(
            "/v1/tenants/acme/assets/analytics.sales.customers",
            &[("x-api-key", &viewer_key)],
        )
        .await?;
    assert_eq!(r.status, 200, "{r:?}");

    let key_id = key.split('_').nth(1).unwrap_or_default().to_owned();
    let (code, out) = run_lily(&["api-key", "revoke", &key_id], &s.env.lily_env())?;
    assert_eq!(code, 0, "{out}");
    let r = post_assets("acme", ("x-api-key", key)).await?;
    assert_eq!(
        (r.status, r.error()),
        (401, "bad_credentials"),
        "revoked: {r:?}"
    );
    s.lily.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_catalog_api_tags_a_column_and_propagation_follows() -> anyhow::Result<()> {
    let s = start(None).await?;
    let api = &s.api;
    let steward = format!(
        "Bearer {}",
        hs256(HS_SECRET, &claims("s", &["acme:steward"], 300))?
    );
    let auth = [("authorization", steward.as_str())];
    let r = api
        .post(
            "/v1/tenants/acme/assets",
            &json!({"assets": [
                {"qualified_name": "analytics.sales.orders.email", "type": "column", "parent": "analytics.sales.orders"},
                {"qualified_name": "analytics.marts", "type": "schema"},
                {"qualified_name": "analytics.marts.customers", "type": "table", "parent": "analytics.marts"},
                {"qualified_name": "analytics.marts.customers.email", "type": "column", "parent": "analytics.marts.customers"}
            ]}),
            &auth,
        )
        .await?;
    assert_eq!((r.status, &r.body["created"]), (200, &json!(4)), "{r:?}");
    // A parent that does not exist: the whole request is refused.
    let r = api
        .post(
            "/v1/tenants/acme/assets",
            &json!({"assets": [{"qualified_name": "x.y", "type": "table"}, {"qualified_name": "x.y.z", "type": "column", "parent": "x.nope"}]}),
            &auth,
        )
        .await?;
    assert_eq!((r.status, r.error()), (422, "unprocessable"), "{r:?}");
    assert!(
        r.body["message"].as_str().unwrap_or("").contains("x.nope"),
        "{r:?}"
    );
    let r = api
        .post(
            "/v1/tenants/acme/assets",
            &json!({"assets": [{"qualified_name": "q", "type": "tabel"}]}),
            &auth,
        )
        .await?;
    assert_eq!(r.status, 422, "an unknown type: {r:?}");
    assert_eq!(scalar(&s.env, "SELECT count(*) FROM metastore.assets WHERE qualified_name LIKE 'x.%' OR qualified_name = 'q'").await?, 0);

    let edge = json!({"edges": [{"upstream": "analytics.sales.orders.email", "downstream": "analytics.marts.customers.email"}]});
    assert_eq!(
        api.post("/v1/tenants/acme/lineage", &edge, &auth)
            .await?
            .status,
        200
    );
    let r = api
        .post("/v1/tenants/acme/lineage", &json!({"edges": [{"upstream": "analytics.sales.orders.email", "downstream": "nowhere"}]}), &auth)
        .await?;
    assert_eq!(r.status, 422, "{r:?}");

    let tag = json!({"classifications": [{"qualified_name": "analytics.sales.orders.email", "tag": "PII"}]});
    assert_eq!(
        api.post("/v1/tenants/acme/classifications", &tag, &auth)
            .await?
            .status,
        200
    );
    let downstream = "/v1/tenants/acme/assets/analytics.marts.customers.email";
    wait_for("PII to propagate downstream", WAIT, || async {
        let r = api.get(downstream, &auth).await?;
        Ok((r.body["tags"] == json!([{"tag": "PII", "source": "propagated", "propagated_from": "analytics.sales.orders.email"}])).then_some(()))
    })
    .await?;

    let r = api
        .delete("/v1/tenants/acme/classifications", &tag, &auth)
        .await?;
    assert_eq!((r.status, &r.body["removed"]), (200, &json!(1)), "{r:?}");
    wait_for("the propagated tag to be taken back", WAIT, || async {
        let r = api.get(downstream, &auth).await?;
        Ok((r.body["tags"] == json!([])).then_some(()))
    })
    .await?;

    let r = api.delete("/v1/tenants/acme/lineage", &edge, &auth).await?;
    assert_eq!((r.status, &r.body["removed"]), (200, &json!(1)), "{r:?}");
    let r = api
        .delete(
            "/v1/tenants/acme/assets",
            &json!({"qualified_names": ["analytics.marts", "gone"]}),
            &auth,
        )
        .await?;
    assert_eq!(
        (r.status, &r.body["removed"], &r.body["not_found"]),
        (200, &json!(1), &json!(["gone"])),
        "{r:?}"
    );
    assert_eq!(
        scalar(
            &s.env,
            "SELECT count(*) FROM metastore.assets WHERE qualified_name LIKE 'analytics.marts%'"
        )
        .await?,
        0
    );
    s.lily.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn okta_deactivations_and_jira_done_reach_the_catalog() -> anyhow::Result<()> {
    let s = start(None).await?;
    let api = &s.api;
    let (code, out) = run_lily(
        &[
            "api-key", "create", "--tenant", "acme", "--role", "ingest", "--name", "okta",
        ],
        &s.env.lily_env(),
    )?;
    assert_eq!(code, 0, "{out}");
    let key = out
        .lines()
        .find(|l| l.starts_with("lily_"))
        .expect("a key")
        .trim()
        .to_owned();
    // Okta sends the configured Authorization header value as it is.
    let okta_auth = format!("Bearer {key}");

    // The one-time verification challenge.
    let r = api
        .get(
            "/v1/tenants/acme/ingest/okta",
            &[
                ("authorization", &okta_auth),
                ("x-okta-verification-challenge", "c9f1e3a7"),
            ],
        )
        .await?;
    assert_eq!(
        (r.status, &r.body),
        (200, &json!({"verification": "c9f1e3a7"})),
        "{r:?}"
    );
    let r = api
        .get(
            "/v1/tenants/acme/ingest/okta",
            &[("x-okta-verification-challenge", "c9f1e3a7")],
        )
        .await?;
    assert_eq!(r.status, 401, "{r:?}");

    s.env
        .client()
        .await?
        .batch_execute(
            "UPDATE metastore.assets SET owners = '{Jane.Doe@acme.example,ana@acme.example}' WHERE qualified_name = 'analytics.sales.orders'",
        )
        .await?;
    let hook = json!({
        "eventType": "com.okta.event_hook",
        "eventTypeVersion": "1.0",
        "cloudEventsVersion": "0.1",
        "source": "https://acme.okta.com/api/v1/eventHooks/who8vt36qfNpCGz9H1e6",
        "eventId": "b5a188b9-5ece-4636-b041-482ffda96311",
        "data": {"events": [
            {"uuid": "7f0d1c5e", "published": "2026-11-21T10:00:00.000Z", "eventType": "user.session.start",
             "target": [{"id": "00u1", "type": "User", "alternateId": "ana@acme.example"}]},
            {"uuid": "8f0d1c5e", "published": "2026-11-21T10:00:01.000Z", "eventType": "user.lifecycle.deactivate",
             "displayMessage": "Deactivate Okta user",
             "target": [{"id": "00u2", "type": "User", "alternateId": "jane.doe@acme.example", "displayName": "Jane Doe"}]}
        ]},
        "eventTime": "2026-11-21T10:00:02.000Z",
        "contentType": "application/json"
    });
    let r = api
        .post(
            "/v1/tenants/acme/ingest/okta",
            &hook,
            &[("authorization", &okta_auth)],
        )
        .await?;
    assert_eq!(
        (r.status, &r.body["assets_updated"]),
        (200, &json!(1)),
        "{r:?}"
    );
    let owners: Vec<String> = s
        .env
        .client()
        .await?
        .query_one(
            "SELECT owners FROM metastore.assets WHERE qualified_name = 'analytics.sales.orders'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(
        owners,
        vec!["ana@acme.example".to_owned()],
        "the deactivated user is no owner any more"
    );

    // JIRA: an incident linked to OPS-7 is resolved when OPS-7 is done.
    let event = mc_event(
        "new_schema_change_incident",
        "mc-200",
        json!({"event_list": [{"table_name": "analytics:sales.orders"}]}),
    );
    let r = post_mc(
        api,
        "acme",
        &event,
        Some(&monte_carlo_signature(MC_ACME, &event)?),
    )
    .await?;
    let incident_id = r.body["incidents"][0]["incident_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let r = api
        .post(
            &format!("/v1/tenants/acme/incidents/{incident_id}/tickets"),
            &json!({"system": "jira", "key": "OPS-7"}),
            &[("x-api-key", &key)],
        )
        .await?;
    assert_eq!(r.status, 200, "{r:?}");
    let issue = |status: &str, category: &str| {
        serde_json::to_vec(&json!({
            "timestamp": 1_763_719_200_000i64,
            "webhookEvent": "jira:issue_updated",
            "issue_event_type_name": "issue_generic",
            "issue": {"id": "10007", "key": "OPS-7", "fields": {
                "summary": "orders is late",
                "status": {"name": status, "statusCategory": {"id": 3, "key": category, "name": status}}}},
            "changelog": {"items": [{"field": "status", "toString": status}]}
        }))
        .expect("JSON")
    };
    let post_jira = |body: Vec<u8>, sig: String| async move {
        api.send(
            reqwest::Method::POST,
            "/v1/tenants/acme/ingest/jira",
            Some(body),
            &[("x-hub-signature", sig.as_str())],
        )
        .await
    };
    let in_progress = issue("In Progress", "indeterminate");
    let sig = format!(
        "sha256={}",
        hmac_sha256_hex(JIRA_ACME.as_bytes(), &in_progress)
    );
    let r = post_jira(in_progress, sig).await?;
    assert_eq!((r.status, &r.body["resolved"]), (200, &json!([])), "{r:?}");
    let done = issue("Done", "done");
    let r = post_jira(done.clone(), "sha256=00".into()).await?;
    assert_eq!((r.status, r.error()), (401, "bad_signature"), "{r:?}");
    let state = "SELECT count(*) FROM metastore.incidents WHERE external_id = 'mc-200' AND state = 'resolved'";
    assert_eq!(scalar(&s.env, state).await?, 0);
    let sig = format!("sha256={}", hmac_sha256_hex(JIRA_ACME.as_bytes(), &done));
    let r = post_jira(done, sig).await?;
    assert_eq!(
        (r.status, &r.body["resolved"]),
        (200, &json!(["mc-200"])),
        "{r:?}"
    );
    assert_eq!(scalar(&s.env, state).await?, 1);
    s.lily.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_description_lists_every_route() -> anyhow::Result<()> {
    let s = start(None).await?;
    let r = s.api.get("/openapi.json", &[]).await?;
    assert_eq!(r.status, 200);
    let paths = r.body["paths"].as_object().cloned().unwrap_or_default();
    for path in [
        "/v1/tenants/{tenant}/ingest/monte-carlo",
        "/v1/tenants/{tenant}/ingest/okta",
        "/v1/tenants/{tenant}/ingest/jira",
        "/v1/tenants/{tenant}/assets",
        "/v1/tenants/{tenant}/lineage",
        "/v1/tenants/{tenant}/classifications",
        "/v1/tenants/{tenant}/incidents",
        "/v1/tenants/{tenant}/bulk/loads",
        "/v1/tenants/{tenant}/bulk/loads/{load_id}",
    ] {
        assert!(paths.contains_key(path), "{path} is not described");
    }
    // Every described route exists: none answers 404 for its path itself.
    for (path, ops) in &paths {
        let concrete = path
            .replace("{tenant}", "acme")
            .replace("{qualified_name}", "analytics.sales.orders")
            .replace("{incident_id}", "00000000-0000-0000-0000-000000000000")
            .replace("{key_id}", "aaaaaaaaaaaa")
            .replace("{load_id}", "first");
        for method in ops
            .as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            let method: reqwest::Method = method.to_uppercase().parse()?;
            let r = s
                .api
                .send(method.clone(), &concrete, Some(b"{}".to_vec()), &[])
                .await?;
            assert!(
                r.status != 404 && r.status != 405 || r.error() == "not_found",
                "{method} {concrete}: {r:?}"
            );
        }
    }
    s.lily.stop().await?;
    Ok(())
}

/// Monte Carlo names tables by warehouse full table id and by bare table
/// name: a tenant's naming rule maps the first, the catalog's tables and
/// views resolve the second, and what cannot be linked yet says why and is
/// linked when its asset arrives, whichever way.
#[tokio::test(flavor = "multi_thread")]
async fn monte_carlo_tables_link_by_full_table_id_and_bare_name() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    let base = env.enable_api()?;
    env.client()
        .await?
        .batch_execute(
            "INSERT INTO metastore.tenants (tenant_id, name) VALUES ('acme', 'Acme');
             INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name) VALUES
                 ('acme', 'table', 'snowflake.analytics.sales.orders', 'orders'),
                 ('acme', 'column', 'snowflake.analytics.sales.orders.events', 'events'),
                 ('acme', 'table', 'snowflake.analytics.web.events', 'events'),
                 ('acme', 'view', 'snowflake.analytics.app.events', 'events')",
        )
        .await?;
    // The warehouse calls the database analytics_prod; the catalog's names
    // start with the platform.
    let config = env.dir.path().join("naming.toml");
    std::fs::write(
        &config,
        "[monte_carlo.naming.acme]\nprefix = \"snowflake.\"\ndatabases = { analytics_prod = \"analytics\" }\n",
    )?;
    let config_arg = config.display().to_string();
    let extra = [
        (
            "LILY_MONTE_CARLO__SECRETS__ACME".to_owned(),
            MC_ACME.to_owned(),
        ),
        (
            "LILY_AUTH__JWT_HS256_SECRETS".to_owned(),
            HS_SECRET.to_owned(),
        ),
    ];
    let lily = env.spawn_lily_with(&["-c", &config_arg, "run"], &extra)?;
    let api = ApiClient::new(&base);
    if let Err(e) = api.wait_ready().await {
        anyhow::bail!("{e}\n{}", lily.output());
    }
    let open = |id: &str, events: Value| {
        let body = mc_event("open_anomaly_incident", id, json!({ "event_list": events }));
        let api = api.clone();
        async move {
            let sig = monte_carlo_signature(MC_ACME, &body)?;
            let r = post_mc(&api, "acme", &body, Some(&sig)).await?;
            anyhow::ensure!(r.status == 200, "{r:?}");
            anyhow::Ok(r.body["incidents"][0].clone())
        }
    };
    let links = |id: &'static str| {
        let env = &env;
        async move {
            let rows = env
                .client()
                .await?
                .query(
                    "SELECT ia.qualified_name, ia.match_rule, ia.asset_guid IS NOT NULL
                       FROM metastore.incident_assets ia JOIN metastore.incidents i USING (incident_id)
                      WHERE i.external_id = $1 ORDER BY 1",
                    &[&id],
                )
                .await?;
            anyhow::Ok(
                rows.iter()
                    .map(|r| {
                        (
                            r.get::<_, String>(0),
                            r.get::<_, String>(1),
                            r.get::<_, bool>(2),
                        )
                    })
                    .collect::<Vec<_>>(),
            )
        }
    };

    // By full table id through the rule, and by a bare name that only one
    // table ends with (the column of the same name does not count).
    let w = open(
        "mc-1",
        json!([
            {"table_name": "orders"},
            {"table_name": "customers", "full_table_id": "analytics_prod:sales.customers"},
            {"table_name": "analytics_prod:sales.payments"}
        ]),
    )
    .await?;
    assert_eq!(
        (w["linked_assets"].as_i64(), w["pending_assets"].as_i64()),
        (Some(1), Some(2)),
        "{w}"
    );
    assert_eq!(
        links("mc-1").await?,
        [
            (
                "snowflake.analytics.sales.customers".to_owned(),
                "full_table_id".to_owned(),
                false
            ),
            (
                "snowflake.analytics.sales.orders".to_owned(),
                "table_name".to_owned(),
                true
            ),
            (
                "snowflake.analytics.sales.payments".to_owned(),
                "full_table_id".to_owned(),
                false
            ),
        ]
    );

    // A bare name two assets end with stays pending and says why; so does
    // one nothing ends with yet.
    let w = open(
        "mc-2",
        json!([{"table_name": "events"}, {"table_name": "sessions"}]),
    )
    .await?;
    let reasons: Vec<String> = w["pending"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| p["pending_reason"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        reasons,
        [
            "2 tables or views end with events: snowflake.analytics.app.events, snowflake.analytics.web.events; name it by full table id",
            "no table or view ends with sessions yet",
        ],
        "{w}"
    );

    // The missing tables arrive: customers through the API, payments and
    // sessions from an extraction writing straight to the metastore.
    let steward = format!(
        "Bearer {}",
        hs256(HS_SECRET, &claims("steward@acme", &["acme:steward"], 300))?
    );
    let r = api
        .post(
            "/v1/tenants/acme/assets",
            &json!({"assets": [{"qualified_name": "snowflake.analytics.sales.customers", "type": "table"}]}),
            &[("authorization", &steward)],
        )
        .await?;
    assert_eq!(r.status, 200, "{r:?}");
    env.client()
        .await?
        .batch_execute(
            "INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name) VALUES
                 ('acme', 'table', 'snowflake.analytics.sales.payments', 'payments'),
                 ('acme', 'table', 'snowflake.analytics.web.sessions', 'sessions')",
        )
        .await?;
    assert!(
        links("mc-1").await?.iter().all(|(_, _, linked)| *linked),
        "{:?}",
        links("mc-1").await?
    );
    assert_eq!(
        links("mc-2").await?,
        [
            ("events".to_owned(), "table_name".to_owned(), false),
            (
                "snowflake.analytics.web.sessions".to_owned(),
                "table_name".to_owned(),
                true
            ),
        ]
    );

    // The API shows each link with how it was named.
    let incident = scalar_text(
        &env,
        "SELECT incident_id::text FROM metastore.incidents WHERE external_id = 'mc-2'",
    )
    .await?;
    let r = api
        .get(
            &format!("/v1/tenants/acme/incidents/{incident}"),
            &[("authorization", &steward)],
        )
        .await?;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["assets"][0]["reference"], "events", "{r:?}");
    assert!(
        r.body["assets"][0]["pending_reason"]
            .as_str()
            .is_some_and(|m| m.starts_with("2 tables or views end with events")),
        "{r:?}"
    );
    assert_eq!(
        (
            &r.body["assets"][1]["match"],
            &r.body["assets"][1]["reference"]
        ),
        (&json!("table_name"), &json!("sessions")),
        "{r:?}"
    );
    lily.stop().await?;
    Ok(())
}

async fn scalar_text(env: &TestEnv, sql: &str) -> anyhow::Result<String> {
    Ok(env.client().await?.query_one(sql, &[]).await?.get(0))
}

/// Webhooks that arrive together are mapped by one run and written by one
/// transaction per tenant, and each still gets its own answer after its
/// commit; an event that breaks the mapping fails only its own request.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_webhooks_are_written_in_groups_each_answered_for_itself() -> anyhow::Result<()>
{
    let s = start(None).await?;
    // A rule of the database refuses incident group-7 (as a constraint an
    // operator added would): its group's transaction fails, and the group
    // is written again event by event.
    s.env
        .client()
        .await?
        .batch_execute(
            "CREATE FUNCTION public.refuse_group_7() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.external_id = 'group-7' THEN
                     RAISE EXCEPTION 'incident group-7 is refused' USING ERRCODE = 'check_violation';
                 END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER refuse_group_7 BEFORE INSERT ON metastore.incidents
                 FOR EACH ROW EXECUTE FUNCTION public.refuse_group_7();",
        )
        .await?;
    const EVENTS: usize = 48;
    let mut sends = Vec::new();
    for i in 0..EVENTS {
        let (tenant, secret) = if i % 3 == 0 {
            ("beta", MC_BETA)
        } else {
            ("acme", MC_ACME)
        };
        let body = mc_event(
            "open_anomaly_incident",
            &format!("group-{i}"),
            json!({"event_list": [{"table_name": "analytics:sales.orders"}]}),
        );
        let sig = monte_carlo_signature(secret, &body)?;
        let api = &s.api;
        sends.push(async move {
            let r = post_mc(api, tenant, &body, Some(&sig)).await?;
            anyhow::Ok((i, tenant, r))
        });
    }
    let replies = futures::future::join_all(sends).await;
    for reply in replies {
        let (i, tenant, r) = reply?;
        if i == 7 {
            assert_eq!((r.status, r.error()), (422, "unprocessable"), "{r:?}");
            continue;
        }
        assert_eq!(r.status, 200, "event {i}: {r:?}");
        let written = &r.body["incidents"][0];
        assert_eq!(written["external_id"], format!("group-{i}"), "{r:?}");
        assert_eq!(written["created"], true, "{r:?}");
        // Answered after the commit: the incident is there, in its tenant.
        let id = written["incident_id"].as_str().unwrap_or_default();
        let n = scalar(
            &s.env,
            &format!(
                "SELECT count(*) FROM metastore.incidents WHERE incident_id::text = '{id}' AND tenant_id = '{tenant}'"
            ),
        )
        .await?;
        assert_eq!(n, 1, "event {i}");
    }
    assert_eq!(
        scalar(
            &s.env,
            "SELECT count(*) FROM metastore.incidents WHERE external_id LIKE 'group-%'"
        )
        .await?,
        EVENTS as i64 - 1
    );
    // Linked to the catalog's table, each to its own incident (acme's).
    assert_eq!(
        scalar(
            &s.env,
            "SELECT count(*) FROM metastore.incident_assets l JOIN metastore.incidents i USING (incident_id)
              WHERE i.external_id LIKE 'group-%' AND l.asset_guid IS NOT NULL"
        )
        .await?,
        (0..EVENTS).filter(|i| i % 3 != 0 && *i != 7).count() as i64
    );
    // Grouped: fewer groups than events.
    let body = http_get(&s.metrics, "/metrics")?;
    let metric = |name: &str| {
        body.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let groups = metric("lily_inbound_group_events_count{kind=\"incidents\"}");
    let events = metric("lily_inbound_group_events_sum{kind=\"incidents\"}");
    assert!(
        events >= EVENTS as f64 && groups < events,
        "{groups} groups of {events} events"
    );

    // One notification delivered six times at once (a sender's retries),
    // whether the copies share a group or not: one creates the incident,
    // the others change nothing, and the event is recorded once.
    let body = mc_event(
        "open_anomaly_incident",
        "retried",
        json!({"event_list": [{"table_name": "analytics:sales.orders"}]}),
    );
    let sig = monte_carlo_signature(MC_ACME, &body)?;
    let copies = (0..6).map(|_| post_mc(&s.api, "acme", &body, Some(&sig)));
    let mut created = 0;
    for r in futures::future::join_all(copies).await {
        let r = r?;
        assert_eq!(r.status, 200, "{r:?}");
        let written = &r.body["incidents"][0];
        if written["created"] == true {
            created += 1;
        } else {
            assert_eq!(written["changed"], false, "{r:?}");
        }
        assert_eq!(written["linked_assets"], 1, "{r:?}");
    }
    assert_eq!(created, 1);
    assert_eq!(
        scalar(
            &s.env,
            "SELECT count(*) FROM lily.incident_events e JOIN metastore.incidents i USING (incident_id)
              WHERE i.external_id = 'retried'"
        )
        .await?,
        1
    );
    s.lily.stop().await?;
    Ok(())
}
