//! Health beyond a state (API.md, "Health beyond a state" and "Explain") from outside: the
//! per-service policy through any agent and across an owner's crash and restart, thresholds,
//! panic on the v1 and the prototype's routes, explain, self-preservation at an owner, and the
//! removal of an instance that stops reporting.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::cluster::TestCluster;
use crate::support::eventually;
use crate::support::http::{call, call_ok, call_with_headers};
use crate::support::procs::{client, free_addr, poll, ring_order, AgentProc, Reaped};

/// Generous: debug builds on a loaded two-core machine.
const DEADLINE: Duration = Duration::from_secs(60);

/// `method url` with a JSON body: (status, the `X-Chordctl-Panic` header, body).
async fn call_with_panic(method: &str, url: &str, body: Option<Value>) -> (u16, bool, Value) {
    let (status, headers, value) = call_with_headers(method, url, body).await;
    let panic = headers.get("x-chordctl-panic").is_some_and(|v| v == "true");
    (status, panic, value)
}

async fn register(url: &str, service: &str, id: &str, tags: &[&str], ttl: Option<u64>) {
    let mut body = json!({"address": "10.0.0.1", "port": 80, "tags": tags});
    if let Some(ttl) = ttl {
        body["ttl_secs"] = json!(ttl);
    }
    call_ok(
        "PUT",
        &format!("{url}/v1/services/{service}/instances/{id}"),
        Some(body),
    )
    .await;
}

async fn report(url: &str, service: &str, id: &str, body: Value) -> Value {
    call_ok(
        "PUT",
        &format!("{url}/v1/services/{service}/instances/{id}/status"),
        Some(body),
    )
    .await
}

fn ids(answer: &Value) -> Vec<String> {
    answer["instances"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| i["id"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_is_set_and_read_through_any_agent_and_bad_input_is_a_400() {
    let c = TestCluster::start(3).await;
    c.settle().await;
    let policy = |i: usize| format!("{}/v1/services/pay/policy", c.url(i));
    // Before anything is set: 404, like any unknown service.
    let (status, body) = call("GET", &policy(0), None).await;
    assert_eq!(status, 404, "{body}");
    let set = json!({"failures_before_critical": 3, "successes_before_passing": 2,
                     "flap_half_life_secs": 60, "panic_threshold": 0.25});
    assert_eq!(call_ok("PUT", &policy(1), Some(set.clone())).await, set);
    for i in 0..3 {
        assert_eq!(
            call_ok("GET", &policy(i), None).await,
            set,
            "through agent {i}"
        );
    }
    // Omitted fields take their defaults.
    let partial = call_ok("PUT", &policy(2), Some(json!({"panic_threshold": 0.5}))).await;
    assert_eq!(
        partial,
        json!({"failures_before_critical": 1, "successes_before_passing": 1,
               "flap_half_life_secs": 0, "panic_threshold": 0.5})
    );
    for (bad, says) in [
        (
            json!({"failures_before_critical": 0}),
            "failures_before_critical",
        ),
        (json!({"panic_threshold": 2}), "panic_threshold"),
        (json!({"flap_half_life_secs": -1}), "flap_half_life_secs"),
        (
            json!({"successes_before_passing": "x"}),
            "invalid policy body",
        ),
    ] {
        let (status, body) = call("PUT", &policy(0), Some(bad.clone())).await;
        assert_eq!(status, 400, "{bad}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{bad}: {body}");
    }
    let (status, _) = call(
        "PUT",
        &format!("{}/v1/services/b%2Fad/policy", c.url(0)),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 400, "a bad service name");
    assert_eq!(
        call_ok("GET", &policy(1), None).await,
        partial,
        "unchanged by bad input"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thresholds_hold_a_state_until_the_nth_consecutive_report() {
    let c = TestCluster::start(2).await;
    c.settle().await;
    let url = c.url(0);
    register(&url, "thr", "a", &[], None).await;
    call_ok(
        "PUT",
        &format!("{}/v1/services/thr/policy", c.url(1)),
        Some(json!({"failures_before_critical": 3, "successes_before_passing": 2})),
    )
    .await;
    let state = |v: &Value| {
        v["status"]["state"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    for n in 1..=2 {
        let v = report(&url, "thr", "a", json!({"state": "critical"})).await;
        assert_eq!(state(&v), "passing", "critical report {n} of 3");
    }
    let v = report(&url, "thr", "a", json!({"state": "critical"})).await;
    assert_eq!(state(&v), "critical", "the third");
    let v = report(&url, "thr", "a", json!({"state": "passing"})).await;
    assert_eq!(state(&v), "critical", "passing report 1 of 2");
    let v = report(&url, "thr", "a", json!({"state": "passing"})).await;
    assert_eq!(state(&v), "passing", "the second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_turns_on_below_the_healthy_share_and_off_again_on_every_route() {
    let c = TestCluster::start(3).await;
    c.settle().await;
    let url = c.url(1);
    // Prototype instances (they give the service a gVip) and a v1 one.
    for lsip in ["10.1.0.1", "10.1.0.2", "10.1.0.3"] {
        let (status, text) = crate::support::http::raw(
            "POST",
            &format!("{url}/services/register/"),
            json!({"sName": "pan", "lSip": lsip})
                .to_string()
                .into_bytes(),
        )
        .await;
        assert_eq!((status, text.as_str()), (200, "success"));
    }
    register(&url, "pan", "v1-a", &[], None).await;
    let resolved = call_ok(
        "GET",
        &format!("{url}/services/resolution/?sname=pan"),
        None,
    )
    .await;
    let gvip = resolved["gVip"].as_str().expect("gVip").to_string();
    let healthy = |i: usize| format!("{}/v1/services/pan?healthy=true", c.url(i));
    let state_doc = format!("{url}/services/servicestate?gvip={gvip}");
    call_ok(
        "PUT",
        &format!("{url}/v1/services/pan/policy"),
        Some(json!({"panic_threshold": 0.5})),
    )
    .await;
    // One of four critical: 75% healthy, no panic.
    report(&url, "pan", "10.1.0.1", json!({"state": "critical"})).await;
    let (status, panic, answer) = call_with_panic("GET", &healthy(0), None).await;
    assert_eq!(status, 200);
    assert!(!panic, "no panic header at 75%");
    assert!(answer.get("panic").is_none(), "{answer}");
    assert_eq!(ids(&answer).len(), 3);
    // Two of four critical: 50% healthy, at the threshold, not below it.
    report(&url, "pan", "10.1.0.2", json!({"state": "critical"})).await;
    let (_, headers, answer) = call_with_headers("GET", &healthy(2), None).await;
    assert_eq!(ids(&answer).len(), 2, "{answer}");
    assert!(answer.get("panic").is_none(), "{answer}");
    // A blocking healthy-only query waiting past this index wakes into panic too.
    let index = headers
        .get("x-chordctl-index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .expect("an index");
    let waiting = format!("{}&index={index}&wait=30s", healthy(2));
    let blocking = tokio::spawn(async move { call_with_panic("GET", &waiting, None).await });
    // Three of four critical: 25% healthy, below 50%: every instance, marked.
    report(&url, "pan", "v1-a", json!({"state": "critical"})).await;
    let (status, panic, answer) = blocking.await.expect("the blocking query");
    assert_eq!(status, 200, "{answer}");
    assert!(panic, "the blocking answer's header");
    assert_eq!(answer["panic"], true, "{answer}");
    assert_eq!(ids(&answer).len(), 4, "{answer}");
    for i in 0..3 {
        let (status, panic, answer) = call_with_panic("GET", &healthy(i), None).await;
        assert_eq!(status, 200);
        assert!(panic, "X-Chordctl-Panic through agent {i}");
        assert_eq!(answer["panic"], true, "{answer}");
        assert_eq!(ids(&answer).len(), 4, "every instance");
    }
    let (_, panic, picked) =
        call_with_panic("GET", &format!("{}&pick=best", healthy(2)), None).await;
    assert!(panic, "a pick in panic says so too");
    assert_eq!(picked["id"], "10.1.0.3", "the healthiest still wins");
    let (_, panic, unfiltered) =
        call_with_panic("GET", &format!("{}/v1/services/pan", c.url(0)), None).await;
    assert!(
        !panic && unfiltered.get("panic").is_none(),
        "only --healthy panics"
    );
    let (status, panic, doc) = call_with_panic("GET", &state_doc, None).await;
    assert_eq!(status, 200, "{doc}");
    assert!(panic, "the prototype's document says so in the header");
    assert_eq!(doc["Service_instance"].as_array().map(Vec::len), Some(4));
    // Back to 75%: off again, everywhere.
    report(&url, "pan", "10.1.0.1", json!({"state": "passing"})).await;
    report(&url, "pan", "10.1.0.2", json!({"state": "passing"})).await;
    let (_, panic, answer) = call_with_panic("GET", &healthy(2), None).await;
    assert!(!panic);
    assert!(answer.get("panic").is_none());
    assert_eq!(ids(&answer), ["10.1.0.1", "10.1.0.2", "10.1.0.3"]);
    let (_, panic, _) = call_with_panic("GET", &state_doc, None).await;
    assert!(!panic, "the prototype's document: no header");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_gives_a_reason_for_each_filter_and_the_scores_of_a_pick() {
    let c = TestCluster::start(2).await;
    c.settle().await;
    let url = c.url(0);
    register(&url, "exp", "fast", &["v2"], None).await;
    register(&url, "exp", "slow", &["v2"], None).await;
    register(&url, "exp", "down", &["v2"], None).await;
    register(&url, "exp", "drained", &["v2"], None).await;
    register(&url, "exp", "flappy", &["v2"], None).await;
    register(&url, "exp", "v1-only", &["v1"], None).await;
    call_ok(
        "PUT",
        &format!("{url}/v1/services/exp/policy"),
        Some(json!({"flap_half_life_secs": 3600})),
    )
    .await;
    report(
        &url,
        "exp",
        "fast",
        json!({"success_rate": 0.99, "latency_ms": 5.0}),
    )
    .await;
    report(
        &url,
        "exp",
        "slow",
        json!({"success_rate": 0.99, "latency_ms": 50.0}),
    )
    .await;
    report(
        &url,
        "exp",
        "down",
        json!({"state": "critical", "note": "disk full"}),
    )
    .await;
    report(&url, "exp", "drained", json!({"state": "maintenance"})).await;
    let mut last = Value::Null;
    for n in 0..6 {
        let state = if n % 2 == 0 { "critical" } else { "passing" };
        last = report(&url, "exp", "flappy", json!({"state": state})).await;
    }
    assert_eq!(last["flapping"], true, "{last}");
    assert_eq!(
        last["status"]["state"], "critical",
        "held in the worse state"
    );
    let explain = format!(
        "{}/v1/services/exp/explain?healthy=true&tag=v2&pick=best",
        c.url(1)
    );
    let e = call_ok("GET", &explain, None).await;
    assert_eq!(e["service"], "exp");
    assert_eq!(
        e["filters"],
        json!({"healthy": true, "tag": "v2", "pick": "best"})
    );
    assert_eq!(e["panic"], false);
    assert_eq!(e["picked"], "fast");
    let by_id = |id: &str| -> Value {
        e["instances"]
            .as_array()
            .and_then(|a| a.iter().find(|i| i["id"] == id).cloned())
            .unwrap_or_else(|| panic!("no {id} in {e}"))
    };
    assert_eq!(by_id("fast")["returned"], true);
    assert_eq!(by_id("fast")["reasons"], json!([]));
    assert_eq!(by_id("fast")["score"]["rank"], 1);
    assert_eq!(by_id("slow")["score"]["rank"], 2);
    assert_eq!(by_id("slow")["score"]["latency_ms"], 50.0);
    let reasons = |id: &str| by_id(id)["reasons"].clone();
    let down = reasons("down");
    let down = down[0].as_str().unwrap_or_default();
    assert!(
        down.starts_with("critical since ") && down.ends_with(": reported critical (disk full)"),
        "{down}"
    );
    assert_eq!(reasons("drained"), json!(["in maintenance"]));
    assert_eq!(reasons("flappy"), json!(["held critical: flapping"]));
    assert_eq!(reasons("v1-only"), json!(["no tag v2"]));
    assert_eq!(by_id("v1-only")["returned"], false);
    // Explain and discover agree.
    let found = call_ok(
        "GET",
        &format!("{url}/v1/services/exp?healthy=true&tag=v2"),
        None,
    )
    .await;
    assert_eq!(ids(&found), ["fast", "slow"]);
    // The CLI's table has a REASONS column; -o json prints the answer.
    let out = client(
        &url,
        &[
            "svc",
            "explain",
            "exp",
            "--healthy",
            "--tag",
            "v2",
            "--pick",
            "best",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.to_lowercase().contains("reasons"), "{text}");
    assert!(text.contains("held critical: flapping"), "{text}");
    assert!(text.contains("picked fast"), "{text}");
    let out = client(
        &url,
        &["svc", "explain", "exp", "--tag", "v2", "-o", "json"],
    );
    let json: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["picked"], Value::Null);
    assert_eq!(
        json["instances"].as_array().map(Vec::len),
        Some(6),
        "{json}"
    );
    // svc policy shows the policy.
    let out = client(&url, &["svc", "policy", "exp", "-o", "json"]);
    let json: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["flap_half_life_secs"], 3600);
    let out = client(&url, &["svc", "policy", "exp", "--panic-threshold", "0.3"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("panic_threshold") && text.contains("0.3"),
        "{text}"
    );
    let json = call_ok("GET", &format!("{url}/v1/services/exp/policy"), None).await;
    assert_eq!(json["flap_half_life_secs"], 3600, "kept");
    assert_eq!(json["panic_threshold"], 0.3, "changed");
    let out = client(&url, &["svc", "policy", "nope"]);
    assert_eq!(out.status.code(), Some(4), "unknown service: exit 4");
}

/// `self_preservation` of `GET /v1/ring` at the agent at `url`.
async fn self_preservation(url: &str) -> Result<bool, String> {
    let (_, v) = call("GET", &format!("{url}/v1/ring"), None).await;
    v["self_preservation"]
        .as_bool()
        .ok_or_else(|| format!("no self_preservation in {v}"))
}

/// A task sending a heartbeat for each instance whose flag is set, every 300 ms, until `stop`.
fn heartbeats(
    url: String,
    service: &'static str,
    alive: Vec<(String, Arc<AtomicBool>)>,
) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = stop.clone();
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        while !done.load(Ordering::SeqCst) {
            for (id, on) in &alive {
                if on.load(Ordering::SeqCst) {
                    let _ = http
                        .put(format!("{url}/v1/services/{service}/instances/{id}/status"))
                        .json(&json!({}))
                        .send()
                        .await;
                }
            }
            // The instances' heartbeat interval, not a synchronization.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    stop
}

fn settled(agents: &[&AgentProc]) {
    for a in agents {
        poll(DEADLINE, "the ring settles", || {
            let out = client(&a.url(), &["ring", "show", "-o", "json"]);
            let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
            let n = v.as_array().map(Vec::len).unwrap_or(0);
            (n == agents.len())
                .then_some(())
                .ok_or(format!("{n} nodes"))
        });
    }
}

async fn metric_line(url: &str, line: &str) -> Result<(), String> {
    let (_, text) = call("GET", &format!("{url}/metrics"), None).await;
    let text = text.as_str().unwrap_or_default();
    text.lines()
        .any(|l| l == line)
        .then_some(())
        .ok_or_else(|| format!("no {line:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_preservation_turns_on_when_40_percent_of_an_owners_leases_lapse_and_off_when_they_return(
) {
    let a = AgentProc::start(None, &[]);
    let b = AgentProc::start(Some(&a.ring), &[]);
    let c = AgentProc::start(Some(&a.ring), &[]);
    settled(&[&a, &b, &c]);
    let agents = [a, b, c];
    let owner = agents[ring_order(&agents, "sp")[0]].url();
    let url = agents[0].url();
    let mut alive = Vec::new();
    for i in 0..10 {
        let id = format!("i{i}");
        call_ok(
            "PUT",
            &format!("{url}/v1/services/sp/instances/{id}"),
            Some(json!({"address": "10.0.0.1", "port": 80 + i, "ttl_secs": 2})),
        )
        .await;
        alive.push((id, Arc::new(AtomicBool::new(true))));
    }
    let stop = heartbeats(url.clone(), "sp", alive.clone());
    assert_eq!(self_preservation(&owner).await, Ok(false));
    // Four of the ten stop reporting at once: 40% of the owner's leases lapse together.
    for (_, on) in &alive[..4] {
        on.store(false, Ordering::SeqCst);
    }
    eventually("self-preservation on at the owner", DEADLINE, async || {
        self_preservation(&owner)
            .await?
            .then_some(())
            .ok_or("off".to_string())
    })
    .await;
    metric_line(&owner, "chordctl_self_preservation 1")
        .await
        .expect("the metric says so");
    // They are critical, but not removed.
    let found = call_ok("GET", &format!("{url}/v1/services/sp"), None).await;
    assert_eq!(ids(&found).len(), 10);
    // They come back.
    for (_, on) in &alive[..4] {
        on.store(true, Ordering::SeqCst);
    }
    eventually(
        "self-preservation off once reports recover",
        DEADLINE,
        async || {
            (!self_preservation(&owner).await?)
                .then_some(())
                .ok_or("still on".to_string())
        },
    )
    .await;
    metric_line(&owner, "chordctl_self_preservation 0")
        .await
        .expect("the metric says so");
    stop.store(true, Ordering::SeqCst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_whose_reporter_is_killed_is_removed_within_one_and_a_half_ttl_plus_grace() {
    let a = AgentProc::start(None, &[]);
    let b = AgentProc::start(Some(&a.ring), &[]);
    let c = AgentProc::start(Some(&a.ring), &[]);
    settled(&[&a, &b, &c]);
    let url = b.url();
    let out = client(
        &url,
        &[
            "svc",
            "register",
            "lone",
            "--address",
            "10.0.0.9",
            "--port",
            "80",
            "--id",
            "x",
            "--ttl",
            "2",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The instance's own heartbeat loop, a separate process, killed with SIGKILL below.
    let mut reporter = Reaped::reporter(&url, "lone", "x");
    let instance = format!("{url}/v1/services/lone/instances/x");
    // Reports are arriving.
    let mut first = Value::Null;
    eventually("a first report", DEADLINE, async || {
        let (_, v) = call("GET", &instance, None).await;
        first = v["status"]["updated_at"].clone();
        (first != v["registered_at"])
            .then_some(())
            .ok_or(v.to_string())
    })
    .await;
    eventually("another report", DEADLINE, async || {
        let (_, v) = call("GET", &instance, None).await;
        (v["status"]["updated_at"] != first)
            .then_some(())
            .ok_or(v.to_string())
    })
    .await;
    reporter.kill_group();
    // Its last report was sent before now: it must be gone within 1.5 × TTL + grace (ten
    // TTLs) from now, critical in between. A TTL of 2 s leaves a second of room for a loaded
    // machine.
    let killed = Instant::now();
    let limit = Duration::from_millis(3_000 + 20_000);
    let mut saw_critical = false;
    loop {
        let (code, v) = call("GET", &instance, None).await;
        if code == 404 {
            break;
        }
        saw_critical |= v["status"]["state"] == "critical";
        assert!(
            killed.elapsed() <= limit,
            "still there {:?} after the kill: {v}",
            killed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(saw_critical, "critical before it was removed");
    assert!(killed.elapsed() <= limit, "{:?}", killed.elapsed());
    drop((a, b, c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_survives_the_owners_sigkill_and_its_restart() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("dir")).collect();
    let addrs: Vec<(String, String)> = (0..3).map(|_| (free_addr(), free_addr())).collect();
    let start = |i: usize, seed: Option<&str>| {
        let data = dirs[i].path().to_string_lossy().into_owned();
        AgentProc::start_at(seed, &addrs[i].0, &addrs[i].1, &["--data-dir", &data])
    };
    let a = start(0, None);
    let b = start(1, Some(&a.ring));
    let c = start(2, Some(&a.ring));
    settled(&[&a, &b, &c]);
    let all = [a, b, c];
    let order = ring_order(&all, "kept");
    let mut agents: Vec<Option<AgentProc>> = all.into_iter().map(Some).collect();
    let (owner, other) = (order[0], order[1]);
    let url_of = |agents: &[Option<AgentProc>], i: usize| {
        agents[i]
            .as_ref()
            .map(AgentProc::url)
            .expect("a live agent")
    };
    let set = json!({"failures_before_critical": 4, "successes_before_passing": 3,
                     "flap_half_life_secs": 120, "panic_threshold": 0.4});
    let policy = |url: &str| format!("{url}/v1/services/kept/policy");
    call_ok("PUT", &policy(&url_of(&agents, other)), Some(set.clone())).await;
    // SIGKILL the owner: the replicas answer with the same policy.
    if let Some(mut p) = agents[owner].take() {
        p.kill9();
    }
    let other_url = url_of(&agents, other);
    let same = |url: String, want: Value| async move {
        let (status, got) = call("GET", &policy(&url), None).await;
        (status == 200 && got == want)
            .then_some(())
            .ok_or(format!("{status} {got}"))
    };
    eventually("the policy from the new owner", DEADLINE, async || {
        same(other_url.clone(), set.clone()).await
    })
    .await;
    // The old owner comes back on its address, with its data directory.
    let seed = agents[other]
        .as_ref()
        .map(|p| p.ring.clone())
        .expect("seed");
    agents[owner] = Some(start(owner, Some(&seed)));
    let owner_url = url_of(&agents, owner);
    eventually(
        "the policy through the restarted owner",
        DEADLINE,
        async || same(owner_url.clone(), set.clone()).await,
    )
    .await;
    // A change made now reaches every agent.
    let changed = json!({"failures_before_critical": 2, "successes_before_passing": 1,
                         "flap_half_life_secs": 0, "panic_threshold": 0.0});
    eventually("a change after the restart", DEADLINE, async || {
        let (status, got) = call("PUT", &policy(&owner_url), Some(changed.clone())).await;
        (status == 200).then_some(()).ok_or(got.to_string())
    })
    .await;
    for i in 0..3 {
        let url = url_of(&agents, i);
        eventually("every agent sees the change", DEADLINE, async || {
            same(url.clone(), changed.clone()).await
        })
        .await;
    }
}
