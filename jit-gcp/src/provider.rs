//! The [`Provider`] implementation.
//!
//! # Binding mode
//!
//! Issue checks, in this order and before any call, each with a typed
//! error: the target ([`GcpTarget`]; a token target is refused by a binding
//! provider), the member ([`crate::member`]), the window (negative, empty,
//! longer than [`Capabilities::max_duration`], not yet started, or ending
//! within a minute). Then, for the target's resource, a read-modify-write:
//!
//! 1. `getIamPolicy` with `requestedPolicyVersion: 3`;
//! 2. refuse to go on if what came back could lose conditions when written
//!    back (a version below 3 with conditions, a role flattened to
//!    `…_withcond_…`, no etag);
//! 3. add `{role, members: [member], condition: {title: "jit-<grant>",
//!    description, expression: request.time < timestamp("<end>")}}`, after
//!    the checks of [`crate::binding`] (an unconditional holder, IAM's
//!    documented limits);
//! 4. `setIamPolicy` with version 3 and the etag just read. When the etag no
//!    longer matches (HTTP 409 `ABORTED`), start again at 1 after a
//!    jittered backoff, at most [`GcpConfig::conflict_retries`] times.
//!
//! The end written is the window's end rounded down to a whole second, so
//! the binding never outlives the window; it is the grant's end. Within
//! one process, writers of the same resource take turns (an async lock per
//! resource), so the etag loop only races other processes.
//!
//! Revoke removes the binding titled `jit-<grant>` the same way, and
//! succeeds when it is not there (already revoked, pruned, or never
//! written). `find` reads the policy and looks for the title, so a binding
//! written before a crash is found after a restart. Capabilities say
//! revocation takes effect within IAM's propagation time
//! ([`GcpConfig::propagation`]).
//!
//! # Hygiene (binding mode)
//!
//! Google never removes a conditional binding whose condition can no
//! longer be true, and such bindings keep counting toward the policy's
//! limits (1,500 principals, 20 conditional bindings per role and
//! principal). Capabilities say [`Capabilities::tidy`], and
//! [`Provider::tidy`] (run by jit-core's reaper on its slower cadence)
//! prunes expired `jit-` bindings ([`GcpProvider::prune_expired`]) from
//! the resources this provider knows: every resource an entitlement of
//! this provider names (recorded when the broker validates the catalogue),
//! every resource it issued on since start, and
//! [`GcpConfig::hygiene_resources`]. One call visits at most `budget`
//! resources (one read-modify-write each, skipped when nothing expired),
//! round-robin, so every resource is visited in turn however many there
//! are. Each pruned binding is reported with its grant (from the title)
//! and request (from the description) for the broker's audit record; a
//! resource whose policy cannot be read is reported as an error and the
//! others are still visited; a resource that no longer exists has nothing
//! to prune.
//!
//! # Token mode
//!
//! `generateAccessToken` with a `lifetime` of the whole seconds left in the
//! window (less [`CALL_ALLOWANCE`]), at most
//! [`GcpConfig::token_max_lifetime`]; the `expireTime` Google returns is the
//! grant's end. Such a token cannot be revoked: capabilities say
//! [`RevocationKind::None`], `revoke` succeeds only once the token has
//! expired and refuses before, and the broker refuses early revocation
//! instead of pretending.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use google_cloud_iam_v1::model::Policy;
use jit_core::provider::ledger::Ledger;
use jit_core::provider::naming::grant_id_from_name;
use jit_core::provider::retry::{retry_on, Backoff};
use jit_core::provider::window::WindowRules;
use jit_core::types::format_duration;
use jit_core::{
    Capabilities, Clock, Credentials, Entitlement, GrantSpec, Issued, IssuedGrant, Provider,
    RevocationKind, SystemClock, Tidied, TidyReport,
};
use serde_json::json;

use crate::binding::{self, GrantBinding, Refusal};
use crate::client::GcpClients;
use crate::config::{GcpConfig, Mode};
use crate::error::{printable, GcpError};
use crate::member::member_of;
use crate::target::{GcpTarget, Resource};

/// How far in the future a window may start: bindings and tokens start at the call.
const START_SLACK: Duration = Duration::from_secs(60);
/// Taken off a token's lifetime for the time between reading our clock and
/// Google reading its own: the token may end up to this much before the
/// window, never after it.
pub const CALL_ALLOWANCE: Duration = Duration::from_secs(5);
/// The shortest grant: a binding or token that ends within a minute of its
/// call is not worth the write.
pub const MIN_DURATION: Duration = Duration::from_secs(60);
/// How long an in-process token record is kept after its expiry.
const LEDGER_RETENTION: Duration = Duration::from_secs(3600);
/// The backoff between read-modify-write attempts after an etag conflict:
/// 50 ms doubling to 2 s, jittered so writers that collided spread out.
const CONFLICT_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(50), Duration::from_secs(2)).with_jitter(true);

/// Builds a [`GcpProvider`].
pub struct GcpProviderBuilder {
    config: GcpConfig,
    credentials: Option<google_cloud_auth::credentials::Credentials>,
    clock: Arc<dyn Clock>,
}

impl GcpProviderBuilder {
    /// Uses these credentials instead of [`GcpConfig::credentials`].
    pub fn credentials(mut self, credentials: google_cloud_auth::credentials::Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// The clock for windows (default: the system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Builds the provider. No remote call is made.
    pub async fn build(self) -> jit_core::Result<GcpProvider> {
        self.config
            .check()
            .map_err(|e| e.into_core(&self.config.name, "configure"))?;
        let credentials = match self.credentials {
            Some(c) => c,
            None => crate::client::credentials(&self.config.credentials)?,
        };
        let clients = GcpClients::new(&self.config, credentials).await?;
        let hygiene = Hygiene {
            resources: self.config.hygiene_resources.iter().cloned().collect(),
            next: 0,
        };
        Ok(GcpProvider {
            hygiene: Mutex::new(hygiene),
            config: self.config,
            clients,
            clock: self.clock,
            writers: Mutex::new(HashMap::new()),
            ledger: Ledger::new(LEDGER_RETENTION),
        })
    }
}

/// Google Cloud provider. See the [module docs](self).
pub struct GcpProvider {
    config: GcpConfig,
    clients: GcpClients,
    clock: Arc<dyn Clock>,
    /// One async lock per resource: this process's writers take turns.
    writers: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Tokens minted by this process (token mode `find`).
    ledger: Ledger<IssuedGrant>,
    /// The resources hygiene visits (see the module docs).
    hygiene: Mutex<Hygiene>,
}

/// The resources hygiene visits, and where the next call starts.
#[derive(Debug, Default)]
struct Hygiene {
    resources: BTreeSet<String>,
    next: usize,
}

impl Hygiene {
    /// Up to `n` resources, round-robin from where the last call stopped.
    fn batch(&mut self, n: usize) -> Vec<String> {
        let all: Vec<&String> = self.resources.iter().collect();
        if all.is_empty() {
            return Vec::new();
        }
        let n = n.min(all.len());
        let start = self.next % all.len();
        let out = (0..n)
            .map(|i| all[(start + i) % all.len()].clone())
            .collect();
        self.next = (start + n) % all.len();
        out
    }
}

impl fmt::Debug for GcpProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcpProvider")
            .field("name", &self.config.name)
            .field("mode", &self.config.mode)
            .field("max_duration", &format_duration(self.config.max_grant()))
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain maps: a panic elsewhere cannot leave them half-updated.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whole seconds, rounded down.
fn floor_secs(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(t.timestamp(), 0).unwrap_or(t)
}

/// A policy we may edit and write back without losing anything.
fn check_writable(resource: &Resource, policy: &Policy) -> Result<(), GcpError> {
    let unsafe_ = |message: String| GcpError::Unsafe {
        call: "getIamPolicy",
        message,
    };
    if policy.etag.is_empty() {
        return Err(unsafe_(format!(
            "the policy of `{resource}` came without an etag; refusing to write it back"
        )));
    }
    if policy
        .bindings
        .iter()
        .any(|b| b.role.contains("_withcond_"))
    {
        return Err(unsafe_(format!(
            "the policy of `{resource}` came back flattened to version 1 (a role named `…_withcond_…`); writing it back would drop its conditions"
        )));
    }
    if policy.version < binding::POLICY_VERSION && binding::has_conditions(policy) {
        return Err(unsafe_(format!(
            "the policy of `{resource}` has conditions but came back as version {}",
            policy.version
        )));
    }
    Ok(())
}

impl GcpProvider {
    /// A builder; credentials come from [`GcpConfig::credentials`] at
    /// `build` unless given.
    pub fn builder(config: GcpConfig) -> GcpProviderBuilder {
        GcpProviderBuilder {
            config,
            credentials: None,
            clock: Arc::new(SystemClock),
        }
    }

    /// [`GcpConfig::from_env`] and its credentials.
    pub async fn from_env() -> jit_core::Result<Self> {
        Self::builder(GcpConfig::from_env()?).build().await
    }

    /// The configuration.
    pub fn config(&self) -> &GcpConfig {
        &self.config
    }

    /// The clients (for tools and benchmarks).
    pub fn clients(&self) -> &GcpClients {
        &self.clients
    }

    fn err(&self, operation: &'static str) -> impl Fn(GcpError) -> jit_core::Error + '_ {
        move |e| e.into_core(&self.config.name, operation)
    }

    /// Remembers a resource for hygiene.
    fn visit_later(&self, resource: &Resource) {
        let mut h = lock(&self.hygiene);
        if !h.resources.contains(resource.name()) {
            h.resources.insert(resource.name().to_string());
        }
    }

    /// The resources hygiene visits (sorted).
    pub fn hygiene_resources(&self) -> Vec<String> {
        lock(&self.hygiene).resources.iter().cloned().collect()
    }

    fn writer(&self, resource: &Resource) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.writers)
            .entry(resource.name().to_string())
            .or_default()
            .clone()
    }

    fn target(&self, entitlement: &Entitlement) -> Result<GcpTarget, GcpError> {
        let t = GcpTarget::parse(&entitlement.id, &entitlement.target)?;
        let wrong = |want: &str| {
            GcpError::Target {
            entitlement: entitlement.id.clone(),
            field: "target".into(),
            message: format!(
                "provider `{}` mints {want}; configure a provider with `mode = \"{}\"` for this target",
                self.config.name,
                match self.config.mode {
                    Mode::Binding => "token",
                    Mode::Token => "binding",
                }
            ),
        }
        };
        match (&t, self.config.mode) {
            (GcpTarget::Binding { .. }, Mode::Binding) | (GcpTarget::Token { .. }, Mode::Token) => {
                Ok(t)
            }
            (_, Mode::Binding) => Err(wrong("conditional bindings (`resource` and `role`)")),
            (_, Mode::Token) => Err(wrong("access tokens (`service_account`)")),
        }
    }

    /// The window checks shared by both modes; returns the whole seconds
    /// left of the window, less `allowance`. A binding states its end as a
    /// timestamp and needs no allowance for the call; a token's lifetime
    /// counts from Google's clock, so token mode keeps [`CALL_ALLOWANCE`].
    fn window(&self, spec: &GrantSpec, allowance: Duration) -> Result<i64, GcpError> {
        let caps = self.capabilities();
        let window = WindowRules::new(&self.config.name, &caps)
            .start_slack(START_SLACK)
            .call_allowance(allowance)
            .check(spec, self.clock.now())?;
        Ok(window.remaining.as_secs() as i64)
    }

    /// One read-modify-write of `resource`'s policy: `edit` returns whether
    /// it changed the policy (nothing is written when it did not). Retried
    /// from the read when the etag changed in between.
    async fn read_modify_write<T>(
        &self,
        resource: &Resource,
        edit: impl FnMut(&mut Policy) -> Result<(bool, T), GcpError> + Send,
    ) -> Result<T, GcpError> {
        let writer = self.writer(resource);
        let _turn = writer.lock().await;
        let attempts = self.config.conflict_retries;
        // Called once per attempt, between the read and the write.
        let edit = Mutex::new(edit);
        let once = || async {
            let mut policy = self.clients.get_policy(resource).await?;
            check_writable(resource, &policy)?;
            let (changed, out) = {
                let mut edit = lock(&edit);
                (*edit)(&mut policy)?
            };
            if changed {
                policy.version = binding::POLICY_VERSION;
                self.clients.set_policy(resource, policy).await?;
            }
            Ok(out)
        };
        match retry_on(
            &CONFLICT_BACKOFF,
            attempts,
            GcpError::is_etag_mismatch,
            once,
        )
        .await
        {
            Err(e) if e.is_etag_mismatch() => Err(GcpError::Contended {
                resource: resource.to_string(),
                attempts,
            }),
            other => other,
        }
    }

    fn record(
        &self,
        resource: &Resource,
        b: &GrantBinding,
        expires_at: DateTime<Utc>,
    ) -> IssuedGrant {
        IssuedGrant {
            provider: self.config.name.clone(),
            external_id: b.title.clone(),
            expires_at,
            details: json!({
                "mode": "binding",
                "resource": resource.name(),
                "role": b.role,
                "member": b.member,
                "condition_title": b.title,
                "expression": binding::expression(expires_at),
            }),
        }
    }

    async fn issue_binding(
        &self,
        spec: &GrantSpec,
        resource: Resource,
        role: String,
    ) -> Result<Issued, GcpError> {
        let member = member_of(&self.config, &spec.subject)?;
        self.window(spec, Duration::ZERO)?;
        let end = floor_secs(spec.ends_at);
        let title = binding::title(spec.grant_id);
        let description = binding::description(
            &spec.entitlement.id,
            spec.ticket.as_deref(),
            spec.grant_id,
            spec.request_id,
        );
        // Before the write: a binding that lands is always pruned later.
        self.visit_later(&resource);
        let expires_at = self
            .read_modify_write(&resource, |policy| {
                if let Some(existing) = binding::find(policy, &title) {
                    // A repeated issue: the binding is there; its own end is the truth.
                    return Ok((false, existing.expires_at.unwrap_or(end).min(end)));
                }
                match binding::add(policy, &role, &member, &title, &description, end) {
                    Ok(changed) => Ok((changed, end)),
                    Err(Refusal::Unconditional) => Err(GcpError::Refused(format!(
                        "`{member}` already holds `{role}` on `{resource}` without a condition; a time-bound grant of it would mean nothing"
                    ))),
                    Err(Refusal::Limit(m) | Refusal::Length(m)) => Err(GcpError::Refused(format!(
                        "binding `{role}` for `{member}` on `{resource}` refused before writing: {m}"
                    ))),
                }
            })
            .await?;
        let b = GrantBinding {
            role: role.clone(),
            member: member.clone(),
            title: title.clone(),
            expires_at: Some(expires_at),
            request_id: Some(spec.request_id),
        };
        tracing::debug!(provider = %self.config.name, grant = %spec.grant_id, resource = %resource, role = %role, member = %member, expires_at = %expires_at, "gcp conditional binding written");
        Ok(Issued {
            grant: self.record(&resource, &b, expires_at),
            credentials: Credentials::Assignment {
                description: format!(
                    "`{role}` on `{resource}` for `{member}` until {}",
                    expires_at.to_rfc3339()
                ),
                scope: Some(resource.to_string()),
                role: Some(role.clone()),
                role_name: None,
                principal: Some(member.clone()),
                expires_at,
            },
        })
    }

    async fn issue_token(
        &self,
        spec: &GrantSpec,
        service_account: String,
        scopes: Vec<String>,
        delegates: Vec<String>,
    ) -> Result<Issued, GcpError> {
        let lifetime = self.window(spec, CALL_ALLOWANCE)?;
        let token = self
            .clients
            .generate_access_token(&service_account, &scopes, &delegates, lifetime)
            .await?;
        let issued = IssuedGrant {
            provider: self.config.name.clone(),
            external_id: binding::title(spec.grant_id),
            expires_at: token.expires_at,
            details: json!({
                "mode": "token",
                "service_account": service_account,
                "scopes": scopes,
                "delegates": delegates,
                "lifetime_secs": lifetime,
            }),
        };
        self.ledger.insert(
            spec.grant_id,
            issued.clone(),
            issued.expires_at,
            self.clock.now(),
        );
        tracing::debug!(provider = %self.config.name, grant = %spec.grant_id, service_account = %service_account, expires_at = %token.expires_at, "gcp access token issued");
        Ok(Issued {
            grant: issued,
            credentials: Credentials::AccessToken {
                token: token.token,
                expires_at: token.expires_at,
            },
        })
    }

    async fn issue_inner(&self, spec: &GrantSpec) -> Result<Issued, GcpError> {
        match self.target(&spec.entitlement)? {
            GcpTarget::Binding { resource, role } => self.issue_binding(spec, resource, role).await,
            GcpTarget::Token {
                service_account,
                scopes,
                delegates,
            } => {
                self.issue_token(spec, service_account, scopes, delegates)
                    .await
            }
        }
    }

    /// A revocable record for a spec, built from the derived title and the
    /// target alone (no remote call): revoking it removes whatever binding
    /// an interrupted issue may have written, and succeeds if there is none.
    pub fn reconstruct(&self, spec: &GrantSpec) -> jit_core::Result<IssuedGrant> {
        let err = self.err("find");
        match self.target(&spec.entitlement).map_err(&err)? {
            GcpTarget::Binding { resource, role } => Ok(IssuedGrant {
                provider: self.config.name.clone(),
                external_id: binding::title(spec.grant_id),
                expires_at: floor_secs(spec.ends_at),
                details: json!({
                    "mode": "binding",
                    "resource": resource.name(),
                    "role": role,
                    "condition_title": binding::title(spec.grant_id),
                    "reconstructed": true,
                }),
            }),
            GcpTarget::Token { .. } => Err(err(GcpError::Refused(
                "an access token cannot be revoked, by name or otherwise".into(),
            ))),
        }
    }

    async fn revoke_inner(&self, issued: &IssuedGrant) -> Result<(), GcpError> {
        let title = issued.external_id.as_str();
        if !binding::is_grant_title(title) {
            return Err(GcpError::Refused(format!(
                "`{}` is not a condition title jit-gcp derives (`jit-<32 hex>`)",
                printable(title)
            )));
        }
        let detail = |k: &str| issued.details.get(k).and_then(|v| v.as_str());
        match (self.config.mode, detail("mode")) {
            (Mode::Token, _) | (_, Some("token")) => {
                let now = self.clock.now();
                if issued.expires_at <= now {
                    return Ok(());
                }
                if issued.details.is_null() {
                    // A record that never reached `issue`: nothing was minted.
                    return Ok(());
                }
                Err(GcpError::Refused(format!(
                    "an access token cannot be revoked before it expires at {}; google offers no revocation for tokens minted by generateAccessToken",
                    issued.expires_at.to_rfc3339()
                )))
            }
            (Mode::Binding, _) => {
                let Some(resource) = detail("resource") else {
                    // No resource on record: a record that never reached
                    // `issue` (the broker keeps the details of everything
                    // it issued), so no binding exists to remove.
                    tracing::warn!(provider = %self.config.name, title, "revoke: no resource recorded for this grant; nothing was issued under it");
                    return Ok(());
                };
                let resource = Resource::parse(resource).map_err(|m| {
                    GcpError::Refused(format!("recorded `resource` is invalid: {m}"))
                })?;
                let removed = self
                    .read_modify_write(&resource, |policy| {
                        let changed = binding::remove(policy, title);
                        Ok((changed, changed))
                    })
                    .await;
                match removed {
                    Ok(changed) => {
                        tracing::debug!(provider = %self.config.name, title, resource = %resource, removed = changed, "gcp conditional binding revoked");
                        Ok(())
                    }
                    // A deleted resource has no bindings left to remove.
                    Err(GcpError::NotFound { .. }) => Ok(()),
                    Err(e) => Err(e),
                }
            }
        }
    }

    async fn find_inner(&self, spec: &GrantSpec) -> Result<Option<IssuedGrant>, GcpError> {
        match self.target(&spec.entitlement)? {
            GcpTarget::Binding { resource, .. } => {
                let policy = match self.clients.get_policy(&resource).await {
                    Ok(p) => p,
                    Err(GcpError::NotFound { .. }) => return Ok(None),
                    Err(e) => return Err(e),
                };
                let title = binding::title(spec.grant_id);
                Ok(binding::find(&policy, &title).map(|b| {
                    let end = b.expires_at.unwrap_or(spec.ends_at);
                    self.record(&resource, &b, end)
                }))
            }
            GcpTarget::Token { .. } => Ok(self.ledger.get(spec.grant_id)),
        }
    }

    /// Removes every expired `jit-` binding from `resource`'s policy,
    /// touching nothing else (Google never removes them, and they count
    /// toward the policy's limits). Returns what was removed, for the
    /// caller's audit record.
    pub async fn prune_expired(&self, resource: &Resource) -> jit_core::Result<Vec<GrantBinding>> {
        self.prune_inner(resource).await.map_err(self.err("prune"))
    }

    async fn prune_inner(&self, resource: &Resource) -> Result<Vec<GrantBinding>, GcpError> {
        let now = self.clock.now();
        let pruned = self
            .read_modify_write(resource, |policy| {
                let pruned = binding::prune_expired(policy, now);
                Ok((!pruned.is_empty(), pruned))
            })
            .await?;
        for b in &pruned {
            tracing::info!(provider = %self.config.name, resource = %resource, role = %b.role, member = %b.member, title = %b.title, "expired jit binding pruned");
        }
        Ok(pruned)
    }

    async fn tidy_inner(&self, budget: usize) -> TidyReport {
        if self.config.mode != Mode::Binding {
            return TidyReport::default();
        }
        let batch = lock(&self.hygiene).batch(budget);
        let mut removed = Vec::new();
        let mut errors = Vec::new();
        for name in batch {
            let resource = match Resource::parse(&name) {
                Ok(r) => r,
                Err(m) => {
                    errors.push(self.err("prune")(GcpError::Refused(format!(
                        "hygiene resource `{}` is invalid: {m}",
                        printable(&name)
                    ))));
                    continue;
                }
            };
            match self.prune_inner(&resource).await {
                Ok(pruned) => removed.extend(pruned.into_iter().map(|b| {
                    Tidied::new(resource.name(), b.title.clone())
                        .of_grant(grant_id_from_name(&b.title), b.request_id)
                        .details(json!({
                            "kind": "conditional binding",
                            "role": b.role,
                            "member": b.member,
                            "condition_title": b.title,
                            "ended_at": b.expires_at.map(|t| t.to_rfc3339()),
                        }))
                })),
                // A deleted resource has no bindings left to prune.
                Err(GcpError::NotFound { .. }) => {}
                Err(e) => errors.push(self.err("prune")(e)),
            }
        }
        TidyReport::new(removed, errors)
    }
}

#[async_trait]
impl Provider for GcpProvider {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn capabilities(&self) -> Capabilities {
        let common = Capabilities::default()
            .with_native_expiry(true)
            .with_min_duration(MIN_DURATION);
        match self.config.mode {
            Mode::Binding => common
                .with_max_duration(self.config.max_duration)
                // Removing a binding takes effect within IAM's propagation time.
                .with_revocation(RevocationKind::Propagates {
                    within: self.config.propagation,
                })
                // Removal by the derived title works whether or not the binding exists.
                .with_revoke_by_name(true)
                // Expired bindings stay in the policy until pruned.
                .with_tidy(true),
            Mode::Token => common
                .with_max_duration(self.config.token_max_lifetime)
                .with_revocation(RevocationKind::None)
                .with_revoke_by_name(false),
        }
    }

    fn validate(&self, entitlement: &Entitlement) -> jit_core::Result<()> {
        let err = self.err("validate");
        if let GcpTarget::Binding { resource, .. } = self.target(entitlement).map_err(&err)? {
            // The catalogue names it: hygiene visits it (see the module docs).
            self.visit_later(&resource);
        }
        let min = self.capabilities().min_duration;
        if entitlement.max_duration.get() < min {
            return Err(err(GcpError::Target {
                entitlement: entitlement.id.clone(),
                field: "max_duration".into(),
                message: format!(
                    "`{}` is below the shortest grant provider `{}` mints ({})",
                    entitlement.max_duration,
                    self.config.name,
                    format_duration(min)
                ),
            }));
        }
        Ok(())
    }

    async fn issue(&self, spec: &GrantSpec) -> jit_core::Result<Issued> {
        self.issue_inner(spec).await.map_err(self.err("issue"))
    }

    async fn revoke(&self, issued: &IssuedGrant) -> jit_core::Result<()> {
        self.revoke_inner(issued).await.map_err(self.err("revoke"))
    }

    async fn find(&self, spec: &GrantSpec) -> jit_core::Result<Option<IssuedGrant>> {
        self.find_inner(spec).await.map_err(self.err("find"))
    }

    async fn record_by_name(&self, spec: &GrantSpec) -> jit_core::Result<IssuedGrant> {
        if self.config.mode == Mode::Token {
            return Err(jit_core::Error::ProviderRejected {
                provider: self.config.name.clone(),
                operation: "revoke by name",
                message: "an access token cannot be revoked, by name or otherwise".into(),
            });
        }
        self.reconstruct(spec)
    }

    async fn tidy(&self, budget: usize) -> jit_core::Result<TidyReport> {
        Ok(self.tidy_inner(budget).await)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use google_cloud_iam_v1::model::Binding;
    use jit_core::GrantId;

    use super::*;

    #[test]
    fn policies_that_would_lose_conditions_are_never_written_back() {
        let r = Resource::Project("projects/prod-1234".into());
        let ok = Policy::new().set_version(3).set_etag(bytes_of("BwX"));
        check_writable(&r, &ok).unwrap();
        let no_etag = Policy::new().set_version(3);
        assert!(check_writable(&r, &no_etag).is_err());
        let flattened = ok.clone().set_version(1).set_bindings([Binding::new()
            .set_role("roles/storage.admin_withcond_2c2b9c3d")
            .set_members(["user:a@example.com"])]);
        let e = check_writable(&r, &flattened).unwrap_err().to_string();
        assert!(e.contains("flattened"), "{e}");
        let mut with_condition = ok.clone().set_version(1);
        let mut pb = Policy::new();
        binding::add(
            &mut pb,
            "roles/x",
            "user:a@example.com",
            &binding::title(GrantId::new()),
            "d",
            Utc::now(),
        )
        .unwrap();
        with_condition.bindings = pb.bindings;
        assert!(check_writable(&r, &with_condition).is_err());
    }

    #[test]
    fn hygiene_visits_every_resource_in_turn() {
        let mut h = Hygiene::default();
        assert!(h.batch(3).is_empty());
        for r in ["projects/a", "projects/b", "projects/c"] {
            h.resources.insert(r.into());
        }
        assert_eq!(h.batch(2), ["projects/a", "projects/b"]);
        assert_eq!(h.batch(2), ["projects/c", "projects/a"]);
        assert_eq!(h.batch(9), ["projects/b", "projects/c", "projects/a"]);
    }

    fn bytes_of(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }
}
