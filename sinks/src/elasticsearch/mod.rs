//! Elasticsearch: the search sink and the queries of the search API.
//!
//! Documents come from a post-consume transform (by default
//! `search_documents.sql`: an asset with its tags, direct and propagated,
//! and its open incidents). Each tenant has its own index behind an alias
//! ([`index`]); writes are `_bulk` requests versioned by commit LSN
//! ([`bulk`]), so replays and late changes never overwrite newer documents.
//! Speaks the API Elasticsearch 8 serves (OpenSearch serves the same).

pub mod bulk;
mod config;
pub mod index;
pub mod search;
mod sink;

use std::time::Duration;

use elasticsearch::Elasticsearch;
use elasticsearch::auth::Credentials;
use elasticsearch::http::StatusCode;
use elasticsearch::http::response::Response;
use elasticsearch::http::transport::{
    MultiNodeConnectionPool, SingleNodeConnectionPool, TransportBuilder,
};
use lily_cdc::sink::SinkError;
use tracing::warn;

pub use config::{DEFAULT_TRANSFORM, ElasticsearchConfig, Refresh};
pub use index::{ASSETS_MAPPING, IndexMapping, IndexNaming};
pub use search::{SearchHit, SearchPage, SearchQuery};
pub use sink::ElasticsearchSink;

use lily_cdc::TenantId;
use lily_cdc::sink::dead_letter::{DeadLetter, DeadLetters};

/// Why a search call failed.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// The cluster could not be reached or is overloaded; later may work.
    #[error("search cluster unavailable: {0}")]
    Unavailable(String),
    /// The cluster refused the request.
    #[error("search cluster refused: {0}")]
    Refused(String),
    /// The configuration is wrong.
    #[error("{0}")]
    Config(String),
}

impl SearchError {
    /// What a failed HTTP `status` means: 408, 429 and 5xx may pass later,
    /// the rest is a refusal.
    pub(crate) fn from_status(status: StatusCode, message: String) -> Self {
        if status.is_server_error()
            || status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
        {
            SearchError::Unavailable(message)
        } else {
            SearchError::Refused(message)
        }
    }
}

/// The JSON body of a response, or the error its status means (`what`
/// names the call in the message).
pub(crate) async fn response_json(
    response: Response,
    what: &str,
) -> Result<serde_json::Value, SearchError> {
    let status = response.status_code();
    if status.is_success() {
        return Ok(response.json().await?);
    }
    let text = response.text().await.unwrap_or_default();
    Err(SearchError::from_status(
        status,
        format!("{what}: HTTP {status}: {text}"),
    ))
}

impl From<elasticsearch::Error> for SearchError {
    fn from(e: elasticsearch::Error) -> Self {
        SearchError::Unavailable(lily_cdc::sink::error_chain(&e))
    }
}

/// Elasticsearch as an `elasticsearch` sink describes it: its client, the
/// naming of its indices and the mapping of its documents.
#[derive(Clone)]
pub struct SearchCluster {
    /// The client.
    pub client: Elasticsearch,
    /// Alias names.
    pub naming: IndexNaming,
    /// The mapping new indices get.
    pub mapping: IndexMapping,
    config: ElasticsearchConfig,
}

impl SearchCluster {
    /// The cluster at `config.urls`.
    pub fn connect(config: &ElasticsearchConfig) -> Result<Self, SearchError> {
        if config.urls.is_empty() {
            return Err(SearchError::Config("urls: no node URL".into()));
        }
        let urls = config
            .urls
            .iter()
            .map(|u| {
                url::Url::parse(u)
                    .map_err(|e| SearchError::Config(format!("urls: {u:?} is not a URL: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut builder = if urls.len() == 1 {
            TransportBuilder::new(SingleNodeConnectionPool::new(urls[0].clone()))
        } else {
            TransportBuilder::new(MultiNodeConnectionPool::round_robin(urls, None))
        };
        builder = builder
            .timeout(Duration::from_millis(config.timeout_ms.max(1)))
            .disable_proxy();
        if !config.api_key.is_empty() {
            builder = builder.auth(Credentials::EncodedApiKey(config.api_key.clone()));
        } else if !config.username.is_empty() {
            builder = builder.auth(Credentials::Basic(
                config.username.clone(),
                config.password.clone(),
            ));
        }
        let transport = builder
            .build()
            .map_err(|e| SearchError::Config(format!("client: {e}")))?;
        let mapping = if config.mapping.is_empty() {
            IndexMapping::parse(ASSETS_MAPPING)?
        } else {
            let text = std::fs::read_to_string(&config.mapping).map_err(|e| {
                SearchError::Config(format!("mapping: cannot read {}: {e}", config.mapping))
            })?;
            IndexMapping::parse(&text)?
        };
        Ok(Self {
            client: Elasticsearch::new(transport),
            naming: IndexNaming::new(&config.index_prefix, &config.index),
            mapping,
            config: config.clone(),
        })
    }

    /// A search sink named `name` writing to this cluster.
    pub fn sink(&self, name: &str, dead_letters: DeadLetters) -> ElasticsearchSink {
        let refresh = match self.config.refresh {
            Refresh::Immediately => Some(elasticsearch::params::Refresh::True),
            Refresh::WaitFor => Some(elasticsearch::params::Refresh::WaitFor),
            Refresh::IndexInterval => None,
        };
        ElasticsearchSink::new(
            name,
            self.client.clone(),
            self.naming.clone(),
            self.mapping.clone(),
            refresh,
            self.config.bulk_max_bytes,
            dead_letters,
        )
    }

    /// Refuses credentials the cluster refuses; an unreachable cluster is
    /// only reported, since the runner retries until it is back.
    pub async fn healthcheck(self, sink: String) -> Result<(), SinkError> {
        match self.client.ping().send().await {
            Ok(r) if r.status_code().as_u16() == 401 || r.status_code().as_u16() == 403 => {
                Err(SinkError::Rejected {
                    sink,
                    message: format!(
                        "the cluster refuses Lily's credentials (HTTP {})",
                        r.status_code()
                    ),
                })
            }
            Ok(_) => Ok(()),
            Err(e) => {
                warn!(sink, error = %e, "the search cluster is unreachable; documents wait until it is back");
                Ok(())
            }
        }
    }

    /// Searches `tenant`'s documents.
    pub async fn search(
        &self,
        tenant: &TenantId,
        q: &SearchQuery,
    ) -> Result<SearchPage, SearchError> {
        search::search(&self.client, &self.naming, tenant, q).await
    }

    /// Deletes the indices of `tenant`'s documents, and no other tenant's.
    pub async fn delete_tenant(&self, tenant: &TenantId) -> Result<usize, SearchError> {
        index::delete_indices(&self.client, &self.naming, Some(tenant)).await
    }

    /// Sends a dead letter of this sink again (its stored `_bulk` lines;
    /// the version keeps a replay from overwriting anything newer).
    pub async fn replay(&self, letter: &DeadLetter) -> Result<(), SearchError> {
        let payload = letter.payload.clone().unwrap_or_default();
        let text = String::from_utf8(payload)
            .map_err(|_| SearchError::Refused("the dead letter holds no _bulk lines".into()))?;
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if lines.is_empty()
            || lines
                .iter()
                .any(|l| serde_json::from_str::<serde_json::Value>(l).is_err())
        {
            return Err(SearchError::Refused(
                "the dead letter holds no _bulk lines".into(),
            ));
        }
        if let Some(tenant) = &letter.tenant_id {
            let tenant =
                TenantId::parse(tenant).map_err(|e| SearchError::Refused(e.to_string()))?;
            index::ensure_alias(&self.client, &self.naming.alias(&tenant), &self.mapping).await?;
        }
        let response = self
            .client
            .bulk(elasticsearch::BulkParts::None)
            .body(lines)
            .send()
            .await?;
        let body = response_json(response, "_bulk").await?;
        match bulk::item_outcomes(&body).into_iter().next() {
            Some(bulk::ItemOutcome::Done | bulk::ItemOutcome::Superseded) => Ok(()),
            Some(bulk::ItemOutcome::Retry(m)) => Err(SearchError::Unavailable(m)),
            Some(bulk::ItemOutcome::Refused { code, reason }) => {
                Err(SearchError::Refused(format!("{code}: {reason}")))
            }
            None => Err(SearchError::Unavailable("_bulk answered no item".into())),
        }
    }
}
