//! TupleData: the column values of one row.

/// One column value of a row as pgoutput sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TupleValue<'a> {
    /// SQL NULL.
    Null,
    /// A TOASTed value that did not change; the server did not send it.
    UnchangedToast,
    /// The value in text format (types without a binary send function).
    Text(&'a [u8]),
    /// The value in the type's binary format.
    Binary(&'a [u8]),
}

/// The values of one row, decoded as they are iterated.
#[derive(Debug, Clone, Copy)]
pub struct Tuple<'a> {
    ncols: usize,
    raw: &'a [u8],
}

impl<'a> Tuple<'a> {
    /// Reads the TupleData at the start of `buf`; returns it and the rest of `buf`.
    pub(crate) fn parse(buf: &'a [u8]) -> Result<(Tuple<'a>, &'a [u8]), String> {
        if buf.len() < 2 {
            return Err("short TupleData".into());
        }
        let ncols = i16::from_be_bytes([buf[0], buf[1]]).max(0) as usize;
        let mut pos = 2;
        for _ in 0..ncols {
            let kind = *buf.get(pos).ok_or("truncated TupleData")?;
            pos += 1;
            match kind {
                b'n' | b'u' => {}
                b't' | b'b' => {
                    let len_bytes = buf.get(pos..pos + 4).ok_or("truncated value length")?;
                    let len = i32::from_be_bytes([
                        len_bytes[0],
                        len_bytes[1],
                        len_bytes[2],
                        len_bytes[3],
                    ]);
                    if len < 0 {
                        return Err(format!("negative value length {len}"));
                    }
                    pos += 4 + len as usize;
                    if pos > buf.len() {
                        return Err("truncated value".into());
                    }
                }
                other => return Err(format!("unknown tuple value kind {:?}", other as char)),
            }
        }
        Ok((
            Tuple {
                ncols,
                raw: &buf[2..pos],
            },
            &buf[pos..],
        ))
    }

    /// Number of columns.
    pub fn len(&self) -> usize {
        self.ncols
    }

    /// True for a row without columns.
    pub fn is_empty(&self) -> bool {
        self.ncols == 0
    }

    /// The values in column order. `parse` validated the layout, so this cannot fail.
    pub fn values(&self) -> impl Iterator<Item = TupleValue<'a>> + 'a {
        let mut rest = self.raw;
        (0..self.ncols).map(move |_| {
            let kind = rest[0];
            rest = &rest[1..];
            match kind {
                b'n' => TupleValue::Null,
                b'u' => TupleValue::UnchangedToast,
                _ => {
                    let len = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                    let v = &rest[4..4 + len];
                    rest = &rest[4 + len..];
                    if kind == b't' {
                        TupleValue::Text(v)
                    } else {
                        TupleValue::Binary(v)
                    }
                }
            }
        })
    }

    /// Payload bytes of the row, for batch size accounting.
    pub fn byte_len(&self) -> usize {
        self.raw.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_value_kind() {
        let mut buf = vec![0, 4];
        buf.push(b'n');
        buf.push(b'u');
        buf.extend_from_slice(b"t\0\0\0\x02hi");
        buf.extend_from_slice(b"b\0\0\0\x01\x07");
        buf.extend_from_slice(b"rest");
        let (t, rest) = Tuple::parse(&buf).unwrap();
        assert_eq!(rest, b"rest");
        let v: Vec<_> = t.values().collect();
        assert_eq!(
            v,
            vec![
                TupleValue::Null,
                TupleValue::UnchangedToast,
                TupleValue::Text(b"hi"),
                TupleValue::Binary(&[7])
            ]
        );
    }

    #[test]
    fn rejects_truncated_values() {
        assert!(Tuple::parse(&[0, 1, b't', 0, 0, 0, 9, 1]).is_err());
        assert!(Tuple::parse(&[0, 1, b'x']).is_err());
    }
}
