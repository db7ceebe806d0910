//! berth-server: wires one node together — node store, multi-raft loop,
//! cluster map, services, the native gRPC listener and the admin HTTP
//! listener — and runs it until SIGTERM/SIGINT.
//!
//! Invariants:
//! - Every listener speaks TLS with the node certificate unless the operator
//!   passed `--insecure` (which is announced loudly).
//! - Nothing is served before the node's shards are restored; requests that
//!   arrive while the cluster map is still loading get a retryable error.
//! - One data directory is used by at most one process (an exclusive lock).

pub mod admin;
pub mod kafka;
pub mod kafka_sasl;
pub mod metrics;
pub mod native;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use berth_api::v1::{
    cluster_server::ClusterServer, files_server::FilesServer, locks_server::LocksServer,
    namespace_server::NamespaceServer, node_admin_server::NodeAdminServer,
    raft_transport_server::RaftTransportServer, security_server::SecurityServer,
    streams_server::StreamsServer, volumes_server::VolumesServer,
};
use berth_fs::Namespace;
use berth_meta::map::{NodeRecord, META_SHARD};
use berth_meta::{Bootstrap, Meta, Router};
use berth_raft::RaftNode;
use berth_store::{Durability, Space, Store};
use tonic::transport::{Identity, Server, ServerTlsConfig};

use crate::metrics::RequestMetrics;
use crate::native::{GrpcTransport, MetaDirectory, Native};

/// Largest gRPC message accepted or sent by the native listener.
pub const GRPC_MESSAGE_BYTES_MAX: usize = 64 << 20;
/// Validity of the admin ticket written into the data directory.
const ADMIN_TICKET_TTL_SECS: u64 = 365 * 24 * 3600;
/// The admin ticket file is rewritten when less than this is left.
const ADMIN_TICKET_RENEW_SECS: u64 = 30 * 24 * 3600;
/// How often stream partitions are trimmed to their retention or compacted
/// (unless `Config::stream_sweep_ms` says otherwise).
const STREAM_RETENTION_INTERVAL: Duration = Duration::from_secs(60);
/// How often a node records the shards it leads in the cluster map.
const LEADER_REPORT_INTERVAL: Duration = Duration::from_secs(5);
/// Longest wait for the node's shards to elect leaders at startup.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Everything `berth server` is configured with.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub native_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// Host names / addresses other nodes and clients use for this node.
    pub advertise: Vec<String>,
    /// Cluster name, used on first start only.
    pub cluster_name: String,
    /// Serve without TLS (local development only).
    pub insecure: bool,
    /// Lease of advisory-lock sessions in ms; 0 = the default (30 s).
    /// Short leases are for tests: a dead client's locks go sooner.
    pub lock_lease_ms: u64,
    /// Kafka listener; `None`: no Kafka listener.
    pub kafka_addr: Option<SocketAddr>,
    /// The stream plain Kafka topic names live in.
    pub kafka_default_stream: String,
    /// Interval of the stream retention / compaction sweep in ms; 0 = the
    /// default (60 s). Short intervals are for tests.
    pub stream_sweep_ms: u64,
    /// Per-principal overrides of `kafka_default_stream`.
    pub kafka_principal_streams: std::collections::HashMap<String, String>,
    /// `host:port` Kafka clients are told to connect to (Kafka's advertised
    /// listener), when not this node's first advertised name and the
    /// listener's port: behind NAT, a port mapping or a proxy.
    pub kafka_advertise: Option<String>,
    /// Topology labels of this node (`--label zone=a`), recorded in the
    /// cluster map at every start.
    pub labels: std::collections::BTreeMap<String, String>,
    /// A node silent this long is down and its replicas are re-created
    /// elsewhere (`--node-down-timeout`).
    pub node_down_timeout: Duration,
}

/// Default of `--node-down-timeout`, as CockroachDB's
/// `server.time_until_store_dead`.
pub const NODE_DOWN_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5 * 60);
/// How often a node reports its replicas to the placement driver, which then
/// plans.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// A running node's parts, shared by the listeners.
pub struct Node {
    pub native: Arc<Native>,
    pub store: Arc<Store>,
}

/// This node's identity, kept in the store's local space.
const LOCAL_IDENTITY_KEY: &[u8] = b"node-identity";

struct Paths {
    store: PathBuf,
    tls: PathBuf,
    admin_ticket: PathBuf,
    lock: PathBuf,
}

impl Paths {
    fn new(data: &Path) -> Paths {
        Paths {
            store: data.join("store"),
            tls: data.join("tls"),
            admin_ticket: data.join("admin.ticket"),
            lock: data.join("LOCK"),
        }
    }
}

/// Takes an exclusive lock on the data directory for the life of the process.
fn lock_data_dir(path: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::io::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a file descriptor we own; no memory is shared.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        bail!(
            "data directory {} is in use by another berth server (lock {} held)",
            path.parent().unwrap_or(path).display(),
            path.display()
        );
    }
    Ok(f)
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// `HOST:PORT`, with an IPv6 literal in brackets.
fn host_port(host: &str, port: i32) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

async fn wait_leader(raft: &RaftNode, shard: u64) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
    while raft.leader(shard).is_none() {
        if tokio::time::Instant::now() > deadline {
            bail!("shard {shard} elected no leader within {STARTUP_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Retries a startup step that may fail transiently while leaders settle.
async fn settle<T, F, Fut>(what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, berth_meta::Error>>,
{
    let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if e.code.is_retryable() && tokio::time::Instant::now() < deadline => {
                tracing::debug!(what, error = %e, "retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => bail!("{what}: {e}"),
        }
    }
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// Runs a node until SIGINT or SIGTERM.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    berth_security::tls::install_crypto_provider();
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data directory {}", cfg.data_dir.display()))?;
    let paths = Paths::new(&cfg.data_dir);
    let _lock = lock_data_dir(&paths.lock)?;
    let store = Arc::new(
        Store::open(&paths.store)
            .with_context(|| format!("opening node store in {}", paths.store.display()))?,
    );

    // Identity: node 1 of a new cluster on first start. (Joining an existing
    // cluster arrives with scale-out.)
    let first_start = store.get(Space::Local, LOCAL_IDENTITY_KEY)?.is_none();
    let node_id: u64 = 1;

    // TLS material, always created (so switching --insecure off later works).
    let mut advertise = cfg.advertise.clone();
    if advertise.is_empty() {
        advertise.push(hostname());
    }
    berth_security::tls::ensure_ca(&paths.tls, &cfg.cluster_name)
        .context("creating the cluster CA")?;
    let tls =
        berth_security::tls::ensure_node_cert(&paths.tls, &format!("node-{node_id}"), &advertise)
            .context("creating the node certificate")?;
    let ca_pem = berth_security::tls::load_pem(&tls.ca_cert)?;
    let ca_sha256 = berth_security::join::ca_sha256(&ca_pem)
        .map_err(|e| anyhow::anyhow!("{}: {e}", tls.ca_cert.display()))?;
    let cert_pem = berth_security::tls::load_pem(&tls.node_cert)?;
    let key_pem = berth_security::tls::load_pem(&tls.node_key)?;

    let directory = MetaDirectory::new(node_id);
    let transport = GrpcTransport::new(
        node_id,
        directory.clone(),
        (!cfg.insecure).then(|| ca_pem.clone()),
        tokio::runtime::Handle::current(),
    );
    let raft = RaftNode::start(
        store.clone(),
        berth_raft::Config::new(node_id),
        transport.clone(),
    )
    .context("starting the multi-raft loop")?;
    let router = Arc::new(Router::new(raft.clone(), node_id));
    router.set_forwarder(transport.clone());
    let meta = Meta::new(router);
    let driver = berth_meta::pd::Driver::new(
        meta.clone(),
        Arc::new(native::node_admin::GrpcShardAdmin(transport.clone())),
        placement_settings(cfg.node_down_timeout),
    );
    directory.attach(meta.clone());
    let ns = Namespace::new(meta.clone());
    let streams = berth_streams::Streams::new(ns.clone());
    let retention = streams.spawn_retention(match cfg.stream_sweep_ms {
        0 => STREAM_RETENTION_INTERVAL,
        ms => Duration::from_millis(ms),
    });
    let (ready_tx, ready_rx) = tokio::sync::watch::channel(false);
    let native = Arc::new(Native {
        meta: meta.clone(),
        ns: ns.clone(),
        raft: raft.clone(),
        metrics: Arc::new(RequestMetrics::default()),
        node_id,
        ready: ready_rx,
    });
    let node = Arc::new(Node {
        native: native.clone(),
        store: store.clone(),
    });
    let lease_ms = match cfg.lock_lease_ms {
        0 => berth_fs::locks::LEASE_MS_DEFAULT,
        ms => ms,
    };
    let locks = berth_fs::locks::LockService::new(meta.clone(), lease_ms, rand::random());

    // Listeners first, so peers can reach this node while it settles.
    let native_listener = tokio::net::TcpListener::bind(cfg.native_addr)
        .await
        .with_context(|| {
            format!(
                "binding the native API to {} (use --native-addr)",
                cfg.native_addr
            )
        })?;
    let admin_listener = tokio::net::TcpListener::bind(cfg.admin_addr)
        .await
        .with_context(|| {
            format!(
                "binding the admin listener to {} (use --admin-addr)",
                cfg.admin_addr
            )
        })?;
    let kafka_listener =
        match cfg.kafka_addr {
            Some(a) => Some(tokio::net::TcpListener::bind(a).await.with_context(|| {
                format!("binding the Kafka listener to {a} (use --kafka-addr)")
            })?),
            None => None,
        };
    let native_addr = native_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    let kafka_addr = kafka_listener
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?;
    // What Kafka clients are told to connect to (Metadata, and the node's
    // record in the cluster map).
    let kafka_advertised = match (kafka_addr, &cfg.kafka_advertise) {
        (None, _) => None,
        (Some(_), Some(hp)) => {
            let (h, p) = hp
                .rsplit_once(':')
                .with_context(|| format!("--kafka-advertise {hp:?}: HOST:PORT"))?;
            let p: u16 = p
                .parse()
                .with_context(|| format!("--kafka-advertise {hp:?}: bad port"))?;
            Some((h.trim_matches(['[', ']']).to_string(), i32::from(p)))
        }
        (Some(a), None) => Some((advertise[0].clone(), i32::from(a.port()))),
    };

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(locks.clone().run_expiry(stop_rx.clone()));
    let grpc = {
        // File data moves in 1 MiB messages, several in flight per
        // connection: h2's defaults (1 MiB windows, 16 KiB frames) made a
        // write wait for window updates mid-message and cut every MiB into
        // 64 frames.
        let mut builder = Server::builder()
            .initial_stream_window_size(berth_api::H2_STREAM_WINDOW)
            .initial_connection_window_size(berth_api::H2_CONNECTION_WINDOW)
            .max_frame_size(berth_api::H2_FRAME_BYTES);
        if !cfg.insecure {
            builder = builder
                .tls_config(
                    ServerTlsConfig::new().identity(Identity::from_pem(&cert_pem, &key_pem)),
                )
                .context("configuring TLS for the native API")?;
        }
        let router = builder
            .add_service(
                NamespaceServer::new(native::NamespaceService(native.clone()))
                    .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX),
            )
            .add_service(
                FilesServer::new(native::FilesService(native.clone()))
                    .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
                    .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX),
            )
            .add_service(VolumesServer::new(native::VolumesService(native.clone())))
            .add_service(StreamsServer::new(native::StreamsService {
                native: native.clone(),
                streams: streams.clone(),
            }))
            .add_service(SecurityServer::new(native::SecurityService(native.clone())))
            .add_service(ClusterServer::new(native::ClusterService(
                native.clone(),
                ca_sha256,
            )))
            .add_service(LocksServer::new(native::LocksService {
                native: native.clone(),
                locks: locks.clone(),
            }))
            .add_service(NodeAdminServer::new(native::node_admin::NodeAdminService {
                raft: raft.clone(),
                meta: meta.clone(),
                driver: driver.clone(),
                auth: meta.clone(),
            }))
            .add_service(
                RaftTransportServer::new(native::RaftService {
                    raft: raft.clone(),
                    auth: meta.clone(),
                })
                .max_decoding_message_size(native::RAFT_BATCH_BYTES_MAX),
            );
        // Without TCP_NODELAY a response's trailers wait for the peer's
        // delayed ACK (~40 ms per call): every accepted socket gets it.
        let incoming = tokio_stream::StreamExt::map(
            tokio_stream::wrappers::TcpListenerStream::new(native_listener),
            |conn| {
                conn.inspect(|s| {
                    if let Err(e) = s.set_nodelay(true) {
                        tracing::warn!(error = %e, "could not set TCP_NODELAY");
                    }
                })
            },
        );
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        })
    };
    let admin = {
        let app = admin::router(node.clone());
        let mut stop = stop_rx.clone();
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if cfg.insecure {
            tokio::spawn(async move {
                axum::serve(admin_listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await
            })
        } else {
            let server_cfg = berth_security::tls::server_config(&cert_pem, &key_pem)
                .context("configuring TLS for the admin listener")?;
            let listener = admin::TlsListener {
                tcp: admin_listener,
                acceptor: tokio_rustls::TlsAcceptor::from(server_cfg),
            };
            tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await
            })
        }
    };

    // Shards and the cluster map.
    let meta_desc = berth_meta::map::ShardRecord::meta(vec![node_id]).desc();
    if first_start {
        raft.create_shard(meta_desc)?;
    }
    wait_leader(&raft, META_SHARD).await?;
    let now = berth_security::now_secs();
    let node_rec = NodeRecord {
        id: node_id,
        native_addr: format!("{}:{}", advertise[0], native_addr.port()),
        admin_addr: format!("{}:{}", advertise[0], admin_addr.port()),
        advertise: advertise.clone(),
        started_at: now,
        kafka_addr: kafka_advertised
            .as_ref()
            .map(|(h, p)| host_port(h, *p))
            .unwrap_or_default(),
        labels: cfg.labels.clone(),
    };
    if first_start {
        let b = Bootstrap {
            cluster_name: cfg.cluster_name.clone(),
            cluster_id: random_hex(16),
            node: node_rec.clone(),
            now_secs: now,
            now_ns: berth_fs::namespace::now_ns(),
        };
        settle("writing the initial cluster map", || meta.bootstrap(&b)).await?;
        let mut batch = store.batch();
        batch.put(Space::Local, LOCAL_IDENTITY_KEY, &node_id.to_be_bytes());
        store.write(batch, Durability::Sync)?;
    }
    settle("loading the cluster map", || meta.refresh()).await?;
    settle("registering this node", || meta.register_node(&node_rec)).await?;
    meta.spawn_watcher();
    for s in meta
        .map()
        .shards
        .iter()
        .filter(|s| s.replicas.contains(&node_id))
    {
        wait_leader(&raft, s.id).await?;
    }
    settle("finishing interrupted volume changes", || ns.reconcile()).await?;
    settle("recording shard leaders", || meta.report_leaders()).await?;
    if cfg.kafka_addr.is_some() {
        // Where plain Kafka names live, from the first start. A path the
        // operator used for something else is reported, not fatal: plain
        // names then fail with an error naming it.
        let path = &cfg.kafka_default_stream;
        if let Err(e) = settle("creating the default Kafka stream", || {
            streams.ensure_default_stream(path)
        })
        .await
        {
            tracing::warn!(stream = %path, error = %e, "the default Kafka stream is not ready: plain topic and group names will fail until it exists (berth stream create {path}, or --kafka-default-stream)");
        }
    }
    meta.spawn_leader_reporter(LEADER_REPORT_INTERVAL);
    native::node_admin::spawn_heartbeats(
        driver.clone(),
        meta.clone(),
        transport.clone(),
        HEARTBEAT_INTERVAL,
    );

    // The admin ticket in the data directory (single-node convenience).
    let ticket_valid = std::fs::read_to_string(&paths.admin_ticket)
        .ok()
        .and_then(|t| meta.authenticate(t.trim()).ok().map(|_| t))
        .and_then(|t| berth_security::ticket::decode_unverified(t.trim()).ok())
        .is_some_and(|b| b.expires_at > now + ADMIN_TICKET_RENEW_SECS);
    if !ticket_valid {
        let (ticket, _) = meta.sign_for("admin", None, ADMIN_TICKET_TTL_SECS)?;
        write_private(&paths.admin_ticket, &format!("{ticket}\n"))?;
    }

    // Kafka clients are told this node's address in Metadata, so they
    // connect only once the cluster map is known.
    let kafka = match (kafka_listener, kafka_advertised) {
        (Some(listener), Some((advertised_host, advertised_port))) => {
            let tls = if cfg.insecure {
                None
            } else {
                Some(
                    berth_security::tls::server_config(&cert_pem, &key_pem)
                        .context("configuring TLS for the Kafka listener")?,
                )
            };
            let backend = Arc::new(kafka::StreamsBackend::new(
                streams.clone(),
                meta.clone(),
                cfg.kafka_default_stream.clone(),
                cfg.kafka_principal_streams.clone(),
            ));
            let kcfg = berth_kafka::KafkaConfig {
                node_id: i32::try_from(node_id).unwrap_or(i32::MAX),
                advertised_host,
                advertised_port,
                cluster_id: meta.map().cluster_name().to_string(),
                ..Default::default()
            };
            let mut stop = stop_rx.clone();
            Some(tokio::spawn(async move {
                let shutdown = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                if let Err(e) = berth_kafka::serve(listener, tls, backend, kcfg, shutdown).await {
                    tracing::error!(error = %e, "the Kafka listener stopped");
                }
            }))
        }
        _ => None,
    };

    let _ = ready_tx.send(true);
    let cluster = meta.map().cluster_name().to_string();
    let scheme = if cfg.insecure { "plaintext" } else { "TLS" };
    println!("berth node {node_id} of cluster '{cluster}' is serving");
    println!("  native API   {native_addr} ({scheme})");
    println!("  admin HTTP   {admin_addr} ({scheme}: /health, /metrics)");
    if let Some(a) = kafka_addr {
        println!(
            "  kafka        {a} ({}, SASL PLAIN, SCRAM-SHA-256/512, OAUTHBEARER; plain topic names in {})",
            if cfg.insecure { "plaintext" } else { "TLS" },
            cfg.kafka_default_stream
        );
    }
    println!("  data         {}", cfg.data_dir.display());
    println!("  cluster CA   {}", tls.ca_cert.display());
    println!("  admin ticket {}", paths.admin_ticket.display());
    if cfg.insecure {
        println!("WARNING: --insecure: listeners accept plaintext connections. Use only for local development.");
    }
    println!("next: berth ls /    (from the directory holding ./berth-data, or set BERTH_TICKET_FILE and BERTH_CA_FILE)");
    tracing::info!(node_id, %native_addr, %admin_addr, "serving");

    wait_for_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), grpc).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), admin).await;
    if let Some(k) = kafka {
        let _ = tokio::time::timeout(Duration::from_secs(5), k).await;
    }
    retention.abort();
    raft.shutdown();
    Ok(())
}

/// The placement driver's settings: a node is suspect (gets no new replicas) after a tenth
/// of the down timeout, at most 30 s.
fn placement_settings(down: Duration) -> berth_meta::placement::Settings {
    let down_ms = u64::try_from(down.as_millis()).unwrap_or(u64::MAX).max(1);
    berth_meta::placement::Settings {
        down_after_ms: down_ms,
        suspect_after_ms: (down_ms / 10).clamp(1, 30_000),
        ..berth_meta::placement::Settings::default()
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::host_port;

    #[test]
    fn host_port_brackets_ipv6() {
        assert_eq!(host_port("10.0.0.1", 9092), "10.0.0.1:9092");
        assert_eq!(
            host_port("kafka.example.com", 9093),
            "kafka.example.com:9093"
        );
        assert_eq!(host_port("fd00::1", 9092), "[fd00::1]:9092");
    }
}
