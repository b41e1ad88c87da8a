//! chordctl: a service registry whose data lives on a Chord ring.
//!
//! Module map (docs/ARCHITECTURE.md has the path of a request through them):
//!
//! - [`cli`]: the `chordctl` command line: clap definitions, client commands, output formatting.
//! - [`agent`]: wires store, ring, RPC and HTTP together; start-up and graceful shutdown.
//! - [`ring`]: Chord itself as a state machine without I/O: identifiers, fingers, successor
//!   list, stabilization, lookups. Driven by the agent over TCP and by the simulator in tests.
//! - [`rpc`]: ring RPC between agents: typed messages, framing, server, pooled client.
//! - [`http`]: the HTTP API (v1 and the prototype-compatible routes).
//! - [`dns`]: the DNS interface (`--dns`): answers built without I/O from a local view of each
//!   service asked about, kept current by the agent's watch subscriptions; hickory's server.
//! - [`registry`]: the service model: instances, status, TTL health, picking strategies.
//! - [`store`]: `trait Store` and its backends (embedded redb, Redis).
//! - [`tls`]: TLS on both ports (rustls), certificate reloads, `chordctl tls ... create`.

pub mod agent;
pub mod cli;
pub mod dns;
pub mod error;
pub mod http;
pub mod registry;
pub mod ring;
pub mod rpc;
pub mod store;
pub mod tls;

pub use error::{Error, Result};

#[cfg(test)]
pub(crate) mod testing;
