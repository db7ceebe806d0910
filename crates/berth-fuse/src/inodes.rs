//! FUSE inode numbers and the inode → path map.
//!
//! A FUSE inode number is `(volume_id << 48) | inode`, so it is the same
//! for the same object in every mount and needs no allocation; the mount
//! root is FUSE inode 1 whatever it really is. The native API names entries
//! by path, so the map remembers the path of every inode the kernel holds
//! (counted by lookups, released by forget) and follows renames, descendants
//! included. An inode whose entry was unlinked or replaced keeps its last
//! attributes but no path: open files stay readable through their handles.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use berth_api::v1::Entry;

/// FUSE inode number of the mount root.
pub const ROOT_INO: u64 = 1;
/// Bits of a FUSE inode number that hold the volume's inode.
pub const INODE_BITS: u32 = 48;
/// How long attributes and entries may be served from cache.
pub const TTL: Duration = Duration::from_secs(1);
/// Cached entries kept at most; past it expired ones are dropped, then all.
pub const CACHE_ENTRIES_MAX: usize = 100_000;

/// `(volume_id << 48) | inode`, or `None` when either part does not fit
/// (volume 0 does not exist; 2^16 volumes and 2^48 inodes per volume).
pub fn fuse_ino(volume_id: u64, inode: u64) -> Option<u64> {
    if volume_id == 0 || volume_id >= 1 << (64 - INODE_BITS) || inode >= 1 << INODE_BITS {
        return None;
    }
    Some((volume_id << INODE_BITS) | inode)
}

/// `parent/name` for namespace paths (`/` joins without doubling).
pub fn join(parent: &str, name: &str) -> String {
    if parent.ends_with('/') {
        format!("{parent}{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// The parent of a namespace path (`/` for `/a`), `None` for `/`.
pub fn parent_of(path: &str) -> Option<&str> {
    if path == "/" {
        return None;
    }
    match path.rfind('/') {
        Some(0) => Some("/"),
        Some(i) => Some(&path[..i]),
        None => None,
    }
}

/// True when `path` is `dir` or lies below it.
fn within(path: &str, dir: &str) -> bool {
    path == dir
        || (path.starts_with(dir)
            && (dir.ends_with('/') || path.as_bytes().get(dir.len()) == Some(&b'/')))
}

/// What the map knows of one inode the kernel holds.
#[derive(Debug, Clone)]
pub struct Node {
    /// Current path; `None` once unlinked or replaced by a rename.
    pub path: Option<String>,
    /// Kernel references (lookups not yet forgotten).
    pub lookups: u64,
    /// The latest attributes seen, for inodes that lost their path.
    pub entry: Option<Entry>,
    /// (size, mtime) the kernel was last told, to notice changes on open.
    pub told: Option<(u64, i64)>,
}

/// The inode → path map plus a short-lived cache of entries by path.
#[derive(Debug)]
pub struct Inodes {
    /// FUSE inode number the mount root has in other mounts.
    root_real: u64,
    nodes: HashMap<u64, Node>,
    by_path: HashMap<String, u64>,
    cache: HashMap<String, (Entry, Instant)>,
    /// Numbers given to snapshot entries: (volume, view, inode) → ino.
    synthetic: HashMap<(u64, u64, u64), u64>,
}

/// First number handed to snapshot entries (1 is the mount root).
const SYNTHETIC_FIRST: u64 = 2;

impl Inodes {
    /// A map holding only the mount root.
    pub fn new(root_path: &str, root_real: u64, root: Entry) -> Inodes {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT_INO,
            Node {
                path: Some(root_path.to_string()),
                lookups: 1,
                entry: Some(root),
                told: None,
            },
        );
        let mut by_path = HashMap::new();
        by_path.insert(root_path.to_string(), ROOT_INO);
        Inodes {
            root_real,
            nodes,
            by_path,
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

    /// The current path of `ino`, if it has one.
    pub fn path(&self, ino: u64) -> Option<&str> {
        self.nodes.get(&ino).and_then(|n| n.path.as_deref())
    }

    /// The inode the map holds at `path`.
    pub fn ino_at(&self, path: &str) -> Option<u64> {
        self.by_path.get(path).copied()
    }

    /// Records a lookup: the kernel now holds one more reference to `ino`,
    /// which lives at `path` with attributes `e`.
    pub fn remember(&mut self, ino: u64, path: &str, e: &Entry) {
        if let Some(other) = self.by_path.get(path).copied() {
            if other != ino {
                self.detach(other);
            }
        }
        let node = self.nodes.entry(ino).or_insert_with(|| Node {
            path: None,
            lookups: 0,
            entry: None,
            told: None,
        });
        let old = node.path.replace(path.to_string());
        node.lookups += 1;
        node.entry = Some(e.clone());
        if let Some(old) = old.filter(|o| o != path) {
            if self.by_path.get(&old) == Some(&ino) {
                self.by_path.remove(&old);
            }
        }
        self.by_path.insert(path.to_string(), ino);
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
            if let Some(p) = node.path.take() {
                if self.by_path.get(&p) == Some(&ino) {
                    self.by_path.remove(&p);
                }
            }
            self.nodes.remove(&ino);
        }
    }

    /// The entry at `path` is gone (unlinked, or replaced): its inode keeps
    /// its attributes but loses its path.
    pub fn unlinked(&mut self, path: &str) {
        if let Some(ino) = self.by_path.get(path).copied() {
            self.detach(ino);
        }
        self.invalidate(path);
    }

    fn detach(&mut self, ino: u64) {
        if ino == ROOT_INO {
            return;
        }
        if let Some(node) = self.nodes.get_mut(&ino) {
            if let Some(p) = node.path.take() {
                if self.by_path.get(&p) == Some(&ino) {
                    self.by_path.remove(&p);
                }
            }
        }
    }

    /// `from` was renamed to `to`: whatever was at `to` is replaced, and
    /// `from` and everything below it move.
    pub fn renamed(&mut self, from: &str, to: &str) {
        if from == to {
            return;
        }
        if let Some(replaced) = self.by_path.get(to).copied() {
            if Some(replaced) != self.by_path.get(from).copied() {
                self.detach(replaced);
            }
        }
        let moving: Vec<(String, u64)> = self
            .by_path
            .iter()
            .filter(|(p, _)| within(p, from))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        for (p, _) in &moving {
            self.by_path.remove(p);
        }
        for (p, ino) in moving {
            let new = format!("{to}{}", &p[from.len()..]);
            if let Some(node) = self.nodes.get_mut(&ino) {
                node.path = Some(new.clone());
            }
            self.by_path.insert(new, ino);
        }
        self.cache.retain(|p, _| !within(p, from) && !within(p, to));
    }

    /// `a` and `b` swapped places (RENAME_EXCHANGE): each takes the other's
    /// path, everything below them included. Neither lies inside the other
    /// (the server refuses that).
    pub fn exchanged(&mut self, a: &str, b: &str) {
        if within(a, b) || within(b, a) {
            return;
        }
        let moving: Vec<(String, u64)> = self
            .by_path
            .iter()
            .filter(|(p, _)| within(p, a) || within(p, b))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        for (p, _) in &moving {
            self.by_path.remove(p);
        }
        for (p, ino) in moving {
            let new = if within(&p, a) {
                format!("{b}{}", &p[a.len()..])
            } else {
                format!("{a}{}", &p[b.len()..])
            };
            if let Some(node) = self.nodes.get_mut(&ino) {
                node.path = Some(new.clone());
            }
            self.by_path.insert(new, ino);
        }
        self.cache.retain(|p, _| !within(p, a) && !within(p, b));
    }

    /// A cached entry for `path` younger than [`TTL`].
    pub fn cached(&self, path: &str) -> Option<&Entry> {
        self.cache
            .get(path)
            .filter(|(_, at)| at.elapsed() < TTL)
            .map(|(e, _)| e)
    }

    /// Caches `e` as the entry at `path` for [`TTL`].
    pub fn cache(&mut self, path: &str, e: &Entry) {
        if self.cache.len() >= CACHE_ENTRIES_MAX {
            self.cache.retain(|_, (_, at)| at.elapsed() < TTL);
            if self.cache.len() >= CACHE_ENTRIES_MAX {
                self.cache.clear();
            }
        }
        self.cache
            .insert(path.to_string(), (e.clone(), Instant::now()));
    }

    /// Forgets the cached entry of `path` (it changed).
    pub fn invalidate(&mut self, path: &str) {
        self.cache.remove(path);
    }

    /// Drops the cached entry of every path naming the file `(volume,
    /// inode)`: its link count or times changed through one of its names.
    pub fn invalidate_file(&mut self, volume_id: u64, inode: u64) {
        self.cache
            .retain(|_, (e, _)| !(e.volume_id == volume_id && e.inode == inode));
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
            ..Default::default()
        }
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
    fn paths() {
        assert_eq!(join("/", "a"), "/a");
        assert_eq!(join("/a", "b"), "/a/b");
        assert_eq!(parent_of("/a/b"), Some("/a"));
        assert_eq!(parent_of("/a"), Some("/"));
        assert_eq!(parent_of("/"), None);
        assert!(within("/a/b", "/a"));
        assert!(within("/a", "/a"));
        assert!(!within("/ab", "/a"));
        assert!(within("/x", "/"));
    }

    #[test]
    fn root_is_one() {
        let root = entry(1, 9);
        let mut m = Inodes::new("/apps", fuse_ino(1, 9).unwrap(), root.clone());
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
        assert_eq!(m.path(ROOT_INO), Some("/apps"));
    }

    #[test]
    fn rename_moves_descendants_and_replaces_target() {
        let mut m = Inodes::new("/", fuse_ino(1, 1).unwrap(), entry(1, 1));
        m.remember(10, "/d", &entry(1, 10));
        m.remember(11, "/d/f", &entry(1, 11));
        m.remember(12, "/d/sub/g", &entry(1, 12));
        m.remember(13, "/dx", &entry(1, 13));
        m.remember(14, "/e", &entry(1, 14));
        m.renamed("/d", "/e");
        assert_eq!(m.path(10), Some("/e"));
        assert_eq!(m.path(11), Some("/e/f"));
        assert_eq!(m.path(12), Some("/e/sub/g"));
        assert_eq!(
            m.path(13),
            Some("/dx"),
            "a sibling with a common prefix stays"
        );
        assert_eq!(m.path(14), None, "the replaced target lost its path");
        assert_eq!(m.ino_at("/e/f"), Some(11));
        assert_eq!(m.ino_at("/d/f"), None);
    }

    #[test]
    fn exchange_swaps_both_subtrees() {
        let mut m = Inodes::new("/", fuse_ino(1, 1).unwrap(), entry(1, 1));
        m.remember(10, "/d", &entry(1, 10));
        m.remember(11, "/d/f", &entry(1, 11));
        m.remember(12, "/x/g", &entry(1, 12));
        m.remember(13, "/dx", &entry(1, 13));
        m.cache("/d/f", &entry(1, 11));
        m.cache("/x/g", &entry(1, 12));
        m.exchanged("/d", "/x/g");
        assert_eq!(m.path(10), Some("/x/g"));
        assert_eq!(m.path(11), Some("/x/g/f"));
        assert_eq!(m.path(12), Some("/d"));
        assert_eq!(
            m.path(13),
            Some("/dx"),
            "a sibling with a common prefix stays"
        );
        assert_eq!(m.ino_at("/d"), Some(12));
        assert_eq!(m.ino_at("/x/g/f"), Some(11));
        assert_eq!(m.ino_at("/d/f"), None);
        assert!(m.cached("/d/f").is_none() && m.cached("/x/g").is_none());
        // Nested names are refused by the server; the map stays as it is.
        m.exchanged("/x", "/x/g");
        assert_eq!(m.path(10), Some("/x/g"));
    }

    #[test]
    fn forget_and_unlink() {
        let mut m = Inodes::new("/", fuse_ino(1, 1).unwrap(), entry(1, 1));
        m.remember(10, "/f", &entry(1, 10));
        m.remember(10, "/f", &entry(1, 10));
        m.forget(10, 1);
        assert_eq!(m.path(10), Some("/f"));
        m.unlinked("/f");
        assert_eq!(m.path(10), None);
        assert!(m.node(10).unwrap().entry.is_some());
        m.forget(10, 1);
        assert!(m.node(10).is_none());
        m.forget(ROOT_INO, 100);
        assert_eq!(m.path(ROOT_INO), Some("/"));
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn a_new_object_at_a_known_path_takes_it_over() {
        let mut m = Inodes::new("/", fuse_ino(1, 1).unwrap(), entry(1, 1));
        m.remember(10, "/f", &entry(1, 10));
        m.remember(20, "/f", &entry(1, 20));
        assert_eq!(m.path(10), None);
        assert_eq!(m.path(20), Some("/f"));
        // The same object seen under a new path (renamed elsewhere) moves.
        m.remember(20, "/g", &entry(1, 20));
        assert_eq!(m.ino_at("/f"), None);
        assert_eq!(m.path(20), Some("/g"));
    }

    #[test]
    fn cache_expires_and_is_bounded() {
        let mut m = Inodes::new("/", fuse_ino(1, 1).unwrap(), entry(1, 1));
        m.cache("/a", &entry(1, 5));
        assert!(m.cached("/a").is_some());
        m.invalidate("/a");
        assert!(m.cached("/a").is_none());
        for i in 0..CACHE_ENTRIES_MAX + 5 {
            m.cache(&format!("/n{i}"), &entry(1, 5));
        }
        assert!(m.cache.len() <= CACHE_ENTRIES_MAX);
    }
}
