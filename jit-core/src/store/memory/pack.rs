//! The memory store's compact form of a JSON value, and the tables of
//! strings and subtrees that packed values share.
//!
//! A packed value is a tag byte and its payload:
//!
//! - identifiers and times, which are mostly different in every record,
//!   are kept as bytes: a UUID in its 36-character form as 16 bytes, a
//!   timestamp in the form `chrono` writes (`2026-12-07T13:23:58.123Z`) as
//!   seconds and nanoseconds, 64 lowercase hexadecimal digits (a hash, a
//!   seal) as 32 bytes. Each is used only when turning the bytes back into
//!   text gives exactly the string given, so every value reads back as it
//!   was written (an audit record's hash covers its text);
//! - every other string, and every object key, is kept once in [`Pack`]'s
//!   table of strings and referred to by its number;
//! - an object or array holding no identifier or time (a decision, the
//!   entitlement a request copies, a requester with their groups, the
//!   details of an approval or a revocation) is kept once in the table of
//!   subtrees and referred to by its number, so the thousands of records
//!   that repeat it each hold a few bytes;
//! - numbers as variable-length integers or the bits of an `f64` (the
//!   decimal text when neither gives back the same number).
//!
//! Both tables count the packed values that use each entry and drop an
//! entry when its last user is released ([`Pack::release`]), so a store
//! that deletes what it no longer needs gives the memory back.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Number, Value};

const NULL: u8 = 0;
const FALSE: u8 = 1;
const TRUE: u8 = 2;
/// A non-negative integer, varint.
const UINT: u8 = 3;
/// A negative integer `n`, as the varint of `-(n + 1)`.
const NEG: u8 = 4;
/// An `f64`, its 8 bytes little-endian.
const FLOAT: u8 = 5;
/// A number as its decimal text (length, bytes).
const NUMBER_TEXT: u8 = 6;
/// A string inline (length, bytes).
const TEXT: u8 = 7;
/// A string from the table of strings (its number).
const SHARED_TEXT: u8 = 8;
/// A UUID's text, as its 16 bytes.
const UUID: u8 = 9;
/// A timestamp's text, as zigzag seconds and nanoseconds (varints).
const TIME: u8 = 10;
/// 64 lowercase hexadecimal digits, as 32 bytes.
const HEX32: u8 = 11;
/// An array: its length, then each item.
const ARRAY: u8 = 12;
/// An object: its length, then each key and value; a key is a varint,
/// `number << 1` for one from the table of strings, `length << 1 | 1`
/// followed by the bytes for one inline.
const OBJECT: u8 = 13;
/// An object or array from the table of subtrees (its number).
const SHARED_TREE: u8 = 14;
/// The owner's request id, as text ([`Owner::id`]).
const OWN_ID: u8 = 15;
/// The owner's grant id, as text ([`Owner::grant`]).
const OWN_GRANT: u8 = 16;

/// Strings longer than this are kept inline: long text (an error message)
/// is seldom repeated word for word.
const MAX_SHARED_TEXT: usize = 256;
/// Subtrees shorter than this packed (`[]`, `{}`) are kept inline: a
/// reference would not be shorter.
const MIN_SHARED_TREE: usize = 4;
/// Slots of [`Pack::seen`] (16 bytes each).
const SEEN_SLOTS: usize = 1 << 16;

/// The request a packed value belongs to, and the ids that stand for
/// themselves in it. What a value was packed with must be what it is
/// unpacked with: an owner's ids are set once and never change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Owner {
    /// The request id.
    pub(super) id: Option<uuid::Uuid>,
    /// Its grant's id, once it has one.
    pub(super) grant: Option<uuid::Uuid>,
}

impl Owner {
    /// Whose values [`Pack::seen`] tells apart.
    fn tag(&self) -> u64 {
        self.id.map_or(0, |id| {
            let (high, low) = id.as_u64_pair();
            high ^ low
        })
    }
}

/// A stored value does not unpack: the store's own bytes are wrong.
#[derive(Debug)]
pub(super) struct Corrupt(&'static str);

impl std::fmt::Display for Corrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// Entries kept once, each with the number of packed values using it.
#[derive(Default)]
struct Table {
    ids: HashMap<Arc<[u8]>, u32>,
    entries: Vec<Entry>,
    free: Vec<u32>,
}

#[derive(Default)]
struct Entry {
    bytes: Option<Arc<[u8]>>,
    uses: u32,
}

impl Table {
    /// One more use of `bytes`: its number, and whether it was new.
    fn add(&mut self, bytes: &[u8]) -> (u32, bool) {
        if let Some(&id) = self.ids.get(bytes) {
            if let Some(e) = self.entries.get_mut(id as usize) {
                e.uses += 1;
            }
            return (id, false);
        }
        let shared: Arc<[u8]> = Arc::from(bytes);
        let entry = Entry {
            bytes: Some(shared.clone()),
            uses: 1,
        };
        let id = match self.free.pop() {
            Some(id) => {
                if let Some(e) = self.entries.get_mut(id as usize) {
                    *e = entry;
                }
                id
            }
            None => {
                self.entries.push(entry);
                u32::try_from(self.entries.len() - 1).unwrap_or(u32::MAX)
            }
        };
        self.ids.insert(shared, id);
        (id, true)
    }

    fn get(&self, id: u64) -> Result<&[u8], Corrupt> {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.entries.get(i))
            .and_then(|e| e.bytes.as_deref())
            .ok_or(Corrupt(
                "a packed value names a table entry that is not there",
            ))
    }

    /// The number of `bytes`, when they are in the table.
    fn find(&self, bytes: &[u8]) -> Option<u32> {
        self.ids.get(bytes).copied()
    }

    /// One use fewer of entry `id`: its bytes when that was the last.
    fn drop_use(&mut self, id: u64) -> Option<Arc<[u8]>> {
        let i = usize::try_from(id).ok()?;
        let e = self.entries.get_mut(i)?;
        e.uses = e.uses.saturating_sub(1);
        if e.uses > 0 {
            return None;
        }
        let bytes = e.bytes.take()?;
        self.ids.remove(&bytes);
        self.free.push(u32::try_from(i).unwrap_or(u32::MAX));
        Some(bytes)
    }

    fn len(&self) -> usize {
        self.ids.len()
    }
}

/// The shared tables, and packing and unpacking against them.
#[derive(Default)]
pub(super) struct Pack {
    texts: Table,
    trees: Table,
    /// Fingerprints of strings and subtrees kept inline, with the owner
    /// they were seen for, one per slot ([`SEEN_SLOTS`], allocated on
    /// first use; fingerprint 0 is an empty slot): a sighting for another
    /// owner moves the next copy into a table. A slot holds the latest
    /// fingerprint mapped to it, so something seen again only long after
    /// may stay inline; either way it reads back the same.
    seen: Vec<(u64, u64)>,
    /// The owner of the value being packed.
    owner: Owner,
}

impl std::fmt::Debug for Pack {
    /// Sizes only: the strings are record contents.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pack")
            .field("texts", &self.texts.len())
            .field("trees", &self.trees.len())
            .finish()
    }
}

impl Pack {
    /// `v` packed, for `owner` (the request it belongs to: see the module
    /// docs); the entries it uses count one more use each until it is
    /// [released](Pack::release).
    pub(super) fn pack(&mut self, v: &Value, owner: Owner) -> Box<[u8]> {
        let mut out = Vec::new();
        self.pack_into(v, owner, &mut out);
        out.into_boxed_slice()
    }

    /// Appends `v` packed to `out` (see [`Pack::pack`]).
    pub(super) fn pack_into(&mut self, v: &Value, owner: Owner, out: &mut Vec<u8>) {
        self.owner = owner;
        self.put(v, out);
    }

    /// The value `bytes` hold, packed for `owner`.
    pub(super) fn unpack(&self, bytes: &[u8], owner: &Owner) -> Result<Value, Corrupt> {
        let mut r = Reader { bytes, at: 0 };
        let v = self.get(&mut r, owner)?;
        if r.at != bytes.len() {
            return Err(Corrupt("a packed value has bytes after its end"));
        }
        Ok(v)
    }

    /// The value at the start of `bytes`, and the bytes after it.
    pub(super) fn unpack_prefix<'b>(
        &self,
        bytes: &'b [u8],
        owner: &Owner,
    ) -> Result<(Value, &'b [u8]), Corrupt> {
        let mut r = Reader { bytes, at: 0 };
        let v = self.get(&mut r, owner)?;
        Ok((v, bytes.get(r.at..).unwrap_or_default()))
    }

    /// Gives back the uses a packed value holds (it is being deleted).
    pub(super) fn release(&mut self, bytes: &[u8]) -> Result<(), Corrupt> {
        let mut r = Reader { bytes, at: 0 };
        while r.at < bytes.len() {
            self.release_one(&mut r)?;
        }
        Ok(())
    }

    /// Whether both tables are empty (nothing packed is kept).
    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.texts.len() == 0 && self.trees.len() == 0
    }

    /// The number of string `s` in the table, when some value uses it.
    pub(super) fn text_id(&self, s: &str) -> Option<u32> {
        self.texts.find(s.as_bytes())
    }

    /// One more use of string `s` (an index keyed by it): its number.
    pub(super) fn hold_text(&mut self, s: &str) -> u32 {
        self.texts.add(s.as_bytes()).0
    }

    /// Gives back a use taken with [`Pack::hold_text`].
    pub(super) fn drop_text(&mut self, id: u32) {
        let _ = self.texts.drop_use(u64::from(id));
    }

    /// Packs `v` into `out`; whether it holds an identifier or a time
    /// (so is probably different in every record, and not worth sharing).
    fn put(&mut self, v: &Value, out: &mut Vec<u8>) -> bool {
        match v {
            Value::Null => {
                out.push(NULL);
                false
            }
            Value::Bool(false) => {
                out.push(FALSE);
                false
            }
            Value::Bool(true) => {
                out.push(TRUE);
                false
            }
            Value::Number(n) => {
                put_number(n, out);
                false
            }
            Value::String(s) => self.put_str(s, out),
            Value::Array(items) => {
                let mut body = vec![ARRAY];
                varint(items.len() as u64, &mut body);
                let mut unique = false;
                for item in items {
                    unique |= self.put(item, &mut body);
                }
                self.put_tree(body, unique, out)
            }
            Value::Object(map) => {
                let mut body = vec![OBJECT];
                varint(map.len() as u64, &mut body);
                let mut unique = false;
                for (k, item) in map {
                    match self.share_text(k) {
                        Some(id) => varint(u64::from(id) << 1, &mut body),
                        None => {
                            varint((k.len() as u64) << 1 | 1, &mut body);
                            body.extend_from_slice(k.as_bytes());
                        }
                    }
                    unique |= self.put(item, &mut body);
                }
                self.put_tree(body, unique, out)
            }
        }
    }

    /// An object or array packed (`body`, its tag first): shared when it
    /// holds no identifier or time.
    fn put_tree(&mut self, body: Vec<u8>, unique: bool, out: &mut Vec<u8>) -> bool {
        if unique
            || body.len() < MIN_SHARED_TREE
            || (self.trees.find(&body).is_none() && !self.seen_before(TREE_SEED, &body))
        {
            out.extend_from_slice(&body);
            return unique;
        }
        let (id, new) = self.trees.add(&body);
        if !new {
            // The entry already holds the uses `body` took.
            let _ = self.release(&body);
        }
        out.push(SHARED_TREE);
        varint(u64::from(id), out);
        false
    }

    fn put_str(&mut self, s: &str, out: &mut Vec<u8>) -> bool {
        if let Some(u) = as_uuid(s) {
            if Some(u) == self.owner.id {
                out.push(OWN_ID);
            } else if Some(u) == self.owner.grant {
                out.push(OWN_GRANT);
            } else {
                out.push(UUID);
                out.extend_from_slice(u.as_bytes());
            }
            // Never shared: what contains it differs from record to record
            // (and an owner's id means another id under another owner).
            return true;
        }
        if let Some(t) = as_time(s) {
            out.push(TIME);
            varint(zigzag(t.timestamp()), out);
            varint(u64::from(t.timestamp_subsec_nanos()), out);
            return true;
        }
        if let Some(h) = as_hex32(s) {
            out.push(HEX32);
            out.extend_from_slice(&h);
            return true;
        }
        match self.share_text(s) {
            Some(id) => {
                out.push(SHARED_TEXT);
                varint(u64::from(id), out);
            }
            None => {
                out.push(TEXT);
                varint(s.len() as u64, out);
                out.extend_from_slice(s.as_bytes());
            }
        }
        false
    }

    /// One more use of `s` in the table of strings, when it is there or
    /// was seen before (and is not too long): its number.
    fn share_text(&mut self, s: &str) -> Option<u32> {
        let shared = s.len() <= MAX_SHARED_TEXT
            && (self.texts.find(s.as_bytes()).is_some()
                || self.seen_before(TEXT_SEED, s.as_bytes()));
        shared.then(|| self.texts.add(s.as_bytes()).0)
    }

    /// Whether `bytes` were seen before for another owner (by their
    /// fingerprint); remembers them when not.
    fn seen_before(&mut self, seed: u64, bytes: &[u8]) -> bool {
        if self.seen.is_empty() {
            self.seen = vec![(0, 0); SEEN_SLOTS];
        }
        let print = fingerprint(seed, bytes);
        let slot = (print as usize) & (SEEN_SLOTS - 1);
        match self.seen.get_mut(slot) {
            Some((kept, owner)) if *kept == print => *owner != self.owner.tag(),
            Some(kept) => {
                *kept = (print, self.owner.tag());
                false
            }
            None => false,
        }
    }

    fn get(&self, r: &mut Reader<'_>, owner: &Owner) -> Result<Value, Corrupt> {
        Ok(match r.byte()? {
            NULL => Value::Null,
            FALSE => Value::Bool(false),
            TRUE => Value::Bool(true),
            UINT => Value::Number(r.varint()?.into()),
            NEG => {
                let n = i64::try_from(r.varint()?)
                    .map_err(|_| Corrupt("a packed negative number is out of range"))?;
                Value::Number((-n - 1).into())
            }
            FLOAT => {
                let bits = u64::from_le_bytes(r.array()?);
                Number::from_f64(f64::from_bits(bits))
                    .map(Value::Number)
                    .ok_or(Corrupt("a packed float is not finite"))?
            }
            NUMBER_TEXT => {
                let text = r.text()?;
                Value::Number(
                    serde_json::from_str(text)
                        .map_err(|_| Corrupt("a packed number's text is not a number"))?,
                )
            }
            TEXT => Value::String(r.text()?.to_string()),
            SHARED_TEXT => Value::String(self.text(r.varint()?)?.to_string()),
            UUID => Value::String(uuid::Uuid::from_bytes(r.array()?).hyphenated().to_string()),
            TIME => {
                let secs = unzigzag(r.varint()?);
                let nanos = u32::try_from(r.varint()?)
                    .map_err(|_| Corrupt("a packed time's nanoseconds are out of range"))?;
                let t = DateTime::<Utc>::from_timestamp(secs, nanos)
                    .ok_or(Corrupt("a packed time is out of range"))?;
                Value::String(time_text(&t))
            }
            HEX32 => Value::String(hex::encode(r.array::<32>()?)),
            ARRAY => {
                let n = r.len()?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.get(r, owner)?);
                }
                Value::Array(items)
            }
            OBJECT => {
                let n = r.len()?;
                let mut map = Map::new();
                for _ in 0..n {
                    let key = self.key(r)?;
                    map.insert(key, self.get(r, owner)?);
                }
                Value::Object(map)
            }
            SHARED_TREE => {
                let bytes = self.trees.get(r.varint()?)?;
                self.unpack(bytes, owner)?
            }
            OWN_ID => Value::String(
                owner
                    .id
                    .ok_or(Corrupt("a packed value names its owner's id, but has none"))?
                    .hyphenated()
                    .to_string(),
            ),
            OWN_GRANT => Value::String(
                owner
                    .grant
                    .ok_or(Corrupt(
                        "a packed value names its owner's grant, but has none",
                    ))?
                    .hyphenated()
                    .to_string(),
            ),
            _ => return Err(Corrupt("a packed value has an unknown tag")),
        })
    }

    /// An object's key at `r`: from the table or inline.
    fn key(&self, r: &mut Reader<'_>) -> Result<String, Corrupt> {
        let n = r.varint()?;
        if n & 1 == 0 {
            return Ok(self.text(n >> 1)?.to_string());
        }
        let len =
            usize::try_from(n >> 1).map_err(|_| Corrupt("a packed length is out of range"))?;
        std::str::from_utf8(r.slice(len)?)
            .map(str::to_string)
            .map_err(|_| Corrupt("a packed key is not UTF-8"))
    }

    fn text(&self, id: u64) -> Result<&str, Corrupt> {
        std::str::from_utf8(self.texts.get(id)?)
            .map_err(|_| Corrupt("a shared string is not UTF-8"))
    }

    /// Gives back the uses of the value at `r`, and moves past it.
    fn release_one(&mut self, r: &mut Reader<'_>) -> Result<(), Corrupt> {
        match r.byte()? {
            NULL | FALSE | TRUE | OWN_ID | OWN_GRANT => {}
            UINT | NEG => {
                r.varint()?;
            }
            FLOAT => {
                r.array::<8>()?;
            }
            NUMBER_TEXT | TEXT => {
                r.text()?;
            }
            SHARED_TEXT => {
                let _ = self.texts.drop_use(r.varint()?);
            }
            UUID => {
                r.array::<16>()?;
            }
            TIME => {
                r.varint()?;
                r.varint()?;
            }
            HEX32 => {
                r.array::<32>()?;
            }
            ARRAY => {
                for _ in 0..r.len()? {
                    self.release_one(r)?;
                }
            }
            OBJECT => {
                for _ in 0..r.len()? {
                    let key = r.varint()?;
                    if key & 1 == 0 {
                        let _ = self.texts.drop_use(key >> 1);
                    } else {
                        let len = usize::try_from(key >> 1)
                            .map_err(|_| Corrupt("a packed length is out of range"))?;
                        r.slice(len)?;
                    }
                    self.release_one(r)?;
                }
            }
            SHARED_TREE => {
                if let Some(bytes) = self.trees.drop_use(r.varint()?) {
                    self.release(&bytes)?;
                }
            }
            _ => return Err(Corrupt("a packed value has an unknown tag")),
        }
        Ok(())
    }
}

const TEXT_SEED: u64 = 0xcbf2_9ce4_8422_2325;
const TREE_SEED: u64 = 0x6c62_272e_07bb_0142;

/// FNV-1a of `bytes` from `seed`, never 0 (an empty slot).
fn fingerprint(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h | 1
}

fn put_number(n: &Number, out: &mut Vec<u8>) {
    if let Some(u) = n.as_u64() {
        out.push(UINT);
        varint(u, out);
    } else if let Some(i) = n.as_i64() {
        out.push(NEG);
        // `i` is negative here: `-(i + 1)` is at most `i64::MAX`.
        varint((-(i + 1)) as u64, out);
    } else if let Some(f) = n
        .as_f64()
        .filter(|f| Number::from_f64(*f).as_ref() == Some(n))
    {
        out.push(FLOAT);
        out.extend_from_slice(&f.to_bits().to_le_bytes());
    } else {
        let text = n.to_string();
        out.push(NUMBER_TEXT);
        varint(text.len() as u64, out);
        out.extend_from_slice(text.as_bytes());
    }
}

/// `s` as a UUID, when its lowercase hyphenated form is exactly `s`.
fn as_uuid(s: &str) -> Option<uuid::Uuid> {
    if s.len() != 36 {
        return None;
    }
    let u = uuid::Uuid::try_parse(s).ok()?;
    let mut text = [0u8; 36];
    (u.hyphenated().encode_lower(&mut text).as_bytes() == s.as_bytes()).then_some(u)
}

/// `s` as a time, when [`time_text`] gives exactly `s` back.
fn as_time(s: &str) -> Option<DateTime<Utc>> {
    if !(20..=35).contains(&s.len()) || !s.ends_with('Z') || s.as_bytes().get(10) != Some(&b'T') {
        return None;
    }
    let t = DateTime::parse_from_rfc3339(s).ok()?.with_timezone(&Utc);
    (time_text(&t) == s).then_some(t)
}

/// A time as `chrono` serializes one (`2026-12-07T13:23:58.123456Z`: no
/// fraction, or 3, 6 or 9 digits).
fn time_text(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn as_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

pub(super) fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

fn unzigzag(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

/// Reads packed bytes front to back.
pub(super) struct Reader<'b> {
    pub(super) bytes: &'b [u8],
    pub(super) at: usize,
}

impl<'b> Reader<'b> {
    fn byte(&mut self) -> Result<u8, Corrupt> {
        let b = *self
            .bytes
            .get(self.at)
            .ok_or(Corrupt("a packed value ends early"))?;
        self.at += 1;
        Ok(b)
    }

    pub(super) fn varint(&mut self) -> Result<u64, Corrupt> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            n |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(n);
            }
        }
        Err(Corrupt("a packed varint is too long"))
    }

    fn len(&mut self) -> Result<usize, Corrupt> {
        usize::try_from(self.varint()?).map_err(|_| Corrupt("a packed length is out of range"))
    }

    pub(super) fn slice(&mut self, n: usize) -> Result<&'b [u8], Corrupt> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or(Corrupt("a packed value ends early"))?;
        let s = self.bytes.get(self.at..end).unwrap_or_default();
        self.at = end;
        Ok(s)
    }

    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N], Corrupt> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.slice(N)?);
        Ok(out)
    }

    fn text(&mut self) -> Result<&'b str, Corrupt> {
        let n = self.len()?;
        std::str::from_utf8(self.slice(n)?).map_err(|_| Corrupt("a packed string is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use serde_json::json;

    /// Each value its own owner.
    fn owner_of(v: &Value) -> Owner {
        Owner {
            id: Some(uuid::Uuid::from_u64_pair(
                fingerprint(0, v.to_string().as_bytes()),
                0,
            )),
            grant: None,
        }
    }

    fn roundtrip(p: &mut Pack, v: &Value) -> Box<[u8]> {
        let owner = owner_of(v);
        let bytes = p.pack(v, owner);
        assert_eq!(&p.unpack(&bytes, &owner).unwrap(), v, "{v}");
        bytes
    }

    /// Every kind of value reads back exactly, including strings that only
    /// look like the forms kept as bytes.
    #[test]
    fn values_read_back_exactly() {
        let mut p = Pack::default();
        for v in [
            json!(null),
            json!(true),
            json!(false),
            json!(0),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(-1),
            json!(1.5),
            json!(-0.0),
            json!(1e300),
            json!(0.1),
            json!(""),
            json!("a string"),
            json!("x".repeat(MAX_SHARED_TEXT + 1)),
            json!("0e5b6f1c-7d2a-4c3e-9f10-2b3c4d5e6f70"),
            json!("0E5B6F1C-7D2A-4C3E-9F10-2B3C4D5E6F70"),
            json!("0e5b6f1c7d2a4c3e9f102b3c4d5e6f70"),
            json!("2026-12-07T13:23:58Z"),
            json!("2026-12-07T13:23:58.100Z"),
            json!("2026-12-07T13:23:58.123456Z"),
            json!("2026-12-07T13:23:58.123456789Z"),
            json!("2026-12-07T13:23:58.1Z"),
            json!("2026-12-07T13:23:58+00:00"),
            json!("2026-12-07T13:23:58.000Z"),
            json!("1969-12-31T23:59:59.999999999Z"),
            json!("ab".repeat(32)),
            json!("AB".repeat(32)),
            json!("ab".repeat(31) + "ag"),
            json!([]),
            json!({}),
            json!([1, "two", [3], {"four": 4}]),
            json!({"b": 1, "a": {"nested": ["x", null, 2.5]}, "id": "0e5b6f1c-7d2a-4c3e-9f10-2b3c4d5e6f70"}),
        ] {
            roundtrip(&mut p, &v);
        }
    }

    /// Repeated strings and subtrees are kept once (from their second
    /// sighting on), one-offs stay inline, and released entries leave the
    /// tables: a store that deletes gives the memory back.
    #[test]
    fn shared_entries_are_counted_and_released() {
        let mut p = Pack::default();
        let v = |id: &str, once: &str| {
            json!({
                "id": id,
                "decision": {"verdict": "auto_approve", "reasons": ["eligible", "within the maximum"]},
                "note": once,
            })
        };
        let ids = [
            "0e5b6f1c-7d2a-4c3e-9f10-2b3c4d5e6f70",
            "1e5b6f1c-7d2a-4c3e-9f10-2b3c4d5e6f70",
            "2e5b6f1c-7d2a-4c3e-9f10-2b3c4d5e6f70",
            "3e5b6f1c-7d2a-4c3e-9f10-2b3c4d5e6f70",
        ];
        let packed: Vec<_> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| roundtrip(&mut p, &v(id, &format!("one-off note {i}"))))
            .collect();
        // Each level of nesting is shared one sighting after the one inside
        // it: the strings from the second record on, the reasons from the
        // third, the decision from the fourth.
        assert_eq!(
            p.trees.len(),
            2,
            "the decision and its reasons are kept once"
        );
        assert!(
            packed[3].len() < packed[0].len() / 2,
            "{} {}",
            packed[3].len(),
            packed[0].len()
        );
        for i in 0..4 {
            assert!(
                p.text_id(&format!("one-off note {i}")).is_none(),
                "one-offs stay inline"
            );
        }
        let (texts, trees) = (p.texts.len(), p.trees.len());
        for bytes in &packed[..3] {
            p.release(bytes).unwrap();
        }
        assert_eq!(
            (p.texts.len(), p.trees.len()),
            (texts, trees),
            "the last still uses them"
        );
        let last = v(ids[3], "one-off note 3");
        assert_eq!(p.unpack(&packed[3], &owner_of(&last)).unwrap(), last);
        p.release(&packed[3]).unwrap();
        assert_eq!((p.texts.len(), p.trees.len()), (0, 0));
        // Freed numbers are used again, and read back right.
        for _ in 0..3 {
            roundtrip(&mut p, &json!({"other": ["values", "here"]}));
        }
    }

    /// The owner's ids stand for themselves in a byte, under that owner
    /// only; other ids are kept whole.
    #[test]
    fn owner_ids_are_one_byte() {
        let mut p = Pack::default();
        let (id, grant, other) = (
            uuid::Uuid::new_v4(),
            uuid::Uuid::new_v4(),
            uuid::Uuid::new_v4(),
        );
        let owner = Owner {
            id: Some(id),
            grant: Some(grant),
        };
        let v = json!({"id": id.to_string(), "grant": [grant.to_string(), other.to_string()]});
        let bytes = p.pack(&v, owner);
        assert_eq!(p.unpack(&bytes, &owner).unwrap(), v);
        assert!(bytes.len() < 2 * 16 + 8, "{} bytes", bytes.len());
        let stranger = Owner {
            id: Some(other),
            grant: None,
        };
        assert_ne!(p.unpack(&bytes, &stranger).ok(), Some(v.clone()));
        let bytes = p.pack(&v, Owner::default());
        assert!(bytes.len() > 3 * 16, "{} bytes", bytes.len());
        assert_eq!(p.unpack(&bytes, &Owner::default()).unwrap(), v);
    }

    #[test]
    fn corrupt_bytes_are_errors() {
        let p = Pack::default();
        for bytes in [
            &[99u8][..],
            &[TEXT, 5, b'a'],
            &[SHARED_TEXT, 3],
            &[UINT, 0x80],
            &[NULL, NULL],
            &[OWN_ID],
        ] {
            assert!(p.unpack(bytes, &Owner::default()).is_err(), "{bytes:?}");
        }
    }
}
