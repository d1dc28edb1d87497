//! What identifies an STS session: its name, its `SourceIdentity` and its
//! session tags, derived from the grant and checked against AWS's limits
//! before any call.
//!
//! | value | rule (STS API model) | derived from |
//! | --- | --- | --- |
//! | `RoleSessionName` | `[\w+=,.@-]`, 2..=64 | the grant id: `jit-<32 hex>` ([`GrantSpec::external_name`]), never user text |
//! | `SourceIdentity` | `[\w+=,.@-]`, 2..=64, not starting with `aws:` | the requester's id ([`source_identity`]) |
//! | session tags | ≤ 50; key `[\p{L}\p{Z}\p{N}_.:/=+\-@]`, 1..=128, not starting with `aws:`; value same charset, 0..=256 | grant id, request id, entitlement, requester, ticket, plus the target's static tags |
//!
//! `\w` is ASCII (`[A-Za-z0-9_]`), as in the Java regex dialect AWS uses.
//! Lengths of tag keys and values are counted in UTF-16 code units, the way
//! AWS counts "characters", so a value of astral characters is not
//! under-counted.
//!
//! # Hostile requester ids
//!
//! A requester id is any printable text up to 256 characters (spaces,
//! Unicode, an `aws:` prefix). It passes through unchanged when it already
//! satisfies the rule and does not look like a sanitized value. Otherwise
//! disallowed characters become `_`, the text is shortened, and `.` plus 16
//! hex digits of the SHA-256 of the **original** id is appended. Two
//! different ids therefore never map to one value (short of a 64-bit hash
//! collision), and no id can be chosen to impersonate another's sanitized
//! form: a sanitized form always ends in `.<16 hex>`, and an id that itself
//! ends that way is hashed too.
//!
//! [`GrantSpec::external_name`]: jit_core::GrantSpec::external_name

use std::sync::LazyLock;

use jit_core::GrantSpec;
use regex::Regex;
use sha2::{Digest, Sha256};

use crate::error::{printable, AwsError};

/// Shortest `RoleSessionName` / `SourceIdentity`.
pub const MIN_NAME_LEN: usize = 2;
/// Longest `RoleSessionName` / `SourceIdentity`.
pub const MAX_NAME_LEN: usize = 64;
/// Most session tags on one `AssumeRole`.
pub const MAX_SESSION_TAGS: usize = 50;
/// Longest session tag key, in UTF-16 code units.
pub const MAX_TAG_KEY_LEN: usize = 128;
/// Longest session tag value, in UTF-16 code units.
pub const MAX_TAG_VALUE_LEN: usize = 256;

/// Session tag key holding the grant id.
pub const TAG_GRANT: &str = "jit:grant";
/// Session tag key holding the request id.
pub const TAG_REQUEST: &str = "jit:request";
/// Session tag key holding the entitlement id.
pub const TAG_ENTITLEMENT: &str = "jit:entitlement";
/// Session tag key holding the (sanitized) requester id.
pub const TAG_REQUESTER: &str = "jit:requester";
/// Session tag key holding the (sanitized) ticket reference.
pub const TAG_TICKET: &str = "jit:ticket";

/// Tag keys jit-aws sets itself; a target's static tags may not use them.
pub const RESERVED_TAG_KEYS: [&str; 5] = [
    TAG_GRANT,
    TAG_REQUEST,
    TAG_ENTITLEMENT,
    TAG_REQUESTER,
    TAG_TICKET,
];

const HASH_HEX: usize = 16;

/// One session tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionTag {
    /// Key.
    pub key: String,
    /// Value.
    pub value: String,
}

/// Whether `c` is in `[\w+=,.@-]` (ASCII `\w`).
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '=' | ',' | '.' | '@' | '-')
}

/// Whether `s` is a valid `RoleSessionName` / `SourceIdentity`.
pub fn is_valid_name(s: &str) -> bool {
    let n = s.len();
    (MIN_NAME_LEN..=MAX_NAME_LEN).contains(&n)
        && s.chars().all(is_name_char)
        && !s.to_ascii_lowercase().starts_with("aws:")
}

/// One character class of the tag charset `[\p{L}\p{Z}\p{N}_.:/=+\-@]`.
/// `None` only if the pattern failed to compile (a bug a unit test catches);
/// then only the ASCII part of the charset is accepted, which is stricter.
static TAG_CHAR: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"^[\p{L}\p{Z}\p{N}_.:/=+\-@]$").ok());

/// Whether `c` may appear in a session tag key or value.
pub fn is_tag_char(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphanumeric()
            || matches!(c, ' ' | '_' | '.' | ':' | '/' | '=' | '+' | '-' | '@');
    }
    match TAG_CHAR.as_ref() {
        Some(re) => {
            let mut buf = [0u8; 4];
            re.is_match(c.encode_utf8(&mut buf))
        }
        None => false,
    }
}

fn utf16_len(s: &str) -> usize {
    s.chars().map(char::len_utf16).sum()
}

fn short_hash(original: &str) -> String {
    let digest = Sha256::digest(original.as_bytes());
    hex::encode(digest)[..HASH_HEX].to_string()
}

/// Whether `s` ends in `.<16 lowercase hex>`: the shape of a sanitized value.
fn looks_sanitized(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() > HASH_HEX
        && b[b.len() - HASH_HEX - 1] == b'.'
        && b[b.len() - HASH_HEX..]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

/// The session name for a grant: [`GrantSpec::external_name`] (`jit-<32 hex>`).
///
/// Derived from the grant id alone, so `find` and `revoke` can rebuild it
/// and a requester cannot influence it. Checked anyway, so a future change
/// of the core's naming cannot produce a name AWS rejects.
pub(crate) fn session_name(spec: &GrantSpec) -> Result<String, AwsError> {
    let name = spec.external_name();
    if is_valid_name(&name) {
        Ok(name)
    } else {
        Err(AwsError::Unrevocable(format!(
            "derived session name `{}` is not a valid RoleSessionName",
            printable(&name)
        )))
    }
}

/// The `SourceIdentity` for a requester id (see the module docs).
pub fn source_identity(requester: &str) -> String {
    if is_valid_name(requester) && !looks_sanitized(requester) {
        return requester.to_string();
    }
    let base: String = requester
        .chars()
        .map(|c| if is_name_char(c) { c } else { '_' })
        .take(MAX_NAME_LEN - HASH_HEX - 1)
        .collect();
    // `aws:` cannot survive (`:` is not in the charset) but `aws` may lead;
    // that is allowed by STS.
    format!("{base}.{}", short_hash(requester))
}

/// A session tag value for free text (requester, ticket): unchanged when it
/// fits the charset and length, else sanitized with a hash suffix.
pub fn tag_value(text: &str) -> String {
    if utf16_len(text) <= MAX_TAG_VALUE_LEN
        && text.chars().all(is_tag_char)
        && !looks_sanitized(text)
    {
        return text.to_string();
    }
    let budget = MAX_TAG_VALUE_LEN - HASH_HEX - 1;
    let mut base = String::new();
    let mut used = 0;
    for c in text.chars() {
        let c = if is_tag_char(c) { c } else { '_' };
        if used + c.len_utf16() > budget {
            break;
        }
        used += c.len_utf16();
        base.push(c);
    }
    format!("{base}.{}", short_hash(text))
}

/// Checks one tag key against AWS's rules.
pub fn check_tag_key(key: &str) -> Result<(), String> {
    let n = utf16_len(key);
    if n == 0 || n > MAX_TAG_KEY_LEN {
        return Err(format!(
            "tag key `{}` must be 1 to {MAX_TAG_KEY_LEN} characters",
            printable(key)
        ));
    }
    if !key.chars().all(is_tag_char) {
        return Err(format!(
            "tag key `{}` has characters outside `[\\p{{L}}\\p{{Z}}\\p{{N}}_.:/=+\\-@]`",
            printable(key)
        ));
    }
    if key.to_lowercase().starts_with("aws:") {
        return Err(format!(
            "tag key `{}` must not start with `aws:`",
            printable(key)
        ));
    }
    Ok(())
}

/// Checks one tag value against AWS's rules.
pub fn check_tag_value(key: &str, value: &str) -> Result<(), String> {
    if utf16_len(value) > MAX_TAG_VALUE_LEN {
        return Err(format!(
            "value of tag `{}` is longer than {MAX_TAG_VALUE_LEN} characters",
            printable(key)
        ));
    }
    if !value.chars().all(is_tag_char) {
        return Err(format!(
            "value of tag `{}` has characters outside `[\\p{{L}}\\p{{Z}}\\p{{N}}_.:/=+\\-@]`",
            printable(key)
        ));
    }
    Ok(())
}

/// Checks a whole tag set: count, each key and value, and keys unique
/// case-insensitively (AWS treats `Team` and `team` as one key).
pub fn check_tags(tags: &[SessionTag]) -> Result<(), String> {
    if tags.len() > MAX_SESSION_TAGS {
        return Err(format!(
            "{} session tags, at most {MAX_SESSION_TAGS}",
            tags.len()
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for t in tags {
        check_tag_key(&t.key)?;
        check_tag_value(&t.key, &t.value)?;
        if !seen.insert(t.key.to_lowercase()) {
            return Err(format!(
                "tag key `{}` appears twice (keys are case-insensitive)",
                printable(&t.key)
            ));
        }
    }
    Ok(())
}

/// The session tags for a grant: the jit tags, then the target's static tags.
pub fn session_tags(spec: &GrantSpec, extra: &[SessionTag]) -> Vec<SessionTag> {
    let mut tags = vec![
        SessionTag {
            key: TAG_GRANT.into(),
            value: spec.grant_id.to_string(),
        },
        SessionTag {
            key: TAG_REQUEST.into(),
            value: spec.request_id.to_string(),
        },
        // Entitlement ids are `[A-Za-z0-9._:/-]`, inside the tag charset;
        // `tag_value` keeps them as they are.
        SessionTag {
            key: TAG_ENTITLEMENT.into(),
            value: tag_value(&spec.entitlement.id),
        },
        SessionTag {
            key: TAG_REQUESTER.into(),
            value: tag_value(spec.subject.id.as_str()),
        },
    ];
    if let Some(ticket) = spec.ticket.as_deref().filter(|t| !t.is_empty()) {
        tags.push(SessionTag {
            key: TAG_TICKET.into(),
            value: tag_value(ticket),
        });
    }
    tags.extend(extra.iter().cloned());
    tags
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn tag_charset_compiles_and_matches_unicode_classes() {
        assert!(TAG_CHAR.is_some());
        for c in ['é', 'ß', '日', '٣', '\u{00A0}', 'Ж'] {
            assert!(is_tag_char(c), "{c:?} should be allowed");
        }
        for c in ['#', '!', '\u{0301}', '😀', '"', '\'', '\\', ',', '\u{200B}'] {
            assert!(!is_tag_char(c), "{c:?} should be refused");
        }
    }

    #[test]
    fn plain_ids_pass_through() {
        assert_eq!(source_identity("alice@example.com"), "alice@example.com");
        assert_eq!(
            source_identity("svc-deploy+prod=1,a.b"),
            "svc-deploy+prod=1,a.b"
        );
        assert_eq!(tag_value("INC-4711"), "INC-4711");
        assert_eq!(tag_value("jürgen müller"), "jürgen müller");
    }

    #[test]
    fn hostile_ids_become_valid_and_distinct() {
        let ids = [
            "a",
            "alice smith",
            "alice_smith",
            "aws:admin",
            "AWS:admin",
            "jürgen",
            "j_rgen",
            &"x".repeat(200),
            &"x".repeat(201),
            "日本語のユーザー",
            "😀😀",
        ];
        let mut seen = std::collections::BTreeSet::new();
        for id in ids {
            let s = source_identity(id);
            assert!(is_valid_name(&s), "{id:?} -> {s:?}");
            assert!(seen.insert(s.clone()), "{id:?} collides: {s}");
        }
        assert_eq!(source_identity("alice_smith"), "alice_smith");
        assert_ne!(source_identity("alice smith"), "alice_smith");
    }

    #[test]
    fn an_id_shaped_like_a_sanitized_value_is_hashed_too() {
        let victim = "jürgen";
        let forged = source_identity(victim);
        // An attacker registering the victim's sanitized form as their own id
        // does not get the victim's SourceIdentity.
        assert_ne!(source_identity(&forged), forged);
        assert!(is_valid_name(&source_identity(&forged)));
        let forged_tag = tag_value("INC#1");
        assert_ne!(tag_value(&forged_tag), forged_tag);
    }

    #[test]
    fn tag_values_stay_within_limits() {
        let long = "€".repeat(300);
        let v = tag_value(&long);
        assert!(check_tag_value("k", &v).is_ok(), "{v}");
        let astral = "😀".repeat(200);
        let v = tag_value(&astral);
        assert!(check_tag_value("k", &v).is_ok());
        let hashy = "a".repeat(256);
        assert_eq!(tag_value(&hashy), hashy);
        assert_ne!(tag_value(&"a".repeat(257)), "a".repeat(257));
    }

    #[test]
    fn tag_checks_name_the_problem() {
        assert!(check_tag_key("").is_err());
        assert!(check_tag_key(&"k".repeat(129)).is_err());
        assert!(check_tag_key(&"k".repeat(128)).is_ok());
        assert!(check_tag_key("aws:x").unwrap_err().contains("aws:"));
        assert!(check_tag_key("Aws:x").is_err());
        assert!(check_tag_key("team#1").is_err());
        assert!(check_tag_value("k", &"v".repeat(257)).is_err());
        assert!(check_tag_value("k", "").is_ok());
        let dup = [
            SessionTag {
                key: "Team".into(),
                value: "a".into(),
            },
            SessionTag {
                key: "team".into(),
                value: "b".into(),
            },
        ];
        assert!(check_tags(&dup).unwrap_err().contains("twice"));
        let many: Vec<_> = (0..51)
            .map(|i| SessionTag {
                key: format!("k{i}"),
                value: String::new(),
            })
            .collect();
        assert!(check_tags(&many).unwrap_err().contains("at most 50"));
        assert!(check_tags(&many[..50]).is_ok());
    }

    #[test]
    fn names_are_checked() {
        assert!(is_valid_name("jit-0123456789abcdef0123456789abcdef"));
        assert!(!is_valid_name("a"));
        assert!(!is_valid_name(&"a".repeat(65)));
        assert!(!is_valid_name("a b"));
        assert!(!is_valid_name("aws:x"));
    }
}
