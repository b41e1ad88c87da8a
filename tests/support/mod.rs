pub mod cluster;
pub mod http;
pub mod procs;
pub mod redis;
pub mod run;

use std::time::{Duration, Instant};

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
