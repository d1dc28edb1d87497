//! The tamper-evident audit log: a SHA-256 hash chain, sealed with a key
//! kept outside the store and anchored by signed checkpoints kept outside
//! it too.
//!
//! Every record carries the hash of the record before it (`prev_hash`) and its
//! own hash over its canonical JSON form plus `prev_hash`. Editing a record
//! breaks its own hash; deleting or reordering records breaks the link or the
//! sequence. [`verify`] walks a chain and names the first broken record.
//!
//! The chain lives in the [`Store`](crate::store::Store): the record is
//! appended in the same transaction as the state change it describes, so a
//! state change without its audit record cannot exist. Extra [`AuditSink`]s
//! (a JSON Lines file, the function's log stream) receive a copy after the
//! commit; if one of them fails, the broker treats the operation as failed
//! (fail-closed) and takes back anything it minted.
//!
//! # Who the chain protects against
//!
//! A hash chain alone is computed with public code: someone who can write
//! the database can edit a record and recompute every later hash, or delete
//! the last records, and the result verifies. Two things stop that
//! attacker, and both live outside the database:
//!
//! - **The audit key** ([`AuditKey`], in an [`AuditKeyring`] given to
//!   [`BrokerBuilder::audit_keyring`](crate::BrokerBuilder::audit_keyring)).
//!   Each record is sealed as it joins the chain with an [`AuditMac`]:
//!   HMAC-SHA256 over its `seq` and hash, under the current key, tagged with
//!   the key's id. The hash covers `prev_hash`, so each seal covers the whole
//!   chain before it. Without the key, a re-hashed record cannot get a valid
//!   seal, and a stripped seal is itself a break ([`ChainBreakReason::MissingMac`]).
//! - **Signed checkpoints** ([`AuditCheckpoint`]: the chain's length, its
//!   head hash, the time, signed with the key), which the broker emits to
//!   its sinks every [`BrokerBuilder::checkpoint_every`](crate::BrokerBuilder::checkpoint_every)
//!   records and on every reaper tick, for heads it wrote itself (it never
//!   signs what it only read back, so it cannot bless an edit). A store with
//!   fewer records than a checkpoint names was truncated
//!   ([`ChainBreakReason::Truncated`]); another hash at the checkpoint's
//!   `seq` means it was rewritten ([`ChainBreakReason::CheckpointMismatch`]).
//!   [`CheckpointFileSink`] keeps them in a file of their own; ship that
//!   file (or the log stream) somewhere the database's administrators cannot
//!   rewrite: append-only storage, a log service, another account.
//!
//! A per-record key is better than signing the head alone because it
//! catches an edit at once, whatever the checkpoint interval; a checkpoint
//! is needed as well because no per-record seal can tell a chain that ends
//! at record 90 from one whose records 91 to 100 were deleted.
//!
//! What is detected:
//!
//! | tampering | hash chain only | with the key | with the key and checkpoints |
//! | --- | --- | --- | --- |
//! | edit, delete or reorder a record inside the chain | yes | yes | yes |
//! | edit a record and recompute every later hash | no | yes (bad or missing seal) | yes |
//! | delete the last records | no | no | yes, up to the latest checkpoint |
//! | replace the database with an older copy | no | no | yes, up to the latest checkpoint |
//!
//! Records appended after the latest checkpoint can still be cut off
//! unseen: the checkpoint interval bounds that window. Someone who holds
//! the key can forge anything: it is as sensitive as the ability to mint.
//!
//! # What a verifier needs
//!
//! The records (from the store, or a JSON Lines export), the keyring (the
//! seals are HMACs, so verifying needs the secret key itself: run the
//! verification where the broker runs, or give a trusted auditor a copy)
//! and the checkpoints; see [`ChainVerifier`]. Checkpoints are checked with
//! the keyring when one is given; without one they are trusted as given.
//! Records before [`ChainVerifier::sealed_from`] may be unsealed: a chain
//! started before its key was configured.
//!
//! # Key rotation
//!
//! Make a new key current and keep each previous key in the keyring
//! ([`AuditKeyring::with_previous`]) for as long as records or checkpoints
//! it sealed must verify. New records are sealed with the current key only.
//!
//! # What an event holds
//!
//! Each event is self-describing for an auditor without repeating the
//! request's record: who (`actor`), what (`kind`), which request and grant
//! (`request_id`, `grant_id`), the state it left the request in (`state`),
//! and in `details` the decision or outcome and the fields that step set
//! or changed, never the ones it left as they were:
//!
//! | kind | `details` |
//! | --- | --- |
//! | `requested` | `entitlement`, `provider`, `duration_secs`, `justification`, and when given `start_at`, `ticket`, `context`, `groups`, `extends` |
//! | `decided` | `decision` (verdict, approvers and quorum, maximum duration, reasons) |
//! | `approved` | by policy: `auto`; by a person: `approvals`, `quorum`, `comment` |
//! | `denied`, `cancelled`, `timed_out` | `reason` or `reasons` |
//! | `issued` | `provider`, `external_id`, `starts_at`, `expires_at`, the provider's `details` |
//! | `revoked`, `expired` | `reason`, `attempts` (and what a collateral revocation was a collateral of) |
//!
//! The reasons of an auto-approval are the decision's, in the `decided`
//! event just before it; a `revoked` event's actor is the one who asked.
//! Fields without a value are left out. Records written before this shape
//! keep theirs: a record's hash covers what was stored.
//!
//! # Storage
//!
//! Stores keep each record compactly: the event and its seal without
//! `seq`, `hash` and `prev_hash`, with `seq` and `hash` in columns of their
//! own and `prev_hash` taken from the record before when read, since the
//! chain already holds it. PostgreSQL and the memory store keep a JSON
//! array ([`AuditRecord::to_stored`]); SQLite a packed binary form
//! ([`AuditRecord::to_packed`]: ids, time and seal as bytes, the rest
//! compressed with zstd, or deflated in rows written before). Records stored whole, or compact before packing, keep their
//! form and are read as they are ([`AuditRecord::from_stored_bytes`]): the
//! hash is always recomputed from the record, never from its stored form,
//! so how a store packs records is not part of the chain. Exports and
//! sinks carry whole records.
//!
//! # Retention
//!
//! [`Broker::archive_finished`](crate::Broker::archive_finished) moves the
//! oldest part of the chain, with the finished requests it describes, into
//! an archive file and prunes it from the store. The store keeps an
//! [`AuditAnchor`] (the last pruned record's `seq` and hash, signed with
//! the audit key when there is one) and the chain it still holds starts
//! there ([`ChainVerifier::anchor`]); each archive starts with an
//! [`ArchiveSegment`] line naming the anchors at both of its ends, so it
//! verifies on its own and the archives join up into the whole chain.
//!
//! No secret value ever enters a record: records are built by the broker from
//! non-secret fields only, and [`Credentials`](crate::Credentials) has no
//! `Serialize` implementation that could leak into `details`.

mod key;

pub use key::{AuditCheckpoint, AuditKey, AuditKeyring, AuditMac};

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::types::{GrantId, RequestId, State};

/// The hash that the first record links to.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    /// A request was submitted.
    Requested,
    /// The policy decided.
    Decided,
    /// An approver approved.
    Approved,
    /// The policy or an approver denied.
    Denied,
    /// The requester cancelled.
    Cancelled,
    /// Credentials were minted.
    Issued,
    /// The provider refused to mint, or the grant could not be recorded.
    IssueFailed,
    /// Access was taken away early.
    Revoked,
    /// Access reached its end.
    Expired,
    /// Revocation keeps failing.
    RevocationFailed,
    /// A crash left a grant half done and the reconciler settled it.
    Reconciled,
    /// Nobody decided in time.
    TimedOut,
    /// Provider housekeeping removed what a grant left behind at the cloud
    /// after it ended (an expired GCP conditional binding), touching
    /// nothing else ([`Provider::tidy`](crate::Provider::tidy)).
    Tidied,
}

impl AuditKind {
    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Requested => "requested",
            AuditKind::Decided => "decided",
            AuditKind::Approved => "approved",
            AuditKind::Denied => "denied",
            AuditKind::Cancelled => "cancelled",
            AuditKind::Issued => "issued",
            AuditKind::IssueFailed => "issue_failed",
            AuditKind::Revoked => "revoked",
            AuditKind::Expired => "expired",
            AuditKind::RevocationFailed => "revocation_failed",
            AuditKind::Reconciled => "reconciled",
            AuditKind::TimedOut => "timed_out",
            AuditKind::Tidied => "tidied",
        }
    }
}

/// An event before it joins the chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// When.
    pub at: DateTime<Utc>,
    /// What.
    pub kind: AuditKind,
    /// Which request.
    pub request_id: RequestId,
    /// Which grant, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<GrantId>,
    /// Who did it (`reaper` for time-driven steps).
    pub actor: String,
    /// The request's state after the event.
    pub state: State,
    /// Non-secret details (decision, reasons, expiry, provider ids).
    #[serde(default)]
    pub details: serde_json::Value,
    /// The keyring that seals the record this event becomes (never stored).
    #[serde(skip)]
    seal: Sealer,
}

/// The keyring an event carries into [`AuditEvent::chain`].
///
/// The store assigns `seq` and `prev_hash` inside its own transaction, so
/// the seal, which covers the hash, can only be computed there. Carrying the
/// keyring on the event lets every store (and every wrapper around one)
/// seal in that transaction without the [`Store`](crate::store::Store)
/// trait changing, and no store ever holds the key on its own.
#[derive(Clone, Default)]
struct Sealer(Option<AuditKeyring>);

impl PartialEq for Sealer {
    /// How an event will be sealed is not part of what it says.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(k) => write!(f, "Sealer({})", k.current_id()),
            None => f.write_str("Sealer(none)"),
        }
    }
}

impl AuditEvent {
    /// A new event at `at`.
    pub fn new(
        at: DateTime<Utc>,
        kind: AuditKind,
        request_id: RequestId,
        actor: &str,
        state: State,
    ) -> Self {
        Self {
            at,
            kind,
            request_id,
            grant_id: None,
            actor: actor.to_string(),
            state,
            details: serde_json::Value::Null,
            seal: Sealer::default(),
        }
    }

    /// Seals the record this event becomes with `keyring`'s current key
    /// when it joins the chain ([`AuditEvent::chain`]).
    pub fn sealed_with(mut self, keyring: Option<&AuditKeyring>) -> Self {
        self.seal = Sealer(keyring.cloned());
        self
    }

    /// Sets the grant id.
    pub fn grant(mut self, grant: Option<GrantId>) -> Self {
        self.grant_id = grant;
        self
    }

    /// Sets details. Top-level fields without a value (`null`, `""`, `[]`,
    /// `{}`) are left out: an event records what happened and what it
    /// changed, not the fields it left empty (see "What an event holds" in
    /// the module docs).
    pub fn details(mut self, mut details: serde_json::Value) -> Self {
        if let serde_json::Value::Object(map) = &mut details {
            map.retain(|_, v| match v {
                serde_json::Value::Null => false,
                serde_json::Value::String(s) => !s.is_empty(),
                serde_json::Value::Array(a) => !a.is_empty(),
                serde_json::Value::Object(o) => !o.is_empty(),
                _ => true,
            });
        }
        self.details = details;
        self
    }

    /// Joins the chain after `prev_hash` as record number `seq`, sealed if
    /// the event carries a keyring ([`AuditEvent::sealed_with`]).
    pub fn chain(mut self, seq: u64, prev_hash: &str) -> AuditRecord {
        let keyring = std::mem::take(&mut self.seal).0;
        let mut r = AuditRecord {
            seq,
            event: self,
            prev_hash: prev_hash.to_string(),
            hash: String::new(),
            mac: None,
        };
        r.hash = r.compute_hash();
        r.mac = keyring.map(|k| k.seal(seq, &r.hash));
        r
    }
}

/// Re-keys every object in `v` in sorted key order (recursively).
fn sort_keys(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<(String, serde_json::Value)> =
                std::mem::take(map).into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            for (k, mut item) in entries {
                sort_keys(&mut item);
                map.insert(k, item);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(sort_keys),
        _ => {}
    }
}

/// Whether every object in `v` has its keys in order (as [`sort_keys`]
/// leaves them).
fn keys_sorted(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Object(map) => {
            map.keys().zip(map.keys().skip(1)).all(|(a, b)| a < b) && map.values().all(keys_sorted)
        }
        serde_json::Value::Array(items) => items.iter().all(keys_sorted),
        _ => true,
    }
}

/// One link of the chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// 1-based position in the chain.
    pub seq: u64,
    /// The event.
    #[serde(flatten)]
    pub event: AuditEvent,
    /// Hash of the previous record ([`GENESIS_HASH`] for the first).
    pub prev_hash: String,
    /// SHA-256 over `prev_hash` and this record's canonical JSON (hex).
    pub hash: String,
    /// The seal over `seq` and `hash` under the audit key, when one is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<AuditMac>,
}

impl AuditRecord {
    /// Recomputes this record's hash from its content.
    pub fn compute_hash(&self) -> String {
        #[derive(Serialize)]
        struct Canonical<'a> {
            seq: u64,
            event: &'a AuditEvent,
            prev_hash: &'a str,
        }
        // Struct fields have a fixed order and `details` is re-keyed in sorted
        // order here: the encoding is canonical for a given record whether or
        // not serde_json keeps insertion order (its `preserve_order` feature,
        // which cedar-policy-core turns on for the whole build under the
        // `cedar` feature). Without it maps are sorted already, so hashes of
        // existing chains do not change.
        // Details whose keys are in order already (always, without
        // `preserve_order`) are serialized as they are: the same bytes,
        // without copying the event.
        let sorted;
        let event = if keys_sorted(&self.event.details) {
            &self.event
        } else {
            let mut copy = self.event.clone();
            sort_keys(&mut copy.details);
            sorted = copy;
            &sorted
        };
        let body = serde_json::to_vec(&Canonical {
            seq: self.seq,
            event,
            prev_hash: &self.prev_hash,
        })
        .unwrap_or_default();
        let mut h = Sha256::new();
        h.update(self.prev_hash.as_bytes());
        h.update(b"\n");
        h.update(&body);
        hex::encode(h.finalize())
    }

    /// One JSON line.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The compact form a store keeps this record in: a JSON array of the
    /// event's fields and the seal, `[at, kind, request_id, grant_id,
    /// actor, state, details, mac]`, without `seq`, `hash` and `prev_hash`
    /// (the store keeps `seq` and `hash` in columns of their own, and
    /// `prev_hash` is the hash of the record before). See
    /// [`AuditRecord::from_stored`].
    pub fn to_stored(&self) -> String {
        let e = &self.event;
        let mac = self.mac.as_ref().map(|m| (&m.key_id, &m.tag));
        serde_json::to_string(&(
            &e.at,
            e.kind,
            &e.request_id,
            &e.grant_id,
            &e.actor,
            e.state,
            &e.details,
            mac,
        ))
        .unwrap_or_default()
    }

    /// A record from its stored form: the compact array of
    /// [`AuditRecord::to_stored`], completed with the `seq` and `hash` the
    /// store keeps beside it and `prev_hash`, the hash of the stored record
    /// before it (its anchor's, or [`GENESIS_HASH`], for the first); or a
    /// whole record as JSON (the form written before the compact one),
    /// taken as it is. Verification recomputes the hash from what this
    /// returns, so a compact record whose predecessor was deleted or edited
    /// no longer matches its hash.
    pub fn from_stored(
        seq: u64,
        hash: &str,
        prev_hash: &str,
        body: &str,
    ) -> std::result::Result<AuditRecord, String> {
        type Compact = (
            DateTime<Utc>,
            AuditKind,
            RequestId,
            Option<GrantId>,
            String,
            State,
            serde_json::Value,
            Option<(String, String)>,
        );
        if !body.trim_start().starts_with('[') {
            return serde_json::from_str(body).map_err(|e| e.to_string());
        }
        let (at, kind, request_id, grant_id, actor, state, details, mac): Compact =
            serde_json::from_str(body).map_err(|e| e.to_string())?;
        Ok(AuditRecord {
            seq,
            event: AuditEvent {
                at,
                kind,
                request_id,
                grant_id,
                actor,
                state,
                details,
                seal: Sealer::default(),
            },
            prev_hash: prev_hash.to_string(),
            hash: hash.to_string(),
            mac: mac.map(|(key_id, tag)| AuditMac { key_id, tag }),
        })
    }
}

/// The dictionary of the packed audit form ([`AuditRecord::to_packed`],
/// tag `0x01`): what the JSON part of an event ([`PackedRest`]) usually
/// says, newest-looking last (deflate reaches back to the nearest copy).
/// Part of the stored format: never edit it, add a dictionary with a new
/// tag (see [`crate::packed`]).
const AUDIT_DICT: crate::packed::Dictionary = crate::packed::Dictionary::new(
    0x01,
    br#"["tidied","reconciled","timed_out","issue_failed","revocation_failed","denied","cancelled","reaper",{"error":"","minted_and_revoked":false,"redelivered":true,"reasons":["not auto-approved: "],"reason":"","collateral_of":"","comment":"","approvals":1,"quorum":1,"on_call":{"ticket":{"decision":{"verdict":"deny","verdict":"needs_approval","approvers":{"groups":[]},"max_duration":3600,"reasons":["` is eligible for `` by id","` is eligible for `` by policy ","auto-approved: by policy "],"risk":null}},"start_at":"2026-01-01T00:00:00Z","context":{},"extends":""],["expired","expired","reaper",{"reason":"window ended","attempts":0}],["revoked","revoking","revoked","",{"reason":"","attempts":1}],["issued","active","jit-broker",{"details":{"audience":"","jti":"","kid":""},"expires_at":"2026-01-01T00:00:00Z","external_id":"jit-","provider":"","starts_at":"2026-01-01T00:00:00.000000000Z"},""],["approved","approved","policy",{"auto":true}],["decided","pending","policy",{"decision":{"max_duration":3600,"reasons":["`@example.com` is eligible for `` through group ``","auto-approved: duration `1h` is within the auto-approve limit of `1h`"],"verdict":"auto_approve"}}],["requested","pending","@example.com",{"duration_secs":3600,"entitlement":"","groups":[],"justification":"","provider":"","ticket":""},"",null]"#,
);

/// The packed audit form's rest compressed with zstd (form `0x02`, what is
/// written), against the same bytes as [`AUDIT_DICT`] (form `0x01`, what
/// was written before: still read). See [`crate::packed`] for why.
static AUDIT_ZSTD: crate::packed::ZstdDictionary =
    crate::packed::ZstdDictionary::new(0x02, AUDIT_DICT.bytes());

/// The JSON part of a packed audit record: `[kind, state, actor, details,
/// mac key id, mac tag]`, the tag only when it is not 32 bytes of
/// lowercase hex (which the binary part holds).
type PackedRest = (
    AuditKind,
    State,
    String,
    serde_json::Value,
    Option<String>,
    Option<String>,
);

/// Flags of the packed audit form.
const PACKED_GRANT: u8 = 1;
const PACKED_MAC_BYTES: u8 = 2;

/// A seal tag as its 32 bytes, when it is exactly their lowercase hex (so
/// that it reads back the same).
fn tag_bytes(tag: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(tag, &mut out).ok()?;
    (hex::encode(out) == tag).then_some(out)
}

impl AuditRecord {
    /// The packed form a store may keep this record in (the SQLite store
    /// does): like [`AuditRecord::to_stored`] without `seq`, `hash` and
    /// `prev_hash`, but binary where the content is:
    ///
    /// `0x02`, flags (1: a grant id follows, 2: the seal's tag follows as
    /// bytes), the request id (16 bytes), the grant id (16), `at` (seconds
    /// and nanoseconds, 12), the seal's tag (32), then the rest
    /// (`PackedRest`) as JSON compressed with zstd against a dictionary of
    /// what events usually say. (Form `0x01`, written before, is the same
    /// with the rest deflated; it still reads.) Read back by
    /// [`AuditRecord::from_stored_bytes`]; the hash is recomputed from what
    /// it returns, exactly as from the JSON forms, so the chain's hash
    /// definition does not depend on how a record was stored.
    pub fn to_packed(&self) -> Vec<u8> {
        self.packed_form(true)
    }

    /// The packed form with its rest compressed by zstd (form `0x02`) or,
    /// as before, deflated (form `0x01`: tests of old stored rows).
    fn packed_form(&self, zstd: bool) -> Vec<u8> {
        let e = &self.event;
        let tag = self.mac.as_ref().and_then(|m| tag_bytes(&m.tag));
        let flags = if e.grant_id.is_some() {
            PACKED_GRANT
        } else {
            0
        } | if tag.is_some() { PACKED_MAC_BYTES } else { 0 };
        let mut w = crate::packed::Writer::with_capacity(160);
        w.u8(if zstd {
            AUDIT_ZSTD.tag()
        } else {
            AUDIT_DICT.tag()
        })
        .u8(flags)
        .bytes(e.request_id.0.as_bytes());
        if let Some(g) = &e.grant_id {
            w.bytes(g.0.as_bytes());
        }
        w.time(&e.at);
        if let Some(t) = &tag {
            w.bytes(t);
        }
        let rest = serde_json::to_vec(&(
            e.kind,
            e.state,
            &e.actor,
            &e.details,
            self.mac.as_ref().map(|m| &m.key_id),
            self.mac.as_ref().filter(|_| tag.is_none()).map(|m| &m.tag),
        ))
        .unwrap_or_default();
        if zstd {
            crate::packed::compress(&AUDIT_ZSTD, &rest, w.as_mut_vec());
        } else {
            crate::packed::deflate(&AUDIT_DICT, &rest, w.as_mut_vec());
        }
        w.into_vec()
    }

    /// A record from stored bytes: the packed form
    /// ([`AuditRecord::to_packed`]) or either JSON form
    /// ([`AuditRecord::from_stored`]), told apart by the first byte.
    pub fn from_stored_bytes(
        seq: u64,
        hash: &str,
        prev_hash: &str,
        body: &[u8],
    ) -> std::result::Result<AuditRecord, String> {
        if !crate::packed::is_packed(body) {
            let text = std::str::from_utf8(body).map_err(|e| e.to_string())?;
            return Self::from_stored(seq, hash, prev_hash, text);
        }
        let mut r = crate::packed::Reader::new(body);
        let bad = |e: crate::packed::PackError| e.to_string();
        let tag = r.u8().map_err(bad)?;
        if tag != AUDIT_DICT.tag() && tag != AUDIT_ZSTD.tag() {
            return Err(format!("unknown packed audit form {tag:#04x}"));
        }
        let flags = r.u8().map_err(bad)?;
        let request_id = RequestId(uuid::Uuid::from_bytes(r.array().map_err(bad)?));
        let grant_id = if flags & PACKED_GRANT != 0 {
            Some(GrantId(uuid::Uuid::from_bytes(r.array().map_err(bad)?)))
        } else {
            None
        };
        let at = r.time().map_err(bad)?;
        let tag_bin = if flags & PACKED_MAC_BYTES != 0 {
            Some(hex::encode(r.array::<32>().map_err(bad)?))
        } else {
            None
        };
        let rest = if tag == AUDIT_ZSTD.tag() {
            crate::packed::decompress(&AUDIT_ZSTD, r.rest(), crate::packed::MAX_UNPACKED)
        } else {
            crate::packed::inflate(&AUDIT_DICT, r.rest(), crate::packed::MAX_UNPACKED)
        }
        .map_err(bad)?;
        let (kind, state, actor, details, key_id, tag_text): PackedRest =
            serde_json::from_slice(&rest).map_err(|e| e.to_string())?;
        let mac = match (key_id, tag_bin.or(tag_text)) {
            (Some(key_id), Some(tag)) => Some(AuditMac { key_id, tag }),
            (None, None) => None,
            _ => return Err("a seal without its key id or its tag".into()),
        };
        Ok(AuditRecord {
            seq,
            event: AuditEvent {
                at,
                kind,
                request_id,
                grant_id,
                actor,
                state,
                details,
                seal: Sealer::default(),
            },
            prev_hash: prev_hash.to_string(),
            hash: hash.to_string(),
            mac,
        })
    }
}

/// Where the stored chain starts after finished records were archived and
/// pruned ([`Broker::archive_finished`](crate::Broker::archive_finished)):
/// the `seq` and hash of the last pruned record. The first record kept has
/// `seq + 1` and links to `hash`; a verifier starts there
/// ([`ChainVerifier::anchor`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditAnchor {
    /// The `seq` of the last pruned record (0: nothing was pruned).
    pub seq: u64,
    /// Its hash: the `prev_hash` of record `seq + 1`.
    pub hash: String,
    /// When the cut was made.
    pub at: DateTime<Utc>,
    /// `(seq, hash)` signed with the audit key, when one was configured: a
    /// checkpoint, so that someone who can write the store cannot move the
    /// anchor (and with it, the start of the chain) unseen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed: Option<AuditCheckpoint>,
}

impl AuditAnchor {
    /// The start of a chain that was never pruned.
    pub fn genesis() -> Self {
        Self {
            seq: 0,
            hash: GENESIS_HASH.to_string(),
            at: DateTime::<Utc>::UNIX_EPOCH,
            signed: None,
        }
    }

    /// An anchor at record `seq` with hash `hash`, signed with `keyring`'s
    /// current key when there is one.
    pub fn new(seq: u64, hash: &str, at: DateTime<Utc>, keyring: Option<&AuditKeyring>) -> Self {
        Self {
            seq,
            hash: hash.to_string(),
            at,
            signed: keyring.map(|k| k.checkpoint(seq, hash, at)),
        }
    }

    /// Checks the signature against `keyring` (when there is one): a signed
    /// anchor must verify and name this `seq` and hash; an unsigned one is
    /// accepted only before `sealed_from` (a chain pruned before its key
    /// was configured).
    fn check(
        &self,
        keyring: Option<&AuditKeyring>,
        sealed_from: u64,
    ) -> std::result::Result<(), ChainBreakReason> {
        let Some(k) = keyring else { return Ok(()) };
        if self.seq == 0 && self.hash == GENESIS_HASH {
            return Ok(());
        }
        match &self.signed {
            Some(cp) => {
                k.check_checkpoint(cp)?;
                if cp.seq != self.seq || cp.head != self.hash {
                    return Err(ChainBreakReason::BadAnchor);
                }
                Ok(())
            }
            None if self.seq < sealed_from => Ok(()),
            None => Err(ChainBreakReason::BadAnchor),
        }
    }
}

/// The first line of an archive segment ([`Broker::archive_finished`](crate::Broker::archive_finished))
/// or of an export of a pruned chain ([`Broker::export_audit`](crate::Broker::export_audit)):
/// `{"segment": {...}}`. The audit records that follow run from
/// `from.seq + 1` on; `from` is the anchor they link to. An archive also
/// names `to`, the anchor the store kept after pruning them (its last
/// record), so consecutive segments join up and a segment verifies on its
/// own ([`ChainVerifier::verify_jsonl`]), cut-off tail included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveSegment {
    /// Where the segment starts: the anchor before it.
    pub from: AuditAnchor,
    /// Where it ends: the last record's `seq` and hash (an archive's; an
    /// export of the live chain has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<AuditAnchor>,
    /// How many request records follow (as `{"record": ...}` lines).
    #[serde(default)]
    pub records: u64,
}

#[derive(Serialize, Deserialize)]
struct SegmentLine {
    segment: ArchiveSegment,
}

#[derive(Deserialize)]
struct RecordLine {
    #[allow(dead_code)]
    record: serde::de::IgnoredAny,
}

impl ArchiveSegment {
    /// One JSON line, `{"segment":{...}}`.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(&SegmentLine {
            segment: self.clone(),
        })
        .unwrap_or_default()
    }

    /// Parses a line written by [`ArchiveSegment::to_json_line`]; `None` for any other line.
    pub fn from_json_line(line: &str) -> Option<Self> {
        if !line.trim_start().starts_with("{\"segment\"") {
            return None;
        }
        serde_json::from_str::<SegmentLine>(line)
            .ok()
            .map(|l| l.segment)
    }
}

/// Where a chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit chain broken at position {position} (seq {seq}): {reason}")]
pub struct ChainBreak {
    /// 0-based index in the sequence given to [`verify`].
    pub position: usize,
    /// The `seq` field of that record.
    pub seq: u64,
    /// What is wrong.
    pub reason: ChainBreakReason,
}

/// What is wrong at a break.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainBreakReason {
    /// The record's content does not match its hash: it was edited.
    #[error("content does not match its hash (edited)")]
    HashMismatch,
    /// The record does not link to the one before: one was deleted, inserted or moved.
    #[error("does not link to the previous record (deleted, inserted or reordered)")]
    BrokenLink,
    /// The sequence number is not the next one.
    #[error("sequence number {found} where {expected} was expected")]
    Sequence {
        /// Expected seq.
        expected: u64,
        /// Found seq.
        found: u64,
    },
    /// A line or stored row could not be parsed.
    #[error("not a valid record: {0}")]
    Malformed(String),
    /// The record carries no seal where one is required.
    #[error("carries no seal (MAC) where one is required (seal stripped)")]
    MissingMac,
    /// The seal does not match: the record was rewritten by someone without the key.
    #[error("seal (MAC) does not match (rewritten without the audit key)")]
    BadMac,
    /// The seal or checkpoint names a key the keyring does not hold.
    #[error("sealed with key `{key_id}`, which the keyring does not hold")]
    UnknownKey {
        /// The key id.
        key_id: String,
    },
    /// A checkpoint's signature does not verify.
    #[error("the checkpoint of seq {checkpoint} does not verify (forged)")]
    BadCheckpoint {
        /// The checkpoint's seq.
        checkpoint: u64,
    },
    /// The record's hash is not the head a checkpoint recorded for its seq.
    #[error("hash differs from the checkpoint of seq {checkpoint} (rewritten)")]
    CheckpointMismatch {
        /// The checkpoint's seq.
        checkpoint: u64,
    },
    /// The anchor the chain starts from (after a prune) is not signed
    /// where a key is configured, or its signature names another record.
    #[error(
        "the anchor the chain starts from is unsigned or does not match its signature (moved)"
    )]
    BadAnchor,
    /// The chain ends before a checkpoint's head: records were deleted.
    #[error("chain has {records} records but a checkpoint recorded {checkpoint} (truncated)")]
    Truncated {
        /// The highest checkpoint's seq.
        checkpoint: u64,
        /// Records found.
        records: u64,
    },
}

impl ChainBreakReason {
    /// A stable snake_case name for the kind of break (for JSON answers and scripts).
    pub fn kind(&self) -> &'static str {
        match self {
            ChainBreakReason::HashMismatch => "hash_mismatch",
            ChainBreakReason::BrokenLink => "broken_link",
            ChainBreakReason::Sequence { .. } => "sequence",
            ChainBreakReason::Malformed(_) => "malformed",
            ChainBreakReason::MissingMac => "missing_mac",
            ChainBreakReason::BadMac => "bad_mac",
            ChainBreakReason::UnknownKey { .. } => "unknown_key",
            ChainBreakReason::BadCheckpoint { .. } => "bad_checkpoint",
            ChainBreakReason::CheckpointMismatch { .. } => "checkpoint_mismatch",
            ChainBreakReason::BadAnchor => "bad_anchor",
            ChainBreakReason::Truncated { .. } => "truncated",
        }
    }
}

/// Summary of a verified chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSummary {
    /// Number of records.
    pub records: u64,
    /// Hash of the last record (the head), to compare with a value kept elsewhere.
    pub head: String,
    /// Records whose seal was checked and matched (0 without a keyring).
    pub sealed: u64,
    /// The highest checkpoint the chain was checked against, if any.
    pub checkpoint: Option<u64>,
}

/// One stored audit row as read back: a record, or a row that does not
/// decode (which [`verify`] reports as broken instead of failing the read).
// Nearly every entry is a record: boxing them all would cost more than the
// rare small variant wastes.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum AuditEntry {
    /// A decoded record.
    Record(AuditRecord),
    /// A row whose stored form is not a valid record.
    Undecodable {
        /// The row's `seq` as the store keeps it.
        seq: u64,
        /// Why it does not decode.
        error: String,
    },
}

impl AuditEntry {
    /// The `seq` of the row.
    pub fn seq(&self) -> u64 {
        match self {
            AuditEntry::Record(r) => r.seq,
            AuditEntry::Undecodable { seq, .. } => *seq,
        }
    }
}

/// Verifies a whole chain from its first record: hashes, links and
/// sequence only ([`ChainVerifier`] also checks seals and checkpoints).
pub fn verify<'a, I>(records: I) -> Result<ChainSummary, ChainBreak>
where
    I: IntoIterator<Item = &'a AuditRecord>,
{
    ChainVerifier::new().verify(records)
}

/// Verifies a chain against an audit keyring and checkpoints kept outside
/// the store (see the [module docs](self) for what each detects).
///
/// ```
/// # use jit_core::audit::{AuditKey, AuditKeyring, ChainVerifier};
/// let keyring = AuditKeyring::new(AuditKey::generate());
/// let verifier = ChainVerifier::new().keyring(keyring).checkpoints(vec![]);
/// assert_eq!(verifier.verify(&[]).unwrap().records, 0);
/// ```
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    keyring: Option<AuditKeyring>,
    checkpoints: Vec<AuditCheckpoint>,
    sealed_from: u64,
    anchor: Option<AuditAnchor>,
    end: Option<AuditAnchor>,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self::new()
    }
}

impl ChainVerifier {
    /// Checks hashes, links and sequence only.
    pub fn new() -> Self {
        Self {
            keyring: None,
            checkpoints: Vec::new(),
            sealed_from: 1,
            anchor: None,
            end: None,
        }
    }

    /// Starts the chain at `anchor` instead of the genesis: the first
    /// record must be `anchor.seq + 1` and link to `anchor.hash`. With a
    /// keyring the anchor must carry a valid signature of that `seq` and
    /// hash (unless it lies before [`ChainVerifier::sealed_from`]), else the
    /// chain breaks at its first record with [`ChainBreakReason::BadAnchor`].
    /// Checkpoints at or before the anchor concern pruned records and are
    /// skipped, except one at the anchor's own `seq`, which must name its hash.
    /// [`Broker::verify_audit`](crate::Broker::verify_audit) sets the
    /// store's anchor itself.
    pub fn anchor(mut self, anchor: AuditAnchor) -> Self {
        self.anchor = Some(anchor);
        self
    }

    /// The anchor set with [`ChainVerifier::anchor`], if any.
    pub fn anchored_at(&self) -> Option<&AuditAnchor> {
        self.anchor.as_ref()
    }

    /// Requires the chain to end exactly at `end` (its last record has
    /// `end.seq` and `end.hash`), checked like an anchor: how an archive
    /// segment's own end is verified.
    fn end(mut self, end: AuditAnchor) -> Self {
        self.end = Some(end);
        self
    }

    /// Also checks every seal; records from [`ChainVerifier::sealed_from`] on must carry one.
    pub fn keyring(mut self, keyring: AuditKeyring) -> Self {
        self.keyring = Some(keyring);
        self
    }

    /// Also checks the chain against these checkpoints: each must verify
    /// under the keyring (when one is given), the chain must reach each
    /// one's `seq`, and its record there must have the checkpoint's head.
    pub fn checkpoints(mut self, checkpoints: impl IntoIterator<Item = AuditCheckpoint>) -> Self {
        self.checkpoints.extend(checkpoints);
        self
    }

    /// Records before `seq` may be unsealed (default 1: every record must be
    /// sealed): for a chain that began before its key was configured.
    pub fn sealed_from(mut self, seq: u64) -> Self {
        self.sealed_from = seq;
        self
    }

    /// Verifies decoded records.
    pub fn verify<'a, I>(&self, records: I) -> Result<ChainSummary, ChainBreak>
    where
        I: IntoIterator<Item = &'a AuditRecord>,
    {
        self.walk(records.into_iter().map(Ok))
    }

    /// Verifies stored rows; an undecodable row is a break at its position.
    pub fn verify_entries<'a, I>(&self, entries: I) -> Result<ChainSummary, ChainBreak>
    where
        I: IntoIterator<Item = &'a AuditEntry>,
    {
        self.walk(entries.into_iter().map(|e| match e {
            AuditEntry::Record(r) => Ok(r),
            AuditEntry::Undecodable { seq, error } => Err((*seq, error.as_str())),
        }))
    }

    /// Verifies a JSON Lines export. A line that does not parse is a break
    /// at its position; checkpoint lines ([`AuditCheckpoint::to_json_line`],
    /// as a log stream holds them) and the request records of an archive
    /// (`{"record": ...}`) are skipped. An archive's segment line
    /// ([`ArchiveSegment`]) anchors the chain at the segment's start and
    /// requires it to end at the segment's end, so a segment verifies on
    /// its own.
    pub fn verify_jsonl<R: BufRead>(&self, input: R) -> Result<ChainSummary, ChainBreak> {
        let mut entries = Vec::new();
        let mut segment: Option<ArchiveSegment> = None;
        for line in input.lines() {
            let position = entries.len();
            let line = line.map_err(|e| ChainBreak {
                position,
                seq: 0,
                reason: ChainBreakReason::Malformed(e.to_string()),
            })?;
            if line.trim().is_empty()
                || AuditCheckpoint::from_json_line(&line).is_some()
                || serde_json::from_str::<RecordLine>(&line).is_ok()
            {
                continue;
            }
            if let Some(seg) = ArchiveSegment::from_json_line(&line) {
                if segment.is_none() && entries.is_empty() {
                    segment = Some(seg);
                    continue;
                }
                return Err(ChainBreak {
                    position,
                    seq: seg.from.seq + 1,
                    reason: ChainBreakReason::Malformed(
                        "a second segment line, or one after records".into(),
                    ),
                });
            }
            entries.push(match serde_json::from_str::<AuditRecord>(&line) {
                Ok(r) => AuditEntry::Record(r),
                Err(e) => AuditEntry::Undecodable {
                    seq: 0,
                    error: e.to_string(),
                },
            });
        }
        match segment {
            Some(seg) => {
                let mut v = self.clone().anchor(seg.from);
                if let Some(to) = seg.to {
                    v = v.end(to);
                }
                v.verify_entries(&entries)
            }
            None => self.verify_entries(&entries),
        }
    }

    fn walk<'a, I>(&self, entries: I) -> Result<ChainSummary, ChainBreak>
    where
        I: Iterator<Item = std::result::Result<&'a AuditRecord, (u64, &'a str)>>,
    {
        let start = self.anchor.clone().unwrap_or_else(AuditAnchor::genesis);
        let keyring = self.keyring.as_ref();
        let at_start = |reason| ChainBreak {
            position: 0,
            seq: start.seq + 1,
            reason,
        };
        start.check(keyring, self.sealed_from).map_err(at_start)?;
        if let Some(end) = &self.end {
            end.check(keyring, self.sealed_from).map_err(at_start)?;
        }
        // Checkpoints first: a forged one must not be trusted for anything.
        let mut anchors = std::collections::BTreeMap::new();
        for cp in &self.checkpoints {
            if let Some(k) = &self.keyring {
                k.check_checkpoint(cp).map_err(|reason| ChainBreak {
                    position: usize::try_from(cp.seq.saturating_sub(1)).unwrap_or(usize::MAX),
                    seq: cp.seq,
                    reason,
                })?;
            }
            if cp.seq < start.seq {
                // About records pruned before the anchor: not in this chain.
                continue;
            }
            if cp.seq == start.seq {
                if cp.head != start.hash {
                    return Err(at_start(ChainBreakReason::CheckpointMismatch {
                        checkpoint: cp.seq,
                    }));
                }
                continue;
            }
            anchors
                .entry(cp.seq)
                .or_insert_with(Vec::new)
                .push(cp.head.as_str());
        }
        if let Some(end) = &self.end {
            anchors
                .entry(end.seq)
                .or_insert_with(Vec::new)
                .push(end.hash.as_str());
        }
        let mut prev = start.hash.clone();
        let mut count = 0u64;
        let mut sealed = 0u64;
        for (position, entry) in entries.enumerate() {
            let expected_seq = start.seq + position as u64 + 1;
            let r = match entry {
                Ok(r) => r,
                Err((seq, error)) => {
                    return Err(ChainBreak {
                        position,
                        seq,
                        reason: ChainBreakReason::Malformed(error.to_string()),
                    })
                }
            };
            let brk = |reason| ChainBreak {
                position,
                seq: r.seq,
                reason,
            };
            if r.compute_hash() != r.hash {
                return Err(brk(ChainBreakReason::HashMismatch));
            }
            if r.prev_hash != prev {
                return Err(brk(ChainBreakReason::BrokenLink));
            }
            if r.seq != expected_seq {
                return Err(brk(ChainBreakReason::Sequence {
                    expected: expected_seq,
                    found: r.seq,
                }));
            }
            if let Some(k) = &self.keyring {
                match &r.mac {
                    Some(mac) => {
                        k.check(mac, r.seq, &r.hash).map_err(brk)?;
                        sealed += 1;
                    }
                    None if r.seq >= self.sealed_from => {
                        return Err(brk(ChainBreakReason::MissingMac))
                    }
                    None => {}
                }
            }
            if let Some(heads) = anchors.get(&r.seq) {
                if heads.iter().any(|h| *h != r.hash) {
                    return Err(brk(ChainBreakReason::CheckpointMismatch {
                        checkpoint: r.seq,
                    }));
                }
            }
            prev = r.hash.clone();
            count += 1;
        }
        let checkpoint = anchors.keys().next_back().copied();
        let last_seq = start.seq + count;
        if let Some(last) = checkpoint {
            if last > last_seq {
                return Err(ChainBreak {
                    position: usize::try_from(count).unwrap_or(usize::MAX),
                    seq: last_seq + 1,
                    reason: ChainBreakReason::Truncated {
                        checkpoint: last,
                        records: last_seq,
                    },
                });
            }
        }
        if let Some(end) = &self.end {
            if last_seq > end.seq {
                return Err(ChainBreak {
                    position: usize::try_from(end.seq - start.seq).unwrap_or(usize::MAX),
                    seq: end.seq + 1,
                    reason: ChainBreakReason::Malformed(format!(
                        "the segment ends at seq {} but holds more records",
                        end.seq
                    )),
                });
            }
        }
        Ok(ChainSummary {
            records: count,
            head: prev,
            sealed,
            checkpoint,
        })
    }
}

/// Writes records as JSON Lines.
pub fn export_jsonl<'a, W: Write>(
    records: impl IntoIterator<Item = &'a AuditRecord>,
    mut out: W,
) -> std::io::Result<()> {
    for r in records {
        out.write_all(r.to_json_line().as_bytes())?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Verifies a JSON Lines export; a line that does not parse is a break at
/// its position (hashes, links and sequence only: see [`ChainVerifier::verify_jsonl`]).
pub fn verify_jsonl<R: BufRead>(input: R) -> Result<ChainSummary, ChainBreak> {
    ChainVerifier::new().verify_jsonl(input)
}

/// Reads the checkpoints among JSON lines (a [`CheckpointFileSink`]'s file,
/// or a log stream with other lines in between, which are skipped).
pub fn read_checkpoints<R: BufRead>(input: R) -> std::io::Result<Vec<AuditCheckpoint>> {
    let mut out = Vec::new();
    for line in input.lines() {
        if let Some(cp) = AuditCheckpoint::from_json_line(&line?) {
            out.push(cp);
        }
    }
    Ok(out)
}

/// Reads the checkpoints in a file (see [`read_checkpoints`]).
pub fn read_checkpoint_file(path: impl AsRef<Path>) -> Result<Vec<AuditCheckpoint>> {
    let path = path.as_ref();
    let file = std::fs::File::open(path)
        .map_err(|e| Error::AuditFailed(format!("cannot open `{}`: {e}", path.display())))?;
    read_checkpoints(std::io::BufReader::new(file))
        .map_err(|e| Error::AuditFailed(format!("cannot read `{}`: {e}", path.display())))
}

/// A copy of the chain kept outside the store. Appends are fail-closed.
///
/// # Contract
///
/// - **The store's chain is the record; a sink holds a copy.** The broker
///   calls [`AuditSink::append`] after the store has committed the record
///   together with the state change it describes (design rule 4), in `seq`
///   order for each operation. By then the change has happened: a failing
///   sink does not undo it, and the store's chain still holds the record.
/// - **A failing sink fails the operation (fail-closed).** The caller gets
///   [`Error::AuditFailed`] and no credentials: a grant just issued is
///   revoked (and that is recorded too), a redelivery returns nothing.
///   Other operations stay done (an approval stays approved, a revocation
///   stays revoked) although their caller saw an error; retrying them sees
///   the new state. In the reaper, that kind of due work stops for the tick
///   (counted in [`ReapReport::failed`](crate::reaper::ReapReport::failed))
///   and resumes on the next.
/// - **Nothing re-sends a record a sink refused.** A sink's copy then has a
///   gap, visible in its `seq` and `prev_hash` links; the complete chain is
///   read from the store ([`Broker::export_audit`](crate::Broker::export_audit)).
///   With several broker replicas each replica's sinks get the records that
///   replica wrote, and concurrent operations may interleave, so a sink sees
///   records out of `seq` order and must not assume otherwise.
/// - **`Ok` means kept.** `append` and [`AuditSink::checkpoint`] return `Ok`
///   only once the copy is as durable as the sink can make it (the JSON
///   Lines sinks sync the file): a sink that buffers and may lose what it
///   acknowledged defeats fail-closed. `jit_core::testing::sink` (feature
///   `testing`) checks this for sinks whose storage a test can read; the
///   file sinks run it.
/// - **Bounded time.** Appends run on the request path of every operation:
///   a sink must fail rather than hang (give network sinks a timeout).
/// - Records never carry secret values, so a sink may write them anywhere
///   its operators can read.
#[async_trait]
pub trait AuditSink: Send + Sync + std::fmt::Debug {
    /// Appends one record, already committed to the store; an error fails
    /// the operation that produced it (see the trait's contract).
    async fn append(&self, record: &AuditRecord) -> Result<()>;

    /// Keeps a signed checkpoint of the chain's head; an error fails the
    /// operation that produced it. The default ignores checkpoints (a sink
    /// that keeps every record needs none).
    async fn checkpoint(&self, checkpoint: &AuditCheckpoint) -> Result<()> {
        let _ = checkpoint;
        Ok(())
    }
}

/// A file opened for appending, each line synced before `append` returns.
#[derive(Debug)]
struct AppendFile {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

impl AppendFile {
    fn open(path: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::AuditFailed(format!("cannot open `{}`: {e}", path.display())))?;
        Ok(Self {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    fn write_line(&self, line: &str) -> Result<()> {
        let line = format!("{line}\n");
        let mut f = self
            .file
            .lock()
            .map_err(|_| Error::AuditFailed("sink lock poisoned".into()))?;
        f.write_all(line.as_bytes())
            .and_then(|_| f.sync_data())
            .map_err(|e| Error::AuditFailed(format!("`{}`: {e}", self.path.display())))
    }
}

/// Appends records as JSON Lines to a file, flushing and syncing each one.
#[derive(Debug)]
pub struct JsonlFileSink {
    file: AppendFile,
}

impl JsonlFileSink {
    /// Opens (or creates) the file for appending.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Ok(Self {
            file: AppendFile::open(path.as_ref())?,
        })
    }
}

#[async_trait]
impl AuditSink for JsonlFileSink {
    async fn append(&self, record: &AuditRecord) -> Result<()> {
        self.file.write_line(&record.to_json_line())
    }
}

/// Appends signed checkpoints (only) as JSON Lines to a file, syncing each
/// one: small enough to ship to storage the database's administrators
/// cannot rewrite. Read it back with [`read_checkpoint_file`].
#[derive(Debug)]
pub struct CheckpointFileSink {
    file: AppendFile,
}

impl CheckpointFileSink {
    /// Opens (or creates) the file for appending.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Ok(Self {
            file: AppendFile::open(path.as_ref())?,
        })
    }
}

#[async_trait]
impl AuditSink for CheckpointFileSink {
    async fn append(&self, _record: &AuditRecord) -> Result<()> {
        Ok(())
    }

    async fn checkpoint(&self, checkpoint: &AuditCheckpoint) -> Result<()> {
        self.file.write_line(&checkpoint.to_json_line())
    }
}

/// Writes each record as one JSON line to standard output (a function's log stream).
#[derive(Debug, Default)]
pub struct StdoutSink;

#[async_trait]
impl AuditSink for StdoutSink {
    async fn append(&self, record: &AuditRecord) -> Result<()> {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", record.to_json_line())
            .and_then(|_| out.flush())
            .map_err(|e| Error::AuditFailed(format!("stdout: {e}")))
    }

    async fn checkpoint(&self, checkpoint: &AuditCheckpoint) -> Result<()> {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", checkpoint.to_json_line())
            .and_then(|_| out.flush())
            .map_err(|e| Error::AuditFailed(format!("stdout: {e}")))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn chain(n: usize) -> Vec<AuditRecord> {
        let mut prev = GENESIS_HASH.to_string();
        let rid = RequestId::new();
        (0..n)
            .map(|i| {
                let r = AuditEvent::new(
                    Utc::now(),
                    AuditKind::Requested,
                    rid,
                    &format!("user{i}"),
                    State::Pending,
                )
                .chain(i as u64 + 1, &prev);
                prev = r.hash.clone();
                r
            })
            .collect()
    }

    /// The hash is over sorted keys whatever order `details` was built in,
    /// also when serde_json keeps insertion order (`preserve_order`, turned
    /// on by the `cedar` feature's dependencies).
    #[test]
    fn the_hash_does_not_depend_on_key_order() {
        let at = Utc::now();
        let rid = RequestId::new();
        let with = |keys: &[&str]| {
            let mut inner = serde_json::Map::new();
            let mut outer = serde_json::Map::new();
            for k in keys {
                inner.insert((*k).to_string(), serde_json::Value::from(*k));
                outer.insert((*k).to_string(), serde_json::Value::from(1));
            }
            outer.insert("nested".into(), serde_json::Value::Object(inner));
            let mut e = AuditEvent::new(at, AuditKind::Requested, rid, "bob", State::Pending);
            e.details = serde_json::Value::Object(outer);
            e.chain(1, GENESIS_HASH)
        };
        let a = with(&["b", "a", "c"]);
        let b = with(&["c", "b", "a"]);
        assert_eq!(a.hash, b.hash);
        // And it is the hash of the sorted text, as written without `preserve_order`.
        let sorted =
            serde_json::json!({"a": 1, "b": 1, "c": 1, "nested": {"a": "a", "b": "b", "c": "c"}});
        let mut e = a.event.clone();
        e.details = serde_json::from_str(&sorted.to_string()).unwrap();
        assert_eq!(e.chain(1, GENESIS_HASH).hash, a.hash);
    }

    #[test]
    fn intact_chain_verifies() {
        let c = chain(5);
        let s = verify(&c).unwrap();
        assert_eq!(s.records, 5);
        assert_eq!(s.head, c[4].hash);
    }

    #[test]
    fn every_edit_delete_and_swap_is_found_at_its_position() {
        for i in 0..6 {
            let mut c = chain(6);
            c[i].event.actor = "mallory".into();
            assert_eq!(verify(&c).unwrap_err().position, i, "edit {i}");

            let mut c = chain(6);
            c.remove(i);
            if i < 5 {
                assert_eq!(verify(&c).unwrap_err().position, i, "delete {i}");
            } else {
                // Dropping the tail is only visible against a head kept elsewhere.
                assert_ne!(verify(&c).unwrap().head, chain(6)[5].hash);
            }
        }
        for i in 0..5 {
            let mut c = chain(6);
            c.swap(i, i + 1);
            assert_eq!(verify(&c).unwrap_err().position, i, "swap {i}");
        }
    }

    fn sealed_chain(n: usize, keyring: &AuditKeyring) -> Vec<AuditRecord> {
        let mut prev = GENESIS_HASH.to_string();
        let rid = RequestId::new();
        (0..n)
            .map(|i| {
                let r = AuditEvent::new(
                    Utc::now(),
                    AuditKind::Requested,
                    rid,
                    &format!("user{i}"),
                    State::Pending,
                )
                .sealed_with(Some(keyring))
                .chain(i as u64 + 1, &prev);
                prev = r.hash.clone();
                r
            })
            .collect()
    }

    /// What an attacker without the key can do: edit record `i` and
    /// recompute every hash from there on (with the public code).
    fn rehash_from(c: &mut [AuditRecord], i: usize) {
        c[i].event.actor = "mallory".into();
        for j in i..c.len() {
            if j > 0 {
                c[j].prev_hash = c[j - 1].hash.clone();
            }
            c[j].hash = c[j].compute_hash();
        }
    }

    #[test]
    fn a_rehashed_chain_verifies_without_the_key_but_not_with_it() {
        let k = AuditKeyring::new(AuditKey::generate());
        let with_key = ChainVerifier::new().keyring(k.clone());
        let good = sealed_chain(5, &k);
        assert_eq!(with_key.verify(&good).unwrap().sealed, 5);
        for i in 0..5 {
            let mut c = good.clone();
            rehash_from(&mut c, i);
            // The hash chain alone cannot tell.
            assert!(verify(&c).is_ok());
            let b = with_key.verify(&c).unwrap_err();
            assert_eq!((b.position, b.reason), (i, ChainBreakReason::BadMac));

            // Stripping the seals does not help.
            c.iter_mut().skip(i).for_each(|r| r.mac = None);
            let b = with_key.verify(&c).unwrap_err();
            assert_eq!((b.position, b.reason), (i, ChainBreakReason::MissingMac));
        }
        // Seals made by another key do not verify either.
        let other = AuditKeyring::new(AuditKey::generate());
        let b = ChainVerifier::new()
            .keyring(other)
            .verify(&good)
            .unwrap_err();
        assert!(
            matches!(b.reason, ChainBreakReason::UnknownKey { .. }),
            "{b}"
        );
    }

    #[test]
    fn rotation_keeps_old_seals_verifiable_and_seals_with_the_current_key() {
        let old = AuditKey::from_hex(&"11".repeat(32)).unwrap();
        let old_id = old.id().to_string();
        let old_ring = AuditKeyring::new(AuditKey::from_hex(&"11".repeat(32)).unwrap());
        let mut c = sealed_chain(3, &old_ring);
        let new_ring = AuditKeyring::new(AuditKey::generate()).with_previous(old);
        let mut prev = c[2].hash.clone();
        for seq in 4..=5 {
            let r = AuditEvent::new(
                Utc::now(),
                AuditKind::Expired,
                RequestId::new(),
                "reaper",
                State::Expired,
            )
            .sealed_with(Some(&new_ring))
            .chain(seq, &prev);
            assert_eq!(r.mac.as_ref().unwrap().key_id, new_ring.current_id());
            prev = r.hash.clone();
            c.push(r);
        }
        assert_eq!(c[0].mac.as_ref().unwrap().key_id, old_id);
        let s = ChainVerifier::new()
            .keyring(new_ring.clone())
            .verify(&c)
            .unwrap();
        assert_eq!(s.sealed, 5);
        // Without the old key, its records no longer verify, by name.
        let only_new = AuditKeyring::new(AuditKey::from_hex(&"22".repeat(32)).unwrap());
        let b = ChainVerifier::new()
            .keyring(only_new)
            .verify(&c)
            .unwrap_err();
        assert_eq!(
            (b.position, b.reason),
            (0, ChainBreakReason::UnknownKey { key_id: old_id })
        );
    }

    #[test]
    fn checkpoints_catch_truncation_and_rewrites_and_must_be_genuine() {
        let k = AuditKeyring::new(AuditKey::generate());
        let c = sealed_chain(6, &k);
        let cp = k.checkpoint(6, &c[5].hash, Utc::now());
        let v = ChainVerifier::new()
            .keyring(k.clone())
            .checkpoints([cp.clone()]);
        assert_eq!(v.verify(&c).unwrap().checkpoint, Some(6));

        // The last records deleted: every seal still matches, the checkpoint does not.
        for keep in 0..6 {
            let b = v.verify(&c[..keep]).unwrap_err();
            assert_eq!(
                (b.position, b.seq, b.reason),
                (
                    keep,
                    keep as u64 + 1,
                    ChainBreakReason::Truncated {
                        checkpoint: 6,
                        records: keep as u64
                    }
                )
            );
        }
        // Without a keyring, a trusted checkpoint still catches a re-hash up to it.
        let mut r = c.clone();
        rehash_from(&mut r, 2);
        let b = ChainVerifier::new()
            .checkpoints([cp.clone()])
            .verify(&r)
            .unwrap_err();
        assert_eq!(
            (b.position, b.reason),
            (5, ChainBreakReason::CheckpointMismatch { checkpoint: 6 })
        );
        // A checkpoint edited to match a rewritten chain is refused.
        let mut forged = cp.clone();
        forged.head = r[5].hash.clone();
        let b = ChainVerifier::new()
            .keyring(k.clone())
            .checkpoints([forged])
            .verify(&c)
            .unwrap_err();
        assert_eq!(b.reason, ChainBreakReason::BadCheckpoint { checkpoint: 6 });
        // Checkpoint lines round-trip and are picked out of a mixed stream.
        let mut text = Vec::new();
        export_jsonl(&c, &mut text).unwrap();
        text.extend(format!("{}\nnot json\n", cp.to_json_line()).as_bytes());
        assert_eq!(read_checkpoints(&text[..]).unwrap(), vec![cp]);
        assert_eq!(v.verify_jsonl(&text[..]).unwrap_err().position, 6);
    }

    #[test]
    fn sealed_from_admits_an_unsealed_prefix_only() {
        let k = AuditKeyring::new(AuditKey::generate());
        let mut c = chain(2);
        let mut prev = c[1].hash.clone();
        for seq in 3..=4 {
            let r = AuditEvent::new(
                Utc::now(),
                AuditKind::Requested,
                RequestId::new(),
                "x",
                State::Pending,
            )
            .sealed_with(Some(&k))
            .chain(seq, &prev);
            prev = r.hash.clone();
            c.push(r);
        }
        let strict = ChainVerifier::new().keyring(k.clone());
        assert_eq!(
            strict.verify(&c).unwrap_err().reason,
            ChainBreakReason::MissingMac
        );
        let v = strict.sealed_from(3);
        assert_eq!(v.verify(&c).unwrap().sealed, 2);
        c[3].mac = None;
        assert_eq!(v.verify(&c).unwrap_err().position, 3);
    }

    #[test]
    fn undecodable_entries_are_breaks_named_by_seq() {
        let c = chain(3);
        let entries = vec![
            AuditEntry::Record(c[0].clone()),
            AuditEntry::Undecodable {
                seq: 2,
                error: "expected value at line 1 column 1".into(),
            },
            AuditEntry::Record(c[2].clone()),
        ];
        let b = ChainVerifier::new().verify_entries(&entries).unwrap_err();
        assert_eq!((b.position, b.seq), (1, 2));
        assert!(matches!(b.reason, ChainBreakReason::Malformed(_)), "{b}");
    }

    #[test]
    fn key_bytes_never_show() {
        let key = AuditKey::from_hex(&"ab".repeat(32)).unwrap();
        let id = key.id().to_string();
        assert_eq!(id.len(), 16);
        let ring =
            AuditKeyring::new(key).with_previous(AuditKey::from_hex(&"cd".repeat(32)).unwrap());
        let event = AuditEvent::new(
            Utc::now(),
            AuditKind::Requested,
            RequestId::new(),
            "a",
            State::Pending,
        )
        .sealed_with(Some(&ring));
        let record = event.clone().chain(1, GENESIS_HASH);
        let cp = ring.checkpoint(1, &record.hash, Utc::now());
        for shown in [
            format!("{ring:?}"),
            format!("{:?}", AuditKey::from_hex(&"ab".repeat(32)).unwrap()),
            format!("{event:?}"),
            format!("{record:?}"),
            record.to_json_line(),
            cp.to_json_line(),
            format!("{:?}", ChainVerifier::new().keyring(ring.clone())),
        ] {
            assert!(!shown.contains(&"ab".repeat(4)), "{shown}");
            assert!(!shown.contains(&"cd".repeat(4)), "{shown}");
        }
        assert!(format!("{ring:?}").contains(&id));
        // A bad key file's error does not quote it either.
        let err = AuditKey::from_hex(&format!("{}zz", "ab".repeat(31))).unwrap_err();
        assert!(!err.to_string().contains("abab"), "{err}");
        assert_eq!(
            AuditKey::from_hex(&"ab".repeat(32))
                .unwrap()
                .to_hex()
                .as_str(),
            "ab".repeat(32)
        );
    }

    #[test]
    fn the_stored_form_round_trips_and_leaves_out_what_the_chain_holds() {
        let k = AuditKeyring::new(AuditKey::generate());
        let c = sealed_chain(3, &k);
        for (i, r) in c.iter().enumerate() {
            let body = r.to_stored();
            assert!(
                !body.contains(&r.hash) && !body.contains(&r.prev_hash),
                "{body}"
            );
            let back = AuditRecord::from_stored(r.seq, &r.hash, &r.prev_hash, &body).unwrap();
            assert_eq!(&back, r, "record {i}");
            // A whole record (the form stored before) is taken as it is.
            let whole = AuditRecord::from_stored(r.seq, "x", "y", &r.to_json_line()).unwrap();
            assert_eq!(&whole, r);
        }
        // Another predecessor makes the record fail its own hash.
        let moved =
            AuditRecord::from_stored(2, &c[1].hash, GENESIS_HASH, &c[1].to_stored()).unwrap();
        assert_ne!(moved.compute_hash(), moved.hash);
        assert!(AuditRecord::from_stored(1, "h", "p", "[1, 2").is_err());
    }

    /// The packed form reads back as the very record, with or without a
    /// grant and a seal, with a seal tag that is not lowercase hex (kept
    /// as text), before 1970 and with floats, and is smaller than the
    /// compact JSON; so the hash recomputed from it is the stored one.
    #[test]
    fn packed_records_read_back_exactly() {
        let keyring = AuditKeyring::new(AuditKey::generate());
        let at = DateTime::parse_from_rfc3339("1969-07-20T20:17:40.123456789Z")
            .unwrap()
            .to_utc();
        let mut cases = Vec::new();
        for (grant, sealed) in [(false, false), (true, false), (false, true), (true, true)] {
            let e = AuditEvent::new(
                Utc::now(),
                AuditKind::Issued,
                RequestId::new(),
                "bob",
                State::Active,
            )
            .grant(grant.then(GrantId::new))
            .details(serde_json::json!({ "provider": "local", "ratio": 0.1, "n": [1, 2] }))
            .sealed_with(sealed.then_some(&keyring));
            cases.push(e.chain(7, GENESIS_HASH));
        }
        let mut odd = AuditEvent::new(
            at,
            AuditKind::Revoked,
            RequestId::new(),
            "ünï",
            State::Revoked,
        )
        .sealed_with(Some(&keyring))
        .chain(8, GENESIS_HASH);
        odd.mac.as_mut().unwrap().tag = odd.mac.as_ref().unwrap().tag.to_uppercase();
        cases.push(odd);
        for r in cases {
            let packed = r.to_packed();
            assert_eq!(packed[0], 0x02);
            assert!(packed.len() < r.to_stored().len(), "{r:?}");
            let back =
                AuditRecord::from_stored_bytes(r.seq, &r.hash, &r.prev_hash, &packed).unwrap();
            assert_eq!(back, r);
            assert_eq!(back.compute_hash(), r.hash);
            // Rows written in the deflate form before still read the same.
            let old = r.packed_form(false);
            assert_eq!(old[0], 0x01);
            let back = AuditRecord::from_stored_bytes(r.seq, &r.hash, &r.prev_hash, &old);
            assert_eq!(back.unwrap(), r);
            // The JSON forms read through the same entry point.
            let compact = r.to_stored();
            let json = r.to_json_line();
            for text in [compact.as_bytes(), json.as_bytes()] {
                let back = AuditRecord::from_stored_bytes(r.seq, &r.hash, &r.prev_hash, text);
                assert_eq!(back.unwrap(), r);
            }
        }
    }

    /// A packed body that was cut, flipped or made up is an error (which
    /// verification names as a malformed record), never a panic.
    #[test]
    fn damaged_packed_records_are_errors() {
        let keyring = AuditKeyring::new(AuditKey::generate());
        let r = AuditEvent::new(
            Utc::now(),
            AuditKind::Revoked,
            RequestId::new(),
            "bob",
            State::Revoked,
        )
        .details(serde_json::json!({ "reason": "done" }))
        .sealed_with(Some(&keyring))
        .chain(1, GENESIS_HASH);
        let packed = r.to_packed();
        let read = |b: &[u8]| AuditRecord::from_stored_bytes(1, &r.hash, GENESIS_HASH, b);
        for n in [1, 2, 20, packed.len() - 1] {
            assert!(read(&packed[..n]).is_err(), "cut at {n}");
        }
        let mut unknown = packed.clone();
        unknown[0] = 0x03;
        assert!(read(&unknown).is_err());
        // A zstd rest read as deflate (or the other way) is an error too.
        let mut swapped = packed.clone();
        swapped[0] = 0x01;
        assert!(read(&swapped).is_err());
        let mut flipped = packed.clone();
        *flipped.last_mut().unwrap() ^= 0xff;
        // Either unreadable or read as another record: never this one.
        assert_ne!(read(&flipped).ok(), Some(r.clone()));
        assert!(read(&[0x01; 80]).is_err());
    }

    #[test]
    fn details_leave_out_empty_fields() {
        let e = AuditEvent::new(
            Utc::now(),
            AuditKind::Requested,
            RequestId::new(),
            "a",
            State::Pending,
        )
        .details(serde_json::json!({
            "a": null, "b": "", "c": [], "d": {}, "e": 0, "f": false, "g": "x"
        }));
        assert_eq!(
            e.details,
            serde_json::json!({ "e": 0, "f": false, "g": "x" })
        );
    }

    #[test]
    fn a_segment_verifies_on_its_own_between_its_anchors() {
        let k = AuditKeyring::new(AuditKey::generate());
        let c = sealed_chain(6, &k);
        let from = AuditAnchor::new(2, &c[1].hash, Utc::now(), Some(&k));
        let to = AuditAnchor::new(5, &c[4].hash, Utc::now(), Some(&k));
        let segment = |to: Option<AuditAnchor>| {
            let mut out = ArchiveSegment {
                from: from.clone(),
                to,
                records: 0,
            }
            .to_json_line()
            .into_bytes();
            out.push(b'\n');
            export_jsonl(&c[2..5], &mut out).unwrap();
            out.extend(b"{\"record\": {\"id\": \"any\"}}\n");
            out
        };
        let keyed = ChainVerifier::new().keyring(k.clone());
        let s = keyed.verify_jsonl(&segment(Some(to.clone()))[..]).unwrap();
        assert_eq!((s.records, s.head.as_str()), (3, c[4].hash.as_str()));
        // Without its segment line it does not start at the genesis.
        let mut bare = Vec::new();
        export_jsonl(&c[2..5], &mut bare).unwrap();
        assert_eq!(
            keyed.verify_jsonl(&bare[..]).unwrap_err().reason,
            ChainBreakReason::BrokenLink
        );
        // A cut-off tail fails against the segment's end.
        let mut short = segment(Some(to.clone()));
        let text = String::from_utf8(short.clone()).unwrap();
        let keep: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("{\"seq\":5,"))
            .collect();
        short = keep.join("\n").into_bytes();
        assert!(matches!(
            keyed.verify_jsonl(&short[..]).unwrap_err().reason,
            ChainBreakReason::Truncated { checkpoint: 5, .. }
        ));
        // With the key, an unsigned end (or start) is refused; without, trusted.
        let unsigned = AuditAnchor { signed: None, ..to };
        assert_eq!(
            keyed
                .verify_jsonl(&segment(Some(unsigned.clone()))[..])
                .unwrap_err()
                .reason,
            ChainBreakReason::BadAnchor
        );
        assert!(ChainVerifier::new()
            .verify_jsonl(&segment(Some(unsigned))[..])
            .is_ok());
        // A signature over another record does not pass for this one.
        let mut moved = from.clone();
        moved.seq = 1;
        moved.hash = c[0].hash.clone();
        assert_eq!(
            keyed
                .clone()
                .anchor(moved)
                .verify(&c[2..])
                .unwrap_err()
                .reason,
            ChainBreakReason::BadAnchor
        );
    }

    #[test]
    fn jsonl_roundtrip_and_malformed_line() {
        let c = chain(3);
        let mut buf = Vec::new();
        export_jsonl(&c, &mut buf).unwrap();
        assert_eq!(verify_jsonl(&buf[..]).unwrap().records, 3);
        let text = String::from_utf8(buf)
            .unwrap()
            .replacen("user1", "userX", 1);
        assert_eq!(verify_jsonl(text.as_bytes()).unwrap_err().position, 1);
    }
}
