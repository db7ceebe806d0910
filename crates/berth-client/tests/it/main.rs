//! The client against a small in-process gRPC server (the Cluster service
//! only): ticket metadata, error mapping, TLS verification, failover.

use berth_api::v1::cluster_server::{Cluster, ClusterServer};
use berth_api::v1::{
    ClusterStatus, Empty, JoinRequest, JoinResponse, JoinToken, JoinTokenCreateRequest,
    JoinTokenList, JoinTokenRevokeRequest,
};
use berth_client::{Client, ClientConfig, ClientError};
use tonic::transport::{Identity, Server, ServerTlsConfig};

const TICKET: &str = "t0k.en-value";

/// Answers Status only when the caller sent `Bearer TICKET`.
struct FakeCluster;

#[tonic::async_trait]
impl Cluster for FakeCluster {
    async fn status(
        &self,
        req: tonic::Request<Empty>,
    ) -> Result<tonic::Response<ClusterStatus>, tonic::Status> {
        let auth = req
            .metadata()
            .get(berth_api::AUTH_METADATA)
            .and_then(|v| v.to_str().ok());
        if auth != Some(&format!("Bearer {TICKET}")) {
            let mut s = tonic::Status::unauthenticated("no valid ticket");
            s.metadata_mut()
                .insert(berth_api::CODE_METADATA, "EAUTH".parse().unwrap());
            return Err(s);
        }
        Ok(tonic::Response::new(ClusterStatus {
            cluster: "fake".into(),
            ..Default::default()
        }))
    }

    // The client tests use Status only.
    async fn create_join_token(
        &self,
        _: tonic::Request<JoinTokenCreateRequest>,
    ) -> Result<tonic::Response<JoinToken>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in the fake"))
    }

    async fn list_join_tokens(
        &self,
        _: tonic::Request<Empty>,
    ) -> Result<tonic::Response<JoinTokenList>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in the fake"))
    }

    async fn revoke_join_token(
        &self,
        _: tonic::Request<JoinTokenRevokeRequest>,
    ) -> Result<tonic::Response<Empty>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in the fake"))
    }

    async fn join(
        &self,
        _: tonic::Request<JoinRequest>,
    ) -> Result<tonic::Response<JoinResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in the fake"))
    }

    async fn placement(
        &self,
        _: tonic::Request<Empty>,
    ) -> Result<tonic::Response<berth_api::v1::PlacementStatus>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in the fake"))
    }

    async fn decommission(
        &self,
        _: tonic::Request<berth_api::v1::NodeIdRequest>,
    ) -> Result<tonic::Response<berth_api::v1::NodeDetail>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in the fake"))
    }

    async fn recommission(
        &self,
        _: tonic::Request<berth_api::v1::NodeIdRequest>,
    ) -> Result<tonic::Response<berth_api::v1::NodeDetail>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in the fake"))
    }

    async fn remove_node(
        &self,
        _: tonic::Request<berth_api::v1::NodeIdRequest>,
    ) -> Result<tonic::Response<Empty>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in the fake"))
    }
}

/// Starts the fake server on a free loopback port; returns `127.0.0.1:port`.
async fn serve(tls: Option<Identity>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut builder = Server::builder();
    if let Some(id) = tls {
        builder = builder
            .tls_config(ServerTlsConfig::new().identity(id))
            .unwrap();
    }
    let router = builder.add_service(ClusterServer::new(FakeCluster));
    tokio::spawn(
        router.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr.to_string()
}

/// A CA and a server certificate for 127.0.0.1 signed by it: (ca_pem, identity).
fn pki() -> (String, Identity) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (
        ca_cert.pem(),
        Identity::from_pem(cert.pem(), key.serialize_pem()),
    )
}

fn cfg(servers: Vec<String>, ca_pem: Option<String>) -> ClientConfig {
    ClientConfig {
        servers,
        ticket: Some(TICKET.into()),
        insecure: ca_pem.is_none(),
        ca_pem,
    }
}

#[tokio::test]
async fn ticket_goes_with_every_call() {
    let addr = serve(None).await;
    let client = Client::connect(cfg(vec![addr.clone()], None))
        .await
        .unwrap();
    let s = client
        .cluster()
        .status(Empty {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.cluster, "fake");

    let anon = Client::connect_without_ticket(cfg(vec![addr], None))
        .await
        .unwrap();
    let e = ClientError::from_status(anon.cluster().status(Empty {}).await.unwrap_err());
    assert!(e.is("EAUTH"), "{e}");
    assert_eq!(
        e.to_string(),
        "EAUTH: authentication failed: no valid ticket"
    );
}

#[tokio::test]
async fn tls_verified_against_the_ca() {
    let (ca, identity) = pki();
    let addr = serve(Some(identity)).await;
    let client = Client::connect(cfg(vec![addr.clone()], Some(ca)))
        .await
        .unwrap();
    assert_eq!(
        client
            .cluster()
            .status(Empty {})
            .await
            .unwrap()
            .into_inner()
            .cluster,
        "fake"
    );

    // Another CA: the handshake fails, and the error points at the CA file.
    let (other_ca, _) = pki();
    let e = Client::connect(cfg(vec![addr.clone()], Some(other_ca)))
        .await
        .err()
        .unwrap();
    assert!(matches!(e, ClientError::Connect { .. }), "{e}");
    assert!(e.to_string().contains("CA file"), "{e}");

    // A plain-text client against a TLS server gets no answer.
    let plain = Client::connect(cfg(vec![addr], None)).await;
    if let Ok(c) = plain {
        assert!(c.cluster().status(Empty {}).await.is_err());
    }
}

#[tokio::test]
async fn first_server_that_answers_wins() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let live = serve(None).await;
    let client = Client::connect(cfg(vec![dead, live.clone()], None))
        .await
        .unwrap();
    assert_eq!(client.server(), live);
    assert!(client.cluster().status(Empty {}).await.is_ok());
}
