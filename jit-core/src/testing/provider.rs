//! Provider conformance checks.
//!
//! Every provider runs the same checks against a [`ProviderHarness`]: the
//! provider, an entitlement it can mint, a subject, the clock the provider
//! uses, an [`AccessProbe`] that tells whether credentials really work, and
//! (when the clock can be moved) a way to advance it. Each check is a plain
//! `pub async fn` that panics with a message on failure; [`run_all`] runs the
//! ones the provider's [`Capabilities`] support.
//!
//! ```no_run
//! # async fn demo() {
//! use jit_core::testing::provider::{local_harness, run_all};
//! let (harness, _provider) = local_harness();
//! run_all(&harness).await;
//! # }
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::TimeDelta;

use crate::clock::{Clock, ManualClock};
use crate::credentials::Credentials;
use crate::error::{Error, RequestError};
use crate::local::{LocalKey, LocalProvider, Verifier};
use crate::provider::{Capabilities, GrantSpec, Provider, RevocationKind};
use crate::types::{Entitlement, GrantDuration, GrantId, IssuedGrant, Principal, RequestId};

/// Tells whether credentials grant the entitlement's access right now.
#[async_trait]
pub trait AccessProbe: Send + Sync {
    /// `true` if the access works (a call that needs it succeeds).
    async fn works(&self, credentials: &Credentials, issued: &IssuedGrant) -> bool;
}

/// Moves the provider's notion of time forward.
pub type Advance = Arc<dyn Fn(TimeDelta) + Send + Sync>;

/// What the checks need to exercise one provider.
pub struct ProviderHarness {
    /// The provider under test.
    pub provider: Arc<dyn Provider>,
    /// An entitlement the provider can mint (its target valid for the provider).
    pub entitlement: Entitlement,
    /// Who receives the grants.
    pub subject: Principal,
    /// The clock the provider uses; grant windows start at its `now`.
    pub clock: Arc<dyn Clock>,
    /// Whether credentials work.
    pub probe: Arc<dyn AccessProbe>,
    /// Moves time for the provider (a [`ManualClock`]); `None` when the
    /// provider runs on real time (a cloud emulator), which skips expiry probes.
    pub advance: Option<Advance>,
}

/// A fresh grant spec for the harness's entitlement and subject, starting now.
pub fn spec(h: &ProviderHarness, duration: TimeDelta) -> GrantSpec {
    let starts_at = h.clock.now();
    GrantSpec {
        grant_id: GrantId::new(),
        request_id: RequestId::new(),
        subject: h.subject.clone(),
        entitlement: h.entitlement.clone(),
        starts_at,
        ends_at: starts_at + duration,
        justification: "provider conformance check".into(),
        ticket: Some("CONF-1".into()),
    }
}

/// A duration every provider accepts: at least its minimum and a minute, at most its maximum.
pub fn usual_duration(caps: &Capabilities) -> TimeDelta {
    let d = caps
        .min_duration
        .max(Duration::from_secs(60))
        .min(caps.max_duration);
    TimeDelta::seconds(d.as_secs() as i64)
}

fn secs(d: Duration) -> TimeDelta {
    TimeDelta::seconds(d.as_secs() as i64)
}

/// Issue, the probe works and the expiry is within the window; with native
/// expiry and a movable clock, the probe fails once the window has passed.
pub async fn check_issue_then_expire(h: &ProviderHarness) {
    let caps = h.provider.capabilities();
    let s = spec(h, usual_duration(&caps));
    let issued = h.provider.issue(&s).await.expect("issue failed");
    assert!(
        !issued.grant.external_id.is_empty(),
        "issued grant has no external id"
    );
    assert_eq!(
        issued.grant.provider,
        h.provider.name(),
        "issued grant names another provider"
    );
    assert!(
        issued.grant.expires_at <= s.ends_at,
        "provider expiry {} is after the requested end {}",
        issued.grant.expires_at,
        s.ends_at
    );
    assert!(
        issued.credentials.expires_at() <= s.ends_at,
        "credential expiry is after the requested end"
    );
    assert!(
        h.probe.works(&issued.credentials, &issued.grant).await,
        "freshly issued credentials do not work"
    );
    // Only a provider that expires access by itself can be checked without
    // the broker's reaper, and only when the test controls its clock.
    if caps.native_expiry {
        if let Some(advance) = &h.advance {
            advance(s.ends_at - h.clock.now() + TimeDelta::seconds(1));
            assert!(
                !h.probe.works(&issued.credentials, &issued.grant).await,
                "credentials still work after the window ended"
            );
        }
    }
    if caps.revocation != RevocationKind::None {
        h.provider
            .revoke(&issued.grant)
            .await
            .expect("cleanup revoke failed");
    }
}

/// Revoke twice succeeds; with immediate revocation the probe fails afterwards;
/// revoking a grant that was never issued succeeds.
pub async fn check_revoke_idempotent(h: &ProviderHarness) {
    let caps = h.provider.capabilities();
    let s = spec(h, usual_duration(&caps));
    let issued = h.provider.issue(&s).await.expect("issue failed");
    assert!(
        h.probe.works(&issued.credentials, &issued.grant).await,
        "issued credentials do not work"
    );
    h.provider
        .revoke(&issued.grant)
        .await
        .expect("first revoke failed");
    h.provider
        .revoke(&issued.grant)
        .await
        .expect("second revoke failed");
    // A deny policy propagates with a delay; only immediate revocation can be
    // probed right away.
    if caps.revocation == RevocationKind::Immediate {
        assert!(
            !h.probe.works(&issued.credentials, &issued.grant).await,
            "credentials still work after revoke"
        );
    }

    let never = spec(h, usual_duration(&caps));
    assert!(
        h.provider
            .find(&never)
            .await
            .expect("find failed")
            .is_none(),
        "find returned something for a grant never issued"
    );
    let fabricated = IssuedGrant {
        provider: h.provider.name().to_string(),
        external_id: never.external_name(),
        expires_at: never.ends_at,
        details: serde_json::Value::Null,
    };
    h.provider
        .revoke(&fabricated)
        .await
        .expect("revoking a never-issued grant failed");
}

/// Issuing the same spec twice yields the same provider-side grant.
pub async fn check_issue_idempotent(h: &ProviderHarness) {
    let caps = h.provider.capabilities();
    let s = spec(h, usual_duration(&caps));
    let first = h.provider.issue(&s).await.expect("first issue failed");
    let second = h.provider.issue(&s).await.expect("second issue failed");
    assert_eq!(
        first.grant.external_id, second.grant.external_id,
        "a repeated issue minted a different grant"
    );
    assert!(
        second.grant.expires_at <= s.ends_at,
        "repeated issue moved the expiry past the end"
    );
    assert!(
        h.probe.works(&second.credentials, &second.grant).await,
        "credentials from a repeated issue do not work"
    );
    let found = h
        .provider
        .find(&s)
        .await
        .expect("find failed")
        .expect("find returned nothing");
    assert_eq!(
        found.external_id, first.grant.external_id,
        "find returned another grant"
    );
    if caps.revocation != RevocationKind::None {
        h.provider
            .revoke(&first.grant)
            .await
            .expect("cleanup revoke failed");
    }
}

/// A window over the provider's maximum, an empty one and a negative one are
/// refused with typed errors, before anything exists at the provider.
pub async fn check_duration_limits(h: &ProviderHarness) {
    let caps = h.provider.capabilities();
    let too_long = spec(h, secs(caps.max_duration) + TimeDelta::seconds(1));
    match h.provider.issue(&too_long).await {
        Err(Error::InvalidRequest(RequestError::DurationTooLong { .. })) => {}
        Err(e) => panic!("over-max duration refused with the wrong error: {e}"),
        Ok(_) => panic!("over-max duration was issued"),
    }
    assert!(
        h.provider
            .find(&too_long)
            .await
            .expect("find failed")
            .is_none(),
        "a refused over-max issue left something behind"
    );

    for delta in [TimeDelta::zero(), TimeDelta::seconds(-60)] {
        let s = spec(h, delta);
        match h.provider.issue(&s).await {
            Err(Error::InvalidRequest(_)) => {}
            Err(e) => panic!("window of {delta} refused with the wrong error: {e}"),
            Ok(_) => panic!("window of {delta} was issued"),
        }
        assert!(
            h.provider.find(&s).await.expect("find failed").is_none(),
            "a refused issue of {delta} left something behind"
        );
    }
}

/// After a crash between issue and record, `find` locates the grant by its
/// derived name and revoking it takes the access away.
pub async fn check_reconcile_after_crash(h: &ProviderHarness) {
    let caps = h.provider.capabilities();
    let s = spec(h, usual_duration(&caps));
    let issued = h.provider.issue(&s).await.expect("issue failed");
    // The broker never recorded the result; the credentials are kept only to probe.
    let credentials = issued.credentials;
    let external_id = issued.grant.external_id;
    let found = h
        .provider
        .find(&s)
        .await
        .expect("find failed")
        .expect("find did not locate the issued grant");
    assert_eq!(found.external_id, external_id, "find located another grant");
    // A provider that cannot revoke leaves the access to expire; nothing more to check.
    if caps.revocation == RevocationKind::None {
        return;
    }
    h.provider
        .revoke(&found)
        .await
        .expect("revoking the found grant failed");
    if caps.revocation == RevocationKind::Immediate {
        assert!(
            !h.probe.works(&credentials, &found).await,
            "access still works after the reconciler revoked it"
        );
    }
}

/// [`Capabilities::revoke_by_name`] and [`Provider::record_by_name`] agree:
/// without the capability the method refuses (a provider must not look
/// able when it is not); with it, the record rebuilt from the derived name
/// names what `issue` minted, revoking it succeeds (and takes the access
/// away where revocation is immediate), and revoking the record of a grant
/// that was never issued succeeds too.
pub async fn check_revoke_by_name(h: &ProviderHarness) {
    let caps = h.provider.capabilities();
    let s = spec(h, usual_duration(&caps));
    if !caps.revoke_by_name {
        assert!(
            h.provider.record_by_name(&s).await.is_err(),
            "record_by_name answered without the revoke_by_name capability"
        );
        return;
    }
    let issued = h.provider.issue(&s).await.expect("issue failed");
    let record = h
        .provider
        .record_by_name(&s)
        .await
        .expect("record_by_name failed");
    assert_eq!(
        record.external_id, issued.grant.external_id,
        "the record by name names another grant"
    );
    h.provider
        .revoke(&record)
        .await
        .expect("revoking the record by name failed");
    if caps.revocation == RevocationKind::Immediate {
        assert!(
            !h.probe.works(&issued.credentials, &issued.grant).await,
            "access still works after revoking by name"
        );
    }
    let never = spec(h, usual_duration(&caps));
    let record = h
        .provider
        .record_by_name(&never)
        .await
        .expect("record_by_name of a grant never issued failed");
    h.provider
        .revoke(&record)
        .await
        .expect("revoking by name a grant never issued failed");
}

/// Every secret value of issued credentials is absent from `Debug` of the
/// credentials and the issued grant, from the serialized grant, and from the
/// errors the provider returns.
pub async fn check_secrets_absent(h: &ProviderHarness) {
    let caps = h.provider.capabilities();
    let s = spec(h, usual_duration(&caps));
    let issued = h.provider.issue(&s).await.expect("issue failed");
    let secrets: Vec<String> = match &issued.credentials {
        Credentials::LocalToken { token, .. } | Credentials::AccessToken { token, .. } => {
            vec![token.expose().to_string()]
        }
        Credentials::Aws {
            secret_access_key,
            session_token,
            ..
        } => vec![
            secret_access_key.expose().to_string(),
            session_token.expose().to_string(),
        ],
        Credentials::Assignment { .. } => Vec::new(),
    };
    for secret in &secrets {
        assert!(!secret.is_empty(), "a secret credential part is empty");
    }

    let mut texts = vec![
        format!("{:?}", issued.credentials),
        format!("{:#?}", issued.credentials),
        format!("{:?}", issued.grant),
        serde_json::to_string(&issued.grant).expect("issued grant does not serialize"),
    ];
    // Errors the provider produces around this grant.
    let mut too_long = s.clone();
    too_long.ends_at = too_long.starts_at + secs(caps.max_duration) + TimeDelta::seconds(1);
    too_long.grant_id = GrantId::new();
    if let Err(e) = h.provider.issue(&too_long).await {
        texts.push(e.to_string());
        texts.push(format!("{e:?}"));
    }
    let mut empty = s.clone();
    empty.ends_at = empty.starts_at;
    if let Err(e) = h.provider.issue(&empty).await {
        texts.push(e.to_string());
        texts.push(format!("{e:?}"));
    }

    for (i, text) in texts.iter().enumerate() {
        for secret in &secrets {
            // Say where, never what: the message must not leak the secret either.
            assert!(
                !text.contains(secret.as_str()),
                "a secret value appears in output #{i}"
            );
        }
    }
    if caps.revocation != RevocationKind::None {
        h.provider
            .revoke(&issued.grant)
            .await
            .expect("cleanup revoke failed");
    }
}

/// Runs every check the provider's capabilities support.
pub async fn run_all(h: &ProviderHarness) {
    let caps = h.provider.capabilities();
    check_duration_limits(h).await;
    check_issue_idempotent(h).await;
    check_secrets_absent(h).await;
    check_reconcile_after_crash(h).await;
    check_revoke_by_name(h).await;
    // A provider without early revocation (a GCP access token) is refused at
    // request time by the broker, so there is nothing to revoke here.
    if caps.revocation != RevocationKind::None {
        check_revoke_idempotent(h).await;
    }
    // Last: it may move the clock past the end of everything issued so far.
    check_issue_then_expire(h).await;
}

/// Probes local tokens with a [`Verifier`], for the audience recorded in the
/// issued grant's `details.audience`.
#[derive(Debug, Clone)]
pub struct LocalTokenProbe {
    /// The verifier.
    pub verifier: Verifier,
}

#[async_trait]
impl AccessProbe for LocalTokenProbe {
    async fn works(&self, credentials: &Credentials, issued: &IssuedGrant) -> bool {
        let Credentials::LocalToken { token, .. } = credentials else {
            return false;
        };
        let Some(audience) = issued.details.get("audience").and_then(|a| a.as_str()) else {
            return false;
        };
        self.verifier.verify(token.expose(), audience).is_ok()
    }
}

/// A harness for a [`LocalProvider`] with a fresh key on a [`ManualClock`]
/// (entitlement `local.conformance`, audience `conformance-api`), and the
/// provider itself for provider-specific assertions.
pub fn local_harness() -> (ProviderHarness, Arc<LocalProvider>) {
    let clock = ManualClock::starting_now();
    let provider = Arc::new(
        LocalProvider::builder(LocalKey::generate())
            .clock(Arc::new(clock.clone()))
            .build(),
    );
    let entitlement = Entitlement {
        id: "local.conformance".into(),
        description: "conformance checks".into(),
        provider: provider.name().to_string(),
        target: serde_json::json!({"audience": "conformance-api", "scopes": ["read"]}),
        max_duration: GrantDuration::new(Duration::from_secs(3600)).expect("valid duration"),
    };
    let advance_clock = clock.clone();
    let harness = ProviderHarness {
        provider: provider.clone(),
        entitlement,
        subject: Principal::new("conformance@example.com").expect("valid principal"),
        clock: Arc::new(clock),
        probe: Arc::new(LocalTokenProbe {
            verifier: provider.verifier(),
        }),
        advance: Some(Arc::new(move |d| advance_clock.advance(d))),
    };
    (harness, provider)
}
