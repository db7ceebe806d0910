//! berth-server: wires one node together — node store, multi-raft loop,
//! cluster map, services, the native gRPC listener and the admin HTTP
//! listener — and runs it until SIGTERM/SIGINT. A node is either the first
//! of its cluster (it creates the CA and the cluster map) or joined one
//! (`--join`, [`join`]): its certificate then comes from the cluster.
//!
//! Invariants:
//! - Every listener speaks TLS with the node certificate unless the operator
//!   passed `--insecure` (which is announced loudly).
//! - Raft traffic is accepted only from a peer proving its node id: its
//!   node certificate as TLS client certificate (a node ticket only with
//!   `--insecure`).
//! - Nothing is served before the node's shards are restored; requests that
//!   arrive while the cluster map is still loading get a retryable error.
//! - One data directory is used by at most one process (an exclusive lock).
//! - A data directory belongs to a cluster once it holds an identity, which
//!   is written last; a failed join leaves none.

pub mod admin;
pub mod cdc;
pub mod identity;
pub mod join;
pub mod kafka;
pub mod kafka_sasl;
pub mod metrics;
pub mod mongo;
pub mod native;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use berth_api::v1::{
    cluster_server::ClusterServer, files_server::FilesServer, inodes_server::InodesServer,
    locks_server::LocksServer, namespace_server::NamespaceServer,
    node_admin_server::NodeAdminServer, raft_transport_server::RaftTransportServer,
    security_server::SecurityServer, streams_server::StreamsServer, tables_server::TablesServer,
    volumes_server::VolumesServer,
};
use berth_fs::Namespace;
use berth_meta::map::{NodeRecord, NodeState, META_SHARD};
use berth_meta::{Bootstrap, Meta, Router};
use berth_raft::{NodeId, RaftNode};
use berth_store::Store;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

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
    /// Interval of the TTL index sweep in ms; 0 = the default (60 s, as
    /// MongoDB's TTL monitor). Short intervals are for tests.
    pub ttl_sweep_ms: u64,
    /// Per-principal overrides of `kafka_default_stream`.
    pub kafka_principal_streams: std::collections::HashMap<String, String>,
    /// `host:port` Kafka clients are told to connect to (Kafka's advertised
    /// listener), when not this node's first advertised name and the
    /// listener's port: behind NAT, a port mapping or a proxy.
    pub kafka_advertise: Option<String>,
    /// MongoDB wire-protocol listener; `None`: none.
    pub mongo_addr: Option<SocketAddr>,
    /// `host:port` MongoDB drivers are told to connect to (recorded in the
    /// cluster map, for `berth container-run`'s `MONGODB_URI`), when not
    /// this node's first advertised name and the listener's port.
    pub mongo_advertise: Option<String>,
    /// The directory MongoDB databases are in (`<root>/db/coll`).
    pub mongo_root: String,
    /// How long table changes stay in the change log (`--change-retention`).
    pub change_retention: Duration,
    /// Topology labels of this node (`--label zone=a`), recorded in the
    /// cluster map at every start.
    pub labels: std::collections::BTreeMap<String, String>,
    /// `--join HOST:PORT --join-token T`: join that cluster on the first
    /// start (ignored once the data directory holds an identity).
    pub join: Option<join::JoinConfig>,
    /// A node silent this long is down and its replicas are re-created
    /// elsewhere (`--node-down-timeout`).
    pub node_down_timeout: Duration,
    /// Bytes per second of Raft snapshot data this node sends
    /// (`--snapshot-rate`).
    pub snapshot_rate: u64,
}

/// Default of `--change-retention`.
pub const CHANGE_RETENTION_DEFAULT: Duration = Duration::from_secs(24 * 3600);
/// How often table change logs are trimmed to their retention.
const CHANGE_TRIM_INTERVAL: Duration = Duration::from_secs(60);

/// Default of `--node-down-timeout`, as CockroachDB's
/// `server.time_until_store_dead`.
pub const NODE_DOWN_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5 * 60);
/// How often a node reports its replicas to the placement driver, which then
/// plans.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// A topology label's key and value (`--label`), as the cluster map takes
/// them.
pub fn validate_label(k: &str, v: &str) -> Result<(), berth_meta::Error> {
    berth_meta::map::validate_label(k, v)
}

/// A running node's parts, shared by the listeners.
pub struct Node {
    pub native: Arc<Native>,
    pub store: Arc<Store>,
}

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

/// `--kafka-advertise` / `--mongo-advertise` `HOST:PORT` (`[v6]:PORT`)
/// as a host and a port.
fn split_advertise(flag: &str, hp: &str) -> anyhow::Result<(String, i32)> {
    let (h, p) = hp
        .rsplit_once(':')
        .with_context(|| format!("{flag} {hp:?}: HOST:PORT"))?;
    let p: u16 = p
        .parse()
        .with_context(|| format!("{flag} {hp:?}: bad port"))?;
    Ok((h.trim_matches(['[', ']']).to_string(), i32::from(p)))
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

/// How this start of the node came about.
enum Start {
    /// An empty data directory and no `--join`: node 1 of a new cluster.
    Bootstrap,
    /// The data directory holds an identity.
    Restart(identity::Identity),
    /// The join just admitted the node; its files are written.
    Joined(identity::Identity),
}

/// What a failed join attempt must remove so the data directory does not
/// look joined, nor keep half of a join: only what the attempt created.
struct JoinCleanup {
    data_dir: PathBuf,
    data_dir_created: bool,
    lock_created: bool,
    store_created: bool,
    tls_created: bool,
    tls_files: Vec<PathBuf>,
}

impl JoinCleanup {
    fn run(self, paths: &Paths) {
        let remove = |p: &Path, dir: bool| {
            let r = if dir {
                std::fs::remove_dir_all(p)
            } else {
                std::fs::remove_file(p)
            };
            match r {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tracing::warn!(path = %p.display(), error = %e, "could not remove what the failed join created")
                }
                _ => {}
            }
        };
        if self.data_dir_created {
            remove(&self.data_dir, true);
            return;
        }
        for f in &self.tls_files {
            remove(f, false);
        }
        if self.tls_created {
            remove(&paths.tls, true);
        }
        if self.store_created {
            remove(&paths.store, true);
        }
        if self.lock_created {
            remove(&paths.lock, false);
        }
    }
}

/// Joins the cluster (`--join`): asks for admission, then writes the TLS
/// material and, last and synced, the identity. On failure removes what
/// this attempt created, so the data directory does not look joined.
async fn join_cluster(
    join: &join::JoinConfig,
    app: join::Application,
    paths: &Paths,
    mut cleanup: JoinCleanup,
) -> anyhow::Result<(Arc<Store>, identity::Identity)> {
    let joined = match join::join(join, app).await {
        Ok(j) => j,
        Err(e) => {
            cleanup.run(paths);
            return Err(e.into());
        }
    };
    let id = identity::Identity {
        node_id: joined.node_id,
        cluster_id: joined.cluster_id.clone(),
        cluster_name: joined.cluster_name.clone(),
    };
    // Named before writing, so a write that fails half-way is undone too.
    let tls = berth_security::tls::TlsPaths::in_dir(&paths.tls);
    cleanup.tls_files = vec![tls.node_key, tls.node_cert, tls.ca_cert];
    let local = (|| -> anyhow::Result<Arc<Store>> {
        berth_security::tls::write_joined(&paths.tls, &joined.material)
            .context("writing the TLS material the cluster sent")?;
        let store = Arc::new(
            Store::open(&paths.store)
                .with_context(|| format!("opening node store in {}", paths.store.display()))?,
        );
        identity::write(&store, &id, Some(&joined.peers)).context("recording the identity")?;
        Ok(store)
    })();
    match local {
        Ok(store) => {
            tracing::info!(node_id = id.node_id, cluster = %joined.cluster_name, cluster_id = %id.cluster_id, "joined the cluster");
            Ok((store, id))
        }
        Err(e) => {
            cleanup.run(paths);
            Err(e.context(format!(
                "the cluster admitted this node as node {} but it could not record that; the \
                 cluster map lists node {} as joining: join again with a new token",
                id.node_id, id.node_id
            )))
        }
    }
}

/// Runs a node until SIGINT or SIGTERM.
///
/// A data directory with an identity restarts as that node (`--join` is
/// then ignored). An empty one starts node 1 of a new cluster, or, with
/// `--join`, joins an existing cluster first. A node that holds a replica
/// of the meta shard then starts what needs the cluster map
/// ([`ClusterServices::start`]); a node that joined holds none until the
/// cluster gives it replicas, and waits.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    berth_security::tls::install_crypto_provider();
    let data_dir_created = !cfg.data_dir.exists();
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data directory {}", cfg.data_dir.display()))?;
    let paths = Paths::new(&cfg.data_dir);
    let lock_created = !paths.lock.exists();
    let _lock = lock_data_dir(&paths.lock)?;
    let mut advertise = cfg.advertise.clone();
    if advertise.is_empty() {
        advertise.push(hostname());
    }

    // Listeners first: peers can reach this node while it settles, and a
    // joining node knows the ports it tells the cluster.
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
    let mongo_listener = match cfg.mongo_addr {
        Some(a) => Some(tokio::net::TcpListener::bind(a).await.with_context(|| {
            format!("binding the MongoDB listener to {a} (use --mongo-addr, or --mongo-addr off)")
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
        (Some(_), Some(hp)) => Some(split_advertise("--kafka-advertise", hp)?),
        (Some(a), None) => Some((advertise[0].clone(), i32::from(a.port()))),
    };
    let mongo_addr = mongo_listener
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?;
    let advertised_mongo = match (mongo_addr, &cfg.mongo_advertise) {
        (None, _) => String::new(),
        (Some(_), Some(hp)) => {
            let (h, p) = split_advertise("--mongo-advertise", hp)?;
            host_port(&h, p)
        }
        (Some(a), None) => host_port(&advertise[0], i32::from(a.port())),
    };
    let advertised_native = host_port(&advertise[0], i32::from(native_addr.port()));
    let advertised_admin = host_port(&advertise[0], i32::from(admin_addr.port()));
    let advertised_kafka = kafka_advertised
        .as_ref()
        .map(|(h, p)| host_port(h, *p))
        .unwrap_or_default();

    // Who this node is.
    let existing = if paths.store.exists() {
        let store = Arc::new(
            Store::open(&paths.store)
                .with_context(|| format!("opening node store in {}", paths.store.display()))?,
        );
        let id = identity::read(&store)?;
        Some((store, id))
    } else {
        None
    };
    let (store, start) = match (existing, &cfg.join) {
        (Some((store, Some(id))), join) => {
            if join.is_some() {
                tracing::info!(node_id = id.node_id, data_dir = %cfg.data_dir.display(), "this data directory already belongs to a cluster member: --join is ignored");
            }
            (store, Start::Restart(id))
        }
        (existing, None) => {
            let store =
                match existing {
                    Some((store, _)) => store,
                    None => Arc::new(Store::open(&paths.store).with_context(|| {
                        format!("opening node store in {}", paths.store.display())
                    })?),
                };
            (store, Start::Bootstrap)
        }
        (existing, Some(join)) => {
            if cfg.insecure {
                bail!(
                    "--join needs TLS: the join token is only sent to a server that proves it \
                     holds the cluster CA; drop --insecure"
                );
            }
            if paths.tls.join("ca.key").exists() {
                bail!(
                    "{} holds a cluster CA key: it was the first node of a cluster and cannot \
                     join another; use an empty data directory to join",
                    cfg.data_dir.display()
                );
            }
            let store_created = existing.is_none();
            drop(existing);
            let cleanup = JoinCleanup {
                data_dir: cfg.data_dir.clone(),
                data_dir_created,
                lock_created,
                store_created,
                tls_created: !paths.tls.exists(),
                tls_files: Vec::new(),
            };
            let app = join::Application {
                advertise: advertise.clone(),
                native_addr: advertised_native.clone(),
                admin_addr: advertised_admin.clone(),
                kafka_addr: advertised_kafka.clone(),
                labels: cfg.labels.clone(),
                mongo_addr: advertised_mongo.clone(),
            };
            let (store, id) = join_cluster(join, app, &paths, cleanup).await?;
            (store, Start::Joined(id))
        }
    };
    let node_id: NodeId = match &start {
        Start::Bootstrap => 1,
        Start::Restart(id) | Start::Joined(id) => id.node_id,
    };
    // Node 1 created the cluster CA and issues its own certificate; a node
    // that joined got its certificate from the cluster and has no CA key.
    let bootstrap_node = node_id == 1;

    // TLS material, always (so switching --insecure off later works).
    let material = if bootstrap_node {
        berth_security::tls::ensure_ca(&paths.tls, &cfg.cluster_name)
            .context("creating the cluster CA")?;
        berth_security::tls::ensure_node_cert(
            &paths.tls,
            &berth_security::tls::node_common_name(node_id),
            &advertise,
        )
        .context("creating the node certificate")?;
        berth_security::tls::load_node(&paths.tls)?
    } else {
        berth_security::tls::load_joined(&paths.tls).context("loading the node's TLS material")?
    };
    let local_ca = if bootstrap_node {
        Some(berth_security::tls::load_ca(&paths.tls).context("reading the cluster CA")?)
    } else {
        None
    };
    let ca_sha256 = berth_security::join::ca_sha256(&material.ca_pem)
        .map_err(|e| anyhow::anyhow!("{}: {e}", paths.tls.join("ca.crt").display()))?;

    let directory = MetaDirectory::new(node_id);
    directory.remember(identity::read_peers(&store)?);
    let transport = GrpcTransport::new(
        node_id,
        directory.clone(),
        (!cfg.insecure).then(|| material.clone()),
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
    transport.set_snapshot_rate(cfg.snapshot_rate);
    let meta = Meta::new(router);
    directory.attach(meta.clone());
    if raft.has_replica(META_SHARD) {
        // Peers' addresses before the first read barrier, which needs them
        // when this node restarts as a follower.
        if let Err(e) = meta.refresh_local().await {
            tracing::warn!(error = %e, "cannot read the local copy of the cluster map");
        }
    }
    let driver = berth_meta::pd::Driver::new(
        meta.clone(),
        Arc::new(native::node_admin::GrpcShardAdmin(transport.clone())),
        placement_settings(cfg.node_down_timeout),
    );
    let ns = Namespace::new(meta.clone());
    let streams = berth_streams::Streams::new(ns.clone());
    let tables = berth_docs::table::Tables::new(ns.clone());
    let retention = streams.spawn_retention(match cfg.stream_sweep_ms {
        0 => STREAM_RETENTION_INTERVAL,
        ms => Duration::from_millis(ms),
    });
    let change_trim = tables.spawn_change_retention(CHANGE_TRIM_INTERVAL, cfg.change_retention);
    let ttl_sweep = tables.spawn_ttl_sweep(match cfg.ttl_sweep_ms {
        0 => berth_docs::ttl::TTL_INTERVAL_DEFAULT,
        ms => Duration::from_millis(ms),
    });
    let cdc_pump = cdc::Pump::new(tables.clone(), streams.clone());
    let cdc_task = cdc_pump.spawn(cdc::PUMP_INTERVAL);
    let (ready_tx, ready_rx) = tokio::sync::watch::channel(false);
    let placement = Arc::new(native::node_admin::Placement {
        driver: driver.clone(),
        meta: meta.clone(),
        transport: transport.clone(),
        down_timeout: cfg.node_down_timeout,
    });
    let native = Arc::new(Native {
        meta: meta.clone(),
        ns: ns.clone(),
        raft: raft.clone(),
        metrics: Arc::new(RequestMetrics::default()),
        node_id,
        ready: ready_rx,
        awaiting_replicas: Default::default(),
        placement: placement.clone(),
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
    // A file kept for the open handles of the client that unlinked it
    // lives on that client's renewals, as its locks do.
    ns.set_orphan_lease_ms(lease_ms);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(locks.clone().run_expiry(stop_rx.clone()));
    tokio::spawn(ns.clone().run_orphan_reaper(stop_rx.clone()));
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
            // The CA certificate goes with the node's, so a joining node that
            // knows the CA only by its fingerprint finds it. Client
            // certificates are optional: nodes present theirs on the Raft
            // stream; clients with tickets present none.
            builder = builder
                .tls_config(
                    ServerTlsConfig::new()
                        .identity(Identity::from_pem(material.chain_pem(), &material.key_pem))
                        .client_ca_root(Certificate::from_pem(&material.ca_pem))
                        .client_auth_optional(true),
                )
                .context("configuring TLS for the native API")?;
        }
        let raft_auth = if cfg.insecure {
            native::PeerAuth::Ticket(meta.clone())
        } else {
            native::PeerAuth::Certificate(Some(meta.clone()))
        };
        let router = builder
            .add_service(
                NamespaceServer::new(native::NamespaceService(native.clone()))
                    .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX),
            )
            .add_service(
                InodesServer::new(native::InodesService(native.clone()))
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
            .add_service(TablesServer::new(native::TablesService {
                native: native.clone(),
                tables: tables.clone(),
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
                auth: raft_auth.clone(),
                down_timeout: cfg.node_down_timeout,
                placement: placement.clone(),
            }))
            .add_service(
                RaftTransportServer::new(native::RaftService {
                    raft: raft.clone(),
                    auth: raft_auth,
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
            let server_cfg =
                berth_security::tls::server_config(&material.chain_pem(), &material.key_pem)
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

    let node_rec = NodeRecord {
        id: node_id,
        native_addr: advertised_native,
        admin_addr: advertised_admin,
        advertise: advertise.clone(),
        started_at: berth_security::now_secs(),
        kafka_addr: advertised_kafka,
        labels: cfg.labels.clone(),
        state: NodeState::Up,
        mongo_addr: advertised_mongo,
    };
    if let Start::Bootstrap = start {
        let meta_desc = berth_meta::map::ShardRecord::meta(vec![node_id]).desc();
        raft.create_shard(meta_desc)?;
        wait_leader(&raft, META_SHARD).await?;
        let cluster_id = random_hex(16);
        let b = Bootstrap {
            cluster_name: cfg.cluster_name.clone(),
            cluster_id: cluster_id.clone(),
            node: node_rec.clone(),
            ca: local_ca
                .clone()
                .context("the first node of a cluster holds the CA")?,
            now_secs: node_rec.started_at,
            now_ns: berth_fs::namespace::now_ns(),
        };
        settle("writing the initial cluster map", || meta.bootstrap(&b)).await?;
        // A crash before this line repeats the first start; bootstrap is
        // idempotent, and the cluster id it keeps is the map's.
        let cluster_id = meta
            .map()
            .cluster
            .as_ref()
            .map(|c| c.id.clone())
            .unwrap_or(cluster_id);
        identity::write(
            &store,
            &identity::Identity {
                node_id,
                cluster_id,
                cluster_name: cfg.cluster_name.clone(),
            },
            None,
        )?;
    }

    let services = ClusterServices {
        cfg: cfg.clone(),
        node_id,
        raft: raft.clone(),
        meta: meta.clone(),
        ns: ns.clone(),
        streams: streams.clone(),
        tables: tables.clone(),
        node_rec,
        local_ca,
        material: material.clone(),
        admin_ticket: paths.admin_ticket.clone(),
        kafka: parking_lot::Mutex::new(kafka_listener.zip(kafka_advertised)),
        kafka_addr,
        mongo: parking_lot::Mutex::new(mongo_listener),
        native_addr,
        admin_addr,
        ready: ready_tx,
        stop: stop_rx.clone(),
    };
    // Heartbeats from the start: a joined node is given its replicas (the
    // meta shard's first) by the placement driver, which knows it alive by
    // them.
    native::node_admin::spawn_heartbeats(
        driver.clone(),
        meta.clone(),
        transport.clone(),
        directory.clone(),
        paths.store.clone(),
        HEARTBEAT_INTERVAL,
    );
    let mut kafka = None;
    let mut stopped = false;
    if raft.shards().iter().any(|d| d.id == META_SHARD) {
        kafka = services.start().await?;
    } else {
        // A joined node: the cluster adds it to shards (the placement
        // runtime); until it holds a replica of the meta shard it has no
        // cluster map, serves no requests and answers Raft traffic only.
        native
            .awaiting_replicas
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let (cluster_name, cluster_id) = match &start {
            Start::Restart(id) | Start::Joined(id) => {
                (id.cluster_name.clone(), id.cluster_id.clone())
            }
            Start::Bootstrap => Default::default(),
        };
        println!("berth node {node_id} joined cluster '{cluster_name}' ({cluster_id}): waiting for the cluster to give it replicas");
        println!("  native API   {native_addr} (TLS; Raft traffic from the cluster's nodes)");
        println!("  data         {}", cfg.data_dir.display());
        tracing::info!(node_id, cluster_id, %native_addr, "waiting for the cluster to give this node replicas");
        tokio::select! {
            () = wait_for_signal() => stopped = true,
            () = wait_meta_replica(&raft) => {}
        }
        if !stopped {
            println!("berth node {node_id} holds a copy of the cluster map: starting its services");
            kafka = services.start().await?;
            native
                .awaiting_replicas
                .store(false, std::sync::atomic::Ordering::Relaxed);
            if let Err(e) = settle("marking this node up", || {
                meta.set_node_state(node_id, NodeState::Up)
            })
            .await
            {
                tracing::warn!(error = %e, "this node stays 'joining' in the cluster map");
            }
        }
    }

    if !stopped {
        wait_for_signal().await;
    }
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), grpc).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), admin).await;
    if let Some(k) = kafka {
        let _ = tokio::time::timeout(Duration::from_secs(5), k).await;
    }
    retention.abort();
    change_trim.abort();
    ttl_sweep.abort();
    cdc_task.abort();
    raft.shutdown();
    Ok(())
}

/// What a node starts once it holds a replica of the meta shard: everything
/// that needs the cluster map. Node 1 starts it at every start; a node that
/// joined starts it when the cluster gives it a meta replica (the placement
/// runtime's step, not built yet).
pub struct ClusterServices {
    cfg: Config,
    node_id: NodeId,
    raft: RaftNode,
    meta: Arc<Meta>,
    ns: Arc<Namespace>,
    streams: Arc<berth_streams::Streams>,
    tables: Arc<berth_docs::table::Tables>,
    /// This node's record as of this start (its state is the cluster's).
    node_rec: NodeRecord,
    /// The CA key of node 1, recorded in the map if the map lacks it.
    local_ca: Option<berth_security::tls::CaMaterial>,
    material: berth_security::tls::NodeMaterial,
    admin_ticket: PathBuf,
    /// The bound Kafka listener and its advertised (host, port); taken by
    /// the one successful start.
    kafka: parking_lot::Mutex<Option<(tokio::net::TcpListener, (String, i32))>>,
    kafka_addr: Option<SocketAddr>,
    /// The bound MongoDB listener; taken by the one successful start.
    mongo: parking_lot::Mutex<Option<tokio::net::TcpListener>>,
    native_addr: SocketAddr,
    admin_addr: SocketAddr,
    ready: tokio::sync::watch::Sender<bool>,
    stop: tokio::sync::watch::Receiver<bool>,
}

impl ClusterServices {
    /// Loads the cluster map and starts what needs it: the CA record (node
    /// 1 of a cluster made before table 14), the map cache and its watcher,
    /// this node's record, the node's shards, unfinished volume changes,
    /// leader hints, the default Kafka stream, the admin ticket file and
    /// the Kafka listener; then the node serves requests. Returns the Kafka
    /// listener's task. Call it once.
    pub async fn start(&self) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
        let (cfg, meta, node_id) = (&self.cfg, &self.meta, self.node_id);
        wait_leader(&self.raft, META_SHARD).await?;
        if let Some(ca) = &self.local_ca {
            if settle("recording the cluster CA", || meta.ensure_ca_record(ca)).await? {
                tracing::info!("recorded the cluster CA in the cluster map (table 14)");
            }
        }
        settle("loading the cluster map", || meta.refresh()).await?;
        settle("registering this node", || {
            meta.register_node(&self.node_rec)
        })
        .await?;
        meta.spawn_watcher();
        for s in meta
            .map()
            .shards
            .iter()
            .filter(|s| s.replicas.contains(&node_id))
        {
            wait_leader(&self.raft, s.id).await?;
        }
        settle("finishing interrupted volume changes", || {
            self.ns.reconcile()
        })
        .await?;
        settle("recording shard leaders", || meta.report_leaders()).await?;
        if cfg.kafka_addr.is_some() {
            // Where plain Kafka names live, from the first start. A path the
            // operator used for something else is reported, not fatal: plain
            // names then fail with an error naming it.
            let path = &cfg.kafka_default_stream;
            if let Err(e) = settle("creating the default Kafka stream", || {
                self.streams.ensure_default_stream(path)
            })
            .await
            {
                tracing::warn!(stream = %path, error = %e, "the default Kafka stream is not ready: plain topic and group names will fail until it exists (berth stream create {path}, or --kafka-default-stream)");
            }
        }
        if cfg.mongo_addr.is_some() {
            // Where MongoDB databases live, from the first start (as the
            // default Kafka stream).
            let root = &cfg.mongo_root;
            if let Err(e) = settle("creating the MongoDB root", || {
                self.tables.ensure_root(root)
            })
            .await
            {
                tracing::warn!(root = %root, error = %e, "the MongoDB root is not ready: databases cannot be created until it exists (berth mkdir {root}, or --mongo-root)");
            }
        }
        meta.spawn_leader_reporter(LEADER_REPORT_INTERVAL);

        // The admin ticket in the data directory (single-node convenience).
        let now = berth_security::now_secs();
        let ticket_valid = std::fs::read_to_string(&self.admin_ticket)
            .ok()
            .and_then(|t| meta.authenticate(t.trim()).ok().map(|_| t))
            .and_then(|t| berth_security::ticket::decode_unverified(t.trim()).ok())
            .is_some_and(|b| b.expires_at > now + ADMIN_TICKET_RENEW_SECS);
        if !ticket_valid {
            let (ticket, _) = meta.sign_for("admin", None, ADMIN_TICKET_TTL_SECS)?;
            write_private(&self.admin_ticket, &format!("{ticket}\n"))?;
        }

        // Metadata names the brokers and the partitions' leaders from the
        // cluster map, so Kafka clients are served only once it is known.
        let kafka = match self.kafka.lock().take() {
            Some((listener, (advertised_host, advertised_port))) => {
                let tls = if cfg.insecure {
                    None
                } else {
                    Some(
                        berth_security::tls::server_config(
                            &self.material.chain_pem(),
                            &self.material.key_pem,
                        )
                        .context("configuring TLS for the Kafka listener")?,
                    )
                };
                let backend = Arc::new(kafka::StreamsBackend::new(
                    self.streams.clone(),
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
                let mut stop = self.stop.clone();
                Some(tokio::spawn(async move {
                    let shutdown = async move {
                        let _ = stop.wait_for(|s| *s).await;
                    };
                    if let Err(e) = berth_kafka::serve(listener, tls, backend, kcfg, shutdown).await
                    {
                        tracing::error!(error = %e, "the Kafka listener stopped");
                    }
                }))
            }
            None => None,
        };

        let mongo_addr = self.start_mongo()?;

        let _ = self.ready.send(true);
        let cluster = meta.map().cluster_name().to_string();
        let scheme = if cfg.insecure { "plaintext" } else { "TLS" };
        println!("berth node {node_id} of cluster '{cluster}' is serving");
        println!("  native API   {} ({scheme})", self.native_addr);
        println!(
            "  admin HTTP   {} ({scheme}: /health, /metrics)",
            self.admin_addr
        );
        if let Some(a) = self.kafka_addr {
            println!(
                "  kafka        {a} ({scheme}, SASL PLAIN, SCRAM-SHA-256/512, OAUTHBEARER; plain topic names in {})",
                cfg.kafka_default_stream
            );
        }
        if let Some(a) = mongo_addr {
            println!(
                "  mongodb      {a} ({scheme}, SCRAM-SHA-256 or PLAIN with a ticket; databases in {})",
                cfg.mongo_root
            );
        }
        println!("  data         {}", cfg.data_dir.display());
        println!(
            "  cluster CA   {}",
            cfg.data_dir.join("tls").join("ca.crt").display()
        );
        println!("  admin ticket {}", self.admin_ticket.display());
        if cfg.insecure {
            println!("WARNING: --insecure: listeners accept plaintext connections. Use only for local development.");
        }
        println!("next: berth ls /    (from the directory holding ./berth-data, or set BERTH_TICKET_FILE and BERTH_CA_FILE)");
        tracing::info!(node_id, native_addr = %self.native_addr, admin_addr = %self.admin_addr, "serving");
        Ok(kafka)
    }
}

impl ClusterServices {
    /// Serves the MongoDB wire protocol on the bound listener (once),
    /// returning its address.
    fn start_mongo(&self) -> anyhow::Result<Option<SocketAddr>> {
        let Some(listener) = self.mongo.lock().take() else {
            return Ok(None);
        };
        let addr = listener.local_addr()?;
        let tls = if self.cfg.insecure {
            None
        } else {
            Some(
                berth_security::tls::server_config(
                    &self.material.chain_pem(),
                    &self.material.key_pem,
                )
                .context("configuring TLS for the MongoDB listener")?,
            )
        };
        let backend = Arc::new(mongo::TablesBackend::new(
            self.tables.clone(),
            self.meta.clone(),
            self.cfg.mongo_root.clone(),
        ));
        let host = match self.cfg.advertise.first() {
            Some(h) => host_port(h, i32::from(addr.port())),
            None => addr.to_string(),
        };
        let mcfg = berth_mongo::MongoConfig {
            host,
            ..Default::default()
        };
        let mut stop = self.stop.clone();
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = berth_mongo::serve(listener, tls, backend, mcfg, shutdown).await {
                tracing::error!(error = %e, "the MongoDB listener stopped");
            }
        });
        Ok(Some(addr))
    }
}

/// Waits until this node holds an initialized replica of the meta shard (the
/// placement driver added it and its first snapshot arrived) that knows its
/// leader.
async fn wait_meta_replica(raft: &RaftNode) {
    loop {
        let ready = raft.status().iter().any(|s| {
            s.id == META_SHARD && s.membership.contains(raft.node_id()) && s.leader.is_some()
        });
        if ready {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
