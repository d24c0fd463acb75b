//! Lily's CDC core: reads the metastore's changes from a PostgreSQL logical
//! replication slot (pgoutput) and turns them into Arrow change batches.
//!
//! Where data enters Lily. The reader ([`ChangeReader`]) speaks the
//! replication protocol itself ([`wire`]), decodes pgoutput ([`pgoutput`]),
//! builds per-table batches ([`batch`]) and moves the slot only as far as
//! every sink has acknowledged ([`checkpoint`]).

pub mod batch;
pub mod catalog;
pub mod checkpoint;
mod column;
mod copy;
pub mod error;
pub mod json;
pub mod lsn;
pub mod pgoutput;
pub mod reader;
pub mod slot;
pub mod types;
pub mod wire;

pub use batch::{ChangeBatch, ChangeOp, TableSchema};
pub use checkpoint::{AckTracker, SinkAck};
pub use error::{CdcError, Result};
pub use lsn::{Lsn, Position};
pub use reader::{ChangeReader, ReaderConfig, StartPlan};
pub use slot::{ReplicationSlot, SnapshotState};
