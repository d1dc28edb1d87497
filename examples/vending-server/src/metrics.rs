//! Prometheus metrics, and a provider wrapper that measures issue latency and
//! counts revocation failures (it forwards every method, like any wrapper).

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use jit_core::{
    Capabilities, Entitlement, GrantSpec, Issued, IssuedGrant, ListFilter, Provider, Result, State,
    Store,
};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric the server exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// HTTP requests by route and status.
    pub http_requests: IntCounterVec,
    /// Grants by state (set at scrape time).
    pub grants: IntGaugeVec,
    /// Provider issue latency.
    pub issue_seconds: HistogramVec,
    /// Provider revocation failures.
    pub revocation_failures: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> std::result::Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new(
                "jit_http_requests_total",
                "HTTP requests by route and status",
            ),
            &["route", "method", "status"],
        )?;
        let grants = IntGaugeVec::new(
            Opts::new("jit_requests", "Requests and grants by lifecycle state"),
            &["state"],
        )?;
        let issue_seconds = HistogramVec::new(
            HistogramOpts::new("jit_issue_seconds", "Provider issue latency by provider")
                .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0]),
            &["provider", "outcome"],
        )?;
        let revocation_failures = IntCounterVec::new(
            Opts::new(
                "jit_revocation_failures_total",
                "Failed provider revocation attempts by provider",
            ),
            &["provider"],
        )?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(grants.clone()))?;
        registry.register(Box::new(issue_seconds.clone()))?;
        registry.register(Box::new(revocation_failures.clone()))?;
        Ok(Self {
            registry,
            http_requests,
            grants,
            issue_seconds,
            revocation_failures,
        })
    }

    /// Refreshes the state gauges from the store, then renders the text format.
    pub async fn render(&self, store: &dyn Store) -> String {
        for s in State::ALL {
            let filter = ListFilter {
                states: vec![s],
                limit: 1_000_000,
                ..Default::default()
            };
            if let Ok(rs) = store.list(&filter).await {
                self.grants
                    .with_label_values(&[s.as_str()])
                    .set(rs.len() as i64);
            }
        }
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// A provider that records metrics around another.
#[derive(Debug)]
pub struct Measured {
    inner: Arc<dyn Provider>,
    metrics: Metrics,
}

impl Measured {
    /// Wraps a provider.
    pub fn new(inner: Arc<dyn Provider>, metrics: Metrics) -> Self {
        Self { inner, metrics }
    }
}

#[async_trait]
impl Provider for Measured {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn validate(&self, entitlement: &Entitlement) -> Result<()> {
        self.inner.validate(entitlement)
    }

    async fn issue(&self, spec: &GrantSpec) -> Result<Issued> {
        let t = Instant::now();
        let out = self.inner.issue(spec).await;
        let outcome = if out.is_ok() { "ok" } else { "error" };
        self.metrics
            .issue_seconds
            .with_label_values(&[self.inner.name(), outcome])
            .observe(t.elapsed().as_secs_f64());
        out
    }

    async fn revoke(&self, issued: &IssuedGrant) -> Result<()> {
        let out = self.inner.revoke(issued).await;
        if out.is_err() {
            self.metrics
                .revocation_failures
                .with_label_values(&[self.inner.name()])
                .inc();
        }
        out
    }

    async fn find(&self, spec: &GrantSpec) -> Result<Option<IssuedGrant>> {
        self.inner.find(spec).await
    }

    async fn record_by_name(&self, spec: &GrantSpec) -> Result<IssuedGrant> {
        self.inner.record_by_name(spec).await
    }

    async fn restore_revocations(&self, revoked: &[IssuedGrant]) -> Result<()> {
        self.inner.restore_revocations(revoked).await
    }
}
