//! The agent's settings from four layers, highest first: command-line flags, `CHORDCTL_*`
//! environment variables, the TOML file of `--config`, and the defaults of [`AgentConfig`].
//!
//! clap resolves flag-over-environment itself; [`ArgMatches::value_source`] tells us which of the
//! two a value came from, and whether it is only clap's default (which must lose to the file).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::ArgMatches;
use serde::Deserialize;

use super::args::{self, NodeOpts, TuningOpts};
use crate::agent::{AgentConfig, Start};

/// Agent settings from one layer; `None` where that layer says nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Partial {
    pub bind: Option<SocketAddr>,
    pub advertise: Option<String>,
    pub http: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub redis: Option<String>,
    pub replicas: Option<usize>,
    pub write_quorum: Option<usize>,
    pub successors: Option<usize>,
    pub cluster_secret: Option<String>,
    pub api_token: Option<String>,
    pub stabilize_ms: Option<u64>,
    pub rpc_timeout_ms: Option<u64>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    pub http_verify_clients: Option<bool>,
    pub dns: Option<SocketAddr>,
    pub dns_domain: Option<String>,
    pub dns_ttl_secs: Option<u64>,
}

impl Partial {
    /// The values of `node` (if any) and `tuning` that clap took from `source` (the command line
    /// or the environment). `matches` are the agent subcommand's own matches.
    pub fn from_matches(
        matches: &ArgMatches,
        source: ValueSource,
        node: Option<&NodeOpts>,
        tuning: &TuningOpts,
    ) -> Partial {
        let from = |id: &str| matches.value_source(id) == Some(source);
        let take = |id: &str, value: &Option<String>| value.clone().filter(|_| from(id));
        let mut p = Partial {
            replicas: Some(tuning.replicas).filter(|_| from("replicas")),
            write_quorum: tuning.write_quorum.filter(|_| from("write_quorum")),
            successors: Some(tuning.successors).filter(|_| from("successors")),
            cluster_secret: take("cluster_secret", &tuning.cluster_secret),
            api_token: take("api_token", &tuning.api_token),
            stabilize_ms: Some(tuning.stabilize_ms).filter(|_| from("stabilize_ms")),
            rpc_timeout_ms: Some(tuning.rpc_timeout_ms).filter(|_| from("rpc_timeout_ms")),
            tls_cert: tuning.tls_cert.clone().filter(|_| from("tls_cert")),
            tls_key: tuning.tls_key.clone().filter(|_| from("tls_key")),
            tls_ca: tuning.tls_ca.clone().filter(|_| from("tls_ca")),
            http_verify_clients: Some(tuning.http_verify_clients)
                .filter(|_| from("http_verify_clients")),
            dns_domain: Some(tuning.dns_domain.clone()).filter(|_| from("dns_domain")),
            dns_ttl_secs: Some(tuning.dns_ttl).filter(|_| from("dns_ttl")),
            ..Partial::default()
        };
        if let Some(node) = node {
            p.bind = Some(node.bind).filter(|_| from("bind"));
            p.advertise = take("advertise", &node.advertise);
            p.http = Some(node.http).filter(|_| from("http"));
            p.data_dir = node.data_dir.clone().filter(|_| from("data_dir"));
            p.redis = take("redis", &node.redis);
            p.dns = node.dns.filter(|_| from("dns"));
        }
        p
    }

    /// Reads and checks a TOML config file. Unknown keys are an error naming the key.
    pub fn from_file(path: &Path) -> Result<Partial, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        Partial::from_toml(&text).map_err(|e| format!("config file {}: {e}", path.display()))
    }

    /// Parses and checks the text of a config file.
    pub fn from_toml(text: &str) -> Result<Partial, String> {
        let file: FileConfig = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
            let message = e.message().trim().replace('\n', " ");
            match line {
                Some(line) => format!("line {line}: {message}"),
                None => message,
            }
        })?;
        let key = |name: &'static str| move |e: String| format!("{name}: {e}");
        Ok(Partial {
            bind: file
                .bind
                .as_deref()
                .map(args::parse_socket_addr)
                .transpose()
                .map_err(key("bind"))?,
            advertise: file
                .advertise
                .as_deref()
                .map(args::parse_host_port)
                .transpose()
                .map_err(key("advertise"))?,
            http: file
                .http
                .as_deref()
                .map(args::parse_socket_addr)
                .transpose()
                .map_err(key("http"))?,
            data_dir: file.data_dir,
            redis: file.redis,
            replicas: positive(file.replicas).map_err(key("replicas"))?,
            write_quorum: positive(file.write_quorum).map_err(key("write_quorum"))?,
            successors: positive(file.successors).map_err(key("successors"))?,
            cluster_secret: file.cluster_secret,
            api_token: file.api_token,
            stabilize_ms: positive(file.stabilize_ms).map_err(key("stabilize_ms"))?,
            rpc_timeout_ms: positive(file.rpc_timeout_ms).map_err(key("rpc_timeout_ms"))?,
            tls_cert: file.tls_cert,
            tls_key: file.tls_key,
            tls_ca: file.tls_ca,
            http_verify_clients: file.http_verify_clients,
            dns: file
                .dns
                .as_deref()
                .map(args::parse_socket_addr)
                .transpose()
                .map_err(key("dns"))?,
            dns_domain: file
                .dns_domain
                .as_deref()
                .map(args::parse_dns_domain)
                .transpose()
                .map_err(key("dns_domain"))?,
            dns_ttl_secs: file
                .dns_ttl
                .as_deref()
                .map(args::parse_duration_secs)
                .transpose()
                .map_err(key("dns_ttl"))?,
        })
    }
}

/// The config file's shape: keys named like the long flags, with underscores.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    bind: Option<String>,
    advertise: Option<String>,
    http: Option<String>,
    data_dir: Option<PathBuf>,
    redis: Option<String>,
    replicas: Option<usize>,
    write_quorum: Option<usize>,
    successors: Option<usize>,
    cluster_secret: Option<String>,
    api_token: Option<String>,
    stabilize_ms: Option<u64>,
    rpc_timeout_ms: Option<u64>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    http_verify_clients: Option<bool>,
    dns: Option<String>,
    dns_domain: Option<String>,
    dns_ttl: Option<String>,
}

fn positive<T: PartialEq + From<u8>>(value: Option<T>) -> Result<Option<T>, String> {
    match value {
        Some(v) if v == T::from(0) => Err("must be at least 1".into()),
        v => Ok(v),
    }
}

/// Merges the layers, highest first (flags, environment, file), over [`AgentConfig::default`],
/// and checks the settings against each other.
pub(crate) fn merge(start: Start, layers: &[&Partial]) -> Result<AgentConfig, String> {
    macro_rules! first {
        ($field:ident) => {
            layers.iter().find_map(|layer| layer.$field.clone())
        };
    }
    let defaults = AgentConfig::default();
    let config = AgentConfig {
        start,
        bind: first!(bind).unwrap_or(defaults.bind),
        advertise: first!(advertise),
        http: first!(http).unwrap_or(defaults.http),
        data_dir: first!(data_dir),
        redis: first!(redis),
        replicas: first!(replicas).unwrap_or(defaults.replicas),
        write_quorum: first!(write_quorum),
        successors: first!(successors).unwrap_or(defaults.successors),
        cluster_secret: first!(cluster_secret).filter(|s| !s.is_empty()),
        api_token: first!(api_token).filter(|s| !s.is_empty()),
        stabilize_interval: first!(stabilize_ms)
            .map(Duration::from_millis)
            .unwrap_or(defaults.stabilize_interval),
        rpc_timeout: first!(rpc_timeout_ms)
            .map(Duration::from_millis)
            .unwrap_or(defaults.rpc_timeout),
        max_watchers: defaults.max_watchers,
        tls: tls_files(first!(tls_cert), first!(tls_key), first!(tls_ca))?,
        http_verify_clients: first!(http_verify_clients).unwrap_or(false),
        dns: first!(dns),
        dns_domain: first!(dns_domain).unwrap_or(defaults.dns_domain),
        dns_ttl: first!(dns_ttl_secs)
            .map(Duration::from_secs)
            .unwrap_or(defaults.dns_ttl),
    };

    if let Some(url) = &config.redis {
        args::parse_redis_url(url).map_err(|e| format!("--redis: {e}"))?;
    }
    if config.data_dir.is_some() && config.redis.is_some() {
        return Err("--data-dir and --redis are mutually exclusive: choose one store".into());
    }
    if let Some(w) = config.write_quorum {
        if w > config.replicas {
            return Err(format!(
                "--write-quorum {w} cannot exceed --replicas {} (a write has only K copies)",
                config.replicas
            ));
        }
    }
    if config.replicas > config.successors + 1 {
        return Err(format!(
            "--replicas {} needs --successors of at least {} (the replicas are the owner's \
             successors)",
            config.replicas,
            config.replicas - 1
        ));
    }
    Ok(config)
}

/// The three TLS files, given all together or not at all.
fn tls_files(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
) -> Result<Option<crate::tls::TlsFiles>, String> {
    match (cert, key, ca) {
        (None, None, None) => Ok(None),
        (Some(cert), Some(key), Some(ca)) => Ok(Some(crate::tls::TlsFiles { cert, key, ca })),
        (cert, key, ca) => {
            let missing: Vec<&str> = [
                ("--tls-cert", cert.is_none()),
                ("--tls-key", key.is_none()),
                ("--tls-ca", ca.is_none()),
            ]
            .iter()
            .filter_map(|(flag, missing)| missing.then_some(*flag))
            .collect();
            Err(format!(
                "--tls-cert, --tls-key and --tls-ca go together; missing: {}",
                missing.join(", ")
            ))
        }
    }
}

/// The effective configuration as TOML-like lines, secrets masked (for `--print-config`).
pub(crate) fn describe(config: &AgentConfig) -> String {
    let mut out = String::new();
    let opt = |v: Option<String>| v.map_or_else(|| "(unset)".to_string(), |v| format!("{v:?}"));
    let secret = |v: &Option<String>| if v.is_some() { "(set)" } else { "(unset)" };
    let start = match &config.start {
        Start::Create => "create".to_string(),
        Start::Join(seed) => format!("join {seed}"),
    };
    // Writing to a String cannot fail.
    let _ = writeln!(out, "start = {start:?}");
    let _ = writeln!(out, "bind = \"{}\"", config.bind);
    let _ = writeln!(out, "advertise = {}", opt(config.advertise.clone()));
    let _ = writeln!(out, "http = \"{}\"", config.http);
    let _ = writeln!(
        out,
        "data_dir = {}",
        opt(config.data_dir.as_ref().map(|d| d.display().to_string()))
    );
    let _ = writeln!(out, "redis = {}", secret(&config.redis));
    let _ = writeln!(out, "replicas = {}", config.replicas);
    let _ = writeln!(out, "write_quorum = {}", config.quorum());
    let _ = writeln!(out, "successors = {}", config.successors);
    let _ = writeln!(out, "cluster_secret = {}", secret(&config.cluster_secret));
    let _ = writeln!(out, "api_token = {}", secret(&config.api_token));
    let _ = writeln!(
        out,
        "stabilize_ms = {}",
        config.stabilize_interval.as_millis()
    );
    let _ = writeln!(out, "rpc_timeout_ms = {}", config.rpc_timeout.as_millis());
    let path = |p: Option<&PathBuf>| opt(p.map(|p| p.display().to_string()));
    let tls = config.tls.as_ref();
    let _ = writeln!(out, "tls_cert = {}", path(tls.map(|t| &t.cert)));
    let _ = writeln!(out, "tls_key = {}", path(tls.map(|t| &t.key)));
    let _ = writeln!(out, "tls_ca = {}", path(tls.map(|t| &t.ca)));
    let _ = writeln!(out, "http_verify_clients = {}", config.http_verify_clients);
    let _ = writeln!(out, "dns = {}", opt(config.dns.map(|a| a.to_string())));
    let _ = writeln!(out, "dns_domain = {:?}", config.dns_domain);
    let _ = writeln!(out, "dns_ttl = \"{}s\"", config.dns_ttl.as_secs());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::args::{AgentCommand, Cli, Command};
    use clap::{CommandFactory, FromArgMatches};

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn file_loses_to_env_which_loses_to_flags() {
        let file = Partial::from_toml(
            r#"
            bind = "127.0.0.1:1001"
            http = "127.0.0.1:2001"
            replicas = 2
            successors = 5
            stabilize_ms = 100
            data_dir = "/var/lib/chordctl"
            "#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let env = Partial {
            bind: Some(addr("127.0.0.1:1002")),
            http: Some(addr("127.0.0.1:2002")),
            successors: Some(6),
            ..Partial::default()
        };
        let flags = Partial {
            bind: Some(addr("127.0.0.1:1003")),
            ..Partial::default()
        };
        let c = merge(Start::Create, &[&flags, &env, &file]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.bind, addr("127.0.0.1:1003"), "flag beats env and file");
        assert_eq!(c.http, addr("127.0.0.1:2002"), "env beats file");
        assert_eq!(c.successors, 6, "env beats file");
        assert_eq!(c.replicas, 2, "file beats default");
        assert_eq!(c.stabilize_interval, Duration::from_millis(100));
        assert_eq!(c.data_dir, Some(PathBuf::from("/var/lib/chordctl")));
        let d = AgentConfig::default();
        assert_eq!(c.rpc_timeout, d.rpc_timeout, "default when no layer says");
        assert_eq!(c.advertise, None);
    }

    #[test]
    fn dns_settings_come_through_the_layers() {
        let file = Partial::from_toml(
            r#"
            dns = "127.0.0.1:5353"
            dns_domain = "Svc.Example."
            dns_ttl = "1m"
            "#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let flags = Partial {
            dns_ttl_secs: Some(3),
            ..Partial::default()
        };
        let c = merge(Start::Create, &[&flags, &file]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.dns, Some(addr("127.0.0.1:5353")));
        assert_eq!(c.dns_domain, "svc.example");
        assert_eq!(c.dns_ttl, Duration::from_secs(3), "the flag beats the file");
        let d = merge(Start::Create, &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (d.dns, d.dns_domain.as_str()),
            (None, "chord"),
            "off by default"
        );
        assert_eq!(d.dns_ttl, Duration::from_secs(5));
        for bad in [
            "dns_domain = \"a..b\"",
            "dns_ttl = \"soon\"",
            "dns = \"nowhere\"",
        ] {
            let e = Partial::from_toml(bad).err().unwrap_or_default();
            let key = bad.split(' ').next().unwrap_or_default();
            assert!(e.starts_with(key), "{bad}: {e}");
        }
    }

    #[test]
    fn file_errors_name_the_key() {
        let err = Partial::from_toml("bind = \"127.0.0.1:1\"\nbogus_key = 1\n")
            .err()
            .unwrap_or_default();
        assert!(err.contains("bogus_key") && err.contains("line 2"), "{err}");
        let err = Partial::from_toml("bind = \"nonsense\"")
            .err()
            .unwrap_or_default();
        assert!(err.starts_with("bind:"), "{err}");
        let err = Partial::from_toml("replicas = 0").err().unwrap_or_default();
        assert!(err.starts_with("replicas:"), "{err}");
        let err = Partial::from_toml("replicas = \"three\"")
            .err()
            .unwrap_or_default();
        assert!(err.contains("line 1"), "{err}");
        assert!(Partial::from_toml("").is_ok());
    }

    #[test]
    fn settings_are_checked_against_each_other() {
        let both = Partial {
            data_dir: Some("/tmp/x".into()),
            redis: Some("redis://127.0.0.1/".into()),
            ..Partial::default()
        };
        assert!(merge(Start::Create, &[&both]).is_err());
        let too_many = Partial {
            replicas: Some(4),
            successors: Some(2),
            ..Partial::default()
        };
        assert!(merge(Start::Create, &[&too_many]).is_err());
        let quorum_above_k = Partial {
            replicas: Some(3),
            write_quorum: Some(4),
            ..Partial::default()
        };
        let err = merge(Start::Create, &[&quorum_above_k])
            .err()
            .unwrap_or_default();
        assert!(err.starts_with("--write-quorum 4"), "{err}");
        let quorum = |replicas, write_quorum| {
            merge(
                Start::Create,
                &[&Partial {
                    replicas: Some(replicas),
                    write_quorum,
                    ..Partial::default()
                }],
            )
            .map(|c| c.quorum())
        };
        assert_eq!(quorum(3, None), Ok(2), "default: a majority of K");
        assert_eq!(quorum(5, None), Ok(3));
        assert_eq!(quorum(1, None), Ok(1));
        assert_eq!(quorum(3, Some(3)), Ok(3));
        let bad_redis = Partial {
            redis: Some("http://:hunter2@127.0.0.1/".into()),
            ..Partial::default()
        };
        let err = merge(Start::Create, &[&bad_redis])
            .err()
            .unwrap_or_default();
        assert!(
            err.starts_with("--redis") && !err.contains("hunter2"),
            "{err}"
        );
    }

    /// Flags land in the command-line layer; clap's defaults land in no layer, so that a file
    /// can override them; and clap's defaults agree with `AgentConfig::default()`.
    #[test]
    fn clap_values_are_sorted_by_source() {
        let matches = Cli::command()
            .try_get_matches_from([
                "chordctl",
                "agent",
                "join",
                "10.0.0.1:7400",
                "--http",
                "127.0.0.1:0",
                "--replicas",
                "2",
                "--api-token",
                "t0ken",
                "--data-dir",
                "/d",
                "--advertise",
                "node1:7400",
                "--rpc-timeout-ms",
                "250",
            ])
            .unwrap_or_else(|e| panic!("{e}"));
        let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| panic!("{e}"));
        let sub = matches
            .subcommand_matches("agent")
            .and_then(|m| m.subcommand_matches("join"))
            .unwrap_or_else(|| panic!("no join matches"));
        let Command::Agent(AgentCommand::Join { node, tuning, .. }) = &cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        let flags = Partial::from_matches(sub, ValueSource::CommandLine, Some(node), tuning);
        assert_eq!(
            flags,
            Partial {
                http: Some(addr("127.0.0.1:0")),
                replicas: Some(2),
                api_token: Some("t0ken".into()),
                data_dir: Some("/d".into()),
                advertise: Some("node1:7400".into()),
                rpc_timeout_ms: Some(250),
                ..Partial::default()
            }
        );
        // Whatever did not come from the command line is clap's default unless the environment
        // of whoever runs the tests sets it; compare only what is a default.
        let d = AgentConfig::default();
        let is_default = |id: &str| sub.value_source(id) == Some(ValueSource::DefaultValue);
        if is_default("bind") {
            assert_eq!(node.bind, d.bind);
            assert_eq!(
                Partial::from_matches(sub, ValueSource::DefaultValue, Some(node), tuning).bind,
                Some(d.bind)
            );
        }
        if is_default("successors") {
            assert_eq!(tuning.successors, d.successors);
        }
        if is_default("stabilize_ms") {
            assert_eq!(
                Duration::from_millis(tuning.stabilize_ms),
                d.stabilize_interval
            );
        }
    }

    #[test]
    fn tls_files_go_together() {
        let some = Partial {
            tls_cert: Some("/c.pem".into()),
            tls_ca: Some("/ca.pem".into()),
            ..Partial::default()
        };
        let err = merge(Start::Create, &[&some]).err().unwrap_or_default();
        assert!(err.contains("missing: --tls-key"), "{err}");
        let file = Partial::from_toml(
            "tls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"\ntls_ca = \"/ca.pem\"\nhttp_verify_clients = true\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let c = merge(Start::Create, &[&file]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.tls.map(|t| t.key), Some(PathBuf::from("/k.pem")));
        assert!(c.http_verify_clients);
    }

    #[test]
    fn describe_masks_secrets() {
        let config = AgentConfig {
            api_token: Some("t0ken".into()),
            cluster_secret: Some("s3cret".into()),
            redis: Some("redis://:pw@127.0.0.1/".into()),
            ..AgentConfig::default()
        };
        let text = describe(&config);
        assert!(!text.contains("t0ken") && !text.contains("s3cret") && !text.contains("pw"));
        assert!(text.contains("api_token = (set)"), "{text}");
    }
}
