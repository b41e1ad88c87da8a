//! Issue 15: TLS on both ports. Real agent processes with certificates made by
//! `chordctl::tls::create` (the code behind `chordctl tls ... create`): mutual TLS on the
//! ring port refuses peers without a certificate from the CA and logs them; the whole CLI over
//! HTTPS with client certificates; rotation of leaf and CA files under traffic; the files of
//! `chordctl tls ca|cert create`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chordctl::tls::create::{self, CertSpec, Made};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::security::{plain_ping, read_until_closed};
use crate::support::eventually;
use crate::support::procs::{agent_command, bin, poll, AgentProc};
use crate::support::run::Run;

/// A CA and certificates signed by it, kept in memory and written where tests want them.
struct Ca {
    ca: Made,
}

impl Ca {
    fn new() -> Ca {
        Ca {
            ca: create::make_ca("test CA", 10).expect("make a CA"),
        }
    }

    /// A certificate for 127.0.0.1 named `name`.
    fn leaf(&self, name: &str, expired: bool) -> Made {
        let spec = CertSpec {
            name: name.into(),
            ips: vec!["127.0.0.1".parse().expect("ip")],
            dns: vec!["localhost".into()],
            days: 10,
            expired,
        };
        create::make_cert(&self.ca.cert_pem, &self.ca.key_pem, &spec).expect("make a cert")
    }
}

/// Write `contents` to `path` as an operator's deploy tool would: a new file renamed over the
/// old one.
fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// One agent's TLS files in their own directory.
struct NodeFiles {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

impl NodeFiles {
    fn write(dir: &Path, leaf: &Made, ca_pem: &str) -> NodeFiles {
        std::fs::create_dir_all(dir).expect("mkdir");
        let files = NodeFiles {
            cert: dir.join("node.pem"),
            key: dir.join("node-key.pem"),
            ca: dir.join("ca.pem"),
        };
        files.set_leaf(leaf);
        replace(&files.ca, ca_pem);
        files
    }

    fn set_leaf(&self, leaf: &Made) {
        replace(&self.key, &leaf.key_pem);
        replace(&self.cert, &leaf.cert_pem);
    }

    /// The files loaded as an agent loads them (HTTP clients not verified).
    fn load(&self) -> Arc<chordctl::tls::Tls> {
        chordctl::tls::Tls::load(
            chordctl::tls::TlsFiles {
                cert: self.cert.clone(),
                key: self.key.clone(),
                ca: self.ca.clone(),
            },
            false,
        )
        .expect("load the TLS files")
    }

    fn flags(&self) -> Vec<String> {
        let path = |p: &PathBuf| p.display().to_string();
        vec![
            "--tls-cert".into(),
            path(&self.cert),
            "--tls-key".into(),
            path(&self.key),
            "--tls-ca".into(),
            path(&self.ca),
        ]
    }
}

/// An agent whose stderr goes to a file the test reads.
struct LoggedAgent {
    proc: AgentProc,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoggedAgent {
    fn start(seed: Option<&str>, tls: &NodeFiles, extra: &[&str]) -> LoggedAgent {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("agent.log");
        let mut args: Vec<String> = tls.flags();
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend([
            "--data-dir".into(),
            dir.path().join("data").display().to_string(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = agent_command(seed, "127.0.0.1:0", "127.0.0.1:0", &args);
        cmd.stderr(File::create(&log).expect("log file"));
        LoggedAgent {
            proc: AgentProc::spawn(cmd),
            log,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("https://{}", self.proc.http)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait for a log line that names `peer` and says `what`.
    fn expect_log(&self, peer: &str, what: &str) -> String {
        poll(
            Duration::from_secs(10),
            "a log line naming the peer",
            || {
                self.log()
                    .lines()
                    .find(|l| l.contains(peer) && l.contains(what))
                    .map(str::to_string)
                    .ok_or_else(|| self.log())
            },
        )
    }
}

/// A rustls client of a ring port, presenting `leaf` and trusting `roots` (PEM).
fn connector(roots: &[&str], leaf: &Made) -> tokio_rustls::TlsConnector {
    let mut store = rustls::RootCertStore::empty();
    for pem in roots {
        for cert in chordctl::tls::parse_certs(pem.as_bytes(), Path::new("roots")).expect("roots") {
            store.add(cert).expect("root");
        }
    }
    let certs =
        chordctl::tls::parse_certs(leaf.cert_pem.as_bytes(), Path::new("leaf")).expect("leaf");
    let key = chordctl::tls::parse_key(leaf.key_pem.as_bytes(), Path::new("key")).expect("key");
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(store)
        .with_client_auth_cert(certs, key)
        .expect("client config");
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Connect to `addr` with `connector`; the local address (what the agent logs), and the
/// certificate the agent served, or the handshake error.
async fn handshake(
    addr: &str,
    connector: &tokio_rustls::TlsConnector,
) -> (
    String,
    Result<
        (
            tokio_rustls::client::TlsStream<TcpStream>,
            CertificateDer<'static>,
        ),
        String,
    >,
) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let local = tcp.local_addr().expect("local addr").to_string();
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let result = match connector.connect(name, tcp).await {
        Ok(s) => {
            let served = s
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first().cloned())
                .map(CertificateDer::into_owned);
            match served {
                Some(cert) => Ok((s, cert)),
                None => Err("no certificate served".to_string()),
            }
        }
        Err(e) => Err(e.to_string()),
    };
    (local, result)
}

/// Whether a ring ping sent on `s` gets an answer (within 2 s) rather than a close.
async fn answers_a_ping(mut s: tokio_rustls::client::TlsStream<TcpStream>) -> bool {
    use tokio::io::AsyncReadExt;
    let _ = s.write_all(&plain_ping()).await;
    let _ = s.flush().await;
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await,
        Ok(Ok(n)) if n > 0
    )
}

/// The DER of a made certificate.
fn der(made: &Made) -> CertificateDer<'static> {
    chordctl::tls::parse_certs(made.cert_pem.as_bytes(), Path::new("cert")).expect("pem")[0].clone()
}

/// A peer that completed the handshake from its side sends a ring ping; the agent must send
/// no answer and close.
async fn refused_after_handshake(mut s: tokio_rustls::client::TlsStream<TcpStream>) {
    let _ = s.write_all(&plain_ping()).await;
    let _ = s.flush().await;
    let got = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(got.is_empty(), "a refused peer read {} bytes", got.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_port_refuses_plaintext_other_ca_and_expired_peers_naming_each_in_the_log() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let files = NodeFiles::write(&dir.path().join("a"), &ca.leaf("a", false), &ca.ca.cert_pem);
    let agent = LoggedAgent::start(None, &files, &[]);
    let ring = agent.proc.ring.clone();

    // A plaintext peer: a ring ping without TLS gets no answer.
    let mut plain = TcpStream::connect(&ring).await.expect("connect");
    let peer = plain.local_addr().expect("addr").to_string();
    plain.write_all(&plain_ping()).await.expect("write");
    let got = read_until_closed(&mut plain, Duration::from_secs(10)).await;
    // At most a TLS alert record (content type 21), never a frame.
    assert!(
        got.is_empty() || got[0] == 21,
        "plaintext peer read {got:?}"
    );
    let line = agent.expect_log(&peer, "TLS handshake failed");
    assert!(line.contains("WARN"), "{line}");

    // A certificate from another CA (the peer itself trusts the agent's CA).
    let other = Ca::new();
    let (peer, result) = handshake(
        &ring,
        &connector(&[&ca.ca.cert_pem], &other.leaf("x", false)),
    )
    .await;
    if let Ok((s, _)) = result {
        refused_after_handshake(s).await;
    }
    agent.expect_log(&peer, "TLS handshake failed");

    // An expired certificate from the right CA.
    let (peer, result) =
        handshake(&ring, &connector(&[&ca.ca.cert_pem], &ca.leaf("old", true))).await;
    if let Ok((s, _)) = result {
        refused_after_handshake(s).await;
    }
    let line = agent.expect_log(&peer, "TLS handshake failed");
    assert!(line.to_lowercase().contains("expired"), "{line}");

    // A valid certificate is served and accepted: the refusals above were about the peers.
    let (_, result) = handshake(&ring, &connector(&[&ca.ca.cert_pem], &ca.leaf("ok", false))).await;
    let (_, served) = result.expect("a peer with a valid certificate is accepted");
    assert_eq!(served, der_of_file(&files.cert));

    // A whole agent with a certificate from another CA cannot join.
    let odir = dir.path().join("other");
    let ofiles = NodeFiles::write(&odir, &other.leaf("o", false), &other.ca.cert_pem);
    cannot_join(&ring, &ofiles, &[], &odir.join("data"));
    let nodes = cli(
        &agent.url(),
        &Client::full(&ca, &dir),
        &["-o", "json", "ring", "show"],
    );
    let nodes: serde_json::Value = serde_json::from_str(&nodes).expect("json");
    assert_eq!(nodes.as_array().map(Vec::len), Some(1), "{nodes}");
}

/// An agent with `files` and `extra` flags tries to join through `seed`; it must give up
/// (exit non-zero) within 30 s.
fn cannot_join(seed: &str, files: &NodeFiles, extra: &[&str], data: &Path) {
    let mut cmd = agent_command(Some(seed), "127.0.0.1:0", "127.0.0.1:0", extra);
    cmd.args(files.flags())
        .arg("--data-dir")
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = crate::support::procs::Reaped(cmd.spawn().expect("spawn"));
    let status = poll(Duration::from_secs(30), "the stranger gives up", || {
        child
            .0
            .try_wait()
            .ok()
            .flatten()
            .ok_or("still running".to_string())
    });
    assert!(!status.success(), "{extra:?} joined a ring it should not");
}

fn der_of_file(path: &Path) -> CertificateDer<'static> {
    let pem = std::fs::read(path).expect("read");
    chordctl::tls::parse_certs(&pem, path).expect("pem")[0].clone()
}

/// The client's TLS files: the CA, and optionally a client certificate.
struct Client {
    cacert: PathBuf,
    cert: Option<(PathBuf, PathBuf)>,
}

impl Client {
    /// The CA and a client certificate, written under `dir`.
    fn full(ca: &Ca, dir: &tempfile::TempDir) -> Client {
        let cdir = dir.path().join(format!("client-{}", rand_suffix()));
        std::fs::create_dir_all(&cdir).expect("mkdir");
        let leaf = ca.leaf("client", false);
        let (cacert, cert, key) = (cdir.join("ca.pem"), cdir.join("c.pem"), cdir.join("k.pem"));
        replace(&cacert, &ca.ca.cert_pem);
        replace(&cert, &leaf.cert_pem);
        replace(&key, &leaf.key_pem);
        Client {
            cacert,
            cert: Some((cert, key)),
        }
    }

    fn args(&self) -> Vec<String> {
        let mut args = vec!["--cacert".to_string(), self.cacert.display().to_string()];
        if let Some((cert, key)) = &self.cert {
            args.extend([
                "--cert".into(),
                cert.display().to_string(),
                "--key".into(),
                key.display().to_string(),
            ]);
        }
        args
    }
}

fn rand_suffix() -> u32 {
    static N: AtomicUsize = AtomicUsize::new(0);
    std::process::id() ^ (N.fetch_add(1, Ordering::Relaxed) as u32) << 20
}

/// `chordctl --agent URL TLS-FLAGS ARGS...` without the caller's CHORDCTL_* settings.
fn cli_command(url: &str, tls: &Client, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.arg("--agent")
        .arg(url)
        .args(tls.args())
        .args(args)
        .env_remove("CHORDCTL_AGENT")
        .env_remove("CHORDCTL_OUTPUT")
        .env_remove("CHORDCTL_CACERT")
        .env_remove("CHORDCTL_CERT")
        .env_remove("CHORDCTL_KEY");
    cmd
}

/// [`cli_command`] run: Ok(stdout) when it exits 0, else Err(stderr).
fn cli_try(url: &str, tls: &Client, args: &[&str]) -> Result<String, String> {
    let out = Run::of(cli_command(url, tls, args));
    match out.code_of() {
        Some(0) => Ok(out.stdout()),
        _ => Err(out.describe()),
    }
}

/// [`cli_command`] that must exit 0: its stdout.
fn cli(url: &str, tls: &Client, args: &[&str]) -> String {
    Run::of(cli_command(url, tls, args)).code(0).stdout()
}

#[test]
fn the_whole_cli_works_over_https_with_client_certificates_and_is_refused_without() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let a_files = NodeFiles::write(&dir.path().join("a"), &ca.leaf("a", false), &ca.ca.cert_pem);
    let b_files = NodeFiles::write(&dir.path().join("b"), &ca.leaf("b", false), &ca.ca.cert_pem);
    let a = LoggedAgent::start(None, &a_files, &["--http-verify-clients"]);
    let b = LoggedAgent::start(Some(&a.proc.ring), &b_files, &["--http-verify-clients"]);
    let tls = Client::full(&ca, &dir);
    let url = b.url();

    poll(Duration::from_secs(30), "a ring of two over TLS", || {
        let out = cli_try(&url, &tls, &["-o", "json", "ring", "show"])?;
        let nodes: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        (nodes.as_array().map(Vec::len) == Some(2))
            .then_some(())
            .ok_or(out)
    });
    cli(&url, &tls, &["locate", "payments"]);
    // The first write waits until both nodes have each other as replica (write quorum 2).
    let register = [
        "svc",
        "register",
        "payments",
        "--address",
        "10.0.0.7",
        "--port",
        "8080",
    ];
    poll(Duration::from_secs(30), "a register over HTTPS", || {
        cli_try(&url, &tls, &register).map(drop)
    });
    let found = cli(&url, &tls, &["-o", "json", "svc", "discover", "payments"]);
    assert!(found.contains("10.0.0.7"), "{found}");
    cli(
        &a.url(),
        &tls,
        &[
            "status",
            "report",
            "payments",
            "10.0.0.7:8080",
            "--state",
            "warning",
        ],
    );
    let status = cli(&url, &tls, &["-o", "json", "status", "query", "payments"]);
    assert!(status.contains("warning"), "{status}");
    let watched = cli(
        &url,
        &tls,
        &["-o", "json", "svc", "watch", "payments", "--count", "1"],
    );
    assert!(watched.contains("snapshot"), "{watched}");
    let bench = cli(
        &url,
        &tls,
        &[
            "-o",
            "json",
            "bench",
            "--duration",
            "1s",
            "--concurrency",
            "2",
            "--services",
            "2",
        ],
    );
    let bench: serde_json::Value = serde_json::from_str(&bench).expect("bench json");
    assert!(bench["ops"].as_u64().unwrap_or(0) > 0, "{bench}");
    assert_eq!(bench["errors"].as_u64(), Some(0), "{bench}");

    // The environment variables work like the flags.
    let mut cmd = Command::new(bin());
    let (cert, key) = tls.cert.clone().expect("client cert");
    cmd.args(["ring", "show"])
        .env("CHORDCTL_AGENT", &url)
        .env("CHORDCTL_CACERT", &tls.cacert)
        .env("CHORDCTL_CERT", &cert)
        .env("CHORDCTL_KEY", &key);
    Run::of(cmd).code(0);

    // Without a client certificate the agent refuses: exit 1, a message about TLS.
    let no_cert = Client {
        cacert: tls.cacert.clone(),
        cert: None,
    };
    let out = Run::of(cli_command(&url, &no_cert, &["ring", "show"]));
    out.code(1).stderr_has("TLS");
    assert!(out.stdout().is_empty());
    b.expect_log("", "HTTPS connection refused");
    // Without --cacert an https:// agent is a usage error; plain http gets nothing.
    let mut cmd = Command::new(bin());
    cmd.args(["--agent", &url, "ring", "show"])
        .env_remove("CHORDCTL_CACERT");
    Run::of(cmd).code(2).stderr_has("--cacert");
    let mut cmd = Command::new(bin());
    cmd.args([
        "--agent",
        &format!("http://{}", b.proc.http),
        "ring",
        "show",
    ]);
    assert_ne!(Run::of(cmd).code_of(), Some(0));
}

#[test]
fn the_cluster_secret_and_the_api_token_keep_working_inside_tls() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let node = |name: &str| {
        NodeFiles::write(
            &dir.path().join(name),
            &ca.leaf(name, false),
            &ca.ca.cert_pem,
        )
    };
    let guarded = [
        "--cluster-secret",
        "ring-secret-for-tls",
        "--api-token",
        "tls-token",
    ];
    let a = LoggedAgent::start(None, &node("a"), &guarded);
    let b = LoggedAgent::start(Some(&a.proc.ring), &node("b"), &guarded);
    let tls = Client::full(&ca, &dir);
    poll(Duration::from_secs(30), "a ring of two", || {
        let out = cli_try(
            &b.url(),
            &tls,
            &["--token", "tls-token", "-o", "json", "ring", "show"],
        )?;
        let nodes: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        (nodes.as_array().map(Vec::len) == Some(2))
            .then_some(())
            .ok_or(out)
    });
    // The token: required over HTTPS as over HTTP.
    Run::of(cli_command(&b.url(), &tls, &["ring", "show"]))
        .code(1)
        .stderr_has("token");
    // The secret: a member with a good certificate but another secret cannot join.
    let data = dir.path().join("c-data");
    cannot_join(
        &a.proc.ring,
        &node("c"),
        &["--cluster-secret", "another-secret"],
        &data,
    );
    a.expect_log("", "cluster authentication failed");
}

/// A client loop registering through every agent in turn until `stop`; counts successes and
/// keeps every failure once the ring has settled (a success through every agent in a row:
/// before that, a write may miss its quorum while the new ring finds its replicas).
fn traffic(
    urls: Vec<String>,
    roots: Vec<String>,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
        for pem in &roots {
            builder = builder.add_root_certificate(
                reqwest::Certificate::from_pem(pem.as_bytes()).expect("root"),
            );
        }
        let http = builder.build().expect("client");
        let mut failures = Vec::new();
        let mut in_a_row = 0usize;
        let mut i = 0usize;
        while !stop.load(Ordering::SeqCst) {
            let url = &urls[i % urls.len()];
            let put = format!("{url}/v1/services/svc{}/instances/i{i}", i % 7);
            let body = serde_json::json!({"address": "10.1.0.1", "port": 1 + (i % 60000)});
            match http.put(&put).json(&body).send().await {
                Ok(r) if r.status().is_success() => {
                    in_a_row += 1;
                    if in_a_row >= urls.len() {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                }
                Ok(_) | Err(_) if in_a_row < urls.len() => in_a_row = 0,
                Ok(r) => failures.push(format!("{put}: {}", r.status())),
                Err(e) => failures.push(format!("{put}: {e}")),
            }
            i += 1;
        }
        failures
    })
}

/// Scrape `name`'s first sample (the whole line) from an agent's /metrics over HTTPS, trusting
/// the CAs of the PEM bundle `roots`.
async fn metric(url: &str, roots: &str, name: &str) -> Option<String> {
    let scraped = async {
        let mut builder = reqwest::Client::builder();
        for root in reqwest::Certificate::from_pem_bundle(roots.as_bytes())? {
            builder = builder.add_root_certificate(root);
        }
        let http = builder.build()?;
        http.get(format!("{url}/metrics"))
            .send()
            .await?
            .text()
            .await
    };
    match scraped.await {
        Ok(text) => text
            .lines()
            .find(|l| l.starts_with(name))
            .map(str::to_string),
        Err(e) => {
            eprintln!("scraping {url}: {e:?}");
            None
        }
    }
}

/// Wait (at most 5 s from `since`) until the ring port at `addr` serves `want`.
async fn serves_within_5s(
    addr: &str,
    connector: &tokio_rustls::TlsConnector,
    want: &CertificateDer<'static>,
    since: Instant,
) {
    loop {
        let (_, result) = handshake(addr, connector).await;
        if let Ok((_, served)) = &result {
            if served == want {
                return;
            }
        }
        assert!(
            since.elapsed() < Duration::from_secs(5),
            "{addr} does not serve the new certificate 5 s after the files changed: {:?}",
            result.err()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_leaf_and_ca_files_reach_new_connections_within_5s_and_no_request_fails() {
    let (ca1, ca2) = (Ca::new(), Ca::new());
    let dir = tempfile::tempdir().expect("tempdir");
    let files: Vec<NodeFiles> = (0..3)
        .map(|i| {
            NodeFiles::write(
                &dir.path().join(format!("n{i}")),
                &ca1.leaf(&format!("n{i}"), false),
                &ca1.ca.cert_pem,
            )
        })
        .collect();
    let first = LoggedAgent::start(None, &files[0], &[]);
    let mut agents = vec![first];
    for f in &files[1..] {
        let seed = agents[0].proc.ring.clone();
        agents.push(LoggedAgent::start(Some(&seed), f, &[]));
    }
    let urls: Vec<String> = agents.iter().map(LoggedAgent::url).collect();
    let roots = vec![ca1.ca.cert_pem.clone(), ca2.ca.cert_pem.clone()];

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let load = traffic(urls.clone(), roots.clone(), stop.clone(), ok.clone());
    let at_least = |n: usize| {
        let ok = ok.clone();
        async move {
            eventually("registrations flow", Duration::from_secs(30), async || {
                let done = ok.load(Ordering::SeqCst);
                (done >= n)
                    .then_some(())
                    .ok_or(format!("{done} registrations"))
            })
            .await
        }
    };
    at_least(50).await;

    // Every agent has taken `n` reloads (one step of the rotation done everywhere).
    let reloaded = |n: u64| {
        let (urls, ca) = (urls.clone(), roots.concat());
        async move {
            let want = format!("chordctl_tls_reloads_total {n}");
            for url in &urls {
                eventually(
                    "the files are reloaded",
                    Duration::from_secs(5),
                    async || {
                        let m = metric(url, &ca, "chordctl_tls_reloads_total").await;
                        (m.as_deref() == Some(want.as_str()))
                            .then_some(())
                            .ok_or(format!("{m:?}"))
                    },
                )
                .await;
            }
        }
    };

    // 1. Both CAs trusted, everywhere, before any certificate from the new one is shown.
    let bundle = format!("{}{}", ca1.ca.cert_pem, ca2.ca.cert_pem);
    for f in &files {
        replace(&f.ca, &bundle);
    }
    reloaded(1).await;
    // 2. New leaves from the new CA: new connections get them within 5 s.
    let probe_old = connector(
        &[&ca1.ca.cert_pem, &ca2.ca.cert_pem],
        &ca1.leaf("probe", false),
    );
    let mut new_leaves = Vec::new();
    for f in &files {
        let leaf = ca2.leaf("rotated", false);
        f.set_leaf(&leaf);
        new_leaves.push(der(&leaf));
    }
    let since = Instant::now();
    for (agent, want) in agents.iter().zip(&new_leaves) {
        serves_within_5s(&agent.proc.ring, &probe_old, want, since).await;
    }
    reloaded(2).await;
    let before = ok.load(Ordering::SeqCst);
    at_least(before + 50).await;

    // 3. The old CA dropped: a peer with its certificate is refused, the new one is not.
    for f in &files {
        replace(&f.ca, &ca2.ca.cert_pem);
    }
    let probe_new = connector(&[&ca2.ca.cert_pem], &ca2.leaf("probe2", false));
    let since = Instant::now();
    eventually(
        "the old CA is no longer trusted",
        Duration::from_secs(5),
        async || {
            let (_, result) = handshake(&agents[1].proc.ring, &probe_old).await;
            match result {
                Err(_) => Ok(()),
                // TLS 1.3: the client's certificate is judged after its side of the handshake.
                Ok((s, _)) => match answers_a_ping(s).await {
                    false => Ok(()),
                    true => Err("answered".to_string()),
                },
            }
        },
    )
    .await;
    assert!(since.elapsed() < Duration::from_secs(6));
    let (_, result) = handshake(&agents[1].proc.ring, &probe_new).await;
    assert!(result.is_ok(), "a peer from the new CA: {:?}", result.err());
    let before = ok.load(Ordering::SeqCst);
    at_least(before + 50).await;
    for a in &agents {
        let failures = metric(
            &a.url(),
            &ca2.ca.cert_pem,
            "chordctl_tls_reload_failures_total",
        )
        .await;
        assert_eq!(
            failures.as_deref(),
            Some("chordctl_tls_reload_failures_total 0")
        );
    }

    // 4. A broken file keeps the material in use and is counted.
    replace(&files[0].cert, "not a certificate\n");
    eventually(
        "the failure is counted",
        Duration::from_secs(10),
        async || {
            let m = metric(
                &urls[0],
                &ca2.ca.cert_pem,
                "chordctl_tls_reload_failures_total",
            )
            .await;
            (m.as_deref() == Some("chordctl_tls_reload_failures_total 1"))
                .then_some(())
                .ok_or(format!("{m:?}"))
        },
    )
    .await;
    agents[0].expect_log("", "TLS reload failed");
    let (_, result) = handshake(&agents[0].proc.ring, &probe_new).await;
    let (_, served) = result.expect("still served");
    assert_eq!(served, new_leaves[0], "the old material stays in use");
    let expiry = metric(
        &urls[0],
        &ca2.ca.cert_pem,
        "chordctl_tls_cert_expiry_seconds",
    )
    .await;
    assert!(expiry.is_some_and(|l| l.contains("node.pem")));
    let before = ok.load(Ordering::SeqCst);
    at_least(before + 20).await;

    stop.store(true, Ordering::SeqCst);
    let failures = load.await.expect("traffic task");
    assert!(
        failures.is_empty(),
        "requests failed during rotation: {failures:?}"
    );
}

#[test]
fn tls_ca_and_cert_create_write_private_keys_and_certificates_that_load_in_rustls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display().to_string();
    let run = |args: &[&str]| {
        let mut cmd = Command::new(bin());
        cmd.args(args);
        Run::of(cmd)
    };
    run(&["tls", "ca", "create", "--dir", &d, "--days", "30"]).code(0);
    run(&[
        "tls",
        "cert",
        "create",
        "node1",
        "--dir",
        &d,
        "--ip",
        "127.0.0.1",
        "--ip",
        "10.0.0.7",
        "--dns",
        "node1.example",
        "--dns",
        "localhost",
    ])
    .code(0)
    .stdout_has("node1.pem")
    .stdout_has("node1-key.pem");

    use std::os::unix::fs::PermissionsExt;
    for key in ["ca-key.pem", "node1-key.pem"] {
        let mode = std::fs::metadata(dir.path().join(key))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    // They load in rustls: a server with client verification, a client with its cert.
    let read = |name: &str| std::fs::read(dir.path().join(name)).expect("read");
    let ca = chordctl::tls::parse_certs(&read("ca.pem"), Path::new("ca.pem")).expect("ca");
    let certs = chordctl::tls::parse_certs(&read("node1.pem"), Path::new("n")).expect("cert");
    let key = chordctl::tls::parse_key(&read("node1-key.pem"), Path::new("k")).expect("key");
    let files = chordctl::tls::TlsFiles {
        cert: dir.path().join("node1.pem"),
        key: dir.path().join("node1-key.pem"),
        ca: dir.path().join("ca.pem"),
    };
    chordctl::tls::Tls::load(files, true).expect("the agent loads them");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca[0].clone()).expect("root");
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(certs.clone(), key)
        .expect("client config");
    // The names given are in the certificate, and it serves both ends.
    let (_, x) = x509_parser::parse_x509_certificate(certs[0].as_ref()).expect("x509");
    use x509_parser::extensions::GeneralName;
    let sans: Vec<String> = x
        .subject_alternative_name()
        .expect("sans")
        .expect("sans present")
        .value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::DNSName(d) => d.to_string(),
            GeneralName::IPAddress(b) => match <[u8; 4]>::try_from(*b) {
                Ok(v4) => std::net::IpAddr::from(v4).to_string(),
                Err(_) => format!("{b:?}"),
            },
            other => format!("{other:?}"),
        })
        .collect();
    for name in ["127.0.0.1", "10.0.0.7", "node1.example", "localhost"] {
        assert!(sans.iter().any(|s| s == name), "{name} not in {sans:?}");
    }
    let eku = x
        .extended_key_usage()
        .expect("eku")
        .expect("eku present")
        .value;
    assert!(eku.server_auth && eku.client_auth);

    // Files are never overwritten; bad names are usage errors; no CA, a clear failure.
    run(&["tls", "cert", "create", "node1", "--dir", &d])
        .code(1)
        .stderr_has("exists already");
    run(&["tls", "cert", "create", "../evil", "--dir", &d]).code(2);
    let empty = tempfile::tempdir().expect("tempdir");
    let empty = empty.path().display().to_string();
    run(&["tls", "cert", "create", "n", "--dir", &empty])
        .code(1)
        .stderr_has("tls ca create");
}

#[test]
fn agent_dev_tls_prints_client_settings_that_work() {
    let mut cmd = Command::new(bin());
    cmd.args(["agent", "dev", "--nodes", "1", "--tls"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let _tmp = crate::support::procs::private_tmp(&mut cmd);
    let mut child = crate::support::procs::Reaped(cmd.spawn().expect("spawn"));
    let stdout = child.0.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut env = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while env.len() < 4 {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("agent dev printed its settings");
        if let Some((k, v)) = line.strip_prefix("export ").and_then(|l| l.split_once('=')) {
            env.push((k.to_string(), v.to_string()));
        }
    }
    assert!(env[0].1.starts_with("https://"), "{env:?}");
    let mut cmd = Command::new(bin());
    cmd.args(["ring", "show"])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    Run::of(cmd).code(0);
}

/// One agent in this process serving HTTPS on port 0 with `limits`: its address, a maker of
/// clients that trust its CA, the token that stops the server, and what keeps the agent and
/// its files alive.
async fn https_agent(
    limits: chordctl::http::Limits,
) -> (
    std::net::SocketAddr,
    impl Fn() -> reqwest::Client,
    tokio_util::sync::CancellationToken,
    (crate::support::cluster::TestCluster, tempfile::TempDir, Ca),
) {
    let ca = Ca::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let files = NodeFiles::write(dir.path(), &ca.leaf("n0", false), &ca.ca.cert_pem);
    let tls = files.load();
    let c = crate::support::cluster::TestCluster::start(1).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = chordctl::http::router_with(c.node(0).agent().clone(), &limits);
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(chordctl::http::serve_app_with(
        listener,
        app,
        limits,
        Some(tls),
        stop.clone(),
    ));
    let root = ca.ca.cert_pem.clone();
    let client = move || {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(root.as_bytes()).expect("root"))
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client")
    };
    (addr, client, stop, (c, dir, ca))
}

/// One deadline covers an HTTPS connection's TLS handshake, its first bytes and the head of a
/// change stream (the lean path): a client that spends most of the deadline on the handshake
/// and then sends the head a byte at a time is closed once that deadline has passed. Each step
/// used to get a deadline of its own, so such a client held its connection for up to three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_https_stream_head_gets_one_deadline_from_accept_not_one_per_step() {
    let deadline = Duration::from_secs(2);
    let limits = chordctl::http::Limits {
        header_read_timeout: deadline,
        ..chordctl::http::Limits::default()
    };
    let (addr, _client, stop, (_c, _dir, ca)) = https_agent(limits).await;
    let connector = connector(&[&ca.ca.cert_pem], &ca.leaf("slow", false));
    let started = Instant::now();
    let tcp = TcpStream::connect(addr).await.expect("connect");
    // The slow client under test: three quarters of the deadline before its handshake.
    tokio::time::sleep(deadline * 3 / 4).await;
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let mut s = connector
        .connect(name, tcp)
        .await
        .expect("a handshake within the deadline");
    // Then the head of a change stream, one byte every 100 ms, never finished.
    let head = b"GET /v1/watch/services/pay HTTP/1.1\r\nhost: x\r\nx-slow: ";
    let mut sent = 0usize;
    let mut buf = [0u8; 512];
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the connection is still open after 30 s"
        );
        let byte = head.get(sent).copied().unwrap_or(b'a');
        if s.write_all(&[byte]).await.is_err() || s.flush().await.is_err() {
            break;
        }
        sent += 1;
        match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) | Err(_) => {}
        }
    }
    let held = started.elapsed();
    assert!(
        held < deadline * 2,
        "closed after {held:?} ({sent} bytes sent); the deadline from accept is {deadline:?}"
    );
    stop.cancel();
}

/// An HTTPS change stream (served without hyper) sends its snapshot and then each change,
/// a malformed one is answered with a JSON 400, and other HTTPS requests on new connections
/// (to hyper, the bytes read to tell them apart put back) are answered as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_change_stream_sends_its_changes_and_other_requests_still_work() {
    let (addr, client, stop, _agent) = https_agent(chordctl::http::Limits::default()).await;
    let base = format!("https://127.0.0.1:{}", addr.port());
    let put = |id: &'static str| {
        let (http, url) = (client(), format!("{base}/v1/services/pay/instances/{id}"));
        async move {
            let r = http
                .put(url)
                .json(&serde_json::json!({"address": "10.0.0.1", "port": 80}))
                .send()
                .await
                .expect("put");
            assert_eq!(r.status().as_u16(), 200);
        }
    };
    put("a").await;
    let mut stream = client()
        .get(format!("{base}/v1/watch/services/pay"))
        .send()
        .await
        .expect("a stream");
    assert_eq!(stream.status().as_u16(), 200);
    let mut seen = String::new();
    let mut wrote = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen.contains("\"b\"") {
        assert!(
            Instant::now() < deadline,
            "no change seen on the stream: {seen}"
        );
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.chunk())
            .await
            .expect("a frame in time")
            .expect("the stream goes on")
            .expect("a frame");
        seen.push_str(&String::from_utf8_lossy(&chunk));
        if !wrote && seen.contains("snapshot") {
            // The snapshot came: now a change.
            put("b").await;
            wrote = true;
        }
    }
    assert!(seen.contains("\"a\""), "the snapshot: {seen}");
    // A stream request with a body is refused as over plain HTTP.
    let bad = client()
        .get(format!("{base}/v1/watch/services/pay"))
        .header("content-length", "2")
        .body("{}")
        .send()
        .await
        .expect("an answer");
    assert_eq!(bad.status().as_u16(), 400);
    let body: serde_json::Value = bad.json().await.expect("a JSON body");
    assert!(body["error"]["message"].is_string(), "{body}");
    // Other requests on new connections still go to hyper.
    let health = client()
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("health");
    assert!(health.status().is_success());
    let found = client()
        .get(format!("{base}/v1/services/pay"))
        .send()
        .await
        .expect("discover");
    let found: serde_json::Value = found.json().await.expect("JSON");
    assert_eq!(
        found["instances"].as_array().map(Vec::len),
        Some(2),
        "{found}"
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_connections_over_the_cap_get_a_json_503_inside_tls() {
    let limits = chordctl::http::Limits {
        max_connections: 1,
        ..chordctl::http::Limits::default()
    };
    let (addr, client, stop, _agent) = https_agent(limits).await;
    let http = client();
    let url = format!("https://127.0.0.1:{}/healthz", addr.port());
    // The agent serves HTTPS, then one held connection fills it.
    let ok = http.get(&url).send().await.expect("served");
    assert!(ok.status().is_success(), "{}", ok.status());
    drop(ok);
    let _held = TcpStream::connect(addr).await.expect("connect");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // A new client each time: no pooled connection is reused.
        let http = client();
        match http.get(&url).send().await {
            Ok(r) if r.status().as_u16() == 503 => {
                let body: serde_json::Value = r.json().await.expect("a JSON body");
                crate::security::assert_too_many_connections(&body);
                break;
            }
            other => assert!(
                Instant::now() < deadline,
                "never refused inside TLS: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
}

/// Answers every ring request with an acknowledgement.
struct Acks;

#[async_trait::async_trait]
impl chordctl::rpc::Handler for Acks {
    async fn handle(&self, _req: chordctl::rpc::Request) -> chordctl::rpc::Response {
        chordctl::rpc::Response::Ring(chordctl::ring::RingResponse::Ack)
    }
}

/// Over mutual TLS, with and without a cluster secret, a ring connection over the agent's cap
/// is told so inside TLS: the caller sees a peer at its cap (it retries, and a join does not
/// give up), not a TLS failure that reads as a refusal of its credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_connections_over_the_cap_are_told_so_inside_tls() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let files = NodeFiles::write(dir.path(), &ca.leaf("n0", false), &ca.ca.cert_pem);
    let load = || files.load();
    for secret in [None, Some(chordctl::rpc::ClusterSecret::new("s3cret"))] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let stop = tokio_util::sync::CancellationToken::new();
        let security = chordctl::rpc::Security {
            secret: secret.clone(),
            tls: Some(load()),
        };
        let limits = chordctl::rpc::Limits {
            max_connections: 1,
            ..chordctl::rpc::Limits::default()
        };
        tokio::spawn(chordctl::rpc::serve_with(
            listener,
            Arc::new(Acks),
            security,
            limits,
            stop.clone(),
        ));
        let pool = || {
            chordctl::rpc::Pool::with_security(Duration::from_secs(5), secret.clone(), Some(load()))
        };
        let ping = || chordctl::rpc::Request::Ring(chordctl::ring::RingRequest::Ping);
        let first = pool();
        let answer = first.call(&addr, ping()).await;
        assert!(answer.is_ok(), "the first connection is served: {answer:?}");
        let late = pool();
        let err = late.call(&addr, ping()).await.expect_err("over the cap");
        assert!(
            matches!(err, chordctl::rpc::CallError::Busy(_)) && !err.is_auth(),
            "secret {}: {err}",
            secret.is_some()
        );
        stop.cancel();
    }
}

/// Past its bounded set of refusals in TLS (`tls::Refusals`), a TLS node closes a connection
/// before sending any of the handshake. The caller must not read that as a refusal of its
/// certificate, which makes a join give up at once: it retries. (It still suspects the peer,
/// as for any connection that nothing answered: a port without TLS does the same.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_before_any_tls_bytes_is_retried_not_taken_for_a_bad_certificate() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let files = NodeFiles::write(dir.path(), &ca.leaf("n0", false), &ca.ca.cert_pem);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let closer = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            drop(stream);
        }
    });
    let pool = chordctl::rpc::Pool::with_security(Duration::from_secs(5), None, Some(files.load()));
    let ping = chordctl::rpc::Request::Ring(chordctl::ring::RingRequest::Ping);
    let err = pool.call(&addr, ping).await.expect_err("closed bare");
    assert!(
        matches!(err, chordctl::rpc::CallError::ClosedInTls(_)) && !err.is_auth(),
        "{err}"
    );
    closer.abort();
}

/// An agent with TLS whose seed is a ring port without TLS: the seed closes the connection in
/// the handshake, which is not a verdict on the certificate, so the join retries; when its
/// deadline passes it must fail naming the seed and saying what the seed did, not only that a
/// lookup found no live node.
#[test]
fn a_tls_join_through_a_ring_port_without_tls_fails_saying_what_the_seed_did() {
    let plain = AgentProc::start(None, &[]);
    let ca = Ca::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let files = NodeFiles::write(dir.path(), &ca.leaf("n1", false), &ca.ca.cert_pem);
    let started = Instant::now();
    let out = agent_command(Some(&plain.ring), "127.0.0.1:0", "127.0.0.1:0", &[])
        .args(files.flags())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run");
    assert!(!out.status.success(), "joined a ring without TLS");
    assert!(started.elapsed() < Duration::from_secs(60));
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains(&plain.ring) && last.contains("TLS handshake"),
        "the error names the seed and the handshake: {last}\n{err}"
    );
}
