//! API Gateway proxy responses: `{statusCode, headers, body, isBase64Encoded}`,
//! understood by REST APIs, HTTP APIs (both payload versions) and function URLs.
//!
//! Errors have the vending server's shape, one definition in jit-core
//! ([`jit_core::wire::ErrorEnvelope`]):
//! `{"error": {"code": "denied", "message": "...", "details": {...}}}`.
//!
//! | status | code | when |
//! | --- | --- | --- |
//! | 200 | | issued: `{"status": "active", ..., "credentials": {credential_process JSON}}` |
//! | 202 | | waiting for approval: `{"status": "pending", "request_id": ..., "approvers": ..., "quorum": ...}` |
//! | 400 | `invalid_request` | malformed body, unknown field, bad duration, unknown entitlement, justification or ticket rules |
//! | 401 | `unauthorized` | no identity from an authorizer |
//! | 403 | `denied` | the policy denied (details: `reasons`, `request_id`) |
//! | 409 | `conflict` | a concurrent change; retry |
//! | 413 | `payload_too_large` | body over 64 KiB |
//! | 429 | `throttled` | AWS throttled the broker (`Retry-After` when known) |
//! | 500 | `audit_failed` | the audit record could not be written: nothing is returned, anything minted was revoked |
//! | 500 | `internal` | store or configuration failure (logged, not shown) |
//! | 502 | `provider_rejected` | STS or IAM refused (role missing, trust policy, limits) |
//! | 503 | `unavailable` | AWS or the database could not be reached |
//!
//! Every response carries `Cache-Control: no-store`.

use jit_core::wire::{self, ErrorDetails, ErrorEnvelope};
use jit_core::Error;
use serde_json::{json, Value};

use crate::event::EventError;

/// A response before it is turned into the proxy JSON.
#[derive(Clone, PartialEq)]
pub struct ApiResponse {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: Value,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

// The body may hold credentials: never print it.
impl std::fmt::Debug for ApiResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiResponse")
            .field("status", &self.status)
            .field("error_code", &self.error_code())
            .finish_non_exhaustive()
    }
}

impl ApiResponse {
    /// A success (or pending) answer.
    pub fn ok(status: u16, body: Value) -> Self {
        Self {
            status,
            body,
            retry_after: None,
        }
    }

    /// An error answer.
    pub fn error(status: u16, code: &str, message: impl Into<String>) -> Self {
        Self::ok(status, wire::to_value(&ErrorEnvelope::new(code, message)))
    }

    /// Adds `error.details`.
    pub fn with_details(mut self, details: ErrorDetails) -> Self {
        if let Some(e) = self.body.get_mut("error") {
            e["details"] = wire::to_value(&details);
        }
        self
    }

    /// The error code, when this is an error.
    pub fn error_code(&self) -> Option<&str> {
        self.body
            .get("error")
            .and_then(|e| e.get("code"))
            .and_then(Value::as_str)
    }

    /// The API Gateway proxy response.
    pub fn into_proxy(self) -> Value {
        let mut headers = json!({
            "content-type": "application/json",
            "cache-control": "no-store",
        });
        if let Some(s) = self.retry_after {
            headers["retry-after"] = json!(s.to_string());
        }
        json!({
            "statusCode": self.status,
            "headers": headers,
            "isBase64Encoded": false,
            "body": self.body.to_string(),
        })
    }
}

impl From<EventError> for ApiResponse {
    fn from(e: EventError) -> Self {
        match e {
            EventError::Unauthenticated(m) => Self::error(401, "unauthorized", m),
            EventError::BadRequest(m) => Self::error(400, "invalid_request", m),
            EventError::TooLarge(_) => Self::error(413, "payload_too_large", e.to_string()),
        }
    }
}

impl From<Error> for ApiResponse {
    /// Code and status come from jit-core ([`Error::code`],
    /// [`Error::http_status`]), the same as the vending server's; internals
    /// (store, configuration, audit sink) are logged and answered without
    /// details.
    fn from(e: Error) -> Self {
        let message = match &e {
            Error::AuditFailed(m) => {
                tracing::error!(error = %m, "audit failed; nothing was returned");
                "the audit record could not be written, so no credentials were returned and anything minted was revoked".to_string()
            }
            other if other.is_internal() => {
                tracing::error!(error = %other, code = other.code(), "internal error");
                "internal error; the operation was not completed".to_string()
            }
            other => other.to_string(),
        };
        let mut r = Self::error(e.http_status(), e.code(), message);
        r.retry_after = e.retry_after_secs();
        if let Error::Denied { reasons } = &e {
            r = r.with_details(ErrorDetails::reasons(reasons.clone()));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::*;

    #[test]
    fn proxy_shape_and_error_mapping() {
        let r: ApiResponse = Error::Throttled {
            provider: "aws".into(),
            operation: "issue",
            retry_after: Some(Duration::from_secs(7)),
        }
        .into();
        let p = r.into_proxy();
        assert_eq!(p["statusCode"], 429);
        assert_eq!(p["headers"]["retry-after"], "7");
        assert_eq!(p["headers"]["cache-control"], "no-store");
        let body: Value = serde_json::from_str(p["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["error"]["code"], "throttled");

        for (e, status, code) in [
            (
                Error::Unavailable {
                    what: "sts".into(),
                    message: "timeout".into(),
                },
                503,
                "unavailable",
            ),
            (Error::AuditFailed("disk".into()), 500, "audit_failed"),
            (Error::Store("secret internals".into()), 500, "internal"),
            (
                Error::Denied {
                    reasons: vec!["no".into()],
                },
                403,
                "denied",
            ),
        ] {
            let r = ApiResponse::from(e);
            assert_eq!((r.status, r.error_code()), (status, Some(code)));
            assert!(!r.body.to_string().contains("secret internals"));
            assert!(!r.body.to_string().contains("disk"));
        }
    }

    #[test]
    fn error_bodies_are_the_shared_envelope() {
        let r = ApiResponse::from(Error::Denied {
            reasons: vec!["no".into()],
        })
        .with_details(
            ErrorDetails::reasons(vec!["no".into()]).with_request(jit_core::RequestId::new()),
        );
        let e: ErrorEnvelope = serde_json::from_value(r.body.clone()).unwrap();
        assert_eq!(e.error.code, "denied");
        assert_eq!(e.reasons(), ["no"]);
        assert!(e.error.details.unwrap().request_id.is_some());
        // The bytes as before: sorted keys.
        let plain = ApiResponse::error(404, "not_found", "x");
        assert_eq!(
            plain.body.to_string(),
            r#"{"error":{"code":"not_found","message":"x"}}"#
        );
    }
}
