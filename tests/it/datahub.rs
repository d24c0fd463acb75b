//! DataHub's own `datahub ingest`, with its postgres source and REST sink,
//! extracting a real warehouse into Lily's per-tenant GMS endpoints:
//! the hierarchy, columns with their types, keys, comments and view
//! lineage arrive; a rerun changes nothing; a table dropped at the source
//! is removed by stateful ingestion's next run.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use lily_tests::api::ApiClient;
use lily_tests::{TestEnv, datahub_cli, run_lily};
use serde_json::json;

const WAREHOUSE: &str = "
CREATE SCHEMA sales;
CREATE SCHEMA hr;
CREATE TABLE sales.customers (id integer PRIMARY KEY, email varchar(200) NOT NULL, name text);
COMMENT ON TABLE sales.customers IS 'Customer master table';
COMMENT ON COLUMN sales.customers.email IS 'Primary email address';
CREATE TABLE sales.orders (
    id bigint PRIMARY KEY,
    customer_id integer REFERENCES sales.customers (id),
    amount numeric(10, 2),
    created_at timestamptz,
    labels text[],
    meta jsonb
);
CREATE VIEW sales.big_orders AS
    SELECT o.id, o.amount, c.email FROM sales.orders o JOIN sales.customers c ON c.id = o.customer_id
     WHERE o.amount > 100;
CREATE TABLE hr.employees (id integer PRIMARY KEY, salary numeric);
";

async fn names(c: &tokio_postgres::Client, sql: &str) -> anyhow::Result<BTreeSet<String>> {
    Ok(c.query(sql, &[])
        .await?
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect())
}

/// Runs `datahub ingest` with `recipe`; its output on failure.
fn ingest(dir: &Path, recipe: &str) -> anyhow::Result<String> {
    let path = dir.join("recipe.yml");
    std::fs::write(&path, recipe)?;
    let out = Command::new(datahub_cli()?)
        .args(["ingest", "-c"])
        .arg(&path)
        .env("HOME", dir)
        .env("DATAHUB_TELEMETRY_ENABLED", "false")
        .env("DATAHUB_SKIP_CONFIG", "true")
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(out.status.success(), "datahub ingest failed:\n{text}");
    Ok(text)
}

const ASSETS: &str = "
SELECT a.qualified_name || ':' || a.type_name || ':' || coalesce(p.qualified_name, '-')
  FROM metastore.assets a LEFT JOIN metastore.assets p ON p.guid = a.parent_guid
 WHERE a.tenant_id = 'acme' AND a.type_name <> 'column'";

const COLUMNS: &str = "
SELECT a.qualified_name || ' ' || (a.attributes->>'data_type') || ' ' || (a.attributes->>'logical_type')
       || CASE WHEN (a.attributes->>'primary_key')::boolean THEN ' key' ELSE '' END
       || coalesce(' -> ' || (a.attributes->>'foreign_key'), '')
  FROM metastore.assets a WHERE a.tenant_id = 'acme' AND a.type_name = 'column'";

const EDGES: &str = "
SELECT u.qualified_name || ' -> ' || d.qualified_name FROM metastore.lineage_edges e
  JOIN metastore.assets u ON u.guid = e.upstream_guid
  JOIN metastore.assets d ON d.guid = e.downstream_guid
 WHERE e.tenant_id = 'acme'";

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn datahub_ingest_extracts_a_warehouse_into_the_catalog() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    let base = env.enable_api()?;
    let c = env.client().await?;
    c.batch_execute(
        "INSERT INTO metastore.tenants (tenant_id, name) VALUES ('acme', 'Acme'), ('beta', 'Beta')",
    )
    .await?;
    env.cluster.create_database("shop").await?;
    let shop = env.cluster.connect("shop").await?;
    shop.batch_execute(WAREHOUSE).await?;
    let key = env.create_api_key("acme", "ingest", "datahub")?;
    let beta = env.create_api_key("beta", "steward", "beta")?;
    let lily = env.spawn_lily(&["run"])?;
    let api = ApiClient::new(&base);
    api.wait_ready().await?;

    let recipe = format!(
        "pipeline_name: shop_postgres
source:
  type: postgres
  config:
    host_port: 127.0.0.1:{port}
    database: shop
    username: postgres
    password: unused
    stateful_ingestion:
      enabled: true
      remove_stale_metadata: true
sink:
  type: datahub-rest
  config:
    server: {base}/v1/tenants/acme/datahub
    token: {key}
",
        port = env.cluster.port()
    );
    let scratch = tempfile::tempdir()?;
    let log = ingest(scratch.path(), &recipe)
        .map_err(|e| anyhow::anyhow!("{e}\nlily:\n{}", lily.output()))?;

    let assets = names(&c, ASSETS).await?;
    for want in [
        "shop:database:-",
        "shop.sales:schema:shop",
        "shop.hr:schema:shop",
        "shop.sales.customers:table:shop.sales",
        "shop.sales.orders:table:shop.sales",
        "shop.sales.big_orders:view:shop.sales",
        "shop.hr.employees:table:shop.hr",
    ] {
        assert!(
            assets.contains(want),
            "{want} is missing from {assets:#?}\n{log}"
        );
    }
    // Every column the warehouse has, and no other.
    let warehouse_columns = names(
        &shop,
        "SELECT 'shop.' || table_schema || '.' || table_name || '.' || column_name
           FROM information_schema.columns WHERE table_schema IN ('sales', 'hr')",
    )
    .await?;
    let columns = names(
        &c,
        "SELECT qualified_name FROM metastore.assets WHERE tenant_id = 'acme' AND type_name = 'column'",
    )
    .await?;
    assert_eq!(columns, warehouse_columns);
    let typed = names(&c, COLUMNS).await?;
    for want in [
        "shop.sales.orders.id BIGINT number key",
        "shop.sales.orders.customer_id INTEGER number -> shop.sales.customers.id",
        "shop.sales.orders.amount NUMERIC(10, 2) number",
        "shop.sales.orders.labels TEXT[] array",
        "shop.sales.customers.email VARCHAR(200) string",
    ] {
        assert!(typed.contains(want), "{want} is missing from {typed:#?}");
    }
    let described = names(
        &c,
        "SELECT qualified_name || ': ' || description FROM metastore.assets
          WHERE tenant_id = 'acme' AND description IS NOT NULL",
    )
    .await?;
    assert!(
        described.contains("shop.sales.customers: Customer master table")
            && described.contains("shop.sales.customers.email: Primary email address"),
        "{described:#?}"
    );
    // The view's lineage, parsed by DataHub from its definition.
    let edges = names(&c, EDGES).await?;
    for want in [
        "shop.sales.orders -> shop.sales.big_orders",
        "shop.sales.customers -> shop.sales.big_orders",
        "shop.sales.orders.amount -> shop.sales.big_orders.amount",
        "shop.sales.customers.email -> shop.sales.big_orders.email",
    ] {
        assert!(edges.contains(want), "{want} is missing from {edges:#?}");
    }

    // The same extraction written by DataHub's `file` sink and loaded with
    // `lily ingest` gives another tenant the same catalog.
    let file = scratch.path().join("shop.json");
    let file_recipe = format!(
        "source:
  type: postgres
  config:
    host_port: 127.0.0.1:{port}
    database: shop
    username: postgres
    password: unused
sink:
  type: file
  config:
    filename: {file}
",
        port = env.cluster.port(),
        file = file.display()
    );
    ingest(scratch.path(), &file_recipe)?;
    let (code, out) = run_lily(
        &["ingest", "--tenant", "beta", &file.display().to_string()],
        &env.lily_env(),
    )?;
    assert_eq!(code, 0, "{out}");
    let of = |tenant: &str, sql: &str| sql.replace("'acme'", &format!("'{tenant}'"));
    for sql in [ASSETS, COLUMNS, EDGES] {
        assert_eq!(
            names(&c, &of("beta", sql)).await?,
            names(&c, sql).await?,
            "{sql}"
        );
    }

    // A rerun changes nothing: no asset is written again.
    let versions = "SELECT count(*)::text || ' assets, versions ' || sum(version)::text
                      FROM metastore.assets WHERE tenant_id = 'acme'";
    let before = names(&c, versions).await?;
    let edges_before = names(&c, EDGES).await?;
    ingest(scratch.path(), &recipe)?;
    assert_eq!(names(&c, versions).await?, before);
    assert_eq!(names(&c, EDGES).await?, edges_before);

    // A table dropped at the source is removed by the next run (stateful
    // ingestion's checkpoint is kept by Lily), with its columns.
    shop.batch_execute("DROP TABLE hr.employees").await?;
    ingest(scratch.path(), &recipe)?;
    let assets = names(&c, ASSETS).await?;
    assert!(
        !assets.contains("shop.hr.employees:table:shop.hr"),
        "{assets:#?}"
    );
    assert!(assets.contains("shop.sales.orders:table:shop.sales"));
    let left = names(
        &c,
        "SELECT qualified_name FROM metastore.assets WHERE tenant_id = 'acme' AND qualified_name LIKE 'shop.hr.employees%'",
    )
    .await?;
    assert!(left.is_empty(), "{left:?}");

    // Credentials: none, another tenant's, and the right one.
    let config = "/v1/tenants/acme/datahub/config";
    assert_eq!(api.get(config, &[]).await?.status, 401);
    let bearer = |k: &str| format!("Bearer {k}");
    let r = api
        .get(config, &[("authorization", &bearer(&beta))])
        .await?;
    assert_eq!(r.status, 403, "{r:?}");
    let r = api.get(config, &[("authorization", &bearer(&key))]).await?;
    assert_eq!((r.status, r.body["noCode"].as_str()), (200, Some("true")));

    // A batch with one unreadable aspect: the rest is written, the bad one
    // is a dead letter naming its position.
    let urn = "urn:li:dataset:(urn:li:dataPlatform:postgres,shop.sales.returns,PROD)";
    let batch = json!({"proposals": [
        {"entityType": "dataset", "entityUrn": urn, "changeType": "UPSERT", "aspectName": "datasetProperties",
         "aspect": {"value": "{\"name\": \"returns\", \"description\": \"Returned orders\"}", "contentType": "application/json"}},
        {"entityType": "dataset", "entityUrn": urn, "changeType": "UPSERT", "aspectName": "schemaMetadata",
         "aspect": {"value": "{\"fields\": 42}", "contentType": "application/json"}},
        {"entityType": "dataset", "entityUrn": urn, "changeType": "UPSERT", "aspectName": "somethingNew",
         "aspect": {"value": "{}", "contentType": "application/json"}}
    ], "async": "true"});
    let path = "/v1/tenants/acme/datahub/aspects?action=ingestProposalBatch";
    let r = api
        .post(path, &batch, &[("authorization", &bearer(&key))])
        .await?;
    assert_eq!(
        (r.status, r.body["value"].as_str()),
        (200, Some("success")),
        "{r:?}"
    );
    let returns = names(
        &c,
        "SELECT description FROM metastore.assets WHERE tenant_id = 'acme' AND qualified_name = 'shop.sales.returns'",
    )
    .await?;
    assert_eq!(returns, set(&["Returned orders"]));
    let letters = names(
        &c,
        "SELECT reference || ': ' || error FROM lily.dead_letters WHERE source = 'datahub' AND tenant_id = 'acme'",
    )
    .await?;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = letters
        .iter()
        .next()
        .map(String::as_str)
        .unwrap_or_default();
    assert!(
        letter.starts_with("proposals[1]: schemaMetadata of urn:li:dataset"),
        "{letter}"
    );
    // Another tenant's key writes nothing into acme.
    let r = api
        .post(path, &batch, &[("authorization", &bearer(&beta))])
        .await?;
    assert_eq!(r.status, 403, "{r:?}");
    lily.stop().await?;
    Ok(())
}
