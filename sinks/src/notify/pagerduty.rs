//! PagerDuty Events API v2: trigger and resolve alerts with a dedup key.
//!
//! PagerDuty documents `POST https://events.pagerduty.com/v2/enqueue` with
//! `routing_key`, `event_action` (`trigger`, `acknowledge`, `resolve`),
//! `dedup_key` (at most 255 characters; events with the same key act on the
//! same alert) and, for a trigger, `payload` with `summary` (at most 1,024
//! characters), `source`, `severity` (`critical`, `error`, `warning`,
//! `info`), optional `timestamp`, `group`, `class` and `custom_details`,
//! plus `links`. It answers 202 with `{"status": "success", "dedup_key"}`,
//! 400 for an invalid event and 429 when throttled.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::event::{Action, Notification, Severity};
use super::target::{DeliveryContext, DeliveryError, Target, post_json, truncate};

/// `kind = "pagerduty"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagerDutyConfig {
    /// The integration's routing key (keep it in `${ENV}`).
    pub routing_key: String,
    /// The Events API endpoint.
    #[serde(default = "default_url")]
    pub url: String,
}

fn default_url() -> String {
    "https://events.pagerduty.com/v2/enqueue".to_owned()
}

/// Sends PagerDuty events.
pub struct PagerDutyTarget {
    config: PagerDutyConfig,
    http: reqwest::Client,
}

impl PagerDutyTarget {
    /// A target for `config`.
    pub fn new(config: PagerDutyConfig, http: reqwest::Client) -> Self {
        Self { config, http }
    }
}

/// The dedup key of a subject: every event about it acts on one alert.
pub fn dedup_key(n: &Notification) -> String {
    truncate(&format!("lily/{}/{}", n.tenant_id, n.subject), 255)
}

/// PagerDuty's severity for ours.
pub fn severity(s: Option<Severity>) -> &'static str {
    match s {
        Some(Severity::Critical) => "critical",
        Some(Severity::High) => "error",
        Some(Severity::Medium) => "warning",
        _ => "info",
    }
}

/// The event for `n`: a trigger (updates re-trigger the same alert, which
/// refreshes it) or a resolve.
pub fn event(routing_key: &str, n: &Notification) -> Value {
    let key = dedup_key(n);
    if n.action == Action::Resolve {
        return json!({"routing_key": routing_key, "event_action": "resolve", "dedup_key": key});
    }
    let mut details = Map::new();
    if let Some(body) = &n.body {
        details.insert("body".into(), Value::String(body.clone()));
    }
    for f in &n.facts {
        details.insert(f.name.clone(), Value::String(f.value.clone()));
    }
    details.insert("commit_lsn".into(), Value::String(n.commit_lsn.clone()));
    let mut payload = json!({
        "summary": truncate(&n.title, 1024),
        "source": format!("lily/{}", n.tenant_id),
        "severity": severity(n.severity_level()),
        "group": n.tenant_id,
        "custom_details": details,
    });
    if let Some(t) = &n.commit_time {
        payload["timestamp"] = Value::String(t.clone());
    }
    let mut event = json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": key,
        "payload": payload,
        "client": "Lily",
    });
    if let Some(url) = &n.url {
        event["links"] = json!([{"href": url, "text": "Open"}]);
    }
    event
}

#[async_trait::async_trait]
impl Target for PagerDutyTarget {
    async fn deliver(
        &self,
        n: &Notification,
        _: &DeliveryContext<'_>,
    ) -> Result<(), DeliveryError> {
        post_json(
            &self.http,
            &self.config.url,
            &event(&self.config.routing_key, n),
        )
        .await
    }

    fn default_rate_per_sec(&self) -> f64 {
        2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::slack::tests::sample;

    #[test]
    fn trigger_and_resolve_share_the_dedup_key() {
        let mut n = sample();
        n.commit_time = Some("2026-11-30T10:00:00.000000Z".into());
        let t = event("R0UT1NGKEY", &n);
        assert_eq!(t["event_action"], "trigger");
        assert_eq!(t["payload"]["severity"], "error");
        assert_eq!(t["payload"]["source"], "lily/acme");
        assert_eq!(t["payload"]["custom_details"]["tag"], "PII");
        assert_eq!(t["links"][0]["href"], "https://lily.example/a?b=1");
        n.action = Action::Resolve;
        let r = event("R0UT1NGKEY", &n);
        assert_eq!(r["event_action"], "resolve");
        assert_eq!(r["dedup_key"], t["dedup_key"]);
        assert!(r.get("payload").is_none());
    }

    #[test]
    fn a_hostile_asset_name_is_plain_text_in_the_summary() {
        // PagerDuty shows summary and custom_details as plain text.
        let mut n = sample();
        n.title = "crm.<!channel> <script>x</script>".into();
        let t = event("R0UT1NGKEY", &n);
        assert_eq!(t["payload"]["summary"], n.title.as_str());
    }
}
