//! The prototype's routes, answered from the same records as v1 (PROTOTYPE.md): plain-text
//! replies, `{"gVip","msg"}`, and the `Service_instance` document. Bad input answers 400 in
//! plain text, as a Flask app would.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::agent::Agent;
use crate::registry::compat::{self, PrototypeBody, ServiceState, StatusStorageQuery};
use crate::registry::ops::{RegistryResponse, WriteOp};
use crate::registry::{validate_service, Record};
use crate::Error;

fn html(status: StatusCode, text: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        text.into(),
    )
        .into_response()
}

fn json_text(text: String) -> Response {
    super::v1::json_body(text)
}

/// Errors in the prototype's style: plain text with the right status.
fn fail(e: Error) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    if let Error::Internal(m) = &e {
        tracing::error!("internal error: {m}");
    }
    html(status, e.to_string())
}

fn proto_body(bytes: &[u8]) -> Result<PrototypeBody, Error> {
    let body = PrototypeBody::from_bytes(bytes)?;
    validate_service(&body.service)?;
    compat::validate_lsip(&body.lsip)?;
    Ok(body)
}

fn text_of(answer: RegistryResponse) -> String {
    match answer {
        RegistryResponse::Applied {
            text: Some(text), ..
        } => text,
        _ => String::new(),
    }
}

/// POST /services/register/
pub async fn register(
    State(agent): State<Arc<Agent>>,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    lsip_write(&agent, raw, |lsip| WriteOp::LsipRegister { lsip }).await
}

/// POST /services/registercancel/
pub async fn register_cancel(
    State(agent): State<Arc<Agent>>,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    lsip_write(&agent, raw, |lsip| WriteOp::LsipCancel { lsip }).await
}

/// Parse the `{"sName","lSip"}` body, apply the write at the owner, answer its text.
async fn lsip_write(
    agent: &Agent,
    raw: Result<Bytes, BytesRejection>,
    op: impl FnOnce(String) -> WriteOp,
) -> Response {
    // The same body limit as v1 (413 when over it), answered in plain text.
    let bytes = match super::v1::body(raw) {
        Ok(b) => b,
        Err(e) => return html(e.status, e.message),
    };
    let body = match proto_body(&bytes) {
        Ok(b) => b,
        Err(e) => return fail(e),
    };
    match agent.registry.write(&body.service, op(body.lsip)).await {
        Ok(a) => html(StatusCode::OK, text_of(a)),
        Err(e) => fail(e),
    }
}

fn param<'a>(q: &'a HashMap<String, String>, name: &str) -> Result<&'a str, Error> {
    q.get(name)
        .map(String::as_str)
        .ok_or_else(|| Error::invalid(format!("missing query parameter {name}")))
}

/// GET /services/resolution/?sname=S
pub async fn resolution(
    State(agent): State<Arc<Agent>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let sname = match param(&q, "sname") {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    if validate_service(sname).is_err() {
        return json_text(compat::resolution_json(None));
    }
    match agent.registry.read(sname).await {
        Ok(rec) => {
            let gvip = rec.as_ref().and_then(|r| r.gvip.as_deref());
            json_text(compat::resolution_json(gvip))
        }
        Err(e) => fail(e),
    }
}

/// The servicestate document. It lists every instance (the prototype never filtered by
/// health); a service below its panic threshold says so in `X-Chordctl-Panic: true`, as a
/// healthy-only discover does.
fn state_doc(rec: &Record) -> Response {
    let healthy = crate::registry::discover_with_panic(rec, true, None).1;
    match ServiceState::of(rec).to_json_pretty() {
        Ok(doc) => super::v1::with_panic(html(StatusCode::OK, doc), healthy),
        Err(e) => fail(e),
    }
}

/// GET /services/servicestate?gvip=G — current, from the ring, on any agent.
pub async fn service_state(
    State(agent): State<Arc<Agent>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let gvip = match param(&q, "gvip") {
        Ok(g) => g,
        Err(e) => return fail(e),
    };
    if !compat::is_gvip(gvip) {
        return fail(Error::invalid(format!("not a gVip: {gvip}")));
    }
    let service = match agent.registry.resolve_gvip(gvip).await {
        Ok(Some(s)) => s,
        Ok(None) => return fail(Error::not_found(format!("no service has gVip {gvip}"))),
        Err(e) => return fail(e),
    };
    match agent.registry.read(&service).await {
        Ok(Some(rec)) => state_doc(&rec),
        Ok(None) => fail(Error::not_found(format!("service {service} not found"))),
        Err(e) => fail(e),
    }
}

/// GET /service_status_storage?sname=S&Lsip=L&success_rate=R&latency=MS&frequency=F
pub async fn status_storage(
    State(agent): State<Arc<Agent>>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let parsed = StatusStorageQuery::from_params(q.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let query = match parsed {
        Ok(q) => q,
        Err(e) => return fail(e),
    };
    let op = WriteOp::Report {
        id: query.lsip.clone(),
        body: query.to_status_body(),
    };
    // The answer is the service's state document after the report: read back from the owner
    // (writes answer only the instance they touched, not the whole record).
    if let Err(e) = agent.registry.write(&query.service, op).await {
        return fail(e);
    }
    match agent.registry.read(&query.service).await {
        Ok(Some(rec)) => state_doc(&rec),
        Ok(None) => fail(Error::not_found(format!(
            "service {} not found",
            query.service
        ))),
        Err(e) => fail(e),
    }
}
