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
