//! No registration lost: replicas on the successor list, repair after crashes.

use std::time::{Duration, Instant};

use chordctl::ring::Id;
use serde_json::json;

use crate::support::cluster::TestCluster;
use crate::support::http::call;
use crate::support::procs::AgentProc;

async fn count(url: &str, service: &str) -> usize {
    let (st, body) = call("GET", &format!("{url}/v1/services/{service}"), None).await;
    if st != 200 {
        return 0;
    }
    body["instances"].as_array().map(Vec::len).unwrap_or(0)
}

async fn eventually(
    what: &str,
    deadline: Duration,
    mut f: impl AsyncFnMut() -> Result<(), String>,
) {
    let start = Instant::now();
    loop {
        match f().await {
            Ok(()) => return,
            Err(e) if start.elapsed() > deadline => panic!("{what}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
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
