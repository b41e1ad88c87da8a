//! Watching over HTTP (API.md, "Watching for changes"): blocking discover
//! (`?index=N&wait=D`), and the change streams of one service and of the catalog as
//! Server-Sent Events.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::{Bytes, BytesMut};
use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use super::stream::{Handoff, Lean};
use super::ApiError;
use crate::agent::watch::{sse_frame, Attached, Event};
use crate::agent::Agent;
use crate::registry::{health, validate_service, Instance, Policy, ServiceSummary};
use crate::Error;

/// A bookmark is sent after this long without an event.
pub use crate::agent::fanout::BOOKMARK_EVERY;

/// A blocking query's wait when none is given, and the longest one.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);
pub const MAX_WAIT: Duration = Duration::from_secs(600);

/// How often the catalog stream looks at the ring-wide service list.
const CATALOG_EVERY: Duration = Duration::from_secs(1);

/// `?index=N&wait=D` of a blocking discover: the index and the wait (randomized by up to a
/// sixteenth, so that many watchers do not all come back at once); `None` without `index`.
pub fn blocking(params: &HashMap<String, String>) -> Result<Option<(u64, Duration)>, ApiError> {
    let Some(index) = params.get("index") else {
        return Ok(None);
    };
    let index: u64 = index
        .parse()
        .map_err(|_| Error::invalid(format!("index must be a whole number, got {index:?}")))?;
    let wait = match params.get("wait") {
        None => DEFAULT_WAIT,
        Some(w) => Duration::from_secs(crate::registry::parse_duration(w)?).min(MAX_WAIT),
    };
    let jitter = wait.as_millis() as u64 / 16;
    let jitter = if jitter > 0 {
        rand::thread_rng().gen_range(0..=jitter)
    } else {
        0
    };
    Ok(Some((index, wait + Duration::from_millis(jitter))))
}

/// Whether a request is a blocking discover (its deadline is its wait, not the usual one).
pub fn is_blocking(path: &str, query: Option<&str>) -> bool {
    path.starts_with("/v1/services/")
        && query.is_some_and(|q| q.split('&').any(|kv| kv.starts_with("index=")))
}

/// Wait as a blocking discover asks: until the service's index passes `index` with a change
/// that the filters show, or until `wait` ends.
pub async fn block(
    agent: &Agent,
    service: &str,
    index: u64,
    wait: Duration,
    healthy: bool,
    tag: Option<&str>,
) -> Result<(), ApiError> {
    let tag = tag.map(str::to_string);
    // The panic threshold, as of the start of the wait (only a healthy-only query needs it).
    let policy = if healthy {
        agent
            .registry
            .policy(service)
            .await
            .ok()
            .flatten()
            .unwrap_or_default()
    } else {
        Policy::default()
    };
    let visible = move |all: &[Arc<Instance>]| -> Value {
        let all: Vec<&Instance> = all.iter().map(Arc::as_ref).collect();
        let filters = health::Filters {
            healthy,
            tag: tag.as_deref(),
        };
        let (shown, panic) = health::visible(&all, &filters, &policy);
        serde_json::to_value((shown, panic)).unwrap_or(Value::Null)
    };
    agent
        .hub
        .wait_past(service, index, wait, visible)
        .await
        .map_err(ApiError::from)
}

/// The index a watcher resumes from: `Last-Event-ID`, else `?since=`.
fn resume_index(
    headers: &HeaderMap,
    params: &HashMap<String, String>,
) -> Result<Option<u64>, ApiError> {
    let given = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| params.get("since").cloned());
    match given {
        None => Ok(None),
        Some(v) if v.trim().is_empty() => Ok(None),
        Some(v) => v.trim().parse().map(Some).map_err(|_| {
            Error::invalid(format!(
                "Last-Event-ID / since must be an index (a whole number), got {v:?}"
            ))
            .into()
        }),
    }
}

fn sse(name: &str, index: u64, data: &Value) -> Bytes {
    sse_frame(name, index, &data.to_string())
}

/// Frames sent in one write at most, when a watcher has several waiting.
const BATCH: usize = 64;

/// An SSE answer: `body`'s frames as they come. A bookmark every [`BOOKMARK_EVERY`] of
/// silence keeps the connection visibly alive, so no separate keep-alive comment is sent.
fn sse_response<S>(body: S) -> Response
where
    S: futures::Stream<Item = Result<Bytes, Infallible>> + Send + 'static,
{
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

/// One watcher's stream.
struct Watching {
    attached: Attached,
    queue: VecDeque<Arc<Event>>,
    /// The index this watcher was last sent (a reset snapshot sets it to its own index).
    last: u64,
    agent: Arc<Agent>,
    service: String,
}

impl Watching {
    /// The frame of the next event in the queue that is still to be sent.
    fn pop(&mut self) -> Option<Bytes> {
        while let Some(ev) = self.queue.pop_front() {
            if let Some(frame) = ev.frame_after(&mut self.last, &self.service) {
                self.agent.metrics.watch_sent(1);
                return Some(frame);
            }
        }
        None
    }

    /// Take what the channel holds already, without waiting.
    fn take_ready(&mut self) {
        while self.queue.len() < BATCH {
            match self.attached.rx.try_recv() {
                Ok(ev) => self.queue.push_back(ev),
                Err(TryRecvError::Lagged(_)) => return self.fell_behind(),
                Err(_) => return,
            }
        }
    }

    /// What it missed is gone from the buffer: the whole state instead.
    fn fell_behind(&mut self) {
        self.queue.clear();
        let ev = self.attached.reset();
        self.queue.push_back(ev);
    }

    /// The next frames: every event that is ready (up to [`BATCH`]) in one piece, so that a
    /// watcher that fell a little behind catches up in one write.
    async fn next(mut self) -> Option<(Result<Bytes, Infallible>, Watching)> {
        loop {
            self.take_ready();
            if let Some(first) = self.pop() {
                let Some(second) = self.pop() else {
                    return Some((Ok(first), self));
                };
                let mut out = BytesMut::from(&first[..]);
                out.extend_from_slice(&second);
                while let Some(more) = self.pop() {
                    out.extend_from_slice(&more);
                }
                return Some((Ok(out.freeze()), self));
            }
            let stop = self.agent.stop_token();
            tokio::select! {
                _ = stop.cancelled() => return None,
                got = tokio::time::timeout(BOOKMARK_EVERY, self.attached.rx.recv()) => match got {
                    Ok(Ok(ev)) => self.queue.push_back(ev),
                    Ok(Err(RecvError::Lagged(_))) => self.fell_behind(),
                    Ok(Err(RecvError::Closed)) => return None,
                    Err(_) => {
                        let data = json!({"service": self.service, "index": self.last});
                        return Some((Ok(sse("bookmark", self.last, &data)), self));
                    }
                },
            }
        }
    }
}

/// GET /v1/watch/services/{service}
pub async fn watch_service(
    State(agent): State<Arc<Agent>>,
    Path(service): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    lean: Option<Extension<Lean>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    validate_service(&service)?;
    let since = resume_index(&headers, &params)?;
    let mut attached = agent
        .hub
        .attach(&service, since, crate::agent::watch::CATCH_UP)
        .await?;
    if lean.is_some() {
        // The lean path writes the head and hands the socket to the subscription's fan-out
        // task, which sends `attached`'s first events.
        let last = since.unwrap_or(0);
        let handoff = Handoff(Arc::new(Mutex::new(Some((attached, last)))));
        let mut response = sse_response(futures::stream::empty());
        response.extensions_mut().insert(handoff);
        return Ok(response);
    }
    let queue: VecDeque<Arc<Event>> = std::mem::take(&mut attached.first).into();
    let state = Watching {
        attached,
        queue,
        last: since.unwrap_or(0),
        agent: agent.clone(),
        service,
    };
    Ok(sse_response(futures::stream::unfold(state, Watching::next)))
}

/// The catalog as the catalog stream shows it: each service's summary by name.
type Catalog = BTreeMap<String, ServiceSummary>;

/// The catalog stream's state: the last list seen, and this agent's own index over it.
struct CatalogWatch {
    agent: Arc<Agent>,
    seen: Option<Catalog>,
    index: u64,
    /// The client resumed: its first snapshot replaces what it had.
    resumed: bool,
    queue: VecDeque<Bytes>,
    quiet: Duration,
}

impl CatalogWatch {
    async fn next(mut self) -> Option<(Result<Bytes, Infallible>, CatalogWatch)> {
        loop {
            if let Some(ev) = self.queue.pop_front() {
                self.agent.metrics.watch_sent(1);
                return Some((Ok(ev), self));
            }
            if self.seen.is_some() {
                let stop = self.agent.stop_token();
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = tokio::time::sleep(CATALOG_EVERY) => {}
                }
                self.quiet += CATALOG_EVERY;
            }
            let Ok(list) = self.agent.registry.list().await else {
                continue;
            };
            let now: Catalog = list.into_iter().map(|s| (s.service.clone(), s)).collect();
            match self.seen.take() {
                None => {
                    self.index += 1;
                    let data = json!({"index": self.index, "services": now.values().collect::<Vec<_>>(), "reset": self.resumed});
                    self.queue.push_back(sse("snapshot", self.index, &data));
                }
                Some(before) => {
                    for (name, summary) in &now {
                        let op = match before.get(name) {
                            None => "register",
                            Some(old) if old != summary => "update",
                            Some(_) => continue,
                        };
                        self.index += 1;
                        let data = json!({"service": name, "index": self.index, "op": op, "summary": summary});
                        self.queue.push_back(sse("change", self.index, &data));
                    }
                    for name in before.keys().filter(|n| !now.contains_key(*n)) {
                        self.index += 1;
                        let data = json!({"service": name, "index": self.index, "op": "deregister", "summary": {"service": name}});
                        self.queue.push_back(sse("change", self.index, &data));
                    }
                }
            }
            self.seen = Some(now);
            if !self.queue.is_empty() {
                self.quiet = Duration::ZERO;
            } else if self.quiet >= BOOKMARK_EVERY {
                self.quiet = Duration::ZERO;
                let data = json!({"index": self.index});
                self.queue.push_back(sse("bookmark", self.index, &data));
            }
        }
    }
}

/// GET /v1/watch/services: services appearing, disappearing and changing counts, from this
/// agent's view of the ring-wide list (looked at every second). Its index is the stream's
/// own, kept by no copy, so nothing can be replayed: a resume (`Last-Event-ID` or `?since=`)
/// starts with a snapshot marked `reset`, and the index goes on above the one resumed from.
pub async fn watch_catalog(
    State(agent): State<Arc<Agent>>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let since = resume_index(&headers, &params)?;
    let state = CatalogWatch {
        agent,
        seen: None,
        index: since.unwrap_or(0),
        resumed: since.is_some(),
        queue: VecDeque::new(),
        quiet: Duration::ZERO,
    };
    Ok(sse_response(futures::stream::unfold(
        state,
        CatalogWatch::next,
    )))
}
