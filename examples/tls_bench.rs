//! TLS benchmark (prints numbers, asserts nothing): the same 5-agent ring (`--replicas 3
//! --successors 2`, so that lookups of keys beyond the successor list hop) on loopback without
//! TLS and with TLS on both ports, connections warm (ring RPC is pooled, the HTTP client keeps
//! its connections):
//!
//! - one ring RPC call (a ping) from one agent to another over the agent's pool: p50 and p99;
//! - ring lookups from one agent (sequential; a remote hop is a ring RPC call): p50 and p99;
//! - registrations through HTTP(S) at a non-owner agent, CONNS at once for SECS seconds: each
//!   one forwarded to the owner and replicated over ring RPC: ops/s and p50/p99.
//!
//! The two modes alternate ROUNDS times (default 2) so that a busy machine hurts both alike.
//!
//! Run: `cargo run --release --example tls_bench` (or `ONLY_TLS=1 bash bench/run.sh`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chordctl::agent::{self, AgentConfig, AgentHandle, Start};
use chordctl::ring::Id;

mod common;
use common::{env, Res};

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// One mode's results.
struct Outcome {
    call_p50: Duration,
    call_p99: Duration,
    lookup_p50: Duration,
    lookup_p99: Duration,
    register_ops: f64,
    register_p50: Duration,
    register_p99: Duration,
    errors: usize,
}

async fn ring(tls: bool, dir: &std::path::Path) -> Res<(Vec<AgentHandle>, reqwest::Client)> {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(10));
    let files = if tls {
        let (files, (cert, key)) = chordctl::tls::create::dev_certificates(&dir.join("tls"))?;
        let mut pem = std::fs::read(&cert)?;
        pem.extend(std::fs::read(&key)?);
        http = http
            .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&files.ca)?)?)
            .identity(reqwest::Identity::from_pem(&pem)?);
        Some(files)
    } else {
        None
    };
    let config = |start: Start, i: usize| AgentConfig {
        start,
        bind: any,
        http: any,
        data_dir: Some(dir.join(format!("n{i}"))),
        tls: files.clone(),
        successors: 2,
        ..AgentConfig::default()
    };
    let first = agent::start(config(Start::Create, 0)).await?;
    let seed = first.node().addr;
    let mut nodes = vec![first];
    for i in 1..5 {
        nodes.push(agent::start(config(Start::Join(seed.clone()), i)).await?);
    }
    // Stabilization and fingers converge in a few 500 ms rounds; the warm-up below follows.
    tokio::time::sleep(Duration::from_secs(4)).await;
    Ok((nodes, http.build()?))
}

async fn measure(tls: bool, conns: usize, secs: u64, lookups: usize) -> Res<Outcome> {
    let dir = tempfile::tempdir()?;
    let (nodes, http) = ring(tls, dir.path()).await?;
    let scheme = if tls { "https" } else { "http" };
    let base = format!("{scheme}://{}", nodes[1].http_addr());

    // One ring RPC call, then lookups, after a warm-up that opens every pooled connection.
    let driver = nodes[0].agent().ring.clone();
    let peer = nodes[1].node().addr;
    let ping = || chordctl::rpc::Request::Ring(chordctl::ring::RingRequest::Ping);
    for _ in 0..500 {
        driver.pool().call(&peer, ping()).await?;
    }
    let mut times = Vec::with_capacity(lookups);
    for _ in 0..lookups {
        let t = Instant::now();
        driver.pool().call(&peer, ping()).await?;
        times.push(t.elapsed());
    }
    times.sort();
    let (call_p50, call_p99) = (pct(&times, 0.50), pct(&times, 0.99));
    for i in 0..500 {
        driver.lookup(Id::of_key(&format!("warm-{i}"))).await?;
    }
    let mut times = Vec::with_capacity(lookups);
    for i in 0..lookups {
        let t = Instant::now();
        driver.lookup(Id::of_key(&format!("bench-{i}"))).await?;
        times.push(t.elapsed());
    }
    times.sort();
    let (lookup_p50, lookup_p99) = (pct(&times, 0.50), pct(&times, 0.99));

    // Registrations: a warm-up second, then the measured run.
    let run = |secs: u64, tag: &'static str| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let stop = Arc::new(AtomicBool::new(false));
            let errors = Arc::new(AtomicUsize::new(0));
            let mut tasks = Vec::new();
            for c in 0..conns {
                let (http, base, stop, errors) =
                    (http.clone(), base.clone(), stop.clone(), errors.clone());
                tasks.push(tokio::spawn(async move {
                    let mut times = Vec::new();
                    let mut i = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        let url = format!(
                            "{base}/v1/services/{tag}-{}/instances/c{c}-{}",
                            c % 16,
                            i % 500
                        );
                        let body =
                            serde_json::json!({"address": "10.0.0.1", "port": 1 + i % 60000});
                        let t = Instant::now();
                        match http.put(&url).json(&body).send().await {
                            Ok(r) if r.status().is_success() => times.push(t.elapsed()),
                            _ => {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        i += 1;
                    }
                    times
                }));
            }
            let started = Instant::now();
            tokio::time::sleep(Duration::from_secs(secs)).await;
            stop.store(true, Ordering::Relaxed);
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.unwrap_or_default());
            }
            let elapsed = started.elapsed().as_secs_f64();
            all.sort();
            (all, elapsed, errors.load(Ordering::Relaxed))
        }
    };
    run(1, "warm").await;
    let (times, elapsed, errors) = run(secs, "bench").await;
    let outcome = Outcome {
        call_p50,
        call_p99,
        lookup_p50,
        lookup_p99,
        register_ops: times.len() as f64 / elapsed,
        register_p50: pct(&times, 0.50),
        register_p99: pct(&times, 0.99),
        errors,
    };
    for n in nodes.into_iter().rev() {
        n.kill().await;
    }
    Ok(outcome)
}

#[tokio::main]
async fn main() -> Res<()> {
    let conns = env("CONNS", 32);
    let secs = env("SECS", 5) as u64;
    let lookups = env("LOOKUPS", 5000);
    let rounds = env("ROUNDS", 2);
    println!(
        "5 agents, --replicas 3 --successors 2, loopback; {lookups} sequential ring calls and \
         lookups from one agent; registrations at a non-owner agent, {conns} at once for {secs} \
         s; {} cores",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    println!(
        "{:<6} {:<6} {:>10} {:>10} {:>11} {:>11} {:>11} {:>10} {:>10} {:>7}",
        "round",
        "mode",
        "call p50",
        "call p99",
        "lookup p50",
        "lookup p99",
        "register/s",
        "reg p50",
        "reg p99",
        "errors"
    );
    for round in 1..=rounds {
        for tls in [false, true] {
            let o = measure(tls, conns, secs, lookups).await?;
            println!(
                "{:<6} {:<6} {:>10.1?} {:>10.1?} {:>11.1?} {:>11.1?} {:>11.0} {:>10.1?} {:>10.1?} {:>7}",
                round,
                if tls { "tls" } else { "plain" },
                o.call_p50,
                o.call_p99,
                o.lookup_p50,
                o.lookup_p99,
                o.register_ops,
                o.register_p50,
                o.register_p99,
                o.errors
            );
        }
    }
    Ok(())
}
