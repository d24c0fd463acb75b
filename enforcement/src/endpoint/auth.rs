//! Authentication of SQL sessions: the user name is free, the password is
//! an API key or a JWT, checked as the HTTP API checks them; the database
//! name is the tenant. Failures are PostgreSQL errors with the SQLSTATE
//! libpq and JDBC expect: 28P01 for a credential that does not verify,
//! 28000 for a caller without a reading role in the tenant.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use futures::sink::{Sink, SinkExt};
use pgwire::api::auth::{
    DefaultServerParameterProvider, LoginInfo, StartupHandler, finish_authentication,
    protocol_negotiation, save_startup_parameters_to_metadata,
};
use pgwire::api::{ClientInfo, PgWireConnectionState};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::startup::{Authentication, SecretKey};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use tracing::{info, warn};

use super::connection::Connection;

/// Who a credential proves the caller is.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Token subject or API key id.
    pub subject: String,
    /// `(tenant, role)` pairs: the built-in roles and named ones (such as
    /// `pii_reader`) that masking policies may unmask for.
    pub grants: Vec<(String, String)>,
    /// The tenants whose data the caller's roles allow reading.
    pub readable: Vec<String>,
}

/// Why a credential was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// It does not verify (unknown, revoked, expired, badly signed).
    #[error("{0}")]
    Invalid(String),
    /// It could not be checked now.
    #[error("{0}")]
    Unavailable(String),
}

/// Verifies the password of a SQL session.
#[async_trait]
pub trait Credentials: Send + Sync {
    /// The identity `password` (an API key or a JWT) proves.
    async fn verify(&self, password: &str) -> Result<Identity, CredentialError>;
}

fn fatal(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".to_owned(),
        code.to_owned(),
        message,
    )))
}

/// The startup of one connection: cleartext password (the endpoint is
/// meant to be reached over TLS or loopback), then the session is built.
pub struct LilyStartup {
    pub(super) conn: Arc<Connection>,
    pub(super) parameters: DefaultServerParameterProvider,
}

impl LilyStartup {
    pub(super) fn new(conn: Arc<Connection>) -> Self {
        let mut parameters = DefaultServerParameterProvider::default();
        parameters.server_version = "16.6 (Lily)".to_owned();
        parameters.is_superuser = false;
        parameters.default_transaction_read_only = true;
        Self { conn, parameters }
    }
}

#[async_trait]
impl StartupHandler for LilyStartup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                if let Some(refused) = self.conn.refused() {
                    return Err(refused);
                }
                if self.conn.endpoint.tls_required && !client.is_secure() {
                    metrics::counter!("lily_sql_auth_failures_total", "reason" => "no_tls")
                        .increment(1);
                    return Err(fatal(
                        "28000",
                        "this endpoint requires TLS: connect with sslmode=require (or verify-full)"
                            .into(),
                    ));
                }
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client
                    .send(PgWireBackendMessage::Authentication(
                        Authentication::CleartextPassword,
                    ))
                    .await?;
            }
            PgWireFrontendMessage::PasswordMessageFamily(pwd) => {
                let password = pwd.into_password()?.password;
                let login = LoginInfo::from_client_info(client);
                let user = login.user().unwrap_or_default().to_owned();
                let tenant = login
                    .database()
                    .filter(|d| !d.is_empty())
                    .unwrap_or(&user)
                    .to_owned();
                let identity = match self.conn.endpoint.credentials.verify(&password).await {
                    Ok(i) => i,
                    Err(CredentialError::Invalid(why)) => {
                        metrics::counter!("lily_sql_auth_failures_total", "reason" => "bad_credentials").increment(1);
                        warn!(user, tenant, reason = %why, "SQL session refused: bad credentials");
                        return Err(fatal(
                            "28P01",
                            format!("password authentication failed for user \"{user}\""),
                        ));
                    }
                    Err(CredentialError::Unavailable(why)) => {
                        metrics::counter!("lily_sql_auth_failures_total", "reason" => "unavailable").increment(1);
                        return Err(fatal(
                            "57P03",
                            format!("credentials cannot be checked now: {why}"),
                        ));
                    }
                };
                let roles: Vec<String> = identity
                    .grants
                    .iter()
                    .filter(|(t, _)| *t == tenant)
                    .map(|(_, r)| r.clone())
                    .collect();
                if !identity.readable.contains(&tenant) {
                    metrics::counter!("lily_sql_auth_failures_total", "reason" => "no_role")
                        .increment(1);
                    warn!(user, tenant, subject = %identity.subject, "SQL session refused: no reading role in the tenant");
                    return Err(fatal(
                        "28000",
                        format!(
                            "{} has no role that reads tenant \"{tenant}\" (admin, steward or viewer); the database name is the tenant",
                            identity.subject
                        ),
                    ));
                }
                self.conn
                    .open_session(&tenant, &identity.subject, &user, roles.clone(), password)
                    .await
                    .map_err(|e| match e {
                        crate::error::EnforcementError::TooManyConnections(_) => {
                            fatal("53300", e.to_string())
                        }
                        e => fatal("XX000", format!("the session could not be opened: {e}")),
                    })?;
                let (pid, secret) = self.conn.pid_and_secret();
                client.set_pid_and_secret_key(pid, SecretKey::I32(secret));
                info!(user, tenant, subject = %identity.subject, roles = ?roles, "SQL session opened");
                finish_authentication(client, &self.parameters).await?;
            }
            _ => {}
        }
        Ok(())
    }
}
