//! SQL functions Lily adds: uuids between their text and binary forms.
//!
//! Uuids travel as 16-byte binaries (`arrow.uuid`); analysts write and read
//! them as text.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, FixedSizeBinaryBuilder, StringBuilder};
use arrow::datatypes::DataType;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};
use datafusion::prelude::SessionContext;
use uuid::Uuid;

/// Registers `to_uuid(text)` and `uuid_text(uuid)`.
pub fn register(ctx: &SessionContext) {
    ctx.register_udf(to_uuid());
    ctx.register_udf(uuid_text());
}

/// `to_uuid('0b3c…')`: a uuid from its text form; NULL stays NULL, anything
/// else that is not a uuid is an error naming the value.
fn to_uuid() -> ScalarUDF {
    create_udf(
        "to_uuid",
        vec![DataType::Utf8],
        DataType::FixedSizeBinary(16),
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let text = arrays[0].as_string::<i32>();
            let mut out = FixedSizeBinaryBuilder::with_capacity(text.len(), 16);
            for v in text.iter() {
                match v {
                    Some(s) => {
                        let u = Uuid::parse_str(s.trim()).map_err(|e| {
                            DataFusionError::Execution(format!("to_uuid: {s:?} is not a uuid: {e}"))
                        })?;
                        out.append_value(u.as_bytes())?;
                    }
                    None => out.append_null(),
                }
            }
            let array: ArrayRef = Arc::new(out.finish());
            scalar_if_scalar(args, array)
        }),
    )
}

/// `uuid_text(guid)`: the hyphenated text form of a uuid.
fn uuid_text() -> ScalarUDF {
    create_udf(
        "uuid_text",
        vec![DataType::FixedSizeBinary(16)],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let bin = arrays[0].as_fixed_size_binary();
            let mut out = StringBuilder::with_capacity(bin.len(), bin.len() * 36);
            for i in 0..bin.len() {
                if bin.is_null(i) {
                    out.append_null();
                } else {
                    let u = Uuid::from_slice(bin.value(i))
                        .map_err(|e| DataFusionError::Execution(format!("uuid_text: {e}")))?;
                    out.append_value(u.hyphenated().to_string());
                }
            }
            let array: ArrayRef = Arc::new(out.finish());
            scalar_if_scalar(args, array)
        }),
    )
}

fn scalar_if_scalar(args: &[ColumnarValue], array: ArrayRef) -> DfResult<ColumnarValue> {
    if args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_))) {
        Ok(ColumnarValue::Scalar(
            datafusion::common::ScalarValue::try_from_array(&array, 0)?,
        ))
    } else {
        Ok(ColumnarValue::Array(array))
    }
}
