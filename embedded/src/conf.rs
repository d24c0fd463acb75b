//! The settings file `data/lily.conf`, included from postgresql.conf.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;

use crate::ClusterError;
use crate::process::RunAs;

/// The file holding our settings, next to postgresql.conf.
const FILE: &str = "lily.conf";

/// The line that pulls our file into postgresql.conf (relative to the including file).
const INCLUDE: &str = "include 'lily.conf'";

/// Settings every cluster starts with; [`crate::ClusterBuilder::setting`] overrides them.
pub(crate) fn defaults() -> BTreeMap<String, String> {
    [
        ("wal_level", "logical"),
        ("max_replication_slots", "20"),
        ("max_wal_senders", "20"),
        ("wal_sender_timeout", "60s"),
        ("shared_buffers", "128MB"),
        ("max_connections", "100"),
        ("log_min_messages", "warning"),
        ("logical_decoding_work_mem", "64MB"),
        ("unix_socket_permissions", "0777"),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value.to_owned()))
    .collect()
}

/// Refuses what could not be written as one `name = 'value'` line.
pub(crate) fn validate(name: &str, value: &str) -> Result<(), ClusterError> {
    let invalid = |reason: &str| ClusterError::InvalidSetting {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    // Letters, digits, `_`, and `.` for extension settings such as `pg_stat_statements.max`.
    let name_ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    if !name_ok {
        return Err(invalid("names may only hold letters, digits, `_` and `.`"));
    }
    if value.contains(['\n', '\r', '\0']) {
        return Err(invalid("values may not hold line breaks or NUL"));
    }
    Ok(())
}

/// Writes all settings to `data/lily.conf`, replacing it atomically.
pub(crate) fn write(
    data: &Path,
    settings: &BTreeMap<String, String>,
    owner: Option<RunAs>,
) -> Result<(), ClusterError> {
    let mut text = String::from(
        "# Written by lily-embedded on every start and settings change; edits are lost.\n",
    );
    for (name, value) in settings {
        // Quoted values are accepted for every type; inside quotes `'` doubles and `\` escapes.
        let quoted = value.replace('\\', "\\\\").replace('\'', "''");
        text.push_str(&format!("{name} = '{quoted}'\n"));
    }
    let path = data.join(FILE);
    let tmp = data.join(format!("{FILE}.tmp"));
    fs::write(&tmp, text).map_err(ClusterError::io(format!("writing {}", tmp.display())))?;
    if let Some(owner) = owner {
        std::os::unix::fs::chown(&tmp, Some(owner.uid), Some(owner.gid))
            .map_err(ClusterError::io(format!("chown {}", tmp.display())))?;
    }
    // Rename so that a server reading the file never sees half of it.
    fs::rename(&tmp, &path).map_err(ClusterError::io(format!("replacing {}", path.display())))
}

/// Adds the include line to `data/postgresql.conf` unless it is already there.
pub(crate) fn ensure_included(data: &Path) -> Result<(), ClusterError> {
    let path = data.join("postgresql.conf");
    let current = fs::read_to_string(&path)
        .map_err(ClusterError::io(format!("reading {}", path.display())))?;
    if current.lines().any(|line| line.trim() == INCLUDE) {
        return Ok(());
    }
    // Appending keeps the file's owner; last in the file so our values win over initdb's.
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(ClusterError::io(format!("opening {}", path.display())))?;
    let separator = if current.ends_with('\n') || current.is_empty() {
        ""
    } else {
        "\n"
    };
    write!(
        file,
        "{separator}\n# Added by lily-embedded: the settings it manages.\n{INCLUDE}\n"
    )
    .map_err(ClusterError::io(format!("writing {}", path.display())))
}
