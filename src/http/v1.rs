//! The v1 service routes: register, deregister, status report and query, discover, list.

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
    discover, pick, validate_instance_id, validate_service, Instance, RegisterBody, StatusBody,
    Strategy,
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
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// `response` with the service's change index in `X-Chordctl-Index`.
fn with_index(mut response: Response, index: u64) -> Response {
    response
        .headers_mut()
        .insert(INDEX_HEADER, header::HeaderValue::from(index));
    response
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
    Ok(with_index(json_of(&instance)?, index))
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
    Ok(with_index(json_of(rec.instance(&id)?)?, rec.index))
}

/// GET /v1/services/{service}?healthy=true&tag=T&pick=STRATEGY
pub async fn discover_service(
    State(agent): State<Arc<Agent>>,
    Path(service): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    validate_service(&service)?;
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
    let tag = params.get("tag").map(String::as_str);
    if let Some((index, wait)) = super::watch::blocking(&params)? {
        super::watch::block(&agent, &service, index, wait, healthy, tag).await?;
    }
    match strategy {
        // The owner makes the answer; a non-owner passes its JSON on as it is.
        None => {
            let (json, index) = match agent.registry.discover_json(&service, healthy, tag).await {
                Ok(found) => found,
                Err(e @ Error::NotFound(_)) => {
                    return Ok(with_index(ApiError::from(e).into_response(), 0))
                }
                Err(e) => return Err(e.into()),
            };
            let response = (
                [(header::CONTENT_TYPE, "application/json")],
                json.into_bytes(),
            )
                .into_response();
            Ok(with_index(response, index))
        }
        Some(s) => {
            let Some(rec) = agent.registry.read(&service).await? else {
                let e = Error::not_found(format!("service {service} not found"));
                return Ok(with_index(ApiError::from(e).into_response(), 0));
            };
            let found = discover(&rec, healthy, tag);
            let rr = agent.registry.next_rr();
            let chosen = pick(&found, s, rr, &mut rand::thread_rng())
                .ok_or_else(|| Error::not_found(format!("no instance of {service} to pick")))?;
            Ok(with_index(json_of(chosen)?, rec.index))
        }
    }
}

/// GET /v1/services
pub async fn list(State(agent): State<Arc<Agent>>) -> Result<Response, ApiError> {
    let all = agent.registry.list().await?;
    json_of(&all)
}
