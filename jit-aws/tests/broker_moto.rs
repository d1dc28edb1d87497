//! The `aws-config` credentials provider backed by a real broker running
//! jit-aws against moto. (The lifecycle secret scan is in `secrets_moto.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use aws_credential_types::provider::ProvideCredentials;
use common::*;
use jit_aws::BrokerCredentialsProvider;
use jit_core::{AccessRequest, ListFilter, Principal, State};

#[tokio::test(flavor = "multi_thread")]
async fn sdk_clients_run_on_jit_credentials_and_renew_them() {
    let (broker, role_arn) = broker(true).await;
    let alice = Principal::new("alice@example.com")
        .unwrap()
        .with_group("oncall");
    let request = AccessRequest::new("aws-auto", "20m".parse().unwrap(), "service traffic");
    let provider = BrokerCredentialsProvider::new(broker.clone(), alice.clone(), request.clone());
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(jit_aws::client::http_client())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(moto_url())
        .credentials_provider(provider)
        .load()
        .await;
    let me = aws_sdk_sts::Client::new(&sdk)
        .get_caller_identity()
        .send()
        .await
        .unwrap();
    let role_name = role_arn.rsplit('/').next().unwrap();
    let arn = me.arn().unwrap();
    assert!(
        arn.starts_with(&format!(
            "arn:aws:sts::{ACCOUNT}:assumed-role/{role_name}/jit-"
        )),
        "{arn}"
    );
    let requests = broker.list(&ListFilter::default()).await.unwrap();
    assert_eq!(requests.len(), 1);
    let grant = requests[0].grant.as_ref().unwrap();
    assert!(
        arn.ends_with(&jit_core::provider::external_name(grant.id)),
        "{arn}"
    );

    // Cached: a second call makes no new request.
    let direct = BrokerCredentialsProvider::new(broker.clone(), alice.clone(), request.clone());
    let first = direct.provide_credentials().await.unwrap();
    let again = direct.provide_credentials().await.unwrap();
    assert_eq!(first.access_key_id(), again.access_key_id());
    assert_eq!(broker.list(&ListFilter::default()).await.unwrap().len(), 2);

    // Renewed when within `refresh_before` of expiry: a new, audited request.
    let eager = BrokerCredentialsProvider::new(broker.clone(), alice, request)
        .refresh_before(Duration::from_secs(3600));
    let a = eager.provide_credentials().await.unwrap();
    let b = eager.provide_credentials().await.unwrap();
    assert_ne!(a.access_key_id(), b.access_key_id());
    assert_eq!(broker.list(&ListFilter::default()).await.unwrap().len(), 4);
    assert!(format!("{eager:?}").contains("aws-auto"));
    assert!(!format!("{a:?}").contains(a.secret_access_key()));
}

#[tokio::test(flavor = "multi_thread")]
async fn pending_approval_then_issue_as_the_requester() {
    let (broker, _) = broker(false).await;
    let alice = Principal::new("alice@example.com")
        .unwrap()
        .with_group("oncall");
    let lead = Principal::new("lena").unwrap().with_group("leads");
    let provider = BrokerCredentialsProvider::new(
        broker.clone(),
        alice,
        AccessRequest::new("aws-approved", "20m".parse().unwrap(), "needs a lead"),
    );
    let err = provider.provide_credentials().await.unwrap_err();
    assert!(
        error_chain(&err).contains("waiting for approval"),
        "{err:?}"
    );
    let pending = broker.list(&ListFilter::default()).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].state, State::Pending);
    broker.approve(&lead, pending[0].id, "ok").await.unwrap();
    let creds = provider.provide_credentials().await.unwrap();
    assert!(creds.access_key_id().starts_with("ASIA") || !creds.access_key_id().is_empty());
    assert_eq!(provider.current_request().await, Some(pending[0].id));
    assert_eq!(
        broker.get(pending[0].id).await.unwrap().state,
        State::Active
    );

    // Not eligible: a denial, reported as a credentials error.
    let mallory = Principal::new("mallory").unwrap();
    let denied = BrokerCredentialsProvider::new(
        broker,
        mallory,
        AccessRequest::new("aws-auto", "20m".parse().unwrap(), "x"),
    );
    let err = denied.provide_credentials().await.unwrap_err();
    assert!(error_chain(&err).contains("denied"), "{err:?}");
}

/// The error and its sources, joined (the credentials error wraps ours).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

// Regression (issue 10 item 4): the SDK's identity cache kept the
// credentials until 5 to 10 seconds before their real expiry and only then
// asked the provider again, so `refresh_before` never took effect in an SDK
// client and a renewal that needed approval failed right at expiry.
#[tokio::test(flavor = "multi_thread")]
async fn the_sdk_identity_cache_renews_refresh_before_ahead_of_expiry() {
    let (broker, _) = broker(true).await;
    let alice = Principal::new("alice@example.com")
        .unwrap()
        .with_group("oncall");
    let request = AccessRequest::new("aws-auto", "20m".parse().unwrap(), "service traffic");
    // 20-minute grants renewed 19m57s ahead: due three seconds after issue.
    let provider = BrokerCredentialsProvider::new(broker.clone(), alice, request)
        .refresh_before(Duration::from_secs(19 * 60 + 57));
    let direct = provider.provide_credentials().await.unwrap();
    let grant_end = broker.list(&ListFilter::default()).await.unwrap()[0]
        .ends_at()
        .unwrap();
    let told = chrono::DateTime::<chrono::Utc>::from(direct.expiry().unwrap());
    assert_eq!(
        told,
        grant_end - chrono::TimeDelta::seconds(19 * 60 + 57),
        "the sdk is told the renewal time, not the real expiry"
    );

    let provider = BrokerCredentialsProvider::new(
        broker.clone(),
        Principal::new("bob@example.com")
            .unwrap()
            .with_group("oncall"),
        AccessRequest::new("aws-auto", "20m".parse().unwrap(), "service traffic"),
    )
    .refresh_before(Duration::from_secs(19 * 60 + 57));
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(jit_aws::client::http_client())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(moto_url())
        .credentials_provider(provider)
        .load()
        .await;
    let sts = aws_sdk_sts::Client::new(&sdk);
    let first = sts.get_caller_identity().send().await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let second = sts.get_caller_identity().send().await.unwrap();
    assert_ne!(
        first.arn(),
        second.arn(),
        "the sdk kept the first grant past its renewal time"
    );
    let bobs = broker
        .list(&ListFilter::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.requester.id.as_str() == "bob@example.com")
        .count();
    assert_eq!(bobs, 2);
}
