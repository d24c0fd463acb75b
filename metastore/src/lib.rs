//! The metastore on PostgreSQL: its schema as versioned migrations, the
//! checks a server must pass before Lily can stream from it, and `lily
//! setup` (migrations, publication, replication slot).

mod error;
mod migrations;
mod preflight;
mod relations;
mod setup;

pub use error::{Problem, SetupError};
pub use migrations::{MIGRATIONS, Migration, apply_migrations};
pub use preflight::{preflight, tenant_role_problems};
pub use relations::metastore_relations;
pub use setup::{SetupOptions, SetupReport, setup};

/// Schema holding the replicated metastore tables.
pub const METASTORE_SCHEMA: &str = "metastore";

/// The asset types of the 90% of an estate (columns and BI fields): bulk
/// loads put them in the lake first, and the pipeline's catalog state holds
/// one only while something refers to it (a tag, an incident, a value).
pub const LEAF_ASSET_TYPES: [&str; 2] = ["column", "bi_field"];
