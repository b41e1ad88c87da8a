//! The clap definitions of every command, flag and environment variable (API.md, "The agent" and
//! "The client commands"), and the value parsers that turn bad input into usage errors (exit 2)
//! before anything runs.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand, ValueEnum};
use clap_complete::Shell;
use reqwest::Url;

use crate::registry::{State, Strategy};

/// Text shown at the end of `chordctl --help` and in the man page.
const AFTER_HELP: &str = "\
Exit status:
  0  success
  1  the request failed (the agent answered with an error) or a runtime failure
  2  usage error
  3  the agent could not be reached
  4  not found

Data goes to stdout; logs, progress and errors go to stderr. Agent logging follows RUST_LOG
(default \"info\"). Colors are used only when stdout is a terminal and NO_COLOR is unset.";

/// `chordctl`: a service registry whose data lives on a Chord ring.
///
/// One binary is both the agent (`chordctl agent ...`) and the operator's client (every other
/// command, which talks HTTP/JSON to one agent).
#[derive(Debug, Parser)]
#[command(
    name = "chordctl",
    version,
    about = "A service registry whose data lives on a Chord ring",
    long_about = "A service registry whose data lives on a Chord ring.\n\n\
        `chordctl agent` runs a member of the ring; every other command talks to one agent's \
        HTTP API, and any agent answers any request.",
    after_long_help = AFTER_HELP,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Options of the client commands.
    #[command(flatten)]
    pub global: GlobalOpts,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every client command takes; accepted before or after the subcommand.
#[derive(Debug, Args)]
#[command(next_help_heading = "Client options")]
pub struct GlobalOpts {
    /// The agent to talk to: a URL or HOST:PORT. Repeat it, or give a comma-separated list, to
    /// name fallbacks: they are tried in order when one cannot be reached (a read also moves
    /// on when an agent has not begun its answer within 3 s)
    #[arg(
        long,
        global = true,
        env = "CHORDCTL_AGENT",
        value_name = "URL",
        default_value = "http://127.0.0.1:7500",
        value_delimiter = ',',
        action = clap::ArgAction::Append,
        value_parser = parse_agent_url
    )]
    pub agent: Vec<Url>,

    /// Output format
    #[arg(
        short = 'o',
        long,
        global = true,
        env = "CHORDCTL_OUTPUT",
        value_name = "FMT",
        value_enum,
        default_value_t = OutputFormat::Table
    )]
    pub output: OutputFormat,

    /// Bearer token for an agent started with --api-token
    #[arg(
        long,
        global = true,
        env = "CHORDCTL_TOKEN",
        value_name = "T",
        hide_env_values = true
    )]
    pub token: Option<String>,

    /// CA certificate(s) (PEM) to verify https:// agents with
    #[arg(long, global = true, env = "CHORDCTL_CACERT", value_name = "FILE")]
    pub cacert: Option<PathBuf>,

    /// Client certificate (PEM) for agents that require one (--http-verify-clients)
    #[arg(
        long = "cert",
        id = "client_cert",
        global = true,
        env = "CHORDCTL_CERT",
        value_name = "FILE",
        requires = "client_key"
    )]
    pub cert: Option<PathBuf>,

    /// The private key (PEM) of --cert
    // Its id is not `key`: `locate KEY` has that one.
    #[arg(
        long = "key",
        id = "client_key",
        global = true,
        env = "CHORDCTL_KEY",
        value_name = "FILE",
        requires = "client_cert"
    )]
    pub key: Option<PathBuf>,
}

/// How client commands print their results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Tables for people.
    Table,
    /// The agent's JSON, pretty-printed, for scripts.
    Json,
}

/// The top-level commands.
// Parsed once per process: the size of the agent's options does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run an agent (a member of the ring) in the foreground
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Inspect the ring, or ask an agent to leave it
    #[command(subcommand)]
    Ring(RingCommand),
    /// Show the owner of KEY, its replicas, and the hops the lookup took
    Locate {
        /// Any key; a service record's key is the service name
        #[arg(value_parser = non_empty)]
        key: String,
    },
    /// Register, deregister, discover and list services
    #[command(subcommand)]
    Svc(SvcCommand),
    /// Report or query the call-quality status of service instances
    #[command(subcommand)]
    Status(StatusCommand),
    /// Load-test an agent: ops/s and latency percentiles of register, discover, report
    Bench(super::bench::BenchArgs),
    /// Make a CA and certificates for TLS (no agent needed)
    #[command(subcommand)]
    Tls(TlsCommand),
    /// Print a shell completion script to stdout
    Completions {
        /// The shell to generate for
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print the man page (roff) to stdout
    Man,
}

/// `chordctl tls ...`.
#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// The certificate authority
    #[command(subcommand)]
    Ca(TlsCaCommand),
    /// Certificates signed by the CA
    #[command(subcommand)]
    Cert(TlsCertCommand),
}

/// `chordctl tls ca ...`.
#[derive(Debug, Subcommand)]
pub enum TlsCaCommand {
    /// Make a CA: DIR/ca.pem and DIR/ca-key.pem (the key readable by its owner only)
    Create {
        /// Where to write the files
        #[arg(long, value_name = "DIR", default_value = ".")]
        dir: PathBuf,
        /// Days the CA is valid
        #[arg(long, value_name = "N", default_value_t = crate::tls::create::CA_DAYS,
              value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
    },
}

/// `chordctl tls cert ...`.
#[derive(Debug, Subcommand)]
pub enum TlsCertCommand {
    /// Make DIR/NAME.pem and DIR/NAME-key.pem signed by DIR's CA, usable as server and client
    /// certificate
    Create {
        /// The certificate's name (common name and file name)
        #[arg(value_name = "NAME")]
        name: String,
        /// Where the CA is and the files go
        #[arg(long, value_name = "DIR", default_value = ".")]
        dir: PathBuf,
        /// An IP address the certificate is valid for (repeatable)
        #[arg(long = "ip", value_name = "IP")]
        ips: Vec<std::net::IpAddr>,
        /// A DNS name the certificate is valid for (repeatable)
        #[arg(long = "dns", value_name = "NAME")]
        dns: Vec<String>,
        /// Days the certificate is valid
        #[arg(long, value_name = "N", default_value_t = crate::tls::create::CERT_DAYS,
              value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
    },
}

/// `chordctl agent ...`.
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Start a new ring with this node as its only member
    Create {
        /// Where this agent listens and keeps its data.
        #[command(flatten)]
        node: NodeOpts,
        /// Ring and API settings.
        #[command(flatten)]
        tuning: TuningOpts,
    },
    /// Join the ring that SEED (a member's ring address) is in
    Join {
        /// The ring address (HOST:PORT) of any member
        #[arg(value_name = "SEED", value_parser = parse_host_port)]
        seed: String,
        /// Where this agent listens and keeps its data.
        #[command(flatten)]
        node: NodeOpts,
        /// Ring and API settings.
        #[command(flatten)]
        tuning: TuningOpts,
    },
    /// Run a local N-node ring in one process on loopback, with embedded stores, for trying things
    Dev {
        /// How many nodes
        #[arg(long, value_name = "N", default_value_t = 3,
              value_parser = clap::value_parser!(u16).range(1..=64))]
        nodes: u16,
        /// Make a CA and certificates in the data directory and run the ring with TLS; prints
        /// the client flags to use
        #[arg(long)]
        tls: bool,
        /// Log at info level (the default is warnings only, so the table stays readable)
        #[arg(short, long)]
        verbose: bool,
        /// Ring and API settings shared by every node.
        #[command(flatten)]
        tuning: TuningOpts,
    },
}

/// Where one agent listens and keeps its data (not used by `agent dev`, which picks its own).
#[derive(Debug, Args)]
pub struct NodeOpts {
    /// Ring RPC listen address (port 0: any free port)
    #[arg(long, env = "CHORDCTL_BIND", value_name = "HOST:PORT",
          default_value = "127.0.0.1:7400", value_parser = parse_socket_addr)]
    pub bind: SocketAddr,

    /// Ring address other nodes dial [default: the bound address]
    #[arg(long, env = "CHORDCTL_ADVERTISE", value_name = "HOST:PORT",
          value_parser = parse_host_port)]
    pub advertise: Option<String>,

    /// HTTP API listen address (port 0: any free port)
    #[arg(long, env = "CHORDCTL_HTTP", value_name = "HOST:PORT",
          default_value = "127.0.0.1:7500", value_parser = parse_socket_addr)]
    pub http: SocketAddr,

    /// Serve DNS on UDP and TCP at this address (port 0: any free port); off unless given
    #[arg(long, env = "CHORDCTL_DNS", value_name = "HOST:PORT",
          value_parser = parse_socket_addr)]
    pub dns: Option<SocketAddr>,

    /// Embedded store directory (the default store)
    #[arg(long, env = "CHORDCTL_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Use Redis instead of the embedded store, e.g. redis://:secret@127.0.0.1:6379/0
    // Checked after merging, by `parse_redis_url`, so that clap never echoes a URL that may
    // hold a password.
    #[arg(
        long,
        env = "CHORDCTL_REDIS",
        value_name = "URL",
        hide_env_values = true
    )]
    pub redis: Option<String>,
}

/// Ring and API settings, shared by every way of running an agent.
#[derive(Debug, Args)]
pub struct TuningOpts {
    /// Read settings from this TOML file (keys like the long flags: bind, data_dir, ...)
    #[arg(long, env = "CHORDCTL_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Copies of every record, owner included
    #[arg(long, env = "CHORDCTL_REPLICAS", value_name = "K", default_value = "3",
          value_parser = parse_positive_usize)]
    pub replicas: usize,

    /// Copies (owner included) that must be durable before a write is acknowledged;
    /// default: a majority of K
    #[arg(long, env = "CHORDCTL_WRITE_QUORUM", value_name = "W",
          value_parser = parse_positive_usize)]
    pub write_quorum: Option<usize>,

    /// Successor-list length
    #[arg(long, env = "CHORDCTL_SUCCESSORS", value_name = "R", default_value = "8",
          value_parser = parse_positive_usize)]
    pub successors: usize,

    /// Shared secret every ring member must prove
    #[arg(
        long,
        env = "CHORDCTL_CLUSTER_SECRET",
        value_name = "S",
        hide_env_values = true
    )]
    pub cluster_secret: Option<String>,

    /// Bearer token the HTTP API requires on every route but /healthz and the web view (/ui)
    #[arg(
        long,
        env = "CHORDCTL_API_TOKEN",
        value_name = "T",
        hide_env_values = true
    )]
    pub api_token: Option<String>,

    /// Milliseconds between stabilize rounds
    #[arg(long, env = "CHORDCTL_STABILIZE_MS", value_name = "MS", default_value = "500",
          value_parser = parse_positive_u64)]
    pub stabilize_ms: u64,

    /// Deadline of one ring RPC call, in milliseconds
    #[arg(long, env = "CHORDCTL_RPC_TIMEOUT_MS", value_name = "MS", default_value = "1000",
          value_parser = parse_positive_u64)]
    pub rpc_timeout_ms: u64,

    /// This node's certificate (PEM): with --tls-key and --tls-ca, both ports speak TLS and
    /// ring peers must present a certificate signed by the CA. Reread when it changes
    #[arg(long, env = "CHORDCTL_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM)
    #[arg(long, env = "CHORDCTL_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// The CA certificate(s) (PEM) that ring peers' and HTTP clients' certificates must be
    /// signed by
    #[arg(long, env = "CHORDCTL_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,

    /// Also require client certificates from the CA on the HTTP port
    #[arg(long, env = "CHORDCTL_HTTP_VERIFY_CLIENTS")]
    pub http_verify_clients: bool,

    /// The DNS zone: services answer as SERVICE.service.DOMAIN
    #[arg(long, env = "CHORDCTL_DNS_DOMAIN", value_name = "DOMAIN", default_value = "chord",
          value_parser = parse_dns_domain)]
    pub dns_domain: String,

    /// The TTL of DNS records, e.g. 5s, 1m
    #[arg(long, env = "CHORDCTL_DNS_TTL", value_name = "DURATION", default_value = "5s",
          value_parser = parse_duration_secs)]
    pub dns_ttl: u64,

    /// Print the settings in effect (secrets masked) and exit without starting
    #[arg(long)]
    pub print_config: bool,
}

/// `chordctl ring ...`.
#[derive(Debug, Subcommand)]
pub enum RingCommand {
    /// Every node of the ring, in ring order
    Show,
    /// The agent's own view: predecessor, successor list, finger table
    Node,
    /// Ask the agent to leave the ring gracefully and exit (the first --agent only, never another)
    Leave,
}

/// `chordctl svc ...`.
#[derive(Debug, Subcommand)]
pub enum SvcCommand {
    /// Register an instance of SERVICE, or replace it if SERVICE and ID exist
    Register(RegisterArgs),
    /// Remove an instance
    Deregister {
        /// Service name
        #[arg(value_parser = non_empty)]
        service: String,
        /// Instance id
        #[arg(value_parser = non_empty)]
        id: String,
    },
    /// The instances of SERVICE, or one picked by a strategy
    Discover(DiscoverArgs),
    /// Every service on the ring with its instances counted by state
    List,
    /// Show SERVICE's health policy, or change it with the setter flags
    Policy(PolicyArgs),
    /// Why discover returns each instance of SERVICE or not, and the scores behind a pick
    Explain(DiscoverArgs),
    /// Follow the changes of SERVICE as they happen
    #[command(long_about = WATCH_ABOUT)]
    Watch(WatchArgs),
}

/// `chordctl svc watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Service name
    #[arg(value_parser = non_empty)]
    pub service: String,
    /// Exit 0 after N events (snapshots and changes; bookmarks do not count)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
}

/// The long help of `svc watch`.
const WATCH_ABOUT: &str = "\
Follow the changes of SERVICE as they happen (GET /v1/watch/services/SERVICE).

The first line is the service's current state (a snapshot), then one line per change:
  snapshot  index 12  3 instances
  change  index 13  register  web-1  10.0.0.1:80  passing
  change  index 14  deregister  web-1
With -o json, one JSON object per line: the event's data with \"event\" added
(\"snapshot\", \"change\" or \"bookmark\"). Bookmarks (\"nothing changed, index N\", every few
seconds) are printed only with -o json.

When the stream breaks or its agent goes away, the watch resumes by itself from the last
index it printed: through the same agent first, then the other --agent URLs in turn, with a
short backoff (up to 2s), until it gets through. Nothing is lost and nothing is printed
twice: the agent replays what was missed, or sends a snapshot with \"reset\": true (printed as
`snapshot ... (reset)`), which replaces everything before it; any other event whose index is
not above the last one printed is a repeat and is skipped. A stream silent for 30s (six missed
bookmarks) counts as broken. Notes about reconnecting go to stderr.

The first connection follows the rules of every client command: when no agent can be reached
the command exits 3, and an error answer exits 1 (4 for not found). Once watching, an agent that
answers 429 (too many watchers) or 5xx (e.g. 503, ring unavailable) is treated like one that
went away; any other error answer ends the watch with its exit code.

--count N exits 0 after N snapshot and change events have been printed (bookmarks and skipped
repeats do not count). SIGINT (Ctrl-C) exits 0.";

/// `chordctl svc register`.
#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// Service name
    #[arg(value_parser = non_empty)]
    pub service: String,
    /// Host or IP address callers use to reach the instance
    #[arg(long, value_name = "HOST", value_parser = non_empty)]
    pub address: String,
    /// Port callers use to reach the instance
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// Instance id [default: ADDRESS:PORT]
    #[arg(long, value_name = "ID", value_parser = non_empty)]
    pub id: Option<String>,
    /// A tag (repeatable)
    #[arg(long = "tag", value_name = "T")]
    pub tags: Vec<String>,
    /// Metadata entry (repeatable)
    #[arg(long = "meta", value_name = "K=V", value_parser = parse_key_value)]
    pub meta: Vec<(String, String)>,
    /// Relative weight for `--pick weighted` (0-10000)
    #[arg(long, value_name = "W", value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub weight: Option<u32>,
    /// Mark the instance critical after this long without a status report (30s, 5m, 1h, or seconds)
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
    pub ttl: Option<u64>,
}

impl RegisterArgs {
    /// The instance id: `--id`, or `ADDRESS:PORT` (an IPv6 address in brackets).
    pub fn instance_id(&self) -> String {
        match &self.id {
            Some(id) => id.clone(),
            None if self.address.contains(':') => format!("[{}]:{}", self.address, self.port),
            None => format!("{}:{}", self.address, self.port),
        }
    }

    /// The metadata as a map; a key given twice keeps its last value.
    pub fn metadata(&self) -> BTreeMap<String, String> {
        self.meta.iter().cloned().collect()
    }
}

/// `chordctl svc discover`.
#[derive(Debug, Args)]
pub struct DiscoverArgs {
    /// Service name
    #[arg(value_parser = non_empty)]
    pub service: String,
    /// Only healthy instances (state passing or warning)
    #[arg(long)]
    pub healthy: bool,
    /// Only instances with this tag
    #[arg(long, value_name = "T")]
    pub tag: Option<String>,
    /// Return one instance chosen by this strategy
    #[arg(long, value_name = "STRATEGY", value_parser = strategy_parser())]
    pub pick: Option<Strategy>,
}

/// `chordctl svc policy`: without a setter flag it shows the policy; with some, it changes
/// those fields and keeps the others.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// Service name
    #[arg(value_parser = non_empty)]
    pub service: String,
    /// A reported critical takes effect after N consecutive critical reports
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub failures_before_critical: Option<u32>,
    /// A reported passing takes effect after N consecutive passing reports
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub successes_before_passing: Option<u32>,
    /// Flap damping's half-life (0 turns damping off)
    #[arg(long = "flap-half-life", value_name = "DURATION", value_parser = parse_duration_secs)]
    pub flap_half_life: Option<u64>,
    /// Below this healthy share (0-1), --healthy returns every instance (0 turns it off)
    #[arg(long, value_name = "F", value_parser = parse_share)]
    pub panic_threshold: Option<f64>,
}

impl PolicyArgs {
    /// Whether any setter flag was given.
    pub fn changes(&self) -> bool {
        self.failures_before_critical.is_some()
            || self.successes_before_passing.is_some()
            || self.flap_half_life.is_some()
            || self.panic_threshold.is_some()
    }
}

/// A share between 0 and 1.
fn parse_share(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("expected a number between 0 and 1, got {s:?}")),
    }
}

/// STRATEGY for `--pick`: best, round-robin, random, weighted or least-load, parsed by the
/// registry itself.
fn strategy_parser() -> impl TypedValueParser<Value = Strategy> {
    PossibleValuesParser::new(
        Strategy::ALL.map(|v| PossibleValue::new(v.as_str()).help(v.describe())),
    )
    .try_map(|s| s.parse::<Strategy>())
}

/// `chordctl status ...`.
#[derive(Debug, Subcommand)]
pub enum StatusCommand {
    /// Report an instance's state and call quality (also renews its TTL)
    Report(ReportArgs),
    /// One instance's status, or every instance of SERVICE without ID
    Query {
        /// Service name
        #[arg(value_parser = non_empty)]
        service: String,
        /// Instance id
        #[arg(value_parser = non_empty)]
        id: Option<String>,
    },
}

/// `chordctl status report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Service name
    #[arg(value_parser = non_empty)]
    pub service: String,
    /// Instance id
    #[arg(value_parser = non_empty)]
    pub id: String,
    /// The instance's health
    #[arg(long, value_name = "STATE", value_parser = state_parser())]
    pub state: State,
    /// Current load (finite, at least 0)
    #[arg(long, value_name = "X", value_parser = parse_non_negative)]
    pub load: Option<f64>,
    /// Share of successful calls, 0 to 1
    #[arg(long, value_name = "X", value_parser = parse_rate)]
    pub success_rate: Option<f64>,
    /// Mean call latency in milliseconds
    #[arg(long, value_name = "X", value_parser = parse_non_negative)]
    pub latency_ms: Option<f64>,
    /// Calls per second
    #[arg(long, value_name = "X", value_parser = parse_non_negative)]
    pub frequency: Option<f64>,
    /// Free text
    #[arg(long, value_name = "TEXT")]
    pub note: Option<String>,
}

/// STATE for `status report --state`: passing, warning, critical or maintenance, parsed by the
/// registry itself.
fn state_parser() -> impl TypedValueParser<Value = State> {
    PossibleValuesParser::new(State::ALL.map(|v| PossibleValue::new(v.as_str()).help(v.describe())))
        .try_map(|s| s.parse::<State>())
}

// ---------------------------------------------------------------------------------------------
// Value parsers. Each returns a message that clap prints after "invalid value 'X' for '--flag':".

/// A non-empty string (service names, instance ids, keys).
fn non_empty(s: &str) -> Result<String, String> {
    if s.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(s.to_string())
    }
}

/// The agent's URL: `http(s)://HOST:PORT[/prefix]`, or a bare `HOST:PORT` taken as plain HTTP.
pub(crate) fn parse_agent_url(s: &str) -> Result<Url, String> {
    let s = s.trim();
    let text = if s.contains("://") {
        s.to_string()
    } else {
        format!("http://{s}")
    };
    let url = Url::parse(&text).map_err(|e| format!("not a URL or HOST:PORT ({e})"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!(
            "scheme '{}' is not supported; use http://HOST:PORT or https://HOST:PORT",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("the URL must not have a query or fragment".into());
    }
    Ok(url)
}

/// A listen address `HOST:PORT` (port 0: any free port), HOST an IP address or a name that
/// resolves now.
pub(crate) fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    split_host_port(s)?;
    match s.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("'{s}' resolves to no address")),
        Err(e) => Err(format!("cannot resolve '{s}': {e}")),
    }
}

/// A ring address `HOST:PORT` that other nodes dial: checked for shape, not resolved (the name
/// may resolve only where the other nodes run).
pub(crate) fn parse_host_port(s: &str) -> Result<String, String> {
    match split_host_port(s)? {
        (_, 0) => Err("port 0 cannot be dialled; expected a port from 1 to 65535".into()),
        _ => Ok(s.to_string()),
    }
}

/// Splits `HOST:PORT` (`[IPv6]:PORT`), checking the shape of both parts.
fn split_host_port(s: &str) -> Result<(&str, u16), String> {
    const SHAPE: &str = "expected HOST:PORT, e.g. 127.0.0.1:7400";
    let (host, port) = s.rsplit_once(':').ok_or_else(|| SHAPE.to_string())?;
    let host_ok = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        inner.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && !host.contains(':')
            && !host.chars().any(|c| c.is_whitespace() || c == '/')
    };
    if !host_ok {
        return Err(format!("bad host '{host}'; {SHAPE}"));
    }
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("bad port '{port}'; {SHAPE}"))?;
    Ok((host, port))
}

/// A Redis URL; the agent's Redis client does the full check when it connects. The message
/// does not repeat the URL, which may hold a password.
pub(crate) fn parse_redis_url(s: &str) -> Result<String, String> {
    if ["redis://", "rediss://", "redis+unix://", "unix://"]
        .iter()
        .any(|scheme| s.starts_with(scheme))
    {
        Ok(s.to_string())
    } else {
        Err("expected a URL like redis://:PASSWORD@127.0.0.1:6379/0 (value not shown)".into())
    }
}

/// A count of at least 1.
pub(crate) fn parse_positive_usize(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("expected a whole number of at least 1".into()),
    }
}

/// A number of milliseconds of at least 1.
pub(crate) fn parse_positive_u64(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("expected a whole number of at least 1".into()),
    }
}

/// `K=V`, K not empty; V may be empty or contain `=`.
fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err("expected KEY=VALUE".into()),
    }
}

/// A finite number of at least 0.
fn parse_non_negative(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err("expected a finite number of at least 0".into()),
    }
}

/// A rate from 0 to 1.
fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
        _ => Err("expected a number from 0 to 1".into()),
    }
}

/// `--dns-domain`: a DNS name, kept lower-cased without the final dot.
pub fn parse_dns_domain(s: &str) -> Result<String, String> {
    let name = crate::dns::answer::parse_domain(s)?;
    Ok(name.to_ascii().trim_end_matches('.').to_string())
}

/// A TTL: a duration of at least one second, in whole seconds.
fn parse_ttl(s: &str) -> Result<u64, String> {
    match parse_duration_secs(s)? {
        0 => Err("a TTL must be at least 1s".into()),
        secs => Ok(secs),
    }
}

/// Parses API.md's DURATION: `30s`, `5m`, `1h`, or a bare number of seconds, into seconds
/// (the registry's parser, with its message as the usage error).
pub fn parse_duration_secs(s: &str) -> Result<u64, String> {
    crate::registry::parse_duration(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_secs("30s"), Ok(30));
        assert_eq!(parse_duration_secs("5m"), Ok(300));
        assert_eq!(parse_duration_secs("1h"), Ok(3600));
        assert_eq!(parse_duration_secs("45"), Ok(45));
        assert_eq!(parse_duration_secs("0"), Ok(0));
        for bad in [
            "",
            "s",
            "m",
            "-5",
            "5x",
            "1.5s",
            " 5s",
            "5 s",
            "5ms",
            "1d",
            "5S",
            "+5",
            "99999999999999999999",
            "9999999999999999h",
        ] {
            assert!(parse_duration_secs(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse_ttl("0s").is_err());
        assert_eq!(parse_ttl("2m"), Ok(120));
    }

    #[test]
    fn agent_urls() {
        let url = |s| parse_agent_url(s).map(|u| u.to_string());
        assert_eq!(url("127.0.0.1:7500"), Ok("http://127.0.0.1:7500/".into()));
        assert_eq!(url("http://node1:80/api/"), Ok("http://node1/api/".into()));
        assert_eq!(url("[::1]:7500"), Ok("http://[::1]:7500/".into()));
        assert_eq!(url("https://node1:7500"), Ok("https://node1:7500/".into()));
        assert!(url("ftp://node1").is_err());
        assert!(url("http://h:1/?x=1").is_err());
        assert!(url("not a url").is_err());
    }

    #[test]
    fn addresses() {
        assert_eq!(
            parse_socket_addr("127.0.0.1:0"),
            Ok(SocketAddr::from(([127, 0, 0, 1], 0)))
        );
        assert!(parse_socket_addr("localhost:7400").is_ok());
        assert!(parse_socket_addr("localhost:0").is_ok());
        assert!(parse_socket_addr("[::1]:7400").is_ok());
        for bad in ["nonsense", "127.0.0.1", "127.0.0.1:70000", ":7400", "a b:1"] {
            assert!(parse_socket_addr(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse_host_port("node-1.example:7400").is_ok());
        assert!(parse_host_port("[fe80::1]:7400").is_ok());
        for bad in ["node", "node:0", "node:x", "::1:7400", ":7400", "a/b:1"] {
            assert!(parse_host_port(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn small_values() {
        assert_eq!(
            parse_key_value("zone=a=b"),
            Ok(("zone".into(), "a=b".into()))
        );
        assert_eq!(parse_key_value("k="), Ok(("k".into(), String::new())));
        assert!(parse_key_value("=v").is_err());
        assert!(parse_key_value("kv").is_err());
        assert!(parse_rate("1.01").is_err());
        assert!(parse_rate("NaN").is_err());
        assert!(parse_non_negative("inf").is_err());
        assert!(parse_non_negative("-0.5").is_err());
        assert!(parse_positive_usize("0").is_err());
    }
}
