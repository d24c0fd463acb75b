//! Freshdesk tickets, API v2: a ticket per subject, a note for each update,
//! resolved when the subject is.
//!
//! Freshdesk documents `POST /api/v2/tickets` (201 with the ticket and its
//! `id`), which needs a requester (`email`), `subject`, `description`
//! (HTML), `priority` (1 low, 2 medium, 3 high, 4 urgent) and `status` (2
//! open, 4 resolved); `POST /api/v2/tickets/{id}/notes` with `body` (HTML)
//! and `private`; `PUT /api/v2/tickets/{id}` to change the status.
//! Authentication is basic, the API key as user and `X` as password. Rate
//! limits are per minute by plan; over them it answers 429 with Retry-After.

use serde::Deserialize;
use serde_json::{Value, json};

use super::event::{Action, Notification, Severity};
use super::target::{DeliveryContext, DeliveryError, Target, read_response};

/// `kind = "freshdesk"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreshdeskConfig {
    /// The helpdesk, e.g. `https://acme.freshdesk.com`.
    pub base_url: String,
    /// API key (keep it in `${ENV}`).
    pub api_key: String,
    /// E-mail the tickets are raised by.
    pub requester_email: String,
    /// Tags added to every ticket.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// Opens, annotates and resolves Freshdesk tickets.
pub struct FreshdeskTarget {
    config: FreshdeskConfig,
    http: reqwest::Client,
}

impl FreshdeskTarget {
    /// A target for `config`.
    pub fn new(config: FreshdeskConfig, http: reqwest::Client) -> Self {
        Self { config, http }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(
                method,
                format!("{}{path}", self.config.base_url.trim_end_matches('/')),
            )
            .basic_auth(&self.config.api_key, Some("X"))
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<String, DeliveryError> {
        read_response(request.send().await?).await
    }
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The HTML of a ticket description or note.
pub fn html(n: &Notification) -> String {
    let mut out = format!("<p><b>{}</b></p>", escape_html(&n.title));
    if let Some(body) = &n.body {
        out.push_str(&format!("<p>{}</p>", escape_html(body)));
    }
    let mut items = Vec::new();
    if let Some(s) = &n.severity {
        items.push(format!("<li>severity: {}</li>", escape_html(s)));
    }
    items.extend(n.facts.iter().map(|f| {
        format!(
            "<li>{}: {}</li>",
            escape_html(&f.name),
            escape_html(&f.value)
        )
    }));
    if !items.is_empty() {
        out.push_str(&format!("<ul>{}</ul>", items.concat()));
    }
    if let Some(url) = &n.url {
        let url = escape_html(url);
        out.push_str(&format!("<p><a href=\"{url}\">{url}</a></p>"));
    }
    out
}

/// Freshdesk's priority for a severity.
pub fn priority(severity: Option<Severity>) -> u8 {
    match severity {
        Some(Severity::Critical) => 4,
        Some(Severity::High) => 3,
        Some(Severity::Medium) => 2,
        _ => 1,
    }
}

/// The body of `POST /api/v2/tickets` for `n`.
pub fn ticket(config: &FreshdeskConfig, n: &Notification) -> Value {
    let mut tags = config.tags.clone();
    tags.push(format!("tenant-{}", n.tenant_id));
    json!({
        "subject": n.title,
        "description": html(n),
        "email": config.requester_email,
        "priority": priority(n.severity_level()),
        "status": 2,
        "tags": tags,
    })
}

#[async_trait::async_trait]
impl Target for FreshdeskTarget {
    async fn deliver(
        &self,
        n: &Notification,
        cx: &DeliveryContext<'_>,
    ) -> Result<(), DeliveryError> {
        let known = cx.refs.get(cx.target, &n.tenant_id, &n.subject).await?;
        match (known, n.action) {
            (None, Action::Resolve) => Ok(()),
            (None, Action::Trigger | Action::Update) => {
                let body = self
                    .send(
                        self.request(reqwest::Method::POST, "/api/v2/tickets")
                            .json(&ticket(&self.config, n)),
                    )
                    .await?;
                let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                let Some(id) = v["id"].as_u64() else {
                    return Err(DeliveryError::Retry {
                        message: format!("Freshdesk created a ticket but named no id: {body}"),
                        after: None,
                    });
                };
                cx.refs
                    .remember(cx.target, "freshdesk", n, &id.to_string())
                    .await
            }
            (Some(id), Action::Trigger | Action::Update) => self
                .send(
                    self.request(
                        reqwest::Method::POST,
                        &format!("/api/v2/tickets/{id}/notes"),
                    )
                    .json(&json!({"body": html(n), "private": true})),
                )
                .await
                .map(|_| ()),
            (Some(id), Action::Resolve) => self
                .send(
                    self.request(reqwest::Method::PUT, &format!("/api/v2/tickets/{id}"))
                        .json(&json!({"status": 4})),
                )
                .await
                .map(|_| ()),
        }
    }

    fn default_rate_per_sec(&self) -> f64 {
        // The smallest plan allows 50 calls a minute.
        0.8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::slack::tests::sample;

    #[test]
    fn a_ticket_with_a_requester_priority_and_escaped_html() {
        let config = FreshdeskConfig {
            base_url: "https://acme.freshdesk.com".into(),
            api_key: "k".into(),
            requester_email: "data@acme.example".into(),
            tags: vec!["lily".into()],
        };
        let v = ticket(&config, &sample());
        assert_eq!(v["email"], "data@acme.example");
        assert_eq!(v["priority"], 3);
        assert_eq!(v["status"], 2);
        assert_eq!(v["tags"], json!(["lily", "tenant-acme"]));
        let d = v["description"].as_str().unwrap();
        assert!(d.contains("Tagged &lt;PII&gt; &amp; propagated"), "{d}");
        assert!(d.contains("<li>tag: PII</li>"), "{d}");
    }

    #[test]
    fn a_hostile_asset_name_stays_text_in_the_html() {
        let config = FreshdeskConfig {
            base_url: "https://acme.freshdesk.com".into(),
            api_key: "k".into(),
            requester_email: "data@acme.example".into(),
            tags: Vec::new(),
        };
        let mut n = sample();
        n.title = "crm.<img src=x onerror=alert(1)>".into();
        let d = ticket(&config, &n)["description"].as_str().unwrap().to_owned();
        assert!(d.contains("crm.&lt;img src=x onerror=alert(1)&gt;"), "{d}");
        assert!(!d.contains("<img"), "{d}");
    }
}
