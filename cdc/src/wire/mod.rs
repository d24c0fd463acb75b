//! The replication protocol on the wire.

mod connection;
mod params;
mod tls;

pub use connection::{
    PG_EPOCH_OFFSET_MICROS, QueryResult, ReplicationConnection, StreamMessage, now_pg_micros,
};
pub use params::{ConnectParams, Endpoint};
pub use tls::{PgConnect, PgTls, PgTlsStream, SslMode};
