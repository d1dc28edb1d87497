//! Test tooling (feature `testing`): a fake of ARM's authorization API and
//! of Entra ID's client-credentials token endpoint, built from the Swagger
//! files in `testdata/specs/` (copies of the public Azure REST API specs),
//! served over HTTPS by jit-core's fake-server harness
//! ([`jit_core::testing::fake`]).
//!
//! What the fake does, as ARM does it:
//!
//! | path (after the scope) | api-version | behaviour |
//! | --- | --- | --- |
//! | `POST /{tenant}/oauth2/v2.0/token` | | client credentials: tenant, client id, secret and `scope=<audience>/.default` checked; an opaque bearer token with an expiry on the fake's clock |
//! | `PUT …/roleAssignmentScheduleRequests/{guid}` | `2020-10-01` | body validated against `RoleAssignmentScheduleRequest`; `AdminAssign` creates a schedule (`startDateTime` + `duration`), refused over the policy maximum (`RoleAssignmentRequestPolicyValidationFailed`, `ExpirationRule`), when the principal already holds the role there (`RoleAssignmentExists`, 409) or the name is taken (`RoleAssignmentRequestExists`, 409); `AdminRemove` ends the principal's schedule (`RoleAssignmentDoesNotExist` when none); 201 |
//! | `GET …/roleAssignmentScheduleRequests/{guid}` | `2020-10-01` | 200, or 404 `RoleAssignmentScheduleRequestNotFound`; a request held pending ([`FakeAzure::set_pending_reads`]) provisions after that many reads |
//! | `POST …/roleAssignmentScheduleRequests/{guid}/cancel` | `2020-10-01` | cancels a pending request |
//! | `GET …/roleAssignmentSchedules?$filter=principalId eq '…'` | `2020-10-01` | the schedules at the scope whose window contains the fake's now (an expired one disappears: native expiry) |
//! | `GET …/roleAssignmentSchedules/{name}` | `2020-10-01` | one such schedule (the name a request's `targetRoleAssignmentScheduleId` gives), or 404 `RoleAssignmentScheduleNotFound` once it is over |
//! | `GET …/roleDefinitions?$filter=roleName eq '…'` | `2022-04-01` | the role definitions of that display name (exact, OData quotes doubled), answered as `RoleDefinitionListResult`: a few built-in roles ([`BUILT_IN_ROLES`], ids under the scope's subscription, or tenant-level for a management group) and those added with [`FakeAzure::add_role_definition`]; another filter is 400 `InvalidFilter` |
//! | `GET …/roleManagementPolicyAssignments` | `2020-10-01` | one policy assignment per role with `effectiveRules`, whose `Expiration_Admin_Assignment` rule carries [`FakeAzure::set_policy_max`] |
//! | `PUT`/`GET`/`DELETE …/roleAssignments/{guid}` | `2022-04-01` | body validated against `RoleAssignmentCreateParameters`; 201 / 200 / 200 (204 when absent) |
//!
//! Every ARM call needs a bearer token the fake issued, for the ARM
//! audience, from the right tenant, not expired (401 with ARM's codes
//! otherwise), and an `api-version` (400 `MissingApiVersionParameter`,
//! `InvalidApiVersionParameter`). Errors use the ARM envelope
//! `{"error": {"code", "message"}}`. 429 and 5xx with `Retry-After` are
//! injected with the harness's faults ([`FakeServer::inject`]).
#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)]
// Handlers return early with the ARM error response itself; its size does
// not matter in a test fake.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use chrono::{DateTime, TimeDelta, Utc};
use jit_core::testing::fake::FakeServer;
use jit_core::testing::provider::{AccessProbe, ProviderHarness};
use jit_core::{
    Clock, Credentials, Entitlement, GrantDuration, IssuedGrant, ManualClock, Principal, Secret,
};

/// Built-in roles the fake knows by display name (their ids are the same in
/// every tenant): fixtures, not a catalogue of Azure's roles.
pub const BUILT_IN_ROLES: [(&str, &str); 4] = [
    ("Owner", "8e3af657-a8ff-443c-a75c-2fe8c4bcb635"),
    ("Contributor", "b24988ac-6180-48a0-ab88-20f7382dd24c"),
    ("Reader", "acdd72a7-3385-48ef-bd42-f606fba81ae7"),
    (
        "Storage Blob Data Reader",
        "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1",
    ),
];
use serde_json::{json, Value};
use uuid::Uuid;

use crate::client::{
    parse_iso_duration, ASSIGNMENTS_API_VERSION, PIM_API_VERSION, ROLE_DEFINITIONS_API_VERSION,
};
use crate::config::{AzureConfig, Mode};
use crate::provider::AzureProvider;

/// The fake's tenant.
pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
/// The broker's application id at the fake.
pub const CLIENT_ID: &str = "5f9d3b1e-0c3a-4e9b-9d1e-6f1a2b3c4d5e";
/// The broker's client secret at the fake (tests assert it never leaks).
pub const CLIENT_SECRET: &str = "fake-client-secret-Zq8~never-log-me";
/// A subscription for fixtures.
pub const SUBSCRIPTION: &str = "0b1f6471-1bf0-4dda-aec3-cb9272f09590";
/// A requester's object id for fixtures.
pub const OBJECT_ID: &str = "a3bb8764-cb92-4276-9d2a-ca1e895e55ea";

/// The Swagger of the PIM schedule request API (2020-10-01).
pub const SCHEDULE_REQUEST_SPEC: &str =
    include_str!("../testdata/specs/RoleAssignmentScheduleRequest.2020-10-01.json");
/// The Swagger of the role assignment schedule API (2020-10-01).
pub const SCHEDULE_SPEC: &str =
    include_str!("../testdata/specs/RoleAssignmentSchedule.2020-10-01.json");
/// The Swagger of plain role assignments (2022-04-01).
pub const ASSIGNMENTS_SPEC: &str =
    include_str!("../testdata/specs/RoleAssignments.2022-04-01.json");

/// Validates `body` against definition `definition` of a Swagger 2.0
/// document: `$ref`s inside the document are resolved, `allOf` merged;
/// `type`, `required`, `enum` and `format: date-time` are checked, and
/// unknown properties and (when `request`) read-only properties are
/// reported. Returns every violation with its JSON path.
pub fn validate_against(spec: &str, definition: &str, body: &Value, request: bool) -> Vec<String> {
    let doc: Value = serde_json::from_str(spec).expect("spec is JSON");
    let schema = json!({"$ref": format!("#/definitions/{definition}")});
    let mut errors = Vec::new();
    check(&doc, &schema, body, "$", request, &mut errors);
    errors
}

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    let mut s = schema;
    for _ in 0..16 {
        match s.get("$ref").and_then(Value::as_str) {
            Some(r) if r.starts_with("#/") => {
                s = doc.pointer(&r[1..]).unwrap_or(&Value::Null);
            }
            // A reference into another file (common types): not followed,
            // the value is accepted as it is.
            Some(_) => return &Value::Null,
            None => return s,
        }
    }
    s
}

fn check(doc: &Value, schema: &Value, v: &Value, path: &str, request: bool, out: &mut Vec<String>) {
    let s = resolve(doc, schema);
    if s.is_null() {
        return;
    }
    // allOf: a value must satisfy every part; properties are the union.
    let mut props = serde_json::Map::new();
    let mut required: Vec<String> = Vec::new();
    let mut parts = vec![s];
    if let Some(all) = s.get("allOf").and_then(Value::as_array) {
        parts.extend(all.iter().map(|p| resolve(doc, p)));
    }
    for p in &parts {
        if let Some(ps) = p.get("properties").and_then(Value::as_object) {
            for (k, ps) in ps {
                props.insert(k.clone(), ps.clone());
            }
        }
        if let Some(r) = p.get("required").and_then(Value::as_array) {
            required.extend(r.iter().filter_map(Value::as_str).map(str::to_string));
        }
    }
    let ty = s.get("type").and_then(Value::as_str);
    match ty {
        Some("string") => {
            let Some(text) = v.as_str() else {
                if !v.is_null() {
                    out.push(format!("{path}: expected a string"));
                }
                return;
            };
            if let Some(e) = s.get("enum").and_then(Value::as_array) {
                if !e.iter().any(|x| x.as_str() == Some(text)) {
                    out.push(format!("{path}: `{text}` is not one of the enum values"));
                }
            }
            if s.get("format").and_then(Value::as_str) == Some("date-time")
                && DateTime::parse_from_rfc3339(text).is_err()
            {
                out.push(format!("{path}: `{text}` is not a date-time"));
            }
        }
        Some("boolean") if !v.is_boolean() && !v.is_null() => {
            out.push(format!("{path}: expected a boolean"))
        }
        Some("integer") if !v.is_i64() && !v.is_u64() && !v.is_null() => {
            out.push(format!("{path}: expected an integer"))
        }
        Some("array") => match v.as_array() {
            Some(items) => {
                if let Some(item) = s.get("items") {
                    for (i, x) in items.iter().enumerate() {
                        check(doc, item, x, &format!("{path}[{i}]"), request, out);
                    }
                }
            }
            None if !v.is_null() => out.push(format!("{path}: expected an array")),
            None => {}
        },
        _ => {}
    }
    if ty == Some("object") || !props.is_empty() {
        let Some(obj) = v.as_object() else {
            if !v.is_null() {
                out.push(format!("{path}: expected an object"));
            }
            return;
        };
        for r in &required {
            if obj.get(r).is_none_or(Value::is_null) {
                out.push(format!("{path}.{r}: required"));
            }
        }
        for (k, x) in obj {
            match props.get(k) {
                None if !props.is_empty() => out.push(format!("{path}.{k}: not in the schema")),
                None => {}
                Some(ps) => {
                    let resolved = resolve(doc, ps);
                    let read_only = ps.get("readOnly").and_then(Value::as_bool) == Some(true)
                        || resolved.get("readOnly").and_then(Value::as_bool) == Some(true);
                    if request && read_only {
                        out.push(format!("{path}.{k}: read-only, must not be sent"));
                    }
                    check(doc, ps, x, &format!("{path}.{k}"), request, out);
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Token {
    tenant: String,
    audience: String,
    expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
struct Schedule {
    name: String,
    scope: String,
    principal: String,
    principal_type: String,
    role: String,
    request_id: String,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    removed: bool,
}

#[derive(Debug, Default)]
struct Inner {
    audience: String,
    tokens: HashMap<String, Token>,
    /// Schedule requests by (scope lowercase, name lowercase).
    requests: BTreeMap<(String, String), Value>,
    /// Reads left before a pending request provisions.
    pending: HashMap<(String, String), u32>,
    schedules: Vec<Schedule>,
    /// Indexes into `schedules` (by principal, by name, by request id,
    /// lowercase), so a long benchmark run does not measure the fake's scans.
    by_principal: HashMap<String, Vec<usize>>,
    by_name: HashMap<String, usize>,
    by_request: HashMap<String, Vec<usize>>,
    assignments: BTreeMap<(String, String), Value>,
    policy_max: HashMap<String, String>,
    default_policy_max: Option<String>,
    pending_reads: u32,
    approval_required: bool,
    unknown_principals: HashSet<String>,
    unknown_roles: HashSet<String>,
    violations: Vec<String>,
    writes: usize,
    /// Extra role definitions: (display name, definition GUID).
    role_definitions: Vec<(String, String)>,
    role_lookups: usize,
}

impl Inner {
    fn push_schedule(&mut self, s: Schedule) {
        let i = self.schedules.len();
        self.by_principal
            .entry(s.principal.to_ascii_lowercase())
            .or_default()
            .push(i);
        self.by_name.insert(s.name.to_ascii_lowercase(), i);
        self.by_request
            .entry(s.request_id.to_ascii_lowercase())
            .or_default()
            .push(i);
        self.schedules.push(s);
    }

    /// Indexes of `principal`'s schedules.
    fn of_principal(&self, principal: &str) -> impl Iterator<Item = usize> + '_ {
        self.by_principal
            .get(&principal.to_ascii_lowercase())
            .into_iter()
            .flatten()
            .copied()
    }
}

/// The fake's state. Cheap to share: everything is behind one lock.
pub struct FakeAzure {
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for FakeAzure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeAzure").finish_non_exhaustive()
    }
}

fn arm_error(status: u16, code: &str, message: impl Into<String>) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(json!({"error": {"code": code, "message": message.into()}})),
    )
        .into_response()
}

fn ok(status: u16, body: Value) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
        axum::Json(body),
    )
        .into_response()
}

fn is_guid(s: &str) -> bool {
    s.len() == 36 && Uuid::parse_str(s).is_ok()
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl FakeAzure {
    /// A fake on `clock` with no policy maximum (set one with [`FakeAzure::set_policy_max`]).
    pub fn new(clock: ManualClock) -> Arc<Self> {
        Self::on_clock(Arc::new(clock))
    }

    /// A fake on any clock: the system clock when it serves another
    /// process (a vending server) whose time it cannot move.
    pub fn on_clock(clock: Arc<dyn Clock>) -> Arc<Self> {
        Arc::new(Self {
            clock,
            inner: Mutex::new(Inner::default()),
        })
    }

    /// A role definition the fake finds by display name, beside
    /// [`BUILT_IN_ROLES`] (a custom role; the same name twice makes a
    /// lookup find two).
    pub fn add_role_definition(&self, name: &str, guid: &str) {
        self.lock()
            .role_definitions
            .push((name.to_string(), guid.to_string()));
    }

    /// How many role definition lookups by name reached the fake.
    pub fn role_lookups(&self) -> usize {
        self.lock().role_lookups
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The role management policy's maximum for admin assignments (ISO-8601),
    /// for every role without its own.
    pub fn set_default_policy_max(&self, iso: &str) {
        self.lock().default_policy_max = Some(iso.to_string());
    }

    /// The maximum for one role definition id.
    pub fn set_policy_max(&self, role: &str, iso: &str) {
        self.lock()
            .policy_max
            .insert(role.to_ascii_lowercase(), iso.to_string());
    }

    /// New schedule requests stay `PendingProvisioning` for this many reads.
    pub fn set_pending_reads(&self, n: u32) {
        self.lock().pending_reads = n;
    }

    /// New `AdminAssign` requests wait for a PIM approval (`PendingApproval`).
    pub fn set_approval_required(&self, on: bool) {
        self.lock().approval_required = on;
    }

    /// This object id is unknown to the tenant (`PrincipalNotFound`).
    pub fn forget_principal(&self, object_id: &str) {
        self.lock()
            .unknown_principals
            .insert(object_id.to_ascii_lowercase());
    }

    /// This role definition does not exist (`RoleDefinitionDoesNotExist`).
    pub fn forget_role(&self, role: &str) {
        self.lock().unknown_roles.insert(role.to_ascii_lowercase());
    }

    /// Schema violations in request bodies seen so far (each also answered 400).
    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    /// Writes (PUT, POST, DELETE) that reached the ARM routes.
    pub fn writes(&self) -> usize {
        self.lock().writes
    }

    /// How many PIM schedules of `principal` for `role` at `scope` are in
    /// force at the fake's now.
    pub fn active_schedules(&self, scope: &str, principal: &str, role: &str) -> usize {
        let now = self.clock.now();
        self.lock()
            .schedules
            .iter()
            .filter(|s| {
                s.scope.eq_ignore_ascii_case(scope)
                    && s.principal.eq_ignore_ascii_case(principal)
                    && s.role.eq_ignore_ascii_case(role)
                    && !s.removed
                    && s.start <= now
                    && now < s.end
            })
            .count()
    }

    /// Whether a plain role assignment of this name exists at `scope`.
    pub fn has_assignment(&self, scope: &str, name: &str) -> bool {
        self.lock()
            .assignments
            .contains_key(&(scope.to_ascii_lowercase(), name.to_ascii_lowercase()))
    }

    /// Plain role assignments in existence.
    pub fn assignment_count(&self) -> usize {
        self.lock().assignments.len()
    }

    /// The schedule request `name` at `scope` as the fake keeps it.
    pub fn request_json(&self, scope: &str, name: &str) -> Option<Value> {
        self.lock()
            .requests
            .get(&(scope.to_ascii_lowercase(), name.to_ascii_lowercase()))
            .cloned()
    }

    /// Every schedule request made (both `AdminAssign` and `AdminRemove`).
    pub fn request_count(&self) -> usize {
        self.lock().requests.len()
    }

    /// The fake's routes (token endpoint and ARM) over this state.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new().fallback(handle).with_state(self.clone())
    }

    fn token(&self, form: &HashMap<String, String>, tenant: &str) -> Response {
        let bad = |status: u16, error: &str, code: u32, description: &str| {
            (
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
                axum::Json(json!({
                    "error": error,
                    "error_description": format!("AADSTS{code}: {description}"),
                    "error_codes": [code],
                })),
            )
                .into_response()
        };
        if tenant != TENANT {
            return bad(400, "invalid_request", 90002, "tenant not found");
        }
        if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
            return bad(
                400,
                "unsupported_grant_type",
                70003,
                "unsupported grant type",
            );
        }
        if form.get("client_id").map(String::as_str) != Some(CLIENT_ID) {
            return bad(400, "unauthorized_client", 700016, "application not found");
        }
        if form.get("client_secret").map(String::as_str) != Some(CLIENT_SECRET) {
            return bad(
                401,
                "invalid_client",
                7000215,
                "invalid client secret provided",
            );
        }
        let mut inner = self.lock();
        let want = format!("{}/.default", inner.audience);
        let scope = form.get("scope").cloned().unwrap_or_default();
        if scope.trim_end_matches('/') != want && scope != format!("{}//.default", inner.audience) {
            return bad(
                400,
                "invalid_scope",
                70011,
                "the provided scope is not valid",
            );
        }
        let token = format!("fake-token-{}", Uuid::new_v4().simple());
        let audience = inner.audience.clone();
        // Long enough that moving the clock over a grant's window does not
        // outlive azure_identity's own (real-time) cache of the token.
        let expires_in = 24 * 3600;
        inner.tokens.insert(
            token.clone(),
            Token {
                tenant: tenant.to_string(),
                audience,
                expires_at: self.clock.now() + TimeDelta::seconds(expires_in),
            },
        );
        ok(
            200,
            json!({"token_type": "Bearer", "expires_in": expires_in, "ext_expires_in": expires_in, "access_token": token}),
        )
    }

    fn authorize(&self, headers: &HeaderMap) -> Result<(), Response> {
        let Some(value) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
            return Err(arm_error(
                401,
                "AuthenticationFailed",
                "authentication failed: the authorization header is missing",
            ));
        };
        let Some(token) = value.strip_prefix("Bearer ") else {
            return Err(arm_error(
                401,
                "InvalidAuthenticationToken",
                "the access token is invalid",
            ));
        };
        let inner = self.lock();
        let Some(t) = inner.tokens.get(token) else {
            return Err(arm_error(
                401,
                "InvalidAuthenticationToken",
                "the access token is invalid",
            ));
        };
        if t.tenant != TENANT {
            return Err(arm_error(
                401,
                "InvalidAuthenticationTokenTenant",
                "the access token is from the wrong issuer",
            ));
        }
        if t.audience != inner.audience {
            return Err(arm_error(
                401,
                "InvalidAuthenticationTokenAudience",
                "the access token has an invalid audience",
            ));
        }
        if t.expires_at <= self.clock.now() {
            return Err(arm_error(
                401,
                "ExpiredAuthenticationToken",
                "the access token expiry has passed",
            ));
        }
        Ok(())
    }

    fn arm(
        &self,
        method: &Method,
        path: &str,
        query: &HashMap<String, String>,
        body: &[u8],
    ) -> Response {
        let Some((scope, rest)) = path.split_once("/providers/Microsoft.Authorization/") else {
            return arm_error(404, "InvalidResourceType", format!("no route for `{path}`"));
        };
        if crate::target::Scope::parse(scope).is_err() {
            return arm_error(
                400,
                "InvalidScope",
                format!("`{scope}` is not a valid scope"),
            );
        }
        let segments: Vec<&str> = rest.split('/').collect();
        let want_version = match segments.first().copied() {
            Some("roleAssignments") => ASSIGNMENTS_API_VERSION,
            Some("roleDefinitions") => ROLE_DEFINITIONS_API_VERSION,
            Some(_) => PIM_API_VERSION,
            None => PIM_API_VERSION,
        };
        match query.get("api-version") {
            None => {
                return arm_error(
                    400,
                    "MissingApiVersionParameter",
                    "the api-version query parameter (?api-version=) is required for all requests",
                )
            }
            Some(v) if v != want_version => {
                return arm_error(
                    400,
                    "InvalidApiVersionParameter",
                    format!(
                    "the api-version `{v}` is invalid; the supported version is `{want_version}`"
                ),
                )
            }
            Some(_) => {}
        }
        let json_body = || -> Result<Value, Response> {
            serde_json::from_slice(body).map_err(|_| {
                arm_error(
                    400,
                    "InvalidRequestContent",
                    "the request content was invalid and could not be deserialized",
                )
            })
        };
        if *method != Method::GET {
            self.lock().writes += 1;
        }
        match (method.as_str(), segments.as_slice()) {
            ("PUT", ["roleAssignmentScheduleRequests", name]) => match json_body() {
                Ok(b) => self.put_request(scope, name, b),
                Err(r) => r,
            },
            ("GET", ["roleAssignmentScheduleRequests", name]) => self.get_request(scope, name),
            ("POST", ["roleAssignmentScheduleRequests", name, "cancel"]) => {
                self.cancel_request(scope, name)
            }
            ("GET", ["roleAssignmentSchedules"]) => {
                self.list_schedules(scope, query.get("$filter").map(String::as_str))
            }
            ("GET", ["roleAssignmentSchedules", name]) => self.get_schedule(scope, name),
            ("GET", ["roleDefinitions"]) => {
                self.list_role_definitions(scope, query.get("$filter").map(String::as_str))
            }
            ("GET", ["roleManagementPolicyAssignments"]) => {
                self.list_policies(scope, query.get("$filter").map(String::as_str))
            }
            ("PUT", ["roleAssignments", name]) => match json_body() {
                Ok(b) => self.put_assignment(scope, name, b),
                Err(r) => r,
            },
            ("GET", ["roleAssignments", name]) => {
                match self
                    .lock()
                    .assignments
                    .get(&(scope.to_ascii_lowercase(), name.to_ascii_lowercase()))
                {
                    Some(a) => ok(200, a.clone()),
                    None => arm_error(
                        404,
                        "RoleAssignmentNotFound",
                        "the role assignment does not exist",
                    ),
                }
            }
            ("DELETE", ["roleAssignments", name]) => {
                match self
                    .lock()
                    .assignments
                    .remove(&(scope.to_ascii_lowercase(), name.to_ascii_lowercase()))
                {
                    Some(a) => ok(200, a),
                    None => StatusCode::NO_CONTENT.into_response(),
                }
            }
            _ => arm_error(
                405,
                "MethodNotAllowed",
                format!("`{method} {rest}` is not supported"),
            ),
        }
    }

    fn validate(&self, spec: &str, definition: &str, body: &Value) -> Result<(), Response> {
        let errors = validate_against(spec, definition, body, true);
        if errors.is_empty() {
            return Ok(());
        }
        self.lock().violations.extend(errors.iter().cloned());
        Err(arm_error(400, "InvalidRequestContent", errors.join("; ")))
    }

    fn put_request(&self, scope: &str, name: &str, body: Value) -> Response {
        if !is_guid(name) {
            return arm_error(
                400,
                "InvalidRoleAssignmentId",
                format!("the role assignment schedule request name `{name}` is not a valid GUID"),
            );
        }
        if let Err(r) = self.validate(
            SCHEDULE_REQUEST_SPEC,
            "RoleAssignmentScheduleRequest",
            &body,
        ) {
            return r;
        }
        let p = &body["properties"];
        let principal = p["principalId"].as_str().unwrap_or_default().to_string();
        let role = p["roleDefinitionId"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let request_type = p["requestType"].as_str().unwrap_or_default().to_string();
        if !is_guid(&principal) {
            return arm_error(
                400,
                "InvalidPrincipalId",
                "the principal id is not a valid GUID",
            );
        }
        if crate::target::parse_role_definition_id(&role).is_err() {
            return arm_error(
                400,
                "InvalidRoleDefinitionId",
                "the role definition id is not valid",
            );
        }
        let now = self.clock.now();
        let mut inner = self.lock();
        let key = (scope.to_ascii_lowercase(), name.to_ascii_lowercase());
        if inner.requests.contains_key(&key) {
            return arm_error(
                409,
                "RoleAssignmentRequestExists",
                "a role assignment request with this name already exists",
            );
        }
        if inner
            .unknown_principals
            .contains(&principal.to_ascii_lowercase())
        {
            return arm_error(
                400,
                "PrincipalNotFound",
                format!("principal {principal} does not exist in the directory {TENANT}"),
            );
        }
        if inner.unknown_roles.contains(&role.to_ascii_lowercase()) {
            return arm_error(
                400,
                "RoleDefinitionDoesNotExist",
                "the specified role definition does not exist",
            );
        }
        let active = |s: &Schedule| {
            s.scope.eq_ignore_ascii_case(scope)
                && s.principal.eq_ignore_ascii_case(&principal)
                && s.role.eq_ignore_ascii_case(&role)
                && !s.removed
                && s.start <= now
                && now < s.end
        };
        let id = format!(
            "{scope}/providers/Microsoft.Authorization/roleAssignmentScheduleRequests/{name}"
        );
        let mut out = body.clone();
        let status;
        let target_schedule;
        match request_type.as_str() {
            "AdminAssign" => {
                if inner
                    .of_principal(&principal)
                    .any(|i| active(&inner.schedules[i]))
                {
                    return arm_error(
                        409,
                        "RoleAssignmentExists",
                        "the role assignment already exists",
                    );
                }
                let info = &p["scheduleInfo"];
                let start = info["startDateTime"]
                    .as_str()
                    .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                    .map(|t| t.with_timezone(&Utc))
                    .unwrap_or(now);
                let expiration = &info["expiration"];
                let end = match expiration["type"].as_str() {
                    Some("AfterDuration") => {
                        let Some(d) = expiration["duration"].as_str().and_then(parse_iso_duration)
                        else {
                            return arm_error(
                                400,
                                "InvalidScheduleInfo",
                                "expiration.duration is not a valid ISO-8601 duration",
                            );
                        };
                        start + TimeDelta::from_std(d).unwrap_or(TimeDelta::zero())
                    }
                    Some("AfterDateTime") => match expiration["endDateTime"]
                        .as_str()
                        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                    {
                        Some(t) => t.with_timezone(&Utc),
                        None => {
                            return arm_error(
                                400,
                                "InvalidScheduleInfo",
                                "expiration.endDateTime is required",
                            )
                        }
                    },
                    _ => {
                        return arm_error(
                            400,
                            "RoleAssignmentRequestPolicyValidationFailed",
                            "The following policy rules failed: [\"ExpirationRule\"]",
                        )
                    }
                };
                if end <= start {
                    return arm_error(
                        400,
                        "InvalidScheduleInfo",
                        "the schedule ends before it starts",
                    );
                }
                let max = inner
                    .policy_max
                    .get(&role.to_ascii_lowercase())
                    .or(inner.default_policy_max.as_ref())
                    .and_then(|m| parse_iso_duration(m));
                if let Some(max) = max {
                    if (end - start).num_seconds() > max.as_secs() as i64 {
                        return arm_error(
                            400,
                            "RoleAssignmentRequestPolicyValidationFailed",
                            "The following policy rules failed: [\"ExpirationRule\"]",
                        );
                    }
                }
                let schedule_name = Uuid::new_v4().to_string();
                let pending = inner.pending_reads;
                status = if inner.approval_required {
                    "PendingApproval"
                } else if pending > 0 {
                    inner.pending.insert(key.clone(), pending);
                    "PendingProvisioning"
                } else {
                    "Provisioned"
                };
                let principal_type = "User".to_string();
                let schedule = Schedule {
                    name: schedule_name.clone(),
                    scope: scope.to_string(),
                    principal: principal.clone(),
                    principal_type,
                    role: role.clone(),
                    request_id: id.clone(),
                    start,
                    end,
                    // Not in force until provisioned.
                    removed: status != "Provisioned",
                };
                inner.push_schedule(schedule);
                target_schedule = json!(schedule_name);
            }
            "AdminRemove" => {
                let found = inner
                    .of_principal(&principal)
                    .find(|i| active(&inner.schedules[*i]));
                let Some(s) = found.map(|i| &mut inner.schedules[i]) else {
                    return arm_error(
                        400,
                        "RoleAssignmentDoesNotExist",
                        "the role assignment does not exist",
                    );
                };
                s.removed = true;
                s.end = now;
                target_schedule = json!(s.name);
                status = "Revoked";
            }
            other => {
                return arm_error(
                    400,
                    "InvalidRequestType",
                    format!("request type `{other}` is not supported by the fake"),
                )
            }
        }
        let props = out["properties"].as_object_mut().expect("validated object");
        props.insert("scope".into(), json!(scope));
        props.insert("status".into(), json!(status));
        props.insert("principalType".into(), json!("User"));
        props.insert("createdOn".into(), json!(rfc3339(now)));
        props.insert("requestorId".into(), json!(CLIENT_ID));
        props.insert("targetRoleAssignmentScheduleId".into(), target_schedule);
        out["id"] = json!(id);
        out["name"] = json!(name);
        out["type"] = json!("Microsoft.Authorization/RoleAssignmentScheduleRequests");
        inner.requests.insert(key, out.clone());
        ok(201, out)
    }

    fn get_request(&self, scope: &str, name: &str) -> Response {
        let key = (scope.to_ascii_lowercase(), name.to_ascii_lowercase());
        let mut inner = self.lock();
        let Some(mut request) = inner.requests.get(&key).cloned() else {
            return arm_error(
                404,
                "RoleAssignmentScheduleRequestNotFound",
                "the role assignment schedule request was not found",
            );
        };
        if let Some(left) = inner.pending.get_mut(&key) {
            if *left > 0 {
                *left -= 1;
            } else if request["properties"]["status"] == "PendingProvisioning" {
                request["properties"]["status"] = json!("Provisioned");
                let id = request["id"].as_str().unwrap_or_default().to_string();
                let made = inner
                    .by_request
                    .get(&id.to_ascii_lowercase())
                    .cloned()
                    .unwrap_or_default();
                for i in made {
                    inner.schedules[i].removed = false;
                }
                inner.pending.remove(&key);
                inner.requests.insert(key, request.clone());
            }
        }
        ok(200, request)
    }

    fn cancel_request(&self, scope: &str, name: &str) -> Response {
        let key = (scope.to_ascii_lowercase(), name.to_ascii_lowercase());
        let mut inner = self.lock();
        let Some(request) = inner.requests.get_mut(&key) else {
            return arm_error(
                404,
                "RoleAssignmentScheduleRequestNotFound",
                "the role assignment schedule request was not found",
            );
        };
        let status = request["properties"]["status"].as_str().unwrap_or_default();
        if !status.starts_with("Pending") {
            return arm_error(
                400,
                "RoleAssignmentScheduleRequestCannotBeCancelled",
                format!("a request with status `{status}` cannot be cancelled"),
            );
        }
        request["properties"]["status"] = json!("Canceled");
        inner.pending.remove(&key);
        StatusCode::OK.into_response()
    }

    fn list_schedules(&self, scope: &str, filter: Option<&str>) -> Response {
        let principal = filter.and_then(|f| {
            f.trim()
                .strip_prefix("principalId eq '")
                .and_then(|r| r.strip_suffix('\''))
                .map(str::to_string)
        });
        if filter.is_some() && principal.is_none() {
            return arm_error(
                400,
                "InvalidFilter",
                "the filter is not supported by the fake",
            );
        }
        let now = self.clock.now();
        let inner = self.lock();
        let value: Vec<Value> = inner
            .schedules
            .iter()
            .filter(|s| s.scope.eq_ignore_ascii_case(scope))
            .filter(|s| !s.removed && s.start <= now && now < s.end)
            .filter(|s| {
                principal
                    .as_ref()
                    .is_none_or(|p| s.principal.eq_ignore_ascii_case(p))
            })
            .map(schedule_json)
            .collect();
        ok(200, json!({ "value": value }))
    }

    fn get_schedule(&self, scope: &str, name: &str) -> Response {
        let now = self.clock.now();
        let inner = self.lock();
        let found = inner
            .by_name
            .get(&name.to_ascii_lowercase())
            .map(|i| &inner.schedules[*i]);
        match found.filter(|s| {
            s.scope.eq_ignore_ascii_case(scope) && !s.removed && s.start <= now && now < s.end
        }) {
            Some(s) => ok(200, schedule_json(s)),
            None => arm_error(
                404,
                "RoleAssignmentScheduleNotFound",
                "the role assignment schedule was not found",
            ),
        }
    }

    fn list_role_definitions(&self, scope: &str, filter: Option<&str>) -> Response {
        // `roleName eq '<name>'`, the name an OData string literal.
        let name = filter.and_then(|f| {
            let lit = f.trim().strip_prefix("roleName eq '")?.strip_suffix('\'')?;
            // A lone quote inside the literal is malformed; `''` is one quote.
            let mut out = String::new();
            let mut chars = lit.chars().peekable();
            while let Some(c) = chars.next() {
                if c == '\'' && chars.next() != Some('\'') {
                    return None;
                }
                out.push(c);
            }
            Some(out)
        });
        let Some(name) = name else {
            return arm_error(
                400,
                "InvalidFilter",
                "the filter is not supported by the fake (use roleName eq '<name>')",
            );
        };
        let mut inner = self.lock();
        inner.role_lookups += 1;
        let base = match crate::target::Scope::parse(scope)
            .ok()
            .and_then(|s| s.subscription())
        {
            Some(sub) => format!("/subscriptions/{sub}"),
            None => String::new(),
        };
        let value: Vec<Value> = BUILT_IN_ROLES
            .iter()
            .map(|(n, g)| (n.to_string(), g.to_string(), "BuiltInRole"))
            .chain(
                inner
                    .role_definitions
                    .iter()
                    .map(|(n, g)| (n.clone(), g.clone(), "CustomRole")),
            )
            .filter(|(n, _, _)| *n == name)
            .map(|(n, g, kind)| {
                json!({
                    "id": format!("{base}/providers/Microsoft.Authorization/roleDefinitions/{g}"),
                    "name": g,
                    "type": "Microsoft.Authorization/roleDefinitions",
                    "properties": {
                        "roleName": n,
                        "type": kind,
                        "description": format!("{n} (fake)"),
                        "assignableScopes": ["/"],
                        "permissions": [{"actions": ["*/read"], "notActions": [], "dataActions": [], "notDataActions": []}],
                    }
                })
            })
            .collect();
        ok(200, json!({ "value": value }))
    }

    fn list_policies(&self, scope: &str, filter: Option<&str>) -> Response {
        let Some(role) = filter.and_then(|f| {
            f.trim()
                .strip_prefix("roleDefinitionId eq '")
                .and_then(|r| r.strip_suffix('\''))
        }) else {
            return ok(200, json!({"value": []}));
        };
        let inner = self.lock();
        let max = inner
            .policy_max
            .get(&role.to_ascii_lowercase())
            .or(inner.default_policy_max.as_ref())
            .cloned()
            .unwrap_or_else(|| "P365D".into());
        // One stable policy id per role, as ARM has.
        let policy = Uuid::from_u128(
            Uuid::parse_str(role.rsplit('/').next().unwrap_or_default())
                .map(|u| u.as_u128().rotate_left(17))
                .unwrap_or(1),
        );
        let rule = |id: &str, max: &str, caller: &str, level: &str| {
            json!({
                "id": id, "ruleType": "RoleManagementPolicyExpirationRule",
                "isExpirationRequired": true, "maximumDuration": max,
                "target": {"caller": caller, "operations": ["All"], "level": level,
                           "targetObjects": null, "inheritableSettings": null, "enforcedSettings": null}
            })
        };
        ok(
            200,
            json!({"value": [{
                "id": format!("{scope}/providers/Microsoft.Authorization/roleManagementPolicyAssignment/{policy}_{}", role.rsplit('/').next().unwrap_or_default()),
                "name": format!("{policy}_{}", role.rsplit('/').next().unwrap_or_default()),
                "type": "Microsoft.Authorization/RoleManagementPolicyAssignment",
                "properties": {
                    "scope": scope,
                    "roleDefinitionId": role,
                    "policyId": format!("{scope}/providers/Microsoft.Authorization/roleManagementPolicies/{policy}"),
                    "effectiveRules": [
                        rule("Expiration_Admin_Eligibility", "P90D", "Admin", "Eligibility"),
                        rule("Expiration_EndUser_Assignment", "PT1H", "EndUser", "Assignment"),
                        rule("Expiration_Admin_Assignment", &max, "Admin", "Assignment"),
                    ]
                }
            }]}),
        )
    }

    fn put_assignment(&self, scope: &str, name: &str, body: Value) -> Response {
        if !is_guid(name) {
            return arm_error(
                400,
                "InvalidRoleAssignmentId",
                format!("the role assignment id `{name}` is not valid; it must be a GUID"),
            );
        }
        if let Err(r) = self.validate(ASSIGNMENTS_SPEC, "RoleAssignmentCreateParameters", &body) {
            return r;
        }
        let p = &body["properties"];
        let principal = p["principalId"].as_str().unwrap_or_default().to_string();
        let role = p["roleDefinitionId"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if p.get("condition").is_some()
            && p.get("conditionVersion").and_then(Value::as_str) != Some("2.0")
        {
            return arm_error(
                400,
                "InvalidConditionVersion",
                "conditionVersion must be 2.0",
            );
        }
        let now = self.clock.now();
        let mut inner = self.lock();
        if inner
            .unknown_principals
            .contains(&principal.to_ascii_lowercase())
        {
            return arm_error(
                400,
                "PrincipalNotFound",
                format!("principal {principal} does not exist in the directory {TENANT}"),
            );
        }
        let key = (scope.to_ascii_lowercase(), name.to_ascii_lowercase());
        if let Some(existing) = inner.assignments.get(&key) {
            let same = existing["properties"]["principalId"] == principal.as_str()
                && existing["properties"]["roleDefinitionId"] == role.as_str();
            return if same {
                ok(201, existing.clone())
            } else {
                arm_error(400, "RoleAssignmentUpdateNotPermitted", "tenant id, application id, principal id, and scope are not allowed to be updated")
            };
        }
        if inner.assignments.iter().any(|((s, _), a)| {
            *s == key.0
                && a["properties"]["principalId"] == principal.as_str()
                && a["properties"]["roleDefinitionId"] == role.as_str()
        }) {
            return arm_error(
                409,
                "RoleAssignmentExists",
                "the role assignment already exists",
            );
        }
        let mut out = body.clone();
        let props = out["properties"].as_object_mut().expect("validated object");
        props.insert("scope".into(), json!(scope));
        props.insert("createdOn".into(), json!(rfc3339(now)));
        props.insert("updatedOn".into(), json!(rfc3339(now)));
        props.insert("createdBy".into(), json!(CLIENT_ID));
        props.insert("updatedBy".into(), json!(CLIENT_ID));
        out["id"] = json!(format!(
            "{scope}/providers/Microsoft.Authorization/roleAssignments/{name}"
        ));
        out["name"] = json!(name);
        out["type"] = json!("Microsoft.Authorization/roleAssignments");
        inner.assignments.insert(key, out.clone());
        ok(201, out)
    }
}

fn schedule_json(s: &Schedule) -> Value {
    json!({
        "id": format!("{}/providers/Microsoft.Authorization/roleAssignmentSchedules/{}", s.scope, s.name),
        "name": s.name,
        "type": "Microsoft.Authorization/RoleAssignmentSchedules",
        "properties": {
            "scope": s.scope,
            "roleDefinitionId": s.role,
            "principalId": s.principal,
            "principalType": s.principal_type,
            "roleAssignmentScheduleRequestId": s.request_id,
            "assignmentType": "Assigned",
            "memberType": "Direct",
            "status": "Provisioned",
            "startDateTime": rfc3339(s.start),
            "endDateTime": rfc3339(s.end),
            "createdOn": rfc3339(s.start),
            "updatedOn": rfc3339(s.start),
        }
    })
}

fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    url_pairs(q.unwrap_or_default())
}

fn url_pairs(s: &str) -> HashMap<String, String> {
    azure_core::http::Url::parse(&format!("http://x/?{s}"))
        .map(|u| u.query_pairs().into_owned().collect())
        .unwrap_or_default()
}

async fn handle(
    State(fake): State<Arc<FakeAzure>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let query = parse_query(uri.query());
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if method == Method::POST && parts.len() == 4 && parts[1..] == ["oauth2", "v2.0", "token"] {
        let form = url_pairs(&String::from_utf8_lossy(&body));
        return fake.token(&form, parts[0]);
    }
    if let Err(r) = fake.authorize(&headers) {
        return r;
    }
    fake.arm(&method, &path, &query, &body)
}

/// A running fake: the harness's server over a [`FakeAzure`].
pub struct RunningFake {
    /// The harness server (faults, recorded requests, clock, CA).
    pub server: FakeServer,
    /// The fake's state.
    pub state: Arc<FakeAzure>,
}

impl RunningFake {
    /// Starts the fake on `clock`.
    pub fn start(clock: ManualClock) -> Self {
        let state = FakeAzure::new(clock.clone());
        Self::serve(state, clock)
    }

    /// Starts the fake on the system clock, for a client in another
    /// process (the vending server) whose clock the test cannot move.
    pub fn start_on_system_clock() -> Self {
        let state = FakeAzure::on_clock(Arc::new(jit_core::SystemClock));
        Self::serve(state, ManualClock::starting_now())
    }

    fn serve(state: Arc<FakeAzure>, clock: ManualClock) -> Self {
        let server = FakeServer::builder()
            .clock(clock)
            .name("azure")
            .start(state.router())
            .expect("fake azure starts");
        state.lock().audience = server.https_url().to_string();
        Self { server, state }
    }

    /// The fake's URL (authority host and ARM endpoint alike).
    pub fn url(&self) -> &str {
        self.server.https_url()
    }

    /// A configuration pointing at the fake, with its client secret.
    pub fn config(&self, mode: Mode) -> AzureConfig {
        AzureConfig::default()
            .with_mode(mode)
            .with_client_secret(TENANT, CLIENT_ID, Secret::new(CLIENT_SECRET))
            .with_authority_host(self.url())
            .with_arm_endpoint(self.url())
            .with_provisioning_wait(
                std::time::Duration::from_secs(5),
                std::time::Duration::from_millis(10),
            )
    }

    /// A provider on `config` whose client trusts the fake's CA, on `clock`.
    pub fn provider(&self, config: AzureConfig, clock: ManualClock) -> AzureProvider {
        AzureProvider::builder(config)
            .clock(Arc::new(clock))
            .trust_root_pem(self.server.ca_pem())
            .build()
            .expect("provider builds")
    }
}

/// A fixture scope (a resource group).
pub fn scope() -> String {
    format!("/subscriptions/{SUBSCRIPTION}/resourceGroups/jit-fixture")
}

/// The fixture role (built-in Reader) as assigned under [`scope`].
pub fn reader_role() -> String {
    format!("/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Authorization/roleDefinitions/acdd72a7-3385-48ef-bd42-f606fba81ae7")
}

/// An entitlement for the built-in Reader at [`scope`].
pub fn entitlement(provider: &str) -> Entitlement {
    Entitlement {
        id: "azure.reader".into(),
        description: "reader on the fixture resource group".into(),
        provider: provider.into(),
        target: json!({"scope": scope(), "role": "Reader"}),
        max_duration: GrantDuration::new(std::time::Duration::from_secs(8 * 3600)).expect("valid"),
    }
}

/// A requester with [`OBJECT_ID`] as their `azure_object_id`.
pub fn subject() -> Principal {
    Principal::new("alice@example.com")
        .expect("valid")
        .with_attribute("azure_object_id", OBJECT_ID)
}

/// Tells whether a grant's assignment is in force at the fake.
#[derive(Debug, Clone)]
pub struct FakeProbe(pub Arc<FakeAzure>);

#[async_trait]
impl AccessProbe for FakeProbe {
    async fn works(&self, credentials: &Credentials, issued: &IssuedGrant) -> bool {
        if !matches!(credentials, Credentials::Assignment { .. }) {
            return false;
        }
        let d = &issued.details;
        let field = |k: &str| d.get(k).and_then(Value::as_str).unwrap_or_default();
        match field("mode") {
            "assignments" => {
                // No native expiry: the assignment works while it exists.
                self.0.has_assignment(field("scope"), &issued.external_id)
            }
            _ => {
                self.0.active_schedules(
                    field("scope"),
                    field("principal_id"),
                    field("role_definition_id"),
                ) > 0
            }
        }
    }
}

/// A conformance harness: a fresh fake, a provider in `mode` trusting it,
/// revocation reported as immediate (the fake removes at once), and a
/// clock the checks can move.
pub fn conformance_harness(mode: Mode) -> (ProviderHarness, RunningFake) {
    let clock = ManualClock::starting_now();
    let fake = RunningFake::start(clock.clone());
    fake.state.set_default_policy_max("PT8H");
    let mut config = fake.config(mode);
    config.propagation = std::time::Duration::ZERO;
    let provider = Arc::new(fake.provider(config, clock.clone()));
    let advance = clock.clone();
    let harness = ProviderHarness {
        provider: provider.clone(),
        entitlement: entitlement("azure"),
        subject: subject(),
        clock: Arc::new(clock),
        probe: Arc::new(FakeProbe(fake.state.clone())),
        advance: Some(Arc::new(move |d| advance.advance(d))),
    };
    (harness, fake)
}
