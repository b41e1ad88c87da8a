//! A real `redis-server` for tests: started on a free port with AOF on in a temporary directory
//! (synced on every write unless a test asks for another `appendfsync`), stopped (killed) on
//! demand or on Drop, restartable on the same port and data.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::procs::free_addr;

/// How long a started server has to answer PING.
const START_DEADLINE: Duration = Duration::from_secs(10);
/// How many free ports to try before giving up (another process may take a port we picked).
const START_ATTEMPTS: usize = 5;

/// A `redis-server` child process owned by one test.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    appendfsync: &'static str,
}

impl RedisServer {
    /// Start a server with `appendfsync always`, or return `None` (after saying so on stderr)
    /// when `redis-server` is not installed. Under `CI=true` a missing `redis-server` is a
    /// failure, not a skip.
    pub fn start() -> Option<RedisServer> {
        RedisServer::start_with_appendfsync("always")
    }

    /// [`RedisServer::start`] with another AOF sync policy (`everysec`, `no`).
    pub fn start_with_appendfsync(appendfsync: &'static str) -> Option<RedisServer> {
        if !super::required_program("redis-server", "redis-server", "this Redis store test") {
            return None;
        }
        let dir = tempfile::tempdir().expect("temporary directory for redis-server");
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            match spawn(port, dir.path(), appendfsync) {
                Ok(child) => {
                    return Some(RedisServer {
                        child: Some(child),
                        port,
                        dir,
                        appendfsync,
                    })
                }
                Err(e) => failures.push(format!("port {port}: {e}")),
            }
        }
        panic!(
            "redis-server did not start after {START_ATTEMPTS} attempts:\n{}",
            failures.join("\n")
        );
    }

    /// The URL to connect to this server.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The TCP port this server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kill the server (SIGKILL, as in a crash) and wait for it to exit. Its AOF stays on disk.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freeze the server (SIGSTOP): it keeps its connections but answers nothing, like a hung
    /// or unreachable host.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Undo [`RedisServer::pause`] (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: libc::c_int) {
        let child = self.child.as_ref().expect("redis-server is running");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) only sends a signal to our own child process; no memory is involved.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            rc,
            0,
            "kill({pid}, {signal}): {}",
            std::io::Error::last_os_error()
        );
    }

    /// Start the server again on the same port and data directory (stopping it first if it
    /// runs), and wait until it answers.
    pub fn restart(&mut self) {
        self.stop();
        match spawn(self.port, self.dir.path(), self.appendfsync) {
            Ok(child) => self.child = Some(child),
            Err(e) => panic!("redis-server did not restart on port {}: {e}", self.port),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // SIGKILL ends a paused (SIGSTOPped) server too.
        self.stop();
    }
}

/// A free port below the kernel's ephemeral range ([`free_addr`]): a test that kills the
/// server and restarts it on the same port needs the port to stay free meanwhile, and a port
/// handed out by bind(0) could be taken by another test's listener or outgoing connection.
fn free_port() -> u16 {
    let addr = free_addr();
    addr.rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr}"))
}

/// Start `redis-server` on `port` with its data in `dir` and wait until this very process
/// answers (another server that happens to hold the port does not count).
fn spawn(port: u16, dir: &Path, appendfsync: &str) -> Result<Child, String> {
    let log = dir.join("redis.log");
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--appendonly", "yes"])
        // `always` (the default here): sync the AOF on every write, as the agent expects.
        .args(["--appendfsync", appendfsync])
        .arg("--dir")
        .arg(dir)
        .args(["--save", ""])
        .arg("--logfile")
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run redis-server: {e}"))?;
    let deadline = Instant::now() + START_DEADLINE;
    let url = format!("redis://127.0.0.1:{port}/");
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "redis-server exited with {status}; log: {}",
                tail(&log)
            ));
        }
        if answers_as(&url, child.id()) {
            return Ok(child);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "redis-server did not answer within {START_DEADLINE:?}; log: {}",
                tail(&log)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether the server at `url` answers PING and is the process `pid`, done loading its data.
fn answers_as(url: &str, pid: u32) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(500)) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
    let Ok(info) = redis::cmd("INFO").arg("server").query::<String>(&mut conn) else {
        return false;
    };
    let ours = info
        .lines()
        .any(|l| l.trim() == format!("process_id:{pid}"));
    ours && redis::cmd("PING").query::<String>(&mut conn).is_ok()
}

/// The last lines of the server's log, for failure messages.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}
