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

fn event(id: usize) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "type": "new_volume_anomaly_incident",
        "payload": {
            "incident_id": format!("kafka-{id}"),
            "severity": "SEV-3",
            "event_list": [{"table_name": "analytics:sales.orders"}]
        }
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
    lily.stop().await?;
    Ok(())
}
