//! Window checks against a provider's capabilities, before any remote call.
//!
//! Every provider refuses a window it cannot honour with the same typed
//! [`RequestError`]s and the same wording, whatever the cloud: a negative
//! or empty window, one longer than [`Capabilities::max_duration`], one that
//! has not started yet (when the provider cannot mint ahead of time), and
//! one with less than the cloud's minimum left once the time kept for the
//! call is taken off ([`WindowRules::minimum`]). The broker has
//! already clamped the window to the entitlement and policy (DESIGN rule 2);
//! this is the provider's own bound, checked where the call is made.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::{Capabilities, GrantSpec};
use crate::error::RequestError;
use crate::types::format_duration;

/// A window that passed [`WindowRules::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Window {
    /// The grant's start, as the broker asked.
    pub starts_at: DateTime<Utc>,
    /// The grant's end, as the broker asked.
    pub ends_at: DateTime<Utc>,
    /// Whole seconds from now to `ends_at`, less the call allowance, at
    /// most [`Capabilities::max_duration`]: the lifetime to ask a cloud for
    /// when it counts from the call (STS `DurationSeconds`, an Azure
    /// `AfterDuration`, a GCP token `lifetime`), so the access never
    /// outlives the window.
    pub remaining: Duration,
}

impl Window {
    /// The remaining lifetime as an ISO 8601 duration (`PT45M`, `PT1H0M5S`),
    /// the form Azure's `AfterDuration` expiration takes.
    pub fn remaining_iso8601(&self) -> String {
        iso8601(self.remaining)
    }
}

/// Formats whole seconds as an ISO 8601 duration of hours, minutes and
/// seconds (`PT8H`, `PT45M`, `PT1H30M15S`, `PT0S`).
pub fn iso8601(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    let mut out = String::from("PT");
    if h > 0 {
        out.push_str(&format!("{h}H"));
    }
    if m > 0 {
        out.push_str(&format!("{m}M"));
    }
    if s > 0 || (h == 0 && m == 0) {
        out.push_str(&format!("{s}S"));
    }
    out
}

/// The checks one provider applies to every window; see the [module docs](self).
///
/// ```
/// use std::time::Duration;
/// use chrono::TimeDelta;
/// use jit_core::provider::{window::WindowRules, Capabilities, GrantSpec};
/// use jit_core::RequestError;
///
/// fn check(spec: &GrantSpec) -> Result<Duration, RequestError> {
///     let caps = Capabilities::default().with_max_duration(Duration::from_secs(3600));
///     let now = spec.starts_at;
///     let window = WindowRules::new("aws", &caps)
///         .start_slack(Duration::from_secs(5))
///         .call_allowance(Duration::from_secs(10))
///         .check(spec, now)?;
///     Ok(window.remaining) // at most an hour, ending 10 s before the window does
/// }
/// ```
#[derive(Debug, Clone)]
pub struct WindowRules<'a> {
    provider: &'a str,
    caps: &'a Capabilities,
    start_slack: Option<Duration>,
    call_allowance: Duration,
    minimum: Option<Duration>,
    limit_note: String,
    minimum_note: String,
}

impl<'a> WindowRules<'a> {
    /// Rules from the provider's name (for messages) and capabilities. By
    /// default a window may start in the future (the provider can mint
    /// ahead, like a token with `nbf`) and no call allowance is kept.
    pub fn new(provider: &'a str, caps: &'a Capabilities) -> Self {
        Self {
            provider,
            caps,
            start_slack: None,
            call_allowance: Duration::ZERO,
            minimum: None,
            limit_note: String::new(),
            minimum_note: String::new(),
        }
    }

    /// Refuse windows starting more than `slack` after now: the cloud's
    /// access starts at the call (STS), so minting early would lengthen it.
    pub fn start_slack(mut self, slack: Duration) -> Self {
        self.start_slack = Some(slack);
        self
    }

    /// Time kept between now and the window's end for the call itself, so
    /// an access counted from the cloud's clock cannot outlive the window.
    ///
    /// A provider using one advertises its cloud's minimum plus the
    /// allowance (and any planning margin) as [`Capabilities::min_duration`],
    /// so the broker and the conformance suite never ask for a window the
    /// check refuses; what is left *after* the allowance is checked against
    /// [`minimum`](Self::minimum).
    pub fn call_allowance(mut self, allowance: Duration) -> Self {
        self.call_allowance = allowance;
        self
    }

    /// The shortest lifetime the cloud accepts, checked against what is
    /// left of the window once the call allowance is taken off. By default
    /// [`Capabilities::min_duration`] less the allowance (what a provider
    /// advertising "cloud minimum plus allowance" means); a provider whose
    /// advertised minimum also holds a planning margin names the cloud's
    /// own minimum here (jit-aws: STS's 15 minutes).
    pub fn minimum(mut self, minimum: Duration) -> Self {
        self.minimum = Some(minimum);
        self
    }

    /// Appended to the maximum in a too-long error (`" (role chaining: …)"`).
    pub fn limit_note(mut self, note: impl Into<String>) -> Self {
        self.limit_note = note.into();
        self
    }

    /// Appended to the minimum in a too-short error (`" (STS's minimum…)"`).
    pub fn minimum_note(mut self, note: impl Into<String>) -> Self {
        self.minimum_note = note.into();
        self
    }

    /// Checks `spec`'s window at `now`.
    pub fn check(&self, spec: &GrantSpec, now: DateTime<Utc>) -> Result<Window, RequestError> {
        let length = spec.ends_at - spec.starts_at;
        if length < TimeDelta::zero() {
            return Err(RequestError::NegativeDuration(format!(
                "{}s",
                length.num_seconds()
            )));
        }
        // Below one second, whole-second clouds (JWT `exp`, STS) see nothing.
        if length < TimeDelta::seconds(1) {
            return Err(RequestError::ZeroDuration);
        }
        let max = self.caps.max_duration;
        if length > delta(max) {
            return Err(RequestError::DurationTooLong {
                requested: human(length),
                limit: format!(
                    "{} for provider `{}`{}",
                    format_duration(max),
                    self.provider,
                    self.limit_note
                ),
            });
        }
        if let Some(slack) = self.start_slack {
            if spec.starts_at > now + delta(slack) {
                return Err(RequestError::NotYetStarted {
                    request: spec.request_id,
                    starts_at: spec.starts_at.to_rfc3339(),
                });
            }
        }
        let left = (spec.ends_at - now).num_seconds() - delta(self.call_allowance).num_seconds();
        let min = self
            .minimum
            .unwrap_or_else(|| self.caps.min_duration.saturating_sub(self.call_allowance));
        if left < min.as_secs().max(1) as i64 {
            return Err(RequestError::DurationTooShort {
                requested: format!("{}s left of the window", left.max(0)),
                minimum: format!("{}{}", format_duration(min), self.minimum_note),
            });
        }
        let remaining = Duration::from_secs(left as u64).min(Duration::from_secs(max.as_secs()));
        Ok(Window {
            starts_at: spec.starts_at,
            ends_at: spec.ends_at,
            remaining,
        })
    }
}

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

fn human(d: TimeDelta) -> String {
    d.to_std()
        .map(format_duration)
        .unwrap_or_else(|_| format!("{}s", d.num_seconds()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::types::{Entitlement, GrantDuration, GrantId, Principal, RequestId};

    fn grant_spec_for_docs() -> GrantSpec {
        let starts_at = DateTime::parse_from_rfc3339("2026-11-29T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        GrantSpec {
            grant_id: GrantId::new(),
            request_id: RequestId::new(),
            subject: Principal::new("alice").unwrap(),
            entitlement: Entitlement {
                id: "e".into(),
                description: String::new(),
                provider: "p".into(),
                target: serde_json::json!({}),
                max_duration: GrantDuration::new(Duration::from_secs(3600)).unwrap(),
            },
            starts_at,
            ends_at: starts_at + TimeDelta::seconds(1800),
            justification: String::new(),
            ticket: None,
        }
    }

    fn caps() -> Capabilities {
        Capabilities::default()
            .with_min_duration(Duration::from_secs(900))
            .with_max_duration(Duration::from_secs(3600))
    }

    #[test]
    fn a_window_within_bounds_passes_with_whole_seconds_left() {
        let mut spec = grant_spec_for_docs();
        let now = spec.starts_at;
        spec.ends_at = now + TimeDelta::milliseconds(1_800_500);
        let caps = caps();
        let w = WindowRules::new("p", &caps)
            .call_allowance(Duration::from_secs(5))
            .check(&spec, now)
            .unwrap();
        assert_eq!(w.remaining, Duration::from_secs(1795));
        assert_eq!(w.remaining_iso8601(), "PT29M55S");
    }

    #[test]
    fn the_minimum_applies_to_what_is_left_after_the_allowance() {
        let caps = caps(); // advertises 15 min
        let base = grant_spec_for_docs();
        let now = base.starts_at;
        let short = |secs| {
            let mut s = base.clone();
            s.ends_at = now + TimeDelta::seconds(secs);
            s
        };
        let allowance = WindowRules::new("p", &caps).call_allowance(Duration::from_secs(60));
        // Default: the advertised minimum less the allowance (14 min) must be left.
        assert_eq!(
            allowance.check(&short(900), now).unwrap().remaining,
            Duration::from_secs(840)
        );
        assert!(matches!(
            allowance.check(&short(899), now),
            Err(RequestError::DurationTooShort { .. })
        ));
        // A cloud minimum named apart from the advertised one (which holds a
        // planning margin) is what the check uses.
        let cloud = allowance.clone().minimum(Duration::from_secs(600));
        assert_eq!(
            cloud.check(&short(660), now).unwrap().remaining,
            Duration::from_secs(600)
        );
        assert!(matches!(
            cloud.check(&short(659), now),
            Err(RequestError::DurationTooShort { .. })
        ));
    }

    #[test]
    fn each_bound_gives_its_typed_error() {
        let caps = caps();
        let rules = WindowRules::new("p", &caps).limit_note(" (note)");
        let base = grant_spec_for_docs();
        let now = base.starts_at;

        let mut s = base.clone();
        s.ends_at = s.starts_at - TimeDelta::seconds(5);
        assert!(matches!(
            rules.check(&s, now),
            Err(RequestError::NegativeDuration(_))
        ));

        s.ends_at = s.starts_at + TimeDelta::milliseconds(999);
        assert_eq!(rules.check(&s, now), Err(RequestError::ZeroDuration));

        s.ends_at = s.starts_at + TimeDelta::seconds(3601);
        match rules.check(&s, now) {
            Err(RequestError::DurationTooLong { limit, .. }) => {
                assert_eq!(limit, "1h for provider `p` (note)")
            }
            other => panic!("{other:?}"),
        }

        // Long enough as a window, but most of it has passed.
        s.ends_at = s.starts_at + TimeDelta::seconds(3600);
        let late = now + TimeDelta::seconds(3000);
        assert!(matches!(
            rules.check(&s, late),
            Err(RequestError::DurationTooShort { .. })
        ));
    }

    #[test]
    fn a_future_start_is_refused_only_with_a_start_slack() {
        let caps = caps();
        let mut s = grant_spec_for_docs();
        let now = s.starts_at - TimeDelta::seconds(60);
        s.ends_at = s.starts_at + TimeDelta::seconds(1800);
        assert!(WindowRules::new("p", &caps).check(&s, now).is_ok());
        assert!(matches!(
            WindowRules::new("p", &caps)
                .start_slack(Duration::from_secs(5))
                .check(&s, now),
            Err(RequestError::NotYetStarted { .. })
        ));
        assert!(WindowRules::new("p", &caps)
            .start_slack(Duration::from_secs(60))
            .check(&s, now)
            .is_ok());
    }

    #[test]
    fn remaining_never_exceeds_the_maximum() {
        let caps = caps();
        let mut s = grant_spec_for_docs();
        // A window starting in the future: from now to its end is longer than max.
        let now = s.starts_at - TimeDelta::seconds(600);
        s.ends_at = s.starts_at + TimeDelta::seconds(3600);
        let w = WindowRules::new("p", &caps).check(&s, now).unwrap();
        assert_eq!(w.remaining, Duration::from_secs(3600));
    }

    #[test]
    fn iso8601_forms() {
        assert_eq!(iso8601(Duration::from_secs(0)), "PT0S");
        assert_eq!(iso8601(Duration::from_secs(45 * 60)), "PT45M");
        assert_eq!(iso8601(Duration::from_secs(8 * 3600)), "PT8H");
        assert_eq!(
            iso8601(Duration::from_secs(3600 + 30 * 60 + 15)),
            "PT1H30M15S"
        );
        assert_eq!(iso8601(Duration::from_secs(26 * 3600)), "PT26H");
    }
}
