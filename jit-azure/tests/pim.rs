//! jit-azure against the fake: the real azure_identity token flow over TLS,
//! PIM issue/find/revoke, policy limits, ARM errors, retries, secrets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use jit_azure::testing::{
    entitlement, reader_role, scope, subject, validate_against, RunningFake, ASSIGNMENTS_SPEC,
    CLIENT_SECRET, OBJECT_ID, SCHEDULE_REQUEST_SPEC,
};
use jit_azure::{AzureConfig, AzureProvider, Mode, OverPolicyMax};
use jit_core::testing::fake::Fault;
use jit_core::{
    Clock, Error, GrantId, GrantSpec, ManualClock, Principal, Provider, RequestError, RequestId,
    Secret,
};

fn spec(clock: &ManualClock, minutes: i64) -> GrantSpec {
    let now = clock.now();
    GrantSpec {
        grant_id: GrantId::new(),
        request_id: RequestId::new(),
        subject: subject(),
        entitlement: entitlement("azure"),
        starts_at: now,
        ends_at: now + TimeDelta::minutes(minutes),
        justification: "INC-42: look at the logs".into(),
        ticket: Some("INC-42".into()),
    }
}

struct Env {
    clock: ManualClock,
    fake: RunningFake,
}

fn env() -> Env {
    let clock = ManualClock::starting_now();
    let fake = RunningFake::start(clock.clone());
    fake.state.set_default_policy_max("PT8H");
    Env { clock, fake }
}

impl Env {
    fn provider(&self, f: impl FnOnce(AzureConfig) -> AzureConfig) -> AzureProvider {
        self.fake
            .provider(f(self.fake.config(Mode::Pim)), self.clock.clone())
    }

    fn puts(&self, part: &str) -> usize {
        self.fake
            .server
            .requests()
            .iter()
            .filter(|r| r.method == "PUT" && r.path.contains(part) && !r.faulted)
            .count()
    }
}

#[tokio::test]
async fn issue_uses_the_token_flow_and_sends_a_spec_valid_request() {
    let e = env();
    let p = e.provider(|c| c);
    let s = spec(&e.clock, 45);
    let issued = p.issue(&s).await.unwrap();

    // The token came from the fake's Entra endpoint through azure_identity.
    let reqs = e.fake.server.requests();
    let token = reqs
        .iter()
        .find(|r| r.path.ends_with("/oauth2/v2.0/token"))
        .expect("a token request");
    assert_eq!(
        token.form_param("grant_type").as_deref(),
        Some("client_credentials")
    );
    assert_eq!(
        token.form_param("scope"),
        Some(format!("{}/.default", e.fake.url()))
    );
    // ARM calls carried a bearer token (redacted in the record).
    let put = reqs
        .iter()
        .find(|r| r.method == "PUT")
        .expect("a schedule request PUT");
    assert!(put.header("authorization").unwrap().starts_with("Bearer "));
    assert_eq!(
        put.query_param("api-version").as_deref(),
        Some("2020-10-01")
    );

    // The body is what the issue asks for, and valid against the Swagger.
    let body = put.body_json().unwrap();
    assert_eq!(
        validate_against(
            SCHEDULE_REQUEST_SPEC,
            "RoleAssignmentScheduleRequest",
            &body,
            true
        ),
        Vec::<String>::new()
    );
    let p_ = &body["properties"];
    assert_eq!(p_["requestType"], "AdminAssign");
    assert_eq!(p_["principalId"], OBJECT_ID);
    assert_eq!(p_["roleDefinitionId"], reader_role());
    assert_eq!(p_["scheduleInfo"]["expiration"]["type"], "AfterDuration");
    // 45 minutes less the 5 s call allowance.
    assert_eq!(p_["scheduleInfo"]["expiration"]["duration"], "PT44M55S");
    assert_eq!(p_["ticketInfo"]["ticketNumber"], "INC-42");
    assert_eq!(p_["justification"], "INC-42: look at the logs");
    // The name is the grant's derived GUID.
    let name = jit_core::provider::naming::derived_uuid(s.grant_id, "issue").to_string();
    assert!(put.path.ends_with(&name), "{}", put.path);
    assert_eq!(issued.grant.external_id, name);

    // The end is the schedule's, within the window.
    assert!(issued.grant.expires_at <= s.ends_at);
    assert!(issued.grant.expires_at >= s.ends_at - TimeDelta::seconds(6));
    assert_eq!(
        e.fake
            .state
            .active_schedules(&scope(), OBJECT_ID, &reader_role()),
        1
    );
    assert_eq!(e.fake.state.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn native_expiry_and_revoke_after_it() {
    let e = env();
    let p = e.provider(|c| c);
    let s = spec(&e.clock, 30);
    let issued = p.issue(&s).await.unwrap();
    e.clock.advance(TimeDelta::minutes(31));
    assert_eq!(
        e.fake
            .state
            .active_schedules(&scope(), OBJECT_ID, &reader_role()),
        0,
        "the assignment outlived its schedule"
    );
    let before = e.puts("roleAssignmentScheduleRequests");
    p.revoke(&issued.grant).await.unwrap();
    assert_eq!(
        e.puts("roleAssignmentScheduleRequests"),
        before,
        "an expired grant needs no removal request"
    );
}

#[tokio::test]
async fn revoke_removes_the_schedule_and_is_idempotent() {
    let e = env();
    let p = e.provider(|c| c);
    let s = spec(&e.clock, 30);
    let issued = p.issue(&s).await.unwrap();
    p.revoke(&issued.grant).await.unwrap();
    assert_eq!(
        e.fake
            .state
            .active_schedules(&scope(), OBJECT_ID, &reader_role()),
        0
    );
    let remove = e
        .fake
        .server
        .requests()
        .into_iter()
        .rfind(|r| r.method == "PUT")
        .unwrap();
    let body = remove.body_json().unwrap();
    assert_eq!(body["properties"]["requestType"], "AdminRemove");
    assert_eq!(
        validate_against(
            SCHEDULE_REQUEST_SPEC,
            "RoleAssignmentScheduleRequest",
            &body,
            true
        ),
        Vec::<String>::new()
    );
    let name = jit_core::provider::naming::derived_uuid(s.grant_id, "revoke").to_string();
    assert!(remove.path.ends_with(&name));
    // Again: succeeds, no second removal request.
    let before = e.puts("roleAssignmentScheduleRequests");
    p.revoke(&issued.grant).await.unwrap();
    assert_eq!(e.puts("roleAssignmentScheduleRequests"), before);
}

#[tokio::test]
async fn a_removal_that_did_not_land_is_an_error_never_a_silent_success() {
    let e = env();
    let p = e.provider(|c| {
        c.with_provisioning_wait(Duration::from_millis(200), Duration::from_millis(20))
    });
    let issued = p.issue(&spec(&e.clock, 30)).await.unwrap();
    // ARM says "Revoked" but nothing was removed.
    let lie = e.fake.server.inject(
        Fault::respond(201)
            .method("PUT")
            .path_contains("roleAssignmentScheduleRequests")
            .json(serde_json::json!({"properties": {"status": "Revoked"}})),
    );
    let err = p.revoke(&issued.grant).await.unwrap_err();
    assert_eq!(lie.fired(), 1);
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert!(err.to_string().contains("still active"), "{err}");
    assert_eq!(
        e.fake
            .state
            .active_schedules(&scope(), OBJECT_ID, &reader_role()),
        1,
        "the fake still has the assignment, and the provider said so"
    );
    // A retry does remove it.
    p.revoke(&issued.grant).await.unwrap();
    assert_eq!(
        e.fake
            .state
            .active_schedules(&scope(), OBJECT_ID, &reader_role()),
        0
    );
}

#[tokio::test]
async fn a_failed_removal_request_does_not_block_the_next_name() {
    let e = env();
    let p = e.provider(|c| c);
    let s = spec(&e.clock, 30);
    let issued = p.issue(&s).await.unwrap();
    let failed = e.fake.server.inject(
        Fault::respond(201)
            .method("PUT")
            .path_contains("roleAssignmentScheduleRequests")
            .json(serde_json::json!({"properties": {"status": "Failed"}})),
    );
    p.revoke(&issued.grant).await.unwrap();
    assert_eq!(failed.fired(), 1);
    assert_eq!(
        e.fake
            .state
            .active_schedules(&scope(), OBJECT_ID, &reader_role()),
        0
    );
    let second = jit_core::provider::naming::derived_uuid(s.grant_id, "revoke-1").to_string();
    assert!(e
        .fake
        .server
        .requests()
        .iter()
        .any(|r| r.method == "PUT" && r.path.ends_with(&second) && !r.faulted));
}

#[tokio::test]
async fn find_after_a_crash_and_two_brokers_make_one_assignment() {
    let e = env();
    let a = Arc::new(e.provider(|c| c));
    let b = Arc::new(e.provider(|c| c));
    let s = spec(&e.clock, 30);
    let (x, y) = tokio::join!(a.issue(&s), b.issue(&s));
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(x.grant.external_id, y.grant.external_id);
    assert_eq!(x.grant.expires_at, y.grant.expires_at);
    assert_eq!(
        e.fake
            .state
            .active_schedules(&scope(), OBJECT_ID, &reader_role()),
        1
    );
    assert_eq!(e.fake.state.request_count(), 1);
    // A third provider (a restarted broker) finds it by the derived name.
    let c = e.provider(|c| c);
    let found = c.find(&s).await.unwrap().expect("found after restart");
    assert_eq!(found.external_id, x.grant.external_id);
    assert_eq!(found.expires_at, x.grant.expires_at);
    c.revoke(&found).await.unwrap();
    assert_eq!(
        e.fake
            .state
            .active_schedules(&scope(), OBJECT_ID, &reader_role()),
        0
    );
    // Two brokers revoking at once: both succeed, nothing is left.
    let again = spec(&e.clock, 30);
    let issued = a.issue(&again).await.unwrap();
    let (x, y) = tokio::join!(a.revoke(&issued.grant), b.revoke(&issued.grant));
    x.unwrap();
    y.unwrap();
    assert_eq!(
        e.fake
            .state
            .active_schedules(&scope(), OBJECT_ID, &reader_role()),
        0
    );
    // Never issued: nothing found.
    assert!(c.find(&spec(&e.clock, 30)).await.unwrap().is_none());
}

#[tokio::test]
async fn policy_maximum_is_read_once_then_clamps_or_refuses_before_the_put() {
    let e = env();
    e.fake.state.set_policy_max(&reader_role(), "PT1H");
    let p = e.provider(|c| c);
    let s = spec(&e.clock, 120);
    let issued = p.issue(&s).await.unwrap();
    assert_eq!(
        issued.grant.expires_at,
        e.clock.now() + TimeDelta::hours(1),
        "clamped to the policy's maximum"
    );
    p.revoke(&issued.grant).await.unwrap();
    let again = p.issue(&spec(&e.clock, 30)).await.unwrap();
    p.revoke(&again.grant).await.unwrap();
    let policy_reads = e
        .fake
        .server
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("roleManagementPolicyAssignments"))
        .count();
    assert_eq!(policy_reads, 1, "the policy is cached per scope and role");

    let refusing = e.provider(|c| c.with_over_policy_max(OverPolicyMax::Refuse));
    let before = e.puts("roleAssignmentScheduleRequests");
    match refusing.issue(&spec(&e.clock, 120)).await {
        Err(Error::InvalidRequest(RequestError::DurationTooLong { limit, .. })) => {
            assert!(limit.contains("role management policy"), "{limit}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(
        e.puts("roleAssignmentScheduleRequests"),
        before,
        "refused before the PUT"
    );
}

#[tokio::test]
async fn policy_validation_failure_from_arm_is_typed() {
    let e = env();
    // The policy lowers its maximum after the provider cached the old one.
    let p = e.provider(|c| c);
    let first = p.issue(&spec(&e.clock, 30)).await.unwrap();
    p.revoke(&first.grant).await.unwrap();
    e.fake.state.set_default_policy_max("PT10M");
    match p.issue(&spec(&e.clock, 60)).await {
        Err(Error::ProviderRejected { message, .. }) => {
            assert!(
                message.contains("RoleAssignmentRequestPolicyValidationFailed")
                    && message.contains("ExpirationRule"),
                "{message}"
            )
        }
        other => panic!("expected a policy rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn arm_errors_are_typed() {
    let e = env();
    let p = e.provider(|c| c);
    let first = p.issue(&spec(&e.clock, 30)).await.unwrap();
    // Another grant for the same principal, role and scope.
    match p.issue(&spec(&e.clock, 30)).await {
        Err(Error::ProviderRejected { message, .. }) => {
            assert!(message.contains("RoleAssignmentExists"), "{message}")
        }
        other => panic!("expected RoleAssignmentExists, got {other:?}"),
    }
    p.revoke(&first.grant).await.unwrap();

    e.fake.state.forget_role(&reader_role());
    match p.issue(&spec(&e.clock, 30)).await {
        Err(Error::ProviderRejected { message, .. }) => {
            assert!(message.contains("RoleDefinitionDoesNotExist"), "{message}")
        }
        other => panic!("expected RoleDefinitionDoesNotExist, got {other:?}"),
    }

    e.fake.state.forget_principal(OBJECT_ID);
    match p.issue(&spec(&e.clock, 30)).await {
        Err(Error::ProviderRejected { message, .. }) => {
            assert!(message.contains("PrincipalNotFound"), "{message}")
        }
        other => panic!("expected PrincipalNotFound, got {other:?}"),
    }
}

#[tokio::test]
async fn principal_problems_are_refused_before_any_call() {
    let e = env();
    let p = e.provider(|c| c);
    let mut s = spec(&e.clock, 30);
    s.subject = Principal::new("bob@example.com").unwrap();
    let err = p.issue(&s).await.unwrap_err();
    assert!(err.to_string().contains("azure_object_id"), "{err}");
    // The requester's side to fix, not the cloud's: a 400, not a 502.
    assert!(
        matches!(
            &err,
            Error::InvalidRequest(jit_core::RequestError::NoCloudIdentity { .. })
        ),
        "{err:?}"
    );
    assert_eq!(err.http_status(), 400);
    s.subject = Principal::new("bob@example.com")
        .unwrap()
        .with_attribute("azure_object_id", "not-a-guid");
    let err = p.issue(&s).await.unwrap_err();
    assert!(err.to_string().contains("not an object id"), "{err}");
    s.subject = subject().with_attribute("azure_principal_type", "Printer");
    assert!(p.issue(&s).await.is_err());
    let mut long_ticket = spec(&e.clock, 30);
    long_ticket.ticket = Some("T".repeat(101));
    assert!(matches!(
        p.issue(&long_ticket).await,
        Err(Error::InvalidRequest(RequestError::TextTooLong { .. }))
    ));
    assert_eq!(e.fake.server.request_count(), 0, "nothing reached azure");
}

#[tokio::test]
async fn throttling_is_retried_honouring_retry_after_then_typed() {
    let e = env();
    let p = e.provider(|c| c);
    let throttle =
        e.fake
            .server
            .inject(Fault::respond(429).method("PUT").retry_after_secs(1).json(
                serde_json::json!({"error": {"code": "TooManyRequests", "message": "slow down"}}),
            ));
    let started = std::time::Instant::now();
    p.issue(&spec(&e.clock, 30)).await.unwrap();
    assert_eq!(throttle.fired(), 1);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "retry-after was not honoured"
    );

    // Without retries, the 429 reaches the caller as Throttled with its Retry-After.
    let e = env();
    let p = e.provider(|c| c.with_max_retries(0));
    e.fake.server.inject(
        Fault::respond(429).method("PUT").retry_after_secs(7).json(
            serde_json::json!({"error": {"code": "TooManyRequests", "message": "slow down"}}),
        ),
    );
    match p.issue(&spec(&e.clock, 30)).await {
        Err(Error::Throttled { retry_after, .. }) => {
            assert_eq!(retry_after, Some(Duration::from_secs(7)))
        }
        other => panic!("expected throttled, got {other:?}"),
    }
}

#[tokio::test]
async fn server_errors_are_retried_with_a_bound() {
    let e = env();
    let p = e.provider(|c| c.with_max_retries(2));
    let down = e
        .fake
        .server
        .inject(Fault::respond(503).method("PUT").times(10));
    match p.issue(&spec(&e.clock, 30)).await {
        Err(Error::Unavailable { .. }) => {}
        other => panic!("expected unavailable, got {other:?}"),
    }
    assert_eq!(down.fired(), 3, "one try and two retries");
}

#[tokio::test]
async fn pending_provisioning_is_awaited_and_approval_is_refused() {
    let e = env();
    e.fake.state.set_pending_reads(2);
    let p = e.provider(|c| c);
    let issued = p.issue(&spec(&e.clock, 30)).await.unwrap();
    assert_eq!(issued.grant.details["status"], "Provisioned");
    p.revoke(&issued.grant).await.unwrap();

    e.fake.state.set_pending_reads(0);
    e.fake.state.set_approval_required(true);
    match p.issue(&spec(&e.clock, 30)).await {
        Err(Error::ProviderRejected { message, .. }) => {
            assert!(message.contains("PendingApproval"), "{message}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(
        e.fake
            .server
            .requests()
            .iter()
            .any(|r| r.method == "POST" && r.path.ends_with("/cancel")),
        "the pending request was cancelled"
    );
}

#[tokio::test]
async fn a_wrong_secret_fails_without_showing_it() {
    let e = env();
    let mut config = e.fake.config(Mode::Pim);
    let wrong = "wrong-secret-value-XYZ";
    config.client_secret = Some(Secret::new(wrong));
    let p = e.fake.provider(config, e.clock.clone());
    let err = p.issue(&spec(&e.clock, 30)).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    let text = format!("{err} {err:?} {p:?}");
    assert!(
        !text.contains(wrong) && !text.contains(CLIENT_SECRET),
        "{text}"
    );
    // Nothing recorded by the fake carries a secret or a token either.
    for r in e.fake.server.requests() {
        let all = format!("{r:?}");
        assert!(
            !all.contains(wrong) && !all.contains("fake-token-"),
            "{all}"
        );
    }
}

#[tokio::test]
async fn the_fake_checks_api_version_and_tokens() {
    let e = env();
    let client = jit_azure::client::https_client(&jit_azure::client::pem_certificates(
        e.fake.server.ca_pem(),
    ))
    .unwrap();
    let url = format!(
        "{}{}/providers/Microsoft.Authorization/roleAssignmentSchedules",
        e.fake.url(),
        scope()
    );
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "AuthenticationFailed");
    let r = client
        .get(&url)
        .bearer_auth("made-up")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // A real token, no api-version.
    let token: serde_json::Value = client
        .post(format!(
            "{}/{}/oauth2/v2.0/token",
            e.fake.url(),
            jit_azure::testing::TENANT
        ))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", jit_azure::testing::CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
            ("scope", &format!("{}/.default", e.fake.url())),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["access_token"].as_str().unwrap().to_string();
    let r = client.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "MissingApiVersionParameter");
    let r = client
        .get(format!("{url}?api-version=2022-04-01"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Expired by the fake's clock.
    e.clock.advance(TimeDelta::hours(25));
    let r = client
        .get(format!("{url}?api-version=2020-10-01"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "ExpiredAuthenticationToken");
    // A body that breaks the schema is refused and reported.
    let bad = client
        .put(format!(
            "{}{}/providers/Microsoft.Authorization/roleAssignments/{}?api-version=2022-04-01",
            e.fake.url(),
            scope(),
            uuid::Uuid::new_v4()
        ))
        .bearer_auth("made-up")
        .json(&serde_json::json!({"properties": {"principalId": OBJECT_ID}}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    let errors = validate_against(
        ASSIGNMENTS_SPEC,
        "RoleAssignmentCreateParameters",
        &serde_json::json!({"properties": {"principalId": OBJECT_ID, "principalType": "Robot", "createdOn": "x"}}),
        true,
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("roleDefinitionId: required")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("principalType")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("createdOn: read-only")),
        "{errors:?}"
    );
}

#[tokio::test]
async fn assignments_mode_issues_and_deletes_plain_assignments() {
    let e = env();
    let p = e
        .fake
        .provider(e.fake.config(Mode::Assignments), e.clock.clone());
    assert!(!p.capabilities().native_expiry);
    let s = spec(&e.clock, 30);
    let issued = p.issue(&s).await.unwrap();
    let put = e
        .fake
        .server
        .requests()
        .into_iter()
        .find(|r| r.method == "PUT")
        .unwrap();
    assert_eq!(
        put.query_param("api-version").as_deref(),
        Some("2022-04-01")
    );
    let body = put.body_json().unwrap();
    assert_eq!(
        validate_against(
            ASSIGNMENTS_SPEC,
            "RoleAssignmentCreateParameters",
            &body,
            true
        ),
        Vec::<String>::new()
    );
    assert_eq!(body["properties"]["principalType"], "User");
    assert!(e
        .fake
        .state
        .has_assignment(&scope(), &issued.grant.external_id));
    // Not native: after the end it is still there until someone deletes it.
    e.clock.advance(TimeDelta::minutes(31));
    assert!(e
        .fake
        .state
        .has_assignment(&scope(), &issued.grant.external_id));
    let found = p.find(&s).await.unwrap().unwrap();
    assert_eq!(found.expires_at, issued.grant.expires_at);
    p.revoke(&found).await.unwrap();
    assert!(!e
        .fake
        .state
        .has_assignment(&scope(), &issued.grant.external_id));
    p.revoke(&found).await.unwrap();
}

fn entitlement_with(target: serde_json::Value) -> jit_core::Entitlement {
    jit_core::Entitlement {
        target,
        ..entitlement("azure")
    }
}

#[tokio::test]
async fn issue_reads_the_schedule_back_by_the_id_the_request_names() {
    let e = env();
    let p = e.provider(|c| c);
    let s = spec(&e.clock, 45);
    let issued = p.issue(&s).await.unwrap();
    let reqs = e.fake.server.requests();
    let arm: Vec<_> = reqs
        .iter()
        .filter(|r| r.path.contains("/providers/Microsoft.Authorization/"))
        .collect();
    // One GET of the schedule the PUT's answer named; no list of schedules.
    let put = arm.iter().find(|r| r.method == "PUT").unwrap();
    let name = put.path.rsplit('/').next().unwrap();
    let target = e.fake.state.request_json(&scope(), name).unwrap()["properties"]
        ["targetRoleAssignmentScheduleId"]
        .as_str()
        .unwrap()
        .to_string();
    let reads: Vec<_> = arm
        .iter()
        .filter(|r| r.path.contains("/roleAssignmentSchedules"))
        .collect();
    assert_eq!(reads.len(), 1, "{reads:?}");
    assert!(
        reads[0]
            .path
            .ends_with(&format!("/roleAssignmentSchedules/{target}")),
        "{}",
        reads[0].path
    );
    assert!(reads[0].seq > put.seq);
    // The end is the schedule's end as the fake returned it.
    assert!(issued.grant.expires_at <= s.ends_at);
    assert!(issued.grant.expires_at >= s.ends_at - TimeDelta::seconds(6));
}

#[tokio::test]
async fn credentials_say_what_was_assigned_where_and_to_whom() {
    let e = env();
    let p = e.provider(|c| c);
    let issued = p.issue(&spec(&e.clock, 30)).await.unwrap();
    match &issued.credentials {
        jit_core::Credentials::Assignment {
            description,
            scope: sc,
            role,
            role_name,
            principal,
            expires_at,
        } => {
            assert_eq!(sc.as_deref(), Some(scope().as_str()));
            assert_eq!(role.as_deref(), Some(reader_role().as_str()));
            assert_eq!(role_name.as_deref(), Some("Reader"));
            assert_eq!(principal.as_deref(), Some(OBJECT_ID));
            assert_eq!(*expires_at, issued.grant.expires_at);
            assert!(description.contains("`Reader`"), "{description}");
        }
        other => panic!("{other:?}"),
    }
    // By id: no display name to give.
    let e2 = env();
    let p2 = e2.provider(|c| c);
    let mut s = spec(&e2.clock, 30);
    s.entitlement = entitlement_with(
        serde_json::json!({"scope": scope(), "role_definition_id": reader_role()}),
    );
    match p2.issue(&s).await.unwrap().credentials {
        jit_core::Credentials::Assignment {
            role, role_name, ..
        } => {
            assert_eq!(role.as_deref(), Some(reader_role().as_str()));
            assert_eq!(role_name, None);
        }
        other => panic!("{other:?}"),
    }
    // A role given by id needs no lookup.
    assert_eq!(e2.fake.state.role_lookups(), 0);
}

#[tokio::test]
async fn role_names_are_resolved_at_arm_once_then_cached() {
    let e = env();
    let p = e.provider(|c| c);
    let first = p.issue(&spec(&e.clock, 30)).await.unwrap();
    p.revoke(&first.grant).await.unwrap();
    p.issue(&spec(&e.clock, 30)).await.unwrap();
    assert_eq!(e.fake.state.role_lookups(), 1);
    let lookup = e
        .fake
        .server
        .requests()
        .into_iter()
        .find(|r| r.path.ends_with("/roleDefinitions"))
        .unwrap();
    assert_eq!(
        lookup.query_param("$filter").as_deref(),
        Some("roleName eq 'Reader'")
    );
    assert_eq!(
        lookup.query_param("api-version").as_deref(),
        Some("2022-04-01")
    );

    // A custom role by name, with a quote in it: sent as an OData literal.
    let guid = "6f1b1e3a-9c2d-4f5e-8a7b-0c1d2e3f4a5b";
    e.fake.state.add_role_definition("Acme's Deployer", guid);
    let mut s = spec(&e.clock, 30);
    s.subject = jit_core::Principal::new("bob@example.com")
        .unwrap()
        .with_attribute("azure_object_id", "0f6c7a2e-5b4d-4c3a-9e8f-7a6b5c4d3e2f");
    s.entitlement =
        entitlement_with(serde_json::json!({"scope": scope(), "role": "Acme's Deployer"}));
    let issued = p.issue(&s).await.unwrap();
    assert_eq!(
        issued.grant.details["role_definition_id"],
        format!(
            "/subscriptions/{}/providers/Microsoft.Authorization/roleDefinitions/{guid}",
            jit_azure::testing::SUBSCRIPTION
        )
    );
}

#[tokio::test]
async fn unknown_and_ambiguous_role_names_are_typed_errors_before_any_write() {
    let e = env();
    let p = e.provider(|c| c);
    e.fake
        .state
        .add_role_definition("Ops", "11111111-2222-4333-8444-555555555555");
    e.fake
        .state
        .add_role_definition("Ops", "66666666-7777-4888-9999-aaaaaaaaaaaa");
    for (name, says) in [("Chief Wizard", "no role named"), ("Ops", "names 2 roles")] {
        let mut s = spec(&e.clock, 30);
        s.entitlement = entitlement_with(serde_json::json!({"scope": scope(), "role": name}));
        match p.issue(&s).await {
            Err(Error::Config(jit_core::ConfigError::InvalidField {
                entitlement,
                field,
                message,
            })) => {
                assert_eq!(entitlement, "azure.reader");
                assert_eq!(field, "target.role");
                assert!(message.contains(says), "{message}");
            }
            other => panic!("{name}: expected a config error, got {other:?}"),
        }
        // find: never issued under a name that resolves to no single role.
        assert!(p.find(&s).await.unwrap().is_none());
    }
    assert_eq!(e.fake.state.writes(), 0);
}

#[tokio::test]
async fn a_role_arm_no_longer_knows_is_looked_up_again() {
    let e = env();
    let p = e.provider(|c| c);
    let first = p.issue(&spec(&e.clock, 30)).await.unwrap();
    p.revoke(&first.grant).await.unwrap();
    assert_eq!(e.fake.state.role_lookups(), 1);
    e.fake.state.forget_role(&reader_role());
    assert!(p.issue(&spec(&e.clock, 30)).await.is_err());
    // The cached id was dropped with that refusal: the next grant asks anew.
    assert!(p.issue(&spec(&e.clock, 30)).await.is_err());
    assert_eq!(e.fake.state.role_lookups(), 2);
}
