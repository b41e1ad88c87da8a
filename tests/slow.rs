//! Slow is not dead, with real agent processes: an owner whose writes take longer than the
//! ring RPC deadline (the test-only `CHORDCTL_TEST_WRITE_DELAY_MS`: a slow disk) stays in
//! every peer's ring. Its callers time out, but they leave the verdict to the ring's own
//! probe, which it answers.

use std::time::Duration;

use serde_json::json;

use crate::support::eventually;
use crate::support::http::{call, metric};
use crate::support::procs::{ring_of, ring_order, three_with_a_slow_second};

/// Peers the agent at `url` dropped from its ring state as failed.
async fn peers_dropped(url: &str) -> u64 {
    metric(url, "chordctl_ring_peers_dropped_total").await
}

#[test]
fn an_owner_whose_writes_outlast_the_rpc_deadline_stays_in_the_ring() {
    // The test agents' ring RPC deadline is 500 ms (`agent_command`).
    let agents = three_with_a_slow_second("1500");
    let service = (0..10_000)
        .map(|i| format!("slow-{i}"))
        .find(|s| ring_order(&agents, s)[0] == 1)
        .expect("a service owned by the slow agent");
    let (caller, owner) = (agents[0].url(), agents[1].url());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        ring_of(&[caller.clone(), owner.clone()], 3).await;
        let before = peers_dropped(&caller).await;
        // Each of these outlasts the caller's 500 ms deadline at the owner (1.5 s to store).
        // Whatever the client is told (an answer once a retry joins a finished group, or 503
        // when the route deadline passes), the owner is probed, answers, and is kept.
        for i in 0..2 {
            let (st, body) = call(
                "PUT",
                &format!("{caller}/v1/services/{service}/instances/i{i}"),
                Some(json!({"address": "10.0.0.1", "port": 80})),
            )
            .await;
            println!("write {i} through a caller of the slow owner: {st} {body}");
            assert!(st == 200 || st == 503, "write {i}: {st} {body}");
            assert!(st == 200 || body["error"]["message"].is_string(), "{body}");
        }
        // The slow owner did store them, and the caller still routes to it.
        eventually(
            "the slow owner's writes visible through the caller",
            Duration::from_secs(60),
            async || {
                let (st, v) = call("GET", &format!("{caller}/v1/services/{service}"), None).await;
                let n = v["instances"].as_array().map_or(0, Vec::len);
                (st == 200 && n == 2)
                    .then_some(())
                    .ok_or(format!("{st} {n} instances"))
            },
        )
        .await;
        let after = peers_dropped(&caller).await;
        assert_eq!(
            after, before,
            "the caller dropped a peer that was only slow"
        );
        let (_, v) = call("GET", &format!("{caller}/v1/ring/nodes"), None).await;
        assert_eq!(v.as_array().map_or(0, Vec::len), 3, "{v}");
    });
}
