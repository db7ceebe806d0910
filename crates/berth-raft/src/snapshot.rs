//! Raft snapshots of a shard that may be larger than memory.
//!
//! raft-rs asks [`crate::storage::ShardStorage`] for a snapshot on the Raft loop. The
//! storage answers at once with a **head** only (the shard, the applied index and term,
//! the configuration) and keeps a consistent store view of that instant. The loop hands
//! the view to the transport as a [`SnapshotSource`], which reads the shard's pairs from
//! it page by page, off the loop, while the chunks are paced onto the wire.
//!
//! The receiver's transport writes the chunks to a **staged file** through a
//! [`SnapshotSink`] (each chunk checked: checksum, keys inside the shard), syncs it, and
//! only then steps the message into raft. Installing writes the new Raft state at once,
//! with an install marker, and then the data in slices of [`INSTALL_SLICE_BYTES`], one
//! slice per loop iteration, so no group of the node waits for a gigabyte to be written.
//! While a replica installs it answers no reads and applies nothing. A restart that finds
//! the marker installs again from the staged file, which was durable before the marker.
//!
//! Chunk: `record(postcard Chunk)`. Staged file: `len u32 BE · chunk`, repeated, ending
//! with the `End` chunk.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use berth_store::{KvPairs, Space, StoreError, StoreSnapshot};
use raft::eraftpb::Message;
use serde::{Deserialize, Serialize};

use crate::storage::{open, seal, Body, SnapshotData};
use crate::{ShardDesc, ShardId};

/// Bytes of pairs per chunk a source produces (one chunk may hold a single larger pair).
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// Bytes of pairs the loop writes per installing replica per iteration.
pub(crate) const INSTALL_SLICE_BYTES: usize = 8 << 20;
/// Largest chunk a sink or a staged file accepts.
const CHUNK_BYTES_MAX: usize = 256 << 20;
/// Pairs read from the store view per scan.
const SCAN_PAIRS: usize = 64;
/// The directory, beside the store, that holds staged snapshots.
const STAGING_DIR: &str = "raft-snapshots";

#[derive(Debug, Serialize, Deserialize)]
enum Chunk {
    Pairs(Vec<(Vec<u8>, Vec<u8>)>),
    /// The last chunk: how many pairs came before it.
    End {
        pairs: u64,
    },
}

fn encode(c: &Chunk) -> Result<Vec<u8>, StoreError> {
    let p = postcard::to_stdvec(c).map_err(|e| StoreError::Invalid(format!("encode: {e}")))?;
    Ok(seal(&p))
}

fn decode(rec: &[u8]) -> Result<Chunk, StoreError> {
    let p = open("snapshot chunk", rec)?;
    postcard::from_bytes(&p).map_err(|e| StoreError::Corrupt(format!("snapshot chunk: {e}")))
}

/// Whether a snapshot's data says its pairs were staged by this node.
pub(crate) fn is_staged_snapshot(snap: &raft::eraftpb::Snapshot) -> bool {
    crate::storage::open_serde::<SnapshotData>("snapshot head", &snap.data)
        .is_ok_and(|d| matches!(d.body, Body::Staged))
}

/// [`is_staged_snapshot`] of a snapshot message.
pub(crate) fn is_staged(m: &Message) -> bool {
    is_staged_snapshot(m.get_snapshot())
}

/// `msg` with its pairs inline, read from `source` (for transports that hand messages
/// over whole).
pub(crate) fn inline(mut msg: Message, source: SnapshotSource) -> Result<Message, StoreError> {
    let snap = msg.mut_snapshot();
    let mut data: SnapshotData = crate::storage::open_serde("snapshot head", &snap.data)?;
    data.body = Body::Inline(source.read_all()?);
    snap.data = crate::storage::seal_serde(&data)?.into();
    Ok(msg)
}

/// The staging directory of the store in `store_dir`.
pub(crate) fn staging_dir(store_dir: &Path) -> PathBuf {
    store_dir.join(STAGING_DIR)
}

/// Where the snapshot of `shard` at `index`/`term` is staged.
pub(crate) fn staged_path(store_dir: &Path, shard: ShardId, index: u64, term: u64) -> PathBuf {
    staging_dir(store_dir).join(format!("{shard:016x}-{index:016x}-{term:016x}.snap"))
}

/// The pairs of one shard as of one store view, chunk by chunk. Reading it does blocking
/// store reads (blobs included): call it off async executors' threads.
pub struct SnapshotSource {
    shard: ShardId,
    view: StoreSnapshot,
    /// Blob segments stay while the view may still read them.
    _hold: berth_store::blobs::Hold,
    cursor: Vec<u8>,
    end: Vec<u8>,
    pairs: u64,
    bytes: u64,
    state: SourceState,
}

#[derive(PartialEq, Eq)]
enum SourceState {
    Pairs,
    End,
    Done,
}

impl std::fmt::Debug for SnapshotSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SnapshotSource(shard {}, {} pairs read)",
            self.shard, self.pairs
        )
    }
}

impl SnapshotSource {
    pub(crate) fn new(
        desc: &ShardDesc,
        view: StoreSnapshot,
        hold: berth_store::blobs::Hold,
    ) -> SnapshotSource {
        SnapshotSource {
            shard: desc.id,
            view,
            _hold: hold,
            cursor: desc.start.clone(),
            end: desc.end.clone(),
            pairs: 0,
            bytes: 0,
            state: SourceState::Pairs,
        }
    }

    /// The shard it reads.
    pub fn shard(&self) -> ShardId {
        self.shard
    }

    /// Bytes of keys and values read so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The next chunk (about `max_bytes` of pairs), then an end chunk, then `None`.
    pub fn next_chunk(&mut self, max_bytes: usize) -> Result<Option<Vec<u8>>, StoreError> {
        match self.state {
            SourceState::Done => Ok(None),
            SourceState::End => {
                self.state = SourceState::Done;
                encode(&Chunk::End { pairs: self.pairs }).map(Some)
            }
            SourceState::Pairs => {
                let pairs = self.next_pairs(max_bytes)?;
                if pairs.is_empty() {
                    self.state = SourceState::Done;
                    return encode(&Chunk::End { pairs: self.pairs }).map(Some);
                }
                encode(&Chunk::Pairs(pairs)).map(Some)
            }
        }
    }

    /// Pairs from the cursor on, until they add up to `max_bytes` or more (a chunk is at
    /// most `max_bytes` plus one pair: values are bounded far below what a transport
    /// message may carry, so that chunks always fit one).
    fn next_pairs(&mut self, max_bytes: usize) -> Result<KvPairs, StoreError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        'pages: while bytes < max_bytes {
            let page = self
                .view
                .scan(Space::Data, &self.cursor, &self.end, SCAN_PAIRS)?;
            let full = page.len() == SCAN_PAIRS;
            let taken = page.len();
            for (i, (k, v)) in page.into_iter().enumerate() {
                bytes += k.len() + v.len();
                self.cursor = k.clone();
                self.cursor.push(0);
                out.push((k, v));
                if bytes >= max_bytes && i + 1 < taken {
                    break 'pages; // the rest of this page goes in the next chunk
                }
            }
            if !full {
                self.state = SourceState::End;
                break;
            }
        }
        self.pairs += out.len() as u64;
        self.bytes += bytes as u64;
        Ok(out)
    }

    /// Every pair at once (in memory): for transports that hand messages over whole.
    pub(crate) fn read_all(mut self) -> Result<KvPairs, StoreError> {
        let mut all = Vec::new();
        while self.state == SourceState::Pairs {
            all.extend(self.next_pairs(usize::MAX)?);
        }
        Ok(all)
    }
}

/// Receives one streamed snapshot into a staged file (see the module docs). Dropped
/// unfinished, it deletes what it wrote.
pub struct SnapshotSink {
    head: Message,
    desc: ShardDesc,
    file: Option<BufWriter<File>>,
    tmp: PathBuf,
    path: PathBuf,
    pairs: u64,
    bytes: u64,
    ended: bool,
}

impl std::fmt::Debug for SnapshotSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SnapshotSink({})", self.path.display())
    }
}

fn io(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Engine(format!("{what} {}: {e}", path.display()))
}

impl SnapshotSink {
    /// Starts receiving the snapshot whose message (without data pairs) is `head`.
    pub(crate) fn new(store_dir: &Path, head: Message) -> Result<SnapshotSink, StoreError> {
        let snap = head.get_snapshot();
        let data: SnapshotData = crate::storage::open_serde("snapshot head", &snap.data)?;
        if !matches!(data.body, Body::Streamed) {
            return Err(StoreError::Invalid(
                "a streamed snapshot's head must announce streamed data".into(),
            ));
        }
        let meta = snap.get_metadata();
        if data.applied_index != meta.index || data.applied_term != meta.term {
            return Err(StoreError::Corrupt(format!(
                "snapshot head at {}/{} but metadata at {}/{}",
                data.applied_index, data.applied_term, meta.index, meta.term
            )));
        }
        let dir = staging_dir(store_dir);
        std::fs::create_dir_all(&dir).map_err(|e| io("create", &dir, e))?;
        let path = staged_path(store_dir, data.desc.id, meta.index, meta.term);
        let tmp = path.with_extension(format!("tmp{}", rand_suffix()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| io("create", &tmp, e))?;
        Ok(SnapshotSink {
            head,
            desc: data.desc,
            file: Some(BufWriter::with_capacity(1 << 20, file)),
            tmp,
            path,
            pairs: 0,
            bytes: 0,
            ended: false,
        })
    }

    /// Bytes of pairs received so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Checks one chunk and appends it to the staged file.
    pub fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        if self.ended {
            return Err(StoreError::Invalid("snapshot data after its end".into()));
        }
        if chunk.len() > CHUNK_BYTES_MAX {
            return Err(StoreError::Invalid(format!(
                "a snapshot chunk of {} bytes",
                chunk.len()
            )));
        }
        match decode(chunk)? {
            Chunk::Pairs(pairs) => {
                if let Some((k, _)) = pairs.iter().find(|(k, _)| !self.desc.contains(k)) {
                    return Err(StoreError::Corrupt(format!(
                        "snapshot key {k:?} outside shard {}",
                        self.desc.id
                    )));
                }
                self.pairs += pairs.len() as u64;
                self.bytes += pairs
                    .iter()
                    .map(|(k, v)| (k.len() + v.len()) as u64)
                    .sum::<u64>();
            }
            Chunk::End { pairs } => {
                if pairs != self.pairs {
                    return Err(StoreError::Corrupt(format!(
                        "snapshot ends after {pairs} pairs; {} arrived",
                        self.pairs
                    )));
                }
                self.ended = true;
            }
        }
        let f = self.file.as_mut().expect("open until finished");
        f.write_all(&(chunk.len() as u32).to_be_bytes())
            .and_then(|()| f.write_all(chunk))
            .map_err(|e| io("write", &self.tmp, e))
    }

    /// Syncs the staged file under its final name and returns the message to step into
    /// raft ([`crate::RaftNode::step_snapshot`]). Fails unless the end chunk arrived.
    pub fn finish(mut self) -> Result<Message, StoreError> {
        if !self.ended {
            return Err(StoreError::Invalid(format!(
                "snapshot cut short after {} pairs",
                self.pairs
            )));
        }
        let file = self.file.take().expect("open until finished");
        let file = file
            .into_inner()
            .map_err(|e| io("write", &self.tmp, e.into_error()))?;
        file.sync_all().map_err(|e| io("sync", &self.tmp, e))?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path).map_err(|e| io("rename", &self.tmp, e))?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io("sync", dir, e))?;
        }
        let mut msg = std::mem::take(&mut self.head);
        let snap = msg.mut_snapshot();
        let mut data: SnapshotData = crate::storage::open_serde("snapshot head", &snap.data)?;
        data.body = Body::Staged;
        snap.data = crate::storage::seal_serde(&data)?.into();
        self.ended = false; // finished: nothing to clean up
        self.tmp = PathBuf::new();
        Ok(msg)
    }
}

impl Drop for SnapshotSink {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    u64::from(std::process::id()) << 32 | NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Reads a staged snapshot back, slice by slice, for installing.
pub(crate) struct StagedReader {
    path: PathBuf,
    file: BufReader<File>,
    desc: ShardDesc,
    pairs: u64,
    ended: bool,
}

impl StagedReader {
    pub(crate) fn open(path: PathBuf, desc: ShardDesc) -> Result<StagedReader, StoreError> {
        let file = File::open(&path).map_err(|e| io("open", &path, e))?;
        Ok(StagedReader {
            file: BufReader::with_capacity(1 << 20, file),
            path,
            desc,
            pairs: 0,
            ended: false,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// About `max_bytes` of pairs; empty once the end was read.
    pub(crate) fn next_slice(&mut self, max_bytes: usize) -> Result<KvPairs, StoreError> {
        let mut out = Vec::new();
        let mut bytes = 0;
        while !self.ended && bytes < max_bytes {
            let mut len = [0u8; 4];
            self.file
                .read_exact(&mut len)
                .map_err(|e| io("read", &self.path, e))?;
            let len = u32::from_be_bytes(len) as usize;
            if len > CHUNK_BYTES_MAX {
                return Err(StoreError::Corrupt(format!(
                    "{}: a chunk of {len} bytes",
                    self.path.display()
                )));
            }
            let mut rec = vec![0u8; len];
            self.file
                .read_exact(&mut rec)
                .map_err(|e| io("read", &self.path, e))?;
            match decode(&rec)? {
                Chunk::Pairs(pairs) => {
                    for (k, v) in pairs {
                        if !self.desc.contains(&k) {
                            return Err(StoreError::Corrupt(format!(
                                "{}: key {k:?} outside shard {}",
                                self.path.display(),
                                self.desc.id
                            )));
                        }
                        bytes += k.len() + v.len();
                        self.pairs += 1;
                        out.push((k, v));
                    }
                }
                Chunk::End { pairs } => {
                    if pairs != self.pairs {
                        return Err(StoreError::Corrupt(format!(
                            "{}: ends after {pairs} pairs, holds {}",
                            self.path.display(),
                            self.pairs
                        )));
                    }
                    self.ended = true;
                }
            }
        }
        Ok(out)
    }

    pub(crate) fn ended(&self) -> bool {
        self.ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_store::{Durability, Store};

    /// Chunks stay near the size asked for even when a page of pairs holds far more
    /// (large values): a chunk must fit one transport message.
    #[test]
    fn chunks_are_bounded_within_a_page_of_large_values() {
        const VALUE: usize = 256 << 10;
        const PAIRS: usize = SCAN_PAIRS + 10;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (start, end) = berth_store::keys::volume_range(1);
        let mut batch = store.batch();
        for i in 0..PAIRS {
            let mut k = start.clone();
            k.extend_from_slice(&(i as u32).to_be_bytes());
            batch.put(Space::Data, &k, &vec![i as u8; VALUE]);
        }
        store.write(batch, Durability::Sync).unwrap();
        let desc = ShardDesc {
            id: 1,
            start,
            end,
            voters: vec![1],
        };
        let mut source = SnapshotSource::new(&desc, store.snapshot(), store.blobs().hold());
        let max = 1 << 20;
        let (mut pairs, mut ended) = (0, false);
        while let Some(c) = source.next_chunk(max).unwrap() {
            assert!(
                c.len() <= max + VALUE + 4096,
                "a chunk of {} bytes",
                c.len()
            );
            match decode(&c).unwrap() {
                Chunk::Pairs(p) => {
                    assert!(!ended);
                    for (j, (_, v)) in p.iter().enumerate() {
                        assert_eq!(v[0] as usize, (pairs + j) % 256, "pairs in order");
                    }
                    pairs += p.len();
                }
                Chunk::End { pairs: n } => {
                    assert_eq!(n as usize, PAIRS);
                    ended = true;
                }
            }
        }
        assert!(ended);
        assert_eq!(pairs, PAIRS);
    }
}
