//! The search sink: search documents (the output of a transform) written to
//! Elasticsearch with `_bulk`, one alias per tenant.
//!
//! Flushing sends what is buffered, newest write per document only. An
//! unreachable or overloaded cluster (connection errors, 429, 5xx) fails
//! the flush, so the runner retries with backoff and the slot holds the
//! changes meanwhile; items the cluster refuses for good (a document that
//! breaks the mapping) go to the dead-letter store and the rest flow on.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use elasticsearch::params::Refresh;
use elasticsearch::{BulkParts, Elasticsearch};
use lily_cdc::TenantId;
use lily_cdc::{ChangeBatch, Lsn};
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use super::bulk::{BadDoc, DocWrite, ItemOutcome, doc_writes, item_outcomes};
use super::index::{IndexMapping, IndexNaming, delete_indices, ensure_alias, migrate_alias};
use super::{SearchError, response_json};
use crate::registry::source;
use lily_cdc::sink::dead_letter::{DeadLetters, NewDeadLetter};
use lily_cdc::sink::{Sink, SinkError};

/// The search sink.
pub struct ElasticsearchSink {
    name: String,
    client: Elasticsearch,
    naming: IndexNaming,
    mapping: IndexMapping,
    refresh: Option<Refresh>,
    bulk_max_bytes: usize,
    dead_letters: DeadLetters,
    /// Aliases known to exist.
    ready: HashSet<String>,
    /// Writes not yet acknowledged by the cluster, in stream order.
    pending: Vec<DocWrite>,
    bad: Vec<BadDoc>,
}

impl ElasticsearchSink {
    /// A sink named `name` writing to `client`.
    pub fn new(
        name: &str,
        client: Elasticsearch,
        naming: IndexNaming,
        mapping: IndexMapping,
        refresh: Option<Refresh>,
        bulk_max_bytes: usize,
        dead_letters: DeadLetters,
    ) -> Self {
        Self {
            name: name.to_owned(),
            client,
            naming,
            mapping,
            refresh,
            bulk_max_bytes: bulk_max_bytes.max(1024),
            dead_letters,
            ready: HashSet::new(),
            pending: Vec::new(),
            bad: Vec::new(),
        }
    }

    fn err(&self, e: SearchError) -> SinkError {
        match e {
            SearchError::Refused(message) | SearchError::Config(message) => SinkError::Rejected {
                sink: self.name.clone(),
                message,
            },
            other => SinkError::Unavailable {
                sink: self.name.clone(),
                message: other.to_string(),
            },
        }
    }

    /// The error of a flush that failed as a whole. Whatever the cluster
    /// said (credentials rotated, a proxy's limit, an index it would not
    /// create), it is about the cluster or its configuration, not one
    /// document: the pipeline holds until it is fixed. Documents refused one
    /// by one are dead-lettered in the flush itself.
    fn fail_flush(&self, e: SearchError) -> SinkError {
        SinkError::Unavailable {
            sink: self.name.clone(),
            message: e.to_string(),
        }
    }

    async fn ensure_aliases(&mut self) -> Result<(), SearchError> {
        let tenants: HashSet<TenantId> = self.pending.iter().map(|w| w.tenant.clone()).collect();
        for tenant in tenants {
            let alias = self.naming.alias(&tenant);
            if self.ready.contains(&alias) {
                continue;
            }
            let index = ensure_alias(&self.client, &alias, &self.mapping).await?;
            if index != self.mapping.index_name(&alias) {
                // The mapping changed since the index was made: move the
                // documents to an index of the new one before writing more.
                let started = std::time::Instant::now();
                let new = migrate_alias(&self.client, &alias, &index, &self.mapping).await?;
                metrics::counter!("lily_search_reindexes_total").increment(1);
                info!(alias, from = %index, to = %new, ms = started.elapsed().as_millis() as u64, "the mapping changed; documents reindexed and the alias moved (the old index is kept; delete it when done)");
            } else {
                info!(alias, index, "search index ready");
            }
            self.ready.insert(alias);
        }
        Ok(())
    }

    /// Keeps the last write of each document: earlier ones would be
    /// overwritten anyway.
    fn collapse(&mut self) {
        let mut last: HashMap<(TenantId, String), usize> = HashMap::new();
        for (i, w) in self.pending.iter().enumerate() {
            last.insert((w.tenant.clone(), w.id.clone()), i);
        }
        if last.len() == self.pending.len() {
            return;
        }
        let keep: HashSet<usize> = last.into_values().collect();
        let mut i = 0;
        self.pending.retain(|_| {
            let k = keep.contains(&i);
            i += 1;
            k
        });
    }

    /// Sends one bulk request of `writes`; returns each item's outcome.
    async fn send(&self, writes: &[DocWrite]) -> Result<Vec<ItemOutcome>, SearchError> {
        let mut lines: Vec<String> = Vec::with_capacity(writes.len() * 2);
        for w in writes {
            lines.extend(w.lines(&self.naming.alias(&w.tenant)));
        }
        let started = Instant::now();
        let mut request = self.client.bulk(BulkParts::None).body(lines);
        if let Some(r) = self.refresh {
            request = request.refresh(r);
        }
        let response = request.send().await?;
        metrics::histogram!("lily_search_bulk_seconds", "sink" => self.name.clone())
            .record(started.elapsed().as_secs_f64());
        let body = response_json(response, "_bulk").await?;
        let outcomes = item_outcomes(&body);
        if outcomes.len() != writes.len() {
            return Err(SearchError::Unavailable(format!(
                "_bulk answered {} items for {} writes",
                outcomes.len(),
                writes.len()
            )));
        }
        Ok(outcomes)
    }

    async fn bury(
        &self,
        tenant: Option<&str>,
        reference: &str,
        code: &str,
        error: &str,
        payload: &[u8],
        mut details: Value,
    ) -> Result<(), SinkError> {
        warn!(
            reference,
            code, error, "search document kept as a dead letter"
        );
        // Which sink replays it.
        if let Value::Object(map) = &mut details {
            map.insert("sink".into(), Value::String(self.name.clone()));
        } else {
            details = json!({ "sink": self.name });
        }
        self.dead_letters
            .record(&NewDeadLetter {
                source: source::ELASTICSEARCH,
                tenant_id: tenant,
                reference,
                error_code: code,
                error,
                payload: Some(payload),
                details,
            })
            .await
            .map(|_| ())
            .map_err(|e| SinkError::Unavailable {
                sink: self.name.clone(),
                message: e.to_string(),
            })
    }
}

fn count(outcome: &'static str, n: u64) {
    if n > 0 {
        metrics::counter!("lily_search_documents_total", "outcome" => outcome).increment(n);
    }
}

#[async_trait::async_trait]
impl Sink for ElasticsearchSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn write(&mut self, batch: Arc<ChangeBatch>) -> Result<(), SinkError> {
        let (writes, bad) = doc_writes(&batch.records);
        self.pending.extend(writes);
        self.bad.extend(bad);
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        while let Some(bad) = self.bad.first().cloned() {
            metrics::counter!("lily_errors_total", "stage" => "search", "kind" => "bad_output")
                .increment(1);
            self.bury(
                bad.tenant.as_deref(),
                "bad-row",
                "bad_output",
                &bad.error,
                bad.row.as_bytes(),
                Value::Null,
            )
            .await?;
            self.bad.remove(0);
        }
        if self.pending.is_empty() {
            return Ok(());
        }
        self.collapse();
        if let Err(e) = self.ensure_aliases().await {
            return Err(self.fail_flush(e));
        }
        let mut retry: Vec<DocWrite> = Vec::new();
        let mut first_retry_error = None;
        let writes = std::mem::take(&mut self.pending);
        let mut start = 0;
        while start < writes.len() {
            // Cut requests at bulk_max_bytes.
            let mut end = start;
            let mut bytes = 0;
            while end < writes.len() && (end == start || bytes < self.bulk_max_bytes) {
                bytes += writes[end].source.as_ref().map_or(0, String::len) + 128;
                end += 1;
            }
            let chunk = &writes[start..end];
            let outcomes = match self.send(chunk).await {
                Ok(o) => o,
                Err(e) => {
                    // Nothing of this chunk or after it is known to be written.
                    self.pending = retry;
                    self.pending.extend_from_slice(&writes[start..]);
                    return Err(self.fail_flush(e));
                }
            };
            let (mut done, mut superseded, mut dead) = (0, 0, 0);
            for (w, outcome) in chunk.iter().zip(outcomes) {
                match outcome {
                    ItemOutcome::Done => done += 1,
                    ItemOutcome::Superseded => superseded += 1,
                    ItemOutcome::Retry(message) => {
                        first_retry_error.get_or_insert(message);
                        retry.push(w.clone());
                    }
                    ItemOutcome::Refused { code, reason } => {
                        dead += 1;
                        let alias = self.naming.alias(&w.tenant);
                        let payload = w.lines(&alias).join("\n");
                        let reference = format!("{alias}/{}@{}", w.id, w.version);
                        if let Err(e) = self
                            .bury(
                                Some(w.tenant.as_str()),
                                &reference,
                                &code,
                                &reason,
                                payload.as_bytes(),
                                json!({"alias": alias, "id": w.id, "version": w.version.0}),
                            )
                            .await
                        {
                            retry.push(w.clone());
                            first_retry_error.get_or_insert(e.to_string());
                        }
                    }
                }
            }
            count("written", done);
            count("superseded", superseded);
            count("dead_letter", dead);
            debug!(done, superseded, dead, "bulk request");
            start = end;
        }
        if !retry.is_empty() {
            count("retried", retry.len() as u64);
            self.pending = retry;
            return Err(SinkError::Unavailable {
                sink: self.name.clone(),
                message: first_retry_error.unwrap_or_default(),
            });
        }
        Ok(())
    }

    fn buffered_rows(&self) -> usize {
        self.pending.len() + self.bad.len()
    }

    async fn discard_snapshot(&mut self, snapshot_lsn: Lsn) -> Result<(), SinkError> {
        let n = delete_indices(&self.client, &self.naming, None)
            .await
            .map_err(|e| self.err(e))?;
        self.ready.clear();
        info!(%snapshot_lsn, indices = n, "dropped the indices of an unfinished snapshot");
        Ok(())
    }

    fn transform_input(&self) -> Option<Vec<arrow::datatypes::Field>> {
        use arrow::datatypes::{DataType, Field};
        Some(vec![
            Field::new(lily_cdc::batch::OP, DataType::Utf8, true),
            Field::new(lily_cdc::batch::COMMIT_LSN, DataType::UInt64, true),
            Field::new("tenant_id", DataType::Utf8, true),
            Field::new("_id", DataType::Utf8, true),
        ])
    }
}
