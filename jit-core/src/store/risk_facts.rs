//! What risk review asks the store ([`Store::risk_facts`](super::Store::risk_facts)),
//! and the aggregates the stores keep so that answering it is a few
//! primary-key reads instead of a walk over past requests.
//!
//! # The aggregates
//!
//! Every request a store holds adds, once, what the six signals need
//! (`Contribution`): its requester's hour of the day, its duration for
//! its entitlement, its source values (the context keys of
//! [`SOURCE_KEYS`]) and, for each group its requester was in when they
//! asked, that the group used the entitlement. The request counts as
//! submitted: [`Store::update`](super::Store::update) changes a record's
//! state, approvals and grant, never who asked for what, when or from
//! where, so updates leave the aggregates alone.
//!
//! - **Kept in the insert's transaction**, so they never count a request
//!   that was rolled back, and survive restarts with the records.
//! - **Taken out by [`Store::prune`](super::Store::prune)** in the prune's
//!   transaction: the aggregates describe exactly the requests the store
//!   holds, so retention bounds them as it bounds the records, and an
//!   archived request no longer counts (a requester whose every request
//!   for an entitlement was archived asks for it "for the first time"
//!   again: more scrutiny, never less).
//! - **Counts, never windows.** Each fact is about every request the
//!   store holds (before retention prunes them), not the latest N: the
//!   facts of a history are [`RiskFacts::from_history`] of all of it.
//! - **The same in every store.** The memory store keeps them in maps
//!   (`Profiles`); the SQL stores in four tables keyed by requester or
//!   entitlement, written from `Deltas` (signed counts, so an insert
//!   adds one and a prune takes one away through the same statements, as
//!   upserts that two writers can run at once). The logic of what a
//!   request adds lives here, once; the stores only move the counts.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};

use super::{HistoryEntry, HistoryQuery, MAX_HISTORY};
use crate::error::{Error, Result};
use crate::types::RequestRecord;

/// The request-context keys whose values the stores keep for risk review
/// (the `new_source` signal): a client name, an IP address (the vending
/// server's `ip`, the Lambda function's `source_ip`) and a user agent.
/// Other context keys (request ids, tracing) are unique per request and
/// are not kept; a [`RiskFactsQuery`] may ask about these keys only.
pub const SOURCE_KEYS: [&str; 4] = ["client", "ip", "source_ip", "user_agent"];

/// The most sources one [`RiskFactsQuery`] may ask about.
pub const MAX_SOURCES: usize = 32;

/// The facts [`Store::risk_facts`](super::Store::risk_facts) answers about
/// one request about to be decided, from every request the store holds
/// (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RiskFactsQuery {
    /// The requester's exact subject id.
    pub requester: String,
    /// The entitlement asked for.
    pub entitlement: String,
    /// The requester's groups now: a peer is someone else who was in one
    /// of them when they asked for the entitlement.
    pub groups: BTreeSet<String>,
    /// The request's sources, as `(context key, value)`, each key one of
    /// [`SOURCE_KEYS`], at most [`MAX_SOURCES`]: whether the requester used
    /// that value under that key before.
    pub sources: Vec<(String, String)>,
    /// The requester's requests made at or after this instant are counted
    /// in [`RiskFacts::since`] (the burst window's start).
    pub since: DateTime<Utc>,
}

impl RiskFactsQuery {
    /// Facts about `requester` asking for `entitlement`, with no groups, no
    /// sources and no burst window (`since` in the future counts nothing).
    pub fn new(requester: &str, entitlement: &str) -> Self {
        Self {
            requester: requester.to_string(),
            entitlement: entitlement.to_string(),
            groups: BTreeSet::new(),
            sources: Vec::new(),
            since: DateTime::<Utc>::MAX_UTC,
        }
    }

    /// Checks the query names a requester and an entitlement, and asks
    /// only about the sources the stores keep ([`SOURCE_KEYS`]).
    pub fn check(&self) -> Result<()> {
        if self.requester.is_empty() || self.entitlement.is_empty() {
            return Err(Error::Store(
                "a risk facts query names a requester and an entitlement".into(),
            ));
        }
        if let Some((key, _)) = self.sources.iter().find(|(k, _)| source_key(k).is_none()) {
            return Err(Error::Store(format!(
                "the stores keep no source under the context key `{key}`: ask about {}",
                SOURCE_KEYS.map(|k| format!("`{k}`")).join(", ")
            )));
        }
        Ok(())
    }

    /// The history lookups the default
    /// [`Store::risk_facts`](super::Store::risk_facts) reads (at most
    /// [`MAX_HISTORY`] each, newest first): the requester's requests, and
    /// the entitlement's by everyone else (`None` without groups). The
    /// facts of those are exact up to that many; beyond it, of the newest.
    pub fn history_queries(&self) -> (HistoryQuery, Option<HistoryQuery>) {
        let who = self.requester.as_str();
        (
            HistoryQuery::of_requester(who, MAX_HISTORY),
            (!self.groups.is_empty()).then(|| {
                HistoryQuery::of_entitlement(&self.entitlement, MAX_HISTORY).excluding(who)
            }),
        )
    }
}

/// The answer to a [`RiskFactsQuery`]. Every store gives the same facts
/// for the same history (the conformance suite checks it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RiskFacts {
    /// How many requests of the requester the store holds.
    pub requests: u64,
    /// Those requests by the hour of the day (UTC) they were made at; sums
    /// to [`requests`](Self::requests).
    pub hours: [u64; 24],
    /// How many of them were made at or after [`RiskFactsQuery::since`].
    pub since: u64,
    /// For each of [`RiskFactsQuery::sources`], in order: whether one of
    /// the requester's requests carried that value under that key.
    pub sources_seen: Vec<bool>,
    /// How many of the requester's requests are for the entitlement (0:
    /// they never asked for it).
    pub entitlement_requests: u64,
    /// The median duration of those (the lower middle of an even count);
    /// `None` when there are none.
    pub median_duration: Option<Duration>,
    /// Whether someone else, in one of [`RiskFactsQuery::groups`] when they
    /// asked, asked for the entitlement.
    pub peer_used: bool,
}

impl RiskFacts {
    /// Whether the requester asked for the entitlement before.
    pub fn asked_before(&self) -> bool {
        self.entitlement_requests > 0
    }

    /// The facts a history gives: `mine` is every request of the requester,
    /// `peers` every request for the entitlement by someone else (empty
    /// when the query has no groups), as [`RiskFactsQuery::history_queries`]
    /// reads them. This is what the facts mean; stores that keep
    /// aggregates must agree with it.
    pub fn from_history(
        query: &RiskFactsQuery,
        mine: &[HistoryEntry],
        peers: &[HistoryEntry],
    ) -> Self {
        let mut p = Profiles::default();
        for e in mine.iter().chain(peers) {
            p.add(&Contribution::of_entry(e));
        }
        p.facts(query)
    }

    /// The SQL stores' facts statement's one row: the requester's hours
    /// and the entitlement's durations as `key:count` pairs joined by
    /// commas, the burst count, whether a peer asked, and the sources seen
    /// as a bit mask (bit `i`: source `i`).
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) fn from_row(
        query: &RiskFactsQuery,
        hours: Option<&str>,
        durations: Option<&str>,
        since: i64,
        peer: bool,
        sources: i64,
    ) -> Result<Self> {
        let pairs = |text: Option<&str>| -> Result<Vec<(u64, u64)>> {
            text.unwrap_or_default()
                .split(',')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, n) = p.split_once(':').unwrap_or((p, ""));
                    match (k.trim().parse(), n.trim().parse()) {
                        (Ok(k), Ok(n)) => Ok((k, n)),
                        _ => Err(Error::Store(format!("risk facts: `{p}` is not a count"))),
                    }
                })
                .collect()
        };
        let mut facts = RiskFacts {
            since: u64::try_from(since).unwrap_or(0),
            peer_used: peer,
            sources_seen: (0..query.sources.len())
                .map(|i| i < 63 && sources & (1 << i) != 0)
                .collect(),
            ..RiskFacts::default()
        };
        for (h, n) in pairs(hours)? {
            let slot = usize::try_from(h)
                .ok()
                .and_then(|h| facts.hours.get_mut(h))
                .ok_or_else(|| Error::Store(format!("risk facts: an hour of {h} is stored")))?;
            *slot += n;
            facts.requests += n;
        }
        (facts.entitlement_requests, facts.median_duration) = median(pairs(durations)?);
        Ok(facts)
    }
}

/// How many durations, and their lower median, from `(seconds, count)`
/// pairs in any order.
fn median(mut durations: Vec<(u64, u64)>) -> (u64, Option<Duration>) {
    durations.sort_unstable();
    let total: u64 = durations.iter().map(|(_, n)| n).sum();
    if total == 0 {
        return (0, None);
    }
    // The lower middle: the ((total - 1) / 2)th duration, counting from 0.
    let middle = (total - 1) / 2;
    let mut seen = 0u64;
    for (secs, n) in durations {
        seen += n;
        if seen > middle {
            return (total, Some(Duration::from_secs(secs)));
        }
    }
    (total, None)
}

/// Where `key` is in [`SOURCE_KEYS`].
fn source_key(key: &str) -> Option<usize> {
    SOURCE_KEYS.iter().position(|k| *k == key)
}

/// What one request adds to the aggregates (see the [module docs](self)).
#[derive(Debug, Clone)]
pub(crate) struct Contribution<'a> {
    pub(crate) requester: &'a str,
    pub(crate) entitlement: &'a str,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) secs: u64,
    /// The requester's groups when they asked.
    pub(crate) groups: &'a BTreeSet<String>,
    /// `(index in SOURCE_KEYS, value)` of the context's source values.
    pub(crate) sources: Vec<(usize, &'a str)>,
}

impl<'a> Contribution<'a> {
    /// The request `r` as submitted.
    pub(crate) fn of(r: &'a RequestRecord) -> Self {
        Self::new(
            r.requester.id.as_str(),
            &r.request.entitlement,
            r.created_at,
            r.request.duration.as_secs(),
            &r.requester.groups,
            &r.request.context,
        )
    }

    /// A history entry (the default implementation and the definition).
    pub(crate) fn of_entry(e: &'a HistoryEntry) -> Self {
        Self::new(
            &e.requester,
            &e.entitlement,
            e.created_at,
            e.duration.as_secs(),
            &e.groups,
            &e.context,
        )
    }

    fn new(
        requester: &'a str,
        entitlement: &'a str,
        created_at: DateTime<Utc>,
        secs: u64,
        groups: &'a BTreeSet<String>,
        context: &'a BTreeMap<String, String>,
    ) -> Self {
        Self {
            requester,
            entitlement,
            created_at,
            secs,
            groups,
            sources: SOURCE_KEYS
                .iter()
                .enumerate()
                .filter_map(|(i, k)| Some((i, context.get(*k)?.as_str())))
                .collect(),
        }
    }

    /// The hour of the day (UTC) it was made at.
    pub(crate) fn hour(&self) -> u8 {
        // `hour()` is below 24.
        u8::try_from(self.created_at.hour()).unwrap_or(0)
    }
}

/// The aggregates in memory: the memory store's, and the default
/// implementation's (built from history for one query).
#[derive(Debug, Default)]
pub(crate) struct Profiles {
    requesters: HashMap<String, Profile>,
    /// `(entitlement, group)` → requester → requests.
    peers: HashMap<(String, String), BTreeMap<String, u64>>,
}

/// One requester's aggregates.
#[derive(Debug, Default)]
struct Profile {
    requests: u64,
    hours: [u64; 24],
    /// When each request was made, in order (the burst count).
    created: Vec<DateTime<Utc>>,
    /// Entitlement → duration in seconds → requests.
    durations: HashMap<String, BTreeMap<u64, u64>>,
    /// `(index in SOURCE_KEYS, value)` → requests.
    sources: BTreeMap<(usize, String), u64>,
}

/// Takes one from a count, removing it at zero; whether the map is empty then.
fn take_one<K: Ord>(map: &mut BTreeMap<K, u64>, key: &K) -> bool {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
    map.is_empty()
}

impl Profiles {
    /// Counts one request in.
    pub(crate) fn add(&mut self, c: &Contribution<'_>) {
        let p = self.requesters.entry(c.requester.to_string()).or_default();
        p.requests += 1;
        if let Some(h) = p.hours.get_mut(usize::from(c.hour())) {
            *h += 1;
        }
        let at = p.created.partition_point(|t| *t <= c.created_at);
        p.created.insert(at, c.created_at);
        *p.durations
            .entry(c.entitlement.to_string())
            .or_default()
            .entry(c.secs)
            .or_default() += 1;
        for (k, v) in &c.sources {
            *p.sources.entry((*k, (*v).to_string())).or_default() += 1;
        }
        for g in c.groups {
            *self
                .peers
                .entry((c.entitlement.to_string(), g.clone()))
                .or_default()
                .entry(c.requester.to_string())
                .or_default() += 1;
        }
    }

    /// Counts one request out (a prune): exactly what [`Profiles::add`]
    /// counted in for the same request.
    pub(crate) fn remove(&mut self, c: &Contribution<'_>) {
        if let Some(p) = self.requesters.get_mut(c.requester) {
            p.requests = p.requests.saturating_sub(1);
            if let Some(h) = p.hours.get_mut(usize::from(c.hour())) {
                *h = h.saturating_sub(1);
            }
            if let Ok(at) = p.created.binary_search(&c.created_at) {
                p.created.remove(at);
            }
            if let Some(d) = p.durations.get_mut(c.entitlement) {
                if take_one(d, &c.secs) {
                    p.durations.remove(c.entitlement);
                }
            }
            for (k, v) in &c.sources {
                take_one(&mut p.sources, &(*k, (*v).to_string()));
            }
            if p.requests == 0 {
                self.requesters.remove(c.requester);
            }
        }
        for g in c.groups {
            let key = (c.entitlement.to_string(), g.clone());
            if let Some(who) = self.peers.get_mut(&key) {
                if take_one(who, &c.requester.to_string()) {
                    self.peers.remove(&key);
                }
            }
        }
    }

    /// The facts for `q`.
    pub(crate) fn facts(&self, q: &RiskFactsQuery) -> RiskFacts {
        let mut facts = RiskFacts {
            sources_seen: vec![false; q.sources.len()],
            ..RiskFacts::default()
        };
        if let Some(p) = self.requesters.get(&q.requester) {
            facts.requests = p.requests;
            facts.hours = p.hours;
            facts.since = (p.created.len() - p.created.partition_point(|t| *t < q.since)) as u64;
            for ((key, value), seen) in q.sources.iter().zip(facts.sources_seen.iter_mut()) {
                *seen =
                    source_key(key).is_some_and(|k| p.sources.contains_key(&(k, value.clone())));
            }
            if let Some(d) = p.durations.get(&q.entitlement) {
                (facts.entitlement_requests, facts.median_duration) =
                    median(d.iter().map(|(s, n)| (*s, *n)).collect());
            }
        }
        facts.peer_used = q.groups.iter().any(|g| {
            self.peers
                .get(&(q.entitlement.clone(), g.clone()))
                .is_some_and(|who| who.keys().any(|r| *r != q.requester))
        });
        facts
    }
}

/// Signed changes to the SQL stores' aggregate tables, each sorted by its
/// primary key (so two writers lock rows in the same order and never wait
/// on each other in a cycle): +1 per request inserted, -1 per request
/// pruned, summed over a batch. Rows whose count reaches zero go.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
#[derive(Debug, Default)]
pub(crate) struct Deltas {
    /// `(requester, hour)` → requests (`risk_hours`).
    pub(crate) hours: BTreeMap<(String, i64), i64>,
    /// `(requester, entitlement, seconds)` → requests (`risk_durations`).
    pub(crate) durations: BTreeMap<(String, String, i64), i64>,
    /// `(requester, key, value)` → requests (`risk_sources`).
    pub(crate) sources: BTreeMap<(String, String, String), i64>,
    /// `(entitlement, group, requester)` → requests (`risk_peers`).
    pub(crate) peers: BTreeMap<(String, String, String), i64>,
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
impl Deltas {
    /// One request's contribution, counted `sign` times (1 in, -1 out).
    pub(crate) fn add(&mut self, c: &Contribution<'_>, sign: i64) {
        let who = c.requester.to_string();
        *self
            .hours
            .entry((who.clone(), i64::from(c.hour())))
            .or_default() += sign;
        let secs = i64::try_from(c.secs).unwrap_or(i64::MAX);
        *self
            .durations
            .entry((who.clone(), c.entitlement.to_string(), secs))
            .or_default() += sign;
        for (k, v) in &c.sources {
            let key = SOURCE_KEYS.get(*k).copied().unwrap_or_default();
            *self
                .sources
                .entry((who.clone(), key.to_string(), (*v).to_string()))
                .or_default() += sign;
        }
        for g in c.groups {
            *self
                .peers
                .entry((c.entitlement.to_string(), g.clone(), who.clone()))
                .or_default() += sign;
        }
    }

    /// Whether some count goes down (a prune): rows may reach zero.
    pub(crate) fn takes_away(&self) -> bool {
        self.hours.values().any(|n| *n < 0)
            || self.durations.values().any(|n| *n < 0)
            || self.sources.values().any(|n| *n < 0)
            || self.peers.values().any(|n| *n < 0)
    }

    /// Whether nothing changes.
    pub(crate) fn is_empty(&self) -> bool {
        self.hours.is_empty()
            && self.durations.is_empty()
            && self.sources.is_empty()
            && self.peers.is_empty()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::GrantDuration;

    fn entry(who: &str, ent: &str, secs: i64, at: DateTime<Utc>) -> HistoryEntry {
        HistoryEntry {
            id: crate::types::RequestId::new(),
            state: crate::types::State::Pending,
            requester: who.into(),
            groups: ["eng".to_string()].into(),
            entitlement: ent.into(),
            duration: GrantDuration::from_secs_i64(secs).unwrap_or_else(|_| unreachable!()),
            context: [("ip".to_string(), "10.0.0.1".to_string())].into(),
            created_at: at,
        }
    }

    #[test]
    fn a_query_names_requester_and_entitlement_and_kept_sources() {
        assert!(RiskFactsQuery::new("bob", "db").check().is_ok());
        let odd = RiskFactsQuery {
            sources: vec![("trace".into(), "abc".into())],
            ..RiskFactsQuery::new("bob", "db")
        };
        for q in [
            RiskFactsQuery::new("", "db"),
            RiskFactsQuery::new("bob", ""),
            odd,
        ] {
            assert!(matches!(q.check(), Err(Error::Store(_))), "{q:?}");
        }
    }

    #[test]
    fn the_median_is_the_lower_middle() {
        let m = |pairs: &[(u64, u64)]| median(pairs.to_vec());
        assert_eq!(m(&[]), (0, None));
        assert_eq!(m(&[(1, 1)]), (1, Some(Duration::from_secs(1))));
        assert_eq!(
            m(&[(3, 1), (1, 1), (2, 1)]),
            (3, Some(Duration::from_secs(2)))
        );
        assert_eq!(
            m(&[(400, 1), (100, 1), (300, 1), (200, 1)]),
            (4, Some(Duration::from_secs(200)))
        );
        // Counts weigh: 1, 2, 3, 100, 100, 100 -> the third.
        assert_eq!(
            m(&[(100, 3), (1, 1), (2, 1), (3, 1)]),
            (6, Some(Duration::from_secs(3)))
        );
        assert_eq!(m(&[(30, 9), (600, 1)]), (10, Some(Duration::from_secs(30))));
    }

    /// Counting a request out takes back exactly what counting it in
    /// added: the profiles are as if it had never been there.
    #[test]
    fn removing_undoes_adding() {
        let t = DateTime::parse_from_rfc3339("2026-01-05T09:30:00Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default();
        let kept = [entry("amy", "db", 600, t), entry("ben", "db", 60, t)];
        let gone = [
            entry("amy", "db", 1800, t + chrono::TimeDelta::hours(5)),
            entry("amy", "web", 60, t),
            entry("cal", "db", 60, t),
        ];
        let mut p = Profiles::default();
        for e in kept.iter().chain(&gone) {
            p.add(&Contribution::of_entry(e));
        }
        for e in &gone {
            p.remove(&Contribution::of_entry(e));
        }
        let mut fresh = Profiles::default();
        for e in &kept {
            fresh.add(&Contribution::of_entry(e));
        }
        let q = RiskFactsQuery {
            groups: ["eng".to_string()].into(),
            sources: vec![("ip".into(), "10.0.0.1".into())],
            since: t,
            ..RiskFactsQuery::new("amy", "db")
        };
        for who in ["amy", "ben", "cal"] {
            for ent in ["db", "web"] {
                let q = RiskFactsQuery {
                    requester: who.into(),
                    entitlement: ent.into(),
                    ..q.clone()
                };
                assert_eq!(p.facts(&q), fresh.facts(&q), "{who} {ent}");
            }
        }
        assert_eq!(p.requesters.len(), 2);
        assert!(!p
            .peers
            .contains_key(&("web".to_string(), "eng".to_string())));
    }
}
