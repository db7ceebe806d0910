//! Resumable index builds. An index added to a table with documents is
//! built page by page (`Tables::build_indexes`); each page's transaction
//! also records how far the build got, so a build cut short (a crash, a
//! restart, a leader change, a client that went away) goes on from there.
//!
//! The transaction adding the indexes registers the table in its volume
//! (`vol · TableChange · 5 · u64(ino)` → path) and each page writes its
//! progress (`vol · TableChange · 6 · u64(ino) · u64(index id)` → the key
//! of the next document). The node leading the volume resumes every
//! registered build not running here ([`Tables::resume_builds`], at start
//! and with each TTL sweep); marking the indexes ready removes the
//! progress, and the registry entry once no index of the table is
//! building. Writes meanwhile keep every index, ready or not, so nothing
//! blocks them.

use berth_meta::Tx;
use berth_store::keys::{Key, Kind};

use crate::error::codes;
use crate::registry;
use crate::table::{Right, TableRef, Tables};
use crate::DocError;

/// A table with indexes being built, in its volume's registry.
pub type Building = crate::registry::Registered;

/// The registry entry of table `ino` of volume `vol`.
pub fn registry_key(vol: u64, ino: u64) -> Vec<u8> {
    registry::key(registry::BUILDS, vol, ino)
}

/// Where the build of index `id` of table `ino` goes on from.
pub fn progress_key(vol: u64, ino: u64, id: u64) -> Vec<u8> {
    Key::new(vol, Kind::TableChange, 6).u64(ino).u64(id).build()
}

/// Registers table `t` (at `path`) as building, in `tx`.
pub(crate) fn register(tx: &mut Tx, t: &TableRef, path: &str) {
    registry::put(tx, registry::BUILDS, t.vol.id, t.entry.ino, path);
}

/// Every build key of table `ino` (registry entry and progress), deleted
/// in `tx` (the transaction removing the table).
pub(crate) fn forget(tx: &mut Tx, vol: u64, ino: u64) {
    tx.delete(registry_key(vol, ino));
    let start = Key::new(vol, Kind::TableChange, 6).u64(ino).build();
    let end = berth_store::keys::prefix_end(&start);
    tx.delete_range(start, end);
}

/// Removes table `t`'s registry entry, in `tx`.
pub(crate) fn unregister(tx: &mut Tx, t: &TableRef) {
    tx.delete(registry_key(t.vol.id, t.entry.ino));
}

impl Tables {
    /// Goes on with the index builds registered in the volumes this node
    /// leads and not running here; returns how many it finished.
    pub async fn resume_builds(&self) -> usize {
        let map = self.ns.meta().map();
        let router = self.ns.meta().router();
        let mut done = 0;
        for vol in &map.volumes {
            if router.leader_of(vol.shard_id) != Some(router.node_id()) {
                continue;
            }
            match self.resume_volume_builds(vol.id).await {
                Ok(n) => done += n,
                Err(e) => {
                    tracing::debug!(volume = %vol.path, error = %e, "resuming index builds failed; the next sweep retries")
                }
            }
        }
        done
    }

    async fn resume_volume_builds(&self, vol: u64) -> Result<usize, DocError> {
        let system = berth_fs::volumes::system_principal();
        let mut done = 0;
        for (ino, path) in self.registered(registry::BUILDS, vol).await? {
            let t = match self.open(&system, &path, Right::Read).await {
                Ok(t) if t.vol.id == vol && t.entry.ino == ino => t,
                Ok(_) => {
                    tracing::warn!(table = %path, ino, "a table building indexes is no longer at its registered path (moved by an older build): its build resumes when createIndexes runs again");
                    continue;
                }
                Err(e) => {
                    tracing::debug!(table = %path, error = %e, "cannot open a table building indexes; the next sweep retries");
                    continue;
                }
            };
            let ids: Vec<u64> = t
                .config
                .indexes
                .iter()
                .filter(|i| !i.ready)
                .map(|i| i.id)
                .collect();
            if ids.is_empty() {
                self.finish_builds(&t, &[]).await?;
                continue;
            }
            let Some(_running) = self.claim_build(&t) else {
                continue; // its createIndexes is building it here
            };
            tracing::info!(table = %path, indexes = ids.len(), "resuming index builds");
            match self.build_indexes(&t, &ids).await {
                Ok(()) => {
                    self.set_ready(&t, &ids).await?;
                    self.finish_builds(&t, &ids).await?;
                    done += ids.len();
                }
                Err(e) if e.code == codes::DUPLICATE_KEY || e.code == codes::OUT_OF_DISK_SPACE => {
                    tracing::warn!(table = %path, error = %e, "an index being built cannot be made (its documents violate it, or its entries do not fit in the volume's quota): the index is removed");
                    self.remove_indexes(&t, &ids).await?;
                    self.finish_builds(&t, &ids).await?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
}
