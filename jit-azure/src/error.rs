//! The crate's private error, converted into [`jit_core::Error`] at the edge.
//!
//! ARM errors are classified by the `error.code` of the ARM error envelope
//! (`{"error": {"code", "message"}}`), never by message text, and carry only
//! what ARM said plus our own context: no request body, no bearer token, no
//! client secret. Statuses without a code we know go through the provider
//! kit's status mapping ([`jit_core::provider::http::error_for_status`]), so
//! 429 becomes `Throttled` with its `Retry-After`, 5xx `Unavailable`, and so
//! on, the same for every cloud.

use std::time::Duration;

use jit_core::{ConfigError, Error, RequestError};

/// A wire message and user input in errors: bounded, printable (one
/// definition for every provider).
pub(crate) use jit_core::provider::text::{input as printable, message as clip};

/// What went wrong inside jit-azure.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AzureError {
    /// An entitlement target breaks an ARM rule.
    #[error("entitlement `{entitlement}`: `{field}` is invalid: {message}")]
    Target {
        entitlement: String,
        field: String,
        message: String,
    },

    /// The grant window (or a text sent with it) cannot be honoured.
    #[error(transparent)]
    Request(#[from] RequestError),

    /// Provider configuration is invalid.
    #[error("azure provider setting `{field}` is invalid: {message}")]
    Setting { field: String, message: String },

    /// The requester has no usable Entra object id (or principal type).
    #[error("principal `{principal}`: {message}")]
    Principal { principal: String, message: String },

    /// ARM answered with an error envelope (or a bare error status).
    #[error("{call}: {code} (http {status}){}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Arm {
        call: &'static str,
        status: u16,
        code: String,
        message: Option<String>,
        retry_after: Option<Duration>,
    },

    /// A schedule request ended in a state that will never grant access.
    #[error("{call}: schedule request `{name}` ended with status `{status}`{}", hint.map(|h| format!("; {h}")).unwrap_or_default())]
    Status {
        call: &'static str,
        name: String,
        status: String,
        hint: Option<&'static str>,
    },

    /// A schedule request did not settle within the configured wait.
    #[error("{call}: schedule request `{name}` still has status `{status}` after {waited}s; retrying finds the same request")]
    Pending {
        call: &'static str,
        name: String,
        status: String,
        waited: u64,
    },

    /// The endpoint could not be reached, timed out, or the broker's own
    /// identity could not get a token.
    #[error("{call}: {message}")]
    Unavailable { call: &'static str, message: String },

    /// The response lacked (or garbled) a field the API promises.
    #[error("{call}: response field `{field}` is missing or malformed")]
    Incomplete {
        call: &'static str,
        field: &'static str,
    },

    /// A revocation record lacks what is needed to revoke it.
    #[error("{0}")]
    Unrevocable(String),
}

/// ARM codes that say the thing asked about is not there.
const NOT_THERE: [&str; 5] = [
    "RoleAssignmentDoesNotExist",
    "RoleAssignmentNotFound",
    "RoleAssignmentScheduleRequestNotFound",
    "RoleAssignmentScheduleNotFound",
    "ResourceNotFound",
];

impl AzureError {
    /// Converts into the core error, naming the provider and the operation.
    pub(crate) fn into_core(self, provider: &str, operation: &'static str) -> Error {
        match self {
            AzureError::Target {
                entitlement,
                field,
                message,
            } => Error::Config(ConfigError::InvalidField {
                entitlement,
                field,
                message,
            }),
            AzureError::Request(e) => Error::InvalidRequest(e),
            AzureError::Principal { principal, message } => {
                Error::InvalidRequest(RequestError::NoCloudIdentity {
                    principal,
                    provider: provider.to_string(),
                    message,
                })
            }
            AzureError::Setting { field, message } => Error::Config(ConfigError::InvalidField {
                entitlement: "settings".into(),
                field,
                message,
            }),
            AzureError::Arm {
                call,
                status,
                ref code,
                ref message,
                retry_after,
            } => match code.as_str() {
                // Codes that retrying cannot fix, whatever the status says.
                "RoleAssignmentExists"
                | "RoleAssignmentRequestExists"
                | "RoleAssignmentRequestPolicyValidationFailed"
                | "AuthorizationFailed"
                | "InvalidRoleAssignmentId"
                | "PrincipalNotFound"
                | "RoleDefinitionDoesNotExist"
                | "InvalidAuthenticationToken"
                | "ActiveDurationTooShort" => Error::ProviderRejected {
                    provider: provider.to_string(),
                    operation,
                    message: self.hinted(),
                },
                _ => jit_core::provider::http::error_for_status(
                    provider,
                    operation,
                    status,
                    retry_after,
                    format!(
                        "{call}: {code}{}",
                        message
                            .as_deref()
                            .map(|m| format!(": {m}"))
                            .unwrap_or_default()
                    ),
                ),
            },
            AzureError::Pending { .. } | AzureError::Unavailable { .. } => Error::Unavailable {
                what: format!("azure arm for provider `{provider}`"),
                message: self.to_string(),
            },
            other => Error::ProviderRejected {
                provider: provider.to_string(),
                operation,
                message: other.to_string(),
            },
        }
    }

    /// The message with what to do next, for the codes where we know it.
    fn hinted(&self) -> String {
        let hint = match self {
            AzureError::Arm { code, .. } => match code.as_str() {
                "RoleAssignmentExists" => Some(
                    "the principal already holds this role at this scope (a standing or another jit assignment); remove it or use another entitlement",
                ),
                "RoleAssignmentRequestExists" => Some(
                    "another schedule request for this principal, role and scope is pending; wait for it or cancel it",
                ),
                "RoleAssignmentRequestPolicyValidationFailed" => Some(
                    "the role management policy refused the request (the failed rule is named above); align the entitlement's maximum with the policy",
                ),
                "AuthorizationFailed" => Some(
                    "the broker's identity needs `Microsoft.Authorization/roleAssignmentScheduleRequests/write` (or `roleAssignments/write`) at this scope",
                ),
                "PrincipalNotFound" => Some(
                    "the object id is unknown to the tenant, or too new to have replicated; check the principal's `azure_object_id`",
                ),
                "RoleDefinitionDoesNotExist" => {
                    Some("check the entitlement's role definition id and scope")
                }
                _ => None,
            },
            _ => None,
        };
        match hint {
            Some(h) => format!("{self}; {h}"),
            None => self.to_string(),
        }
    }

    /// The ARM error code, if this is an ARM error.
    pub(crate) fn code(&self) -> Option<&str> {
        match self {
            AzureError::Arm { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether ARM said the resource asked about does not exist.
    pub(crate) fn is_not_there(&self) -> bool {
        match self {
            AzureError::Arm { status, code, .. } => {
                *status == 404 || NOT_THERE.contains(&code.as_str())
            }
            _ => false,
        }
    }

    /// Reads an ARM error response: the envelope's code and message, or the
    /// status alone when the body is not an envelope.
    pub(crate) fn from_response(
        call: &'static str,
        status: u16,
        body: &[u8],
        retry_after: Option<Duration>,
    ) -> Self {
        let envelope: Option<serde_json::Value> = serde_json::from_slice(body).ok();
        let error = envelope.as_ref().and_then(|v| v.get("error"));
        let code = error
            .and_then(|e| e.get("code"))
            .and_then(|c| c.as_str())
            .map(printable)
            .unwrap_or_else(|| format!("Http{status}"));
        let message = error
            .and_then(|e| e.get("message"))
            .and_then(|m| m.as_str())
            .map(clip);
        AzureError::Arm {
            call,
            status,
            code,
            message,
            retry_after,
        }
    }
}

/// A setting error.
pub(crate) fn setting(field: &str, message: impl Into<String>) -> AzureError {
    AzureError::Setting {
        field: field.to_string(),
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn arm(status: u16, code: &str) -> AzureError {
        AzureError::from_response(
            "put schedule request",
            status,
            format!(r#"{{"error":{{"code":"{code}","message":"said arm"}}}}"#).as_bytes(),
            Some(Duration::from_secs(7)),
        )
    }

    #[test]
    fn envelope_codes_are_read_and_typed() {
        let e = arm(400, "RoleAssignmentRequestPolicyValidationFailed");
        assert_eq!(
            e.code(),
            Some("RoleAssignmentRequestPolicyValidationFailed")
        );
        match e.into_core("azure", "issue") {
            Error::ProviderRejected { message, .. } => {
                assert!(message.contains("said arm"), "{message}");
                assert!(message.contains("role management policy"), "{message}");
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
        for code in [
            "RoleAssignmentExists",
            "RoleAssignmentRequestExists",
            "AuthorizationFailed",
            "InvalidRoleAssignmentId",
            "PrincipalNotFound",
            "RoleDefinitionDoesNotExist",
        ] {
            // Even with a status that would otherwise be retried.
            assert!(
                matches!(
                    arm(409, code).into_core("azure", "issue"),
                    Error::ProviderRejected { .. }
                ),
                "{code}"
            );
        }
    }

    #[test]
    fn throttling_and_server_errors_keep_their_kind() {
        match arm(429, "TooManyRequests").into_core("azure", "issue") {
            Error::Throttled { retry_after, .. } => {
                assert_eq!(retry_after, Some(Duration::from_secs(7)))
            }
            other => panic!("expected throttled, got {other:?}"),
        }
        // 503 with a Retry-After is throttling too; without one, unavailable.
        assert!(matches!(
            arm(503, "ServiceUnavailable").into_core("azure", "issue"),
            Error::Throttled { .. }
        ));
        let bare = AzureError::from_response("get", 503, b"{}", None);
        assert!(matches!(
            bare.into_core("azure", "issue"),
            Error::Unavailable { .. }
        ));
    }

    #[test]
    fn bodies_that_are_not_envelopes_still_classify() {
        let e = AzureError::from_response("get", 404, b"<html>gone</html>", None);
        assert_eq!(e.code(), Some("Http404"));
        assert!(e.is_not_there());
        assert!(arm(400, "RoleAssignmentDoesNotExist").is_not_there());
        assert!(!arm(400, "RoleAssignmentExists").is_not_there());
    }
}
