//! Volume snapshots: read-only, point-in-time views of a whole volume,
//! reachable at `<volume>/.snapshot/<name>/`.
//!
//! Taking a snapshot is one command on the volume's shard, so it is exact:
//! every change ordered before it is in it, none after. The command
//! - copies the volume's metadata (inodes, dirents, xattrs, file sizes and
//!   times) under the snapshot's key prefix at apply time
//!   (`Op::SnapshotCopy`; the log entry carries no data), and
//! - moves the volume's chunk epoch on and keeps the old epoch
//!   (`VersionState`), so the first write to a chunk after the snapshot
//!   copies that one chunk, a truncate or unlink leaves it in place for the
//!   snapshot, and no data is copied when the snapshot is taken.
//!
//! Cost: creation is O(metadata) — one pass over the volume's inode,
//! dirent and attribute keys inside one apply — never O(data). Removal
//! deletes the snapshot's metadata and prunes the chunk versions only it
//! read (`Op::VPrune`), one pass over the volume's chunk keys (not values).
//!
//! Space held by snapshots is not counted in the volume's usage or quota
//! (usage counts the live files' bytes, as `du` would); removing snapshots
//! frees it.

use berth_meta::map::normalize_path;
use berth_meta::router::{backoff, too_much_contention, Commit, Tx, TX_RETRIES_MAX};
use berth_meta::{Code, Error};
use berth_raft::cmd::{Op, VersionState};
use berth_security::principal::Principal;
use berth_security::scope::Access;

use crate::access::{check_entry, check_owner, check_scope, Need};
use crate::namespace::{now_ns, Namespace};
use crate::records::*;

/// Most snapshots one volume keeps.
pub const SNAPSHOTS_PER_VOLUME_MAX: usize = 256;

/// A snapshot as callers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub volume_path: String,
    pub name: String,
    pub id: u64,
    pub created_ns: i64,
    /// Where the mount shows it.
    pub path: String,
}

fn check_snapshot_name(name: &str) -> Result<(), Error> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(Error::invalid(format!(
            "invalid snapshot name {name:?}: use a file name (no '/', not '.' or '..')"
        )));
    }
    if name.len() > 255 {
        return Err(Error::new(
            Code::NameTooLong,
            "snapshot names are at most 255 bytes",
        ));
    }
    Ok(())
}

impl Namespace {
    /// The volume mounted exactly at `path`, with its root entry checked
    /// for `need` (owner for changes).
    async fn snapshot_volume(
        &self,
        p: &Principal,
        path: &str,
        change: bool,
    ) -> Result<berth_meta::map::VolumeRecord, Error> {
        let path = normalize_path(path)?;
        let vol = self.meta().map().volume_at(&path).cloned().ok_or_else(|| {
            Error::not_found(format!("volume at {path} (see `berth volume list`)"))
        })?;
        let root = self.resolve(p, &path, true).await?;
        if root.vol.id != vol.id || root.ino != vol.root_inode || !root.view.is_live() {
            return Err(Error::not_found(format!("volume at {path}")));
        }
        if change {
            check_owner(p, &path, &root.inode, "take or remove snapshots of")?;
        } else {
            check_scope(p, &path, Access::Read)?;
            check_entry(p, &path, &vol, &root.inode, Need::Read)?;
        }
        Ok(vol)
    }

    /// Takes snapshot `name` of the volume at `volume_path`.
    pub async fn snapshot_create(
        &self,
        p: &Principal,
        volume_path: &str,
        name: &str,
    ) -> Result<SnapshotInfo, Error> {
        check_snapshot_name(name)?;
        let vol = self.snapshot_volume(p, volume_path, true).await?;
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let mut tx = self.meta().router().begin(vol.shard_id).await?;
            let (mut list, state) = read_state(&mut tx, vol.id).await?;
            if list.find(name).is_some() {
                return Err(Error::exists(format!("snapshot {name} of {}", vol.path)));
            }
            if list.snapshots.len() >= SNAPSHOTS_PER_VOLUME_MAX {
                return Err(Error::new(
                    Code::Quota,
                    format!(
                        "{} already keeps {SNAPSHOTS_PER_VOLUME_MAX} snapshots; remove one first",
                        vol.path
                    ),
                ));
            }
            let id = state.epoch;
            let record = SnapshotRecord {
                id,
                name: name.to_string(),
                created_ns: now_ns(),
            };
            list.snapshots.push(record.clone());
            let mut keep = state.keep.clone();
            keep.push(id);
            let (start, end) = snapshot_source_range(vol.id);
            tx.op(Op::SnapshotCopy {
                start,
                end,
                snapshot: id,
            });
            tx.put(
                versions_key(vol.id),
                VersionState::new(id + 1, keep).encode(),
            );
            tx.put(snapshots_key(vol.id), berth_meta::codec::encode(&list));
            if let Commit::Done(_) = tx.commit().await? {
                return Ok(info(&vol.path, record));
            }
        }
        Err(too_much_contention("snapshot create"))
    }

    /// The snapshots of the volume at `volume_path`, oldest first.
    pub async fn snapshot_list(
        &self,
        p: &Principal,
        volume_path: &str,
    ) -> Result<Vec<SnapshotInfo>, Error> {
        let vol = self.snapshot_volume(p, volume_path, false).await?;
        let raw = self
            .meta()
            .router()
            .get(vol.shard_id, &snapshots_key(vol.id))
            .await?;
        Ok(decode_snapshots(raw.as_deref())?
            .snapshots
            .into_iter()
            .map(|r| info(&vol.path, r))
            .collect())
    }

    /// Removes snapshot `name` and frees the data only it kept.
    pub async fn snapshot_remove(
        &self,
        p: &Principal,
        volume_path: &str,
        name: &str,
    ) -> Result<(), Error> {
        let vol = self.snapshot_volume(p, volume_path, true).await?;
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let mut tx = self.meta().router().begin(vol.shard_id).await?;
            let (mut list, state) = read_state(&mut tx, vol.id).await?;
            let Some(record) = list.find(name).cloned() else {
                return Err(Error::not_found(format!(
                    "snapshot {name} of {} (see `berth snapshot list {}`)",
                    vol.path, vol.path
                )));
            };
            list.snapshots.retain(|s| s.id != record.id);
            let keep: Vec<u64> = state
                .keep
                .iter()
                .copied()
                .filter(|k| *k != record.id)
                .collect();
            let (ss, se) = snapshot_range(vol.id, record.id);
            tx.delete_range(ss, se);
            tx.put(
                versions_key(vol.id),
                VersionState::new(state.epoch, keep).encode(),
            );
            tx.put(snapshots_key(vol.id), berth_meta::codec::encode(&list));
            let (cs, ce) = volume_chunks_range(vol.id);
            tx.op(Op::VPrune {
                start: cs,
                end: ce,
                state: versions_key(vol.id),
            });
            if let Commit::Done(_) = tx.commit().await? {
                return Ok(());
            }
        }
        Err(too_much_contention("snapshot remove"))
    }
}

/// A volume's snapshot list and chunk version state, read as conditions of
/// `tx` (a concurrent snapshot change makes the command retry).
async fn read_state(tx: &mut Tx, vol: u64) -> Result<(SnapshotList, VersionState), Error> {
    let list = decode_snapshots(tx.get(&snapshots_key(vol)).await?.as_deref())?;
    let state = VersionState::decode(tx.get(&versions_key(vol)).await?.as_deref())
        .map_err(Error::corrupt)?;
    Ok((list, state))
}

fn info(volume_path: &str, r: SnapshotRecord) -> SnapshotInfo {
    let base = if volume_path == "/" { "" } else { volume_path };
    SnapshotInfo {
        volume_path: volume_path.to_string(),
        path: format!("{base}/{SNAPSHOT_DIR}/{}", r.name),
        name: r.name,
        id: r.id,
        created_ns: r.created_ns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_snapshot_name("daily-2026-11-24").is_ok());
        for bad in ["", ".", "..", "a/b", "a\0"] {
            assert_eq!(check_snapshot_name(bad).unwrap_err().code, Code::Invalid);
        }
        assert_eq!(
            check_snapshot_name(&"x".repeat(256)).unwrap_err().code,
            Code::NameTooLong
        );
    }

    #[test]
    fn paths() {
        let r = SnapshotRecord {
            id: 3,
            name: "s".into(),
            created_ns: 0,
        };
        assert_eq!(info("/apps/a", r.clone()).path, "/apps/a/.snapshot/s");
        assert_eq!(info("/", r).path, "/.snapshot/s");
    }
}
