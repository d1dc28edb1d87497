//! The fake itself behaves as the discovery documents and Google's docs say.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use jit_core::ManualClock;
use jit_gcp::testing::{FakeGcp, FakeRequest, FakeResponse, TestKey};
use serde_json::{json, Value};

const P: &str = "projects/prod-1234";

fn setup() -> (Arc<FakeGcp>, String) {
    let fake = FakeGcp::new(Arc::new(ManualClock::starting_now()));
    fake.add_resource(P);
    fake.add_service_account("sa@prod-1234.iam.gserviceaccount.com");
    let key = TestKey::generate("broker@prod-1234.iam.gserviceaccount.com");
    fake.register_key(&key);
    let now = chrono::Utc::now().timestamp();
    let jwt = key.sign_jwt(
        &json!({"alg": "RS256", "typ": "JWT", "kid": key.key_id}),
        &json!({"iss": key.client_email, "sub": key.client_email, "scope": "https://www.googleapis.com/auth/cloud-platform", "iat": now, "exp": now + 3600}),
    );
    (fake, format!("Bearer {jwt}"))
}

fn call(fake: &FakeGcp, auth: &str, path: &str, query: &str, body: Value) -> FakeResponse {
    let body = body.to_string();
    fake.handle(FakeRequest {
        method: "POST",
        path,
        query,
        authorization: Some(auth),
        body: body.as_bytes(),
    })
}

fn conditional_binding() -> Value {
    json!({"role": "roles/storage.admin", "members": ["user:a@example.com"],
        "condition": {"title": "jit-00000000000000000000000000000001", "expression": "request.time < timestamp(\"2030-01-01T00:00:00Z\")"}})
}

fn get(fake: &FakeGcp, auth: &str, version: i64) -> FakeResponse {
    call(
        fake,
        auth,
        &format!("/v3/{P}:getIamPolicy"),
        "",
        json!({"options": {"requestedPolicyVersion": version}}),
    )
}

#[test]
fn etags_change_on_every_write_and_a_stale_one_is_409_aborted() {
    let (fake, auth) = setup();
    let read = get(&fake, &auth, 3);
    let etag = read.body["etag"].as_str().unwrap().to_string();
    let body = json!({"policy": {"version": 3, "etag": etag, "bindings": [conditional_binding()]}});
    let w = call(
        &fake,
        &auth,
        &format!("/v3/{P}:setIamPolicy"),
        "",
        body.clone(),
    );
    assert_eq!(w.status, 200, "{:?}", w.body);
    assert_ne!(w.body["etag"].as_str().unwrap(), etag);
    let stale = call(&fake, &auth, &format!("/v3/{P}:setIamPolicy"), "", body);
    assert_eq!(stale.status, 409);
    assert_eq!(stale.body["error"]["status"], "ABORTED");
    assert_eq!(stale.body["error"]["code"], 409);
    assert_eq!(fake.conflicts(), 1);
}

#[test]
fn a_conditional_policy_read_at_version_1_is_flattened_and_cannot_be_written_back() {
    let (fake, auth) = setup();
    fake.put_bindings(P, vec![conditional_binding()]);
    let v3 = get(&fake, &auth, 3);
    assert_eq!(v3.body["version"], 3);
    assert_eq!(
        v3.body["bindings"][0]["condition"]["title"],
        "jit-00000000000000000000000000000001"
    );
    let v1 = get(&fake, &auth, 1);
    assert_eq!(v1.body["version"], 1);
    let role = v1.body["bindings"][0]["role"].as_str().unwrap();
    assert!(role.starts_with("roles/storage.admin_withcond_"), "{role}");
    assert!(v1.body["bindings"][0].get("condition").is_none());
    // Writing the flattened policy back is refused.
    let back = call(
        &fake,
        &auth,
        &format!("/v3/{P}:setIamPolicy"),
        "",
        json!({"policy": v1.body}),
    );
    assert_eq!(back.status, 400);
    // A version 1 write with the etag over a conditional policy is refused too.
    let body = json!({"policy": {"version": 1, "etag": v3.body["etag"], "bindings": [{"role": "roles/viewer", "members": ["user:b@example.com"]}]}});
    let r = call(&fake, &auth, &format!("/v3/{P}:setIamPolicy"), "", body);
    assert_eq!(r.status, 400);
    // Without an etag IAM overwrites blindly and the conditions are gone:
    // the hazard jit-gcp must never trigger, counted by the fake.
    let body = json!({"policy": {"version": 1, "bindings": [{"role": "roles/viewer", "members": ["user:b@example.com"]}]}});
    let r = call(&fake, &auth, &format!("/v3/{P}:setIamPolicy"), "", body);
    assert_eq!(r.status, 200);
    assert_eq!(fake.writes_without_etag(), 1);
    assert!(fake
        .bindings(P)
        .iter()
        .all(|b| b.get("condition").is_none()));
}

#[test]
fn service_account_policies_take_the_version_as_a_query_parameter() {
    let (fake, auth) = setup();
    let path = "/v1/projects/-/serviceAccounts/sa@prod-1234.iam.gserviceaccount.com:getIamPolicy";
    let name = "projects/-/serviceAccounts/sa@prod-1234.iam.gserviceaccount.com";
    fake.put_bindings(name, vec![conditional_binding()]);
    let r = call(
        &fake,
        &auth,
        path,
        "options.requestedPolicyVersion=3",
        json!({}),
    );
    assert_eq!(r.body["version"], 3, "{:?}", r.body);
    let r = call(&fake, &auth, path, "", json!({}));
    assert_eq!(r.body["version"], 1);
    // The method defines no body.
    let r = call(
        &fake,
        &auth,
        path,
        "",
        json!({"options": {"requestedPolicyVersion": 3}}),
    );
    assert_eq!(r.status, 400);
}

#[test]
fn documented_limits_and_condition_rules_are_enforced() {
    let (fake, auth) = setup();
    let write = |bindings: Value| {
        let etag = get(&fake, &auth, 3).body["etag"].clone();
        call(
            &fake,
            &auth,
            &format!("/v3/{P}:setIamPolicy"),
            "",
            json!({"policy": {"version": 3, "etag": etag, "bindings": bindings}}),
        )
    };
    let many: Vec<String> = (0..1501)
        .map(|i| format!("user:u{i}@example.com"))
        .collect();
    assert_eq!(
        write(json!([{"role": "roles/viewer", "members": many}])).status,
        400
    );
    let mut basic = conditional_binding();
    basic["role"] = json!("roles/owner");
    assert_eq!(write(json!([basic])).status, 400);
    let mut public = conditional_binding();
    public["members"] = json!(["allUsers"]);
    assert_eq!(write(json!([public])).status, 400);
    let twenty_one: Vec<Value> = (0..21)
        .map(|i| {
            let mut b = conditional_binding();
            b["condition"]["title"] = json!(format!("t{i}"));
            b
        })
        .collect();
    assert_eq!(write(Value::Array(twenty_one[..20].to_vec())).status, 200);
    assert_eq!(write(Value::Array(twenty_one)).status, 400);
    assert_eq!(
        write(json!([{"role": "roles/viewer", "members": []}])).status,
        400
    );
}

#[test]
fn bodies_are_checked_against_the_discovery_schema() {
    let (fake, auth) = setup();
    let r = call(
        &fake,
        &auth,
        &format!("/v3/{P}:getIamPolicy"),
        "",
        json!({"options": {"requestedPolicyVersion": 3, "extra": 1}}),
    );
    assert_eq!(r.status, 400);
    let r = call(
        &fake,
        &auth,
        &format!("/v3/{P}:setIamPolicy"),
        "",
        json!({"policy": {"bindings": [{"role": 7}]}}),
    );
    assert_eq!(r.status, 400);
    assert_eq!(fake.schema_violations().len(), 2);
}

#[test]
fn only_signed_requests_are_served() {
    let (fake, _) = setup();
    let r = call(
        &fake,
        "Bearer nonsense",
        &format!("/v3/{P}:getIamPolicy"),
        "",
        json!({}),
    );
    assert_eq!(r.status, 401);
    assert_eq!(r.body["error"]["status"], "UNAUTHENTICATED");
    // A key the fake does not know.
    let stranger = TestKey::generate("stranger@prod-1234.iam.gserviceaccount.com");
    let now = chrono::Utc::now().timestamp();
    let jwt = stranger.sign_jwt(
        &json!({"alg": "RS256", "kid": stranger.key_id}),
        &json!({"iss": stranger.client_email, "scope": "x", "iat": now, "exp": now + 600}),
    );
    let r = call(
        &fake,
        &format!("Bearer {jwt}"),
        &format!("/v3/{P}:getIamPolicy"),
        "",
        json!({}),
    );
    assert_eq!(r.status, 401);
}

#[test]
fn the_token_endpoint_takes_a_signed_assertion() {
    let (fake, _) = setup();
    let key = TestKey::generate("broker2@prod-1234.iam.gserviceaccount.com");
    fake.register_key(&key);
    let now = chrono::Utc::now().timestamp();
    let assertion = key.sign_jwt(
        &json!({"alg": "RS256", "typ": "JWT", "kid": key.key_id}),
        &json!({"iss": key.client_email, "aud": "http://127.0.0.1/token", "scope": "https://www.googleapis.com/auth/cloud-platform", "iat": now, "exp": now + 3600}),
    );
    let form = format!(
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}"
    );
    let r = fake.handle(FakeRequest {
        method: "POST",
        path: "/token",
        query: "",
        authorization: None,
        body: form.as_bytes(),
    });
    assert_eq!(r.status, 200, "{:?}", r.body);
    let token = r.body["access_token"].as_str().unwrap();
    let ok = call(
        &fake,
        &format!("Bearer {token}"),
        &format!("/v3/{P}:getIamPolicy"),
        "",
        json!({}),
    );
    assert_eq!(ok.status, 200);
    // A tampered assertion is refused.
    let bad = format!(
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={}x",
        assertion
    );
    let r = fake.handle(FakeRequest {
        method: "POST",
        path: "/token",
        query: "",
        authorization: None,
        body: bad.as_bytes(),
    });
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"], "invalid_grant");
}

#[test]
fn token_lifetimes_are_validated() {
    let (fake, auth) = setup();
    let path =
        "/v1/projects/-/serviceAccounts/sa@prod-1234.iam.gserviceaccount.com:generateAccessToken";
    let scope = json!(["https://www.googleapis.com/auth/cloud-platform"]);
    assert_eq!(
        call(
            &fake,
            &auth,
            path,
            "",
            json!({"scope": scope, "lifetime": "3601s"})
        )
        .status,
        400
    );
    assert_eq!(
        call(&fake, &auth, path, "", json!({"lifetime": "600s"})).status,
        400
    );
    let ok = call(
        &fake,
        &auth,
        path,
        "",
        json!({"scope": scope, "lifetime": "600s"}),
    );
    assert_eq!(ok.status, 200);
    assert!(fake.token_works(ok.body["accessToken"].as_str().unwrap()));
    let unknown = "/v1/projects/-/serviceAccounts/nobody@prod-1234.iam.gserviceaccount.com:generateAccessToken";
    assert_eq!(
        call(&fake, &auth, unknown, "", json!({"scope": scope})).status,
        404
    );
}
