//! An assessor behind HTTP (feature `http-hooks`): a model or a rules
//! service the host runs elsewhere.
//!
//! # Protocol
//!
//! The assessor `POST`s JSON to its URL:
//!
//! ```json
//! {
//!   "requester": {"id": "bob", "groups": ["engineering"]},
//!   "request": {"entitlement": "prod-db-read", "duration": 900,
//!               "justification": "INC-42: ...", "ticket": "INC-42",
//!               "context": {"ip": "10.0.0.7", "client": "jit-cli/0.1"}},
//!   "entitlement": {"id": "prod-db-read", "provider": "aws"},
//!   "now": "2026-11-29T23:00:00Z"
//! }
//! ```
//!
//! and expects `200` with
//!
//! ```json
//! {"score": 35, "signals": [{"name": "odd_ip", "weight": 35, "reason": "IP seen first today"}]}
//! ```
//!
//! `score` is an integer from 0 to 100; `signals` is optional (each needs
//! all three fields). Anything else — another status, a body that is not
//! that JSON, a score out of range or not an integer, a body over 64 KiB,
//! no answer within the timeout (default 2 s) — is an error, which the
//! broker records as an unavailable assessment: the request goes to human
//! review, never to auto-approval (see the [module contract](super)).
//! The entitlement's target (role ARNs, scopes) is not sent.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::json;

use super::{RiskAssessment, RiskAssessor, RiskInput, RiskSignal, MAX_SCORE};
use crate::credentials::Secret;
use crate::error::{Error, Result};

/// The largest answer read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Asks an external service for a score (see the [module docs](self)).
#[derive(Clone)]
pub struct HttpAssessor {
    url: String,
    client: reqwest::Client,
    timeout: Duration,
    token: Option<Secret>,
}

impl fmt::Debug for HttpAssessor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpAssessor")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .field("token", &self.token.as_ref().map(|_| "** redacted **"))
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Answer {
    score: serde_json::Number,
    #[serde(default)]
    signals: Vec<RiskSignal>,
}

impl HttpAssessor {
    /// Posts to `url` (http or https) with a 2-second timeout.
    pub fn new(url: &str) -> Result<Self> {
        Self::with_client(url, reqwest::Client::new())
    }

    /// Uses this client (a test CA, a proxy); the timeout is still applied per call.
    pub fn with_client(url: &str, client: reqwest::Client) -> Result<Self> {
        hook_url(url).map_err(|m| invalid(url, &m))?;
        Ok(Self {
            url: url.to_string(),
            client,
            timeout: Duration::from_secs(2),
            token: None,
        })
    }

    /// How long to wait for the whole answer (default 2 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends `Authorization: Bearer <token>`.
    pub fn bearer_token(mut self, token: Secret) -> Self {
        self.token = Some(token);
        self
    }

    fn unavailable(&self, message: impl Into<String>) -> Error {
        Error::Unavailable {
            what: format!("risk assessor `{}`", self.url),
            message: message.into(),
        }
    }

    async fn call(&self, body: serde_json::Value) -> Result<Vec<u8>> {
        let mut req = self.client.post(&self.url).json(&body);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t.expose());
        }
        let mut resp = req
            .send()
            .await
            // Without the URL: reqwest's message names it, and we name it in `what`.
            .map_err(|e| self.unavailable(e.without_url().to_string()))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(self.unavailable(format!("status {}", status.as_u16())));
        }
        let mut out = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| self.unavailable(e.without_url().to_string()))?
        {
            if out.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(
                    self.unavailable(format!("answer larger than {MAX_ANSWER_BYTES} bytes"))
                );
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    fn parse(&self, body: &[u8]) -> Result<RiskAssessment> {
        let value: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| self.unavailable(format!("malformed answer: {e}")))?;
        // Serde would also read a struct from an array (`[5]`): only an object is an answer.
        if !value.is_object() {
            return Err(self.unavailable("malformed answer: not a JSON object"));
        }
        let answer = Answer::deserialize(value)
            .map_err(|e| self.unavailable(format!("malformed answer: {e}")))?;
        let score = answer
            .score
            .as_u64()
            .filter(|s| *s <= u64::from(MAX_SCORE))
            .and_then(|s| u8::try_from(s).ok())
            .ok_or_else(|| {
                self.unavailable(format!(
                    "malformed answer: score `{}` is not an integer from 0 to {MAX_SCORE}",
                    answer.score
                ))
            })?;
        Ok(RiskAssessment {
            assessor: self.name().to_string(),
            score: Some(score),
            signals: answer.signals,
            error: None,
        })
    }
}

/// The URL rule of the decision hooks (this assessor, the on-call
/// service): http or https, and no credentials in the URL (they go in a
/// bearer token, which is kept out of `Debug` and logs). The error is the
/// reason, for the caller's own config error.
pub(crate) fn hook_url(url: &str) -> std::result::Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("use an http or https URL".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("put credentials in a bearer token, not the URL".into());
    }
    Ok(parsed)
}

fn invalid(url: &str, message: &str) -> Error {
    Error::Config(crate::error::ConfigError::InvalidField {
        entitlement: "risk".into(),
        field: "url".into(),
        message: format!("`{}`: {message}", crate::store::redact_url(url)),
    })
}

#[async_trait]
impl RiskAssessor for HttpAssessor {
    fn name(&self) -> &str {
        "http"
    }

    async fn assess(&self, input: &RiskInput<'_>) -> Result<RiskAssessment> {
        let body = json!({
            "requester": {
                "id": input.requester.id,
                "groups": input.requester.groups,
            },
            "request": input.request,
            "entitlement": {
                "id": input.entitlement.id,
                "provider": input.entitlement.provider,
            },
            "now": input.now,
        });
        let answer = tokio::time::timeout(self.timeout, self.call(body))
            .await
            .map_err(|_| {
                self.unavailable(format!("no answer within {} ms", self.timeout.as_millis()))
            })??;
        self.parse(&answer)
    }
}
