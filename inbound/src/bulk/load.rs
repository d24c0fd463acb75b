//! One load of Lily's bulk format, chunk by chunk, in its two lanes: the
//! containers (and any column with tags or lineage) into the metastore at
//! once, the other columns and BI fields into the lake's `catalog/assets`
//! after the chunk's containers commit. `lily ingest` and the upload route
//! both load through here.

use std::time::Duration;

use lily_lakehouse::{CatalogAssets, LakeAsset, LakeLocation};
use serde_json::{Map, Value};

use super::{
    AssetChange, Outcome, Plan, Target, Unreadable, asset_type, leaf, loads, ndjson, write,
};
use crate::db::Metastore;
use crate::error::Result;
use crate::schemas::Schemas;

/// The dead-letter source of bulk records.
pub const BULK_SOURCE: &str = "bulk";

/// A record of a load: its position in the load (1, 2, ...), where it is
/// (`estate.ndjson:4`), and the JSON read there.
pub type Record = (i64, String, Value);

/// A record that is not JSON: position, where, its text, and why.
pub type UnreadableText = (i64, String, String, String);

/// Where the lake lane writes, and how much backlog a tenant may have.
#[derive(Debug, Clone)]
pub struct LakeLane {
    /// The lake, when the lake lane is on.
    pub location: Option<LakeLocation>,
    /// `bulk.max_backlog_rows`.
    pub max_backlog: u64,
}

/// A load under way (see the module docs).
pub struct Loader {
    db: Metastore,
    tenant: String,
    load_id: String,
    lake: Option<CatalogAssets>,
    max_backlog: u64,
    /// Records up to this position were written before (a resumed load).
    resume: i64,
    rows_metastore: i64,
    rows_lake: i64,
    lake_seq: i64,
}

impl Loader {
    /// Starts (or resumes) load `load_id` of `tenant`, read from `source`.
    pub async fn begin(
        db: &Metastore,
        tenant: &str,
        load_id: &str,
        source: &str,
        lane: &LakeLane,
    ) -> Result<Self> {
        loads::begin(db, tenant, load_id, source).await?;
        let mut lake = match &lane.location {
            Some(location) => Some(CatalogAssets::open(location).await?),
            None => None,
        };
        // Every record up to the last the lake holds is written in both
        // lanes already: a chunk's containers commit before its columns.
        let resume = match lake.as_mut() {
            Some(l) => l.last_seq(tenant, load_id).await?,
            None => 0,
        };
        Ok(Self {
            db: db.clone(),
            tenant: tenant.to_owned(),
            load_id: load_id.to_owned(),
            lake,
            max_backlog: lane.max_backlog,
            resume,
            rows_metastore: 0,
            rows_lake: 0,
            lake_seq: resume,
        })
    }

    /// Rows each lane took so far: (metastore, lake).
    pub fn rows(&self) -> (i64, i64) {
        (self.rows_metastore, self.rows_lake)
    }

    /// Writes one chunk in its two lanes. While the tenant's backlog would
    /// pass its maximum, waits, calling `paused` once with the backlog.
    pub async fn write(
        &mut self,
        schemas: &Schemas,
        records: Vec<Record>,
        unreadable: Vec<UnreadableText>,
        mut paused: impl FnMut(i64),
    ) -> Result<Outcome> {
        let mut metastore = Vec::new();
        let mut lake_rows = Vec::new();
        for (seq, position, value) in records {
            let to_lake = self.lake.is_some() && ndjson::lake_lane(schemas, &value);
            if to_lake {
                self.rows_lake += 1;
            } else {
                self.rows_metastore += 1;
            }
            if seq <= self.resume {
                continue;
            }
            if to_lake {
                lake_rows.push(lake_asset(&self.tenant, &self.load_id, seq, &value));
            } else {
                metastore.push((position, value));
            }
        }
        let plan = ndjson::plan(schemas, &metastore);
        let mut rejected: Vec<Unreadable> = plan.rejected.clone();
        let mut raw = metastore;
        for (seq, position, text, error) in unreadable {
            if seq <= self.resume {
                continue;
            }
            rejected.push(Unreadable {
                position: position.clone(),
                error,
            });
            raw.push((position, Value::String(text)));
        }
        // Containers first: the lake's columns name them as parents.
        let mut outcome = write(&self.db, &self.tenant, BULK_SOURCE, plan, rejected, &raw).await?;
        if let (Some(lake), Some(last)) = (self.lake.as_mut(), lake_rows.last().map(|r| r.seq)) {
            let mut told = false;
            loop {
                let backlog = loads::backlog(&self.db, &self.tenant).await?;
                if backlog + lake_rows.len() as i64 <= self.max_backlog as i64 || backlog == 0 {
                    break;
                }
                if !told {
                    paused(backlog);
                    told = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            lake.append(&lake_rows).await?;
            self.lake_seq = last;
            outcome.records += lake_rows.len() as u64;
        }
        loads::progress(
            &self.db,
            &self.tenant,
            &self.load_id,
            self.rows_metastore,
            self.rows_lake,
            self.lake_seq,
        )
        .await?;
        Ok(outcome)
    }

    /// Ends the reading of the load; `lily run` promotes the rest.
    pub async fn finish(self) -> Result<()> {
        loads::finish_reading(&self.db, &self.tenant, &self.load_id).await
    }
}

/// A lake row of a record the lake lane takes (checked against the schema).
fn lake_asset(tenant: &str, load_id: &str, seq: i64, v: &Value) -> LakeAsset {
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    LakeAsset {
        tenant_id: tenant.to_owned(),
        load_id: load_id.to_owned(),
        seq,
        qualified_name: text("qualified_name").unwrap_or_default(),
        type_name: text("type").unwrap_or_default(),
        name: text("name"),
        parent: text("parent"),
        description: text("description"),
        attributes: v
            .get("attributes")
            .map(Value::to_string)
            .unwrap_or_else(|| "{}".to_owned()),
        owners: v.get("owners").map(Value::to_string),
    }
}

/// The assets of lake rows, as the load stated them: what promotion
/// writes to the metastore.
pub fn plan_of(rows: Vec<LakeAsset>) -> Plan {
    let mut plan = Plan::default();
    for r in rows {
        let type_name = asset_type(&r.type_name).unwrap_or("column");
        let mut change = AssetChange::new(type_name, leaf(&r.qualified_name));
        change.type_name = Some(type_name);
        change.name = r.name;
        change.parent = r.parent;
        change.description = r.description;
        change.attributes =
            serde_json::from_str::<Map<String, Value>>(&r.attributes).unwrap_or_default();
        change.owners = r
            .owners
            .and_then(|o| serde_json::from_str::<Vec<String>>(&o).ok());
        plan.assets.insert(Target::Named(r.qualified_name), change);
    }
    plan
}

/// Promotes the columns named `names` that wait in the lake (bulk-loaded,
/// not promoted yet) into the metastore, in `tx` (the tenant's): a tag,
/// an edge or a lookup on such a column works at once instead of after
/// the promoter gets to it. The number promoted.
pub async fn promote_named(
    tx: &deadpool_postgres::Transaction<'_>,
    location: &LakeLocation,
    tenant: &str,
    names: &[&str],
) -> Result<u64> {
    if names.is_empty() {
        return Ok(0);
    }
    // Only loads with rows still to promote: a name that is nowhere (a
    // typo) costs one query, not a scan of the lake.
    let pending: Vec<(String, i64)> = tx
        .query(
            "SELECT load_id, promoted_seq FROM lily.bulk_loads
              WHERE tenant_id = $1 AND state <> 'complete' AND rows_lake > promoted_rows
              ORDER BY started_at",
            &[&tenant],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    if pending.is_empty() {
        return Ok(0);
    }
    let mut lake = CatalogAssets::open(location).await?;
    let rows = lake.find(tenant, names, &pending).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let n = rows.len() as u64;
    super::apply(tx, plan_of(rows)).await?;
    metrics::counter!("lily_bulk_promoted_on_demand_total").increment(n);
    Ok(n)
}
