//! `TestCluster`: N agents in this test process on 127.0.0.1 port 0, real sockets, and helpers
//! to wait (polling with a deadline) until the ring has settled.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chordctl::agent::{self, AgentConfig, AgentHandle, Start};
use chordctl::ring::invariants::{self, View};
use chordctl::ring::Id;

/// Generous: CI machines are small and noisy.
pub const SETTLE_DEADLINE: Duration = Duration::from_secs(60);

/// Fast maintenance so that tests settle in a second or two; the store in `dir`.
pub fn test_config(start: Start, dir: &std::path::Path) -> AgentConfig {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    AgentConfig {
        start,
        data_dir: Some(dir.to_path_buf()),
        bind: any,
        http: any,
        stabilize_interval: Duration::from_millis(100),
        rpc_timeout: Duration::from_millis(500),
        ..AgentConfig::default()
    }
}

/// [`test_config`] for a new ring's first agent on the Redis server at `redis` (a URL), its
/// other files in `dir`.
pub fn redis_config(redis: &str, dir: &std::path::Path) -> AgentConfig {
    AgentConfig {
        redis: Some(redis.to_string()),
        ..test_config(Start::Create, dir)
    }
}

/// Changes every agent's configuration before it starts (e.g. a cluster secret).
pub type Configure = std::sync::Arc<dyn Fn(&mut AgentConfig) + Send + Sync>;

/// Agents in one process. Slots of stopped agents hold `None`.
pub struct TestCluster {
    pub nodes: Vec<Option<AgentHandle>>,
    /// Data directories, one per node index, removed on drop.
    pub tmp: tempfile::TempDir,
    /// Applied to [`test_config`] for every agent started, joins included.
    pub configure: Configure,
}

impl TestCluster {
    /// Start `n` agents: the first creates the ring, the others join through it.
    pub async fn start(n: usize) -> TestCluster {
        TestCluster::start_with(n, std::sync::Arc::new(|_: &mut AgentConfig| {})).await
    }

    /// Start `n` agents whose configurations `configure` adjusts (secret, token, …).
    pub async fn start_with(n: usize, configure: Configure) -> TestCluster {
        let mut c = TestCluster {
            nodes: Vec::new(),
            tmp: tempfile::tempdir().expect("temporary directory"),
            configure,
        };
        let dir = c.dir(0);
        let first = agent::start(c.config(Start::Create, &dir))
            .await
            .expect("first agent starts");
        c.nodes.push(Some(first));
        for _ in 1..n {
            c.join().await;
        }
        c
    }

    /// A live agent's ring address, to join through.
    pub fn seed(&self) -> String {
        self.live()
            .next()
            .map(|h| h.node().addr)
            .expect("a live agent")
    }

    /// Start one more agent joining through a live one; returns its index.
    pub async fn join(&mut self) -> usize {
        let seed = self.seed();
        let dir = self.dir(self.nodes.len());
        let h = agent::start(self.config(Start::Join(seed), &dir))
            .await
            .expect("agent joins");
        self.nodes.push(Some(h));
        self.nodes.len() - 1
    }

    /// The configuration of a new agent of this cluster.
    pub fn config(&self, start: Start, dir: &std::path::Path) -> AgentConfig {
        let mut config = test_config(start, dir);
        (self.configure)(&mut config);
        config
    }

    /// The data directory of node index `i`.
    pub fn dir(&self, i: usize) -> std::path::PathBuf {
        self.tmp.path().join(format!("node-{i}"))
    }

    /// A live agent by index.
    pub fn node(&self, i: usize) -> &AgentHandle {
        self.nodes[i].as_ref().expect("a live agent at that index")
    }

    /// The HTTP base URL of live agent `i`.
    pub fn url(&self, i: usize) -> String {
        format!("http://{}", self.node(i).http_addr())
    }

    pub fn live(&self) -> impl Iterator<Item = &AgentHandle> {
        self.nodes.iter().flatten()
    }

    pub fn live_ids(&self) -> Vec<Id> {
        let mut ids: Vec<Id> = self.live().map(|h| h.node().id).collect();
        ids.sort();
        ids
    }

    /// Crash agent `i` (no leave).
    pub async fn kill(&mut self, i: usize) {
        if let Some(h) = self.nodes[i].take() {
            h.kill().await;
        }
    }

    /// Graceful leave of agent `i`.
    pub async fn leave(&mut self, i: usize) {
        if let Some(h) = self.nodes[i].take() {
            h.shutdown().await;
        }
    }

    /// The invariants, with "converged" (every pointer exact) over the live agents.
    pub fn check(&self) -> Result<(), String> {
        let views: Vec<View> = self.live().map(|h| h.agent().ring.read(View::of)).collect();
        let r = self
            .live()
            .next()
            .map(|h| h.agent().config.successors)
            .unwrap_or(8);
        invariants::check(&views, r, true)
    }

    /// Poll until the ring has converged over the live agents.
    pub async fn settle(&self) {
        let start = Instant::now();
        loop {
            match self.check() {
                Ok(()) => return,
                Err(e) if start.elapsed() > SETTLE_DEADLINE => {
                    panic!(
                        "ring did not settle within {SETTLE_DEADLINE:?}: {e}; live: {:?}",
                        self.live_ids()
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// The true owner of `key`: the first live node at or after its identifier.
    pub fn true_owner(&self, key: &Id) -> Id {
        let ids = self.live_ids();
        ids.iter()
            .find(|id| *id >= key)
            .or(ids.first())
            .copied()
            .expect("a live node")
    }
}

/// Keys for lookup checks.
pub fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("service-{i}")).collect()
}
