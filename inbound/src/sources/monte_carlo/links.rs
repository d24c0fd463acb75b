//! The assets an incident concerns: written from what the event names
//! (qualified names, warehouse table ids through the tenant's naming rule,
//! bare table names), and read back with why a pending one is pending.

use std::collections::{HashMap, HashSet};

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

/// A link an event names without a lookup: a qualified name, or a full
/// table id the tenant's naming rule maps to one.
#[derive(Debug, Clone)]
pub(crate) struct NamedLink {
    pub incident: Uuid,
    pub qualified_name: String,
    pub match_rule: &'static str,
    pub reference: Option<String>,
}

/// The links `row` names for `incident`: the ones that need no lookup, and
/// the bare table names.
pub(crate) fn named(
    incident: Uuid,
    row: &IncidentRow,
    naming: Option<&TableNaming>,
) -> (Vec<NamedLink>, Vec<String>) {
    let default = TableNaming::default();
    let naming = naming.unwrap_or(&default);
    let mut links: Vec<NamedLink> = row
        .qualified_names
        .iter()
        .map(|name| NamedLink {
            incident,
            qualified_name: name.clone(),
            match_rule: "qualified_name",
            reference: None,
        })
        .collect();
    let mut bare = row.table_names.clone();
    for id in &row.full_table_ids {
        match naming.qualified_name(id) {
            Some(name) => links.push(NamedLink {
                incident,
                qualified_name: name,
                match_rule: "full_table_id",
                reference: Some(id.clone()),
            }),
            // Not `<database>:<rest>`: all that is known is a table name.
            None => bare.push(id.clone()),
        }
    }
    (links, bare)
}

/// Writes named links (see [`write_named`]).
pub(crate) const WRITE_NAMED: &str =
    "INSERT INTO metastore.incident_assets (tenant_id, incident_id, qualified_name, match_rule, reference)
     SELECT $1, * FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[])
     ON CONFLICT DO NOTHING
     RETURNING incident_id, qualified_name";

/// Reads the links of incidents (see [`read_many`]): a join with the ids,
/// not `= ANY($2)`, whose generic plan reads every link of the tenant and
/// filters them.
pub(crate) const READ: &str =
    "SELECT ia.incident_id, ia.qualified_name, ia.asset_guid, ia.match_rule, ia.reference
       FROM metastore.incident_assets ia
       JOIN unnest($2::uuid[]) AS wanted(incident_id) ON ia.incident_id = wanted.incident_id
      WHERE ia.tenant_id = $1
      ORDER BY ia.incident_id, ia.qualified_name";

/// Writes `links` in one statement; which of them are new, by position (a
/// link named twice is new once).
pub(crate) async fn write_named(
    tx: &Transaction<'_>,
    tenant: &str,
    links: &[NamedLink],
) -> Result<Vec<bool>> {
    if links.is_empty() {
        return Ok(Vec::new());
    }
    let incidents: Vec<Uuid> = links.iter().map(|l| l.incident).collect();
    let names: Vec<&str> = links.iter().map(|l| l.qualified_name.as_str()).collect();
    let rules: Vec<&str> = links.iter().map(|l| l.match_rule).collect();
    let references: Vec<Option<&str>> = links.iter().map(|l| l.reference.as_deref()).collect();
    let inserted = tx
        .query(
            &tx.prepare_cached(WRITE_NAMED).await?,
            &[&tenant, &incidents, &names, &rules, &references],
        )
        .await?;
    let mut new: HashSet<(Uuid, String)> = inserted.iter().map(|r| (r.get(0), r.get(1))).collect();
    Ok(links
        .iter()
        .map(|l| new.remove(&(l.incident, l.qualified_name.clone())))
        .collect())
}

/// Links `incident` to the one table or view each of `names` ends with, or
/// leaves the name pending; returns how many links are new.
pub(crate) async fn write_bare(
    tx: &Transaction<'_>,
    tenant: &str,
    incident: Uuid,
    names: &[String],
) -> Result<u64> {
    let mut new = 0;
    for bare in names {
        let candidates = tx
            .query(
                &tx.prepare_cached(
                    "SELECT guid, qualified_name FROM lily.tables_ending_with($1, $2) LIMIT 2",
                )
                .await?,
                &[&tenant, bare],
            )
            .await?;
        let outcome = match candidates.as_slice() {
            [one] => {
                let (guid, name) = (one.get::<_, Uuid>(0), one.get::<_, String>(1));
                // Pending before (none or several matched then): linked now.
                tx.execute(
                    &tx.prepare_cached("DELETE FROM metastore.incident_assets WHERE incident_id = $1
                        AND match_rule = 'table_name' AND asset_guid IS NULL AND qualified_name = $2").await?,
                    &[&incident, bare],
                )
                .await?;
                new += tx
                    .execute(
                        &tx.prepare_cached(
                            "INSERT INTO metastore.incident_assets (tenant_id, incident_id, qualified_name, match_rule, reference, asset_guid)
                             VALUES ($1, $2, $3, 'table_name', $4, $5)
                             ON CONFLICT DO NOTHING",
                        )
                        .await?,
                        &[&tenant, &incident, &name, bare, &guid],
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
                        &[&tenant, &incident, bare],
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
    Ok(read_many(tx, tenant, &[incident])
        .await?
        .remove(&incident)
        .unwrap_or_default())
}

/// The links of each of `incidents`, with the reason of each pending one.
pub(crate) async fn read_many(
    tx: &Transaction<'_>,
    tenant: &str,
    incidents: &[Uuid],
) -> Result<HashMap<Uuid, Vec<IncidentLink>>> {
    let rows = tx
        .query(&tx.prepare_cached(READ).await?, &[&tenant, &incidents])
        .await?;
    let mut links: HashMap<Uuid, Vec<IncidentLink>> = HashMap::new();
    for r in &rows {
        links.entry(r.get(0)).or_default().push(IncidentLink {
            qualified_name: r.get(1),
            asset_guid: r.get(2),
            match_rule: r.get(3),
            reference: r.get(4),
            pending_reason: None,
        });
    }
    // Why each pending link is pending; only a bare table name needs a look
    // at the catalog, so only those are looked up (a query whose plan is
    // costly to make, kept out of the common case).
    let bare: Vec<&str> = links
        .values()
        .flatten()
        .filter(|l| l.asset_guid.is_none() && l.match_rule == "table_name")
        .map(|l| l.qualified_name.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut candidates: HashMap<String, (i64, String)> = HashMap::new();
    if !bare.is_empty() {
        for r in tx
            .query(
                &tx.prepare_cached(
                    "SELECT n.name, count(t.guid), coalesce(left(string_agg(t.qualified_name, ', ' ORDER BY t.qualified_name), 500), '')
                       FROM unnest($2::text[]) AS n(name)
                       LEFT JOIN LATERAL lily.tables_ending_with($1, n.name) t ON true
                      GROUP BY n.name",
                )
                .await?,
                &[&tenant, &bare],
            )
            .await?
        {
            candidates.insert(r.get(0), (r.get(1), r.get(2)));
        }
    }
    for link in links.values_mut().flatten() {
        link.pending_reason = pending_reason(link, candidates.get(&link.qualified_name));
    }
    Ok(links)
}

/// Why `link` is not linked yet (None once it is); `candidates` are how
/// many tables or views end with a bare name, and which.
fn pending_reason(link: &IncidentLink, candidates: Option<&(i64, String)>) -> Option<String> {
    let name = &link.qualified_name;
    if link.asset_guid.is_some() {
        return None;
    }
    if link.match_rule != "table_name" {
        return Some(format!("no asset named {name} in the catalog yet"));
    }
    Some(match candidates {
        None | Some((0, _)) => format!("no table or view ends with {name} yet"),
        Some((1, names)) => format!(
            "only {names} ends with {name} now; it was not the only one when the link was made"
        ),
        Some((n, names)) => {
            format!("{n} tables or views end with {name}: {names}; name it by full table id")
        }
    })
}
