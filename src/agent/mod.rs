//! The agent: wires store, ring, RPC and HTTP together; owns start-up and shutdown.

pub mod config;

pub use config::{AgentConfig, Start};

/// Run an agent in the foreground until SIGINT/SIGTERM or `POST /v1/agent/leave`, then leave
/// the ring gracefully. Prints the bound addresses on stdout once serving.
pub async fn run(config: AgentConfig) -> crate::Result<()> {
    let _ = config;
    Err(crate::Error::internal("agent not implemented yet"))
}

/// Run `nodes` agents in this process on loopback port 0 with embedded stores in a temporary
/// directory (`chordctl agent dev`), until Ctrl-C.
pub async fn run_dev(nodes: usize, base: AgentConfig) -> crate::Result<()> {
    let _ = (nodes, base);
    Err(crate::Error::internal("agent dev not implemented yet"))
}
