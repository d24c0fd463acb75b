//! Where data enters Lily from outside: the HTTP API that `lily run`
//! serves (Monte Carlo incident webhooks, Okta Event Hooks, JIRA webhooks,
//! the catalog API, the effective policy and Trino's OPA decisions), its authentication and authorization, the versioned
//! JSON Schemas of what it accepts, and the Kafka source.
//!
//! Everything is validated before it is written, written in a transaction
//! scoped to the tenant of the request (row-level security), and refused
//! with a JSON error naming the problem.

pub mod auth;
pub mod bulk;
pub mod catalog;
pub mod db;
pub mod error;
pub mod kafka;
pub mod limits;
pub mod schemas;
pub mod server;
pub mod signature;
pub mod sources;
pub mod trino;

pub use error::{InboundError, Result};
pub use server::{Inbound, OPENAPI, bind, router, serve};
