//! Arrow builders fed with PostgreSQL values in binary (or text) format.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, FixedSizeBinaryBuilder, Float32Builder,
    Float64Builder, Int16Builder, Int32Builder, Int64Builder, ListArray, StringBuilder,
    TimestampMicrosecondBuilder, UInt32Builder,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};

use crate::pgoutput::TupleValue;
use crate::types::ValueKind;
use crate::wire::PG_EPOCH_OFFSET_MICROS;

/// Days between 1970-01-01 and 2000-01-01.
const PG_EPOCH_OFFSET_DAYS: i32 = 10_957;

/// One column under construction.
pub struct ColumnBuilder {
    kind: ValueKind,
    inner: Inner,
}

enum Inner {
    Bool(BooleanBuilder),
    Int16(Int16Builder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    UInt32(UInt32Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Utf8(StringBuilder),
    Uuid(FixedSizeBinaryBuilder),
    Date(Date32Builder),
    Timestamp(TimestampMicrosecondBuilder),
    Binary(BinaryBuilder),
    List {
        offsets: Vec<i32>,
        valid: Vec<bool>,
        values: Box<ColumnBuilder>,
    },
}

fn be<const N: usize>(v: &[u8]) -> Result<[u8; N], String> {
    v.try_into()
        .map_err(|_| format!("expected {N} bytes, got {}", v.len()))
}

fn utf8(v: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(v).map_err(|e| format!("invalid UTF-8: {e}"))
}

fn parse_text<T: std::str::FromStr>(v: &[u8]) -> Result<T, String> {
    let s = utf8(v)?;
    s.parse().map_err(|_| format!("{s:?} is not a valid value"))
}

impl ColumnBuilder {
    /// An empty column of `kind`.
    pub fn new(kind: &ValueKind) -> Self {
        let inner = match kind {
            ValueKind::Bool => Inner::Bool(BooleanBuilder::new()),
            ValueKind::Int16 => Inner::Int16(Int16Builder::new()),
            ValueKind::Int32 => Inner::Int32(Int32Builder::new()),
            ValueKind::Int64 => Inner::Int64(Int64Builder::new()),
            ValueKind::UInt32 => Inner::UInt32(UInt32Builder::new()),
            ValueKind::Float32 => Inner::Float32(Float32Builder::new()),
            ValueKind::Float64 => Inner::Float64(Float64Builder::new()),
            ValueKind::Text | ValueKind::Json { .. } | ValueKind::Numeric => {
                Inner::Utf8(StringBuilder::new())
            }
            ValueKind::Uuid => Inner::Uuid(FixedSizeBinaryBuilder::new(16)),
            ValueKind::Date => Inner::Date(Date32Builder::new()),
            ValueKind::Timestamp => Inner::Timestamp(TimestampMicrosecondBuilder::new()),
            ValueKind::TimestampTz => {
                Inner::Timestamp(TimestampMicrosecondBuilder::new().with_timezone("UTC"))
            }
            ValueKind::Bytea | ValueKind::Raw => Inner::Binary(BinaryBuilder::new()),
            ValueKind::List(inner) => Inner::List {
                offsets: vec![0],
                valid: Vec::new(),
                values: Box::new(ColumnBuilder::new(inner)),
            },
        };
        ColumnBuilder {
            kind: kind.clone(),
            inner,
        }
    }

    /// Appends SQL NULL.
    pub fn append_null(&mut self) {
        match &mut self.inner {
            Inner::Bool(b) => b.append_null(),
            Inner::Int16(b) => b.append_null(),
            Inner::Int32(b) => b.append_null(),
            Inner::Int64(b) => b.append_null(),
            Inner::UInt32(b) => b.append_null(),
            Inner::Float32(b) => b.append_null(),
            Inner::Float64(b) => b.append_null(),
            Inner::Utf8(b) => b.append_null(),
            Inner::Uuid(b) => b.append_null(),
            Inner::Date(b) => b.append_null(),
            Inner::Timestamp(b) => b.append_null(),
            Inner::Binary(b) => b.append_null(),
            Inner::List { offsets, valid, .. } => {
                offsets.push(*offsets.last().unwrap_or(&0));
                valid.push(false);
            }
        }
    }

    /// Appends one value as pgoutput or binary COPY delivered it.
    /// An unchanged TOAST value is appended as NULL here; the caller records it.
    pub fn append(&mut self, value: TupleValue<'_>) -> Result<(), String> {
        match value {
            TupleValue::Null | TupleValue::UnchangedToast => {
                self.append_null();
                Ok(())
            }
            TupleValue::Binary(v) => self.append_binary(v),
            TupleValue::Text(v) => self.append_text(v),
        }
    }

    fn append_binary(&mut self, v: &[u8]) -> Result<(), String> {
        match (&mut self.inner, &self.kind) {
            (Inner::Bool(b), _) => b.append_value(*v.first().ok_or("empty bool")? != 0),
            (Inner::Int16(b), _) => b.append_value(i16::from_be_bytes(be(v)?)),
            (Inner::Int32(b), _) => b.append_value(i32::from_be_bytes(be(v)?)),
            (Inner::Int64(b), _) => b.append_value(i64::from_be_bytes(be(v)?)),
            (Inner::UInt32(b), _) => b.append_value(u32::from_be_bytes(be(v)?)),
            (Inner::Float32(b), _) => b.append_value(f32::from_be_bytes(be(v)?)),
            (Inner::Float64(b), _) => b.append_value(f64::from_be_bytes(be(v)?)),
            (Inner::Utf8(b), ValueKind::Json { jsonb: true }) => match v.split_first() {
                Some((1, rest)) => b.append_value(utf8(rest)?),
                _ => return Err("jsonb value without version 1 header".into()),
            },
            (Inner::Utf8(b), ValueKind::Numeric) => b.append_value(numeric_to_string(v)?),
            (Inner::Utf8(b), _) => b.append_value(utf8(v)?),
            (Inner::Uuid(b), _) => b.append_value(v).map_err(|e| format!("uuid: {e}"))?,
            (Inner::Date(b), _) => {
                let days = i32::from_be_bytes(be(v)?);
                // ±infinity are i32::MAX/MIN: keep them at the ends of the range.
                b.append_value(if days == i32::MAX || days == i32::MIN {
                    days
                } else {
                    days + PG_EPOCH_OFFSET_DAYS
                })
            }
            (Inner::Timestamp(b), _) => {
                let micros = i64::from_be_bytes(be(v)?);
                b.append_value(if micros == i64::MAX || micros == i64::MIN {
                    micros
                } else {
                    micros + PG_EPOCH_OFFSET_MICROS
                })
            }
            (Inner::Binary(b), _) => b.append_value(v),
            (
                Inner::List {
                    offsets,
                    valid,
                    values,
                },
                _,
            ) => {
                let n = append_array(values, v)?;
                let last = *offsets.last().unwrap_or(&0);
                offsets.push(last + n as i32);
                valid.push(true);
            }
        }
        Ok(())
    }

    fn append_text(&mut self, v: &[u8]) -> Result<(), String> {
        match &mut self.inner {
            Inner::Bool(b) => b.append_value(matches!(v, b"t" | b"true")),
            Inner::Int16(b) => b.append_value(parse_text(v)?),
            Inner::Int32(b) => b.append_value(parse_text(v)?),
            Inner::Int64(b) => b.append_value(parse_text(v)?),
            Inner::UInt32(b) => b.append_value(parse_text(v)?),
            Inner::Float32(b) => b.append_value(parse_text(v)?),
            Inner::Float64(b) => b.append_value(parse_text(v)?),
            Inner::Utf8(b) => b.append_value(utf8(v)?),
            Inner::Binary(b) => b.append_value(v),
            _ => return Err(format!("text value for a {:?} column", self.kind)),
        }
        Ok(())
    }

    /// The finished Arrow array; the builder is left empty for the next batch.
    pub fn finish(&mut self) -> ArrayRef {
        match &mut self.inner {
            Inner::Bool(b) => Arc::new(b.finish()),
            Inner::Int16(b) => Arc::new(b.finish()),
            Inner::Int32(b) => Arc::new(b.finish()),
            Inner::Int64(b) => Arc::new(b.finish()),
            Inner::UInt32(b) => Arc::new(b.finish()),
            Inner::Float32(b) => Arc::new(b.finish()),
            Inner::Float64(b) => Arc::new(b.finish()),
            Inner::Utf8(b) => Arc::new(b.finish()),
            Inner::Uuid(b) => Arc::new(b.finish()),
            Inner::Date(b) => Arc::new(b.finish()),
            Inner::Timestamp(b) => Arc::new(b.finish()),
            Inner::Binary(b) => Arc::new(b.finish()),
            Inner::List {
                offsets,
                valid,
                values,
            } => {
                let ValueKind::List(item) = &self.kind else {
                    unreachable!("list builder always has a list kind")
                };
                let offsets = OffsetBuffer::new(std::mem::replace(offsets, vec![0]).into());
                let nulls = NullBuffer::from(std::mem::take(valid));
                let nulls = (nulls.null_count() > 0).then_some(nulls);
                Arc::new(ListArray::new(
                    Arc::new(item.field("item")),
                    offsets,
                    values.finish(),
                    nulls,
                ))
            }
        }
    }
}

/// Appends the elements of a binary array value; returns how many.
fn append_array(values: &mut ColumnBuilder, v: &[u8]) -> Result<usize, String> {
    let word = |at: usize| -> Result<i32, String> {
        v.get(at..at + 4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| "truncated array".to_string())
    };
    let ndim = word(0)?;
    if ndim == 0 {
        return Ok(0);
    }
    // Multi-dimensional arrays are flattened in row-major order.
    let mut count = 1usize;
    for d in 0..ndim as usize {
        count *= word(12 + d * 8)?.max(0) as usize;
    }
    let mut pos = 12 + ndim as usize * 8;
    for _ in 0..count {
        let len = word(pos)?;
        pos += 4;
        if len < 0 {
            values.append_null();
        } else {
            let end = pos + len as usize;
            let elem = v.get(pos..end).ok_or("truncated array element")?;
            values.append_binary(elem)?;
            pos = end;
        }
    }
    Ok(count)
}

/// PostgreSQL's binary numeric (base-10000 digits) as plain decimal text.
fn numeric_to_string(v: &[u8]) -> Result<String, String> {
    use std::fmt::Write;
    let word = |at: usize| -> Result<u16, String> {
        v.get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "truncated numeric".to_string())
    };
    let ndigits = word(0)? as usize;
    let weight = word(2)? as i16 as i32;
    let sign = word(4)?;
    let dscale = word(6)? as usize;
    match sign {
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        _ => {}
    }
    let mut digits = Vec::with_capacity(ndigits);
    for i in 0..ndigits {
        digits.push(word(8 + i * 2)?);
    }
    let digit = |k: i32| -> u16 {
        if k < 0 {
            0
        } else {
            digits.get(k as usize).copied().unwrap_or(0)
        }
    };
    let mut s = String::new();
    if sign == 0x4000 {
        s.push('-');
    }
    if weight < 0 {
        s.push('0');
    } else {
        for k in 0..=weight {
            let _ = if k == 0 {
                write!(s, "{}", digit(k))
            } else {
                write!(s, "{:04}", digit(k))
            };
        }
    }
    if dscale > 0 {
        s.push('.');
        let mut frac = String::new();
        let mut k = weight + 1;
        while frac.len() < dscale {
            let _ = write!(frac, "{:04}", digit(k));
            k += 1;
        }
        frac.truncate(dscale);
        s.push_str(&frac);
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};

    fn numeric(ndigits: u16, weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut v = Vec::new();
        for w in [ndigits, weight as u16, sign, dscale] {
            v.extend_from_slice(&w.to_be_bytes());
        }
        for d in digits {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    }

    #[test]
    fn numeric_binary_becomes_decimal_text() {
        assert_eq!(
            numeric_to_string(&numeric(2, 0, 0, 2, &[12, 3400])).unwrap(),
            "12.34"
        );
        assert_eq!(
            numeric_to_string(&numeric(1, -1, 0x4000, 4, &[5])).unwrap(),
            "-0.0005"
        );
        assert_eq!(
            numeric_to_string(&numeric(2, 1, 0, 0, &[1, 0])).unwrap(),
            "10000"
        );
        assert_eq!(numeric_to_string(&numeric(0, 0, 0, 0, &[])).unwrap(), "0");
        assert_eq!(
            numeric_to_string(&numeric(0, 0, 0xC000, 0, &[])).unwrap(),
            "NaN"
        );
    }

    #[test]
    fn text_array_becomes_list() {
        let mut b = ColumnBuilder::new(&ValueKind::List(Box::new(ValueKind::Text)));
        // ndim 1, no nulls flag, elem oid 25, dim 2 lbound 1, "a", NULL
        let mut v = Vec::new();
        for w in [1i32, 1, 25, 2, 1] {
            v.extend_from_slice(&w.to_be_bytes());
        }
        v.extend_from_slice(&1i32.to_be_bytes());
        v.push(b'a');
        v.extend_from_slice(&(-1i32).to_be_bytes());
        b.append(TupleValue::Binary(&v)).unwrap();
        b.append_null();
        let arr = b.finish();
        let list = arr.as_list::<i32>();
        assert_eq!(list.len(), 2);
        assert!(list.is_null(1));
        let first = list.value(0);
        let strings = first.as_string::<i32>();
        assert_eq!(strings.value(0), "a");
        assert!(strings.is_null(1));
    }

    #[test]
    fn malformed_values_are_errors() {
        let mut b = ColumnBuilder::new(&ValueKind::Int32);
        assert!(b.append(TupleValue::Binary(&[1, 2])).is_err());
        let mut b = ColumnBuilder::new(&ValueKind::Json { jsonb: true });
        assert!(b.append(TupleValue::Binary(b"{}")).is_err());
    }
}
