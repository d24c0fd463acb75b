//! Applying change batches to the catalog state.

use std::collections::HashMap;

use arrow::array::{Array, AsArray, RecordBatch};
use lily_cdc::ChangeBatch;
use lily_cdc::batch::{BEFORE, OP};

use super::columns::Columns;
use super::snapshot;
use super::{
    Asset, CatalogState, Classification, Edge, Guid, Incident, IncidentLink, Inner,
    PropagatedValue, StateTable,
};
use crate::error::{Result, TransformError};

impl CatalogState {
    /// Applies a batch of changes of one metastore table; batches of tables
    /// the state does not hold are ignored.
    pub fn apply(&self, batch: &ChangeBatch) -> Result<()> {
        if batch.table.namespace != lily_metastore::METASTORE_SCHEMA {
            return Ok(());
        }
        let table = batch.table.name.as_str();
        let target = match table {
            "assets" => StateTable::Assets,
            "lineage_edges" => StateTable::LineageEdges,
            "classifications" => StateTable::Classifications,
            "propagated_attributes" => StateTable::PropagatedAttributes,
            "incidents" => StateTable::Incidents,
            "incident_assets" => StateTable::IncidentAssets,
            _ => return Ok(()),
        };
        let records = &batch.records;
        if records.num_rows() == 0 {
            return Ok(());
        }
        let ops = records
            .column_by_name(OP)
            .and_then(|c| c.as_string_opt::<i32>())
            .ok_or_else(|| TransformError::State(format!("changes of {table} have no {OP}")))?;
        let row = Columns::of_batch(table, records);
        let before_array = records
            .column_by_name(BEFORE)
            .and_then(|c| c.as_struct_opt());
        let before = before_array.map(|b| Columns::of_before(table, b));
        let has_before = |i: usize| before_array.is_some_and(|b| b.is_valid(i));

        let mut inner = self.lock();
        for i in 0..records.num_rows() {
            let op = ops.value(i);
            if op == "t" {
                clear(&mut inner, target);
                continue;
            }
            let delete = op == "d";
            match target {
                StateTable::Assets => {
                    let guid = key(row.uuid("guid")?.get(i), table, "guid")?;
                    if delete {
                        inner.assets.remove(&guid);
                        continue;
                    }
                    if op == "u"
                        && has_before(i)
                        && let Some(b) = &before
                        && let Some(old) = b.uuid("guid")?.get(i)
                        && old != guid
                    {
                        inner.assets.remove(&old);
                    }
                    let asset = asset_of_row(&mut inner, &row, i)?;
                    // A column nothing refers to is not held: the batch
                    // that carries it shows it to transforms, and a tag or
                    // incident on it later fetches it (`unresolved`).
                    if inner.assets.get(&guid).is_none() && !self.resident(&inner, guid, &asset) {
                        continue;
                    }
                    inner.assets.insert(guid, Box::new(asset));
                }
                StateTable::LineageEdges => {
                    let id = key(row.uuid("edge_id")?.get(i), table, "edge_id")?;
                    if op == "u"
                        && has_before(i)
                        && let Some(b) = &before
                        && let Some(old) = b.uuid("edge_id")?.get(i)
                    {
                        inner.remove_edge(&old);
                    }
                    if delete {
                        inner.remove_edge(&id);
                        continue;
                    }
                    let tenant = key(row.text("tenant_id")?.get(i), table, "tenant_id")?;
                    let tenant = inner.tenant(tenant);
                    let edge = Edge {
                        tenant,
                        upstream: key(row.uuid("upstream_guid")?.get(i), table, "upstream_guid")?,
                        downstream: key(
                            row.uuid("downstream_guid")?.get(i),
                            table,
                            "downstream_guid",
                        )?,
                        process: row.uuid("process_guid")?.get(i),
                        blocked_tags: row.text_list("blocked_tags")?.get(i),
                    };
                    inner.insert_edge(id, Box::new(edge));
                }
                StateTable::Classifications => {
                    let id = key(
                        row.uuid("classification_id")?.get(i),
                        table,
                        "classification_id",
                    )?;
                    if op == "u"
                        && has_before(i)
                        && let Some(b) = &before
                        && let Some(old) = b.uuid("classification_id")?.get(i)
                    {
                        remove_classification(&mut inner, old);
                    }
                    remove_classification(&mut inner, id);
                    if delete {
                        continue;
                    }
                    let tenant = key(row.text("tenant_id")?.get(i), table, "tenant_id")?;
                    let tenant = inner.tenant(tenant);
                    let c = Classification {
                        tenant,
                        asset: key(row.uuid("asset_guid")?.get(i), table, "asset_guid")?,
                        tag: key(row.text("tag")?.get(i), table, "tag")?.to_owned(),
                        direct: row.text("source")?.get(i) != Some("propagated"),
                        propagated_from: row.uuid("propagated_from")?.get(i),
                        propagate: row.boolean("propagate")?.get(i).unwrap_or(false),
                    };
                    inner
                        .classifications_by_asset
                        .entry(c.asset)
                        .or_default()
                        .push(id);
                    inner.classifications.insert(id, c);
                }
                StateTable::PropagatedAttributes => {
                    if op == "u"
                        && has_before(i)
                        && let Some(b) = &before
                    {
                        let (asset, old) = propagated_value(&mut inner, b, i, table)?;
                        inner.remove_propagated(asset, &old);
                    }
                    let (asset, value) = propagated_value(&mut inner, &row, i, table)?;
                    if delete {
                        inner.remove_propagated(asset, &value);
                    } else {
                        inner.add_propagated(asset, value);
                    }
                }
                StateTable::Incidents => {
                    let id = key(row.uuid("incident_id")?.get(i), table, "incident_id")?;
                    if delete {
                        inner.incidents.remove(&id);
                        continue;
                    }
                    let tenant = key(row.text("tenant_id")?.get(i), table, "tenant_id")?;
                    let tenant = inner.tenant(tenant);
                    let state = inner.tenant(row.text("state")?.get(i).unwrap_or("open"));
                    let severity = row.text("severity")?.get(i).map(|s| inner.tenant(s));
                    let incident_type = row.text("incident_type")?.get(i).map(|s| inner.tenant(s));
                    let incident = Incident {
                        tenant,
                        title: row.text("title")?.get(i).map(Into::into),
                        state,
                        severity,
                        incident_type,
                        url: row.text("url")?.get(i).map(Into::into),
                        updated_at: row.timestamp("updated_at")?.get(i),
                    };
                    inner.incidents.insert(id, Box::new(incident));
                }
                StateTable::IncidentAssets => {
                    if op == "u"
                        && has_before(i)
                        && let Some(b) = &before
                    {
                        let (incident, old) = incident_link(&mut inner, b, i, table)?;
                        remove_link(&mut inner, incident, &old.qualified_name);
                    }
                    let (incident, link) = incident_link(&mut inner, &row, i, table)?;
                    remove_link(&mut inner, incident, &link.qualified_name);
                    if !delete {
                        inner.incident_links.get_or_default(incident).push(link);
                    }
                }
                StateTable::AssetAttributes => {}
            }
        }
        inner.report();
        Ok(())
    }
}

impl CatalogState {
    /// The assets of `changes` (batches of `changes.assets`) as they are
    /// after them, less the ones the state holds: what transforms see of
    /// the columns the state leaves out.
    pub fn batch_assets(&self, changes: &[RecordBatch]) -> Result<Option<RecordBatch>> {
        let mut latest: HashMap<Guid, Option<Asset>> = HashMap::new();
        let mut inner = self.lock();
        for records in changes {
            let ops = records
                .column_by_name(OP)
                .and_then(|c| c.as_string_opt::<i32>())
                .ok_or_else(|| TransformError::State(format!("changes of assets have no {OP}")))?;
            let row = Columns::of_batch("assets", records);
            for i in 0..records.num_rows() {
                match ops.value(i) {
                    "t" => latest.clear(),
                    "d" => {
                        latest.insert(key(row.uuid("guid")?.get(i), "assets", "guid")?, None);
                    }
                    _ => {
                        let guid = key(row.uuid("guid")?.get(i), "assets", "guid")?;
                        let asset = asset_of_row(&mut inner, &row, i)?;
                        latest.insert(guid, Some(asset));
                    }
                }
            }
        }
        let rows: Vec<(Guid, Asset)> = latest
            .into_iter()
            .filter_map(|(g, a)| a.map(|a| (g, a)))
            .filter(|(g, _)| inner.assets.get(g).is_none())
            .collect();
        drop(inner);
        Ok((!rows.is_empty()).then(|| snapshot::assets_batch(&rows)))
    }
}

/// The asset of row `i` of a change of `metastore.assets`. A large value
/// that did not change arrives as NULL: the held one is kept.
fn asset_of_row(inner: &mut Inner, row: &Columns<'_>, i: usize) -> Result<Asset> {
    let table = "assets";
    let guid = key(row.uuid("guid")?.get(i), table, "guid")?;
    let tenant = key(row.text("tenant_id")?.get(i), table, "tenant_id")?;
    let tenant = inner.tenant(tenant);
    let type_name = inner.tenant(row.text("type_name")?.get(i).unwrap_or_default());
    let previous = inner.assets.get(&guid);
    let description = if row.unchanged_toast(i, "description") {
        previous.and_then(|p| p.description.clone())
    } else {
        row.text("description")?.get(i).map(Into::into)
    };
    let owners = if row.unchanged_toast(i, "owners") {
        previous.map(|p| p.owners.clone()).unwrap_or_default()
    } else {
        row.text_list("owners")?.get(i).into_boxed_slice()
    };
    Ok(Asset {
        tenant,
        type_name,
        qualified_name: row
            .text("qualified_name")?
            .get(i)
            .unwrap_or_default()
            .into(),
        name: row.text("name")?.get(i).unwrap_or_default().into(),
        description,
        parent: row.uuid("parent_guid")?.get(i),
        owners,
        certificate: row.text("certificate")?.get(i).map(Into::into),
    })
}

fn incident_link(
    inner: &mut Inner,
    cols: &Columns<'_>,
    i: usize,
    table: &str,
) -> Result<(Guid, IncidentLink)> {
    let tenant = key(cols.text("tenant_id")?.get(i), table, "tenant_id")?;
    let tenant = inner.tenant(tenant);
    Ok((
        key(cols.uuid("incident_id")?.get(i), table, "incident_id")?,
        IncidentLink {
            tenant,
            qualified_name: key(cols.text("qualified_name")?.get(i), table, "qualified_name")?
                .into(),
            asset: cols.uuid("asset_guid")?.get(i),
        },
    ))
}

fn remove_link(inner: &mut Inner, incident: Guid, qualified_name: &str) {
    if let Some(links) = inner.incident_links.get_mut(&incident) {
        links.retain(|l| &*l.qualified_name != qualified_name);
        if links.is_empty() {
            inner.incident_links.remove(&incident);
        }
    }
}

fn key<T>(value: Option<T>, table: &str, column: &str) -> Result<T> {
    value.ok_or_else(|| TransformError::State(format!("a change of {table} has no {column}")))
}

fn clear(inner: &mut Inner, table: StateTable) {
    match table {
        StateTable::Assets => inner.assets.clear(),
        StateTable::LineageEdges => {
            inner.edges.clear();
            inner.edges_out.clear();
        }
        StateTable::Classifications => {
            inner.classifications.clear();
            inner.classifications_by_asset.clear();
        }
        StateTable::PropagatedAttributes => {
            inner.propagated.clear();
            inner.attribute_copies_from.clear();
        }
        StateTable::Incidents => inner.incidents.clear(),
        StateTable::IncidentAssets => inner.incident_links.clear(),
        StateTable::AssetAttributes => {}
    }
}

fn remove_classification(inner: &mut Inner, id: Guid) {
    let Some(old) = inner.classifications.remove(&id) else {
        return;
    };
    if let Some(ids) = inner.classifications_by_asset.get_mut(&old.asset) {
        ids.retain(|x| *x != id);
        if ids.is_empty() {
            inner.classifications_by_asset.remove(&old.asset);
        }
    }
}

fn propagated_value(
    inner: &mut Inner,
    cols: &Columns<'_>,
    i: usize,
    table: &str,
) -> Result<(Guid, PropagatedValue)> {
    let tenant = key(cols.text("tenant_id")?.get(i), table, "tenant_id")?;
    let tenant = inner.tenant(tenant);
    let asset = key(cols.uuid("asset_guid")?.get(i), table, "asset_guid")?;
    Ok((
        asset,
        PropagatedValue {
            tenant,
            attribute: key(cols.text("attribute")?.get(i), table, "attribute")?.to_owned(),
            value: key(cols.text("value")?.get(i), table, "value")?.to_owned(),
            propagated_from: key(
                cols.uuid("propagated_from")?.get(i),
                table,
                "propagated_from",
            )?,
        },
    ))
}
