//! `chordctl svc watch` end to end: the real binary watching through real agent processes,
//! one of which is killed with SIGKILL under it.
//!
//! Not yet in tests/main.rs's module list: it needs the agent's side of watch
//! (`GET /v1/watch/services/{service}`). Add `mod watch_cli;` there when that lands.
//!
//! Synchronization is by polling with deadlines and by waiting for the watch's own output
//! lines, never by sleeping.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::eventually;
use crate::support::procs::{bin, ring_order, AgentProc, Reaped};

/// Generous: debug builds on a loaded two-core machine.
const SETTLE: Duration = Duration::from_secs(60);

/// One change made through the HTTP API, and the index its answer carried.
#[derive(Debug, Clone)]
struct Made {
    index: u64,
    op: &'static str,
    id: String,
}

/// Sends one write to `url` and returns the service's change index from `X-Chordctl-Index`.
/// A 503 (ownership settling after the crash) is retried until `SETTLE` has passed.
async fn write(url: &str, method: &str, path: &str, body: Option<Value>) -> u64 {
    let client = reqwest::Client::new();
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let deadline = Instant::now() + SETTLE;
    loop {
        let mut request = client.request(method.clone(), format!("{url}{path}"));
        if let Some(body) = &body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}{path}: {e}"));
        let status = response.status().as_u16();
        let index = response
            .headers()
            .get("x-chordctl-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let text = response.text().await.unwrap_or_default();
        match (status, index) {
            (200, Some(index)) => return index,
            (503, _) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ => panic!("{method} {url}{path}: {status} index {index:?}: {text}"),
        }
    }
}

async fn ring_size(url: &str) -> usize {
    let (_, v) = crate::support::http::call("GET", &format!("{url}/v1/ring/nodes"), None).await;
    v.as_array().map(Vec::len).unwrap_or(0)
}

/// Waits for the next line the watch prints, for at most `SETTLE`.
fn next_line(lines: &mpsc::Receiver<String>, seen: &[Value]) -> Value {
    let line = lines
        .recv_timeout(SETTLE)
        .unwrap_or_else(|e| panic!("no line from the watch ({e}); so far: {seen:#?}"));
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {e}: {line}"))
}

/// Reads lines until `wanted` snapshot/change events have come (bookmarks are kept too).
fn read_events(lines: &mpsc::Receiver<String>, seen: &mut Vec<Value>, wanted: usize) {
    let counted = |seen: &[Value]| seen.iter().filter(|e| e["event"] != "bookmark").count();
    while counted(seen) < wanted {
        let line = next_line(lines, seen);
        seen.push(line);
    }
}

#[test]
fn svc_watch_count_and_resume_after_its_agent_is_killed() {
    let a1 = AgentProc::start(None, &[]);
    let a2 = AgentProc::start(Some(&a1.ring), &[]);
    let a3 = AgentProc::start(Some(&a1.ring), &[]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for url in [a1.url(), a2.url(), a3.url()] {
        rt.block_on(eventually("3 nodes", SETTLE, async || {
            let n = ring_size(&url).await;
            (n == 3).then_some(()).ok_or(format!("{n} nodes"))
        }));
    }
    // A service that A1 does not own: what is tested is the watch losing its agent, not the
    // agents' hand-over of a crashed owner's change log.
    let agents = [a1, a2, a3];
    let service = (0..)
        .map(|i| format!("watched-{i}"))
        .find(|s| ring_order(&agents, s)[0] != 0)
        .expect("a service name");
    let [mut a1, a2, a3] = agents;
    let (u2, u3) = (a2.url(), a3.url());
    let instance = |id: &str| format!("/v1/services/{service}/instances/{id}");
    let body = |n: u16| json!({"address": "10.0.0.1", "port": 8000 + n});

    // Before the watch: one instance, in its snapshot.
    let first = rt.block_on(write(&u2, "PUT", &instance("w-0"), Some(body(0))));

    // Phase 1 through A2 while the watch reads from A1, phase 2 through A3 after A1's crash.
    let phase1: usize = 4;
    let phase2: usize = 4;
    let count = 1 + phase1 + phase2;
    let mut cmd = Command::new(bin());
    cmd.args(["--agent", &a1.url(), "--agent", &u2, "-o", "json"])
        .args(["svc", "watch", &service, "--count", &count.to_string()])
        .env_remove("CHORDCTL_AGENT")
        .env_remove("CHORDCTL_OUTPUT")
        .env_remove("CHORDCTL_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut watch = Reaped(cmd.spawn().expect("spawn chordctl svc watch"));
    let stdout = watch.0.stdout.take().expect("stdout");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });

    let mut seen = Vec::new();
    read_events(&lines, &mut seen, 1);
    let snapshot = seen
        .iter()
        .find(|e| e["event"] == "snapshot")
        .cloned()
        .unwrap_or_else(|| panic!("no snapshot first: {seen:#?}"));
    assert_eq!(snapshot["index"], first, "{snapshot}");
    assert_eq!(snapshot["reset"], false, "{snapshot}");
    assert_eq!(
        snapshot["instances"].as_array().map(Vec::len),
        Some(1),
        "{snapshot}"
    );

    let mut made: Vec<Made> = Vec::new();
    rt.block_on(async {
        for n in 1..=2u16 {
            let id = format!("w-{n}");
            let index = write(&u2, "PUT", &instance(&id), Some(body(n))).await;
            made.push(Made {
                index,
                op: "register",
                id,
            });
        }
        let status = format!("{}/status", instance("w-0"));
        let index = write(&u2, "PUT", &status, Some(json!({"state": "warning"}))).await;
        made.push(Made {
            index,
            op: "update",
            id: "w-0".into(),
        });
        let index = write(&u2, "DELETE", &instance("w-1"), None).await;
        made.push(Made {
            index,
            op: "deregister",
            id: "w-1".into(),
        });
    });
    assert_eq!(made.len(), phase1);
    // Every phase-1 change reached the watch through A1 before A1 dies.
    read_events(&lines, &mut seen, 1 + phase1);

    a1.kill9();
    rt.block_on(async {
        eventually("A3 sees 2 nodes", SETTLE, async || {
            let n = ring_size(&u3).await;
            (n == 2).then_some(()).ok_or(format!("{n} nodes"))
        })
        .await;
        for n in 3..=5u16 {
            let id = format!("w-{n}");
            let index = write(&u3, "PUT", &instance(&id), Some(body(n))).await;
            made.push(Made {
                index,
                op: "register",
                id,
            });
        }
        let index = write(&u3, "DELETE", &instance("w-0"), None).await;
        made.push(Made {
            index,
            op: "deregister",
            id: "w-0".into(),
        });
    });
    assert_eq!(made.len(), phase1 + phase2);

    // The watch prints the rest and exits 0 by itself after --count events.
    read_events(&lines, &mut seen, count);
    let deadline = Instant::now() + SETTLE;
    let status = loop {
        match watch.0.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            other => panic!("the watch did not exit after {count} events: {other:?}; {seen:#?}"),
        }
    };
    assert_eq!(status.code(), Some(0), "{seen:#?}");
    // Nothing after the last counted event but bookmarks.
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(5)) {
        let event: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(event["event"], "bookmark", "printed after --count: {event}");
    }

    // Every change exactly once, in index order, as made; no reset (A1 owned nothing the
    // watch needed, so A2 can replay what the watch missed).
    let changes: Vec<&Value> = seen.iter().filter(|e| e["event"] == "change").collect();
    assert!(
        seen.iter().filter(|e| e["event"] == "snapshot").count() == 1,
        "a second snapshot (a reset?): {seen:#?}"
    );
    let printed: Vec<(u64, String, String)> = changes
        .iter()
        .map(|c| {
            (
                c["index"].as_u64().unwrap_or(0),
                c["op"].as_str().unwrap_or("?").to_string(),
                c["instance"]["id"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect();
    let expected: Vec<(u64, String, String)> = made
        .iter()
        .map(|m| (m.index, m.op.to_string(), m.id.clone()))
        .collect();
    assert_eq!(printed, expected, "the watch printed {seen:#?}");
    assert!(
        expected.windows(2).all(|w| w[0].0 < w[1].0) && expected[0].0 > first,
        "the agents' indexes do not grow: {expected:?}"
    );
    for event in &seen {
        assert_eq!(event["service"], service.as_str(), "{event}");
    }
}
