//! Jira-style issue lookups (feature `http-hooks`).
//!
//! `GET {base}/rest/api/2/issue/{key}?fields=summary,status,assignee,project`
//! (Jira's "Get issue",
//! <https://developer.atlassian.com/cloud/jira/platform/rest/v2/api-group-issues/#api-rest-api-2-issue-issueidorkey-get>;
//! Jira Server/Data Center answer the same path and shape). The answer's
//! `fields.summary`, `fields.status.name`, `fields.project.key` and
//! `fields.assignee` (`accountId` on Cloud, `name`/`key` on Server) are
//! read; everything else is ignored.
//!
//! A ticket is verified when it exists, its status is one of the allowed
//! ones (compared without case), and, where configured, its project is an
//! allowed one and it is assigned to the requester: the assignee's
//! `accountId`, `name` or `key` equals the requester's exact subject id
//! (aliases and e-mail addresses never match: they may only take away).
//!
//! - `404` is "does not exist" (Jira also answers 404 when the broker's
//!   account may not see the issue): not verified.
//! - Any other failure (401/403, 5xx, a body that is not an issue, no
//!   answer within the timeout, default 2 s) is an error: the broker records
//!   it as unavailable, and nothing that requires verification goes through.
//! - Answers (found or not found, never errors) are cached per ticket key
//!   for [`JiraVerifier::cache`] (default 60 s, at most 1,024 keys, the
//!   oldest evicted first); the checks run on every call, so one cached
//!   issue answers each requester correctly.
//! - A ticket that is not an issue key (`ABC-123`) is not verified and
//!   never sent to the tracker.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Deserialize;

use super::{TicketVerdict, TicketVerifier};
use crate::credentials::Secret;
use crate::error::{ConfigError, Error, Result};
use crate::types::Principal;

const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// What the tracker said about one key (cached).
#[derive(Debug, Clone)]
enum Lookup {
    Missing,
    Found(Issue),
}

#[derive(Debug, Clone, Deserialize)]
struct Issue {
    fields: Fields,
}

#[derive(Debug, Clone, Deserialize)]
struct Fields {
    #[serde(default)]
    summary: Option<String>,
    status: Named,
    #[serde(default)]
    project: Option<ProjectRef>,
    #[serde(default)]
    assignee: Option<User>,
}

#[derive(Debug, Clone, Deserialize)]
struct Named {
    name: String,
}

#[derive(Debug, Clone, Deserialize)]
struct ProjectRef {
    key: String,
}

#[derive(Debug, Clone, Deserialize)]
struct User {
    #[serde(default, rename = "accountId")]
    account_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    key: Option<String>,
}

impl User {
    fn is(&self, p: &Principal) -> bool {
        let id = p.id.as_str();
        [&self.account_id, &self.name, &self.key]
            .into_iter()
            .any(|v| v.as_deref() == Some(id))
    }
}

/// Verifies tickets against a Jira-style tracker (see the [module docs](self)).
pub struct JiraVerifier {
    base: String,
    client: reqwest::Client,
    timeout: Duration,
    token: Option<Secret>,
    statuses: BTreeSet<String>,
    projects: Option<BTreeSet<String>>,
    require_assignee: bool,
    cache_ttl: Duration,
    cache_capacity: usize,
    cache: Mutex<HashMap<String, (Instant, Lookup)>>,
}

impl fmt::Debug for JiraVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JiraVerifier")
            .field("base", &self.base)
            .field("timeout", &self.timeout)
            .field("token", &self.token)
            .field("statuses", &self.statuses)
            .field("projects", &self.projects)
            .field("require_assignee", &self.require_assignee)
            .finish_non_exhaustive()
    }
}

fn invalid(field: &str, message: String) -> Error {
    Error::Config(ConfigError::InvalidField {
        entitlement: "tickets".into(),
        field: field.into(),
        message,
    })
}

/// `ABC-123`: a project key (a letter, then letters, digits or `_`) and a number.
fn is_issue_key(t: &str) -> bool {
    let Some((project, number)) = t.split_once('-') else {
        return false;
    };
    let mut p = project.chars();
    p.next().is_some_and(|c| c.is_ascii_alphabetic())
        && p.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !number.is_empty()
        && number.len() <= 18
        && number.bytes().all(|b| b.is_ascii_digit())
        && t.len() <= 64
}

impl JiraVerifier {
    /// A verifier for the tracker at `base` (`https://example.atlassian.net`)
    /// that accepts tickets in one of `statuses`.
    pub fn new(base: &str, statuses: impl IntoIterator<Item = impl Into<String>>) -> Result<Self> {
        Self::with_client(base, statuses, reqwest::Client::new())
    }

    /// Like [`JiraVerifier::new`] with this client (a test CA, a proxy).
    pub fn with_client(
        base: &str,
        statuses: impl IntoIterator<Item = impl Into<String>>,
        client: reqwest::Client,
    ) -> Result<Self> {
        let url = reqwest::Url::parse(base)
            .map_err(|e| invalid("url", format!("`{}`: {e}", crate::store::redact_url(base))))?;
        if !matches!(url.scheme(), "http" | "https") || url.password().is_some() {
            return Err(invalid(
                "url",
                format!(
                    "`{}`: use an http or https URL without credentials",
                    crate::store::redact_url(base)
                ),
            ));
        }
        let statuses: BTreeSet<String> = statuses
            .into_iter()
            .map(|s| s.into().trim().to_lowercase())
            .filter(|s| !s.is_empty())
            .collect();
        if statuses.is_empty() {
            return Err(invalid(
                "statuses",
                "name at least one status a ticket may be in".into(),
            ));
        }
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            client,
            timeout: Duration::from_secs(2),
            token: None,
            statuses,
            projects: None,
            require_assignee: false,
            cache_ttl: Duration::from_secs(60),
            cache_capacity: 1024,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// How long to wait for the tracker (default 2 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends `Authorization: Bearer <token>` (a Jira personal access token).
    pub fn bearer_token(mut self, token: Secret) -> Self {
        self.token = Some(token);
        self
    }

    /// Accepts only tickets in these projects (keys, exact).
    pub fn projects(mut self, projects: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.projects = Some(projects.into_iter().map(Into::into).collect());
        self
    }

    /// Accepts only tickets assigned to the requester.
    pub fn require_assignee(mut self, yes: bool) -> Self {
        self.require_assignee = yes;
        self
    }

    /// Caches answers this long, for at most `capacity` keys (zero: no cache).
    pub fn cache(mut self, ttl: Duration, capacity: usize) -> Self {
        self.cache_ttl = ttl;
        self.cache_capacity = capacity;
        self
    }

    fn unavailable(&self, message: impl Into<String>) -> Error {
        Error::Unavailable {
            what: format!("ticket tracker `{}`", self.base),
            message: message.into(),
        }
    }

    fn cached(&self, key: &str) -> Option<Lookup> {
        let cache = self.cache.lock().ok()?;
        cache
            .get(key)
            .filter(|(at, _)| at.elapsed() < self.cache_ttl)
            .map(|(_, l)| l.clone())
    }

    fn remember(&self, key: &str, lookup: &Lookup) {
        if self.cache_capacity == 0 || self.cache_ttl.is_zero() {
            return;
        }
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        let ttl = self.cache_ttl;
        cache.retain(|_, (at, _)| at.elapsed() < ttl);
        while cache.len() >= self.cache_capacity {
            let oldest = cache
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => cache.remove(&k),
                None => break,
            };
        }
        cache.insert(key.to_string(), (Instant::now(), lookup.clone()));
    }

    async fn fetch(&self, key: &str) -> Result<Lookup> {
        let url = format!(
            "{}/rest/api/2/issue/{key}?fields=summary,status,assignee,project",
            self.base
        );
        let mut req = self.client.get(&url).header("accept", "application/json");
        if let Some(t) = &self.token {
            req = req.bearer_auth(t.expose());
        }
        let mut resp = req
            .send()
            .await
            .map_err(|e| self.unavailable(e.without_url().to_string()))?;
        let status = resp.status().as_u16();
        if status == 404 {
            return Ok(Lookup::Missing);
        }
        if !(200..300).contains(&status) {
            return Err(self.unavailable(format!("status {status}")));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| self.unavailable(e.without_url().to_string()))?
        {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(
                    self.unavailable(format!("answer larger than {MAX_ANSWER_BYTES} bytes"))
                );
            }
            body.extend_from_slice(&chunk);
        }
        let issue: Issue = serde_json::from_slice(&body)
            .map_err(|e| self.unavailable(format!("not an issue: {e}")))?;
        Ok(Lookup::Found(issue))
    }

    fn judge(&self, ticket: &str, lookup: &Lookup, requester: &Principal) -> TicketVerdict {
        let mut v = TicketVerdict {
            ticket: ticket.to_string(),
            verifier: self.name().to_string(),
            verified: false,
            reason: String::new(),
            summary: None,
            status: None,
        };
        let Lookup::Found(issue) = lookup else {
            v.reason = format!("ticket `{ticket}` does not exist");
            return v;
        };
        let f = &issue.fields;
        v.summary = f.summary.clone();
        v.status = Some(f.status.name.clone());
        let shown = |set: &BTreeSet<String>| {
            set.iter()
                .map(|s| format!("`{s}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        v.reason = if !self.statuses.contains(&f.status.name.trim().to_lowercase()) {
            format!(
                "ticket `{ticket}` is `{}`, not one of {}",
                f.status.name,
                shown(&self.statuses)
            )
        } else if let Some(projects) = self
            .projects
            .as_ref()
            .filter(|p| f.project.as_ref().is_none_or(|x| !p.contains(&x.key)))
        {
            format!(
                "ticket `{ticket}` is not in one of the projects {}",
                shown(projects)
            )
        } else if self.require_assignee && !f.assignee.as_ref().is_some_and(|a| a.is(requester)) {
            format!("ticket `{ticket}` is not assigned to `{}`", requester.id)
        } else {
            v.verified = true;
            format!("ticket `{ticket}` is `{}`", f.status.name)
        };
        v
    }
}

#[async_trait]
impl TicketVerifier for JiraVerifier {
    fn name(&self) -> &str {
        "jira"
    }

    async fn verify(&self, ticket: &str, requester: &Principal) -> Result<TicketVerdict> {
        let key = ticket.trim();
        if !is_issue_key(key) {
            return Ok(TicketVerdict {
                ticket: ticket.to_string(),
                verifier: self.name().to_string(),
                verified: false,
                reason: "not an issue key such as `ABC-123`".into(),
                summary: None,
                status: None,
            });
        }
        // Keys are case-insensitive in Jira; one cache entry per key.
        let key = key.to_ascii_uppercase();
        let lookup = match self.cached(&key) {
            Some(l) => l,
            None => {
                let l = tokio::time::timeout(self.timeout, self.fetch(&key))
                    .await
                    .map_err(|_| {
                        self.unavailable(format!(
                            "no answer within {} ms",
                            self.timeout.as_millis()
                        ))
                    })??;
                self.remember(&key, &l);
                l
            }
        };
        Ok(self.judge(ticket, &lookup, requester))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_keys() {
        for ok in ["INC-1", "abc-123", "A_B2-9"] {
            assert!(is_issue_key(ok), "{ok}");
        }
        for bad in [
            "INC",
            "INC-",
            "-1",
            "1NC-1",
            "INC-1/../../x",
            "INC-1?x=1",
            "INC-1a",
            "INC 1",
            "",
        ] {
            assert!(!is_issue_key(bad), "{bad}");
        }
    }
}
