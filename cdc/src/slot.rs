//! The logical replication slot and the snapshot state kept beside it.

use tokio_postgres::Client;

use crate::error::{CdcError, Result};
use crate::lsn::Lsn;
use crate::wire::ReplicationConnection;

/// What the server knows of a slot.
#[derive(Debug, Clone)]
pub struct SlotInfo {
    /// Output plugin, `pgoutput` for ours.
    pub plugin: String,
    /// Database the slot decodes.
    pub database: String,
    /// Position up to which the slot's consumer has confirmed.
    pub confirmed_flush: Option<Lsn>,
    /// Backend pid of the consumer streaming from it, if one is.
    pub active_pid: Option<i32>,
    /// Bytes of WAL the slot holds back (`pg_current_wal_lsn() - restart_lsn`).
    pub retained_bytes: Option<i64>,
    /// `reserved`, `extended`, `unreserved`, or `lost` once the server
    /// invalidated the slot.
    pub wal_status: Option<String>,
}

/// A pgoutput logical replication slot, by name.
#[derive(Debug, Clone)]
pub struct ReplicationSlot {
    name: String,
}

impl ReplicationSlot {
    /// The slot called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        ReplicationSlot { name: name.into() }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Looks the slot up; `None` when it does not exist.
    pub async fn inspect(&self, client: &Client) -> Result<Option<SlotInfo>> {
        let row = client
            .query_opt(
                "SELECT plugin::text, database::text, confirmed_flush_lsn::text, active_pid, \
                        (pg_current_wal_lsn() - restart_lsn)::bigint, wal_status::text \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.name],
            )
            .await
            .map_err(CdcError::sql("looking up the replication slot"))?;
        Ok(row.map(|r| SlotInfo {
            plugin: r.get::<_, Option<String>>(0).unwrap_or_default(),
            database: r.get::<_, Option<String>>(1).unwrap_or_default(),
            confirmed_flush: r.get::<_, Option<String>>(2).and_then(|s| s.parse().ok()),
            active_pid: r.get(3),
            retained_bytes: r.get(4),
            wal_status: r.get(5),
        }))
    }

    /// Creates the slot through SQL, without an exported snapshot. Idempotent.
    pub async fn ensure(&self, client: &Client) -> Result<bool> {
        if self.inspect(client).await?.is_some() {
            return Ok(false);
        }
        client
            .execute(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&self.name],
            )
            .await
            .map_err(CdcError::sql(format!(
                "creating replication slot {}",
                self.name
            )))?;
        Ok(true)
    }

    /// Creates the slot on a replication connection and exports its snapshot:
    /// returns the consistent point and the snapshot name. The snapshot stays
    /// importable until the connection runs its next command.
    pub async fn create_exporting_snapshot(
        &self,
        conn: &mut ReplicationConnection,
    ) -> Result<(Lsn, String)> {
        let result = conn
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT \"{}\" LOGICAL pgoutput (SNAPSHOT 'export')",
                self.name
            ))
            .await?;
        let point = result
            .first("consistent_point")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                CdcError::Protocol("CREATE_REPLICATION_SLOT returned no consistent point".into())
            })?;
        let snapshot = result
            .first("snapshot_name")
            .ok_or_else(|| {
                CdcError::Protocol("CREATE_REPLICATION_SLOT returned no snapshot".into())
            })?
            .to_string();
        Ok((point, snapshot))
    }

    /// Drops the slot if it exists; refuses while another process streams from it.
    pub async fn drop_if_exists(&self, client: &Client) -> Result<()> {
        if let Some(info) = self.inspect(client).await? {
            if let Some(pid) = info.active_pid {
                return Err(CdcError::Protocol(format!(
                    "replication slot {} is in use by server process {pid}: is another `lily run` streaming from it?",
                    self.name
                )));
            }
            client
                .execute("SELECT pg_drop_replication_slot($1)", &[&self.name])
                .await
                .map_err(CdcError::sql(format!(
                    "dropping replication slot {}",
                    self.name
                )))?;
        }
        Ok(())
    }
}

/// Where the initial snapshot of a slot stands, kept in
/// `lily.replication_state` (created by the metastore migrations).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotState {
    /// No snapshot was started for the slot.
    NotTaken,
    /// A snapshot at consistent point `at` started; not every sink holds it
    /// yet, so the next run discards its rows and takes a new one.
    InProgress {
        /// Its consistent point.
        at: Lsn,
    },
    /// Every sink durably holds the snapshot; the slot streams from here.
    Delivered {
        /// Its consistent point, when recorded.
        at: Option<Lsn>,
    },
}

impl SnapshotState {
    /// Whether every sink holds the snapshot.
    pub fn is_delivered(&self) -> bool {
        matches!(self, SnapshotState::Delivered { .. })
    }

    /// The consistent point of the last snapshot started, if known.
    pub fn point(&self) -> Option<Lsn> {
        match *self {
            SnapshotState::NotTaken => None,
            SnapshotState::InProgress { at } => Some(at),
            SnapshotState::Delivered { at } => at,
        }
    }

    /// The state once the slot is gone: a new snapshot is needed, and the
    /// old one's rows are what the sinks discard first.
    pub fn retake(&self) -> SnapshotState {
        match self.point() {
            Some(at) => SnapshotState::InProgress { at },
            None => SnapshotState::NotTaken,
        }
    }

    /// Reads the state of `slot`; a slot never snapshotted reads as not done.
    pub async fn load(client: &Client, slot: &str) -> Result<SnapshotState> {
        let row = client
            .query_opt(
                "SELECT snapshot_lsn::text, snapshot_done FROM lily.replication_state WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(CdcError::sql("reading lily.replication_state (has `lily setup` run?)"))?;
        let Some(r) = row else {
            return Ok(SnapshotState::NotTaken);
        };
        let at: Option<Lsn> = r.get::<_, Option<String>>(0).and_then(|s| s.parse().ok());
        Ok(match (at, r.get::<_, bool>(1)) {
            (at, true) => SnapshotState::Delivered { at },
            (Some(at), false) => SnapshotState::InProgress { at },
            (None, false) => SnapshotState::NotTaken,
        })
    }

    /// Stores the state of `slot`.
    pub async fn save(&self, client: &Client, slot: &str) -> Result<()> {
        let lsn = self.point().map(|l| l.to_string());
        let done = self.is_delivered();
        client
            .execute(
                "INSERT INTO lily.replication_state (slot_name, snapshot_lsn, snapshot_done, updated_at) \
                 VALUES ($1, $2::text::pg_lsn, $3, now()) \
                 ON CONFLICT (slot_name) DO UPDATE SET snapshot_lsn = EXCLUDED.snapshot_lsn, \
                 snapshot_done = EXCLUDED.snapshot_done, updated_at = now()",
                &[&slot, &lsn, &done],
            )
            .await
            .map_err(CdcError::sql("writing lily.replication_state"))?;
        Ok(())
    }
}
