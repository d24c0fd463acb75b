//! Microsoft Teams through a Workflows webhook ("Post to a channel when a
//! webhook request is received"), with an Adaptive Card.
//!
//! The workflow takes `{"type": "message", "attachments": [{"contentType":
//! "application/vnd.microsoft.card.adaptive", "contentUrl": null, "content":
//! <card>}]}`; a body without that `attachments` array makes the flow fail.
//! The card is Adaptive Card 1.4 (what Teams renders): `TextBlock`s, a
//! `FactSet` and an `Action.OpenUrl`. The workflow answers 202 Accepted.

use serde::Deserialize;
use serde_json::{Value, json};

use super::event::{Action, Notification, Severity};
use super::target::{DeliveryContext, DeliveryError, Target, post_json};

/// `kind = "teams"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamsConfig {
    /// The workflow's HTTP POST URL (it carries its signature: keep it in `${ENV}`).
    pub url: String,
}

/// Posts Adaptive Cards to a Teams workflow webhook.
pub struct TeamsTarget {
    config: TeamsConfig,
    http: reqwest::Client,
}

impl TeamsTarget {
    /// A target posting to `config.url`.
    pub fn new(config: TeamsConfig, http: reqwest::Client) -> Self {
        Self { config, http }
    }
}

/// The workflow message carrying the Adaptive Card for `n`.
pub fn render(n: &Notification) -> Value {
    let color = match (n.action, n.severity_level()) {
        (Action::Resolve, _) => "Good",
        (_, Some(Severity::Critical | Severity::High)) => "Attention",
        (_, Some(Severity::Medium)) => "Warning",
        _ => "Default",
    };
    let mut body = vec![json!({
        "type": "TextBlock", "text": n.title, "weight": "Bolder", "size": "Medium",
        "wrap": true, "color": color
    })];
    if let Some(text) = &n.body {
        body.push(json!({"type": "TextBlock", "text": text, "wrap": true}));
    }
    let mut facts = vec![
        json!({"title": "Tenant", "value": n.tenant_id}),
        json!({"title": "Status", "value": n.action.as_str()}),
    ];
    if let Some(s) = &n.severity {
        facts.push(json!({"title": "Severity", "value": s}));
    }
    facts.extend(
        n.facts
            .iter()
            .map(|f| json!({"title": f.name, "value": f.value})),
    );
    body.push(json!({"type": "FactSet", "facts": facts}));
    let mut card = json!({
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": body,
    });
    if let Some(url) = &n.url {
        card["actions"] = json!([{"type": "Action.OpenUrl", "title": "Open", "url": url}]);
    }
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": card,
        }]
    })
}

#[async_trait::async_trait]
impl Target for TeamsTarget {
    async fn deliver(
        &self,
        n: &Notification,
        _: &DeliveryContext<'_>,
    ) -> Result<(), DeliveryError> {
        post_json(&self.http, &self.config.url, &render(n)).await
    }

    fn default_rate_per_sec(&self) -> f64 {
        // Workflows throttle per flow; a few a second is well within it.
        2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::slack::tests::sample;

    #[test]
    fn an_adaptive_card_inside_a_workflow_message() {
        let v = render(&sample());
        assert_eq!(v["type"], "message");
        let att = &v["attachments"][0];
        assert_eq!(
            att["contentType"],
            "application/vnd.microsoft.card.adaptive"
        );
        assert!(att["contentUrl"].is_null());
        assert_eq!(att["content"]["type"], "AdaptiveCard");
        assert_eq!(att["content"]["version"], "1.4");
        assert_eq!(att["content"]["body"][0]["color"], "Attention");
        let facts = att["content"]["body"][2]["facts"].as_array().unwrap();
        assert!(
            facts
                .iter()
                .any(|f| f["title"] == "tag" && f["value"] == "PII")
        );
        assert_eq!(att["content"]["actions"][0]["type"], "Action.OpenUrl");
    }
}
