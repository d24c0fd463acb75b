//! `lily lake ...`: maintenance of the Delta store, and a count for the demo.

use anyhow::Context;
use deltalake::datafusion::prelude::SessionContext;
use lily_config::LilyConfig;
use lily_lakehouse::{AUDIT_TABLE, maintenance};

use lily_sinks::builtin::lake_location;

/// Compacts small files of the audit table.
pub async fn optimize(config: &LilyConfig, target_size: Option<u64>) -> anyhow::Result<()> {
    let location = lake_location(config)?;
    let r = maintenance::optimize(&location, target_size)
        .await
        .context("optimize")?;
    println!(
        "optimized {AUDIT_TABLE}: {} small files replaced by {} in {} partitions",
        r.files_removed, r.files_added, r.partitions_optimized
    );
    Ok(())
}

/// Removes files older versions no longer need.
pub async fn vacuum(
    config: &LilyConfig,
    retention_hours: u64,
    dry_run: bool,
) -> anyhow::Result<()> {
    let location = lake_location(config)?;
    let r = maintenance::vacuum(&location, retention_hours, dry_run)
        .await
        .context("vacuum")?;
    let verb = if dry_run { "would delete" } else { "deleted" };
    println!(
        "vacuumed {AUDIT_TABLE} (retention {retention_hours} h): {verb} {} files",
        r.files_deleted.len()
    );
    for f in r.files_deleted.iter().take(20) {
        println!("  {f}");
    }
    Ok(())
}

/// Rows in the audit table (0 when it does not exist yet).
pub async fn count_audit_rows(config: &LilyConfig) -> anyhow::Result<u64> {
    let location = lake_location(config)?;
    let table = location.open_table(AUDIT_TABLE).await?;
    if table.version().is_none() {
        return Ok(0);
    }
    let ctx = SessionContext::new();
    table.update_datafusion_session(&ctx.state())?;
    ctx.register_table("audit", table.table_provider().await?)?;
    let batches = ctx
        .sql("SELECT count(*) FROM audit")
        .await?
        .collect()
        .await?;
    let count = batches
        .first()
        .and_then(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
        })
        .map(|a| a.value(0))
        .unwrap_or(0);
    Ok(count as u64)
}
