//! The one error body every route answers with:
//! `{"error": {"code": "not_found", "message": "...", "details": ...}}`
//! ([`jit_core::wire::ErrorEnvelope`], the same in the Lambda function and
//! read by the `jit` CLI).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use jit_core::wire::{self, ErrorDetails, ErrorEnvelope};
use jit_core::Error;

/// An HTTP error with a stable machine-readable code.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code, e.g. `not_found`.
    pub code: &'static str,
    /// Human-readable message (never internals, never secrets).
    pub message: String,
    /// Extra data (reasons of a deny).
    pub details: Option<ErrorDetails>,
    /// Seconds for `Retry-After` (a throttled provider).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }

    /// Adds details.
    pub fn with_details(mut self, details: ErrorDetails) -> Self {
        self.details = Some(details);
        self
    }

    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403 for operations (not objects) the caller may not use.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 404 for a request id, the same whether it is missing or someone else's.
    pub fn request_not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("request `{id}` not found"),
        )
    }
}

impl From<Error> for ApiError {
    /// Code and status come from jit-core ([`Error::code`],
    /// [`Error::http_status`]), the same in every host; internals (store,
    /// configuration, audit sink) are logged and answered without details.
    fn from(e: Error) -> Self {
        let status =
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let message = match &e {
            Error::AuditFailed(m) => {
                tracing::error!(error = %m, "audit failed; nothing was returned");
                "the audit record could not be written, so the operation was not completed and anything minted was revoked".to_string()
            }
            other if other.is_internal() => {
                tracing::error!(error = %other, code = other.code(), "internal error");
                "internal error; the operation was not completed".to_string()
            }
            Error::Token(t) => t.to_string(),
            other => other.to_string(),
        };
        let mut api = Self::new(status, e.code(), message);
        api.retry_after = e.retry_after_secs();
        if let Error::Denied { reasons } = &e {
            api = api.with_details(ErrorDetails::reasons(reasons.clone()));
        }
        api
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut envelope = ErrorEnvelope::new(self.code, self.message);
        if let Some(d) = self.details {
            envelope = envelope.with_details(d);
        }
        let mut resp = (self.status, Json(wire::to_value(&envelope))).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        resp
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;
