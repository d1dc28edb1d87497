//! A grant's length is `min(requested, entitlement max, policy max,
//! provider max)` (design rule 2), whatever the policy says: the broker
//! clamps it itself, in one place (`DurationLimits`), so a policy that
//! allows more than its entitlement or its provider never stretches a grant.
#![cfg(feature = "testing")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use common::*;
use jit_core::error::RequestError;
use jit_core::policy::{Policy, PolicyContext};
use jit_core::testing::TestProvider;
use jit_core::{
    AccessRequest, Broker, CataloguePolicy, Clock, Decision, Entitlement, GrantDuration,
    ManualClock, MemoryStore, Principal, State, Verdict,
};

/// The test catalogue, except that every eligible request is auto-approved
/// with the decision's maximum set to `max`, however long.
#[derive(Debug)]
struct Generous {
    catalogue: CataloguePolicy,
    max: GrantDuration,
}

impl Policy for Generous {
    fn entitlement(&self, id: &str) -> Option<Entitlement> {
        self.catalogue.entitlement(id)
    }

    fn entitlements(&self) -> Vec<Entitlement> {
        self.catalogue.entitlements()
    }

    fn evaluate(
        &self,
        requester: &Principal,
        request: &AccessRequest,
        entitlement: &Entitlement,
        ctx: &PolicyContext,
    ) -> Result<Decision, RequestError> {
        let mut d = self
            .catalogue
            .evaluate(requester, request, entitlement, ctx)?;
        if !d.is_deny() {
            d.verdict = Verdict::AutoApprove;
        }
        d.max_duration = self.max;
        Ok(d)
    }
}

fn dur(s: &str) -> GrantDuration {
    s.parse().unwrap()
}

/// A broker whose policy allows up to `policy_max` and whose `test`
/// provider mints up to `provider_max`; `dev-read` allows 1h.
fn broker(policy_max: &str, provider_max: Duration) -> (Broker, ManualClock) {
    let clock = ManualClock::starting_now();
    let policy = Generous {
        catalogue: CataloguePolicy::from_toml_str(CATALOGUE).unwrap(),
        max: dur(policy_max),
    };
    let broker = Broker::builder(Arc::new(MemoryStore::new()), Arc::new(policy))
        .provider(Arc::new(TestProvider::new("test").with_max(provider_max)))
        .provider(Arc::new(
            TestProvider::new("manual-expiry").without_native_expiry(),
        ))
        .clock(Arc::new(clock.clone()))
        .build()
        .unwrap();
    (broker, clock)
}

/// Submits `dev-read` for `requested` and returns the issued grant's length.
async fn granted(policy_max: &str, provider_max: Duration, requested: &str) -> TimeDelta {
    let (broker, _clock) = broker(policy_max, provider_max);
    let out = broker
        .submit(&user("alice"), req("dev-read", requested))
        .await
        .unwrap();
    assert_eq!(out.record.state, State::Active, "{:?}", out.record.note);
    assert!(out.credentials.is_some());
    let g = out.record.grant.unwrap();
    let issued = g.issued.unwrap();
    assert_eq!(
        issued.expires_at, g.ends_at,
        "the provider's expiry is recorded"
    );
    g.ends_at - g.starts_at
}

const HOURS_12: Duration = Duration::from_secs(12 * 3600);

#[tokio::test]
async fn the_request_stands_when_it_is_the_shortest() {
    assert_eq!(granted("7d", HOURS_12, "10m").await, TimeDelta::minutes(10));
}

#[tokio::test]
async fn the_entitlement_maximum_bounds_a_policy_that_allows_more() {
    // `dev-read` allows 1h; the policy says 7d; the provider 12h.
    assert_eq!(granted("7d", HOURS_12, "3h").await, TimeDelta::hours(1));
}

#[tokio::test]
async fn the_policy_maximum_bounds_the_grant() {
    assert_eq!(
        granted("20m", HOURS_12, "50m").await,
        TimeDelta::minutes(20)
    );
}

#[tokio::test]
async fn the_provider_maximum_bounds_the_grant() {
    let ten_minutes = Duration::from_secs(600);
    assert_eq!(
        granted("7d", ten_minutes, "50m").await,
        TimeDelta::minutes(10)
    );
}

#[tokio::test]
async fn an_extension_never_ends_later_than_the_limit_from_now() {
    let (broker, clock) = broker("7d", HOURS_12);
    let first = broker
        .submit(&user("alice"), req("dev-read", "50m"))
        .await
        .unwrap();
    clock.advance(TimeDelta::minutes(10));
    let now = clock.now();
    let ext = broker
        .extend(&user("alice"), first.record.id, dur("3h"), "more time")
        .await
        .unwrap();
    assert_eq!(ext.record.state, State::Active, "{:?}", ext.record.note);
    // The old end is 40 minutes away; 3h more is cut to 1h (the
    // entitlement's maximum) from now, not from the old end.
    assert_eq!(ext.record.ends_at().unwrap() - now, TimeDelta::hours(1));
}

#[test]
fn a_grant_spec_states_its_length_as_a_grant_duration() {
    let clock = ManualClock::starting_now();
    let now = clock.now();
    let spec = |len: TimeDelta| jit_core::GrantSpec {
        grant_id: jit_core::GrantId::new(),
        request_id: jit_core::RequestId::new(),
        subject: user("alice"),
        entitlement: CataloguePolicy::from_toml_str(CATALOGUE)
            .unwrap()
            .entitlement("dev-read")
            .unwrap(),
        starts_at: now,
        ends_at: now + len,
        justification: String::new(),
        ticket: None,
    };
    assert_eq!(spec(TimeDelta::minutes(30)).duration(), Ok(dur("30m")));
    assert_eq!(
        spec(TimeDelta::zero()).duration(),
        Err(RequestError::ZeroDuration)
    );
    assert!(matches!(
        spec(TimeDelta::minutes(-1)).duration(),
        Err(RequestError::NegativeDuration(_))
    ));
    assert!(matches!(
        spec(TimeDelta::days(8)).duration(),
        Err(RequestError::DurationTooLong { .. })
    ));
}
