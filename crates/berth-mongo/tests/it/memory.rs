//! An in-memory backend for the gateway's tests (and the example server):
//! collections in a map, equality filters on top-level fields only, `$set`
//! updates and replacements, cursors owned by their principal. It is just
//! enough to drive the gateway; the real query language is berth-docs'.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

use berth_mongo::codes;
use berth_mongo::*;
use bson::oid::ObjectId;
use bson::{doc, Bson, Document};

/// alice's password (SCRAM and PLAIN).
pub const PASSWORD: &str = "secret";
/// A "ticket" PLAIN accepts with any user name, for bob.
pub const TICKET: &str = "berth1.bob.signature";
/// MongoDB's default first batch.
const BATCH_DEFAULT: usize = 101;

struct Cursor {
    owner: String,
    rest: VecDeque<Document>,
}

type Collections = BTreeMap<String, Vec<Document>>;

pub struct Memory {
    dbs: Mutex<BTreeMap<String, Collections>>,
    indexes: Mutex<HashMap<(String, String), Vec<Document>>>,
    cursors: Mutex<HashMap<i64, Cursor>>,
    next_cursor: AtomicI64,
    alice: ScramCredential,
}

impl Default for Memory {
    fn default() -> Self {
        Memory::new()
    }
}

fn err(code: i32, msg: impl Into<String>) -> MongoError {
    MongoError::new(code, msg)
}

/// Equality on top-level fields; operators are refused.
fn matches(doc: &Document, filter: &Document) -> Result<bool, MongoError> {
    for (k, v) in filter {
        if k.starts_with('$')
            || matches!(v, Bson::Document(d) if d.keys().any(|k| k.starts_with('$')))
        {
            return Err(err(
                codes::BAD_VALUE,
                "the test backend knows equality only",
            ));
        }
        if doc.get(k) != Some(v) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `$set` of top-level fields, or a replacement (keeping `_id`).
fn apply(doc: &mut Document, u: &UpdateModification) -> Result<bool, MongoError> {
    let UpdateModification::Document(u) = u else {
        return Err(err(codes::BAD_VALUE, "the test backend has no pipelines"));
    };
    let before = doc.clone();
    if u.keys().next().is_some_and(|k| k.starts_with('$')) {
        for (op, fields) in u {
            let (Some(Bson::Document(fields)), "$set") = (Some(fields), op.as_str()) else {
                return Err(err(
                    codes::BAD_VALUE,
                    format!("the test backend has no {op}"),
                ));
            };
            for (k, v) in fields {
                doc.insert(k.clone(), v.clone());
            }
        }
    } else {
        let id = doc.get("_id").cloned();
        *doc = u.clone();
        if let Some(id) = id {
            doc.insert("_id", id);
        }
    }
    Ok(*doc != before)
}

fn dup_key(ns: &Namespace, id: &Bson) -> MongoError {
    err(
        codes::DUPLICATE_KEY,
        format!("E11000 duplicate key error collection: {ns} index: _id_ dup key: {{ _id: {id} }}"),
    )
}

impl Memory {
    pub fn new() -> Memory {
        Memory {
            dbs: Mutex::default(),
            indexes: Mutex::default(),
            cursors: Mutex::default(),
            next_cursor: AtomicI64::new(1000),
            alice: berth_security::scram::credential(
                PASSWORD,
                berth_security::scram::Mechanism::Sha256,
            )
            .expect("a credential"),
        }
    }

    fn with_coll<T>(&self, ns: &Namespace, f: impl FnOnce(&mut Vec<Document>) -> T) -> T {
        let mut dbs = self.dbs.lock().unwrap();
        let coll = dbs
            .entry(ns.db.clone())
            .or_default()
            .entry(ns.coll.clone())
            .or_default();
        f(coll)
    }

    fn read(&self, ns: &Namespace, filter: &Document) -> Result<Vec<Document>, MongoError> {
        let dbs = self.dbs.lock().unwrap();
        let Some(coll) = dbs.get(&ns.db).and_then(|d| d.get(&ns.coll)) else {
            return Ok(vec![]);
        };
        let mut out = vec![];
        for d in coll {
            if matches(d, filter)? {
                out.push(d.clone());
            }
        }
        Ok(out)
    }

    fn open_cursor(
        &self,
        p: &str,
        mut docs: VecDeque<Document>,
        batch: Option<u32>,
        single: bool,
    ) -> CursorBatch {
        let n = batch.map_or(BATCH_DEFAULT, |b| b as usize);
        let n = if n == 0 && batch.is_some() {
            0
        } else {
            n.max(1)
        };
        let first: Vec<Document> = docs.drain(..n.min(docs.len())).collect();
        if docs.is_empty() || single {
            return CursorBatch {
                id: 0,
                documents: first,
                ..Default::default()
            };
        }
        let id = self.next_cursor.fetch_add(1, Ordering::Relaxed);
        self.cursors.lock().unwrap().insert(
            id,
            Cursor {
                owner: p.to_string(),
                rest: docs,
            },
        );
        CursorBatch {
            id,
            documents: first,
            ..Default::default()
        }
    }

    fn insert_one(&self, ns: &Namespace, mut d: Document) -> Result<Bson, MongoError> {
        if !d.contains_key("_id") {
            let mut with_id = doc! {"_id": ObjectId::new()};
            with_id.extend(d);
            d = with_id;
        }
        let id = d.get("_id").cloned().unwrap_or(Bson::Null);
        self.with_coll(ns, |c| {
            if c.iter().any(|o| o.get("_id") == Some(&id)) {
                return Err(dup_key(ns, &id));
            }
            c.push(d);
            Ok(id.clone())
        })
    }
}

impl Backend for Memory {
    type Principal = String;

    async fn authenticate_plain(&self, user: &str, password: &str) -> Result<String, String> {
        match (user, password) {
            ("alice", PASSWORD) => Ok("alice".into()),
            (_, TICKET) => Ok("bob".into()),
            _ => Err("wrong password or unknown user".into()),
        }
    }

    async fn scram_credential(&self, user: &str) -> Option<ScramCredential> {
        (user == "alice").then(|| self.alice.clone())
    }

    async fn scram_principal(&self, user: &str) -> Result<String, String> {
        Ok(user.to_string())
    }

    async fn insert(&self, _p: &String, req: Insert) -> Result<WriteResult, MongoError> {
        let mut r = WriteResult::default();
        for (index, d) in req.documents.into_iter().enumerate() {
            match self.insert_one(&req.ns, d) {
                Ok(_) => r.n += 1,
                Err(error) => {
                    r.write_errors.push(WriteError { index, error });
                    if req.ordered {
                        break;
                    }
                }
            }
        }
        Ok(r)
    }

    async fn update(&self, _p: &String, req: Update) -> Result<WriteResult, MongoError> {
        let mut r = WriteResult::default();
        for (index, s) in req.updates.into_iter().enumerate() {
            let outcome = self.with_coll(&req.ns, |c| -> Result<(i64, i64), MongoError> {
                let (mut n, mut modified) = (0, 0);
                for d in c.iter_mut() {
                    if matches(d, &s.q)? {
                        n += 1;
                        modified += i64::from(apply(d, &s.u)?);
                        if !s.multi {
                            break;
                        }
                    }
                }
                Ok((n, modified))
            });
            match outcome {
                Ok((0, _)) if s.upsert => {
                    let mut d = s.q.clone();
                    apply(&mut d, &s.u)?;
                    let id = self.insert_one(&req.ns, d)?;
                    r.n += 1;
                    r.upserted.push(Upserted { index, id });
                }
                Ok((n, m)) => {
                    r.n += n;
                    r.n_modified += m;
                }
                Err(error) => {
                    r.write_errors.push(WriteError { index, error });
                    if req.ordered {
                        break;
                    }
                }
            }
        }
        Ok(r)
    }

    async fn delete(&self, _p: &String, req: Delete) -> Result<WriteResult, MongoError> {
        let mut r = WriteResult::default();
        for s in req.deletes {
            let n = self.with_coll(&req.ns, |c| -> Result<i64, MongoError> {
                let mut n = 0;
                let mut i = 0;
                while i < c.len() {
                    if (s.multi || n == 0) && matches(&c[i], &s.q)? {
                        c.remove(i);
                        n += 1;
                    } else {
                        i += 1;
                    }
                }
                Ok(n)
            })?;
            r.n += n;
        }
        Ok(r)
    }

    async fn find(&self, p: &String, req: Find) -> Result<CursorBatch, MongoError> {
        let mut docs: VecDeque<Document> = self.read(&req.ns, &req.filter)?.into();
        docs.drain(..(req.skip as usize).min(docs.len()));
        if req.limit > 0 {
            docs.truncate(req.limit as usize);
        }
        Ok(self.open_cursor(p, docs, req.batch_size, req.single_batch))
    }

    async fn get_more(&self, p: &String, req: GetMore) -> Result<CursorBatch, MongoError> {
        let mut cursors = self.cursors.lock().unwrap();
        let Some(c) = cursors.get_mut(&req.cursor_id) else {
            return Err(err(
                codes::CURSOR_NOT_FOUND,
                format!("cursor id {} not found", req.cursor_id),
            ));
        };
        if c.owner != *p {
            return Err(err(
                codes::UNAUTHORIZED,
                format!("cursor id {} belongs to someone else", req.cursor_id),
            ));
        }
        let n = req.batch_size.map_or(usize::MAX, |b| (b as usize).max(1));
        let batch: Vec<Document> = c.rest.drain(..n.min(c.rest.len())).collect();
        let id = if c.rest.is_empty() {
            cursors.remove(&req.cursor_id);
            0
        } else {
            req.cursor_id
        };
        Ok(CursorBatch {
            id,
            documents: batch,
            ..Default::default()
        })
    }

    async fn kill_cursors(
        &self,
        p: &String,
        req: KillCursors,
    ) -> Result<KilledCursors, MongoError> {
        let mut cursors = self.cursors.lock().unwrap();
        let mut k = KilledCursors::default();
        for id in req.cursor_ids {
            match cursors.get(&id) {
                Some(c) if c.owner == *p => {
                    cursors.remove(&id);
                    k.killed.push(id);
                }
                _ => k.not_found.push(id),
            }
        }
        Ok(k)
    }

    async fn count(&self, _p: &String, req: Count) -> Result<u64, MongoError> {
        let n = self.read(&req.ns, &req.query)?.len() as u64;
        let n = n.saturating_sub(req.skip);
        Ok(if req.limit > 0 { n.min(req.limit) } else { n })
    }

    async fn distinct(&self, _p: &String, req: Distinct) -> Result<Vec<Bson>, MongoError> {
        let mut values: Vec<Bson> = vec![];
        for d in self.read(&req.ns, &req.query)? {
            if let Some(v) = d.get(&req.key) {
                if !values.contains(v) {
                    values.push(v.clone());
                }
            }
        }
        Ok(values)
    }

    async fn aggregate(&self, p: &String, req: Aggregate) -> Result<CursorBatch, MongoError> {
        let Some(coll) = req.collection.clone() else {
            return Err(err(
                codes::INVALID_NAMESPACE,
                "the test backend needs a collection",
            ));
        };
        let ns = Namespace::new(req.db.clone(), coll);
        let mut docs = self.read(&ns, &doc! {})?;
        for stage in &req.pipeline {
            match stage.iter().next() {
                Some((k, Bson::Document(f))) if k == "$match" => {
                    let mut kept = vec![];
                    for d in docs {
                        if matches(&d, f)? {
                            kept.push(d);
                        }
                    }
                    docs = kept;
                }
                Some((k, Bson::String(field))) if k == "$count" => {
                    docs = vec![doc! {field.clone(): docs.len() as i32}];
                }
                _ => {
                    return Err(err(
                        codes::BAD_VALUE,
                        "the test backend knows $match and $count",
                    ))
                }
            }
        }
        Ok(self.open_cursor(p, docs.into(), req.batch_size, false))
    }

    async fn find_and_modify(
        &self,
        _p: &String,
        req: FindAndModify,
    ) -> Result<FindAndModifyResult, MongoError> {
        let found = self.with_coll(&req.ns, |c| -> Result<_, MongoError> {
            let Some(i) = c
                .iter()
                .position(|d| matches(d, &req.query).unwrap_or(false))
            else {
                return Ok(None);
            };
            match &req.action {
                FindAndModifyAction::Remove => Ok(Some((c.remove(i), None))),
                FindAndModifyAction::Update { update, .. } => {
                    let before = c[i].clone();
                    apply(&mut c[i], update)?;
                    Ok(Some((before, Some(c[i].clone()))))
                }
            }
        })?;
        match (found, &req.action) {
            (Some((before, _)), FindAndModifyAction::Remove) => Ok(FindAndModifyResult {
                n: 1,
                value: Some(before),
                ..Default::default()
            }),
            (Some((before, after)), FindAndModifyAction::Update { return_new, .. }) => {
                Ok(FindAndModifyResult {
                    n: 1,
                    updated_existing: true,
                    upserted: None,
                    value: if *return_new { after } else { Some(before) },
                })
            }
            (
                None,
                FindAndModifyAction::Update {
                    update,
                    upsert: true,
                    return_new,
                },
            ) => {
                let mut d = req.query.clone();
                apply(&mut d, update)?;
                let id = self.insert_one(&req.ns, d)?;
                let value = if *return_new {
                    self.read(&req.ns, &doc! {"_id": id.clone()})?.pop()
                } else {
                    None
                };
                Ok(FindAndModifyResult {
                    n: 1,
                    updated_existing: false,
                    upserted: Some(id),
                    value,
                })
            }
            (None, _) => Ok(FindAndModifyResult::default()),
        }
    }

    async fn create_collection(
        &self,
        _p: &String,
        ns: Namespace,
        _options: Document,
    ) -> Result<(), MongoError> {
        let mut dbs = self.dbs.lock().unwrap();
        let db = dbs.entry(ns.db.clone()).or_default();
        if db.contains_key(&ns.coll) {
            return Err(err(
                codes::NAMESPACE_EXISTS,
                format!("Collection {ns} already exists."),
            ));
        }
        db.insert(ns.coll, vec![]);
        Ok(())
    }

    async fn drop_collection(&self, _p: &String, ns: Namespace) -> Result<(), MongoError> {
        if let Some(db) = self.dbs.lock().unwrap().get_mut(&ns.db) {
            db.remove(&ns.coll);
        }
        Ok(())
    }

    async fn drop_database(&self, _p: &String, db: String) -> Result<(), MongoError> {
        self.dbs.lock().unwrap().remove(&db);
        Ok(())
    }

    async fn list_collections(
        &self,
        p: &String,
        req: ListCollections,
    ) -> Result<CursorBatch, MongoError> {
        let names: Vec<String> = self
            .dbs
            .lock()
            .unwrap()
            .get(&req.db)
            .map(|d| d.keys().cloned().collect())
            .unwrap_or_default();
        let mut entries = VecDeque::new();
        for name in names {
            let entry = if req.name_only {
                doc! {"name": name, "type": "collection"}
            } else {
                doc! {"name": name, "type": "collection", "options": {},
                "info": {"readOnly": false}, "idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"}}
            };
            if matches(&entry, &req.filter)? {
                entries.push_back(entry);
            }
        }
        Ok(self.open_cursor(p, entries, req.batch_size, false))
    }

    async fn list_databases(
        &self,
        _p: &String,
        _req: ListDatabases,
    ) -> Result<Vec<DatabaseInfo>, MongoError> {
        Ok(self
            .dbs
            .lock()
            .unwrap()
            .iter()
            .map(|(name, colls)| DatabaseInfo {
                name: name.clone(),
                size_on_disk_bytes: 4096,
                empty: colls.values().all(Vec::is_empty),
            })
            .collect())
    }

    async fn create_indexes(
        &self,
        _p: &String,
        req: CreateIndexes,
    ) -> Result<IndexesCreated, MongoError> {
        let mut all = self.indexes.lock().unwrap();
        let list = all
            .entry((req.ns.db.clone(), req.ns.coll.clone()))
            .or_default();
        let before = list.len() as i64 + 1;
        list.extend(req.indexes);
        Ok(IndexesCreated {
            indexes_before: before,
            indexes_after: list.len() as i64 + 1,
            created_collection_automatically: false,
            note: None,
        })
    }

    async fn list_indexes(&self, p: &String, req: ListIndexes) -> Result<CursorBatch, MongoError> {
        let mut specs = VecDeque::from([doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"}]);
        if let Some(list) = self.indexes.lock().unwrap().get(&(req.ns.db, req.ns.coll)) {
            specs.extend(list.iter().cloned());
        }
        Ok(self.open_cursor(p, specs, req.batch_size, false))
    }

    async fn drop_indexes(&self, _p: &String, req: DropIndexes) -> Result<i64, MongoError> {
        let mut all = self.indexes.lock().unwrap();
        let list = all.entry((req.ns.db, req.ns.coll)).or_default();
        let was = list.len() as i64 + 1;
        match req.index {
            IndexSelector::All => list.clear(),
            IndexSelector::Name(n) => list.retain(|s| s.get_str("name").ok() != Some(n.as_str())),
            _ => return Err(err(codes::BAD_VALUE, "the test backend drops by name")),
        }
        Ok(was)
    }

    async fn rename_collection(
        &self,
        _p: &String,
        req: RenameCollection,
    ) -> Result<(), MongoError> {
        let mut dbs = self.dbs.lock().unwrap();
        let docs = dbs
            .get_mut(&req.from.db)
            .and_then(|d| d.remove(&req.from.coll))
            .ok_or_else(|| {
                err(
                    codes::NAMESPACE_NOT_FOUND,
                    "source namespace does not exist",
                )
            })?;
        dbs.entry(req.to.db).or_default().insert(req.to.coll, docs);
        Ok(())
    }

    async fn coll_stats(&self, _p: &String, ns: Namespace) -> Result<CollStats, MongoError> {
        let docs = self.read(&ns, &doc! {})?;
        let size: usize = docs.iter().map(|d| d.to_vec().map_or(0, |v| v.len())).sum();
        Ok(CollStats {
            count: docs.len() as u64,
            size_bytes: size as u64,
            storage_size_bytes: size as u64,
            index_sizes: vec![("_id_".into(), 4096)],
        })
    }

    async fn db_stats(&self, _p: &String, db: String) -> Result<DbStats, MongoError> {
        let dbs = self.dbs.lock().unwrap();
        let colls = dbs.get(&db);
        Ok(DbStats {
            collections: colls.map_or(0, |c| c.len() as u64),
            objects: colls.map_or(0, |c| c.values().map(|v| v.len() as u64).sum()),
            ..Default::default()
        })
    }

    async fn explain(&self, _p: &String, req: Explain) -> Result<Document, MongoError> {
        let what = match req.command {
            Explainable::Find(f) => format!("find on {}", f.ns),
            Explainable::Aggregate(a) => format!("aggregate on {}", a.db),
            Explainable::Count(c) => format!("count on {}", c.ns),
            other => format!("{other:?}"),
        };
        Ok(doc! {"queryPlanner": {"winningPlan": {"stage": "COLLSCAN"}, "explained": what}})
    }
}
