//! The v1 service routes: register, deregister, status report and query, discover, list,
//! the health policy and explain.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, FailedToBufferBody};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::ApiError;
use crate::agent::Agent;
use crate::registry::ops::{RegistryResponse, WriteOp};
use crate::registry::{
    discover_with_panic, health, pick, validate_instance_id, validate_service, Instance, Policy,
    RegisterBody, StatusBody, Strategy,
};
use crate::Error;

/// The body, or a 413/400 JSON error.
pub fn body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    match body {
        Ok(b) => Ok(b),
        Err(BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_))) => {
            Err(ApiError::too_large(super::MAX_BODY))
        }
        Err(e) => Err(Error::invalid(format!("cannot read the request body: {e}")).into()),
    }
}

/// The header that carries a service's change index (API.md, "Watching for changes").
pub const INDEX_HEADER: &str = "x-chordctl-index";

fn instance_of(answer: RegistryResponse) -> Result<(Arc<Instance>, u64), ApiError> {
    match answer {
        RegistryResponse::Applied {
            instance: Some(i),
            index,
            ..
        } => Ok((i, index)),
        other => Err(Error::internal(format!("unexpected answer {other:?}")).into()),
    }
}

/// `v` as a JSON answer, serialized once straight into the body (no `Value` in between).
fn json_of<T: Serialize + ?Sized>(v: &T) -> Result<Response, ApiError> {
    // An INSTANCE is ~400 bytes: start there rather than grow the buffer three times.
    let mut body = Vec::with_capacity(512);
    serde_json::to_writer(&mut body, v).map_err(|e| Error::internal(e.to_string()))?;
    Ok(json_body(body))
}

/// One INSTANCE as the answer (`registry/json.rs` writes it).
fn instance_json(instance: &Instance) -> Response {
    // An INSTANCE is ~400 bytes: start there rather than grow the buffer three times.
    let mut body = Vec::with_capacity(512);
    crate::registry::json::write_instance(&mut body, instance);
    json_body(body)
}

/// A 200 answer of `body`, JSON already. Made directly: axum's `(headers, body)` sets the
/// body's own `Content-Type` first and then replaces it, about 1% of a registration.
pub fn json_body(body: impl Into<axum::body::Body>) -> Response {
    let mut response = Response::new(body.into());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// The header that says a healthy-only answer holds every instance because the service is in
/// panic (API.md, "Health beyond a state").
pub const PANIC_HEADER: &str = "x-chordctl-panic";

/// `response` with `X-Chordctl-Panic: true` when `panic`.
pub fn with_panic(mut response: Response, panic: bool) -> Response {
    if panic {
        response
            .headers_mut()
            .insert(PANIC_HEADER, header::HeaderValue::from_static("true"));
    }
    response
}

/// `response` with the service's change index in `X-Chordctl-Index`.
fn with_index(mut response: Response, index: u64) -> Response {
    response
        .headers_mut()
        .insert(INDEX_HEADER, header::HeaderValue::from(index));
    response
}

/// The error answer of a discover, with the service's change index (every discover answer
/// carries it).
fn refused_with_index(e: impl Into<ApiError>, index: u64) -> Response {
    with_index(e.into().into_response(), index)
}

/// PUT /v1/services/{service}/instances/{id}
pub async fn register(
    State(agent): State<Arc<Agent>>,
    Path((service, id)): Path<(String, String)>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (service, id) = checked(service, id)?;
    let body = RegisterBody::from_json(&body(raw)?)?;
    body.check(false)?;
    let body = Arc::new(body);
    write_instance(&agent, &service, WriteOp::Register { id, body }).await
}

/// The `{service}` and `{id}` path segments, validated.
fn checked(service: String, id: String) -> Result<(String, String), ApiError> {
    validate_service(&service)?;
    validate_instance_id(&id)?;
    Ok((service, id))
}

/// Apply `op` at the record's owner and answer the instance it touched.
async fn write_instance(agent: &Agent, service: &str, op: WriteOp) -> Result<Response, ApiError> {
    let answer = agent.registry.write(service, op).await?;
    let (instance, index) = instance_of(answer)?;
    Ok(with_index(instance_json(&instance), index))
}

/// DELETE /v1/services/{service}/instances/{id}
pub async fn deregister(
    State(agent): State<Arc<Agent>>,
    Path((service, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (service, id) = checked(service, id)?;
    write_instance(&agent, &service, WriteOp::Deregister { id }).await
}

/// PUT /v1/services/{service}/instances/{id}/status
pub async fn report(
    State(agent): State<Arc<Agent>>,
    Path((service, id)): Path<(String, String)>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (service, id) = checked(service, id)?;
    let body = StatusBody::from_json(&body(raw)?)?;
    body.validate()?;
    write_instance(&agent, &service, WriteOp::Report { id, body }).await
}

/// GET /v1/services/{service}/instances/{id}
pub async fn query(
    State(agent): State<Arc<Agent>>,
    Path((service, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (service, id) = checked(service, id)?;
    let rec = agent
        .registry
        .read(&service)
        .await?
        .ok_or_else(|| Error::not_found(format!("service {service} not found")))?;
    Ok(with_index(instance_json(rec.instance(&id)?), rec.index))
}

/// GET /v1/services/{service}?healthy=true&tag=T&pick=STRATEGY
pub async fn discover_service(
    State(agent): State<Arc<Agent>>,
    Path(service): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    // Every discover answer carries the service's index, a refused query's too: a name that
    // is not a service name has never been one (0); a bad filter on a service shows its
    // index (read for it), unless the read fails.
    if let Err(e) = validate_service(&service) {
        return Ok(refused_with_index(e, 0));
    }
    let checked =
        filters(&params).and_then(|filters| Ok((filters, super::watch::blocking(&params)?)));
    let ((healthy, tag, strategy), blocking) = match checked {
        Ok(checked) => checked,
        Err(refused) => {
            let response = refused.into_response();
            return Ok(match agent.registry.read(&service).await {
                Ok(rec) => with_index(response, rec.map_or(0, |r| r.index)),
                Err(_) => response,
            });
        }
    };
    if let Some((index, wait)) = blocking {
        super::watch::block(&agent, &service, index, wait, healthy, tag).await?;
    }
    match strategy {
        // The owner makes the answer; a non-owner passes its JSON on as it is.
        None => {
            let (json, index, panic) =
                match agent.registry.discover_json(&service, healthy, tag).await {
                    Ok(found) => found,
                    Err(e @ Error::NotFound(_)) => return Ok(refused_with_index(e, 0)),
                    Err(e) => return Err(e.into()),
                };
            Ok(with_panic(
                with_index(json_body(json.into_bytes()), index),
                panic,
            ))
        }
        Some(s) => {
            let Some(rec) = agent.registry.read(&service).await? else {
                let e = Error::not_found(format!("service {service} not found"));
                return Ok(refused_with_index(e, 0));
            };
            let (found, panic) = discover_with_panic(&rec, healthy, tag);
            let rr = agent.registry.next_rr();
            let Some(chosen) = pick(&found, s, rr, &mut rand::thread_rng()) else {
                // The service exists: its 404 carries its index, as every discover answer.
                let e = Error::not_found(format!("no instance of {service} to pick"));
                return Ok(refused_with_index(e, rec.index));
            };
            Ok(with_panic(
                with_index(instance_json(chosen), rec.index),
                panic,
            ))
        }
    }
}

/// `?healthy=` `?tag=` `?pick=` of a discover or an explain, checked.
fn filters(
    params: &HashMap<String, String>,
) -> Result<(bool, Option<&str>, Option<Strategy>), ApiError> {
    let healthy = match params.get("healthy").map(String::as_str) {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") | Some("") => true,
        Some(other) => {
            return Err(
                Error::invalid(format!("healthy must be true or false, got {other:?}")).into(),
            )
        }
    };
    let strategy: Option<Strategy> = params
        .get("pick")
        .map(|s| s.parse())
        .transpose()
        .map_err(ApiError::from)?;
    Ok((healthy, params.get("tag").map(String::as_str), strategy))
}

/// GET /v1/services/{service}/explain?healthy=true&tag=T&pick=STRATEGY: for every instance,
/// whether discover with these filters returns it and why not.
pub async fn explain(
    State(agent): State<Arc<Agent>>,
    Path(service): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    validate_service(&service)?;
    let (healthy, tag, strategy) = filters(&params)?;
    let rec = agent
        .registry
        .read(&service)
        .await?
        .ok_or_else(|| Error::not_found(format!("service {service} not found")))?;
    let filters = health::Filters { healthy, tag };
    // A look at the next round-robin turn, without taking it.
    let rr = agent.registry.peek_rr();
    let answer = health::explain(
        &rec,
        &filters,
        strategy,
        rr,
        &mut rand::thread_rng(),
        chrono::Utc::now(),
    );
    Ok(with_panic(
        with_index(json_of(&answer)?, rec.index),
        answer.panic,
    ))
}

/// GET /v1/services/{service}/policy
pub async fn get_policy(
    State(agent): State<Arc<Agent>>,
    Path(service): Path<String>,
) -> Result<Response, ApiError> {
    validate_service(&service)?;
    let policy = agent
        .registry
        .policy(&service)
        .await?
        .ok_or_else(|| Error::not_found(format!("service {service} not found")))?;
    json_of(&policy)
}

/// PUT /v1/services/{service}/policy: the body replaces the policy; omitted fields take their
/// defaults.
pub async fn put_policy(
    State(agent): State<Arc<Agent>>,
    Path(service): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    validate_service(&service)?;
    let policy = Policy::from_json(&body(raw)?)?;
    let answer = agent
        .registry
        .write(&service, WriteOp::SetPolicy { policy })
        .await?;
    let index = match answer {
        RegistryResponse::Applied { index, .. } => index,
        other => return Err(Error::internal(format!("unexpected answer {other:?}")).into()),
    };
    Ok(with_index(json_of(&policy)?, index))
}

/// GET /v1/services
pub async fn list(State(agent): State<Arc<Agent>>) -> Result<Response, ApiError> {
    let all = agent.registry.list().await?;
    json_of(&all)
}
