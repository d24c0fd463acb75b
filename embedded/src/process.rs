//! Finding the PostgreSQL binaries and running them, as the `postgres` user when we are root.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tracing::debug;

use crate::ClusterError;

/// Where the Debian package puts the PostgreSQL 15 binaries.
const DEFAULT_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Environment variable overriding [`DEFAULT_BIN`].
pub(crate) const BIN_ENV: &str = "LILY_PG_BIN";

/// The user the server runs as, when it is not us.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunAs {
    pub(crate) uid: libc::uid_t,
    pub(crate) gid: libc::gid_t,
}

/// The PostgreSQL binaries and the user to run them as.
#[derive(Debug, Clone)]
pub(crate) struct Pg {
    bin: PathBuf,
    /// `Some` when we are root: PostgreSQL refuses to run as root.
    pub(crate) run_as: Option<RunAs>,
}

impl Pg {
    /// Finds the binaries (`LILY_PG_BIN` or the Debian path) and decides who runs them.
    pub(crate) fn locate() -> Result<Pg, ClusterError> {
        let bin = std::env::var_os(BIN_ENV)
            .filter(|dir| !dir.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_BIN));
        let complete = ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|tool| bin.join(tool).is_file());
        if !complete {
            return Err(ClusterError::BinariesNotFound { dir: bin });
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let run_as = if root { Some(postgres_user()?) } else { None };
        Ok(Pg { bin, run_as })
    }

    /// A command for one of the PostgreSQL binaries, run from `cwd`.
    pub(crate) fn tool(&self, name: &str, cwd: &Path) -> Command {
        self.command(self.bin.join(name).as_os_str(), cwd)
    }

    /// A command for any program, wrapped in `runuser -u postgres --` when we are root.
    pub(crate) fn command(&self, program: &OsStr, cwd: &Path) -> Command {
        let mut cmd = match self.run_as {
            Some(_) => {
                let mut cmd = Command::new(runuser());
                cmd.args(["-u", "postgres", "--"]).arg(program);
                cmd
            }
            None => Command::new(program),
        };
        // Our own working folder may be unreadable by the postgres user (e.g. /root).
        cmd.current_dir(cwd);
        cmd
    }

    /// Checks that the user running the server can reach and write `dir`.
    pub(crate) fn check_access(&self, dir: &Path) -> Result<(), ClusterError> {
        if self.run_as.is_none() {
            return Ok(());
        }
        // Asking `test` as that user is exact (ACLs, groups), unlike reading mode bits ourselves.
        let mut cmd = self.command(OsStr::new("test"), Path::new("/"));
        cmd.arg("-w").arg(dir).arg("-a").arg("-x").arg(dir);
        let status = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(ClusterError::io("running `runuser -u postgres -- test`"))?;
        if status.success() {
            Ok(())
        } else {
            Err(ClusterError::NotAccessible {
                dir: dir.to_path_buf(),
            })
        }
    }
}

/// The `runuser` program, by full path when found: sbin is not always on PATH.
fn runuser() -> &'static OsStr {
    ["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"]
        .into_iter()
        .find(|path| Path::new(path).is_file())
        .map_or(OsStr::new("runuser"), OsStr::new)
}

/// Looks up the `postgres` system user.
fn postgres_user() -> Result<RunAs, ClusterError> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: passwd is a plain C struct for which all-zero is a valid value.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the duration of the call; the re-entrant variant is
    // used because getpwnam's static buffer is not thread-safe. We only read uid/gid afterwards.
    let rc = unsafe {
        libc::getpwnam_r(
            c"postgres".as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() {
        return Err(ClusterError::NoPostgresUser);
    }
    Ok(RunAs {
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
    })
}

/// Runs a command to completion; returns its stdout+stderr, or a [`ClusterError::Command`].
pub(crate) fn run(mut cmd: Command) -> Result<String, ClusterError> {
    let desc = describe(&cmd);
    debug!(cmd = %desc, "running");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(ClusterError::io(format!("starting `{desc}`")))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(text)
    } else {
        Err(ClusterError::Command {
            cmd: desc,
            status: out.status.to_string(),
            output: text.trim_end().to_owned(),
        })
    }
}

/// The command line, for logs and errors.
fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|part| {
            let part = part.to_string_lossy();
            // Quote multi-word arguments (pg_ctl -o) so the line can be pasted into a shell.
            if part.contains(char::is_whitespace) {
                format!("\"{part}\"")
            } else {
                part.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Gives `path` and everything under it to `owner`; symbolic links are not followed.
pub(crate) fn chown_tree(path: &Path, owner: RunAs) -> Result<(), ClusterError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        // Something (a dying server's temp file) vanished under us: nothing left to chown.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ClusterError::io(format!("reading {}", path.display()))(e)),
    };
    if meta.uid() != owner.uid || meta.gid() != owner.gid {
        std::os::unix::fs::lchown(path, Some(owner.uid), Some(owner.gid))
            .map_err(ClusterError::io(format!("chown {}", path.display())))?;
    }
    if meta.is_dir() {
        let entries =
            fs::read_dir(path).map_err(ClusterError::io(format!("listing {}", path.display())))?;
        for entry in entries {
            let entry = entry.map_err(ClusterError::io(format!("listing {}", path.display())))?;
            chown_tree(&entry.path(), owner)?;
        }
    }
    Ok(())
}
