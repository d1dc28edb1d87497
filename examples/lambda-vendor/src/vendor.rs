//! The function's cold-start state ([`Vendor`]) and the per-invocation handler.

use std::sync::Arc;

use chrono::SecondsFormat;
use jit_aws::AwsProvider;
use jit_core::audit::StdoutSink;
use jit_core::types::{format_duration, GrantDuration, Verdict};
use jit_core::wire::{self, CredentialProcess, ErrorDetails};
use jit_core::{
    AccessRequest, AuditSink, Broker, CataloguePolicy, Error, IssueOutcome, Policy, Provider,
    RequestError, RequestId, State, Store,
};
use lambda_runtime::{Context, LambdaEvent};
use serde_json::{json, Value};

use crate::config::{setting, CatalogueSource, ClaimNames, Config, OverMax};
use crate::event::{self, Body, DurationField, Invocation, RequestBody};
use crate::response::ApiResponse;

/// The `source` recorded in every request's context.
pub const SOURCE: &str = "lambda-vendor";

/// Builds a [`Vendor`]. Everything left unset comes from the [`Config`]:
/// the store from its URL, the provider from `JIT_AWS_*` and the standard
/// AWS chain. The binary adds [`StdoutSink`]; tests add their own sinks.
pub struct VendorBuilder {
    config: Config,
    sinks: Vec<Arc<dyn AuditSink>>,
    provider: Option<Arc<dyn Provider>>,
    store: Option<Arc<dyn Store>>,
}

impl std::fmt::Debug for VendorBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VendorBuilder")
            .field("store_url", &self.config.store_url)
            .field("sinks", &self.sinks.len())
            .finish_non_exhaustive()
    }
}

impl VendorBuilder {
    /// Copies every audit record to this sink (a failing sink fails the invocation).
    pub fn audit_sink(mut self, sink: Arc<dyn AuditSink>) -> Self {
        self.sinks.push(sink);
        self
    }

    /// Uses this provider instead of building an [`AwsProvider`] from the configuration.
    pub fn provider(mut self, provider: Arc<dyn Provider>) -> Self {
        self.provider = Some(provider);
        self
    }

    /// Uses this store instead of opening `JIT_STORE_URL`.
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Parses the catalogue, opens the store, builds the AWS clients: the
    /// cold-start work, done once per container.
    pub async fn build(self) -> Result<Vendor, Error> {
        let policy: Arc<dyn Policy> = match &self.config.catalogue {
            CatalogueSource::Inline(text) => Arc::new(CataloguePolicy::from_toml_str(text)?),
            CatalogueSource::File(path) => Arc::new(CataloguePolicy::from_file(path)?),
            CatalogueSource::Cedar {
                entitlements,
                policies,
            } => cedar_policy(entitlements, policies)?,
        };
        let store = match self.store {
            Some(s) => s,
            None => jit_core::store::connect(&self.config.store_url).await?,
        };
        if !store.is_shared() {
            tracing::warn!(
                store = %store_kind(&self.config.store_url),
                "the store is private to this container: requests that need approval cannot be \
                 approved elsewhere and are lost when the container is recycled; set JIT_STORE_URL \
                 to the PostgreSQL database the vending server uses"
            );
        }
        let provider: Arc<dyn Provider> = match self.provider {
            Some(p) => p,
            None => Arc::new(
                // The function's own identity and region come from the
                // standard chain: in Lambda, the execution role and AWS_REGION.
                // Leases in the shared store keep the function's
                // fail-closed revocations from overwriting the server's.
                AwsProvider::builder(self.config.aws.clone())
                    .lease_store(store.clone())
                    .build()
                    .await?,
            ),
        };
        let mut builder = Broker::builder(store, policy).provider(provider);
        // The same risk review as the vending server's: unusual requests go
        // to a human (pending, 202) instead of being auto-approved.
        builder = self.config.risk.settings()?.apply(builder)?;
        // And the same ticket verification.
        builder = self.config.tickets.settings()?.apply(builder)?;
        // And the same on-call source (a rota file is read and checked here).
        builder = self.config.on_call.settings()?.apply(builder)?;
        for sink in self.sinks {
            builder = builder.audit_sink(sink);
        }
        let broker = builder.build()?;
        tracing::info!(
            entitlements = broker.policy().entitlements().len(),
            "lambda vendor ready"
        );
        Ok(Vendor {
            broker,
            claims: self.config.claims,
            over_max: self.config.over_max,
        })
    }
}

/// The Cedar policy of `JIT_POLICY_KIND=cedar`: a file that cannot be read
/// is named with its variable; a policy that does not validate is a
/// [`jit_core::ConfigError::Cedar`] naming its `@id` and line.
#[cfg(feature = "cedar")]
fn cedar_policy(
    entitlements: &std::path::Path,
    policies: &std::path::Path,
) -> Result<Arc<dyn Policy>, Error> {
    let read = |var: &str, p: &std::path::Path| {
        std::fs::read_to_string(p)
            .map_err(|e| setting(var, format!("cannot read `{}`: {e}", p.display())))
    };
    Ok(Arc::new(jit_core::policy::cedar::CedarPolicy::from_strs(
        &read("JIT_CEDAR_ENTITLEMENTS", entitlements)?,
        &read("JIT_CEDAR_POLICIES", policies)?,
    )?))
}

#[cfg(not(feature = "cedar"))]
fn cedar_policy(
    _entitlements: &std::path::Path,
    _policies: &std::path::Path,
) -> Result<Arc<dyn Policy>, Error> {
    Err(setting(
        "JIT_POLICY_KIND",
        "`cedar` needs a function built with the `cedar` feature (cargo build -p lambda-vendor --features cedar)",
    ))
}

/// Only the scheme: a PostgreSQL URL may carry a password.
fn store_kind(url: &str) -> &str {
    url.split_once(':').map_or(url, |(scheme, _)| scheme)
}

/// The function's state, built once per container (see [`Vendor::builder`])
/// and borrowed by every invocation.
pub struct Vendor {
    broker: Broker,
    claims: ClaimNames,
    over_max: OverMax,
}

impl std::fmt::Debug for Vendor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vendor")
            .field("broker", &self.broker)
            .field("claims", &self.claims)
            .field("over_max", &self.over_max)
            .finish()
    }
}

impl Vendor {
    /// Starts a builder from a configuration.
    pub fn builder(config: Config) -> VendorBuilder {
        VendorBuilder {
            config,
            sinks: Vec::new(),
            provider: None,
            store: None,
        }
    }

    /// What the binary runs at cold start: configuration from the
    /// environment, audit records to stdout (the function's log stream).
    pub async fn from_env() -> Result<Self, Error> {
        Self::builder(Config::from_env()?)
            .audit_sink(Arc::new(StdoutSink))
            .build()
            .await
    }

    /// The broker (tests read records through it).
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Handles one invocation and returns the API Gateway proxy response.
    /// Every outcome, including errors, is a response: the function itself
    /// never fails an invocation.
    pub async fn handle(&self, event: LambdaEvent<Value>) -> Value {
        let (payload, context) = event.into_parts();
        self.respond(&payload, &context).await.into_proxy()
    }

    /// Like [`Vendor::handle`], before the response becomes proxy JSON.
    pub async fn respond(&self, payload: &Value, context: &Context) -> ApiResponse {
        let inv = match event::parse(payload, &self.claims) {
            Ok(inv) => inv,
            Err(e) => {
                tracing::info!(aws_request_id = %context.request_id, error = %e, "rejected event");
                return e.into();
            }
        };
        let principal = inv.principal.id.to_string();
        let (entitlement, result) = match inv.body.clone() {
            Body::Request(body) => (
                body.entitlement.clone(),
                self.submit(inv, body, context).await,
            ),
            Body::Collect(c) => (String::new(), self.collect(&inv, &c.request_id).await),
        };
        let response = result.unwrap_or_else(ApiResponse::from);
        tracing::info!(
            aws_request_id = %context.request_id,
            principal = %principal,
            entitlement = %entitlement,
            status = response.status,
            code = response.error_code().unwrap_or(""),
            "invocation done"
        );
        response
    }

    /// `{"request_id"}`: the caller's own request, as it stands. Active:
    /// its credentials, re-delivered (a fresh STS session with the grant's
    /// session name and end; the delivery is audited). Still waiting: `202`
    /// again. Anyone else's id answers like a missing one.
    async fn collect(&self, inv: &Invocation, id: &str) -> Result<ApiResponse, Error> {
        let not_found = || Error::NotFound {
            kind: "request",
            id: id.chars().take(64).collect(),
        };
        let rid: RequestId = id.trim().parse().map_err(|_| not_found())?;
        let rec = match self.broker.get(rid).await {
            Ok(r) if inv.principal.is(&r.requester.id) => r,
            Ok(_) | Err(Error::NotFound { .. }) => return Err(not_found()),
            Err(e) => return Err(e),
        };
        match rec.state {
            State::Active => {
                // The delivery changes nothing the answer shows, so the
                // record read above serves.
                let credentials = self.broker.credentials(&inv.principal, rid).await?;
                Ok(outcome(IssueOutcome {
                    record: rec,
                    credentials: Some(credentials),
                }))
            }
            State::Pending | State::Denied => Ok(outcome(IssueOutcome {
                record: rec,
                credentials: None,
            })),
            State::Approved | State::Issuing => Ok(ApiResponse::ok(
                202,
                json!({
                    "status": rec.state,
                    "request_id": rec.id,
                    "entitlement": rec.request.entitlement,
                    "message": "approved; the credentials are being issued, ask again shortly",
                }),
            )),
            other => Ok(ApiResponse::error(
                409,
                "invalid_state",
                format!(
                    "request `{}` is `{other}`: it has no credentials to deliver",
                    rec.id
                ),
            )
            .with_details(
                ErrorDetails::default()
                    .with_request(rec.id)
                    .with_state(other),
            )),
        }
    }

    async fn submit(
        &self,
        inv: Invocation,
        body: RequestBody,
        context: &Context,
    ) -> Result<ApiResponse, Error> {
        let duration = match &body.duration {
            DurationField::Seconds(s) => GrantDuration::from_secs_i64(*s)?,
            DurationField::Text(t) => t.parse::<GrantDuration>()?,
        };
        if self.over_max == OverMax::Refuse {
            if let Some(ent) = self.broker.policy().entitlement(&body.entitlement) {
                if duration > ent.max_duration {
                    return Err(RequestError::DurationTooLong {
                        requested: duration.to_string(),
                        limit: format!("{} for `{}`", ent.max_duration, ent.id),
                    }
                    .into());
                }
            }
        }
        let mut request = AccessRequest::new(&body.entitlement, duration, &body.justification)
            .with_context("source", SOURCE)
            .with_context("auth", inv.auth.as_str());
        if let Some(t) = body.ticket.as_deref() {
            request = request.with_ticket(t);
        }
        let facts = [
            ("aws_request_id", Some(context.request_id.as_str())),
            ("api_request_id", inv.api_request_id.as_deref()),
            ("source_ip", inv.source_ip.as_deref()),
            ("user_agent", inv.user_agent.as_deref()),
        ];
        for (key, value) in facts {
            if let Some(v) = value.filter(|v| !v.is_empty()) {
                request = request.with_context(key, &clip(v, 512));
            }
        }
        let out = self.broker.submit(&inv.principal, request).await?;
        Ok(outcome(out))
    }
}

/// At most `max` bytes, cut at a character boundary.
fn clip(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The answer for what `submit` returned.
fn outcome(out: IssueOutcome) -> ApiResponse {
    let rec = &out.record;
    match (rec.state, out.credentials.as_ref()) {
        (State::Active, Some(c)) => {
            // The one `credential_process` definition (jit-aws prints it too).
            let Some(doc) = CredentialProcess::from_credentials(c) else {
                return Error::ProviderRejected {
                    provider: "aws".into(),
                    operation: "output",
                    message: "these are not aws credentials".into(),
                }
                .into();
            };
            let credentials = wire::to_value(&doc);
            let grant = rec.grant.as_ref();
            ApiResponse::ok(
                200,
                json!({
                    "status": "active",
                    "request_id": rec.id,
                    "grant_id": grant.map(|g| g.id),
                    "entitlement": rec.request.entitlement,
                    "expires_at": grant.map(|g| rfc3339(g.ends_at)),
                    "session_name": grant.and_then(|g| g.issued.as_ref()).map(|i| &i.external_id),
                    "reasons": rec.decision.reasons,
                    "credentials": credentials,
                }),
            )
        }
        (State::Pending, _) => {
            let (approvers, quorum) = match &rec.decision.verdict {
                Verdict::NeedsApproval { approvers, quorum } => (json!(approvers), json!(quorum)),
                _ => (Value::Null, Value::Null),
            };
            ApiResponse::ok(
                202,
                json!({
                    "status": "pending",
                    "request_id": rec.id,
                    "entitlement": rec.request.entitlement,
                    "duration": format_duration(rec.request.duration.get()),
                    "approvers": approvers,
                    "quorum": quorum,
                    "pending_until": rec.pending_until.map(rfc3339),
                    "reasons": rec.decision.reasons,
                    "message": "waiting for approval; an approver acts on the request in the vending server, where the requester then collects the credentials",
                }),
            )
        }
        (State::Denied, _) => {
            let reasons = &rec.decision.reasons;
            ApiResponse::error(
                403,
                "denied",
                format!("denied by policy: {}", reasons.join("; ")),
            )
            .with_details(ErrorDetails::reasons(reasons.clone()).with_request(rec.id))
        }
        (state, _) => {
            tracing::error!(request = %rec.id, %state, "unexpected state after submit");
            ApiResponse::error(
                500,
                "internal",
                format!(
                    "request `{}` ended in state `{state}` without credentials",
                    rec.id
                ),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use std::path::Path;

    use jit_core::local::{LocalKey, LocalProvider};
    use jit_core::{ConfigError, MemoryStore};

    use super::*;

    async fn build(entitlements: &Path, policies: &Path) -> Result<Vendor, Error> {
        let mut config = Config::with_catalogue("");
        config.catalogue = CatalogueSource::Cedar {
            entitlements: entitlements.into(),
            policies: policies.into(),
        };
        Vendor::builder(config)
            .store(Arc::new(MemoryStore::new()))
            .provider(Arc::new(LocalProvider::new(LocalKey::generate(), "jit")))
            .build()
            .await
    }

    const ENTITLEMENTS: &str = "[[entitlements]]\nid = \"db\"\nprovider = \"local\"\nmax_duration = \"1h\"\ntarget = { audience = \"db\" }\n[entitlements.approval]\nids = [\"carol\"]\n";
    const POLICIES: &str = "@id(\"db: ops\")\npermit (principal in Jit::Group::\"ops\", action == Jit::Action::\"request\", resource == Jit::Entitlement::\"db\");\n";

    #[cfg(feature = "cedar")]
    #[tokio::test]
    async fn a_cedar_policy_is_read_and_checked_at_cold_start() {
        let dir = tempfile::tempdir().unwrap();
        let (ents, pols) = (dir.path().join("e.toml"), dir.path().join("p.cedar"));
        std::fs::write(&ents, ENTITLEMENTS).unwrap();
        std::fs::write(&pols, POLICIES).unwrap();
        let vendor = build(&ents, &pols).await.unwrap();
        let ids: Vec<_> = vendor
            .broker()
            .policy()
            .entitlements()
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(ids, ["db"]);

        // Whom the Cedar policy covers decides: ops is eligible (and waits
        // for carol: no auto-approve permit), anyone else is denied.
        let ent = vendor.broker().policy().entitlement("db").unwrap();
        let ctx =
            jit_core::PolicyContext::new(chrono::Utc::now(), std::time::Duration::from_secs(3600));
        let req = AccessRequest::new("db", "10m".parse().unwrap(), "INC-1: restore");
        let ops = jit_core::Principal::new("olga").unwrap().with_group("ops");
        let eve = jit_core::Principal::new("eve").unwrap();
        let policy = vendor.broker().policy();
        let for_ops = policy.evaluate(&ops, &req, &ent, &ctx).unwrap();
        let for_eve = policy.evaluate(&eve, &req, &ent, &ctx).unwrap();
        assert!(for_eve.is_deny(), "{for_eve:?}");
        assert!(
            matches!(for_ops.verdict, Verdict::NeedsApproval { quorum: 1, .. }),
            "{for_ops:?}"
        );

        // A missing file is named with its variable.
        let missing = dir.path().join("nope.cedar");
        let err = build(&ents, &missing).await.unwrap_err().to_string();
        assert!(err.contains("JIT_CEDAR_POLICIES"), "{err}");
        assert!(err.contains(&missing.display().to_string()), "{err}");
        let err = build(&missing, &pols).await.unwrap_err().to_string();
        assert!(err.contains("JIT_CEDAR_ENTITLEMENTS"), "{err}");

        // A policy that does not type-check: its `@id` and line.
        std::fs::write(
            &pols,
            format!("{POLICIES}\n@id(\"typo\")\npermit (principal, action, resource)\nwhen {{ context.duratoin_secs > 1 }};\n"),
        )
        .unwrap();
        match build(&ents, &pols).await {
            Err(Error::Config(ConfigError::Cedar { policy, line, .. })) => {
                assert_eq!(policy, "typo");
                assert!((4..=6).contains(&line), "line {line}");
            }
            other => panic!("expected a Cedar error, got {other:?}"),
        }
    }

    #[cfg(not(feature = "cedar"))]
    #[tokio::test]
    async fn cedar_in_a_build_without_the_feature_is_refused_at_cold_start() {
        let dir = tempfile::tempdir().unwrap();
        let err = build(&dir.path().join("e.toml"), &dir.path().join("p.cedar"))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("JIT_POLICY_KIND"), "{err}");
        assert!(err.contains("`cedar` feature"), "{err}");
    }
}
