//! OpenLineage into the catalog, sent by OpenLineage's own Python client
//! over its HTTP transport: datasets, columns, table and column lineage,
//! tags, and the propagation the new edges drive.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use lily_tests::api::ApiClient;
use lily_tests::{TestEnv, test_python, wait_for};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

async fn names(c: &tokio_postgres::Client, sql: &str) -> anyhow::Result<BTreeSet<String>> {
    Ok(c.query(sql, &[])
        .await?
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn openlineage_events_become_assets_lineage_and_tags_that_propagate() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    let base = env.enable_api()?;
    let c = env.client().await?;
    c.batch_execute(
        "INSERT INTO metastore.tenants (tenant_id, name) VALUES ('acme', 'Acme'), ('beta', 'Beta')",
    )
    .await?;
    // Tags become classifications, which need a steward.
    let steward = env.create_api_key("acme", "steward", "openlineage")?;
    let ingest = env.create_api_key("acme", "ingest", "openlineage-ingest")?;
    let beta = env.create_api_key("beta", "steward", "beta")?;
    let lily = env.spawn_lily(&["run"])?;
    let api = ApiClient::new(&base);
    api.wait_ready().await?;

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/openlineage_emit.py");
    let tenant_base = format!("{base}/v1/tenants/acme/openlineage/");
    let out = Command::new(test_python()?)
        .arg(&script)
        .arg(&tenant_base)
        .arg(&steward)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "openlineage-python: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        lily.output()
    );

    let assets = names(
        &c,
        "SELECT qualified_name || ':' || type_name || ':' || coalesce((SELECT p.qualified_name FROM metastore.assets p WHERE p.guid = a.parent_guid), '-')
           FROM metastore.assets a WHERE tenant_id = 'acme'",
    )
    .await?;
    let want: BTreeSet<String> = [
        "etl.order_emails:process:-",
        "shop.marts.order_emails:table:-",
        "shop.marts.order_emails.email:column:shop.marts.order_emails",
        "shop.marts.order_emails.order_id:column:shop.marts.order_emails",
        "shop.public.orders:table:-",
        "shop.public.orders.id:column:shop.public.orders",
        "shop.public.orders.customer_email:column:shop.public.orders",
        "shop.public.orders.address:column:shop.public.orders",
        "shop.public.orders.address.city:column:shop.public.orders",
        // Posted by the client whose base URL had no trailing slash.
        "shop.public.customers:table:-",
        "shop.public.customers.id:column:shop.public.customers",
        "shop.public.customers.email:column:shop.public.customers",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(assets, want);
    let described = names(
        &c,
        "SELECT description FROM metastore.assets WHERE tenant_id = 'acme' AND description IS NOT NULL",
    )
    .await?;
    assert!(
        described.contains("Orders with the customer's e-mail") && described.contains("order id"),
        "{described:?}"
    );

    let edges = names(
        &c,
        "SELECT u.qualified_name || ' -> ' || d.qualified_name || ' by ' || coalesce(p.qualified_name, '-')
           FROM metastore.lineage_edges e
           JOIN metastore.assets u ON u.guid = e.upstream_guid
           JOIN metastore.assets d ON d.guid = e.downstream_guid
           LEFT JOIN metastore.assets p ON p.guid = e.process_guid
          WHERE e.tenant_id = 'acme'",
    )
    .await?;
    let want: BTreeSet<String> = [
        "shop.public.orders -> shop.marts.order_emails by etl.order_emails",
        "shop.public.orders.customer_email -> shop.marts.order_emails.email by etl.order_emails",
        "shop.public.orders.id -> shop.marts.order_emails.order_id by etl.order_emails",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(edges, want, "START and COMPLETE give each edge once");

    // The producer's PII tag is a direct classification, and propagation
    // carries it along the column lineage that arrived with it.
    let tagged = "SELECT a.qualified_name || ':' || c.source FROM metastore.classifications c
                    JOIN metastore.assets a ON a.guid = c.asset_guid
                   WHERE c.tenant_id = 'acme' AND c.tag = 'PII'";
    let want: BTreeSet<String> = [
        "shop.public.orders.customer_email:direct",
        "shop.marts.order_emails.email:propagated",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    wait_for(
        "PII to propagate along the new column lineage",
        WAIT,
        || async { Ok((names(&c, tagged).await? == want).then_some(())) },
    )
    .await?;

    // Sending the same event again adds nothing.
    let again = json!({
        "eventType": "COMPLETE", "eventTime": "2026-12-01T10:00:00Z",
        "producer": "https://example.com/lily-test",
        "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent",
        "run": {"runId": "0190a3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d"},
        "job": {"namespace": "etl", "name": "order_emails"},
        "inputs": [{"namespace": "postgres://db.example.com:5432", "name": "shop.public.orders",
                    "facets": {"tags": {"tags": [{"key": "PII", "value": "true", "field": "customer_email"}]}}}],
        "outputs": [{"namespace": "postgres://db.example.com:5432", "name": "shop.marts.order_emails"}]
    });
    let path = "/v1/tenants/acme/openlineage/api/v1/lineage";
    let bearer = |k: &str| format!("Bearer {k}");
    let r = api
        .post(path, &again, &[("authorization", &bearer(&steward))])
        .await?;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        (
            r.body["edges_added"].as_u64(),
            r.body["tags_added"].as_u64()
        ),
        (Some(0), Some(0)),
        "{r:?}"
    );
    // The transport's gzip compression is refused with a clear 415.
    let r = api
        .post(
            path,
            &again,
            &[
                ("authorization", &bearer(&steward)),
                ("content-encoding", "gzip"),
            ],
        )
        .await?;
    assert_eq!(r.status, 415, "{r:?}");
    // An ingest key records lineage but cannot classify: 403 naming the tag.
    let r = api
        .post(path, &again, &[("authorization", &bearer(&ingest))])
        .await?;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(
        r.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("inputs[0].facets.tags.tags[0]")),
        "{r:?}"
    );
    // Another tenant's key, and an event without a job or dataset.
    let r = api
        .post(path, &again, &[("authorization", &bearer(&beta))])
        .await?;
    assert_eq!(r.status, 403, "{r:?}");
    let r = api
        .post(
            path,
            &json!({"eventTime": "2026-12-01T10:00:00Z", "run": {"runId": "r"}}),
            &[("authorization", &bearer(&steward))],
        )
        .await?;
    assert_eq!(r.status, 422, "{r:?}");
    lily.stop().await?;
    Ok(())
}
