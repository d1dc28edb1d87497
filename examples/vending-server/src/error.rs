//! The one error body every route answers with:
//! `{"error": {"code": "not_found", "message": "...", "details": ...}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use jit_core::Error;
use serde_json::json;

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
    pub details: Option<serde_json::Value>,
}

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: None,
        }
    }

    /// Adds details.
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
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
    fn from(e: Error) -> Self {
        use StatusCode as S;
        match e {
            Error::InvalidRequest(r) => Self::new(S::BAD_REQUEST, "invalid_request", r.to_string()),
            Error::Config(c) => Self::new(S::BAD_REQUEST, "invalid_configuration", c.to_string()),
            Error::Denied { ref reasons } => Self::new(S::FORBIDDEN, "denied", e.to_string())
                .with_details(json!({ "reasons": reasons })),
            Error::Forbidden { .. } => Self::new(S::FORBIDDEN, "forbidden", e.to_string()),
            Error::NotFound { .. } => Self::new(S::NOT_FOUND, "not_found", e.to_string()),
            Error::InvalidState { .. } => Self::new(S::CONFLICT, "invalid_state", e.to_string()),
            Error::Conflict { .. } => Self::new(S::CONFLICT, "conflict", e.to_string()),
            Error::Throttled { .. } => Self::new(S::TOO_MANY_REQUESTS, "throttled", e.to_string()),
            Error::Unavailable { .. } => {
                Self::new(S::SERVICE_UNAVAILABLE, "unavailable", e.to_string())
            }
            Error::ProviderRejected { .. } => {
                Self::new(S::BAD_GATEWAY, "provider_rejected", e.to_string())
            }
            Error::Token(t) => Self::new(S::UNAUTHORIZED, "unauthorized", t.to_string()),
            other => {
                // Store and audit failures: log the cause, answer without internals.
                tracing::error!(error = %other, "internal error");
                Self::new(
                    S::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; the operation was not completed",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut err = json!({ "code": self.code, "message": self.message });
        if let Some(d) = self.details {
            err["details"] = d;
        }
        (self.status, Json(json!({ "error": err }))).into_response()
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;
