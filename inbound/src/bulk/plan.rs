//! What a batch asks of the catalog, worked out before anything is
//! written: assets by qualified name (or a container by URN until it is
//! named), parent links, complete column lists, lineage, classifications
//! and removals. Each source builds one from its own format;
//! [`super::apply`] writes it.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

/// The longest qualified name, as the catalog API accepts it.
pub const MAX_NAME: usize = 2000;

/// A record that could not be read or mapped, with where it was.
#[derive(Debug, Clone, PartialEq)]
pub struct Unreadable {
    /// Its position (`proposals[3]`, `orders.ndjson:12`).
    pub position: String,
    /// Why.
    pub error: String,
}

/// Where a change lands: an asset by qualified name, or a container known
/// only by its URN until its `containerProperties` names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// An asset by qualified name.
    Named(String),
    /// A container by URN.
    Container(String),
}

/// The change to one asset; `None` leaves a field as it is.
#[derive(Debug, Clone, PartialEq)]
pub struct AssetChange {
    /// The type an aspect states (`subTypes`, `viewProperties`).
    pub type_name: Option<&'static str>,
    /// The type a new asset gets when no aspect states one.
    pub default_type: &'static str,
    /// The display name an aspect gives.
    pub name: Option<String>,
    /// The name a new asset gets otherwise (the last part of its
    /// qualified name).
    pub leaf: String,
    /// The parent asset's qualified name (a column's table).
    pub parent: Option<String>,
    /// The description.
    pub description: Option<String>,
    /// Attributes merged into the asset's.
    pub attributes: Map<String, Value>,
    /// The owners, replacing the asset's.
    pub owners: Option<Vec<String>>,
}

impl AssetChange {
    /// A change that creates an asset of `default_type` named `leaf`.
    pub fn new(default_type: &'static str, leaf: String) -> Self {
        Self {
            type_name: None,
            default_type,
            name: None,
            leaf,
            parent: None,
            description: None,
            attributes: Map::new(),
            owners: None,
        }
    }

    /// Takes what `other` states over what `self` does.
    pub fn merge(&mut self, other: AssetChange) {
        self.type_name = other.type_name.or(self.type_name);
        self.name = other.name.or(self.name.take());
        self.parent = other.parent.or(self.parent.take());
        self.description = other.description.or(self.description.take());
        self.owners = other.owners.or(self.owners.take());
        self.attributes.extend(other.attributes);
    }
}

/// A lineage edge by qualified names, with the process (a job) it runs
/// through, if any.
pub type Edge = (String, String, Option<String>);

/// What a batch asks of the catalog.
#[derive(Debug, Default)]
pub struct Plan {
    /// Assets to create or update.
    pub assets: BTreeMap<Target, AssetChange>,
    /// Container URN to qualified name, from `containerProperties`.
    pub container_names: BTreeMap<String, String>,
    /// Child to its container's URN (`container` aspects).
    pub links: BTreeMap<Target, String>,
    /// A table's complete column list (`schemaMetadata`): columns it no
    /// longer lists are removed.
    pub schemas: BTreeMap<String, BTreeSet<String>>,
    /// Lineage edges.
    pub edges: BTreeSet<Edge>,
    /// Assets whose upstream list this batch states in full: edges into
    /// them (and their columns) without a process that it no longer names
    /// are removed.
    pub lineage_of: BTreeSet<String>,
    /// (asset, classification) and where it was given.
    pub tags: BTreeMap<(Target, String), String>,
    /// Entities removed (`status.removed`, a DELETE of the key aspect).
    pub removals: BTreeSet<Target>,
    /// Stateful ingestion's checkpoints: (URN, aspect, value as JSON).
    pub checkpoints: Vec<(String, String, String)>,
    /// Proposals applied, by aspect.
    pub applied: BTreeMap<&'static str, u64>,
    /// Proposals skipped (no catalog metadata, or not taken yet), by aspect.
    pub skipped: BTreeMap<&'static str, u64>,
    /// Proposals that could not be read.
    pub rejected: Vec<Unreadable>,
}

/// The asset types of the catalog (`lily.asset_types`).
const ASSET_TYPES: &[&str] = &[
    "database",
    "schema",
    "table",
    "view",
    "column",
    "dashboard",
    "bi_field",
    "process",
    "container",
    "chart",
];

/// The catalog's name for asset type `name`, if it is one.
pub fn asset_type(name: &str) -> Option<&'static str> {
    ASSET_TYPES.iter().copied().find(|t| *t == name)
}

/// The last part of a dotted name.
pub fn leaf(qualified: &str) -> String {
    qualified.rsplit('.').next().unwrap_or(qualified).to_owned()
}
