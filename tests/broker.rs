//! A real Kafka-API broker for the tests: tansu with in-memory storage, run as
//! a child process on a free loopback port. `scripts/bootstrap` installs it as
//! `tansu` next to the test venv's python.
//!
//! tansu answers a consumer group's JoinGroup only after about half the
//! member's `session.timeout.ms` (23 s with librdkafka's default of 45 s, 2 s
//! with 3 s), so consumers should use [`KafkaBroker::consumer_config`] or its
//! settings.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer};

/// How long the broker may take to accept Kafka requests.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A tansu broker on 127.0.0.1, killed on drop.
pub struct KafkaBroker {
    child: Child,
    port: u16,
    /// Holds the broker's log (`tansu.log`), removed on drop.
    dir: tempfile::TempDir,
}

impl KafkaBroker {
    /// Starts tansu on a free loopback port and waits until it answers a
    /// metadata request.
    pub async fn start() -> anyhow::Result<KafkaBroker> {
        let bin = tansu_bin()?;
        // free_port() only finds a port that was free a moment ago: try again
        // if another process took it first.
        let mut attempt = 1;
        loop {
            match Self::start_on(&bin, crate::free_port()?).await {
                Err(_) if attempt < 3 => attempt += 1,
                result => return result,
            }
        }
    }

    async fn start_on(bin: &Path, port: u16) -> anyhow::Result<KafkaBroker> {
        let dir = tempfile::Builder::new().prefix("lily-kafka-").tempdir()?;
        let log = std::fs::File::create(dir.path().join("tansu.log"))?;
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(bin)
            .arg("broker")
            .args(["--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            // An inherited RUST_LOG=info makes tansu log every request span.
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut broker = KafkaBroker { child, port, dir };
        broker
            .wait_ready()
            .await
            .with_context(|| format!("tansu on port {port}; log:\n{}", broker.log()))?;
        Ok(broker)
    }

    /// Polls until the broker prints `ready in …` and answers a metadata
    /// request, or fails at the deadline. tansu exits with status 0 when its
    /// port is taken, so a live child is checked as well as the port.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("tansu exited during startup: {status}");
            }
            if self.log().contains("ready in") {
                break;
            }
            if Instant::now() > deadline {
                bail!("tansu was not ready within {START_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let servers = self.bootstrap_servers();
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let producer: BaseProducer = ClientConfig::new()
                .set("bootstrap.servers", &servers)
                .create()?;
            producer
                .client()
                .fetch_metadata(None, left.max(Duration::from_secs(1)))
                .context("fetching metadata")?;
            Ok(())
        })
        .await??;
        if let Some(status) = self.child.try_wait()? {
            bail!("tansu exited during startup: {status}");
        }
        Ok(())
    }

    /// The broker's log so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default()
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Creates `name` with `partitions` partitions. (tansu also creates an
    /// unknown topic on first produce, with 4 partitions.)
    pub async fn create_topic(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap_servers())
            .create()?;
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = admin
            .create_topics([&topic], &opts)
            .await
            .with_context(|| format!("creating topic {name}"))?;
        for result in results {
            result.map_err(|(topic, code)| anyhow::anyhow!("creating topic {topic}: {code}"))?;
        }
        Ok(())
    }

    /// Client settings for a consumer in `group_id` that joins this broker in
    /// about 2 s, starts from the earliest offset and commits only when told to.
    pub fn consumer_config(&self, group_id: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", self.bootstrap_servers())
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "3000")
            .set("heartbeat.interval.ms", "300")
            .set("fetch.wait.max.ms", "100");
        config
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The tansu binary: `$LILY_TANSU`, else `tansu` next to the test venv's python.
fn tansu_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("LILY_TANSU") {
        return Ok(PathBuf::from(p));
    }
    let python = crate::test_python()?;
    let bin = python
        .parent()
        .context("test python has no parent folder")?
        .join("tansu");
    if !bin.exists() {
        bail!(
            "{} not found: run scripts/bootstrap to install the tansu broker",
            bin.display()
        );
    }
    Ok(bin)
}
