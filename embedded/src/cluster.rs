//! A running cluster: connection details, connections, restart and stop.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;
use tracing::{debug, warn};

use crate::ClusterError;
use crate::conf;
use crate::server::{Server, StopMode};

/// The address the server listens on for TCP.
const HOST: &str = "127.0.0.1";

/// The superuser created by initdb.
const SUPERUSER: &str = "postgres";

/// A PostgreSQL server running on a private folder; stopped when dropped.
#[derive(Debug)]
pub struct PgCluster {
    server: Server,
    settings: BTreeMap<String, String>,
    keep_running: bool,
}

impl PgCluster {
    pub(crate) fn new(server: Server, settings: BTreeMap<String, String>) -> Self {
        PgCluster {
            server,
            settings,
            keep_running: false,
        }
    }

    /// The TCP port the server listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.server.port
    }

    /// The folder holding `data/`, the unix socket and `postgres.log` (absolute).
    pub fn base_dir(&self) -> &Path {
        &self.server.base
    }

    /// PGDATA: `base_dir()/data`.
    pub fn data_dir(&self) -> PathBuf {
        self.server.data_dir()
    }

    /// Host for TCP connections: always "127.0.0.1".
    pub fn host(&self) -> &str {
        HOST
    }

    /// A libpq/tokio-postgres URL: postgres://postgres@127.0.0.1:PORT/DBNAME
    pub fn url(&self, dbname: &str) -> String {
        self.url_as(SUPERUSER, dbname)
    }

    /// Same but for a given user (authentication is `trust`, so no password).
    pub fn url_as(&self, user: &str, dbname: &str) -> String {
        format!(
            "postgres://{}@{HOST}:{}/{}",
            percent_encode(user),
            self.port(),
            percent_encode(dbname)
        )
    }

    /// Connects with tokio_postgres::NoTls to `dbname` as superuser postgres; spawns the connection task on tokio.
    pub async fn connect(&self, dbname: &str) -> Result<tokio_postgres::Client, ClusterError> {
        let mut config = tokio_postgres::Config::new();
        config
            .host(HOST)
            .port(self.port())
            .user(SUPERUSER)
            .dbname(dbname)
            .connect_timeout(std::time::Duration::from_secs(10));
        let (client, connection) = config.connect(NoTls).await.map_err(ClusterError::Connect)?;
        tokio::spawn(async move {
            // Ends with an error when the server stops under it, which tests do on purpose.
            if let Err(e) = connection.await {
                debug!(error = %e, "embedded PostgreSQL connection ended");
            }
        });
        Ok(client)
    }

    /// CREATE DATABASE if it does not exist.
    pub async fn create_database(&self, name: &str) -> Result<(), ClusterError> {
        let client = self.connect("postgres").await?;
        let context = || format!("creating database {name}");
        let exists = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
            .await
            .map_err(|source| ClusterError::Query {
                context: context(),
                source,
            })?
            .is_some();
        if exists {
            return Ok(());
        }
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        match client
            .batch_execute(&format!("CREATE DATABASE {quoted}"))
            .await
        {
            Ok(()) => Ok(()),
            // Someone else created it between our check and our CREATE.
            Err(e) if e.code() == Some(&SqlState::DUPLICATE_DATABASE) => Ok(()),
            Err(source) => Err(ClusterError::Query {
                context: context(),
                source,
            }),
        }
    }

    /// Restart the server (pg_ctl restart -m fast, same options), e.g. after changing a setting that needs it.
    pub async fn restart(&self) -> Result<(), ClusterError> {
        let server = self.server.clone();
        tokio::task::spawn_blocking(move || server.start(true))
            .await
            .map_err(|e| ClusterError::Task(e.to_string()))?
    }

    /// Change settings in lily.conf (merging with the existing ones) — takes effect on restart.
    ///
    /// Settings that allow it also take effect on `SELECT pg_reload_conf()`.
    pub fn set_settings(&mut self, settings: &[(&str, &str)]) -> Result<(), ClusterError> {
        for (name, value) in settings {
            conf::validate(name, value)?;
        }
        let mut merged = self.settings.clone();
        for (name, value) in settings {
            merged.insert((*name).to_owned(), (*value).to_owned());
        }
        conf::write(&self.data_dir(), &merged, self.server.pg.run_as)?;
        self.settings = merged;
        Ok(())
    }

    /// Stop the server: pg_ctl stop -m fast -w. Idempotent.
    pub fn stop(&self) -> Result<(), ClusterError> {
        self.server.stop(StopMode::Fast)
    }

    /// Stop immediately (pg_ctl stop -m immediate); for crash-style tests.
    pub fn stop_immediate(&self) -> Result<(), ClusterError> {
        self.server.stop(StopMode::Immediate)
    }

    /// Leave the server running when this value is dropped (e.g. to inspect it after a test).
    pub fn keep_running_on_drop(&mut self, keep: bool) {
        self.keep_running = keep;
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.keep_running {
            return;
        }
        // Immediate: a fast shutdown can wait up to wal_sender_timeout for a logical
        // replication client that stopped reading, and the WAL keeps the data safe anyway.
        if let Err(e) = self.server.stop(StopMode::Immediate) {
            warn!(error = %e, base = %self.server.base.display(), "could not stop embedded PostgreSQL");
        }
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters, for URL user and path parts.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ClusterBuilder;

    /// Removes the test folder at the end, even when the test fails.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let name = format!("lily-embedded-{}-{nanos}", std::process::id());
            TempDir(std::env::temp_dir().join(name))
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    async fn show(cluster: &PgCluster, db: &str, name: &str) -> String {
        let client = cluster.connect(db).await.expect("connect");
        let row = client
            .query_one(&format!("SHOW {name}"), &[])
            .await
            .expect("SHOW");
        row.get(0)
    }

    #[test]
    fn urls_are_encoded() {
        assert_eq!(percent_encode("a b/ü"), "a%20b%2F%C3%BC");
    }

    #[tokio::test]
    async fn a_taken_fixed_port_fails_with_the_log() {
        let dir = TempDir::new();
        let taken = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind");
        let port = taken.local_addr().expect("addr").port();
        let err = ClusterBuilder::new(&dir.0)
            .port(port)
            .start()
            .await
            .expect_err("the port is taken");
        let ClusterError::Command { output, .. } = &err else {
            panic!("unexpected error: {err}");
        };
        assert!(output.contains("could not bind"), "{err}");
    }

    #[tokio::test]
    async fn an_unreachable_folder_is_reported() {
        // Only root hands the folder to another user; as anyone else the folder is ours.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let dir = TempDir::new();
        std::fs::create_dir(&dir.0).expect("mkdir");
        std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .expect("chmod");
        let err = ClusterBuilder::new(dir.0.join("cluster"))
            .start()
            .await
            .expect_err("postgres cannot traverse a 0700 root folder");
        assert!(matches!(err, ClusterError::NotAccessible { .. }), "{err}");
    }

    #[tokio::test]
    async fn starts_connects_restarts_and_stops() {
        // Declared first so it is dropped last, after the clusters have stopped.
        let dir = TempDir::new();

        let mut cluster = ClusterBuilder::new(&dir.0)
            .setting("max_wal_senders", "15")
            .setting("max_wal_senders", "12")
            .start()
            .await
            .expect("start");
        assert_eq!(show(&cluster, "postgres", "wal_level").await, "logical");
        assert_eq!(show(&cluster, "postgres", "max_wal_senders").await, "12");
        assert_eq!(
            cluster.url("lily_test"),
            format!("postgres://postgres@127.0.0.1:{}/lily_test", cluster.port())
        );

        cluster.create_database("lily_test").await.expect("create");
        cluster
            .create_database("lily_test")
            .await
            .expect("create again");

        cluster
            .set_settings(&[("max_wal_senders", "25")])
            .expect("set_settings");
        cluster.restart().await.expect("restart");
        assert_eq!(show(&cluster, "lily_test", "max_wal_senders").await, "25");
        assert_eq!(show(&cluster, "lily_test", "wal_level").await, "logical");

        // A second start on the same folder stops the running server and keeps the data.
        cluster.keep_running_on_drop(true);
        let port = cluster.port();
        let again = ClusterBuilder::new(&dir.0)
            .start()
            .await
            .expect("start over a running server");
        let client = again.connect("lily_test").await.expect("data kept");
        drop(client);
        assert!(
            tokio_postgres::connect(&cluster.url("postgres"), NoTls)
                .await
                .is_err()
                || again.port() == port,
            "the first server should have been stopped"
        );
        drop(cluster);

        again.stop().expect("stop");
        again.stop().expect("stop is idempotent");
        again.stop_immediate().expect("stop_immediate when stopped");
        assert!(!again.data_dir().join("postmaster.pid").exists());
    }
}
