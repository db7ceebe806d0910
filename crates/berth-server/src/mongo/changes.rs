//! MongoDB change streams (`$changeStream`) over the tables' change log
//! (`berth_docs::changes`): a stream is a cursor over one volume's log from
//! a position, keeping the records of its collection, database or
//! deployment that the principal may read, shaped as MongoDB's change
//! events, then through the rest of the pipeline.
//!
//! Resume tokens (`_id._data`) are hex: `B1` (an event) or `B2` (the
//! invalidate after it), the volume and the [`Position`]. A stream opened
//! with `resumeAfter` or `startAfter` reads from just after it, so a
//! client resuming after a server restart misses nothing and repeats
//! nothing past its token; one whose records were trimmed gets
//! ChangeStreamHistoryLost (286).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use berth_docs::aggregate::Pipeline;
use berth_docs::changes::{OpType, Position, Record};
use berth_docs::table::Right;
use berth_mongo::backend::*;
use berth_security::principal::Principal;
use bson::{doc, Bson, Document};

use super::{codes, mongo, Ctx, TablesBackend};

/// Records read from the log per step.
const LOG_PAGE: usize = 256;
/// How long a `getMore` waits for events when the driver names no
/// `maxTimeMS` (MongoDB's default for awaitData cursors).
const AWAIT_DEFAULT: Duration = Duration::from_secs(1);
/// Longest wait one `getMore` may ask for.
const AWAIT_MAX: Duration = Duration::from_secs(60);
/// How often a node without a replica of the log's shard looks again.
const REMOTE_POLL: Duration = Duration::from_millis(100);

/// What a stream watches.
#[derive(Debug, Clone, PartialEq)]
enum Scope {
    /// One table, by path.
    Collection(String),
    /// The tables of one database directory.
    Database(String),
    /// Every table under the MongoDB root.
    Cluster,
}

/// `fullDocument` for update events.
#[derive(Debug, Clone, Copy, PartialEq)]
enum FullDocument {
    Default,
    /// The document after the update (updateLookup, whenAvailable, required).
    PostImage,
}

/// An open change stream.
pub(super) struct ChangeCursor {
    scope: Scope,
    /// The database the stream was opened on (names tables outside the root).
    db: String,
    vol: u64,
    shard: u64,
    /// Read up to here.
    pos: Position,
    full_document: FullDocument,
    pipeline: Option<Pipeline>,
    /// Skip events before this cluster time (`startAtOperationTime`).
    start_at: Option<bson::Timestamp>,
    /// Events read and shaped, not yet returned.
    ready: VecDeque<Document>,
    /// An invalidate was queued: nothing follows it.
    invalidated: bool,
    /// The token of the last event returned.
    last_returned: Option<Document>,
}

impl ChangeCursor {
    pub(super) fn is_done(&self) -> bool {
        self.invalidated && self.ready.is_empty()
    }

    /// `postBatchResumeToken` after a batch: the last event's when events
    /// wait, else the position read up to.
    pub(super) fn post_batch_token(&self) -> Document {
        match (&self.last_returned, self.ready.is_empty()) {
            (Some(t), false) => t.clone(),
            _ => token(self.vol, self.pos, false),
        }
    }
}

/// The resume token of a position.
fn token(vol: u64, pos: Position, invalidate: bool) -> Document {
    let kind = if invalidate { "B2" } else { "B1" };
    let data = format!("{kind}{vol:016X}{:016X}{:016X}", pos.index, pos.n);
    doc! {"_data": data}
}

/// A token's volume, position and whether it is an invalidate's.
fn parse_token(t: &Bson) -> Result<(u64, Position, bool), MongoError> {
    let bad = || {
        MongoError::new(
            codes::INVALID_RESUME_TOKEN,
            format!("not a resume token of this server: {t}"),
        )
    };
    let data = match t {
        Bson::Document(d) => d.get_str("_data").map_err(|_| bad())?,
        _ => return Err(bad()),
    };
    if data.len() != 50 || !data.is_ascii() {
        return Err(bad());
    }
    let invalidate = match &data[..2] {
        "B1" => false,
        "B2" => true,
        _ => return Err(bad()),
    };
    let hex = |r: std::ops::Range<usize>| u64::from_str_radix(&data[r], 16).map_err(|_| bad());
    let vol = hex(2..18)?;
    let pos = Position {
        index: hex(18..34)?,
        n: hex(34..50)?,
    };
    Ok((vol, pos, invalidate))
}

fn cluster_time(c: &Record, pos: Position) -> bson::Timestamp {
    bson::Timestamp {
        time: (c.wall.timestamp_millis() / 1000).clamp(0, u32::MAX as i64) as u32,
        increment: pos.index as u32,
    }
}

impl TablesBackend {
    /// Opens a change stream: `spec` is the `$changeStream` stage, `stages`
    /// the rest of the pipeline.
    pub(super) async fn open_change_stream(
        &self,
        p: &Principal,
        db: &str,
        collection: Option<&str>,
        spec: &Document,
        stages: &[Document],
    ) -> Result<ChangeCursor, MongoError> {
        let mut full_document = FullDocument::Default;
        let mut resume = None;
        let mut start_after = None;
        let mut start_at = None;
        let mut all = false;
        for (k, v) in spec {
            match (k.as_str(), v) {
                ("fullDocument", Bson::String(s)) => {
                    full_document = match s.as_str() {
                        "default" => FullDocument::Default,
                        "updateLookup" | "whenAvailable" | "required" => FullDocument::PostImage,
                        other => {
                            return Err(MongoError::bad_value(format!(
                                "unknown fullDocument option {other:?}"
                            )))
                        }
                    }
                }
                ("fullDocumentBeforeChange", Bson::String(s)) => match s.as_str() {
                    "off" | "whenAvailable" => {}
                    "required" => {
                        return Err(MongoError::new(
                            codes::COMMAND_NOT_SUPPORTED,
                            "pre-images (fullDocumentBeforeChange: required) are not kept",
                        ))
                    }
                    other => {
                        return Err(MongoError::bad_value(format!(
                            "unknown fullDocumentBeforeChange option {other:?}"
                        )))
                    }
                },
                ("resumeAfter", t) => resume = Some(parse_token(t)?),
                ("startAfter", t) => start_after = Some(parse_token(t)?),
                ("startAtOperationTime", Bson::Timestamp(ts)) => start_at = Some(*ts),
                ("allChangesForCluster", Bson::Boolean(b)) => all = *b,
                ("showExpandedEvents" | "showSystemEvents" | "showMigrationEvents", _) => {}
                (k, v) => {
                    return Err(MongoError::failed_to_parse(format!(
                        "unknown or mistyped $changeStream option {k}: {v}"
                    )))
                }
            }
        }
        if [resume.is_some(), start_after.is_some(), start_at.is_some()]
            .iter()
            .filter(|x| **x)
            .count()
            > 1
        {
            return Err(MongoError::bad_value(
                "only one of resumeAfter, startAfter and startAtOperationTime may be given",
            ));
        }
        if resume.is_some_and(|(_, _, invalidate)| invalidate) {
            return Err(MongoError::new(
                codes::INVALID_RESUME_TOKEN,
                "cannot resume after an invalidate event; use startAfter",
            ));
        }
        let (scope, path) = match (collection, all) {
            (Some(coll), _) => {
                let path = self.path(&Namespace::new(db, coll))?;
                // A collection that exists must be readable; one that does
                // not yet may be watched (as in MongoDB).
                self.open(p, &Namespace::new(db, coll), Right::Read).await?;
                (Scope::Collection(path.clone()), path)
            }
            (None, true) => {
                if db != "admin" {
                    return Err(MongoError::bad_value(
                        "allChangesForCluster is only allowed on the admin database",
                    ));
                }
                (Scope::Cluster, self.root.clone())
            }
            (None, false) => {
                super::check_db(db)?;
                let dir = self.db_path(db);
                (Scope::Database(dir.clone()), dir)
            }
        };
        let vol = self.volume_of(p, &path).await?;
        let shard = self
            .meta
            .map()
            .volume(vol)
            .map(|v| v.shard_id)
            .ok_or_else(|| MongoError::internal(format!("volume {vol} is not in the map")))?;
        let pipeline = match stages.is_empty() {
            true => None,
            false => {
                let pipeline = Pipeline::parse(stages).map_err(mongo)?;
                if pipeline.out().is_some() {
                    return Err(MongoError::bad_value(
                        "$out is not allowed in a change stream",
                    ));
                }
                Some(pipeline)
            }
        };
        let pos = match resume.or(start_after) {
            Some((tvol, pos, _)) => {
                if tvol != vol {
                    return Err(MongoError::new(
                        codes::INVALID_RESUME_TOKEN,
                        "the resume token belongs to another stream's log",
                    ));
                }
                if let Some(trimmed) = self.tables.changes_trimmed(vol).await.map_err(mongo)? {
                    if pos < trimmed {
                        return Err(MongoError::new(
                            codes::CHANGE_STREAM_HISTORY_LOST,
                            "the resume point was trimmed from the change log (older than its retention)",
                        ));
                    }
                }
                pos
            }
            None if start_at.is_some() => Position::default(),
            // Now: after everything acknowledged so far.
            None => self.tables.changes_now(vol).await.map_err(mongo)?,
        };
        Ok(ChangeCursor {
            scope,
            db: db.to_string(),
            vol,
            shard,
            pos,
            full_document,
            pipeline,
            start_at,
            ready: VecDeque::new(),
            invalidated: false,
            last_returned: None,
        })
    }

    /// The volume holding `path`, or its deepest existing ancestor.
    async fn volume_of(&self, p: &Principal, path: &str) -> Result<u64, MongoError> {
        let ns = self.tables.namespace();
        let mut at = path.to_string();
        loop {
            match ns.stat(p, &at).await {
                Ok(e) => return Ok(e.volume_id),
                Err(e) if e.code == berth_meta::Code::NotFound && at != "/" => {
                    at = match berth_meta::map::split_parent(&at) {
                        Some((parent, _)) => parent.to_string(),
                        None => "/".to_string(),
                    };
                }
                Err(e) => return Err(mongo(berth_docs::table::from_meta(e))),
            }
        }
    }

    /// Up to `n` events of a stream (fewer, or none, when no more are
    /// committed yet).
    pub(super) async fn take_changes(
        &self,
        p: &Principal,
        c: &mut ChangeCursor,
        n: usize,
    ) -> Result<Vec<Document>, MongoError> {
        if c.ready.is_empty() && !c.invalidated {
            self.read_changes(p, c).await?;
        }
        let mut out = Vec::new();
        while out.len() < n {
            let Some(d) = c.ready.pop_front() else { break };
            c.last_returned = d.get_document("_id").ok().cloned();
            out.push(d);
        }
        Ok(out)
    }

    /// Like [`TablesBackend::take_changes`], waiting up to `wait` for
    /// events when none are there.
    pub(super) async fn await_changes(
        &self,
        p: &Principal,
        c: &mut ChangeCursor,
        n: usize,
        wait: Option<u64>,
    ) -> Result<Vec<Document>, MongoError> {
        let wait = wait
            .filter(|ms| *ms > 0)
            .map_or(AWAIT_DEFAULT, Duration::from_millis)
            .min(AWAIT_MAX);
        let deadline = Instant::now() + wait;
        let mut applied = self.meta.router().raft().applied_watch(c.shard);
        loop {
            let out = self.take_changes(p, c, n).await?;
            let left = deadline.saturating_duration_since(Instant::now());
            if !out.is_empty() || c.is_done() || left.is_zero() {
                return Ok(out);
            }
            match &mut applied {
                Some(w) => {
                    // Wakes on the next entry applied to the shard.
                    let _ = tokio::time::timeout(left, w.changed()).await;
                }
                None => tokio::time::sleep(left.min(REMOTE_POLL)).await,
            }
        }
    }

    /// Reads one page of the log into `c.ready`.
    async fn read_changes(&self, p: &Principal, c: &mut ChangeCursor) -> Result<(), MongoError> {
        let (records, reached) = self
            .tables
            .changes_after(c.vol, c.pos, LOG_PAGE)
            .await
            .map_err(mongo)?;
        let mut readable: HashMap<String, bool> = HashMap::new();
        let mut events = Vec::new();
        let mut invalidate = None;
        for (pos, change) in records {
            c.pos = pos;
            let in_scope = match &c.scope {
                Scope::Collection(path) => change.path == *path,
                Scope::Database(dir) => in_dir(&change.path, dir),
                Scope::Cluster => {
                    let root = self.root.as_str();
                    change
                        .path
                        .strip_prefix(root)
                        .and_then(|rest| rest.strip_prefix('/'))
                        .is_some_and(|rest| rest.split('/').count() == 2)
                }
            };
            if !in_scope {
                continue;
            }
            if c.start_at.is_some_and(|t| cluster_time(&change, pos) < t) {
                continue;
            }
            let may_read = match readable.get(&change.path) {
                Some(r) => *r,
                None => {
                    let r = match &c.scope {
                        // Checked when opened; a dropped table's events
                        // still reach its watcher.
                        Scope::Collection(_) => true,
                        _ => self.tables.open(p, &change.path, Right::Read).await.is_ok(),
                    };
                    readable.insert(change.path.clone(), r);
                    r
                }
            };
            if !may_read && !matches!(change.op, OpType::Drop | OpType::Rename) {
                continue;
            }
            events.push(self.event(c, pos, &change));
            let ends = matches!(c.scope, Scope::Collection(_))
                && matches!(change.op, OpType::Drop | OpType::Rename);
            if ends {
                invalidate = Some((pos, change));
                break;
            }
        }
        if invalidate.is_none() {
            c.pos = c.pos.max(reached);
        }
        let mut events = match &c.pipeline {
            Some(pipeline) => {
                let mut ctx = Ctx {
                    lookups: HashMap::new(),
                };
                pipeline.run(events, &mut ctx).map_err(mongo)?
            }
            None => events,
        };
        for e in &events {
            if e.get("_id").is_none_or(|id| parse_token(id).is_err()) {
                return Err(MongoError::new(
                    codes::CHANGE_STREAM_FATAL_ERROR,
                    "a change stream's pipeline must not change or remove the events' _id (their resume token)",
                ));
            }
        }
        if let Some((pos, change)) = invalidate {
            events.push(doc! {
                "_id": token(c.vol, pos, true),
                "operationType": "invalidate",
                "clusterTime": cluster_time(&change, pos),
                "wallTime": change.wall,
            });
            c.invalidated = true;
        }
        c.ready.extend(events);
        Ok(())
    }

    /// MongoDB's change event for a record.
    fn event(&self, c: &ChangeCursor, pos: Position, change: &Record) -> Document {
        let mut e = doc! {
            "_id": token(c.vol, pos, false),
            "operationType": change.op.name(),
            "clusterTime": cluster_time(change, pos),
            "wallTime": change.wall,
        };
        let ns = |path: &str| -> Document {
            let (db, coll) = self.names(path, &c.db);
            doc! {"db": db, "coll": coll}
        };
        e.insert("ns", ns(&change.path));
        if let Some(to) = &change.to {
            e.insert("to", ns(to));
        }
        if let Some(id) = &change.id {
            e.insert("documentKey", doc! {"_id": id.clone()});
        }
        match change.op {
            OpType::Insert | OpType::Replace => {
                if let Some(d) = &change.doc {
                    e.insert("fullDocument", d.clone());
                }
            }
            OpType::Update => {
                if let Some(u) = &change.update {
                    e.insert("updateDescription", u.clone());
                }
                if c.full_document == FullDocument::PostImage {
                    e.insert(
                        "fullDocument",
                        change.doc.clone().map_or(Bson::Null, Bson::Document),
                    );
                }
            }
            OpType::Delete | OpType::Drop | OpType::Rename => {}
        }
        e
    }

    /// The database and collection names of a table path (`db`, the path,
    /// for a table outside the root).
    fn names(&self, path: &str, db: &str) -> (String, String) {
        let under = path
            .strip_prefix(self.root.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
            .and_then(|rest| rest.split_once('/'))
            .filter(|(_, coll)| !coll.contains('/'));
        match under {
            Some((d, coll)) => (d.to_string(), coll.to_string()),
            None => (db.to_string(), path.to_string()),
        }
    }
}

/// Whether `path` is an entry directly in `dir`.
fn in_dir(path: &str, dir: &str) -> bool {
    path.strip_prefix(dir)
        .and_then(|rest| rest.strip_prefix('/'))
        .is_some_and(|name| !name.is_empty() && !name.contains('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_others() {
        let pos = Position { index: 77, n: 3 };
        let t = Bson::Document(token(5, pos, false));
        assert_eq!(parse_token(&t).unwrap(), (5, pos, false));
        let t = Bson::Document(token(5, Position::after_index(9), true));
        assert_eq!(
            parse_token(&t).unwrap(),
            (5, Position::after_index(9), true)
        );
        for bad in [
            Bson::Document(doc! {"_data": "826000"}),
            Bson::Document(doc! {"x": 1}),
            Bson::Int32(1),
            Bson::Document(doc! {"_data": format!("B3{}", "0".repeat(48))}),
        ] {
            assert_eq!(
                parse_token(&bad).unwrap_err().code,
                codes::INVALID_RESUME_TOKEN
            );
        }
        // Tokens order as their positions (drivers compare nothing, but
        // people reading them may).
        let a = token(1, Position { index: 2, n: 0 }, false);
        let b = token(1, Position { index: 10, n: 0 }, false);
        assert!(a.get_str("_data").unwrap() < b.get_str("_data").unwrap());
    }

    #[test]
    fn directories_hold_their_direct_entries() {
        assert!(in_dir("/tables/db/c", "/tables/db"));
        assert!(!in_dir("/tables/db/c/d", "/tables/db"));
        assert!(!in_dir("/tables/dbx/c", "/tables/db"));
        assert!(!in_dir("/tables/db", "/tables/db"));
    }
}
