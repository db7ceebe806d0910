//! The streams service against a real single-node kernel (store, multi-raft
//! loop, meta shard) in a temp dir: offsets, reads, topics, rights.

use std::sync::Arc;
use std::time::Duration;

use berth_fs::Namespace;
use berth_meta::testing::{single_node, SingleNode};
use berth_meta::{Code, Meta};
use berth_security::principal::Principal;
use berth_streams::{batch, compact, AppendError, Refused, Right, StreamConfig, Streams};
use bytes::Bytes;

struct Kernel {
    /// Keeps the node and its temp dir alive for the test.
    _node: SingleNode,
    meta: Arc<Meta>,
    streams: Arc<Streams>,
    admin: Principal,
}

async fn kernel() -> Kernel {
    let node = single_node().await;
    let ns = Namespace::new(node.meta.clone());
    ns.reconcile().await.unwrap();
    Kernel {
        meta: node.meta.clone(),
        streams: Streams::new(ns),
        admin: node.admin.clone(),
        _node: node,
    }
}

/// Stream /s with `config` and its one-partition topic t.
async fn one_topic(
    k: &Kernel,
    config: StreamConfig,
) -> (berth_streams::StreamRef, berth_streams::TopicRecord) {
    topic_with(k, config, 1).await
}

/// Stream /s with `config` and its topic t of `partitions` partitions.
async fn topic_with(
    k: &Kernel,
    config: StreamConfig,
    partitions: u32,
) -> (berth_streams::StreamRef, berth_streams::TopicRecord) {
    let s = k
        .streams
        .create_stream(&k.admin, "/s", config)
        .await
        .unwrap();
    let t = k
        .streams
        .create_topic(&k.admin, &s, "t", partitions)
        .await
        .unwrap();
    (s, t)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

impl Kernel {
    async fn user(&self, name: &str) -> Principal {
        self.meta
            .user_add(&self.admin, name, Some("pw"), None, vec![], false)
            .await
            .unwrap();
        let (t, _) = self.meta.sign_for(name, None, 3600).unwrap();
        self.meta.authenticate(&t).unwrap()
    }
}

/// A record batch v2 of `n` records without key or value, max timestamp `ts`.
fn batch_of(n: u32, ts: i64) -> Vec<u8> {
    empty_records(n, ts, None)
}

/// The same from an idempotent producer.
fn producer_batch(n: u32, ts: i64, pid: i64, epoch: i16, seq: i32) -> Vec<u8> {
    empty_records(n, ts, Some((pid, epoch, seq)))
}

fn empty_records(n: u32, ts: i64, producer: Option<batch::Producer>) -> Vec<u8> {
    let r = batch::Record {
        key: None,
        value: None,
    };
    batch::encode(&vec![r; n as usize], ts, producer)
}

#[tokio::test]
async fn appends_get_contiguous_offsets_and_read_back_from_any_offset() {
    let k = kernel().await;
    let a = &k.admin;
    let (s, t) = topic_with(&k, StreamConfig::default(), 2).await;
    assert_eq!(t.partitions, 2);
    let mut bases = Vec::new();
    for (n, ts) in [(3, 100), (1, 200), (5, 300)] {
        let r = k
            .streams
            .append(a, &s, "t", &t, 1, Bytes::from(batch_of(n, ts)))
            .await
            .unwrap();
        bases.push(r.base_offset);
    }
    assert_eq!(bases, [0, 3, 4]);
    let o = k.streams.offsets(a, &s, &t, 1).await.unwrap();
    assert_eq!((o.log_start, o.next), (0, 9));
    // Partition 0 is untouched.
    assert_eq!(k.streams.offsets(a, &s, &t, 0).await.unwrap().next, 0);
    // From the middle of the first batch: that whole batch first.
    let (_, got) = k.streams.read(a, &s, &t, 1, 1, 1 << 20).await.unwrap();
    let got: Vec<i64> = got.iter().map(|b| batch::base_offset(b)).collect();
    assert_eq!(got, [0, 3, 4]);
    let (_, got) = k.streams.read(a, &s, &t, 1, 4, 1 << 20).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(batch::base_offset(&got[0]), 4);
    assert!(
        batch::split(&got[0]).is_ok(),
        "stored batches keep a valid CRC"
    );
    // At the end: nothing; past it: out of range.
    let (_, got) = k.streams.read(a, &s, &t, 1, 9, 1 << 20).await.unwrap();
    assert!(got.is_empty());
    let e = k.streams.read(a, &s, &t, 1, 10, 1 << 20).await.unwrap_err();
    assert_eq!(e.code, Code::Range);
    // A small max_bytes still returns one whole batch.
    let (_, got) = k.streams.read(a, &s, &t, 1, 0, 1).await.unwrap();
    assert_eq!(got.len(), 1);
    // By time: the first batch whose max timestamp reaches it.
    assert_eq!(
        k.streams.offset_for_time(a, &s, &t, 1, 150).await.unwrap(),
        3
    );
    assert_eq!(
        k.streams.offset_for_time(a, &s, &t, 1, 301).await.unwrap(),
        9
    );
    // No such partition.
    let e = k
        .streams
        .append(a, &s, "t", &t, 2, Bytes::from(batch_of(1, 0)))
        .await
        .unwrap_err();
    assert_eq!(e.failed().expect("a failure").code, Code::NotFound);
}

#[tokio::test]
async fn bad_batches_are_refused_and_nothing_is_written() {
    let k = kernel().await;
    let a = &k.admin;
    let (s, t) = topic_with(&k, StreamConfig::default(), 1).await;
    let mut bad = batch_of(2, 0);
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    let e = k
        .streams
        .append(a, &s, "t", &t, 0, Bytes::from(bad))
        .await
        .unwrap_err();
    assert_eq!(e.failed().expect("a failure").code, Code::BadMessage);
    assert_eq!(k.streams.offsets(a, &s, &t, 0).await.unwrap().next, 0);
}

#[tokio::test]
async fn topics_are_created_grown_and_deleted_with_their_logs() {
    let k = kernel().await;
    let a = &k.admin;
    let s = k
        .streams
        .create_stream(
            a,
            "/s",
            StreamConfig {
                default_partitions: 3,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let t = k
        .streams
        .topic_or_create(a, &s, "auto", true)
        .await
        .unwrap();
    assert_eq!(t.partitions, 3);
    assert_eq!(
        k.streams
            .create_topic(a, &s, "auto", 1)
            .await
            .unwrap_err()
            .code,
        Code::Exists
    );
    assert_eq!(
        k.streams
            .create_topic(a, &s, "bad/name", 1)
            .await
            .unwrap_err()
            .code,
        Code::Invalid
    );
    k.streams
        .append(a, &s, "auto", &t, 0, Bytes::from(batch_of(2, 0)))
        .await
        .unwrap();
    let grown = k.streams.add_partitions(a, &s, "auto", 5).await.unwrap();
    assert_eq!(grown.partitions, 5);
    assert!(k.streams.add_partitions(a, &s, "auto", 4).await.is_err());
    k.streams.delete_topic(a, &s, "auto").await.unwrap();
    assert!(k.streams.topic(&s, "auto").await.unwrap().is_none());
    // The old record is stale: appending with it fails, nothing is written.
    let e = k
        .streams
        .append(a, &s, "auto", &t, 0, Bytes::from(batch_of(1, 0)))
        .await
        .unwrap_err();
    assert_eq!(e.failed().expect("a failure").code, Code::NotFound);
    // A new topic of the same name starts empty.
    let t2 = k.streams.create_topic(a, &s, "auto", 1).await.unwrap();
    assert_ne!(t2.id, t.id);
    assert_eq!(k.streams.offsets(a, &s, &t2, 0).await.unwrap().next, 0);
    let names: Vec<String> = k
        .streams
        .topics(a, &s)
        .await
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["auto"]);
    // Autocreate off: a missing topic stays missing.
    k.streams
        .configure(a, "/s", |c| c.autocreate = false)
        .await
        .unwrap();
    let s = k.streams.stream(a, "/s", Right::Admin).await.unwrap();
    let e = k
        .streams
        .topic_or_create(a, &s, "other", true)
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::NotFound);
    // Deleting the stream takes its data along.
    k.streams.delete_stream(a, "/s").await.unwrap();
    let again = k
        .streams
        .create_stream(a, "/s", StreamConfig::default())
        .await
        .unwrap();
    assert!(k.streams.topics(a, &again).await.unwrap().is_empty());
}

#[tokio::test]
async fn rights_come_from_the_stream_aces() {
    let k = kernel().await;
    let a = &k.admin;
    let bob = k.user("bob").await;
    let (s, t) = topic_with(&k, StreamConfig::default(), 1).await;
    // Unset ACEs: the owner (admin) only.
    let e = k
        .streams
        .append(&bob, &s, "t", &t, 0, Bytes::from(batch_of(1, 0)))
        .await
        .unwrap_err();
    assert_eq!(e.failed().expect("a failure").code, Code::Access);
    assert_eq!(
        k.streams
            .read(&bob, &s, &t, 0, 0, 100)
            .await
            .unwrap_err()
            .code,
        Code::Access
    );
    assert_eq!(
        k.streams
            .create_topic(&bob, &s, "b", 1)
            .await
            .unwrap_err()
            .code,
        Code::Access
    );
    assert_eq!(
        k.streams
            .configure(&bob, "/s", |c| c.autocreate = false)
            .await
            .unwrap_err()
            .code,
        Code::Access
    );
    k.streams
        .configure(a, "/s", |c| {
            c.produce_ace = Some("u:bob".into());
            c.consume_ace = Some("u:bob".into());
        })
        .await
        .unwrap();
    let s = k.streams.lookup(&bob, "/s").await.unwrap();
    k.streams
        .append(&bob, &s, "t", &t, 0, Bytes::from(batch_of(1, 0)))
        .await
        .unwrap();
    let (_, got) = k.streams.read(&bob, &s, &t, 0, 0, 100).await.unwrap();
    assert_eq!(got.len(), 1);
    // Still no topic right.
    assert_eq!(
        k.streams
            .create_topic(&bob, &s, "b", 1)
            .await
            .unwrap_err()
            .code,
        Code::Access
    );
}

#[tokio::test]
async fn a_long_poll_wakes_on_append() {
    let k = kernel().await;
    let a = k.admin.clone();
    let s = k
        .streams
        .create_stream(&a, "/s", StreamConfig::default())
        .await
        .unwrap();
    let t = k.streams.create_topic(&a, &s, "t", 1).await.unwrap();
    let streams = k.streams.clone();
    let (s2, t2) = (s.clone(), t.clone());
    let waiter = tokio::spawn(async move {
        let start = std::time::Instant::now();
        streams.wait(&s2, &t2, 0, 0, Duration::from_secs(30)).await;
        start.elapsed()
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    k.streams
        .append(&a, &s, "t", &t, 0, Bytes::from(batch_of(1, 0)))
        .await
        .unwrap();
    let waited = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the long poll woke")
        .unwrap();
    assert!(waited < Duration::from_secs(10));
}

#[tokio::test]
async fn idempotent_producers_are_deduplicated_and_kept_in_order() {
    let k = kernel().await;
    let a = &k.admin;
    let (s, t) = topic_with(&k, StreamConfig::default(), 1).await;
    let append = |b: Vec<u8>| {
        let (streams, s, t) = (k.streams.clone(), s.clone(), t.clone());
        let a = a.clone();
        async move { streams.append(&a, &s, "t", &t, 0, Bytes::from(b)).await }
    };
    let base = |r: Result<berth_streams::Appended, AppendError>| r.unwrap().base_offset;
    // Producer 7: sequences 0..2, then 3..3.
    assert_eq!(base(append(producer_batch(3, 0, 7, 0, 0)).await), 0);
    assert_eq!(base(append(producer_batch(1, 0, 7, 0, 3)).await), 3);
    // A retry of the first batch: its old offset, nothing written.
    let dup = append(producer_batch(3, 0, 7, 0, 0)).await.unwrap();
    assert_eq!((dup.base_offset, dup.next), (0, 4));
    assert_eq!(k.streams.offsets(a, &s, &t, 0).await.unwrap().next, 4);
    // A gap is refused.
    assert!(matches!(
        append(producer_batch(1, 0, 7, 0, 9)).await.unwrap_err(),
        AppendError::Refused(Refused::OutOfOrder(_))
    ));
    // Another producer interleaves freely.
    assert_eq!(base(append(producer_batch(2, 0, 8, 0, 0)).await), 4);
    assert_eq!(base(append(producer_batch(1, 0, 7, 0, 4)).await), 6);
    // A new epoch starts over; the old one is fenced.
    assert_eq!(base(append(producer_batch(1, 0, 7, 1, 0)).await), 7);
    assert!(matches!(
        append(producer_batch(1, 0, 7, 0, 5)).await.unwrap_err(),
        AppendError::Refused(Refused::StaleEpoch(_))
    ));
    // Non-idempotent batches are never deduplicated.
    append(batch_of(1, 0)).await.unwrap();
    append(batch_of(1, 0)).await.unwrap();
    assert_eq!(k.streams.offsets(a, &s, &t, 0).await.unwrap().next, 10);
}

#[tokio::test]
async fn group_offsets_are_committed_durably_and_need_the_consume_right() {
    let k = kernel().await;
    let a = &k.admin;
    let bob = k.user("bob").await;
    let s = k
        .streams
        .create_stream(a, "/s", StreamConfig::default())
        .await
        .unwrap();
    k.streams.create_topic(a, &s, "t", 2).await.unwrap();
    assert!(k
        .streams
        .committed(a, &s, "g", "/s:t", 0)
        .await
        .unwrap()
        .is_none());
    k.streams
        .commit_offset(a, &s, "g", ("/s:t", 0), 42, "m")
        .await
        .unwrap();
    k.streams
        .commit_offset(a, &s, "g", ("/s:t", 1), 7, "")
        .await
        .unwrap();
    k.streams
        .commit_offset(a, &s, "g", ("/s:t", 0), 43, "m2")
        .await
        .unwrap();
    k.streams
        .commit_offset(a, &s, "other", ("/s:t", 0), 1, "")
        .await
        .unwrap();
    let c = k
        .streams
        .committed(a, &s, "g", "/s:t", 0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((c.offset, c.metadata.as_str()), (43, "m2"));
    let all: Vec<(String, u32, i64)> = k
        .streams
        .group_offsets(a, &s, "g")
        .await
        .unwrap()
        .into_iter()
        .map(|(t, p, c)| (t, p, c.offset))
        .collect();
    assert_eq!(
        all,
        [("/s:t".to_string(), 0, 43), ("/s:t".to_string(), 1, 7)]
    );
    // Offsets are not topics.
    assert_eq!(k.streams.topics(a, &s).await.unwrap().len(), 1);
    // Without the consume right: denied.
    let e = k
        .streams
        .commit_offset(&bob, &s, "g", ("/s:t", 0), 1, "")
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::Access);
    assert_eq!(
        k.streams
            .committed(&bob, &s, "g", "/s:t", 0)
            .await
            .unwrap_err()
            .code,
        Code::Access
    );
}

#[tokio::test]
async fn retention_deletes_old_and_excess_batches() {
    let k = kernel().await;
    let a = &k.admin;
    let (s, t) = one_topic(
        &k,
        StreamConfig {
            retention_ms: 60_000,
            ..Default::default()
        },
    )
    .await;
    let now = now_ms();
    // Two old batches, then three recent ones.
    for (n, ts) in [(2, 1_000), (3, 2_000), (1, now), (1, now), (1, now)] {
        k.streams
            .append(a, &s, "t", &t, 0, Bytes::from(batch_of(n, ts)))
            .await
            .unwrap();
    }
    assert_eq!(k.streams.retain(&s, "t", &t, 0).await.unwrap(), 2);
    let o = k.streams.offsets(a, &s, &t, 0).await.unwrap();
    assert_eq!((o.log_start, o.next), (5, 8));
    assert_eq!(
        k.streams
            .read(a, &s, &t, 0, 0, 1 << 20)
            .await
            .unwrap_err()
            .code,
        Code::Range
    );
    let (_, got) = k.streams.read(a, &s, &t, 0, 5, 1 << 20).await.unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(k.streams.retain(&s, "t", &t, 0).await.unwrap(), 0);
    // By size: keep at most one batch's bytes; the last batch stays.
    let one = batch_of(1, now).len() as i64;
    k.streams
        .configure(a, "/s", |c| c.retention_bytes = one)
        .await
        .unwrap();
    let s = k.streams.stream(a, "/s", Right::Admin).await.unwrap();
    assert_eq!(k.streams.retain(&s, "t", &t, 0).await.unwrap(), 2);
    let o = k.streams.offsets(a, &s, &t, 0).await.unwrap();
    assert_eq!((o.log_start, o.next), (7, 8));
    // Appends continue at the end.
    let r = k
        .streams
        .append(a, &s, "t", &t, 0, Bytes::from(batch_of(1, now)))
        .await
        .unwrap();
    assert_eq!(r.base_offset, 8);
}

#[tokio::test]
async fn appends_to_several_partitions_share_one_transaction_and_fail_alone() {
    let k = kernel().await;
    let a = &k.admin;
    let (s, t) = topic_with(&k, StreamConfig::default(), 3).await;
    let mut bad = batch_of(1, 0);
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let r = k
        .streams
        .append_submit(
            a,
            &s,
            "t",
            &t,
            vec![
                (2, Bytes::from(batch_of(2, 0))),
                (0, Bytes::from(batch_of(3, 0))),
                (1, Bytes::from(bad)),
                (7, Bytes::from(batch_of(1, 0))),
                // Producer 5 starts at sequence 0 in partition 0 only.
                (1, Bytes::from(producer_batch(1, 0, 5, 0, 3))),
            ],
        )
        .await;
    assert_eq!(r.len(), 5);
    assert_eq!(r[0].as_ref().unwrap().base_offset, 0);
    assert_eq!(r[1].as_ref().unwrap().base_offset, 0);
    assert_eq!(
        r[2].as_ref().unwrap_err().failed().unwrap().code,
        Code::BadMessage
    );
    assert_eq!(
        r[3].as_ref().unwrap_err().failed().unwrap().code,
        Code::NotFound
    );
    // Partition 1 named twice: handled one after the other.
    assert_eq!(r[4].as_ref().unwrap().base_offset, 0);
    let ends: Vec<i64> = partition_ends(&k, &s, &t).await;
    assert_eq!(ends, [3, 1, 2]);
    // A sequence gap fails its partition alone.
    let r = k
        .streams
        .append_submit(
            a,
            &s,
            "t",
            &t,
            vec![
                (1, Bytes::from(producer_batch(1, 0, 5, 0, 9))),
                (2, Bytes::from(batch_of(1, 0))),
            ],
        )
        .await;
    assert!(matches!(
        r[0],
        Err(AppendError::Refused(Refused::OutOfOrder(_)))
    ));
    assert_eq!(r[1].as_ref().unwrap().base_offset, 2);
    assert_eq!(partition_ends(&k, &s, &t).await, [3, 1, 3]);
}

async fn partition_ends(
    k: &Kernel,
    s: &berth_streams::StreamRef,
    t: &berth_streams::TopicRecord,
) -> Vec<i64> {
    let mut out = Vec::new();
    for part in 0..t.partitions {
        out.push(k.streams.offsets(&k.admin, s, t, part).await.unwrap().next);
    }
    out
}

/// A batch of records with these keys (`None`: no key) and non-null values.
fn keyed_batch(keys: &[Option<&str>]) -> Vec<u8> {
    let recs: Vec<batch::Record> = keys
        .iter()
        .map(|k| batch::Record {
            key: k.map(str::as_bytes),
            value: Some(b"v"),
        })
        .collect();
    batch::encode(&recs, 0, None)
}

#[tokio::test]
async fn compaction_keeps_the_last_record_of_every_key() {
    let k = kernel().await;
    let a = &k.admin;
    let (s, t) = one_topic(
        &k,
        StreamConfig {
            compact: true,
            ..Default::default()
        },
    )
    .await;
    // Offsets: [a b]=0-1, [a]=2, [None c]=3-4, [b c]=5-6, [a]=7 (active).
    for keys in [
        vec![Some("a"), Some("b")],
        vec![Some("a")],
        vec![None, Some("c")],
        vec![Some("b"), Some("c")],
        vec![Some("a")],
    ] {
        k.streams
            .append(a, &s, "t", &t, 0, Bytes::from(keyed_batch(&keys)))
            .await
            .unwrap();
    }
    // [a b] is superseded (a@2, b@5): deleted; [a]@2 only by the active
    // batch, which the window does not read; [None c] keeps its unkeyed
    // record: rewritten without c@4.
    assert_eq!(k.streams.retain(&s, "t", &t, 0).await.unwrap(), 2);
    let (st, got) = k.streams.read(a, &s, &t, 0, 0, 1 << 20).await.unwrap();
    let bases: Vec<i64> = got.iter().map(|b| batch::base_offset(b)).collect();
    assert_eq!(bases, [2, 3, 5, 7]);
    assert_eq!((st.log_start, st.next), (0, 8));
    // The rewritten batch is valid, keeps its offset range, holds one record.
    let info = batch::split(&got[1]).unwrap();
    assert_eq!(info[0].offsets, 2);
    let left: Vec<_> = compact::record_keys(&got[1])
        .unwrap()
        .into_iter()
        .map(|r| (r.offset, r.key))
        .collect();
    assert_eq!(left, [(3, None)]);
    // Reading from inside the gap starts at the next batch.
    let (_, got) = k.streams.read(a, &s, &t, 0, 1, 1 << 20).await.unwrap();
    assert_eq!(batch::base_offset(&got[0]), 2);
    // Idempotent: nothing more to do until new records arrive.
    assert_eq!(k.streams.retain(&s, "t", &t, 0).await.unwrap(), 0);
    k.streams
        .append(a, &s, "t", &t, 0, Bytes::from(keyed_batch(&[Some("z")])))
        .await
        .unwrap();
    // Now [a]@7 is readable and supersedes [a]@2.
    assert_eq!(k.streams.retain(&s, "t", &t, 0).await.unwrap(), 1);
    let (_, got) = k.streams.read(a, &s, &t, 0, 0, 1 << 20).await.unwrap();
    let bases: Vec<i64> = got.iter().map(|b| batch::base_offset(b)).collect();
    assert_eq!(bases, [3, 5, 7, 8]);
}

/// A batch of (key, value) records, `None` values being tombstones, at
/// `ts` ms.
fn kv_batch(records: &[(&str, Option<&str>)], ts: i64) -> Vec<u8> {
    let recs: Vec<batch::Record> = records
        .iter()
        .map(|(k, v)| batch::Record {
            key: Some(k.as_bytes()),
            value: v.map(str::as_bytes),
        })
        .collect();
    batch::encode(&recs, ts, None)
}

#[tokio::test]
async fn compaction_drops_tombstones_after_delete_retention() {
    let k = kernel().await;
    let a = &k.admin;
    let (s, t) = one_topic(
        &k,
        StreamConfig {
            compact: true,
            delete_retention_ms: 60_000,
            ..Default::default()
        },
    )
    .await;
    let now = now_ms();
    // [a=1 b=1]@0-1, [a=∅]@2 (old), [b=∅]@3 (recent), [c=1]@4 (active).
    for (recs, ts) in [
        (vec![("a", Some("1")), ("b", Some("1"))], 0),
        (vec![("a", None)], 0),
        (vec![("b", None)], now),
        (vec![("c", Some("1"))], now),
    ] {
        k.streams
            .append(a, &s, "t", &t, 0, Bytes::from(kv_batch(&recs, ts)))
            .await
            .unwrap();
    }
    // The first batch is superseded; a's tombstone is past its minute.
    assert_eq!(k.streams.retain(&s, "t", &t, 0).await.unwrap(), 2);
    let (_, got) = k.streams.read(a, &s, &t, 0, 0, 1 << 20).await.unwrap();
    let bases: Vec<i64> = got.iter().map(|b| batch::base_offset(b)).collect();
    assert_eq!(bases, [3, 4]);
    assert_eq!(k.streams.retain(&s, "t", &t, 0).await.unwrap(), 0);
    // Kept forever with delete retention -1.
    k.streams
        .configure(a, "/s", |c| c.delete_retention_ms = -1)
        .await
        .unwrap();
    k.streams
        .append(a, &s, "t", &t, 0, Bytes::from(kv_batch(&[("c", None)], 0)))
        .await
        .unwrap();
    k.streams
        .append(
            a,
            &s,
            "t",
            &t,
            0,
            Bytes::from(kv_batch(&[("d", Some("1"))], 0)),
        )
        .await
        .unwrap();
    // c=1@4 is superseded by c=∅@5, which stays.
    assert_eq!(k.streams.retain(&s, "t", &t, 0).await.unwrap(), 1);
    let (_, got) = k.streams.read(a, &s, &t, 0, 0, 1 << 20).await.unwrap();
    let bases: Vec<i64> = got.iter().map(|b| batch::base_offset(b)).collect();
    assert_eq!(bases, [3, 5, 6]);
}

/// The sweep finds every partition of every stream by itself (nothing
/// needs to have been appended through this process).
#[tokio::test]
async fn the_sweep_visits_every_stream_and_partition() {
    let k = kernel().await;
    let a = &k.admin;
    let old = StreamConfig {
        retention_ms: 60_000,
        ..Default::default()
    };
    let s1 = k
        .streams
        .create_stream(a, "/s1", old.clone())
        .await
        .unwrap();
    let s2 = k.streams.create_stream(a, "/s2", old).await.unwrap();
    let mut topics = Vec::new();
    for (s, name, parts) in [(&s1, "x", 2), (&s1, "y", 1), (&s2, "z", 3)] {
        let t = k.streams.create_topic(a, s, name, parts).await.unwrap();
        for part in 0..parts {
            for ts in [1_000, 2_000] {
                k.streams
                    .append(a, s, name, &t, part, Bytes::from(batch_of(1, ts)))
                    .await
                    .unwrap();
            }
        }
        topics.push((s, t));
    }
    // A fresh service over the same namespace: it has seen no append.
    let fresh = Streams::new(Namespace::new(k.meta.clone()));
    // Everything is older than the minute kept.
    assert_eq!(fresh.sweep().await, 12);
    for (s, t) in topics {
        for part in 0..t.partitions {
            let o = k.streams.offsets(a, s, &t, part).await.unwrap();
            assert_eq!((o.log_start, o.next), (2, 2));
        }
    }
    assert_eq!(fresh.sweep().await, 0);
}

/// Appends keep the order they were submitted in, however their waits are
/// polled: queued appends commit together (group commit), in queue order.
#[tokio::test]
async fn submitted_appends_keep_their_order() {
    let k = kernel().await;
    let a = &k.admin;
    let (s, t) = topic_with(&k, StreamConfig::default(), 2).await;
    let waits: Vec<_> = (1..=20)
        .map(|n| {
            let parts = vec![
                (0, Bytes::from(batch_of(n, 0))),
                (1, Bytes::from(batch_of(1, 0))),
            ];
            k.streams.append_submit(a, &s, "t", &t, parts)
        })
        .collect();
    // Waited for last to first.
    let mut got = Vec::new();
    for w in waits.into_iter().rev() {
        let r = w.await;
        got.push((
            r[0].as_ref().unwrap().base_offset,
            r[1].as_ref().unwrap().base_offset,
        ));
    }
    got.reverse();
    let mut want = Vec::new();
    let mut next = 0;
    for (i, n) in (1..=20).enumerate() {
        want.push((next, i as i64));
        next += n;
    }
    assert_eq!(got, want);
    assert_eq!(partition_ends(&k, &s, &t).await, [next, 20]);
}

/// Reads and time lookups across many small batches: pages of growing
/// size, nothing skipped or repeated at their seams, max_bytes respected.
#[tokio::test]
async fn reads_and_time_lookups_cross_pages() {
    let k = kernel().await;
    let a = &k.admin;
    let (s, t) = one_topic(&k, StreamConfig::default()).await;
    for i in 0..100 {
        k.streams
            .append(a, &s, "t", &t, 0, Bytes::from(batch_of(1, 1000 + i)))
            .await
            .unwrap();
    }
    let one = batch_of(1, 0).len();
    let (_, got) = k.streams.read(a, &s, &t, 0, 0, 1 << 20).await.unwrap();
    let bases: Vec<i64> = got.iter().map(|b| batch::base_offset(b)).collect();
    assert_eq!(bases, (0..100).collect::<Vec<i64>>());
    let (_, got) = k.streams.read(a, &s, &t, 0, 7, one * 30).await.unwrap();
    let bases: Vec<i64> = got.iter().map(|b| batch::base_offset(b)).collect();
    assert_eq!(bases, (7..37).collect::<Vec<i64>>());
    for (ts, want) in [(0, 0), (1003, 3), (1050, 50), (1099, 99), (2000, 100)] {
        assert_eq!(
            k.streams.offset_for_time(a, &s, &t, 0, ts).await.unwrap(),
            want,
            "timestamp {ts}"
        );
    }
}
