//! The HTTP JSON API: routes, extractors and the authorization rules that sit
//! in front of the broker.
//!
//! | route | who |
//! | --- | --- |
//! | `POST /v1/requests` | anyone authenticated (the policy decides) |
//! | `GET /v1/requests?scope=mine\|approvals\|all&state=..&entitlement=..&limit=..` | `all`: admins |
//! | `GET /v1/requests/{id}` | requester, its approvers, admins |
//! | `POST /v1/requests/{id}/approve\|deny` | approvers, admins (never the requester) |
//! | `POST /v1/requests/{id}/cancel\|issue` | requester, admins |
//! | `POST /v1/requests/{id}/revoke` | requester, approvers, admins |
//! | `POST /v1/requests/{id}/extend` | requester |
//! | `GET /v1/requests/{id}/credentials` | requester only |
//! | `GET /v1/audit` (JSON Lines), `GET /v1/audit/verify` | admins |
//! | `GET /v1/entitlements`, `GET /v1/whoami` | anyone authenticated |
//! | `POST /v1/introspect` | anyone authenticated; claims only for `[introspection] clients` and the token's subject |
//! | `GET /metrics` | anyone, or a bearer (`[metrics] bearer_token_file`), or on `[metrics] listen` only |
//! | `GET /v1/providers/{name}/jwks.json` | anyone: the public keys of a local provider |
//!
//! A request the caller may not see answers exactly like a missing one.
//!
//! # Local tokens in other services
//!
//! A service that accepts the server's local tokens verifies them offline
//! with the provider's public keys (`/v1/providers/{name}/jwks.json`, the
//! `jit_core::local::Verifier` takes them), which catches forgery and expiry;
//! early revocation needs the server. `POST /v1/introspect` answers in the
//! shape of OAuth 2.0 token introspection (RFC 7662): `{"active": false}`
//! for anything not valid now, else `active: true` with the token's claims.
//! A token is active only while the grant it belongs to is `active` in the
//! store, so a revocation counts at once, across restarts and across every
//! replica on the same database. The body is JSON or a form,
//! `token=...[&audience=...]`; with `audience` the token must be for it.
//! RFC 7662 expects the endpoint to know its callers: the claims go only to
//! the resource servers named in `[introspection] clients` (by the exact
//! subject of their bearer token) and to the token's own subject; any other
//! signed-in caller gets `{"active": true}` or `{"active": false}` alone.
//!
//! # Limits
//!
//! Each verified subject may hold `[limits] max_pending_per_requester`
//! requests waiting for approval (checked only for a request that would
//! wait: a subject at the cap still gets what the policy auto-approves) and
//! submit (new requests and extensions) `submits_per_minute` after a burst
//! of `submit_burst`; past either the answer is `429` with code
//! `too_many_requests` (and `Retry-After` for the rate). Every free-text field (justification, reasons, comments) takes at
//! most [`jit_core::MAX_TEXT_LEN`] characters.
//!
//! Every answer carries `Cache-Control: no-store` (credentials and request
//! records must not sit in a cache), except the public keys.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use jit_core::local::{LocalClaims, LocalProvider, LocalPublicKey, Verifier};
use jit_core::standing::Standing;
use jit_core::wire::{
    self, ArchiveBody, AuditVerification, CredentialsAnswer, CredentialsView, EntitlementList,
    EntitlementSummary, ErrorDetails, ExtendBody, ReasonBody, RequestAnswer, RequestList,
    SubmitBody, WhoAmI,
};
use jit_core::{
    AccessRequest, Broker, Credentials, GrantDuration, IssueOutcome, ListFilter, Principal,
    RequestId, RequestRecord, State as LifecycleState,
};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{AuthError, Authenticator};
use crate::error::{ApiError, ApiResult};
use crate::limits::SubmitLimits;
use crate::metrics::Metrics;

/// Shared state of every handler.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The broker.
    pub broker: Broker,
    /// Token verification.
    pub auth: Arc<Authenticator>,
    /// Metrics.
    pub metrics: Metrics,
    /// Served at `/.well-known/jwks.json` in demo mode. (Behind an `Arc`,
    /// like everything here that is not one already: every extractor of
    /// every request clones the state.)
    pub demo_jwks: Option<Arc<Value>>,
    /// The local providers, by name: their verifiers and public keys.
    pub local: Arc<BTreeMap<String, LocalKeys>>,
    /// Per-principal limits on new requests.
    pub limits: Arc<SubmitLimits>,
    /// Subjects that may read token claims at `/v1/introspect`.
    pub introspection_clients: Arc<BTreeSet<String>>,
    /// How long `/metrics` reuses its store counts.
    pub metrics_cache: Duration,
    /// How `GET /v1/audit/verify` checks the chain beyond the broker's keyring.
    pub audit: Arc<AuditVerify>,
    /// `[retention]`, when archives have somewhere to go.
    pub retention: Option<Arc<crate::retention::Retention>>,
}

/// What `GET /v1/audit/verify` reads besides the store.
#[derive(Clone, Debug, Default)]
pub struct AuditVerify {
    /// Signed checkpoints (the file the broker appends them to).
    pub checkpoint_file: Option<std::path::PathBuf>,
    /// Records before this seq may be unsealed.
    pub sealed_from: u64,
}

/// What the server publishes about one local provider.
#[derive(Clone, Debug)]
pub struct LocalKeys {
    /// Verifies the provider's tokens (signature, issuer, times, revocations in this process).
    pub verifier: Verifier,
    /// The provider's public keys as a JWKS.
    pub jwks: Value,
}

/// The public JWK of an Ed25519 key (local providers, the demo issuer).
pub fn jwk(key: &LocalPublicKey) -> Value {
    json!({
        "kty": "OKP", "crv": "Ed25519", "x": key.to_b64(), "kid": key.kid(),
        "alg": "EdDSA", "use": "sig",
    })
}

impl LocalKeys {
    /// The verifier and JWKS (the signing key first, then earlier keys
    /// still accepted) of a local provider.
    pub fn of(provider: &LocalProvider) -> Self {
        let keys: Vec<Value> = provider.public_keys().iter().map(jwk).collect();
        Self {
            verifier: provider.verifier(),
            jwks: json!({ "keys": keys }),
        }
    }
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ApiError::unauthorized(AuthError::Missing.to_string()))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::unauthorized(AuthError::Missing.to_string()))?;
        let p = state.auth.authenticate(token).await.map_err(|e| {
            tracing::info!(error = %e, "authentication failed");
            ApiError::unauthorized(e.to_string())
        })?;
        Ok(Caller(p))
    }
}

/// A JSON body: size-limited (413), unknown fields and malformed JSON are 400
/// with the parser's message, an empty body reads as `{}`.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> ApiResult<Self> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e: BytesRejection| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "payload_too_large",
                        "request body is too large",
                    )
                } else {
                    ApiError::bad_request(format!("cannot read request body: {e}"))
                }
            })?;
        let body: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(body)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}

/// `GET /v1/requests` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    entitlement: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

fn duration(s: &str) -> ApiResult<GrantDuration> {
    GrantDuration::from_str(s).map_err(|e| jit_core::Error::from(e).into())
}

/// The JSON of credentials ([`CredentialsView`]), for their owner only. Never logged.
pub fn credentials_json(c: &Credentials) -> Value {
    wire::to_value(&CredentialsView::from(c))
}

/// Whether the caller may know the request exists (decided in jit-core's
/// [`Standing`], on the exact subject id: aliases never give access).
fn visible(state: &AppState, p: &Principal, r: &RequestRecord) -> bool {
    Standing::of(state.broker.policy().as_ref(), p, r).may_see()
}

fn parse_id(id: &str) -> ApiResult<RequestId> {
    uuid::Uuid::parse_str(id)
        .map(RequestId)
        .map_err(|_| ApiError::request_not_found(id))
}

/// Loads a request the caller may see, or answers "not found" like a missing one.
async fn load(state: &AppState, p: &Principal, id: &str) -> ApiResult<RequestRecord> {
    let rid = parse_id(id)?;
    match state.broker.get(rid).await {
        Ok(r) if visible(state, p, &r) => Ok(r),
        Ok(_) | Err(jit_core::Error::NotFound { .. }) => Err(ApiError::request_not_found(id)),
        Err(e) => Err(e.into()),
    }
}

/// The body of an operation's answer; credentials only for the requester.
fn outcome(p: &Principal, out: IssueOutcome) -> Value {
    let credentials = out
        .credentials
        .as_ref()
        .filter(|_| p.is(&out.record.requester.id))
        .map(CredentialsView::from);
    wire::to_value(&RequestAnswer::new(out.record, credentials))
}

/// `{"request": ...}` without credentials.
fn record(r: RequestRecord) -> Json<Value> {
    Json(wire::to_value(&RequestAnswer::new(r, None)))
}

/// `POST /v1/requests`.
pub async fn submit(
    State(state): State<AppState>,
    Caller(p): Caller,
    JsonBody(b): JsonBody<SubmitBody>,
) -> ApiResult<Response> {
    if let Err(refused) = state.limits.admit(&p) {
        return Ok(refused.into_response());
    }
    let mut req = AccessRequest::new(&b.entitlement, duration(&b.duration)?, &b.justification)
        .with_context("source", "vending-server");
    if let Some(t) = b.ticket.as_deref() {
        req = req.with_ticket(t);
    }
    if let Some(s) = b.start_at {
        req = req.starting_at(s);
    }
    let out = state.broker.submit(&p, req).await?;
    if out.record.state == LifecycleState::Denied {
        let reasons = out.record.decision.reasons.clone();
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "denied",
            format!("denied by policy: {}", reasons.join("; ")),
        )
        .with_details(ErrorDetails::reasons(reasons).with_request(out.record.id)));
    }
    Ok((StatusCode::CREATED, Json(outcome(&p, out))).into_response())
}

/// `GET /v1/requests/{id}`.
pub async fn get_one(
    State(state): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let r = load(&state, &p, &id).await?;
    Ok(record(r))
}

/// `GET /v1/requests`.
pub async fn list(
    State(state): State<AppState>,
    Caller(p): Caller,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    // Query errors get the common error shape too.
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let states = match q.state.as_deref() {
        None | Some("") => Vec::new(),
        Some(s) => s
            .split(',')
            .map(|x| {
                LifecycleState::from_str(x.trim())
                    .map_err(|_| ApiError::bad_request(format!("unknown state `{x}`")))
            })
            .collect::<ApiResult<Vec<_>>>()?,
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let scope = q.scope.as_deref().unwrap_or("mine");
    let records = match scope {
        "mine" => {
            state
                .broker
                .list(&ListFilter {
                    requester: Some(p.id.to_string()),
                    states,
                    entitlement: q.entitlement,
                    limit,
                    ..ListFilter::default()
                })
                .await?
        }
        "approvals" => {
            let mut v = state.broker.awaiting_approval_by(&p).await?;
            v.retain(|r| {
                q.entitlement
                    .as_ref()
                    .is_none_or(|e| *e == r.request.entitlement)
            });
            v.truncate(limit);
            v
        }
        "all" => {
            if !state.broker.policy().is_admin(&p) {
                return Err(ApiError::forbidden("only admins may list all requests"));
            }
            state
                .broker
                .list(&ListFilter {
                    requester: None,
                    states,
                    entitlement: q.entitlement,
                    limit,
                    ..ListFilter::default()
                })
                .await?
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "unknown scope `{other}`: use `mine`, `approvals` or `all`"
            )))
        }
    };
    Ok(Json(wire::to_value(&RequestList::new(records))))
}

/// `POST /v1/requests/{id}/approve`.
pub async fn approve(
    State(state): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<ReasonBody>,
) -> ApiResult<Json<Value>> {
    let r = load(&state, &p, &id).await?;
    let comment = b.comment.or(b.reason).unwrap_or_default();
    let out = state.broker.approve(&p, r.id, &comment).await?;
    Ok(Json(outcome(&p, out)))
}

/// `POST /v1/requests/{id}/deny`.
pub async fn deny(
    State(state): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<ReasonBody>,
) -> ApiResult<Json<Value>> {
    let r = load(&state, &p, &id).await?;
    let reason = b.reason.or(b.comment).unwrap_or_default();
    let rec = state.broker.deny(&p, r.id, &reason).await?;
    Ok(record(rec))
}

/// `POST /v1/requests/{id}/cancel`.
pub async fn cancel(
    State(state): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<ReasonBody>,
) -> ApiResult<Json<Value>> {
    let r = load(&state, &p, &id).await?;
    let reason = b.reason.or(b.comment).unwrap_or_default();
    let rec = state.broker.cancel(&p, r.id, &reason).await?;
    Ok(record(rec))
}

/// `POST /v1/requests/{id}/revoke`.
pub async fn revoke(
    State(state): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<ReasonBody>,
) -> ApiResult<Json<Value>> {
    let r = load(&state, &p, &id).await?;
    let reason = b.reason.or(b.comment).unwrap_or_default();
    let rec = state.broker.revoke(&p, r.id, &reason).await?;
    Ok(record(rec))
}

/// `POST /v1/requests/{id}/issue`.
pub async fn issue(
    State(state): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
    JsonBody(_): JsonBody<ReasonBody>,
) -> ApiResult<Json<Value>> {
    let r = load(&state, &p, &id).await?;
    let out = state.broker.issue(&p, r.id).await?;
    Ok(Json(outcome(&p, out)))
}

/// `POST /v1/requests/{id}/extend`.
pub async fn extend(
    State(state): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<ExtendBody>,
) -> ApiResult<Response> {
    let r = load(&state, &p, &id).await?;
    if let Err(refused) = state.limits.admit(&p) {
        return Ok(refused.into_response());
    }
    let out = state
        .broker
        .extend(&p, r.id, duration(&b.duration)?, &b.justification)
        .await?;
    Ok((StatusCode::CREATED, Json(outcome(&p, out))).into_response())
}

/// `GET /v1/requests/{id}/credentials`: the requester only.
pub async fn credentials(
    State(state): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let rid = parse_id(&id)?;
    let c = state
        .broker
        .credentials(&p, rid)
        .await
        .map_err(|e| match e {
            jit_core::Error::NotFound { .. } => ApiError::request_not_found(&id),
            e => e.into(),
        })?;
    Ok(Json(wire::to_value(&CredentialsAnswer {
        credentials: CredentialsView::from(&c),
    })))
}

fn require_admin(state: &AppState, p: &Principal) -> ApiResult<()> {
    if state.broker.policy().is_admin(p) {
        Ok(())
    } else {
        Err(ApiError::forbidden("only admins may read the audit log"))
    }
}

/// `GET /v1/audit`: the chain as JSON Lines.
pub async fn audit_export(State(state): State<AppState>, Caller(p): Caller) -> ApiResult<Response> {
    require_admin(&state, &p)?;
    let mut out = Vec::new();
    state.broker.export_audit(&mut out).await?;
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], out).into_response())
}

/// `GET /v1/audit/verify`: the stored chain, its seals (with an audit key)
/// and the checkpoints (with a checkpoint file). A broken chain is a `200`
/// answer with `"ok": false` naming the first broken record (`seq`) and
/// the `kind` of break; a stored row that does not decode is such a break.
pub async fn audit_verify(
    State(state): State<AppState>,
    Caller(p): Caller,
) -> ApiResult<Json<Value>> {
    require_admin(&state, &p)?;
    let mut verifier = state
        .broker
        .audit_verifier()
        .sealed_from(state.audit.sealed_from);
    if let Some(path) = &state.audit.checkpoint_file {
        verifier = verifier.checkpoints(jit_core::audit::read_checkpoint_file(path)?);
    }
    let result = state.broker.verify_audit_with(&verifier).await?;
    Ok(Json(wire::to_value(&AuditVerification::of(&result))))
}

/// `POST /v1/admin/archive` (admins): archives and prunes the finished
/// requests older than `older_than` (the server's `keep` when absent) into
/// the configured `[retention] dir`, batch by batch, and answers with the
/// files written. `409` when the server has no `[retention] dir`.
pub async fn admin_archive(
    State(state): State<AppState>,
    Caller(p): Caller,
    JsonBody(b): JsonBody<ArchiveBody>,
) -> ApiResult<Json<Value>> {
    if !state.broker.policy().is_admin(&p) {
        return Err(ApiError::forbidden("only admins may archive"));
    }
    let Some(retention) = &state.retention else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "retention_off",
            "this server has no `[retention] dir` to archive into",
        ));
    };
    let older_than = match &b.older_than {
        Some(text) => jit_core::types::parse_duration(text).map_err(|e| {
            ApiError::bad_request(format!("`older_than` = `{}`: {e}", text.escape_debug()))
        })?,
        None => retention.keep(),
    };
    let answer = retention.archive(&state.broker, older_than).await?;
    tracing::info!(
        admin = %p.id,
        requests = answer.requests,
        files = answer.archives.len(),
        "archive run by an admin"
    );
    Ok(Json(wire::to_value(&answer)))
}

/// `GET /v1/entitlements`.
pub async fn entitlements(State(state): State<AppState>, Caller(_): Caller) -> Json<Value> {
    let entitlements = state
        .broker
        .policy()
        .entitlements()
        .into_iter()
        .map(|e| EntitlementSummary {
            id: e.id.clone(),
            description: e.description.clone(),
            provider: e.provider.clone(),
            max_duration: e.max_duration.to_string(),
        })
        .collect();
    Json(wire::to_value(&EntitlementList { entitlements }))
}

/// `GET /v1/whoami`.
pub async fn whoami(State(state): State<AppState>, Caller(p): Caller) -> Json<Value> {
    let admin = state.broker.policy().is_admin(&p);
    Json(wire::to_value(&WhoAmI {
        principal: p,
        admin,
    }))
}

/// `GET /healthz`.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: the store answers.
pub async fn readyz(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    state.broker.store().audit(1, 1).await.map_err(|e| {
        tracing::warn!(error = %e, "readiness: store unreachable");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "store unreachable",
        )
    })?;
    Ok(Json(json!({ "status": "ready" })))
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<AppState>) -> Response {
    state
        .metrics
        .skipped_records
        .set(i64::try_from(state.broker.skipped_records()).unwrap_or(i64::MAX));
    let text = state
        .metrics
        .render(state.broker.store().as_ref(), state.metrics_cache)
        .await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// Public keys may be cached (every other answer is `no-store`).
const PUBLIC_CACHE: (header::HeaderName, &str) = (header::CACHE_CONTROL, "public, max-age=300");

/// `GET /.well-known/jwks.json` (demo mode only).
pub async fn jwks(State(state): State<AppState>) -> ApiResult<Response> {
    state
        .demo_jwks
        .as_deref()
        .map(|v| ([PUBLIC_CACHE], Json(v)).into_response())
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route"))
}

/// `GET /v1/providers/{name}/jwks.json`: a local provider's public keys.
pub async fn provider_jwks(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    state
        .local
        .get(&name)
        .map(|k| ([PUBLIC_CACHE], Json(k.jwks.clone())).into_response())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no local provider `{}`", name.escape_debug()),
            )
        })
}

/// `POST /v1/introspect` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectBody {
    token: String,
    #[serde(default)]
    audience: Option<String>,
    /// RFC 7662's hint; only `access_token` (or none) is meaningful here.
    #[serde(default)]
    token_type_hint: Option<String>,
}

/// The `aud` a token claims, read without trusting it: it only picks what
/// the signature check then requires.
fn claimed_audience(token: &str) -> Option<String> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v["aud"].as_str().map(str::to_string)
}

/// `POST /v1/introspect` (see the module docs). Never says why a token is
/// inactive: that would help whoever is trying tokens. Only the configured
/// resource servers (`[introspection] clients`) and the token's own subject
/// read its claims; anyone else signed in learns `active` alone.
pub async fn introspect(
    State(state): State<AppState>,
    Caller(caller): Caller,
    req: Request,
) -> ApiResult<Json<Value>> {
    let form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let body: IntrospectBody = if form {
        axum::Form::<IntrospectBody>::from_request(req, &state)
            .await
            .map_err(|e| ApiError::bad_request(format!("invalid form body: {}", e.body_text())))?
            .0
    } else {
        JsonBody::<IntrospectBody>::from_request(req, &state)
            .await?
            .0
    };
    let inactive = Json(json!({ "active": false }));
    // RFC 7662 lets the server ignore the hint: there is one kind of token here.
    let _ = body.token_type_hint;
    let token = body.token.trim();
    let Some(audience) = body.audience.clone().or_else(|| claimed_audience(token)) else {
        return Ok(inactive);
    };
    let Some(claims): Option<LocalClaims> = state
        .local
        .values()
        .find_map(|k| k.verifier.verify(token, &audience).ok())
    else {
        return Ok(inactive);
    };
    // The store has the last word: revoked, expired or replaced grants are
    // inactive whatever this process's revocation list says.
    let rec = match state.broker.get(claims.rid).await {
        Ok(r) => r,
        Err(jit_core::Error::NotFound { .. }) => return Ok(inactive),
        Err(e) => return Err(e.into()),
    };
    if rec.state != LifecycleState::Active || rec.grant_id() != Some(claims.jti) {
        return Ok(inactive);
    }
    let caller_id = caller.id.as_str();
    if !state.introspection_clients.contains(caller_id) && caller_id != claims.sub {
        return Ok(Json(json!({ "active": true })));
    }
    Ok(Json(json!({
        "active": true,
        "token_type": "Bearer",
        "iss": claims.iss,
        "sub": claims.sub,
        "aud": claims.aud,
        "jti": claims.jti,
        "scope": claims.scopes.join(" "),
        "iat": claims.iat,
        "nbf": claims.nbf,
        "exp": claims.exp,
        "request_id": claims.rid,
        "entitlement": claims.ent,
    })))
}

/// Unknown routes.
pub async fn fallback() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

/// Known routes with the wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use jit_core::local::{LocalKey, LocalProvider};
    use jit_core::{CataloguePolicy, MemoryStore};

    use super::*;

    /// What the server writes for an operation parses as the shared wire
    /// type (what the `jit` CLI reads), and keeps its shape.
    #[tokio::test]
    async fn answers_round_trip_through_the_wire_types() {
        let policy = CataloguePolicy::from_toml_str(crate::demo::CATALOGUE).unwrap();
        let broker = Broker::builder(Arc::new(MemoryStore::new()), Arc::new(policy))
            .provider(Arc::new(LocalProvider::new(LocalKey::generate(), "jit")))
            .build()
            .unwrap();
        let alice = Principal::new("alice").unwrap().with_group("engineering");
        let bob = Principal::new("bob").unwrap().with_group("leads");
        let out = broker
            .submit(
                &alice,
                AccessRequest::new("demo-api", "10m".parse().unwrap(), "try"),
            )
            .await
            .unwrap();
        let record = out.record.clone();

        // The requester gets the credentials, anyone else the record alone.
        let mine = outcome(&alice, out.clone());
        assert_eq!(mine["credentials"]["kind"], "local_token");
        // The stored copy of the entitlement (its provider target) is not shown.
        assert!(record.entitlement.is_some());
        assert!(mine["request"].get("entitlement").is_none(), "{mine}");
        assert_eq!(mine["request"]["request"]["entitlement"], "demo-api");
        let record = jit_core::wire::caller_view(record);
        let parsed: RequestAnswer = serde_json::from_value(mine.clone()).unwrap();
        assert_eq!(parsed.request, record);
        assert!(matches!(
            parsed.credentials,
            Some(CredentialsView::LocalToken { .. })
        ));
        // Written again, the same bytes: nothing is lost or reordered.
        assert_eq!(wire::to_value(&parsed).to_string(), mine.to_string());
        let theirs = outcome(&bob, out);
        assert!(theirs.get("credentials").is_none());

        let list = wire::to_value(&RequestList::new([record.clone()]));
        let parsed: RequestList = serde_json::from_value(list).unwrap();
        assert_eq!(parsed.requests, [record]);
    }

    #[tokio::test]
    async fn errors_are_one_envelope() {
        use axum::response::IntoResponse;
        let resp = ApiError::from(jit_core::Error::Denied {
            reasons: vec!["not on call".into()],
        })
        .into_response();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let e: jit_core::wire::ErrorEnvelope = serde_json::from_slice(&body).unwrap();
        assert_eq!(e.error.code, "denied");
        assert_eq!(e.reasons(), ["not on call"]);
        // Compared as JSON: key order follows serde_json's `preserve_order`,
        // which another crate in an `--all-features` build may turn on.
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
            serde_json::json!({"error": {"code": "denied", "details": {"reasons": ["not on call"]},
                                         "message": "denied by policy: not on call"}})
        );
    }
}
