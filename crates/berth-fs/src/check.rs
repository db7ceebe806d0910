//! Consistency check of a volume's namespace (the fsck of Berth): every
//! directory entry points at an inode, every inode is reachable, link counts
//! and parent pointers agree with the entries.
//!
//! The check reads the whole namespace range of the volume; a concurrent
//! change can look like a problem, so a run that finds problems is repeated
//! and only problems seen every time are reported.

use std::collections::{BTreeMap, BTreeSet};

use berth_meta::map::normalize_path;
use berth_meta::meta::require_admin;
use berth_meta::{Error, ROOT_INODE};
use berth_security::principal::Principal;
use berth_store::keys::{self, Kind};

use crate::namespace::Namespace;
use crate::records::*;

/// Rounds a check is repeated to tell real problems from concurrent changes.
const CHECK_ROUNDS_MAX: usize = 3;
/// Largest namespace the check reads (keys).
const CHECK_KEYS_MAX: usize = 10_000_000;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    pub path: String,
    pub inodes: u64,
    pub entries: u64,
    pub problems: Vec<String>,
}

impl Namespace {
    /// Checks the namespace of the volume mounted at `path`. Administrators only.
    pub async fn volume_check(&self, p: &Principal, path: &str) -> Result<CheckReport, Error> {
        require_admin(p)?;
        let path = normalize_path(path)?;
        let vol = self
            .meta()
            .map()
            .volume_at(&path)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("volume at {path}")))?;
        let mut persistent: Option<BTreeSet<String>> = None;
        let mut report = CheckReport::default();
        for _ in 0..CHECK_ROUNDS_MAX {
            report = self.check_once(&vol).await?;
            let now: BTreeSet<String> = report.problems.iter().cloned().collect();
            let still: BTreeSet<String> = match persistent.take() {
                None => now,
                Some(prev) => prev.intersection(&now).cloned().collect(),
            };
            if still.is_empty() {
                report.problems.clear();
                break;
            }
            persistent = Some(still);
        }
        if let Some(s) = &persistent {
            report.problems.retain(|p| s.contains(p));
        }
        report.path = path;
        Ok(report)
    }

    async fn check_once(&self, vol: &berth_meta::map::VolumeRecord) -> Result<CheckReport, Error> {
        let tx = self.meta().router().begin(vol.shard_id).await?;
        let (is, ie) = inodes_range(vol.id);
        let (ds, de) = keys::kind_range(vol.id, Kind::Dirent);
        let mut inodes = BTreeMap::new();
        let mut counter = 0;
        for (k, v) in tx.peek_range(&is, &ie, CHECK_KEYS_MAX).await? {
            let r =
                keys::KeyReader::new(&k).map_err(|e| Error::corrupt(format!("inode key: {e}")))?;
            if r.object() == 0 {
                counter = u64::from_be_bytes(
                    v.as_slice()
                        .try_into()
                        .map_err(|_| Error::corrupt("inode counter"))?,
                );
                continue;
            }
            inodes.insert(r.object(), decode_inode(&v)?);
        }
        let mut problems = Vec::new();
        // (parent, name, dirent)
        let mut dirents = Vec::new();
        for (k, v) in tx.peek_range(&ds, &de, CHECK_KEYS_MAX).await? {
            let r =
                keys::KeyReader::new(&k).map_err(|e| Error::corrupt(format!("dirent key: {e}")))?;
            let parent = r.object();
            dirents.push((parent, dirent_name(&k)?, decode_dirent(&v)?));
        }
        let (os, oe) = crate::orphans::orphans_range(vol.id);
        let mut orphans = BTreeSet::new();
        for (k, v) in tx.peek_range(&os, &oe, CHECK_KEYS_MAX).await? {
            crate::orphans::decode_orphan(&v)?;
            orphans.insert(crate::orphans::orphan_ino(&k)?);
        }
        let mut subdirs: BTreeMap<u64, u32> = BTreeMap::new();
        let mut links: BTreeMap<u64, u32> = BTreeMap::new();
        for (parent, name, d) in &dirents {
            match inodes.get(parent) {
                None => problems.push(format!(
                    "entry {name:?} lives in missing directory inode {parent}"
                )),
                Some(pi) if pi.kind != EntryKind::Dir => problems.push(format!(
                    "entry {name:?} lives in inode {parent}, which is a {}",
                    pi.kind.name()
                )),
                Some(_) => {}
            }
            if d.kind == EntryKind::Dir {
                *subdirs.entry(*parent).or_default() += 1;
            }
            if let Some(m) = d.mount {
                if self.meta().map().volume(m).is_none() {
                    problems.push(format!(
                        "entry {name:?} in inode {parent} mounts missing volume {m}"
                    ));
                }
                continue;
            }
            match inodes.get(&d.ino) {
                None => problems.push(format!(
                    "entry {name:?} in inode {parent} points at missing inode {}",
                    d.ino
                )),
                Some(i) => {
                    if i.kind != d.kind {
                        problems.push(format!(
                            "entry {name:?} says {} but inode {} is a {}",
                            d.kind.name(),
                            d.ino,
                            i.kind.name()
                        ));
                    }
                    if i.kind == EntryKind::Dir && i.parent != *parent {
                        problems.push(format!(
                            "directory inode {} is entered from {parent} but its parent pointer is {}",
                            d.ino, i.parent
                        ));
                    }
                    // An empty name is a directory stored before names were.
                    if i.kind == EntryKind::Dir && !i.name.is_empty() && i.name != *name {
                        problems.push(format!(
                            "directory inode {} is entered as {name:?} but its name is {:?}",
                            d.ino, i.name
                        ));
                    }
                }
            }
            *links.entry(d.ino).or_default() += 1;
        }
        for (ino, i) in &inodes {
            if *ino >= counter && counter != 0 {
                problems.push(format!(
                    "inode {ino} is beyond the allocation counter {counter}"
                ));
            }
            if *ino == vol.root_inode {
                if i.kind != EntryKind::Dir {
                    problems.push("the volume root is not a directory".to_string());
                }
            } else {
                let n = links.get(ino).copied().unwrap_or(0);
                let orphan = orphans.contains(ino);
                if orphan && (n != 0 || i.nlink != 0 || i.kind != EntryKind::File) {
                    problems.push(format!(
                        "inode {ino} ({}, nlink {}, {n} entries) is kept as an unlinked open file",
                        i.kind.name(),
                        i.nlink
                    ));
                }
                if n == 0 && !orphan {
                    problems.push(format!(
                        "inode {ino} ({}) is not reachable from any entry",
                        i.kind.name()
                    ));
                }
                if i.kind != EntryKind::Dir && i.nlink != n {
                    problems.push(format!("inode {ino} has nlink {} but {n} entries", i.nlink));
                }
            }
            if i.rdev != 0 && !i.kind.is_device() {
                problems.push(format!(
                    "inode {ino} is a {} with a device number ({:#x})",
                    i.kind.name(),
                    i.rdev
                ));
            }
            if i.kind.is_special() && i.size != 0 {
                problems.push(format!(
                    "inode {ino} is a {} of {} bytes (special files hold none)",
                    i.kind.name(),
                    i.size
                ));
            }
            if i.kind == EntryKind::Dir {
                let want = 2 + subdirs.get(ino).copied().unwrap_or(0);
                if i.nlink != want {
                    problems.push(format!(
                        "directory inode {ino} has nlink {} but should have {want}",
                        i.nlink
                    ));
                }
            }
        }
        for ino in orphans.iter().filter(|i| !inodes.contains_key(i)) {
            problems.push(format!(
                "an unlinked open file is kept as missing inode {ino}"
            ));
        }
        if !inodes.contains_key(&ROOT_INODE) {
            problems.push("the volume has no root directory".to_string());
        }
        Ok(CheckReport {
            path: String::new(),
            inodes: inodes.len() as u64,
            entries: dirents.len() as u64,
            problems,
        })
    }
}
