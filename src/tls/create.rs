//! Certificates an operator can make without OpenSSL: a CA (`chordctl tls ca create`) and
//! certificates it signs (`chordctl tls cert create NAME`), each usable as server and as
//! client certificate, so one file serves a node on both ports and a client alike.
//!
//! Keys are ECDSA P-256. Key files are written readable by their owner only (0600).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

/// The CA's file names in its directory.
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca-key.pem";

/// Validity of a CA unless `--days` says otherwise (five years).
pub const CA_DAYS: u32 = 5 * 365;
/// Validity of a certificate unless `--days` says otherwise (one year).
pub const CERT_DAYS: u32 = 365;

/// What one certificate is made for.
#[derive(Debug, Clone, Default)]
pub struct CertSpec {
    /// The common name; also a DNS name of the certificate when it is a valid one.
    pub name: String,
    /// IP addresses the certificate is valid for.
    pub ips: Vec<IpAddr>,
    /// DNS names the certificate is valid for.
    pub dns: Vec<String>,
    /// Valid from a minute ago for this many days (0 with `expired`: already expired).
    pub days: u32,
    /// Make it expired (valid from 30 days ago until yesterday): for tests.
    pub expired: bool,
}

/// A made certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct Made {
    pub cert_pem: String,
    pub key_pem: String,
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive and without a leading zero byte, as DER wants.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

fn validity(params: &mut CertificateParams, days: u32, expired: bool) {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let now = rcgen::date_time_ymd(1970, 1, 1) + since;
    const DAY: Duration = Duration::from_secs(86_400);
    if expired {
        params.not_before = now - DAY * 30;
        params.not_after = now - DAY;
    } else {
        // A minute of slack for clocks a little behind.
        params.not_before = now - Duration::from_secs(60);
        params.not_after = now + DAY * days.max(1);
    }
}

/// A new self-signed CA.
pub fn make_ca(common_name: &str, days: u32) -> Result<Made, String> {
    let key = KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "chordctl");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    validity(&mut params, days, false);
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("cannot make the CA certificate: {e}"))?;
    Ok(Made {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A certificate for `spec`, signed by the CA whose certificate and key are given (PEM).
pub fn make_cert(ca_cert_pem: &str, ca_key_pem: &str, spec: &CertSpec) -> Result<Made, String> {
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(|e| format!("not a usable CA key: {e}"))?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, ca_key)
        .map_err(|e| format!("not a usable CA certificate: {e}"))?;
    let key = KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, spec.name.as_str());
    params.distinguished_name = dn;
    let mut sans = Vec::new();
    for dns in &spec.dns {
        let name = dns
            .clone()
            .try_into()
            .map_err(|e| format!("'{dns}' is not a DNS name: {e}"))?;
        sans.push(SanType::DnsName(name));
    }
    sans.extend(spec.ips.iter().map(|ip| SanType::IpAddress(*ip)));
    params.subject_alt_names = sans;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    validity(&mut params, spec.days, spec.expired);
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| format!("cannot sign the certificate: {e}"))?;
    Ok(Made {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Write `contents` to `path`, creating it with `mode` (unix) — a key gets 0600 from the
/// start, never a moment world-readable — and refusing to overwrite an existing file.
pub fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), String> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            format!(
                "{} exists already; remove it first to make a new one",
                path.display()
            )
        } else {
            format!("cannot create {}: {e}", path.display())
        }
    })?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Write a made certificate as `DIR/STEM.pem` (0644) and its key as `DIR/KEY_STEM.pem`
/// (0600); the two paths.
pub fn write_pair(
    dir: &Path,
    cert_name: &str,
    key_name: &str,
    made: &Made,
) -> Result<(PathBuf, PathBuf), String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create the directory {}: {e}", dir.display()))?;
    let cert = dir.join(cert_name);
    let key = dir.join(key_name);
    // The key first: a certificate without its key is of no use, the reverse is repaired by
    // running the command again after removing it.
    write_new(&key, &made.key_pem, 0o600)?;
    write_new(&cert, &made.cert_pem, 0o644)?;
    Ok((cert, key))
}

/// `chordctl tls ca create`: `DIR/ca.pem` and `DIR/ca-key.pem`.
pub fn create_ca(dir: &Path, days: u32) -> Result<(PathBuf, PathBuf), String> {
    let made = make_ca("chordctl CA", days)?;
    write_pair(dir, CA_CERT, CA_KEY, &made)
}

/// `chordctl tls cert create NAME`: `DIR/NAME.pem` and `DIR/NAME-key.pem`, signed by the CA
/// in `dir`.
pub fn create_cert(dir: &Path, spec: &CertSpec) -> Result<(PathBuf, PathBuf), String> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "cannot read {} ({e}); make a CA first with `chordctl tls ca create --dir {}`",
                path.display(),
                dir.display()
            )
        })
    };
    let (ca_cert, ca_key) = (read(CA_CERT)?, read(CA_KEY)?);
    let made = make_cert(&ca_cert, &ca_key, spec)?;
    write_pair(
        dir,
        &format!("{}.pem", spec.name),
        &format!("{}-key.pem", spec.name),
        &made,
    )
}

/// The CA and certificates of `agent dev --tls`, in `dir`: one node certificate for every
/// node (valid for 127.0.0.1, ::1 and localhost) and one client certificate. The agents'
/// files, and the client's certificate and key.
pub fn dev_certificates(dir: &Path) -> Result<(super::TlsFiles, (PathBuf, PathBuf)), String> {
    let (ca, _) = create_ca(dir, 30)?;
    let loopback = |name: &str| CertSpec {
        name: name.to_string(),
        ips: vec![
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
        ],
        dns: vec!["localhost".to_string()],
        days: 30,
        expired: false,
    };
    let (cert, key) = create_cert(dir, &loopback("node"))?;
    let client = create_cert(dir, &loopback("client"))?;
    Ok((super::TlsFiles { cert, key, ca }, client))
}

/// A NAME usable as a file name and a common name.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name != "ca"
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{name}' cannot name a certificate: use 1-64 characters of a-z A-Z 0-9 . _ - \
             (not starting with '.', and not 'ca')"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{not_after, parse_certs, parse_key};

    #[test]
    fn a_cert_is_signed_by_its_ca_and_carries_its_names() {
        let ca = make_ca("test CA", 10).unwrap_or_else(|e| panic!("{e}"));
        let spec = CertSpec {
            name: "node1".into(),
            ips: vec!["127.0.0.1".parse().unwrap_or_else(|e| panic!("{e}"))],
            dns: vec!["node1.example".into()],
            days: 3,
            expired: false,
        };
        let made = make_cert(&ca.cert_pem, &ca.key_pem, &spec).unwrap_or_else(|e| panic!("{e}"));
        let p = Path::new("x");
        let certs = parse_certs(made.cert_pem.as_bytes(), p).unwrap_or_else(|e| panic!("{e}"));
        parse_key(made.key_pem.as_bytes(), p).unwrap_or_else(|e| panic!("{e}"));
        let (_, x) = x509_parser::parse_x509_certificate(certs[0].as_ref())
            .unwrap_or_else(|e| panic!("{e}"));
        let sans = format!("{:?}", x.subject_alternative_name());
        assert!(
            sans.contains("node1.example") && sans.contains("[127, 0, 0, 1]"),
            "{sans}"
        );
        let expiry = not_after(&certs[0]).unwrap_or(0);
        let in_3_days = chrono::Utc::now().timestamp() + 3 * 86_400;
        assert!((expiry - in_3_days).abs() < 120, "{expiry} vs {in_3_days}");
        let expired = make_cert(
            &ca.cert_pem,
            &ca.key_pem,
            &CertSpec {
                expired: true,
                ..spec
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let certs = parse_certs(expired.cert_pem.as_bytes(), p).unwrap_or_else(|e| panic!("{e}"));
        assert!(not_after(&certs[0]).unwrap_or(i64::MAX) < chrono::Utc::now().timestamp());
    }

    #[test]
    fn a_cert_verifies_against_its_ca_only() {
        let p = Path::new("x");
        let (ca1, ca2) = (
            make_ca("same name", 1).unwrap_or_else(|e| panic!("{e}")),
            make_ca("same name", 1).unwrap_or_else(|e| panic!("{e}")),
        );
        let spec = CertSpec {
            name: "n".into(),
            days: 1,
            ..CertSpec::default()
        };
        let leaf = make_cert(&ca1.cert_pem, &ca1.key_pem, &spec).unwrap_or_else(|e| panic!("{e}"));
        let der =
            |pem: &str| parse_certs(pem.as_bytes(), p).unwrap_or_else(|e| panic!("{e}"))[0].clone();
        let (leaf, ca1, ca2) = (der(&leaf.cert_pem), der(&ca1.cert_pem), der(&ca2.cert_pem));
        fn parse(d: &[u8]) -> x509_parser::certificate::X509Certificate<'_> {
            x509_parser::parse_x509_certificate(d)
                .map(|(_, c)| c)
                .unwrap_or_else(|e| panic!("{e}"))
        }
        let (x, c1, c2) = (parse(&leaf), parse(&ca1), parse(&ca2));
        let (k1, k2) = (c1.public_key(), c2.public_key());
        assert!(x.verify_signature(Some(k1)).is_ok(), "signed by its CA");
        assert!(x.verify_signature(Some(k2)).is_err(), "not by the other");
    }

    #[test]
    fn names_that_are_not_file_names_are_refused() {
        for bad in ["", "ca", "../x", "a/b", ".hidden", "a b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert!(check_name("node-1.example").is_ok());
    }

    #[test]
    fn files_are_not_overwritten_and_keys_are_private() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (cert, key) = create_ca(dir.path(), 1).unwrap_or_else(|e| panic!("{e}"));
        assert!(cert.exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key)
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or(0);
            assert_eq!(mode, 0o600);
        }
        let again = create_ca(dir.path(), 1).err().unwrap_or_default();
        assert!(again.contains("exists already"), "{again}");
    }
}
