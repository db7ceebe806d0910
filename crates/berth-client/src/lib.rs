//! Native client library of Berth: finds the cluster (flags, environment,
//! defaults), connects to the first server that answers, learns the other
//! nodes from `Cluster/Status`, and hands out ready-to-use `berth.v1` clients
//! that carry the caller's ticket and fail over to another node (see
//! [`failover`]). Used by the `berth` CLI and the FUSE mount.
//!
//! Invariants:
//! - *The ticket is never logged or printed*: it lives in [`ClientConfig`]
//!   (whose `Debug` redacts it) and in a metadata value marked sensitive.
//! - *TLS unless explicitly insecure*: without `insecure` the channel is TLS,
//!   verified against the cluster CA; there is no silent fallback to plain
//!   text.
//! - Every failure surfaces as one [`ClientError`]; a gRPC status is turned
//!   into one only by [`ClientError::from_status`].

mod config;
mod error;
pub mod failover;

use std::time::Duration;

use berth_api::v1::{
    cluster_client::ClusterClient, files_client::FilesClient, inodes_client::InodesClient,
    locks_client::LocksClient, namespace_client::NamespaceClient, security_client::SecurityClient,
    streams_client::StreamsClient, tables_client::TablesClient, volumes_client::VolumesClient,
};
use std::sync::Arc;

use tonic::codegen::http::HeaderValue;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

pub use config::{ClientConfig, Overrides, DEFAULT_DATA_DIR, DEFAULT_NATIVE_PORT};
pub use error::{berth_code_description, ClientError};
pub use failover::{Failover, RETRY_BUDGET_MS};

/// Time allowed to open a connection to one server.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Time allowed for one call, end to end.
pub const REQUEST_TIMEOUT_MS: u64 = 60_000;

/// Time allowed to learn the cluster's nodes after connecting.
pub const LEARN_TIMEOUT_MS: u64 = 2_000;

/// The transport under every client: the server list with failover, which
/// also adds the ticket to every call.
pub type Transport = Failover;

/// Errors of the transport.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A connection to a Berth cluster. Cheap to clone; clones share the channel.
#[derive(Clone)]
pub struct Client {
    transport: Failover,
}

impl Client {
    /// Connects and authenticates every call with the configured ticket.
    /// Fails with [`ClientError::Config`] when there is no ticket.
    pub async fn connect(cfg: ClientConfig) -> Result<Client, ClientError> {
        let ticket = cfg.require_ticket()?.to_string();
        let mut value = HeaderValue::try_from(format!("Bearer {ticket}")).map_err(|_| {
            ClientError::Config(
                "the ticket holds characters that cannot be sent: check the ticket file".into(),
            )
        })?;
        value.set_sensitive(true);
        Self::open(&cfg, Some(value)).await
    }

    /// Connects without a ticket, for `Security.Login`.
    pub async fn connect_without_ticket(cfg: ClientConfig) -> Result<Client, ClientError> {
        Self::open(&cfg, None).await
    }

    async fn open(cfg: &ClientConfig, auth: Option<HeaderValue>) -> Result<Client, ClientError> {
        if !cfg.insecure && cfg.ca_pem.is_none() {
            return Err(ClientError::Config(
                "no CA certificate to verify the server: set BERTH_CA_FILE or pass --ca-file \
                 (the cluster CA is <data-dir>/tls/ca.crt), or --insecure for a server \
                 started with --insecure"
                    .into(),
            ));
        }
        let mut last = None;
        for (i, server) in cfg.servers.iter().enumerate() {
            match endpoint(cfg, server)?.connect().await {
                Ok(channel) => {
                    let make = {
                        let cfg = cfg.clone();
                        Arc::new(move |s: &str| endpoint(&cfg, s))
                    };
                    let transport = Failover::new(cfg.servers.clone(), i, channel, auth, make);
                    let client = Client { transport };
                    client.learn_nodes().await;
                    return Ok(client);
                }
                Err(e) => last = Some(e),
            }
        }
        match last {
            Some(source) => Err(ClientError::Connect {
                addr: cfg.servers.join(", "),
                source,
            }),
            None => Err(ClientError::Config(
                "no servers: set BERTH_SERVERS=host:port or pass --servers".into(),
            )),
        }
    }

    /// Adds every node's native address from `Cluster/Status` to the
    /// servers to fail over to. Best effort, bounded by [`LEARN_TIMEOUT_MS`]:
    /// a client that cannot learn keeps its configured servers.
    async fn learn_nodes(&self) {
        let mut cluster = self.cluster();
        let call = cluster.status(berth_api::v1::Empty {});
        let Ok(Ok(status)) =
            tokio::time::timeout(Duration::from_millis(LEARN_TIMEOUT_MS), call).await
        else {
            return;
        };
        let addrs = status
            .into_inner()
            .nodes
            .into_iter()
            .map(|n| n.native_addr)
            .filter(|a| !a.is_empty());
        self.transport.learn(addrs);
    }

    /// The server calls go to now, `host:port`.
    pub fn server(&self) -> String {
        self.transport.current()
    }

    /// Every server this client may use: the configured ones, then those
    /// learned from the cluster and from redirects.
    pub fn servers(&self) -> Vec<String> {
        self.transport.servers()
    }

    /// A client with its own connection to the same server, with the same
    /// ticket, opened on its first call. Its background tasks (the
    /// connection, the request queue) run on the tokio runtime current when
    /// this is called, so a caller that drives its own current-thread
    /// runtime gets calls with no hand-off to other threads. Must be called
    /// within a runtime.
    pub fn another_connection(&self) -> Client {
        Client {
            transport: self.transport.fresh(),
        }
    }

    fn transport(&self) -> Transport {
        self.transport.clone()
    }

    /// Namespace service: entries, directories, ACLs.
    pub fn namespace(&self) -> NamespaceClient<Transport> {
        NamespaceClient::new(self.transport())
    }

    /// The namespace addressed by inode (what a FUSE mount calls).
    pub fn inodes(&self) -> InodesClient<Transport> {
        InodesClient::new(self.transport())
    }

    /// Files service: open, read, write file data. Messages up to 64 MiB.
    pub fn files(&self) -> FilesClient<Transport> {
        FilesClient::new(self.transport())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    /// Volume service.
    pub fn volumes(&self) -> VolumesClient<Transport> {
        VolumesClient::new(self.transport())
    }

    /// Security service: login, tickets, users, groups, keys.
    pub fn security(&self) -> SecurityClient<Transport> {
        SecurityClient::new(self.transport())
    }

    /// Cluster service: status.
    pub fn cluster(&self) -> ClusterClient<Transport> {
        ClusterClient::new(self.transport())
    }

    /// Streams service: streams and their topics (records go through the
    /// Kafka listener).
    pub fn streams(&self) -> StreamsClient<Transport> {
        StreamsClient::new(self.transport())
    }

    /// Tables service: tables of JSON documents (documents go through the
    /// MongoDB listener).
    pub fn tables(&self) -> TablesClient<Transport> {
        TablesClient::new(self.transport())
    }

    /// Locks service: advisory locks shared by every client of the cluster.
    pub fn locks(&self) -> LocksClient<Transport> {
        LocksClient::new(self.transport())
    }
}

fn endpoint(cfg: &ClientConfig, server: &str) -> Result<Endpoint, ClientError> {
    let bad = |e: tonic::transport::Error| {
        ClientError::Config(format!("bad server address {server:?}: {e}"))
    };
    let scheme = if cfg.insecure { "http" } else { "https" };
    let mut ep = Endpoint::from_shared(format!("{scheme}://{server}"))
        .map_err(bad)?
        .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
        .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
        .tcp_nodelay(true)
        // Room for several 1 MiB reads in flight and large frames (see the
        // server's settings).
        .initial_stream_window_size(berth_api::H2_STREAM_WINDOW)
        .initial_connection_window_size(berth_api::H2_CONNECTION_WINDOW)
        .max_frame_size(berth_api::H2_FRAME_BYTES);
    if !cfg.insecure {
        let ca = cfg.ca_pem.as_deref().unwrap_or_default();
        let (host, _) = config::split_host_port(server);
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .domain_name(host);
        ep = ep.tls_config(tls).map_err(|e| {
            ClientError::Config(format!(
                "TLS setup for {server} failed: {e}; check the CA file"
            ))
        })?;
    }
    Ok(ep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connect_needs_a_ticket() {
        let cfg = ClientConfig {
            servers: vec!["127.0.0.1:1".into()],
            insecure: true,
            ..Default::default()
        };
        let e = Client::connect(cfg).await.err().unwrap();
        assert!(matches!(e, ClientError::Config(_)), "{e}");
    }

    #[tokio::test]
    async fn tls_needs_a_ca() {
        let cfg = ClientConfig {
            servers: vec!["127.0.0.1:1".into()],
            ..Default::default()
        };
        let e = Client::connect_without_ticket(cfg).await.err().unwrap();
        assert!(e.to_string().contains("BERTH_CA_FILE"), "{e}");
    }

    #[tokio::test]
    async fn connect_error_names_the_servers() {
        // Port 1 on loopback: nothing listens there.
        let cfg = ClientConfig {
            servers: vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()],
            insecure: true,
            ticket: Some("t".into()),
            ..Default::default()
        };
        let e = Client::connect(cfg).await.err().unwrap();
        let text = e.to_string();
        assert!(matches!(e, ClientError::Connect { .. }), "{text}");
        assert!(text.contains("127.0.0.1:1, 127.0.0.1:2"), "{text}");
        assert!(text.contains("is the server running"), "{text}");
    }
}
