//! `lily setup`: preflight, migrations, publication, slot. Idempotent.

use lily_cdc::{ReplicationSlot, SnapshotState};
use tokio_postgres::Client;
use tracing::info;

use crate::METASTORE_SCHEMA;
use crate::error::SetupError;
use crate::migrations::apply_migrations;
use crate::preflight::{preflight, tenant_role_problems};

/// What setup needs to know.
#[derive(Debug, Clone)]
pub struct SetupOptions {
    /// Replication slot name.
    pub slot: String,
    /// Publication name.
    pub publication: String,
    /// Role tenant-scoped sessions switch to.
    pub tenant_role: String,
}

/// What setup did.
#[derive(Debug, Clone, Default)]
pub struct SetupReport {
    /// Migration versions applied now.
    pub migrations_applied: Vec<i32>,
    /// The publication was created now.
    pub publication_created: bool,
    /// Tables in the publication.
    pub published_tables: Vec<String>,
    /// The slot was created now.
    pub slot_created: bool,
}

/// Runs setup against an open connection.
pub async fn setup(client: &mut Client, opts: &SetupOptions) -> Result<SetupReport, SetupError> {
    let problems = preflight(client, &opts.slot).await?;
    if !problems.is_empty() {
        return Err(SetupError::Preflight(problems));
    }
    let mut report = SetupReport {
        migrations_applied: apply_migrations(client, &opts.tenant_role).await?,
        ..Default::default()
    };
    let problems = tenant_role_problems(client, &opts.tenant_role).await?;
    if !problems.is_empty() {
        return Err(SetupError::TenantRole(problems));
    }

    // An explicit table list (not FOR TABLES IN SCHEMA, which needs a
    // superuser); re-set on every setup so tables of new migrations join.
    let tables: Vec<String> = client
        .query(
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables WHERE schemaname = $1 ORDER BY tablename",
            &[&METASTORE_SCHEMA],
        )
        .await
        .map_err(SetupError::sql("listing metastore tables"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&opts.publication],
        )
        .await
        .map_err(SetupError::sql("looking up the publication"))?
        .is_some();
    let list = tables.join(", ");
    let sql = if exists {
        format!(
            "ALTER PUBLICATION \"{}\" SET TABLE {list}",
            opts.publication
        )
    } else {
        format!(
            "CREATE PUBLICATION \"{}\" FOR TABLE {list}",
            opts.publication
        )
    };
    client
        .batch_execute(&sql)
        .await
        .map_err(SetupError::sql("creating the publication"))?;
    report.publication_created = !exists;
    report.published_tables = tables;

    let slot = ReplicationSlot::new(opts.slot.clone());
    let state = SnapshotState::load(client, &opts.slot).await?;
    report.slot_created = slot.ensure(client).await?;
    if report.slot_created && state.is_delivered() {
        // The slot was dropped behind our back: changes since are gone from
        // it, so the next run must take a fresh snapshot.
        state.retake().save(client, &opts.slot).await?;
        info!(slot = %opts.slot, "slot was missing; the next run takes a new snapshot");
    } else if report.slot_created {
        state.save(client, &opts.slot).await?;
    }
    Ok(report)
}
