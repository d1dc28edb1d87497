//! A local HTTP and HTTPS fake-server harness for provider tests: the
//! ground the Azure and GCP fakes are built on.
//!
//! A fake is **a state struct + a route table + this harness**: the state
//! (role assignments, IAM policies, tokens handed out) lives in a struct
//! behind an `Arc`, the route table is an [`axum::Router`] over it, and
//! [`FakeServer`] serves that router and adds what every fake needs:
//!
//! - both schemes at once on `127.0.0.1`, each on its own free port:
//!   [`FakeServer::http_url`] and [`FakeServer::https_url`] (TLS with a
//!   server certificate for `localhost`, `127.0.0.1` and `::1`, signed by a
//!   throwaway CA made once per test process: [`FakeServer::ca_pem`]);
//! - a record of every request with its secrets redacted
//!   ([`FakeServer::requests`], [`RecordedRequest`]);
//! - faults by rule ([`FakeServer::inject`], [`Fault`]): the next N requests
//!   that match a method, a path and optionally any condition on the
//!   request ([`Fault::when`]), after skipping M, get a status and body
//!   (with an optional `Retry-After`), arrive late, or lose their
//!   connection; the routes never see a request a fault answered;
//! - one [`ManualClock`] shared by the test, the routes (through their
//!   state or the [`FakeContext`] extension) and the `Retry-After` dates;
//! - shutdown on drop: the listeners are closed and every connection ended
//!   when [`FakeServer`] is dropped (or [`FakeServer::shutdown`] returns).
//!
//! The server runs on its own thread and runtime, so it serves
//! `#[tokio::test]`s of either flavour, several tests at once, and blocking
//! clients alike. Handlers must not block that thread for long.
//!
//! # Example
//!
//! ```
//! use std::sync::{Arc, Mutex};
//!
//! use axum::extract::{Path, State};
//! use axum::routing::put;
//! use axum::{Json, Router};
//! use jit_core::testing::fake::{Fault, FakeServer};
//! use jit_core::ManualClock;
//!
//! // The state struct.
//! #[derive(Default)]
//! struct Vault {
//!     items: Mutex<Vec<String>>,
//! }
//!
//! // The route table.
//! fn routes(state: Arc<Vault>) -> Router {
//!     Router::new()
//!         .route(
//!             "/items/{name}",
//!             put(|State(v): State<Arc<Vault>>, Path(name): Path<String>| async move {
//!                 v.items.lock().unwrap().push(name.clone());
//!                 Json(serde_json::json!({ "name": name }))
//!             }),
//!         )
//!         .with_state(state)
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let clock = ManualClock::starting_now();
//! let state = Arc::new(Vault::default());
//! // The harness.
//! let server = FakeServer::builder()
//!     .clock(clock.clone())
//!     .start(routes(state.clone()))?;
//!
//! // A reqwest client trusts the fake through the test CA.
//! let client = reqwest::Client::builder()
//!     .add_root_certificate(reqwest::Certificate::from_pem(server.ca_pem().as_bytes())?)
//!     .build()?;
//!
//! // The first PUT is throttled, the second reaches the route.
//! let throttle = server.inject(Fault::respond(429).method("PUT").retry_after_secs(2));
//! let url = format!("{}/items/a", server.https_url());
//! let first = client.put(&url).bearer_auth("secret-token").send().await?;
//! assert_eq!(first.status(), 429);
//! assert_eq!(first.headers()["retry-after"], "2");
//! let second = client.put(&url).bearer_auth("secret-token").send().await?;
//! assert_eq!(second.status(), 200);
//! assert_eq!(throttle.fired(), 1);
//! assert_eq!(*state.items.lock().unwrap(), ["a"]);
//!
//! // Both requests are recorded; the token is not.
//! let seen = server.requests();
//! assert_eq!(seen.len(), 2);
//! assert!(seen[0].faulted && !seen[1].faulted);
//! assert_eq!(seen[1].header("authorization"), Some("Bearer ** redacted **"));
//! # Ok(())
//! # }
//! ```
//!
//! # Making an SDK client trust the fake
//!
//! The fake's certificate chains to the test CA, which no system trusts.
//! There are two ways in; which one a client needs depends on whether it
//! lets you hand it an HTTP client. (Checked against azure_core 1.1,
//! azure_identity 1.0, google-cloud-auth 1.19, all on reqwest 0.13 with
//! rustls and `rustls-platform-verifier`, by running each SDK's token
//! request against a fake: `ClientSecretCredential` through way 1, and
//! through way 2 without a transport; google-cloud-auth's authorized-user
//! credentials through way 2. Without either, the handshake fails.)
//!
//! 1. **Give the SDK a reqwest client that trusts the CA** (preferred:
//!    nothing global). Build it with
//!    `reqwest::Certificate::from_pem(server.ca_pem().as_bytes())` added by
//!    `ClientBuilder::add_root_certificate` (reqwest 0.12) or
//!    `ClientBuilder::tls_certs_merge([cert])` (reqwest 0.13, where
//!    `add_root_certificate` is deprecated); both add to the built-in or
//!    platform roots. Use the reqwest **major version the SDK uses**: its
//!    `HttpClient` impl is for that version's `reqwest::Client` only.
//!    - `azure_core` / `azure_identity`: `azure_core` implements its
//!      `HttpClient` for `reqwest::Client`; set
//!      `ClientOptions { transport: Some(Transport::new(Arc::new(client))), .. }`
//!      on the ARM client's options and on the credential's
//!      (`ClientSecretCredentialOptions { client_options, .. }`). The token
//!      endpoint is `{authority_host}/{tenant}/oauth2/v2.0/token`, with the
//!      authority host from `ClientOptions::cloud =
//!      Some(Arc::new(CloudConfiguration::Custom(..)))` with
//!      `authority_host = server.https_url()` (or the `AZURE_AUTHORITY_HOST`
//!      variable when `cloud` is `None`). azure_identity refuses an
//!      authority host that is not `https`, so the token endpoint must be
//!      served on [`FakeServer::https_url`].
//! 2. **Point the process's root store at the CA** when the SDK builds its
//!    own client (google-cloud-auth calls `reqwest::Client::new()` for its
//!    token requests). reqwest 0.13's default rustls verifier, like
//!    `native-tls`/OpenSSL and reqwest 0.12's `rustls-tls-native-roots`,
//!    reads the platform roots through `rustls-native-certs`, which takes
//!    the `SSL_CERT_FILE` variable **instead of** the system bundle: set it
//!    to [`TestCa::pem_path`] before the SDK builds its client, once per
//!    process (for example in a `std::sync::Once`; every fake chains to the
//!    same per-process CA for this reason). reqwest 0.12's plain
//!    `rustls-tls` (compiled-in webpki roots) ignores the variable.
//!
//! Often no TLS is needed at all: google-cloud-auth's service-account
//! credentials sign their own JWT and call no token endpoint (the fake sees
//! `Authorization: Bearer <JWT>` and can verify it with the test key's
//! public half); its authorized-user credentials take
//! `with_token_uri(..)` and its metadata-server client takes
//! `GCE_METADATA_HOST` (plain `http://{host}`): both can be
//! [`FakeServer::http_url`]. The API endpoints of clients you write
//! yourself (ARM, Resource Manager, IAM Credentials) can be either.

mod fault;
mod record;
mod tls;

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::Router;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tower::ServiceExt;

/// The axum the route tables are written with, so a provider crate's
/// fakes use the same version without naming it in their manifests.
pub use axum;
pub use fault::{Fault, FaultHandle};
pub use record::{RecordedRequest, Scheme, REDACTED, SECRET_FIELDS, SECRET_HEADERS};
pub use tls::{test_ca, TestCa, SERVER_NAMES};

use crate::clock::{Clock, ManualClock};
use fault::{Action, Faults};
use record::Redaction;

/// What a fake's routes may want to know about the server they run in:
/// available to every handler as an `axum::Extension<FakeContext>`, and to
/// [`FakeServerBuilder::start_with`]'s route builder.
#[derive(Debug, Clone)]
pub struct FakeContext {
    http_url: String,
    https_url: String,
    clock: ManualClock,
}

impl FakeContext {
    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn http_url(&self) -> &str {
        &self.http_url
    }

    /// `https://127.0.0.1:PORT` (no trailing slash).
    pub fn https_url(&self) -> &str {
        &self.https_url
    }

    /// The server's clock (shared with the test: cloning shares the time).
    pub fn clock(&self) -> &ManualClock {
        &self.clock
    }

    /// The clock's time.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }
}

/// How a [`FakeServer`] is set up before it starts.
#[derive(Debug, Default)]
#[must_use = "a builder does nothing until `start`"]
pub struct FakeServerBuilder {
    clock: Option<ManualClock>,
    redaction: Redaction,
    name: Option<String>,
}

impl FakeServerBuilder {
    /// The clock the server stamps requests and `Retry-After` dates with,
    /// shared with the routes' state (default: a manual clock starting now).
    pub fn clock(mut self, clock: ManualClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Also redact this header's value in the record (beyond
    /// [`SECRET_HEADERS`]).
    pub fn redact_header(mut self, name: &str) -> Self {
        self.redaction.headers.push(name.to_ascii_lowercase());
        self
    }

    /// Also redact this form or JSON field in recorded bodies (beyond
    /// [`SECRET_FIELDS`]).
    pub fn redact_field(mut self, name: &str) -> Self {
        self.redaction.fields.push(name.to_string());
        self
    }

    /// A name for the server's thread (shown in panics and thread dumps).
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    /// Binds both listeners and serves `router`.
    pub fn start(self, router: Router) -> io::Result<FakeServer> {
        self.start_with(|_| router)
    }

    /// Binds both listeners, then builds the routes knowing the server's
    /// URLs and clock (for answers that name the server itself, such as an
    /// OpenID discovery document or a `nextLink`).
    pub fn start_with(self, routes: impl FnOnce(&FakeContext) -> Router) -> io::Result<FakeServer> {
        let http = std::net::TcpListener::bind("127.0.0.1:0")?;
        let https = std::net::TcpListener::bind("127.0.0.1:0")?;
        http.set_nonblocking(true)?;
        https.set_nonblocking(true)?;
        let ctx = FakeContext {
            http_url: format!("http://{}", http.local_addr()?),
            https_url: format!("https://{}", https.local_addr()?),
            clock: self.clock.unwrap_or_else(ManualClock::starting_now),
        };
        let identity = test_ca().server_identity().map_err(io::Error::other)?;
        let tls = tokio_rustls::TlsAcceptor::from(identity.server_config()?);
        let shared = Arc::new(Shared {
            router: routes(&ctx),
            ctx: ctx.clone(),
            faults: Faults::default(),
            log: Mutex::new(Vec::new()),
            redaction: self.redaction,
            tls_failures: AtomicUsize::new(0),
            next_seq: AtomicUsize::new(0),
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(self.name.unwrap_or_else(|| "fake-server".into()))
            .spawn(move || {
                runtime.block_on(async move {
                    let (Ok(http), Ok(https)) = (
                        tokio::net::TcpListener::from_std(http),
                        tokio::net::TcpListener::from_std(https),
                    ) else {
                        return;
                    };
                    let plain = tokio::spawn(accept(http, None, s.clone()));
                    let secure = tokio::spawn(accept(https, Some(tls), s));
                    // Either the server is dropped (or shut down) or its
                    // handle was lost: stop in both cases.
                    let _ = stopped.await;
                    plain.abort();
                    secure.abort();
                });
                // Dropping the runtime here cancels every connection task.
            })?;
        Ok(FakeServer {
            ctx,
            shared,
            server_cert_pem: identity.cert_pem,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

/// A running fake (see the [module docs](self)). Dropping it shuts it down.
pub struct FakeServer {
    ctx: FakeContext,
    shared: Arc<Shared>,
    server_cert_pem: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for FakeServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeServer")
            .field("http_url", &self.ctx.http_url)
            .field("https_url", &self.ctx.https_url)
            .finish_non_exhaustive()
    }
}

impl FakeServer {
    /// A builder (clock, extra redactions, thread name).
    pub fn builder() -> FakeServerBuilder {
        FakeServerBuilder::default()
    }

    /// Serves `router` with the defaults.
    pub fn start(router: Router) -> io::Result<Self> {
        Self::builder().start(router)
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn http_url(&self) -> &str {
        &self.ctx.http_url
    }

    /// `https://127.0.0.1:PORT` (no trailing slash); `https://localhost:PORT`
    /// works too.
    pub fn https_url(&self) -> &str {
        &self.ctx.https_url
    }

    /// The URL of one of the two listeners.
    pub fn url(&self, scheme: Scheme) -> &str {
        match scheme {
            Scheme::Http => self.http_url(),
            Scheme::Https => self.https_url(),
        }
    }

    /// The PEM of the CA the HTTPS listener's certificate chains to: the
    /// root a client must trust (see the module docs).
    pub fn ca_pem(&self) -> &'static str {
        test_ca().pem()
    }

    /// The HTTPS listener's own certificate, PEM (for clients that pin a
    /// server certificate rather than trust a root).
    pub fn server_cert_pem(&self) -> &str {
        &self.server_cert_pem
    }

    /// The routes' view of the server (URLs and clock).
    pub fn context(&self) -> &FakeContext {
        &self.ctx
    }

    /// The shared clock.
    pub fn clock(&self) -> &ManualClock {
        &self.ctx.clock
    }

    /// Arms a fault; rules are tried in the order given, the first live one
    /// that matches answers.
    pub fn inject(&self, fault: Fault) -> FaultHandle {
        self.shared.faults.add(fault)
    }

    /// Disarms every fault.
    pub fn clear_faults(&self) {
        self.shared.faults.clear();
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock_log().clone()
    }

    /// The requests with this method whose path starts with `path_prefix`.
    pub fn requests_to(&self, method: &str, path_prefix: &str) -> Vec<RecordedRequest> {
        self.shared
            .lock_log()
            .iter()
            .filter(|r| r.method.eq_ignore_ascii_case(method) && r.path.starts_with(path_prefix))
            .cloned()
            .collect()
    }

    /// How many requests arrived.
    pub fn request_count(&self) -> usize {
        self.shared.lock_log().len()
    }

    /// Forgets the requests recorded so far.
    pub fn clear_requests(&self) {
        self.shared.lock_log().clear();
    }

    /// TLS handshakes that failed (a client that does not trust the CA).
    pub fn tls_handshake_failures(&self) -> usize {
        self.shared.tls_failures.load(Ordering::SeqCst)
    }

    /// Stops serving and waits until both ports are closed.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop_now();
    }
}

struct Shared {
    router: Router,
    ctx: FakeContext,
    faults: Faults,
    log: Mutex<Vec<RecordedRequest>>,
    redaction: Redaction,
    tls_failures: AtomicUsize,
    next_seq: AtomicUsize,
}

/// Returned by the service to make hyper close the connection unanswered.
#[derive(Debug)]
struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by an injected fault")
    }
}

impl std::error::Error for DropConnection {}

async fn accept(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        // Reap finished connections so the set does not grow for ever.
        while conns.try_join_next().is_some() {}
        let Ok((stream, _peer)) = listener.accept().await else {
            // Out of file descriptors and the like: try again shortly.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let shared = shared.clone();
        let tls = tls.clone();
        conns.spawn(async move {
            match tls {
                None => serve(TokioIo::new(stream), Scheme::Http, shared).await,
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(stream) => serve(TokioIo::new(stream), Scheme::Https, shared).await,
                    Err(_) => {
                        shared.tls_failures.fetch_add(1, Ordering::SeqCst);
                    }
                },
            }
        });
    }
}

async fn serve<I>(io: TokioIo<I>, scheme: Scheme, shared: Arc<Shared>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        async move { shared.handle(scheme, req).await }
    });
    // An error here is a client gone or a dropped connection: nothing to do.
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .await;
}

impl Shared {
    fn lock_log(&self) -> std::sync::MutexGuard<'_, Vec<RecordedRequest>> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn handle(
        &self,
        scheme: Scheme,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, DropConnection> {
        let (parts, body) = req.into_parts();
        let body: Bytes = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return Err(DropConnection),
        };
        let mut seen = self.redacted(scheme, &parts, &body);
        let fault = self.faults.take(&seen);
        seen.faulted = fault.is_some();
        let seq = self.record(seen);
        if let Some(armed) = fault {
            let fault = &armed.fault;
            if let Some(delay) = fault.delay {
                tokio::time::sleep(delay).await;
            }
            match fault.action {
                Action::Drop => return Err(DropConnection),
                Action::Respond => {
                    let res = self.fault_response(fault);
                    self.record_status(seq, res.status());
                    return Ok(res);
                }
                Action::Pass => {}
            }
        }
        let mut req = Request::from_parts(parts, Body::from(body));
        req.extensions_mut().insert(self.ctx.clone());
        let res = match self.router.clone().oneshot(req).await {
            Ok(res) => res,
            Err(never) => match never {},
        };
        self.record_status(seq, res.status());
        Ok(res)
    }

    fn record_status(&self, seq: usize, status: StatusCode) {
        // Looked up by `seq`: the record may have been cleared meanwhile.
        if let Some(r) = self.lock_log().iter_mut().rev().find(|r| r.seq == seq) {
            r.status = Some(status.as_u16());
        }
    }

    fn fault_response(&self, fault: &Fault) -> Response<Body> {
        let mut res = Response::new(Body::from(fault.body.clone()));
        *res.status_mut() =
            StatusCode::from_u16(fault.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry_after = fault
            .retry_after_value(self.ctx.now())
            .map(|v| ("retry-after".to_string(), v));
        for (k, v) in fault.headers.iter().cloned().chain(retry_after) {
            if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
                res.headers_mut().append(k, v);
            }
        }
        res
    }

    /// The request as it will be recorded (secrets out), not yet numbered.
    fn redacted(
        &self,
        scheme: Scheme,
        parts: &http::request::Parts,
        body: &[u8],
    ) -> RecordedRequest {
        let headers: Vec<(String, String)> = parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    self.redaction.header_value(k.as_str(), v.as_bytes()),
                )
            })
            .collect();
        let content_type = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        RecordedRequest {
            seq: 0,
            at: self.ctx.now(),
            scheme,
            method: parts.method.as_str().to_string(),
            path: parts.uri.path().to_string(),
            query: parts.uri.query().map(str::to_string),
            headers,
            body: self.redaction.body(content_type, body),
            faulted: false,
            status: None,
        }
    }

    /// Records a request; returns its `seq`.
    fn record(&self, mut seen: RecordedRequest) -> usize {
        let mut log = self.lock_log();
        // Under the lock, so `seq` follows the order of the record.
        seen.seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        let seq = seen.seq;
        log.push(seen);
        seq
    }
}

#[cfg(test)]
mod tests;
