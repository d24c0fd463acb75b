//! `lily demo`: the whole pipeline on one machine. A private PostgreSQL
//! cluster under a local folder, the sample estate, the Delta store beside
//! it, and a stream of catalog edits printed as they flow through.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lily_config::LilyConfig;
use lily_embedded::ClusterBuilder;
use tokio::sync::watch;
use tracing::info;

use crate::pipeline;

const DATABASE: &str = "lily";
/// The sample warehouse the SQL endpoint serves.
const WAREHOUSE: &str = "warehouse";

/// How a demo edit reaches the metastore.
enum Via {
    /// Straight SQL, as any writer of the metastore.
    Sql(&'static str),
    /// The catalog API, with an API key of the demo tenant.
    Catalog {
        method: &'static str,
        path: &'static str,
        body: &'static str,
    },
    /// A Monte Carlo notification, signed with the tenant's secret and sent
    /// to the webhook; `{id}` is the incident of this round.
    MonteCarlo(&'static str),
    /// A search through the API; the hits are printed.
    Search(&'static str),
    /// A query through the SQL endpoint, as an analyst's client sends it;
    /// the rows are printed as the endpoint masks them.
    Query(&'static str),
}

/// Catalog edits the demo makes, one every few seconds, round and round.
const EDITS: &[(&str, Via)] = &[
    (
        "describe a table",
        Via::Sql(
            "UPDATE metastore.assets SET description = 'Orders placed on the web shop, edited at ' || now()::time(0) WHERE tenant_id = 'acme' AND qualified_name = 'analytics.sales.orders'",
        ),
    ),
    (
        "certify the revenue mart",
        Via::Sql(
            "UPDATE metastore.assets SET certificate = CASE WHEN certificate = 'verified' THEN 'draft' ELSE 'verified' END WHERE tenant_id = 'acme' AND qualified_name = 'analytics.marts.daily_revenue'",
        ),
    ),
    (
        "tag a column PII through the catalog API (propagates downstream through lineage)",
        Via::Catalog {
            method: "POST",
            path: "/v1/tenants/acme/classifications",
            body: r#"{"classifications": [{"qualified_name": "analytics.raw.customers.email", "tag": "PII"}]}"#,
        },
    ),
    (
        "search the catalog: columns tagged PII, directly or by propagation",
        Via::Search("/v1/tenants/acme/search?tag=PII&type=column"),
    ),
    (
        "query the warehouse through the SQL endpoint: the propagated PII tag hashes the e-mail, PCI shows a card's last four digits",
        Via::Query(
            "SELECT c.customer_id, c.email, c.country, p.card_number FROM customers c JOIN orders o ON o.customer_id = c.customer_id JOIN payments p ON p.order_id = o.order_id ORDER BY c.customer_id, p.payment_id LIMIT 2",
        ),
    ),
    (
        "Monte Carlo raises a freshness incident on orders (signed webhook)",
        Via::MonteCarlo(
            r#"{"account": {"id": "demo"}, "action": "incident", "payload": {"incident_id": "{id}", "group_id": "analytics:sales", "url": "https://getmontecarlo.com/incidents/{id}", "event_list": [{"event_details": "Has 0 new rows in the last 26 hours", "table_name": "orders"}]}, "type": "open_anomaly_incident", "version": "v0.1"}"#,
        ),
    ),
    (
        "the incident is acknowledged, marked SEV-2 and given an owner (signed webhook)",
        Via::MonteCarlo(
            r#"{"account": {"id": "demo"}, "action": "incident", "payload": {"incident_id": "{id}", "alert_feedback": "investigating", "declared_alert_severity": "SEV-2", "owner": "dana@acme.example"}, "type": "open_anomaly_incident", "version": "v0.1"}"#,
        ),
    ),
    (
        "search the catalog: assets with an open incident",
        Via::Search("/v1/tenants/acme/search?incident_state=open,acknowledged"),
    ),
    (
        "untag the column (its propagated copies go too)",
        Via::Catalog {
            method: "DELETE",
            path: "/v1/tenants/acme/classifications",
            body: r#"{"classifications": [{"qualified_name": "analytics.raw.customers.email", "tag": "PII"}]}"#,
        },
    ),
    (
        "the same query once the tag is gone: the e-mail is readable again",
        Via::Query(
            "SELECT customer_id, email, country FROM customers ORDER BY customer_id LIMIT 2",
        ),
    ),
    (
        "the incident is resolved (signed webhook)",
        Via::MonteCarlo(
            r#"{"account": {"id": "demo"}, "action": "incident", "payload": {"incident_id": "{id}", "alert_feedback": "fixed", "declared_alert_severity": "SEV-2", "owner": "dana@acme.example"}, "type": "open_anomaly_incident", "version": "v0.1"}"#,
        ),
    ),
];

/// The demo tenant's Monte Carlo webhook secret, unless one is configured.
const DEMO_SECRET: &str = "demo-monte-carlo-secret";

/// Runs the demo in `dir` until Ctrl-C; `search_server` is an osmem-server
/// binary to run as the search cluster.
pub async fn run(dir: &Path, search_server: Option<&Path>, base: LilyConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = std::fs::canonicalize(dir)?;
    println!("Lily demo in {}", dir.display());
    println!("  starting a private PostgreSQL cluster (wal_level=logical) ...");
    let cluster = ClusterBuilder::new(dir.join("postgres"))
        .start()
        .await
        .context("starting PostgreSQL")?;
    cluster.create_database(DATABASE).await?;
    cluster.create_database(WAREHOUSE).await?;
    cluster
        .connect(WAREHOUSE)
        .await?
        .batch_execute(include_str!("../sample/warehouse.sql"))
        .await
        .context("loading the sample warehouse")?;
    println!("  PostgreSQL listening on 127.0.0.1:{}", cluster.port());

    // Everything but where PostgreSQL and the lake are comes from the usual
    // config (file and LILY_* variables).
    let mut config = base;
    config.postgres.url = cluster.url(DATABASE);
    config.lake.root = dir.join("lake").display().to_string();
    config
        .monte_carlo
        .secrets
        .entry("acme".to_owned())
        .or_insert_with(|| DEMO_SECRET.to_owned());
    config
        .sql
        .connections
        .entry(WAREHOUSE.to_owned())
        .or_insert_with(|| cluster.url(WAREHOUSE));
    config
        .sql
        .tenant_sources
        .entry("acme".to_owned())
        .or_insert_with(|| WAREHOUSE.to_owned());
    // Search on this machine: an in-memory server the demo starts, unless
    // the config names a cluster.
    let mut _search = None;
    let has_search = |config: &LilyConfig| {
        config
            .sinks
            .values()
            .any(|t| t.get("type").and_then(|v| v.as_str()) == Some("elasticsearch"))
    };
    if !has_search(&config)
        && let Some(bin) = search_server
    {
        match lily_embedded::SearchServer::start(bin).await {
            Ok(server) => {
                println!("  search server (in memory) on {}", server.url());
                let mut table = toml::Table::new();
                table.insert("type".into(), "elasticsearch".into());
                table.insert("urls".into(), toml::Value::Array(vec![server.url().into()]));
                config.sinks.insert("search".into(), table);
                _search = Some(server);
            }
            Err(e) => println!("  no search: {e}"),
        }
    }
    // The written config must find the transforms from any folder.
    if let Ok(transforms) = std::fs::canonicalize(&config.transforms.dir) {
        config.transforms.dir = transforms.display().to_string();
    }
    let config_path = dir.join("lily.toml");
    std::fs::write(&config_path, config.to_toml())
        .with_context(|| format!("writing {}", config_path.display()))?;
    crate::telemetry::init_metrics(&config.metrics.listen)?;

    let report = crate::setup(&config).await?;
    println!(
        "  metastore ready: {} tables published, slot '{}'",
        report.published_tables.len(),
        config.replication.slot
    );
    let client = cluster.connect(DATABASE).await?;
    client
        .batch_execute(include_str!("../sample/estate.sql"))
        .await
        .context("loading the sample estate")?;
    println!(
        "  sample estate loaded (tenant acme); streaming it to the Delta store at {}",
        config.lake.root
    );
    println!("  Ctrl-C stops. Changes as they arrive:\n");

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut pipeline_config = config.clone();
    pipeline::add_console(&mut pipeline_config);
    let pipeline = tokio::spawn(async move { pipeline::run(&pipeline_config, shutdown_rx).await });

    let api = if config.api.listen.is_empty() {
        None
    } else {
        let key = lily_inbound::auth::ApiKeys::new(
            lily_inbound::db::Metastore::new(
                &config.postgres.url,
                1,
                &config.postgres.tenant_role,
                Duration::from_millis(config.api.pool_wait_ms),
            )?,
            Duration::ZERO,
        )
        .create(
            "acme",
            lily_inbound::auth::Role::Steward,
            "demo",
            "lily demo",
        )
        .await?;
        println!(
            "  API on http://{}: catalog edits below use API key {} (steward of acme)",
            config.api.listen, key.key_id
        );
        if !config.sql.listen.is_empty() {
            let (host, port) = config
                .sql
                .listen
                .rsplit_once(':')
                .unwrap_or(("127.0.0.1", "5433"));
            println!(
                "  SQL endpoint on {}: psql \"host={host} port={port} dbname=acme user=demo password={}\" then \\dt",
                config.sql.listen, key.key
            );
        }
        Some(DemoApi {
            base: format!("http://{}", config.api.listen),
            key: key.key,
            secret: config
                .monte_carlo
                .secrets
                .get("acme")
                .cloned()
                .unwrap_or_default(),
            http: reqwest::Client::new(),
            search: has_search(&config),
            sql: config.sql.listen.clone(),
            session: tokio::sync::Mutex::new(None),
        })
    };
    let client = Arc::new(client);
    let editor = tokio::spawn(edit_forever(client.clone(), api));
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        r = wait_for_terminate() => r?,
    }
    println!("\n  stopping ...");
    editor.abort();
    let _ = shutdown_tx.send(true);
    pipeline.await.context("pipeline task")??;
    let rows = crate::lake::count_audit_rows(&config).await.unwrap_or(0);
    println!(
        "  the audit table holds {rows} changes: {}",
        PathBuf::from(&config.lake.root)
            .join(lily_lakehouse::AUDIT_TABLE)
            .display()
    );
    println!(
        "  rerun `lily demo` to continue where it stopped; the config is {}",
        config_path.display()
    );
    drop(cluster);
    info!("demo stopped");
    Ok(())
}

async fn wait_for_terminate() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    term.recv().await;
    Ok(())
}

/// The demo's own use of the API.
struct DemoApi {
    base: String,
    key: String,
    secret: String,
    http: reqwest::Client,
    /// Whether there is a search cluster to search.
    search: bool,
    /// Where the SQL endpoint listens (empty: none).
    sql: String,
    /// The demo's SQL session, opened at its first query.
    session: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
}

impl DemoApi {
    async fn send(&self, via: &Via, round: usize) -> anyhow::Result<()> {
        let request = match via {
            Via::Sql(_) => return Ok(()),
            Via::Search(path) => return self.search(path).await,
            Via::Query(sql) => return self.query(sql).await,
            Via::Catalog { method, path, body } => self
                .http
                .request(method.parse()?, format!("{}{path}", self.base))
                .header("x-api-key", &self.key)
                .body(*body),
            Via::MonteCarlo(template) => {
                let body = template.replace("{id}", &format!("demo-{round}"));
                let form =
                    lily_inbound::signature::python_form(body.as_bytes()).unwrap_or_default();
                let signature = lily_inbound::signature::hmac_sha512_hex(
                    self.secret.as_bytes(),
                    form.as_bytes(),
                );
                self.http
                    .post(format!("{}/v1/tenants/acme/ingest/monte-carlo", self.base))
                    .header("x-mcd-signature", signature)
                    .body(body)
            }
        };
        let response = request
            .header("content-type", "application/json")
            .send()
            .await?;
        let status = response.status();
        anyhow::ensure!(
            status.is_success(),
            "HTTP {status}: {}",
            response.text().await?
        );
        Ok(())
    }
}

impl DemoApi {
    /// Runs `sql` through the SQL endpoint (one session, opened once) and
    /// prints the rows.
    async fn query(&self, sql: &str) -> anyhow::Result<()> {
        let mut session = self.session.lock().await;
        if session.is_none() {
            let (host, port) = self
                .sql
                .rsplit_once(':')
                .context("sql.listen has no port")?;
            let (client, conn) = tokio_postgres::Config::new()
                .host(host)
                .port(port.parse()?)
                .user("demo")
                .dbname("acme")
                .password(&self.key)
                .connect(tokio_postgres::NoTls)
                .await
                .context("connecting to the SQL endpoint")?;
            tokio::spawn(conn);
            *session = Some(client);
        }
        let Some(client) = session.as_ref() else {
            return Ok(());
        };
        for m in client.simple_query(sql).await? {
            if let tokio_postgres::SimpleQueryMessage::Row(row) = m {
                let values: Vec<&str> = (0..row.len())
                    .map(|i| row.get(i).unwrap_or("NULL"))
                    .collect();
                println!("  sql: {}", values.join(" | "));
            }
        }
        Ok(())
    }

    /// Prints what a search finds.
    async fn search(&self, path: &str) -> anyhow::Result<()> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .header("x-api-key", &self.key)
            .send()
            .await?;
        let status = response.status();
        let body: serde_json::Value = response.json().await?;
        anyhow::ensure!(status.is_success(), "HTTP {status}: {body}");
        let names: Vec<&str> = body["hits"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| h["qualified_name"].as_str())
            .collect();
        println!(
            "  search: {} hits: {}",
            body["total"],
            if names.is_empty() {
                "-".to_owned()
            } else {
                names.join(", ")
            }
        );
        Ok(())
    }
}

async fn edit_forever(client: Arc<tokio_postgres::Client>, api: Option<DemoApi>) {
    let mut tick = tokio::time::interval(Duration::from_secs(3));
    tick.tick().await;
    for (i, (what, via)) in EDITS.iter().cycle().enumerate() {
        tick.tick().await;
        let round = i / EDITS.len();
        let skip = match (via, &api) {
            (Via::Sql(_), _) => false,
            (Via::Search(_), Some(api)) => !api.search,
            (Via::Query(_), Some(api)) => api.sql.is_empty(),
            (_, api) => api.is_none(),
        };
        // Without the API (api.listen empty), or without search, those edits are skipped.
        if skip {
            continue;
        }
        println!("  -- {what}");
        let result = match (via, &api) {
            (Via::Sql(sql), _) => client.batch_execute(sql).await.map_err(anyhow::Error::from),
            (_, Some(api)) => api.send(via, round).await,
            (_, None) => continue,
        };
        if let Err(e) = result {
            println!("  !! {what} failed: {e:#}");
        }
    }
}
