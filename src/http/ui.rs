//! `GET /ui`: the web view (API.md, "Web view"), one page and its script and style sheet,
//! embedded in the binary (`include_str!`, no build step, no external asset).
//!
//! The page holds no data: it reads the API from the browser (`/v1/ring/nodes` every second,
//! the catalog stream `/v1/watch/services`, the stream of the service shown) with `fetch`, so
//! it can send `Authorization: Bearer TOKEN` on every call (`EventSource` cannot). Its three
//! routes therefore need no token ([`super::auth::OPEN_PATHS`]).
//!
//! Every answer carries a Content-Security-Policy that allows nothing from elsewhere (script,
//! style and connections to this origin only, no inline script, no frames), `nosniff`, and
//! `Cache-Control: no-cache` with an `ETag` (the content's SHA-1): a browser asks again each
//! time and gets a 304 while the binary is the same.

use std::sync::OnceLock;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha1::{Digest, Sha1};

/// The page.
pub const PAGE_PATH: &str = "/ui";
/// Its script.
pub const SCRIPT_PATH: &str = "/ui/app.js";
/// Its style sheet.
pub const STYLE_PATH: &str = "/ui/app.css";

const HTML: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/app.css");

/// Everything the browser may load or connect to: this origin only, no inline script, no
/// plugin, no frame; the SVG drawing is inline markup, not an image load.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                       connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                       form-action 'none'; frame-ancestors 'none'";

/// One embedded file and what it is served as.
struct Asset {
    body: &'static str,
    content_type: &'static str,
}

const ASSETS: [Asset; 3] = [
    Asset {
        body: HTML,
        content_type: "text/html; charset=utf-8",
    },
    Asset {
        body: SCRIPT,
        content_type: "text/javascript; charset=utf-8",
    },
    Asset {
        body: STYLE,
        content_type: "text/css; charset=utf-8",
    },
];

/// The bytes of every embedded asset together (the size contract: under 200 KB).
pub fn embedded_size() -> usize {
    ASSETS.iter().map(|a| a.body.len()).sum()
}

/// The asset's `ETag`: a quoted SHA-1 of its content, computed once.
fn etag(i: usize) -> &'static str {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| format!("\"{}\"", hex::encode(Sha1::digest(a.body.as_bytes()))))
            .collect()
    });
    tags.get(i).map_or("", String::as_str)
}

/// Answer with asset `i`, or 304 when the browser already holds this version.
fn serve(i: usize, headers: &HeaderMap) -> Response {
    let Some(asset) = ASSETS.get(i) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let tag = etag(i);
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.content_type)], asset.body).into_response()
    };
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(tag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// GET /ui
pub async fn page(headers: HeaderMap) -> Response {
    serve(0, &headers)
}

/// GET /ui/app.js
pub async fn script(headers: HeaderMap) -> Response {
    serve(1, &headers)
}

/// GET /ui/app.css
pub async fn style(headers: HeaderMap) -> Response {
    serve(2, &headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_assets_stay_under_200_kb() {
        let size = embedded_size();
        assert!(size > 0);
        assert!(size < 200 * 1000, "the web view's assets are {size} bytes");
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for asset in &ASSETS {
            // The SVG namespace is a name, not an address anything is loaded from.
            let body = asset.body.replace("\"http://www.w3.org/2000/svg\"", "");
            for external in ["http://", "https://", "//cdn", "@import"] {
                assert!(
                    !body.contains(external),
                    "{} holds {external:?}",
                    asset.content_type
                );
            }
        }
        assert!(HTML.contains(&format!("src=\"{SCRIPT_PATH}\"")));
        assert!(HTML.contains(&format!("href=\"{STYLE_PATH}\"")));
        // No inline script: the CSP would refuse it.
        assert!(!HTML.contains("<script>"));
        for handler in ["onclick=", "onload=", "onsubmit=", "oninput=", "onerror="] {
            assert!(!HTML.contains(handler), "inline event handler {handler:?}");
        }
    }

    #[test]
    fn the_page_never_puts_api_text_into_html() {
        assert!(!SCRIPT.contains("innerHTML"));
        assert!(!SCRIPT.contains("outerHTML"));
        assert!(!SCRIPT.contains("insertAdjacentHTML"));
        assert!(!SCRIPT.contains("document.write"));
    }

    #[test]
    fn answers_carry_type_policy_and_validator_and_304_when_fresh() {
        let r = serve(1, &HeaderMap::new());
        assert_eq!(r.status(), StatusCode::OK);
        let h = r.headers();
        assert_eq!(h[header::CONTENT_TYPE], "text/javascript; charset=utf-8");
        assert_eq!(h[header::CONTENT_SECURITY_POLICY], CSP);
        assert_eq!(h[header::CACHE_CONTROL], "no-cache");
        let tag = h[header::ETAG].clone();
        let mut again = HeaderMap::new();
        again.insert(header::IF_NONE_MATCH, tag);
        let r = serve(1, &again);
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(r.headers()[header::CONTENT_SECURITY_POLICY], CSP);
        let mut stale = HeaderMap::new();
        stale.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"old\""));
        assert_eq!(serve(1, &stale).status(), StatusCode::OK);
    }
}
