//! The joining side of `berth server --join HOST:PORT --join-token T`.
//!
//! The node reads the token without verifying it (it has nothing to verify
//! it with) for the CA fingerprint and the cluster's servers, makes its key
//! pair (the private key never leaves it) and a certificate request, and
//! calls `Cluster/Join` over TLS on a server that proves to hold the cluster
//! CA the token names ([`PinnedCaVerifier`]): the token is never sent to an
//! impostor. A server that does not lead the meta shard names the one that
//! does, and the node retries there. Everything here is bounded: attempts,
//! connection and call timeouts.
//!
//! What it returns is only in memory: the caller writes the TLS files and
//! then the identity, which is what makes the data directory joined.

use std::collections::VecDeque;
use std::time::Duration;

use berth_api::v1::cluster_client::ClusterClient;
use berth_api::v1::{JoinRequest, JoinResponse};
use berth_raft::NodeId;
use berth_security::pki::{self, PinRefusal, PinnedCaVerifier};
use berth_security::tls::NodeMaterial;
use tonic::transport::{ClientTlsConfig, Endpoint};

/// Servers tried in all (the `--join` address, leaders it points to, the
/// token's servers), each at most once per turn.
const ATTEMPTS_MAX: usize = 8;
/// Pause before trying a server again after it answered "not now".
const RETRY_PAUSE: Duration = Duration::from_millis(500);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// `--join HOST:PORT --join-token T`. `Debug` never shows the token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinConfig {
    /// A node of the cluster (its native API address).
    pub addr: String,
    /// `berthjoin1.…`: a secret.
    pub token: String,
}

impl std::fmt::Debug for JoinConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinConfig")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// What a successful join gives the node.
#[derive(Debug, Clone)]
pub struct Joined {
    pub node_id: NodeId,
    pub cluster_id: String,
    pub cluster_name: String,
    /// The CA certificate, the node certificate and the key made here.
    pub material: NodeMaterial,
    /// The cluster's other nodes (id, native address).
    pub peers: Vec<(NodeId, String)>,
}

/// Why a join did not happen. `Refused` is final (the token, the server's
/// CA or the request was refused); `Failed` may succeed later.
#[derive(Debug, thiserror::Error)]
pub enum JoinFailure {
    #[error("join refused: {0}")]
    Refused(String),
    #[error("join failed: {0}")]
    Failed(String),
}

/// What the node asks to be recorded with (the token and the request are
/// added here).
#[derive(Debug, Clone, Default)]
pub struct Application {
    pub advertise: Vec<String>,
    pub native_addr: String,
    pub admin_addr: String,
    pub kafka_addr: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub mongo_addr: String,
}

/// One server's answer.
enum Attempt {
    Admitted(JoinResponse),
    /// Final: say this and stop.
    Refused(String),
    /// Not this server: that one leads the meta shard.
    Redirect(String),
    /// Not now (unreachable, no leader, starting): the reason.
    Unavailable(String),
}

/// Joins the cluster through `cfg.addr` (or the servers the token names).
pub async fn join(cfg: &JoinConfig, app: Application) -> Result<Joined, JoinFailure> {
    let body = berth_security::join::decode_unverified(&cfg.token)
        .map_err(|e| JoinFailure::Refused(e.to_string()))?;
    let request = pki::new_node_request()
        .map_err(|e| JoinFailure::Failed(format!("making the node's key: {e}")))?;
    let req = JoinRequest {
        token: cfg.token.trim().to_string(),
        csr_pem: request.csr_pem.clone(),
        advertise: app.advertise,
        native_addr: app.native_addr,
        admin_addr: app.admin_addr,
        kafka_addr: app.kafka_addr,
        labels: app.labels.into_iter().collect(),
        mongo_addr: app.mongo_addr,
    };
    let mut queue: VecDeque<String> = VecDeque::new();
    for s in std::iter::once(&cfg.addr).chain(&body.servers) {
        if !queue.contains(s) {
            queue.push_back(s.clone());
        }
    }
    let mut last = String::from("no server to contact");
    for attempt in 0..ATTEMPTS_MAX {
        let Some(server) = queue.pop_front() else {
            break;
        };
        tracing::debug!(server, attempt, "asking to join");
        match ask(&server, body.ca_sha256, &req).await {
            Attempt::Admitted(resp) => return accept(resp, request.key_pem, &body),
            Attempt::Refused(why) => return Err(JoinFailure::Refused(why)),
            Attempt::Redirect(leader) => {
                last = format!("{server} sent the join to {leader}");
                queue.retain(|s| s != &leader);
                queue.push_front(leader);
            }
            Attempt::Unavailable(why) => {
                last = format!("{server}: {why}");
                queue.push_back(server);
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
    Err(JoinFailure::Failed(format!(
        "no server of the cluster admitted the node after {ATTEMPTS_MAX} attempts (last: {last})"
    )))
}

/// One `Cluster/Join` call on `server`, trusting only the pinned CA.
async fn ask(server: &str, ca_sha256: [u8; 32], req: &JoinRequest) -> Attempt {
    let host = server.rsplit_once(':').map(|(h, _)| h).unwrap_or(server);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let verifier = PinnedCaVerifier::new(ca_sha256);
    let endpoint = Endpoint::from_shared(format!("https://{server}"))
        .and_then(|ep| {
            ep.tls_config_with_verifier(ClientTlsConfig::new().domain_name(host), verifier.clone())
        })
        .map(|ep| ep.connect_timeout(CONNECT_TIMEOUT).timeout(CALL_TIMEOUT));
    let endpoint = match endpoint {
        Ok(ep) => ep,
        Err(e) => return Attempt::Refused(format!("{server:?} is not a HOST:PORT address: {e}")),
    };
    let channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => {
            return match verifier.refusal() {
                Some(why) => Attempt::Refused(ca_refusal(server, &ca_sha256, why)),
                None => Attempt::Unavailable(error_chain(&e)),
            }
        }
    };
    match ClusterClient::new(channel).join(req.clone()).await {
        Ok(resp) => Attempt::Admitted(resp.into_inner()),
        Err(status) => {
            let leader = status
                .metadata()
                .get(berth_api::LEADER_METADATA)
                .and_then(|v| v.to_str().ok())
                .filter(|l| !l.is_empty() && *l != server);
            if let Some(leader) = leader {
                return Attempt::Redirect(leader.to_string());
            }
            if let Some(why) = verifier.refusal() {
                return Attempt::Refused(ca_refusal(server, &ca_sha256, why));
            }
            match status.code() {
                tonic::Code::Unauthenticated
                | tonic::Code::InvalidArgument
                | tonic::Code::PermissionDenied
                | tonic::Code::FailedPrecondition
                | tonic::Code::AlreadyExists => Attempt::Refused(status.message().to_string()),
                tonic::Code::Unimplemented => Attempt::Refused(format!(
                    "{server} runs a berth without the join exchange: upgrade it first"
                )),
                _ => Attempt::Unavailable(status.message().to_string()),
            }
        }
    }
}

fn ca_refusal(server: &str, ca_sha256: &[u8; 32], why: PinRefusal) -> String {
    let fp = berth_security::join::fingerprint_text(ca_sha256);
    match why {
        PinRefusal::CaNotPresented => format!(
            "the server at {server} does not hold the cluster CA the join token names ({fp}): \
             it is not a node of the token's cluster"
        ),
        PinRefusal::NotSignedByCa(e) => format!(
            "the server at {server} presents the cluster CA ({fp}) but its certificate is not \
             valid for {server} under it: {e}"
        ),
    }
}

/// An error and its causes on one line (a connection error's cause holds
/// what happened).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    for _ in 0..8 {
        let Some(c) = cur else { break };
        let t = c.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        cur = c.source();
    }
    text
}

/// Checks an answer against the token and the request.
fn accept(
    resp: JoinResponse,
    key_pem: String,
    body: &berth_security::join::JoinTokenBody,
) -> Result<Joined, JoinFailure> {
    let refused = |m: String| Err(JoinFailure::Refused(m));
    if resp.cluster_id != body.cluster_id {
        return refused(format!(
            "the server answered for cluster {:?}, the join token is for {:?}",
            resp.cluster_id, body.cluster_id
        ));
    }
    match berth_security::join::ca_sha256(&resp.ca_cert_pem) {
        Ok(sha) if sha == body.ca_sha256 => {}
        _ => return refused("the CA certificate the server sent is not the join token's".into()),
    }
    use rustls::pki_types::pem::PemObject as _;
    let named = rustls::pki_types::CertificateDer::from_pem_slice(resp.node_cert_pem.as_bytes())
        .ok()
        .and_then(|der| pki::node_id_of_cert(der.as_ref()));
    if resp.node_id < 2 || named != Some(resp.node_id) {
        return refused(format!(
            "the server's answer is inconsistent: node id {} with a certificate for {named:?}",
            resp.node_id
        ));
    }
    let peers = resp
        .nodes
        .iter()
        .filter(|n| n.id != resp.node_id)
        .map(|n| (n.id, n.native_addr.clone()))
        .collect();
    Ok(Joined {
        node_id: resp.node_id,
        cluster_id: resp.cluster_id,
        cluster_name: resp.cluster_name,
        material: NodeMaterial {
            ca_pem: resp.ca_cert_pem,
            cert_pem: resp.node_cert_pem,
            key_pem,
        },
        peers,
    })
}
