//! The lean path for change streams: a connection whose first request is
//! `GET /v1/watch/...` is served without hyper's per-connection machinery.
//!
//! A watcher holds its connection for hours and receives a frame now and then; what hyper keeps
//! for each connection (its read and write buffers, about 8 KiB, and the connection's state)
//! would be most of an idle watcher's cost. Here the request head is read into a buffer that is
//! freed once parsed, the request goes through the same router as every other (the token
//! check, the metrics, the handler), and the answer's body is written to the socket as it comes
//! (`Connection: close`, the body ends with the connection — so no chunked framing either). What
//! stays for an idle watcher is its socket, its stream's state and one task.
//!
//! Over HTTPS the same, once the TLS handshake is made: the first bytes are read (`classify`)
//! rather than peeked, a stream is written by a task of its own through TLS (`serve_tls`), and
//! any other connection goes to hyper with those bytes put back in front (`Prefixed`).
//!
//! Anything else, and any request this path does not take (a body, a malformed head), goes to
//! hyper or gets the answer hyper would give.

use std::sync::{Arc, Mutex};
use tokio::time::Instant;

use axum::body::Body;
use axum::http::{header, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use axum::Router;
use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::{ApiError, Limits};
use crate::agent::watch::Attached;

/// Marks a request that came through this path: its handler may hand the connection over
/// ([`Handoff`]) rather than answer with a body.
#[derive(Debug, Clone, Copy)]
pub struct Lean;

/// A service stream's watcher and the index it was sent, for this path to hand over to the
/// subscription's fan-out task once the answer's head is written.
#[derive(Clone)]
pub struct Handoff(pub Arc<Mutex<Option<(Attached, u64)>>>);

/// A request head as far as it was read, and when all of it must have come: one deadline for
/// the connection's TLS handshake, its first bytes and its head, set when it was accepted.
struct Head {
    buf: Vec<u8>,
    deadline: Instant,
}

/// The start of a request this path serves.
const PREFIX: &[u8] = b"GET /v1/watch/";

/// Headers a request head may carry at most.
const MAX_HEADERS: usize = 64;

/// Whether the connection's first request is a change stream, from the bytes already there
/// (without taking them). Waits for the first bytes until `deadline` (the connection's header
/// deadline); `None` when none came.
pub async fn is_watch(stream: &TcpStream, deadline: Instant) -> Option<bool> {
    let mut first = [0u8; PREFIX.len()];
    match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
        Ok(Ok(n)) if n > 0 => Some(n == PREFIX.len() && first == PREFIX),
        _ => None,
    }
}

/// Serve the connection's one request (a change stream) through `app`, then close it. Its
/// head must have come by `deadline`, the connection's header deadline.
///
/// The head's buffer and the router's future are boxed, so that they are freed once done
/// rather than sized into this future, which lives as long as the watcher.
pub async fn serve(
    mut stream: TcpStream,
    app: Router,
    limits: &Limits,
    deadline: Instant,
    stop: CancellationToken,
    permit: OwnedSemaphorePermit,
) {
    let at = Head {
        buf: Vec::new(),
        deadline,
    };
    let Some((response, _)) = Box::pin(answer(&mut stream, app, limits, at, true)).await else {
        return;
    };
    let (mut parts, body) = response.into_parts();
    let handoff = parts
        .extensions
        .remove::<Handoff>()
        .and_then(|h| crate::agent::registry::guard(&h.0).take());
    let head = head(&parts, "");
    // Nothing of the request and the answer's head is kept while the stream runs.
    drop(parts);
    if let Some((attached, last)) = handoff {
        // A service's stream: from here on its subscription's fan-out task writes to the
        // socket (src/agent/fanout.rs), and this task ends.
        if stream.write_all(&head).await.is_ok() {
            crate::agent::fanout::hand_over(attached, stream, last, permit);
        }
        return;
    }
    Box::pin(stream_body(stream, head, body, stop, permit)).await;
}

/// Write `head`, then `body` as it comes (it ends with the connection: no length, no chunks),
/// until the client closes the connection, the agent stops or the body ends.
async fn stream_body<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    head: Vec<u8>,
    mut body: Body,
    stop: CancellationToken,
    permit: OwnedSemaphorePermit,
) {
    if !send(&mut stream, &head, &stop).await {
        return;
    }
    drop(head);
    let _permit = permit;
    let mut scratch = [0u8; 16];
    loop {
        let frame = tokio::select! {
            _ = stop.cancelled() => break,
            // The client closed (or sent something, which is read and ignored).
            read = stream.read(&mut scratch) => match read {
                Ok(n) if n > 0 => continue,
                _ => break,
            },
            frame = body.frame() => frame,
        };
        let Some(Ok(frame)) = frame else { break };
        if let Ok(data) = frame.into_data() {
            if !send(&mut stream, &data, &stop).await {
                break;
            }
        }
    }
    if !stop.is_cancelled() {
        let _ = stream.shutdown().await;
    }
}

/// Write `data` and flush it, unless the agent stops first (a client that does not read
/// must not keep the task, and what it holds of the agent, past the agent's end); whether
/// it was written.
async fn send<S: AsyncWrite + Unpin>(
    stream: &mut S,
    data: &[u8],
    stop: &CancellationToken,
) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        written = async {
            stream.write_all(data).await?;
            stream.flush().await
        } => written.is_ok(),
    }
}

/// The connection's one request (its first bytes read already, and the deadline of its head,
/// in `at`) through `app`: the answer when it is a stream to write, and whether it is a
/// service's stream (not the catalog's); `None` when it was answered whole (a refusal, an
/// error) or the client went away. `lean`: the handler may hand the connection over
/// ([`Handoff`]; plain connections only).
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    app: Router,
    limits: &Limits,
    at: Head,
    lean: bool,
) -> Option<(Response<Body>, bool)> {
    let mut request = match read_request(stream, limits, at).await {
        Ok(r) => r,
        Err(Some(refused)) => {
            write_whole(stream, refused.answer()).await;
            return None;
        }
        Err(None) => return None,
    };
    if lean {
        request.extensions_mut().insert(Lean);
    }
    let service = request
        .uri()
        .path()
        .strip_prefix("/v1/watch/services/")
        .is_some_and(|rest| !rest.is_empty());
    let response = match app.oneshot(request).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    if !response.status().is_success() {
        write_whole(stream, response).await;
        return None;
    }
    Some((response, service))
}

/// An answer's status line and headers, `Connection: close` and `extra` (header lines) added,
/// its own framing headers left out.
fn head(parts: &axum::http::response::Parts, extra: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        parts.status.as_u16(),
        parts.status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (name, value) in &parts.headers {
        if name == header::CONNECTION
            || name == header::TRANSFER_ENCODING
            || name == header::CONTENT_LENGTH
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(extra.as_bytes());
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out
}

/// Read and parse the request head. `Err(Some(answer))`: answer that and close;
/// `Err(None)`: just close (the client went away or was too slow, as hyper would).
async fn read_request<S: AsyncRead + Unpin>(
    stream: &mut S,
    limits: &Limits,
    at: Head,
) -> Result<Request<Body>, Option<Refused>> {
    let Head { mut buf, deadline } = at;
    buf.reserve(1024);
    loop {
        if let Some(done) = parse_head(&buf) {
            return done;
        }
        if buf.len() >= limits.max_header_bytes {
            return Err(Some(Refused(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "the request head is too large".into(),
            )));
        }
        let mut chunk = [0u8; 1024];
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return Err(None),
        };
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The request in `buf` once its head is complete (`None`: not yet).
fn parse_head(buf: &[u8]) -> Option<Result<Request<Body>, Option<Refused>>> {
    if buf.is_empty() {
        return None;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(buf) {
        Ok(httparse::Status::Partial) => None,
        // Bytes after the head: a body or a pipelined request, neither of which a change
        // stream takes.
        Ok(httparse::Status::Complete(len)) if len < buf.len() => Some(Err(Some(Refused(
            StatusCode::BAD_REQUEST,
            "a change stream request carries no body".into(),
        )))),
        Ok(httparse::Status::Complete(_)) => Some(build(&parsed).map_err(Some)),
        Err(e) => Some(Err(Some(Refused(
            StatusCode::BAD_REQUEST,
            format!("malformed request: {e}"),
        )))),
    }
}

/// The parsed head as a request for the router.
fn build(parsed: &httparse::Request<'_, '_>) -> Result<Request<Body>, Refused> {
    let bad = |m: &str| Refused(StatusCode::BAD_REQUEST, m.to_string());
    let mut request = Request::builder()
        .method(Method::GET)
        .uri(parsed.path.unwrap_or("/"));
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| bad("bad header name"))?;
        if name == header::CONTENT_LENGTH && h.value.trim_ascii() != b"0"
            || name == header::TRANSFER_ENCODING
        {
            return Err(bad("a change stream request carries no body"));
        }
        let value = HeaderValue::from_bytes(h.value).map_err(|_| bad("bad header value"))?;
        request = request.header(name, value);
    }
    request
        .body(Body::empty())
        .map_err(|_| bad("malformed request target"))
}

/// A request refused before it reached the router: its status and why.
struct Refused(StatusCode, String);

impl Refused {
    /// The JSON error answer, as the router gives them.
    fn answer(self) -> Response<Body> {
        use axum::response::IntoResponse;
        ApiError {
            status: self.0,
            code: "invalid_input",
            message: self.1,
        }
        .into_response()
    }
}

/// Write a whole (short) answer with its length, and close.
async fn write_whole<S: AsyncWrite + Unpin>(stream: &mut S, response: Response<Body>) {
    let (parts, body) = response.into_parts();
    let body: Bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let mut out = head(&parts, &format!("content-length: {}\r\n", body.len()));
    out.extend_from_slice(&body);
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
}

/// An HTTPS connection, its TLS handshake made: a change stream is served here, without
/// hyper (its connection buffers would be most of an idle watcher's cost, as over plain
/// HTTP); anything else goes to hyper with the bytes already read put back in front.
pub enum Tls<S> {
    /// The connection's first request is a change stream; served by [`serve_tls`].
    Watch(S, Vec<u8>),
    /// Anything else, for hyper.
    Other(Prefixed<S>),
}

/// Read the start of the connection's first request, until `deadline`: whether it is a change
/// stream. `None`: nothing came, or the connection failed.
pub async fn classify<S: AsyncRead + Unpin>(mut stream: S, deadline: Instant) -> Option<Tls<S>> {
    let mut buf = Vec::with_capacity(PREFIX.len());
    while buf.len() < PREFIX.len() && PREFIX.starts_with(&buf) {
        let mut chunk = [0u8; 64];
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return None,
        };
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(if buf.starts_with(PREFIX) {
        Tls::Watch(stream, buf)
    } else {
        Tls::Other(Prefixed {
            head: Bytes::from(buf),
            inner: stream,
        })
    })
}

/// Serve an HTTPS change stream (its first bytes read already): the request through `app`,
/// then the answer's body written as it comes (a service's stream by a task on the fan-out
/// runtime), and the connection closed when the client closes it, the agent stops or the
/// stream ends.
pub async fn serve_tls<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    mut stream: S,
    start: Vec<u8>,
    app: Router,
    limits: &Limits,
    deadline: Instant,
    stop: CancellationToken,
    permit: OwnedSemaphorePermit,
) {
    let at = Head {
        buf: start,
        deadline,
    };
    let Some((response, service)) = Box::pin(answer(&mut stream, app, limits, at, false)).await
    else {
        return;
    };
    let (parts, body) = response.into_parts();
    let head = head(&parts, "");
    drop(parts);
    if service {
        // Written on the fan-out runtime, as plain services' streams are: requests are not
        // queued behind the encryption of every event for every watcher. (The catalog's
        // stream lists the ring every second, RPCs and store reads that belong with the
        // requests'.)
        crate::agent::fanout::spawn(stream_body(stream, head, body, stop, permit));
    } else {
        Box::pin(stream_body(stream, head, body, stop, permit)).await;
    }
}

/// A connection with bytes already read from it put back in front.
pub struct Prefixed<S> {
    head: Bytes,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.head.is_empty() {
            let n = self.head.len().min(buf.remaining());
            let part = self.head.split_to(n);
            buf.put_slice(&part);
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
