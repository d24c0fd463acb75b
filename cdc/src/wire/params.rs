//! Connection parameters for the replication connection, read from the same
//! connection string the rest of Lily uses.

use std::path::PathBuf;

use super::tls::{PgConnect, PgTls};
use crate::error::{CdcError, Result};

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// host:port over TCP.
    Tcp(String, u16),
    /// A unix socket directory and port (the socket file is `.s.PGSQL.<port>`).
    Unix(PathBuf, u16),
}

/// What the replication client needs to connect and authenticate.
#[derive(Debug, Clone)]
pub struct ConnectParams {
    /// Server address.
    pub endpoint: Endpoint,
    /// Role name.
    pub user: String,
    /// Password, when the server asks for one.
    pub password: Option<Vec<u8>>,
    /// Database whose changes are decoded.
    pub dbname: String,
    /// `application_name` shown in `pg_stat_replication`.
    pub application_name: String,
    /// TLS, as `sslmode` and `sslrootcert` say (not used on unix sockets).
    pub tls: PgTls,
}

impl ConnectParams {
    /// Reads a libpq-style connection string (URL or key=value).
    pub fn parse(conn: &str) -> Result<Self> {
        Self::from_connect(&PgConnect::parse(conn)?)
    }

    /// Reads the parameters out of a parsed connection string.
    pub fn from_connect(connect: &PgConnect) -> Result<Self> {
        let config = &connect.config;
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let endpoint = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => Endpoint::Tcp(h.clone(), port),
            Some(tokio_postgres::config::Host::Unix(p)) => Endpoint::Unix(p.clone(), port),
            None => Endpoint::Tcp("localhost".into(), port),
        };
        let user = config
            .get_user()
            .map(str::to_string)
            .or_else(|| std::env::var("USER").ok())
            .ok_or_else(|| CdcError::Unsupported("connection string names no user".into()))?;
        let dbname = config
            .get_dbname()
            .map(str::to_string)
            .unwrap_or_else(|| user.clone());
        Ok(ConnectParams {
            endpoint,
            user,
            password: config.get_password().map(<[u8]>::to_vec),
            dbname,
            application_name: config.get_application_name().unwrap_or("lily").to_string(),
            tls: connect.tls.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_url_and_key_value_forms() {
        let p = ConnectParams::parse("postgres://lily:secret@127.0.0.1:5433/meta").unwrap();
        assert_eq!(p.endpoint, Endpoint::Tcp("127.0.0.1".into(), 5433));
        assert_eq!(p.user, "lily");
        assert_eq!(p.password.as_deref(), Some(&b"secret"[..]));
        assert_eq!(p.dbname, "meta");
        let p = ConnectParams::parse("host=/run/pg port=5499 user=a dbname=b").unwrap();
        assert_eq!(p.endpoint, Endpoint::Unix("/run/pg".into(), 5499));
    }
}
