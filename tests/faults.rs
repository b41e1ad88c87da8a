//! A fault campaign against real agent processes. Writers register and deregister through
//! random agents while a nemesis, driven by a seeded random generator, kills agents with
//! SIGKILL and restarts them (sometimes with a clock 10 minutes off), pauses them with
//! SIGSTOP/SIGCONT, cuts the ring into a contiguous arc and the rest (each agent follows a
//! cut file, `CHORDCTL_TEST_CUT_FILE`), slows one agent's ring calls by 100–700 ms around
//! the 500 ms RPC deadline (a `delay MS` line in its cut file), and kills the
//! `redis-server` that two of the five agents keep their records in (the others use the
//! embedded store, so the faults meet both stores, in one ring). Two agents, one on each store,
//! run with a record cache far smaller than what they hold, so that records are dropped from
//! memory and read from the store again all the time under the faults. Then everything heals
//! and the campaign checks:
//!
//! - the ring is one ring again (every agent lists every agent);
//! - every acknowledged registration is in the copies of at least K nodes, and every
//!   acknowledged removal is in none (read over ring RPC, `ReadReplica`, node by node);
//! - through every agent, discover shows exactly that.
//!
//! About a minute of faults in the suite; `CHORDCTL_FAULT_LONG=1` runs ten. The seed comes
//! from `CHORDCTL_FAULT_SEED` (or the clock) and is printed first, to replay a failure.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chordctl::registry::ops::{RegistryRequest, RegistryResponse};
use chordctl::ring::Id;
use chordctl::rpc::{Pool, Request, Response};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::support::eventually;
use crate::support::procs::{free_addr, AgentProc};
use crate::support::redis::RedisServer;

const NODES: usize = 5;
const K: usize = 3;
const SERVICES: usize = 12;
const WRITERS: usize = 3;
const TEN_MINUTES_MS: i64 = 600_000;
/// The nodes whose records live in the campaign's `redis-server` (each under its own key
/// prefix, its node id), with `appendfsync always`.
const ON_REDIS: [usize; 2] = [1, 3];

/// The nodes whose record cache holds at most [`SMALL_CACHE_UNITS`] units (instances and
/// tombstones): one on the embedded store, one on Redis. A minute of writes leaves about a
/// thousand in each of the twelve services, and a node owns two or three and copies more:
/// records are dropped to make room throughout. In the ten-minute run the services outgrow
/// the whole cache, and are then read from the store at every use. A run prints both counts.
const SMALL_CACHE: [usize; 2] = [2, 3];
const SMALL_CACHE_UNITS: &str = "2000";

struct Node {
    proc: Option<AgentProc>,
    bind: String,
    http: String,
    dir: tempfile::TempDir,
    cut: PathBuf,
    paused: bool,
    /// The Redis URL of a node on Redis; `None`: the embedded store in `dir`.
    redis: Option<String>,
    /// Runs with a small record cache ([`SMALL_CACHE`]).
    small_cache: bool,
}

impl Node {
    fn url(&self) -> String {
        format!("http://{}", self.http)
    }

    fn start(&mut self, seed: Option<&str>, offset_ms: i64) {
        let dir = self.dir.path().join("data");
        let dir = dir.to_str().expect("utf-8 path").to_string();
        let store = match &self.redis {
            Some(url) => ["--redis", url.as_str()],
            None => ["--data-dir", dir.as_str()],
        };
        let cut = self.cut.to_str().expect("utf-8 path").to_string();
        let offset = offset_ms.to_string();
        let mut env = vec![
            ("CHORDCTL_TEST_CUT_FILE", cut.as_str()),
            ("CHORDCTL_TEST_CLOCK_OFFSET_MS", offset.as_str()),
        ];
        if self.small_cache {
            env.push(("CHORDCTL_TEST_RECORD_CACHE_UNITS", SMALL_CACHE_UNITS));
        }
        self.proc = Some(AgentProc::start_env(
            seed, &self.bind, &self.http, &store, &env,
        ));
    }

    fn signal(&self, sig: i32) {
        if let Some(p) = &self.proc {
            p.signal(sig);
        }
    }
}

/// What a client was told about one instance, by its last operation.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Told {
    Registered,
    Removed,
    /// The last operation got no clear answer (timeout, 503): it may or may not have happened.
    Unknown,
}

type Ledger = Arc<Mutex<HashMap<(String, String), Told>>>;

/// One writer: registers new instances and removes some of its own, through random agents,
/// until `stop`. Each writer owns its instance ids, so each instance's operations are
/// sequential and its last answer says what must hold.
async fn writer(w: usize, urls: Vec<String>, ledger: Ledger, stop: Arc<AtomicBool>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed ^ (w as u64 + 1));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(12))
        .build()
        .expect("client");
    let mut mine: Vec<(String, String)> = Vec::new();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let url = &urls[rng.gen_range(0..urls.len())];
        let removable: Vec<&(String, String)> = {
            let l = ledger.lock().expect("ledger");
            mine.iter()
                .filter(|k| l.get(*k) == Some(&Told::Registered))
                .collect()
        };
        let (key, register) = if removable.is_empty() || rng.gen_bool(0.7) {
            n += 1;
            let key = (
                format!("fault-{}", rng.gen_range(0..SERVICES)),
                format!("w{w}-{n}"),
            );
            mine.push(key.clone());
            (key, true)
        } else {
            (removable[rng.gen_range(0..removable.len())].clone(), false)
        };
        let target = format!("{url}/v1/services/{}/instances/{}", key.0, key.1);
        let sent = if register {
            client
                .put(&target)
                .json(&json!({"address": "10.7.0.1", "port": 8000}))
                .send()
                .await
        } else {
            client.delete(&target).send().await
        };
        let told = match sent {
            Ok(r) if r.status().as_u16() == 200 => {
                if register {
                    Told::Registered
                } else {
                    Told::Removed
                }
            }
            // Refused before anything was sent: the instance keeps what it was told before.
            Err(e) if e.is_connect() => {
                if register {
                    mine.pop();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            _ => Told::Unknown,
        };
        ledger.lock().expect("ledger").insert(key, told);
    }
}

/// Cut `arc` (node indexes) from the rest, or heal everything when `arc` is empty.
fn set_cut(nodes: &[Node], arc: &[usize]) {
    for (i, n) in nodes.iter().enumerate() {
        let inside = arc.contains(&i);
        let blocked: Vec<&str> = if arc.is_empty() {
            Vec::new()
        } else {
            nodes
                .iter()
                .enumerate()
                .filter(|(j, _)| arc.contains(j) != inside)
                .map(|(_, m)| m.bind.as_str())
                .collect()
        };
        std::fs::write(&n.cut, blocked.join("\n")).expect("write cut file");
    }
}

/// A live agent's ring address to join through, other than `except`.
fn seed_for(nodes: &[Node], except: usize) -> String {
    nodes
        .iter()
        .enumerate()
        .find(|(i, n)| *i != except && n.proc.is_some() && !n.paused)
        .map(|(_, n)| n.bind.clone())
        .expect("a live agent to join through")
}

/// Every acknowledged registration in the copies of at least K of the nodes at `binds`, and
/// every acknowledged removal in none; otherwise the first that is not, with the nodes that
/// hold it and how many more are short.
async fn k_copies(
    pool: &Pool,
    binds: &[String],
    registered: &[&(String, String)],
    removed: &[&(String, String)],
) -> Result<(), String> {
    let mut copies: HashMap<String, Vec<BTreeSet<String>>> = HashMap::new();
    for s in 0..SERVICES {
        let service = format!("fault-{s}");
        let mut held = Vec::new();
        for addr in binds {
            held.push(copy_at(pool, addr, &service).await?);
        }
        copies.insert(service, held);
    }
    let holders = |(service, id): &(String, String)| -> Vec<usize> {
        (0..binds.len())
            .filter(|&i| copies[service][i].contains(id))
            .collect()
    };
    // The first instance `found`, with the nodes that hold it, what the healed ring makes
    // them for its service, and how many more there are.
    let first = |found: &mut dyn Iterator<Item = &&(String, String)>, what: &str| {
        found.next().map_or(Ok(()), |w| {
            Err(format!(
                "{}/{} {what} {:?} ({}; {} more)",
                w.0,
                w.1,
                holders(w),
                roles(binds, &w.0),
                found.count()
            ))
        })
    };
    first(
        &mut registered.iter().filter(|w| holders(w).len() < K),
        "registered, on nodes",
    )?;
    first(
        &mut removed.iter().filter(|w| !holders(w).is_empty()),
        "removed, still on nodes",
    )
}

/// Which nodes the healed ring (every node a member) makes `service`'s owner and replicas, by
/// index into `binds`: a node holding a copy and named in neither keeps a stray copy.
fn roles(binds: &[String], service: &str) -> String {
    let ids: Vec<String> = binds.iter().map(|b| Id::of_addr(b).to_hex()).collect();
    let keepers = crate::support::procs::ring_order_of_ids(&ids, service);
    format!("owner {}, replicas {:?}", keepers[0], &keepers[1..K])
}

/// Each node's anti-entropy rounds that compared (after a ring change, when unsynced,
/// periodic) and its copies a replica did not confirm, from its metrics: what repair was doing
/// while a slow check waited.
async fn repair_counters(urls: &[String]) -> String {
    let mut each = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        let (_, text) =
            crate::support::http::raw("GET", &format!("{url}/metrics"), Vec::new()).await;
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .map_or("?".to_string(), |v| v.trim().to_string())
        };
        let rounds = |why: &str| {
            value(&format!(
                "chordctl_antientropy_rounds_total{{reason=\"{why}\"}}"
            ))
        };
        // Failed anti-entropy calls, by step and cause: `tree/timeout=3`.
        let failed: Vec<String> = text
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("chordctl_antientropy_failures_total{step=\"")?;
                let (step, rest) = rest.split_once("\",cause=\"")?;
                let (cause, n) = rest.split_once("\"} ")?;
                Some(format!("{step}/{cause}={n}"))
            })
            .collect();
        let hand_backs = |how: &str| {
            value(&format!(
                "chordctl_handback_rounds_total{{outcome=\"{how}\"}}"
            ))
        };
        each.push(format!(
            "node {i}: rounds {}/{}/{}, hand-backs {}/{}/{}, unconfirmed {}, failed calls [{}]",
            rounds("ring_change"),
            rounds("unsynced"),
            rounds("periodic"),
            hand_backs("done"),
            hand_backs("failed"),
            hand_backs("arc_unsure"),
            value("chordctl_replication_errors_total"),
            failed.join(" ")
        ));
    }
    format!(
        "(rounds ring_change/unsynced/periodic, hand-backs done/failed/arc_unsure) {}",
        each.join("; ")
    )
}

/// This node's copy of `service` as it holds it (owner or replica), over ring RPC.
async fn copy_at(pool: &Pool, addr: &str, service: &str) -> Result<BTreeSet<String>, String> {
    let req = Request::Registry(RegistryRequest::ReadReplica {
        service: service.to_string(),
    });
    match pool.call(addr, req).await {
        Ok(Response::Registry(RegistryResponse::Record(rec))) => Ok(rec
            .map(|r| r.instances.keys().map(|k| k.to_string()).collect())
            .unwrap_or_default()),
        other => Err(format!("{addr}: {other:?}")),
    }
}

#[test]
fn a_fault_campaign_loses_no_acknowledged_write() {
    let seed: u64 = std::env::var("CHORDCTL_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    let long = std::env::var("CHORDCTL_FAULT_LONG").is_ok_and(|v| v == "1");
    let length = Duration::from_secs(if long { 600 } else { 60 });
    let mut rng = StdRng::seed_from_u64(seed);
    // Without redis-server (and outside CI) every node runs on the embedded store.
    let mut redis = RedisServer::start();
    let redis_url = redis.as_ref().map(RedisServer::url);
    let stores = match &redis {
        Some(_) => format!("nodes {ON_REDIS:?} on redis-server, the others embedded"),
        None => "every node on the embedded store".to_string(),
    };
    println!(
        "fault campaign: seed {seed} (replay with CHORDCTL_FAULT_SEED={seed}), {length:?}, \
         {stores}"
    );

    let mut nodes: Vec<Node> = (0..NODES)
        .map(|i| {
            let dir = tempfile::tempdir().expect("tmp");
            let cut = dir.path().join("cut");
            Node {
                proc: None,
                bind: free_addr(),
                http: free_addr(),
                dir,
                cut,
                paused: false,
                redis: redis_url.clone().filter(|_| ON_REDIS.contains(&i)),
                small_cache: SMALL_CACHE.contains(&i),
            }
        })
        .collect();
    set_cut(&nodes, &[]);
    nodes[0].start(None, 0);
    for i in 1..NODES {
        let seed = nodes[0].bind.clone();
        nodes[i].start(Some(&seed), 0);
    }
    // Ring order, for contiguous arcs.
    let mut order: Vec<usize> = (0..NODES).collect();
    order.sort_by_key(|i| chordctl::ring::Id::of_addr(&nodes[*i].bind));
    let urls: Vec<String> = nodes.iter().map(Node::url).collect();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(one_ring(&urls));

    let ledger: Ledger = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| rt.spawn(writer(w, urls.clone(), ledger.clone(), stop.clone(), seed)))
        .collect();

    // The nemesis: one fault at a time (a cut sometimes with a crash on the other side), each
    // undone before the next; a clock skew stays with
    // the restarted node until its next restart, so pauses, cuts and kills also meet nodes
    // whose clocks are 10 minutes apart.
    let started = Instant::now();
    let mut log = Vec::new();
    while started.elapsed() < length {
        let victim = rng.gen_range(0..NODES);
        let hold = Duration::from_millis(rng.gen_range(1500..4000));
        let action = rng.gen_range(0..6);
        match action {
            5 => {
                // Around the test agents' 500 ms RPC deadline: some calls slow, some late.
                let ms = rng.gen_range(100..=700);
                log.push(format!(
                    "delay node {victim}'s ring calls by {ms} ms for {hold:?}"
                ));
                std::fs::write(&nodes[victim].cut, format!("delay {ms}")).expect("delay");
                std::thread::sleep(hold);
                set_cut(&nodes, &[]);
            }
            4 if redis.is_some() => {
                log.push(format!("kill -9 redis-server for {hold:?}"));
                if let Some(r) = redis.as_mut() {
                    r.stop();
                    std::thread::sleep(hold);
                    r.restart();
                }
            }
            0 | 1 => {
                let skew = match rng.gen_range(0..4) {
                    0 => -TEN_MINUTES_MS,
                    1 => TEN_MINUTES_MS,
                    _ => 0,
                };
                log.push(format!(
                    "kill -9 node {victim}, restart with skew {skew} ms"
                ));
                if let Some(mut p) = nodes[victim].proc.take() {
                    p.kill9();
                }
                std::thread::sleep(hold);
                let seed = seed_for(&nodes, victim);
                nodes[victim].start(Some(&seed), skew);
            }
            2 => {
                log.push(format!("SIGSTOP node {victim} for {hold:?}"));
                nodes[victim].paused = true;
                nodes[victim].signal(libc::SIGSTOP);
                std::thread::sleep(hold);
                nodes[victim].signal(libc::SIGCONT);
                nodes[victim].paused = false;
            }
            _ => {
                let len = rng.gen_range(1..=2);
                let at = rng.gen_range(0..NODES);
                let arc: Vec<usize> = (0..len).map(|k| order[(at + k) % NODES]).collect();
                // A third of the cuts also crash a node on the other side while cut; it comes
                // back after the heal.
                let crash = rng.gen_bool(1.0 / 3.0).then(|| {
                    let rest: Vec<usize> = (0..NODES).filter(|i| !arc.contains(i)).collect();
                    rest[rng.gen_range(0..rest.len())]
                });
                log.push(format!(
                    "cut arc {arc:?} from the rest for {hold:?}{}",
                    crash.map_or(String::new(), |c| format!(", kill -9 node {c} while cut"))
                ));
                set_cut(&nodes, &arc);
                std::thread::sleep(hold / 2);
                if let Some(c) = crash {
                    if let Some(mut p) = nodes[c].proc.take() {
                        p.kill9();
                    }
                }
                std::thread::sleep(hold / 2);
                set_cut(&nodes, &[]);
                if let Some(c) = crash {
                    let seed = seed_for(&nodes, c);
                    nodes[c].start(Some(&seed), 0);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(500..1500)));
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        rt.block_on(w).expect("writer");
    }
    let told = ledger.lock().expect("ledger").clone();
    let registered: Vec<&(String, String)> = told
        .iter()
        .filter(|(_, t)| **t == Told::Registered)
        .map(|(k, _)| k)
        .collect();
    let removed: Vec<&(String, String)> = told
        .iter()
        .filter(|(_, t)| **t == Told::Removed)
        .map(|(k, _)| k)
        .collect();
    let unknown = told.values().filter(|t| **t == Told::Unknown).count();
    println!(
        "faults: {}; {} instances acknowledged present, {} acknowledged removed, {unknown} \
         unknown",
        log.join("; "),
        registered.len(),
        removed.len()
    );
    assert!(!registered.is_empty(), "the writers got writes through");

    // Healed: one ring, every acknowledged registration on at least K nodes, every
    // acknowledged removal on none, and discover through every agent agrees.
    let healed = Instant::now();
    let mut phases = Vec::new();
    rt.block_on(async {
        one_ring(&urls).await;
        phases.push(("one ring", healed.elapsed()));
        let pool = Pool::new(Duration::from_secs(5));
        let binds: Vec<String> = nodes.iter().map(|n| n.bind.clone()).collect();
        // What the check waited for, each time it changed, and what repair had done by then:
        // a slow check says why.
        let mut trail: Vec<(f64, String, String)> = Vec::new();
        eventually(
            "every acknowledged write on K nodes, every removal on none",
            Duration::from_secs(180),
            async || {
                let outcome = k_copies(&pool, &binds, &registered, &removed).await;
                if let Err(e) = &outcome {
                    if trail.last().is_none_or(|(_, last, _)| last != e) {
                        let at = healed.elapsed().as_secs_f64();
                        trail.push((at, e.clone(), repair_counters(&urls).await));
                    }
                }
                outcome
            },
        )
        .await;
        phases.push(("every acknowledged write on K nodes", healed.elapsed()));
        if healed.elapsed() > Duration::from_secs(5) {
            // The last few things waited for, and since when.
            let from = trail.len().saturating_sub(8);
            for (at, what, repair) in &trail[from..] {
                println!("  waited at {at:.1} s: {what}\n    {repair}");
            }
        }
        for url in &urls {
            eventually(
                "discover through every agent agrees",
                Duration::from_secs(60),
                async || {
                    for s in 0..SERVICES {
                        let service = format!("fault-{s}");
                        let (st, body) = crate::support::http::call(
                            "GET",
                            &format!("{url}/v1/services/{service}"),
                            None,
                        )
                        .await;
                        let ids: BTreeSet<String> = body["instances"]
                            .as_array()
                            .map(|l| {
                                l.iter()
                                    .filter_map(|v| v["id"].as_str().map(String::from))
                                    .collect()
                            })
                            .unwrap_or_default();
                        if st != 200 && st != 404 {
                            return Err(format!("{service} through {url}: {st}"));
                        }
                        for (sv, id) in &registered {
                            if *sv == service && !ids.contains(id) {
                                return Err(format!("{service}/{id} missing through {url}"));
                            }
                        }
                        for (sv, id) in &removed {
                            if *sv == service && ids.contains(id) {
                                return Err(format!("{service}/{id} back through {url}"));
                            }
                        }
                    }
                    Ok(())
                },
            )
            .await;
        }
    });
    let phases: Vec<String> = phases
        .iter()
        .map(|(what, at)| format!("{what} at {:.1} s", at.as_secs_f64()))
        .collect();
    println!(
        "healed and checked {:.1} s after the last fault ({})",
        healed.elapsed().as_secs_f64(),
        phases.join(", ")
    );
    // What the small record caches did since their nodes' last start.
    let counts: Vec<String> = SMALL_CACHE
        .iter()
        .map(|&i| {
            let count = |name| rt.block_on(crate::support::http::metric(&urls[i], name));
            format!(
                "node {i}: {} dropped, {} too large",
                count("chordctl_record_cache_evictions_total"),
                count("chordctl_record_cache_full_total")
            )
        })
        .collect();
    println!(
        "the small record caches since their nodes' last start: {}",
        counts.join("; ")
    );
}

/// Every agent lists every agent: one ring.
async fn one_ring(urls: &[String]) {
    for url in urls {
        eventually(
            "one ring of every agent",
            Duration::from_secs(90),
            async || {
                let (_, v) =
                    crate::support::http::call("GET", &format!("{url}/v1/ring/nodes"), None).await;
                let n = v.as_array().map_or(0, Vec::len);
                (n == NODES)
                    .then_some(())
                    .ok_or(format!("{url} sees {n} nodes"))
            },
        )
        .await;
    }
}
