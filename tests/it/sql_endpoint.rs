//! The SQL endpoint with the clients people run: psql, psycopg 3 (server-side
//! prepared statements, binary results), asyncpg, pgJDBC past its prepare
//! threshold, and tokio-postgres holding one session open while tags come
//! and go through the API. Governed tables are real PostgreSQL tables of a
//! second database; the audit is read back by DuckDB.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use lily_tests::api::{ApiClient, claims, hs256};
use lily_tests::{LilyProcess, TestEnv, duckdb_query, test_python, wait_for};
use serde_json::json;
use sha2::{Digest, Sha256};

const WAIT: Duration = Duration::from_secs(60);
const HS_SECRET: &str = "hs256-sql-secret";

/// A metastore with tenants acme and beta, a warehouse database with
/// customers, orders and a downstream copy of the emails, their assets and
/// lineage in acme's catalog, and `lily run` serving the API and SQL.
struct Setup {
    env: TestEnv,
    lily: LilyProcess,
    api: ApiClient,
    port: u16,
}

fn bearer(grants: &[&str]) -> anyhow::Result<String> {
    Ok(format!(
        "Bearer {}",
        hs256(HS_SECRET, &claims("tester", grants, 600))?
    ))
}

fn token(subject: &str, grants: &[&str]) -> anyhow::Result<String> {
    hs256(HS_SECRET, &claims(subject, grants, 600))
}

fn sqlstate(e: &anyhow::Error) -> Option<&tokio_postgres::error::SqlState> {
    e.downcast_ref::<tokio_postgres::Error>()
        .and_then(|e| e.code())
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

async fn start() -> anyhow::Result<Setup> {
    start_with(&[]).await
}

async fn start_with(extra: &[(String, String)]) -> anyhow::Result<Setup> {
    let mut env = TestEnv::new().await?;
    let base = env.enable_api()?;
    let port = env.enable_sql()?;
    env.cluster.create_database("warehouse").await?;
    let wh = env.cluster.connect("warehouse").await?;
    wh.batch_execute(
        "CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, email text, born date, city text);
         INSERT INTO customers
         SELECT g, 'Customer ' || g, 'user' || g || '@example.com', DATE '1970-01-01' + g * 7,
                (ARRAY['Paris', 'Lyon', 'Oslo'])[1 + g % 3]
           FROM generate_series(1, 1000) g;
         CREATE TABLE orders (id int PRIMARY KEY, customer_id int NOT NULL, amount numeric(12, 2) NOT NULL,
                              placed_at timestamptz NOT NULL);
         INSERT INTO orders
         SELECT g, 1 + g % 1000, (g % 500) + 0.99, TIMESTAMPTZ '2024-01-01 00:00:00+00' + g * interval '1 hour'
           FROM generate_series(1, 3000) g;
         CREATE TABLE customer_emails (customer_id int, email text);
         INSERT INTO customer_emails SELECT id, email FROM customers;",
    )
    .await?;
    env.client()
        .await?
        .batch_execute(
            "INSERT INTO metastore.tenants (tenant_id, name) VALUES ('acme', 'Acme'), ('beta', 'Beta')",
        )
        .await?;
    let mut vars: Vec<(String, String)> = extra.to_vec();
    vars.extend([
        ("LILY_API__API_KEY_CACHE_MS".into(), "0".into()),
        (
            "LILY_SQL__CONNECTIONS__WAREHOUSE".into(),
            env.cluster.url("warehouse"),
        ),
        ("LILY_SQL__AUDIT_FLUSH_MS".into(), "200".into()),
        ("LILY_SQL__TENANT_CONNECTIONS".into(), "4".into()),
        (
            "LILY_SQL__TENANT_SOURCES__ACME".into(),
            format!("warehouse, file://{}/", env.dir.path().display()),
        ),
        ("LILY_AUTH__JWT_HS256_SECRETS".into(), HS_SECRET.into()),
    ]);
    let lily = env.spawn_lily_with(&["run"], &vars)?;
    let api = ApiClient::new(&base);
    if let Err(e) = api.wait_ready().await {
        anyhow::bail!("{e}\n{}", lily.output());
    }
    let steward = bearer(&["acme:steward"])?;
    let auth = [("authorization", steward.as_str())];
    let mut assets = vec![
        json!({"qualified_name": "analytics", "type": "database"}),
        json!({"qualified_name": "analytics.sales", "type": "schema", "parent": "analytics"}),
        json!({"qualified_name": "analytics.marts", "type": "schema", "parent": "analytics"}),
    ];
    for (table, schema, columns) in [
        (
            "customers",
            "sales",
            &["id", "name", "email", "born", "city"][..],
        ),
        (
            "orders",
            "sales",
            &["id", "customer_id", "amount", "placed_at"][..],
        ),
        ("customer_emails", "marts", &["customer_id", "email"][..]),
    ] {
        let t = format!("analytics.{schema}.{table}");
        assets.push(
            json!({"qualified_name": t, "type": "table", "parent": format!("analytics.{schema}")}),
        );
        for c in columns {
            assets
                .push(json!({"qualified_name": format!("{t}.{c}"), "type": "column", "parent": t}));
        }
    }
    let r = api
        .post(
            "/v1/tenants/acme/assets",
            &json!({ "assets": assets }),
            &auth,
        )
        .await?;
    anyhow::ensure!(r.status == 200, "assets: {r:?}");
    let r = api
        .post(
            "/v1/tenants/acme/lineage",
            &json!({"edges": [{"upstream": "analytics.sales.customers.email", "downstream": "analytics.marts.customer_emails.email"}]}),
            &auth,
        )
        .await?;
    anyhow::ensure!(r.status == 200, "lineage: {r:?}");
    let admin = bearer(&["acme:admin"])?;
    for (table, asset) in [
        ("customers", "analytics.sales.customers"),
        ("orders", "analytics.sales.orders"),
        ("customer_emails", "analytics.marts.customer_emails"),
    ] {
        let r = api
            .put(
                &format!("/v1/tenants/acme/governed-tables/{table}"),
                &json!({"asset": asset, "kind": "postgres", "connection": "warehouse", "location": format!("public.{table}")}),
                &[("authorization", admin.as_str())],
            )
            .await?;
        anyhow::ensure!(r.status == 200, "governed table {table}: {r:?}");
    }
    let s = Setup {
        env,
        lily,
        api,
        port,
    };
    // The registrations reach the endpoint through the pipeline.
    if !extra.is_empty() {
        return Ok(s);
    }
    let viewer = token("v", &["acme:viewer"])?;
    let client = s.connect("acme", &viewer).await?;
    wait_for("the governed tables to be served", WAIT, || async {
        Ok(client
            .query_one("SELECT count(*) FROM customer_emails", &[])
            .await
            .ok()
            .map(|_| ()))
    })
    .await
    .with_context(|| s.lily.output())?;
    Ok(s)
}

impl Setup {
    async fn connect(
        &self,
        tenant: &str,
        password: &str,
    ) -> anyhow::Result<tokio_postgres::Client> {
        let (client, conn) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user("analyst")
            .dbname(tenant)
            .password(password)
            .connect_timeout(Duration::from_secs(10))
            .connect(tokio_postgres::NoTls)
            .await?;
        tokio::spawn(conn);
        Ok(client)
    }

    async fn tag(&self, column: &str, tag: &str, add: bool) -> anyhow::Result<()> {
        let steward = bearer(&["acme:steward"])?;
        let body = json!({"classifications": [{"qualified_name": column, "tag": tag}]});
        let auth = [("authorization", steward.as_str())];
        let r = if add {
            self.api
                .post("/v1/tenants/acme/classifications", &body, &auth)
                .await?
        } else {
            self.api
                .delete("/v1/tenants/acme/classifications", &body, &auth)
                .await?
        };
        anyhow::ensure!(r.status == 200, "{r:?}");
        Ok(())
    }

    fn psql(
        &self,
        tenant: &str,
        password: &str,
        args: &[&str],
    ) -> anyhow::Result<(i32, String, String)> {
        let out = Command::new("psql")
            .args([
                "-X",
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "analyst",
                "-d",
                tenant,
            ])
            .args(args)
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "10")
            .env("PGSSLMODE", "disable")
            .output()
            .context("running psql")?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// psql's unaligned, tuples-only output of `sql`.
    fn psql_rows(&self, password: &str, sql: &str) -> anyhow::Result<Vec<String>> {
        let (code, out, err) = self.psql("acme", password, &["-A", "-t", "-c", sql])?;
        anyhow::ensure!(code == 0, "psql {sql}: {err}");
        Ok(out.lines().map(str::to_owned).collect())
    }

    async fn email_of(
        client: &tokio_postgres::Client,
        table: &str,
        id: i32,
    ) -> anyhow::Result<String> {
        let key = if table == "customers" {
            "id"
        } else {
            "customer_id"
        };
        let row = client
            .query_one(
                &format!("SELECT email FROM {table} WHERE {key} = $1"),
                &[&id],
            )
            .await?;
        Ok(row.get(0))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn psql_lists_describes_masks_and_copies() -> anyhow::Result<()> {
    let s = start().await?;
    let key = s.env.create_api_key("acme", "viewer", "bi")?;

    let (code, out, err) = s.psql("acme", &key, &["-c", "\\dt"])?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("customers") && out.contains("orders"), "{out}");
    let (code, out, err) = s.psql("acme", &key, &["-c", "\\d customers"])?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("email") && out.contains("born"), "{out}");

    assert_eq!(
        s.psql_rows(&key, "SELECT email FROM customers WHERE id = 1")?,
        ["user1@example.com"]
    );
    s.tag("analytics.sales.customers.email", "PII", true)
        .await?;
    let hashed = sha256_hex("user1@example.com");
    wait_for("psql to see the email hashed", WAIT, || async {
        let rows = s.psql_rows(&key, "SELECT email FROM customers WHERE id = 1")?;
        Ok((rows == [hashed.clone()]).then_some(()))
    })
    .await?;

    // SELECT *: only the tagged column is masked.
    let rows = s.psql_rows(&key, "SELECT * FROM customers ORDER BY id LIMIT 1")?;
    assert_eq!(rows, [format!("1|Customer 1|{hashed}|1970-01-08|Lyon")]);
    // A predicate cannot find the raw value behind the mask; the hash finds the row.
    assert_eq!(
        s.psql_rows(
            &key,
            "SELECT count(*) FROM customers WHERE email = 'user1@example.com'"
        )?,
        ["0"]
    );
    assert_eq!(
        s.psql_rows(
            &key,
            &format!("SELECT id FROM customers WHERE email = '{hashed}'")
        )?,
        ["1"]
    );
    // Joins, aggregates, CTEs and subqueries see the masked value only.
    let rows = s.psql_rows(
        &key,
        "WITH c AS (SELECT id, email FROM customers)
         SELECT c.email, count(*), sum(o.amount) FROM orders o JOIN c ON c.id = o.customer_id
         GROUP BY c.email ORDER BY c.email LIMIT 3",
    )?;
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(rows.iter().all(|r| !r.contains('@')), "{rows:?}");
    assert_eq!(
        s.psql_rows(
            &key,
            "SELECT count(*) FROM (SELECT email FROM customers) x WHERE x.email LIKE '%@%'"
        )?,
        ["0"]
    );
    assert_eq!(
        s.psql_rows(&key, "SELECT max(email) LIKE '%@%' FROM customers")?,
        ["f"]
    );

    let file = s.env.dir.path().join("emails.csv");
    let (code, _, err) = s.psql(
        "acme",
        &key,
        &[
            "-c",
            &format!(
                "\\copy (SELECT id, email FROM customers ORDER BY id) TO '{}' WITH (FORMAT csv)",
                file.display()
            ),
        ],
    )?;
    assert_eq!(code, 0, "{err}");
    let copied = std::fs::read_to_string(&file)?;
    assert_eq!(copied.lines().count(), 1000);
    assert!(
        copied.lines().all(|l| l
            .split(',')
            .nth(1)
            .is_some_and(|e| e.len() == 64 && !e.contains('@'))),
        "{copied:.300}"
    );

    // Read-only: no writes, no server files or settings, no plans.
    for sql in [
        "CREATE TABLE x AS SELECT 1",
        "WITH c AS (SELECT 1) INSERT INTO customers SELECT * FROM c",
        "COPY (SELECT email FROM customers) TO '/tmp/leak.csv'",
        "SET datafusion.runtime.temp_directory = '/tmp'",
        "EXPLAIN VERBOSE SELECT email FROM customers",
    ] {
        let (code, _, err) = s.psql("acme", &key, &["-v", "VERBOSITY=verbose", "-c", sql])?;
        assert_ne!(code, 0, "{sql} ran");
        assert!(err.contains("25006"), "{sql}: {err}");
    }
    assert!(!Path::new("/tmp/leak.csv").exists());

    // A wrong password is an error with its SQLSTATE, promptly.
    let started = Instant::now();
    let (code, _, err) = s.psql("acme", "lily_nokey_wrong", &["-c", "SELECT 1"])?;
    assert_ne!(code, 0);
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // An ingest key reads nothing; another tenant's key does not open acme.
    let ingest = s.env.create_api_key("acme", "ingest", "loader")?;
    let (code, _, err) = s.psql("acme", &ingest, &["-c", "SELECT 1"])?;
    assert_ne!(code, 0);
    assert!(err.contains("no role that reads"), "{err}");
    let beta = s.env.create_api_key("beta", "viewer", "bi")?;
    let (code, _, err) = s.psql("acme", &beta, &["-c", "SELECT 1"])?;
    assert_ne!(code, 0);
    assert!(err.contains("no role that reads"), "{err}");
    let (code, out, err) = s.psql("beta", &beta, &["-c", "\\dt"])?;
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("customers"), "{out}");
    let (code, _, err) = s.psql("beta", &beta, &["-c", "SELECT * FROM customers"])?;
    assert_ne!(code, 0, "tenant beta reads acme's table");
    assert!(err.contains("customers"), "{err}");

    // Every statement on governed data is in audit/queries, with its masks.
    let table = Path::new(&s.env.config.lake.root).join(lily_lakehouse::QUERY_AUDIT_TABLE);
    let rows = wait_for("the statements in audit/queries", WAIT, || async {
        if !table.join("_delta_log").exists() {
            return Ok(None);
        }
        let rows = duckdb_query(
            &table,
            "SELECT sql, rows, array_to_string(masks, ' '), policy_version, subject, status
               FROM {table} WHERE tenant_id = 'acme' AND sql LIKE '%\\copy%' OR sql LIKE 'COPY%' OR sql LIKE '%ORDER BY id)%'",
        )?;
        Ok((!rows.is_empty()).then_some(rows))
    })
    .await;
    let rows = match rows {
        Ok(r) => r,
        Err(_) => duckdb_query(
            &table,
            "SELECT sql, rows, array_to_string(masks, ' ') FROM {table}",
        )?,
    };
    assert!(
        rows.iter().any(|r| r[1] == json!(1000)
            && r[2]
                .as_str()
                .is_some_and(|m| m.contains("customers.email=MASK_HASH(pii)"))),
        "{rows:?}"
    );
    let all = duckdb_query(
        &table,
        "SELECT count(*), count(*) FILTER (WHERE array_to_string(masks, ' ') LIKE '%MASK_HASH%'),
                count(DISTINCT tenant_id)
           FROM {table}",
    )?;
    assert!(all[0][0].as_i64().unwrap_or(0) >= 8, "{all:?}");
    assert!(all[0][1].as_i64().unwrap_or(0) >= 6, "{all:?}");
    s.lily.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_open_session_sees_a_tag_at_its_next_statement() -> anyhow::Result<()> {
    let s = start().await?;
    let viewer = s
        .connect("acme", &token("viewer@acme", &["acme:viewer"])?)
        .await?;
    let reader = s
        .connect(
            "acme",
            &token("reader@acme", &["acme:viewer", "acme:pii_reader"])?,
        )
        .await?;
    let raw = "user7@example.com".to_owned();
    let hashed = sha256_hex(&raw);
    assert_eq!(Setup::email_of(&viewer, "customers", 7).await?, raw);
    assert_eq!(Setup::email_of(&viewer, "customer_emails", 7).await?, raw);

    // The upstream column is tagged: it and, once propagation commits, the
    // downstream column are masked for the open session, not for pii_reader.
    s.tag("analytics.sales.customers.email", "PII", true)
        .await?;
    wait_for("the open session to see the tag", WAIT, || async {
        Ok((Setup::email_of(&viewer, "customers", 7).await? == hashed).then_some(()))
    })
    .await?;
    wait_for(
        "the propagated tag to mask the downstream table",
        WAIT,
        || async {
            Ok((Setup::email_of(&viewer, "customer_emails", 7).await? == hashed).then_some(()))
        },
    )
    .await?;
    assert_eq!(Setup::email_of(&reader, "customers", 7).await?, raw);
    assert_eq!(Setup::email_of(&reader, "customer_emails", 7).await?, raw);

    // A second tag whose policy is stricter wins on the column.
    let steward = bearer(&["acme:steward"])?;
    let r = s
        .api
        .put(
            "/v1/tenants/acme/masking-policies/cities",
            &json!({"tags": ["LOCATION"], "mask": "MASK_SHOW_FIRST_4"}),
            &[("authorization", steward.as_str())],
        )
        .await?;
    assert_eq!(r.status, 200, "{r:?}");
    s.tag("analytics.sales.customers.city", "LOCATION", true)
        .await?;
    let city = |id: i32| {
        let viewer = &viewer;
        async move {
            let row = viewer
                .query_one("SELECT city FROM customers WHERE id = $1", &[&id])
                .await?;
            anyhow::Ok(row.get::<_, String>(0))
        }
    };
    wait_for("the city to show its first four letters", WAIT, || async {
        Ok((city(9).await? == "Parix").then_some(()))
    })
    .await?;
    s.tag("analytics.sales.customers.city", "PII", true).await?;
    wait_for("PII's hash to win over the partial mask", WAIT, || async {
        Ok((city(9).await? == sha256_hex("Paris")).then_some(()))
    })
    .await?;

    // Untagged: the raw values return at the next statement.
    s.tag("analytics.sales.customers.email", "PII", false)
        .await?;
    wait_for("the raw email to return", WAIT, || async {
        Ok((Setup::email_of(&viewer, "customers", 7).await? == raw
            && Setup::email_of(&viewer, "customer_emails", 7).await? == raw)
            .then_some(()))
    })
    .await?;

    // Tenant beta's session sees none of acme's tables.
    let beta = s
        .connect("beta", &token("viewer@beta", &["beta:viewer"])?)
        .await?;
    let e = beta
        .query_one("SELECT count(*) FROM customers", &[])
        .await
        .expect_err("beta reads acme's customers");
    let message = e
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    assert!(message.contains("customers"), "{e:?}");
    let e = s
        .connect("acme", &token("viewer@beta", &["beta:viewer"])?)
        .await
        .expect_err("a beta token opens acme");
    assert_eq!(
        sqlstate(&e),
        Some(&tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
        "{e}"
    );
    let e = s
        .connect("acme", "not-a-token")
        .await
        .expect_err("a bad token opens a session");
    assert_eq!(
        sqlstate(&e),
        Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD),
        "{e}"
    );
    // A session opened with an API key ends when the key is revoked: its
    // next statement after the revocation is refused, and so is a new login.
    let admin = bearer(&["acme:admin"])?;
    let r = s
        .api
        .post(
            "/v1/tenants/acme/api-keys",
            &json!({"role": "viewer", "name": "bi-tool"}),
            &[("authorization", admin.as_str())],
        )
        .await?;
    anyhow::ensure!(r.status == 200, "key: {r:?}");
    let key = r.body["key"].as_str().unwrap_or_default().to_owned();
    let key_id = r.body["key_id"].as_str().unwrap_or_default().to_owned();
    let keyed = s.connect("acme", &key).await?;
    keyed.simple_query("SELECT count(*) FROM orders").await?;
    let r = s
        .api
        .delete(
            &format!("/v1/tenants/acme/api-keys/{key_id}"),
            &json!({}),
            &[("authorization", admin.as_str())],
        )
        .await?;
    anyhow::ensure!(r.status == 200, "revoke: {r:?}");
    let e = keyed
        .simple_query("SELECT count(*) FROM orders")
        .await
        .map_err(anyhow::Error::from)
        .expect_err("a revoked key still reads");
    assert_eq!(
        sqlstate(&e),
        Some(&tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
        "{e}"
    );
    // FATAL ends the connection, as in PostgreSQL.
    assert!(
        keyed.simple_query("SELECT 1").await.is_err(),
        "the ended session runs a statement"
    );
    drop(keyed);
    let e = s
        .connect("acme", &key)
        .await
        .expect_err("a revoked key opens a session");
    assert_eq!(
        sqlstate(&e),
        Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD),
        "{e}"
    );

    // One tenant cannot hold every connection: acme's fifth is refused
    // with 53300, beta still connects.
    let mut held = Vec::new();
    let refused = loop {
        match s
            .connect("acme", &token("many@acme", &["acme:viewer"])?)
            .await
        {
            Ok(c) => held.push(c),
            Err(e) => break e,
        }
        anyhow::ensure!(held.len() <= 4, "more than sql.tenant_connections sessions");
    };
    assert_eq!(
        sqlstate(&refused),
        Some(&tokio_postgres::error::SqlState::TOO_MANY_CONNECTIONS),
        "{refused:?}"
    );
    let other = s
        .connect("beta", &token("viewer@beta", &["beta:viewer"])?)
        .await?;
    other.simple_query("SELECT 1").await?;
    s.lily.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn python_and_jdbc_clients_prepare_and_read_binary() -> anyhow::Result<()> {
    let s = start().await?;
    let viewer = token("viewer@acme", &["acme:viewer"])?;
    s.tag("analytics.sales.customers.email", "PII", true)
        .await?;
    let client = s.connect("acme", &viewer).await?;
    wait_for("the email to be masked", WAIT, || async {
        Ok(
            (Setup::email_of(&client, "customers", 1).await? == sha256_hex("user1@example.com"))
                .then_some(()),
        )
    })
    .await?;

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/sql_clients.py");
    let out = Command::new(test_python()?)
        .arg(&script)
        .arg(s.port.to_string())
        .arg(&viewer)
        .output()
        .context("running the Python clients")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("psycopg ok"), "{text}");
    assert!(text.contains("asyncpg ok"), "{text}");

    // pgJDBC switches to server-prepared statements and binary transfer
    // after prepareThreshold (5) executions.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/jdbc/SqlEndpointCheck.java");
    let classes = s.env.dir.path().join("jdbc");
    std::fs::create_dir_all(&classes)?;
    let jar = "/usr/share/java/postgresql.jar";
    let javac = Command::new("javac")
        .args(["-cp", jar, "-d"])
        .arg(&classes)
        .arg(&src)
        .output()
        .context("running javac")?;
    assert!(
        javac.status.success(),
        "{}",
        String::from_utf8_lossy(&javac.stderr)
    );
    let out = Command::new("java")
        .arg("-cp")
        .arg(format!("{}:{jar}", classes.display()))
        .arg("SqlEndpointCheck")
        .arg(format!(
            "jdbc:postgresql://127.0.0.1:{}/acme?sslmode=disable",
            s.port
        ))
        .arg(&viewer)
        .output()
        .context("running java")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("jdbc ok"), "{text}");
    s.lily.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn delta_and_parquet_tables_are_governed_too() -> anyhow::Result<()> {
    use deltalake::datafusion::dataframe::DataFrameWriteOptions;
    use deltalake::datafusion::prelude::SessionContext;

    let s = start().await?;
    let viewer = token("viewer@acme", &["acme:viewer"])?;
    let client = s.connect("acme", &viewer).await?;
    // A statement on governed data, so the Delta table audit/queries exists.
    client
        .query_one("SELECT count(*) FROM customers", &[])
        .await?;
    let audit = Path::new(&s.env.config.lake.root).join(lily_lakehouse::QUERY_AUDIT_TABLE);
    wait_for("audit/queries to exist", WAIT, || async {
        Ok(audit.join("_delta_log").exists().then_some(()))
    })
    .await?;
    // Parquet files written by DataFusion.
    let exports = s.env.dir.path().join("exports");
    std::fs::create_dir_all(&exports)?;
    SessionContext::new()
        .sql("SELECT 1 AS id, 'ada@example.com' AS email UNION ALL SELECT 2, 'bob@example.com'")
        .await?
        .write_parquet(
            exports.join("part-0.parquet").to_str().unwrap_or_default(),
            DataFrameWriteOptions::new(),
            None,
        )
        .await?;

    let steward = bearer(&["acme:steward"])?;
    let auth = [("authorization", steward.as_str())];
    let r = s
        .api
        .post(
            "/v1/tenants/acme/assets",
            &json!({"assets": [
                {"qualified_name": "lake", "type": "database"},
                {"qualified_name": "lake.audit", "type": "schema", "parent": "lake"},
                {"qualified_name": "lake.audit.queries", "type": "table", "parent": "lake.audit"},
                {"qualified_name": "lake.audit.queries.user_name", "type": "column", "parent": "lake.audit.queries"},
                {"qualified_name": "lake.audit.exports", "type": "table", "parent": "lake.audit"},
                {"qualified_name": "lake.audit.exports.email", "type": "column", "parent": "lake.audit.exports"}
            ]}),
            &auth,
        )
        .await?;
    assert_eq!(r.status, 200, "{r:?}");
    let admin = bearer(&["acme:admin"])?;
    let url = |p: &Path| url::Url::from_directory_path(p).map(|u| u.to_string());
    for (table, body) in [
        (
            "query_audit",
            json!({"asset": "lake.audit.queries", "kind": "delta", "location": url(&audit).map_err(|_| anyhow::anyhow!("path"))?}),
        ),
        (
            "exports",
            json!({"asset": "lake.audit.exports", "kind": "parquet", "location": url(&exports).map_err(|_| anyhow::anyhow!("path"))?}),
        ),
    ] {
        let r = s
            .api
            .put(
                &format!("/v1/tenants/acme/governed-tables/{table}"),
                &body,
                &[("authorization", admin.as_str())],
            )
            .await?;
        assert_eq!(r.status, 200, "{r:?}");
    }
    // Only what sql.tenant_sources grants the tenant: not the server's
    // files, not another tenant's connection.
    for (tenant, body) in [
        (
            "acme",
            json!({"asset": "x", "kind": "parquet", "location": "file:///etc/"}),
        ),
        (
            "acme",
            json!({"asset": "x", "kind": "delta", "location": format!("file://{}/../../etc/", s.env.dir.path().display())}),
        ),
        (
            "beta",
            json!({"asset": "x", "kind": "postgres", "connection": "warehouse", "location": "public.customers"}),
        ),
    ] {
        let token = bearer(&[&format!("{tenant}:admin")])?;
        let r = s
            .api
            .put(
                &format!("/v1/tenants/{tenant}/governed-tables/sneaky"),
                &body,
                &[("authorization", token.as_str())],
            )
            .await?;
        assert_eq!(
            (r.status, r.error()),
            (422, "unprocessable"),
            "{body}: {r:?}"
        );
        assert!(
            r.body["message"]
                .as_str()
                .unwrap_or("")
                .contains("sql.tenant_sources"),
            "{r:?}"
        );
    }
    // A postgres table needs a configured connection; the schema says so.
    let r = s
        .api
        .put(
            "/v1/tenants/acme/governed-tables/nowhere",
            &json!({"asset": "x", "kind": "postgres", "location": "public.x"}),
            &[("authorization", admin.as_str())],
        )
        .await?;
    assert_eq!(r.status, 422, "{r:?}");
    s.tag("lake.audit.queries.user_name", "PII", true).await?;
    s.tag("lake.audit.exports.email", "GDPR", true).await?;
    wait_for("the Delta table served masked", WAIT, || async {
        let rows = client
            .query("SELECT DISTINCT user_name FROM query_audit", &[])
            .await;
        Ok(rows.ok().and_then(|rows| {
            let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            (!names.is_empty() && names.iter().all(|n| *n == sha256_hex("analyst"))).then_some(())
        }))
    })
    .await?;
    wait_for("the Parquet files served masked", WAIT, || async {
        let rows = client
            .query("SELECT email FROM exports ORDER BY id", &[])
            .await;
        Ok(rows.ok().and_then(|rows| {
            let emails: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            (emails == [sha256_hex("ada@example.com"), sha256_hex("bob@example.com")]).then_some(())
        }))
    })
    .await?;
    s.lily.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_certificate_the_endpoint_requires_tls() -> anyhow::Result<()> {
    let certs = tempfile::tempdir()?;
    crate::tls::certificates(certs.path())?;
    let file = |n: &str| certs.path().join(n).display().to_string();
    let s = start_with(&[
        ("LILY_SQL__TLS_CERT_FILE".into(), file("server.crt")),
        ("LILY_SQL__TLS_KEY_FILE".into(), file("server.key")),
    ])
    .await?;
    let key = s.env.create_api_key("acme", "viewer", "bi")?;
    let psql = |mode: &str| {
        Command::new("psql")
            .args(["-X", "-A", "-t", "-c", "SELECT count(*) FROM customers"])
            .arg(format!(
                "host=127.0.0.1 port={} dbname=acme user=analyst sslmode={mode} sslrootcert={}",
                s.port,
                file("ca.crt")
            ))
            .env("PGPASSWORD", &key)
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
    };
    let rows = wait_for("a verified TLS session to read customers", WAIT, || async {
        let out = psql("verify-full")?;
        Ok(out
            .status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned()))
    })
    .await?;
    assert_eq!(rows, "1000");
    let out = psql("disable")?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("requires TLS"), "{err}");
    s.lily.stop().await?;
    Ok(())
}
