//! Verified tickets: is the ticket a request names real work?
//!
//! A [`TicketVerifier`] looks a ticket up in the issue tracker and answers a
//! [`TicketVerdict`]: verified or not, why, and the ticket's summary. The
//! broker asks it once per submit that names a ticket, before the policy
//! decides, and hands the verdict to the policy in
//! [`PolicyContext::ticket`](crate::policy::PolicyContext::ticket); the
//! verdict and the summary go into the details of the audit record of the
//! decision and the request's record
//! ([`Decision::ticket`](crate::Decision::ticket)), where approvers read it.
//!
//! An entitlement of the catalogue requires one with
//! `require_verified_ticket = true`: a request without a ticket is invalid
//! (as with `require_ticket`), and one whose ticket is not verified is
//! denied with the verdict's reason.
//!
//! Built in: `JiraVerifier` (feature `http-hooks`), for Jira-style issue
//! lookups, with a timeout and a bounded cache.
//!
//! # Contract
//!
//! - **No answer is no verification.** When a verifier fails, does not
//!   answer within the broker's ticket timeout
//!   ([`BrokerBuilder::ticket_timeout`](crate::BrokerBuilder::ticket_timeout))
//!   or the tracker is unreachable, the broker records
//!   [`TicketVerdict::unavailable`] (not verified): a request that requires
//!   a verified ticket never goes through on it.
//! - A verdict is about the ticket and the requester only; it never makes
//!   anyone eligible or an approver.
//! - Summaries are shown to approvers and written to the audit log: a
//!   verifier must not put secrets in them.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::credentials::Secret;
use crate::error::{ConfigError, Error, Result};
use crate::types::Principal;

#[cfg(feature = "http-hooks")]
pub mod jira;

#[cfg(feature = "http-hooks")]
pub use jira::JiraVerifier;

/// A verifier's answer about one ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketVerdict {
    /// The ticket as the request named it.
    pub ticket: String,
    /// Which verifier answered.
    pub verifier: String,
    /// Whether the ticket passed every check.
    pub verified: bool,
    /// Why, for people (`status "In Progress" is allowed`, `ticket does not exist`).
    pub reason: String,
    /// The ticket's summary (title), when found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// The ticket's status, when found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

impl TicketVerdict {
    /// Not verified because no answer could be had (a tracker error, a timeout).
    pub fn unavailable(ticket: &str, verifier: &str, error: impl fmt::Display) -> Self {
        Self {
            ticket: ticket.to_string(),
            verifier: verifier.to_string(),
            verified: false,
            reason: format!("ticket `{ticket}` could not be verified: {error}"),
            summary: None,
            status: None,
        }
    }
}

/// Verifies tickets. Object safe: use it as `Arc<dyn TicketVerifier>`; see
/// the [module's contract](self).
#[async_trait]
pub trait TicketVerifier: Send + Sync + fmt::Debug {
    /// A short name, recorded with every verdict.
    fn name(&self) -> &str;

    /// Looks `ticket` up for `requester`. A ticket that does not exist or
    /// fails a check is `Ok` with `verified: false`; `Err` is for a tracker
    /// that could not answer (it becomes [`TicketVerdict::unavailable`]).
    async fn verify(&self, ticket: &str, requester: &Principal) -> Result<TicketVerdict>;
}

/// A tracker as a host's configuration names it: the one place the vending
/// server (`[tickets]`) and the Lambda function (`JIT_TICKETS_*`) turn
/// settings into a verifier (`JiraVerifier`, feature `http-hooks`).
#[derive(Clone, Default)]
pub struct TrackerSettings {
    /// The tracker's base URL; `None` for no verification.
    pub url: Option<String>,
    /// Statuses a verified ticket may be in (at least one).
    pub statuses: Vec<String>,
    /// Projects a verified ticket must be in (any when `None`).
    pub projects: Option<Vec<String>>,
    /// Whether the ticket must be assigned to the requester.
    pub require_assignee: bool,
    /// The tracker's bearer token.
    pub token: Option<Secret>,
    /// How long a submit waits for the tracker (the verifier's and the
    /// broker's timeout); `None` keeps the defaults.
    pub timeout: Option<Duration>,
    /// How long answers are cached (at most 1,024 tickets); `None` keeps
    /// the default of 60 s, zero turns the cache off.
    pub cache_ttl: Option<Duration>,
}

impl fmt::Debug for TrackerSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrackerSettings")
            .field("url", &self.url)
            .field("statuses", &self.statuses)
            .field("projects", &self.projects)
            .field("require_assignee", &self.require_assignee)
            .field("token", &self.token)
            .field("timeout", &self.timeout)
            .field("cache_ttl", &self.cache_ttl)
            .finish()
    }
}

impl TrackerSettings {
    /// Adds the verifier these settings name to `builder`; without a URL,
    /// other settings are an error rather than silently ignored.
    pub fn apply(&self, builder: crate::BrokerBuilder) -> Result<crate::BrokerBuilder> {
        let Some(url) = &self.url else {
            if self.token.is_some() || !self.statuses.is_empty() || self.projects.is_some() {
                return Err(Error::Config(ConfigError::InvalidField {
                    entitlement: "tickets".into(),
                    field: "url".into(),
                    message: "set the tracker's URL to verify tickets".into(),
                }));
            }
            return Ok(builder);
        };
        self.build(url, builder)
    }

    #[cfg(feature = "http-hooks")]
    fn build(&self, url: &str, builder: crate::BrokerBuilder) -> Result<crate::BrokerBuilder> {
        let mut v = JiraVerifier::new(url, self.statuses.iter().cloned())?
            .require_assignee(self.require_assignee);
        if let Some(t) = self.timeout {
            v = v.timeout(t);
        }
        if let Some(ttl) = self.cache_ttl {
            v = v.cache(ttl, 1024);
        }
        if let Some(p) = &self.projects {
            v = v.projects(p.iter().cloned());
        }
        if let Some(t) = &self.token {
            v = v.bearer_token(t.clone());
        }
        let builder = builder.ticket_verifier(std::sync::Arc::new(v));
        Ok(match self.timeout {
            Some(t) => builder.ticket_timeout(t),
            None => builder,
        })
    }

    #[cfg(not(feature = "http-hooks"))]
    fn build(&self, _url: &str, _builder: crate::BrokerBuilder) -> Result<crate::BrokerBuilder> {
        Err(Error::Config(ConfigError::InvalidField {
            entitlement: "tickets".into(),
            field: "url".into(),
            message: "verifying tickets needs jit-core's `http-hooks` feature".into(),
        }))
    }
}
