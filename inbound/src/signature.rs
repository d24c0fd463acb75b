//! Webhook signatures.
//!
//! Monte Carlo signs with HMAC-SHA512 and the webhook's shared secret, hex
//! in `x-mcd-signature`. Its documented verification example computes the
//! HMAC over `urllib.parse.urlencode(body)` of the *decoded* JSON body in
//! Python, so the signed bytes are Python's URL-encoding of the top-level
//! keys and of `str()` of each value (see [`python_form`]). We accept that
//! form, and also an HMAC-SHA512 over the raw body (what relays and most
//! senders do); both need the tenant's secret.
//!
//! JIRA (and other WebSub-style senders) sign the raw body with HMAC-SHA256,
//! `X-Hub-Signature: sha256=<hex>`.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Sha256, Sha512};

mod python;

pub use python::python_form;

/// The Monte Carlo signature header.
pub const MONTE_CARLO_HEADER: &str = "x-mcd-signature";
/// The WebSub-style signature header JIRA sends.
pub const HUB_HEADER: &str = "x-hub-signature";

/// Hex HMAC-SHA512 of `data` with `secret`: what a Monte Carlo sender puts
/// in `x-mcd-signature` (over [`python_form`] of the body).
pub fn hmac_sha512_hex(secret: &[u8], data: &[u8]) -> String {
    let mut mac = Hmac::<Sha512>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(data);
    hex::encode(mac.finalize().into_bytes())
}

/// Hex HMAC-SHA256 of `data` with `secret`.
pub fn hmac_sha256_hex(secret: &[u8], data: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(data);
    hex::encode(mac.finalize().into_bytes())
}

fn verify<M: Mac + KeyInit>(secret: &[u8], data: &[u8], signature: &[u8]) -> bool {
    let Ok(mut mac) = <M as KeyInit>::new_from_slice(secret) else {
        return false;
    };
    mac.update(data);
    mac.verify_slice(signature).is_ok()
}

/// Whether `signature` (hex) signs `body` the way Monte Carlo does, or its
/// raw bytes.
pub fn verify_monte_carlo(secret: &[u8], body: &[u8], signature: &str) -> bool {
    let Ok(sig) = hex::decode(signature.trim()) else {
        return false;
    };
    if verify::<Hmac<Sha512>>(secret, body, &sig) {
        return true;
    }
    python_form(body).is_some_and(|form| verify::<Hmac<Sha512>>(secret, form.as_bytes(), &sig))
}

/// Whether `header` (`sha256=<hex>`) signs the raw `body`.
pub fn verify_hub_sha256(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex_sig) = header.trim().strip_prefix("sha256=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    verify::<Hmac<Sha256>>(secret, body, &sig)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_monte_carlo_forms_verify_and_a_wrong_secret_does_not() {
        let body = br#"{"type": "incident", "payload": {"incident_id": "i-1"}}"#;
        let form = python_form(body).unwrap();
        let documented = hmac_sha512_hex(b"s3cret", form.as_bytes());
        assert!(verify_monte_carlo(b"s3cret", body, &documented));
        assert!(verify_monte_carlo(
            b"s3cret",
            body,
            &hmac_sha512_hex(b"s3cret", body)
        ));
        assert!(!verify_monte_carlo(b"other", body, &documented));
        assert!(!verify_monte_carlo(b"s3cret", body, "zz"));
        let mut tampered = body.to_vec();
        tampered[30] = b'J';
        assert!(!verify_monte_carlo(b"s3cret", &tampered, &documented));
    }

    #[test]
    fn hub_signature() {
        let sig = format!("sha256={}", hmac_sha256_hex(b"k", b"{}"));
        assert!(verify_hub_sha256(b"k", b"{}", &sig));
        assert!(!verify_hub_sha256(b"k", b"{ }", &sig));
        assert!(!verify_hub_sha256(b"k", b"{}", "sha1=00"));
    }
}
