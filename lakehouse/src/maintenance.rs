//! `lily lake optimize` and `lily lake vacuum`: compaction of the many small
//! files low-latency commits leave behind, and removal of files no version
//! within the retention period still needs.

use crate::audit_schema::AUDIT_TABLE;
use crate::error::LakeError;
use crate::location::LakeLocation;

/// What an optimize did.
#[derive(Debug, Clone)]
pub struct OptimizeReport {
    /// Files written.
    pub files_added: u64,
    /// Small files replaced.
    pub files_removed: u64,
    /// Partitions touched.
    pub partitions_optimized: u64,
}

/// What a vacuum did.
#[derive(Debug, Clone)]
pub struct VacuumReport {
    /// Files deleted (or, in a dry run, that would be).
    pub files_deleted: Vec<String>,
}

/// Compacts the audit table's small files.
pub async fn optimize(
    location: &LakeLocation,
    target_file_bytes: Option<u64>,
) -> Result<OptimizeReport, LakeError> {
    let table = location.open_table(AUDIT_TABLE).await?;
    let url = table.table_url().to_string();
    if table.version().is_none() {
        return Ok(OptimizeReport {
            files_added: 0,
            files_removed: 0,
            partitions_optimized: 0,
        });
    }
    let mut op = table.optimize();
    if let Some(size) = target_file_bytes.and_then(std::num::NonZeroU64::new) {
        op = op.with_target_size(size);
    }
    let (_, m) = op
        .await
        .map_err(|source| LakeError::Delta { table: url, source })?;
    Ok(OptimizeReport {
        files_added: m.num_files_added,
        files_removed: m.num_files_removed,
        partitions_optimized: m.partitions_optimized,
    })
}

/// Deletes files no longer referenced by any version younger than `retention_hours`.
pub async fn vacuum(
    location: &LakeLocation,
    retention_hours: u64,
    dry_run: bool,
) -> Result<VacuumReport, LakeError> {
    let table = location.open_table(AUDIT_TABLE).await?;
    let url = table.table_url().to_string();
    if table.version().is_none() {
        return Ok(VacuumReport {
            files_deleted: Vec::new(),
        });
    }
    let (_, m) = table
        .vacuum()
        .with_retention_period(chrono::Duration::hours(retention_hours as i64))
        // Below Delta's 7-day default the caller has said so explicitly.
        .with_enforce_retention_duration(false)
        .with_dry_run(dry_run)
        .await
        .map_err(|source| LakeError::Delta { table: url, source })?;
    Ok(VacuumReport {
        files_deleted: m.files_deleted,
    })
}
