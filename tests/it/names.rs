//! Tenants share Kafka and the search cluster; their names there never
//! meet. `acme`, `acme_incident` and `acme-eu` get distinct topics for every
//! stream (Kafka treats `.` and `_` as the same character, so
//! `lily.acme.incident_assets` and `lily.acme_incident.assets` would clash),
//! distinct indices, and removing one tenant's indices leaves the others'.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use lily_cdc::TenantId;
use lily_tests::broker::KafkaBroker;
use lily_tests::search_server::SearchServer;
use lily_tests::{TestEnv, wait_for, wait_streaming};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(120);
const TENANTS: [&str; 3] = ["acme", "acme_incident", "acme-eu"];

/// Each tenant: one table, a tag on it, an incident naming it.
fn seed() -> String {
    let mut sql = String::new();
    for t in TENANTS {
        sql.push_str(&format!(
            "INSERT INTO metastore.tenants (tenant_id, name) VALUES ('{t}', '{t}');
             INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name)
               VALUES ('{t}', 'table', 'db.s.orders', 'orders');
             INSERT INTO metastore.classifications (tenant_id, asset_guid, tag)
               SELECT '{t}', guid, 'pii' FROM metastore.assets WHERE tenant_id = '{t}';
             INSERT INTO metastore.incidents (tenant_id, source_system, external_id, title)
               VALUES ('{t}', 'monte_carlo', 'mc-{t}', 'freshness');
             INSERT INTO metastore.incident_assets (tenant_id, incident_id, qualified_name)
               SELECT '{t}', incident_id, 'db.s.orders' FROM metastore.incidents WHERE tenant_id = '{t}';"
        ));
    }
    sql
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_with_clashing_names_get_their_own_topics_and_indices() -> anyhow::Result<()> {
    let broker = KafkaBroker::start().await?;
    let server = SearchServer::start().await?;
    let env = TestEnv::new().await?;
    env.client().await?.batch_execute(&seed()).await?;
    let lily = env.spawn_lily_with(
        &["run"],
        &[
            ("LILY_SINKS__EVENTS__TYPE".into(), "kafka".into()),
            (
                "LILY_SINKS__EVENTS__BROKERS".into(),
                broker.bootstrap_servers(),
            ),
            ("LILY_SINKS__EVENTS__PARTITIONS".into(), "1".into()),
            ("LILY_SINKS__SEARCH__TYPE".into(), "elasticsearch".into()),
            ("LILY_SINKS__SEARCH__URLS".into(), server.url().to_owned()),
            ("LILY_SINKS__SEARCH__FLUSH_INTERVAL_MS".into(), "50".into()),
        ],
    )?;
    wait_streaming(&env, "lily").await?;

    // Every stream of every tenant on a topic of its own.
    let streams = ["assets", "classifications", "incidents", "incident_assets"];
    let consumer: StreamConsumer = broker.consumer_config("names").create()?;
    consumer.subscribe(&["^lily\\..*"])?;
    let mut tenants_by_topic: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let want = TENANTS.len() * streams.len();
    let deadline = tokio::time::Instant::now() + WAIT;
    let with_streams = |m: &BTreeMap<String, BTreeSet<String>>| {
        m.keys()
            .filter(|t| streams.iter().any(|s| t.ends_with(&format!(".{s}"))))
            .count()
    };
    while with_streams(&tenants_by_topic) < want {
        let m = match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(m) => m?,
            Err(_) => anyhow::bail!(
                "topics so far: {:?}\n{}",
                tenants_by_topic.keys(),
                lily.output()
            ),
        };
        let envelope: Value = serde_json::from_slice(m.payload().unwrap_or_default())?;
        let tenant = envelope["tenant"].as_str().unwrap_or_default().to_owned();
        tenants_by_topic
            .entry(m.topic().to_owned())
            .or_default()
            .insert(tenant);
    }
    for (topic, tenants) in &tenants_by_topic {
        assert_eq!(tenants.len(), 1, "{topic} holds {tenants:?}");
    }
    for t in TENANTS {
        let segment = TenantId::parse(t)?.segment();
        for s in streams {
            let topic = format!("lily.{segment}.{s}");
            let got = tenants_by_topic.get(&topic);
            assert_eq!(
                got.and_then(|ts| ts.iter().next()).map(String::as_str),
                Some(t),
                "{topic}"
            );
        }
    }
    // No two topics are one under Kafka's rule.
    let normalised: BTreeSet<String> = tenants_by_topic
        .keys()
        .map(|t| t.replace('.', "_"))
        .collect();
    assert_eq!(normalised.len(), tenants_by_topic.len());
    assert!(tenants_by_topic.contains_key("lily.acme.incident_assets"));
    assert!(tenants_by_topic.contains_key("lily.acme0uincident.assets"));

    // One alias per tenant, holding that tenant's documents only.
    let mut aliases = BTreeMap::new();
    for t in TENANTS {
        let alias = format!("lily-{}-assets", TenantId::parse(t)?.segment());
        let docs = wait_for(&format!("{t}'s document in {alias}"), WAIT, || async {
            let docs = server.documents(&alias).await?;
            Ok((!docs.is_empty()).then_some(docs))
        })
        .await?;
        for (_, _, doc) in &docs {
            assert_eq!(doc["tenant_id"], t, "{alias}: {doc}");
        }
        aliases.insert(t, alias);
    }
    lily.stop().await?;

    // Removing acme's indices leaves acme_incident's and acme-eu's.
    let cluster = lily_sinks::elasticsearch::SearchCluster::connect(
        &lily_sinks::elasticsearch::ElasticsearchConfig {
            urls: vec![server.url().to_owned()],
            ..Default::default()
        },
    )?;
    let removed = cluster.delete_tenant(&TenantId::parse("acme")?).await?;
    assert_eq!(removed, 1);
    assert!(server.documents(&aliases["acme"]).await?.is_empty());
    for t in ["acme_incident", "acme-eu"] {
        assert_eq!(server.documents(&aliases[t]).await?.len(), 1, "{t}");
    }
    Ok(())
}
