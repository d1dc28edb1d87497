//! The crate's private error, converted into [`jit_core::Error`] at the edge.
//!
//! Google errors are classified by their canonical status code (`ABORTED`,
//! `RESOURCE_EXHAUSTED`, ...) and HTTP status, never by message text, and
//! carry only what Google said plus our own context: no request body, no
//! token, no key. Messages follow the workspace style (lowercase, no
//! trailing period, user input in backticks).

use std::time::Duration;

use google_cloud_gax::error::rpc::Code;
use jit_core::{ConfigError, Error, RequestError};

/// A wire message and user input in errors: bounded, printable (one
/// definition for every provider).
pub(crate) use jit_core::provider::text::{input as printable, message as clip};

/// What went wrong inside jit-gcp.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GcpError {
    /// An entitlement target breaks a rule or a Google limit.
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
    #[error("gcp provider setting `{field}` is invalid: {message}")]
    Setting { field: String, message: String },

    /// The principal carries no usable IAM member.
    #[error("principal `{principal}` has no usable gcp member: {message}")]
    Member { principal: String, message: String },

    /// The binding would mean nothing or break a documented IAM limit; nothing was written.
    #[error("{0}")]
    Refused(String),

    /// Another writer kept changing the policy between our read and write.
    #[error("iam policy of `{resource}` changed concurrently {attempts} times; retry")]
    Contended { resource: String, attempts: u32 },

    /// A policy read back breaks a promise we rely on (version, etag).
    #[error("{call}: {message}")]
    Unsafe { call: &'static str, message: String },

    /// Google refused the call for a reason retrying will not fix.
    #[error("{call}: {code}{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Rejected {
        call: &'static str,
        code: String,
        message: Option<String>,
    },

    /// The resource named by an entitlement does not exist (or the broker may not see it).
    #[error("{call}: `{resource}` not found")]
    NotFound {
        call: &'static str,
        resource: String,
    },

    /// The policy's etag no longer matches: re-read and retry.
    #[error("{call}: the policy changed since it was read (etag mismatch)")]
    EtagMismatch { call: &'static str },

    /// Google asked us to slow down.
    #[error("{call} throttled")]
    Throttled {
        call: &'static str,
        retry_after: Option<Duration>,
    },

    /// The endpoint could not be reached, timed out, failed on its side, or
    /// the broker's own credentials could not be obtained for now.
    #[error("{call}: {message}")]
    Unavailable { call: &'static str, message: String },

    /// The response lacked a field the API promises.
    #[error("{call}: response is missing `{field}`")]
    Incomplete {
        call: &'static str,
        field: &'static str,
    },
}

impl GcpError {
    /// Converts into the core error, naming the provider and the operation.
    pub(crate) fn into_core(self, provider: &str, operation: &'static str) -> Error {
        match self {
            GcpError::Target {
                entitlement,
                field,
                message,
            } => Error::Config(ConfigError::InvalidField {
                entitlement,
                field,
                message,
            }),
            GcpError::Request(e) => Error::InvalidRequest(e),
            GcpError::Member { principal, message } => {
                Error::InvalidRequest(RequestError::NoCloudIdentity {
                    principal,
                    provider: provider.to_string(),
                    message,
                })
            }
            GcpError::Setting { field, message } => Error::Config(ConfigError::InvalidField {
                entitlement: "settings".into(),
                field,
                message,
            }),
            GcpError::NotFound { resource, .. } => Error::NotFound {
                kind: "gcp resource",
                id: resource,
            },
            GcpError::Throttled { retry_after, .. } => Error::Throttled {
                provider: provider.to_string(),
                operation,
                retry_after,
            },
            e @ (GcpError::Unavailable { .. }
            | GcpError::Contended { .. }
            | GcpError::EtagMismatch { .. }) => Error::Unavailable {
                what: format!("gcp iam for provider `{provider}`"),
                message: e.to_string(),
            },
            other => Error::ProviderRejected {
                provider: provider.to_string(),
                operation,
                message: other.to_string(),
            },
        }
    }

    /// Whether a read-modify-write should start again from the read.
    pub(crate) fn is_etag_mismatch(&self) -> bool {
        matches!(self, GcpError::EtagMismatch { .. })
    }

    /// Classifies an error of a google-cloud-* client call.
    pub(crate) fn from_gax(
        call: &'static str,
        resource: &str,
        err: &google_cloud_gax::error::Error,
    ) -> Self {
        if let Some(status) = err.status() {
            let message = (!status.message.is_empty()).then(|| clip(&status.message));
            return classify(
                call,
                resource,
                status.code,
                err.http_status_code(),
                message,
                retry_after(err),
            );
        }
        if let Some(http) = err.http_status_code() {
            // A body the client could not read as Google's error envelope
            // (a proxy, a load balancer): the HTTP status is all we have.
            let code = match http {
                400 => Code::InvalidArgument,
                401 => Code::Unauthenticated,
                403 => Code::PermissionDenied,
                404 => Code::NotFound,
                409 => Code::Aborted,
                412 => Code::FailedPrecondition,
                429 => Code::ResourceExhausted,
                500 => Code::Internal,
                503 => Code::Unavailable,
                504 => Code::DeadlineExceeded,
                _ => Code::Unknown,
            };
            return classify(call, resource, code, Some(http), None, retry_after(err));
        }
        let message = if err.is_timeout() {
            "timed out"
        } else if err.is_connect() {
            "connection failed"
        } else if err.is_io() || err.is_transport() {
            "the request could not be sent"
        } else if err.is_authentication() {
            "the broker's google credentials could not be obtained"
        } else if err.is_deserialization() {
            "unreadable response"
        } else if err.is_binding() || err.is_serialization() {
            return GcpError::Rejected {
                call,
                code: "INVALID_ARGUMENT".into(),
                message: Some(format!(
                    "`{}` is not a name this api accepts",
                    printable(resource)
                )),
            };
        } else {
            "unknown client error"
        };
        GcpError::Unavailable {
            call,
            message: message.into(),
        }
    }
}

fn retry_after(err: &google_cloud_gax::error::Error) -> Option<Duration> {
    let value = err.http_headers()?.get("retry-after")?.to_str().ok()?;
    jit_core::provider::http::parse_retry_after(value, chrono::Utc::now())
}

impl jit_core::provider::retry::RetryAfter for GcpError {
    fn retry_after(&self) -> Option<Duration> {
        match self {
            GcpError::Throttled { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// The canonical name of a status code, as Google's JSON envelope spells it.
pub(crate) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

fn classify(
    call: &'static str,
    resource: &str,
    code: Code,
    http: Option<u16>,
    message: Option<String>,
    retry_after: Option<Duration>,
) -> GcpError {
    match code {
        // setIamPolicy with a stale etag: HTTP 409 `ABORTED` ("there were
        // concurrent policy changes"); some services answer 412
        // `FAILED_PRECONDITION` for the same thing.
        Code::Aborted => GcpError::EtagMismatch { call },
        Code::FailedPrecondition if http == Some(412) => GcpError::EtagMismatch { call },
        Code::ResourceExhausted => GcpError::Throttled { call, retry_after },
        Code::Unavailable | Code::Internal | Code::DeadlineExceeded | Code::Unknown => {
            GcpError::Unavailable {
                call,
                message: match message {
                    Some(m) => format!("{}: {m}", code_name(code)),
                    None => code_name(code).to_lowercase(),
                },
            }
        }
        Code::NotFound => GcpError::NotFound {
            call,
            resource: printable(resource),
        },
        other => GcpError::Rejected {
            call,
            code: code_name(other).into(),
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn codes_map_to_core_kinds() {
        let p = "gcp";
        let c = |code, http| {
            classify(
                "setIamPolicy",
                "projects/p",
                code,
                http,
                Some("m".into()),
                None,
            )
        };
        assert!(c(Code::Aborted, Some(409)).is_etag_mismatch());
        assert!(c(Code::FailedPrecondition, Some(412)).is_etag_mismatch());
        assert!(!c(Code::FailedPrecondition, Some(400)).is_etag_mismatch());
        assert!(matches!(
            c(Code::ResourceExhausted, Some(429)).into_core(p, "issue"),
            Error::Throttled { .. }
        ));
        let e = c(Code::Unavailable, Some(503)).into_core(p, "issue");
        assert!(e.is_transient(), "{e}");
        let e = c(Code::PermissionDenied, Some(403)).into_core(p, "issue");
        assert!(
            matches!(&e, Error::ProviderRejected { message, .. } if message == "setIamPolicy: PERMISSION_DENIED: m"),
            "{e}"
        );
        assert!(!e.is_transient());
        assert!(matches!(
            c(Code::NotFound, Some(404)).into_core(p, "issue"),
            Error::NotFound { .. }
        ));
        // An etag race that outlasted the retries is transient for the broker.
        let e = GcpError::Contended {
            resource: "projects/p".into(),
            attempts: 5,
        }
        .into_core(p, "issue");
        assert!(e.is_transient(), "{e}");
    }
}
