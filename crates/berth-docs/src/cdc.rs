//! Change data capture: a table's committed changes published into a
//! stream's topic. This module keeps the targets (which table publishes
//! into which topic, from where, and how far it is known to have got); the
//! server's pump reads the change log and appends the records.
//!
//! A target is `vol · TableChange · 2 · u64(table ino) · u64(id)` in the
//! table's volume (next to the log it reads), holding a [`CdcTarget`].
//! `published` is a lower bound the pump raises once what it covers is
//! durable in the topic; the exact position of each partition is the one
//! its last record names, which is how the pump resumes after a crash
//! without repeating or skipping a change. The log is not trimmed past the
//! lowest `published` of its volume.

use berth_meta::codec::{decode, encode};
use berth_meta::router::{backoff, TX_RETRIES_MAX};
use berth_meta::Commit;
use berth_security::principal::Principal;
use berth_store::keys::{object_range, Key, Kind};
use serde::{Deserialize, Serialize};

use crate::changes::Position;
use crate::table::{authorize, from_meta, transient, Right, TableRef, Tables};
use crate::DocError;

/// One table publishing into one topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CdcTarget {
    pub id: u64,
    /// The table's inode (in the volume the target is stored in).
    pub table: u64,
    /// The table's path when the target was added (for listings).
    pub table_path: String,
    /// The stream's path and the topic.
    pub stream: String,
    pub topic: String,
    /// Changes after this position are published (where the log was when
    /// the target was added), as `Position::to_bytes`.
    pub start: [u8; 16],
    /// Everything up to here is durable in the topic (a lower bound).
    pub published: [u8; 16],
    /// Who added it.
    pub owner: String,
}

impl CdcTarget {
    pub fn start(&self) -> Position {
        Position::from_bytes(&self.start).unwrap_or_default()
    }

    pub fn published(&self) -> Position {
        Position::from_bytes(&self.published).unwrap_or_default()
    }
}

fn target_key(vol: u64, table: u64, id: u64) -> Vec<u8> {
    Key::new(vol, Kind::TableChange, 2)
        .u64(table)
        .u64(id)
        .build()
}

fn targets_range(vol: u64) -> (Vec<u8>, Vec<u8>) {
    object_range(vol, Kind::TableChange, 2)
}

impl Tables {
    /// Adds a target publishing `t`'s changes from now into `topic` of the
    /// stream at `stream` (the caller checked it may produce there). Needs
    /// the table's admin right.
    pub async fn cdc_add(
        &self,
        p: &Principal,
        t: &TableRef,
        stream: &str,
        topic: &str,
    ) -> Result<CdcTarget, DocError> {
        authorize(p, t, Right::Admin)?;
        authorize(p, t, Right::Read)?;
        let vol = t.vol.id;
        let now = self.changes_now(vol).await?;
        let router = self.ns.meta().router();
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let mut tx = router.begin(t.vol.shard_id).await.map_err(from_meta)?;
            let existing = self.cdc_targets_in(&tx, vol).await?;
            if existing
                .iter()
                .any(|c| c.table == t.entry.ino && c.stream == stream && c.topic == topic)
            {
                return Err(DocError::new(
                    crate::error::codes::NAMESPACE_EXISTS,
                    format!("{} already publishes into {stream}:{topic}", t.entry.path),
                ));
            }
            let id = existing.iter().map(|c| c.id).max().unwrap_or(0) + 1;
            let key = target_key(vol, t.entry.ino, id);
            // Conditional on the id being free: two adds at once do not share it.
            tx.get(&key).await.map_err(from_meta)?;
            let target = CdcTarget {
                id,
                table: t.entry.ino,
                table_path: t.entry.path.clone(),
                stream: stream.to_string(),
                topic: topic.to_string(),
                start: now.to_bytes(),
                published: now.to_bytes(),
                owner: p.name.clone(),
            };
            tx.put(key, encode(&target));
            if let Commit::Done(_) = tx.commit().await.map_err(from_meta)? {
                return Ok(target);
            }
        }
        Err(transient(
            "too much contention adding the CDC target; retry",
        ))
    }

    /// The targets of table `t` (read right).
    pub async fn cdc_list(&self, p: &Principal, t: &TableRef) -> Result<Vec<CdcTarget>, DocError> {
        authorize(p, t, Right::Read)?;
        let tx = self
            .ns
            .meta()
            .router()
            .begin(t.vol.shard_id)
            .await
            .map_err(from_meta)?;
        Ok(self
            .cdc_targets_in(&tx, t.vol.id)
            .await?
            .into_iter()
            .filter(|c| c.table == t.entry.ino)
            .collect())
    }

    /// Removes target `id` of table `t` (admin right); whether it was there.
    pub async fn cdc_remove(&self, p: &Principal, t: &TableRef, id: u64) -> Result<bool, DocError> {
        authorize(p, t, Right::Admin)?;
        self.cdc_forget(t.vol.id, t.entry.ino, id).await
    }

    /// Removes a target (the pump, once its table is dropped).
    pub async fn cdc_forget(&self, vol: u64, table: u64, id: u64) -> Result<bool, DocError> {
        let v = self.volume(vol)?;
        let router = self.ns.meta().router();
        let key = target_key(vol, table, id);
        let mut tx = router.begin(v.shard_id).await.map_err(from_meta)?;
        if tx.get(&key).await.map_err(from_meta)?.is_none() {
            return Ok(false);
        }
        tx.delete(key);
        match tx.commit().await.map_err(from_meta)? {
            Commit::Done(_) => Ok(true),
            Commit::Conflict => Err(transient("the CDC target changed meanwhile; retry")),
        }
    }

    /// Every target of volume `vol` (no authorization: the pump's).
    pub async fn cdc_targets(&self, vol: u64) -> Result<Vec<CdcTarget>, DocError> {
        let v = self.volume(vol)?;
        let tx = self
            .ns
            .meta()
            .router()
            .begin(v.shard_id)
            .await
            .map_err(from_meta)?;
        self.cdc_targets_in(&tx, vol).await
    }

    async fn cdc_targets_in(
        &self,
        tx: &berth_meta::Tx,
        vol: u64,
    ) -> Result<Vec<CdcTarget>, DocError> {
        let (start, end) = targets_range(vol);
        let rows = tx
            .peek_range(&start, &end, 10_000)
            .await
            .map_err(from_meta)?;
        rows.iter()
            .map(|(_, v)| decode::<CdcTarget>(v, "CDC target").map_err(from_meta))
            .collect()
    }

    /// Raises a target's `published` to `to` (the pump, once everything up
    /// to it is durable in the topic). A target removed meanwhile stays
    /// removed.
    pub async fn cdc_published(
        &self,
        vol: u64,
        table: u64,
        id: u64,
        to: Position,
    ) -> Result<(), DocError> {
        let v = self.volume(vol)?;
        let router = self.ns.meta().router();
        let key = target_key(vol, table, id);
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let mut tx = router.begin(v.shard_id).await.map_err(from_meta)?;
            let Some(raw) = tx.get(&key).await.map_err(from_meta)? else {
                return Ok(());
            };
            let mut target: CdcTarget = decode(&raw, "CDC target").map_err(from_meta)?;
            if target.published() >= to {
                return Ok(());
            }
            target.published = to.to_bytes();
            tx.put(key.clone(), encode(&target));
            if let Commit::Done(_) = tx.commit().await.map_err(from_meta)? {
                return Ok(());
            }
        }
        Err(transient("too much contention on the CDC target; retry"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_keys_sort_under_their_volume_and_parse_back() {
        let k = target_key(3, 40, 2);
        let (s, e) = targets_range(3);
        assert!(s <= k && k < e);
        // Outside the change log's own range.
        let (ls, le) = crate::changes::range_after(3, Position::default());
        assert!(!(ls <= k && k < le));
    }
}
