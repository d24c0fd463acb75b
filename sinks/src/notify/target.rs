//! What every SaaS target is: a renderer of the vendor's documented format
//! that delivers one notification, and the rules saying which HTTP answers
//! are worth retrying.

use std::time::Duration;

use super::event::Notification;
use super::refs::SubjectRefs;

/// Why a delivery failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DeliveryError {
    /// Worth trying again: the network, a timeout, a 5xx, a 429. `after` is
    /// the wait the vendor asked for (Retry-After), if any.
    #[error("{message}")]
    Retry {
        /// What failed.
        message: String,
        /// How long the vendor asked us to wait.
        after: Option<Duration>,
    },
    /// The vendor refused this notification (a 4xx other than 408 and 429):
    /// sending it again will not help.
    #[error("refused with HTTP {status}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// What the vendor said.
        message: String,
    },
}

impl DeliveryError {
    /// A stable code for the dead-letter store and metrics.
    pub fn code(&self) -> String {
        match self {
            DeliveryError::Retry { .. } => "retries_exhausted".to_owned(),
            DeliveryError::Refused { status, .. } => format!("http_{status}"),
        }
    }
}

impl From<reqwest::Error> for DeliveryError {
    /// Without the URL: a Slack or Teams webhook URL is its credential, and
    /// this text goes to logs, `lily.outbox.last_error` and dead letters.
    fn from(e: reqwest::Error) -> Self {
        DeliveryError::Retry {
            message: lily_cdc::sink::error_chain(&e.without_url()),
            after: None,
        }
    }
}

/// What the delivery of a notification needs besides the notification.
pub struct DeliveryContext<'a> {
    /// The target's name (from the config).
    pub target: &'a str,
    /// Tickets and issues opened earlier, by subject.
    pub refs: &'a SubjectRefs,
}

/// A SaaS target: renders and sends one notification in the vendor's format.
#[async_trait::async_trait]
pub trait Target: Send + Sync {
    /// Delivers `n`. Returns normally when the vendor took it (or when there
    /// was deliberately nothing to send, such as an update of a subject
    /// without a ticket).
    async fn deliver(
        &self,
        n: &Notification,
        cx: &DeliveryContext<'_>,
    ) -> Result<(), DeliveryError>;

    /// Deliveries per second the vendor allows one webhook or account.
    fn default_rate_per_sec(&self) -> f64;
}

/// The longest a vendor may ask us to wait before a retry.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// Reads a response: 2xx is delivered (the body is returned), 408, 429 and
/// 5xx are worth retrying (honouring Retry-After), the rest is refused.
pub async fn read_response(response: reqwest::Response) -> Result<String, DeliveryError> {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s).min(MAX_RETRY_AFTER));
    let body = response.text().await.unwrap_or_default();
    let excerpt: String = body.chars().take(500).collect();
    if status.is_success() {
        Ok(body)
    } else if status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error() {
        Err(DeliveryError::Retry {
            message: format!("HTTP {}: {excerpt}", status.as_u16()),
            after: retry_after,
        })
    } else {
        Err(DeliveryError::Refused {
            status: status.as_u16(),
            message: excerpt,
        })
    }
}

/// POSTs `body` as JSON to `url`; delivered when the vendor answers 2xx.
pub async fn post_json(
    http: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
) -> Result<(), DeliveryError> {
    let response = http.post(url).json(body).send().await?;
    read_response(response).await.map(|_| ())
}

/// Cuts `s` to at most `max` characters, marking the cut with an ellipsis
/// (vendors refuse over-long fields rather than cutting them).
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_delivery_never_shows_the_webhook_url() {
        // Nothing listens on port 9: the request fails to connect.
        let secret_url = "http://127.0.0.1:9/services/T000/B000/s3cr3t-token";
        let e = reqwest::Client::new()
            .post(secret_url)
            .send()
            .await
            .expect_err("nothing listens there");
        let message = DeliveryError::from(e).to_string();
        assert!(!message.contains("s3cr3t"), "{message}");
        assert!(!message.is_empty());
    }

    #[test]
    fn truncation_keeps_within_the_limit() {
        assert_eq!(truncate("short", 10), "short");
        let cut = truncate("a very long title indeed", 10);
        assert_eq!(cut.chars().count(), 10);
        assert!(cut.ends_with('…'));
    }
}
