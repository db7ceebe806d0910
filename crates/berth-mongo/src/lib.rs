//! The MongoDB wire-protocol gateway of Berth: lets unmodified MongoDB
//! clients (pymongo, the Rust and Node drivers, mongosh, ...) use Berth
//! tables. It owns the listener and its connections, the framing (`frame`,
//! `wire`: OP_MSG, OP_QUERY/OP_REPLY for the handshake, OP_COMPRESSED with
//! snappy, zlib and zstd), the walk that bounds every BSON document before
//! it is decoded (`guard`), the SASL conversation (`auth`), the
//! translation of each command into a [`Backend`] call and of its answer
//! into MongoDB's reply format (`commands`), and the one table of MongoDB
//! error codes (`codes`).
//!
//! The gateway presents itself as a MongoDB 7.0 `mongos` (wire version
//! 21, `msg: "isdbgrid"`): every node routes any request, as a mongos
//! does, so drivers send retryable-write numbers and transactions and use
//! every node of a connection string.
//!
//! Invariants:
//! - *Translate, never decide*: the gateway holds no data and takes no
//!   access decision. Every command after authentication goes to the
//!   backend with the principal; cursors are the backend's (it checks that
//!   a cursor belongs to whoever continues it); errors are the backend's
//!   MongoDB codes, sent as they are.
//! - *Authentication before anything*: until SCRAM-SHA-256 or PLAIN
//!   succeeds, only the handshake (`hello`, `isMaster`), `saslStart`,
//!   `saslContinue`, and informational commands (`ping`, `buildInfo`,
//!   `getParameter`, `getLog`, `whatsmyuri`, `hostInfo`,
//!   `connectionStatus`, `logout`, the session commands) are answered;
//!   everything else gets Unauthorized (13). An unknown user fails exactly
//!   like a wrong password; a connection is closed after
//!   `auth::FAILURES_MAX` failures.
//! - *Answers in request order*: a connection's requests are served one at
//!   a time; a request flagged moreToCome gets no answer.
//! - *Walk before decode*: every message is walked whole (header, sections,
//!   every BSON length, type and nesting, element count) before anything
//!   is decoded; a decoder is never handed bytes that could make it
//!   recurse without bound or allocate beyond the message's budget.
//! - *One log line per closed connection*: a connection closed for a bad
//!   TLS handshake, an oversized or untrustworthy message (bad length,
//!   unknown opcode, failed checksum, corrupt compression), too many failed
//!   authentications or an I/O error gets exactly one `warn!` naming the
//!   peer and the reason (a clean close one `debug!`); every other
//!   connection keeps being served. A malformed message inside an intact
//!   frame is answered with an error and the connection goes on. Input
//!   never panics the gateway; if a bug does, only that connection's task
//!   dies (and is logged the same way).
//! - *Bounded*: messages by [`MongoConfig::max_message_bytes`] (also after
//!   decompression; memory grows with what arrives, not with what is
//!   announced), BSON documents by `guard::DOCUMENT_BYTES_MAX` and
//!   `guard::DEPTH_MAX`, elements per message by
//!   [`MongoConfig::elements_max`], decoded requests in hand across all
//!   connections by [`MongoConfig::decode_budget_bytes`], document
//!   sequences by `wire::SEQUENCE_DOCUMENTS_MAX`, SASL payloads by
//!   `auth::PAYLOAD_BYTES_MAX`, idle connections by `conn::IDLE_MS_MAX`,
//!   an answer's write by `conn::WRITE_MS_MAX`, reads by the client's
//!   `maxTimeMS`, shutdown by [`SHUTDOWN_GRACE_MS`].
//!
//! Transactions: a command with `autocommit: false` runs through
//! `Backend::in_transaction` (only those MongoDB allows in one; others get
//! 263), `commitTransaction` and `abortTransaction` reach the backend, a
//! failed command or write error aborts its transaction, and WriteConflict
//! and NoSuchTransaction carry the `TransientTransactionError` label.
//!
//! Not offered: SCRAM-SHA-1 (it needs an MD5 digest of the password), X.509 and other
//! mechanisms, the streaming `hello` (no `topologyVersion`: drivers poll),
//! exhaust cursors (`exhaustAllowed` is ignored), tailable cursors, the
//! legacy opcodes other than OP_QUERY on `$cmd`. Change streams are
//! cursors of the backend's (`aggregate` with `$changeStream`), with
//! `postBatchResumeToken` in every batch.

pub mod backend;
pub mod codes;

mod auth;
mod commands;
mod compress;
mod conn;
mod frame;
mod guard;
mod wire;

/// What the fuzz targets drive: the decoding path of messages exactly as a
/// connection runs it (not an API; may change with it): the frame reader,
/// the walk, the decoded-size charge, the decoding, the routing to a
/// database, and the encoders that make seeds and answers.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::compress::decompress;
    pub use crate::conn::{
        decode_cost_bytes, route, Close, Route, ELEMENT_COST_BYTES,
        UNAUTHENTICATED_MESSAGE_BYTES_MAX,
    };
    pub use crate::frame::Reader;
    pub use crate::guard::{
        check as guard_check, BsonError, Counter, DEPTH_MAX, DOCUMENT_BYTES_MAX,
    };
    pub use crate::wire::{
        compress_message, encode_msg, encode_reply, parse, read_header, Format, Header, Limits,
        ReplyTo, Request, Walked, WireError, CHECKSUM_PRESENT, HEADER_BYTES, MORE_TO_COME,
        OP_COMPRESSED, OP_MSG, OP_QUERY, SECTIONS_MAX, SEQUENCE_DOCUMENTS_MAX,
    };
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

pub use backend::*;
pub use codes::MongoError;
pub use compress::Compressor;

/// MongoDB's `maxMessageSizeBytes`.
pub const MAX_MESSAGE_BYTES_DEFAULT: usize = 48_000_000;
/// Default bound on BSON elements in one message: a full 48 MB insert of
/// documents with 40 small fields each.
pub const ELEMENTS_MAX_DEFAULT: usize = 4_000_000;
/// Default budget of decoded requests in hand across connections: one
/// message of the largest size and element count fits.
pub const DECODE_BUDGET_BYTES_DEFAULT: usize = 1 << 30;
/// Bound on the TLS handshake of a new connection.
pub const TLS_HANDSHAKE_MS_MAX: u64 = 10_000;
/// After shutdown, how long connections may finish the request in hand.
pub const SHUTDOWN_GRACE_MS: u64 = 5_000;
/// Pause after a failed accept (e.g. out of file descriptors).
const ACCEPT_RETRY_MS: u64 = 100;

/// How the gateway presents itself, and its bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MongoConfig {
    /// `host:port` as `hostInfo` and `serverStatus` report it.
    pub host: String,
    /// Largest message accepted (and announced as `maxMessageSizeBytes`),
    /// compressed or not.
    pub max_message_bytes: usize,
    /// Compressors offered in `hello` (the intersection with the client's
    /// list is agreed).
    pub compressors: Vec<Compressor>,
    /// BSON elements in one message, at most.
    pub elements_max: usize,
    /// Estimated memory of the decoded requests all connections hold at
    /// once (message bytes plus `conn::ELEMENT_COST_BYTES` per element); a
    /// request waits for room. Must hold one message of the largest kind.
    pub decode_budget_bytes: usize,
}

impl Default for MongoConfig {
    fn default() -> Self {
        MongoConfig {
            host: "localhost:27017".into(),
            max_message_bytes: MAX_MESSAGE_BYTES_DEFAULT,
            compressors: Compressor::ALL.to_vec(),
            elements_max: ELEMENTS_MAX_DEFAULT,
            decode_budget_bytes: DECODE_BUDGET_BYTES_DEFAULT,
        }
    }
}

/// Serves MongoDB clients on `listener` until `shutdown` resolves, one task
/// per connection; TLS when `tls` is given, plaintext otherwise (a
/// development mode that the caller chooses). After `shutdown`, no new
/// connection is accepted, open ones end after the request in hand, and
/// those still busy after [`SHUTDOWN_GRACE_MS`] are dropped.
pub async fn serve<B: Backend>(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    backend: Arc<B>,
    cfg: MongoConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // (Bounds the caller gives must leave room for a header and one
    // message; a misconfiguration is the caller's bug.)
    assert!(
        cfg.max_message_bytes > wire::HEADER_BYTES && cfg.max_message_bytes <= i32::MAX as usize,
        "max_message_bytes out of range"
    );
    let shared = Arc::new(conn::Shared::new(cfg));
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
                        shared.clone(),
                        stop_rx.clone(),
                    );
                    let handle = conns.spawn(task);
                    peers.insert(handle.id(), peer);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "mongo: accept failed");
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
            "mongo: dropping connections still busy after shutdown"
        );
        conns.shutdown().await;
    }
    Ok(())
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
                tracing::warn!(?peer, reason = "internal panic", "mongo connection closed");
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
    shared: Arc<conn::Shared>,
    stop: watch::Receiver<bool>,
) {
    // Requests and answers are small and latency-bound.
    let _ = stream.set_nodelay(true);
    let result = match acceptor {
        None => {
            conn::Conn::new(stream, backend, shared, peer)
                .run(stop)
                .await
        }
        Some(acceptor) => {
            let handshake = tokio::time::timeout(
                Duration::from_millis(TLS_HANDSHAKE_MS_MAX),
                acceptor.accept(stream),
            )
            .await;
            match handshake {
                Ok(Ok(io)) => conn::Conn::new(io, backend, shared, peer).run(stop).await,
                Ok(Err(e)) => Err(conn::Close::Tls(e.to_string())),
                Err(_) => Err(conn::Close::Tls(format!(
                    "no handshake within {TLS_HANDSHAKE_MS_MAX} ms"
                ))),
            }
        }
    };
    match result {
        Ok(()) => tracing::debug!(%peer, "mongo connection closed"),
        Err(reason) => tracing::warn!(%peer, %reason, "mongo connection closed"),
    }
}
