//! A generic webhook: the notification as JSON, signed with HMAC-SHA256.
//!
//! The body is the notification with `"schema": "lily.notification.v1"`.
//! Headers: `X-Lily-Delivery` (the dedupe key: the same change always
//! carries the same one, so a receiver can drop a redelivery), `X-Lily-Event`
//! (trigger, update, resolve) and, when a secret is set, `X-Lily-Timestamp`
//! (Unix seconds) and `X-Lily-Signature: sha256=<hex>`, the HMAC-SHA256 of
//! `<timestamp>.<body>` with the secret. A receiver recomputes it over the
//! raw body and refuses stale timestamps, which stops replays.

use std::collections::BTreeMap;

use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::event::Notification;
use super::target::{DeliveryContext, DeliveryError, Target, read_response};

/// The value of `schema` in every body.
pub const SCHEMA: &str = "lily.notification.v1";

/// `kind = "webhook"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where to POST.
    pub url: String,
    /// Signing secret; empty: unsigned.
    #[serde(default)]
    pub secret: String,
    /// Extra headers (an authorization header, a routing hint).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// POSTs signed notifications.
pub struct WebhookTarget {
    config: WebhookConfig,
    http: reqwest::Client,
}

impl WebhookTarget {
    /// A target for `config`.
    pub fn new(config: WebhookConfig, http: reqwest::Client) -> Self {
        Self { config, http }
    }
}

/// The body sent for `n`.
pub fn body(n: &Notification) -> Vec<u8> {
    let mut v = serde_json::to_value(n).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("schema".into(), SCHEMA.into());
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

/// `sha256=<hex>` of `<timestamp>.<body>` with `secret`.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[async_trait::async_trait]
impl Target for WebhookTarget {
    async fn deliver(
        &self,
        n: &Notification,
        _: &DeliveryContext<'_>,
    ) -> Result<(), DeliveryError> {
        let body = body(n);
        let mut request = self
            .http
            .post(&self.config.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("x-lily-delivery", &n.dedupe_key)
            .header("x-lily-event", n.action.as_str());
        if !self.config.secret.is_empty() {
            let now = chrono::Utc::now().timestamp();
            request = request.header("x-lily-timestamp", now.to_string()).header(
                "x-lily-signature",
                signature(&self.config.secret, now, &body),
            );
        }
        for (k, v) in &self.config.headers {
            request = request.header(k, v);
        }
        read_response(request.body(body).send().await?)
            .await
            .map(|_| ())
    }

    fn default_rate_per_sec(&self) -> f64 {
        20.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::slack::tests::sample;

    #[test]
    fn the_body_names_its_schema_and_the_signature_covers_the_timestamp() {
        let b = body(&sample());
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["schema"], SCHEMA);
        assert_eq!(v["action"], "trigger");
        let s1 = signature("k", 1700000000, &b);
        assert!(s1.starts_with("sha256=") && s1.len() == 7 + 64);
        assert_ne!(s1, signature("k", 1700000001, &b));
        assert_ne!(s1, signature("other", 1700000000, &b));
    }
}
