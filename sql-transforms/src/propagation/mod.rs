//! Lineage propagation: a tag (or a configured asset attribute) on an asset
//! is carried to every asset downstream of it, and taken back when its
//! source goes.
//!
//! The closure is SQL (`sql-transforms/propagation/*.sql`, a recursive
//! query over `state.lineage_edges`); this module decides which origins to
//! re-compute from the changes that arrive, and writes the result back to
//! the metastore ([`writeback`]). Each write-back replaces, for the origins
//! it re-computed, exactly the propagated rows their closure justifies: what
//! already exists is left alone (no change, so no loop), what is no longer
//! justified is deleted.

mod origins;
mod sink;
mod writeback;

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use lily_cdc::types::ValueKind;

use crate::error::Result;
use crate::output::OutputContract;
use crate::source::TransformSource;

pub use origins::Dirty;
pub use sink::PropagationSink;
pub use writeback::WriteStats;

/// The transform that propagates classifications.
pub const CLASSIFICATIONS: &str = "propagation/classifications";
/// The transform that propagates asset attributes.
pub const ATTRIBUTES: &str = "propagation/attributes";
/// The input table of origins to re-compute.
pub const ORIGINS: &str = "origins";

/// What a propagation transform propagates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagated {
    /// Classification tags → `metastore.classifications`.
    Tags,
    /// Asset attribute values → `metastore.propagated_attributes`.
    Attributes,
}

impl Propagated {
    /// The transform's name.
    pub fn transform(self) -> &'static str {
        match self {
            Propagated::Tags => CLASSIFICATIONS,
            Propagated::Attributes => ATTRIBUTES,
        }
    }

    /// The column naming what propagates: `tag` or `attribute`.
    pub fn key(self) -> &'static str {
        match self {
            Propagated::Tags => "tag",
            Propagated::Attributes => "attribute",
        }
    }

    /// Schema of the `origins` table the transform reads.
    pub fn origins_schema(self) -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("tenant_id", DataType::Utf8, false),
            ValueKind::Uuid.field("origin_guid"),
            Field::new(self.key(), DataType::Utf8, false),
        ]))
    }

    /// The columns the transform must output, in order.
    pub fn output_fields(self) -> Vec<Field> {
        let mut fields = vec![
            Field::new("tenant_id", DataType::Utf8, true),
            Field::new("asset_guid", DataType::FixedSizeBinary(16), true),
            Field::new(self.key(), DataType::Utf8, true),
        ];
        if self == Propagated::Attributes {
            fields.push(Field::new("value", DataType::Utf8, true));
        }
        fields.push(Field::new(
            "propagated_from",
            DataType::FixedSizeBinary(16),
            true,
        ));
        fields
    }
}

/// Inputs and output contract of a file under `propagation/`.
pub(crate) fn shape_of(
    source: &TransformSource,
) -> Result<(Vec<(String, SchemaRef)>, OutputContract)> {
    let which = match source.name.as_str() {
        CLASSIFICATIONS => Propagated::Tags,
        ATTRIBUTES => Propagated::Attributes,
        other => {
            return Err(source.error(format!(
                "{other}: propagation/ holds classifications.sql and attributes.sql only"
            )));
        }
    };
    Ok((
        vec![(ORIGINS.to_owned(), which.origins_schema())],
        OutputContract::Exactly(which.output_fields()),
    ))
}
