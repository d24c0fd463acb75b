//! The Kafka sink against a real Kafka-protocol broker (tansu): every change
//! lands on `lily.<tenant>.<stream>`, keyed by the asset it is about, in
//! commit order per key, with nothing lost across a crash and a restart of
//! `lily run`. The Delta audit table, written by the same pipeline, is the
//! list of changes to find.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use lily_tests::broker::KafkaBroker;
use lily_tests::{TestEnv, wait_for, wait_streaming};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(120);

/// "16/B374D848" as a number.
fn lsn(text: &str) -> u64 {
    let (hi, lo) = text.split_once('/').unwrap_or(("0", "0"));
    (u64::from_str_radix(hi, 16).unwrap_or(0) << 32) | u64::from_str_radix(lo, 16).unwrap_or(0)
}

/// One consumed record.
struct Record {
    topic: String,
    partition: i32,
    key: String,
    envelope: Value,
}

impl Record {
    fn position(&self) -> (u64, u64) {
        (
            lsn(self.envelope["commit_lsn"].as_str().unwrap_or("0/0")),
            self.envelope["seq"].as_u64().unwrap_or(0),
        )
    }
}

async fn changes(env: &TestEnv, round: usize) -> anyhow::Result<()> {
    let db = env.client().await?;
    // The same assets change again and again: their order per key matters.
    db.batch_execute(&format!(
        "UPDATE metastore.assets SET description = 'round {round}' WHERE tenant_id = 'acme' AND name LIKE 'c%';
         INSERT INTO metastore.classifications (tenant_id, asset_guid, tag)
           SELECT tenant_id, guid, 'round-{round}' FROM metastore.assets WHERE tenant_id = 'beta';
         INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name)
           SELECT 'acme', 'column', 'db.t.new_{round}_' || i, 'n' || i FROM generate_series(1, 20) i;"
    ))
    .await?;
    db.batch_execute(&format!(
        "UPDATE metastore.assets SET description = 'round {round} again' WHERE tenant_id = 'acme' AND name LIKE 'c1%';
         DELETE FROM metastore.assets WHERE tenant_id = 'acme' AND qualified_name LIKE 'db.t.new_{round}_1%';"
    ))
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_reach_kafka_keyed_in_order_and_complete_across_a_crash() -> anyhow::Result<()> {
    let broker = KafkaBroker::start().await?;
    let env = TestEnv::new().await?;
    env.client()
        .await?
        .batch_execute(
            "INSERT INTO metastore.tenants (tenant_id, name) VALUES ('acme', 'Acme'), ('beta', 'Beta');
             INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name)
               SELECT t, 'column', 'db.t.c' || i, 'c' || i FROM generate_series(1, 40) i, unnest(ARRAY['acme', 'beta']) t;",
        )
        .await?;
    let config = env.dir.path().join("kafka.toml");
    std::fs::write(
        &config,
        format!(
            "[sinks.kafka]\ntype = \"kafka\"\nbrokers = \"{}\"\npartitions = 3\n\
             [sinks.kafka.options]\n\"linger.ms\" = \"2\"\n",
            broker.bootstrap_servers()
        ),
    )?;
    let config_arg = config.display().to_string();
    let lily = env.spawn_lily_with(&["-c", &config_arg, "run"], &[])?;
    wait_streaming(&env, "lily").await?;
    changes(&env, 1).await?;
    changes(&env, 2).await?;
    // A crash in the middle of the stream, then more changes while it is down.
    wait_for("round 2 in the lake", WAIT, || async {
        Ok((env.audit_count("after LIKE '%round 2 again%'").await? > 0).then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", lily.output()))?;
    lily.crash();
    changes(&env, 3).await?;
    let lily = env.spawn_lily_with(&["-c", &config_arg, "run"], &[])?;
    changes(&env, 4).await?;
    let want_rounds = "after LIKE '%round 4 again%'";
    wait_for("round 4 in the lake", WAIT, || async {
        Ok((env.audit_count(want_rounds).await? > 0).then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", lily.output()))?;
    lily.stop().await?;
    let want = env.audited_positions().await?;

    // Read every topic back.
    let consumer: StreamConsumer = broker.consumer_config("check").create()?;
    consumer.subscribe(&["^lily\\..*"])?;
    let mut records: Vec<Record> = Vec::new();
    let mut seen: BTreeSet<(String, u64, u64)> = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !want.is_subset(&seen) {
        let m = match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(m) => m?,
            Err(_) => {
                let missing: Vec<_> = want.difference(&seen).take(5).collect();
                anyhow::bail!(
                    "{} of {} changes never reached Kafka, e.g. {missing:?}",
                    want.difference(&seen).count(),
                    want.len()
                );
            }
        };
        let envelope: Value = serde_json::from_slice(m.payload().unwrap_or_default())?;
        let r = Record {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
            envelope,
        };
        let (l, s) = r.position();
        seen.insert((r.envelope["stream"].as_str().unwrap_or("").to_owned(), l, s));
        records.push(r);
    }
    let extra: Vec<_> = seen.difference(&want).take(5).collect();
    if !extra.is_empty() {
        let lsn = extra[0].1;
        let in_lake = env
            .query_audit(&format!("SELECT table_name, op, seq, tenant_id FROM audit WHERE commit_lsn = {lsn} ORDER BY seq"))
            .await?;
        let pretty = arrow::util::pretty::pretty_format_batches(&in_lake)?.to_string();
        let in_kafka: Vec<String> = records
            .iter()
            .filter(|r| r.position().0 == lsn)
            .map(|r| format!("{} {} {}", r.topic, r.envelope["seq"], r.envelope["op"]))
            .collect();
        panic!(
            "Kafka holds changes the lake does not: {extra:?}\nlake:\n{pretty}\nkafka: {in_kafka:#?}"
        );
    }

    // Topics, keys and envelopes.
    for r in &records {
        let e = &r.envelope;
        let tenant = e["tenant"].as_str().unwrap_or_default();
        let stream = e["stream"].as_str().unwrap_or_default();
        assert_eq!(r.topic, format!("lily.{tenant}.{stream}"), "{e}");
        assert_eq!(e["schema"], "lily.change.v1");
        let row = if e["op"] == "d" {
            &e["before"]
        } else {
            &e["after"]
        };
        let key_column = match stream {
            "assets" => "guid",
            "classifications" => "asset_guid",
            _ => continue,
        };
        assert_eq!(row[key_column].as_str(), Some(r.key.as_str()), "{e}");
        assert_eq!(row["tenant_id"].as_str(), Some(tenant), "{e}");
    }
    // Per key, in the order of its partition: the commit order, once the
    // redeliveries of the crash are dropped by (commit LSN, seq).
    let mut last: HashMap<(String, i32, String), (u64, u64)> = HashMap::new();
    let mut delivered: BTreeSet<(String, u64, u64)> = BTreeSet::new();
    let mut redelivered = 0;
    for r in &records {
        let pos = r.position();
        if !delivered.insert((r.topic.clone(), pos.0, pos.1)) {
            redelivered += 1;
            continue;
        }
        let k = (r.topic.clone(), r.partition, r.key.clone());
        if let Some(prev) = last.get(&k) {
            assert!(
                *prev < pos,
                "key {} on {}: {prev:?} came before {pos:?}",
                r.key,
                r.topic
            );
        }
        last.insert(k, pos);
    }
    let keys_per_asset: BTreeSet<_> = records
        .iter()
        .filter(|r| r.topic == "lily.acme.assets")
        .map(|r| (r.key.clone(), r.partition))
        .collect();
    let distinct_keys: BTreeSet<_> = keys_per_asset.iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys_per_asset.len(),
        distinct_keys.len(),
        "every asset's records share one partition"
    );
    eprintln!(
        "{} records, {} changes, {redelivered} redelivered after the crash",
        records.len(),
        want.len()
    );
    Ok(())
}

/// Decodes Avro values with fastavro (tests/scripts/avro_decode.py).
fn decode_avro(
    schemas: &HashMap<String, String>,
    values: &[Vec<u8>],
) -> anyhow::Result<Vec<Value>> {
    use std::io::Write;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/avro_decode.py");
    let mut child = std::process::Command::new(lily_tests::test_python()?)
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let request = serde_json::json!({
        "schemas": schemas,
        "values": values.iter().map(|v| hex_of(v)).collect::<Vec<_>>(),
    });
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdin"))?
        .write_all(request.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "fastavro: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn avro_records_decode_with_the_schemas_lily_publishes() -> anyhow::Result<()> {
    let broker = KafkaBroker::start().await?;
    let env = TestEnv::new().await?;
    env.client()
        .await?
        .batch_execute(
            "INSERT INTO metastore.tenants (tenant_id, name) VALUES ('acme', 'Acme');
             INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name, owners)
               VALUES ('acme', 'table', 'db.sales.orders', 'orders', ARRAY['ana@acme.example']),
                      ('acme', 'table', 'db.sales.returns', 'returns', '{}');",
        )
        .await?;
    let config = env.dir.path().join("kafka.toml");
    std::fs::write(
        &config,
        format!(
            "[sinks.kafka]\ntype = \"kafka\"\nbrokers = \"{}\"\nformat = \"avro\"\npartitions = 1\n",
            broker.bootstrap_servers()
        ),
    )?;
    let config_arg = config.display().to_string();
    let lily = env.spawn_lily_with(&["-c", &config_arg, "run"], &[])?;
    wait_streaming(&env, "lily").await?;
    env.client()
        .await?
        .batch_execute(
            "UPDATE metastore.assets SET description = 'Every order, in EUR' WHERE qualified_name = 'db.sales.orders';
             DELETE FROM metastore.assets WHERE qualified_name = 'db.sales.returns';",
        )
        .await?;
    wait_for("the delete in the lake", WAIT, || async {
        Ok((env.audit_count("op = 'd'").await? > 0).then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", lily.output()))?;
    lily.stop().await?;

    let consumer: StreamConsumer = broker.consumer_config("avro-check").create()?;
    consumer.subscribe(&["lily._schemas", "lily.acme.assets"])?;
    let mut schemas: HashMap<String, String> = HashMap::new();
    let mut values: Vec<(String, Vec<u8>)> = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    // The snapshot (2 rows), the update and the delete.
    while values.len() < 4 || schemas.is_empty() {
        let m = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .map_err(|_| {
                anyhow::anyhow!("{} values, {} schemas read", values.len(), schemas.len())
            })??;
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        let payload = m.payload().unwrap_or_default().to_vec();
        if m.topic() == "lily._schemas" {
            schemas.insert(key, String::from_utf8(payload)?);
        } else {
            values.push((key, payload));
        }
    }
    let payloads: Vec<Vec<u8>> = values.iter().map(|(_, p)| p.clone()).collect();
    let decoded = decode_avro(&schemas, &payloads)?;
    let ops: Vec<&str> = decoded.iter().filter_map(|d| d["op"].as_str()).collect();
    assert_eq!(ops, ["r", "r", "u", "d"], "{decoded:?}");
    for ((key, _), d) in values.iter().zip(&decoded) {
        assert_eq!(d["tenant"], "acme");
        assert_eq!(d["stream"], "assets");
        assert_eq!(d["key"].as_str(), Some(key.as_str()));
        let row = if d["op"] == "d" {
            &d["before"]
        } else {
            &d["after"]
        };
        assert_eq!(row["guid"].as_str(), Some(key.as_str()), "{d}");
    }
    let update = &decoded[2];
    assert_eq!(update["after"]["description"], "Every order, in EUR");
    assert_eq!(
        update["after"]["owners"],
        serde_json::json!(["ana@acme.example"])
    );
    let delete = &decoded[3];
    assert!(delete["after"].is_null(), "{delete}");
    assert_eq!(
        delete["before"]["tenant_id"], "acme",
        "a delete names its tenant"
    );
    Ok(())
}
