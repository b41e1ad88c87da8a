//! End to end: the real `chordctl` client against real agent processes on a 2-node ring (and
//! `agent dev`). Every client command, its table and `-o json` output, and its exit code.
//!
//! Synchronization is by polling with deadlines (`support::procs::poll`), never by sleeping;
//! every agent process is killed when its `AgentProc` (or `Reaped`) is dropped.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use chordctl::ring::Id;
use serde_json::Value;
use tempfile::TempDir;

use crate::support::procs::{bin, client, poll, AgentProc, Reaped};
use crate::support::run::Run;

/// Generous: debug builds on a loaded two-core machine.
const SETTLE: Duration = Duration::from_secs(30);

/// `chordctl --agent URL ARGS...`.
fn run(url: &str, args: &[&str]) -> Run {
    Run {
        line: format!("chordctl --agent {url} {}", args.join(" ")),
        output: client(url, args),
    }
}

/// A started agent with its own embedded store directory (never the user's data directory).
fn agent(seed: Option<&str>, dir: &TempDir) -> AgentProc {
    let data = dir.path().to_string_lossy().into_owned();
    AgentProc::start(seed, &["--data-dir", &data])
}

/// Node ids as `ring show -o json` lists them from `url`, if every node's predecessor and
/// successor are its neighbours in the list (the ring has settled).
fn settled_ring(url: &str) -> Result<Vec<String>, String> {
    let r = run(url, &["ring", "show", "-o", "json"]);
    if r.code_of() != Some(0) {
        return Err(r.describe());
    }
    let nodes: Vec<Value> = serde_json::from_str(&r.stdout()).map_err(|e| e.to_string())?;
    let ids: Vec<String> = nodes
        .iter()
        .map(|n| n["id"].as_str().unwrap_or_default().to_string())
        .collect();
    let n = ids.len();
    if n == 1 && nodes[0]["successor"].as_str() == Some(ids[0].as_str()) {
        // A lone node: its predecessor is itself or not known (API.md does not say).
        return Ok(ids);
    }
    for (i, node) in nodes.iter().enumerate() {
        if node["predecessor"].as_str() != Some(ids[(i + n - 1) % n].as_str())
            || node["successor"].as_str() != Some(ids[(i + 1) % n].as_str())
        {
            return Err(format!("not settled: {}", r.stdout()));
        }
    }
    Ok(ids)
}

/// Two agents, the second joined through the first, both seeing the settled 2-node ring.
fn two_node_ring() -> (TempDir, TempDir, AgentProc, AgentProc) {
    let (da, db) = (tempdir(), tempdir());
    let a = agent(None, &da);
    let b = agent(Some(&a.ring), &db);
    for p in [&a, &b] {
        let want: BTreeSet<String> = [a.id.clone(), b.id.clone()].into();
        poll(SETTLE, "the 2-node ring settles", || {
            let ids = settled_ring(&p.url())?;
            let got: BTreeSet<String> = ids.into_iter().collect();
            if got == want {
                Ok(())
            } else {
                Err(format!("ring is {got:?}, want {want:?}"))
            }
        });
    }
    (da, db, a, b)
}

fn tempdir() -> TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"))
}

/// The hex id of the owner of `key` as `locate -o json` answers it.
fn owner_of(url: &str, key: &str) -> String {
    let r = run(url, &["locate", key, "-o", "json"]);
    let v = r.ok_json();
    v["owner"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no owner id\n{}", r.describe()))
        .to_string()
}

/// A service name owned by `owner` on the 2-node ring {`owner`, `other`} (computed here: the
/// owner of a key is the first node at or after its id), checked with `locate` at `url`.
fn service_owned_by(url: &str, prefix: &str, owner: &str, other: &str) -> String {
    let (own, oth) = match (Id::from_hex(owner), Id::from_hex(other)) {
        (Some(a), Some(b)) => (a, b),
        _ => panic!("bad node ids {owner} {other}"),
    };
    let name = (0..100_000)
        .map(|i| format!("{prefix}-{i}"))
        .find(|name| Id::of_key(name).in_half_open(&oth, &own))
        .unwrap_or_else(|| panic!("no name {prefix}-N owned by {owner}"));
    assert_eq!(owner_of(url, &name), owner, "locate {name}");
    name
}

/// The ids of the `instances` array of a discover answer.
fn ids_of(v: &Value) -> BTreeSet<String> {
    v["instances"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn strings(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn ring_show_node_and_locate_on_two_nodes() {
    let (_da, _db, a, b) = two_node_ring();
    let url = a.url();

    // ring show: table and JSON.
    let r = run(&url, &["ring", "show"]);
    r.code(0)
        .stdout_has(&a.id[..8])
        .stdout_has(&b.id[..8])
        .stdout_has(&a.ring)
        .stdout_has(&b.http)
        .stdout_has("2 nodes")
        .stdout_lacks("still settling");
    let r = run(&url, &["ring", "show", "-o", "json"]);
    let v = r.ok_json();
    let nodes = v.as_array().cloned().unwrap_or_default();
    r.check(nodes.len() == 2, "two nodes");
    r.check(nodes[0]["id"] == a.id.as_str(), "starts at the node asked");
    r.check(nodes[0]["addr"] == a.ring.as_str(), "addr");
    r.check(nodes[0]["http"] == a.http.as_str(), "http");
    r.check(nodes[0]["successor"] == b.id.as_str(), "a's successor is b");
    r.check(
        nodes[0]["predecessor"] == b.id.as_str(),
        "a's predecessor is b",
    );
    r.check(nodes[1]["id"] == b.id.as_str(), "then b");

    // ring node: table and JSON.
    let r = run(&b.url(), &["ring", "node"]);
    r.code(0)
        .stdout_has("self")
        .stdout_has("predecessor")
        .stdout_has("successor 1")
        .stdout_has(&b.id[..8])
        .stdout_has(&a.ring)
        .stdout_has("FINGER");
    let r = run(&b.url(), &["ring", "node", "-o", "json"]);
    let v = r.ok_json();
    r.check(v["id"] == b.id.as_str(), "id");
    r.check(v["addr"] == b.ring.as_str(), "addr");
    r.check(v["http"] == b.http.as_str(), "http");
    r.check(v["predecessor"]["id"] == a.id.as_str(), "predecessor");
    r.check(v["successors"][0]["id"] == a.id.as_str(), "successor 1");
    r.check(
        v["fingers"].as_array().is_some_and(|f| !f.is_empty()),
        "fingers",
    );

    // locate: table and JSON; both agents agree on the owner.
    let r = run(&url, &["locate", "payments"]);
    r.code(0)
        .stdout_has("key     payments")
        .stdout_has("key id")
        .stdout_has("hops")
        .stdout_has("owner");
    let r = run(&url, &["locate", "payments", "-o", "json"]);
    let v = r.ok_json();
    r.check(v["key"] == "payments", "key");
    r.check(
        v["id"].as_str().is_some_and(|id| {
            id.len() == 40
                && id
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_uppercase())
        }),
        "id is 40 lowercase hex digits",
    );
    let owner = v["owner"]["id"].as_str().unwrap_or_default().to_string();
    r.check(owner == a.id || owner == b.id, "owner is a member");
    r.check(v["owner"]["addr"].is_string(), "owner addr");
    r.check(v["owner"]["http"].is_string(), "owner http");
    let replicas = v["replicas"].as_array().cloned().unwrap_or_default();
    r.check(replicas.len() <= 1, "at most one replica on a ring of two");
    r.check(
        replicas.iter().all(|n| n["id"] != owner.as_str()),
        "the owner is not its own replica",
    );
    r.check(v["hops"].is_u64(), "hops");
    assert_eq!(owner_of(&b.url(), "payments"), owner, "both agents agree");
}

#[test]
fn service_commands_on_two_nodes() {
    let (_da, _db, a, b) = two_node_ring();
    let (ua, ub) = (a.url(), b.url());
    // Registered through A, owned by B: every write is forwarded over ring RPC.
    let svc = service_owned_by(&ua, "pay", &b.id, &a.id);
    let svc = svc.as_str();

    // svc register, table: the confirmation line.
    let r = run(
        &ua,
        &[
            "svc",
            "register",
            svc,
            "--address",
            "10.0.0.7",
            "--port",
            "8080",
            "--tag",
            "v2",
            "--tag",
            "eu",
            "--meta",
            "zone=a",
            "--weight",
            "3",
            "--ttl",
            "1h",
        ],
    );
    r.code(0)
        .stdout_has(&format!("registered {svc} instance 10.0.0.7:8080"));

    // svc register, JSON: the INSTANCE.
    let r = run(
        &ua,
        &[
            "svc",
            "register",
            svc,
            "--address",
            "10.0.0.8",
            "--port",
            "9090",
            "--id",
            "second",
            "--tag",
            "v1",
            "--ttl",
            "5m",
            "-o",
            "json",
        ],
    );
    let v = r.ok_json();
    r.check(v["service"] == svc, "service");
    r.check(v["id"] == "second", "--id");
    r.check(v["address"] == "10.0.0.8", "address");
    r.check(v["port"] == 9090, "port");
    r.check(v["tags"] == serde_json::json!(["v1"]), "tags");
    r.check(v["weight"] == 1, "default weight 1");
    r.check(v["ttl_secs"] == 300, "--ttl 5m");
    r.check(v["registered_at"].is_string(), "registered_at");
    r.check(
        v["status"]["state"] == "passing",
        "a new instance is passing",
    );

    // status query SERVICE ID, through the other agent: table and JSON.
    let r = run(&ub, &["status", "query", svc, "10.0.0.7:8080"]);
    r.code(0)
        .stdout_has("10.0.0.7:8080")
        .stdout_has("10.0.0.7")
        .stdout_has("8080")
        .stdout_has("passing")
        .stdout_has("v2,eu");
    let r = run(
        &ub,
        &["status", "query", svc, "10.0.0.7:8080", "-o", "json"],
    );
    let v = r.ok_json();
    r.check(v["id"] == "10.0.0.7:8080", "default id ADDRESS:PORT");
    r.check(v["port"] == 8080, "port");
    r.check(v["tags"] == serde_json::json!(["v2", "eu"]), "tags");
    r.check(v["metadata"] == serde_json::json!({"zone": "a"}), "--meta");
    r.check(v["weight"] == 3, "--weight");
    r.check(v["ttl_secs"] == 3600, "--ttl 1h");
    r.check(v["status"]["state"] == "passing", "passing");

    // status report: table and JSON.
    let r = run(
        &ub,
        &[
            "status",
            "report",
            svc,
            "10.0.0.7:8080",
            "--state",
            "passing",
            "--success-rate",
            "0.99",
            "--latency-ms",
            "12.5",
            "--load",
            "0.25",
            "--frequency",
            "30",
            "--note",
            "fine",
        ],
    );
    r.code(0)
        .stdout_has(&format!("reported {svc} instance 10.0.0.7:8080: passing"));
    let r = run(
        &ua,
        &[
            "status",
            "report",
            svc,
            "second",
            "--state",
            "critical",
            "--success-rate",
            "0.5",
            "-o",
            "json",
        ],
    );
    let v = r.ok_json();
    r.check(v["id"] == "second", "id");
    r.check(v["status"]["state"] == "critical", "state");
    r.check(v["status"]["success_rate"] == 0.5, "success_rate");
    r.check(v["status"]["updated_at"].is_string(), "updated_at");
    let r = run(
        &ua,
        &["status", "query", svc, "10.0.0.7:8080", "-o", "json"],
    );
    let v = r.ok_json();
    r.check(v["status"]["success_rate"] == 0.99, "success_rate kept");
    r.check(v["status"]["latency_ms"] == 12.5, "latency_ms");
    r.check(v["status"]["load"] == 0.25, "load");
    r.check(v["status"]["frequency"] == 30.0, "frequency");
    r.check(v["status"]["note"] == "fine", "note");

    // svc discover: table and JSON, filters and picks.
    let r = run(&ua, &["svc", "discover", svc]);
    r.code(0)
        .stdout_has("10.0.0.7:8080")
        .stdout_has("second")
        .stdout_has("critical")
        .stdout_has("99.0%")
        .stdout_has("12.5ms")
        .stdout_has(&format!("2 instances of {svc}"));
    let r = run(&ub, &["svc", "discover", svc, "-o", "json"]);
    let v = r.ok_json();
    r.check(v["service"] == svc, "service");
    r.check(
        ids_of(&v) == strings(&["10.0.0.7:8080", "second"]),
        "both instances",
    );
    let r = run(&ua, &["svc", "discover", svc, "--healthy", "-o", "json"]);
    let v = r.ok_json();
    r.check(
        ids_of(&v) == strings(&["10.0.0.7:8080"]),
        "--healthy drops the critical one",
    );
    let r = run(&ua, &["svc", "discover", svc, "--healthy"]);
    r.code(0)
        .stdout_has("10.0.0.7:8080")
        .stdout_lacks("second")
        .stdout_has("1 instance of");
    let r = run(&ub, &["svc", "discover", svc, "--tag", "v1", "-o", "json"]);
    let v = r.ok_json();
    r.check(ids_of(&v) == strings(&["second"]), "--tag v1");
    let r = run(&ub, &["svc", "discover", svc, "--tag", "nosuchtag"]);
    r.code(0).stdout_has(&format!("no instances of {svc}"));
    let r = run(
        &ua,
        &["svc", "discover", svc, "--pick", "best", "-o", "json"],
    );
    let v = r.ok_json();
    r.check(
        v["id"] == "10.0.0.7:8080",
        "best: the healthiest state, highest success rate",
    );
    r.check(v.get("instances").is_none(), "--pick answers one INSTANCE");
    let r = run(&ua, &["svc", "discover", svc, "--pick", "best"]);
    r.code(0).stdout_has("10.0.0.7:8080").stdout_lacks("second");
    // Round-robin through one agent visits both instances within a few picks.
    let mut seen = BTreeSet::new();
    for _ in 0..4 {
        let r = run(
            &ua,
            &[
                "svc",
                "discover",
                svc,
                "--pick",
                "round-robin",
                "-o",
                "json",
            ],
        );
        let v = r.ok_json();
        seen.insert(v["id"].as_str().unwrap_or_default().to_string());
    }
    assert_eq!(
        seen,
        strings(&["10.0.0.7:8080", "second"]),
        "round-robin picks"
    );
    let r = run(&ua, &["svc", "discover", svc, "--pick", "round-robin"]);
    r.code(0).stdout_has("passing");

    // status query SERVICE: the same as discover.
    let r = run(&ub, &["status", "query", svc, "-o", "json"]);
    let v = r.ok_json();
    r.check(v["service"] == svc, "service");
    r.check(
        ids_of(&v) == strings(&["10.0.0.7:8080", "second"]),
        "as discover",
    );
    let r = run(&ub, &["status", "query", svc]);
    r.code(0).stdout_has("second").stdout_has("2 instances");

    // A second service owned by A, then svc list from both agents.
    let other = service_owned_by(&ua, "orders", &a.id, &b.id);
    run(
        &ub,
        &[
            "svc",
            "register",
            &other,
            "--address",
            "10.0.1.1",
            "--port",
            "80",
        ],
    )
    .code(0);
    for url in [&ua, &ub] {
        let r = run(url, &["svc", "list", "-o", "json"]);
        let v = r.ok_json();
        let list = v.as_array().cloned().unwrap_or_default();
        let count = |name: &str| {
            list.iter()
                .find(|e| e["service"] == name)
                .map(|e| e["instances"].clone())
        };
        r.check(count(svc) == Some(2.into()), "svc list counts 2");
        r.check(count(&other) == Some(1.into()), "svc list counts 1");
        let r = run(url, &["svc", "list"]);
        r.code(0)
            .stdout_has(svc)
            .stdout_has(&other)
            .stdout_has("service");
    }

    // svc deregister: table and JSON, then it is gone (exit 4).
    let r = run(&ub, &["svc", "deregister", svc, "second"]);
    r.code(0)
        .stdout_has(&format!("deregistered {svc} instance second"));
    let r = run(
        &ua,
        &["svc", "deregister", svc, "10.0.0.7:8080", "-o", "json"],
    );
    let v = r.ok_json();
    r.check(v["id"] == "10.0.0.7:8080", "the removed INSTANCE");
    run(&ua, &["status", "query", svc, "second"])
        .code(4)
        .stderr_has("error:");
    run(&ub, &["svc", "deregister", svc, "second"])
        .code(4)
        .stderr_has("error:");
    let r = run(&ua, &["svc", "discover", svc, "-o", "json"]);
    let v = r.ok_json();
    r.check(ids_of(&v).is_empty(), "no instances left");
    run(&ua, &["svc", "discover", svc, "--pick", "best"])
        .code(4)
        .stderr_has("error:");
}

#[test]
fn ttl_turns_an_instance_critical() {
    let (_da, _db, a, b) = two_node_ring();
    let svc = service_owned_by(&a.url(), "beat", &b.id, &a.id);
    run(
        &a.url(),
        &[
            "svc",
            "register",
            &svc,
            "--address",
            "10.0.2.1",
            "--port",
            "1",
            "--ttl",
            "1",
        ],
    )
    .code(0);
    poll(SETTLE, "a 1 s TTL without reports turns critical", || {
        let r = run(
            &a.url(),
            &["status", "query", &svc, "10.0.2.1:1", "-o", "json"],
        );
        let v = r.ok_json();
        match v["status"]["state"].as_str() {
            Some("critical") => Ok(()),
            other => Err(format!("state {other:?}")),
        }
    });
    let r = run(
        &b.url(),
        &["svc", "discover", &svc, "--healthy", "-o", "json"],
    );
    let v = r.ok_json();
    r.check(ids_of(&v).is_empty(), "critical is not healthy");
    // A report is the heartbeat: passing again.
    let r = run(
        &b.url(),
        &[
            "status",
            "report",
            &svc,
            "10.0.2.1:1",
            "--state",
            "passing",
            "-o",
            "json",
        ],
    );
    let v = r.ok_json();
    r.check(v["status"]["state"] == "passing", "renewed");
}

#[test]
fn errors_and_exit_codes() {
    let (_da, _db, a, _b) = two_node_ring();
    let url = a.url();

    // Not found: 4, one `error:` line on stderr, nothing on stdout.
    for args in [
        &["status", "query", "nosuch"][..],
        &["status", "query", "nosuch", "x"],
        &["svc", "discover", "nosuch"],
        &["svc", "deregister", "nosuch", "x"],
        &["status", "report", "nosuch", "x", "--state", "passing"],
    ] {
        let r = run(&url, args);
        r.code(4).stderr_has("error:");
        r.check(r.stdout().is_empty(), "nothing on stdout");
    }

    // Usage errors caught by the CLI: 2.
    for args in [
        &["svc", "register", "s", "--address", "h", "--port", "70000"][..],
        &["svc", "register", "s", "--address", "h", "--port", "0"],
        &["svc", "register", "s", "--port", "80"],
        &[
            "svc",
            "register",
            "s",
            "--address",
            "h",
            "--port",
            "1",
            "--ttl",
            "0",
        ],
        &[
            "svc",
            "register",
            "s",
            "--address",
            "h",
            "--port",
            "1",
            "--weight",
            "10001",
        ],
        &[
            "svc",
            "register",
            "s",
            "--address",
            "h",
            "--port",
            "1",
            "--meta",
            "novalue",
        ],
        &["svc", "discover", "s", "--pick", "bogus"],
        &["status", "report", "s", "i", "--state", "sleepy"],
        &[
            "status",
            "report",
            "s",
            "i",
            "--state",
            "passing",
            "--success-rate",
            "2",
        ],
        &["ring", "show", "-o", "yaml"],
        &["ring", "bogus"],
    ] {
        run(&url, args).code(2);
    }

    // Bad input the agent refuses (400): 1, with the agent's message.
    for args in [
        &[
            "svc",
            "register",
            "bad!name",
            "--address",
            "h",
            "--port",
            "1",
        ][..],
        &["svc", "register", "s", "--address", "a b", "--port", "1"],
        &["svc", "discover", "bad!name"],
    ] {
        let r = run(&url, args);
        r.code(1).stderr_has("error:");
        r.check(r.stdout().is_empty(), "nothing on stdout");
    }
}

#[test]
fn unreachable_agent_exits_3() {
    let (_refusing, addr) = crate::support::testing::refused_addr();
    let url = format!("http://{addr}");
    for args in [
        &["ring", "show"][..],
        &["ring", "node", "-o", "json"],
        &["locate", "payments"],
        &["svc", "list"],
        &["svc", "register", "s", "--address", "h", "--port", "1"],
        &["status", "query", "s"],
    ] {
        let r = run(&url, args);
        r.code(3).stderr_has("error:");
        r.check(r.stdout().is_empty(), "nothing on stdout");
    }
    // A bad agent URL is a usage error, not unreachable.
    run("ftp://127.0.0.1:1", &["ring", "show"]).code(2);
}

#[test]
fn ring_leave_stops_the_agent_and_hands_records_over() {
    let (_da, _db, a, mut b) = two_node_ring();
    let svc = service_owned_by(&a.url(), "handoff", &b.id, &a.id);
    run(
        &a.url(),
        &[
            "svc",
            "register",
            &svc,
            "--address",
            "10.0.3.1",
            "--port",
            "443",
        ],
    )
    .code(0);

    let r = run(&b.url(), &["ring", "leave"]);
    r.code(0).stdout_has("is leaving the ring");
    let status = poll(SETTLE, "the agent exits after ring leave", || {
        match b.child.try_wait() {
            Ok(Some(status)) => Ok(status),
            Ok(None) => Err("still running".into()),
            Err(e) => Err(e.to_string()),
        }
    });
    assert_eq!(status.code(), Some(0), "ring leave exits 0");

    let ids = poll(SETTLE, "the ring closes to one node", || {
        let ids = settled_ring(&a.url())?;
        if ids.len() == 1 {
            Ok(ids)
        } else {
            Err(format!("{ids:?}"))
        }
    });
    assert_eq!(ids, vec![a.id.clone()]);
    assert_eq!(owner_of(&a.url(), &svc), a.id);
    let r = run(&a.url(), &["svc", "discover", &svc, "-o", "json"]);
    let v = r.ok_json();
    r.check(
        ids_of(&v) == strings(&["10.0.3.1:443"]),
        "the record moved to the remaining node",
    );
    run(&b.url(), &["ring", "show"]).code(3);
}

/// API.md: a key's replicas are the next nodes on the owner's successor list, so with the
/// default `--replicas 3` on a ring of two the other node is the one replica (the key's
/// predecessor, where the successor list wraps).
#[test]
fn locate_lists_the_other_node_as_replica_on_two_nodes() {
    let (_da, _db, a, b) = two_node_ring();
    for key in ["payments", "orders", "x"] {
        let r = run(&a.url(), &["locate", key, "-o", "json"]);
        let v = r.ok_json();
        let owner = v["owner"]["id"].as_str().unwrap_or_default().to_string();
        let other = if owner == a.id { &b.id } else { &a.id };
        r.check(
            v["replicas"][0]["id"] == other.as_str(),
            "the other node is the replica",
        );
        run(&a.url(), &["locate", key])
            .code(0)
            .stdout_has("replica 1");
    }
}

/// A script that starts three agents with `--replicas 3` and registers at once: the ring is
/// still stabilizing (the first agent's successor list is empty), and every write used to be
/// refused with "cannot reach its write quorum". The owner now waits for its replica set to
/// form, so each registration is acknowledged (exit 0).
#[test]
fn writes_sent_the_moment_a_ring_of_three_starts_are_acknowledged() {
    let dirs = [tempdir(), tempdir(), tempdir()];
    let start = |seed: Option<&str>, dir: &TempDir| {
        let data = dir.path().to_string_lossy().into_owned();
        AgentProc::start(seed, &["--data-dir", &data, "--replicas", "3"])
    };
    let a = start(None, &dirs[0]);
    let b = start(Some(&a.ring), &dirs[1]);
    let c = start(Some(&a.ring), &dirs[2]);
    let ua = a.url();
    for i in 0..8 {
        let svc = format!("early-{i}");
        run(
            &ua,
            &[
                "svc",
                "register",
                &svc,
                "--address",
                "10.0.0.1",
                "--port",
                "80",
                "-o",
                "json",
            ],
        )
        .ok_json();
    }
    // And each is found through every agent.
    for url in [&ua, &b.url(), &c.url()] {
        for i in 0..8 {
            let svc = format!("early-{i}");
            poll(SETTLE, "an early registration is found", || {
                let v = run(url, &["svc", "discover", &svc, "-o", "json"]).json();
                let n = v["instances"].as_array().map_or(0, Vec::len);
                (n == 1)
                    .then_some(())
                    .ok_or(format!("{svc} through {url}: {v}"))
            });
        }
    }
}

#[test]
fn agent_dev_runs_three_nodes_and_stops_on_sigterm() {
    let mut cmd = Command::new(bin());
    cmd.args([
        "agent",
        "dev",
        "--nodes",
        "3",
        "--stabilize-ms",
        "100",
        "--rpc-timeout-ms",
        "500",
    ])
    .env("RUST_LOG", "warn")
    .env_remove("CHORDCTL_AGENT")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    let _tmp = crate::support::procs::private_tmp(&mut cmd);
    let mut dev = Reaped(
        cmd.spawn()
            .unwrap_or_else(|e| panic!("spawn agent dev: {e}")),
    );
    let stdout = dev.0.stdout.take().unwrap_or_else(|| panic!("no stdout"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let started = Instant::now();
    let mut printed = Vec::new();
    let url = loop {
        let left = SETTLE.saturating_sub(started.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(url) = line.strip_prefix("export CHORDCTL_AGENT=") {
                    break url.trim().to_string();
                }
                printed.push(line);
            }
            Err(e) => panic!("no export line within {SETTLE:?} ({e}); stdout so far: {printed:#?}"),
        }
    };
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    // One table: a header, then one row per node (ring, HTTP and DNS addresses).
    assert!(
        printed.first().is_some_and(|h| h.starts_with("ID")),
        "{printed:#?}"
    );
    let nodes = printed.iter().filter(|l| l.contains("127.0.0.1:")).count();
    assert_eq!(nodes, 3, "one row per node: {printed:#?}");

    // The export line is printed once the ring has settled: usable at once, no waiting.
    let ids = settled_ring(&url).unwrap_or_else(|e| panic!("right after the export line: {e}"));
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), 3);
    let r = run(&url, &["ring", "show", "-o", "json"]);
    let v = r.ok_json();
    r.check(v.as_array().is_some_and(|a| a.len() == 3), "3 nodes");
    run(
        &url,
        &[
            "svc",
            "register",
            "dev-svc",
            "--address",
            "h",
            "--port",
            "1",
        ],
    )
    .code(0);

    unsafe {
        libc::kill(dev.0.id() as i32, libc::SIGTERM);
    }
    let status = poll(
        Duration::from_secs(20),
        "agent dev exits on SIGTERM",
        || match dev.0.try_wait() {
            Ok(Some(status)) => Ok(status),
            Ok(None) => Err("still running".into()),
            Err(e) => Err(e.to_string()),
        },
    );
    assert_eq!(status.code(), Some(0), "agent dev exits 0 on SIGTERM");
}
