//! The HTTP API: v1 (JSON) and the prototype-compatible routes, on axum.
//!
//! Handlers are thin: they parse and validate input, call the agent (which routes through the
//! ring to a record's owner), and map [`crate::Error`] to a status and a JSON error body.

pub mod compat;
pub mod error;
pub mod metrics;
pub mod ring;
pub mod v1;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
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
        .route("/metrics", get(metrics::scrape))
        .route("/v1/ring", get(ring::ring_node))
        .route("/v1/ring/nodes", get(ring::ring_nodes))
        .route("/v1/locate/{key}", get(ring::locate))
        .route("/v1/agent/leave", post(ring::leave))
        .route("/v1/services", get(v1::list))
        .route("/v1/services/{service}", get(v1::discover_service))
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
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .fallback(error::not_found_route)
        // Outermost: counts every answer, including 413s and the fallback's 404s.
        .layer(axum::middleware::from_fn_with_state(
            agent.metrics.clone(),
            metrics::track,
        ))
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
