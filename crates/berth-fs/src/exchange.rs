//! `rename` with RENAME_EXCHANGE: two existing entries swap names in one
//! atomic command on the volume's shard.
//!
//! As Linux's renameat2(2): both names must exist (ENOENT); a directory may
//! swap with a file; neither may be an ancestor of the other, since a
//! directory would become its own descendant (EINVAL); both must be in one
//! volume (EXDEV); volume mount points do not move (EBUSY). Permissions are
//! those of rename: write on both parent directories and, for a directory
//! that changes parent (its `..` is rewritten), write on it too.

use berth_meta::map::normalize_path;
use berth_meta::router::{backoff, too_much_contention, Commit, Tx, TX_RETRIES_MAX};
use berth_meta::{Code, Error};
use berth_security::principal::Principal;
use berth_security::scope::Access;

use crate::access::{check_entry, check_scope, Need};
use crate::namespace::{now_ns, Namespace, Site};
use crate::records::*;

/// Deepest directory tree walked when looking for a cycle.
const DEPTH_MAX: usize = 4096;

/// True when `path` lies strictly below `dir`.
fn below(path: &str, dir: &str) -> bool {
    (dir == "/" && path != "/") || (path.starts_with(dir) && path[dir.len()..].starts_with('/'))
}

/// Refuses the exchange when directory `dir` (inode) would move under
/// directory `to` (inode): `to` is `dir` or lies below it. Every ancestor
/// read becomes a condition of the command, so a concurrent rename that
/// would create a cycle conflicts with this one.
async fn refuse_cycle(
    tx: &mut Tx,
    vol: u64,
    root: u64,
    dir: u64,
    to: u64,
    what: &str,
) -> Result<(), Error> {
    let mut cur = to;
    let mut steps = 0;
    while cur != 0 && cur != root {
        if cur == dir {
            return Err(Error::invalid(format!(
                "cannot exchange {what}: a directory would move into its own subtree"
            )));
        }
        steps += 1;
        if steps > DEPTH_MAX {
            return Err(Error::new(
                Code::Loop,
                format!("directory tree deeper than {DEPTH_MAX} levels"),
            ));
        }
        let a = decode_inode(
            &tx.get(&inode_key(vol, cur))
                .await?
                .ok_or_else(|| Error::new(Code::Again, "directory moved concurrently; retry"))?,
        )?;
        cur = a.parent;
    }
    Ok(())
}

impl Namespace {
    /// Atomically swaps the entries at `a` and `b` (RENAME_EXCHANGE).
    pub async fn exchange(&self, p: &Principal, a: &str, b: &str) -> Result<(), Error> {
        let a = normalize_path(a)?;
        let b = normalize_path(b)?;
        if a == "/" || b == "/" {
            return Err(Error::new(
                Code::Busy,
                "the root directory cannot be renamed",
            ));
        }
        if below(&b, &a) || below(&a, &b) {
            return Err(Error::invalid(format!(
                "cannot exchange {a} and {b}: one lies inside the other"
            )));
        }
        self.exchange_sites(p, &Site::Path(&a), &Site::Path(&b))
            .await
    }

    /// Swaps the entries at two sites (RENAME_EXCHANGE).
    pub(crate) async fn exchange_sites(
        &self,
        p: &Principal,
        a_site: &Site<'_>,
        b_site: &Site<'_>,
    ) -> Result<(), Error> {
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let (ap, aname, a) = self.site_parent(p, a_site).await?;
            let (bp, bname, b) = self.site_parent(p, b_site).await?;
            if ap.vol.id != bp.vol.id {
                return Err(Error::new(
                    Code::CrossVolume,
                    format!(
                        "cannot exchange across volumes ({} ↔ {})",
                        ap.vol.path, bp.vol.path
                    ),
                ));
            }
            let vol = ap.vol.clone();
            let same_parent = ap.ino == bp.ino;
            let mut tx = self.meta().router().begin(vol.shard_id).await?;
            let apkey = inode_key(vol.id, ap.ino);
            let bpkey = inode_key(vol.id, bp.ino);
            let mut api = decode_inode(
                &tx.get(&apkey)
                    .await?
                    .ok_or_else(|| Error::not_found(&ap.path))?,
            )?;
            let mut bpi = if same_parent {
                api.clone()
            } else {
                decode_inode(
                    &tx.get(&bpkey)
                        .await?
                        .ok_or_else(|| Error::not_found(&bp.path))?,
                )?
            };
            for (dir, inode) in [(&ap.path, &api), (&bp.path, &bpi)] {
                check_entry(p, dir, &vol, inode, Need::Search)?;
                check_entry(p, dir, &vol, inode, Need::Write)?;
            }
            check_scope(p, &a, Access::Write)?;
            check_scope(p, &b, Access::Write)?;
            let adkey = dirent_key(vol.id, ap.ino, &aname);
            let bdkey = dirent_key(vol.id, bp.ino, &bname);
            let ad = decode_dirent(&tx.get(&adkey).await?.ok_or_else(|| Error::not_found(&a))?)?;
            let bd = decode_dirent(&tx.get(&bdkey).await?.ok_or_else(|| Error::not_found(&b))?)?;
            for (d, path) in [(&ad, &a), (&bd, &b)] {
                if d.mount.is_some() {
                    return Err(Error::new(
                        Code::Busy,
                        format!("{path} is a volume mount point and cannot be renamed"),
                    ));
                }
            }
            if ad.ino == bd.ino {
                // The same name, or two links of one file: nothing to do.
                return Ok(());
            }
            let aikey = inode_key(vol.id, ad.ino);
            let bikey = inode_key(vol.id, bd.ino);
            let mut ai = decode_inode(&tx.get(&aikey).await?.ok_or_else(|| Error::not_found(&a))?)?;
            let mut bi = decode_inode(&tx.get(&bikey).await?.ok_or_else(|| Error::not_found(&b))?)?;
            let a_dir = ai.kind == EntryKind::Dir;
            let b_dir = bi.kind == EntryKind::Dir;
            let now = now_ns();
            if !same_parent {
                let what = format!("{a} and {b}");
                if a_dir {
                    // `a` moves under b's parent and its `..` is rewritten.
                    check_entry(p, &a, &vol, &ai, Need::Write)?;
                    refuse_cycle(&mut tx, vol.id, vol.root_inode, ad.ino, bp.ino, &what).await?;
                    ai.parent = bp.ino;
                }
                if b_dir {
                    check_entry(p, &b, &vol, &bi, Need::Write)?;
                    refuse_cycle(&mut tx, vol.id, vol.root_inode, bd.ino, ap.ino, &what).await?;
                    bi.parent = ap.ino;
                }
                // Each parent's link count follows the subdirectories it holds.
                match (a_dir, b_dir) {
                    (true, false) => {
                        api.nlink = api.nlink.saturating_sub(1);
                        bpi.nlink += 1;
                    }
                    (false, true) => {
                        bpi.nlink = bpi.nlink.saturating_sub(1);
                        api.nlink += 1;
                    }
                    _ => {}
                }
            }
            ai.ctime_ns = now;
            bi.ctime_ns = now;
            // Directories keep their own names (their paths are rebuilt
            // from them): each takes the other's.
            if a_dir {
                ai.name = bname.clone();
            }
            if b_dir {
                bi.name = aname.clone();
            }
            tx.put(aikey, encode_inode(&ai));
            tx.put(bikey, encode_inode(&bi));
            tx.put(
                adkey,
                encode_dirent(&Dirent {
                    ino: bd.ino,
                    kind: bd.kind,
                    mount: None,
                }),
            );
            tx.put(
                bdkey,
                encode_dirent(&Dirent {
                    ino: ad.ino,
                    kind: ad.kind,
                    mount: None,
                }),
            );
            if same_parent {
                api.mtime_ns = now;
                api.ctime_ns = now;
                tx.put(apkey, encode_inode(&api));
            } else {
                for (key, mut pi) in [(apkey, api), (bpkey, bpi)] {
                    pi.mtime_ns = now;
                    pi.ctime_ns = now;
                    tx.put(key, encode_inode(&pi));
                }
            }
            if let Commit::Done(_) = tx.commit().await? {
                return Ok(());
            }
        }
        Err(too_much_contention(&a_site.describe()))
    }
}

#[cfg(test)]
mod tests {
    use super::below;

    #[test]
    fn below_is_strict_and_component_wise() {
        assert!(below("/a/b", "/a"));
        assert!(below("/a", "/"));
        assert!(!below("/a", "/a"));
        assert!(!below("/ab", "/a"));
        assert!(!below("/", "/"));
    }
}
