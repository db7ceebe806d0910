//! berth-store — the node store: one embedded engine per node, the cluster key encoding, and
//! the durability rule of the write path.
//!
//! What it owns:
//! - the node-local engine, [fjall] 3.1 (an LSM tree with keyspaces, pure Rust, atomic
//!   cross-keyspace write batches). Each [`Space`] is one fjall keyspace. fjall writes go to
//!   its journal; they reach the disk only on `persist(SyncAll)`, which is what
//!   [`Durability::Sync`] does before [`Store::write`] returns;
//! - the order-preserving cluster key encoding ([`keys`]): the one documented place for it;
//! - the write path's durability rule (below).
//!
//! *Invariant (poisoning)*: after a write or fsync fails, the store is **poisoned**: every
//! later [`Store::write`] returns [`StoreError::Poisoned`] without touching the engine. A failed
//! fsync leaves the journal in an unknown state, so pretending and continuing could
//! acknowledge data that is not durable. Reads keep working; recovery is a restart, which
//! replays the journal.
//!
//! *Invariant (ordering)*: the journal is one sequential file, so a write that reached the disk
//! implies every earlier write (of any durability) reached it too. The Raft layer relies on
//! this to write applied state with [`Durability::Buffered`].
//!
//! What it must never do: interpret keys or values (beyond [`keys`]), know about Raft, or
//! talk to the network.

pub mod blobs;
pub mod keys;

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use blobs::Blobs;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable};

/// Largest key the engine accepts (fjall limit).
pub const MAX_KEY_BYTES: usize = u16::MAX as usize;
/// Largest value we accept; large blobs belong in separate files.
pub const MAX_VALUE_BYTES: usize = 256 * 1024 * 1024;
/// Largest number of items a scan returns in one call.
pub const MAX_SCAN_LIMIT: usize = 1_000_000;

/// One key-value pair.
pub type KvPair = (Vec<u8>, Vec<u8>);
/// Key-value pairs in key order (the result of a scan).
pub type KvPairs = Vec<KvPair>;

/// A keyspace of the node store, one per purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Space {
    /// Raft log entries (`shard_id BE · index BE`).
    RaftLog,
    /// Raft hard state, conf state, apply state, shard descriptors.
    RaftState,
    /// State machine data, keyed by the cluster key itself.
    Data,
    /// Node-local, unreplicated records.
    Local,
}

impl Space {
    /// Every space, in index order.
    pub const ALL: [Space; 4] = [Space::RaftLog, Space::RaftState, Space::Data, Space::Local];

    fn index(self) -> usize {
        match self {
            Space::RaftLog => 0,
            Space::RaftState => 1,
            Space::Data => 2,
            Space::Local => 3,
        }
    }

    /// Engine options per space. The raft log and the state machine hold
    /// large values (file chunks up to 16 MiB, batches of them in log
    /// entries): values above 4 KiB are kept apart from the keys in blob
    /// files, so flushes and compactions move keys, not data, and write
    /// amplification for bulk data stays near one extra write.
    fn options(self) -> KeyspaceCreateOptions {
        let o = KeyspaceCreateOptions::default();
        let separated = fjall::KvSeparationOptions::default().separation_threshold(4 << 10);
        match self {
            // Log entries live until compaction; compressing them (file
            // data, mostly incompressible) only costs CPU on the write path.
            // Fixed when the keyspace is created.
            Space::RaftLog => {
                o.with_kv_separation(Some(separated.compression(fjall::CompressionType::None)))
            }
            // File data mostly does not compress (media, archives, already
            // compressed formats); lz4 over it was a third of the store's
            // CPU on the write path. Fixed when the keyspace is created.
            Space::Data => {
                o.with_kv_separation(Some(separated.compression(fjall::CompressionType::None)))
            }
            Space::RaftState | Space::Local => o,
        }
    }

    /// The fjall keyspace name (part of the on-disk format: never rename).
    pub fn name(self) -> &'static str {
        match self {
            Space::RaftLog => "raft_log",
            Space::RaftState => "raft_state",
            Space::Data => "data",
            Space::Local => "local",
        }
    }
}

/// How durable a write is when [`Store::write`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// fsync'd (`persist(SyncAll)`) before returning.
    Sync,
    /// Handed to the OS; survives a process crash, not a power loss, unless a later
    /// `Sync` write persists it (the journal is sequential).
    Buffered,
}

/// Errors of the node store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A write or sync failed earlier; the store refuses writes until restarted.
    #[error("store is poisoned after a failed write or sync; restart the node")]
    Poisoned,
    /// The engine reported an error.
    #[error("storage engine error: {0}")]
    Engine(String),
    /// A key, value or argument is outside the limits.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// Stored bytes failed verification.
    #[error("corrupt data: {0}")]
    Corrupt(String),
}

impl StoreError {
    fn engine(e: fjall::Error) -> StoreError {
        match e {
            fjall::Error::Poisoned => StoreError::Poisoned,
            e => StoreError::Engine(e.to_string()),
        }
    }
}

/// Counters since the store was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreMetrics {
    /// Write batches committed.
    pub writes: u64,
    /// Key + value bytes in committed batches.
    pub bytes_written: u64,
    /// fsyncs performed (Sync writes).
    pub syncs: u64,
    /// Total time spent in Sync writes, microseconds.
    pub sync_micros_total: u64,
    /// Disk space used by the engine (journal + tables) and blob segments, bytes.
    pub disk_space_bytes: u64,
}

#[derive(Default)]
struct Counters {
    writes: AtomicU64,
    bytes_written: AtomicU64,
    syncs: AtomicU64,
    sync_micros_total: AtomicU64,
}

struct Inner {
    /// The directory the store lives in.
    dir: std::path::PathBuf,
    db: Database,
    spaces: [Keyspace; 4],
    /// Large values written once, referenced from the engine (see [`blobs`]).
    blobs: Blobs,
    poisoned: AtomicBool,
    /// Test hook: the next Sync write fails as if fsync had failed.
    fail_next_sync: AtomicBool,
    /// Serialises writers with the poison check so no write slips in after poisoning.
    write_lock: Mutex<()>,
    counters: Counters,
}

impl Inner {
    fn space(&self, s: Space) -> &Keyspace {
        &self.spaces[s.index()]
    }

    /// A `Data` value as readers see it: a blob reference replaced by the
    /// blob's bytes.
    fn resolve(&self, space: Space, v: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        match space {
            Space::Data => match self.blobs.parse(&v) {
                Some(r) => self.blobs.read(&r),
                None => Ok(v),
            },
            _ => Ok(v),
        }
    }

    fn resolve_pairs(&self, space: Space, pairs: KvPairs) -> Result<KvPairs, StoreError> {
        if space != Space::Data {
            return Ok(pairs);
        }
        pairs
            .into_iter()
            .map(|(k, v)| Ok((k, self.resolve(space, v)?)))
            .collect()
    }
}

/// The node store. `Send + Sync`; share it behind an `Arc`.
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("poisoned", &self.is_poisoned())
            .finish()
    }
}

fn bounds<'a>(start: &'a [u8], end: &'a [u8]) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    let hi = if end.is_empty() {
        Bound::Unbounded
    } else {
        Bound::Excluded(end)
    };
    (Bound::Included(start), hi)
}

/// True when `[start, end)` cannot contain a key.
fn range_is_empty(start: &[u8], end: &[u8]) -> bool {
    !end.is_empty() && start >= end
}

/// The pairs of `iter` (a range, forward or reversed), at most `limit`.
fn collect(iter: impl Iterator<Item = fjall::Guard>, limit: usize) -> Result<KvPairs, StoreError> {
    let mut out = Vec::new();
    for guard in iter.take(limit.min(MAX_SCAN_LIMIT)) {
        let (k, v) = guard.into_inner().map_err(StoreError::engine)?;
        out.push((k.to_vec(), v.to_vec()));
    }
    Ok(out)
}

impl Store {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let db = Database::builder(dir)
            // Two cores on the target machines: keep background work modest.
            .worker_threads(2)
            // Journal values uncompressed: a file's data would be compressed
            // twice on the write path (log entry and state machine), mostly
            // for nothing.
            .journal_compression(fjall::CompressionType::None)
            .open()
            .map_err(StoreError::engine)?;
        let mut spaces = Vec::with_capacity(4);
        for s in Space::ALL {
            spaces.push(
                db.keyspace(s.name(), || s.options())
                    .map_err(StoreError::engine)?,
            );
        }
        let spaces: [Keyspace; 4] = spaces
            .try_into()
            .map_err(|_| StoreError::Engine("keyspace count".into()))?;
        let blobs = Blobs::open(&dir.join("blobs"))?;
        Ok(Store {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                db,
                spaces,
                blobs,
                poisoned: AtomicBool::new(false),
                fail_next_sync: AtomicBool::new(false),
                write_lock: Mutex::new(()),
                counters: Counters::default(),
            }),
        })
    }

    /// Reads one key (a blob reference in `Data` reads as the blob's bytes).
    pub fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.get_raw(space, key)? {
            Some(v) => Ok(Some(self.inner.resolve(space, v)?)),
            None => Ok(None),
        }
    }

    /// Reads one key as stored: a blob reference stays a reference.
    pub fn get_raw(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let v = self
            .inner
            .space(space)
            .get(key)
            .map_err(StoreError::engine)?;
        Ok(v.map(|v| v.to_vec()))
    }

    /// Up to `len` bytes at `from` of the value at `key` (short at its end),
    /// reading only those bytes when the value is a blob.
    pub fn get_range(
        &self,
        space: Space,
        key: &[u8],
        from: u32,
        len: u32,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(v) = self.get_raw(space, key)? else {
            return Ok(None);
        };
        if space == Space::Data {
            if let Some(r) = self.inner.blobs.parse(&v) {
                return self.inner.blobs.read_range(&r, from, len).map(Some);
            }
        }
        let from = (from as usize).min(v.len());
        let to = from + (len as usize).min(v.len() - from);
        Ok(Some(v[from..to].to_vec()))
    }

    /// Appends `data` to the node's blob segments and returns the reference
    /// to store in its place (in `Data`, or inside a log entry), with a pin
    /// to hold until the reference is stored (see [`blobs::Pin`]). It
    /// becomes durable with the next [`Store::write`], before that batch is
    /// written.
    pub fn put_blob(&self, data: &[u8]) -> Result<(Vec<u8>, blobs::Pin), StoreError> {
        if self.is_poisoned() {
            return Err(StoreError::Poisoned);
        }
        self.inner.blobs.append(data).inspect_err(|e| {
            self.inner.poisoned.store(true, Ordering::SeqCst);
            tracing::error!(error = %e, "store: blob append failed; store is now poisoned");
        })
    }

    /// The node's blob segments.
    pub fn blobs(&self) -> &Blobs {
        &self.inner.blobs
    }

    /// The directory the store lives in (its owner may keep files beside it).
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// `value` as readers see it: a blob reference (in `Data`) replaced by its bytes.
    pub fn resolve(&self, space: Space, value: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        self.inner.resolve(space, value)
    }

    /// Up to `limit` pairs with `start <= key < end` (empty `end` = unbounded), in key order.
    pub fn scan(
        &self,
        space: Space,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<KvPairs, StoreError> {
        if range_is_empty(start, end) || limit == 0 {
            return Ok(Vec::new());
        }
        let pairs = collect(
            self.inner
                .space(space)
                .range::<&[u8], _>(bounds(start, end)),
            limit,
        )?;
        self.inner.resolve_pairs(space, pairs)
    }

    /// Up to `limit` pairs with `start <= key < end` (empty `end` = unbounded), in descending
    /// key order: the last pairs of the range, for a backward scan. The next page of such a
    /// scan is `[start, k)` with `k` the last key returned.
    pub fn scan_rev(
        &self,
        space: Space,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<KvPairs, StoreError> {
        if range_is_empty(start, end) || limit == 0 {
            return Ok(Vec::new());
        }
        let pairs = collect(
            self.inner
                .space(space)
                .range::<&[u8], _>(bounds(start, end))
                .rev(),
            limit,
        )?;
        self.inner.resolve_pairs(space, pairs)
    }

    /// Up to `limit` keys with `start <= key < end`, in key order, without reading values
    /// (large values stay in the value log).
    pub fn scan_keys(
        &self,
        space: Space,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        if range_is_empty(start, end) || limit == 0 {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let iter = self
            .inner
            .space(space)
            .range::<&[u8], _>(bounds(start, end));
        for guard in iter.take(limit.min(MAX_SCAN_LIMIT)) {
            let (k, _) = guard.into_inner_if(|_| false).map_err(StoreError::engine)?;
            out.push(k.to_vec());
        }
        Ok(out)
    }

    /// The length of the value at `key` (a blob's length for a reference),
    /// without reading large values.
    pub fn size_of(&self, space: Space, key: &[u8]) -> Result<Option<u32>, StoreError> {
        let n = self
            .inner
            .space(space)
            .size_of(key)
            .map_err(StoreError::engine)?;
        if space == Space::Data && n == Some(blobs::REF_LEN as u32) {
            if let Some(v) = self.get_raw(space, key)? {
                if let Some(r) = self.inner.blobs.parse(&v) {
                    return Ok(Some(r.len));
                }
            }
        }
        Ok(n)
    }

    /// The last pair with `start <= key < end`, if any.
    pub fn last_in_range(
        &self,
        space: Space,
        start: &[u8],
        end: &[u8],
    ) -> Result<Option<KvPair>, StoreError> {
        if range_is_empty(start, end) {
            return Ok(None);
        }
        match self
            .inner
            .space(space)
            .range::<&[u8], _>(bounds(start, end))
            .next_back()
        {
            None => Ok(None),
            Some(g) => {
                let (k, v) = g.into_inner().map_err(StoreError::engine)?;
                Ok(Some((k.to_vec(), self.inner.resolve(space, v.to_vec())?)))
            }
        }
    }

    /// A new, empty write batch for this store.
    pub fn batch(&self) -> WriteBatch {
        WriteBatch {
            inner: self.inner.clone(),
            ops: BTreeMap::new(),
        }
    }

    /// Commits `batch` atomically (all of it or none of it, across spaces).
    ///
    /// With [`Durability::Sync`] the journal is fsync'd before returning. If the write or the
    /// fsync fails the store becomes poisoned (see the crate doc).
    pub fn write(&self, batch: WriteBatch, durability: Durability) -> Result<(), StoreError> {
        if !Arc::ptr_eq(&batch.inner, &self.inner) {
            return Err(StoreError::Invalid(
                "write batch belongs to another store".into(),
            ));
        }
        // fjall asserts on these; refuse them as errors instead (before anything is written).
        for ((_, key), value) in &batch.ops {
            if key.is_empty() || key.len() > MAX_KEY_BYTES {
                return Err(StoreError::Invalid(format!(
                    "key length {} outside 1..={MAX_KEY_BYTES}",
                    key.len()
                )));
            }
            if value.as_ref().is_some_and(|v| v.len() > MAX_VALUE_BYTES) {
                return Err(StoreError::Invalid(format!(
                    "value larger than {MAX_VALUE_BYTES} bytes"
                )));
            }
        }
        let inner = &*self.inner;
        let _guard = inner.write_lock.lock();
        if self.is_poisoned() {
            return Err(StoreError::Poisoned);
        }
        let started = Instant::now();
        // Blob bytes first: no batch may make a reference durable before them.
        if inner.blobs.dirty() {
            if let Err(e) = inner.blobs.sync() {
                inner.poisoned.store(true, Ordering::SeqCst);
                tracing::error!(error = %e, "store: blob sync failed; store is now poisoned");
                return Err(e);
            }
        }
        let inject =
            durability == Durability::Sync && inner.fail_next_sync.swap(false, Ordering::SeqCst);
        let mode = match durability {
            Durability::Sync if !inject => PersistMode::SyncAll,
            _ => PersistMode::Buffer,
        };
        let mut bytes = 0u64;
        if batch.ops.is_empty() {
            if durability == Durability::Sync && !inject {
                inner.db.persist(mode).map_err(|e| self.poison(e))?;
            }
        } else {
            let mut b = inner.db.batch().durability(Some(mode));
            for ((space, key), value) in batch.ops {
                bytes += (key.len() + value.as_ref().map_or(0, Vec::len)) as u64;
                match value {
                    Some(v) => b.insert(inner.space(space), key, v),
                    None => b.remove(inner.space(space), key),
                }
            }
            b.commit().map_err(|e| self.poison(e))?;
        }
        if inject {
            inner.poisoned.store(true, Ordering::SeqCst);
            tracing::error!("store: injected fsync failure; store is now poisoned");
            return Err(StoreError::Engine(
                "injected fsync failure (test hook)".into(),
            ));
        }
        let c = &inner.counters;
        c.writes.fetch_add(1, Ordering::Relaxed);
        c.bytes_written.fetch_add(bytes, Ordering::Relaxed);
        if durability == Durability::Sync {
            c.syncs.fetch_add(1, Ordering::Relaxed);
            c.sync_micros_total
                .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    fn poison(&self, e: fjall::Error) -> StoreError {
        self.inner.poisoned.store(true, Ordering::SeqCst);
        tracing::error!(error = %e, "store: write or fsync failed; store is now poisoned and refuses writes");
        StoreError::engine(e)
    }

    /// True after a failed write or fsync.
    pub fn is_poisoned(&self) -> bool {
        self.inner.poisoned.load(Ordering::SeqCst)
    }

    /// Test hook: makes the next [`Durability::Sync`] write fail as a failed fsync would
    /// (the batch reaches the journal but is reported as failed, and the store is poisoned).
    #[doc(hidden)]
    pub fn fail_next_sync_for_test(&self) {
        self.inner.fail_next_sync.store(true, Ordering::SeqCst);
    }

    /// A consistent point-in-time view of every space. Keep it short-lived: it pins old data.
    pub fn snapshot(&self) -> StoreSnapshot {
        StoreSnapshot {
            inner: self.inner.clone(),
            snap: self.inner.db.snapshot(),
        }
    }

    /// Counters since open, plus current disk usage.
    pub fn metrics(&self) -> StoreMetrics {
        let c = &self.inner.counters;
        StoreMetrics {
            writes: c.writes.load(Ordering::Relaxed),
            bytes_written: c.bytes_written.load(Ordering::Relaxed),
            syncs: c.syncs.load(Ordering::Relaxed),
            sync_micros_total: c.sync_micros_total.load(Ordering::Relaxed),
            disk_space_bytes: self.inner.db.disk_space().unwrap_or(0)
                + self.inner.blobs.disk_bytes(),
        }
    }
}

/// A consistent, read-only view of the store at one instant.
pub struct StoreSnapshot {
    inner: Arc<Inner>,
    snap: fjall::Snapshot,
}

impl StoreSnapshot {
    /// Reads one key as of the snapshot.
    pub fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let v = self
            .snap
            .get(self.inner.space(space), key)
            .map_err(StoreError::engine)?;
        v.map(|v| self.inner.resolve(space, v.to_vec())).transpose()
    }

    /// Every blob reference stored as a value in `space` (values of exactly
    /// [`blobs::REF_LEN`] bytes are read; larger ones are not).
    pub fn each_blob_ref(
        &self,
        space: Space,
        mut f: impl FnMut(blobs::BlobRef),
    ) -> Result<(), StoreError> {
        let ks = self.inner.space(space);
        // Two walks of one snapshot yield the same keys in the same order:
        // one gives sizes (no value read), the other keys.
        let sizes = self.snap.iter(ks);
        let keys = self.snap.iter(ks);
        for (size, key) in sizes.zip(keys) {
            let size = size.size().map_err(StoreError::engine)?;
            if size as usize != blobs::REF_LEN {
                continue;
            }
            let (k, _) = key.into_inner_if(|_| false).map_err(StoreError::engine)?;
            if let Some(v) = self.snap.get(ks, &k).map_err(StoreError::engine)? {
                if let Some(r) = self.inner.blobs.parse(&v) {
                    f(r);
                }
            }
        }
        Ok(())
    }

    /// Every pair in `[start, end)` (empty `end` = unbounded) as stored (blob
    /// references stay references), page by page through `f`.
    pub fn each_raw(
        &self,
        space: Space,
        start: &[u8],
        end: &[u8],
        mut f: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), StoreError> {
        if range_is_empty(start, end) {
            return Ok(());
        }
        for g in self
            .snap
            .range::<&[u8], _>(self.inner.space(space), bounds(start, end))
        {
            let (k, v) = g.into_inner().map_err(StoreError::engine)?;
            f(&k, &v);
        }
        Ok(())
    }

    /// The logical size of `[start, end)` (empty `end` = unbounded) in
    /// `space`: keys plus values, a blob counted at its length rather than
    /// its reference's. A walk of the range, without reading any blob.
    pub fn range_bytes(&self, space: Space, start: &[u8], end: &[u8]) -> Result<u64, StoreError> {
        let mut total = 0u64;
        self.each_raw(space, start, end, |k, v| {
            let value = match self.inner.blobs.parse(v) {
                Some(r) => u64::from(r.len),
                None => v.len() as u64,
            };
            total = total.saturating_add(k.len() as u64).saturating_add(value);
        })?;
        Ok(total)
    }

    /// Like [`Store::scan`], as of the snapshot.
    pub fn scan(
        &self,
        space: Space,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<KvPairs, StoreError> {
        if range_is_empty(start, end) || limit == 0 {
            return Ok(Vec::new());
        }
        let pairs = collect(
            self.snap
                .range::<&[u8], _>(self.inner.space(space), bounds(start, end)),
            limit,
        )?;
        self.inner.resolve_pairs(space, pairs)
    }

    /// Like [`Store::scan_rev`], as of the snapshot.
    pub fn scan_rev(
        &self,
        space: Space,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<KvPairs, StoreError> {
        if range_is_empty(start, end) || limit == 0 {
            return Ok(Vec::new());
        }
        let pairs = collect(
            self.snap
                .range::<&[u8], _>(self.inner.space(space), bounds(start, end))
                .rev(),
            limit,
        )?;
        self.inner.resolve_pairs(space, pairs)
    }
}

type OpsIter<'a> = Box<dyn Iterator<Item = (&'a (Space, Vec<u8>), &'a Option<Vec<u8>>)> + 'a>;

/// An atomic set of writes, possibly across spaces. The last operation on a key wins.
///
/// The batch can be read back ([`WriteBatch::pending`], [`WriteBatch::pending_range`]) so a
/// caller can evaluate later operations against its own earlier writes.
pub struct WriteBatch {
    inner: Arc<Inner>,
    /// `None` = delete.
    ops: BTreeMap<(Space, Vec<u8>), Option<Vec<u8>>>,
}

impl WriteBatch {
    /// Sets `key` to `value`.
    pub fn put(&mut self, space: Space, key: &[u8], value: &[u8]) {
        self.ops.insert((space, key.to_vec()), Some(value.to_vec()));
    }

    /// Deletes `key`.
    pub fn delete(&mut self, space: Space, key: &[u8]) {
        self.ops.insert((space, key.to_vec()), None);
    }

    /// Deletes every key in `[start, end)` (empty `end` = unbounded): the keys the store holds
    /// at the time of this call plus the keys put earlier into this batch. fjall has no range
    /// tombstones, so this scans and deletes key by key; the caller must be the only writer of
    /// that range (the Raft loop is, for a shard's range).
    pub fn delete_range(
        &mut self,
        space: Space,
        start: &[u8],
        end: &[u8],
    ) -> Result<usize, StoreError> {
        if range_is_empty(start, end) {
            return Ok(0);
        }
        let mut n = 0;
        for g in self
            .inner
            .space(space)
            .range::<&[u8], _>(bounds(start, end))
        {
            let k = g.key().map_err(StoreError::engine)?;
            self.ops.insert((space, k.to_vec()), None);
            n += 1;
        }
        let pending: Vec<Vec<u8>> = self
            .pending_range(space, start, end)
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| k.to_vec())
            .collect();
        for k in pending {
            self.ops.insert((space, k), None);
            n += 1;
        }
        Ok(n)
    }

    /// What this batch does to `key`: `None` = untouched, `Some(None)` = deleted,
    /// `Some(Some(v))` = set to `v`.
    pub fn pending(&self, space: Space, key: &[u8]) -> Option<Option<&[u8]>> {
        self.ops.get(&(space, key.to_vec())).map(|v| v.as_deref())
    }

    /// This batch's operations on keys in `[start, end)`, in key order.
    pub fn pending_range<'a>(
        &'a self,
        space: Space,
        start: &[u8],
        end: &[u8],
    ) -> impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)> + 'a {
        let lo = Bound::Included((space, start.to_vec()));
        let iter: OpsIter<'a> = if range_is_empty(start, end) {
            Box::new(std::iter::empty())
        } else if end.is_empty() {
            // `take_while` below stops at the next space.
            Box::new(self.ops.range((lo, Bound::Unbounded)))
        } else {
            Box::new(self.ops.range((lo, Bound::Excluded((space, end.to_vec())))))
        };
        iter.take_while(move |((s, _), _)| *s == space)
            .map(|((_, k), v)| (k.as_slice(), v.as_deref()))
    }

    /// True when the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Number of distinct keys the batch writes or deletes.
    pub fn len(&self) -> usize {
        self.ops.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_range_stays_in_space() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut b = store.batch();
        b.put(Space::Data, b"a", b"1");
        b.put(Space::Data, b"c", b"3");
        b.put(Space::Local, b"b", b"x");
        let all: Vec<_> = b.pending_range(Space::Data, b"", b"").collect();
        assert_eq!(all.len(), 2);
        let some: Vec<_> = b.pending_range(Space::Data, b"b", b"z").collect();
        assert_eq!(some, vec![(&b"c"[..], Some(&b"3"[..]))]);
        assert_eq!(b.pending_range(Space::RaftLog, b"", b"").count(), 0);
    }

    #[test]
    fn reverse_scans_page_backward_through_a_range() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (big, _pin) = store.put_blob(&[9u8; 5_000]).unwrap();
        let mut b = store.batch();
        for i in 0..50u8 {
            b.put(Space::Data, &[b'k', i], &[i]);
        }
        b.put(Space::Data, b"k\x20", &big);
        b.put(Space::Data, b"z", b"outside");
        store.write(b, Durability::Sync).unwrap();
        let forward = store.scan(Space::Data, b"k", b"l", 1000).unwrap();
        let view = store.snapshot();
        for page in [1, 7, 50, 1000] {
            // Paged backward, in the store and in a snapshot: the forward
            // scan reversed, the blob read as its bytes.
            for snapshot in [false, true] {
                let mut got = Vec::new();
                let mut end = b"l".to_vec();
                loop {
                    let rows = match snapshot {
                        false => store.scan_rev(Space::Data, b"k", &end, page).unwrap(),
                        true => view.scan_rev(Space::Data, b"k", &end, page).unwrap(),
                    };
                    let n = rows.len();
                    if let Some((k, _)) = rows.last() {
                        end = k.clone();
                    }
                    got.extend(rows);
                    if n < page {
                        break;
                    }
                }
                let mut want = forward.clone();
                want.reverse();
                assert_eq!(got, want, "page {page}");
            }
        }
        assert_eq!(forward.len(), 50);
        assert_eq!(forward[0x20].1, vec![9u8; 5_000]);
        // Unbounded end: the last key of the space first.
        let last = store.scan_rev(Space::Data, b"", b"", 1).unwrap();
        assert_eq!(last[0].0, b"z".to_vec());
        assert!(store
            .scan_rev(Space::Data, b"m", b"a", 5)
            .unwrap()
            .is_empty());
        assert!(store
            .scan_rev(Space::Data, b"k", b"l", 0)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn range_bytes_counts_blobs_at_their_length() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (r, _pin) = store.put_blob(&[7u8; 10_000]).unwrap();
        let mut b = store.batch();
        b.put(Space::Data, b"a1", b"xyz");
        b.put(Space::Data, b"a2", &r);
        b.put(Space::Data, b"b1", b"outside");
        store.write(b, Durability::Sync).unwrap();
        let view = store.snapshot();
        assert_eq!(
            view.range_bytes(Space::Data, b"a", b"b").unwrap(),
            2 + 3 + 2 + 10_000
        );
        assert_eq!(view.range_bytes(Space::Data, b"b", b"").unwrap(), 2 + 7);
        assert_eq!(view.range_bytes(Space::Data, b"c", b"d").unwrap(), 0);
    }
}
