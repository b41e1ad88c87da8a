//! Watch benchmark (issue 14): many watchers on one agent, spread over services, under a steady
//! write rate. Prints write-to-notify p50/p99/max, events received, resets, and — given the
//! agent's pid — its resident memory per idle watcher and its CPU use while notifying. It
//! asserts nothing.
//!
//!   cargo run --release --example watch_bench -- URL [WATCHERS] [SERVICES] [RATE] [SECONDS] [PID]
//!
//! Defaults: 10,000 watchers over 100 services, 1,000 writes/s for 10 s. `bench/run.sh` runs it
//! against an agent it starts (`ONLY_WATCH=1 bench/run.sh`; `WATCH_TLS=1` over HTTPS).
//!
//! An `https://` URL watches (and writes) over TLS, trusting the CA certificate in the PEM file
//! that `WATCH_BENCH_CA` names: each watcher makes its own handshake, and the agent encrypts
//! every event once per watcher.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

/// A watcher's connection: plain TCP or TLS over it.
trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

/// Connect to `addr`, through TLS when `tls` is given.
async fn connect(addr: &str, tls: Option<&TlsConnector>) -> Option<Box<dyn Conn>> {
    let socket = tokio::net::TcpStream::connect(addr).await.ok()?;
    let _ = socket.set_nodelay(true);
    match tls {
        None => Some(Box::new(socket)),
        Some(tls) => {
            let name = chordctl::tls::server_name(addr).ok()?;
            Some(Box::new(tls.connect(name, socket).await.ok()?))
        }
    }
}

/// The TLS client of an `https://` run: trusts the CA in `WATCH_BENCH_CA`.
fn tls_client(url: &str) -> (Option<TlsConnector>, Option<Vec<u8>>) {
    if !url.starts_with("https://") {
        return (None, None);
    }
    let path = std::env::var("WATCH_BENCH_CA").unwrap_or_else(|_| {
        eprintln!("an https:// URL needs WATCH_BENCH_CA=PATH of the CA certificate (PEM)");
        std::process::exit(2)
    });
    let pem = std::fs::read(&path).unwrap_or_else(|e| {
        eprintln!("cannot read {path}: {e}");
        std::process::exit(2)
    });
    let mut roots = rustls::RootCertStore::empty();
    let certs = chordctl::tls::parse_certs(&pem, std::path::Path::new(&path)).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    for cert in certs {
        let _ = roots.add(cert);
    }
    let config = rustls::ClientConfig::builder_with_provider(chordctl::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Some(TlsConnector::from(Arc::new(config))), Some(pem))
}

fn now_micros() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_micros()).unwrap_or(0)
}

/// Resident set size (KiB) and CPU ticks (user + system) of `pid`, from /proc.
fn proc_stats(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((rss, utime + stime))
}

#[derive(Default)]
struct Tally {
    latencies_us: Mutex<Vec<u64>>,
    events: AtomicU64,
    resets: AtomicU64,
    attached: AtomicU64,
    /// Connections that ended before their first event (closed, or refused with an error) and
    /// were made again.
    retries: AtomicU64,
}

/// One watcher: as a real client does, it connects again (a few times, after a pause) when
/// its connection closes before the first event, e.g. when the agent's header deadline ran
/// out while 10,000 TLS handshakes queued at once. Each such retry is counted.
async fn watcher(
    url: String,
    service: String,
    tally: Arc<Tally>,
    done: CancellationToken,
    tls: Option<TlsConnector>,
) {
    for _ in 0..5 {
        let attached = watch_once(&url, &service, &tally, &done, tls.as_ref()).await;
        if attached || done.is_cancelled() {
            return;
        }
        tally.retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One connection of a watcher (whether it got its first event), read without an HTTP client
/// library: the load generator shares the two cores with the agent, so it does as little as
/// it can per event (find each frame's end and its `sent_us`, no JSON parse).
async fn watch_once(
    url: &str,
    service: &str,
    tally: &Tally,
    done: &CancellationToken,
    tls: Option<&TlsConnector>,
) -> bool {
    let addr = url
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .to_string();
    let Some(mut socket) = connect(&addr, tls).await else {
        eprintln!("watcher of {service}: cannot connect to {addr}");
        return false;
    };
    let request = format!(
        "GET /v1/watch/services/{service} HTTP/1.1\r\nhost: {addr}\r\naccept: text/event-stream\r\n\r\n"
    );
    if socket.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = vec![0u8; 16 * 1024];
    // Bytes of an incomplete frame carried over from the previous read.
    let mut carry: Vec<u8> = Vec::new();
    let mut head_done = false;
    let mut seen = Vec::new();
    let mut counted = false;
    loop {
        // No timer per read (one per event would cost the generator more than the agent):
        // the end of the run wakes every watcher through `done`.
        let n = tokio::select! {
            r = socket.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = done.cancelled() => break,
        };
        carry.extend_from_slice(&buf[..n]);
        let mut start = 0;
        if !head_done {
            let Some(end) = find(&carry, b"\r\n\r\n") else {
                continue;
            };
            if !carry.starts_with(b"HTTP/1.1 200") {
                eprintln!(
                    "watcher of {service}: {}",
                    String::from_utf8_lossy(&carry[..end])
                );
                return false;
            }
            head_done = true;
            start = end + 4;
        }
        while let Some(end) = find(&carry[start..], b"\n\n") {
            let frame = &carry[start..start + end];
            start += end + 2;
            if !counted {
                counted = true;
                tally.attached.fetch_add(1, Ordering::Relaxed);
            }
            tally.events.fetch_add(1, Ordering::Relaxed);
            if frame.starts_with(b"event: snapshot") && find(frame, b"\"reset\":true").is_some() {
                tally.resets.fetch_add(1, Ordering::Relaxed);
            }
            let key = b"\"sent_us\":\"";
            if let Some(at) = find(frame, key) {
                let digits = &frame[at + key.len()..];
                let end = digits
                    .iter()
                    .position(|b| !b.is_ascii_digit())
                    .unwrap_or(digits.len());
                if let Some(t) = std::str::from_utf8(&digits[..end])
                    .ok()
                    .and_then(|t| t.parse::<u64>().ok())
                {
                    seen.push(now_micros().saturating_sub(t));
                }
            }
        }
        carry.drain(..start);
    }
    if let Ok(mut all) = tally.latencies_us.lock() {
        all.extend(seen);
    }
    counted
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let url = args
        .first()
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1:7500".into());
    let arg = |i: usize, d: u64| args.get(i).and_then(|v| v.parse().ok()).unwrap_or(d);
    let watchers = arg(1, 10_000);
    let services = arg(2, 100).max(1);
    let rate = arg(3, 1_000).max(1);
    let seconds = arg(4, 10).max(1);
    let pid = args.get(5).and_then(|v| v.parse::<u32>().ok());
    chordctl::agent::raise_open_files_limit();
    let (tls, ca) = tls_client(&url);
    let mut client = reqwest::Client::builder();
    if let Some(ca) = &ca {
        client = client.add_root_certificate(reqwest::Certificate::from_pem(ca).expect("CA PEM"));
    }
    let client = client.build().expect("HTTP client");
    // Every service exists before the watchers come.
    for s in 0..services {
        let _ = client
            .put(format!("{url}/v1/services/wb-{s}/instances/seed"))
            .json(&json!({"address": "10.0.0.1", "port": 1}))
            .send()
            .await;
    }
    let before = pid.and_then(proc_stats);
    let tally = Arc::new(Tally::default());
    let done = CancellationToken::new();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..watchers {
        let service = format!("wb-{}", w % services);
        tasks.push(tokio::spawn(watcher(
            url.clone(),
            service,
            tally.clone(),
            done.clone(),
            tls.clone(),
        )));
        if w % 500 == 499 {
            tokio::task::yield_now().await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while tally.attached.load(Ordering::Relaxed) < watchers && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let attached = tally.attached.load(Ordering::Relaxed);
    println!(
        "watchers attached: {attached} of {watchers} over {services} services in {:.1}s \
         ({} connections closed before their first event and made again)",
        started.elapsed().as_secs_f64(),
        tally.retries.load(Ordering::Relaxed)
    );
    // Let the agent settle, then measure its memory with every watcher idle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = pid.and_then(proc_stats);
    if let (Some((rss0, _)), Some((rss1, _))) = (before, idle) {
        println!(
            "agent RSS: {} MiB before, {} MiB with {attached} idle watchers: {:.2} KiB per watcher",
            rss0 / 1024,
            rss1 / 1024,
            (rss1.saturating_sub(rss0)) as f64 / attached.max(1) as f64
        );
    }
    // The write load: `rate` registrations per second spread over the services, each carrying
    // its send time for the watchers to measure against.
    let writes = rate * seconds;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let load_start = Instant::now();
    let cpu0 = pid.and_then(proc_stats).map(|s| s.1);
    let errors = Arc::new(AtomicU64::new(0));
    let mut inflight = Vec::new();
    for i in 0..writes {
        let at = load_start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(at.into()).await;
        let client = client.clone();
        let url = url.clone();
        let errors = errors.clone();
        inflight.push(tokio::spawn(async move {
            // Consecutive writes to a service go to different instances, so that none is
            // folded into another in one group commit: every write is its own change.
            let s = i % services;
            let sent = now_micros();
            let r = client
                .put(format!(
                    "{url}/v1/services/wb-{s}/instances/w{}",
                    i / services % 50
                ))
                .json(&json!({"address": "10.0.0.2", "port": 2,
                              "metadata": {"sent_us": sent.to_string()}}))
                .send()
                .await;
            if !matches!(r, Ok(ref r) if r.status() == 200) {
                errors.fetch_add(1, Ordering::Relaxed);
            }
            // How long the write itself took (acknowledged once durable on a quorum).
            now_micros().saturating_sub(sent)
        }));
    }
    let mut write_us = Vec::with_capacity(inflight.len());
    for t in inflight {
        if let Ok(us) = t.await {
            write_us.push(us);
        }
    }
    write_us.sort_unstable();
    let took = load_start.elapsed();
    let cpu1 = pid.and_then(proc_stats).map(|s| s.1);
    // Give the last events a moment to arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    done.cancel();
    for t in tasks {
        let _ = t.await;
    }
    let mut lat = tally
        .latencies_us
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    lat.sort_unstable();
    let expected = writes * (watchers / services);
    println!(
        "writes: {writes} in {:.1}s ({:.0}/s), {} errors",
        took.as_secs_f64(),
        writes as f64 / took.as_secs_f64(),
        errors.load(Ordering::Relaxed)
    );
    println!(
        "write latency ms (send to acknowledgement, part of write-to-notify): p50 {:.1}, p99 {:.1}",
        pct(&write_us, 0.50),
        pct(&write_us, 0.99)
    );
    println!(
        "notifications: {} of {expected} expected, {} resets; write-to-notify ms: p50 {:.1}, p99 {:.1}, max {:.1} (goal: p99 < 200)",
        lat.len(),
        tally.resets.load(Ordering::Relaxed),
        pct(&lat, 0.50),
        pct(&lat, 0.99),
        pct(&lat, 1.0)
    );
    if let (Some(c0), Some(c1)) = (cpu0, cpu1) {
        let ticks = 100.0; // USER_HZ on Linux
        println!(
            "agent CPU while notifying: {:.0}% of one core",
            (c1.saturating_sub(c0)) as f64 / ticks / took.as_secs_f64() * 100.0
        );
    }
}
