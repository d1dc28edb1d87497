//! The built-in assessor: a request against its requester's own history
//! and their peers'.
//!
//! # Signals and weights
//!
//! The score is the sum of the weights of the signals that fired, capped
//! at [`MAX_SCORE`](super::MAX_SCORE). Weights are the defaults of
//! [`Weights`]; change them with [`HistoryAssessor::weights`].
//!
//! | signal | default weight | fires when |
//! | --- | --- | --- |
//! | `first_for_entitlement` | 30 | the requester never asked for this entitlement before |
//! | `unusual_hour` | 15 | the requester has at least [`HistoryAssessor::min_hour_samples`] (10) past requests and none of them was made within an hour (of the day, UTC) of now |
//! | `long_duration` | 20 | the requester has at least 3 past requests for this entitlement and asks for more than [`HistoryAssessor::duration_factor`] (2) times their median duration for it |
//! | `burst` | 20 | the requester made at least [`HistoryAssessor::burst`] (5) requests, of any entitlement, in the last 10 minutes |
//! | `new_source` | 15 | the requester has past requests, and one of the request's context values `client`, `ip`, `source_ip` or `user_agent` ([`HistoryAssessor::source_keys`]) appears in none of them |
//! | `no_peer_uses` | 20 | the requester is in at least one group, and no one else in any of their groups asked for this entitlement |
//!
//! The weights are chosen so that one signal alone stays below a threshold
//! of 40 and two together (a first request from a new client, say) pass
//! it; the first request for an entitlement weighs most because it is the
//! classic sign of a stolen session exploring.
//!
//! # What it reads
//!
//! One [`Store::risk_facts`](crate::Store::risk_facts) call per request:
//! counts and yes-or-no answers from aggregates the stores keep in the
//! insert's transaction (see [`RiskFactsQuery`] and
//! [`crate::store::risk_facts`]), a few primary-key reads whatever the
//! history's size. They cover **every request the store holds**, not a
//! window of the latest ones: "never" above means "in none of the
//! requests the store holds", and once retention prunes a request
//! ([`Broker::archive_finished`](crate::Broker::archive_finished)) it no
//! longer counts, so the pattern follows the retention window. Sources
//! are the context keys of [`SOURCE_KEYS`];
//! [`HistoryAssessor::source_keys`] chooses among them.

use std::collections::BTreeSet;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Timelike, Utc};

use super::{RiskAssessment, RiskAssessor, RiskInput, RiskSignal};
use crate::error::Result;
use crate::store::{RiskFacts, RiskFactsQuery, SOURCE_KEYS};

/// The built-in signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Signal {
    /// The requester never asked for this entitlement before.
    FirstForEntitlement,
    /// Not an hour of the day the requester usually asks at.
    UnusualHour,
    /// Far longer than the requester usually asks this entitlement for.
    LongDuration,
    /// Many requests in a short time.
    Burst,
    /// A client, IP or user agent the requester never used.
    NewSource,
    /// No one in the requester's groups uses this entitlement.
    NoPeerUses,
}

impl Signal {
    /// Every signal.
    pub const ALL: [Signal; 6] = [
        Signal::FirstForEntitlement,
        Signal::UnusualHour,
        Signal::LongDuration,
        Signal::Burst,
        Signal::NewSource,
        Signal::NoPeerUses,
    ];

    /// The stable machine name.
    pub fn name(self) -> &'static str {
        match self {
            Signal::FirstForEntitlement => "first_for_entitlement",
            Signal::UnusualHour => "unusual_hour",
            Signal::LongDuration => "long_duration",
            Signal::Burst => "burst",
            Signal::NewSource => "new_source",
            Signal::NoPeerUses => "no_peer_uses",
        }
    }
}

/// The weight of each signal (see the [module docs](self) for the defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Weights {
    /// `first_for_entitlement` (30).
    pub first_for_entitlement: u8,
    /// `unusual_hour` (15).
    pub unusual_hour: u8,
    /// `long_duration` (20).
    pub long_duration: u8,
    /// `burst` (20).
    pub burst: u8,
    /// `new_source` (15).
    pub new_source: u8,
    /// `no_peer_uses` (20).
    pub no_peer_uses: u8,
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            first_for_entitlement: 30,
            unusual_hour: 15,
            long_duration: 20,
            burst: 20,
            new_source: 15,
            no_peer_uses: 20,
        }
    }
}

impl Weights {
    /// The weight of `signal`.
    pub fn of(&self, signal: Signal) -> u8 {
        match signal {
            Signal::FirstForEntitlement => self.first_for_entitlement,
            Signal::UnusualHour => self.unusual_hour,
            Signal::LongDuration => self.long_duration,
            Signal::Burst => self.burst,
            Signal::NewSource => self.new_source,
            Signal::NoPeerUses => self.no_peer_uses,
        }
    }
}

/// Scores a request against its requester's history (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct HistoryAssessor {
    weights: Weights,
    min_hour_samples: usize,
    min_duration_samples: usize,
    duration_factor: u32,
    burst_window: Duration,
    burst: usize,
    source_keys: Vec<String>,
}

impl Default for HistoryAssessor {
    fn default() -> Self {
        Self::new()
    }
}

impl HistoryAssessor {
    /// The defaults of the [module docs](self).
    pub fn new() -> Self {
        Self {
            weights: Weights::default(),
            min_hour_samples: 10,
            min_duration_samples: 3,
            duration_factor: 2,
            burst_window: Duration::from_secs(600),
            burst: 5,
            source_keys: SOURCE_KEYS.map(String::from).to_vec(),
        }
    }

    /// Uses these weights.
    pub fn weights(mut self, weights: Weights) -> Self {
        self.weights = weights;
        self
    }

    /// Past requests needed before `unusual_hour` can fire (default 10, at least 1).
    pub fn min_hour_samples(mut self, n: usize) -> Self {
        self.min_hour_samples = n.max(1);
        self
    }

    /// `long_duration` fires above this many times the median (default 2, at least 1).
    pub fn duration_factor(mut self, factor: u32) -> Self {
        self.duration_factor = factor.max(1);
        self
    }

    /// `burst` fires at `count` (at least 1) earlier requests within `window` (default 5 in 10 minutes).
    pub fn burst(mut self, count: usize, window: Duration) -> Self {
        self.burst = count.max(1);
        self.burst_window = window;
        self
    }

    /// The request-context keys `new_source` compares: any of
    /// [`SOURCE_KEYS`] (the default is all of them). The stores keep no
    /// other key's values, so another key could only ever look new: it is
    /// left out, with a warning.
    pub fn source_keys(mut self, keys: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.source_keys = keys
            .into_iter()
            .map(Into::into)
            .filter(|k: &String| {
                let kept = SOURCE_KEYS.contains(&k.as_str());
                if !kept {
                    tracing::warn!(key = %k, "risk review keeps no source under this context key; left out");
                }
                kept
            })
            .collect();
        self
    }

    fn fire(&self, out: &mut Vec<RiskSignal>, signal: Signal, reason: String) {
        let weight = self.weights.of(signal);
        if weight > 0 {
            out.push(RiskSignal {
                name: signal.name().to_string(),
                weight,
                reason,
            });
        }
    }

    /// What to ask the store about `input`.
    fn facts_query(&self, input: &RiskInput<'_>) -> RiskFactsQuery {
        let window =
            chrono::TimeDelta::from_std(self.burst_window).unwrap_or(chrono::TimeDelta::MAX);
        RiskFactsQuery {
            requester: input.requester.id.as_str().to_string(),
            entitlement: input.entitlement.id.clone(),
            groups: input.requester.groups.clone(),
            sources: self
                .source_keys
                .iter()
                .filter_map(|k| {
                    let v = input.request.context.get(k.as_str())?;
                    Some((k.clone(), v.clone()))
                })
                .collect(),
            since: input
                .now
                .checked_sub_signed(window)
                .unwrap_or(DateTime::<Utc>::MIN_UTC),
        }
    }

    /// The signals, from the facts the store answered for `query` (pure:
    /// the tests construct histories and call this through
    /// [`RiskAssessor::assess`]).
    fn signals(
        &self,
        input: &RiskInput<'_>,
        query: &RiskFactsQuery,
        facts: &RiskFacts,
    ) -> Vec<RiskSignal> {
        let mut out = Vec::new();
        let ent = input.entitlement.id.as_str();
        let now = input.now;

        if !facts.asked_before() {
            self.fire(
                &mut out,
                Signal::FirstForEntitlement,
                format!("first request for `{ent}`"),
            );
        }

        if facts.requests >= self.min_hour_samples as u64 {
            let hour = now.hour();
            let usual = (0u32..)
                .zip(facts.hours)
                .any(|(h, n)| n > 0 && hour_distance(h, hour) <= 1);
            if !usual {
                self.fire(
                    &mut out,
                    Signal::UnusualHour,
                    format!(
                        "none of their {} requests was made within an hour of {hour:02}:00 UTC",
                        facts.requests
                    ),
                );
            }
        }

        if facts.entitlement_requests >= self.min_duration_samples as u64 {
            let median = facts.median_duration.unwrap_or_default().as_secs();
            let asked = input.request.duration.as_secs();
            if asked > median.saturating_mul(u64::from(self.duration_factor)) {
                self.fire(
                    &mut out,
                    Signal::LongDuration,
                    format!(
                        "`{}` is more than {}x the usual `{}` for `{ent}`",
                        input.request.duration,
                        self.duration_factor,
                        crate::types::format_duration(Duration::from_secs(median))
                    ),
                );
            }
        }

        if facts.since >= self.burst as u64 {
            self.fire(
                &mut out,
                Signal::Burst,
                format!(
                    "{} earlier requests in the last {}",
                    facts.since,
                    crate::types::format_duration(self.burst_window)
                ),
            );
        }

        if facts.requests > 0 {
            let unseen: Vec<String> = query
                .sources
                .iter()
                .zip(&facts.sources_seen)
                .filter(|(_, seen)| !**seen)
                .map(|((k, _), _)| format!("`{k}`"))
                .collect();
            if !unseen.is_empty() {
                // Names the keys, not the values: an IP or user agent is
                // personal data the approver does not need in the reason.
                self.fire(
                    &mut out,
                    Signal::NewSource,
                    format!(
                        "{} not seen in their {} requests",
                        unseen.join(", "),
                        facts.requests
                    ),
                );
            }
        }

        let groups = &input.requester.groups;
        if !groups.is_empty() && !facts.peer_used {
            self.fire(
                &mut out,
                Signal::NoPeerUses,
                format!("no one else in {} asked for `{ent}`", quote(groups)),
            );
        }
        out
    }
}

fn quote(items: &BTreeSet<String>) -> String {
    items
        .iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Hours apart on a 24-hour clock (23 and 0 are one apart).
fn hour_distance(a: u32, b: u32) -> u32 {
    let d = a.abs_diff(b) % 24;
    d.min(24 - d)
}

#[async_trait]
impl RiskAssessor for HistoryAssessor {
    fn name(&self) -> &str {
        "history"
    }

    async fn assess(&self, input: &RiskInput<'_>) -> Result<RiskAssessment> {
        let query = self.facts_query(input);
        let facts = input.history.facts(&query).await?;
        Ok(RiskAssessment::from_signals(
            self.name(),
            self.signals(input, &query, &facts),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_wrap_around_midnight() {
        assert_eq!(hour_distance(23, 0), 1);
        assert_eq!(hour_distance(0, 23), 1);
        assert_eq!(hour_distance(3, 15), 12);
        assert_eq!(hour_distance(9, 9), 0);
        assert_eq!(hour_distance(22, 1), 3);
    }

    #[test]
    fn every_signal_has_a_distinct_name_and_a_default_weight() {
        let w = Weights::default();
        let names: BTreeSet<&str> = Signal::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(names.len(), Signal::ALL.len());
        assert!(Signal::ALL.iter().all(|s| w.of(*s) > 0));
        // One signal alone stays under 40; the heaviest two together pass it.
        assert!(Signal::ALL.iter().all(|s| w.of(*s) < 40));
        assert!(w.first_for_entitlement + w.burst > 40);
    }
}
