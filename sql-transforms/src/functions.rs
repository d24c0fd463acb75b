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
    // `to_uuid('0b3c…')`: NULL stays NULL; text that is not a uuid is an
    // error naming the value.
    ctx.register_udf(text_to_uuid_udf("to_uuid", |s| {
        Uuid::parse_str(s.trim())
            .map(|u| *u.as_bytes())
            .map_err(|e| DataFusionError::Execution(format!("to_uuid: {s:?} is not a uuid: {e}")))
    }));
    // `uuid_text(guid)`: the hyphenated text form.
    ctx.register_udf(uuid_to_text_udf("uuid_text", |b| {
        Uuid::from_slice(b)
            .map(|u| u.hyphenated().to_string())
            .map_err(|e| DataFusionError::Execution(format!("uuid_text: {e}")))
    }));
}

/// A function from text to a 16-byte uuid, converting each value with `parse`.
pub(crate) fn text_to_uuid_udf(name: &str, parse: fn(&str) -> DfResult<[u8; 16]>) -> ScalarUDF {
    create_udf(
        name,
        vec![DataType::Utf8],
        DataType::FixedSizeBinary(16),
        Volatility::Immutable,
        Arc::new(move |args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let text = arrays[0].as_string::<i32>();
            let mut out = FixedSizeBinaryBuilder::with_capacity(text.len(), 16);
            for v in text.iter() {
                match v {
                    Some(s) => out.append_value(parse(s)?)?,
                    None => out.append_null(),
                }
            }
            scalar_if_scalar(args, Arc::new(out.finish()))
        }),
    )
}

/// A function from a 16-byte uuid to text, converting each value with `show`.
pub(crate) fn uuid_to_text_udf(name: &str, show: fn(&[u8]) -> DfResult<String>) -> ScalarUDF {
    create_udf(
        name,
        vec![DataType::FixedSizeBinary(16)],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(move |args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let bin = arrays[0].as_fixed_size_binary();
            let mut out = StringBuilder::with_capacity(bin.len(), bin.len() * 36);
            for i in 0..bin.len() {
                if bin.is_null(i) {
                    out.append_null();
                } else {
                    out.append_value(show(bin.value(i))?);
                }
            }
            scalar_if_scalar(args, Arc::new(out.finish()))
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
