//! A headless Chromium driven through the DevTools protocol, for the web view's tests.
//!
//! The protocol goes over `--remote-debugging-pipe` (the browser reads commands on fd 3 and
//! writes answers on fd 4, each message JSON ended by a NUL byte): no port to find, no
//! websocket. The browser runs in its own process group with a temporary profile; on Drop it
//! is asked to close, then its group is killed by id if it has not exited, and the profile is
//! removed. One browser at a time in this test process: each is heavy on a small machine.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

/// Deadline of one protocol command (a navigation or a screenshot on a loaded machine).
const COMMAND_DEADLINE: Duration = Duration::from_secs(60);

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

pub struct Browser {
    child: Child,
    to_browser: std::io::PipeWriter,
    from_browser: Receiver<Value>,
    next_id: u64,
    /// The page's session (flattened target attachment).
    session: String,
    /// Exceptions and console lines of the page, for failure messages.
    log: Vec<String>,
    profile: tempfile::TempDir,
    _turn: MutexGuard<'static, ()>,
}

impl Browser {
    /// Start Chromium with one blank page, or `None` when it is not installed (a failure
    /// under `CI=true`, see [`super::required_program`]).
    pub fn start() -> Option<Browser> {
        if !super::required_program("chromium", "chromium", "this web view test") {
            return None;
        }
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let profile = tempfile::tempdir().expect("temporary browser profile");
        let (child_reads, to_browser) = std::io::pipe().expect("pipe");
        let (from_browser, child_writes) = std::io::pipe().expect("pipe");
        let stderr = std::fs::File::create(profile.path().join("chromium.log")).expect("log");
        let mut cmd = Command::new("chromium");
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-extensions",
            "--disable-crash-reporter",
            "--disable-breakpad",
            "--disable-background-networking",
            "--no-first-run",
            "--no-default-browser-check",
            "--remote-debugging-pipe",
            "--window-size=1280,1000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .process_group(0);
        let (r, w) = (child_reads.as_raw_fd(), child_writes.as_raw_fd());
        // SAFETY: between fork and exec only async-signal-safe calls (fcntl, dup2) on fds this
        // process owns. Each end is first copied above 10 so that neither dup2 overwrites the
        // other's source; dup2's copies at 3 and 4 are kept across exec.
        unsafe {
            cmd.pre_exec(move || {
                let r = libc::fcntl(r, libc::F_DUPFD_CLOEXEC, 10);
                let w = libc::fcntl(w, libc::F_DUPFD_CLOEXEC, 10);
                if r < 0 || w < 0 || libc::dup2(r, 3) < 0 || libc::dup2(w, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn chromium");
        // The child's ends belong to it now: without these copies, its exit ends our reads.
        drop((child_reads, child_writes));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(from_browser);
            let mut message = Vec::new();
            while let Ok(n) = reader.read_until(0, &mut message) {
                if n == 0 {
                    break;
                }
                if message.last() == Some(&0) {
                    message.pop();
                }
                if let Ok(v) = serde_json::from_slice::<Value>(&message) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
                message.clear();
            }
        });
        let mut b = Browser {
            child,
            to_browser,
            from_browser: rx,
            next_id: 0,
            session: String::new(),
            log: Vec::new(),
            profile,
            _turn: turn,
        };
        let target = b.browser_call("Target.createTarget", json!({"url": "about:blank"}));
        let target = target["targetId"].as_str().expect("targetId").to_string();
        let attached = b.browser_call(
            "Target.attachToTarget",
            json!({"targetId": target, "flatten": true}),
        );
        b.session = attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_string();
        b.call("Runtime.enable", json!({}));
        b.call("Page.enable", json!({}));
        Some(b)
    }

    fn send(&mut self, method: &str, params: Value, session: Option<String>) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            message["sessionId"] = Value::String(s);
        }
        let mut bytes = message.to_string().into_bytes();
        bytes.push(0);
        if let Err(e) = self.to_browser.write_all(&bytes) {
            panic!(
                "{method}: cannot write to chromium: {e}{}",
                self.diagnostics()
            );
        }
        let deadline = Instant::now() + COMMAND_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.from_browser.recv_timeout(left) {
                Ok(v) if v["id"] == id => {
                    if !v["error"].is_null() {
                        panic!("{method}: {}{}", v["error"], self.diagnostics());
                    }
                    return v["result"].clone();
                }
                Ok(v) => self.note(&v),
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "{method}: no answer within {COMMAND_DEADLINE:?}{}",
                        self.diagnostics()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("{method}: chromium went away{}", self.diagnostics())
                }
            }
        }
    }

    /// Keep what the page said (exceptions, console) for failure messages.
    fn note(&mut self, event: &Value) {
        let params = &event["params"];
        match event["method"].as_str() {
            Some("Runtime.exceptionThrown") => self.log.push(format!(
                "exception: {}",
                params["exceptionDetails"]["exception"]["description"]
            )),
            Some("Runtime.consoleAPICalled") => self.log.push(format!(
                "console.{}: {}",
                params["type"].as_str().unwrap_or("?"),
                params["args"]
            )),
            _ => {}
        }
    }

    fn diagnostics(&self) -> String {
        let log =
            std::fs::read_to_string(self.profile.path().join("chromium.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(10).collect();
        format!(
            "\n--- page log ---\n{}\n--- chromium stderr (last lines) ---\n{}",
            self.log.join("\n"),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }

    fn browser_call(&mut self, method: &str, params: Value) -> Value {
        self.send(method, params, None)
    }

    /// A command to the page.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.send(method, params, Some(session))
    }

    /// Load `url` in the page.
    pub fn navigate(&mut self, url: &str) {
        let r = self.call("Page.navigate", json!({"url": url}));
        assert!(r["errorText"].is_null(), "navigate to {url}: {r}");
    }

    /// The value of the JavaScript expression `expr` in the page (promises awaited).
    pub fn eval(&mut self, expr: &str) -> Value {
        self.try_eval(expr)
            .unwrap_or_else(|e| panic!("{expr}: {e}{}", self.diagnostics()))
    }

    /// [`Browser::eval`], with an exception thrown by `expr` as an error.
    fn try_eval(&mut self, expr: &str) -> Result<Value, String> {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        match r["exceptionDetails"]["exception"]["description"].as_str() {
            Some(e) => Err(e.to_string()),
            None if !r["exceptionDetails"].is_null() => Err(r["exceptionDetails"].to_string()),
            None => Ok(r["result"]["value"].clone()),
        }
    }

    /// Poll `expr` every 100 ms until it is truthy (not null, false, 0 or ""; an exception,
    /// as while the page loads, is not); returns its value. Panics after `deadline` with
    /// `what`, the last value or exception and the page's log.
    pub fn wait_for(&mut self, what: &str, deadline: Duration, expr: &str) -> Value {
        let start = Instant::now();
        loop {
            let last = match self.try_eval(expr) {
                Ok(v) => {
                    let truthy = !matches!(&v, Value::Null | Value::Bool(false))
                        && v != json!(0)
                        && v != json!("");
                    if truthy {
                        return v;
                    }
                    v.to_string()
                }
                Err(e) => e,
            };
            if start.elapsed() > deadline {
                panic!(
                    "{what}: not within {deadline:?}; last {expr} = {last}{}",
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A PNG of the page as it is now, written to `path` (its directory made).
    pub fn screenshot(&mut self, path: &Path) {
        let r = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let data = r["data"].as_str().expect("screenshot data");
        let png = base64::engine::general_purpose::STANDARD
            .decode(data)
            .expect("screenshot is base64");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("artifact directory");
        }
        std::fs::write(path, png).expect("write the screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let mut bytes = json!({"id": 0, "method": "Browser.close"})
            .to_string()
            .into_bytes();
        bytes.push(0);
        let _ = self.to_browser.write_all(&bytes);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Its helpers (renderer, zygote) are in its process group, whose id is its pid.
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) on the process group this test started; no memory involved.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
            let _ = self.child.wait();
            // Until the group is gone (bounded), so no helper outlives the test.
            let deadline = Instant::now() + Duration::from_secs(10);
            // SAFETY: signal 0 only asks whether the group still has a member.
            while unsafe { libc::kill(-pid, 0) } == 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.wait();
    }
}

/// Where the web view's screenshots go: `ui-artifacts/` in the target directory this test
/// binary was built into.
pub fn artifact_dir() -> PathBuf {
    let bin = Path::new(super::procs::bin());
    bin.parent()
        .and_then(Path::parent)
        .map(|target| target.join("ui-artifacts"))
        .unwrap_or_else(|| PathBuf::from("target/ui-artifacts"))
}
