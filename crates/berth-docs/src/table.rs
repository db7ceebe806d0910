//! Tables in the namespace: where their documents live and the transactions
//! that read and change them.
//!
//! A table is a namespace entry of kind `table` in a volume; its documents
//! and index entries live in that volume's shard, under the entry's inode:
//!
//! | key | value |
//! | --- | --- |
//! | `vol · TableIndex · ino` | the table's settings ([`TableConfig`]: format version, ACEs, index definitions) |
//! | `vol · TableDoc · ino · bytes(keys::encode_value(_id))` | [`DOC_FORMAT`] then the document's BSON |
//! | `vol · TableIndex · ino · u64(index id) · bytes(index key) …` | secondary index entries (see `index` docs in ARCHITECTURE.md) |
//!
//! `_id`s are keyed by an order-preserving encoding in which the numbers of
//! every type that compare equal encode the same, so `1`, `1.0` and
//! `NumberLong(1)` are the same `_id`, as in MongoDB. A document and its
//! index entries change in one conditional Raft transaction.
//!
//! Usage: documents and index entries count in their volume's usage
//! (`berth_fs::records::usage_key`, the counter file data counts in), key
//! and value bytes of each stored pair ([`pair_bytes`]). Every write goes
//! through `write_doc` (or, for an index build, `write_entries`), which
//! adds its exact byte change to the transaction's `Writes`, refuses
//! growth past the volume's quota (14031 OutOfDiskSpace) before anything
//! is buffered, and `finish_writes` adds the total to the counter in the
//! same transaction. Removals of whole ranges (a table, an index) subtract
//! what they delete, keys and values, at apply time
//! (`Op::DeleteRangeCountedPairs`), so a table's life leaves the counter
//! where it found it. Not counted: the settings, the change log, retryable
//! write marks and the build and TTL registries (each bounded by its own
//! retention or by the number of tables).

use std::collections::HashMap;
use std::sync::Arc;

use berth_fs::access::{ace_allows, check_scope};
use berth_fs::{EntryInfo, EntryKind, Namespace};
use berth_meta::codec::{decode, encode};
use berth_meta::map::VolumeRecord;
use berth_meta::router::{backoff, TX_RETRIES_MAX};
use berth_meta::{Code, Commit, Error, Tx};
use berth_security::principal::Principal;
use berth_security::scope::Access;
use berth_store::keys::{object_range, prefix_end, Key, Kind};
use bson::{Bson, Document};
use serde::{Deserialize, Serialize};

use crate::changes::{self, OpType, Record};
use crate::error::codes;
use crate::index::IndexDef;
use crate::matcher::{Filter, MatchDetails};
use crate::retry::{self, Stmt};
use crate::txn::{Txn, Work};
use crate::update::ApplyContext;
use crate::DocError;

/// The first byte of every stored document: the format of what follows
/// (1: the document's BSON bytes).
pub const DOC_FORMAT: u8 = 1;
/// The version of [`TableConfig`]'s layout (2: with `multikey`).
pub const CONFIG_FORMAT: u32 = 2;
/// Largest document, as MongoDB's `maxBsonObjectSize`.
pub const DOC_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Documents read per page of a scan.
pub const SCAN_PAGE: usize = 256;
/// Keys read per page when counting a whole table.
const COUNT_PAGE: usize = 4096;
/// Documents an index build reads per transaction: at least, at most.
const BUILD_PAGE_MIN: usize = 16;
const BUILD_PAGE_MAX: usize = 4096;
/// Document bytes an index build reads per transaction at most (each is
/// also in the transaction's conditions).
const BUILD_PAGE_BYTES: usize = 4 * 1024 * 1024;
/// Bytes of documents one insert transaction carries at most (a batch is
/// split into transactions of about this size).
const INSERT_TXN_BYTES: usize = 4 * 1024 * 1024;
/// Change records one trimming transaction removes at most.
const TRIM_PAGE: usize = 1024;

/// A table's settings, stored with it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TableConfig {
    /// [`CONFIG_FORMAT`] when written.
    pub format: u32,
    /// Who may read documents (`None`: the table's owner).
    pub read_ace: Option<String>,
    /// Who may insert, update and delete documents (`None`: the owner).
    pub write_ace: Option<String>,
    /// Who may change the table's settings, indexes, or drop it (`None`: the owner).
    pub admin_ace: Option<String>,
    /// The version of the key encoding its documents are stored under
    /// (`keys::KEY_FORMAT_VERSION` when created).
    pub key_format: u8,
    /// Its secondary indexes.
    pub indexes: Vec<IndexDef>,
    /// The id the next index gets (ids are never reused, so a dropped
    /// index's entries can be removed while a new one is built).
    pub next_index_id: u64,
    /// The indexes' multikey marks (`IndexDef::multikey`): index id and a
    /// bit per key field that met an array. An index missing here (made
    /// before format 2) may be multikey on any field. Last, so a build
    /// that reads format 1 reads these settings too (and ignores it).
    pub multikey: Vec<(u64, u64)>,
}

/// [`TableConfig`] as stored before `multikey` (format 1).
#[derive(Deserialize)]
struct TableConfigV1 {
    format: u32,
    read_ace: Option<String>,
    write_ace: Option<String>,
    admin_ace: Option<String>,
    key_format: u8,
    indexes: Vec<IndexDef>,
    next_index_id: u64,
}

impl TableConfig {
    /// Decodes stored settings of any format this build has written, with
    /// the multikey marks in the index definitions.
    pub fn decode(b: &[u8]) -> Result<TableConfig, DocError> {
        let mut c = match decode::<TableConfig>(b, "table settings") {
            Ok(c) => c,
            Err(e) => {
                let Ok(v1) = decode::<TableConfigV1>(b, "table settings") else {
                    return Err(from_meta(e));
                };
                TableConfig {
                    format: v1.format,
                    read_ace: v1.read_ace,
                    write_ace: v1.write_ace,
                    admin_ace: v1.admin_ace,
                    key_format: v1.key_format,
                    indexes: v1.indexes,
                    next_index_id: v1.next_index_id,
                    multikey: Vec::new(),
                }
            }
        };
        for def in &mut c.indexes {
            def.multikey = c
                .multikey
                .iter()
                .find(|(id, _)| *id == def.id)
                .map(|(_, bits)| *bits);
        }
        Ok(c)
    }

    /// The stored form, the multikey marks taken from the index
    /// definitions.
    pub fn encode(&self) -> Vec<u8> {
        let mut c = self.clone();
        c.format = CONFIG_FORMAT;
        c.multikey = self
            .indexes
            .iter()
            .filter_map(|d| d.multikey.map(|bits| (d.id, bits)))
            .collect();
        encode(&c)
    }
}

/// What a caller wants to do with a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    Read,
    Write,
    Admin,
}

impl Right {
    pub fn name(self) -> &'static str {
        match self {
            Right::Read => "read",
            Right::Write => "write",
            Right::Admin => "admin",
        }
    }
}

/// An opened table: its entry, volume and settings.
#[derive(Debug, Clone)]
pub struct TableRef {
    pub entry: EntryInfo,
    pub vol: VolumeRecord,
    pub config: TableConfig,
    /// The multi-document transaction its reads and writes belong to.
    pub txn: Option<Arc<Txn>>,
}

impl TableRef {
    pub(crate) fn config_key(&self) -> Vec<u8> {
        Key::new(self.vol.id, Kind::TableIndex, self.entry.ino).build()
    }

    /// The key of the document whose `_id` is `id`.
    pub fn doc_key(&self, id: &Bson) -> Vec<u8> {
        let mut enc = Vec::new();
        crate::keys::encode_value(id, &mut enc);
        self.doc_key_enc(&enc)
    }

    /// The key of the document whose `_id` encodes as `id_enc`
    /// (`keys::encode_value`, what index entries hold).
    pub fn doc_key_enc(&self, id_enc: &[u8]) -> Vec<u8> {
        Key::new(self.vol.id, Kind::TableDoc, self.entry.ino)
            .bytes(id_enc)
            .build()
    }

    /// The range holding every document.
    pub fn doc_range(&self) -> (Vec<u8>, Vec<u8>) {
        object_range(self.vol.id, Kind::TableDoc, self.entry.ino)
    }

    /// The store keys bounding the documents whose `_id` key part lies in
    /// `iv` (an interval of [`crate::plan::id_range`]).
    pub fn doc_bounds(&self, iv: &crate::plan::Interval) -> (Vec<u8>, Vec<u8>) {
        let head = Key::new(self.vol.id, Kind::TableDoc, self.entry.ino);
        let start = head.clone().bytes_prefix(&iv.start).build();
        let end = match &iv.end {
            Some(e) => head.bytes_prefix(e).build(),
            None => self.doc_range().1,
        };
        (start, end)
    }
}

/// One document that could not be written, at its index in the request.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteError {
    pub index: usize,
    pub error: DocError,
}

/// What an insert did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InsertOutcome {
    /// Documents inserted.
    pub n: u64,
    pub errors: Vec<WriteError>,
}

/// What an update did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpdateOutcome {
    /// Documents matched.
    pub matched: u64,
    /// Documents changed.
    pub modified: u64,
    /// The `_id` of the document an upsert inserted.
    pub upserted: Option<Bson>,
    /// The document before (or, with `return_new`, after) the change, for
    /// findAndModify.
    pub document: Option<Document>,
}

/// How an update changes one document (update operators, a replacement,
/// or a pipeline): returns whether it changed anything.
pub type Change<'a> =
    dyn Fn(&mut Document, &ApplyContext) -> Result<bool, DocError> + Send + Sync + 'a;

/// The tables service.
pub struct Tables {
    pub(crate) ns: Arc<Namespace>,
    /// The tables (volume, inode) whose indexes this node is building.
    building: Arc<std::sync::Mutex<std::collections::HashSet<(u64, u64)>>>,
}

/// This node builds the indexes of one table while held.
pub(crate) struct BuildClaim {
    building: Arc<std::sync::Mutex<std::collections::HashSet<(u64, u64)>>>,
    table: (u64, u64),
}

impl Drop for BuildClaim {
    fn drop(&mut self) {
        if let Ok(mut b) = self.building.lock() {
            b.remove(&self.table);
        }
    }
}

impl Tables {
    pub fn new(ns: Arc<Namespace>) -> Arc<Tables> {
        ns.set_hook(Arc::new(changes::LogHook));
        Arc::new(Tables {
            ns,
            building: Arc::default(),
        })
    }

    pub fn namespace(&self) -> &Arc<Namespace> {
        &self.ns
    }

    pub(crate) fn volume(&self, id: u64) -> Result<VolumeRecord, DocError> {
        self.ns
            .meta()
            .map()
            .volume(id)
            .cloned()
            .ok_or_else(|| transient(format!("volume {id} is not in the cluster map yet; retry")))
    }

    /// The table at `path`, if `p` has `right` on it. `NamespaceNotFound`
    /// (26) when there is none.
    pub async fn open(
        &self,
        p: &Principal,
        path: &str,
        right: Right,
    ) -> Result<TableRef, DocError> {
        let (entry, tx) = self
            .ns
            .stat_following_tx(p, path)
            .await
            .map_err(from_meta)?;
        if entry.inode.kind != EntryKind::Table {
            return Err(DocError::new(
                codes::NAMESPACE_NOT_FOUND,
                format!(
                    "{} is a {}, not a table",
                    entry.path,
                    entry.inode.kind.name()
                ),
            ));
        }
        let vol = self.volume(entry.volume_id)?;
        let key = Key::new(vol.id, Kind::TableIndex, entry.ino).build();
        let config = match tx.peek(&key).await.map_err(from_meta)? {
            Some(b) => TableConfig::decode(&b)?,
            None => TableConfig::default(),
        };
        if config.key_format > crate::keys::KEY_FORMAT_VERSION {
            return Err(DocError::new(
                codes::INTERNAL_ERROR,
                format!(
                    "table {} is stored with key format {}, newer than this server's {}: upgrade the server",
                    entry.path,
                    config.key_format,
                    crate::keys::KEY_FORMAT_VERSION
                ),
            ));
        }
        let t = TableRef {
            entry,
            vol,
            config,
            txn: None,
        };
        authorize(p, &t, right)?;
        Ok(t)
    }

    /// Creates the table at `path` (with its missing parent directories).
    /// With `exclusive`, an existing table is `NamespaceExists` (48);
    /// without, it is opened for writing.
    pub async fn create(
        &self,
        p: &Principal,
        path: &str,
        exclusive: bool,
    ) -> Result<TableRef, DocError> {
        if let Some((parent, _)) = berth_meta::map::split_parent(path) {
            if parent != "/" {
                self.ns
                    .mkdir(p, parent, 0o755, true)
                    .await
                    .map_err(from_meta)?;
            }
        }
        match self.ns.create(p, path, EntryKind::Table, 0o644, true).await {
            Ok(_) => {}
            Err(e) if e.code == Code::Exists && !exclusive => {
                return self.open(p, path, Right::Write).await;
            }
            Err(e) if e.code == Code::Exists => {
                return Err(DocError::new(
                    codes::NAMESPACE_EXISTS,
                    format!("a table or another entry already exists at {path}"),
                ));
            }
            Err(e) => return Err(from_meta(e)),
        }
        // Its creator writes its first settings: creating needs the write
        // right where it is made (as MongoDB's readWrite role creates
        // collections), not the admin right a settings change needs.
        let t = self.open(p, path, Right::Write).await?;
        let mut tx = self.begin(&t).await?;
        let config = TableConfig {
            format: CONFIG_FORMAT,
            key_format: crate::keys::KEY_FORMAT_VERSION,
            ..t.config.clone()
        };
        tx.put(t.config_key(), config.encode());
        tx.commit().await.map_err(from_meta)?;
        Ok(TableRef { config, ..t })
    }

    /// The table at `path` for writing, created first when there is none
    /// (MongoDB creates collections on first insert).
    pub async fn open_or_create(&self, p: &Principal, path: &str) -> Result<TableRef, DocError> {
        match self.open(p, path, Right::Write).await {
            Err(e) if e.code == codes::NAMESPACE_NOT_FOUND && !exists_as_other(&e) => {
                self.create(p, path, false).await
            }
            r => r,
        }
    }

    /// [`Tables::open`] in the multi-document transaction `txn`, which
    /// also sees the tables `txn` created.
    pub async fn open_in(
        &self,
        p: &Principal,
        path: &str,
        right: Right,
        txn: &Arc<Txn>,
    ) -> Result<TableRef, DocError> {
        let norm = berth_meta::map::normalize_path(path).map_err(from_meta)?;
        let t = match txn.created(&norm) {
            Some(t) => {
                authorize(p, &t, right)?;
                t
            }
            None => self.open(p, path, right).await?,
        };
        Ok(TableRef {
            txn: Some(txn.clone()),
            ..t
        })
    }

    /// [`Tables::open_or_create`] in the multi-document transaction
    /// `txn`: a table (and database directory) it creates is part of the
    /// transaction, seen only by it until it commits and gone if it
    /// aborts, as MongoDB creates collections in transactions. Another
    /// writer creating the same table meanwhile makes the commit a write
    /// conflict.
    pub async fn open_or_create_in(
        &self,
        p: &Principal,
        path: &str,
        txn: &Arc<Txn>,
    ) -> Result<TableRef, DocError> {
        match self.open_in(p, path, Right::Write, txn).await {
            Err(e) if e.code == codes::NAMESPACE_NOT_FOUND && !exists_as_other(&e) => {}
            r => return r,
        }
        let path = berth_meta::map::normalize_path(path).map_err(from_meta)?;
        let site = self.ns.create_site(p, &path).await.map_err(from_meta)?;
        let vol = site.volume().clone();
        let mut tx = txn
            .join_volume(self.ns.meta().router(), &vol, &path)
            .await?;
        let entry = self
            .ns
            .create_in(&mut tx, p, &site, EntryKind::Table, 0o644, 0o755)
            .await
            .map_err(from_meta)?;
        let mut t = TableRef {
            entry,
            vol,
            config: TableConfig {
                format: CONFIG_FORMAT,
                key_format: crate::keys::KEY_FORMAT_VERSION,
                ..TableConfig::default()
            },
            txn: None,
        };
        authorize(p, &t, Right::Write)?;
        match tx.get(&t.config_key()).await.map_err(from_meta)? {
            // Made by another writer since the open above.
            Some(b) => t.config = TableConfig::decode(&b)?,
            None => tx.put(t.config_key(), t.config.encode()),
        }
        drop(tx);
        txn.add_created(&path, t.clone());
        t.txn = Some(txn.clone());
        Ok(t)
    }

    /// Removes the table at `path` with its documents (admin right).
    /// `false` when there was none.
    pub async fn drop_table(&self, p: &Principal, path: &str) -> Result<bool, DocError> {
        match self.open(p, path, Right::Admin).await {
            Ok(_) => {}
            Err(e) if e.code == codes::NAMESPACE_NOT_FOUND => return Ok(false),
            Err(e) => return Err(e),
        }
        // The change log's drop record commits with the removal (LogHook).
        self.ns.remove(p, path, false).await.map_err(from_meta)?;
        Ok(true)
    }

    /// Up to `limit` records of volume `vol`'s change log after `after`,
    /// read behind a barrier (every change acknowledged before the call is
    /// there), and the position they reach: the last record's, or with
    /// fewer than `limit`, the shard's applied index (no later record can
    /// appear at or below it). No authorization: callers check each
    /// record's table.
    pub async fn changes_after(
        &self,
        vol: u64,
        after: changes::Position,
        limit: usize,
    ) -> Result<(Vec<(changes::Position, Record)>, changes::Position), DocError> {
        let vol = self.volume(vol)?;
        let tx = self
            .ns
            .meta()
            .router()
            .begin(vol.shard_id)
            .await
            .map_err(from_meta)?;
        let applied = tx.applied();
        let (start, end) = changes::range_after(vol.id, after);
        let limit = limit.max(1);
        let rows = tx
            .peek_range(&start, &end, limit)
            .await
            .map_err(from_meta)?;
        let full = rows.len() == limit;
        let mut out = Vec::with_capacity(rows.len());
        for (k, v) in rows {
            let pos = changes::position_of(&k)
                .ok_or_else(|| DocError::internal("a change record's key has no position"))?;
            out.push((pos, Record::decode(&v)?));
        }
        // Every record at or below `applied` was there for the scan (it
        // was read first), and a transaction's records appear together.
        let last = out.last().map(|(pos, _)| *pos);
        let reached = match last {
            Some(pos) if full => pos,
            _ => after
                .max(changes::Position::after_index(applied))
                .max(last.unwrap_or_default()),
        };
        Ok((out, reached))
    }

    /// Trims, every `every`, the change logs of the volumes this node
    /// leads to the changes of the last `keep`.
    pub fn spawn_change_retention(
        self: &Arc<Self>,
        every: std::time::Duration,
        keep: std::time::Duration,
    ) -> tokio::task::JoinHandle<()> {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(tables) = me.upgrade() else { return };
                let before = bson::DateTime::from_millis(
                    bson::DateTime::now()
                        .timestamp_millis()
                        .saturating_sub(keep.as_millis().min(i64::MAX as u128) as i64),
                );
                tables.trim_all_changes(before).await;
            }
        })
    }

    /// Trims the change logs of the volumes this node leads to the
    /// changes made at or after `before`.
    pub async fn trim_all_changes(&self, before: bson::DateTime) -> usize {
        let map = self.ns.meta().map();
        let router = self.ns.meta().router();
        let mut trimmed = 0;
        for vol in &map.volumes {
            if router.leader_of(vol.shard_id) != Some(router.node_id()) {
                continue;
            }
            // Nothing a CDC target has yet to publish goes.
            let upto = match self.cdc_targets(vol.id).await {
                Ok(targets) => targets.iter().map(|t| t.published()).min(),
                Err(e) => {
                    tracing::debug!(volume = %vol.path, error = %e, "reading the CDC targets failed; the next sweep trims");
                    continue;
                }
            };
            let marks_before = bson::DateTime::from_millis(
                bson::DateTime::now()
                    .timestamp_millis()
                    .saturating_sub(retry::MARK_TTL_MS),
            );
            if let Err(e) = self.trim_retry_marks(vol.id, marks_before).await {
                tracing::debug!(volume = %vol.path, error = %e, "trimming retryable write marks failed; the next sweep retries");
            }
            loop {
                match self.trim_changes(vol.id, before, upto, TRIM_PAGE).await {
                    Ok(n) => {
                        trimmed += n;
                        if n < TRIM_PAGE {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(volume = %vol.path, error = %e, "trimming the change log failed; the next sweep retries");
                        break;
                    }
                }
            }
        }
        trimmed
    }

    /// Removes volume `vol`'s retryable write marks left before `before`
    /// (sessions a driver no longer retries on): returns how many. The
    /// marks are few (a session keeps those of its last `txnNumber`), so
    /// the sweep reads them all, a page at a time.
    pub async fn trim_retry_marks(
        &self,
        vol: u64,
        before: bson::DateTime,
    ) -> Result<usize, DocError> {
        let vol = self.volume(vol)?;
        let router = self.ns.meta().router();
        let (mut from, end) = retry::marks_range(vol.id);
        let mut removed = 0;
        loop {
            let mut tx = router.begin(vol.shard_id).await.map_err(from_meta)?;
            let rows = tx
                .peek_range(&from, &end, TRIM_PAGE)
                .await
                .map_err(from_meta)?;
            let mut old = 0;
            for (k, v) in &rows {
                let stale = retry::Outcome::decode(v).map_or(true, |(_, wall)| wall < before);
                if stale {
                    tx.delete(k.clone());
                    old += 1;
                }
            }
            if old > 0 {
                tx.commit().await.map_err(from_meta)?;
                removed += old;
            }
            match rows.last() {
                Some((k, _)) if rows.len() == TRIM_PAGE => {
                    from = k.clone();
                    from.push(0);
                }
                _ => return Ok(removed),
            }
        }
    }

    /// The position after every change acknowledged before the call in
    /// volume `vol`'s log (where a stream opened now starts).
    pub async fn changes_now(&self, vol: u64) -> Result<changes::Position, DocError> {
        let vol = self.volume(vol)?;
        let tx = self
            .ns
            .meta()
            .router()
            .begin(vol.shard_id)
            .await
            .map_err(from_meta)?;
        Ok(changes::Position::after_index(tx.applied()))
    }

    /// The position of the last record trimmed from volume `vol`'s change
    /// log (`None` when none was): a reader after an earlier position
    /// missed records.
    pub async fn changes_trimmed(&self, vol: u64) -> Result<Option<changes::Position>, DocError> {
        let vol = self.volume(vol)?;
        let tx = self
            .ns
            .meta()
            .router()
            .begin(vol.shard_id)
            .await
            .map_err(from_meta)?;
        let raw = tx
            .peek(&changes::trimmed_key(vol.id))
            .await
            .map_err(from_meta)?;
        Ok(raw.and_then(|b| changes::Position::from_bytes(&b)))
    }

    /// Removes volume `vol`'s change records written before `before`
    /// (wall time) and at or below `upto` (what every CDC target
    /// published), at most `limit` of them: returns how many. Only the
    /// oldest records are looked at; trimming stops at the first one to
    /// keep.
    pub async fn trim_changes(
        &self,
        vol: u64,
        before: bson::DateTime,
        upto: Option<changes::Position>,
        limit: usize,
    ) -> Result<usize, DocError> {
        let vol = self.volume(vol)?;
        let router = self.ns.meta().router();
        let mut tx = router.begin(vol.shard_id).await.map_err(from_meta)?;
        let (start, end) = changes::range_after(vol.id, changes::Position::default());
        let rows = tx
            .peek_range(&start, &end, limit.max(1))
            .await
            .map_err(from_meta)?;
        let mut cut = None;
        let mut n = 0;
        for (k, v) in &rows {
            let old = Record::decode(v).map(|c| c.wall < before).unwrap_or(true);
            let published = upto.is_none_or(|u| changes::position_of(k).is_some_and(|p| p <= u));
            if !old || !published {
                break;
            }
            cut = Some(k.clone());
            n += 1;
        }
        let Some(last) = cut else { return Ok(0) };
        let pos = changes::position_of(&last)
            .ok_or_else(|| DocError::internal("a change record's key has no position"))?;
        let mut stop = last;
        stop.push(0);
        tx.delete_range(start, stop);
        tx.put(changes::trimmed_key(vol.id), pos.to_bytes().to_vec());
        tx.commit().await.map_err(from_meta)?;
        Ok(n)
    }

    /// The names of the tables directly in directory `dir` (none when it
    /// does not exist).
    pub async fn list(&self, p: &Principal, dir: &str) -> Result<Vec<String>, DocError> {
        self.list_entries(p, dir, Some(EntryKind::Table)).await
    }

    /// The names of the entries directly in `dir` of `kind` (every kind
    /// with `None`); empty when `dir` does not exist.
    pub async fn list_entries(
        &self,
        p: &Principal,
        dir: &str,
        kind: Option<EntryKind>,
    ) -> Result<Vec<String>, DocError> {
        let mut out = Vec::new();
        let mut after = String::new();
        loop {
            let (page, more) = match self.ns.list(p, dir, &after, 1000).await {
                Ok(x) => x,
                Err(e) if e.code == Code::NotFound => return Ok(out),
                Err(e) => return Err(from_meta(e)),
            };
            if let Some(last) = page.last() {
                after = last.name.clone();
            }
            out.extend(
                page.into_iter()
                    .filter(|e| kind.is_none_or(|k| e.inode.kind == k))
                    .map(|e| e.name),
            );
            if !more {
                return Ok(out);
            }
        }
    }

    /// Creates the directory MongoDB databases live in (`--mongo-root`) at
    /// the cluster's first start with it: world-writable with the sticky
    /// bit, like `/tmp`, so any principal may create a database (a
    /// directory it then owns) and none may remove another's. Done once per
    /// cluster and path: a root the operator removes later is not made
    /// again.
    pub async fn ensure_root(&self, path: &str) -> Result<(), Error> {
        let path = berth_meta::map::normalize_path(path)?;
        let system = berth_fs::volumes::system_principal();
        let exists = async {
            match self.ns.stat(&system, &path).await {
                Ok(_) => Ok(true),
                Err(e) if e.code == Code::NotFound => Ok(false),
                Err(e) => Err(e),
            }
        };
        let make = async {
            if let Some((parent, _)) = berth_meta::map::split_parent(&path) {
                self.ns.mkdir(&system, parent, 0o755, true).await?;
            }
            match self.ns.mkdir(&system, &path, 0o1777, false).await {
                Err(e) if e.code != Code::Exists => Err(e),
                _ => Ok(()),
            }
        };
        let step = format!("mongo root {path}");
        self.ns.meta().setup_once(&step, exists, make).await
    }

    /// The transaction a read or write of documents runs in: the table's
    /// multi-document transaction when it has one, else its own (with a
    /// read barrier).
    async fn work(&self, t: &TableRef) -> Result<Work, DocError> {
        match &t.txn {
            Some(txn) => Ok(Work::Joined(txn.join(self.ns.meta().router(), t).await?)),
            None => Ok(Work::Own(self.begin(t).await?)),
        }
    }

    pub(crate) async fn begin(&self, t: &TableRef) -> Result<Tx, DocError> {
        self.ns
            .meta()
            .router()
            .begin(t.vol.shard_id)
            .await
            .map_err(from_meta)
    }

    /// Inserts documents, giving those without an `_id` a new ObjectId
    /// (first field, as MongoDB does). A duplicate `_id` is a write error
    /// (11000) of that document; `ordered` stops at the first error.
    pub async fn insert(
        &self,
        p: &Principal,
        t: &TableRef,
        docs: Vec<Document>,
        ordered: bool,
    ) -> Result<InsertOutcome, DocError> {
        self.insert_retryable(p, t, docs, ordered, None).await
    }

    /// [`Tables::insert`] of a retryable write: document `i` is statement
    /// `retry.index + i`; one whose mark is there was inserted by an
    /// earlier try and counts as inserted without being written again.
    pub async fn insert_retryable(
        &self,
        p: &Principal,
        t: &TableRef,
        docs: Vec<Document>,
        ordered: bool,
        retry: Option<Stmt<'_>>,
    ) -> Result<InsertOutcome, DocError> {
        authorize(p, t, Right::Write)?;
        let mut out = InsertOutcome::default();
        let mut prepared: Vec<(usize, Prepared)> = Vec::new();
        for (i, doc) in docs.into_iter().enumerate() {
            match prepare_insert(t, doc) {
                Ok(d) => prepared.push((i, d)),
                Err(e) => {
                    out.errors.push(WriteError { index: i, error: e });
                    if ordered {
                        break;
                    }
                }
            }
        }
        // With ordered and an early error, only the documents before it go in.
        let stop = if ordered {
            out.errors.first().map(|e| e.index)
        } else {
            None
        };
        let mut batch = Vec::new();
        let mut bytes = 0;
        let mut stopped = false;
        for item in prepared {
            if stop.is_some_and(|s| item.0 > s) {
                break;
            }
            bytes += item.1.value.len();
            batch.push(item);
            if bytes >= INSERT_TXN_BYTES {
                stopped = self
                    .insert_batch(t, &mut batch, ordered, &mut out, retry)
                    .await?;
                bytes = 0;
                if stopped {
                    break;
                }
            }
        }
        if !stopped && !batch.is_empty() {
            self.insert_batch(t, &mut batch, ordered, &mut out, retry)
                .await?;
        }
        out.errors.sort_by_key(|e| e.index);
        if ordered {
            out.errors.truncate(1);
        }
        Ok(out)
    }

    /// One transaction of an insert, conditional on every `_id` being
    /// free; a taken `_id` is that document's write error. Returns whether
    /// an ordered insert stopped.
    async fn insert_batch(
        &self,
        t: &TableRef,
        batch: &mut Vec<(usize, Prepared)>,
        ordered: bool,
        out: &mut InsertOutcome,
        retry: Option<Stmt<'_>>,
    ) -> Result<bool, DocError> {
        let items = std::mem::take(batch);
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let mut tx = self.work(t).await?;
            let config = read_config(&mut tx, t).await?;
            let mut taken = Vec::new();
            let mut writes = 0u64;
            let mut seen = std::collections::HashSet::new();
            let mut w = Writes::default();
            if let Some(r) = retry {
                let (from, to) = r.stale_range(t.vol.id);
                tx.delete_range(from, to);
            }
            for (i, d) in &items {
                let mark = retry.map(|r| {
                    Stmt {
                        index: r.index + *i as u64,
                        ..r
                    }
                    .key(t.vol.id)
                });
                if let Some(m) = &mark {
                    if tx.get(m).await.map_err(from_meta)?.is_some() {
                        writes += 1; // applied by an earlier try
                        continue;
                    }
                }
                let dup =
                    seen.contains(&d.key) || tx.get(&d.key).await.map_err(from_meta)?.is_some();
                let result = if dup {
                    Err(duplicate_id(t, &d.id))
                } else {
                    let after = Some((&d.doc, d.value.as_slice()));
                    write_doc(&mut tx, t, &config, &mut w, &d.key, None, after).await
                };
                if let Err(error) = result {
                    // A duplicate, or past the volume's quota: this
                    // document's error, the others go on (unordered).
                    taken.push(WriteError { index: *i, error });
                    if ordered {
                        break;
                    }
                    continue;
                }
                seen.insert(d.key.clone());
                record(&mut tx, t, OpType::Insert, &d.id, Some(&d.doc), None)?;
                if let Some(m) = mark {
                    let done = retry::Outcome {
                        n: 1,
                        ..Default::default()
                    };
                    tx.put(m, done.encode(bson::DateTime::now()));
                }
                writes += 1;
            }
            finish_writes(&mut tx, t, w).await?;
            match tx.commit().await? {
                Commit::Done(_) => {
                    out.n += writes;
                    let stopped = ordered && !taken.is_empty();
                    out.errors.extend(taken);
                    return Ok(stopped);
                }
                Commit::Conflict => continue,
            }
        }
        Err(transient("too much contention on the table; retry"))
    }

    /// One page of documents in `_id` order, after the key `after`: the
    /// documents with their keys, and whether more may follow.
    pub async fn page(
        &self,
        p: &Principal,
        t: &TableRef,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<(Vec<u8>, Document)>, bool), DocError> {
        let (start, end) = t.doc_range();
        let start = match after {
            Some(k) => {
                let mut k = k.to_vec();
                k.push(0);
                k
            }
            None => start,
        };
        self.page_between(p, t, &start, &end, limit).await
    }

    /// Up to `limit` documents with keys in `[start, end)`, in key (`_id`)
    /// order, with their keys, and whether there may be more.
    pub async fn page_between(
        &self,
        p: &Principal,
        t: &TableRef,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<(Vec<(Vec<u8>, Document)>, bool), DocError> {
        authorize(p, t, Right::Read)?;
        let tx = self.work(t).await?;
        let limit = limit.max(1);
        let rows = tx.peek_range(start, end, limit).await.map_err(from_meta)?;
        let more = rows.len() == limit;
        let mut out = Vec::with_capacity(rows.len());
        for (k, v) in rows {
            out.push((k.to_vec(), decode_doc(&v)?));
        }
        Ok((out, more))
    }

    /// How many documents match `filter`, after skipping `skip`, at most
    /// `limit` (0: no limit), without holding them: an empty filter counts
    /// keys (no document is read), one pinning `_id` reads those keys,
    /// any other reads the table page by page.
    pub async fn count(
        &self,
        p: &Principal,
        t: &TableRef,
        filter: &Filter,
        skip: u64,
        limit: u64,
    ) -> Result<u64, DocError> {
        authorize(p, t, Right::Read)?;
        let clamp = |n: u64| {
            let n = n.saturating_sub(skip);
            if limit > 0 {
                n.min(limit)
            } else {
                n
            }
        };
        if let Some(ids) = filter.id_candidates() {
            let found = self.by_ids(p, t, &ids).await?;
            return Ok(clamp(
                found.iter().filter(|(_, d)| filter.matches(d)).count() as u64,
            ));
        }
        let (start, end) = t.doc_range();
        let enough = (limit > 0).then(|| skip.saturating_add(limit));
        let mut from = start;
        let mut n = 0u64;
        if filter.matches_all() {
            loop {
                let tx = self.work(t).await?;
                let keys = tx
                    .peek_keys(&from, &end, COUNT_PAGE)
                    .await
                    .map_err(from_meta)?;
                n += keys.len() as u64;
                match keys.last() {
                    Some(k) if keys.len() == COUNT_PAGE && enough.is_none_or(|e| n < e) => {
                        from = k.clone();
                        from.push(0);
                    }
                    _ => return Ok(clamp(n)),
                }
            }
        }
        let mut after: Option<Vec<u8>> = None;
        loop {
            let (page, more) = self.page(p, t, after.as_deref(), SCAN_PAGE).await?;
            if let Some((k, _)) = page.last() {
                after = Some(k.clone());
            }
            n += page.iter().filter(|(_, d)| filter.matches(d)).count() as u64;
            if !more || enough.is_some_and(|e| n >= e) {
                return Ok(clamp(n));
            }
        }
    }

    /// The documents whose `_id` is one of `ids` (a filter's
    /// [`Filter::id_candidates`]), read by key, in `_id` order, with their
    /// keys. The caller still applies its filter.
    pub async fn by_ids(
        &self,
        p: &Principal,
        t: &TableRef,
        ids: &[Bson],
    ) -> Result<Vec<(Vec<u8>, Document)>, DocError> {
        authorize(p, t, Right::Read)?;
        let mut keys: Vec<Vec<u8>> = ids.iter().map(|id| t.doc_key(id)).collect();
        keys.sort();
        keys.dedup();
        let tx = self.work(t).await?;
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some(raw) = tx.peek(&k).await.map_err(from_meta)? {
                out.push((k, decode_doc(&raw)?));
            }
        }
        Ok(out)
    }

    /// The documents matching `filter`, in `_id` order, at most `limit`
    /// (0: all) after skipping `skip` matches: for callers that need a
    /// whole result (count, distinct, updates by filter). A filter that
    /// pins `_id` reads those documents by key.
    pub async fn select(
        &self,
        p: &Principal,
        t: &TableRef,
        filter: &Filter,
        skip: u64,
        limit: u64,
    ) -> Result<Vec<(Vec<u8>, Document, MatchDetails)>, DocError> {
        let mut out = Vec::new();
        let mut skipped = 0;
        if let Some(ids) = filter.id_candidates() {
            for (k, d) in self.by_ids(p, t, &ids).await? {
                if let Some(m) = filter.match_details(&d) {
                    if skipped < skip {
                        skipped += 1;
                        continue;
                    }
                    out.push((k, d, m));
                    if limit > 0 && out.len() as u64 >= limit {
                        break;
                    }
                }
            }
            return Ok(out);
        }
        let mut after: Option<Vec<u8>> = None;
        loop {
            let (page, more) = self.page(p, t, after.as_deref(), SCAN_PAGE).await?;
            if let Some((k, _)) = page.last() {
                after = Some(k.clone());
            }
            for (k, d) in page {
                if let Some(m) = filter.match_details(&d) {
                    if skipped < skip {
                        skipped += 1;
                        continue;
                    }
                    out.push((k, d, m));
                    if limit > 0 && out.len() as u64 >= limit {
                        return Ok(out);
                    }
                }
            }
            if !more {
                return Ok(out);
            }
        }
    }

    /// The documents matching `filter` read through an index (`plan`):
    /// its intervals one after the other (in the index's order, or the
    /// reverse when the plan goes backward), or, when the plan merges them
    /// for a sort, the runs merged by the key after their point prefixes
    /// (in the sort's order). No duplicates: a multikey document is
    /// returned at its first entry. At most `stop_after` documents (when
    /// the caller needs no more, e.g. a limit over a sort the index
    /// provides) and at most `bytes_max` bytes of documents (error 292
    /// beyond). Also returns the index entries and documents examined.
    pub async fn index_scan(
        &self,
        p: &Principal,
        t: &TableRef,
        plan: &crate::plan::IndexPlan,
        filter: &Filter,
        stop_after: Option<usize>,
        bytes_max: usize,
    ) -> Result<(Vec<Document>, u64, u64), DocError> {
        authorize(p, t, Right::Read)?;
        let mut acc = Scanned::new(stop_after, bytes_max);
        let (keys, docs) = self.scan_into(t, plan, filter, &mut acc).await?;
        Ok((acc.out, keys, docs))
    }

    /// The documents matching `filter` read through each of `plans` in
    /// turn (the branches of an `$or`, `plan::QueryPlan::Or`), each
    /// document once (by `_id`) however many branches reach it, in no
    /// particular order; within `stop_after` and `bytes_max` as
    /// [`Tables::index_scan`]. Also returns each plan's entries and
    /// documents examined.
    pub async fn union_scan(
        &self,
        p: &Principal,
        t: &TableRef,
        plans: &[crate::plan::IndexPlan],
        filter: &Filter,
        stop_after: Option<usize>,
        bytes_max: usize,
    ) -> Result<(Vec<Document>, Vec<(u64, u64)>), DocError> {
        authorize(p, t, Right::Read)?;
        let mut acc = Scanned::new(stop_after, bytes_max);
        let mut examined = Vec::with_capacity(plans.len());
        for plan in plans {
            examined.push(self.scan_into(t, plan, filter, &mut acc).await?);
        }
        Ok((acc.out, examined))
    }

    /// Reads `plan`'s entries into `acc` (see [`Tables::index_scan`]);
    /// returns the entries and documents it examined.
    async fn scan_into(
        &self,
        t: &TableRef,
        plan: &crate::plan::IndexPlan,
        filter: &Filter,
        acc: &mut Scanned,
    ) -> Result<(u64, u64), DocError> {
        let mut runs = runs(t, plan.index_id, &plan.intervals, plan.backward);
        if plan.backward && !plan.merge {
            // The intervals are in key order; backward, the last comes first.
            runs.reverse();
        }
        let page = match plan.merge {
            true => (SCAN_PAGE / runs.len().max(1)).clamp(8, SCAN_PAGE),
            false => SCAN_PAGE,
        };
        let (mut keys, mut docs) = (0u64, 0u64);
        let mut tx: Option<Work> = None;
        let mut current = 0;
        loop {
            if acc.full() {
                return Ok((keys, docs));
            }
            // The run the next entry comes from, its pages read as needed
            // (the documents are read in the transaction of the last page).
            let next = if plan.merge {
                if runs.iter().any(|r| r.rows.is_empty() && r.more) {
                    // A transaction's view is taken again only once
                    // released (one operation holds it at a time).
                    drop(tx.take());
                    let fresh = self.work(t).await?;
                    for r in runs.iter_mut().filter(|r| r.rows.is_empty() && r.more) {
                        r.fill(&fresh, page).await?;
                    }
                    tx = Some(fresh);
                }
                let heads = runs
                    .iter()
                    .enumerate()
                    .filter_map(|(i, r)| r.rows.front().map(|(k, _)| (i, r.order_key(k))));
                let head = match plan.backward {
                    false => heads.min_by(|a, b| a.1.cmp(b.1)),
                    true => heads.max_by(|a, b| a.1.cmp(b.1)),
                };
                head.map(|(i, _)| i)
            } else {
                loop {
                    let Some(r) = runs.get_mut(current) else {
                        break None;
                    };
                    if r.rows.is_empty() && r.more {
                        // A transaction's view is taken again only once
                        // released (one operation holds it at a time).
                        drop(tx.take());
                        let fresh = self.work(t).await?;
                        r.fill(&fresh, page).await?;
                        tx = Some(fresh);
                    }
                    if r.rows.is_empty() {
                        current += 1;
                        continue;
                    }
                    break Some(current);
                }
            };
            let (Some(i), Some(tx)) = (next, tx.as_ref()) else {
                return Ok((keys, docs));
            };
            let Some((_, value)) = runs[i].rows.pop_front() else {
                return Err(DocError::internal("an index run chosen with no entry"));
            };
            keys += 1;
            let (raw, d) = if plan.on_id() {
                // The `_id` index's entries are the documents.
                let d = decode_doc(&value)?;
                if !acc.seen.insert(id_encoding(d.get("_id"))) {
                    continue;
                }
                (value, d)
            } else {
                if !acc.seen.insert(value.clone()) {
                    continue;
                }
                let doc_key = Key::new(t.vol.id, Kind::TableDoc, t.entry.ino)
                    .bytes(&value)
                    .build();
                // Deleted since the entry was read: skip it.
                let Some(raw) = tx.peek(&doc_key).await.map_err(from_meta)? else {
                    continue;
                };
                let d = decode_doc(&raw)?;
                (raw, d)
            };
            docs += 1;
            if filter.matches(&d) {
                acc.push(d, raw.len())?;
            }
        }
    }

    /// Applies `update` to the documents matching `filter` (all with
    /// `multi`, else the first in `_id` order), each in its own conditional transaction (a document changed
    /// meanwhile is read and matched again). With `upsert` and no match,
    /// inserts the filter's equality fields changed by the update.
    #[allow(clippy::too_many_arguments)]
    pub async fn update(
        &self,
        p: &Principal,
        t: &TableRef,
        filter: &Filter,
        filter_doc: &Document,
        update: &Change<'_>,
        multi: bool,
        upsert: bool,
        now: bson::DateTime,
        return_new: bool,
        replacement: bool,
    ) -> Result<UpdateOutcome, DocError> {
        let opts = (multi, upsert, now, return_new, replacement);
        self.update_with(p, t, filter, filter_doc, update, opts, None)
            .await
    }

    /// [`Tables::update`] of one document (`multi` false) as statement
    /// `stmt` of a retryable write: when its mark is there, an earlier try
    /// applied it and its outcome is returned without applying it again.
    #[allow(clippy::too_many_arguments)]
    pub async fn update_retryable(
        &self,
        p: &Principal,
        t: &TableRef,
        filter: &Filter,
        filter_doc: &Document,
        update: &Change<'_>,
        upsert: bool,
        now: bson::DateTime,
        replacement: bool,
        return_new: bool,
        stmt: Stmt<'_>,
    ) -> Result<UpdateOutcome, DocError> {
        authorize(p, t, Right::Write)?;
        if let Some(o) = self.retried(t, &stmt).await? {
            return Ok(UpdateOutcome {
                matched: o.n,
                modified: o.modified,
                upserted: o.upserted,
                document: o.image,
            });
        }
        let opts = (false, upsert, now, return_new, replacement);
        self.update_with(p, t, filter, filter_doc, update, opts, Some(stmt))
            .await
    }

    /// The outcome a retryable statement's mark holds, if an earlier try
    /// applied it.
    pub async fn retried(
        &self,
        t: &TableRef,
        stmt: &Stmt<'_>,
    ) -> Result<Option<retry::Outcome>, DocError> {
        let tx = self.work(t).await?;
        match tx.peek(&stmt.key(t.vol.id)).await.map_err(from_meta)? {
            Some(raw) => Ok(Some(retry::Outcome::decode(&raw)?.0)),
            None => Ok(None),
        }
    }

    /// `opts`: multi, upsert, now, return_new, replacement.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    async fn update_with(
        &self,
        p: &Principal,
        t: &TableRef,
        filter: &Filter,
        filter_doc: &Document,
        update: &Change<'_>,
        opts: (bool, bool, bson::DateTime, bool, bool),
        stmt: Option<Stmt<'_>>,
    ) -> Result<UpdateOutcome, DocError> {
        let (multi, upsert, now, return_new, replacement) = opts;
        authorize(p, t, Right::Write)?;
        let mark = stmt.map(|s| s.key(t.vol.id));
        let mut out = UpdateOutcome::default();
        let mut after = None;
        'pages: loop {
            let (keys, more) = self.match_page(p, t, filter, &mut after).await?;
            for key in keys {
                for attempt in 0..TX_RETRIES_MAX {
                    backoff(attempt).await;
                    let mut tx = self.work(t).await?;
                    let config = read_config(&mut tx, t).await?;
                    let Some(raw) = tx.get(&key).await.map_err(from_meta)? else {
                        break; // deleted meanwhile
                    };
                    let before = decode_doc(&raw)?;
                    let Some(details) = filter.match_details(&before) else {
                        break; // no longer matches
                    };
                    let mut after = before.clone();
                    let ctx = ApplyContext {
                        now,
                        positional: details.array_index,
                        inserting: false,
                    };
                    let changed = update(&mut after, &ctx)?;
                    if changed {
                        if after.get("_id") != before.get("_id") {
                            return Err(DocError::new(
                            codes::IMMUTABLE_FIELD,
                            "Performing an update on the path '_id' would modify the immutable field '_id'",
                        ));
                        }
                        let value = encode_doc(&after)?;
                        let mut w = Writes::default();
                        let (old, new) = (Some((&before, &raw[..])), Some((&after, &value[..])));
                        write_doc(&mut tx, t, &config, &mut w, &key, old, new).await?;
                        finish_writes(&mut tx, t, w).await?;
                        let id = after.get("_id").cloned().unwrap_or(Bson::Null);
                        if replacement {
                            record(&mut tx, t, OpType::Replace, &id, Some(&after), None)?;
                        } else {
                            let desc = changes::update_description(&before, &after);
                            record(&mut tx, t, OpType::Update, &id, Some(&after), Some(desc))?;
                        }
                    }
                    if let Some(m) = &mark {
                        if tx.get(m).await.map_err(from_meta)?.is_some() {
                            // A concurrent try of the same statement applied it.
                            return Err(transient("the statement is being retried concurrently"));
                        }
                        let done = retry::Outcome {
                            n: 1,
                            modified: u64::from(changed),
                            upserted: None,
                            image: stmt.filter(|s| s.image).map(|_| {
                                if return_new {
                                    after.clone()
                                } else {
                                    before.clone()
                                }
                            }),
                        };
                        put_mark(&mut tx, t, stmt, m.clone(), done, now);
                    }
                    match tx.commit().await? {
                        Commit::Done(_) => {
                            out.matched += 1;
                            out.modified += u64::from(changed);
                            out.document = Some(if return_new { after } else { before });
                            if !multi {
                                break 'pages;
                            }
                            break;
                        }
                        Commit::Conflict if attempt + 1 == TX_RETRIES_MAX => {
                            return Err(transient("too much contention on the document; retry"))
                        }
                        Commit::Conflict => continue,
                    }
                }
            }
            if !more {
                break;
            }
        }
        if out.matched == 0 && upsert {
            let mut doc = crate::update::upsert_seed(filter_doc);
            let ctx = ApplyContext {
                now,
                positional: None,
                inserting: true,
            };
            update(&mut doc, &ctx)?;
            let d = prepare_insert(t, doc)?;
            let (id, key, value) = (d.id.clone(), d.key.clone(), d.value.clone());
            let mut tx = self.work(t).await?;
            let config = read_config(&mut tx, t).await?;
            if tx.get(&key).await.map_err(from_meta)?.is_some() {
                return Err(duplicate_id(t, &id));
            }
            let mut w = Writes::default();
            let after = Some((&d.doc, value.as_slice()));
            write_doc(&mut tx, t, &config, &mut w, &key, None, after).await?;
            finish_writes(&mut tx, t, w).await?;
            record(&mut tx, t, OpType::Insert, &id, Some(&d.doc), None)?;
            if let Some(m) = mark {
                let done = retry::Outcome {
                    n: 0,
                    modified: 0,
                    upserted: Some(id.clone()),
                    image: stmt
                        .filter(|s| s.image && return_new)
                        .map(|_| d.doc.clone()),
                };
                put_mark(&mut tx, t, stmt, m, done, now);
            }
            match tx.commit().await? {
                Commit::Done(_) => {}
                Commit::Conflict => return Err(duplicate_id(t, &id)),
            }
            out.upserted = Some(id);
            if return_new {
                out.document = Some(decode_doc(&value)?);
            }
        }
        Ok(out)
    }

    /// Deletes the documents matching `filter` (the first only with
    /// `one`), each in a transaction conditional on it being unchanged,
    /// reading the table a page at a time. Returns how many, and the first
    /// deleted document.
    pub async fn delete(
        &self,
        p: &Principal,
        t: &TableRef,
        filter: &Filter,
        one: bool,
    ) -> Result<(u64, Option<Document>), DocError> {
        self.delete_with(p, t, filter, one, None).await
    }

    /// Deletes the first document matching `filter` as statement `stmt`
    /// of a retryable write: returns how many it deleted (0 or 1), the
    /// recorded count when an earlier try applied it.
    pub async fn delete_one_retryable(
        &self,
        p: &Principal,
        t: &TableRef,
        filter: &Filter,
        stmt: Stmt<'_>,
    ) -> Result<(u64, Option<Document>), DocError> {
        authorize(p, t, Right::Write)?;
        if let Some(o) = self.retried(t, &stmt).await? {
            return Ok((o.n, o.image));
        }
        self.delete_with(p, t, filter, true, Some(stmt)).await
    }

    /// Deletes the documents matching `filter` (the first only with
    /// `one`), each in its own transaction, re-read and matched again
    /// there: returns how many, and the first as it was deleted.
    async fn delete_with(
        &self,
        p: &Principal,
        t: &TableRef,
        filter: &Filter,
        one: bool,
        stmt: Option<Stmt<'_>>,
    ) -> Result<(u64, Option<Document>), DocError> {
        authorize(p, t, Right::Write)?;
        let mark = stmt.map(|s| s.key(t.vol.id));
        let (mut n, mut first) = (0u64, None);
        let mut after = None;
        loop {
            let (keys, more) = self.match_page(p, t, filter, &mut after).await?;
            for key in keys {
                for attempt in 0..TX_RETRIES_MAX {
                    backoff(attempt).await;
                    let mut tx = self.work(t).await?;
                    let Some(raw) = tx.get(&key).await.map_err(from_meta)? else {
                        break; // deleted meanwhile
                    };
                    let now = decode_doc(&raw)?;
                    if !filter.matches(&now) {
                        break; // no longer matches
                    }
                    let mut w = Writes::default();
                    remove_doc(&mut tx, t, &mut w, key.clone(), &raw, &now).await?;
                    finish_writes(&mut tx, t, w).await?;
                    if let Some(m) = &mark {
                        if tx.get(m).await.map_err(from_meta)?.is_some() {
                            return Err(transient("the statement is being retried concurrently"));
                        }
                        let done = retry::Outcome {
                            n: 1,
                            image: stmt.filter(|s| s.image).map(|_| now.clone()),
                            ..Default::default()
                        };
                        put_mark(&mut tx, t, stmt, m.clone(), done, bson::DateTime::now());
                    }
                    match tx.commit().await? {
                        Commit::Done(_) => {
                            n += 1;
                            first = first.or(Some(now));
                            if one {
                                return Ok((n, first));
                            }
                            break;
                        }
                        Commit::Conflict if attempt + 1 == TX_RETRIES_MAX => {
                            return Err(transient("too much contention on the document; retry"))
                        }
                        Commit::Conflict => continue,
                    }
                }
            }
            if !more {
                return Ok((n, first));
            }
        }
    }

    /// The keys of the next documents that match `filter`, after `after`
    /// (updated to where the page ended), and whether more may follow: the
    /// pinned `_id`s' documents in one page, else a page of the table.
    /// A write of a matched document keeps its key, so writing as pages
    /// are read visits each document once.
    async fn match_page(
        &self,
        p: &Principal,
        t: &TableRef,
        filter: &Filter,
        after: &mut Option<Vec<u8>>,
    ) -> Result<(Vec<Vec<u8>>, bool), DocError> {
        if let Some(ids) = filter.id_candidates() {
            if after.is_some() {
                return Ok((Vec::new(), false));
            }
            *after = Some(Vec::new());
            let found = self.by_ids(p, t, &ids).await?;
            let keys = found
                .into_iter()
                .filter(|(_, d)| filter.matches(d))
                .map(|(k, _)| k)
                .collect();
            return Ok((keys, false));
        }
        let (page, more) = self.page(p, t, after.as_deref(), SCAN_PAGE).await?;
        if let Some((k, _)) = page.last() {
            *after = Some(k.clone());
        }
        let keys = page
            .into_iter()
            .filter(|(_, d)| filter.matches(d))
            .map(|(k, _)| k)
            .collect();
        Ok((keys, more))
    }

    /// Creates indexes from `createIndexes` specs (write right, as
    /// MongoDB's `readWrite` role), making the entries of the documents
    /// already there page by page (each page one conditional transaction,
    /// so writes go on meanwhile and maintain the new indexes themselves);
    /// an index is used by queries once its entries are complete. A spec
    /// naming an existing index with the same keys and options is already
    /// there (85/86 when they differ). A unique index that the documents
    /// violate is removed again and the error is 11000. Returns the index
    /// count before and after (the `_id` index included).
    pub async fn create_indexes(
        &self,
        p: &Principal,
        path: &str,
        specs: &[Document],
    ) -> Result<(usize, usize), DocError> {
        let mut made = Vec::new();
        // Asked again for indexes whose build was cut short: built here.
        let mut unfinished = Vec::new();
        let mut before = 0;
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let t = self.open(p, path, Right::Write).await?;
            let mut tx = self.begin(&t).await?;
            let mut config = read_config(&mut tx, &t).await?;
            before = config.indexes.len() + 1;
            made.clear();
            unfinished.clear();
            for spec in specs {
                let id = config.next_index_id.max(1);
                let def = IndexDef::parse(id, spec)?;
                match config
                    .indexes
                    .iter()
                    .find(|i| i.name == def.name || i.keys == def.keys)
                {
                    Some(i) if i.name == def.name && i.same_as(&def) => {
                        if !i.ready {
                            unfinished.push(i.id);
                        }
                        continue;
                    }
                    Some(i) if i.name == def.name => {
                        return Err(DocError::new(
                            codes::INDEX_KEY_SPECS_CONFLICT,
                            format!(
                                "an index named {} exists with other keys or options",
                                i.name
                            ),
                        ))
                    }
                    Some(i) if i.same_as(&def) => {
                        return Err(DocError::new(
                            codes::INDEX_OPTIONS_CONFLICT,
                            format!("index {} has these keys and options already", i.name),
                        ))
                    }
                    _ => {}
                }
                if config.indexes.len() >= crate::index::INDEXES_MAX {
                    return Err(DocError::new(
                        crate::index::CANNOT_CREATE_INDEX,
                        format!(
                            "a table has at most {} indexes",
                            crate::index::INDEXES_MAX + 1
                        ),
                    ));
                }
                config.next_index_id = id + 1;
                made.push(id);
                config.indexes.push(def);
            }
            if made.is_empty() && unfinished.is_empty() {
                return Ok((before, before));
            }
            if made.is_empty() {
                break; // only unfinished builds: nothing to add
            }
            let ttl = config
                .indexes
                .iter()
                .any(|d| made.contains(&d.id) && d.expire_after_secs().is_some());
            if ttl {
                Tables::register_ttl_table(&mut tx, &t, &t.entry.path);
            }
            // Registered for resuming, with the indexes that need building.
            crate::builds::register(&mut tx, &t, &t.entry.path);
            tx.put(t.config_key(), config.encode());
            if let Commit::Done(_) = tx.commit().await.map_err(from_meta)? {
                break;
            }
            made.clear();
        }
        if made.is_empty() && unfinished.is_empty() {
            return Err(transient(
                "too much contention on the table's settings; retry",
            ));
        }
        let t = self.open(p, path, Right::Write).await?;
        let ids: Vec<u64> = made.iter().chain(&unfinished).copied().collect();
        let _claim = self.claim_build(&t);
        if let Err(e) = self.build_indexes(&t, &ids).await {
            if [
                codes::DUPLICATE_KEY,
                codes::INDEX_NOT_FOUND,
                codes::OUT_OF_DISK_SPACE,
            ]
            .contains(&e.code)
            {
                // Documents violate a unique index, it was dropped, or its
                // entries do not fit in the volume's quota.
                self.remove_indexes(&t, &ids).await?;
                self.finish_builds(&t, &ids).await?;
            }
            // Otherwise (a transient failure) the build stays registered
            // and resumes where it got to.
            return Err(e);
        }
        let after = self.set_ready(&t, &ids).await?;
        self.finish_builds(&t, &ids).await?;
        Ok((before, after))
    }

    /// Claims the build of `t`'s indexes on this node (`None` when it is
    /// running here already).
    pub(crate) fn claim_build(&self, t: &TableRef) -> Option<BuildClaim> {
        let table = (t.vol.id, t.entry.ino);
        let mut b = self.building.lock().ok()?;
        b.insert(table).then(|| BuildClaim {
            building: self.building.clone(),
            table,
        })
    }

    /// After the indexes `ids` of `t` were made ready or removed: their
    /// progress goes, and the table's registry entry once none of its
    /// indexes is building.
    pub(crate) async fn finish_builds(&self, t: &TableRef, ids: &[u64]) -> Result<(), DocError> {
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let mut tx = self.begin(t).await?;
            let config = read_config(&mut tx, t).await?;
            for id in ids {
                tx.delete(crate::builds::progress_key(t.vol.id, t.entry.ino, *id));
            }
            if config.indexes.iter().all(|i| i.ready) {
                crate::builds::unregister(&mut tx, t);
            }
            if let Commit::Done(_) = tx.commit().await.map_err(from_meta)? {
                return Ok(());
            }
        }
        Err(transient(
            "too much contention on the table's settings; retry",
        ))
    }

    /// Makes the entries of the indexes `ids` for every document, a page
    /// per transaction, each conditional on the page's documents (as the
    /// page read them) and the table's settings.
    pub(crate) async fn build_indexes(&self, t: &TableRef, ids: &[u64]) -> Result<(), DocError> {
        let (start, end) = t.doc_range();
        // Where an earlier run of the build got to: the least progress of
        // the indexes (one without progress starts over).
        let mut from = start.clone();
        {
            let tx = self.begin(t).await?;
            let mut least: Option<Vec<u8>> = None;
            for id in ids {
                let key = crate::builds::progress_key(t.vol.id, t.entry.ino, *id);
                match tx.peek(&key).await.map_err(from_meta)? {
                    Some(at) if at.as_slice() >= start.as_slice() => {
                        least = Some(least.map_or(at.clone(), |l| l.min(at)));
                    }
                    _ => {
                        least = Some(start.clone());
                        break;
                    }
                }
            }
            if let Some(l) = least {
                from = l;
            }
        }
        // Documents per page: doubled after a page commits, halved after a
        // conflict with a concurrent write, so a quiet table is built in
        // few large transactions and a busy one still makes progress.
        let mut page = SCAN_PAGE;
        loop {
            let mut attempt = 0;
            let (next, more) = loop {
                backoff(attempt).await;
                let mut tx = self.begin(t).await?;
                let mut config = read_config(&mut tx, t).await?;
                config.indexes.retain(|i| ids.contains(&i.id));
                if config.indexes.len() != ids.len() {
                    return Err(DocError::new(
                        codes::INDEX_NOT_FOUND,
                        "an index being built was dropped meanwhile",
                    ));
                }
                let rows = tx.peek_range(&from, &end, page).await.map_err(from_meta)?;
                let mut more = rows.len() == page;
                let mut w = Writes::default();
                let mut next = from.clone();
                let mut bytes = 0;
                for (k, v) in rows {
                    if bytes >= BUILD_PAGE_BYTES {
                        more = true;
                        break;
                    }
                    bytes += k.len() + v.len();
                    let doc = decode_doc(&v)?;
                    write_entries(&mut tx, t, &config, &mut w, &doc).await?;
                    next = k.clone();
                    next.push(0);
                    // The page is conditional on each document as read: a
                    // change meanwhile conflicts.
                    tx.guard(&k, Some(v));
                }
                finish_writes(&mut tx, t, w).await?;
                // How far the build got, with the page: a build cut short
                // goes on from here.
                for id in ids {
                    let key = crate::builds::progress_key(t.vol.id, t.entry.ino, *id);
                    tx.put(key, next.clone());
                }
                match tx.commit().await.map_err(from_meta)? {
                    Commit::Done(_) => {
                        page = (page * 2).min(BUILD_PAGE_MAX);
                        break (next, more);
                    }
                    Commit::Conflict if attempt + 1 >= TX_RETRIES_MAX => {
                        return Err(transient(
                            "too much contention while building an index; retry",
                        ))
                    }
                    Commit::Conflict => {
                        page = (page / 2).max(BUILD_PAGE_MIN);
                        attempt += 1;
                    }
                }
            };
            if !more {
                return Ok(());
            }
            from = next;
        }
    }

    /// Marks the indexes `ids` ready for queries; returns how many indexes
    /// the table has (the `_id` index included).
    pub(crate) async fn set_ready(&self, t: &TableRef, ids: &[u64]) -> Result<usize, DocError> {
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let mut tx = self.begin(t).await?;
            let mut config = read_config(&mut tx, t).await?;
            for i in config.indexes.iter_mut().filter(|i| ids.contains(&i.id)) {
                i.ready = true;
            }
            let n = config.indexes.len() + 1;
            tx.put(t.config_key(), config.encode());
            if let Commit::Done(_) = tx.commit().await.map_err(from_meta)? {
                return Ok(n);
            }
        }
        Err(transient(
            "too much contention on the table's settings; retry",
        ))
    }

    /// Removes the indexes `ids` with their entries.
    pub(crate) async fn remove_indexes(&self, t: &TableRef, ids: &[u64]) -> Result<(), DocError> {
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let mut tx = self.begin(t).await?;
            let mut config = read_config(&mut tx, t).await?;
            config.indexes.retain(|i| !ids.contains(&i.id));
            tx.put(t.config_key(), config.encode());
            for id in ids {
                // Its entries' bytes leave the volume's usage (see `Writes`).
                let (s, e) = index_range(t, *id);
                tx.delete_range_counted_pairs(s, e, berth_fs::records::usage_key(t.vol.id));
            }
            if let Commit::Done(_) = tx.commit().await.map_err(from_meta)? {
                return Ok(());
            }
        }
        Err(transient(
            "too much contention on the table's settings; retry",
        ))
    }

    /// Drops the indexes `select` picks from the table's (write right);
    /// returns how many indexes it had (the `_id` index included).
    pub async fn drop_indexes(
        &self,
        p: &Principal,
        path: &str,
        select: impl Fn(&IndexDef) -> bool,
    ) -> Result<(usize, usize), DocError> {
        let t = self.open(p, path, Right::Write).await?;
        let had = t.config.indexes.len() + 1;
        let ids: Vec<u64> = t
            .config
            .indexes
            .iter()
            .filter(|i| select(i))
            .map(|i| i.id)
            .collect();
        if !ids.is_empty() {
            self.remove_indexes(&t, &ids).await?;
        }
        Ok((had, ids.len()))
    }

    /// Replaces the table's settings through `change` (admin right).
    pub async fn configure(
        &self,
        p: &Principal,
        path: &str,
        change: impl Fn(&mut TableConfig),
    ) -> Result<TableConfig, DocError> {
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let t = self.open(p, path, Right::Admin).await?;
            let mut tx = self.begin(&t).await?;
            let key = t.config_key();
            let mut config: TableConfig = match tx.get(&key).await.map_err(from_meta)? {
                Some(b) => TableConfig::decode(&b)?,
                None => TableConfig::default(),
            };
            change(&mut config);
            config.format = CONFIG_FORMAT;
            tx.put(key, config.encode());
            if let Commit::Done(_) = tx.commit().await.map_err(from_meta)? {
                return Ok(config);
            }
        }
        Err(transient(
            "too much contention on the table's settings; retry",
        ))
    }

    /// Documents and their stored bytes (a scan; for `collStats` and `berth table info`).
    pub async fn stats(&self, p: &Principal, t: &TableRef) -> Result<(u64, u64), DocError> {
        authorize(p, t, Right::Read)?;
        let (mut count, mut bytes) = (0, 0);
        let (start, end) = t.doc_range();
        let mut from = start;
        loop {
            let tx = self.begin(t).await?;
            let rows = tx
                .peek_range(&from, &end, SCAN_PAGE)
                .await
                .map_err(from_meta)?;
            let more = rows.len() == SCAN_PAGE;
            for (k, v) in &rows {
                count += 1;
                bytes += v.len() as u64 - 1;
                from = k.to_vec();
            }
            if !more {
                return Ok((count, bytes));
            }
            from.push(0);
            let _ = prefix_end(&from);
        }
    }
}

/// Deepest nesting of documents and arrays a stored document may have
/// (MongoDB's limit).
pub const DOC_DEPTH_MAX: usize = 100;

/// Whether `doc` nests deeper than [`DOC_DEPTH_MAX`] (stops looking there).
fn too_deep(doc: &Document) -> bool {
    fn deeper(v: &Bson, depth: usize) -> bool {
        if depth > DOC_DEPTH_MAX {
            return true;
        }
        match v {
            Bson::Document(d) => d.values().any(|v| deeper(v, depth + 1)),
            Bson::Array(a) => a.iter().any(|v| deeper(v, depth + 1)),
            _ => false,
        }
    }
    doc.values().any(|v| deeper(v, 1))
}

/// The stored form of a document.
pub fn encode_doc(doc: &Document) -> Result<Vec<u8>, DocError> {
    if too_deep(doc) {
        return Err(DocError::new(
            15,
            format!("document nests deeper than {DOC_DEPTH_MAX} levels"),
        ));
    }
    let mut out = vec![DOC_FORMAT];
    doc.to_writer(&mut out)
        .map_err(|e| DocError::bad_value(format!("document cannot be encoded: {e}")))?;
    if out.len() - 1 > DOC_BYTES_MAX {
        return Err(DocError::new(
            10334,
            format!(
                "document of {} bytes is over the 16 MiB limit",
                out.len() - 1
            ),
        ));
    }
    Ok(out)
}

/// A stored document.
pub fn decode_doc(raw: &[u8]) -> Result<Document, DocError> {
    match raw.split_first() {
        Some((&DOC_FORMAT, bson)) => Document::from_reader(bson)
            .map_err(|e| DocError::new(codes::INTERNAL_ERROR, format!("stored document: {e}"))),
        Some((v, _)) => Err(DocError::new(
            codes::INTERNAL_ERROR,
            format!("stored document of unknown format {v}"),
        )),
        None => Err(DocError::new(
            codes::INTERNAL_ERROR,
            "empty stored document",
        )),
    }
}

/// A document ready to be inserted.
struct Prepared {
    id: Bson,
    key: Vec<u8>,
    value: Vec<u8>,
    doc: Document,
}

/// `keys::encode_value` of an `_id` (null when missing).
pub(crate) fn id_encoding(id: Option<&Bson>) -> Vec<u8> {
    let mut enc = Vec::new();
    crate::keys::encode_value(id.unwrap_or(&Bson::Null), &mut enc);
    enc
}

/// Gives `doc` an `_id` when it has none (a new ObjectId, first), checks
/// it, and returns it with its key and stored form.
fn prepare_insert(t: &TableRef, mut doc: Document) -> Result<Prepared, DocError> {
    let id = match doc.get("_id") {
        Some(id) => id.clone(),
        None => {
            let id = Bson::ObjectId(bson::oid::ObjectId::new());
            let mut with = Document::new();
            with.insert("_id", id.clone());
            with.extend(doc);
            doc = with;
            id
        }
    };
    if matches!(
        id,
        Bson::Array(_) | Bson::RegularExpression(_) | Bson::Undefined
    ) {
        return Err(DocError::new(
            codes::INVALID_ID_FIELD,
            format!("can't use a {} for _id", type_name(&id)),
        ));
    }
    check_id_field_names(&id)?;
    let key = t.doc_key(&id);
    let value = encode_doc(&doc)?;
    Ok(Prepared {
        id,
        key,
        value,
        doc,
    })
}

/// MongoDB (5.0 and later) stores `$`-prefixed field names anywhere in a
/// document but inside its `_id` (where `{$a: 1}` would read as an
/// operator in every query on `_id`).
fn check_id_field_names(id: &Bson) -> Result<(), DocError> {
    let Bson::Document(d) = id else {
        return Ok(());
    };
    match d.keys().find(|k| k.starts_with('$')) {
        Some(k) => Err(DocError::new(
            codes::DOLLAR_PREFIXED_FIELD_NAME,
            format!(
                "_id fields may not contain '$'-prefixed fields: {k} is not valid for storage."
            ),
        )),
        None => Ok(()),
    }
}

/// The table's settings as of this transaction, which is made conditional
/// on them: a write that raced with an index being added or dropped
/// conflicts and is tried again with the new set of indexes.
pub(crate) async fn read_config(tx: &mut Tx, t: &TableRef) -> Result<TableConfig, DocError> {
    match tx.get(&t.config_key()).await.map_err(from_meta)? {
        Some(b) => TableConfig::decode(&b),
        None => Ok(TableConfig::default()),
    }
}

/// The key of an index entry: `vol · TableIndex · ino · u64(index id) ·
/// bytes(key part)`, followed by `bytes(_id)` unless the index is unique
/// (a unique index has one entry per key part, whose value is the `_id`).
pub fn index_entry_key(t: &TableRef, def: &IndexDef, part: &[u8], id_enc: &[u8]) -> Vec<u8> {
    let k = Key::new(t.vol.id, Kind::TableIndex, t.entry.ino)
        .u64(def.id)
        .bytes(part);
    match def.unique {
        true => k.build(),
        false => k.bytes(id_enc).build(),
    }
}

/// The keys of the entries document `doc` (whose `_id` encodes as
/// `id_enc`) gives index `def`: what every write puts, deletes and, for a
/// unique index, claims, and what `berth table check` expects to find.
/// Each entry's value is `id_enc`.
pub fn entry_keys(
    t: &TableRef,
    def: &IndexDef,
    doc: &Document,
    id_enc: &[u8],
) -> Result<Vec<Vec<u8>>, DocError> {
    Ok(def
        .entries(doc)?
        .iter()
        .map(|part| index_entry_key(t, def, part, id_enc))
        .collect())
}

/// The range of one index's entries.
pub fn index_range(t: &TableRef, index_id: u64) -> (Vec<u8>, Vec<u8>) {
    let start = Key::new(t.vol.id, Kind::TableIndex, t.entry.ino)
        .u64(index_id)
        .build();
    let end = prefix_end(&start);
    (start, end)
}

/// What index scans gathered: the matching documents, the `_id`s read
/// (encoded), within a count and a byte bound.
struct Scanned {
    out: Vec<Document>,
    seen: std::collections::HashSet<Vec<u8>>,
    bytes: usize,
    stop_after: Option<usize>,
    bytes_max: usize,
}

impl Scanned {
    fn new(stop_after: Option<usize>, bytes_max: usize) -> Scanned {
        Scanned {
            out: Vec::new(),
            seen: Default::default(),
            bytes: 0,
            stop_after,
            bytes_max,
        }
    }

    /// Whether the caller needs no more documents.
    fn full(&self) -> bool {
        self.stop_after.is_some_and(|n| self.out.len() >= n)
    }

    /// Keeps a matching document of `len` stored bytes.
    fn push(&mut self, d: Document, len: usize) -> Result<(), DocError> {
        self.bytes += len;
        if self.bytes > self.bytes_max {
            return Err(DocError::new(
                292,
                format!("the query needs more than {} bytes of documents in memory; narrow it with a filter or a limit", self.bytes_max),
            ));
        }
        self.out.push(d);
        Ok(())
    }
}

/// The entries of one index interval, read a page at a time, forward or
/// backward.
pub(crate) struct Run {
    /// The interval not read yet: `[from, end)`. A forward run moves
    /// `from` up past each page, a backward one `end` down to its last key.
    from: Vec<u8>,
    end: Vec<u8>,
    backward: bool,
    /// Where, in each of its keys, the part after the point prefix begins
    /// (what orders a merge of several runs).
    skip: usize,
    /// Entries read and not yet taken: key, `_id` encoding.
    pub(crate) rows: std::collections::VecDeque<(Vec<u8>, Vec<u8>)>,
    /// Whether entries may follow the last page.
    pub(crate) more: bool,
}

impl Run {
    /// Reads the next page of at most `page` entries after those read.
    pub(crate) async fn fill(&mut self, tx: &Tx, page: usize) -> Result<(), DocError> {
        let rows = match self.backward {
            false => tx.peek_range(&self.from, &self.end, page).await,
            true => tx.peek_range_rev(&self.from, &self.end, page).await,
        }
        .map_err(from_meta)?;
        self.more = rows.len() == page;
        if let Some((k, _)) = rows.last() {
            if self.backward {
                self.end = k.to_vec();
            } else {
                self.from = k.to_vec();
                self.from.push(0);
            }
        }
        self.rows
            .extend(rows.into_iter().map(|(k, v)| (k.to_vec(), v.to_vec())));
        Ok(())
    }

    fn order_key<'a>(&self, key: &'a [u8]) -> &'a [u8] {
        &key[self.skip.min(key.len())..]
    }
}

/// The store key ranges of an index's intervals: a key part bound `b` is
/// the key `… · u64(index) · bytes_prefix(b)`, as the store's escaping
/// keeps the order of key parts (a key part at or above `b` gives a key at
/// or above it); for the `_id` index (`plan::ID_INDEX`), the document key
/// `vol · TableDoc · ino · bytes_prefix(b)`. The point prefix's escaped
/// length is where the rest of a key begins.
pub(crate) fn runs(
    t: &TableRef,
    index_id: u64,
    intervals: &[crate::plan::Interval],
    backward: bool,
) -> Vec<Run> {
    let (head, index_end) = match index_id {
        crate::plan::ID_INDEX => (
            Key::new(t.vol.id, Kind::TableDoc, t.entry.ino),
            t.doc_range().1,
        ),
        id => (
            Key::new(t.vol.id, Kind::TableIndex, t.entry.ino).u64(id),
            index_range(t, id).1,
        ),
    };
    let header_len = head.clone().build().len();
    intervals
        .iter()
        .map(|i| {
            let points = &i.start[..i.point_len.min(i.start.len())];
            // The escaping doubles every 0x00 byte.
            let escaped = points.len() + points.iter().filter(|b| **b == 0).count();
            Run {
                from: head.clone().bytes_prefix(&i.start).build(),
                end: match &i.end {
                    Some(e) => head.clone().bytes_prefix(e).build(),
                    None => index_end.clone(),
                },
                backward,
                // The bytes tag, then the escaped points.
                skip: header_len + 1 + escaped,
                rows: Default::default(),
                more: true,
            }
        })
        .collect()
}

/// Removes document `doc`, stored at `key` as `raw` and read in `tx`, with
/// its index entries and its change log record, in `tx`, its bytes
/// subtracted in `w`: how every document is deleted (by a filter, or by the
/// TTL sweep). The caller settles `w` ([`finish_writes`]) before commit.
pub(crate) async fn remove_doc(
    tx: &mut Tx,
    t: &TableRef,
    w: &mut Writes,
    key: Vec<u8>,
    raw: &[u8],
    doc: &Document,
) -> Result<(), DocError> {
    let config = read_config(tx, t).await?;
    write_doc(tx, t, &config, w, &key, Some((doc, raw)), None).await?;
    let id = doc.get("_id").cloned().unwrap_or(Bson::Null);
    record(tx, t, OpType::Delete, &id, None, None)
}

/// The bytes a stored pair counts in its volume's usage: its key and its
/// value (what `Op::DeleteRangeCountedPairs` subtracts when it deletes it).
pub fn pair_bytes(key: &[u8], value_len: usize) -> i64 {
    i64::try_from(key.len().saturating_add(value_len)).unwrap_or(i64::MAX)
}

/// What the document and index writes of one transaction did so far: the
/// unique entries they claimed (for the documents after them in the same
/// transaction), the key fields that met an array for the first time
/// (index id, field), and the bytes they add to the volume's usage; all
/// settled by [`finish_writes`] before the transaction commits.
#[derive(Default)]
pub(crate) struct Writes {
    claimed: HashMap<Vec<u8>, Vec<u8>>,
    multikey: Vec<(u64, usize)>,
    /// The change of the volume's usage the writes make (negative: they
    /// free bytes).
    grown_bytes: i64,
    /// The volume's usage before them (read once, for the quota).
    used_bytes: Option<i64>,
}

impl Writes {
    /// Counts `grown` more bytes, unless they take the volume past its
    /// quota (then nothing is counted and the write is refused: 14031).
    /// Writes that do not grow usage always pass.
    async fn admit(&mut self, tx: &Tx, t: &TableRef, grown: i64) -> Result<(), DocError> {
        let quota = i64::try_from(t.vol.quota_bytes).unwrap_or(i64::MAX);
        if grown > 0 && quota > 0 {
            let used = match self.used_bytes {
                Some(u) => u,
                None => {
                    let u = volume_usage(tx, t).await?;
                    self.used_bytes = Some(u);
                    u
                }
            };
            let now = used.saturating_add(self.grown_bytes);
            if now.saturating_add(grown) > quota {
                return Err(over_quota(t, now, grown));
            }
        }
        self.grown_bytes = self.grown_bytes.saturating_add(grown);
        Ok(())
    }

    /// Buffers index entry changes that [`Writes::admit`] let through.
    fn apply(&mut self, tx: &mut Tx, changes: Vec<EntryChange>) {
        for c in changes {
            match c.value {
                Some(v) => {
                    self.claimed.insert(c.key.clone(), v.clone());
                    tx.put(c.key, v);
                }
                None => tx.delete(c.key),
            }
        }
    }
}

/// The volume's usage as `tx` sees it, with what `tx` adds to it already
/// (a multi-document transaction's earlier statements).
async fn volume_usage(tx: &Tx, t: &TableRef) -> Result<i64, DocError> {
    let key = berth_fs::records::usage_key(t.vol.id);
    let stored = berth_fs::records::read_usage(tx.peek(&key).await.map_err(from_meta)?);
    let stored = i64::try_from(stored).unwrap_or(i64::MAX);
    Ok(stored.saturating_add(tx.pending_add_i64(&key)))
}

/// A write refused by the volume's quota (MongoDB's OutOfDiskSpace).
fn over_quota(t: &TableRef, used: i64, grown: i64) -> DocError {
    DocError::new(
        codes::OUT_OF_DISK_SPACE,
        format!(
            "volume {} is at its quota of {} bytes ({} used): a write of {} more bytes to {} is refused; delete documents or raise the quota (berth volume set {} --quota SIZE)",
            t.vol.path,
            t.vol.quota_bytes,
            used.max(0),
            grown,
            t.entry.path,
            t.vol.path
        ),
    )
}

/// One index entry a document's change writes: its key, the value to put
/// (`None`: the entry is deleted), and the length of the value there
/// before (`None`: absent).
struct EntryChange {
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    before_len: Option<usize>,
}

impl EntryChange {
    /// The bytes it adds to the volume's usage.
    fn grown(&self) -> i64 {
        let after = self
            .value
            .as_ref()
            .map_or(0, |v| pair_bytes(&self.key, v.len()));
        let before = self.before_len.map_or(0, |n| pair_bytes(&self.key, n));
        after - before
    }
}

/// Writes one document's change into `tx`: the document at `key` going
/// from `before` to `after` (each the document and its stored form;
/// `None`: absent), with its index entries, its bytes counted in `w`. How
/// every document is written. All or nothing: on an error (a duplicate
/// key, the volume's quota) nothing of it is in `tx`.
async fn write_doc(
    tx: &mut Tx,
    t: &TableRef,
    config: &TableConfig,
    w: &mut Writes,
    key: &[u8],
    before: Option<(&Document, &[u8])>,
    after: Option<(&Document, &[u8])>,
) -> Result<(), DocError> {
    let id_enc = id_encoding(after.or(before).and_then(|(d, _)| d.get("_id")));
    let (entries, arrays) = index_changes(
        tx,
        t,
        config,
        &id_enc,
        before.map(|(d, _)| d),
        after.map(|(d, _)| d),
        &w.claimed,
        false,
    )
    .await?;
    let doc_bytes =
        |v: Option<(&Document, &[u8])>| v.map_or(0, |(_, raw)| pair_bytes(key, raw.len()));
    let grown =
        entries.iter().map(EntryChange::grown).sum::<i64>() + doc_bytes(after) - doc_bytes(before);
    w.admit(tx, t, grown).await?;
    w.apply(tx, entries);
    w.multikey.extend(arrays);
    match after {
        Some((_, raw)) => tx.put(key.to_vec(), raw.to_vec()),
        None => tx.delete(key.to_vec()),
    }
    Ok(())
}

/// Writes the entries of the indexes of `config` for document `doc` (an
/// index build), counting in `w` only those not there yet (a write since
/// the index was added made them already).
async fn write_entries(
    tx: &mut Tx,
    t: &TableRef,
    config: &TableConfig,
    w: &mut Writes,
    doc: &Document,
) -> Result<(), DocError> {
    let id_enc = id_encoding(doc.get("_id"));
    let (entries, arrays) =
        index_changes(tx, t, config, &id_enc, None, Some(doc), &w.claimed, true).await?;
    let grown = entries.iter().map(EntryChange::grown).sum::<i64>();
    w.admit(tx, t, grown).await?;
    w.apply(tx, entries);
    w.multikey.extend(arrays);
    Ok(())
}

/// The entry changes of every index of `config` when a document goes from
/// `before` to `after` (either absent), and the key fields of `after` that
/// are arrays where the index has not met one yet. A unique index's entry
/// held by another `_id` (in the table, or claimed by a document earlier in
/// this transaction: see [`Writes`]) is a duplicate key error (11000),
/// read under a condition so a concurrent claim conflicts.
///
/// What was there before: a ready index holds exactly the entries of every
/// document (the check's invariant), so `before`'s are there and `after`'s
/// new ones are not; an index being built (or, with `build`, every index)
/// may or may not hold a document's entries yet, so each changed entry is
/// read, under a condition (a build and a write of the same document
/// conflict rather than count one entry twice or not at all).
#[allow(clippy::too_many_arguments)]
async fn index_changes(
    tx: &mut Tx,
    t: &TableRef,
    config: &TableConfig,
    id_enc: &[u8],
    before: Option<&Document>,
    after: Option<&Document>,
    claimed: &HashMap<Vec<u8>, Vec<u8>>,
    build: bool,
) -> Result<(Vec<EntryChange>, Vec<(u64, usize)>), DocError> {
    let mut out = Vec::new();
    let mut arrays = Vec::new();
    for def in &config.indexes {
        let known = def.ready && !build;
        let old = match before {
            Some(d) => entry_keys(t, def, d, id_enc)?,
            None => Vec::new(),
        };
        let new = match after {
            Some(d) => {
                let (parts, array) = def.entries_and_array(d)?;
                if let Some(f) = array.filter(|f| !def.is_multikey(*f)) {
                    arrays.push((def.id, f));
                }
                parts
                    .iter()
                    .map(|part| index_entry_key(t, def, part, id_enc))
                    .collect()
            }
            None => Vec::new(),
        };
        for key in old.iter().filter(|k| !new.contains(k)) {
            let before_len = match known {
                true => Some(id_enc.len()),
                false => tx.get(key).await.map_err(from_meta)?.map(|v| v.len()),
            };
            out.push(EntryChange {
                key: key.clone(),
                value: None,
                before_len,
            });
        }
        for key in new.into_iter().filter(|k| !old.contains(k)) {
            let before_len = if def.unique {
                let holder = match claimed.get(&key) {
                    Some(h) => Some(h.clone()),
                    None => tx.get(&key).await.map_err(from_meta)?,
                };
                if holder.as_ref().is_some_and(|h| h != id_enc) {
                    let empty = Document::new();
                    let doc = after.unwrap_or(&empty);
                    return Err(DocError::new(
                        codes::DUPLICATE_KEY,
                        format!(
                            "E11000 duplicate key error collection: {} index: {} dup key: {}",
                            t.entry.path,
                            def.name,
                            dup_key(def, doc)
                        ),
                    )
                    .with_info(def.duplicate_info(doc)));
                }
                holder.map(|h| h.len())
            } else if known {
                None
            } else {
                tx.get(&key).await.map_err(from_meta)?.map(|v| v.len())
            };
            out.push(EntryChange {
                key,
                value: Some(id_enc.to_vec()),
                before_len,
            });
        }
    }
    Ok((out, arrays))
}

/// Before a transaction that wrote documents or index entries commits:
/// adds their bytes to the volume's usage, and marks the key fields that
/// met their first array multikey in the table's settings (read under a
/// condition, so the transaction conflicts with any other change of them,
/// and the planner stops intersecting bounds on those fields from the
/// commit on).
pub(crate) async fn finish_writes(tx: &mut Tx, t: &TableRef, w: Writes) -> Result<(), DocError> {
    if w.grown_bytes != 0 {
        tx.add_i64(berth_fs::records::usage_key(t.vol.id), w.grown_bytes);
    }
    if w.multikey.is_empty() {
        return Ok(());
    }
    let mut config = read_config(tx, t).await?;
    let mut changed = false;
    for (id, field) in &w.multikey {
        if let Some(def) = config.indexes.iter_mut().find(|d| d.id == *id) {
            changed |= def.set_multikey(*field);
        }
    }
    if changed {
        tx.put(t.config_key(), config.encode());
    }
    Ok(())
}

/// `{ a: 1, b: "x" }` of a document's values for an index, for messages.
fn dup_key(def: &IndexDef, doc: &Document) -> String {
    let fields: Vec<String> = def
        .key_values(doc)
        .iter()
        .map(|(p, v)| format!("{p}: {v}"))
        .collect();
    format!("{{ {} }}", fields.join(", "))
}

fn type_name(v: &Bson) -> &'static str {
    match v {
        Bson::Array(_) => "array",
        Bson::RegularExpression(_) => "regex",
        Bson::Undefined => "undefined",
        _ => "value",
    }
}

fn duplicate_id(t: &TableRef, id: &Bson) -> DocError {
    DocError::new(
        codes::DUPLICATE_KEY,
        format!(
            "E11000 duplicate key error collection: {} index: _id_ dup key: {{ _id: {id} }}",
            t.entry.path
        ),
    )
    .with_info(bson::doc! {"keyPattern": {"_id": 1}, "keyValue": {"_id": id.clone()}})
}

/// Checks `right` on a table: the ticket's scope, then the volume's ACE,
/// then the table's ACE for the right (its owner when it has none).
/// Administrators pass.
pub fn authorize(p: &Principal, t: &TableRef, right: Right) -> Result<(), DocError> {
    let path = &t.entry.path;
    let access = match right {
        Right::Read => Access::Read,
        Right::Write => Access::Write,
        Right::Admin => Access::Admin,
    };
    check_scope(p, path, access).map_err(from_meta)?;
    if p.is_admin() {
        return Ok(());
    }
    let vol_ace = match right {
        Right::Read => t.vol.read_ace.as_deref(),
        _ => t.vol.write_ace.as_deref(),
    };
    if let Some(expr) = vol_ace {
        if !ace_allows(expr, p) {
            return Err(unauthorized(format!(
                "not authorized: the ACE of volume {} does not allow {} to {}",
                t.vol.path,
                p.name,
                right.name()
            )));
        }
    }
    let ace = match right {
        Right::Read => t.config.read_ace.as_deref(),
        Right::Write => t.config.write_ace.as_deref(),
        Right::Admin => t.config.admin_ace.as_deref(),
    };
    let allowed = match ace {
        Some(expr) => ace_allows(expr, p),
        None => p.uid == t.entry.inode.uid,
    };
    if allowed {
        Ok(())
    } else {
        Err(unauthorized(format!(
            "not authorized: the {} ACE of table {path} does not allow {}",
            right.name(),
            p.name
        )))
    }
}

fn unauthorized(message: String) -> DocError {
    DocError::new(codes::UNAUTHORIZED, message)
}

/// A passing failure a client may retry (MongoDB's WriteConflict, 112,
/// which drivers label transient).
/// Adds the change log record of a document's change to `tx` (see
/// [`changes`]): it commits with the change or not at all.
fn record(
    tx: &mut Tx,
    t: &TableRef,
    op: OpType,
    id: &Bson,
    doc: Option<&Document>,
    update: Option<Document>,
) -> Result<(), DocError> {
    let change = Record {
        op,
        table: t.entry.ino,
        path: t.entry.path.clone(),
        id: Some(id.clone()),
        doc: doc.cloned(),
        update,
        to: None,
        wall: bson::DateTime::now(),
    };
    tx.put_stamped(changes::log_prefix(t.vol.id), change.encode()?);
    Ok(())
}

pub fn transient(message: impl Into<String>) -> DocError {
    DocError::new(codes::WRITE_CONFLICT, message)
}

/// A namespace or storage error in MongoDB's terms.
pub fn from_meta(e: Error) -> DocError {
    let code = match e.code {
        Code::NotFound | Code::NotDir => codes::NAMESPACE_NOT_FOUND,
        Code::Exists => codes::NAMESPACE_EXISTS,
        Code::Access | Code::Perm | Code::Auth => codes::UNAUTHORIZED,
        Code::Invalid | Code::NameTooLong | Code::Loop | Code::IsDir => codes::INVALID_NAMESPACE,
        Code::Again if e.redirect.is_some() => codes::NOT_WRITABLE_PRIMARY,
        Code::Again => codes::WRITE_CONFLICT,
        Code::Quota => codes::OUT_OF_DISK_SPACE,
        _ => codes::INTERNAL_ERROR,
    };
    DocError::new(code, e.message)
}

/// Whether a "not found" from [`Tables::open`] means another kind of entry
/// sits at the path (then a table cannot be created there).
fn exists_as_other(e: &DocError) -> bool {
    e.message.contains(", not a table")
}

/// Leaves the mark of retryable statement `stmt` (key `key`) holding
/// `done`, removing the marks of the session's earlier `txnNumber`s.
fn put_mark(
    tx: &mut Tx,
    t: &TableRef,
    stmt: Option<Stmt<'_>>,
    key: Vec<u8>,
    done: retry::Outcome,
    now: bson::DateTime,
) {
    if let Some(s) = stmt {
        let (from, to) = s.stale_range(t.vol.id);
        tx.delete_range(from, to);
    }
    tx.put(key, done.encode(now));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_of_format_1_decode_with_unknown_multikey_marks() {
        // Format 1's layout: no `multikey` at the end.
        #[derive(Serialize)]
        struct V1 {
            format: u32,
            read_ace: Option<String>,
            write_ace: Option<String>,
            admin_ace: Option<String>,
            key_format: u8,
            indexes: Vec<IndexDef>,
            next_index_id: u64,
        }
        let mut def = IndexDef::parse(1, &bson::doc! {"key": {"a": 1}}).unwrap();
        def.ready = true;
        let old = encode(&V1 {
            format: 1,
            read_ace: Some("u:x".into()),
            write_ace: None,
            admin_ace: None,
            key_format: 1,
            indexes: vec![def.clone()],
            next_index_id: 2,
        });
        let c = TableConfig::decode(&old).unwrap();
        assert_eq!((c.format, c.next_index_id), (1, 2));
        assert_eq!(c.read_ace.as_deref(), Some("u:x"));
        assert_eq!(c.indexes[0].multikey, None, "unknown: every field may be");
        assert!(c.indexes[0].is_multikey(0));
        // Format 2 keeps the marks, through the index definitions.
        let mut now = c.clone();
        now.indexes[0].multikey = Some(0b10);
        let back = TableConfig::decode(&now.encode()).unwrap();
        assert_eq!(back.format, CONFIG_FORMAT);
        assert_eq!(back.indexes[0].multikey, Some(0b10));
        assert_eq!(back.multikey, vec![(1, 0b10)]);
        // A build that reads format 1 reads format 2 (the marks last).
        let older: TableConfigV1 = decode(&now.encode(), "table settings").unwrap();
        assert_eq!((older.indexes.len(), older.next_index_id), (1, 2));
    }

    #[test]
    fn dollar_prefixed_names_are_refused_only_inside_id() {
        assert!(check_id_field_names(&Bson::Int32(1)).is_ok());
        assert!(check_id_field_names(&Bson::Document(bson::doc! {"a.b": 1})).is_ok());
        let e = check_id_field_names(&Bson::Document(bson::doc! {"$a": 1})).unwrap_err();
        assert_eq!(e.code, codes::DOLLAR_PREFIXED_FIELD_NAME);
    }
}
