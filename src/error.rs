//! The library's one error type and its mapping to HTTP statuses and exit codes.

use serde::{Deserialize, Serialize};

/// What went wrong, in the few categories callers act on.
///
/// The type is serializable so that a failure at a record's owner travels back over ring RPC as
/// a value and is answered to the HTTP client exactly as if it had happened locally.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum Error {
    /// The caller sent something invalid; the message says exactly what.
    #[error("{0}")]
    InvalidInput(String),
    /// The named thing (service, instance, key) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A store, peer or the ring is unavailable right now; retrying later may succeed.
    #[error("{0}")]
    Unavailable(String),
    /// The request could not reach the owner of its record yet: ownership is moving (a join,
    /// a leave, a crash being repaired) or the owner does not answer. Routing retries these;
    /// answered 503 like `Unavailable` once the retries are spent.
    #[error("{0}")]
    Routing(String),
    /// A bug or an unexpected condition; details are logged where it happened.
    #[error("{0}")]
    Internal(String),
    /// This agent is at a limit (watchers); another agent may take the request (HTTP 429).
    #[error("{0}")]
    TooMany(String),
}

impl Error {
    /// Whether the same request may succeed when retried later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable(_) | Error::Routing(_))
    }

    /// The HTTP status this error is answered with.
    pub fn http_status(&self) -> u16 {
        match self {
            Error::InvalidInput(_) => 400,
            Error::NotFound(_) => 404,
            Error::Unavailable(_) | Error::Routing(_) => 503,
            Error::Internal(_) => 500,
            Error::TooMany(_) => 429,
        }
    }

    /// The machine-readable code of the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidInput(_) => "invalid_input",
            Error::NotFound(_) => "not_found",
            Error::Unavailable(_) | Error::Routing(_) => "unavailable",
            Error::Internal(_) => "internal",
            Error::TooMany(_) => "too_many",
        }
    }

    /// Shorthand constructors.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidInput(msg.into())
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        Error::NotFound(msg.into())
    }
    pub fn unavailable(msg: impl Into<String>) -> Self {
        Error::Unavailable(msg.into())
    }
    pub fn routing(msg: impl Into<String>) -> Self {
        Error::Routing(msg.into())
    }
    pub fn internal(msg: impl Into<String>) -> Self {
        Error::Internal(msg.into())
    }
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
