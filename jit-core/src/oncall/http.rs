//! An on-call source behind HTTP (feature `http-hooks`): a paging service,
//! or a small adapter in front of one.
//!
//! # Protocol
//!
//! For each schedule the source sends
//!
//! ```text
//! GET {url}?schedule=payments-primary&at=2026-12-07T08:00:00Z
//! Accept: application/json
//! Authorization: Bearer <token>        (when configured)
//! ```
//!
//! (`{url}` as configured, for example `https://oncall.internal/oncalls`;
//! the two parameters are appended, URL-encoded) and expects `200` with
//!
//! ```json
//! {"schedule": "payments-primary", "on_call": ["alice", "bob"],
//!  "until": "2026-12-07T09:00:00Z"}
//! ```
//!
//! `on_call` lists the exact subject ids (as the identity provider spells
//! them) on call for the schedule at `at`, possibly none. `until` is
//! optional: the next hand-over, after which the answer is no longer used
//! from the cache. `schedule` must be the schedule asked about.
//!
//! Anything else is an error, which the broker counts as "not on call":
//! another status (`404` for a schedule the service does not know), a body
//! that is not that JSON (unknown fields included), an id that is not a
//! valid subject id, an answer about another schedule, a body over 64 KiB,
//! no answer within the timeout (default 2 s).
//!
//! Answers are cached per schedule for [`HttpOnCall::cache`] (default 30 s,
//! at most 256 schedules, the oldest evicted first), and only for instants
//! from the one asked about to before its `until` and the cache's time to
//! live: a hand-over is seen at most that late, and exactly on time when
//! the service gives `until`. Errors are never cached.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::OnCallSource;
use crate::credentials::Secret;
use crate::error::{ConfigError, Error, Result};
use crate::types::PrincipalId;

/// The largest answer read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// How many schedules the cache keeps by default.
pub const DEFAULT_CACHE_CAPACITY: usize = 256;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Answer {
    schedule: String,
    on_call: Vec<String>,
    #[serde(default)]
    until: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
struct Cached {
    fetched: Instant,
    asked_at: DateTime<Utc>,
    until: Option<DateTime<Utc>>,
    ids: BTreeSet<String>,
}

/// Asks an on-call service who is on call (see the [module docs](self)).
pub struct HttpOnCall {
    url: reqwest::Url,
    client: reqwest::Client,
    timeout: Duration,
    token: Option<Secret>,
    cache_ttl: Duration,
    cache_capacity: usize,
    cache: Mutex<HashMap<String, Cached>>,
}

impl fmt::Debug for HttpOnCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpOnCall")
            .field("url", &self.url.as_str())
            .field("timeout", &self.timeout)
            .field("token", &self.token)
            .field("cache_ttl", &self.cache_ttl)
            .finish_non_exhaustive()
    }
}

fn invalid(url: &str, message: &str) -> Error {
    Error::Config(ConfigError::InvalidField {
        entitlement: "on_call".into(),
        field: "url".into(),
        message: format!("`{}`: {message}", crate::store::redact_url(url)),
    })
}

impl HttpOnCall {
    /// Asks the endpoint at `url` (http or https) with a 2-second timeout.
    pub fn new(url: &str) -> Result<Self> {
        Self::with_client(url, reqwest::Client::new())
    }

    /// Uses this client (a test CA, a proxy); the timeout is still applied per call.
    pub fn with_client(url: &str, client: reqwest::Client) -> Result<Self> {
        let parsed = crate::risk::http::hook_url(url).map_err(|m| invalid(url, &m))?;
        Ok(Self {
            url: parsed,
            client,
            timeout: Duration::from_secs(2),
            token: None,
            cache_ttl: Duration::from_secs(30),
            cache_capacity: DEFAULT_CACHE_CAPACITY,
            cache: Mutex::new(HashMap::new()),
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

    /// Caches answers this long, for at most `capacity` schedules (zero: no cache).
    pub fn cache(mut self, ttl: Duration, capacity: usize) -> Self {
        self.cache_ttl = ttl;
        self.cache_capacity = capacity;
        self
    }

    fn unavailable(&self, message: impl Into<String>) -> Error {
        Error::Unavailable {
            what: format!("on-call service `{}`", self.url),
            message: message.into(),
        }
    }

    fn cached(&self, schedule: &str, at: DateTime<Utc>) -> Option<BTreeSet<String>> {
        let cache = self.cache.lock().ok()?;
        let c = cache.get(schedule)?;
        let ttl = chrono::TimeDelta::from_std(self.cache_ttl).ok()?;
        let fresh = c.fetched.elapsed() < self.cache_ttl
            && c.asked_at <= at
            && at - c.asked_at < ttl
            && c.until.is_none_or(|u| at < u);
        fresh.then(|| c.ids.clone())
    }

    fn remember(&self, schedule: &str, entry: Cached) {
        if self.cache_capacity == 0 || self.cache_ttl.is_zero() {
            return;
        }
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        let ttl = self.cache_ttl;
        cache.retain(|_, c| c.fetched.elapsed() < ttl);
        while cache.len() >= self.cache_capacity && !cache.contains_key(schedule) {
            let oldest = cache
                .iter()
                .min_by_key(|(_, c)| c.fetched)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => cache.remove(&k),
                None => break,
            };
        }
        cache.insert(schedule.to_string(), entry);
    }

    async fn fetch(&self, schedule: &str, at: DateTime<Utc>) -> Result<Vec<u8>> {
        let mut url = self.url.clone();
        url.query_pairs_mut()
            .append_pair("schedule", schedule)
            .append_pair(
                "at",
                &at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            );
        let mut req = self.client.get(url).header("accept", "application/json");
        if let Some(t) = &self.token {
            req = req.bearer_auth(t.expose());
        }
        let mut resp = req
            .send()
            .await
            // Without the URL: reqwest's message names it, and we name it in `what`.
            .map_err(|e| self.unavailable(e.without_url().to_string()))?;
        let status = resp.status().as_u16();
        if status == 404 {
            return Err(self.unavailable(format!("no schedule `{schedule}` (status 404)")));
        }
        if !(200..300).contains(&status) {
            return Err(self.unavailable(format!("status {status}")));
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

    fn parse(
        &self,
        schedule: &str,
        body: &[u8],
    ) -> Result<(BTreeSet<String>, Option<DateTime<Utc>>)> {
        let value: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| self.unavailable(format!("malformed answer: {e}")))?;
        // Serde would also read a struct from an array: only an object is an answer.
        if !value.is_object() {
            return Err(self.unavailable("malformed answer: not a JSON object"));
        }
        let answer = Answer::deserialize(value)
            .map_err(|e| self.unavailable(format!("malformed answer: {e}")))?;
        if answer.schedule != schedule {
            return Err(self.unavailable(format!(
                "asked about `{schedule}`, answered about `{}`",
                answer.schedule
            )));
        }
        let ids = answer
            .on_call
            .into_iter()
            .map(|id| {
                PrincipalId::new(id)
                    .map(|p| p.as_str().to_string())
                    .map_err(|e| self.unavailable(format!("malformed answer: {e}")))
            })
            .collect::<Result<_>>()?;
        Ok((ids, answer.until))
    }
}

#[async_trait]
impl OnCallSource for HttpOnCall {
    fn name(&self) -> &str {
        "http"
    }

    async fn on_call(&self, schedule: &str, at: DateTime<Utc>) -> Result<BTreeSet<String>> {
        if let Some(ids) = self.cached(schedule, at) {
            return Ok(ids);
        }
        let body = tokio::time::timeout(self.timeout, self.fetch(schedule, at))
            .await
            .map_err(|_| {
                self.unavailable(format!("no answer within {} ms", self.timeout.as_millis()))
            })??;
        let (ids, until) = self.parse(schedule, &body)?;
        self.remember(
            schedule,
            Cached {
                fetched: Instant::now(),
                asked_at: at,
                until,
                ids: ids.clone(),
            },
        );
        Ok(ids)
    }
}
