//! Notifications to SaaS tools: Slack, Microsoft Teams, JIRA, Freshdesk,
//! PagerDuty and signed webhooks.
//!
//! A target (`[notify.<name>]`) is fed by a post-consume transform, its
//! filter, which picks the changes worth telling and words them as rows
//! (`tenant_id`, `action`, `subject`, `title`, and optionally `body`,
//! `severity`, `url`, `incident_id`; every other column is shown as a fact).
//! The [`NotifySink`] queues those rows in `lily.outbox`, durable and
//! deduplicated, and that is all the pipeline waits for. Each target's
//! [`DeliveryWorker`] then drains its own queue in order, at the vendor's
//! documented pace, retrying with backoff and moving what still fails to the
//! dead-letter store. A slow or broken tool therefore never holds up search,
//! Kafka or the lake.
//!
//! Adding a vendor is one module with its config struct and a [`Target`]
//! impl, and one line in [`build_target`].

mod delivery;
mod event;
mod outbox;
mod refs;
mod sink;
mod target;

pub mod freshdesk;
pub mod jira;
pub mod pagerduty;
pub mod slack;
pub mod teams;
pub mod webhook;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use lily_config::NotifyTargetConfig;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

pub use delivery::{DEAD_LETTER_SOURCE, DeliveryWorker, RateLimit, RetryPolicy};
pub use event::{Action, BadRow, Fact, Notification, Severity, notifications, required_columns};
pub use outbox::{Outbox, OutboxError, Queued};
pub use refs::SubjectRefs;
pub use sink::{NotifySink, sink_name};
pub use target::{DeliveryContext, DeliveryError, Target};

use lily_cdc::sink::dead_letter::DeadLetters;

/// The kinds of target there are.
pub const KINDS: [&str; 6] = [
    "slack",
    "teams",
    "jira",
    "freshdesk",
    "pagerduty",
    "webhook",
];

/// A target that cannot be set up, or a filter whose output is unusable.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// `[notify.<target>]` is wrong.
    #[error("[notify.{target}]: {message}")]
    Config {
        /// Target name.
        target: String,
        /// What is wrong.
        message: String,
    },
    /// The filter's output lacks what a notification needs.
    #[error("notify target {target}: {message}")]
    Output {
        /// Target name.
        target: String,
        /// What is missing.
        message: String,
    },
}

fn parse<T: DeserializeOwned>(settings: toml::Table) -> Result<T, String> {
    settings
        .try_into()
        .map_err(|e: toml::de::Error| e.message().trim().to_owned())
}

/// Builds the renderer of `kind` from its settings: one line per vendor.
pub fn build_target(
    kind: &str,
    settings: toml::Table,
    http: reqwest::Client,
) -> Result<Box<dyn Target>, String> {
    Ok(match kind {
        "slack" => Box::new(slack::SlackTarget::new(parse(settings)?, http)),
        "teams" => Box::new(teams::TeamsTarget::new(parse(settings)?, http)),
        "jira" => Box::new(jira::JiraTarget::new(parse(settings)?, http)?),
        "freshdesk" => Box::new(freshdesk::FreshdeskTarget::new(parse(settings)?, http)),
        "pagerduty" => Box::new(pagerduty::PagerDutyTarget::new(parse(settings)?, http)),
        "webhook" => Box::new(webhook::WebhookTarget::new(parse(settings)?, http)),
        other => {
            return Err(format!(
                "unknown kind {other:?}; one of {}",
                KINDS.join(", ")
            ));
        }
    })
}

/// Replaces `${NAME}` in every string of `value` by the environment
/// variable `NAME`, so secrets stay out of the file.
pub fn expand_env(
    value: &mut toml::Value,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), String> {
    match value {
        toml::Value::String(s) => {
            let mut out = String::with_capacity(s.len());
            let mut rest = s.as_str();
            while let Some(start) = rest.find("${") {
                out.push_str(&rest[..start]);
                let Some(end) = rest[start..].find('}') else {
                    return Err(format!("{s:?} opens ${{ without closing it"));
                };
                let name = &rest[start + 2..start + end];
                let v = lookup(name)
                    .ok_or_else(|| format!("environment variable {name} is not set"))?;
                out.push_str(&v);
                rest = &rest[start + end + 1..];
            }
            out.push_str(rest);
            *s = out;
            Ok(())
        }
        toml::Value::Array(items) => items.iter_mut().try_for_each(|v| expand_env(v, lookup)),
        toml::Value::Table(t) => t.iter_mut().try_for_each(|(_, v)| expand_env(v, lookup)),
        _ => Ok(()),
    }
}

/// A configured target as the pipeline sees it: it makes the sink the
/// pipeline feeds (through the filter); its [`DeliveryWorker`] delivers.
pub struct NotifyTarget {
    /// Target name.
    pub name: String,
    /// Its filter transform.
    pub filter: String,
    /// Its tenants (empty: all).
    pub tenants: Vec<String>,
    wake: Arc<Notify>,
}

impl NotifyTarget {
    /// A new pipeline sink for this target (one per pipeline run).
    pub fn sink(&self, pool: &Pool) -> NotifySink {
        NotifySink::new(
            &self.name,
            self.tenants.clone(),
            Outbox::new(pool.clone()),
            DeadLetters::new(pool.clone()),
            self.wake.clone(),
        )
    }
}

/// Builds every `[notify.<name>]` target and its worker, expanding
/// `${ENV}` in their settings with `lookup`. Any error names its target and
/// setting.
pub fn build_targets(
    targets: &BTreeMap<String, NotifyTargetConfig>,
    pool: &Pool,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(NotifyTarget, DeliveryWorker)>, NotifyError> {
    let mut out = Vec::with_capacity(targets.len());
    for (name, config) in targets {
        let err = |message: String| NotifyError::Config {
            target: name.clone(),
            message,
        };
        if config.filter.is_empty() {
            return Err(err(
                "filter is empty: name the transform that chooses its notifications".into(),
            ));
        }
        let mut settings = toml::Value::Table(config.settings.clone());
        expand_env(&mut settings, lookup).map_err(err)?;
        let toml::Value::Table(settings) = settings else {
            unreachable!("a table stays a table");
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms.max(1)))
            .user_agent(concat!("lily/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| err(format!("HTTP client: {e}")))?;
        let target = build_target(&config.kind, settings, http).map_err(err)?;
        let rate = if config.rate_per_sec > 0.0 {
            config.rate_per_sec
        } else {
            target.default_rate_per_sec()
        };
        let wake = Arc::new(Notify::new());
        let worker = DeliveryWorker {
            name: name.clone(),
            target,
            outbox: Outbox::new(pool.clone()),
            refs: SubjectRefs::new(pool.clone()),
            dead_letters: DeadLetters::new(pool.clone()),
            rate: RateLimit::new(rate),
            retry: RetryPolicy {
                max_attempts: config.max_attempts.max(1),
                base: Duration::from_millis(config.retry_base_ms.max(1)),
                cap: Duration::from_secs(300),
            },
            wake: wake.clone(),
        };
        out.push((
            NotifyTarget {
                name: name.clone(),
                filter: config.filter.clone(),
                tenants: config.tenants.clone(),
                wake,
            },
            worker,
        ));
    }
    Ok(out)
}

/// Puts a notification that became a dead letter back in its target's
/// queue; the running target delivers it again.
pub async fn replay(
    outbox: &Outbox,
    letter: &lily_cdc::sink::dead_letter::DeadLetter,
) -> Result<(), String> {
    let target = letter.details["target"]
        .as_str()
        .ok_or("the dead letter names no target")?;
    let payload = letter.payload.as_deref().unwrap_or_default();
    let notification: Notification = serde_json::from_slice(payload).map_err(|_| {
        format!(
            "{} is not a notification (a filter row that was never one: fix the filter instead)",
            letter.reference
        )
    })?;
    outbox
        .requeue(target, &notification)
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_references_are_expanded_and_a_missing_one_is_named() {
        let lookup = |name: &str| (name == "TOKEN").then(|| "s3cr3t".to_owned());
        let mut v = toml::Value::Table(toml::toml! {
            url = "https://x.example/${TOKEN}/hook"
            headers = { authorization = "Bearer ${TOKEN}" }
        });
        expand_env(&mut v, &lookup).unwrap();
        assert_eq!(v["url"].as_str(), Some("https://x.example/s3cr3t/hook"));
        assert_eq!(
            v["headers"]["authorization"].as_str(),
            Some("Bearer s3cr3t")
        );
        let mut missing = toml::Value::String("${NOPE}".into());
        let e = expand_env(&mut missing, &lookup).unwrap_err();
        assert!(e.contains("NOPE"), "{e}");
    }

    #[test]
    fn each_kind_checks_its_own_settings() {
        let http = reqwest::Client::new();
        let e = build_target(
            "slack",
            toml::toml! { url = "u" chanel = "x" },
            http.clone(),
        )
        .err()
        .unwrap();
        assert!(e.contains("chanel"), "{e}");
        let e = build_target("carrier-pigeon", toml::Table::new(), http.clone())
            .err()
            .unwrap();
        assert!(e.contains("carrier-pigeon") && e.contains("slack"), "{e}");
        let e = build_target("jira", toml::toml! { base_url = "u" }, http)
            .err()
            .unwrap();
        assert!(e.contains("email"), "{e}");
    }
}
