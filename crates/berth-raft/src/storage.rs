//! Raft persistence in the node store, and `raft::Storage` over it.
//!
//! On-disk layout (a high-risk surface: change only with a version bump):
//!
//! ```text
//! Space::RaftLog    shard_id BE(8) · index BE(8)        -> record(protobuf Entry)
//! Space::RaftState  shard_id BE(8) · 0x01               -> record(postcard ShardDesc)
//!                   shard_id BE(8) · 0x02               -> record(postcard HardStateRec)
//!                   shard_id BE(8) · 0x03               -> record(postcard ApplyStateRec)
//!                   shard_id BE(8) · 0x04               -> record(postcard LogStateRec)
//!                   shard_id BE(8) · 0x06               -> record(postcard InstallRec)
//!                   b"incarnation"                      -> u64 BE, starts of the loop
//! Space::Data       the cluster key itself              -> value (state machine data)
//! record            = version (u8 = 1) · crc32(payload) BE(4) · payload
//! ```
//!
//! The hard state and log are written by the loop's group commit (Sync); the apply state
//! (applied index/term + conf state) is written in the same atomic batch as the data it
//! covers; the log state (truncation point) in the same batch as the deleted entries.
//! Snapshot payload: `record(postcard SnapshotData)`: the pairs inline, or only a head
//! whose pairs are streamed beside the message (see [`crate::snapshot`]). `InstallRec`
//! marks a replica whose data is being installed from a staged snapshot.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use berth_store::{Durability, Space, Store, StoreError, WriteBatch};
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use serde::{Deserialize, Serialize};

use crate::{ShardDesc, ShardId};

const RECORD_VERSION: u8 = 1;
const TAG_DESC: u8 = 0x01;
const TAG_HARD: u8 = 0x02;
const TAG_APPLY: u8 = 0x03;
const TAG_LOG: u8 = 0x04;
/// Left by a destroyed replica: its shard's first configuration must not create it again
/// (see [`removed`]). An added replica ([`ShardStorage::create`] without voters) clears it.
const TAG_TOMBSTONE: u8 = 0x05;
/// A staged snapshot is being installed into the replica's range (see [`crate::snapshot`]).
const TAG_INSTALL: u8 = 0x06;
/// Entries kept in memory per group (the log's tail), to serve raft without disk reads.
const CACHE_ENTRIES_MAX: usize = 1024;
/// Bytes of entry data kept in memory per group: large entries (file data)
/// must not pin gigabytes of memory.
const CACHE_BYTES_MAX: usize = 16 << 20;
/// Page size for scans of the log and of a shard's data.
const PAGE: usize = 512;

/// Wraps a payload with version and checksum.
pub(crate) fn seal(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 5);
    out.push(RECORD_VERSION);
    out.extend_from_slice(&crc32fast::hash(payload).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Verifies version and checksum; returns the payload.
pub(crate) fn open(what: &str, rec: &[u8]) -> Result<Vec<u8>, StoreError> {
    if rec.len() < 5 {
        return Err(StoreError::Corrupt(format!("{what}: record too short")));
    }
    if rec[0] != RECORD_VERSION {
        return Err(StoreError::Corrupt(format!(
            "{what}: unknown record version {}",
            rec[0]
        )));
    }
    let crc = u32::from_be_bytes([rec[1], rec[2], rec[3], rec[4]]);
    let payload = &rec[5..];
    if crc32fast::hash(payload) != crc {
        return Err(StoreError::Corrupt(format!("{what}: checksum mismatch")));
    }
    Ok(payload.to_vec())
}

pub(crate) fn seal_serde<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    let p = postcard::to_stdvec(v).map_err(|e| StoreError::Invalid(format!("encode: {e}")))?;
    Ok(seal(&p))
}

pub(crate) fn open_serde<T: for<'de> Deserialize<'de>>(
    what: &str,
    rec: &[u8],
) -> Result<T, StoreError> {
    let p = open(what, rec)?;
    postcard::from_bytes(&p).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

pub(crate) fn state_key(shard: ShardId, tag: u8) -> Vec<u8> {
    let mut k = shard.to_be_bytes().to_vec();
    k.push(tag);
    k
}

pub(crate) fn log_key(shard: ShardId, index: u64) -> Vec<u8> {
    let mut k = shard.to_be_bytes().to_vec();
    k.extend_from_slice(&index.to_be_bytes());
    k
}

fn log_range(shard: ShardId) -> (Vec<u8>, Vec<u8>) {
    let start = log_key(shard, 0);
    let end = match shard.checked_add(1) {
        Some(next) => log_key(next, 0),
        None => Vec::new(),
    };
    (start, end)
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct ConfRec {
    voters: Vec<u64>,
    learners: Vec<u64>,
    voters_outgoing: Vec<u64>,
    learners_next: Vec<u64>,
    auto_leave: bool,
}

impl ConfRec {
    fn from_pb(c: &ConfState) -> ConfRec {
        ConfRec {
            voters: c.voters.clone(),
            learners: c.learners.clone(),
            voters_outgoing: c.voters_outgoing.clone(),
            learners_next: c.learners_next.clone(),
            auto_leave: c.auto_leave,
        }
    }

    fn to_pb(&self) -> ConfState {
        ConfState {
            voters: self.voters.clone(),
            learners: self.learners.clone(),
            voters_outgoing: self.voters_outgoing.clone(),
            learners_next: self.learners_next.clone(),
            auto_leave: self.auto_leave,
            ..ConfState::default()
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
struct HardStateRec {
    term: u64,
    vote: u64,
    commit: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct ApplyStateRec {
    applied_index: u64,
    applied_term: u64,
    conf: ConfRec,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
struct LogStateRec {
    truncated_index: u64,
    truncated_term: u64,
}

/// The payload of a raft snapshot of one shard.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SnapshotData {
    pub(crate) desc: ShardDesc,
    pub(crate) applied_index: u64,
    pub(crate) applied_term: u64,
    pub(crate) body: Body,
}

/// Where a snapshot's pairs are.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Body {
    /// In the payload (a transport that hands messages over whole).
    Inline(Vec<(Vec<u8>, Vec<u8>)>),
    /// Streamed beside the message, as the sender's storage builds it.
    Streamed,
    /// Received and staged in this node's staging file for the snapshot (set by the
    /// receiving node's [`crate::snapshot::SnapshotSink`], never accepted from a peer).
    Staged,
}

/// A replica installing a staged snapshot: which one.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(crate) struct InstallRec {
    pub(crate) index: u64,
    pub(crate) term: u64,
}

/// The snapshot whose data `shard`'s replica is installing, if it is.
pub(crate) fn pending_install(
    store: &Store,
    shard: ShardId,
) -> Result<Option<InstallRec>, StoreError> {
    store
        .get(Space::RaftState, &state_key(shard, TAG_INSTALL))?
        .map(|rec| open_serde("install marker", &rec))
        .transpose()
}

/// Ends an install, in `batch`.
pub(crate) fn install_done(batch: &mut WriteBatch, shard: ShardId) {
    batch.delete(Space::RaftState, &state_key(shard, TAG_INSTALL));
}

fn encode_entry(e: &Entry) -> Result<Vec<u8>, StoreError> {
    let b = e
        .write_to_bytes()
        .map_err(|err| StoreError::Invalid(format!("encode entry: {err}")))?;
    Ok(seal(&b))
}

fn decode_entry(shard: ShardId, index: u64, rec: &[u8]) -> Result<Entry, StoreError> {
    let what = format!("shard {shard} log entry {index}");
    let p = open(&what, rec)?;
    let e =
        Entry::parse_from_bytes(&p).map_err(|err| StoreError::Corrupt(format!("{what}: {err}")))?;
    if e.index != index {
        return Err(StoreError::Corrupt(format!(
            "{what}: holds index {}",
            e.index
        )));
    }
    Ok(e)
}

/// The blob references a stored log record holds; `None` when the record
/// does not decode.
pub(crate) fn entry_blob_refs(rec: &[u8]) -> Option<Vec<Vec<u8>>> {
    let p = open("log entry", rec).ok()?;
    let e = Entry::parse_from_bytes(&p).ok()?;
    Some(match e.get_entry_type() {
        EntryType::EntryNormal if !e.data.is_empty() => crate::cmd::blob_refs(&e.data),
        _ => Vec::new(),
    })
}

/// Puts the bytes of a stored entry's blob references back in place.
fn inflate_entry(store: &Store, e: &mut Entry) -> Result<(), StoreError> {
    if e.get_entry_type() == EntryType::EntryNormal {
        if let Some(d) = crate::cmd::inflate(store, &e.data)? {
            e.data = d.into();
        }
    }
    Ok(())
}

fn other(e: StoreError) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

/// Every shard descriptor persisted in the store.
pub(crate) fn load_descs(store: &Store) -> Result<Vec<ShardDesc>, StoreError> {
    let mut out = Vec::new();
    let mut cursor = Vec::new();
    loop {
        let page = store.scan(Space::RaftState, &cursor, &[], PAGE)?;
        for (k, v) in &page {
            if k.len() == 9 && k[8] == TAG_DESC {
                out.push(open_serde::<ShardDesc>("shard descriptor", v)?);
            }
        }
        match page.last() {
            Some((k, _)) if page.len() == PAGE => {
                cursor = k.clone();
                cursor.push(0);
            }
            _ => return Ok(out),
        }
    }
}

/// Whether this node's replica of `shard` was destroyed (removed from its group) and not
/// added again since.
pub(crate) fn removed(store: &Store, shard: ShardId) -> Result<bool, StoreError> {
    Ok(store
        .get(Space::RaftState, &state_key(shard, TAG_TOMBSTONE))?
        .is_some())
}

/// Deletes everything of a replica, in `batch`: its descriptor and raft state, its log and
/// the data of its key range; leaves a tombstone.
pub(crate) fn destroy(batch: &mut WriteBatch, desc: &ShardDesc) -> Result<(), StoreError> {
    for tag in [TAG_DESC, TAG_HARD, TAG_APPLY, TAG_LOG, TAG_INSTALL] {
        batch.delete(Space::RaftState, &state_key(desc.id, tag));
    }
    batch.put(Space::RaftState, &state_key(desc.id, TAG_TOMBSTONE), &[]);
    let (ls, le) = log_range(desc.id);
    batch.delete_range(Space::RaftLog, &ls, &le)?;
    batch.delete_range(Space::Data, &desc.start, &desc.end)?;
    Ok(())
}

/// One group's raft storage: hard state, conf state, log (cached tail), apply state.
pub(crate) struct ShardStorage {
    store: Arc<Store>,
    pub(crate) desc: ShardDesc,
    hard: HardState,
    conf: ConfState,
    truncated_index: u64,
    truncated_term: u64,
    last_index: u64,
    /// Contiguous entries ending at `last_index` (when not empty).
    cache: VecDeque<Entry>,
    pub(crate) applied_index: u64,
    pub(crate) applied_term: u64,
    /// Entry bytes appended since the log was last compacted (approximate:
    /// starts at 0 after a restart).
    pub(crate) bytes_since_compact: u64,
    /// Stored payloads (bulk bytes moved to blobs, see `cmd::offload`) of
    /// entries appended and not yet applied, by index, with their term and
    /// the pins on their blob segments: apply uses them so the state
    /// references the bytes the log wrote. Also the ones a proposer made on
    /// this node for entries not yet appended.
    stored: BTreeMap<u64, (u64, crate::cmd::Stored)>,
    /// Snapshots built for peers (by peer), each with the store view its pairs are read
    /// from, until the loop hands them to the transport.
    outgoing: parking_lot::Mutex<BTreeMap<u64, (u64, crate::snapshot::SnapshotSource)>>,
}

/// The log is also compacted (up to the applied index) once this many entry
/// bytes were appended since the last compaction, so bulk data does not
/// keep gigabytes of log on disk.
pub(crate) const LOG_COMPACT_BYTES: u64 = 64 << 20;

/// A leader also compacts up to what every peer holds once this many entry
/// bytes were appended: bulk entries are then deleted before their memtable
/// is flushed, so file data is not written to the log's blob files as well.
pub(crate) const LOG_TRIM_BYTES: u64 = 8 << 20;

impl ShardStorage {
    /// Bounds the cached log tail by entry count and by bytes.
    fn trim_cache(&mut self) {
        let mut bytes: usize = self.cache.iter().map(|e| e.data.len()).sum();
        while self.cache.len() > CACHE_ENTRIES_MAX
            || (bytes > CACHE_BYTES_MAX && self.cache.len() > 1)
        {
            if let Some(e) = self.cache.pop_front() {
                bytes -= e.data.len();
            }
        }
    }

    /// Persists the initial state of a new group durably: descriptor, empty log, conf state =
    /// the descriptor's voters (every replica starts from the same state).
    pub(crate) fn create(store: &Store, desc: &ShardDesc) -> Result<(), StoreError> {
        let mut b = store.batch();
        if desc.voters.is_empty() {
            b.delete(Space::RaftState, &state_key(desc.id, TAG_TOMBSTONE));
        }
        b.put(
            Space::RaftState,
            &state_key(desc.id, TAG_DESC),
            &seal_serde(desc)?,
        );
        b.put(
            Space::RaftState,
            &state_key(desc.id, TAG_HARD),
            &seal_serde(&HardStateRec::default())?,
        );
        let apply = ApplyStateRec {
            applied_index: 0,
            applied_term: 0,
            conf: ConfRec {
                voters: desc.voters.clone(),
                ..ConfRec::default()
            },
        };
        b.put(
            Space::RaftState,
            &state_key(desc.id, TAG_APPLY),
            &seal_serde(&apply)?,
        );
        b.put(
            Space::RaftState,
            &state_key(desc.id, TAG_LOG),
            &seal_serde(&LogStateRec::default())?,
        );
        store.write(b, Durability::Sync)
    }

    /// Loads a group's persisted state.
    pub(crate) fn load(store: Arc<Store>, desc: ShardDesc) -> Result<ShardStorage, StoreError> {
        let id = desc.id;
        let get = |tag: u8, what: &str| -> Result<Vec<u8>, StoreError> {
            store
                .get(Space::RaftState, &state_key(id, tag))?
                .ok_or_else(|| StoreError::Corrupt(format!("shard {id}: missing {what}")))
        };
        let hs: HardStateRec = open_serde("hard state", &get(TAG_HARD, "hard state")?)?;
        let apply: ApplyStateRec = open_serde("apply state", &get(TAG_APPLY, "apply state")?)?;
        let log: LogStateRec = open_serde("log state", &get(TAG_LOG, "log state")?)?;
        let (start, end) = log_range(id);
        let last_index = match store.last_in_range(Space::RaftLog, &start, &end)? {
            Some((k, v)) => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&k[8..16]);
                let idx = u64::from_be_bytes(b);
                decode_entry(id, idx, &v)?;
                idx.max(log.truncated_index)
            }
            None => log.truncated_index,
        };
        if apply.applied_index < log.truncated_index || apply.applied_index > last_index {
            return Err(StoreError::Corrupt(format!(
                "shard {id}: applied {} outside [{}, {last_index}]",
                apply.applied_index, log.truncated_index
            )));
        }
        let hard = HardState {
            term: hs.term,
            vote: hs.vote,
            // Commit is persisted lazily; everything applied was committed.
            commit: hs.commit.max(apply.applied_index).min(last_index),
            ..HardState::default()
        };
        let mut s = ShardStorage {
            store,
            desc,
            hard,
            conf: apply.conf.to_pb(),
            truncated_index: log.truncated_index,
            truncated_term: log.truncated_term,
            last_index,
            cache: VecDeque::new(),
            applied_index: apply.applied_index,
            applied_term: apply.applied_term,
            bytes_since_compact: 0,
            stored: BTreeMap::new(),
            outgoing: parking_lot::Mutex::new(BTreeMap::new()),
        };
        // Warm the cache with the tail of the log.
        let from = last_index
            .saturating_sub(CACHE_ENTRIES_MAX as u64)
            .max(s.truncated_index)
            + 1;
        if from <= last_index {
            // The cache is the log's tail: read the entries as stored (small),
            // then keep, from the end, what fits once their bytes are back.
            let ents = s.read_entries_as(from, last_index + 1, u64::MAX, false)?;
            let mut bytes = 0usize;
            for mut e in ents.into_iter().rev() {
                inflate_entry(&s.store, &mut e)?;
                bytes += e.data.len();
                if bytes > CACHE_BYTES_MAX && !s.cache.is_empty() {
                    break;
                }
                s.cache.push_front(e);
            }
            s.trim_cache();
        }
        Ok(s)
    }

    pub(crate) fn first_log_index(&self) -> u64 {
        self.truncated_index + 1
    }

    pub(crate) fn last_log_index(&self) -> u64 {
        self.last_index
    }

    pub(crate) fn voters(&self) -> &[u64] {
        &self.conf.voters
    }

    /// Takes the configuration a conf change entry produced; it is persisted with the
    /// applied index (`set_applied`) in the same batch as the entry's application.
    pub(crate) fn set_conf(&mut self, conf: ConfState) {
        self.conf = conf;
    }

    /// Adds new log entries (and removes any conflicting suffix) to `batch`.
    pub(crate) fn append(
        &mut self,
        batch: &mut WriteBatch,
        ents: &[Entry],
    ) -> Result<(), StoreError> {
        let (Some(first), Some(last)) = (ents.first(), ents.last()) else {
            return Ok(());
        };
        let (first, last) = (first.index, last.index);
        self.bytes_since_compact += ents.iter().map(|e| e.data.len() as u64).sum::<u64>();
        if first <= self.truncated_index || first > self.last_index + 1 {
            return Err(StoreError::Invalid(format!(
                "shard {}: append [{first}, {last}] to log ({}, {}]",
                self.desc.id, self.truncated_index, self.last_index
            )));
        }
        // Stored forms a proposer made for these very entries are used; the
        // others at or after `first` belonged to a replaced suffix.
        let mut made = self.stored.split_off(&first);
        for e in ents {
            let made = made
                .remove(&e.index)
                .filter(|(t, _)| *t == e.term)
                .map(|(_, s)| s);
            let stored = match (made, e.get_entry_type()) {
                (Some(s), _) => Some(s),
                (None, EntryType::EntryNormal) => crate::cmd::offload(&self.store, &e.data)?,
                (None, _) => None,
            };
            let rec = match stored {
                Some((data, pins)) => {
                    let mut s = e.clone();
                    s.data = data.clone().into();
                    self.stored.insert(e.index, (e.term, (data, pins)));
                    encode_entry(&s)?
                }
                None => encode_entry(e)?,
            };
            batch.put(Space::RaftLog, &log_key(self.desc.id, e.index), &rec);
        }
        for stale in last + 1..=self.last_index {
            batch.delete(Space::RaftLog, &log_key(self.desc.id, stale));
        }
        while self.cache.back().is_some_and(|e| e.index >= first) {
            self.cache.pop_back();
        }
        if self.cache.back().is_some_and(|e| e.index + 1 != first) {
            self.cache.clear();
        }
        self.cache.extend(ents.iter().cloned());
        let mut bytes: usize = self.cache.iter().map(|e| e.data.len()).sum();
        while self.cache.len() > CACHE_ENTRIES_MAX
            || (bytes > CACHE_BYTES_MAX && self.cache.len() > 1)
        {
            if let Some(e) = self.cache.pop_front() {
                bytes -= e.data.len();
            }
        }
        self.last_index = last;
        Ok(())
    }

    pub(crate) fn set_hard_state(
        &mut self,
        batch: &mut WriteBatch,
        hs: &HardState,
    ) -> Result<(), StoreError> {
        let rec = HardStateRec {
            term: hs.term,
            vote: hs.vote,
            commit: hs.commit,
        };
        batch.put(
            Space::RaftState,
            &state_key(self.desc.id, TAG_HARD),
            &seal_serde(&rec)?,
        );
        self.hard = hs.clone();
        Ok(())
    }

    pub(crate) fn set_commit(&mut self, commit: u64) {
        self.hard.commit = commit;
    }

    /// Records the new applied position into `batch` (the same batch as the applied data).
    pub(crate) fn set_applied(
        &mut self,
        batch: &mut WriteBatch,
        index: u64,
        term: u64,
    ) -> Result<(), StoreError> {
        let rec = ApplyStateRec {
            applied_index: index,
            applied_term: term,
            conf: ConfRec::from_pb(&self.conf),
        };
        batch.put(
            Space::RaftState,
            &state_key(self.desc.id, TAG_APPLY),
            &seal_serde(&rec)?,
        );
        self.applied_index = index;
        self.applied_term = term;
        Ok(())
    }

    /// Records the stored form a proposer made for the entry it just
    /// proposed at `index` (bulk bytes already in blobs): persisting the
    /// entry writes it instead of moving the bytes again.
    pub(crate) fn set_stored(&mut self, index: u64, term: u64, stored: crate::cmd::Stored) {
        self.stored.insert(index, (term, stored));
    }

    /// The stored payload of entry `index` if this node moved its bulk bytes
    /// to blobs, once (apply calls this); drops the ones before it. Their
    /// pins go too: the references are in the log and the state by now.
    pub(crate) fn take_stored(&mut self, index: u64, term: u64) -> Option<Vec<u8>> {
        let later = self.stored.split_off(&(index + 1));
        let found = self.stored.remove(&index);
        self.stored = later;
        found.filter(|(t, _)| *t == term).map(|(_, (d, _))| d)
    }

    /// Deletes log entries up to and including `to` (which must be applied).
    pub(crate) fn compact(&mut self, batch: &mut WriteBatch, to: u64) -> Result<(), StoreError> {
        if to <= self.truncated_index {
            return Ok(());
        }
        if to > self.applied_index {
            return Err(StoreError::Invalid(format!(
                "shard {}: compact to {to} beyond applied {}",
                self.desc.id, self.applied_index
            )));
        }
        let term = self.entry_term(to)?;
        for i in self.truncated_index + 1..=to {
            batch.delete(Space::RaftLog, &log_key(self.desc.id, i));
        }
        let rec = LogStateRec {
            truncated_index: to,
            truncated_term: term,
        };
        batch.put(
            Space::RaftState,
            &state_key(self.desc.id, TAG_LOG),
            &seal_serde(&rec)?,
        );
        self.truncated_index = to;
        self.truncated_term = term;
        self.bytes_since_compact = 0;
        while self.cache.front().is_some_and(|e| e.index <= to) {
            self.cache.pop_front();
        }
        Ok(())
    }

    /// Replaces the shard's state with a received snapshot, in `batch`: its key range, its
    /// log, its hard, apply and log state. Verifies the payload before writing anything.
    /// A staged snapshot's pairs are not in `batch`: it writes the install marker instead
    /// and returns what to install (see [`crate::snapshot`]).
    pub(crate) fn apply_snapshot(
        &mut self,
        batch: &mut WriteBatch,
        snap: &Snapshot,
    ) -> Result<Option<InstallRec>, StoreError> {
        let meta = snap.get_metadata();
        let data: SnapshotData = open_serde("snapshot", &snap.data)?;
        if data.desc.id != self.desc.id
            || data.desc.start != self.desc.start
            || data.desc.end != self.desc.end
        {
            return Err(StoreError::Corrupt(format!(
                "snapshot for {:?} received by shard {:?}",
                data.desc, self.desc
            )));
        }
        if data.applied_index != meta.index || data.applied_term != meta.term {
            return Err(StoreError::Corrupt(format!(
                "snapshot payload at {}/{} but metadata at {}/{}",
                data.applied_index, data.applied_term, meta.index, meta.term
            )));
        }
        let id = self.desc.id;
        let install = match &data.body {
            Body::Inline(kvs) => {
                if let Some((k, _)) = kvs.iter().find(|(k, _)| !self.desc.contains(k)) {
                    return Err(StoreError::Corrupt(format!(
                        "snapshot key {k:?} outside shard {}",
                        self.desc.id
                    )));
                }
                batch.delete_range(Space::Data, &self.desc.start, &self.desc.end)?;
                for (k, v) in kvs {
                    batch.put(Space::Data, k, v);
                }
                None
            }
            Body::Staged => {
                batch.delete_range(Space::Data, &self.desc.start, &self.desc.end)?;
                let rec = InstallRec {
                    index: meta.index,
                    term: meta.term,
                };
                batch.put(
                    Space::RaftState,
                    &state_key(id, TAG_INSTALL),
                    &seal_serde(&rec)?,
                );
                Some(rec)
            }
            Body::Streamed => {
                return Err(StoreError::Invalid(
                    "a streamed snapshot reached raft without its data".into(),
                ))
            }
        };
        let (ls, le) = log_range(id);
        batch.delete_range(Space::RaftLog, &ls, &le)?;
        self.conf = meta.get_conf_state().clone();
        self.truncated_index = meta.index;
        self.truncated_term = meta.term;
        self.last_index = meta.index;
        self.cache.clear();
        let log = LogStateRec {
            truncated_index: meta.index,
            truncated_term: meta.term,
        };
        batch.put(
            Space::RaftState,
            &state_key(id, TAG_LOG),
            &seal_serde(&log)?,
        );
        self.set_applied(batch, meta.index, meta.term)?;
        let mut hs = self.hard.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = hs.commit.max(meta.index);
        self.set_hard_state(batch, &hs)?;
        Ok(install)
    }

    /// The snapshot built for peer `to` (see [`ShardStorage::build_snapshot`]) with the
    /// source of its pairs, if it is the one at `index`.
    pub(crate) fn take_outgoing(
        &self,
        to: u64,
        index: u64,
    ) -> Option<crate::snapshot::SnapshotSource> {
        let mut out = self.outgoing.lock();
        match out.remove(&to) {
            Some((i, src)) if i == index => Some(src),
            _ => None,
        }
    }

    fn entry_term(&self, idx: u64) -> Result<u64, StoreError> {
        if idx == self.truncated_index {
            return Ok(self.truncated_term);
        }
        // The term only: references stay references (no blob read).
        Ok(self
            .read_entries_as(idx, idx + 1, u64::MAX, false)?
            .first()
            .map_or(0, |e| e.term))
    }

    /// Entries `[low, high)` from the cache or the store, at least one, at most `max_bytes`,
    /// with their bytes (blob references resolved).
    fn read_entries(&self, low: u64, high: u64, max_bytes: u64) -> Result<Vec<Entry>, StoreError> {
        self.read_entries_as(low, high, max_bytes, true)
    }

    /// [`ShardStorage::read_entries`]; `inflate = false` leaves entries
    /// read from the store in their stored form (for their terms).
    fn read_entries_as(
        &self,
        low: u64,
        high: u64,
        max_bytes: u64,
        inflate: bool,
    ) -> Result<Vec<Entry>, StoreError> {
        let mut out: Vec<Entry> = Vec::new();
        let mut size = 0u64;
        let cache_first = self.cache.front().map_or(u64::MAX, |e| e.index);
        let mut next = low;
        let mut push = |e: Entry, out: &mut Vec<Entry>| -> bool {
            size += u64::from(e.compute_size());
            if !out.is_empty() && size > max_bytes {
                return false;
            }
            out.push(e);
            true
        };
        // From the store, below the cache.
        while next < high.min(cache_first) {
            let stop = high.min(cache_first);
            let page = self.store.scan(
                Space::RaftLog,
                &log_key(self.desc.id, next),
                &log_key(self.desc.id, stop),
                PAGE,
            )?;
            if page.is_empty() {
                return Err(StoreError::Corrupt(format!(
                    "shard {}: log entry {next} missing",
                    self.desc.id
                )));
            }
            for (k, v) in page {
                let mut b = [0u8; 8];
                b.copy_from_slice(&k[8..16]);
                let idx = u64::from_be_bytes(b);
                if idx != next {
                    return Err(StoreError::Corrupt(format!(
                        "shard {}: log entry {next} missing",
                        self.desc.id
                    )));
                }
                let mut e = decode_entry(self.desc.id, idx, &v)?;
                // Peers and raft get the bytes, not this node's references.
                if inflate {
                    inflate_entry(&self.store, &mut e)?;
                }
                if !push(e, &mut out) {
                    return Ok(out);
                }
                next += 1;
            }
        }
        // From the cache.
        while next < high {
            let Some(e) = self.cache.get((next - cache_first) as usize) else {
                return Err(StoreError::Corrupt(format!(
                    "shard {}: cached entry {next} missing",
                    self.desc.id
                )));
            };
            debug_assert_eq!(e.index, next);
            if !push(e.clone(), &mut out) {
                return Ok(out);
            }
            next += 1;
        }
        Ok(out)
    }

    /// Builds a snapshot from a consistent view of the shard's range and apply state: the
    /// head at once, the pairs later, read from the view by the transport off the loop
    /// (kept for peer `to` until the loop takes it).
    fn build_snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        // Held before the view is taken: no segment the view refers to goes meanwhile.
        let hold = self.store.blobs().hold();
        let view = self.store.snapshot();
        let rec = view
            .get(Space::RaftState, &state_key(self.desc.id, TAG_APPLY))
            .map_err(other)?
            .ok_or_else(|| other(StoreError::Corrupt("apply state missing".into())))?;
        let apply: ApplyStateRec = open_serde("apply state", &rec).map_err(other)?;
        if apply.applied_index < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let data = SnapshotData {
            desc: self.desc.clone(),
            applied_index: apply.applied_index,
            applied_term: apply.applied_term,
            body: Body::Streamed,
        };
        let source = crate::snapshot::SnapshotSource::new(&self.desc, view, hold);
        self.outgoing
            .lock()
            .insert(to, (apply.applied_index, source));
        let mut snap = Snapshot {
            data: seal_serde(&data).map_err(other)?.into(),
            ..Snapshot::default()
        };
        let meta = snap.mut_metadata();
        meta.index = apply.applied_index;
        meta.term = apply.applied_term;
        meta.set_conf_state(apply.conf.to_pb());
        Ok(snap)
    }
}

impl raft::Storage for ShardStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard.clone(), self.conf.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.truncated_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_index + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        if low >= high {
            return Ok(Vec::new());
        }
        let max = max_size.into().unwrap_or(u64::MAX);
        self.read_entries(low, high, max).map_err(other)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.truncated_index {
            return Ok(self.truncated_term);
        }
        if idx < self.truncated_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last_index {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        if let Some(front) = self.cache.front() {
            if idx >= front.index {
                if let Some(e) = self.cache.get((idx - front.index) as usize) {
                    return Ok(e.term);
                }
            }
        }
        self.entry_term(idx).map_err(other)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.truncated_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        self.build_snapshot(request_index, to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_detect_corruption() {
        let rec = seal(b"hello");
        assert_eq!(open("t", &rec).unwrap(), b"hello");
        let mut bad = rec.clone();
        bad[6] ^= 1;
        assert!(open("t", &bad).is_err());
        let mut bad = rec;
        bad[0] = 9;
        assert!(open("t", &bad).is_err());
        assert!(open("t", &[1, 2]).is_err());
    }

    /// A reloaded log whose tail holds more bulk bytes than the cache keeps:
    /// the cache is a tail, and every entry reads back whole.
    #[test]
    fn reload_caches_a_tail_of_a_bulk_log() {
        use raft::Storage as _;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let desc = ShardDesc {
            id: 7,
            start: Vec::new(),
            end: Vec::new(),
            voters: vec![1],
        };
        ShardStorage::create(&store, &desc).unwrap();
        let mut st = ShardStorage::load(store.clone(), desc.clone()).unwrap();
        let n = 40u64; // 40 MiB of splices, more than CACHE_BYTES_MAX
        let ents: Vec<Entry> = (1..=n)
            .map(|i| {
                let txn = crate::cmd::Txn::ops(vec![crate::cmd::Op::VSplice {
                    base: vec![i as u8; 9],
                    offset: 0,
                    data: vec![i as u8; 1 << 20],
                    counter: None,
                    state: vec![0; 9],
                }]);
                Entry {
                    index: i,
                    term: 1,
                    data: crate::cmd::encode(&txn).unwrap().into(),
                    ..Default::default()
                }
            })
            .collect();
        let mut b = store.batch();
        st.append(&mut b, &ents).unwrap();
        store.write(b, Durability::Sync).unwrap();
        drop(st);

        let st = ShardStorage::load(store.clone(), desc).unwrap();
        assert!(st.cache.back().is_some_and(|e| e.index == n));
        let cached: usize = st.cache.iter().map(|e| e.data.len()).sum();
        assert!(cached <= CACHE_BYTES_MAX + (2 << 20), "{cached}");
        for i in 1..=n {
            let got = st
                .entries(i, i + 1, None, GetEntriesContext::empty(false))
                .unwrap();
            assert_eq!(got[0].data, ents[i as usize - 1].data, "entry {i}");
            assert_eq!(st.term(i).unwrap(), 1);
        }
    }

    #[test]
    fn log_keys_sort_by_shard_then_index() {
        assert!(log_key(1, u64::MAX) < log_key(2, 0));
        assert!(log_key(1, 255) < log_key(1, 256));
        let (s, e) = log_range(u64::MAX);
        assert_eq!(s, log_key(u64::MAX, 0));
        assert!(e.is_empty());
    }
}
