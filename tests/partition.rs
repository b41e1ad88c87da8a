//! A running ring split in two (traffic cut inside the transport under test control): both
//! halves take writes; after the heal the halves merge into one ring and no acknowledged
//! registration is lost, each instance with its newest status.

use std::collections::HashSet;
use std::time::Duration;

use chordctl::ring::invariants::{self, View};
use serde_json::{json, Value};

use crate::support::cluster::TestCluster;
use crate::support::eventually;
use crate::support::http::call;

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
