//! An `aws-config` credentials provider backed by the broker: a Rust service
//! builds its own SDK clients with JIT credentials.
//!
//! ```no_run
//! # async fn demo(broker: jit_core::Broker) -> jit_core::Result<()> {
//! use jit_aws::BrokerCredentialsProvider;
//! use jit_core::{AccessRequest, Principal};
//!
//! let me = Principal::new("svc-deploy")?.with_group("deployers");
//! let request = AccessRequest::new("prod-deploy", "1h".parse()?, "nightly deploy");
//! let creds = BrokerCredentialsProvider::new(broker, me, request);
//! let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
//!     .credentials_provider(creds)
//!     .load()
//!     .await;
//! let sts = aws_sdk_sts::Client::new(&sdk); // every call signs with a JIT grant
//! # let _ = sts; Ok(()) }
//! ```
//!
//! # Behaviour
//!
//! - Credentials are cached until [`BrokerCredentialsProvider::refresh_before`]
//!   (default 2 minutes) before their expiry, then a **new request** is
//!   submitted for the same entitlement: every renewal is decided by the
//!   policy and audited like any other request. The expiry handed to the
//!   SDK is that renewal time, so the SDK's own identity cache (which asks
//!   again only seconds before the expiry it is told) renews on time too.
//! - An auto-approved request is issued in the same call. A request that
//!   needs approval is remembered and polled (every
//!   [`BrokerCredentialsProvider::poll_interval`]) for up to
//!   [`BrokerCredentialsProvider::approval_wait`] (default: not at all, the
//!   call fails with "waiting for approval" and the next call polls again).
//!   Once approved, the provider issues it as the requester. With a broker
//!   that auto-issues on approval, the credentials go to the approver's call
//!   instead and this provider cannot obtain them: build such brokers with
//!   `auto_issue(false)`, or use auto-approved entitlements.
//! - Concurrent callers share one refresh (an async mutex), like the SDK's
//!   own lazy cache.
//! - Denials and failures are credential errors carrying the broker's
//!   message, never a secret.

use std::fmt;
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{error::CredentialsError, future, ProvideCredentials};
use chrono::{DateTime, TimeDelta, Utc};
use jit_core::{AccessRequest, Broker, Credentials, IssueOutcome, Principal, RequestId, State};

/// Name reported as the credentials' provider.
pub const PROVIDER_NAME: &str = "jit-broker";

#[derive(Default)]
struct Cache {
    current: Option<(aws_credential_types::Credentials, DateTime<Utc>, RequestId)>,
    pending: Option<RequestId>,
}

/// See the [module docs](self).
pub struct BrokerCredentialsProvider {
    broker: Broker,
    requester: Principal,
    request: AccessRequest,
    refresh_before: Duration,
    approval_wait: Duration,
    poll_interval: Duration,
    cache: tokio::sync::Mutex<Cache>,
}

impl fmt::Debug for BrokerCredentialsProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerCredentialsProvider")
            .field("requester", &self.requester.id)
            .field("entitlement", &self.request.entitlement)
            .field("refresh_before", &self.refresh_before)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Message(String);

fn err(msg: impl Into<String>) -> CredentialsError {
    CredentialsError::provider_error(Message(msg.into()))
}

impl BrokerCredentialsProvider {
    /// Requests `request` as `requester` whenever credentials are needed.
    pub fn new(broker: Broker, requester: Principal, request: AccessRequest) -> Self {
        Self {
            broker,
            requester,
            request,
            refresh_before: Duration::from_secs(120),
            approval_wait: Duration::ZERO,
            poll_interval: Duration::from_secs(2),
            cache: tokio::sync::Mutex::new(Cache::default()),
        }
    }

    /// How long before expiry a new grant is requested (default 2 minutes).
    pub fn refresh_before(mut self, d: Duration) -> Self {
        self.refresh_before = d;
        self
    }

    /// How long one call waits for a pending approval (default zero).
    pub fn approval_wait(mut self, d: Duration) -> Self {
        self.approval_wait = d;
        self
    }

    /// How often a pending request is polled while waiting (default 2 seconds).
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d;
        self
    }

    /// The request behind the credentials currently cached, if any.
    pub async fn current_request(&self) -> Option<RequestId> {
        self.cache.lock().await.current.as_ref().map(|c| c.2)
    }

    fn refresh_delta(&self) -> TimeDelta {
        TimeDelta::from_std(self.refresh_before).unwrap_or(TimeDelta::MAX)
    }

    fn convert(
        &self,
        c: &Credentials,
    ) -> Result<(aws_credential_types::Credentials, DateTime<Utc>), CredentialsError> {
        match c {
            Credentials::Aws {
                access_key_id,
                secret_access_key,
                session_token,
                expires_at,
            } => Ok((
                aws_credential_types::Credentials::new(
                    access_key_id,
                    secret_access_key.expose(),
                    Some(session_token.expose().to_string()),
                    // The SDK's identity cache asks again only 5 to 10 s
                    // before the expiry it is told: tell it the renewal
                    // time, so `refresh_before` holds under the cache too.
                    Some(SystemTime::from(
                        expires_at
                            .checked_sub_signed(self.refresh_delta())
                            .unwrap_or(DateTime::UNIX_EPOCH),
                    )),
                    PROVIDER_NAME,
                ),
                *expires_at,
            )),
            _ => Err(CredentialsError::invalid_configuration(Message(format!(
                "entitlement `{}` does not issue aws credentials",
                self.request.entitlement
            )))),
        }
    }

    fn take(
        &self,
        cache: &mut Cache,
        outcome: IssueOutcome,
    ) -> Result<aws_credential_types::Credentials, CredentialsError> {
        let Some(c) = outcome.credentials else {
            return Err(err(format!(
                "request `{}` is `{}` without credentials",
                outcome.record.id, outcome.record.state
            )));
        };
        let (creds, expiry) = self.convert(&c)?;
        cache.current = Some((creds.clone(), expiry, outcome.record.id));
        cache.pending = None;
        Ok(creds)
    }

    async fn fetch(&self) -> Result<aws_credential_types::Credentials, CredentialsError> {
        let mut cache = self.cache.lock().await;
        let clock = self.broker.clock().clone();
        let before = self.refresh_delta();
        if let Some((creds, expiry, _)) = &cache.current {
            if clock
                .now()
                .checked_add_signed(before)
                .is_some_and(|t| t < *expiry)
            {
                return Ok(creds.clone());
            }
        }
        let started = std::time::Instant::now();
        loop {
            let id = match cache.pending {
                Some(id) => id,
                None => {
                    let outcome = self
                        .broker
                        .submit(&self.requester, self.request.clone())
                        .await
                        .map_err(|e| err(format!("broker refused the request: {e}")))?;
                    if outcome.credentials.is_some() {
                        return self.take(&mut cache, outcome);
                    }
                    let rec = &outcome.record;
                    match rec.state {
                        State::Approved | State::Pending => rec.id,
                        State::Denied => {
                            return Err(err(format!(
                                "request `{}` denied: {}",
                                rec.id,
                                rec.decision.reasons.join("; ")
                            )))
                        }
                        other => {
                            return Err(err(format!("request `{}` ended as `{other}`", rec.id)))
                        }
                    }
                }
            };
            let rec = self
                .broker
                .get(id)
                .await
                .map_err(|e| err(format!("cannot read request `{id}`: {e}")))?;
            match rec.state {
                State::Approved => {
                    let outcome = self
                        .broker
                        .issue(&self.requester, id)
                        .await
                        .map_err(|e| err(format!("cannot issue request `{id}`: {e}")))?;
                    return self.take(&mut cache, outcome);
                }
                State::Pending => {
                    cache.pending = Some(id);
                    if started.elapsed() + self.poll_interval > self.approval_wait {
                        return Err(CredentialsError::not_loaded(Message(format!(
                            "request `{id}` for `{}` is waiting for approval",
                            self.request.entitlement
                        ))));
                    }
                    tokio::time::sleep(self.poll_interval).await;
                }
                State::Active | State::Issuing => {
                    cache.pending = None;
                    return Err(err(format!(
                        "request `{id}` was issued by another call (a broker that auto-issues on approval hands the credentials to the approver); use `auto_issue(false)`"
                    )));
                }
                other => {
                    cache.pending = None;
                    return Err(err(format!(
                        "request `{id}` ended as `{other}`{}",
                        rec.note.map(|n| format!(": {n}")).unwrap_or_default()
                    )));
                }
            }
        }
    }
}

impl ProvideCredentials for BrokerCredentialsProvider {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(self.fetch())
    }
}
