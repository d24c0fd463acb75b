//! The blocking `pg_ctl` work on one cluster folder: start, restart, stop, leftovers.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use crate::ClusterError;
use crate::process::{Pg, run};

/// How long pg_ctl waits for the server to start or stop, in seconds.
const WAIT_SECS: &str = "60";

/// How many lines of `postgres.log` go into a start failure.
const LOG_TAIL_LINES: usize = 20;

/// `pg_ctl stop` modes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum StopMode {
    /// Disconnect clients, checkpoint, exit.
    Fast,
    /// Exit at once; the next start runs crash recovery.
    Immediate,
}

impl StopMode {
    fn as_str(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// One cluster folder and the port its server listens on.
#[derive(Debug, Clone)]
pub(crate) struct Server {
    pub(crate) pg: Pg,
    /// Absolute; holds `data/`, the unix socket and `postgres.log`.
    pub(crate) base: PathBuf,
    pub(crate) port: u16,
}

impl Server {
    /// PGDATA.
    pub(crate) fn data_dir(&self) -> PathBuf {
        self.base.join("data")
    }

    fn log_file(&self) -> PathBuf {
        self.base.join("postgres.log")
    }

    /// Runs `initdb` unless the data folder already holds a cluster.
    pub(crate) fn init_if_needed(&self) -> Result<(), ClusterError> {
        let data = self.data_dir();
        if data.join("PG_VERSION").is_file() {
            return Ok(());
        }
        info!(data = %data.display(), "creating a PostgreSQL cluster");
        let mut cmd = self.pg.tool("initdb", &self.base);
        cmd.arg("-D").arg(&data).args([
            "--auth=trust",
            "--username=postgres",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        run(cmd).map(drop)
    }

    /// `pg_ctl start`, or `restart` (fast shutdown first); adds the log's end to failures.
    pub(crate) fn start(&self, restart: bool) -> Result<(), ClusterError> {
        let log = self.log_file();
        // Only what this attempt writes to the log is worth showing.
        let log_start = fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let mut cmd = self.pg.tool("pg_ctl", &self.base);
        cmd.arg(if restart { "restart" } else { "start" });
        if restart {
            cmd.args(["-m", "fast"]);
        }
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", WAIT_SECS, "-o"])
            .arg(self.server_options()?);
        match run(cmd) {
            Ok(_) => Ok(()),
            Err(ClusterError::Command {
                cmd,
                status,
                mut output,
            }) => {
                output.push_str(&format!(
                    "\n--- end of {} ---\n{}",
                    log.display(),
                    log_tail(&log, log_start)
                ));
                Err(ClusterError::Command {
                    cmd,
                    status,
                    output,
                })
            }
            Err(other) => Err(other),
        }
    }

    /// The `-o` options; pg_ctl hands them to `/bin/sh`, hence the quoting of the folder.
    fn server_options(&self) -> Result<String, ClusterError> {
        let base = self.base.to_str().ok_or_else(|| ClusterError::BadPath {
            dir: self.base.clone(),
            reason: "not valid UTF-8".into(),
        })?;
        Ok(format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            sh_quote(base)
        ))
    }

    /// `pg_ctl stop`; succeeds when no server runs on the data folder.
    pub(crate) fn stop(&self, mode: StopMode) -> Result<(), ClusterError> {
        let data = self.data_dir();
        if running_pid(&data).is_none() {
            return Ok(());
        }
        let mut cmd = self.pg.tool("pg_ctl", &self.base);
        cmd.arg("stop")
            .arg("-D")
            .arg(&data)
            .args(["-m", mode.as_str(), "-w", "-t", WAIT_SECS]);
        match run(cmd) {
            Ok(_) => Ok(()),
            // It may have exited on its own meanwhile: stopped is what was asked for.
            Err(_) if running_pid(&data).is_none() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Stops a server still running on the data folder (say, left by a killed demo) and
    /// removes a stale `postmaster.pid`, whose PID may now belong to an unrelated process.
    pub(crate) fn clear_leftovers(&self) -> Result<(), ClusterError> {
        let data = self.data_dir();
        if let Some(pid) = running_pid(&data) {
            warn!(pid, data = %data.display(), "a server is already running on this folder; stopping it");
            return self.stop(StopMode::Fast);
        }
        let pid_file = data.join("postmaster.pid");
        if pid_file.exists() {
            warn!(file = %pid_file.display(), "removing a stale PID file");
            fs::remove_file(&pid_file)
                .map_err(ClusterError::io(format!("removing {}", pid_file.display())))?;
        }
        Ok(())
    }

    /// Whether a failed start is worth retrying on another port.
    pub(crate) fn port_taken(&self, error: &ClusterError) -> bool {
        let in_log = matches!(error, ClusterError::Command { output, .. }
            if output.contains("could not bind") || output.contains("Address already in use"));
        // Trying the port ourselves does not depend on the log's language.
        in_log || TcpListener::bind(("127.0.0.1", self.port)).is_err()
    }
}

/// A loopback port nobody listens on right now.
pub(crate) fn free_port() -> Result<u16, ClusterError> {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .map_err(ClusterError::io("looking for a free port on 127.0.0.1"))?;
    let port = listener
        .local_addr()
        .map_err(ClusterError::io("looking for a free port on 127.0.0.1"))?
        .port();
    Ok(port)
}

/// The PID in `data/postmaster.pid` if a PostgreSQL process with that PID is alive.
fn running_pid(data: &Path) -> Option<i32> {
    let text = fs::read_to_string(data.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    // 0 and negative values would address process groups in kill().
    if pid <= 0 {
        return None;
    }
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let alive = unsafe { libc::kill(pid, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !alive {
        return None;
    }
    // After a reboot or in a fresh container the PID may be reused by something else.
    match fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(comm) if !comm.trim_end().starts_with("postgres") => None,
        _ => Some(pid),
    }
}

/// The last lines of the log written after byte `from`.
fn log_tail(log: &Path, from: u64) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = fs::File::open(log)?;
        let len = file.metadata()?.len();
        // The tail is all we show, so there is no point reading a large log in full.
        let start = from.max(len.saturating_sub(64 * 1024));
        file.seek(SeekFrom::Start(start))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
        }
        Err(e) => format!("(could not read the log: {e})"),
    }
}

/// Quotes a word for `/bin/sh`.
fn sh_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}
