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

/// What a namespace entry is. Stored by variant index (postcard): new kinds
/// are only ever appended, so every record an earlier build wrote still
/// decodes; a build that predates a kind refuses a record of it as
/// undecodable rather than guess.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    Dir,
    File,
    Symlink,
    Table,
    Stream,
    /// A named pipe (mkfifo). Its data is the kernel's: it never reaches
    /// Berth.
    Fifo,
    /// A UNIX domain socket's name (bind). Connections are the kernel's.
    Socket,
    /// A character device node; [`Inode::rdev`] names the device.
    CharDevice,
    /// A block device node; [`Inode::rdev`] names the device.
    BlockDevice,
}

impl EntryKind {
    pub fn name(self) -> &'static str {
        match self {
            EntryKind::Dir => "directory",
            EntryKind::File => "file",
            EntryKind::Symlink => "symlink",
            EntryKind::Table => "table",
            EntryKind::Stream => "stream",
            EntryKind::Fifo => "fifo",
            EntryKind::Socket => "socket",
            EntryKind::CharDevice => "character device",
            EntryKind::BlockDevice => "block device",
        }
    }

    /// FIFOs, sockets and device nodes: entries with attributes and no
    /// contents of Berth's (their I/O is the kernel's).
    pub fn is_special(self) -> bool {
        matches!(
            self,
            EntryKind::Fifo | EntryKind::Socket | EntryKind::CharDevice | EntryKind::BlockDevice
        )
    }

    /// Device nodes: the kinds whose [`Inode::rdev`] means something.
    pub fn is_device(self) -> bool {
        matches!(self, EntryKind::CharDevice | EntryKind::BlockDevice)
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
    // Fields are added last: a record stored before one existed ends early
    // and is read as the older layout by [`decode_inode`]; older builds
    // ignore the trailing bytes.
    /// Device nodes: the device, as Linux's `dev_t` (glibc `makedev`:
    /// major in bits 8-19 and 32-63, minor in bits 0-7 and 20-31). 0 for
    /// every other kind.
    pub rdev: u64,
    /// Directories: their own name in their parent (`parent`), so that the
    /// path of a directory addressed by inode is rebuilt from its parent
    /// chain (see `inodes`). Empty for a volume root, for every other kind,
    /// and for a directory stored before names were (its name is then
    /// found among its parent's entries).
    pub name: String,
}

/// [`Inode`] as stored before `name` existed: `rdev` was its last field.
/// postcard writes a struct as its fields in order, so the earlier layout
/// nested first reads exactly the same bytes.
#[derive(Deserialize)]
struct InodeV2 {
    v1: InodeV1,
    rdev: u64,
}

impl From<InodeV2> for Inode {
    fn from(v: InodeV2) -> Inode {
        Inode {
            rdev: v.rdev,
            ..Inode::from(v.v1)
        }
    }
}

/// [`Inode`] as stored before `rdev` existed (and before FIFOs, sockets and
/// device nodes, so its `rdev` is 0).
#[derive(Deserialize)]
struct InodeV1 {
    kind: EntryKind,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    nlink: u32,
    atime_ns: i64,
    mtime_ns: i64,
    ctime_ns: i64,
    parent: u64,
    target: Option<String>,
    acl: EntryAcl,
}

impl From<InodeV1> for Inode {
    fn from(v: InodeV1) -> Inode {
        Inode {
            kind: v.kind,
            mode: v.mode,
            uid: v.uid,
            gid: v.gid,
            size: v.size,
            nlink: v.nlink,
            atime_ns: v.atime_ns,
            mtime_ns: v.mtime_ns,
            ctime_ns: v.ctime_ns,
            parent: v.parent,
            target: v.target,
            acl: v.acl,
            rdev: 0,
            name: String::new(),
        }
    }
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
/// Decodes an inode of any layout this build has written. An earlier
/// layout must explain every byte, so a newer record is never misread as
/// an older one.
pub fn decode_inode(b: &[u8]) -> Result<Inode, Error> {
    use berth_meta::codec::decode_exact;
    decode::<Inode>(b, "inode").or_else(|e| {
        decode_exact::<InodeV2>(b, "inode")
            .map(Inode::from)
            .or_else(|_| decode_exact::<InodeV1>(b, "inode").map(Inode::from))
            .map_err(|_| e)
    })
}
pub fn encode_dirent(d: &Dirent) -> Vec<u8> {
    encode(d)
}
pub fn decode_dirent(b: &[u8]) -> Result<Dirent, Error> {
    decode(b, "dirent")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`Inode`] as the build before special files wrote it, field for
    /// field: what is on disk in every volume made before them.
    #[derive(Serialize)]
    struct StoredV1 {
        kind: EntryKind,
        mode: u32,
        uid: u32,
        gid: u32,
        size: u64,
        nlink: u32,
        atime_ns: i64,
        mtime_ns: i64,
        ctime_ns: i64,
        parent: u64,
        target: Option<String>,
        acl: EntryAcl,
    }

    fn acl() -> EntryAcl {
        EntryAcl {
            read: Some("u:alice".into()),
            write: None,
            admin: None,
        }
    }

    /// The bytes of a 0640 file of 1000:100, 12 bytes, two links, times
    /// 1, 2 and 3 ns, read ACE `u:alice`, in the layout before `rdev`:
    /// pinned, so a change to the stored layout fails here first.
    fn old_file_bytes() -> Vec<u8> {
        let mut b = vec![
            1, // record version
            1, // EntryKind::File
            0xa0, 0x03, // mode 0o640 (varint)
            0xe8, 0x07, // uid 1000
            100,  // gid
            12,   // size
            2,    // nlink
            2, 4, 6, // times 1, 2, 3 (zigzag)
            0, // parent
            0, // no symlink target
            1, 7, // read ACE: Some, 7 bytes
        ];
        b.extend_from_slice(b"u:alice");
        b.extend_from_slice(&[0, 0]); // no write, no admin ACE
        b
    }

    #[test]
    fn inodes_stored_before_rdev_still_decode() {
        let old = StoredV1 {
            kind: EntryKind::File,
            mode: 0o640,
            uid: 1000,
            gid: 100,
            size: 12,
            nlink: 2,
            atime_ns: 1,
            mtime_ns: 2,
            ctime_ns: 3,
            parent: 0,
            target: None,
            acl: acl(),
        };
        assert_eq!(encode(&old), old_file_bytes());
        let i = decode_inode(&old_file_bytes()).unwrap();
        assert_eq!(
            i,
            Inode {
                kind: EntryKind::File,
                mode: 0o640,
                uid: 1000,
                gid: 100,
                size: 12,
                nlink: 2,
                atime_ns: 1,
                mtime_ns: 2,
                ctime_ns: 3,
                parent: 0,
                target: None,
                acl: acl(),
                rdev: 0,
                name: String::new(),
            }
        );
        // Written again, it takes the current layout: two bytes more (no
        // device, no name).
        let again = encode_inode(&i);
        assert_eq!(again.len(), old_file_bytes().len() + 2);
        assert_eq!(decode_inode(&again).unwrap(), i);
        // A cut record is refused in either layout, not padded.
        let cut = &old_file_bytes()[..old_file_bytes().len() - 1];
        assert!(decode_inode(cut).is_err());
    }

    #[test]
    fn special_files_round_trip_and_older_builds_read_the_rest() {
        for (kind, rdev) in [
            (EntryKind::Fifo, 0),
            (EntryKind::Socket, 0),
            (EntryKind::CharDevice, (4 << 8) | 64),
            (
                EntryKind::BlockDevice,
                ((259 & 0xfff) << 8) | 7 | (0xfff << 32),
            ),
        ] {
            let i = Inode {
                kind,
                mode: 0o600,
                uid: 0,
                gid: 0,
                size: 0,
                nlink: 1,
                atime_ns: -1,
                mtime_ns: 0,
                ctime_ns: i64::MAX,
                parent: 0,
                target: None,
                acl: EntryAcl::default(),
                rdev,
                name: String::new(),
            };
            assert_eq!(decode_inode(&encode_inode(&i)).unwrap(), i);
        }
        // An older build decodes with `decode`, which ignores what follows
        // the fields it knows: a current record of a kind it knows reads
        // there as it was written, without the device.
        let mut file = decode_inode(&old_file_bytes()).unwrap();
        file.rdev = 0;
        let current = encode_inode(&file);
        assert_eq!(&current[..old_file_bytes().len()], &old_file_bytes()[..]);
        #[derive(Deserialize)]
        struct OlderBuild {
            kind: EntryKind,
            mode: u32,
        }
        let seen: OlderBuild = decode(&current, "inode").unwrap();
        assert_eq!((seen.kind, seen.mode), (EntryKind::File, 0o640));
    }

    /// A directory `d` below inode 7, mode 0755, of 0:0, in the layout
    /// before names (with `rdev`): what every directory made before
    /// inode-addressed calls holds.
    fn old_dir_bytes() -> Vec<u8> {
        vec![
            1, // record version
            0, // EntryKind::Dir
            0xed, 0x03, // mode 0o755
            0, 0, // uid, gid
            0, // size
            3, // nlink
            2, 4, 6, // times 1, 2, 3
            7, // parent
            0, // no symlink target
            0, 0, 0, // no ACEs
            0, // rdev
        ]
    }

    #[test]
    fn directories_stored_before_names_decode_without_one() {
        let i = decode_inode(&old_dir_bytes()).unwrap();
        assert_eq!((i.kind, i.parent, i.nlink), (EntryKind::Dir, 7, 3));
        assert_eq!(i.name, "");
        // The current layout appends the name, and reads back whole.
        let named = Inode {
            name: "d".into(),
            ..i.clone()
        };
        let current = encode_inode(&named);
        assert_eq!(&current[..old_dir_bytes().len()], &old_dir_bytes()[..]);
        assert_eq!(&current[old_dir_bytes().len()..], &[1, b'd']);
        assert_eq!(decode_inode(&current).unwrap(), named);
        // The build before names reads a named directory as it always did
        // (postcard ignores the trailing name): its inode was `InodeV2`.
        let seen: InodeV2 = decode(&current, "inode").unwrap();
        assert_eq!(
            (seen.v1.kind, seen.v1.parent, seen.v1.nlink, seen.rdev),
            (EntryKind::Dir, 7, 3, 0)
        );
        // A record cut inside the name is refused, not read as the older
        // layout.
        let mut cut = current.clone();
        cut[old_dir_bytes().len()] = 5;
        assert!(decode_inode(&cut).is_err());
    }

    #[test]
    fn entry_kinds_keep_their_stored_numbers() {
        // Variant indexes are the stored form: appended, never reordered.
        for (kind, n) in [
            (EntryKind::Dir, 0u8),
            (EntryKind::File, 1),
            (EntryKind::Symlink, 2),
            (EntryKind::Table, 3),
            (EntryKind::Stream, 4),
            (EntryKind::Fifo, 5),
            (EntryKind::Socket, 6),
            (EntryKind::CharDevice, 7),
            (EntryKind::BlockDevice, 8),
        ] {
            let d = Dirent {
                ino: 5,
                kind,
                mount: None,
            };
            let b = encode_dirent(&d);
            assert_eq!(b, [1, 5, n, 0], "{kind:?}");
            assert_eq!(decode_dirent(&b).unwrap(), d);
            assert_eq!(kind.is_special(), n >= 5, "{kind:?}");
            assert_eq!(kind.is_device(), n >= 7, "{kind:?}");
        }
        // A kind this build does not know is refused, not guessed.
        assert!(decode_dirent(&[1, 5, 9, 0]).is_err());
        let mut unknown = old_file_bytes();
        unknown[1] = 9;
        assert!(decode_inode(&unknown).is_err());
        unknown.push(0);
        assert!(decode_inode(&unknown).is_err());
    }

    #[test]
    fn usage_reads_the_i64_counter_and_never_below_zero() {
        assert_eq!(read_usage(None), 0);
        assert_eq!(read_usage(Some(4096i64.to_be_bytes().to_vec())), 4096);
        assert_eq!(read_usage(Some((-5i64).to_be_bytes().to_vec())), 0);
        assert_eq!(read_usage(Some(vec![1, 2, 3])), 0);
    }
}
