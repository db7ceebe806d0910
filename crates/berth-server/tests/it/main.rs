//! The gRPC Raft transport between real nodes: three multi-raft loops in one
//! process, each behind its own TLS gRPC listener on a loopback port, talking
//! over one authenticated stream per peer.

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
use berth_server::native::{Authenticator, GrpcTransport, PeerDirectory, RaftService};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_over_grpc_with_tls_and_node_tickets() {
    berth_security::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let tls_dir = dir.path().join("tls");
    berth_security::tls::ensure_ca(&tls_dir, "test").unwrap();
    let tls =
        berth_security::tls::ensure_node_cert(&tls_dir, "node", &["127.0.0.1".into()]).unwrap();
    let ca = berth_security::tls::load_pem(&tls.ca_cert).unwrap();
    let cert = berth_security::tls::load_pem(&tls.node_cert).unwrap();
    let key = berth_security::tls::load_pem(&tls.node_key).unwrap();
    let signer = TicketSigner::generate(1);
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
        let store = Arc::new(Store::open(&dir.path().join(format!("n{id}"))).unwrap());
        let directory = Arc::new(Directory {
            addrs: addrs.clone(),
            ticket: ticket(&signer, PrincipalKind::Node, &format!("node:{id}")),
        });
        let transport = GrpcTransport::new(
            id,
            directory,
            Some(ca.clone()),
            tokio::runtime::Handle::current(),
        );
        let mut cfg = berth_raft::Config::new(id);
        cfg.tick_interval = Duration::from_millis(20);
        let raft = RaftNode::start(store, cfg, transport).unwrap();
        raft.create_shard(desc.clone()).unwrap();
        let svc = RaftTransportServer::new(RaftService {
            raft: raft.clone(),
            auth: auth.clone(),
        });
        let server = Server::builder()
            .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(&cert, &key)))
            .unwrap()
            .add_service(svc);
        tokio::spawn(
            server.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        nodes.push(raft);
    }

    // A leader is elected over the network, and everyone agrees on it.
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
    // Every replica applies every write.
    let last = Key::new(1, Kind::Inode, 49).build();
    let deadline = Instant::now() + Duration::from_secs(30);
    for n in &nodes {
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

    // Streams without a node ticket are refused.
    let channel = Channel::from_shared(format!("https://{}", addrs[&1]))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&ca))
                .domain_name("127.0.0.1"),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = RaftTransportClient::new(channel);
    let batches = tokio_stream::iter(vec![RaftBatch {
        from_node: 9,
        messages: vec![],
    }]);
    let err = client.stream(batches).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let user = ticket(&signer, PrincipalKind::User, "mallory");
    let mut req = tonic::Request::new(tokio_stream::iter(vec![RaftBatch {
        from_node: 9,
        messages: vec![],
    }]));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {user}").parse().unwrap());
    let err = client.stream(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    for n in &nodes {
        n.shutdown();
    }
}
