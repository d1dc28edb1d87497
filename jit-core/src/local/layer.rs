//! A tower layer that admits only requests with a valid local token.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Request, Response, StatusCode};
use tower::{Layer, Service};

use super::Verifier;
use crate::error::TokenError;

/// Checks `Authorization: Bearer <token>` with a [`Verifier`] for one audience.
///
/// On success the request reaches the inner service with the token's
/// [`LocalClaims`](super::LocalClaims) in its extensions (in axum:
/// `Extension<LocalClaims>`). On failure the inner service is not called and
/// the answer is `401` with `WWW-Authenticate: Bearer` and a JSON body
/// `{"error":"unauthorized","message":"..."}`. The response body type must be
/// buildable from a `String`, as axum's `Body` is.
///
/// ```
/// # fn demo(verifier: jit_core::local::Verifier) {
/// use axum::{routing::get, Extension, Router};
/// use jit_core::local::{LocalClaims, LocalTokenLayer};
///
/// let app: Router = Router::new()
///     .route("/admin", get(|Extension(c): Extension<LocalClaims>| async move { c.sub }))
///     .layer(LocalTokenLayer::new(verifier, "billing-admin"));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct LocalTokenLayer {
    verifier: Arc<Verifier>,
    audience: Arc<str>,
}

impl LocalTokenLayer {
    /// Admits tokens that `verifier` accepts for `audience`.
    pub fn new(verifier: Verifier, audience: impl Into<String>) -> Self {
        Self::from_shared(Arc::new(verifier), audience)
    }

    /// Like [`LocalTokenLayer::new`], sharing an existing verifier.
    pub fn from_shared(verifier: Arc<Verifier>, audience: impl Into<String>) -> Self {
        Self {
            verifier,
            audience: Arc::from(audience.into()),
        }
    }
}

impl<S> Layer<S> for LocalTokenLayer {
    type Service = LocalTokenService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LocalTokenService {
            inner,
            verifier: self.verifier.clone(),
            audience: self.audience.clone(),
        }
    }
}

/// The service made by [`LocalTokenLayer`].
#[derive(Debug, Clone)]
pub struct LocalTokenService<S> {
    inner: S,
    verifier: Arc<Verifier>,
    audience: Arc<str>,
}

impl<S> LocalTokenService<S> {
    fn check<B>(&self, req: &Request<B>) -> Result<super::LocalClaims, TokenError> {
        let mut values = req.headers().get_all(AUTHORIZATION).iter();
        let value = values.next().ok_or(TokenError::Missing)?;
        // Two credentials are ambiguous: refuse rather than pick one.
        if values.next().is_some() {
            return Err(TokenError::Invalid(
                "more than one authorization header".into(),
            ));
        }
        let value = value
            .to_str()
            .map_err(|_| TokenError::Invalid("authorization header is not text".into()))?;
        let (scheme, token) = value.trim().split_once(' ').ok_or(TokenError::Missing)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(TokenError::Missing);
        }
        self.verifier.verify(token, &self.audience)
    }
}

fn unauthorized<R: From<String>>(err: &TokenError) -> Response<R> {
    let body = serde_json::json!({
        "error": "unauthorized",
        "message": err.to_string(),
    })
    .to_string();
    let mut resp = Response::new(R::from(body));
    *resp.status_mut() = StatusCode::UNAUTHORIZED;
    // RFC 6750: no error code when no credentials were sent at all.
    let challenge = match err {
        TokenError::Missing => HeaderValue::from_static("Bearer"),
        _ => HeaderValue::from_static("Bearer error=\"invalid_token\""),
    };
    resp.headers_mut().insert(WWW_AUTHENTICATE, challenge);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

impl<S, B, R> Service<Request<B>> for LocalTokenService<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    R: From<String>,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        match self.check(&req) {
            Ok(claims) => {
                req.extensions_mut().insert(claims);
                ResponseFuture(Inner::Call(Box::pin(self.inner.call(req))))
            }
            Err(err) => {
                tracing::debug!(audience = %self.audience, error = %err, "local token rejected");
                ResponseFuture(Inner::Reject(Some(Box::new(unauthorized(&err)))))
            }
        }
    }
}

/// The future of [`LocalTokenService`]: the inner call, or a ready `401`.
pub struct ResponseFuture<F, R>(Inner<F, R>);

// Both variants are boxed so the future is `Unpin` without unsafe pin projection.
enum Inner<F, R> {
    Call(Pin<Box<F>>),
    Reject(Option<Box<Response<R>>>),
}

impl<F, R> std::fmt::Debug for ResponseFuture<F, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Inner::Call(_) => f.write_str("ResponseFuture::Call"),
            Inner::Reject(_) => f.write_str("ResponseFuture::Reject"),
        }
    }
}

impl<F, R, E> Future for ResponseFuture<F, R>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = Result<Response<R>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().0 {
            Inner::Call(fut) => fut.as_mut().poll(cx),
            Inner::Reject(resp) => match resp.take() {
                Some(resp) => Poll::Ready(Ok(*resp)),
                // Polled again after completion: stay pending rather than panic.
                None => Poll::Pending,
            },
        }
    }
}
