//! Copies of one service that hold different gVips, with real agent processes: they agree on
//! the one assigned first once they meet (a join's transfer, anti-entropy), and every agent
//! answers it.

use std::time::Duration;

use serde_json::json;

use crate::support::eventually;
use crate::support::http::{call, call_ok};
use crate::support::procs::{free_addr, records_at, ring_of, ring_order_of, AgentProc};

/// Services of each kind checked: owned by the first agent, owned by the joiner.
const EACH: usize = 2;

/// `EACH` service names owned by each of `agents` (two) once both are in one ring.
fn services_owned_by_each(agents: &[&AgentProc]) -> Vec<String> {
    let mut picked: [Vec<String>; 2] = Default::default();
    for i in 0.. {
        let name = format!("gv{i}");
        let owner = ring_order_of(agents, &name)[0];
        if picked[owner].len() < EACH {
            picked[owner].push(name);
        }
        if picked.iter().all(|p| p.len() == EACH) {
            break;
        }
    }
    picked.concat()
}

/// The gVip `url`'s agent answers for `service` (from its owner).
async fn resolved(url: &str, service: &str) -> Result<String, String> {
    let (status, v) = call(
        "GET",
        &format!("{url}/services/resolution/?sname={service}"),
        None,
    )
    .await;
    match v["gVip"].as_str() {
        Some(g) if status == 200 && v["msg"] == "Success" => Ok(g.to_string()),
        _ => Err(format!("{service} through {url}: {status} {v}")),
    }
}

/// Register one instance `id` of every service of `services` through `url`; the gVips it got.
async fn register_all(url: &str, services: &[String], id: &str) -> Vec<String> {
    let mut gvips = Vec::new();
    for s in services {
        call_ok(
            "PUT",
            &format!("{url}/v1/services/{s}/instances/{id}"),
            Some(json!({"address": "h", "port": 1})),
        )
        .await;
        let mut got = None;
        eventually(
            "the gVip just assigned",
            Duration::from_secs(30),
            async || {
                got = Some(resolved(url, s).await?);
                Ok(())
            },
        )
        .await;
        gvips.push(got.expect("resolved"));
    }
    gvips
}

/// (gVip, instance ids) of every node's copy of `service`, over ring RPC.
async fn copies(
    pool: &chordctl::rpc::Pool,
    agents: &[&AgentProc],
    service: &str,
) -> Result<Vec<(Option<String>, Vec<String>)>, String> {
    let recs = records_at(pool, agents.iter().copied(), service).await?;
    recs.into_iter()
        .map(|rec| {
            rec.map(|r| {
                let ids = r.instances.keys().map(|k| k.to_string()).collect();
                (r.gvip, ids)
            })
            .ok_or(format!("a node holds nothing of {service}"))
        })
        .collect()
}

/// Agent A and agent B each make a ring of their own and each registers the same services,
/// so each assigns its own gVips, A's first. B is then killed and restarted on its data
/// directory and ring address (its identity), joining A. For the services B owns the join's
/// transfer brings A's copies to B; for those A owns, B's copies reach A by anti-entropy
/// alone. Either way both copies end with A's gVip (assigned first) and both instances, and
/// discover's gVip through either agent is A's. Before meta entries had a merge rule and a
/// mark, each copy kept its own gVip for good.
#[test]
fn copies_holding_different_gvips_agree_on_the_first_assigned_once_they_meet() {
    let no_args: [&str; 0] = [];
    let a = AgentProc::start(None, &no_args);
    let b_dir = tempfile::tempdir().expect("B's data directory");
    let b_path = b_dir.path().to_str().expect("utf-8").to_string();
    let b_args = ["--data-dir", b_path.as_str()];
    let b_ring = free_addr();
    let mut b = AgentProc::start_at(None, &b_ring, "127.0.0.1:0", &b_args);
    let services = services_owned_by_each(&[&a, &b]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let pool = chordctl::rpc::Pool::new(Duration::from_secs(5));
    let first = rt.block_on(register_all(&a.url(), &services, "a1"));
    let later = rt.block_on(register_all(&b.url(), &services, "b1"));
    // A crash: what B acknowledged is on its disk.
    b.kill9();
    let b = AgentProc::start_at(Some(&a.ring), &b_ring, "127.0.0.1:0", &b_args);
    let agents = [&a, &b];
    rt.block_on(async {
        ring_of(&[a.url(), b.url()], 2).await;
        for (i, s) in services.iter().enumerate() {
            let want = first[i].clone();
            if later[i] == want {
                // The two random draws met (1 in 65,000): nothing to tell apart.
                continue;
            }
            eventually(
                &format!("both copies of {s} hold {want} (not {})", later[i]),
                Duration::from_secs(60),
                async || {
                    let all = copies(&pool, &agents, s).await?;
                    let agreed = all.iter().all(|(gvip, ids)| {
                        gvip.as_deref() == Some(want.as_str()) && ids == &["a1", "b1"]
                    });
                    agreed.then_some(()).ok_or(format!("{all:?}"))
                },
            )
            .await;
            for agent in agents {
                assert_eq!(resolved(&agent.url(), s).await, Ok(want.clone()));
            }
        }
    });
}
