//! Pre-ingest transforms on inbound payloads, with the shipped files.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use lily_transforms::{
    CatalogState, OutputContract, TransformError, TransformRunner, TransformSet, payload_from_json,
    payload_from_values,
};

fn dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test]
async fn a_webhook_payload_becomes_incident_rows() {
    let (set, report) = TransformSet::load(dir()).await.unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let mut runner = TransformRunner::new(
        &set,
        "ingest/monte_carlo_incident",
        Arc::new(CatalogState::new(Vec::new())),
        Vec::new(),
        OutputContract::IntoTable("incidents".into()),
    )
    .await
    .unwrap();
    let schema = runner.payload_schema().expect("a payload declaration");
    // Monte Carlo's documented anomaly sample (a bare table_name inside
    // group_id), and an update without an incident id.
    let body = br#"[
        {"account": {"id": "9a59c6f1-203a-4c72-8cd7-132db7f21b92"}, "action": "incident",
         "type": "open_anomaly_incident", "version": "v0.1", "extra": {"ignored": true},
         "payload": {"incident_id": "mc-7", "group_id": "zeus:ares", "unknown": 1,
                     "url": "https://getmontecarlo.com/incidents/mc-7",
                     "event_list": [{"event_details": "Has 42 rows vs. 101 expected", "table_name": "artemis"}]}},
        {"type": "alert_update", "payload": {"url": "no id", "alert_feedback": "fixed"}}
    ]"#;
    let payload = payload_from_json(schema.clone(), body).unwrap();
    assert_eq!(payload.num_rows(), 2);
    let out = runner.run_with("payload", vec![payload]).await.unwrap();
    assert_eq!(
        out.num_rows(),
        1,
        "the row without an incident id is dropped"
    );
    let col = |name: &str| {
        out.column_by_name(name)
            .unwrap()
            .as_string::<i32>()
            .value(0)
            .to_owned()
    };
    assert_eq!(col("external_id"), "mc-7");
    assert_eq!(col("incident_type"), "anomaly");
    assert_eq!(col("title"), "anomaly on zeus.ares.artemis");
    for unchanged in ["state", "severity", "owner"] {
        assert!(
            out.column_by_name(unchanged).unwrap().is_null(0),
            "an opening leaves {unchanged} as it is"
        );
    }
    let ids = out
        .column_by_name(lily_transforms::incident_output::ASSET_FULL_TABLE_IDS)
        .unwrap()
        .as_list::<i32>()
        .value(0);
    assert_eq!(ids.as_string::<i32>().value(0), "zeus:ares.artemis");

    let err = payload_from_json(
        schema.clone(),
        br#"{"payload": {"incident_id": {"nested": 1}}}"#,
    )
    .unwrap_err();
    assert!(err.to_string().contains("incident_id"), "{err}");
    let err = payload_from_json(schema, b"not json").unwrap_err();
    assert!(matches!(err, TransformError::Payload(_)), "{err}");
}

#[tokio::test]
async fn a_pre_ingest_file_must_fit_its_target_table() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("ingest")).unwrap();
    std::fs::write(
        tmp.path().join("ingest/bad.sql"),
        "-- target: incidents\nCREATE TABLE payload (id VARCHAR);\nSELECT id AS no_such_column FROM payload\n",
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("ingest/untargeted.sql"),
        "CREATE TABLE payload (id VARCHAR);\nSELECT id FROM payload\n",
    )
    .unwrap();
    let (set, report) = TransformSet::load(tmp.path()).await.unwrap();
    assert!(set.names().is_empty());
    let errors: Vec<String> = report.errors.iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors.iter().any(|e| e.contains("bad.sql:3:1")
            && e.contains("no_such_column is not a column of metastore.incidents")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("untargeted.sql:1:1") && e.contains("-- target:")),
        "{errors:?}"
    );
}

/// The events of one Monte Carlo notification per id, numbered by `_event`.
fn notifications(ids: &[&str]) -> Vec<serde_json::Value> {
    ids.iter()
        .enumerate()
        .map(|(i, id)| {
            serde_json::json!({
                "_event": i, "type": "open_anomaly_incident", "action": "incident",
                "payload": {"incident_id": id, "url": format!("https://getmontecarlo.com/incidents/{id}"),
                            "event_list": [{"table_name": format!("dw:s.{id}_a")},
                                           {"full_table_id": format!("dw:s.{id}_b")}]}
            })
        })
        .collect()
}

/// The output's rows as text, in order.
fn printed(batch: &arrow::array::RecordBatch) -> String {
    arrow::util::pretty::pretty_format_batches(std::slice::from_ref(batch))
        .unwrap()
        .to_string()
}

/// Runs `name` of `set` on each of `payloads` with one runner, and checks
/// that each run gives what a runner made for that payload alone gives;
/// the number of rows of each run.
async fn one_plan_against_fresh_ones(
    set: &TransformSet,
    name: &str,
    payloads: &[Vec<serde_json::Value>],
) -> Vec<usize> {
    let runner = || async {
        TransformRunner::new(
            set,
            name,
            Arc::new(CatalogState::new(Vec::new())),
            Vec::new(),
            OutputContract::IntoTable("incidents".into()),
        )
        .await
        .unwrap()
    };
    let mut reused = runner().await;
    let schema = reused.payload_schema().unwrap();
    let mut counts = Vec::new();
    for values in payloads {
        let payload = || payload_from_values(schema.clone(), values).unwrap();
        let again = reused.run_with("payload", vec![payload()]).await.unwrap();
        let fresh = runner()
            .await
            .run_with("payload", vec![payload()])
            .await
            .unwrap();
        assert_eq!(printed(&again), printed(&fresh), "{values:?}");
        counts.push(again.num_rows());
    }
    counts
}

#[tokio::test]
async fn a_pre_ingest_plan_made_once_maps_payload_after_payload() {
    let (set, _) = TransformSet::load(dir()).await.unwrap();
    // Payloads of different sizes, one empty.
    let ids = [
        &["a", "b", "c"][..],
        &["d"],
        &[],
        &["e", "f"],
        &["a", "b", "c"],
    ];
    let payloads: Vec<_> = ids.iter().map(|ids| notifications(ids)).collect();
    let counts = one_plan_against_fresh_ones(&set, "ingest/monte_carlo_incident", &payloads).await;
    assert_eq!(counts, [3, 1, 0, 2, 3]);
}

#[tokio::test]
async fn a_reused_plan_with_a_join_and_a_top_k_answers_each_payload() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("ingest")).unwrap();
    // A self-join and ORDER BY ... LIMIT: the operators that keep state
    // (a hash table, a heap) or take dynamic filters.
    std::fs::write(
        tmp.path().join("ingest/top.sql"),
        "-- target: incidents\nCREATE TABLE payload (id VARCHAR, n BIGINT);\n\
         SELECT 'test' AS source_system, a.id AS external_id\n\
         FROM payload a JOIN payload b ON a.id = b.id\n\
         ORDER BY a.n DESC LIMIT 2\n",
    )
    .unwrap();
    let (set, report) = TransformSet::load(tmp.path()).await.unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let rows = [
        &[("a", 1), ("b", 5), ("c", 3)][..],
        &[("d", 9)],
        &[],
        &[("e", 2), ("f", 7), ("g", 4), ("h", 8)],
    ];
    let payloads: Vec<Vec<serde_json::Value>> = rows
        .iter()
        .map(|rows| {
            rows.iter()
                .map(|(id, n)| serde_json::json!({"id": id, "n": n}))
                .collect()
        })
        .collect();
    let counts = one_plan_against_fresh_ones(&set, "ingest/top", &payloads).await;
    assert_eq!(counts, [2, 1, 0, 2]);
}
