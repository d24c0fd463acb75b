//! Writing a propagation result back to the metastore, in one transaction.
//!
//! The desired rows are staged in a temporary table; then, for the origins
//! that were re-computed (or for all, in a full pass), propagated rows not
//! in it are deleted and missing ones inserted. Rows already there are not
//! touched, so a write-back of what exists produces no change and no further
//! propagation. (An anti-join, not `ON CONFLICT`: speculative insertion costs
//! about a third more on large write-backs. A copy written concurrently by
//! someone else fails the transaction, which is retried.)

use std::collections::BTreeSet;

use arrow::array::{Array, AsArray, RecordBatch};
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::Propagated;
use super::origins::Origin;
use crate::error::{Result, TransformError};

/// What one write-back changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriteStats {
    /// Propagated rows inserted.
    pub inserted: u64,
    /// Propagated rows deleted.
    pub deleted: u64,
    /// The transaction id the write-back committed as (pgoutput's 32-bit
    /// xid), when it changed anything: its rows coming back through the
    /// stream are known to be its own.
    pub xid: Option<u32>,
}

struct Desired {
    tenant: Vec<String>,
    asset: Vec<Uuid>,
    key: Vec<String>,
    value: Vec<String>,
    origin: Vec<Uuid>,
}

fn desired(what: Propagated, rows: &RecordBatch) -> Result<Desired> {
    let bad = |c: &str| {
        TransformError::State(format!(
            "{} output column {c} has an unexpected type",
            what.transform()
        ))
    };
    let n = rows.num_rows();
    let tenant = rows
        .column(0)
        .as_string_opt::<i32>()
        .ok_or_else(|| bad("tenant_id"))?;
    let asset = rows
        .column(1)
        .as_fixed_size_binary_opt()
        .ok_or_else(|| bad("asset_guid"))?;
    let key = rows
        .column(2)
        .as_string_opt::<i32>()
        .ok_or_else(|| bad(what.key()))?;
    let (value, origin) = match what {
        Propagated::Tags => (None, rows.column(3)),
        Propagated::Attributes => (
            Some(
                rows.column(3)
                    .as_string_opt::<i32>()
                    .ok_or_else(|| bad("value"))?,
            ),
            rows.column(4),
        ),
    };
    let origin = origin
        .as_fixed_size_binary_opt()
        .ok_or_else(|| bad("propagated_from"))?;
    let mut out = Desired {
        tenant: Vec::with_capacity(n),
        asset: Vec::with_capacity(n),
        key: Vec::with_capacity(n),
        value: Vec::with_capacity(n),
        origin: Vec::with_capacity(n),
    };
    for i in 0..n {
        if tenant.is_null(i) || asset.is_null(i) || key.is_null(i) || origin.is_null(i) {
            continue;
        }
        if let Some(v) = value {
            if v.is_null(i) {
                continue;
            }
            out.value.push(v.value(i).to_owned());
        }
        let uuid = |b: &[u8]| Uuid::from_slice(b).map_err(|e| TransformError::State(e.to_string()));
        out.tenant.push(tenant.value(i).to_owned());
        out.asset.push(uuid(asset.value(i))?);
        out.key.push(key.value(i).to_owned());
        out.origin.push(uuid(origin.value(i))?);
    }
    Ok(out)
}

/// The SQL that differs between what propagates.
struct Target {
    /// The metastore table the copies live in.
    table: &'static str,
    /// The temporary table the desired rows are staged in.
    stage: &'static str,
    /// Its columns; the key makes every look-up into it an index probe,
    /// whatever plan PostgreSQL picks for the anti-joins.
    stage_def: &'static str,
    /// The arrays the staged rows are sent as.
    unnest: &'static str,
    /// A staged row `w` is the copy `c`.
    same: &'static str,
    /// Which rows of the table are copies.
    propagated_only: &'static str,
    /// Inserting staged rows `w` as copies (the FROM clause follows).
    insert: &'static str,
}

impl Target {
    fn of(what: Propagated) -> Self {
        match what {
            Propagated::Tags => Target {
                table: "metastore.classifications",
                stage: "lily_desired_tags",
                stage_def: "tenant_id text, asset_guid uuid, tag text, propagated_from uuid, \
                            PRIMARY KEY (tenant_id, asset_guid, tag, propagated_from)",
                unnest: "$1::text[], $2::uuid[], $3::text[], $4::uuid[]",
                same: "w.tenant_id = c.tenant_id AND w.asset_guid = c.asset_guid \
                       AND w.propagated_from = c.propagated_from AND w.tag = c.tag",
                propagated_only: "c.source = 'propagated'",
                insert: "INSERT INTO metastore.classifications (tenant_id, asset_guid, tag, source, propagated_from, propagate) \
                         SELECT w.tenant_id, w.asset_guid, w.tag, 'propagated', w.propagated_from, false",
            },
            Propagated::Attributes => Target {
                table: "metastore.propagated_attributes",
                stage: "lily_desired_attributes",
                stage_def: "tenant_id text, asset_guid uuid, attribute text, value text, propagated_from uuid, \
                            PRIMARY KEY (tenant_id, asset_guid, attribute, value, propagated_from)",
                unnest: "$1::text[], $2::uuid[], $3::text[], $4::text[], $5::uuid[]",
                same: "w.tenant_id = c.tenant_id AND w.asset_guid = c.asset_guid \
                       AND w.propagated_from = c.propagated_from AND w.attribute = c.attribute AND w.value = c.value",
                propagated_only: "true",
                insert: "INSERT INTO metastore.propagated_attributes (tenant_id, asset_guid, attribute, value, propagated_from) \
                         SELECT w.tenant_id, w.asset_guid, w.attribute, w.value, w.propagated_from",
            },
        }
    }
}

/// Makes the propagated rows of `origins` (all origins when `None`, less
/// those `held`, whose rows are left alone) exactly `rows`, the output of
/// the propagation transform.
pub async fn write_back(
    client: &mut Client,
    what: Propagated,
    origins: Option<&BTreeSet<Origin>>,
    held: &BTreeSet<Origin>,
    rows: &RecordBatch,
) -> Result<WriteStats> {
    let d = desired(what, rows)?;
    let tx = client
        .transaction()
        .await
        .map_err(TransformError::sql("starting the propagation write-back"))?;
    let t = Target::of(what);
    let (table, stage, same, propagated_only) = (t.table, t.stage, t.same, t.propagated_only);
    tx.batch_execute(&format!(
        "CREATE TEMP TABLE IF NOT EXISTS {stage} ({}) ON COMMIT DELETE ROWS",
        t.stage_def
    ))
    .await
    .map_err(TransformError::sql(
        "creating the propagation staging table",
    ))?;
    let params: Vec<&(dyn ToSql + Sync)> = match what {
        Propagated::Tags => vec![&d.tenant, &d.asset, &d.key, &d.origin],
        Propagated::Attributes => vec![&d.tenant, &d.asset, &d.key, &d.value, &d.origin],
    };
    tx.execute(
        &format!(
            "INSERT INTO {stage} SELECT * FROM unnest({}) ON CONFLICT DO NOTHING",
            t.unnest
        ),
        &params,
    )
    .await
    .map_err(TransformError::sql("staging the propagation result"))?;
    if d.tenant.len() > 1000 {
        tx.batch_execute(&format!("ANALYZE {stage}"))
            .await
            .map_err(TransformError::sql("analyzing the propagation result"))?;
    }

    let key = what.key();
    let deleted = match origins {
        Some(origins) => {
            let tenants: Vec<&str> = origins.iter().map(|o| o.0.as_ref()).collect();
            let guids: Vec<Uuid> = origins.iter().map(|o| Uuid::from_u128(o.1)).collect();
            let keys: Vec<&str> = origins.iter().map(|o| o.2.as_str()).collect();
            tx.execute(
                &format!(
                    "DELETE FROM {table} c USING unnest($1::text[], $2::uuid[], $3::text[]) AS o(tenant_id, origin, key) \
                     WHERE {propagated_only} AND c.tenant_id = o.tenant_id AND c.propagated_from = o.origin AND c.{key} = o.key \
                     AND NOT EXISTS (SELECT 1 FROM {stage} w WHERE {same})"
                ),
                &[&tenants, &guids, &keys],
            )
            .await
        }
        None => {
            let tenants: Vec<&str> = held.iter().map(|o| o.0.as_ref()).collect();
            let guids: Vec<Uuid> = held.iter().map(|o| Uuid::from_u128(o.1)).collect();
            let keys: Vec<&str> = held.iter().map(|o| o.2.as_str()).collect();
            tx.execute(
                &format!(
                    "DELETE FROM {table} c WHERE {propagated_only} \
                     AND NOT EXISTS (SELECT 1 FROM {stage} w WHERE {same}) \
                     AND NOT EXISTS (SELECT 1 FROM unnest($1::text[], $2::uuid[], $3::text[]) AS h(tenant_id, origin, key) \
                                     WHERE c.tenant_id = h.tenant_id AND c.propagated_from = h.origin AND c.{key} = h.key)"
                ),
                &[&tenants, &guids, &keys],
            )
            .await
        }
    }
    .map_err(TransformError::sql(format!("retracting propagated rows from {table}")))?;

    let insert = t.insert;
    // Assets deleted since the state was read are skipped, not an error.
    let inserted = tx
        .execute(
            &format!(
                "{insert} FROM {stage} w \
                 WHERE EXISTS (SELECT 1 FROM metastore.assets a WHERE a.guid = w.asset_guid AND a.tenant_id = w.tenant_id) \
                   AND EXISTS (SELECT 1 FROM metastore.assets a WHERE a.guid = w.propagated_from AND a.tenant_id = w.tenant_id) \
                   AND NOT EXISTS (SELECT 1 FROM {table} c WHERE {propagated_only} AND {same})"
            ),
            &[],
        )
        .await
        .map_err(TransformError::sql(format!("writing propagated rows to {table}")))?;
    // The low 32 bits of the 64-bit transaction id are the xid pgoutput
    // sends with each change of this transaction.
    let xid = if inserted + deleted > 0 {
        let row = tx
            .query_one("SELECT (txid_current() % 4294967296)::bigint", &[])
            .await
            .map_err(TransformError::sql(
                "reading the write-back's transaction id",
            ))?;
        u32::try_from(row.get::<_, i64>(0)).ok()
    } else {
        None
    };
    tx.commit()
        .await
        .map_err(TransformError::sql("committing the propagation write-back"))?;
    Ok(WriteStats {
        inserted,
        deleted,
        xid,
    })
}
