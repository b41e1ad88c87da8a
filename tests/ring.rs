//! The ring end to end: an in-process cluster of real agents on loopback, and the real binary.

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use chordctl::ring::Id;
use serde_json::Value;

use crate::support::cluster::{keys, TestCluster};
use crate::support::procs::{bin, client, output_within, poll, AgentProc};
use crate::support::testing::refused_addr;

async fn assert_lookups_match_true_owner(c: &TestCluster) {
    for h in c.live() {
        for key in keys(40) {
            let id = Id::of_key(&key);
            let r = h
                .agent()
                .ring
                .lookup(id)
                .await
                .unwrap_or_else(|e| panic!("lookup of {key} failed: {e}"));
            assert_eq!(
                r.owner().id,
                c.true_owner(&id),
                "owner of {key} as seen from {:?}",
                h.node()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_agents_lookups_match_true_owner_through_leave_kill_and_joins() {
    let mut c = TestCluster::start(8).await;
    c.settle().await;
    assert_lookups_match_true_owner(&c).await;

    c.leave(3).await;
    c.kill(5).await;
    c.join().await;
    c.join().await;
    c.settle().await;
    assert_eq!(c.live().count(), 8);
    assert_lookups_match_true_owner(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_sending_garbage_or_nothing_does_not_disturb_the_agent() {
    use tokio::io::AsyncWriteExt;
    let mut c = TestCluster::start(2).await;
    c.settle().await;
    let addr = c.seed();
    // Garbage bytes, a huge length prefix, a silent connection, a wrong protocol version.
    let mut garbage = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    garbage
        .write_all(b"GET / HTTP/1.1\r\n\r\n")
        .await
        .expect("write");
    let mut huge = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    huge.write_all(&u32::MAX.to_be_bytes())
        .await
        .expect("write");
    huge.write_all(&[0u8; 1024]).await.expect("write");
    let _silent = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let mut version = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    version
        .write_all(&[0, 0, 0, 2, 99, 0])
        .await
        .expect("write");
    // The ring keeps working: a join and lookups succeed.
    c.join().await;
    c.settle().await;
    assert_lookups_match_true_owner(&c).await;
}

fn ring_show(url: &str) -> Result<Vec<Value>, String> {
    let out = client(url, &["ring", "show", "-o", "json"]);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).to_string());
    }
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    v.as_array().cloned().ok_or_else(|| "not an array".into())
}

/// The ids of the `ring show` answer, rotated to start at the smallest.
fn ids_in_ring_order(nodes: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = nodes
        .iter()
        .filter_map(|n| n["id"].as_str().map(str::to_string))
        .collect();
    if let Some(min) = ids
        .iter()
        .enumerate()
        .min_by_key(|(_, id)| *id)
        .map(|(i, _)| i)
    {
        ids.rotate_left(min);
    }
    ids
}

#[test]
fn real_agents_heal_after_sigkill_and_locate_agrees_with_sha1() {
    let first = AgentProc::start(None, &[]);
    let mut agents = vec![first];
    for _ in 0..4 {
        let seed = agents[0].ring.clone();
        agents.push(AgentProc::start(Some(&seed), &[]));
    }
    let expect = |agents: &[AgentProc]| {
        let mut ids: Vec<String> = agents.iter().map(|a| a.id.clone()).collect();
        ids.sort();
        ids
    };
    let url = agents[0].url();
    let want = expect(&agents);
    poll(Duration::from_secs(60), "ring show lists all 5", || {
        let nodes = ring_show(&url)?;
        let got = ids_in_ring_order(&nodes);
        (got == want).then_some(()).ok_or(format!("{got:?}"))
    });

    // SIGKILL one agent: the ring converges to the live set in identifier order.
    agents[2].kill9();
    agents.remove(2);
    let want = expect(&agents);
    poll(Duration::from_secs(60), "ring show after kill -9", || {
        let nodes = ring_show(&url)?;
        let got = ids_in_ring_order(&nodes);
        (got == want).then_some(()).ok_or(format!("{got:?}"))
    });

    // locate agrees with SHA-1 computed here, from every agent, once the ring has converged
    // (some nodes may still list the dead one until their next stabilization).
    let live: Vec<String> = expect(&agents);
    poll(Duration::from_secs(60), "locate agrees with SHA-1", || {
        for key in ["payments", "orders", "a", "zzz-last"] {
            let kid = Id::of_key(key).to_hex();
            let owner = live
                .iter()
                .find(|id| **id >= kid)
                .or(live.first())
                .cloned()
                .ok_or("no live node")?;
            for a in &agents {
                let out = client(&a.url(), &["locate", key, "-o", "json"]);
                if !out.status.success() {
                    return Err(String::from_utf8_lossy(&out.stderr).to_string());
                }
                let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
                assert_eq!(v["id"], Value::String(kid.clone()), "key id of {key}");
                assert!(v["hops"].is_u64());
                if v["owner"]["id"] != Value::String(owner.clone()) {
                    return Err(format!("owner of {key} from {}: {}", a.url(), v["owner"]));
                }
            }
        }
        Ok(())
    });
}

#[test]
fn sigterm_leaves_gracefully_and_exits_0() {
    let a = AgentProc::start(None, &[]);
    let mut b = AgentProc::start(Some(&a.ring), &[]);
    let url = a.url();
    poll(Duration::from_secs(30), "two nodes", || {
        let n = ring_show(&url)?.len();
        (n == 2).then_some(()).ok_or(format!("{n} nodes"))
    });
    let status = b.terminate().expect("agent exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    // The leave told the other node at once: it is alone without waiting for failure detection.
    let nodes = ring_show(&url).expect("ring show");
    let ids: HashSet<String> = nodes
        .iter()
        .filter_map(|n| n["id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(ids, HashSet::from([a.id.clone()]));
}

#[test]
fn join_with_unreachable_seed_fails_within_seconds_naming_the_seed() {
    let (_refusing, seed) = refused_addr();
    let seed = seed.to_string();
    let start = Instant::now();
    let dir = tempfile::tempdir().expect("tmp");
    let mut cmd = Command::new(bin());
    cmd.args([
        "agent",
        "join",
        &seed,
        "--bind",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
    ])
    .arg("--data-dir")
    .arg(dir.path());
    let out = output_within(cmd, Duration::from_secs(60));
    assert!(!out.status.success());
    assert!(start.elapsed() < Duration::from_secs(30));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&seed), "stderr names the seed: {err}");
}

/// A seed given as an agent's HTTP address (an easy slip: both are HOST:PORT) fails at once
/// and says what is probably wrong, rather than only blaming a cluster secret.
#[test]
fn joining_through_an_http_address_says_it_is_not_a_ring_port() {
    let seed_agent = AgentProc::start(None, &[]);
    let dir = tempfile::tempdir().expect("tmp");
    let started = Instant::now();
    let out = Command::new(bin())
        .args(["agent", "join", &seed_agent.http])
        .args(["--bind", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .env("RUST_LOG", "error")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(30));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&seed_agent.http), "names the seed: {err}");
    assert!(err.contains("not a ring RPC port"), "says why: {err}");
}

#[test]
fn a_port_in_use_is_a_one_line_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = Command::new(bin())
        .args(["agent", "create", "--bind", &addr, "--http", "127.0.0.1:0"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(lines.len(), 1, "one error line: {err}");
    assert!(lines[0].contains(&addr), "{err}");
}
