//! The crate's private error, converted into [`jit_core::Error`] at the edge.
//!
//! AWS errors are classified by their error code (never by message text) and
//! carry only what AWS said plus our own context: no request body, no
//! credentials. Messages follow the workspace style (lowercase, no trailing
//! period, user input in backticks).

use aws_sdk_sts::config::http::HttpResponse;
use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};
use jit_core::{ConfigError, Error, RequestError};

/// A wire message and user input in errors: bounded, printable (one
/// definition for every provider).
pub(crate) use jit_core::provider::text::{input as printable, message as clip};

/// What went wrong inside jit-aws.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AwsError {
    /// An entitlement target (or a value derived from it) breaks an AWS limit.
    #[error("entitlement `{entitlement}`: `{field}` is invalid: {message}")]
    Target {
        entitlement: String,
        field: String,
        message: String,
    },

    /// The grant window cannot be honoured.
    #[error(transparent)]
    Request(#[from] RequestError),

    /// Provider configuration is invalid.
    #[error("aws provider setting `{field}` is invalid: {message}")]
    Setting { field: String, message: String },

    /// The role is in an account whose IAM the broker cannot act in.
    #[error("role `{role}` is in account `{account}`, but provider's iam calls act in account `{own}`; configure a management role for `{account}` (`JIT_AWS_MANAGEMENT_ROLES`) or use a role in `{own}`")]
    ForeignAccount {
        role: String,
        account: String,
        own: String,
    },

    /// The role named by an entitlement does not exist (or the broker may not see it).
    #[error("role `{0}` not found")]
    RoleNotFound(String),

    /// The revocation policy would exceed IAM's inline policy size limit.
    #[error("revocation policy `{policy}` on role `{role}` would be {size} characters, over the limit of {limit}{}; wait for revoked sessions to expire (entries are pruned at their expiry) or use `revoke_all_sessions`", if *reserved > 0 { format!(" ({reserved} of them kept for the role-wide deny)") } else { String::new() })]
    RevocationPolicyFull {
        role: String,
        policy: String,
        size: usize,
        limit: usize,
        /// Room held back for the role-wide statement.
        reserved: usize,
    },

    /// Another writer keeps replacing the revocation policy.
    #[error("revocation policy `{policy}` on role `{role}` changed concurrently {attempts} times; retry")]
    RevocationContended {
        role: String,
        policy: String,
        attempts: usize,
    },

    /// A revocation record names no role this provider can find.
    #[error("{0}")]
    Unrevocable(String),

    /// AWS refused the call for a reason retrying will not fix.
    #[error("{call}: {code}{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Rejected {
        call: &'static str,
        code: String,
        message: Option<String>,
    },

    /// AWS asked us to slow down.
    #[error("{call} throttled")]
    Throttled { call: &'static str },

    /// The endpoint could not be reached, timed out, failed on its side, or
    /// the broker's own credentials need refreshing.
    #[error("{call}: {message}")]
    Unavailable { call: &'static str, message: String },

    /// The broker's own credentials expired. Transient when they come from
    /// a chain that refreshes them; final with static credentials
    /// ([`AwsError::final_if_static`]).
    #[error("{call}: the broker's aws credentials expired ({code}); they are refreshed on the next attempt")]
    ExpiredCredentials { call: &'static str, code: String },

    /// The response lacked a field the API promises.
    #[error("{call}: response is missing `{field}`")]
    Incomplete {
        call: &'static str,
        field: &'static str,
    },

    /// A jit-core call failed (the revocation lease in the shared store).
    #[error(transparent)]
    Core(#[from] Error),
}

impl AwsError {
    /// Converts into the core error, naming the provider and the operation.
    pub(crate) fn into_core(self, provider: &str, operation: &'static str) -> Error {
        match self {
            AwsError::Target {
                entitlement,
                field,
                message,
            } => Error::Config(ConfigError::InvalidField {
                entitlement,
                field,
                message,
            }),
            AwsError::Request(e) => Error::InvalidRequest(e),
            AwsError::Core(e) => e,
            AwsError::Setting { field, message } => Error::Config(ConfigError::InvalidField {
                entitlement: "settings".into(),
                field,
                message,
            }),
            AwsError::RoleNotFound(role) => Error::NotFound {
                kind: "aws role",
                id: role,
            },
            AwsError::Throttled { .. } => Error::Throttled {
                provider: provider.to_string(),
                operation,
                retry_after: None,
            },
            AwsError::Unavailable { call, message } => Error::Unavailable {
                what: format!("aws {call} for provider `{provider}`"),
                message,
            },
            AwsError::ExpiredCredentials { call, .. } => Error::Unavailable {
                what: format!("aws {call} for provider `{provider}`"),
                message: self.to_string(),
            },
            AwsError::RevocationContended { .. } => Error::Unavailable {
                what: format!("aws iam for provider `{provider}`"),
                message: self.to_string(),
            },
            other => Error::ProviderRejected {
                provider: provider.to_string(),
                operation,
                message: other.to_string(),
            },
        }
    }

    /// Classifies an SDK error by its AWS error code.
    pub(crate) fn from_sdk<E>(call: &'static str, err: &SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        match err {
            SdkError::ServiceError(ctx) => {
                let e = ctx.err();
                let (code, message) = match e.code() {
                    Some(c) => (c.to_string(), e.message().map(clip)),
                    // Some endpoints (moto's auth layer, proxies) wrap the
                    // error in an envelope the SDK does not parse; the XML
                    // element names are the same, so read them directly.
                    None => {
                        let body = ctx.raw().body().bytes().unwrap_or_default();
                        let text = String::from_utf8_lossy(&body[..body.len().min(4096)]);
                        (
                            xml_element(&text, "Code")
                                .unwrap_or_else(|| format!("Http{}", ctx.raw().status().as_u16())),
                            xml_element(&text, "Message").map(|m| clip(&m)),
                        )
                    }
                };
                classify(call, code, message)
            }
            SdkError::TimeoutError(_) => AwsError::Unavailable {
                call,
                message: "timed out".into(),
            },
            SdkError::DispatchFailure(d) => AwsError::Unavailable {
                call,
                message: if d.is_timeout() {
                    "timed out connecting".into()
                } else if d.is_io() {
                    "connection failed".into()
                } else {
                    "request could not be sent".into()
                },
            },
            SdkError::ResponseError(_) => AwsError::Unavailable {
                call,
                message: "unreadable response".into(),
            },
            SdkError::ConstructionFailure(_) => AwsError::Rejected {
                call,
                code: "ConstructionFailure".into(),
                message: Some(
                    "the request could not be built (check region and credentials)".into(),
                ),
            },
            _ => AwsError::Unavailable {
                call,
                message: "unknown sdk error".into(),
            },
        }
    }

    /// With static credentials (nothing refreshes them) an expired token is
    /// final: retrying would fail the same way until someone replaces them.
    pub(crate) fn final_if_static(self, static_credentials: bool) -> Self {
        match self {
            AwsError::ExpiredCredentials { call, code } if static_credentials => AwsError::Rejected {
                call,
                code,
                message: Some(
                    "the broker's static aws credentials have expired and nothing refreshes them; replace them".into(),
                ),
            },
            other => other,
        }
    }

    /// Whether the error is STS's `ValidationError` (a parameter the role
    /// does not allow, e.g. a duration over a lowered `MaxSessionDuration`).
    pub(crate) fn is_validation_error(&self) -> bool {
        matches!(self, AwsError::Rejected { code, .. } if code == "ValidationError")
    }

    /// Whether the error is IAM's `NoSuchEntity`.
    pub(crate) fn is_no_such_entity(&self) -> bool {
        matches!(self, AwsError::Rejected { code, .. } if code == "NoSuchEntity")
    }
}

fn classify(call: &'static str, code: String, message: Option<String>) -> AwsError {
    match code.as_str() {
        "Throttling"
        | "ThrottlingException"
        | "RequestLimitExceeded"
        | "TooManyRequestsException"
        | "RequestThrottled"
        | "SlowDown"
        | "PriorRequestNotComplete" => AwsError::Throttled { call },
        // The broker's own credentials: refreshed by the SDK chain, so retrying
        // helps, unless they are static (see `final_if_static`).
        "ExpiredToken" | "ExpiredTokenException" => AwsError::ExpiredCredentials { call, code },
        // The request's signature is too old (clock skew, a stalled queue): retrying signs anew.
        "RequestExpired" => AwsError::Unavailable {
            call,
            message: format!(
                "{code}: the request was signed too long before it arrived; check the clock"
            ),
        },
        "ServiceFailure"
        | "ServiceUnavailable"
        | "InternalFailure"
        | "InternalError"
        | "ConcurrentModification" => AwsError::Unavailable {
            call,
            message: match message {
                Some(m) => format!("{code}: {m}"),
                None => code,
            },
        },
        "PackedPolicyTooLarge" => AwsError::Rejected {
            call,
            code,
            message: Some(format!(
                "the session policy, policy ARNs and session tags exceed the packed size limit{}",
                message.map(|m| format!(" ({m})")).unwrap_or_default()
            )),
        },
        "RegionDisabledException" => AwsError::Rejected {
            call,
            code,
            message: Some(format!(
                "sts is not activated in this region for the account{}",
                message.map(|m| format!(" ({m})")).unwrap_or_default()
            )),
        },
        _ => AwsError::Rejected {
            call,
            code,
            message,
        },
    }
}

/// The text of the first `<name>...</name>` element, if it is short and plain.
fn xml_element(text: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = text.find(&open)? + open.len();
    let len = text[start..].find(&format!("</{name}>"))?;
    let v = &text[start..start + len];
    (!v.is_empty() && v.len() <= 1024 && !v.contains('<')).then(|| v.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn codes_map_to_core_kinds() {
        let p = "aws";
        let e = classify("sts:AssumeRole", "ThrottlingException".into(), None);
        assert!(matches!(e.into_core(p, "issue"), Error::Throttled { .. }));
        let e = classify("sts:AssumeRole", "Throttling".into(), Some("rate".into()));
        assert!(matches!(e.into_core(p, "issue"), Error::Throttled { .. }));
        let e = classify("sts:AssumeRole", "ExpiredTokenException".into(), None);
        let core = e.into_core(p, "issue");
        assert!(matches!(core, Error::Unavailable { .. }));
        assert!(core.is_transient());
        let e = classify(
            "sts:AssumeRole",
            "PackedPolicyTooLarge".into(),
            Some("98%".into()),
        );
        let core = e.into_core(p, "issue");
        assert!(
            matches!(&core, Error::ProviderRejected { message, .. } if message.contains("packed size limit") && message.contains("PackedPolicyTooLarge")),
            "{core}"
        );
        assert!(!core.is_transient());
        let e = classify("sts:AssumeRole", "MalformedPolicyDocument".into(), None);
        assert!(matches!(
            e.into_core(p, "issue"),
            Error::ProviderRejected { .. }
        ));
        let e = classify("sts:AssumeRole", "AccessDenied".into(), Some("no".into()));
        let core = e.into_core(p, "issue");
        assert!(
            matches!(&core, Error::ProviderRejected { message, .. } if message == "sts:AssumeRole: AccessDenied: no"),
            "{core}"
        );
        let e = classify("sts:AssumeRole", "RegionDisabledException".into(), None);
        assert!(
            matches!(e.into_core(p, "issue"), Error::ProviderRejected { message, .. } if message.contains("not activated"))
        );
        // Regression: an expired static key was reported as transient and
        // retried for ever; only a refreshing chain makes a retry useful.
        let e = classify("iam:GetRole", "ExpiredToken".into(), None);
        assert!(e
            .final_if_static(false)
            .into_core(p, "issue")
            .is_transient());
        let e = classify("iam:GetRole", "ExpiredToken".into(), None);
        let core = e.final_if_static(true).into_core(p, "issue");
        assert!(!core.is_transient(), "{core}");
        assert!(core.to_string().contains("static"), "{core}");
        let e = classify("iam:GetRole", "ServiceFailure".into(), None);
        assert!(e.into_core(p, "issue").is_transient());
        assert!(classify("iam:GetRole", "NoSuchEntity".into(), None).is_no_such_entity());
    }

    #[test]
    fn xml_elements_are_read_from_unparsed_envelopes() {
        let body = "<ErrorResponse><Errors><Error><Code>AccessDenied</Code><Message>no &amp; never</Message></Error></Errors></ErrorResponse>";
        assert_eq!(xml_element(body, "Code").as_deref(), Some("AccessDenied"));
        assert_eq!(
            xml_element(body, "Message").as_deref(),
            Some("no &amp; never")
        );
        assert_eq!(xml_element(body, "Type"), None);
        assert_eq!(xml_element("<Code><x/></Code>", "Code"), None);
    }
}
