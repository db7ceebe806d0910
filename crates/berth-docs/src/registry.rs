//! The per-volume registries of tables that background work finds again:
//! the tables with TTL indexes (`ttl`, id [`TTL`]) and the tables with
//! index builds to resume (`builds`, id [`BUILDS`]). Each entry is
//! `vol · TableChange · id · u64(table ino)` → [`Registered`] (the table's
//! path), written with the change that makes the table need the work and
//! removed once it no longer does.
//!
//! Paths change when tables or the directories above them are renamed:
//! [`move_paths`] rewrites the entries at or below a renamed path in the
//! rename's own transaction (the change log's `EntryHook`), so every rename
//! (`renameCollection`, `berth mv` of the table or of a directory) keeps
//! the work on the table.

use berth_meta::codec::{decode, encode};
use berth_meta::Tx;
use berth_store::keys::{object_range, Key, KeyReader, Kind};
use serde::{Deserialize, Serialize};

use crate::table::{from_meta, Tables};
use crate::DocError;

/// The TTL registry's id under `Kind::TableChange`.
pub const TTL: u64 = 4;
/// The index-build registry's id under `Kind::TableChange`.
pub const BUILDS: u64 = 5;

/// Entries read per page.
const PAGE: usize = 256;

/// A registered table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    /// The table's path (kept up to date by every rename).
    pub path: String,
}

/// The key of table `ino`'s entry in registry `id` of volume `vol`.
pub fn key(id: u64, vol: u64, ino: u64) -> Vec<u8> {
    Key::new(vol, Kind::TableChange, id).u64(ino).build()
}

/// Registers table `ino` of volume `vol` at `path` in registry `id`, in
/// `tx`.
pub(crate) fn put(tx: &mut Tx, id: u64, vol: u64, ino: u64, path: &str) {
    let entry = Registered {
        path: path.to_owned(),
    };
    tx.put(key(id, vol, ino), encode(&entry));
}

impl Tables {
    /// Every entry of registry `id` of volume `vol`, as (table inode,
    /// path), read on the volume's leader. Registries hold one entry per
    /// table needing the work, so they are read whole.
    pub(crate) async fn registered(
        &self,
        id: u64,
        vol: u64,
    ) -> Result<Vec<(u64, String)>, DocError> {
        let v = self.volume(vol)?;
        let router = self.namespace().meta().router();
        let (mut from, end) = object_range(vol, Kind::TableChange, id);
        let mut out = Vec::new();
        loop {
            let rows = router
                .scan(v.shard_id, &from, &end, PAGE)
                .await
                .map_err(from_meta)?;
            for (k, raw) in &rows {
                let ino = KeyReader::new(k)
                    .and_then(|mut r| r.next_u64())
                    .map_err(|e| DocError::internal(format!("table registry key: {e}")))?;
                let entry: Registered = decode(raw, "table registry entry").map_err(from_meta)?;
                out.push((ino, entry.path));
            }
            match rows.last() {
                Some((k, _)) if rows.len() == PAGE => {
                    from = k.to_vec();
                    from.push(0);
                }
                _ => return Ok(out),
            }
        }
    }
}

/// Rewrites the paths of registry `id` of volume `vol` that are `from` or
/// below it to the same place under `to`, in `tx` (the rename's
/// transaction, made conditional on each entry rewritten).
pub(crate) async fn move_paths(
    tx: &mut Tx,
    id: u64,
    vol: u64,
    from: &str,
    to: &str,
) -> Result<(), berth_meta::Error> {
    let (mut start, end) = object_range(vol, Kind::TableChange, id);
    loop {
        let rows = tx.peek_range(&start, &end, PAGE).await?;
        for (k, v) in &rows {
            let entry: Registered = decode(v, "table registry entry")?;
            let Some(rest) = entry.path.strip_prefix(from) else {
                continue;
            };
            if !(rest.is_empty() || rest.starts_with('/')) {
                continue;
            }
            tx.get(k).await?;
            let moved = Registered {
                path: format!("{to}{rest}"),
            };
            tx.put(k.clone(), encode(&moved));
        }
        match rows.last() {
            Some((k, _)) if rows.len() == PAGE => {
                start = k.clone();
                start.push(0);
            }
            _ => return Ok(()),
        }
    }
}
