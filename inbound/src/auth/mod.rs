//! Who is calling, and what they may do: JWT bearer tokens (HS256 from
//! config, RS256/ES256 through a JWKS) and API keys for machine senders,
//! each carrying roles per tenant.

mod api_keys;
mod jwks;
mod jwt;

use std::fmt;
use std::sync::Arc;

use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::HeaderMap;
use axum::http::request::Parts;

pub use api_keys::{ApiKeys, CreatedKey, KeyInfo};
pub use jwt::JwtVerifier;

use crate::error::{InboundError, Result};
use crate::server::Inbound;

/// A role a caller holds in one tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything in the tenant.
    Admin,
    /// Reads and curates the catalog: assets, lineage, classifications.
    Steward,
    /// Reads the catalog.
    Viewer,
    /// A machine sender: writes incidents, assets and lineage, reads nothing.
    Ingest,
}

impl Role {
    /// Every role, for messages.
    pub const ALL: [Role; 4] = [Role::Admin, Role::Steward, Role::Viewer, Role::Ingest];

    /// The role's name as in grants and the API-key table.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Steward => "steward",
            Role::Viewer => "viewer",
            Role::Ingest => "ingest",
        }
    }

    /// Whether this role allows `action`.
    pub fn allows(self, action: Action) -> bool {
        match self {
            Role::Admin => true,
            Role::Steward => action != Action::Administer,
            Role::Viewer => action == Action::Read,
            Role::Ingest => action == Action::Ingest,
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?} (admin, steward, viewer or ingest)"))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a route does, checked against the caller's role in the tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Read the catalog.
    Read,
    /// Write incidents, assets and lineage (machine senders, stewards).
    Ingest,
    /// Tag, untag, and remove things from the catalog.
    Curate,
    /// Manage the tenant's credentials.
    Administer,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Ingest => "ingest",
            Action::Curate => "curate",
            Action::Administer => "administer",
        }
    }
}

/// A role in a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The tenant.
    pub tenant: String,
    /// The role there.
    pub role: Role,
}

impl Grant {
    /// Parses `"tenant:role"`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (tenant, role) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("grant {s:?} is not \"tenant:role\""))?;
        Ok(Grant {
            tenant: tenant.to_owned(),
            role: role.parse()?,
        })
    }
}

/// How the caller proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// A JWT bearer token.
    Jwt,
    /// An API key.
    ApiKey,
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Token subject or API key id.
    pub subject: String,
    /// How they authenticated.
    pub kind: CredentialKind,
    /// Their roles.
    pub grants: Vec<Grant>,
    /// Named roles beyond the built-in ones, `(tenant, name)`: they grant
    /// nothing on the API, and masking policies may unmask for them
    /// (`acme:pii_reader` in a token's roles claim).
    pub named_roles: Vec<(String, String)>,
    /// Their request's slot in the tenant of the path, held until the
    /// request ends (`api.tenant_concurrency`).
    pub slot: Option<crate::limits::TenantSlot>,
}

impl Caller {
    /// Whether the caller may do `action` in `tenant` (nothing counted:
    /// for choosing what to check, not for refusing).
    pub fn may(&self, tenant: &str, action: Action) -> bool {
        self.grants
            .iter()
            .any(|g| g.tenant == tenant && g.role.allows(action))
    }

    /// Allows `action` in `tenant` or says why not. The tenant comes from
    /// the path; a grant for another tenant never counts.
    pub fn require(&self, tenant: &str, action: Action) -> Result<()> {
        let roles: Vec<Role> = self
            .grants
            .iter()
            .filter(|g| g.tenant == tenant)
            .map(|g| g.role)
            .collect();
        if roles.iter().any(|r| r.allows(action)) {
            return Ok(());
        }
        metrics::counter!("lily_inbound_forbidden_total", "action" => action.as_str()).increment(1);
        Err(InboundError::Forbidden(if roles.is_empty() {
            format!("{} has no role in tenant {tenant:?}", self.subject)
        } else {
            let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            format!(
                "{} is {} in tenant {tenant:?}, which does not allow {}",
                self.subject,
                names.join(", "),
                action.as_str()
            )
        }))
    }
}

/// Verifies the credentials of requests.
pub struct Authenticator {
    jwt: JwtVerifier,
    api_keys: ApiKeys,
}

impl Authenticator {
    /// From a JWT verifier and the API-key store.
    pub fn new(jwt: JwtVerifier, api_keys: ApiKeys) -> Self {
        Self { jwt, api_keys }
    }

    /// The API-key store.
    pub fn api_keys(&self) -> &ApiKeys {
        &self.api_keys
    }

    /// The caller a credential proves: an API key or a JWT (the password
    /// of a SQL session).
    pub async fn verify_credential(&self, credential: &str) -> Result<Caller> {
        let credential = credential.trim();
        if credential.starts_with(api_keys::KEY_PREFIX) {
            self.api_keys.verify(credential).await
        } else {
            self.jwt.verify(credential).await
        }
    }

    /// The caller of a request: `Authorization: Bearer <jwt or API key>`,
    /// or `X-API-Key: <API key>`.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller> {
        if let Some(key) = header(headers, "x-api-key")? {
            return self.api_keys.verify(key.trim()).await;
        }
        let Some(auth) = header(headers, "authorization")? else {
            return Err(InboundError::Unauthenticated(
                "send Authorization: Bearer <token> or X-API-Key: <key>".into(),
            ));
        };
        let credential = auth
            .strip_prefix("Bearer ")
            .or_else(|| auth.strip_prefix("bearer "))
            .unwrap_or(auth)
            .trim();
        self.verify_credential(credential).await
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map_err(|_| InboundError::BadCredentials(format!("the {name} header is not text")))
        })
        .transpose()
}

impl FromRequestParts<Arc<Inbound>> for Caller {
    type Rejection = InboundError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<Inbound>) -> Result<Self> {
        let params = RawPathParams::from_request_parts(parts, state).await.ok();
        let param = |name: &str| {
            params.as_ref().and_then(|p| {
                p.iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.to_owned())
            })
        };
        // A route with a `{key}` segment is called by a client that cannot
        // send headers (Trino's OPA client): the API key is in its path. A
        // credential header, when there is one, still wins.
        let caller = match param("key") {
            Some(key)
                if !parts.headers.contains_key("authorization")
                    && !parts.headers.contains_key("x-api-key") =>
            {
                state.auth.verify_credential(&key).await
            }
            _ => state.auth.authenticate(&parts.headers).await,
        };
        if let Err(e) = &caller {
            metrics::counter!("lily_inbound_auth_failures_total", "reason" => e.code())
                .increment(1);
        }
        let mut caller = caller?;
        // A caller with a role in the path's tenant takes one of its slots;
        // one without is refused by the handler at once and takes none.
        let tenant = param("tenant");
        if let Some(tenant) = tenant
            && caller.grants.iter().any(|g| g.tenant == tenant)
        {
            caller.slot = Some(state.slots.enter(&tenant).await?);
        }
        Ok(caller)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(grants: &[&str]) -> Caller {
        Caller {
            subject: "t".into(),
            kind: CredentialKind::Jwt,
            grants: grants.iter().map(|g| Grant::parse(g).unwrap()).collect(),
            named_roles: Vec::new(),
            slot: None,
        }
    }

    #[test]
    fn roles_allow_their_actions_in_their_tenant_only() {
        let c = caller(&["acme:viewer", "beta:steward"]);
        assert!(c.require("acme", Action::Read).is_ok());
        assert!(c.require("acme", Action::Curate).is_err());
        assert!(c.require("beta", Action::Curate).is_ok());
        assert!(c.require("beta", Action::Administer).is_err());
        let e = c.require("gamma", Action::Read).unwrap_err();
        assert!(e.to_string().contains("no role in tenant \"gamma\""), "{e}");
        let ingest = caller(&["acme:ingest"]);
        assert!(ingest.require("acme", Action::Ingest).is_ok());
        assert!(ingest.require("acme", Action::Read).is_err());
        assert!(
            caller(&["acme:admin"])
                .require("acme", Action::Administer)
                .is_ok()
        );
    }

    #[test]
    fn grants_parse() {
        assert_eq!(
            Grant::parse("acme-eu:steward").unwrap(),
            Grant {
                tenant: "acme-eu".into(),
                role: Role::Steward
            }
        );
        assert!(Grant::parse("acme").is_err());
        assert!(
            Grant::parse("acme:owner")
                .unwrap_err()
                .contains("unknown role")
        );
    }
}
