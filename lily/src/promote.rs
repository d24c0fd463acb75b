//! The second lane of bulk loads: `lily run` promotes the columns and BI
//! fields a load put in the lake's `catalog/assets` into the metastore, in
//! the order of the load, `bulk.promote_rows` per transaction. Each
//! transaction writes the assets and moves the load's watermark together,
//! so a restart neither loses nor repeats a row; from the metastore they
//! stream to search, propagation and enforcement like any other asset.

use std::time::Duration;

use lily_config::LilyConfig;
use lily_inbound::bulk::{self, loads};
use lily_inbound::db::Metastore;
use lily_lakehouse::{CatalogAssets, LakeLocation};
use tokio::sync::watch;
use tracing::{info, warn};

/// Starts the promoter; it stops with `shutdown`.
pub fn start(config: &LilyConfig, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let db = crate::dlq::own_metastore(config, 2)?;
    let location = lily_sinks::builtin::lake_location(config)?;
    let rows = config.bulk.promote_rows;
    if rows == 0 {
        info!("bulk.promote_rows = 0: this lily run does not promote bulk-loaded rows");
        return Ok(());
    }
    let every = Duration::from_millis(config.bulk.promote_interval_ms);
    tokio::spawn(async move {
        let mut lake: Option<CatalogAssets> = None;
        while !*shutdown.borrow() {
            let moved = match pass(&db, &location, &mut lake, rows).await {
                Ok(n) => n,
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "promoting bulk-loaded assets; retrying");
                    metrics::counter!("lily_bulk_promote_errors_total").increment(1);
                    lake = None;
                    0
                }
            };
            if moved == 0 {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    });
    Ok(())
}

/// One round over the loads with rows past their watermark; the rows moved.
async fn pass(
    db: &Metastore,
    location: &LakeLocation,
    lake: &mut Option<CatalogAssets>,
    rows: usize,
) -> anyhow::Result<u64> {
    let pending = loads::to_promote(db).await?;
    metrics::gauge!("lily_bulk_backlog_rows")
        .set(pending.iter().map(|l| l.backlog()).sum::<i64>() as f64);
    if pending.is_empty() {
        return Ok(0);
    }
    if lake.is_none() {
        *lake = Some(CatalogAssets::open(location).await?);
    }
    let Some(lake) = lake.as_mut() else {
        return Ok(0);
    };
    let mut moved = 0;
    for load in pending {
        let batch = lake
            .read(&load.tenant_id, &load.load_id, load.promoted_seq, rows)
            .await?;
        let Some(last) = batch.last().map(|r| r.seq) else {
            continue;
        };
        let n = batch.len() as i64;
        let plan = bulk::load::plan_of(batch);
        let mut conn = db.connection().await?;
        let tx = db.tenant_transaction(&mut conn, &load.tenant_id).await?;
        let applied = bulk::apply(&tx, plan).await?;
        if !loads::promoted(&tx, &load.load_id, load.promoted_seq, last, n).await? {
            // Another `lily run` promoted these first.
            tx.rollback().await?;
            continue;
        }
        tx.commit().await?;
        moved += n as u64;
        metrics::counter!("lily_bulk_promoted_rows_total").increment(n as u64);
        info!(tenant = %load.tenant_id, load = %load.load_id, rows = n, created = applied.created,
              watermark = last, "promoted bulk-loaded assets");
    }
    Ok(moved)
}
