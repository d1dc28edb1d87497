//! The pending cap: how many requests waiting for approval one requester
//! may hold ([`BrokerBuilder::max_pending_per_requester`](super::BrokerBuilder::max_pending_per_requester)).
//!
//! It limits what a flood of requests costs approvers, so it is checked
//! only for a request that would wait: one the policy auto-approves or
//! denies never becomes pending, and a requester at the cap still gets an
//! auto-approved grant (an on-call engineer with a pile of undecided
//! requests is not locked out of the access that needs no one). A submit
//! that never pends also never reads the store for the cap.
//!
//! Submits by one requester that would pend take a per-requester lock from
//! the count to the insert, so parallel submits in one process cannot race
//! past the cap. Brokers in several processes sharing a store each hold
//! their own locks: there the cap holds up to requests submitted at the
//! same moment on different replicas.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::Broker;
use crate::error::{Error, Result};
use crate::store::ListFilter;
use crate::types::{Principal, State};

/// Per-requester locks of submits that would pend; an entry goes when no
/// submit holds it.
#[derive(Debug, Default)]
pub(crate) struct PendingSlots(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

/// Held from the pending count to the insert of a request that waits.
pub(crate) struct PendingSlot<'a> {
    slots: &'a PendingSlots,
    key: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for PendingSlot<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        if let Ok(mut m) = self.slots.0.lock() {
            // Only the map holds it: nobody else is submitting as this requester.
            if m.get(&self.key).is_some_and(|l| Arc::strong_count(l) == 1) {
                m.remove(&self.key);
            }
        }
    }
}

impl Broker {
    /// Admits one more pending request by `requester` under the cap, or
    /// refuses it with [`Error::TooManyPending`]; `None` without a cap.
    /// Keep the slot until the request is stored.
    pub(super) async fn pending_slot(
        &self,
        requester: &Principal,
    ) -> Result<Option<PendingSlot<'_>>> {
        let max = self.inner.max_pending;
        if max == 0 {
            return Ok(None);
        }
        let key = requester.id.as_str().to_string();
        let lock = {
            let mut m = self
                .inner
                .pending_slots
                .0
                .lock()
                .map_err(|_| Error::Store("pending cap lock poisoned".into()))?;
            m.entry(key.clone()).or_default().clone()
        };
        let slot = PendingSlot {
            slots: &self.inner.pending_slots,
            key,
            guard: Some(lock.lock_owned().await),
        };
        let held = self
            .inner
            .store
            .list(&ListFilter {
                requester: Some(slot.key.clone()),
                states: vec![State::Pending],
                limit: max,
                ..ListFilter::default()
            })
            .await?
            .len();
        if held >= max {
            return Err(Error::TooManyPending {
                requester: slot.key.clone(),
                max,
            });
        }
        Ok(Some(slot))
    }
}
