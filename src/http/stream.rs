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
//! Anything else, and any request this path does not take (a body, a malformed head), goes to
//! hyper or gets the answer hyper would give.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use axum::Router;
use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;
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

/// The start of a request this path serves.
const PREFIX: &[u8] = b"GET /v1/watch/";

/// Headers a request head may carry at most.
const MAX_HEADERS: usize = 64;

/// Whether the connection's first request is a change stream, from the bytes already there
/// (without taking them). Waits for the first bytes at most `wait`; `None` when none came.
pub async fn is_watch(stream: &TcpStream, wait: Duration) -> Option<bool> {
    let mut first = [0u8; PREFIX.len()];
    match tokio::time::timeout(wait, stream.peek(&mut first)).await {
        Ok(Ok(n)) if n > 0 => Some(n == PREFIX.len() && first == PREFIX),
        _ => None,
    }
}

/// Serve the connection's one request (a change stream) through `app`, then close it.
///
/// The head's buffer and the router's future are boxed, so that they are freed once done
/// rather than sized into this future, which lives as long as the watcher.
pub async fn serve(
    mut stream: TcpStream,
    app: Router,
    limits: &Limits,
    stop: CancellationToken,
    permit: OwnedSemaphorePermit,
) {
    let request = match Box::pin(read_request(&mut stream, limits)).await {
        Ok(r) => r,
        Err(Some(refused)) => return Box::pin(write_whole(&mut stream, refused.answer())).await,
        Err(None) => return,
    };
    let response = match Box::pin(app.oneshot(request)).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    if !response.status().is_success() {
        return Box::pin(write_whole(&mut stream, response)).await;
    }
    let (mut parts, mut body) = response.into_parts();
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
    // The body ends with the connection: no length, no chunks.
    if stream.write_all(&head).await.is_err() {
        return;
    }
    drop(head);
    let _permit = permit;
    let mut scratch = [0u8; 16];
    loop {
        let frame = tokio::select! {
            _ = stop.cancelled() => break,
            // The client closed (or sent something, which is read and ignored).
            ready = stream.readable() => {
                if ready.is_err() {
                    break;
                }
                match stream.try_read(&mut scratch) {
                    Ok(0) => break,
                    Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => break,
                    _ => continue,
                }
            }
            frame = body.frame() => frame,
        };
        let Some(Ok(frame)) = frame else { break };
        if let Ok(data) = frame.into_data() {
            if stream.write_all(&data).await.is_err() {
                break;
            }
        }
    }
    let _ = stream.shutdown().await;
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
async fn read_request(
    stream: &mut TcpStream,
    limits: &Limits,
) -> Result<Request<Body>, Option<Refused>> {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + limits.header_read_timeout;
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
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
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Partial) => continue,
            Ok(httparse::Status::Complete(len)) => {
                if len < buf.len() {
                    // Bytes after the head: a body or a pipelined request, neither of which a
                    // change stream takes.
                    return Err(Some(Refused(
                        StatusCode::BAD_REQUEST,
                        "a change stream request carries no body".into(),
                    )));
                }
                return build(&parsed).map_err(Some);
            }
            Err(e) => {
                return Err(Some(Refused(
                    StatusCode::BAD_REQUEST,
                    format!("malformed request: {e}"),
                )))
            }
        }
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
        .extension(Lean)
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
            code: "invalid",
            message: self.1,
        }
        .into_response()
    }
}

/// Write a whole (short) answer with its length, and close.
async fn write_whole(stream: &mut TcpStream, response: Response<Body>) {
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
