//! One client connection: read a message, walk it, charge its decoded size
//! to the server's budget, decode it, run the command, answer, in request
//! order (one request at a time).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bson::{doc, Bson, Document};
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{watch, Semaphore};

use crate::backend::Backend;
use crate::codes::{self, MongoError};
use crate::compress::Compressor;
use crate::wire::{self, ReplyTo, Request, WireError};
use crate::{auth, commands, frame, MongoConfig};

/// A connection silent this long is closed. Long, because drivers keep
/// pooled connections idle for a while and a server-side close surfaces as
/// a network error on their next use; they watch the pool's monitoring
/// connection with a `hello` every few seconds anyway.
pub const IDLE_MS_MAX: u64 = 30 * 60 * 1000;
/// Bound on writing one answer to a client that does not read.
pub const WRITE_MS_MAX: u64 = 60 * 1000;
/// Largest message before authentication: the handshake and SASL
/// messages are small, and an anonymous peer should not make the server
/// buffer `maxMessageSizeBytes`.
pub const UNAUTHENTICATED_MESSAGE_BYTES_MAX: usize = 1024 * 1024;
/// What one decoded BSON element is charged, besides the message's bytes:
/// an estimate of a `bson::Document` entry (key, value, index) in memory.
pub const ELEMENT_COST_BYTES: usize = 160;

/// Why the gateway closed a connection: logged once, as the reason.
#[derive(Debug, thiserror::Error)]
pub enum Close {
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    #[error("message of {size} bytes exceeds the limit of {max_bytes}")]
    TooLarge { size: usize, max_bytes: usize },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("{0} failed authentications")]
    AuthFailures(u32),
    #[error("idle for {0} ms")]
    Idle(u64),
    #[error("i/o: {0}")]
    Io(std::io::Error),
    #[error("internal: {0}")]
    Internal(String),
}

/// What every connection of a server shares.
pub struct Shared {
    pub cfg: MongoConfig,
    /// Decoded bytes of requests in hand, across connections, in KiB
    /// permits (see [`MongoConfig::decode_budget_bytes`]).
    pub budget: Arc<Semaphore>,
    pub budget_kib: usize,
    next_connection_id: AtomicI64,
    pub started: std::time::Instant,
}

impl Shared {
    pub fn new(cfg: MongoConfig) -> Shared {
        let budget_kib = (cfg.decode_budget_bytes / 1024).clamp(1, Semaphore::MAX_PERMITS);
        Shared {
            cfg,
            budget: Arc::new(Semaphore::new(budget_kib)),
            budget_kib,
            next_connection_id: AtomicI64::new(1),
            started: std::time::Instant::now(),
        }
    }

    pub fn connection_id(&self) -> i64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }
}

pub struct Conn<S, B: Backend> {
    pub io: S,
    pub backend: Arc<B>,
    pub shared: Arc<Shared>,
    pub peer: SocketAddr,
    pub connection_id: i64,
    pub auth: auth::State<B::Principal>,
    pub compressors: Vec<Compressor>,
    pub next_response_id: i32,
    pub auth_failures: u32,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send, B: Backend> Conn<S, B> {
    pub fn new(io: S, backend: Arc<B>, shared: Arc<Shared>, peer: SocketAddr) -> Conn<S, B> {
        let connection_id = shared.connection_id();
        Conn {
            io,
            backend,
            shared,
            peer,
            connection_id,
            auth: auth::State::None,
            compressors: Vec::new(),
            next_response_id: 1,
            auth_failures: 0,
        }
    }

    /// Serves requests until the client closes (`Ok`), the server stops
    /// (`Ok`) or something closes the connection (`Err`, the reason).
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) -> Result<(), Close> {
        let max = self.shared.cfg.max_message_bytes;
        let mut reader = frame::Reader::new(max.min(UNAUTHENTICATED_MESSAGE_BYTES_MAX));
        loop {
            reader.set_max_bytes(if self.auth.principal().is_some() {
                max
            } else {
                max.min(UNAUTHENTICATED_MESSAGE_BYTES_MAX)
            });
            let idle = tokio::time::sleep(Duration::from_millis(IDLE_MS_MAX));
            let frame = tokio::select! {
                r = reader.next(&mut self.io) => r?,
                () = idle => return Err(Close::Idle(IDLE_MS_MAX)),
                // (The guard `wait_for` returns must not live in the
                // select's output: it is not Send.)
                () = async { drop(stop.wait_for(|stopped| *stopped).await) } => return Ok(()),
            };
            let Some(frame) = frame else { return Ok(()) };
            self.message(frame).await?;
            if self.auth_failures >= auth::FAILURES_MAX {
                return Err(Close::AuthFailures(self.auth_failures));
            }
        }
    }

    async fn message(&mut self, frame: Bytes) -> Result<(), Close> {
        let cfg = &self.shared.cfg;
        let limits = wire::Limits {
            message_bytes_max: cfg.max_message_bytes,
            elements_max: cfg.elements_max,
        };
        let walked = match wire::parse(frame, &limits) {
            Ok(w) => w,
            Err(WireError::Fatal(why)) => return Err(Close::Malformed(why)),
            Err(WireError::Bad { to, error }) => return self.refuse(&to, &error).await,
        };
        let to = walked.to;
        // The decoded request's memory, charged before it exists.
        let cost_bytes = decode_cost_bytes(&walked);
        let permits = cost_bytes.div_ceil(1024).max(1);
        if permits > self.shared.budget_kib {
            let e = MongoError::new(
                codes::BSON_OBJECT_TOO_LARGE,
                format!("message of {cost_bytes} decoded bytes exceeds the server's budget"),
            );
            return self.refuse(&to, &e).await;
        }
        let _charge = self
            .shared
            .budget
            .clone()
            .acquire_many_owned(permits as u32)
            .await
            .map_err(|e| Close::Internal(format!("decode budget: {e}")))?;
        let request = match walked.decode() {
            Ok(r) => r,
            Err(WireError::Fatal(why)) => return Err(Close::Malformed(why)),
            Err(WireError::Bad { to, error }) => return self.refuse(&to, &error).await,
        };
        let (db, command) = match route(request) {
            Route::Command { db, command } => (db, command),
            Route::Refuse(e) => return self.refuse(&to, &e).await,
            Route::LegacyQuery { collection } => {
                return self.legacy_query_refused(&to, &collection).await
            }
        };
        tracing::trace!(
            peer = %self.peer,
            db,
            command = command.keys().next().map_or("", String::as_str),
            compressor = to.compressor.map(Compressor::name),
            checksum = to.checksum,
            more_to_come = to.more_to_come,
            "mongo: request"
        );
        let outcome = {
            let mut c = commands::Conn {
                backend: &*self.backend,
                cfg: &self.shared.cfg,
                auth: &mut self.auth,
                connection_id: self.connection_id,
                peer: self.peer,
                compressors: &mut self.compressors,
                started: self.shared.started,
            };
            commands::run(&mut c, &db, command).await
        };
        if let Some(reason) = &outcome.auth_failure {
            self.auth_failures += 1;
            tracing::info!(peer = %self.peer, %reason, "mongo: authentication failed");
        }
        if to.more_to_come {
            if outcome.reply.get_f64("ok").ok() != Some(1.0) {
                tracing::debug!(peer = %self.peer, reply = %outcome.reply,
                    "mongo: a request without answer (moreToCome) failed");
            }
            return Ok(());
        }
        self.answer(&to, &outcome.reply, outcome.compressible, false)
            .await
    }

    /// Answers a request that could not be run with `error`.
    async fn refuse(&mut self, to: &ReplyTo, error: &MongoError) -> Result<(), Close> {
        tracing::debug!(peer = %self.peer, %error, "mongo: request refused");
        if to.more_to_come {
            return Ok(());
        }
        self.answer(to, &commands::error_reply(error), false, false)
            .await
    }

    /// OP_QUERY on a collection: the legacy query path, long removed from
    /// MongoDB and not served; answered with QueryFailure.
    async fn legacy_query_refused(&mut self, to: &ReplyTo, collection: &str) -> Result<(), Close> {
        let e = MongoError::new(
            codes::UNSUPPORTED_OP_QUERY_COMMAND,
            format!("OP_QUERY is only served for commands (<db>.$cmd), not on {collection:?}"),
        );
        let d = doc! {"$err": e.message.clone(), "code": e.code, "ok": 0.0};
        self.answer(to, &d, false, true).await
    }

    async fn answer(
        &mut self,
        to: &ReplyTo,
        reply: &Document,
        compressible: bool,
        query_failure: bool,
    ) -> Result<(), Close> {
        let id = self.next_response_id;
        self.next_response_id = self.next_response_id.wrapping_add(1);
        let max = self.shared.cfg.max_message_bytes;
        let mut bytes = wire::encode_reply(to, id, reply, compressible, query_failure)
            .map_err(Close::Internal)?;
        if bytes.len() > max {
            // The backend's batch was too large to send: tell the client
            // rather than break the message limit it relies on.
            let e = MongoError::new(
                codes::BSON_OBJECT_TOO_LARGE,
                format!(
                    "reply of {} bytes exceeds maxMessageSizeBytes ({max})",
                    bytes.len()
                ),
            );
            bytes = wire::encode_reply(to, id, &commands::error_reply(&e), false, query_failure)
                .map_err(Close::Internal)?;
        }
        tokio::time::timeout(
            Duration::from_millis(WRITE_MS_MAX),
            frame::write(&mut self.io, &bytes),
        )
        .await
        .map_err(|_| Close::Io(std::io::ErrorKind::TimedOut.into()))?
    }
}

/// The memory a walked message is charged before it is decoded: its bytes
/// plus [`ELEMENT_COST_BYTES`] per BSON element.
pub fn decode_cost_bytes(walked: &wire::Walked) -> usize {
    walked
        .size_bytes()
        .saturating_add(walked.elements.saturating_mul(ELEMENT_COST_BYTES))
}

/// Where a decoded request goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// A command to run on database `db`.
    Command { db: String, command: Document },
    /// Answered with this error (an OP_MSG without `$db`).
    Refuse(MongoError),
    /// OP_QUERY on a collection rather than `<db>.$cmd`: refused with
    /// QueryFailure.
    LegacyQuery { collection: String },
}

/// The database and command of a decoded request: OP_MSG names its
/// database in `$db`, OP_QUERY in its namespace `<db>.$cmd`.
pub fn route(request: Request) -> Route {
    match request {
        Request::Msg { command } => match command.get("$db") {
            Some(Bson::String(db)) => Route::Command {
                db: db.clone(),
                command,
            },
            _ => Route::Refuse(MongoError::new(
                40571,
                "OP_MSG requests require a $db argument",
            )),
        },
        Request::Query { collection, query } => match collection.strip_suffix(".$cmd") {
            Some(db) => Route::Command {
                db: db.to_string(),
                command: unwrap_query(query),
            },
            None => Route::LegacyQuery { collection },
        },
    }
}

/// An OP_QUERY command may come wrapped as `{$query: {...},
/// $readPreference: ...}` (or `{query: {...}}`): the command is inside.
fn unwrap_query(mut query: Document) -> Document {
    let key = match query.keys().next().map(String::as_str) {
        Some("$query") => "$query",
        Some("query") if matches!(query.get("query"), Some(Bson::Document(_))) => "query",
        _ => return query,
    };
    match query.remove(key) {
        Some(Bson::Document(inner)) => inner,
        Some(other) => {
            query.insert(key, other);
            query
        }
        None => query,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwraps_op_query_commands() {
        let plain = doc! {"isMaster": 1};
        assert_eq!(unwrap_query(plain.clone()), plain);
        let wrapped = doc! {"$query": {"isMaster": 1}, "$readPreference": {"mode": "primary"}};
        assert_eq!(unwrap_query(wrapped), plain);
        let legacy = doc! {"query": {"isMaster": 1}};
        assert_eq!(unwrap_query(legacy), plain);
    }
}
