//! DNS benchmark (prints numbers, asserts nothing): one agent serving DNS on loopback, a
//! service of INSTANCES (5) instances, and SOCKETS (4) UDP sockets each keeping INFLIGHT (32)
//! A queries in flight for SECS (10) seconds after a warm-up of a second. Prints queries/s,
//! p50 and p99, and the queries that got no answer within 1 s.
//!
//! The agent runs in this process on its own runtime (AGENT_THREADS, 2), the load generator on
//! another (LOAD_THREADS, 1), so the two do not share worker threads; they do share the
//! machine's cores.
//!
//! Run: `cargo run --release --example dns_bench` (or `ONLY_DNS=1 bash bench/run.sh`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chordctl::agent::{self, AgentConfig, Start};
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use tokio::net::UdpSocket;

mod common;
use common::{env, Res};

fn main() -> Res<()> {
    let secs = env("SECS", 10) as u64;
    let sockets = env("SOCKETS", 4).max(1);
    let inflight = env("INFLIGHT", 32).clamp(1, 4096);
    let instances = env("INSTANCES", 5).max(1);
    let agent_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(env("AGENT_THREADS", 2).max(1))
        .enable_all()
        .build()?;
    let data = tempfile::tempdir()?;
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let config = AgentConfig {
        start: Start::Create,
        bind: any,
        http: any,
        dns: Some(any),
        data_dir: Some(data.path().to_path_buf()),
        ..AgentConfig::default()
    };
    let handle = agent_rt.block_on(agent::start(config))?;
    let dns = handle.dns_addr().ok_or("the agent serves no DNS")?;
    let http = handle.http_addr();
    let load_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(env("LOAD_THREADS", 1).max(1))
        .enable_all()
        .build()?;
    load_rt.block_on(async move {
        let client = reqwest::Client::new();
        for i in 0..instances {
            let url = format!("http://{http}/v1/services/web/instances/i{i}");
            let body = serde_json::json!({"address": format!("10.0.{}.{}", i / 250, i % 250 + 1), "port": 80});
            client.put(&url).json(&body).send().await?.error_for_status()?;
        }
        let query = {
            let mut m = Message::new(0, MessageType::Query, OpCode::Query);
            m.add_query(Query::query(Name::from_ascii("web.service.chord.")?, RecordType::A));
            m.to_vec()?
        };
        println!(
            "dns: one agent, {instances} instances, {sockets} UDP sockets x {inflight} in flight, {secs}s"
        );
        // Warm-up: the first query makes the service's view; then a second of load.
        run(dns, &query, sockets, inflight, Duration::from_secs(1)).await?;
        let (answered, lost, mut latencies, took) =
            run(dns, &query, sockets, inflight, Duration::from_secs(secs)).await?;
        latencies.sort_unstable();
        let at = |q: f64| {
            let i = ((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1));
            latencies.get(i).copied().unwrap_or_default()
        };
        println!(
            "  {:.0} queries/s  p50 {:?}  p99 {:?}  ({answered} answered, {lost} unanswered within 1s)",
            answered as f64 / took.as_secs_f64(),
            at(0.50),
            at(0.99),
        );
        Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    })?;
    agent_rt.block_on(handle.shutdown());
    Ok(())
}

/// `sockets` tasks, each keeping `inflight` queries outstanding for `length`; (answered,
/// unanswered, latencies, time taken).
async fn run(
    dns: SocketAddr,
    query: &[u8],
    sockets: usize,
    inflight: usize,
    length: Duration,
) -> Res<(u64, u64, Vec<Duration>, Duration)> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..sockets {
        let query = query.to_vec();
        tasks.push(tokio::spawn(async move {
            one_socket(dns, query, inflight, length).await
        }));
    }
    let (mut answered, mut lost, mut latencies) = (0, 0, Vec::new());
    for t in tasks {
        let (a, l, mut lat) = t.await??;
        answered += a;
        lost += l;
        latencies.append(&mut lat);
    }
    Ok((answered, lost, latencies, start.elapsed()))
}

async fn one_socket(
    dns: SocketAddr,
    mut query: Vec<u8>,
    inflight: usize,
    length: Duration,
) -> Res<(u64, u64, Vec<Duration>)> {
    let sock = UdpSocket::bind("127.0.0.1:0").await?;
    sock.connect(dns).await?;
    let end = Instant::now() + length;
    let mut sent: HashMap<u16, Instant> = HashMap::new();
    let mut next: u16 = 0;
    let mut latencies = Vec::new();
    let (mut answered, mut lost) = (0u64, 0u64);
    let mut buf = vec![0u8; 4096];
    let mut send = async |sent: &mut HashMap<u16, Instant>, query: &mut Vec<u8>| -> Res<()> {
        next = next.wrapping_add(1);
        query[..2].copy_from_slice(&next.to_be_bytes());
        sent.insert(next, Instant::now());
        sock.send(query).await?;
        Ok(())
    };
    for _ in 0..inflight {
        send(&mut sent, &mut query).await?;
    }
    while Instant::now() < end {
        match tokio::time::timeout(Duration::from_secs(1), sock.recv(&mut buf)).await {
            Ok(Ok(n)) if n >= 2 => {
                let id = u16::from_be_bytes([buf[0], buf[1]]);
                if let Some(at) = sent.remove(&id) {
                    latencies.push(at.elapsed());
                    answered += 1;
                    send(&mut sent, &mut query).await?;
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {
                // Nothing for a second: count what is outstanding as lost and start again.
                lost += sent.len() as u64;
                sent.clear();
                for _ in 0..inflight {
                    send(&mut sent, &mut query).await?;
                }
            }
        }
    }
    Ok((answered, lost, latencies))
}
