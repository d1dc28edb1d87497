//! Who gets the role: the IAM member of a principal.
//!
//! The member comes from the principal attribute
//! [`GcpConfig::member_attribute`] (default `gcp_member`), which the host
//! fills from its identity provider (the vending server maps token claims
//! to attributes). Only when [`GcpConfig::member_from_email`] opts in, a
//! principal without that attribute becomes `user:<email>`, and only when
//! [`GcpConfig::email_verified_attribute`] is exactly `true`.
//!
//! Accepted forms: `user:<email>`, `group:<email>`,
//! `serviceAccount:<email>` and `principal://…` (a single workforce or
//! workload identity). Refused: `allUsers` and `allAuthenticatedUsers`
//! (IAM refuses them in conditional bindings, and they are everyone),
//! `domain:` and `principalSet://` (whole populations, never one
//! requester), `deleted:` and anything else.

use jit_core::Principal;

use crate::config::GcpConfig;
use crate::error::{printable, GcpError};
use crate::target::{is_email, PUBLIC_MEMBERS};

/// Longest member string accepted (a `principal://` URI of a workforce pool subject is long).
pub const MAX_MEMBER_LEN: usize = 512;

/// Checks a member string; the error says what is wrong.
pub fn check_member(member: &str) -> Result<(), String> {
    if PUBLIC_MEMBERS.contains(&member) {
        return Err(format!(
            "`{member}` is everyone; iam does not allow it in a conditional binding"
        ));
    }
    if member.len() > MAX_MEMBER_LEN || member.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "`{}` must be at most {MAX_MEMBER_LEN} printable characters without spaces",
            printable(member)
        ));
    }
    for prefix in ["user:", "group:", "serviceAccount:"] {
        if let Some(email) = member.strip_prefix(prefix) {
            return if is_email(email) {
                Ok(())
            } else {
                Err(format!("`{}` does not name an email", printable(member)))
            };
        }
    }
    if let Some(rest) = member.strip_prefix("principal://") {
        return if rest.contains("/subject/") || rest.contains("/serviceAccount/") {
            Ok(())
        } else {
            Err(format!(
                "`{}` is not a single identity (`principal://…/subject/…`)",
                printable(member)
            ))
        };
    }
    Err(format!(
        "`{}` is not `user:<email>`, `group:<email>`, `serviceAccount:<email>` or `principal://…`",
        printable(member)
    ))
}

/// The member for `principal` under `config` (see the module docs).
pub(crate) fn member_of(config: &GcpConfig, principal: &Principal) -> Result<String, GcpError> {
    let err = |message: String| GcpError::Member {
        principal: printable(principal.id.as_str()),
        message,
    };
    if let Some(m) = principal.attributes.get(&config.member_attribute) {
        let m = m.trim();
        check_member(m)
            .map_err(|e| err(format!("attribute `{}`: {e}", config.member_attribute)))?;
        return Ok(m.to_string());
    }
    if !config.member_from_email {
        return Err(err(format!(
            "attribute `{}` is missing (set it from the identity provider, or opt in to verified emails with `member_from_email`)",
            config.member_attribute
        )));
    }
    let Some(email) = principal.attributes.get(&config.email_attribute) else {
        return Err(err(format!(
            "neither attribute `{}` nor `{}` is set",
            config.member_attribute, config.email_attribute
        )));
    };
    if principal
        .attributes
        .get(&config.email_verified_attribute)
        .map(|v| v.trim())
        != Some("true")
    {
        return Err(err(format!(
            "email is not verified (attribute `{}` is not `true`)",
            config.email_verified_attribute
        )));
    }
    let member = format!("user:{}", email.trim());
    check_member(&member).map_err(err)?;
    Ok(member)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn members_are_checked() {
        for ok in [
            "user:alice@example.com",
            "group:oncall@example.com",
            "serviceAccount:bot@p-123456.iam.gserviceaccount.com",
            "principal://iam.googleapis.com/locations/global/workforcePools/p/subject/alice",
        ] {
            check_member(ok).unwrap();
        }
        for bad in [
            "allUsers",
            "allAuthenticatedUsers",
            "domain:example.com",
            "principalSet://iam.googleapis.com/locations/global/workforcePools/p/*",
            "deleted:user:a@example.com?uid=1",
            "user:not-an-email",
            "user:a@example.com extra",
            "alice@example.com",
            "",
        ] {
            assert!(check_member(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_member_comes_from_the_attribute_or_a_verified_email_when_opted_in() {
        let c = GcpConfig::default();
        let p = Principal::new("sub-1").unwrap();
        let e = member_of(&c, &p).unwrap_err().to_string();
        assert!(e.contains("`gcp_member` is missing"), "{e}");
        let with = p
            .clone()
            .with_attribute("gcp_member", "group:ops@example.com");
        assert_eq!(member_of(&c, &with).unwrap(), "group:ops@example.com");
        let bad = p.clone().with_attribute("gcp_member", "allUsers");
        assert!(member_of(&c, &bad).is_err());

        // Email: only when configured, and only when verified.
        let mail = p.clone().with_attribute("email", "alice@example.com");
        assert!(member_of(&c, &mail).is_err(), "email used without opt-in");
        let c = c.with_member_from_email(true);
        let e = member_of(&c, &mail).unwrap_err().to_string();
        assert!(e.contains("not verified"), "{e}");
        let unverified = mail.clone().with_attribute("email_verified", "false");
        assert!(member_of(&c, &unverified).is_err());
        let yes = mail.clone().with_attribute("email_verified", "yes");
        assert!(member_of(&c, &yes).is_err(), "only exactly `true` counts");
        let verified = mail.with_attribute("email_verified", "true");
        assert_eq!(member_of(&c, &verified).unwrap(), "user:alice@example.com");
        // The attribute still wins over the email.
        let both = verified.with_attribute("gcp_member", "user:a2@example.com");
        assert_eq!(member_of(&c, &both).unwrap(), "user:a2@example.com");
    }
}
