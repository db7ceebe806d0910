//! The gRPC Raft transport between real nodes: three multi-raft loops in one
//! process, each behind its own gRPC listener on a loopback port, talking
//! over one authenticated stream per peer — with mutual TLS (node
//! certificates of one cluster CA), and without TLS with node tickets
//! (`--insecure`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_api::v1::raft_transport_client::RaftTransportClient;
use berth_api::v1::raft_transport_server::RaftTransportServer;
use berth_api::v1::RaftBatch;
use berth_meta::{Code, Error};
use berth_raft::cmd::{Op, Txn, TxnOutcome};
use berth_raft::{NodeId, RaftNode, ShardDesc};
use berth_security::principal::{Principal, PrincipalKind};
use berth_security::ticket::{KeyRing, TicketBody, TicketSigner};
use berth_security::tls::{CaMaterial, NodeMaterial};
use berth_server::native::{Authenticator, GrpcTransport, PeerAuth, PeerDirectory, RaftService};
use berth_store::keys::{self, Key, Kind};
use berth_store::Store;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity, Server, ServerTlsConfig};

struct Directory {
    addrs: HashMap<NodeId, String>,
    ticket: String,
}

impl PeerDirectory for Directory {
    fn addr_of(&self, node: NodeId) -> Option<String> {
        self.addrs.get(&node).cloned()
    }
    fn node_ticket(&self) -> Option<String> {
        Some(self.ticket.clone())
    }
}

struct Ring(KeyRing);

impl Authenticator for Ring {
    fn authenticate(&self, ticket: &str) -> Result<Principal, Error> {
        self.0
            .verify(ticket, "test", berth_security::now_secs())
            .map_err(|e| Error::new(Code::Auth, e.to_string()))
    }
}

fn ticket(signer: &TicketSigner, kind: PrincipalKind, name: &str) -> String {
    let now = berth_security::now_secs();
    signer.sign(&TicketBody {
        version: 1,
        key_id: 1,
        cluster: "test".into(),
        principal: name.into(),
        kind,
        uid: 0,
        gids: vec![],
        groups: vec![],
        issued_at: now,
        expires_at: now + 3600,
        scope: None,
    })
}

/// A node certificate of the cluster of `ca` for node `id` on 127.0.0.1.
fn node_material(ca: &CaMaterial, id: NodeId) -> NodeMaterial {
    let req = berth_security::pki::new_node_request().unwrap();
    let cert_pem =
        berth_security::pki::sign_node_request(ca, &req.csr_pem, id, &["127.0.0.1".into()])
            .unwrap();
    NodeMaterial {
        ca_pem: ca.cert_pem.clone(),
        cert_pem,
        key_pem: req.key_pem,
    }
}

/// A certificate signed by the CA of `ca` but naming no node.
fn non_node_material(ca: &CaMaterial, common_name: &str) -> NodeMaterial {
    let ca_key = rcgen::KeyPair::from_pem(&ca.key_pem).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    NodeMaterial {
        ca_pem: ca.cert_pem.clone(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// Three nodes of one shard, each with its own listener; `tls`: mutual TLS
/// under `ca`, else plaintext with node tickets signed by `signer`.
struct Cluster {
    nodes: Vec<RaftNode>,
    addrs: HashMap<NodeId, String>,
}

async fn three_nodes(
    dir: &std::path::Path,
    ca: Option<&CaMaterial>,
    signer: &TicketSigner,
) -> Cluster {
    let mut ring = KeyRing::new();
    ring.insert(1, signer.verifying_key_bytes());
    let auth: Arc<dyn Authenticator> = Arc::new(Ring(ring));
    let ids: [NodeId; 3] = [1, 2, 3];
    let mut listeners = Vec::new();
    let mut addrs = HashMap::new();
    for id in ids {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.insert(id, l.local_addr().unwrap().to_string());
        listeners.push(l);
    }
    let (start, end) = keys::volume_range(1);
    let desc = ShardDesc {
        id: 7,
        start,
        end,
        voters: ids.to_vec(),
    };
    let mut nodes = Vec::new();
    for (id, listener) in ids.into_iter().zip(listeners) {
        let store = Arc::new(Store::open(&dir.join(format!("n{id}"))).unwrap());
        let directory = Arc::new(Directory {
            addrs: addrs.clone(),
            ticket: ticket(signer, PrincipalKind::Node, &format!("node:{id}")),
        });
        let material = ca.map(|ca| node_material(ca, id));
        let transport = GrpcTransport::new(
            id,
            directory,
            material.clone(),
            tokio::runtime::Handle::current(),
        );
        let mut cfg = berth_raft::Config::new(id);
        cfg.tick_interval = Duration::from_millis(20);
        let raft = RaftNode::start(store, cfg, transport).unwrap();
        raft.create_shard(desc.clone()).unwrap();
        let svc = RaftTransportServer::new(RaftService {
            raft: raft.clone(),
            auth: match &material {
                Some(_) => PeerAuth::Certificate(None),
                None => PeerAuth::Ticket(auth.clone()),
            },
        });
        let mut server = Server::builder();
        if let Some(m) = &material {
            server = server
                .tls_config(
                    ServerTlsConfig::new()
                        .identity(Identity::from_pem(m.chain_pem(), &m.key_pem))
                        .client_ca_root(Certificate::from_pem(&m.ca_pem))
                        .client_auth_optional(true),
                )
                .unwrap();
        }
        let server = server.add_service(svc);
        tokio::spawn(
            server.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        nodes.push(raft);
    }
    Cluster { nodes, addrs }
}

/// Elects a leader over the network, writes 50 keys through it and waits
/// until every replica applied them.
async fn replicate(nodes: &[RaftNode]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let leader = loop {
        let views: Vec<Option<NodeId>> = nodes.iter().map(|n| n.leader(7)).collect();
        if let Some(Some(l)) = views.first() {
            if views.iter().all(|v| *v == Some(*l)) {
                break *l;
            }
        }
        assert!(Instant::now() < deadline, "no agreed leader: {views:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let leader_node = &nodes[(leader - 1) as usize];
    for i in 0..50u64 {
        let k = Key::new(1, Kind::Inode, i).build();
        let out = leader_node
            .propose(
                7,
                Txn {
                    conditions: vec![],
                    ops: vec![Op::Put {
                        key: k,
                        value: i.to_be_bytes().to_vec(),
                    }],
                },
            )
            .await
            .unwrap();
        assert!(matches!(out, TxnOutcome::Applied { .. }));
    }
    let last = Key::new(1, Kind::Inode, 49).build();
    let deadline = Instant::now() + Duration::from_secs(30);
    for n in nodes {
        loop {
            if n.get(7, &last).unwrap().is_some() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "a follower never applied the writes"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (s, e) = keys::kind_range(1, Kind::Inode);
        assert_eq!(n.scan(7, &s, &e, 1000).unwrap().len(), 50);
    }
    assert!(nodes.iter().map(|n| n.metrics().messages_sent).sum::<u64>() > 0);
}

/// Opens a Raft stream to `addr` as the holder of `client` (none: no
/// client certificate) and sends one empty batch.
async fn open_stream(
    addr: &str,
    ca: &CaMaterial,
    client: Option<&NodeMaterial>,
) -> Result<(), tonic::Status> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca.cert_pem))
        .domain_name("127.0.0.1");
    if let Some(m) = client {
        tls = tls.identity(Identity::from_pem(&m.cert_pem, &m.key_pem));
    }
    let channel = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connect: {e}")))?;
    let mut client = RaftTransportClient::new(channel);
    let batches = tokio_stream::iter(vec![RaftBatch {
        from_node: 9,
        messages: vec![],
    }]);
    client.stream(batches).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_over_mutual_tls() {
    berth_security::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let ca = berth_security::tls::new_ca("test").unwrap();
    let signer = TicketSigner::generate(1);
    let c = three_nodes(dir.path(), Some(&ca), &signer).await;
    replicate(&c.nodes).await;
    let addr = &c.addrs[&1];

    // A node certificate of the cluster opens a stream.
    open_stream(addr, &ca, Some(&node_material(&ca, 9)))
        .await
        .unwrap();
    // No client certificate: refused, even with a node ticket's worth of
    // trust elsewhere.
    let err = open_stream(addr, &ca, None).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    // Signed by the cluster CA, but not a node's.
    let err = open_stream(addr, &ca, Some(&non_node_material(&ca, "mallory")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    // A node certificate of another cluster: the handshake fails.
    let other = berth_security::tls::new_ca("other").unwrap();
    let err = open_stream(addr, &ca, Some(&node_material(&other, 2)))
        .await
        .unwrap_err();
    assert_ne!(err.code(), tonic::Code::Ok, "{err}");
    for n in &c.nodes {
        n.shutdown();
    }
}

/// `--insecure`: no TLS, so node tickets prove the peers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_in_plaintext_with_node_tickets() {
    let dir = tempfile::tempdir().unwrap();
    let signer = TicketSigner::generate(1);
    let c = three_nodes(dir.path(), None, &signer).await;
    replicate(&c.nodes).await;

    let channel = Channel::from_shared(format!("http://{}", c.addrs[&1]))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = RaftTransportClient::new(channel);
    let batch = || {
        tokio_stream::iter(vec![RaftBatch {
            from_node: 9,
            messages: vec![],
        }])
    };
    let err = client.stream(batch()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    for (kind, name, ok) in [
        (PrincipalKind::User, "mallory", false),
        (PrincipalKind::Node, "node:9", true),
    ] {
        let t = ticket(&signer, kind, name);
        let mut req = tonic::Request::new(batch());
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
        let r = client.stream(req).await;
        match ok {
            true => assert!(r.is_ok(), "{r:?}"),
            false => assert_eq!(r.unwrap_err().code(), tonic::Code::PermissionDenied),
        }
    }
    for n in &c.nodes {
        n.shutdown();
    }
}

/// A stand-in for a cluster node's `Cluster` service: redirects joins to
/// `leader`, or admits them (signing with `ca`).
struct FakeCluster {
    ca: CaMaterial,
    leader: Option<String>,
    cluster_id: String,
}

#[tonic::async_trait]
impl berth_api::v1::cluster_server::Cluster for FakeCluster {
    async fn status(
        &self,
        _: tonic::Request<berth_api::v1::Empty>,
    ) -> Result<tonic::Response<berth_api::v1::ClusterStatus>, tonic::Status> {
        Err(tonic::Status::unimplemented("status"))
    }
    async fn create_join_token(
        &self,
        _: tonic::Request<berth_api::v1::JoinTokenCreateRequest>,
    ) -> Result<tonic::Response<berth_api::v1::JoinToken>, tonic::Status> {
        Err(tonic::Status::unimplemented("create"))
    }
    async fn list_join_tokens(
        &self,
        _: tonic::Request<berth_api::v1::Empty>,
    ) -> Result<tonic::Response<berth_api::v1::JoinTokenList>, tonic::Status> {
        Err(tonic::Status::unimplemented("list"))
    }
    async fn revoke_join_token(
        &self,
        _: tonic::Request<berth_api::v1::JoinTokenRevokeRequest>,
    ) -> Result<tonic::Response<berth_api::v1::Empty>, tonic::Status> {
        Err(tonic::Status::unimplemented("revoke"))
    }
    async fn placement(
        &self,
        _: tonic::Request<berth_api::v1::Empty>,
    ) -> Result<tonic::Response<berth_api::v1::PlacementStatus>, tonic::Status> {
        Err(tonic::Status::unimplemented("placement"))
    }
    async fn decommission(
        &self,
        _: tonic::Request<berth_api::v1::NodeIdRequest>,
    ) -> Result<tonic::Response<berth_api::v1::NodeDetail>, tonic::Status> {
        Err(tonic::Status::unimplemented("decommission"))
    }
    async fn recommission(
        &self,
        _: tonic::Request<berth_api::v1::NodeIdRequest>,
    ) -> Result<tonic::Response<berth_api::v1::NodeDetail>, tonic::Status> {
        Err(tonic::Status::unimplemented("recommission"))
    }
    async fn remove_node(
        &self,
        _: tonic::Request<berth_api::v1::NodeIdRequest>,
    ) -> Result<tonic::Response<berth_api::v1::Empty>, tonic::Status> {
        Err(tonic::Status::unimplemented("remove"))
    }
    async fn join(
        &self,
        req: tonic::Request<berth_api::v1::JoinRequest>,
    ) -> Result<tonic::Response<berth_api::v1::JoinResponse>, tonic::Status> {
        if let Some(leader) = &self.leader {
            let mut st = tonic::Status::unavailable("not the leader");
            st.metadata_mut()
                .insert(berth_api::LEADER_METADATA, leader.parse().unwrap());
            return Err(st);
        }
        let r = req.into_inner();
        assert!(r.token.starts_with("berthjoin1."));
        let cert = berth_security::pki::sign_node_request(&self.ca, &r.csr_pem, 5, &r.advertise)
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        let node = |id: u64, addr: &str| berth_api::v1::Node {
            id,
            native_addr: addr.into(),
            ..Default::default()
        };
        Ok(tonic::Response::new(berth_api::v1::JoinResponse {
            node_id: 5,
            cluster_id: self.cluster_id.clone(),
            cluster_name: "test".into(),
            ca_cert_pem: self.ca.cert_pem.clone(),
            node_cert_pem: cert,
            servers: vec!["n1:1".into(), r.native_addr.clone()],
            nodes: vec![node(1, "n1:1"), node(5, &r.native_addr)],
        }))
    }
}

/// Serves a fake cluster node with `m`'s certificate on a loopback port.
async fn fake_node(m: &NodeMaterial, svc: FakeCluster) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let server = Server::builder()
        .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(m.chain_pem(), &m.key_pem)))
        .unwrap()
        .add_service(berth_api::v1::cluster_server::ClusterServer::new(svc));
    tokio::spawn(server.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)));
    addr
}

/// The joining side follows a leader redirect, trusts the servers by the
/// token's CA fingerprint alone, and takes the certificate for the key it
/// made; a server of another CA never sees the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_follows_the_leader_and_trusts_only_the_token_ca() {
    use berth_server::join::{join, Application, JoinConfig, JoinFailure};
    berth_security::tls::install_crypto_provider();
    let ca = berth_security::tls::new_ca("test").unwrap();
    let leader = fake_node(
        &node_material(&ca, 1),
        FakeCluster {
            ca: ca.clone(),
            leader: None,
            cluster_id: "c1".into(),
        },
    )
    .await;
    let follower = fake_node(
        &node_material(&ca, 2),
        FakeCluster {
            ca: ca.clone(),
            leader: Some(leader.clone()),
            cluster_id: "c1".into(),
        },
    )
    .await;
    let signer = TicketSigner::generate(1);
    let token = |cluster_id: &str, ca: &CaMaterial| {
        berth_security::join::sign(
            &signer,
            &berth_security::join::JoinTokenBody {
                version: 1,
                key_id: 1,
                cluster_id: cluster_id.into(),
                id: "00".into(),
                ca_sha256: berth_security::join::ca_sha256(&ca.cert_pem).unwrap(),
                expires_at: u64::MAX,
                servers: vec![],
            },
        )
    };
    let app = || Application {
        advertise: vec!["127.0.0.1".into()],
        native_addr: "127.0.0.1:7000".into(),
        admin_addr: "127.0.0.1:7001".into(),
        ..Default::default()
    };
    let cfg = JoinConfig {
        addr: follower.clone(),
        token: token("c1", &ca),
    };
    let joined = join(&cfg, app()).await.unwrap();
    assert_eq!((joined.node_id, joined.cluster_id.as_str()), (5, "c1"));
    assert_eq!(joined.peers, vec![(1, "n1:1".to_string())]);
    let dir = tempfile::tempdir().unwrap();
    berth_security::tls::write_joined(dir.path(), &joined.material).unwrap();

    // A token of another cluster (another CA): refused at the handshake.
    let other = berth_security::tls::new_ca("other").unwrap();
    let cfg = JoinConfig {
        addr: follower.clone(),
        token: token("c2", &other),
    };
    match join(&cfg, app()).await {
        Err(JoinFailure::Refused(m)) => assert!(m.contains("does not hold the cluster CA"), "{m}"),
        other => panic!("{other:?}"),
    }
    // An answer for another cluster than the token's is not taken.
    let cfg = JoinConfig {
        addr: leader.clone(),
        token: token("c9", &ca),
    };
    match join(&cfg, app()).await {
        Err(JoinFailure::Refused(m)) => assert!(m.contains("answered for cluster"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Nobody listening: a bounded failure, not a refusal.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let cfg = JoinConfig {
        addr,
        token: token("c1", &ca),
    };
    assert!(matches!(
        join(&cfg, app()).await,
        Err(JoinFailure::Failed(_))
    ));
}
