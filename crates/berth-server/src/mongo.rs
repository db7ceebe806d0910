//! The MongoDB gateway's backend (`berth_mongo::backend::Backend`) over the
//! tables service (`berth_docs::table::Tables`): collection names to table
//! paths, commands to table calls, cursors, and the service's errors in
//! MongoDB's terms.
//!
//! Names: database `db`, collection `coll` is the table `<root>/db/coll`
//! (`--mongo-root`); a collection whose name starts with `/` is the table at
//! that path, in any database.

mod changes;
mod txns;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_docs::aggregate::{Limits, Pipeline, StageContext};
use berth_docs::expr::{let_variables, Variables};
use berth_docs::matcher::Filter;
use berth_docs::merge::{Merge, WhenNotMatched};
use berth_docs::plan::{IndexPlan, QueryPlan};
use berth_docs::projection::Projection;
use berth_docs::retry::Stmt;
use berth_docs::table::{Right, TableRef, Tables};
use berth_docs::update::{ApplyContext, Update as UpdateSpec};
use berth_docs::DocError;
use berth_meta::{Code, Meta};
use berth_mongo::backend::*;
use berth_security::principal::Principal;
use bson::{doc, Bson, Document};
use parking_lot::Mutex;

/// Documents in a first batch when the driver names no size (MongoDB's).
const FIRST_BATCH_DEFAULT: usize = 101;
/// Bytes of documents a query holds in memory to sort or group them
/// (MongoDB's 100 MB blocking-sort limit).
const MEMORY_BYTES_MAX: usize = 100 * 1024 * 1024;
/// A cursor unused this long is closed (MongoDB's `cursorTimeoutMillis`).
const CURSOR_IDLE: Duration = Duration::from_secs(600);
/// Open cursors per node.
const CURSORS_MAX: usize = 10_000;
/// Bytes of values a `distinct` answers at most (MongoDB's 16 MiB).
const DISTINCT_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Documents read per page of a streamed scan.
const SCAN_PAGE: usize = 256;

/// What a cursor still has to give.
enum Rest {
    /// Computed results (sorted queries, aggregations, listings).
    Queued(VecDeque<Document>),
    /// An unsorted query reading its table as it goes.
    Scan(Box<Scan>),
    /// A change stream.
    Changes(Box<changes::ChangeCursor>),
}

/// An unsorted query reading the table in `_id` order from after `after`.
struct Scan {
    table: TableRef,
    filter: Filter,
    projection: Option<Projection>,
    /// The document keys still to read: `[from, end)`, in `_id` order.
    from: Vec<u8>,
    end: Vec<u8>,
    /// Matches still to skip, and to return (0: no limit).
    skip: u64,
    left: u64,
    /// Read matches not yet returned.
    ready: VecDeque<Document>,
    done: bool,
}

struct Cursor {
    owner: String,
    rest: Rest,
    used: Instant,
}

pub struct TablesBackend {
    tables: Arc<Tables>,
    meta: Arc<Meta>,
    root: String,
    cursors: Mutex<HashMap<i64, Cursor>>,
    txns: txns::Transactions,
}

impl TablesBackend {
    pub fn new(tables: Arc<Tables>, meta: Arc<Meta>, root: String) -> TablesBackend {
        TablesBackend {
            tables,
            meta,
            root: root.trim_end_matches('/').to_string(),
            cursors: Mutex::new(HashMap::new()),
            txns: txns::Transactions::default(),
        }
    }

    /// The table path of a collection.
    fn path(&self, ns: &Namespace) -> Result<String, MongoError> {
        check_db(&ns.db)?;
        if ns.coll.starts_with('/') {
            return Ok(ns.coll.clone());
        }
        if ns.coll.is_empty() || ns.coll.contains(['/', '\0']) || ns.coll.starts_with('$') {
            return Err(MongoError::new(
                codes::INVALID_NAMESPACE,
                format!("Invalid collection name: {:?}", ns.coll),
            ));
        }
        Ok(format!("{}/{}", self.db_path(&ns.db), ns.coll))
    }

    fn db_path(&self, db: &str) -> String {
        format!("{}/{db}", self.root)
    }

    async fn open(
        &self,
        p: &Principal,
        ns: &Namespace,
        right: Right,
    ) -> Result<Option<TableRef>, MongoError> {
        let path = self.path(ns)?;
        let opened = match txns::current() {
            Some(txn) => self.tables.open_in(p, &path, right, &txn).await,
            None => self.tables.open(p, &path, right).await,
        };
        match opened {
            Ok(t) => Ok(Some(t)),
            Err(e)
                if e.code == codes::NAMESPACE_NOT_FOUND && !e.message.contains("not a table") =>
            {
                Ok(None)
            }
            Err(e) => Err(mongo(e)),
        }
    }

    /// Opens the table of a collection, creating it (and its database)
    /// when missing, as MongoDB's first insert does. In a transaction, the
    /// creation is part of it: seen by it alone until it commits, gone if
    /// it aborts.
    async fn open_or_create(&self, p: &Principal, ns: &Namespace) -> Result<TableRef, MongoError> {
        let path = self.path(ns)?;
        match txns::current() {
            Some(txn) => self.tables.open_or_create_in(p, &path, &txn).await,
            None => self.tables.open_or_create(p, &path).await,
        }
        .map_err(mongo)
    }

    /// A new cursor for `rest` (0 when it has nothing left).
    fn park(&self, p: &Principal, rest: Rest) -> Result<i64, MongoError> {
        if rest.is_done() {
            return Ok(0);
        }
        let mut cursors = self.cursors.lock();
        let now = Instant::now();
        cursors.retain(|_, c| now.duration_since(c.used) < CURSOR_IDLE);
        if cursors.len() >= CURSORS_MAX {
            return Err(MongoError::new(
                codes::OPERATION_FAILED,
                format!("too many open cursors on this node ({CURSORS_MAX}); close some"),
            ));
        }
        let mut id = 0;
        while id == 0 || cursors.contains_key(&id) {
            id = (rand::random::<u64>() >> 1) as i64;
        }
        cursors.insert(
            id,
            Cursor {
                owner: p.name.clone(),
                rest,
                used: now,
            },
        );
        Ok(id)
    }

    /// Up to `n` documents (and at most a reply's bytes) from `rest`.
    async fn take(
        &self,
        p: &Principal,
        rest: &mut Rest,
        n: usize,
    ) -> Result<Vec<Document>, MongoError> {
        let mut out = Vec::new();
        let mut bytes = 0;
        let full =
            |out: &Vec<Document>, bytes: usize| out.len() >= n || bytes >= BATCH_BYTES_MAX / 2;
        match rest {
            Rest::Changes(c) => return self.take_changes(p, c, n).await,
            Rest::Queued(q) => {
                while !full(&out, bytes) {
                    let Some(d) = q.pop_front() else { break };
                    bytes += doc_bytes(&d);
                    out.push(d);
                }
            }
            Rest::Scan(scan) => loop {
                let Scan {
                    table,
                    filter,
                    projection,
                    from,
                    end,
                    skip,
                    left,
                    ready,
                    done,
                } = &mut **scan;
                while !full(&out, bytes) {
                    let Some(d) = ready.pop_front() else { break };
                    bytes += doc_bytes(&d);
                    out.push(d);
                }
                if full(&out, bytes) || *done {
                    break;
                }
                let (page, more) = self
                    .tables
                    .page_between(p, table, from, end, SCAN_PAGE)
                    .await
                    .map_err(mongo)?;
                if let Some((k, _)) = page.last() {
                    *from = k.clone();
                    from.push(0);
                }
                *done = !more;
                for (_, d) in page {
                    let Some(m) = filter.match_details(&d) else {
                        continue;
                    };
                    if *skip > 0 {
                        *skip -= 1;
                        continue;
                    }
                    let d = match projection {
                        Some(pr) => pr.apply(&d, Some(&m)).map_err(mongo)?,
                        None => d,
                    };
                    ready.push_back(d);
                    if *left > 0 {
                        *left -= 1;
                        if *left == 0 {
                            *done = true;
                            break;
                        }
                    }
                }
            },
        }
        Ok(out)
    }

    /// A first batch and the cursor holding the rest.
    async fn first_batch(
        &self,
        p: &Principal,
        mut rest: Rest,
        batch_size: Option<u32>,
        single: bool,
    ) -> Result<CursorBatch, MongoError> {
        let n = batch_size.map_or(FIRST_BATCH_DEFAULT, |b| {
            if b == 0 {
                usize::MAX
            } else {
                b as usize
            }
        });
        // batchSize 0 asks for an empty first batch and a cursor.
        let n = if batch_size == Some(0) { 0 } else { n };
        let documents = if n == 0 {
            Vec::new()
        } else {
            self.take(p, &mut rest, n).await?
        };
        let post_batch_resume_token = match &rest {
            Rest::Changes(c) => Some(c.post_batch_token()),
            _ => None,
        };
        let id = if single { 0 } else { self.park(p, rest)? };
        Ok(CursorBatch {
            id,
            documents,
            post_batch_resume_token,
        })
    }

    /// The matching documents of a table, all in memory (bounded), in `_id`
    /// order.
    async fn matching(
        &self,
        p: &Principal,
        t: &TableRef,
        filter: &Filter,
    ) -> Result<Vec<Document>, MongoError> {
        if let Some(ids) = filter.id_candidates() {
            return self.by_ids(p, t, &ids, filter).await;
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let (page, more) = self
                .tables
                .page(p, t, after.as_deref(), SCAN_PAGE)
                .await
                .map_err(mongo)?;
            if let Some((k, _)) = page.last() {
                after = Some(k.clone());
            }
            for (_, d) in page {
                if filter.matches(&d) {
                    bytes += doc_bytes(&d);
                    if bytes > MEMORY_BYTES_MAX {
                        return Err(too_much_memory());
                    }
                    out.push(d);
                }
            }
            if !more {
                return Ok(out);
            }
        }
    }

    /// Every document of a collection (none when it does not exist), for
    /// pipelines and `$lookup`.
    /// The documents with one of `ids` as `_id` that match `filter`, in
    /// `_id` order.
    async fn by_ids(
        &self,
        p: &Principal,
        t: &TableRef,
        ids: &[Bson],
        filter: &Filter,
    ) -> Result<Vec<Document>, MongoError> {
        let found = self.tables.by_ids(p, t, ids).await.map_err(mongo)?;
        Ok(found
            .into_iter()
            .map(|(_, d)| d)
            .filter(|d| filter.matches(d))
            .collect())
    }

    async fn all(&self, p: &Principal, ns: &Namespace) -> Result<Vec<Document>, MongoError> {
        match self.open(p, ns, Right::Read).await? {
            Some(t) => {
                self.matching(p, &t, &Filter::parse(&Document::new()).map_err(mongo)?)
                    .await
            }
            None => Ok(Vec::new()),
        }
    }

    /// A find's results: sorted in memory when asked, else streamed.
    async fn query(&self, p: &Principal, req: &Find) -> Result<Rest, MongoError> {
        refuse_collation(req.collation.as_ref())?;
        let vars = command_vars(req.let_vars.as_ref())?;
        let Some(t) = self.open(p, &req.ns, Right::Read).await? else {
            return Ok(Rest::Queued(VecDeque::new()));
        };
        let filter = Filter::parse_with(&req.filter, &vars).map_err(mongo)?;
        let projection = match &req.projection {
            Some(pr) if !pr.is_empty() => Some(Projection::parse(pr).map_err(mongo)?),
            _ => None,
        };
        let sort = req.sort.as_ref().filter(|s| !s.is_empty());
        if let Some(ids) = filter.id_candidates() {
            // The filter pins `_id`: read those documents by key.
            let docs = self.by_ids(p, &t, &ids, &filter).await?;
            let docs = match sort {
                Some(s) => sorted(docs, s)?,
                None => docs,
            };
            return finish(docs, req, &filter, projection.as_ref());
        }
        if let Some(plan) = berth_docs::plan::plan(&t.config.indexes, &req.filter, sort) {
            // Through indexes: a limit stops the scans early when they
            // yield the sort's order (or no order is asked).
            let ordered = plan.provides_sort() || sort.is_none();
            let stop = (ordered && req.limit > 0).then(|| (req.skip + req.limit) as usize);
            let (docs, _) = self
                .planned(p, &t, &plan, &filter, stop, MEMORY_BYTES_MAX)
                .await?;
            let docs = match sort {
                Some(s) if !plan.provides_sort() => sorted(docs, s)?,
                _ => docs,
            };
            return finish(docs, req, &filter, projection.as_ref());
        }
        let Some(sort) = sort else {
            // Streamed in `_id` order, the documents stored in it: only
            // those in a range on `_id` when the filter has one.
            let (from, end) = scan_bounds(&t, &req.filter);
            return Ok(Rest::Scan(Box::new(Scan {
                table: t,
                filter,
                projection,
                from,
                end,
                skip: req.skip,
                left: req.limit,
                ready: VecDeque::new(),
                done: false,
            })));
        };
        let docs = self.matching(p, &t, &filter).await?;
        let docs = sorted(docs, sort)?;
        finish(docs, req, &filter, projection.as_ref())
    }

    /// The documents matching `filter` read as `plan` says (one index, or
    /// the union of an `$or`'s), and the entries and documents each index
    /// scan examined.
    async fn planned(
        &self,
        p: &Principal,
        t: &TableRef,
        plan: &QueryPlan,
        filter: &Filter,
        stop: Option<usize>,
        bytes_max: usize,
    ) -> Result<(Vec<Document>, Vec<(u64, u64)>), MongoError> {
        match plan {
            QueryPlan::Index(one) => {
                let (docs, keys, examined) = self
                    .tables
                    .index_scan(p, t, one, filter, stop, bytes_max)
                    .await
                    .map_err(mongo)?;
                Ok((docs, vec![(keys, examined)]))
            }
            QueryPlan::Or(branches) => self
                .tables
                .union_scan(p, t, branches, filter, stop, bytes_max)
                .await
                .map_err(mongo),
        }
    }

    /// Runs `pipeline` over a collection's documents.
    async fn run_pipeline(
        &self,
        p: &Principal,
        db: &str,
        input: Vec<Document>,
        pipeline: &Pipeline,
        stages: &[Document],
    ) -> Result<Vec<Document>, MongoError> {
        // $lookup reads other collections of the database: load them first
        // (the pipeline itself is pure).
        let mut lookups = HashMap::new();
        for from in lookup_sources(stages) {
            let ns = Namespace::new(db, from.clone());
            lookups.insert(from, self.all(p, &ns).await?);
        }
        let mut ctx = Ctx { lookups };
        pipeline.run(input, &mut ctx).map_err(mongo)
    }

    /// Writes a pipeline's results as its `$merge` says, one result at a
    /// time (not atomically, as in MongoDB).
    async fn merge_into(
        &self,
        p: &Principal,
        db: &str,
        merge: &Merge,
        results: Vec<Document>,
    ) -> Result<(), MongoError> {
        let ns = Namespace::new(
            merge.db.clone().unwrap_or_else(|| db.to_string()),
            merge.coll.clone(),
        );
        let t = self.open_or_create(p, &ns).await?;
        if merge.on != ["_id"] {
            // MongoDB's rule: `on` must be backed by a unique index with
            // exactly these fields, so a result matches at most one.
            let backed = t.config.indexes.iter().any(|i| {
                i.unique
                    && i.partial.is_none()
                    && i.keys.len() == merge.on.len()
                    && i.keys.iter().all(|(f, _)| merge.on.contains(f))
            });
            if !backed {
                return Err(MongoError::new(
                    berth_docs::merge::MERGE_ON_NOT_UNIQUE,
                    "Cannot find index to verify that join fields will be unique",
                ));
            }
        }
        let upsert = merge.when_not_matched == WhenNotMatched::Insert;
        for result in results {
            let Some(q) = merge.target_filter(&result).map_err(mongo)? else {
                // No _id: it matches nothing.
                match merge.when_not_matched {
                    WhenNotMatched::Insert => {
                        let r = self
                            .tables
                            .insert(p, &t, vec![result], true)
                            .await
                            .map_err(mongo)?;
                        if let Some(e) = r.errors.into_iter().next() {
                            return Err(mongo(e.error));
                        }
                    }
                    WhenNotMatched::Discard => {}
                    WhenNotMatched::Fail => return Err(mongo(merge.no_match())),
                }
                continue;
            };
            let filter = Filter::parse(&q).map_err(mongo)?;
            let new = result;
            let change = |d: &mut Document, ctx: &ApplyContext| {
                if ctx.inserting {
                    *d = new.clone();
                    return Ok(true);
                }
                let mut sc = Ctx {
                    lookups: HashMap::new(),
                };
                match merge.combine(d, &new, &mut sc)? {
                    Some(combined) => {
                        *d = combined;
                        Ok(true)
                    }
                    None => Ok(false),
                }
            };
            let o = self
                .tables
                .update(
                    p,
                    &t,
                    &filter,
                    &q,
                    &change,
                    false,
                    upsert,
                    bson::DateTime::now(),
                    false,
                    // Change events say what changed (an update's fields).
                    false,
                )
                .await
                .map_err(mongo)?;
            if o.matched == 0
                && o.upserted.is_none()
                && merge.when_not_matched == WhenNotMatched::Fail
            {
                return Err(mongo(merge.no_match()));
            }
        }
        Ok(())
    }

    /// Applies one update statement.
    async fn update_one(
        &self,
        p: &Principal,
        ns: &Namespace,
        st: &UpdateStatement,
        vars: &Variables,
        stmt: Option<Stmt<'_>>,
    ) -> Result<berth_docs::table::UpdateOutcome, MongoError> {
        refuse_collation(st.collation.as_ref())?;
        let filter = Filter::parse_with(&st.q, vars).map_err(mongo)?;
        let change = self.change(&st.u, st.array_filters.as_deref().unwrap_or(&[]), vars)?;
        let t = match st.upsert {
            true => self.open_or_create(p, ns).await?,
            false => match self.open(p, ns, Right::Write).await? {
                Some(t) => t,
                None => return Ok(Default::default()),
            },
        };
        if let (Some(stmt), false) = (stmt, st.multi) {
            // A multi-document update is not retryable (as in MongoDB);
            // one that updates a single document applies at most once.
            return self
                .tables
                .update_retryable(
                    p,
                    &t,
                    &filter,
                    &st.q,
                    &*change,
                    st.upsert,
                    bson::DateTime::now(),
                    is_replacement(&st.u),
                    false,
                    stmt,
                )
                .await
                .map_err(mongo);
        }
        self.tables
            .update(
                p,
                &t,
                &filter,
                &st.q,
                &*change,
                st.multi,
                st.upsert,
                bson::DateTime::now(),
                false,
                is_replacement(&st.u),
            )
            .await
            .map_err(mongo)
    }

    /// How an update statement's `u` changes a document.
    #[allow(clippy::type_complexity)]
    fn change(
        &self,
        u: &UpdateModification,
        array_filters: &[Document],
        vars: &Variables,
    ) -> Result<Box<berth_docs::table::Change<'static>>, MongoError> {
        match u {
            UpdateModification::Document(spec) => {
                let update = UpdateSpec::parse(spec, array_filters).map_err(mongo)?;
                Ok(Box::new(move |d: &mut Document, ctx: &ApplyContext| {
                    update.apply(d, ctx)
                }))
            }
            UpdateModification::Pipeline(stages) => {
                let pipeline =
                    Pipeline::parse_with_vars(stages, Limits::default(), vars).map_err(mongo)?;
                if pipeline.out().is_some() || pipeline.merge().is_some() {
                    return Err(MongoError::bad_value(
                        "$out and $merge are not allowed in an update pipeline",
                    ));
                }
                Ok(Box::new(move |d: &mut Document, _ctx: &ApplyContext| {
                    let id = d.get("_id").cloned();
                    let mut ctx = Ctx {
                        lookups: HashMap::new(),
                    };
                    let mut out = pipeline.run(vec![d.clone()], &mut ctx)?;
                    let mut new = match out.len() {
                        1 => out.remove(0),
                        n => {
                            return Err(DocError::bad_value(format!(
                                "an update pipeline must give one document, not {n}"
                            )))
                        }
                    };
                    if let (Some(id), false) = (id, new.contains_key("_id")) {
                        new.insert("_id", id);
                    }
                    let changed = &new != d;
                    *d = new;
                    Ok(changed)
                }))
            }
        }
    }
}

/// Whether an update's `u` replaces the document (no update operators).
fn is_replacement(u: &UpdateModification) -> bool {
    match u {
        UpdateModification::Document(d) => !d.keys().next().is_some_and(|k| k.starts_with('$')),
        UpdateModification::Pipeline(_) => false,
    }
}

/// A computed find result: skip, limit and projection applied, queued.
fn finish(
    docs: Vec<Document>,
    req: &Find,
    filter: &Filter,
    projection: Option<&Projection>,
) -> Result<Rest, MongoError> {
    let mut out = VecDeque::new();
    for d in docs.into_iter().skip(req.skip as usize) {
        if req.limit > 0 && out.len() as u64 >= req.limit {
            break;
        }
        let d = match projection {
            // The positional projection needs the match's details.
            Some(pr) => pr
                .apply(&d, filter.match_details(&d).as_ref())
                .map_err(mongo)?,
            None => d,
        };
        out.push_back(d);
    }
    Ok(Rest::Queued(out))
}

/// A pipeline that only counts matches: `[{$match}?, {$skip}?, {$limit}?,
/// {$group: {_id: <constant>, <field>: {$sum: <number>}, ...}}]`, the
/// shape drivers send for `countDocuments`.
struct CountShape {
    filter: Document,
    skip: u64,
    limit: u64,
    id: Bson,
    sums: Vec<(String, Bson)>,
}

impl CountShape {
    fn of(stages: &[Document]) -> Option<CountShape> {
        let (last, rest) = stages.split_last()?;
        let group = match last.iter().next() {
            Some((k, Bson::Document(g))) if k == "$group" && last.len() == 1 => g,
            _ => return None,
        };
        let mut shape = CountShape {
            filter: Document::new(),
            skip: 0,
            limit: 0,
            id: Bson::Null,
            sums: Vec::new(),
        };
        // In the order drivers send them; anything else is a real pipeline.
        let mut at = 0;
        for (i, stage) in rest.iter().enumerate() {
            let (name, value) = match (stage.len(), stage.iter().next()) {
                (1, Some(kv)) => kv,
                _ => return None,
            };
            let whole = |v: &Bson| match v {
                Bson::Int32(n) if *n >= 0 => Some(*n as u64),
                Bson::Int64(n) if *n >= 0 => Some(*n as u64),
                Bson::Double(f) if *f >= 0.0 && f.fract() == 0.0 => Some(*f as u64),
                _ => None,
            };
            match (name.as_str(), value) {
                ("$match", Bson::Document(f)) if i == 0 => shape.filter = f.clone(),
                ("$skip", v) if at <= 1 && shape.limit == 0 => shape.skip = whole(v)?,
                ("$limit", v) if shape.limit == 0 => shape.limit = whole(v)?.max(1),
                _ => return None,
            }
            at = i + 1;
        }
        for (k, v) in group {
            match (k.as_str(), v) {
                ("_id", id) => {
                    // A constant: not a field path, no operator.
                    let constant = match id {
                        Bson::String(s) => !s.starts_with('$'),
                        Bson::Document(_) | Bson::Array(_) => false,
                        _ => true,
                    };
                    if !constant {
                        return None;
                    }
                    shape.id = id.clone();
                }
                (field, Bson::Document(acc)) if acc.len() == 1 => match acc.get("$sum") {
                    Some(n @ (Bson::Int32(_) | Bson::Int64(_))) => {
                        shape.sums.push((field.to_string(), n.clone()))
                    }
                    _ => return None,
                },
                _ => return None,
            }
        }
        (!shape.sums.is_empty()).then_some(shape)
    }

    /// The group's one document for `n` matches (none for none, as
    /// `$group` over nothing gives).
    fn answer(&self, n: u64) -> Vec<Document> {
        if n == 0 {
            return Vec::new();
        }
        let mut d = doc! {"_id": self.id.clone()};
        for (field, per) in &self.sums {
            let per = match per {
                Bson::Int32(x) => i64::from(*x),
                Bson::Int64(x) => *x,
                _ => 1,
            };
            let total = (n as i64).saturating_mul(per);
            match i32::try_from(total) {
                Ok(small) => d.insert(field.clone(), small),
                Err(_) => d.insert(field.clone(), total),
            };
        }
        vec![d]
    }
}

/// `$lookup` sources of a pipeline (also inside `$facet`).
fn lookup_sources(stages: &[Document]) -> Vec<String> {
    let mut out = Vec::new();
    for s in stages {
        if let Ok(l) = s.get_document("$lookup") {
            if let Ok(from) = l.get_str("from") {
                out.push(from.to_string());
            }
            if let Ok(inner) = l.get_array("pipeline") {
                let inner: Vec<Document> = inner
                    .iter()
                    .filter_map(|b| b.as_document().cloned())
                    .collect();
                out.extend(lookup_sources(&inner));
            }
        }
        if let Ok(f) = s.get_document("$facet") {
            for (_, v) in f {
                if let Some(a) = v.as_array() {
                    let inner: Vec<Document> =
                        a.iter().filter_map(|b| b.as_document().cloned()).collect();
                    out.extend(lookup_sources(&inner));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

struct Ctx {
    lookups: HashMap<String, Vec<Document>>,
}

impl StageContext for Ctx {
    fn lookup(&mut self, from: &str) -> Result<Vec<Document>, DocError> {
        Ok(self.lookups.get(from).cloned().unwrap_or_default())
    }

    fn now(&self) -> bson::DateTime {
        bson::DateTime::now()
    }

    fn rand_seed(&self) -> Option<u64> {
        Some(rand::random())
    }
}

/// The variables a command's filters and pipelines see: its `let`, `$$NOW`
/// and `$rand`'s generator.
fn command_vars(let_vars: Option<&Document>) -> Result<Variables, MongoError> {
    let base = Variables::new()
        .with_now(bson::DateTime::now())
        .with_rand(rand::random());
    match let_vars {
        Some(spec) => let_variables(spec, base).map_err(mongo),
        None => Ok(base),
    }
}

/// Collations are not supported yet: a command naming one (other than the
/// binary "simple" one, which is what runs anyway) is refused rather than
/// answered with binary comparisons the client did not ask for.
fn refuse_collation(collation: Option<&Document>) -> Result<(), MongoError> {
    match collation {
        None => Ok(()),
        Some(c) if c.is_empty() => Ok(()),
        Some(c) if c.len() == 1 && c.get_str("locale").is_ok_and(|l| l == "simple") => Ok(()),
        Some(c) => Err(MongoError::new(
            codes::COMMAND_NOT_SUPPORTED,
            format!(
                "collations are not supported by Berth tables yet (asked for {c}); \
                 only {{locale: \"simple\"}} is"
            ),
        )),
    }
}

impl Rest {
    fn is_done(&self) -> bool {
        match self {
            Rest::Queued(q) => q.is_empty(),
            Rest::Scan(s) => s.done && s.ready.is_empty(),
            Rest::Changes(c) => c.is_done(),
        }
    }
}

/// The document keys an unsorted scan of `t` for `filter` reads: those of
/// its range on `_id` (one interval over the plan's, in key order: the
/// filter drops what lies between them), else every document.
fn scan_bounds(t: &TableRef, filter: &Document) -> (Vec<u8>, Vec<u8>) {
    let range = berth_docs::plan::id_range(filter);
    match range.as_ref().map(|p| p.intervals.as_slice()) {
        Some([first, .., last]) | Some([first @ last]) => {
            t.doc_bounds(&berth_docs::plan::Interval {
                start: first.start.clone(),
                end: last.end.clone(),
                point_len: 0,
            })
        }
        _ => t.doc_range(),
    }
}

/// Sorts documents by a sort specification (MongoDB's `$sort` semantics).
fn sorted(docs: Vec<Document>, sort: &Document) -> Result<Vec<Document>, MongoError> {
    let pipeline = Pipeline::parse(&[doc! {"$sort": sort.clone()}]).map_err(mongo)?;
    let mut ctx = Ctx {
        lookups: HashMap::new(),
    };
    pipeline.run(docs, &mut ctx).map_err(mongo)
}

fn doc_bytes(d: &Document) -> usize {
    d.to_vec().map(|v| v.len()).unwrap_or(0)
}

fn too_much_memory() -> MongoError {
    MongoError::new(
        292,
        format!("the query needs more than {MEMORY_BYTES_MAX} bytes of documents in memory (to sort or group them); narrow it with a filter or a limit"),
    )
}

/// MongoDB's rules for database names, and ours: not empty, no `/`.
fn check_db(db: &str) -> Result<(), MongoError> {
    if db.is_empty() || db.len() > 63 || db.contains(['/', '\\', '.', ' ', '"', '$', '\0']) {
        return Err(MongoError::new(
            codes::INVALID_NAMESPACE,
            format!("Invalid database name: {db:?}"),
        ));
    }
    Ok(())
}

/// A service error as the gateway sends it.
fn mongo(e: DocError) -> MongoError {
    let mut m = MongoError::new(e.code, e.message);
    m.info = e.info;
    m
}

/// The values at a dotted path, arrays flattened one level (as `distinct`).
fn values_at(d: &Document, path: &str, out: &mut Vec<Bson>) {
    fn walk(v: &Bson, rest: &[&str], out: &mut Vec<Bson>) {
        match (rest.split_first(), v) {
            (None, Bson::Array(a)) => out.extend(a.iter().cloned()),
            (None, v) => out.push(v.clone()),
            (Some((k, more)), Bson::Document(d)) => {
                if let Some(v) = d.get(*k) {
                    walk(v, more, out);
                }
            }
            (Some((k, more)), Bson::Array(a)) => match k.parse::<usize>() {
                Ok(i) => {
                    if let Some(v) = a.get(i) {
                        walk(v, more, out);
                    }
                }
                Err(_) => {
                    for e in a {
                        if let Bson::Document(_) = e {
                            walk(e, rest, out);
                        }
                    }
                }
            },
            _ => {}
        }
    }
    let parts: Vec<&str> = path.split('.').collect();
    walk(&Bson::Document(d.clone()), &parts, out);
}

mod codes {
    pub use berth_mongo::codes::*;
}

impl Backend for TablesBackend {
    type Principal = Principal;

    async fn authenticate_plain(&self, user: &str, password: &str) -> Result<Principal, String> {
        // A ticket (checked locally) first, then a user's password.
        match self.meta.authenticate(password) {
            Ok(p) => Ok(p),
            Err(ticket_err) => {
                let login = async {
                    let (ticket, _) = self.meta.login(user, password, 3600).await?;
                    self.meta.authenticate(&ticket)
                };
                login.await.map_err(|e| {
                    format!("user {user:?}: not a valid ticket ({ticket_err}) nor password ({e})")
                })
            }
        }
    }

    async fn scram_credential(&self, user: &str) -> Option<ScramCredential> {
        crate::kafka_sasl::scram_credential(
            &self.meta,
            user,
            berth_security::scram::Mechanism::Sha256,
        )
        .await
    }

    async fn scram_principal(&self, user: &str) -> Result<Principal, String> {
        crate::kafka_sasl::scram_principal(&self.meta, user).await
    }

    async fn insert(&self, p: &Principal, req: Insert) -> Result<WriteResult, MongoError> {
        let t = self.open_or_create(p, &req.ns).await?;
        let stmt = req.retry.as_ref().map(|r| Stmt {
            lsid: &r.lsid,
            txn_number: r.txn_number,
            index: 0,
            image: false,
        });
        let out = self
            .tables
            .insert_retryable(p, &t, req.documents, req.ordered, stmt)
            .await
            .map_err(mongo)?;
        Ok(WriteResult {
            n: out.n as i64,
            write_errors: out
                .errors
                .into_iter()
                .map(|e| WriteError {
                    index: e.index,
                    error: mongo(e.error),
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn update(&self, p: &Principal, req: Update) -> Result<WriteResult, MongoError> {
        let vars = command_vars(req.let_vars.as_ref())?;
        let mut out = WriteResult::default();
        for (i, st) in req.updates.iter().enumerate() {
            let stmt = req.retry.as_ref().map(|r| Stmt {
                lsid: &r.lsid,
                txn_number: r.txn_number,
                index: i as u64,
                image: false,
            });
            match self.update_one(p, &req.ns, st, &vars, stmt).await {
                Ok(o) => {
                    out.n += o.matched as i64;
                    out.n_modified += o.modified as i64;
                    if let Some(id) = o.upserted {
                        out.n += 1;
                        out.upserted.push(Upserted { index: i, id });
                    }
                }
                Err(e) => {
                    out.write_errors.push(WriteError { index: i, error: e });
                    if req.ordered {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    async fn delete(&self, p: &Principal, req: Delete) -> Result<WriteResult, MongoError> {
        let vars = command_vars(req.let_vars.as_ref())?;
        let mut out = WriteResult::default();
        for (i, st) in req.deletes.iter().enumerate() {
            let stmt = req.retry.as_ref().map(|r| Stmt {
                lsid: &r.lsid,
                txn_number: r.txn_number,
                index: i as u64,
                image: false,
            });
            let r = async {
                refuse_collation(st.collation.as_ref())?;
                let filter = Filter::parse_with(&st.q, &vars).map_err(mongo)?;
                let t = self.open(p, &req.ns, Right::Write).await?;
                match (t, stmt) {
                    // A multi-document delete is not retryable (as in
                    // MongoDB); one of a single document applies at most
                    // once.
                    (Some(t), Some(stmt)) if !st.multi => self
                        .tables
                        .delete_one_retryable(p, &t, &filter, stmt)
                        .await
                        .map(|(n, _)| n as i64)
                        .map_err(mongo),
                    (Some(t), _) => self
                        .tables
                        .delete(p, &t, &filter, !st.multi)
                        .await
                        .map(|(n, _)| n as i64)
                        .map_err(mongo),
                    (None, _) => Ok(0),
                }
            }
            .await;
            match r {
                Ok(n) => out.n += n,
                Err(e) => {
                    out.write_errors.push(WriteError { index: i, error: e });
                    if req.ordered {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    async fn find(&self, p: &Principal, req: Find) -> Result<CursorBatch, MongoError> {
        let rest = self.query(p, &req).await?;
        // A negative limit in old drivers meant one batch; the gateway
        // passes single_batch for it.
        let single = req.single_batch;
        let batch = match (req.limit, req.batch_size) {
            (l, Some(b)) if l > 0 => Some(b.min(l as u32)),
            (l, None) if l > 0 && l < FIRST_BATCH_DEFAULT as u64 => Some(l as u32),
            (_, b) => b,
        };
        self.first_batch(p, rest, batch, single).await
    }

    async fn get_more(&self, p: &Principal, req: GetMore) -> Result<CursorBatch, MongoError> {
        let mut cursor = {
            let mut cursors = self.cursors.lock();
            match cursors.get(&req.cursor_id) {
                None => {
                    return Err(MongoError::new(
                        codes::CURSOR_NOT_FOUND,
                        format!("cursor id {} not found", req.cursor_id),
                    ))
                }
                Some(c) if c.owner != p.name => {
                    return Err(MongoError::new(
                        codes::UNAUTHORIZED,
                        format!("cursor id {} belongs to another user", req.cursor_id),
                    ))
                }
                Some(_) => cursors.remove(&req.cursor_id).expect("present"),
            }
        };
        let n = match req.batch_size {
            Some(b) if b > 0 => b as usize,
            _ => usize::MAX,
        };
        let (documents, post_batch_resume_token) = match &mut cursor.rest {
            Rest::Changes(c) => {
                let docs = self.await_changes(p, c, n, req.max_time_ms).await;
                let token = c.post_batch_token();
                (docs, Some(token))
            }
            rest => (self.take(p, rest, n).await, None),
        };
        let documents = match documents {
            Ok(d) => d,
            Err(e) => {
                // The cursor stays usable after a transient failure.
                cursor.used = Instant::now();
                self.cursors.lock().insert(req.cursor_id, cursor);
                return Err(e);
            }
        };
        let id = if cursor.rest.is_done() {
            0
        } else {
            cursor.used = Instant::now();
            self.cursors.lock().insert(req.cursor_id, cursor);
            req.cursor_id
        };
        Ok(CursorBatch {
            id,
            documents,
            post_batch_resume_token,
        })
    }

    async fn kill_cursors(
        &self,
        p: &Principal,
        req: KillCursors,
    ) -> Result<KilledCursors, MongoError> {
        let mut out = KilledCursors::default();
        let mut cursors = self.cursors.lock();
        for id in req.cursor_ids {
            match cursors.get(&id) {
                Some(c) if c.owner == p.name => {
                    cursors.remove(&id);
                    out.killed.push(id);
                }
                Some(_) => out.unknown.push(id),
                None => out.not_found.push(id),
            }
        }
        Ok(out)
    }

    async fn count(&self, p: &Principal, req: Count) -> Result<u64, MongoError> {
        refuse_collation(req.collation.as_ref())?;
        let Some(t) = self.open(p, &req.ns, Right::Read).await? else {
            return Ok(0);
        };
        let filter = Filter::parse(&req.query).map_err(mongo)?;
        if let Some(plan) = berth_docs::plan::plan(&t.config.indexes, &req.query, None) {
            let stop = (req.limit > 0).then(|| (req.skip + req.limit) as usize);
            let (docs, _) = self
                .planned(p, &t, &plan, &filter, stop, usize::MAX)
                .await?;
            return Ok((docs.len() as u64).saturating_sub(req.skip));
        }
        self.tables
            .count(p, &t, &filter, req.skip, req.limit)
            .await
            .map_err(mongo)
    }

    async fn distinct(&self, p: &Principal, req: Distinct) -> Result<Vec<Bson>, MongoError> {
        refuse_collation(req.collation.as_ref())?;
        let Some(t) = self.open(p, &req.ns, Right::Read).await? else {
            return Ok(Vec::new());
        };
        let filter = Filter::parse(&req.query).map_err(mongo)?;
        // Distinct values keyed by their order-preserving encoding (equal
        // values, 1 and 1.0 too, encode the same): read page by page, only
        // the values are held, in order, within MongoDB's 16 MiB answer.
        let mut distinct: BTreeMap<Vec<u8>, Bson> = BTreeMap::new();
        let mut bytes = 0usize;
        let mut add = |d: &Document| -> Result<(), MongoError> {
            let mut values = Vec::new();
            values_at(d, &req.key, &mut values);
            for v in values {
                let mut k = Vec::new();
                berth_docs::keys::encode_value(&v, &mut k);
                if let std::collections::btree_map::Entry::Vacant(e) = distinct.entry(k) {
                    bytes += doc_bytes(&doc! {"v": v.clone()});
                    if bytes > DISTINCT_BYTES_MAX {
                        return Err(MongoError::new(
                            17217,
                            "distinct too big, 16mb cap; use an aggregation with $group",
                        ));
                    }
                    e.insert(v);
                }
            }
            Ok(())
        };
        if filter.id_candidates().is_some() {
            for d in self.matching(p, &t, &filter).await? {
                add(&d)?;
            }
        } else {
            let mut after: Option<Vec<u8>> = None;
            loop {
                let (page, more) = self
                    .tables
                    .page(p, &t, after.as_deref(), SCAN_PAGE)
                    .await
                    .map_err(mongo)?;
                if let Some((k, _)) = page.last() {
                    after = Some(k.clone());
                }
                for (_, d) in page.iter().filter(|(_, d)| filter.matches(d)) {
                    add(d)?;
                }
                if !more {
                    break;
                }
            }
        }
        Ok(distinct.into_values().collect())
    }

    async fn aggregate(&self, p: &Principal, req: Aggregate) -> Result<CursorBatch, MongoError> {
        refuse_collation(req.collation.as_ref())?;
        if let Some(spec) = req.pipeline.first().and_then(|s| s.get("$changeStream")) {
            let Bson::Document(spec) = spec else {
                return Err(MongoError::type_mismatch(
                    "$changeStream takes a document of options",
                ));
            };
            let c = self
                .open_change_stream(
                    p,
                    &req.db,
                    req.collection.as_deref(),
                    spec,
                    &req.pipeline[1..],
                )
                .await?;
            return self
                .first_batch(p, Rest::Changes(Box::new(c)), req.batch_size, false)
                .await;
        }
        let vars = command_vars(req.let_vars.as_ref())?;
        // `$collStats` first (drivers' estimatedDocumentCount on wire 12+):
        // one document of the collection's statistics feeds the rest.
        let first_stats = req
            .pipeline
            .first()
            .and_then(|s| s.get_document("$collStats").ok())
            .cloned();
        let stages = match first_stats {
            Some(_) => &req.pipeline[1..],
            None => &req.pipeline[..],
        };
        let pipeline =
            Pipeline::parse_with_vars(stages, Limits::default(), &vars).map_err(mongo)?;
        if let (Some(coll), None, Some(shape)) =
            (&req.collection, &first_stats, CountShape::of(stages))
        {
            // countDocuments' pipeline: counted without holding documents.
            let ns = Namespace::new(req.db.clone(), coll.clone());
            let filter = Filter::parse_with(&shape.filter, &vars).map_err(mongo)?;
            let n = match self.open(p, &ns, Right::Read).await? {
                Some(t) => self
                    .tables
                    .count(p, &t, &filter, shape.skip, shape.limit)
                    .await
                    .map_err(mongo)?,
                None => 0,
            };
            let docs = shape.answer(n);
            return self
                .first_batch(p, Rest::Queued(docs.into()), req.batch_size, false)
                .await;
        }
        let input = match (&req.collection, first_stats) {
            // `$documents` brings its own input.
            _ if pipeline.starts_with_documents() => Vec::new(),
            (None, _) => {
                return Err(MongoError::new(
                    codes::COMMAND_NOT_SUPPORTED,
                    "database-level aggregations ({aggregate: 1}) are supported only from \
                     $documents",
                ))
            }
            (Some(coll), Some(spec)) => {
                let ns = Namespace::new(req.db.clone(), coll.clone());
                let stats = self.coll_stats(p, ns.clone()).await?;
                let mut d = doc! {"ns": ns.to_string()};
                if spec.contains_key("count") {
                    d.insert("count", stats.count as i64);
                }
                if spec.contains_key("storageStats") {
                    d.insert(
                        "storageStats",
                        doc! {
                            "count": stats.count as i64,
                            "size": stats.size_bytes as i64,
                            "storageSize": stats.storage_size_bytes as i64,
                            "nindexes": stats.index_sizes.len() as i32,
                        },
                    );
                }
                vec![d]
            }
            (Some(coll), None) => {
                self.all(p, &Namespace::new(req.db.clone(), coll.clone()))
                    .await?
            }
        };
        if txns::current().is_some() && (pipeline.out().is_some() || pipeline.merge().is_some()) {
            return Err(MongoError::new(
                codes::OPERATION_NOT_SUPPORTED_IN_TRANSACTION,
                "$out and $merge cannot be used in a transaction",
            ));
        }
        let docs = self
            .run_pipeline(p, &req.db, input, &pipeline, stages)
            .await?;
        if let Some(target) = pipeline.out() {
            // $out: the target collection's documents become the results
            // (it is replaced; not atomically: documented).
            let tns = Namespace::new(req.db.clone(), target);
            let path = self.path(&tns)?;
            self.tables.drop_table(p, &path).await.map_err(mongo)?;
            let t = self.tables.create(p, &path, false).await.map_err(mongo)?;
            let r = self.tables.insert(p, &t, docs, true).await.map_err(mongo)?;
            if let Some(e) = r.errors.into_iter().next() {
                return Err(mongo(e.error));
            }
            return Ok(CursorBatch::default());
        }
        if let Some(merge) = pipeline.merge() {
            self.merge_into(p, &req.db, merge, docs).await?;
            return Ok(CursorBatch::default());
        }
        self.first_batch(p, Rest::Queued(docs.into()), req.batch_size, false)
            .await
    }

    async fn find_and_modify(
        &self,
        p: &Principal,
        req: FindAndModify,
    ) -> Result<FindAndModifyResult, MongoError> {
        let project = |d: Document| -> Result<Document, MongoError> {
            match &req.fields {
                Some(f) if !f.is_empty() => Projection::parse(f)
                    .and_then(|pr| pr.apply(&d, None))
                    .map_err(mongo),
                _ => Ok(d),
            }
        };
        let right = match req.action {
            FindAndModifyAction::Remove => Right::Write,
            FindAndModifyAction::Update { .. } => Right::Write,
        };
        refuse_collation(req.collation.as_ref())?;
        let vars = command_vars(req.let_vars.as_ref())?;
        let filter = Filter::parse_with(&req.query, &vars).map_err(mongo)?;
        let table = self.open(p, &req.ns, right).await?;
        // A retryable findAndModify (one statement) an earlier try applied
        // is answered from its mark, with the document it returned then.
        let stmt = req.retry.as_ref().map(|r| Stmt {
            lsid: &r.lsid,
            txn_number: r.txn_number,
            index: 0,
            image: true,
        });
        if let (Some(t), Some(stmt)) = (&table, stmt) {
            if let Some(o) = self.tables.retried(t, &stmt).await.map_err(mongo)? {
                let remove = matches!(req.action, FindAndModifyAction::Remove);
                return Ok(FindAndModifyResult {
                    n: if remove {
                        o.n
                    } else {
                        u64::from(o.n > 0 || o.upserted.is_some())
                    },
                    updated_existing: !remove && o.n > 0,
                    upserted: o.upserted,
                    value: o.image.map(project).transpose()?,
                });
            }
        }
        // The document to change: the first match in the sort's order.
        let target = match &table {
            Some(t) => {
                let docs = self.matching(p, t, &filter).await?;
                let docs = match req.sort.as_ref().filter(|s| !s.is_empty()) {
                    Some(s) => sorted(docs, s)?,
                    None => docs,
                };
                docs.into_iter().next()
            }
            None => None,
        };
        // Narrowed to that document, still under the query's conditions.
        let narrowed = |d: &Document| -> Result<(Filter, Document), MongoError> {
            let mut q = doc! {"$and": [req.query.clone()]};
            if let Some(id) = d.get("_id") {
                q = doc! {"$and": [req.query.clone(), {"_id": id.clone()}]};
            }
            Ok((Filter::parse_with(&q, &vars).map_err(mongo)?, q))
        };
        match &req.action {
            FindAndModifyAction::Remove => {
                let (Some(t), Some(d)) = (table, target) else {
                    return Ok(FindAndModifyResult::default());
                };
                let (f, _) = narrowed(&d)?;
                let (_, removed) = match stmt {
                    Some(stmt) => self.tables.delete_one_retryable(p, &t, &f, stmt).await,
                    None => self.tables.delete(p, &t, &f, true).await,
                }
                .map_err(mongo)?;
                match removed {
                    Some(d) => Ok(FindAndModifyResult {
                        n: 1,
                        value: Some(project(d)?),
                        ..Default::default()
                    }),
                    None => Ok(FindAndModifyResult::default()),
                }
            }
            FindAndModifyAction::Update {
                update,
                upsert,
                return_new,
            } => {
                let change =
                    self.change(update, req.array_filters.as_deref().unwrap_or(&[]), &vars)?;
                let t = match (table, upsert) {
                    (Some(t), _) => t,
                    (None, true) => self.open_or_create(p, &req.ns).await?,
                    (None, false) => return Ok(FindAndModifyResult::default()),
                };
                let (f, q) = match &target {
                    Some(d) => narrowed(d)?,
                    None => (filter, req.query.clone()),
                };
                let upsert = *upsert && target.is_none();
                let now = bson::DateTime::now();
                let o = match stmt {
                    Some(stmt) => {
                        self.tables
                            .update_retryable(
                                p,
                                &t,
                                &f,
                                &q,
                                &*change,
                                upsert,
                                now,
                                is_replacement(update),
                                *return_new,
                                stmt,
                            )
                            .await
                    }
                    None => {
                        self.tables
                            .update(
                                p,
                                &t,
                                &f,
                                &q,
                                &*change,
                                false,
                                upsert,
                                now,
                                *return_new,
                                is_replacement(update),
                            )
                            .await
                    }
                }
                .map_err(mongo)?;
                let value = o.document.map(project).transpose()?;
                Ok(FindAndModifyResult {
                    n: u64::from(o.matched > 0 || o.upserted.is_some()),
                    updated_existing: o.matched > 0,
                    upserted: o.upserted,
                    value,
                })
            }
        }
    }

    async fn create_collection(
        &self,
        p: &Principal,
        ns: Namespace,
        options: Document,
    ) -> Result<(), MongoError> {
        for (k, _) in &options {
            if matches!(
                k.as_str(),
                "capped"
                    | "size"
                    | "max"
                    | "validator"
                    | "viewOn"
                    | "pipeline"
                    | "timeseries"
                    | "clusteredIndex"
                    | "changeStreamPreAndPostImages"
                    | "expireAfterSeconds"
            ) {
                return Err(MongoError::new(
                    codes::COMMAND_NOT_SUPPORTED,
                    format!("create: the option {k:?} is not supported by Berth tables"),
                ));
            }
        }
        let path = self.path(&ns)?;
        self.tables.create(p, &path, true).await.map_err(mongo)?;
        Ok(())
    }

    async fn drop_collection(&self, p: &Principal, ns: Namespace) -> Result<(), MongoError> {
        let path = self.path(&ns)?;
        self.tables.drop_table(p, &path).await.map_err(mongo)?;
        Ok(())
    }

    async fn drop_database(&self, p: &Principal, db: String) -> Result<(), MongoError> {
        check_db(&db)?;
        let dir = self.db_path(&db);
        // Each table's drop record commits with its removal (the change
        // log's hook on the namespace).
        match self.tables.namespace().remove(p, &dir, true).await {
            Ok(()) => {}
            Err(e) if e.code == Code::NotFound => return Ok(()),
            Err(e) => return Err(mongo(berth_docs::table::from_meta(e))),
        }
        Ok(())
    }

    async fn list_collections(
        &self,
        p: &Principal,
        req: ListCollections,
    ) -> Result<CursorBatch, MongoError> {
        check_db(&req.db)?;
        let names = self
            .tables
            .list(p, &self.db_path(&req.db))
            .await
            .map_err(mongo)?;
        let filter = Filter::parse(&req.filter).map_err(mongo)?;
        let mut out = VecDeque::new();
        for name in names {
            let entry = if req.name_only {
                doc! {"name": &name, "type": "collection"}
            } else {
                doc! {
                    "name": &name,
                    "type": "collection",
                    "options": {},
                    "info": {"readOnly": false},
                    "idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"},
                }
            };
            if filter.matches(&entry) {
                out.push_back(entry);
            }
        }
        self.first_batch(p, Rest::Queued(out), req.batch_size, false)
            .await
    }

    async fn list_databases(
        &self,
        p: &Principal,
        req: ListDatabases,
    ) -> Result<Vec<DatabaseInfo>, MongoError> {
        let names = self
            .tables
            .list_entries(p, &self.root, Some(berth_fs::EntryKind::Dir))
            .await
            .map_err(mongo)?;
        let filter = Filter::parse(&req.filter).map_err(mongo)?;
        let mut out = Vec::new();
        for name in names {
            if check_db(&name).is_err() {
                continue;
            }
            let empty = self
                .tables
                .list(p, &self.db_path(&name))
                .await
                .map(|t| t.is_empty())
                .unwrap_or(true);
            let info = DatabaseInfo {
                name,
                size_on_disk_bytes: 0,
                empty,
            };
            let as_doc = doc! {"name": &info.name, "sizeOnDisk": 0i64, "empty": info.empty};
            if filter.matches(&as_doc) {
                out.push(info);
            }
        }
        Ok(out)
    }

    async fn create_indexes(
        &self,
        p: &Principal,
        req: CreateIndexes,
    ) -> Result<IndexesCreated, MongoError> {
        // The _id index always exists: asking for it is a no-op.
        let specs: Vec<Document> = req
            .indexes
            .into_iter()
            .filter(|i| {
                !i.get_document("key")
                    .is_ok_and(|k| k.len() == 1 && k.contains_key("_id"))
            })
            .collect();
        let path = self.path(&req.ns)?;
        let created = match self.open(p, &req.ns, Right::Write).await? {
            Some(_) => false,
            None => {
                self.tables.create(p, &path, false).await.map_err(mongo)?;
                true
            }
        };
        let (before, after) = if specs.is_empty() {
            let n = self
                .open(p, &req.ns, Right::Read)
                .await?
                .map_or(1, |t| t.config.indexes.len() + 1);
            (n, n)
        } else {
            self.tables
                .create_indexes(p, &path, &specs)
                .await
                .map_err(mongo)?
        };
        Ok(IndexesCreated {
            indexes_before: before as i64,
            indexes_after: after as i64,
            created_collection_automatically: created,
            note: (before == after).then(|| "all indexes already exist".to_string()),
        })
    }

    async fn list_indexes(
        &self,
        p: &Principal,
        req: ListIndexes,
    ) -> Result<CursorBatch, MongoError> {
        let Some(t) = self.open(p, &req.ns, Right::Read).await? else {
            return Err(MongoError::new(
                codes::NAMESPACE_NOT_FOUND,
                format!("ns does not exist: {}", req.ns),
            ));
        };
        let mut out = VecDeque::from([doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"}]);
        out.extend(t.config.indexes.iter().map(|i| i.listed()));
        self.first_batch(p, Rest::Queued(out), req.batch_size, false)
            .await
    }

    async fn drop_indexes(&self, p: &Principal, req: DropIndexes) -> Result<i64, MongoError> {
        let Some(t) = self.open(p, &req.ns, Right::Write).await? else {
            return Err(MongoError::new(
                codes::NAMESPACE_NOT_FOUND,
                format!("ns not found: {}", req.ns),
            ));
        };
        let names: Vec<String> = t.config.indexes.iter().map(|i| i.name.clone()).collect();
        let wanted: Vec<String> = match &req.index {
            IndexSelector::All => names.clone(),
            IndexSelector::Name(n) => vec![n.clone()],
            IndexSelector::Names(n) => n.clone(),
            IndexSelector::Key(k) => t
                .config
                .indexes
                .iter()
                .filter(|i| &i.key_pattern() == k)
                .map(|i| i.name.clone())
                .collect(),
        };
        if wanted.iter().any(|n| n == "_id_")
            || matches!(&req.index, IndexSelector::Key(k) if k == &doc! {"_id": 1})
        {
            return Err(MongoError::new(
                codes::INVALID_OPTIONS,
                "cannot drop _id index",
            ));
        }
        if let Some(missing) = wanted.iter().find(|n| !names.contains(n)) {
            return Err(MongoError::new(
                codes::INDEX_NOT_FOUND,
                format!("index not found with name [{missing}]"),
            ));
        }
        if wanted.is_empty() && !matches!(req.index, IndexSelector::All) {
            return Err(MongoError::new(
                codes::INDEX_NOT_FOUND,
                "can't find index with key",
            ));
        }
        let path = self.path(&req.ns)?;
        let (had, _) = self
            .tables
            .drop_indexes(p, &path, |i| wanted.contains(&i.name))
            .await
            .map_err(mongo)?;
        Ok(had as i64)
    }

    async fn rename_collection(
        &self,
        p: &Principal,
        req: RenameCollection,
    ) -> Result<(), MongoError> {
        let from = self.path(&req.from)?;
        let to = self.path(&req.to)?;
        let Some(_) = self.open(p, &req.from, Right::Admin).await? else {
            return Err(MongoError::new(
                codes::NAMESPACE_NOT_FOUND,
                format!("source namespace does not exist: {}", req.from),
            ));
        };
        if self.open(p, &req.to, Right::Admin).await?.is_some() {
            if !req.drop_target {
                return Err(MongoError::new(
                    codes::NAMESPACE_EXISTS,
                    format!("target namespace exists: {}", req.to),
                ));
            }
            self.tables.drop_table(p, &to).await.map_err(mongo)?;
        }
        if let Some((parent, _)) = berth_meta::map::split_parent(&to) {
            self.tables
                .namespace()
                .mkdir(p, parent, 0o755, true)
                .await
                .map_err(|e| mongo(berth_docs::table::from_meta(e)))?;
        }
        // The rename record commits with the rename (the change log's hook).
        self.tables
            .namespace()
            .rename(p, &from, &to, true)
            .await
            .map_err(|e| mongo(berth_docs::table::from_meta(e)))
    }

    async fn coll_stats(&self, p: &Principal, ns: Namespace) -> Result<CollStats, MongoError> {
        let Some(t) = self.open(p, &ns, Right::Read).await? else {
            return Err(MongoError::new(
                codes::NAMESPACE_NOT_FOUND,
                format!("Collection [{ns}] not found."),
            ));
        };
        let (count, bytes) = self.tables.stats(p, &t).await.map_err(mongo)?;
        Ok(CollStats {
            count,
            size_bytes: bytes,
            storage_size_bytes: bytes,
            index_sizes: std::iter::once("_id_".to_string())
                .chain(t.config.indexes.iter().map(|i| i.name.clone()))
                .map(|n| (n, 0))
                .collect(),
        })
    }

    async fn db_stats(&self, p: &Principal, db: String) -> Result<DbStats, MongoError> {
        check_db(&db)?;
        let names = self
            .tables
            .list(p, &self.db_path(&db))
            .await
            .map_err(mongo)?;
        let mut out = DbStats {
            collections: names.len() as u64,
            indexes: names.len() as u64,
            ..Default::default()
        };
        for name in names {
            let ns = Namespace::new(db.clone(), name);
            if let Some(t) = self.open(p, &ns, Right::Read).await? {
                let (count, bytes) = self.tables.stats(p, &t).await.map_err(mongo)?;
                out.objects += count;
                out.data_size_bytes += bytes;
                out.storage_size_bytes += bytes;
            }
        }
        Ok(out)
    }

    async fn in_transaction<T, F>(
        &self,
        p: &Principal,
        txn: &TxnId,
        command: F,
    ) -> Result<T, MongoError>
    where
        T: Send,
        F: std::future::Future<Output = Result<T, MongoError>> + Send,
    {
        let t = self.txns.enter(p, txn).await?;
        txns::scope(t, command).await
    }

    async fn commit_transaction(&self, p: &Principal, txn: &TxnId) -> Result<(), MongoError> {
        self.txns.commit(p, txn).await
    }

    async fn abort_transaction(&self, p: &Principal, txn: &TxnId) -> Result<(), MongoError> {
        self.txns.abort(p, txn).await
    }

    async fn explain(&self, p: &Principal, req: Explain) -> Result<Document, MongoError> {
        // The plan the command would run: an index scan (IXSCAN then FETCH)
        // or a collection scan, with what it examined when asked.
        let (ns, filter, sort, limit) = match &req.command {
            Explainable::Find(f) => (f.ns.clone(), f.filter.clone(), f.sort.clone(), f.limit),
            Explainable::Count(c) => (c.ns.clone(), c.query.clone(), None, c.limit),
            Explainable::Distinct(d) => (d.ns.clone(), d.query.clone(), None, 0),
            Explainable::Aggregate(a) => (
                Namespace::new(a.db.clone(), a.collection.clone().unwrap_or_default()),
                Document::new(),
                None,
                0,
            ),
            Explainable::Update(u) => (
                u.ns.clone(),
                u.updates.first().map(|s| s.q.clone()).unwrap_or_default(),
                None,
                0,
            ),
            Explainable::Delete(d) => (
                d.ns.clone(),
                d.deletes.first().map(|s| s.q.clone()).unwrap_or_default(),
                None,
                0,
            ),
            Explainable::FindAndModify(f) => (f.ns.clone(), f.query.clone(), f.sort.clone(), 0),
        };
        let sort = sort.filter(|s| !s.is_empty());
        let parsed = Filter::parse(&filter).map_err(mongo)?;
        let table = self.open(p, &ns, Right::Read).await?;
        if let (Some(t), Some(ids)) = (&table, parsed.id_candidates()) {
            // Read by key (MongoDB's IDHACK / EXPRESS plans).
            let mut out = doc! {
                "queryPlanner": {
                    "namespace": ns.to_string(),
                    "parsedQuery": filter.clone(),
                    "winningPlan": {"stage": "IDHACK", "filter": filter.clone()},
                    "rejectedPlans": [],
                },
            };
            if req.verbosity != Verbosity::QueryPlanner {
                let found = self.tables.by_ids(p, t, &ids).await.map_err(mongo)?;
                let examined = found.len() as i64;
                let returned = found.iter().filter(|(_, d)| parsed.matches(d)).count() as i64;
                out.insert(
                    "executionStats",
                    doc! {
                        "nReturned": returned,
                        "totalKeysExamined": examined,
                        "totalDocsExamined": examined,
                        "executionStages": {
                            "stage": "IDHACK",
                            "nReturned": returned,
                            "docsExamined": examined,
                            "keysExamined": examined,
                        },
                    },
                );
            }
            return Ok(out);
        }
        let chosen = table
            .as_ref()
            .and_then(|t| berth_docs::plan::plan(&t.config.indexes, &filter, sort.as_ref()))
            // An unsorted range on `_id`: `query` streams its documents,
            // the `_id` index's entries (MongoDB reads its `_id_` index).
            .or_else(|| {
                table.as_ref()?;
                sort.is_none()
                    .then(|| berth_docs::plan::id_range(&filter))
                    .flatten()
                    .map(QueryPlan::Index)
            });
        let blocking_sort = sort
            .as_ref()
            .filter(|_| !chosen.as_ref().is_some_and(QueryPlan::provides_sort));
        let winning = explained_plan(chosen.as_ref(), &filter, blocking_sort, None);
        let mut out = doc! {
            "queryPlanner": {
                "namespace": ns.to_string(),
                "parsedQuery": filter.clone(),
                "winningPlan": winning,
                "rejectedPlans": [],
            },
        };
        if req.verbosity != Verbosity::QueryPlanner {
            let (mut examined, mut returned) = (Vec::new(), 0u64);
            match (&table, &chosen) {
                (Some(t), Some(plan)) => {
                    let ordered = plan.provides_sort() || sort.is_none();
                    let stop = (ordered && limit > 0).then_some(limit as usize);
                    let (docs, e) = self
                        .planned(p, t, plan, &parsed, stop, MEMORY_BYTES_MAX)
                        .await?;
                    (examined, returned) = (e, docs.len() as u64);
                    if limit > 0 {
                        returned = returned.min(limit);
                    }
                }
                (Some(t), None) => {
                    let mut docs = 0u64;
                    let mut after: Option<Vec<u8>> = None;
                    'pages: loop {
                        let (page, more) = self
                            .tables
                            .page(p, t, after.as_deref(), SCAN_PAGE)
                            .await
                            .map_err(mongo)?;
                        if let Some((k, _)) = page.last() {
                            after = Some(k.clone());
                        }
                        for (_, d) in &page {
                            docs += 1;
                            returned += u64::from(parsed.matches(d));
                            // Unsorted, the scan stops at the limit, as
                            // `query`'s does.
                            if sort.is_none() && limit > 0 && returned >= limit {
                                break 'pages;
                            }
                        }
                        if !more {
                            break;
                        }
                    }
                    examined.push((0, docs));
                    if limit > 0 {
                        returned = returned.min(limit);
                    }
                }
                _ => {}
            }
            let keys: u64 = examined.iter().map(|(k, _)| k).sum();
            let docs: u64 = examined.iter().map(|(_, d)| d).sum();
            let mut stages = explained_plan(
                chosen.as_ref(),
                &filter,
                blocking_sort,
                Some((examined.as_slice(), returned)),
            );
            stages.insert("keysExamined", keys as i64);
            stages.insert("docsExamined", docs as i64);
            out.insert(
                "executionStats",
                doc! {
                    "nReturned": returned as i64,
                    "totalKeysExamined": keys as i64,
                    "totalDocsExamined": docs as i64,
                    "executionStages": stages,
                },
            );
        }
        Ok(out)
    }
}

/// MongoDB's explain of an index scan: `IXSCAN` with its bounds, in the
/// direction it reads; with what it examined when run.
fn explained_ixscan(plan: &IndexPlan, examined: Option<(u64, u64)>) -> Document {
    let mut d = doc! {
        "stage": "IXSCAN",
        "indexName": &plan.name,
        "keyPattern": plan.key_pattern.clone(),
        "indexBounds": plan.bounds.clone(),
        "equalityFields": plan.eq_fields as i32,
        "rangeField": plan.range,
        "providesSort": plan.provides_sort,
        "mergedRuns": if plan.merge { plan.intervals.len() as i32 } else { 0 },
        "direction": if plan.backward { "backward" } else { "forward" },
    };
    if let Some((keys, docs)) = examined {
        d.insert("keysExamined", keys as i64);
        d.insert("docsExamined", docs as i64);
    }
    d
}

/// MongoDB's stages for a plan (`None`: a collection scan): `FETCH` over
/// an `IXSCAN`, or `SUBPLAN` over `FETCH` over `OR` with one `IXSCAN` per
/// branch, under a blocking `SORT` when the plan gives no order the
/// query asks. With `run` (what each index scan examined, documents
/// returned), the execution's figures.
fn explained_plan(
    plan: Option<&QueryPlan>,
    filter: &Document,
    sort: Option<&Document>,
    run: Option<(&[(u64, u64)], u64)>,
) -> Document {
    let examined = |i: usize| run.map(|(e, _)| e.get(i).copied().unwrap_or((0, 0)));
    let returned = |d: &mut Document| {
        if let Some((_, n)) = run {
            d.insert("nReturned", n as i64);
        }
    };
    let mut top = match plan {
        None => doc! {"stage": "COLLSCAN", "filter": filter.clone(), "direction": "forward"},
        Some(QueryPlan::Index(one)) => doc! {
            "stage": "FETCH",
            "filter": filter.clone(),
            "inputStage": explained_ixscan(one, examined(0)),
        },
        Some(QueryPlan::Or(branches)) => {
            let inputs: Vec<Document> = branches
                .iter()
                .enumerate()
                .map(|(i, b)| explained_ixscan(b, examined(i)))
                .collect();
            let mut or = doc! {"stage": "OR", "inputStages": inputs};
            let mut fetch = doc! {"stage": "FETCH", "filter": filter.clone()};
            if let Some((e, _)) = run {
                or.insert(
                    "keysExamined",
                    e.iter().map(|(k, _)| *k as i64).sum::<i64>(),
                );
                fetch.insert(
                    "docsExamined",
                    e.iter().map(|(_, d)| *d as i64).sum::<i64>(),
                );
            }
            fetch.insert("inputStage", or);
            doc! {"stage": "SUBPLAN", "inputStage": fetch}
        }
    };
    if let Some(s) = sort {
        // SUBPLAN stays on top: it is how the query was planned.
        match top.get_str("stage") {
            Ok("SUBPLAN") => {
                if let Ok(fetch) = top.get_document("inputStage") {
                    let sorted = doc! {"stage": "SORT", "sortPattern": s.clone(), "inputStage": fetch.clone()};
                    top.insert("inputStage", sorted);
                }
            }
            _ => top = doc! {"stage": "SORT", "sortPattern": s.clone(), "inputStage": top},
        }
    }
    returned(&mut top);
    top
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_documents_pipelines_are_recognised() {
        let shape = |stages: Vec<Document>| CountShape::of(&stages);
        let group = doc! {"$group": {"_id": 1, "n": {"$sum": 1}}};
        let s = shape(vec![doc! {"$match": {"a": 1}}, group.clone()]).unwrap();
        assert_eq!((&s.filter, s.skip, s.limit), (&doc! {"a": 1}, 0, 0));
        assert_eq!(s.answer(0), Vec::<Document>::new());
        assert_eq!(s.answer(3), vec![doc! {"_id": 1, "n": 3}]);
        let s = shape(vec![
            doc! {"$match": {}},
            doc! {"$skip": 2},
            doc! {"$limit": 5i64},
            group.clone(),
        ])
        .unwrap();
        assert_eq!((s.skip, s.limit), (2, 5));
        assert!(shape(vec![group.clone()]).is_some());
        // Anything else is a pipeline to run.
        for stages in [
            vec![doc! {"$group": {"_id": "$a", "n": {"$sum": 1}}}],
            vec![doc! {"$group": {"_id": 1, "n": {"$sum": "$x"}}}],
            vec![doc! {"$group": {"_id": 1, "n": {"$avg": 1}}}],
            vec![doc! {"$limit": 1}, doc! {"$skip": 1}, group.clone()],
            vec![doc! {"$project": {"a": 1}}, group.clone()],
            vec![doc! {"$match": {}}, doc! {"$match": {}}, group.clone()],
            vec![doc! {"$match": {}}],
        ] {
            assert!(shape(stages.clone()).is_none(), "{stages:?}");
        }
    }

    #[test]
    fn only_the_simple_collation_is_accepted() {
        assert!(refuse_collation(None).is_ok());
        assert!(refuse_collation(Some(&doc! {})).is_ok());
        assert!(refuse_collation(Some(&doc! {"locale": "simple"})).is_ok());
        for c in [
            doc! {"locale": "en_US", "strength": 2},
            doc! {"locale": "fr"},
        ] {
            let e = refuse_collation(Some(&c)).unwrap_err();
            assert_eq!(e.code, codes::COMMAND_NOT_SUPPORTED, "{c}");
        }
    }

    #[test]
    fn a_commands_let_reaches_its_filter() {
        let vars = command_vars(Some(&doc! {"id": 2, "n": {"$add": [1, 1]}})).unwrap();
        let f = Filter::parse_with(&doc! {"$expr": {"$eq": ["$_id", "$$n"]}}, &vars).unwrap();
        assert!(f.matches(&doc! {"_id": 2}) && !f.matches(&doc! {"_id": 1}));
        // $$NOW is there too, with or without let.
        let vars = command_vars(None).unwrap();
        let f = Filter::parse_with(&doc! {"$expr": {"$lt": ["$t", "$$NOW"]}}, &vars).unwrap();
        assert!(f.matches(&doc! {"t": bson::DateTime::from_millis(0)}));
        let e = command_vars(Some(&doc! {"Bad": 1})).unwrap_err();
        assert_eq!(e.code, 16867);
    }

    #[test]
    fn service_errors_keep_their_extra_fields() {
        let e = DocError::new(codes::DUPLICATE_KEY, "E11000")
            .with_info(doc! {"keyPattern": {"x": 1}, "keyValue": {"x": "foo"}});
        let m = mongo(e);
        assert_eq!(m.code, codes::DUPLICATE_KEY);
        assert_eq!(
            m.info.as_deref(),
            Some(&doc! {"keyPattern": {"x": 1}, "keyValue": {"x": "foo"}})
        );
        // A volume's quota is MongoDB's OutOfDiskSpace, whichever layer
        // refused the write.
        let table = DocError::new(berth_docs::error::codes::OUT_OF_DISK_SPACE, "quota");
        let namespace =
            berth_docs::table::from_meta(berth_meta::Error::new(berth_meta::Code::Quota, "quota"));
        for e in [table, namespace] {
            let m = mongo(e);
            assert_eq!((m.code, m.code_name().as_ref()), (14031, "OutOfDiskSpace"));
        }
    }
}
