//! The events of one tenant written in one transaction, a statement per
//! step whatever their number: the incidents they create, the others locked
//! and read, the events recorded, the incidents they change, their links,
//! and the links read back. How each event changes its incident is still
//! decided event by event, in order, by [`IncidentFields::apply`].

use std::collections::{HashMap, HashSet};

use deadpool_postgres::Transaction;
use lily_config::TableNaming;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::ingest::WrittenIncident;
use super::links::{self, NamedLink};
use super::rows::IncidentRow;
use super::update::IncidentFields;
use crate::error::{InboundError, Result};

/// An incident's key within a tenant.
type Key = (String, String);

fn key(row: &IncidentRow) -> Key {
    (row.source_system.clone(), row.external_id.clone())
}

/// An incident the group touches, as the group leaves it.
struct Touched {
    incident_id: Uuid,
    /// Whether the group created it.
    created: bool,
    fields: IncidentFields,
    /// The event that last changed its fields, if any did (after its
    /// creation).
    changed_by: Option<usize>,
}

/// Applies each event's rows for `tenant` in `tx`, in order; what each
/// event wrote.
pub(crate) async fn write(
    tx: &Transaction<'_>,
    tenant: &str,
    naming: Option<&TableNaming>,
    events: Vec<(&Value, Vec<IncidentRow>)>,
) -> Result<Vec<Vec<WrittenIncident>>> {
    let digests: Vec<Vec<u8>> = events
        .iter()
        .map(|(e, _)| Sha256::digest(serde_json::to_vec(e).unwrap_or_default()).to_vec())
        .collect();
    let payloads: Vec<&Value> = events.iter().map(|(e, _)| *e).collect();
    // Every row with the event it comes from, in order.
    let rows: Vec<(usize, IncidentRow)> = events
        .into_iter()
        .enumerate()
        .flat_map(|(i, (_, rows))| rows.into_iter().map(move |r| (i, r)))
        .collect();
    let mut first_row: HashMap<Key, usize> = HashMap::new();
    for (r, (_, row)) in rows.iter().enumerate() {
        first_row.entry(key(row)).or_insert(r);
    }
    // Created in one order whatever the group: two groups inserting the
    // same new incidents wait on each other's inserts in the same order.
    let mut keys: Vec<Key> = first_row.keys().cloned().collect();
    keys.sort();
    let mut touched = create(tx, tenant, &keys, &first_row, &rows, &payloads).await?;
    let existing: Vec<&Key> = keys.iter().filter(|k| !touched.contains_key(*k)).collect();
    touched.extend(lock(tx, tenant, &existing).await?);

    // Each row's incident, and whether the row created it.
    let mut incident = Vec::with_capacity(rows.len());
    let mut created = Vec::with_capacity(rows.len());
    for (r, (_, row)) in rows.iter().enumerate() {
        let k = key(row);
        let t = touched
            .get(&k)
            .ok_or_else(|| InboundError::Internal(format!("incident {} not read", k.1)))?;
        incident.push(t.incident_id);
        created.push(t.created && first_row.get(&k) == Some(&r));
    }

    // Each row's event, recorded once per incident: a row whose event the
    // incident has seen changes nothing.
    let mut pairs: HashSet<(Uuid, &[u8])> = HashSet::new();
    let mut recorded: Vec<(usize, Uuid)> = Vec::new();
    for (r, (event, _)) in rows.iter().enumerate() {
        if pairs.insert((incident[r], digests[*event].as_slice())) {
            recorded.push((r, incident[r]));
        }
    }
    let recorded_rows = record_events(tx, tenant, &recorded, &rows, &digests, &payloads).await?;

    // The fields, row by row.
    let mut changed = created.clone();
    for (r, (event, row)) in rows.iter().enumerate() {
        if created[r] || !recorded_rows.contains(&r) {
            continue;
        }
        let Some(t) = touched.get_mut(&key(row)) else {
            continue;
        };
        let next = t.fields.apply(row);
        // An event that changes no field (an external ticket attached, a
        // late acknowledgement) is in the incident's events, not a new
        // version: `payload` is the last event that changed it.
        if next != t.fields {
            t.fields = next;
            t.changed_by = Some(*event);
            changed[r] = true;
        }
    }

    // The links of the rows whose events are new: each row's named links,
    // then its bare table names.
    let row_links: Vec<(Vec<NamedLink>, Vec<String>)> = rows
        .iter()
        .enumerate()
        .map(|(r, (_, row))| match recorded_rows.contains(&r) {
            true => links::named(incident[r], row, naming),
            false => Default::default(),
        })
        .collect();
    let ids: Vec<Uuid> = touched.values().map(|t| t.incident_id).collect();
    let mut read = if row_links.iter().all(|(_, bare)| bare.is_empty()) {
        // The changed fields, the links and the read of every link in one
        // round trip: prepared first (cached after the first group), then
        // sent together in this order (`biased`); the server runs them in
        // order, so the read sees the links.
        for sql in [UPDATE, links::WRITE_NAMED, links::READ] {
            tx.prepare_cached(sql).await?;
        }
        let (of_row, named): (Vec<usize>, Vec<NamedLink>) = row_links
            .into_iter()
            .enumerate()
            .flat_map(|(r, (named, _))| named.into_iter().map(move |l| (r, l)))
            .unzip();
        let (_, new, read) = tokio::try_join!(
            biased;
            update(tx, &touched, &payloads),
            links::write_named(tx, tenant, &named),
            links::read_many(tx, tenant, &ids),
        )?;
        for (r, new) in of_row.into_iter().zip(new) {
            changed[r] |= new;
        }
        read
    } else {
        // A bare name is looked up in the catalog, and may resolve to a
        // table another row names exactly: row by row, in order.
        update(tx, &touched, &payloads).await?;
        for (r, (named, bare)) in row_links.iter().enumerate() {
            let new = links::write_named(tx, tenant, named).await?;
            changed[r] |= new.into_iter().any(|new| new);
            if !bare.is_empty() {
                changed[r] |= links::write_bare(tx, tenant, incident[r], bare).await? > 0;
            }
        }
        links::read_many(tx, tenant, &ids).await?
    };
    let mut out: Vec<Vec<WrittenIncident>> = vec![Vec::new(); payloads.len()];
    for (r, (event, row)) in rows.into_iter().enumerate() {
        let links = read.entry(incident[r]).or_default().clone();
        let (linked, pending): (Vec<_>, Vec<_>) =
            links.into_iter().partition(|l| l.asset_guid.is_some());
        out[event].push(WrittenIncident {
            external_id: row.external_id,
            incident_id: incident[r],
            created: created[r],
            changed: changed[r],
            linked_assets: linked.len(),
            pending_assets: pending.len(),
            pending,
        });
    }
    Ok(out)
}

/// Creates the incidents of `keys` that do not exist, each as its first row
/// opens it; the ones created.
async fn create(
    tx: &Transaction<'_>,
    tenant: &str,
    keys: &[Key],
    first_row: &HashMap<Key, usize>,
    rows: &[(usize, IncidentRow)],
    payloads: &[&Value],
) -> Result<HashMap<Key, Touched>> {
    let mut opened = Vec::with_capacity(keys.len());
    let mut events = Vec::with_capacity(keys.len());
    for k in keys {
        let (event, row) = &rows[first_row[k]];
        opened.push(IncidentFields::opened(row));
        events.push(payloads[*event]);
    }
    let sources: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
    let ids: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
    let fields = FieldColumns::of(opened.iter());
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&tenant, &sources, &ids];
    params.extend(fields.params());
    params.push(&events);
    let created = tx
        .query(
            &tx.prepare_cached(
                "INSERT INTO metastore.incidents
                     (tenant_id, source_system, external_id, incident_type, title, state, severity, url, owner, source_status, payload)
                 SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                                          $7::text[], $8::text[], $9::text[], $10::text[], $11::jsonb[])
                 ON CONFLICT (tenant_id, source_system, external_id) DO NOTHING
                 RETURNING source_system, external_id, incident_id",
            )
            .await?,
            &params,
        )
        .await?;
    let by_key: HashMap<&Key, &IncidentFields> = keys.iter().zip(&opened).collect();
    created
        .iter()
        .map(|r| {
            let k: Key = (r.get(0), r.get(1));
            let fields = by_key
                .get(&k)
                .map(|f| (*f).clone())
                .ok_or_else(|| InboundError::Internal(format!("created {} unasked", k.1)))?;
            Ok((
                k,
                Touched {
                    incident_id: r.get(2),
                    created: true,
                    fields,
                    changed_by: None,
                },
            ))
        })
        .collect()
}

/// The fields of several incidents as one array per column, in the order
/// of [`IncidentFields`], for `unnest`.
struct FieldColumns<'a> {
    incident_type: Vec<Option<&'a str>>,
    title: Vec<Option<&'a str>>,
    state: Vec<&'a str>,
    severity: Vec<Option<&'a str>>,
    url: Vec<Option<&'a str>>,
    owner: Vec<Option<&'a str>>,
    source_status: Vec<Option<&'a str>>,
}

impl<'a> FieldColumns<'a> {
    fn of(fields: impl Iterator<Item = &'a IncidentFields> + Clone) -> Self {
        let text = |f: fn(&'a IncidentFields) -> Option<&'a str>| fields.clone().map(f).collect();
        Self {
            incident_type: text(|f| f.incident_type.as_deref()),
            title: text(|f| f.title.as_deref()),
            state: fields.clone().map(|f| f.state.as_str()).collect(),
            severity: text(|f| f.severity.as_deref()),
            url: text(|f| f.url.as_deref()),
            owner: text(|f| f.owner.as_deref()),
            source_status: text(|f| f.source_status.as_deref()),
        }
    }

    /// The arrays, as statement parameters.
    fn params(&self) -> [&(dyn ToSql + Sync); 7] {
        [
            &self.incident_type,
            &self.title,
            &self.state,
            &self.severity,
            &self.url,
            &self.owner,
            &self.source_status,
        ]
    }
}

/// Locks and reads the incidents of `keys`, in one order whatever the
/// group, so that two transactions cannot lock two incidents in opposite
/// orders.
async fn lock(tx: &Transaction<'_>, tenant: &str, keys: &[&Key]) -> Result<HashMap<Key, Touched>> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let sources: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
    let ids: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
    let found = tx
        .query(
            &tx.prepare_cached(
                "SELECT i.source_system, i.external_id, i.incident_id,
                        i.incident_type, i.title, i.state, i.severity, i.url, i.owner, i.source_status
                   FROM metastore.incidents i
                   JOIN unnest($2::text[], $3::text[]) AS k(source_system, external_id)
                     ON i.source_system = k.source_system AND i.external_id = k.external_id
                  WHERE i.tenant_id = $1
                  ORDER BY i.source_system, i.external_id
                    FOR UPDATE OF i",
            )
            .await?,
            &[&tenant, &sources, &ids],
        )
        .await?;
    if found.len() != keys.len() {
        return Err(InboundError::Internal(
            "an incident was deleted while an event for it was written".into(),
        ));
    }
    Ok(found
        .iter()
        .map(|r| {
            let fields = IncidentFields {
                incident_type: r.get(3),
                title: r.get(4),
                state: r.get(5),
                severity: r.get(6),
                url: r.get(7),
                owner: r.get(8),
                source_status: r.get(9),
            };
            (
                (r.get(0), r.get(1)),
                Touched {
                    incident_id: r.get(2),
                    created: false,
                    fields,
                    changed_by: None,
                },
            )
        })
        .collect())
}

/// Records each `(row, incident)` pair's event; the rows whose event the
/// incident had not seen.
async fn record_events(
    tx: &Transaction<'_>,
    tenant: &str,
    recorded: &[(usize, Uuid)],
    rows: &[(usize, IncidentRow)],
    digests: &[Vec<u8>],
    payloads: &[&Value],
) -> Result<HashSet<usize>> {
    let ids: Vec<Uuid> = recorded.iter().map(|(_, id)| *id).collect();
    let events: Vec<usize> = recorded.iter().map(|(r, _)| rows[*r].0).collect();
    let event_digests: Vec<&[u8]> = events.iter().map(|e| digests[*e].as_slice()).collect();
    let notifications: Vec<Option<&str>> = events
        .iter()
        .map(|e| payloads[*e].get("type").and_then(Value::as_str))
        .collect();
    let event_payloads: Vec<&Value> = events.iter().map(|e| payloads[*e]).collect();
    let new = tx
        .query(
            &tx.prepare_cached(
                "INSERT INTO lily.incident_events (tenant_id, incident_id, digest, notification, payload)
                 SELECT $1, * FROM unnest($2::uuid[], $3::bytea[], $4::text[], $5::jsonb[])
                 ON CONFLICT DO NOTHING
                 RETURNING incident_id, digest",
            )
            .await?,
            &[&tenant, &ids, &event_digests, &notifications, &event_payloads],
        )
        .await?;
    let new: HashSet<(Uuid, Vec<u8>)> = new.iter().map(|r| (r.get(0), r.get(1))).collect();
    Ok(recorded
        .iter()
        .zip(&event_digests)
        .filter(|((_, id), digest)| new.contains(&(*id, digest.to_vec())))
        .map(|((r, _), _)| *r)
        .collect())
}

/// Writes the fields of changed incidents (see [`update`]).
const UPDATE: &str = "UPDATE metastore.incidents i
        SET incident_type = u.incident_type, title = u.title, state = u.state,
            severity = u.severity, url = u.url, owner = u.owner,
            source_status = u.source_status, payload = u.payload
       FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                   $6::text[], $7::text[], $8::text[], $9::jsonb[])
            AS u(incident_id, incident_type, title, state, severity, url, owner, source_status, payload)
      WHERE i.incident_id = u.incident_id";

/// Writes the fields of the incidents whose fields an event changed.
async fn update(
    tx: &Transaction<'_>,
    touched: &HashMap<Key, Touched>,
    payloads: &[&Value],
) -> Result<()> {
    let changed: Vec<(&Touched, usize)> = touched
        .values()
        .filter_map(|t| t.changed_by.map(|e| (t, e)))
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = changed.iter().map(|(t, _)| t.incident_id).collect();
    let fields = FieldColumns::of(changed.iter().map(|(t, _)| &t.fields));
    let events: Vec<&Value> = changed.iter().map(|(_, e)| payloads[*e]).collect();
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&ids];
    params.extend(fields.params());
    params.push(&events);
    tx.execute(&tx.prepare_cached(UPDATE).await?, &params)
        .await?;
    Ok(())
}
