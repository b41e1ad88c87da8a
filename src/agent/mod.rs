//! The agent: wires store, ring, RPC and HTTP together; owns start-up and shutdown.
//!
//! Start-up: bind both listeners (port 0 works), build the ring state machine for the
//! advertised address, start the RPC server, create or join the ring, then serve HTTP.
//! Shutdown: on SIGINT/SIGTERM or `POST /v1/agent/leave`, leave the ring gracefully (tell the
//! neighbours), stop the servers, return.

pub mod config;
pub mod deadlines;
pub mod fanout;
pub mod metrics;
pub mod progress;
pub mod registry;
pub mod ring;
pub mod watch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::ring::{Chord, Config as RingConfig, NodeRef};
use crate::rpc::{self, Pool, Request, Response};
use crate::{Error, Result};

pub use config::{AgentConfig, Start};
pub use metrics::Metrics;
use metrics::SyncRound;
pub use progress::Progress;
pub use registry::Registry;
pub use ring::RingDriver;

/// How long a join may take before the agent gives up.
pub const JOIN_DEADLINE: Duration = Duration::from_secs(10);

/// How long a graceful leave waits for the neighbours to acknowledge.
pub const LEAVE_DEADLINE: Duration = Duration::from_secs(5);

/// One running agent's shared state.
pub struct Agent {
    /// The configuration it was started with.
    pub config: AgentConfig,
    /// The ring side.
    pub ring: Arc<RingDriver>,
    /// The registry side.
    pub registry: Arc<Registry>,
    /// What `GET /metrics` reports.
    pub metrics: Arc<Metrics>,
    /// The watchers of this agent and the services it follows for them.
    pub hub: Arc<watch::Hub>,
    /// The TLS material of both ports (`--tls-*`), reloaded when its files change.
    pub tls: Option<Arc<crate::tls::Tls>>,
    /// Cancelled to stop every task at once (crash or after leaving).
    stop: CancellationToken,
    /// Cancelled when someone asks the agent to leave (HTTP or signal).
    leave: CancellationToken,
}

impl Agent {
    /// Cancelled when the agent stops (crash or after leaving): long-lived answers end then.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Ask the agent to leave the ring gracefully and exit.
    pub fn request_leave(&self) {
        self.leave.cancel();
    }
}

struct RpcHandler(Arc<Agent>);

#[async_trait]
impl rpc::Handler for RpcHandler {
    async fn handle(&self, req: Request) -> Response {
        match req {
            Request::Ring(r) => Response::Ring(self.0.ring.handle(r)),
            Request::Registry(req) => match self.0.registry.handle_local(req).await {
                Ok(answer) => Response::Registry(answer),
                Err(e) => Response::Error(e),
            },
        }
    }

    fn connection_refused(&self) {
        self.0.metrics.rpc_connection_refused();
    }
}

/// A started agent, for `run`, `agent dev` and tests.
pub struct AgentHandle {
    agent: Arc<Agent>,
    ring_addr: SocketAddr,
    http_addr: SocketAddr,
    dns_addr: Option<SocketAddr>,
    tasks: JoinSet<()>,
    progress: Progress,
}

impl AgentHandle {
    /// The bound ring RPC address.
    pub fn ring_addr(&self) -> SocketAddr {
        self.ring_addr
    }
    /// The bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }
    /// The bound DNS address (UDP and TCP), when `--dns` is on.
    pub fn dns_addr(&self) -> Option<SocketAddr> {
        self.dns_addr
    }
    /// This node as others see it.
    pub fn node(&self) -> NodeRef {
        self.agent.ring.me()
    }
    /// The shared state.
    pub fn agent(&self) -> &Arc<Agent> {
        &self.agent
    }
    /// Resolves when someone asked the agent to leave.
    pub async fn leave_requested(&self) {
        self.agent.leave.cancelled().await
    }

    /// Leave gracefully (records handed to the successor first), then stop every task.
    pub async fn shutdown(mut self) {
        if let Err(e) = self.agent.registry.hand_off_all(&self.progress).await {
            tracing::error!("handing records over before leaving failed: {e}");
        }
        (self.progress)(progress::Step::Finished);
        self.agent.ring.leave(LEAVE_DEADLINE).await;
        self.agent.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }

    /// Stop at once without telling anyone, as a crash would (in-process tests).
    pub async fn kill(mut self) {
        self.agent.stop.cancel();
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// A file-size limit (`ulimit -f`) or a full quota must make a store write fail with an error
/// (answered 503), not kill the agent with SIGXFSZ.
fn ignore_file_size_signal() {
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

/// Raise the soft limit on open files to the hard one (at most 65,536): every watcher holds an
/// HTTP connection, and the usual soft limit of 1,024 would refuse most of them.
pub fn raise_open_files_limit() {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we pass; setrlimit reads it.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return;
            }
            let want = lim.rlim_max.min(65_536);
            if lim.rlim_cur < want {
                lim.rlim_cur = want;
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    tracing::debug!("could not raise the open-files limit");
                }
            }
        }
    }
}

/// Bind, start serving, create or join the ring. Returns once the node is a member.
pub async fn start(config: AgentConfig) -> Result<AgentHandle> {
    start_with_progress(config, progress::quiet()).await
}

/// [`start`], reporting the join and, later, the leave of [`AgentHandle::shutdown`] to
/// `progress`.
pub async fn start_with_progress(config: AgentConfig, progress: Progress) -> Result<AgentHandle> {
    ignore_file_size_signal();
    raise_open_files_limit();
    let ring_listener = TcpListener::bind(config.bind)
        .await
        .map_err(|e| Error::invalid(format!("cannot bind ring address {}: {e}", config.bind)))?;
    let http_listener = TcpListener::bind(config.http)
        .await
        .map_err(|e| Error::invalid(format!("cannot bind HTTP address {}: {e}", config.http)))?;
    // The zone is checked and the DNS port bound before anything starts: a bad --dns fails
    // the start like a bad --http.
    let dns = match config.dns {
        Some(addr) => {
            let zone = crate::dns::Zone::new(&config.dns_domain, config.dns_ttl)
                .map_err(Error::invalid)?;
            Some((zone, crate::dns::server::bind(addr).await?))
        }
        None => None,
    };
    let dns_addr = dns.as_ref().map(|(_, (_, _, addr))| *addr);
    let ring_addr = ring_listener
        .local_addr()
        .map_err(|e| Error::internal(e.to_string()))?;
    let http_addr = http_listener
        .local_addr()
        .map_err(|e| Error::internal(e.to_string()))?;
    let advertise = config
        .advertise
        .clone()
        .unwrap_or_else(|| ring_addr.to_string());
    let me = NodeRef::new(advertise, http_addr.to_string());
    let stabilize_ms = config.stabilize_interval.as_millis().max(10) as u64;
    let ring_cfg = RingConfig {
        successors: config.successors.max(1),
        stabilize_ms,
        fix_fingers_ms: (stabilize_ms / 2).max(5),
        check_predecessor_ms: stabilize_ms,
        merge_check_ms: stabilize_ms * 10,
    };
    let data_dir = match &config.data_dir {
        Some(d) => d.clone(),
        None => default_data_dir(&me.addr),
    };
    let metrics = Metrics::new();
    let store = crate::store::open(config.redis.as_deref(), &data_dir, &me.id.to_hex()).await?;
    let store = metrics::MeteredStore::wrap(store, metrics.clone());
    let stop = CancellationToken::new();
    let secret = config
        .cluster_secret
        .as_deref()
        .map(rpc::ClusterSecret::new);
    if secret.is_none() {
        tracing::info!("no --cluster-secret: ring RPC is unauthenticated (see docs/SECURITY.md)");
    }
    let tls = match &config.tls {
        Some(files) => Some(crate::tls::Tls::load(
            files.clone(),
            config.http_verify_clients,
        )?),
        None => None,
    };
    let pool = Arc::new(Pool::with_security(
        config.rpc_timeout,
        secret.clone(),
        tls.clone(),
    ));
    let ring = RingDriver::new(
        Chord::new(me, ring_cfg),
        pool,
        stop.clone(),
        metrics.clone(),
    );
    let registry = Registry::new(ring.clone(), store, config.replicas, config.quorum());
    // A store written by 0.1.0 (one record per service) is converted before anything is served.
    registry.upgrade_store().await?;
    // A joining node answers for its keys only once it has taken them over.
    registry.set_ready(matches!(config.start, Start::Create));
    let agent = Arc::new(Agent {
        config: config.clone(),
        ring: ring.clone(),
        registry: registry.clone(),
        hub: watch::Hub::new(
            registry.clone(),
            metrics.clone(),
            config.max_watchers,
            stop.clone(),
        ),
        metrics,
        tls: tls.clone(),
        stop: stop.clone(),
        leave: CancellationToken::new(),
    });
    let mut tasks = JoinSet::new();
    tasks.spawn(rpc::serve_with(
        ring_listener,
        Arc::new(RpcHandler(agent.clone())),
        rpc::Security {
            secret,
            tls: tls.clone(),
        },
        rpc::Limits::default(),
        stop.clone(),
    ));
    if let Some(tls) = &tls {
        tasks.spawn(tls.clone().watch(stop.clone()));
    }
    // The heartbeat from here on: a join that takes a while is not a pause.
    tasks.spawn(keep_awake(agent.clone()));
    let slack = Duration::from_millis((stabilize_ms / 10).clamp(1, 50));
    tasks.spawn(ring.clone().run_ticker(slack));
    if let Ok(path) = std::env::var(CUT_FILE_ENV) {
        tasks.spawn(follow_cut_file(ring.clone(), path.into(), stop.clone()));
    }
    let joined = match &config.start {
        Start::Create => {
            ring.with(|c| c.create());
            Ok(())
        }
        Start::Join(seed) => {
            progress(progress::Step::Joining { seed: seed.clone() });
            ring.join(seed, JOIN_DEADLINE).await
        }
    };
    if let Err(e) = joined {
        progress(progress::Step::Finished);
        stop.cancel();
        tasks.abort_all();
        return Err(e);
    }
    if matches!(config.start, Start::Join(_)) {
        progress(progress::Step::Joined);
        take_records(&registry, config.rpc_timeout, &progress, &stop).await;
        registry.set_ready(true);
        progress(progress::Step::Finished);
    }
    tasks.spawn(watch_ring(agent.clone()));
    tasks.spawn(sweep_ttls(agent.clone()));
    tasks.spawn(anti_entropy(agent.clone()));
    tasks.spawn(crate::http::serve(
        http_listener,
        agent.clone(),
        stop.clone(),
    ));
    if let Some((zone, (udp, tcp, _))) = dns {
        tasks.spawn(crate::dns::serve(agent.clone(), zone, udp, tcp));
    }
    Ok(AgentHandle {
        agent,
        ring_addr,
        http_addr,
        dns_addr,
        tasks,
        progress,
    })
}

/// Run an agent in the foreground until SIGINT/SIGTERM or `POST /v1/agent/leave`, then leave
/// the ring gracefully. Prints the bound addresses on stdout once serving.
pub async fn run(config: AgentConfig) -> Result<()> {
    run_with_progress(config, progress::quiet()).await
}

/// [`run`], reporting joining and leaving to `progress` (the CLI draws it on a terminal).
pub async fn run_with_progress(config: AgentConfig, progress: Progress) -> Result<()> {
    let handle = start_with_progress(config, progress).await?;
    let dns = handle
        .dns_addr()
        .map(|a| format!(" dns={a}"))
        .unwrap_or_default();
    println!(
        "chordctl agent {} serving: ring={} http={}{dns}",
        handle.node().id,
        handle.node().addr,
        handle.http_addr()
    );
    tokio::select! {
        _ = shutdown_signal() => tracing::info!("signal received; leaving the ring"),
        _ = handle.leave_requested() => tracing::info!("leave requested; leaving the ring"),
    }
    handle.shutdown().await;
    Ok(())
}

/// One node of `agent dev`, as it announces it.
#[derive(Debug, Clone)]
pub struct DevNode {
    /// The node's identifier (hex).
    pub id: String,
    /// Its ring address.
    pub ring: String,
    /// Its HTTP address.
    pub http: SocketAddr,
    /// Its DNS address (UDP and TCP).
    pub dns: Option<SocketAddr>,
}

/// What `agent dev` has started, for the CLI to print once the ring has settled.
#[derive(Debug, Clone)]
pub struct DevRing {
    /// The nodes, in the order they started.
    pub nodes: Vec<DevNode>,
    /// Where their stores are (removed on exit).
    pub data_dir: std::path::PathBuf,
    /// `https` with `--tls`, else `http`.
    pub scheme: &'static str,
    /// With `--tls`: the CA, the client certificate and its key to use.
    pub client_tls: Option<(std::path::PathBuf, std::path::PathBuf, std::path::PathBuf)>,
    /// The DNS zone's domain.
    pub dns_domain: String,
}

/// Run `nodes` agents in this process on loopback port 0 with embedded stores in a temporary
/// directory (`chordctl agent dev`), each serving DNS on a free port, until Ctrl-C; `announce`
/// is shown what runs once the ring has settled. With `tls`, a fresh CA and certificates are
/// made there first, and the ring runs with TLS on both ports.
pub async fn run_dev(
    nodes: usize,
    tls: bool,
    base: AgentConfig,
    announce: impl FnOnce(&DevRing),
) -> Result<()> {
    let nodes = nodes.max(1);
    let tmp = tempfile::Builder::new()
        .prefix("chordctl-dev-")
        .tempdir()
        .map_err(|e| Error::internal(format!("cannot create a temporary directory: {e}")))?;
    let (base, client_tls) = match tls {
        false => (base, None),
        true => {
            let (files, (cert, key)) =
                crate::tls::create::dev_certificates(&tmp.path().join("tls"))
                    .map_err(Error::internal)?;
            let base = AgentConfig {
                tls: Some(files.clone()),
                ..base
            };
            (base, Some((files.ca, cert, key)))
        }
    };
    let mut handles: Vec<AgentHandle> = Vec::new();
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    for i in 0..nodes {
        let how = match handles.first() {
            None => Start::Create,
            Some(first) => Start::Join(first.node().addr),
        };
        let config = AgentConfig {
            start: how,
            bind: any,
            http: any,
            dns: Some(any),
            advertise: None,
            data_dir: Some(tmp.path().join(format!("node-{i}"))),
            redis: None,
            ..base.clone()
        };
        handles.push(start(config).await?);
    }
    wait_settled(&handles).await;
    announce(&DevRing {
        nodes: handles
            .iter()
            .map(|h| DevNode {
                id: h.node().id.to_hex(),
                ring: h.node().addr,
                http: h.http_addr(),
                dns: h.dns_addr(),
            })
            .collect(),
        data_dir: tmp.path().to_path_buf(),
        scheme: if tls { "https" } else { "http" },
        client_tls,
        dns_domain: base.dns_domain.clone(),
    });
    shutdown_signal().await;
    for h in handles.into_iter().rev() {
        h.shutdown().await;
    }
    Ok(())
}

/// The default embedded store directory: per node, under the user's data directory.
pub fn default_data_dir(advertise: &str) -> std::path::PathBuf {
    let base = dirs::data_dir().unwrap_or_else(std::env::temp_dir);
    let name: String = advertise
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    base.join("chordctl").join(name)
}

/// Take the records this node now owns from its successor (whoever that is at each attempt:
/// if it dies, its successor holds the copies), until it succeeds or the agent stops. Until
/// then the node answers "still taking over; retry" for its keys, never "not found": serving
/// its range without its records would hide acknowledged registrations. The first page's
/// deadline doubles with each failed attempt (up to [`TAKE_FIRST_PAGE_MAX`]): gathering a large
/// range can outlast an RPC deadline, and with a fixed one every attempt would give up before
/// the answer, for as long as the range stays that large.
async fn take_records(
    registry: &Arc<Registry>,
    rpc_timeout: Duration,
    progress: &Progress,
    stop: &CancellationToken,
) {
    let mut delay = Duration::from_millis(100);
    let mut first_page = rpc_timeout;
    for attempt in 1u64.. {
        match registry.take_from_successor(progress, first_page).await {
            Ok(_) => return,
            Err(e) => {
                if attempt % 10 == 0 {
                    tracing::error!(
                        attempt,
                        "could not take records from the successor yet (retrying): {e}"
                    );
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(1));
                first_page = (first_page * 2).min(TAKE_FIRST_PAGE_MAX.max(first_page));
            }
        }
    }
}

/// The longest a joiner waits for the first page of its range (see [`take_records`]).
pub const TAKE_FIRST_PAGE_MAX: Duration = Duration::from_secs(60);

/// React to ring events: when a node joins right before us, push what it now owns (writes
/// that reached us after it took its range).
async fn watch_ring(agent: Arc<Agent>) {
    let mut events = agent.ring.subscribe();
    loop {
        tokio::select! {
            _ = agent.stop.cancelled() => return,
            e = events.recv() => match e {
                Ok(crate::ring::Event::PredecessorChanged {
                    old: Some(old),
                    new: Some(new),
                }) if new.id.in_open(&old.id, &agent.ring.me().id) => {
                    let registry = agent.registry.clone();
                    tokio::spawn(async move {
                        if let Err(e) = registry.push_to_predecessor(&old, new).await {
                            tracing::warn!("pushing records to the new predecessor failed: {e}");
                        }
                    });
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return,
            }
        }
    }
}

/// Environment variable (tests only) naming a file of ring addresses, one per line, that this
/// agent must not call: how a fault campaign cuts real agent processes apart. A line
/// `delay MS` instead delays every ring call this agent makes by MS milliseconds (a slow
/// network). Reread every 100 ms; a missing or empty file cuts and delays nothing.
pub const CUT_FILE_ENV: &str = "CHORDCTL_TEST_CUT_FILE";

async fn follow_cut_file(ring: Arc<RingDriver>, path: std::path::PathBuf, stop: CancellationToken) {
    tracing::warn!(file = %path.display(), "ring traffic follows a test's cut file");
    let mut applied: Option<String> = None;
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if applied.as_deref() != Some(text.as_str()) {
            let mut delay = Duration::ZERO;
            let mut addrs: Vec<String> = Vec::new();
            for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
                match line
                    .strip_prefix("delay ")
                    .map(|ms| ms.trim().parse::<u64>())
                {
                    Some(Ok(ms)) => delay = Duration::from_millis(ms),
                    Some(Err(_)) => tracing::warn!(line, "test cut file: not a delay"),
                    None => addrs.push(line.to_string()),
                }
            }
            tracing::warn!(?addrs, ?delay, "test cut changed");
            ring.pool().set_blocked(addrs);
            ring.pool().set_delay(delay);
            applied = Some(text);
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// How often each node compares what it owns with its replicas.
pub const ANTI_ENTROPY_INTERVAL: Duration = Duration::from_secs(3);

/// Repair and anti-entropy: after any change of predecessor or successors (a join, a leave,
/// a crash), when the registry knows a replica may lack something (a failed replication
/// message), and every [`registry::FULL_SYNC_ROUNDS`]th round regardless, bring every replica
/// of what this node owns up to date. A round that compares nothing costs nothing: the
/// comparison scans what the node holds, which grows with the data.
async fn anti_entropy(agent: Arc<Agent>) {
    let mut events = agent.ring.subscribe();
    let mut interval = tokio::time::interval(ANTI_ENTROPY_INTERVAL);
    let mut quiet_rounds = 0;
    loop {
        let changed = tokio::select! {
            _ = agent.stop.cancelled() => return,
            _ = interval.tick() => false,
            e = events.recv() => match e {
                Ok(crate::ring::Event::PredecessorChanged { .. })
                | Ok(crate::ring::Event::SuccessorsChanged(_))
                | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    // Let a burst of changes settle before repairing once.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    while events.try_recv().is_ok() {}
                    true
                }
                Ok(_) => continue,
                Err(_) => return,
            }
        };
        let unsynced = agent.registry.take_unsynced();
        let why = if changed {
            SyncRound::RingChange
        } else if unsynced {
            SyncRound::Unsynced
        } else if quiet_rounds + 1 >= registry::FULL_SYNC_ROUNDS {
            SyncRound::Periodic
        } else {
            SyncRound::Idle
        };
        agent.ring.metrics().sync_round(why);
        if why != SyncRound::Idle {
            quiet_rounds = 0;
            match agent.registry.sync_replicas().await {
                Ok(n) if n > 0 => tracing::info!(count = n, "replicas repaired"),
                Ok(_) => {}
                Err(e) => {
                    agent.registry.mark_unsynced();
                    tracing::debug!("anti-entropy round skipped: {e}");
                }
            }
        } else {
            quiet_rounds += 1;
        }
        // Copies this node no longer keeps go back to their owners, then away.
        if let Err(e) = agent.registry.hand_back().await {
            tracing::debug!("hand-back round skipped: {e}");
        }
    }
}

async fn sweep_ttls(agent: Arc<Agent>) {
    let (registry, stop) = (&agent.registry, &agent.stop);
    let mut events = agent.ring.subscribe();
    loop {
        let swept = registry.sweep().await;
        if let Err(e) = &swept {
            tracing::debug!("TTL sweep skipped: {e}");
        }
        // At most one sweep per interval, then sleep until something is due: an idle agent
        // does not wake for nothing. A change of the ring (a new predecessor may hand this
        // node records) sweeps at once.
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(registry::SWEEP_INTERVAL) => {}
        }
        if swept.is_err() {
            continue;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = registry.sweep_due() => {}
            e = events.recv() => {
                if let Err(tokio::sync::broadcast::error::RecvError::Closed) = e {
                    return;
                }
            }
        }
    }
}

/// The heartbeat by which the registry notices that this process was paused.
async fn keep_awake(agent: Arc<Agent>) {
    let mut every = tokio::time::interval(registry::AWAKE_BEAT);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = agent.stop.cancelled() => return,
            _ = every.tick() => agent.registry.beat(),
        }
    }
}

/// Wait (bounded) until the in-process ring is whole — every node's successor list and
/// predecessor are exact — so that the ring is usable the moment `agent dev` says so.
async fn wait_settled(handles: &[AgentHandle]) {
    use crate::ring::invariants::{self, View};
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let views: Vec<View> = handles
            .iter()
            .map(|h| h.agent.ring.read(View::of))
            .collect();
        let r = handles
            .first()
            .map(|h| h.agent.config.successors)
            .unwrap_or(1);
        match invariants::check(&views, r, true) {
            Ok(()) => return,
            Err(e) if tokio::time::Instant::now() >= deadline => {
                tracing::warn!("the dev ring has not settled yet: {e}");
                return;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
