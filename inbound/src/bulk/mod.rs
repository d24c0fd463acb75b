//! Set-based catalog writes of a whole batch: a [`Plan`] of what a batch
//! asks, and [`apply`], which writes it in one statement per kind of
//! change whatever the batch's size. DataHub's receiver, Lily's own bulk
//! format and `lily ingest` build plans; this is where they are written.

mod apply;
pub mod load;
pub mod loads;
pub mod ndjson;
mod plan;

pub use apply::{Applied, apply, checkpoint};
pub use load::{BULK_SOURCE, LakeLane, Loader};
pub use plan::{AssetChange, Edge, MAX_NAME, Plan, Target, Unreadable, asset_type, leaf};

use lily_cdc::sink::dead_letter::{DeadLetters, NewDeadLetter};
use serde_json::{Value, json};
use tracing::warn;

use crate::db::Metastore;
use crate::error::{InboundError, Result};

/// What one batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// What was written.
    pub applied: Applied,
    /// Records mapped.
    pub records: u64,
    /// Records skipped: no catalog metadata, or not taken.
    pub skipped: u64,
    /// Records set aside as dead letters.
    pub dead_letters: u64,
}

impl std::ops::AddAssign<&Outcome> for Outcome {
    fn add_assign(&mut self, o: &Outcome) {
        self.records += o.records;
        self.skipped += o.skipped;
        self.dead_letters += o.dead_letters;
        let (t, a) = (&mut self.applied, &o.applied);
        t.created += a.created;
        t.updated += a.updated;
        t.edges_added += a.edges_added;
        t.edges_removed += a.edges_removed;
        t.tags_added += a.tags_added;
        t.removed += a.removed;
        t.unresolved += a.unresolved;
    }
}

/// Writes `plan` for `tenant` in one transaction, then keeps each of
/// `unreadable` as a dead letter of `source` with its record from `raw`
/// (by position), for `lily dlq`. The caller has checked the roles.
pub async fn write(
    db: &Metastore,
    tenant: &str,
    source: &'static str,
    plan: Plan,
    unreadable: Vec<Unreadable>,
    raw: &[(String, Value)],
) -> Result<Outcome> {
    let mut outcome = Outcome {
        records: plan.applied.values().sum(),
        skipped: plan.skipped.values().sum(),
        dead_letters: unreadable.len() as u64,
        ..Default::default()
    };
    let mut conn = db.connection().await?;
    let tx = db.tenant_transaction(&mut conn, tenant).await?;
    outcome.applied = apply(&tx, plan).await?;
    tx.commit().await?;
    if unreadable.is_empty() {
        return Ok(outcome);
    }
    let store = DeadLetters::new(db.pool().clone());
    for u in &unreadable {
        warn!(tenant, source, position = %u.position, error = %u.error, "record set aside as a dead letter");
        let payload = raw
            .iter()
            .find(|(at, _)| *at == u.position)
            .map(|(_, v)| v.to_string())
            .unwrap_or_default();
        store
            .record(&NewDeadLetter {
                source,
                tenant_id: Some(tenant),
                reference: &u.position,
                error_code: "unreadable_record",
                error: &u.error,
                payload: Some(payload.as_bytes()),
                details: json!({"position": u.position}),
            })
            .await
            .map_err(|e| InboundError::Unavailable(e.to_string()))?;
    }
    Ok(outcome)
}
