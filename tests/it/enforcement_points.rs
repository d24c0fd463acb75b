//! The policies enforced where customers already query: Trino's `opa`
//! access control answered by Lily (requests shaped as the plugin sends
//! them, plugin/trino-opa in Trino's source), the policy API with its
//! ETag and long poll, masking views kept in a second, real PostgreSQL
//! cluster and read with psql, and policy events read from Kafka by a
//! consumer and delivered to Slack and a signed webhook.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use lily_embedded::ClusterBuilder;
use lily_inbound::signature::hmac_sha256_hex;
use lily_tests::api::{ApiClient, claims, hs256};
use lily_tests::broker::KafkaBroker;
use lily_tests::receiver::{Receiver, Reply};
use lily_tests::{LilyProcess, TestEnv, wait_for};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const WAIT: Duration = Duration::from_secs(60);
const HS_SECRET: &str = "hs256-enforcement-secret";
const HOOK_SECRET: &str = "policy-hook-secret";

fn bearer(grants: &[&str]) -> anyhow::Result<String> {
    Ok(format!(
        "Bearer {}",
        hs256(HS_SECRET, &claims("tester", grants, 600))?
    ))
}

/// The catalog both tests use: customers (id, name, email, born) and a
/// downstream copy of its e-mails linked by lineage, in acme.
async fn catalog(api: &ApiClient, extra_tables: &[(&str, Vec<String>)]) -> anyhow::Result<()> {
    let steward = bearer(&["acme:steward"])?;
    let auth = [("authorization", steward.as_str())];
    let mut assets = vec![
        json!({"qualified_name": "analytics", "type": "database"}),
        json!({"qualified_name": "analytics.sales", "type": "schema", "parent": "analytics"}),
        json!({"qualified_name": "analytics.marts", "type": "schema", "parent": "analytics"}),
    ];
    let mut tables: Vec<(&str, Vec<String>)> = vec![
        (
            "analytics.sales.customers",
            ["id", "name", "email", "born"].map(String::from).to_vec(),
        ),
        (
            "analytics.marts.customer_emails",
            ["customer_id", "email"].map(String::from).to_vec(),
        ),
    ];
    tables.extend(extra_tables.iter().cloned());
    for (t, columns) in &tables {
        let schema = t.rsplit_once('.').map(|(s, _)| s).unwrap_or_default();
        assets.push(json!({"qualified_name": t, "type": "table", "parent": schema}));
        for c in columns {
            assets
                .push(json!({"qualified_name": format!("{t}.{c}"), "type": "column", "parent": t}));
        }
    }
    let r = api
        .post(
            "/v1/tenants/acme/assets",
            &json!({ "assets": assets }),
            &auth,
        )
        .await?;
    anyhow::ensure!(r.status == 200, "assets: {r:?}");
    let r = api
        .post(
            "/v1/tenants/acme/lineage",
            &json!({"edges": [{"upstream": "analytics.sales.customers.email", "downstream": "analytics.marts.customer_emails.email"}]}),
            &auth,
        )
        .await?;
    anyhow::ensure!(r.status == 200, "lineage: {r:?}");
    Ok(())
}

async fn tag(api: &ApiClient, column: &str, tag: &str, add: bool) -> anyhow::Result<()> {
    let steward = bearer(&["acme:steward"])?;
    let body = json!({"classifications": [{"qualified_name": column, "tag": tag}]});
    let auth = [("authorization", steward.as_str())];
    let r = if add {
        api.post("/v1/tenants/acme/classifications", &body, &auth)
            .await?
    } else {
        api.delete("/v1/tenants/acme/classifications", &body, &auth)
            .await?
    };
    anyhow::ensure!(r.status == 200, "{r:?}");
    Ok(())
}

/// A request as Trino's opa plugin sends it (OpaQuery → OpaQueryInput).
fn opa(user: &str, groups: &[&str], action: Value) -> Value {
    json!({"input": {
        "context": {
            "identity": {"user": user, "groups": groups},
            "softwareStack": {"trinoVersion": "476"}
        },
        "action": action
    }})
}

/// `TrinoColumn` of lakehouse.<schema>.<table>.
fn column(schema: &str, table: &str, name: &str, column_type: &str) -> Value {
    json!({"column": {"catalogName": "lakehouse", "schemaName": schema, "tableName": table,
        "columnName": name, "columnType": column_type}})
}

fn customers_batch(user: &str, groups: &[&str]) -> Value {
    opa(
        user,
        groups,
        json!({"operation": "GetColumnMask", "filterResources": [
            column("sales", "customers", "id", "integer"),
            column("sales", "customers", "name", "varchar"),
            column("sales", "customers", "email", "varchar(200)"),
            column("sales", "customers", "born", "date"),
        ]}),
    )
}

const EMAIL_MASK: &str = r#"CAST(lower(to_hex(sha256(to_utf8("email")))) AS varchar(200))"#;

#[tokio::test(flavor = "multi_thread")]
async fn trino_gets_masks_and_pullers_learn_of_changes() -> anyhow::Result<()> {
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
        &[
            ("LILY_AUTH__JWT_HS256_SECRETS".into(), HS_SECRET.into()),
            ("LILY_API__API_KEY_CACHE_MS".into(), "0".into()),
            (
                "LILY_TRINO__CATALOGS__ACME".into(),
                "lakehouse=analytics".into(),
            ),
            (
                "LILY_TRINO__ROLES__ACME".into(),
                "user:ana=pii_reader, group:privacy=pii_reader".into(),
            ),
        ],
    )?;
    let api = ApiClient::new(&base);
    api.wait_ready()
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", lily.output()))?;
    let wide: Vec<String> = (0..500).map(|i| format!("c{i}")).collect();
    catalog(&api, &[("analytics.sales.wide", wide.clone())]).await?;
    let key = env.create_api_key("acme", "viewer", "trino")?;
    let beta_key = env.create_api_key("beta", "viewer", "trino-beta")?;
    let ingest_key = env.create_api_key("acme", "ingest", "loader")?;
    let trino = |decision: &str, key: &str| format!("/v1/tenants/acme/trino/{decision}/{key}");

    // The GDPR policy shows a date's year; PII stays hashed.
    let steward = bearer(&["acme:steward"])?;
    let r = api
        .put(
            "/v1/tenants/acme/masking-policies/gdpr",
            &json!({"tags": ["GDPR"], "mask": "MASK_DATE_SHOW_YEAR", "unmasked_roles": ["gdpr_reader"]}),
            &[("authorization", steward.as_str())],
        )
        .await?;
    anyhow::ensure!(r.status == 200, "{r:?}");
    tag(&api, "analytics.sales.customers.email", "PII", true).await?;
    tag(&api, "analytics.sales.customers.born", "GDPR", true).await?;
    tag(&api, "analytics.sales.wide.c7", "PII", true).await?;
    tag(&api, "analytics.sales.wide.c300", "PII", true).await?;

    // A reader without roles: e-mail hashed, birth date cut to its year.
    let want = json!([
        {"index": 2, "viewExpression": {"expression": EMAIL_MASK}},
        {"index": 3, "viewExpression": {"expression": r#"CAST(date_trunc('year', "born") AS date)"#}},
    ]);
    let answer = wait_for("Trino's batch column masks", WAIT, || async {
        let r = api
            .post(
                &trino("batch-column-masks", &key),
                &customers_batch("bob", &[]),
                &[],
            )
            .await?;
        anyhow::ensure!(r.status == 200, "{r:?}");
        Ok((r.body["result"] == want).then_some(r.body))
    })
    .await
    .with_context(|| lily.output())?;
    assert!(answer["decision_id"].is_string(), "{answer}");

    // Exempt by user and by group from PII, not from GDPR.
    for (user, groups) in [("ana", &[][..]), ("carl", &["privacy"][..])] {
        let r = api
            .post(
                &trino("batch-column-masks", &key),
                &customers_batch(user, groups),
                &[],
            )
            .await?;
        assert_eq!(r.body["result"], json!([want[1]]), "{user}: {r:?}");
    }

    // Propagated along lineage to the downstream copy.
    let downstream = opa(
        "bob",
        &[],
        json!({"operation": "GetColumnMask", "filterResources": [
            column("marts", "customer_emails", "customer_id", "integer"),
            column("marts", "customer_emails", "email", "varchar(200)"),
        ]}),
    );
    wait_for("the propagated tag to mask in Trino", WAIT, || async {
        let r = api
            .post(&trino("batch-column-masks", &key), &downstream, &[])
            .await?;
        Ok((r.body["result"]
            == json!([{"index": 1, "viewExpression": {"expression": EMAIL_MASK}}]))
        .then_some(()))
    })
    .await?;

    // One request for a 500-column table.
    let resources: Vec<Value> = wide
        .iter()
        .map(|c| column("sales", "wide", c, "varchar"))
        .collect();
    let wide_batch = opa(
        "bob",
        &[],
        json!({"operation": "GetColumnMask", "filterResources": resources}),
    );
    let started = Instant::now();
    let r = api
        .post(&trino("batch-column-masks", &key), &wide_batch, &[])
        .await?;
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{r:?}");
    let indices: Vec<i64> = r.body["result"]
        .as_array()
        .map(|a| a.iter().filter_map(|i| i["index"].as_i64()).collect())
        .unwrap_or_default();
    assert_eq!(indices, vec![7, 300], "{}", r.body);
    println!("a 500-column batch of masks answered in {took:?}");

    // The single-column form: an expression, or null for an untagged column.
    let single = |name: &str, column_type: &str| {
        opa(
            "bob",
            &[],
            json!({"operation": "GetColumnMask", "resource": column("sales", "customers", name, column_type)}),
        )
    };
    let r = api
        .post(
            &trino("column-mask", &key),
            &single("email", "varchar(200)"),
            &[],
        )
        .await?;
    assert_eq!(r.body["result"], json!({"expression": EMAIL_MASK}), "{r:?}");
    let r = api
        .post(&trino("column-mask", &key), &single("id", "integer"), &[])
        .await?;
    assert_eq!(r.status, 200);
    assert!(r.body["result"].is_null(), "{r:?}");

    // Lily answers masks; what Trino asks to do is allowed.
    let r = api
        .post(
            &trino("allow", &key),
            &opa("bob", &[], json!({"operation": "ExecuteQuery"})),
            &[],
        )
        .await?;
    assert_eq!(r.body["result"], json!(true), "{r:?}");
    let r = api
        .post(
            &trino("batch", &key),
            &opa(
                "bob",
                &[],
                json!({"operation": "FilterColumns", "filterResources": [{"table": {
                    "catalogName": "lakehouse", "schemaName": "sales", "tableName": "customers",
                    "columns": ["id", "name", "email", "born"]}}]}),
            ),
            &[],
        )
        .await?;
    assert_eq!(r.body["result"], json!([0, 1, 2, 3]), "{r:?}");
    let r = api
        .post(
            &trino("row-filters", &key),
            &opa(
                "bob",
                &[],
                json!({"operation": "GetRowFilters", "resource": {"table": {
                    "catalogName": "lakehouse", "schemaName": "sales", "tableName": "customers"}}}),
            ),
            &[],
        )
        .await?;
    assert_eq!(r.body["result"], json!([]), "{r:?}");

    // Refusals: no key, another tenant's key, an ingest key, a body that is
    // not the plugin's, a decision that does not exist.
    let body = customers_batch("bob", &[]);
    let r = api
        .post("/v1/tenants/acme/trino/batch-column-masks", &body, &[])
        .await?;
    assert_eq!(r.status, 401, "{r:?}");
    let r = api
        .post(&trino("batch-column-masks", "lily_nope_nope"), &body, &[])
        .await?;
    assert_eq!(r.status, 401, "{r:?}");
    let r = api
        .post(&trino("batch-column-masks", &beta_key), &body, &[])
        .await?;
    assert_eq!(r.status, 403, "{r:?}");
    let r = api
        .post(&trino("batch-column-masks", &ingest_key), &body, &[])
        .await?;
    assert_eq!(r.status, 403, "{r:?}");
    let r = api
        .post(&trino("column-mask", &key), &json!({"input": {}}), &[])
        .await?;
    assert_eq!(r.status, 422, "{r:?}");
    let r = api.post(&trino("decide", &key), &body, &[]).await?;
    assert_eq!(r.status, 404, "{r:?}");
    // The same decisions with the key in a header.
    let r = api
        .post(
            "/v1/tenants/acme/trino/batch-column-masks",
            &body,
            &[("x-api-key", key.as_str())],
        )
        .await?;
    assert_eq!(r.body["result"], want, "{r:?}");

    // The policy API: the table's effective policy, its ETag, 304, and a
    // long poll that returns when a tag changes.
    let http = reqwest::Client::new();
    let viewer = bearer(&["acme:viewer"])?;
    let url = format!("{base}/v1/tenants/acme/policy?table=analytics.sales.customers");
    let first = http
        .get(&url)
        .header("authorization", &viewer)
        .send()
        .await?;
    assert_eq!(first.status(), 200);
    let etag = first
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .context("an ETag")?;
    let doc: Value = first.json().await?;
    let columns: BTreeMap<String, Value> = doc["columns"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| (c["column"].as_str().unwrap_or("").to_owned(), c.clone()))
        .collect();
    assert_eq!(columns["email"]["mask"], "MASK_HASH", "{doc}");
    assert_eq!(columns["email"]["tags"][0]["tag"], "PII", "{doc}");
    assert_eq!(columns["email"]["tags"][0]["direct"], true, "{doc}");
    assert_eq!(columns["born"]["mask"], "MASK_DATE_SHOW_YEAR", "{doc}");
    assert!(!columns.contains_key("id"), "{doc}");
    assert!(doc["version"].as_u64().unwrap_or(0) > 0, "{doc}");
    let again = http
        .get(&url)
        .header("authorization", &viewer)
        .header("if-none-match", &etag)
        .send()
        .await?;
    assert_eq!(again.status(), 304);
    let other = http
        .get(&url)
        .header("authorization", bearer(&["beta:admin"])?)
        .send()
        .await?;
    assert_eq!(other.status(), 403);
    // The propagated copy, with where its tag comes from.
    let r = api
        .get(
            "/v1/tenants/acme/policy?table=analytics.marts.customer_emails",
            &[("authorization", viewer.as_str())],
        )
        .await?;
    assert_eq!(
        r.body["columns"][0]["tags"][0]["propagated_from"],
        json!(["analytics.sales.customers.email"]),
        "{r:?}"
    );

    let poll = tokio::spawn({
        let http = http.clone();
        let url = format!("{url}&wait=30");
        let viewer = viewer.clone();
        let etag = etag.clone();
        async move {
            let r = http
                .get(&url)
                .header("authorization", &viewer)
                .header("if-none-match", &etag)
                .send()
                .await?;
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            anyhow::Ok((status, body, Instant::now()))
        }
    });
    // The poll is waiting when the tag is removed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    tag(&api, "analytics.sales.customers.email", "PII", false).await?;
    let untagged = Instant::now();
    let (status, body, returned) = poll.await??;
    assert_eq!(status, 200, "{body}");
    assert!(
        !body["columns"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["column"] == "email"),
        "{body}"
    );
    println!(
        "the long poll returned {:?} after the tag was removed",
        returned.saturating_duration_since(untagged)
    );
    lily.stop().await?;
    Ok(())
}

/// psql's unaligned, tuples-only output of `sql` as `user` of the
/// downstream database.
fn psql(port: u16, user: &str, sql: &str) -> anyhow::Result<Result<String, String>> {
    let out = Command::new("psql")
        .args([
            "-X",
            "-A",
            "-t",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            user,
            "-d",
            "shop",
            "-c",
            sql,
        ])
        .env("PGCONNECT_TIMEOUT", "10")
        .env("PGSSLMODE", "disable")
        .output()
        .context("running psql")?;
    Ok(if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    })
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// The xmin of the rule behind a view: it changes only when the view is
/// written.
async fn view_version(client: &tokio_postgres::Client, view: &str) -> anyhow::Result<String> {
    Ok(client
        .query_one(
            "SELECT xmin::text FROM pg_rewrite WHERE ev_class = to_regclass($1)",
            &[&view],
        )
        .await?
        .get(0))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_downstream_postgres_kafka_and_notify_targets_follow_each_tag() -> anyhow::Result<()> {
    let broker = KafkaBroker::start().await?;
    let mut env = TestEnv::new().await?;
    let base = env.enable_api()?;
    // The downstream: a second cluster with the shop's tables and roles.
    let downstream = ClusterBuilder::new(env.dir.path().join("downstream"))
        .start()
        .await
        .context("starting the downstream PostgreSQL")?;
    downstream.create_database("shop").await?;
    let shop = downstream.connect("shop").await?;
    shop.batch_execute(
        "CREATE TABLE customers (id int PRIMARY KEY, name text, email varchar(200), born date);
         INSERT INTO customers VALUES (1, 'Ada', 'ada@example.com', DATE '1990-07-14'),
                                      (2, 'Bob', 'bob@example.com', DATE '1985-02-01');
         CREATE TABLE orders (id int PRIMARY KEY, customer_id int, note text);
         INSERT INTO orders VALUES (1, 1, 'first');
         CREATE ROLE analyst LOGIN;
         CREATE ROLE pii_reader;
         CREATE ROLE auditor LOGIN IN ROLE pii_reader, analyst;
         GRANT SELECT ON customers, orders TO analyst;",
    )
    .await?;
    let pg_port = downstream.port();
    env.client()
        .await?
        .batch_execute("INSERT INTO metastore.tenants (tenant_id, name) VALUES ('acme', 'Acme')")
        .await?;
    let slack = Receiver::start(|_, _| Reply::new(200, "ok")).await?;
    let hook = Receiver::start(|_, _| Reply::new(200, "{}")).await?;
    let config = env.dir.path().join("enforcement.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[sql.connections]
shop = "{shop_url}"

[sql.tenant_sources]
acme = "shop"

[sinks.shop-masks]
type = "postgres_masking"
connection = "shop"
consumer_roles = ["analyst"]
recheck_interval_ms = 1000

[sinks.events]
type = "kafka"
brokers = "{brokers}"
partitions = 1

[sinks.governance]
type = "notify"
kind = "slack"
transform = "notify_policy_changes"
url = "{slack}/services/T0/B0/x"

[sinks.policy-hook]
type = "notify"
kind = "webhook"
transform = "notify_policy_changes"
url = "{hook}/lily"
secret = "{HOOK_SECRET}"
"#,
            shop_url = downstream.url("shop"),
            brokers = broker.bootstrap_servers(),
            slack = slack.url,
            hook = hook.url,
        ),
    )?;
    let config_arg = config.display().to_string();
    let vars = [
        (
            "LILY_AUTH__JWT_HS256_SECRETS".to_string(),
            HS_SECRET.to_string(),
        ),
        ("LILY_API__API_KEY_CACHE_MS".into(), "0".into()),
    ];
    let start = |env: &TestEnv| -> anyhow::Result<LilyProcess> {
        env.spawn_lily_with(&["-c", &config_arg, "run"], &vars)
    };
    let lily = start(&env)?;
    let api = ApiClient::new(&base);
    api.wait_ready()
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", lily.output()))?;
    catalog(
        &api,
        &[(
            "analytics.sales.orders",
            vec!["id".into(), "customer_id".into(), "note".into()],
        )],
    )
    .await?;
    let admin = bearer(&["acme:admin"])?;
    for (table, asset) in [
        ("customers", "analytics.sales.customers"),
        ("orders", "analytics.sales.orders"),
    ] {
        let r = api
            .put(
                &format!("/v1/tenants/acme/governed-tables/{table}"),
                &json!({"asset": asset, "kind": "postgres", "connection": "shop", "location": format!("public.{table}")}),
                &[("authorization", admin.as_str())],
            )
            .await?;
        anyhow::ensure!(r.status == 200, "governed table: {r:?}");
    }

    // The analyst reads the view, no longer the table.
    let email_of_ada = "SELECT email FROM lily_acme.customers WHERE id = 1";
    wait_for("the masking view", WAIT, || async {
        Ok(psql(pg_port, "analyst", email_of_ada)?
            .ok()
            .filter(|v| v == "ada@example.com")
            .map(|_| ()))
    })
    .await
    .with_context(|| lily.output())?;
    let direct = psql(pg_port, "analyst", "SELECT email FROM public.customers")?;
    assert!(
        direct
            .as_ref()
            .is_err_and(|e| e.contains("permission denied")),
        "{direct:?}"
    );

    // A tag masks the analyst's next query; a member of pii_reader reads raw.
    tag(&api, "analytics.sales.customers.email", "PII", true).await?;
    let hashed = sha256_hex("ada@example.com");
    wait_for("the analyst's e-mail to be masked", WAIT, || async {
        Ok(psql(pg_port, "analyst", email_of_ada)?
            .ok()
            .filter(|v| *v == hashed)
            .map(|_| ()))
    })
    .await
    .with_context(|| lily.output())?;
    assert_eq!(
        psql(pg_port, "auditor", email_of_ada)?.map_err(anyhow::Error::msg)?,
        "ada@example.com"
    );
    // The view keeps the table's shape: the mask is cast back to varchar(200).
    let shape = psql(
        pg_port,
        "analyst",
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'lily_acme.customers'::regclass AND attname = 'email'",
    )?;
    assert_eq!(shape.map_err(anyhow::Error::msg)?, "character varying(200)");

    // Untagged: raw again.
    tag(&api, "analytics.sales.customers.email", "PII", false).await?;
    wait_for("the analyst's e-mail to be raw again", WAIT, || async {
        Ok(psql(pg_port, "analyst", email_of_ada)?
            .ok()
            .filter(|v| v == "ada@example.com")
            .map(|_| ()))
    })
    .await?;

    // A tag committed while lily run is down is enforced when it is back.
    lily.stop().await?;
    env.client()
        .await?
        .batch_execute(
            "INSERT INTO metastore.classifications (tenant_id, asset_guid, tag)
             SELECT tenant_id, guid, 'PII' FROM metastore.assets
              WHERE tenant_id = 'acme' AND qualified_name = 'analytics.sales.customers.email'",
        )
        .await?;
    let lily = start(&env)?;
    wait_for(
        "the tag made while lily run was down to mask",
        WAIT,
        || async {
            Ok(psql(pg_port, "analyst", email_of_ada)?
                .ok()
                .filter(|v| *v == hashed)
                .map(|_| ()))
        },
    )
    .await
    .with_context(|| lily.output())?;

    // A restart with nothing new rewrites nothing.
    let before = view_version(&shop, "lily_acme.customers").await?;
    let orders_before = view_version(&shop, "lily_acme.orders").await?;
    lily.stop().await?;
    let lily = start(&env)?;
    api.wait_ready().await?;
    // A later change to the other table proves the views were checked.
    tag(&api, "analytics.sales.orders.note", "PII", true).await?;
    wait_for("the orders view to be rewritten", WAIT, || async {
        Ok((view_version(&shop, "lily_acme.orders").await? != orders_before).then_some(()))
    })
    .await
    .with_context(|| lily.output())?;
    assert_eq!(view_version(&shop, "lily_acme.customers").await?, before);

    // Policy events, read back by a consumer: the tag, its propagation and
    // its removal, in order for each column, keyed by the column.
    tag(&api, "analytics.sales.customers.email", "PII", false).await?;
    let consumer: StreamConsumer = broker.consumer_config("policy-events").create()?;
    consumer.subscribe(&["lily.acme.column_policies"])?;
    let mut events: BTreeMap<String, Vec<(String, Value)>> = BTreeMap::new();
    let email = "analytics.sales.customers.email";
    let copy = "analytics.marts.customer_emails.email";
    // At least once: a record produced again after a restart is dropped
    // by its position, as a consumer would.
    let mut positions = std::collections::BTreeSet::new();
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../sinks/schemas/column-policy.v1.json"),
    )?)?;
    let schema = jsonschema::validator_for(&schema)?;
    let deadline = tokio::time::Instant::now() + WAIT;
    let done = |e: &BTreeMap<String, Vec<(String, Value)>>| {
        [email, copy].iter().all(|c| {
            e.get(*c).is_some_and(|v| {
                v.iter()
                    .filter(|(cause, _)| cause.contains("removed"))
                    .count()
                    >= 2
            })
        })
    };
    while !done(&events) {
        let m = match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(m) => m?,
            Err(_) => anyhow::bail!("policy events missing: {events:?}\n{}", lily.output()),
        };
        let envelope: Value = serde_json::from_slice(m.payload().unwrap_or_default())?;
        if !positions.insert((
            envelope["commit_lsn"].to_string(),
            envelope["seq"].to_string(),
        )) {
            continue;
        }
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        let after = envelope["after"].clone();
        if let Err(e) = schema.validate(&after) {
            panic!("a policy event breaks column-policy.v1.json: {e}\n{after}");
        }
        assert_eq!(
            after["qualified_name"].as_str(),
            Some(key.as_str()),
            "{envelope}"
        );
        events
            .entry(key)
            .or_default()
            .push((after["cause"].as_str().unwrap_or("").to_owned(), after));
    }
    let causes =
        |c: &str| -> Vec<String> { events[c].iter().map(|(cause, _)| cause.clone()).collect() };
    assert_eq!(
        causes(email),
        [
            "tag PII added",
            "tag PII removed",
            "tag PII added",
            "tag PII removed"
        ],
        "{events:?}"
    );
    let propagated = format!("tag PII propagated from {email}");
    assert_eq!(
        causes(copy),
        [
            propagated.as_str(),
            "tag PII removed",
            propagated.as_str(),
            "tag PII removed"
        ],
        "{events:?}"
    );
    let added = &events[email][0].1;
    assert_eq!(added["mask"], "MASK_HASH", "{added}");
    assert_eq!(added["tags"], json!(["PII"]), "{added}");
    assert!(added["policy_version"].as_i64().unwrap_or(0) > 0, "{added}");
    let removed = &events[email][1].1;
    assert!(removed["mask"].is_null(), "{removed}");
    // Versions only grow along a column's events.
    let versions: Vec<i64> = events[email]
        .iter()
        .map(|(_, a)| a["policy_version"].as_i64().unwrap_or(0))
        .collect();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");

    // Slack and the signed webhook: one message per table and cause.
    let title = "tag PII added: 1 column of analytics.sales.customers now MASK_HASH";
    wait_for("the Slack message", WAIT, || async {
        Ok(slack
            .requests()
            .iter()
            .any(|r| r.json()["text"].as_str().is_some_and(|t| t.contains(title)))
            .then_some(()))
    })
    .await
    .with_context(|| lily.output())?;
    let delivered = wait_for("the signed webhook", WAIT, || async {
        Ok(hook
            .requests()
            .into_iter()
            .find(|r| r.json()["title"].as_str() == Some(title)))
    })
    .await?;
    let ts = delivered
        .headers
        .get("x-lily-timestamp")
        .cloned()
        .unwrap_or_default();
    let mut signed = format!("{ts}.").into_bytes();
    signed.extend_from_slice(&delivered.body);
    assert_eq!(
        delivered
            .headers
            .get("x-lily-signature")
            .cloned()
            .unwrap_or_default(),
        format!(
            "sha256={}",
            hmac_sha256_hex(HOOK_SECRET.as_bytes(), &signed)
        )
    );
    lily.stop().await?;
    Ok(())
}
