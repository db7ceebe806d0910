//! The Kafka wire-protocol gateway of Berth: lets Kafka clients (librdkafka,
//! the Java client, kafka-python, ...) produce to and fetch from Berth
//! streams. It owns the listener and its connections, the framing, the SASL
//! exchange, the table of served API versions (`api`), the translation of
//! each request into [`Backend`] calls (`handlers`) and the one table from
//! [`StreamError`] to Kafka error codes (`codes`), and the consumer-group
//! coordinator (`group`, with its request handlers in `group_handlers`).
//!
//! Each node of a cluster runs one gateway: one broker of several. The
//! backend says which brokers exist ([`Backend::brokers`]) and who leads
//! what: Metadata names each partition's leader as the backend places it
//! ([`TopicInfo::placement`]; LEADER_NOT_AVAILABLE while there is none,
//! or it is not a listed broker), FindCoordinator the broker coordinating
//! the group ([`Backend::authorize_group`]). Produce, Fetch and ListOffsets
//! sent to another broker get NOT_LEADER_OR_FOLLOWER per partition (the
//! backend answers [`StreamError::NotLeader`]), the group APIs
//! NOT_COORDINATOR: clients refresh their metadata and go to the leader.
//!
//! Invariants:
//! - *SASL before anything*: until SASL (PLAIN, SCRAM-SHA-256/512 or
//!   OAUTHBEARER) succeeds, a connection may send only ApiVersions,
//!   SaslHandshake and SaslAuthenticate (or bare tokens after SaslHandshake
//!   v0); anything else closes it, as Kafka does (ILLEGAL_SASL_STATE). A
//!   failed exchange answers SASL_AUTHENTICATION_FAILED and closes. The
//!   principal the backend returns ([`Backend::authenticate_plain`],
//!   [`Backend::scram_principal`], [`Backend::authenticate_token`]) goes
//!   with every later call. SCRAM runs `berth_security::scram` (shared with
//!   other gateways) against [`Backend::scram_credential`]; an unknown user
//!   gets a fake credential and fails exactly like a wrong password.
//! - *Translate, never decide*: the gateway holds no data and takes no
//!   access decision; record batches go to the backend and come back as
//!   the producer sent them (never decompressed or rewritten here).
//! - *Responses in request order*: one connection's requests are served one
//!   after another, so answers leave in the order Kafka requires. A
//!   JoinGroup (until the rebalance completes) or a follower's SyncGroup
//!   (until the leader's) holds its own connection only, as in Kafka;
//!   clients use a separate coordinator connection for group calls.
//! - *Group membership is in memory, offsets are not*: one coordinator per
//!   gateway, shared by its connections, keeps members, generations and
//!   assignments (Kafka's classic protocol, `group`) of the groups this
//!   broker coordinates; committed offsets go to the backend and are
//!   durable. After a gateway restart, or when a group's coordinator moves
//!   to another broker, the members' heartbeats and commits get
//!   NOT_COORDINATOR, UNKNOWN_MEMBER_ID or ILLEGAL_GENERATION and the
//!   clients rejoin where the group is coordinated now; a broker that finds
//!   a group coordinated elsewhere (on a request, or every
//!   [`COORDINATION_CHECK_MS`] through [`Backend::coordinates`]) drops it
//!   and answers its waiting members NOT_COORDINATOR. ListGroups shows only
//!   groups with members here. Every group API asks
//!   [`Backend::authorize_group`] first.
//! - *One log line per closed connection*: a connection closed for a bad
//!   TLS handshake, an oversized or malformed frame, an unsupported request,
//!   a SASL failure or an I/O error gets exactly one `warn!` naming the peer
//!   and the reason; every other connection keeps being served. Input never
//!   panics the gateway; if a bug does, only that connection's task dies
//!   (and is logged the same way).
//! - *Bounded*: frames by [`KafkaConfig::max_request_bytes`] (memory grows
//!   with what arrives, not with what is announced), idle connections by
//!   `conn::IDLE_MS_MAX`, a response write by `conn::WRITE_MS_MAX`, a Fetch
//!   long poll by `handlers::FETCH_WAIT_MS_MAX`, a JoinGroup or SyncGroup
//!   wait by the group's rebalance timeout (at most
//!   `group::REBALANCE_TIMEOUT_MS_MAX`), groups and members by
//!   `group::GROUPS_MAX` and `group::MEMBERS_MAX`, shutdown by
//!   [`SHUTDOWN_GRACE_MS`].
//!
//! Served now: ApiVersions, SASL, Metadata, Produce, Fetch, ListOffsets,
//! CreateTopics, DeleteTopics, CreatePartitions, DescribeConfigs (topics),
//! the classic consumer-group protocol (FindCoordinator, JoinGroup,
//! SyncGroup, Heartbeat, LeaveGroup, OffsetCommit, OffsetFetch,
//! DescribeGroups, ListGroups) and InitProducerId for idempotent producers
//! (versions in `api`). Not offered: transactions (a transactional id gets
//! TRANSACTIONAL_ID_AUTHORIZATION_FAILED, FindCoordinator for transactions
//! COORDINATOR_NOT_AVAILABLE), the KIP-848 consumer protocol, Kafka's
//! initial rebalance delay, fetch sessions (every fetch is a full one),
//! Fetch v13+ (topic ids), OffsetForLeaderEpoch (clients then skip the
//! offset validation they do when the leader epoch grows), fetching from
//! followers. Static members (`group.instance.id`) are
//! accepted, but a restarted one triggers a rebalance like a new member.
//! Every request body passes `guard` before kafka-protocol decodes it:
//! that codec sizes arrays from the count on the wire before reading them,
//! and a failed huge allocation aborts the process.

pub mod backend;

mod api;
mod codes;
mod conn;
mod frame;
mod group;
mod group_handlers;
mod guard;
mod handlers;
mod sasl;

/// What the fuzz targets in `fuzz/` drive: the decoding path of request
/// frames and SASL tokens, exactly as a connection runs it (not an API; may
/// change with them).
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::conn::{read_head, Close, Head, Req};
    pub use crate::guard::check as guard_check;
    pub use crate::sasl::{parse_oauthbearer, parse_plain, TOKEN_BYTES_MAX};
}

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

pub use backend::{
    Appended, Backend, Broker, BrokerId, Committed, Fetched, GroupRef, OffsetSpec,
    PartitionOffsets, Placement, ProduceWait, ProducerId, ScramCredential, ScramMechanism,
    StreamError, TopicInfo, TopicRef,
};
pub use group::{SESSION_TIMEOUT_MS_MAX_DEFAULT, SESSION_TIMEOUT_MS_MIN_DEFAULT};

/// Default bound on one request frame (Kafka's `socket.request.max.bytes`).
pub const MAX_REQUEST_BYTES_DEFAULT: usize = 100 * 1024 * 1024;
/// Bound on the TLS handshake of a new connection.
pub const TLS_HANDSHAKE_MS_MAX: u64 = 10_000;
/// After shutdown, how long connections may finish the request in hand.
pub const SHUTDOWN_GRACE_MS: u64 = 5_000;
/// How often the coordinator checks that it still coordinates its groups.
pub const COORDINATION_CHECK_MS: u64 = 1_000;
/// Pause after a failed accept (e.g. out of file descriptors).
const ACCEPT_RETRY_MS: u64 = 100;

/// How the gateway presents itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// This broker's id (for Berth, the node id).
    pub node_id: i32,
    /// Host and port clients are told to connect to this broker at.
    pub advertised_host: String,
    pub advertised_port: i32,
    pub cluster_id: String,
    /// Largest request frame accepted; a larger one closes the connection.
    pub max_request_bytes: usize,
    /// Session timeouts a group member may ask for (Kafka's
    /// `group.min.session.timeout.ms` / `group.max.session.timeout.ms`);
    /// outside them JoinGroup gets INVALID_SESSION_TIMEOUT.
    pub group_session_timeout_ms_min: u64,
    pub group_session_timeout_ms_max: u64,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            node_id: 0,
            advertised_host: "localhost".into(),
            advertised_port: 9092,
            cluster_id: "berth".into(),
            max_request_bytes: MAX_REQUEST_BYTES_DEFAULT,
            group_session_timeout_ms_min: SESSION_TIMEOUT_MS_MIN_DEFAULT,
            group_session_timeout_ms_max: SESSION_TIMEOUT_MS_MAX_DEFAULT,
        }
    }
}

/// Serves Kafka clients on `listener` until `shutdown` resolves, one task
/// per connection; TLS when `tls` is given, plaintext otherwise (a
/// development mode that the caller chooses). After `shutdown`, no new
/// connection is accepted, open ones end after the request in hand, and
/// those still busy after [`SHUTDOWN_GRACE_MS`] are dropped.
pub async fn serve<B: Backend>(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    backend: Arc<B>,
    cfg: KafkaConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let groups = Arc::new(group::Coordinator::new(group::Limits {
        session_timeout_ms_min: cfg.group_session_timeout_ms_min,
        session_timeout_ms_max: cfg.group_session_timeout_ms_max,
    }));
    let sweeper = tokio::spawn(sweep(Arc::downgrade(&groups), backend.clone()));
    let cfg = Arc::new(cfg);
    let acceptor = tls.map(TlsAcceptor::from);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let mut peers: HashMap<tokio::task::Id, SocketAddr> = HashMap::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let task = connection(
                        stream,
                        peer,
                        acceptor.clone(),
                        backend.clone(),
                        cfg.clone(),
                        groups.clone(),
                        stop_rx.clone(),
                    );
                    let handle = conns.spawn(task);
                    peers.insert(handle.id(), peer);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "kafka: accept failed");
                    tokio::time::sleep(Duration::from_millis(ACCEPT_RETRY_MS)).await;
                }
            },
            Some(done) = conns.join_next_with_id(), if !conns.is_empty() => {
                reap(done, &mut peers);
            }
        }
    }
    let _ = stop_tx.send(true);
    let grace = Duration::from_millis(SHUTDOWN_GRACE_MS);
    let drained = tokio::time::timeout(grace, async {
        while let Some(done) = conns.join_next_with_id().await {
            reap(done, &mut peers);
        }
    })
    .await;
    if drained.is_err() {
        tracing::info!(
            connections = conns.len(),
            "kafka: dropping connections still busy after shutdown"
        );
        conns.shutdown().await;
    }
    sweeper.abort();
    Ok(())
}

/// Runs the group coordinator's timers (session expiry, rebalance and sync
/// deadlines) every `group::SWEEP_MS`, and every [`COORDINATION_CHECK_MS`]
/// drops the groups whose coordinator moved to another broker
/// ([`Backend::coordinates`]), until the gateway is gone.
async fn sweep<B: Backend>(groups: std::sync::Weak<group::Coordinator>, backend: Arc<B>) {
    let mut tick = tokio::time::interval(Duration::from_millis(group::SWEEP_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_check = tokio::time::Instant::now();
    loop {
        let now = tick.tick().await;
        let Some(groups) = groups.upgrade() else {
            return;
        };
        groups.sweep(now);
        if now.duration_since(last_check) >= Duration::from_millis(COORDINATION_CHECK_MS) {
            last_check = now;
            // Asked outside the coordinator's lock: the backend has its own.
            for listed in groups.list() {
                if !backend.coordinates(&listed.group) {
                    groups.unload(&listed.group);
                }
            }
        }
    }
}

/// Logs a connection task that died instead of returning (a bug: input
/// should never panic the gateway).
fn reap(
    done: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
    peers: &mut HashMap<tokio::task::Id, SocketAddr>,
) {
    match done {
        Ok((id, ())) => {
            peers.remove(&id);
        }
        Err(e) => {
            let peer = peers.remove(&e.id());
            if e.is_panic() {
                tracing::warn!(?peer, "kafka connection closed: internal panic");
            }
        }
    }
}

/// One connection, from TLS handshake to close; logs why it closed.
async fn connection<B: Backend>(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: Option<TlsAcceptor>,
    backend: Arc<B>,
    cfg: Arc<KafkaConfig>,
    groups: Arc<group::Coordinator>,
    stop: watch::Receiver<bool>,
) {
    // Kafka reports client hosts as `/address`.
    let client_host = format!("/{}", peer.ip());
    // Requests and answers are small and latency-bound.
    let _ = stream.set_nodelay(true);
    let result = match acceptor {
        None => {
            let conn = conn::Conn {
                io: stream,
                backend,
                cfg,
                state: sasl::State::Start,
                groups,
                client_host,
            };
            conn.run(stop).await
        }
        Some(acceptor) => {
            let handshake = tokio::time::timeout(
                Duration::from_millis(TLS_HANDSHAKE_MS_MAX),
                acceptor.accept(stream),
            )
            .await;
            match handshake {
                Ok(Ok(io)) => {
                    let conn = conn::Conn {
                        io,
                        backend,
                        cfg,
                        state: sasl::State::Start,
                        groups,
                        client_host,
                    };
                    conn.run(stop).await
                }
                Ok(Err(e)) => Err(conn::Close::Tls(e.to_string())),
                Err(_) => Err(conn::Close::Tls(format!(
                    "no handshake within {TLS_HANDSHAKE_MS_MAX} ms"
                ))),
            }
        }
    };
    match result {
        Ok(()) => tracing::debug!(%peer, "kafka connection closed"),
        Err(reason) => tracing::warn!(%peer, %reason, "kafka connection closed"),
    }
}
