//! The built-in catalogue policy keeps the `Policy` contract
//! (`jit_core::testing::policy`), and the checks catch a policy that does not.
#![cfg(feature = "testing")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use jit_core::error::RequestError;
use jit_core::policy::{Policy, PolicyContext};
use jit_core::testing::policy as contract;
use jit_core::{
    AccessRequest, CataloguePolicy, Clock, Decision, Entitlement, GrantDuration, ManualClock,
    Principal,
};

fn catalogue() -> CataloguePolicy {
    CataloguePolicy::from_toml_str(CATALOGUE).unwrap()
}

fn ctx(provider_max: Duration) -> PolicyContext {
    PolicyContext::new(ManualClock::starting_now().now(), provider_max)
}

fn people() -> Vec<Principal> {
    vec![
        user("alice"),
        lead("lena"),
        Principal::new("outsider").unwrap(),
        Principal::new("root-admin").unwrap(),
    ]
}

fn template() -> AccessRequest {
    req("dev-read", "10m").with_ticket("INC-42")
}

#[test]
fn the_catalogue_policy_keeps_the_contract() {
    let policy = catalogue();
    contract::check_entitlements_agree(&policy);
    // A provider that allows more than any entitlement, and one that allows
    // less than most: the decision must stay under both.
    for provider_max in [Duration::from_secs(12 * 3600), Duration::from_secs(600)] {
        contract::check_evaluate(&policy, &people(), &template(), &ctx(provider_max));
        contract::check_approvable_entitlements(
            &policy,
            &people(),
            &people(),
            &template(),
            &ctx(provider_max),
        );
    }
    contract::check_admins_are_exact(&policy, &Principal::new("root-admin").unwrap());
}

/// The catalogue, but each decision allows one second more than the last.
#[derive(Debug)]
struct Drifting {
    inner: CataloguePolicy,
    calls: AtomicU64,
}

impl Policy for Drifting {
    fn entitlement(&self, id: &str) -> Option<Entitlement> {
        self.inner.entitlement(id)
    }

    fn entitlements(&self) -> Vec<Entitlement> {
        self.inner.entitlements()
    }

    fn evaluate(
        &self,
        requester: &Principal,
        request: &AccessRequest,
        entitlement: &Entitlement,
        ctx: &PolicyContext,
    ) -> Result<Decision, RequestError> {
        let mut d = self.inner.evaluate(requester, request, entitlement, ctx)?;
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        d.max_duration = GrantDuration::from_secs_i64(60 + n as i64).unwrap();
        Ok(d)
    }
}

#[test]
#[should_panic(expected = "differently the second time")]
fn a_policy_that_answers_differently_fails_the_check() {
    let policy = Drifting {
        inner: catalogue(),
        calls: AtomicU64::new(0),
    };
    contract::check_evaluate(
        &policy,
        &people(),
        &template(),
        &ctx(Duration::from_secs(3600)),
    );
}

/// The catalogue, but `entitlement()` also finds one that is not listed.
#[derive(Debug)]
struct HiddenEntry(CataloguePolicy);

impl Policy for HiddenEntry {
    fn entitlement(&self, id: &str) -> Option<Entitlement> {
        self.0.entitlement(id).or_else(|| {
            let mut e = self.0.entitlement("dev-read")?;
            e.id = id.to_string();
            Some(e)
        })
    }

    fn entitlements(&self) -> Vec<Entitlement> {
        self.0.entitlements()
    }

    fn evaluate(
        &self,
        requester: &Principal,
        request: &AccessRequest,
        entitlement: &Entitlement,
        ctx: &PolicyContext,
    ) -> Result<Decision, RequestError> {
        self.0.evaluate(requester, request, entitlement, ctx)
    }
}

#[test]
#[should_panic(expected = "missing from `entitlements()` was found")]
fn an_entitlement_only_lookup_can_find_fails_the_check() {
    contract::check_entitlements_agree(&HiddenEntry(catalogue()));
}

/// The catalogue, but its decisions allow a week.
#[derive(Debug)]
struct Boundless(CataloguePolicy);

impl Policy for Boundless {
    fn entitlement(&self, id: &str) -> Option<Entitlement> {
        self.0.entitlement(id)
    }

    fn entitlements(&self) -> Vec<Entitlement> {
        self.0.entitlements()
    }

    fn evaluate(
        &self,
        requester: &Principal,
        request: &AccessRequest,
        entitlement: &Entitlement,
        ctx: &PolicyContext,
    ) -> Result<Decision, RequestError> {
        let mut d = self.0.evaluate(requester, request, entitlement, ctx)?;
        d.max_duration = "7d".parse().unwrap();
        Ok(d)
    }
}

#[test]
#[should_panic(expected = "more than the entitlement's")]
fn a_decision_beyond_its_entitlement_fails_the_check() {
    contract::check_evaluate(
        &Boundless(catalogue()),
        &people(),
        &template(),
        &ctx(Duration::from_secs(30 * 24 * 3600)),
    );
}
