//! The [`Provider`] implementation: `sts:AssumeRole` grants.
//!
//! # Issue
//!
//! All limits are checked before any remote call, in this order, each with
//! a typed error: the target ([`AwsTarget`]); the window (negative, empty,
//! longer than [`Capabilities::max_duration`], not yet started, or less than
//! STS's 15 minutes left); session name, `SourceIdentity` and session tags
//! ([`crate::session`]). Then `iam:GetRole` (cached for
//! [`AwsConfig::role_cache_ttl`]) gives the role's `MaxSessionDuration` and
//! id; a longer window is clamped or refused ([`AwsConfig::over_role_max`])
//! before `sts:AssumeRole` is called.
//!
//! `DurationSeconds` is the whole seconds left until the window's end, less
//! [`CALL_ALLOWANCE`] (5 s) for the call's latency and clock skew, so the
//! session does not outlive the window;
//! the `Expiration` STS returns is recorded as the grant's end. When the
//! broker's own identity is an assumed role, AWS caps chained sessions at one
//! hour: [`Capabilities::max_duration`] then says 1 h, so the catalogue policy
//! clamps requests to it and says so in the decision's reasons.
//!
//! The [`IssuedGrant`] names the session (`external_id` = `RoleSessionName`)
//! and records the role ARN, role id, assumed-role ARN and id, and the
//! access key id in `details`; never the secret key or session token.
//!
//! # Idempotency and `find`
//!
//! Issuing a grant again calls `AssumeRole` again with the same session name:
//! both sessions carry the same `aws:userid`, so one revocation covers both.
//! There is no STS API to list sessions, so `find` answers from an in-process
//! record of what this provider minted. After a restart it returns `None`
//! for sessions a crashed process minted. Not finding them is no proof that
//! nothing was minted, so the provider says
//! [`Capabilities::revoke_by_name`]: the broker's reconciler then asks
//! [`Provider::record_by_name`] ([`AwsProvider::reconstruct`]) for a record
//! built from the derived session name and the target's role, and revokes
//! it. Revocation by session name works whether or not the session exists.
//!
//! # Revoke
//!
//! See [`crate::revoke`]: a deny on `aws:userid` = `ROLE_ID:session-name` in
//! one inline policy on the role, plus [`AwsProvider::revoke_all_sessions`]
//! for the role-wide `aws:TokenIssueTime` deny. When the per-grant list is
//! full, [`Provider::revoke_reporting`] falls back to the role-wide deny and
//! reports it; [`Provider::cut_off_by`] then says which other grants it cut
//! off for certain: those of the same role whose session STS issued (its
//! `Expiration` less its `DurationSeconds`) more than [`CALL_ALLOWANCE`]
//! before the cutoff. A grant issued closer to it may or may not be
//! denied, and is left recorded as live rather than recorded as revoked
//! while it may still work.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use aws_config::SdkConfig;
use chrono::{DateTime, TimeDelta, Utc};
use jit_core::lease::LeaseOptions;
use jit_core::types::format_duration;
use jit_core::{
    Capabilities, Clock, Collateral, Credentials, Entitlement, GrantSpec, Issued, IssuedGrant,
    Provider, RequestError, RevocationKind, RevokeOutcome, Store, SystemClock,
};
use serde_json::json;

use crate::client::{self, AssumeRoleInput, AwsClients, RoleInfo};
use crate::config::{AwsConfig, OverRoleMax, ROLE_CHAINING_MAX, STS_MIN_DURATION};
use crate::error::{printable, AwsError};
use crate::revoke::{Change, LeaseConfig, Revocations, Target, PRUNE_MARGIN};
use crate::session;
use crate::target::{partition_of_region, AwsTarget, RoleArn};
use jit_core::provider::ledger::Ledger;
use jit_core::provider::naming;
use jit_core::provider::window::WindowRules;

/// How far in the future a window may start: STS sessions start at the call.
const START_SLACK: Duration = Duration::from_secs(60);
/// Taken off `DurationSeconds` for the time between reading our clock and
/// STS reading its own (latency, queueing, skew): the session may end up to
/// this much before the window, never after it.
pub const CALL_ALLOWANCE: TimeDelta = TimeDelta::seconds(5);
/// How long an in-process record is kept after its session expired.
const LEDGER_RETENTION: Duration = Duration::from_secs(3600);

/// Builds an [`AwsProvider`].
pub struct AwsProviderBuilder {
    config: AwsConfig,
    sdk: Option<SdkConfig>,
    clients: Option<AwsClients>,
    clock: Arc<dyn Clock>,
    lease_store: Option<Arc<dyn Store>>,
    lease_options: LeaseOptions,
    #[cfg(feature = "testing")]
    write_delay: Option<Duration>,
}

impl AwsProviderBuilder {
    /// Uses this SDK configuration instead of loading the standard chain.
    /// [`AwsConfig::endpoint_url`] still applies.
    pub fn sdk_config(mut self, sdk: SdkConfig) -> Self {
        self.sdk = Some(sdk);
        self
    }

    /// Uses these clients as they are (custom interceptors, retry settings).
    pub fn clients(mut self, clients: AwsClients) -> Self {
        self.clients = Some(clients);
        self
    }

    /// The clock for windows, caches and pruning (default: the system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Serialises revocation-policy writes across processes with leases in
    /// this store (the broker's own store, shared by every replica and the
    /// Lambda function): required whenever more than one process may revoke
    /// grants of the same role. Without it, only this process's writers are
    /// serialised (see [`crate::revoke`]).
    pub fn lease_store(mut self, store: Arc<dyn Store>) -> Self {
        self.lease_store = Some(store);
        self
    }

    /// How long a revocation lease lasts and how long to wait for one
    /// (default [`LeaseOptions::default`]).
    pub fn lease_options(mut self, options: LeaseOptions) -> Self {
        self.lease_options = options;
        self
    }

    /// Test-only fault injection (feature `testing`): a random pause of up to
    /// `max` between reading the revocation policy and writing it, to widen
    /// the window in which concurrent writers can overwrite each other.
    #[cfg(feature = "testing")]
    pub fn revocation_write_delay(mut self, max: Duration) -> Self {
        self.write_delay = Some(max);
        self
    }

    /// Builds the provider. Unless [`AwsConfig::role_chaining`] says, this
    /// calls `sts:GetCallerIdentity` once to learn whether the broker's own
    /// identity is an assumed role.
    pub async fn build(self) -> jit_core::Result<AwsProvider> {
        let name = self.config.name.clone();
        self.build_inner()
            .await
            .map_err(|e| e.into_core(&name, "configure"))
    }

    async fn build_inner(self) -> Result<AwsProvider, AwsError> {
        self.config.check()?;
        // Clients given as they are: their credentials are theirs to refresh.
        let (given, static_credentials) = match self.clients {
            Some(c) => (c, false),
            None => {
                let sdk = match self.sdk {
                    Some(s) => s,
                    None => client::load_sdk_config(&self.config).await,
                };
                let fixed = client::has_static_credentials(&sdk).await;
                (
                    clients_for(&sdk, self.config.endpoint_url.as_deref()),
                    fixed,
                )
            }
        };
        // Every call bounded, so a stalled one cannot hold a role's lock.
        let clients = given.with_call_timeout(self.config.call_timeout);
        let (chaining, account) = match (self.config.role_chaining, &self.config.account_id) {
            (Some(c), Some(a)) => (c, a.clone()),
            (configured, account_id) => {
                let (arn, account) = client::caller_identity(&clients).await?;
                let chaining = configured.unwrap_or_else(|| is_role_chaining_arn(&arn));
                tracing::info!(caller = %arn, chaining, "aws provider identity");
                (chaining, account_id.clone().unwrap_or(account))
            }
        };
        let holder = jit_core::lease::holder_id(&format!("aws-{}", self.config.name));
        let management = self
            .config
            .management_roles
            .iter()
            .filter(|(a, _)| **a != account)
            .map(|(a, arn)| (a.clone(), clients.for_management_role(arn)))
            .collect();
        Ok(AwsProvider {
            config: self.config,
            clients,
            management,
            account,
            static_credentials,
            clock: self.clock.clone(),
            chaining,
            roles: Mutex::new(HashMap::new()),
            ledger: Ledger::new(LEDGER_RETENTION),
            revocations: Revocations {
                lease: self.lease_store.map(|store| LeaseConfig {
                    store,
                    clock: self.clock.clone(),
                    holder: holder.clone(),
                    options: self.lease_options,
                }),
                #[cfg(feature = "testing")]
                write_delay: self.write_delay,
                ..Revocations::default()
            },
        })
    }
}

fn clients_for(sdk: &SdkConfig, endpoint: Option<&str>) -> AwsClients {
    match endpoint {
        None => AwsClients::from_sdk_config(sdk),
        Some(url) => AwsClients {
            sts: aws_sdk_sts::Client::from_conf(
                aws_sdk_sts::config::Builder::from(sdk)
                    .endpoint_url(url)
                    .build(),
            ),
            iam: aws_sdk_iam::Client::from_conf(
                aws_sdk_iam::config::Builder::from(sdk)
                    .endpoint_url(url)
                    .build(),
            ),
        },
    }
}

/// Whether a caller ARN is an assumed-role session (`arn:aws:sts::1:assumed-role/R/s`).
pub fn is_assumed_role_arn(arn: &str) -> bool {
    arn.split(':')
        .nth(5)
        .is_some_and(|r| r.starts_with("assumed-role/"))
}

/// Whether sessions minted by this caller are chained (capped at one hour):
/// an assumed-role session, except an EC2 instance profile's (its session
/// name is the instance id, `i-` and 8 or 17 hex digits), which AWS does not
/// count as role chaining.
pub fn is_role_chaining_arn(arn: &str) -> bool {
    if !is_assumed_role_arn(arn) {
        return false;
    }
    let session = arn.rsplit('/').next().unwrap_or_default();
    let instance = session.strip_prefix("i-").is_some_and(|h| {
        (h.len() == 8 || h.len() == 17) && h.bytes().all(|b| b.is_ascii_hexdigit())
    });
    !instance
}

#[derive(Debug, Clone)]
struct CachedRole {
    info: RoleInfo,
    fetched_at: DateTime<Utc>,
}

/// Everything checked locally before the first call.
struct Plan {
    target: AwsTarget,
    session_name: String,
    source_identity: Option<String>,
    tags: Vec<session::SessionTag>,
    /// Seconds to ask for, before the role's maximum is applied.
    duration_secs: u32,
}

/// AWS STS provider. See the [module docs](self).
pub struct AwsProvider {
    config: AwsConfig,
    clients: AwsClients,
    /// Per other account: clients whose IAM calls use its management role.
    management: HashMap<String, AwsClients>,
    /// The broker's own account, where `clients` act.
    account: String,
    /// Whether the broker signs with static keys (an expired token is final).
    static_credentials: bool,
    clock: Arc<dyn Clock>,
    chaining: bool,
    roles: Mutex<HashMap<String, CachedRole>>,
    ledger: Ledger<IssuedGrant>,
    revocations: Revocations,
}

impl fmt::Debug for AwsProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsProvider")
            .field("name", &self.config.name)
            .field("account", &self.account)
            .field("role_chaining", &self.chaining)
            .field("max_duration", &format_duration(self.max_duration()))
            .field("revocation_policy", &self.config.revocation_policy_name)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain maps: a panic elsewhere cannot leave them half-updated.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl AwsProvider {
    /// A builder; the standard `aws-config` chain is loaded at `build` unless
    /// an SDK configuration or clients are given.
    pub fn builder(config: AwsConfig) -> AwsProviderBuilder {
        AwsProviderBuilder {
            config,
            sdk: None,
            clients: None,
            clock: Arc::new(SystemClock),
            lease_store: None,
            lease_options: LeaseOptions::default(),
            #[cfg(feature = "testing")]
            write_delay: None,
        }
    }

    /// [`AwsConfig::from_env`] and the standard chain.
    pub async fn from_env() -> jit_core::Result<Self> {
        Self::builder(AwsConfig::from_env()?).build().await
    }

    /// The configuration.
    pub fn config(&self) -> &AwsConfig {
        &self.config
    }

    /// Whether sessions are chained (the broker's identity is an assumed role).
    pub fn role_chaining(&self) -> bool {
        self.chaining
    }

    /// The STS and IAM clients (for the output adapters and tests).
    pub fn clients(&self) -> &AwsClients {
        &self.clients
    }

    fn max_duration(&self) -> Duration {
        if self.chaining {
            self.config.max_duration.min(ROLE_CHAINING_MAX)
        } else {
            self.config.max_duration
        }
    }

    fn err(&self, operation: &'static str) -> impl Fn(AwsError) -> jit_core::Error + '_ {
        move |e| {
            e.final_if_static(self.static_credentials)
                .into_core(&self.config.name, operation)
        }
    }

    /// The broker's own account (configured or detected).
    pub fn account(&self) -> &str {
        &self.account
    }

    /// The clients whose IAM calls act in the role's own account: the
    /// broker's, or those of that account's management role. IAM's role APIs
    /// take a bare role name and act in the caller's account, so any other
    /// choice would read or write a same-named role elsewhere.
    fn iam_for(&self, role: &RoleArn) -> Result<&AwsClients, AwsError> {
        if role.account() == self.account {
            return Ok(&self.clients);
        }
        self.management
            .get(role.account())
            .ok_or_else(|| AwsError::ForeignAccount {
                role: role.to_string(),
                account: role.account().to_string(),
                own: self.account.clone(),
            })
    }

    /// Forgets a role's cached facts (they may be stale).
    fn forget_role(&self, role: &RoleArn) {
        lock(&self.roles).remove(role.as_str());
    }

    /// The local checks, in the documented order. No remote call.
    fn plan(&self, spec: &GrantSpec) -> Result<Plan, AwsError> {
        let target = AwsTarget::parse(&spec.entitlement.id, &spec.entitlement.target)?;
        let now = self.clock.now();
        // STS counts `DurationSeconds` from the call: the session must fit in
        // what is left of the window, less the call's allowance, and STS's own
        // minimum applies to that (the configured issue margin is for the
        // broker's planning, in `min_duration`).
        let caps = self.capabilities();
        let window = WindowRules::new(&self.config.name, &caps)
            .start_slack(START_SLACK)
            .call_allowance(CALL_ALLOWANCE.to_std().unwrap_or_default())
            .minimum(STS_MIN_DURATION)
            .limit_note(if self.chaining {
                " (role chaining: the broker's identity is an assumed role)"
            } else {
                ""
            })
            .minimum_note(" (STS's minimum, counted from the AssumeRole call)")
            .check(spec, now)?;
        let duration_secs = u32::try_from(window.remaining.as_secs()).unwrap_or(u32::MAX);

        let session_name = session::session_name(spec)?;
        let source_identity = self
            .config
            .source_identity
            .then(|| session::source_identity(spec.subject.id.as_str()));
        if let Some(si) = &source_identity {
            if !session::is_valid_name(si) {
                return Err(AwsError::Unrevocable(format!(
                    "derived SourceIdentity `{}` is not valid",
                    printable(si)
                )));
            }
        }
        let tags = if self.config.session_tags {
            session::session_tags(spec, &target.session_tags)
        } else {
            Vec::new()
        };
        session::check_tags(&tags).map_err(|message| AwsError::Target {
            entitlement: spec.entitlement.id.clone(),
            field: "target.session_tags".into(),
            message,
        })?;
        Ok(Plan {
            target,
            session_name,
            source_identity,
            tags,
            duration_secs,
        })
    }

    /// The role's id and maximum session, from the cache or `iam:GetRole`.
    async fn role_info(&self, role: &RoleArn) -> Result<RoleInfo, AwsError> {
        let now = self.clock.now();
        let ttl = TimeDelta::seconds(self.config.role_cache_ttl.as_secs() as i64);
        if let Some(c) = lock(&self.roles).get(role.as_str()) {
            if now - c.fetched_at < ttl {
                return Ok(c.info.clone());
            }
        }
        self.fetch_role(role).await
    }

    /// `iam:GetRole` in the role's own account, refreshing the cache.
    async fn fetch_role(&self, role: &RoleArn) -> Result<RoleInfo, AwsError> {
        let now = self.clock.now();
        let info = match client::get_role(self.iam_for(role)?, role.name()).await {
            Ok(i) => i,
            Err(e) if e.is_no_such_entity() => {
                return Err(AwsError::RoleNotFound(role.to_string()))
            }
            Err(e) => return Err(e),
        };
        lock(&self.roles).insert(
            role.as_str().to_string(),
            CachedRole {
                info: info.clone(),
                fetched_at: now,
            },
        );
        Ok(info)
    }

    async fn issue_inner(&self, spec: &GrantSpec) -> Result<Issued, AwsError> {
        let plan = self.plan(spec)?;
        // Refuse before minting what could not be revoked in the right account.
        self.iam_for(&plan.target.role)?;
        let role = self.role_info(&plan.target.role).await?;
        let mut role_max = role.max_session_secs;
        if self.chaining {
            role_max = role_max.min(ROLE_CHAINING_MAX.as_secs() as u32);
        }
        let mut duration_secs = plan.duration_secs;
        let mut clamped = false;
        if duration_secs > role_max {
            match self.config.over_role_max {
                OverRoleMax::Clamp => {
                    duration_secs = role_max;
                    clamped = true;
                }
                OverRoleMax::Refuse => {
                    return Err(RequestError::DurationTooLong {
                        requested: format_duration(Duration::from_secs(duration_secs.into())),
                        limit: format!(
                            "{} (MaxSessionDuration of role `{}`)",
                            format_duration(Duration::from_secs(role_max.into())),
                            plan.target.role
                        ),
                    }
                    .into())
                }
            }
        }
        let session = client::assume_role(
            &self.clients,
            &AssumeRoleInput {
                role_arn: plan.target.role.as_str(),
                session_name: &plan.session_name,
                duration_secs,
                source_identity: plan.source_identity.as_deref(),
                tags: &plan.tags,
                policy: plan.target.session_policy.as_deref(),
                policy_arns: &plan.target.policy_arns,
                external_id: plan.target.external_id.as_deref(),
            },
        )
        .await
        .inspect_err(|e| {
            // The role changed under the cache (a lowered MaxSessionDuration):
            // read it again next time instead of failing until the TTL ends.
            if e.is_validation_error() {
                self.forget_role(&plan.target.role);
            }
        })?;
        // `AssumedRoleId` is exactly the session's `aws:userid`; its role id
        // half is the truth, whatever the cache said (a role deleted and
        // recreated under the same name has a new id).
        let role_id = match session.assumed_role_id.split_once(':') {
            Some((id, name)) if name == plan.session_name && !id.is_empty() => id.to_string(),
            _ => {
                tracing::warn!(role = %plan.target.role, assumed_role_id = %printable(&session.assumed_role_id), "AssumedRoleId is not `ROLE_ID:session-name`");
                role.role_id.clone()
            }
        };
        if role_id != role.role_id {
            tracing::info!(role = %plan.target.role, cached = %role.role_id, actual = %role_id, "role id changed (role recreated); cache dropped");
            self.forget_role(&plan.target.role);
        }
        let issued = IssuedGrant {
            provider: self.config.name.clone(),
            external_id: plan.session_name.clone(),
            expires_at: session.expiration,
            details: json!({
                "role_arn": plan.target.role.as_str(),
                "role_id": role_id,
                "session_name": plan.session_name,
                "assumed_role_arn": session.assumed_role_arn,
                "assumed_role_id": session.assumed_role_id,
                "access_key_id": session.access_key_id,
                "source_identity": plan.source_identity,
                "duration_secs": duration_secs,
                "clamped_to_role_max": clamped,
                "role_chaining": self.chaining,
            }),
        };
        if clamped {
            tracing::info!(grant = %spec.grant_id, role = %plan.target.role, duration_secs, "window clamped to the role's MaxSessionDuration");
        }
        tracing::debug!(
            provider = %self.config.name,
            grant = %spec.grant_id,
            session = %plan.session_name,
            access_key_id = %session.access_key_id,
            expires_at = %session.expiration,
            "aws session issued"
        );
        self.ledger
            .update(spec.grant_id, self.clock.now(), |prev| match prev {
                // A repeated issue: remember the latest expiry of either session.
                Some(prev) if prev.expires_at > issued.expires_at => {
                    let mut g = issued.clone();
                    g.expires_at = prev.expires_at;
                    (g, prev.expires_at)
                }
                _ => (issued.clone(), issued.expires_at),
            });
        Ok(Issued {
            grant: issued,
            credentials: Credentials::Aws {
                access_key_id: session.access_key_id,
                secret_access_key: session.secret_access_key,
                session_token: session.session_token,
                expires_at: session.expiration,
            },
        })
    }

    /// A revocable record for a spec, built from the derived session name and
    /// the target's role alone (no remote call). Use it to deny a session an
    /// interrupted process may have minted: revoking it works whether or not
    /// the session exists. Its `expires_at` is the window's end.
    pub fn reconstruct(&self, spec: &GrantSpec) -> jit_core::Result<IssuedGrant> {
        let err = self.err("find");
        let target =
            AwsTarget::parse(&spec.entitlement.id, &spec.entitlement.target).map_err(&err)?;
        let session_name = session::session_name(spec).map_err(&err)?;
        Ok(IssuedGrant {
            provider: self.config.name.clone(),
            external_id: session_name.clone(),
            expires_at: spec.ends_at,
            details: json!({
                "role_arn": target.role.as_str(),
                "session_name": session_name,
                "reconstructed": true,
            }),
        })
    }

    /// Revokes one grant's session. With `fall_back`, a full per-grant deny
    /// list makes it deny every session of the role issued before now
    /// instead, and the collateral is returned; without, that is an error.
    async fn revoke_inner(
        &self,
        issued: &IssuedGrant,
        fall_back: bool,
    ) -> Result<Option<Collateral>, AwsError> {
        let session_name = issued.external_id.as_str();
        let grant = naming::grant_id_from_name(session_name)
            .filter(|_| session::is_valid_name(session_name));
        let Some(grant) = grant else {
            return Err(AwsError::Unrevocable(format!(
                "`{}` is not a session name jit-aws derives (`jit-<32 hex>`)",
                printable(session_name)
            )));
        };
        let recorded = self.ledger.get(grant);
        let detail = |k: &str| {
            issued
                .details
                .get(k)
                .and_then(|v| v.as_str())
                .or_else(|| {
                    recorded
                        .as_ref()
                        .and_then(|r| r.details.get(k))
                        .and_then(|v| v.as_str())
                })
                .map(str::to_string)
        };
        let Some(role_text) = detail("role_arn") else {
            // Nothing minted by this process under that name, and no role on
            // record: a record that never reached `issue` (the broker keeps
            // the details of everything it issued), so nothing exists to deny.
            tracing::warn!(provider = %self.config.name, session = session_name, "revoke: no role recorded for this session; nothing was issued under it");
            return Ok(None);
        };
        let role = RoleArn::parse(&role_text)
            .map_err(|m| AwsError::Unrevocable(format!("recorded `role_arn` is invalid: {m}")))?;
        let expires_at = recorded
            .as_ref()
            .map_or(issued.expires_at, |r| r.expires_at.max(issued.expires_at));
        let now = self.clock.now();
        if expires_at + TimeDelta::seconds(PRUNE_MARGIN.as_secs() as i64) < now {
            tracing::debug!(
                session = session_name,
                "revoke: session already expired at aws"
            );
            return Ok(None);
        }
        let iam = self.iam_for(&role)?;
        // The deny value: `AssumedRoleId` as STS returned it is exactly the
        // session's `aws:userid`. Only a record without it (rebuilt from the
        // spec) needs the role id, read fresh: a cached id may belong to a
        // role since deleted and recreated under the same name.
        let userid = match detail("assumed_role_id")
            .filter(|id| id.split_once(':').is_some_and(|(_, n)| n == session_name))
        {
            Some(id) => id,
            None => match self.fetch_role(&role).await {
                Ok(info) => format!("{}:{session_name}", info.role_id),
                Err(AwsError::RoleNotFound(_)) => {
                    // A deleted role's sessions cannot be used any more.
                    tracing::info!(role = %role, "revoke: role no longer exists");
                    return Ok(None);
                }
                Err(e) => return Err(e),
            },
        };
        let target = Target {
            clients: iam,
            role_arn: role.as_str(),
            role_name: role.name(),
            policy_name: &self.config.revocation_policy_name,
            limit: self.config.revocation_policy_limit,
        };
        let applied = match self
            .revocations
            .apply(&target, &Change::Session { userid, expires_at }, now)
            .await
        {
            Ok(applied) => applied,
            Err(full @ AwsError::RevocationPolicyFull { .. }) if fall_back => {
                // Never lose a revocation: deny every session of the role
                // issued until now (room for this statement is always
                // reserved) and report what else that cut off.
                let cutoff = role_wide_cutoff(now);
                tracing::warn!(provider = %self.config.name, session = session_name, role = %role, %cutoff, error = %full, "per-grant revocation room exhausted; falling back to a role-wide deny");
                let applied = self
                    .revocations
                    .apply(&target, &Change::OlderThan(cutoff), now)
                    .await?;
                if !applied {
                    tracing::info!(role = %role, "revoke: role no longer exists");
                    return Ok(None);
                }
                return Ok(Some(Collateral::new(
                    role.as_str(),
                    cutoff,
                    full.to_string(),
                )));
            }
            Err(e) => return Err(e),
        };
        if !applied {
            tracing::info!(role = %role, "revoke: role no longer exists");
        }
        tracing::debug!(provider = %self.config.name, session = session_name, role = %role, "aws session revoked");
        Ok(None)
    }

    /// Denies every session of the role issued before now: AWS's "revoke
    /// active sessions" (a `DateLessThan aws:TokenIssueTime` deny in the
    /// revocation policy). An explicit admin operation, never called by the
    /// broker: it also ends sessions of other grants and of anyone else using
    /// the role. New sessions are not affected. Returns the cutoff.
    pub async fn revoke_all_sessions(&self, role: &RoleArn) -> jit_core::Result<DateTime<Utc>> {
        let now = self.clock.now();
        let cutoff = role_wide_cutoff(now);
        let applied = self
            .revocations
            .apply(
                &Target {
                    clients: self.iam_for(role).map_err(self.err("revoke"))?,
                    role_arn: role.as_str(),
                    role_name: role.name(),
                    policy_name: &self.config.revocation_policy_name,
                    limit: self.config.revocation_policy_limit,
                },
                &Change::OlderThan(cutoff),
                now,
            )
            .await
            .map_err(self.err("revoke"))?;
        if !applied {
            return Err(
                AwsError::RoleNotFound(role.to_string()).into_core(&self.config.name, "revoke")
            );
        }
        tracing::warn!(provider = %self.config.name, role = %role, %cutoff, "all sessions of the role issued before the cutoff are denied");
        Ok(cutoff)
    }
}

/// The cutoff of a role-wide deny made now: whole seconds, rounded up
/// (`aws:TokenIssueTime` has second precision).
fn role_wide_cutoff(now: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(now.timestamp() + 1, 0).unwrap_or(now)
}

/// When STS issued a recorded session: its `Expiration` less its
/// `DurationSeconds`, both as STS answered (not our clock).
fn session_issued_at(issued: &IssuedGrant) -> Option<DateTime<Utc>> {
    let secs = issued.details.get("duration_secs")?.as_i64()?;
    Some(issued.expires_at - TimeDelta::seconds(secs))
}

#[async_trait]
impl Provider for AwsProvider {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
            .with_native_expiry(true)
            .with_max_duration(self.max_duration())
            .with_min_duration(self.config.min_window())
            .with_revocation(RevocationKind::DenyPolicy {
                propagation: self.config.propagation,
            })
            // The deny names the session, which derives from the grant.
            .with_revoke_by_name(true)
    }

    fn validate(&self, entitlement: &Entitlement) -> jit_core::Result<()> {
        let err = self.err("validate");
        let target = AwsTarget::parse(&entitlement.id, &entitlement.target).map_err(&err)?;
        let role = &target.role;
        let role_field = |message: String| AwsError::Target {
            entitlement: entitlement.id.clone(),
            field: "target.role_arn".into(),
            message,
        };
        if let Err(e) = self.iam_for(role) {
            return Err(err(role_field(e.to_string())));
        }
        if let Some(region) = self.clients.sts.config().region() {
            let expected = partition_of_region(region.as_ref());
            if role.partition() != expected {
                return Err(err(role_field(format!(
                    "role `{role}` is in partition `{}`, but provider `{}` calls STS in region `{region}` of partition `{expected}`",
                    role.partition(),
                    self.config.name
                ))));
            }
        }
        let min = self.config.min_window();
        if entitlement.max_duration.get() < min {
            return Err(err(AwsError::Target {
                entitlement: entitlement.id.clone(),
                field: "max_duration".into(),
                message: format!(
                    "`{}` is below the shortest window provider `{}` can mint ({})",
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
        self.revoke_inner(issued, false)
            .await
            .map(|_| ())
            .map_err(self.err("revoke"))
    }

    async fn revoke_reporting(&self, issued: &IssuedGrant) -> jit_core::Result<RevokeOutcome> {
        match self.revoke_inner(issued, true).await {
            Ok(Some(collateral)) => Ok(RevokeOutcome::with_collateral(collateral)),
            Ok(None) => Ok(RevokeOutcome::exact()),
            Err(e) => Err(self.err("revoke")(e)),
        }
    }

    fn cut_off_by(&self, collateral: &Collateral, issued: &IssuedGrant) -> bool {
        // Certain only when the session's own issue time (as STS reported
        // it) is before the cutoff by more than the clock allowance.
        issued.provider == self.config.name
            && issued.details.get("role_arn").and_then(|v| v.as_str())
                == Some(collateral.scope.as_str())
            && session_issued_at(issued)
                .is_some_and(|at| at + CALL_ALLOWANCE < collateral.issued_before)
    }

    async fn find(&self, spec: &GrantSpec) -> jit_core::Result<Option<IssuedGrant>> {
        Ok(self.ledger.get(spec.grant_id))
    }

    /// [`AwsProvider::reconstruct`]: revoking it denies the derived session
    /// name on the role, whether or not a session exists.
    async fn record_by_name(&self, spec: &GrantSpec) -> jit_core::Result<IssuedGrant> {
        self.reconstruct(spec)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn assumed_role_arns_are_recognised() {
        assert!(is_assumed_role_arn(
            "arn:aws:sts::123456789012:assumed-role/R/s"
        ));
        assert!(!is_assumed_role_arn("arn:aws:iam::123456789012:user/u"));
        assert!(!is_assumed_role_arn("arn:aws:iam::123456789012:root"));
        assert!(!is_assumed_role_arn("garbage"));
    }

    // Regression (issue 10 item 4): a broker on an EC2 instance profile was
    // capped at one hour as if its sessions were chained.
    #[test]
    fn an_ec2_instance_profile_is_not_role_chaining() {
        assert!(is_role_chaining_arn(
            "arn:aws:sts::123456789012:assumed-role/Broker/deploy-bot"
        ));
        assert!(!is_role_chaining_arn(
            "arn:aws:sts::123456789012:assumed-role/Ec2Broker/i-0123456789abcdef0"
        ));
        assert!(!is_role_chaining_arn(
            "arn:aws:sts::123456789012:assumed-role/Ec2Broker/i-0123abcd"
        ));
        assert!(is_role_chaining_arn(
            "arn:aws:sts::123456789012:assumed-role/R/i-not-an-instance"
        ));
        assert!(!is_role_chaining_arn("arn:aws:iam::123456789012:user/u"));
    }

    #[test]
    fn regions_map_to_partitions() {
        assert_eq!(partition_of_region("eu-west-1"), "aws");
        assert_eq!(partition_of_region("cn-north-1"), "aws-cn");
        assert_eq!(partition_of_region("us-gov-west-1"), "aws-us-gov");
    }

    #[test]
    fn grant_ids_from_session_names() {
        let id = jit_core::GrantId::new();
        let name = jit_core::provider::external_name(id);
        assert!(session::is_valid_name(&name));
        assert_eq!(naming::grant_id_from_name(&name), Some(id));
        assert_eq!(naming::grant_id_from_name("jit-xyz"), None);
    }
}
