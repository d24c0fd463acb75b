//! The masks as SQL: Hive's masking functions (which Ranger's mask types
//! call), registered in every session, and the expression that masks a
//! column of a given type.
//!
//! Semantics follow Apache Hive's `GenericUDFMask*` as Ranger's Hive
//! service definition calls them: `mask` turns upper-case letters into
//! `X`, lower-case into `x` and digits into `n`, and keeps everything else;
//! `MASK_SHOW_LAST_4` is `mask_show_last_n({col}, 4, 'x', 'x', 'x', -1,
//! '1')`, every letter and digit but the last four becomes `x`;
//! `MASK_HASH` is the SHA-256 of the value in hex. Values whose type has no
//! such form (numbers, booleans) become NULL under every mask but
//! `MASK_NONE` and `CUSTOM`; `MASK_DATE_SHOW_YEAR` keeps a date's year
//! (January 1st), and is NULL for other types.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, StringBuilder};
use arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::{Result as DfResult, ScalarValue, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility, cast,
    lit,
};
use datafusion::prelude::SessionContext;
use sha2::{Digest, Sha256};

use crate::policy::Mask;

/// Which of Hive's masking functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Mask,
    ShowFirstN,
    ShowLastN,
    Hash,
}

/// One of Hive's masking functions as a DataFusion function.
#[derive(Debug, PartialEq, Eq, Hash)]
struct MaskFunction {
    kind: Kind,
    signature: Signature,
}

impl MaskFunction {
    fn udf(kind: Kind) -> ScalarUDF {
        let args = match kind {
            Kind::Mask | Kind::Hash => vec![DataType::Utf8],
            Kind::ShowFirstN | Kind::ShowLastN => vec![DataType::Utf8, DataType::Int64],
        };
        ScalarUDF::new_from_impl(MaskFunction {
            kind,
            signature: Signature::exact(args, Volatility::Immutable),
        })
    }
}

/// Hive's `mask`: upper `X`, lower `x`, digits `n`, the rest kept.
fn mask_char(c: char) -> char {
    if c.is_uppercase() {
        'X'
    } else if c.is_lowercase() {
        'x'
    } else if c.is_numeric() {
        'n'
    } else {
        c
    }
}

/// Ranger's partial masks: every letter and digit becomes `x`.
fn hide_char(c: char) -> char {
    if c.is_uppercase() || c.is_lowercase() || c.is_numeric() {
        'x'
    } else {
        c
    }
}

fn show_n(value: &str, n: usize, first: bool) -> String {
    let len = value.chars().count();
    let shown = |i: usize| if first { i < n } else { i + n >= len };
    value
        .chars()
        .enumerate()
        .map(|(i, c)| if shown(i) { c } else { hide_char(c) })
        .collect()
}

/// The SHA-256 of `value` in lower-case hex, written into `buf`.
fn sha256_hex_into<'a>(value: &str, buf: &'a mut [u8; 64]) -> &'a str {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in Sha256::digest(value.as_bytes()).iter().enumerate() {
        buf[2 * i] = DIGITS[(b >> 4) as usize];
        buf[2 * i + 1] = DIGITS[(b & 0xf) as usize];
    }
    // Only ASCII hex digits were written.
    std::str::from_utf8(buf).unwrap_or_default()
}

impl ScalarUDFImpl for MaskFunction {
    fn name(&self) -> &str {
        match self.kind {
            Kind::Mask => "mask",
            Kind::ShowFirstN => "mask_show_first_n",
            Kind::ShowLastN => "mask_show_last_n",
            Kind::Hash => "mask_hash",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let Some(values) = arrays.first() else {
            return exec_err!("{} needs a value", self.name());
        };
        let values = values.as_string::<i32>();
        let n = arrays
            .get(1)
            .map(|a| a.as_primitive::<arrow::datatypes::Int64Type>());
        let capacity = match self.kind {
            Kind::Hash => values.len() * 64,
            _ => values.value_data().len(),
        };
        let mut out = StringBuilder::with_capacity(values.len(), capacity);
        // One buffer for every value: no allocation per row.
        let mut scratch = String::new();
        let mut hex = [0u8; 64];
        for i in 0..values.len() {
            if values.is_null(i) {
                out.append_null();
                continue;
            }
            let v = values.value(i);
            let count = |n: Option<&arrow::array::Int64Array>| {
                n.filter(|n| !n.is_null(i))
                    .map_or(4, |n| n.value(i).max(0) as usize)
            };
            match self.kind {
                Kind::Mask => {
                    scratch.clear();
                    scratch.extend(v.chars().map(mask_char));
                    out.append_value(&scratch);
                }
                Kind::ShowFirstN => out.append_value(show_n(v, count(n), true)),
                Kind::ShowLastN => out.append_value(show_n(v, count(n), false)),
                Kind::Hash => out.append_value(sha256_hex_into(v, &mut hex)),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish()) as ArrayRef))
    }
}

/// Registers `mask`, `mask_show_first_n`, `mask_show_last_n` and
/// `mask_hash` in `ctx` (custom masks may call them too).
pub fn register(ctx: &SessionContext) {
    for kind in [Kind::Mask, Kind::ShowFirstN, Kind::ShowLastN, Kind::Hash] {
        ctx.register_udf(MaskFunction::udf(kind));
    }
}

fn is_text(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

/// The expression that masks `column` (of type `data_type`) with `mask`;
/// `custom` is the parsed expression of a `CUSTOM` mask. The result keeps
/// the column's type, so a masked table looks the same to its readers.
pub fn mask_expr(
    column: Expr,
    mask: &Mask,
    data_type: &DataType,
    custom: Option<Expr>,
) -> DfResult<Expr> {
    let null = || -> DfResult<Expr> { Ok(lit(ScalarValue::try_from(data_type)?)) };
    let text_fn = |kind: Kind, n: Option<i64>| -> Expr {
        let mut args = vec![cast(column.clone(), DataType::Utf8)];
        if let Some(n) = n {
            args.push(lit(n));
        }
        cast(MaskFunction::udf(kind).call(args), data_type.clone())
    };
    Ok(match mask {
        Mask::None => column,
        Mask::Null => null()?,
        Mask::Custom(_) => match custom {
            Some(e) => cast(e, data_type.clone()),
            None => null()?,
        },
        Mask::Hash if is_text(data_type) => text_fn(Kind::Hash, None),
        Mask::Mask if is_text(data_type) => text_fn(Kind::Mask, None),
        Mask::ShowFirst4 if is_text(data_type) => text_fn(Kind::ShowFirstN, Some(4)),
        Mask::ShowLast4 if is_text(data_type) => text_fn(Kind::ShowLastN, Some(4)),
        Mask::DateShowYear => match data_type {
            DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64 => {
                let ts = cast(column, DataType::Timestamp(TimeUnit::Microsecond, None));
                let year = datafusion::functions::datetime::expr_fn::date_trunc(lit("year"), ts);
                cast(year, data_type.clone())
            }
            _ => null()?,
        },
        _ => null()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hive_masks() {
        let m = |s: &str| s.chars().map(mask_char).collect::<String>();
        assert_eq!(
            m("Alice.Smith-42@Example.com"),
            "Xxxxx.Xxxxx-nn@Xxxxxxx.xxx"
        );
        assert_eq!(
            show_n("4111-1111-1111-1234", 4, false),
            "xxxx-xxxx-xxxx-1234"
        );
        assert_eq!(
            show_n("4111-1111-1111-1234", 4, true),
            "4111-xxxx-xxxx-xxxx"
        );
        assert_eq!(show_n("abc", 4, false), "abc");
        assert_eq!(
            sha256_hex_into("abc", &mut [0; 64]),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[tokio::test]
    async fn masks_keep_the_type_and_hide_the_value() {
        let ctx = SessionContext::new();
        register(&ctx);
        let df = ctx
            .sql("SELECT 'bob@x.io' AS email, 42 AS n, DATE '1990-07-14' AS born")
            .await
            .unwrap();
        let schema = df.schema().clone();
        let masked = df
            .select(vec![
                mask_expr(
                    datafusion::prelude::col("email"),
                    &Mask::Mask,
                    &DataType::Utf8,
                    None,
                )
                .unwrap()
                .alias("email"),
                mask_expr(
                    datafusion::prelude::col("n"),
                    &Mask::Hash,
                    schema.field(1).data_type(),
                    None,
                )
                .unwrap()
                .alias("n"),
                mask_expr(
                    datafusion::prelude::col("born"),
                    &Mask::DateShowYear,
                    &DataType::Date32,
                    None,
                )
                .unwrap()
                .alias("born"),
            ])
            .unwrap();
        let batches = masked.collect().await.unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        assert!(text.contains("xxx@x.xx"), "{text}");
        assert!(text.contains("1990-01-01"), "{text}");
        assert_eq!(
            batches[0].schema().field(1).data_type(),
            schema.field(1).data_type()
        );
        assert!(batches[0].column(1).is_null(0), "{text}");
    }
}
