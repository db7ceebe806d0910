//! A request frame (the bytes after the 4-byte size) through everything a
//! Kafka connection does with it before dispatch: the header
//! (`read_head`: API, version, header format), then the body walked by the
//! guard and decoded by kafka-protocol as its API's request type
//! (`Req::decode`). A panic, an overflow or an allocation past libFuzzer's
//! limit (the codec sizes arrays from counts on the wire) is a finding.
//!
//! Seeds: `BERTH_FUZZ_SEEDS=<dir>` writes real request frames, encoded by
//! kafka-protocol, to `<dir>` and exits (`scripts/fuzz` does this).

#![no_main]

use berth_kafka::fuzzing::{guard_check, read_head, Close, Head, Req};
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        if let Some(dir) = std::env::var_os("BERTH_FUZZ_SEEDS") {
            write_seeds(std::path::Path::new(&dir));
            std::process::exit(0);
        }
    },
    |data: &[u8]| {
        let Ok(Head::Req(mut r)) = read_head(Bytes::copy_from_slice(data)) else {
            return;
        };
        decode(&mut r);
    }
);

/// Decodes the body as the connection's dispatcher would for its API.
fn decode(r: &mut Req) {
    match r.api {
        ApiKey::Produce => one::<ProduceRequest>(r),
        ApiKey::Fetch => one::<FetchRequest>(r),
        ApiKey::ListOffsets => one::<ListOffsetsRequest>(r),
        ApiKey::Metadata => one::<MetadataRequest>(r),
        ApiKey::OffsetCommit => one::<OffsetCommitRequest>(r),
        ApiKey::OffsetFetch => one::<OffsetFetchRequest>(r),
        ApiKey::FindCoordinator => one::<FindCoordinatorRequest>(r),
        ApiKey::JoinGroup => one::<JoinGroupRequest>(r),
        ApiKey::Heartbeat => one::<HeartbeatRequest>(r),
        ApiKey::LeaveGroup => one::<LeaveGroupRequest>(r),
        ApiKey::SyncGroup => one::<SyncGroupRequest>(r),
        ApiKey::DescribeGroups => one::<DescribeGroupsRequest>(r),
        ApiKey::ListGroups => one::<ListGroupsRequest>(r),
        ApiKey::SaslHandshake => one::<SaslHandshakeRequest>(r),
        ApiKey::ApiVersions => one::<ApiVersionsRequest>(r),
        ApiKey::CreateTopics => one::<CreateTopicsRequest>(r),
        ApiKey::DeleteTopics => one::<DeleteTopicsRequest>(r),
        ApiKey::InitProducerId => one::<InitProducerIdRequest>(r),
        ApiKey::DescribeConfigs => one::<DescribeConfigsRequest>(r),
        ApiKey::SaslAuthenticate => one::<SaslAuthenticateRequest>(r),
        ApiKey::CreatePartitions => one::<CreatePartitionsRequest>(r),
        // A newly served API needs its arm here.
        api => panic!("read_head admitted {api:?}, which this target does not decode"),
    }
}

fn one<T: Decodable>(r: &mut Req) {
    let body = r.body.clone();
    let walked = guard_check(r.api, r.version, &body);
    let decoded: Result<T, Close> = r.decode();
    // The guard walks only APIs with arrays; it answers 0 for the others.
    let unwalked = matches!(
        r.api,
        ApiKey::ApiVersions
            | ApiKey::SaslHandshake
            | ApiKey::SaslAuthenticate
            | ApiKey::Heartbeat
            | ApiKey::InitProducerId
    );
    if let (Ok(walked), Ok(_), false) = (walked, decoded, unwalked) {
        // The guard mirrors the schema: where the codec accepts a body it
        // must have walked exactly the bytes the codec read, or its count
        // checks looked at the wrong bytes.
        let read = body.len() - r.body.len();
        assert_eq!(
            walked, read,
            "{:?} v{}: guard walked {walked} bytes, codec read {read}",
            r.api, r.version
        );
    }
}

fn s(x: &'static str) -> StrBytes {
    StrBytes::from_static_str(x)
}

/// One request frame body: header then message, as a client sends it.
fn frame<T: Encodable>(api: ApiKey, version: i16, body: &T) -> Vec<u8> {
    let mut buf = BytesMut::new();
    let mut h = RequestHeader::default();
    h.request_api_key = api as i16;
    h.request_api_version = version;
    h.correlation_id = 7;
    h.client_id = Some(s("fuzz"));
    h.encode(&mut buf, api.request_header_version(version))
        .expect("header encodes");
    body.encode(&mut buf, version).expect("request encodes");
    buf.to_vec()
}

fn write_seeds(dir: &std::path::Path) {
    use berth_streams::batch;
    std::fs::create_dir_all(dir).expect("seed dir");
    let mut seeds: Vec<Vec<u8>> = Vec::new();

    let mut av = ApiVersionsRequest::default();
    av.client_software_name = s("fuzz");
    av.client_software_version = s("1");
    seeds.push(frame(ApiKey::ApiVersions, 3, &av));
    seeds.push(frame(ApiKey::ApiVersions, 0, &av));

    let mut hs = SaslHandshakeRequest::default();
    hs.mechanism = s("SCRAM-SHA-256");
    seeds.push(frame(ApiKey::SaslHandshake, 1, &hs));
    let mut sa = SaslAuthenticateRequest::default();
    sa.auth_bytes = Bytes::from_static(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
    seeds.push(frame(ApiKey::SaslAuthenticate, 2, &sa));

    let mut t = metadata_request::MetadataRequestTopic::default();
    t.name = Some(TopicName(s("events")));
    let mut md = MetadataRequest::default();
    md.topics = Some(vec![t]);
    for v in [1, 9, 12] {
        seeds.push(frame(ApiKey::Metadata, v, &md));
    }

    let rec = batch::Record {
        key: Some(b"k"),
        value: Some(b"v"),
    };
    let records = batch::encode(&[rec, rec], 0, Some((1, 0, 0)));
    let mut p = produce_request::PartitionProduceData::default();
    p.records = Some(Bytes::from(records));
    let mut pt = produce_request::TopicProduceData::default();
    pt.name = TopicName(s("events"));
    pt.partition_data = vec![p];
    let mut pr = ProduceRequest::default();
    pr.acks = -1;
    pr.timeout_ms = 1000;
    pr.topic_data = vec![pt];
    for v in [3, 8, 9] {
        seeds.push(frame(ApiKey::Produce, v, &pr));
    }

    let mut fp = fetch_request::FetchPartition::default();
    fp.fetch_offset = 5;
    fp.partition_max_bytes = 1 << 20;
    let mut ft = fetch_request::FetchTopic::default();
    ft.topic = TopicName(s("events"));
    ft.partitions = vec![fp];
    let mut fr = FetchRequest::default();
    fr.max_wait_ms = 500;
    fr.max_bytes = 1 << 20;
    fr.topics = vec![ft];
    for v in [4, 11, 12] {
        seeds.push(frame(ApiKey::Fetch, v, &fr));
    }

    let mut jp = join_group_request::JoinGroupRequestProtocol::default();
    jp.name = s("range");
    jp.metadata = Bytes::from_static(b"\0\0\0\0\0\x01\0\x06events");
    let mut jg = JoinGroupRequest::default();
    jg.group_id = GroupId(s("g"));
    jg.session_timeout_ms = 10_000;
    jg.rebalance_timeout_ms = 30_000;
    jg.protocol_type = s("consumer");
    jg.protocols = vec![jp];
    for v in [5, 9] {
        seeds.push(frame(ApiKey::JoinGroup, v, &jg));
    }

    let mut oc_p = offset_commit_request::OffsetCommitRequestPartition::default();
    oc_p.committed_offset = 42;
    let mut oc_t = offset_commit_request::OffsetCommitRequestTopic::default();
    oc_t.name = TopicName(s("events"));
    oc_t.partitions = vec![oc_p];
    let mut oc = OffsetCommitRequest::default();
    oc.group_id = GroupId(s("g"));
    oc.member_id = s("m");
    oc.topics = vec![oc_t];
    seeds.push(frame(ApiKey::OffsetCommit, 8, &oc));

    let mut cfg = create_topics_request::CreatableTopicConfig::default();
    cfg.name = s("cleanup.policy");
    cfg.value = Some(s("compact"));
    let mut ct_t = create_topics_request::CreatableTopic::default();
    ct_t.name = TopicName(s("events"));
    ct_t.num_partitions = 3;
    ct_t.replication_factor = -1;
    ct_t.configs = vec![cfg];
    let mut ct = CreateTopicsRequest::default();
    ct.topics = vec![ct_t];
    seeds.push(frame(ApiKey::CreateTopics, 7, &ct));

    let mut sg_a = sync_group_request::SyncGroupRequestAssignment::default();
    sg_a.member_id = s("m");
    sg_a.assignment = Bytes::from_static(b"assignment");
    let mut sg = SyncGroupRequest::default();
    sg.group_id = GroupId(s("g"));
    sg.member_id = s("m");
    sg.protocol_type = Some(s("consumer"));
    sg.protocol_name = Some(s("range"));
    sg.assignments = vec![sg_a];
    seeds.push(frame(ApiKey::SyncGroup, 5, &sg));

    let mut lo_p = list_offsets_request::ListOffsetsPartition::default();
    lo_p.timestamp = -1;
    let mut lo_t = list_offsets_request::ListOffsetsTopic::default();
    lo_t.name = TopicName(s("events"));
    lo_t.partitions = vec![lo_p];
    let mut lo = ListOffsetsRequest::default();
    lo.topics = vec![lo_t];
    seeds.push(frame(ApiKey::ListOffsets, 7, &lo));

    let mut of_t = offset_fetch_request::OffsetFetchRequestTopics::default();
    of_t.name = TopicName(s("events"));
    of_t.partition_indexes = vec![0, 1];
    let mut of_g = offset_fetch_request::OffsetFetchRequestGroup::default();
    of_g.group_id = GroupId(s("g"));
    of_g.topics = Some(vec![of_t]);
    let mut of = OffsetFetchRequest::default();
    of.groups = vec![of_g];
    seeds.push(frame(ApiKey::OffsetFetch, 8, &of));

    let mut lg_m = leave_group_request::MemberIdentity::default();
    lg_m.member_id = s("m");
    lg_m.reason = Some(s("bye"));
    let mut lg = LeaveGroupRequest::default();
    lg.group_id = GroupId(s("g"));
    lg.members = vec![lg_m];
    seeds.push(frame(ApiKey::LeaveGroup, 5, &lg));

    let mut hb = HeartbeatRequest::default();
    hb.group_id = GroupId(s("g"));
    hb.member_id = s("m");
    seeds.push(frame(ApiKey::Heartbeat, 4, &hb));

    let mut dc_r = describe_configs_request::DescribeConfigsResource::default();
    dc_r.resource_type = 2;
    dc_r.resource_name = s("events");
    dc_r.configuration_keys = Some(vec![s("retention.ms")]);
    let mut dc = DescribeConfigsRequest::default();
    dc.resources = vec![dc_r];
    seeds.push(frame(ApiKey::DescribeConfigs, 4, &dc));

    let mut ipi = InitProducerIdRequest::default();
    ipi.transaction_timeout_ms = 60_000;
    seeds.push(frame(ApiKey::InitProducerId, 4, &ipi));

    for (i, seed) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:02}")), seed).expect("seed written");
    }
}
