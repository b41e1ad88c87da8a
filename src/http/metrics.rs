//! `GET /metrics` and the middleware that counts every HTTP request by its matched route
//! template (never the raw path, which would make one series per service name) and status.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::agent::metrics::{Gauges, Metrics};
use crate::agent::Agent;

/// The route label of requests that matched no route (answered by the JSON 404 fallback).
pub const UNMATCHED: &str = "unmatched";

/// Middleware: time the request and count it under its route template and status.
pub async fn track(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().as_str().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| UNMATCHED.to_string(), |p| p.as_str().to_string());
    let response = next.run(req).await;
    metrics.observe_http(
        &method,
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// GET /metrics: the Prometheus text format, version 0.0.4.
pub async fn scrape(State(agent): State<Arc<Agent>>) -> Response {
    let (member, successors) = agent.ring.read(|c| (c.is_member(), c.successors().len()));
    let gauges = Gauges {
        member,
        ring_size: if member { successors + 1 } else { 0 },
        records: agent.registry.record_counts().await.ok(),
    };
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        agent.metrics.render(&gauges),
    )
        .into_response()
}
