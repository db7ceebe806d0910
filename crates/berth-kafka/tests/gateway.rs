//! The gateway over a real TCP socket, spoken to with kafka-protocol's own
//! client encoding, against an in-memory backend.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use berth_kafka::backend::{ScramCredential, ScramMechanism};
use berth_kafka::{
    serve, Appended, Backend, Broker, Committed, Fetched, GroupRef, KafkaConfig, OffsetSpec,
    PartitionOffsets, Placement, ProduceWait, ProducerId, StreamError, TopicInfo, TopicRef,
};
use berth_security::scram::{self, Mechanism};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

const IO_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_REQUEST_BYTES: usize = 1024 * 1024;

// ------------------------------------------------------------ fake backend

#[derive(Default)]
struct Topic {
    id: [u8; 16],
    /// Per partition: (base offset, last offset, batch bytes).
    logs: Vec<Vec<(i64, i64, Bytes)>>,
    configs: Vec<(String, String)>,
}

impl Topic {
    fn info(&self, name: &str, placement: &Placement) -> TopicInfo {
        TopicInfo {
            name: name.to_string(),
            id: self.id,
            partitions: self.logs.len() as u32,
            configs: self.configs.clone(),
            placement: placement.clone(),
        }
    }
    fn hw(&self, partition: i32) -> Option<i64> {
        let log = self.logs.get(usize::try_from(partition).ok()?)?;
        Some(log.last().map_or(0, |(_, last, _)| last + 1))
    }
}

struct Fake {
    topics: Mutex<HashMap<String, Topic>>,
    next_id: Mutex<u8>,
    /// Bumped on every append: what `wait` watches.
    appends: watch::Sender<u64>,
    /// alice's SCRAM credentials (password "secret"), as the server stores them.
    scram: HashMap<ScramMechanism, ScramCredential>,
    /// Committed offsets by (group, topic, partition).
    offsets: Mutex<HashMap<(String, String, i32), Committed>>,
    /// The last producer id handed out.
    producer_id: Mutex<i64>,
    /// Groups alice may not use (besides `secret-group`).
    denied_groups: Mutex<HashSet<String>>,
    /// When set, a produce's answer waits for a permit (its appends are
    /// made at once): stands for durability that takes a while.
    durable: Option<Arc<tokio::sync::Semaphore>>,
    /// Produce requests whose appends were made.
    queued: std::sync::atomic::AtomicUsize,
    /// What `brokers` answers (empty: the gateway lists itself alone).
    brokers: Mutex<Vec<Broker>>,
    /// Where every topic's partitions are served; produce, fetch and the
    /// offsets answer NotLeader unless this broker ([`BROKER`]) leads.
    placement: Mutex<Placement>,
    /// Groups coordinated by another broker than [`BROKER`].
    coordinators: Mutex<HashMap<String, i32>>,
}

/// The broker id the tests' gateway runs as.
const BROKER: i32 = 7;

/// The OAUTHBEARER token the fake backend accepts (for alice).
const GOOD_TOKEN: &str = "berth1.alice.signature";

fn stored_credential(password: &str, m: Mechanism) -> ScramCredential {
    scram::credential(password, m).unwrap()
}

impl Fake {
    fn new() -> Self {
        Fake {
            topics: Mutex::new(HashMap::new()),
            next_id: Mutex::new(1),
            appends: watch::channel(0).0,
            offsets: Mutex::new(HashMap::new()),
            producer_id: Mutex::new(999),
            denied_groups: Mutex::new(HashSet::new()),
            durable: None,
            queued: Default::default(),
            brokers: Mutex::new(vec![]),
            placement: Mutex::new(Placement::single(BROKER)),
            coordinators: Mutex::new(HashMap::new()),
            scram: HashMap::from([
                (
                    ScramMechanism::Sha256,
                    stored_credential("secret", Mechanism::Sha256),
                ),
                (
                    ScramMechanism::Sha512,
                    stored_credential("secret", Mechanism::Sha512),
                ),
            ]),
        }
    }

    fn create(&self, name: &str, partitions: i32, configs: Vec<(String, String)>) -> TopicInfo {
        let mut id = [0u8; 16];
        let mut next = self.next_id.lock().unwrap();
        id[15] = *next;
        *next += 1;
        let topic = Topic {
            id,
            logs: vec![vec![]; partitions.max(1) as usize],
            configs,
        };
        let info = topic.info(name, &self.placement.lock().unwrap());
        self.topics.lock().unwrap().insert(name.to_string(), topic);
        info
    }

    fn hw(&self, t: &TopicRef, partition: i32) -> Option<i64> {
        self.topics.lock().unwrap().get(&t.topic)?.hw(partition)
    }

    /// Err(NotLeader) unless this broker leads the partitions.
    fn leader_here(&self) -> Result<(), StreamError> {
        match self.placement.lock().unwrap().leader {
            Some(BROKER) => Ok(()),
            other => Err(StreamError::NotLeader(format!("led by {other:?}"))),
        }
    }

    fn coordinator(&self, g: &GroupRef) -> i32 {
        let coordinators = self.coordinators.lock().unwrap();
        coordinators.get(&g.group).copied().unwrap_or(BROKER)
    }
}

fn unknown(t: &TopicRef) -> StreamError {
    StreamError::UnknownTopic(t.topic.clone())
}

impl Backend for Fake {
    type Principal = String;

    async fn authenticate_plain(&self, user: &str, password: &str) -> Result<String, String> {
        if user == "alice" && password == "secret" {
            Ok(user.to_string())
        } else {
            Err(format!("bad password for {user}"))
        }
    }

    fn resolve_group(&self, p: &String, name: &str) -> Result<GroupRef, StreamError> {
        assert_eq!(p, "alice", "every call carries the principal");
        if name.is_empty() || name.contains(' ') {
            return Err(StreamError::InvalidTopic(name.to_string()));
        }
        Ok(GroupRef {
            stream: "/default".into(),
            group: name.into(),
        })
    }

    async fn authorize_group(&self, _p: &String, g: &GroupRef) -> Result<i32, StreamError> {
        if g.group == "secret-group" || self.denied_groups.lock().unwrap().contains(&g.group) {
            return Err(StreamError::GroupDenied(g.group.clone()));
        }
        Ok(self.coordinator(g))
    }

    fn coordinates(&self, g: &GroupRef) -> bool {
        self.coordinator(g) == BROKER
    }

    fn brokers(&self) -> Vec<Broker> {
        self.brokers.lock().unwrap().clone()
    }

    async fn commit_offset(
        &self,
        p: &String,
        g: &GroupRef,
        t: &TopicRef,
        partition: i32,
        c: Committed,
    ) -> Result<(), StreamError> {
        self.authorize_group(p, g).await?;
        self.hw(t, partition).ok_or_else(|| unknown(t))?;
        let key = (g.group.clone(), t.topic.clone(), partition);
        self.offsets.lock().unwrap().insert(key, c);
        Ok(())
    }

    async fn committed_offset(
        &self,
        p: &String,
        g: &GroupRef,
        t: &TopicRef,
        partition: i32,
    ) -> Result<Option<Committed>, StreamError> {
        self.authorize_group(p, g).await?;
        self.hw(t, partition).ok_or_else(|| unknown(t))?;
        let key = (g.group.clone(), t.topic.clone(), partition);
        Ok(self.offsets.lock().unwrap().get(&key).cloned())
    }

    async fn group_offsets(
        &self,
        p: &String,
        g: &GroupRef,
    ) -> Result<Vec<(String, i32, Committed)>, StreamError> {
        self.authorize_group(p, g).await?;
        let mut all: Vec<(String, i32, Committed)> = self
            .offsets
            .lock()
            .unwrap()
            .iter()
            .filter(|((group, _, _), _)| *group == g.group)
            .map(|((_, topic, partition), c)| (topic.clone(), *partition, c.clone()))
            .collect();
        all.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        Ok(all)
    }

    async fn init_producer_id(&self, _p: &String) -> Result<ProducerId, StreamError> {
        let mut last = self.producer_id.lock().unwrap();
        *last += 1;
        Ok(ProducerId {
            id: *last,
            epoch: 0,
        })
    }

    async fn scram_credential(&self, user: &str, m: ScramMechanism) -> Option<ScramCredential> {
        (user == "alice").then(|| self.scram[&m].clone())
    }

    async fn scram_principal(&self, user: &str) -> Result<String, String> {
        assert_eq!(user, "alice", "only after a proof that checked out");
        Ok(user.to_string())
    }

    async fn authenticate_token(&self, token: &str) -> Result<String, String> {
        if token == GOOD_TOKEN {
            Ok("alice".to_string())
        } else {
            Err("invalid ticket".to_string())
        }
    }

    fn resolve(&self, p: &String, name: &str) -> Result<TopicRef, StreamError> {
        assert_eq!(p, "alice", "every call carries the principal");
        if name.is_empty() || name.contains(' ') {
            return Err(StreamError::InvalidTopic(name.to_string()));
        }
        if name == "secret-topic" {
            return Err(StreamError::TopicDenied(name.to_string()));
        }
        Ok(TopicRef {
            stream: "/default".into(),
            topic: name.into(),
        })
    }

    async fn topic(
        &self,
        _p: &String,
        t: &TopicRef,
        name: &str,
        auto_create: bool,
    ) -> Result<TopicInfo, StreamError> {
        let placement = self.placement.lock().unwrap().clone();
        if let Some(topic) = self.topics.lock().unwrap().get(&t.topic) {
            return Ok(topic.info(name, &placement));
        }
        if auto_create {
            Ok(self.create(&t.topic, 2, vec![]))
        } else {
            Err(unknown(t))
        }
    }

    async fn default_topics(&self, _p: &String) -> Result<Vec<TopicInfo>, StreamError> {
        let topics = self.topics.lock().unwrap();
        let placement = self.placement.lock().unwrap().clone();
        Ok(topics.iter().map(|(n, t)| t.info(n, &placement)).collect())
    }

    async fn create_topic(
        &self,
        _p: &String,
        t: &TopicRef,
        name: &str,
        partitions: i32,
        configs: Vec<(String, String)>,
    ) -> Result<TopicInfo, StreamError> {
        if self.topics.lock().unwrap().contains_key(&t.topic) {
            return Err(StreamError::TopicExists(name.into()));
        }
        Ok(self.create(&t.topic, partitions, configs))
    }

    async fn delete_topic(&self, _p: &String, t: &TopicRef) -> Result<(), StreamError> {
        match self.topics.lock().unwrap().remove(&t.topic) {
            Some(_) => Ok(()),
            None => Err(unknown(t)),
        }
    }

    async fn add_partitions(
        &self,
        _p: &String,
        t: &TopicRef,
        count: u32,
    ) -> Result<(), StreamError> {
        let mut topics = self.topics.lock().unwrap();
        let topic = topics.get_mut(&t.topic).ok_or_else(|| unknown(t))?;
        if count as usize <= topic.logs.len() {
            return Err(StreamError::InvalidPartitions(format!("{count}")));
        }
        topic.logs.resize(count as usize, vec![]);
        Ok(())
    }

    async fn produce(
        &self,
        _p: &String,
        t: &TopicRef,
        partition: i32,
        records: Bytes,
    ) -> Result<Appended, StreamError> {
        self.leader_here()?;
        let mut topics = self.topics.lock().unwrap();
        let topic = topics.get_mut(&t.topic).ok_or_else(|| unknown(t))?;
        let mut next = topic.hw(partition).ok_or_else(|| unknown(t))?;
        let log = &mut topic.logs[partition as usize];
        let base_offset = next;
        let mut rest = records;
        let mut batches = vec![];
        while !rest.is_empty() {
            if rest.len() < 61 || rest[16] != 2 {
                return Err(StreamError::CorruptBatch("not a record batch v2".into()));
            }
            let len = 12 + i32::from_be_bytes(rest[8..12].try_into().unwrap()) as usize;
            if len < 61 || len > rest.len() {
                return Err(StreamError::CorruptBatch("bad batch length".into()));
            }
            let mut batch = BytesMut::from(&rest.split_to(len)[..]);
            let last_delta = i32::from_be_bytes(batch[23..27].try_into().unwrap()) as i64;
            // The base offset is outside the CRC: the broker assigns it.
            batch[0..8].copy_from_slice(&next.to_be_bytes());
            batches.push((next, next + last_delta, batch.freeze()));
            next += last_delta + 1;
        }
        log.extend(batches);
        drop(topics);
        self.appends.send_modify(|n| *n += 1);
        Ok(Appended {
            base_offset,
            log_start: 0,
            log_append_time_ms: -1,
        })
    }

    async fn produce_partitions(
        &self,
        p: &String,
        t: &TopicRef,
        parts: Vec<(i32, Bytes)>,
    ) -> ProduceWait {
        let mut results = Vec::new();
        for (part, records) in parts {
            results.push(self.produce(p, t, part, records).await);
        }
        self.queued
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let durable = self.durable.clone();
        Box::pin(async move {
            if let Some(gate) = durable {
                gate.acquire().await.unwrap().forget();
            }
            results
        })
    }

    async fn fetch(
        &self,
        _p: &String,
        t: &TopicRef,
        partition: i32,
        offset: i64,
        max_bytes: usize,
    ) -> Result<Fetched, StreamError> {
        self.leader_here()?;
        let topics = self.topics.lock().unwrap();
        let topic = topics.get(&t.topic).ok_or_else(|| unknown(t))?;
        let hw = topic.hw(partition).ok_or_else(|| unknown(t))?;
        if offset < 0 || offset > hw {
            return Err(StreamError::OffsetOutOfRange(format!("{offset}")));
        }
        let mut batches = vec![];
        let mut size = 0;
        for (_, last, bytes) in &topic.logs[partition as usize] {
            if *last < offset {
                continue;
            }
            if !batches.is_empty() && size + bytes.len() > max_bytes {
                break;
            }
            size += bytes.len();
            batches.push(bytes.clone());
        }
        Ok(Fetched {
            offsets: PartitionOffsets {
                log_start: 0,
                high_watermark: hw,
            },
            batches,
        })
    }

    async fn wait(&self, t: &TopicRef, partition: i32, offset: i64, max_wait: Duration) {
        let mut rx = self.appends.subscribe();
        let deadline = tokio::time::Instant::now() + max_wait;
        loop {
            if self.hw(t, partition).is_none_or(|hw| hw > offset) {
                return;
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return;
            }
        }
    }

    async fn list_offset(
        &self,
        p: &String,
        t: &TopicRef,
        partition: i32,
        spec: OffsetSpec,
    ) -> Result<i64, StreamError> {
        let offsets = self.offsets(p, t, partition).await?;
        Ok(match spec {
            OffsetSpec::Earliest => offsets.log_start,
            OffsetSpec::Latest => offsets.high_watermark,
            OffsetSpec::Timestamp(_) => offsets.log_start,
        })
    }

    async fn offsets(
        &self,
        _p: &String,
        t: &TopicRef,
        partition: i32,
    ) -> Result<PartitionOffsets, StreamError> {
        self.leader_here()?;
        let hw = self.hw(t, partition).ok_or_else(|| unknown(t))?;
        Ok(PartitionOffsets {
            log_start: 0,
            high_watermark: hw,
        })
    }
}

// ------------------------------------------------------------------ server

struct Server {
    addr: SocketAddr,
    backend: Arc<Fake>,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start() -> Server {
    start_with(Fake::new()).await
}

async fn start_with(backend: Fake) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = KafkaConfig {
        node_id: 7,
        advertised_host: "kafka.test".into(),
        advertised_port: 19092,
        cluster_id: "test-cluster".into(),
        max_request_bytes: MAX_REQUEST_BYTES,
        // Short sessions keep the expiry tests quick.
        group_session_timeout_ms_min: 100,
        group_session_timeout_ms_max: 60_000,
    };
    let (tx, rx) = oneshot::channel();
    let backend = Arc::new(backend);
    let done = tokio::spawn(serve(listener, None, backend.clone(), cfg, async {
        let _ = rx.await;
    }));
    Server {
        addr,
        backend,
        stop: Some(tx),
        done,
    }
}

// ------------------------------------------------------------------ client

struct Client {
    s: TcpStream,
    correlation_id: i32,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        Client {
            s: TcpStream::connect(addr).await.unwrap(),
            correlation_id: 100,
        }
    }

    async fn authenticated(addr: SocketAddr) -> Client {
        let mut c = Client::connect(addr).await;
        let h = c.handshake(1, "PLAIN").await;
        assert_eq!(h.error_code, 0);
        let a = c.authenticate(b"\0alice\0secret").await;
        assert_eq!(a.error_code, 0, "{:?}", a.error_message);
        c
    }

    async fn write_frame(&mut self, body: &[u8]) {
        let mut buf = BytesMut::new();
        buf.put_i32(body.len() as i32);
        buf.put_slice(body);
        self.s.write_all(&buf).await.unwrap();
    }

    /// The next frame, or None when the server closed the connection.
    async fn read_frame(&mut self) -> Option<Bytes> {
        let mut size = [0u8; 4];
        let read = tokio::time::timeout(IO_TIMEOUT, self.s.read_exact(&mut size))
            .await
            .expect("server neither answered nor closed");
        read.ok()?;
        let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
        self.s.read_exact(&mut body).await.ok()?;
        Some(body.into())
    }

    async fn send<R: Request>(&mut self, version: i16, req: &R) -> i32 {
        self.correlation_id += 1;
        let mut header = RequestHeader::default();
        header.request_api_key = R::KEY;
        header.request_api_version = version;
        header.correlation_id = self.correlation_id;
        header.client_id = Some(StrBytes::from_static_str("gateway-test"));
        let mut buf = BytesMut::new();
        header.encode(&mut buf, R::header_version(version)).unwrap();
        req.encode(&mut buf, version).unwrap();
        self.write_frame(&buf).await;
        self.correlation_id
    }

    async fn recv<R: Request>(&mut self, version: i16, correlation_id: i32) -> R::Response {
        let mut frame = self.read_frame().await.expect("connection closed");
        let header =
            ResponseHeader::decode(&mut frame, R::Response::header_version(version)).unwrap();
        assert_eq!(header.correlation_id, correlation_id);
        let resp = R::Response::decode(&mut frame, version).unwrap();
        assert!(!frame.has_remaining(), "trailing bytes in response");
        resp
    }

    async fn call<R: Request>(&mut self, version: i16, req: &R) -> R::Response {
        let id = self.send(version, req).await;
        self.recv::<R>(version, id).await
    }

    async fn handshake(&mut self, version: i16, mechanism: &'static str) -> SaslHandshakeResponse {
        let mut req = SaslHandshakeRequest::default();
        req.mechanism = StrBytes::from_static_str(mechanism);
        self.call(version, &req).await
    }

    async fn authenticate(&mut self, token: &'static [u8]) -> SaslAuthenticateResponse {
        self.sasl(token.to_vec()).await
    }

    async fn sasl(&mut self, token: Vec<u8>) -> SaslAuthenticateResponse {
        let mut req = SaslAuthenticateRequest::default();
        req.auth_bytes = Bytes::from(token);
        self.call(2, &req).await
    }

    /// True when the server closes the connection (EOF or reset).
    async fn closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        match tokio::time::timeout(IO_TIMEOUT, self.s.read(&mut byte)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(_)) | Err(_) => false,
        }
    }

    async fn metadata(&mut self, version: i16, names: &[&str], auto: bool) -> MetadataResponse {
        let mut req = MetadataRequest::default();
        req.topics = Some(
            names
                .iter()
                .map(|n| {
                    let mut t = MetadataRequestTopic::default();
                    t.name = Some(TopicName(StrBytes::from_string(n.to_string())));
                    t
                })
                .collect(),
        );
        if version >= 4 {
            req.allow_auto_topic_creation = auto;
        }
        self.call(version, &req).await
    }

    async fn produce(&mut self, topic: &str, partition: i32, records: Bytes, acks: i16) -> i32 {
        let mut part = PartitionProduceData::default();
        part.index = partition;
        part.records = Some(records);
        let mut t = TopicProduceData::default();
        t.name = name(topic);
        t.partition_data = vec![part];
        let mut req = ProduceRequest::default();
        req.acks = acks;
        req.timeout_ms = 5000;
        req.topic_data = vec![t];
        self.send(7, &req).await
    }

    async fn produce_ok(&mut self, topic: &str, partition: i32, records: Bytes) -> i64 {
        let id = self.produce(topic, partition, records, -1).await;
        let resp = self.recv::<ProduceRequest>(7, id).await;
        let p = &resp.responses[0].partition_responses[0];
        assert_eq!(p.error_code, 0);
        p.base_offset
    }

    async fn fetch(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_wait_ms: i32,
        max_bytes: i32,
    ) -> fetch_response::PartitionData {
        let mut part = FetchPartition::default();
        part.partition = partition;
        part.fetch_offset = offset;
        part.partition_max_bytes = 1024 * 1024;
        let mut t = FetchTopic::default();
        t.topic = name(topic);
        t.partitions = vec![part];
        let mut req = FetchRequest::default();
        req.replica_id = BrokerId(-1);
        req.max_wait_ms = max_wait_ms;
        req.min_bytes = 1;
        req.max_bytes = max_bytes;
        req.session_epoch = -1;
        req.topics = vec![t];
        let resp = self.call(12, &req).await;
        assert_eq!(resp.error_code, 0);
        assert_eq!(resp.session_id, 0);
        assert_eq!(resp.responses.len(), 1);
        assert_eq!(resp.responses[0].topic, name(topic));
        resp.responses[0].partitions[0].clone()
    }
}

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

/// A record batch v2 as a producer builds it (offsets from 0).
fn batch(values: &[&str]) -> Bytes {
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, v)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // offset - sequence must be constant for one batch; the
            // batch's base sequence is then -1 (no idempotence).
            sequence: i as i32 - 1,
            timestamp: 1_700_000_000_000 + i as i64,
            key: None,
            value: Some(Bytes::copy_from_slice(v.as_bytes())),
            headers: IndexMap::new(),
        })
        .collect();
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut buf, &records, &options).unwrap();
    let buf = buf.freeze();
    let batch_len = 12 + i32::from_be_bytes(buf[8..12].try_into().unwrap()) as usize;
    assert_eq!(batch_len, buf.len(), "one batch");
    buf
}

/// (offset, value) of every record in fetched bytes.
fn records(bytes: &Bytes) -> Vec<(i64, String)> {
    let mut buf = bytes.clone();
    RecordBatchDecoder::decode_all(&mut buf)
        .unwrap()
        .into_iter()
        .flat_map(|set| set.records)
        .map(|r| {
            let v = String::from_utf8(r.value.unwrap().to_vec()).unwrap();
            (r.offset, v)
        })
        .collect()
}

// ------------------------------------------------------------------- tests

/// Consumer groups, offsets and InitProducerId.
#[path = "gateway/groups.rs"]
mod groups;

#[tokio::test]
async fn api_versions_lists_exactly_the_served_apis() {
    let server = start().await;
    let mut c = Client::connect(server.addr).await;
    let mut req = ApiVersionsRequest::default();
    req.client_software_name = StrBytes::from_static_str("gateway-test");
    req.client_software_version = StrBytes::from_static_str("1.0");
    let resp = c.call(3, &req).await;
    assert_eq!(resp.error_code, 0);
    let ranges: HashMap<i16, (i16, i16)> = resp
        .api_keys
        .iter()
        .map(|k| (k.api_key, (k.min_version, k.max_version)))
        .collect();
    assert_eq!(ranges[&(ApiKey::Produce as i16)], (0, 9));
    assert_eq!(ranges[&(ApiKey::Fetch as i16)], (4, 12));
    assert_eq!(ranges[&(ApiKey::Metadata as i16)], (0, 12));
    assert_eq!(ranges[&(ApiKey::ApiVersions as i16)], (0, 3));
    assert_eq!(ranges[&(ApiKey::SaslHandshake as i16)], (0, 1));
    assert_eq!(ranges[&(ApiKey::SaslAuthenticate as i16)], (0, 2));
    assert_eq!(ranges[&(ApiKey::FindCoordinator as i16)], (0, 4));
    assert_eq!(ranges[&(ApiKey::JoinGroup as i16)], (0, 9));
    assert_eq!(ranges[&(ApiKey::SyncGroup as i16)], (0, 5));
    assert_eq!(ranges[&(ApiKey::Heartbeat as i16)], (0, 4));
    assert_eq!(ranges[&(ApiKey::LeaveGroup as i16)], (0, 5));
    assert_eq!(ranges[&(ApiKey::OffsetCommit as i16)], (2, 8));
    assert_eq!(ranges[&(ApiKey::OffsetFetch as i16)], (1, 8));
    assert_eq!(ranges[&(ApiKey::DescribeGroups as i16)], (0, 5));
    assert_eq!(ranges[&(ApiKey::ListGroups as i16)], (0, 4));
    assert_eq!(ranges[&(ApiKey::InitProducerId as i16)], (0, 4));
    assert!(!ranges.contains_key(&(ApiKey::EndTxn as i16)));
    assert_eq!(ranges.len(), 21);

    // Older versions on the same connection, before authentication too.
    let resp = c.call(0, &ApiVersionsRequest::default()).await;
    assert_eq!(resp.api_keys.len(), 21);
}

#[tokio::test]
async fn api_versions_too_new_gets_v0_error_with_the_list() {
    let server = start().await;
    let mut c = Client::connect(server.addr).await;
    // v4 does not exist yet: encode as v3 would be, with version 4.
    let mut header = RequestHeader::default();
    header.request_api_key = ApiKey::ApiVersions as i16;
    header.request_api_version = 4;
    header.correlation_id = 42;
    let mut buf = BytesMut::new();
    header.encode(&mut buf, 2).unwrap();
    ApiVersionsRequest::default().encode(&mut buf, 3).unwrap();
    c.write_frame(&buf).await;
    let mut frame = c.read_frame().await.unwrap();
    let header = ResponseHeader::decode(&mut frame, 0).unwrap();
    assert_eq!(header.correlation_id, 42);
    let resp = ApiVersionsResponse::decode(&mut frame, 0).unwrap();
    assert_eq!(resp.error_code, 35);
    assert!(resp
        .api_keys
        .iter()
        .any(|k| k.api_key == ApiKey::ApiVersions as i16 && k.max_version == 3));
    // The client retries lower on the same connection.
    let resp = c.call(3, &ApiVersionsRequest::default()).await;
    assert_eq!(resp.error_code, 0);
}

#[tokio::test]
async fn sasl_plain_success_then_requests_work() {
    let server = start().await;
    let mut c = Client::authenticated(server.addr).await;
    let resp = c.metadata(12, &["events"], true).await;
    assert_eq!(resp.topics[0].error_code, 0);
}

#[tokio::test]
async fn sasl_wrong_password_is_refused_and_closed() {
    let server = start().await;
    let mut c = Client::connect(server.addr).await;
    let h = c.handshake(1, "PLAIN").await;
    assert_eq!(h.error_code, 0);
    assert_eq!(h.mechanisms, all_mechanisms());
    let a = c.authenticate(b"\0alice\0wrong").await;
    assert_eq!(a.error_code, 58);
    assert_eq!(a.error_message.as_deref(), Some("authentication failed"));
    assert!(c.closed().await);
}

#[tokio::test]
async fn sasl_other_mechanism_is_refused_with_the_enabled_list() {
    let server = start().await;
    let mut c = Client::connect(server.addr).await;
    let h = c.handshake(1, "GSSAPI").await;
    assert_eq!(h.error_code, 33);
    assert_eq!(h.mechanisms, all_mechanisms());
    assert!(c.closed().await);
}

fn all_mechanisms() -> Vec<StrBytes> {
    ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]
        .into_iter()
        .map(StrBytes::from_static_str)
        .collect()
}

// ------------------------------------------------------------------ SCRAM

/// The client side of a SCRAM exchange, as a Kafka client runs it.
struct ScramClient {
    m: Mechanism,
    password: &'static str,
    client_first_bare: String,
    nonce: String,
}

impl ScramClient {
    fn new(m: Mechanism, user: &str, password: &'static str) -> ScramClient {
        let nonce = "fyko+d2lbbFgONRv9qkxdawL".to_string();
        ScramClient {
            m,
            password,
            client_first_bare: format!("n={user},r={nonce}"),
            nonce,
        }
    }

    fn first(&self) -> Vec<u8> {
        format!("n,,{}", self.client_first_bare).into_bytes()
    }

    /// Checks the server-first message; returns the client-final message
    /// and the server-final message a genuine server must answer with.
    fn finish(&self, server_first: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let server_first = std::str::from_utf8(server_first).unwrap();
        let attrs: HashMap<&str, &str> = server_first
            .split(',')
            .map(|a| a.split_once('=').unwrap())
            .collect();
        let nonce = attrs["r"];
        assert!(nonce.starts_with(&self.nonce) && nonce.len() >= self.nonce.len() + 16);
        let salt = B64.decode(attrs["s"]).unwrap();
        let iterations: u32 = attrs["i"].parse().unwrap();
        assert!(iterations >= 4096, "Kafka clients refuse fewer iterations");
        let salted = self
            .m
            .salted_password(self.password.as_bytes(), &salt, iterations);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let proof = scram::client_proof(self.m, &salted, auth_message.as_bytes());
        let server_key = self.m.hmac(&salted, b"Server Key");
        let v = scram::server_signature(self.m, &server_key, auth_message.as_bytes());
        (
            format!("{without_proof},p={}", B64.encode(proof)).into_bytes(),
            format!("v={}", B64.encode(v)).into_bytes(),
        )
    }
}

#[tokio::test]
async fn sasl_scram_exchanges_succeed() {
    let server = start().await;
    for m in Mechanism::ALL {
        let mut c = Client::connect(server.addr).await;
        assert_eq!(c.handshake(1, m.name()).await.error_code, 0);
        let scram = ScramClient::new(m, "alice", "secret");
        let first = c.sasl(scram.first()).await;
        assert_eq!(first.error_code, 0, "{:?}", first.error_message);
        let (client_final, server_final) = scram.finish(&first.auth_bytes);
        let last = c.sasl(client_final).await;
        assert_eq!(last.error_code, 0, "{:?}", last.error_message);
        assert_eq!(&last.auth_bytes[..], &server_final[..], "{}", m.name());
        let resp = c.metadata(12, &["scram"], true).await;
        assert_eq!(resp.topics[0].error_code, 0);
    }
}

/// A wrong password and an unknown user fail at the same step, with the
/// same answers: the exchange does not tell who exists.
#[tokio::test]
async fn sasl_scram_wrong_password_and_unknown_user_fail_alike() {
    let server = start().await;
    let mut answers = vec![];
    for (user, password) in [("alice", "wrong"), ("mallory", "secret")] {
        let mut c = Client::connect(server.addr).await;
        assert_eq!(c.handshake(1, "SCRAM-SHA-256").await.error_code, 0);
        let scram = ScramClient::new(Mechanism::Sha256, user, password);
        let first = c.sasl(scram.first()).await;
        assert_eq!(first.error_code, 0, "{user}: the first round succeeds");
        let fields: Vec<&str> = std::str::from_utf8(&first.auth_bytes)
            .unwrap()
            .split(',')
            .collect();
        let salt_bytes = B64.decode(&fields[1][2..]).unwrap().len();
        let (client_final, _) = scram.finish(&first.auth_bytes);
        let last = c.sasl(client_final).await;
        assert_eq!(last.error_code, 58, "{user}");
        assert!(c.closed().await, "{user}");
        answers.push((salt_bytes, fields[2].to_string(), last));
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(
        answers[0].2.error_message.as_deref(),
        Some("authentication failed")
    );

    // An unknown user sees the same salt every time, as a real user does.
    let mut salts = vec![];
    for _ in 0..2 {
        let mut c = Client::connect(server.addr).await;
        assert_eq!(c.handshake(1, "SCRAM-SHA-512").await.error_code, 0);
        let first = c
            .sasl(ScramClient::new(Mechanism::Sha512, "mallory", "x").first())
            .await;
        salts.push(
            first
                .auth_bytes
                .split(|b| *b == b',')
                .nth(1)
                .unwrap()
                .to_vec(),
        );
    }
    assert_eq!(salts[0], salts[1]);
}

#[tokio::test]
async fn sasl_scram_refuses_bad_first_messages() {
    let server = start().await;
    for bad in [
        &b"p=tls-unique,,n=alice,r=abc"[..],
        b"n,,n=alice,r=abc,tokenauth=true",
        b"n,a=bob,n=alice,r=abc",
        b"garbage",
    ] {
        let mut c = Client::connect(server.addr).await;
        assert_eq!(c.handshake(1, "SCRAM-SHA-256").await.error_code, 0);
        let a = c.sasl(bad.to_vec()).await;
        assert_eq!(a.error_code, 58, "{bad:?}");
        assert!(c.closed().await, "{bad:?}");
    }

    // A replayed client-first instead of the client-final fails too.
    let mut c = Client::connect(server.addr).await;
    assert_eq!(c.handshake(1, "SCRAM-SHA-256").await.error_code, 0);
    let scram = ScramClient::new(Mechanism::Sha256, "alice", "secret");
    assert_eq!(c.sasl(scram.first()).await.error_code, 0);
    assert_eq!(c.sasl(scram.first()).await.error_code, 58);
    assert!(c.closed().await);
}

#[tokio::test]
async fn sasl_scram_over_handshake_v0_raw_tokens() {
    let server = start().await;
    let mut c = Client::connect(server.addr).await;
    assert_eq!(c.handshake(0, "SCRAM-SHA-512").await.error_code, 0);
    let scram = ScramClient::new(Mechanism::Sha512, "alice", "secret");
    c.write_frame(&scram.first()).await;
    let server_first = c.read_frame().await.unwrap();
    let (client_final, server_final) = scram.finish(&server_first);
    c.write_frame(&client_final).await;
    assert_eq!(c.read_frame().await.unwrap(), server_final);
    let resp = c.metadata(1, &["raw-scram"], true).await;
    assert_eq!(resp.topics[0].error_code, 0);

    let mut bad = Client::connect(server.addr).await;
    assert_eq!(bad.handshake(0, "SCRAM-SHA-512").await.error_code, 0);
    let scram = ScramClient::new(Mechanism::Sha512, "alice", "wrong");
    bad.write_frame(&scram.first()).await;
    let server_first = bad.read_frame().await.unwrap();
    bad.write_frame(&scram.finish(&server_first).0).await;
    assert!(bad.closed().await);
}

// ------------------------------------------------------------ OAUTHBEARER

#[tokio::test]
async fn sasl_oauthbearer_takes_a_ticket() {
    let server = start().await;
    let mut c = Client::connect(server.addr).await;
    assert_eq!(c.handshake(1, "OAUTHBEARER").await.error_code, 0);
    let msg = format!("n,,\x01auth=Bearer {GOOD_TOKEN}\x01\x01");
    let a = c.sasl(msg.into_bytes()).await;
    assert_eq!(a.error_code, 0, "{:?}", a.error_message);
    assert!(a.auth_bytes.is_empty());
    let resp = c.metadata(12, &["oauth"], true).await;
    assert_eq!(resp.topics[0].error_code, 0);

    for bad in [
        "n,,\x01auth=Bearer berth1.forged.signature\x01\x01".to_string(),
        format!("n,,\x01auth=Bearer {GOOD_TOKEN}\x01"),
        format!("n,a=bob,\x01auth=Bearer {GOOD_TOKEN}\x01\x01"),
    ] {
        let mut c = Client::connect(server.addr).await;
        assert_eq!(c.handshake(1, "OAUTHBEARER").await.error_code, 0);
        let a = c.sasl(bad.clone().into_bytes()).await;
        assert_eq!(a.error_code, 58, "{bad:?}");
        assert!(c.closed().await, "{bad:?}");
    }

    // Handshake v0: the bare initial response, answered with an empty token.
    let mut c = Client::connect(server.addr).await;
    assert_eq!(c.handshake(0, "OAUTHBEARER").await.error_code, 0);
    c.write_frame(format!("n,,\x01auth=Bearer {GOOD_TOKEN}\x01\x01").as_bytes())
        .await;
    assert!(c.read_frame().await.unwrap().is_empty());
    assert_eq!(
        c.metadata(1, &["oauth"], true).await.topics[0].error_code,
        0
    );
}

#[tokio::test]
async fn sasl_handshake_v0_takes_a_raw_token() {
    let server = start().await;
    let mut c = Client::connect(server.addr).await;
    assert_eq!(c.handshake(0, "PLAIN").await.error_code, 0);
    c.write_frame(b"\0alice\0secret").await;
    let answer = c.read_frame().await.unwrap();
    assert!(answer.is_empty(), "PLAIN answers with an empty token");
    let resp = c.metadata(1, &["raw"], true).await;
    assert_eq!(resp.topics[0].error_code, 0);

    let mut bad = Client::connect(server.addr).await;
    assert_eq!(bad.handshake(0, "PLAIN").await.error_code, 0);
    bad.write_frame(b"\0alice\0wrong").await;
    assert!(bad.closed().await);
}

#[tokio::test]
async fn requests_before_authentication_close_the_connection() {
    let server = start().await;
    let mut c = Client::connect(server.addr).await;
    let req = MetadataRequest::default();
    c.send(12, &req).await;
    assert!(c.closed().await);

    // Also between handshake and authenticate.
    let mut c = Client::connect(server.addr).await;
    assert_eq!(c.handshake(1, "PLAIN").await.error_code, 0);
    c.send(12, &req).await;
    assert!(c.closed().await);

    // And SaslAuthenticate without a handshake.
    let mut c = Client::connect(server.addr).await;
    let mut auth = SaslAuthenticateRequest::default();
    auth.auth_bytes = Bytes::from_static(b"\0alice\0secret");
    c.send(2, &auth).await;
    assert!(c.closed().await);
}

#[tokio::test]
async fn metadata_auto_creates_and_describes_one_broker() {
    let server = start().await;
    let mut c = Client::authenticated(server.addr).await;

    let resp = c.metadata(4, &["missing"], false).await;
    assert_eq!(resp.topics[0].error_code, 3);

    let resp = c.metadata(12, &["events"], true).await;
    assert_eq!(resp.brokers.len(), 1);
    assert_eq!(resp.brokers[0].node_id, BrokerId(7));
    assert_eq!(resp.brokers[0].host.as_str(), "kafka.test");
    assert_eq!(resp.brokers[0].port, 19092);
    assert_eq!(resp.brokers[0].rack, None);
    assert_eq!(resp.cluster_id.as_deref(), Some("test-cluster"));
    assert_eq!(resp.controller_id, BrokerId(7));
    let t = &resp.topics[0];
    assert_eq!(t.error_code, 0);
    assert_eq!(t.name, Some(name("events")));
    assert!(!t.topic_id.is_nil());
    assert_eq!(t.partitions.len(), 2);
    for (i, p) in t.partitions.iter().enumerate() {
        assert_eq!(p.partition_index, i as i32);
        assert_eq!(p.leader_id, BrokerId(7));
        assert_eq!(p.leader_epoch, 0);
        assert_eq!(p.replica_nodes, vec![BrokerId(7)]);
        assert_eq!(p.isr_nodes, vec![BrokerId(7)]);
    }

    let resp = c.metadata(12, &["secret-topic", "bad name"], true).await;
    assert_eq!(resp.topics[0].error_code, 29);
    assert_eq!(resp.topics[1].error_code, 17);

    // v0: an empty list is every topic; v1+: null is.
    let resp = c.metadata(0, &[], false).await;
    assert_eq!(resp.topics.len(), 1);
    let mut all = MetadataRequest::default();
    all.topics = None;
    let resp = c.call(9, &all).await;
    assert_eq!(resp.topics.len(), 1);
    assert_eq!(resp.topics[0].name, Some(name("events")));
}

fn broker(id: i32, host: &str, port: i32, rack: Option<&str>) -> Broker {
    Broker {
        id,
        host: host.into(),
        port,
        rack: rack.map(Into::into),
    }
}

/// Several brokers: Metadata lists the backend's brokers (this one added
/// when missing) and names each partition's leader, epoch, replicas, ISR
/// and offline replicas as the backend places them; a leader that is none
/// or not a listed broker is LEADER_NOT_AVAILABLE.
#[tokio::test]
async fn metadata_names_the_leaders_and_brokers_of_a_cluster() {
    let server = start().await;
    let b = &server.backend;
    *b.brokers.lock().unwrap() = vec![
        broker(9, "n9.test", 9093, Some("zone-c")),
        broker(8, "n8.test", 9092, Some("zone-b")),
    ];
    *b.placement.lock().unwrap() = Placement {
        leader: Some(8),
        leader_epoch: 5,
        replicas: vec![7, 8, 9],
        isr: vec![7, 8],
        offline: vec![9],
    };
    let mut c = Client::authenticated(server.addr).await;
    let resp = c.metadata(12, &["events"], true).await;
    let listed: Vec<(i32, &str, i32, Option<&str>)> = resp
        .brokers
        .iter()
        .map(|x| (x.node_id.0, x.host.as_str(), x.port, x.rack.as_deref()))
        .collect();
    assert_eq!(
        listed,
        [
            (7, "kafka.test", 19092, None),
            (8, "n8.test", 9092, Some("zone-b")),
            (9, "n9.test", 9093, Some("zone-c")),
        ],
        "sorted, this broker added"
    );
    assert_eq!(resp.controller_id, BrokerId(7));
    let ids = |v: &[i32]| v.iter().copied().map(BrokerId).collect::<Vec<_>>();
    let t = &resp.topics[0];
    assert_eq!((t.error_code, t.partitions.len()), (0, 2));
    for p in &t.partitions {
        assert_eq!(p.error_code, 0);
        assert_eq!((p.leader_id, p.leader_epoch), (BrokerId(8), 5));
        assert_eq!(p.replica_nodes, ids(&[7, 8, 9]));
        assert_eq!(p.isr_nodes, ids(&[7, 8]));
        assert_eq!(p.offline_replicas, ids(&[9]));
    }
    // Versions before the epoch (v7) and offline replicas (v5) leave them out.
    let resp = c.metadata(1, &["events"], false).await;
    assert_eq!(resp.brokers.len(), 3);
    assert_eq!(resp.topics[0].partitions[0].leader_id, BrokerId(8));

    // No leader, or one clients cannot reach: LEADER_NOT_AVAILABLE.
    for leader in [None, Some(10)] {
        b.placement.lock().unwrap().leader = leader;
        let resp = c.metadata(12, &["events"], false).await;
        let t = &resp.topics[0];
        assert_eq!(t.error_code, 0, "{leader:?}");
        for p in &t.partitions {
            assert_eq!(p.error_code, 5, "{leader:?}");
            assert_eq!((p.leader_id, p.leader_epoch), (BrokerId(-1), -1));
            assert_eq!(p.replica_nodes, ids(&[7, 8, 9]));
        }
    }
}

/// Produce, Fetch and ListOffsets sent to a broker that does not lead the
/// partition get NOT_LEADER_OR_FOLLOWER for it (nothing is written), so
/// clients refresh their metadata; the leader serves them.
#[tokio::test]
async fn data_requests_to_a_follower_get_not_leader_or_follower() {
    let server = start().await;
    let mut c = Client::authenticated(server.addr).await;
    c.metadata(12, &["events"], true).await;
    assert_eq!(c.produce_ok("events", 0, batch(&["a"])).await, 0);
    *server.backend.brokers.lock().unwrap() = vec![broker(8, "n8.test", 9092, None)];
    server.backend.placement.lock().unwrap().leader = Some(8);

    let id = c.produce("events", 0, batch(&["b"]), -1).await;
    let resp = c.recv::<ProduceRequest>(7, id).await;
    let p = &resp.responses[0].partition_responses[0];
    assert_eq!((p.error_code, p.base_offset), (6, -1));
    assert!(p.error_message.is_none(), "v7 has no message");
    let p = c.fetch("events", 0, 0, 0, 1024 * 1024).await;
    assert_eq!(p.error_code, 6);
    assert_eq!(p.records.as_ref().map(Bytes::len), Some(0));
    let mut t = ListOffsetsTopic::default();
    t.name = name("events");
    let mut part = ListOffsetsPartition::default();
    part.timestamp = -1;
    t.partitions = vec![part];
    let mut req = ListOffsetsRequest::default();
    req.replica_id = BrokerId(-1);
    req.topics = vec![t];
    assert_eq!(c.call(7, &req).await.topics[0].partitions[0].error_code, 6);

    // Back on the leader: served, and the refused batch was not written.
    server.backend.placement.lock().unwrap().leader = Some(BROKER);
    assert_eq!(c.produce_ok("events", 0, batch(&["c"])).await, 1);
}

#[tokio::test]
async fn produce_then_fetch_returns_the_batches_at_their_offsets() {
    let server = start().await;
    let mut c = Client::authenticated(server.addr).await;
    c.metadata(12, &["events"], true).await;

    assert_eq!(c.produce_ok("events", 0, batch(&["a", "b", "c"])).await, 0);
    assert_eq!(c.produce_ok("events", 0, batch(&["d", "e"])).await, 3);

    let p = c.fetch("events", 0, 0, 0, 1024 * 1024).await;
    assert_eq!(p.error_code, 0);
    assert_eq!(p.high_watermark, 5);
    assert_eq!(p.last_stable_offset, 5);
    assert_eq!(p.log_start_offset, 0);
    assert_eq!(p.aborted_transactions, Some(vec![]));
    let got = records(p.records.as_ref().unwrap());
    let want: Vec<(i64, String)> = ["a", "b", "c", "d", "e"]
        .iter()
        .enumerate()
        .map(|(i, v)| (i as i64, v.to_string()))
        .collect();
    assert_eq!(got, want);

    // From the second batch on.
    let p = c.fetch("events", 0, 3, 0, 1024 * 1024).await;
    assert_eq!(records(p.records.as_ref().unwrap())[0], (3, "d".into()));

    // A request limit below one batch still gets the first batch, only it.
    let p = c.fetch("events", 0, 0, 0, 1).await;
    let got = records(p.records.as_ref().unwrap());
    assert_eq!(got.len(), 3);

    // Errors per partition.
    let p = c.fetch("events", 0, 99, 0, 1024).await;
    assert_eq!(p.error_code, 1);
    let p = c.fetch("nope", 0, 0, 0, 1024).await;
    assert_eq!(p.error_code, 3);

    // Garbage records and missing records are corrupt.
    let id = c
        .produce("events", 1, Bytes::from_static(b"not a batch"), -1)
        .await;
    let resp = c.recv::<ProduceRequest>(7, id).await;
    assert_eq!(resp.responses[0].partition_responses[0].error_code, 2);
    let id = c.produce("events", 1, Bytes::new(), 1).await;
    let resp = c.recv::<ProduceRequest>(7, id).await;
    assert_eq!(resp.responses[0].partition_responses[0].error_code, 2);
}

/// Kafka refuses zstd batches in Produce below v7 (KIP-110) with
/// UNSUPPORTED_COMPRESSION_TYPE for the partition; sarama 1.22 sends them
/// in v3.
#[tokio::test]
async fn zstd_needs_produce_v7() {
    let server = start().await;
    let mut c = Client::authenticated(server.addr).await;
    c.metadata(12, &["z"], true).await;
    // The codec bits say zstd (the fake backend neither checks the CRC nor
    // decompresses).
    let mut zstd = BytesMut::from(&batch(&["a"])[..]);
    zstd[22] |= 4;
    let zstd = zstd.freeze();
    for (version, code) in [(3, 76), (6, 76), (7, 0), (9, 0)] {
        let mut part = PartitionProduceData::default();
        part.index = 0;
        part.records = Some(zstd.clone());
        let mut t = TopicProduceData::default();
        t.name = name("z");
        t.partition_data = vec![part];
        let mut req = ProduceRequest::default();
        req.acks = -1;
        req.timeout_ms = 5000;
        req.topic_data = vec![t];
        let resp = c.call(version, &req).await;
        let p = &resp.responses[0].partition_responses[0];
        assert_eq!(p.error_code, code, "Produce v{version}");
    }
    // Only the v7 and v9 batches were written.
    let p = c.fetch("z", 0, 0, 0, 1024 * 1024).await;
    assert_eq!(p.high_watermark, 2);
}

#[tokio::test]
async fn acks_zero_gets_no_response_and_order_is_kept() {
    let server = start().await;
    let mut c = Client::authenticated(server.addr).await;
    c.metadata(12, &["events"], true).await;
    c.produce("events", 0, batch(&["x"]), 0).await;
    // The next answer on the wire is the Metadata's, not a Produce's.
    let resp = c.metadata(12, &["events"], false).await;
    assert_eq!(resp.topics[0].error_code, 0);
    let p = c.fetch("events", 0, 0, 0, 1024).await;
    assert_eq!(records(p.records.as_ref().unwrap()), vec![(0, "x".into())]);
}

/// Produce requests are pipelined: the gateway reads the next while the
/// earlier ones become durable, and answers in request order; a request
/// of another kind is answered after them.
#[tokio::test]
async fn produce_requests_are_pipelined_and_answered_in_order() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let server = start_with(Fake {
        durable: Some(gate.clone()),
        ..Fake::new()
    })
    .await;
    let mut c = Client::authenticated(server.addr).await;
    c.metadata(12, &["events"], true).await;
    let ids = [
        c.produce("events", 0, batch(&["a", "b"]), -1).await,
        c.produce("events", 0, batch(&["c"]), -1).await,
        c.produce("events", 0, batch(&["d"]), -1).await,
    ];
    let mut req = MetadataRequest::default();
    req.topics = None;
    let meta = c.send(12, &req).await;
    // All three were read and queued while none is durable.
    let deadline = Instant::now() + IO_TIMEOUT;
    while server
        .backend
        .queued
        .load(std::sync::atomic::Ordering::SeqCst)
        < 3
    {
        assert!(Instant::now() < deadline, "produce requests not pipelined");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gate.add_permits(3);
    let mut bases = Vec::new();
    for id in ids {
        let resp = c.recv::<ProduceRequest>(7, id).await;
        let p = &resp.responses[0].partition_responses[0];
        assert_eq!(p.error_code, 0);
        bases.push(p.base_offset);
    }
    assert_eq!(bases, [0, 2, 3]);
    let m = c.recv::<MetadataRequest>(12, meta).await;
    assert_eq!(m.topics.len(), 1);
}

#[tokio::test]
async fn fetch_long_poll_returns_when_a_produce_lands() {
    let server = start().await;
    let mut consumer = Client::authenticated(server.addr).await;
    consumer.metadata(12, &["events"], true).await;

    // Nothing arrives: the poll lasts about max_wait.
    let started = Instant::now();
    let p = consumer.fetch("events", 1, 0, 300, 1024).await;
    assert!(
        started.elapsed() >= Duration::from_millis(280),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(p.high_watermark, 0);
    assert!(p.records.as_ref().unwrap().is_empty());

    let addr = server.addr;
    let producer = tokio::spawn(async move {
        let mut producer = Client::authenticated(addr).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        producer.produce_ok("events", 1, batch(&["late"])).await
    });
    let started = Instant::now();
    let p = consumer.fetch("events", 1, 0, 500, 1024).await;
    let waited = started.elapsed();
    assert_eq!(producer.await.unwrap(), 0);
    assert!(waited < Duration::from_millis(450), "waited {waited:?}");
    assert_eq!(p.high_watermark, 1);
    assert_eq!(
        records(p.records.as_ref().unwrap()),
        vec![(0, "late".into())]
    );
}

#[tokio::test]
async fn list_offsets_earliest_and_latest() {
    let server = start().await;
    let mut c = Client::authenticated(server.addr).await;
    c.metadata(12, &["events"], true).await;
    c.produce_ok("events", 0, batch(&["a", "b", "c", "d"]))
        .await;

    let mut t = ListOffsetsTopic::default();
    t.name = name("events");
    t.partitions = [-2i64, -1, -3]
        .iter()
        .map(|&ts| {
            let mut p = ListOffsetsPartition::default();
            p.partition_index = 0;
            p.timestamp = ts;
            p
        })
        .collect();
    let mut missing = ListOffsetsTopic::default();
    missing.name = name("nope");
    missing.partitions = vec![ListOffsetsPartition::default()];
    let mut req = ListOffsetsRequest::default();
    req.replica_id = BrokerId(-1);
    req.topics = vec![t, missing];
    let resp = c.call(7, &req).await;
    let parts = &resp.topics[0].partitions;
    assert_eq!((parts[0].error_code, parts[0].offset), (0, 0));
    assert_eq!((parts[1].error_code, parts[1].offset), (0, 4));
    assert_eq!(parts[0].leader_epoch, 0);
    assert_eq!(parts[2].error_code, 42, "max timestamp is not offered");
    assert_eq!(resp.topics[1].partitions[0].error_code, 3);
}

#[tokio::test]
async fn topic_admin_create_describe_grow_delete() {
    let server = start().await;
    let mut c = Client::authenticated(server.addr).await;

    let mut t = CreatableTopic::default();
    t.name = name("orders");
    t.num_partitions = 3;
    t.replication_factor = 3;
    let mut cfg = CreatableTopicConfig::default();
    cfg.name = StrBytes::from_static_str("retention.ms");
    cfg.value = Some(StrBytes::from_static_str("1000"));
    t.configs = vec![cfg];
    let mut req = CreateTopicsRequest::default();
    req.topics = vec![t.clone()];
    req.timeout_ms = 1000;

    let mut validate = req.clone();
    validate.validate_only = true;
    let resp = c.call(7, &validate).await;
    assert_eq!(resp.topics[0].error_code, 0);
    assert_eq!(
        c.metadata(12, &["orders"], false).await.topics[0].error_code,
        3
    );

    let resp = c.call(7, &req).await;
    let r = &resp.topics[0];
    assert_eq!((r.error_code, r.num_partitions), (0, 3));
    assert!(!r.topic_id.is_nil());
    let resp = c.call(7, &req).await;
    assert_eq!(resp.topics[0].error_code, 36);
    assert!(resp.topics[0].error_message.is_some());

    let mut res = DescribeConfigsResource::default();
    res.resource_type = 2;
    res.resource_name = StrBytes::from_static_str("orders");
    let mut broker = DescribeConfigsResource::default();
    broker.resource_type = 4;
    broker.resource_name = StrBytes::from_static_str("7");
    let mut req = DescribeConfigsRequest::default();
    req.resources = vec![res, broker];
    let resp = c.call(4, &req).await;
    assert_eq!(resp.results[0].error_code, 0);
    assert_eq!(resp.results[0].configs[0].name.as_str(), "retention.ms");
    assert_eq!(resp.results[0].configs[0].value.as_deref(), Some("1000"));
    assert_eq!(resp.results[1].error_code, 42);

    let mut grow = CreatePartitionsTopic::default();
    grow.name = name("orders");
    grow.count = 5;
    let mut req = CreatePartitionsRequest::default();
    req.topics = vec![grow];
    let resp = c.call(3, &req).await;
    assert_eq!(resp.results[0].error_code, 0);
    let md = c.metadata(12, &["orders"], false).await;
    assert_eq!(md.topics[0].partitions.len(), 5);
    let resp = c.call(3, &req).await;
    assert_eq!(resp.results[0].error_code, 37);

    let mut req = DeleteTopicsRequest::default();
    req.topic_names = vec![name("orders"), name("never")];
    let resp = c.call(5, &req).await;
    assert_eq!(resp.responses[0].error_code, 0);
    assert_eq!(resp.responses[1].error_code, 3);
    assert_eq!(
        c.metadata(12, &["orders"], false).await.topics[0].error_code,
        3
    );
}

/// Log lines written while a test runs (on its one thread).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

impl Logs {
    /// Warning lines that name this client (the server's peer).
    fn about(&self, c: &Client) -> Vec<String> {
        let peer = c.s.local_addr().unwrap().to_string();
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .filter(|l| l.contains(&peer))
            .map(str::to_string)
            .collect()
    }
}

#[tokio::test]
async fn bad_frames_close_only_their_own_connection() {
    let logs = Logs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    // A current-thread test runtime: the server's tasks log here too.
    let _log = tracing::subscriber::set_default(subscriber);

    let server = start().await;
    let mut good = Client::authenticated(server.addr).await;

    let mut garbage = Client::connect(server.addr).await;
    garbage
        .write_frame(b"\xde\xad\xbe\xef\x01\x02\x03\x04\x05")
        .await;
    assert!(garbage.closed().await);
    let lines = logs.about(&garbage);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("WARN") && lines[0].contains("unsupported request"));

    let mut oversized = Client::connect(server.addr).await;
    oversized
        .s
        .write_all(&((MAX_REQUEST_BYTES as i32) + 1).to_be_bytes())
        .await
        .unwrap();
    assert!(oversized.closed().await);
    let lines = logs.about(&oversized);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("exceeds the limit"), "{lines:?}");

    // An array count far beyond the frame (kafka-protocol would try to
    // allocate for it and abort the process).
    let mut huge = Client::authenticated(server.addr).await;
    let mut buf = BytesMut::new();
    let mut header = RequestHeader::default();
    header.request_api_key = ApiKey::Metadata as i16;
    header.request_api_version = 12;
    header.encode(&mut buf, 2).unwrap();
    buf.put_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    huge.write_frame(&buf).await;
    assert!(huge.closed().await);
    let lines = logs.about(&huge);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("malformed request"), "{lines:?}");

    // A known API with a body that does not decode (after authenticating).
    let mut truncated = Client::authenticated(server.addr).await;
    let mut buf = BytesMut::new();
    let mut header = RequestHeader::default();
    header.request_api_key = ApiKey::Metadata as i16;
    header.request_api_version = 12;
    header.encode(&mut buf, 2).unwrap();
    buf.put_u8(0x7f); // a compact array claiming 126 topics, then nothing
    truncated.write_frame(&buf).await;
    assert!(truncated.closed().await);

    // Too short for a header.
    let mut short = Client::connect(server.addr).await;
    short.write_frame(b"\x00\x12").await;
    assert!(short.closed().await);

    // Unsupported APIs and versions, even when authenticated.
    let mut c = Client::authenticated(server.addr).await;
    c.send(0, &DeleteGroupsRequest::default()).await;
    assert!(c.closed().await);
    let mut c = Client::authenticated(server.addr).await;
    c.send(9, &OffsetCommitRequest::default()).await;
    assert!(c.closed().await);
    let mut c = Client::authenticated(server.addr).await;
    c.send(13, &FetchRequest::default()).await;
    assert!(c.closed().await);

    let resp = good.metadata(12, &["still-here"], true).await;
    assert_eq!(resp.topics[0].error_code, 0);
    assert!(logs.about(&good).is_empty());
    let mut fresh = Client::authenticated(server.addr).await;
    assert_eq!(
        fresh.metadata(1, &["still-here"], false).await.topics[0].error_code,
        0
    );
}

#[tokio::test]
async fn shutdown_stops_the_listener_and_closes_connections() {
    let mut server = start().await;
    let mut c = Client::authenticated(server.addr).await;
    server.stop.take().unwrap().send(()).unwrap();
    let done = tokio::time::timeout(IO_TIMEOUT, &mut server.done)
        .await
        .expect("serve returns after shutdown");
    done.unwrap().unwrap();
    assert!(c.closed().await);
    assert!(TcpStream::connect(server.addr).await.is_err());
}

/// The oldest served version of each API answers (the encoder refuses
/// fields a version lacks, which would close the connection).
#[tokio::test]
async fn oldest_served_versions_answer() {
    let server = start().await;
    let mut c = Client::authenticated(server.addr).await;
    assert_eq!(c.metadata(0, &["old"], true).await.topics[0].error_code, 0);

    let mut part = PartitionProduceData::default();
    part.index = 0;
    part.records = Some(batch(&["v3"]));
    let mut t = TopicProduceData::default();
    t.name = name("old");
    t.partition_data = vec![part];
    let mut req = ProduceRequest::default();
    req.acks = 1;
    req.topic_data = vec![t];
    let resp = c.call(3, &req).await;
    assert_eq!(resp.responses[0].partition_responses[0].error_code, 0);
    // Transactions are not supported.
    req.transactional_id = Some(TransactionalId(StrBytes::from_static_str("tx")));
    let resp = c.call(3, &req).await;
    assert_eq!(resp.responses[0].partition_responses[0].error_code, 53);

    let mut fp = FetchPartition::default();
    fp.partition_max_bytes = 1024;
    let mut ft = FetchTopic::default();
    ft.topic = name("old");
    ft.partitions = vec![fp];
    let mut req = FetchRequest::default();
    req.max_bytes = 1024;
    req.topics = vec![ft];
    let resp = c.call(4, &req).await;
    let p = &resp.responses[0].partitions[0];
    assert_eq!((p.error_code, p.high_watermark), (0, 1));
    assert_eq!(records(p.records.as_ref().unwrap()), vec![(0, "v3".into())]);

    let mut lp = ListOffsetsPartition::default();
    lp.timestamp = -1;
    let mut lt = ListOffsetsTopic::default();
    lt.name = name("old");
    lt.partitions = vec![lp];
    let mut req = ListOffsetsRequest::default();
    req.topics = vec![lt];
    let resp = c.call(1, &req).await;
    assert_eq!(resp.topics[0].partitions[0].offset, 1);

    let mut ct = CreatableTopic::default();
    ct.name = name("old2");
    ct.num_partitions = -1;
    ct.replication_factor = -1;
    let mut req = CreateTopicsRequest::default();
    req.topics = vec![ct];
    assert_eq!(c.call(2, &req).await.topics[0].error_code, 0);
    assert_eq!(c.call(2, &req).await.topics[0].error_code, 36);

    let mut res = DescribeConfigsResource::default();
    res.resource_type = 2;
    res.resource_name = StrBytes::from_static_str("old2");
    res.configuration_keys = None;
    let mut req = DescribeConfigsRequest::default();
    req.resources = vec![res];
    assert_eq!(c.call(1, &req).await.results[0].error_code, 0);

    let mut grow = CreatePartitionsTopic::default();
    grow.name = name("old2");
    grow.count = 4;
    let mut req = CreatePartitionsRequest::default();
    req.topics = vec![grow];
    req.validate_only = true;
    assert_eq!(c.call(0, &req).await.results[0].error_code, 0);
    assert_eq!(
        c.metadata(1, &["old2"], false).await.topics[0]
            .partitions
            .len(),
        1
    );

    let mut req = DeleteTopicsRequest::default();
    req.topic_names = vec![name("old2")];
    assert_eq!(c.call(1, &req).await.responses[0].error_code, 0);
}
