//! A sink that stores nothing: for benchmarks of the reader alone.

use std::sync::Arc;

use lily_cdc::{ChangeBatch, Lsn};

use lily_cdc::sink::{Sink, SinkError};

/// Counts what it receives and acknowledges it at once.
#[derive(Debug, Default)]
pub struct NullSink {
    rows: u64,
}

impl NullSink {
    /// Rows received so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }
}

#[async_trait::async_trait]
impl Sink for NullSink {
    fn name(&self) -> &str {
        "null"
    }

    async fn write(&mut self, batch: Arc<ChangeBatch>) -> Result<(), SinkError> {
        self.rows += batch.num_rows() as u64;
        Ok(())
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
