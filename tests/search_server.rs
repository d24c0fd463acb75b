//! The tests' Elasticsearch-API server: `lily_embedded::SearchServer`
//! (osmem-server, installed by `scripts/bootstrap` as `osmem-server` next
//! to the test venv's python), with the requests the tests read it by.

use std::ops::Deref;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use serde_json::{Value, json};

/// A running server, killed on drop.
pub struct SearchServer {
    server: lily_embedded::SearchServer,
    http: reqwest::Client,
}

impl Deref for SearchServer {
    type Target = lily_embedded::SearchServer;

    fn deref(&self) -> &Self::Target {
        &self.server
    }
}

impl SearchServer {
    /// Starts the server on a free loopback port.
    pub async fn start() -> anyhow::Result<SearchServer> {
        Ok(SearchServer {
            server: lily_embedded::SearchServer::start(&server_bin()?).await?,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
        })
    }

    /// POSTs `body` to `path`; returns the status and the JSON answer.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        let r = self
            .http
            .post(format!("{}{path}", self.url()))
            .json(body)
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    /// DELETEs `path`; returns the status and the JSON answer.
    pub async fn delete(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        let r = self
            .http
            .delete(format!("{}{path}", self.url()))
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    /// GETs `path`; returns the status and the JSON answer.
    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        let r = self
            .http
            .get(format!("{}{path}", self.url()))
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    /// Every document behind `alias`, by id, with its `_version` (an alias
    /// that does not exist yet has none).
    pub async fn documents(&self, alias: &str) -> anyhow::Result<Vec<(String, u64, Value)>> {
        let (status, body) = self
            .post(
                &format!("/{alias}/_search"),
                &json!({"query": {"match_all": {}}, "size": 10000, "version": true}),
            )
            .await?;
        if status == 404 {
            return Ok(Vec::new());
        }
        if status != 200 {
            bail!("searching {alias}: HTTP {status}: {body}");
        }
        let mut docs: Vec<(String, u64, Value)> = body["hits"]["hits"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|h| {
                (
                    h["_id"].as_str().unwrap_or_default().to_owned(),
                    h["_version"].as_u64().unwrap_or(0),
                    h["_source"].clone(),
                )
            })
            .collect();
        docs.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(docs)
    }
}

/// The server binary: `$LILY_OSMEM`, else `osmem-server` next to the test
/// venv's python.
pub fn server_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("LILY_OSMEM") {
        return Ok(PathBuf::from(p));
    }
    let bin = crate::test_python()?.with_file_name("osmem-server");
    if !bin.exists() {
        bail!(
            "{} not found: run scripts/bootstrap to install the osmem search server",
            bin.display()
        );
    }
    Ok(bin)
}
