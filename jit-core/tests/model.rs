//! Model-based property test: random sequences of submit / approve / deny /
//! cancel / issue / revoke / extend / clock-advance run against the real broker
//! (memory store, test provider, manual clock, explicit issue) and against a
//! small reference model. After every step both must agree on every request's
//! state, on each request's audit event kinds, and on whether the step failed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::TimeDelta;
use common::*;
use jit_core::testing::{MemorySink, TestProvider};
use jit_core::{
    Broker, CataloguePolicy, Error, ManualClock, MemoryStore, Principal, Reaper, RequestError,
    RequestId, State,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// 0: auto-approved `dev-read` 15m; 1: `prod-read` 60m needing two leads; 2: ineligible.
    Submit(u8),
    /// Approver 0..=2 are leads; 3 is the requester herself (also a lead).
    Approve(usize, u8),
    Deny(usize, u8),
    Cancel(usize),
    Issue(usize),
    Revoke(usize),
    Extend(usize),
    Advance(i64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..3).prop_map(Op::Submit),
        4 => (any::<usize>(), 0u8..4).prop_map(|(i, a)| Op::Approve(i, a)),
        1 => (any::<usize>(), 0u8..4).prop_map(|(i, a)| Op::Deny(i, a)),
        1 => any::<usize>().prop_map(Op::Cancel),
        3 => any::<usize>().prop_map(Op::Issue),
        1 => any::<usize>().prop_map(Op::Revoke),
        1 => any::<usize>().prop_map(Op::Extend),
        2 => (1i64..80).prop_map(Op::Advance),
    ]
}

/// What the model expects of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Forbidden,
    InvalidState,
    NotExtendable,
    NotFound,
}

fn classify(r: &Result<(), Error>) -> Outcome {
    match r {
        Ok(()) => Outcome::Ok,
        Err(Error::Forbidden { .. }) => Outcome::Forbidden,
        Err(Error::InvalidState { .. }) => Outcome::InvalidState,
        Err(Error::InvalidRequest(RequestError::NotExtendable(_))) => Outcome::NotExtendable,
        Err(Error::NotFound { .. }) => Outcome::NotFound,
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[derive(Debug, Clone)]
struct MReq {
    state: State,
    /// Minutes of access asked for.
    len: i64,
    /// Maximum of the entitlement, minutes.
    max: i64,
    quorum: usize,
    approvals: BTreeSet<u8>,
    pending_until: i64,
    /// End of the grant window (minutes from the start of the test).
    end: Option<i64>,
    /// For extensions: the original request.
    extends: Option<usize>,
    kinds: Vec<&'static str>,
    /// Whether `alice` asked (the ineligible requests are someone else's).
    mine: bool,
}

#[derive(Debug, Default)]
struct Model {
    now: i64,
    reqs: Vec<MReq>,
}

impl Model {
    fn submit(&mut self, kind: u8, extends: Option<usize>) -> usize {
        let (len, max, quorum) = match kind {
            0 => (15, 60, 0),
            1 => (60, 480, 2),
            _ => (15, 60, 0),
        };
        let mut r = MReq {
            state: State::Pending,
            len: if extends.is_some() { 10 } else { len },
            max,
            quorum,
            approvals: BTreeSet::new(),
            pending_until: self.now + 60,
            end: None,
            extends,
            kinds: vec!["requested", "decided"],
            mine: kind != 2,
        };
        match kind {
            0 => {
                r.state = State::Approved;
                r.end = Some(self.approval_end(&r));
                r.kinds.push("approved");
            }
            2 => {
                r.state = State::Denied;
                r.kinds.push("denied");
            }
            _ => {}
        }
        self.reqs.push(r);
        self.reqs.len() - 1
    }

    /// The window end set at approval time.
    fn approval_end(&self, r: &MReq) -> i64 {
        match r.extends {
            Some(o) => {
                let orig_end = self.reqs[o].end.unwrap_or(self.now);
                (orig_end.max(self.now) + r.len).min(self.now + r.max)
            }
            None => self.now + r.len,
        }
    }

    fn approve(&mut self, i: usize, who: u8) -> Outcome {
        let r = &self.reqs[i];
        if r.state != State::Pending {
            return Outcome::InvalidState;
        }
        if who == 3 || r.approvals.contains(&who) {
            return Outcome::Forbidden;
        }
        let end = self.approval_end(r);
        let r = &mut self.reqs[i];
        r.approvals.insert(who);
        r.kinds.push("approved");
        if r.approvals.len() >= r.quorum {
            r.state = State::Approved;
            r.end = Some(end);
        }
        Outcome::Ok
    }

    fn deny(&mut self, i: usize, who: u8) -> Outcome {
        let r = &mut self.reqs[i];
        if r.state != State::Pending {
            return Outcome::InvalidState;
        }
        if who == 3 {
            return Outcome::Forbidden;
        }
        r.state = State::Denied;
        r.kinds.push("denied");
        Outcome::Ok
    }

    fn cancel(&mut self, i: usize) -> Outcome {
        let r = &mut self.reqs[i];
        if !matches!(r.state, State::Pending | State::Approved) {
            return Outcome::InvalidState;
        }
        r.state = State::Cancelled;
        r.kinds.push("cancelled");
        Outcome::Ok
    }

    fn issue(&mut self, i: usize) -> Outcome {
        let now = self.now;
        let r = &mut self.reqs[i];
        if !r.mine {
            return Outcome::Forbidden;
        }
        if r.state != State::Approved {
            return Outcome::InvalidState;
        }
        let end = if r.extends.is_some() {
            r.end.unwrap_or(now).min(now + r.max)
        } else {
            now + r.len
        };
        if end <= now {
            return Outcome::InvalidState;
        }
        r.end = Some(end);
        r.state = State::Active;
        r.kinds.push("issued");
        Outcome::Ok
    }

    fn revoke(&mut self, i: usize) -> Outcome {
        let r = &mut self.reqs[i];
        if !r.mine {
            return Outcome::Forbidden;
        }
        match r.state {
            State::Active => {
                r.state = State::Revoked;
                r.kinds.push("revoked");
                Outcome::Ok
            }
            State::Revoked => Outcome::Ok,
            _ => Outcome::InvalidState,
        }
    }

    fn extend(&mut self, i: usize) -> (Outcome, Option<usize>) {
        if !self.reqs[i].mine {
            return (Outcome::NotFound, None);
        }
        if self.reqs[i].state != State::Active {
            return (Outcome::NotExtendable, None);
        }
        // Same entitlement; 10 minutes is auto-approved for dev-read only.
        let kind = if self.reqs[i].quorum == 0 { 0 } else { 1 };
        (Outcome::Ok, Some(self.submit(kind, Some(i))))
    }

    /// The reaper's tick: expire active grants, time out pending requests, expire stale approvals.
    fn tick(&mut self) {
        let now = self.now;
        for r in &mut self.reqs {
            if r.state == State::Active && r.end.is_some_and(|e| e <= now) {
                r.state = State::Expired;
                r.kinds.push("expired");
            }
        }
        for r in &mut self.reqs {
            if r.state == State::Pending && r.pending_until <= now {
                r.state = State::TimedOut;
                r.kinds.push("timed_out");
            }
        }
        for r in &mut self.reqs {
            if r.state == State::Approved && r.end.is_some_and(|e| e <= now) {
                r.state = State::Expired;
                r.kinds.push("expired");
            }
        }
    }
}

struct Real {
    broker: Broker,
    clock: ManualClock,
    reaper: Reaper,
    ids: Vec<RequestId>,
}

fn real() -> Real {
    let clock = ManualClock::starting_now();
    let policy = Arc::new(CataloguePolicy::from_toml_str(CATALOGUE).unwrap());
    let broker = Broker::builder(Arc::new(MemoryStore::new()), policy)
        .provider(Arc::new(TestProvider::new("test")))
        .provider(Arc::new(TestProvider::new("manual-expiry")))
        .clock(Arc::new(clock.clone()))
        .audit_sink(Arc::new(MemorySink::new()))
        .auto_issue(false)
        .build()
        .unwrap();
    Real {
        reaper: Reaper::new(broker.clone()),
        broker,
        clock,
        ids: Vec::new(),
    }
}

fn alice() -> Principal {
    user("alice").with_group("leads")
}

fn approver(who: u8) -> Principal {
    if who == 3 {
        alice()
    } else {
        lead(&format!("lead{who}"))
    }
}

async fn step(real: &mut Real, model: &mut Model, op: &Op) {
    let pick = |i: usize, n: usize| if n == 0 { None } else { Some(i % n) };
    let n = model.reqs.len();
    let b = real.broker.clone();
    match *op {
        Op::Submit(kind) => {
            let (who, r) = match kind {
                0 => (alice(), req("dev-read", "15m")),
                1 => (alice(), req("prod-read", "60m")),
                _ => (Principal::new("outsider").unwrap(), req("dev-read", "15m")),
            };
            let out = b.submit(&who, r).await.unwrap();
            real.ids.push(out.record.id);
            model.submit(kind, None);
        }
        Op::Approve(i, who) => {
            let Some(i) = pick(i, n) else { return };
            let got = classify(&b.approve(&approver(who), real.ids[i], "").await.map(|_| ()));
            assert_eq!(got, model.approve(i, who), "approve {i} by {who}");
        }
        Op::Deny(i, who) => {
            let Some(i) = pick(i, n) else { return };
            let got = classify(&b.deny(&approver(who), real.ids[i], "no").await.map(|_| ()));
            assert_eq!(got, model.deny(i, who), "deny {i} by {who}");
        }
        Op::Cancel(i) => {
            let Some(i) = pick(i, n) else { return };
            let got = classify(&b.cancel(&alice(), real.ids[i], "").await.map(|_| ()));
            assert_eq!(got, model.cancel(i), "cancel {i}");
        }
        Op::Issue(i) => {
            let Some(i) = pick(i, n) else { return };
            let got = classify(&b.issue(&alice(), real.ids[i]).await.map(|o| {
                assert!(o.credentials.is_some());
            }));
            assert_eq!(got, model.issue(i), "issue {i}");
        }
        Op::Revoke(i) => {
            let Some(i) = pick(i, n) else { return };
            let got = classify(&b.revoke(&alice(), real.ids[i], "done").await.map(|_| ()));
            assert_eq!(got, model.revoke(i), "revoke {i}");
        }
        Op::Extend(i) => {
            let Some(i) = pick(i, n) else { return };
            let res = b
                .extend(&alice(), real.ids[i], "10m".parse().unwrap(), "more")
                .await;
            let (want, _) = model.extend(i);
            let got = classify(&res.as_ref().map(|_| ()).map_err(clone_err));
            assert_eq!(got, want, "extend {i}");
            if let Ok(out) = res {
                real.ids.push(out.record.id);
            }
        }
        Op::Advance(m) => {
            real.clock.advance(TimeDelta::minutes(m));
            model.now += m;
            real.reaper.tick().await.unwrap();
            model.tick();
        }
    }
}

fn clone_err(e: &Error) -> Error {
    match e {
        Error::Forbidden {
            principal,
            operation,
            request,
            reason,
        } => Error::Forbidden {
            principal: principal.clone(),
            operation,
            request: *request,
            reason: reason.clone(),
        },
        Error::InvalidState {
            operation,
            request,
            state,
        } => Error::InvalidState {
            operation,
            request: *request,
            state: *state,
        },
        Error::InvalidRequest(r) => Error::InvalidRequest(r.clone()),
        Error::NotFound { kind, id } => Error::NotFound {
            kind,
            id: id.clone(),
        },
        other => panic!("unexpected error {other}"),
    }
}

async fn agree(real: &Real, model: &Model) {
    let audit = real.broker.audit_records().await.unwrap();
    for (i, m) in model.reqs.iter().enumerate() {
        let rec = real.broker.get(real.ids[i]).await.unwrap();
        assert_eq!(rec.state, m.state, "state of request {i}");
        assert_eq!(
            kinds(&audit, real.ids[i]),
            m.kinds,
            "audit kinds of request {i}"
        );
        if rec.state == State::Active {
            let end = rec.ends_at().unwrap();
            let start = real.broker.clock().now() - TimeDelta::minutes(model.now);
            assert_eq!(
                end,
                start + TimeDelta::minutes(m.end.unwrap()),
                "end of request {i}"
            );
        }
    }
    assert!(jit_core::audit::verify(&audit).is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn broker_agrees_with_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut r = real();
            let mut m = Model::default();
            for op in &ops {
                step(&mut r, &mut m, op).await;
                agree(&r, &m).await;
            }
        });
    }
}
