//! Building a [`Broker`](super::Broker), and how it retries failed revocations.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::{Broker, CheckpointState, Inner};
use crate::audit::{AuditKeyring, AuditSink};
use crate::clock::{Clock, SystemClock};
use crate::error::{ConfigError, Error, Result};
use crate::policy::Policy;
use crate::provider::retry::Backoff;
use crate::provider::Provider;
use crate::risk::RiskAssessor;
use crate::store::Store;

/// How failed revocations are retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay after the first failure; doubles each time.
    pub base: Duration,
    /// Longest delay between fast attempts.
    pub cap: Duration,
    /// Failed attempts before the grant is shown as `RevocationFailed`.
    pub fast_attempts: u32,
    /// Delay between attempts once `RevocationFailed`.
    pub slow_interval: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(5),
            cap: Duration::from_secs(300),
            fast_attempts: 6,
            slow_interval: Duration::from_secs(900),
        }
    }
}

impl RetryPolicy {
    /// Delay before the next attempt after `attempts` failures: the
    /// [`RetryPolicy::backoff`] schedule (`base` after the first failure,
    /// doubling up to `cap`), then `slow_interval` once `fast_attempts`
    /// have failed.
    pub fn delay(&self, attempts: u32) -> Duration {
        if attempts >= self.fast_attempts {
            return self.slow_interval;
        }
        self.backoff().delay(attempts.saturating_sub(1))
    }

    /// The fast attempts' schedule, the providers' backoff: doubling from
    /// `base` to `cap`, without jitter (each record has its own next
    /// attempt time, and replicas take due records one at a time).
    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.base, self.cap)
    }
}

/// Builds a [`Broker`].
pub struct BrokerBuilder {
    store: Arc<dyn Store>,
    policy: Arc<dyn Policy>,
    providers: HashMap<String, Arc<dyn Provider>>,
    clock: Arc<dyn Clock>,
    sinks: Vec<Arc<dyn AuditSink>>,
    auto_issue: bool,
    retry: RetryPolicy,
    reconcile_grace: Duration,
    replica_id: Option<String>,
    claim_lease: Duration,
    audit_keyring: Option<AuditKeyring>,
    checkpoint_every: u64,
    risk: Option<Arc<dyn RiskAssessor>>,
    risk_timeout: Duration,
    tickets: Option<Arc<dyn crate::ticket::TicketVerifier>>,
    ticket_timeout: Duration,
    on_call: Option<Arc<dyn crate::oncall::OnCallSource>>,
    on_call_timeout: Duration,
    max_pending: usize,
}

impl std::fmt::Debug for BrokerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerBuilder")
            .field("providers", &self.providers.keys().collect::<Vec<_>>())
            .field("auto_issue", &self.auto_issue)
            .finish_non_exhaustive()
    }
}

impl BrokerBuilder {
    /// Starts with a store and a policy; add at least one provider.
    pub fn new(store: Arc<dyn Store>, policy: Arc<dyn Policy>) -> Self {
        Self {
            store,
            policy,
            providers: HashMap::new(),
            clock: Arc::new(SystemClock),
            sinks: Vec::new(),
            auto_issue: true,
            retry: RetryPolicy::default(),
            reconcile_grace: Duration::from_secs(120),
            replica_id: None,
            claim_lease: Duration::from_secs(60),
            audit_keyring: None,
            checkpoint_every: 100,
            risk: None,
            risk_timeout: Duration::from_secs(5),
            tickets: None,
            ticket_timeout: Duration::from_secs(5),
            on_call: None,
            on_call_timeout: Duration::from_secs(5),
            max_pending: 0,
        }
    }

    /// Starts with the store that `url` names ([`crate::store::connect`]):
    /// `memory:`, `sqlite://path/to/jit.db`, `postgres://user@host/db`.
    pub async fn from_store_url(url: &str, policy: Arc<dyn Policy>) -> Result<Self> {
        Ok(Self::new(crate::store::connect(url).await?, policy))
    }

    /// Registers a provider under its [`Provider::name`].
    pub fn provider(mut self, provider: Arc<dyn Provider>) -> Self {
        self.providers.insert(provider.name().to_string(), provider);
        self
    }

    /// Uses this clock (tests move time with [`crate::ManualClock`]).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Copies every audit record to this sink too; a failing sink fails the operation.
    pub fn audit_sink(mut self, sink: Arc<dyn AuditSink>) -> Self {
        self.sinks.push(sink);
        self
    }

    /// Seals every audit record with the keyring's current key and signs
    /// checkpoints with it (see [`crate::audit`]). Keep the key outside the
    /// store: without it, someone who can write the database can rewrite the
    /// chain unseen.
    pub fn audit_keyring(mut self, keyring: AuditKeyring) -> Self {
        self.audit_keyring = Some(keyring);
        self
    }

    /// With an audit keyring, sends a signed checkpoint of the chain's head
    /// to every sink once this broker has appended `records` records since
    /// its last one (default 100; 1 is every commit), besides one on every
    /// reaper tick ([`Broker::checkpoint_audit`]). Records after the latest
    /// checkpoint could be cut off unseen: this bounds that window.
    pub fn checkpoint_every(mut self, records: u64) -> Self {
        self.checkpoint_every = records.max(1);
        self
    }

    /// Reviews every submitted request's risk with `assessor` before the
    /// policy decides ([`crate::risk`]); the policy sees the answer in
    /// [`PolicyContext::risk`](crate::PolicyContext::risk) and the decision
    /// records it.
    pub fn risk_assessor(mut self, assessor: Arc<dyn crate::risk::RiskAssessor>) -> Self {
        self.risk = Some(assessor);
        self
    }

    /// How long a submit waits for the risk assessor (default 5 s); past
    /// it the assessment is unavailable, which exceeds every risk limit.
    pub fn risk_timeout(mut self, timeout: Duration) -> Self {
        self.risk_timeout = timeout;
        self
    }

    /// Verifies the ticket of every submitted request that names one with
    /// `verifier` before the policy decides ([`crate::ticket`]); the policy
    /// sees the verdict in [`PolicyContext::ticket`](crate::PolicyContext::ticket)
    /// and the decision's audit record keeps it.
    pub fn ticket_verifier(mut self, verifier: Arc<dyn crate::ticket::TicketVerifier>) -> Self {
        self.tickets = Some(verifier);
        self
    }

    /// How long a submit waits for the ticket verifier (default 5 s); past
    /// it the ticket is not verified.
    pub fn ticket_timeout(mut self, timeout: Duration) -> Self {
        self.ticket_timeout = timeout;
        self
    }

    /// Asks `source` who is on call before the policy decides, about the
    /// schedules the policy names for the entitlement
    /// ([`Policy::on_call_schedules`](crate::Policy::on_call_schedules));
    /// the policy sees the answer in
    /// [`PolicyContext::on_call`](crate::PolicyContext::on_call) and the
    /// decision's audit record keeps it (see [`crate::oncall`]). When the
    /// source can list its schedules, [`BrokerBuilder::build`] refuses a
    /// policy that names one it does not have.
    pub fn on_call_source(mut self, source: Arc<dyn crate::oncall::OnCallSource>) -> Self {
        self.on_call = Some(source);
        self
    }

    /// How long a submit waits for the on-call source, for all the
    /// schedules it asks about together (default 5 s); a schedule not
    /// answered by then counts as not on call.
    pub fn on_call_timeout(mut self, timeout: Duration) -> Self {
        self.on_call_timeout = timeout;
        self
    }

    /// How many requests waiting for approval one requester may hold
    /// (default 0: no cap). A submit that would wait past it is refused
    /// with [`Error::TooManyPending`] and nothing is stored; one the policy
    /// auto-approves or denies is never refused by it (checked only for a
    /// request that would wait; parallel submits by one requester in one
    /// process cannot race past it).
    pub fn max_pending_per_requester(mut self, max: usize) -> Self {
        self.max_pending = max;
        self
    }

    /// Whether approval issues at once (default true). When false, call [`Broker::issue`].
    pub fn auto_issue(mut self, yes: bool) -> Self {
        self.auto_issue = yes;
        self
    }

    /// How failed revocations are retried.
    pub fn retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// How long an `Issuing` grant may sit before the running reaper treats it as
    /// left by a crash (default 2 minutes; at start all of them are).
    pub fn reconcile_grace(mut self, grace: Duration) -> Self {
        self.reconcile_grace = grace;
        self
    }

    /// Names this broker among the replicas sharing a store: its claims on
    /// due work carry this id (default: random per broker; an empty id also
    /// means random). Give each replica its own; a restarted process may
    /// reuse its id to take back its unfinished claims at once.
    pub fn replica_id(mut self, id: impl Into<String>) -> Self {
        self.replica_id = Some(id.into());
        self
    }

    /// How long claimed reaper work stays with this replica (default 60 s).
    /// Longer than twice the slowest provider call; a replica that dies holds
    /// its claims this long before another replica takes them over.
    pub fn claim_lease(mut self, lease: Duration) -> Self {
        self.claim_lease = lease;
        self
    }

    /// Checks that every entitlement names a registered provider that
    /// accepts its target, and that can revoke early where the policy
    /// requires it ([`Policy::requires_revocation`](crate::Policy::requires_revocation)),
    /// and that the on-call source (when it can list them) has every
    /// schedule the policy names.
    pub fn build(self) -> Result<Broker> {
        let known_schedules = self.on_call.as_ref().and_then(|s| s.schedules());
        for e in self.policy.entitlements() {
            if let Some(known) = &known_schedules {
                if let Some(missing) = self
                    .policy
                    .on_call_schedules(&e)
                    .into_iter()
                    .find(|s| !known.contains(s))
                {
                    return Err(Error::Config(ConfigError::InvalidField {
                        entitlement: e.id.clone(),
                        field: "auto_approve.on_call".into(),
                        message: format!(
                            "the on-call source has no schedule `{missing}`; add it to the rota or fix the name"
                        ),
                    }));
                }
            }
            let p = self.providers.get(&e.provider).ok_or_else(|| {
                Error::Config(ConfigError::UnknownProvider {
                    entitlement: e.id.clone(),
                    provider: e.provider.clone(),
                })
            })?;
            p.validate(&e)?;
            if self.policy.requires_revocation(&e.id) && !p.capabilities().revocation.can_revoke() {
                return Err(Error::Config(ConfigError::InvalidField {
                    entitlement: e.id.clone(),
                    field: "require_revocation".into(),
                    message: format!(
                        "provider `{}` cannot revoke its grants early; point the entitlement at a provider that can, or drop `require_revocation`",
                        e.provider
                    ),
                }));
            }
        }
        Ok(Broker {
            inner: Arc::new(Inner {
                store: self.store,
                policy: self.policy,
                providers: self.providers,
                clock: self.clock.clone(),
                sinks: self.sinks,
                auto_issue: self.auto_issue,
                retry: self.retry,
                reconcile_grace: self.reconcile_grace,
                replica_id: self
                    .replica_id
                    .filter(|id| !id.is_empty())
                    .unwrap_or_else(|| format!("broker-{}", uuid::Uuid::new_v4().simple())),
                claim_lease: self.claim_lease,
                started_at: self.clock.now(),
                skipped: Default::default(),
                audit_keyring: self.audit_keyring,
                checkpoint_every: self.checkpoint_every,
                checkpoints: std::sync::Mutex::new(CheckpointState::default()),
                risk: self.risk,
                risk_timeout: self.risk_timeout,
                tickets: self.tickets,
                ticket_timeout: self.ticket_timeout,
                on_call: self.on_call,
                on_call_timeout: self.on_call_timeout,
                max_pending: self.max_pending,
                pending_slots: Default::default(),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocation_retries_double_to_the_cap_then_slow_down() {
        let p = RetryPolicy {
            base: Duration::from_secs(5),
            cap: Duration::from_secs(30),
            fast_attempts: 6,
            slow_interval: Duration::from_secs(900),
        };
        let delays: Vec<u64> = (0..=7).map(|n| p.delay(n).as_secs()).collect();
        assert_eq!(delays, [5, 5, 10, 20, 30, 30, 900, 900]);
        let many = RetryPolicy {
            fast_attempts: u32::MAX,
            ..p
        };
        assert_eq!(many.delay(u32::MAX - 1), Duration::from_secs(30));
    }

    #[cfg(feature = "testing")]
    #[test]
    fn a_catalogue_can_require_revocability() {
        #![allow(clippy::unwrap_used, clippy::panic)]
        use crate::testing::TestProvider;
        use crate::{CataloguePolicy, MemoryStore, RevocationKind};
        let catalogue = |require: bool| {
            CataloguePolicy::from_toml_str(&format!(
                r#"
                [[entitlements]]
                id = "deploy-token"
                provider = "tokens"
                max_duration = "1h"
                require_revocation = {require}
                [entitlements.eligible]
                groups = ["eng"]
                "#
            ))
            .unwrap()
        };
        let build = |require: bool, kind: RevocationKind| {
            Broker::builder(Arc::new(MemoryStore::new()), Arc::new(catalogue(require)))
                .provider(Arc::new(TestProvider::new("tokens").with_revocation(kind)))
                .build()
        };
        match build(true, RevocationKind::None) {
            Err(Error::Config(ConfigError::InvalidField {
                entitlement,
                field,
                message,
            })) => {
                assert_eq!(entitlement, "deploy-token");
                assert_eq!(field, "require_revocation");
                assert!(message.contains("cannot revoke"), "{message}");
            }
            other => panic!("expected a config error, got {other:?}"),
        }
        // Revocable, or not required: it starts.
        build(true, RevocationKind::Immediate).unwrap();
        build(false, RevocationKind::None).unwrap();
        assert!(!catalogue(false).requires_revocation("deploy-token"));
        assert!(catalogue(true).requires_revocation("deploy-token"));
        assert!(!catalogue(true).requires_revocation("unknown"));
    }
}
