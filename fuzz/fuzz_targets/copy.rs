//! Any bytes as binary COPY output: rows are read until the end, an
//! incomplete row or an error, never past the buffer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lily_cdc::copy::{CopyRow, header_len, read_row};

fuzz_target!(|data: &[u8]| {
    let Ok(Some(mut at)) = header_len(data) else {
        return;
    };
    let mut values = Vec::new();
    while at <= data.len() {
        match read_row(&data[at..], &mut values) {
            Ok(CopyRow::Row(n)) if n > 0 => at += n,
            _ => break,
        }
    }
});
