//! PostgreSQL types and the Arrow types their values become.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, TimeUnit};

/// Field metadata key of Arrow canonical extension types.
pub const EXTENSION_NAME: &str = "ARROW:extension:name";
/// Field metadata key carrying the PostgreSQL type oid of a column.
pub const PG_TYPE_OID: &str = "pg.type_oid";

/// How a PostgreSQL type's values are decoded and stored in Arrow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueKind {
    /// bool → Boolean.
    Bool,
    /// int2 → Int16.
    Int16,
    /// int4 → Int32.
    Int32,
    /// int8 → Int64.
    Int64,
    /// oid, xid → UInt32.
    UInt32,
    /// float4 → Float32.
    Float32,
    /// float8 → Float64.
    Float64,
    /// text, varchar, bpchar, name, "char" → Utf8.
    Text,
    /// json, jsonb → Utf8 tagged `arrow.json`.
    Json {
        /// jsonb's binary form starts with a version byte.
        jsonb: bool,
    },
    /// uuid → FixedSizeBinary(16) tagged `arrow.uuid`.
    Uuid,
    /// date → Date32.
    Date,
    /// timestamp → Timestamp(µs).
    Timestamp,
    /// timestamptz → Timestamp(µs, UTC).
    TimestampTz,
    /// numeric → Utf8 in plain decimal notation (its precision is per value).
    Numeric,
    /// bytea → Binary.
    Bytea,
    /// A one-dimensional array → List of the element kind.
    List(Box<ValueKind>),
    /// Any other type → its raw bytes as Binary, the type oid in the field metadata.
    Raw,
}

impl ValueKind {
    /// The kind for a type oid.
    pub fn for_type(oid: u32) -> ValueKind {
        use ValueKind::*;
        match oid {
            16 => Bool,
            17 => Bytea,
            18 | 19 | 25 | 1042 | 1043 => Text,
            20 => Int64,
            21 => Int16,
            23 => Int32,
            26 | 28 => UInt32,
            114 => Json { jsonb: false },
            3802 => Json { jsonb: true },
            700 => Float32,
            701 => Float64,
            1082 => Date,
            1114 => Timestamp,
            1184 => TimestampTz,
            1700 => Numeric,
            2950 => Uuid,
            1000 => List(Box::new(Bool)),
            1005 => List(Box::new(Int16)),
            1007 => List(Box::new(Int32)),
            1016 => List(Box::new(Int64)),
            1021 => List(Box::new(Float32)),
            1022 => List(Box::new(Float64)),
            1009 | 1014 | 1015 => List(Box::new(Text)),
            1182 => List(Box::new(Date)),
            1185 => List(Box::new(TimestampTz)),
            1231 => List(Box::new(Numeric)),
            2951 => List(Box::new(Uuid)),
            199 => List(Box::new(Json { jsonb: false })),
            3807 => List(Box::new(Json { jsonb: true })),
            _ => Raw,
        }
    }

    /// The Arrow data type of the kind.
    pub fn data_type(&self) -> DataType {
        use ValueKind::*;
        match self {
            Bool => DataType::Boolean,
            Int16 => DataType::Int16,
            Int32 => DataType::Int32,
            Int64 => DataType::Int64,
            UInt32 => DataType::UInt32,
            Float32 => DataType::Float32,
            Float64 => DataType::Float64,
            Text | Json { .. } | Numeric => DataType::Utf8,
            Uuid => DataType::FixedSizeBinary(16),
            Date => DataType::Date32,
            Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            TimestampTz => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            Bytea | Raw => DataType::Binary,
            List(inner) => DataType::List(Arc::new(inner.field("item"))),
        }
    }

    /// A nullable field of this kind, with extension metadata where Arrow has a canonical one.
    pub fn field(&self, name: &str) -> Field {
        let field = Field::new(name, self.data_type(), true);
        let ext = match self {
            ValueKind::Uuid => Some("arrow.uuid"),
            ValueKind::Json { .. } => Some("arrow.json"),
            _ => None,
        };
        match ext {
            Some(ext) => field.with_metadata(HashMap::from([(
                EXTENSION_NAME.to_string(),
                ext.to_string(),
            )])),
            None => field,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metastore_types_get_real_arrow_types() {
        assert_eq!(
            ValueKind::for_type(2950).data_type(),
            DataType::FixedSizeBinary(16)
        );
        assert_eq!(
            ValueKind::for_type(1009).data_type(),
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
        );
        assert_eq!(
            ValueKind::for_type(3802)
                .field("attributes")
                .metadata()
                .get(EXTENSION_NAME)
                .map(String::as_str),
            Some("arrow.json")
        );
        assert_eq!(ValueKind::for_type(600_000), ValueKind::Raw);
    }
}
