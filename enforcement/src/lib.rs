//! Where the catalog is enforced: masking policies attached to tags,
//! compiled with the tags of governed columns (direct and propagated) into
//! a snapshot on every commit that touches them ([`policy`]); the data
//! tenants govern ([`governed`]); and the PostgreSQL-wire SQL endpoint that
//! serves it masked, at the next statement after a tag commits
//! ([`endpoint`]); Trino's OPA decisions ([`trino`]).

pub mod caller;
pub mod endpoint;
pub mod error;
pub mod governed;
pub mod masks;
pub mod policy;
pub mod trino;

pub use endpoint::{CredentialError, Credentials, EndpointConfig, Identity, SqlEndpoint};
pub use error::{EnforcementError, Result};
pub use governed::Sources;
pub use policy::{PolicyEvents, PolicySink, PolicyStore};
