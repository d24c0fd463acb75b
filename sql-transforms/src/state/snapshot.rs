//! The catalog state as Arrow record batches.

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    ArrayRef, BooleanBuilder, FixedSizeBinaryBuilder, ListBuilder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use lily_cdc::types::ValueKind;
use lily_config::PropagatedAttribute;

use super::{Asset, Guid, Inner, StateTable};

fn uuid(name: &str) -> Field {
    ValueKind::Uuid.field(name)
}

fn text(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true)
}

fn text_list(name: &str) -> Field {
    ValueKind::List(Box::new(ValueKind::Text)).field(name)
}

/// The schema of a state table.
pub fn schema(table: StateTable) -> SchemaRef {
    let fields = match table {
        StateTable::Assets => vec![
            uuid("guid"),
            text("tenant_id"),
            text("type_name"),
            text("qualified_name"),
            uuid("parent_guid"),
            text_list("owners"),
            text("certificate"),
            text("name"),
            text("description"),
        ],
        StateTable::LineageEdges => vec![
            uuid("edge_id"),
            text("tenant_id"),
            uuid("upstream_guid"),
            uuid("downstream_guid"),
            uuid("process_guid"),
            text_list("blocked_tags"),
        ],
        StateTable::Classifications => vec![
            uuid("classification_id"),
            text("tenant_id"),
            uuid("asset_guid"),
            text("tag"),
            text("source"),
            uuid("propagated_from"),
            Field::new("propagate", DataType::Boolean, true),
        ],
        StateTable::PropagatedAttributes => vec![
            text("tenant_id"),
            uuid("asset_guid"),
            text("attribute"),
            text("value"),
            uuid("propagated_from"),
        ],
        StateTable::AssetAttributes => vec![
            text("tenant_id"),
            uuid("asset_guid"),
            text("attribute"),
            text("value"),
        ],
        StateTable::Incidents => vec![
            uuid("incident_id"),
            text("tenant_id"),
            text("title"),
            text("state"),
            text("severity"),
            text("incident_type"),
            text("url"),
            Field::new(
                "updated_at",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
        ],
        StateTable::IncidentAssets => vec![
            text("tenant_id"),
            uuid("incident_id"),
            text("qualified_name"),
            uuid("asset_guid"),
        ],
    };
    Arc::new(Schema::new(fields))
}

/// The values of the configured attributes an asset has, as (attribute, value).
pub fn attribute_values<'a>(
    asset: &'a Asset,
    rules: &'a [PropagatedAttribute],
) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
    rules.iter().flat_map(move |rule| {
        let values: Vec<&'a str> = match rule.name.as_str() {
            "certificate" => asset.certificate.as_deref().into_iter().collect(),
            "owners" => asset.owners.iter().map(String::as_str).collect(),
            _ => Vec::new(),
        };
        values
            .into_iter()
            .filter(|v| rule.values.is_empty() || rule.values.iter().any(|x| x == v))
            .map(|v| (rule.name.as_str(), v))
    })
}

struct Uuids(FixedSizeBinaryBuilder);

impl Uuids {
    fn new(n: usize) -> Self {
        Self(FixedSizeBinaryBuilder::with_capacity(n, 16))
    }

    fn push(&mut self, v: Option<Guid>) {
        match v {
            // Appending exactly 16 bytes to a 16-byte builder cannot fail.
            Some(g) => self.0.append_value(g.to_be_bytes()).unwrap_or_default(),
            None => self.0.append_null(),
        }
    }

    fn finish(mut self) -> ArrayRef {
        Arc::new(self.0.finish())
    }
}

fn list_builder() -> ListBuilder<StringBuilder> {
    ListBuilder::new(StringBuilder::new()).with_field(Arc::new(Field::new(
        "item",
        DataType::Utf8,
        true,
    )))
}

fn push_list(b: &mut ListBuilder<StringBuilder>, values: &[String]) {
    for v in values {
        b.values().append_value(v);
    }
    b.append(true);
}

fn finish_strings(mut b: StringBuilder) -> ArrayRef {
    Arc::new(b.finish())
}

/// Number of buckets the rows of `table` are kept in.
fn bucket_count(inner: &Inner, table: StateTable) -> usize {
    match table {
        StateTable::Assets | StateTable::AssetAttributes => inner.assets.bucket_count(),
        StateTable::LineageEdges => inner.edges.bucket_count(),
        StateTable::Classifications => inner.classifications.bucket_count(),
        StateTable::PropagatedAttributes => inner.propagated.bucket_count(),
        StateTable::Incidents => inner.incidents.bucket_count(),
        StateTable::IncidentAssets => inner.incident_links.bucket_count(),
    }
}

/// Which contents bucket `b` of `table` has now.
fn bucket_tag(inner: &Inner, table: StateTable, b: usize) -> (u64, u64) {
    match table {
        StateTable::Assets | StateTable::AssetAttributes => inner.assets.tag(b),
        StateTable::LineageEdges => inner.edges.tag(b),
        StateTable::Classifications => inner.classifications.tag(b),
        StateTable::PropagatedAttributes => inner.propagated.tag(b),
        StateTable::Incidents => inner.incidents.tag(b),
        StateTable::IncidentAssets => inner.incident_links.tag(b),
    }
}

/// The Arrow copy of one state table, kept per bucket of its rows so a
/// change rebuilds only the part it fell into.
#[derive(Default)]
pub struct TableSnapshot {
    parts: Vec<Option<((u64, u64), RecordBatch)>>,
    whole: Option<RecordBatch>,
}

impl TableSnapshot {
    /// The rows of `table` now, as one batch: the parts whose bucket
    /// changed are rebuilt, the others reused.
    pub fn current(
        &mut self,
        inner: &Inner,
        table: StateTable,
        rules: &[PropagatedAttribute],
    ) -> RecordBatch {
        let started = Instant::now();
        let n = bucket_count(inner, table);
        self.parts.resize(n, None);
        let mut rebuilt = 0u64;
        for (b, part) in self.parts.iter_mut().enumerate() {
            let tag = bucket_tag(inner, table, b);
            if !matches!(part, Some((t, _)) if *t == tag) {
                *part = Some((tag, build_part(inner, table, b, rules)));
                rebuilt += 1;
            }
        }
        if rebuilt == 0
            && let Some(whole) = &self.whole
        {
            return whole.clone();
        }
        let schema = schema(table);
        let parts = self
            .parts
            .iter()
            .flatten()
            .map(|(_, batch)| batch)
            .filter(|batch| batch.num_rows() > 0);
        // The parts are built to the schema above; a mismatch is a bug here.
        let whole = concat_batches(&schema, parts).expect("state parts match their schema");
        self.whole = Some(whole.clone());
        metrics::histogram!("lily_state_snapshot_seconds", "table" => table.name())
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("lily_state_snapshot_parts_rebuilt_total", "table" => table.name())
            .increment(rebuilt);
        whole
    }
}

/// The columns of `state.assets` for `n` rows.
fn asset_columns<'a>(n: usize, rows: impl Iterator<Item = (Guid, &'a Asset)>) -> Vec<ArrayRef> {
    let (mut guid, mut parent) = (Uuids::new(n), Uuids::new(n));
    let mut tenant = StringBuilder::new();
    let mut type_name = StringBuilder::new();
    let mut qname = StringBuilder::new();
    let mut owners = list_builder();
    let mut certificate = StringBuilder::new();
    let mut name = StringBuilder::new();
    let mut description = StringBuilder::new();
    for (g, a) in rows {
        guid.push(Some(g));
        tenant.append_value(&a.tenant);
        type_name.append_value(&a.type_name);
        qname.append_value(&a.qualified_name);
        parent.push(a.parent);
        push_list(&mut owners, &a.owners);
        certificate.append_option(a.certificate.as_deref());
        name.append_value(&a.name);
        description.append_option(a.description.as_deref());
    }
    vec![
        guid.finish(),
        finish_strings(tenant),
        finish_strings(type_name),
        finish_strings(qname),
        parent.finish(),
        Arc::new(owners.finish()),
        finish_strings(certificate),
        finish_strings(name),
        finish_strings(description),
    ]
}

/// `assets` as a batch of `state.assets`.
pub fn assets_batch(assets: &[(Guid, Asset)]) -> RecordBatch {
    let columns = asset_columns(assets.len(), assets.iter().map(|(g, a)| (*g, a)));
    // Built to the schema of the table; a mismatch is a bug here.
    RecordBatch::try_new(schema(StateTable::Assets), columns).expect("assets match their schema")
}

/// Builds the batch of bucket `b` of one state table.
fn build_part(
    inner: &Inner,
    table: StateTable,
    b: usize,
    rules: &[PropagatedAttribute],
) -> RecordBatch {
    let schema = schema(table);
    let columns: Vec<ArrayRef> = match table {
        StateTable::Assets => asset_columns(
            inner.assets.bucket(b).len(),
            inner.assets.bucket(b).iter().map(|(g, a)| (*g, a.as_ref())),
        ),
        StateTable::LineageEdges => {
            let rows = inner.edges.bucket(b);
            let n = rows.len();
            let (mut id, mut up, mut down, mut process) =
                (Uuids::new(n), Uuids::new(n), Uuids::new(n), Uuids::new(n));
            let mut tenant = StringBuilder::new();
            let mut blocked = list_builder();
            for (g, e) in rows {
                id.push(Some(*g));
                tenant.append_value(&e.tenant);
                up.push(Some(e.upstream));
                down.push(Some(e.downstream));
                process.push(e.process);
                push_list(&mut blocked, &e.blocked_tags);
            }
            vec![
                id.finish(),
                finish_strings(tenant),
                up.finish(),
                down.finish(),
                process.finish(),
                Arc::new(blocked.finish()),
            ]
        }
        StateTable::Classifications => {
            let rows = inner.classifications.bucket(b);
            let n = rows.len();
            let (mut id, mut asset, mut from) = (Uuids::new(n), Uuids::new(n), Uuids::new(n));
            let mut tenant = StringBuilder::new();
            let mut tag = StringBuilder::new();
            let mut source = StringBuilder::new();
            let mut propagate = BooleanBuilder::new();
            for (g, c) in rows {
                id.push(Some(*g));
                tenant.append_value(&c.tenant);
                asset.push(Some(c.asset));
                tag.append_value(&c.tag);
                source.append_value(if c.direct { "direct" } else { "propagated" });
                from.push(c.propagated_from);
                propagate.append_value(c.propagate);
            }
            vec![
                id.finish(),
                finish_strings(tenant),
                asset.finish(),
                finish_strings(tag),
                finish_strings(source),
                from.finish(),
                Arc::new(propagate.finish()),
            ]
        }
        StateTable::PropagatedAttributes => {
            let (mut asset, mut from) = (Uuids::new(0), Uuids::new(0));
            let mut tenant = StringBuilder::new();
            let mut attribute = StringBuilder::new();
            let mut value = StringBuilder::new();
            for (g, values) in inner.propagated.bucket(b) {
                for p in values {
                    tenant.append_value(&p.tenant);
                    asset.push(Some(*g));
                    attribute.append_value(&p.attribute);
                    value.append_value(&p.value);
                    from.push(Some(p.propagated_from));
                }
            }
            vec![
                finish_strings(tenant),
                asset.finish(),
                finish_strings(attribute),
                finish_strings(value),
                from.finish(),
            ]
        }
        StateTable::AssetAttributes => {
            let mut asset = Uuids::new(0);
            let mut tenant = StringBuilder::new();
            let mut attribute = StringBuilder::new();
            let mut value = StringBuilder::new();
            for (g, a) in inner.assets.bucket(b) {
                for (attr, v) in attribute_values(a, rules) {
                    tenant.append_value(&a.tenant);
                    asset.push(Some(*g));
                    attribute.append_value(attr);
                    value.append_value(v);
                }
            }
            vec![
                finish_strings(tenant),
                asset.finish(),
                finish_strings(attribute),
                finish_strings(value),
            ]
        }
        StateTable::Incidents => {
            let rows = inner.incidents.bucket(b);
            let mut id = Uuids::new(rows.len());
            let mut tenant = StringBuilder::new();
            let mut title = StringBuilder::new();
            let mut state = StringBuilder::new();
            let mut severity = StringBuilder::new();
            let mut incident_type = StringBuilder::new();
            let mut url = StringBuilder::new();
            let mut updated = TimestampMicrosecondBuilder::new().with_timezone("UTC");
            for (g, i) in rows {
                id.push(Some(*g));
                tenant.append_value(&i.tenant);
                title.append_option(i.title.as_deref());
                state.append_value(&i.state);
                severity.append_option(i.severity.as_deref());
                incident_type.append_option(i.incident_type.as_deref());
                url.append_option(i.url.as_deref());
                updated.append_option(i.updated_at);
            }
            vec![
                id.finish(),
                finish_strings(tenant),
                finish_strings(title),
                finish_strings(state),
                finish_strings(severity),
                finish_strings(incident_type),
                finish_strings(url),
                Arc::new(updated.finish()),
            ]
        }
        StateTable::IncidentAssets => {
            let (mut incident, mut asset) = (Uuids::new(0), Uuids::new(0));
            let mut tenant = StringBuilder::new();
            let mut qname = StringBuilder::new();
            for (g, links) in inner.incident_links.bucket(b) {
                for l in links {
                    tenant.append_value(&l.tenant);
                    incident.push(Some(*g));
                    qname.append_value(&l.qualified_name);
                    asset.push(l.asset);
                }
            }
            vec![
                finish_strings(tenant),
                incident.finish(),
                finish_strings(qname),
                asset.finish(),
            ]
        }
    };
    // The columns are built to the schema above; a mismatch is a bug here.
    RecordBatch::try_new(schema, columns).expect("state snapshot matches its schema")
}
