//! Providers: the trait a cloud (or the local token issuer) implements,
//! and the kit every provider builds on.
//!
//! The contract is in the [`Provider`] docs. What every provider needs
//! beyond it lives here once, so that jit-aws, jit-azure, jit-gcp and the
//! local provider do not each grow their own copy:
//!
//! | module | what |
//! | --- | --- |
//! | [`capabilities`] | [`Capabilities`] and [`RevocationKind`]: what a provider can do, as data |
//! | [`window`] | the window checks against the capabilities, before any call |
//! | [`naming`] | grant id ↔ provider-side names, both ways (`jit-<hex>`, derived GUIDs) |
//! | [`ledger`] | the in-process ledger of what was issued (idempotency, `find`) |
//! | [`retry`] | backoff with jitter and bounded retries (read-modify-write, throttling) |
//! | [`http`] | an HTTP status and `Retry-After` to jit-core's error kinds |
//! | [`registry`] | providers built from configuration: a factory per kind, fed a string map |
//! | [`text`] | a cloud's message or a user's input made fit for an error (bounded, no control characters) |
//!
//! Test scaffolding for providers (the conformance suite, a tripwire
//! endpoint, a local HTTP fake harness) is in `jit_core::testing` (feature
//! `testing`).
//!
//! The local provider ([`crate::local`]) stays in jit-core, as object_store
//! keeps `local` and `memory` in its core crate: it is the embedded default
//! that needs no cloud, and its verifier and tower layer are what services
//! in the same binary use. It goes through this kit like any other
//! provider (window rules, names, ledger) and has a registry factory.

pub mod capabilities;
pub mod http;
pub mod ledger;
pub mod naming;
pub mod registry;
pub mod retry;
pub mod text;
pub mod window;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use capabilities::{Capabilities, RevocationKind};
pub use naming::external_name;

use crate::credentials::Credentials;
use crate::error::{RequestError, Result};
use crate::types::{Entitlement, GrantDuration, GrantId, IssuedGrant, Principal, RequestId};

/// Everything a provider needs to mint one grant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrantSpec {
    /// The grant; provider-side names derive from it.
    pub grant_id: GrantId,
    /// The request it belongs to.
    pub request_id: RequestId,
    /// Who gets the access.
    pub subject: Principal,
    /// The entitlement (with its provider-specific target).
    pub entitlement: Entitlement,
    /// Window start.
    pub starts_at: DateTime<Utc>,
    /// Window end requested by the broker; the provider may return an earlier one.
    pub ends_at: DateTime<Utc>,
    /// Justification, for providers that record it (Azure PIM).
    pub justification: String,
    /// Ticket reference, for providers that record it.
    pub ticket: Option<String>,
}

impl GrantSpec {
    /// The deterministic provider-side name for this grant: `jit-<grant uuid simple>`.
    /// 36 characters, within every provider's charset and length limits.
    pub fn external_name(&self) -> String {
        external_name(self.grant_id)
    }

    /// The requested window length, in the type the request's duration has
    /// had all along ([`GrantDuration`], already clamped by the broker to
    /// `min(requested, entitlement max, policy max, provider max)`). An
    /// empty or reversed window, or one longer than any grant may be, is
    /// the typed error a provider refuses it with.
    pub fn duration(&self) -> std::result::Result<GrantDuration, RequestError> {
        GrantDuration::from_chrono(self.ends_at - self.starts_at)
    }
}

/// The result of a successful issue.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Non-secret record, stored with the grant.
    pub grant: IssuedGrant,
    /// What the requester receives.
    pub credentials: Credentials,
}

/// A coarse revocation that also cut off other sessions: every session of
/// `scope` issued before `issued_before` (AWS's role-wide
/// `aws:TokenIssueTime` deny). The broker records each other grant it cut
/// off as revoked (see [`Provider::revoke_reporting`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Collateral {
    /// What was revoked as a whole, in the provider's own terms (a role ARN).
    pub scope: String,
    /// Sessions of `scope` issued before this instant no longer work.
    pub issued_before: DateTime<Utc>,
    /// Why the revocation could not stay per grant, for the audit trail.
    pub cause: String,
}

impl Collateral {
    /// Every session of `scope` issued before `issued_before` was cut off, because of `cause`.
    pub fn new(
        scope: impl Into<String>,
        issued_before: DateTime<Utc>,
        cause: impl Into<String>,
    ) -> Self {
        Self {
            scope: scope.into(),
            issued_before,
            cause: cause.into(),
        }
    }
}

/// What a successful [`Provider::revoke_reporting`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RevokeOutcome {
    /// Set when the revocation also cut off other grants' sessions.
    pub collateral: Option<Collateral>,
}

impl RevokeOutcome {
    /// Only the grant asked for was revoked.
    pub fn exact() -> Self {
        Self::default()
    }

    /// The grant was revoked together with everything `collateral` names.
    pub fn with_collateral(collateral: Collateral) -> Self {
        Self {
            collateral: Some(collateral),
        }
    }
}

/// One thing [`Provider::tidy`] removed at the provider: what an ended
/// grant left behind (an expired GCP conditional binding). Non-secret; the
/// broker writes it into the grant's audit trail as
/// [`AuditKind::Tidied`](crate::audit::AuditKind::Tidied).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Tidied {
    /// Where it was removed from, in the provider's own terms (a project).
    pub resource: String,
    /// The provider-side name of what was removed (a condition title `jit-<grant>`).
    pub external_id: String,
    /// The grant it belonged to, when its name says so.
    pub grant_id: Option<GrantId>,
    /// The request of that grant, when the provider recorded it at the
    /// cloud. The broker checks it against its store (the record must hold
    /// `grant_id`) before writing the audit record there; the cloud's copy
    /// is not trusted on its own.
    pub request_id: Option<RequestId>,
    /// Non-secret details for the audit record (role, member, end).
    pub details: serde_json::Value,
}

impl Tidied {
    /// `external_id` was removed from `resource`.
    pub fn new(resource: impl Into<String>, external_id: impl Into<String>) -> Self {
        Self {
            resource: resource.into(),
            external_id: external_id.into(),
            grant_id: None,
            request_id: None,
            details: serde_json::Value::Null,
        }
    }

    /// The grant and request it belonged to.
    pub fn of_grant(mut self, grant: Option<GrantId>, request: Option<RequestId>) -> Self {
        self.grant_id = grant;
        self.request_id = request;
        self
    }

    /// Non-secret details for the audit record.
    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }
}

/// What one [`Provider::tidy`] call did.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct TidyReport {
    /// What was removed (already gone at the provider when this is returned).
    pub removed: Vec<Tidied>,
    /// Parts of the work that failed (one resource's policy could not be
    /// read, say); the rest was still done. The broker logs and counts them.
    pub errors: Vec<crate::Error>,
}

impl TidyReport {
    /// What was removed and what failed.
    pub fn new(removed: Vec<Tidied>, errors: Vec<crate::Error>) -> Self {
        Self { removed, errors }
    }
}

/// A cloud (or local) access issuer. Object safe: use it as `Arc<dyn Provider>`.
///
/// # Contract
///
/// Every implementation (and every wrapper, which must forward every
/// method, the provided ones too) keeps these promises; the conformance
/// suite in `jit_core::testing::provider` checks them against what
/// [`Provider::capabilities`] claims.
///
/// - **Limits before calls.** [`Provider::validate`] checks an
///   entitlement's target when the catalogue loads, with no remote call.
///   [`Provider::issue`] refuses a spec it cannot honour (a window outside
///   [`Capabilities::min_duration`]..=[`Capabilities::max_duration`], a
///   malformed target or subject) with a typed error before any remote
///   call ([`window::WindowRules`] does the window part for everyone).
/// - **Idempotent by grant id.** `issue` called twice with the same
///   [`GrantSpec::grant_id`] (a retry, a reconciliation after a crash)
///   never mints two accesses the broker cannot find again: every
///   provider-side name derives from the grant id ([`naming`]), so
///   [`Provider::find`] locates what an interrupted `issue` left behind,
///   and a second `issue` finds or replaces the first's object instead of
///   adding one.
/// - **The returned expiry is the truth.** [`IssuedGrant::expires_at`] is
///   what the provider itself will enforce (the cloud's answer, not the
///   requested end) and is never later than [`GrantSpec::ends_at`].
/// - **Native expiry.** When [`Capabilities::native_expiry`] is true the
///   access stops working at the provider at `expires_at` even if the
///   broker is gone. Otherwise the broker's reaper revokes it at the end.
/// - **`revoke` is idempotent and honest.** Revoking something already
///   revoked, expired or never minted succeeds. `Ok` means the access no
///   longer works, or will not within [`RevocationKind::delay`]. An error
///   means it may still work: the broker retries with backoff and shows
///   `RevocationFailed` until it succeeds. A revocation that cuts off more
///   than the grant goes through [`Provider::revoke_reporting`], never
///   silently through `revoke`.
/// - **Transient errors are marked.** Throttling and unreachable endpoints
///   are [`Error::Throttled`](crate::Error::Throttled) (with the cloud's
///   wait, see [`http`]) and [`Error::Unavailable`](crate::Error::Unavailable),
///   so the broker can tell "try later" from "refused".
/// - **No secrets in errors, logs or records.** Errors, log fields and
///   [`IssuedGrant`] never carry secret values; only [`Issued::credentials`]
///   does, in redacting types.
/// - **Housekeeping is bounded, exact and reported.** A provider whose
///   ended grants leave something behind at the cloud that still counts
///   against a limit (GCP's expired conditional bindings) says
///   [`Capabilities::tidy`] and implements [`Provider::tidy`]: each call
///   does at most `budget` units of remote work, removes only what ended
///   grants left (never anything live, never anything it did not create),
///   and returns every removal, which the broker audits. A part that fails
///   is reported in [`TidyReport::errors`]; the rest is still done.
#[async_trait]
pub trait Provider: Send + Sync + std::fmt::Debug {
    /// The name entitlements use to select this provider (`local`, `aws`, ...).
    fn name(&self) -> &str;

    /// What this provider can do.
    fn capabilities(&self) -> Capabilities;

    /// Checks an entitlement's target when the catalogue loads. No remote calls needed.
    fn validate(&self, entitlement: &Entitlement) -> Result<()>;

    /// Mints the access. Idempotent by grant id (see the module contract).
    async fn issue(&self, spec: &GrantSpec) -> Result<Issued>;

    /// Takes the access away. Idempotent; an error means it may still work.
    async fn revoke(&self, issued: &IssuedGrant) -> Result<()>;

    /// Takes the access away like [`Provider::revoke`], and may fall back to a
    /// coarser revocation when the exact one cannot be made (AWS: a full
    /// per-grant deny list), reporting what else it cut off. The broker calls
    /// this; it then records every other grant of this provider for which
    /// [`Provider::cut_off_by`] is true as revoked, with its own audit
    /// record. The default calls `revoke` and reports no collateral, so a
    /// provider that can only revoke exactly need not implement it, and
    /// `revoke` itself never cuts off other grants silently (it fails
    /// instead). Wrappers must forward it.
    async fn revoke_reporting(&self, issued: &IssuedGrant) -> Result<RevokeOutcome> {
        self.revoke(issued).await.map(|()| RevokeOutcome::exact())
    }

    /// Whether a coarse revocation this provider reported has cut off this
    /// grant's access for certain. False when in doubt: a grant is never
    /// recorded as revoked unless its access has ended. Wrappers must
    /// forward it.
    fn cut_off_by(&self, collateral: &Collateral, issued: &IssuedGrant) -> bool {
        let _ = (collateral, issued);
        false
    }

    /// Finds what an `issue` for this spec left at the provider, for reconciliation after a crash.
    async fn find(&self, spec: &GrantSpec) -> Result<Option<IssuedGrant>>;

    /// A revocable record for `spec` built from its derived name alone, no
    /// matter whether anything was minted under it; revoking it must take
    /// away whatever an interrupted [`Provider::issue`] for `spec` may have
    /// minted (and succeed if nothing was). The broker calls it only when
    /// [`Capabilities::revoke_by_name`] says so, for an `Issuing` grant
    /// that [`Provider::find`] cannot see after a crash. The default
    /// refuses with [`Error::ProviderRejected`](crate::Error::ProviderRejected).
    /// Wrappers must forward it.
    async fn record_by_name(&self, spec: &GrantSpec) -> Result<IssuedGrant> {
        Err(crate::Error::ProviderRejected {
            provider: self.name().to_string(),
            operation: "revoke by name",
            message: format!(
                "provider `{}` cannot revoke grant `{}` by its derived name",
                self.name(),
                spec.grant_id
            ),
        })
    }

    /// Re-applies early revocations after a start. The broker calls this
    /// once per start ([`crate::Broker::restore_revocations`], the reaper's
    /// first tick) with the grants its store records as revoked whose end
    /// has not passed. A provider whose revocations live at the cloud (a
    /// deny policy, a deleted assignment) keeps this default, which does
    /// nothing; one whose revocation state lives in the process (the local
    /// provider's list) re-adds them, so a restart cannot revive a revoked
    /// token. Must be idempotent. Wrappers must forward it.
    async fn restore_revocations(&self, revoked: &[IssuedGrant]) -> Result<()> {
        let _ = revoked;
        Ok(())
    }

    /// Housekeeping at the provider: removes what ended grants left behind
    /// and still counts against the cloud's limits (GCP: expired `jit-`
    /// conditional bindings, which Google keeps forever). The reaper calls
    /// it on its own, slower cadence ([`crate::Reaper::tidy_every`]) for
    /// providers whose [`Capabilities::tidy`] is true, and writes each
    /// [`Tidied`] into the grant's audit trail
    /// ([`Broker::tidy`](crate::Broker::tidy)). At most `budget` units of
    /// remote work per call (a provider says what a unit is: one policy
    /// read-modify-write for jit-gcp), so one call never stalls a tick;
    /// work left over waits for the next call. Must touch nothing but what
    /// it reports, and nothing a live grant uses. The default has nothing
    /// to do. Wrappers must forward it.
    async fn tidy(&self, budget: usize) -> Result<TidyReport> {
        let _ = budget;
        Ok(TidyReport::default())
    }
}
