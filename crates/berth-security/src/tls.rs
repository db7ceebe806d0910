//! TLS material: the cluster CA, node certificates, and rustls configurations.
//!
//! This is the only module that touches the file system, and only in
//! [`ensure_ca`], [`ensure_node_cert`], [`load_ca`], [`load_node`],
//! [`write_joined`], [`load_joined`] and [`load_pem`]. Files in the TLS
//! directory (a node that joined a cluster has no `ca.key`: it got its
//! certificate from the cluster, see [`crate::pki`]):
//!
//! | file       | content                                   | mode |
//! |------------|-------------------------------------------|------|
//! | `ca.crt`   | cluster CA certificate (ECDSA P-256, 10 y) | 0644 |
//! | `ca.key`   | cluster CA private key (PKCS#8)            | 0600 |
//! | `node.crt` | node certificate signed by the CA (2 y)    | 0644 |
//! | `node.key` | node private key (PKCS#8)                  | 0600 |
//!
//! Files are written to a temporary name, synced, then renamed, so a crash
//! never leaves a half-written key. An existing CA is never overwritten.
//! All rustls configurations use the ring provider explicitly, so they do not
//! depend on the process-wide default.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, DnsName, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Validity of the cluster CA.
pub const CA_VALIDITY_DAYS: u64 = 3650;
/// Validity of a node certificate.
pub const NODE_VALIDITY_DAYS: u64 = 730;
/// A node certificate expiring sooner than this is renewed by [`ensure_node_cert`].
pub const NODE_RENEW_BEFORE_DAYS: u64 = 30;
/// Certificates start this long before "now", tolerating clock skew.
const BACKDATE_SECS: u64 = 3600;
/// Largest PEM file [`load_pem`] reads.
pub const PEM_LEN_MAX_BYTES: u64 = 1024 * 1024;
/// Names every node certificate carries, so local clients always connect.
pub const ALWAYS_SANS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];
pub(crate) const DAY_SECS: u64 = 24 * 3600;

/// TLS material could not be created, read or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "could not {action} {path}: {source}; check that the directory exists and is \
         writable by the user running berth"
    )]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{path} is larger than {PEM_LEN_MAX_BYTES} bytes: it is not a PEM certificate or key")]
    TooLarge { path: PathBuf },
    #[error(
        "{present} exists but {missing} is missing: restore {missing} from a backup, or move \
         {present} away to create a new cluster CA (every node certificate must then be \
         reissued and every client given the new ca.crt)"
    )]
    CaIncomplete { present: PathBuf, missing: PathBuf },
    #[error(
        "the cluster CA {path} does not exist: create the CA first (ensure_ca runs when a \
         node starts), or copy ca.crt and ca.key from the first node"
    )]
    CaMissing { path: PathBuf },
    #[error(
        "{path} is missing: this node joined a cluster and got its TLS material then; \
         restore it from a backup, or join again with a new token and an empty data directory"
    )]
    JoinedMissing { path: PathBuf },
    #[error("{cert} and {key} do not belong together: restore the matching pair from a backup")]
    CaMismatch { cert: PathBuf, key: PathBuf },
    #[error("{what} is not valid: {reason}")]
    BadPem { what: String, reason: String },
    #[error(
        "{san:?} cannot be put in a certificate ({reason}): give a DNS name such as \
         node1.example.com or an IP address"
    )]
    InvalidSan { san: String, reason: String },
    #[error("generating TLS material failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error(
        "building the TLS configuration failed: {0}; check that the certificate and key \
         are a matching pair in PEM format"
    )]
    Config(#[from] rustls::Error),
}

/// Where the TLS files of one node live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub node_cert: PathBuf,
    pub node_key: PathBuf,
}

impl TlsPaths {
    /// The standard file names inside `dir`.
    pub fn in_dir(dir: &Path) -> TlsPaths {
        TlsPaths {
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            node_cert: dir.join("node.crt"),
            node_key: dir.join("node.key"),
        }
    }
}

/// Installs rustls' ring provider as the process default. Idempotent: an
/// already installed provider is left in place.
pub fn install_crypto_provider() {
    // Err only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Creates `dir/ca.crt` and `dir/ca.key` (mode 0600) for cluster `cluster`
/// unless they exist.
///
/// If only the key exists (a crash between the two writes, or a lost
/// certificate), the certificate is re-issued from the key: certificates
/// signed earlier still verify against it. If only the certificate exists,
/// this refuses: the CA can no longer sign, and replacing it silently would
/// cut the node off from the cluster.
pub fn ensure_ca(dir: &Path, cluster: &str) -> Result<(), TlsError> {
    create_dir(dir)?;
    let paths = TlsPaths::in_dir(dir);
    match (exists(&paths.ca_cert)?, exists(&paths.ca_key)?) {
        (true, true) => {
            warn_if_readable(&paths.ca_key);
            check_pair(&paths.ca_cert, &paths.ca_key)
        }
        (true, false) => Err(TlsError::CaIncomplete {
            present: paths.ca_cert,
            missing: paths.ca_key,
        }),
        (false, true) => {
            let key = load_key(&paths.ca_key)?;
            let cert = ca_params(cluster).self_signed(&key)?;
            write_atomically(&paths.ca_cert, cert.pem().as_bytes(), false)?;
            tracing::info!(path = %paths.ca_cert.display(), "re-issued the cluster CA certificate from its existing key");
            Ok(())
        }
        (false, false) => {
            let ca = new_ca(cluster)?;
            write_atomically(&paths.ca_key, ca.key_pem.as_bytes(), true)?;
            write_atomically(&paths.ca_cert, ca.cert_pem.as_bytes(), false)?;
            tracing::info!(path = %paths.ca_cert.display(), cluster, "created the cluster CA");
            Ok(())
        }
    }
}

/// The cluster CA: its certificate and private key, in PEM. The key signs
/// node certificates; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct CaMaterial {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CaMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaMaterial")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// A new cluster CA for cluster `cluster`, in memory.
pub fn new_ca(cluster: &str) -> Result<CaMaterial, TlsError> {
    let key = KeyPair::generate()?;
    let cert = ca_params(cluster).self_signed(&key)?;
    Ok(CaMaterial {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Reads the cluster CA of `dir` (`ca.crt` and `ca.key`, which must exist
/// and belong together).
pub fn load_ca(dir: &Path) -> Result<CaMaterial, TlsError> {
    let paths = TlsPaths::in_dir(dir);
    for path in [&paths.ca_cert, &paths.ca_key] {
        if !exists(path)? {
            return Err(TlsError::CaMissing { path: path.clone() });
        }
    }
    check_pair(&paths.ca_cert, &paths.ca_key)?;
    Ok(CaMaterial {
        cert_pem: load_pem(&paths.ca_cert)?,
        key_pem: load_pem(&paths.ca_key)?,
    })
}

/// The common name of node `id`'s certificate; [`crate::pki::node_id_of_cert`]
/// reads it back.
pub fn node_common_name(id: u64) -> String {
    format!("node-{id}")
}

/// Makes sure `dir/node.crt` and `dir/node.key` hold a certificate for
/// `node_name` signed by the CA in `dir`, valid for every name in `sans`
/// (IP strings become IP SANs) plus `localhost`, `127.0.0.1` and `::1`.
///
/// The existing certificate is kept unless it is missing or unreadable, not
/// signed by the current CA, expires within [`NODE_RENEW_BEFORE_DAYS`], does
/// not match its key, or lacks one of the requested names; then a new key and
/// certificate are generated.
pub fn ensure_node_cert(
    dir: &Path,
    node_name: &str,
    sans: &[String],
) -> Result<TlsPaths, TlsError> {
    let paths = TlsPaths::in_dir(dir);
    for path in [&paths.ca_cert, &paths.ca_key] {
        if !exists(path)? {
            return Err(TlsError::CaMissing { path: path.clone() });
        }
    }
    let wanted = requested_sans(sans)?;
    let ca_pem = load_pem(&paths.ca_cert)?;
    let ca_der =
        CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| TlsError::BadPem {
            what: paths.ca_cert.display().to_string(),
            reason: e.to_string(),
        })?;
    match node_cert_problem(&paths, &ca_der, &wanted) {
        None => return Ok(paths),
        Some(problem) => {
            tracing::info!(path = %paths.node_cert.display(), problem, "issuing a new node certificate")
        }
    }
    let ca_key = load_key(&paths.ca_key)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(node_name);
    params.subject_alt_names = wanted.into_iter().map(|s| s.san).collect();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, NODE_VALIDITY_DAYS);
    params.serial_number = Some(random_serial());
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    write_atomically(&paths.node_key, key.serialize_pem().as_bytes(), true)?;
    write_atomically(&paths.node_cert, cert.pem().as_bytes(), false)?;
    Ok(paths)
}

/// A node's TLS identity: the cluster CA certificate, the node certificate
/// and the node's private key, in PEM. `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeMaterial {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for NodeMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeMaterial")
            .field("ca_pem", &self.ca_pem)
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl NodeMaterial {
    /// The chain a server presents: the node certificate, then the CA's, so
    /// a client that knows the CA only by its fingerprint (a joining node)
    /// finds it.
    pub fn chain_pem(&self) -> String {
        let mut chain = self.cert_pem.clone();
        if !chain.ends_with('\n') {
            chain.push('\n');
        }
        chain.push_str(&self.ca_pem);
        chain
    }
}

/// Reads `ca.crt`, `node.crt` and `node.key` of `dir` as they are (see
/// [`ensure_node_cert`] and [`write_joined`] for what puts them there).
pub fn load_node(dir: &Path) -> Result<NodeMaterial, TlsError> {
    let paths = TlsPaths::in_dir(dir);
    Ok(NodeMaterial {
        ca_pem: load_pem(&paths.ca_cert)?,
        cert_pem: load_pem(&paths.node_cert)?,
        key_pem: load_pem(&paths.node_key)?,
    })
}

/// Writes what a join brought into `dir` — the CA certificate and the node
/// certificate the cluster signed, with the key made here (mode 0600) —
/// after checking that the certificate carries that key and chains to that
/// CA now. No `ca.key`: a joined node signs nothing. Returns the paths
/// written.
pub fn write_joined(dir: &Path, m: &NodeMaterial) -> Result<TlsPaths, TlsError> {
    let ca_der = parse_certs(&m.ca_pem, "the CA certificate the cluster sent")?
        .into_iter()
        .next()
        .ok_or_else(|| TlsError::BadPem {
            what: "the CA certificate the cluster sent".into(),
            reason: "it is empty".into(),
        })?;
    if let Some(problem) =
        material_problem(&ca_der, &m.cert_pem, &m.key_pem, crate::now_secs(), &[])
    {
        return Err(TlsError::BadPem {
            what: "the node certificate the cluster sent".into(),
            reason: problem,
        });
    }
    create_dir(dir)?;
    let paths = TlsPaths::in_dir(dir);
    write_atomically(&paths.node_key, m.key_pem.as_bytes(), true)?;
    write_atomically(&paths.node_cert, m.cert_pem.as_bytes(), false)?;
    write_atomically(&paths.ca_cert, m.ca_pem.as_bytes(), false)?;
    Ok(paths)
}

/// The TLS identity of a node that joined a cluster ([`write_joined`]):
/// refused when a file is missing or the certificate no longer fits its
/// key or CA, or has expired; a warning when it expires within
/// [`NODE_RENEW_BEFORE_DAYS`] (renewal through the cluster is not built
/// yet).
pub fn load_joined(dir: &Path) -> Result<NodeMaterial, TlsError> {
    let paths = TlsPaths::in_dir(dir);
    for path in [&paths.ca_cert, &paths.node_cert, &paths.node_key] {
        if !exists(path)? {
            return Err(TlsError::JoinedMissing { path: path.clone() });
        }
    }
    warn_if_readable(&paths.node_key);
    let m = load_node(dir)?;
    let ca_der = parse_certs(&m.ca_pem, &paths.ca_cert.display().to_string())?
        .into_iter()
        .next()
        .ok_or_else(|| TlsError::BadPem {
            what: paths.ca_cert.display().to_string(),
            reason: "it is empty".into(),
        })?;
    let now = crate::now_secs();
    if let Some(problem) = material_problem(&ca_der, &m.cert_pem, &m.key_pem, now, &[]) {
        return Err(TlsError::BadPem {
            what: paths.node_cert.display().to_string(),
            reason: problem,
        });
    }
    let horizon = now + NODE_RENEW_BEFORE_DAYS * DAY_SECS;
    if material_problem(&ca_der, &m.cert_pem, &m.key_pem, horizon, &[]).is_some() {
        tracing::warn!(path = %paths.node_cert.display(), "the node certificate expires within {NODE_RENEW_BEFORE_DAYS} days; its renewal through the cluster is not built yet");
    }
    Ok(m)
}

/// Reads a PEM file (at most [`PEM_LEN_MAX_BYTES`]).
pub fn load_pem(path: &Path) -> Result<String, TlsError> {
    let io_err = |source| TlsError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let mut text = String::new();
    file.take(PEM_LEN_MAX_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(io_err)?;
    if text.len() as u64 > PEM_LEN_MAX_BYTES {
        return Err(TlsError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(text)
}

/// A client configuration trusting only the CA certificate(s) in `ca_pem`.
pub fn client_config(ca_pem: &str) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(ca_pem, "the CA certificate PEM")? {
        roots.add(cert)?;
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A server configuration presenting the certificate chain `cert_pem` (leaf
/// first) with the private key `key_pem`. No client certificates are asked for.
pub fn server_config(cert_pem: &str, key_pem: &str) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = parse_certs(cert_pem, "the certificate PEM")?;
    // The PEM error never contains key material.
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::BadPem {
        what: "the private key PEM".into(),
        reason: e.to_string(),
    })?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}

pub(crate) fn parse_certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            what: what.into(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::BadPem {
            what: what.into(),
            reason: "it contains no CERTIFICATE section".into(),
        });
    }
    Ok(certs)
}

/// One requested subject alternative name, validated.
pub(crate) struct WantedSan {
    pub(crate) san: SanType,
    pub(crate) server_name: ServerName<'static>,
}

fn requested_sans(sans: &[String]) -> Result<Vec<WantedSan>, TlsError> {
    parse_sans(sans.iter().map(String::as_str).chain(ALWAYS_SANS))
}

/// Validates names for a certificate (IP strings become IP SANs), dropping
/// blanks and duplicates.
pub(crate) fn parse_sans<'a>(
    names: impl Iterator<Item = &'a str>,
) -> Result<Vec<WantedSan>, TlsError> {
    let mut out: Vec<WantedSan> = Vec::new();
    for text in names.map(str::trim).filter(|s| !s.is_empty()) {
        let invalid = |reason: String| TlsError::InvalidSan {
            san: text.to_string(),
            reason,
        };
        let wanted = match text.parse::<IpAddr>() {
            Ok(ip) => WantedSan {
                san: SanType::IpAddress(ip),
                server_name: ServerName::IpAddress(ip.into()),
            },
            Err(_) => {
                let dns = DnsName::try_from(text.to_ascii_lowercase())
                    .map_err(|e| invalid(e.to_string()))?;
                WantedSan {
                    san: SanType::DnsName(
                        dns.as_ref()
                            .try_into()
                            .map_err(|e: rcgen::Error| invalid(e.to_string()))?,
                    ),
                    server_name: ServerName::DnsName(dns),
                }
            }
        };
        if !out.iter().any(|w| w.server_name == wanted.server_name) {
            out.push(wanted);
        }
    }
    Ok(out)
}

/// Why the existing node certificate must be replaced, or `None` if it is fine.
fn node_cert_problem(
    paths: &TlsPaths,
    ca_der: &CertificateDer<'static>,
    wanted: &[WantedSan],
) -> Option<String> {
    for path in [&paths.node_cert, &paths.node_key] {
        if !path.exists() {
            return Some(format!("{} does not exist", path.display()));
        }
    }
    let cert_pem = match load_pem(&paths.node_cert) {
        Ok(p) => p,
        Err(e) => return Some(e.to_string()),
    };
    let key_pem = match load_pem(&paths.node_key) {
        Ok(p) => p,
        Err(e) => return Some(e.to_string()),
    };
    warn_if_readable(&paths.node_key);
    // Checking at "now + renewal margin" also catches certificates about to expire.
    let horizon = crate::now_secs() + NODE_RENEW_BEFORE_DAYS * DAY_SECS;
    material_problem(ca_der, &cert_pem, &key_pem, horizon, wanted)
}

/// Why `cert_pem` (a node certificate) and `key_pem` cannot serve as this
/// node's TLS identity under the CA `ca_der` at `at_secs` with every name
/// of `wanted`, or `None` when they can.
pub(crate) fn material_problem(
    ca_der: &CertificateDer<'static>,
    cert_pem: &str,
    key_pem: &str,
    at_secs: u64,
    wanted: &[WantedSan],
) -> Option<String> {
    let Ok(cert) = CertificateDer::from_pem_slice(cert_pem.as_bytes()) else {
        return Some("the certificate PEM does not parse".into());
    };
    let Ok(key) = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()) else {
        return Some("the key PEM does not parse".into());
    };
    let provider = provider();
    if let Err(e) = CertifiedKey::from_der(vec![cert.clone()], key, &provider) {
        return Some(format!("certificate and key do not match: {e}"));
    }
    let Ok(parsed) = ParsedCertificate::try_from(&cert) else {
        return Some("the certificate does not parse".into());
    };
    let mut roots = RootCertStore::empty();
    if let Err(e) = roots.add(ca_der.clone()) {
        return Some(format!("the CA certificate is not usable: {e}"));
    }
    if let Err(e) = verify_server_cert_signed_by_trust_anchor(
        &parsed,
        &roots,
        &[],
        UnixTime::since_unix_epoch(Duration::from_secs(at_secs)),
        provider.signature_verification_algorithms.all,
    ) {
        return Some(format!(
            "not signed by the cluster CA, or expired or expiring too soon: {e}"
        ));
    }
    for w in wanted {
        if verify_server_name(&parsed, &w.server_name).is_err() {
            return Some(format!("it lacks the name {:?}", w.server_name.to_str()));
        }
    }
    None
}

pub(crate) fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Berth");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn ca_params(cluster: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(&format!("Berth CA {cluster}"));
    // Path length 0: the CA signs node certificates directly, never other CAs.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, CA_VALIDITY_DAYS);
    params.serial_number = Some(random_serial());
    params
}

pub(crate) fn set_validity(params: &mut CertificateParams, days: u64) {
    let now = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(crate::now_secs());
    params.not_before = now - Duration::from_secs(BACKDATE_SECS);
    params.not_after = now + Duration::from_secs(days * DAY_SECS);
}

/// 16 random bytes, positive (RFC 5280 allows up to 20).
pub(crate) fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // never a leading zero byte, so the length stays fixed
    SerialNumber::from_slice(&bytes)
}

fn load_key(path: &Path) -> Result<KeyPair, TlsError> {
    let pem = load_pem(path)?;
    // rcgen's error names the problem, never the key bytes.
    KeyPair::from_pem(&pem).map_err(|e| TlsError::BadPem {
        what: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Checks that an existing CA certificate and key parse and belong together.
fn check_pair(cert_path: &Path, key_path: &Path) -> Result<(), TlsError> {
    let cert = parse_certs(&load_pem(cert_path)?, &cert_path.display().to_string())?;
    let key_pem = load_pem(key_path)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::BadPem {
        what: key_path.display().to_string(),
        reason: e.to_string(),
    })?;
    match CertifiedKey::from_der(cert, key, &provider()) {
        Ok(_) => Ok(()),
        Err(rustls::Error::InconsistentKeys(_)) => Err(TlsError::CaMismatch {
            cert: cert_path.to_path_buf(),
            key: key_path.to_path_buf(),
        }),
        Err(e) => Err(TlsError::Config(e)),
    }
}

pub(crate) fn exists(path: &Path) -> Result<bool, TlsError> {
    path.try_exists().map_err(|source| TlsError::Io {
        action: "check",
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn create_dir(dir: &Path) -> Result<(), TlsError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|source| TlsError::Io {
        action: "create the directory",
        path: dir.to_path_buf(),
        source,
    })
}

/// Warns (without contents) when a private key file is readable by others.
pub(crate) fn warn_if_readable(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "private key is readable by group or others: chmod 600 it");
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// Writes `contents` to `path` via a synced temporary file and a rename;
/// `private` files get mode 0600.
pub(crate) fn write_atomically(
    path: &Path,
    contents: &[u8],
    private: bool,
) -> Result<(), TlsError> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let io_err = |action, source| TlsError::Io {
        action,
        path: tmp.clone(),
        source,
    };
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err("remove", e)),
        _ => {}
    }
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, if private { 0o600 } else { 0o644 });
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(&tmp).map_err(|e| io_err("create", e))?;
    file.write_all(contents).map_err(|e| io_err("write", e))?;
    file.sync_all().map_err(|e| io_err("sync", e))?;
    drop(file);
    fs::rename(&tmp, path).map_err(|source| TlsError::Io {
        action: "rename a temporary file onto",
        path: path.to_path_buf(),
        source,
    })?;
    // Make the rename itself durable.
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| TlsError::Io {
                action: "sync the directory",
                path: dir.to_path_buf(),
                source,
            })?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rustls::{ClientConnection, ServerConnection};

    fn setup(sans: &[&str]) -> (tempfile::TempDir, TlsPaths) {
        let dir = tempfile::tempdir().unwrap();
        ensure_ca(dir.path(), "test").unwrap();
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let paths = ensure_node_cert(dir.path(), "node-1", &sans).unwrap();
        (dir, paths)
    }

    fn configs(paths: &TlsPaths) -> (Arc<ClientConfig>, Arc<ServerConfig>) {
        let client = client_config(&load_pem(&paths.ca_cert).unwrap()).unwrap();
        let server = server_config(
            &load_pem(&paths.node_cert).unwrap(),
            &load_pem(&paths.node_key).unwrap(),
        )
        .unwrap();
        (client, server)
    }

    /// Moves every pending TLS record from `from` to `to`.
    fn transfer(
        from: &mut rustls::Connection,
        to: &mut rustls::Connection,
    ) -> Result<(), rustls::Error> {
        let mut buf = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut buf).unwrap();
        }
        let mut rest = &buf[..];
        while !rest.is_empty() {
            to.read_tls(&mut rest).unwrap();
            to.process_new_packets()?;
        }
        Ok(())
    }

    /// Runs a TLS handshake in memory, then sends one message.
    pub(crate) fn handshake(
        client_cfg: Arc<ClientConfig>,
        server_cfg: Arc<ServerConfig>,
        server_name: &str,
    ) -> Result<(), rustls::Error> {
        let name = ServerName::try_from(server_name.to_string()).unwrap();
        let mut client = rustls::Connection::from(ClientConnection::new(client_cfg, name)?);
        let mut server = rustls::Connection::from(ServerConnection::new(server_cfg)?);
        client.writer().write_all(b"ping").unwrap();
        for _round in 0..10 {
            transfer(&mut client, &mut server)?;
            transfer(&mut server, &mut client)?;
            if !client.is_handshaking() && !server.is_handshaking() {
                transfer(&mut client, &mut server)?;
                let mut got = [0u8; 4];
                server.reader().read_exact(&mut got).unwrap();
                assert_eq!(&got, b"ping");
                return Ok(());
            }
        }
        panic!("the handshake did not finish in 10 rounds");
    }

    #[test]
    fn handshake_checks_names() {
        install_crypto_provider();
        install_crypto_provider(); // idempotent
        let (_dir, paths) = setup(&["node1.example.com", "10.1.2.3"]);
        let (client, server) = configs(&paths);
        for good in [
            "localhost",
            "127.0.0.1",
            "::1",
            "node1.example.com",
            "10.1.2.3",
        ] {
            handshake(client.clone(), server.clone(), good)
                .unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in ["evil.example", "10.1.2.4", "example.com"] {
            let err = handshake(client.clone(), server.clone(), bad).unwrap_err();
            assert!(
                matches!(err, rustls::Error::InvalidCertificate(_)),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn another_ca_is_not_trusted() {
        let (_a, paths_a) = setup(&[]);
        let (_b, paths_b) = setup(&[]);
        let (client_a, _) = configs(&paths_a);
        let (_, server_b) = configs(&paths_b);
        let err = handshake(client_a, server_b, "localhost").unwrap_err();
        assert!(matches!(err, rustls::Error::InvalidCertificate(_)), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn keys_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let (_dir, paths) = setup(&[]);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&paths.ca_key), 0o600);
        assert_eq!(mode(&paths.node_key), 0o600);
        assert_eq!(mode(&paths.ca_cert), 0o644);
        assert_eq!(mode(&paths.node_cert), 0o644);
    }

    #[test]
    fn idempotent_until_a_new_name_is_asked_for() {
        let (dir, paths) = setup(&["node1.example.com"]);
        let ca = fs::read(&paths.ca_cert).unwrap();
        let cert = fs::read(&paths.node_cert).unwrap();
        let key = fs::read(&paths.node_key).unwrap();

        ensure_ca(dir.path(), "test").unwrap();
        // Same names, in another order and case, with the implicit ones repeated.
        ensure_node_cert(
            dir.path(),
            "node-1",
            &["localhost".into(), "NODE1.example.com".into()],
        )
        .unwrap();
        assert_eq!(fs::read(&paths.ca_cert).unwrap(), ca);
        assert_eq!(fs::read(&paths.node_cert).unwrap(), cert);
        assert_eq!(fs::read(&paths.node_key).unwrap(), key);

        ensure_node_cert(dir.path(), "node-1", &["192.168.7.7".into()]).unwrap();
        assert_ne!(fs::read(&paths.node_cert).unwrap(), cert);
        assert_eq!(fs::read(&paths.ca_cert).unwrap(), ca);
        let (client, server) = configs(&paths);
        assert!(handshake(client.clone(), server.clone(), "192.168.7.7").is_ok());
        // The old name was not requested again, so it is gone.
        assert!(handshake(client, server, "node1.example.com").is_err());
    }

    #[test]
    fn a_node_cert_from_another_ca_is_replaced() {
        let (dir, paths) = setup(&[]);
        let (other, other_paths) = setup(&[]);
        fs::copy(&other_paths.node_cert, &paths.node_cert).unwrap();
        fs::copy(&other_paths.node_key, &paths.node_key).unwrap();
        ensure_node_cert(dir.path(), "node-1", &[]).unwrap();
        assert_ne!(
            fs::read(&paths.node_cert).unwrap(),
            fs::read(&other_paths.node_cert).unwrap()
        );
        let (client, server) = configs(&paths);
        assert!(handshake(client, server, "localhost").is_ok());
        drop(other);
    }

    #[test]
    fn a_mismatched_node_key_is_replaced() {
        let (dir, paths) = setup(&[]);
        let (_other, other_paths) = setup(&[]);
        fs::copy(&other_paths.node_key, &paths.node_key).unwrap();
        assert!(server_config(
            &load_pem(&paths.node_cert).unwrap(),
            &load_pem(&paths.node_key).unwrap()
        )
        .is_err());
        ensure_node_cert(dir.path(), "node-1", &[]).unwrap();
        let (client, server) = configs(&paths);
        assert!(handshake(client, server, "localhost").is_ok());
    }

    #[test]
    fn lost_ca_cert_is_reissued_from_the_key() {
        let (dir, paths) = setup(&["node1.example.com"]);
        let node_cert = fs::read(&paths.node_cert).unwrap();
        fs::remove_file(&paths.ca_cert).unwrap();
        ensure_ca(dir.path(), "test").unwrap();
        // The node certificate still chains to the re-issued CA certificate.
        ensure_node_cert(dir.path(), "node-1", &["node1.example.com".into()]).unwrap();
        assert_eq!(fs::read(&paths.node_cert).unwrap(), node_cert);
        let (client, server) = configs(&paths);
        assert!(handshake(client, server, "node1.example.com").is_ok());
    }

    #[test]
    fn lost_ca_key_is_an_error() {
        let (dir, paths) = setup(&[]);
        fs::remove_file(&paths.ca_key).unwrap();
        let err = ensure_ca(dir.path(), "test").unwrap_err();
        assert!(matches!(err, TlsError::CaIncomplete { .. }), "{err}");
        assert!(err.to_string().contains("restore"), "{err}");
        assert!(matches!(
            ensure_node_cert(dir.path(), "node-1", &[]),
            Err(TlsError::CaMissing { .. })
        ));
    }

    #[test]
    fn swapped_ca_key_is_an_error() {
        let (dir, paths) = setup(&[]);
        let (_other, other_paths) = setup(&[]);
        fs::copy(&other_paths.ca_key, &paths.ca_key).unwrap();
        let err = ensure_ca(dir.path(), "test").unwrap_err();
        assert!(matches!(err, TlsError::CaMismatch { .. }), "{err}");
    }

    #[test]
    fn node_cert_needs_a_ca() {
        let dir = tempfile::tempdir().unwrap();
        let err = ensure_node_cert(dir.path(), "node-1", &[]).unwrap_err();
        assert!(matches!(err, TlsError::CaMissing { .. }), "{err}");
    }

    #[test]
    fn invalid_sans_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        ensure_ca(dir.path(), "test").unwrap();
        for bad in ["not a host", "bad_host!", "-x.example"] {
            let err = ensure_node_cert(dir.path(), "node-1", &[bad.into()]).unwrap_err();
            assert!(matches!(err, TlsError::InvalidSan { .. }), "{bad}: {err}");
        }
        // Blank entries are ignored.
        ensure_node_cert(dir.path(), "node-1", &[" ".into()]).unwrap();
    }

    #[test]
    fn ca_dir_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b/tls");
        ensure_ca(&nested, "test").unwrap();
        assert!(nested.join("ca.crt").exists());
        assert!(!nested.join("ca.key.tmp").exists());
    }

    #[test]
    fn pem_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let err = load_pem(&missing).unwrap_err();
        assert!(err.to_string().contains("nope.pem"), "{err}");
        let big = dir.path().join("big.pem");
        fs::write(&big, vec![b'a'; PEM_LEN_MAX_BYTES as usize + 1]).unwrap();
        assert!(matches!(load_pem(&big), Err(TlsError::TooLarge { .. })));

        assert!(matches!(
            client_config("hello"),
            Err(TlsError::BadPem { .. })
        ));
        let (_d, paths) = setup(&[]);
        let cert = load_pem(&paths.node_cert).unwrap();
        assert!(matches!(
            server_config(&cert, "not a key"),
            Err(TlsError::BadPem { .. })
        ));
        // A key given where the certificate should be.
        let key = load_pem(&paths.node_key).unwrap();
        assert!(matches!(
            server_config(&key, &key),
            Err(TlsError::BadPem { .. })
        ));
    }
}
