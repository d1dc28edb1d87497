//! Test tooling (feature `testing`): a local fake of the Google APIs jit-gcp
//! calls, test service-account keys, and a probe that asks the fake who
//! holds what now.
//!
//! # The fake
//!
//! [`FakeGcp`] answers, from the discovery documents in the shared specs
//! (`cloudresourcemanager.v3`, `iam.v1`, `iamcredentials.v1`):
//!
//! - `POST /v3/{projects,folders,organizations}/*:getIamPolicy` and
//!   `:setIamPolicy` (Resource Manager v3; the requested version in the body);
//! - `POST /v1/projects/-/serviceAccounts/*:getIamPolicy` (the requested
//!   version in the query parameter `options.requestedPolicyVersion`) and
//!   `:setIamPolicy` (IAM v1);
//! - `POST /v1/projects/-/serviceAccounts/*:generateAccessToken` (IAM Credentials v1);
//! - `POST /token`, the OAuth 2 token endpoint with the JWT bearer assertion
//!   grant (RFC 7523), for clients that exchange a signed assertion.
//!
//! What it enforces, as Google documents it:
//!
//! - **Authentication.** Every API call carries a bearer token that is
//!   either a JWT signed (RS256) by a registered test key, with `iss` = `sub`
//!   = the key's account, `kid` = the key's id and a lifetime of at most an
//!   hour (google-cloud-auth's self-signed JWT for service accounts), or an
//!   access token the fake's `/token` endpoint issued. Anything else is 401
//!   `UNAUTHENTICATED`. Token lifetimes are checked against the wall clock
//!   (the client signs with it), never the fake's controllable clock.
//! - **Etags.** Every write makes a new etag. A `setIamPolicy` with an etag
//!   that is not the current one is refused with HTTP 409 `ABORTED`; one
//!   without an etag overwrites blindly, as IAM does (and, written at
//!   version 1, drops every condition: that is the hazard jit-gcp must never
//!   trigger; [`FakeGcp::writes_without_etag`] counts such writes).
//! - **Versions.** A policy with conditions is returned at version 3 only
//!   when version 3 was requested; asked for at version 1 it comes back
//!   flattened, each conditional binding's role renamed
//!   `<role>_withcond_<hash>` and its condition dropped, as Google documents.
//!   A write with conditions below version 3, or with a flattened role, is
//!   400 `INVALID_ARGUMENT`.
//! - **Limits** (<https://cloud.google.com/iam/quotas>): 1,500 principals per
//!   policy, 250 groups, 20 conditional bindings per role and principal; basic
//!   roles and `allUsers`/`allAuthenticatedUsers` refused in conditional
//!   bindings; each binding needs a member.
//! - **Schemas.** Every request body is checked against the discovery
//!   document's schema for it (unknown fields and wrong types are 400).
//! - **Tokens.** `lifetime` at most 3,600 s (43,200 s for service accounts
//!   registered as allowed to extend), `scope` required, the service account
//!   and every delegate must exist.
//!
//! Errors use Google's JSON envelope: `{"error": {"code", "message", "status"}}`.
//!
//! The fake's own clock (a [`jit_core::ManualClock`] the test shares with
//! the provider) decides `expireTime` and evaluates conditions:
//! [`FakeGcp::holds`] says whether a member holds a role now, evaluating
//! `request.time < timestamp("…")` (the only condition form it understands;
//! any other condition never applies).
#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)]

mod fake;
mod keys;

pub use fake::{FakeGcp, FakeRequest, FakeResponse};
pub use keys::TestKey;

use std::sync::Arc;

use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::{Json, Router};
use jit_core::testing::provider::AccessProbe;
use jit_core::{Credentials, IssuedGrant};

/// Asks the fake whether an issued grant works right now: a binding's
/// member holds its role (conditions evaluated at the fake's clock), or a
/// token is one the fake minted and has not expired.
#[derive(Clone, Debug)]
pub struct FakeProbe(pub Arc<FakeGcp>);

#[async_trait]
impl AccessProbe for FakeProbe {
    async fn works(&self, credentials: &Credentials, issued: &IssuedGrant) -> bool {
        match credentials {
            Credentials::AccessToken { token, .. } => self.0.token_works(token.expose()),
            Credentials::Assignment { .. } => {
                let d = |k: &str| issued.details.get(k).and_then(|v| v.as_str());
                match (d("resource"), d("role"), d("member")) {
                    (Some(r), Some(role), Some(m)) => self.0.holds(r, role, m),
                    _ => false,
                }
            }
            _ => false,
        }
    }
}

/// The fake's route table: every request goes to [`FakeGcp::handle`]. Serve
/// it with jit-core's fake-server harness (`jit_core::testing::fake::FakeServer`).
pub fn router(fake: Arc<FakeGcp>) -> Router {
    Router::new().fallback(handle).with_state(fake)
}

async fn handle(
    State(fake): State<Arc<FakeGcp>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok());
    let out = fake.handle(FakeRequest {
        method: method.as_str(),
        path: uri.path(),
        query: uri.query().unwrap_or_default(),
        authorization,
        body: &body,
    });
    (
        StatusCode::from_u16(out.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Json(out.body),
    )
}
