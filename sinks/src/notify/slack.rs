//! Slack incoming webhooks with Block Kit.
//!
//! Slack documents: POST JSON to the webhook URL; `text` is the fallback
//! shown in notifications, `blocks` the message (a `header` of plain text up
//! to 150 characters, `section`s of mrkdwn up to 3,000 characters with at
//! most 10 `fields` of 2,000, a `context`). It answers 200 `ok`; 429 with
//! Retry-After when a webhook sends more than about one message a second.
//! In mrkdwn, `&`, `<` and `>` must be escaped; links are `<url|text>`.

use serde::Deserialize;
use serde_json::{Value, json};

use super::event::Notification;
use super::target::{DeliveryContext, DeliveryError, Target, post_json, truncate};

/// `kind = "slack"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    /// The incoming webhook URL (it is the credential: keep it in `${ENV}`).
    pub url: String,
}

/// Posts Block Kit messages to a Slack incoming webhook.
pub struct SlackTarget {
    config: SlackConfig,
    http: reqwest::Client,
}

impl SlackTarget {
    /// A target posting to `config.url`.
    pub fn new(config: SlackConfig, http: reqwest::Client) -> Self {
        Self { config, http }
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The Block Kit message for `n`.
pub fn render(n: &Notification) -> Value {
    let emoji = match n.action {
        super::event::Action::Trigger => ":rotating_light:",
        super::event::Action::Update => ":information_source:",
        super::event::Action::Resolve => ":white_check_mark:",
    };
    let mut blocks = vec![json!({
        "type": "header",
        "text": {"type": "plain_text", "text": truncate(&n.title, 150), "emoji": true}
    })];
    if let Some(body) = &n.body {
        blocks.push(json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": truncate(&escape(body), 3000)}
        }));
    }
    let mut fields: Vec<Value> = Vec::new();
    if let Some(s) = &n.severity {
        fields.push(json!({"type": "mrkdwn", "text": format!("*severity*\n{}", escape(s))}));
    }
    for f in &n.facts {
        fields.push(json!({
            "type": "mrkdwn",
            "text": truncate(&format!("*{}*\n{}", escape(&f.name), escape(&f.value)), 2000)
        }));
    }
    for chunk in fields.chunks(10) {
        blocks.push(json!({"type": "section", "fields": chunk}));
    }
    if let Some(url) = &n.url {
        blocks.push(json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": format!("<{}|Open>", url.replace('|', "%7C").replace('>', "%3E"))}
        }));
    }
    blocks.push(json!({
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": format!(
            "{emoji} {} · tenant {} · Lily", n.action.as_str(), escape(&n.tenant_id)
        )}]
    }));
    // The top-level text is mrkdwn too (the notification's fallback): a
    // title naming `<!channel>` must not mention anyone.
    json!({"text": truncate(&escape(&n.title), 3000), "blocks": blocks})
}

#[async_trait::async_trait]
impl Target for SlackTarget {
    async fn deliver(
        &self,
        n: &Notification,
        _: &DeliveryContext<'_>,
    ) -> Result<(), DeliveryError> {
        post_json(&self.http, &self.config.url, &render(n)).await
    }

    fn default_rate_per_sec(&self) -> f64 {
        1.0
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::notify::event::{Action, Fact};

    pub(crate) fn sample() -> Notification {
        Notification {
            dedupe_key: "acme/0/1/0/s/trigger".into(),
            tenant_id: "acme".into(),
            action: Action::Trigger,
            subject: "s".into(),
            title: "PII added to db.sales.customers.email".into(),
            body: Some("Tagged <PII> & propagated".into()),
            severity: Some("high".into()),
            url: Some("https://lily.example/a?b=1".into()),
            incident_id: None,
            facts: vec![Fact {
                name: "tag".into(),
                value: "PII".into(),
            }],
            commit_lsn: "0/1".into(),
            commit_time: None,
        }
    }

    #[test]
    fn a_block_kit_message_with_escaped_mrkdwn() {
        let v = render(&sample());
        assert_eq!(v["text"], "PII added to db.sales.customers.email");
        assert_eq!(v["blocks"][0]["type"], "header");
        assert_eq!(v["blocks"][0]["text"]["type"], "plain_text");
        assert_eq!(
            v["blocks"][1]["text"]["text"],
            "Tagged &lt;PII&gt; &amp; propagated"
        );
        assert_eq!(v["blocks"][2]["fields"].as_array().unwrap().len(), 2);
        assert_eq!(
            v["blocks"][3]["text"]["text"],
            "<https://lily.example/a?b=1|Open>"
        );
        assert_eq!(v["blocks"][4]["type"], "context");
    }

    #[test]
    fn an_asset_name_cannot_mention_anyone() {
        let mut n = sample();
        n.title = "PII added to crm.<!channel> & <@U0HOLD>.notes".into();
        let v = render(&n);
        assert_eq!(
            v["text"],
            "PII added to crm.&lt;!channel&gt; &amp; &lt;@U0HOLD&gt;.notes"
        );
        // The header is plain_text: Slack shows it as it is.
        assert_eq!(v["blocks"][0]["text"]["type"], "plain_text");
    }

    #[test]
    fn long_titles_are_cut_to_the_header_limit() {
        let mut n = sample();
        n.title = "x".repeat(400);
        let v = render(&n);
        assert_eq!(
            v["blocks"][0]["text"]["text"]
                .as_str()
                .unwrap()
                .chars()
                .count(),
            150
        );
    }
}
