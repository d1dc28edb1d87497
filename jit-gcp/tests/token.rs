//! Token mode against the fake: `generateAccessToken`, lifetimes, no early revocation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use chrono::TimeDelta;
use common::*;
use jit_core::testing::provider::{run_all, spec};
use jit_core::{Credentials, Error, Provider, RevocationKind};
use jit_gcp::Mode;

#[tokio::test]
async fn conformance_suite_in_token_mode() {
    let env = env();
    let provider = env.provider(Mode::Token).await;
    assert_eq!(provider.capabilities().revocation, RevocationKind::None);
    assert_eq!(
        provider.capabilities().max_duration,
        Duration::from_secs(3600)
    );
    let e = entitlement(provider.as_ref(), token_target(), 1);
    provider.validate(&e).unwrap();
    let h = env.harness(provider, e);
    run_all(&h).await;
    env.assert_schema_clean();
    assert!(env.fake.calls("generateAccessToken") > 0);
}

#[tokio::test]
async fn the_token_ends_with_the_window_and_cannot_be_revoked_early() {
    let env = env();
    let provider = env.provider(Mode::Token).await;
    let e = entitlement(provider.as_ref(), token_target(), 1);
    let h = env.harness(provider.clone(), e);
    let s = spec(&h, TimeDelta::minutes(30));
    let issued = provider.issue(&s).await.unwrap();
    let Credentials::AccessToken { token, expires_at } = &issued.credentials else {
        panic!("not an access token")
    };
    assert!(env.fake.token_works(token.expose()));
    assert!(*expires_at <= s.ends_at);
    assert!(*expires_at >= s.ends_at - TimeDelta::seconds(10));
    assert_eq!(issued.grant.expires_at, *expires_at);
    // No secret in the record or its Debug.
    let shown = format!(
        "{:?} {:?} {}",
        issued.grant, issued.credentials, issued.grant.details
    );
    assert!(!shown.contains(token.expose()));
    // Early revocation is refused, not faked.
    let err = provider.revoke(&issued.grant).await.unwrap_err();
    assert!(
        matches!(&err, Error::ProviderRejected { message, .. } if message.contains("cannot be revoked")),
        "{err}"
    );
    assert!(!err.to_string().contains(token.expose()));
    assert!(
        env.fake.token_works(token.expose()),
        "the token was not left alone"
    );
    // Once it has expired, revoking it is a no-op success.
    env.clock.advance(TimeDelta::minutes(31));
    assert!(!env.fake.token_works(token.expose()));
    provider.revoke(&issued.grant).await.unwrap();
}

#[tokio::test]
async fn lifetimes_over_an_hour_need_configuration_and_the_organization_policy() {
    let env = env();
    // Without configuration, over an hour is refused before any call.
    let provider = env.provider(Mode::Token).await;
    let e = entitlement(provider.as_ref(), token_target(), 4);
    let h = env.harness(provider.clone(), e.clone());
    let err = provider
        .issue(&spec(&h, TimeDelta::hours(2)))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidRequest(_)), "{err}");
    assert_eq!(env.fake.calls("generateAccessToken"), 0);
    // Configured up to 12 h: Google refuses unless the organization policy allows the account.
    let long = env
        .provider_with(
            env.config(Mode::Token)
                .with_token_max_lifetime(Duration::from_secs(4 * 3600)),
        )
        .await;
    let h = env.harness(long.clone(), e);
    let err = long
        .issue(&spec(&h, TimeDelta::hours(2)))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::ProviderRejected { message, .. } if message.contains("INVALID_ARGUMENT")),
        "{err}"
    );
    env.fake.allow_extended_lifetime(SA);
    let issued = long.issue(&spec(&h, TimeDelta::hours(2))).await.unwrap();
    assert!(issued.grant.expires_at > env.clock_now() + TimeDelta::minutes(119));
    env.assert_schema_clean();
}

#[tokio::test]
async fn targets_of_the_other_mode_are_refused_at_catalogue_load() {
    let env = env();
    let tokens = env.provider(Mode::Token).await;
    let bindings = env.provider(Mode::Binding).await;
    let err = tokens
        .validate(&entitlement(tokens.as_ref(), binding_target(), 1))
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
    let err = bindings
        .validate(&entitlement(bindings.as_ref(), token_target(), 1))
        .unwrap_err();
    assert!(err.to_string().contains("mode"), "{err}");
    let basic = serde_json::json!({"resource": PROJECT, "role": "roles/editor"});
    let err = bindings
        .validate(&entitlement(bindings.as_ref(), basic, 1))
        .unwrap_err();
    assert!(err.to_string().contains("basic role"), "{err}");
    assert_eq!(
        env.fake.calls("getIamPolicy") + env.fake.calls("generateAccessToken"),
        0
    );
}
