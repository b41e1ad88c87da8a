//! Every instance its own unit: a write costs the same in a big service as in a small one (on
//! both stores), writes to one service are committed in groups and survive SIGKILL of the
//! owner and then of a replica, the change index (`X-Chordctl-Index`) only grows, and a data
//! directory written by 0.1.0 is converted at start.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chordctl::agent::{self, AgentHandle, Start};
use chordctl::ring::Id;
use serde_json::{json, Value};

use crate::support::cluster::{redis_config, test_config, TestCluster};
use crate::support::http::{call, call_ok};
use crate::support::procs::{self, ring_order, AgentProc};
use crate::support::redis::RedisServer;
use crate::support::{eventually, until_acknowledged};

async fn put(url: &str, service: &str, id: &str, body: Value) -> (u16, Value) {
    call(
        "PUT",
        &format!("{url}/v1/services/{service}/instances/{id}"),
        Some(body),
    )
    .await
}

/// Register `n` instances `i0..` into `service`, 16 at a time.
async fn fill(url: &str, service: &str, n: usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (url, service, next) = (url.to_string(), service.to_string(), next.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return;
                    }
                    let r = client
                        .put(format!("{url}/v1/services/{service}/instances/i{i}"))
                        .json(&json!({"address": "10.0.0.1", "port": 1 + (i % 60000)}))
                        .send()
                        .await
                        .expect("register");
                    assert_eq!(r.status().as_u16(), 200, "register {service}/i{i}");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("filler");
    }
}

/// Store bytes (read, written) that `f` cost the agent.
async fn cost<T>(h: &AgentHandle, f: impl std::future::Future<Output = T>) -> (u64, u64) {
    let (r0, w0) = h.agent().metrics.store_bytes();
    f.await;
    let (r1, w1) = h.agent().metrics.store_bytes();
    (r1 - r0, w1 - w0)
}

/// Register a new instance, report on it, deregister it: each one's store cost in `service`.
async fn three_writes(h: &AgentHandle, service: &str) -> [(u64, u64); 3] {
    let instance = format!(
        "http://{}/v1/services/{service}/instances/new-one",
        h.http_addr()
    );
    let status = format!("{instance}/status");
    let register = json!({"address": "h", "port": 7});
    let report = json!({"state": "warning", "latency_ms": 3.5});
    [
        cost(h, call_ok("PUT", &instance, Some(register))).await,
        cost(h, call_ok("PUT", &status, Some(report))).await,
        cost(h, call_ok("DELETE", &instance, None)).await,
    ]
}

/// The store cost of writes into a 2,000-instance service equals that into a 10-instance one.
async fn writes_cost_the_same_whatever_the_size(cfg: agent::AgentConfig) {
    let h = agent::start(cfg).await.expect("start");
    let url = format!("http://{}", h.http_addr());
    fill(&url, "small", 10).await;
    fill(&url, "big", 2_000).await;
    let small = three_writes(&h, "small").await;
    let big = three_writes(&h, "big").await;
    for (what, (s, b)) in ["register", "status report", "deregister"]
        .iter()
        .zip(small.iter().zip(big.iter()))
    {
        // Same bytes but for the service name's length ("big" is shorter than "small").
        assert!(
            b.1 <= s.1 + 16 && b.1 < 1024,
            "{what}: {} bytes written in the big service, {} in the small one",
            b.1,
            s.1
        );
        assert!(
            b.0 <= s.0 + 16 && b.0 < 1024,
            "{what}: {} bytes read in the big service, {} in the small one",
            b.0,
            s.0
        );
    }
    // TTL expiry of one instance among 2,000: one unit too.
    let (st, body) = put(
        &url,
        "big",
        "beat",
        json!({"address": "h", "port": 9, "ttl_secs": 1}),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let (r0, w0) = h.agent().metrics.store_bytes();
    let u = url.clone();
    eventually(
        "the TTL instance turns critical",
        Duration::from_secs(30),
        async || {
            let (_, v) = call("GET", &format!("{u}/v1/services/big/instances/beat"), None).await;
            (v["status"]["state"] == "critical")
                .then_some(())
                .ok_or(format!("{v}"))
        },
    )
    .await;
    let (r1, w1) = h.agent().metrics.store_bytes();
    assert!(
        w1 - w0 < 1024 && r1 - r0 < 1024,
        "expiry of one instance among 2,000: {} bytes written, {} read",
        w1 - w0,
        r1 - r0
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_costs_the_same_in_big_and_small_services_on_the_embedded_store() {
    let dir = tempfile::tempdir().expect("tmp");
    writes_cost_the_same_whatever_the_size(test_config(Start::Create, dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_costs_the_same_in_big_and_small_services_on_redis() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = redis_config(&redis.url(), dir.path());
    writes_cost_the_same_whatever_the_size(cfg).await;
}

fn index_of(headers: &reqwest::header::HeaderMap) -> u64 {
    headers
        .get("x-chordctl-index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("an X-Chordctl-Index header")
}

async fn discover_index(url: &str, service: &str) -> (u16, u64) {
    let r = reqwest::get(format!("{url}/v1/services/{service}"))
        .await
        .expect("discover");
    (r.status().as_u16(), index_of(r.headers()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_index_grows_with_every_change_and_across_an_owner_change() {
    let mut c = TestCluster::start(3).await;
    c.settle().await;
    let url = c.url(0);
    assert_eq!(
        discover_index(&url, "indexed").await,
        (404, 0),
        "never existed"
    );
    let client = reqwest::Client::new();
    let mut last = 0;
    for (i, (method, path, body)) in [
        (
            "PUT",
            "instances/a",
            Some(json!({"address": "h", "port": 1})),
        ),
        (
            "PUT",
            "instances/b",
            Some(json!({"address": "h", "port": 2})),
        ),
        (
            "PUT",
            "instances/a/status",
            Some(json!({"state": "warning"})),
        ),
        ("DELETE", "instances/b", None),
    ]
    .into_iter()
    .enumerate()
    {
        let mut req = client.request(
            method.parse().expect("method"),
            format!("{}/v1/services/indexed/{path}", c.url(i % 3)),
        );
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.expect("write");
        assert_eq!(r.status().as_u16(), 200);
        let index = index_of(r.headers());
        assert!(index > last, "{method} {path}: index {index} after {last}");
        last = index;
        for n in 0..3 {
            let (st, seen) = discover_index(&c.url(n), "indexed").await;
            assert_eq!((st, seen), (200, last), "discover through agent {n}");
        }
    }
    // The owner leaves: the new owner continues above the index.
    let owner = c.true_owner(&Id::of_key("indexed"));
    let owner_ix = (0..c.nodes.len())
        .find(|i| c.nodes[*i].as_ref().is_some_and(|h| h.node().id == owner))
        .expect("owner index");
    c.leave(owner_ix).await;
    let other = c.url((owner_ix + 1) % 3);
    let (st, seen) = discover_index(&other, "indexed").await;
    assert_eq!(st, 200);
    assert!(seen >= last, "index went back from {last} to {seen}");
    let r = client
        .put(format!("{other}/v1/services/indexed/instances/c"))
        .json(&json!({"address": "h", "port": 3}))
        .send()
        .await
        .expect("write");
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        index_of(r.headers()) > seen,
        "the new owner continues above"
    );
}

/// The first acknowledged id (`cC-I`, client C's I-th write, below `acked[C]`) not in `have`.
fn first_missing(acked: &[AtomicUsize], have: &HashSet<String>) -> Option<String> {
    acked.iter().enumerate().find_map(|(c, n)| {
        (0..n.load(Ordering::SeqCst))
            .map(|i| format!("c{c}-{i}"))
            .find(|id| !have.contains(id))
    })
}

/// 32 clients write to one service through one agent of three (K=3) as fast as they can; the
/// owner is killed with SIGKILL, then, once repair has made the third copy again, one of the
/// two remaining copies: every acknowledged registration is still served.
#[test]
fn group_commit_under_32_writers_survives_sigkill_of_the_owner_then_of_a_replica() {
    let mut agents = vec![AgentProc::start(None, &["--replicas", "3"])];
    for _ in 0..3 {
        let seed = agents[0].ring.clone();
        agents.push(AgentProc::start(Some(&seed), &["--replicas", "3"]));
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let u0 = agents[0].url();
    rt.block_on(eventually("4 nodes", Duration::from_secs(60), async || {
        let (_, v) = call("GET", &format!("{u0}/v1/ring/nodes"), None).await;
        let n = v.as_array().map(Vec::len).unwrap_or(0);
        (n == 4).then_some(()).ok_or(format!("{n} nodes"))
    }));
    let order = ring_order(&agents, "hot");
    let (owner, replica) = (order[0], order[1]);
    let writer = order[3]; // the owner's predecessor: not a holder of a copy
    let url = agents[writer].url();
    const CLIENTS: usize = 32;
    let acked: Arc<Vec<AtomicUsize>> =
        Arc::new((0..CLIENTS).map(|_| AtomicUsize::new(0)).collect());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (url, acked, stop) = (url.clone(), acked.clone(), stop.clone());
            rt.spawn(async move {
                let client = reqwest::Client::new();
                for i in 0..100_000 {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let sent = client
                        .put(format!("{url}/v1/services/hot/instances/c{c}-{i}"))
                        .json(&json!({"address": "10.4.0.1", "port": 1 + c}))
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status().as_u16() == 200 => {
                            acked[c].store(i + 1, Ordering::SeqCst)
                        }
                        // Not acknowledged (the owner died under it): this client stops here.
                        _ => return,
                    }
                }
            })
        })
        .collect();
    until_acknowledged(&acked, 1_500);
    agents[owner].kill9();
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for c in clients {
            c.await.expect("client task");
        }
    });
    let expected: usize = acked.iter().map(|a| a.load(Ordering::SeqCst)).sum();
    let check = |url: String, what: &'static str| {
        let acked = acked.clone();
        rt.block_on(eventually(what, Duration::from_secs(90), async || {
            let (st, v) = call("GET", &format!("{url}/v1/services/hot"), None).await;
            if st != 200 {
                return Err(format!("{st}: {v}"));
            }
            let have: HashSet<String> = v["instances"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|i| i["id"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            first_missing(&acked, &have).map_or(Ok(()), |id| {
                Err(format!("{id} missing of {expected} acknowledged"))
            })
        }));
    };
    check(
        url.clone(),
        "every acknowledged write after SIGKILL of the owner",
    );
    // A second crash keeps every acknowledged write once repair has run between the two
    // (docs/CONSISTENCY.md): the new owner's two replicas, the nodes left after the next
    // kill, hold every one again (K copies) before it.
    let pool = chordctl::rpc::Pool::new(Duration::from_secs(10));
    let holders = [&agents[order[2]], &agents[writer]];
    rt.block_on(eventually(
        "every acknowledged write on the new owner's replicas (K copies again)",
        Duration::from_secs(90),
        async || {
            let records = procs::records_at(&pool, holders, "hot").await?;
            for (holder, rec) in holders.iter().zip(records) {
                let have: HashSet<String> = rec
                    .map(|r| r.unit_ids().map(|id| id.to_string()).collect())
                    .unwrap_or_default();
                if let Some(id) = first_missing(&acked, &have) {
                    return Err(format!("{} lacks {id}", holder.ring));
                }
            }
            Ok(())
        },
    ));
    agents[replica].kill9();
    check(
        url,
        "every acknowledged write after SIGKILL of a replica too",
    );
    println!("{expected} registrations acknowledged into one service by 32 writers");
}

/// tests/fixtures/v0.1.0-data.tar.gz unpacked into `dir`: the data directory it holds.
fn unpack_0_1_0_fixture(dir: &std::path::Path) -> std::path::PathBuf {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/v0.1.0-data.tar.gz"
    );
    let out = std::process::Command::new("tar")
        .args(["xzf", fixture, "-C"])
        .arg(dir)
        .output()
        .expect("tar");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join("data")
}

/// The fixture's `search` and the prototype's `legacy`, as the agent at `url` serves them
/// once converted.
async fn search_and_legacy_converted(url: &str) {
    let (st, v) = call("GET", &format!("{url}/v1/services/search"), None).await;
    assert_eq!(
        (st, v["instances"][0]["id"].clone()),
        (200, json!("10.0.1.1:9000"))
    );
    let (st, v) = call("GET", &format!("{url}/v1/services/legacy"), None).await;
    assert_eq!((st, v["instances"][0]["port"].clone()), (200, json!(0)));
}

/// A Redis database written by chordctl 0.1.0: the fixture's records as 0.1.0 kept them in
/// Redis (`chordctl:NODEID:svc/NAME`, one record per service, and no key index, which came
/// later) are indexed and converted when an agent with that node id starts on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_converts_a_redis_database_written_by_0_1_0() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let data = unpack_0_1_0_fixture(dir.path());
    let legacy = {
        let fixture = chordctl::store::open(None, &data, "fixture")
            .await
            .expect("open the fixture's store");
        fixture.scan_prefix("svc/").await.expect("scan the fixture")
    };
    assert_eq!(legacy.len(), 3, "payments, search and legacy");
    // The node id is the advertised address's: the same address, the same keys.
    let advertise = "127.0.0.1:7399".to_string();
    let node = Id::of_addr(&advertise).to_hex();
    let client = ::redis::Client::open(redis.url()).expect("redis url");
    let mut con = client.get_connection().expect("connect to redis-server");
    for (key, value) in &legacy {
        let () = ::redis::cmd("SET")
            .arg(format!("chordctl:{node}:{key}"))
            .arg(value.as_slice())
            .query(&mut con)
            .expect("SET a 0.1.0 record");
    }
    let cfg = agent::AgentConfig {
        advertise: Some(advertise),
        ..redis_config(&redis.url(), &dir.path().join("agent"))
    };
    let h = agent::start(cfg)
        .await
        .expect("start on a 0.1.0 Redis database");
    let url = format!("http://{}", h.http_addr());
    search_and_legacy_converted(&url).await;
    let (st, v) = call("GET", &format!("{url}/v1/services/payments"), None).await;
    let ids: Vec<&str> = v["instances"]
        .as_array()
        .map(|a| a.iter().filter_map(|i| i["id"].as_str()).collect())
        .unwrap_or_default();
    assert!(st == 200 && ids.contains(&"10.0.0.7:8080"), "{st} {v}");
    let old = h.agent().registry.store().scan_prefix("svc/").await;
    assert_eq!(old.expect("scan"), Vec::new(), "old layout gone");
    h.shutdown().await;
}

/// A data directory written by chordctl 0.1.0 (tests/fixtures/v0.1.0-data.tar.gz: services
/// `payments` (two instances, one with a TTL whose lease has lapsed since, a third
/// deregistered), `search`, and the prototype's `legacy`) is converted at start: everything
/// served as before (the lapsed lease expired by the TTL sweep), and the old layout is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_converts_a_data_directory_written_by_0_1_0() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = unpack_0_1_0_fixture(dir.path());
    let cfg = test_config(Start::Create, &data);
    let h = agent::start(cfg.clone())
        .await
        .expect("start on a 0.1.0 data directory");
    let url = format!("http://{}", h.http_addr());
    // 10.0.0.8:8080 was registered with a TTL of 3600 s and last reported when the fixture was
    // made (2026-12-05 11:48:58 UTC). Its lease lapsed long ago, so the converted agent expires
    // it once the grace period (ten TTLs) is over: it kept its TTL through the conversion.
    // 10.0.0.7:8080 has no TTL and stays; the deregistered 10.0.0.9:8080 stays gone.
    let ids_of = |v: &Value| -> Vec<String> {
        v["instances"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|i| i["id"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut v = Value::Null;
    eventually(
        "the lapsed lease of 10.0.0.8:8080 expired, the rest as converted",
        Duration::from_secs(60),
        async || {
            let (st, got) = call("GET", &format!("{url}/v1/services/payments"), None).await;
            v = got;
            (st == 200 && ids_of(&v) == ["10.0.0.7:8080"])
                .then_some(())
                .ok_or(format!("{st} {v}"))
        },
    )
    .await;
    let a = &v["instances"][0];
    assert_eq!(a["tags"], json!(["v2"]));
    assert_eq!(a["metadata"], json!({"zone": "a"}));
    assert_eq!(a["status"]["state"], "warning");
    assert_eq!(a["status"]["latency_ms"], 12.0);
    search_and_legacy_converted(&url).await;
    // The index continues from 0.1.0's record version (payments had 5 writes).
    let (_, index) = discover_index(&url, "payments").await;
    assert!(index >= 5, "index {index}");
    let old = h.agent().registry.store().scan_prefix("svc/").await;
    assert_eq!(old.expect("scan"), Vec::new(), "old layout gone");
    // A deregistered instance registers again; everything survives a restart.
    let (st, body) = put(
        &url,
        "payments",
        "10.0.0.9:8080",
        json!({"address": "10.0.0.9", "port": 8080}),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    // The same identity, new ports (see the restart test in registry.rs).
    let advertise = Some(h.node().addr);
    h.shutdown().await;
    let h = agent::start(agent::AgentConfig { advertise, ..cfg })
        .await
        .expect("restart");
    let url = format!("http://{}", h.http_addr());
    let (_, v) = call("GET", &format!("{url}/v1/services/payments"), None).await;
    assert_eq!(ids_of(&v), ["10.0.0.7:8080", "10.0.0.9:8080"], "{v}");
    let (_, after) = discover_index(&url, "payments").await;
    assert!(after > index, "index {after} after {index}");
    h.shutdown().await;
}
