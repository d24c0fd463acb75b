//! `[sinks.<name>] type = "postgres_masking"`: a downstream PostgreSQL
//! enforcing the policies itself. For every governed table the tenants
//! registered on its connection (`kind = "postgres"`), the sink keeps a
//! masking view that consumer roles read instead of the table, rewritten
//! in one transaction whenever the policy snapshot changes what it masks.

mod config;
mod sink;
mod views;

pub use config::PostgresMaskingConfig;
pub use sink::MaskingViews;
pub use views::{BaseColumn, pg_mask, view_query};
