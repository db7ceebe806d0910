//! A structural check run on every request body before kafka-protocol
//! decodes it: each array's element count must fit in the bytes left.
//!
//! Why: kafka-protocol 0.18 calls `Vec::with_capacity(count)` with the
//! count read off the wire, before reading any element. A few bytes
//! claiming 2^32 elements make the allocator fail, which aborts the whole
//! process (not a panic a task could survive). Every element takes at
//! least one byte on the wire, so a count above the bytes left is
//! malformed, whatever the schema. Upstream fixes are pending
//! (kafka-protocol-rs PRs #152, #161, #200); this module can go once one
//! ships.
//!
//! The walk mirrors the request schemas of the served versions only (see
//! `api::SUPPORTED`); the tests check it against kafka-protocol's encoder
//! for every one of them. ApiVersions, SaslHandshake, SaslAuthenticate and
//! the request header hold no arrays.

use kafka_protocol::messages::ApiKey;

type Res<T = ()> = Result<T, String>;

struct Walk<'a> {
    buf: &'a [u8],
    /// Flexible version: compact strings, bytes and arrays, tagged fields.
    flex: bool,
}

impl Walk<'_> {
    fn skip(&mut self, n: usize) -> Res {
        if n > self.buf.len() {
            return Err(format!("{n} bytes wanted, {} left", self.buf.len()));
        }
        self.buf = &self.buf[n..];
        Ok(())
    }

    fn take<const N: usize>(&mut self) -> Res<[u8; N]> {
        let Some((head, rest)) = self.buf.split_first_chunk::<N>() else {
            return Err(format!("{N} bytes wanted, {} left", self.buf.len()));
        };
        self.buf = rest;
        Ok(*head)
    }

    fn i8(&mut self) -> Res {
        self.skip(1)
    }
    fn i16(&mut self) -> Res<i16> {
        Ok(i16::from_be_bytes(self.take()?))
    }
    fn i32(&mut self) -> Res<i32> {
        Ok(i32::from_be_bytes(self.take()?))
    }
    fn i64(&mut self) -> Res {
        self.skip(8)
    }
    fn uuid(&mut self) -> Res {
        self.skip(16)
    }

    fn uvarint(&mut self) -> Res<u32> {
        let mut value = 0u32;
        for i in 0..5 {
            let [b] = self.take::<1>()?;
            value |= u32::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint longer than 5 bytes".into())
    }

    /// Length of a (nullable) string or bytes field; None is null.
    fn len(&mut self, wide: bool) -> Res<Option<usize>> {
        let n = if self.flex {
            i64::from(self.uvarint()?) - 1
        } else if wide {
            i64::from(self.i32()?)
        } else {
            i64::from(self.i16()?)
        };
        match n {
            -1 => Ok(None),
            n if n < -1 => Err(format!("negative length {n}")),
            n => Ok(Some(n as usize)),
        }
    }

    fn string(&mut self) -> Res {
        let n = self.len(false)?.unwrap_or(0);
        self.skip(n)
    }

    fn bytes(&mut self) -> Res {
        let n = self.len(true)?.unwrap_or(0);
        self.skip(n)
    }

    /// A (nullable) array, checking its count before walking the elements.
    fn array(&mut self, mut each: impl FnMut(&mut Self) -> Res) -> Res {
        let count = self.len(true)?.unwrap_or(0);
        if count > self.buf.len() {
            return Err(format!(
                "array of {count} elements in {} bytes",
                self.buf.len()
            ));
        }
        for _ in 0..count {
            each(self)?;
        }
        Ok(())
    }

    /// Tagged fields at the end of a structure (flexible versions only).
    fn tags(&mut self) -> Res {
        if !self.flex {
            return Ok(());
        }
        let count = self.uvarint()? as usize;
        if count > self.buf.len() {
            return Err(format!("{count} tagged fields in {} bytes", self.buf.len()));
        }
        for _ in 0..count {
            self.uvarint()?;
            let size = self.uvarint()? as usize;
            self.skip(size)?;
        }
        Ok(())
    }
}

/// Checks `body` (the request after its header) of `api` at `version`.
/// Returns how many bytes the schema covers (the tests compare it with
/// the encoder's output).
pub fn check(api: ApiKey, version: i16, body: &[u8]) -> Res<usize> {
    let v = version;
    let flex_from = match api {
        ApiKey::Produce => 9,
        ApiKey::Fetch => 12,
        ApiKey::Metadata => 9,
        ApiKey::ListOffsets => 6,
        ApiKey::CreateTopics => 5,
        ApiKey::DeleteTopics => 4,
        ApiKey::CreatePartitions => 2,
        ApiKey::DescribeConfigs => 4,
        // No arrays in these (or not served: refused before decoding).
        _ => return Ok(0),
    };
    let mut w = Walk {
        buf: body,
        flex: v >= flex_from,
    };
    match api {
        ApiKey::Produce => {
            w.string()?; // transactional_id
            w.i16()?; // acks
            w.i32()?; // timeout_ms
            w.array(|w| {
                w.string()?; // name (v <= 12)
                w.array(|w| {
                    w.i32()?; // index
                    w.bytes()?; // records
                    w.tags()
                })?;
                w.tags()
            })?;
        }
        ApiKey::Fetch => {
            w.i32()?; // replica_id (v <= 14)
            w.i32()?; // max_wait_ms
            w.i32()?; // min_bytes
            w.i32()?; // max_bytes
            w.i8()?; // isolation_level
            if v >= 7 {
                w.i32()?; // session_id
                w.i32()?; // session_epoch
            }
            w.array(|w| {
                w.string()?; // topic (v <= 12)
                w.array(|w| {
                    w.i32()?; // partition
                    if v >= 9 {
                        w.i32()?; // current_leader_epoch
                    }
                    w.i64()?; // fetch_offset
                    if v >= 12 {
                        w.i32()?; // last_fetched_epoch
                    }
                    if v >= 5 {
                        w.i64()?; // log_start_offset
                    }
                    w.i32()?; // partition_max_bytes
                    w.tags()
                })?;
                w.tags()
            })?;
            if v >= 7 {
                w.array(|w| {
                    w.string()?; // topic (7 <= v <= 12)
                    w.array(|w| w.i32().map(drop))?; // partitions
                    w.tags()
                })?;
            }
            if v >= 11 {
                w.string()?; // rack_id
            }
        }
        ApiKey::Metadata => {
            w.array(|w| {
                if v >= 10 {
                    w.uuid()?; // topic_id
                }
                w.string()?; // name
                w.tags()
            })?;
            if v >= 4 {
                w.i8()?; // allow_auto_topic_creation
            }
            if (8..=10).contains(&v) {
                w.i8()?; // include_cluster_authorized_operations
            }
            if v >= 8 {
                w.i8()?; // include_topic_authorized_operations
            }
        }
        ApiKey::ListOffsets => {
            w.i32()?; // replica_id
            if v >= 2 {
                w.i8()?; // isolation_level
            }
            w.array(|w| {
                w.string()?; // name
                w.array(|w| {
                    w.i32()?; // partition_index
                    if v >= 4 {
                        w.i32()?; // current_leader_epoch
                    }
                    w.i64()?; // timestamp
                    w.tags()
                })?;
                w.tags()
            })?;
            if v >= 10 {
                w.i32()?; // timeout_ms
            }
        }
        ApiKey::CreateTopics => {
            w.array(|w| {
                w.string()?; // name
                w.i32()?; // num_partitions
                w.i16()?; // replication_factor
                w.array(|w| {
                    w.i32()?; // partition_index
                    w.array(|w| w.i32().map(drop))?; // broker_ids
                    w.tags()
                })?;
                w.array(|w| {
                    w.string()?; // name
                    w.string()?; // value
                    w.tags()
                })?;
                w.tags()
            })?;
            w.i32()?; // timeout_ms
            w.i8()?; // validate_only
        }
        ApiKey::DeleteTopics => {
            w.array(|w| w.string())?; // topic_names (v <= 5)
            w.i32()?; // timeout_ms
        }
        ApiKey::CreatePartitions => {
            w.array(|w| {
                w.string()?; // name
                w.i32()?; // count
                w.array(|w| {
                    w.array(|w| w.i32().map(drop))?; // broker_ids
                    w.tags()
                })?;
                w.tags()
            })?;
            w.i32()?; // timeout_ms
            w.i8()?; // validate_only
        }
        ApiKey::DescribeConfigs => {
            w.array(|w| {
                w.i8()?; // resource_type
                w.string()?; // resource_name
                w.array(|w| w.string())?; // configuration_keys
                w.tags()
            })?;
            w.i8()?; // include_synonyms
            if v >= 3 {
                w.i8()?; // include_documentation
            }
        }
        _ => unreachable!("handled above"),
    }
    w.tags()?;
    Ok(body.len() - w.buf.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SUPPORTED;
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

    fn s(x: &'static str) -> StrBytes {
        StrBytes::from_static_str(x)
    }
    fn name(x: &'static str) -> TopicName {
        TopicName(s(x))
    }

    /// A request of `api` with every array non-empty (two elements where
    /// it matters), as valid at `version`.
    fn sample(api: ApiKey, version: i16) -> Option<Vec<u8>> {
        use kafka_protocol::messages::*;
        let mut buf = BytesMut::new();
        let v = version;
        match api {
            ApiKey::Produce => {
                let mut p = produce_request::PartitionProduceData::default();
                p.index = 1;
                p.records = Some(Bytes::from_static(b"batch-bytes"));
                let mut t = produce_request::TopicProduceData::default();
                t.name = name("t");
                t.partition_data = vec![p.clone(), p];
                let mut r = ProduceRequest::default();
                r.transactional_id = None;
                r.acks = -1;
                r.topic_data = vec![t.clone(), t];
                r.encode(&mut buf, v).ok()?;
            }
            ApiKey::Fetch => {
                let mut p = fetch_request::FetchPartition::default();
                p.fetch_offset = 5;
                p.partition_max_bytes = 1000;
                let mut t = fetch_request::FetchTopic::default();
                t.topic = name("t");
                t.partitions = vec![p.clone(), p];
                let mut r = FetchRequest::default();
                r.max_wait_ms = 500;
                r.topics = vec![t.clone(), t];
                if v >= 7 {
                    let mut f = fetch_request::ForgottenTopic::default();
                    f.topic = name("old");
                    f.partitions = vec![1, 2, 3];
                    r.forgotten_topics_data = vec![f];
                }
                if v >= 11 {
                    r.rack_id = s("rack");
                }
                if v >= 12 {
                    r.cluster_id = Some(s("cluster"));
                }
                r.encode(&mut buf, v).ok()?;
            }
            ApiKey::Metadata => {
                let mut t = metadata_request::MetadataRequestTopic::default();
                t.name = Some(name("t"));
                let mut r = MetadataRequest::default();
                r.topics = Some(vec![t.clone(), t]);
                r.encode(&mut buf, v).ok()?;
            }
            ApiKey::ListOffsets => {
                let mut p = list_offsets_request::ListOffsetsPartition::default();
                p.timestamp = -1;
                let mut t = list_offsets_request::ListOffsetsTopic::default();
                t.name = name("t");
                t.partitions = vec![p.clone(), p];
                let mut r = ListOffsetsRequest::default();
                r.topics = vec![t.clone(), t];
                r.encode(&mut buf, v).ok()?;
            }
            ApiKey::CreateTopics => {
                let mut a = create_topics_request::CreatableReplicaAssignment::default();
                a.broker_ids = vec![BrokerId(1), BrokerId(2)];
                let mut c = create_topics_request::CreatableTopicConfig::default();
                c.name = s("retention.ms");
                c.value = Some(s("1"));
                let mut t = create_topics_request::CreatableTopic::default();
                t.name = name("t");
                t.assignments = vec![a.clone(), a];
                t.configs = vec![c.clone(), c];
                let mut r = CreateTopicsRequest::default();
                r.topics = vec![t.clone(), t];
                r.encode(&mut buf, v).ok()?;
            }
            ApiKey::DeleteTopics => {
                let mut r = DeleteTopicsRequest::default();
                r.topic_names = vec![name("a"), name("b")];
                r.encode(&mut buf, v).ok()?;
            }
            ApiKey::CreatePartitions => {
                let mut a = create_partitions_request::CreatePartitionsAssignment::default();
                a.broker_ids = vec![BrokerId(1), BrokerId(2)];
                let mut t = create_partitions_request::CreatePartitionsTopic::default();
                t.name = name("t");
                t.count = 3;
                t.assignments = Some(vec![a.clone(), a]);
                let mut r = CreatePartitionsRequest::default();
                r.topics = vec![t.clone(), t];
                r.encode(&mut buf, v).ok()?;
            }
            ApiKey::DescribeConfigs => {
                let mut res = describe_configs_request::DescribeConfigsResource::default();
                res.resource_type = 2;
                res.resource_name = s("t");
                res.configuration_keys = Some(vec![s("a"), s("b")]);
                let mut r = DescribeConfigsRequest::default();
                r.resources = vec![res.clone(), res];
                r.encode(&mut buf, v).ok()?;
            }
            _ => return None,
        }
        Some(buf.to_vec())
    }

    fn decodes(api: ApiKey, version: i16, body: &[u8]) -> bool {
        let mut b = Bytes::copy_from_slice(body);
        let v = version;
        match api {
            ApiKey::Produce => ProduceRequest::decode(&mut b, v).is_ok(),
            ApiKey::Fetch => FetchRequest::decode(&mut b, v).is_ok(),
            ApiKey::Metadata => MetadataRequest::decode(&mut b, v).is_ok(),
            ApiKey::ListOffsets => ListOffsetsRequest::decode(&mut b, v).is_ok(),
            ApiKey::CreateTopics => CreateTopicsRequest::decode(&mut b, v).is_ok(),
            ApiKey::DeleteTopics => DeleteTopicsRequest::decode(&mut b, v).is_ok(),
            ApiKey::CreatePartitions => CreatePartitionsRequest::decode(&mut b, v).is_ok(),
            ApiKey::DescribeConfigs => DescribeConfigsRequest::decode(&mut b, v).is_ok(),
            _ => true,
        }
    }

    /// Every served version of every API with arrays: the walk covers
    /// exactly what kafka-protocol encodes.
    #[test]
    fn walk_matches_the_codec_for_every_served_version() {
        let mut checked = 0;
        for sup in SUPPORTED {
            let codec = sup.key.valid_versions();
            for v in sup.min.max(codec.min)..=sup.max {
                let Some(body) = sample(sup.key, v) else {
                    continue;
                };
                assert_eq!(
                    check(sup.key, v, &body),
                    Ok(body.len()),
                    "{:?} v{v}",
                    sup.key
                );
                assert!(decodes(sup.key, v, &body), "{:?} v{v}", sup.key);
                checked += 1;
            }
        }
        // Produce 7 + Fetch 9 + Metadata 13 + ListOffsets 7 + CreateTopics 6
        // + DeleteTopics 5 + CreatePartitions 4 + DescribeConfigs 4.
        assert_eq!(checked, 55);
    }

    /// Any single corrupted byte or truncation: the walk rejects it or the
    /// decoder copes; never a huge allocation (which would abort the test).
    #[test]
    fn corrupted_requests_are_rejected_or_decode_safely() {
        for sup in SUPPORTED {
            let codec = sup.key.valid_versions();
            for v in sup.min.max(codec.min)..=sup.max {
                let Some(body) = sample(sup.key, v) else {
                    continue;
                };
                for i in 0..body.len() {
                    for byte in [0xff, 0x7f, 0x80, 0x00] {
                        let mut bad = body.clone();
                        bad[i] = byte;
                        if check(sup.key, v, &bad).is_ok() {
                            decodes(sup.key, v, &bad);
                        }
                    }
                    assert!(
                        check(sup.key, v, &body[..i]).is_err(),
                        "{:?} v{v} [..{i}]",
                        sup.key
                    );
                }
            }
        }
    }

    #[test]
    fn huge_counts_are_refused() {
        // Metadata v12: a compact topic array claiming 2^32 - 2 topics.
        let body = [0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(check(ApiKey::Metadata, 12, &body).is_err());
        // Metadata v1: i32::MAX topics.
        let body = i32::MAX.to_be_bytes();
        assert!(check(ApiKey::Metadata, 1, &body).is_err());
        // Null arrays are fine.
        let body = (-1i32).to_be_bytes();
        assert_eq!(check(ApiKey::Metadata, 1, &body), Ok(4));
    }
}
