//! A local search server for the demo, the tests and the benchmarks:
//! osmem-server, an in-memory server speaking the Elasticsearch REST API
//! (index mappings, aliases, `_bulk` with external versions, `_search`
//! with nested queries and terms aggregations), as a child process on a
//! loopback port. Its documents live in memory: they are gone when it stops.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long the server may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the search server did not start.
#[derive(Debug, thiserror::Error)]
#[error("search server {bin}: {message}")]
pub struct SearchServerError {
    bin: String,
    message: String,
}

/// A running search server, killed on drop.
pub struct SearchServer {
    child: Child,
    url: String,
}

impl SearchServer {
    /// Starts the server binary `bin` on a free loopback port; it also
    /// exits if this process dies.
    pub async fn start(bin: &Path) -> Result<SearchServer, SearchServerError> {
        let err = |message: String| SearchServerError {
            bin: bin.display().to_string(),
            message,
        };
        let mut child = Command::new(bin)
            .args(["--addr", "127.0.0.1:0", "--no-ja", "--no-stdin-watch"])
            .args(["--parent-pid", &std::process::id().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| err(format!("cannot start: {e}")))?;
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            return Err(err("no standard output".into()));
        };
        // It prints one JSON line with its URL once it listens.
        let ready = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        });
        let line = match tokio::time::timeout(START_TIMEOUT, ready).await {
            Ok(Ok(Ok(line))) => line,
            _ => {
                let _ = child.kill();
                return Err(err(format!("did not start within {START_TIMEOUT:?}")));
            }
        };
        let url = serde_json::from_str::<serde_json::Value>(line.trim())
            .ok()
            .and_then(|v| v["url"].as_str().map(str::to_owned));
        match url {
            Some(url) => Ok(SearchServer { child, url }),
            None => {
                let _ = child.kill();
                Err(err(format!("said {line:?} instead of its URL")))
            }
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Freezes the server (SIGSTOP): it stops answering, as a hung node does.
    pub fn pause(&self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGSTOP);
        }
    }

    /// Thaws the server (SIGCONT).
    pub fn resume(&self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGCONT);
        }
    }
}

impl Drop for SearchServer {
    fn drop(&mut self) {
        self.resume();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
