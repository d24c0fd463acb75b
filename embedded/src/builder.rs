//! Configuring and starting a cluster.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use crate::server::{Server, free_port};
use crate::{ClusterError, PgCluster, conf, process::Pg, process::chown_tree};

/// How many times a start is retried on a new port when the chosen one got taken.
const PORT_RETRIES: usize = 3;

/// Longest unix socket path (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Describes a cluster to start; see [`ClusterBuilder::start`].
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    base: PathBuf,
    settings: BTreeMap<String, String>,
    port: Option<u16>,
}

impl ClusterBuilder {
    /// base: the folder that will hold `data/` (PGDATA), the unix socket and `postgres.log`.
    ///
    /// Starts from these settings: `wal_level=logical`, `max_replication_slots=20`,
    /// `max_wal_senders=20`, `wal_sender_timeout=60s`, `shared_buffers=128MB`,
    /// `max_connections=100`, `log_min_messages=warning`, `logical_decoding_work_mem=64MB`,
    /// `unix_socket_permissions=0777`. Durability settings (fsync...) are left alone.
    pub fn new(base: impl Into<PathBuf>) -> Self {
        ClusterBuilder {
            base: base.into(),
            settings: conf::defaults(),
            port: None,
        }
    }

    /// Any postgresql.conf setting, e.g. ("wal_level","logical"). Later calls override earlier ones.
    ///
    /// `port`, `listen_addresses` and `unix_socket_directories` are given on the server's
    /// command line, which wins over this. Names and values are checked by [`Self::start`].
    pub fn setting(mut self, name: &str, value: &str) -> Self {
        self.settings.insert(name.to_owned(), value.to_owned());
        self
    }

    /// Port to listen on; default: a free loopback port chosen at start.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Creates the cluster under `base/data` unless it exists, writes the settings to
    /// `base/data/lily.conf` (included from postgresql.conf) and starts the server.
    ///
    /// An existing cluster folder is reused, data included. A server still running on it is
    /// stopped first (fast mode). When running as root, the folder is given to the `postgres`
    /// user and the commands run as that user through `runuser`.
    pub async fn start(self) -> Result<PgCluster, ClusterError> {
        // The PgCluster is built inside the task: if this future is dropped mid-way, the
        // finished task's output is dropped too, and its Drop stops the server.
        tokio::task::spawn_blocking(move || self.start_blocking())
            .await
            .map_err(|e| ClusterError::Task(e.to_string()))?
    }

    fn start_blocking(self) -> Result<PgCluster, ClusterError> {
        for (name, value) in &self.settings {
            conf::validate(name, value)?;
        }
        let pg = Pg::locate()?;
        let base = std::path::absolute(&self.base).map_err(ClusterError::io(format!(
            "resolving {}",
            self.base.display()
        )))?;
        check_base_path(&base)?;
        fs::create_dir_all(&base)
            .map_err(ClusterError::io(format!("creating {}", base.display())))?;

        let mut server = Server {
            pg,
            base,
            port: self.port.unwrap_or(0),
        };
        server.clear_leftovers()?;
        if let Some(owner) = server.pg.run_as {
            // The postgres user must traverse and write the base (socket, log, data/).
            fs::set_permissions(&server.base, fs::Permissions::from_mode(0o755))
                .map_err(ClusterError::io(format!("chmod {}", server.base.display())))?;
            chown_tree(&server.base, owner)?;
            server.pg.check_access(&server.base)?;
        }
        server.init_if_needed()?;
        let data = server.data_dir();
        conf::write(&data, &self.settings, server.pg.run_as)?;
        conf::ensure_included(&data)?;

        let mut attempt = 0;
        loop {
            if self.port.is_none() {
                server.port = free_port()?;
            }
            match server.start(false) {
                Ok(()) => break,
                Err(e)
                    if self.port.is_none() && attempt < PORT_RETRIES && server.port_taken(&e) =>
                {
                    warn!(
                        port = server.port,
                        "port taken while starting PostgreSQL; trying another"
                    );
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
        info!(base = %server.base.display(), port = server.port, "embedded PostgreSQL started");
        Ok(PgCluster::new(server, self.settings))
    }
}

/// Refuses folders PostgreSQL or pg_ctl's shell command line would choke on.
fn check_base_path(base: &Path) -> Result<(), ClusterError> {
    let bad = |reason: String| ClusterError::BadPath {
        dir: base.to_path_buf(),
        reason,
    };
    let text = base.to_str().ok_or_else(|| bad("not valid UTF-8".into()))?;
    // pg_ctl wraps -D and -l in double quotes for /bin/sh, where these keep a meaning.
    if text.contains(['"', '$', '`', '\\', '\n', '\r']) {
        return Err(bad(
            "holds one of \" $ ` \\ or a line break, which pg_ctl cannot pass through its shell"
                .into(),
        ));
    }
    // The unix socket `<base>/.s.PGSQL.<port>` must fit in sun_path.
    let socket_len = text.len() + "/.s.PGSQL.65535".len();
    if socket_len > MAX_SOCKET_PATH {
        return Err(bad(format!(
            "too long for the unix socket inside it ({socket_len} > {MAX_SOCKET_PATH} bytes); use a shorter path"
        )));
    }
    Ok(())
}
