//! SaaS targets against local receivers that check each vendor's payload
//! shape, signature and rate limit: Slack (Block Kit, one message a second,
//! Retry-After honoured), Teams (Adaptive Card), JIRA (an issue for a severe
//! incident, comments on its updates, closing it resolves the incident),
//! Freshdesk (ticket, notes, resolved), PagerDuty (trigger and resolve with
//! one dedup key), a signed webhook; a refusing target and a failing one
//! become dead letters that `lily dlq replay` delivers, and a stuck one holds
//! up nothing else.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine;
use lily_inbound::signature::hmac_sha256_hex;
use lily_tests::api::ApiClient;
use lily_tests::receiver::{Received, Receiver, Reply};
use lily_tests::{TestEnv, run_lily, wait_for, wait_streaming};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(90);
const JIRA_SECRET: &str = "jira-secret-acme";
const HOOK_SECRET: &str = "hook-secret";

fn posts<'a>(r: &'a [Received], path: &str) -> Vec<&'a Received> {
    r.iter()
        .filter(|x| x.method == "POST" && x.path.starts_with(path))
        .collect()
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

async fn wait_requests(
    what: &str,
    r: &Receiver,
    n: usize,
    lily: &lily_tests::LilyProcess,
) -> anyhow::Result<Vec<Received>> {
    wait_for(what, WAIT, || async {
        let got = r.requests();
        Ok((got.len() >= n).then_some(got))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}: {} so far\n{}", r.requests().len(), lily.output()))
}

/// Dead letters of notifications to `target` with error code `code`.
async fn dead_letters(env: &TestEnv, target: &str, code: &str) -> anyhow::Result<i64> {
    Ok(env
        .client()
        .await?
        .query_one(
            "SELECT count(*) FROM lily.dead_letters
              WHERE source = 'notify' AND reference LIKE $1 || ':%' AND error_code = $2",
            &[&target, &code],
        )
        .await?
        .get(0))
}

/// What `lily dlq list --source notify` prints.
/// The configuration is read whole, its `${...}` references included, so
/// the command gets the environment `lily run` had (`extra`).
fn dlq_list(env: &TestEnv, config: &str, extra: &[(String, String)]) -> anyhow::Result<String> {
    let mut vars = env.lily_env();
    vars.extend_from_slice(extra);
    let (code, out) = run_lily(&["-c", config, "dlq", "list", "--source", "notify"], &vars)?;
    anyhow::ensure!(code == 0, "lily dlq list: {out}");
    Ok(out)
}

/// Checks a webhook body against its signature, as a receiver would.
fn verify_webhook(r: &Received) -> bool {
    let (Some(ts), Some(sig)) = (
        r.headers.get("x-lily-timestamp"),
        r.headers.get("x-lily-signature"),
    ) else {
        return false;
    };
    let mut signed = format!("{ts}.").into_bytes();
    signed.extend_from_slice(&r.body);
    *sig == format!(
        "sha256={}",
        hmac_sha256_hex(HOOK_SECRET.as_bytes(), &signed)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn saas_targets_get_their_vendors_formats_at_their_pace() -> anyhow::Result<()> {
    // Slack: 429 with Retry-After on the first message, then ok.
    let slack = Receiver::start(|_, n| {
        if n == 0 {
            Reply::new(429, "rate_limited").header("retry-after", "1")
        } else {
            Reply::new(200, "ok")
        }
    })
    .await?;
    let teams = Receiver::start(|_, _| Reply::new(202, "")).await?;
    let jira = Receiver::start(|r, n| {
        if r.path.starts_with("/rest/api/3/search/jql") {
            Reply::new(200, r#"{"issues": []}"#)
        } else if r.path == "/rest/api/3/issue" {
            Reply::new(
                201,
                format!(r#"{{"id": "1000{n}", "key": "DQ-{n}", "self": "x"}}"#),
            )
        } else {
            Reply::new(201, "{}")
        }
    })
    .await?;
    let freshdesk = Receiver::start(|r, n| {
        if r.path == "/api/v2/tickets" {
            Reply::new(201, format!(r#"{{"id": {}}}"#, 40 + n))
        } else {
            Reply::new(if r.method == "PUT" { 200 } else { 201 }, "{}")
        }
    })
    .await?;
    let pagerduty = Receiver::start(|_, _| {
        Reply::new(
            202,
            r#"{"status": "success", "message": "Event processed"}"#,
        )
    })
    .await?;
    let hook = Receiver::start(|_, _| Reply::new(200, "")).await?;
    let flaky_ok = Arc::new(AtomicBool::new(false));
    let ok = flaky_ok.clone();
    let flaky = Receiver::start(move |_, _| {
        if ok.load(Ordering::SeqCst) {
            Reply::new(200, "")
        } else {
            Reply::new(503, "down for maintenance")
        }
    })
    .await?;
    let refusing =
        Receiver::start(|_, _| Reply::new(400, r#"{"error": "invalid_payload"}"#)).await?;
    let stuck = Receiver::start(|_, _| Reply::new(200, "").after(Duration::from_secs(60))).await?;

    let mut env = TestEnv::new().await?;
    let base = env.enable_api()?;
    env.client()
        .await?
        .batch_execute(
            "INSERT INTO metastore.tenants (tenant_id, name) VALUES ('acme', 'Acme'), ('beta', 'Beta');
             INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name)
               SELECT 'acme', 'column', 'db.crm.customers.' || c, c FROM unnest(ARRAY['email', 'phone', 'name', 'address']) c;
             INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name)
               VALUES ('acme', 'table', 'db.sales.orders', 'orders'), ('beta', 'column', 'db.x.email', 'email');",
        )
        .await?;
    let config = env.dir.path().join("notify.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[jira.secrets]
acme = "{JIRA_SECRET}"

[sinks.governance]
type = "notify"
kind = "slack"
transform = "notify_pii_tagged"
tenants = ["acme"]
url = "${{LILY_TEST_SLACK_URL}}"

[sinks.teams]
type = "notify"
kind = "teams"
transform = "notify_pii_tagged"
url = "{teams}/workflows/lily"

[sinks.dq-jira]
type = "notify"
kind = "jira"
transform = "notify_incidents"
base_url = "{jira}"
email = "bot@acme.example"
api_token = "jira-token"
project = "DQ"
labels = ["data quality"]

[sinks.helpdesk]
type = "notify"
kind = "freshdesk"
transform = "notify_incidents"
base_url = "{freshdesk}"
api_key = "fd-key"
requester_email = "data@acme.example"

[sinks.oncall]
type = "notify"
kind = "pagerduty"
transform = "notify_incidents"
routing_key = "R0UT1NGKEY"
url = "{pagerduty}/v2/enqueue"

[sinks.audit-hook]
type = "notify"
kind = "webhook"
transform = "notify_pii_tagged"
url = "{hook}/lily"
secret = "{HOOK_SECRET}"

[sinks.flaky]
type = "notify"
kind = "webhook"
transform = "notify_pii_tagged"
url = "{flaky}/"
max_attempts = 2
retry_base_ms = 50

[sinks.refusing]
type = "notify"
kind = "webhook"
transform = "notify_pii_tagged"
url = "{refusing}/"

[sinks.stuck]
type = "notify"
kind = "webhook"
transform = "notify_pii_tagged"
url = "{stuck}/"
timeout_ms = 50000
"#,
            teams = teams.url,
            jira = jira.url,
            freshdesk = freshdesk.url,
            pagerduty = pagerduty.url,
            hook = hook.url,
            flaky = flaky.url,
            refusing = refusing.url,
            stuck = stuck.url,
        ),
    )?;
    let config_arg = config.display().to_string();
    let extra = vec![(
        "LILY_TEST_SLACK_URL".to_owned(),
        format!("{}/services/T0/B0/x", slack.url),
    )];
    let lily = env.spawn_lily_with(&["-c", &config_arg, "run"], &extra)?;
    let api = ApiClient::new(&base);
    api.wait_ready().await?;
    wait_streaming(&env, "lily").await?;

    // PII on four acme columns and one of beta, one transaction each.
    let db = env.client().await?;
    for (tenant, column) in [
        ("acme", "db.crm.customers.email"),
        ("acme", "db.crm.customers.phone"),
        ("acme", "db.crm.customers.name"),
        ("acme", "db.crm.customers.address"),
        ("beta", "db.x.email"),
    ] {
        db.execute(
            "INSERT INTO metastore.classifications (tenant_id, asset_guid, tag)
             SELECT tenant_id, guid, 'PII' FROM metastore.assets WHERE tenant_id = $1 AND qualified_name = $2",
            &[&tenant, &column],
        )
        .await?;
    }
    let last_change: String = db
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);

    // Slack: only acme's four, Block Kit, a second apart, the 429 honoured.
    let got = wait_requests("4 Slack messages after a 429", &slack, 5, &lily).await?;
    assert!(
        got.iter().all(|r| r.path == "/services/T0/B0/x"),
        "${{ENV}} was expanded"
    );
    for r in &got {
        let v = r.json();
        assert!(v["text"].is_string(), "{v}");
        assert_eq!(v["blocks"][0]["type"], "header", "{v}");
        assert_eq!(v["blocks"][0]["text"]["type"], "plain_text", "{v}");
        assert!(
            v["blocks"][0]["text"]["text"]
                .as_str()
                .unwrap_or("")
                .starts_with("PII added to db.crm.customers."),
            "{v}"
        );
    }
    for pair in got.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_millis(900),
            "two Slack messages {gap:?} apart"
        );
    }
    let titles: BTreeSet<String> = got[1..]
        .iter()
        .map(|r| r.json()["text"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(titles.len(), 4, "each tag once: {titles:?}");
    assert_eq!(
        got[0].json(),
        got[1].json(),
        "the refused message came again first"
    );

    // The stuck target has not answered yet, and the pipeline went on: the
    // slot has confirmed every change.
    assert_eq!(stuck.requests().len(), 1, "one request, still waiting");
    wait_for("the slot to confirm past the tags", WAIT, || async {
        let passed: bool = env
            .client()
            .await?
            .query_one(
                "SELECT confirmed_flush_lsn >= $1::text::pg_lsn FROM pg_replication_slots WHERE slot_name = 'lily'",
                &[&last_change],
            )
            .await?
            .get(0);
        Ok(passed.then_some(()))
    })
    .await?;

    // Teams: all five, as Adaptive Cards inside a workflow message.
    let got = wait_requests("5 Teams cards", &teams, 5, &lily).await?;
    for r in &got {
        let v = r.json();
        assert_eq!(v["type"], "message", "{v}");
        assert_eq!(
            v["attachments"][0]["contentType"],
            "application/vnd.microsoft.card.adaptive"
        );
        assert_eq!(v["attachments"][0]["content"]["type"], "AdaptiveCard");
        assert_eq!(v["attachments"][0]["content"]["version"], "1.4");
        // Catalog text only in runs, which Teams does not read as Markdown.
        let body = v["attachments"][0]["content"]["body"].as_array().unwrap();
        assert!(body.iter().all(|b| b["type"] == "RichTextBlock"), "{v}");
    }

    // The webhook: signed, one delivery id per notification.
    let got = wait_requests("5 webhook calls", &hook, 5, &lily).await?;
    assert!(
        got.iter().all(verify_webhook),
        "every body carries a valid signature"
    );
    let ids: BTreeSet<&String> = got
        .iter()
        .filter_map(|r| r.headers.get("x-lily-delivery"))
        .collect();
    assert_eq!(ids.len(), 5);
    assert_eq!(got[0].json()["schema"], "lily.notification.v1");

    // A refusing target: one attempt each, then dead letters with the vendor's answer.
    wait_for("5 refused notifications as dead letters", WAIT, || async {
        Ok((dead_letters(&env, "refusing", "http_400").await? == 5).then_some(()))
    })
    .await?;
    assert_eq!(refusing.requests().len(), 5, "a refusal is not retried");

    // A failing target: retried, then dead letters; replayed once it is back.
    wait_for("5 failing notifications as dead letters", WAIT, || async {
        Ok((dead_letters(&env, "flaky", "retries_exhausted").await? == 5).then_some(()))
    })
    .await?;
    assert_eq!(flaky.requests().len(), 10, "two attempts each");
    let out = dlq_list(&env, &config_arg, &extra)?;
    assert_eq!(
        out.lines().filter(|l| l.contains("\tflaky:")).count(),
        5,
        "{out}"
    );
    assert!(
        out.contains("down for maintenance"),
        "the vendor's answer is kept: {out}"
    );
    flaky_ok.store(true, Ordering::SeqCst);
    let flaky_ids: Vec<i64> = env
        .client()
        .await?
        .query(
            "SELECT dead_letter_id FROM lily.dead_letters WHERE reference LIKE 'flaky:%'",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut args: Vec<String> = vec![
        "-c".into(),
        config_arg.clone(),
        "dlq".into(),
        "replay".into(),
    ];
    for id in &flaky_ids {
        args.push("--id".into());
        args.push(id.to_string());
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    // A replay reads the sinks as `lily run` does, secrets included.
    let mut vars = env.lily_env();
    vars.extend(extra.iter().cloned());
    let (code, out) = run_lily(&argv, &vars)?;
    assert_eq!(code, 0, "{out}");
    let got = wait_requests("the 5 replayed notifications", &flaky, 15, &lily).await?;
    let first: BTreeSet<&String> = got[..10]
        .iter()
        .filter_map(|r| r.headers.get("x-lily-delivery"))
        .collect();
    let replayed: BTreeSet<&String> = got[10..]
        .iter()
        .filter_map(|r| r.headers.get("x-lily-delivery"))
        .collect();
    assert_eq!(
        first, replayed,
        "the same notifications, with their delivery ids"
    );
    let out = dlq_list(&env, &config_arg, &extra)?;
    assert_eq!(
        out.lines().filter(|l| l.contains("\tflaky:")).count(),
        0,
        "replayed ones are listed only with --all: {out}"
    );

    // A crash and a restart: redelivered changes queue nothing twice.
    lily.crash();
    let lily = env.spawn_lily_with(&["-c", &config_arg, "run"], &extra)?;
    api.wait_ready().await?;

    // Incidents: a severe one, its updates, and a mild one.
    db.batch_execute(
        "INSERT INTO metastore.incidents (tenant_id, source_system, external_id, title, severity, url)
           VALUES ('acme', 'monte_carlo', 'mc-9', 'freshness anomaly on db.sales.orders', 'SEV-1', 'https://getmontecarlo.com/alerts/9');
         INSERT INTO metastore.incident_assets (tenant_id, incident_id, qualified_name)
           SELECT 'acme', incident_id, 'db.sales.orders' FROM metastore.incidents WHERE external_id = 'mc-9';",
    )
    .await?;
    let got = wait_requests("the JIRA issue", &jira, 2, &lily).await?;
    let create = posts(&got, "/rest/api/3/issue");
    assert_eq!(create.len(), 1, "{got:?}");
    assert_eq!(
        create[0].headers.get("authorization"),
        Some(&basic("bot@acme.example", "jira-token"))
    );
    let issue = create[0].json();
    assert_eq!(issue["fields"]["project"]["key"], "DQ");
    assert_eq!(issue["fields"]["issuetype"]["name"], "Task");
    assert_eq!(
        issue["fields"]["summary"],
        "freshness anomaly on db.sales.orders"
    );
    assert_eq!(issue["fields"]["description"]["type"], "doc");
    assert_eq!(issue["fields"]["description"]["version"], 1);
    assert!(
        issue["fields"]["labels"]
            .as_array()
            .is_some_and(|l| l.iter().all(|l| !l.as_str().unwrap_or(" ").contains(' ')))
    );
    let key = format!(
        "DQ-{}",
        got.iter()
            .position(|r| r.path == "/rest/api/3/issue")
            .unwrap_or(0)
    );
    wait_for("the issue to be linked to the incident", WAIT, || async {
        let n: i64 = env.client().await?.query_one(
            "SELECT count(*) FROM metastore.incident_tickets WHERE system = 'jira' AND ticket_key = $1", &[&key]).await?.get(0);
        Ok((n == 1).then_some(()))
    })
    .await?;
    db.batch_execute(
        "UPDATE metastore.incidents SET state = 'acknowledged' WHERE external_id = 'mc-9';
         INSERT INTO metastore.incidents (tenant_id, source_system, external_id, title, severity)
           VALUES ('acme', 'monte_carlo', 'mc-10', 'schema change on db.sales.orders', 'SEV-4');",
    )
    .await?;
    // JIRA says Done: the incident resolves, and every target hears of it.
    let done = serde_json::to_vec(&json!({
        "webhookEvent": "jira:issue_updated",
        "issue": {"id": "10001", "key": key, "fields": {
            "summary": "freshness anomaly on db.sales.orders",
            "status": {"name": "Done", "statusCategory": {"key": "done", "name": "Done"}}}}
    }))?;
    let r = api
        .send(
            reqwest::Method::POST,
            "/v1/tenants/acme/ingest/jira",
            Some(done.clone()),
            &[(
                "x-hub-signature",
                &format!("sha256={}", hmac_sha256_hex(JIRA_SECRET.as_bytes(), &done)),
            )],
        )
        .await?;
    assert_eq!(
        (r.status, &r.body["resolved"]),
        (200, &json!(["mc-9"])),
        "{r:?}"
    );

    // JIRA: a comment for the update and one for the resolve; no issue for SEV-4.
    let got = wait_requests("two comments on the issue", &jira, 4, &lily).await?;
    let comments = posts(&got, &format!("/rest/api/3/issue/{key}/comment"));
    assert_eq!(comments.len(), 2, "{got:?}");
    assert_eq!(comments[0].json()["body"]["type"], "doc");
    assert_eq!(
        posts(&got, "/rest/api/3/issue").len() - comments.len(),
        1,
        "one issue only"
    );
    // PagerDuty: trigger, re-trigger (acknowledged), resolve on one key; a trigger for mc-10.
    let got = wait_requests("4 PagerDuty events", &pagerduty, 4, &lily).await?;
    let events: Vec<Value> = got.iter().map(Received::json).collect();
    let mut by_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in &events {
        assert_eq!(e["routing_key"], "R0UT1NGKEY", "{e}");
        if e["event_action"] == "trigger" {
            assert!(
                ["critical", "error", "warning", "info"]
                    .contains(&e["payload"]["severity"].as_str().unwrap_or("")),
                "{e}"
            );
            assert!(
                e["payload"]["summary"].is_string() && e["payload"]["source"].is_string(),
                "{e}"
            );
        }
        by_key
            .entry(e["dedup_key"].as_str().unwrap_or_default().to_owned())
            .or_default()
            .push(e["event_action"].as_str().unwrap_or_default().to_owned());
    }
    let mut lifecycles: Vec<Vec<String>> = by_key.into_values().collect();
    lifecycles.sort();
    assert_eq!(
        lifecycles,
        vec![
            vec!["trigger".to_owned()],
            vec!["trigger".into(), "trigger".into(), "resolve".into()]
        ],
        "{events:?}"
    );
    assert_eq!(events[0]["payload"]["severity"], "critical");
    // Freshdesk: two tickets, a note on the first, then resolved.
    let got = wait_requests("the Freshdesk calls", &freshdesk, 4, &lily).await?;
    assert!(
        got.iter()
            .all(|r| r.headers.get("authorization") == Some(&basic("fd-key", "X")))
    );
    let tickets = posts(&got, "/api/v2/tickets");
    let created: Vec<&&Received> = tickets
        .iter()
        .filter(|r| r.path == "/api/v2/tickets")
        .collect();
    assert_eq!(created.len(), 2, "{got:?}");
    let t = created[0].json();
    assert_eq!(
        (
            t["email"].as_str(),
            t["priority"].as_u64(),
            t["status"].as_u64()
        ),
        (Some("data@acme.example"), Some(4), Some(2))
    );
    assert!(
        got.iter().any(|r| r.path == "/api/v2/tickets/40/notes"),
        "{got:?}"
    );
    assert!(
        got.iter().any(|r| r.method == "PUT"
            && r.path == "/api/v2/tickets/40"
            && r.json()["status"] == 4),
        "{got:?}"
    );

    // Across the crash, each notification was delivered once.
    let hooks = hook.requests();
    let ids: Vec<&String> = hooks
        .iter()
        .filter_map(|r| r.headers.get("x-lily-delivery"))
        .collect();
    let unique: BTreeSet<&&String> = ids.iter().collect();
    assert_eq!(
        ids.len(),
        unique.len(),
        "a notification was delivered twice"
    );
    lily.stop().await?;
    Ok(())
}
