//! Decoding of the `pgoutput` logical decoding plugin's messages
//! (protocol version 1; values in binary format).
//!
//! Tuples are decoded lazily and borrow from the message, so a row costs no
//! allocation until its values land in Arrow builders.

mod message;
mod tuple;

pub use message::{LogicalMessage, RelationColumn, RelationMessage, ReplicaIdentity, decode};
pub use tuple::{Tuple, TupleValue};
