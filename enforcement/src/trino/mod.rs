//! Trino's `opa` access control answered by Lily: the plugin's requests
//! ([`request`]), decisions from the policy snapshot ([`decision`]), and
//! masks as Trino SQL ([`expression`]). The HTTP routes are the API's.

pub mod decision;
pub mod expression;
pub mod request;

pub use decision::{BadRequest, Decision, DecisionContext, decide};
pub use request::OpaQuery;
