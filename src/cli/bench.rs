//! `chordctl bench`: a load generator against any agent, for operators checking their own ring
//! (what `etcdctl check perf` and `redis-benchmark` give their users).
//!
//! It registers its own services (`bench-XXXX-N`, ten instances each), drives the chosen mix of
//! operations from `--concurrency` workers for `--duration`, over kept-alive HTTP connections,
//! and prints ops/s, latency percentiles and errors per operation. The services are deregistered
//! at the end unless `--keep`.
//!
//! Numbers depend on the machine, the load generator sharing it, and the ring's size: it
//! measures, it does not judge. Nothing here asserts a speed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use comfy_table::Cell;
use futures::stream::{self, StreamExt};
use rand::{Rng, SeedableRng};
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde_json::{json, Value};

use super::args::{parse_duration_secs, OutputFormat};
use super::client::{error_message, root_cause};
use super::output;
use super::Failure;

/// Instances registered under each benchmark service (discover answers list all of them).
pub const INSTANCES_PER_SERVICE: usize = 10;

/// How long one benchmark request may take before it counts as an error.
const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// `chordctl bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Operations to send: register (PUT an instance), discover (GET a service), report
    /// (PUT a status), or mixed (70% discover, 20% report, 10% register)
    #[arg(long, value_enum, default_value_t = Mix::Mixed)]
    pub mix: Mix,
    /// Requests in flight at once (one kept-alive connection each)
    #[arg(long, value_name = "N", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub concurrency: u32,
    /// How long to send load (30s, 5m, 1h, or seconds; at least 1s)
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_bench_duration)]
    pub duration: u64,
    /// Services to spread the load over, each with ten instances
    #[arg(long, value_name = "N", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub services: u32,
    /// Leave the benchmark's services registered at the end
    #[arg(long)]
    pub keep: bool,
}

/// Which operations `chordctl bench` sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mix {
    /// PUT /v1/services/S/instances/ID (re-registering one of the ten instances)
    Register,
    /// GET /v1/services/S (ten instances)
    Discover,
    /// PUT /v1/services/S/instances/ID/status
    Report,
    /// 70% discover, 20% report, 10% register
    Mixed,
}

impl Mix {
    fn as_str(self) -> &'static str {
        match self {
            Mix::Register => "register",
            Mix::Discover => "discover",
            Mix::Report => "report",
            Mix::Mixed => "mixed",
        }
    }
}

/// One kind of operation, an index into the per-kind statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Register = 0,
    Discover = 1,
    Report = 2,
}

const OPS: [Op; 3] = [Op::Register, Op::Discover, Op::Report];

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Register => "register",
            Op::Discover => "discover",
            Op::Report => "report",
        }
    }

    /// The next operation a worker sends under `mix`.
    fn pick(mix: Mix, rng: &mut impl Rng) -> Op {
        match mix {
            Mix::Register => Op::Register,
            Mix::Discover => Op::Discover,
            Mix::Report => Op::Report,
            Mix::Mixed => match rng.gen_range(0..10) {
                0 => Op::Register,
                1 | 2 => Op::Report,
                _ => Op::Discover,
            },
        }
    }
}

/// `--duration`: at least one second.
fn parse_bench_duration(s: &str) -> Result<u64, String> {
    match parse_duration_secs(s)? {
        0 => Err("the benchmark must run for at least 1s".into()),
        secs => Ok(secs),
    }
}

/// What one worker measured.
#[derive(Debug, Default)]
struct Tally {
    /// Latencies in microseconds of the successful operations, per [`Op`].
    latencies: [Vec<u32>; 3],
    /// Failed operations per [`Op`].
    errors: [u64; 3],
    /// The first failure, for the message.
    first_error: Option<String>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        for (mine, theirs) in self.latencies.iter_mut().zip(other.latencies) {
            mine.extend(theirs);
        }
        for (mine, theirs) in self.errors.iter_mut().zip(other.errors) {
            *mine += theirs;
        }
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest.
    pub max: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `micros`, which must be sorted; zeros when empty.
    fn of_sorted(micros: &[u32]) -> Percentiles {
        let at = |p: f64| -> f64 {
            if micros.is_empty() {
                return 0.0;
            }
            let rank = ((p * micros.len() as f64).ceil() as usize).clamp(1, micros.len());
            f64::from(micros[rank - 1]) / 1000.0
        };
        Percentiles {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

/// The figures of one operation kind, or of all together.
#[derive(Debug, Clone, Serialize)]
pub struct OpSummary {
    /// `register`, `discover`, `report` or `total`.
    pub op: String,
    /// Successful operations.
    pub ops: u64,
    /// Failed operations (error status, transport failure or timeout).
    pub errors: u64,
    /// Successful operations per second of the run.
    pub ops_per_sec: f64,
    /// Latency of the successful operations.
    pub latency_ms: Percentiles,
}

/// The whole result, as `-o json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The agent the load went to.
    pub agent: String,
    /// The operations sent.
    pub mix: Mix,
    /// Requests in flight at once.
    pub concurrency: u32,
    /// Services the load was spread over.
    pub services: u32,
    /// Measured length of the run, in seconds.
    pub duration_secs: f64,
    /// Successful operations in all.
    pub ops: u64,
    /// Failed operations in all.
    pub errors: u64,
    /// Successful operations per second.
    pub ops_per_sec: f64,
    /// Latency of all successful operations.
    pub latency_ms: Percentiles,
    /// The same per operation kind that was sent.
    pub operations: Vec<OpSummary>,
    /// The first failure seen, if any.
    pub first_error: Option<String>,
}

/// Where the benchmark sends its requests.
struct Target {
    http: reqwest::Client,
    base: Url,
    token: Option<String>,
}

impl Target {
    /// The URL of `/v1/services/{segments...}` under the agent's base URL. Benchmark names
    /// use only unreserved characters, so no percent-encoding is needed.
    fn url(&self, tail: &str) -> Url {
        let mut url = self.base.clone();
        let path = format!(
            "{}/v1/services/{tail}",
            self.base.path().trim_end_matches('/')
        );
        url.set_path(&path);
        url
    }

    /// One request; `Err` with a message for a transport failure or an error status.
    async fn send(&self, method: Method, tail: &str, body: Option<&Value>) -> Result<(), OpError> {
        let mut request = self.http.request(method, self.url(tail));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(OpError::Transport)?;
        let status = response.status();
        // Read the whole answer, as a real client would, so the connection is reused.
        let bytes = response.bytes().await.map_err(OpError::Transport)?;
        if status.is_success() {
            Ok(())
        } else {
            Err(OpError::Status(status, bytes))
        }
    }
}

/// Why one request failed.
#[derive(Debug)]
enum OpError {
    Transport(reqwest::Error),
    Status(StatusCode, bytes::Bytes),
}

impl OpError {
    fn message(&self, agent: &str) -> String {
        match self {
            OpError::Transport(e) => {
                format!("request to {agent} failed: {}", root_cause(e))
            }
            OpError::Status(status, body) => {
                let message = error_message(body).unwrap_or_default();
                format!("the agent answered {}: {message}", status.as_u16())
            }
        }
    }

    /// The exit-code kind of a failure during setup (unreachable: 3, else 1).
    fn into_failure(self, agent: &str) -> Failure {
        let message = self.message(agent);
        match self {
            OpError::Transport(e) if e.is_connect() => Failure::Unreachable(format!(
                "{message} (is an agent running there? see --agent)"
            )),
            _ => Failure::Failed(message),
        }
    }
}

/// The JSON body that registers instance `i` of a benchmark service.
fn register_body(i: usize) -> Value {
    json!({
        "address": format!("10.99.0.{}", i + 1),
        "port": 8000 + i,
        "tags": ["bench"],
        "metadata": {"origin": "chordctl-bench"},
    })
}

/// A random status report.
fn report_body(rng: &mut impl Rng) -> Value {
    json!({
        "state": "passing",
        "load": rng.gen_range(0.0..1.0),
        "success_rate": rng.gen_range(0.9..1.0),
        "latency_ms": rng.gen_range(1.0..50.0),
        "frequency": rng.gen_range(1.0..100.0),
    })
}

/// Runs `chordctl bench`.
pub(crate) fn run(
    base: &Url,
    token: Option<&str>,
    tls: &super::client::ClientTls,
    args: &BenchArgs,
    format: OutputFormat,
) -> Result<(), Failure> {
    let workers = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(2)
        .min(args.concurrency as usize)
        .max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .thread_name("chordctl-bench")
        .build()
        .map_err(|e| Failure::Failed(format!("cannot start the async runtime: {e}")))?;
    let mut builder = tls.apply(
        reqwest::Client::builder()
            .timeout(OP_TIMEOUT)
            .connect_timeout(super::client::CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .pool_max_idle_per_host(args.concurrency as usize)
            .user_agent(concat!("chordctl-bench/", env!("CARGO_PKG_VERSION"))),
    );
    if base
        .host_str()
        .is_some_and(|h| h == "localhost" || h.starts_with("127.") || h == "[::1]")
    {
        builder = builder.no_proxy();
    }
    let http = builder
        .build()
        .map_err(|e| Failure::Failed(format!("cannot set up the HTTP client: {e}")))?;
    let mut shown = base.clone();
    let _ = shown.set_password(None);
    let _ = shown.set_username("");
    let shown = shown.as_str().trim_end_matches('/').to_string();
    let target = Arc::new(Target {
        http,
        base: base.clone(),
        token: token.filter(|t| !t.is_empty()).map(str::to_string),
    });
    let run_tag: String = format!("{:04x}", rand::thread_rng().gen::<u16>());
    let services: Arc<Vec<String>> = Arc::new(
        (0..args.services)
            .map(|i| format!("bench-{run_tag}-{i}"))
            .collect(),
    );

    runtime.block_on(async {
        setup(&target, &services, args.concurrency as usize)
            .await
            .map_err(|e| e.into_failure(&shown))?;
        let (tally, elapsed) = load(&target, &services, args).await;
        let cleanup = if args.keep {
            Ok(())
        } else {
            teardown(&target, &services, args.concurrency as usize).await
        };
        let summary = summarize(&shown, args, tally, elapsed);
        print_summary(&summary, format)?;
        if let Err(e) = cleanup {
            return Err(Failure::Failed(format!(
                "could not deregister every benchmark instance (names start with bench-{run_tag}-): {}",
                e.message(&shown)
            )));
        }
        if summary.errors > 0 {
            return Err(Failure::Failed(format!(
                "{} of {} operations failed; the first: {}",
                summary.errors,
                summary.errors + summary.ops,
                summary.first_error.as_deref().unwrap_or("unknown")
            )));
        }
        Ok(())
    })
}

/// Registers every instance of every benchmark service, `parallel` requests at a time.
async fn setup(target: &Target, services: &[String], parallel: usize) -> Result<(), OpError> {
    let bar = output::spinner("registering the benchmark services");
    let jobs = services
        .iter()
        .flat_map(|s| (0..INSTANCES_PER_SERVICE).map(move |i| (s, i)));
    let mut results = stream::iter(jobs)
        .map(|(s, i)| async move {
            let body = register_body(i);
            target
                .send(Method::PUT, &format!("{s}/instances/i{i}"), Some(&body))
                .await
        })
        .buffer_unordered(parallel.max(1));
    while let Some(r) = results.next().await {
        r?;
    }
    bar.finish_and_clear();
    Ok(())
}

/// Deregisters every instance of every benchmark service; 404s (already gone) are fine.
async fn teardown(target: &Target, services: &[String], parallel: usize) -> Result<(), OpError> {
    let bar = output::spinner("deregistering the benchmark services");
    let jobs = services
        .iter()
        .flat_map(|s| (0..INSTANCES_PER_SERVICE).map(move |i| (s, i)));
    let mut results = stream::iter(jobs)
        .map(|(s, i)| async move {
            target
                .send(Method::DELETE, &format!("{s}/instances/i{i}"), None)
                .await
        })
        .buffer_unordered(parallel.max(1));
    let mut first = None;
    while let Some(r) = results.next().await {
        match r {
            Ok(()) | Err(OpError::Status(StatusCode::NOT_FOUND, _)) => {}
            Err(e) => {
                first.get_or_insert(e);
            }
        }
    }
    bar.finish_and_clear();
    first.map_or(Ok(()), Err)
}

/// Sends the load for `args.duration` seconds and returns what the workers measured with the
/// measured length of the run.
async fn load(target: &Arc<Target>, services: &Arc<Vec<String>>, args: &BenchArgs) -> (Tally, f64) {
    let duration = Duration::from_secs(args.duration);
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let (target, services, done, mix) =
            (target.clone(), services.clone(), done.clone(), args.mix);
        tasks.spawn(async move { worker(&target, &services, mix, deadline, &done).await });
    }
    let bar = output::progress_bar(args.duration, format!("bench {}", args.mix.as_str()));
    let mut tally = Tally::default();
    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                Some(Ok(t)) => tally.merge(t),
                Some(Err(e)) => {
                    tally.first_error.get_or_insert(format!("a benchmark worker failed: {e}"));
                }
                None => break,
            },
            _ = ticker.tick() => {
                let elapsed = started.elapsed().min(duration);
                bar.set_position(elapsed.as_secs());
                let ops = done.load(Ordering::Relaxed);
                let rate = ops as f64 / elapsed.as_secs_f64().max(0.001);
                bar.set_message(format!("bench {}: {ops} ops, {rate:.0}/s", args.mix.as_str()));
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    (tally, elapsed)
}

/// One worker: sends one operation after another until `deadline`.
async fn worker(
    target: &Target,
    services: &[String],
    mix: Mix,
    deadline: Instant,
    done: &AtomicU64,
) -> Tally {
    let mut tally = Tally::default();
    let mut rng = rand::rngs::StdRng::from_entropy();
    while Instant::now() < deadline {
        let op = Op::pick(mix, &mut rng);
        let service = &services[rng.gen_range(0..services.len())];
        let instance = rng.gen_range(0..INSTANCES_PER_SERVICE);
        let started = Instant::now();
        let result = match op {
            Op::Register => {
                let body = register_body(instance);
                let tail = format!("{service}/instances/i{instance}");
                target.send(Method::PUT, &tail, Some(&body)).await
            }
            Op::Discover => target.send(Method::GET, service, None).await,
            Op::Report => {
                let body = report_body(&mut rng);
                let tail = format!("{service}/instances/i{instance}/status");
                target.send(Method::PUT, &tail, Some(&body)).await
            }
        };
        match result {
            Ok(()) => {
                let micros = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
                tally.latencies[op as usize].push(micros);
                done.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tally.errors[op as usize] += 1;
                if tally.first_error.is_none() {
                    tally.first_error = Some(format!("{}: {}", op.name(), e.message("the agent")));
                }
            }
        }
    }
    tally
}

fn summarize(agent: &str, args: &BenchArgs, mut tally: Tally, elapsed: f64) -> Summary {
    let secs = elapsed.max(0.001);
    let mut operations = Vec::new();
    let mut all: Vec<u32> = Vec::new();
    for op in OPS {
        let lat = &mut tally.latencies[op as usize];
        let errors = tally.errors[op as usize];
        if lat.is_empty() && errors == 0 {
            continue;
        }
        lat.sort_unstable();
        all.extend_from_slice(lat);
        operations.push(OpSummary {
            op: op.name().to_string(),
            ops: lat.len() as u64,
            errors,
            ops_per_sec: lat.len() as f64 / secs,
            latency_ms: Percentiles::of_sorted(lat),
        });
    }
    all.sort_unstable();
    let ops = all.len() as u64;
    let errors = tally.errors.iter().sum();
    Summary {
        agent: agent.to_string(),
        mix: args.mix,
        concurrency: args.concurrency,
        services: args.services,
        duration_secs: elapsed,
        ops,
        errors,
        ops_per_sec: ops as f64 / secs,
        latency_ms: Percentiles::of_sorted(&all),
        operations,
        first_error: tally.first_error,
    }
}

fn print_summary(summary: &Summary, format: OutputFormat) -> Result<(), Failure> {
    match format {
        OutputFormat::Json => {
            let value = serde_json::to_value(summary)
                .map_err(|e| Failure::Failed(format!("cannot format JSON: {e}")))?;
            output::print_json(&value)
        }
        OutputFormat::Table => output::print(&summary_table(summary)),
    }
}

/// The summary for people: one row per operation kind, then the total.
fn summary_table(summary: &Summary) -> String {
    let mut table = output::table(
        &["op", "ops", "errors", "ops/s", "p50", "p90", "p99", "max"],
        &[1, 2, 3, 4, 5, 6, 7],
    );
    let ms = |x: f64| format!("{x:.2}ms");
    let mut row = |s: &OpSummary| {
        table.add_row(vec![
            Cell::new(&s.op),
            Cell::new(s.ops),
            Cell::new(s.errors),
            Cell::new(format!("{:.0}", s.ops_per_sec)),
            Cell::new(ms(s.latency_ms.p50)),
            Cell::new(ms(s.latency_ms.p90)),
            Cell::new(ms(s.latency_ms.p99)),
            Cell::new(ms(s.latency_ms.max)),
        ]);
    };
    for s in &summary.operations {
        row(s);
    }
    if summary.operations.len() > 1 {
        row(&OpSummary {
            op: "total".into(),
            ops: summary.ops,
            errors: summary.errors,
            ops_per_sec: summary.ops_per_sec,
            latency_ms: summary.latency_ms.clone(),
        });
    }
    let mut text = format!(
        "{} mix against {}: {} workers, {} services x {} instances, {:.1}s\n",
        summary.mix.as_str(),
        summary.agent,
        summary.concurrency,
        summary.services,
        INSTANCES_PER_SERVICE,
        summary.duration_secs
    );
    text.push_str(&output::render(&table));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u32> = (1..=100).map(|x| x * 1000).collect();
        let p = Percentiles::of_sorted(&v);
        assert_eq!(p.p50, 50.0);
        assert_eq!(p.p90, 90.0);
        assert_eq!(p.p99, 99.0);
        assert_eq!(p.max, 100.0);
        assert_eq!(Percentiles::of_sorted(&[]).p99, 0.0);
        assert_eq!(Percentiles::of_sorted(&[1500]).p50, 1.5);
    }

    #[test]
    fn mixed_sends_every_kind_mostly_discover() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut counts = [0u32; 3];
        for _ in 0..10_000 {
            counts[Op::pick(Mix::Mixed, &mut rng) as usize] += 1;
        }
        assert!(counts[Op::Discover as usize] > counts[Op::Report as usize]);
        assert!(counts[Op::Report as usize] > counts[Op::Register as usize]);
        assert!(counts[Op::Register as usize] > 0);
        assert_eq!(Op::pick(Mix::Report, &mut rng), Op::Report);
    }

    #[test]
    fn durations_below_a_second_are_refused() {
        assert_eq!(parse_bench_duration("2s"), Ok(2));
        assert!(parse_bench_duration("0").is_err());
        assert!(parse_bench_duration("fast").is_err());
    }

    #[test]
    fn the_table_has_a_total_row_for_mixes() {
        let mut tally = Tally::default();
        tally.latencies[Op::Discover as usize] = vec![1000, 2000];
        tally.latencies[Op::Register as usize] = vec![3000];
        let args = BenchArgs {
            mix: Mix::Mixed,
            concurrency: 2,
            duration: 1,
            services: 1,
            keep: false,
        };
        let s = summarize("http://a:1", &args, tally, 1.0);
        assert_eq!(s.ops, 3);
        let text = summary_table(&s);
        assert!(text.contains("TOTAL") || text.contains("total"), "{text}");
        assert!(
            text.contains("discover") && text.contains("register"),
            "{text}"
        );
    }
}
