//! What the namespace stores in a volume's key range, and where.
//!
//! | key (see `berth_store::keys`)              | value        |
//! |--------------------------------------------|--------------|
//! | `vol · Inode · 0`                          | next inode number (u64 BE) |
//! | `vol · Inode · ino`                        | [`Inode`]    |
//! | `vol · Dirent · parent_ino · name`         | [`Dirent`]   |
//!
//! A volume's whole namespace lives in one shard, so every namespace change
//! within a volume (rename included) is one atomic command. A dirent whose
//! `mount` is set is the mount point of another volume: lookups continue at
//! that volume's root inode.

use berth_meta::codec::{decode, encode};
use berth_meta::Error;
use berth_store::keys::{self, Key, Kind};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    Dir,
    File,
    Symlink,
    Table,
    Stream,
}

impl EntryKind {
    pub fn name(self) -> &'static str {
        match self {
            EntryKind::Dir => "directory",
            EntryKind::File => "file",
            EntryKind::Symlink => "symlink",
            EntryKind::Table => "table",
            EntryKind::Stream => "stream",
        }
    }
}

/// Access control expressions of one entry; `None` = decided by mode bits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryAcl {
    pub read: Option<String>,
    pub write: Option<String>,
    pub admin: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inode {
    pub kind: EntryKind,
    /// Permission bits (07777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u32,
    pub atime_ns: i64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    /// Directories: the parent directory's inode (0 for a volume root).
    pub parent: u64,
    /// Symlinks: the target.
    pub target: Option<String>,
    pub acl: EntryAcl,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dirent {
    pub ino: u64,
    pub kind: EntryKind,
    /// Set when this entry is the mount point of another volume.
    pub mount: Option<u64>,
}

pub fn counter_key(vol: u64) -> Vec<u8> {
    Key::new(vol, Kind::Inode, 0).build()
}
pub fn inode_key(vol: u64, ino: u64) -> Vec<u8> {
    Key::new(vol, Kind::Inode, ino).build()
}
pub fn dirent_key(vol: u64, parent: u64, name: &str) -> Vec<u8> {
    Key::new(vol, Kind::Dirent, parent).str(name).build()
}
/// The range holding every entry of directory `parent`.
pub fn children_range(vol: u64, parent: u64) -> (Vec<u8>, Vec<u8>) {
    keys::object_range(vol, Kind::Dirent, parent)
}
/// The range holding every inode of a volume (the counter included).
pub fn inodes_range(vol: u64) -> (Vec<u8>, Vec<u8>) {
    keys::kind_range(vol, Kind::Inode)
}
/// Decodes the name of a dirent key of directory `parent`.
pub fn dirent_name(key: &[u8]) -> Result<String, Error> {
    keys::KeyReader::new(key)
        .and_then(|mut r| r.next_str())
        .map_err(|e| Error::corrupt(format!("dirent key: {e}")))
}

// File data lives in the volume's shard beside the inode, so a write
// (chunks + size + usage) is one atomic command:
//
// | key                                        | value                         |
// |--------------------------------------------|-------------------------------|
// | `vol · FileAttr · 0`                       | usage (i64): chunks + tables |
// | `vol · FileAttr · ino`                     | file size (u64)               |
// | `vol · FileAttr · ino · "mtime"`           | last write time, ns (u64)     |
// | `vol · Chunk · ino · u64 index · u64 ver`  | chunk bytes (≤ chunk size)    |
//
// Chunks are versioned values (`berth_raft::cmd::VersionState`, state at
// [`versions_key`]): version = the volume's snapshot epoch when written, so
// a snapshot keeps the chunks it reads while the live file moves on. A chunk
// may be shorter than the chunk size; missing bytes and missing chunks below
// the size read as zeros (sparse files), and an empty chunk reads as absent.

pub fn usage_key(vol: u64) -> Vec<u8> {
    Key::new(vol, Kind::FileAttr, 0).build()
}
/// The bytes a volume uses, from the stored value of [`usage_key`] (an
/// i64, `AddI64`'s): below zero reads as 0. It is never below zero when
/// every write counted what it stored; it can be once tables written by a
/// build that did not count them yet are removed.
pub fn read_usage(v: Option<Vec<u8>>) -> u64 {
    v.and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map_or(0, |b| i64::from_be_bytes(b).max(0) as u64)
}
pub fn file_size_key(vol: u64, ino: u64) -> Vec<u8> {
    Key::new(vol, Kind::FileAttr, ino).build()
}
pub fn file_mtime_key(vol: u64, ino: u64) -> Vec<u8> {
    Key::new(vol, Kind::FileAttr, ino).str("mtime").build()
}
/// The base key of chunk `index` (its versions follow, see `keys::versioned`).
pub fn chunk_base(vol: u64, ino: u64, index: u64) -> Vec<u8> {
    Key::new(vol, Kind::Chunk, ino).u64(index).build()
}
/// Every chunk of a file.
pub fn chunks_range(vol: u64, ino: u64) -> (Vec<u8>, Vec<u8>) {
    keys::object_range(vol, Kind::Chunk, ino)
}
/// Every chunk of a volume.
pub fn volume_chunks_range(vol: u64) -> (Vec<u8>, Vec<u8>) {
    keys::kind_range(vol, Kind::Chunk)
}
/// Decodes the chunk index and version of a chunk key.
pub fn chunk_index(key: &[u8]) -> Result<(u64, u64), Error> {
    let mut r = keys::KeyReader::new(key).map_err(|e| Error::corrupt(format!("chunk key: {e}")))?;
    let index = r
        .next_u64()
        .map_err(|e| Error::corrupt(format!("chunk key: {e}")))?;
    let version = r
        .next_u64()
        .map_err(|e| Error::corrupt(format!("chunk key: {e}")))?;
    Ok((index, version))
}
/// The version state of a volume's chunks (which snapshots still read them).
pub fn versions_key(vol: u64) -> Vec<u8> {
    Key::new(vol, Kind::Meta, 0).str("versions").build()
}
/// The volume's snapshot list ([`SnapshotList`]).
pub fn snapshots_key(vol: u64) -> Vec<u8> {
    Key::new(vol, Kind::Meta, 0).str("snapshots").build()
}
/// The metadata a snapshot copies: inodes, dirents, xattrs, file attributes.
pub fn snapshot_source_range(vol: u64) -> (Vec<u8>, Vec<u8>) {
    (
        keys::kind_range(vol, Kind::Inode).0,
        keys::kind_range(vol, Kind::FileAttr).1,
    )
}
/// Every key of snapshot `id`.
pub fn snapshot_range(vol: u64, id: u64) -> (Vec<u8>, Vec<u8>) {
    keys::object_range(vol, Kind::Snapshot, id)
}

/// One snapshot of a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// The chunk version it reads (the volume's epoch when it was taken).
    pub id: u64,
    pub name: String,
    pub created_ns: i64,
}

/// Every snapshot of a volume, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotList {
    pub snapshots: Vec<SnapshotRecord>,
}

impl SnapshotList {
    pub fn find(&self, name: &str) -> Option<&SnapshotRecord> {
        self.snapshots.iter().find(|s| s.name == name)
    }
}

pub fn decode_snapshots(b: Option<&[u8]>) -> Result<SnapshotList, Error> {
    b.map(|b| decode(b, "snapshot list"))
        .transpose()
        .map(Option::unwrap_or_default)
}

/// The name under which a volume root shows its snapshots.
pub const SNAPSHOT_DIR: &str = ".snapshot";

/// Which copy of a volume's metadata a read sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum View {
    /// The live file system.
    #[default]
    Live,
    /// The virtual directory listing the snapshots of a volume root.
    SnapshotDir,
    /// Snapshot `id` (read-only).
    Snapshot(u64),
}

impl View {
    /// Where this view reads `key` (a live metadata key).
    pub fn key(self, key: Vec<u8>) -> Vec<u8> {
        match self {
            View::Snapshot(id) => keys::snapshot_key(&key, id),
            _ => key,
        }
    }
    /// The live key of a key read through this view.
    pub fn unkey(self, key: Vec<u8>) -> Vec<u8> {
        match self {
            View::Snapshot(_) => keys::unsnapshot_key(&key).unwrap_or(key),
            _ => key,
        }
    }
    /// The chunk version this view reads (`u64::MAX`: the newest).
    pub fn version(self) -> u64 {
        match self {
            View::Snapshot(id) => id,
            _ => u64::MAX,
        }
    }
    pub fn is_live(self) -> bool {
        self == View::Live
    }
}

/// Reads a stored big-endian u64 (absent = 0).
pub fn read_u64(v: Option<Vec<u8>>) -> u64 {
    v.and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

pub fn encode_inode(i: &Inode) -> Vec<u8> {
    encode(i)
}
pub fn decode_inode(b: &[u8]) -> Result<Inode, Error> {
    decode(b, "inode")
}
pub fn encode_dirent(d: &Dirent) -> Vec<u8> {
    encode(d)
}
pub fn decode_dirent(b: &[u8]) -> Result<Dirent, Error> {
    decode(b, "dirent")
}

#[cfg(test)]
mod tests {
    use super::read_usage;

    #[test]
    fn usage_reads_the_i64_counter_and_never_below_zero() {
        assert_eq!(read_usage(None), 0);
        assert_eq!(read_usage(Some(4096i64.to_be_bytes().to_vec())), 4096);
        assert_eq!(read_usage(Some((-5i64).to_be_bytes().to_vec())), 0);
        assert_eq!(read_usage(Some(vec![1, 2, 3])), 0);
    }
}
