//! Issue 7: an authenticated ring (`--cluster-secret`), API tokens (`--api-token`), HTTP limits,
//! hostile input (property tests and a corpus) and peers that accept but never answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chordctl::agent::{self, AgentConfig, Start};
use chordctl::http::Limits;
use chordctl::registry::compat::PrototypeBody;
use chordctl::registry::ops::{Entry, RegistryRequest, WriteOp};
use chordctl::registry::{RegisterBody, StatusBody};
use chordctl::ring::{Id, NodeRef, RingRequest};
use chordctl::rpc::frame::{self, Envelope};
use chordctl::rpc::{Request, Response};
use proptest::prelude::*;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::cluster::{test_config, Configure, TestCluster};
use crate::support::http;
use crate::support::procs::{client, poll, AgentProc};

const SECRET: &str = "ring-secret-for-tests";
const TOKEN: &str = "api-token-for-tests";

fn with_secret(secret: Option<&'static str>) -> Configure {
    Arc::new(move |c: &mut AgentConfig| c.cluster_secret = secret.map(String::from))
}

/// A free loopback port's address (bound, read, released), so that a node's id is known
/// before it starts.
async fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr")
}

/// Every node id any live member knows of: itself, predecessor, successors, fingers.
fn known_ids(c: &TestCluster) -> Vec<Id> {
    let mut ids = Vec::new();
    for h in c.live() {
        h.agent().ring.read(|chord| {
            ids.push(chord.me().id);
            ids.extend(chord.predecessor().map(|p| p.id));
            ids.extend(chord.successors().iter().map(|s| s.id));
        });
    }
    ids
}

/// Try to join `c` with `secret`; the error text (start must fail).
async fn stranger_joins(c: &TestCluster, secret: Option<&str>) -> (String, Id) {
    let addr = free_addr().await;
    let dir = c.tmp.path().join(format!("stranger-{}", addr.port()));
    let config = AgentConfig {
        bind: addr,
        cluster_secret: secret.map(String::from),
        ..test_config(Start::Join(c.seed()), &dir)
    };
    let started = Instant::now();
    let err = match agent::start(config).await {
        Ok(_) => panic!("an agent with secret {secret:?} joined a ring it should not"),
        Err(e) => e.to_string(),
    };
    // Refused at once, not after the whole join deadline.
    assert!(
        started.elapsed() < agent::JOIN_DEADLINE,
        "took {:?}",
        started.elapsed()
    );
    (err, NodeRef::new(addr.to_string(), "").id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_secret_ring_forms_and_the_registry_works() {
    let c = TestCluster::start_with(3, with_secret(Some(SECRET))).await;
    c.settle().await;
    let (status, body) = http::call(
        "PUT",
        &format!("{}/v1/services/payments/instances/a", c.url(1)),
        Some(json!({"address": "10.0.0.1", "port": 80})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) =
        http::call("GET", &format!("{}/v1/services/payments", c.url(2)), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["instances"][0]["id"], "a", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_another_secret_or_none_cannot_join_and_are_never_members() {
    let c = TestCluster::start_with(2, with_secret(Some(SECRET))).await;
    c.settle().await;

    let (err, other_id) = stranger_joins(&c, Some("another-secret")).await;
    assert!(err.contains("cluster secret"), "{err}");
    assert!(
        !err.contains(SECRET) && !err.contains("another-secret"),
        "{err}"
    );

    let (err, none_id) = stranger_joins(&c, None).await;
    assert!(err.contains("--cluster-secret"), "{err}");

    c.settle().await;
    let known = known_ids(&c);
    assert!(!known.contains(&other_id) && !known.contains(&none_id));
    let (status, nodes) = http::call("GET", &format!("{}/v1/ring/nodes", c.url(0)), None).await;
    assert_eq!(status, 200);
    assert_eq!(nodes.as_array().map(Vec::len), Some(2), "{nodes}");
}

/// A seed with a cluster secret whose ring port is full (here: every slot one address may
/// hold, taken by connections that never authenticate) says BUSY; a join through it waits
/// and succeeds once slots free (the silent connections are dropped at the handshake
/// deadline), instead of giving up at once as if the secret were wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_through_a_seed_at_its_connection_cap_waits_and_succeeds() {
    let c = TestCluster::start_with(1, with_secret(Some(SECRET))).await;
    let seed = c.seed();
    let mut held = Vec::new();
    for _ in 0..chordctl::rpc::server::MAX_PER_ADDRESS {
        held.push(TcpStream::connect(&seed).await.expect("connect"));
    }
    // The next one from this address is told BUSY and closed.
    let mut over = TcpStream::connect(&seed).await.expect("connect");
    let got = read_until_closed(&mut over, Duration::from_secs(5)).await;
    assert!(
        got.ends_with(&[chordctl::rpc::auth::HANDSHAKE_MARKER, b'B']),
        "not BUSY: {got:?}"
    );

    let addr = free_addr().await;
    let dir = c.tmp.path().join("joiner");
    let config = AgentConfig {
        bind: addr,
        cluster_secret: Some(SECRET.to_string()),
        ..test_config(Start::Join(seed), &dir)
    };
    let joined = agent::start(config).await;
    assert!(joined.is_ok(), "the join gave up: {:?}", joined.err());
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_secret_cannot_join_a_ring_without_one() {
    let c = TestCluster::start(1).await;
    let (err, id) = stranger_joins(&c, Some(SECRET)).await;
    assert!(err.contains("cluster-secret"), "{err}");
    assert!(!err.contains(SECRET), "{err}");
    assert!(!known_ids(&c).contains(&id));
}

/// A plain frame as an agent without a secret would send it.
pub(crate) fn plain_ping() -> Vec<u8> {
    let body = frame::encode(&Envelope {
        id: 1,
        body: Request::Ring(RingRequest::Ping),
    })
    .expect("encode");
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// Read until the peer closes; the bytes it sent. Fails the test after `deadline`.
pub(crate) async fn read_until_closed<S: AsyncRead + Unpin>(
    stream: &mut S,
    deadline: Duration,
) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(deadline, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the connection stayed open for {deadline:?}");
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_peers_without_the_handshake_get_nothing_and_are_dropped() {
    let c = TestCluster::start_with(1, with_secret(Some(SECRET))).await;
    let ring = c.node(0).ring_addr();

    // Frames without a handshake: no answer, connection closed.
    let mut s = TcpStream::connect(ring).await.expect("connect");
    s.write_all(&plain_ping()).await.expect("write");
    assert_eq!(
        read_until_closed(&mut s, Duration::from_secs(10)).await,
        b""
    );

    // A forged handshake with a made-up proof: the challenge comes, then the drop.
    let mut s = TcpStream::connect(ring).await.expect("connect");
    let mut hello = vec![0, 0, 0, 34, 0xA5, b'H'];
    hello.extend_from_slice(&[7u8; 32]);
    s.write_all(&hello).await.expect("write");
    let mut proof = vec![0, 0, 0, 34, 0xA5, b'P'];
    proof.extend_from_slice(&[0u8; 32]);
    s.write_all(&proof).await.expect("write");
    s.write_all(&plain_ping()).await.ok();
    let got = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 4 + 2 + 32 + 32, "only the challenge: {got:?}");

    // A huge length prefix before authentication is refused, not buffered.
    let mut s = TcpStream::connect(ring).await.expect("connect");
    s.write_all(&(16u32 << 20).to_be_bytes())
        .await
        .expect("write");
    assert_eq!(
        read_until_closed(&mut s, Duration::from_secs(10)).await,
        b""
    );

    // A silent peer is dropped within the handshake timeout.
    let mut s = TcpStream::connect(ring).await.expect("connect");
    let started = Instant::now();
    assert_eq!(
        read_until_closed(&mut s, Duration::from_secs(15)).await,
        b""
    );
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_is_dropped_without_a_secret_too() {
    let c = TestCluster::start(1).await;
    let mut s = TcpStream::connect(c.node(0).ring_addr())
        .await
        .expect("connect");
    assert_eq!(
        read_until_closed(&mut s, Duration::from_secs(15)).await,
        b""
    );
}

// ---- --api-token ----

async fn call_with(method: &str, url: &str, token: Option<&str>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = client.request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn with_token() -> Configure {
    Arc::new(|c: &mut AgentConfig| c.api_token = Some(TOKEN.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_but_healthz_requires_the_token() {
    let c = TestCluster::start_with(1, with_token()).await;
    let base = c.url(0);
    let routes = [
        ("GET", "/v1/services"),
        ("GET", "/v1/ring"),
        ("GET", "/v1/ring/nodes"),
        ("GET", "/v1/services/payments"),
        ("GET", "/services/resolution/?sname=payments"),
        ("POST", "/services/register/"),
        ("GET", "/no/such/route"),
        // Change streams, served on a fresh connection by the lean path.
        ("GET", "/v1/watch/services/payments"),
        ("GET", "/v1/watch/services"),
        ("GET", "/v1/watch/nothing"),
    ];
    for (method, path) in routes {
        let url = format!("{base}{path}");
        for token in [None, Some("wr0ng-tok3n"), Some("")] {
            let (status, body) = call_with(method, &url, token).await;
            assert_eq!(status, 401, "{method} {path} with {token:?}: {body}");
            assert_eq!(body["error"]["code"], "unauthorized", "{body}");
            let text = body.to_string();
            assert!(
                !text.contains(TOKEN) && !text.contains("wr0ng-tok3n"),
                "{text}"
            );
        }
    }
    for path in ["/v1/services", "/v1/ring", "/v1/ring/nodes"] {
        let (status, body) = call_with("GET", &format!("{base}{path}"), Some(TOKEN)).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (status, body) = call_with(
        "GET",
        &format!("{base}/services/resolution/?sname=payments"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = call_with("GET", &format!("{base}/healthz"), None).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sends_its_token() {
    let c = TestCluster::start_with(1, with_token()).await;
    let url = c.url(0);
    let bin = crate::support::procs::bin();
    let run = |args: Vec<&str>, env_token: Option<&str>| {
        let mut cmd = std::process::Command::new(bin);
        cmd.args(["--agent", &url]).args(&args);
        cmd.env_remove("CHORDCTL_TOKEN")
            .env_remove("CHORDCTL_AGENT");
        if let Some(t) = env_token {
            cmd.env("CHORDCTL_TOKEN", t);
        }
        cmd.output().expect("run chordctl")
    };
    let ok = tokio::task::block_in_place(|| run(vec!["--token", TOKEN, "svc", "list"], None));
    assert!(ok.status.success(), "{ok:?}");
    let ok = tokio::task::block_in_place(|| run(vec!["ring", "show"], Some(TOKEN)));
    assert!(ok.status.success(), "{ok:?}");

    let missing = tokio::task::block_in_place(|| run(vec!["svc", "list"], None));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("token"), "{stderr}");

    let wrong =
        tokio::task::block_in_place(|| run(vec!["--token", "nope-123", "svc", "list"], None));
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert_eq!(wrong.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("token") && !stderr.contains("nope-123"),
        "{stderr}"
    );
}

#[test]
fn print_config_masks_the_secret_and_the_token() {
    let out = std::process::Command::new(crate::support::procs::bin())
        .args(["agent", "create", "--print-config"])
        .env("CHORDCTL_CLUSTER_SECRET", "ring-s3cret-xyz")
        .env("CHORDCTL_API_TOKEN", "api-t0ken-xyz")
        .output()
        .expect("run chordctl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        !text.contains("ring-s3cret-xyz") && !text.contains("api-t0ken-xyz"),
        "{text}"
    );
    assert!(text.contains("cluster_secret = (set)"), "{text}");
}

// ---- HTTP limits ----

/// An agent's router served again on a fresh port under `limits`.
async fn limited(c: &TestCluster, limits: Limits) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = chordctl::http::router_with(c.node(0).agent().clone(), &limits);
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(chordctl::http::serve_app(listener, app, limits, stop));
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_cannot_hold_http_connections() {
    let c = TestCluster::start(1).await;
    let addr = limited(
        &c,
        Limits {
            header_read_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_millis(800),
            ..Limits::default()
        },
    )
    .await;

    // Headers that never finish: closed after the header deadline.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("write");
    read_until_closed(&mut s, Duration::from_secs(10)).await;

    // The same for the head of a change stream (the lean path).
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /v1/watch/services/a HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("write");
    read_until_closed(&mut s, Duration::from_secs(10)).await;

    // An idle connection: closed too.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    read_until_closed(&mut s, Duration::from_secs(10)).await;

    // A body that never finishes: a JSON 503 after the request deadline.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        b"PUT /v1/services/a/instances/b HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"addr",
    )
    .await
    .expect("write");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("an answer within the deadline")
        .expect("read");
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("\"timeout\""), "{text}");

    // Oversized headers: 431.
    let big = "x".repeat(64 * 1024);
    let resp = reqwest::Client::new()
        .get(format!("http://{addr}/healthz"))
        .header("x-big", big)
        .send()
        .await;
    if let Ok(r) = resp {
        assert_eq!(r.status().as_u16(), 431);
    }
    let resp = reqwest::Client::new()
        .get(format!("http://{addr}/v1/watch/services/a"))
        .header("x-big", "x".repeat(64 * 1024))
        .send()
        .await;
    if let Ok(r) = resp {
        assert_eq!(r.status().as_u16(), 431);
    }
}

/// A request the HTTP server cannot parse — not HTTP at all, a malformed header line, a head
/// over 16 KiB, on a fresh connection or after a good request on the same one, and the
/// same on the change streams' own path — gets the JSON error every other error has, then
/// the connection closes. (hyper's own answers had an empty body.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_is_not_valid_http_gets_a_json_error() {
    let c = TestCluster::start(1).await;
    let addr = limited(&c, Limits::default()).await;
    let big = format!(
        "GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "x".repeat(20 * 1024)
    );
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not HTTP", b"GARBAGE\r\n\r\n".to_vec(), "400"),
        (
            "a header line without a colon",
            b"GET /healthz HTTP/1.1\r\nhost: x\r\nno colon\r\n\r\n".to_vec(),
            "400",
        ),
        ("a head over 16 KiB", big.into_bytes(), "431"),
        (
            "garbage after a good request",
            b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\nGARBAGE\r\n\r\n".to_vec(),
            "400",
        ),
        (
            "a change stream's malformed head",
            b"GET /v1/watch/services/a HTTP/1.1\r\nno colon\r\n\r\n".to_vec(),
            "400",
        ),
    ];
    for (what, request, status) in cases {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(&request).await.expect("write");
        let got = read_until_closed(&mut s, Duration::from_secs(10)).await;
        let text = String::from_utf8_lossy(&got).into_owned();
        // The last answer on the connection is the refusal.
        let at = text
            .rfind("HTTP/1.1 ")
            .unwrap_or_else(|| panic!("{what}: no answer: {text:?}"));
        let (head, body) = text[at..]
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("{what}: {text:?}"));
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status}")),
            "{what}: {head}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{what}: {head}"
        );
        let v: Value = serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("{what}: the body is not JSON ({e}): {body:?}"));
        assert_eq!(v["error"]["code"], "invalid_input", "{what}: {v}");
        assert!(v["error"]["message"].as_str().is_some(), "{what}: {v}");
    }
}

/// `body` is the JSON answer to a connection over the agent's cap.
pub fn assert_too_many_connections(body: &Value) {
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("too many connections"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_get_a_json_503() {
    let c = TestCluster::start(1).await;
    let addr = limited(
        &c,
        Limits {
            max_connections: 1,
            ..Limits::default()
        },
    )
    .await;
    let _held = TcpStream::connect(addr).await.expect("connect");
    // The held connection is accepted before the next one.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = http::call("GET", &format!("http://{addr}/healthz"), None).await;
        if status == 503 {
            assert_too_many_connections(&body);
            break;
        }
        assert!(Instant::now() < deadline, "never refused: {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- a peer that accepts and never answers ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_answers_cannot_stall_lookups_or_writes() {
    // Four agent processes; node 3 is then frozen with SIGSTOP: the kernel still accepts
    // connections to its ports and buffers what peers send, but nothing is ever read or
    // answered, and its open connections stay open. A frozen process (unlike a killed one
    // whose port is rebound) is still in every peer's tables at the moment it stops.
    let first = AgentProc::start(None, &[]);
    let mut agents = vec![first];
    for _ in 1..4 {
        let seed = agents[0].ring.clone();
        agents.push(AgentProc::start(Some(&seed), &[]));
    }
    let frozen = agents[3].id.clone();
    let ring_ids = |url: &str| -> Result<Vec<String>, String> {
        let out = client(url, &["ring", "show", "-o", "json"]);
        let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
        Ok(v.as_array()
            .map(|nodes| {
                nodes
                    .iter()
                    .filter_map(|n| n["id"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default())
    };
    for a in &agents {
        poll(Duration::from_secs(60), "the 4-node ring settles", || {
            let ids = ring_ids(&a.url())?;
            (ids.len() == 4).then_some(()).ok_or(format!("{ids:?}"))
        });
    }
    agents[3].signal(libc::SIGSTOP);
    let budget = chordctl::http::REQUEST_TIMEOUT;
    for i in 0..12 {
        let started = Instant::now();
        let (status, body) = http::call(
            "PUT",
            &format!("{}/v1/services/svc-{i}/instances/a", agents[i % 3].url()),
            Some(json!({"address": "10.0.0.1", "port": 80})),
        )
        .await;
        assert_eq!(status, 200, "write {i}: {body}");
        assert!(
            started.elapsed() < budget,
            "write {i} took {:?}",
            started.elapsed()
        );
        let started = Instant::now();
        let (status, body) = http::call(
            "GET",
            &format!("{}/v1/locate/svc-{i}", agents[(i + 1) % 3].url()),
            None,
        )
        .await;
        assert_eq!(status, 200, "locate {i}: {body}");
        assert!(
            started.elapsed() < budget,
            "locate {i} took {:?}",
            started.elapsed()
        );
        let (status, body) = http::call(
            "GET",
            &format!("{}/v1/services/svc-{i}", agents[(i + 2) % 3].url()),
            None,
        )
        .await;
        assert_eq!(status, 200, "discover {i}: {body}");
    }
    // The premise: the live agents did dial the frozen one, got no answer, and dropped it.
    for a in &agents[..3] {
        poll(
            Duration::from_secs(60),
            "the frozen node is dropped",
            || {
                let ids = ring_ids(&a.url())?;
                (!ids.contains(&frozen))
                    .then_some(())
                    .ok_or(format!("{ids:?}"))
            },
        );
    }
    // A stopped process still dies of SIGKILL (Drop); let it go on so nothing is left frozen.
    agents[3].signal(libc::SIGCONT);
}

// ---- hostile input ----

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("entry").path();
        let bytes = std::fs::read(&path).expect("read");
        out.push((path.display().to_string(), bytes));
    }
    out.sort();
    out
}

/// Every parser, on one input: must return, never panic.
fn parse_everything(bytes: &[u8]) {
    let _ = frame::decode::<Request>(bytes);
    let _ = frame::decode::<Response>(bytes);
    let _ = RegisterBody::from_json(bytes);
    let _ = StatusBody::from_json(bytes);
    let _ = PrototypeBody::from_bytes(bytes);
    let _ = chordctl::registry::Record::from_legacy_bytes(bytes);
    let _ = chordctl::registry::Unit::from_bytes("svc", bytes);
}

#[test]
fn the_corpus_of_tricky_inputs_is_refused_cleanly() {
    let corpus = corpus();
    assert!(corpus.len() >= 10, "corpus too small: {}", corpus.len());
    for (name, bytes) in corpus {
        parse_everything(&bytes);
        // None of them is a valid request frame or a valid registration.
        assert!(
            frame::decode::<Request>(&bytes).is_err() || name.contains("valid"),
            "{name}"
        );
        if !name.contains("valid") {
            assert!(
                RegisterBody::from_json(&bytes)
                    .and_then(|b| b.validate(false).map(|_| ()))
                    .is_err(),
                "{name}"
            );
        }
    }
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        Just(Request::Ring(RingRequest::Ping)),
        Just(Request::Ring(RingRequest::GetNeighbors)),
        any::<[u8; 20]>().prop_map(|b| Request::Ring(RingRequest::FindStep { key: Id::hash(&b) })),
        ("[a-z0-9.:]{0,40}", "[a-z0-9.:]{0,40}")
            .prop_map(|(a, h)| Request::Ring(RingRequest::Notify(NodeRef::new(a, h)))),
        (
            "[a-z0-9./]{1,40}",
            proptest::collection::vec(any::<u8>(), 0..512)
        )
            .prop_map(|(key, value)| Request::Registry(RegistryRequest::Handoff {
                entries: vec![Entry { key, value }]
            })),
        "[a-z0-9.]{0,40}".prop_map(|service| Request::Registry(RegistryRequest::Read { service })),
        (
            "[a-z0-9.]{1,40}",
            proptest::option::of(0.0f64..1e9),
            proptest::option::of("[ -~]{0,40}")
        )
            .prop_map(|(id, latency_ms, note)| {
                Request::Registry(RegistryRequest::Write {
                    service: "svc".into(),
                    op: WriteOp::Report {
                        id,
                        body: StatusBody {
                            latency_ms,
                            note,
                            ..StatusBody::default()
                        },
                    },
                })
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_the_parsers(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        parse_everything(&bytes);
        // Behind a valid version byte too, where postcard actually runs.
        let mut framed = vec![frame::PROTOCOL_VERSION];
        framed.extend_from_slice(&bytes);
        parse_everything(&framed);
    }

    #[test]
    fn json_like_bodies_never_panic(s in r#"\{("[a-zA-Z_]{1,12}": ?(-?[0-9]{1,25}(\.[0-9]{1,5})?(e[0-9]{1,4})?|"[^"\\]{0,20}"|null|true|\[\]|\{\}), ?){0,6}\}"#) {
        parse_everything(s.as_bytes());
    }

    #[test]
    fn valid_envelopes_round_trip(id in any::<u64>(), body in request()) {
        let env = Envelope { id, body };
        let bytes = frame::encode(&env).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(frame::decode::<Request>(&bytes), Ok(env));
    }

    #[test]
    fn truncated_valid_frames_are_errors(id in any::<u64>(), body in request(), cut in 0usize..64) {
        let bytes = frame::encode(&Envelope { id, body }).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let keep = bytes.len().saturating_sub(cut + 1);
        prop_assert!(frame::decode::<Request>(&bytes[..keep]).is_err());
    }
}
