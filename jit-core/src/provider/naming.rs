//! Grant id ↔ provider-side names, both ways.
//!
//! Every name a provider creates for a grant derives from the grant id, so
//! an interrupted `issue` can be found again ([`Provider::find`](super::Provider::find))
//! and a retried one finds the same object instead of making a second.

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::types::GrantId;

/// The prefix of every derived name; also the mark the hygiene of a
/// provider looks for (GCP condition titles, AWS session names).
pub const PREFIX: &str = "jit-";

/// The deterministic provider-side name of a grant: `jit-<grant uuid, 32
/// lowercase hex digits>`. 36 characters, within every provider's charset
/// and length limits seen so far (AWS session names, GCP condition titles).
pub fn external_name(id: GrantId) -> String {
    format!("{PREFIX}{}", id.0.simple())
}

/// The grant id behind a name made by [`external_name`]; `None` for any
/// other text (another prefix, uppercase hex, hyphens, wrong length), so a
/// name that merely looks similar never resolves to a grant.
pub fn grant_id_from_name(name: &str) -> Option<GrantId> {
    let hex = name.strip_prefix(PREFIX)?;
    if hex.len() != 32
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    Uuid::try_parse(hex).ok().map(GrantId)
}

/// A GUID derived deterministically from a grant and a purpose, for APIs
/// whose object names must be GUIDs and where one grant makes several
/// objects (Azure: the schedule request that assigns, and the one that
/// removes). Same inputs, same GUID, across processes and versions: the
/// first 16 bytes of SHA-256 over a fixed label, the grant's bytes and the
/// purpose, marked as an RFC 9562 version 8 (custom) UUID.
///
/// ```
/// use jit_core::provider::naming::derived_uuid;
/// use jit_core::GrantId;
///
/// let grant = GrantId::new();
/// assert_eq!(derived_uuid(grant, "issue"), derived_uuid(grant, "issue"));
/// assert_ne!(derived_uuid(grant, "issue"), derived_uuid(grant, "revoke"));
/// ```
pub fn derived_uuid(id: GrantId, purpose: &str) -> Uuid {
    let mut h = Sha256::new();
    h.update(b"jit-core derived name v1\0");
    h.update(id.0.as_bytes());
    h.update(purpose.as_bytes());
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_round_trip() {
        let id = GrantId::new();
        let name = external_name(id);
        assert_eq!(name.len(), 36);
        assert_eq!(grant_id_from_name(&name), Some(id));
    }

    #[test]
    fn look_alike_names_do_not_resolve() {
        let id = GrantId::new();
        let name = external_name(id);
        for bad in [
            name.to_uppercase(),
            name.replace("jit-", "jot-"),
            format!("jit-{}", id.0.hyphenated()),
            format!("{name}0"),
            name[..35].to_string(),
            "jit-".to_string(),
            format!("jit-{}", "g".repeat(32)),
            format!("jit-{}", "A".repeat(32)),
        ] {
            assert_eq!(grant_id_from_name(&bad), None, "{bad}");
        }
    }

    #[test]
    fn derived_uuids_are_stable_and_distinct() {
        let id = GrantId(Uuid::nil());
        let a = derived_uuid(id, "issue");
        // Pinned: a change here would orphan every object named with it.
        assert_eq!(a, derived_uuid(GrantId(Uuid::nil()), "issue"));
        assert_eq!(a.get_version_num(), 8);
        assert_ne!(a, derived_uuid(id, "revoke"));
        assert_ne!(a, derived_uuid(GrantId::new(), "issue"));
        assert_ne!(a, id.0);
    }
}
