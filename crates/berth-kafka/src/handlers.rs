//! One function per served API: decoded request in, response out. Each
//! only translates: names are resolved and every decision is taken by the
//! [`Backend`], whose errors become codes through [`codes::code`].

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::future::{join_all, select_all};
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    BrokerId, CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest,
    CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse, DescribeConfigsRequest,
    DescribeConfigsResponse, FetchRequest, FetchResponse, InitProducerIdRequest,
    InitProducerIdResponse, ListOffsetsRequest, ListOffsetsResponse, MetadataRequest,
    MetadataResponse, ProduceRequest, ProduceResponse, ProducerId, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use tokio::time::Instant;
use uuid::Uuid;

use crate::backend::{Backend, Broker, Fetched, OffsetSpec, StreamError, TopicInfo, TopicRef};
use crate::codes::{self, Scope};
use crate::KafkaConfig;

/// Fetch long polls wait at most this long, whatever the client asks.
pub const FETCH_WAIT_MS_MAX: u64 = 30_000;
/// Fetch rounds (fetch, wait, fetch again) in one long poll.
pub const FETCH_ROUNDS_MAX: usize = 64;

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

fn error_message(e: &StreamError) -> Option<StrBytes> {
    Some(StrBytes::from_string(e.to_string()))
}

/// Resolves and looks up one topic by name.
async fn topic<B: Backend>(
    b: &B,
    p: &B::Principal,
    name: &str,
    auto_create: bool,
) -> Result<TopicInfo, StreamError> {
    let t = b.resolve(p, name)?;
    b.topic(p, &t, name, auto_create).await
}

// ---------------------------------------------------------------- Metadata

pub async fn metadata<B: Backend>(
    b: &B,
    p: &B::Principal,
    cfg: &KafkaConfig,
    req: MetadataRequest,
    version: i16,
) -> MetadataResponse {
    let mut resp = MetadataResponse::default();
    let brokers = brokers(b, cfg);
    resp.brokers = brokers
        .iter()
        .map(|x| {
            let mut broker = MetadataResponseBroker::default();
            broker.node_id = BrokerId(x.id);
            broker.host = str_bytes(&x.host);
            broker.port = x.port;
            broker.rack = x.rack.as_deref().map(str_bytes);
            broker
        })
        .collect();
    resp.cluster_id = Some(str_bytes(&cfg.cluster_id));
    // Kafka clients send topic administration to the controller; every
    // broker serves it here, so each names itself.
    resp.controller_id = BrokerId(cfg.node_id);
    let listed: Vec<i32> = brokers.iter().map(|x| x.id).collect();
    // v0: an empty list means all topics; v1+: null means all.
    let requested = match req.topics {
        Some(topics) if !(version == 0 && topics.is_empty()) => topics,
        _ => {
            match b.default_topics(p).await {
                Ok(topics) => {
                    resp.topics = topics
                        .into_iter()
                        .map(|t| metadata_topic(&listed, t.name.clone(), Ok(t)))
                        .collect();
                }
                // No per-topic slot for this error before v13: an empty list.
                Err(e) => tracing::debug!(error = %e, "kafka: listing topics failed"),
            }
            return resp;
        }
    };
    // Before v4 the broker's setting decides auto-creation: ours is the
    // stream's, which the backend applies.
    let auto_create = version < 4 || req.allow_auto_topic_creation;
    for t in requested {
        let Some(name) = t.name else {
            // v10+ may ask by id only; topics are looked up by name.
            let mut entry = MetadataResponseTopic::default();
            entry.error_code = codes::UNKNOWN_TOPIC_ID;
            entry.topic_id = t.topic_id;
            resp.topics.push(entry);
            continue;
        };
        let name = name.0.to_string();
        let info = topic(b, p, &name, auto_create).await;
        resp.topics.push(metadata_topic(&listed, name, info));
    }
    resp
}

/// The brokers Metadata lists: the backend's, and this one (clients just
/// reached it) when the backend left it out.
pub fn brokers<B: Backend>(b: &B, cfg: &KafkaConfig) -> Vec<Broker> {
    let mut brokers = b.brokers();
    if !brokers.iter().any(|x| x.id == cfg.node_id) {
        brokers.push(Broker {
            id: cfg.node_id,
            host: cfg.advertised_host.clone(),
            port: cfg.advertised_port,
            rack: None,
        });
    }
    brokers.sort_by_key(|x| x.id);
    brokers.dedup_by_key(|x| x.id);
    brokers
}

/// One topic of a Metadata answer. A partition names its leader only when
/// that broker is in the answer's broker list (`listed`): clients cannot
/// reach any other, so it is LEADER_NOT_AVAILABLE and they ask again.
fn metadata_topic(
    listed: &[i32],
    name: String,
    info: Result<TopicInfo, StreamError>,
) -> MetadataResponseTopic {
    let mut entry = MetadataResponseTopic::default();
    entry.name = Some(TopicName(StrBytes::from_string(name)));
    entry.is_internal = false;
    match info {
        Ok(info) => {
            entry.topic_id = Uuid::from_bytes(info.id);
            let at = &info.placement;
            let leader = at.leader.filter(|l| listed.contains(l));
            let ids = |v: &[i32]| v.iter().copied().map(BrokerId).collect::<Vec<_>>();
            entry.partitions = (0..info.partitions)
                .filter_map(|i| i32::try_from(i).ok())
                .map(|i| {
                    let mut part = MetadataResponsePartition::default();
                    part.partition_index = i;
                    match leader {
                        Some(l) => {
                            part.leader_id = BrokerId(l);
                            part.leader_epoch = at.leader_epoch;
                        }
                        None => {
                            part.error_code = codes::LEADER_NOT_AVAILABLE;
                            part.leader_id = BrokerId(-1);
                            part.leader_epoch = -1;
                        }
                    }
                    part.replica_nodes = ids(&at.replicas);
                    part.isr_nodes = ids(&at.isr);
                    part.offline_replicas = ids(&at.offline);
                    part
                })
                .collect();
        }
        Err(e) => entry.error_code = codes::code(&e, Scope::Metadata),
    }
    entry
}

// ----------------------------------------------------------------- Produce

/// The first Produce version that may carry zstd batches (KIP-110): older
/// ones get UNSUPPORTED_COMPRESSION_TYPE for the partition, as from Kafka.
/// Clients that negotiate never do it; sarama 1.22 does (it stays at v3).
pub const ZSTD_PRODUCE_MIN: i16 = 7;

/// Whether a batch in `records` says zstd (codec 4 in the attributes'
/// low three bits). Only the batch headers are read; where the framing is
/// broken the walk stops and the backend's validation answers.
fn has_zstd_batch(records: &[u8]) -> bool {
    // Base offset (8), batch length (4), leader epoch (4), magic (1),
    // CRC (4), then the attributes (2).
    const ATTRIBUTES_AT: usize = 21;
    const ZSTD: u8 = 4;
    let mut rest = records;
    while rest.len() > ATTRIBUTES_AT + 1 {
        if rest[ATTRIBUTES_AT + 1] & 0x07 == ZSTD {
            return true;
        }
        let len = i32::from_be_bytes([rest[8], rest[9], rest[10], rest[11]]);
        match usize::try_from(len).ok().and_then(|l| l.checked_add(12)) {
            Some(next) if next <= rest.len() => rest = &rest[next..],
            _ => return false,
        }
    }
    false
}

/// `None`: acks=0, no response at all.
/// A produce request whose appends are queued: the wait for its response
/// (`None` for acks=0).
pub type ProducePending = Pin<Box<dyn Future<Output = Option<ProduceResponse>> + Send>>;

/// Produce, in two steps (see [`Backend::produce_partitions`]): returns once
/// every topic's appends are queued, in the request's order; the returned
/// future waits for them to be durable and builds the response.
pub async fn produce<B: Backend>(
    b: &B,
    p: &B::Principal,
    req: ProduceRequest,
    version: i16,
) -> ProducePending {
    // Transactions are not supported: a transactional producer is told it
    // may not use its transactional id.
    let transactional = req.transactional_id.is_some();
    let acks = req.acks;
    let mut topics = Vec::with_capacity(req.topic_data.len());
    for topic in req.topic_data {
        let name = topic.name.0.to_string();
        let resolved = b.resolve(p, &name);
        let mut outs: Vec<PartitionProduceResponse> = Vec::new();
        // Partitions that reach the backend, all in one call: (position in
        // `outs`, partition, records).
        let mut sent: Vec<(usize, i32, Bytes)> = Vec::new();
        for part in topic.partition_data {
            let mut out = PartitionProduceResponse::default();
            out.index = part.index;
            out.base_offset = -1;
            out.log_append_time_ms = -1;
            out.log_start_offset = -1;
            match (transactional, &resolved, part.records) {
                (true, _, _) => out.error_code = codes::TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
                (_, Err(e), _) => out.error_code = codes::code(e, Scope::Partition),
                (_, Ok(_), None) => out.error_code = codes::CORRUPT_MESSAGE,
                (_, Ok(_), Some(r)) if r.is_empty() => out.error_code = codes::CORRUPT_MESSAGE,
                (_, Ok(_), Some(r)) if version < ZSTD_PRODUCE_MIN && has_zstd_batch(&r) => {
                    out.error_code = codes::UNSUPPORTED_COMPRESSION_TYPE
                }
                (_, Ok(_), Some(records)) => sent.push((outs.len(), part.index, records)),
            }
            outs.push(out);
        }
        let wait = match (&resolved, sent.is_empty()) {
            (Ok(t), false) => {
                let at: Vec<usize> = sent.iter().map(|s| s.0).collect();
                let parts = sent.into_iter().map(|(_, part, r)| (part, r)).collect();
                Some((at, b.produce_partitions(p, t, parts).await))
            }
            _ => None,
        };
        topics.push((topic.name, outs, wait));
    }
    Box::pin(async move {
        // Every topic's wait at once: a backend may still be resolving a topic in it.
        let (names_outs, waits): (Vec<_>, Vec<_>) = topics
            .into_iter()
            .map(|(name, outs, wait)| ((name, outs), wait))
            .unzip();
        let results = join_all(waits.into_iter().map(|w| async move {
            match w {
                Some((at, wait)) => Some((at, wait.await)),
                None => None,
            }
        }))
        .await;
        let mut responses = Vec::with_capacity(names_outs.len());
        for ((name, mut outs), done) in names_outs.into_iter().zip(results) {
            if let Some((at, results)) = done {
                for (i, r) in at.into_iter().zip(results) {
                    let out = &mut outs[i];
                    match r {
                        Ok(a) => {
                            out.base_offset = a.base_offset;
                            out.log_append_time_ms = a.log_append_time_ms;
                            out.log_start_offset = a.log_start;
                        }
                        Err(e) => {
                            if version >= 8 {
                                out.error_message = error_message(&e);
                            }
                            out.error_code = codes::code(&e, Scope::Partition);
                        }
                    }
                }
            }
            let mut out = TopicProduceResponse::default();
            out.name = name;
            out.partition_responses = outs;
            responses.push(out);
        }
        if acks == 0 {
            return None;
        }
        let mut resp = ProduceResponse::default();
        resp.responses = responses;
        Some(resp)
    })
}

// ------------------------------------------------------------------- Fetch

/// One requested partition of a Fetch.
struct Wanted {
    topic: usize,
    partition: i32,
    offset: i64,
    max_bytes: usize,
}

pub async fn fetch<B: Backend>(
    b: &B,
    p: &B::Principal,
    req: FetchRequest,
    version: i16,
) -> FetchResponse {
    let mut resp = FetchResponse::default();
    if version >= 7 && req.session_id != 0 {
        // Sessions are never created (we always answer session_id 0), so
        // an incremental fetch names one we do not know.
        resp.error_code = codes::FETCH_SESSION_ID_NOT_FOUND;
        return resp;
    }
    let wait = Duration::from_millis((req.max_wait_ms.max(0) as u64).min(FETCH_WAIT_MS_MAX));
    let deadline = Instant::now() + wait;
    let min_bytes = req.min_bytes.max(0) as usize;
    let max_bytes = req.max_bytes.max(0) as usize;

    // Each partition's `current_leader_epoch` (v9+) is not checked: only
    // the leader serves a fetch (the backend answers NotLeader elsewhere)
    // and it reads through a linearizable barrier, so a client with an
    // older epoch still reads what the current leader holds.
    let topics: Vec<(TopicName, Result<TopicRef, StreamError>)> = req
        .topics
        .iter()
        .map(|t| (t.topic.clone(), b.resolve(p, &t.topic.0)))
        .collect();
    let wanted: Vec<Wanted> = req
        .topics
        .iter()
        .enumerate()
        .flat_map(|(i, t)| {
            t.partitions.iter().map(move |part| Wanted {
                topic: i,
                partition: part.partition,
                offset: part.fetch_offset,
                max_bytes: part.partition_max_bytes.max(0) as usize,
            })
        })
        .collect();

    let mut round = 0;
    let results = loop {
        round += 1;
        let results = join_all(wanted.iter().map(|w| async {
            match &topics[w.topic].1 {
                Ok(t) => b.fetch(p, t, w.partition, w.offset, w.max_bytes).await,
                Err(e) => Err(e.clone()),
            }
        }))
        .await;
        let bytes: usize = results
            .iter()
            .flatten()
            .flat_map(|f| &f.batches)
            .map(Bytes::len)
            .sum();
        let failed = results.iter().any(Result::is_err);
        let now = Instant::now();
        if bytes >= min_bytes || failed || now >= deadline || round >= FETCH_ROUNDS_MAX {
            break results;
        }
        // Long poll: wake on the first partition that grows past what was
        // seen, or at the deadline.
        let remaining = deadline - now;
        let waits = wanted.iter().zip(&results).filter_map(|(w, r)| {
            let t = topics[w.topic].1.as_ref().ok()?;
            let seen = r.as_ref().map_or(w.offset, |f| f.offsets.high_watermark);
            Some(Box::pin(b.wait(
                t,
                w.partition,
                w.offset.max(seen),
                remaining,
            )))
        });
        let waits: Vec<_> = waits.collect();
        if waits.is_empty() {
            tokio::time::sleep_until(deadline).await;
        } else {
            let _ = tokio::time::timeout_at(deadline, select_all(waits)).await;
        }
    };

    let mut total = 0usize;
    let mut full = false;
    resp.responses = topics
        .iter()
        .map(|(name, _)| {
            let mut t = FetchableTopicResponse::default();
            t.topic = name.clone();
            t
        })
        .collect();
    for (w, result) in wanted.iter().zip(results) {
        let mut part = PartitionData::default();
        part.partition_index = w.partition;
        part.aborted_transactions = Some(vec![]);
        match result {
            Ok(Fetched { offsets, batches }) => {
                part.high_watermark = offsets.high_watermark;
                part.last_stable_offset = offsets.high_watermark;
                part.log_start_offset = offsets.log_start;
                let mut take = 0;
                let mut size = 0;
                for batch in &batches {
                    // At least the first batch of the first non-empty
                    // partition, then only what fits.
                    if full || (total + size > 0 && total + size + batch.len() > max_bytes) {
                        full = true;
                        break;
                    }
                    size += batch.len();
                    take += 1;
                }
                total += size;
                part.records = Some(concat(&batches[..take], size));
            }
            Err(e) => {
                part.error_code = codes::code(&e, Scope::Partition);
                part.high_watermark = -1;
                part.last_stable_offset = -1;
                part.log_start_offset = -1;
                part.records = Some(Bytes::new());
            }
        }
        resp.responses[w.topic].partitions.push(part);
    }
    resp.session_id = 0;
    resp
}

fn concat(batches: &[Bytes], size: usize) -> Bytes {
    match batches {
        [] => Bytes::new(),
        [one] => one.clone(),
        many => {
            let mut buf = BytesMut::with_capacity(size);
            for b in many {
                buf.extend_from_slice(b);
            }
            buf.freeze()
        }
    }
}

// ------------------------------------------------------------- ListOffsets

pub async fn list_offsets<B: Backend>(
    b: &B,
    p: &B::Principal,
    req: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let topics = req.topics.into_iter().map(|topic| async move {
        let resolved = b.resolve(p, &topic.name.0);
        let partitions = topic.partitions.iter().map(|part| {
            let resolved = &resolved;
            async move {
                let mut out = ListOffsetsPartitionResponse::default();
                out.partition_index = part.partition_index;
                out.timestamp = -1;
                out.offset = -1;
                if version >= 4 {
                    out.leader_epoch = 0;
                }
                let spec = match part.timestamp {
                    -2 => Ok(OffsetSpec::Earliest),
                    -1 => Ok(OffsetSpec::Latest),
                    t if t >= 0 => Ok(OffsetSpec::Timestamp(t)),
                    // -3 (max timestamp, KIP-734) and others: not offered.
                    _ => Err(codes::INVALID_REQUEST),
                };
                let result = match (spec, resolved) {
                    (Err(code), _) => Err(code),
                    (_, Err(e)) => Err(codes::code(e, Scope::Partition)),
                    (Ok(spec), Ok(t)) => b
                        .list_offset(p, t, part.partition_index, spec)
                        .await
                        .map_err(|e| codes::code(&e, Scope::Partition)),
                };
                match result {
                    Ok(offset) => out.offset = offset,
                    Err(code) => out.error_code = code,
                }
                out
            }
        });
        let mut out = ListOffsetsTopicResponse::default();
        out.name = topic.name.clone();
        out.partitions = join_all(partitions).await;
        out
    });
    let mut resp = ListOffsetsResponse::default();
    resp.topics = join_all(topics).await;
    resp
}

// ------------------------------------------------------------ CreateTopics

/// `replication_factor` is ignored: the volume under the stream decides
/// how many copies exist. The answer echoes what was asked.
pub async fn create_topics<B: Backend>(
    b: &B,
    p: &B::Principal,
    req: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    let validate_only = req.validate_only;
    let topics = req.topics.into_iter().map(|topic| async move {
        let name = topic.name.0.to_string();
        let mut out = CreatableTopicResult::default();
        out.name = topic.name.clone();
        out.error_message = None;
        out.configs = None;
        // Manual assignments are accepted for their partition count only.
        let partitions = match (topic.num_partitions, topic.assignments.len()) {
            (-1, n) if n > 0 => i32::try_from(n).unwrap_or(i32::MAX),
            (n, _) => n,
        };
        let result = if partitions == 0 || partitions < -1 {
            Err(StreamError::InvalidPartitions(format!(
                "{partitions} partitions"
            )))
        } else {
            match b.resolve(p, &name) {
                Err(e) => Err(e),
                Ok(_) if validate_only => Ok(None),
                Ok(t) => {
                    let configs = topic
                        .configs
                        .iter()
                        .filter_map(|c| Some((c.name.to_string(), c.value.as_ref()?.to_string())))
                        .collect();
                    b.create_topic(p, &t, &name, partitions, configs)
                        .await
                        .map(Some)
                }
            }
        };
        match result {
            Ok(info) => {
                out.replication_factor = topic.replication_factor;
                if let Some(info) = info {
                    if version >= 7 {
                        out.topic_id = Uuid::from_bytes(info.id);
                    }
                    out.num_partitions = i32::try_from(info.partitions).unwrap_or(i32::MAX);
                    if version >= 5 {
                        out.configs = Some(
                            info.configs
                                .iter()
                                .map(|(k, v)| {
                                    let mut c = CreatableTopicConfigs::default();
                                    c.name = str_bytes(k);
                                    c.value = Some(str_bytes(v));
                                    c
                                })
                                .collect(),
                        );
                    }
                } else {
                    out.num_partitions = partitions;
                }
            }
            Err(e) => {
                out.error_code = codes::code(&e, Scope::Topic);
                out.error_message = error_message(&e);
            }
        }
        out
    });
    let mut resp = CreateTopicsResponse::default();
    resp.topics = join_all(topics).await;
    resp
}

// ------------------------------------------------------------ DeleteTopics

pub async fn delete_topics<B: Backend>(
    b: &B,
    p: &B::Principal,
    req: DeleteTopicsRequest,
    _version: i16,
) -> DeleteTopicsResponse {
    // v1-5 name topics in `topic_names` (v6+, by id, is not advertised).
    let topics = req.topic_names.into_iter().map(|name| async move {
        let result = match b.resolve(p, &name.0) {
            Ok(t) => b.delete_topic(p, &t).await,
            Err(e) => Err(e),
        };
        let mut out = DeletableTopicResult::default();
        out.name = Some(name);
        out.error_message = None;
        if let Err(e) = result {
            out.error_code = codes::code(&e, Scope::Topic);
            out.error_message = error_message(&e);
        }
        out
    });
    let mut resp = DeleteTopicsResponse::default();
    resp.responses = join_all(topics).await;
    resp
}

// -------------------------------------------------------- CreatePartitions

pub async fn create_partitions<B: Backend>(
    b: &B,
    p: &B::Principal,
    req: CreatePartitionsRequest,
    _version: i16,
) -> CreatePartitionsResponse {
    let validate_only = req.validate_only;
    let topics = req.topics.into_iter().map(|topic| async move {
        let name = topic.name.0.to_string();
        let result = match (u32::try_from(topic.count), b.resolve(p, &name)) {
            (Err(_), _) | (Ok(0), _) => Err(StreamError::InvalidPartitions(format!(
                "{} partitions",
                topic.count
            ))),
            (_, Err(e)) => Err(e),
            (Ok(count), Ok(t)) if validate_only => match b.topic(p, &t, &name, false).await {
                Ok(info) if info.partitions >= count => Err(StreamError::InvalidPartitions(
                    format!("topic has {} partitions already", info.partitions),
                )),
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            },
            (Ok(count), Ok(t)) => b.add_partitions(p, &t, count).await,
        };
        let mut out = CreatePartitionsTopicResult::default();
        out.name = topic.name;
        out.error_message = None;
        if let Err(e) = result {
            out.error_code = codes::code(&e, Scope::Topic);
            out.error_message = error_message(&e);
        }
        out
    });
    let mut resp = CreatePartitionsResponse::default();
    resp.results = join_all(topics).await;
    resp
}

// --------------------------------------------------------- DescribeConfigs

/// Kafka's ConfigResource.Type.TOPIC.
const RESOURCE_TOPIC: i8 = 2;
/// Kafka's ConfigSource.DYNAMIC_TOPIC_CONFIG.
const SOURCE_TOPIC: i8 = 1;

pub async fn describe_configs<B: Backend>(
    b: &B,
    p: &B::Principal,
    req: DescribeConfigsRequest,
    _version: i16,
) -> DescribeConfigsResponse {
    let resources = req.resources.into_iter().map(|r| async move {
        let mut out = DescribeConfigsResult::default();
        out.resource_type = r.resource_type;
        out.resource_name = r.resource_name.clone();
        out.error_message = None;
        if r.resource_type != RESOURCE_TOPIC {
            out.error_code = codes::INVALID_REQUEST;
            out.error_message = Some(StrBytes::from_static_str(
                "only topic resources are described",
            ));
            return out;
        }
        match topic(b, p, &r.resource_name, false).await {
            Ok(info) => {
                out.configs = info
                    .configs
                    .iter()
                    .filter(|(k, _)| {
                        // Null (or empty) asks for all.
                        r.configuration_keys.as_ref().is_none_or(|keys| {
                            keys.is_empty() || keys.iter().any(|want| want.as_str() == k)
                        })
                    })
                    .map(|(k, v)| {
                        let mut c = DescribeConfigsResourceResult::default();
                        c.name = str_bytes(k);
                        c.value = Some(str_bytes(v));
                        c.config_source = SOURCE_TOPIC;
                        c.documentation = None;
                        c
                    })
                    .collect();
            }
            Err(e) => {
                out.error_code = codes::code(&e, Scope::Topic);
                out.error_message = error_message(&e);
            }
        }
        out
    });
    let mut resp = DescribeConfigsResponse::default();
    resp.results = join_all(resources).await;
    resp
}

// ---------------------------------------------------------- InitProducerId

/// Idempotent producers get an id from the backend; transactional ones are
/// refused (transactions are not supported), as Produce refuses them.
pub async fn init_producer_id<B: Backend>(
    b: &B,
    p: &B::Principal,
    req: InitProducerIdRequest,
    _version: i16,
) -> InitProducerIdResponse {
    let mut resp = InitProducerIdResponse::default();
    resp.producer_id = ProducerId(-1);
    resp.producer_epoch = -1;
    let result = match &req.transactional_id {
        // Kafka checks the transactional id's authorization first: nobody
        // is authorized for one here (an empty one included).
        Some(_) => Err(codes::TRANSACTIONAL_ID_AUTHORIZATION_FAILED),
        None => b
            .init_producer_id(p)
            .await
            .map_err(|e| codes::code(&e, Scope::Topic)),
    };
    match result {
        Ok(id) => {
            resp.producer_id = ProducerId(id.id);
            resp.producer_epoch = id.epoch;
        }
        Err(code) => resp.error_code = code,
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch header of `len` bytes in all (12 + batch length) with the
    /// codec `codec`; the rest zeros.
    fn batch(len: usize, codec: u8) -> Vec<u8> {
        let mut b = vec![0u8; len];
        b[8..12].copy_from_slice(&(len as i32 - 12).to_be_bytes());
        b[16] = 2;
        b[22] = codec | 0x10; // a timestamp-type bit beside the codec
        b
    }

    #[test]
    fn zstd_is_found_in_any_batch() {
        assert!(!has_zstd_batch(&batch(61, 0)));
        for codec in 1..=3 {
            assert!(!has_zstd_batch(&batch(70, codec)), "codec {codec}");
        }
        assert!(has_zstd_batch(&batch(61, 4)));
        let mut two = batch(61, 3);
        two.extend(batch(80, 4));
        assert!(has_zstd_batch(&two));
    }

    #[test]
    fn broken_framing_stops_the_walk() {
        assert!(!has_zstd_batch(b""));
        assert!(!has_zstd_batch(&[0u8; 22]));
        // A length past the end, or negative: the backend judges the rest.
        let mut b = batch(61, 1);
        b[8..12].copy_from_slice(&1000i32.to_be_bytes());
        b.extend(batch(61, 4));
        assert!(!has_zstd_batch(&b));
        let mut b = batch(61, 1);
        b[8..12].copy_from_slice(&(-12i32).to_be_bytes());
        b.extend(batch(61, 4));
        assert!(!has_zstd_batch(&b));
    }
}
