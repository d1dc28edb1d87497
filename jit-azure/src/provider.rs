//! The [`Provider`] implementation: PIM schedule requests, or plain role
//! assignments.
//!
//! # Issue (mode `pim`)
//!
//! All limits are checked before any remote call, each with a typed error:
//! the target ([`AzureTarget`]); the requester's Entra object id (principal
//! attribute [`AzureConfig::principal_attribute`], a GUID) and type; the
//! window (the provider kit's [`WindowRules`]: negative, empty, longer than
//! [`Capabilities::max_duration`], not yet started, or too short once
//! [`CALL_ALLOWANCE`] is taken off); the ticket's length.
//!
//! Then the role is resolved when the entitlement names it by display name
//! (`roleDefinitions?$filter=roleName eq '…'`, once per scope and name,
//! cached; none or several is the entitlement's configuration error), and
//! the role management policy of the scope and role is read
//! (`roleManagementPolicyAssignments`, its effective
//! `RoleManagementPolicyExpirationRule` for admin assignments, cached for
//! [`AzureConfig::policy_cache_ttl`]); a window over its `maximumDuration`
//! is clamped or refused ([`AzureConfig::over_policy_max`]) before the PUT.
//!
//! `PUT {scope}/providers/Microsoft.Authorization/roleAssignmentScheduleRequests/{name}`
//! (API 2020-10-01) with `requestType: AdminAssign`, `startDateTime` = now
//! and `expiration {type: AfterDuration, duration: PT…}` = the whole seconds
//! left of the window less [`CALL_ALLOWANCE`], the justification (cut to
//! [`MAX_JUSTIFICATION_LEN`]) and `ticketInfo`. The name is
//! `naming::derived_uuid(grant, "issue")`: a retry, a second broker or a
//! reconciliation after a crash reads the same request by name first and
//! never makes a second one. The request's `status` is then followed, up to
//! [`AzureConfig::provisioning_wait`]:
//!
//! | status | outcome |
//! | --- | --- |
//! | `Provisioned`, `ScheduleCreated` | issued; the end is the schedule's `endDateTime` as Azure returns it, read with one `GET roleAssignmentSchedules/{targetRoleAssignmentScheduleId}` (the id the request's answer names) |
//! | `Accepted`, `PendingEvaluation`, `Granted`, `PendingProvisioning`, `ProvisioningStarted`, `PendingScheduleCreation`, `PendingExternalProvisioning`, `AdminApproved`, `PendingRevocation` | wait; still there after the wait: `Unavailable` (retrying finds the same request) |
//! | `PendingApproval`, `PendingApprovalProvisioning`, `PendingAdminDecision` | the tenant's PIM policy wants its own approval: the request is cancelled and the issue refused (approval belongs to the broker) |
//! | `Denied`, `AdminDenied`, `Failed`, `FailedAsResourceIsLocked`, `Invalid`, `TimedOut`, `Canceled`, `Revoked`, anything else | refused with the status |
//!
//! # Revoke (mode `pim`)
//!
//! The principal's schedules at the scope are listed; when none of them
//! came from this grant's request, the grant is already gone (expired or
//! removed) and revoke succeeds without a write (after cancelling a request
//! still pending, so it cannot provision later). Otherwise an `AdminRemove`
//! request named `derived_uuid(grant, "revoke")` is PUT (`revoke-1`,
//! `revoke-2` when an earlier request under that name ended without
//! removing the schedule), and revoke returns
//! only once the schedule is gone; ARM's `RoleAssignmentDoesNotExist`
//! counts as gone. ARM caches role assignments, so a removal may take a few
//! minutes to be enforced everywhere: [`Capabilities::revocation`] says
//! [`AzureConfig::propagation`].
//!
//! # Mode `assignments`
//!
//! `PUT {scope}/providers/Microsoft.Authorization/roleAssignments/{derived_uuid(grant, "issue")}`
//! (API 2022-04-01) with the principal type and a description naming the
//! grant and its end; `DELETE` of the same name revokes it, and the reaper
//! does so at the end: the capabilities say the expiry is not native, and
//! the grant is only as safe as the reaper.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::http::Method;
use chrono::{DateTime, TimeDelta, Utc};
use jit_core::provider::naming;
use jit_core::provider::window::{iso8601, Window, WindowRules};
use jit_core::types::format_duration;
use jit_core::{
    Capabilities, Clock, Credentials, Entitlement, GrantId, GrantSpec, Issued, IssuedGrant,
    Principal, Provider, RequestError, RevocationKind, SystemClock,
};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::client::{
    self, parse_iso_duration, ArmClient, ASSIGNMENTS_API_VERSION, PIM_API_VERSION,
    ROLE_DEFINITIONS_API_VERSION,
};
use crate::config::{AzureConfig, Mode, OverPolicyMax, PrincipalType, MAX_TICKET_LEN};
use crate::error::{printable, AzureError};
use crate::target::{parse_role_definition_id, AzureTarget, RoleRef, Scope};

/// Taken off the duration sent, for the time between reading our clock and
/// ARM reading its own: the assignment may end up to this much before the
/// window, never after it.
pub const CALL_ALLOWANCE: Duration = Duration::from_secs(5);
/// How far in the future a window may start: assignments start at the call.
const START_SLACK: Duration = Duration::from_secs(60);
/// How many derived names a revocation may use (see the module docs).
const REMOVE_NAMES: usize = 3;
/// Longest justification sent (PIM's documented limit is 500 characters);
/// longer ones are cut, the full text stays in the broker's audit trail.
pub const MAX_JUSTIFICATION_LEN: usize = 500;

const AUTH: &str = "/providers/Microsoft.Authorization";

/// Builds an [`AzureProvider`].
pub struct AzureProviderBuilder {
    config: AzureConfig,
    clock: Arc<dyn Clock>,
    http: Option<reqwest::Client>,
    extra_roots: Vec<Vec<u8>>,
    credential: Option<Arc<dyn TokenCredential>>,
}

impl AzureProviderBuilder {
    /// The clock for windows and the policy cache (default: the system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Trusts this extra root certificate (DER) for ARM and Entra, beside the
    /// webpki roots: a private cloud's CA, or a test fake's.
    pub fn trust_root(mut self, der: Vec<u8>) -> Self {
        self.extra_roots.push(der);
        self
    }

    /// Trusts the certificates of this PEM text as extra roots (see
    /// [`AzureProviderBuilder::trust_root`]); unreadable PEM fails `build`.
    pub fn trust_root_pem(mut self, pem: &str) -> Self {
        let certs = client::pem_certificates(pem);
        let any = !certs.is_empty();
        self.extra_roots.extend(certs);
        if !any {
            // An empty certificate makes `build` fail with a clear error.
            self.extra_roots.push(Vec::new());
        }
        self
    }

    /// Sends through this HTTP client instead of building one.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http = Some(client);
        self
    }

    /// Uses this credential instead of the configured one.
    pub fn credential(mut self, credential: Arc<dyn TokenCredential>) -> Self {
        self.credential = Some(credential);
        self
    }

    /// Builds the provider. No remote call: the first token is fetched by the first ARM call.
    pub fn build(self) -> jit_core::Result<AzureProvider> {
        let name = self.config.name.clone();
        self.build_inner()
            .map_err(|e| e.into_core(&name, "configure"))
    }

    fn build_inner(mut self) -> Result<AzureProvider, AzureError> {
        self.config.check()?;
        if let Some(path) = &self.config.ca_file {
            let pem = std::fs::read_to_string(path).map_err(|e| AzureError::Setting {
                field: "ca_file".into(),
                message: format!("cannot read `{}`: {e}", path.display()),
            })?;
            let certs = client::pem_certificates(&pem);
            if certs.is_empty() {
                return Err(AzureError::Setting {
                    field: "ca_file".into(),
                    message: format!("`{}` holds no PEM certificate", path.display()),
                });
            }
            self.extra_roots.extend(certs);
        }
        let http = match self.http {
            Some(h) => h,
            None => client::https_client(&self.extra_roots).map_err(|m| AzureError::Setting {
                field: "tls".into(),
                message: m,
            })?,
        };
        let credential = match self.credential {
            Some(c) => c,
            None => client::credential(&self.config, &http)?,
        };
        let arm =
            ArmClient::new(&self.config, credential, http).map_err(|m| AzureError::Setting {
                field: "arm_endpoint".into(),
                message: m,
            })?;
        Ok(AzureProvider {
            config: self.config,
            arm,
            clock: self.clock,
            policies: Mutex::new(HashMap::new()),
            roles: Mutex::new(HashMap::new()),
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct CachedMax {
    max: Option<Duration>,
    fetched_at: DateTime<Utc>,
}

/// Who holds which role where, as recorded in a grant.
#[derive(Debug, Clone, Copy)]
struct Assigned<'a> {
    scope: &'a str,
    role: &'a str,
    principal: &'a str,
    principal_type: PrincipalType,
}

/// A role as sent to ARM: its definition id, and its display name when the
/// entitlement named it.
#[derive(Debug, Clone)]
struct Role {
    id: String,
    name: Option<String>,
}

impl Role {
    /// `role `Reader` at `/subscriptions/…``, or the id when there is no name.
    fn describe(&self, scope: &Scope) -> String {
        format!(
            "role `{}` at `{scope}`",
            self.name.as_deref().unwrap_or(&self.id)
        )
    }
}

/// Everything checked locally before the first call.
struct Plan {
    target: AzureTarget,
    principal_id: String,
    principal_type: PrincipalType,
    window: Window,
    justification: String,
    ticket: Option<String>,
}

/// Azure provider. See the [module docs](self).
pub struct AzureProvider {
    config: AzureConfig,
    arm: ArmClient,
    clock: Arc<dyn Clock>,
    policies: Mutex<HashMap<(String, String), CachedMax>>,
    /// Role display names resolved to definition ids, by (scope lowercase, name).
    roles: Mutex<HashMap<(String, String), String>>,
}

impl fmt::Debug for AzureProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureProvider")
            .field("name", &self.config.name)
            .field("mode", &self.config.mode)
            .field("arm_endpoint", &self.config.arm_endpoint)
            .field("max_duration", &format_duration(self.config.max_duration))
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A plain cache: a panic elsewhere cannot leave it half-updated.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a schedule request's status means for us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Done,
    Wait,
    NeedsApproval,
    Failed,
}

fn phase(status: &str) -> Phase {
    match status {
        "Provisioned" | "ScheduleCreated" => Phase::Done,
        "Accepted"
        | "PendingEvaluation"
        | "Granted"
        | "PendingProvisioning"
        | "ProvisioningStarted"
        | "PendingScheduleCreation"
        | "PendingExternalProvisioning"
        | "AdminApproved"
        | "PendingRevocation" => Phase::Wait,
        "PendingApproval" | "PendingApprovalProvisioning" | "PendingAdminDecision" => {
            Phase::NeedsApproval
        }
        _ => Phase::Failed,
    }
}

fn status_of(request: &Value) -> String {
    request
        .pointer("/properties/status")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The last path segment of an ARM id (or the id itself when it has none).
fn last_segment(id: &str) -> &str {
    id.rsplit('/').next().unwrap_or(id)
}

/// A schedule request's own end: start plus duration, or its end time.
fn request_end(request: &Value) -> Option<DateTime<Utc>> {
    let start = parse_time(str_at(request, "/properties/scheduleInfo/startDateTime")?)?;
    if let Some(end) =
        str_at(request, "/properties/scheduleInfo/expiration/endDateTime").and_then(parse_time)
    {
        return Some(end);
    }
    let d = parse_iso_duration(str_at(
        request,
        "/properties/scheduleInfo/expiration/duration",
    )?)?;
    Some(start + TimeDelta::from_std(d).ok()?)
}

/// Cuts `s` to at most `max` characters.
fn cut(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

impl AzureProvider {
    /// A builder; the credential is made from the configuration at `build`
    /// unless one is given.
    pub fn builder(config: AzureConfig) -> AzureProviderBuilder {
        AzureProviderBuilder {
            config,
            clock: Arc::new(SystemClock),
            http: None,
            extra_roots: Vec::new(),
            credential: None,
        }
    }

    /// [`AzureConfig::from_env`] and the configured credential.
    pub fn from_env() -> jit_core::Result<Self> {
        Self::builder(AzureConfig::from_env()?).build()
    }

    /// The configuration.
    pub fn config(&self) -> &AzureConfig {
        &self.config
    }

    fn err(&self, operation: &'static str) -> impl Fn(AzureError) -> jit_core::Error + '_ {
        move |e| e.into_core(&self.config.name, operation)
    }

    /// The requester's object id and principal type, from their attributes.
    fn principal(&self, p: &Principal) -> Result<(String, PrincipalType), AzureError> {
        let attr = &self.config.principal_attribute;
        let bad = |message: String| AzureError::Principal {
            principal: printable(p.id.as_str()),
            message,
        };
        let id = p.attributes.get(attr).ok_or_else(|| {
            bad(format!(
                "has no `{attr}` attribute with an entra object id; the host must fill it (for entra tokens, from the `oid` claim)"
            ))
        })?;
        let uuid = Uuid::parse_str(id.trim())
            .ok()
            .filter(|_| id.trim().len() == 36)
            .ok_or_else(|| {
                bad(format!(
                    "attribute `{attr}` = `{}` is not an object id (a GUID)",
                    printable(id)
                ))
            })?;
        let kind = match p.attributes.get(&self.config.principal_type_attribute) {
            None => self.config.principal_type,
            Some(t) => t.parse().map_err(|m: String| {
                bad(format!(
                    "attribute `{}`: {m}",
                    self.config.principal_type_attribute
                ))
            })?,
        };
        Ok((uuid.hyphenated().to_string(), kind))
    }

    fn caps(&self) -> Capabilities {
        let revocation = if self.config.propagation.is_zero() {
            RevocationKind::Immediate
        } else {
            RevocationKind::Propagates {
                within: self.config.propagation,
            }
        };
        Capabilities::default()
            .with_native_expiry(self.config.mode == Mode::Pim)
            .with_max_duration(self.config.max_duration)
            // The shortest window that still leaves the minimum once the
            // call allowance is taken off.
            .with_min_duration(self.config.min_duration + CALL_ALLOWANCE)
            .with_revocation(revocation)
            .with_revoke_by_name(false)
    }

    /// The local checks. No remote call.
    fn plan(&self, spec: &GrantSpec) -> Result<Plan, AzureError> {
        let target = AzureTarget::parse(&spec.entitlement.id, &spec.entitlement.target)?;
        // The advertised minimum is the configured one plus the allowance;
        // what is left once the allowance is off must reach the configured one.
        let caps = self.caps();
        let window = WindowRules::new(&self.config.name, &caps)
            .start_slack(START_SLACK)
            .call_allowance(CALL_ALLOWANCE)
            .check(spec, self.clock.now())?;
        let (principal_id, principal_type) = self.principal(&spec.subject)?;
        if let Some(t) = &spec.ticket {
            let len = t.chars().count();
            if len > MAX_TICKET_LEN {
                return Err(RequestError::TextTooLong {
                    field: "ticket",
                    len,
                    limit: MAX_TICKET_LEN,
                }
                .into());
            }
        }
        Ok(Plan {
            target,
            principal_id,
            principal_type,
            window,
            justification: cut(&spec.justification, MAX_JUSTIFICATION_LEN),
            ticket: spec.ticket.clone(),
        })
    }

    /// The role management policy's maximum for admin assignments of this
    /// role at this scope, cached. `None`: the policy sets no maximum.
    async fn policy_max(&self, scope: &Scope, role: &str) -> Result<Option<Duration>, AzureError> {
        let key = (
            scope.as_str().to_ascii_lowercase(),
            role.to_ascii_lowercase(),
        );
        let now = self.clock.now();
        let ttl = TimeDelta::from_std(self.config.policy_cache_ttl).unwrap_or(TimeDelta::zero());
        if let Some(c) = lock(&self.policies).get(&key) {
            if now - c.fetched_at < ttl {
                return Ok(c.max);
            }
        }
        let filter = format!("roleDefinitionId eq '{role}'");
        let r = self
            .arm
            .send(
                "list role management policy assignments",
                Method::Get,
                &format!("{}{AUTH}/roleManagementPolicyAssignments", scope.as_str()),
                &[("api-version", PIM_API_VERSION), ("$filter", &filter)],
                None,
            )
            .await?;
        let max = policy_max_of(&r.body, role);
        lock(&self.policies).insert(
            key,
            CachedMax {
                max,
                fetched_at: now,
            },
        );
        Ok(max)
    }

    /// Seconds to ask for: the window's, within the policy's maximum.
    async fn duration_secs(&self, plan: &Plan, role: &Role) -> Result<u64, AzureError> {
        let secs = plan.window.remaining.as_secs();
        let Some(max) = self.policy_max(&plan.target.scope, &role.id).await? else {
            return Ok(secs);
        };
        if secs <= max.as_secs() {
            return Ok(secs);
        }
        match self.config.over_policy_max {
            OverPolicyMax::Clamp => Ok(max.as_secs()),
            OverPolicyMax::Refuse => Err(RequestError::DurationTooLong {
                requested: format_duration(plan.window.remaining),
                limit: format!(
                    "{} (the role management policy of {})",
                    format_duration(max),
                    role.describe(&plan.target.scope)
                ),
            }
            .into()),
        }
    }

    /// The role of `target`: its id as given, or its display name resolved
    /// through ARM's role definitions at the scope (API 2022-04-01,
    /// <https://learn.microsoft.com/rest/api/authorization/role-definitions/list>;
    /// the filter takes the exact display name,
    /// <https://learn.microsoft.com/azure/role-based-access-control/custom-roles-rest>),
    /// once per scope and name, then from the cache. No role of that name,
    /// or several (display names are unique in a directory, so that means
    /// something is wrong), is the entitlement's configuration error.
    async fn role(&self, entitlement: &str, target: &AzureTarget) -> Result<Role, AzureError> {
        let name = match &target.role {
            RoleRef::Id(id) => {
                return Ok(Role {
                    id: id.clone(),
                    name: None,
                })
            }
            RoleRef::Name(n) => n.clone(),
        };
        let scope = target.scope.as_str();
        let key = (scope.to_ascii_lowercase(), name.clone());
        if let Some(id) = lock(&self.roles).get(&key) {
            return Ok(Role {
                id: id.clone(),
                name: Some(name),
            });
        }
        // An OData string literal doubles its quotes.
        let filter = format!("roleName eq '{}'", name.replace('\'', "''"));
        let r = self
            .arm
            .send(
                "list role definitions",
                Method::Get,
                &format!("{scope}{AUTH}/roleDefinitions"),
                &[
                    ("api-version", ROLE_DEFINITIONS_API_VERSION),
                    ("$filter", &filter),
                ],
                None,
            )
            .await?;
        let mut ids: Vec<String> = Vec::new();
        for d in r
            .body
            .get("value")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            // The filter is ARM's; the name is checked here again, so an
            // endpoint that ignored it cannot hand us another role.
            if !str_at(d, "/properties/roleName").is_some_and(|n| n.eq_ignore_ascii_case(&name)) {
                continue;
            }
            let id = str_at(d, "/id").ok_or(AzureError::Incomplete {
                call: "list role definitions",
                field: "id",
            })?;
            if parse_role_definition_id(id).is_err() {
                return Err(AzureError::Incomplete {
                    call: "list role definitions",
                    field: "id",
                });
            }
            if !ids.iter().any(|i| i.eq_ignore_ascii_case(id)) {
                ids.push(id.to_string());
            }
        }
        let wrong = |message: String| AzureError::Target {
            entitlement: entitlement.to_string(),
            field: "target.role".into(),
            message,
        };
        match ids.as_slice() {
            [] => Err(wrong(format!(
                "no role named `{}` is assignable at `{scope}`; `role` takes a role's exact display name (such as `Reader`), or give `role_definition_id`",
                printable(&name)
            ))),
            [id] => {
                lock(&self.roles).insert(key, id.clone());
                Ok(Role {
                    id: id.clone(),
                    name: Some(name),
                })
            }
            many => Err(wrong(format!(
                "`{}` names {} roles at `{scope}` ({}); give `role_definition_id` with the one meant",
                printable(&name),
                many.len(),
                many.join(", ")
            ))),
        }
    }

    /// Drops a resolved name whose id ARM no longer knows (a custom role
    /// deleted and made anew under the same name), so the next grant
    /// resolves it again.
    fn forget_role(&self, target: &AzureTarget) {
        if let RoleRef::Name(n) = &target.role {
            lock(&self.roles).remove(&(target.scope.as_str().to_ascii_lowercase(), n.clone()));
        }
    }

    fn request_path(scope: &str, name: &str) -> String {
        format!("{scope}{AUTH}/roleAssignmentScheduleRequests/{name}")
    }

    async fn get_request(&self, scope: &str, name: &str) -> Result<Option<Value>, AzureError> {
        match self
            .arm
            .send(
                "get schedule request",
                Method::Get,
                &Self::request_path(scope, name),
                &[("api-version", PIM_API_VERSION)],
                None,
            )
            .await
        {
            Ok(r) => Ok(Some(r.body)),
            Err(e) if e.is_not_there() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// PUTs a schedule request; when one of that name exists already (a
    /// retry, another broker, a reconciliation), returns that one instead.
    /// One call in the common case: the name is derived, so a conflict is
    /// the only way to learn it was taken.
    async fn put_request(
        &self,
        call: &'static str,
        scope: &str,
        name: &str,
        body: &Value,
    ) -> Result<Value, AzureError> {
        match self.put_request_fresh(call, scope, name, body).await {
            Ok((request, _)) => Ok(request),
            // ARM may answer `RoleAssignmentExists` when the request under
            // our name has already put its assignment in force.
            Err(e) if e.code() == Some("RoleAssignmentExists") => {
                match self.get_request(scope, name).await? {
                    Some(existing) => Ok(existing),
                    None => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// [`Self::put_request`], also saying whether this call made the request.
    async fn put_request_fresh(
        &self,
        call: &'static str,
        scope: &str,
        name: &str,
        body: &Value,
    ) -> Result<(Value, bool), AzureError> {
        match self
            .arm
            .send(
                call,
                Method::Put,
                &Self::request_path(scope, name),
                &[("api-version", PIM_API_VERSION)],
                Some(body),
            )
            .await
        {
            Ok(r) => Ok((r.body, true)),
            Err(e) if e.code() == Some("RoleAssignmentRequestExists") => {
                match self.get_request(scope, name).await? {
                    Some(existing) => Ok((existing, false)),
                    None => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    async fn cancel_request(&self, scope: &str, name: &str) {
        let path = format!("{}/cancel", Self::request_path(scope, name));
        if let Err(e) = self
            .arm
            .send(
                "cancel schedule request",
                Method::Post,
                &path,
                &[("api-version", PIM_API_VERSION)],
                None,
            )
            .await
        {
            tracing::warn!(request = %name, error = %e, "could not cancel a pim schedule request");
        }
    }

    /// Follows a schedule request until it is done, bounded by the configured wait.
    async fn settle(
        &self,
        call: &'static str,
        scope: &str,
        name: &str,
        mut request: Value,
    ) -> Result<Value, AzureError> {
        let started = tokio::time::Instant::now();
        loop {
            let status = status_of(&request);
            match phase(&status) {
                Phase::Done => return Ok(request),
                Phase::NeedsApproval => {
                    self.cancel_request(scope, name).await;
                    return Err(AzureError::Status {
                        call,
                        name: name.to_string(),
                        status,
                        hint: Some("the pim policy of this role requires approval of admin assignments; the request was cancelled; turn that approval off for the broker's role or use mode `assignments`"),
                    });
                }
                Phase::Failed => {
                    return Err(AzureError::Status {
                        call,
                        name: name.to_string(),
                        status,
                        hint: None,
                    })
                }
                Phase::Wait => {
                    if started.elapsed() >= self.config.provisioning_wait {
                        return Err(AzureError::Pending {
                            call,
                            name: name.to_string(),
                            status,
                            waited: started.elapsed().as_secs(),
                        });
                    }
                    tokio::time::sleep(self.config.poll_interval).await;
                    request =
                        self.get_request(scope, name)
                            .await?
                            .ok_or(AzureError::Incomplete {
                                call,
                                field: "schedule request (gone while provisioning)",
                            })?;
                }
            }
        }
    }

    /// The schedules of `principal` at `scope` for `role` that came from request `name`.
    async fn schedules_from(
        &self,
        scope: &str,
        principal: &str,
        role: &str,
        name: &str,
    ) -> Result<Vec<Value>, AzureError> {
        let filter = format!("principalId eq '{principal}'");
        let r = self
            .arm
            .send(
                "list role assignment schedules",
                Method::Get,
                &format!("{scope}{AUTH}/roleAssignmentSchedules"),
                &[("api-version", PIM_API_VERSION), ("$filter", &filter)],
                None,
            )
            .await?;
        let items = r
            .body
            .get("value")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        Ok(items
            .into_iter()
            .filter(|s| is_schedule_of(s, principal, role, name))
            .collect())
    }

    fn record(
        &self,
        grant: GrantId,
        who: Assigned<'_>,
        external_id: &str,
        expires_at: DateTime<Utc>,
        extra: Value,
    ) -> IssuedGrant {
        let mut details = json!({
            "mode": match self.config.mode { Mode::Pim => "pim", Mode::Assignments => "assignments" },
            "grant_id": grant.0.to_string(),
            "scope": who.scope,
            "role_definition_id": who.role,
            "principal_id": who.principal,
            "principal_type": who.principal_type.as_str(),
        });
        if let (Some(d), Some(e)) = (details.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                d.insert(k.clone(), v.clone());
            }
        }
        IssuedGrant {
            provider: self.config.name.clone(),
            external_id: external_id.to_string(),
            expires_at,
            details,
        }
    }

    async fn issue_pim(
        &self,
        spec: &GrantSpec,
        plan: Plan,
        role: Role,
    ) -> Result<Issued, AzureError> {
        let secs = self.duration_secs(&plan, &role).await?;
        let scope = plan.target.scope.as_str();
        let name = naming::derived_uuid(spec.grant_id, "issue").to_string();
        let mut properties = json!({
            "principalId": plan.principal_id,
            "roleDefinitionId": role.id,
            "requestType": "AdminAssign",
            "justification": plan.justification,
            "scheduleInfo": {
                "startDateTime": self.clock.now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "expiration": {"type": "AfterDuration", "duration": iso8601(Duration::from_secs(secs))},
            },
        });
        if let Some(p) = properties.as_object_mut() {
            if let Some(t) = &plan.ticket {
                p.insert(
                    "ticketInfo".into(),
                    json!({"ticketNumber": t, "ticketSystem": self.config.ticket_system}),
                );
            }
            if let (Some(c), Some(v)) = (&plan.target.condition, &plan.target.condition_version) {
                p.insert("condition".into(), json!(c));
                p.insert("conditionVersion".into(), json!(v));
            }
        }
        let body = json!({ "properties": properties });
        let request = self
            .put_request("put schedule request", scope, &name, &body)
            .await?;
        let request = self.settle("issue", scope, &name, request).await?;
        let end = self
            .schedule_end(scope, &plan.principal_id, &role.id, &name, &request)
            .await?;
        let grant = self.record(
            spec.grant_id,
            Assigned {
                scope,
                role: &role.id,
                principal: &plan.principal_id,
                principal_type: plan.principal_type,
            },
            &name,
            end,
            json!({
                "request_id": str_at(&request, "/id").unwrap_or_default(),
                "status": status_of(&request),
                "duration": iso8601(Duration::from_secs(secs)),
            }),
        );
        let description = format!(
            "{} for {} `{}` until {}",
            role.describe(&plan.target.scope),
            plan.principal_type,
            plan.principal_id,
            end.to_rfc3339()
        );
        Ok(Issued {
            grant,
            credentials: assigned_credentials(description, &plan, role, end),
        })
    }

    /// The end of the schedule a provisioned request made, as Azure returns
    /// it: one read of `roleAssignmentSchedules/{targetRoleAssignmentScheduleId}`
    /// (the request names its schedule); the principal's schedules are
    /// listed only for a request that does not. A schedule that is not this
    /// request's, or already over, is no grant to hand out.
    async fn schedule_end(
        &self,
        scope: &str,
        principal: &str,
        role: &str,
        name: &str,
        request: &Value,
    ) -> Result<DateTime<Utc>, AzureError> {
        let target = str_at(request, "/properties/targetRoleAssignmentScheduleId")
            .map(last_segment)
            .filter(|id| Uuid::parse_str(id).is_ok());
        let schedules = match target {
            Some(id) => match self
                .arm
                .send(
                    "get role assignment schedule",
                    Method::Get,
                    &format!("{scope}{AUTH}/roleAssignmentSchedules/{id}"),
                    &[("api-version", PIM_API_VERSION)],
                    None,
                )
                .await
            {
                Ok(r) => vec![r.body],
                Err(e) if e.is_not_there() => Vec::new(),
                Err(e) => return Err(e),
            },
            None => self.schedules_from(scope, principal, role, name).await?,
        };
        let now = self.clock.now();
        schedules
            .iter()
            .filter(|s| is_schedule_of(s, principal, role, name))
            .filter_map(|s| str_at(s, "/properties/endDateTime").and_then(parse_time))
            .filter(|end| *end > now)
            .max()
            .ok_or(AzureError::Incomplete {
                call: "issue",
                field: "roleAssignmentSchedule endDateTime",
            })
    }

    fn assignment_path(scope: &str, name: &str) -> String {
        format!("{scope}{AUTH}/roleAssignments/{name}")
    }

    async fn get_assignment(&self, scope: &str, name: &str) -> Result<Option<Value>, AzureError> {
        match self
            .arm
            .send(
                "get role assignment",
                Method::Get,
                &Self::assignment_path(scope, name),
                &[("api-version", ASSIGNMENTS_API_VERSION)],
                None,
            )
            .await
        {
            Ok(r) => Ok(Some(r.body)),
            Err(e) if e.is_not_there() => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn issue_assignment(
        &self,
        spec: &GrantSpec,
        plan: Plan,
        role: Role,
    ) -> Result<Issued, AzureError> {
        let scope = plan.target.scope.as_str();
        let name = naming::derived_uuid(spec.grant_id, "issue").to_string();
        // The end lives in the description so `find` can read it back.
        let end = self.clock.now()
            + TimeDelta::from_std(plan.window.remaining).unwrap_or(TimeDelta::zero());
        let end_text = end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let mut properties = json!({
            "roleDefinitionId": role.id,
            "principalId": plan.principal_id,
            "principalType": plan.principal_type.as_str(),
            "description": format!("jit grant {} until {end_text}", spec.grant_id.0),
        });
        if let Some(p) = properties.as_object_mut() {
            if let (Some(c), Some(v)) = (&plan.target.condition, &plan.target.condition_version) {
                p.insert("condition".into(), json!(c));
                p.insert("conditionVersion".into(), json!(v));
            }
        }
        let existing = self.get_assignment(scope, &name).await?;
        let assignment = match existing {
            Some(a) => a,
            None => {
                self.arm
                    .send(
                        "put role assignment",
                        Method::Put,
                        &Self::assignment_path(scope, &name),
                        &[("api-version", ASSIGNMENTS_API_VERSION)],
                        Some(&json!({ "properties": properties })),
                    )
                    .await?
                    .body
            }
        };
        let end = assignment_end(&assignment).unwrap_or(end);
        let grant = self.record(
            spec.grant_id,
            Assigned {
                scope,
                role: &role.id,
                principal: &plan.principal_id,
                principal_type: plan.principal_type,
            },
            &name,
            end,
            json!({"assignment_id": str_at(&assignment, "/id").unwrap_or_default()}),
        );
        let description = format!(
            "{} for {} `{}` until {} (removed by the broker's reaper)",
            role.describe(&plan.target.scope),
            plan.principal_type,
            plan.principal_id,
            end.to_rfc3339()
        );
        Ok(Issued {
            grant,
            credentials: assigned_credentials(description, &plan, role, end),
        })
    }

    async fn find_inner(&self, spec: &GrantSpec) -> Result<Option<IssuedGrant>, AzureError> {
        // A target or principal this provider cannot use was never issued.
        let Ok(target) = AzureTarget::parse(&spec.entitlement.id, &spec.entitlement.target) else {
            return Ok(None);
        };
        let Ok((principal, principal_type)) = self.principal(&spec.subject) else {
            return Ok(None);
        };
        // A role name that resolves to no role (or several) was never issued
        // either; ARM being unreachable is an error, not an absence.
        let role = match self.role(&spec.entitlement.id, &target).await {
            Ok(r) => r.id,
            Err(AzureError::Target { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let scope = target.scope.as_str();
        let name = naming::derived_uuid(spec.grant_id, "issue").to_string();
        match self.config.mode {
            Mode::Assignments => {
                let Some(a) = self.get_assignment(scope, &name).await? else {
                    return Ok(None);
                };
                let end = assignment_end(&a).unwrap_or(spec.ends_at);
                Ok(Some(self.record(
                    spec.grant_id,
                    Assigned {
                        scope,
                        role: &role,
                        principal: &principal,
                        principal_type,
                    },
                    &name,
                    end,
                    json!({"assignment_id": str_at(&a, "/id").unwrap_or_default()}),
                )))
            }
            Mode::Pim => {
                let Some(request) = self.get_request(scope, &name).await? else {
                    return Ok(None);
                };
                let status = status_of(&request);
                if phase(&status) == Phase::Failed {
                    return Ok(None);
                }
                let schedules = self.schedules_from(scope, &principal, &role, &name).await?;
                let end = schedules
                    .iter()
                    .filter_map(|s| str_at(s, "/properties/endDateTime").and_then(parse_time))
                    .max()
                    .or_else(|| request_end(&request))
                    .unwrap_or(spec.ends_at);
                Ok(Some(self.record(
                    spec.grant_id,
                    Assigned {
                        scope,
                        role: &role,
                        principal: &principal,
                        principal_type,
                    },
                    &name,
                    end,
                    json!({
                        "request_id": str_at(&request, "/id").unwrap_or_default(),
                        "status": status,
                    }),
                )))
            }
        }
    }

    async fn revoke_inner(&self, issued: &IssuedGrant) -> Result<(), AzureError> {
        // Every record this provider returns carries its details; one
        // without them was never issued here, so there is nothing to remove.
        if issued.details.is_null() {
            tracing::warn!(external_id = %issued.external_id, "azure revoke of a record without details: nothing was issued under it");
            return Ok(());
        }
        let field = |k: &str| {
            issued
                .details
                .get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| {
                    AzureError::Unrevocable(format!(
                        "grant record `{}` lacks `details.{k}`; it cannot be revoked by this provider",
                        printable(&issued.external_id)
                    ))
                })
        };
        let scope = field("scope")?;
        // The scope comes from our own record, but check it like any input
        // before it becomes part of a URL.
        crate::target::Scope::parse(&scope).map_err(AzureError::Unrevocable)?;
        let mode = field("mode")?;
        if mode == "assignments" {
            return self.revoke_assignment(&scope, &issued.external_id).await;
        }
        let role = field("role_definition_id")?;
        let principal = field("principal_id")?;
        let grant = field("grant_id")?
            .parse::<Uuid>()
            .map(GrantId)
            .map_err(|_| {
                AzureError::Unrevocable("grant record has a malformed `details.grant_id`".into())
            })?;
        let name = issued.external_id.clone();
        if Uuid::parse_str(&name).is_err() {
            return Err(AzureError::Unrevocable(format!(
                "grant record names `{}`, not a schedule request",
                printable(&name)
            )));
        }
        if self
            .schedules_from(&scope, &principal, &role, &name)
            .await?
            .is_empty()
        {
            // Nothing active from this grant: expired, removed, or not yet
            // provisioned. A request still on its way must not land later.
            if let Some(request) = self.get_request(&scope, &name).await? {
                if matches!(
                    phase(&status_of(&request)),
                    Phase::Wait | Phase::NeedsApproval
                ) {
                    self.cancel_request(&scope, &name).await;
                    if !self
                        .schedules_from(&scope, &principal, &role, &name)
                        .await?
                        .is_empty()
                    {
                        return Err(AzureError::Unavailable {
                            call: "revoke",
                            message: format!("schedule request `{name}` provisioned while being cancelled; retry"),
                        });
                    }
                }
            }
            return Ok(());
        }
        let body = json!({"properties": {
            "principalId": principal,
            "roleDefinitionId": role,
            "requestType": "AdminRemove",
            "justification": cut(&format!("jit revoke of grant {}", grant.0), MAX_JUSTIFICATION_LEN),
        }});
        // Deterministic names, so a retry or a second broker finds the same
        // request; a later name only when an earlier request under ours
        // ended without removing the schedule (failed, or done while the
        // schedule is still in force), so one bad request cannot block the
        // revocation for good.
        let mut remove = String::new();
        for attempt in 0..REMOVE_NAMES {
            let purpose = match attempt {
                0 => "revoke".to_string(),
                n => format!("revoke-{n}"),
            };
            remove = naming::derived_uuid(grant, &purpose).to_string();
            let (request, fresh) = match self
                .put_request_fresh("put remove request", &scope, &remove, &body)
                .await
            {
                Ok(r) => r,
                Err(e) if e.is_not_there() => return Ok(()),
                Err(e) => return Err(e),
            };
            let status = status_of(&request);
            let last = attempt + 1 == REMOVE_NAMES;
            match phase(&status) {
                Phase::NeedsApproval => {
                    return Err(AzureError::Status {
                        call: "revoke",
                        name: remove,
                        status,
                        hint: Some("the pim policy requires approval to remove this assignment"),
                    })
                }
                Phase::Failed if status != "Revoked" && last => {
                    return Err(AzureError::Status {
                        call: "revoke",
                        name: remove,
                        status,
                        hint: None,
                    });
                }
                // Failed: the next name.
                Phase::Failed if status != "Revoked" => {}
                Phase::Wait => break,
                // Done (or `Revoked`): a new request is awaited below; an old
                // one that is done while the schedule is still there did not
                // remove it.
                _ if fresh || last => break,
                _ => {}
            }
        }
        // Done only when the schedule is gone: a removal that did not land
        // is an error, never a silent success.
        let started = tokio::time::Instant::now();
        loop {
            if self
                .schedules_from(&scope, &principal, &role, &name)
                .await?
                .is_empty()
            {
                return Ok(());
            }
            if started.elapsed() >= self.config.provisioning_wait {
                return Err(AzureError::Pending {
                    call: "revoke",
                    name: remove,
                    status: "schedule still active".into(),
                    waited: started.elapsed().as_secs(),
                });
            }
            tokio::time::sleep(self.config.poll_interval).await;
        }
    }

    async fn revoke_assignment(&self, scope: &str, name: &str) -> Result<(), AzureError> {
        if Uuid::parse_str(name).is_err() {
            return Err(AzureError::Unrevocable(format!(
                "grant record names `{}`, not a role assignment",
                printable(name)
            )));
        }
        match self
            .arm
            .send(
                "delete role assignment",
                Method::Delete,
                &Self::assignment_path(scope, name),
                &[("api-version", ASSIGNMENTS_API_VERSION)],
                None,
            )
            .await
        {
            Ok(_) => {}
            Err(e) if e.is_not_there() => {}
            Err(e) => return Err(e),
        }
        match self.get_assignment(scope, name).await? {
            None => Ok(()),
            Some(_) => Err(AzureError::Unavailable {
                call: "revoke",
                message: format!("role assignment `{name}` still exists after its deletion; retry"),
            }),
        }
    }
}

/// Whether `schedule` is `principal`'s `role` made by schedule request `name`.
fn is_schedule_of(schedule: &Value, principal: &str, role: &str, name: &str) -> bool {
    str_at(schedule, "/properties/principalId").is_some_and(|p| p.eq_ignore_ascii_case(principal))
        && str_at(schedule, "/properties/roleDefinitionId")
            .is_some_and(|r| r.eq_ignore_ascii_case(role))
        && str_at(schedule, "/properties/roleAssignmentScheduleRequestId")
            .is_some_and(|id| last_segment(id).eq_ignore_ascii_case(name))
}

/// What the requester is told: the text, and the same facts as fields.
fn assigned_credentials(
    description: String,
    plan: &Plan,
    role: Role,
    end: DateTime<Utc>,
) -> Credentials {
    Credentials::Assignment {
        description,
        scope: Some(plan.target.scope.as_str().to_string()),
        role: Some(role.id),
        role_name: role.name,
        principal: Some(plan.principal_id.clone()),
        expires_at: end,
    }
}

/// The end written into a jit role assignment's description.
fn assignment_end(assignment: &Value) -> Option<DateTime<Utc>> {
    let d = str_at(assignment, "/properties/description")?;
    parse_time(d.rsplit(" until ").next()?)
}

/// The admin assignment maximum among a policy assignment list's effective rules.
fn policy_max_of(list: &Value, role: &str) -> Option<Duration> {
    list.get("value")?
        .as_array()?
        .iter()
        .filter(|a| {
            str_at(a, "/properties/roleDefinitionId").is_none_or(|r| r.eq_ignore_ascii_case(role))
        })
        .flat_map(|a| {
            a.pointer("/properties/effectiveRules")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .filter(|rule| {
            str_at(rule, "/ruleType") == Some("RoleManagementPolicyExpirationRule")
                && str_at(rule, "/target/caller") == Some("Admin")
                && str_at(rule, "/target/level") == Some("Assignment")
        })
        .filter_map(|rule| str_at(&rule, "/maximumDuration").and_then(parse_iso_duration))
        .min()
}

#[async_trait]
impl Provider for AzureProvider {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn capabilities(&self) -> Capabilities {
        self.caps()
    }

    fn validate(&self, entitlement: &Entitlement) -> jit_core::Result<()> {
        AzureTarget::parse(&entitlement.id, &entitlement.target)
            .map(|_| ())
            .map_err(self.err("validate"))
    }

    async fn issue(&self, spec: &GrantSpec) -> jit_core::Result<Issued> {
        let plan = self.plan(spec).map_err(self.err("issue"))?;
        let role = self
            .role(&spec.entitlement.id, &plan.target)
            .await
            .map_err(self.err("issue"))?;
        let target = plan.target.clone();
        let issued = match self.config.mode {
            Mode::Pim => self.issue_pim(spec, plan, role).await,
            Mode::Assignments => self.issue_assignment(spec, plan, role).await,
        };
        if issued
            .as_ref()
            .is_err_and(|e| e.code() == Some("RoleDefinitionDoesNotExist"))
        {
            self.forget_role(&target);
        }
        let issued = issued.map_err(self.err("issue"))?;
        tracing::info!(
            grant = %spec.grant_id,
            external_id = %issued.grant.external_id,
            expires_at = %issued.grant.expires_at,
            "azure grant issued"
        );
        Ok(issued)
    }

    async fn revoke(&self, issued: &IssuedGrant) -> jit_core::Result<()> {
        self.revoke_inner(issued).await.map_err(self.err("revoke"))
    }

    async fn find(&self, spec: &GrantSpec) -> jit_core::Result<Option<IssuedGrant>> {
        self.find_inner(spec).await.map_err(self.err("find"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn every_documented_status_has_a_phase() {
        let done = ["Provisioned", "ScheduleCreated"];
        let wait = [
            "Accepted",
            "PendingEvaluation",
            "Granted",
            "PendingProvisioning",
            "ProvisioningStarted",
            "PendingScheduleCreation",
            "PendingExternalProvisioning",
            "AdminApproved",
            "PendingRevocation",
        ];
        let approval = [
            "PendingApproval",
            "PendingApprovalProvisioning",
            "PendingAdminDecision",
        ];
        let failed = [
            "Denied",
            "AdminDenied",
            "Failed",
            "FailedAsResourceIsLocked",
            "Invalid",
            "TimedOut",
            "Canceled",
            "Revoked",
            "SomethingNew",
        ];
        for s in done {
            assert_eq!(phase(s), Phase::Done, "{s}");
        }
        for s in wait {
            assert_eq!(phase(s), Phase::Wait, "{s}");
        }
        for s in approval {
            assert_eq!(phase(s), Phase::NeedsApproval, "{s}");
        }
        for s in failed {
            assert_eq!(phase(s), Phase::Failed, "{s}");
        }
        // The spec's enum, all 22 values, is covered above.
        assert_eq!(
            done.len() + wait.len() + approval.len() + failed.len() - 1,
            22
        );
    }

    #[test]
    fn policy_maximum_is_the_admin_assignment_rule() {
        let role = "/subscriptions/s/providers/Microsoft.Authorization/roleDefinitions/r";
        let list = json!({"value": [{"properties": {
        "roleDefinitionId": role,
        "effectiveRules": [
            {"ruleType": "RoleManagementPolicyExpirationRule", "maximumDuration": "P90D",
             "target": {"caller": "Admin", "level": "Eligibility"}},
            {"ruleType": "RoleManagementPolicyExpirationRule", "maximumDuration": "PT7H",
             "target": {"caller": "EndUser", "level": "Assignment"}},
            {"ruleType": "RoleManagementPolicyExpirationRule", "maximumDuration": "PT4H",
             "target": {"caller": "Admin", "level": "Assignment"}},
            {"ruleType": "RoleManagementPolicyEnablementRule",
             "target": {"caller": "Admin", "level": "Assignment"}}
        ]}}]});
        assert_eq!(
            policy_max_of(&list, role),
            Some(Duration::from_secs(4 * 3600))
        );
        assert_eq!(policy_max_of(&list, "/other"), None);
        assert_eq!(policy_max_of(&json!({"value": []}), role), None);
    }

    #[test]
    fn request_end_reads_duration_or_end_time() {
        let r = json!({"properties": {"scheduleInfo": {"startDateTime": "2026-01-01T00:00:00Z",
            "expiration": {"type": "AfterDuration", "duration": "PT45M"}}}});
        assert_eq!(
            request_end(&r).unwrap().to_rfc3339(),
            "2026-01-01T00:45:00+00:00"
        );
        let a = json!({"properties": {"description": "jit grant x until 2026-01-01T01:00:00Z"}});
        assert_eq!(
            assignment_end(&a).unwrap().to_rfc3339(),
            "2026-01-01T01:00:00+00:00"
        );
    }
}
