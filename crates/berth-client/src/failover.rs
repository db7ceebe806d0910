//! The transport under every client: one gRPC call at a time is sent to the
//! current server of a list, and moved to another one when the current one
//! cannot answer. The decisions are pure functions ([`classify`],
//! [`may_repeat`]) so they are tested without servers.
//!
//! Invariant: *a call that may have changed something is never sent twice*.
//! Only calls in [`IDEMPOTENT`] are repeated after a connection failed under
//! them; every call is repeated after a refusal naming the node to ask
//! (`x-berth-leader`) or a connection that could not even be opened.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use tonic::body::Body;
use tonic::codegen::http;
use tonic::codegen::{Body as _, Bytes, Service};
use tonic::transport::{Channel, Endpoint};

/// How long one call may keep trying servers before its error surfaces.
pub const RETRY_BUDGET_MS: u64 = 30_000;
/// Bound on the attempts of one call, whatever the budget.
pub const ATTEMPTS_MAX: u32 = 64;
/// First pause before repeating a call on a server that failed; doubled up to
/// [`BACKOFF_MS_MAX`].
pub const BACKOFF_MS_MIN: u64 = 50;
pub const BACKOFF_MS_MAX: u64 = 1_000;
/// Bound on the servers a client remembers (configured plus learned).
pub const SERVERS_MAX: usize = 64;
/// Largest request buffered for a possible repeat (every client call is
/// unary; file writes are the largest, see `Client::files`).
const REQUEST_BYTES_MAX: usize = 64 << 20;

/// Calls that may be repeated after the server died under them: they change
/// nothing, so a second copy is harmless. (`Files/Open` is not one: it may
/// create or truncate.)
pub const IDEMPOTENT: &[&str] = &[
    "/berth.v1.Namespace/Stat",
    "/berth.v1.Namespace/List",
    "/berth.v1.Namespace/Readlink",
    "/berth.v1.Namespace/GetAcl",
    "/berth.v1.Namespace/GetXattr",
    "/berth.v1.Namespace/ListXattr",
    "/berth.v1.Files/Read",
    "/berth.v1.Inodes/Lookup",
    "/berth.v1.Inodes/GetAttr",
    "/berth.v1.Inodes/List",
    "/berth.v1.Inodes/Readlink",
    "/berth.v1.Inodes/GetXattr",
    "/berth.v1.Inodes/ListXattr",
    // Sets a lease's end again: a second copy changes nothing more.
    "/berth.v1.Inodes/KeepOrphans",
    "/berth.v1.Volumes/List",
    "/berth.v1.Volumes/Info",
    "/berth.v1.Volumes/Check",
    "/berth.v1.Volumes/SnapshotList",
    "/berth.v1.Streams/Info",
    "/berth.v1.Streams/List",
    "/berth.v1.Streams/ListTopics",
    "/berth.v1.Streams/DescribeTopic",
    "/berth.v1.Tables/Info",
    "/berth.v1.Tables/List",
    // Writes only a no-op (to have Raft confirm what it read).
    "/berth.v1.Tables/Check",
    "/berth.v1.Security/WhoAmI",
    "/berth.v1.Security/UserList",
    "/berth.v1.Security/GroupList",
    "/berth.v1.Security/KeyList",
    "/berth.v1.Locks/TestLock",
    "/berth.v1.Cluster/Status",
    "/berth.v1.Cluster/ListJoinTokens",
    "/berth.v1.Cluster/Placement",
    // They set a node's state: a second copy finds it set.
    "/berth.v1.Cluster/Decommission",
    "/berth.v1.Cluster/Recommission",
];

/// What became of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An answer (success or an error to surface).
    Answer,
    /// Refused before anything was done; the call belongs at this address.
    Redirect(String),
    /// The server never received the call (the connection could not open).
    NotSent,
    /// The connection failed under the call: it may or may not have run.
    Lost,
    /// Refused for now (EAGAIN, no leader known): repeatable by idempotent
    /// calls after a pause.
    Busy,
}

/// Classifies an answer by its gRPC trailers-only headers: `grpc-status`,
/// `x-berth-code` and `x-berth-leader`.
pub fn classify(headers: &http::HeaderMap) -> Outcome {
    let get = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).map(str::trim);
    // 14: UNAVAILABLE.
    if get("grpc-status") != Some("14") {
        return Outcome::Answer;
    }
    match (
        get(berth_api::CODE_METADATA),
        get(berth_api::LEADER_METADATA),
    ) {
        (Some("EAGAIN"), Some(leader)) if !leader.is_empty() => {
            match crate::config::normalize_server(leader) {
                Ok(addr) => Outcome::Redirect(addr),
                Err(_) => Outcome::Busy,
            }
        }
        (Some("EAGAIN"), _) => Outcome::Busy,
        (Some(_), _) => Outcome::Answer,
        // UNAVAILABLE from something that is not Berth (a proxy, a server
        // shutting down): the call may have reached nothing or everything.
        (None, _) => Outcome::Lost,
    }
}

/// Whether a call to `path` may be sent again after `outcome`.
pub fn may_repeat(path: &str, outcome: &Outcome) -> bool {
    match outcome {
        Outcome::Answer => false,
        Outcome::Redirect(_) | Outcome::NotSent => true,
        Outcome::Lost | Outcome::Busy => IDEMPOTENT.contains(&path),
    }
}

/// Whether a transport error certainly came before the request was sent:
/// the connection was refused (nothing listens), so nothing was received.
fn never_sent(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable
            ) {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// The servers, the one in use, and an open channel per server.
struct State {
    servers: Vec<String>,
    current: usize,
    channels: Vec<(String, Channel)>,
}

impl State {
    /// Adds `addr` if unknown (up to [`SERVERS_MAX`]); returns its index.
    fn add(&mut self, addr: &str) -> Option<usize> {
        if let Some(i) = self.servers.iter().position(|s| s == addr) {
            return Some(i);
        }
        if self.servers.len() >= SERVERS_MAX {
            return None;
        }
        self.servers.push(addr.to_string());
        Some(self.servers.len() - 1)
    }

    /// Moves past `failed` (if it is still the current server).
    fn rotate_from(&mut self, failed: &str) {
        self.channels.retain(|(s, _)| s != failed);
        if self.servers.get(self.current).map(String::as_str) == Some(failed) {
            self.current = (self.current + 1) % self.servers.len().max(1);
        }
    }
}

type MakeEndpoint = Arc<dyn Fn(&str) -> Result<Endpoint, crate::ClientError> + Send + Sync>;

/// Shared by the clones of one [`Failover`].
struct Shared {
    make_endpoint: MakeEndpoint,
    auth: Option<http::HeaderValue>,
    budget: Duration,
    state: Mutex<State>,
}

/// A tower service sending each call to a server of the list, adding the
/// ticket, and moving calls to another server as [`may_repeat`] allows.
#[derive(Clone)]
pub struct Failover {
    shared: Arc<Shared>,
}

impl Failover {
    pub(crate) fn new(
        servers: Vec<String>,
        current: usize,
        first: Channel,
        auth: Option<http::HeaderValue>,
        make_endpoint: MakeEndpoint,
    ) -> Failover {
        assert!(
            current < servers.len(),
            "the connected server is in the list"
        );
        let channels = vec![(servers[current].clone(), first)];
        Failover {
            shared: Arc::new(Shared {
                make_endpoint,
                auth,
                budget: Duration::from_millis(RETRY_BUDGET_MS),
                state: Mutex::new(State {
                    servers,
                    current,
                    channels,
                }),
            }),
        }
    }

    /// A failover over the same servers whose channels are opened anew, on
    /// the runtime current when they are first used.
    pub(crate) fn fresh(&self) -> Failover {
        let st = self.lock();
        Failover {
            shared: Arc::new(Shared {
                make_endpoint: self.shared.make_endpoint.clone(),
                auth: self.shared.auth.clone(),
                budget: self.shared.budget,
                state: Mutex::new(State {
                    servers: st.servers.clone(),
                    current: st.current,
                    channels: Vec::new(),
                }),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves consistent data (plain
        // assignments), so a poisoned lock is used as is.
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The server calls go to now.
    pub fn current(&self) -> String {
        let st = self.lock();
        st.servers[st.current].clone()
    }

    /// Every server known, configured ones first.
    pub fn servers(&self) -> Vec<String> {
        self.lock().servers.clone()
    }

    /// Adds servers learned from the cluster (after the known ones).
    pub fn learn(&self, addrs: impl IntoIterator<Item = String>) {
        let mut st = self.lock();
        for a in addrs {
            if let Ok(a) = crate::config::normalize_server(&a) {
                st.add(&a);
            }
        }
    }

    /// The channel to `server`, opened (and connected) if needed.
    /// An open channel to `server`, or why none could be opened (the call
    /// was then never sent).
    async fn channel(&self, server: &str) -> Result<Channel, String> {
        if let Some((_, c)) = self.lock().channels.iter().find(|(s, _)| s == server) {
            return Ok(c.clone());
        }
        let ep = (self.shared.make_endpoint)(server).map_err(|e| format!("{server}: {e}"))?;
        let c = ep.connect().await.map_err(|e| {
            let mut text = format!("{server}: {e}");
            let mut cur = std::error::Error::source(&e);
            while let Some(inner) = cur {
                text.push_str(&format!(": {inner}"));
                cur = inner.source();
            }
            text
        })?;
        let mut st = self.lock();
        st.channels.retain(|(s, _)| s != server);
        st.channels.push((server.to_string(), c.clone()));
        Ok(c)
    }

    async fn send(self, req: http::Request<Body>) -> Result<http::Response<Body>, crate::BoxError> {
        let (mut parts, body) = req.into_parts();
        if let Some(v) = &self.shared.auth {
            parts.headers.insert(berth_api::AUTH_METADATA, v.clone());
        }
        let path = parts.uri.path().to_string();
        let bytes = collect(body).await?;
        let deadline = Instant::now() + self.shared.budget;
        let mut redirect: Option<String> = None;
        let mut backoff_ms = BACKOFF_MS_MIN;
        // Servers that failed this call since the last pause: once every
        // server has, the next round waits.
        let mut failed: Vec<String> = Vec::new();
        // Servers no connection could be opened to, with why. When every
        // known server is among them nothing is listening anywhere (or
        // speaking another protocol): the call fails at once instead of
        // waiting out the budget.
        let mut unreachable: Vec<(String, String)> = Vec::new();
        for attempt in 1..=ATTEMPTS_MAX {
            let server = redirect.take().unwrap_or_else(|| self.current());
            let last = attempt == ATTEMPTS_MAX || Instant::now() >= deadline;
            let outcome = match self.channel(&server).await {
                Err(why) => {
                    unreachable.retain(|(s, _)| *s != server);
                    unreachable.push((server.clone(), why));
                    let servers = self.servers();
                    if servers
                        .iter()
                        .all(|s| unreachable.iter().any(|(u, _)| u == s))
                    {
                        self.lock().rotate_from(&server);
                        let whys: Vec<String> =
                            unreachable.iter().map(|(_, w)| w.clone()).collect();
                        return Err(Box::new(tonic::Status::unavailable(format!(
                            "cannot reach any server: {}",
                            whys.join("; ")
                        ))));
                    }
                    Outcome::NotSent
                }
                Ok(mut c) => {
                    let r = http::Request::from_parts(parts.clone(), full(bytes.clone()));
                    // A channel takes a call only once it is ready.
                    let sent = match std::future::poll_fn(|cx| c.poll_ready(cx)).await {
                        Ok(()) => c.call(r).await,
                        Err(e) => Err(e),
                    };
                    match sent {
                        Ok(resp) => match classify(resp.headers()) {
                            o if last || !may_repeat(&path, &o) => return Ok(resp),
                            o => o,
                        },
                        Err(e) => {
                            let o = if never_sent(&e) {
                                Outcome::NotSent
                            } else {
                                Outcome::Lost
                            };
                            if last || !may_repeat(&path, &o) {
                                // The next call starts on another server.
                                self.lock().rotate_from(&server);
                                return Err(e.into());
                            }
                            o
                        }
                    }
                }
            };
            match outcome {
                // A redirect to a server that just failed this call (a
                // leader not yet known to be dead): wait for the election.
                Outcome::Redirect(addr) if failed.contains(&addr) => {}
                Outcome::Redirect(addr) => {
                    let mut st = self.lock();
                    if let Some(i) = st.add(&addr) {
                        st.current = i;
                    }
                    redirect = Some(addr);
                    continue;
                }
                Outcome::Busy => {}
                _ => {
                    if last {
                        break;
                    }
                    let mut st = self.lock();
                    st.rotate_from(&server);
                    if !failed.contains(&server) {
                        failed.push(server);
                    }
                    if failed.len() < st.servers.len() {
                        continue;
                    }
                }
            }
            if last {
                break;
            }
            failed.clear();
            unreachable.clear();
            tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
            backoff_ms = (backoff_ms * 2).min(BACKOFF_MS_MAX);
        }
        Err(Box::new(tonic::Status::unavailable(format!(
            "no server answered (tried {})",
            self.servers().join(", ")
        ))))
    }
}

fn full(bytes: Bytes) -> Body {
    Body::new(Full::new(bytes))
}

async fn collect(body: Body) -> Result<Bytes, crate::BoxError> {
    if body
        .size_hint()
        .upper()
        .is_some_and(|n| n > REQUEST_BYTES_MAX as u64)
    {
        return Err("request too large".into());
    }
    Ok(body.collect().await?.to_bytes())
}

impl Service<http::Request<Body>> for Failover {
    type Response = http::Response<Body>;
    type Error = crate::BoxError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Channels are chosen per call; each one waits for its own readiness
        // inside `call`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        Box::pin(self.clone().send(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, http::HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn answers_redirects_and_lost_calls() {
        assert_eq!(classify(&headers(&[])), Outcome::Answer);
        assert_eq!(classify(&headers(&[("grpc-status", "0")])), Outcome::Answer);
        assert_eq!(
            classify(&headers(&[
                ("grpc-status", "14"),
                ("x-berth-code", "EAGAIN"),
                ("x-berth-leader", "10.0.0.2:5660"),
            ])),
            Outcome::Redirect("10.0.0.2:5660".into())
        );
        assert_eq!(
            classify(&headers(&[
                ("grpc-status", "14"),
                ("x-berth-code", "EAGAIN")
            ])),
            Outcome::Busy
        );
        // A Berth error that is no refusal is the answer.
        assert_eq!(
            classify(&headers(&[("grpc-status", "14"), ("x-berth-code", "EIO")])),
            Outcome::Answer
        );
        // UNAVAILABLE from no Berth server.
        assert_eq!(classify(&headers(&[("grpc-status", "14")])), Outcome::Lost);
    }

    #[test]
    fn only_idempotent_calls_repeat_after_a_lost_connection() {
        let stat = "/berth.v1.Namespace/Stat";
        let mkdir = "/berth.v1.Namespace/Mkdir";
        let write = "/berth.v1.Files/Write";
        for p in [stat, mkdir, write] {
            assert!(may_repeat(p, &Outcome::NotSent), "{p}");
            assert!(may_repeat(p, &Outcome::Redirect("a:1".into())), "{p}");
            assert!(!may_repeat(p, &Outcome::Answer), "{p}");
        }
        assert!(may_repeat(stat, &Outcome::Lost));
        assert!(!may_repeat(mkdir, &Outcome::Lost));
        assert!(!may_repeat(write, &Outcome::Lost));
        assert!(!may_repeat(mkdir, &Outcome::Busy));
        assert!(may_repeat("/berth.v1.Cluster/Status", &Outcome::Busy));
    }

    #[test]
    fn rotation_and_learning() {
        let mut st = State {
            servers: vec!["a:1".into(), "b:1".into()],
            current: 0,
            channels: Vec::new(),
        };
        assert_eq!(st.add("b:1"), Some(1));
        assert_eq!(st.add("c:1"), Some(2));
        st.rotate_from("a:1");
        assert_eq!(st.current, 1);
        // A failure of a server no longer current does not move on again.
        st.rotate_from("a:1");
        assert_eq!(st.current, 1);
        st.rotate_from("b:1");
        st.rotate_from("c:1");
        assert_eq!(st.current, 0);
        for i in 0..SERVERS_MAX {
            st.add(&format!("n{i}:1"));
        }
        assert_eq!(st.servers.len(), SERVERS_MAX);
    }

    #[test]
    fn refused_connections_were_never_sent() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(never_sent(&refused));
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(!never_sent(&reset));
    }
}
