pub mod browser;
pub mod cluster;
pub mod http;
pub mod procs;
pub mod redis;
pub mod run;
/// The unit tests' helpers (`src/testing.rs`), shared: one `refused_addr` for both.
#[path = "../../src/testing.rs"]
pub mod testing;

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The path of `program` in one of PATH's directories, if it is there.
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Whether `program` (from the Debian package `package`) is on PATH, so that `what` can run.
/// Under `CI=true` a missing program is a failure (scripts/test.sh installs it), never a
/// silent skip; elsewhere the skip is written to stderr, where the run's output shows it.
pub fn required_program(program: &str, package: &str, what: &str) -> bool {
    if find_on_path(program).is_some() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{program} is required under CI=true; install it: apt-get install -y {package}");
    }
    // Written to stderr directly, not with eprintln!, which the test harness captures.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {program} is not on PATH; {what} did not run"
    );
    false
}

/// Poll the async check `f` every 100 ms until it succeeds; panic with its last reason after
/// `deadline` (generous: CI machines are small and noisy).
pub async fn eventually(
    what: &str,
    deadline: Duration,
    mut f: impl AsyncFnMut() -> Result<(), String>,
) {
    let start = Instant::now();
    loop {
        match f().await {
            Ok(()) => return,
            Err(e) if start.elapsed() > deadline => panic!("{what}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Block (polling every 20 ms, for up to 60 s) until the per-client counts of acknowledged
/// writes in `acked` add up to at least `at_least`; returns the total then.
pub fn until_acknowledged(acked: &[std::sync::atomic::AtomicUsize], at_least: usize) -> usize {
    let total = || {
        acked
            .iter()
            .map(|a| a.load(std::sync::atomic::Ordering::SeqCst))
            .sum::<usize>()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = total();
        if n >= at_least {
            return n;
        }
        assert!(Instant::now() < deadline, "only {n} registrations in 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait for instance `id` of `service` (registered with a 1 s TTL by a request sent after
/// `sent`, asked through the agent at `url`) to expire as the TTL rules say: critical after one TTL, not
/// earlier; removed after the grace period (ten more TTLs), not earlier — and not never.
pub async fn expect_ttl_expiry(url: &str, service: &str, id: &str, sent: Instant) {
    let instance = format!("{url}/v1/services/{service}/instances/{id}");
    eventually(
        "critical after one TTL",
        Duration::from_secs(60),
        async || {
            let (_, inst) = http::call("GET", &instance, None).await;
            (inst["status"]["state"] == "critical")
                .then_some(())
                .ok_or(inst.to_string())
        },
    )
    .await;
    assert!(
        sent.elapsed() >= Duration::from_secs(1),
        "critical before one TTL"
    );
    eventually(
        "removed after the grace period",
        Duration::from_secs(60),
        async || {
            let (st, _) = http::call("GET", &instance, None).await;
            (st == 404).then_some(()).ok_or(format!("status {st}"))
        },
    )
    .await;
    assert!(
        sent.elapsed() >= Duration::from_secs(11),
        "removed before TTL + 10 x TTL"
    );
}
