//! The catalog state as Arrow record batches.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, FixedSizeBinaryBuilder, ListBuilder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
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

/// Builds the batch of one state table.
pub fn build(inner: &Inner, table: StateTable, rules: &[PropagatedAttribute]) -> RecordBatch {
    let schema = schema(table);
    let columns: Vec<ArrayRef> = match table {
        StateTable::Assets => {
            let n = inner.assets.len();
            let (mut guid, mut parent) = (Uuids::new(n), Uuids::new(n));
            let mut tenant = StringBuilder::new();
            let mut type_name = StringBuilder::new();
            let mut qname = StringBuilder::new();
            let mut owners = list_builder();
            let mut certificate = StringBuilder::new();
            let mut name = StringBuilder::new();
            let mut description = StringBuilder::new();
            for (g, a) in &inner.assets {
                guid.push(Some(*g));
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
        StateTable::LineageEdges => {
            let n = inner.edges.len();
            let (mut id, mut up, mut down, mut process) =
                (Uuids::new(n), Uuids::new(n), Uuids::new(n), Uuids::new(n));
            let mut tenant = StringBuilder::new();
            let mut blocked = list_builder();
            for (g, e) in &inner.edges {
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
            let n = inner.classifications.len();
            let (mut id, mut asset, mut from) = (Uuids::new(n), Uuids::new(n), Uuids::new(n));
            let mut tenant = StringBuilder::new();
            let mut tag = StringBuilder::new();
            let mut source = StringBuilder::new();
            let mut propagate = BooleanBuilder::new();
            for (g, c) in &inner.classifications {
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
            for (g, values) in &inner.propagated {
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
            for (g, a) in &inner.assets {
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
            let mut id = Uuids::new(inner.incidents.len());
            let mut tenant = StringBuilder::new();
            let mut title = StringBuilder::new();
            let mut state = StringBuilder::new();
            let mut severity = StringBuilder::new();
            let mut incident_type = StringBuilder::new();
            let mut url = StringBuilder::new();
            let mut updated = TimestampMicrosecondBuilder::new().with_timezone("UTC");
            for (g, i) in &inner.incidents {
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
            for (g, links) in &inner.incident_links {
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
