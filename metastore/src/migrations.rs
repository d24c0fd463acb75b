//! Versioned, append-only migrations, each applied once in its own
//! transaction and recorded with a checksum in `lily.schema_migrations`.

use tokio_postgres::Client;
use tracing::info;

use crate::error::SetupError;

/// One migration.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Version, ascending.
    pub version: i32,
    /// Short name.
    pub name: &'static str,
    /// SQL, with `${tenant_role}` standing for the tenant role's name.
    pub sql: &'static str,
}

/// Every migration, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "metastore",
        sql: include_str!("../migrations/0001_metastore.sql"),
    },
    Migration {
        version: 2,
        name: "propagation",
        sql: include_str!("../migrations/0002_propagation.sql"),
    },
    Migration {
        version: 3,
        name: "inbound",
        sql: include_str!("../migrations/0003_inbound.sql"),
    },
    Migration {
        version: 4,
        name: "outbound",
        sql: include_str!("../migrations/0004_outbound.sql"),
    },
    Migration {
        version: 5,
        name: "monte_carlo",
        sql: include_str!("../migrations/0005_monte_carlo.sql"),
    },
    Migration {
        version: 6,
        name: "force_rls",
        sql: include_str!("../migrations/0006_force_rls.sql"),
    },
    Migration {
        version: 7,
        name: "api_key_events",
        sql: include_str!("../migrations/0007_api_key_events.sql"),
    },
    Migration {
        version: 8,
        name: "enforcement",
        sql: include_str!("../migrations/0008_enforcement.sql"),
    },
    Migration {
        version: 9,
        name: "propagation_lookups",
        sql: include_str!("../migrations/0009_propagation_lookups.sql"),
    },
    Migration {
        version: 10,
        name: "datahub",
        sql: include_str!("../migrations/0010_datahub.sql"),
    },
    Migration {
        version: 11,
        name: "bulk_writes",
        sql: include_str!("../migrations/0011_bulk_writes.sql"),
    },
    Migration {
        version: 12,
        name: "incident_links_by_incident",
        sql: include_str!("../migrations/0012_incident_links_by_incident.sql"),
    },
    Migration {
        version: 13,
        name: "column_policies",
        sql: include_str!("../migrations/0013_column_policies.sql"),
    },
];

/// A stable checksum (FNV-1a) of the migration text as shipped.
fn checksum(sql: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in sql.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Applies the migrations not yet applied; returns the versions it applied.
pub async fn apply_migrations(
    client: &mut Client,
    tenant_role: &str,
) -> Result<Vec<i32>, SetupError> {
    client
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS lily;
             CREATE TABLE IF NOT EXISTS lily.schema_migrations (
                 version    integer PRIMARY KEY,
                 name       text NOT NULL,
                 checksum   text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .map_err(SetupError::sql("creating lily.schema_migrations"))?;
    let mut applied = Vec::new();
    for m in MIGRATIONS {
        let tx = client
            .transaction()
            .await
            .map_err(SetupError::sql("starting a migration"))?;
        // One setup at a time: a second one waits here, then finds the work done.
        tx.execute("SELECT pg_advisory_xact_lock(7141592)", &[])
            .await
            .map_err(SetupError::sql("locking migrations"))?;
        let row = tx
            .query_opt(
                "SELECT checksum FROM lily.schema_migrations WHERE version = $1",
                &[&m.version],
            )
            .await
            .map_err(SetupError::sql("reading lily.schema_migrations"))?;
        let sum = checksum(m.sql);
        if let Some(row) = row {
            if row.get::<_, String>(0) != sum {
                return Err(SetupError::MigrationChanged {
                    version: m.version,
                    name: m.name.to_string(),
                });
            }
            continue;
        }
        let sql = m.sql.replace("${tenant_role}", tenant_role);
        tx.batch_execute(&sql)
            .await
            .map_err(SetupError::sql(format!(
                "applying migration {} ({})",
                m.version, m.name
            )))?;
        tx.execute(
            "INSERT INTO lily.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&m.version, &m.name, &sum],
        )
        .await
        .map_err(SetupError::sql("recording a migration"))?;
        tx.commit().await.map_err(SetupError::sql(format!(
            "committing migration {}",
            m.version
        )))?;
        info!(version = m.version, name = m.name, "migration applied");
        applied.push(m.version);
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_ordered_and_checksums_stable() {
        assert!(MIGRATIONS.windows(2).all(|w| w[0].version < w[1].version));
        assert_eq!(checksum("abc"), checksum("abc"));
        assert_ne!(checksum("abc"), checksum("abd"));
    }
}
