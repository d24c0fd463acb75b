//! Rows of `COPY ... TO STDOUT (FORMAT binary)`, whose field encoding is the
//! same binary send format pgoutput uses, so snapshot rows reuse the decoder.

use crate::pgoutput::TupleValue;

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// Outcome of reading at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum CopyRow {
    /// A row of this many bytes was read into the values.
    Row(usize),
    /// The trailer: no more rows.
    End,
    /// The buffer holds less than a whole row; read more.
    Incomplete,
}

/// Length of the file header at the start of `buf`, once it is complete.
pub fn header_len(buf: &[u8]) -> Result<Option<usize>, String> {
    if buf.len() < SIGNATURE.len() + 8 {
        return Ok(None);
    }
    if &buf[..SIGNATURE.len()] != SIGNATURE {
        return Err("COPY output does not start with the binary signature".into());
    }
    let at = SIGNATURE.len() + 4;
    let ext = u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
    let total = at + 4 + ext;
    Ok((buf.len() >= total).then_some(total))
}

/// Reads one row at the start of `buf` into `values`.
pub fn read_row<'a>(buf: &'a [u8], values: &mut Vec<TupleValue<'a>>) -> Result<CopyRow, String> {
    values.clear();
    if buf.len() < 2 {
        return Ok(CopyRow::Incomplete);
    }
    let n = i16::from_be_bytes([buf[0], buf[1]]);
    if n == -1 {
        return Ok(CopyRow::End);
    }
    if n < 0 {
        return Err(format!("bad field count {n}"));
    }
    let mut pos = 2;
    for _ in 0..n {
        let Some(len) = buf.get(pos..pos + 4) else {
            return Ok(CopyRow::Incomplete);
        };
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        pos += 4;
        if len < 0 {
            values.push(TupleValue::Null);
        } else {
            let end = pos + len as usize;
            let Some(v) = buf.get(pos..end) else {
                return Ok(CopyRow::Incomplete);
            };
            values.push(TupleValue::Binary(v));
            pos = end;
        }
    }
    Ok(CopyRow::Row(pos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_header_rows_and_trailer() {
        let mut buf = SIGNATURE.to_vec();
        buf.extend_from_slice(&0u32.to_be_bytes());
        buf.extend_from_slice(&0u32.to_be_bytes());
        assert_eq!(header_len(&buf).unwrap(), Some(19));
        let mut row = vec![0, 2];
        row.extend_from_slice(&1i32.to_be_bytes());
        row.push(9);
        row.extend_from_slice(&(-1i32).to_be_bytes());
        let mut values = Vec::new();
        assert_eq!(
            read_row(&row[..6], &mut values).unwrap(),
            CopyRow::Incomplete
        );
        assert_eq!(
            read_row(&row, &mut values).unwrap(),
            CopyRow::Row(row.len())
        );
        assert_eq!(values, vec![TupleValue::Binary(&[9]), TupleValue::Null]);
        assert_eq!(read_row(&[0xff, 0xff], &mut values).unwrap(), CopyRow::End);
    }
}
