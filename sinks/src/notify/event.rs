//! A notification: one row of a target's filter transform, as it is queued
//! in the outbox and handed to the vendor's renderer.

use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Field, UInt64Type};
use lily_cdc::{Lsn, json};
use serde::{Deserialize, Serialize};

use super::NotifyError;

/// What a notification does to the thing it is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Something new: an incident opened, a tag added. Opens a ticket or an alert.
    Trigger,
    /// Something known changed: a comment on its ticket, a refreshed alert.
    Update,
    /// It is over: the incident resolved, the tag removed. Resolves the alert.
    Resolve,
}

impl Action {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "trigger" => Some(Action::Trigger),
            "update" => Some(Action::Update),
            "resolve" => Some(Action::Resolve),
            _ => None,
        }
    }

    /// The word used in messages and headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Trigger => "trigger",
            Action::Update => "update",
            Action::Resolve => "resolve",
        }
    }
}

/// Severity on one scale, from whatever words a source used (SEV-1, P2,
/// high, warning, ...), so each vendor gets its own vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Informational.
    Info,
    /// Low.
    Low,
    /// Medium.
    Medium,
    /// High.
    High,
    /// Critical.
    Critical,
}

impl Severity {
    /// Reads a severity word; `None` for one it does not know.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim().to_ascii_lowercase().replace(['_', ' '], "-");
        Some(match s.as_str() {
            "critical" | "crit" | "sev-1" | "sev1" | "p1" | "fatal" | "urgent" | "highest" => {
                Severity::Critical
            }
            "high" | "sev-2" | "sev2" | "p2" | "error" | "major" => Severity::High,
            "medium" | "moderate" | "sev-3" | "sev3" | "p3" | "warning" | "warn" => {
                Severity::Medium
            }
            "low" | "sev-4" | "sev4" | "p4" | "minor" | "lowest" => Severity::Low,
            "info" | "informational" | "sev-5" | "sev5" | "p5" | "none" => Severity::Info,
            _ => return None,
        })
    }

    /// The word shown to people.
    pub fn label(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// One fact shown with a notification: a column of the filter's output
/// that is not one of the named ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fact {
    /// Column name.
    pub name: String,
    /// Its value as text.
    pub value: String,
}

/// A notification as queued in the outbox (`lily.outbox.event`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Deduplicates redelivered changes: the same change always gives the same key.
    pub dedupe_key: String,
    /// Tenant it concerns.
    pub tenant_id: String,
    /// Open, update or resolve.
    pub action: Action,
    /// What it is about, stable across its trigger, updates and resolve
    /// (an incident id, an asset and a tag): the PagerDuty dedup key, the
    /// thread of a JIRA issue or a Freshdesk ticket.
    pub subject: String,
    /// One line.
    pub title: String,
    /// More text, when the filter gives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Severity as the filter gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    /// A link to the thing itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The incident this is about, when it is one: a ticket opened for it is
    /// linked to it, so closing the ticket resolves the incident.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident_id: Option<String>,
    /// Every other column of the filter's output.
    #[serde(default)]
    pub facts: Vec<Fact>,
    /// Commit LSN of the change, as PostgreSQL prints it.
    pub commit_lsn: String,
    /// Commit time of the change (RFC 3339), when the filter passes `_commit_time` on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_time: Option<String>,
}

impl Notification {
    /// The severity on Lily's scale, if the filter gave one it knows.
    pub fn severity_level(&self) -> Option<Severity> {
        self.severity.as_deref().and_then(Severity::parse)
    }

    /// Title, body and facts as plain text lines (for vendors without markup).
    pub fn plain_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(body) = &self.body {
            lines.push(body.clone());
        }
        if let Some(s) = &self.severity {
            lines.push(format!("severity: {s}"));
        }
        lines.extend(
            self.facts
                .iter()
                .map(|f| format!("{}: {}", f.name, f.value)),
        );
        if let Some(url) = &self.url {
            lines.push(url.clone());
        }
        lines
    }
}

/// Columns a filter transform must output, with their types.
pub fn required_columns() -> Vec<Field> {
    vec![
        Field::new("tenant_id", DataType::Utf8, true),
        Field::new(lily_cdc::batch::COMMIT_LSN, DataType::UInt64, true),
        Field::new(lily_cdc::batch::SEQ, DataType::UInt64, true),
        Field::new("action", DataType::Utf8, true),
        Field::new("subject", DataType::Utf8, true),
        Field::new("title", DataType::Utf8, true),
    ]
}

/// Columns with a meaning of their own; the rest become facts.
const NAMED: [&str; 10] = [
    "tenant_id",
    "action",
    "subject",
    "title",
    "body",
    "severity",
    "url",
    "incident_id",
    lily_cdc::batch::COMMIT_LSN,
    lily_cdc::batch::SEQ,
];

/// A row of a filter's output that is not a notification.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRow {
    /// Tenant of the row, when it has one.
    pub tenant_id: Option<String>,
    /// What is wrong with it.
    pub error: String,
    /// The row as JSON.
    pub row: String,
}

/// Turns the rows of a filter's output into notifications for `target`.
/// A row without tenant, action, subject or title, or with an action other
/// than trigger, update and resolve, comes back as a [`BadRow`] naming the
/// problem; the rows around it are unaffected. An output without
/// `_commit_lsn` and `_seq` is an error.
pub fn notifications(
    target: &str,
    batch: &RecordBatch,
) -> Result<(Vec<Notification>, Vec<BadRow>), NotifyError> {
    let schema = batch.schema();
    let text = |name: &str, row: usize| json::cell_text(batch, name, row);
    let lsn = batch
        .column_by_name(lily_cdc::batch::COMMIT_LSN)
        .and_then(|a| a.as_primitive_opt::<UInt64Type>().cloned());
    let seq = batch
        .column_by_name(lily_cdc::batch::SEQ)
        .and_then(|a| a.as_primitive_opt::<UInt64Type>().cloned());
    let (Some(lsn), Some(seq)) = (lsn, seq) else {
        return Err(NotifyError::Output {
            target: target.to_owned(),
            message: "the filter's output needs _commit_lsn and _seq (UInt64)".into(),
        });
    };
    let facts: Vec<(Field, Arc<dyn Array>)> = schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| !f.name().starts_with('_') && !NAMED.contains(&f.name().as_str()))
        .map(|(i, f)| (f.as_ref().clone(), batch.column(i).clone()))
        .collect();
    let encoder = json::RowEncoder::all_columns(batch);

    let mut good = Vec::with_capacity(batch.num_rows());
    let mut bad = Vec::new();
    for row in 0..batch.num_rows() {
        let tenant_id = text("tenant_id", row);
        let parsed = (|| {
            let tenant_id = tenant_id.clone().ok_or("it has no tenant_id")?;
            let action_word = text("action", row).ok_or("it has no action")?;
            let action = Action::parse(&action_word).ok_or_else(|| {
                format!("action {action_word:?} is not one of trigger, update, resolve")
            })?;
            let subject = text("subject", row).ok_or("it has no subject")?;
            let title = text("title", row).ok_or("it has no title")?;
            let commit_lsn = Lsn(lsn.value(row));
            let dedupe_key = format!(
                "{tenant_id}/{commit_lsn}/{}/{subject}/{}",
                seq.value(row),
                action.as_str()
            );
            Ok::<_, String>(Notification {
                dedupe_key,
                tenant_id,
                action,
                subject,
                title,
                body: text("body", row),
                severity: text("severity", row),
                url: text("url", row),
                incident_id: text("incident_id", row),
                facts: facts
                    .iter()
                    .filter_map(|(f, a)| {
                        json::value_text(f, a, row).map(|value| Fact {
                            name: f.name().clone(),
                            value,
                        })
                    })
                    .collect(),
                commit_lsn: commit_lsn.to_string(),
                commit_time: text(lily_cdc::batch::COMMIT_TIME, row),
            })
        })();
        match parsed {
            Ok(n) => good.push(n),
            Err(error) => {
                let mut json = String::new();
                encoder.encode(row, &mut json);
                bad.push(BadRow {
                    tenant_id,
                    error: format!("filter output for {target}: {error}"),
                    row: json,
                });
            }
        }
    }
    Ok((good, bad))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{StringArray, UInt64Array};
    use arrow::datatypes::Schema;

    fn batch(actions: &[&str]) -> RecordBatch {
        let n = actions.len();
        let schema = Schema::new(vec![
            Field::new("tenant_id", DataType::Utf8, true),
            Field::new("_commit_lsn", DataType::UInt64, true),
            Field::new("_seq", DataType::UInt64, true),
            Field::new("action", DataType::Utf8, true),
            Field::new("subject", DataType::Utf8, true),
            Field::new("title", DataType::Utf8, true),
            Field::new("severity", DataType::Utf8, true),
            Field::new("qualified_name", DataType::Utf8, true),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(StringArray::from(vec!["acme"; n])),
                Arc::new(UInt64Array::from(vec![0x16B3748; n])),
                Arc::new(UInt64Array::from((0..n as u64).collect::<Vec<_>>())),
                Arc::new(StringArray::from(actions.to_vec())),
                Arc::new(StringArray::from(vec!["inc-1"; n])),
                Arc::new(StringArray::from(vec!["Freshness anomaly"; n])),
                Arc::new(StringArray::from(vec![Some("SEV-1"); n])),
                Arc::new(StringArray::from(vec!["db.sales.orders"; n])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn rows_become_notifications_with_facts_and_stable_keys() {
        let (got, bad) = notifications("slack", &batch(&["trigger", "resolve"])).unwrap();
        assert!(bad.is_empty());
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].action, Action::Trigger);
        assert_eq!(got[0].commit_lsn, "0/16B3748");
        assert_eq!(got[0].dedupe_key, "acme/0/16B3748/0/inc-1/trigger");
        assert_eq!(
            got[0].facts,
            vec![Fact {
                name: "qualified_name".into(),
                value: "db.sales.orders".into()
            }]
        );
        assert_eq!(got[1].severity_level(), Some(Severity::Critical));
        // The same rows give the same keys: a redelivered change is deduplicated.
        let (again, _) = notifications("slack", &batch(&["trigger", "resolve"])).unwrap();
        assert_eq!(got, again);
    }

    #[test]
    fn a_bad_row_is_named_and_the_others_flow() {
        let (good, bad) = notifications("slack", &batch(&["trigger", "explode"])).unwrap();
        assert_eq!(good.len(), 1);
        assert_eq!(bad.len(), 1);
        assert!(bad[0].error.contains("\"explode\""), "{:?}", bad[0]);
        assert!(bad[0].error.contains("slack"), "{:?}", bad[0]);
        assert!(
            bad[0].row.contains("\"action\":\"explode\""),
            "{:?}",
            bad[0]
        );
        assert_eq!(bad[0].tenant_id.as_deref(), Some("acme"));
    }

    #[test]
    fn severities_map_onto_one_scale() {
        assert_eq!(Severity::parse("SEV-2"), Some(Severity::High));
        assert_eq!(Severity::parse("P3"), Some(Severity::Medium));
        assert_eq!(Severity::parse("warning"), Some(Severity::Medium));
        assert_eq!(Severity::parse("Low"), Some(Severity::Low));
        assert_eq!(Severity::parse("whatever"), None);
    }
}
