//! A private PostgreSQL 15 cluster under a local folder, for `lily demo` and the tests;
//! and a local search server ([`SearchServer`]) for the same.
//!
//! The binaries come from `/usr/lib/postgresql/15/bin`, or the folder named by `LILY_PG_BIN`.
//! PostgreSQL refuses to run as root, so when we are root the cluster folder is given to the
//! `postgres` system user and `initdb`/`pg_ctl` run as that user through `runuser`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), lily_embedded::ClusterError> {
//! let cluster = lily_embedded::ClusterBuilder::new("/tmp/lily-demo")
//!     .setting("max_wal_senders", "30")
//!     .start()
//!     .await?;
//! cluster.create_database("shop").await?;
//! let client = cluster.connect("shop").await?;
//! client.simple_query("SELECT 1").await.map_err(lily_embedded::ClusterError::Connect)?;
//! # Ok(())
//! # }
//! ```

mod builder;
mod cluster;
mod conf;
mod error;
mod process;
mod search;
mod server;

pub use builder::ClusterBuilder;
pub use cluster::PgCluster;
pub use error::ClusterError;
pub use search::{SearchServer, SearchServerError};
