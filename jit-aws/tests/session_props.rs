//! Property tests: any requester id the core accepts yields a valid
//! `SourceIdentity` and valid session tags, and different ids never yield
//! the same value, including ids built to collide after sanitizing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use jit_aws::session::{
    check_tag_value, check_tags, is_valid_name, session_tags, source_identity, tag_value,
};
use jit_core::{Entitlement, GrantDuration, GrantId, GrantSpec, Principal, PrincipalId, RequestId};
use proptest::prelude::*;

/// Hostile text: spaces, `aws:` prefixes, astral characters, combining
/// marks, punctuation STS refuses, up to the core's 256-character limit.
fn hostile() -> impl Strategy<Value = String> {
    let pieces = prop_oneof![
        Just("aws:".to_string()),
        Just("AWS:".to_string()),
        Just(" ".to_string()),
        Just("ü".to_string()),
        Just("😀".to_string()),
        Just("e\u{301}".to_string()),
        Just("日本".to_string()),
        Just("#;'\"\\".to_string()),
        Just(".0123456789abcdef".to_string()),
        "[a-zA-Z0-9_+=,.@-]{1,20}",
        "\\PC{1,8}",
    ];
    prop::collection::vec(pieces, 1..24)
        .prop_map(|v| v.concat())
        .prop_filter("the core must accept it", |s| {
            PrincipalId::new(s.clone()).is_ok()
        })
}

fn spec_for(requester: &str, ticket: &str) -> GrantSpec {
    let now = chrono::Utc::now();
    GrantSpec {
        grant_id: GrantId::new(),
        request_id: RequestId::new(),
        subject: Principal::new(requester).unwrap(),
        entitlement: Entitlement {
            id: "prod/read-only:v1".into(),
            description: String::new(),
            provider: "aws".into(),
            target: serde_json::json!({}),
            max_duration: GrantDuration::new(std::time::Duration::from_secs(3600)).unwrap(),
        },
        starts_at: now,
        ends_at: now + chrono::TimeDelta::hours(1),
        justification: String::new(),
        ticket: Some(ticket.to_string()),
    }
}

proptest! {
    #[test]
    fn derived_values_are_always_valid(id in hostile(), ticket in "\\PC{1,128}") {
        let si = source_identity(&id);
        prop_assert!(is_valid_name(&si), "{id:?} -> {si:?}");
        prop_assert!(!si.to_ascii_lowercase().starts_with("aws:"));
        let tv = tag_value(&id);
        prop_assert!(check_tag_value("k", &tv).is_ok(), "{id:?} -> {tv:?}");
        let tags = session_tags(&spec_for(&id, &ticket), &[]);
        prop_assert!(check_tags(&tags).is_ok(), "{tags:?}");
    }

    #[test]
    fn different_ids_never_share_a_value(a in hostile(), b in hostile()) {
        prop_assume!(a != b);
        prop_assert_ne!(source_identity(&a), source_identity(&b));
        prop_assert_ne!(tag_value(&a), tag_value(&b));
    }

    #[test]
    fn ids_that_sanitize_alike_stay_distinct(
        base in "[a-z]{1,60}",
        pos in 0usize..60,
        x in prop::sample::select(vec![' ', '#', 'ü', ':', '/', '!']),
        y in prop::sample::select(vec![' ', '#', 'ü', ':', '/', '!', '_']),
    ) {
        prop_assume!(x != y);
        let at = pos.min(base.len());
        let a = format!("{}{x}{}", &base[..at], &base[at..]);
        let b = format!("{}{y}{}", &base[..at], &base[at..]);
        prop_assume!(PrincipalId::new(a.clone()).is_ok() && PrincipalId::new(b.clone()).is_ok());
        prop_assert_ne!(source_identity(&a), source_identity(&b));
        // The sanitized form of one id, taken as another person's id, maps elsewhere.
        let forged = source_identity(&a);
        if forged != a {
            prop_assert_ne!(source_identity(&forged), forged);
        }
    }
}

#[test]
fn the_issue_examples() {
    let long = "x".repeat(200);
    for id in [
        "alice smith",
        "ǅemal Ünal",
        long.as_str(),
        "aws:root",
        "aws:federated-user/x",
    ] {
        let si = source_identity(id);
        assert!(is_valid_name(&si), "{id:?} -> {si:?}");
        assert_ne!(si, id);
    }
    assert_ne!(
        source_identity(&"x".repeat(200)),
        source_identity(&"x".repeat(201))
    );
}
