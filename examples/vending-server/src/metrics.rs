//! Prometheus metrics, and a provider wrapper that measures issue latency and
//! counts revocation failures (it forwards every method, like any wrapper).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use jit_core::{
    Capabilities, Entitlement, GrantSpec, Issued, IssuedGrant, Provider, Result, Store,
};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Every metric the server exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// HTTP requests by route and status.
    pub http_requests: IntCounterVec,
    /// Requests by state (read from the store at scrape time, cached).
    pub grants: IntGaugeVec,
    /// Provider issue latency.
    pub issue_seconds: HistogramVec,
    /// Provider revocation failures.
    pub revocation_failures: IntCounterVec,
    /// Failed store reads for the state gauges.
    pub store_errors: IntCounter,
    /// Records the reaper skipped since start because this replica does not
    /// know their entitlement or provider ([`jit_core::Broker::skipped_records`]).
    pub skipped_records: IntGauge,
    /// When the state gauges were last read from the store.
    counted_at: Arc<tokio::sync::Mutex<Option<Instant>>>,
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
        let store_errors = IntCounter::new(
            "jit_metrics_store_errors_total",
            "Failed store reads for the request gauges",
        )?;
        registry.register(Box::new(revocation_failures.clone()))?;
        registry.register(Box::new(store_errors.clone()))?;
        let skipped_records = IntGauge::new(
            "jit_reaper_skipped_records",
            "Records the reaper skipped since start: their entitlement or provider is not configured on this replica",
        )?;
        registry.register(Box::new(skipped_records.clone()))?;
        Ok(Self {
            registry,
            http_requests,
            grants,
            issue_seconds,
            revocation_failures,
            store_errors,
            skipped_records,
            counted_at: Arc::new(tokio::sync::Mutex::new(None)),
        })
    }

    /// Refreshes the state gauges from the store (at most once per
    /// `cache`, from the store's per-state counts, which it keeps as
    /// records change and never counts by reading records; concurrent
    /// scrapes share one read), then
    /// renders the text format. If the store fails, the gauges keep their
    /// last values and `jit_metrics_store_errors_total` counts the failure.
    pub async fn render(&self, store: &dyn Store, cache: Duration) -> String {
        {
            // Held across the query: a burst of scrapes makes one store read.
            let mut last = self.counted_at.lock().await;
            if last.is_none_or(|t| t.elapsed() >= cache) {
                match store.count_by_state().await {
                    Ok(counts) => {
                        for (s, n) in counts {
                            self.grants
                                .with_label_values(&[s.as_str()])
                                .set(i64::try_from(n).unwrap_or(i64::MAX));
                        }
                        *last = Some(Instant::now());
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics: cannot count requests by state");
                        self.store_errors.inc();
                    }
                }
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

    // Forwarded, or a provider's coarse fallback (AWS's role-wide deny when
    // its per-grant list is full) would never be used behind this wrapper.
    async fn revoke_reporting(&self, issued: &IssuedGrant) -> Result<jit_core::RevokeOutcome> {
        let out = self.inner.revoke_reporting(issued).await;
        if out.is_err() {
            self.metrics
                .revocation_failures
                .with_label_values(&[self.inner.name()])
                .inc();
        }
        out
    }

    fn cut_off_by(&self, collateral: &jit_core::Collateral, issued: &IssuedGrant) -> bool {
        self.inner.cut_off_by(collateral, issued)
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

    async fn tidy(&self, budget: usize) -> Result<jit_core::TidyReport> {
        self.inner.tidy(budget).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use jit_core::{Collateral, RevocationKind, RevokeOutcome};

    /// Revokes only coarsely: every revocation reports collateral.
    #[derive(Debug)]
    struct Coarse;

    #[async_trait]
    impl Provider for Coarse {
        fn name(&self) -> &str {
            "coarse"
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities::default()
                .with_native_expiry(true)
                .with_max_duration(std::time::Duration::from_secs(3600))
                .with_revocation(RevocationKind::Immediate)
        }
        fn validate(&self, _: &Entitlement) -> Result<()> {
            Ok(())
        }
        async fn issue(&self, _: &GrantSpec) -> Result<Issued> {
            Err(jit_core::Error::Store("not used".into()))
        }
        async fn revoke(&self, _: &IssuedGrant) -> Result<()> {
            Err(jit_core::Error::Store("only coarse revocation".into()))
        }
        async fn revoke_reporting(&self, _: &IssuedGrant) -> Result<RevokeOutcome> {
            Ok(RevokeOutcome::with_collateral(Collateral::new(
                "role",
                chrono::Utc::now(),
                "full",
            )))
        }
        fn cut_off_by(&self, _: &Collateral, _: &IssuedGrant) -> bool {
            true
        }
        async fn find(&self, _: &GrantSpec) -> Result<Option<IssuedGrant>> {
            Ok(None)
        }
        async fn tidy(&self, budget: usize) -> Result<jit_core::TidyReport> {
            Ok(jit_core::TidyReport::new(
                vec![],
                vec![jit_core::Error::Store(format!(
                    "tidied with budget {budget}"
                ))],
            ))
        }
    }

    // Regression: the wrapper did not forward `revoke_reporting` and
    // `cut_off_by`, so behind it the broker never got a provider's coarse
    // fallback (AWS's role-wide deny) nor its collateral.
    #[tokio::test]
    async fn coarse_revocations_pass_through_the_metrics_wrapper() {
        let m = Measured::new(Arc::new(Coarse), Metrics::new().unwrap());
        let g = IssuedGrant {
            provider: "coarse".into(),
            external_id: "x".into(),
            expires_at: chrono::Utc::now(),
            details: serde_json::Value::Null,
        };
        let c = m
            .revoke_reporting(&g)
            .await
            .unwrap()
            .collateral
            .expect("collateral lost in the wrapper");
        assert!(m.cut_off_by(&c, &g));
        // Regression: `tidy` was not forwarded either, so behind the
        // wrapper the reaper never pruned expired GCP bindings.
        let report = m.tidy(7).await.unwrap();
        assert_eq!(report.errors.len(), 1, "tidy not forwarded");
        assert!(report.errors[0].to_string().contains("budget 7"));
    }
}
