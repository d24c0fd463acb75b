//! The assets an incident concerns: written from what the event names
//! (qualified names, warehouse table ids through the tenant's naming rule,
//! bare table names), and read back with why a pending one is pending.

use deadpool_postgres::Transaction;
use lily_config::TableNaming;
use serde::Serialize;
use uuid::Uuid;

use super::rows::IncidentRow;
use crate::error::Result;

/// One link of an incident to an asset.
#[derive(Debug, Clone, Serialize)]
pub struct IncidentLink {
    /// The asset's qualified name; for a pending bare name, the bare name.
    pub qualified_name: String,
    /// The asset, once it is in the catalog.
    pub asset_guid: Option<Uuid>,
    /// How the source named it: `qualified_name`, `full_table_id` or
    /// `table_name`.
    #[serde(rename = "match")]
    pub match_rule: String,
    /// What the source said, when it was not a qualified name.
    pub reference: Option<String>,
    /// Why it is not linked yet (NULL once linked).
    pub pending_reason: Option<String>,
}

const INSERT: &str = "
INSERT INTO metastore.incident_assets (tenant_id, incident_id, qualified_name, match_rule, reference, asset_guid)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT DO NOTHING";

/// Writes the links `row` names; returns how many are new.
pub(crate) async fn write(
    tx: &Transaction<'_>,
    tenant: &str,
    incident: Uuid,
    row: &IncidentRow,
    naming: Option<&TableNaming>,
) -> Result<u64> {
    let default = TableNaming::default();
    let naming = naming.unwrap_or(&default);
    let mut new = 0;
    for name in &row.qualified_names {
        let none: Option<&str> = None;
        let guid: Option<Uuid> = None;
        new += tx
            .execute(
                &tx.prepare_cached(INSERT).await?,
                &[&tenant, &incident, name, &"qualified_name", &none, &guid],
            )
            .await?;
    }
    let mut table_names: Vec<&str> = row.table_names.iter().map(String::as_str).collect();
    for id in &row.full_table_ids {
        let Some(name) = naming.qualified_name(id) else {
            // Not `<database>:<rest>`: all that is known is a table name.
            table_names.push(id);
            continue;
        };
        let guid: Option<Uuid> = None;
        new += tx
            .execute(
                &tx.prepare_cached(INSERT).await?,
                &[&tenant, &incident, &name, &"full_table_id", id, &guid],
            )
            .await?;
    }
    for bare in table_names {
        let candidates = tx
            .query(
                &tx.prepare_cached(
                    "SELECT guid, qualified_name FROM lily.tables_ending_with($1, $2) LIMIT 2",
                )
                .await?,
                &[&tenant, &bare],
            )
            .await?;
        let outcome = match candidates.as_slice() {
            [one] => {
                let (guid, name) = (one.get::<_, Uuid>(0), one.get::<_, String>(1));
                // Pending before (none or several matched then): linked now.
                tx.execute(
                    &tx.prepare_cached("DELETE FROM metastore.incident_assets WHERE incident_id = $1
                        AND match_rule = 'table_name' AND asset_guid IS NULL AND qualified_name = $2").await?,
                    &[&incident, &bare],
                )
                .await?;
                new += tx
                    .execute(
                        &tx.prepare_cached(INSERT).await?,
                        &[&tenant, &incident, &name, &"table_name", &bare, &Some(guid)],
                    )
                    .await?;
                "linked"
            }
            _ => {
                // Pending, unless an earlier event linked the name already.
                new += tx
                    .execute(
                        &tx.prepare_cached("INSERT INTO metastore.incident_assets (tenant_id, incident_id, qualified_name, match_rule, reference)
                         SELECT $1::text, $2::uuid, $3::text, 'table_name', $3::text
                          WHERE NOT EXISTS (SELECT 1 FROM metastore.incident_assets
                                             WHERE incident_id = $2 AND match_rule = 'table_name'
                                               AND reference = $3 AND asset_guid IS NOT NULL)
                         ON CONFLICT DO NOTHING").await?,
                        &[&tenant, &incident, &bare],
                    )
                    .await?;
                "pending"
            }
        };
        metrics::counter!("lily_inbound_incident_table_names_total", "outcome" => outcome)
            .increment(1);
    }
    Ok(new)
}

/// The links of `incident`, with the reason of each pending one.
pub async fn read(tx: &Transaction<'_>, tenant: &str, incident: Uuid) -> Result<Vec<IncidentLink>> {
    let rows = tx
        .query(
            &tx.prepare_cached("SELECT ia.qualified_name, ia.asset_guid, ia.match_rule, ia.reference,
                    CASE
                        WHEN ia.asset_guid IS NOT NULL THEN NULL
                        WHEN ia.match_rule <> 'table_name' THEN
                            format('no asset named %s in the catalog yet', ia.qualified_name)
                        WHEN c.n = 0 THEN
                            format('no table or view ends with %s yet', ia.qualified_name)
                        WHEN c.n = 1 THEN
                            format('only %s ends with %s now; it was not the only one when the link was made', c.names, ia.qualified_name)
                        ELSE format('%s tables or views end with %s: %s; name it by full table id', c.n, ia.qualified_name, c.names)
                    END
               FROM metastore.incident_assets ia
               LEFT JOIN LATERAL (
                    SELECT count(*) AS n, left(string_agg(t.qualified_name, ', ' ORDER BY t.qualified_name), 500) AS names
                      FROM lily.tables_ending_with(ia.tenant_id, ia.qualified_name) t
                     WHERE ia.asset_guid IS NULL AND ia.match_rule = 'table_name'
               ) c ON true
              WHERE ia.tenant_id = $1 AND ia.incident_id = $2
              ORDER BY ia.qualified_name").await?,
            &[&tenant, &incident],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| IncidentLink {
            qualified_name: r.get(0),
            asset_guid: r.get(1),
            match_rule: r.get(2),
            reference: r.get(3),
            pending_reason: r.get(4),
        })
        .collect())
}
