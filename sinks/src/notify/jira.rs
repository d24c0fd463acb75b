//! JIRA Cloud, REST API v3: an issue for a new incident of high enough
//! severity, a comment on it for each update.
//!
//! Atlassian documents `POST /rest/api/3/issue` with `{"fields": {"project":
//! {"key"}, "issuetype": {"name"}, "summary", "description", "labels"}}`
//! (201 with `{"id", "key", "self"}`), `POST
//! /rest/api/3/issue/{key}/comment` with `{"body": <doc>}`, and `GET
//! /rest/api/3/search/jql?jql=...`. Descriptions and comments are in the
//! Atlassian Document Format (ADF): `{"type": "doc", "version": 1,
//! "content": [paragraphs, bullet lists]}`. Authentication is basic, with
//! an account e-mail and an API token. Labels hold no spaces.
//!
//! Each issue carries a label derived from its subject. Before opening an
//! issue for a subject with no known issue, the label is searched, so a
//! delivery retried after a crash finds the issue it already opened instead
//! of opening a second one.

use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::event::{Action, Notification, Severity};
use super::target::{DeliveryContext, DeliveryError, Target, read_response, truncate};

/// `kind = "jira"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JiraConfig {
    /// The site, e.g. `https://acme.atlassian.net`.
    pub base_url: String,
    /// Account e-mail of the API token.
    pub email: String,
    /// API token (keep it in `${ENV}`).
    pub api_token: String,
    /// Project key issues are opened in.
    pub project: String,
    /// Issue type name.
    #[serde(default = "default_issue_type")]
    pub issue_type: String,
    /// Only notifications at least this severe open an issue (critical,
    /// high, medium, low, info); empty: every trigger opens one.
    #[serde(default = "default_min_severity")]
    pub min_severity: String,
    /// Labels added to every issue.
    #[serde(default)]
    pub labels: Vec<String>,
}

fn default_issue_type() -> String {
    "Task".to_owned()
}

fn default_min_severity() -> String {
    "high".to_owned()
}

/// Opens and comments JIRA issues.
pub struct JiraTarget {
    config: JiraConfig,
    min_severity: Option<Severity>,
    http: reqwest::Client,
}

impl JiraTarget {
    /// A target for `config`; an unknown `min_severity` is an error.
    pub fn new(config: JiraConfig, http: reqwest::Client) -> Result<Self, String> {
        let min_severity = if config.min_severity.is_empty() {
            None
        } else {
            Some(Severity::parse(&config.min_severity).ok_or_else(|| {
                format!(
                    "min_severity {:?} is not one of critical, high, medium, low, info",
                    config.min_severity
                )
            })?)
        };
        Ok(Self {
            config,
            min_severity,
            http,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.base_url.trim_end_matches('/'))
    }

    fn severe_enough(&self, n: &Notification) -> bool {
        match self.min_severity {
            None => true,
            Some(min) => n.severity_level().is_some_and(|s| s >= min),
        }
    }

    async fn find_by_label(&self, label: &str) -> Result<Option<String>, DeliveryError> {
        let jql = format!("labels = \"{label}\" ORDER BY created ASC");
        let response = self
            .http
            .get(self.url("/rest/api/3/search/jql"))
            .basic_auth(&self.config.email, Some(&self.config.api_token))
            .query(&[
                ("jql", jql.as_str()),
                ("fields", "key"),
                ("maxResults", "1"),
            ])
            .send()
            .await?;
        let body = read_response(response).await?;
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        Ok(v["issues"][0]["key"].as_str().map(str::to_owned))
    }

    async fn create(&self, n: &Notification, label: &str) -> Result<String, DeliveryError> {
        let response = self
            .http
            .post(self.url("/rest/api/3/issue"))
            .basic_auth(&self.config.email, Some(&self.config.api_token))
            .json(&issue(&self.config, n, label))
            .send()
            .await?;
        let body = read_response(response).await?;
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        v["key"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| DeliveryError::Retry {
                message: format!("JIRA created an issue but named no key: {body}"),
                after: None,
            })
    }

    async fn comment(&self, key: &str, n: &Notification) -> Result<(), DeliveryError> {
        let response = self
            .http
            .post(self.url(&format!("/rest/api/3/issue/{key}/comment")))
            .basic_auth(&self.config.email, Some(&self.config.api_token))
            .json(&json!({"body": document(n)}))
            .send()
            .await?;
        read_response(response).await.map(|_| ())
    }
}

/// The label that finds the issue of a subject again.
pub fn subject_label(tenant: &str, subject: &str) -> String {
    let digest = Sha256::digest(format!("{tenant}/{subject}").as_bytes());
    format!("lily-{}", &hex::encode(digest)[..16])
}

fn text(s: &str) -> Value {
    json!({"type": "text", "text": s})
}

fn paragraph(content: Vec<Value>) -> Value {
    json!({"type": "paragraph", "content": content})
}

/// The ADF document of a notification: its body, its facts as a bullet
/// list, and its link.
pub fn document(n: &Notification) -> Value {
    let mut content = vec![paragraph(vec![json!({
        "type": "text", "text": format!("{} ({})", n.title, n.action.as_str()),
        "marks": [{"type": "strong"}]
    })])];
    if let Some(body) = &n.body {
        content.push(paragraph(vec![text(body)]));
    }
    let mut items: Vec<(String, String)> = Vec::new();
    if let Some(s) = &n.severity {
        items.push(("severity".into(), s.clone()));
    }
    items.extend(n.facts.iter().map(|f| (f.name.clone(), f.value.clone())));
    if !items.is_empty() {
        content.push(json!({
            "type": "bulletList",
            "content": items.iter().map(|(k, v)| json!({
                "type": "listItem",
                "content": [paragraph(vec![
                    json!({"type": "text", "text": format!("{k}: "), "marks": [{"type": "strong"}]}),
                    text(v),
                ])]
            })).collect::<Vec<_>>()
        }));
    }
    if let Some(url) = &n.url {
        content.push(paragraph(vec![json!({
            "type": "text", "text": url, "marks": [{"type": "link", "attrs": {"href": url}}]
        })]));
    }
    json!({"type": "doc", "version": 1, "content": content})
}

/// The body of `POST /rest/api/3/issue` for `n`.
pub fn issue(config: &JiraConfig, n: &Notification, label: &str) -> Value {
    let mut labels: Vec<String> = config
        .labels
        .iter()
        .map(|l| l.replace(char::is_whitespace, "-"))
        .collect();
    labels.push(format!("tenant-{}", n.tenant_id));
    labels.push(label.to_owned());
    json!({
        "fields": {
            "project": {"key": config.project},
            "issuetype": {"name": config.issue_type},
            // JIRA refuses summaries over 255 characters.
            "summary": truncate(&n.title, 255),
            "description": document(n),
            "labels": labels,
        }
    })
}

#[async_trait::async_trait]
impl Target for JiraTarget {
    async fn deliver(
        &self,
        n: &Notification,
        cx: &DeliveryContext<'_>,
    ) -> Result<(), DeliveryError> {
        let known = cx.refs.get(cx.target, &n.tenant_id, &n.subject).await?;
        match (known, n.action) {
            (Some(key), _) => self.comment(&key, n).await,
            // Nothing to comment on, and a resolve opens nothing.
            (None, Action::Resolve) => Ok(()),
            (None, Action::Trigger | Action::Update) if !self.severe_enough(n) => Ok(()),
            (None, Action::Trigger | Action::Update) => {
                let label = subject_label(&n.tenant_id, &n.subject);
                let key = match self.find_by_label(&label).await? {
                    Some(key) => key,
                    None => self.create(n, &label).await?,
                };
                cx.refs.remember(cx.target, "jira", n, &key).await
            }
        }
    }

    fn default_rate_per_sec(&self) -> f64 {
        5.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::slack::tests::sample;

    fn config() -> JiraConfig {
        JiraConfig {
            base_url: "https://acme.atlassian.net/".into(),
            email: "bot@acme.example".into(),
            api_token: "t".into(),
            project: "DQ".into(),
            issue_type: default_issue_type(),
            min_severity: default_min_severity(),
            labels: vec!["data quality".into()],
        }
    }

    #[test]
    fn an_issue_in_adf_with_labels_without_spaces() {
        let n = sample();
        let v = issue(&config(), &n, &subject_label("acme", "s"));
        assert_eq!(v["fields"]["project"]["key"], "DQ");
        assert_eq!(v["fields"]["issuetype"]["name"], "Task");
        assert_eq!(v["fields"]["description"]["type"], "doc");
        assert_eq!(v["fields"]["description"]["version"], 1);
        let labels: Vec<&str> = v["fields"]["labels"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(labels[..2], ["data-quality", "tenant-acme"]);
        assert!(labels[2].starts_with("lily-") && labels[2].len() == 21);
        let list = &v["fields"]["description"]["content"][2];
        assert_eq!(list["type"], "bulletList");
    }

    #[test]
    fn a_hostile_asset_name_is_a_text_node_never_markup() {
        // ADF is structure, not markup: wiki syntax in a title stays text.
        let mut n = sample();
        n.title = "crm.[x|https://evil.example] {color:red}<b>".into();
        let v = issue(&config(), &n, "l");
        assert_eq!(v["fields"]["summary"], n.title.as_str());
        let first = &v["fields"]["description"]["content"][0]["content"][0];
        assert_eq!(first["type"], "text");
        assert!(first["text"].as_str().unwrap().starts_with(&n.title));
        assert_eq!(first["marks"], json!([{"type": "strong"}]), "no link mark");
    }

    #[test]
    fn only_severe_enough_triggers_open_issues() {
        let t = JiraTarget::new(config(), reqwest::Client::new()).unwrap();
        let mut n = sample();
        assert!(t.severe_enough(&n));
        n.severity = Some("SEV-3".into());
        assert!(!t.severe_enough(&n));
        n.severity = None;
        assert!(!t.severe_enough(&n));
        let mut c = config();
        c.min_severity = "extreme".into();
        assert!(JiraTarget::new(c, reqwest::Client::new()).is_err());
    }
}
