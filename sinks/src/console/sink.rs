//! A sink that prints one line per change: what `lily demo` shows.

use std::io::Write;
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use lily_cdc::{ChangeBatch, Lsn};

use lily_cdc::sink::{Sink, SinkError};

/// Columns worth showing, in order of preference, when a table has them.
const SHOWN: &[&str] = &[
    "tenant_id",
    "type_name",
    "qualified_name",
    "tag",
    "source",
    "state",
    "severity",
    "certificate",
    "description",
    "name",
];

/// Prints changes to standard output.
#[derive(Debug)]
pub struct ConsoleSink {
    name: String,
    printed: u64,
}

impl ConsoleSink {
    /// A sink named `name`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            printed: 0,
        }
    }

    /// Changes printed so far.
    pub fn printed(&self) -> u64 {
        self.printed
    }
}

#[async_trait::async_trait]
impl Sink for ConsoleSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn write(&mut self, batch: Arc<ChangeBatch>) -> Result<(), SinkError> {
        let records = &batch.records;
        let options = FormatOptions::default().with_null("∅");
        let shown: Vec<(&str, ArrayFormatter<'_>)> = SHOWN
            .iter()
            .filter_map(|name| {
                let col = records.column_by_name(name)?;
                ArrayFormatter::try_new(col.as_ref(), &options)
                    .ok()
                    .map(|f| (*name, f))
            })
            .take(4)
            .collect();
        let Some(ops) = records.column_by_name(lily_cdc::batch::OP) else {
            return Ok(());
        };
        let ops = ops.as_string::<i32>();
        let table = batch.table.qualified_name();
        let mut out = std::io::stdout().lock();
        for i in 0..records.num_rows() {
            let verb = match ops.value(i) {
                "r" => "snapshot",
                "c" => "insert  ",
                "u" => "update  ",
                "d" => "delete  ",
                "t" => "truncate",
                other => other,
            };
            let fields: Vec<String> = shown
                .iter()
                .filter(|(name, _)| records.column_by_name(name).is_some_and(|c| !c.is_null(i)))
                .map(|(name, f)| format!("{name}={}", f.value(i)))
                .collect();
            let _ = writeln!(out, "  {verb} {table:<28} {}", fields.join(" "));
        }
        self.printed += records.num_rows() as u64;
        Ok(())
    }

    fn transform_input(&self) -> Option<Vec<arrow::datatypes::Field>> {
        Some(vec![arrow::datatypes::Field::new(
            lily_cdc::batch::OP,
            arrow::datatypes::DataType::Utf8,
            false,
        )])
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    fn buffered_rows(&self) -> usize {
        0
    }

    async fn discard_snapshot(&mut self, _snapshot_lsn: Lsn) -> Result<(), SinkError> {
        Ok(())
    }
}
