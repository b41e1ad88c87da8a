//! The HTTP API: v1 (JSON) and the prototype-compatible routes, on axum.
//!
//! Handlers are thin: they parse and validate input, call the agent (which routes through the
//! ring to a record's owner), and map [`crate::Error`] to a status and a JSON error body.
//!
//! Limits ([`Limits`]): a body cap (413), a header-size cap (431), a deadline to send the
//! request headers, after which the connection is closed (so a slow client cannot hold one), a
//! deadline for the whole request (503 JSON), and a cap on open connections (503 JSON).
//! With `--api-token`, every route but `/healthz` and the web view ([`ui`]) requires the
//! bearer token ([`auth`]).
//! With `--tls-*` the port speaks HTTPS only ([`crate::tls`]); `--http-verify-clients`
//! also requires a client certificate from the CA.

pub mod auth;
pub mod compat;
pub mod error;
pub mod metrics;
pub mod parse_errors;
pub mod ring;
pub mod stream;
pub mod ui;
pub mod v1;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use axum::middleware;
use axum::routing::{get, post, put};
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::agent::Agent;
use crate::tls::Tls;

pub use error::ApiError;

/// Request bodies larger than this are refused with 413.
pub const MAX_BODY: usize = 64 * 1024;

/// The HTTP server's limits; [`Limits::default`] is what the agent uses.
#[derive(Debug, Clone)]
pub struct Limits {
    /// A client must send a request's headers within this, or the connection is closed
    /// (this also closes idle keep-alive connections).
    pub header_read_timeout: Duration,
    /// A request (body included) must be answered within this, or it gets a 503.
    pub request_timeout: Duration,
    /// Connections open at once; more get a 503 and are closed.
    pub max_connections: usize,
    /// The largest request head (request line and headers); larger gets 431.
    pub max_header_bytes: usize,
}

/// Deadline for a client to send its request headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of a whole request: above the registry's routing deadline (8 s) and below the
/// CLI's 10 s, so that clients get a JSON answer rather than a timeout of their own.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(9);
/// HTTP connections open at once: every watcher (a change stream, a blocking query) holds
/// one, so room for the most watchers (`agent::watch::MAX_WATCHERS`) and 1,024 more.
pub const MAX_CONNECTIONS: usize = crate::agent::watch::MAX_WATCHERS + 1024;
/// The largest request head (hyper's minimum buffer is 8 KiB).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// How long a shutdown waits for open requests to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: HEADER_READ_TIMEOUT,
            request_timeout: REQUEST_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
            max_header_bytes: MAX_HEADER_BYTES,
        }
    }
}

/// The whole router, with the default limits.
pub fn router(agent: Arc<Agent>) -> Router {
    router_with(agent, &Limits::default())
}

/// The whole router: routes, body limit, request deadline and (with `--api-token`) the token
/// check, which also covers unknown routes.
pub fn router_with(agent: Arc<Agent>, limits: &Limits) -> Router {
    let token = agent.config.api_token.as_deref().map(auth::ApiToken::new);
    let app = Router::new()
        .route("/healthz", get(ring::healthz))
        .route("/metrics", get(metrics::scrape))
        .route(ui::PAGE_PATH, get(ui::page))
        .route(ui::SCRIPT_PATH, get(ui::script))
        .route(ui::STYLE_PATH, get(ui::style))
        .route("/v1/ring", get(ring::ring_node))
        .route("/v1/ring/nodes", get(ring::ring_nodes))
        .route("/v1/locate/{key}", get(ring::locate))
        .route("/v1/agent/leave", post(ring::leave))
        .route("/v1/services", get(v1::list))
        .route("/v1/services/{service}", get(v1::discover_service))
        .route(
            "/v1/services/{service}/policy",
            get(v1::get_policy).put(v1::put_policy),
        )
        .route("/v1/services/{service}/explain", get(v1::explain))
        .route("/v1/watch/services", get(watch::watch_catalog))
        .route("/v1/watch/services/{service}", get(watch::watch_service))
        .route(
            "/v1/services/{service}/instances/{id}",
            put(v1::register).delete(v1::deregister).get(v1::query),
        )
        .route(
            "/v1/services/{service}/instances/{id}/status",
            put(v1::report),
        )
        .route("/services/register/", post(compat::register))
        .route("/services/registercancel/", post(compat::register_cancel))
        .route("/services/resolution/", get(compat::resolution))
        .route("/services/servicestate", get(compat::service_state))
        .route("/service_status_storage", get(compat::status_storage))
        .fallback(error::not_found_route)
        // Outermost: the request deadline, the body limit, errors the router made itself as
        // JSON, and counting every answer, including 413s, the fallback's 404s and the
        // deadline's 503s.
        .layer(metrics::TrackLayer::new(
            agent.metrics.clone(),
            limits.request_timeout,
        ))
        .with_state(agent);
    match token {
        Some(token) => app.layer(middleware::from_fn_with_state(token, auth::require_token)),
        None => app,
    }
}

/// Serve the API on `listener` with the default limits until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, agent: Arc<Agent>, shutdown: CancellationToken) {
    let limits = Limits::default();
    let tls = agent.tls.clone();
    serve_app_with(listener, router_with(agent, &limits), limits, tls, shutdown).await
}

/// Serve `app` on `listener` under `limits` until `shutdown` is cancelled, then let open
/// requests finish (bounded).
pub async fn serve_app(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    serve_app_with(listener, app, limits, None, shutdown).await
}

/// [`serve_app`], speaking HTTPS with `tls` when given: each connection's handshake uses the
/// material in force when it is accepted and must finish within the header deadline.
pub async fn serve_app_with(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    tls: Option<Arc<Tls>>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let tls_refusals = crate::tls::Refusals::new();
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // hyper answers 431 to a head that does not fit its buffer (with a JSON body:
        // `parse_errors`).
        .max_buf_size(limits.max_header_bytes.max(8192));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("accept failed on the HTTP port: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "HTTP connection refused: {} connections open", limits.max_connections);
            match &tls {
                None => {
                    tokio::spawn(refuse(stream, limits.max_connections));
                }
                // A TLS client reads the 503 only inside TLS (`tls::Refusals`).
                Some(tls) => {
                    let (deadline, cap) = (limits.header_read_timeout, limits.max_connections);
                    tls_refusals.spawn(|| {
                        let accept = tls.http_acceptor().accept(stream);
                        async move {
                            if let Ok(Ok(stream)) = tokio::time::timeout(deadline, accept).await {
                                refuse(stream, cap).await;
                            }
                        }
                    });
                }
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        // One deadline for the whole head: TLS handshake, first bytes, the head itself (on the
        // lean path; hyper times its own read of the head when it gets the connection).
        let deadline = tokio::time::Instant::now() + limits.header_read_timeout;
        let Some(tls) = &tls else {
            let (app, builder, limits) = (app.clone(), builder.clone(), limits.clone());
            let (watcher, stop) = (graceful.watcher(), shutdown.clone());
            tokio::spawn(async move {
                // Each way is boxed so that this task is only as large as the way it took.
                match stream::is_watch(&stream, deadline).await {
                    None => {}
                    Some(true) => {
                        // A change stream ends on `stop`, not through hyper's graceful shutdown.
                        drop(watcher);
                        Box::pin(stream::serve(stream, app, &limits, deadline, stop, permit)).await
                    }
                    Some(false) => {
                        Box::pin(serve_hyper(stream, &builder, app, watcher, "HTTP", peer)).await;
                        drop(permit);
                    }
                }
            });
            continue;
        };
        // HTTPS: a change stream is served without hyper (as over plain HTTP, though written
        // by a task of its own rather than a subscription's fan-out: each connection encrypts
        // its own frames); anything else through hyper.
        let accept = tls.http_acceptor().accept(stream);
        let (app, builder, limits) = (app.clone(), builder.clone(), limits.clone());
        let (watcher, stop) = (graceful.watcher(), shutdown.clone());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout_at(deadline, accept).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::warn!(%peer, "HTTPS connection refused: TLS handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "HTTPS connection closed: no TLS handshake within {:?}", limits.header_read_timeout);
                    return;
                }
            };
            match stream::classify(stream, deadline).await {
                None => {}
                Some(stream::Tls::Watch(stream, start)) => {
                    // As above.
                    drop(watcher);
                    let serve =
                        stream::serve_tls(stream, start, app, &limits, deadline, stop, permit);
                    Box::pin(serve).await
                }
                Some(stream::Tls::Other(stream)) => {
                    Box::pin(serve_hyper(stream, &builder, app, watcher, "HTTPS", peer)).await;
                    drop(permit);
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("HTTP connections still open after {SHUTDOWN_GRACE:?}; closing them");
    }
}

/// Serve one connection with hyper, tracked by the graceful shutdown's `watcher`.
async fn serve_hyper<S>(
    stream: S,
    builder: &http1::Builder,
    app: Router,
    watcher: hyper_util::server::graceful::Watcher,
    what: &str,
    peer: std::net::SocketAddr,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // hyper's own answers to requests it cannot parse get a JSON body, as every error has.
    let stream = TokioIo::new(parse_errors::JsonErrors::new(stream));
    let conn = builder.serve_connection(stream, TowerToHyperService::new(app));
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(%peer, "{what} connection ended: {e}");
    }
}

/// Answer a connection over the cap with a JSON 503 and close it. The request is read first
/// (briefly, bounded) so that closing does not reset the connection under the client.
async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, cap: usize) {
    let mut buf = [0u8; 8192];
    let _ = tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await;
    let body = serde_json::json!({"error": {
        "code": "unavailable",
        "message": format!("too many connections ({cap} open); retry later"),
    }})
    .to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}
