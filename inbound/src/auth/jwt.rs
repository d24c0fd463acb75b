//! JWT bearer tokens: HS256 with shared secrets from config (development),
//! RS256/ES256 (and their 384/512 siblings) with keys from the identity
//! provider's JWKS.

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use lily_config::AuthConfig;
use serde_json::{Map, Value};

use super::jwks::Jwks;
use super::{Caller, CredentialKind, Grant};
use crate::error::{InboundError, Result};

/// Verifies JWTs and reads the caller's grants from them.
pub struct JwtVerifier {
    hs256: Vec<DecodingKey>,
    jwks: Option<Jwks>,
    issuer: String,
    audience: String,
    roles_claim: String,
    leeway: u64,
}

impl JwtVerifier {
    /// From the `[auth]` section; starts the JWKS refresher if a URL is set.
    pub fn new(config: &AuthConfig) -> Result<Self> {
        let jwks = if config.jwks_url.is_empty() {
            None
        } else {
            Some(Jwks::new(
                &config.jwks_url,
                config.jwks_refresh_ms,
                config.jwks_min_refresh_ms,
            )?)
        };
        Ok(Self {
            hs256: config
                .jwt_hs256_secrets
                .iter()
                .map(|s| DecodingKey::from_secret(s.as_bytes()))
                .collect(),
            jwks,
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
            roles_claim: config.roles_claim.clone(),
            leeway: config.leeway_secs,
        })
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.leeway;
        v.validate_nbf = true;
        // A configured issuer or audience must be in the token, not merely
        // match when present.
        let mut required = vec!["exp"];
        if !self.issuer.is_empty() {
            v.set_issuer(&[&self.issuer]);
            required.push("iss");
        }
        if self.audience.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&[&self.audience]);
            required.push("aud");
        }
        v.set_required_spec_claims(&required);
        v
    }

    /// Verifies `token` and returns its caller.
    pub async fn verify(&self, token: &str) -> Result<Caller> {
        let header = decode_header(token)
            .map_err(|e| InboundError::BadCredentials(format!("not a JWT: {e}")))?;
        let validation = self.validation(header.alg);
        let claims: Map<String, Value> = match header.alg {
            Algorithm::HS256 => {
                if self.hs256.is_empty() {
                    return Err(InboundError::BadCredentials(
                        "HS256 tokens are not accepted here (auth.jwt_hs256_secrets is empty)"
                            .into(),
                    ));
                }
                let mut result = Err(InboundError::BadCredentials("no HS256 key".into()));
                for key in &self.hs256 {
                    match decode::<Map<String, Value>>(token, key, &validation) {
                        Ok(data) => {
                            result = Ok(data.claims);
                            break;
                        }
                        Err(e) => result = Err(token_error(e)),
                    }
                }
                result?
            }
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::ES256
            | Algorithm::ES384 => {
                let Some(jwks) = &self.jwks else {
                    return Err(InboundError::BadCredentials(format!(
                        "{:?} tokens need auth.jwks_url, which is not set",
                        header.alg
                    )));
                };
                let key = jwks.key(header.kid.as_deref(), header.alg).await?;
                decode::<Map<String, Value>>(token, &key, &validation)
                    .map_err(token_error)?
                    .claims
            }
            other => {
                return Err(InboundError::BadCredentials(format!(
                    "tokens signed with {other:?} are not accepted"
                )));
            }
        };
        self.caller(&claims)
    }

    fn caller(&self, claims: &Map<String, Value>) -> Result<Caller> {
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or("anonymous token")
            .to_owned();
        let mut value = None;
        let mut at = claims;
        let mut parts = self.roles_claim.split('.').peekable();
        while let Some(part) = parts.next() {
            match (at.get(part), parts.peek()) {
                (Some(Value::Object(inner)), Some(_)) => at = inner,
                (found, None) => value = found,
                _ => break,
            }
        }
        let raw: Vec<&str> = match value {
            Some(Value::String(s)) => s.split([' ', ',']).filter(|s| !s.is_empty()).collect(),
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        // Entries that are not "tenant:role" (an IdP's own roles) are skipped;
        // "tenant:name" with a name that is not a built-in role is a named
        // role (for masking policies), which grants nothing on the API.
        let grants = raw.iter().filter_map(|g| Grant::parse(g).ok()).collect();
        let named_roles = raw
            .iter()
            .filter(|g| Grant::parse(g).is_err())
            .filter_map(|g| g.rsplit_once(':'))
            .filter(|(t, r)| !t.is_empty() && is_role_name(r))
            .map(|(t, r)| (t.to_owned(), r.to_owned()))
            .collect();
        Ok(Caller {
            subject,
            kind: CredentialKind::Jwt,
            grants,
            named_roles,
            slot: None,
        })
    }
}

/// A named role: a letter, then letters, digits, `_` or `-`.
fn is_role_name(r: &str) -> bool {
    r.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && r.len() <= 64
        && r.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn token_error(e: jsonwebtoken::errors::Error) -> InboundError {
    use jsonwebtoken::errors::ErrorKind;
    let what = match e.kind() {
        ErrorKind::ExpiredSignature => "the token has expired".to_owned(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".to_owned(),
        ErrorKind::InvalidSignature => "the token's signature does not verify".to_owned(),
        ErrorKind::InvalidIssuer => "the token's issuer is not accepted".to_owned(),
        ErrorKind::InvalidAudience => "the token's audience is not accepted".to_owned(),
        ErrorKind::MissingRequiredClaim(c) => format!("the token has no {c} claim"),
        _ => format!("the token is not valid: {e}"),
    };
    InboundError::BadCredentials(what)
}
