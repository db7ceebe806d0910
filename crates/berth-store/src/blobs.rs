//! Node-local blob segments: bulk bytes (file data) written once, outside the LSM.
//!
//! Through fjall, every byte of a file written through Raft reached the disk
//! three or four times: the log entry in the journal, the applied value in
//! the journal again, and both again in blob files when their memtables
//! were flushed. With large values the disk's bandwidth, not the CPU, bounds
//! writes. Here a large value is appended once to a segment file and the
//! engine keeps a small **reference** to it instead (40 bytes), wherever the
//! value is stored: in a Raft log entry and, after apply, in the state
//! machine — the same bytes, written once.
//!
//! A segment is an append-only file `blobs/<seq>.seg` of concatenated blobs
//! (no headers). New appends go to the newest segment; a restart always
//! starts a new one, so a torn tail is never appended to and never read (no
//! reference to it became durable: see the ordering rule).
//!
//! *Invariant (ordering)*: a reference is written to the engine only after
//! its bytes are synced. [`crate::Store::write`] syncs the appended blobs
//! before it writes any batch, so no batch — whatever its durability, and
//! whenever fjall flushes it — can make a reference durable before its
//! bytes.
//!
//! A reference is `secret (16) · segment (u64 BE) · offset (u64 BE) · length
//! (u32 BE) · crc32 of the bytes (u32 BE)`. The secret is random per node
//! (kept in `blobs/secret`), never leaves the node and is never shown to a
//! client, so no value a client writes (file data, an extended attribute)
//! can pass for a reference: [`Blobs::parse`] tells the two apart without
//! knowing what the key holds. References are node-local: they never cross
//! the network (a Raft entry or snapshot sent to a peer carries the bytes).
//!
//! Reclaiming space is the caller's: [`Blobs::sealed`] lists the segments no
//! longer appended to and not [`Pin`]ned by an append whose reference is not
//! stored yet, and [`Blobs::remove`] deletes one. A segment is
//! deleted whole once nothing refers to it (see berth-raft's blob GC); a
//! segment with some live blobs keeps all its bytes (no segment compaction
//! yet).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::StoreError;

/// Length of an encoded reference.
pub const REF_LEN: usize = 16 + 8 + 8 + 4 + 4;
/// A segment stops taking appends once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 256 << 20;

/// Where a blob lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobRef {
    /// Segment number.
    pub segment: u64,
    /// Byte offset in the segment.
    pub offset: u64,
    /// Length in bytes.
    pub len: u32,
    /// crc32 of the bytes.
    pub crc: u32,
}

struct Writer {
    segment: u64,
    file: Arc<File>,
    len: u64,
    /// Files with appends not yet synced (the current one last, if dirty).
    unsynced: Vec<Arc<File>>,
}

/// Appends whose references may not be in the engine yet, per segment.
type Pins = Arc<Mutex<HashMap<u64, usize>>>;

/// Keeps a segment out of [`Blobs::sealed`] while a reference into it may
/// exist only in memory (an entry on its way to the log); drop it once the
/// reference is stored.
#[must_use = "the segment is collectable as soon as the pin is dropped"]
pub struct Pin {
    pins: Pins,
    segment: u64,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut p = self.pins.lock();
        if let Some(n) = p.get_mut(&self.segment) {
            *n -= 1;
            if *n == 0 {
                p.remove(&self.segment);
            }
        }
    }
}

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pin({})", self.segment)
    }
}

/// Keeps every segment out of [`Blobs::sealed`] while it lives: a reader of
/// an old store snapshot that runs for long (a Raft snapshot streamed to a
/// peer, paced, for minutes) may meet references the live state dropped.
#[must_use = "segments are collectable again as soon as the hold is dropped"]
pub struct Hold {
    holds: Arc<std::sync::atomic::AtomicUsize>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.holds.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The blob segments of one node store.
pub struct Blobs {
    dir: PathBuf,
    secret: [u8; 16],
    writer: Mutex<Writer>,
    files: RwLock<HashMap<u64, Arc<File>>>,
    pins: Pins,
    holds: Arc<std::sync::atomic::AtomicUsize>,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Engine(format!("{what} {}: {e}", path.display()))
}

fn segment_number(name: &str) -> Option<u64> {
    u64::from_str_radix(name.strip_suffix(".seg")?, 16).ok()
}

impl Blobs {
    /// Opens (or creates) the segments in `dir` and starts a new segment.
    pub fn open(dir: &Path) -> Result<Blobs, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
        let secret = load_secret(dir)?;
        let mut files = HashMap::new();
        let mut last = 0;
        for entry in std::fs::read_dir(dir).map_err(|e| io("list", dir, e))? {
            let entry = entry.map_err(|e| io("list", dir, e))?;
            let Some(n) = entry.file_name().to_str().and_then(segment_number) else {
                continue;
            };
            let f = File::open(entry.path()).map_err(|e| io("open", &entry.path(), e))?;
            files.insert(n, Arc::new(f));
            last = last.max(n);
        }
        let segment = last + 1;
        let file = Arc::new(create_segment(dir, segment)?);
        files.insert(segment, file.clone());
        Ok(Blobs {
            dir: dir.to_path_buf(),
            secret,
            writer: Mutex::new(Writer {
                segment,
                file,
                len: 0,
                unsynced: Vec::new(),
            }),
            files: RwLock::new(files),
            pins: Arc::default(),
            holds: Arc::default(),
        })
    }

    /// Appends `data` (not yet synced) and returns its encoded reference,
    /// with a [`Pin`] on its segment to hold until the reference is stored.
    /// Appends from several threads write in parallel (only the space is
    /// reserved under the lock).
    pub fn append(&self, data: &[u8]) -> Result<(Vec<u8>, Pin), StoreError> {
        let len = u32::try_from(data.len())
            .map_err(|_| StoreError::Invalid("blob larger than 4 GiB".into()))?;
        let (segment, file, offset, pin) = {
            let mut w = self.writer.lock();
            if w.len > 0 && w.len + data.len() as u64 > SEGMENT_BYTES {
                let segment = w.segment + 1;
                let file = Arc::new(create_segment(&self.dir, segment)?);
                self.files.write().insert(segment, file.clone());
                w.segment = segment;
                w.file = file;
                w.len = 0;
            }
            let offset = w.len;
            w.len += data.len() as u64;
            // Pinned before the lock is released: `sealed` (under the same
            // lock) never lists a segment with an unstored reference.
            *self.pins.lock().entry(w.segment).or_insert(0) += 1;
            let pin = Pin {
                pins: self.pins.clone(),
                segment: w.segment,
            };
            (w.segment, w.file.clone(), offset, pin)
        };
        file.write_all_at(data, offset)
            .map_err(|e| io("write", &self.path(segment), e))?;
        // Dirty only once written: a sync that started earlier does not
        // cover these bytes, so the next one must.
        let mut w = self.writer.lock();
        if !w.unsynced.iter().any(|f| Arc::ptr_eq(f, &file)) {
            w.unsynced.push(file);
        }
        drop(w);
        let r = BlobRef {
            segment,
            offset,
            len,
            crc: crc32fast::hash(data),
        };
        Ok((self.encode(&r), pin))
    }

    /// True when appended bytes wait for [`Blobs::sync`].
    pub fn dirty(&self) -> bool {
        !self.writer.lock().unsynced.is_empty()
    }

    /// Makes every appended byte durable (fdatasync of each written segment).
    /// Appends that finish meanwhile mark their segment dirty again.
    pub fn sync(&self) -> Result<(), StoreError> {
        let files = std::mem::take(&mut self.writer.lock().unsynced);
        for f in &files {
            f.sync_data()
                .map_err(|e| StoreError::Engine(format!("sync blob segment: {e}")))?;
        }
        Ok(())
    }

    /// The reference encoded in `value`, if it is one of this node's.
    pub fn parse(&self, value: &[u8]) -> Option<BlobRef> {
        if value.len() != REF_LEN || value[..16] != self.secret {
            return None;
        }
        let u64_at = |i: usize| u64::from_be_bytes(value[i..i + 8].try_into().unwrap_or_default());
        let u32_at = |i: usize| u32::from_be_bytes(value[i..i + 4].try_into().unwrap_or_default());
        Some(BlobRef {
            segment: u64_at(16),
            offset: u64_at(24),
            len: u32_at(32),
            crc: u32_at(36),
        })
    }

    /// Encodes a reference (see the module doc).
    pub fn encode(&self, r: &BlobRef) -> Vec<u8> {
        let mut v = Vec::with_capacity(REF_LEN);
        v.extend_from_slice(&self.secret);
        v.extend_from_slice(&r.segment.to_be_bytes());
        v.extend_from_slice(&r.offset.to_be_bytes());
        v.extend_from_slice(&r.len.to_be_bytes());
        v.extend_from_slice(&r.crc.to_be_bytes());
        v
    }

    /// Reads a whole blob and verifies its checksum.
    pub fn read(&self, r: &BlobRef) -> Result<Vec<u8>, StoreError> {
        let mut out = vec![0u8; r.len as usize];
        self.file(r.segment)?
            .read_exact_at(&mut out, r.offset)
            .map_err(|e| io("read", &self.path(r.segment), e))?;
        if crc32fast::hash(&out) != r.crc {
            return Err(StoreError::Corrupt(format!(
                "blob at {}:{} ({} bytes) fails its checksum",
                r.segment, r.offset, r.len
            )));
        }
        Ok(out)
    }

    /// Reads `len` bytes at `from` within a blob (clamped to it), unverified:
    /// the checksum covers the whole blob only.
    pub fn read_range(&self, r: &BlobRef, from: u32, len: u32) -> Result<Vec<u8>, StoreError> {
        let from = from.min(r.len);
        let len = len.min(r.len - from);
        let mut out = vec![0u8; len as usize];
        self.file(r.segment)?
            .read_exact_at(&mut out, r.offset + u64::from(from))
            .map_err(|e| io("read", &self.path(r.segment), e))?;
        Ok(out)
    }

    /// Segments no longer appended to and not pinned, ascending: a
    /// consistent store snapshot taken after this call sees every reference
    /// into them that exists.
    pub fn sealed(&self) -> Vec<u64> {
        if self.holds.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            return Vec::new();
        }
        let w = self.writer.lock();
        let pins = self.pins.lock();
        let mut v: Vec<u64> = self
            .files
            .read()
            .keys()
            .copied()
            .filter(|s| *s != w.segment && !pins.contains_key(s))
            .collect();
        v.sort_unstable();
        v
    }

    /// Keeps every segment from being collected until the returned guard is
    /// dropped (see [`Hold`]).
    pub fn hold(&self) -> Hold {
        self.holds.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Hold {
            holds: self.holds.clone(),
        }
    }

    /// Deletes a sealed segment; readers still holding it finish their reads.
    pub fn remove(&self, segment: u64) -> Result<(), StoreError> {
        if segment == self.writer.lock().segment {
            return Err(StoreError::Invalid(
                "the current blob segment cannot be removed".into(),
            ));
        }
        if self.files.write().remove(&segment).is_some() {
            let p = self.path(segment);
            std::fs::remove_file(&p).map_err(|e| io("remove", &p, e))?;
        }
        Ok(())
    }

    /// Bytes in all segments (allocated on disk).
    pub fn disk_bytes(&self) -> u64 {
        self.files
            .read()
            .values()
            .filter_map(|f| f.metadata().ok())
            .map(|m| m.len())
            .sum()
    }

    fn file(&self, segment: u64) -> Result<Arc<File>, StoreError> {
        self.files
            .read()
            .get(&segment)
            .cloned()
            .ok_or_else(|| StoreError::Corrupt(format!("blob segment {segment} is missing")))
    }

    fn path(&self, segment: u64) -> PathBuf {
        self.dir.join(format!("{segment:016x}.seg"))
    }
}

fn create_segment(dir: &Path, segment: u64) -> Result<File, StoreError> {
    let p = dir.join(format!("{segment:016x}.seg"));
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&p)
        .map_err(|e| io("create", &p, e))?;
    // The new name must survive a crash before any reference to it does.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("sync", dir, e))?;
    Ok(f)
}

fn load_secret(dir: &Path) -> Result<[u8; 16], StoreError> {
    let p = dir.join("secret");
    match std::fs::read(&p) {
        Ok(b) => b
            .try_into()
            .map_err(|_| StoreError::Corrupt(format!("{} is not 16 bytes", p.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut secret = [0u8; 16];
            getrandom(&mut secret).map_err(|e| io("read random bytes for", &p, e))?;
            let tmp = dir.join("secret.tmp");
            // Readable by the server only: whoever knows it could forge references.
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| io("create", &tmp, e))?;
            f.write_all(&secret)
                .and_then(|()| f.sync_all())
                .map_err(|e| io("write", &tmp, e))?;
            std::fs::rename(&tmp, &p).map_err(|e| io("rename", &tmp, e))?;
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io("sync", dir, e))?;
            Ok(secret)
        }
        Err(e) => Err(io("read", &p, e)),
    }
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    File::open("/dev/urandom")?.read_exact(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_sync_read_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let b = Blobs::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let (r1, _p1) = b.append(&data).unwrap();
        let (r2, _p2) = b.append(b"second").unwrap();
        assert!(b.dirty());
        b.sync().unwrap();
        assert!(!b.dirty());
        let p1 = b.parse(&r1).unwrap();
        assert_eq!(b.read(&p1).unwrap(), data);
        assert_eq!(b.read_range(&p1, 99_990, 100).unwrap(), data[99_990..]);
        assert_eq!(b.read(&b.parse(&r2).unwrap()).unwrap(), b"second");
        drop(b);

        // Reopened: same secret, old segment readable and sealed, new appends elsewhere.
        let b = Blobs::open(dir.path()).unwrap();
        let p1 = b.parse(&r1).expect("same secret after reopen");
        assert_eq!(b.read(&p1).unwrap(), data);
        assert_eq!(b.sealed(), vec![p1.segment]);
        let r3 = b.parse(&b.append(b"x").unwrap().0).unwrap();
        assert!(r3.segment > p1.segment);

        b.remove(p1.segment).unwrap();
        assert!(b.read(&p1).is_err());
        assert!(b.remove(r3.segment).is_err(), "current segment stays");
    }

    #[test]
    fn foreign_values_are_not_references() {
        let dir = tempfile::tempdir().unwrap();
        let b = Blobs::open(dir.path()).unwrap();
        let (r, _pin) = b.append(b"abc").unwrap();
        assert!(b.parse(&r).is_some());
        let mut forged = r.clone();
        forged[0] ^= 1;
        assert!(b.parse(&forged).is_none());
        assert!(b.parse(&r[..REF_LEN - 1]).is_none());
        assert!(b.parse(&[0u8; REF_LEN]).is_none());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("secret"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Another node (another secret) cannot read this node's references.
        let other = tempfile::tempdir().unwrap();
        assert!(Blobs::open(other.path()).unwrap().parse(&r).is_none());
    }

    #[test]
    fn corruption_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let b = Blobs::open(dir.path()).unwrap();
        let r = b.parse(&b.append(b"hello world").unwrap().0).unwrap();
        b.sync().unwrap();
        let f = OpenOptions::new()
            .write(true)
            .open(b.path(r.segment))
            .unwrap();
        f.write_all_at(b"J", r.offset).unwrap();
        assert!(matches!(b.read(&r), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn segments_rotate() {
        let dir = tempfile::tempdir().unwrap();
        let b = Blobs::open(dir.path()).unwrap();
        let big = vec![1u8; (SEGMENT_BYTES / 2 + 1) as usize];
        let (ra, pin) = b.append(&big).unwrap();
        let a = b.parse(&ra).unwrap();
        let c = b.parse(&b.append(&big).unwrap().0).unwrap();
        assert_eq!(c.segment, a.segment + 1);
        assert_eq!(c.offset, 0);
        b.sync().unwrap();
        assert!(
            b.sealed().is_empty(),
            "pinned: its reference is not stored yet"
        );
        drop(pin);
        assert_eq!(b.sealed(), vec![a.segment]);
        assert_eq!(b.read(&c).unwrap().len(), big.len());
    }
}
