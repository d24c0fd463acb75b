//! One index per tenant behind an alias.
//!
//! Documents are written to and searched through the alias
//! `<prefix>-<tenant>-<index>`, the tenant written as its
//! [`segment`](lily_cdc::TenantId::segment) (only `a-z` and `0-9`, so one
//! tenant's names never match another's); the index behind it is named after its
//! mapping's fingerprint, `<alias>-<fingerprint>`. A changed mapping
//! therefore means a new index, which is filled from the old one (reindexed,
//! keeping each document's version) and swapped in behind the alias without
//! the search API noticing.

use elasticsearch::Elasticsearch;
use elasticsearch::http::StatusCode;
use elasticsearch::indices::{IndicesCreateParts, IndicesDeleteParts, IndicesGetAliasParts};
use lily_cdc::TenantId;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{SearchError, response_json};

/// The built-in mapping of asset documents (settings and mappings).
pub const ASSETS_MAPPING: &str = include_str!("assets.json");

/// Names the aliases and indices of one kind of document.
#[derive(Debug, Clone)]
pub struct IndexNaming {
    prefix: String,
    index: String,
}

impl IndexNaming {
    /// Aliases `<prefix>-<tenant>-<index>`.
    pub fn new(prefix: &str, index: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            index: index.to_owned(),
        }
    }

    /// The alias of `tenant`'s documents.
    pub fn alias(&self, tenant: &TenantId) -> String {
        format!("{}-{}-{}", self.prefix, tenant.segment(), self.index)
    }

    /// The alias pattern of every tenant; it may also match names that are
    /// not this naming's ([`IndexNaming::tenant_of`] tells).
    fn alias_pattern(&self) -> String {
        format!("{}-*-{}", self.prefix, self.index)
    }

    /// The tenant whose alias is `alias`, if it is one of this naming's.
    pub fn tenant_of(&self, alias: &str) -> Option<TenantId> {
        let rest = alias.strip_prefix(&self.prefix)?.strip_prefix('-')?;
        let segment = rest.strip_suffix(&self.index)?.strip_suffix('-')?;
        TenantId::from_segment(segment)
    }
}

/// An index body (settings and mappings) with its fingerprint.
#[derive(Debug, Clone)]
pub struct IndexMapping {
    /// The body of the create-index request, without aliases.
    pub body: Value,
    /// First 8 hex digits of the SHA-256 of the body.
    pub fingerprint: String,
}

impl IndexMapping {
    /// Parses a mapping file's text.
    pub fn parse(text: &str) -> Result<Self, SearchError> {
        let body: Value = serde_json::from_str(text)
            .map_err(|e| SearchError::Config(format!("the index mapping is not JSON: {e}")))?;
        if !body.get("mappings").is_some_and(Value::is_object) {
            return Err(SearchError::Config(
                "the index mapping has no \"mappings\" object".into(),
            ));
        }
        // The canonical text (serde_json sorts keys) so formatting does not matter.
        let canonical = serde_json::to_string(&body).unwrap_or_default();
        let fingerprint = hex::encode(Sha256::digest(canonical.as_bytes()))[..8].to_owned();
        Ok(Self { body, fingerprint })
    }

    /// The index that should stand behind `alias`.
    pub fn index_name(&self, alias: &str) -> String {
        format!("{alias}-{}", self.fingerprint)
    }
}

/// Which indices an alias points at (empty when it does not exist).
pub async fn alias_targets(
    client: &Elasticsearch,
    alias: &str,
) -> Result<Vec<String>, SearchError> {
    let mut indices: Vec<String> = alias_indices(client, alias)
        .await?
        .into_iter()
        .map(|(_, index)| index)
        .collect();
    indices.dedup();
    Ok(indices)
}

/// Makes sure `alias` exists, creating the index behind it from `mapping`
/// if needed. Returns the index it points at; a warning is the caller's to
/// give when that is not the current mapping's.
pub async fn ensure_alias(
    client: &Elasticsearch,
    alias: &str,
    mapping: &IndexMapping,
) -> Result<String, SearchError> {
    if let Some(existing) = alias_targets(client, alias).await?.into_iter().next() {
        return Ok(existing);
    }
    let index = mapping.index_name(alias);
    let mut body = mapping.body.clone();
    body["aliases"] = serde_json::json!({ alias: {"is_write_index": true} });
    create_index(client, &index, body).await?;
    Ok(index)
}

/// Creates `index` with `body`; one that exists already (another writer
/// made it first, or an earlier attempt stopped half-way) is fine.
async fn create_index(client: &Elasticsearch, index: &str, body: Value) -> Result<(), SearchError> {
    let response = client
        .indices()
        .create(IndicesCreateParts::Index(index))
        .body(body)
        .send()
        .await?;
    match response_json(response, &format!("creating index {index}")).await {
        Err(SearchError::Refused(m)) if m.contains("resource_already_exists_exception") => Ok(()),
        other => other.map(|_| ()),
    }
}

/// Moves `alias` from index `from` to a new index of `mapping`: creates
/// it, copies every document over with its version (so no older write can
/// overwrite a newer one afterwards), then swaps the alias in one request.
/// The old index is left for the operator to delete. Returns the new index.
pub async fn migrate_alias(
    client: &Elasticsearch,
    alias: &str,
    from: &str,
    mapping: &IndexMapping,
) -> Result<String, SearchError> {
    let index = mapping.index_name(alias);
    create_index(client, &index, mapping.body.clone()).await?;
    let copied = response_json(
        client
            .reindex()
            .refresh(true)
            .wait_for_completion(true)
            .body(serde_json::json!({
                "conflicts": "proceed",
                "source": {"index": from},
                "dest": {"index": index, "version_type": "external"},
            }))
            .send()
            .await?,
        &format!("reindexing {from} into {index}"),
    )
    .await?;
    if let Some(failures) = copied["failures"].as_array()
        && !failures.is_empty()
    {
        return Err(SearchError::Refused(format!(
            "reindexing {from} into {index}: {} documents failed, the first: {}",
            failures.len(),
            failures[0]
        )));
    }
    response_json(
        client
            .indices()
            .update_aliases()
            .body(serde_json::json!({"actions": [
                {"remove": {"index": from, "alias": alias}},
                {"add": {"index": index, "alias": alias, "is_write_index": true}},
            ]}))
            .send()
            .await?,
        &format!("moving alias {alias} to {index}"),
    )
    .await?;
    Ok(index)
}

/// Deletes every index behind the aliases of `naming` (an unfinished
/// snapshot is thrown away before the next one fills them again): those of
/// `tenant` only, or of every tenant. Returns how many went.
pub async fn delete_indices(
    client: &Elasticsearch,
    naming: &IndexNaming,
    tenant: Option<&TenantId>,
) -> Result<usize, SearchError> {
    let indices = match tenant {
        Some(tenant) => alias_targets(client, &naming.alias(tenant)).await?,
        None => {
            // The pattern is wide (a prefix `lily` also matches `lily-eu-*`):
            // only aliases that parse back to a tenant of this naming count.
            alias_indices(client, &naming.alias_pattern())
                .await?
                .into_iter()
                .filter(|(alias, _)| naming.tenant_of(alias).is_some())
                .map(|(_, index)| index)
                .collect()
        }
    };
    for index in &indices {
        let response = client
            .indices()
            .delete(IndicesDeleteParts::Index(&[index]))
            .send()
            .await?;
        let status = response.status_code();
        if !status.is_success() && status != StatusCode::NOT_FOUND {
            let text = response.text().await.unwrap_or_default();
            return Err(SearchError::Unavailable(format!(
                "deleting index {index}: HTTP {status}: {text}"
            )));
        }
    }
    Ok(indices.len())
}

/// The (alias, index) pairs of the aliases matching `pattern` (a name or
/// a wildcard pattern; none when nothing matches).
async fn alias_indices(
    client: &Elasticsearch,
    pattern: &str,
) -> Result<Vec<(String, String)>, SearchError> {
    let response = client
        .indices()
        .get_alias(IndicesGetAliasParts::Name(&[pattern]))
        .send()
        .await?;
    if response.status_code() == StatusCode::NOT_FOUND {
        return Ok(Vec::new());
    }
    let status = response.status_code();
    let body: Value = response.json().await?;
    if !status.is_success() {
        return Err(SearchError::Refused(format!(
            "reading alias {pattern}: HTTP {status}: {body}"
        )));
    }
    // {"<index>": {"aliases": {"<alias>": {...}}}}
    let mut out = Vec::new();
    for (index, entry) in body.as_object().into_iter().flatten() {
        for alias in entry["aliases"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(a, _)| a)
        {
            out.push((alias.clone(), index.clone()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_mapping_parses_and_its_fingerprint_ignores_formatting() {
        let m = IndexMapping::parse(ASSETS_MAPPING).unwrap();
        assert_eq!(m.fingerprint.len(), 8);
        let compact = serde_json::to_string(&m.body).unwrap();
        assert_eq!(
            IndexMapping::parse(&compact).unwrap().fingerprint,
            m.fingerprint
        );
        assert_eq!(
            m.body["mappings"]["properties"]["incidents"]["type"],
            "nested"
        );
        let naming = IndexNaming::new("lily", "assets");
        let acme = TenantId::parse("acme").unwrap();
        assert_eq!(naming.alias(&acme), "lily-acme-assets");
        assert_eq!(
            m.index_name("lily-acme-assets"),
            format!("lily-acme-assets-{}", m.fingerprint)
        );
        assert!(IndexMapping::parse("{\"settings\": {}}").is_err());
    }

    #[test]
    fn aliases_parse_back_to_their_tenant_and_no_other() {
        let naming = IndexNaming::new("lily", "assets");
        for id in ["acme", "acme-eu", "acme_incident", "a0"] {
            let t = TenantId::parse(id).unwrap();
            assert_eq!(naming.tenant_of(&naming.alias(&t)), Some(t));
        }
        // Another deployment's prefix, another index kind.
        assert_eq!(naming.tenant_of("lily-eu-acme-assets"), None);
        assert_eq!(naming.tenant_of("lily-acme-incidents"), None);
        assert_eq!(
            naming.alias(&TenantId::parse("acme-eu").unwrap()),
            "lily-acme0deu-assets"
        );
    }
}
