//! The agent's validated configuration, built by the CLI from flags, environment and file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `--dns-domain`'s default.
pub const DEFAULT_DNS_DOMAIN: &str = "chord";

/// `--dns-ttl`'s default.
pub const DEFAULT_DNS_TTL: Duration = Duration::from_secs(5);

/// How the agent enters a ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Start a new ring with this node as its only member.
    Create,
    /// Join the ring that the member at this ring address (`HOST:PORT`) belongs to.
    Join(String),
}

/// Everything an agent needs to run; see API.md for the meaning of each flag.
///
/// `Debug` masks the cluster secret, the API token and the Redis URL (which may hold a
/// password), so that printing a configuration can never leak them.
#[derive(Clone)]
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
    /// Copies (owner included) durable before a write is acknowledged; `None`: a majority
    /// of `replicas` (see [`AgentConfig::quorum`]).
    pub write_quorum: Option<usize>,
    /// Successor-list length.
    pub successors: usize,
    /// Shared secret every ring member must prove.
    pub cluster_secret: Option<String>,
    /// Bearer token the HTTP API requires on every route but /healthz and the web view (/ui).
    pub api_token: Option<String>,
    /// How often stabilize, fix-fingers and check-predecessor run.
    pub stabilize_interval: Duration,
    /// The deadline of one ring RPC call; a peer silent for longer is suspected dead.
    pub rpc_timeout: Duration,
    /// Watchers (change streams and blocking queries) this agent serves at once; more get 429.
    pub max_watchers: usize,
    /// `--tls-cert`, `--tls-key`, `--tls-ca`: TLS on both ports, mutual on the ring port.
    pub tls: Option<crate::tls::TlsFiles>,
    /// `--http-verify-clients`: require client certificates on the HTTP port too.
    pub http_verify_clients: bool,
    /// `--dns`: serve DNS on UDP and TCP at this address (port 0: any free port); off when
    /// `None`.
    pub dns: Option<SocketAddr>,
    /// `--dns-domain`: the zone answered, `SERVICE.service.DOMAIN.`.
    pub dns_domain: String,
    /// `--dns-ttl`: the TTL of every DNS record.
    pub dns_ttl: Duration,
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let masked = |v: &Option<String>| v.as_ref().map(|_| "<masked>");
        f.debug_struct("AgentConfig")
            .field("start", &self.start)
            .field("bind", &self.bind)
            .field("advertise", &self.advertise)
            .field("http", &self.http)
            .field("data_dir", &self.data_dir)
            .field("redis", &masked(&self.redis))
            .field("replicas", &self.replicas)
            .field("write_quorum", &self.write_quorum)
            .field("successors", &self.successors)
            .field("cluster_secret", &masked(&self.cluster_secret))
            .field("api_token", &masked(&self.api_token))
            .field("stabilize_interval", &self.stabilize_interval)
            .field("rpc_timeout", &self.rpc_timeout)
            .field("max_watchers", &self.max_watchers)
            .field("tls", &self.tls)
            .field("http_verify_clients", &self.http_verify_clients)
            .field("dns", &self.dns)
            .field("dns_domain", &self.dns_domain)
            .field("dns_ttl", &self.dns_ttl)
            .finish()
    }
}

impl AgentConfig {
    /// The write quorum W: copies, owner included, durable before a write is acknowledged.
    /// `--write-quorum` when given, else a majority of K (K = 1 → 1, 2 → 2, 3 → 2, 5 → 3).
    pub fn quorum(&self) -> usize {
        self.write_quorum
            .unwrap_or_else(|| crate::registry::unit::majority(self.replicas))
            .clamp(1, self.replicas.max(1))
    }
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
            write_quorum: None,
            successors: 8,
            cluster_secret: None,
            api_token: None,
            stabilize_interval: Duration::from_millis(500),
            rpc_timeout: Duration::from_millis(1000),
            max_watchers: crate::agent::watch::MAX_WATCHERS,
            tls: None,
            http_verify_clients: false,
            dns: None,
            dns_domain: DEFAULT_DNS_DOMAIN.to_string(),
            dns_ttl: DEFAULT_DNS_TTL,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_masks_secrets() {
        let config = AgentConfig {
            cluster_secret: Some("s3cret-ring".into()),
            api_token: Some("t0ken-api".into()),
            redis: Some("redis://:pw@host:6379/0".into()),
            ..AgentConfig::default()
        };
        let text = format!("{config:?}");
        for secret in ["s3cret-ring", "t0ken-api", ":pw@"] {
            assert!(!text.contains(secret), "{text}");
        }
        assert!(text.contains("<masked>"), "{text}");
    }
}
