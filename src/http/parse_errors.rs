//! The answers hyper makes itself to a request it cannot parse — a malformed head (400), a
//! head over its buffer (431) — come with an empty body, before the router sees anything.
//! [`JsonErrors`] wraps a connection's stream and gives those answers the JSON error body
//! every other error has (`{"error": {"code": "invalid_input", "message": …}}`).
//!
//! hyper writes such an answer as one head: `HTTP/1.1 4xx …`, `connection: close`,
//! `content-length: 0`, nothing after it. The router never answers a 4xx without a body (its
//! own errors are made JSON by [`super::error::as_json`]), so a head of that shape is hyper's.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection's stream whose hyper-made 4xx answers get a JSON body.
pub struct JsonErrors<S> {
    inner: S,
    /// The rewritten answer, and how much of it is written: it is written before anything
    /// else (in practice nothing follows it: hyper closes the connection).
    pending: Vec<u8>,
    written: usize,
}

impl<S> JsonErrors<S> {
    pub fn new(inner: S) -> JsonErrors<S> {
        JsonErrors {
            inner,
            pending: Vec::new(),
            written: 0,
        }
    }
}

/// `buf` with a JSON body when it is exactly hyper's answer to a request it could not parse;
/// `None` for anything else.
fn rewrite(buf: &[u8]) -> Option<Vec<u8>> {
    if !buf.starts_with(b"HTTP/1.1 4") || !buf.ends_with(b"\r\n\r\n") {
        return None;
    }
    let head = std::str::from_utf8(buf).ok()?;
    // One head and nothing after it.
    if head.find("\r\n\r\n")? + 4 != head.len() {
        return None;
    }
    let lower = head.to_ascii_lowercase();
    let empty = "\r\ncontent-length: 0\r\n";
    if !lower.contains(empty) || !lower.contains("\r\nconnection: close\r\n") {
        return None;
    }
    let message = match head.get(9..12)? {
        "431" => "the request head (request line and headers) is too large",
        _ => "the request is not valid HTTP/1.1",
    };
    let body =
        serde_json::json!({"error": {"code": "invalid_input", "message": message}}).to_string();
    let at = lower.find(empty)?;
    let mut out = Vec::with_capacity(buf.len() + body.len() + 48);
    out.extend_from_slice(&buf[..at]);
    out.extend_from_slice(b"\r\ncontent-type: application/json");
    out.extend_from_slice(format!("\r\ncontent-length: {}\r\n", body.len()).as_bytes());
    out.extend_from_slice(&buf[at + empty.len()..]);
    out.extend_from_slice(body.as_bytes());
    Some(out)
}

impl<S: AsyncWrite + Unpin> JsonErrors<S> {
    /// Write what is pending; ready once nothing is.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending = Vec::new();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for JsonErrors<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for JsonErrors<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.drain(cx))?;
        match rewrite(buf) {
            Some(answer) => {
                // Taken whole: written now as far as the socket takes it, the rest by the
                // next write or flush (hyper flushes after an answer).
                self.pending = answer;
                if let Poll::Ready(Err(e)) = self.drain(cx) {
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(buf.len()))
            }
            None => Pin::new(&mut self.inner).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.drain(cx))?;
        // hyper's own answer is one buffer (a head without a body); anything else passes
        // as it is, in one call.
        let mut full = bufs.iter().filter(|b| !b.is_empty());
        match (full.next(), full.next()) {
            (Some(b), None) if b.starts_with(b"HTTP/1.1 4") => self.poll_write(cx, &b[..]),
            _ => Pin::new(&mut self.inner).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypers_own_answers_get_a_json_body_and_nothing_else_changes() {
        let hyper = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\
                      date: Mon, 07 Dec 2026 11:07:11 GMT\r\n\r\n";
        let out = String::from_utf8(rewrite(hyper).expect("rewritten")).expect("text");
        let (head, body) = out.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\nconnection: close\r\n"));
        assert!(head.contains("\r\ncontent-type: application/json\r\n"));
        assert!(head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())));
        assert!(head.ends_with("date: Mon, 07 Dec 2026 11:07:11 GMT"));
        let v: serde_json::Value = serde_json::from_str(body).expect("JSON body");
        assert_eq!(v["error"]["code"], "invalid_input");
        let big = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\n\
                    content-length: 0\r\n\r\n";
        let out = String::from_utf8(rewrite(big).expect("rewritten")).expect("text");
        assert!(out.contains("too large"), "{out}");
        // Not hyper's: a body, or a head that keeps the connection, or not an error.
        for other in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}"[..],
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\nmore",
        ] {
            assert!(
                rewrite(other).is_none(),
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }
}
