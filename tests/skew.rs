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

/// Three agents (K = 3): agent 0 with its clock shifted by `owner_offset_ms`, the two others
/// by `next_offset_ms`; a service owned by agent 0; and the agents in ring order from it
/// An agent whose clock runs `offset_ms` off (joining through `seed`, or creating a ring).
fn start_skewed(seed: Option<&str>, offset_ms: i64) -> AgentProc {
    let offset = offset_ms.to_string();
    AgentProc::start_env(
        seed,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &[],
        &[("CHORDCTL_TEST_CLOCK_OFFSET_MS", offset.as_str())],
    )
}

/// (owner, next owner, third).
fn ring_with_a_skewed_clock(
    owner_offset_ms: i64,
    next_offset_ms: i64,
) -> (Vec<AgentProc>, String, Vec<usize>) {
    let offsets = [owner_offset_ms, next_offset_ms, next_offset_ms];
    let first = start_skewed(None, offsets[0]);
    let seed = first.ring.clone();
    let agents = vec![
        first,
        start_skewed(Some(&seed), offsets[1]),
        start_skewed(Some(&seed), offsets[2]),
    ];
    let service = (0..10_000)
        .map(|i| format!("skew-{i}"))
        .find(|s| ring_order(&agents, s)[0] == 0)
        .expect("a service owned by agent 0");
    let order = ring_order(&agents, &service);
    (agents, service, order)
}

/// Retry a write until it is acknowledged: right after a crash the new owner may answer 503
/// while ownership settles.
async fn write_ok(method: &str, url: &str, body: Option<serde_json::Value>) {
    eventually(
        "the write is acknowledged",
        Duration::from_secs(60),
        async || {
            let (st, answer) = call(method, url, body.clone()).await;
            (st == 200).then_some(()).ok_or(format!("{st} {answer}"))
        },
    )
    .await;
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
    let (mut agents, service, order) = ring_with_a_skewed_clock(0, -TEN_MINUTES_MS);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (owner, next, third) = (
        agents[0].url(),
        agents[order[1]].url(),
        agents[order[2]].url(),
    );
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
        write_ok(
            "PUT",
            &format!("{inst}/kept/status"),
            Some(json!({"latency_ms": 3.0})),
        )
        .await;
        write_ok(
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
    let (mut agents, service, order) = ring_with_a_skewed_clock(TEN_MINUTES_MS, 0);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (owner, next) = (agents[0].url(), agents[order[1]].url());
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

/// Every node's copy of `service` over ring RPC: (instance ids present, ids it has any unit
/// of, tombstones included).
async fn copies(
    pool: &chordctl::rpc::Pool,
    agents: &[AgentProc],
    service: &str,
) -> Result<Vec<(Vec<String>, Vec<String>)>, String> {
    let recs = crate::support::procs::records_at(pool, agents, service).await?;
    Ok(recs
        .into_iter()
        .map(|rec| {
            rec.map(|r| {
                (
                    r.instances.keys().map(|k| k.to_string()).collect(),
                    r.unit_ids().map(|k| k.to_string()).collect(),
                )
            })
            .unwrap_or_default()
        })
        .collect())
}

#[test]
fn tombstones_past_their_time_are_forgotten_by_every_copy_and_do_not_come_back() {
    use crate::support::procs::free_addr;
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("tmp")).collect();
    let addrs: Vec<(String, String)> = (0..3).map(|_| (free_addr(), free_addr())).collect();
    let start = |i: usize, offset_ms: i64| {
        let dir = dirs[i].path().to_str().expect("utf-8").to_string();
        let offset = offset_ms.to_string();
        let seed = (i > 0).then(|| addrs[0].0.clone());
        AgentProc::start_env(
            seed.as_deref(),
            &addrs[i].0,
            &addrs[i].1,
            &["--data-dir", &dir],
            &[("CHORDCTL_TEST_CLOCK_OFFSET_MS", offset.as_str())],
        )
    };
    let mut agents: Vec<AgentProc> = (0..3).map(|i| start(i, 0)).collect();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let pool = chordctl::rpc::Pool::new(Duration::from_secs(5));
    let url = agents[0].url();
    let service = "tomb";
    rt.block_on(async {
        ring_of(&url, 3).await;
        let inst = format!("{url}/v1/services/{service}/instances");
        call_ok(
            "PUT",
            &format!("{inst}/x"),
            Some(json!({"address": "h", "port": 1})),
        )
        .await;
        call_ok(
            "PUT",
            &format!("{inst}/y"),
            Some(json!({"address": "h", "port": 2})),
        )
        .await;
        call_ok("DELETE", &format!("{inst}/x"), None).await;
        eventually(
            "x's tombstone on every copy",
            Duration::from_secs(60),
            async || {
                let all = copies(&pool, &agents, service).await?;
                all.iter()
                    .all(|(present, units)| present == &["y"] && units.contains(&"x".into()))
                    .then_some(())
                    .ok_or(format!("{all:?}"))
            },
        )
        .await;
    });
    // Eight days later (every clock moved on): the whole ring restarts on its data.
    for a in &mut agents {
        a.kill9();
    }
    let eight_days_ms = 8 * 24 * 3600 * 1000;
    agents = (0..3).map(|i| start(i, eight_days_ms)).collect();
    rt.block_on(async {
        ring_of(&url, 3).await;
        eventually(
            "every copy forgot x's tombstone",
            Duration::from_secs(90),
            async || {
                let all = copies(&pool, &agents, service).await?;
                all.iter()
                    .all(|(present, units)| present == &["y"] && !units.contains(&"x".into()))
                    .then_some(())
                    .ok_or(format!("{all:?}"))
            },
        )
        .await;
        // A later change travels to every copy (replication and anti-entropy run): the
        // forgotten tombstone does not ride back with it.
        let inst = format!("{url}/v1/services/{service}/instances");
        write_ok(
            "PUT",
            &format!("{inst}/z"),
            Some(json!({"address": "h", "port": 3})),
        )
        .await;
        eventually(
            "z everywhere, x nowhere",
            Duration::from_secs(60),
            async || {
                let all = copies(&pool, &agents, service).await?;
                if all.iter().any(|(_, units)| units.contains(&"x".into())) {
                    return Err(format!("x came back: {all:?}"));
                }
                all.iter()
                    .all(|(present, _)| present == &["y", "z"])
                    .then_some(())
                    .ok_or(format!("{all:?}"))
            },
        )
        .await;
    });
}

/// A copy a node no longer keeps goes back to its owner and away, even when it holds a
/// tombstone the owner has already forgotten. Before, the owner "needed" that tombstone at
/// every hand-back round, its merge dropped it, and the copy was never deleted: it stayed
/// frozen while the owner moved on, and once the owner forgot the tombstone of an instance the
/// frozen copy still held as present, the copy handed that old registration back and the
/// owner took it. A deregistered instance came back.
///
/// Four agents (K = 3); agent 3's clock runs an hour behind, which lets it hold a tombstone
/// the others already consider forgotten (a skew, or a tombstone passing its time in the
/// seconds between the last scan of a replica and its first hand-back, does the same).
#[test]
fn an_orphan_copy_holding_an_old_tombstone_is_collected_and_brings_nothing_back() {
    use crate::support::procs::{fetch_at, handoff_to};
    use chordctl::registry::hlc::Hlc;
    use chordctl::registry::model::Stamp;
    use chordctl::registry::ops::Entry;
    use chordctl::registry::unit::{Unit, UnitBody};
    let first = start_skewed(None, 0);
    let seed = first.ring.clone();
    let agents = vec![
        first,
        start_skewed(Some(&seed), 0),
        start_skewed(Some(&seed), 0),
        start_skewed(Some(&seed), -3_600_000),
    ];
    // A service agent 3 neither owns nor replicates.
    let service = (0..10_000)
        .map(|i| format!("orphan-{i}"))
        .find(|s| ring_order(&agents, s)[3] == 3)
        .expect("a service agent 3 does not keep");
    let order = ring_order(&agents, &service);
    let owner = &agents[order[0]];
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let pool = chordctl::rpc::Pool::new(Duration::from_secs(5));
    rt.block_on(async {
        ring_of(&agents[0].url(), 4).await;
        let inst = format!("{}/v1/services/{service}/instances", owner.url());
        write_ok(
            "PUT",
            &format!("{inst}/y"),
            Some(json!({"address": "h", "port": 1})),
        )
        .await;
        let key_y = format!("u/{service}/y");
        let y_bytes = fetch_at(&pool, owner, vec![key_y.clone()])
            .await
            .into_iter()
            .next()
            .expect("y at its owner")
            .value;
        let y = Unit::stamp_of(&y_bytes).expect("y's stamp");
        let now = chrono::Utc::now();
        let tomb = |at: chrono::DateTime<chrono::Utc>, version: Hlc| {
            Unit {
                stamp: Stamp {
                    version,
                    index: y.index + 1,
                },
                body: UnitBody::Removed { at },
            }
            .to_bytes()
            .expect("encode")
        };
        // Agent 3 gets a copy of the service (as a partition, a join or a replica set that
        // moved on leaves one): y as registered, and a tombstone 7 days and 10 minutes old,
        // past its time for agents 0-2, not yet for agent 3.
        let old = tomb(
            now - chrono::Duration::days(7) - chrono::Duration::minutes(10),
            Hlc {
                wall_ms: y.version.wall_ms,
                logical: 0,
                node: 42,
            },
        );
        let orphan = vec![
            Entry {
                key: key_y.clone(),
                value: y_bytes.clone(),
            },
            Entry {
                key: format!("u/{service}/t"),
                value: old,
            },
        ];
        handoff_to(&pool, &agents[3], orphan).await;
        // y is then removed at the owner, by a removal that passes its time in 20 s.
        let removed = tomb(
            now - chrono::Duration::days(7) + chrono::Duration::seconds(20),
            Hlc {
                logical: y.version.logical + 1,
                ..y.version
            },
        );
        handoff_to(
            &pool,
            owner,
            vec![Entry {
                key: key_y.clone(),
                value: removed,
            }],
        )
        .await;
        let at_owner = async || {
            copies(&pool, std::slice::from_ref(owner), &service)
                .await
                .map(|c| c[0].0.clone())
        };
        // ... and on both replicas, as a tombstone (so no replica can bring it back).
        let keepers: Vec<&AgentProc> = order[..3].iter().map(|i| &agents[*i]).collect();
        eventually(
            "y's tombstone on its three copies",
            Duration::from_secs(30),
            async || {
                let mut all = Vec::new();
                for a in &keepers {
                    all.extend(copies(&pool, std::slice::from_ref(*a), &service).await?);
                }
                all.iter()
                    .all(|(present, units)| present.is_empty() && units.contains(&"y".into()))
                    .then_some(())
                    .ok_or(format!("{all:?}"))
            },
        )
        .await;
        // Agent 3 hands its copy back and deletes it (a hand-back round runs every 3 s).
        eventually(
            "agent 3 deletes the copy it does not keep",
            Duration::from_secs(60),
            async || {
                let c = copies(&pool, std::slice::from_ref(&agents[3]), &service).await?;
                c[0].1.is_empty().then_some(()).ok_or(format!("{c:?}"))
            },
        )
        .await;
        // The owner forgets y's removal once it passes its time; y must not come back then,
        // through the following hand-back and anti-entropy rounds.
        eventually(
            "the owner forgets y's tombstone",
            Duration::from_secs(90),
            async || {
                let c = copies(&pool, std::slice::from_ref(owner), &service).await?;
                (!c[0].1.contains(&"y".to_string()))
                    .then_some(())
                    .ok_or(format!("{c:?}"))
            },
        )
        .await;
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < until {
            if let Ok(present) = at_owner().await {
                assert!(
                    !present.contains(&"y".to_string()),
                    "y, removed, came back at its owner from agent 3's orphan copy: {present:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
}
