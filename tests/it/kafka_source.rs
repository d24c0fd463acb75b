//! The Kafka source against a real Kafka-protocol broker (tansu): Monte
//! Carlo events land exactly once across a restart of `lily run`, bad
//! messages become dead letters without blocking the partition.

use std::time::Duration;

use lily_tests::broker::KafkaBroker;
use lily_tests::{TestEnv, free_port, http_get, wait_for};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(90);
const TOPIC: &str = "monte-carlo.acme";

/// An opening in Monte Carlo's documented shape, its table named by full
/// table id.
fn event(id: usize) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "account": {"id": "9a59c6f1-203a-4c72-8cd7-132db7f21b92"},
        "action": "incident",
        "payload": {
            "incident_id": format!("kafka-{id}"),
            "url": format!("https://getmontecarlo.com/incidents/kafka-{id}"),
            "event_list": [{"event_details": "Has 0 rows", "table_name": "orders", "full_table_id": "analytics:sales.orders"}]
        },
        "type": "open_anomaly_incident",
        "version": "v0.1"
    }))
    .expect("JSON")
}

/// An alert update of incident `id` with `fields` in its payload.
fn update(id: usize, fields: serde_json::Value) -> Vec<u8> {
    let mut payload = json!({"incident_id": format!("kafka-{id}")});
    if let (Some(p), serde_json::Value::Object(extra)) = (payload.as_object_mut(), fields) {
        p.extend(extra);
    }
    serde_json::to_vec(&json!({
        "account": {"id": "9a59c6f1-203a-4c72-8cd7-132db7f21b92"},
        "action": "incident",
        "payload": payload,
        "type": "open_anomaly_incident",
        "version": "v0.1"
    }))
    .expect("JSON")
}

async fn produce(producer: &FutureProducer, payloads: &[Vec<u8>]) -> anyhow::Result<()> {
    for (i, p) in payloads.iter().enumerate() {
        let key = format!("k{i}");
        producer
            .send(
                FutureRecord::to(TOPIC).payload(p).key(&key),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| anyhow::anyhow!("producing: {e}"))?;
    }
    Ok(())
}

fn written_counter(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("lily_kafka_source_events_total") && l.contains("outcome=\"written\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_events_land_exactly_once_across_a_restart() -> anyhow::Result<()> {
    let broker = KafkaBroker::start().await?;
    broker.create_topic(TOPIC, 3).await?;
    let env = TestEnv::new().await?;
    env.client()
        .await?
        .batch_execute(
            "INSERT INTO metastore.tenants (tenant_id, name) VALUES ('acme', 'Acme');
             INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name)
             VALUES ('acme', 'table', 'analytics.sales.orders', 'orders')",
        )
        .await?;
    // Topic names and librdkafka options have dots: a config file, not env.
    let config = env.dir.path().join("kafka.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka_source]\nbrokers = \"{}\"\ngroup_id = \"lily-test\"\n\
             [kafka_source.topics]\n\"{TOPIC}\" = \"acme\"\n\
             [kafka_source.options]\n\"session.timeout.ms\" = \"3000\"\n\"heartbeat.interval.ms\" = \"300\"\n\"fetch.wait.max.ms\" = \"100\"\n",
            broker.bootstrap_servers()
        ),
    )?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap_servers())
        .set("linger.ms", "0")
        .create()?;

    let mut first: Vec<Vec<u8>> = (0..20).map(event).collect();
    first.insert(5, b"{not json".to_vec());
    first.insert(
        12,
        serde_json::to_vec(&json!({"type": "x", "payload": {}}))?,
    );
    produce(&producer, &first).await?;

    let incidents = || async {
        let n: i64 = env
            .client()
            .await?
            .query_one(
                "SELECT count(*) FROM metastore.incidents WHERE external_id LIKE 'kafka-%'",
                &[],
            )
            .await?
            .get(0);
        anyhow::Ok(n)
    };
    let metrics = format!("127.0.0.1:{}", free_port()?);
    let extra = [("LILY_METRICS__LISTEN".to_owned(), metrics.clone())];
    let config_arg = config.display().to_string();
    let lily = env.spawn_lily_with(&["-c", &config_arg, "run"], &extra)?;
    let landed = wait_for("20 incidents from Kafka", WAIT, || async {
        Ok((incidents().await? == 20).then_some(()))
    })
    .await;
    if let Err(e) = landed {
        anyhow::bail!("{e}\n{}", lily.output());
    }
    let dead: i64 = env
        .client()
        .await?
        .query_one("SELECT count(*) FROM lily.dead_letters WHERE source = 'kafka_source' AND tenant_id = 'acme'", &[])
        .await?
        .get(0);
    assert_eq!(
        dead, 2,
        "the malformed and the schema-breaking message are dead letters"
    );
    assert_eq!(written_counter(&http_get(&metrics, "/metrics")?), 20.0);
    lily.stop().await?;

    // While it is down: 10 new events and 5 repeats of earlier ones.
    let mut second: Vec<Vec<u8>> = (20..30).map(event).collect();
    second.extend((0..5).map(event));
    produce(&producer, &second).await?;
    let lily = env.spawn_lily_with(&["-c", &config_arg, "run"], &extra)?;
    let resumed = wait_for("the 15 newer messages to be consumed", WAIT, || async {
        let written = http_get(&metrics, "/metrics")
            .map(|m| written_counter(&m))
            .unwrap_or(0.0);
        Ok((written >= 15.0).then_some(written))
    })
    .await;
    let written = match resumed {
        Ok(w) => w,
        Err(e) => anyhow::bail!("{e}\n{}", lily.output()),
    };
    // Committed offsets held: the first 20 were not consumed again.
    assert_eq!(
        written, 15.0,
        "only the messages after the committed offsets"
    );
    assert_eq!(incidents().await?, 30);
    let max_version: i64 = env
        .client()
        .await?
        .query_one("SELECT max(version) FROM metastore.incidents", &[])
        .await?
        .get(0);
    assert_eq!(max_version, 1, "a repeated event changes nothing");
    let linked: i64 = env
        .client()
        .await?
        .query_one(
            "SELECT count(*) FROM metastore.incident_assets
              WHERE qualified_name = 'analytics.sales.orders' AND asset_guid IS NOT NULL AND match_rule = 'full_table_id'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(linked, 30, "every incident is linked by its full table id");

    // Alert updates over Kafka, in order on one key: acknowledged, marked
    // SEV-1 with an owner, resolved as fixed; then the acknowledgement again.
    let updates = [
        update(0, json!({"alert_feedback": "investigating"})),
        update(
            0,
            json!({"alert_feedback": "investigating", "declared_alert_severity": "SEV-1", "owner": "dana@acme.example"}),
        ),
        update(0, json!({"alert_feedback": "fixed"})),
        update(0, json!({"alert_feedback": "investigating"})),
    ];
    for u in &updates {
        producer
            .send(
                FutureRecord::to(TOPIC).payload(u).key("kafka-0"),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| anyhow::anyhow!("producing: {e}"))?;
    }
    let applied = wait_for("the four updates to be consumed", WAIT, || async {
        let written = http_get(&metrics, "/metrics")
            .map(|m| written_counter(&m))
            .unwrap_or(0.0);
        Ok((written >= 19.0).then_some(()))
    })
    .await;
    if let Err(e) = applied {
        anyhow::bail!("{e}\n{}", lily.output());
    }
    let row = env
        .client()
        .await?
        .query_one(
            "SELECT state, source_status, severity, owner, title FROM metastore.incidents WHERE external_id = 'kafka-0'",
            &[],
        )
        .await?;
    assert_eq!(
        (
            row.get::<_, String>(0),
            row.get::<_, Option<String>>(1),
            row.get::<_, Option<String>>(2),
            row.get::<_, Option<String>>(3),
            row.get::<_, Option<String>>(4),
        ),
        (
            "resolved".to_owned(),
            Some("fixed".to_owned()),
            Some("SEV-1".to_owned()),
            Some("dana@acme.example".to_owned()),
            Some("anomaly on analytics.sales.orders".to_owned()),
        ),
        "a repeated acknowledgement does not reopen it"
    );
    lily.stop().await?;
    Ok(())
}
