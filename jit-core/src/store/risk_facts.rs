//! What risk review asks the store ([`Store::risk_facts`](super::Store::risk_facts)):
//! the few facts the built-in assessor scores, answered from indexes
//! instead of reading and decoding whole past requests.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};

use super::{HistoryEntry, HistoryQuery};
use crate::error::{Error, Result};

/// The facts [`Store::risk_facts`](super::Store::risk_facts) answers about
/// one request about to be decided. Three windows bound what is read, each
/// newest first by `created_at` (like [`HistoryQuery`], 100 when zero and
/// [`MAX_HISTORY`](super::MAX_HISTORY) at most):
///
/// - **recent**: the requester's latest [`recent`](Self::recent) requests,
///   of any entitlement: the hour histogram, the burst count and the
///   sources;
/// - **entitlement**: the requester's latest
///   [`entitlement_recent`](Self::entitlement_recent) requests for the
///   entitlement: whether they asked before, and their durations;
/// - **peers**: the entitlement's latest [`peers_recent`](Self::peers_recent)
///   requests by anyone else: whether one was made by someone in one of
///   [`groups`](Self::groups) (not read at all when `groups` is empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RiskFactsQuery {
    /// The requester's exact subject id.
    pub requester: String,
    /// The entitlement asked for.
    pub entitlement: String,
    /// The requester's groups now: a peer is someone else who was in one
    /// of them when they asked.
    pub groups: BTreeSet<String>,
    /// The request's sources, as `(context key, value)`: each is looked
    /// for under the same key in the recent window.
    pub sources: Vec<(String, String)>,
    /// Recent requests made at or after this instant are counted in
    /// [`RiskFacts::since`] (the burst window's start).
    pub since: DateTime<Utc>,
    /// The recent window's size.
    pub recent: usize,
    /// The entitlement window's size.
    pub entitlement_recent: usize,
    /// The peer window's size.
    pub peers_recent: usize,
}

impl RiskFactsQuery {
    /// Facts about `requester` asking for `entitlement`, with windows of
    /// 100, no groups, no sources and no burst window (`since` in the
    /// future counts nothing).
    pub fn new(requester: &str, entitlement: &str) -> Self {
        Self {
            requester: requester.to_string(),
            entitlement: entitlement.to_string(),
            groups: BTreeSet::new(),
            sources: Vec::new(),
            since: DateTime::<Utc>::MAX_UTC,
            recent: 0,
            entitlement_recent: 0,
            peers_recent: 0,
        }
    }

    /// A window's effective size: 100 when zero, at most
    /// [`MAX_HISTORY`](super::MAX_HISTORY).
    pub fn window(n: usize) -> usize {
        HistoryQuery {
            limit: n,
            ..HistoryQuery::default()
        }
        .effective_limit()
    }

    /// Checks the query names a requester and an entitlement.
    pub fn check(&self) -> Result<()> {
        if self.requester.is_empty() || self.entitlement.is_empty() {
            return Err(Error::Store(
                "a risk facts query names a requester and an entitlement".into(),
            ));
        }
        Ok(())
    }

    /// The three history lookups the facts are defined by (what the
    /// default [`Store::risk_facts`](super::Store::risk_facts) reads): the
    /// recent window, the entitlement window, and the peer window (`None`
    /// without groups).
    pub fn history_queries(&self) -> (HistoryQuery, HistoryQuery, Option<HistoryQuery>) {
        let who = self.requester.as_str();
        let ent = self.entitlement.as_str();
        (
            HistoryQuery::of_requester(who, Self::window(self.recent)),
            HistoryQuery::of_requester(who, Self::window(self.entitlement_recent))
                .for_entitlement(ent),
            (!self.groups.is_empty()).then(|| {
                HistoryQuery::of_entitlement(ent, Self::window(self.peers_recent)).excluding(who)
            }),
        )
    }
}

/// The answer to a [`RiskFactsQuery`]. Every store gives the same facts
/// for the same history (the conformance suite checks it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RiskFacts {
    /// How many requests the recent window holds.
    pub recent: usize,
    /// The recent window's requests by the hour of the day (UTC) they were
    /// made at; sums to [`recent`](Self::recent).
    pub hours: [u32; 24],
    /// How many of the recent window's requests were made at or after
    /// [`RiskFactsQuery::since`].
    pub since: usize,
    /// For each of [`RiskFactsQuery::sources`], in order: whether a request
    /// of the recent window carried that value under that key.
    pub sources_seen: Vec<bool>,
    /// How many requests the entitlement window holds (0: the requester
    /// never asked for the entitlement).
    pub entitlement_requests: usize,
    /// How many of those have a readable duration.
    pub durations: usize,
    /// The median of those durations (the lower middle of an even count);
    /// `None` when there are none.
    pub median_duration: Option<Duration>,
    /// Whether a request of the peer window was made by someone in one of
    /// [`RiskFactsQuery::groups`] (at the time they asked). A yes or no
    /// rather than a count, so the stores stop at the first one.
    pub peer_used: bool,
}

impl RiskFacts {
    /// Whether the requester asked for the entitlement before.
    pub fn asked_before(&self) -> bool {
        self.entitlement_requests > 0
    }

    /// The facts a store's history gives: `mine`, `here` and `peers` are
    /// the answers to [`RiskFactsQuery::history_queries`] (peers empty when
    /// there is no peer lookup). This is what the facts mean; stores that
    /// answer them another way must agree with it.
    pub fn from_history(
        query: &RiskFactsQuery,
        mine: &[HistoryEntry],
        here: &[HistoryEntry],
        peers: &[HistoryEntry],
    ) -> Self {
        let mut t = Tally::new(query);
        for e in mine {
            t.mine(e.created_at, |k| e.context.get(k).map(String::as_str));
        }
        for e in here {
            t.here(Some(e.duration.get().as_secs()));
        }
        for e in peers {
            if t.peer(e.groups.iter().map(String::as_str)) {
                break;
            }
        }
        t.finish()
    }
}

/// Facts accumulated one past request at a time, window by window (the
/// default implementation and the memory store).
pub(crate) struct Tally<'q> {
    query: &'q RiskFactsQuery,
    facts: RiskFacts,
    durations: Vec<u64>,
}

impl<'q> Tally<'q> {
    pub(crate) fn new(query: &'q RiskFactsQuery) -> Self {
        Self {
            query,
            facts: RiskFacts {
                sources_seen: vec![false; query.sources.len()],
                ..RiskFacts::default()
            },
            durations: Vec::new(),
        }
    }

    /// One request of the recent window, with its context's values by key.
    pub(crate) fn mine<'a>(
        &mut self,
        created_at: DateTime<Utc>,
        context: impl Fn(&str) -> Option<&'a str>,
    ) {
        self.facts.recent += 1;
        if let Some(h) = self.facts.hours.get_mut(created_at.hour() as usize) {
            *h += 1;
        }
        if created_at >= self.query.since {
            self.facts.since += 1;
        }
        for ((key, value), seen) in self
            .query
            .sources
            .iter()
            .zip(self.facts.sources_seen.iter_mut())
        {
            if !*seen && context(key) == Some(value.as_str()) {
                *seen = true;
            }
        }
    }

    /// One request of the entitlement window, with its duration in seconds.
    pub(crate) fn here(&mut self, duration_secs: Option<u64>) {
        self.facts.entitlement_requests += 1;
        if let Some(d) = duration_secs {
            self.durations.push(d);
        }
    }

    /// One request of the peer window, with its requester's groups then;
    /// true once a peer is found (nothing further changes the facts).
    pub(crate) fn peer<'a>(&mut self, mut groups: impl Iterator<Item = &'a str>) -> bool {
        if !self.facts.peer_used && groups.any(|g| self.query.groups.contains(g)) {
            self.facts.peer_used = true;
        }
        self.facts.peer_used
    }

    pub(crate) fn finish(mut self) -> RiskFacts {
        self.durations.sort_unstable();
        self.facts.durations = self.durations.len();
        self.facts.median_duration = self
            .durations
            .get(self.durations.len().saturating_sub(1) / 2)
            .map(|s| Duration::from_secs(*s));
        self.facts
    }
}

/// `since` as fixed-width timestamp text (see `sql::timestamp`) for the SQL
/// stores' comparisons, clamped to what they can order: before the year
/// 0000 everything is after it, after 9999 nothing is.
#[cfg(feature = "postgres")]
pub(crate) fn since_text(since: DateTime<Utc>) -> String {
    use chrono::Datelike;
    match super::sql::timestamp(since, "sql") {
        Ok(t) => t,
        Err(_) if since.year() < 0 => String::new(),
        Err(_) => "~".to_string(),
    }
}

/// One row of the SQL stores' facts query as the columns they select, in
/// order: recent count, since count, 24 hour counts, entitlement count,
/// duration count, median seconds, one 0/1 per source, peer 0/1.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn from_columns(query: &RiskFactsQuery, cols: &[Option<i64>]) -> Result<RiskFacts> {
    let expected = 2 + 24 + 3 + query.sources.len() + 1;
    if cols.len() != expected {
        return Err(Error::Store(format!(
            "risk facts: {} columns where {expected} were expected",
            cols.len()
        )));
    }
    let count = |i: usize| -> usize {
        cols.get(i)
            .copied()
            .flatten()
            .and_then(|v| usize::try_from(v).ok())
            .unwrap_or(0)
    };
    let mut hours = [0u32; 24];
    for (h, slot) in hours.iter_mut().enumerate() {
        *slot = u32::try_from(count(2 + h)).unwrap_or(u32::MAX);
    }
    let durations = count(27);
    Ok(RiskFacts {
        recent: count(0),
        since: count(1),
        hours,
        entitlement_requests: count(26),
        durations,
        median_duration: cols
            .get(28)
            .copied()
            .flatten()
            .and_then(|s| u64::try_from(s).ok())
            .filter(|_| durations > 0)
            .map(Duration::from_secs),
        sources_seen: (0..query.sources.len())
            .map(|i| count(29 + i) > 0)
            .collect(),
        peer_used: count(29 + query.sources.len()) > 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_sizes_follow_history_limits() {
        assert_eq!(RiskFactsQuery::window(0), 100);
        assert_eq!(RiskFactsQuery::window(7), 7);
        assert_eq!(
            RiskFactsQuery::window(usize::MAX),
            super::super::MAX_HISTORY
        );
    }

    #[test]
    fn a_query_names_requester_and_entitlement() {
        assert!(RiskFactsQuery::new("bob", "db").check().is_ok());
        for q in [
            RiskFactsQuery::new("", "db"),
            RiskFactsQuery::new("bob", ""),
        ] {
            assert!(matches!(q.check(), Err(Error::Store(_))), "{q:?}");
        }
    }

    #[test]
    fn the_median_is_the_lower_middle() {
        let q = RiskFactsQuery::new("bob", "db");
        let mut t = Tally::new(&q);
        for d in [400, 100, 300, 200] {
            t.here(Some(d));
        }
        t.here(None);
        let f = t.finish();
        assert_eq!((f.entitlement_requests, f.durations), (5, 4));
        assert_eq!(f.median_duration, Some(Duration::from_secs(200)));
        assert_eq!(Tally::new(&q).finish().median_duration, None);
        let median = |values: &[u64]| {
            let mut t = Tally::new(&q);
            values.iter().for_each(|d| t.here(Some(*d)));
            t.finish().median_duration.map(|d| d.as_secs())
        };
        assert_eq!(median(&[1]), Some(1));
        assert_eq!(median(&[3, 1, 2]), Some(2));
        assert_eq!(median(&[100, 1, 2, 3]), Some(2));
    }
}
