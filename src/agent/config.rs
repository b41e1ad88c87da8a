//! The agent's validated configuration, built by the CLI from flags, environment and file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How the agent enters a ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Start a new ring with this node as its only member.
    Create,
    /// Join the ring that the member at this ring address (`HOST:PORT`) belongs to.
    Join(String),
}

/// Everything an agent needs to run; see API.md for the meaning of each flag.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Create a ring or join one.
    pub start: Start,
    /// Ring RPC listen address (port 0: any free port).
    pub bind: SocketAddr,
    /// The ring address other nodes dial; defaults to the bound address.
    pub advertise: Option<String>,
    /// HTTP API listen address (port 0: any free port).
    pub http: SocketAddr,
    /// Embedded store directory; `None`: a per-node directory under the user's data directory.
    pub data_dir: Option<PathBuf>,
    /// Use Redis at this URL instead of the embedded store.
    pub redis: Option<String>,
    /// Copies of every record, owner included.
    pub replicas: usize,
    /// Successor-list length.
    pub successors: usize,
    /// Shared secret every ring member must prove.
    pub cluster_secret: Option<String>,
    /// Bearer token the HTTP API requires on every route but /healthz.
    pub api_token: Option<String>,
    /// How often stabilize, fix-fingers and check-predecessor run.
    pub stabilize_interval: Duration,
    /// The deadline of one ring RPC call; a peer silent for longer is suspected dead.
    pub rpc_timeout: Duration,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            start: Start::Create,
            bind: SocketAddr::from(([127, 0, 0, 1], 7400)),
            advertise: None,
            http: SocketAddr::from(([127, 0, 0, 1], 7500)),
            data_dir: None,
            redis: None,
            replicas: 3,
            successors: 8,
            cluster_secret: None,
            api_token: None,
            stabilize_interval: Duration::from_millis(500),
            rpc_timeout: Duration::from_millis(1000),
        }
    }
}
