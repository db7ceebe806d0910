//! The cluster key encoding: the one place that decides how a key is laid out in bytes.
//!
//! Every key of the cluster key space (the keys that shards own and that services read and
//! write) is built here and nowhere else. The layout is order-preserving: comparing two
//! encoded keys byte by byte gives the same answer as comparing the tuples they encode,
//! so a contiguous tuple range is a contiguous byte range (shards own byte ranges).
//!
//! ```text
//! key       = volume_id · kind · object_id · component*
//! volume_id = u64, 8 bytes big-endian          (volume 0 is the meta volume: the cluster map)
//! kind      = u8, one of `Kind`                 (what the object is: inode, chunk, table doc ...)
//! object_id = u64, 8 bytes big-endian
//! component = 0x02 · u64 (8 bytes big-endian)                        an unsigned integer
//!           | 0x03 · escape(bytes) · 0x00 0x01                       a byte string
//!           | 0x04 · escape(utf8)  · 0x00 0x01                       a text string
//! escape    : every 0x00 byte becomes 0x00 0xFF; all other bytes are copied
//! ```
//!
//! Why it preserves order: integers are fixed width and big-endian; an escaped string never
//! contains `0x00 0x01`, and the terminator `0x00 0x01` sorts before both an escaped zero
//! (`0x00 0xFF`) and every non-zero byte, so a string sorts before its extensions; every
//! component is prefix-free, so tuples compare component by component; a tuple that is a
//! prefix of another encodes to a byte prefix of it and sorts first. Components of different
//! types at the same position sort by tag (integer < bytes < text).
//!
//! Tags 0x00, 0x01 and 0x05..=0xFF are reserved for later component types; a reader rejects
//! them. [`Kind`] leaves gaps so related kinds can be added next to each other.
//!
//! *Architecture invariant*: nothing outside this module computes key bytes by hand; range
//! scans use [`volume_range`], [`kind_range`], [`object_range`] or [`prefix_end`].

use std::fmt;

/// The meta volume: holds the cluster map (nodes, volumes, shards, principals).
pub const META_VOLUME: u64 = 0;

/// Bytes of the fixed header: volume (8) + kind (1) + object (8).
pub const HEADER_LEN: usize = 17;

const TAG_U64: u8 = 0x02;
const TAG_BYTES: u8 = 0x03;
const TAG_STR: u8 = 0x04;
const ESCAPE: u8 = 0xFF;
const TERMINATOR: u8 = 0x01;

/// What kind of object a key belongs to. The discriminant is the byte stored in the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Cluster map records (in the meta volume).
    Meta = 0x01,
    /// File system inode attributes.
    Inode = 0x10,
    /// Directory entries.
    Dirent = 0x11,
    /// Extended attributes.
    Xattr = 0x12,
    /// File attributes written with the data (size, write time, volume usage).
    FileAttr = 0x13,
    /// Snapshot copies of the kinds above (see [`snapshot_key`]).
    Snapshot = 0x14,
    /// File data chunks.
    Chunk = 0x20,
    /// Table documents.
    TableDoc = 0x30,
    /// Table secondary index entries.
    TableIndex = 0x31,
    /// A volume's table change log (change streams, CDC).
    TableChange = 0x32,
    /// Stream partition logs.
    StreamLog = 0x40,
    /// Stream offsets, groups and other per-stream state.
    StreamState = 0x41,
}

impl Kind {
    /// Every kind, in byte order.
    pub const ALL: [Kind; 12] = [
        Kind::Meta,
        Kind::Inode,
        Kind::Dirent,
        Kind::Xattr,
        Kind::FileAttr,
        Kind::Snapshot,
        Kind::Chunk,
        Kind::TableDoc,
        Kind::TableIndex,
        Kind::TableChange,
        Kind::StreamLog,
        Kind::StreamState,
    ];

    /// The byte stored in the key.
    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

impl TryFrom<u8> for Kind {
    type Error = KeyError;

    fn try_from(b: u8) -> Result<Kind, KeyError> {
        Kind::ALL
            .iter()
            .copied()
            .find(|k| k.as_u8() == b)
            .ok_or(KeyError::UnknownKind(b))
    }
}

/// Why a byte string is not a well-formed cluster key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key ended in the middle of a field.
    #[error("key truncated: needed {needed} more bytes at offset {offset}")]
    Truncated {
        /// Byte offset where the field starts.
        offset: usize,
        /// Bytes missing.
        needed: usize,
    },
    /// The kind byte is not a known [`Kind`].
    #[error("unknown kind byte 0x{0:02x}")]
    UnknownKind(u8),
    /// A component starts with a tag this version does not know.
    #[error("unknown component tag 0x{tag:02x} at offset {offset}")]
    UnknownTag {
        /// The tag byte.
        tag: u8,
        /// Its offset.
        offset: usize,
    },
    /// The next component has another type than the one asked for.
    #[error("expected {expected} component at offset {offset}, found tag 0x{found:02x}")]
    WrongType {
        /// Type asked for.
        expected: &'static str,
        /// Tag found.
        found: u8,
        /// Offset of the tag.
        offset: usize,
    },
    /// A 0x00 byte inside a string is followed by neither 0xFF nor 0x01.
    #[error("bad escape 0x00 0x{0:02x} in string component")]
    BadEscape(u8),
    /// A text component is not UTF-8.
    #[error("text component is not valid UTF-8")]
    NotUtf8,
    /// No more components, but one was asked for.
    #[error("no more components")]
    End,
}

/// One decoded sub-key component. The derived order (variant, then value) is the byte order
/// of the encoding.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    /// An unsigned integer.
    U64(u64),
    /// A byte string.
    Bytes(Vec<u8>),
    /// A text string.
    Str(String),
}

/// Builder for one cluster key: `Key::new(volume, kind, object).u64(x).bytes(b).build()`.
#[derive(Clone, Debug)]
pub struct Key {
    buf: Vec<u8>,
}

impl Key {
    /// Starts a key with its fixed header.
    pub fn new(volume: u64, kind: Kind, object: u64) -> Key {
        let mut buf = Vec::with_capacity(32);
        buf.extend_from_slice(&volume.to_be_bytes());
        buf.push(kind.as_u8());
        buf.extend_from_slice(&object.to_be_bytes());
        Key { buf }
    }

    /// Appends an unsigned integer component.
    pub fn u64(mut self, x: u64) -> Key {
        self.buf.push(TAG_U64);
        self.buf.extend_from_slice(&x.to_be_bytes());
        self
    }

    /// Appends a byte string component.
    pub fn bytes(mut self, b: &[u8]) -> Key {
        self.buf.push(TAG_BYTES);
        escape_into(&mut self.buf, b);
        self
    }

    /// Appends the start of a byte string component, without its
    /// terminator: the result is a prefix of every key whose component here
    /// is a byte string starting with `b` (for range scans over an encoded
    /// prefix, e.g. the leading fields of a compound index key).
    pub fn bytes_prefix(mut self, b: &[u8]) -> Key {
        self.buf.push(TAG_BYTES);
        escape_into(&mut self.buf, b);
        self.buf.truncate(self.buf.len() - 2);
        self
    }

    /// Appends a text component.
    pub fn str(mut self, s: &str) -> Key {
        self.buf.push(TAG_STR);
        escape_into(&mut self.buf, s.as_bytes());
        self
    }

    /// Appends a decoded component.
    pub fn component(self, c: &Component) -> Key {
        match c {
            Component::U64(x) => self.u64(*x),
            Component::Bytes(b) => self.bytes(b),
            Component::Str(s) => self.str(s),
        }
    }

    /// The encoded key.
    pub fn build(self) -> Vec<u8> {
        self.buf
    }
}

fn escape_into(buf: &mut Vec<u8>, b: &[u8]) {
    buf.reserve(b.len() + 2);
    for &byte in b {
        buf.push(byte);
        if byte == 0x00 {
            buf.push(ESCAPE);
        }
    }
    buf.push(0x00);
    buf.push(TERMINATOR);
}

/// A fully decoded key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedKey {
    /// Volume id.
    pub volume: u64,
    /// Object kind.
    pub kind: Kind,
    /// Object id.
    pub object: u64,
    /// Sub-key components in order.
    pub components: Vec<Component>,
}

/// Decodes a whole key; errors on malformed input, never panics.
pub fn decode(key: &[u8]) -> Result<DecodedKey, KeyError> {
    let mut r = KeyReader::new(key)?;
    let mut components = Vec::new();
    while let Some(c) = r.next_component()? {
        components.push(c);
    }
    Ok(DecodedKey {
        volume: r.volume(),
        kind: r.kind(),
        object: r.object(),
        components,
    })
}

/// Reads a key back: the header eagerly, components one at a time.
#[derive(Clone)]
pub struct KeyReader<'a> {
    key: &'a [u8],
    pos: usize,
    volume: u64,
    kind: Kind,
    object: u64,
}

impl fmt::Debug for KeyReader<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyReader")
            .field("volume", &self.volume)
            .field("kind", &self.kind)
            .field("object", &self.object)
            .field("pos", &self.pos)
            .finish()
    }
}

impl<'a> KeyReader<'a> {
    /// Parses the fixed header.
    pub fn new(key: &'a [u8]) -> Result<KeyReader<'a>, KeyError> {
        let volume = read_u64(key, 0)?;
        let kind_byte = *key.get(8).ok_or(KeyError::Truncated {
            offset: 8,
            needed: 1,
        })?;
        let kind = Kind::try_from(kind_byte)?;
        let object = read_u64(key, 9)?;
        Ok(KeyReader {
            key,
            pos: HEADER_LEN,
            volume,
            kind,
            object,
        })
    }

    /// Volume id from the header.
    pub fn volume(&self) -> u64 {
        self.volume
    }

    /// Kind from the header.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Object id from the header.
    pub fn object(&self) -> u64 {
        self.object
    }

    /// True when every component has been read.
    pub fn is_at_end(&self) -> bool {
        self.pos >= self.key.len()
    }

    /// The undecoded tail (raw encoded components).
    pub fn remaining(&self) -> &'a [u8] {
        self.key.get(self.pos..).unwrap_or(&[])
    }

    /// Reads the next component of any type; `None` at the end.
    pub fn next_component(&mut self) -> Result<Option<Component>, KeyError> {
        let Some(&tag) = self.key.get(self.pos) else {
            return Ok(None);
        };
        let c = match tag {
            TAG_U64 => Component::U64(self.next_u64()?),
            TAG_BYTES => Component::Bytes(self.next_bytes()?),
            TAG_STR => Component::Str(self.next_str()?),
            other => {
                return Err(KeyError::UnknownTag {
                    tag: other,
                    offset: self.pos,
                })
            }
        };
        Ok(Some(c))
    }

    /// Reads an integer component.
    pub fn next_u64(&mut self) -> Result<u64, KeyError> {
        self.expect_tag(TAG_U64, "u64")?;
        let x = read_u64(self.key, self.pos + 1)?;
        self.pos += 9;
        Ok(x)
    }

    /// Reads a byte string component.
    pub fn next_bytes(&mut self) -> Result<Vec<u8>, KeyError> {
        self.expect_tag(TAG_BYTES, "bytes")?;
        self.read_escaped()
    }

    /// Reads a text component.
    pub fn next_str(&mut self) -> Result<String, KeyError> {
        self.expect_tag(TAG_STR, "str")?;
        let b = self.read_escaped()?;
        String::from_utf8(b).map_err(|_| KeyError::NotUtf8)
    }

    fn expect_tag(&self, tag: u8, expected: &'static str) -> Result<(), KeyError> {
        match self.key.get(self.pos) {
            None => Err(KeyError::End),
            Some(&t) if t == tag => Ok(()),
            Some(&t) => Err(KeyError::WrongType {
                expected,
                found: t,
                offset: self.pos,
            }),
        }
    }

    /// Reads an escaped string starting after the tag at `self.pos`.
    fn read_escaped(&mut self) -> Result<Vec<u8>, KeyError> {
        let start = self.pos + 1;
        let mut i = start;
        let mut out = Vec::new();
        loop {
            let Some(&b) = self.key.get(i) else {
                return Err(KeyError::Truncated {
                    offset: i,
                    needed: 2,
                });
            };
            if b != 0x00 {
                out.push(b);
                i += 1;
                continue;
            }
            let Some(&next) = self.key.get(i + 1) else {
                return Err(KeyError::Truncated {
                    offset: i + 1,
                    needed: 1,
                });
            };
            match next {
                ESCAPE => {
                    out.push(0x00);
                    i += 2;
                }
                TERMINATOR => {
                    self.pos = i + 2;
                    return Ok(out);
                }
                other => return Err(KeyError::BadEscape(other)),
            }
        }
    }
}

fn read_u64(key: &[u8], offset: usize) -> Result<u64, KeyError> {
    let end = offset + 8;
    let bytes = key.get(offset..end).ok_or(KeyError::Truncated {
        offset,
        needed: end.saturating_sub(key.len()),
    })?;
    let mut a = [0u8; 8];
    a.copy_from_slice(bytes);
    Ok(u64::from_be_bytes(a))
}

/// The smallest byte string greater than every string that starts with `prefix`, or an empty
/// vector (meaning "unbounded", the convention of every range end in Berth) when no such string
/// exists (the prefix is empty or all 0xFF).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last != 0xFF {
            end.push(last + 1);
            return end;
        }
    }
    Vec::new()
}

fn prefix_range(prefix: Vec<u8>) -> (Vec<u8>, Vec<u8>) {
    let end = prefix_end(&prefix);
    (prefix, end)
}

/// The key under which snapshot `snapshot` keeps its copy of `key`: the header
/// `(volume, Snapshot, snapshot)` followed by the raw bytes of `key` from its kind byte on.
/// The mapping preserves order among keys (and range bounds) of one volume, so a range of
/// live keys maps to a range of snapshot keys. `key` must hold at least the volume id.
pub fn snapshot_key(key: &[u8], snapshot: u64) -> Vec<u8> {
    let volume = read_u64(key, 0).unwrap_or(0);
    let mut out = Key::new(volume, Kind::Snapshot, snapshot).build();
    out.extend_from_slice(key.get(8..).unwrap_or(&[]));
    out
}

/// The live key a [`snapshot_key`] copies; `None` when `skey` is not a snapshot key.
pub fn unsnapshot_key(skey: &[u8]) -> Option<Vec<u8>> {
    if skey.len() <= HEADER_LEN || skey[8] != Kind::Snapshot.as_u8() {
        return None;
    }
    let mut out = skey[..8].to_vec();
    out.extend_from_slice(&skey[HEADER_LEN..]);
    Some(out)
}

/// A versioned value is stored as the keys `base · u64(version)`: [`versioned`] builds
/// one, [`split_version`] takes one apart.
pub fn versioned(base: &[u8], version: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(base.len() + 9);
    out.extend_from_slice(base);
    out.push(TAG_U64);
    out.extend_from_slice(&version.to_be_bytes());
    out
}

/// The key of a stamped write (`berth_raft`'s `Op::PutStamped`): `prefix ·
/// u64(index) · u64(n)`, ordered by the Raft index the write applied at,
/// then by its place in the transaction. [`split_stamp`] reads it back.
pub fn stamped(prefix: &[u8], index: u64, n: u64) -> Vec<u8> {
    versioned(&versioned(prefix, index), n)
}

/// The index and place of a key built by [`stamped`].
pub fn split_stamp(key: &[u8]) -> Option<(u64, u64)> {
    let (rest, n) = split_version(key)?;
    let (_, index) = split_version(rest)?;
    Some((index, n))
}

/// The base and version of a key built by [`versioned`]; `None` when the key does not end
/// in a u64 component after a full header.
pub fn split_version(key: &[u8]) -> Option<(&[u8], u64)> {
    let at = key.len().checked_sub(9).filter(|at| *at >= HEADER_LEN)?;
    if key[at] != TAG_U64 {
        return None;
    }
    Some((&key[..at], read_u64(key, at + 1).ok()?))
}

/// `[start, end)` of every version of the versioned value at `base`.
pub fn versions_range(base: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut start = base.to_vec();
    start.push(TAG_U64);
    let mut end = base.to_vec();
    end.push(TAG_U64 + 1);
    (start, end)
}

/// `[start, end)` of every key of a volume (end empty = unbounded).
pub fn volume_range(volume: u64) -> (Vec<u8>, Vec<u8>) {
    prefix_range(volume.to_be_bytes().to_vec())
}

/// `[start, end)` of every key of one kind in a volume.
pub fn kind_range(volume: u64, kind: Kind) -> (Vec<u8>, Vec<u8>) {
    let mut p = volume.to_be_bytes().to_vec();
    p.push(kind.as_u8());
    prefix_range(p)
}

/// `[start, end)` of every key of one object (header only, any components).
pub fn object_range(volume: u64, kind: Kind, object: u64) -> (Vec<u8>, Vec<u8>) {
    prefix_range(Key::new(volume, kind, object).build())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_bytes_prefix_prefixes_the_components_that_start_with_it() {
        let p = Key::new(1, Kind::TableIndex, 2)
            .bytes_prefix(b"ab\x00")
            .build();
        for b in [&b"ab\x00"[..], b"ab\x00c", b"ab\x00\x00"] {
            assert!(Key::new(1, Kind::TableIndex, 2)
                .bytes(b)
                .build()
                .starts_with(&p));
        }
        for b in [&b"ab"[..], b"ab\x01", b"ac"] {
            assert!(!Key::new(1, Kind::TableIndex, 2)
                .bytes(b)
                .build()
                .starts_with(&p));
        }
    }

    use super::*;

    #[test]
    fn snapshot_keys_keep_order_and_map_back() {
        let a = Key::new(7, Kind::Dirent, 5).str("a").build();
        let b = Key::new(7, Kind::Dirent, 5).str("b").build();
        let (ks, ke) = kind_range(7, Kind::Dirent);
        let m = |k: &[u8]| snapshot_key(k, 3);
        assert!(m(&ks) < m(&a) && m(&a) < m(&b) && m(&b) < m(&ke));
        assert_eq!(unsnapshot_key(&m(&a)).unwrap(), a);
        assert!(m(&a) > Key::new(7, Kind::Snapshot, 2).build());
        assert!(m(&a) < Key::new(7, Kind::Snapshot, 4).build());
        assert_eq!(unsnapshot_key(&a), None);
    }

    #[test]
    fn versions_split_and_sort() {
        let base = Key::new(1, Kind::Chunk, 9).u64(4).build();
        let v2 = versioned(&base, 2);
        let v10 = versioned(&base, 10);
        assert!(v2 < v10);
        assert_eq!(split_version(&v10), Some((base.as_slice(), 10)));
        let (s, e) = versions_range(&base);
        assert!(s <= v2 && v10 < e);
        let next = Key::new(1, Kind::Chunk, 9).u64(5).build();
        assert!(e <= versioned(&next, 0));
        assert_eq!(split_version(&Key::new(1, Kind::Chunk, 9).build()), None);
        assert_eq!(
            split_version(&Key::new(1, Kind::Chunk, 9).str("x").build()),
            None
        );
    }

    #[test]
    fn layout_is_as_documented() {
        let k = Key::new(1, Kind::Inode, 2)
            .u64(3)
            .bytes(b"a\0b")
            .str("z")
            .build();
        let mut want = vec![0, 0, 0, 0, 0, 0, 0, 1, 0x10, 0, 0, 0, 0, 0, 0, 0, 2];
        want.extend_from_slice(&[0x02, 0, 0, 0, 0, 0, 0, 0, 3]);
        want.extend_from_slice(&[0x03, b'a', 0x00, 0xFF, b'b', 0x00, 0x01]);
        want.extend_from_slice(&[0x04, b'z', 0x00, 0x01]);
        assert_eq!(k, want);
    }

    #[test]
    fn malformed_keys_are_errors() {
        assert!(matches!(decode(&[]), Err(KeyError::Truncated { .. })));
        let mut k = Key::new(1, Kind::Inode, 2).build();
        k[8] = 0x99;
        assert_eq!(decode(&k), Err(KeyError::UnknownKind(0x99)));
        let mut k = Key::new(1, Kind::Inode, 2).bytes(b"ab").build();
        k.truncate(k.len() - 1);
        assert!(decode(&k).is_err());
        let mut k = Key::new(1, Kind::Inode, 2).build();
        k.push(0x77);
        assert!(matches!(decode(&k), Err(KeyError::UnknownTag { .. })));
        let mut k = Key::new(1, Kind::Inode, 2).bytes(b"a").build();
        let n = k.len();
        k[n - 1] = 0x05;
        assert_eq!(decode(&k), Err(KeyError::BadEscape(0x05)));
        let k = Key::new(1, Kind::Inode, 2).u64(5).build();
        let mut r = KeyReader::new(&k).unwrap();
        assert!(matches!(r.next_bytes(), Err(KeyError::WrongType { .. })));
        assert_eq!(r.next_u64(), Ok(5));
        assert_eq!(r.next_u64(), Err(KeyError::End));
    }

    #[test]
    fn prefix_end_edges() {
        assert_eq!(prefix_end(b""), Vec::<u8>::new());
        assert_eq!(prefix_end(&[0xFF, 0xFF]), Vec::<u8>::new());
        assert_eq!(prefix_end(&[0x01, 0xFF]), vec![0x02]);
        assert_eq!(prefix_end(&[0x01, 0x02]), vec![0x01, 0x03]);
        assert_eq!(volume_range(u64::MAX).1, Vec::<u8>::new());
    }
}
