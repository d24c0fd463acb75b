//! Talking to `lily run`'s API as its users do: an HTTP client, Monte
//! Carlo signatures made by Python exactly as Monte Carlo's documentation
//! verifies them, JWTs signed with the test keys, and a JWKS endpoint whose
//! keys the test can rotate.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

use crate::{test_python, wait_for};

/// A client of one API.
#[derive(Clone)]
pub struct ApiClient {
    base: String,
    http: reqwest::Client,
}

/// A response: status and JSON body (Null when the body is not JSON).
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// The body.
    pub body: Value,
}

impl Reply {
    /// The `error` code of a refusal.
    pub fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }
}

impl ApiClient {
    /// A client of the API at `base` (`http://127.0.0.1:port`).
    pub fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
        }
    }

    /// Waits until the API answers `/healthz`.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        wait_for("the API to answer", Duration::from_secs(60), || async {
            Ok(self
                .http
                .get(format!("{}/healthz", self.base))
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ()))
        })
        .await
    }

    /// Sends `method path` with a raw JSON body and headers.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Reply> {
        self.send_as(method, path, body.map(|b| ("application/json", b)), headers)
            .await
    }

    /// Sends `method path` with a body of the given media type.
    pub async fn send_as(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Reply> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some((media, body)) = body {
            req = req.header("content-type", media).body(body);
        }
        let resp = req.send().await.context("sending the request")?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await?;
        Ok(Reply {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        })
    }

    /// `PUT path` with a JSON body.
    pub async fn put(
        &self,
        path: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Reply> {
        self.send(
            reqwest::Method::PUT,
            path,
            Some(serde_json::to_vec(body)?),
            headers,
        )
        .await
    }

    /// `POST path` with a JSON body.
    pub async fn post(
        &self,
        path: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Reply> {
        self.send(
            reqwest::Method::POST,
            path,
            Some(serde_json::to_vec(body)?),
            headers,
        )
        .await
    }

    /// `DELETE path` with a JSON body.
    pub async fn delete(
        &self,
        path: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Reply> {
        self.send(
            reqwest::Method::DELETE,
            path,
            Some(serde_json::to_vec(body)?),
            headers,
        )
        .await
    }

    /// `GET path`.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<Reply> {
        self.send(reqwest::Method::GET, path, None, headers).await
    }
}

/// `x-mcd-signature` for `body`, computed by CPython the way Monte Carlo's
/// documentation verifies it: HMAC-SHA512 of `urlencode(json.loads(body))`.
pub fn monte_carlo_signature(secret: &str, body: &[u8]) -> anyhow::Result<String> {
    let script = "import sys, json, hmac, hashlib, urllib.parse\n\
                  secret, body = sys.argv[1].encode(), json.loads(sys.stdin.buffer.read())\n\
                  print(hmac.new(secret, urllib.parse.urlencode(body).encode('utf8'), hashlib.sha512).hexdigest())\n";
    let mut child = std::process::Command::new(test_python()?)
        .args(["-c", script, secret])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running python")?;
    use std::io::Write as _;
    child
        .stdin
        .take()
        .context("python stdin")?
        .write_all(body)?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(out.status.success(), "python failed");
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/jwt")
        .join(name)
}

/// Claims granting `grants` ("tenant:role"), expiring in `ttl_secs` (negative: already expired).
pub fn claims(subject: &str, grants: &[&str], ttl_secs: i64) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({
        "sub": subject, "exp": now + ttl_secs, "iat": now, "lily_roles": grants,
        "iss": TEST_ISSUER, "aud": TEST_AUDIENCE,
    })
}

/// The issuer the tests' tokens name (`auth.jwt_issuer` where checked).
pub const TEST_ISSUER: &str = "https://idp.test.example/realms/lily";
/// The audience the tests' tokens name (`auth.jwt_audience` where checked).
pub const TEST_AUDIENCE: &str = "lily";

/// An HS256 token.
pub fn hs256(secret: &str, claims: &Value) -> anyhow::Result<String> {
    Ok(encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// A token signed with the fixture key `rsa-a`, `rsa-b` (RS256) or `ec-a` (ES256).
pub fn signed(kid: &str, claims: &Value) -> anyhow::Result<String> {
    let pem = std::fs::read(fixture(&format!("{kid}.pem")))?;
    let (alg, key) = if kid.starts_with("ec") {
        (Algorithm::ES256, EncodingKey::from_ec_pem(&pem)?)
    } else {
        (Algorithm::RS256, EncodingKey::from_rsa_pem(&pem)?)
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    Ok(encode(&header, claims, &key)?)
}

/// A JWKS endpoint on loopback serving one of the fixture sets.
pub struct JwksServer {
    /// Its URL.
    pub url: String,
    keys: Arc<RwLock<Value>>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    /// Serves `jwks-before-rotation.json`.
    pub async fn start() -> anyhow::Result<Self> {
        let keys = Arc::new(RwLock::new(Self::load("jwks-before-rotation.json")?));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/certs", listener.local_addr()?);
        let served = keys.clone();
        let app = axum::Router::new().route(
            "/certs",
            axum::routing::get(move || {
                let served = served.clone();
                async move {
                    let body = served.read().map(|v| v.clone()).unwrap_or(Value::Null);
                    axum::Json(body)
                }
            }),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { url, keys, task })
    }

    fn load(name: &str) -> anyhow::Result<Value> {
        Ok(serde_json::from_slice(&std::fs::read(fixture(name))?)?)
    }

    /// Rotates: `rsa-a` is replaced by `rsa-b`.
    pub fn rotate(&self) -> anyhow::Result<()> {
        let next = Self::load("jwks-after-rotation.json")?;
        *self
            .keys
            .write()
            .map_err(|_| anyhow::anyhow!("JWKS lock poisoned"))? = next;
        Ok(())
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
