//! The Delta Lake cold store: where every change is kept for audit and time
//! travel, as the Delta table `audit/changes` under the lake root.
//!
//! The lake root is a local folder or an object-store URL ([`LakeLocation`]).
//! [`AuditSink`] appends change batches idempotently; [`maintenance`]
//! compacts and cleans the table. [`QueryAuditLog`] keeps every statement
//! the SQL endpoint runs on governed data in `audit/queries`.
//! [`CatalogAssets`] is the lake lane of bulk loads, `catalog/assets`.

mod audit_schema;
mod catalog_assets;
mod error;
mod location;
pub mod maintenance;
mod query_audit;
mod sink;

pub use audit_schema::{AUDIT_TABLE, audit_schema};
pub use catalog_assets::{CATALOG_ASSETS_TABLE, CatalogAssets, LakeAsset, catalog_assets_schema};
pub use error::LakeError;
pub use location::LakeLocation;
pub use query_audit::{QUERY_AUDIT_TABLE, QueryAuditLog, QueryRecord, query_audit_schema};
pub use sink::AuditSink;
