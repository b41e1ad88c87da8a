//! `--api-token`: every route but `/healthz` and the web view's assets (which hold no data)
//! requires `Authorization: Bearer TOKEN`.
//!
//! The check is an axum middleware over the whole router (the prototype-compatible routes and
//! unknown routes included), so no handler can forget it. Tokens are compared in constant time:
//! both sides are reduced to an HMAC-SHA256 with the token as key, and the two tags are compared
//! with `Mac::verify_slice`, so neither the content nor the length of the expected token leaks
//! through timing. Neither the expected token nor the one received ever appears in an answer or
//! a log line.

use std::fmt;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::ApiError;

type HmacSha256 = Hmac<Sha256>;

/// The routes that answer without a token: `/healthz` (load balancers and supervisors probe
/// it) and the web view's page, script and style sheet, which hold no data: the page asks for
/// the token and sends it on every API call it makes.
pub const OPEN_PATHS: [&str; 4] = [
    "/healthz",
    super::ui::PAGE_PATH,
    super::ui::SCRIPT_PATH,
    super::ui::STYLE_PATH,
];

const CONTEXT: &[u8] = b"chordctl api token";

/// The API token the agent requires. Its `Debug` never shows it.
#[derive(Clone)]
pub struct ApiToken {
    /// HMAC(token, CONTEXT): what a presented token must reproduce.
    expected: Arc<[u8]>,
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(<masked>)")
    }
}

fn tag(token: &[u8]) -> Option<HmacSha256> {
    let mut m = HmacSha256::new_from_slice(token).ok()?;
    m.update(CONTEXT);
    Some(m)
}

impl ApiToken {
    /// The token as given by `--api-token` / `CHORDCTL_API_TOKEN`.
    pub fn new(token: &str) -> ApiToken {
        let expected = tag(token.as_bytes())
            .map(|m| m.finalize().into_bytes().to_vec())
            .unwrap_or_default();
        ApiToken {
            expected: Arc::from(expected),
        }
    }

    /// Whether `presented` is the token, compared in constant time.
    pub fn matches(&self, presented: &[u8]) -> bool {
        match tag(presented) {
            Some(m) => !self.expected.is_empty() && m.verify_slice(&self.expected).is_ok(),
            None => false,
        }
    }
}

/// The token of an `Authorization: Bearer TOKEN` header, if the request has one.
fn bearer(req: &Request) -> Option<&[u8]> {
    let value = req.headers().get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = value.split_at(value.iter().position(|&b| b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

fn unauthorized(message: &str) -> Response {
    let mut response = ApiError {
        status: StatusCode::UNAUTHORIZED,
        code: "unauthorized",
        message: message.to_string(),
    }
    .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"chordctl\""),
    );
    response
}

/// The middleware: pass [`OPEN_PATHS`] and requests with the right token, answer 401
/// otherwise.
pub async fn require_token(State(token): State<ApiToken>, req: Request, next: Next) -> Response {
    if OPEN_PATHS.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    match bearer(&req) {
        Some(presented) if token.matches(presented) => next.run(req).await,
        Some(_) => {
            tracing::warn!(
                path = req.uri().path(),
                "HTTP request with a wrong API token"
            );
            unauthorized("the API token is wrong")
        }
        None => unauthorized(
            "this agent requires an API token: send the header 'Authorization: Bearer TOKEN' \
             (chordctl: --token or CHORDCTL_TOKEN)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token_matches() {
        let t = ApiToken::new("s3cret-token");
        assert!(t.matches(b"s3cret-token"));
        for wrong in [
            &b""[..],
            b"s3cret-toke",
            b"s3cret-token ",
            b"S3cret-token",
            b"x",
        ] {
            assert!(!t.matches(wrong), "{wrong:?}");
        }
        assert_eq!(format!("{t:?}"), "ApiToken(<masked>)");
    }

    #[test]
    fn bearer_header_parsing() {
        let req = |v: &str| {
            Request::builder()
                .header(header::AUTHORIZATION, v)
                .body(axum::body::Body::empty())
                .unwrap_or_else(|e| panic!("{e}"))
        };
        assert_eq!(bearer(&req("Bearer abc")), Some(&b"abc"[..]));
        assert_eq!(bearer(&req("bearer   abc ")), Some(&b"abc"[..]));
        assert_eq!(bearer(&req("Basic abc")), None);
        assert_eq!(bearer(&req("Bearer")), None);
        assert_eq!(bearer(&req("Bearer ")), None);
    }
}
