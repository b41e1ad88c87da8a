//! The `chordctl` command line: clap definitions ([`args`]), the agent's layered configuration
//! (`config`), the HTTP client of the agents (`client`), one file per command group (`ring`,
//! `svc`), the watch stream (`watch`) and what gets printed ([`output`]).
//!
//! Exit codes (API.md): 0 success; 1 the agent answered with an error or a runtime failure;
//! 2 usage error; 3 the agent could not be reached; 4 not found. Errors are printed once, as one
//! line `error: MESSAGE` on stderr; a closed stdout pipe is not an error.

pub mod args;
pub mod bench;
mod client;
mod config;
pub mod output;
mod progress;
mod ring;
mod svc;
pub mod watch;

use std::io::Write;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::agent::{self, Start};
use args::{AgentCommand, Cli, Command, TlsCaCommand, TlsCertCommand, TlsCommand};
use client::{Client, ClientTls};
use config::Partial;

/// Why a command failed; each kind has its exit code (API.md).
#[derive(Debug)]
pub(crate) enum Failure {
    /// Bad input found after clap's own checks (exit 2).
    Usage(String),
    /// The agent could not be reached (exit 3); the message names the agent's URL.
    Unreachable(String),
    /// The agent answered 404 (exit 4).
    NotFound(String),
    /// The agent answered another error, or something failed here (exit 1).
    Failed(String),
    /// stdout was closed by its reader: stop quietly with exit 0.
    BrokenPipe,
}

impl Failure {
    /// The exit code of this failure.
    fn exit_code(&self) -> i32 {
        match self {
            Failure::BrokenPipe => 0,
            Failure::Failed(_) => 1,
            Failure::Usage(_) => 2,
            Failure::Unreachable(_) => 3,
            Failure::NotFound(_) => 4,
        }
    }

    /// Prints the one-line message to stderr and returns the exit code.
    fn report(self) -> i32 {
        let code = self.exit_code();
        if let Failure::Usage(m)
        | Failure::Unreachable(m)
        | Failure::NotFound(m)
        | Failure::Failed(m) = self
        {
            // Nothing sensible is left to do if stderr itself is gone.
            let _ = writeln!(std::io::stderr(), "error: {}", m.replace('\n', " "));
        }
        code
    }
}

/// Runs the command line of this process and returns its exit code (called by `main.rs`).
pub fn main() -> i32 {
    let matches = match Cli::command().try_get_matches() {
        Ok(matches) => matches,
        // Help and version (exit 0) and usage errors (exit 2), printed the clap way.
        Err(e) => return clap_exit(&e),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => return clap_exit(&e.format(&mut Cli::command())),
    };
    match run(&cli, &matches) {
        Ok(()) => 0,
        Err(failure) => failure.report(),
    }
}

fn clap_exit(e: &clap::Error) -> i32 {
    // A closed stdout while printing help is not worth a message.
    let _ = e.print();
    e.exit_code()
}

fn run(cli: &Cli, matches: &ArgMatches) -> Result<(), Failure> {
    let format = cli.global.output;
    let tls = || {
        let g = &cli.global;
        ClientTls::load(g.cacert.as_deref(), g.cert.as_deref(), g.key.as_deref())
    };
    let client = || Client::with_tls(&cli.global.agent, cli.global.token.clone(), &tls()?, false);
    match &cli.command {
        Command::Agent(command) => run_agent(command, matches),
        Command::Tls(command) => run_tls(command),
        Command::Ring(command) => ring::run(&client()?, command, format),
        Command::Locate { key } => ring::locate(&client()?, key, format),
        Command::Svc(args::SvcCommand::Watch(args)) => {
            let client =
                Client::with_tls(&cli.global.agent, cli.global.token.clone(), &tls()?, true)?;
            watch::run(&client, args, format)
        }
        Command::Svc(command) => svc::run(&client()?, command, format),
        Command::Status(command) => svc::status(&client()?, command, format),
        Command::Bench(args) => {
            // One agent takes the whole load: the first given that can be reached (with one
            // agent, bench reports its own connection errors as it always did).
            let agent = match cli.global.agent.as_slice() {
                [one] => one.clone(),
                _ => client()?.first_reachable()?,
            };
            bench::run(&agent, cli.global.token.as_deref(), &tls()?, args, format)
        }
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "chordctl", &mut script);
            output::print(&String::from_utf8_lossy(&script))
        }
        Command::Man => {
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut page)
                .map_err(|e| Failure::Failed(format!("cannot render the man page: {e}")))?;
            output::print(&String::from_utf8_lossy(&page))
        }
    }
}

/// `agent create|join|dev`: settings from flags > environment > `--config` file > defaults,
/// then the agent in the foreground on a multi-threaded runtime.
fn run_agent(command: &AgentCommand, matches: &ArgMatches) -> Result<(), Failure> {
    let sub = matches
        .subcommand_matches("agent")
        .and_then(|m| m.subcommand())
        .map(|(_, m)| m)
        .ok_or_else(|| Failure::Failed("internal: no agent subcommand matches".into()))?;
    let (start, node, tuning, dev_nodes, dev_tls) = match command {
        AgentCommand::Create { node, tuning } => (Start::Create, Some(node), tuning, None, false),
        AgentCommand::Join { seed, node, tuning } => {
            (Start::Join(seed.clone()), Some(node), tuning, None, false)
        }
        AgentCommand::Dev {
            nodes, tls, tuning, ..
        } => (Start::Create, None, tuning, Some(*nodes), *tls),
    };
    // `agent dev` logs warnings only unless -v: a screen of info lines would bury its table.
    let log_level = match command {
        AgentCommand::Dev { verbose: false, .. } => tracing::Level::WARN,
        _ => tracing::Level::INFO,
    };
    let flags = Partial::from_matches(sub, ValueSource::CommandLine, node, tuning);
    let env = Partial::from_matches(sub, ValueSource::EnvVariable, node, tuning);
    let file = match &tuning.config {
        Some(path) => Partial::from_file(path).map_err(Failure::Usage)?,
        None => Partial::default(),
    };
    let config = config::merge(start, &[&flags, &env, &file]).map_err(Failure::Usage)?;
    if dev_tls && config.tls.is_some() {
        return Err(Failure::Usage(
            "agent dev --tls makes its own certificates: drop --tls-cert, --tls-key and --tls-ca"
                .into(),
        ));
    }
    if config.http_verify_clients && config.tls.is_none() && !dev_tls {
        return Err(Failure::Usage(
            "--http-verify-clients needs TLS: give --tls-cert, --tls-key and --tls-ca".into(),
        ));
    }
    if tuning.print_config {
        return output::print(&config::describe(&config));
    }

    // Progress only for a single agent on a terminal; `agent dev`'s nodes join in an instant.
    let progress = match dev_nodes {
        None => progress::for_agent(),
        Some(_) => None,
    };
    init_tracing(progress.as_ref().map(|(_, bars)| bars.clone()), log_level);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("chordctl-agent")
        .build()
        .map_err(|e| Failure::Failed(format!("cannot start the async runtime: {e}")))?;
    let result = match dev_nodes {
        Some(nodes) => runtime.block_on(agent::run_dev(
            usize::from(nodes),
            dev_tls,
            config,
            print_dev_ring,
        )),
        None => match progress {
            Some((hook, _)) => runtime.block_on(agent::run_with_progress(config, hook)),
            None => runtime.block_on(agent::run(config)),
        },
    };
    result.map_err(|e| Failure::Failed(e.to_string()))
}

/// `chordctl tls ca create` and `chordctl tls cert create NAME`: write the files, print their
/// paths.
fn run_tls(command: &TlsCommand) -> Result<(), Failure> {
    use crate::tls::create;
    let (cert, key) = match command {
        TlsCommand::Ca(TlsCaCommand::Create { dir, days }) => {
            create::create_ca(dir, *days).map_err(Failure::Failed)?
        }
        TlsCommand::Cert(TlsCertCommand::Create {
            name,
            dir,
            ips,
            dns,
            days,
        }) => {
            create::check_name(name).map_err(Failure::Usage)?;
            let spec = create::CertSpec {
                name: name.clone(),
                ips: ips.clone(),
                dns: dns.clone(),
                days: *days,
                expired: false,
            };
            create::create_cert(dir, &spec).map_err(Failure::Failed)?
        }
    };
    output::print(&format!("{}\n{}\n", cert.display(), key.display()))
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`; bad directives are skipped); above
/// the progress bars of `bars` when there are any.
fn init_tracing(bars: Option<indicatif::MultiProgress>, level: tracing::Level) {
    use tracing_subscriber::filter::{EnvFilter, LevelFilter};
    let mut filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::from_level(level).into())
        .from_env_lossy();
    // hickory logs every DNS query at info: only its warnings, unless RUST_LOG says otherwise.
    if std::env::var_os("RUST_LOG").is_none() {
        if let Ok(quiet) = "hickory_server=warn".parse() {
            filter = filter.add_directive(quiet);
        }
    }
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    // Fails only if a subscriber is already set, which then keeps logging.
    let _ = match bars {
        Some(bars) => builder
            .with_writer(move || progress::AboveBars(bars.clone()))
            .try_init(),
        None => builder.with_writer(std::io::stderr).try_init(),
    };
}

/// What `agent dev` prints once its ring has settled: one table of its nodes, then the lines
/// to try. The `export` lines start their lines, for scripts that read them.
fn print_dev_ring(ring: &agent::DevRing) {
    let mut table = output::table(&["id", "ring", "http", "dns"], &[]);
    for node in &ring.nodes {
        let dns = node.dns.map_or_else(|| "-".to_string(), |a| a.to_string());
        table.add_row(vec![
            output::short_id(&node.id).to_string(),
            node.ring.clone(),
            node.http.to_string(),
            dns,
        ]);
    }
    let mut text = output::render(&table);
    let mut line = |l: String| {
        text.push_str(&l);
        text.push('\n');
    };
    line(String::new());
    if let Some(first) = ring.nodes.first() {
        line(format!(
            "export CHORDCTL_AGENT={}://{}",
            ring.scheme, first.http
        ));
        if let Some((ca, cert, key)) = &ring.client_tls {
            line(format!("export CHORDCTL_CACERT={}", ca.display()));
            line(format!("export CHORDCTL_CERT={}", cert.display()));
            line(format!("export CHORDCTL_KEY={}", key.display()));
        }
        line("chordctl svc register web --address 127.0.0.1 --port 8080".into());
        if let Some(dns) = first.dns {
            line(format!(
                "dig @{} -p {} web.service.{}",
                dns.ip(),
                dns.port(),
                ring.dns_domain
            ));
        }
        line(format!("open {}://{}/ui", ring.scheme, first.http));
    }
    line(format!(
        "data in {} (removed on exit); Ctrl-C stops the {} node{}",
        ring.data_dir.display(),
        ring.nodes.len(),
        if ring.nodes.len() == 1 { "" } else { "s" }
    ));
    // A closed stdout is no reason to stop the ring.
    let _ = output::print(&text);
}

/// Reads an agent's JSON answer into the view a table is made from.
fn from_agent<T: DeserializeOwned>(answer: Value) -> Result<T, Failure> {
    serde_json::from_value(answer)
        .map_err(|e| Failure::Failed(format!("unexpected answer from the agent: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn exit_codes_follow_the_api() {
        assert_eq!(Failure::Failed(String::new()).exit_code(), 1);
        assert_eq!(Failure::Usage(String::new()).exit_code(), 2);
        assert_eq!(Failure::Unreachable(String::new()).exit_code(), 3);
        assert_eq!(Failure::NotFound(String::new()).exit_code(), 4);
        assert_eq!(Failure::BrokenPipe.exit_code(), 0);
    }
}
