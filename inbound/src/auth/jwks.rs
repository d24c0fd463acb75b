//! The identity provider's signing keys (JWKS), cached and refreshed: on a
//! timer, and at once when a token names a key id not seen yet, so a
//! rotation at the provider is picked up without a restart. Keys that
//! disappear from the set stop verifying at the next fetch.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::sync::{Mutex, RwLock};
use tracing::{info, warn};

use crate::error::{InboundError, Result};

/// A key of the set: its decoding key, and its family (RSA or EC).
struct CachedKey {
    key: DecodingKey,
    family: Family,
    alg: Option<Algorithm>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    Ec,
    Other,
}

fn family_of(alg: Algorithm) -> Family {
    match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => Family::Rsa,
        Algorithm::ES256 | Algorithm::ES384 => Family::Ec,
        _ => Family::Other,
    }
}

struct Inner {
    url: String,
    client: reqwest::Client,
    keys: RwLock<HashMap<String, Arc<CachedKey>>>,
    /// When the set was last fetched (successfully or not).
    fetched: Mutex<Option<Instant>>,
    min_refresh: Duration,
}

/// A cached JWKS.
pub struct Jwks {
    inner: Arc<Inner>,
}

impl Jwks {
    /// Caches the set at `url`, fetching it every `refresh_ms` and on an
    /// unknown key id at most every `min_refresh_ms`.
    pub fn new(url: &str, refresh_ms: u64, min_refresh_ms: u64) -> Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| InboundError::Internal(format!("HTTP client for the JWKS: {e}")))?;
        let inner = Arc::new(Inner {
            url: url.to_owned(),
            client,
            keys: RwLock::new(HashMap::new()),
            fetched: Mutex::new(None),
            min_refresh: Duration::from_millis(min_refresh_ms),
        });
        tokio::spawn(refresh_loop(
            Arc::downgrade(&inner),
            Duration::from_millis(refresh_ms),
        ));
        Ok(Self { inner })
    }

    /// The key that verifies a token with `kid` and `alg`.
    pub async fn key(&self, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey> {
        if let Some(found) = self.lookup(kid, alg).await {
            return Ok(found);
        }
        // Unknown: the provider may have rotated its keys.
        self.inner.fetch_if_due().await;
        self.lookup(kid, alg).await.ok_or_else(|| {
            InboundError::BadCredentials(match kid {
                Some(kid) => format!("the token's key id {kid:?} is not in the JWKS"),
                None => format!("the token has no key id and the JWKS has no single {alg:?} key"),
            })
        })
    }

    async fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Option<DecodingKey> {
        let keys = self.inner.keys.read().await;
        let fits = |k: &CachedKey| k.family == family_of(alg) && k.alg.is_none_or(|a| a == alg);
        match kid {
            Some(kid) => keys.get(kid).filter(|k| fits(k)).map(|k| k.key.clone()),
            None => {
                let mut matching = keys.values().filter(|k| fits(k));
                match (matching.next(), matching.next()) {
                    (Some(only), None) => Some(only.key.clone()),
                    _ => None,
                }
            }
        }
    }
}

impl Inner {
    /// Fetches the set unless it was fetched less than `min_refresh` ago.
    async fn fetch_if_due(&self) {
        let mut fetched = self.fetched.lock().await;
        if fetched.is_some_and(|at| at.elapsed() < self.min_refresh) {
            return;
        }
        *fetched = Some(Instant::now());
        if let Err(e) = self.fetch().await {
            metrics::counter!("lily_jwks_fetch_errors_total").increment(1);
            warn!(url = %self.url, error = %e, "could not fetch the JWKS; keeping the keys we have");
        }
    }

    async fn fetch(&self) -> Result<()> {
        let set: JwkSet = self
            .client
            .get(&self.url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| InboundError::Internal(e.to_string()))?
            .json()
            .await
            .map_err(|e| InboundError::Internal(format!("not a JWKS: {e}")))?;
        let mut keys = HashMap::new();
        for (i, jwk) in set.keys.iter().enumerate() {
            let family = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Family::Rsa,
                AlgorithmParameters::EllipticCurve(_) => Family::Ec,
                _ => Family::Other,
            };
            let alg = jwk
                .common
                .key_algorithm
                .and_then(|a| a.to_string().parse::<Algorithm>().ok());
            match DecodingKey::from_jwk(jwk) {
                Ok(key) => {
                    let kid = jwk.common.key_id.clone().unwrap_or_else(|| format!("#{i}"));
                    keys.insert(kid, Arc::new(CachedKey { key, family, alg }));
                }
                Err(e) => warn!(url = %self.url, key = i, error = %e, "skipping a JWKS key"),
            }
        }
        info!(url = %self.url, keys = keys.len(), "JWKS fetched");
        metrics::gauge!("lily_jwks_keys").set(keys.len() as f64);
        *self.keys.write().await = keys;
        Ok(())
    }
}

async fn refresh_loop(inner: Weak<Inner>, every: Duration) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        {
            let mut fetched = strong.fetched.lock().await;
            *fetched = Some(Instant::now());
        }
        if let Err(e) = strong.fetch().await {
            metrics::counter!("lily_jwks_fetch_errors_total").increment(1);
            warn!(url = %strong.url, error = %e, "could not fetch the JWKS; keeping the keys we have");
        }
        drop(strong);
        tokio::time::sleep(every).await;
    }
}
