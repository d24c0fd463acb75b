//! Bulk loads and their lag (`lily.bulk_loads`): what each load wrote to
//! the metastore, what it put in the lake, and how far its lake rows have
//! been promoted. `lily ingest` records its progress here, `lily run`'s
//! promoter its watermark, and `lily status` reads both.

use deadpool_postgres::Transaction;

use crate::db::Metastore;
use crate::error::Result;

/// Where a load stands, as `lily status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadStatus {
    /// Its tenant.
    pub tenant_id: String,
    /// Its id (the file's identity).
    pub load_id: String,
    /// The file it reads.
    pub source: String,
    /// `loading` (the file is being read), `promoting` (read; lake rows
    /// remain), `complete`.
    pub state: String,
    /// Assets written to the metastore at once.
    pub rows_metastore: i64,
    /// Rows put in the lake.
    pub rows_lake: i64,
    /// Lake rows promoted into the metastore.
    pub promoted_rows: i64,
    /// Every row up to this position of the load is consistent everywhere.
    pub promoted_seq: i64,
    /// Seconds since the load last moved.
    pub idle_secs: i64,
}

impl LoadStatus {
    /// `pending` (nothing promoted yet), `partial`, or `complete`.
    pub fn consistency(&self) -> &'static str {
        if self.state == "complete"
            || (self.state == "promoting" && self.promoted_rows >= self.rows_lake)
        {
            "complete"
        } else if self.promoted_rows > 0 || self.rows_metastore > 0 {
            "partial"
        } else {
            "pending"
        }
    }

    /// Lake rows not yet in the metastore.
    pub fn backlog(&self) -> i64 {
        (self.rows_lake - self.promoted_rows).max(0)
    }
}

/// A table of a load: `complete` when every lake row of it is promoted,
/// `partial` when some are, `pending` before.
pub fn table_state(rows_lake: i64, promoted: i64) -> &'static str {
    if promoted >= rows_lake {
        "complete"
    } else if promoted > 0 {
        "partial"
    } else {
        "pending"
    }
}

const COLUMNS: &str = "tenant_id, load_id, source, state, rows_metastore, rows_lake, promoted_rows,
    promoted_seq, extract(epoch FROM now() - updated_at)::bigint";

fn status(r: &tokio_postgres::Row) -> LoadStatus {
    LoadStatus {
        tenant_id: r.get(0),
        load_id: r.get(1),
        source: r.get(2),
        state: r.get(3),
        rows_metastore: r.get(4),
        rows_lake: r.get(5),
        promoted_rows: r.get(6),
        promoted_seq: r.get(7),
        idle_secs: r.get(8),
    }
}

/// Starts (or resumes) load `load_id` of `tenant`, reading `source`.
pub async fn begin(
    db: &Metastore,
    tenant: &str,
    load_id: &str,
    source: &str,
) -> Result<LoadStatus> {
    let conn = db.connection().await?;
    let row = conn
        .query_one(
            &format!(
                "INSERT INTO lily.bulk_loads (tenant_id, load_id, source) VALUES ($1, $2, $3)
                 ON CONFLICT (tenant_id, load_id) DO UPDATE SET state = 'loading', updated_at = now(), completed_at = NULL
                 RETURNING {COLUMNS}"
            ),
            &[&tenant, &load_id, &source],
        )
        .await?;
    Ok(status(&row))
}

/// Records how far a load has read: counts and the lake's last position
/// only grow (a resumed load reports again what it skipped).
pub async fn progress(
    db: &Metastore,
    tenant: &str,
    load_id: &str,
    rows_metastore: i64,
    rows_lake: i64,
    lake_seq: i64,
) -> Result<()> {
    db.connection()
        .await?
        .execute(
            "UPDATE lily.bulk_loads SET rows_metastore = GREATEST(rows_metastore, $3),
                    rows_lake = GREATEST(rows_lake, $4), lake_seq = GREATEST(lake_seq, $5), updated_at = now()
              WHERE tenant_id = $1 AND load_id = $2",
            &[&tenant, &load_id, &rows_metastore, &rows_lake, &lake_seq],
        )
        .await?;
    Ok(())
}

/// The file is read: the load is complete once its lake rows are promoted.
pub async fn finish_reading(db: &Metastore, tenant: &str, load_id: &str) -> Result<()> {
    db.connection()
        .await?
        .execute(
            "UPDATE lily.bulk_loads
                SET state = CASE WHEN promoted_rows >= rows_lake THEN 'complete' ELSE 'promoting' END,
                    completed_at = CASE WHEN promoted_rows >= rows_lake THEN now() END, updated_at = now()
              WHERE tenant_id = $1 AND load_id = $2",
            &[&tenant, &load_id],
        )
        .await?;
    Ok(())
}

/// Lake rows of `tenant` not yet promoted, over its unfinished loads.
pub async fn backlog(db: &Metastore, tenant: &str) -> Result<i64> {
    Ok(db
        .connection()
        .await?
        .query_one(
            "SELECT coalesce(sum(GREATEST(rows_lake - promoted_rows, 0)), 0)::bigint
               FROM lily.bulk_loads WHERE tenant_id = $1 AND state <> 'complete'",
            &[&tenant],
        )
        .await?
        .get(0))
}

/// Every load, or one tenant's, newest first.
pub async fn list(db: &Metastore, tenant: Option<&str>) -> Result<Vec<LoadStatus>> {
    let rows = db
        .connection()
        .await?
        .query(
            &format!(
                "SELECT {COLUMNS} FROM lily.bulk_loads WHERE $1::text IS NULL OR tenant_id = $1
                  ORDER BY started_at DESC"
            ),
            &[&tenant],
        )
        .await?;
    Ok(rows.iter().map(status).collect())
}

/// Loads with lake rows past their watermark, for the promoter.
pub async fn to_promote(db: &Metastore) -> Result<Vec<LoadStatus>> {
    let rows = db
        .connection()
        .await?
        .query(
            &format!(
                "SELECT {COLUMNS} FROM lily.bulk_loads
                  WHERE state <> 'complete' AND promoted_seq < lake_seq ORDER BY started_at"
            ),
            &[],
        )
        .await?;
    Ok(rows.iter().map(status).collect())
}

/// Moves a load's watermark from `from` to `to` (`rows` more promoted) in
/// the transaction that promoted them; false when another promoter moved
/// it first (the transaction must then roll back).
pub async fn promoted(
    tx: &Transaction<'_>,
    load_id: &str,
    from: i64,
    to: i64,
    rows: i64,
) -> Result<bool> {
    let n = tx
        .execute(
            "UPDATE lily.bulk_loads
                SET promoted_seq = $3, promoted_rows = promoted_rows + $4, updated_at = now(),
                    state = CASE WHEN state = 'promoting' AND promoted_rows + $4 >= rows_lake THEN 'complete' ELSE state END,
                    completed_at = CASE WHEN state = 'promoting' AND promoted_rows + $4 >= rows_lake THEN now() END
              WHERE tenant_id = current_setting('lily.tenant_id') AND load_id = $1 AND promoted_seq = $2",
            &[&load_id, &from, &to, &rows],
        )
        .await?;
    Ok(n == 1)
}
