pub mod cluster;
pub mod http;
pub mod procs;
pub mod redis;

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
