//! Microsoft Teams through a Workflows webhook ("Post to a channel when a
//! webhook request is received"), with an Adaptive Card.
//!
//! The workflow takes `{"type": "message", "attachments": [{"contentType":
//! "application/vnd.microsoft.card.adaptive", "contentUrl": null, "content":
//! <card>}]}`; a body without that `attachments` array makes the flow fail.
//! The card is Adaptive Card 1.4 (what Teams renders) and an
//! `Action.OpenUrl`; the workflow answers 202 Accepted.
//!
//! Every text that comes from the catalog (titles name assets, whoever can
//! name an asset writes them) is a `TextRun` inside a `RichTextBlock`:
//! Microsoft documents `TextBlock` and `FactSet` text as Markdown (links,
//! emphasis, lists: "Format cards in Teams") with no escape, while a
//! `TextRun`'s text is "Text to display. Markdown is not supported" (the
//! Adaptive Cards schema, TextRun). A mention needs an `msteams.entities`
//! entry, which Lily never writes, so `<at>` in a name stays text.

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
    let mut body = vec![rich(vec![json!({
        "type": "TextRun", "text": n.title, "weight": "Bolder", "size": "Medium", "color": color
    })])];
    if let Some(text) = &n.body {
        body.push(rich(vec![run(text)]));
    }
    let mut facts: Vec<(&str, &str)> = vec![
        ("Tenant", n.tenant_id.as_str()),
        ("Status", n.action.as_str()),
    ];
    if let Some(s) = &n.severity {
        facts.push(("Severity", s));
    }
    facts.extend(n.facts.iter().map(|f| (f.name.as_str(), f.value.as_str())));
    for (name, value) in facts {
        body.push(rich(vec![
            json!({"type": "TextRun", "text": format!("{name}: "), "weight": "Bolder"}),
            run(value),
        ]));
    }
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

/// Text shown as it is: a run, which Teams does not read as Markdown.
fn run(text: &str) -> Value {
    json!({"type": "TextRun", "text": text})
}

fn rich(inlines: Vec<Value>) -> Value {
    json!({"type": "RichTextBlock", "inlines": inlines})
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
        assert_eq!(att["content"]["body"][0]["inlines"][0]["color"], "Attention");
        let body = att["content"]["body"].as_array().unwrap();
        assert!(body.iter().any(|b| b["inlines"][0]["text"] == "tag: "
            && b["inlines"][1]["text"] == "PII"));
        assert_eq!(att["content"]["actions"][0]["type"], "Action.OpenUrl");
    }

    /// Every string of the card that is not one of its keywords.
    fn texts(v: &Value, parent: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) => {
                let kind = m.get("type").and_then(Value::as_str).unwrap_or(parent);
                for (k, x) in m {
                    if matches!(k.as_str(), "text" | "title" | "value")
                        && let Value::String(s) = x
                    {
                        out.push((kind.to_owned(), s.clone()));
                    }
                    texts(x, kind, out);
                }
            }
            Value::Array(a) => a.iter().for_each(|x| texts(x, parent, out)),
            _ => {}
        }
    }

    #[test]
    fn a_hostile_asset_name_is_a_text_run_never_markdown() {
        let mut n = sample();
        let hostile = "crm.<at>Ops</at> [click](https://evil.example) **x** <!channel> & _y_";
        n.title = format!("PII added to {hostile}");
        n.body = Some(hostile.to_owned());
        let v = render(&n);
        let card = &v["attachments"][0]["content"];
        let mut all = Vec::new();
        texts(card, "", &mut all);
        let carrying: Vec<&(String, String)> =
            all.iter().filter(|(_, t)| t.contains("evil.example")).collect();
        assert_eq!(carrying.len(), 2, "{all:?}");
        // Only runs carry it, verbatim: no TextBlock or Fact reads it as
        // Markdown, and no entity makes `<at>` a mention.
        assert!(carrying.iter().all(|(kind, _)| kind == "TextRun"), "{carrying:?}");
        assert!(carrying.iter().any(|(_, t)| t == hostile));
        assert!(card.get("msteams").is_none());
        let json = v.to_string();
        assert!(!json.contains("\"TextBlock\""), "{json}");
        assert!(!json.contains("\"FactSet\""), "{json}");
    }
}
