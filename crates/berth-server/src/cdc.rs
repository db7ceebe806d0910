//! The CDC pump: publishes every committed change of a table with a CDC
//! target (`berth_docs::cdc`) into its stream's topic, in commit order per
//! document, keyed by `_id`, exactly once.
//!
//! The node leading a table's volume runs its targets. A record's value is
//! JSON (`op`, `_id`, `doc`, `ns`, `ts`, and `position`: the change's place
//! in the log as `index.n`); its key is the `_id` as JSON; its partition is
//! Kafka's default for the key (murmur2), so one document's changes stay
//! in one partition, in order. Resuming (a new leader, a restart) reads
//! the `position` of each partition's last record: a change at or before
//! it is already there, a later one is not, so nothing is repeated or
//! skipped whatever the crash interrupted. Table drops and renames go to
//! partition 0 with a null key; a drop ends the target.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use berth_docs::cdc::CdcTarget;
use berth_docs::changes::{OpType, Position, Record};
use berth_docs::table::Tables;
use berth_security::principal::Principal;
use berth_streams::{batch, compact, StreamRef, Streams, TopicRecord};
use bytes::Bytes;

/// How often the pump looks for new changes.
pub const PUMP_INTERVAL: Duration = Duration::from_millis(200);
/// Log records read per step.
const PUMP_PAGE: usize = 512;
/// Records one target publishes per step at most (then the others run).
const STEP_RECORDS_MAX: usize = 100_000;
/// Log entries the pump lets pass without recording its progress.
const RECORD_GAP: u64 = 100_000;
/// Bytes of one partition's batch at most.
const BATCH_BYTES: usize = 1 << 20;

/// One record to append: key (`None`: null) and value.
type Encoded = (Option<Vec<u8>>, Vec<u8>);

/// What a running target knows between steps.
struct Progress {
    /// Per partition: the last change durable in it.
    parts: Vec<Position>,
    /// Read the log up to here.
    read: Position,
}

/// The pump of this node.
pub struct Pump {
    tables: Arc<Tables>,
    streams: Arc<Streams>,
    /// By (volume, table, target id).
    progress: parking_lot::Mutex<HashMap<(u64, u64, u64), Progress>>,
}

impl Pump {
    pub fn new(tables: Arc<Tables>, streams: Arc<Streams>) -> Arc<Pump> {
        Arc::new(Pump {
            tables,
            streams,
            progress: Default::default(),
        })
    }

    /// Runs every `every` until dropped.
    pub fn spawn(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(pump) = me.upgrade() else { return };
                pump.step().await;
            }
        })
    }

    /// One pass over the targets of the volumes this node leads; returns
    /// the records published.
    pub async fn step(&self) -> usize {
        let meta = self.tables.namespace().meta();
        let map = meta.map();
        let router = meta.router();
        let mut published = 0;
        let mut running = Vec::new();
        for vol in &map.volumes {
            if router.leader_of(vol.shard_id) != Some(router.node_id()) {
                continue;
            }
            let targets = match self.tables.cdc_targets(vol.id).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(volume = %vol.path, error = %e, "reading CDC targets failed");
                    continue;
                }
            };
            for t in targets {
                running.push((vol.id, t.table, t.id));
                match self.run(vol.id, &t).await {
                    Ok(n) => published += n,
                    Err(e) => {
                        // Starts again from the topic's tails next time.
                        self.progress.lock().remove(&(vol.id, t.table, t.id));
                        tracing::warn!(table = %t.table_path, stream = %t.stream, topic = %t.topic, error = %e, "CDC publishing failed; retrying");
                    }
                }
            }
        }
        // Targets no longer run here (removed, or led elsewhere) start from
        // the topic again if they come back.
        self.progress.lock().retain(|k, _| running.contains(k));
        published
    }

    /// Publishes what target `t` has not yet.
    async fn run(&self, vol: u64, t: &CdcTarget) -> anyhow::Result<usize> {
        let system = berth_fs::volumes::system_principal();
        let s = self.streams.lookup(&system, &t.stream).await?;
        let Some(topic) = self.streams.topic(&s, &t.topic).await? else {
            anyhow::bail!("topic {} of {} is gone", t.topic, t.stream);
        };
        let key = (vol, t.table, t.id);
        let known = self.progress.lock().remove(&key);
        let mut p = match known {
            Some(p) if p.parts.len() == topic.partitions as usize => p,
            _ => self.resume(&system, &s, &topic, t).await?,
        };
        let mut total = 0;
        let mut recorded = t.published();
        loop {
            let (records, reached) = self.tables.changes_after(vol, p.read, PUMP_PAGE).await?;
            let full = records.len() == PUMP_PAGE;
            let mine: Vec<(Position, Record)> = records
                .into_iter()
                .filter(|(_, r)| r.table == t.table)
                .collect();
            let dropped = mine.iter().any(|(_, r)| r.op == OpType::Drop);
            let n = self
                .publish(&system, &s, &t.topic, &topic, &mut p, &mine)
                .await?;
            total += n;
            p.read = reached;
            // Everything read is durable in its partition or not this
            // table's: the target's lower bound (which holds back trimming)
            // moves there, when something was published or the log went
            // far on without this table (writing it on every step would
            // itself be a change to the volume's shard).
            let far = reached.index.saturating_sub(recorded.index) > RECORD_GAP;
            if reached > recorded && (n > 0 || far) {
                self.tables
                    .cdc_published(vol, t.table, t.id, reached)
                    .await?;
                recorded = reached;
            }
            if dropped {
                self.tables.cdc_forget(vol, t.table, t.id).await?;
                self.progress.lock().remove(&key);
                return Ok(total);
            }
            if !full || total > STEP_RECORDS_MAX {
                break;
            }
        }
        self.progress.lock().insert(key, p);
        Ok(total)
    }

    /// Where each partition is: the `position` of its last record, else
    /// the target's lower bound.
    async fn resume(
        &self,
        system: &Principal,
        s: &StreamRef,
        topic: &TopicRecord,
        t: &CdcTarget,
    ) -> anyhow::Result<Progress> {
        let floor = t.published().max(t.start());
        let mut parts = Vec::with_capacity(topic.partitions as usize);
        for part in 0..topic.partitions {
            let state = self.streams.offsets(system, s, topic, part).await?;
            let mut at = floor;
            if state.next > state.log_start {
                let (_, batches) = self
                    .streams
                    .read(system, s, topic, part, state.next - 1, 1 << 20)
                    .await?;
                if let Some(last) = batches.first().and_then(|b| last_position(b)) {
                    at = at.max(last);
                }
            }
            parts.push(at);
        }
        let read = parts.iter().copied().min().unwrap_or(floor);
        Ok(Progress { parts, read })
    }

    /// Appends the changes each partition has not got, in order; returns
    /// how many.
    async fn publish(
        &self,
        system: &Principal,
        s: &StreamRef,
        name: &str,
        topic: &TopicRecord,
        p: &mut Progress,
        changes: &[(Position, Record)],
    ) -> anyhow::Result<usize> {
        let n_parts = topic.partitions.max(1);
        // Per partition: encoded (key, value) and the last position.
        let mut per: HashMap<u32, (Vec<Encoded>, Position)> = HashMap::new();
        for (pos, r) in changes {
            let key = r.id.as_ref().map(|id| {
                serde_json::to_vec(&id.clone().into_relaxed_extjson()).unwrap_or_default()
            });
            let part = match &key {
                Some(k) => kafka_partition(k, n_parts),
                None => 0,
            };
            if *pos <= p.parts[part as usize] {
                continue; // already there
            }
            let value = serde_json::to_vec(&value_json(r, *pos))?;
            let e = per.entry(part).or_insert_with(|| (Vec::new(), *pos));
            e.0.push((key, value));
            e.1 = *pos;
        }
        let mut total = 0;
        let mut parts = Vec::new();
        let mut lasts = Vec::new();
        for (part, (records, last)) in per {
            total += records.len();
            for chunk in chunks(&records) {
                let recs: Vec<batch::Record> = chunk
                    .iter()
                    .map(|(k, v)| batch::Record {
                        key: k.as_deref(),
                        value: Some(v),
                    })
                    .collect();
                let now = bson::DateTime::now().timestamp_millis();
                parts.push((part, Bytes::from(batch::encode(&recs, now, None))));
            }
            lasts.push((part, last));
        }
        if parts.is_empty() {
            return Ok(0);
        }
        let results = self
            .streams
            .append_submit(system, s, name, topic, parts)
            .await;
        for r in results {
            if let Err(e) = r {
                anyhow::bail!("appending: {e:?}");
            }
        }
        for (part, last) in lasts {
            p.parts[part as usize] = last;
        }
        Ok(total)
    }
}

/// Splits one partition's records into batches of about [`BATCH_BYTES`].
fn chunks(records: &[Encoded]) -> Vec<&[Encoded]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, (k, v)) in records.iter().enumerate() {
        bytes += k.as_ref().map_or(0, Vec::len) + v.len();
        if bytes >= BATCH_BYTES {
            out.push(&records[start..=i]);
            start = i + 1;
            bytes = 0;
        }
    }
    if start < records.len() {
        out.push(&records[start..]);
    }
    out
}

/// A change as the topic carries it.
fn value_json(r: &Record, pos: Position) -> serde_json::Value {
    let mut v = serde_json::json!({
        "op": r.op.name(),
        "ns": r.path,
        "ts": r.wall.timestamp_millis(),
        "position": format!("{}.{}", pos.index, pos.n),
    });
    if let Some(id) = &r.id {
        v["_id"] = id.clone().into_relaxed_extjson();
    }
    if let Some(d) = &r.doc {
        v["doc"] = bson::Bson::Document(d.clone()).into_relaxed_extjson();
    }
    if let Some(u) = &r.update {
        v["update"] = bson::Bson::Document(u.clone()).into_relaxed_extjson();
    }
    if let Some(to) = &r.to {
        v["to"] = serde_json::Value::String(to.clone());
    }
    v
}

/// The `position` of a stored batch's last record.
fn last_position(b: &[u8]) -> Option<Position> {
    let parsed = compact::parse(b).ok()?;
    let last = parsed.keys.last()?;
    let value = &parsed.records[last.value.clone()?];
    let v: serde_json::Value = serde_json::from_slice(value).ok()?;
    let (index, n) = v.get("position")?.as_str()?.split_once('.')?;
    Some(Position {
        index: index.parse().ok()?,
        n: n.parse().ok()?,
    })
}

/// Kafka's default partition of a keyed record: murmur2 of the key, made
/// positive, modulo the partitions.
pub fn kafka_partition(key: &[u8], partitions: u32) -> u32 {
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

/// MurmurHash2 as Kafka's clients compute it (seed 0x9747b28c).
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values Kafka's Java client gives (`Utils.murmur2`), as its tests
    /// list them.
    #[test]
    fn murmur2_is_kafkas() {
        let cases: [(&[u8], i32); 4] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
        ];
        for (k, want) in cases {
            assert_eq!(murmur2(k) as i32, want, "{}", String::from_utf8_lossy(k));
        }
        assert!(kafka_partition(b"foobar", 3) < 3);
    }

    #[test]
    fn the_last_records_position_is_read_back() {
        let v1 = serde_json::to_vec(&serde_json::json!({"position": "7.0"})).unwrap();
        let v2 = serde_json::to_vec(&serde_json::json!({"position": "9.2"})).unwrap();
        let recs = [
            batch::Record {
                key: Some(b"1"),
                value: Some(&v1),
            },
            batch::Record {
                key: Some(b"2"),
                value: Some(&v2),
            },
        ];
        let b = batch::encode(&recs, 0, None);
        assert_eq!(last_position(&b), Some(Position { index: 9, n: 2 }));
    }

    #[test]
    fn batches_split_by_bytes() {
        let big = vec![(None, vec![0u8; BATCH_BYTES / 2 + 1]); 5];
        let c = chunks(&big);
        assert_eq!(c.iter().map(|c| c.len()).collect::<Vec<_>>(), vec![2, 2, 1]);
    }
}
