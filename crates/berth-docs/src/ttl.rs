//! TTL indexes: a document whose indexed field is a date (or an array
//! holding one) older than the index's `expireAfterSeconds` is deleted by
//! a sweep, as MongoDB's TTL monitor does (every 60 s by default).
//!
//! The sweep runs on the node leading each volume's shard. It reads the
//! volume's TTL tables from a registry, `vol · TableChange · 4 · u64(table
//! ino)` holding the table's path (written in the transaction that adds a
//! TTL index to the settings, rewritten in the transaction of any rename
//! of the table or of a directory above it (`changes::LogHook`), removed by
//! the sweep once the table has no TTL index or is gone). For each ready
//! TTL index it scans the index's entries from the first date to now −
//! `expireAfterSeconds` (dates sort together in the key encoding, so this
//! is one key range: nothing else is read) and deletes each document
//! through the table's delete path (index entries and a change log record
//! in the same transaction), a page of documents per transaction, each
//! read again there and deleted only if it still has an expired date.
//!
//! Time is an argument (`now`): the sweep's logic is tested without
//! waiting.

use std::sync::Arc;
use std::time::Duration;

use berth_meta::router::{backoff, TX_RETRIES_MAX};
use berth_meta::Commit;
use berth_store::keys::{Key, Kind};

use crate::index::IndexDef;
use crate::registry;
use crate::table::{decode_doc, from_meta, transient, Right, TableConfig, TableRef, Tables};
use crate::DocError;

/// How often the sweep runs unless told otherwise (MongoDB's
/// `ttlMonitorSleepSecs`).
pub const TTL_INTERVAL_DEFAULT: Duration = Duration::from_secs(60);
/// Index entries read, and documents deleted, per transaction.
const EXPIRE_PAGE: usize = 256;
/// Documents one pass deletes from one index at most; the rest wait for
/// the next pass (so one table's backlog does not hold up the others).
pub const EXPIRE_PER_PASS_MAX: usize = 100_000;
/// The registry entry of table `ino` in volume `vol`.
pub fn registry_key(vol: u64, ino: u64) -> Vec<u8> {
    registry::key(registry::TTL, vol, ino)
}

fn has_ttl(config: &TableConfig) -> bool {
    config
        .indexes
        .iter()
        .any(|d| d.expire_after_secs().is_some())
}

/// The cut of a TTL index at `now`: documents with a date before it have
/// expired.
pub fn cutoff(def: &IndexDef, now: bson::DateTime) -> Option<bson::DateTime> {
    let secs = def.expire_after_secs()?;
    Some(bson::DateTime::from_millis(
        now.timestamp_millis()
            .saturating_sub(secs.saturating_mul(1000)),
    ))
}

impl Tables {
    /// Runs [`Tables::expire_all`] and [`Tables::resume_builds`] every
    /// `every`.
    pub fn spawn_ttl_sweep(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(tables) = me.upgrade() else { return };
                // Index builds cut short go on too (see `builds`).
                tables.resume_builds().await;
                tables.expire_all(bson::DateTime::now()).await;
            }
        })
    }

    /// Deletes the expired documents of the TTL indexes of every volume
    /// this node leads, as of `now`; returns how many.
    pub async fn expire_all(&self, now: bson::DateTime) -> usize {
        let map = self.ns.meta().map();
        let router = self.ns.meta().router();
        let mut deleted = 0;
        for vol in &map.volumes {
            if router.leader_of(vol.shard_id) != Some(router.node_id()) {
                continue;
            }
            match self.expire_volume(vol.id, now).await {
                Ok(n) => deleted += n,
                Err(e) => {
                    tracing::debug!(volume = %vol.path, error = %e, "TTL sweep failed; the next one retries")
                }
            }
        }
        deleted
    }

    /// [`Tables::expire_all`] for the tables of volume `vol`.
    pub async fn expire_volume(&self, vol: u64, now: bson::DateTime) -> Result<usize, DocError> {
        let system = berth_fs::volumes::system_principal();
        let mut deleted = 0;
        for (ino, path) in self.registered(registry::TTL, vol).await? {
            let t = match self.open(&system, &path, Right::Read).await {
                Ok(t) if t.vol.id == vol && t.entry.ino == ino => Some(t),
                Ok(_) => None,
                Err(e) if e.code == crate::error::codes::NAMESPACE_NOT_FOUND => None,
                Err(e) => {
                    tracing::debug!(table = %path, error = %e, "TTL sweep cannot open a table; the next one retries");
                    continue;
                }
            };
            match t {
                Some(t) if has_ttl(&t.config) => match self.expire(&t, now).await {
                    Ok(n) => deleted += n,
                    Err(e) => {
                        tracing::debug!(table = %path, error = %e, "TTL sweep of a table failed; the next one retries")
                    }
                },
                _ => self.forget_ttl_table(vol, ino, &path).await?,
            }
        }
        Ok(deleted)
    }

    /// Removes table `ino`'s registry entry when it has no TTL index (or
    /// is gone), conditional on its settings, so an index added meanwhile
    /// keeps it. A table with TTL indexes whose registered path names
    /// another entry was moved by a build older than the registry's rename
    /// hook: it is left, and said.
    async fn forget_ttl_table(&self, vol: u64, ino: u64, path: &str) -> Result<(), DocError> {
        let v = self.volume(vol)?;
        let router = self.ns.meta().router();
        let mut tx = router.begin(v.shard_id).await.map_err(from_meta)?;
        let settings = Key::new(vol, Kind::TableIndex, ino).build();
        let config = match tx.get(&settings).await.map_err(from_meta)? {
            Some(b) => Some(TableConfig::decode(&b)?),
            None => None,
        };
        if config.as_ref().is_some_and(has_ttl) {
            tracing::warn!(table = %path, ino, "a table with a TTL index is no longer at its registered path (moved by an older build): its documents do not expire until it is renamed again or the index is made again");
            return Ok(());
        }
        let key = registry_key(vol, ino);
        tx.get(&key).await.map_err(from_meta)?;
        tx.delete(key);
        tx.commit().await.map_err(from_meta)?;
        Ok(())
    }

    /// Registers table `t` for the sweep, in `tx` (the transaction adding
    /// its first TTL index).
    pub(crate) fn register_ttl_table(tx: &mut berth_meta::Tx, t: &TableRef, path: &str) {
        registry::put(tx, registry::TTL, t.vol.id, t.entry.ino, path);
    }

    /// Deletes `t`'s documents that its ready TTL indexes say have expired
    /// at `now`; returns how many.
    pub async fn expire(&self, t: &TableRef, now: bson::DateTime) -> Result<usize, DocError> {
        let mut deleted = 0;
        for def in t.config.indexes.iter().filter(|d| d.ready) {
            let Some(cut) = cutoff(def, now) else {
                continue;
            };
            deleted += self.expire_index(t, def, cut).await?;
        }
        Ok(deleted)
    }

    /// Deletes the documents of `t` with an entry of `def` dated before
    /// `cut`: one key range of the index, read a page at a time, each
    /// page's documents deleted in one transaction conditional on them.
    async fn expire_index(
        &self,
        t: &TableRef,
        def: &IndexDef,
        cut: bson::DateTime,
    ) -> Result<usize, DocError> {
        let interval = crate::plan::dates_before(def, cut);
        let Some(mut run) =
            crate::table::runs(t, def.id, std::slice::from_ref(&interval), false).pop()
        else {
            return Ok(0);
        };
        let router = self.ns.meta().router();
        let mut deleted = 0;
        while deleted < EXPIRE_PER_PASS_MAX {
            let tx = router.begin(t.vol.shard_id).await.map_err(from_meta)?;
            run.rows.clear();
            run.fill(&tx, EXPIRE_PAGE).await?;
            // A document with several expired dates once.
            let mut seen = std::collections::HashSet::new();
            let ids: Vec<Vec<u8>> = run
                .rows
                .drain(..)
                .map(|(_, id)| id)
                .filter(|id| seen.insert(id.clone()))
                .collect();
            deleted += self.expire_docs(t, def, &interval, &ids).await?;
            if !run.more {
                break;
            }
        }
        if deleted >= EXPIRE_PER_PASS_MAX {
            tracing::info!(table = %t.entry.path, index = %def.name, deleted, "TTL pass stopped at its bound; the next one goes on");
        }
        Ok(deleted)
    }

    /// Deletes, in one transaction, those of the documents `ids` (`_id`
    /// encodings) that still have an entry of `def` in `expired`.
    async fn expire_docs(
        &self,
        t: &TableRef,
        def: &IndexDef,
        expired: &crate::plan::Interval,
        ids: &[Vec<u8>],
    ) -> Result<usize, DocError> {
        let router = self.ns.meta().router();
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let mut tx = router.begin(t.vol.shard_id).await.map_err(from_meta)?;
            let mut n = 0;
            let mut w = crate::table::Writes::default();
            for id in ids {
                let key = Key::new(t.vol.id, Kind::TableDoc, t.entry.ino)
                    .bytes(id)
                    .build();
                let Some(raw) = tx.get(&key).await.map_err(from_meta)? else {
                    continue;
                };
                let doc = decode_doc(&raw)?;
                if !def.entries(&doc)?.iter().any(|k| expired.contains(k)) {
                    continue;
                }
                crate::table::remove_doc(&mut tx, t, &mut w, key, &raw, &doc).await?;
                n += 1;
            }
            if n == 0 {
                return Ok(0);
            }
            crate::table::finish_writes(&mut tx, t, w).await?;
            if let Commit::Done(_) = tx.commit().await.map_err(from_meta)? {
                return Ok(n);
            }
        }
        Err(transient(
            "too much contention while deleting expired documents; the next pass retries",
        ))
    }
}
