//! Ring benchmark (prints numbers, asserts nothing): lookups through an 8-node ring on
//! loopback, and the CPU that 8 idle agents use.
//!
//! Run: `cargo run --release --example ring_bench`

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chordctl::agent::{self, AgentConfig, Start};
use chordctl::ring::Id;

fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let config = |start: Start, i: usize| AgentConfig {
        start,
        bind: any,
        http: any,
        data_dir: Some(tmp.path().join(format!("n{i}"))),
        ..AgentConfig::default()
    };
    let first = agent::start(config(Start::Create, 0)).await?;
    let seed = first.node().addr;
    let mut nodes = vec![first];
    for i in 1..8 {
        nodes.push(agent::start(config(Start::Join(seed.clone()), i)).await?);
    }
    // Let stabilization and fingers converge (default 500 ms rounds).
    tokio::time::sleep(Duration::from_secs(8)).await;

    let ring = nodes[0].agent().ring.clone();
    let n = 5000;
    let mut times = Vec::with_capacity(n);
    let mut hops = 0u64;
    for i in 0..n {
        let key = Id::of_key(&format!("bench-{i}"));
        let t = Instant::now();
        let r = ring.lookup(key).await?;
        times.push(t.elapsed());
        hops += r.hops as u64;
    }
    times.sort();
    let pct = |p: f64| times[((n as f64 * p) as usize).min(n - 1)];
    println!(
        "lookup through 8 agents: n={n} mean hops {:.2}  p50 {:?}  p90 {:?}  p99 {:?}",
        hops as f64 / n as f64,
        pct(0.50),
        pct(0.90),
        pct(0.99)
    );

    let ticks_per_sec = 100.0; // USER_HZ on Linux
    if let Some(before) = cpu_ticks() {
        let wall = Duration::from_secs(10);
        tokio::time::sleep(wall).await;
        if let Some(after) = cpu_ticks() {
            let cpu = (after - before) as f64 / ticks_per_sec;
            println!(
                "8 idle agents in one process: {:.3} s CPU over {:?} = {:.2}% of one core",
                cpu,
                wall,
                100.0 * cpu / wall.as_secs_f64()
            );
        }
    }
    for h in nodes.into_iter().rev() {
        h.shutdown().await;
    }
    Ok(())
}
