//! The API from outside: schemathesis generates requests from
//! `inbound/openapi.json` (valid ones and ones that break the schema) and
//! sends them to a running `lily run`. No answer may be a 5xx, and every
//! answer must be one the description lists, with the body it describes.

use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use lily_tests::api::ApiClient;
use lily_tests::search_server::SearchServer;
use lily_tests::{TestEnv, test_python};

/// Examples per operation and phase: enough to reach every documented
/// refusal, few enough to keep the suite within its budget.
const MAX_EXAMPLES: &str = "100";

#[tokio::test(flavor = "multi_thread")]
async fn the_api_answers_as_its_description_says() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    let base = env.enable_api()?;
    env.client()
        .await?
        .batch_execute(
            "INSERT INTO metastore.tenants (tenant_id, name) VALUES ('acme', 'Acme');
             INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name)
             VALUES ('acme', 'table', 'crm.public.customers', 'customers')",
        )
        .await?;
    let key = env.create_api_key("acme", "admin", "schemathesis")?;
    // A search cluster, so the search route is fuzzed too.
    let search = SearchServer::start().await?;
    let lily = env.spawn_lily_with(
        &["run"],
        &[
            (
                "LILY_MONTE_CARLO__SECRETS__ACME".into(),
                "mc-secret-acme".into(),
            ),
            ("LILY_SINKS__SEARCH__TYPE".into(), "elasticsearch".into()),
            ("LILY_SINKS__SEARCH__URLS".into(), search.url().to_owned()),
        ],
    )?;
    ApiClient::new(&base).wait_ready().await?;

    let schemathesis = test_python()?.with_file_name("schemathesis");
    anyhow::ensure!(
        schemathesis.exists(),
        "{} not found: run scripts/bootstrap",
        schemathesis.display()
    );
    // Every operation runs against the tenant the key belongs to, so the
    // generated requests get past authentication into the handlers.
    let config = env.dir.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        // 422 `unprocessable` is the answer to a schema-valid request that
        // names what the catalog does not hold (an asset, an asset type):
        // a valid refusal. 413: a body past `api.body_limit_bytes` is
        // refused before its schema is looked at.
        "[parameters]\n\"path.tenant\" = \"acme\"\n\
         [checks.positive_data_acceptance]\n\
         expected-statuses = [\"2xx\", 401, 403, 404, 409, 422, 429]\n\
         [checks.negative_data_rejection]\n\
         expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]\n",
    )?;
    let reports = env.dir.path().join("schemathesis-report");
    let scratch = env.dir.path().to_owned();
    let hooks = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts");
    let started = Instant::now();
    let run = tokio::task::spawn_blocking({
        let base = base.clone();
        move || {
            Command::new(&schemathesis)
                .arg("--config-file")
                .arg(&config)
                .args(["--no-color", "run"])
                .arg(format!("{base}/openapi.json"))
                .args(["--url", &base])
                .args(["--header", &format!("Authorization: Bearer {key}")])
                .args(["--checks", "all"])
                // Needs links between operations that the description does
                // not declare.
                .args([
                    "--exclude-checks",
                    "use_after_free,ensure_resource_availability",
                ])
                // The coverage phase of schemathesis 4.32.5 fails inside
                // Python (an AST recursion error) on this description.
                .args(["--phases", "examples,fuzzing"])
                // No string may hold U+0000 (the description says so; JSON
                // Schema has no short way to): generated strings do not.
                .args(["--generation-allow-x00", "false"])
                .args(["--max-examples", MAX_EXAMPLES])
                .args(["--seed", "1", "--workers", "2", "--request-timeout", "10"])
                .args(["--generation-database", "none"])
                .args(["--report", "junit", "--report-dir"])
                .arg(&reports)
                // A serializer for NDJSON (bulk uploads), imported by name.
                .env("SCHEMATHESIS_HOOKS", "schemathesis_hooks")
                .env("PYTHONPATH", &hooks)
                // It keeps a cache of crashes where it runs.
                .current_dir(&scratch)
                .output()
        }
    })
    .await?
    .context("running schemathesis")?;
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    println!(
        "schemathesis ran {:.0} s:\n{stdout}\n{stderr}",
        started.elapsed().as_secs_f64()
    );
    let server_errors = lily.output().matches("request failed").count();
    lily.stop().await?;
    assert!(
        run.status.success(),
        "schemathesis found failures:\n{stdout}\n{stderr}"
    );
    assert_eq!(server_errors, 0, "lily logged failed requests");
    Ok(())
}
