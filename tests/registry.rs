//! The registry across in-process clusters: routing to owners from any agent, no lost updates,
//! TTL expiry, records moving on join and leave, restarts, Redis outages, prototype routes.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use chordctl::agent::{self, Start};
use chordctl::cli::watch::{SseEvent, SseParser};
use serde_json::{json, Value};

use crate::support::cluster::{redis_config, test_config, TestCluster};
use crate::support::http::{call, call_ok, metric, raw};
use crate::support::redis::RedisServer;
use crate::support::{eventually, expect_ttl_expiry};

async fn register(url: &str, service: &str, id: &str, port: u16) {
    let (status, body) = call(
        "PUT",
        &format!("{url}/v1/services/{service}/instances/{id}"),
        Some(json!({"address": "10.0.0.1", "port": port, "tags": ["v1"]})),
    )
    .await;
    assert_eq!(status, 200, "register {service}/{id}: {body}");
}

async fn instances(url: &str, service: &str) -> Vec<Value> {
    let (status, body) = call("GET", &format!("{url}/v1/services/{service}"), None).await;
    assert_eq!(status, 200, "discover {service}: {body}");
    body["instances"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_agents_serve_every_operation_from_any_agent() {
    let c = TestCluster::start(5).await;
    c.settle().await;
    for s in 0..10 {
        let service = format!("svc-{s}");
        register(&c.url(s % 5), &service, "a", 80).await;
        register(&c.url((s + 1) % 5), &service, "b", 81).await;
    }
    // Discover from every agent: forwarded to the owner.
    for i in 0..5 {
        for s in 0..10 {
            assert_eq!(instances(&c.url(i), &format!("svc-{s}")).await.len(), 2);
        }
    }
    // Status report through one agent, query through another.
    let url = c.url(3);
    let (st, body) = call(
        "PUT",
        &format!("{url}/v1/services/svc-1/instances/a/status"),
        Some(json!({"state": "warning", "latency_ms": 7.5, "success_rate": 0.9})),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let (st, inst) = call(
        "GET",
        &format!("{}/v1/services/svc-1/instances/a", c.url(4)),
        None,
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(inst["status"]["state"], "warning");
    assert_eq!(inst["status"]["latency_ms"], 7.5);
    assert_eq!(inst["service"], "svc-1");
    assert_eq!(inst["port"], 80);
    // Picking: best prefers the passing instance.
    let (st, picked) = call(
        "GET",
        &format!("{}/v1/services/svc-1?pick=best", c.url(0)),
        None,
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(picked["id"], "b");
    let (_, healthy) = call(
        "GET",
        &format!("{}/v1/services/svc-1?healthy=true&tag=v1", c.url(2)),
        None,
    )
    .await;
    assert_eq!(healthy["instances"].as_array().map(Vec::len), Some(2));
    // Every service is listed with its count, from any agent.
    let (st, list) = call("GET", &format!("{}/v1/services", c.url(2)), None).await;
    assert_eq!(st, 200);
    let list = list.as_array().cloned().unwrap_or_default();
    assert_eq!(list.len(), 10, "{list:?}");
    assert!(list.iter().all(|s| s["instances"] == 2));
    // With the counts by state: svc-1's instance "a" reported warning above.
    for s in &list {
        let warning = u64::from(s["service"] == "svc-1");
        assert_eq!(
            s,
            &json!({"service": s["service"], "instances": 2, "passing": 2 - warning,
                    "warning": warning, "critical": 0, "maintenance": 0}),
            "{list:?}"
        );
    }
    // Deregister, then unknowns are 404 with a JSON error.
    let (st, _) = call(
        "DELETE",
        &format!("{}/v1/services/svc-2/instances/a", c.url(1)),
        None,
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(instances(&c.url(0), "svc-2").await.len(), 1);
    let (st, err) = call(
        "GET",
        &format!("{}/v1/services/svc-2/instances/a", c.url(1)),
        None,
    )
    .await;
    assert_eq!(st, 404);
    assert!(err["error"]["message"].is_string());
    let (st, _) = call(
        "PUT",
        &format!("{}/v1/services/nope/instances/x/status", c.url(1)),
        Some(json!({"load": 1.0})),
    )
    .await;
    assert_eq!(st, 404);
    let (st, _) = call("GET", &format!("{}/v1/services/nope", c.url(1)), None).await;
    assert_eq!(st, 404);
}

/// An event stream read by a test.
struct Events {
    resp: reqwest::Response,
    parser: SseParser,
    pending: VecDeque<SseEvent>,
}

impl Events {
    /// The data of the next `wanted` event, with only bookmarks before it; panics after 30 s.
    async fn next(&mut self, wanted: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            while let Some(e) = self.pending.pop_front() {
                if e.event == wanted {
                    return serde_json::from_str(&e.data)
                        .unwrap_or_else(|x| panic!("{x}: {}", e.data));
                }
                assert_eq!(e.event, "bookmark", "before a {wanted}: {e:?}");
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.resp.chunk()).await {
                Ok(Ok(Some(bytes))) => self.pending.extend(self.parser.feed(&bytes)),
                other => panic!("no {wanted} event: {other:?}"),
            }
        }
    }
}

/// The catalog stream compares the service summaries it sees: a state change, with the same
/// number of instances, is an `update` carrying the new counts by state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_counts_by_state_and_their_changes_reach_the_catalog_stream() {
    let c = TestCluster::start(1).await;
    let url = c.url(0);
    register(&url, "payments", "a", 80).await;
    register(&url, "payments", "b", 81).await;
    let resp = reqwest::Client::new()
        .get(format!("{url}/v1/watch/services"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("catalog stream: {e}"));
    assert_eq!(resp.status(), 200);
    let mut events = Events {
        resp,
        parser: SseParser::new(),
        pending: VecDeque::new(),
    };
    let snapshot = events.next("snapshot").await;
    assert_eq!(
        snapshot["services"],
        json!([{"service": "payments", "instances": 2, "passing": 2, "warning": 0,
                "critical": 0, "maintenance": 0}]),
        "{snapshot}"
    );
    let (st, body) = call(
        "PUT",
        &format!("{url}/v1/services/payments/instances/b/status"),
        Some(json!({"state": "critical"})),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let change = events.next("change").await;
    assert_eq!(change["op"], "update", "{change}");
    assert_eq!(
        change["summary"],
        json!({"service": "payments", "instances": 2, "passing": 1, "warning": 0,
               "critical": 1, "maintenance": 0}),
        "{change}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_4xx_json_errors() {
    let c = TestCluster::start(1).await;
    let url = c.url(0);
    let (st, err) = raw(
        "PUT",
        &format!("{url}/v1/services/s/instances/a"),
        b"{not json".to_vec(),
    )
    .await;
    assert_eq!(st, 400, "{err}");
    assert!(err.contains("\"error\""));
    let (st, err) = call(
        "PUT",
        &format!("{url}/v1/services/s/instances/a"),
        Some(json!({"address": "h", "port": 70000})),
    )
    .await;
    assert_eq!(st, 400);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("70000"),
        "{err}"
    );
    let (st, _) = call(
        "PUT",
        &format!("{url}/v1/services/bad%20name/instances/a"),
        Some(json!({"address": "h", "port": 1})),
    )
    .await;
    assert_eq!(st, 400);
    let (st, err) = raw(
        "PUT",
        &format!("{url}/v1/services/s/instances/a"),
        vec![b' '; 1 << 20],
    )
    .await;
    assert_eq!(st, 413, "{err}");
    assert!(err.contains("\"error\""));
    register(&url, "s", "a", 1).await;
    let (st, _) = call(
        "PUT",
        &format!("{url}/v1/services/s/instances/a/status"),
        Some(json!({"success_rate": 1.5})),
    )
    .await;
    assert_eq!(st, 400);
    let (st, _) = call(
        "PUT",
        &format!("{url}/v1/services/s/instances/a/status"),
        Some(json!({"state": "dead"})),
    )
    .await;
    assert_eq!(st, 400);
    let (st, _) = call("GET", &format!("{url}/v1/services/s?pick=fastest"), None).await;
    assert_eq!(st, 400);
}

/// The answers the router makes itself, not a handler: a method the route does not take (405)
/// and a path that does not decode (400). The API's are JSON; the prototype's routes keep the
/// prototype's form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_a_route_does_not_take_and_an_undecodable_path_get_json_errors() {
    let c = TestCluster::start(1).await;
    let url = c.url(0);
    let client = reqwest::Client::new();
    let ask = async |method: &str, path: &str| {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let resp = client
            .request(method, format!("{url}{path}"))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .expect("answer");
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let (kind, allow) = (header("content-type"), header("allow"));
        (status, kind, allow, resp.text().await.expect("body"))
    };
    for (method, path, status, code) in [
        (
            "POST",
            "/v1/services/p/instances/x1",
            405,
            "method_not_allowed",
        ),
        ("PATCH", "/v1/services/p", 405, "method_not_allowed"),
        ("DELETE", "/v1/services", 405, "method_not_allowed"),
        (
            "PUT",
            "/v1/services/ok/instances/%FF%FE",
            400,
            "invalid_input",
        ),
    ] {
        let (st, kind, allow, body) = ask(method, path).await;
        assert_eq!(st, status, "{method} {path}: {body}");
        assert!(
            kind.starts_with("application/json"),
            "{method} {path}: {kind} {body}"
        );
        let err: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(err["error"]["code"], code, "{method} {path}: {err}");
        assert!(
            !err["error"]["message"].as_str().unwrap_or("").is_empty(),
            "{method} {path}: {err}"
        );
        if status == 405 {
            assert!(allow.contains("GET"), "{method} {path}: Allow {allow:?}");
        }
    }
    // The prototype's route keeps its own answer.
    let (st, kind, _, body) = ask("DELETE", "/services/register/").await;
    assert_eq!(st, 405, "{body}");
    assert!(!kind.starts_with("application/json"), "{kind} {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_reports_to_one_service_through_different_agents_lose_none() {
    let c = TestCluster::start(5).await;
    c.settle().await;
    for i in 0..20 {
        register(&c.url(0), "hot", &format!("i{i}"), 1000 + i).await;
    }
    let mut tasks = Vec::new();
    for i in 0..20u16 {
        let url = c.url(i as usize % 5);
        tasks.push(tokio::spawn(async move {
            call(
                "PUT",
                &format!("{url}/v1/services/hot/instances/i{i}/status"),
                Some(json!({"latency_ms": i as f64 + 0.5, "load": i as f64})),
            )
            .await
        }));
    }
    for t in tasks {
        let (st, body) = t.await.expect("task");
        assert_eq!(st, 200, "{body}");
    }
    for inst in instances(&c.url(2), "hot").await {
        let i: f64 = inst["id"].as_str().expect("id")[1..].parse().expect("n");
        assert_eq!(inst["status"]["latency_ms"], json!(i + 0.5), "{inst}");
        assert_eq!(inst["status"]["load"], json!(i), "{inst}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_turns_critical_after_one_ttl_then_is_removed_after_grace() {
    let c = TestCluster::start(1).await;
    let url = c.url(0);
    // Taken before the request is sent: the agent starts the TTL when it receives it, so the
    // lower bounds below hold however long the acknowledgement takes on a loaded machine.
    let sent = Instant::now();
    let (st, _) = call(
        "PUT",
        &format!("{url}/v1/services/beat/instances/x"),
        Some(json!({"address": "h", "port": 1, "ttl_secs": 1})),
    )
    .await;
    assert_eq!(st, 200);
    register(&url, "beat", "forever", 2).await;
    expect_ttl_expiry(&url, "beat", "x", sent).await;
    // The instance without a TTL stays.
    assert_eq!(instances(&url, "beat").await.len(), 1);
}

async fn all_present(c: &TestCluster, i: usize, services: usize, per: usize) -> Result<(), String> {
    for s in 0..services {
        let (st, body) = call("GET", &format!("{}/v1/services/m-{s}", c.url(i)), None).await;
        let n = body["instances"].as_array().map(Vec::len).unwrap_or(0);
        if st != 200 || n != per {
            return Err(format!("m-{s} from agent {i}: status {st}, {n} instances"));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_and_a_graceful_leave_with_200_registrations_lose_none() {
    let mut c = TestCluster::start(4).await;
    c.settle().await;
    for s in 0..40 {
        for i in 0..5 {
            register(
                &c.url(s % 4),
                &format!("m-{s}"),
                &format!("i{i}"),
                100 + i as u16,
            )
            .await;
        }
    }
    let joined = c.join().await;
    c.settle().await;
    for i in [0, joined] {
        all_present(&c, i, 40, 5).await.expect("after a join");
    }
    // The joined node now owns some records itself.
    c.leave(1).await;
    c.settle().await;
    for i in [0, 2, 3, joined] {
        all_present(&c, i, 40, 5).await.expect("after a leave");
    }
    c.leave(joined).await;
    c.settle().await;
    all_present(&c, 0, 40, 5)
        .await
        .expect("after the joined node left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restarted_on_the_embedded_store_has_its_records_back() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = test_config(Start::Create, dir.path());
    let h = agent::start(cfg.clone()).await.expect("start");
    let url = format!("http://{}", h.http_addr());
    register(&url, "keep", "a", 1).await;
    // The same identity (advertised address), new ports: binding the old ports again could
    // race with another test's outgoing connection taking one as its ephemeral port.
    let advertise = Some(h.node().addr);
    h.shutdown().await;
    let h = agent::start(agent::AgentConfig { advertise, ..cfg })
        .await
        .expect("restart");
    let url = format!("http://{}", h.http_addr());
    assert_eq!(instances(&url, "keep").await.len(), 1);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_on_redis_keeps_records_over_restart_and_survives_a_redis_outage() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = redis_config(&redis.url(), dir.path());
    let h = agent::start(cfg.clone()).await.expect("start on redis");
    let url = format!("http://{}", h.http_addr());
    register(&url, "onredis", "a", 1).await;
    // Restart on the same Redis: records are back.
    // Same identity (the Redis key prefix is the node id), new ports (see above).
    let advertise = Some(h.node().addr);
    h.shutdown().await;
    let h = agent::start(agent::AgentConfig { advertise, ..cfg })
        .await
        .expect("restart on redis");
    let url = format!("http://{}", h.http_addr());
    assert_eq!(instances(&url, "onredis").await.len(), 1);
    // Redis stops: 503 with a clear JSON message, the agent keeps serving.
    redis.stop();
    let (st, err) = call(
        "PUT",
        &format!("{url}/v1/services/onredis/instances/b"),
        Some(json!({"address": "h", "port": 2})),
    )
    .await;
    assert_eq!(st, 503, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("redis"),
        "{err}"
    );
    let (st, _) = call("GET", &format!("{url}/healthz"), None).await;
    assert_eq!(st, 200);
    // Redis returns: writes work again without restarting the agent, nothing was lost.
    redis.restart();
    eventually("writes work again", Duration::from_secs(60), async || {
        let (st, e) = call(
            "PUT",
            &format!("{url}/v1/services/onredis/instances/b"),
            Some(json!({"address": "h", "port": 2})),
        )
        .await;
        (st == 200).then_some(()).ok_or(e.to_string())
    })
    .await;
    assert_eq!(instances(&url, "onredis").await.len(), 2);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prototype_routes_answer_as_recorded_from_any_agent() {
    let c = TestCluster::start(3).await;
    c.settle().await;
    let body = br#"{"sName":"payments","lSip":"10.0.0.7"}"#.to_vec();
    let (st, text) = raw(
        "POST",
        &format!("{}/services/register/", c.url(0)),
        body.clone(),
    )
    .await;
    assert_eq!((st, text.as_str()), (200, "success"));
    let (st, text) = raw(
        "POST",
        &format!("{}/services/register/", c.url(1)),
        body.clone(),
    )
    .await;
    assert_eq!((st, text.as_str()), (200, "already register"));

    let (st, res) = call(
        "GET",
        &format!("{}/services/resolution/?sname=payments", c.url(2)),
        None,
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(res["msg"], "Success");
    let gvip = res["gVip"].as_str().expect("gVip").to_string();
    assert!(gvip.starts_with("10.212."), "{gvip}");
    let (_, res2) = call(
        "GET",
        &format!("{}/services/resolution/?sname=payments", c.url(0)),
        None,
    )
    .await;
    assert_eq!(res2["gVip"], gvip.as_str(), "stable gVip");
    let (_, unknown) = call(
        "GET",
        &format!("{}/services/resolution/?sname=unknown", c.url(1)),
        None,
    )
    .await;
    assert_eq!(unknown, json!({"gVip": "0.0.0.0", "msg": "Failed"}));

    let (st, doc) = call(
        "GET",
        &format!(
            "{}/service_status_storage?sname=payments&Lsip=10.0.0.7&success_rate=0.99&latency=12&frequency=30",
            c.url(1)
        ),
        None,
    )
    .await;
    assert_eq!(st, 200, "{doc}");
    let want = json!({"Gvip": gvip, "Service_instance": [
        {"Lsip": "10.0.0.7", "frequency": 30.0, "latency": 12.0, "success_rate": 0.99}
    ], "Sname": "payments"});
    assert_eq!(doc, want);
    // servicestate is current, from any agent (the prototype served a stale cache).
    for i in 0..3 {
        let (st, state) = call(
            "GET",
            &format!("{}/services/servicestate?gvip={gvip}", c.url(i)),
            None,
        )
        .await;
        assert_eq!(st, 200);
        assert_eq!(state, want);
    }
    let (st, _) = call(
        "GET",
        &format!(
            "{}/service_status_storage?sname=payments&Lsip=10.0.0.7&success_rate=abc",
            c.url(0)
        ),
        None,
    )
    .await;
    assert_eq!(st, 400);

    // gVips are unique across services.
    let mut seen = std::collections::HashSet::from([gvip.clone()]);
    for s in 0..20 {
        let b = format!(r#"{{"sName":"p{s}","lSip":"10.0.0.1"}}"#).into_bytes();
        let (st, _) = raw("POST", &format!("{}/services/register/", c.url(s % 3)), b).await;
        assert_eq!(st, 200);
        let (_, r) = call(
            "GET",
            &format!("{}/services/resolution/?sname=p{s}", c.url(0)),
            None,
        )
        .await;
        assert!(
            seen.insert(r["gVip"].as_str().expect("gvip").to_string()),
            "duplicate gVip"
        );
    }

    let cancel = |url: String, b: &'static [u8]| async move {
        raw(
            "POST",
            &format!("{url}/services/registercancel/"),
            b.to_vec(),
        )
        .await
    };
    let (_, t) = cancel(c.url(2), br#"{"sName":"payments","lSip":"10.0.0.7"}"#).await;
    assert_eq!(t, "The service instance has been deleted");
    let (_, t) = cancel(c.url(0), br#"{"sName":"payments","lSip":"10.0.0.7"}"#).await;
    assert_eq!(t, "The service instance does not exist");
    let (_, t) = cancel(c.url(1), br#"{"sName":"nosuch","lSip":"10.0.0.7"}"#).await;
    assert_eq!(t, "The service type does not exist");
    let (st, _) = raw(
        "POST",
        &format!("{}/services/register/", c.url(0)),
        b"garbage".to_vec(),
    )
    .await;
    assert_eq!(st, 400);
    let (st, text) = raw(
        "POST",
        &format!("{}/services/register/", c.url(0)),
        vec![b' '; 1 << 20],
    )
    .await;
    assert_eq!(st, 413, "{text}");
    assert!(
        !text.starts_with('{'),
        "plain text for the prototype's clients: {text}"
    );
}

/// Instance `id` of `service` at `10.0.0.2:port` as another node would send it: its stored
/// unit, versioned at `wall_ms` by a node that no agent here is.
fn peer_unit(service: &str, id: &str, port: i64, wall_ms: u64) -> chordctl::registry::ops::Entry {
    use chordctl::registry::{Hlc, Record, RegisterBody};
    let mut rec = Record::new(service, None).expect("record");
    rec.register(id, &RegisterBody::new("10.0.0.2", port), chrono::Utc::now())
        .expect("register");
    let wall = Hlc {
        wall_ms,
        logical: 0,
        node: 0xffff,
    };
    rec.stamp(id, wall);
    chordctl::registry::ops::Entry {
        key: chordctl::registry::unit::unit_key(service, id),
        value: rec.unit(id).expect("unit").to_bytes().expect("bytes"),
    }
}

/// The owner caches its records; a newer unit arriving from another node (hand-off,
/// anti-entropy) must replace the instance in the cached copy, and an older one must not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_merged_from_peers_replace_the_owners_cached_copy() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = agent::start(test_config(Start::Create, dir.path()))
        .await
        .expect("start");
    let url = format!("http://{}", h.http_addr());
    register(&url, "cached", "a", 1).await;
    assert_eq!(instances(&url, "cached").await.len(), 1, "cached now");
    let registry = &h.agent().registry;
    // A copy of instance b from another node, far in the future, and an older one of it.
    let unit = |port: i64, wall_ms: u64| peer_unit("cached", "b", port, wall_ms);
    let future = u64::MAX / 2;
    registry
        .merge(vec![unit(2, future)])
        .await
        .expect("merge newer");
    let got = instances(&url, "cached").await;
    assert_eq!(got.len(), 2, "newer unit not served");
    registry
        .merge(vec![unit(3, future - 1)])
        .await
        .expect("merge older");
    let got = instances(&url, "cached").await;
    let b = got.iter().find(|i| i["id"] == "b").expect("b");
    assert_eq!(b["port"], 2, "the older unit won");
    h.shutdown().await;
}

/// A replica takes its copy of a service out of the record cache while it merges a batch
/// into it (so that the copy changes in place); the copy goes back into the cache whether the
/// batch changed it or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_merged_at_a_replica_stays_cached_whether_or_not_the_batch_changed_it() {
    let c = TestCluster::start(2).await;
    c.settle().await;
    // A service the first node owns: the second keeps a copy of it.
    let first = c.node(0).http_addr().to_string();
    let mut service = None;
    for i in 0..200 {
        let name = format!("copied-{i}");
        let v = call_ok("GET", &format!("{}/v1/locate/{name}", c.url(0)), None).await;
        if v["owner"]["http"] == first.as_str() {
            service = Some(name);
            break;
        }
    }
    let service = service.expect("a service the first node owns");
    let unit = |port: i64, wall_ms: u64| peer_unit(&service, "a", port, wall_ms);
    let replica = &c.node(1).agent().registry;
    let cached = || replica.cache_size().0;
    // Cached, polled: a merge of the same service from elsewhere (an anti-entropy round
    // pulling the unit to its owner sends it back) takes the copy out for a moment.
    let stays_cached = |what: &'static str| {
        eventually(what, Duration::from_secs(5), async || match cached() {
            1 => Ok(()),
            n => Err(format!("{n} records cached")),
        })
    };
    assert_eq!(cached(), 0);
    // New to the replica: compared with its store and stored, not cached.
    let first_unit = unit(1, u64::MAX / 4);
    replica
        .merge(vec![first_unit.clone()])
        .await
        .expect("merge into the store");
    // The same unit again: the copy is loaded into the cache, merged (nothing changes) and
    // stays cached.
    replica
        .merge(vec![first_unit])
        .await
        .expect("merge nothing new");
    stays_cached("the unchanged copy back in the cache").await;
    // A newer unit: the copy changes, is stored, and stays cached.
    replica
        .merge(vec![unit(2, u64::MAX / 4 + 1)])
        .await
        .expect("merge a newer unit");
    stays_cached("the changed copy back in the cache").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asking_for_a_thousand_unknown_names_leaves_no_locks_behind() {
    let c = TestCluster::start(3).await;
    c.settle().await;
    register(&c.url(0), "known", "a", 80).await;
    for i in 0..1000 {
        let url = c.url(i % 3);
        let (st, _) = call("GET", &format!("{url}/v1/services/nope-{i}"), None).await;
        assert_eq!(st, 404);
        let (st, _) = call(
            "GET",
            &format!("{url}/v1/services/nope-{i}/instances/x"),
            None,
        )
        .await;
        assert_eq!(st, 404);
    }
    // Every per-service slot taken for those requests is gone again (background repair may
    // hold one for a moment).
    eventually("no slot left behind", Duration::from_secs(30), async || {
        let held: Vec<usize> = (0..3)
            .map(|i| c.node(i).agent().registry.slot_count())
            .collect();
        held.iter()
            .all(|n| *n == 0)
            .then_some(())
            .ok_or(format!("slots held: {held:?}"))
    })
    .await;
}

/// The agent of node `node`'s key space in `redis` loses `key` behind its back, as Redis with
/// `appendfsync everysec` can: a second client deletes it. Returns that client and the value
/// that was stored.
async fn lose_behind_the_agent(
    redis: &RedisServer,
    node: &str,
    key: &str,
) -> (chordctl::store::redis::RedisStore, Vec<u8>) {
    use chordctl::store::Store;
    let store = chordctl::store::redis::RedisStore::connect(&redis.url(), node)
        .await
        .expect("second client");
    let value = store
        .get(key)
        .await
        .expect("get")
        .expect("the unit is stored");
    store.delete(key).await.expect("the store loses it");
    (store, value)
}

/// A record in memory must not hide what its store lost. Redis with `appendfsync everysec`
/// can lose the last second of writes while the agent keeps running; the owner's anti-entropy
/// digest then names the lost unit as needed, and the unit it sends must be stored again, not
/// merged into the cached record (which still has it) as nothing new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_entropy_restores_a_unit_the_store_lost_under_a_record_in_memory() {
    use chordctl::registry::ops::{Entry, RegistryRequest, RegistryResponse};
    use chordctl::registry::unit::{unit_key, Mark};
    use chordctl::store::Store;
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = redis_config(&redis.url(), dir.path());
    let h = agent::start(cfg).await.expect("start on redis");
    let url = format!("http://{}", h.http_addr());
    register(&url, "lossy", "a", 1).await;
    assert_eq!(instances(&url, "lossy").await.len(), 1, "in memory now");
    // The agent's own key space in the same Redis, as a second client sees it.
    let key = unit_key("lossy", "a");
    let (store, value) = lose_behind_the_agent(&redis, &h.node().id.to_hex(), &key).await;
    let registry = &h.agent().registry;
    let digest = RegistryRequest::Digest {
        items: vec![(key.clone(), Mark::of(&key, &value))],
        range: None,
        span: (String::new(), None),
    };
    match registry.handle_local(digest).await.expect("digest") {
        RegistryResponse::Diff { need, .. } => assert_eq!(need, vec![key.clone()]),
        other => panic!("unexpected answer {other:?}"),
    }
    registry
        .merge(vec![Entry {
            key: key.clone(),
            value: value.clone(),
        }])
        .await
        .expect("merge the owner's copy");
    assert_eq!(
        store.get(&key).await.expect("get"),
        Some(value),
        "the unit is stored again"
    );
    h.shutdown().await;
}

/// The owner's side of the same loss: the owner's own store loses a unit while the record in
/// memory still has it. Its next anti-entropy round sees that a replica holds the key and the
/// store does not, pulls it, and must store it again rather than merge it into the cached
/// record as nothing new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_entropy_pulls_back_a_unit_the_owners_store_lost_under_a_record_in_memory() {
    use chordctl::registry::unit::unit_key;
    use chordctl::ring::Id;
    use chordctl::store::Store;
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let c = TestCluster::start_with(
        2,
        std::sync::Arc::new(move |cfg: &mut agent::AgentConfig| {
            cfg.redis = Some(url.clone());
        }),
    )
    .await;
    c.settle().await;
    let service = "lossy-owner";
    register(&c.url(0), service, "a", 1).await;
    let owner_id = c.true_owner(&Id::of_key(service));
    let owner = (0..2)
        .find(|&i| c.node(i).node().id == owner_id)
        .expect("the owner is one of the two");
    // The replica's own key space in the shared Redis, as a second client sees it.
    let replica_store = chordctl::store::redis::RedisStore::connect(
        &redis.url(),
        &c.node(1 - owner).node().id.to_hex(),
    )
    .await
    .expect("second client");
    let key = unit_key(service, "a");
    eventually(
        "the replica stores its copy",
        Duration::from_secs(30),
        async || match replica_store.get(&key).await {
            Ok(Some(_)) => Ok(()),
            other => Err(format!("replica holds {other:?}")),
        },
    )
    .await;
    // The owner's record is in memory (a read at the owner loads it if a round dropped it).
    // Asked after the loss, a round running meanwhile could already have dropped the record
    // to pull the unit back, and the read would see the store's state.
    assert_eq!(
        instances(&c.url(owner), service).await.len(),
        1,
        "the owner's record in memory has it"
    );
    let owner_hex = c.node(owner).node().id.to_hex();
    let (owner_store, value) = lose_behind_the_agent(&redis, &owner_hex, &key).await;
    let registry = &c.node(owner).agent().registry;
    eventually(
        "the owner's store holds the unit again",
        Duration::from_secs(30),
        async || {
            registry
                .sync_replicas()
                .await
                .map_err(|e| format!("round: {e}"))?;
            match owner_store.get(&key).await {
                Ok(Some(v)) if v == value => Ok(()),
                other => Err(format!("owner's store holds {other:?}")),
            }
        },
    )
    .await;
}

/// An agent's memory holds at most its record cache's bound of units; the services that do
/// not fit together take turns, the least recently used dropped for the one in use, and are
/// read from the store again, every write and every read as if all were held. (The bound is
/// shrunk to 60 units for the test; four services of 25 instances need 112.)
#[test]
fn services_that_do_not_fit_in_the_record_cache_together_take_turns_in_it() {
    use crate::support::procs::AgentProc;
    let agent = AgentProc::start_env(
        None,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &[],
        &[("CHORDCTL_TEST_RECORD_CACHE_UNITS", "60")],
    );
    let url = agent.url();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let services: Vec<String> = (0..4).map(|s| format!("big-{s}")).collect();
        for service in &services {
            for i in 0..25u16 {
                register(&url, service, &format!("i{i}"), 8000 + i).await;
            }
        }
        // A later write to every service, whether cached or not, lands on top of the rest.
        for service in &services {
            call_ok(
                "PUT",
                &format!("{url}/v1/services/{service}/instances/i7/status"),
                Some(json!({"state": "warning", "latency_ms": 3.0})),
            )
            .await;
            call_ok(
                "DELETE",
                &format!("{url}/v1/services/{service}/instances/i3"),
                None,
            )
            .await;
        }
        for service in &services {
            let list = instances(&url, service).await;
            let mut ids: Vec<&str> = list.iter().filter_map(|i| i["id"].as_str()).collect();
            ids.sort_unstable();
            let mut want: Vec<String> = (0..25)
                .filter(|i| *i != 3)
                .map(|i| format!("i{i}"))
                .collect();
            want.sort_unstable();
            assert_eq!(ids, want, "{service}");
            let i7 = list.iter().find(|i| i["id"] == "i7").expect("i7");
            assert_eq!(i7["status"]["state"], "warning", "{service}: {i7}");
        }
        let units = metric(&url, "chordctl_record_cache{what=\"units\"}").await;
        assert!(units <= 60, "{units} units cached, above the bound of 60");
        assert!(
            metric(&url, "chordctl_record_cache_evictions_total").await > 0,
            "services must have been dropped to make room for others"
        );
        assert_eq!(
            metric(&url, "chordctl_record_cache_full_total").await,
            0,
            "every service fits on its own"
        );
    });
}
