//! The JIT vending server: an HTTP JSON API over the whole lifecycle of
//! [`jit_core`], with OIDC bearer authentication, the reaper in the
//! background, health, readiness and Prometheus metrics.
//!
//! Run `cargo run -p vending-server -- --demo` for a self-contained demo; see
//! [`api`] for the routes and [`config`] for the configuration file.
//!
//! # Under hostile load
//!
//! - `/metrics` reads one grouped count from the store at most every
//!   `[metrics] cache_secs`, shared by concurrent scrapes; `[metrics] listen`
//!   moves it to a listener of its own, `bearer_token_file` puts it behind a
//!   token (the server warns at start when neither is set).
//! - New requests are limited per verified subject: a rate ([`limits`]) and
//!   a cap on requests waiting for approval (the broker's, checked only for
//!   a request that would wait), both answered with `429 too_many_requests`.
//! - Every answer but the public keys is `Cache-Control: no-store`.
//! - A client's `x-request-id` is kept only if it is short and plain
//!   ([`is_safe_request_id`]); otherwise a fresh UUID replaces it.

pub mod api;
pub mod auth;
pub mod config;
pub mod demo;
pub mod error;
pub mod limits;
pub mod metrics;
pub mod retention;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::header::CACHE_CONTROL;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use jit_core::provider::registry::{FactoryContext, ProviderRegistry};
use jit_core::{Broker, CataloguePolicy, Policy, Provider, Reaper, Store};
use jsonwebtoken::Algorithm;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use crate::api::AppState;
use crate::auth::{AuthSettings, Authenticator, JwksSource};
use crate::config::Config;
use crate::error::ApiError;
use crate::metrics::{Measured, Metrics};

/// Opens the store named by a URL: `sqlite://...` (the default),
/// `postgres://...` for several server replicas on one database, `memory:`.
pub async fn open_store(url: &str) -> Result<Arc<dyn Store>, String> {
    jit_core::store::connect(url)
        .await
        .map_err(|e| e.to_string())
}

/// The provider kinds this server knows: `local` (jit-core), `aws`
/// (jit-aws), `azure` (jit-azure) and `gcp` (jit-gcp), each a factory fed
/// its `[providers.NAME]` table as a string map. Another cloud registers its
/// factory here (or a host passes its own registry to
/// [`Server::build_with_registry`]); the configuration gains no fields.
pub fn provider_registry() -> ProviderRegistry {
    ProviderRegistry::builtin()
        .with(jit_aws::factory())
        .with(jit_azure::factory())
        .with(jit_gcp::factory())
}

/// Builds every `[providers.NAME]` table through `registry`. The factories
/// share the server's store (AWS revocation-policy writes take leases in
/// it, so replicas and a Lambda function on the same store never overwrite
/// each other's revocations), the config file's directory for relative
/// paths and, unless the config says otherwise, the process environment
/// (`JIT_AWS_*`, `JIT_LOCAL_KEY_FILE` win over their keys). A provider that
/// cannot be built stops the start with an error naming its table.
pub async fn build_providers(
    config: &Config,
    store: Arc<dyn Store>,
    registry: &ProviderRegistry,
) -> Result<(Vec<Arc<dyn Provider>>, FactoryContext), String> {
    let mut ctx = FactoryContext::new().with_store(store);
    if let Some(dir) = &config.base_dir {
        ctx = ctx.with_base_dir(dir);
    }
    if !config.ignore_provider_env {
        ctx = ctx.with_process_env();
    }
    let mut providers = Vec::new();
    for (name, table) in &config.providers {
        let provider = registry
            .build(name, &table.kind, &table.settings, &ctx)
            .await
            .map_err(|e| match e {
                // These name the table already.
                jit_core::Error::Config(jit_core::ConfigError::Provider(_)) => e.to_string(),
                e => format!("provider `{name}` (kind `{}`): {e}", table.kind),
            })?;
        providers.push(provider);
    }
    Ok((providers, ctx))
}

/// Seals the audit chain with the configured key (created if missing) and
/// sends signed checkpoints to the checkpoint file.
fn audit_setup(
    mut builder: jit_core::BrokerBuilder,
    audit: &config::AuditConfig,
) -> Result<jit_core::BrokerBuilder, String> {
    use jit_core::audit::{AuditKey, AuditKeyring, CheckpointFileSink};
    let Some(path) = &audit.key_file else {
        if audit.checkpoint_file.is_some() || !audit.previous_key_files.is_empty() {
            return Err("audit: checkpoints and previous keys need `key_file`".into());
        }
        return Ok(builder);
    };
    let current = if path.exists() {
        AuditKey::from_file(path).map_err(|e| format!("audit: {e}"))?
    } else {
        let key = AuditKey::generate();
        demo::write_private(path, &key.to_hex())?;
        tracing::warn!(path = %path.display(), key_id = key.id(), "created a new audit key: back it up");
        key
    };
    let mut keyring = AuditKeyring::new(current);
    for p in &audit.previous_key_files {
        keyring = keyring.with_previous(AuditKey::from_file(p).map_err(|e| format!("audit: {e}"))?);
    }
    builder = builder
        .audit_keyring(keyring)
        .checkpoint_every(audit.checkpoint_every);
    if let Some(p) = &audit.checkpoint_file {
        let sink = CheckpointFileSink::open(p).map_err(|e| format!("audit: {e}"))?;
        builder = builder.audit_sink(Arc::new(sink));
    }
    Ok(builder)
}

/// Adds the configured risk assessor, if any (`[risk]`).
fn risk_setup(
    builder: jit_core::BrokerBuilder,
    risk: &config::RiskConfig,
) -> Result<jit_core::BrokerBuilder, String> {
    let token = match &risk.token_file {
        None => None,
        Some(p) => Some(token_file("risk", p)?),
    };
    jit_core::risk::RiskSettings {
        assessor: risk.assessor.clone(),
        url: risk.url.clone(),
        token,
        timeout: Some(Duration::from_millis(risk.timeout_ms.max(1))),
    }
    .apply(builder)
    .map_err(|e| format!("risk: {e}"))
}

/// Reads a token file: trimmed, not empty.
fn token_file(section: &str, p: &Path) -> Result<jit_core::Secret, String> {
    let text = std::fs::read_to_string(p)
        .map_err(|e| format!("{section}: cannot read `{}`: {e}", p.display()))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("{section}: `{}` is empty", p.display()));
    }
    Ok(jit_core::Secret::new(text))
}

/// Adds the configured ticket verifier, if any (`[tickets]`).
fn tickets_setup(
    builder: jit_core::BrokerBuilder,
    t: &config::TicketsConfig,
) -> Result<jit_core::BrokerBuilder, String> {
    let token = match &t.token_file {
        None => None,
        Some(p) => Some(token_file("tickets", p)?),
    };
    jit_core::ticket::TrackerSettings {
        url: t.url.clone(),
        statuses: t.statuses.clone(),
        projects: t.projects.clone(),
        require_assignee: t.require_assignee,
        token,
        timeout: Some(Duration::from_millis(t.timeout_ms.max(1))),
        cache_ttl: Some(Duration::from_secs(t.cache_secs)),
    }
    .apply(builder)
    .map_err(|e| format!("tickets: {e}"))
}

/// The policy `[policy]` names: the catalogue (`catalogue_file` or
/// `catalogue`), or an entitlement file and a Cedar policy set (feature
/// `cedar`). Every file is read and checked here, so a bad one stops the
/// start.
pub fn load_policy(config: &Config) -> Result<Arc<dyn Policy>, String> {
    let p = &config.policy;
    match p.kind {
        config::PolicyKind::Catalogue => {
            if p.entitlements.is_some() || p.policies.is_some() {
                return Err(
                    "policy: `entitlements` and `policies` are for `kind = \"cedar\"`; the catalogue is `catalogue_file` or `catalogue`"
                        .into(),
                );
            }
            let policy = match (&config.catalogue, &config.catalogue_file) {
                (Some(text), _) => CataloguePolicy::from_toml_str(text),
                (None, Some(p)) => CataloguePolicy::from_file(p),
                (None, None) => return Err("set `catalogue_file` or `catalogue`".into()),
            }
            .map_err(|e| format!("catalogue: {e}"))?;
            Ok(Arc::new(policy))
        }
        config::PolicyKind::Cedar => {
            if config.catalogue.is_some() || config.catalogue_file.is_some() {
                return Err(
                    "policy: `kind = \"cedar\"` takes its entitlements from `[policy] entitlements`: remove `catalogue_file` and `catalogue`"
                        .into(),
                );
            }
            let (Some(entitlements), Some(policies)) = (&p.entitlements, &p.policies) else {
                return Err(
                    "policy: `kind = \"cedar\"` needs `entitlements` (JIT_CEDAR_ENTITLEMENTS) and `policies` (JIT_CEDAR_POLICIES)"
                        .into(),
                );
            };
            cedar_policy(entitlements, policies)
        }
    }
}

#[cfg(feature = "cedar")]
fn cedar_policy(entitlements: &Path, policies: &Path) -> Result<Arc<dyn Policy>, String> {
    let read = |what: &str, p: &Path| {
        std::fs::read_to_string(p)
            .map_err(|e| format!("policy: {what}: cannot read `{}`: {e}", p.display()))
    };
    let policy = jit_core::policy::cedar::CedarPolicy::from_strs(
        &read("entitlements", entitlements)?,
        &read("policies", policies)?,
    )
    .map_err(|e| match e {
        jit_core::ConfigError::Cedar { .. } => format!("policy: `{}`: {e}", policies.display()),
        e => format!("policy: `{}`: {e}", entitlements.display()),
    })?;
    Ok(Arc::new(policy))
}

#[cfg(not(feature = "cedar"))]
fn cedar_policy(_entitlements: &Path, _policies: &Path) -> Result<Arc<dyn Policy>, String> {
    Err("policy: `kind = \"cedar\"` needs a server built with the `cedar` feature (cargo build -p vending-server --features cedar)".into())
}

/// Adds the configured on-call source, if any (`[on_call]`); a rota file
/// is read and validated here, so a bad one stops the start.
fn on_call_setup(
    builder: jit_core::BrokerBuilder,
    o: &config::OnCallConfig,
) -> Result<jit_core::BrokerBuilder, String> {
    let token = match &o.token_file {
        None => None,
        Some(p) => Some(token_file("on_call", p)?),
    };
    jit_core::oncall::OnCallSettings {
        rota_file: o.rota_file.clone(),
        rota_check_every: o.rota_check_secs.map(Duration::from_secs),
        url: o.url.clone(),
        token,
        timeout: Some(Duration::from_millis(o.timeout_ms.max(1))),
        cache_ttl: o.cache_secs.map(Duration::from_secs),
    }
    .apply(builder)
    .map_err(|e| format!("on_call: {e}"))
}

fn algorithms(names: &[String]) -> Result<Vec<Algorithm>, String> {
    names
        .iter()
        .map(|n| {
            let a: Algorithm = n
                .parse()
                .map_err(|_| format!("unknown JWT algorithm `{n}`"))?;
            if matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
                return Err(format!(
                    "JWT algorithm `{n}` is symmetric: only asymmetric algorithms verify OIDC tokens"
                ));
            }
            Ok(a)
        })
        .collect()
}

/// The bearer token scrapers send to `/metrics`. Never printed.
struct MetricsToken(String);

impl std::fmt::Debug for MetricsToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsToken(** redacted **)")
    }
}

impl MetricsToken {
    /// Compares in time independent of where the bytes differ.
    fn matches(&self, given: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), given.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// Everything the server needs, built from a [`Config`].
#[derive(Debug)]
pub struct Server {
    /// Handler state.
    pub state: AppState,
    /// The config it was built from.
    pub config: Config,
    metrics_token: Option<Arc<MetricsToken>>,
}

impl Server {
    /// Builds the broker, providers and authenticator. `demo` makes the
    /// server its own issuer with this JWKS.
    pub async fn build(config: Config, demo: Option<&demo::DemoIssuer>) -> Result<Self, String> {
        let store = open_store(&config.store_url).await?;
        Self::build_with_store(config, store, demo).await
    }

    /// Like [`Server::build`], on a store opened by the caller (`store_url`
    /// is not read): a store wrapper, or one shared with other code.
    pub async fn build_with_store(
        config: Config,
        store: Arc<dyn Store>,
        demo: Option<&demo::DemoIssuer>,
    ) -> Result<Self, String> {
        Self::build_with_registry(config, store, demo, &provider_registry()).await
    }

    /// Like [`Server::build_with_store`], with the provider kinds of
    /// `registry` instead of [`provider_registry`]'s.
    pub async fn build_with_registry(
        config: Config,
        store: Arc<dyn Store>,
        demo: Option<&demo::DemoIssuer>,
        registry: &ProviderRegistry,
    ) -> Result<Self, String> {
        let metrics = Metrics::new().map_err(|e| e.to_string())?;
        let metrics_token = match &config.metrics.bearer_token_file {
            Some(p) => {
                let t = std::fs::read_to_string(p)
                    .map_err(|e| format!("metrics: cannot read `{}`: {e}", p.display()))?;
                let t = t.trim().to_string();
                if t.len() < 16 {
                    return Err(format!(
                        "metrics: the token in `{}` is shorter than 16 characters",
                        p.display()
                    ));
                }
                Some(Arc::new(MetricsToken(t)))
            }
            None => None,
        };
        if config.metrics.listen.is_none() && metrics_token.is_none() {
            tracing::warn!(
                "/metrics is served to anyone on the API listener: set `[metrics] listen` or `bearer_token_file`"
            );
        }
        let mut builder = Broker::builder(store.clone(), load_policy(&config)?);
        let (providers, ctx) = build_providers(&config, store.clone(), registry).await?;
        for provider in providers {
            builder = builder.provider(Arc::new(Measured::new(provider, metrics.clone())));
        }
        let local_keys: std::collections::BTreeMap<_, _> = ctx
            .local_providers()
            .all()
            .into_iter()
            .map(|(name, p)| (name, api::LocalKeys::of(&p)))
            .collect();
        builder = audit_setup(builder, &config.audit)?;
        builder = risk_setup(builder, &config.risk)?;
        builder = tickets_setup(builder, &config.tickets)?;
        builder = on_call_setup(builder, &config.on_call)?;
        builder = builder.max_pending_per_requester(config.limits.max_pending_per_requester);
        let broker = builder.build().map_err(|e| e.to_string())?;
        let retention = retention::Retention::from_config(&config.retention)?;

        let a = &config.auth;
        let jwks = match (demo, &a.jwks_url, &a.jwks_file) {
            (Some(d), _, _) => JwksSource::Static(d.jwk_set()?),
            (None, Some(u), _) => JwksSource::Url(u.clone()),
            (None, None, Some(f)) => JwksSource::File(f.clone()),
            (None, None, None) => return Err("auth: set `jwks_url` or `jwks_file`".into()),
        };
        a.claims.validate()?;
        let auth = Authenticator::new(AuthSettings {
            issuer: a.issuer.clone(),
            audience: a.audience.clone(),
            jwks,
            algorithms: algorithms(&a.algorithms)?,
            claims: a.claims.clone(),
            leeway: Duration::from_secs(a.leeway_secs),
            refresh_min_interval: Duration::from_secs(a.refresh_min_interval_secs),
        });
        if demo.is_none() {
            // A failing identity provider at start is not fatal: keys load on first use.
            if let Err(e) = auth.refresh().await {
                tracing::warn!(error = %e, "could not load the JWKS at start; will retry");
            }
        }
        Ok(Self {
            state: AppState {
                broker,
                auth: Arc::new(auth),
                metrics,
                demo_jwks: demo.map(|d| Arc::new(d.jwks_json())),
                local: Arc::new(local_keys),
                limits: Arc::new(limits::SubmitLimits::new(&config.limits)),
                introspection_clients: Arc::new(
                    config.introspection.clients.iter().cloned().collect(),
                ),
                metrics_cache: Duration::from_secs(config.metrics.cache_secs),
                audit: Arc::new(api::AuditVerify {
                    checkpoint_file: config.audit.checkpoint_file.clone(),
                    sealed_from: config.audit.sealed_from,
                }),
                retention,
            },
            metrics_token,
            config,
        })
    }

    /// The API router with every layer; with `/metrics` unless `[metrics]
    /// listen` moves it to [`Server::metrics_router`].
    pub fn router(&self) -> Router {
        let api = router(self.state.clone(), self.config.limits.max_body_bytes);
        if self.config.metrics.listen.is_some() {
            api
        } else {
            api.merge(self.metrics_router())
        }
    }

    /// `/metrics` alone, behind the bearer token when one is configured.
    pub fn metrics_router(&self) -> Router {
        let r = Router::new().route("/metrics", get(api::metrics));
        let r = match self.metrics_token.clone() {
            Some(token) => r.route_layer(middleware::from_fn(move |req: Request, next: Next| {
                let token = token.clone();
                async move {
                    let given = req
                        .headers()
                        .get(axum::http::header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.strip_prefix("Bearer "));
                    if given.is_some_and(|g| token.matches(g.trim())) {
                        next.run(req).await
                    } else {
                        ApiError::unauthorized("metrics need the configured bearer token")
                            .into_response()
                    }
                }
            })),
            None => r,
        };
        r.layer(SetResponseHeaderLayer::overriding(
            CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .with_state(self.state.clone())
    }

    /// Serves on `listener` until `shutdown`, with the reaper running beside
    /// it; in-flight requests finish before this returns. With `[metrics]
    /// listen`, `/metrics` is served there too.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let metrics = match &self.config.metrics.listen {
            Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen on `{addr}`: {e}"))
            })?),
            None => None,
        };
        self.serve_on(listener, metrics, shutdown).await
    }

    /// Like [`Server::serve`], with the metrics listener given (when
    /// `[metrics] listen` is set; its address is not read again).
    pub async fn serve_on(
        self,
        listener: tokio::net::TcpListener,
        metrics: Option<tokio::net::TcpListener>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let reaper = Reaper::new(self.state.broker.clone())
            .interval(Duration::from_secs(self.config.reaper.interval_secs.max(1)));
        let mut rx = stop_rx.clone();
        let reaper_task = tokio::spawn(reaper.run(async move {
            let _ = rx.wait_for(|v| *v).await;
        }));
        let retention_task = self.state.retention.clone().map(|r| {
            let mut rx = stop_rx.clone();
            tokio::spawn(r.run_every(self.state.broker.clone(), async move {
                let _ = rx.wait_for(|v| *v).await;
            }))
        });
        let app = self.router();
        let metrics_task = match metrics {
            Some(l) if self.config.metrics.listen.is_some() => {
                if let Ok(addr) = l.local_addr() {
                    tracing::info!(%addr, "metrics listening");
                }
                let app = self.metrics_router();
                let mut rx = stop_rx.clone();
                Some(tokio::spawn(async move {
                    axum::serve(l, app)
                        .with_graceful_shutdown(async move {
                            let _ = rx.wait_for(|v| *v).await;
                        })
                        .await
                }))
            }
            _ => None,
        };
        let res = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await;
        let _ = stop_tx.send(true);
        let _ = reaper_task.await;
        if let Some(t) = retention_task {
            let _ = t.await;
        }
        if let Some(t) = metrics_task {
            if let Ok(Err(e)) = t.await {
                tracing::warn!(error = %e, "metrics listener failed");
            }
        }
        res
    }
}

async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let resp = next.run(req).await;
    state
        .metrics
        .http_requests
        .with_label_values(&[route.as_str(), method.as_str(), resp.status().as_str()])
        .inc();
    resp
}

/// The API router.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    use api::*;
    let request_id = HeaderName::from_static("x-request-id");
    Router::new()
        .route("/v1/requests", post(submit).get(list))
        .route("/v1/requests/{id}", get(get_one))
        .route("/v1/requests/{id}/approve", post(approve))
        .route("/v1/requests/{id}/deny", post(deny))
        .route("/v1/requests/{id}/cancel", post(cancel))
        .route("/v1/requests/{id}/revoke", post(revoke))
        .route("/v1/requests/{id}/issue", post(issue))
        .route("/v1/requests/{id}/extend", post(extend))
        .route("/v1/requests/{id}/credentials", get(credentials))
        .route("/v1/audit", get(audit_export))
        .route("/v1/audit/verify", get(audit_verify))
        .route("/v1/admin/archive", post(admin_archive))
        .route("/v1/entitlements", get(entitlements))
        .route("/v1/whoami", get(whoami))
        .route("/v1/introspect", post(introspect))
        .route("/v1/providers/{name}/jwks.json", get(provider_jwks))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/.well-known/jwks.json", get(jwks))
        .route_layer(middleware::from_fn_with_state(state.clone(), track))
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
                let id = req
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                // The path only: query strings and bodies stay out of the logs.
                tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id)
            }),
        )
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        // Outermost: an id a client chose is kept only if it is short and
        // plain, else replaced by a fresh one (it is echoed and logged).
        .layer(middleware::map_request(drop_unsafe_request_id))
        // Credentials and request records must never sit in a cache; the
        // public key routes say otherwise themselves.
        .layer(SetResponseHeaderLayer::if_not_present(
            CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .with_state(state)
}

/// The longest client-chosen `x-request-id` kept.
pub const MAX_REQUEST_ID_LEN: usize = 64;

/// Whether a client-chosen request id is kept as given: 1 to
/// [`MAX_REQUEST_ID_LEN`] characters of `[A-Za-z0-9._:-]` (a UUID, a trace
/// id), nothing that could forge a log line or fill it.
pub fn is_safe_request_id(id: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

async fn drop_unsafe_request_id(mut req: Request) -> Request {
    let headers = req.headers_mut();
    let unsafe_id = headers.get_all("x-request-id").iter().count() > 1
        || headers
            .get("x-request-id")
            .is_some_and(|v| !is_safe_request_id(v.as_bytes()));
    if unsafe_id {
        headers.remove("x-request-id");
    }
    req
}

/// Loads a config file and applies the environment.
pub fn load_config(path: &Path) -> Result<Config, String> {
    let mut c = Config::load(path)?;
    c.apply_env(|k| std::env::var(k).ok())?;
    Ok(c)
}

/// Waits for SIGTERM or ctrl-c.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use async_trait::async_trait;
    use jit_core::provider::registry::{ConfigKey, LocalFactory, ProviderConfig, ProviderFactory};
    use jit_core::MemoryStore;

    use super::*;

    const MIN: &str = r#"
        catalogue = ""
        [auth]
        issuer = "https://id"
        audience = "jit"
        jwks_url = "https://id/jwks"
    "#;

    fn risk_config(toml: &str) -> config::RiskConfig {
        Config::from_toml_str(&format!("{MIN}\n[risk]\n{toml}"))
            .unwrap()
            .risk
    }

    fn risk_result(toml: &str) -> Result<String, String> {
        let store: Arc<dyn jit_core::Store> = Arc::new(MemoryStore::new());
        let policy = Arc::new(CataloguePolicy::from_toml_str("").unwrap());
        risk_setup(Broker::builder(store, policy), &risk_config(toml)).map(|b| format!("{b:?}"))
    }

    fn tickets_result(toml: &str) -> Result<String, String> {
        let store: Arc<dyn jit_core::Store> = Arc::new(MemoryStore::new());
        let policy = Arc::new(CataloguePolicy::from_toml_str("").unwrap());
        let t = Config::from_toml_str(&format!("{MIN}\n[tickets]\n{toml}"))
            .unwrap()
            .tickets;
        tickets_setup(Broker::builder(store, policy), &t).map(|b| format!("{b:?}"))
    }

    #[test]
    fn ticket_verifiers_are_built_from_the_config_and_mistakes_are_refused() {
        assert!(tickets_result("").is_ok());
        assert!(tickets_result(
            "url = \"https://jira.internal\"\nstatuses = [\"Open\"]\nprojects = [\"INC\"]"
        )
        .is_ok());
        for (toml, want) in [
            ("statuses = [\"Open\"]", "set the tracker's URL"),
            ("url = \"https://jira.internal\"", "at least one status"),
            (
                "url = \"ftp://jira\"\nstatuses = [\"Open\"]",
                "http or https",
            ),
            (
                "url = \"https://jira\"\nstatuses = [\"Open\"]\ntoken_file = \"/nonexistent/t\"",
                "cannot read",
            ),
        ] {
            let err = tickets_result(toml).unwrap_err();
            assert!(err.contains(want), "{toml}: {err}");
        }
    }

    /// `load_policy` on MIN without its catalogue, plus `toml`.
    fn policy_result(toml: &str) -> Result<Vec<String>, String> {
        let c = Config::from_toml_str(&format!("{toml}\n{}", MIN.replace("catalogue = \"\"", "")))
            .unwrap();
        load_policy(&c).map(|p| p.entitlements().into_iter().map(|e| e.id).collect())
    }

    #[test]
    fn the_policy_kind_and_its_files_must_agree() {
        assert_eq!(
            policy_result("catalogue = \"\"").unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            policy_result("").unwrap_err(),
            "set `catalogue_file` or `catalogue`"
        );
        for (toml, want) in [
            (
                "catalogue = \"\"\n[policy]\npolicies = \"p.cedar\"",
                "are for `kind = \"cedar\"`",
            ),
            (
                "catalogue = \"\"\n[policy]\nkind = \"cedar\"\nentitlements = \"e.toml\"\npolicies = \"p.cedar\"",
                "remove `catalogue_file` and `catalogue`",
            ),
            (
                "[policy]\nkind = \"cedar\"\nentitlements = \"e.toml\"",
                "needs `entitlements` (JIT_CEDAR_ENTITLEMENTS) and `policies` (JIT_CEDAR_POLICIES)",
            ),
        ] {
            let err = policy_result(toml).unwrap_err();
            assert!(err.contains(want), "{toml}: {err}");
        }
    }

    #[cfg(not(feature = "cedar"))]
    #[test]
    fn cedar_in_a_build_without_the_feature_stops_the_start() {
        let err = policy_result(
            "[policy]\nkind = \"cedar\"\nentitlements = \"e.toml\"\npolicies = \"p.cedar\"",
        )
        .unwrap_err();
        assert!(err.contains("built with the `cedar` feature"), "{err}");
    }

    #[cfg(feature = "cedar")]
    #[test]
    fn cedar_files_are_read_and_checked_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let ents = dir.path().join("entitlements.toml");
        let pols = dir.path().join("policies.cedar");
        let cedar = |e: &std::path::Path, p: &std::path::Path| {
            policy_result(&format!(
                "[policy]\nkind = \"cedar\"\nentitlements = \"{}\"\npolicies = \"{}\"",
                e.display(),
                p.display()
            ))
        };
        std::fs::write(
            &ents,
            "[[entitlements]]\nid = \"db\"\nprovider = \"local\"\nmax_duration = \"1h\"\ntarget = { audience = \"db\" }\n",
        )
        .unwrap();
        std::fs::write(
            &pols,
            "@id(\"db: ops\")\npermit (principal in Jit::Group::\"ops\", action == Jit::Action::\"request\", resource == Jit::Entitlement::\"db\");\n",
        )
        .unwrap();
        assert_eq!(cedar(&ents, &pols).unwrap(), ["db"]);

        // A missing file is named, with which of the two it is.
        let missing = dir.path().join("nope.cedar");
        let err = cedar(&ents, &missing).unwrap_err();
        assert!(err.starts_with("policy: policies: cannot read"), "{err}");
        assert!(err.contains(&missing.display().to_string()), "{err}");
        let err = cedar(&missing, &pols).unwrap_err();
        assert!(
            err.starts_with("policy: entitlements: cannot read"),
            "{err}"
        );

        // A policy that does not type-check: its file, `@id` and line.
        std::fs::write(
            &pols,
            "@id(\"db: ops\")\npermit (principal, action == Jit::Action::\"request\", resource)\nwhen { context.no_such_field };\n",
        )
        .unwrap();
        let err = cedar(&ents, &pols).unwrap_err();
        assert!(err.contains(&pols.display().to_string()), "{err}");
        assert!(err.contains("cedar policy `db: ops` at line "), "{err}");

        // A bad entitlement file: that file is named.
        std::fs::write(
            &pols,
            "@id(\"db: ops\")\npermit (principal, action == Jit::Action::\"request\", resource);\n",
        )
        .unwrap();
        assert_eq!(cedar(&ents, &pols).unwrap(), ["db"]);
        std::fs::write(&ents, "[[entitlements]]\nid = \"db\"\n").unwrap();
        let err = cedar(&ents, &pols).unwrap_err();
        assert!(err.contains(&ents.display().to_string()), "{err}");
    }

    fn on_call_result(toml: &str, catalogue: &str) -> Result<String, String> {
        let store: Arc<dyn jit_core::Store> = Arc::new(MemoryStore::new());
        let policy = Arc::new(CataloguePolicy::from_toml_str(catalogue).unwrap());
        let o = Config::from_toml_str(&format!("{MIN}\n[on_call]\n{toml}"))
            .unwrap()
            .on_call;
        on_call_setup(Broker::builder(store, policy), &o)?
            .provider(Arc::new(jit_core::local::LocalProvider::new(
                jit_core::local::LocalKey::generate(),
                "jit",
            )))
            .build()
            .map(|b| format!("{b:?}"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn on_call_sources_are_built_from_the_config_and_bad_rotas_stop_the_start() {
        const CATALOGUE: &str = "[[entitlements]]\nid = \"pay\"\nprovider = \"local\"\nmax_duration = \"1h\"\ntarget = { audience = \"pay\" }\n[entitlements.eligible]\ngroups = [\"g\"]\n[entitlements.auto_approve]\non_call = [\"payments-primary\"]\n";
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("rota.toml");
        std::fs::write(
            &good,
            "[[schedules]]\nid = \"payments-primary\"\ntime_zone = \"Europe/Berlin\"\n[[schedules.weekly]]\nfrom = \"Mon 09:00\"\nuntil = \"Thu 09:00\"\nsubjects = [\"alice\"]\n",
        )
        .unwrap();
        let bad = dir.path().join("bad.toml");
        std::fs::write(
            &bad,
            "[[schedules]]\nid = \"payments-primary\"\ntime_zone = \"Europe/Berlin\"\n[[schedules.weekly]]\nfrom = \"Mon 9am\"\nuntil = \"Thu 09:00\"\nsubjects = [\"alice\"]\n",
        )
        .unwrap();
        let other = dir.path().join("other.toml");
        std::fs::write(
            &other,
            "[[schedules]]\nid = \"payments\"\ntime_zone = \"UTC\"\n[[schedules.weekly]]\nfrom = \"Mon 09:00\"\nuntil = \"Thu 09:00\"\nsubjects = [\"alice\"]\n",
        )
        .unwrap();
        assert!(on_call_result("", CATALOGUE).is_ok());
        assert!(on_call_result(
            &format!("rota_file = {:?}", good.display().to_string()),
            CATALOGUE
        )
        .is_ok());
        assert!(
            on_call_result("url = \"https://pager/oncalls\"\ncache_secs = 5", CATALOGUE).is_ok()
        );
        for (toml, want) in [
            (
                format!("rota_file = {:?}", bad.display().to_string()),
                "line 5: `schedules[0].weekly[0].from` is invalid: `Mon 9am` is not a day and a time",
            ),
            (
                format!("rota_file = {:?}", other.display().to_string()),
                "has no schedule `payments-primary`",
            ),
            ("rota_file = \"/nonexistent/rota.toml\"".into(), "cannot read `/nonexistent/rota.toml`"),
            (
                format!("rota_file = {:?}\nurl = \"https://pager\"", good.display().to_string()),
                "not both",
            ),
            ("cache_secs = 5".into(), "no URL"),
            ("url = \"ftp://pager\"".into(), "http or https"),
            (
                "url = \"https://pager\"\ntoken_file = \"/nonexistent/t\"".into(),
                "cannot read",
            ),
        ] {
            let err = on_call_result(&toml, CATALOGUE).unwrap_err();
            assert!(err.contains(want), "{toml}: {err}");
        }
    }

    #[test]
    fn risk_assessors_are_built_from_the_config_and_mistakes_are_refused() {
        assert!(risk_result("").is_ok());
        assert!(risk_result("assessor = \"history\"").is_ok());
        assert!(risk_result("assessor = \"http\"\nurl = \"https://risk/score\"").is_ok());
        for (toml, want) in [
            ("assessor = \"http\"", "needs a URL"),
            ("assessor = \"model\"", "unknown assessor `model`"),
            ("url = \"https://risk/score\"", "set the assessor to `http`"),
            (
                "assessor = \"history\"\nurl = \"https://risk/score\"",
                "takes no URL",
            ),
            ("assessor = \"http\"\nurl = \"ftp://risk\"", "http or https"),
            (
                "assessor = \"http\"\nurl = \"https://risk\"\ntoken_file = \"/nonexistent/risk-token\"",
                "cannot read",
            ),
        ] {
            let err = risk_result(toml).unwrap_err();
            assert!(err.contains(want), "{toml}: {err}");
        }
    }

    fn config(providers: &str) -> Config {
        let mut c = Config::from_toml_str(&format!("{MIN}\n{providers}")).unwrap();
        c.ignore_provider_env = true;
        c
    }

    async fn build(c: &Config, registry: &ProviderRegistry) -> Result<Vec<String>, String> {
        build_providers(c, Arc::new(MemoryStore::new()), registry)
            .await
            .map(|(ps, _)| ps.iter().map(|p| p.name().to_string()).collect())
    }

    #[tokio::test]
    async fn unknown_kinds_and_keys_stop_the_start_naming_the_table() {
        let err = build(
            &config("[providers.cloud]\nkind = \"oracle\"\n"),
            &provider_registry(),
        )
        .await
        .unwrap_err();
        assert!(
            err.contains(
                "provider `cloud`: kind `oracle` is not supported; known kinds: `aws`, `azure`, `gcp`, `local`"
            ),
            "{err}"
        );
        let err = build(
            &config("[providers.tokens]\nkind = \"local\"\nregion = \"eu-west-1\"\n"),
            &provider_registry(),
        )
        .await
        .unwrap_err();
        assert!(
            err.contains("provider `tokens` (kind `local`): unknown key `region`; known keys: `issuer`, `key_file`, `previous_key_files`, `max_duration`"),
            "{err}"
        );
        let err = build(
            &config("[providers.prod]\nkind = \"aws\"\nkey_file = \"k.pem\"\n"),
            &provider_registry(),
        )
        .await
        .unwrap_err();
        assert!(
            err.contains("provider `prod` (kind `aws`): unknown key `key_file`"),
            "{err}"
        );
        let err = build(
            &config("[providers.prod]\nkind = \"aws\"\nmax_duration = \"13h\"\n"),
            &provider_registry(),
        )
        .await
        .unwrap_err();
        assert!(
            err.contains("provider `prod`: `max_duration` is invalid"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn local_tables_are_built_and_published_with_paths_from_the_config_dir() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(
            "[providers.tokens]\nkind = \"local\"\nkey_file = \"tokens.pem\"\nissuer = \"acme\"\nmax_duration = \"2h\"\n[providers.local]\nkind = \"local\"\n",
        );
        c.base_dir = Some(dir.path().to_path_buf());
        let (providers, ctx) =
            build_providers(&c, Arc::new(MemoryStore::new()), &provider_registry())
                .await
                .unwrap();
        let names: Vec<&str> = providers.iter().map(|p| p.name()).collect();
        assert_eq!(names, ["local", "tokens"]);
        assert!(dir.path().join("tokens.pem").exists());
        let tokens = ctx.local_providers().get("tokens").unwrap();
        assert_eq!(tokens.issuer(), "acme");
        assert_eq!(
            providers[1].capabilities().max_duration,
            Duration::from_secs(7200)
        );
        assert_eq!(ctx.local_providers().get("local").unwrap().issuer(), "jit");
    }

    /// Another cloud: one registered factory, no server change.
    struct Other;

    #[async_trait]
    impl ProviderFactory for Other {
        fn kind(&self) -> &str {
            "other"
        }
        fn keys(&self) -> &[ConfigKey] {
            const KEYS: &[ConfigKey] = &[ConfigKey::required("tenant", "the tenant")];
            KEYS
        }
        async fn build(
            &self,
            name: &str,
            config: &ProviderConfig,
            ctx: &FactoryContext,
        ) -> jit_core::Result<Arc<dyn Provider>> {
            config.require("tenant")?;
            LocalFactory.build(name, &ProviderConfig::new(), ctx).await
        }
    }

    #[tokio::test]
    async fn a_new_kind_is_a_registered_factory() {
        let registry = provider_registry().with(Other);
        let c = config("[providers.azure-prod]\nkind = \"other\"\ntenant = \"t1\"\n");
        assert_eq!(build(&c, &registry).await.unwrap(), ["azure-prod"]);
        let err = build(&config("[providers.o]\nkind = \"other\"\n"), &registry)
            .await
            .unwrap_err();
        assert!(
            err.contains("provider `o` (kind `other`): `tenant` is required"),
            "{err}"
        );
        // Without the factory, the same table is refused.
        assert!(build(&c, &provider_registry()).await.is_err());
    }
}
