//! FUSE inode numbers and what the mount knows of each inode the kernel
//! holds.
//!
//! A FUSE inode number is `(volume_id << 48) | inode`, so it is the same
//! for the same object in every mount and needs no allocation; the mount
//! root is FUSE inode 1 whatever it really is, and snapshot entries get
//! numbers of their own (they share the live entry's volume and inode).
//!
//! The server is called by inode (`berth.v1.Inodes`): a directory by its
//! own address, any other entry with the directory and name the kernel
//! reached it by (the server checks that the name still leads to it). So
//! the map keeps, per inode, its address and the names it was looked up by
//! — `(parent FUSE inode, name)`, several for a file with hard links —
//! counted by lookups and released by forget. Renaming a directory changes
//! one name; what lies below it keeps its addresses. A name that no longer
//! leads to its inode (changed by another client) is dropped when the
//! server says so, and the next one is tried.
//!
//! Attributes are cached per inode, and entries per (directory, name), for
//! [`TTL`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use berth_api::v1::{Entry, EntryType, InodeRef};

/// FUSE inode number of the mount root.
pub const ROOT_INO: u64 = 1;
/// Bits of a FUSE inode number that hold the volume's inode.
pub const INODE_BITS: u32 = 48;
/// How long attributes and entries may be served from cache.
pub const TTL: Duration = Duration::from_secs(1);
/// Cached entries kept at most; past it expired ones are dropped, then all.
pub const CACHE_ENTRIES_MAX: usize = 100_000;
/// Names remembered per inode (hard links the kernel looked up).
pub const NAMES_PER_INODE_MAX: usize = 16;

/// `(volume_id << 48) | inode`, or `None` when either part does not fit
/// (volume 0 does not exist; 2^16 volumes and 2^48 inodes per volume).
pub fn fuse_ino(volume_id: u64, inode: u64) -> Option<u64> {
    if volume_id == 0 || volume_id >= 1 << (64 - INODE_BITS) || inode >= 1 << INODE_BITS {
        return None;
    }
    Some((volume_id << INODE_BITS) | inode)
}

/// A name the kernel reached an inode by.
pub type Name = (u64, String);

/// One server address of an inode, with the name it goes by (`None` for a
/// directory, which the server finds by itself).
#[derive(Debug, Clone)]
pub struct Address {
    pub name: Option<Name>,
    pub node: InodeRef,
}

fn is_dir(e: &Entry) -> bool {
    e.r#type == EntryType::Directory as i32
}

/// What the map knows of one inode the kernel holds.
#[derive(Debug, Clone)]
pub struct Node {
    /// Its address on the server (volume, inode, view).
    pub volume: u64,
    pub inode: u64,
    pub view: u64,
    pub dir: bool,
    /// Names it was reached by, the latest first: `(parent, name)`. A
    /// directory has one; the mount root none.
    pub names: Vec<Name>,
    /// Kernel references (lookups not yet forgotten).
    pub lookups: u64,
    /// The latest attributes seen.
    pub entry: Entry,
    /// When `entry` came from the server; `None` once it may be stale.
    pub fetched: Option<Instant>,
    /// (size, mtime) the kernel was last told, to notice changes on open.
    pub told: Option<(u64, i64)>,
}

/// The inodes the kernel holds, and recently seen entries.
#[derive(Debug)]
pub struct Inodes {
    /// FUSE inode number the mount root has in other mounts.
    root_real: u64,
    nodes: HashMap<u64, Node>,
    /// Which inode each remembered name leads to.
    by_name: HashMap<Name, u64>,
    /// Entries seen by (directory, name): lookups answered from a listing.
    cache: HashMap<Name, (Entry, Instant)>,
    /// Numbers given to snapshot entries: (volume, view, inode) → ino.
    synthetic: HashMap<(u64, u64, u64), u64>,
}

/// First number handed to snapshot entries (1 is the mount root).
const SYNTHETIC_FIRST: u64 = 2;

impl Inodes {
    /// A map holding only the mount root.
    pub fn new(root_real: u64, root: Entry) -> Inodes {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT_INO,
            Node {
                volume: root.volume_id,
                inode: root.inode,
                view: root.view,
                dir: true,
                names: Vec::new(),
                lookups: 1,
                entry: root,
                fetched: Some(Instant::now()),
                told: None,
            },
        );
        Inodes {
            root_real,
            nodes,
            by_name: HashMap::new(),
            cache: HashMap::new(),
            synthetic: HashMap::new(),
        }
    }

    /// The FUSE inode number of an entry as this mount shows it.
    pub fn ino_of(&mut self, e: &Entry) -> Option<u64> {
        if e.view != 0 {
            let next = SYNTHETIC_FIRST + self.synthetic.len() as u64;
            if next >= 1 << INODE_BITS {
                return None;
            }
            let ino = *self
                .synthetic
                .entry((e.volume_id, e.view, e.inode))
                .or_insert(next);
            return Some(if ino == self.root_real { ROOT_INO } else { ino });
        }
        let ino = fuse_ino(e.volume_id, e.inode)?;
        Some(if ino == self.root_real { ROOT_INO } else { ino })
    }

    pub fn node(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    pub fn node_mut(&mut self, ino: u64) -> Option<&mut Node> {
        self.nodes.get_mut(&ino)
    }

    /// The inode a name leads to, as far as this mount knows.
    pub fn ino_named(&self, parent: u64, name: &str) -> Option<u64> {
        self.by_name.get(&(parent, name.to_string())).copied()
    }

    /// The server addresses of `ino`: a directory's own; for another entry
    /// one per name it was reached by (the latest first), none when it has
    /// no name left. `None` when the kernel holds no such inode.
    pub fn addresses(&self, ino: u64) -> Option<Vec<Address>> {
        let n = self.nodes.get(&ino)?;
        let base = InodeRef {
            volume_id: n.volume,
            inode: n.inode,
            view: n.view,
            parent: 0,
            name: String::new(),
        };
        if n.dir {
            return Some(vec![Address {
                name: None,
                node: base,
            }]);
        }
        Some(
            n.names
                .iter()
                .filter_map(|(parent, name)| {
                    let p = self.nodes.get(parent)?;
                    Some(Address {
                        name: Some((*parent, name.clone())),
                        node: InodeRef {
                            parent: p.inode,
                            name: name.clone(),
                            ..base.clone()
                        },
                    })
                })
                .collect(),
        )
    }

    /// The address of `ino` without a name (for calls authorized by an
    /// open handle).
    pub fn bare_address(&self, ino: u64) -> Option<InodeRef> {
        self.nodes.get(&ino).map(|n| InodeRef {
            volume_id: n.volume,
            inode: n.inode,
            view: n.view,
            parent: 0,
            name: String::new(),
        })
    }

    /// Records a lookup: the kernel now holds one more reference to `ino`,
    /// reached as `name` in `parent`, with attributes `e`.
    pub fn remember(&mut self, ino: u64, parent: u64, name: &str, e: &Entry) {
        let key = (parent, name.to_string());
        if let Some(other) = self.by_name.get(&key).copied() {
            if other != ino {
                self.drop_name(other, parent, name);
            }
        }
        let node = self.nodes.entry(ino).or_insert_with(|| Node {
            volume: e.volume_id,
            inode: e.inode,
            view: e.view,
            dir: is_dir(e),
            names: Vec::new(),
            lookups: 0,
            entry: e.clone(),
            fetched: None,
            told: None,
        });
        node.lookups += 1;
        node.entry = e.clone();
        node.fetched = Some(Instant::now());
        if ino != ROOT_INO {
            let had = node.names.iter().position(|n| *n == key);
            if let Some(i) = had {
                node.names.remove(i);
            }
            // A directory has one name: the latest.
            let stale: Vec<Name> = if node.dir {
                std::mem::take(&mut node.names)
            } else if node.names.len() >= NAMES_PER_INODE_MAX {
                node.names.split_off(NAMES_PER_INODE_MAX - 1)
            } else {
                Vec::new()
            };
            node.names.insert(0, key.clone());
            for s in stale {
                if self.by_name.get(&s) == Some(&ino) {
                    self.by_name.remove(&s);
                }
            }
            self.by_name.insert(key.clone(), ino);
        }
        self.cache(parent, name, e);
    }

    /// Drops `n` kernel references; the node goes when none are left (the
    /// root stays).
    pub fn forget(&mut self, ino: u64, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        node.lookups = node.lookups.saturating_sub(n);
        if node.lookups == 0 {
            for name in std::mem::take(&mut node.names) {
                if self.by_name.get(&name) == Some(&ino) {
                    self.by_name.remove(&name);
                }
            }
            self.nodes.remove(&ino);
        }
    }

    /// `name` in `parent` no longer leads to `ino`.
    pub fn drop_name(&mut self, ino: u64, parent: u64, name: &str) {
        let key = (parent, name.to_string());
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.names.retain(|n| *n != key);
        }
        if self.by_name.get(&key) == Some(&ino) {
            self.by_name.remove(&key);
        }
    }

    /// `name` in `parent` is gone (unlinked, or replaced): whatever it led
    /// to keeps its attributes and other names. Returns that inode, if
    /// known.
    pub fn unlinked(&mut self, parent: u64, name: &str) -> Option<u64> {
        let ino = self.ino_named(parent, name);
        if let Some(ino) = ino {
            self.drop_name(ino, parent, name);
            self.stale(ino);
        }
        self.invalidate(parent, name);
        self.stale(parent);
        ino
    }

    /// `name` in `parent` was renamed to `new_name` in `new_parent`: what
    /// was there is replaced. Everything below a renamed directory keeps
    /// its names (they hang off the directory's inode).
    pub fn renamed(&mut self, (parent, name): (u64, &str), (new_parent, new_name): (u64, &str)) {
        if (parent, name) == (new_parent, new_name) {
            return;
        }
        let moving = self.ino_named(parent, name);
        if let Some(replaced) = self.ino_named(new_parent, new_name) {
            if Some(replaced) != moving {
                self.drop_name(replaced, new_parent, new_name);
                self.stale(replaced);
            }
        }
        if let Some(ino) = moving {
            self.drop_name(ino, parent, name);
            self.named_now(ino, (new_parent, new_name));
        }
        for (p, n) in [(parent, name), (new_parent, new_name)] {
            self.invalidate(p, n);
            self.stale(p);
        }
    }

    /// `ino` moved to the name `to` (its first; a directory's only one).
    fn named_now(&mut self, ino: u64, to: (u64, &str)) {
        let key = (to.0, to.1.to_string());
        if let Some(node) = self.nodes.get_mut(&ino) {
            if node.dir {
                node.names.clear();
            }
            node.names.insert(0, key.clone());
            node.names.truncate(NAMES_PER_INODE_MAX);
        }
        self.by_name.insert(key, ino);
        self.stale(ino);
    }

    /// `a` and `b` swapped places (RENAME_EXCHANGE).
    pub fn exchanged(&mut self, a: (u64, &str), b: (u64, &str)) {
        let ia = self.ino_named(a.0, a.1);
        let ib = self.ino_named(b.0, b.1);
        for (ino, from) in [(ia, a), (ib, b)] {
            if let Some(ino) = ino {
                self.drop_name(ino, from.0, from.1);
            }
        }
        for (ino, to) in [(ia, b), (ib, a)] {
            if let Some(ino) = ino {
                self.named_now(ino, to);
            }
        }
        for (p, n) in [a, b] {
            self.invalidate(p, n);
            self.stale(p);
        }
    }

    /// The attributes of `ino` if fetched less than [`TTL`] ago.
    pub fn fresh(&self, ino: u64) -> Option<&Entry> {
        self.nodes
            .get(&ino)
            .filter(|n| n.fetched.is_some_and(|at| at.elapsed() < TTL))
            .map(|n| &n.entry)
    }

    /// New attributes of `ino` from the server.
    pub fn fetched(&mut self, ino: u64, e: &Entry) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.entry = e.clone();
            n.fetched = Some(Instant::now());
        }
    }

    /// The attributes of `ino` may have changed.
    pub fn stale(&mut self, ino: u64) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.fetched = None;
        }
    }

    /// A cached entry for `name` in `parent` younger than [`TTL`].
    pub fn cached(&self, parent: u64, name: &str) -> Option<&Entry> {
        self.cache
            .get(&(parent, name.to_string()))
            .filter(|(_, at)| at.elapsed() < TTL)
            .map(|(e, _)| e)
    }

    /// Caches `e` as the entry `name` in `parent` for [`TTL`].
    pub fn cache(&mut self, parent: u64, name: &str, e: &Entry) {
        if self.cache.len() >= CACHE_ENTRIES_MAX {
            self.cache.retain(|_, (_, at)| at.elapsed() < TTL);
            if self.cache.len() >= CACHE_ENTRIES_MAX {
                self.cache.clear();
            }
        }
        self.cache
            .insert((parent, name.to_string()), (e.clone(), Instant::now()));
    }

    /// Forgets the cached entry `name` in `parent` (it changed).
    pub fn invalidate(&mut self, parent: u64, name: &str) {
        self.cache.remove(&(parent, name.to_string()));
    }

    /// Drops every cached view of the object `(volume, inode)`: its link
    /// count or times changed through one of its names.
    pub fn invalidate_file(&mut self, volume_id: u64, inode: u64) {
        self.cache
            .retain(|_, (e, _)| !(e.volume_id == volume_id && e.inode == inode));
        for n in self.nodes.values_mut() {
            if n.volume == volume_id && n.inode == inode {
                n.fetched = None;
            }
        }
    }

    /// Number of inodes held (root included).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.nodes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(vol: u64, ino: u64) -> Entry {
        Entry {
            volume_id: vol,
            inode: ino,
            r#type: EntryType::File as i32,
            ..Default::default()
        }
    }

    fn dir(vol: u64, ino: u64) -> Entry {
        Entry {
            r#type: EntryType::Directory as i32,
            ..entry(vol, ino)
        }
    }

    fn names(m: &Inodes, ino: u64) -> Vec<(u64, String)> {
        m.node(ino).unwrap().names.clone()
    }

    #[test]
    fn ino_encoding() {
        assert_eq!(fuse_ino(1, 1), Some((1 << 48) | 1));
        assert_eq!(fuse_ino(3, 77), Some((3 << 48) | 77));
        assert_eq!(fuse_ino(0, 5), None);
        assert_eq!(fuse_ino(1 << 16, 5), None);
        assert_eq!(fuse_ino(1, 1 << 48), None);
        assert_eq!(fuse_ino((1 << 16) - 1, (1 << 48) - 1), Some(u64::MAX));
    }

    #[test]
    fn root_is_one() {
        let root = dir(1, 9);
        let mut m = Inodes::new(fuse_ino(1, 9).unwrap(), root.clone());
        assert_eq!(m.ino_of(&root), Some(ROOT_INO));
        assert_eq!(m.ino_of(&entry(1, 10)), fuse_ino(1, 10));
        // The same file in a snapshot is another inode, stable per view.
        let snap = |view: u64| Entry {
            view,
            ..entry(1, 10)
        };
        let a = m.ino_of(&snap(4)).unwrap();
        let b = m.ino_of(&snap(5)).unwrap();
        assert!(a != b && a != fuse_ino(1, 10).unwrap() && a > ROOT_INO);
        assert_eq!(a >> INODE_BITS, 0);
        assert_eq!(m.ino_of(&snap(4)), Some(a));
        let addr = m.addresses(ROOT_INO).unwrap();
        assert_eq!((addr[0].node.volume_id, addr[0].node.inode), (1, 9));
    }

    #[test]
    fn addresses_name_files_by_their_directory() {
        let mut m = Inodes::new(fuse_ino(1, 1).unwrap(), dir(1, 1));
        m.remember(10, ROOT_INO, "d", &dir(1, 10));
        m.remember(11, 10, "f", &entry(1, 11));
        m.remember(11, ROOT_INO, "hard", &entry(1, 11));
        let d = m.addresses(10).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].node.inode, d[0].node.name.as_str()), (10, ""));
        assert!(d[0].name.is_none());
        let f = m.addresses(11).unwrap();
        let got: Vec<(u64, &str)> = f
            .iter()
            .map(|a| (a.node.parent, a.node.name.as_str()))
            .collect();
        assert_eq!(got, [(1, "hard"), (10, "f")]);
        assert_eq!(f[1].name, Some((10, "f".to_string())));
        assert!(m.addresses(99).is_none());
        // A name that no longer leads there is dropped; the other stays.
        m.drop_name(11, ROOT_INO, "hard");
        assert_eq!(m.addresses(11).unwrap().len(), 1);
        assert_eq!(m.ino_named(10, "f"), Some(11));
        assert_eq!(m.ino_named(ROOT_INO, "hard"), None);
    }

    #[test]
    fn renaming_a_directory_leaves_what_is_below_it_alone() {
        let mut m = Inodes::new(fuse_ino(1, 1).unwrap(), dir(1, 1));
        m.remember(10, ROOT_INO, "d", &dir(1, 10));
        m.remember(11, 10, "f", &entry(1, 11));
        m.remember(12, ROOT_INO, "e", &entry(1, 12));
        m.renamed((ROOT_INO, "d"), (ROOT_INO, "e"));
        assert_eq!(names(&m, 10), [(ROOT_INO, "e".to_string())]);
        assert_eq!(names(&m, 11), [(10, "f".to_string())]);
        assert!(names(&m, 12).is_empty(), "the replaced entry lost its name");
        assert_eq!(m.ino_named(ROOT_INO, "e"), Some(10));
        assert_eq!(m.ino_named(ROOT_INO, "d"), None);
        assert!(m.fresh(12).is_none());
    }

    #[test]
    fn exchange_swaps_names() {
        let mut m = Inodes::new(fuse_ino(1, 1).unwrap(), dir(1, 1));
        m.remember(10, ROOT_INO, "d", &dir(1, 10));
        m.remember(11, 10, "f", &entry(1, 11));
        m.remember(12, ROOT_INO, "g", &entry(1, 12));
        m.cache(10, "f", &entry(1, 11));
        m.exchanged((10, "f"), (ROOT_INO, "g"));
        assert_eq!(names(&m, 11), [(ROOT_INO, "g".to_string())]);
        assert_eq!(names(&m, 12), [(10, "f".to_string())]);
        assert!(m.cached(10, "f").is_none());
        assert_eq!(m.ino_named(10, "f"), Some(12));
    }

    #[test]
    fn forget_and_unlink() {
        let mut m = Inodes::new(fuse_ino(1, 1).unwrap(), dir(1, 1));
        m.remember(10, ROOT_INO, "f", &entry(1, 10));
        m.remember(10, ROOT_INO, "f", &entry(1, 10));
        m.forget(10, 1);
        assert_eq!(m.ino_named(ROOT_INO, "f"), Some(10));
        assert_eq!(m.unlinked(ROOT_INO, "f"), Some(10));
        assert!(names(&m, 10).is_empty());
        assert!(m.addresses(10).unwrap().is_empty());
        assert!(m.bare_address(10).is_some());
        m.forget(10, 1);
        assert!(m.node(10).is_none());
        m.forget(ROOT_INO, 100);
        assert!(m.node(ROOT_INO).is_some());
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn a_new_object_at_a_known_name_takes_it_over() {
        let mut m = Inodes::new(fuse_ino(1, 1).unwrap(), dir(1, 1));
        m.remember(10, ROOT_INO, "f", &entry(1, 10));
        m.remember(20, ROOT_INO, "f", &entry(1, 20));
        assert!(names(&m, 10).is_empty());
        assert_eq!(m.ino_named(ROOT_INO, "f"), Some(20));
        // A directory seen under a new name (renamed elsewhere) moves.
        m.remember(30, ROOT_INO, "d", &dir(1, 30));
        m.remember(30, ROOT_INO, "d2", &dir(1, 30));
        assert_eq!(names(&m, 30), [(ROOT_INO, "d2".to_string())]);
        assert_eq!(m.ino_named(ROOT_INO, "d"), None);
    }

    #[test]
    fn names_per_inode_are_bounded() {
        let mut m = Inodes::new(fuse_ino(1, 1).unwrap(), dir(1, 1));
        for i in 0..NAMES_PER_INODE_MAX + 4 {
            m.remember(10, ROOT_INO, &format!("l{i}"), &entry(1, 10));
        }
        assert_eq!(names(&m, 10).len(), NAMES_PER_INODE_MAX);
        assert_eq!(m.ino_named(ROOT_INO, "l0"), None);
        let last = format!("l{}", NAMES_PER_INODE_MAX + 3);
        assert_eq!(m.ino_named(ROOT_INO, &last), Some(10));
    }

    #[test]
    fn attributes_and_entries_expire() {
        let mut m = Inodes::new(fuse_ino(1, 1).unwrap(), dir(1, 1));
        m.remember(10, ROOT_INO, "a", &entry(1, 10));
        assert!(m.fresh(10).is_some());
        assert!(m.cached(ROOT_INO, "a").is_some());
        m.invalidate_file(1, 10);
        assert!(m.fresh(10).is_none());
        assert!(m.cached(ROOT_INO, "a").is_none());
        for i in 0..CACHE_ENTRIES_MAX + 5 {
            m.cache(ROOT_INO, &format!("n{i}"), &entry(1, 5));
        }
        assert!(m.cache.len() <= CACHE_ENTRIES_MAX);
    }
}
