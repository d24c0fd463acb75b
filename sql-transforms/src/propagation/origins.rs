//! Which origins a batch of changes makes stale.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::sync::Arc;

use arrow::array::{Array, AsArray, FixedSizeBinaryBuilder, RecordBatch, StringBuilder};
use arrow::datatypes::UInt32Type;
use lily_cdc::ChangeBatch;
use lily_cdc::batch::{BEFORE, OP, XID};

use super::Propagated;
use crate::error::{Result, TransformError};
use crate::state::columns::Columns;
use crate::state::{CatalogState, Guid};

/// An origin: (tenant, asset, tag or attribute).
pub type Origin = (Arc<str>, Guid, String);

/// What must be re-computed since the last write-back.
#[derive(Debug, Default)]
pub struct Dirty {
    /// Direct classifications added, changed or removed.
    tags: BTreeSet<Origin>,
    /// Assets whose propagating attributes may have changed.
    assets: BTreeSet<(Arc<str>, Guid)>,
    /// Attribute origins whose copies just changed.
    attributes: BTreeSet<Origin>,
    /// Assets a lineage edge out of which was added, changed or removed.
    upstreams: HashSet<Guid>,
    /// Everything: after a truncate, at start-up, after a reload.
    pub full: bool,
}

impl Dirty {
    /// Everything to re-compute.
    pub fn everything() -> Self {
        Self {
            full: true,
            ..Self::default()
        }
    }

    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        !self.full
            && self.tags.is_empty()
            && self.assets.is_empty()
            && self.attributes.is_empty()
            && self.upstreams.is_empty()
    }

    /// Whether a lineage edge was added, changed or removed.
    pub fn lineage_changed(&self) -> bool {
        !self.upstreams.is_empty()
    }

    /// How many entries are waiting (for the flush policy).
    pub fn len(&self) -> usize {
        self.tags.len()
            + self.assets.len()
            + self.attributes.len()
            + self.upstreams.len()
            + usize::from(self.full)
    }

    /// Notes what `batch` changes. Snapshot rows count as inserts: the
    /// start-up pass ran on the state loaded before the slot's snapshot, so
    /// a tag committed in between reaches propagation only through them.
    /// Asset changes count only when `state` (already past this batch) says
    /// attributes matter for them. Copies written by propagation's own
    /// transactions (`own`) are what it just computed and are skipped.
    pub fn collect(
        &mut self,
        batch: &ChangeBatch,
        attributes: bool,
        state: &CatalogState,
        own: &OwnWrites,
    ) -> Result<()> {
        if batch.table.namespace != lily_metastore::METASTORE_SCHEMA {
            return Ok(());
        }
        let table = batch.table.name.as_str();
        if !matches!(
            table,
            "classifications" | "lineage_edges" | "assets" | "propagated_attributes"
        ) {
            return Ok(());
        }
        let records = &batch.records;
        let Some(ops) = records
            .column_by_name(OP)
            .and_then(|c| c.as_string_opt::<i32>())
        else {
            return Err(TransformError::State(format!(
                "changes of {table} have no {OP}"
            )));
        };
        let xids = records
            .column_by_name(XID)
            .and_then(|c| c.as_primitive_opt::<UInt32Type>());
        let copies = matches!(table, "classifications" | "propagated_attributes");
        let row = Columns::of_batch(table, records);
        let before_array = records
            .column_by_name(BEFORE)
            .and_then(|c| c.as_struct_opt());
        let before = before_array.map(|b| Columns::of_before(table, b));
        for i in 0..records.num_rows() {
            let op = ops.value(i);
            if copies && xids.is_some_and(|x| own.contains(x.value(i))) {
                continue;
            }
            if op == "t" {
                self.full = true;
                continue;
            }
            let mut images = vec![&row];
            if op == "u"
                && before_array.is_some_and(|b| b.is_valid(i))
                && let Some(b) = &before
            {
                images.push(b);
            }
            for image in images {
                match table {
                    "classifications" => {
                        // A direct tag is an origin. A propagated copy that
                        // someone else changed (deleted by hand, removed by
                        // a cascade) makes its origin re-checked, which puts
                        // back what the closure still justifies.
                        let origin = match image.text("source")?.get(i) {
                            Some("propagated") => image.uuid("propagated_from")?.get(i),
                            _ => image.uuid("asset_guid")?.get(i),
                        };
                        if let (Some(tenant), Some(origin), Some(tag)) = (
                            image.text("tenant_id")?.get(i),
                            origin,
                            image.text("tag")?.get(i),
                        ) {
                            self.tags
                                .insert((Arc::from(tenant), origin, tag.to_owned()));
                        }
                    }
                    "propagated_attributes" => {
                        if let (Some(tenant), Some(origin), Some(attribute)) = (
                            image.text("tenant_id")?.get(i),
                            image.uuid("propagated_from")?.get(i),
                            image.text("attribute")?.get(i),
                        ) {
                            self.attributes.insert((
                                Arc::from(tenant),
                                origin,
                                attribute.to_owned(),
                            ));
                        }
                    }
                    "lineage_edges" => {
                        if let Some(up) = image.uuid("upstream_guid")?.get(i) {
                            self.upstreams.insert(up);
                        }
                    }
                    _ if attributes && op != "d" => {
                        if let (Some(tenant), Some(guid)) =
                            (image.text("tenant_id")?.get(i), image.uuid("guid")?.get(i))
                            && state.attributes_matter(guid)
                        {
                            self.assets.insert((Arc::from(tenant), guid));
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// The origins to re-compute for `what`, resolved against the state
    /// (an edge's upstream stands for every origin whose tag or attribute
    /// reaches it); `None` when everything is to be re-computed.
    pub fn origins(
        &self,
        what: Propagated,
        state: &CatalogState,
        attribute_names: &[String],
    ) -> Option<BTreeSet<Origin>> {
        if self.full {
            return None;
        }
        let mut out = BTreeSet::new();
        match what {
            Propagated::Tags => {
                out.extend(self.tags.iter().cloned());
                for up in &self.upstreams {
                    for t in state.tags_at(*up) {
                        match t.propagated_from {
                            None => out.insert((t.tenant, *up, t.tag)),
                            Some(origin) => out.insert((t.tenant, origin, t.tag)),
                        };
                    }
                }
            }
            Propagated::Attributes => {
                out.extend(self.attributes.iter().cloned());
                for (tenant, guid) in &self.assets {
                    for name in attribute_names {
                        out.insert((tenant.clone(), *guid, name.clone()));
                    }
                }
                for up in &self.upstreams {
                    for a in state.attributes_at(*up) {
                        out.insert((a.tenant, a.propagated_from.unwrap_or(*up), a.attribute));
                    }
                }
            }
        }
        Some(out)
    }
}

/// The transaction ids of propagation's latest write-backs, so that their
/// copies coming back through the stream are not taken for someone else's
/// change (which would re-compute each large closure a second time).
#[derive(Debug, Default)]
pub struct OwnWrites {
    xids: VecDeque<u32>,
}

impl OwnWrites {
    /// How many write-backs are remembered: far more than can be in flight
    /// between a commit and its changes arriving.
    const KEPT: usize = 64;

    /// Remembers a committed write-back.
    pub fn record(&mut self, xid: u32) {
        if self.xids.len() == Self::KEPT {
            self.xids.pop_front();
        }
        self.xids.push_back(xid);
    }

    /// Whether `xid` is one of the remembered write-backs.
    pub fn contains(&self, xid: u32) -> bool {
        self.xids.contains(&xid)
    }
}

/// The `origins` table for `what`.
pub fn origins_batch(what: Propagated, origins: &BTreeSet<Origin>) -> Result<RecordBatch> {
    let mut tenant = StringBuilder::new();
    let mut guid = FixedSizeBinaryBuilder::with_capacity(origins.len(), 16);
    let mut key = StringBuilder::new();
    for (t, g, k) in origins {
        tenant.append_value(t);
        guid.append_value(g.to_be_bytes())
            .map_err(|e| TransformError::State(e.to_string()))?;
        key.append_value(k);
    }
    RecordBatch::try_new(
        what.origins_schema(),
        vec![
            Arc::new(tenant.finish()),
            Arc::new(guid.finish()),
            Arc::new(key.finish()),
        ],
    )
    .map_err(|e| TransformError::State(e.to_string()))
}
