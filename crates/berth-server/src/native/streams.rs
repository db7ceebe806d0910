//! `berth.v1.Streams`: creating, showing, changing and removing streams and
//! their topics. Records themselves travel through the Kafka listener; this
//! service only manages. `berth_streams` authorizes every call; this file
//! translates.

use std::sync::Arc;

use berth_api::v1::streams_server::Streams as StreamsApi;
use berth_api::v1::*;
use berth_fs::namespace::LIST_LIMIT_MAX;
use berth_fs::EntryKind;
use berth_meta::{Code, Error};
use berth_security::principal::Principal;
use berth_streams::{authorize, Right, StreamConfig, StreamRef, Streams, TopicRecord};
use tonic::{Request, Response, Status};

use super::namespace::to_entry;
use super::Native;

pub struct StreamsService {
    pub native: Arc<Native>,
    pub streams: Arc<Streams>,
}

/// Directory pages one `List` call reads looking for streams, at most; the
/// caller continues from `next_start_after` when more remain.
const LIST_PAGES_MAX: usize = 16;
/// Entries a `List` call returns when the request says 0.
const LIST_LIMIT_DEFAULT: usize = 1000;

/// Retention values, as Kafka accepts them: -1 (no limit) or more.
fn check_retention(
    retention_ms: Option<i64>,
    retention_bytes: Option<i64>,
    delete_retention_ms: Option<i64>,
) -> Result<(), Error> {
    for (what, ms) in [
        ("retention_ms", retention_ms),
        ("delete_retention_ms", delete_retention_ms),
    ] {
        if let Some(ms) = ms.filter(|ms| *ms < -1) {
            return Err(Error::invalid(format!(
                "{what} {ms}: -1 (forever) or a number of milliseconds"
            )));
        }
    }
    if let Some(b) = retention_bytes.filter(|b| *b < -1) {
        return Err(Error::invalid(format!(
            "retention_bytes {b}: -1 (no limit) or a number of bytes"
        )));
    }
    Ok(())
}

fn create_config(r: &StreamCreateRequest) -> Result<StreamConfig, Error> {
    check_retention(r.retention_ms, r.retention_bytes, r.delete_retention_ms)?;
    let d = StreamConfig::default();
    Ok(StreamConfig {
        default_partitions: match r.default_partitions {
            0 => d.default_partitions,
            n => n,
        },
        retention_ms: r.retention_ms.unwrap_or(d.retention_ms),
        retention_bytes: r.retention_bytes.unwrap_or(d.retention_bytes),
        compact: r.compact,
        autocreate: r.autocreate.unwrap_or(d.autocreate),
        produce_ace: r.produce_ace.clone(),
        consume_ace: r.consume_ace.clone(),
        topic_ace: r.topic_ace.clone(),
        admin_ace: r.admin_ace.clone(),
        delete_retention_ms: r.delete_retention_ms.unwrap_or(d.delete_retention_ms),
        ..d
    })
}

/// Checks an edit before it is applied (so a bad name fails whole).
fn check_edit(r: &StreamEditRequest) -> Result<(), Error> {
    check_retention(r.retention_ms, r.retention_bytes, r.delete_retention_ms)?;
    for name in &r.clear_aces {
        if !matches!(name.as_str(), "produce" | "consume" | "topic" | "admin") {
            return Err(Error::invalid(format!(
                "clear_aces: {name:?} is not an ACE (produce, consume, topic, admin)"
            )));
        }
    }
    Ok(())
}

/// Applies an edit checked by [`check_edit`].
fn apply_edit(c: &mut StreamConfig, r: &StreamEditRequest) {
    for name in &r.clear_aces {
        match name.as_str() {
            "produce" => c.produce_ace = None,
            "consume" => c.consume_ace = None,
            "topic" => c.topic_ace = None,
            "admin" => c.admin_ace = None,
            _ => {}
        }
    }
    if let Some(v) = r.default_partitions {
        c.default_partitions = v;
    }
    if let Some(v) = r.retention_ms {
        c.retention_ms = v;
    }
    if let Some(v) = r.retention_bytes {
        c.retention_bytes = v;
    }
    if let Some(v) = r.compact {
        c.compact = v;
    }
    if let Some(v) = r.delete_retention_ms {
        c.delete_retention_ms = v;
    }
    if let Some(v) = r.autocreate {
        c.autocreate = v;
    }
    for (ace, given) in [
        (&mut c.produce_ace, &r.produce_ace),
        (&mut c.consume_ace, &r.consume_ace),
        (&mut c.topic_ace, &r.topic_ace),
        (&mut c.admin_ace, &r.admin_ace),
    ] {
        if given.is_some() {
            ace.clone_from(given);
        }
    }
}

fn to_info(s: StreamRef, topics: Option<u32>, kafka_name: Option<String>) -> StreamInfo {
    let c = s.config;
    StreamInfo {
        kafka_name,
        path: s.entry.path.clone(),
        entry: Some(to_entry(s.entry)),
        default_partitions: c.default_partitions,
        retention_ms: c.retention_ms,
        retention_bytes: c.retention_bytes,
        delete_retention_ms: c.delete_retention_ms,
        compact: c.compact,
        autocreate: c.autocreate,
        produce_ace: c.produce_ace,
        consume_ace: c.consume_ace,
        topic_ace: c.topic_ace,
        admin_ace: c.admin_ace,
        topics,
    }
}

fn to_topic(
    path: &str,
    name: String,
    t: &TopicRecord,
    partitions: Vec<PartitionInfo>,
) -> TopicInfo {
    TopicInfo {
        path: path.to_string(),
        topic: name,
        partition_count: t.partitions,
        topic_id: t.uuid.to_vec(),
        created_ms: t.created_ms,
        partitions,
    }
}

/// Any of the four rights lets a principal see a stream's settings; the
/// consume denial is the one reported.
fn may_see(p: &Principal, s: &StreamRef) -> Result<(), Error> {
    let consume = authorize(p, s, Right::Consume);
    if consume.is_ok()
        || [Right::Produce, Right::Topic, Right::Admin]
            .into_iter()
            .any(|right| authorize(p, s, right).is_ok())
    {
        return Ok(());
    }
    consume
}

fn denied(e: &Error) -> bool {
    matches!(e.code, Code::Access | Code::Perm)
}

impl StreamsService {
    /// The stream's settings with its topic count when `p` may list topics.
    async fn info_of(&self, p: &Principal, s: StreamRef) -> Result<StreamInfo, Error> {
        let topics = match self.streams.topics(p, &s).await {
            Ok(t) => Some(u32::try_from(t.len()).unwrap_or(u32::MAX)),
            Err(e) if denied(&e) => None,
            Err(e) => return Err(e),
        };
        let name = self
            .streams
            .kafka_names_of(&s.entry.path)
            .into_iter()
            .next();
        Ok(to_info(s, topics, name))
    }
}

#[tonic::async_trait]
impl StreamsApi for StreamsService {
    async fn create(
        &self,
        req: Request<StreamCreateRequest>,
    ) -> Result<Response<StreamInfo>, Status> {
        let st = &self.streams;
        self.native
            .call("Streams/Create", req, |p, r| async move {
                let config = create_config(&r)?;
                if let Some(n) = &r.kafka_name {
                    // A bad name fails before the stream is made.
                    berth_streams::valid_kafka_name(n)?;
                }
                let s = st.create_stream(&p, &r.path, config).await?;
                let name = match &r.kafka_name {
                    Some(n) => {
                        st.set_kafka_name(&p, &s.entry.path, Some(n))
                            .await
                            .map_err(|e| {
                                Error::new(
                                    e.code,
                                    format!(
                                        "the stream {} was created without its Kafka name: {}; \
                                         set one with berth stream edit {} --kafka-name NAME",
                                        s.entry.path, e.message, s.entry.path
                                    ),
                                )
                            })?;
                        Some(n.clone())
                    }
                    None => None,
                };
                Ok(to_info(s, Some(0), name))
            })
            .await
    }

    async fn info(&self, req: Request<PathRequest>) -> Result<Response<StreamInfo>, Status> {
        let st = &self.streams;
        self.native
            .call("Streams/Info", req, |p, r| async move {
                let s = st.lookup(&p, &r.path).await?;
                may_see(&p, &s)?;
                self.info_of(&p, s).await
            })
            .await
    }

    async fn list(&self, req: Request<ListRequest>) -> Result<Response<StreamList>, Status> {
        let n = &self.native;
        n.call("Streams/List", req, |p, r| async move {
            let limit = match r.limit {
                0 => LIST_LIMIT_DEFAULT,
                l => (l as usize).min(LIST_LIMIT_MAX),
            };
            let mut start_after = r.start_after;
            let mut streams = Vec::new();
            let mut more = false;
            for _ in 0..LIST_PAGES_MAX {
                let want = limit - streams.len();
                let (entries, page_more) = n.ns.list(&p, &r.path, &start_after, want).await?;
                if let Some(last) = entries.last() {
                    start_after.clone_from(&last.name);
                }
                streams.extend(
                    entries
                        .into_iter()
                        .filter(|e| e.inode.kind == EntryKind::Stream)
                        .map(to_entry),
                );
                more = page_more;
                if !more || streams.len() >= limit {
                    break;
                }
            }
            Ok(StreamList {
                streams,
                more,
                next_start_after: if more { start_after } else { String::new() },
            })
        })
        .await
    }

    async fn delete(&self, req: Request<PathRequest>) -> Result<Response<Empty>, Status> {
        let st = &self.streams;
        self.native
            .call("Streams/Delete", req, |p, r| async move {
                st.delete_stream(&p, &r.path).await.map(|_| Empty {})
            })
            .await
    }

    async fn edit(&self, req: Request<StreamEditRequest>) -> Result<Response<StreamInfo>, Status> {
        let st = &self.streams;
        self.native
            .call("Streams/Edit", req, |p, r| async move {
                check_edit(&r)?;
                if let Some(n) = r.kafka_name.as_deref() {
                    // "" drops the name; set_kafka_name checks a new one.
                    let name = Some(n).filter(|n| !n.is_empty());
                    st.set_kafka_name(&p, &r.path, name).await?;
                }
                let config = st.configure(&p, &r.path, |c| apply_edit(c, &r)).await?;
                let mut s = st.lookup(&p, &r.path).await?;
                s.config = config;
                self.info_of(&p, s).await
            })
            .await
    }

    async fn create_topic(
        &self,
        req: Request<TopicCreateRequest>,
    ) -> Result<Response<TopicInfo>, Status> {
        let st = &self.streams;
        self.native
            .call("Streams/CreateTopic", req, |p, r| async move {
                let s = st.stream(&p, &r.path, Right::Topic).await?;
                let t = st.create_topic(&p, &s, &r.topic, r.partitions).await?;
                Ok(to_topic(&s.entry.path, r.topic, &t, Vec::new()))
            })
            .await
    }

    async fn list_topics(&self, req: Request<PathRequest>) -> Result<Response<TopicList>, Status> {
        let st = &self.streams;
        self.native
            .call("Streams/ListTopics", req, |p, r| async move {
                let s = st.lookup(&p, &r.path).await?;
                let mut topics = st.topics(&p, &s).await?;
                topics.sort_by(|a, b| a.0.cmp(&b.0));
                let path = s.entry.path;
                Ok(TopicList {
                    topics: topics
                        .into_iter()
                        .map(|(name, t)| to_topic(&path, name, &t, Vec::new()))
                        .collect(),
                    path,
                })
            })
            .await
    }

    async fn describe_topic(
        &self,
        req: Request<TopicRequest>,
    ) -> Result<Response<TopicInfo>, Status> {
        let st = &self.streams;
        self.native
            .call("Streams/DescribeTopic", req, |p, r| async move {
                // Authorized before the topic is looked up, so that whether
                // it exists is not told to who may not consume.
                let s = st.stream(&p, &r.path, Right::Consume).await?;
                let t = st.topic(&s, &r.topic).await?.ok_or_else(|| {
                    Error::not_found(format!("topic {} in {}", r.topic, s.entry.path))
                })?;
                let mut parts = Vec::with_capacity(t.partitions as usize);
                for partition in 0..t.partitions {
                    let o = st.offsets(&p, &s, &t, partition).await?;
                    parts.push(PartitionInfo {
                        partition,
                        log_start: o.log_start,
                        log_end: o.next,
                    });
                }
                Ok(to_topic(&s.entry.path, r.topic, &t, parts))
            })
            .await
    }

    async fn delete_topic(&self, req: Request<TopicRequest>) -> Result<Response<Empty>, Status> {
        let st = &self.streams;
        self.native
            .call("Streams/DeleteTopic", req, |p, r| async move {
                let s = st.stream(&p, &r.path, Right::Topic).await?;
                st.delete_topic(&p, &s, &r.topic).await.map(|_| Empty {})
            })
            .await
    }

    async fn add_partitions(
        &self,
        req: Request<AddPartitionsRequest>,
    ) -> Result<Response<TopicInfo>, Status> {
        let st = &self.streams;
        self.native
            .call("Streams/AddPartitions", req, |p, r| async move {
                let s = st.stream(&p, &r.path, Right::Topic).await?;
                let t = st.add_partitions(&p, &s, &r.topic, r.partitions).await?;
                Ok(to_topic(&s.entry.path, r.topic, &t, Vec::new()))
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edit(path: &str) -> StreamEditRequest {
        StreamEditRequest {
            path: path.into(),
            ..Default::default()
        }
    }

    #[test]
    fn create_defaults_are_mapr_s() {
        let r = StreamCreateRequest {
            path: "/s".into(),
            ..Default::default()
        };
        assert_eq!(create_config(&r).unwrap(), StreamConfig::default());
        let r = StreamCreateRequest {
            path: "/s".into(),
            default_partitions: 3,
            retention_ms: Some(-1),
            retention_bytes: Some(10 << 30),
            compact: true,
            autocreate: Some(false),
            topic_ace: Some("u:alice".into()),
            ..Default::default()
        };
        let c = create_config(&r).unwrap();
        assert_eq!(c.default_partitions, 3);
        assert_eq!((c.retention_ms, c.retention_bytes), (-1, 10 << 30));
        assert!(c.compact && !c.autocreate);
        assert_eq!(c.topic_ace.as_deref(), Some("u:alice"));
        assert_eq!(c.produce_ace, None);
        let r = StreamCreateRequest {
            retention_ms: Some(-2),
            ..Default::default()
        };
        assert_eq!(create_config(&r).unwrap_err().code, Code::Invalid);
    }

    #[test]
    fn edit_changes_only_what_is_given() {
        let mut c = StreamConfig {
            produce_ace: Some("u:a".into()),
            consume_ace: Some("u:b".into()),
            ..StreamConfig::default()
        };
        let mut r = edit("/s");
        r.retention_ms = Some(1000);
        r.consume_ace = Some("g:dev".into());
        r.clear_aces = vec!["produce".into()];
        check_edit(&r).unwrap();
        apply_edit(&mut c, &r);
        assert_eq!(c.retention_ms, 1000);
        assert_eq!(c.produce_ace, None);
        assert_eq!(c.consume_ace.as_deref(), Some("g:dev"));
        assert_eq!(c.default_partitions, 1);
        assert!(c.autocreate);

        let mut r = edit("/s");
        r.clear_aces = vec!["write".into()];
        assert_eq!(check_edit(&r).unwrap_err().code, Code::Invalid);
        let mut r = edit("/s");
        r.retention_bytes = Some(-5);
        assert_eq!(check_edit(&r).unwrap_err().code, Code::Invalid);
    }
}
