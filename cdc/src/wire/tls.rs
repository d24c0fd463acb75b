//! TLS for every connection to PostgreSQL, with libpq's `sslmode` and
//! `sslrootcert` (<https://www.postgresql.org/docs/current/libpq-ssl.html>,
//! table 34.1 "SSL Mode Descriptions"):
//!
//! | `sslmode` | encrypted | server certificate checked |
//! |---|---|---|
//! | `disable` | no | - |
//! | `prefer` (default) | if the server offers it | no |
//! | `require` | yes | no; as `verify-ca` when a root certificate is given |
//! | `verify-ca` | yes | chain to `sslrootcert` |
//! | `verify-full` | yes | chain to `sslrootcert`, and the host name |
//!
//! `sslrootcert` is a PEM file, or `system` for the operating system's
//! roots (which makes `verify-full` the default, as in libpq 16); without
//! it `~/.postgresql/root.crt` is used when it exists. tokio-postgres
//! reads only `disable`, `prefer` and `require`, so the connection string
//! is read here first: [`PgConnect::parse`] takes the TLS settings out and
//! hands the rest to tokio-postgres, with a rustls connector that checks
//! what the mode asks for. The replication client uses the same settings
//! ([`PgTls::client_config`]).

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

use crate::error::{CdcError, Result};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, certificate not checked.
    Prefer,
    /// TLS, certificate not checked (unless a root certificate is given).
    Require,
    /// TLS, certificate chain checked against the root certificates.
    VerifyCa,
    /// TLS, chain and host name checked.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self> {
        Ok(match value {
            "disable" => Self::Disable,
            // libpq's `allow` tries plain first; Lily never prefers plain.
            "allow" | "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => {
                return Err(CdcError::Unsupported(format!(
                    "sslmode={other}: give disable, prefer, require, verify-ca or verify-full"
                )));
            }
        })
    }

    /// Whether a connection without TLS is refused.
    pub fn requires_tls(self) -> bool {
        matches!(self, Self::Require | Self::VerifyCa | Self::VerifyFull)
    }
}

/// Where the root certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RootCert {
    /// None given, and no `~/.postgresql/root.crt`.
    None,
    /// A PEM file.
    File(PathBuf),
    /// The operating system's store.
    System,
}

/// The TLS settings of one connection string.
#[derive(Clone)]
pub struct PgTls {
    mode: SslMode,
    config: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for PgTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTls").field("mode", &self.mode).finish()
    }
}

/// A connection string read for tokio-postgres and for TLS.
#[derive(Debug, Clone)]
pub struct PgConnect {
    /// Everything but the TLS settings, with tokio-postgres's `sslmode`.
    pub config: tokio_postgres::Config,
    /// The TLS settings.
    pub tls: PgTls,
}

impl PgConnect {
    /// Reads a libpq connection string, URL or key=value form.
    pub fn parse(conn: &str) -> Result<Self> {
        let (rest, settings) = take_tls_settings(conn)?;
        let mut config: tokio_postgres::Config = rest
            .parse()
            .map_err(|e| CdcError::Unsupported(format!("connection string: {e}")))?;
        let mode = match settings.mode {
            Some(m) => SslMode::parse(&m)?,
            // libpq 16: sslrootcert=system makes verify-full the default.
            None if settings.root_cert.as_deref() == Some("system") => SslMode::VerifyFull,
            None => SslMode::Prefer,
        };
        let root = match settings.root_cert.as_deref() {
            Some("system") => RootCert::System,
            Some(path) => RootCert::File(PathBuf::from(path)),
            None => default_root_cert().map_or(RootCert::None, RootCert::File),
        };
        config.ssl_mode(match mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        let tls = PgTls::new(mode, &root)?;
        Ok(Self { config, tls })
    }

    /// Connects with tokio-postgres and TLS as configured; the connection
    /// task runs on the current runtime, logging how it ended.
    pub async fn connect(
        &self,
    ) -> std::result::Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = self.config.connect(self.tls.clone()).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "a PostgreSQL connection closed");
            }
        });
        Ok(client)
    }
}

impl PgTls {
    fn new(mode: SslMode, root: &RootCert) -> Result<Self> {
        if mode == SslMode::Disable {
            return Ok(Self { mode, config: None });
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = match (mode, root) {
            (SslMode::VerifyCa | SslMode::VerifyFull, RootCert::None) => {
                return Err(CdcError::Unsupported(format!(
                    "sslmode={}: give the CA certificate as sslrootcert=<file> \
                     (or sslrootcert=system), or put it in ~/.postgresql/root.crt",
                    if mode == SslMode::VerifyCa {
                        "verify-ca"
                    } else {
                        "verify-full"
                    }
                )));
            }
            (SslMode::Prefer | SslMode::Require, RootCert::None) | (SslMode::Prefer, _) => {
                Arc::new(LibpqVerifier {
                    chain: None,
                    algorithms: provider.signature_verification_algorithms,
                })
            }
            (_, root) => {
                let roots = Arc::new(root_store(root)?);
                let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .map_err(|e| CdcError::Unsupported(format!("TLS roots: {e}")))?;
                if mode == SslMode::VerifyFull {
                    webpki
                } else {
                    Arc::new(LibpqVerifier {
                        chain: Some(webpki),
                        algorithms: provider.signature_verification_algorithms,
                    })
                }
            }
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| CdcError::Unsupported(format!("TLS: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Self {
            mode,
            config: Some(Arc::new(config)),
        })
    }

    /// The mode.
    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// The rustls configuration; `None` with `sslmode=disable`.
    pub fn client_config(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.config.clone()
    }
}

fn default_root_cert() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let path = Path::new(&home).join(".postgresql/root.crt");
    path.exists().then_some(path)
}

fn root_store(root: &RootCert) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    match root {
        RootCert::None => {}
        RootCert::File(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| CdcError::Unsupported(format!("sslrootcert {}: {e}", path.display())))?
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| {
                    CdcError::Unsupported(format!("sslrootcert {}: {e}", path.display()))
                })?;
            if certs.is_empty() {
                return Err(CdcError::Unsupported(format!(
                    "sslrootcert {} holds no PEM certificate",
                    path.display()
                )));
            }
            for cert in certs {
                store.add(cert).map_err(|e| {
                    CdcError::Unsupported(format!("sslrootcert {}: {e}", path.display()))
                })?;
            }
        }
        RootCert::System => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // One unusable certificate of the system store is not ours to fail on.
                let _ = store.add(cert);
            }
            if store.is_empty() {
                return Err(CdcError::Unsupported(
                    "sslrootcert=system: the operating system has no root certificates".into(),
                ));
            }
        }
    }
    Ok(store)
}

/// What `require` and `verify-ca` check of the server's certificate (the
/// handshake's signatures are always checked): nothing (`require` without a
/// root certificate), or the chain without the host name. `verify-full` uses
/// rustls' own verifier.
#[derive(Debug)]
struct LibpqVerifier {
    /// The chain's verifier; `None`: the certificate is not checked.
    chain: Option<Arc<WebPkiServerVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for LibpqVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        // The name is compared last, after the chain is known good.
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The server name to check a certificate against: the host of the
/// connection string (an IP address is checked as one).
pub fn server_name(host: &str) -> Result<ServerName<'static>> {
    ServerName::try_from(host.to_owned())
        .map_err(|e| CdcError::Unsupported(format!("TLS server name {host:?}: {e}")))
}

impl<S> MakeTlsConnect<S> for PgTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type TlsConnect = PgTlsConnect;
    type Error = CdcError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<PgTlsConnect> {
        Ok(PgTlsConnect {
            config: self.config.clone(),
            name: server_name(domain)?,
        })
    }
}

/// One TLS handshake to come (tokio-postgres's [`TlsConnect`]).
pub struct PgTlsConnect {
    config: Option<Arc<rustls::ClientConfig>>,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for PgTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<PgTlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let config = self.config.ok_or_else(|| {
                io::Error::other("sslmode=disable: no TLS handshake is configured")
            })?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(self.name, stream)
                .await?;
            Ok(PgTlsStream(tls))
        })
    }
}

/// A TLS stream to PostgreSQL.
pub struct PgTlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for PgTlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM's tls-server-end-point needs the hash the certificate was
        // signed with; SCRAM without channel binding is what is offered.
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PgTlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PgTlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The TLS settings taken out of a connection string.
#[derive(Debug, Default, PartialEq, Eq)]
struct TlsSettings {
    mode: Option<String>,
    root_cert: Option<String>,
}

/// Splits `sslmode` and `sslrootcert` off a connection string (URL query
/// parameters, or key=value pairs with libpq's quoting).
fn take_tls_settings(conn: &str) -> Result<(String, TlsSettings)> {
    let mut settings = TlsSettings::default();
    let trimmed = conn.trim_start();
    if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        let Some((base, query)) = conn.split_once('?') else {
            return Ok((conn.to_owned(), settings));
        };
        let mut kept = Vec::new();
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value);
            match key {
                "sslmode" => settings.mode = Some(value),
                "sslrootcert" => settings.root_cert = Some(value),
                _ => kept.push(pair),
            }
        }
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Ok((rest, settings));
    }
    let mut kept = String::new();
    let mut chars = conn.chars().peekable();
    loop {
        skip_whitespace(&mut chars);
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        skip_whitespace(&mut chars);
        if chars.next() != Some('=') {
            return Err(CdcError::Unsupported(format!(
                "connection string: {key:?} has no value"
            )));
        }
        skip_whitespace(&mut chars);
        let (mut raw, mut value) = (String::new(), String::new());
        if chars.peek() == Some(&'\'') {
            raw.push('\'');
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => {
                        let c = chars.next().ok_or_else(|| {
                            CdcError::Unsupported("connection string: a dangling \\".into())
                        })?;
                        raw.push('\\');
                        raw.push(c);
                        value.push(c);
                    }
                    Some('\'') => {
                        raw.push('\'');
                        break;
                    }
                    Some(c) => {
                        raw.push(c);
                        value.push(c);
                    }
                    None => {
                        return Err(CdcError::Unsupported(
                            "connection string: an unterminated quote".into(),
                        ));
                    }
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\'
                    && let Some(next) = chars.next()
                {
                    raw.push('\\');
                    raw.push(next);
                    value.push(next);
                    continue;
                }
                raw.push(c);
                value.push(c);
            }
        }
        match key.as_str() {
            "sslmode" => settings.mode = Some(value),
            "sslrootcert" => settings.root_cert = Some(value),
            _ => {
                if !kept.is_empty() {
                    kept.push(' ');
                }
                kept.push_str(&key);
                kept.push('=');
                kept.push_str(&raw);
            }
        }
    }
    Ok((kept, settings))
}

fn skip_whitespace(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    while chars.next_if(|c| c.is_whitespace()).is_some() {}
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).and_then(|b| hex(*b)),
                bytes.get(i + 2).and_then(|b| hex(*b)),
            )
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_are_taken_out_of_both_forms() {
        let (rest, s) = take_tls_settings(
            "postgres://u:p@db.example:5432/lily?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x",
        )
        .unwrap();
        assert_eq!(
            rest,
            "postgres://u:p@db.example:5432/lily?application_name=x"
        );
        assert_eq!(s.mode.as_deref(), Some("verify-full"));
        assert_eq!(s.root_cert.as_deref(), Some("/etc/ca.pem"));
        let (rest, s) = take_tls_settings(
            "host=db.example sslmode = verify-ca sslrootcert='/etc/my ca.pem' password='it\\'s' user=u",
        )
        .unwrap();
        assert_eq!(s.mode.as_deref(), Some("verify-ca"));
        assert_eq!(s.root_cert.as_deref(), Some("/etc/my ca.pem"));
        assert!(rest.starts_with("host=db.example"), "{rest}");
        assert!(rest.ends_with("user=u"), "{rest}");
        assert!(!rest.contains("ssl"), "{rest}");
    }

    #[test]
    fn modes_parse_as_libpq_spells_them() {
        let c = PgConnect::parse("postgres://u@h/db?sslmode=require").unwrap();
        assert_eq!(c.tls.mode(), SslMode::Require);
        assert_eq!(
            c.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        let c = PgConnect::parse("host=h user=u").unwrap();
        assert_eq!(c.tls.mode(), SslMode::Prefer);
        let c = PgConnect::parse("host=h user=u sslmode=disable").unwrap();
        assert_eq!(c.tls.mode(), SslMode::Disable);
        assert!(c.tls.client_config().is_none());
        let e = PgConnect::parse("host=h user=u sslmode=verify-full sslrootcert=/no/such.pem")
            .unwrap_err();
        assert!(e.to_string().contains("/no/such.pem"), "{e}");
        let e = PgConnect::parse("host=h user=u sslmode=sometimes").unwrap_err();
        assert!(e.to_string().contains("verify-full"), "{e}");
    }
}
