//! Provider housekeeping ([`Provider::tidy`](crate::Provider::tidy)), which
//! the [`Reaper`](super::Reaper) runs on its own, slower cadence
//! ([`Reaper::tidy_every`](super::Reaper::tidy_every)).
//!
//! Each removal a provider reports is written into the audit trail of the
//! grant it belonged to, as [`AuditKind::Tidied`], in the same
//! compare-and-set way as every other step (the record's state does not
//! change). A removal is attributed only when the provider names the grant
//! and its request, and this store's record of that request holds that
//! grant of that provider: what the cloud says is checked, never trusted on
//! its own. A removal that cannot be attributed (a grant of another
//! deployment sharing the cloud resource, a record archived since) has no
//! trail to join: it is logged at `warn` with everything the provider said
//! and counted ([`TidySummary::unattributed`]). A provider call that fails,
//! in whole or in part, is logged and counted ([`TidySummary::failed`]) and
//! never stops the tick or the other providers.

use serde_json::json;

use crate::audit::AuditKind;
use crate::broker::{event, Broker, REAPER_ACTOR};
use crate::error::Result;
use crate::provider::Tidied;

/// What one [`Broker::tidy`] pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TidySummary {
    /// Things providers removed.
    pub removed: usize,
    /// Of those, how many were written into their grant's audit trail.
    pub audited: usize,
    /// Of those, how many had no record here to join (logged at `warn`).
    pub unattributed: usize,
    /// Provider calls, parts of them, or audit writes that failed (each logged).
    pub failed: usize,
}

impl Broker {
    /// Runs [`Provider::tidy`](crate::Provider::tidy) once on every provider
    /// whose capabilities say it has housekeeping to do, each with at most
    /// `budget` units of remote work, and audits what they removed: each
    /// removal joins its grant's audit trail as `tidied` only when the
    /// store's record of the named request holds that grant (what the cloud
    /// says is checked, never trusted alone); others are logged and counted
    /// as unattributed. Never fails as a whole: failures are logged and
    /// counted in the summary.
    pub async fn tidy(&self, budget: usize) -> TidySummary {
        let mut summary = TidySummary::default();
        let mut providers: Vec<_> = self.inner.providers.iter().collect();
        providers.sort_by(|a, b| a.0.cmp(b.0));
        for (name, provider) in providers {
            if !provider.capabilities().tidy {
                continue;
            }
            let report = match provider.tidy(budget.max(1)).await {
                Ok(r) => r,
                Err(e) => {
                    summary.failed += 1;
                    tracing::warn!(provider = %name, error = %e, "provider housekeeping failed; retried next time");
                    continue;
                }
            };
            for e in &report.errors {
                summary.failed += 1;
                tracing::warn!(provider = %name, error = %e, "part of the provider housekeeping failed; retried next time");
            }
            for t in &report.removed {
                summary.removed += 1;
                match self.audit_tidied(name, t).await {
                    Ok(true) => summary.audited += 1,
                    Ok(false) => {
                        summary.unattributed += 1;
                        tracing::warn!(
                            provider = %name,
                            resource = %t.resource,
                            external_id = %t.external_id,
                            grant = ?t.grant_id,
                            request = ?t.request_id,
                            details = %t.details,
                            "provider housekeeping removed something no record here owns; not in the audit chain"
                        );
                    }
                    Err(e) => {
                        summary.failed += 1;
                        tracing::warn!(
                            provider = %name,
                            resource = %t.resource,
                            external_id = %t.external_id,
                            error = %e,
                            "could not audit a housekeeping removal"
                        );
                    }
                }
            }
        }
        summary
    }

    /// Writes one removal into its grant's trail; `Ok(false)` when no
    /// record here holds that grant of that provider.
    async fn audit_tidied(&self, provider: &str, t: &Tidied) -> Result<bool> {
        let (Some(request), Some(grant)) = (t.request_id, t.grant_id) else {
            return Ok(false);
        };
        let Some(rec) = self.inner.store.get(request).await? else {
            return Ok(false);
        };
        let owned = rec.grant.as_ref().is_some_and(|g| {
            g.id == grant && g.issued.as_ref().is_some_and(|i| i.provider == provider)
        });
        if !owned {
            return Ok(false);
        }
        let details = json!({
            "provider": provider,
            "resource": t.resource,
            "external_id": t.external_id,
            "removed": t.details,
        });
        let (_, recs) = self
            .commit(request, |r, now| {
                Ok(vec![
                    event(AuditKind::Tidied, r, REAPER_ACTOR, now).details(details.clone())
                ])
            })
            .await?;
        self.forward(&recs).await?;
        Ok(true)
    }
}
