//! The local provider: conformance suite, token verification and the tower layer.
#![cfg(all(feature = "testing", feature = "tower"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::routing::get;
use axum::{Extension, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::TimeDelta;
use http::{Request, StatusCode};
use jit_core::local::{
    LocalClaims, LocalKey, LocalProvider, LocalTokenLayer, RevocationList, Verifier,
    REVOCATION_RETENTION,
};
use jit_core::testing::provider::{self as conformance, local_harness, ProviderHarness};
use jit_core::{
    Clock, ConfigError, Credentials, Entitlement, Error, GrantDuration, GrantSpec, Issued,
    ManualClock, Provider, RequestError, RevocationKind, TokenError,
};
use tower::ServiceExt;

const AUDIENCE: &str = "conformance-api";

// ---------------------------------------------------------------- conformance

#[tokio::test]
async fn conformance_run_all() {
    let (h, _) = local_harness();
    conformance::run_all(&h).await;
}

#[tokio::test]
async fn conformance_issue_then_expire() {
    let (h, _) = local_harness();
    conformance::check_issue_then_expire(&h).await;
}

#[tokio::test]
async fn conformance_revoke_idempotent() {
    let (h, _) = local_harness();
    conformance::check_revoke_idempotent(&h).await;
}

#[tokio::test]
async fn conformance_issue_idempotent() {
    let (h, _) = local_harness();
    conformance::check_issue_idempotent(&h).await;
}

#[tokio::test]
async fn conformance_duration_limits() {
    let (h, _) = local_harness();
    conformance::check_duration_limits(&h).await;
}

#[tokio::test]
async fn conformance_reconcile_after_crash() {
    let (h, _) = local_harness();
    conformance::check_reconcile_after_crash(&h).await;
}

#[tokio::test]
async fn conformance_revoke_by_name() {
    let (h, _) = local_harness();
    conformance::check_revoke_by_name(&h).await;
}

#[tokio::test]
async fn conformance_secrets_absent() {
    let (h, _) = local_harness();
    conformance::check_secrets_absent(&h).await;
}

/// The suite must be able to fail: a provider whose tokens outlive the window
/// (here, a verifier with a frozen clock) is caught by the expiry check.
#[tokio::test]
#[should_panic(expected = "credentials still work after the window ended")]
async fn conformance_catches_a_token_that_does_not_expire() {
    let (mut h, provider) = local_harness();
    let frozen = ManualClock::starting_now();
    h.probe = Arc::new(conformance::LocalTokenProbe {
        verifier: provider.verifier().with_clock(Arc::new(frozen)),
    });
    conformance::check_issue_then_expire(&h).await;
}

#[tokio::test]
#[should_panic(expected = "credentials still work after revoke")]
async fn conformance_catches_a_revocation_that_does_nothing() {
    let (mut h, provider) = local_harness();
    // A verifier reading another revocation list never sees the revocation.
    h.probe = Arc::new(conformance::LocalTokenProbe {
        verifier: Verifier::new(
            provider.public_key(),
            provider.issuer(),
            RevocationList::new(),
        )
        .with_clock(h.clock.clone()),
    });
    conformance::check_revoke_idempotent(&h).await;
}

// ------------------------------------------------------------------- helpers

struct Fixture {
    h: ProviderHarness,
    provider: Arc<LocalProvider>,
    clock: ManualClock,
}

fn fixture() -> Fixture {
    let clock = ManualClock::starting_now();
    let provider = Arc::new(
        LocalProvider::builder(LocalKey::generate())
            .clock(Arc::new(clock.clone()))
            .build(),
    );
    let (mut h, _) = local_harness();
    h.provider = provider.clone();
    h.clock = Arc::new(clock.clone());
    Fixture { h, provider, clock }
}

fn token_of(issued: &Issued) -> String {
    match &issued.credentials {
        Credentials::LocalToken { token, .. } => token.expose().to_string(),
        other => panic!("not a local token: {other:?}"),
    }
}

async fn issue(f: &Fixture, minutes: i64) -> (GrantSpec, Issued) {
    let spec = conformance::spec(&f.h, TimeDelta::minutes(minutes));
    let issued = f.provider.issue(&spec).await.unwrap();
    (spec, issued)
}

fn b64(json: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(json.to_string())
}

fn entitlement(target: serde_json::Value) -> Entitlement {
    Entitlement {
        id: "svc.admin".into(),
        description: String::new(),
        provider: "local".into(),
        target,
        max_duration: GrantDuration::new(Duration::from_secs(3600)).unwrap(),
    }
}

// ------------------------------------------------------------------ provider

#[tokio::test]
async fn defaults_and_capabilities() {
    let p = LocalProvider::new(LocalKey::generate(), "jit-local");
    assert_eq!(p.name(), "local");
    let caps = p.capabilities();
    assert!(caps.native_expiry);
    assert_eq!(caps.max_duration, Duration::from_secs(12 * 3600));
    assert_eq!(caps.min_duration, Duration::from_secs(1));
    assert_eq!(caps.revocation, RevocationKind::Immediate);

    let p = LocalProvider::builder(LocalKey::generate())
        .name("tokens")
        .max_duration(Duration::from_secs(30 * 24 * 3600))
        .build();
    assert_eq!(p.name(), "tokens");
    assert_eq!(
        p.capabilities().max_duration,
        Duration::from_secs(7 * 24 * 3600)
    );
    assert!(format!("{p:?}").contains(&p.public_key().kid().to_string()));
}

#[tokio::test]
async fn token_carries_the_grant_claims() {
    let f = fixture();
    let (spec, issued) = issue(&f, 30).await;
    let token = token_of(&issued);

    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
    assert_eq!(header.kid.as_deref(), Some(f.provider.public_key().kid()));

    let claims = f.provider.verifier().verify(&token, AUDIENCE).unwrap();
    assert_eq!(claims.iss, "jit-local");
    assert_eq!(claims.sub, "conformance@example.com");
    assert_eq!(claims.aud, AUDIENCE);
    assert_eq!(claims.jti, spec.grant_id);
    assert_eq!(claims.rid, spec.request_id);
    assert_eq!(claims.ent, "local.conformance");
    assert_eq!(claims.scopes, vec!["read".to_string()]);
    assert!(claims.has_scope("read") && !claims.has_scope("write"));
    assert_eq!(claims.nbf, spec.starts_at.timestamp());
    assert_eq!(claims.exp, spec.ends_at.timestamp());
    assert_eq!(claims.iat, f.clock.now().timestamp());

    assert_eq!(issued.grant.provider, "local");
    assert_eq!(issued.grant.external_id, spec.external_name());
    assert_eq!(issued.grant.expires_at, claims.expires_at());
    assert!(issued.grant.expires_at <= spec.ends_at);
    assert_eq!(issued.credentials.expires_at(), issued.grant.expires_at);
    assert_eq!(issued.grant.details["jti"], spec.grant_id.to_string());
    assert_eq!(issued.grant.details["kid"], f.provider.public_key().kid());
    assert_eq!(issued.grant.details["audience"], AUDIENCE);
}

#[tokio::test]
async fn reissue_returns_the_same_token_and_one_ledger_entry() {
    let f = fixture();
    let (spec, first) = issue(&f, 30).await;
    f.clock.advance(TimeDelta::seconds(5));
    // A changed end must not extend the grant: the recorded one wins.
    let mut again = spec.clone();
    again.ends_at += TimeDelta::hours(1);
    let second = f.provider.issue(&again).await.unwrap();
    assert_eq!(token_of(&first), token_of(&second));
    assert_eq!(first.grant, second.grant);
    assert_eq!(
        f.provider.find(&spec).await.unwrap(),
        Some(first.grant.clone())
    );
}

#[tokio::test]
async fn over_max_is_refused_naming_the_limit() {
    let f = fixture();
    let spec = conformance::spec(&f.h, TimeDelta::hours(13));
    let err = f.provider.issue(&spec).await.err().unwrap();
    match err {
        Error::InvalidRequest(RequestError::DurationTooLong { requested, limit }) => {
            assert_eq!(requested, "13h");
            assert!(limit.contains("12h"), "{limit}");
        }
        other => panic!("wrong error: {other}"),
    }
    // Sub-second windows cannot be expressed in whole-second claims.
    let mut tiny = conformance::spec(&f.h, TimeDelta::zero());
    tiny.ends_at = tiny.starts_at + TimeDelta::milliseconds(500);
    assert!(matches!(
        f.provider.issue(&tiny).await,
        Err(Error::InvalidRequest(RequestError::ZeroDuration))
    ));
    let neg = conformance::spec(&f.h, TimeDelta::seconds(-5));
    assert!(matches!(
        f.provider.issue(&neg).await,
        Err(Error::InvalidRequest(RequestError::NegativeDuration(_)))
    ));
    assert!(f.provider.find(&neg).await.unwrap().is_none());
}

#[tokio::test]
async fn invalid_targets_are_refused_with_typed_errors() {
    let p = LocalProvider::new(LocalKey::generate(), "jit-local");
    p.validate(&entitlement(serde_json::json!({"audience": "svc"})))
        .unwrap();
    p.validate(&entitlement(
        serde_json::json!({"audience": "svc", "scopes": []}),
    ))
    .unwrap();

    let cases = [
        (serde_json::json!("svc"), "target"),
        (serde_json::json!(null), "target"),
        (serde_json::json!({}), "target.audience"),
        (serde_json::json!({"audience": ""}), "target.audience"),
        (serde_json::json!({"audience": 7}), "target.audience"),
        (
            serde_json::json!({"audience": "two words"}),
            "target.audience",
        ),
        (
            serde_json::json!({"audience": "svc", "scopes": "read"}),
            "target.scopes",
        ),
        (
            serde_json::json!({"audience": "svc", "scopes": [1]}),
            "target.scopes",
        ),
        (
            serde_json::json!({"audience": "svc", "scopes": [""]}),
            "target.scopes",
        ),
        (
            serde_json::json!({"audience": "svc", "role": "admin"}),
            "target.role",
        ),
    ];
    for (target, expected_field) in cases {
        let label = target.to_string();
        match p.validate(&entitlement(target.clone())) {
            Err(Error::Config(ConfigError::InvalidField {
                entitlement,
                field,
                message,
            })) => {
                assert_eq!(entitlement, "svc.admin", "{label}");
                assert_eq!(field, expected_field, "{label}");
                assert!(!message.is_empty());
            }
            other => panic!("{label}: expected InvalidField, got {other:?}"),
        }
        // `issue` refuses the same target before recording anything.
        let f = fixture();
        let mut spec = conformance::spec(&f.h, TimeDelta::minutes(5));
        spec.entitlement = entitlement(target);
        assert!(
            matches!(f.provider.issue(&spec).await, Err(Error::Config(_))),
            "{label}"
        );
        assert!(f.provider.find(&spec).await.unwrap().is_none(), "{label}");
    }
}

#[tokio::test]
async fn revoke_puts_the_grant_on_the_shared_list_and_prunes_old_entries() {
    let f = fixture();
    let (spec, issued) = issue(&f, 10).await;
    let token = token_of(&issued);
    let verifier = f.provider.verifier();
    f.provider.revoke(&issued.grant).await.unwrap();
    f.provider.revoke(&issued.grant).await.unwrap();
    assert_eq!(f.provider.revocations().len(), 1);
    assert_eq!(
        verifier.verify(&token, AUDIENCE),
        Err(TokenError::Revoked(spec.grant_id.to_string()))
    );

    // Past the token's end plus the retention, the entry is pruned by the next revoke.
    f.clock.advance(
        TimeDelta::minutes(10) + TimeDelta::seconds(REVOCATION_RETENTION.as_secs() as i64 + 1),
    );
    let (_, other) = issue(&f, 10).await;
    f.provider.revoke(&other.grant).await.unwrap();
    assert_eq!(f.provider.revocations().len(), 1);
    assert!(!f
        .provider
        .revocations()
        .is_revoked(&spec.grant_id.to_string()));
    assert_eq!(verifier.verify(&token, AUDIENCE), Err(TokenError::Expired));

    // A record without the derived name or `details.jti` cannot be revoked: typed error.
    let mut garbled = other.grant.clone();
    garbled.external_id = "someone-else".into();
    garbled.details = serde_json::Value::Null;
    assert!(matches!(
        f.provider.revoke(&garbled).await,
        Err(Error::ProviderRejected {
            operation: "revoke",
            ..
        })
    ));
}

// ------------------------------------------------------------------ verifier

#[tokio::test]
async fn expiry_nbf_and_leeway_follow_the_injected_clock() {
    let f = fixture();
    let (spec, issued) = issue(&f, 10).await;
    let token = token_of(&issued);
    let strict = f.provider.verifier();
    let lenient = f.provider.verifier().with_leeway(Duration::from_secs(30));

    f.clock.set(spec.ends_at - TimeDelta::seconds(1));
    assert!(strict.verify(&token, AUDIENCE).is_ok());
    f.clock.set(spec.ends_at);
    assert_eq!(strict.verify(&token, AUDIENCE), Err(TokenError::Expired));
    f.clock.set(spec.ends_at + TimeDelta::seconds(10));
    assert!(lenient.verify(&token, AUDIENCE).is_ok());
    f.clock.set(spec.ends_at + TimeDelta::seconds(30));
    assert_eq!(lenient.verify(&token, AUDIENCE), Err(TokenError::Expired));

    // A scheduled grant's token does not work before its start.
    let f = fixture();
    let mut later = conformance::spec(&f.h, TimeDelta::minutes(10));
    later.starts_at += TimeDelta::minutes(5);
    later.ends_at += TimeDelta::minutes(5);
    let token = token_of(&f.provider.issue(&later).await.unwrap());
    assert!(matches!(
        f.provider.verifier().verify(&token, AUDIENCE),
        Err(TokenError::Invalid(_))
    ));
    f.clock.advance(TimeDelta::minutes(5));
    assert!(f.provider.verifier().verify(&token, AUDIENCE).is_ok());
}

#[tokio::test]
async fn wrong_audience_and_issuer_are_rejected() {
    let f = fixture();
    let (_, issued) = issue(&f, 10).await;
    let token = token_of(&issued);
    assert_eq!(
        f.provider.verifier().verify(&token, "billing-api"),
        Err(TokenError::WrongAudience("billing-api".into()))
    );
    let other_issuer = Verifier::new(
        f.provider.public_key(),
        "someone-else",
        RevocationList::new(),
    )
    .with_clock(f.h.clock.clone());
    assert!(matches!(
        other_issuer.verify(&token, AUDIENCE),
        Err(TokenError::Invalid(_))
    ));
    assert_eq!(
        f.provider.verifier().verify("  ", AUDIENCE),
        Err(TokenError::Missing)
    );
    assert!(matches!(
        f.provider.verifier().verify("not-a-jwt", AUDIENCE),
        Err(TokenError::Invalid(_))
    ));
}

#[tokio::test]
async fn tampered_signature_or_claims_are_rejected() {
    let f = fixture();
    let (_, issued) = issue(&f, 10).await;
    let token = token_of(&issued);
    let verifier = f.provider.verifier();
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);

    // Claims changed, signature kept.
    let mut claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    claims["sub"] = "mallory@example.com".into();
    let forged = format!("{}.{}.{}", parts[0], b64(&claims), parts[2]);
    assert_eq!(
        verifier.verify(&forged, AUDIENCE),
        Err(TokenError::Invalid("bad signature".into()))
    );

    // Signature bytes changed.
    let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    sig[0] ^= 0x01;
    let forged = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(sig));
    assert_eq!(
        verifier.verify(&forged, AUDIENCE),
        Err(TokenError::Invalid("bad signature".into()))
    );

    // Signature removed.
    let forged = format!("{}.{}.", parts[0], parts[1]);
    assert!(matches!(
        verifier.verify(&forged, AUDIENCE),
        Err(TokenError::Invalid(_))
    ));
}

#[tokio::test]
async fn alg_none_hs256_and_other_algorithms_are_rejected() {
    let f = fixture();
    let (_, issued) = issue(&f, 10).await;
    let token = token_of(&issued);
    let verifier = f.provider.verifier();
    let claims = verifier.verify(&token, AUDIENCE).unwrap();
    let kid = f.provider.public_key().kid().to_string();
    let payload = token.split('.').nth(1).unwrap().to_string();

    // `alg: none` with and without an empty signature.
    for alg in ["none", "None", "NONE"] {
        let header = b64(&serde_json::json!({"alg": alg, "typ": "JWT", "kid": kid}));
        for forged in [
            format!("{header}.{payload}."),
            format!("{header}.{payload}"),
        ] {
            assert!(
                matches!(
                    verifier.verify(&forged, AUDIENCE),
                    Err(TokenError::Invalid(_))
                ),
                "{alg} accepted"
            );
        }
    }

    // HS256 keyed with the public key (raw bytes, and its base64 text): the
    // classic algorithm confusion.
    let public = f.provider.public_key();
    for secret in [public.as_bytes().to_vec(), public.to_b64().into_bytes()] {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some(kid.clone());
        let forged = jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(&secret),
        )
        .unwrap();
        match verifier.verify(&forged, AUDIENCE) {
            Err(TokenError::Invalid(m)) => assert!(m.contains("HS256"), "{m}"),
            other => panic!("HS256 token: {other:?}"),
        }
    }

    // Asymmetric algorithms other than EdDSA, with the original signature.
    let sig = token.split('.').nth(2).unwrap();
    for alg in ["RS256", "ES256", "PS256"] {
        let header = b64(&serde_json::json!({"alg": alg, "kid": kid}));
        let forged = format!("{header}.{payload}.{sig}");
        assert!(
            matches!(
                verifier.verify(&forged, AUDIENCE),
                Err(TokenError::Invalid(_))
            ),
            "{alg} accepted"
        );
    }

    // EdDSA with no `kid` is refused too: the key is never guessed.
    let header = b64(&serde_json::json!({"alg": "EdDSA"}));
    let forged = format!("{header}.{payload}.{sig}");
    assert!(matches!(
        verifier.verify(&forged, AUDIENCE),
        Err(TokenError::Invalid(_))
    ));
}

#[tokio::test]
async fn key_rotation_accepts_known_kids_only() {
    let clock = ManualClock::starting_now();
    let revocations = RevocationList::new();
    let make = || {
        Arc::new(
            LocalProvider::builder(LocalKey::generate())
                .clock(Arc::new(clock.clone()))
                .revocations(revocations.clone())
                .build(),
        )
    };
    let (old, new, stranger) = (make(), make(), make());
    let (mut h, _) = local_harness();
    h.clock = Arc::new(clock.clone());
    let spec = conformance::spec(&h, TimeDelta::minutes(10));
    let t_old = token_of(&old.issue(&spec).await.unwrap());
    let t_new = token_of(&new.issue(&spec).await.unwrap());
    let t_stranger = token_of(&stranger.issue(&spec).await.unwrap());

    let both = Verifier::new(old.public_key(), "jit-local", revocations.clone())
        .with_key(new.public_key())
        .with_clock(Arc::new(clock.clone()));
    assert_eq!(both.kids().len(), 2);
    assert!(both.verify(&t_old, AUDIENCE).is_ok());
    assert!(both.verify(&t_new, AUDIENCE).is_ok());
    match both.verify(&t_stranger, AUDIENCE) {
        Err(TokenError::Invalid(m)) => assert!(m.contains("unknown key id"), "{m}"),
        other => panic!("unknown kid: {other:?}"),
    }

    // A token signed by the stranger but claiming a trusted kid fails the signature.
    let parts: Vec<&str> = t_stranger.split('.').collect();
    let header =
        b64(&serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": old.public_key().kid()}));
    let forged = format!("{header}.{}.{}", parts[1], parts[2]);
    assert_eq!(
        both.verify(&forged, AUDIENCE),
        Err(TokenError::Invalid("bad signature".into()))
    );

    // Revocation through any provider sharing the list reaches the verifier.
    new.revoke(&new.issue(&spec).await.unwrap().grant)
        .await
        .unwrap();
    assert!(matches!(
        both.verify(&t_old, AUDIENCE),
        Err(TokenError::Revoked(_))
    ));
}

#[tokio::test]
async fn key_survives_pem_round_trip_for_verification() {
    let key = LocalKey::generate();
    let pem = key.to_pkcs8_pem().unwrap();
    let public_b64 = key.public_key_b64();
    let clock = ManualClock::starting_now();
    let provider = LocalProvider::builder(LocalKey::from_pkcs8_pem(pem.expose()).unwrap())
        .clock(Arc::new(clock.clone()))
        .build();
    let (mut h, _) = local_harness();
    h.clock = Arc::new(clock.clone());
    let token = token_of(
        &provider
            .issue(&conformance::spec(&h, TimeDelta::minutes(1)))
            .await
            .unwrap(),
    );
    let verifier = Verifier::new(
        jit_core::local::LocalPublicKey::from_b64(&public_b64).unwrap(),
        "jit-local",
        provider.revocations().clone(),
    )
    .with_clock(Arc::new(clock));
    assert!(verifier.verify(&token, AUDIENCE).is_ok());
    assert!(matches!(
        LocalKey::from_pkcs8_pem("not a key"),
        Err(Error::Config(ConfigError::InvalidField { .. }))
    ));
}

// --------------------------------------------------------------------- layer

async fn call(app: &Router, auth: Option<String>) -> (StatusCode, http::HeaderMap, String) {
    let mut req = Request::builder().uri("/admin");
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, headers, String::from_utf8(body.to_vec()).unwrap())
}

fn assert_unauthorized(status: StatusCode, headers: &http::HeaderMap, body: &str, secret: &str) {
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let challenge = headers.get("www-authenticate").unwrap().to_str().unwrap();
    assert!(challenge.starts_with("Bearer"), "{challenge}");
    assert_eq!(headers.get("content-type").unwrap(), "application/json");
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["error"], "unauthorized");
    assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()));
    if !secret.is_empty() {
        assert!(!body.contains(secret), "the token leaked into the 401 body");
    }
}

#[tokio::test]
async fn layer_admits_valid_tokens_only() {
    let f = fixture();
    let app = Router::new()
        .route(
            "/admin",
            get(|Extension(c): Extension<LocalClaims>| async move {
                format!("{} {} {}", c.sub, c.jti, c.scopes.join(","))
            }),
        )
        .layer(LocalTokenLayer::new(f.provider.verifier(), AUDIENCE));

    // No token, another scheme, garbage.
    let (s, h, b) = call(&app, None).await;
    assert_unauthorized(s, &h, &b, "");
    assert_eq!(h.get("www-authenticate").unwrap(), "Bearer");
    let (s, h, b) = call(&app, Some("Basic dXNlcjpwYXNz".into())).await;
    assert_unauthorized(s, &h, &b, "");
    let (s, h, b) = call(&app, Some("Bearer not.a.token".into())).await;
    assert_unauthorized(s, &h, &b, "");

    // Valid.
    let (spec, issued) = issue(&f, 10).await;
    let token = token_of(&issued);
    let (s, _, b) = call(&app, Some(format!("Bearer {token}"))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b, format!("conformance@example.com {} read", spec.grant_id));
    let (s, _, _) = call(&app, Some(format!("bearer  {token} "))).await;
    assert_eq!(s, StatusCode::OK);

    // Tampered.
    let mut bad = token.clone();
    bad.pop();
    bad.push(if token.ends_with('A') { 'B' } else { 'A' });
    let (s, h, b) = call(&app, Some(format!("Bearer {bad}"))).await;
    assert_unauthorized(s, &h, &b, &token);

    // Another service's token.
    let other = Router::new()
        .route("/admin", get(|| async { "billing" }))
        .layer(LocalTokenLayer::new(f.provider.verifier(), "billing-api"));
    let (s, h, b) = call(&other, Some(format!("Bearer {token}"))).await;
    assert_unauthorized(s, &h, &b, &token);

    // Revoked.
    f.provider.revoke(&issued.grant).await.unwrap();
    let (s, h, b) = call(&app, Some(format!("Bearer {token}"))).await;
    assert_unauthorized(s, &h, &b, &token);
    assert!(b.contains("revoked"), "{b}");

    // Expired: a fresh token, then time moves past its end.
    let (_, issued) = issue(&f, 10).await;
    let token = token_of(&issued);
    let (s, _, _) = call(&app, Some(format!("Bearer {token}"))).await;
    assert_eq!(s, StatusCode::OK);
    f.clock.advance(TimeDelta::minutes(10));
    let (s, h, b) = call(&app, Some(format!("Bearer {token}"))).await;
    assert_unauthorized(s, &h, &b, &token);
    assert!(b.contains("expired"), "{b}");
}

/// Rotation: the new provider signs with its own key, and its verifier still
/// accepts tokens signed with the previous key until that key is dropped.
#[tokio::test]
async fn a_previous_key_keeps_earlier_tokens_valid_and_signs_nothing() {
    let f = fixture();
    let (old_spec, old_issued) = issue(&f, 10).await;
    let old_token = token_of(&old_issued);
    let old_key = f.provider.public_key();

    let rotated = LocalProvider::builder(LocalKey::generate())
        .clock(Arc::new(f.clock.clone()))
        .previous_key(old_key.clone())
        .previous_key(old_key.clone())
        .build();
    let kids: Vec<String> = rotated
        .public_keys()
        .iter()
        .map(|k| k.kid().to_string())
        .collect();
    assert_eq!(
        kids,
        [rotated.public_key().kid(), old_key.kid()],
        "signing key first, no duplicates"
    );
    let audience = AUDIENCE;
    let claims = rotated.verifier().verify(&old_token, audience).unwrap();
    assert_eq!(claims.jti, old_spec.grant_id);

    // New tokens carry the new key id.
    let spec = conformance::spec(&f.h, TimeDelta::minutes(10));
    let new_token = token_of(&rotated.issue(&spec).await.unwrap());
    let header = jsonwebtoken::decode_header(&new_token).unwrap();
    assert_eq!(header.kid.as_deref(), Some(rotated.public_key().kid()));

    // Without the previous key, the old token is refused.
    let finished = LocalProvider::builder(LocalKey::generate()).build();
    assert!(finished.verifier().verify(&old_token, audience).is_err());
}
