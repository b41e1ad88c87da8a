//! One mapping from errors to HTTP answers: `{"error": {"code", "message"}}`.

use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::Error;

/// An error as the HTTP API answers it.
#[derive(Debug)]
pub struct ApiError {
    /// The status code.
    pub status: StatusCode,
    /// Machine-readable code.
    pub code: &'static str,
    /// What went wrong, for people.
    pub message: String,
}

impl ApiError {
    /// A 413 for a body over the limit.
    pub fn too_large(limit: usize) -> ApiError {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "payload_too_large",
            message: format!("request body exceeds {limit} bytes"),
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        if let Error::Internal(msg) = &e {
            tracing::error!("internal error: {msg}");
        }
        let message = match &e {
            Error::Internal(_) => "internal error; see the agent's log".to_string(),
            other => other.to_string(),
        };
        ApiError {
            status: StatusCode::from_u16(e.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code: e.code(),
            message,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

/// Unknown routes answer a JSON 404 too.
pub async fn not_found_route(uri: axum::http::Uri) -> ApiError {
    ApiError::from(Error::not_found(format!("no such route: {}", uri.path())))
}

/// Whether `path` is one of the prototype's routes, whose answers (errors included) keep the
/// prototype's recorded form (PROTOTYPE.md), not the JSON of the API.
pub fn is_prototype_path(path: &str) -> bool {
    path.starts_with("/services/") || path.starts_with("/service_status_storage")
}

/// Most of an error body that the router made itself that is kept as the message.
const ROUTER_MESSAGE_MAX: usize = 4096;

/// The answers axum makes itself — a method the route does not take (405, with `Allow`), a
/// path segment that does not decode (400, as text) — as the API's JSON error, like every
/// other error; the prototype's routes keep their own forms. Called on every answer by the
/// outermost layer ([`super::metrics::TrackLayer`]): anything else passes untouched, at the cost of
/// a status check.
pub async fn as_json(path_is_prototype: bool, method: &Method, response: Response) -> Response {
    let status = response.status();
    if path_is_prototype || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, ROUTER_MESSAGE_MAX)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = match (text.is_empty(), status) {
        (false, _) => text,
        (true, StatusCode::METHOD_NOT_ALLOWED) => {
            format!("{method} is not a method of this route (its Allow header lists them)")
        }
        (true, s) => s.canonical_reason().unwrap_or("error").to_lowercase(),
    };
    let code = match status {
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::TOO_MANY_REQUESTS => "too_many",
        s if s.is_client_error() => "invalid_input",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        _ => "internal",
    };
    // The same answer as any other error, keeping the router's other headers (`Allow`).
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::CONTENT_TYPE);
    let mut answer = ApiError {
        status,
        code,
        message,
    }
    .into_response();
    answer.headers_mut().extend(parts.headers);
    answer
}
