//! Watching (API.md, "Watching for changes"): blocking discover through a non-owner, the
//! change stream's promise under owner crashes (real agent processes killed with SIGKILL), and
//! a slow reader that gets a reset while a fast one gets every event.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use chordctl::cli::watch::{SseEvent, SseParser};
use chordctl::ring::Id;
use http_body_util::BodyExt;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::cluster::TestCluster;
use crate::support::eventually;
use crate::support::http::call;
use crate::support::procs::{free_addr, ring_order, AgentProc};

/// Generous: debug builds on a loaded two-core machine.
const SETTLE: Duration = Duration::from_secs(60);

/// A change stream read by the test.
struct Stream {
    body: Body,
    parser: SseParser,
    pending: VecDeque<SseEvent>,
}

/// Where a stream's bytes come from: a pooled client, or one connection the test holds.
enum Body {
    Pooled(reqwest::Response),
    Held(hyper::body::Incoming),
}

impl Body {
    /// The next bytes of the body; `None` at its end or on an error.
    async fn chunk(&mut self) -> Option<bytes::Bytes> {
        match self {
            Body::Pooled(resp) => resp.chunk().await.ok().flatten(),
            Body::Held(incoming) => loop {
                let frame = incoming.frame().await?.ok()?;
                if let Ok(data) = frame.into_data() {
                    break Some(data);
                }
            },
        }
    }
}

impl Stream {
    async fn open(url: &str, service: &str, last_id: Option<u64>) -> Result<Stream, String> {
        let mut req = reqwest::Client::new().get(format!("{url}/v1/watch/services/{service}"));
        if let Some(id) = last_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        Stream::of(req).await
    }

    /// The stream `req` opens (any watch route).
    async fn of(req: reqwest::RequestBuilder) -> Result<Stream, String> {
        let resp = req.send().await.map_err(|e| e.to_string())?;
        if resp.status() != 200 {
            return Err(format!("status {}", resp.status()));
        }
        Ok(Stream::reading(Body::Pooled(resp)))
    }

    fn reading(body: Body) -> Stream {
        Stream {
            body,
            parser: SseParser::new(),
            pending: VecDeque::new(),
        }
    }

    /// The next event, or `None` when the stream ended or stayed silent for `patience`.
    async fn next(&mut self, patience: Duration) -> Option<SseEvent> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            match tokio::time::timeout(patience, self.body.chunk()).await {
                Ok(Some(bytes)) => self.pending.extend(self.parser.feed(&bytes)),
                _ => return None,
            }
        }
    }
}

/// Instances by id, with the address and port a caller would route to.
type View = BTreeMap<String, (String, u64)>;

/// A watcher's state, built only from the events it received.
#[derive(Default, Debug)]
struct Model {
    instances: BTreeMap<String, Value>,
    index: u64,
    resets: u64,
    changes: u64,
}

impl Model {
    fn apply(&mut self, e: &SseEvent) -> Result<(), String> {
        let data: Value = serde_json::from_str(&e.data).map_err(|x| format!("{x}: {}", e.data))?;
        let index = data["index"].as_u64().ok_or(format!("no index: {data}"))?;
        if index < self.index {
            return Err(format!(
                "index went back from {} to {index}: {data}",
                self.index
            ));
        }
        match e.event.as_str() {
            "snapshot" => {
                if data["reset"] == true {
                    self.resets += 1;
                }
                self.instances = data["instances"]
                    .as_array()
                    .ok_or(format!("no instances: {data}"))?
                    .iter()
                    .map(|i| (i["id"].as_str().unwrap_or_default().to_string(), i.clone()))
                    .collect();
            }
            "change" => {
                self.changes += 1;
                let inst = &data["instance"];
                let id = inst["id"]
                    .as_str()
                    .ok_or(format!("no id: {data}"))?
                    .to_string();
                match data["op"].as_str() {
                    Some("register" | "update") => {
                        self.instances.insert(id, inst.clone());
                    }
                    Some("deregister" | "expire") => {
                        self.instances.remove(&id);
                    }
                    other => return Err(format!("unknown op {other:?}")),
                }
            }
            "bookmark" => {}
            other => return Err(format!("unknown event {other}")),
        }
        self.index = index;
        Ok(())
    }

    /// The ids and addresses+ports held (what a caller would route to).
    fn view(&self) -> View {
        view_of(self.instances.values())
    }
}

/// Instances (INSTANCE JSON) as a [`View`].
fn view_of<'a>(instances: impl Iterator<Item = &'a Value>) -> View {
    instances
        .map(|v| {
            (
                v["id"].as_str().unwrap_or_default().to_string(),
                (
                    v["address"].as_str().unwrap_or_default().to_string(),
                    v["port"].as_u64().unwrap_or(0),
                ),
            )
        })
        .collect()
}

/// The `X-Chordctl-Index` of an answer (0 without one).
fn index_of(r: &reqwest::Response) -> u64 {
    r.headers()
        .get("x-chordctl-index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// What discover answers now, in the form of [`Model::view`], with its index.
async fn discovered(url: &str, service: &str) -> Result<(View, u64), String> {
    let r = reqwest::get(format!("{url}/v1/services/{service}"))
        .await
        .map_err(|e| e.to_string())?;
    let st = r.status().as_u16();
    let index = index_of(&r);
    let body: Value = r.json().await.unwrap_or(Value::Null);
    match st {
        200 => Ok((
            view_of(body["instances"].as_array().into_iter().flatten()),
            index,
        )),
        404 => Ok((BTreeMap::new(), index)),
        _ => Err(format!("{st} {body}")),
    }
}

async fn blocking_get(url: &str, query: &str) -> (u16, u64, Value, Duration) {
    let started = Instant::now();
    let r = reqwest::Client::new()
        .get(format!("{url}?{query}"))
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .expect("blocking discover");
    let st = r.status().as_u16();
    let index = index_of(&r);
    let body = r.json().await.unwrap_or(Value::Null);
    (st, index, body, started.elapsed())
}

/// `chordctl_watchers` of the agent at `url`.
async fn watchers(url: &str) -> u64 {
    let (_, text) = crate::support::http::raw("GET", &format!("{url}/metrics"), Vec::new()).await;
    text.lines()
        .find_map(|l| l.strip_prefix("chordctl_watchers "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Wait until a blocking query waits at the agent at `url`.
async fn parked(url: &str) {
    eventually("the blocking query is parked", SETTLE, async || {
        (watchers(url).await >= 1)
            .then_some(())
            .ok_or("no watcher yet".to_string())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_query_through_a_non_owner_is_woken_by_a_change_its_filter_shows() {
    let c = TestCluster::start(3).await;
    c.settle().await;
    let owner = c.true_owner(&Id::of_key("blocked"));
    let others: Vec<usize> = (0..3).filter(|i| c.node(*i).node().id != owner).collect();
    let (a, b) = (c.url(others[0]), c.url(others[1]));
    let put = |url: String, id: &'static str, body: Value| async move {
        let (st, b) = call(
            "PUT",
            &format!("{url}/v1/services/blocked/instances/{id}"),
            Some(body),
        )
        .await;
        assert_eq!(st, 200, "{b}");
    };
    put(b.clone(), "i0", json!({"address": "10.0.0.1", "port": 80})).await;
    let (_, index) = discovered(&a, "blocked").await.expect("discover");
    let service = format!("{a}/v1/services/blocked");

    // Nothing changes: the wait ends with the same state.
    let (st, same, body, took) = blocking_get(&service, &format!("index={index}&wait=1s")).await;
    assert_eq!((st, same), (200, index), "{body}");
    assert!(took >= Duration::from_secs(1), "answered after {took:?}");

    // A change through another agent wakes it.
    let waiting = tokio::spawn({
        let service = service.clone();
        async move { blocking_get(&service, &format!("index={index}&wait=60s")).await }
    });
    parked(&a).await;
    put(c.url(0), "i1", json!({"address": "10.0.0.2", "port": 81})).await;
    let (st, after, body, took) = waiting.await.expect("task");
    assert_eq!(st, 200, "{body}");
    assert!(after > index, "index {after} after {index}");
    assert!(took < Duration::from_secs(30), "woken only after {took:?}");
    let ids: Vec<&str> = body["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .filter_map(|i| i["id"].as_str())
        .collect();
    assert_eq!(ids, ["i0", "i1"], "{body}");

    // A change the filter does not show (a critical instance's report, asked with
    // ?healthy=true) does not answer before the wait's end.
    put(
        b.clone(),
        "sick",
        json!({"address": "10.0.0.3", "port": 82}),
    )
    .await;
    let (st, b2) = call(
        "PUT",
        &format!("{b}/v1/services/blocked/instances/sick/status"),
        Some(json!({"state": "critical"})),
    )
    .await;
    assert_eq!(st, 200, "{b2}");
    let (_, index) = discovered(&a, "blocked").await.expect("discover");
    let waiting = tokio::spawn({
        let service = service.clone();
        async move { blocking_get(&service, &format!("healthy=true&index={index}&wait=3s")).await }
    });
    parked(&a).await;
    let (st, b3) = call(
        "PUT",
        &format!("{b}/v1/services/blocked/instances/sick/status"),
        Some(json!({"state": "critical", "latency_ms": 9.0})),
    )
    .await;
    assert_eq!(st, 200, "{b3}");
    let (st, _, body, took) = waiting.await.expect("task");
    assert_eq!(st, 200, "{body}");
    assert!(
        took >= Duration::from_secs(3),
        "a change the filter hides answered after {took:?}"
    );
}

/// An index no copy of the service reached: a client's mistake, or one held from the other side
/// of a split.
const PAST_EVERY_INDEX: u64 = 99_999_999_999;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_past_every_copys_index_gets_a_reset_at_the_real_index_then_every_change() {
    let c = TestCluster::start(2).await;
    c.settle().await;
    let url = c.url(0);
    let put = |id: &'static str| {
        let url = url.clone();
        async move {
            let (st, b) = call(
                "PUT",
                &format!("{url}/v1/services/ahead/instances/{id}"),
                Some(json!({"address": "10.0.0.1", "port": 80})),
            )
            .await;
            assert_eq!(st, 200, "{b}");
        }
    };
    put("i0").await;
    let (_, index) = discovered(&url, "ahead").await.expect("discover");
    assert!(index > 0 && index < PAST_EVERY_INDEX, "index {index}");

    let mut s = Stream::open(&c.url(1), "ahead", Some(PAST_EVERY_INDEX))
        .await
        .expect("stream");
    let first = s.next(SETTLE).await.expect("a first event");
    assert_eq!(first.event, "snapshot", "{first:?}");
    let data: Value = serde_json::from_str(&first.data).expect("JSON");
    assert_eq!(data["reset"], true, "{data}");
    assert_eq!(
        data["index"], index,
        "the reset is at the index there is: {data}"
    );
    assert_eq!(
        first.id.as_deref(),
        Some(index.to_string().as_str()),
        "{first:?}"
    );

    // The change after it is sent, not taken for one the watcher has.
    put("i1").await;
    loop {
        let e = s.next(SETTLE).await.expect("the change of i1");
        if e.event == "bookmark" {
            continue;
        }
        let data: Value = serde_json::from_str(&e.data).expect("JSON");
        assert_eq!(e.event, "change", "{e:?}");
        assert_eq!(data["instance"]["id"], "i1", "{data}");
        assert!(data["index"].as_u64().expect("index") > index, "{data}");
        break;
    }
}

/// Every discover answer carries the service's index: a pick from a service with no
/// instance to pick (its last one removed) too, with its index, not 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pick_with_nothing_to_pick_answers_404_with_the_services_index() {
    let c = TestCluster::start(1).await;
    c.settle().await;
    let url = c.url(0);
    let instance = format!("{url}/v1/services/emptied/instances/i0");
    let (st, b) = call(
        "PUT",
        &instance,
        Some(json!({"address": "10.0.0.1", "port": 80})),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let (st, b) = call("DELETE", &instance, None).await;
    assert_eq!(st, 200, "{b}");
    let (_, index) = discovered(&url, "emptied").await.expect("discover");
    assert!(index > 0, "the emptied service has an index");
    let r = reqwest::get(format!("{url}/v1/services/emptied?pick=random"))
        .await
        .expect("pick");
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(index_of(&r), index, "the 404's X-Chordctl-Index");
}

/// A refused discover carries the index too: a bad filter on a service shows the service's
/// index, a name that cannot be a service's shows 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_discover_answers_400_with_the_services_index() {
    let c = TestCluster::start(1).await;
    c.settle().await;
    let url = c.url(0);
    let (st, b) = call(
        "PUT",
        &format!("{url}/v1/services/refused/instances/i0"),
        Some(json!({"address": "10.0.0.1", "port": 80})),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let (_, index) = discovered(&url, "refused").await.expect("discover");
    assert!(index > 0);
    for (path, want) in [
        ("refused?pick=nearest-moon", index),
        ("refused?index=abc", index),
        ("refused?healthy=maybe", index),
        ("not%20a%20name", 0),
    ] {
        let r = reqwest::get(format!("{url}/v1/services/{path}"))
            .await
            .expect("discover");
        assert_eq!(r.status().as_u16(), 400, "{path}");
        assert!(r.headers().contains_key("x-chordctl-index"), "{path}");
        assert_eq!(index_of(&r), want, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_query_past_every_index_answers_at_the_end_of_its_own_short_wait() {
    let c = TestCluster::start(1).await;
    c.settle().await;
    let url = c.url(0);
    let (st, b) = call(
        "PUT",
        &format!("{url}/v1/services/short/instances/i0"),
        Some(json!({"address": "10.0.0.1", "port": 80})),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let (_, index) = discovered(&url, "short").await.expect("discover");
    // A watcher resuming that far ahead waits up to 5 s for the agent to catch up; a blocking
    // query asked to wait 1 s waits that long, not the 5 s.
    let (st, answered, body, took) = blocking_get(
        &format!("{url}/v1/services/short"),
        &format!("index={PAST_EVERY_INDEX}&wait=1s"),
    )
    .await;
    assert_eq!((st, answered), (200, index), "{body}");
    assert!(took >= Duration::from_secs(1), "answered after {took:?}");
    assert!(
        took < Duration::from_millis(4500),
        "a 1 s wait answered after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_catalog_stream_starts_with_a_reset_above_the_index_it_resumed_from() {
    let c = TestCluster::start(1).await;
    c.settle().await;
    let url = c.url(0);
    let (st, b) = call(
        "PUT",
        &format!("{url}/v1/services/cat-r/instances/x"),
        Some(json!({"address": "h", "port": 1})),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    for (header, query) in [(Some("6"), ""), (None, "?since=6")] {
        let mut req = reqwest::Client::new().get(format!("{url}/v1/watch/services{query}"));
        if let Some(h) = header {
            req = req.header("Last-Event-ID", h);
        }
        let mut s = Stream::of(req).await.expect("catalog stream");
        let first = s.next(SETTLE).await.expect("a snapshot");
        assert_eq!(first.event, "snapshot", "{first:?}");
        let data: Value = serde_json::from_str(&first.data).expect("JSON");
        assert_eq!(data["reset"], true, "{query}: {data}");
        assert_eq!(first.id.as_deref(), Some("7"), "{query}: {first:?}");
        assert_eq!(data["index"], 7, "{query}: {data}");
        assert!(
            data["services"]
                .as_array()
                .expect("services")
                .iter()
                .any(|s| s["service"] == "cat-r"),
            "{data}"
        );
    }
    // Without a resume: a plain snapshot.
    let mut s = Stream::of(reqwest::Client::new().get(format!("{url}/v1/watch/services")))
        .await
        .expect("catalog stream");
    let first = s.next(SETTLE).await.expect("a snapshot");
    let data: Value = serde_json::from_str(&first.data).expect("JSON");
    assert_eq!(data["reset"], false, "{data}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_the_same_on_a_fresh_connection_and_behind_another_request() {
    let c = TestCluster::start(1).await;
    let url = c.url(0);
    let (st, b) = call(
        "PUT",
        &format!("{url}/v1/services/both/instances/a"),
        Some(json!({"address": "10.0.0.1", "port": 1})),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let watch = format!("{url}/v1/watch/services/both");
    // A fresh connection whose first request is the stream: the lean path (no chunks, the
    // body ends with the connection).
    let lean = reqwest::Client::new()
        .get(&watch)
        .send()
        .await
        .expect("lean stream");
    assert_eq!(lean.status(), 200);
    let header = |r: &reqwest::Response, h: &str| {
        r.headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(header(&lean, "content-type"), "text/event-stream");
    assert_eq!(header(&lean, "connection"), "close");
    assert_eq!(header(&lean, "transfer-encoding"), "");
    // A kept-alive connection that answered a discover first: hyper serves the stream
    // (chunked), through the same router. The test holds that one connection itself, so the
    // stream cannot go out on a new one (a pooled client may open one when the first
    // connection is not yet back in its pool).
    let tcp = tokio::net::TcpStream::connect(url.trim_start_matches("http://"))
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<
        _,
        http_body_util::Empty<bytes::Bytes>,
    >(hyper_util::rt::TokioIo::new(tcp))
    .await
    .expect("handshake");
    tokio::spawn(conn);
    let get = |path: &str| {
        hyper::Request::get(path)
            .header("host", url.trim_start_matches("http://"))
            .body(http_body_util::Empty::new())
            .expect("request")
    };
    let first = sender
        .send_request(get("/v1/services/both"))
        .await
        .expect("discover");
    assert_eq!(first.status(), 200);
    first.into_body().collect().await.expect("discover body");
    sender.ready().await.expect("the connection is kept alive");
    let behind = sender
        .send_request(get("/v1/watch/services/both"))
        .await
        .expect("stream");
    assert_eq!(behind.status(), 200);
    let held_header = |h: &str| {
        behind
            .headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(held_header("content-type"), "text/event-stream");
    assert_eq!(held_header("transfer-encoding"), "chunked");
    let mut streams = [
        Stream::reading(Body::Pooled(lean)),
        Stream::reading(Body::Held(behind.into_body())),
    ];
    let mut models = [Model::default(), Model::default()];
    for (s, m) in streams.iter_mut().zip(models.iter_mut()) {
        let e = s.next(SETTLE).await.expect("snapshot");
        assert_eq!(e.event, "snapshot", "{e:?}");
        m.apply(&e).expect("apply");
    }
    let (st, b) = call(
        "PUT",
        &format!("{url}/v1/services/both/instances/b"),
        Some(json!({"address": "10.0.0.2", "port": 2})),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let mut changes = Vec::new();
    for (s, m) in streams.iter_mut().zip(models.iter_mut()) {
        let e = loop {
            let e = s.next(SETTLE).await.expect("the change");
            if e.event == "change" {
                break e;
            }
        };
        m.apply(&e).expect("apply");
        changes.push((e.id.clone(), e.data.clone()));
    }
    assert_eq!(changes[0], changes[1], "both ways send the same event");
    assert_eq!(models[0].view(), models[1].view());
    assert_eq!(models[0].view().len(), 2);
    // Closing either connection detaches its watcher.
    let watchers = || async {
        let (_, text) =
            crate::support::http::raw("GET", &format!("{url}/metrics"), Vec::new()).await;
        text.lines()
            .find_map(|l| l.strip_prefix("chordctl_watchers "))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    assert_eq!(watchers().await, Some(2));
    let [lean, behind] = streams;
    drop(lean);
    eventually(
        "the lean watcher detached",
        SETTLE,
        async || match watchers().await {
            Some(1) => Ok(()),
            other => Err(format!("{other:?} watchers")),
        },
    )
    .await;
    drop(behind);
    eventually(
        "the other watcher detached",
        SETTLE,
        async || match watchers().await {
            Some(0) => Ok(()),
            other => Err(format!("{other:?} watchers")),
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lean_stream_answers_bad_requests_like_the_router() {
    let c = TestCluster::start(1).await;
    let addr: std::net::SocketAddr = c
        .url(0)
        .trim_start_matches("http://")
        .parse()
        .expect("addr");
    // Each on its own fresh connection, written by hand: the lean path reads these heads.
    let ask = |head: String| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(head.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        tokio::time::timeout(SETTLE, s.read_to_end(&mut out))
            .await
            .expect("an answer, then the close")
            .expect("read");
        String::from_utf8_lossy(&out).to_string()
    };
    let bad_name =
        ask("GET /v1/watch/services/no%20spaces HTTP/1.1\r\nhost: x\r\n\r\n".into()).await;
    assert!(bad_name.starts_with("HTTP/1.1 400"), "{bad_name}");
    assert!(bad_name.contains("\"error\""), "a JSON error: {bad_name}");
    let bad_since =
        ask("GET /v1/watch/services/ok?since=x HTTP/1.1\r\nhost: x\r\n\r\n".into()).await;
    assert!(bad_since.starts_with("HTTP/1.1 400"), "{bad_since}");
    let unknown = ask("GET /v1/watch/nothing HTTP/1.1\r\nhost: x\r\n\r\n".into()).await;
    assert!(unknown.starts_with("HTTP/1.1 404"), "{unknown}");
    let with_body = ask(
        "GET /v1/watch/services/ok HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello".into(),
    )
    .await;
    assert!(with_body.starts_with("HTTP/1.1 400"), "{with_body}");
    let garbage = ask("GET /v1/watch/\x01\x02 junk\r\n\r\n".into()).await;
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");
    // The agent is still serving.
    let (st, _) = call("GET", &format!("{}/healthz", c.url(0)), None).await;
    assert_eq!(st, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_reading_gets_a_reset_while_a_fast_one_gets_every_event() {
    let c = TestCluster::start(1).await;
    let url = c.url(0);
    let (st, b) = call(
        "PUT",
        &format!("{url}/v1/services/flood/instances/first"),
        Some(json!({"address": "10.0.0.1", "port": 1})),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    // The slow reader: a small receive buffer, the request sent, the first bytes read, then
    // nothing until the flood is over.
    let addr: std::net::SocketAddr = url.trim_start_matches("http://").parse().expect("addr");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut slow = socket.connect(addr).await.expect("connect");
    slow.write_all(
        format!("GET /v1/watch/services/flood HTTP/1.1\r\nhost: {addr}\r\naccept: text/event-stream\r\n\r\n")
            .as_bytes(),
    )
    .await
    .expect("request");
    let mut head = vec![0u8; 1024];
    let n = slow.read(&mut head).await.expect("first bytes");
    assert!(String::from_utf8_lossy(&head[..n]).contains("200 OK"));
    // The fast reader.
    let mut fast = Stream::open(&url, "flood", None)
        .await
        .expect("fast stream");
    let mut fast_model = Model::default();
    let first = fast.next(SETTLE).await.expect("snapshot");
    fast_model.apply(&first).expect("apply");
    // The flood: 1,500 registrations with 2 KiB of metadata each, 8 at a time.
    let blob = "x".repeat(1000);
    const N: usize = 1500;
    let writes = tokio::spawn({
        let url = url.clone();
        async move {
            let client = reqwest::Client::new();
            futures::future::join_all((0..8).map(|w| {
                let client = client.clone();
                let url = url.clone();
                let blob = blob.clone();
                async move {
                    for i in (w..N).step_by(8) {
                        let r = client
                            .put(format!("{url}/v1/services/flood/instances/i{i}"))
                            .json(&json!({"address": "10.0.0.1", "port": 2, "metadata": {"a": blob, "b": blob}}))
                            .send()
                            .await
                            .expect("write");
                        assert_eq!(r.status(), 200);
                    }
                }
            }))
            .await;
        }
    });
    while fast_model.changes < N as u64 {
        let e = fast
            .next(SETTLE)
            .await
            .unwrap_or_else(|| panic!("the fast reader stopped at {} changes", fast_model.changes));
        fast_model.apply(&e).expect("in order");
    }
    writes.await.expect("writes");
    assert_eq!(fast_model.resets, 0, "the fast reader was reset");
    assert_eq!(fast_model.instances.len(), N + 1);
    // Now the slow reader reads what it was sent: somewhere a reset snapshot, and after it
    // the whole state.
    let mut parser = SseParser::new();
    let mut slow_model = Model::default();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + SETTLE;
    // What followed the response head in the first read is the start of the body: a change
    // stream opened on a fresh connection is served by the lean path, whose body is neither
    // chunked nor sized — it ends with the connection.
    let head_text = String::from_utf8_lossy(&head[..n]).to_lowercase();
    let chunked = head_text.contains("transfer-encoding: chunked");
    let body_start = head[..n]
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(n, |p| p + 4);
    let mut raw = head[body_start..n].to_vec();
    while slow_model.instances.len() < N + 1 {
        assert!(
            Instant::now() < deadline,
            "the slow reader never caught up: {slow_model:?}"
        );
        let got = tokio::time::timeout(SETTLE, slow.read(&mut buf))
            .await
            .expect("slow read")
            .expect("slow read");
        assert!(got > 0, "the stream ended");
        raw.extend_from_slice(&buf[..got]);
        let payload = if chunked {
            // Chunked transfer coding: feed only whole chunks' payloads.
            let (payload, rest) = dechunk(&raw);
            raw = rest;
            payload
        } else {
            std::mem::take(&mut raw)
        };
        for e in parser.feed(&payload) {
            slow_model.apply(&e).expect("in order, never back");
        }
    }
    assert!(
        slow_model.resets >= 1,
        "the slow reader was never reset: {slow_model:?}"
    );
    println!(
        "slow reader: {} resets, {} changes; fast reader: {} changes",
        slow_model.resets, slow_model.changes, fast_model.changes
    );
}

/// Decode the complete chunks at the start of `raw` (HTTP/1.1 chunked coding): their
/// payloads, and the bytes left over.
fn dechunk(raw: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(eol) = raw[at..].windows(2).position(|w| w == b"\r\n") {
        let size_line = String::from_utf8_lossy(&raw[at..at + eol]).to_string();
        let Ok(size) = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
        else {
            break;
        };
        let start = at + eol + 2;
        if raw.len() < start + size + 2 {
            break;
        }
        out.extend_from_slice(&raw[start..start + size]);
        at = start + size + 2;
    }
    (out, raw[at..].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_past_the_cap_get_429_and_the_others_keep_their_streams() {
    let c = TestCluster::start_with(
        1,
        std::sync::Arc::new(|cfg: &mut chordctl::agent::AgentConfig| cfg.max_watchers = 2),
    )
    .await;
    let url = c.url(0);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = Stream::open(&url, "capped", None)
            .await
            .expect("under the cap");
        let first = s.next(SETTLE).await.expect("a snapshot");
        assert_eq!(first.event, "snapshot");
        held.push(s);
    }
    let r = reqwest::get(format!("{url}/v1/watch/services/capped"))
        .await
        .expect("third watcher");
    assert_eq!(r.status().as_u16(), 429);
    let body: Value = r.json().await.expect("JSON error");
    assert_eq!(body["error"]["code"], "too_many", "{body}");
    // A blocking query is a watcher too.
    let (st, _, body, _) =
        blocking_get(&format!("{url}/v1/services/capped"), "index=1&wait=1s").await;
    assert_eq!(st, 429, "{body}");
    // The two streams still get changes.
    let (st, b) = call(
        "PUT",
        &format!("{url}/v1/services/capped/instances/a"),
        Some(json!({"address": "10.0.0.1", "port": 1})),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    for s in &mut held {
        let e = s.next(SETTLE).await.expect("a change");
        assert_eq!(e.event, "change", "{e:?}");
    }
    // One leaves: a new one is let in.
    held.pop();
    eventually("a freed place is taken", SETTLE, async || {
        Stream::open(&url, "capped", None).await.map(|_| ())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_stream_shows_services_appearing_changing_and_disappearing() {
    let c = TestCluster::start(2).await;
    c.settle().await;
    let url = c.url(1);
    let mut s = Stream::of(reqwest::Client::new().get(format!("{url}/v1/watch/services")))
        .await
        .expect("catalog stream");
    let first = s.next(SETTLE).await.expect("a snapshot");
    assert_eq!(first.event, "snapshot", "{first:?}");
    let mut last: u64 = first
        .id
        .as_deref()
        .and_then(|i| i.parse().ok())
        .expect("id");
    let mut expect = async |s: &mut Stream, service: &str, op: &str| loop {
        let e = s
            .next(SETTLE)
            .await
            .unwrap_or_else(|| panic!("no {op} of {service}"));
        let id: u64 = e.id.as_deref().and_then(|i| i.parse().ok()).expect("id");
        assert!(id >= last, "the catalog index went back: {id} after {last}");
        last = id;
        let data: Value = serde_json::from_str(&e.data).expect("JSON");
        if e.event == "change" && data["service"] == service && data["op"] == op {
            return data;
        }
    };
    let inst = format!("{}/v1/services/cat-a/instances", c.url(0));
    let (st, b) = call(
        "PUT",
        &format!("{inst}/x"),
        Some(json!({"address": "h", "port": 1})),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let data = expect(&mut s, "cat-a", "register").await;
    assert_eq!(data["summary"]["instances"], 1, "{data}");
    let (st, b) = call(
        "PUT",
        &format!("{inst}/y"),
        Some(json!({"address": "h", "port": 2})),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let data = expect(&mut s, "cat-a", "update").await;
    assert_eq!(data["summary"]["instances"], 2, "{data}");
    for id in ["x", "y"] {
        let (st, b) = call("DELETE", &format!("{inst}/{id}"), None).await;
        assert_eq!(st, 200, "{b}");
    }
    expect(&mut s, "cat-a", "deregister").await;
}

/// One agent process of the crash test, restartable at the same addresses and data.
struct Member {
    bind: String,
    http: String,
    dir: tempfile::TempDir,
    proc: Option<AgentProc>,
}

impl Member {
    fn start(&mut self, seed: Option<&str>) {
        let dir = self.dir.path().to_str().expect("utf-8").to_string();
        self.proc = Some(AgentProc::start_env(
            seed,
            &self.bind,
            &self.http,
            &["--data-dir", &dir],
            &[],
        ));
    }

    fn url(&self) -> String {
        format!("http://{}", self.http)
    }
}

#[test]
fn watchers_on_five_agents_follow_1000_changes_through_two_owner_crashes() {
    let mut members: Vec<Member> = (0..5)
        .map(|_| Member {
            bind: free_addr(),
            http: free_addr(),
            dir: tempfile::tempdir().expect("tmp"),
            proc: None,
        })
        .collect();
    members[0].start(None);
    let seed = members[0].bind.clone();
    for m in members.iter_mut().skip(1) {
        m.start(Some(&seed));
    }
    let urls: Vec<String> = members.iter().map(Member::url).collect();
    let service = "watched";
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        for url in &urls {
            eventually("a ring of five", SETTLE, async || {
                let (_, v) = call("GET", &format!("{url}/v1/ring/nodes"), None).await;
                let n = v.as_array().map_or(0, Vec::len);
                (n == 5).then_some(()).ok_or(format!("{n} nodes"))
            })
            .await;
        }
    });
    let owner = {
        let agents: Vec<AgentProc> = members.iter_mut().filter_map(|m| m.proc.take()).collect();
        let order = ring_order(&agents, service);
        for (m, p) in members.iter_mut().zip(agents) {
            m.proc = Some(p);
        }
        order[0]
    };
    // A watcher per agent, each following its agent and moving to the next when it dies.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchers: Vec<_> = (0..5)
        .map(|i| {
            let urls = urls.clone();
            let stop = stop.clone();
            rt.spawn(async move { watch_until_stopped(urls, i, service, stop).await })
        })
        .collect();
    // 1,000 random changes over 40 instance ids, through random agents, while the owner is
    // killed and restarted twice.
    let mut rng = rand::rngs::StdRng::seed_from_u64(1000);
    for round in 0..1000u32 {
        if round == 300 || round == 650 {
            let m = &mut members[owner];
            if let Some(mut p) = m.proc.take() {
                p.kill9();
            }
            let seed = members[(owner + 1) % 5].bind.clone();
            members[owner].start(Some(&seed));
        }
        let url = &urls[rng.gen_range(0..5)];
        let id = format!("i{}", rng.gen_range(0..40));
        let path = format!("{url}/v1/services/{service}/instances/{id}");
        let (method, body) = match rng.gen_range(0..4) {
            0 => ("DELETE", None),
            1 => (
                "PUT",
                Some(json!({"address": "10.0.0.9", "port": rng.gen_range(1..60000)})),
            ),
            2 => (
                "PUT",
                Some(json!({"address": "10.0.0.9", "port": 1000 + round})),
            ),
            _ => ("PUT", Some(json!({"address": "10.0.0.8", "port": 7}))),
        };
        rt.block_on(async {
            // Retried while ownership settles after a crash; a DELETE of an absent
            // instance answers 404, which is its answer.
            eventually("a change acknowledged", SETTLE, async || {
                let (st, b) = call(method, &path, body.clone()).await;
                (st == 200 || (method == "DELETE" && st == 404))
                    .then_some(())
                    .ok_or(format!("{st} {b}"))
            })
            .await;
        });
    }
    // Every watcher's state, built from its events alone, reaches what discover says.
    rt.block_on(async {
        let truth_url = urls[(owner + 2) % 5].clone();
        eventually(
            "every watcher equals a fresh discover",
            SETTLE,
            async || {
                let (truth, index) = discovered(&truth_url, service).await?;
                for i in 0..watchers.len() {
                    let got = snapshot_of(i);
                    if got.0 != truth {
                        return Err(format!(
                            "watcher {i} at index {} holds {} instances, discover ({index}) {}",
                            got.1,
                            got.0.len(),
                            truth.len()
                        ));
                    }
                }
                Ok(())
            },
        )
        .await;
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in watchers {
        let model = rt
            .block_on(w)
            .expect("watcher task")
            .expect("a watcher's promise broken");
        println!(
            "watcher: index {}, {} changes, {} resets",
            model.index, model.changes, model.resets
        );
    }
}

/// The last state each watcher published (for the check above), by watcher number.
static STATES: std::sync::Mutex<Vec<(View, u64)>> = std::sync::Mutex::new(Vec::new());

fn publish(i: usize, m: &Model) {
    let mut s = STATES.lock().expect("states");
    while s.len() <= i {
        s.push((BTreeMap::new(), 0));
    }
    s[i] = (m.view(), m.index);
}

fn snapshot_of(i: usize) -> (View, u64) {
    STATES
        .lock()
        .expect("states")
        .get(i)
        .cloned()
        .unwrap_or_default()
}

/// Follow `service` through agent `first` (then the others in turn when it goes away),
/// resuming with the last index seen, until `stop`. Fails on an index that goes back.
async fn watch_until_stopped(
    urls: Vec<String>,
    first: usize,
    service: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<Model, String> {
    let mut model = Model::default();
    let mut at = first;
    let mut last: Option<u64> = None;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let mut stream = match Stream::open(&urls[at], service, last).await {
            Ok(s) => s,
            Err(_) => {
                at = (at + 1) % urls.len();
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        while let Some(e) = stream.next(Duration::from_secs(8)).await {
            model.apply(&e)?;
            last = Some(model.index);
            publish(first, &model);
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                return Ok(model);
            }
        }
        // Ended or silent past two bookmarks: this agent is gone; the next one.
        at = (at + 1) % urls.len();
    }
    Ok(model)
}
