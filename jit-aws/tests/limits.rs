//! Every documented limit is refused with a typed error before any remote
//! call. The provider's clients point at a [`Tripwire`]: an endpoint that
//! counts connections and answers none, so a single call fails the test
//! (on the assertions below, and when the tripwire is dropped).
//! (moto itself accepts most of these values, so these tests are the only
//! guard.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use common::*;
use jit_aws::{AwsConfig, AwsProvider};
use jit_core::testing::provider::{spec, ProviderHarness};
use jit_core::testing::tripwire::Tripwire;
use jit_core::{ConfigError, Error, GrantSpec, IssuedGrant, Principal, RequestError, SystemClock};
use serde_json::{json, Value};

const ROLE: &str = "arn:aws:iam::123456789012:role/ops/Target";

struct Setup {
    tripwire: Tripwire,
    h: ProviderHarness,
}

async fn setup() -> Setup {
    let tripwire = Tripwire::new();
    let sdk = common::sdk(tripwire.url(), "AKIATRIPWIRE", "never-sent", None).await;
    // Chaining and account stated, so building the provider makes no call either.
    let provider = AwsProvider::builder(
        AwsConfig::default()
            .with_role_chaining(false)
            .with_account_id("123456789012"),
    )
    .sdk_config(sdk)
    .build()
    .await
    .unwrap();
    let h = ProviderHarness {
        provider: Arc::new(provider),
        entitlement: entitlement(
            "aws.limits",
            json!({"role_arn": ROLE}),
            Duration::from_secs(3600),
        ),
        subject: Principal::new("limits@example.com").unwrap(),
        clock: Arc::new(SystemClock),
        probe: Arc::new(StsProbe {
            url: tripwire.url().to_string(),
        }),
        advance: None,
    };
    Setup { tripwire, h }
}

fn with_target(h: &ProviderHarness, target: Value) -> GrantSpec {
    let mut s = spec(h, TimeDelta::minutes(20));
    s.entitlement.target = target;
    s
}

fn field_error(e: Error) -> (String, String) {
    match e {
        Error::Config(ConfigError::InvalidField { field, message, .. }) => (field, message),
        other => panic!("expected a config error, got {other:?}"),
    }
}

async fn refused(setup: &Setup, s: &GrantSpec) -> Error {
    let e = match setup.h.provider.issue(s).await {
        Err(e) => e,
        Ok(_) => panic!("issued a spec that breaks a limit"),
    };
    // The same check applies when the catalogue loads.
    assert_eq!(
        setup.tripwire.contacts(),
        0,
        "a remote call was made before refusing: {e}"
    );
    e
}

#[tokio::test]
async fn window_limits() {
    let st = setup().await;
    let h = &st.h;
    let cases: Vec<(&str, GrantSpec)> = vec![
        ("negative", spec(h, TimeDelta::seconds(-60))),
        ("zero", spec(h, TimeDelta::zero())),
        (
            "over the 12h maximum",
            spec(h, TimeDelta::hours(12) + TimeDelta::seconds(1)),
        ),
        ("under STS's 15 minutes", spec(h, TimeDelta::seconds(900))),
        (
            "under STS's 15 minutes by a second",
            spec(h, TimeDelta::seconds(901)),
        ),
        ("one second", spec(h, TimeDelta::seconds(1))),
        (
            "under STS's 15 minutes after the call allowance",
            spec(h, TimeDelta::seconds(905)),
        ),
        ("not yet started", {
            let mut s = spec(h, TimeDelta::minutes(30));
            s.starts_at += TimeDelta::minutes(10);
            s.ends_at += TimeDelta::minutes(10);
            s
        }),
        ("window already over", {
            let mut s = spec(h, TimeDelta::minutes(30));
            s.starts_at -= TimeDelta::hours(1);
            s.ends_at -= TimeDelta::hours(1);
            s
        }),
    ];
    for (what, s) in cases {
        let e = refused(&st, &s).await;
        let ok = match (what, &e) {
            ("negative", Error::InvalidRequest(RequestError::NegativeDuration(_))) => true,
            ("zero", Error::InvalidRequest(RequestError::ZeroDuration)) => true,
            (
                "over the 12h maximum",
                Error::InvalidRequest(RequestError::DurationTooLong { limit, .. }),
            ) => limit.contains("12h"),
            ("not yet started", Error::InvalidRequest(RequestError::NotYetStarted { .. })) => true,
            (_, Error::InvalidRequest(RequestError::DurationTooShort { minimum, .. })) => {
                minimum.contains("15m")
            }
            _ => false,
        };
        assert!(ok, "{what}: wrong error {e:?}");
    }
    // The shortest window a broker asks for: 15 minutes plus the issue margin.
    let caps = h.provider.capabilities();
    assert_eq!(caps.min_duration, Duration::from_secs(960));
    assert_eq!(caps.max_duration, Duration::from_secs(12 * 3600));
}

#[tokio::test]
async fn target_limits() {
    let st = setup().await;
    let h = &st.h;
    let pad = |n: usize| format!(r#"{{"Version":"2012-10-17","Sid":"{}"}}"#, "a".repeat(n));
    let base = pad(0).len();
    let arns = |n: usize| {
        (0..n)
            .map(|i| format!("arn:aws:iam::aws:policy/P{i}"))
            .collect::<Vec<_>>()
    };
    let tags = |n: usize| {
        (0..n)
            .map(|i| (format!("k{i}"), json!("v")))
            .collect::<serde_json::Map<_, _>>()
    };
    let cases: Vec<(&str, Value)> = vec![
        (
            "target.role_arn",
            json!({"role_arn": "arn:aws:iam::123:role/x"}),
        ),
        (
            "target.role_arn",
            json!({"role_arn": "arn:aws:iam::123456789012:user/x"}),
        ),
        (
            "target.role_arn",
            json!({"role_arn": "arn:aws-iso:iam::123456789012:role/x"}),
        ),
        (
            "target.role_arn",
            json!({"role_arn": format!("arn:aws:iam::123456789012:role/{}", "n".repeat(65))}),
        ),
        (
            "target.role_arn",
            json!({"role_arn": "arn:aws:iam::123456789012:role/bad name"}),
        ),
        ("target.role_arn", json!({})),
        ("target.role_rn", json!({"role_arn": ROLE, "role_rn": ROLE})),
        (
            "target.session_policy",
            json!({"role_arn": ROLE, "session_policy": pad(2049 - base)}),
        ),
        (
            "target.session_policy",
            json!({"role_arn": ROLE, "session_policy": "{not json"}),
        ),
        (
            "target.session_policy",
            json!({"role_arn": ROLE, "session_policy": {"Sid": "€uro"}}),
        ),
        (
            "target.policy_arns",
            json!({"role_arn": ROLE, "policy_arns": arns(11)}),
        ),
        (
            "target.policy_arns",
            json!({"role_arn": ROLE, "policy_arns": ["arn:aws:s3:::bucket"]}),
        ),
        (
            "target.policy_arns",
            json!({"role_arn": ROLE, "session_policy": pad(2000 - base), "policy_arns": arns(2)}),
        ),
        (
            "target.external_id",
            json!({"role_arn": ROLE, "external_id": "x"}),
        ),
        (
            "target.external_id",
            json!({"role_arn": ROLE, "external_id": "has space"}),
        ),
        (
            "target.external_id",
            json!({"role_arn": ROLE, "external_id": "x".repeat(1225)}),
        ),
        (
            "target.session_tags",
            json!({"role_arn": ROLE, "session_tags": tags(46)}),
        ),
        (
            "target.session_tags",
            json!({"role_arn": ROLE, "session_tags": {"aws:team": "x"}}),
        ),
        (
            "target.session_tags",
            json!({"role_arn": ROLE, "session_tags": {"k".repeat(129): "x"}}),
        ),
        (
            "target.session_tags",
            json!({"role_arn": ROLE, "session_tags": {"k": "v".repeat(257)}}),
        ),
        (
            "target.session_tags",
            json!({"role_arn": ROLE, "session_tags": {"k": "semi;colon"}}),
        ),
        (
            "target.session_tags",
            json!({"role_arn": ROLE, "session_tags": {"jit:ticket": "x"}}),
        ),
        (
            "target.session_tags",
            json!({"role_arn": ROLE, "session_tags": {"Team": "a", "team": "b"}}),
        ),
    ];
    for (field, target) in cases {
        let s = with_target(h, target.clone());
        let (f, message) = field_error(refused(&st, &s).await);
        assert_eq!(f, field, "{target}: {message}");
        // validate() refuses the same entitlement when the catalogue loads.
        let (f2, _) = field_error(h.provider.validate(&s.entitlement).unwrap_err());
        assert_eq!(f2, field);
    }
    // The limits themselves are allowed.
    for ok in [
        json!({"role_arn": ROLE, "session_policy": pad(2048 - base)}),
        json!({"role_arn": ROLE, "policy_arns": arns(10)}),
        json!({"role_arn": ROLE, "external_id": "x".repeat(1224)}),
        json!({"role_arn": ROLE, "session_tags": tags(45)}),
        json!({"role_arn": ROLE, "session_tags": {"k".repeat(128): "v".repeat(256)}}),
    ] {
        let mut e = h.entitlement.clone();
        e.target = ok.clone();
        h.provider
            .validate(&e)
            .unwrap_or_else(|err| panic!("{ok}: {err}"));
    }
    assert_eq!(st.tripwire.contacts(), 0);
}

#[tokio::test]
async fn an_entitlement_shorter_than_the_minimum_window_is_refused_at_load() {
    let st = setup().await;
    let mut e = st.h.entitlement.clone();
    e.max_duration = "15m".parse().unwrap();
    let (field, message) = field_error(st.h.provider.validate(&e).unwrap_err());
    assert_eq!(field, "max_duration");
    assert!(message.contains("16m"), "{message}");
}

#[tokio::test]
async fn hostile_requesters_and_tickets_are_sanitized_not_refused() {
    // These would be rejected by STS if sent raw; the provider derives valid
    // values instead, so the refusal tests above are about targets and
    // windows only. The spec reaches the first remote call (the tripwire).
    let st = setup().await;
    st.tripwire.expect_contacts();
    let mut s = spec(&st.h, TimeDelta::minutes(20));
    s.subject = Principal::new(&format!("aws:{}", "ü x".repeat(66))).unwrap();
    s.ticket = Some("INC#1; DROP TABLE".into());
    let e = st.h.provider.issue(&s).await.unwrap_err();
    assert!(matches!(e, Error::Unavailable { .. }), "{e:?}");
    assert!(
        st.tripwire.contacts() > 0,
        "the valid spec never reached the endpoint"
    );
}

#[tokio::test]
async fn revoking_a_record_that_is_not_a_jit_session_is_refused_without_a_call() {
    let st = setup().await;
    for name in [
        "",
        "x",
        "jit-NOTHEX",
        "arbitrary-session",
        "jit-0123456789abcdef0123456789ABCDEF",
    ] {
        let g = IssuedGrant {
            provider: "aws".into(),
            external_id: name.into(),
            expires_at: chrono::Utc::now() + TimeDelta::minutes(10),
            details: json!({"role_arn": ROLE, "role_id": "AROAEXAMPLE"}),
        };
        match st.h.provider.revoke(&g).await {
            Err(Error::ProviderRejected {
                operation: "revoke",
                message,
                ..
            }) => {
                assert!(message.contains("not a session name"), "{message}")
            }
            other => panic!("{name:?}: expected a rejection, got {other:?}"),
        }
    }
    assert_eq!(st.tripwire.contacts(), 0);
}
