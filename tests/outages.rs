//! A full disk under the embedded store: writes answer 503 with a clear message, the agent
//! stays up, and nothing acknowledged is corrupted or lost.

use serde_json::{json, Value};
use std::process::Command;

use crate::support::http::call;
use crate::support::procs::{bin, AgentProc};

#[test]
fn a_full_disk_answers_503_and_corrupts_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().to_str().expect("utf-8").to_string();
    // A file-size limit plays the full disk: the store file cannot grow past ~3 MB.
    let mut cmd = Command::new("bash");
    cmd.arg("-c").arg(format!(
        "ulimit -f 3000; exec {} agent create --bind 127.0.0.1:0 --http 127.0.0.1:0 --data-dir {path}",
        bin()
    ));
    cmd.env("RUST_LOG", "warn");
    let mut agent = AgentProc::spawn(cmd);
    let url = agent.url();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let meta: serde_json::Map<String, Value> = (0..60)
        .map(|i| (format!("k{i}"), json!("v".repeat(1000))))
        .collect();
    let mut acknowledged = Vec::new();
    let mut refused = None;
    for i in 0..400 {
        let (st, body) = rt.block_on(call(
            "PUT",
            &format!("{url}/v1/services/big-{i}/instances/a"),
            Some(json!({"address": "h", "port": 1, "metadata": meta})),
        ));
        match st {
            200 => acknowledged.push(i),
            503 => {
                refused = Some(body);
                break;
            }
            other => panic!("register big-{i}: {other} {body}"),
        }
    }
    let err = refused.expect("the store filled up and a write was refused");
    let msg = err["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains("store unavailable"), "a clear message: {err}");
    // The agent is still up and answering.
    let (st, _) = rt.block_on(call("GET", &format!("{url}/healthz"), None));
    assert_eq!(st, 200);
    assert!(
        agent.child.try_wait().expect("status").is_none(),
        "the agent survived the full disk"
    );
    // Restart without the limit on the same directory: every acknowledged write is intact.
    agent.kill9();
    drop(agent);
    let agent = AgentProc::start(None, &["--data-dir", &path]);
    let url = agent.url();
    for i in acknowledged {
        let (st, body) = rt.block_on(call("GET", &format!("{url}/v1/services/big-{i}"), None));
        assert_eq!(st, 200, "big-{i} after the restart: {body}");
        assert_eq!(
            body["instances"][0]["metadata"]["k59"],
            json!("v".repeat(1000))
        );
    }
}
