//! Clocks out of step, with real agent processes: each agent's clock is shifted through the
//! test-only `CHORDCTL_TEST_CLOCK_OFFSET_MS`. Versions are hybrid logical clocks, so a new
//! owner whose clock runs 10 minutes behind keeps a deregistration done, and a removal made
//! by a clock 10 minutes ahead does not block a later re-registration.

use std::time::Duration;

use serde_json::json;

use crate::support::eventually;
use crate::support::http::{call, call_ok};
use crate::support::procs::{ring_order, AgentProc};

const TEN_MINUTES_MS: i64 = 600_000;

/// Three agents (K = 3), agent `skewed` with its clock shifted by `offset_ms`, and a service
/// name whose owner is agent 0 and whose next owner (its successor) is agent `skewed` = 1.
fn ring_with_a_skewed_clock(owner_offset_ms: i64, next_offset_ms: i64) -> (Vec<AgentProc>, String) {
    let offsets = [owner_offset_ms, next_offset_ms, 0];
    let start = |seed: Option<&str>, offset: i64| {
        let offset = offset.to_string();
        AgentProc::start_env(
            seed,
            "127.0.0.1:0",
            "127.0.0.1:0",
            &[],
            &[("CHORDCTL_TEST_CLOCK_OFFSET_MS", offset.as_str())],
        )
    };
    let first = start(None, offsets[0]);
    let seed = first.ring.clone();
    let agents = vec![
        first,
        start(Some(&seed), offsets[1]),
        start(Some(&seed), offsets[2]),
    ];
    let service = (0..10_000)
        .map(|i| format!("skew-{i}"))
        .find(|s| ring_order(&agents, s)[..2] == [0, 1])
        .expect("a service owned by agent 0 with agent 1 next");
    (agents, service)
}

async fn ids(url: &str, service: &str) -> Result<Vec<String>, String> {
    let (st, body) = call("GET", &format!("{url}/v1/services/{service}"), None).await;
    match st {
        200 => Ok(body["instances"]
            .as_array()
            .map(|l| {
                l.iter()
                    .filter_map(|v| v["id"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()),
        404 => Ok(Vec::new()),
        _ => Err(format!("{st} {body}")),
    }
}

async fn ring_of(url: &str, n: usize) {
    eventually("the ring's members", Duration::from_secs(60), async || {
        let (_, v) = call("GET", &format!("{url}/v1/ring/nodes"), None).await;
        let got = v.as_array().map_or(0, Vec::len);
        (got == n).then_some(()).ok_or(format!("{got} nodes"))
    })
    .await;
}

#[test]
fn a_new_owner_whose_clock_runs_10_minutes_behind_keeps_a_deregistration_done() {
    let (mut agents, service) = ring_with_a_skewed_clock(0, -TEN_MINUTES_MS);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (owner, next, third) = (agents[0].url(), agents[1].url(), agents[2].url());
    rt.block_on(async {
        ring_of(&owner, 3).await;
        let inst = format!("{owner}/v1/services/{service}/instances");
        call_ok(
            "PUT",
            &format!("{inst}/gone"),
            Some(json!({"address": "h", "port": 1})),
        )
        .await;
        call_ok(
            "PUT",
            &format!("{inst}/kept"),
            Some(json!({"address": "h", "port": 2})),
        )
        .await;
        call_ok("DELETE", &format!("{inst}/gone"), None).await;
    });
    // The owner crashes; the node whose clock is 10 minutes behind takes the service over.
    agents[0].kill9();
    rt.block_on(async {
        eventually(
            "the new owner answers, without the removed instance",
            Duration::from_secs(60),
            async || {
                let got = ids(&next, &service).await?;
                (got == ["kept"]).then_some(()).ok_or(format!("{got:?}"))
            },
        )
        .await;
        // It writes with its slow clock: a report and a new instance, both above every
        // version it holds, and the removal stays done through anti-entropy with the third.
        let inst = format!("{next}/v1/services/{service}/instances");
        call_ok(
            "PUT",
            &format!("{inst}/kept/status"),
            Some(json!({"latency_ms": 3.0})),
        )
        .await;
        call_ok(
            "PUT",
            &format!("{inst}/new"),
            Some(json!({"address": "h", "port": 3})),
        )
        .await;
        eventually(
            "both copies agree: the removal done, the new writes kept",
            Duration::from_secs(60),
            async || {
                for url in [&next, &third] {
                    let got = ids(url, &service).await?;
                    if got != ["kept", "new"] {
                        return Err(format!("{url}: {got:?}"));
                    }
                }
                let (_, body) = call("GET", &format!("{third}/v1/services/{service}"), None).await;
                let latency = body["instances"][0]["status"]["latency_ms"].as_f64();
                (latency == Some(3.0))
                    .then_some(())
                    .ok_or(format!("the slow clock's report lost: {latency:?}"))
            },
        )
        .await;
    });
}

#[test]
fn a_removal_by_a_clock_10_minutes_ahead_does_not_block_a_re_registration() {
    let (mut agents, service) = ring_with_a_skewed_clock(TEN_MINUTES_MS, 0);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (owner, next) = (agents[0].url(), agents[1].url());
    rt.block_on(async {
        ring_of(&owner, 3).await;
        let inst = format!("{owner}/v1/services/{service}/instances");
        call_ok(
            "PUT",
            &format!("{inst}/x"),
            Some(json!({"address": "h", "port": 1})),
        )
        .await;
        call_ok("DELETE", &format!("{inst}/x"), None).await;
    });
    // The fast owner crashes; a node with a true clock re-registers the instance.
    agents[0].kill9();
    rt.block_on(async {
        eventually(
            "the re-registration through the new owner is kept",
            Duration::from_secs(60),
            async || {
                let (st, body) = call(
                    "PUT",
                    &format!("{next}/v1/services/{service}/instances/x"),
                    Some(json!({"address": "h", "port": 2})),
                )
                .await;
                if st != 200 {
                    return Err(format!("{st} {body}"));
                }
                let got = ids(&next, &service).await?;
                (got == ["x"]).then_some(()).ok_or(format!("{got:?}"))
            },
        )
        .await;
    });
}
