//! The real `chordctl` binary against a tiny fake agent: exit codes, output, the requests it
//! sends, configuration precedence, and the generated completions and man page.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use serde_json::{json, Value};

use crate::support::procs::{self, AgentProc};
use crate::support::run::Run;

const BIN: &str = env!("CARGO_BIN_EXE_chordctl");

/// `chordctl` with a clean environment: no `CHORDCTL_*` or `NO_COLOR` from whoever runs the
/// tests.
fn chordctl(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CHORDCTL_") {
            cmd.env_remove(&key);
        }
    }
    cmd.env_remove("NO_COLOR").env_remove("RUST_LOG");
    cmd
}

fn run(args: &[&str]) -> Run {
    Run::of(chordctl(args))
}

/// `chordctl --agent AGENT svc register payments --address 10.0.0.7 --port 8080`.
fn register_payments(agent: &str) -> Run {
    run(&[
        "--agent",
        agent,
        "svc",
        "register",
        "payments",
        "--address",
        "10.0.0.7",
        "--port",
        "8080",
    ])
}

// ---------------------------------------------------------------------------------------------
// A fake agent: canned HTTP answers from a std TcpListener in a thread.

/// One request the fake agent received.
#[derive(Debug, Clone)]
struct Request {
    method: String,
    /// Path and query exactly as sent (still percent-encoded).
    target: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Request {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("body of {self:?}: {e}"))
    }
}

type Route = dyn Fn(&Request) -> (u16, String) + Send + Sync;

struct FakeAgent {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeAgent {
    /// Answers every request with `route(request)`: (status, body).
    fn start(route: impl Fn(&Request) -> (u16, String) + Send + Sync + 'static) -> FakeAgent {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("local_addr: {e}"));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let route: Arc<Route> = Arc::new(route);
        let thread = {
            let (requests, stop) = (requests.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        serve(stream, &*route, &requests);
                    }
                }
            })
        };
        FakeAgent {
            addr,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    /// Always `status` with `body`.
    fn answering(status: u16, body: Value) -> FakeAgent {
        let body = body.to_string();
        FakeAgent::start(move |_| (status, body.clone()))
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }

    fn only_request(&self) -> Request {
        let requests = self.requests();
        assert_eq!(requests.len(), 1, "{requests:#?}");
        requests[0].clone()
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(stream: TcpStream, route: &Route, log: &Mutex<Vec<Request>>) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    if reader.read_line(&mut head).unwrap_or(0) == 0 {
        return; // the wake-up connection of Drop
    }
    let mut parts = head.split_whitespace();
    let (method, target) = (
        parts.next().unwrap_or_default().to_string(),
        parts.next().unwrap_or_default().to_string(),
    );
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let request = Request {
        method,
        target,
        headers,
        body,
    };
    let (status, body) = route(&request);
    if let Ok(mut log) = log.lock() {
        log.push(request);
    }
    let answer = format!(
        "HTTP/1.1 {status} Canned\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = writer.write_all(answer.as_bytes());
}

fn error_body(code: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": message}})
}

fn three_nodes() -> Value {
    let (a, b, c) = (
        "2000000000000000000000000000000000000000",
        "6000000000000000000000000000000000000000",
        "e000000000000000000000000000000000000000",
    );
    let node = |id: &str, n: u8, pred: &str, succ: &str| {
        json!({"id": id, "addr": format!("127.0.0.{n}:7400"), "http": format!("127.0.0.{n}:7500"),
               "predecessor": pred, "successor": succ})
    };
    json!([node(a, 1, c, b), node(b, 2, a, c), node(c, 3, b, a)])
}

fn instance() -> Value {
    json!({
        "service": "payments", "id": "10.0.0.7:8080", "address": "10.0.0.7", "port": 8080,
        "tags": ["v2"], "metadata": {"zone": "a"}, "weight": 1, "ttl_secs": 30,
        "registered_at": "2026-11-25T14:00:00Z",
        "status": {"state": "passing", "load": 0.25, "success_rate": 0.99, "latency_ms": 12.5,
                   "frequency": 30.0, "note": "", "updated_at": "2026-11-25T14:00:05Z"}
    })
}

// ---------------------------------------------------------------------------------------------
// Usage.

#[test]
fn usage_errors_exit_2() {
    // No command at all: clap prints the help to stderr.
    run(&[]).code(2).stderr_has("Usage:");
    let cases: &[&[&str]] = &[
        &["frobnicate"],
        &["agent", "create", "--bind", "nonsense"],
        &["agent", "create", "--http", "127.0.0.1:99999"],
        &["agent", "join", "no-port"],
        &["agent", "create", "--replicas", "0"],
        &[
            "svc",
            "register",
            "payments",
            "--address",
            "10.0.0.7",
            "--port",
            "70000",
        ],
        &[
            "svc",
            "register",
            "payments",
            "--address",
            "10.0.0.7",
            "--port",
            "8080",
            "--ttl",
            "5x",
        ],
        &[
            "svc",
            "register",
            "payments",
            "--address",
            "10.0.0.7",
            "--port",
            "8080",
            "--meta",
            "k",
        ],
        &["svc", "discover", "payments", "--pick", "fastest"],
        &["svc", "watch", "payments", "--count", "0"],
        &["--agent", "127.0.0.1:1,", "svc", "list"],
        &["status", "report", "payments", "i1", "--state", "fine"],
        &[
            "status",
            "report",
            "payments",
            "i1",
            "--state",
            "passing",
            "--success-rate",
            "2",
        ],
        &["-o", "yaml", "svc", "list"],
        &["--agent", "ftp://127.0.0.1:1", "svc", "list"],
    ];
    for args in cases {
        run(args).code(2).stderr_has("error:");
    }
    run(&["agent", "create", "--bind", "nonsense"]).stderr_has("HOST:PORT");
    // Environment values are checked like flags.
    let mut cmd = chordctl(&["agent", "create"]);
    cmd.env("CHORDCTL_BIND", "nonsense");
    Run::of(cmd).code(2).stderr_has("nonsense");
}

#[test]
fn help_and_version_exit_0() {
    run(&["--help"]).code(0).stdout_has("Usage: chordctl");
    run(&["svc", "register", "--help"])
        .code(0)
        .stdout_has("--ttl");
    run(&["--version"])
        .code(0)
        .stdout_has(env!("CARGO_PKG_VERSION"));
}

#[test]
fn config_file_keys_are_checked() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, "bind = \"127.0.0.1:0\"\nstabilise_ms = 100\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let file = path.to_string_lossy();
    run(&["agent", "create", "--config", &file])
        .code(2)
        .stderr_has("stabilise_ms")
        .stderr_has("line 2");
}

/// flags > environment > file > defaults, through the real binary (`--print-config`
/// prints the merged settings instead of starting an agent).
#[test]
fn agent_settings_precedence() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        "bind = \"127.0.0.1:1001\"\nhttp = \"127.0.0.1:2001\"\nreplicas = 2\n\
         api_token = \"from-file\"\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = chordctl(&["agent", "join", "10.0.0.1:7400", "--bind", "127.0.0.1:1003"]);
    cmd.arg("--print-config")
        .env("CHORDCTL_CONFIG", &path)
        .env("CHORDCTL_BIND", "127.0.0.1:1002")
        .env("CHORDCTL_HTTP", "127.0.0.1:2002")
        .env("CHORDCTL_SUCCESSORS", "5");
    let run = Run::of(cmd);
    run.code(0)
        .stdout_has("start = \"join 10.0.0.1:7400\"")
        .stdout_has("bind = \"127.0.0.1:1003\"") // flag
        .stdout_has("http = \"127.0.0.1:2002\"") // environment
        .stdout_has("successors = 5") // environment
        .stdout_has("replicas = 2") // file
        .stdout_has("stabilize_ms = 500") // default
        .stdout_has("api_token = (set)");
    assert!(!run.stdout().contains("from-file"), "{}", run.describe());
}

// ---------------------------------------------------------------------------------------------
// Talking to an agent.

#[test]
fn unreachable_agent_exits_3_naming_it() {
    let (_refusing, addr) = crate::support::testing::refused_addr();
    let url = format!("http://{addr}");
    run(&["--agent", &url, "ring", "show"])
        .code(3)
        .stderr_has(&url);
    // A bare HOST:PORT is taken as http://HOST:PORT.
    let bare = url.trim_start_matches("http://");
    run(&["--agent", bare, "svc", "list"])
        .code(3)
        .stderr_has(&url);
}

/// `--agent` repeated, comma-separated, or in `CHORDCTL_AGENT`: a dead agent first is passed
/// over for a live one (a real agent process); exit 3 only when none answers, naming each.
#[test]
fn several_agents_are_tried_in_order() {
    let agent = AgentProc::start(None, &[]);
    let live = agent.url();
    let dead = format!("http://{}", procs::free_addr());
    let also_dead = format!("http://{}", procs::free_addr());

    let node = run(&[
        "--agent", &dead, "--agent", &live, "-o", "json", "ring", "node",
    ])
    .ok_json();
    assert_eq!(node["id"], agent.id.as_str(), "{node}");
    // A write goes through the live agent, once.
    register_payments(&format!("{dead},{live}"))
        .code(0)
        .stdout_has("registered payments instance 10.0.0.7:8080");
    let mut cmd = chordctl(&["-o", "json", "svc", "discover", "payments"]);
    cmd.env("CHORDCTL_AGENT", format!("{dead}, {live}"));
    let found = Run::of(cmd).ok_json();
    assert_eq!(found["instances"][0]["id"], "10.0.0.7:8080", "{found}");

    // Every agent dead: exit 3, each one named.
    let mut cmd = chordctl(&["svc", "list"]);
    cmd.env("CHORDCTL_AGENT", format!("{dead},{also_dead}"));
    let failed = Run::of(cmd);
    failed.code(3).stderr_has(&dead).stderr_has(&also_dead);
    assert_eq!(failed.stderr().lines().count(), 1, "{}", failed.describe());
    run(&[
        "--agent", &dead, "--agent", &also_dead, "svc", "watch", "payments",
    ])
    .code(3)
    .stderr_has(&dead)
    .stderr_has(&also_dead);
}

/// An agent that accepts connections but does not answer (a real agent process stopped with
/// SIGSTOP: the kernel still completes the handshake) is passed over for the next agent by a
/// read once its answer has not begun within the read deadline; a write is not sent to
/// another agent (the stopped one may still apply it when it wakes) and says so.
#[test]
fn a_read_passes_over_an_agent_that_does_not_answer_and_a_write_does_not() {
    let stopped = AgentProc::start(None, &[]);
    let live = AgentProc::start(None, &[]);
    let (hung, up) = (stopped.url(), live.url());
    register_payments(&up).code(0);
    stopped.signal(libc::SIGSTOP);
    let found = run(&[
        "--agent", &hung, "--agent", &up, "-o", "json", "svc", "discover", "payments",
    ])
    .ok_json();
    assert_eq!(found["instances"][0]["id"], "10.0.0.7:8080", "{found}");
    // Comma-separated, and for the other reads too.
    let node = run(&[
        "--agent",
        &format!("{hung},{up}"),
        "-o",
        "json",
        "ring",
        "node",
    ])
    .ok_json();
    assert_eq!(node["id"], live.id.as_str(), "{node}");
    run(&[
        "--agent",
        &hung,
        "--agent",
        &up,
        "svc",
        "register",
        "orders",
        "--address",
        "10.0.0.8",
        "--port",
        "1",
    ])
    .code(1)
    .stderr_has(&hung)
    .stderr_has("may or may not have taken effect");
    run(&["--agent", &up, "svc", "discover", "orders"]).code(4);
    stopped.signal(libc::SIGCONT);
}

/// `ring leave` is about the agent named first: with it down, another given for reaching the
/// ring must not leave in its place (a real agent process, which must keep running).
#[test]
fn ring_leave_asks_the_first_agent_only() {
    let mut agent = AgentProc::start(None, &[]);
    let live = agent.url();
    let dead = format!("http://{}", procs::free_addr());
    let r = run(&["--agent", &dead, "--agent", &live, "ring", "leave"]);
    r.code(3).stderr_has(&dead).stderr_has("first --agent only");
    assert!(
        matches!(agent.child.try_wait(), Ok(None)),
        "the second agent left in the first's place"
    );
    run(&["--agent", &live, "-o", "json", "ring", "node"]).ok_json();
    // Named first, it leaves.
    run(&["--agent", &live, "--agent", &dead, "ring", "leave"])
        .code(0)
        .stdout_has("is leaving the ring");
    let status = procs::poll(
        std::time::Duration::from_secs(30),
        "the agent exits after ring leave",
        || match agent.child.try_wait() {
            Ok(Some(status)) => Ok(status),
            Ok(None) => Err("still running".into()),
            Err(e) => Err(e.to_string()),
        },
    );
    assert_eq!(status.code(), Some(0));
}

/// A real agent: a freshly registered instance has reported no measures, so the tables show
/// "-" for its success rate and latency (not 0.0%, which would say it failed every call);
/// once it reports, they show what it reported.
#[test]
fn a_new_instance_shows_no_measures_until_it_reports() {
    let agent = AgentProc::start(None, &[]);
    let url = agent.url();
    register_payments(&url).code(0);
    // INSTANCE  STATE  SUCC  LAT  LOAD  WT  TAGS: the first row's cells.
    let row = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["--agent", url.as_str()];
        all.extend_from_slice(args);
        let r = run(&all);
        r.code(0);
        let line = r.stdout().lines().nth(1).map(str::to_string);
        let line = line.unwrap_or_else(|| panic!("no row: {}", r.describe()));
        assert!(
            r.stdout().starts_with("INSTANCE"),
            "a table: {}",
            r.describe()
        );
        line.split_whitespace().map(str::to_string).collect()
    };
    let discover = ["svc", "discover", "payments"];
    let query = ["status", "query", "payments", "10.0.0.7:8080"];
    for args in [&discover[..], &query[..]] {
        assert_eq!(
            row(args),
            ["10.0.0.7:8080", "passing", "-", "-", "0.00", "1", "-"],
            "{args:?}"
        );
    }
    // The JSON keeps the documented INSTANCE, zeros included.
    let json = run(&["--agent", &url, "-o", "json", "svc", "discover", "payments"]).ok_json();
    assert_eq!(
        json["instances"][0]["status"]["success_rate"], 0.0,
        "{json}"
    );
    assert_eq!(json["instances"][0]["status"]["latency_ms"], 0.0, "{json}");

    run(&[
        "--agent",
        &url,
        "status",
        "report",
        "payments",
        "10.0.0.7:8080",
        "--state",
        "warning",
        "--success-rate",
        "0.95",
        "--latency-ms",
        "12",
    ])
    .code(0);
    for args in [&discover[..], &query[..]] {
        assert_eq!(
            row(args),
            [
                "10.0.0.7:8080",
                "warning",
                "95.0%",
                "12.0ms",
                "0.00",
                "1",
                "-"
            ],
            "{args:?}"
        );
    }
}

/// An agent that answers with an error is the answer: the next one is not asked.
#[test]
fn an_error_answer_is_not_retried_elsewhere() {
    let busy = FakeAgent::answering(503, error_body("unavailable", "store unavailable, retry"));
    let other = FakeAgent::answering(200, json!([]));
    run(&[
        "--agent",
        &busy.url(),
        "--agent",
        &other.url(),
        "svc",
        "list",
    ])
    .code(1)
    .stderr_has("store unavailable, retry");
    assert!(other.requests().is_empty(), "{:#?}", other.requests());
    busy.only_request();
}

#[test]
fn not_found_exits_4_with_the_agents_message() {
    let agent = FakeAgent::answering(404, error_body("not_found", "no service named payments"));
    let run = run(&["--agent", &agent.url(), "svc", "discover", "payments"]);
    run.code(4).stderr_has("error: no service named payments");
    assert_eq!(run.stderr().lines().count(), 1, "{}", run.describe());
}

#[test]
fn agent_errors_exit_1_with_the_agents_message() {
    let agent = FakeAgent::answering(503, error_body("unavailable", "store unavailable, retry"));
    run(&["--agent", &agent.url(), "svc", "list"])
        .code(1)
        .stderr_has("error: store unavailable, retry");
    let agent = FakeAgent::answering(401, error_body("unauthorized", "missing token"));
    run(&["--agent", &agent.url(), "ring", "show"])
        .code(1)
        .stderr_has("missing token")
        .stderr_has("--token");
}

#[test]
fn ring_show_as_table_and_json() {
    let agent = FakeAgent::answering(200, three_nodes());
    let table = run(&["--agent", &agent.url(), "ring", "show"]);
    table
        .code(0)
        .stdout_has("NODE")
        .stdout_has("20000000")
        .stdout_has("127.0.0.2:7400")
        .stdout_has("127.0.0.3:7500")
        .stdout_has("25.0%") // (e0.., 20..] wraps around: 1/8 + 1/8; (20.., 60..] too
        .stdout_has("50.0%") // (60.., e0..]
        .stdout_has("3 nodes");
    assert!(
        !table.stdout().contains("still settling"),
        "{}",
        table.describe()
    );
    assert!(
        table.stdout().lines().all(|l| l.len() <= 80),
        "{}",
        table.describe()
    );
    assert_eq!(agent.only_request().target, "/v1/ring/nodes");

    let json = run(&["--agent", &agent.url(), "ring", "show", "-o", "json"]);
    assert_eq!(json.code(0).json(), three_nodes());
}

#[test]
fn broken_pipe_is_not_an_error() {
    // The fake agent answers only once the reader of stdout is gone, so the write fails.
    let (open_gate, gate) = mpsc::channel::<()>();
    let gate = Mutex::new(gate);
    let body = three_nodes().to_string();
    let agent = FakeAgent::start(move |_| {
        if let Ok(gate) = gate.lock() {
            let _ = gate.recv();
        }
        (200, body.clone())
    });
    let mut cmd = chordctl(&["--agent", &agent.url(), "ring", "show"]);
    let (line, mut child) = procs::spawn_piped(&mut cmd);
    drop(child.stdout.take());
    let _ = open_gate.send(());
    let output = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("{line}: {e}"));
    let run = Run { line, output };
    run.code(0);
    assert_eq!(run.stderr(), "", "{}", run.describe());
    assert_eq!(agent.requests().len(), 1);
}

#[test]
fn register_sends_an_encoded_path_the_body_and_the_token() {
    let agent = FakeAgent::answering(200, instance());
    let run = run(&[
        "--agent",
        &agent.url(),
        "--token",
        "s3cret-t0ken",
        "svc",
        "register",
        "payments",
        "--address",
        "10.0.0.7",
        "--port",
        "8080",
        "--tag",
        "v2",
        "--tag",
        "eu",
        "--meta",
        "zone=a",
        "--meta",
        "rack=r=1",
        "--weight",
        "5",
        "--ttl",
        "5m",
    ]);
    run.code(0)
        .stdout_has("registered payments instance 10.0.0.7:8080");
    assert!(
        !run.stdout().contains("s3cret") && !run.stderr().contains("s3cret"),
        "{}",
        run.describe()
    );
    let request = agent.only_request();
    assert_eq!(request.method, "PUT");
    assert_eq!(
        request.target,
        "/v1/services/payments/instances/10.0.0.7%3A8080"
    );
    assert_eq!(
        request.headers.get("authorization").map(String::as_str),
        Some("Bearer s3cret-t0ken")
    );
    assert_eq!(
        request.json(),
        json!({"address": "10.0.0.7", "port": 8080, "tags": ["v2", "eu"],
               "metadata": {"zone": "a", "rack": "r=1"}, "weight": 5, "ttl_secs": 300})
    );

    // JSON mode prints the agent's answer.
    let json = Run::of({
        let mut cmd = chordctl(&["svc", "register", "payments", "--address", "10.0.0.7"]);
        cmd.args(["--port", "8080", "--id", "a/b c"])
            .env("CHORDCTL_AGENT", agent.url())
            .env("CHORDCTL_OUTPUT", "json");
        cmd
    });
    assert_eq!(json.code(0).json(), instance());
    let last = agent.requests().pop().map(|r| r.target).unwrap_or_default();
    assert_eq!(last, "/v1/services/payments/instances/a%2Fb%20c");
}

#[test]
fn discover_sends_filters_and_shows_instances() {
    let agent = FakeAgent::answering(
        200,
        json!({"service": "payments", "instances": [instance()]}),
    );
    let run = run(&[
        "--agent",
        &agent.url(),
        "svc",
        "discover",
        "payments",
        "--healthy",
        "--tag",
        "v2",
    ]);
    run.code(0)
        .stdout_has("10.0.0.7:8080")
        .stdout_has("passing")
        .stdout_has("99.0%")
        .stdout_has("12.5ms")
        .stdout_has("1 instance of payments");
    assert!(
        !run.stdout().contains('\u{1b}'),
        "no colors off a terminal\n{}",
        run.describe()
    );
    assert_eq!(
        agent.only_request().target,
        "/v1/services/payments?healthy=true&tag=v2"
    );

    let picked = FakeAgent::answering(200, instance());
    let run = self::run(&[
        "--agent",
        &picked.url(),
        "svc",
        "discover",
        "payments",
        "--pick",
        "least-load",
    ]);
    run.code(0).stdout_has("10.0.0.7:8080");
    assert_eq!(
        picked.only_request().target,
        "/v1/services/payments?pick=least-load"
    );
}

#[test]
fn status_report_sends_only_the_given_fields() {
    let agent = FakeAgent::answering(200, instance());
    run(&[
        "--agent",
        &agent.url(),
        "status",
        "report",
        "payments",
        "10.0.0.7:8080",
        "--state",
        "warning",
        "--latency-ms",
        "40",
    ])
    .code(0)
    .stdout_has("warning");
    let request = agent.only_request();
    assert_eq!(request.method, "PUT");
    assert_eq!(
        request.target,
        "/v1/services/payments/instances/10.0.0.7%3A8080/status"
    );
    assert_eq!(
        request.json(),
        json!({"state": "warning", "latency_ms": 40.0})
    );
}

// ---------------------------------------------------------------------------------------------
// Generated files.

/// completions/ and man/ hold what the current definitions generate. Regenerate with
/// `UPDATE_GENERATED=1 cargo test --test main generated_files_are_current`.
#[test]
fn generated_files_are_current() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let update = std::env::var_os("UPDATE_GENERATED").is_some_and(|v| v == "1");
    let files: &[(&str, &[&str])] = &[
        ("completions/chordctl.bash", &["completions", "bash"]),
        ("completions/_chordctl", &["completions", "zsh"]),
        ("completions/chordctl.fish", &["completions", "fish"]),
        ("man/chordctl.1", &["man"]),
    ];
    let mut stale = Vec::new();
    for (file, args) in files {
        let generated = run(args).code(0).output.stdout.clone();
        let path = root.join(file);
        if update {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{e}"));
            }
            std::fs::write(&path, &generated).unwrap_or_else(|e| panic!("{file}: {e}"));
        } else if std::fs::read(&path).ok().as_deref() != Some(generated.as_slice()) {
            stale.push(*file);
        }
    }
    assert!(
        stale.is_empty(),
        "{stale:?} differ from what the CLI definitions generate; regenerate them with\n  \
         UPDATE_GENERATED=1 cargo test --test main generated_files_are_current\nand commit them"
    );
}

#[test]
fn ring_node_and_locate_tables() {
    let (a, b) = (
        "2a3b4c5d00000000000000000000000000000000",
        "6f00aa1100000000000000000000000000000000",
    );
    let node = |id: &str, n: u8| json!({"id": id, "addr": format!("127.0.0.{n}:7400"), "http": format!("127.0.0.{n}:7500")});
    let view = json!({
        "id": a, "addr": "127.0.0.1:7400", "http": "127.0.0.1:7500", "predecessor": node(b, 2),
        "successors": [node(b, 2), node(a, 1)],
        "fingers": [{"index": 158, "start": "aa3b4c5d00000000000000000000000000000000",
                     "node": node(b, 2)}]
    });
    let agent = FakeAgent::answering(200, view);
    run(&["--agent", &agent.url(), "ring", "node"])
        .code(0)
        .stdout_has("predecessor  6f00aa11  127.0.0.2:7400")
        .stdout_has("successor 2  2a3b4c5d")
        .stdout_has("aa3b4c5d");

    let found = json!({"key": "a b/c", "id": "5f3c999999999999999999999999999999999999",
                       "owner": node(b, 2), "replicas": [node(a, 1)], "hops": 2});
    let agent = FakeAgent::answering(200, found.clone());
    run(&["--agent", &agent.url(), "locate", "a b/c"])
        .code(0)
        .stdout_has("5f3c999999999999999999999999999999999999")
        .stdout_has("owner      6f00aa11")
        .stdout_has("replica 1  2a3b4c5d");
    assert_eq!(agent.only_request().target, "/v1/locate/a%20b%2Fc");
    assert_eq!(
        run(&["--agent", &agent.url(), "-o", "json", "locate", "x"])
            .code(0)
            .json(),
        found
    );
}

#[test]
fn list_query_deregister_and_leave() {
    let agent =
        FakeAgent::start(
            |request| match (request.method.as_str(), request.target.as_str()) {
                ("GET", "/v1/services") => (
                    200,
                    json!([{"service": "payments", "instances": 3, "passing": 1, "warning": 0,
                            "critical": 2, "maintenance": 0}])
                    .to_string(),
                ),
                ("GET", "/v1/services/payments") => (
                    200,
                    json!({"service": "payments", "instances": []}).to_string(),
                ),
                ("GET", "/v1/services/payments/instances/i%3A1") => (200, instance().to_string()),
                ("DELETE", "/v1/services/payments/instances/i%3A1") => (204, String::new()),
                ("POST", "/v1/agent/leave") => (202, json!({"leaving": true}).to_string()),
                _ => (404, error_body("not_found", "no such route").to_string()),
            },
        );
    let url = agent.url();
    let list = run(&["--agent", &url, "svc", "list"]);
    list.code(0).stdout_has("1 service");
    let rows: Vec<Vec<String>> = list
        .stdout()
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect();
    assert_eq!(
        rows[..2],
        [
            [
                "SERVICE",
                "INSTANCES",
                "PASSING",
                "WARNING",
                "CRITICAL",
                "MAINTENANCE"
            ],
            ["payments", "3", "1", "0", "2", "0"]
        ],
        "{}",
        list.describe()
    );
    run(&["--agent", &url, "status", "query", "payments"])
        .code(0)
        .stdout_has("no instances of payments");
    run(&["--agent", &url, "status", "query", "payments", "i:1"])
        .code(0)
        .stdout_has("10.0.0.7:8080");
    run(&["--agent", &url, "svc", "deregister", "payments", "i:1"])
        .code(0)
        .stdout_has("deregistered payments instance i:1");
    run(&["--agent", &url, "ring", "leave"])
        .code(0)
        .stdout_has("leaving the ring");
    assert_eq!(
        run(&["--agent", &url, "-o", "json", "ring", "leave"])
            .code(0)
            .json(),
        json!({"leaving": true})
    );
    run(&["--agent", &url, "status", "query", "payments", "i:2"])
        .code(4)
        .stderr_has("no such route");
}
