//! Lily's CDC core: reads the metastore's changes from a PostgreSQL logical
//! replication slot (pgoutput) and turns them into Arrow change batches.
//!
//! Where data enters Lily. The reader ([`ChangeReader`]) speaks the
//! replication protocol itself ([`wire`]), decodes pgoutput ([`pgoutput`]),
//! builds per-table batches ([`batch`]) and moves the slot only as far as
//! every sink has acknowledged ([`checkpoint`]).
//!
//! Where data leaves Lily is shaped here too: the [`sink`] contract every
//! destination keeps, the runner that drives one, and the dead-letter store.

pub mod batch;
pub mod catalog;
pub mod checkpoint;
mod column;
pub mod copy;
pub mod error;
pub mod json;
pub mod lsn;
pub mod pgoutput;
pub mod reader;
pub mod sink;
pub mod slot;
pub mod tenant;
pub mod types;
pub mod wire;

pub use batch::{ChangeBatch, ChangeOp, TableSchema};
pub use checkpoint::{AckTracker, BatchSeq, SinkAck};
pub use column::ColumnBuilder;
pub use error::{CdcError, Result};
pub use lsn::{Lsn, Position};
pub use reader::{ChangeReader, ReaderConfig, StartPlan};
pub use slot::{ReplicationSlot, SnapshotState};
pub use tenant::{InvalidTenantId, TenantId, renamed_onto_others};
