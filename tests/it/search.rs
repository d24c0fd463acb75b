//! The search sink and the search API against an Elasticsearch-API server
//! (osmem) the test starts: the index holds exactly the catalog's current
//! state after inserts, updates, deletes, tags and incidents, replaying old
//! changes overwrites nothing, the API enforces the caller's tenant, and an
//! outage of the server loses nothing.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;

use lily_tests::api::{ApiClient, claims, hs256};
use lily_tests::search_server::SearchServer;
use lily_tests::{LilyProcess, TestEnv, free_port, http_get, run_lily, wait_for, wait_streaming};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(90);
const HS_SECRET: &str = "hs256-search-secret";

/// The catalog of tenants acme and beta before Lily starts.
const SEED: &str = "
INSERT INTO metastore.tenants (tenant_id, name) VALUES ('acme', 'Acme'), ('beta', 'Beta');
INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name, description) VALUES
  ('acme', 'table',  'db.sales.orders',        'orders',    'Every order placed on the web shop'),
  ('acme', 'column', 'db.sales.orders.email',  'email',     'Buyer e-mail'),
  ('acme', 'column', 'db.sales.orders.total',  'total',     'Order total in EUR'),
  ('acme', 'table',  'db.crm.customers',       'customers', 'Customer master data'),
  ('acme', 'column', 'db.crm.customers.email', 'email',     NULL),
  ('beta', 'table',  'db.sales.orders',        'orders',    'Beta''s own orders');
INSERT INTO metastore.lineage_edges (tenant_id, upstream_guid, downstream_guid)
  SELECT 'acme', u.guid, d.guid FROM metastore.assets u, metastore.assets d
   WHERE u.tenant_id = 'acme' AND d.tenant_id = 'acme'
     AND u.qualified_name = 'db.sales.orders.email' AND d.qualified_name = 'db.crm.customers.email';
INSERT INTO metastore.classifications (tenant_id, asset_guid, tag)
  SELECT 'acme', guid, 'finance' FROM metastore.assets WHERE tenant_id = 'acme' AND qualified_name = 'db.sales.orders.total';
INSERT INTO metastore.incidents (tenant_id, source_system, external_id, title, severity)
  VALUES ('acme', 'monte_carlo', 'mc-1', 'freshness anomaly on db.sales.orders', 'SEV-2');
INSERT INTO metastore.incident_assets (tenant_id, incident_id, qualified_name)
  SELECT 'acme', incident_id, 'db.sales.orders' FROM metastore.incidents WHERE external_id = 'mc-1';
";

/// What a document must say about an asset, as the metastore has it.
async fn expected(env: &TestEnv, tenant: &str) -> anyhow::Result<BTreeMap<String, Value>> {
    let rows = env
        .client()
        .await?
        .query(
            "SELECT a.guid::text, a.qualified_name, a.name, a.description, a.type_name,
                    coalesce((SELECT array_agg(DISTINCT c.tag ORDER BY c.tag) FROM metastore.classifications c
                               WHERE c.asset_guid = a.guid), '{}'),
                    (SELECT count(*) FROM metastore.incident_assets l
                       JOIN metastore.incidents i ON i.incident_id = l.incident_id
                      WHERE l.asset_guid = a.guid AND i.state <> 'resolved')
               FROM metastore.assets a WHERE a.tenant_id = $1",
            &[&tenant],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let guid: String = r.get(0);
            let tags: Vec<String> = r.get(5);
            (
                guid.clone(),
                json!({
                    "guid": guid,
                    "tenant_id": tenant,
                    "qualified_name": r.get::<_, String>(1),
                    "name": r.get::<_, String>(2),
                    "description": r.get::<_, Option<String>>(3),
                    "type_name": r.get::<_, String>(4),
                    "tags": tags,
                    "open_incidents": r.get::<_, i64>(6),
                }),
            )
        })
        .collect())
}

/// The same fields of the documents in the index.
fn indexed(docs: &[(String, u64, Value)]) -> BTreeMap<String, Value> {
    docs.iter()
        .map(|(id, _, d)| {
            let mut tags: Vec<String> = d["tags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect();
            tags.sort();
            (
                id.clone(),
                json!({
                    "guid": d["guid"],
                    "tenant_id": d["tenant_id"],
                    "qualified_name": d["qualified_name"],
                    "name": d["name"],
                    "description": d["description"],
                    "type_name": d["type_name"],
                    "tags": tags,
                    "open_incidents": d["open_incidents"],
                }),
            )
        })
        .collect()
}

/// Waits until the index of `tenant` says exactly what the metastore says.
async fn converge(
    env: &TestEnv,
    server: &SearchServer,
    tenant: &str,
    lily: &LilyProcess,
) -> anyhow::Result<()> {
    let alias = format!("lily-{tenant}-assets");
    let last = RefCell::new(String::new());
    let r = wait_for(
        &format!("the {tenant} index to match the catalog"),
        WAIT,
        || {
            let (last, alias) = (&last, &alias);
            async move {
                let want = expected(env, tenant).await?;
                let got = indexed(&server.documents(alias).await?);
                if want == got {
                    return Ok(Some(()));
                }
                *last.borrow_mut() = format!("want {want:#?}\ngot {got:#?}");
                Ok(None)
            }
        },
    )
    .await;
    if let Err(e) = r {
        anyhow::bail!("{e}\n{}\nlily:\n{}", last.borrow(), lily.output());
    }
    Ok(())
}

/// The assets `lily run`'s catalog state holds, from its metrics.
fn held_assets(metrics: &str) -> anyhow::Result<i64> {
    let body = http_get(metrics, "/metrics")?;
    body.lines()
        .find_map(|l| l.strip_prefix("lily_state_rows{table=\"assets\"} "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as i64)
        .ok_or_else(|| anyhow::anyhow!("no lily_state_rows for assets in {body}"))
}

/// The assets the state must hold: containers, and the columns a tag or
/// an incident refers to (the others reach search from their changes).
async fn containers_and_referenced(env: &TestEnv) -> anyhow::Result<i64> {
    Ok(env
        .client()
        .await?
        .query_one(
            "SELECT count(*) FROM metastore.assets a
              WHERE a.type_name NOT IN ('column', 'bi_field')
                 OR EXISTS (SELECT 1 FROM metastore.classifications c WHERE c.asset_guid = a.guid)
                 OR EXISTS (SELECT 1 FROM metastore.incident_assets l WHERE l.asset_guid = a.guid)",
            &[],
        )
        .await?
        .get(0))
}

fn search_env(server: &SearchServer) -> Vec<(String, String)> {
    vec![
        ("LILY_SINKS__SEARCH__TYPE".into(), "elasticsearch".into()),
        ("LILY_SINKS__SEARCH__URLS".into(), server.url().to_owned()),
        ("LILY_SINKS__SEARCH__TIMEOUT_MS".into(), "2000".into()),
        ("LILY_SINKS__SEARCH__FLUSH_INTERVAL_MS".into(), "50".into()),
        ("LILY_AUTH__JWT_HS256_SECRETS".into(), HS_SECRET.into()),
    ]
}

async fn confirmed_flush(env: &TestEnv, slot: &str) -> anyhow::Result<Option<String>> {
    Ok(env
        .client()
        .await?
        .query_opt(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?
        .and_then(|r| r.get(0)))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_index_follows_the_catalog_and_replays_overwrite_nothing() -> anyhow::Result<()> {
    let server = SearchServer::start().await?;
    let mut env = TestEnv::new().await?;
    let base = env.enable_api()?;
    let metrics = format!("127.0.0.1:{}", free_port()?);
    env.config.metrics.listen = metrics.clone();
    env.client().await?.batch_execute(SEED).await?;
    let lily = env.spawn_lily_with(&["run"], &search_env(&server))?;
    let api = ApiClient::new(&base);
    api.wait_ready().await?;
    converge(&env, &server, "acme", &lily).await?;
    converge(&env, &server, "beta", &lily).await?;
    // Every column is indexed, but the state holds only the tagged one.
    assert_eq!(held_assets(&metrics)?, 4);
    assert_eq!(containers_and_referenced(&env).await?, 4);

    // A second slot from here on: replaying it later sends every change
    // below again, older than what the index holds by then.
    let db = env.client().await?;
    db.batch_execute(
        "SELECT pg_create_logical_replication_slot('replay', 'pgoutput');
         INSERT INTO lily.replication_state (slot_name, snapshot_done) VALUES ('replay', true);",
    )
    .await?;

    // Tags through the API (PII propagates to the downstream column),
    // updates, deletes, a new asset, incidents opened and resolved, and an
    // incident naming an asset that arrives after it.
    let steward = format!(
        "Bearer {}",
        hs256(HS_SECRET, &claims("s", &["acme:steward"], 600))?
    );
    let auth = [("authorization", steward.as_str())];
    let r = api
        .post(
            "/v1/tenants/acme/classifications",
            &json!({"classifications": [{"qualified_name": "db.sales.orders.email", "tag": "PII"}]}),
            &auth,
        )
        .await?;
    assert_eq!(r.status, 200, "{r:?}");
    db.batch_execute(
        "UPDATE metastore.assets SET description = 'Customers, deduplicated nightly' WHERE tenant_id = 'acme' AND qualified_name = 'db.crm.customers';
         DELETE FROM metastore.assets WHERE tenant_id = 'acme' AND qualified_name = 'db.sales.orders.total';
         INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name, description)
           VALUES ('acme', 'column', 'db.crm.customers.phone', 'phone', 'Phone number');
         UPDATE metastore.incidents SET state = 'resolved' WHERE external_id = 'mc-1';
         INSERT INTO metastore.incidents (tenant_id, source_system, external_id, title, severity)
           VALUES ('acme', 'monte_carlo', 'mc-2', 'volume anomaly on db.crm.customers', 'SEV-1');
         INSERT INTO metastore.incident_assets (tenant_id, incident_id, qualified_name)
           SELECT 'acme', incident_id, q FROM metastore.incidents, unnest(ARRAY['db.crm.customers', 'db.crm.addresses']) q
            WHERE external_id = 'mc-2';",
    )
    .await?;
    db.batch_execute(
        "INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name)
           VALUES ('acme', 'table', 'db.crm.addresses', 'addresses');",
    )
    .await?;
    converge(&env, &server, "acme", &lily).await?;
    converge(&env, &server, "beta", &lily).await?;
    // The two e-mail columns came in with their tags (one direct, one
    // propagated); the new phone column did not.
    assert_eq!(
        held_assets(&metrics)?,
        containers_and_referenced(&env).await?
    );
    // A column with a description large enough to be stored apart (TOAST)
    // is renamed: the change does not carry the description, and the
    // document keeps it (the state fetches the column).
    db.batch_execute(
        "INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name, description)
           VALUES ('acme', 'column', 'db.crm.customers.notes', 'notes',
                   (SELECT string_agg(md5(i::text), ' ') FROM generate_series(1, 400) i));",
    )
    .await?;
    converge(&env, &server, "acme", &lily).await?;
    db.batch_execute(
        "UPDATE metastore.assets SET name = 'free_text_notes' WHERE qualified_name = 'db.crm.customers.notes'",
    )
    .await?;
    converge(&env, &server, "acme", &lily).await?;
    let docs = server.documents("lily-acme-assets").await?;
    let addresses = docs
        .iter()
        .find(|d| d.2["qualified_name"] == "db.crm.addresses")
        .expect("addresses is indexed");
    assert_eq!(
        addresses.2["incidents"][0]["title"], "volume anomaly on db.crm.customers",
        "an incident that came before its asset is on the asset's document"
    );
    let email = docs
        .iter()
        .find(|d| d.2["qualified_name"] == "db.crm.customers.email")
        .expect("indexed");
    assert_eq!(email.2["propagated_tags"], json!(["PII"]));

    // The search API: free text, filters, paging; the caller's tenant only.
    let viewer = format!(
        "Bearer {}",
        hs256(HS_SECRET, &claims("v", &["acme:viewer"], 600))?
    );
    let va = [("authorization", viewer.as_str())];
    let r = api.get("/v1/tenants/acme/search?q=customer", &va).await?;
    assert_eq!(r.status, 200, "{r:?}");
    let names: Vec<&str> = r.body["hits"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| h["qualified_name"].as_str())
        .collect();
    assert!(names.contains(&"db.crm.customers"), "{r:?}");
    let r = api
        .get("/v1/tenants/acme/search?tag=PII&type=column", &va)
        .await?;
    let mut pii: Vec<&str> = r.body["hits"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| h["qualified_name"].as_str())
        .collect();
    pii.sort();
    assert_eq!(
        pii,
        ["db.crm.customers.email", "db.sales.orders.email"],
        "{r:?}"
    );
    let r = api
        .get("/v1/tenants/acme/search?incident_state=open", &va)
        .await?;
    assert_eq!(
        r.body["total"], 2,
        "customers and addresses have the open incident: {r:?}"
    );
    let r = api
        .get("/v1/tenants/acme/search?limit=2&offset=2", &va)
        .await?;
    assert_eq!(r.body["hits"].as_array().map(Vec::len), Some(2), "{r:?}");
    assert_eq!(r.body["total"], 7, "{r:?}");
    let beta = format!(
        "Bearer {}",
        hs256(HS_SECRET, &claims("b", &["beta:admin"], 600))?
    );
    let vb = [("authorization", beta.as_str())];
    let r = api.get("/v1/tenants/acme/search?q=orders", &vb).await?;
    assert_eq!((r.status, r.error()), (403, "forbidden"), "{r:?}");
    let r = api.get("/v1/tenants/beta/search?q=orders", &vb).await?;
    assert_eq!(r.body["total"], 1, "{r:?}");
    assert_eq!(r.body["hits"][0]["tenant_id"], "beta", "{r:?}");
    let r = api
        .get("/v1/tenants/acme/search?offset=9999&limit=10", &va)
        .await?;
    assert_eq!(r.status, 422, "{r:?}");
    // An offset at the top of its type: refused by its documented range
    // (0 to 10000), not an overflow.
    let r = api
        .get("/v1/tenants/acme/search?offset=4294967295&limit=100", &va)
        .await?;
    assert_eq!((r.status, r.error()), (400, "bad_query"), "{r:?}");
    let r = api.get("/v1/tenants/acme/search", &[]).await?;
    assert_eq!(r.status, 401, "{r:?}");

    // Replay every change since the second slot: all older than (or as old
    // as) the documents; the index must not move.
    let before = server.documents("lily-acme-assets").await?;
    let target = db
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get::<_, String>(0);
    lily.stop().await?;
    let mut replay_env = search_env(&server);
    let metrics = format!("127.0.0.1:{}", free_port()?);
    replay_env.push(("LILY_REPLICATION__SLOT".into(), "replay".into()));
    replay_env.push(("LILY_API__LISTEN".into(), String::new()));
    replay_env.push(("LILY_METRICS__LISTEN".into(), metrics.clone()));
    let replay = env.spawn_lily_with(&["run"], &replay_env)?;
    wait_for("the replay to pass every change", WAIT, || async {
        let at = confirmed_flush(&env, "replay").await?;
        let done = match at {
            Some(at) => env
                .client()
                .await?
                .query_one(
                    "SELECT $1::text::pg_lsn >= $2::text::pg_lsn",
                    &[&at, &target],
                )
                .await?
                .get::<_, bool>(0),
            None => false,
        };
        Ok(done.then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", replay.output()))?;
    let after = server.documents("lily-acme-assets").await?;
    assert_eq!(before, after, "replayed changes overwrote documents");
    let superseded: f64 = http_get(&metrics, "/metrics")?
        .lines()
        .filter(|l| l.starts_with("lily_search_documents_total") && l.contains("superseded"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        superseded > 0.0,
        "the replay sent old versions, which the index refused"
    );
    converge(&env, &server, "acme", &replay).await?;
    replay.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_search_outage_loses_nothing() -> anyhow::Result<()> {
    let server = SearchServer::start().await?;
    let env = TestEnv::new().await?;
    env.client().await?.batch_execute(SEED).await?;
    let lily = env.spawn_lily_with(&["run"], &search_env(&server))?;
    converge(&env, &server, "acme", &lily).await?;

    // The server stops answering while changes are committed.
    server.pause();
    let db = env.client().await?;
    db.batch_execute(
        "INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name, description)
           SELECT 'acme', 'column', 'db.sales.orders.c' || i, 'c' || i, 'column number ' || i
             FROM generate_series(1, 200) i;
         UPDATE metastore.assets SET description = 'renamed while search was down'
          WHERE tenant_id = 'acme' AND qualified_name = 'db.sales.orders';
         DELETE FROM metastore.assets WHERE tenant_id = 'acme' AND qualified_name = 'db.crm.customers.email';",
    )
    .await?;
    let last = db
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get::<_, String>(0);
    // The lake has them (the reader read them), but the slot does not move
    // past what the search sink has not stored.
    wait_for("the audit lake to hold the new columns", WAIT, || async {
        let n = env
            .audit_count(
                "table_name = 'metastore.assets' AND op = 'c' AND after LIKE '%column number%'",
            )
            .await
            .unwrap_or(0);
        Ok((n == 200).then_some(()))
    })
    .await?;
    let held = confirmed_flush(&env, "lily").await?.unwrap_or_default();
    let behind: bool = db
        .query_one(
            "SELECT $1::text::pg_lsn < $2::text::pg_lsn",
            &[&held, &last],
        )
        .await?
        .get(0);
    assert!(
        behind,
        "the slot moved to {held} past {last} while search was down"
    );

    server.resume();
    converge(&env, &server, "acme", &lily).await?;
    wait_for("the slot to move once search is back", WAIT, || async {
        let at = confirmed_flush(&env, "lily").await?.unwrap_or_default();
        let passed: bool = env
            .client()
            .await?
            .query_one("SELECT $1::text::pg_lsn >= $2::text::pg_lsn", &[&at, &last])
            .await?
            .get(0);
        Ok(passed.then_some(()))
    })
    .await?;
    assert!(
        lily.output().contains("search"),
        "the outage is in the log:\n{}",
        lily.output()
    );
    lily.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_document_the_mapping_refuses_is_a_dead_letter_until_replayed() -> anyhow::Result<()> {
    let server = SearchServer::start().await?;
    let env = TestEnv::new().await?;
    env.client().await?.batch_execute(SEED).await?;
    env.client()
        .await?
        .batch_execute(
            "UPDATE metastore.assets SET certificate = 'verified'
              WHERE tenant_id = 'acme' AND qualified_name = 'db.sales.orders'",
        )
        .await?;
    // A mapping that wants a number for `certificate`: the certified
    // asset's document is refused, the others are indexed.
    let mut mapping: Value = serde_json::from_str(lily_sinks::elasticsearch::ASSETS_MAPPING)?;
    mapping["mappings"]["properties"]["certificate"] = json!({"type": "integer"});
    let mapping_file = env.dir.path().join("mapping.json");
    std::fs::write(&mapping_file, mapping.to_string())?;
    let mut settings = search_env(&server);
    settings.push((
        "LILY_SINKS__SEARCH__MAPPING".into(),
        mapping_file.display().to_string(),
    ));
    let lily = env.spawn_lily_with(&["run"], &settings)?;
    let refused = "SELECT count(*) FROM lily.dead_letters
                    WHERE source = 'elasticsearch' AND tenant_id = 'acme'
                      AND error_code LIKE '%parsing_exception'";
    wait_for("the refused document as a dead letter", WAIT, || async {
        let n: i64 = env.client().await?.query_one(refused, &[]).await?.get(0);
        Ok((n == 1).then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", lily.output()))?;
    let docs = server.documents("lily-acme-assets").await?;
    assert_eq!(docs.len(), 4, "every other asset is indexed: {docs:?}");
    assert!(
        docs.iter()
            .all(|d| d.2["qualified_name"] != "db.sales.orders"),
        "{docs:?}"
    );
    lily.stop().await?;
    let mut cli_env = env.lily_env();
    cli_env.extend(search_env(&server));
    let (code, out) = run_lily(&["dlq", "list", "--source", "elasticsearch"], &cli_env)?;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("parsing_exception"), "{out}");
    assert!(out.contains("lily-acme-assets/"), "{out}");

    // The index is rebuilt with the right mapping; the replay writes the document.
    let (_, aliases) = server.get("/_alias/lily-acme-assets").await?;
    for index in aliases.as_object().into_iter().flat_map(|o| o.keys()) {
        let (status, answer) = server.delete(&format!("/{index}")).await?;
        assert_eq!(status, 200, "{answer}");
    }
    let (code, out) = run_lily(&["dlq", "replay", "--source", "elasticsearch"], &cli_env)?;
    assert_eq!(code, 0, "{out}");
    let docs = server.documents("lily-acme-assets").await?;
    let orders = docs
        .iter()
        .find(|d| d.2["qualified_name"] == "db.sales.orders")
        .expect("replayed into the index");
    assert_eq!(orders.2["certificate"], "verified");
    let (code, out) = run_lily(&["dlq", "list", "--source", "elasticsearch"], &cli_env)?;
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("parsing_exception"), "replayed: {out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_mapping_is_reindexed_behind_the_alias() -> anyhow::Result<()> {
    use lily_sinks::elasticsearch::{ASSETS_MAPPING, IndexMapping};
    let server = SearchServer::start().await?;
    let env = TestEnv::new().await?;
    env.client().await?.batch_execute(SEED).await?;
    let lily = env.spawn_lily_with(&["run"], &search_env(&server))?;
    converge(&env, &server, "acme", &lily).await?;
    // Stopped before the snapshot is recorded as done, the next run would
    // discard the index and snapshot again rather than reindex.
    wait_streaming(&env, &env.config.replication.slot).await?;
    lily.stop().await?;
    let alias = "lily-acme-assets";
    let old_index = IndexMapping::parse(ASSETS_MAPPING)?.index_name(alias);

    // A mapping with one more field: a new index, filled from the old one
    // (the documents not changed since are only there through the copy).
    let mut mapping: Value = serde_json::from_str(ASSETS_MAPPING)?;
    mapping["mappings"]["properties"]["steward"] = json!({"type": "keyword"});
    let text = mapping.to_string();
    let new_index = IndexMapping::parse(&text)?.index_name(alias);
    assert_ne!(old_index, new_index);
    let mapping_file = env.dir.path().join("mapping.json");
    std::fs::write(&mapping_file, text)?;
    let mut settings = search_env(&server);
    settings.push((
        "LILY_SINKS__SEARCH__MAPPING".into(),
        mapping_file.display().to_string(),
    ));
    let lily = env.spawn_lily_with(&["run"], &settings)?;
    env.client()
        .await?
        .batch_execute(
            "UPDATE metastore.assets SET description = 'written after the mapping changed'
              WHERE tenant_id = 'acme' AND qualified_name = 'db.sales.orders'",
        )
        .await?;
    converge(&env, &server, "acme", &lily).await?;
    let (_, aliases) = server.get(&format!("/_alias/{alias}")).await?;
    let targets: Vec<&String> = aliases
        .as_object()
        .into_iter()
        .flat_map(|o| o.keys())
        .collect();
    assert_eq!(targets, vec![&new_index], "{aliases}");
    let (_, mappings) = server.get(&format!("/{new_index}/_mapping")).await?;
    assert!(
        mappings[&new_index]["mappings"]["properties"]["steward"].is_object(),
        "{mappings}"
    );
    // The old index is kept for the operator, with what it held.
    let (status, _) = server.get(&format!("/{old_index}")).await?;
    assert_eq!(status, 200);
    assert!(
        lily.output()
            .contains("documents reindexed and the alias moved")
    );
    lily.stop().await?;
    Ok(())
}
