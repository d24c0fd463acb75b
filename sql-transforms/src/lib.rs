//! The SQL transform engine: analysts' `.sql` files planned once with
//! DataFusion and run on every change batch, the catalog state they can join
//! against, and lineage propagation written back to the metastore.
//!
//! Where data is transformed. A transform sees, as SQL tables:
//! - `changes.<table>`: the current batch of changes of a metastore table
//!   (empty for the other tables), with the change columns of
//!   [`lily_cdc::batch`];
//! - `state.assets`, `state.lineage_edges`, `state.classifications`,
//!   `state.propagated_attributes`, `state.asset_attributes`: the catalog as
//!   of the newest change read, kept current from the change stream
//!   ([`CatalogState`]), so no transform needs a round trip to PostgreSQL;
//! - `payload` (pre-ingest transforms): the inbound payload, with the shape
//!   the file declares;
//! - `origins` (propagation): the assets whose propagation is re-computed.

mod error;
mod functions;
mod output;
mod payload;
pub mod propagation;
mod runner;
mod session;
mod set;
pub mod sink;
pub mod slt;
mod source;
pub mod state;
mod tables;

pub use error::{Result, TransformError};
pub use output::{OutputContract, check_output, incident_output};
pub use payload::{EVENT, payload_from_json, payload_from_values};
pub use runner::{PAYLOAD, TransformRunner};
pub use session::{TransformSession, new_session};
pub use set::{ReloadReport, TransformSet, check_source};
pub use sink::TransformedSink;
pub use source::{TransformKind, TransformSource, discover};
pub use state::CatalogState;
pub use tables::SwapTable;
