//! Real `chordctl agent` processes for end-to-end tests: started on port 0, their addresses
//! read from stdout, killed with SIGKILL or stopped with SIGTERM, always reaped on Drop.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_chordctl")
}

/// One agent process.
pub struct AgentProc {
    pub child: Child,
    /// Ring address.
    pub ring: String,
    /// HTTP address.
    pub http: String,
    /// DNS address, when started with `--dns`.
    pub dns: Option<String>,
    /// Hex identifier.
    pub id: String,
    /// The data directory made for it when the caller gave none (removed on drop).
    _tmp: Option<tempfile::TempDir>,
}

impl AgentProc {
    /// Start `chordctl agent create|join SEED` on ports 0 with extra args; waits for its
    /// address line.
    pub fn start(seed: Option<&str>, extra: &[&str]) -> AgentProc {
        AgentProc::start_at(seed, "127.0.0.1:0", "127.0.0.1:0", extra)
    }

    /// Start on given ring and HTTP addresses (a restart keeps its ring address, hence its id).
    pub fn start_at(seed: Option<&str>, bind: &str, http: &str, extra: &[&str]) -> AgentProc {
        AgentProc::start_env(seed, bind, http, extra, &[])
    }

    /// [`AgentProc::start_at`] with extra environment variables (a test clock offset, say).
    pub fn start_env(
        seed: Option<&str>,
        bind: &str,
        http: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> AgentProc {
        let mut cmd = agent_command(seed, bind, http, extra);
        cmd.envs(env.iter().copied());
        // Never the user's data directory: a temporary one unless the caller chose.
        let tmp = if extra.iter().any(|a| *a == "--data-dir" || *a == "--redis") {
            None
        } else {
            let t = tempfile::tempdir().expect("temporary data directory");
            cmd.arg("--data-dir").arg(t.path());
            Some(t)
        };
        let mut me = AgentProc::spawn(cmd);
        me._tmp = tmp;
        me
    }

    /// Spawn a prepared command (the agent, or a shell that execs it) and read its address
    /// line from stdout.
    pub fn spawn(mut cmd: Command) -> AgentProc {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        let tmp = None;
        let mut child = cmd.spawn().expect("spawn chordctl agent");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        // Generous: a joiner prints its line only after taking its range.
        let line = match rx.recv_timeout(Duration::from_secs(90)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("agent printed no address line within 90s");
            }
        };
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {line:?}"))
                .to_string()
        };
        let ring = field("ring=");
        let http = field("http=");
        let dns = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("dns="))
            .map(String::from);
        let id = line
            .split_whitespace()
            .nth(2)
            .expect("id in the address line")
            .to_string();
        AgentProc {
            child,
            ring,
            http,
            dns,
            id,
            _tmp: tmp,
        }
    }

    /// The agent URL for `--agent`.
    pub fn url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// SIGKILL: a crash.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Send `sig` (SIGSTOP, SIGCONT, ...) to the agent process.
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) only sends a signal to our own child process; no memory is involved.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// SIGTERM, then wait (bounded) for the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The command `chordctl agent create|join SEED` on the given addresses with fast ring timers
/// and extra args, stdout piped and stderr inherited, without the caller's store settings
/// (and without a data directory: `AgentProc::start_at` adds one).
pub fn agent_command(seed: Option<&str>, bind: &str, http: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.arg("agent");
    match seed {
        None => cmd.arg("create"),
        Some(s) => cmd.args(["join", s]),
    };
    cmd.args([
        "--bind",
        bind,
        "--http",
        http,
        "--stabilize-ms",
        "100",
        "--rpc-timeout-ms",
        "500",
    ])
    .args(extra)
    .env("RUST_LOG", "warn")
    .env_remove("CHORDCTL_DATA_DIR")
    .env_remove("CHORDCTL_REDIS")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    cmd
}

/// A child process killed and reaped however the test ends.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Reaped {
    /// An instance's heartbeat loop, a process of its own: `status report SERVICE ID --state
    /// passing` through `url` every 0.2 s. It runs in its own process group, so that
    /// [`Reaped::kill_group`] also takes a report in flight (a `chordctl` child of the loop)
    /// rather than leaving it to land after the kill.
    pub fn reporter(url: &str, service: &str, id: &str) -> Reaped {
        use std::os::unix::process::CommandExt;
        let script = format!(
            "while true; do {} --agent {url} status report {service} {id} --state passing >/dev/null; sleep 0.2; done",
            bin()
        );
        Reaped(
            Command::new("sh")
                .args(["-c", &script])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("reporter"),
        )
    }

    /// SIGKILL the process's whole group, and reap it.
    pub fn kill_group(&mut self) {
        let group = i32::try_from(self.0.id()).expect("pid");
        // SAFETY: a plain kill(2) of our own child's process group.
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
        let _ = self.0.wait();
    }
}

/// Start `cmd` with no input and its output piped; returns the command line (for messages)
/// and the child.
pub fn spawn_piped(cmd: &mut Command) -> (String, Child) {
    let line = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {line}: {e}"));
    (line, child)
}

/// Run `cmd` to its end, as `Command::output` does, but kill it and fail the test once
/// `deadline` has passed: a command that should fail at once must not hang the suite when it
/// does not.
pub fn output_within(mut cmd: Command, deadline: Duration) -> Output {
    let (line, mut child) = spawn_piped(&mut cmd);
    let out = read_all(child.stdout.take());
    let err = read_all(child.stderr.take());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the command") {
            break status;
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let err = err.join().unwrap_or_default();
            panic!(
                "{line} still ran after {deadline:?}; stderr:\n{}",
                String::from_utf8_lossy(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Read `pipe` to its end on a thread of its own; the thread answers what it read.
fn read_all(pipe: Option<impl std::io::Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut bytes);
        }
        bytes
    })
}

/// Run the client: `chordctl --agent URL ARGS...`.
pub fn client(url: &str, args: &[&str]) -> Output {
    Command::new(bin())
        .arg("--agent")
        .arg(url)
        .args(args)
        .env_remove("CHORDCTL_AGENT")
        .env_remove("CHORDCTL_OUTPUT")
        .output()
        .expect("run chordctl")
}

/// Poll `f` until it returns Some, or panic with the last reason after `deadline`.
pub fn poll<T>(deadline: Duration, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if start.elapsed() > deadline => panic!("{what}: not within {deadline:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Indexes into `agents` in ring order starting at the owner of `key` (by SHA-1, computed here):
/// the owner, then its successors.
/// A temporary directory of its own for `cmd` (its `TMPDIR`), removed when the returned value
/// drops: what `agent dev` makes there goes even when the test kills it with SIGKILL. Hold
/// it for as long as the process runs.
pub fn private_tmp(cmd: &mut Command) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("temporary directory");
    cmd.env("TMPDIR", tmp.path());
    tmp
}

/// Three agents in one ring, the second of which takes `delay_ms` longer to store every
/// group of writes (the test-only `CHORDCTL_TEST_WRITE_DELAY_MS`: a slow disk).
pub fn three_with_a_slow_second(delay_ms: &str) -> Vec<AgentProc> {
    let fast: [&str; 0] = [];
    let first = AgentProc::start(None, &fast);
    let seed = first.ring.clone();
    let slow = AgentProc::start_env(
        Some(&seed),
        "127.0.0.1:0",
        "127.0.0.1:0",
        &fast,
        &[("CHORDCTL_TEST_WRITE_DELAY_MS", delay_ms)],
    );
    let third = AgentProc::start(Some(&seed), &fast);
    vec![first, slow, third]
}

/// Wait until the agent at every one of `urls` lists `n` ring members.
pub async fn ring_of(urls: &[String], n: usize) {
    for url in urls {
        crate::support::eventually(
            "the whole ring",
            std::time::Duration::from_secs(60),
            async || {
                let (_, v) =
                    crate::support::http::call("GET", &format!("{url}/v1/ring/nodes"), None).await;
                let got = v.as_array().map_or(0, Vec::len);
                (got == n).then_some(()).ok_or(format!("{got} nodes"))
            },
        )
        .await;
    }
}

pub fn ring_order(agents: &[AgentProc], key: &str) -> Vec<usize> {
    let ids: Vec<&AgentProc> = agents.iter().collect();
    ring_order_of(&ids, key)
}

/// [`ring_order`] of agents held by reference.
pub fn ring_order_of(agents: &[&AgentProc], key: &str) -> Vec<usize> {
    let ids: Vec<String> = agents.iter().map(|a| a.id.clone()).collect();
    ring_order_of_ids(&ids, key)
}

/// [`ring_order`] of nodes known by their identifiers (40 hex digits).
pub fn ring_order_of_ids(ids: &[String], key: &str) -> Vec<usize> {
    let mut ids: Vec<(String, usize)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.clone(), i))
        .collect();
    ids.sort();
    let kid = chordctl::ring::Id::of_key(key).to_hex();
    let first = ids.iter().position(|(id, _)| *id >= kid).unwrap_or(0);
    (0..ids.len())
        .map(|k| ids[(first + k) % ids.len()].1)
        .collect()
}

/// Every agent's copy of `service` (`None`: it holds nothing of it), read over ring RPC
/// (`ReadReplica`), in the order of `agents`.
pub async fn records_at(
    pool: &chordctl::rpc::Pool,
    agents: impl IntoIterator<Item = &AgentProc>,
    service: &str,
) -> Result<Vec<Option<chordctl::registry::Record>>, String> {
    use chordctl::registry::ops::{RegistryRequest, RegistryResponse};
    use chordctl::rpc::{Request, Response};
    let mut out = Vec::new();
    for a in agents {
        let req = Request::Registry(RegistryRequest::ReadReplica {
            service: service.to_string(),
        });
        match pool.call(&a.ring, req).await {
            Ok(Response::Registry(RegistryResponse::Record(rec))) => out.push(rec),
            other => return Err(format!("{}: {other:?}", a.ring)),
        }
    }
    Ok(out)
}

/// The entries `agent` stores under `keys` (those it has), over ring RPC.
pub async fn fetch_at(
    pool: &chordctl::rpc::Pool,
    agent: &AgentProc,
    keys: Vec<String>,
) -> Vec<chordctl::registry::ops::Entry> {
    use chordctl::registry::ops::{RegistryRequest, RegistryResponse};
    use chordctl::rpc::{Request, Response};
    match pool
        .call(
            &agent.ring,
            Request::Registry(RegistryRequest::Fetch { keys }),
        )
        .await
    {
        Ok(Response::Registry(RegistryResponse::Page { entries, .. })) => entries,
        other => panic!("fetch from {}: {other:?}", agent.ring),
    }
}

/// Give `agent` `entries` as a peer's copies (`Handoff`, merged newest version first), over
/// ring RPC.
pub async fn handoff_to(
    pool: &chordctl::rpc::Pool,
    agent: &AgentProc,
    entries: Vec<chordctl::registry::ops::Entry>,
) {
    use chordctl::registry::ops::{RegistryRequest, RegistryResponse};
    use chordctl::rpc::{Request, Response};
    match pool
        .call(
            &agent.ring,
            Request::Registry(RegistryRequest::Handoff { entries }),
        )
        .await
    {
        Ok(Response::Registry(RegistryResponse::Done)) => {}
        other => panic!("handoff to {}: {other:?}", agent.ring),
    }
}

/// A free loopback address for an agent that must come back on the same address (its
/// identity). Picked below the kernel's ephemeral range: a port handed out by bind(0) could be
/// taken, while the agent is down, by another test's outgoing connection.
pub fn free_addr() -> String {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|p| p.parse::<u16>().ok())
        })
        .unwrap_or(32768);
    let floor = 10_000u16.min(low.saturating_sub(1000));
    let span = u32::from(low.saturating_sub(floor)).max(1);
    let seed = std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
    // Never hand out the same port twice in this process (the listener is dropped at once).
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    for i in 0..1000u32 {
        let port = floor + (seed.wrapping_add(i.wrapping_mul(7919)) % span) as u16;
        if given.contains(&port) {
            continue;
        }
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            given.push(port);
            if let Ok(addr) = l.local_addr() {
                return addr.to_string();
            }
        }
    }
    panic!("no free port below the ephemeral range");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The deadline branch: a command that outlives it is killed and reaped, and the test
    /// fails at once with what the command wrote to stderr.
    #[test]
    fn output_within_kills_a_command_past_its_deadline_and_fails_with_its_stderr() {
        let mut cmd = Command::new("sh");
        // `exec`: the shell becomes the sleep, so the pid it prints is the one killed.
        cmd.args(["-c", "echo \"pid=$$\" >&2; exec sleep 60"]);
        let started = Instant::now();
        let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            output_within(cmd, Duration::from_millis(300))
        }))
        .expect_err("a command past its deadline must fail the test");
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(30),
            "it waited {took:?} for a 60 s command instead of killing it"
        );
        let message = failed.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(
            message.contains("still ran after 300ms"),
            "message: {message}"
        );
        let pid = message
            .split("pid=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("the command's stderr is in the message");
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} is still there after the deadline"
        );
    }

    #[test]
    fn output_within_returns_what_a_command_wrote_before_its_deadline() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
        let out = output_within(cmd, Duration::from_secs(30));
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
        assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    }
}
