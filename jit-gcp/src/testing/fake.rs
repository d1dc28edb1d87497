//! The fake's state and request handling (see the module docs of
//! [`crate::testing`]). Transport-free: [`FakeGcp::handle`] takes a request
//! and returns a response, so it can sit behind any HTTP server.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use jit_core::Clock;
use rsa::signature::Verifier;
use rsa::RsaPublicKey;
use serde_json::{json, Map, Value};

use super::TestKey;
use crate::binding::{expiry_of, MAX_CONDITIONAL_PER_ROLE_MEMBER, MAX_GROUPS, MAX_PRINCIPALS};
use crate::target::{BASIC_ROLES, PUBLIC_MEMBERS};

const SCHEMAS: &str = include_str!("discovery-schemas.json");
/// How long an access token from `/token` lasts.
const BROKER_TOKEN_SECS: i64 = 3600;

/// One HTTP request, as the fake sees it.
#[derive(Debug, Clone, Copy)]
pub struct FakeRequest<'a> {
    /// `POST`, ...
    pub method: &'a str,
    /// The path, percent-encoded as sent.
    pub path: &'a str,
    /// The raw query string (without `?`).
    pub query: &'a str,
    /// The `Authorization` header.
    pub authorization: Option<&'a str>,
    /// The body.
    pub body: &'a [u8],
}

/// The fake's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeResponse {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: Value,
}

impl FakeResponse {
    fn ok(body: Value) -> Self {
        Self { status: 200, body }
    }

    /// Google's JSON error envelope.
    fn error(status: u16, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: json!({"error": {"code": status, "message": message.into(), "status": code}}),
        }
    }
}

#[derive(Debug, Clone, Default)]
struct StoredPolicy {
    bindings: Vec<Value>,
    audit_configs: Vec<Value>,
    etag: String,
}

type Interleave = Box<dyn FnOnce(&mut Vec<Value>) + Send>;

#[derive(Default)]
struct State {
    policies: BTreeMap<String, StoredPolicy>,
    service_accounts: BTreeSet<String>,
    extended_lifetime: BTreeSet<String>,
    keys: HashMap<String, (String, RsaPublicKey)>,
    broker_tokens: HashMap<String, (String, i64)>,
    tokens: HashMap<String, (String, DateTime<Utc>)>,
    interleave: HashMap<String, Vec<Interleave>>,
    etag_counter: u64,
    calls: BTreeMap<String, usize>,
    writes_without_etag: usize,
    writes_below_v3: usize,
    conflicts: usize,
    schema_violations: Vec<String>,
}

/// A fake of Resource Manager v3, IAM v1 and IAM Credentials v1 (see the module docs).
pub struct FakeGcp {
    state: Mutex<State>,
    clock: Arc<dyn Clock>,
    schemas: Value,
}

impl std::fmt::Debug for FakeGcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeGcp").finish_non_exhaustive()
    }
}

fn now_wall() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(if plus_is_space && bytes[i] == b'+' {
            b' '
        } else {
            bytes[i]
        });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_map(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k, true), percent_decode(v, true)),
            None => (percent_decode(p, true), String::new()),
        })
        .collect()
}

fn condition_of(b: &Value) -> Option<&Map<String, Value>> {
    b.get("condition").and_then(|c| c.as_object())
}

fn members_of(b: &Value) -> Vec<&str> {
    b.get("members")
        .and_then(|m| m.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default()
}

fn role_of(b: &Value) -> &str {
    b.get("role").and_then(|r| r.as_str()).unwrap_or_default()
}

/// A short stable hash, for flattened role names.
fn short_hash(s: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(s.as_bytes());
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

impl FakeGcp {
    /// An empty fake on `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::default()),
            clock,
            schemas: serde_json::from_str(SCHEMAS).expect("embedded schemas are json"),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn next_etag(state: &mut State) -> String {
        state.etag_counter += 1;
        let mut raw = state.etag_counter.to_be_bytes().to_vec();
        raw.extend_from_slice(&uuid::Uuid::new_v4().as_bytes()[..4]);
        STANDARD.encode(raw)
    }

    /// Registers a resource (`projects/p`, `folders/1`, `organizations/1`,
    /// `projects/-/serviceAccounts/e`) with an empty policy.
    pub fn add_resource(&self, name: &str) {
        let mut s = self.lock();
        let etag = Self::next_etag(&mut s);
        s.policies.entry(name.to_string()).or_insert(StoredPolicy {
            etag,
            ..StoredPolicy::default()
        });
        if let Some(email) = name.strip_prefix("projects/-/serviceAccounts/") {
            s.service_accounts.insert(email.to_string());
        }
    }

    /// Registers a service account (its own policy and token minting).
    pub fn add_service_account(&self, email: &str) {
        self.add_resource(&format!("projects/-/serviceAccounts/{email}"));
    }

    /// Lets `email`'s tokens live up to 12 h (the organization policy's
    /// lifetime extension).
    pub fn allow_extended_lifetime(&self, email: &str) {
        self.lock().extended_lifetime.insert(email.to_string());
    }

    /// Registers a key whose signatures authenticate its account.
    pub fn register_key(&self, key: &TestKey) {
        self.lock().keys.insert(
            key.key_id.clone(),
            (key.client_email.clone(), key.public.clone()),
        );
    }

    /// Replaces a resource's bindings as another writer would (new etag).
    pub fn put_bindings(&self, name: &str, bindings: Vec<Value>) {
        let mut s = self.lock();
        let etag = Self::next_etag(&mut s);
        let p = s.policies.entry(name.to_string()).or_default();
        p.bindings = bindings;
        p.etag = etag;
    }

    /// The stored bindings of a resource, exactly as stored.
    pub fn bindings(&self, name: &str) -> Vec<Value> {
        self.lock()
            .policies
            .get(name)
            .map(|p| p.bindings.clone())
            .unwrap_or_default()
    }

    /// The current etag of a resource's policy.
    pub fn etag(&self, name: &str) -> Option<String> {
        self.lock().policies.get(name).map(|p| p.etag.clone())
    }

    /// Runs `change` on the stored bindings (a concurrent writer, new etag)
    /// right before the next `setIamPolicy` of `name` is handled; changes
    /// queued for one resource run one per `setIamPolicy`, in order.
    pub fn interleave_before_next_set(
        &self,
        name: &str,
        change: impl FnOnce(&mut Vec<Value>) + Send + 'static,
    ) {
        self.lock()
            .interleave
            .entry(name.to_string())
            .or_default()
            .push(Box::new(change));
    }

    /// Calls handled, by method name (`getIamPolicy`, `setIamPolicy`, ...).
    pub fn calls(&self, method: &str) -> usize {
        self.lock().calls.get(method).copied().unwrap_or(0)
    }

    /// `setIamPolicy` calls refused for a stale etag.
    pub fn conflicts(&self) -> usize {
        self.lock().conflicts
    }

    /// `setIamPolicy` calls that carried no etag (blind overwrites).
    pub fn writes_without_etag(&self) -> usize {
        self.lock().writes_without_etag
    }

    /// `setIamPolicy` calls with a version below 3.
    pub fn writes_below_v3(&self) -> usize {
        self.lock().writes_below_v3
    }

    /// Request bodies that broke the discovery schema (also answered with 400).
    pub fn schema_violations(&self) -> Vec<String> {
        self.lock().schema_violations.clone()
    }

    /// Whether `member` holds `role` on `resource` now (the fake's clock):
    /// an unconditional binding, or a conditional one whose
    /// `request.time < timestamp("…")` is true.
    pub fn holds(&self, resource: &str, role: &str, member: &str) -> bool {
        let now = self.clock.now();
        let s = self.lock();
        let Some(p) = s.policies.get(resource) else {
            return false;
        };
        p.bindings.iter().any(|b| {
            role_of(b) == role
                && members_of(b).contains(&member)
                && match condition_of(b) {
                    None => true,
                    Some(c) => c
                        .get("expression")
                        .and_then(|e| e.as_str())
                        .and_then(expiry_of)
                        .is_some_and(|end| now < end),
                }
        })
    }

    /// Whether `token` is an access token the fake minted that has not expired (fake clock).
    pub fn token_works(&self, token: &str) -> bool {
        let now = self.clock.now();
        self.lock()
            .tokens
            .get(token)
            .is_some_and(|(_, exp)| now < *exp)
    }

    /// Handles one request.
    pub fn handle(&self, req: FakeRequest<'_>) -> FakeResponse {
        let path = percent_decode(req.path, false);
        if req.method != "POST" {
            return FakeResponse::error(
                404,
                "NOT_FOUND",
                format!("no route for {} {path}", req.method),
            );
        }
        if path == "/token" {
            self.count("token");
            return self.token_endpoint(req.body);
        }
        let Some((resource_path, method)) = path.rsplit_once(':') else {
            return FakeResponse::error(404, "NOT_FOUND", format!("no route for {path}"));
        };
        let (api, resource) = if let Some(r) = resource_path.strip_prefix("/v3/") {
            ("cloudresourcemanager.v3", r)
        } else if let Some(r) = resource_path.strip_prefix("/v1/") {
            (
                if method == "generateAccessToken" {
                    "iamcredentials.v1"
                } else {
                    "iam.v1"
                },
                r,
            )
        } else {
            return FakeResponse::error(404, "NOT_FOUND", format!("no route for {path}"));
        };
        let parts: Vec<&str> = resource.split('/').collect();
        let route_ok = match (api, parts.as_slice()) {
            ("cloudresourcemanager.v3", ["projects" | "folders" | "organizations", _]) => {
                matches!(method, "getIamPolicy" | "setIamPolicy")
            }
            ("iam.v1", ["projects", _, "serviceAccounts", _]) => {
                matches!(method, "getIamPolicy" | "setIamPolicy")
            }
            ("iamcredentials.v1", ["projects", "-", "serviceAccounts", _]) => true,
            _ => false,
        };
        if !route_ok {
            return FakeResponse::error(404, "NOT_FOUND", format!("no route for {path}"));
        }
        self.count(method);
        if let Err(r) = self.authenticate(req.authorization) {
            return r;
        }
        let body: Value = if req.body.is_empty() {
            json!({})
        } else {
            match serde_json::from_slice(req.body) {
                Ok(v) => v,
                Err(_) => {
                    return FakeResponse::error(400, "INVALID_ARGUMENT", "invalid json payload")
                }
            }
        };
        let schema = match (api, method) {
            (_, "getIamPolicy") if api == "iam.v1" => None,
            (_, "getIamPolicy") => Some("GetIamPolicyRequest"),
            (_, "setIamPolicy") => Some("SetIamPolicyRequest"),
            _ => Some("GenerateAccessTokenRequest"),
        };
        match schema {
            Some(name) => {
                if let Err(m) = self.validate(api, name, &body, name) {
                    self.lock()
                        .schema_violations
                        .push(format!("{api} {name}: {m}"));
                    return FakeResponse::error(
                        400,
                        "INVALID_ARGUMENT",
                        format!("Invalid JSON payload received. {m}"),
                    );
                }
            }
            None => {
                // IAM v1's serviceAccounts.getIamPolicy defines no request body.
                if !req.body.is_empty() && body != json!({}) {
                    self.lock()
                        .schema_violations
                        .push("iam.v1 getIamPolicy: a body".into());
                    return FakeResponse::error(
                        400,
                        "INVALID_ARGUMENT",
                        "Invalid JSON payload received. getIamPolicy takes no body",
                    );
                }
            }
        }
        let query = query_map(req.query);
        let resource = if api == "iam.v1" || api == "iamcredentials.v1" {
            // `projects/<anything>/serviceAccounts/<x>` names the same account as `projects/-/…`.
            format!("projects/-/serviceAccounts/{}", parts[3])
        } else {
            resource.to_string()
        };
        match method {
            "getIamPolicy" => {
                let requested = if api == "iam.v1" {
                    match query.get("options.requestedPolicyVersion") {
                        None => Ok(0),
                        Some(v) => v.parse::<i64>().map_err(|_| ()),
                    }
                } else {
                    match body.pointer("/options/requestedPolicyVersion") {
                        None => Ok(0),
                        Some(v) => v.as_i64().ok_or(()),
                    }
                };
                match requested {
                    Ok(v) => self.get_policy(&resource, v, api),
                    Err(()) => FakeResponse::error(
                        400,
                        "INVALID_ARGUMENT",
                        "requested policy version is not a number",
                    ),
                }
            }
            "setIamPolicy" => self.set_policy(&resource, &body, api),
            _ => self.generate_access_token(&resource, &body),
        }
    }

    fn count(&self, method: &str) {
        *self.lock().calls.entry(method.to_string()).or_default() += 1;
    }

    fn not_found(resource: &str, api: &str) -> FakeResponse {
        if api == "cloudresourcemanager.v3" {
            // Resource Manager does not say whether a resource exists to a
            // caller without access to it.
            FakeResponse::error(
                403,
                "PERMISSION_DENIED",
                format!(
                    "The caller does not have permission on `{resource}`, or it does not exist"
                ),
            )
        } else {
            FakeResponse::error(
                404,
                "NOT_FOUND",
                format!("Unknown service account `{resource}`"),
            )
        }
    }

    fn get_policy(&self, resource: &str, requested: i64, api: &str) -> FakeResponse {
        if ![0, 1, 3].contains(&requested) {
            return FakeResponse::error(
                400,
                "INVALID_ARGUMENT",
                format!(
                    "Invalid requested policy version {requested}; valid values are 0, 1 and 3"
                ),
            );
        }
        let s = self.lock();
        let Some(p) = s.policies.get(resource) else {
            return Self::not_found(resource, api);
        };
        let conditional = p.bindings.iter().any(|b| condition_of(b).is_some());
        let (version, bindings) = if !conditional {
            (1, p.bindings.clone())
        } else if requested == 3 {
            (3, p.bindings.clone())
        } else {
            // Flattened as Google documents for version 1 reads of a
            // conditional policy: the role is renamed and the condition dropped.
            let flat = p
                .bindings
                .iter()
                .map(|b| match condition_of(b) {
                    None => b.clone(),
                    Some(c) => {
                        let mut f = b.clone();
                        let hash = short_hash(&Value::Object(c.clone()).to_string());
                        f["role"] = json!(format!("{}_withcond_{hash}", role_of(b)));
                        if let Some(o) = f.as_object_mut() {
                            o.remove("condition");
                        }
                        f
                    }
                })
                .collect();
            (1, flat)
        };
        let mut out = json!({"version": version, "etag": p.etag});
        if !bindings.is_empty() {
            out["bindings"] = Value::Array(bindings);
        }
        if !p.audit_configs.is_empty() {
            out["auditConfigs"] = Value::Array(p.audit_configs.clone());
        }
        FakeResponse::ok(out)
    }

    fn set_policy(&self, resource: &str, body: &Value, api: &str) -> FakeResponse {
        let Some(policy) = body.get("policy") else {
            return FakeResponse::error(400, "INVALID_ARGUMENT", "`policy` is required");
        };
        let mask: Vec<String> = body
            .get("updateMask")
            .and_then(|m| m.as_str())
            .map(|m| m.split(',').map(|p| p.trim().to_string()).collect())
            .unwrap_or_else(|| vec!["bindings".into(), "etag".into()]);
        if let Some(bad) = mask
            .iter()
            .find(|p| !["bindings", "etag", "auditConfigs", "version"].contains(&p.as_str()))
        {
            return FakeResponse::error(
                400,
                "INVALID_ARGUMENT",
                format!("Invalid update mask path `{bad}`"),
            );
        }
        let version = policy.get("version").and_then(|v| v.as_i64()).unwrap_or(0);
        if ![0, 1, 3].contains(&version) {
            return FakeResponse::error(
                400,
                "INVALID_ARGUMENT",
                format!("Invalid policy version {version}"),
            );
        }
        let bindings: Vec<Value> = policy
            .get("bindings")
            .and_then(|b| b.as_array())
            .cloned()
            .unwrap_or_default();
        let etag = policy.get("etag").and_then(|e| e.as_str());
        let mut s = self.lock();
        let change = s.interleave.get_mut(resource).and_then(|q| {
            if q.is_empty() {
                None
            } else {
                Some(q.remove(0))
            }
        });
        if let Some(change) = change {
            let new_etag = Self::next_etag(&mut s);
            if let Some(p) = s.policies.get_mut(resource) {
                change(&mut p.bindings);
                p.etag = new_etag;
            }
        }
        let Some(current) = s.policies.get(resource) else {
            return Self::not_found(resource, api);
        };
        let stored_conditional = current.bindings.iter().any(|b| condition_of(b).is_some());
        match etag {
            Some(e) if e != current.etag => {
                s.conflicts += 1;
                return FakeResponse::error(
                    409,
                    "ABORTED",
                    "There were concurrent policy changes. Please retry the whole read-modify-write with exponential backoff.",
                );
            }
            Some(_) => {
                if version < 3 && stored_conditional {
                    return FakeResponse::error(
                        400,
                        "INVALID_ARGUMENT",
                        "The policy has conditions; it can only be changed with version 3",
                    );
                }
            }
            None => s.writes_without_etag += 1,
        }
        if version < 3 {
            s.writes_below_v3 += 1;
        }
        if let Err(m) = check_bindings(&bindings, version) {
            return FakeResponse::error(400, "INVALID_ARGUMENT", m);
        }
        let new_etag = Self::next_etag(&mut s);
        let p = s.policies.get_mut(resource).expect("checked above");
        if mask.iter().any(|m| m == "bindings") {
            p.bindings = bindings;
        }
        if mask.iter().any(|m| m == "auditConfigs") {
            p.audit_configs = policy
                .get("auditConfigs")
                .and_then(|a| a.as_array())
                .cloned()
                .unwrap_or_default();
        }
        p.etag = new_etag;
        let conditional = p.bindings.iter().any(|b| condition_of(b).is_some());
        let mut out = json!({"version": if conditional { 3 } else { 1 }, "etag": p.etag});
        if !p.bindings.is_empty() {
            out["bindings"] = Value::Array(p.bindings.clone());
        }
        if !p.audit_configs.is_empty() {
            out["auditConfigs"] = Value::Array(p.audit_configs.clone());
        }
        FakeResponse::ok(out)
    }

    fn generate_access_token(&self, name: &str, body: &Value) -> FakeResponse {
        let email = name
            .trim_start_matches("projects/-/serviceAccounts/")
            .to_string();
        let now = self.clock.now();
        let mut s = self.lock();
        if !s.service_accounts.contains(&email) {
            return FakeResponse::error(
                404,
                "NOT_FOUND",
                format!("Unknown service account `{email}`"),
            );
        }
        let scopes: Vec<&str> = body
            .get("scope")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        if scopes.is_empty() {
            return FakeResponse::error(400, "INVALID_ARGUMENT", "Scope required.");
        }
        for d in body
            .get("delegates")
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
        {
            let d = d.as_str().unwrap_or_default();
            let Some(de) = d.strip_prefix("projects/-/serviceAccounts/") else {
                return FakeResponse::error(
                    400,
                    "INVALID_ARGUMENT",
                    format!("delegate `{d}` must be `projects/-/serviceAccounts/<email>`"),
                );
            };
            if !s.service_accounts.contains(de) {
                return FakeResponse::error(
                    404,
                    "NOT_FOUND",
                    format!("Unknown service account `{de}`"),
                );
            }
        }
        let lifetime = match body.get("lifetime") {
            None => 3600,
            Some(Value::String(l)) => match l.strip_suffix('s').and_then(|n| n.parse::<f64>().ok())
            {
                Some(secs) if secs.is_finite() => secs.floor() as i64,
                _ => {
                    return FakeResponse::error(
                        400,
                        "INVALID_ARGUMENT",
                        format!("Invalid value at 'lifetime' (type.googleapis.com/google.protobuf.Duration), \"{l}\""),
                    )
                }
            },
            Some(_) => {
                return FakeResponse::error(400, "INVALID_ARGUMENT", "Invalid value at 'lifetime'")
            }
        };
        let max = if s.extended_lifetime.contains(&email) {
            43_200
        } else {
            3_600
        };
        if lifetime <= 0 || lifetime > max {
            return FakeResponse::error(
                400,
                "INVALID_ARGUMENT",
                format!("The lifetime must be between 1s and {max}s (requested {lifetime}s)"),
            );
        }
        let expire = now + TimeDelta::seconds(lifetime);
        let token = format!("ya29.fake-{}", uuid::Uuid::new_v4().simple());
        s.tokens.insert(token.clone(), (email, expire));
        FakeResponse::ok(json!({
            "accessToken": token,
            "expireTime": expire.to_rfc3339_opts(SecondsFormat::Secs, true),
        }))
    }

    /// `POST /token`: the JWT bearer grant (RFC 7523).
    fn token_endpoint(&self, body: &[u8]) -> FakeResponse {
        let form = query_map(&String::from_utf8_lossy(body));
        let oauth_error = |e: &str, d: &str| FakeResponse {
            status: 400,
            body: json!({"error": e, "error_description": d}),
        };
        if form.get("grant_type").map(String::as_str)
            != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
        {
            return oauth_error("unsupported_grant_type", "Invalid grant_type");
        }
        let Some(assertion) = form.get("assertion") else {
            return oauth_error("invalid_request", "Missing required parameter: assertion");
        };
        match self.verify_jwt(assertion) {
            Ok(email) => {
                let token = format!("ya29.broker-{}", uuid::Uuid::new_v4().simple());
                self.lock()
                    .broker_tokens
                    .insert(token.clone(), (email, now_wall() + BROKER_TOKEN_SECS));
                FakeResponse::ok(json!({
                    "access_token": token,
                    "token_type": "Bearer",
                    "expires_in": BROKER_TOKEN_SECS,
                }))
            }
            Err(m) => oauth_error("invalid_grant", &m),
        }
    }

    fn authenticate(&self, authorization: Option<&str>) -> Result<String, FakeResponse> {
        let unauth = |m: &str| {
            FakeResponse::error(
                401,
                "UNAUTHENTICATED",
                format!("Request had invalid authentication credentials: {m}"),
            )
        };
        let Some(token) = authorization.and_then(|a| a.strip_prefix("Bearer ")) else {
            return Err(unauth("no bearer token"));
        };
        if let Some((email, exp)) = self.lock().broker_tokens.get(token).cloned() {
            return if now_wall() < exp {
                Ok(email)
            } else {
                Err(unauth("token expired"))
            };
        }
        self.verify_jwt(token).map_err(|m| unauth(&m))
    }

    /// Verifies an RS256 JWT signed by a registered key; returns its account.
    fn verify_jwt(&self, jwt: &str) -> Result<String, String> {
        let mut parts = jwt.split('.');
        let (Some(h), Some(c), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not a jwt".into());
        };
        let decode = |p: &str| -> Result<Value, String> {
            let raw = URL_SAFE_NO_PAD
                .decode(p)
                .map_err(|_| "bad base64".to_string())?;
            serde_json::from_slice(&raw).map_err(|_| "bad json".to_string())
        };
        let header = decode(h)?;
        let claims = decode(c)?;
        if header.get("alg").and_then(|a| a.as_str()) != Some("RS256") {
            return Err("alg must be RS256".into());
        }
        let kid = header
            .get("kid")
            .and_then(|k| k.as_str())
            .unwrap_or_default();
        let Some((email, public)) = self.lock().keys.get(kid).cloned() else {
            return Err("unknown key id".into());
        };
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| "bad signature encoding".to_string())?;
        let sig = rsa::pkcs1v15::Signature::try_from(sig.as_slice())
            .map_err(|_| "bad signature".to_string())?;
        let verifying: rsa::pkcs1v15::VerifyingKey<sha2::Sha256> =
            rsa::pkcs1v15::VerifyingKey::new(public);
        verifying
            .verify(format!("{h}.{c}").as_bytes(), &sig)
            .map_err(|_| "signature does not verify".to_string())?;
        let s = |k: &str| claims.get(k).and_then(|v| v.as_str());
        if s("iss") != Some(email.as_str()) || s("sub").is_some_and(|sub| sub != email) {
            return Err("iss/sub is not the key's account".into());
        }
        let n = |k: &str| claims.get(k).and_then(|v| v.as_i64());
        let (Some(iat), Some(exp)) = (n("iat"), n("exp")) else {
            return Err("iat and exp are required".into());
        };
        let now = now_wall();
        // Google accepts assertions valid for at most an hour, with some clock skew.
        if exp <= now || iat > now + 300 || exp - iat > 3600 + 600 {
            return Err("token expired or not yet valid".into());
        }
        if s("scope").is_none() && s("aud").is_none() {
            return Err("neither scope nor aud".into());
        }
        Ok(email)
    }

    /// Checks `value` against the discovery schema `name` of `api`.
    fn validate(&self, api: &str, name: &str, value: &Value, at: &str) -> Result<(), String> {
        let Some(props) = self
            .schemas
            .pointer(&format!("/{api}/{name}/properties"))
            .and_then(|p| p.as_object())
        else {
            return Err(format!("no schema `{name}`"));
        };
        let Some(obj) = value.as_object() else {
            return Err(format!("`{at}` must be an object"));
        };
        for (k, v) in obj {
            let Some(p) = props.get(k) else {
                return Err(format!(
                    "Unknown name \"{k}\" at '{at}': Cannot find field."
                ));
            };
            self.validate_value(api, p, v, &format!("{at}.{k}"))?;
        }
        Ok(())
    }

    fn validate_value(&self, api: &str, p: &Value, v: &Value, at: &str) -> Result<(), String> {
        if let Some(r) = p.get("$ref").and_then(|r| r.as_str()) {
            return self.validate(api, r, v, at);
        }
        let ty = p.get("type").and_then(|t| t.as_str()).unwrap_or_default();
        let ok = match ty {
            // Enums may be sent as numbers (`$alt=json;enum-encoding=int`).
            "string" if p.get("enum").is_some() => v.is_string() || v.is_i64(),
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.as_str().is_some_and(|s| s.parse::<i64>().is_ok()),
            "boolean" => v.is_boolean(),
            "array" => match (v.as_array(), p.get("items")) {
                (Some(items), Some(item)) => {
                    for (i, x) in items.iter().enumerate() {
                        self.validate_value(api, item, x, &format!("{at}[{i}]"))?;
                    }
                    true
                }
                _ => false,
            },
            "object" => v.is_object(),
            _ => true,
        };
        if ok {
            Ok(())
        } else {
            Err(format!("Invalid value at '{at}' (expected {ty})"))
        }
    }
}

/// IAM's rules for the bindings of a policy being written.
fn check_bindings(bindings: &[Value], version: i64) -> Result<(), String> {
    let mut principals = 0;
    let mut groups = 0;
    let mut per_role_member: HashMap<(String, String), usize> = HashMap::new();
    for b in bindings {
        let role = role_of(b);
        let members = members_of(b);
        if role.is_empty() {
            return Err("A binding has no role".into());
        }
        if role.contains("_withcond_") {
            return Err(format!(
                "Role `{role}` is a version 1 rendering of a conditional binding and cannot be written"
            ));
        }
        if members.is_empty() {
            return Err(format!("The binding for `{role}` has no members"));
        }
        principals += members.len();
        groups += members.iter().filter(|m| m.starts_with("group:")).count();
        if let Some(c) = condition_of(b) {
            if version < 3 {
                return Err("Conditions are only supported in policy version 3".into());
            }
            let text = |k: &str| c.get(k).and_then(|v| v.as_str()).unwrap_or_default();
            if text("title").is_empty() || text("expression").is_empty() {
                return Err("A condition needs a title and an expression".into());
            }
            if BASIC_ROLES.contains(&role) {
                return Err(format!(
                    "Conditions are not supported for basic role `{role}`"
                ));
            }
            if let Some(m) = members.iter().find(|m| PUBLIC_MEMBERS.contains(m)) {
                return Err(format!("Conditions are not supported for `{m}`"));
            }
            for m in &members {
                let n = per_role_member
                    .entry((role.to_string(), m.to_string()))
                    .or_default();
                *n += 1;
                if *n > MAX_CONDITIONAL_PER_ROLE_MEMBER {
                    return Err(format!(
                        "More than {MAX_CONDITIONAL_PER_ROLE_MEMBER} conditional role bindings for `{role}` and `{m}`"
                    ));
                }
            }
        }
    }
    if principals > MAX_PRINCIPALS {
        return Err(format!(
            "The number of members in the policy ({principals}) is larger than the maximum allowed size {MAX_PRINCIPALS}"
        ));
    }
    if groups > MAX_GROUPS {
        return Err(format!(
            "The number of groups in the policy ({groups}) is larger than the maximum allowed size {MAX_GROUPS}"
        ));
    }
    Ok(())
}
