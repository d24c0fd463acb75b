//! The catalog state transforms join against: assets, lineage edges,
//! classifications, propagated attributes, incidents and the assets they
//! concern, kept current from the change stream itself (after one load from
//! PostgreSQL at start-up).
//!
//! Changes are applied as upserts and deletes by key, so replaying changes
//! the load already saw converges on the same state. The state reflects the
//! newest change read, which may be a little ahead of the batch a sink is on.

mod apply;
mod buckets;
pub(crate) mod columns;
mod load;
mod snapshot;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::SchemaRef;
use lily_cdc::ChangeBatch;
use lily_config::PropagatedAttribute;

use crate::error::Result;
use buckets::BucketedMap;
use snapshot::TableSnapshot;

/// A uuid, as the 128-bit big-endian integer of its bytes.
pub type Guid = u128;

/// The tables of the catalog state, as SQL sees them under `state.`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StateTable {
    /// `state.assets`: asset identity (guid, tenant, type, qualified name, parent, owners, certificate).
    Assets,
    /// `state.lineage_edges`: upstream → downstream, with the tags blocked on the edge.
    LineageEdges,
    /// `state.classifications`: tags on assets, direct and propagated.
    Classifications,
    /// `state.propagated_attributes`: attribute values propagated to assets.
    PropagatedAttributes,
    /// `state.asset_attributes`: the values of the attributes configured to
    /// propagate, one row per (asset, attribute, value).
    AssetAttributes,
    /// `state.incidents`: data-quality incidents (state, severity, title).
    Incidents,
    /// `state.incident_assets`: which assets each incident concerns.
    IncidentAssets,
}

impl StateTable {
    /// Every state table.
    pub const ALL: [StateTable; 7] = [
        StateTable::Assets,
        StateTable::LineageEdges,
        StateTable::Classifications,
        StateTable::PropagatedAttributes,
        StateTable::AssetAttributes,
        StateTable::Incidents,
        StateTable::IncidentAssets,
    ];

    /// The table's name under `state.`.
    pub fn name(self) -> &'static str {
        match self {
            StateTable::Assets => "assets",
            StateTable::LineageEdges => "lineage_edges",
            StateTable::Classifications => "classifications",
            StateTable::PropagatedAttributes => "propagated_attributes",
            StateTable::AssetAttributes => "asset_attributes",
            StateTable::Incidents => "incidents",
            StateTable::IncidentAssets => "incident_assets",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The table's Arrow schema.
    pub fn schema(self) -> SchemaRef {
        snapshot::schema(self)
    }
}

// Kept small: a catalog holds millions of these. Maps hold them boxed, so
// growing a map moves pointers, not rows.
#[derive(Debug, Clone)]
struct Asset {
    tenant: Arc<str>,
    type_name: Arc<str>,
    qualified_name: Box<str>,
    name: Box<str>,
    description: Option<Box<str>>,
    parent: Option<Guid>,
    owners: Box<[String]>,
    certificate: Option<Box<str>>,
}

#[derive(Debug, Clone)]
struct Incident {
    tenant: Arc<str>,
    title: Option<Box<str>>,
    state: Arc<str>,
    severity: Option<Arc<str>>,
    incident_type: Option<Arc<str>>,
    url: Option<Box<str>>,
    /// Microseconds since the Unix epoch.
    updated_at: Option<i64>,
}

/// One row of `metastore.incident_assets`, less its incident (the map key).
#[derive(Debug, Clone, PartialEq)]
struct IncidentLink {
    tenant: Arc<str>,
    qualified_name: Box<str>,
    asset: Option<Guid>,
}

#[derive(Debug, Clone)]
struct Edge {
    tenant: Arc<str>,
    upstream: Guid,
    downstream: Guid,
    process: Option<Guid>,
    blocked_tags: Vec<String>,
}

#[derive(Debug, Clone)]
struct Classification {
    tenant: Arc<str>,
    asset: Guid,
    tag: String,
    direct: bool,
    propagated_from: Option<Guid>,
    propagate: bool,
}

/// One row of `metastore.propagated_attributes`, less its asset (the map key).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PropagatedValue {
    tenant: Arc<str>,
    attribute: String,
    value: String,
    propagated_from: Guid,
}

#[derive(Default)]
struct Inner {
    tenants: HashSet<Arc<str>>,
    assets: BucketedMap<Box<Asset>>,
    edges: BucketedMap<Box<Edge>>,
    /// The edges out of each upstream asset, for bounded walks downstream.
    edges_out: HashMap<Guid, Vec<Guid>>,
    classifications: BucketedMap<Classification>,
    classifications_by_asset: HashMap<Guid, Vec<Guid>>,
    propagated: BucketedMap<HashSet<PropagatedValue>>,
    /// How many propagated attribute values each origin has given.
    attribute_copies_from: HashMap<Guid, usize>,
    incidents: BucketedMap<Box<Incident>>,
    incident_links: BucketedMap<Vec<IncidentLink>>,
    snapshots: [TableSnapshot; 7],
}

impl Inner {
    /// Publishes how many rows the state holds.
    fn report(&self) {
        metrics::gauge!("lily_state_rows", "table" => "assets").set(self.assets.len() as f64);
        metrics::gauge!("lily_state_rows", "table" => "lineage_edges").set(self.edges.len() as f64);
        metrics::gauge!("lily_state_rows", "table" => "classifications")
            .set(self.classifications.len() as f64);
    }

    /// The shared copy of a short, much repeated string (tenant ids, type names).
    fn tenant(&mut self, id: &str) -> Arc<str> {
        if let Some(t) = self.tenants.get(id) {
            return t.clone();
        }
        let t: Arc<str> = Arc::from(id);
        self.tenants.insert(t.clone());
        t
    }

    fn insert_edge(&mut self, id: Guid, edge: Box<Edge>) {
        let upstream = edge.upstream;
        if let Some(old) = self.edges.insert(id, edge) {
            self.unlink_edge(id, old.upstream);
        }
        self.edges_out.entry(upstream).or_default().push(id);
    }

    fn remove_edge(&mut self, id: &Guid) {
        if let Some(old) = self.edges.remove(id) {
            self.unlink_edge(*id, old.upstream);
        }
    }

    fn unlink_edge(&mut self, id: Guid, upstream: Guid) {
        if let Some(ids) = self.edges_out.get_mut(&upstream) {
            ids.retain(|e| *e != id);
            if ids.is_empty() {
                self.edges_out.remove(&upstream);
            }
        }
    }

    fn add_propagated(&mut self, asset: Guid, value: PropagatedValue) {
        let origin = value.propagated_from;
        if self.propagated.get_or_default(asset).insert(value) {
            *self.attribute_copies_from.entry(origin).or_default() += 1;
        }
    }

    fn remove_propagated(&mut self, asset: Guid, value: &PropagatedValue) {
        let Some(set) = self.propagated.get_mut(&asset) else {
            return;
        };
        if set.remove(value)
            && let Some(n) = self.attribute_copies_from.get_mut(&value.propagated_from)
        {
            *n -= 1;
            if *n == 0 {
                self.attribute_copies_from.remove(&value.propagated_from);
            }
        }
        if set.is_empty() {
            self.propagated.remove(&asset);
        }
    }
}

/// A classification seen at an asset, for propagation's bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagAt {
    /// Tenant of the asset.
    pub tenant: Arc<str>,
    /// The tag.
    pub tag: String,
    /// `None` for a direct classification, else the origin it was propagated from.
    pub propagated_from: Option<Guid>,
    /// Whether a direct classification propagates.
    pub propagate: bool,
}

/// An attribute value seen at an asset, for propagation's bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributeAt {
    /// Tenant of the asset.
    pub tenant: Arc<str>,
    /// The attribute.
    pub attribute: String,
    /// `None` for the asset's own value, else the origin it was propagated from.
    pub propagated_from: Option<Guid>,
}

/// How much one origin may propagate to: hops downstream, and assets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReachLimits {
    /// Lineage hops from the origin.
    pub max_depth: usize,
    /// Assets reached.
    pub max_assets: usize,
}

/// What a walk downstream of an origin found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Within the limits: the assets reached and the longest hop count.
    Within {
        /// Assets downstream.
        assets: usize,
        /// Hops to the farthest.
        depth: usize,
    },
    /// Deeper than the limit (the walk stopped at `depth`).
    TooDeep {
        /// The depth at which the walk stopped.
        depth: usize,
    },
    /// More assets than the limit (the walk stopped at `assets`).
    TooMany {
        /// Assets seen when the walk stopped.
        assets: usize,
    },
}

/// The catalog state (see the module docs). Cheap to share: all methods take `&self`.
pub struct CatalogState {
    inner: Mutex<Inner>,
    attributes: Vec<PropagatedAttribute>,
}

impl std::fmt::Debug for CatalogState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("CatalogState")
            .field("assets", &inner.assets.len())
            .field("lineage_edges", &inner.edges.len())
            .field("classifications", &inner.classifications.len())
            .finish()
    }
}

impl CatalogState {
    /// An empty state; `attributes` are the asset attributes that propagate
    /// (they make up `state.asset_attributes`).
    pub fn new(attributes: Vec<PropagatedAttribute>) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            attributes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The rows of `table` now, as one batch (only the parts of it that
    /// changed since the last call are rebuilt).
    pub fn snapshot(&self, table: StateTable) -> RecordBatch {
        let mut inner = self.lock();
        let mut cached = std::mem::take(&mut inner.snapshots[table.index()]);
        let batch = cached.current(&inner, table, &self.attributes);
        inner.snapshots[table.index()] = cached;
        batch
    }

    /// Row counts: (assets, lineage edges, classifications).
    pub fn counts(&self) -> (usize, usize, usize) {
        let inner = self.lock();
        (
            inner.assets.len(),
            inner.edges.len(),
            inner.classifications.len(),
        )
    }

    /// Whether the state holds `asset` (of `guid`) when nothing refers to
    /// it yet: every container does; a column or BI field only with a tag,
    /// a propagated value, or a value of a propagating attribute.
    fn resident(&self, inner: &Inner, guid: Guid, asset: &Asset) -> bool {
        !lily_metastore::LEAF_ASSET_TYPES.contains(&&*asset.type_name)
            || inner.classifications_by_asset.contains_key(&guid)
            || inner.propagated.get(&guid).is_some()
            || snapshot::attribute_values(asset, &self.attributes)
                .next()
                .is_some()
    }

    /// The assets a batch refers to that the state does not hold and must
    /// fetch (`admit`) before the batch is applied: the columns a batch of
    /// classifications, propagated values or incident links names, and the
    /// columns an update of assets sends without their large unchanged
    /// values (TOAST), which only the metastore still has.
    pub fn unresolved(&self, batch: &ChangeBatch) -> Result<Vec<Guid>> {
        let table = batch.table.name.as_str();
        let key = match table {
            "classifications" | "propagated_attributes" | "incident_assets" => "asset_guid",
            "assets" => "guid",
            _ => return Ok(Vec::new()),
        };
        if batch.table.namespace != lily_metastore::METASTORE_SCHEMA {
            return Ok(Vec::new());
        }
        let records = &batch.records;
        let Some(ops) = records
            .column_by_name(lily_cdc::batch::OP)
            .and_then(|c| c.as_string_opt::<i32>())
        else {
            return Ok(Vec::new());
        };
        let row = columns::Columns::of_batch(table, records);
        let assets = row.uuid(key)?;
        let inner = self.lock();
        let mut out = HashSet::new();
        for i in 0..records.num_rows() {
            if matches!(ops.value(i), "d" | "t") {
                continue;
            }
            if key == "guid"
                && !(row.unchanged_toast(i, "description") || row.unchanged_toast(i, "owners"))
            {
                continue;
            }
            if let Some(g) = assets.get(i)
                && inner.assets.get(&g).is_none()
            {
                out.insert(g);
            }
        }
        Ok(out.into_iter().collect())
    }

    /// The classifications on `asset`.
    pub fn tags_at(&self, asset: Guid) -> Vec<TagAt> {
        let inner = self.lock();
        inner
            .classifications_by_asset
            .get(&asset)
            .into_iter()
            .flatten()
            .filter_map(|id| inner.classifications.get(id))
            .map(|c| TagAt {
                tenant: c.tenant.clone(),
                tag: c.tag.clone(),
                propagated_from: if c.direct { None } else { c.propagated_from },
                propagate: c.propagate,
            })
            .collect()
    }

    /// The propagating attributes at `asset`: its own configured values and
    /// the ones propagated to it.
    pub fn attributes_at(&self, asset: Guid) -> Vec<AttributeAt> {
        let inner = self.lock();
        let mut out: Vec<AttributeAt> = Vec::new();
        if let Some(a) = inner.assets.get(&asset) {
            for (attribute, _) in snapshot::attribute_values(a, &self.attributes) {
                out.push(AttributeAt {
                    tenant: a.tenant.clone(),
                    attribute: attribute.to_owned(),
                    propagated_from: None,
                });
            }
        }
        for p in inner.propagated.get(&asset).into_iter().flatten() {
            out.push(AttributeAt {
                tenant: p.tenant.clone(),
                attribute: p.attribute.clone(),
                propagated_from: Some(p.propagated_from),
            });
        }
        out.dedup();
        out
    }

    /// Whether a change of `asset` can change attribute propagation: it has
    /// a value that propagates, or copies of an earlier one are out there.
    pub fn attributes_matter(&self, asset: Guid) -> bool {
        let inner = self.lock();
        inner.attribute_copies_from.contains_key(&asset)
            || inner.assets.get(&asset).is_some_and(|a| {
                snapshot::attribute_values(a, &self.attributes)
                    .next()
                    .is_some()
            })
    }

    /// The qualified name of `asset`, if the state has it.
    pub fn qualified_name(&self, asset: Guid) -> Option<String> {
        self.lock()
            .assets
            .get(&asset)
            .map(|a| a.qualified_name.to_string())
    }

    /// How far downstream of `origin` a tag (or, with `None`, an
    /// attribute) travels, walked breadth first and given up as soon as it
    /// passes `limits`: the check costs at most what the limits allow.
    pub fn reach(&self, origin: Guid, tag: Option<&str>, limits: ReachLimits) -> Reach {
        let inner = self.lock();
        let mut seen: HashSet<Guid> = HashSet::from([origin]);
        let mut level = vec![origin];
        let mut depth = 0;
        while !level.is_empty() {
            let mut next = Vec::new();
            for asset in &level {
                for id in inner.edges_out.get(asset).into_iter().flatten() {
                    let Some(edge) = inner.edges.get(id) else {
                        continue;
                    };
                    if tag.is_some_and(|t| edge.blocked_tags.iter().any(|b| b == t)) {
                        continue;
                    }
                    if seen.insert(edge.downstream) {
                        next.push(edge.downstream);
                    }
                }
            }
            if next.is_empty() {
                break;
            }
            depth += 1;
            if depth > limits.max_depth {
                return Reach::TooDeep { depth };
            }
            if seen.len() - 1 > limits.max_assets {
                return Reach::TooMany {
                    assets: seen.len() - 1,
                };
            }
            level = next;
        }
        Reach::Within {
            assets: seen.len() - 1,
            depth,
        }
    }

    /// Every direct classification that propagates, as (tenant, asset, tag).
    pub fn tag_origins(&self) -> Vec<(Arc<str>, Guid, String)> {
        let inner = self.lock();
        inner
            .classifications
            .values()
            .filter(|c| c.direct && c.propagate)
            .map(|c| (c.tenant.clone(), c.asset, c.tag.clone()))
            .collect()
    }

    /// Every asset with a configured attribute value, as (tenant, asset, attribute).
    pub fn attribute_origins(&self) -> Vec<(Arc<str>, Guid, String)> {
        let inner = self.lock();
        let mut out = Vec::new();
        for (guid, a) in inner.assets.iter() {
            for (attribute, _) in snapshot::attribute_values(a, &self.attributes) {
                out.push((a.tenant.clone(), *guid, attribute.to_owned()));
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use arrow::array::{AsArray, FixedSizeBinaryArray};

    use super::*;

    fn asset(tenant: &Arc<str>, n: u128, description: &str) -> Box<Asset> {
        Box::new(Asset {
            tenant: tenant.clone(),
            type_name: Arc::from("table"),
            qualified_name: format!("db.t{n}").into(),
            name: format!("t{n}").into(),
            description: Some(description.into()),
            parent: None,
            owners: Box::new([]),
            certificate: None,
        })
    }

    fn descriptions(batch: &RecordBatch) -> HashMap<Guid, String> {
        let guids: &FixedSizeBinaryArray = batch.column(0).as_fixed_size_binary();
        let text = batch
            .column_by_name("description")
            .map(|c| c.as_string::<i32>().clone())
            .expect("description column");
        (0..batch.num_rows())
            .map(|i| {
                let g = u128::from_be_bytes(guids.value(i).try_into().expect("16 bytes"));
                (g, text.value(i).to_owned())
            })
            .collect()
    }

    #[test]
    fn a_snapshot_follows_changes_made_after_it() {
        let state = CatalogState::new(Vec::new());
        let tenant: Arc<str> = Arc::from("acme");
        let key = |n: u128| n.wrapping_mul(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        {
            let mut inner = state.lock();
            for n in 0..20_000 {
                inner.assets.insert(key(n), asset(&tenant, n, "first"));
            }
        }
        let first = descriptions(&state.snapshot(StateTable::Assets));
        assert_eq!(first.len(), 20_000);
        assert!(first.values().all(|d| d == "first"));
        {
            let mut inner = state.lock();
            inner.assets.insert(key(7), asset(&tenant, 7, "second"));
            if let Some(a) = inner.assets.get_mut(&key(8)) {
                a.description = Some("second".into());
            }
            inner.assets.remove(&key(9));
            inner
                .assets
                .insert(key(20_000), asset(&tenant, 20_000, "new"));
        }
        let second = descriptions(&state.snapshot(StateTable::Assets));
        assert_eq!(second.len(), 20_000);
        assert_eq!(second[&key(7)], "second");
        assert_eq!(second[&key(8)], "second");
        assert!(!second.contains_key(&key(9)));
        assert_eq!(second[&key(20_000)], "new");
        let unchanged = second.values().filter(|d| *d == "first").count();
        assert_eq!(unchanged, 20_000 - 3);
        // A truncate empties it.
        state.lock().assets.clear();
        assert_eq!(state.snapshot(StateTable::Assets).num_rows(), 0);
    }
}
