//! Packing small stored documents into fewer bytes.
//!
//! A store keeps millions of small documents (request records of a
//! kilobyte or two, audit events of a few hundred bytes) that look alike:
//! the same field names, the same state and kind names, timestamps that
//! share their first digits. This module holds the tools the stores pack
//! them with, independent of any store:
//!
//! - **zstd against a prepared dictionary** ([`ZstdDictionary`],
//!   [`compress`], [`decompress`]): what is written. A document is
//!   compressed as if the dictionary's bytes had come just before it, so
//!   even a short one refers back to field names and common values
//!   instead of spelling them out. Each document is one standard zstd
//!   frame that records its size (so unpacking allocates exactly that,
//!   and refuses a frame that claims more than [`MAX_UNPACKED`]).
//! - **Raw deflate against a preset dictionary** ([`Dictionary`],
//!   [`deflate`], [`inflate`]): what was written before (RFC 1951: no zlib
//!   header or checksum). Still read, no longer written.
//! - **Fixed-width binary fields** ([`Writer`], [`Reader`]): ids, times and
//!   hashes written as their bytes instead of as hex or text (a UUID is 16
//!   bytes instead of 36 characters, a SHA-256 32 instead of 64).
//!
//! # Why zstd (issue #15)
//!
//! Deflate resets its 128 KiB hash table and feeds itself the dictionary
//! again for every document: on a request record (about 1.2 KB of JSON)
//! that took 15 µs, on an audit event 7 µs, about 80 µs of every grant
//! through the vending server. zstd digests a dictionary once (a `CDict`,
//! shared by every thread) and compresses a small document against it
//! without clearing tables: 5.6 and 2.4 µs, at level 3. The price is
//! about 40 bytes more per record (382 against 340) and 20 per audit
//! event (102 against 82), about 120 bytes per grant; schema 13's goal of
//! 2 KB per grant stays met. (Measured on this project's own records and
//! events, release build, the same machine and run.)
//!
//! # Stability
//!
//! What a dictionary holds is part of the stored format: a byte of it that
//! changes makes every document packed with it unreadable. A dictionary
//! is never edited once released; a better one gets a new tag and
//! readers keep the old one. The tag is the first byte of every packed
//! document, chosen below `0x20` so that it never collides with the first
//! byte of a JSON text (`{`, `[` or white space): readers tell packed
//! documents from JSON written before packing by that byte alone
//! ([`is_packed`]). Request records packed with deflate start with `0x01`,
//! with zstd `0x02`; both use the same dictionary bytes.
//!
//! # Cost
//!
//! Each thread keeps one deflate compressor and decompressor and one zstd
//! compression and decompression context and reuses them, so packing
//! allocates only its output. Unpacking a document costs about as much as
//! parsing its JSON.

use std::cell::RefCell;
use std::sync::OnceLock;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The most bytes one document may unpack to: a guard against a stored
/// value that would inflate without end, far above any real document.
pub const MAX_UNPACKED: usize = 16 << 20;

/// A preset dictionary and the tag byte that names it in packed documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dictionary {
    tag: u8,
    bytes: &'static [u8],
}

impl Dictionary {
    /// A dictionary named by `tag`, which must be below `0x20` (see the
    /// module docs) and is checked at compile time when used in a `const`.
    pub const fn new(tag: u8, bytes: &'static [u8]) -> Self {
        assert!(tag < 0x20 && tag != b'\t' && tag != b'\n' && tag != b'\r');
        Self { tag, bytes }
    }

    /// The tag byte that starts every document packed with this dictionary.
    pub const fn tag(&self) -> u8 {
        self.tag
    }

    /// The dictionary's bytes.
    pub const fn bytes(&self) -> &'static [u8] {
        self.bytes
    }
}

/// A document that cannot be unpacked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("packed document is not valid: {0}")]
pub struct PackError(pub String);

/// Whether `stored` starts with a packed document's tag rather than with
/// JSON text (or is empty).
pub fn is_packed(stored: &[u8]) -> bool {
    stored
        .first()
        .is_some_and(|b| *b < 0x20 && !b" \t\n\r".contains(b))
}

thread_local! {
    static COMPRESS: RefCell<Option<Compress>> = const { RefCell::new(None) };
    static DECOMPRESS: RefCell<Option<Decompress>> = const { RefCell::new(None) };
}

/// `input` deflated against `dict`, appended to `out` (raw deflate, no tag:
/// see [`pack`] for a tagged document).
pub fn deflate(dict: &Dictionary, input: &[u8], out: &mut Vec<u8>) {
    COMPRESS.with(|cell| {
        let mut slot = cell.borrow_mut();
        let c = slot.get_or_insert_with(|| Compress::new(Compression::best(), false));
        c.reset();
        // Only fails on a stream already started, and this one was reset.
        let _ = c.set_dictionary(dict.bytes);
        out.reserve(input.len() / 2 + 64);
        let start = c.total_in();
        loop {
            let consumed = usize::try_from(c.total_in() - start).unwrap_or(input.len());
            let rest = input.get(consumed..).unwrap_or_default();
            match c.compress_vec(rest, out, FlushCompress::Finish) {
                Ok(Status::StreamEnd) => break,
                // Out of room: grow and go on.
                Ok(_) => out.reserve(out.capacity().max(64)),
                Err(_) => {
                    // Cannot happen with a reset stream and a valid
                    // level; start over without the reused state.
                    *slot = None;
                    out.clear();
                    let mut fresh = Compress::new(Compression::best(), false);
                    let _ = fresh.set_dictionary(dict.bytes);
                    let _ = fresh.compress_vec(input, out, FlushCompress::Finish);
                    break;
                }
            }
        }
    });
}

/// Raw deflate `input` inflated against `dict`, at most `limit` bytes.
pub fn inflate(dict: &Dictionary, input: &[u8], limit: usize) -> Result<Vec<u8>, PackError> {
    DECOMPRESS.with(|cell| {
        let mut slot = cell.borrow_mut();
        let d = slot.get_or_insert_with(|| Decompress::new(false));
        let out = inflate_with(d, dict, input, limit);
        if out.is_err() {
            // Start the next document from a fresh state.
            *slot = None;
        }
        out
    })
}

fn inflate_with(
    d: &mut Decompress,
    dict: &Dictionary,
    input: &[u8],
    limit: usize,
) -> Result<Vec<u8>, PackError> {
    d.reset(false);
    d.set_dictionary(dict.bytes)
        .map_err(|e| PackError(format!("dictionary: {e}")))?;
    let mut out = Vec::with_capacity((input.len() * 4).clamp(256, limit.max(256)));
    let start = d.total_in();
    loop {
        let consumed = usize::try_from(d.total_in() - start).unwrap_or(input.len());
        let rest = input.get(consumed..).unwrap_or_default();
        let before = (d.total_in(), d.total_out());
        let status = d
            .decompress_vec(rest, &mut out, FlushDecompress::Finish)
            .map_err(|e| PackError(e.to_string()))?;
        if status == Status::StreamEnd {
            return Ok(out);
        }
        if out.len() >= limit {
            return Err(PackError(format!("unpacks to more than {limit} bytes")));
        }
        if out.len() == out.capacity() {
            let more = out.capacity().min(limit - out.len()).max(64);
            out.reserve(more);
        } else if (d.total_in(), d.total_out()) == before {
            // No progress with room to spare: the input ended early.
            return Err(PackError("the stream ends early".into()));
        }
    }
}

/// The zstd level documents are compressed at (fixed when a dictionary is
/// prepared): 3, zstd's default, measured the best trade on these
/// documents (levels 5 to 7 save 2 to 7% more bytes of a record for 1.6
/// to 1.8 times the time).
const ZSTD_LEVEL: i32 = 3;

/// A dictionary that documents are compressed against with zstd, and the
/// tag byte that names it. Use it as a `static`: its digested forms are
/// made on first use and shared by every thread.
pub struct ZstdDictionary {
    tag: u8,
    bytes: &'static [u8],
    prepared: OnceLock<Prepared>,
}

/// A dictionary digested for compressing and for decompressing.
struct Prepared {
    compress: zstd_safe::CDict<'static>,
    decompress: zstd_safe::DDict<'static>,
}

impl std::fmt::Debug for ZstdDictionary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZstdDictionary")
            .field("tag", &self.tag)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

impl ZstdDictionary {
    /// A dictionary named by `tag`, which must be below `0x20` (see the
    /// module docs) and is checked at compile time in a `static`.
    pub const fn new(tag: u8, bytes: &'static [u8]) -> Self {
        assert!(tag < 0x20 && tag != b'\t' && tag != b'\n' && tag != b'\r');
        Self {
            tag,
            bytes,
            prepared: OnceLock::new(),
        }
    }

    /// The tag byte that starts every document packed with this dictionary.
    pub const fn tag(&self) -> u8 {
        self.tag
    }

    /// The dictionary's bytes.
    pub const fn bytes(&self) -> &'static [u8] {
        self.bytes
    }

    fn prepared(&self) -> &Prepared {
        self.prepared.get_or_init(|| Prepared {
            compress: zstd_safe::CDict::create(self.bytes, ZSTD_LEVEL),
            decompress: zstd_safe::DDict::create(self.bytes),
        })
    }
}

thread_local! {
    static ZSTD_COMPRESS: RefCell<Option<zstd_safe::CCtx<'static>>> = const { RefCell::new(None) };
    static ZSTD_DECOMPRESS: RefCell<Option<zstd_safe::DCtx<'static>>> = const { RefCell::new(None) };
}

/// `input` compressed against `dict` as one zstd frame (no tag: see
/// [`pack_zstd`] for a tagged document), appended to `out`.
pub fn compress(dict: &ZstdDictionary, input: &[u8], out: &mut Vec<u8>) {
    let prepared = dict.prepared();
    let mut frame = Vec::with_capacity(zstd_safe::compress_bound(input.len()));
    let written = ZSTD_COMPRESS.with(|cell| {
        let mut slot = cell.borrow_mut();
        let c = slot.get_or_insert_with(zstd_safe::CCtx::create);
        c.compress_using_cdict(&mut frame, input, &prepared.compress)
    });
    match written {
        Ok(_) => out.extend_from_slice(&frame),
        // Cannot happen: the output has the room zstd asks for. Never
        // written, a document is still stored whole: a frame of one raw
        // block (RFC 8878) needs no compressor.
        Err(_) => raw_frame(input, out),
    }
}

/// A zstd frame holding `input` in raw blocks, for [`compress`]'s
/// impossible failure.
fn raw_frame(input: &[u8], out: &mut Vec<u8>) {
    const MAX_BLOCK: usize = 128 << 10;
    out.extend_from_slice(&0xFD2F_B528u32.to_le_bytes());
    // Frame header: an 8-byte content size, single segment, no dictionary id.
    out.push(0b1110_0000);
    out.extend_from_slice(&(input.len() as u64).to_le_bytes());
    let mut blocks = input.chunks(MAX_BLOCK).peekable();
    if blocks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0]);
    }
    while let Some(block) = blocks.next() {
        let last = u32::from(blocks.peek().is_none());
        let header = last | ((block.len() as u32) << 3);
        out.extend_from_slice(&header.to_le_bytes()[..3]);
        out.extend_from_slice(block);
    }
}

/// A zstd frame written by [`compress`] with `dict`, at most `limit` bytes.
pub fn decompress(dict: &ZstdDictionary, input: &[u8], limit: usize) -> Result<Vec<u8>, PackError> {
    let size = match zstd_safe::get_frame_content_size(input) {
        Ok(Some(size)) => size,
        Ok(None) => return Err(PackError("a zstd frame without its size".into())),
        Err(_) => return Err(PackError("not a zstd frame".into())),
    };
    let size = usize::try_from(size)
        .ok()
        .filter(|s| *s <= limit)
        .ok_or_else(|| PackError(format!("unpacks to more than {limit} bytes")))?;
    let prepared = dict.prepared();
    let mut out = Vec::with_capacity(size);
    let read = ZSTD_DECOMPRESS.with(|cell| {
        let mut slot = cell.borrow_mut();
        let d = slot.get_or_insert_with(zstd_safe::DCtx::create);
        let read = d.decompress_using_ddict(&mut out, input, &prepared.decompress);
        if read.is_err() {
            // Start the next document from a fresh state.
            *slot = None;
        }
        read
    });
    match read {
        Ok(n) if n == size => Ok(out),
        Ok(n) => Err(PackError(format!(
            "the frame unpacks to {n} bytes, not the {size} it says"
        ))),
        Err(code) => Err(PackError(format!(
            "zstd: {}",
            zstd_safe::get_error_name(code)
        ))),
    }
}

/// A tagged document: `dict`'s tag, then `input` compressed against it.
pub fn pack_zstd(dict: &ZstdDictionary, input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() / 2 + 16);
    out.push(dict.tag);
    compress(dict, input, &mut out);
    out
}

/// A tagged document: `dict`'s tag, then `input` deflated against it.
pub fn pack(dict: &Dictionary, input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() / 2 + 16);
    out.push(dict.tag);
    deflate(dict, input, &mut out);
    out
}

/// The bytes of a document packed by [`pack`] with one of `dicts` (the one
/// whose tag it starts with).
pub fn unpack(dicts: &[Dictionary], stored: &[u8]) -> Result<Vec<u8>, PackError> {
    let (tag, rest) = stored
        .split_first()
        .ok_or_else(|| PackError("empty".into()))?;
    let dict = dicts
        .iter()
        .find(|d| d.tag == *tag)
        .ok_or_else(|| PackError(format!("unknown tag {tag:#04x}")))?;
    inflate(dict, rest, MAX_UNPACKED)
}

/// The dictionary of request records packed with deflate (tag `0x01`):
/// a record's field names and common values. Part of the stored format:
/// never edit it (see the module docs). Read only; [`RECORD_ZSTD`] writes.
pub const RECORD_DICT: Dictionary = Dictionary::new(0x01, include_bytes!("packed/record.dict"));

/// The dictionary request records are packed with ([`pack_record`], tag
/// `0x02`): the same bytes as [`RECORD_DICT`], for zstd.
pub static RECORD_ZSTD: ZstdDictionary =
    ZstdDictionary::new(0x02, include_bytes!("packed/record.dict"));

/// A request record as stored packed: its JSON compressed against
/// [`RECORD_ZSTD`], about a third of the JSON's size.
pub fn pack_record(record: &crate::types::RequestRecord) -> Result<Vec<u8>, PackError> {
    let json = serde_json::to_vec(record)
        .map_err(|e| PackError(format!("cannot encode request `{}`: {e}", record.id)))?;
    Ok(pack_zstd(&RECORD_ZSTD, &json))
}

/// The JSON of a stored record, packed ([`pack_record`], or with deflate
/// before) or not (JSON written before packing, as text or bytes).
pub fn record_json(stored: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, PackError> {
    match stored.split_first() {
        Some((&tag, rest)) if tag == RECORD_ZSTD.tag => Ok(std::borrow::Cow::Owned(decompress(
            &RECORD_ZSTD,
            rest,
            MAX_UNPACKED,
        )?)),
        _ if is_packed(stored) => Ok(std::borrow::Cow::Owned(unpack(&[RECORD_DICT], stored)?)),
        _ => Ok(std::borrow::Cow::Borrowed(stored)),
    }
}

/// A stored record, packed or JSON (see [`record_json`]).
pub fn unpack_record(stored: &[u8]) -> Result<crate::types::RequestRecord, PackError> {
    serde_json::from_slice(&record_json(stored)?).map_err(|e| PackError(e.to_string()))
}

/// Writes fixed-width binary fields (see [`Reader`] for the other way).
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty writer with room for `n` bytes.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            buf: Vec::with_capacity(n),
        }
    }

    /// One byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    /// Bytes as they are (the reader must know how many).
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }

    /// A little-endian `i64`.
    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }

    /// A little-endian `u32`.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }

    /// A UTC time as seconds since the epoch (`i64`) and nanoseconds
    /// (`u32`): 12 bytes, every `DateTime<Utc>` exactly.
    pub fn time(&mut self, t: &chrono::DateTime<chrono::Utc>) -> &mut Self {
        self.i64(t.timestamp()).u32(t.timestamp_subsec_nanos())
    }

    /// The bytes written.
    pub fn into_vec(self) -> Vec<u8> {
        self.buf
    }

    /// The bytes written so far.
    pub fn as_mut_vec(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }
}

/// Reads what a [`Writer`] wrote, in the same order.
#[derive(Debug)]
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads `bytes` from the start.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], PackError> {
        if self.rest.len() < n {
            return Err(PackError(format!(
                "{n} bytes wanted, {} left",
                self.rest.len()
            )));
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], PackError> {
        let mut a = [0; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, PackError> {
        Ok(self.array::<1>()?[0])
    }

    /// A little-endian `i64`.
    pub fn i64(&mut self) -> Result<i64, PackError> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    /// A little-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, PackError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// A time written by [`Writer::time`].
    pub fn time(&mut self) -> Result<chrono::DateTime<chrono::Utc>, PackError> {
        let (secs, nanos) = (self.i64()?, self.u32()?);
        chrono::DateTime::from_timestamp(secs, nanos)
            .ok_or_else(|| PackError(format!("time {secs}.{nanos} is out of range")))
    }

    /// Everything not read yet.
    pub fn rest(self) -> &'a [u8] {
        self.rest
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    const DICT: Dictionary = Dictionary::new(0x01, br#"{"state":"pending","requester":"#);
    const OTHER: Dictionary = Dictionary::new(0x02, br#"entirely different words"#);

    #[test]
    fn documents_round_trip_and_the_dictionary_pays() {
        let doc = br#"{"state":"pending","requester":"alice"}"#;
        let packed = pack(&DICT, doc);
        assert!(is_packed(&packed));
        assert_eq!(unpack(&[OTHER, DICT], &packed).unwrap(), doc);
        let without = pack(&OTHER, doc);
        assert!(packed.len() < without.len(), "{packed:?} vs {without:?}");
        // Big documents, empty ones, and many in a row on one thread.
        let big: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        for doc in [&big[..], b"", b"x"] {
            for _ in 0..3 {
                assert_eq!(unpack(&[DICT], &pack(&DICT, doc)).unwrap(), doc);
            }
        }
    }

    #[test]
    fn json_is_never_taken_for_a_packed_document() {
        for json in [&b"{}"[..], b"[1]", b" {}", b"\n[]", b"\t{}", b"\r{}", b""] {
            assert!(!is_packed(json), "{json:?}");
        }
    }

    #[test]
    fn bad_documents_are_errors_not_panics() {
        let packed = pack(&DICT, br#"{"state":"pending","requester":"alice"}"#);
        // Another dictionary's tag, a cut stream, garbage, nothing.
        assert!(unpack(&[OTHER], &packed).is_err());
        assert!(unpack(&[DICT], &packed[..packed.len() / 2]).is_err());
        assert!(unpack(&[DICT], &[0x01, 0xff, 0xff, 0xff]).is_err());
        assert!(unpack(&[DICT], &[]).is_err());
        // A stream that unpacks past the limit.
        let zeros = pack(&DICT, &vec![0u8; 1 << 20]);
        assert!(inflate(&DICT, &zeros[1..], 1 << 10).is_err());
        // And the thread's state is still good afterwards.
        assert_eq!(unpack(&[DICT], &packed).unwrap().len(), 39);
    }

    static ZDICT: ZstdDictionary = ZstdDictionary::new(0x02, br#"{"state":"pending","requester":"#);
    static ZOTHER: ZstdDictionary = ZstdDictionary::new(0x03, br#"entirely different words"#);

    #[test]
    fn zstd_documents_round_trip_and_the_dictionary_pays() {
        let doc = br#"{"state":"pending","requester":"alice","state":"pending"}"#;
        let packed = pack_zstd(&ZDICT, doc);
        assert!(is_packed(&packed));
        assert_eq!(decompress(&ZDICT, &packed[1..], MAX_UNPACKED).unwrap(), doc);
        let without = pack_zstd(&ZOTHER, doc);
        assert!(packed.len() < without.len(), "{packed:?} vs {without:?}");
        let big: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        for doc in [&big[..], b"", b"x"] {
            for _ in 0..3 {
                let packed = pack_zstd(&ZDICT, doc);
                assert_eq!(decompress(&ZDICT, &packed[1..], MAX_UNPACKED).unwrap(), doc);
            }
        }
        // Threads share the digested dictionary and keep their own contexts.
        let handles: Vec<_> = (0..4)
            .map(|i| {
                std::thread::spawn(move || {
                    let doc = format!("{{\"state\":\"pending\",\"requester\":\"user-{i}\"}}");
                    let packed = pack_zstd(&ZDICT, doc.as_bytes());
                    decompress(&ZDICT, &packed[1..], MAX_UNPACKED).unwrap() == doc.as_bytes()
                })
            })
            .collect();
        assert!(handles.into_iter().all(|h| h.join().unwrap()));
    }

    /// The fallback frame (for a compressor failure that cannot happen)
    /// is a valid zstd frame of the same bytes, whatever the dictionary.
    #[test]
    fn the_raw_frame_reads_back() {
        let big: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
        for doc in [&big[..], b"", b"abc"] {
            let mut frame = Vec::new();
            raw_frame(doc, &mut frame);
            assert_eq!(decompress(&ZDICT, &frame, MAX_UNPACKED).unwrap(), doc);
        }
    }

    #[test]
    fn bad_zstd_frames_are_errors_not_panics() {
        let packed = pack_zstd(&ZDICT, br#"{"state":"pending","requester":"alice"}"#);
        let frame = &packed[1..];
        // Another dictionary, a cut frame, garbage, nothing.
        assert!(decompress(&ZOTHER, frame, MAX_UNPACKED).is_err());
        assert!(decompress(&ZDICT, &frame[..frame.len() / 2], MAX_UNPACKED).is_err());
        assert!(decompress(&ZDICT, &[0x28, 0xb5, 0x2f, 0xfd, 0xff, 0xff], MAX_UNPACKED).is_err());
        assert!(decompress(&ZDICT, &[], MAX_UNPACKED).is_err());
        // A frame that says it unpacks past the limit is refused before
        // anything is allocated; one that lies about its size is an error.
        let zeros = pack_zstd(&ZDICT, &vec![0u8; 1 << 20]);
        assert!(decompress(&ZDICT, &zeros[1..], 1 << 10).is_err());
        let mut lying = Vec::new();
        raw_frame(b"abcdef", &mut lying);
        lying[5] = 3;
        assert!(decompress(&ZDICT, &lying, MAX_UNPACKED).is_err());
        // And the thread's state is still good afterwards.
        assert_eq!(decompress(&ZDICT, frame, MAX_UNPACKED).unwrap().len(), 39);
    }

    /// Records written with deflate (tag `0x01`) still read; new ones are
    /// written with zstd (tag `0x02`) and read the same.
    #[test]
    fn records_of_either_codec_read() {
        let json = br#"{"id":"x","state":"pending"}"#;
        let old = pack(&RECORD_DICT, json);
        let new = pack_zstd(&RECORD_ZSTD, json);
        assert_eq!((old[0], new[0]), (0x01, 0x02));
        assert_eq!(&*record_json(&old).unwrap(), json);
        assert_eq!(&*record_json(&new).unwrap(), json);
        assert_eq!(&*record_json(json).unwrap(), json);
    }

    #[test]
    fn binary_fields_round_trip() {
        let t = chrono::DateTime::parse_from_rfc3339("1969-07-20T20:17:40.123456789Z")
            .unwrap()
            .to_utc();
        let mut w = Writer::with_capacity(32);
        w.u8(7).time(&t).bytes(b"abc").u32(9);
        let bytes = w.into_vec();
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u8().unwrap(), 7);
        assert_eq!(r.time().unwrap(), t);
        assert_eq!(r.bytes(3).unwrap(), b"abc");
        assert_eq!(r.u32().unwrap(), 9);
        assert!(r.u8().is_err());
    }
}
