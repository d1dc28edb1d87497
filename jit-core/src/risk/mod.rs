//! Risk review: how unusual a request is for its requester, as a score the
//! policy can use to send an otherwise auto-approved request to a human.
//!
//! A [`RiskAssessor`] looks at a request, its requester and the store's
//! history of past requests ([`History`]) and answers a
//! [`RiskAssessment`]: a score from 0 to [`MAX_SCORE`] and the
//! [`RiskSignal`]s that raised it, each with a reason a person can read.
//! The broker asks it once per submit, before the policy decides, and
//! hands the answer to the policy in
//! [`PolicyContext::risk`](crate::policy::PolicyContext::risk); it also
//! records it in [`Decision::risk`](crate::types::Decision::risk), so it is
//! in the audit record of the decision, in the API's answers and in the
//! approvers' view.
//!
//! Built in:
//! - [`HistoryAssessor`]: scores against the requester's own history and
//!   their peers' (see its docs for each signal and its weight);
//! - `HttpAssessor` (feature `http-hooks`): asks an external service,
//!   for example a model behind HTTP.
//!
//! # Contract
//!
//! - **Risk only ever adds scrutiny.** A score can stop an auto-approval
//!   (the catalogue's `auto_approve.max_risk`); it never approves
//!   anything and never lifts a deny or a human review.
//! - **No answer is the worst answer.** When an assessor fails, does not
//!   answer within the broker's risk timeout
//!   ([`BrokerBuilder::risk_timeout`](crate::BrokerBuilder::risk_timeout)),
//!   or answers a score above [`MAX_SCORE`], the broker records
//!   [`RiskAssessment::unavailable`] (no score, the error), which exceeds
//!   every threshold: the request goes to human review (or is denied where
//!   the entitlement has no human approval), never auto-approved.
//! - **Read-only.** An assessor reads history through [`History`] and
//!   writes nothing; the broker calls it before anything is stored, so the
//!   history never contains the request being assessed.
//! - Its reasons are shown to approvers and written to the audit log:
//!   they must not carry secrets.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::credentials::Secret;
use crate::error::{ConfigError, Error, Result};
use crate::store::{HistoryEntry, HistoryQuery, RiskFacts, RiskFactsQuery, Store};
use crate::types::{AccessRequest, Entitlement, Principal};

pub mod history;
#[cfg(feature = "http-hooks")]
pub mod http;

pub use history::{HistoryAssessor, Signal, Weights};
#[cfg(feature = "http-hooks")]
pub use http::HttpAssessor;

/// The highest score: the sum of the fired signals' weights is capped here.
pub const MAX_SCORE: u8 = 100;

/// One reason a request looks unusual.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskSignal {
    /// Stable machine name (`first_for_entitlement`, `burst`, ...).
    pub name: String,
    /// What it adds to the score.
    pub weight: u8,
    /// Why it fired, for people.
    pub reason: String,
}

/// An assessor's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskAssessment {
    /// Which assessor answered.
    pub assessor: String,
    /// 0 (routine) to [`MAX_SCORE`]; `None` when the request could not be
    /// assessed, which exceeds every threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<u8>,
    /// The signals that fired.
    #[serde(default)]
    pub signals: Vec<RiskSignal>,
    /// Why there is no score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl RiskAssessment {
    /// A score from fired signals: the sum of their weights, capped at [`MAX_SCORE`].
    pub fn from_signals(assessor: &str, signals: Vec<RiskSignal>) -> Self {
        let sum: u32 = signals.iter().map(|s| u32::from(s.weight)).sum();
        Self {
            assessor: assessor.to_string(),
            score: Some(u8::try_from(sum.min(u32::from(MAX_SCORE))).unwrap_or(MAX_SCORE)),
            signals,
            error: None,
        }
    }

    /// No score: the assessor failed, timed out or answered nonsense.
    pub fn unavailable(assessor: &str, error: impl Into<String>) -> Self {
        Self {
            assessor: assessor.to_string(),
            score: None,
            signals: Vec::new(),
            error: Some(error.into()),
        }
    }

    /// Whether the score is above `threshold`; always true without a score.
    pub fn exceeds(&self, threshold: u8) -> bool {
        self.score.is_none_or(|s| s > threshold)
    }

    /// One line for people: `risk 45/100 (first_for_entitlement, burst)`,
    /// or `risk unknown: <error>`.
    pub fn summary(&self) -> String {
        match self.score {
            Some(score) if self.signals.is_empty() => format!("risk {score}/{MAX_SCORE}"),
            Some(score) => format!(
                "risk {score}/{MAX_SCORE} ({})",
                self.signals
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => format!(
                "risk unknown: {}",
                self.error.as_deref().unwrap_or("no answer")
            ),
        }
    }
}

/// Read access to past requests: what an assessor may see of the store.
#[derive(Clone, Copy)]
pub struct History<'a> {
    store: &'a dyn Store,
}

impl fmt::Debug for History<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("History").field(&self.store).finish()
    }
}

impl<'a> History<'a> {
    /// History from `store`.
    pub fn new(store: &'a dyn Store) -> Self {
        Self { store }
    }

    /// Past requests matching `query`, newest first ([`Store::history`]).
    pub async fn query(&self, query: &HistoryQuery) -> Result<Vec<HistoryEntry>> {
        self.store.history(query).await
    }

    /// The facts the built-in assessor scores ([`Store::risk_facts`]):
    /// aggregates the store answers from its indexes, without reading
    /// whole past requests.
    pub async fn facts(&self, query: &RiskFactsQuery) -> Result<RiskFacts> {
        self.store.risk_facts(query).await
    }
}

/// What an assessor is asked about.
#[derive(Debug, Clone, Copy)]
pub struct RiskInput<'a> {
    /// Who asks.
    pub requester: &'a Principal,
    /// What they ask for (its context carries client, IP and user agent).
    pub request: &'a AccessRequest,
    /// The entitlement, as the catalogue has it.
    pub entitlement: &'a Entitlement,
    /// Now, from the broker's clock.
    pub now: DateTime<Utc>,
    /// Past requests (never including this one).
    pub history: History<'a>,
}

/// Scores requests. Object safe: use it as `Arc<dyn RiskAssessor>`; see the
/// [module's contract](self).
#[async_trait]
pub trait RiskAssessor: Send + Sync + fmt::Debug {
    /// A short name, recorded with every assessment.
    fn name(&self) -> &str;

    /// Scores one request. `Err` (like a timeout or a score above
    /// [`MAX_SCORE`]) becomes [`RiskAssessment::unavailable`].
    async fn assess(&self, input: &RiskInput<'_>) -> Result<RiskAssessment>;
}

/// Which assessor a host's configuration names: the one place the vending
/// server (`[risk]`) and the Lambda function (`JIT_RISK_*`) turn settings
/// into an assessor.
#[derive(Clone, Default)]
pub struct RiskSettings {
    /// `history` ([`HistoryAssessor`]), `http` (`HttpAssessor`, feature
    /// `http-hooks`), or `None` for no review.
    pub assessor: Option<String>,
    /// The `http` assessor's URL.
    pub url: Option<String>,
    /// The `http` assessor's bearer token.
    pub token: Option<Secret>,
    /// How long a submit waits for the assessor (the broker's
    /// [`risk_timeout`](crate::BrokerBuilder::risk_timeout), and the HTTP
    /// call's); `None` keeps the defaults.
    pub timeout: Option<Duration>,
}

impl fmt::Debug for RiskSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RiskSettings")
            .field("assessor", &self.assessor)
            .field("url", &self.url)
            .field("token", &self.token)
            .field("timeout", &self.timeout)
            .finish()
    }
}

fn setting(field: &str, message: impl Into<String>) -> Error {
    Error::Config(ConfigError::InvalidField {
        entitlement: "risk".into(),
        field: field.into(),
        message: message.into(),
    })
}

impl RiskSettings {
    /// The assessor these settings name, if any. A setting that does not
    /// belong to the named assessor (a URL for `history`, a URL without
    /// `http`) is an error rather than silently ignored.
    pub fn build(&self) -> Result<Option<Arc<dyn RiskAssessor>>> {
        let extra = self.url.is_some() || self.token.is_some();
        match self.assessor.as_deref().map(str::trim) {
            None | Some("") if extra => Err(setting(
                "assessor",
                "a URL or token is set but no assessor: set the assessor to `http`",
            )),
            None | Some("") => Ok(None),
            Some("history") if extra => Err(setting(
                "url",
                "the `history` assessor takes no URL or token",
            )),
            Some("history") => Ok(Some(Arc::new(HistoryAssessor::new()))),
            Some("http") => self.http(),
            Some(other) => Err(setting(
                "assessor",
                format!("unknown assessor `{other}`: use `history` or `http`"),
            )),
        }
    }

    /// With the timeout applied to `builder` too.
    pub fn apply(&self, builder: crate::BrokerBuilder) -> Result<crate::BrokerBuilder> {
        let Some(assessor) = self.build()? else {
            return Ok(builder);
        };
        let builder = builder.risk_assessor(assessor);
        Ok(match self.timeout {
            Some(t) => builder.risk_timeout(t),
            None => builder,
        })
    }

    #[cfg(feature = "http-hooks")]
    fn http(&self) -> Result<Option<Arc<dyn RiskAssessor>>> {
        let url = self
            .url
            .as_deref()
            .ok_or_else(|| setting("url", "the `http` assessor needs a URL"))?;
        let mut a = HttpAssessor::new(url)?;
        if let Some(t) = self.timeout {
            a = a.timeout(t);
        }
        if let Some(token) = &self.token {
            a = a.bearer_token(token.clone());
        }
        Ok(Some(Arc::new(a)))
    }

    #[cfg(not(feature = "http-hooks"))]
    fn http(&self) -> Result<Option<Arc<dyn RiskAssessor>>> {
        Err(setting(
            "assessor",
            "the `http` assessor needs jit-core's `http-hooks` feature",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal(name: &str, weight: u8) -> RiskSignal {
        RiskSignal {
            name: name.into(),
            weight,
            reason: format!("{name} fired"),
        }
    }

    #[test]
    fn scores_sum_their_weights_and_cap_at_the_maximum() {
        let a = RiskAssessment::from_signals("t", vec![signal("a", 30), signal("b", 15)]);
        assert_eq!(a.score, Some(45));
        assert!(a.exceeds(44));
        assert!(!a.exceeds(45));
        assert_eq!(a.summary(), "risk 45/100 (a, b)");
        let many = RiskAssessment::from_signals("t", vec![signal("a", 90), signal("b", 90)]);
        assert_eq!(many.score, Some(MAX_SCORE));
        let none = RiskAssessment::from_signals("t", Vec::new());
        assert_eq!(none.score, Some(0));
        assert_eq!(none.summary(), "risk 0/100");
    }

    #[test]
    fn settings_build_the_named_assessor_and_refuse_stray_keys() {
        let names = |s: RiskSettings| s.build().map(|a| a.map(|a| a.name().to_string()));
        assert_eq!(names(RiskSettings::default()).ok(), Some(None));
        let history = RiskSettings {
            assessor: Some("history".into()),
            ..Default::default()
        };
        assert_eq!(names(history.clone()).ok(), Some(Some("history".into())));
        let refused = [
            RiskSettings {
                assessor: Some("model".into()),
                ..Default::default()
            },
            RiskSettings {
                url: Some("https://risk/score".into()),
                ..Default::default()
            },
            RiskSettings {
                token: Some(Secret::new("hunter2")),
                ..history.clone()
            },
            RiskSettings {
                assessor: Some("http".into()),
                ..Default::default()
            },
        ];
        for s in refused {
            let shown = format!("{s:?}");
            assert!(!shown.contains("hunter2"), "{shown}");
            let err = names(s).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.starts_with("invalid configuration"), "{shown}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn no_score_exceeds_every_threshold() {
        let a = RiskAssessment::unavailable("http", "timed out after 2s");
        for t in [0, 50, MAX_SCORE, u8::MAX] {
            assert!(a.exceeds(t), "{t}");
        }
        assert_eq!(a.summary(), "risk unknown: timed out after 2s");
        let json = serde_json::to_value(&a).unwrap_or_default();
        assert_eq!(
            json,
            serde_json::json!({"assessor": "http", "signals": [], "error": "timed out after 2s"})
        );
    }
}
