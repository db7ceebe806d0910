//! Certificates issued through the cluster rather than on the node: what
//! the join exchange (`berth server --join`) and the Raft transport's
//! mutual TLS need.
//!
//! - A joining node makes its key pair and a PKCS#10 request for it
//!   ([`new_node_request`]); the private key never leaves the node.
//! - A node holding the meta shard signs the request with the cluster CA
//!   ([`sign_node_request`]). Only the public key comes from the request:
//!   the subject (`node-<id>`), the names, the validity and the key usages
//!   are the server's.
//! - The joining node has no CA yet, only the SHA-256 of its certificate
//!   from the join token, and trusts no server whose chain lacks that
//!   certificate ([`PinnedCaVerifier`]), so the token is never sent to an
//!   impostor.
//! - A Raft peer proves its node id with its certificate's common name
//!   ([`node_id_of_cert`]).
//!
//! Nothing here touches the file system.

use std::sync::{Arc, Mutex};

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use x509_parser::prelude::FromDer as _;

use crate::tls::{self, CaMaterial, TlsError, NODE_VALIDITY_DAYS};

/// Longest certificate signing request accepted (PEM).
pub const CSR_LEN_MAX_BYTES: usize = 16 * 1024;
/// Most names one node certificate may carry.
pub const NODE_NAMES_MAX: usize = 32;

const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_CURVE_P256: &str = "1.2.840.10045.3.1.7";
const OID_CURVE_P384: &str = "1.3.132.0.34";
const OID_ED25519: &str = "1.3.101.112";
const OID_RSA: &str = "1.2.840.113549.1.1.1";

/// Why a certificate signing request is not signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("the certificate signing request is malformed: {0}")]
    Malformed(String),
    #[error(
        "the certificate signing request's key type is not supported ({0}): use ECDSA P-256 \
         or P-384, or Ed25519"
    )]
    UnsupportedKey(String),
    #[error("the node's names cannot go in a certificate: {0}")]
    BadNames(String),
    #[error("the cluster CA cannot sign: {0}")]
    Ca(String),
}

/// A node's new key pair and a certificate signing request for it. `Debug`
/// never shows the key.
pub struct NodeRequest {
    /// PKCS#8 PEM; stays on the node.
    pub key_pem: String,
    /// PKCS#10 PEM (`CERTIFICATE REQUEST`); what the node sends.
    pub csr_pem: String,
}

impl std::fmt::Debug for NodeRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeRequest")
            .field("csr_pem", &self.csr_pem)
            .finish_non_exhaustive()
    }
}

/// Makes an ECDSA P-256 key pair and a signing request for it. The subject
/// it names is a placeholder: the cluster decides the certificate's.
pub fn new_node_request() -> Result<NodeRequest, TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = tls::name("berth joining node");
    let csr = params.serialize_request(&key)?;
    Ok(NodeRequest {
        key_pem: key.serialize_pem(),
        csr_pem: csr.pem()?,
    })
}

/// The key types a node certificate may have: what ring verifies in TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyType {
    P256,
    P384,
    Ed25519,
}

impl KeyType {
    /// Reads the key type of a request's SubjectPublicKeyInfo.
    fn of(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<KeyType, CsrError> {
        let alg = spki.algorithm.algorithm.to_id_string();
        match alg.as_str() {
            OID_EC_PUBLIC_KEY => {
                let curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok())
                    .map(|o| o.to_id_string());
                match curve.as_deref() {
                    Some(OID_CURVE_P256) => Ok(KeyType::P256),
                    Some(OID_CURVE_P384) => Ok(KeyType::P384),
                    Some(other) => Err(CsrError::UnsupportedKey(format!(
                        "ECDSA on the curve {other}"
                    ))),
                    None => Err(CsrError::Malformed("its EC key names no curve".to_string())),
                }
            }
            OID_ED25519 => Ok(KeyType::Ed25519),
            OID_RSA => Err(CsrError::UnsupportedKey("RSA".to_string())),
            other => Err(CsrError::UnsupportedKey(format!("key algorithm {other}"))),
        }
    }

    /// The signature algorithm a request with this key must be signed with
    /// (rcgen derives the certificate's key algorithm from it).
    fn request_algorithm(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            KeyType::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyType::P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyType::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }
}

/// Signs the request `csr_pem` with the cluster CA `ca`: a node certificate
/// for node `node_id` (common name `node-<id>`) valid for the node's
/// advertised `names` (IP strings become IP SANs) and, like every node
/// certificate, [`tls::ALWAYS_SANS`], for [`NODE_VALIDITY_DAYS`], usable as
/// a TLS server and client. Returns it in PEM.
///
/// The request must be well formed, signed by the key it carries, and
/// carry an ECDSA P-256/P-384 or Ed25519 key; its subject and any names it
/// asks for are ignored.
pub fn sign_node_request(
    ca: &CaMaterial,
    csr_pem: &str,
    node_id: u64,
    names: &[String],
) -> Result<String, CsrError> {
    let malformed = |m: &str| CsrError::Malformed(m.to_string());
    if csr_pem.len() > CSR_LEN_MAX_BYTES {
        return Err(malformed("it is longer than 16 KiB"));
    }
    if names.len() > NODE_NAMES_MAX {
        return Err(CsrError::BadNames(format!(
            "{} names, at most {NODE_NAMES_MAX}",
            names.len()
        )));
    }
    if names.iter().all(|n| n.trim().is_empty()) {
        return Err(CsrError::BadNames("no name given".to_string()));
    }
    let sans = tls::parse_sans(names.iter().map(String::as_str).chain(tls::ALWAYS_SANS))
        .map_err(|e| CsrError::BadNames(e.to_string()))?;
    let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .map_err(|e| CsrError::Malformed(format!("not a PEM CERTIFICATE REQUEST: {e}")))?;
    let (rest, parsed) =
        x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref())
            .map_err(|e| CsrError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(malformed("bytes follow the request"));
    }
    let info = &parsed.certification_request_info;
    let key_type = KeyType::of(&info.subject_pki)?;
    let requested_spki = info.subject_pki.raw.to_vec();
    let request = CertificateSigningRequestParams::from_der(&der).map_err(|e| match e {
        rcgen::Error::InvalidCertificationRequestSignature => {
            malformed("its signature does not verify with the key it carries")
        }
        rcgen::Error::UnsupportedExtension => {
            malformed("it asks for an extension berth does not issue")
        }
        rcgen::Error::UnsupportedSignatureAlgorithm => {
            CsrError::UnsupportedKey("its signature algorithm".to_string())
        }
        e => CsrError::Malformed(e.to_string()),
    })?;
    if request.public_key.algorithm() != key_type.request_algorithm() {
        return Err(malformed(
            "its signature algorithm does not fit its key (ECDSA P-256 signs with SHA-256, \
             P-384 with SHA-384)",
        ));
    }

    let mut params = CertificateParams::default();
    params.distinguished_name = tls::name(&tls::node_common_name(node_id));
    params.subject_alt_names = sans.into_iter().map(|s| s.san).collect();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    tls::set_validity(&mut params, NODE_VALIDITY_DAYS);
    params.serial_number = Some(tls::random_serial());

    let ca_err = |e: rcgen::Error| CsrError::Ca(e.to_string());
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(ca_err)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).map_err(ca_err)?;
    let cert = params
        .signed_by(&request.public_key, &issuer)
        .map_err(ca_err)?;
    // The certificate must carry exactly the key the request proved.
    let (_, issued) = x509_parser::parse_x509_certificate(cert.der())
        .map_err(|e| CsrError::Ca(format!("the issued certificate does not parse: {e}")))?;
    if issued.public_key().raw != requested_spki.as_slice() {
        return Err(CsrError::Ca(
            "the issued certificate's key is not the request's".to_string(),
        ));
    }
    Ok(cert.pem())
}

/// The node id a node certificate proves: its one common name is
/// `node-<id>` with `id` ≥ 1 written plainly. `None` for anything else
/// (including a certificate that does not parse). The caller must have
/// verified the certificate against the cluster CA.
pub fn node_id_of_cert(der: &[u8]) -> Option<u64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut names = cert.subject().iter_common_name();
    let cn = names.next()?.as_str().ok()?;
    if names.next().is_some() {
        return None;
    }
    let id: u64 = cn.strip_prefix("node-")?.parse().ok()?;
    // Rejects `node-0`, `node-01` and `node-+1`.
    (id != 0 && tls::node_common_name(id) == cn).then_some(id)
}

/// Why a [`PinnedCaVerifier`] refused a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinRefusal {
    /// No certificate of the server's chain has the pinned fingerprint.
    CaNotPresented,
    /// The chain holds the pinned CA, but the server's certificate does not
    /// verify against it for the name connected to.
    NotSignedByCa(String),
}

/// A rustls server verifier that knows the cluster CA only by the SHA-256
/// of its certificate (DER), as a join token carries it: it accepts a
/// server whose chain contains a certificate with that fingerprint and
/// whose own certificate verifies against that certificate, as the only
/// trust anchor, for the name connected to. It remembers why it last
/// refused, so a joining node can say so.
pub struct PinnedCaVerifier {
    ca_sha256: [u8; 32],
    provider: Arc<CryptoProvider>,
    refusal: Mutex<Option<PinRefusal>>,
}

impl std::fmt::Debug for PinnedCaVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedCaVerifier")
            .field("ca_sha256", &crate::join::fingerprint_text(&self.ca_sha256))
            .finish_non_exhaustive()
    }
}

impl PinnedCaVerifier {
    pub fn new(ca_sha256: [u8; 32]) -> Arc<PinnedCaVerifier> {
        Arc::new(PinnedCaVerifier {
            ca_sha256,
            provider: tls::provider(),
            refusal: Mutex::new(None),
        })
    }

    /// Why the last refused handshake was refused (`None`: none was).
    pub fn refusal(&self) -> Option<PinRefusal> {
        self.refusal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn refuse(&self, why: PinRefusal) {
        *self.refusal.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }

    /// A client configuration for reaching the server this verifier pins
    /// (no client certificate).
    pub fn client_config(self: &Arc<Self>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(self.clone())
            .with_no_client_auth();
        Ok(Arc::new(config))
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pinned = intermediates
            .iter()
            .position(|c| <[u8; 32]>::from(Sha256::digest(c.as_ref())) == self.ca_sha256);
        let Some(pinned) = pinned else {
            self.refuse(PinRefusal::CaNotPresented);
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            ));
        };
        let mut roots = RootCertStore::empty();
        roots.add(intermediates[pinned].clone().into_owned())?;
        let others: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != pinned)
            .map(|(_, c)| c.clone())
            .collect();
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier
            .verify_server_cert(end_entity, &others, server_name, ocsp_response, now)
            .inspect_err(|e| self.refuse(PinRefusal::NotSignedByCa(e.to_string())))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::tests::handshake;
    use rustls::pki_types::PrivateKeyDer;

    fn ca() -> CaMaterial {
        tls::new_ca("test").unwrap()
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn der_of(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    /// A server configuration presenting `chain` with `key`.
    fn server(chain: &str, key: &str) -> Arc<rustls::ServerConfig> {
        tls::server_config(chain, key).unwrap()
    }

    /// A node of the cluster of `ca`: its signed certificate and key.
    fn node(ca: &CaMaterial, id: u64, list: &[&str]) -> tls::NodeMaterial {
        let req = new_node_request().unwrap();
        let cert_pem = sign_node_request(ca, &req.csr_pem, id, &names(list)).unwrap();
        tls::NodeMaterial {
            ca_pem: ca.cert_pem.clone(),
            cert_pem,
            key_pem: req.key_pem,
        }
    }

    #[test]
    fn a_request_becomes_a_node_certificate_of_the_cluster() {
        let ca = ca();
        let m = node(&ca, 7, &["node7.example.com", "10.0.0.7"]);
        // The key made on the node is the certificate's.
        let key = PrivateKeyDer::from_pem_slice(m.key_pem.as_bytes()).unwrap();
        rustls::sign::CertifiedKey::from_der(vec![der_of(&m.cert_pem)], key, &tls::provider())
            .unwrap();
        assert_eq!(node_id_of_cert(der_of(&m.cert_pem).as_ref()), Some(7));
        // It serves TLS under the cluster CA for the names asked for, and
        // no others.
        let client = tls::client_config(&ca.cert_pem).unwrap();
        let srv = server(&m.chain_pem(), &m.key_pem);
        for good in ["node7.example.com", "10.0.0.7", "localhost", "127.0.0.1"] {
            handshake(client.clone(), srv.clone(), good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        assert!(handshake(client, srv, "10.0.0.8").is_err());
        // It is a client certificate too (the Raft transport's mutual TLS).
        let roots = {
            let mut r = RootCertStore::empty();
            r.add(der_of(&ca.cert_pem)).unwrap();
            Arc::new(r)
        };
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots, tls::provider())
                .build()
                .unwrap();
        verifier
            .verify_client_cert(&der_of(&m.cert_pem), &[], UnixTime::now())
            .unwrap();
        // The directory form round-trips.
        let dir = tempfile::tempdir().unwrap();
        tls::write_joined(dir.path(), &m).unwrap();
        assert_eq!(tls::load_joined(dir.path()).unwrap(), m);
        assert!(!dir.path().join("ca.key").exists());
    }

    #[test]
    fn the_server_decides_the_subject() {
        let ca = ca();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = tls::name("node-1");
        params.subject_alt_names =
            vec![rcgen::SanType::DnsName("evil.example".try_into().unwrap())];
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let pem = sign_node_request(&ca, &csr, 9, &names(&["n9"])).unwrap();
        assert_eq!(node_id_of_cert(der_of(&pem).as_ref()), Some(9));
        let m = tls::NodeMaterial {
            ca_pem: ca.cert_pem.clone(),
            cert_pem: pem,
            key_pem: key.serialize_pem(),
        };
        let client = tls::client_config(&ca.cert_pem).unwrap();
        let srv = server(&m.chain_pem(), &m.key_pem);
        handshake(client.clone(), srv.clone(), "n9").unwrap();
        assert!(handshake(client, srv, "evil.example").is_err());
    }

    #[test]
    fn other_supported_key_types() {
        let ca = ca();
        for alg in [&rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519] {
            let key = KeyPair::generate_for(alg).unwrap();
            let csr = CertificateParams::default()
                .serialize_request(&key)
                .unwrap()
                .pem()
                .unwrap();
            let pem = sign_node_request(&ca, &csr, 3, &names(&["n3"])).unwrap();
            let k = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap();
            rustls::sign::CertifiedKey::from_der(vec![der_of(&pem)], k, &tls::provider()).unwrap();
        }
    }

    #[test]
    fn bad_requests_are_refused_with_their_reason() {
        let ca = ca();
        let n = names(&["n2"]);
        let malformed = |csr: &str| match sign_node_request(&ca, csr, 2, &n) {
            Err(CsrError::Malformed(m)) => m,
            other => panic!("{other:?}"),
        };
        malformed("not a request");
        malformed(&ca.cert_pem);
        malformed(&"A".repeat(CSR_LEN_MAX_BYTES + 1));
        // A request whose signature does not match its content.
        let good = new_node_request().unwrap().csr_pem;
        let der = CertificateSigningRequestDer::from_pem_slice(good.as_bytes()).unwrap();
        let mut bytes = der.as_ref().to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        let m = malformed(&request_pem(&bytes));
        assert!(m.contains("signature"), "{m}");
        // A P-384 key signed with SHA-256 would get a certificate claiming
        // P-256 from rcgen: refused.
        match sign_node_request(
            &ca,
            include_str!("../testdata/p384-signed-sha256.csr"),
            2,
            &n,
        ) {
            Err(CsrError::Malformed(_)) => {}
            other => panic!("{other:?}"),
        }
        for (csr, what) in [
            (include_str!("../testdata/rsa-2048.csr"), "RSA"),
            (include_str!("../testdata/secp256k1.csr"), "curve"),
        ] {
            let e = sign_node_request(&ca, csr, 2, &n).unwrap_err();
            assert!(matches!(e, CsrError::UnsupportedKey(_)), "{e:?}");
            assert!(e.to_string().contains(what), "{e}");
            assert!(e.to_string().contains("P-256"), "{e}");
        }
        // Names.
        let csr = new_node_request().unwrap().csr_pem;
        for bad in [
            vec![],
            names(&[" "]),
            names(&["bad name!"]),
            vec!["h".to_string(); 33],
        ] {
            assert!(
                matches!(
                    sign_node_request(&ca, &csr, 2, &bad),
                    Err(CsrError::BadNames(_))
                ),
                "{bad:?}"
            );
        }
        // A CA key that is not a key.
        let broken = CaMaterial {
            key_pem: "nope".into(),
            ..ca.clone()
        };
        assert!(matches!(
            sign_node_request(&broken, &csr, 2, &n),
            Err(CsrError::Ca(_))
        ));
    }

    fn request_pem(der: &[u8]) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            lines.join("\n")
        )
    }

    #[test]
    fn node_ids_come_only_from_plain_node_names() {
        let ca = ca();
        let issuer =
            Issuer::from_ca_cert_pem(&ca.cert_pem, KeyPair::from_pem(&ca.key_pem).unwrap())
                .unwrap();
        let cert_named = |cn: &str| {
            let mut p = CertificateParams::default();
            p.distinguished_name = tls::name(cn);
            let key = KeyPair::generate().unwrap();
            p.signed_by(&key, &issuer).unwrap().der().to_vec()
        };
        assert_eq!(node_id_of_cert(&cert_named("node-1")), Some(1));
        assert_eq!(
            node_id_of_cert(&cert_named("node-18446744073709551615")),
            Some(u64::MAX)
        );
        for bad in [
            "node-0", "node-01", "node-+1", "node-", "admin", "node-1 ", "xnode-1",
        ] {
            assert_eq!(node_id_of_cert(&cert_named(bad)), None, "{bad}");
        }
        assert_eq!(node_id_of_cert(b"not a certificate"), None);
    }

    #[test]
    fn the_pinned_verifier_trusts_only_the_pinned_ca() {
        let ca = ca();
        let sha = crate::join::ca_sha256(&ca.cert_pem).unwrap();
        let m = node(&ca, 1, &["localhost"]);
        let pinned = PinnedCaVerifier::new(sha);
        let client = pinned.client_config().unwrap();

        // The cluster's server, presenting its CA in the chain.
        handshake(
            client.clone(),
            server(&m.chain_pem(), &m.key_pem),
            "localhost",
        )
        .unwrap();
        assert_eq!(pinned.refusal(), None);

        // ... but only for its own names.
        assert!(handshake(client.clone(), server(&m.chain_pem(), &m.key_pem), "other").is_err());
        assert!(matches!(
            pinned.refusal(),
            Some(PinRefusal::NotSignedByCa(_))
        ));

        // A server that does not send the CA cannot be checked: refused.
        let fresh = PinnedCaVerifier::new(sha);
        let err = handshake(
            fresh.client_config().unwrap(),
            server(&m.cert_pem, &m.key_pem),
            "localhost",
        )
        .unwrap_err();
        assert!(matches!(err, rustls::Error::InvalidCertificate(_)), "{err}");
        assert_eq!(fresh.refusal(), Some(PinRefusal::CaNotPresented));

        // Another cluster's server.
        let other = tls::new_ca("other").unwrap();
        let o = node(&other, 1, &["localhost"]);
        let fresh = PinnedCaVerifier::new(sha);
        assert!(handshake(
            fresh.client_config().unwrap(),
            server(&o.chain_pem(), &o.key_pem),
            "localhost"
        )
        .is_err());
        assert_eq!(fresh.refusal(), Some(PinRefusal::CaNotPresented));

        // An impostor that appends the real CA certificate to its own chain.
        let fake_chain = format!("{}{}", o.cert_pem, ca.cert_pem);
        let fresh = PinnedCaVerifier::new(sha);
        assert!(handshake(
            fresh.client_config().unwrap(),
            server(&fake_chain, &o.key_pem),
            "localhost"
        )
        .is_err());
        assert!(matches!(
            fresh.refusal(),
            Some(PinRefusal::NotSignedByCa(_))
        ));
        assert!(format!("{fresh:?}").contains("sha256:"));
    }
}
