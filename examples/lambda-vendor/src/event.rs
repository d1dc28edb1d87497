//! API Gateway events: who is calling (from the authorizer's output, never
//! from the body) and what they ask for (the JSON body).
//!
//! # Where the identity comes from
//!
//! | event | authorizer | identity read from |
//! | --- | --- | --- |
//! | HTTP API, payload 2.0 (also Lambda function URLs) | JWT | `requestContext.authorizer.jwt.claims` |
//! | HTTP API, payload 2.0 | Lambda | `requestContext.authorizer.lambda` (the authorizer's `context`) |
//! | HTTP API 2.0 / function URL | IAM | `requestContext.authorizer.iam`: `cognitoIdentity.identityId`, else `userArn` (no groups; see below) |
//! | REST API (payload 1.0) | Cognito user pool or JWT | `requestContext.authorizer.claims` |
//! | REST API (payload 1.0) | Lambda (`TOKEN` or `REQUEST`) | `requestContext.authorizer`: the context keys, and `principalId` when the id claim is absent |
//! | REST API (payload 1.0) | IAM | `requestContext.identity`: `cognitoIdentityId`, else `userArn` (no groups; see below) |
//!
//! The id is the claim named by [`ClaimNames::id`] (`sub`); groups come
//! from [`ClaimNames::groups`] (`groups`). API Gateway hands array claims
//! to the backend in several spellings, all accepted: a JSON array
//! (`["ops","admins"]`), the bracketed string HTTP APIs produce
//! (`"[ops admins]"`), a JSON array inside a string (`"[\"ops\",\"admins\"]"`,
//! as Lambda authorizers often return it, since REST authorizer context
//! values must be scalars), or a comma-separated string (`"ops,admins"`).
//!
//! # IAM callers: an identity nobody else can claim
//!
//! With IAM authorization API Gateway reports the caller's ARN, and part of
//! an assumed-role ARN is chosen by the caller: whoever may assume a role
//! picks the session name (`arn:aws:sts::111122223333:assumed-role/ops/alice`
//! can be presented by anyone who may assume `ops`). So:
//!
//! - **Cognito identity pools.** Every user of a pool arrives as the same
//!   pool role. The caller is the pool identity
//!   (`cognito-identity:<identity id>`), which Cognito assigns and nobody
//!   chooses; unauthenticated (guest) identities are refused.
//! - **Assumed roles.** The caller is the role
//!   (`arn:aws:sts::<account>:assumed-role/<role>`), not the session: all
//!   sessions of a role are one principal, so they see each other's requests
//!   and credentials, exactly what anyone who may assume the role can reach
//!   anyway. Only for roles listed in `JIT_IAM_PINNED_SESSION_ROLES`, whose
//!   trust policy pins the session name to the person (a condition on
//!   `sts:RoleSessionName` such as `${aws:username}`, or IAM Identity
//!   Center's permission-set roles), is the full session ARN the caller.
//! - **IAM users** (`arn:aws:iam::<account>:user/<name>`) are their ARN.
//!
//! An event without any of these is answered 401: a direct invocation
//! (`aws lambda invoke`) carries no authorizer output. Anyone allowed to
//! call `lambda:InvokeFunction` could, however, write a `requestContext`
//! by hand, so the function's resource policy must allow API Gateway only.
//!
//! # The body
//!
//! ```json
//! { "entitlement": "prod-readonly", "duration": "30m", "justification": "INC-42: look at logs", "ticket": "INC-42" }
//! ```
//!
//! `duration` is text (`30m`, `1h30m`, `PT30M`) or whole seconds;
//! `justification` and `ticket` may be required by the entitlement. Base64
//! bodies (`isBase64Encoded`) are decoded. Unknown fields, malformed JSON,
//! a missing body or one over [`MAX_BODY_BYTES`] are errors.

use std::collections::BTreeMap;

use base64::Engine as _;
use jit_core::Principal;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::ClaimNames;

/// The largest body accepted, in bytes (after base64 decoding).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Why an event cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    /// No usable identity from an authorizer (401).
    #[error("{0}")]
    Unauthenticated(String),
    /// The body or the event is malformed (400).
    #[error("{0}")]
    BadRequest(String),
    /// The body is over [`MAX_BODY_BYTES`] (413).
    #[error("request body is {0} bytes; the maximum is {MAX_BODY_BYTES}")]
    TooLarge(usize),
}

/// Which authorizer vouched for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthSource {
    /// An HTTP API JWT authorizer.
    Jwt,
    /// A Lambda authorizer (HTTP or REST API).
    LambdaAuthorizer,
    /// A Cognito user pool (or JWT) authorizer on a REST API.
    Claims,
    /// IAM (SigV4) authorization.
    Iam,
}

impl AuthSource {
    /// Stable lowercase name, recorded in the request context.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthSource::Jwt => "jwt",
            AuthSource::LambdaAuthorizer => "lambda_authorizer",
            AuthSource::Claims => "claims",
            AuthSource::Iam => "iam",
        }
    }
}

/// The JSON body of a request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestBody {
    /// The entitlement id.
    pub entitlement: String,
    /// Text (`30m`) or whole seconds.
    pub duration: DurationField,
    /// Why; the entitlement decides whether it is required.
    #[serde(default)]
    pub justification: String,
    /// Ticket reference.
    #[serde(default)]
    pub ticket: Option<String>,
}

/// What an invocation asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// A new request: `{"entitlement", "duration", "justification", "ticket"?}`.
    Request(RequestBody),
    /// The credentials of an earlier request of the caller's, once approved:
    /// `{"request_id"}`.
    Collect(CollectBody),
}

/// `{"request_id": "..."}`: collect what an earlier `202` promised.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectBody {
    /// The id a `202` answer gave.
    pub request_id: String,
}

/// A duration as text or whole seconds.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum DurationField {
    /// Whole seconds.
    Seconds(i64),
    /// `30m`, `1h30m`, `PT30M`.
    Text(String),
}

/// A parsed invocation: the caller, the body, and facts for the audit context.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The caller, from the authorizer.
    pub principal: Principal,
    /// Which authorizer.
    pub auth: AuthSource,
    /// What they ask for.
    pub body: Body,
    /// API Gateway's request id (`requestContext.requestId`).
    pub api_request_id: Option<String>,
    /// The client's address.
    pub source_ip: Option<String>,
    /// The client's user agent.
    pub user_agent: Option<String>,
}

fn unauth(msg: impl Into<String>) -> EventError {
    EventError::Unauthenticated(msg.into())
}

fn bad(msg: impl Into<String>) -> EventError {
    EventError::BadRequest(msg.into())
}

/// A non-empty string at `path` in `v`.
fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str().filter(|s| !s.is_empty())
}

/// Parses an event: identity first (401 before anything else), then the body.
pub fn parse(event: &Value, claims: &ClaimNames) -> Result<Invocation, EventError> {
    let ctx = event
        .get("requestContext")
        .filter(|c| c.is_object())
        .ok_or_else(|| {
            unauth("no API Gateway request context: invoke this function through API Gateway with an authorizer")
        })?;
    let (principal, auth) = identify(ctx, claims)?;
    let body = body(event)?;
    let source_ip =
        str_at(ctx, &["http", "sourceIp"]).or_else(|| str_at(ctx, &["identity", "sourceIp"]));
    let user_agent =
        str_at(ctx, &["http", "userAgent"]).or_else(|| str_at(ctx, &["identity", "userAgent"]));
    Ok(Invocation {
        principal,
        auth,
        body,
        api_request_id: str_at(ctx, &["requestId"]).map(str::to_string),
        source_ip: source_ip.map(str::to_string),
        user_agent: user_agent.map(str::to_string),
    })
}

/// The caller, from whichever authorizer output the event carries.
fn identify(ctx: &Value, names: &ClaimNames) -> Result<(Principal, AuthSource), EventError> {
    let authorizer = ctx.get("authorizer").and_then(Value::as_object);
    if let Some(a) = authorizer {
        if let Some(claims) = a
            .get("jwt")
            .and_then(|j| j.get("claims"))
            .and_then(Value::as_object)
        {
            return from_claims(claims, names, None).map(|p| (p, AuthSource::Jwt));
        }
        if let Some(context) = a.get("lambda").and_then(Value::as_object) {
            return from_claims(context, names, None).map(|p| (p, AuthSource::LambdaAuthorizer));
        }
        if let Some(claims) = a.get("claims").and_then(Value::as_object) {
            return from_claims(claims, names, None).map(|p| (p, AuthSource::Claims));
        }
        if let Some(iam_ctx) = a.get("iam").filter(|i| i.is_object()) {
            let cognito = iam_ctx.get("cognitoIdentity");
            return iam(
                IamCaller {
                    cognito_id: cognito.and_then(|c| str_at(c, &["identityId"])),
                    cognito_guest: cognito
                        .and_then(|c| c.get("amr"))
                        .and_then(Value::as_array)
                        .is_some_and(|amr| amr.iter().any(|v| v == "unauthenticated")),
                    user_arn: str_at(iam_ctx, &["userArn"]),
                },
                names,
            );
        }
        // A REST API Lambda authorizer: its context keys sit beside `principalId`.
        if let Some(pid) = a.get("principalId").and_then(Value::as_str) {
            return from_claims(a, names, Some(pid)).map(|p| (p, AuthSource::LambdaAuthorizer));
        }
    }
    if let Some(identity) = ctx.get("identity").filter(|i| i.is_object()) {
        let caller = IamCaller {
            cognito_id: str_at(identity, &["cognitoIdentityId"]),
            cognito_guest: str_at(identity, &["cognitoAuthenticationType"])
                == Some("unauthenticated"),
            user_arn: str_at(identity, &["userArn"]),
        };
        if caller.cognito_id.is_some() || caller.user_arn.is_some() {
            return iam(caller, names);
        }
    }
    Err(unauth(
        "no caller identity: the event carries no authorizer output (JWT, Lambda, Cognito or IAM)",
    ))
}

/// What an IAM-authorized event says about its caller.
struct IamCaller<'a> {
    cognito_id: Option<&'a str>,
    cognito_guest: bool,
    user_arn: Option<&'a str>,
}

/// The caller of an IAM-authorized event (see "IAM callers" in the module docs).
fn iam(caller: IamCaller<'_>, names: &ClaimNames) -> Result<(Principal, AuthSource), EventError> {
    let id = match (caller.cognito_id.filter(|s| !s.is_empty()), caller.user_arn) {
        (Some(_), _) if caller.cognito_guest => {
            return Err(unauth(
                "unauthenticated Cognito identities (guests) cannot request access",
            ))
        }
        (Some(identity), _) => format!("cognito-identity:{identity}"),
        (None, Some(arn)) => iam_principal_id(arn, &names.pinned_session_roles),
        (None, None) => return Err(unauth("the IAM authorizer output names no caller")),
    };
    Principal::new(&id)
        .map(|p| (p, AuthSource::Iam))
        .map_err(|e| unauth(format!("caller ARN is not a usable id: {e}")))
}

/// An assumed-role session ARN becomes its role, unless the role pins its
/// session names; any other ARN is the caller as it is.
fn iam_principal_id(arn: &str, pinned: &[(String, String)]) -> String {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    if let [_, _, "sts", _, account, resource] = parts[..] {
        if let Some(rest) = resource.strip_prefix("assumed-role/") {
            if let Some((role, _session)) = rest.split_once('/') {
                let is_pinned = pinned.iter().any(|(a, r)| a == account && r == role);
                if !is_pinned {
                    let prefix = &arn[..arn.len() - resource.len()];
                    return format!("{prefix}assumed-role/{role}");
                }
            }
        }
    }
    arn.to_string()
}

fn from_claims(
    claims: &Map<String, Value>,
    names: &ClaimNames,
    fallback_id: Option<&str>,
) -> Result<Principal, EventError> {
    let id = match claims.get(&names.id) {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Null) | None => match fallback_id {
            Some(pid) if !pid.is_empty() => pid.to_string(),
            _ => {
                return Err(unauth(format!(
                    "the authorizer output has no `{}` claim naming the caller",
                    names.id
                )))
            }
        },
        Some(_) => {
            return Err(unauth(format!(
                "claim `{}` is not a string; set JIT_CLAIM_ID to a claim holding the caller's id",
                names.id
            )))
        }
    };
    if names.id == "email" {
        // An email identifies someone only when the identity provider verified
        // it; otherwise it is whatever the user typed into their profile.
        let verified = match claims.get("email_verified") {
            Some(Value::Bool(v)) => *v,
            Some(Value::String(v)) => v == "true",
            _ => false,
        };
        if !verified {
            return Err(unauth(
                "claim `email` names the caller but `email_verified` is not true",
            ));
        }
    }
    let mut p = Principal::new(&id).map_err(|e| unauth(format!("caller id: {e}")))?;
    if let Some(v) = claims.get(&names.groups) {
        for g in groups(v).map_err(|m| unauth(format!("claim `{}`: {m}", names.groups)))? {
            p = p.with_group(&g);
        }
    }
    let mut attributes = BTreeMap::new();
    for name in &names.attributes {
        let value = match claims.get(name) {
            Some(Value::String(s)) => s.clone(),
            Some(v @ (Value::Number(_) | Value::Bool(_))) => v.to_string(),
            _ => continue,
        };
        attributes.insert(name.clone(), value);
    }
    for (k, v) in attributes {
        p = p.with_attribute(&k, &v);
    }
    Ok(p)
}

/// Group names from any of the spellings API Gateway uses (see the module docs).
pub fn groups(v: &Value) -> Result<Vec<String>, String> {
    let names: Vec<String> = match v {
        Value::Null => Vec::new(),
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => Ok(s.clone()),
                other => Err(format!("group `{other}` is not a string")),
            })
            .collect::<Result<_, _>>()?,
        Value::String(s) => {
            let t = s.trim();
            if let Some(inner) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
                match serde_json::from_str::<Vec<String>>(t) {
                    Ok(list) => list,
                    // `[ops admins]`: API Gateway's rendering of an array claim.
                    Err(_) => inner
                        .split(|c: char| c.is_whitespace() || c == ',')
                        .map(str::to_string)
                        .collect(),
                }
            } else {
                t.split(',').map(str::to_string).collect()
            }
        }
        other => return Err(format!("`{other}` is not a list of groups")),
    };
    Ok(names
        .into_iter()
        .map(|g| g.trim().to_string())
        .filter(|g| !g.is_empty())
        .collect())
}

fn body(event: &Value) -> Result<Body, EventError> {
    let raw = match event.get("body") {
        Some(Value::String(s)) if !s.trim().is_empty() => s,
        Some(Value::String(_)) | Some(Value::Null) | None => {
            return Err(bad(
                "request body is required: {\"entitlement\": ..., \"duration\": ..., \"justification\": ...}",
            ))
        }
        Some(_) => return Err(bad("event `body` is not a string")),
    };
    let base64 = event
        .get("isBase64Encoded")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let bytes = if base64 {
        if raw.len() > MAX_BODY_BYTES.div_ceil(3) * 4 + 4 {
            return Err(EventError::TooLarge(raw.len() / 4 * 3));
        }
        base64::engine::general_purpose::STANDARD
            .decode(raw.trim())
            .map_err(|e| bad(format!("body is marked base64 but does not decode: {e}")))?
    } else {
        raw.as_bytes().to_vec()
    };
    if bytes.len() > MAX_BODY_BYTES {
        return Err(EventError::TooLarge(bytes.len()));
    }
    let invalid = |e: serde_json::Error| bad(format!("invalid JSON body: {e}"));
    let value: Value = serde_json::from_slice(&bytes).map_err(invalid)?;
    if value.get("request_id").is_some() {
        serde_json::from_value(value)
            .map(Body::Collect)
            .map_err(invalid)
    } else {
        serde_json::from_value(value)
            .map(Body::Request)
            .map_err(invalid)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use serde_json::json;

    use super::*;

    #[test]
    fn every_group_spelling() {
        for v in [
            json!(["ops", "admins"]),
            json!("[ops admins]"),
            json!("[\"ops\",\"admins\"]"),
            json!("ops, admins"),
            json!(" ops,admins,"),
        ] {
            assert_eq!(groups(&v).unwrap(), vec!["ops", "admins"], "{v}");
        }
        assert_eq!(groups(&json!("ops")).unwrap(), vec!["ops"]);
        assert_eq!(groups(&json!("[]")).unwrap(), Vec::<String>::new());
        assert_eq!(groups(&json!(null)).unwrap(), Vec::<String>::new());
        assert!(groups(&json!([1])).is_err());
        assert!(groups(&json!({"a": 1})).is_err());
    }

    #[test]
    fn identity_never_comes_from_the_body() {
        let event = json!({
            "requestContext": {"requestId": "x"},
            "body": "{\"entitlement\":\"e\",\"duration\":\"30m\",\"sub\":\"alice\"}",
        });
        assert!(matches!(
            parse(&event, &ClaimNames::default()),
            Err(EventError::Unauthenticated(_))
        ));
        assert!(matches!(
            parse(&json!({"sub": "alice"}), &ClaimNames::default()),
            Err(EventError::Unauthenticated(_))
        ));
    }

    #[test]
    fn iam_session_names_never_identify_unless_the_role_pins_them() {
        let pinned = vec![("123456789012".to_string(), "people".to_string())];
        let id = |arn: &str| iam_principal_id(arn, &pinned);
        assert_eq!(
            id("arn:aws:sts::123456789012:assumed-role/ops/alice"),
            "arn:aws:sts::123456789012:assumed-role/ops"
        );
        assert_eq!(
            id("arn:aws-us-gov:sts::123456789012:assumed-role/ops/x/y"),
            "arn:aws-us-gov:sts::123456789012:assumed-role/ops"
        );
        assert_eq!(
            id("arn:aws:sts::123456789012:assumed-role/people/alice"),
            "arn:aws:sts::123456789012:assumed-role/people/alice"
        );
        // The same role name in another account is not pinned.
        assert_eq!(
            id("arn:aws:sts::999999999999:assumed-role/people/alice"),
            "arn:aws:sts::999999999999:assumed-role/people"
        );
        assert_eq!(
            id("arn:aws:iam::123456789012:user/alice"),
            "arn:aws:iam::123456789012:user/alice"
        );
    }

    #[test]
    fn an_unverified_email_is_not_an_identity() {
        let names = ClaimNames {
            id: "email".into(),
            ..ClaimNames::default()
        };
        let ev = |verified: Value| {
            json!({"requestContext": {"authorizer": {"jwt": {"claims": {
                "sub": "u-1", "email": "alice@example.com", "email_verified": verified}}}},
                "body": "{\"entitlement\":\"e\",\"duration\":60}"})
        };
        assert!(matches!(
            parse(&ev(json!(false)), &names),
            Err(EventError::Unauthenticated(_))
        ));
        assert!(matches!(
            parse(&ev(Value::Null), &names),
            Err(EventError::Unauthenticated(_))
        ));
        let inv = parse(&ev(json!("true")), &names).unwrap();
        assert_eq!(inv.principal.id.as_str(), "alice@example.com");
    }

    #[test]
    fn rest_lambda_authorizer_falls_back_to_principal_id() {
        let event = json!({
            "requestContext": {"authorizer": {"principalId": "bob", "groups": "ops", "integrationLatency": 3}},
            "body": "{\"entitlement\":\"e\",\"duration\":1800}",
        });
        let inv = parse(&event, &ClaimNames::default()).unwrap();
        assert_eq!(inv.principal.id.as_str(), "bob");
        assert!(inv.principal.in_group("ops"));
        assert_eq!(inv.auth, AuthSource::LambdaAuthorizer);
        match inv.body {
            Body::Request(b) => assert_eq!(b.duration, DurationField::Seconds(1800)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bodies() {
        let ctx = json!({"authorizer": {"jwt": {"claims": {"sub": "a"}}}});
        let with = |body: Value, b64: bool| {
            parse(
                &json!({"requestContext": ctx, "body": body, "isBase64Encoded": b64}),
                &ClaimNames::default(),
            )
        };
        let b64 = base64::engine::general_purpose::STANDARD
            .encode(r#"{"entitlement":"e","duration":"30m","justification":"j"}"#);
        match with(json!(b64), true).unwrap().body {
            Body::Request(b) => assert_eq!(b.justification, "j"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            with(json!(r#"{"request_id":"r"}"#), false).unwrap().body,
            Body::Collect(CollectBody {
                request_id: "r".into()
            })
        );
        for (body, b64) in [
            (json!(null), false),
            (json!(""), false),
            (json!("{"), false),
            (
                json!("{\"entitlement\":\"e\",\"duration\":\"1h\",\"x\":1}"),
                false,
            ),
            (json!("{\"duration\":\"1h\"}"), false),
            (json!("not base64!"), true),
        ] {
            assert!(
                matches!(with(body.clone(), b64), Err(EventError::BadRequest(_))),
                "{body}"
            );
        }
        let big = format!(
            "{{\"entitlement\":\"e\",\"duration\":\"1h\",\"justification\":\"{}\"}}",
            "x".repeat(MAX_BODY_BYTES)
        );
        assert!(matches!(
            with(json!(big), false),
            Err(EventError::TooLarge(_))
        ));
    }
}
