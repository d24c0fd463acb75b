//! Searching a tenant's asset documents: free text, filters by type, tag
//! and incident state, paging. The tenant is always the caller's, chosen
//! by the server: it picks the alias and is also a filter of the query.

use elasticsearch::http::StatusCode;
use elasticsearch::{Elasticsearch, SearchParts};
use lily_cdc::TenantId;
use serde::Serialize;
use serde_json::{Value, json};

use super::SearchError;
use super::index::IndexNaming;

/// What to look for.
#[derive(Debug, Clone, Default)]
pub struct SearchQuery {
    /// Free text over names, qualified names, descriptions and tags.
    pub text: Option<String>,
    /// Any of these asset types.
    pub types: Vec<String>,
    /// All of these tags (direct or propagated).
    pub tags: Vec<String>,
    /// An incident in any of these states (open, acknowledged).
    pub incident_states: Vec<String>,
    /// Page size.
    pub limit: u32,
    /// Hits to skip.
    pub offset: u32,
}

/// One hit.
#[derive(Debug, Clone, Serialize)]
pub struct SearchHit {
    /// Relevance.
    pub score: Option<f64>,
    /// The document.
    pub document: Value,
}

/// A page of hits, with counts by type and tag over all hits.
#[derive(Debug, Clone, Serialize)]
pub struct SearchPage {
    /// Hits in all.
    pub total: u64,
    /// This page.
    pub hits: Vec<SearchHit>,
    /// Hits per asset type.
    pub types: Vec<(String, u64)>,
    /// Hits per tag.
    pub tags: Vec<(String, u64)>,
}

/// The query body for `tenant`.
pub fn query_body(tenant: &str, q: &SearchQuery) -> Value {
    let mut filter = vec![json!({"term": {"tenant_id": tenant}})];
    if !q.types.is_empty() {
        filter.push(json!({"terms": {"type_name": q.types}}));
    }
    for tag in &q.tags {
        filter.push(json!({"term": {"tags": tag}}));
    }
    if !q.incident_states.is_empty() {
        filter.push(json!({"nested": {
            "path": "incidents",
            "query": {"terms": {"incidents.state": q.incident_states}}
        }}));
    }
    let must = match q.text.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
        Some(text) => json!([{"multi_match": {
            "query": text,
            "fields": ["name^3", "qualified_name.words^2", "description", "tags^2"],
        }}]),
        None => json!([{"match_all": {}}]),
    };
    json!({
        "from": q.offset,
        "size": q.limit,
        "track_total_hits": true,
        "query": {"bool": {"must": must, "filter": filter}},
        "aggs": {
            "types": {"terms": {"field": "type_name", "size": 20}},
            "tags": {"terms": {"field": "tags", "size": 50}},
        },
    })
}

fn buckets(v: &Value) -> Vec<(String, u64)> {
    v["buckets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| Some((b["key"].as_str()?.to_owned(), b["doc_count"].as_u64()?)))
        .collect()
}

/// Runs `q` over `tenant`'s documents. A tenant with no index yet has no hits.
pub async fn search(
    client: &Elasticsearch,
    naming: &IndexNaming,
    tenant: &TenantId,
    q: &SearchQuery,
) -> Result<SearchPage, SearchError> {
    let alias = naming.alias(tenant);
    let response = client
        .search(SearchParts::Index(&[&alias]))
        .body(query_body(tenant.as_str(), q))
        .send()
        .await?;
    let status = response.status_code();
    if status == StatusCode::NOT_FOUND {
        return Ok(SearchPage {
            total: 0,
            hits: Vec::new(),
            types: Vec::new(),
            tags: Vec::new(),
        });
    }
    let body: Value = response.json().await?;
    if !status.is_success() {
        let error = format!("search: HTTP {status}: {}", body["error"]);
        return Err(SearchError::from_status(status, error));
    }
    let hits = body["hits"]["hits"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| SearchHit {
            score: h["_score"].as_f64(),
            document: h["_source"].clone(),
        })
        .collect();
    Ok(SearchPage {
        total: body["hits"]["total"]["value"].as_u64().unwrap_or(0),
        hits,
        types: buckets(&body["aggregations"]["types"]),
        tags: buckets(&body["aggregations"]["tags"]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tenant_is_always_a_filter_and_tags_all_must_match() {
        let q = SearchQuery {
            text: Some("orders".into()),
            types: vec!["table".into()],
            tags: vec!["PII".into(), "GDPR".into()],
            incident_states: vec!["open".into()],
            limit: 10,
            offset: 20,
        };
        let b = query_body("acme", &q);
        let filter = b["query"]["bool"]["filter"].as_array().unwrap();
        assert_eq!(filter[0], json!({"term": {"tenant_id": "acme"}}));
        assert_eq!(filter.len(), 5);
        assert_eq!(filter[4]["nested"]["path"], "incidents");
        assert_eq!(b["from"], 20);
        assert_eq!(
            b["query"]["bool"]["must"][0]["multi_match"]["query"],
            "orders"
        );
        let all = query_body("acme", &SearchQuery::default());
        assert!(all["query"]["bool"]["must"][0].get("match_all").is_some());
    }
}
