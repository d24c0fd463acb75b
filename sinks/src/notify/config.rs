//! `[sinks.<name>] type = "notify"`: a SaaS target. Its transform (the
//! filter) chooses and words the notifications; they are queued durably and
//! delivered by the target's own worker, at the vendor's pace, with retries
//! and a dead-letter store. The keys other than the ones below are the
//! kind's own (`url`, `api_token`, `project`, ...).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::Pool;
use lily_cdc::sink::dead_letter::DeadLetter;
use lily_cdc::sink::{DeadLetters, FlushPolicy, Sink, SinkError};
use lily_config::{ConfigError, invalid_str};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tracing::info;

use super::{
    DeliveryWorker, NotifySink, Outbox, RateLimit, RetryPolicy, SubjectRefs, build_target,
};
use crate::registry::{
    BuildError, BuiltSink, Healthcheck, ReplayError, RunContext, SinkContext, SinkKind,
};

/// The settings of a `notify` sink.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct NotifyConfig {
    /// Which tool: `slack`, `teams`, `jira`, `freshdesk`, `pagerduty` or
    /// `webhook`.
    pub kind: NotifyKind,
    /// Only these tenants' notifications; empty: every tenant's.
    #[serde(default)]
    pub tenants: Vec<String>,
    /// Deliveries per second at most; 0: the vendor's documented pace
    /// (Slack one a second).
    #[serde(default)]
    pub rate_per_sec: f64,
    /// Attempts before a notification goes to the dead-letter store.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// First wait before a retry, in milliseconds; doubled each attempt
    /// (at most five minutes).
    #[serde(default = "default_retry_base_ms")]
    pub retry_base_ms: u64,
    /// Timeout of each request, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// The kind's own settings (each kind refuses keys it does not know).
    #[serde(flatten)]
    pub settings: toml::Table,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            kind: NotifyKind::Webhook,
            tenants: Vec::new(),
            rate_per_sec: 0.0,
            max_attempts: default_max_attempts(),
            retry_base_ms: default_retry_base_ms(),
            timeout_ms: default_timeout_ms(),
            settings: toml::Table::new(),
        }
    }
}

fn default_max_attempts() -> u32 {
    8
}

fn default_retry_base_ms() -> u64 {
    1000
}

fn default_timeout_ms() -> u64 {
    10_000
}

/// The tools a notification can go to.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NotifyKind {
    /// A Slack incoming webhook.
    Slack,
    /// A Microsoft Teams workflow webhook.
    Teams,
    /// JIRA Cloud issues.
    Jira,
    /// Freshdesk tickets.
    Freshdesk,
    /// PagerDuty Events API v2.
    Pagerduty,
    /// A signed HTTP webhook.
    Webhook,
}

#[async_trait]
impl SinkKind for NotifyConfig {
    fn flush_policy(&self) -> FlushPolicy {
        FlushPolicy {
            max_rows: 1000,
            max_wait: Duration::from_millis(50),
        }
    }

    fn needs_transform(&self) -> bool {
        true
    }

    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if !(self.rate_per_sec >= 0.0 && self.rate_per_sec.is_finite()) {
            return Err(ConfigError::Invalid {
                key: format!("{key}.rate_per_sec"),
                value: self.rate_per_sec.to_string(),
                message: "deliveries per second: 0 (the vendor's pace) or more".into(),
            });
        }
        for t in &self.tenants {
            if lily_cdc::TenantId::parse(t).is_err() {
                return Err(invalid_str(
                    &format!("{key}.tenants"),
                    t,
                    "not a tenant id (a-z, 0-9, _ and -)",
                ));
            }
        }
        Ok(())
    }

    async fn build(&self, cx: &SinkContext<'_>) -> Result<Box<dyn BuiltSink>, BuildError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(self.timeout_ms.max(1)))
            .user_agent(concat!("lily/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| cx.error(format!("HTTP client: {e}")))?;
        let target = build_target(self.kind, self.settings.clone(), http)
            .map_err(|e| cx.error(e))?;
        let rate = if self.rate_per_sec > 0.0 {
            self.rate_per_sec
        } else {
            target.default_rate_per_sec()
        };
        let wake = Arc::new(Notify::new());
        let worker = DeliveryWorker {
            name: cx.name.to_owned(),
            target,
            outbox: Outbox::new(cx.pool.clone()),
            refs: SubjectRefs::new(cx.pool.clone()),
            dead_letters: cx.dead_letters.clone(),
            rate: RateLimit::new(rate),
            retry: RetryPolicy {
                max_attempts: self.max_attempts.max(1),
                base: Duration::from_millis(self.retry_base_ms.max(1)),
                cap: Duration::from_secs(300),
            },
            wake: wake.clone(),
        };
        Ok(Box::new(Built {
            name: cx.name.to_owned(),
            tenants: self.tenants.clone(),
            pool: cx.pool.clone(),
            dead_letters: cx.dead_letters.clone(),
            wake,
            worker: std::sync::Mutex::new(Some(worker)),
        }))
    }
}

struct Built {
    name: String,
    tenants: Vec<String>,
    pool: Pool,
    dead_letters: DeadLetters,
    wake: Arc<Notify>,
    /// Taken when the target starts delivering.
    worker: std::sync::Mutex<Option<DeliveryWorker>>,
}

#[async_trait]
impl BuiltSink for Built {
    fn start(&self, shutdown: watch::Receiver<bool>) {
        let worker = self
            .worker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(worker) = worker {
            info!(target = %self.name, "notification target delivering");
            tokio::spawn(worker.run(shutdown));
        }
    }

    async fn sink(
        &self,
        _run: &RunContext<'_>,
    ) -> Result<Option<(Box<dyn Sink>, Healthcheck)>, BuildError> {
        let sink = NotifySink::new(
            &self.name,
            self.tenants.clone(),
            Outbox::new(self.pool.clone()),
            self.dead_letters.clone(),
            self.wake.clone(),
        );
        // The queue is in the metastore: that it answers is the check.
        let outbox = Outbox::new(self.pool.clone());
        let name = self.name.clone();
        let healthcheck: Healthcheck = Box::pin(async move {
            outbox
                .backlog(&name)
                .await
                .map(|_| ())
                .map_err(|e| SinkError::Unavailable {
                    sink: name.clone(),
                    message: e.to_string(),
                })
        });
        Ok(Some((Box::new(sink), healthcheck)))
    }

    async fn replay(&self, letter: &DeadLetter) -> Result<(), ReplayError> {
        super::replay(&Outbox::new(self.pool.clone()), letter)
            .await
            .map_err(ReplayError::Failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_common_keys_and_keeps_the_kinds_own() {
        let c: NotifyConfig = toml::from_str(
            "kind = \"slack\"\ntenants = [\"acme\"]\nurl = \"https://hooks.example/x\"",
        )
        .unwrap();
        assert_eq!(c.kind, NotifyKind::Slack);
        assert_eq!(c.max_attempts, 8);
        assert_eq!(c.settings["url"].as_str(), Some("https://hooks.example/x"));
        assert!(c.validate("sinks.governance").is_ok());
        let e = toml::from_str::<NotifyConfig>("kind = \"carrier-pigeon\"").unwrap_err();
        assert!(e.to_string().contains("carrier-pigeon"), "{e}");
        let bad = NotifyConfig {
            tenants: vec!["Not A Tenant".into()],
            ..Default::default()
        };
        assert!(bad.validate("sinks.x").is_err());
    }
}
