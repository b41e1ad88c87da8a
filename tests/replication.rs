//! No registration lost: replicas on the successor list, repair after crashes.

use std::time::{Duration, Instant};

use chordctl::registry::ops::{RegistryRequest, RegistryResponse};
use chordctl::ring::Id;
use chordctl::rpc::{Pool, Request, Response};
use serde_json::json;

use crate::support::cluster::TestCluster;
use crate::support::http::call;
use crate::support::procs::{free_addr, ring_of, ring_order, three_with_a_slow_second, AgentProc};
use crate::support::{eventually, expect_ttl_expiry, until_acknowledged};

async fn count(url: &str, service: &str) -> usize {
    let (st, body) = call("GET", &format!("{url}/v1/services/{service}"), None).await;
    if st != 200 {
        return 0;
    }
    body["instances"].as_array().map(Vec::len).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_acknowledged_then_its_owner_killed_at_once_survives() {
    let mut c = TestCluster::start(5).await;
    c.settle().await;
    let owner = c.true_owner(&Id::of_key("precious"));
    let owner_ix = (0..c.nodes.len())
        .find(|i| c.nodes[*i].as_ref().is_some_and(|h| h.node().id == owner))
        .expect("owner index");
    let other = (owner_ix + 1) % 5;
    let (st, body) = call(
        "PUT",
        &format!("{}/v1/services/precious/instances/a", c.url(other)),
        Some(json!({"address": "10.0.0.1", "port": 80})),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    c.kill(owner_ix).await;
    let url = c.url(other);
    eventually(
        "the write survives its owner's crash",
        Duration::from_secs(60),
        async || {
            let n = count(&url, "precious").await;
            (n == 1).then_some(()).ok_or(format!("{n} instances"))
        },
    )
    .await;
}

#[test]
fn eight_agents_kill_9_two_non_adjacent_lose_none_of_1000_instances() {
    let first = AgentProc::start(None, &[]);
    let mut agents = vec![first];
    for _ in 0..7 {
        let seed = agents[0].ring.clone();
        agents.push(AgentProc::start(Some(&seed), &[]));
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let urls: Vec<String> = agents.iter().map(|a| a.url()).collect();
        // Wait until the ring knows all 8.
        let u0 = urls[0].clone();
        eventually("8 nodes in the ring", Duration::from_secs(60), async || {
            let (_, v) = call("GET", &format!("{u0}/v1/ring/nodes"), None).await;
            let n = v.as_array().map(Vec::len).unwrap_or(0);
            (n == 8).then_some(()).ok_or(format!("{n} nodes"))
        })
        .await;
        // 1,000 instances across 50 services, through every agent, 50 at a time.
        let mut tasks = Vec::new();
        for s in 0..50 {
            let url = urls[s % 8].clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..20 {
                    let (st, body) = call(
                        "PUT",
                        &format!("{url}/v1/services/r-{s}/instances/i{i}"),
                        Some(json!({"address": "10.1.0.1", "port": 1000 + i})),
                    )
                    .await;
                    assert_eq!(st, 200, "{body}");
                }
            }));
        }
        for t in tasks {
            t.await.expect("register task");
        }
    });
    // Kill -9 two non-adjacent nodes (positions 1 and 4 in identifier order).
    let mut order: Vec<usize> = (0..8).collect();
    order.sort_by(|a, b| agents[*a].id.cmp(&agents[*b].id));
    let (k1, k2) = (order[1], order[4]);
    agents[k1].kill9();
    agents[k2].kill9();
    let survivors: Vec<String> = (0..8)
        .filter(|i| *i != k1 && *i != k2)
        .map(|i| agents[i].url())
        .collect();
    rt.block_on(async {
        for url in &survivors {
            eventually(
                "nothing lost after kill -9 of two nodes",
                Duration::from_secs(90),
                async || {
                    for s in 0..50 {
                        let n = count(url, &format!("r-{s}")).await;
                        if n != 20 {
                            return Err(format!("r-{s} from {url}: {n} instances"));
                        }
                    }
                    Ok(())
                },
            )
            .await;
        }
    });
}

/// Register `services × per` instances through the given agents, `services` at a time.
async fn register_many(urls: &[String], prefix: &str, services: usize, per: u16) {
    let mut tasks = Vec::new();
    for s in 0..services {
        let url = urls[s % urls.len()].clone();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                let (st, body) = call(
                    "PUT",
                    &format!("{url}/v1/services/{prefix}-{s}/instances/i{i}"),
                    Some(json!({"address": "10.2.0.1", "port": 1000 + i})),
                )
                .await;
                assert_eq!(st, 200, "{body}");
            }
        }));
    }
    for t in tasks {
        t.await.expect("register task");
    }
}

/// Every service has all its instances, read through `url`.
async fn all_there(url: &str, prefix: &str, services: usize, per: usize) -> Result<(), String> {
    for s in 0..services {
        let n = count(url, &format!("{prefix}-{s}")).await;
        if n != per {
            return Err(format!("{prefix}-{s} from {url}: {n} of {per} instances"));
        }
    }
    Ok(())
}

async fn ring_size(url: &str) -> usize {
    let (_, v) = call("GET", &format!("{url}/v1/ring/nodes"), None).await;
    v.as_array().map(Vec::len).unwrap_or(0)
}

#[test]
fn after_repair_kill_9_of_k_minus_1_adjacent_nodes_loses_nothing() {
    let mut agents = vec![AgentProc::start(None, &[])];
    for _ in 0..5 {
        let seed = agents[0].ring.clone();
        agents.push(AgentProc::start(Some(&seed), &[]));
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let urls: Vec<String> = agents.iter().map(|a| a.url()).collect();
    rt.block_on(async {
        let u = urls[0].clone();
        eventually("6 nodes", Duration::from_secs(60), async || {
            let n = ring_size(&u).await;
            (n == 6).then_some(()).ok_or(format!("{n} nodes"))
        })
        .await;
        register_many(&urls, "adj", 30, 10).await;
        // Let repair and anti-entropy settle: every record everywhere it belongs.
        let u = urls[0].clone();
        eventually("all registered", Duration::from_secs(60), async || {
            all_there(&u, "adj", 30, 10).await
        })
        .await;
    });
    // K = 3 (default): kill 2 adjacent nodes in identifier order.
    let mut order: Vec<usize> = (0..6).collect();
    order.sort_by(|a, b| agents[*a].id.cmp(&agents[*b].id));
    let (k1, k2) = (order[2], order[3]);
    agents[k1].kill9();
    agents[k2].kill9();
    let survivors: Vec<String> = (0..6)
        .filter(|i| *i != k1 && *i != k2)
        .map(|i| urls[i].clone())
        .collect();
    rt.block_on(async {
        for url in &survivors {
            eventually(
                "nothing lost after kill -9 of K-1 adjacent nodes",
                Duration::from_secs(90),
                async || all_there(url, "adj", 30, 10).await,
            )
            .await;
        }
    });
}

#[test]
fn a_rolling_restart_of_every_node_loses_nothing() {
    let addrs: Vec<(String, String)> = (0..4).map(|_| (free_addr(), free_addr())).collect();
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().expect("tmp")).collect();
    let start = |i: usize, seed: Option<&str>| {
        let dir = dirs[i].path().to_str().expect("utf-8 path").to_string();
        AgentProc::start_at(seed, &addrs[i].0, &addrs[i].1, &["--data-dir", &dir])
    };
    let mut agents: Vec<AgentProc> = vec![start(0, None)];
    for i in 1..4 {
        let seed = addrs[0].0.clone();
        agents.push(start(i, Some(&seed)));
    }
    let urls: Vec<String> = agents.iter().map(|a| a.url()).collect();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let u = urls[0].clone();
        eventually("4 nodes", Duration::from_secs(60), async || {
            let n = ring_size(&u).await;
            (n == 4).then_some(()).ok_or(format!("{n} nodes"))
        })
        .await;
        register_many(&urls, "roll", 20, 10).await;
    });
    for i in 0..4 {
        // Stop node i gracefully, restart it on the same addresses and data, through a
        // node that stayed up; wait until the ring is whole again before the next one.
        let status = agents[i].terminate().expect("agent exits after SIGTERM");
        assert!(status.success());
        let seed = addrs[(i + 1) % 4].0.clone();
        agents[i] = start(i, Some(&seed));
        rt.block_on(async {
            for url in &urls {
                eventually("ring whole again", Duration::from_secs(60), async || {
                    let n = ring_size(url).await;
                    (n == 4).then_some(()).ok_or(format!("{n} nodes"))
                })
                .await;
            }
            for url in &urls {
                eventually(
                    "nothing lost during the rolling restart",
                    Duration::from_secs(60),
                    async || all_there(url, "roll", 20, 10).await,
                )
                .await;
            }
        });
    }
}

#[test]
fn a_node_whose_data_directory_was_wiped_gets_its_records_back() {
    let mut agents = vec![AgentProc::start(None, &[])];
    for _ in 0..3 {
        let seed = agents[0].ring.clone();
        agents.push(AgentProc::start(Some(&seed), &[]));
    }
    let (bind, http) = (free_addr(), free_addr());
    let wiped = tempfile::tempdir().expect("tmp");
    let wiped_dir = wiped.path().to_str().expect("utf-8").to_string();
    let seed = agents[0].ring.clone();
    let mut victim = AgentProc::start_at(Some(&seed), &bind, &http, &["--data-dir", &wiped_dir]);
    let urls: Vec<String> = agents.iter().map(|a| a.url()).collect();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let u = urls[0].clone();
        eventually("5 nodes", Duration::from_secs(60), async || {
            let n = ring_size(&u).await;
            (n == 5).then_some(()).ok_or(format!("{n} nodes"))
        })
        .await;
        register_many(&urls, "wipe", 30, 5).await;
    });
    // Which services does the victim own? Those must come back to it.
    let victim_id = victim.id.clone();
    victim.kill9();
    std::fs::remove_dir_all(wiped.path()).expect("wipe the data directory");
    victim = AgentProc::start_at(Some(&seed), &bind, &http, &["--data-dir", &wiped_dir]);
    assert_eq!(victim.id, victim_id, "same address, same identifier");
    let vurl = victim.url();
    rt.block_on(async {
        eventually(
            "records back at the wiped node",
            Duration::from_secs(90),
            async || {
                // Read through the wiped node: for the services it owns, it answers from its own
                // store, so every one must be back.
                all_there(&vurl, "wipe", 30, 5).await
            },
        )
        .await;
    });
    // The ring-wide list asks every node for the services it owns by its own view; while the
    // wiped node's neighbours still settle whose arc is whose, a service can be claimed by
    // none of them for a moment. It must come back to all 30.
    rt.block_on(eventually(
        "svc list after the wipe shows every service",
        Duration::from_secs(60),
        async || {
            let (_, v) = call("GET", &format!("{vurl}/v1/services"), None).await;
            let owned_somewhere = v.as_array().map(Vec::len).unwrap_or(0);
            (owned_somewhere == 30)
                .then_some(())
                .ok_or(format!("{owned_somewhere} of 30 services listed: {v}"))
        },
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_time_after_a_crash_is_printed() {
    // A benchmark figure, not an assertion: from the kill until every record has K copies.
    let mut c = TestCluster::start(6).await;
    c.settle().await;
    let urls: Vec<String> = (0..6).map(|i| c.url(i)).collect();
    register_many(&urls, "rt", 30, 4).await;
    let k = c.node(0).agent().config.replicas;
    let copies = async |c: &TestCluster| -> Result<(), String> {
        // Every instance is its own unit under its own key: count the copies of each.
        for s in 0..30 {
            for i in 0..4 {
                let key = chordctl::registry::unit::unit_key(&format!("rt-{s}"), &format!("i{i}"));
                let mut n = 0;
                for h in c.live() {
                    if h.agent()
                        .registry
                        .store()
                        .get(&key)
                        .await
                        .ok()
                        .flatten()
                        .is_some()
                    {
                        n += 1;
                    }
                }
                if n < k {
                    return Err(format!("{key}: {n} copies"));
                }
            }
        }
        Ok(())
    };
    eventually(
        "K copies before the crash",
        Duration::from_secs(60),
        async || copies(&c).await,
    )
    .await;
    let t = Instant::now();
    c.kill(2).await;
    eventually(
        "K copies again after the crash",
        Duration::from_secs(90),
        async || copies(&c).await,
    )
    .await;
    println!(
        "repair time after a crash (6 agents, 30 services of 4 instances, K={k}): {:?}",
        t.elapsed()
    );
}

#[test]
fn real_agents_a_write_acknowledged_then_its_owner_killed_9_at_once_survives() {
    let mut agents = vec![AgentProc::start(None, &[])];
    for _ in 0..4 {
        let seed = agents[0].ring.clone();
        agents.push(AgentProc::start(Some(&seed), &[]));
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let u0 = agents[0].url();
    rt.block_on(eventually("5 nodes", Duration::from_secs(60), async || {
        let n = ring_size(&u0).await;
        (n == 5).then_some(()).ok_or(format!("{n} nodes"))
    }));
    let owner = ring_order(&agents, "precious-real")[0];
    let writer = (owner + 1) % 5;
    let reader = (owner + 2) % 5;
    let (st, body) = rt.block_on(call(
        "PUT",
        &format!(
            "{}/v1/services/precious-real/instances/a",
            agents[writer].url()
        ),
        Some(json!({"address": "10.0.0.1", "port": 80})),
    ));
    assert_eq!(st, 200, "{body}");
    agents[owner].kill9();
    let url = agents[reader].url();
    rt.block_on(eventually(
        "the acknowledged write survives kill -9 of its owner",
        Duration::from_secs(60),
        async || {
            let n = count(&url, "precious-real").await;
            (n == 1).then_some(()).ok_or(format!("{n} instances"))
        },
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_expiry_keeps_working_when_the_owner_changes() {
    let mut c = TestCluster::start(4).await;
    c.settle().await;
    let owner = c.true_owner(&Id::of_key("beating"));
    let owner_ix = (0..c.nodes.len())
        .find(|i| c.nodes[*i].as_ref().is_some_and(|h| h.node().id == owner))
        .expect("owner index");
    let other = (owner_ix + 1) % 4;
    let url = c.url(other);
    let sent = Instant::now();
    let (st, body) = call(
        "PUT",
        &format!("{url}/v1/services/beating/instances/x"),
        Some(json!({"address": "h", "port": 1, "ttl_secs": 1})),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    c.kill(owner_ix).await;
    // The new owner expires it: critical after one TTL, removed after the grace period —
    // not earlier, and not never.
    expect_ttl_expiry(&url, "beating", "x", sent).await;
}

/// A lone agent on the embedded store, SIGKILLed while eight clients register as fast as
/// they can: after a restart on the same data directory every registration that was
/// acknowledged is there. The last of them were only in the store's write-ahead log (redb is
/// checkpointed at most once a second), so this is its recovery at work.
#[test]
fn a_lone_agent_killed_9_under_load_keeps_every_acknowledged_registration() {
    let (bind, http) = (free_addr(), free_addr());
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().to_str().expect("utf-8 path").to_string();
    let start = || AgentProc::start_at(None, &bind, &http, &["--data-dir", &data]);
    let mut agent = start();
    let url = agent.url();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    const CLIENTS: usize = 8;
    let acked: std::sync::Arc<Vec<std::sync::atomic::AtomicUsize>> = std::sync::Arc::new(
        (0..CLIENTS)
            .map(|_| std::sync::atomic::AtomicUsize::new(0))
            .collect(),
    );
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (url, acked) = (url.clone(), acked.clone());
            rt.spawn(async move {
                let client = reqwest::Client::new();
                for i in 0..100_000 {
                    let sent = client
                        .put(format!("{url}/v1/services/crash-{c}/instances/i{i}"))
                        .json(&json!({"address": "10.3.0.1", "port": 1000 + (i % 50_000)}))
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status().as_u16() == 200 => {
                            acked[c].store(i + 1, std::sync::atomic::Ordering::SeqCst)
                        }
                        // The agent is gone: stop at the first unanswered registration.
                        _ => return,
                    }
                }
            })
        })
        .collect();
    until_acknowledged(&acked, 2_000);
    agent.kill9();
    rt.block_on(async {
        for c in clients {
            c.await.expect("client task");
        }
    });
    let agent = start();
    rt.block_on(async {
        for c in 0..CLIENTS {
            let acked = acked[c].load(std::sync::atomic::Ordering::SeqCst);
            let n = count(&agent.url(), &format!("crash-{c}")).await;
            // One more than acknowledged is allowed: a write on disk whose answer was lost.
            assert!(
                n == acked || n == acked + 1,
                "crash-{c}: {n} instances after the restart, {acked} acknowledged"
            );
        }
    });
}

/// A counter's value in `url`'s `/metrics`.
async fn counter(url: &str, name: &str) -> u64 {
    let (_, text) = call("GET", &format!("{url}/metrics"), None).await;
    text.as_str()
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_missed_one_change_of_a_big_service_gets_it_through_the_hash_tree() {
    let c = TestCluster::start(3).await;
    c.settle().await;
    let service = "tree";
    let key = Id::of_key(service);
    // The owner, then its successors in ring order. The replica cut below is the owner's
    // successor: cut from its predecessor instead, the owner would be unsure of its range and
    // rightly take no writes (which the write below sometimes met, when the predecessor check
    // ran between the cut and the write).
    let order: Vec<usize> = {
        let mut by_id: Vec<usize> = (0..3).collect();
        by_id.sort_by_key(|i| c.node(*i).agent().ring.me().id);
        let owner = c.true_owner(&key);
        let start = by_id
            .iter()
            .position(|i| c.node(*i).agent().ring.me().id == owner)
            .expect("the owner is one of the three");
        (0..3).map(|k| by_id[(start + k) % 3]).collect()
    };
    let (owner, lagging) = (order[0], order[1]);
    let url = c.url(owner);
    // 2,000 instances, 16 writes at a time.
    for batch in 0..125 {
        let writes = (0..16).map(|k| {
            let url = url.clone();
            async move {
                let id = format!("i{}", batch * 16 + k);
                call(
                    "PUT",
                    &format!("{url}/v1/services/{service}/instances/{id}"),
                    Some(json!({"address": "10.0.0.1", "port": 80})),
                )
                .await
            }
        });
        for (status, body) in futures::future::join_all(writes).await {
            assert_eq!(status, 200, "{body}");
        }
    }
    // A node's own copy, read over ring RPC as a replica is.
    let pool = Pool::new(Duration::from_secs(5));
    let copy_has = |i: usize, id: &'static str| {
        let addr = c.node(i).agent().ring.me().addr.clone();
        let pool = &pool;
        async move {
            let req = Request::Registry(RegistryRequest::ReadReplica {
                service: service.to_string(),
            });
            matches!(
                pool.call(&addr, req).await,
                Ok(Response::Registry(RegistryResponse::Record(Some(r))))
                    if r.instances.contains_key(id)
            )
        }
    };
    eventually("every copy complete", Duration::from_secs(60), async || {
        for i in 0..3 {
            if !copy_has(i, "i1999").await {
                return Err(format!("node {i} lacks i1999"));
            }
        }
        Ok(())
    })
    .await;

    // Cut the owner from one replica, change one instance, heal.
    let addr = |i: usize| c.node(i).agent().ring.me().addr.clone();
    let flat_before = counter(&url, "chordctl_antientropy_flat_comparisons_total").await;
    let tree_before = counter(&url, "chordctl_antientropy_comparisons_total").await;
    let prompted_before = prompted_rounds(&url).await;
    c.node(owner)
        .agent()
        .ring
        .pool()
        .set_blocked([addr(lagging)]);
    c.node(lagging)
        .agent()
        .ring
        .pool()
        .set_blocked([addr(owner)]);
    let (status, body) = call(
        "PUT",
        &format!("{url}/v1/services/{service}/instances/extra"),
        Some(json!({"address": "10.0.0.2", "port": 81})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(!copy_has(lagging, "extra").await, "the cut replica got it");
    c.node(owner).agent().ring.pool().set_blocked(Vec::new());
    c.node(lagging).agent().ring.pool().set_blocked(Vec::new());
    eventually(
        "the replica repaired by anti-entropy",
        Duration::from_secs(90),
        async || {
            if copy_has(lagging, "extra").await {
                Ok(())
            } else {
                Err("the cut replica still lacks the change".to_string())
            }
        },
    )
    .await;
    let flat = counter(&url, "chordctl_antientropy_flat_comparisons_total").await - flat_before;
    let tree = counter(&url, "chordctl_antientropy_comparisons_total").await - tree_before;
    assert_eq!(flat, 0, "the owner compared without the tree");
    assert!(tree > 0, "the owner made no tree comparison");
    // The owner knew its message failed: it compared at its next round, not at the periodic
    // full one (or the ring changed meanwhile, which compares too).
    assert!(
        prompted_rounds(&url).await > prompted_before,
        "the repair waited for the periodic comparison"
    );
}

/// Anti-entropy rounds the agent at `url` ran because it knew of a reason to compare: a
/// replica that may lack a change, or a change of the ring.
async fn prompted_rounds(url: &str) -> u64 {
    counter(
        url,
        "chordctl_antientropy_rounds_total{reason=\"unsynced\"}",
    )
    .await
        + counter(
            url,
            "chordctl_antientropy_rounds_total{reason=\"ring_change\"}",
        )
        .await
}

/// The sum of `name` over every agent of `urls`.
async fn counter_sum(urls: &[String], name: &str) -> u64 {
    let mut sum = 0;
    for url in urls {
        sum += counter(url, name).await;
    }
    sum
}

#[test]
fn a_slow_replica_gets_many_groups_per_message_and_every_write_lands() {
    // One of three agents stores every batch 150 ms late (a slow disk). The owners' streams
    // to it have two messages out at a time; what queues meanwhile must leave together.
    let agents = three_with_a_slow_second("150");
    let urls: Vec<String> = agents.iter().map(AgentProc::url).collect();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        ring_of(&urls, 3).await;
        let groups_before = counter_sum(&urls, "chordctl_replication_groups_total").await;
        let messages_before = counter_sum(&urls, "chordctl_replication_messages_total").await;
        // 96 new instances over 32 services, all at once, through the first agent.
        let url = urls[0].clone();
        let writes = (0..96).map(|i| {
            let url = url.clone();
            async move {
                let path = format!("{url}/v1/services/stream-{}/instances/i{i}", i % 32);
                let body = json!({"address": "10.0.0.1", "port": 80});
                // A write that meets a moment of ownership doubt is retried, as clients do.
                for _ in 0..20 {
                    let (st, v) = call("PUT", &path, Some(body.clone())).await;
                    if st == 200 {
                        return;
                    }
                    assert_eq!(st, 503, "{v}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                panic!("{path} never acknowledged");
            }
        });
        futures::future::join_all(writes).await;
        for s in 0..32 {
            let service = format!("stream-{s}");
            for url in &urls {
                assert_eq!(count(url, &service).await, 3, "{service} through {url}");
            }
        }
        let groups = counter_sum(&urls, "chordctl_replication_groups_total").await - groups_before;
        let messages =
            counter_sum(&urls, "chordctl_replication_messages_total").await - messages_before;
        println!("{groups} groups went to replicas in {messages} messages");
        assert!(groups >= 64, "only {groups} groups were replicated");
        // One message per group would be `messages == groups`. Towards the fast replica a
        // message may carry one group; towards the slow one, many.
        assert!(
            messages * 4 < groups * 3,
            "{messages} messages for {groups} groups: the streams did not gather"
        );
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_healthy_ring_does_not_compare_its_copies_every_round() {
    let c = TestCluster::start(3).await;
    c.settle().await;
    let url = c.url(0);
    for i in 0..5 {
        let (status, body) = call(
            "PUT",
            &format!("{url}/v1/services/idle-{i}/instances/a"),
            Some(json!({"address": "10.0.0.1", "port": 80})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let rounds = |reason: &'static str| {
        let url = url.clone();
        async move {
            counter(
                &url,
                &format!("chordctl_antientropy_rounds_total{{reason=\"{reason}\"}}"),
            )
            .await
        }
    };
    // Wait for a round that compared nothing: from then on nothing is pending.
    let idle_start = rounds("idle").await;
    eventually("an idle round", Duration::from_secs(60), async || {
        (rounds("idle").await > idle_start)
            .then_some(())
            .ok_or("no idle round yet".to_string())
    })
    .await;
    let compared = counter(&url, "chordctl_antientropy_comparisons_total").await;
    let idle = rounds("idle").await;
    eventually("three more rounds", Duration::from_secs(60), async || {
        let more = rounds("idle").await + rounds("periodic").await - idle;
        (more >= 3)
            .then_some(())
            .ok_or(format!("{more} rounds so far"))
    })
    .await;
    let more = counter(&url, "chordctl_antientropy_comparisons_total").await - compared;
    // Comparing every round would be 2 replicas × 3 rounds; at most one of them is the
    // periodic full comparison.
    assert!(
        more <= 2,
        "{more} comparisons with replicas in three rounds of an idle, healthy ring"
    );
}

/// `svc list` while a node joins: the joiner answers for its range only once it has taken it
/// over (slowed here by a test-only slow disk, so the window lasts seconds), and its
/// successor no longer counts the range as its own meanwhile. Every list through another agent
/// still shows every service: the joiner's successor stands in for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svc_list_shows_every_service_while_a_node_takes_its_range_over() {
    let first = AgentProc::start(None, &[]);
    let second = AgentProc::start(Some(&first.ring), &[]);
    let url = first.url();
    let services: Vec<String> = (0..48).map(|i| format!("joinlist{i}")).collect();
    for s in &services {
        let put = format!("{url}/v1/services/{s}/instances/a");
        let body = json!({"address": "10.0.0.1", "port": 80});
        eventually(
            "a registration acknowledged",
            Duration::from_secs(30),
            async || {
                let (status, answer) = call("PUT", &put, Some(body.clone())).await;
                (status == 200)
                    .then_some(())
                    .ok_or(format!("{status} {answer}"))
            },
        )
        .await;
    }
    let seed = first.ring.clone();
    let joiner = std::thread::spawn(move || {
        AgentProc::start_env(
            Some(&seed),
            "127.0.0.1:0",
            "127.0.0.1:0",
            &[],
            &[("CHORDCTL_TEST_WRITE_DELAY_MS", "4000")],
        )
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut in_window = 0;
    while !joiner.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the joiner never finished joining"
        );
        let members = ring_size(&url).await;
        let (status, list) = call("GET", &format!("{url}/v1/services"), None).await;
        assert_eq!(status, 200, "svc list failed while a node joined: {list}");
        let listed: std::collections::BTreeSet<&str> = list
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["service"].as_str())
            .collect();
        let missing: Vec<&String> = services
            .iter()
            .filter(|s| !listed.contains(s.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "svc list lost {missing:?} while a node joined ({members} members)"
        );
        if members == 3 && !joiner.is_finished() {
            in_window += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let third = joiner.join().expect("the joiner's thread");
    assert!(
        in_window > 0,
        "no list was made while the joiner was a member still taking its range over"
    );
    drop((first, second, third));
}
