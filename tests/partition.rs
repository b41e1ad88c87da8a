//! A running ring split in two (traffic cut inside the transport under test control): both
//! halves take writes; after the heal the halves merge into one ring and no acknowledged
//! registration is lost, each instance with its newest status.

use std::collections::HashSet;
use std::time::Duration;

use chordctl::ring::invariants::{self, View};
use serde_json::{json, Value};

use crate::support::cluster::TestCluster;
use crate::support::eventually;
use crate::support::http::{call, metric};

fn side_is_a_ring(c: &TestCluster, side: &[usize]) -> Result<(), String> {
    let views: Vec<View> = side
        .iter()
        .map(|i| c.node(*i).agent().ring.read(View::of))
        .collect();
    invariants::check(&views, c.node(side[0]).agent().config.successors, true)
}

fn cut(c: &TestCluster, a: &[usize], b: &[usize]) {
    let addrs =
        |side: &[usize]| -> Vec<String> { side.iter().map(|i| c.node(*i).node().addr).collect() };
    for i in a {
        c.node(*i).agent().ring.pool().set_blocked(addrs(b));
    }
    for i in b {
        c.node(*i).agent().ring.pool().set_blocked(addrs(a));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_ring_takes_writes_on_both_sides_and_heals_without_losing_any() {
    let c = TestCluster::start(6).await;
    c.settle().await;
    let services: Vec<String> = (0..8).map(|i| format!("part-{i}")).collect();
    for s in &services {
        let (st, b) = call(
            "PUT",
            &format!("{}/v1/services/{s}/instances/base", c.url(0)),
            Some(json!({"address": "h", "port": 1})),
        )
        .await;
        assert_eq!(st, 200, "{b}");
    }
    let (a, b) = ([0usize, 1, 2], [3usize, 4, 5]);
    cut(&c, &a, &b);
    eventually(
        "each half becomes a ring of its own",
        Duration::from_secs(90),
        async || {
            side_is_a_ring(&c, &a)?;
            side_is_a_ring(&c, &b)
        },
    )
    .await;
    // Both halves take writes: a new instance on each side, status reports on each side.
    let mut expected_latency: Vec<Option<f64>> = vec![None; services.len()];
    for (side, url, latency) in [("a", c.url(0), 1.0), ("b", c.url(3), 2.0)] {
        for (k, s) in services.iter().enumerate() {
            let (st, body) = call(
                "PUT",
                &format!("{url}/v1/services/{s}/instances/{side}-side"),
                Some(json!({"address": "h", "port": 2})),
            )
            .await;
            assert_eq!(st, 200, "register on side {side}: {body}");
            let (st, _) = call(
                "PUT",
                &format!("{url}/v1/services/{s}/instances/{side}-side/status"),
                Some(json!({"latency_ms": latency})),
            )
            .await;
            assert_eq!(st, 200);
            // The shared instance: reported on a side only if that side holds a copy.
            let (st, _) = call(
                "PUT",
                &format!("{url}/v1/services/{s}/instances/base/status"),
                Some(json!({"latency_ms": latency})),
            )
            .await;
            if st == 200 {
                expected_latency[k] = Some(latency);
            }
        }
    }
    // Heal: one ring again, and every registration from either side is there, with the
    // newest status of each instance, read through every agent.
    for i in 0..6 {
        c.node(i).agent().ring.pool().set_blocked(Vec::new());
    }
    c.settle().await;
    for i in 0..6 {
        let url = c.url(i);
        eventually(
            "all registrations after the heal",
            Duration::from_secs(90),
            async || {
                for (k, s) in services.iter().enumerate() {
                    let (st, body) = call("GET", &format!("{url}/v1/services/{s}"), None).await;
                    if st != 200 {
                        return Err(format!("{s}: {st} {body}"));
                    }
                    let list = body["instances"].as_array().cloned().unwrap_or_default();
                    let ids: HashSet<&str> = list.iter().filter_map(|v| v["id"].as_str()).collect();
                    if ids != HashSet::from(["base", "a-side", "b-side"]) {
                        return Err(format!("{s} from agent {i}: {ids:?}"));
                    }
                    let latency = |id: &str| -> Option<f64> {
                        list.iter()
                            .find(|v| v["id"] == id)
                            .and_then(|v: &Value| v["status"]["latency_ms"].as_f64())
                    };
                    if latency("a-side") != Some(1.0) || latency("b-side") != Some(2.0) {
                        return Err(format!(
                            "{s}: side statuses {:?} {:?}",
                            latency("a-side"),
                            latency("b-side")
                        ));
                    }
                    if let Some(want) = expected_latency[k] {
                        if latency("base") != Some(want) {
                            return Err(format!(
                                "{s}: base latency {:?}, want the newest {want}",
                                latency("base")
                            ));
                        }
                    }
                }
                Ok(())
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_node_refuses_writes_rather_than_acknowledging_them_alone() {
    let c = TestCluster::start(6).await;
    c.settle().await;
    let (alone, rest) = ([2usize], [0usize, 1, 3, 4, 5]);
    cut(&c, &alone, &rest);
    let me = c.node(2).node().id;
    eventually(
        "the cut-off node sees no other member",
        Duration::from_secs(90),
        async || {
            let (succ, pred) = c
                .node(2)
                .agent()
                .ring
                .read(|r| (r.successor().id, r.predecessor().map(|p| p.id)));
            (succ == me && pred.is_none())
                .then_some(())
                .ok_or(format!("successor {succ}, predecessor {pred:?}"))
        },
    )
    .await;
    // Every write through it, whatever the service, is refused: it knows the ring has other
    // members (lost to failure, not gone), so its own copy is not a quorum.
    let url = c.url(2);
    for i in 0..10 {
        let (st, body) = call(
            "PUT",
            &format!("{url}/v1/services/iso-{i}/instances/x"),
            Some(json!({"address": "h", "port": 1})),
        )
        .await;
        assert_eq!(st, 503, "a write on the isolated node: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("write quorum"),
            "{body}"
        );
    }
    let (_, metrics) = crate::support::http::raw("GET", &format!("{url}/metrics"), vec![]).await;
    let refused = metrics
        .lines()
        .find_map(|l| l.strip_prefix("chordctl_write_quorum_failures_total "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert!(
        refused.is_some_and(|n| n >= 10),
        "the refusals are counted: {refused:?}"
    );
    // Healed, the same node takes writes again.
    for i in 0..6 {
        c.node(i).agent().ring.pool().set_blocked(Vec::new());
    }
    c.settle().await;
    eventually(
        "writes through the healed node are acknowledged",
        Duration::from_secs(60),
        async || {
            let (st, body) = call(
                "PUT",
                &format!("{url}/v1/services/iso-0/instances/x"),
                Some(json!({"address": "h", "port": 1})),
            )
            .await;
            (st == 200).then_some(()).ok_or(format!("{st} {body}"))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ring_shrunk_to_one_node_by_graceful_leaves_still_takes_writes() {
    let mut c = TestCluster::start(3).await;
    c.settle().await;
    c.leave(2).await;
    c.settle().await;
    c.leave(1).await;
    c.settle().await;
    let (st, body) = call(
        "PUT",
        &format!("{}/v1/services/last/instances/x", c.url(0)),
        Some(json!({"address": "h", "port": 1})),
    )
    .await;
    assert_eq!(st, 200, "the last member is a ring of one: {body}");
}

/// The services each agent's store holds a copy of (its meta entries).
async fn copies_held(c: &TestCluster, i: usize) -> Vec<String> {
    c.node(i)
        .agent()
        .registry
        .store()
        .scan_prefix("s/")
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|(k, _)| k["s/".len()..].to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arcs_of_two_and_four_take_writes_that_reach_their_true_owners_after_the_heal() {
    let c = TestCluster::start(6).await;
    c.settle().await;
    // Contiguous arcs of the ring, not alternate nodes.
    let mut order: Vec<usize> = (0..6).collect();
    order.sort_by_key(|i| c.node(*i).node().id);
    let (a, b) = (order[..2].to_vec(), order[2..].to_vec());
    cut(&c, &a, &b);
    eventually(
        "each arc becomes a ring of its own",
        Duration::from_secs(90),
        async || {
            side_is_a_ring(&c, &a)?;
            side_is_a_ring(&c, &b)
        },
    )
    .await;
    // Writes through both arcs, each arc acknowledging what its quorum allows.
    let services: Vec<String> = (0..24).map(|i| format!("arc-{i}")).collect();
    let mut acked: Vec<(String, String)> = Vec::new();
    for (side, via) in [("a", a[0]), ("b", b[0])] {
        let url = c.url(via);
        for s in &services {
            let id = format!("{side}-side");
            let (st, body) = call(
                "PUT",
                &format!("{url}/v1/services/{s}/instances/{id}"),
                Some(json!({"address": "h", "port": 7})),
            )
            .await;
            match st {
                200 => acked.push((s.clone(), id)),
                503 => {}
                _ => panic!("write on side {side}: {st} {body}"),
            }
        }
    }
    let from_a = acked.iter().filter(|(_, id)| id == "a-side").count();
    assert!(from_a > 0, "the arc of two (W = 2) takes writes");
    for i in 0..6 {
        c.node(i).agent().ring.pool().set_blocked(Vec::new());
    }
    let healed = std::time::Instant::now();
    c.settle().await;
    // Every acknowledged write is at its true owner: a discover (answered by the owner from
    // its own copy) through any agent shows it.
    let url = c.url(order[3]);
    eventually(
        "every acknowledged write at its true owner",
        Duration::from_secs(120),
        async || {
            for (s, id) in &acked {
                let (st, body) = call("GET", &format!("{url}/v1/services/{s}"), None).await;
                let ids: HashSet<&str> = body["instances"]
                    .as_array()
                    .map(|l| l.iter().filter_map(|v| v["id"].as_str()).collect())
                    .unwrap_or_default();
                if st != 200 || !ids.contains(id.as_str()) {
                    return Err(format!("{s}/{id}: {st} {ids:?}"));
                }
            }
            Ok(())
        },
    )
    .await;
    println!(
        "arcs of 2 and 4: {} acknowledged writes ({from_a} through the arc of two), all at \
         their true owners {:.1} s after the heal",
        acked.len(),
        healed.elapsed().as_secs_f64()
    );
    // And copies the ring no longer needs are collected: each service ends up on exactly
    // K = 3 nodes.
    eventually(
        "every service on exactly its K nodes",
        Duration::from_secs(120),
        async || {
            let mut holders: std::collections::HashMap<String, usize> = Default::default();
            for i in 0..6 {
                for s in copies_held(&c, i).await {
                    *holders.entry(s).or_default() += 1;
                }
            }
            let off: Vec<_> = holders.iter().filter(|(_, n)| **n != 3).collect();
            off.is_empty()
                .then_some(())
                .ok_or(format!("services not on exactly 3 nodes: {off:?}"))
        },
    )
    .await;
    // Handed back, not merely lost: the nodes' metrics count the copies they handed back
    // and deleted.
    let mut handed = 0;
    for i in 0..6 {
        handed += metric(&c.url(i), "chordctl_handback_copies_total").await;
        let done = "chordctl_handback_rounds_total{outcome=\"done\"}";
        assert!(
            metric(&c.url(i), done).await > 0,
            "node {i} ran hand-back rounds"
        );
    }
    assert!(handed > 0, "the stray copies were counted as handed back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_see_its_predecessor_takes_no_writes_for_the_range_it_is_unsure_of() {
    let c = TestCluster::start(4).await;
    c.settle().await;
    let mut order: Vec<usize> = (0..4).collect();
    order.sort_by_key(|i| c.node(*i).node().id);
    let (p, x) = (order[0], order[1]);
    // Only the link between x and its predecessor is cut: x no longer knows its range.
    cut(&c, &[p], &[x]);
    eventually(
        "x loses its predecessor",
        Duration::from_secs(60),
        async || {
            let pred = c.node(x).agent().ring.read(|r| r.predecessor().cloned());
            pred.is_none()
                .then_some(())
                .ok_or(format!("predecessor {pred:?}"))
        },
    )
    .await;
    let (from, to) = (c.node(p).node().id, c.node(x).node().id);
    let service = (0..100_000)
        .map(|i| format!("unsure-{i}"))
        .find(|s| chordctl::ring::Id::of_key(s).in_half_open(&from, &to))
        .expect("a service in x's range");
    let (st, body) = call(
        "PUT",
        &format!("{}/v1/services/{service}/instances/i", c.url(x)),
        Some(json!({"address": "h", "port": 1})),
    )
    .await;
    assert_eq!(st, 503, "x must not act as the owner of everything: {body}");
    let held = copies_held(&c, x).await;
    assert!(!held.contains(&service), "nothing stored at x: {held:?}");
}
