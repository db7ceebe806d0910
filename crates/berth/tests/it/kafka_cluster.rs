//! Kafka clients against a three-node cluster (joined with tokens, a stream
//! in a volume of replication 3): every node's Metadata names the same
//! partition leader (the stream shard's) and lists every node as a broker;
//! the other nodes refuse its partitions' requests (NOT_LEADER_OR_FOLLOWER)
//! and its groups' (NOT_COORDINATOR), naming it as the coordinator;
//! an idempotent producer with acks=all keeps going when that leader is
//! killed with SIGKILL, and every acknowledged record is then read back at
//! its offset, offsets contiguous per partition, no record twice; a
//! consumer group member rejoins on the new coordinator and resumes from the
//! offsets committed before the kill.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    BrokerId, FetchRequest, FindCoordinatorRequest, GroupId, JoinGroupRequest, ListOffsetsRequest,
    ProduceRequest, RequestHeader, ResponseHeader, SaslAuthenticateRequest, SaslHandshakeRequest,
    TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use crate::cluster::all_at;
use crate::harness::TestServer;
use crate::join::{eventually_json, join_addr, token};
use crate::kafka::ticket;

const STREAM: &str = "/v3/events";
const TOPIC: &str = "/v3/events:t";
const GROUP: &str = "/v3/events:g";
const PARTITIONS: i32 = 2;
/// Records acknowledged before the kill, and after it.
const ACKED_BEFORE: usize = 300;
const ACKED_AFTER: usize = 300;
/// Bound on the time from the leader's kill to the next acknowledgement.
const FAILOVER_MAX: Duration = Duration::from_secs(15);
/// Bound on every wait of the test.
const WAIT: Duration = Duration::from_secs(60);

/// A librdkafka client configuration: TLS with the cluster CA, SASL PLAIN
/// with the admin ticket, bootstrapped from `via`.
fn config(ca: &TestServer, ticket: &str, via: &[&TestServer]) -> rdkafka::ClientConfig {
    let bootstrap: Vec<String> = via
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.kafka_port))
        .collect();
    let mut c = rdkafka::ClientConfig::new();
    c.set("bootstrap.servers", bootstrap.join(","))
        .set("security.protocol", "SASL_SSL")
        .set("sasl.mechanisms", "PLAIN")
        .set("sasl.username", "admin")
        .set("sasl.password", ticket)
        .set(
            "ssl.ca.location",
            ca.ca_file().to_str().expect("UTF-8 path"),
        );
    c
}

/// One node's Metadata for [`TOPIC`]: (broker id, port) of every broker,
/// and per partition (leader, replicas, ISR), replicas and ISR sorted.
pub(crate) type Seen = (Vec<(i32, i32)>, Vec<(i32, Vec<i32>, Vec<i32>)>);

/// Metadata asked of `node` alone (the only broker the client knows).
fn metadata_of(node: &TestServer, ca: &TestServer, ticket: &str) -> Result<Seen, String> {
    topic_metadata(node, ca, ticket, TOPIC)
}

/// Metadata of `topic` asked of `node` alone.
pub(crate) fn topic_metadata(
    node: &TestServer,
    ca: &TestServer,
    ticket: &str,
    topic: &str,
) -> Result<Seen, String> {
    let consumer: BaseConsumer = config(ca, ticket, &[node])
        .create()
        .map_err(|e| e.to_string())?;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    let mut brokers: Vec<(i32, i32)> = md.brokers().iter().map(|b| (b.id(), b.port())).collect();
    brokers.sort_unstable();
    let topic = md.topics().first().ok_or("no topic in the answer")?;
    if let Some(e) = topic.error() {
        return Err(format!("topic error {e:?}"));
    }
    let mut parts = Vec::new();
    for p in topic.partitions() {
        if let Some(e) = p.error() {
            return Err(format!("partition {} error {e:?}", p.id()));
        }
        let mut replicas = p.replicas().to_vec();
        replicas.sort_unstable();
        let mut isr = p.isr().to_vec();
        isr.sort_unstable();
        parts.push((p.leader(), replicas, isr));
    }
    Ok((brokers, parts))
}

/// Polls until every node in `nodes` answers Metadata that `ok` accepts
/// and all name the same leaders; returns the leader.
fn agreed_leader(
    nodes: &[&TestServer],
    ca: &TestServer,
    ticket: &str,
    ok: impl Fn(&Seen) -> bool,
) -> i32 {
    let deadline = Instant::now() + WAIT;
    loop {
        let seen: Vec<Result<Seen, String>> =
            nodes.iter().map(|n| metadata_of(n, ca, ticket)).collect();
        let leaders: HashSet<i32> = seen
            .iter()
            .flatten()
            .flat_map(|(_, parts)| parts.iter().map(|p| p.0))
            .collect();
        if seen.iter().all(|s| s.as_ref().is_ok_and(&ok)) && leaders.len() == 1 {
            return leaders.into_iter().next().expect("one leader");
        }
        assert!(
            Instant::now() < deadline,
            "the nodes never agreed on the partitions' leader: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A bare Kafka connection to one chosen broker (TLS with the cluster CA,
/// SASL PLAIN with a ticket), speaking kafka-protocol's encoding: it sends
/// requests where Metadata says not to, which Kafka clients never do.
struct Raw {
    io: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    correlation_id: i32,
}

impl Raw {
    fn connect(node: &TestServer, ca: &TestServer, ticket: &str) -> Raw {
        use rustls::pki_types::pem::PemObject as _;
        berth_security::tls::install_crypto_provider();
        let ca_pem = std::fs::read(ca.ca_file()).expect("CA file");
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from_pem_slice(&ca_pem).expect("CA PEM"))
            .expect("CA");
        let tls = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
        let conn = rustls::ClientConnection::new(Arc::new(tls), name).expect("TLS client");
        let sock = TcpStream::connect(("127.0.0.1", node.kafka_port)).expect("connect");
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut raw = Raw {
            io: rustls::StreamOwned::new(conn, sock),
            correlation_id: 0,
        };
        let mut hs = SaslHandshakeRequest::default();
        hs.mechanism = StrBytes::from_static_str("PLAIN");
        assert_eq!(raw.call(1, &hs).error_code, 0, "SaslHandshake");
        let mut auth = SaslAuthenticateRequest::default();
        auth.auth_bytes = Bytes::from(format!("\0admin\0{ticket}"));
        let resp = raw.call(2, &auth);
        assert_eq!(resp.error_code, 0, "SASL: {:?}", resp.error_message);
        raw
    }

    fn call<R: Request>(&mut self, version: i16, req: &R) -> R::Response {
        self.correlation_id += 1;
        let mut header = RequestHeader::default();
        header.request_api_key = R::KEY;
        header.request_api_version = version;
        header.correlation_id = self.correlation_id;
        header.client_id = Some(StrBytes::from_static_str("kafka-cluster-test"));
        let mut body = BytesMut::new();
        header
            .encode(&mut body, R::header_version(version))
            .expect("encode header");
        req.encode(&mut body, version).expect("encode request");
        let len = i32::try_from(body.len()).expect("small request");
        self.io.write_all(&len.to_be_bytes()).expect("write");
        self.io.write_all(&body).expect("write");
        self.io.flush().expect("flush");
        let mut size = [0u8; 4];
        self.io.read_exact(&mut size).expect("read answer size");
        let mut frame = vec![0u8; usize::try_from(i32::from_be_bytes(size)).expect("size")];
        self.io.read_exact(&mut frame).expect("read answer");
        let mut frame = Bytes::from(frame);
        let h = ResponseHeader::decode(&mut frame, R::Response::header_version(version))
            .expect("answer header");
        assert_eq!(h.correlation_id, self.correlation_id);
        R::Response::decode(&mut frame, version).expect("answer body")
    }
}

/// One record batch v2 holding `value` (as a producer builds it).
fn one_record(value: &str) -> Bytes {
    let record = Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp: 1_700_000_000_000,
        key: None,
        value: Some(Bytes::copy_from_slice(value.as_bytes())),
        headers: Default::default(),
    };
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut buf, &[record], &options).expect("record batch");
    buf.freeze()
}

/// The value each follower is asked to store (and refuses), and the
/// leader once.
const MISDIRECTED: &str = "sent to a follower";

/// Produce (of [`MISDIRECTED`]), Fetch and ListOffsets for partition 0 of
/// [`TOPIC`], sent to one node: their error codes.
fn data_codes(raw: &mut Raw) -> (i16, i16, i16) {
    let topic = TopicName(StrBytes::from_static_str(TOPIC));
    let mut part = PartitionProduceData::default();
    part.records = Some(one_record(MISDIRECTED));
    let mut t = TopicProduceData::default();
    t.name = topic.clone();
    t.partition_data = vec![part];
    let mut produce = ProduceRequest::default();
    produce.acks = -1;
    produce.timeout_ms = 10_000;
    produce.topic_data = vec![t];
    let produced = raw.call(7, &produce).responses[0].partition_responses[0].error_code;

    let mut part = FetchPartition::default();
    part.partition_max_bytes = 1 << 20;
    let mut t = FetchTopic::default();
    t.topic = topic.clone();
    t.partitions = vec![part];
    let mut fetch = FetchRequest::default();
    fetch.replica_id = BrokerId(-1);
    fetch.max_bytes = 1 << 20;
    fetch.session_epoch = -1;
    fetch.topics = vec![t];
    let fetched = raw.call(12, &fetch).responses[0].partitions[0].error_code;

    let mut part = ListOffsetsPartition::default();
    part.timestamp = -1;
    let mut t = ListOffsetsTopic::default();
    t.name = topic;
    t.partitions = vec![part];
    let mut list = ListOffsetsRequest::default();
    list.replica_id = BrokerId(-1);
    list.topics = vec![t];
    let listed = raw.call(7, &list).topics[0].partitions[0].error_code;
    (produced, fetched, listed)
}

/// FindCoordinator for [`GROUP`] (the coordinator's id and port, or the
/// error) and a JoinGroup's error code, sent to one node.
fn group_codes(raw: &mut Raw) -> (Result<(i32, i32), i16>, i16) {
    let mut find = FindCoordinatorRequest::default();
    find.coordinator_keys = vec![StrBytes::from_static_str(GROUP)];
    let c = raw.call(4, &find).coordinators.remove(0);
    let found = match c.error_code {
        0 => Ok((c.node_id.0, c.port)),
        e => Err(e),
    };
    let mut protocol = JoinGroupRequestProtocol::default();
    protocol.name = StrBytes::from_static_str("range");
    let mut join = JoinGroupRequest::default();
    join.group_id = GroupId(StrBytes::from_static_str(GROUP));
    join.session_timeout_ms = 10_000;
    join.rebalance_timeout_ms = 10_000;
    join.protocol_type = StrBytes::from_static_str("consumer");
    join.protocols = vec![protocol];
    (found, raw.call(9, &join).error_code)
}

/// An acknowledged record.
#[derive(Debug, Clone)]
struct Ack {
    partition: i32,
    offset: i64,
    value: String,
    at: Instant,
}

/// Produces records `r000000`, `r000001`, ... alternating partitions, in
/// rounds of 20 in flight, until `stop`; every delivery report is kept.
fn produce_until(
    producer: FutureProducer,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Ack>>>,
    failed: Arc<Mutex<Vec<String>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let mut round = Vec::new();
                for _ in 0..20 {
                    let value = format!("r{i:06}");
                    let partition = (i % PARTITIONS as usize) as i32;
                    let record = FutureRecord::to(TOPIC)
                        .partition(partition)
                        .key(&value)
                        .payload(&value);
                    match producer.send_result(record) {
                        Ok(delivery) => round.push((partition, value, delivery)),
                        Err((e, _)) => failed.lock().unwrap().push(format!("{value}: {e}")),
                    }
                    i += 1;
                }
                for (partition, value, delivery) in round {
                    match delivery.await {
                        Ok(Ok(d)) => {
                            assert_eq!(d.partition, partition);
                            acked.lock().unwrap().push(Ack {
                                partition,
                                offset: d.offset,
                                value,
                                at: Instant::now(),
                            });
                        }
                        Ok(Err((e, _))) => failed.lock().unwrap().push(format!("{value}: {e}")),
                        Err(_) => failed.lock().unwrap().push(format!("{value}: canceled")),
                    }
                }
            }
        });
    })
}

/// Waits until `n` records are acknowledged (the producer's failures, if
/// any, fail the test).
fn wait_acked(acked: &Mutex<Vec<Ack>>, failed: &Mutex<Vec<String>>, n: usize, what: &str) {
    let deadline = Instant::now() + WAIT;
    while acked.lock().unwrap().len() < n {
        let f = failed.lock().unwrap().clone();
        assert!(f.is_empty(), "deliveries failed {what}: {f:?}");
        assert!(
            Instant::now() < deadline,
            "only {} of {n} records acknowledged {what}",
            acked.lock().unwrap().len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `c` until it has `n` more records; returns them as (partition,
/// offset).
fn consume(c: &BaseConsumer, n: usize) -> Vec<(i32, i64)> {
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    while got.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} records",
            got.len()
        );
        if let Some(m) = c.poll(Duration::from_millis(200)) {
            let m = m.unwrap_or_else(|e| panic!("consume: {e}"));
            got.push((m.partition(), m.offset()));
        }
    }
    got
}

/// The offset committed for each partition of [`TOPIC`], as the group's
/// coordinator answers.
fn committed(c: &BaseConsumer) -> Result<BTreeMap<i32, i64>, String> {
    let tpl = c
        .committed(Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    Ok(tpl
        .elements_for_topic(TOPIC)
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect())
}

#[test]
fn kafka_clients_follow_the_leader_across_a_kill_9() {
    let n1 = TestServer::start();
    n1.ok(&["volume", "create", "/v3", "--replication", "3"]);
    n1.ok(&[
        "stream",
        "create",
        STREAM,
        "--partitions",
        &PARTITIONS.to_string(),
    ]);
    n1.ok(&["stream", "topic", "create", STREAM, "t"]);
    let (t, _) = token(&n1, &["--uses", "2"]);
    let n2 = TestServer::start_joining(&join_addr(&n1), &t, &[]);
    let n3 = TestServer::start_joining(&join_addr(&n1), &t, &[]);
    let mut nodes = [n1, n2, n3];
    // Every shard on all three nodes, each led by a different node (the
    // placement driver's balance), every node up.
    eventually_json(&nodes[0], &nodes[0], |st| {
        all_at(st, 3)?;
        let leaders: HashSet<u64> = st["shards"]
            .as_array()?
            .iter()
            .filter_map(|s| s["leader"].as_u64())
            .collect();
        (leaders.len() == 3).then_some(())?;
        st["nodes"]
            .as_array()?
            .iter()
            .all(|n| n["state"] == "up" && n["alive"] == true)
            .then_some(())
    });
    let admin = ticket(&nodes[0].admin_ticket());
    let ports: Vec<(i32, i32)> = (1..=3)
        .map(|id| (id, i32::from(nodes[id as usize - 1].kafka_port)))
        .collect();

    // Every node's Metadata: all three brokers at their Kafka ports, and
    // the same leader for both partitions, with all three as replicas and
    // in sync.
    let all: Vec<&TestServer> = nodes.iter().collect();
    let leader = agreed_leader(&all, &nodes[0], &admin, |(brokers, parts)| {
        *brokers == ports
            && parts.len() == PARTITIONS as usize
            && parts
                .iter()
                .all(|(l, r, isr)| *l > 0 && *r == [1, 2, 3] && *isr == [1, 2, 3])
    });
    let st = nodes[0].json(&["status"]);
    let stream_shard = st["shards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["volume_id"] != 0 && s["volume_id"] != 1)
        .cloned()
        .unwrap_or_else(|| panic!("no /v3 shard in {st}"));
    assert_eq!(
        stream_shard["leader"].as_i64(),
        Some(i64::from(leader)),
        "the partitions' leader is the stream shard's: {st}"
    );

    // The other nodes refuse the partitions' requests and the group's, and
    // name the leader as the group's coordinator; the leader serves them.
    let leader_port = i32::from(nodes[leader as usize - 1].kafka_port);
    for id in (1..=3).filter(|&id| id != leader) {
        let mut raw = Raw::connect(&nodes[id as usize - 1], &nodes[0], &admin);
        assert_eq!(
            data_codes(&mut raw),
            (6, 6, 6),
            "node {id}: NOT_LEADER_OR_FOLLOWER"
        );
        assert_eq!(
            group_codes(&mut raw),
            (Ok((leader, leader_port)), 16),
            "node {id}: FindCoordinator names the leader, JoinGroup is NOT_COORDINATOR"
        );
    }
    let mut raw = Raw::connect(&nodes[leader as usize - 1], &nodes[0], &admin);
    assert_eq!(data_codes(&mut raw), (0, 0, 0), "the leader serves");
    drop(raw);

    // An idempotent producer, acks=all, bootstrapped from every node.
    let producer: FutureProducer = config(&nodes[0], &admin, &all)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "60000")
        .create()
        .expect("producer");
    let (stop, acked, failed) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(Mutex::new(Vec::<Ack>::new())),
        Arc::new(Mutex::new(Vec::<String>::new())),
    );
    let producing = produce_until(producer, stop.clone(), acked.clone(), failed.clone());
    wait_acked(&acked, &failed, ACKED_BEFORE / 2, "before the kill");

    // A group member reads 100 records, commits, then reads on without
    // committing: its position is past the committed offsets.
    let member: BaseConsumer = config(&nodes[0], &admin, &all)
        .set("group.id", GROUP)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    member.subscribe(&[TOPIC]).expect("subscribe");
    consume(&member, 100);
    member
        .commit_consumer_state(CommitMode::Sync)
        .expect("commit before the kill");
    let before = committed(&member).expect("committed offsets before the kill");
    // The committed partitions it has read at or past its commit.
    let deadline = Instant::now() + WAIT;
    let mut read_past = Vec::new();
    let rewound: BTreeMap<i32, i64> = loop {
        read_past.extend(consume(&member, 20));
        let past: BTreeMap<i32, i64> = before
            .iter()
            .filter(|(p, o)| read_past.iter().any(|(rp, ro)| rp == *p && ro >= *o))
            .map(|(p, o)| (*p, *o))
            .collect();
        if !past.is_empty() {
            break past;
        }
        assert!(
            Instant::now() < deadline,
            "the member never read past its commit {before:?}: {read_past:?}"
        );
    };
    wait_acked(&acked, &failed, ACKED_BEFORE, "before the kill");

    // SIGKILL the leader of the stream's shard (its partitions' leader and
    // its groups' coordinator) while the producer is busy.
    let killed_at = Instant::now();
    let acked_before_kill = acked.lock().unwrap().len();
    nodes[leader as usize - 1].kill9();
    let survivors: Vec<&TestServer> = (1..=3)
        .filter(|&id| id != leader)
        .map(|id| &nodes[id as usize - 1])
        .collect();
    wait_acked(
        &acked,
        &failed,
        acked_before_kill + ACKED_AFTER,
        "after the kill",
    );
    stop.store(true, Ordering::Relaxed);
    producing.join().expect("producer thread");
    let failures = failed.lock().unwrap().clone();
    assert!(failures.is_empty(), "deliveries failed: {failures:?}");
    let acked = acked.lock().unwrap().clone();
    let first_after = acked
        .iter()
        .skip(acked_before_kill)
        .map(|a| a.at.duration_since(killed_at))
        .min()
        .expect("acknowledged after the kill");
    eprintln!("first record acknowledged {first_after:?} after the leader's kill");
    // One election (about a second here) and a metadata refresh or two;
    // the bound leaves room for a loaded machine.
    assert!(
        first_after < FAILOVER_MAX,
        "the producer found the new leader only after {first_after:?}"
    );

    // The survivors agree on a new leader, which is not the killed node;
    // the killed node is no broker of theirs and out of the ISR.
    let new_leader = agreed_leader(&survivors, &nodes[0], &admin, |(brokers, parts)| {
        brokers.len() == 2
            && !brokers.iter().any(|(id, _)| *id == leader)
            && parts
                .iter()
                .all(|(l, r, isr)| *l != leader && *l > 0 && *r == [1, 2, 3] && isr.len() == 2)
    });
    assert_ne!(new_leader, leader);

    // Every acknowledged record is there, at its offset; offsets are
    // contiguous per partition; no record is there twice.
    // (librdkafka wants a group id to assign partitions; nothing is
    // committed.)
    let reader: BaseConsumer = config(&nodes[0], &admin, &survivors)
        .set("group.id", "/v3/events:reader")
        .create()
        .expect("reader");
    let mut tpl = TopicPartitionList::new();
    let mut end = HashMap::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(TOPIC, p, Offset::Beginning)
            .expect("partition");
        let (_, high) = reader
            .fetch_watermarks(TOPIC, p, Duration::from_secs(10))
            .expect("watermarks");
        end.insert(p, high);
    }
    reader.assign(&tpl).expect("assign");
    let total: i64 = end.values().sum();
    let mut stored: HashMap<i32, Vec<(i64, String)>> = HashMap::new();
    let deadline = Instant::now() + WAIT;
    while stored.values().map(Vec::len).sum::<usize>() < total as usize {
        assert!(Instant::now() < deadline, "read back only part of {end:?}");
        if let Some(m) = reader.poll(Duration::from_millis(200)) {
            let m = m.unwrap_or_else(|e| panic!("read back: {e}"));
            let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
            stored
                .entry(m.partition())
                .or_default()
                .push((m.offset(), value));
        }
    }
    let mut values = HashSet::new();
    // The record sent straight to the leader is there; the followers
    // stored none.
    let misdirected = stored
        .values()
        .flatten()
        .filter(|(_, v)| v == MISDIRECTED)
        .count();
    assert_eq!(misdirected, 1, "one copy, through the leader");
    for (p, records) in &stored {
        for (i, (o, v)) in records.iter().enumerate() {
            assert_eq!(*o, i as i64, "partition {p}: offsets are contiguous from 0");
            assert!(values.insert(v.clone()), "{v} is stored twice");
        }
    }
    for a in &acked {
        let at = stored
            .get(&a.partition)
            .and_then(|r| r.get(usize::try_from(a.offset).ok()?));
        assert_eq!(
            at.map(|(_, v)| v.as_str()),
            Some(a.value.as_str()),
            "acknowledged {a:?} is not where it was acknowledged"
        );
    }

    // The group member rejoins on the new coordinator and starts again
    // from the offsets committed before the kill: it reads each offset it
    // had read past once more, and can commit there.
    let deadline = Instant::now() + WAIT;
    let mut again: HashSet<(i32, i64)> = HashSet::new();
    while !rewound.iter().all(|(p, o)| again.contains(&(*p, *o))) {
        assert!(
            Instant::now() < deadline,
            "the member never came back to {rewound:?} (read {} records after the kill)",
            again.len()
        );
        if let Some(Ok(m)) = member.poll(Duration::from_millis(200)) {
            again.insert((m.partition(), m.offset()));
        }
    }
    let deadline = Instant::now() + WAIT;
    loop {
        // The first commits may meet the rebalance still settling.
        match member.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => break,
            Err(e) => assert!(Instant::now() < deadline, "commit after the kill: {e}"),
        }
        let _ = member.poll(Duration::from_millis(200));
    }
    let after = committed(&member).expect("committed offsets after the kill");
    for (p, o) in &before {
        assert!(
            after.get(p).is_some_and(|a| a >= o),
            "partition {p}: committed {o} before the kill, {after:?} after"
        );
    }
}
