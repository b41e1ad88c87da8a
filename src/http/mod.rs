//! The HTTP API: v1 (JSON) and the prototype-compatible routes, on axum.
//!
//! Handlers are thin: they parse and validate input, call the agent (which routes through the
//! ring to a record's owner), and map [`crate::Error`] to a status and a JSON error body.

pub mod error;
pub mod ring;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::agent::Agent;

pub use error::ApiError;

/// Request bodies larger than this are refused with 413.
pub const MAX_BODY: usize = 64 * 1024;

/// The whole router.
pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/healthz", get(ring::healthz))
        .route("/v1/ring", get(ring::ring_node))
        .route("/v1/ring/nodes", get(ring::ring_nodes))
        .route("/v1/locate/{key}", get(ring::locate))
        .route("/v1/agent/leave", post(ring::leave))
        .fallback(error::not_found_route)
        .with_state(agent)
}

/// Serve the API on `listener` until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, agent: Arc<Agent>, shutdown: CancellationToken) {
    let app = router(agent);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = result {
        tracing::error!("HTTP server stopped: {e}");
    }
}
