//! The audit key: a secret held outside the store that seals each record
//! and signs checkpoints of the chain's head, so that someone who can write
//! the database can neither rewrite the chain nor cut its end off unseen.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use super::ChainBreakReason;
use crate::error::{ConfigError, Error, Result};

type HmacSha256 = Hmac<Sha256>;

/// Domain separation: a record seal can never pass as a checkpoint signature.
const RECORD_DOMAIN: &[u8] = b"jit-audit-record-v1\n";
const CHECKPOINT_DOMAIN: &[u8] = b"jit-audit-checkpoint-v1\n";
const KEY_ID_DOMAIN: &[u8] = b"jit-audit-key-id-v1\n";
const KEY_FIELD: &str = "audit_key";

/// A 256-bit HMAC-SHA256 key for the audit chain. Keep it outside the
/// store (a file readable only by the broker, a secret manager, an
/// environment variable): whoever holds it can seal records.
///
/// Its id ([`AuditKey::id`]) is derived from the key, so rotating needs no
/// naming scheme; `Debug` prints only the id, and the bytes are zeroized on
/// drop.
pub struct AuditKey {
    id: String,
    secret: Zeroizing<[u8; 32]>,
}

impl AuditKey {
    /// A key from 32 bytes.
    pub fn from_bytes(mut bytes: [u8; 32]) -> Self {
        let secret = Zeroizing::new(bytes);
        bytes.zeroize();
        let mut h = Sha256::new();
        h.update(KEY_ID_DOMAIN);
        h.update(&secret[..]);
        let id = hex::encode(&h.finalize()[..8]);
        Self { id, secret }
    }

    /// A fresh random key from the operating system's generator.
    pub fn generate() -> Self {
        use rand_core::RngCore;
        let mut bytes = [0u8; 32];
        rand_core::OsRng.fill_bytes(&mut bytes);
        Self::from_bytes(bytes)
    }

    /// A key written as 64 hexadecimal digits (surrounding whitespace is
    /// ignored), as `openssl rand -hex 32` prints one.
    pub fn from_hex(text: &str) -> Result<Self> {
        let text = text.trim();
        let mut bytes = [0u8; 32];
        // The decoder's message is dropped: it could quote key material.
        hex::decode_to_slice(text, &mut bytes).map_err(|_| {
            bytes.zeroize();
            key_error("not 64 hexadecimal digits (create one with `openssl rand -hex 32`)")
        })?;
        Ok(Self::from_bytes(bytes))
    }

    /// Reads a key file holding 64 hexadecimal digits.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            Error::Config(ConfigError::Io {
                path: path.display().to_string(),
                message: e.to_string(),
            })
        })?);
        Self::from_hex(&text).map_err(|_| {
            key_error(&format!(
                "`{}` does not hold 64 hexadecimal digits (create one with `openssl rand -hex 32`)",
                path.display()
            ))
        })
    }

    /// The key as 64 hexadecimal digits, to store it somewhere safe.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(&self.secret[..]))
    }

    /// The key id records and checkpoints carry: 16 hexadecimal digits
    /// derived from the key (it reveals nothing about the key).
    pub fn id(&self) -> &str {
        &self.id
    }

    fn tag(&self, domain: &[u8], parts: &[&[u8]]) -> HmacSha256 {
        // HMAC pads a short key with zeros to the block size, so a 32-byte key
        // padded here is the same key: this form of `new` cannot fail.
        let mut block = Zeroizing::new([0u8; 64]);
        block[..32].copy_from_slice(&self.secret[..]);
        let mut mac = <HmacSha256 as KeyInit>::new(&(*block).into());
        mac.update(domain);
        for p in parts {
            mac.update(p);
            mac.update(b"\n");
        }
        mac
    }
}

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditKey")
            .field("id", &self.id)
            .field("secret", &"** redacted **")
            .finish()
    }
}

fn key_error(message: &str) -> Error {
    Error::Config(ConfigError::InvalidField {
        entitlement: "settings".into(),
        field: KEY_FIELD.into(),
        message: message.into(),
    })
}

/// A record's seal: HMAC-SHA256 over its `seq` and hash, under key `key_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditMac {
    /// Which key sealed the record ([`AuditKey::id`]).
    pub key_id: String,
    /// The HMAC, hexadecimal.
    pub tag: String,
}

/// The keys of an audit chain: the current one seals new records and signs
/// checkpoints; previous ones still verify what they sealed.
///
/// # Rotation
///
/// Generate a new key, make it current and keep the old one as previous
/// ([`AuditKeyring::with_previous`]) for as long as records or checkpoints
/// it sealed must verify (normally: for as long as you keep the records).
/// A record sealed by a key the keyring does not hold fails verification as
/// [`ChainBreakReason::UnknownKey`], naming the key id.
#[derive(Clone)]
pub struct AuditKeyring {
    current: Arc<AuditKey>,
    previous: Vec<Arc<AuditKey>>,
}

impl AuditKeyring {
    /// A keyring that seals with `current`.
    pub fn new(current: AuditKey) -> Self {
        Self {
            current: Arc::new(current),
            previous: Vec::new(),
        }
    }

    /// Also verifies (never seals with) `key`.
    pub fn with_previous(mut self, key: AuditKey) -> Self {
        self.previous.push(Arc::new(key));
        self
    }

    /// The id of the key that seals.
    pub fn current_id(&self) -> &str {
        self.current.id()
    }

    fn find(&self, id: &str) -> Option<&AuditKey> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .map(|k| k.as_ref())
            .find(|k| k.id() == id)
    }

    /// Seals record `seq` whose hash is `hash`, with the current key.
    pub fn seal(&self, seq: u64, hash: &str) -> AuditMac {
        let tag = self
            .current
            .tag(
                RECORD_DOMAIN,
                &[seq.to_string().as_bytes(), hash.as_bytes()],
            )
            .finalize()
            .into_bytes();
        AuditMac {
            key_id: self.current.id().to_string(),
            tag: hex::encode(tag),
        }
    }

    /// Checks a record's seal, in constant time.
    pub fn check(
        &self,
        mac: &AuditMac,
        seq: u64,
        hash: &str,
    ) -> std::result::Result<(), ChainBreakReason> {
        let key = self
            .find(&mac.key_id)
            .ok_or_else(|| ChainBreakReason::UnknownKey {
                key_id: mac.key_id.clone(),
            })?;
        let tag = hex::decode(&mac.tag).map_err(|_| ChainBreakReason::BadMac)?;
        key.tag(
            RECORD_DOMAIN,
            &[seq.to_string().as_bytes(), hash.as_bytes()],
        )
        .verify_slice(&tag)
        .map_err(|_| ChainBreakReason::BadMac)
    }

    /// A checkpoint of the head `(seq, head)` at `at`, signed with the current key.
    pub fn checkpoint(&self, seq: u64, head: &str, at: DateTime<Utc>) -> AuditCheckpoint {
        let mut cp = AuditCheckpoint {
            seq,
            head: head.to_string(),
            at,
            key_id: self.current.id().to_string(),
            mac: String::new(),
        };
        cp.mac = hex::encode(
            self.current
                .tag_parts(CHECKPOINT_DOMAIN, &cp.signed_parts())
                .finalize()
                .into_bytes(),
        );
        cp
    }

    /// Checks a checkpoint's signature, in constant time.
    pub fn check_checkpoint(
        &self,
        cp: &AuditCheckpoint,
    ) -> std::result::Result<(), ChainBreakReason> {
        let key = self
            .find(&cp.key_id)
            .ok_or_else(|| ChainBreakReason::UnknownKey {
                key_id: cp.key_id.clone(),
            })?;
        let tag = hex::decode(&cp.mac)
            .map_err(|_| ChainBreakReason::BadCheckpoint { checkpoint: cp.seq })?;
        key.tag_parts(CHECKPOINT_DOMAIN, &cp.signed_parts())
            .verify_slice(&tag)
            .map_err(|_| ChainBreakReason::BadCheckpoint { checkpoint: cp.seq })
    }
}

impl fmt::Debug for AuditKeyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditKeyring")
            .field("current", &self.current.id())
            .field(
                "previous",
                &self.previous.iter().map(|k| k.id()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// A signed statement, kept outside the store, that the chain had `seq`
/// records and its record `seq` had hash `head` at time `at`. A store
/// holding fewer records, or another hash at `seq`, was truncated or
/// rewritten.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditCheckpoint {
    /// Length of the chain (the `seq` of its head record).
    pub seq: u64,
    /// Hash of record `seq`.
    pub head: String,
    /// When the broker signed it.
    pub at: DateTime<Utc>,
    /// Which key signed it ([`AuditKey::id`]).
    pub key_id: String,
    /// HMAC-SHA256 over `seq`, `head` and `at`, hexadecimal.
    pub mac: String,
}

#[derive(Serialize, Deserialize)]
struct CheckpointLine {
    checkpoint: AuditCheckpoint,
}

impl AuditCheckpoint {
    fn signed_parts(&self) -> [Vec<u8>; 3] {
        [
            self.seq.to_string().into_bytes(),
            self.head.clone().into_bytes(),
            self.at
                .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
                .into_bytes(),
        ]
    }

    /// One JSON line, `{"checkpoint":{...}}`, distinct from any record line.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(&CheckpointLine {
            checkpoint: self.clone(),
        })
        .unwrap_or_default()
    }

    /// Parses a line written by [`AuditCheckpoint::to_json_line`]; `None` for any other line.
    pub fn from_json_line(line: &str) -> Option<Self> {
        serde_json::from_str::<CheckpointLine>(line)
            .ok()
            .map(|l| l.checkpoint)
    }
}

impl AuditKey {
    fn tag_parts(&self, domain: &[u8], parts: &[Vec<u8>; 3]) -> HmacSha256 {
        let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
        self.tag(domain, &refs)
    }
}
