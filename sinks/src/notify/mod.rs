//! Notifications to SaaS tools: Slack, Microsoft Teams, JIRA, Freshdesk,
//! PagerDuty and signed webhooks.
//!
//! A target (`[sinks.<name>] type = "notify"`) is fed by a post-consume
//! transform, its filter, which picks the changes worth telling and words them as rows
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
//! impl, a [`NotifyKind`] variant, and one line in [`build_target`].

mod config;
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

use serde::de::DeserializeOwned;

pub use config::{NotifyConfig, NotifyKind};
pub use delivery::{DeliveryWorker, RateLimit, RetryPolicy};
pub use event::{Action, BadRow, Fact, Notification, Severity, notifications, required_columns};
pub use outbox::{Outbox, OutboxError, Queued};
pub use refs::SubjectRefs;
pub use sink::NotifySink;
pub use target::{DeliveryContext, DeliveryError, Target};

/// A target that cannot be set up, or a filter whose output is unusable.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// `[sinks.<target>]` is wrong.
    #[error("[sinks.{target}]: {message}")]
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
    kind: NotifyKind,
    settings: toml::Table,
    http: reqwest::Client,
) -> Result<Box<dyn Target>, String> {
    Ok(match kind {
        NotifyKind::Slack => Box::new(slack::SlackTarget::new(parse(settings)?, http)),
        NotifyKind::Teams => Box::new(teams::TeamsTarget::new(parse(settings)?, http)),
        NotifyKind::Jira => Box::new(jira::JiraTarget::new(parse(settings)?, http)?),
        NotifyKind::Freshdesk => Box::new(freshdesk::FreshdeskTarget::new(parse(settings)?, http)),
        NotifyKind::Pagerduty => Box::new(pagerduty::PagerDutyTarget::new(parse(settings)?, http)),
        NotifyKind::Webhook => Box::new(webhook::WebhookTarget::new(parse(settings)?, http)),
    })
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
    fn each_kind_checks_its_own_settings() {
        let http = reqwest::Client::new();
        let e = build_target(
            NotifyKind::Slack,
            toml::toml! { url = "u" chanel = "x" },
            http.clone(),
        )
        .err()
        .unwrap();
        assert!(e.contains("chanel"), "{e}");
        let e = build_target(NotifyKind::Jira, toml::toml! { base_url = "u" }, http)
            .err()
            .unwrap();
        assert!(e.contains("email"), "{e}");
    }
}
