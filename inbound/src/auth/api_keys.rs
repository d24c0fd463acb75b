//! API keys for machine senders (extraction jobs, Okta, JIRA). A key is
//! `lily_<id>_<secret>`, shown once when created; the metastore keeps only
//! the SHA-256 of the whole key, found by its id. Keys carry one role in
//! one tenant. Verified keys are cached for `api.api_key_cache_ms`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::RwLock;

use super::{Caller, CredentialKind, Grant, Role};
use crate::db::Metastore;
use crate::error::{InboundError, Result};

/// Every API key starts with this.
pub const KEY_PREFIX: &str = "lily_";

const ID_LEN: usize = 12;
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A key just created: the only time its secret is seen.
#[derive(Debug, Clone)]
pub struct CreatedKey {
    /// Its id (not secret).
    pub key_id: String,
    /// The whole key, to hand to the sender.
    pub key: String,
}

/// A stored key, without its secret.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    /// Its id.
    pub key_id: String,
    /// Its tenant.
    pub tenant: String,
    /// Its role.
    pub role: Role,
    /// What it is for.
    pub name: String,
    /// Whether it was revoked.
    pub revoked: bool,
}

struct Cached {
    tenant: String,
    role: Role,
    hash: Vec<u8>,
    revoked: bool,
    at: Instant,
}

/// The API-key store.
pub struct ApiKeys {
    db: Metastore,
    cache: RwLock<HashMap<String, Cached>>,
    ttl: Duration,
}

fn hash(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

fn random_chars(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

impl ApiKeys {
    /// The store in `db`, trusting a verified key for `ttl`.
    pub fn new(db: Metastore, ttl: Duration) -> Self {
        Self {
            db,
            cache: RwLock::new(HashMap::new()),
            ttl,
        }
    }

    /// Creates a key with `role` in `tenant`; `actor` (who asked: a token
    /// subject, an admin key, `cli:<user>`) goes into the key trail,
    /// `lily.api_key_events`, in the same transaction.
    pub async fn create(
        &self,
        tenant: &str,
        role: Role,
        name: &str,
        actor: &str,
    ) -> Result<CreatedKey> {
        let key_id = random_chars(ID_LEN);
        let key = format!("{KEY_PREFIX}{key_id}_{}", random_chars(40));
        if !self.db.tenant_exists(tenant).await? {
            return Err(InboundError::UnknownTenant(tenant.to_owned()));
        }
        let mut conn = self.db.connection().await?;
        let tx = conn.transaction().await?;
        tx.execute(
            "INSERT INTO lily.api_keys (key_id, tenant_id, role, name, secret_hash) VALUES ($1, $2, $3, $4, $5)",
            &[&key_id, &tenant, &role.as_str(), &name, &hash(&key)],
        )
        .await?;
        tx.execute(
            "INSERT INTO lily.api_key_events (key_id, tenant_id, event, role, actor) VALUES ($1, $2, 'created', $3, $4)",
            &[&key_id, &tenant, &role.as_str(), &actor],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(target: "lily::audit", key_id, tenant, role = role.as_str(), actor, "API key created");
        Ok(CreatedKey { key_id, key })
    }

    /// Revokes a key; returns whether it existed. `actor` goes into the
    /// key trail as for [`ApiKeys::create`].
    pub async fn revoke(&self, key_id: &str, actor: &str) -> Result<bool> {
        let mut conn = self.db.connection().await?;
        let tx = conn.transaction().await?;
        let revoked = tx
            .query_opt(
                "UPDATE lily.api_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL
                 RETURNING tenant_id, role",
                &[&key_id],
            )
            .await?;
        let exists = match &revoked {
            Some(row) => {
                let (tenant, role): (String, String) = (row.get(0), row.get(1));
                tx.execute(
                    "INSERT INTO lily.api_key_events (key_id, tenant_id, event, role, actor) VALUES ($1, $2, 'revoked', $3, $4)",
                    &[&key_id, &tenant, &role, &actor],
                )
                .await?;
                tracing::info!(target: "lily::audit", key_id, tenant, role, actor, "API key revoked");
                true
            }
            None => tx
                .query_opt("SELECT 1 FROM lily.api_keys WHERE key_id = $1", &[&key_id])
                .await?
                .is_some(),
        };
        tx.commit().await?;
        self.cache.write().await.remove(key_id);
        Ok(exists)
    }

    /// The keys of `tenant`, or of every tenant.
    pub async fn list(&self, tenant: Option<&str>) -> Result<Vec<KeyInfo>> {
        let conn = self.db.connection().await?;
        let rows = conn
            .query(
                "SELECT key_id, tenant_id, role, name, revoked_at IS NOT NULL FROM lily.api_keys
                  WHERE $1::text IS NULL OR tenant_id = $1 ORDER BY tenant_id, created_at",
                &[&tenant],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(KeyInfo {
                    key_id: r.get(0),
                    tenant: r.get(1),
                    role: r
                        .get::<_, String>(2)
                        .parse()
                        .map_err(InboundError::Internal)?,
                    name: r.get(3),
                    revoked: r.get(4),
                })
            })
            .collect()
    }

    /// The caller a key stands for.
    pub async fn verify(&self, key: &str) -> Result<Caller> {
        let bad = || InboundError::BadCredentials("unknown or revoked API key".into());
        let key_id = key
            .strip_prefix(KEY_PREFIX)
            .and_then(|rest| rest.split_once('_'))
            .map(|(id, _)| id)
            .filter(|id| id.len() == ID_LEN && id.bytes().all(|b| ALPHABET.contains(&b)))
            .ok_or_else(|| InboundError::BadCredentials("malformed API key".into()))?;
        let fresh = {
            let cache = self.cache.read().await;
            cache
                .get(key_id)
                .filter(|c| c.at.elapsed() < self.ttl)
                .map(|c| (c.tenant.clone(), c.role, c.hash.clone(), c.revoked))
        };
        let (tenant, role, stored, revoked) = match fresh {
            Some(found) => found,
            None => {
                let conn = self.db.connection().await?;
                let row = conn
                    .query_opt(
                        "SELECT tenant_id, role, secret_hash, revoked_at IS NOT NULL FROM lily.api_keys WHERE key_id = $1",
                        &[&key_id],
                    )
                    .await?
                    .ok_or_else(bad)?;
                let found: (String, Role, Vec<u8>, bool) = (
                    row.get(0),
                    row.get::<_, String>(1)
                        .parse()
                        .map_err(InboundError::Internal)?,
                    row.get(2),
                    row.get(3),
                );
                self.cache.write().await.insert(
                    key_id.to_owned(),
                    Cached {
                        tenant: found.0.clone(),
                        role: found.1,
                        hash: found.2.clone(),
                        revoked: found.3,
                        at: Instant::now(),
                    },
                );
                found
            }
        };
        if revoked || !bool::from(hash(key).ct_eq(&stored)) {
            return Err(bad());
        }
        Ok(Caller {
            subject: format!("api key {key_id}"),
            kind: CredentialKind::ApiKey,
            grants: vec![Grant { tenant, role }],
            named_roles: Vec::new(),
            slot: None,
        })
    }
}
