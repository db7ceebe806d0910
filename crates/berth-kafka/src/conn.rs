//! One client connection: read a frame, check the SASL state, decode,
//! call the handler, write the answer, answers in request order.
//!
//! Produce requests are pipelined: once a request's appends are queued
//! (in order, see [`crate::Backend::produce_partitions`]) the next request
//! is read while they become durable, up to [`PIPELINE_MAX`] of them; any
//! other request first waits until every earlier answer is written, so it
//! is handled exactly as if requests were served one at a time.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::stream::{FuturesOrdered, StreamExt};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, RequestHeader, ResponseHeader, SaslAuthenticateRequest,
    SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::backend::Backend;
use crate::{api, codes, frame, group, group_handlers, guard, handlers, sasl, KafkaConfig};

/// A connection silent this long is closed (Kafka's
/// `connections.max.idle.ms` default).
pub const IDLE_MS_MAX: u64 = 10 * 60 * 1000;
/// Bound on writing one response to a client that does not read.
pub const WRITE_MS_MAX: u64 = 60 * 1000;
/// Produce requests of one connection waiting to be durable, at most (Kafka
/// clients send up to five at once by default; librdkafka more).
pub const PIPELINE_MAX: usize = 16;

/// An answer still being worked on.
type Later = Pin<Box<dyn Future<Output = Result<Reply, Close>> + Send>>;

/// What handling a request gave.
pub enum Step {
    /// The answer.
    Now(Reply),
    /// A produce whose appends are queued: its answer once durable.
    Later(Later),
}

/// Why the gateway closed a connection: logged once, as the reason.
#[derive(Debug, thiserror::Error)]
pub enum Close {
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    #[error("frame of {size} bytes exceeds the limit of {max_bytes}")]
    TooLarge { size: usize, max_bytes: usize },
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("unsupported request: api key {key} version {version}")]
    Unsupported { key: i16, version: i16 },
    #[error("illegal SASL state: {0}")]
    IllegalSaslState(String),
    #[error("SASL: {0}")]
    Sasl(String),
    #[error("idle for {0} ms")]
    Idle(u64),
    #[error("i/o: {0}")]
    Io(std::io::Error),
    #[error("internal: {0}")]
    Internal(String),
}

/// What a request produces on the wire.
pub enum Reply {
    /// Send this frame.
    Send(Bytes),
    /// Nothing (Produce with acks=0).
    Nothing,
    /// Send this frame, then close.
    SendThenClose(Bytes, Close),
}

pub struct Conn<S, B: Backend> {
    pub io: S,
    pub backend: Arc<B>,
    pub cfg: Arc<KafkaConfig>,
    pub state: sasl::State<B::Principal>,
    /// The group coordinator, shared by every connection.
    pub groups: Arc<group::Coordinator>,
    /// The peer as Kafka reports client hosts (`/` and the address).
    pub client_host: String,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send, B: Backend> Conn<S, B> {
    /// Serves requests until the client closes (`Ok`), the server stops
    /// (`Ok`) or something closes the connection (`Err`, the reason).
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) -> Result<(), Close> {
        let mut reader = frame::Reader::new(self.cfg.max_request_bytes);
        let mut later: FuturesOrdered<Later> = FuturesOrdered::new();
        loop {
            // The next request; answers of earlier produces go out meanwhile.
            let idle = tokio::time::sleep(Duration::from_millis(IDLE_MS_MAX));
            tokio::pin!(idle);
            let frame = loop {
                tokio::select! {
                    r = reader.next(&mut self.io) => break r?,
                    Some(reply) = later.next(), if !later.is_empty() => self.send(reply?).await?,
                    _ = &mut idle, if later.is_empty() => return Err(Close::Idle(IDLE_MS_MAX)),
                    // (The guard `wait_for` returns must not live in the
                    // select's output: it is not Send.)
                    () = async { drop(stop.wait_for(|stopped| *stopped).await) } => return Ok(()),
                }
            };
            let Some(frame) = frame else { return Ok(()) };
            let produce = !self.state.raw()
                && frame.len() >= 2
                && i16::from_be_bytes([frame[0], frame[1]]) == ApiKey::Produce as i16;
            if !produce {
                while let Some(reply) = later.next().await {
                    self.send(reply?).await?;
                }
            }
            let step = if self.state.raw() {
                Step::Now(self.raw_token(frame).await?)
            } else {
                self.request(frame).await?
            };
            match step {
                Step::Now(reply) => {
                    while let Some(reply) = later.next().await {
                        self.send(reply?).await?;
                    }
                    self.send(reply).await?;
                }
                Step::Later(answer) => {
                    later.push_back(answer);
                    while later.len() > PIPELINE_MAX {
                        if let Some(reply) = later.next().await {
                            self.send(reply?).await?;
                        }
                    }
                }
            }
        }
    }

    /// Writes a reply; `SendThenClose` ends the connection with its reason.
    async fn send(&mut self, reply: Reply) -> Result<(), Close> {
        match reply {
            Reply::Send(bytes) => self.write(&bytes).await,
            Reply::Nothing => Ok(()),
            Reply::SendThenClose(bytes, why) => {
                self.write(&bytes).await?;
                Err(why)
            }
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), Close> {
        tokio::time::timeout(
            Duration::from_millis(WRITE_MS_MAX),
            frame::write(&mut self.io, bytes),
        )
        .await
        .map_err(|_| Close::Io(std::io::ErrorKind::TimedOut.into()))?
    }

    /// A bare SASL token after SaslHandshake v0: answered with a bare
    /// token (empty for PLAIN and OAUTHBEARER, the server-first and then
    /// the server-final for SCRAM); a failure closes the connection, since
    /// v0 has no way to report it (as Kafka does).
    async fn raw_token(&mut self, token: Bytes) -> Result<Reply, Close> {
        let answer = self.sasl_step(&token).await?;
        let mut buf = frame::start();
        buf.extend_from_slice(&answer);
        Ok(Reply::Send(frame::finish(buf)?))
    }

    /// One client SASL token, in the state the handshake (and, for SCRAM,
    /// the previous round) left: returns the server's answer token. On
    /// success the state moves on (to `Authenticated` once the mechanism is
    /// done); an error is the reason to fail the exchange and close.
    async fn sasl_step(&mut self, token: &[u8]) -> Result<Vec<u8>, Close> {
        use berth_security::scram;
        use sasl::{Mechanism, State};
        let failed = |why: String| Close::Sasl(format!("authentication failed: {why}"));
        if token.len() > sasl::TOKEN_BYTES_MAX {
            return Err(failed("token too long".into()));
        }
        // Any failure closes the connection, so the state may stay `Start`.
        match std::mem::replace(&mut self.state, State::Start) {
            State::Handshaken {
                mechanism: Mechanism::Plain,
                ..
            } => {
                let p = self.authenticate(token).await?;
                self.state = State::Authenticated(p);
                Ok(Vec::new())
            }
            State::Handshaken {
                mechanism: Mechanism::OAuthBearer,
                ..
            } => {
                let ticket = sasl::parse_oauthbearer(token).map_err(|e| failed(e.into()))?;
                let p = self
                    .backend
                    .authenticate_token(ticket)
                    .await
                    .map_err(|e| failed(format!("OAUTHBEARER: {e}")))?;
                self.state = State::Authenticated(p);
                Ok(Vec::new())
            }
            State::Handshaken {
                mechanism: Mechanism::Scram(m),
                raw,
            } => {
                let first = scram::parse_client_first(token)
                    .map_err(|e| failed(format!("{}: {e}", m.name())))?;
                // An unknown user (or one without a credential) goes on
                // with a fake one and fails at the proof, as a wrong
                // password does: the exchange does not reveal who exists.
                let credential = match self.backend.scram_credential(&first.user, m).await {
                    Some(c) => c,
                    None => scram::fake_credential(&first.user, m, sasl::fake_secret()),
                };
                let (exchange, server_first) =
                    scram::ServerExchange::start(m, first, credential, &scram::nonce());
                self.state = State::ScramFinal {
                    exchange: Box::new(exchange),
                    raw,
                };
                Ok(server_first.into_bytes())
            }
            State::ScramFinal { exchange, .. } => {
                let (m, user) = (exchange.mechanism().name(), exchange.user());
                let server_final = exchange
                    .finish(token)
                    .map_err(|e| failed(format!("{m} for user {user:?}: {e}")))?;
                let p = self
                    .backend
                    .scram_principal(user)
                    .await
                    .map_err(|e| failed(format!("{m} for user {user:?}: {e}")))?;
                self.state = State::Authenticated(p);
                Ok(server_final.into_bytes())
            }
            other => {
                self.state = other;
                Err(Close::IllegalSaslState(
                    "SASL token outside an exchange".into(),
                ))
            }
        }
    }

    async fn authenticate(&self, token: &[u8]) -> Result<B::Principal, Close> {
        let plain = sasl::parse_plain(token)
            .map_err(|why| Close::Sasl(format!("authentication failed: {why}")))?;
        self.backend
            .authenticate_plain(plain.user, plain.password)
            .await
            .map_err(|why| {
                Close::Sasl(format!(
                    "authentication failed for user {:?}: {why}",
                    plain.user
                ))
            })
    }

    async fn request(&mut self, frame: Bytes) -> Result<Step, Close> {
        let r = match read_head(frame)? {
            Head::NewerApiVersions { correlation_id } => {
                // KIP-511: the client cannot know our header format yet;
                // answer in v0 so it can read the list and retry lower.
                let resp = api::api_versions(codes::UNSUPPORTED_VERSION);
                let frame = encode(ApiKey::ApiVersions, 0, correlation_id, &resp)?;
                return Ok(Step::Now(Reply::Send(frame)));
            }
            Head::Req(r) => r,
        };
        if r.api == ApiKey::Produce {
            return self.produce(r).await;
        }
        self.dispatch(r).await.map(Step::Now)
    }

    /// Queues a produce request's appends; its answer comes later.
    async fn produce(&mut self, mut r: Req) -> Result<Step, Close> {
        let sasl::State::Authenticated(p) = &self.state else {
            return Err(Close::IllegalSaslState(
                "Produce before SASL authentication".into(),
            ));
        };
        let req = r.decode()?;
        let pending = handlers::produce(&*self.backend, p, req, r.version).await;
        Ok(Step::Later(Box::pin(async move {
            match pending.await {
                Some(resp) => r.reply(&resp),
                None => Ok(Reply::Nothing),
            }
        })))
    }

    async fn dispatch(&mut self, mut r: Req) -> Result<Reply, Close> {
        match r.api {
            ApiKey::ApiVersions => {
                // The v3 body only names the client software: not needed,
                // but it must decode.
                r.decode::<kafka_protocol::messages::ApiVersionsRequest>()?;
                let resp: ApiVersionsResponse = api::api_versions(codes::NONE);
                r.reply(&resp)
            }
            ApiKey::SaslHandshake => {
                let req: SaslHandshakeRequest = r.decode()?;
                self.handshake(&r, req)
            }
            ApiKey::SaslAuthenticate => {
                let req: SaslAuthenticateRequest = r.decode()?;
                self.sasl_authenticate(&r, req).await
            }
            api => {
                let sasl::State::Authenticated(p) = &self.state else {
                    return Err(Close::IllegalSaslState(format!(
                        "{api:?} before SASL authentication"
                    )));
                };
                let (b, cfg, v) = (&*self.backend, &*self.cfg, r.version);
                let here = group_handlers::Here {
                    groups: &self.groups,
                    broker: cfg.node_id,
                };
                match api {
                    ApiKey::Metadata => {
                        let resp = handlers::metadata(b, p, cfg, r.decode()?, v).await;
                        r.reply(&resp)
                    }
                    ApiKey::Fetch => {
                        let resp = handlers::fetch(b, p, r.decode()?, v).await;
                        r.reply(&resp)
                    }
                    ApiKey::ListOffsets => {
                        let resp = handlers::list_offsets(b, p, r.decode()?, v).await;
                        r.reply(&resp)
                    }
                    ApiKey::CreateTopics => {
                        let resp = handlers::create_topics(b, p, r.decode()?, v).await;
                        r.reply(&resp)
                    }
                    ApiKey::DeleteTopics => {
                        let resp = handlers::delete_topics(b, p, r.decode()?, v).await;
                        r.reply(&resp)
                    }
                    ApiKey::CreatePartitions => {
                        let resp = handlers::create_partitions(b, p, r.decode()?, v).await;
                        r.reply(&resp)
                    }
                    ApiKey::DescribeConfigs => {
                        let resp = handlers::describe_configs(b, p, r.decode()?, v).await;
                        r.reply(&resp)
                    }
                    ApiKey::InitProducerId => {
                        let resp = handlers::init_producer_id(b, p, r.decode()?, v).await;
                        r.reply(&resp)
                    }
                    // The group APIs. JoinGroup and a follower's SyncGroup
                    // wait for the other members; only this connection waits.
                    ApiKey::FindCoordinator => {
                        let req = r.decode()?;
                        let resp = group_handlers::find_coordinator(b, p, cfg, req, v).await;
                        r.reply(&resp)
                    }
                    ApiKey::JoinGroup => {
                        let req = r.decode()?;
                        let client = group_handlers::Client {
                            client_id: &r.client_id,
                            host: &self.client_host,
                        };
                        let resp = group_handlers::join_group(b, p, here, &client, req, v).await;
                        r.reply(&resp)
                    }
                    ApiKey::SyncGroup => {
                        let req = r.decode()?;
                        let resp = group_handlers::sync_group(b, p, here, req, v).await;
                        r.reply(&resp)
                    }
                    ApiKey::Heartbeat => {
                        let req = r.decode()?;
                        let resp = group_handlers::heartbeat(b, p, here, req, v).await;
                        r.reply(&resp)
                    }
                    ApiKey::LeaveGroup => {
                        let req = r.decode()?;
                        let resp = group_handlers::leave_group(b, p, here, req, v).await;
                        r.reply(&resp)
                    }
                    ApiKey::OffsetCommit => {
                        let req = r.decode()?;
                        let resp = group_handlers::offset_commit(b, p, here, req, v).await;
                        r.reply(&resp)
                    }
                    ApiKey::OffsetFetch => {
                        let resp = group_handlers::offset_fetch(b, p, here, r.decode()?, v).await;
                        r.reply(&resp)
                    }
                    ApiKey::DescribeGroups => {
                        let req = r.decode()?;
                        let resp = group_handlers::describe_groups(b, p, here, req, v).await;
                        r.reply(&resp)
                    }
                    ApiKey::ListGroups => {
                        let req = r.decode()?;
                        let resp = group_handlers::list_groups(b, p, here, req, v).await;
                        r.reply(&resp)
                    }
                    // `api::served` admits only the keys above.
                    _ => Err(Close::Unsupported {
                        key: api as i16,
                        version: v,
                    }),
                }
            }
        }
    }

    fn handshake(&mut self, r: &Req, req: SaslHandshakeRequest) -> Result<Reply, Close> {
        if !matches!(self.state, sasl::State::Start) {
            return Err(Close::IllegalSaslState("second SaslHandshake".into()));
        }
        let mut resp = SaslHandshakeResponse::default();
        resp.mechanisms = sasl::MECHANISMS
            .iter()
            .map(|m| StrBytes::from_static_str(m))
            .collect();
        let Some(mechanism) = sasl::Mechanism::from_name(req.mechanism.as_str()) else {
            resp.error_code = codes::UNSUPPORTED_SASL_MECHANISM;
            let why = Close::Sasl(format!(
                "unsupported mechanism {:?}",
                req.mechanism.as_str()
            ));
            return Ok(Reply::SendThenClose(r.encode(&resp)?, why));
        };
        self.state = sasl::State::Handshaken {
            mechanism,
            raw: r.version == 0,
        };
        r.reply(&resp)
    }

    async fn sasl_authenticate(
        &mut self,
        r: &Req,
        req: SaslAuthenticateRequest,
    ) -> Result<Reply, Close> {
        if !matches!(
            self.state,
            sasl::State::Handshaken { raw: false, .. } | sasl::State::ScramFinal { raw: false, .. }
        ) {
            return Err(Close::IllegalSaslState(
                "SaslAuthenticate without SaslHandshake v1".into(),
            ));
        }
        let mut resp = SaslAuthenticateResponse::default();
        // session_lifetime_ms 0: no re-authentication (KIP-368) expected.
        resp.session_lifetime_ms = 0;
        match self.sasl_step(&req.auth_bytes).await {
            Ok(answer) => {
                resp.auth_bytes = Bytes::from(answer);
                r.reply(&resp)
            }
            Err(why) => {
                resp.error_code = codes::SASL_AUTHENTICATION_FAILED;
                resp.error_message = Some(StrBytes::from_static_str("authentication failed"));
                Ok(Reply::SendThenClose(r.encode(&resp)?, why))
            }
        }
    }
}

/// What a request frame's header says.
pub enum Head {
    /// ApiVersions above [`api::API_VERSIONS_MAX`]: answered in v0.
    NewerApiVersions { correlation_id: i32 },
    /// A served API and version, header decoded; the body still raw.
    Req(Req),
}

/// Reads a request frame's header: the API and version must be served
/// before the header (whose format depends on them) is decoded. Pure, so
/// the fuzz target runs exactly this.
pub fn read_head(mut frame: Bytes) -> Result<Head, Close> {
    if frame.len() < 8 {
        return Err(Close::Malformed(format!(
            "{} bytes, shorter than a request header",
            frame.len()
        )));
    }
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let Ok(api) = ApiKey::try_from(key) else {
        return Err(Close::Unsupported { key, version });
    };
    if api == ApiKey::ApiVersions && version > api::API_VERSIONS_MAX {
        return Ok(Head::NewerApiVersions { correlation_id });
    }
    if !api::served(api, version) {
        return Err(Close::Unsupported { key, version });
    }
    let header = RequestHeader::decode(&mut frame, api.request_header_version(version))
        .map_err(|e| Close::Malformed(format!("{api:?} v{version} header: {e}")))?;
    Ok(Head::Req(Req {
        api,
        version,
        correlation_id: header.correlation_id,
        client_id: header.client_id.map(|c| c.to_string()).unwrap_or_default(),
        body: frame,
    }))
}

/// A request whose header has been read.
pub struct Req {
    pub api: ApiKey,
    pub version: i16,
    pub correlation_id: i32,
    /// From the request header ("" when null).
    pub client_id: String,
    pub body: Bytes,
}

impl Req {
    /// The body as `T`: walked by `guard` first, then decoded.
    pub fn decode<T: Decodable>(&mut self) -> Result<T, Close> {
        guard::check(self.api, self.version, &self.body)
            .map_err(|e| Close::Malformed(format!("{:?} v{}: {e}", self.api, self.version)))?;
        let t = T::decode(&mut self.body, self.version)
            .map_err(|e| Close::Malformed(format!("{:?} v{}: {e}", self.api, self.version)))?;
        if self.body.has_remaining() {
            tracing::debug!(
                api = ?self.api,
                version = self.version,
                trailing_bytes = self.body.remaining(),
                "kafka: ignoring bytes after the request body"
            );
        }
        Ok(t)
    }

    fn encode<T: Encodable>(&self, body: &T) -> Result<Bytes, Close> {
        encode(self.api, self.version, self.correlation_id, body)
    }

    fn reply<T: Encodable>(&self, body: &T) -> Result<Reply, Close> {
        Ok(Reply::Send(self.encode(body)?))
    }
}

/// Response header and body in one frame. Failing here is the gateway's
/// bug (a field set that the version lacks): the connection is closed
/// rather than the process.
pub fn encode<T: Encodable>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &T,
) -> Result<Bytes, Close> {
    let mut buf = frame::start();
    let mut header = ResponseHeader::default();
    header.correlation_id = correlation_id;
    header
        .encode(&mut buf, api.response_header_version(version))
        .and_then(|()| body.encode(&mut buf, version))
        .map_err(|e| Close::Internal(format!("encoding {api:?} v{version} response: {e}")))?;
    frame::finish(buf)
}
