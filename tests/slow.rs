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

/// Units the ring has never seen: `each` instances (`x0`, `x1`, …) of every one of
/// `services`, registered on `lone` (an agent of a ring of its own) and read back from it,
/// with their store keys.
async fn units_ring_never_saw(
    pool: &chordctl::rpc::Pool,
    lone: &crate::support::procs::AgentProc,
    services: &[String],
    each: usize,
) -> (Vec<String>, Vec<chordctl::registry::ops::Entry>) {
    let mut tasks = Vec::new();
    for service in services {
        let (base, service) = (lone.url(), service.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..each {
                let (st, body) = call(
                    "PUT",
                    &format!("{base}/v1/services/{service}/instances/x{i}"),
                    Some(json!({"address": "h", "port": 1})),
                )
                .await;
                assert_eq!(st, 200, "{body}");
            }
        }));
    }
    for t in tasks {
        t.await.expect("registrations");
    }
    let keys: Vec<String> = services
        .iter()
        .flat_map(|s| (0..each).map(move |i| format!("u/{s}/x{i}")))
        .collect();
    let mut entries = Vec::new();
    for part in keys.chunks(1000) {
        entries.extend(crate::support::procs::fetch_at(pool, lone, part.to_vec()).await);
    }
    assert_eq!(entries.len(), keys.len(), "the lone agent's units");
    (keys, entries)
}

/// Copies a node no longer keeps go back to their owners at once, not owner by owner: an
/// owner slow at taking them (its writes delayed, each answer within the deadline) does not
/// hold back the copies of another owner.
///
/// Five agents (K = 3), one slow at storing (300 ms per group). A holder is given copies
/// it neither owns nor replicates: eight services owned by the slow agent (`a-…`, first in
/// name order) and one owned by a fast agent (`b-…`). Their units come from a lone agent
/// outside the ring, so the owners lack them and each `a-…` copy costs the slow owner a
/// stored chunk. Owner by owner, `b-…` went back only after every `a-…` copy.
#[test]
fn a_slow_owner_does_not_hold_back_the_hand_back_of_another_owners_copies() {
    use crate::support::procs::{handoff_to, records_at, AgentProc};
    const SLOW_SERVICES: usize = 8;
    let first = AgentProc::start(None, &[]);
    let seed = first.ring.clone();
    let any = "127.0.0.1:0";
    let slow_env = [("CHORDCTL_TEST_WRITE_DELAY_MS", "300")];
    let agents = vec![
        first,
        AgentProc::start_env(Some(&seed), any, any, &[], &slow_env),
        AgentProc::start(Some(&seed), &[]),
        AgentProc::start(Some(&seed), &[]),
        AgentProc::start(Some(&seed), &[]),
    ];
    let slow = 1;
    let lone = AgentProc::start(None, &[]);
    // A holder, the slow owner's services it does not keep, and a fast owner's one.
    let find = |prefix: &str, n: usize, want: &dyn Fn(&[usize]) -> bool| {
        let found: Vec<String> = (0..50_000)
            .map(|i| format!("{prefix}-{i}"))
            .filter(|s| want(&ring_order(&agents, s)))
            .take(n)
            .collect();
        (found.len() == n).then_some(found)
    };
    let (holder, a, b) = [0, 2, 3, 4]
        .into_iter()
        .find_map(|holder| {
            let a = find("a-slow", SLOW_SERVICES, &|o| {
                o[0] == slow && !o[..3].contains(&holder)
            })?;
            let b = find("b-fast", 1, &|o| o[0] != slow && !o[..3].contains(&holder))?;
            Some((holder, a, b[0].clone()))
        })
        .expect("services some fast agent does not keep");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let pool = chordctl::rpc::Pool::new(Duration::from_secs(5));
    let urls: Vec<String> = agents.iter().map(AgentProc::url).collect();
    rt.block_on(async {
        ring_of(&urls, 5).await;
        let services: Vec<String> = a.iter().chain([&b]).cloned().collect();
        let (_, entries) = units_ring_never_saw(&pool, &lone, &services, 20).await;
        handoff_to(&pool, &agents[holder], entries).await;
        let held = async |service: &str| -> bool {
            let rec = records_at(&pool, [&agents[holder]], service)
                .await
                .expect("read the holder");
            rec[0]
                .as_ref()
                .is_some_and(|r| r.unit_ids().next().is_some())
        };
        eventually(
            "the holder hands b back to its fast owner",
            Duration::from_secs(60),
            async || match held(&b).await {
                true => Err(format!("the holder still has {b}")),
                false => Ok(()),
            },
        )
        .await;
        let mut left = 0;
        for service in &a {
            left += usize::from(held(service).await);
        }
        assert!(
            left > 0,
            "b went back only after all {SLOW_SERVICES} of the slow owner's copies"
        );
        eventually(
            "the holder hands every copy back to the slow owner too",
            Duration::from_secs(120),
            async || {
                for service in &a {
                    if held(service).await {
                        return Err(format!("the holder still has {service}"));
                    }
                }
                Ok(())
            },
        )
        .await;
    });
}

/// An anti-entropy round repairs every replica at once: a replica slow at storing (each
/// chunk within the deadline) does not hold back the repair of the other.
///
/// Three agents (K = 3), the second slow (300 ms per stored group). An owner whose first
/// successor is the slow agent is given 6,000 units its replicas lack (as a partition or a
/// hand-back leaves them; their units come from a lone agent outside the ring), and repairs
/// both replicas in its next round: six chunks each. Replica by replica, the fast one got
/// its copies only after the slow one had all of its.
#[test]
fn a_slow_replica_does_not_hold_back_the_repair_of_the_other() {
    use crate::support::procs::{fetch_at, handoff_to, AgentProc};
    const SERVICES: usize = 6;
    const EACH: usize = 1000;
    let agents = three_with_a_slow_second("300");
    let slow = 1;
    let lone = AgentProc::start(None, &[]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let pool = chordctl::rpc::Pool::new(Duration::from_secs(10));
    let urls: Vec<String> = agents.iter().map(AgentProc::url).collect();
    // Services whose owner's first successor is the slow agent.
    let services: Vec<String> = (0..50_000)
        .map(|i| format!("repair-{i}"))
        .filter(|s| ring_order(&agents, s)[1] == slow)
        .take(SERVICES)
        .collect();
    assert_eq!(services.len(), SERVICES);
    let owner = ring_order(&agents, &services[0])[0];
    let fast = ring_order(&agents, &services[0])[2];
    rt.block_on(async {
        ring_of(&urls, 3).await;
        let (keys, entries) = units_ring_never_saw(&pool, &lone, &services, EACH).await;
        let held = async |at: usize| {
            let mut n = 0;
            for part in keys.chunks(2000) {
                n += fetch_at(&pool, &agents[at], part.to_vec()).await.len();
            }
            n
        };
        assert_eq!(held(fast).await, 0, "the replicas lack the units");
        let holds_all = async |at: usize, what: &str| {
            eventually(what, Duration::from_secs(120), async || {
                let n = held(at).await;
                (n == keys.len())
                    .then_some(())
                    .ok_or(format!("agent {at} holds {n} of {}", keys.len()))
            })
            .await
        };

        handoff_to(&pool, &agents[owner], entries).await;
        holds_all(fast, "the fast replica holds every unit").await;
        let on_slow = held(slow).await;
        assert!(
            on_slow < keys.len(),
            "the fast replica was repaired only after the slow one had all {on_slow}"
        );
        holds_all(slow, "the slow replica holds every unit too").await;
    });
}
