//! `GET /metrics` and the middleware that counts every HTTP request by its matched route
//! template (never the raw path, which would make one series per service name) and status.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::agent::metrics::{Gauges, Metrics};
use crate::agent::Agent;

/// The route label of requests that matched no route (answered by the JSON 404 fallback).
pub const UNMATCHED: &str = "unmatched";

/// Middleware: answer 503 when a request takes longer than `limit` (a slow body included),
/// hold bodies to [`MAX_BODY`](super::MAX_BODY), and time every answer and count it under its
/// route template and status. One layer for all three: `Router::layer` wraps every route
/// again, so each layer costs each request a clone of the service and a boxed future (the
/// body limit as a layer of its own was 2% of a registration's instructions).
pub async fn track(
    State((metrics, limit)): State<(Arc<Metrics>, Duration)>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    DefaultBodyLimit::max(super::MAX_BODY).apply(&mut req);
    // Both without allocating: a standard method is an enum, a matched path an `Arc<str>`.
    let method = req.method().clone();
    let route = req.extensions().get::<MatchedPath>().cloned();
    let prototype = super::error::is_prototype_path(req.uri().path());
    // A blocking discover waits as long as it asked (bounded); its answer still comes
    // within the usual deadline after that.
    let limit = if super::watch::is_blocking(req.uri().path(), req.uri().query()) {
        limit + super::watch::MAX_WAIT + super::watch::MAX_WAIT / 16
    } else {
        limit
    };
    let response = match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "timeout",
            message: format!(
                "the request did not complete within {}s; retry",
                limit.as_secs_f64()
            ),
        }
        .into_response(),
    };
    let response = super::error::as_json(prototype, &method, response).await;
    metrics.observe_http(
        method.as_str(),
        route.as_ref().map_or(UNMATCHED, |p| p.as_str()),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// GET /metrics: the Prometheus text format, version 0.0.4.
pub async fn scrape(State(agent): State<Arc<Agent>>) -> Response {
    let (member, successors) = agent.ring.read(|c| (c.is_member(), c.successors().len()));
    let (watchers, subscriptions) = agent.hub.counts();
    let gauges = Gauges {
        member,
        ring_size: if member { successors + 1 } else { 0 },
        records: agent.registry.record_counts().await.ok(),
        watchers,
        subscriptions,
        self_preservation: agent.registry.self_preservation(),
        cache: agent.registry.cache_size(),
    };
    let mut text = agent.metrics.render(&gauges);
    if let Some(tls) = &agent.tls {
        tls.render_metrics(&mut text);
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
