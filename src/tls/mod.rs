//! TLS on both ports (issue 15): rustls with the `ring` provider, no OpenSSL.
//!
//! - The ring port speaks mutual TLS: every peer, in both directions, must present a
//!   certificate signed by the configured CA, and the dialled address (`HOST` of `HOST:PORT`)
//!   must be in the served certificate's names. The `--cluster-secret` handshake of
//!   [`crate::rpc::auth`] then runs inside the TLS stream, as before.
//! - The HTTP port speaks HTTPS with the same certificate; `--http-verify-clients` requires
//!   client certificates from the same CA there too. `--api-token` still applies.
//! - [`Tls`] holds the material loaded from the three files and swaps it when they change
//!   ([`Tls::watch`]: polled every [`POLL_INTERVAL`], and on SIGHUP). Every new connection
//!   takes the material in force when it starts; connections in use keep theirs. A file that
//!   does not load keeps the old material, is logged (WARN) and counted
//!   (`chordctl_tls_reload_failures_total`).
//! - [`create`]: the CA and certificates of `chordctl tls ca|cert create` and `agent dev --tls`.

pub mod create;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;

use crate::{Error, Result};

/// How often the agent looks at its certificate files for a change.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// After a change is seen, the files must read the same again this much later before they are
/// loaded: a certificate and its key are rarely replaced in one instant, and half a rotation
/// is not a failure worth counting.
const SETTLE: Duration = Duration::from_millis(250);

/// The three PEM files of `--tls-cert`, `--tls-key` and `--tls-ca`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// This node's certificate (chain), used as server and as client certificate.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1 PEM).
    pub key: PathBuf,
    /// The CA certificate(s) peers' certificates must be signed by (a bundle during a CA
    /// rotation).
    pub ca: PathBuf,
}

/// The contents of the three files as read at one time, and their digest.
struct Snapshot {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Vec<u8>,
    digest: [u8; 32],
}

impl Snapshot {
    fn read(files: &TlsFiles) -> std::result::Result<Snapshot, String> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
        };
        let (cert, key, ca) = (read(&files.cert)?, read(&files.key)?, read(&files.ca)?);
        let mut h = Sha256::new();
        for part in [&cert, &key, &ca] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        Ok(Snapshot {
            cert,
            key,
            ca,
            digest: h.finalize().into(),
        })
    }
}

/// The configurations built from one snapshot of the files.
struct Material {
    ring_server: Arc<ServerConfig>,
    ring_client: Arc<ClientConfig>,
    http_server: Arc<ServerConfig>,
    /// `(file, unix time)` of the earliest expiry among the certificates of each file.
    expiry: Vec<(String, i64)>,
}

/// The provider every configuration is built with: rustls over `ring` (no cmake or aws-lc
/// build). rustls deprecates it for lacking post-quantum key exchange, which neither side of
/// a chordctl connection needs to agree on: both ends are chordctl.
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate of a PEM file; an error naming the file when it holds none.
pub fn parse_certs(
    pem: &[u8],
    what: &Path,
) -> std::result::Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file: {e}", what.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: holds no PEM certificate", what.display()));
    }
    Ok(certs)
}

/// The private key of a PEM file.
pub fn parse_key(pem: &[u8], what: &Path) -> std::result::Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| format!("{}: not a PEM private key: {e}", what.display()))
}

/// The notAfter of a DER certificate, in unix seconds.
pub fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(parsed.validity().not_after.timestamp())
}

/// The earliest notAfter among `certs`.
fn earliest_expiry(certs: &[CertificateDer<'_>]) -> Option<i64> {
    certs.iter().filter_map(not_after).min()
}

impl Material {
    fn build(
        files: &TlsFiles,
        snap: &Snapshot,
        verify_http_clients: bool,
    ) -> std::result::Result<Material, String> {
        let certs = parse_certs(&snap.cert, &files.cert)?;
        let key = parse_key(&snap.key, &files.key)?;
        let cas = parse_certs(&snap.ca, &files.ca)?;
        let provider = provider();
        // Checks that the key is the certificate's (rustls would otherwise fail handshakes).
        rustls::sign::CertifiedKey::from_der(certs.clone(), key.clone_key(), &provider).map_err(
            |e| {
                format!(
                    "{} and {} do not go together: {e}",
                    files.cert.display(),
                    files.key.display()
                )
            },
        )?;
        let mut roots = RootCertStore::empty();
        for ca in &cas {
            roots
                .add(ca.clone())
                .map_err(|e| format!("{}: not a usable CA certificate: {e}", files.ca.display()))?;
        }
        let roots = Arc::new(roots);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| format!("{}: {e}", files.ca.display()))?;
        let server = |client_auth: bool| -> std::result::Result<ServerConfig, String> {
            let builder = ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?;
            let builder = if client_auth {
                builder.with_client_cert_verifier(verifier.clone())
            } else {
                builder.with_no_client_auth()
            };
            builder
                .with_single_cert(certs.clone(), key.clone_key())
                .map_err(|e| format!("{}: {e}", files.cert.display()))
        };
        let ring_server = server(true)?;
        let mut http_server = server(verify_http_clients)?;
        http_server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let ring_client = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs.clone(), key.clone_key())
            .map_err(|e| format!("{}: {e}", files.cert.display()))?;
        let mut expiry = Vec::new();
        for (path, certs) in [(&files.cert, &certs[..1]), (&files.ca, &cas[..])] {
            if let Some(t) = earliest_expiry(certs) {
                expiry.push((path.display().to_string(), t));
            }
        }
        Ok(Material {
            ring_server: Arc::new(ring_server),
            ring_client: Arc::new(ring_client),
            http_server: Arc::new(http_server),
            expiry,
        })
    }
}

/// Refusals told inside TLS, at most [`Refusals::AT_ONCE`] at a time. A connection over a
/// cap (of HTTPS or ring connections) is told why only inside TLS, so a handshake is made
/// for it; an agent over its cap has little CPU to spare for those, so past that many at
/// once the connection is closed bare.
#[derive(Clone)]
pub struct Refusals(Arc<tokio::sync::Semaphore>);

impl Refusals {
    /// Refusal handshakes in progress at most.
    pub const AT_ONCE: usize = 16;

    pub fn new() -> Refusals {
        Refusals(Arc::new(tokio::sync::Semaphore::new(Self::AT_ONCE)))
    }

    /// Run the refusal `make` builds (a handshake and the notice) on a task of its own, if
    /// fewer than [`Refusals::AT_ONCE`] are running; otherwise build nothing (the caller's
    /// connection closes bare), so an agent over its cap sets up no TLS session for it.
    pub fn spawn<F>(&self, make: impl FnOnce() -> F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        if let Ok(permit) = self.0.clone().try_acquire_owned() {
            let refusal = make();
            tokio::spawn(async move {
                refusal.await;
                drop(permit);
            });
        }
    }
}

impl Default for Refusals {
    fn default() -> Self {
        Refusals::new()
    }
}

/// The agent's TLS state: the material in force, swapped when the files change.
pub struct Tls {
    files: TlsFiles,
    verify_http_clients: bool,
    current: RwLock<Arc<Material>>,
    /// Digest of the files' contents last loaded or tried (a broken file is counted once).
    seen: Mutex<[u8; 32]>,
    /// Grows with every successful reload: pooled ring connections made before are replaced.
    generation: AtomicU64,
    reload_failures: AtomicU64,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("files", &self.files)
            .field("verify_http_clients", &self.verify_http_clients)
            .field("generation", &self.generation())
            .finish()
    }
}

impl Tls {
    /// Load the files, or say exactly which one is wrong (a start-up error).
    pub fn load(files: TlsFiles, verify_http_clients: bool) -> Result<Arc<Tls>> {
        let snap = Snapshot::read(&files).map_err(Error::invalid)?;
        let material =
            Material::build(&files, &snap, verify_http_clients).map_err(Error::invalid)?;
        warn_if_expired(&material);
        Ok(Arc::new(Tls {
            files,
            verify_http_clients,
            current: RwLock::new(Arc::new(material)),
            seen: Mutex::new(snap.digest),
            generation: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
        }))
    }

    fn material(&self) -> Arc<Material> {
        match self.current.read() {
            Ok(m) => m.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Accepts one ring RPC connection with the material in force (client certificate
    /// required).
    pub fn ring_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.material().ring_server.clone())
    }

    /// Accepts one HTTPS connection with the material in force.
    pub fn http_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.material().http_server.clone())
    }

    /// Dials ring peers with the material in force, and the generation it belongs to.
    pub fn ring_connector(&self) -> (TlsConnector, u64) {
        let generation = self.generation();
        (
            TlsConnector::from(self.material().ring_client.clone()),
            generation,
        )
    }

    /// How many times new material was taken; a connection made under an older one is not
    /// reused for new calls.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Reloads that failed (a file that did not load; the old material stayed).
    pub fn reload_failures(&self) -> u64 {
        self.reload_failures.load(Ordering::Relaxed)
    }

    /// Reread the files; with `force` (SIGHUP) even when they look unchanged. `Ok(true)`: new
    /// material is in force; `Ok(false)`: nothing changed. An error is logged and counted, and
    /// the old material stays.
    pub fn reload(&self, force: bool) -> std::result::Result<bool, String> {
        let snap = Snapshot::read(&self.files);
        let outcome = snap.and_then(|snap| {
            let seen = self.seen.lock().map(|s| *s).unwrap_or_default();
            if !force && seen == snap.digest {
                return Ok(false);
            }
            if let Ok(mut s) = self.seen.lock() {
                *s = snap.digest;
            }
            let material = Material::build(&self.files, &snap, self.verify_http_clients)?;
            warn_if_expired(&material);
            match self.current.write() {
                Ok(mut m) => *m = Arc::new(material),
                Err(poisoned) => *poisoned.into_inner() = Arc::new(material),
            }
            self.generation.fetch_add(1, Ordering::AcqRel);
            Ok(true)
        });
        match &outcome {
            Ok(true) => tracing::info!(
                cert = %self.files.cert.display(),
                "TLS certificates reloaded; new connections use them"
            ),
            Ok(false) => {}
            Err(e) => {
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("TLS reload failed, keeping the certificates in use: {e}");
            }
        }
        outcome
    }

    /// Whether the files changed since last loaded or tried, and read the same across
    /// [`SETTLE`] (a rotation in progress is waited for).
    async fn changed(&self) -> bool {
        let digest = |files: &TlsFiles| Snapshot::read(files).ok().map(|s| s.digest);
        let seen = self.seen.lock().map(|s| *s).unwrap_or_default();
        let Some(first) = digest(&self.files) else {
            // A missing file may be mid-rotation; it is tried (and reported) once it settles.
            tokio::time::sleep(SETTLE).await;
            return digest(&self.files).is_none() && self.missing_is_new();
        };
        if first == seen {
            return false;
        }
        tokio::time::sleep(SETTLE).await;
        digest(&self.files) == Some(first)
    }

    /// A file that cannot be read is reported once, not every poll.
    fn missing_is_new(&self) -> bool {
        match self.seen.lock() {
            Ok(mut s) if *s != [0xff; 32] => {
                *s = [0xff; 32];
                true
            }
            _ => false,
        }
    }

    /// Follow the files until `stop`: reload when they change (polled every
    /// [`POLL_INTERVAL`]) and on SIGHUP.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        let mut hup = hangups();
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let force = tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => false,
                _ = next_hangup(&mut hup) => true,
            };
            if force {
                tracing::info!("SIGHUP: rereading the TLS certificate files");
            }
            if force || self.changed().await {
                // The outcome is logged and counted by `reload`.
                let _ = self.reload(force);
            }
        }
    }

    /// The TLS metric families, in the Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP chordctl_tls_reloads_total TLS certificate files taken into use after a change.\n\
             # TYPE chordctl_tls_reloads_total counter\n\
             chordctl_tls_reloads_total {}\n\
             # HELP chordctl_tls_reload_failures_total TLS certificate reloads that failed (the old certificates stayed in use).\n\
             # TYPE chordctl_tls_reload_failures_total counter\n\
             chordctl_tls_reload_failures_total {}",
            self.generation(),
            self.reload_failures()
        );
        let _ = writeln!(
            out,
            "# HELP chordctl_tls_cert_expiry_seconds When the certificates in use expire (unix time; a bundle: the earliest).\n\
             # TYPE chordctl_tls_cert_expiry_seconds gauge"
        );
        for (file, t) in &self.material().expiry {
            let file = file
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            let _ = writeln!(
                out,
                "chordctl_tls_cert_expiry_seconds{{file=\"{file}\"}} {t}"
            );
        }
    }
}

fn warn_if_expired(material: &Material) {
    let now = chrono::Utc::now().timestamp();
    for (file, t) in &material.expiry {
        if *t <= now {
            tracing::warn!(%file, "a TLS certificate in use has expired; peers will refuse it");
        }
    }
}

/// The server name to verify a ring peer dialled at `addr` (`HOST:PORT`) against.
pub fn server_name(addr: &str) -> std::result::Result<ServerName<'static>, String> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .map_err(|e| format!("'{host}' cannot be a TLS server name: {e}"))
}

#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = Option<()>;

fn hangups() -> Hangups {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(
                    "cannot listen for SIGHUP ({e}); certificate files are still polled"
                );
                None
            }
        }
    }
    #[cfg(not(unix))]
    None
}

async fn next_hangup(hup: &mut Hangups) {
    #[cfg(unix)]
    if let Some(s) = hup {
        if s.recv().await.is_some() {
            return;
        }
    }
    let _ = hup;
    std::future::pending::<()>().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::create::{make_ca, make_cert, CertSpec, Made};

    fn leaf(ca: &Made, name: &str) -> Made {
        let spec = CertSpec {
            name: name.into(),
            ips: vec![std::net::IpAddr::from([127, 0, 0, 1])],
            days: 2,
            ..CertSpec::default()
        };
        make_cert(&ca.cert_pem, &ca.key_pem, &spec).unwrap_or_else(|e| panic!("{e}"))
    }

    fn write(files: &TlsFiles, leaf: &Made, ca: &Made) {
        for (path, text) in [
            (&files.cert, &leaf.cert_pem),
            (&files.key, &leaf.key_pem),
            (&files.ca, &ca.cert_pem),
        ] {
            std::fs::write(path, text).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn reloads_take_changes_once_and_keep_the_old_material_on_failure() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let files = TlsFiles {
            cert: dir.path().join("c.pem"),
            key: dir.path().join("k.pem"),
            ca: dir.path().join("ca.pem"),
        };
        let ca = make_ca("unit CA", 2).unwrap_or_else(|e| panic!("{e}"));
        write(&files, &leaf(&ca, "a"), &ca);
        let tls = Tls::load(files.clone(), false).unwrap_or_else(|e| panic!("{e}"));
        let served = || tls.material().ring_server.clone();
        let first = served();
        assert_eq!(tls.reload(false), Ok(false), "nothing changed");
        assert!(Arc::ptr_eq(&first, &served()));

        write(&files, &leaf(&ca, "b"), &ca);
        assert_eq!(tls.reload(false), Ok(true));
        assert_eq!(tls.generation(), 1);
        let second = served();
        assert!(
            !Arc::ptr_eq(&first, &second),
            "new connections get the new material"
        );

        // A key that is not the certificate's: refused, counted once, the old material kept.
        let other = leaf(&ca, "c");
        std::fs::write(&files.key, &other.key_pem).unwrap_or_else(|e| panic!("{e}"));
        let err = tls.reload(false).err().unwrap_or_default();
        assert!(err.contains("do not go together"), "{err}");
        assert_eq!((tls.reload_failures(), tls.generation()), (1, 1));
        assert!(Arc::ptr_eq(&second, &served()));
        assert_eq!(
            tls.reload(false),
            Ok(false),
            "the same broken files count once"
        );
        assert!(tls.reload(true).is_err(), "SIGHUP tries again");
        assert_eq!(tls.reload_failures(), 2);

        // A missing file, then not PEM: both refused with the file named.
        std::fs::remove_file(&files.ca).unwrap_or_else(|e| panic!("{e}"));
        let err = tls.reload(true).err().unwrap_or_default();
        assert!(err.contains("ca.pem"), "{err}");
        std::fs::write(&files.ca, "junk").unwrap_or_else(|e| panic!("{e}"));
        let err = tls.reload(true).err().unwrap_or_default();
        assert!(err.contains("ca.pem"), "{err}");
        assert!(Arc::ptr_eq(&second, &served()));

        let mut text = String::new();
        tls.render_metrics(&mut text);
        assert!(
            text.contains("chordctl_tls_reload_failures_total 4"),
            "{text}"
        );
        assert!(text.contains("chordctl_tls_reloads_total 1"), "{text}");
        assert!(
            text.contains("chordctl_tls_cert_expiry_seconds{file="),
            "{text}"
        );
    }

    #[test]
    fn a_bad_file_at_start_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let files = TlsFiles {
            cert: dir.path().join("c.pem"),
            key: dir.path().join("k.pem"),
            ca: dir.path().join("missing-ca.pem"),
        };
        let err = Tls::load(files, false)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("c.pem"), "{err}");
    }

    #[test]
    fn server_names_come_from_the_dialled_host() {
        assert!(server_name("127.0.0.1:7400").is_ok());
        assert!(server_name("[::1]:7400").is_ok());
        assert!(server_name("node1.internal:7400").is_ok());
        assert!(server_name("bad name:1").is_err());
    }
}
