//! On-call: who is on call for a schedule at a given instant, so that an
//! auto-approve rule can say "the requester must be on call now".
//!
//! An [`OnCallSource`] answers, for one schedule and one instant, the set of
//! subject ids on call. The broker asks it at submit, before the policy
//! decides, about exactly the schedules the policy names for the
//! entitlement ([`Policy::on_call_schedules`](crate::Policy::on_call_schedules)),
//! at the broker clock's `now`. The schedules the requester is on call for
//! go to the policy in [`PolicyContext::on_call`](crate::PolicyContext::on_call),
//! and the whole check ([`OnCallCheck`]: which schedules were asked, which
//! hold, which could not be answered and why) goes into the details of the
//! audit record of the decision and the request's record
//! ([`Decision::on_call`](crate::Decision::on_call)), where approvers read it.
//!
//! The catalogue uses it with `[entitlements.auto_approve] on_call =
//! ["payments-primary"]`: the requester must be on call for at least one of
//! these schedules now, besides every other condition.
//!
//! Built in:
//! - [`Rota`]: a rota file (TOML) with weekly hand-overs and dated
//!   overrides in named IANA time zones (see [`rota`] for the format);
//!   [`RotaFile`] reads the file again when it changes (a bad edit keeps
//!   the last good version), which is what the hosts use;
//! - `HttpOnCall` (feature `http-hooks`): asks an external service
//!   (`GET {base}/oncalls?schedule=S&at=T`, see `http`'s docs).
//!
//! # Contract
//!
//! - **Read-only.** A source reads a rota; it changes nothing and never
//!   pages anyone.
//! - **Not knowing is not on call.** An error, an unknown schedule, a
//!   timeout ([`BrokerBuilder::on_call_timeout`](crate::BrokerBuilder::on_call_timeout))
//!   or an answer about another schedule counts as "not on call" for that
//!   schedule: an on-call rule can only fail closed, to human review (or a
//!   deny where the entitlement has no human approval), never open.
//! - **Exact ids.** The answer holds subject ids exactly as the identity
//!   provider spells them, and the broker compares the requester's exact
//!   id with them (design rule 1): no alias, e-mail address, case variant
//!   or other folded form ever puts anyone on call.
//! - **Instants, not wall clocks.** The source is asked about an instant
//!   (UTC); time zones, hand-overs and daylight-saving changes are the
//!   source's business, and `at` comes from the broker's clock so tests
//!   can move it.
//! - The answer is written to the audit log: it must not carry secrets.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::credentials::Secret;
use crate::error::{ConfigError, Error, Result};

#[cfg(feature = "http-hooks")]
pub mod http;
pub mod reload;
pub mod rota;

#[cfg(feature = "http-hooks")]
pub use http::HttpOnCall;
pub use reload::RotaFile;
pub use rota::Rota;

/// Who is on call. Object safe: use it as `Arc<dyn OnCallSource>`; see the
/// [module's contract](self).
#[async_trait]
pub trait OnCallSource: Send + Sync + fmt::Debug {
    /// A short name, recorded with every check (`rota`, `http`).
    fn name(&self) -> &str;

    /// The exact subject ids on call for `schedule` at `at` (possibly
    /// none). `Err` for a schedule the source does not know or an answer
    /// it could not get: the broker counts it as not on call.
    async fn on_call(&self, schedule: &str, at: DateTime<Utc>) -> Result<BTreeSet<String>>;

    /// The schedules this source knows, if it can tell: the broker then
    /// refuses to start when the policy names a schedule outside them (a
    /// typo that would otherwise send every request to a human). `None`
    /// (the default): it cannot tell, and every schedule is asked.
    fn schedules(&self) -> Option<BTreeSet<String>> {
        None
    }
}

/// What the broker asked and learnt at one submit: recorded in the
/// decision's audit record, and the source of
/// [`PolicyContext::on_call`](crate::PolicyContext::on_call).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnCallCheck {
    /// Which source answered; `None` when the broker has none.
    pub source: Option<String>,
    /// The instant asked about.
    pub at: DateTime<Utc>,
    /// The schedules asked about, as the policy named them.
    pub asked: Vec<String>,
    /// Those the requester is on call for.
    pub on_call: BTreeSet<String>,
    /// Those that could not be answered, with why (counted as not on call).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unanswered: BTreeMap<String, String>,
}

impl OnCallCheck {
    /// Asks `source` (if any) about each of `schedules` at `at` for the
    /// subject `subject`, giving up on the ones not answered within
    /// `timeout` in all. Never fails: what is not answered is recorded in
    /// [`OnCallCheck::unanswered`] and counts as not on call.
    pub async fn run(
        source: Option<&dyn OnCallSource>,
        schedules: Vec<String>,
        subject: &str,
        at: DateTime<Utc>,
        timeout: Duration,
    ) -> Self {
        let mut check = Self {
            source: source.map(|s| s.name().to_string()),
            at,
            asked: Vec::new(),
            on_call: BTreeSet::new(),
            unanswered: BTreeMap::new(),
        };
        let Some(source) = source else {
            for s in schedules {
                check
                    .unanswered
                    .insert(s.clone(), "the broker has no on-call source".into());
                check.asked.push(s);
            }
            return check;
        };
        // One deadline for all schedules: a submit waits at most `timeout`.
        let deadline = tokio::time::Instant::now() + timeout;
        for s in schedules {
            if check.asked.contains(&s) {
                continue;
            }
            match tokio::time::timeout_at(deadline, source.on_call(&s, at)).await {
                Ok(Ok(ids)) => {
                    if ids.contains(subject) {
                        check.on_call.insert(s.clone());
                    }
                }
                Ok(Err(e)) => {
                    check.unanswered.insert(s.clone(), e.to_string());
                }
                Err(_) => {
                    check.unanswered.insert(
                        s.clone(),
                        format!("no answer within {} ms", timeout.as_millis()),
                    );
                }
            }
            check.asked.push(s);
        }
        if !check.unanswered.is_empty() {
            tracing::warn!(source = source.name(), unanswered = ?check.unanswered, "on-call source did not answer; counted as not on call");
        }
        check
    }
}

/// An on-call source as a host's configuration names it: the one place
/// the vending server (`[on_call]`) and the Lambda function
/// (`JIT_ONCALL_*`) turn settings into a source. Exactly one of
/// `rota_file` and `url`.
#[derive(Clone, Default)]
pub struct OnCallSettings {
    /// A rota file ([`RotaFile`]), read and validated when the settings
    /// are applied, and read again when it changes.
    pub rota_file: Option<PathBuf>,
    /// How often the rota file is looked at for changes; `None` keeps
    /// [`reload::DEFAULT_CHECK_EVERY`] (10 s).
    pub rota_check_every: Option<Duration>,
    /// An on-call service's base URL (`HttpOnCall`, feature `http-hooks`).
    pub url: Option<String>,
    /// The service's bearer token.
    pub token: Option<Secret>,
    /// How long a submit waits for the source (the broker's
    /// [`on_call_timeout`](crate::BrokerBuilder::on_call_timeout) and the
    /// HTTP call's); `None` keeps the defaults.
    pub timeout: Option<Duration>,
    /// How long the service's answers are cached (at most 256 schedules);
    /// `None` keeps the default of 30 s, zero turns the cache off.
    pub cache_ttl: Option<Duration>,
}

impl fmt::Debug for OnCallSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnCallSettings")
            .field("rota_file", &self.rota_file)
            .field("rota_check_every", &self.rota_check_every)
            .field("url", &self.url)
            .field("token", &self.token)
            .field("timeout", &self.timeout)
            .field("cache_ttl", &self.cache_ttl)
            .finish()
    }
}

fn setting(field: &str, message: impl Into<String>) -> Error {
    Error::Config(ConfigError::InvalidField {
        entitlement: "on_call".into(),
        field: field.into(),
        message: message.into(),
    })
}

impl OnCallSettings {
    /// The source these settings name, if any. Both a file and a URL, or
    /// a token or cache setting without a URL, is an error rather than
    /// silently ignored; a rota file is read and validated here.
    pub fn build(&self) -> Result<Option<Arc<dyn OnCallSource>>> {
        match (&self.rota_file, &self.url) {
            (Some(_), Some(_)) => Err(setting("url", "set either a rota file or a URL, not both")),
            (Some(path), None) => {
                if self.token.is_some() || self.cache_ttl.is_some() {
                    return Err(setting(
                        "token",
                        "a rota file takes no token or cache setting: they belong to a URL",
                    ));
                }
                let rota = RotaFile::open(path)?;
                Ok(Some(Arc::new(match self.rota_check_every {
                    Some(every) => rota.check_every(every),
                    None => rota,
                })))
            }
            (None, _) if self.rota_check_every.is_some() => Err(setting(
                "rota_check_every",
                "a rota check interval is set but no rota file: it belongs to a rota file",
            )),
            (None, Some(url)) => self.http(url),
            (None, None) if self.token.is_some() || self.cache_ttl.is_some() => Err(setting(
                "url",
                "a token or cache setting is set but no URL: set the on-call service's URL",
            )),
            (None, None) => Ok(None),
        }
    }

    /// Adds the source to `builder`, with the timeout.
    pub fn apply(&self, builder: crate::BrokerBuilder) -> Result<crate::BrokerBuilder> {
        let Some(source) = self.build()? else {
            return Ok(builder);
        };
        let builder = builder.on_call_source(source);
        Ok(match self.timeout {
            Some(t) => builder.on_call_timeout(t),
            None => builder,
        })
    }

    #[cfg(feature = "http-hooks")]
    fn http(&self, url: &str) -> Result<Option<Arc<dyn OnCallSource>>> {
        let mut s = HttpOnCall::new(url)?;
        if let Some(t) = self.timeout {
            s = s.timeout(t);
        }
        if let Some(ttl) = self.cache_ttl {
            s = s.cache(ttl, http::DEFAULT_CACHE_CAPACITY);
        }
        if let Some(token) = &self.token {
            s = s.bearer_token(token.clone());
        }
        Ok(Some(Arc::new(s)))
    }

    #[cfg(not(feature = "http-hooks"))]
    fn http(&self, _url: &str) -> Result<Option<Arc<dyn OnCallSource>>> {
        Err(setting(
            "url",
            "an on-call service URL needs jit-core's `http-hooks` feature",
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[derive(Debug)]
    struct Fixed;

    #[async_trait]
    impl OnCallSource for Fixed {
        fn name(&self) -> &str {
            "fixed"
        }
        async fn on_call(&self, schedule: &str, _at: DateTime<Utc>) -> Result<BTreeSet<String>> {
            match schedule {
                "primary" => Ok(["alice".to_string(), "Bob".to_string()].into()),
                "secondary" => Ok(BTreeSet::new()),
                s if s.starts_with("slow") => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok(["alice".to_string()].into())
                }
                other => Err(Error::Unavailable {
                    what: "fixed".into(),
                    message: format!("no schedule `{other}`"),
                }),
            }
        }
    }

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn exact_ids_only_and_failures_are_not_on_call() {
        let c = OnCallCheck::run(
            Some(&Fixed),
            names(&["primary", "secondary", "nope", "primary"]),
            "alice",
            at(),
            Duration::from_secs(1),
        )
        .await;
        assert_eq!(c.source.as_deref(), Some("fixed"));
        assert_eq!(c.asked, names(&["primary", "secondary", "nope"]));
        assert_eq!(c.on_call, ["primary".to_string()].into());
        assert!(c.unanswered["nope"].contains("no schedule `nope`"));
        // `bob` is not `Bob`: folding never puts anyone on call.
        let c = OnCallCheck::run(
            Some(&Fixed),
            names(&["primary"]),
            "bob",
            at(),
            Duration::from_secs(1),
        )
        .await;
        assert!(c.on_call.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_source_is_not_on_call_and_the_deadline_is_shared() {
        let start = tokio::time::Instant::now();
        let c = OnCallCheck::run(
            Some(&Fixed),
            names(&["slow-a", "slow-b", "primary"]),
            "alice",
            at(),
            Duration::from_millis(50),
        )
        .await;
        // Virtual time: both slow schedules together used up one deadline.
        assert_eq!(start.elapsed(), Duration::from_millis(50));
        assert!(
            c.unanswered["slow-a"].contains("no answer within 50 ms"),
            "{c:?}"
        );
        assert!(c.unanswered.contains_key("slow-b"));
        // An answer ready at once is still taken after the deadline.
        assert_eq!(c.on_call, ["primary".to_string()].into());
    }

    #[tokio::test]
    async fn without_a_source_every_schedule_is_unanswered() {
        let c = OnCallCheck::run(None, names(&["primary"]), "alice", at(), Duration::ZERO).await;
        assert_eq!(c.source, None);
        assert!(c.on_call.is_empty());
        assert_eq!(c.unanswered["primary"], "the broker has no on-call source");
    }

    #[test]
    fn settings_refuse_mixed_or_stray_keys() {
        assert!(OnCallSettings::default().build().unwrap().is_none());
        let both = OnCallSettings {
            rota_file: Some("rota.toml".into()),
            url: Some("https://oncall".into()),
            ..Default::default()
        };
        assert!(both.build().unwrap_err().to_string().contains("not both"));
        let stray = OnCallSettings {
            token: Some(Secret::new("t0ken-s3cret")),
            ..Default::default()
        };
        let err = stray.build().unwrap_err().to_string();
        assert!(err.contains("no URL"), "{err}");
        assert!(!format!("{stray:?}").contains("s3cret"));
        let missing = OnCallSettings {
            rota_file: Some("/nonexistent/rota.toml".into()),
            ..Default::default()
        };
        let err = missing.build().unwrap_err().to_string();
        assert!(err.contains("/nonexistent/rota.toml"), "{err}");
        let interval_without_file = OnCallSettings {
            url: Some("https://oncall".into()),
            rota_check_every: Some(Duration::from_secs(1)),
            ..Default::default()
        };
        let err = interval_without_file.build().unwrap_err().to_string();
        assert!(err.contains("no rota file"), "{err}");
    }
}
