//! Bulk transfers travel in bounded pages: a join and a repair that each move about 50 MB of
//! records (services with large metadata), far more than one 16 MiB ring frame holds, with
//! the joiner never answering for its range before it has it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chordctl::ring::Id;
use serde_json::{json, Value};

use crate::support::eventually;
use crate::support::http::call;
use crate::support::procs::{free_addr, AgentProc};

const SERVICES: usize = 4;
const PER_SERVICE: usize = 2_500;
/// Metadata per instance: 5 values of 1,000 bytes, so 4 × 2,500 instances hold about 50 MB.
const VALUES: usize = 5;

/// `n` service names whose identifiers lie in `(from, to]`, or `None` if that arc is too
/// narrow to find them quickly.
fn names_in(from: &Id, to: &Id, n: usize) -> Option<Vec<String>> {
    let names: Vec<String> = (0..2_000_000)
        .map(|i| format!("bulk-{i}"))
        .filter(|s| Id::of_key(s).in_half_open(from, to))
        .take(n)
        .collect();
    (names.len() == n).then_some(names)
}

fn metadata(i: usize) -> Value {
    let mut m = serde_json::Map::new();
    for k in 0..VALUES {
        m.insert(
            format!("blob{k}"),
            json!(format!("{i:06}").repeat(1000 / 6 + 1)[..1000]),
        );
    }
    Value::Object(m)
}

async fn register_all(url: &str, services: &[String]) {
    let next = Arc::new(AtomicUsize::new(0));
    let total = services.len() * PER_SERVICE;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (url, next, services) = (url.to_string(), next.clone(), services.to_vec());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= total {
                    return;
                }
                let (s, i) = (&services[k % services.len()], k / services.len());
                let body = json!({"address": "10.9.0.1", "port": 1 + i, "metadata": metadata(i)});
                let resp = client
                    .put(format!("{url}/v1/services/{s}/instances/i{i}"))
                    .json(&body)
                    .send()
                    .await
                    .expect("register");
                assert_eq!(resp.status().as_u16(), 200, "register {s}/i{i}");
            }
        }));
    }
    for t in tasks {
        t.await.expect("register task");
    }
}

/// How many instances of `service` an agent returns (`None` on a non-200 answer).
async fn instances(url: &str, service: &str) -> (u16, usize) {
    let (st, body) = call("GET", &format!("{url}/v1/services/{service}"), None).await;
    (st, body["instances"].as_array().map_or(0, Vec::len))
}

async fn all_there(url: &str, services: &[String]) -> Result<(), String> {
    for s in services {
        let (st, n) = instances(url, s).await;
        if st != 200 || n != PER_SERVICE {
            return Err(format!("{s} through {url}: {st}, {n} of {PER_SERVICE}"));
        }
    }
    Ok(())
}

async fn replica_records(url: &str) -> usize {
    let (_, text) = crate::support::http::raw("GET", &format!("{url}/metrics"), vec![]).await;
    text.lines()
        .find_map(|l| l.strip_prefix("chordctl_records{role=\"replica\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_join_and_a_repair_each_move_50_mb_of_records_in_pages() {
    let k2 = ["--replicas", "2"];
    let a = AgentProc::start(None, &k2);
    let a_id = Id::from_hex(&a.id).expect("id");
    // The joiner's address is chosen first, so that the services can be named to fall in
    // the range it will own.
    // C's address, which joins later between B and A, is chosen with it: an address of B
    // that leaves (B, A) so narrow that no port lands in it is passed over.
    let (b_addr, services, c_addr) = (0..50)
        .find_map(|_| {
            let addr = free_addr();
            let b = Id::of_addr(&addr);
            let c = (0..200)
                .map(|_| free_addr())
                .find(|c| Id::of_addr(c).in_open(&b, &a_id))?;
            names_in(&a_id, &b, SERVICES).map(|names| (addr, names, c))
        })
        .expect("an address whose range is wide enough, with room after it");
    let b_id = Id::of_addr(&b_addr);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let url_a = a.url();
    rt.block_on(register_all(&url_a, &services));

    // The join: B takes ~50 MB from A. Meanwhile a reader through A must never see a service
    // missing or partial: B answers for its range only once it has all of it.
    let stop = Arc::new(AtomicBool::new(false));
    let bad = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let reader = {
        let (stop, bad, url, services) =
            (stop.clone(), bad.clone(), url_a.clone(), services.clone());
        rt.spawn(async move {
            let mut reads = 0;
            while !stop.load(Ordering::Relaxed) {
                for s in &services {
                    let (st, n) = instances(&url, s).await;
                    reads += 1;
                    // 503 (ownership settling past the retry window) is an honest answer;
                    // a 404 or a short list is not.
                    if st != 503 && (st != 200 || n != PER_SERVICE) {
                        bad.lock()
                            .expect("lock")
                            .push(format!("{s}: {st}, {n} instances"));
                    }
                }
            }
            reads
        })
    };
    let http_b = free_addr();
    let b = AgentProc::start_at(Some(&a.ring), &b_addr, &http_b, &k2);
    assert_eq!(Id::from_hex(&b.id), Some(b_id));
    let url_b = b.url();
    rt.block_on(async {
        eventually(
            "B answers for its range with every record",
            Duration::from_secs(120),
            async || all_there(&url_b, &services).await,
        )
        .await;
    });
    stop.store(true, Ordering::Relaxed);
    let reads = rt.block_on(reader).expect("reader");
    let bad = bad.lock().expect("lock").clone();
    assert!(bad.is_empty(), "reads during the join ({reads}): {bad:?}");

    // The repair: C joins right after B, so it becomes B's replica and anti-entropy copies
    // B's ~50 MB to it. The bulk services reach C only that way (C's own range, taken from A,
    // holds none of them).
    let c_http = free_addr();
    let c = AgentProc::start_at(Some(&a.ring), &c_addr, &c_http, &k2);
    let url_c = c.url();
    rt.block_on(async {
        eventually(
            "C holds B's services as a replica",
            Duration::from_secs(120),
            async || {
                let n = replica_records(&url_c).await;
                (n >= SERVICES)
                    .then_some(())
                    .ok_or(format!("{n} replica records"))
            },
        )
        .await;
    });
    // Only C's copy is left: every instance must be in it.
    let (mut a, mut b) = (a, b);
    a.kill9();
    b.kill9();
    rt.block_on(async {
        eventually(
            "C alone serves every record",
            Duration::from_secs(120),
            async || all_there(&url_c, &services).await,
        )
        .await;
    });
}

/// A join whose range takes the successor longer to gather than an RPC deadline (a large or
/// slow store, made so here by the test-only scan delay: 1.5 s against a 500 ms deadline)
/// still completes: the joiner waits longer for the first page at each attempt. With a fixed
/// deadline every attempt gave up before the answer, and the joiner never served its range.
#[test]
fn a_join_whose_range_takes_longer_to_gather_than_an_rpc_deadline_completes() {
    // The test agents' RPC deadline is 500 ms (`procs::agent_command`).
    let a = AgentProc::start_env(
        None,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &[],
        &[(chordctl::agent::registry::RANGE_SCAN_DELAY_ENV, "1500")],
    );
    let services: Vec<String> = (0..20).map(|i| format!("slow-scan-{i}")).collect();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        for s in &services {
            let (st, b) = call(
                "PUT",
                &format!("{}/v1/services/{s}/instances/i0", a.url()),
                Some(json!({"address": "10.9.0.1", "port": 80})),
            )
            .await;
            assert_eq!(st, 200, "{s}: {b}");
        }
    });
    // The joiner prints its address line only once it holds its range (within 90 s, or the
    // start panics).
    let b = AgentProc::start(Some(&a.ring), &[]);
    let url_b = b.url();
    rt.block_on(async {
        eventually(
            "every service through the joiner",
            Duration::from_secs(60),
            async || {
                for s in &services {
                    let (st, n) = instances(&url_b, s).await;
                    if st != 200 || n != 1 {
                        return Err(format!("{s}: {st}, {n} instances"));
                    }
                }
                Ok(())
            },
        )
        .await;
    });
}

/// Anti-entropy reaches a replica whose scans of an owner's range outlast the RPC deadline (the
/// test-only scan delay: 1.5 s against 500 ms, on the tree's and the flat comparison's scans
/// alike). C is cut off from A and B (each one's ring traffic follows a cut file) while a ring
/// of two takes 20 registrations of services C does not own; after the heal only A's and B's
/// anti-entropy can bring C those copies. A replica now keeps a scan for a few seconds and
/// answers the next round from it; when each call scanned again, every comparison timed out,
/// round after round, and C stayed without them (as a ten-minute fault campaign showed for
/// 30 s on a loaded machine).
/// Three agents A, B, C, each one's ring traffic following a cut file, C started with `c_env`.
struct CutRing {
    _dir: tempfile::TempDir,
    cuts: Vec<std::path::PathBuf>,
    a: AgentProc,
    b: AgentProc,
    c: AgentProc,
}

const SETTLE: Duration = Duration::from_secs(60);

impl CutRing {
    fn start(rt: &tokio::runtime::Runtime, c_env: &[(&str, &str)]) -> CutRing {
        let dir = tempfile::tempdir().expect("cut files");
        let cuts: Vec<std::path::PathBuf> = (0..3)
            .map(|i| dir.path().join(format!("cut-{i}")))
            .collect();
        for c in &cuts {
            std::fs::write(c, "").expect("cut file");
        }
        let file = |i: usize| cuts[i].to_string_lossy().into_owned();
        let (f0, f1, f2) = (file(0), file(1), file(2));
        let any = "127.0.0.1:0";
        let a = AgentProc::start_env(None, any, any, &[], &[("CHORDCTL_TEST_CUT_FILE", &f0)]);
        let b = AgentProc::start_env(
            Some(&a.ring),
            any,
            any,
            &[],
            &[("CHORDCTL_TEST_CUT_FILE", &f1)],
        );
        let mut env = vec![("CHORDCTL_TEST_CUT_FILE", f2.as_str())];
        env.extend_from_slice(c_env);
        let c = AgentProc::start_env(Some(&a.ring), any, any, &[], &env);
        let ring = CutRing {
            _dir: dir,
            cuts,
            a,
            b,
            c,
        };
        ring.wait_for_ring(rt, &[ring.a.url(), ring.b.url(), ring.c.url()]);
        ring
    }

    /// Every agent at `urls` sees a ring of exactly those.
    fn wait_for_ring(&self, rt: &tokio::runtime::Runtime, urls: &[String]) {
        let n = urls.len();
        rt.block_on(eventually(&format!("a ring of {n}"), SETTLE, async || {
            for url in urls {
                let (st, nodes) = call("GET", &format!("{url}/v1/ring/nodes"), None).await;
                if st != 200 || nodes.as_array().map_or(0, Vec::len) != n {
                    return Err(format!("{url}: {st} {nodes}"));
                }
            }
            Ok(())
        }));
    }

    /// `n` service names whose owner is not C (`only_a`: whose owner is A).
    fn services(
        &self,
        rt: &tokio::runtime::Runtime,
        prefix: &str,
        n: usize,
        only_a: bool,
    ) -> Vec<String> {
        rt.block_on(async {
            let mut names = Vec::new();
            for i in 0.. {
                let name = format!("{prefix}-{i}");
                let (st, at) =
                    call("GET", &format!("{}/v1/locate/{name}", self.a.url()), None).await;
                assert_eq!(st, 200, "{at}");
                let owner = &at["owner"]["id"];
                if (only_a && owner == self.a.id.as_str())
                    || (!only_a && owner != self.c.id.as_str())
                {
                    names.push(name);
                }
                if names.len() == n {
                    break;
                }
            }
            names
        })
    }

    /// Cut C off from A and B, and wait until A and B are a ring of two.
    fn cut_c(&self, rt: &tokio::runtime::Runtime) {
        std::fs::write(&self.cuts[0], &self.c.ring).expect("cut");
        std::fs::write(&self.cuts[1], &self.c.ring).expect("cut");
        std::fs::write(&self.cuts[2], format!("{}\n{}", self.a.ring, self.b.ring)).expect("cut");
        self.wait_for_ring(rt, &[self.a.url(), self.b.url()]);
    }

    /// C holds none of `keys` (it was cut off while they were written); heal every cut, wait
    /// until the three are one ring again, then until C stores every one of `keys` (only
    /// anti-entropy can bring them: C owns none of their services).
    fn heal_until_c_holds(&self, rt: &tokio::runtime::Runtime, keys: &[String], within: Duration) {
        let pool = chordctl::rpc::Pool::new(Duration::from_secs(10));
        let held = async || {
            crate::support::procs::fetch_at(&pool, &self.c, keys.to_vec())
                .await
                .len()
        };
        assert_eq!(rt.block_on(held()), 0, "C was cut off during the writes");
        for c in &self.cuts {
            std::fs::write(c, "").expect("heal");
        }
        self.wait_for_ring(rt, &[self.a.url(), self.b.url(), self.c.url()]);
        rt.block_on(eventually(
            "C stores a copy of every registration (K = 3 on three nodes)",
            within,
            async || {
                let n = held().await;
                (n == keys.len())
                    .then_some(())
                    .ok_or(format!("C stores {n} of {}", keys.len()))
            },
        ));
    }
}

/// Anti-entropy reaches a replica whose scans of an owner's range outlast the RPC deadline (the
/// test-only scan delay: 1.5 s against 500 ms, on the tree's and the flat comparison's scans
/// alike). C is cut off from A and B (each one's ring traffic follows a cut file) while a ring
/// of two takes 20 registrations of services C does not own; after the heal only A's and B's
/// anti-entropy can bring C those copies. A replica now keeps a scan for a few seconds and
/// answers the next round from it; when each call scanned again, every comparison timed out,
/// round after round, and C stayed without them (as a ten-minute fault campaign showed for
/// 30 s on a loaded machine).
#[test]
fn a_replica_whose_range_scans_outlast_the_rpc_deadline_is_still_repaired() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let slow = (chordctl::agent::registry::RANGE_SCAN_DELAY_ENV, "1500");
    let ring = CutRing::start(&rt, &[slow]);
    // Services C does not own: only their replicas' repair can bring them to C.
    let services = ring.services(&rt, "slow-scan-copy", 20, false);
    ring.cut_c(&rt);
    rt.block_on(async {
        for s in &services {
            eventually(&format!("register {s}"), SETTLE, async || {
                let (st, b) = call(
                    "PUT",
                    &format!("{}/v1/services/{s}/instances/i0", ring.a.url()),
                    Some(json!({"address": "10.9.0.1", "port": 80})),
                )
                .await;
                (st == 200).then_some(()).ok_or(format!("{st} {b}"))
            })
            .await;
        }
    });
    let keys: Vec<String> = services.iter().map(|s| format!("u/{s}/i0")).collect();
    ring.heal_until_c_holds(&rt, &keys, SETTLE);
}

/// A replica that takes every chunk of a repair longer than the RPC deadline (the test-only
/// slow disk: 1 s a store write, against 500 ms) is repaired with a few timeouts, not one a
/// chunk. C is cut off while A takes 4,500 registrations of services A owns (five chunks of
/// 1,024 to send); after the heal A's anti-entropy sends them. Each kind of repair call now
/// has its own deadline per replica, doubled after a timeout and set from the last answer's
/// time after one: two timeouts (500 ms, 1 s), then every chunk at 2 s. With the RPC deadline
/// for every call, each round sent one chunk, timed out, and ended; the replica applied it
/// late, and the next round sent the next: a timeout (and a round of 3 s) for every chunk.
#[test]
fn a_replica_slower_than_the_rpc_deadline_at_taking_chunks_is_repaired_with_few_timeouts() {
    const SERVICES: usize = 5;
    const EACH: usize = 900;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let slow = (chordctl::agent::registry::WRITE_DELAY_ENV, "1000");
    let ring = CutRing::start(&rt, &[slow]);
    let services = ring.services(&rt, "slow-chunk", SERVICES, true);
    ring.cut_c(&rt);
    let url = ring.a.url();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for s in services.clone() {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let client = reqwest::Client::new();
                for i in 0..EACH {
                    let put = format!("{url}/v1/services/{s}/instances/i{i}");
                    let body = json!({"address": "10.9.0.1", "port": 1 + i});
                    let deadline = std::time::Instant::now() + SETTLE;
                    loop {
                        let st = client
                            .put(&put)
                            .json(&body)
                            .send()
                            .await
                            .map(|r| r.status());
                        if matches!(st, Ok(st) if st.is_success()) {
                            break;
                        }
                        assert!(std::time::Instant::now() < deadline, "{put}: {st:?}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }));
        }
        for t in tasks {
            t.await.expect("registrations");
        }
    });
    let keys: Vec<String> = services
        .iter()
        .flat_map(|s| (0..EACH).map(move |i| format!("u/{s}/i{i}")))
        .collect();
    ring.heal_until_c_holds(&rt, &keys, Duration::from_secs(120));
    let timeouts = rt.block_on(async {
        let (_, text) =
            crate::support::http::raw("GET", &format!("{url}/metrics"), Vec::new()).await;
        text.lines()
            .find_map(|l| {
                l.strip_prefix(
                    "chordctl_antientropy_failures_total{step=\"handoff\",cause=\"timeout\"} ",
                )
            })
            .map_or(0, |v| v.trim().parse::<u64>().unwrap_or(0))
    });
    assert!(
        timeouts <= 3,
        "A's chunks to C timed out {timeouts} times (5 chunks; at most 3 expected)"
    );
}

/// A comparison call that fails is counted by its step and cause, so an operator (and
/// the fault campaign's trail) can tell which call a repair that fails round after round is
/// stuck on: here the first level of the hash tree, which the replica's slow scan makes
/// outlast the RPC deadline.
#[test]
fn a_failed_anti_entropy_call_is_counted_by_its_step() {
    let any = "127.0.0.1:0";
    let a = AgentProc::start(None, &[]);
    let slow = (chordctl::agent::registry::RANGE_SCAN_DELAY_ENV, "1500");
    let _b = AgentProc::start_env(Some(&a.ring), any, any, &[], &[slow]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let sample = "chordctl_antientropy_failures_total{step=\"tree\",cause=\"timeout\"} ";
    rt.block_on(eventually(
        "the owner counts its failed tree call to the slow replica",
        Duration::from_secs(60),
        async || {
            let (st, text) =
                crate::support::http::raw("GET", &format!("{}/metrics", a.url()), Vec::new()).await;
            let n: u64 = text
                .lines()
                .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
                .unwrap_or(0);
            (st == 200 && n > 0)
                .then_some(())
                .ok_or(format!("{st}: no {sample}in\n{text}"))
        },
    ));
}
