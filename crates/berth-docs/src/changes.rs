//! The change log: every committed change to a volume's tables, in commit
//! order, for change streams and CDC.
//!
//! A write transaction that changes a document also writes one record per
//! change with `Op::PutStamped` under `vol · TableChange · 0`: the record's
//! key gets the Raft index the transaction applies at and its place in the
//! transaction (a [`Position`]), so records are in commit order without a
//! counter that every writer would have to read (and conflict on). The
//! record commits with the change or not at all, on a majority like it, so
//! a reader that resumes after a position misses nothing and repeats
//! nothing, across restarts and leader changes.
//!
//! One log per volume (like MongoDB's oplog per replica set): a
//! collection's change stream reads its volume's log and keeps its table's
//! records. Records older than the retention are trimmed by the server.
//!
//! The record is [`CHANGE_FORMAT`] then a BSON document (`op`, `t` table
//! inode, `p` table path, `id`, `d` the document after the change, `u` the
//! update description, `to` a rename's new path, `w` wall time).

use berth_store::keys::{self, Key, Kind};
use bson::{doc, Bson, Document};

use crate::DocError;

/// The first byte of every change record: the layout of what follows.
pub const CHANGE_FORMAT: u8 = 1;

/// Where a record lies in its volume's log: the Raft index of its
/// transaction, then its place in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    pub index: u64,
    pub n: u64,
}

impl Position {
    /// After every record of transactions up to `index`.
    pub fn after_index(index: u64) -> Position {
        Position { index, n: u64::MAX }
    }
}

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpType {
    Insert,
    Update,
    Replace,
    Delete,
    /// The table was dropped.
    Drop,
    /// The table was renamed (`to`).
    Rename,
}

impl OpType {
    /// MongoDB's `operationType`.
    pub fn name(self) -> &'static str {
        match self {
            OpType::Insert => "insert",
            OpType::Update => "update",
            OpType::Replace => "replace",
            OpType::Delete => "delete",
            OpType::Drop => "drop",
            OpType::Rename => "rename",
        }
    }

    fn parse(s: &str) -> Option<OpType> {
        [
            OpType::Insert,
            OpType::Update,
            OpType::Replace,
            OpType::Delete,
            OpType::Drop,
            OpType::Rename,
        ]
        .into_iter()
        .find(|o| o.name() == s)
    }
}

/// One committed change, as the log keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub op: OpType,
    /// The table's inode.
    pub table: u64,
    /// The table's path when the change was made.
    pub path: String,
    /// The document's `_id` (document changes).
    pub id: Option<Bson>,
    /// The document after the change (insert, replace, update).
    pub doc: Option<Document>,
    /// `updateDescription` (update): `updatedFields`, `removedFields`,
    /// `truncatedArrays`.
    pub update: Option<Document>,
    /// A rename's new path.
    pub to: Option<String>,
    pub wall: bson::DateTime,
}

impl Record {
    /// The stored form.
    pub fn encode(&self) -> Result<Vec<u8>, DocError> {
        let mut d = doc! {
            "op": self.op.name(),
            "t": self.table as i64,
            "p": &self.path,
            "w": self.wall,
        };
        if let Some(id) = &self.id {
            d.insert("id", id.clone());
        }
        if let Some(doc) = &self.doc {
            d.insert("d", doc.clone());
        }
        if let Some(u) = &self.update {
            d.insert("u", u.clone());
        }
        if let Some(to) = &self.to {
            d.insert("to", to);
        }
        let mut out = vec![CHANGE_FORMAT];
        d.to_writer(&mut out)
            .map_err(|e| DocError::bad_value(format!("a change record: {e}")))?;
        Ok(out)
    }

    /// Reads a stored record.
    pub fn decode(raw: &[u8]) -> Result<Record, DocError> {
        let corrupt = |why: String| DocError::internal(format!("change record: {why}"));
        let Some((&CHANGE_FORMAT, rest)) = raw.split_first() else {
            return Err(corrupt(format!(
                "unknown format {:?}",
                raw.first().copied()
            )));
        };
        let d = Document::from_reader(rest).map_err(|e| corrupt(e.to_string()))?;
        let op = d
            .get_str("op")
            .ok()
            .and_then(OpType::parse)
            .ok_or_else(|| corrupt("no operation".into()))?;
        Ok(Record {
            op,
            table: d.get_i64("t").map_err(|e| corrupt(e.to_string()))? as u64,
            path: d
                .get_str("p")
                .map_err(|e| corrupt(e.to_string()))?
                .to_string(),
            id: d.get("id").cloned(),
            doc: d.get_document("d").ok().cloned(),
            update: d.get_document("u").ok().cloned(),
            to: d.get_str("to").ok().map(str::to_string),
            wall: d.get_datetime("w").copied().unwrap_or(bson::DateTime::MIN),
        })
    }
}

/// Records a table's drop or rename in the transaction that removes or
/// renames its entry (set on the namespace by `Tables::new`): whichever
/// API does it (`drop`, `renameCollection`, `berth rm`, `berth mv`, a
/// rename over a table), the event commits with the change or not at all.
pub struct LogHook;

impl berth_fs::EntryHook for LogHook {
    fn removed(
        &self,
        tx: &mut berth_meta::Tx,
        vol: u64,
        ino: u64,
        kind: berth_fs::EntryKind,
        path: &str,
    ) -> Result<(), berth_meta::Error> {
        if kind == berth_fs::EntryKind::Table {
            crate::builds::forget(tx, vol, ino);
        }
        self.record(tx, vol, ino, kind, OpType::Drop, path, None)
    }

    fn renamed<'a>(
        &'a self,
        tx: &'a mut berth_meta::Tx,
        vol: u64,
        ino: u64,
        kind: berth_fs::EntryKind,
        from: &'a str,
        to: &'a str,
    ) -> berth_fs::HookFuture<'a> {
        Box::pin(async move {
            if matches!(kind, berth_fs::EntryKind::Table | berth_fs::EntryKind::Dir) {
                // The TTL sweep and the resumed index builds open tables by
                // the paths these registries keep: they follow the table,
                // or every table below a moved directory.
                for registry in [crate::registry::TTL, crate::registry::BUILDS] {
                    crate::registry::move_paths(tx, registry, vol, from, to).await?;
                }
            }
            self.record(tx, vol, ino, kind, OpType::Rename, from, Some(to))
        })
    }
}

impl LogHook {
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        tx: &mut berth_meta::Tx,
        vol: u64,
        ino: u64,
        kind: berth_fs::EntryKind,
        op: OpType,
        path: &str,
        to: Option<&str>,
    ) -> Result<(), berth_meta::Error> {
        if kind != berth_fs::EntryKind::Table {
            return Ok(());
        }
        let change = Record {
            op,
            table: ino,
            path: path.to_string(),
            id: None,
            doc: None,
            update: None,
            to: to.map(str::to_string),
            wall: bson::DateTime::now(),
        };
        let value = change
            .encode()
            .map_err(|e| berth_meta::Error::new(berth_meta::Code::Io, e.message))?;
        tx.put_stamped(log_prefix(vol), value);
        Ok(())
    }
}

/// The prefix of a volume's change log keys.
pub fn log_prefix(vol: u64) -> Vec<u8> {
    Key::new(vol, Kind::TableChange, 0).build()
}

/// The key holding the position of the last record trimmed from a
/// volume's log (a reader resuming before it missed records).
pub fn trimmed_key(vol: u64) -> Vec<u8> {
    Key::new(vol, Kind::TableChange, 1).build()
}

impl Position {
    /// 16 bytes, big-endian.
    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0; 16];
        b[..8].copy_from_slice(&self.index.to_be_bytes());
        b[8..].copy_from_slice(&self.n.to_be_bytes());
        b
    }

    pub fn from_bytes(b: &[u8]) -> Option<Position> {
        let b: &[u8; 16] = b.try_into().ok()?;
        Some(Position {
            index: u64::from_be_bytes(b[..8].try_into().ok()?),
            n: u64::from_be_bytes(b[8..].try_into().ok()?),
        })
    }
}

/// The key range of a volume's records after `after`.
pub fn range_after(vol: u64, after: Position) -> (Vec<u8>, Vec<u8>) {
    let prefix = log_prefix(vol);
    let (_, end) = keys::versions_range(&prefix);
    let start = match after.n.checked_add(1) {
        Some(n) => keys::stamped(&prefix, after.index, n),
        None => keys::versions_range(&keys::versioned(&prefix, after.index)).1,
    };
    (start, end)
}

/// The position of a record's key.
pub fn position_of(key: &[u8]) -> Option<Position> {
    keys::split_stamp(key).map(|(index, n)| Position { index, n })
}

/// MongoDB's `updateDescription` between two versions of a document:
/// fields set (dotted paths into embedded documents that both versions
/// have), fields removed, and no truncated arrays (a changed array is
/// reported whole).
pub fn update_description(before: &Document, after: &Document) -> Document {
    let mut updated = Document::new();
    let mut removed = Vec::new();
    diff(before, after, "", &mut updated, &mut removed);
    doc! {
        "updatedFields": updated,
        "removedFields": removed,
        "truncatedArrays": [],
    }
}

fn diff(before: &Document, after: &Document, at: &str, up: &mut Document, rm: &mut Vec<Bson>) {
    let path = |k: &str| {
        if at.is_empty() {
            k.to_string()
        } else {
            format!("{at}.{k}")
        }
    };
    for (k, v) in after {
        match (before.get(k), v) {
            (Some(Bson::Document(b)), Bson::Document(a)) if b != a => {
                diff(b, a, &path(k), up, rm);
            }
            (Some(b), a) if b == a => {}
            _ => {
                up.insert(path(k), v.clone());
            }
        }
    }
    for k in before.keys() {
        if !after.contains_key(k) {
            rm.push(Bson::String(path(k)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let c = Record {
            op: OpType::Update,
            table: 42,
            path: "/tables/db/c".into(),
            id: Some(Bson::Int32(1)),
            doc: Some(doc! {"_id": 1, "a": 2}),
            update: Some(update_description(
                &doc! {"_id": 1},
                &doc! {"_id": 1, "a": 2},
            )),
            to: None,
            wall: bson::DateTime::from_millis(5),
        };
        assert_eq!(Record::decode(&c.encode().unwrap()).unwrap(), c);
        assert!(Record::decode(&[9, 1, 2]).is_err());
        assert!(Record::decode(&[]).is_err());
    }

    #[test]
    fn update_descriptions_name_dotted_paths() {
        let before = doc! {"_id": 1, "a": {"b": 1, "c": 2}, "x": 1, "arr": [1, 2], "gone": 1};
        let after = doc! {"_id": 1, "a": {"b": 5, "c": 2, "d": 3}, "x": 1, "arr": [1], "new": "n"};
        let d = update_description(&before, &after);
        assert_eq!(
            d.get_document("updatedFields").unwrap(),
            &doc! {"a.b": 5, "a.d": 3, "arr": [1], "new": "n"}
        );
        assert_eq!(
            d.get_array("removedFields").unwrap(),
            &vec![Bson::from("gone")]
        );
        // A field that becomes a document, or stops being one, is reported whole.
        let d = update_description(&doc! {"a": 1}, &doc! {"a": {"b": 1}});
        assert_eq!(
            d.get_document("updatedFields").unwrap(),
            &doc! {"a": {"b": 1}}
        );
    }

    #[test]
    fn ranges_start_after_the_position() {
        let vol = 7;
        let prefix = log_prefix(vol);
        let key = |i, n| keys::stamped(&prefix, i, n);
        let (s, e) = range_after(vol, Position { index: 5, n: 1 });
        assert!(key(5, 1) < s && s <= key(5, 2) && key(9, 0) < e);
        let (s, _) = range_after(vol, Position::after_index(5));
        assert!(key(5, u64::MAX - 1) < s && s <= key(6, 0));
        let (s, _) = range_after(vol, Position::default());
        assert!(s <= key(0, 1) && key(0, 0) < s);
        assert_eq!(position_of(&key(3, 4)), Some(Position { index: 3, n: 4 }));
    }
}
