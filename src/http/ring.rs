//! Ring routes: the node's view, the whole ring, key lookup, leave, health.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::ApiError;
use crate::agent::Agent;
use crate::ring::{Id, NodeRef};

/// `{"id", "addr", "http"}` of a node.
pub fn node_json(n: &NodeRef) -> Value {
    json!({"id": n.id.to_hex(), "addr": n.addr, "http": n.http})
}

/// GET /healthz
pub async fn healthz(State(agent): State<Arc<Agent>>) -> Json<Value> {
    let member = agent.ring.read(|c| c.is_member());
    Json(json!({"status": "ok", "member": member}))
}

/// GET /v1/ring: this node's view.
pub async fn ring_node(State(agent): State<Arc<Agent>>) -> Json<Value> {
    let view = agent.ring.read(|c| {
        let me = c.me().id;
        let mut fingers = Vec::new();
        let mut last: Option<Id> = None;
        for (i, f) in c.fingers().iter().enumerate() {
            if let Some(n) = f {
                if last != Some(n.id) {
                    fingers.push(json!({
                        "index": i,
                        "start": me.add_pow2(i).to_hex(),
                        "node": node_json(n),
                    }));
                    last = Some(n.id);
                }
            }
        }
        json!({
            "id": me.to_hex(),
            "addr": c.me().addr,
            "http": c.me().http,
            "predecessor": c.predecessor().map(node_json),
            "successors": c.successors().iter().map(node_json).collect::<Vec<_>>(),
            "fingers": fingers,
            "member": c.is_member(),
        })
    });
    let mut view = view;
    view["self_preservation"] = Value::Bool(agent.registry.self_preservation());
    Json(view)
}

/// GET /v1/ring/nodes: every node, in ring order from this one.
pub async fn ring_nodes(State(agent): State<Arc<Agent>>) -> Result<Json<Value>, ApiError> {
    let nodes = agent.ring.walk(100_000).await?;
    let out: Vec<Value> = nodes
        .iter()
        .map(|(n, pred, succ)| {
            json!({
                "id": n.id.to_hex(),
                "addr": n.addr,
                "http": n.http,
                "predecessor": pred.as_ref().map(|p| p.id.to_hex()),
                "successor": succ.id.to_hex(),
            })
        })
        .collect();
    Ok(Json(Value::Array(out)))
}

/// GET /v1/locate/{key}
pub async fn locate(
    State(agent): State<Arc<Agent>>,
    Path(key): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = Id::of_key(&key);
    let result = agent.ring.lookup(id).await?;
    let owner = result.owner().clone();
    let replicas: Vec<Value> = result
        .replica_chain(agent.config.replicas)
        .iter()
        .skip(1)
        .map(node_json)
        .collect();
    Ok(Json(json!({
        "key": key,
        "id": id.to_hex(),
        "owner": node_json(&owner),
        "replicas": replicas,
        "hops": result.hops,
    })))
}

/// POST /v1/agent/leave: leave gracefully, then exit.
pub async fn leave(State(agent): State<Arc<Agent>>) -> (StatusCode, Json<Value>) {
    agent.request_leave();
    (StatusCode::ACCEPTED, Json(json!({"leaving": true})))
}
