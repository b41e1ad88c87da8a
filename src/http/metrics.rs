//! `GET /metrics` and the middleware that counts every HTTP request by its matched route
//! template (never the raw path, which would make one series per service name) and status.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use tower::{Layer, Service};

use super::error::ApiError;
use crate::agent::metrics::{Gauges, Metrics};
use crate::agent::Agent;

/// The route label of requests that matched no route (answered by the JSON 404 fallback).
pub const UNMATCHED: &str = "unmatched";

/// The middleware on every route: answer 503 when a request takes longer than its limit (a
/// slow body included), hold bodies to [`MAX_BODY`](super::MAX_BODY), make the router's own
/// errors JSON, and time every answer and count it under its route template and status.
///
/// One layer for all of it, written as a plain [`Service`] rather than with
/// `middleware::from_fn`: `Router::layer` wraps every route again, so each layer costs each
/// request a boxed route future, and `from_fn` adds a boxed copy of the route it wraps and a
/// boxed future of its own. (The body limit as a layer of its own was 2% of a registration's
/// instructions, `from_fn` another 2%.)
#[derive(Clone)]
pub struct TrackLayer {
    metrics: Arc<Metrics>,
    limit: Duration,
}

impl TrackLayer {
    /// Count into `metrics`; answer 503 after `limit` (a blocking discover gets its wait on top).
    pub fn new(metrics: Arc<Metrics>, limit: Duration) -> Self {
        TrackLayer { metrics, limit }
    }
}

impl<S> Layer<S> for TrackLayer {
    type Service = Track<S>;

    fn layer(&self, inner: S) -> Track<S> {
        Track {
            inner,
            layer: self.clone(),
        }
    }
}

/// A route (or the fallback) under [`TrackLayer`].
#[derive(Clone)]
pub struct Track<S> {
    inner: S,
    layer: TrackLayer,
}

impl<S> Service<Request> for Track<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let started = Instant::now();
        DefaultBodyLimit::max(super::MAX_BODY).apply(&mut req);
        // Both without allocating: a standard method is an enum, a matched path an `Arc<str>`.
        let method = req.method().clone();
        let route = req.extensions().get::<MatchedPath>().cloned();
        let prototype = super::error::is_prototype_path(req.uri().path());
        // A blocking discover waits as long as it asked (bounded); its answer still comes
        // within the usual deadline after that.
        let limit = if super::watch::is_blocking(req.uri().path(), req.uri().query()) {
            self.layer.limit + super::watch::MAX_WAIT + super::watch::MAX_WAIT / 16
        } else {
            self.layer.limit
        };
        let answer = self.inner.call(req);
        let metrics = self.layer.metrics.clone();
        Box::pin(async move {
            let response = match tokio::time::timeout(limit, answer).await {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
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
            Ok(response)
        })
    }
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
