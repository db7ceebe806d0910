//! Joining a node (`berth server --join HOST:PORT --join-token T`): the
//! new node gets a node id and a certificate of the cluster CA, and shows
//! in the cluster map as joining; refused tokens say why on one line and
//! leave no data directory behind; Raft streams need a node certificate of
//! the cluster.

use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_api::v1::raft_transport_client::RaftTransportClient;
use berth_api::v1::{RaftBatch, ShardReadRequest};
use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::harness::TestServer;

/// `berth node token create ARGS --json` on `s`: (token, id).
pub fn token(s: &TestServer, args: &[&str]) -> (String, String) {
    let mut a = vec!["node", "token", "create"];
    a.extend_from_slice(args);
    let v = s.json(&a);
    let field = |k: &str| {
        v[k].as_str()
            .unwrap_or_else(|| panic!("{k} in {v}"))
            .to_string()
    };
    (field("token"), field("id"))
}

pub fn join_addr(s: &TestServer) -> String {
    format!("127.0.0.1:{}", s.native_port)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Checks that `cert_pem` chains to `ca_pem` and serves `name` now.
fn verify_cert(ca_pem: &str, cert_pem: &str, name: &str) -> Result<(), rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
    let leaf = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
    let name = ServerName::try_from(name.to_string()).unwrap();
    verifier
        .verify_server_cert(&leaf, &[], &name, &[], UnixTime::now())
        .map(|_| ())
}

/// A refused join: exit 1, exactly one line on stderr, the refusal's
/// reason in it, and nothing left that looks joined.
fn check_refused(s: &TestServer, out: &Output, reason: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr, got: {stderr}");
    assert!(
        lines[0].starts_with("error: join refused: ") && lines[0].contains(reason),
        "expected a refusal naming {reason:?}, got: {stderr}"
    );
    // The data directory did not exist before: nothing of it is left.
    assert!(!s.data.exists(), "a refused join left {}", s.data.display());
}

/// Opens a Raft stream to `s` presenting `client` (cert, key PEM) or no
/// client certificate, and sends one empty batch.
fn raft_stream(s: &TestServer, client: Option<(&str, &str)>) -> Result<(), tonic::Status> {
    raft_call(s, client, false)
}

/// A read of the meta shard's first record (`RaftTransport/Read`, what a
/// node without a replica asks), presenting `client` if given.
fn raft_read(s: &TestServer, client: Option<(&str, &str)>) -> Result<(), tonic::Status> {
    raft_call(s, client, true)
}

fn raft_call(
    s: &TestServer,
    client: Option<(&str, &str)>,
    read_shard: bool,
) -> Result<(), tonic::Status> {
    let ca = read(&s.ca_file());
    let addr = join_addr(s);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&ca))
            .domain_name("127.0.0.1");
        if let Some((cert, key)) = client {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        let channel = Channel::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("connect: {e}")))?;
        if read_shard {
            let reply = RaftTransportClient::new(channel)
                .read(ShardReadRequest {
                    shard: 1, // the meta shard
                    op: 3,
                    barrier: true,
                    limit: 1,
                    ..ShardReadRequest::default()
                })
                .await?
                .into_inner();
            assert!(reply.error_code.is_empty(), "{reply:?}");
            assert!(reply.keys.len() == 1 && reply.applied > 0, "{reply:?}");
            return Ok(());
        }
        let batch = tonic::codegen::tokio_stream::iter(vec![RaftBatch {
            from_node: 0,
            messages: vec![],
        }]);
        RaftTransportClient::new(channel)
            .stream(batch)
            .await
            .map(|_| ())
    })
}

/// A node joins with a valid token: node id 2, a certificate of the
/// cluster CA (its key made on the node), state `joining` in node 1's
/// map; it restarts as itself, ignoring `--join`; the used-up token admits
/// no one else; its certificate opens Raft streams to node 1.
#[test]
fn a_node_joins_with_a_token() {
    let n1 = TestServer::start_with(&["--label", "zone=a"]);
    let (t, _) = token(&n1, &["--ttl", "10min", "--uses", "1"]);
    let mut n2 = TestServer::start_joining(&join_addr(&n1), &t, &["--label", "zone=b"]);
    let stdout = read(&n2.dir.path().join("server.stdout.log"));
    assert!(stdout.contains("berth node 2 joined cluster"), "{stdout}");

    // Its TLS material: the cluster's CA, a certificate for its names, no
    // CA key, a private key only it can read.
    let tls = n2.data.join("tls");
    let ca = read(&n1.ca_file());
    assert_eq!(read(&tls.join("ca.crt")), ca);
    let cert = read(&tls.join("node.crt"));
    let key = read(&tls.join("node.key"));
    for name in ["127.0.0.1", "localhost"] {
        verify_cert(&ca, &cert, name).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
    assert_eq!(berth_security::pki::node_id_of_cert(der.as_ref()), Some(2));
    assert!(!tls.join("ca.key").exists());
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(tls.join("node.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // With openssl at hand, the same chain check by another implementation.
    if let Ok(out) = std::process::Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(n1.ca_file())
        .arg(tls.join("node.crt"))
        .output()
    {
        assert!(
            out.status.success(),
            "openssl verify: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Node 1's map has it, joining, with its addresses and labels.
    let st = n1.json(&["status"]);
    let nodes = st["nodes"].as_array().unwrap();
    let by_id = |id: u64| {
        nodes
            .iter()
            .find(|n| n["id"] == id)
            .unwrap_or_else(|| panic!("node {id} in {st}"))
    };
    assert_eq!(by_id(1)["state"], "up", "{st}");
    let n = by_id(2);
    assert_eq!(n["state"], "joining", "{st}");
    assert_eq!(n["native_addr"], join_addr(&n2), "{st}");
    assert_eq!(n["labels"]["zone"], "b", "{st}");
    let text = n1.ok(&["status"]);
    assert!(text.contains("joining"), "{text}");

    // The placement driver gives it a copy of the cluster map (and its
    // share of replicas): it comes to serve requests itself, and is up.
    let st = eventually_json(&n2, &n1, |st| {
        st["nodes"]
            .as_array()?
            .iter()
            .any(|n| n["id"] == 2 && n["state"] == "up")
            .then_some(())
    });
    assert_eq!(st["node_id"], 2, "{st}");

    // The token is used up.
    let list = n1.json(&["node", "token", "list"]);
    assert_eq!(list[0]["uses_left"], 0, "{list}");
    let (n3, out) = TestServer::join_refused(&join_addr(&n1), &t);
    check_refused(&n3, &out, "the join token is used up");

    // Node 2's certificate opens a Raft stream to node 1; no certificate
    // does not.
    raft_stream(&n1, Some((&cert, &key))).unwrap();
    let err = raft_stream(&n1, None).unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    // Likewise for reading a shard's replica.
    raft_read(&n1, Some((&cert, &key))).unwrap();
    let err = raft_read(&n1, None).unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    let log = n1.log();
    assert!(
        log.contains("RaftTransport/Stream") && log.contains("refused"),
        "{log}"
    );

    // A restart is a restart: --join (with its used-up token) is ignored,
    // and the node serves again from its data directory.
    n2.restart();
    let stderr = read(&n2.dir.path().join("server.stderr.log"));
    assert!(stderr.contains("--join is ignored"), "{stderr}");
    assert_eq!(read(&tls.join("node.crt")), cert);
    eventually_json(&n2, &n1, |st| (st["node_id"] == 2).then_some(()));
    let st = n1.json(&["status"]);
    assert_eq!(st["nodes"].as_array().unwrap().len(), 2, "{st}");
}

/// `berth status --json` answered by `via` (with `auth`'s admin ticket),
/// polled until `f` accepts it (30 s at most).
pub fn eventually_json(
    via: &TestServer,
    auth: &TestServer,
    f: impl Fn(&serde_json::Value) -> Option<()>,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = via.cli_with(
            &["status", "--json"],
            &[("BERTH_TICKET_FILE", &auth.admin_ticket())],
            None,
        );
        if out.status.success() {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
                if f(&v).is_some() {
                    return v;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "status through node {} never satisfied the test: {}{}",
            via.native_port,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Expired, revoked and foreign tokens are refused, each with its own
/// message, before any of the new node's state is kept; a Raft stream with
/// another cluster's node certificate is refused.
#[test]
fn refused_tokens_say_why() {
    let n1 = TestServer::start();
    let other = TestServer::start();
    let created = Instant::now();
    let (expiring, _) = token(&n1, &["--ttl", "1s"]);
    let (revoked, revoked_id) = token(&n1, &[]);
    n1.ok(&["node", "token", "revoke", &revoked_id]);
    let (foreign, _) = token(&other, &[]);

    let (s, out) = TestServer::join_refused(&join_addr(&n1), &revoked);
    check_refused(&s, &out, "the join token was revoked");
    // Another cluster's token: its CA is not node 1's, so the token never
    // reaches node 1.
    let (s, out) = TestServer::join_refused(&join_addr(&n1), &foreign);
    check_refused(
        &s,
        &out,
        "does not hold the cluster CA the join token names",
    );
    let (s, out) = TestServer::join_refused(&join_addr(&n1), "berthjoin1.nope");
    check_refused(&s, &out, "not a join token");
    // Expiry has one-second resolution: wait until it has surely passed.
    let wait = Duration::from_millis(2100).saturating_sub(created.elapsed());
    std::thread::sleep(wait);
    let (s, out) = TestServer::join_refused(&join_addr(&n1), &expiring);
    check_refused(&s, &out, "the join token expired");
    // No attempt used a token or added a node.
    let st = n1.json(&["status"]);
    assert_eq!(st["nodes"].as_array().unwrap().len(), 1, "{st}");

    // The other cluster's node certificate opens no Raft stream here.
    let tls = other.data.join("tls");
    let (cert, key) = (read(&tls.join("node.crt")), read(&tls.join("node.key")));
    assert!(raft_stream(&n1, Some((&cert, &key))).is_err());
    assert!(raft_read(&n1, Some((&cert, &key))).is_err());
}
