//! `stream …`: create, show, change and remove streams and their topics.

use std::time::Duration;

use anyhow::{bail, Result};
use berth_api::v1::{
    AddPartitionsRequest, ListRequest, PathRequest, StreamCreateRequest, StreamEditRequest,
    StreamInfo, TopicCreateRequest, TopicInfo, TopicRequest,
};
use berth_client::{Client, ClientError};
use serde_json::{json, Value};

use crate::cli::{StreamCmd, TopicCmd};
use crate::ctx::{abs, at_path, Ctx};
use crate::output::{
    entry_json, format_size, format_time_ns, parse_size, print_fields, print_json, Align, Table,
};

/// Streams asked for per `stream list` call.
const LIST_PAGE_LIMIT: u32 = 1000;
/// `stream list` calls, at most (a server that keeps saying "more" must not
/// keep the CLI forever).
const LIST_PAGES_MAX: usize = 10_000;

/// Parses `--retention`: a duration (`7d`, `12h`, `30min`) or `forever`;
/// milliseconds, -1 for forever.
pub fn parse_retention(s: &str) -> Result<i64, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("forever") {
        return Ok(-1);
    }
    let d = humantime::parse_duration(t)
        .map_err(|e| format!("{e} (e.g. 7d, 12h, 30min, or forever)"))?;
    let ms = i64::try_from(d.as_millis()).map_err(|_| format!("{s:?} is too long"))?;
    if ms == 0 {
        return Err("must be at least 1ms (or forever)".into());
    }
    Ok(ms)
}

/// Parses `--retention-bytes`: a size (`10GiB`, `500MB`) or `unlimited`;
/// bytes, -1 for unlimited.
pub fn parse_retention_bytes(s: &str) -> Result<i64, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("unlimited") {
        return Ok(-1);
    }
    let b = parse_size(t)?;
    if b == 0 {
        return Err("must be more than 0 bytes (or unlimited)".into());
    }
    i64::try_from(b).map_err(|_| format!("size {s:?} is too large"))
}

/// `7days`, or `forever`.
fn retention_text(ms: i64) -> String {
    match u64::try_from(ms) {
        Ok(ms) => humantime::format_duration(Duration::from_millis(ms)).to_string(),
        Err(_) => "forever".into(),
    }
}

/// `10 GiB`, or `unlimited`.
fn retention_bytes_text(bytes: i64) -> String {
    match u64::try_from(bytes) {
        Ok(b) => format_size(b),
        Err(_) => "unlimited".into(),
    }
}

fn ace_text(ace: Option<&str>) -> String {
    match ace {
        None => "(the owner only)".into(),
        Some("") => "'' (nobody)".into(),
        Some(a) => a.to_string(),
    }
}

/// A Kafka topic id as a UUID: 8-4-4-4-12 hex digits.
fn topic_id_text(id: &[u8]) -> String {
    let mut out = String::with_capacity(36);
    for (i, b) in id.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push_str(&format!("{b:02x}"));
    }
    out
}

fn format_time_ms(ms: i64) -> String {
    format_time_ns(ms.saturating_mul(1_000_000))
}

fn stream_json(s: &StreamInfo) -> Value {
    json!({
        "path": s.path,
        "entry": s.entry.as_ref().map(entry_json),
        "default_partitions": s.default_partitions,
        "retention_ms": s.retention_ms,
        "retention_bytes": s.retention_bytes,
        "delete_retention_ms": s.delete_retention_ms,
        "compact": s.compact,
        "autocreate": s.autocreate,
        "produce_ace": s.produce_ace,
        "consume_ace": s.consume_ace,
        "topic_ace": s.topic_ace,
        "admin_ace": s.admin_ace,
        "topics": s.topics,
        "kafka_name": s.kafka_name,
    })
}

fn topic_json(t: &TopicInfo) -> Value {
    json!({
        "path": t.path,
        "topic": t.topic,
        "partition_count": t.partition_count,
        "topic_id": topic_id_text(&t.topic_id),
        "created": format_time_ms(t.created_ms),
        "created_ms": t.created_ms,
        "partitions": t.partitions.iter().map(|p| json!({
            "partition": p.partition,
            "log_start": p.log_start,
            "log_end": p.log_end,
        })).collect::<Vec<_>>(),
    })
}

/// How Kafka clients name the stream's topics.
fn kafka_name_text(s: &StreamInfo) -> String {
    match s.kafka_name.as_deref() {
        Some(n) => format!("{n} (topics: {n}.TOPIC or {}:TOPIC)", s.path),
        None => format!(
            "(none: topics are {}:TOPIC; --kafka-name gives a name Kafka clients accept)",
            s.path
        ),
    }
}

fn print_stream(s: &StreamInfo) {
    let owner = s
        .entry
        .as_ref()
        .map(|e| format!("uid {} gid {}", e.uid, e.gid))
        .unwrap_or_default();
    print_fields(&[
        ("path", s.path.clone()),
        ("owner", owner),
        ("default partitions", s.default_partitions.to_string()),
        ("retention", retention_text(s.retention_ms)),
        ("retention bytes", retention_bytes_text(s.retention_bytes)),
        ("compact", s.compact.to_string()),
        ("delete retention", retention_text(s.delete_retention_ms)),
        ("autocreate", s.autocreate.to_string()),
        ("produce ace", ace_text(s.produce_ace.as_deref())),
        ("consume ace", ace_text(s.consume_ace.as_deref())),
        ("topic ace", ace_text(s.topic_ace.as_deref())),
        ("admin ace", ace_text(s.admin_ace.as_deref())),
        ("kafka name", kafka_name_text(s)),
        (
            "topics",
            s.topics
                .map(|n| n.to_string())
                .unwrap_or_else(|| "(not visible: needs the consume or topic right)".into()),
        ),
    ]);
}

pub async fn stream(ctx: &Ctx, cmd: StreamCmd) -> Result<()> {
    let client = ctx.client().await?;
    let mut streams = client.streams();
    match cmd {
        StreamCmd::Create {
            path,
            partitions,
            settings,
        } => {
            let path = abs(&path);
            let req = StreamCreateRequest {
                path: path.clone(),
                default_partitions: partitions.unwrap_or(0),
                retention_ms: settings.retention,
                retention_bytes: settings.retention_bytes,
                delete_retention_ms: settings.delete_retention,
                compact: settings.compact.unwrap_or(false),
                autocreate: settings.autocreate,
                produce_ace: settings.produce_ace,
                consume_ace: settings.consume_ace,
                topic_ace: settings.topic_ace,
                admin_ace: settings.admin_ace,
                kafka_name: settings.kafka_name,
            };
            let s = streams
                .create(req)
                .await
                .map_err(|s| at_path(ClientError::from_status(s), &path))?
                .into_inner();
            if ctx.json() {
                print_json(&stream_json(&s));
            } else {
                let size = match s.retention_bytes {
                    b if b < 0 => String::new(),
                    b => format!(", at most {} per partition", retention_bytes_text(b)),
                };
                let named = match &s.kafka_name {
                    Some(n) => format!("; Kafka name {n}: topics as {n}.TOPIC"),
                    None => String::new(),
                };
                println!(
                    "created stream {} ({} partition(s) per topic, retention {}{size}{named})",
                    s.path,
                    s.default_partitions,
                    retention_text(s.retention_ms),
                );
            }
        }
        StreamCmd::Info { path } => {
            let path = abs(&path);
            let s = streams
                .info(PathRequest { path: path.clone() })
                .await
                .map_err(|s| at_path(ClientError::from_status(s), &path))?
                .into_inner();
            if ctx.json() {
                print_json(&stream_json(&s));
            } else {
                print_stream(&s);
            }
        }
        StreamCmd::List { dir } => {
            let dir = abs(dir.as_deref().unwrap_or("/"));
            let list = list_all(&client, &dir).await?;
            if ctx.json() {
                print_json(&Value::Array(list.iter().map(entry_json).collect()));
                return Ok(());
            }
            let mut t = Table::new(&[
                ("PATH", Align::Left),
                ("UID", Align::Right),
                ("GID", Align::Right),
                ("MODIFIED", Align::Left),
            ]);
            for e in &list {
                t.row(vec![
                    e.path.clone(),
                    e.uid.to_string(),
                    e.gid.to_string(),
                    format_time_ns(e.mtime_ns),
                ]);
            }
            t.print();
        }
        StreamCmd::Delete { path } => {
            let path = abs(&path);
            streams
                .delete(PathRequest { path: path.clone() })
                .await
                .map_err(|s| at_path(ClientError::from_status(s), &path))?;
        }
        StreamCmd::Edit {
            path,
            default_partitions,
            settings,
            clear_ace,
        } => {
            let path = abs(&path);
            let req = StreamEditRequest {
                path: path.clone(),
                default_partitions,
                retention_ms: settings.retention,
                retention_bytes: settings.retention_bytes,
                delete_retention_ms: settings.delete_retention,
                compact: settings.compact,
                autocreate: settings.autocreate,
                produce_ace: settings.produce_ace,
                consume_ace: settings.consume_ace,
                topic_ace: settings.topic_ace,
                admin_ace: settings.admin_ace,
                clear_aces: clear_ace,
                kafka_name: settings.kafka_name,
            };
            let s = streams
                .edit(req)
                .await
                .map_err(|s| at_path(ClientError::from_status(s), &path))?
                .into_inner();
            if ctx.json() {
                print_json(&stream_json(&s));
            } else {
                print_stream(&s);
            }
        }
        StreamCmd::Topic(cmd) => topic(ctx, &client, cmd).await?,
    }
    Ok(())
}

async fn topic(ctx: &Ctx, client: &Client, cmd: TopicCmd) -> Result<()> {
    let mut streams = client.streams();
    match cmd {
        TopicCmd::Create {
            path,
            topic,
            partitions,
        } => {
            let path = abs(&path);
            let t = streams
                .create_topic(TopicCreateRequest {
                    path: path.clone(),
                    topic,
                    partitions: partitions.unwrap_or(0),
                })
                .await
                .map_err(|s| at_path(ClientError::from_status(s), &path))?
                .into_inner();
            if ctx.json() {
                print_json(&topic_json(&t));
            } else {
                println!(
                    "created topic {} in {} ({} partition(s))",
                    t.topic, t.path, t.partition_count
                );
            }
        }
        TopicCmd::List { path } => {
            let path = abs(&path);
            let list = streams
                .list_topics(PathRequest { path: path.clone() })
                .await
                .map_err(|s| at_path(ClientError::from_status(s), &path))?
                .into_inner();
            if ctx.json() {
                print_json(&Value::Array(list.topics.iter().map(topic_json).collect()));
                return Ok(());
            }
            let mut t = Table::new(&[
                ("TOPIC", Align::Left),
                ("PARTITIONS", Align::Right),
                ("CREATED", Align::Left),
                ("ID", Align::Left),
            ]);
            for topic in &list.topics {
                t.row(vec![
                    topic.topic.clone(),
                    topic.partition_count.to_string(),
                    format_time_ms(topic.created_ms),
                    topic_id_text(&topic.topic_id),
                ]);
            }
            t.print();
        }
        TopicCmd::Info { path, topic } => {
            let path = abs(&path);
            let t = streams
                .describe_topic(TopicRequest {
                    path: path.clone(),
                    topic,
                })
                .await
                .map_err(|s| at_path(ClientError::from_status(s), &path))?
                .into_inner();
            if ctx.json() {
                print_json(&topic_json(&t));
                return Ok(());
            }
            print_fields(&[
                ("stream", t.path.clone()),
                ("topic", t.topic.clone()),
                ("id", topic_id_text(&t.topic_id)),
                ("partitions", t.partition_count.to_string()),
                ("created", format_time_ms(t.created_ms)),
            ]);
            println!();
            let mut table = Table::new(&[
                ("PARTITION", Align::Right),
                ("LOG-START", Align::Right),
                ("LOG-END", Align::Right),
            ]);
            for p in &t.partitions {
                table.row(vec![
                    p.partition.to_string(),
                    p.log_start.to_string(),
                    p.log_end.to_string(),
                ]);
            }
            table.print();
        }
        TopicCmd::Delete { path, topic } => {
            let path = abs(&path);
            streams
                .delete_topic(TopicRequest {
                    path: path.clone(),
                    topic,
                })
                .await
                .map_err(|s| at_path(ClientError::from_status(s), &path))?;
        }
        TopicCmd::AddPartitions {
            path,
            topic,
            partitions,
        } => {
            let path = abs(&path);
            let t = streams
                .add_partitions(AddPartitionsRequest {
                    path: path.clone(),
                    topic,
                    partitions,
                })
                .await
                .map_err(|s| at_path(ClientError::from_status(s), &path))?
                .into_inner();
            if ctx.json() {
                print_json(&topic_json(&t));
            } else {
                println!(
                    "topic {} in {} has {} partitions",
                    t.topic, t.path, t.partition_count
                );
            }
        }
    }
    Ok(())
}

/// Every stream directly in `dir`, following `more` page by page.
async fn list_all(client: &Client, dir: &str) -> Result<Vec<berth_api::v1::Entry>> {
    let mut streams = client.streams();
    let mut out = Vec::new();
    let mut start_after = String::new();
    for _ in 0..LIST_PAGES_MAX {
        let page = streams
            .list(ListRequest {
                path: dir.to_string(),
                start_after: start_after.clone(),
                limit: LIST_PAGE_LIMIT,
            })
            .await
            .map_err(|s| at_path(ClientError::from_status(s), dir))?
            .into_inner();
        out.extend(page.streams);
        if !page.more {
            return Ok(out);
        }
        // A server that says "more" but does not advance would loop forever.
        if page.next_start_after <= start_after {
            bail!("listing streams in {dir}: the server returned a page that does not advance");
        }
        start_after = page.next_start_after;
    }
    bail!("listing streams in {dir}: more than {LIST_PAGES_MAX} pages")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_parses() {
        assert_eq!(parse_retention("7d"), Ok(7 * 24 * 3600 * 1000));
        assert_eq!(parse_retention("12h"), Ok(12 * 3600 * 1000));
        assert_eq!(parse_retention("30min"), Ok(30 * 60 * 1000));
        assert_eq!(parse_retention("forever"), Ok(-1));
        assert_eq!(parse_retention("Forever"), Ok(-1));
        assert!(parse_retention("0s").is_err());
        assert!(parse_retention("soon").is_err());
        assert!(parse_retention("-1").is_err());
    }

    #[test]
    fn retention_bytes_parse() {
        assert_eq!(parse_retention_bytes("10GiB"), Ok(10 << 30));
        assert_eq!(parse_retention_bytes("500MB"), Ok(500_000_000));
        assert_eq!(parse_retention_bytes("unlimited"), Ok(-1));
        assert!(parse_retention_bytes("0").is_err());
        assert!(parse_retention_bytes("-1").is_err());
        assert!(parse_retention_bytes("10X").is_err());
        assert!(parse_retention_bytes("16EiB").is_err());
    }

    #[test]
    fn texts() {
        assert_eq!(retention_text(7 * 24 * 3600 * 1000), "7days");
        assert_eq!(retention_text(-1), "forever");
        assert_eq!(retention_bytes_text(-1), "unlimited");
        assert_eq!(retention_bytes_text(10 << 30), "10 GiB");
        assert_eq!(ace_text(None), "(the owner only)");
        assert_eq!(ace_text(Some("")), "'' (nobody)");
        assert_eq!(ace_text(Some("u:a")), "u:a");
        let id: Vec<u8> = (0u8..16).collect();
        assert_eq!(topic_id_text(&id), "00010203-0405-0607-0809-0a0b0c0d0e0f");
        // Round trip through the parsers.
        assert_eq!(parse_retention(&retention_text(3_600_000)), Ok(3_600_000));
        assert_eq!(parse_retention(&retention_text(-1)), Ok(-1));
        assert_eq!(parse_retention_bytes(&retention_bytes_text(-1)), Ok(-1));
    }
}
