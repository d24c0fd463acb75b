//! The integration-test harness: a private PostgreSQL cluster per test, the
//! `lily` binary as a child process, Delta tables read back with DataFusion,
//! and polling with deadlines instead of sleeps.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use arrow::array::RecordBatch;
use deltalake::datafusion::prelude::SessionContext;
use lily_config::LilyConfig;
use lily_embedded::{ClusterBuilder, PgCluster};

pub mod api;
pub mod broker;
pub mod receiver;
pub mod search_server;

/// Database the tests use.
pub const DB: &str = "lily";

/// A private cluster with a `lily` database, a lake folder and a config pointing at both.
pub struct TestEnv {
    /// The cluster (stopped on drop).
    pub cluster: PgCluster,
    /// Config for `lily` pointing at this environment.
    pub config: LilyConfig,
    /// Scratch folder (lake, logs), removed on drop.
    pub dir: tempfile::TempDir,
}

impl TestEnv {
    /// A logical-replication cluster with the metastore set up.
    pub async fn new() -> anyhow::Result<Self> {
        Self::with_settings(&[]).await
    }

    /// Same, with extra postgresql.conf settings; runs `lily setup` unless wal_level is not logical.
    pub async fn with_settings(settings: &[(&str, &str)]) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("lily-test-").tempdir()?;
        let mut builder =
            ClusterBuilder::new(dir.path().join("pg")).setting("wal_sender_timeout", "10s");
        for (k, v) in settings {
            builder = builder.setting(k, v);
        }
        let cluster = builder.start().await.context("starting PostgreSQL")?;
        cluster.create_database(DB).await?;
        let mut config = LilyConfig::default();
        config.postgres.url = cluster.url(DB);
        config.lake.root = dir.path().join("lake").display().to_string();
        config.metrics.listen = String::new();
        // Tests that use the API give it a free port (TestEnv::enable_api).
        config.api.listen = String::new();
        // Likewise the SQL endpoint (TestEnv::enable_sql).
        config.sql.listen = String::new();
        config.replication.status_interval_ms = 200;
        config.lake.flush_interval_ms = 200;
        let env = TestEnv {
            cluster,
            config,
            dir,
        };
        if !settings
            .iter()
            .any(|(k, v)| *k == "wal_level" && *v != "logical")
        {
            env.setup().await?;
        }
        Ok(env)
    }

    /// Runs `lily setup` in process.
    pub async fn setup(&self) -> anyhow::Result<lily_metastore::SetupReport> {
        let mut client = self.cluster.connect(DB).await?;
        let opts = lily_metastore::SetupOptions {
            slot: self.config.replication.slot.clone(),
            publication: self.config.replication.publication.clone(),
            tenant_role: self.config.postgres.tenant_role.clone(),
        };
        Ok(lily_metastore::setup(&mut client, &opts).await?)
    }

    /// A connection to the test database as the superuser.
    pub async fn client(&self) -> anyhow::Result<tokio_postgres::Client> {
        Ok(self.cluster.connect(DB).await?)
    }

    /// Environment variables that make `lily` use this environment.
    pub fn lily_env(&self) -> Vec<(String, String)> {
        let c = &self.config;
        vec![
            ("LILY_POSTGRES__URL".into(), c.postgres.url.clone()),
            ("LILY_LAKE__ROOT".into(), c.lake.root.clone()),
            (
                "LILY_LAKE__FLUSH_INTERVAL_MS".into(),
                c.lake.flush_interval_ms.to_string(),
            ),
            ("LILY_METRICS__LISTEN".into(), c.metrics.listen.clone()),
            ("LILY_API__LISTEN".into(), c.api.listen.clone()),
            ("LILY_SQL__LISTEN".into(), c.sql.listen.clone()),
            (
                "LILY_TRANSFORMS__DIR".into(),
                transforms_dir().display().to_string(),
            ),
            (
                "LILY_REPLICATION__STATUS_INTERVAL_MS".into(),
                c.replication.status_interval_ms.to_string(),
            ),
            (
                "LILY_REPLICATION__HEARTBEAT_INTERVAL_MS".into(),
                c.replication.heartbeat_interval_ms.to_string(),
            ),
        ]
    }

    /// Starts `lily <args>` against this environment; its output goes to a log file.
    pub fn spawn_lily(&self, args: &[&str]) -> anyhow::Result<LilyProcess> {
        self.spawn_lily_with(args, &[])
    }

    /// Same, with more `LILY_*` variables.
    pub fn spawn_lily_with(
        &self,
        args: &[&str],
        extra: &[(String, String)],
    ) -> anyhow::Result<LilyProcess> {
        let log = self
            .dir
            .path()
            .join(format!("lily-{}.log", rand::random::<u32>()));
        let mut env = self.lily_env();
        env.extend_from_slice(extra);
        LilyProcess::spawn(args, &env, &log)
    }

    /// Gives the API a free loopback port; returns its base URL.
    pub fn enable_api(&mut self) -> anyhow::Result<String> {
        let port = free_port()?;
        self.config.api.listen = format!("127.0.0.1:{port}");
        Ok(format!("http://127.0.0.1:{port}"))
    }

    /// Gives the SQL endpoint a free loopback port; returns it.
    pub fn enable_sql(&mut self) -> anyhow::Result<u16> {
        let port = free_port()?;
        self.config.sql.listen = format!("127.0.0.1:{port}");
        Ok(port)
    }

    /// Reads the audit table with DataFusion: the result of `sql` over table `audit`.
    pub async fn query_audit(&self, sql: &str) -> anyhow::Result<Vec<RecordBatch>> {
        query_delta(
            &Path::new(&self.config.lake.root).join(lily_lakehouse::AUDIT_TABLE),
            sql,
        )
        .await
    }

    /// Every (stream, commit LSN, seq) in the audit table, the stream being
    /// the table without its schema: the list of changes a sink must hold.
    pub async fn audited_positions(
        &self,
    ) -> anyhow::Result<std::collections::BTreeSet<(String, u64, u64)>> {
        use arrow::array::AsArray;
        use arrow::datatypes::Int64Type;
        let batches = self
            .query_audit("SELECT table_name, commit_lsn, seq FROM audit")
            .await?;
        let mut out = std::collections::BTreeSet::new();
        for b in &batches {
            // DataFusion may hand text back as Utf8View.
            let t = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8)?;
            let t = t.as_string::<i32>();
            let l = b.column(1).as_primitive::<Int64Type>();
            let s = b.column(2).as_primitive::<Int64Type>();
            for i in 0..b.num_rows() {
                let table = t.value(i).trim_start_matches("metastore.").to_owned();
                out.insert((table, l.value(i) as u64, s.value(i) as u64));
            }
        }
        Ok(out)
    }

    /// Creates an API key with `lily api-key create`; returns the key.
    pub fn create_api_key(&self, tenant: &str, role: &str, name: &str) -> anyhow::Result<String> {
        let (code, out) = run_lily(
            &[
                "api-key", "create", "--tenant", tenant, "--role", role, "--name", name,
            ],
            &self.lily_env(),
        )?;
        anyhow::ensure!(code == 0, "lily api-key create: {out}");
        out.lines()
            .find(|l| l.starts_with("lily_"))
            .map(|l| l.trim().to_owned())
            .context("lily api-key create printed no key")
    }

    /// Rows in the audit table (0 before it exists).
    pub async fn audit_count(&self, filter: &str) -> anyhow::Result<i64> {
        let table = Path::new(&self.config.lake.root).join(lily_lakehouse::AUDIT_TABLE);
        if !table.join("_delta_log").exists() {
            return Ok(0);
        }
        let where_ = if filter.is_empty() {
            String::new()
        } else {
            format!("WHERE {filter}")
        };
        let b = self
            .query_audit(&format!("SELECT count(*) FROM audit {where_}"))
            .await?;
        Ok(first_i64(&b))
    }
}

/// The first value of the first column, as i64.
pub fn first_i64(batches: &[RecordBatch]) -> i64 {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Int64Type;
    batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .map(|b| b.column(0).as_primitive::<Int64Type>())
        .filter(|a| !a.is_null(0))
        .map(|a| a.value(0))
        .unwrap_or(0)
}

/// Runs `sql` against the Delta table at `path`, registered as `audit`.
pub async fn query_delta(path: &Path, sql: &str) -> anyhow::Result<Vec<RecordBatch>> {
    query_delta_url(url_for(path)?, Default::default(), sql).await
}

/// Runs `sql` against the Delta table at `url` (any object store), registered as `audit`.
pub async fn query_delta_url(
    url: url::Url,
    storage_options: std::collections::HashMap<String, String>,
    sql: &str,
) -> anyhow::Result<Vec<RecordBatch>> {
    let table = deltalake::open_table_with_storage_options(url, storage_options)
        .await
        .context("opening the Delta table")?;
    let ctx = SessionContext::new();
    table.update_datafusion_session(&ctx.state())?;
    ctx.register_table("audit", table.table_provider().await?)?;
    Ok(ctx.sql(sql).await?.collect().await?)
}

fn url_for(path: &Path) -> anyhow::Result<url::Url> {
    let abs = std::fs::canonicalize(path)
        .with_context(|| format!("{} does not exist", path.display()))?;
    url::Url::from_directory_path(abs).map_err(|_| anyhow::anyhow!("bad path"))
}

/// The project's `sql-transforms` folder.
pub fn transforms_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../sql-transforms")
}

/// Polls `check` every 100 ms until it returns `Some`, or fails after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what} (last error: {last_err:?})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Path of the `lily` binary: `LILY_BIN`, or beside the test executable's folder.
pub fn lily_bin() -> PathBuf {
    if let Ok(p) = std::env::var("LILY_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/it-<hash> → target/<profile>/lily
    exe.parent()
        .and_then(Path::parent)
        .map(|d| d.join("lily"))
        .unwrap_or_else(|| PathBuf::from("lily"))
}

/// A `lily` child process.
pub struct LilyProcess {
    child: Child,
    log: PathBuf,
}

impl LilyProcess {
    /// Starts `lily` with `args` and `env`, output to `log`.
    pub fn spawn(args: &[&str], env: &[(String, String)], log: &Path) -> anyhow::Result<Self> {
        let bin = lily_bin();
        if !bin.exists() {
            bail!(
                "{} not found: build it first (cargo build -p lily) or set LILY_BIN",
                bin.display()
            );
        }
        let out = std::fs::File::create(log)?;
        let child = Command::new(&bin)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(LilyProcess {
            child,
            log: log.to_path_buf(),
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// SIGKILL and reap: a crash.
    pub fn crash(mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit; returns the exit code.
    pub async fn stop(mut self) -> anyhow::Result<i32> {
        self.signal(libc::SIGTERM);
        self.wait(Duration::from_secs(60)).await
    }

    /// Waits for the process to exit; returns its exit code.
    pub async fn wait(&mut self, timeout: Duration) -> anyhow::Result<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code().unwrap_or(-1));
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!(
                    "lily did not exit within {timeout:?}; output:\n{}",
                    self.output()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Peak resident memory (VmHWM) in bytes, while it runs.
    pub fn peak_rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }
}

impl Drop for LilyProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `lily <args>` to completion; returns (exit code, output).
pub fn run_lily(args: &[&str], env: &[(String, String)]) -> anyhow::Result<(i32, String)> {
    let out = Command::new(lily_bin())
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .output()
        .context("running lily")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.code().unwrap_or(-1), text))
}

/// The Python interpreter of the test venv (DuckDB with its delta extension).
pub fn test_python() -> anyhow::Result<PathBuf> {
    let p = std::env::var("LILY_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            let home = std::env::var("HOME").unwrap_or_default();
            PathBuf::from(home).join(".cache/lily/venv/bin/python")
        });
    if !p.exists() {
        bail!(
            "{} not found: run scripts/bootstrap to create the test venv with DuckDB",
            p.display()
        );
    }
    Ok(p)
}

/// DataHub's `datahub` command (acryl-datahub with its postgres source),
/// from its own venv (`scripts/bootstrap`): its dependencies pin versions
/// the test venv's tools do not share.
pub fn datahub_cli() -> anyhow::Result<PathBuf> {
    let p = std::env::var("LILY_TEST_DATAHUB")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            let home = std::env::var("HOME").unwrap_or_default();
            PathBuf::from(home).join(".cache/lily/datahub-venv/bin/datahub")
        });
    if !p.exists() {
        bail!(
            "{} not found: run scripts/bootstrap to install acryl-datahub",
            p.display()
        );
    }
    Ok(p)
}

/// A change reader running in this process, its batches collected.
pub struct ReaderHandle {
    /// Batches as the reader closes them.
    pub batches: tokio::sync::mpsc::Receiver<std::sync::Arc<lily_cdc::ChangeBatch>>,
    shutdown: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<lily_cdc::Result<()>>,
}

impl ReaderHandle {
    /// Starts a reader of `slot` over `publication` (no sinks: every position is confirmable).
    pub async fn start(env: &TestEnv, slot: &str, publication: &str) -> anyhow::Result<Self> {
        let params = lily_cdc::wire::ConnectParams::parse(&env.config.postgres.url)?;
        let client = std::sync::Arc::new(env.client().await?);
        let config = lily_cdc::ReaderConfig {
            slot: slot.into(),
            publication: publication.into(),
            heartbeat_interval: Duration::ZERO,
            status_interval: Duration::from_millis(200),
            ..Default::default()
        };
        let (tx, batches) = tokio::sync::mpsc::channel(64);
        let reader =
            lily_cdc::ChangeReader::new(params, client, config, lily_cdc::AckTracker::new(), tx);
        let plan = reader.plan().await?;
        let (shutdown, rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(reader.run(plan, rx));
        Ok(ReaderHandle {
            batches,
            shutdown,
            task,
        })
    }

    /// Collects batches of `table` until `rows` rows arrived.
    pub async fn collect(
        &mut self,
        table: &str,
        rows: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<RecordBatch>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::new();
        let mut n = 0;
        while n < rows {
            match tokio::time::timeout_at(deadline, self.batches.recv()).await {
                Ok(Some(b)) => {
                    if b.table.qualified_name() == table {
                        n += b.num_rows();
                        out.push(b.records.clone());
                    }
                }
                Ok(None) => {
                    let why = match (&mut self.task).await {
                        Ok(Ok(())) => "without an error".to_string(),
                        Ok(Err(e)) => format!("with: {e}"),
                        Err(e) => format!("by panic: {e}"),
                    };
                    bail!("the reader stopped after {n} of {rows} rows of {table} {why}")
                }
                Err(_) => bail!("timed out with {n} of {rows} rows of {table}"),
            }
        }
        Ok(out)
    }

    /// Stops the reader and returns its result.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        drop(self.batches);
        self.task.await??;
        Ok(())
    }
}

/// Waits until the slot's snapshot is delivered and it streams.
pub async fn wait_streaming(env: &TestEnv, slot: &str) -> anyhow::Result<()> {
    let client = env.client().await?;
    wait_for("the snapshot to complete", Duration::from_secs(60), || async {
        let row = client
            .query_opt(
                "SELECT 1 FROM lily.replication_state s JOIN pg_replication_slots r ON r.slot_name = s.slot_name \
                 WHERE s.slot_name = $1 AND s.snapshot_done AND r.active",
                &[&slot],
            )
            .await?;
        Ok(row.map(|_| ()))
    })
    .await
}

/// Runs `sql` (naming the table `{table}`) over the Delta table at `table_dir`
/// with DuckDB's delta extension, an independent reader; returns the rows.
pub fn duckdb_query(table_dir: &Path, sql: &str) -> anyhow::Result<Vec<Vec<serde_json::Value>>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/delta_query.py");
    let out = Command::new(test_python()?)
        .arg(script)
        .arg(table_dir)
        .arg(sql)
        .output()
        .context("running DuckDB")?;
    if !out.status.success() {
        bail!("DuckDB failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// A free loopback TCP port.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// GET `path` from `addr` over plain HTTP/1.0; returns the body of a 200 answer.
pub fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("GET {path}: {head}");
    }
    Ok(body.to_string())
}

/// An S3-API server (moto) on a loopback port, stopped on drop.
pub struct S3Server {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
}

impl S3Server {
    /// Starts the server and waits until it answers.
    pub async fn start() -> anyhow::Result<Self> {
        let python = test_python()?;
        let bin = python.with_file_name("moto_server");
        let port = free_port()?;
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {} (run scripts/bootstrap)", bin.display()))?;
        let server = S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let addr = format!("127.0.0.1:{port}");
        wait_for(
            "the S3 server to listen",
            Duration::from_secs(30),
            || async { Ok(std::net::TcpStream::connect(&addr).ok().map(|_| ())) },
        )
        .await?;
        Ok(server)
    }

    /// Creates a bucket.
    pub fn create_bucket(&self, name: &str) -> anyhow::Result<()> {
        use std::io::{Read, Write};
        let addr = self.endpoint.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(addr)?;
        write!(
            s,
            "PUT /{name} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n"
        )?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        if !answer.starts_with("HTTP/1.1 200") && !answer.starts_with("HTTP/1.0 200") {
            bail!(
                "creating bucket {name}: {}",
                answer.lines().next().unwrap_or_default()
            );
        }
        Ok(())
    }

    /// Object-store options that point delta-rs at this server.
    pub fn storage_options(&self) -> Vec<(String, String)> {
        [
            ("aws_endpoint_url", self.endpoint.as_str()),
            ("aws_access_key_id", "lily"),
            ("aws_secret_access_key", "lily"),
            ("aws_region", "us-east-1"),
            ("aws_allow_http", "true"),
            // One writer per table: a plain copy-and-delete commit is safe.
            ("aws_s3_allow_unsafe_rename", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
