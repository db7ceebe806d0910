//! Query planning: which index, if any, a query reads instead of scanning
//! the whole table, and which ranges of its entries. Pure: the indexes and
//! the query are arguments.
//!
//! An index serves a query through its leading fields:
//! - **Points**: a run of leading fields each with equality (`{a: 5}`,
//!   `$eq`) or `$in` of plain values. Their values form key prefixes (one
//!   per combination, at most [`INTERVALS_MAX`] intervals in all).
//! - **A range** on the field after them: `$gt`/`$gte`/`$lt`/`$lte`
//!   (bounds of one condition together, or several intersected when the
//!   field never held an array), an anchored regex with a literal prefix
//!   (`/^abc/`, no flags: the strings starting with "abc", and the regex
//!   value itself, which the regex also matches), or `$in` with such
//!   regexes. Type bracketing bounds each range to its operand's type
//!   class: `$gt: 5` reads numbers above 5 up to the end of the numbers,
//!   never a string.
//! - **A sort** on the index's fields, leaving out those pinned to one
//!   value, in the index's directions or all in the opposite ones (then
//!   the scan goes **backward**: the intervals in reverse, each from its
//!   end): the scan yields documents in the sort's order, so a limit stops
//!   it early. Either the sort follows the whole key (the intervals one
//!   after the other), or it is on the fields after several point
//!   prefixes (`$in`), whose runs are then merged by the rest of the key
//!   (at most [`MERGE_RUNS_MAX`] runs; with more, the caller sorts in
//!   memory). A sort field gives the order only when it is not multikey:
//!   a document is returned at its first entry, which within several
//!   points or a range need not be its least (or, backward, greatest)
//!   element, the one MongoDB sorts an array by, and an empty array is
//!   indexed as null but sorts below it. A pinned field left out of the
//!   sort must not be multikey either.
//! - **The `_id` index**: documents are stored under their `_id`'s
//!   encoding, so the table's document range is an index on `{_id: 1}`
//!   ([`ID_INDEX`], unique, never multikey) whose entries are the
//!   documents themselves. It is planned for a sort on `_id` (either way)
//!   and for `$or` branches; a filter pinning `_id` is read by key before
//!   any plan (`Filter::id_candidates`).
//! - **`$or`** ([`plan`]): when no index is bounded by the conditions
//!   beside a top-level `$or`, and every branch (with those conditions) has
//!   a bounded index, the query reads the union of one scan per branch
//!   ([`QueryPlan::Or`]), each document once; it gives no order (the caller
//!   sorts in memory). Otherwise the one-index plan or a scan.
//!
//! The filter is always applied again to the documents read: the index
//! only narrows what is read, so every bound here is a superset of what
//! the filter matches. In particular bounds on a multikey field are not
//! intersected (`{a: {$gt: 1, $lt: 5}}` matches `{a: [0, 9]}`); one
//! condition's bounds are used. Partial indexes are not chosen (the
//! planner does not prove that a filter implies the partial filter);
//! sparse indexes only for a filter that needs a non-null value of an
//! indexed field (documents missing the fields have no entry there).
//! Null equality is planned on top-level fields only: an array of
//! documents missing the field matches `{"a.b": null}` but gives no null
//! entry.
//!
//! Intervals are in the space of an entry's *key part* (the bytes of
//! `keys::encode_key`, before the store's escaping): every key part `k`
//! with `start <= k < end` is in the interval. The store's escaping keeps
//! that order, so the table service turns each bound into a store key
//! with `Key::bytes_prefix`.

use std::cmp::Ordering;

use bson::{Bson, Document};

use crate::index::IndexDef;
use crate::keys;
use crate::order;

/// Most intervals one plan reads (point combinations times range spans);
/// an `$in` that would make more is not used on that field.
pub const INTERVALS_MAX: usize = 10_000;
/// Most point runs merged in sort order; a plan with more does not
/// provide the sort (the caller sorts in memory).
pub const MERGE_RUNS_MAX: usize = 256;
/// Most branches of a top-level `$or` planned as a union of index scans
/// (with more, the query scans the table).
pub const OR_BRANCHES_MAX: usize = 64;
/// The `_id` index's number in a plan (secondary indexes are numbered from
/// 1): its entries are the documents, under `vol · TableDoc · ino`.
pub const ID_INDEX: u64 = 0;
/// The `_id` index's name, as MongoDB lists it.
pub const ID_INDEX_NAME: &str = "_id_";

/// A range of key parts: `start <= k < end`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interval {
    pub start: Vec<u8>,
    /// `None`: to the end of the index.
    pub end: Option<Vec<u8>>,
    /// Bytes of the points' prefix every key part in it starts with (the
    /// rest of the key orders the merge of several runs).
    pub point_len: usize,
}

impl Interval {
    /// Whether key part `k` is in the interval.
    pub fn contains(&self, k: &[u8]) -> bool {
        k >= self.start.as_slice() && self.end.as_deref().is_none_or(|e| k < e)
    }
}

/// How a query reads an index.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexPlan {
    pub index_id: u64,
    pub name: String,
    /// The key parts to read, in key order, disjoint.
    pub intervals: Vec<Interval>,
    /// Leading fields with points (equality or `$in`).
    pub eq_fields: usize,
    /// A range on the field after them.
    pub range: bool,
    /// The scan yields documents in the query's sort order.
    pub provides_sort: bool,
    /// Read the intervals in reverse key order, each from its end (a sort
    /// against the index's directions).
    pub backward: bool,
    /// The intervals are runs to merge by the key after their point prefix
    /// (for the sort); otherwise they are read one after the other.
    pub merge: bool,
    /// The index's key pattern (for explain).
    pub key_pattern: Document,
    /// MongoDB's `indexBounds`: per field, its intervals as strings
    /// (`"(5, inf.0]"`).
    pub bounds: Document,
}

impl IndexPlan {
    /// Whether the plan reads only part of the index (bounded by points or
    /// a range), rather than all of it for a sort.
    pub fn bounded(&self) -> bool {
        self.eq_fields > 0 || self.range
    }

    /// Whether it reads the `_id` index (the documents themselves).
    pub fn on_id(&self) -> bool {
        self.index_id == ID_INDEX
    }
}

/// How a query reads the table when not by a scan of every document.
// One plan per query, short-lived: boxing the larger variant buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum QueryPlan {
    /// One index (see [`choose`]).
    Index(IndexPlan),
    /// A top-level `$or`: one bounded index scan per branch, their
    /// documents united (each once, by `_id`), in no particular order.
    Or(Vec<IndexPlan>),
}

impl QueryPlan {
    /// Whether the documents come in the query's sort order.
    pub fn provides_sort(&self) -> bool {
        match self {
            QueryPlan::Index(p) => p.provides_sort,
            QueryPlan::Or(_) => false,
        }
    }
}

/// The `_id` index as a definition (never stored: see [`ID_INDEX`]).
fn id_index() -> IndexDef {
    IndexDef {
        id: ID_INDEX,
        name: ID_INDEX_NAME.to_owned(),
        keys: vec![("_id".to_owned(), 1)],
        unique: true,
        sparse: false,
        partial: None,
        spec: Vec::new(),
        ready: true,
        // An `_id` is never an array (inserts refuse one).
        multikey: Some(0),
    }
}

/// A cut between values, in MongoDB's order of values.
#[derive(Debug, Clone, PartialEq)]
enum Cut {
    /// Just below the value (an inclusive lower, an exclusive upper bound).
    Before(Bson),
    /// Just above it.
    After(Bson),
    /// Below every value of the type class (`order::type_rank`).
    ClassStart(u8),
    /// Above every value of the type class.
    ClassEnd(u8),
    /// Above every string starting with this prefix.
    PrefixEnd(String),
}

impl Cut {
    /// The cut as a block of encodings and a side: below (`false`) or
    /// above (`true`) every encoding starting with the bytes.
    fn block(&self) -> (Vec<u8>, bool) {
        match self {
            Cut::Before(v) => (encode(v), false),
            Cut::After(v) => (encode(v), true),
            Cut::ClassStart(r) => (vec![*r], false),
            Cut::ClassEnd(r) => (vec![*r], true),
            Cut::PrefixEnd(s) => (string_prefix(s), true),
        }
    }

    /// Where the cut falls among the encodings of an ascending field.
    fn ascending(&self) -> Vec<u8> {
        match self.block() {
            (b, false) => b,
            (b, true) => bump(&b),
        }
    }

    /// Where it falls among a descending field's (inverted) encodings:
    /// the order is reversed, so "below a block" becomes "above it".
    fn descending(&self) -> Vec<u8> {
        let (b, above) = self.block();
        let inv: Vec<u8> = b.iter().map(|x| !x).collect();
        if above {
            inv
        } else {
            bump(&inv)
        }
    }

    fn compare(&self, other: &Cut) -> Ordering {
        self.ascending().cmp(&other.ascending())
    }
}

/// The values between two cuts of one field.
#[derive(Debug, Clone, PartialEq)]
struct Span {
    lo: Cut,
    hi: Cut,
}

impl Span {
    fn point(v: Bson) -> Span {
        Span {
            lo: Cut::Before(v.clone()),
            hi: Cut::After(v),
        }
    }

    /// The value when the span holds exactly one.
    fn as_point(&self) -> Option<&Bson> {
        match (&self.lo, &self.hi) {
            (Cut::Before(a), Cut::After(b)) if encode(a) == encode(b) => Some(a),
            _ => None,
        }
    }

    fn is_empty(&self) -> bool {
        self.lo.compare(&self.hi) != Ordering::Less
    }

    fn intersect(&self, other: &Span) -> Span {
        let lo = match self.lo.compare(&other.lo) {
            Ordering::Less => other.lo.clone(),
            _ => self.lo.clone(),
        };
        let hi = match self.hi.compare(&other.hi) {
            Ordering::Greater => other.hi.clone(),
            _ => self.hi.clone(),
        };
        Span { lo, hi }
    }
}

/// One condition of the filter on a path: the values it allows, as a
/// union of spans (a superset of what it matches).
#[derive(Debug, Clone)]
struct Cond {
    spans: Vec<Span>,
}

impl Cond {
    fn points(&self) -> Option<Vec<Bson>> {
        self.spans
            .iter()
            .map(|s| s.as_point().cloned())
            .collect::<Option<Vec<_>>>()
    }
}

/// How a query with `filter` and `sort` should read the table, or `None`
/// for a scan of every document: the index [`choose`] picks when the
/// conditions beside a top-level `$or` bound it; else, when every branch
/// of that `$or` (with those conditions) bounds an index, the union of
/// their scans; else the index that gives the sort, if any.
pub fn plan(indexes: &[IndexDef], filter: &Document, sort: Option<&Document>) -> Option<QueryPlan> {
    let one = choose(indexes, filter, sort);
    if one.as_ref().is_some_and(IndexPlan::bounded) {
        return one.map(QueryPlan::Index);
    }
    if let Some(branches) = or_branches(indexes, filter) {
        return Some(QueryPlan::Or(branches));
    }
    one.map(QueryPlan::Index)
}

/// A bounded plan for every branch of the filter's top-level `$or`, each
/// with the filter's other conditions (`a ∧ (b ∨ c)` is `(a ∧ b) ∨ (a ∧
/// c)`), at most [`INTERVALS_MAX`] intervals in all.
fn or_branches(indexes: &[IndexDef], filter: &Document) -> Option<Vec<IndexPlan>> {
    let Some(Bson::Array(items)) = filter.get("$or") else {
        return None;
    };
    if items.is_empty() || items.len() > OR_BRANCHES_MAX {
        return None;
    }
    let beside = conditions(filter);
    let mut out = Vec::with_capacity(items.len());
    let mut intervals = 0usize;
    for item in items {
        let Bson::Document(branch) = item else {
            return None;
        };
        let mut conds = beside.clone();
        conds.extend(conditions(branch));
        let p = best(indexes, &conds, &[], true)?;
        intervals += p.intervals.len();
        if intervals > INTERVALS_MAX {
            return None;
        }
        out.push(p);
    }
    Some(out)
}

/// The index a query with `filter` and `sort` should read, or `None` for
/// a scan of the table (a top-level `$or` is left to [`plan`]).
pub fn choose(
    indexes: &[IndexDef],
    filter: &Document,
    sort: Option<&Document>,
) -> Option<IndexPlan> {
    let conds = conditions(filter);
    let sort: Vec<(String, i32)> = sort
        .map(|s| s.iter().map(|(k, v)| (k.clone(), direction(v))).collect())
        .unwrap_or_default();
    best(indexes, &conds, &sort, false)
}

/// The best plan over the ready, non-partial indexes and the `_id` index:
/// most bounded fields, then most points, then one giving the sort. The
/// `_id` index serves a query only when it gives its sort (a query it
/// merely bounds reads the documents as a scan does, and a scan streams),
/// and an `$or` branch (`branch`) only when bounded; a branch takes only a
/// bounded plan.
fn best(
    indexes: &[IndexDef],
    conds: &[(String, Cond)],
    sort: &[(String, i32)],
    branch: bool,
) -> Option<IndexPlan> {
    let id = id_index();
    let candidates = indexes
        .iter()
        .filter(|d| d.ready && d.partial.is_none())
        .chain(std::iter::once(&id));
    let mut best: Option<((usize, usize, bool), IndexPlan)> = None;
    for def in candidates {
        let Some(plan) = plan_for(def, conds, sort) else {
            continue;
        };
        let wanted = match (branch, plan.on_id()) {
            (true, _) => plan.bounded(),
            (false, true) => plan.provides_sort,
            (false, false) => true,
        };
        if !wanted {
            continue;
        }
        let score = (
            plan.eq_fields + usize::from(plan.range),
            plan.eq_fields,
            plan.provides_sort,
        );
        if best.as_ref().is_none_or(|(s, _)| score > *s) {
            best = Some((score, plan));
        }
    }
    best.map(|(_, p)| p)
}

/// How `def` would serve the conditions and the sort, if it serves them.
fn plan_for(def: &IndexDef, conds: &[(String, Cond)], sort: &[(String, i32)]) -> Option<IndexPlan> {
    fn on<'a>(conds: &'a [(String, Cond)], path: &'a str) -> impl Iterator<Item = &'a Cond> {
        conds.iter().filter(move |(p, _)| p == path).map(|(_, c)| c)
    }
    // Points: the leading fields' values, as lists per field.
    let mut points: Vec<Vec<Bson>> = Vec::new();
    let mut combos = 1usize;
    for (path, _) in &def.keys {
        let Some(values) = on(conds, path).find_map(Cond::points) else {
            break;
        };
        let nulls = values.iter().any(|v| matches!(v, Bson::Null));
        if nulls && (def.sparse || path.contains('.')) {
            break;
        }
        if combos.saturating_mul(values.len()) > INTERVALS_MAX || values.is_empty() {
            break;
        }
        combos *= values.len();
        points.push(values);
    }
    let k = points.len();
    // A range on the next field.
    let multikey = |i: usize| def.is_multikey(i);
    let mut range: Option<Vec<Span>> = None;
    if let Some((path, _)) = def.keys.get(k) {
        let mut found = on(conds, path).filter(|c| c.points().is_none());
        if let Some(first) = found.next() {
            let mut spans = first.spans.clone();
            if !multikey(k) {
                for other in found.filter(|c| c.spans.len() == 1) {
                    spans = spans
                        .iter()
                        .map(|s| s.intersect(&other.spans[0]))
                        .filter(|s| !s.is_empty())
                        .collect();
                }
            }
            let spans = union(spans);
            if combos.saturating_mul(spans.len().max(1)) <= INTERVALS_MAX {
                range = Some(spans);
            }
        }
    }
    let constrained = k > 0 || range.is_some();
    if def.sparse && !constrained {
        return None;
    }
    // How many distinct keys each point field has (1 and 1.0 are one).
    let distinct: Vec<usize> = points
        .iter()
        .map(|values| {
            let mut e: Vec<Vec<u8>> = values.iter().map(encode).collect();
            e.sort();
            e.dedup();
            e.len()
        })
        .collect();
    let order = match sort.is_empty() {
        true => None,
        false => sort_order(def, &distinct, sort, combos),
    };
    if !constrained && order.is_none() {
        return None;
    }
    let backward = order.is_some_and(|o| o.backward);
    let intervals = intervals(def, &points, range.as_deref());
    let bounds = bounds(def, &points, range.as_deref(), backward);
    Some(IndexPlan {
        index_id: def.id,
        name: def.name.clone(),
        intervals,
        eq_fields: k,
        range: range.is_some(),
        provides_sort: order.is_some(),
        backward,
        merge: order.is_some_and(|o| o.merge),
        key_pattern: def.key_pattern(),
        bounds,
    })
}

/// How a scan of an index gives a sort's order.
#[derive(Debug, Clone, Copy, PartialEq)]
struct SortOrder {
    /// Against the index's directions.
    backward: bool,
    /// By merging the point prefixes' runs.
    merge: bool,
}

/// Whether, and how, a scan of `def` with points on its first
/// `distinct.len()` fields (that many distinct keys each), `combos` point
/// prefixes in all (a range after them changes nothing), yields `sort`'s
/// order (see the module doc).
fn sort_order(
    def: &IndexDef,
    distinct: &[usize],
    sort: &[(String, i32)],
    combos: usize,
) -> Option<SortOrder> {
    let k = distinct.len();
    let pinned = |i: usize| i < k && distinct[i] == 1;
    let mut wanted: Vec<(&str, i32)> = Vec::with_capacity(sort.len());
    for (path, dir) in sort {
        match def.keys.iter().position(|(p, _)| p == path) {
            // Every document read has the same value there: it orders
            // nothing, unless an array's other elements sort it.
            Some(i) if pinned(i) => {
                if def.is_multikey(i) {
                    return None;
                }
            }
            _ => wanted.push((path.as_str(), *dir)),
        }
    }
    // A multikey field gives no order: a document's first entry in the
    // scan need not be the element its array sorts by (within several
    // points or a range), and an empty array sorts below null while its
    // entry is null's.
    let unordered = |i: usize| def.is_multikey(i);
    let follows = |fields: &[usize]| -> Option<bool> {
        if wanted.len() > fields.len() {
            return None;
        }
        let mut backward = None;
        for ((path, dir), &i) in wanted.iter().zip(fields) {
            let (ip, idir) = &def.keys[i];
            if ip != path || unordered(i) {
                return None;
            }
            let against = dir != idir;
            if *backward.get_or_insert(against) != against {
                return None;
            }
        }
        Some(backward.unwrap_or(false))
    };
    // The whole key's order: the intervals one after the other.
    let whole: Vec<usize> = (0..def.keys.len()).filter(|i| !pinned(*i)).collect();
    if let Some(backward) = follows(&whole) {
        return Some(SortOrder {
            backward,
            merge: false,
        });
    }
    // The rest of the key after several point prefixes: their runs merged.
    if combos > 1 && combos <= MERGE_RUNS_MAX {
        let rest: Vec<usize> = (k..def.keys.len()).collect();
        if let Some(backward) = follows(&rest) {
            return Some(SortOrder {
                backward,
                merge: true,
            });
        }
    }
    None
}

/// The `_id` index's plan for a filter with a range on `_id` when no
/// sort is asked ([`plan`] covers a sort on `_id`): the caller streams the
/// documents of its key range in `_id` order, a page at a time, rather
/// than holding a result. Equality and `$in` on `_id` are read by key
/// before this is asked (`Filter::id_candidates`).
pub fn id_range(filter: &Document) -> Option<IndexPlan> {
    let plan = plan_for(&id_index(), &conditions(filter), &[])?;
    (plan.eq_fields == 0 && plan.range).then_some(plan)
}

/// The interval of a single-field index's entries whose value is a date
/// before `before` (a TTL index's expired documents; dates sort together,
/// after every other class but timestamps, regexes and the rest).
pub fn dates_before(def: &IndexDef, before: bson::DateTime) -> Interval {
    let span = Span {
        lo: Cut::ClassStart(order::type_rank(&Bson::DateTime(before))),
        hi: Cut::Before(Bson::DateTime(before)),
    };
    let mut out = intervals(def, &[], Some(std::slice::from_ref(&span)));
    out.pop().expect("one span gives one interval")
}

/// The key-part intervals of the points' combinations, each with the
/// range's spans (or whole), in key order.
fn intervals(def: &IndexDef, points: &[Vec<Bson>], range: Option<&[Span]>) -> Vec<Interval> {
    // The prefixes: each field's values encoded (inverted when descending).
    let mut prefixes: Vec<Vec<u8>> = vec![Vec::new()];
    for (values, (_, dir)) in points.iter().zip(&def.keys) {
        let mut encoded: Vec<Vec<u8>> = values
            .iter()
            .map(|v| keys::encode_key(&[(v.clone(), *dir < 0)]))
            .collect();
        encoded.sort();
        encoded.dedup();
        prefixes = prefixes
            .iter()
            .flat_map(|p| {
                encoded.iter().map(move |e| {
                    let mut n = p.clone();
                    n.extend_from_slice(e);
                    n
                })
            })
            .collect();
    }
    let descending = def.keys.get(points.len()).is_some_and(|(_, d)| *d < 0);
    let mut out = Vec::new();
    for p in prefixes {
        match range {
            None => out.push(Interval {
                end: (!p.is_empty()).then(|| bump(&p)),
                start: p.clone(),
                point_len: p.len(),
            }),
            Some(spans) => {
                for s in spans {
                    let (start, end) = if descending {
                        (s.hi.descending(), s.lo.descending())
                    } else {
                        (s.lo.ascending(), s.hi.ascending())
                    };
                    let mut st = p.clone();
                    st.extend_from_slice(&start);
                    let mut en = p.clone();
                    en.extend_from_slice(&end);
                    out.push(Interval {
                        start: st,
                        end: Some(en),
                        point_len: p.len(),
                    });
                }
            }
        }
    }
    out.sort_by(|a, b| a.start.cmp(&b.start));
    out
}

/// Sorts spans and merges those that overlap.
fn union(mut spans: Vec<Span>) -> Vec<Span> {
    spans.retain(|s| !s.is_empty());
    spans.sort_by(|a, b| a.lo.compare(&b.lo));
    let mut out: Vec<Span> = Vec::with_capacity(spans.len());
    for s in spans {
        match out.last_mut() {
            Some(last) if s.lo.compare(&last.hi) != Ordering::Greater => {
                if s.hi.compare(&last.hi) == Ordering::Greater {
                    last.hi = s.hi;
                }
            }
            _ => out.push(s),
        }
    }
    out
}

/// The smallest byte string above every string starting with `b`
/// (`b` never is all 0xFF bytes here: it starts with a class byte or its
/// inverse, neither of which is 0xFF).
fn bump(b: &[u8]) -> Vec<u8> {
    let mut end = b.to_vec();
    while let Some(last) = end.pop() {
        if last != 0xFF {
            end.push(last + 1);
            return end;
        }
    }
    Vec::new()
}

fn encode(v: &Bson) -> Vec<u8> {
    let mut out = Vec::new();
    keys::encode_value(v, &mut out);
    out
}

/// The bytes every encoded string starting with `s` starts with.
fn string_prefix(s: &str) -> Vec<u8> {
    let mut out = encode(&Bson::String(s.to_owned()));
    // Without the terminator.
    out.truncate(out.len() - 2);
    out
}

fn direction(v: &Bson) -> i32 {
    match order::number(v) {
        Some(order::Num::Int(i)) if i < 0 => -1,
        Some(order::Num::Float(f)) if f < 0.0 => -1,
        _ => 1,
    }
}

/// The conditions the filter puts on paths that an index can serve, in
/// filter order (top level and inside top-level `$and`s).
fn conditions(filter: &Document) -> Vec<(String, Cond)> {
    let mut out = Vec::new();
    collect(filter, &mut out, 0);
    out
}

/// `$and` nests at most this deep here (the filter's parser bounds it too).
const AND_DEPTH_MAX: usize = 100;

fn collect(filter: &Document, out: &mut Vec<(String, Cond)>, depth: usize) {
    for (k, v) in filter {
        if k == "$and" {
            if let (Bson::Array(a), true) = (v, depth < AND_DEPTH_MAX) {
                for c in a {
                    if let Bson::Document(d) = c {
                        collect(d, out, depth + 1);
                    }
                }
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        match v {
            Bson::Document(d) if d.keys().any(|k| k.starts_with('$')) => {
                operators(k, d, out);
            }
            Bson::RegularExpression(r) => {
                if let Some(spans) = regex_spans(r.pattern.as_str(), r.options.as_str()) {
                    out.push((k.clone(), Cond { spans }));
                }
            }
            v => {
                if let Some(s) = point(v) {
                    out.push((k.clone(), Cond { spans: vec![s] }));
                }
            }
        }
    }
}

/// The conditions of an operator document on `path`.
fn operators(path: &str, d: &Document, out: &mut Vec<(String, Cond)>) {
    let mut push = |spans: Vec<Span>| out.push((path.to_owned(), Cond { spans }));
    for (op, arg) in d {
        match op.as_str() {
            "$eq" => {
                if let Some(s) = point(arg) {
                    push(vec![s]);
                }
            }
            "$in" => {
                let Bson::Array(items) = arg else { continue };
                let mut spans = Vec::new();
                let usable = items.iter().all(|item| match item {
                    Bson::RegularExpression(r) => {
                        match regex_spans(r.pattern.as_str(), r.options.as_str()) {
                            Some(s) => {
                                spans.extend(s);
                                true
                            }
                            None => false,
                        }
                    }
                    v => match point(v) {
                        Some(s) => {
                            spans.push(s);
                            true
                        }
                        None => false,
                    },
                });
                if usable {
                    push(spans);
                }
            }
            "$gt" | "$gte" | "$lt" | "$lte" if rangeable(arg) => {
                let class = order::type_rank(arg);
                let span = match op.as_str() {
                    "$gt" => Span {
                        lo: Cut::After(arg.clone()),
                        hi: Cut::ClassEnd(class),
                    },
                    "$gte" => Span {
                        lo: Cut::Before(arg.clone()),
                        hi: Cut::ClassEnd(class),
                    },
                    "$lt" => Span {
                        lo: Cut::ClassStart(class),
                        hi: Cut::Before(arg.clone()),
                    },
                    _ => Span {
                        lo: Cut::ClassStart(class),
                        hi: Cut::After(arg.clone()),
                    },
                };
                push(vec![span]);
            }
            "$regex" => {
                let pattern = match arg {
                    Bson::String(s) => s.clone(),
                    Bson::RegularExpression(r) if r.options.as_str().is_empty() => {
                        r.pattern.as_str().to_owned()
                    }
                    _ => continue,
                };
                let options = match d.get("$options") {
                    None => "",
                    Some(Bson::String(o)) => o.as_str(),
                    Some(_) => continue,
                };
                if let Some(spans) = regex_spans(&pattern, options) {
                    push(spans);
                }
            }
            _ => {}
        }
    }
}

/// The span of an equality on `v`, when an index can serve it: not an
/// array (it matches the array whole or as an element), undefined, or an
/// operator document.
fn point(v: &Bson) -> Option<Span> {
    match v {
        Bson::Array(_) | Bson::RegularExpression(_) | Bson::Undefined => None,
        Bson::Document(d) if d.keys().any(|k| k.starts_with('$')) => None,
        v => Some(Span::point(v.clone())),
    }
}

/// Whether a comparison operand bounds a range of its own type class
/// (null, MinKey and MaxKey reach across classes, documents and arrays
/// compare whole arrays too: those are left to the scan).
fn rangeable(v: &Bson) -> bool {
    matches!(
        v,
        Bson::Int32(_)
            | Bson::Int64(_)
            | Bson::Double(_)
            | Bson::Decimal128(_)
            | Bson::String(_)
            | Bson::Symbol(_)
            | Bson::ObjectId(_)
            | Bson::Boolean(_)
            | Bson::DateTime(_)
            | Bson::Timestamp(_)
            | Bson::Binary(_)
    )
}

/// The spans a regex can match within: the strings starting with its
/// literal prefix, and the regex value itself (a regex matches an equal
/// regex). `None` unless it is anchored (`^`), without flags and without
/// alternation.
fn regex_spans(pattern: &str, options: &str) -> Option<Vec<Span>> {
    let prefix = regex_prefix(pattern, options)?;
    let strings = Span {
        lo: Cut::Before(Bson::String(prefix.clone())),
        hi: Cut::PrefixEnd(prefix),
    };
    let re = Bson::RegularExpression(bson::Regex {
        pattern: pattern.try_into().ok()?,
        options: options.try_into().ok()?,
    });
    Some(vec![strings, Span::point(re)])
}

/// The literal text every string a regex matches starts with: `/^abc/`,
/// `/^abc.*x/` → "abc"; `/^ab?/` → "a"; `/^a\.b/` → "a.b". `None` when
/// the regex is not anchored at the start, has flags (`i` changes case,
/// `m` anchors at every line, `x` drops spaces) or an alternation.
pub fn regex_prefix(pattern: &str, options: &str) -> Option<String> {
    if !options.is_empty() || pattern.contains('|') {
        return None;
    }
    let rest = pattern.strip_prefix('^')?;
    let mut prefix = String::new();
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        let literal = match c {
            '\\' => match chars.peek() {
                Some(&n) if n.is_ascii_punctuation() => {
                    chars.next();
                    n
                }
                _ => break,
            },
            '.' | '[' | ']' | '(' | ')' | '{' | '}' | '*' | '+' | '?' | '^' | '$' => break,
            c => c,
        };
        match chars.peek() {
            // The literal may be absent: the prefix ends before it.
            Some('*' | '?' | '{') => break,
            _ => prefix.push(literal),
        }
    }
    Some(prefix)
}

// -- explain ------------------------------------------------------------------

/// MongoDB's `indexBounds`: every field of the index with its intervals,
/// in the order the scan reads them (reversed, each from its upper end,
/// when it goes backward).
fn bounds(
    def: &IndexDef,
    points: &[Vec<Bson>],
    range: Option<&[Span]>,
    backward: bool,
) -> Document {
    let mut out = Document::new();
    for (i, (path, dir)) in def.keys.iter().enumerate() {
        let desc = (*dir < 0) != backward;
        let mut spans: Vec<Span> = if let Some(values) = points.get(i) {
            let mut v: Vec<Span> = values.iter().cloned().map(Span::point).collect();
            v.sort_by(|a, b| a.lo.compare(&b.lo));
            v.dedup_by(|a, b| a.lo.compare(&b.lo) == Ordering::Equal);
            v
        } else if let (true, Some(r)) = (i == points.len(), range) {
            r.to_vec()
        } else {
            let all = if desc {
                "[MaxKey, MinKey]"
            } else {
                "[MinKey, MaxKey]"
            };
            out.insert(path.clone(), vec![Bson::String(all.into())]);
            continue;
        };
        if desc {
            spans.reverse();
        }
        let shown: Vec<Bson> = spans
            .iter()
            .map(|s| Bson::String(show_span(s, desc)))
            .collect();
        out.insert(path.clone(), shown);
    }
    out
}

fn show_span(s: &Span, desc: bool) -> String {
    let (lo_open, lo) = show_cut(&s.lo, false);
    let (hi_open, hi) = show_cut(&s.hi, true);
    let (lb, hb) = (
        if lo_open { "(" } else { "[" },
        if hi_open { ")" } else { "]" },
    );
    if desc {
        let (lb, hb) = (
            if hi_open { "(" } else { "[" },
            if lo_open { ")" } else { "]" },
        );
        format!("{lb}{hi}, {lo}{hb}")
    } else {
        format!("{lb}{lo}, {hi}{hb}")
    }
}

/// A cut as MongoDB shows a bound: whether it is open, and the value.
fn show_cut(c: &Cut, upper: bool) -> (bool, String) {
    match c {
        Cut::Before(v) => (upper, show_value(v)),
        Cut::After(v) => (!upper, show_value(v)),
        Cut::ClassStart(r) => (false, class_edge(*r, false).0),
        Cut::ClassEnd(r) => {
            let (v, open) = class_edge(*r, true);
            (open, v)
        }
        Cut::PrefixEnd(s) => match successor(s) {
            Some(n) => (true, show_value(&Bson::String(n))),
            None => (true, "{}".into()),
        },
    }
}

/// The least (or greatest) value MongoDB shows for a type class's bound,
/// and whether that bound is open (the first value of the next class).
fn class_edge(rank: u8, upper: bool) -> (String, bool) {
    let s = |x: &str| x.to_owned();
    match (rank, upper) {
        (3, false) => (s("-inf.0"), false),
        (3, true) => (s("inf.0"), false),
        (4, false) => (s("\"\""), false),
        (4, true) => (s("{}"), true),
        (7, true) => (s("ObjectId('000000000000000000000000')"), true),
        (7, false) => (s("BinData(0, )"), false),
        (8, false) => (s("ObjectId('000000000000000000000000')"), false),
        (8, true) => (s("ObjectId('ffffffffffffffffffffffff')"), false),
        (9, false) => (s("false"), false),
        (9, true) => (s("true"), false),
        (10, false) => (s("new Date(-9223372036854775808)"), false),
        (10, true) => (s("new Date(9223372036854775807)"), false),
        (11, false) => (s("Timestamp(0, 0)"), false),
        (11, true) => (s("Timestamp(4294967295, 4294967295)"), false),
        (_, false) => (s("MinKey"), false),
        (_, true) => (s("MaxKey"), false),
    }
}

/// The least string above every string starting with `s` (its last
/// character incremented), when there is one.
fn successor(s: &str) -> Option<String> {
    let mut chars: Vec<char> = s.chars().collect();
    while let Some(c) = chars.pop() {
        if let Some(n) = char::from_u32(c as u32 + 1) {
            chars.push(n);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

fn show_value(v: &Bson) -> String {
    match v {
        Bson::Double(f) if f.is_nan() => "nan.0".into(),
        Bson::Double(f) if f.is_infinite() => {
            if *f > 0.0 {
                "inf.0".into()
            } else {
                "-inf.0".into()
            }
        }
        Bson::Double(f) => format!("{f:?}"),
        Bson::String(s) | Bson::Symbol(s) => format!("{s:?}"),
        Bson::DateTime(d) => format!("new Date({})", d.timestamp_millis()),
        Bson::ObjectId(o) => format!("ObjectId('{o}')"),
        Bson::Timestamp(t) => format!("Timestamp({}, {})", t.time, t.increment),
        Bson::RegularExpression(r) => format!("/{}/{}", r.pattern, r.options),
        Bson::MinKey => "MinKey".into(),
        Bson::MaxKey => "MaxKey".into(),
        v => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn idx(id: u64, spec: Document) -> IndexDef {
        let mut d = IndexDef::parse(id, &spec).unwrap();
        d.ready = true;
        d
    }

    /// The key parts `doc` gives `def` that fall in the plan's intervals.
    fn hits(def: &IndexDef, plan: &IndexPlan, doc: &Document) -> usize {
        def.entries(doc)
            .unwrap()
            .iter()
            .filter(|k| plan.intervals.iter().any(|i| i.contains(k)))
            .count()
    }

    #[test]
    fn equality_prefixes_and_sorts_choose_indexes() {
        let a = idx(1, doc! {"key": {"a": 1}});
        let a_ts = idx(2, doc! {"key": {"a": 1, "ts": -1}});
        let all = [a.clone(), a_ts.clone()];
        // The longer equality prefix wins; with a sort on ts, the compound.
        let p = choose(&all, &doc! {"a": 5}, Some(&doc! {"ts": -1})).unwrap();
        assert_eq!((p.index_id, p.eq_fields, p.provides_sort), (2, 1, true));
        // A sort in the other direction is, backward.
        let p = choose(&all, &doc! {"a": 5}, Some(&doc! {"ts": 1})).unwrap();
        assert_eq!((p.index_id, p.provides_sort, p.backward), (2, true, true));
        assert_eq!(p.bounds, doc! {"a": ["[5, 5]"], "ts": ["[MinKey, MaxKey]"]});
        // Both fields equal.
        let p = choose(&all, &doc! {"a": 5, "ts": {"$eq": 3}}, None).unwrap();
        assert_eq!((p.index_id, p.eq_fields), (2, 2));
        // No condition on a: only a sort on a uses an index.
        assert!(choose(&all, &doc! {"ts": 3}, None).is_none());
        let p = choose(&all, &doc! {}, Some(&doc! {"a": 1})).unwrap();
        assert_eq!((p.eq_fields, p.provides_sort), (0, true));
        // Arrays are left to the scan.
        assert!(choose(&all, &doc! {"a": [1, 2]}, None).is_none());
        // Inside $and.
        let p = choose(&all, &doc! {"$and": [{"a": 1}, {"b": 2}]}, None).unwrap();
        assert_eq!(p.eq_fields, 1);
        // Not ready, partial: not chosen.
        let mut building = a.clone();
        building.ready = false;
        assert!(choose(&[building], &doc! {"a": 1}, None).is_none());
        let partial = idx(
            3,
            doc! {"key": {"a": 1}, "partialFilterExpression": {"x": 1}},
        );
        assert!(choose(&[partial], &doc! {"a": 1}, None).is_none());
        let sparse = idx(4, doc! {"key": {"a": 1}, "sparse": true});
        assert!(choose(std::slice::from_ref(&sparse), &doc! {"a": null}, None).is_none());
        assert!(choose(
            std::slice::from_ref(&sparse),
            &doc! {},
            Some(&doc! {"a": 1})
        )
        .is_none());
        assert!(choose(std::slice::from_ref(&sparse), &doc! {"a": 2}, None).is_some());
        assert!(choose(&[sparse], &doc! {"a": {"$gt": 2}}, None).is_some());
        // Null on a dotted path: not planned (arrays of documents).
        let ab = idx(5, doc! {"key": {"a.b": 1}});
        assert!(choose(std::slice::from_ref(&ab), &doc! {"a.b": null}, None).is_none());
        assert!(choose(&[ab], &doc! {"a.b": 1}, None).is_some());
    }

    #[test]
    fn the_prefix_is_a_prefix_of_the_entries() {
        let d = idx(1, doc! {"key": {"a": 1, "ts": -1}});
        let p = choose(std::slice::from_ref(&d), &doc! {"a": 5.0}, None).unwrap();
        assert_eq!(p.intervals.len(), 1);
        assert_eq!(hits(&d, &p, &doc! {"a": 5, "ts": 9}), 1);
        assert_eq!(hits(&d, &p, &doc! {"a": 6, "ts": 9}), 0);
        assert_eq!(hits(&d, &p, &doc! {"a": "5", "ts": 9}), 0);
    }

    #[test]
    fn ranges_are_bounded_to_their_type_class() {
        let d = idx(1, doc! {"key": {"ts": 1}});
        let p = choose(std::slice::from_ref(&d), &doc! {"ts": {"$gt": 5}}, None).unwrap();
        assert!(p.range && p.eq_fields == 0);
        assert_eq!(p.bounds, doc! {"ts": ["(5, inf.0]"]});
        for (v, inside) in [
            (Bson::Int32(5), false),
            (Bson::Double(5.5), true),
            (Bson::Int64(1 << 60), true),
            (Bson::Double(f64::INFINITY), true),
            (Bson::Int32(4), false),
            (Bson::Double(f64::NAN), false),
            (Bson::String("x".into()), false),
            (Bson::Null, false),
            (Bson::DateTime(bson::DateTime::from_millis(9)), false),
        ] {
            assert_eq!(hits(&d, &p, &doc! {"ts": v.clone()}) == 1, inside, "{v:?}");
        }
        // Both bounds of one condition.
        let q = doc! {"ts": {"$gte": 2, "$lt": 4}};
        let p = choose(std::slice::from_ref(&d), &q, None).unwrap();
        assert_eq!(p.bounds, doc! {"ts": ["[2, 4)"]});
        assert_eq!(p.intervals.len(), 1);
        let got: Vec<i32> = (0..6)
            .filter(|i| hits(&d, &p, &doc! {"ts": *i}) == 1)
            .collect();
        assert_eq!(got, vec![2, 3]);
        // Bounds of different classes meet nowhere.
        let q = doc! {"ts": {"$gt": 2, "$lt": "z"}};
        let p = choose(std::slice::from_ref(&d), &q, None).unwrap();
        assert!(p.intervals.is_empty());
        // Strings, dates, $lte.
        let p = choose(std::slice::from_ref(&d), &doc! {"ts": {"$lte": "m"}}, None).unwrap();
        assert_eq!(p.bounds, doc! {"ts": ["[\"\", \"m\"]"]});
        assert_eq!(hits(&d, &p, &doc! {"ts": "a"}), 1);
        assert_eq!(hits(&d, &p, &doc! {"ts": "n"}), 0);
        assert_eq!(hits(&d, &p, &doc! {"ts": 1}), 0);
        let t = bson::DateTime::from_millis(1000);
        let p = choose(std::slice::from_ref(&d), &doc! {"ts": {"$gte": t}}, None).unwrap();
        assert_eq!(
            p.bounds,
            doc! {"ts": ["[new Date(1000), new Date(9223372036854775807)]"]}
        );
        assert_eq!(
            hits(&d, &p, &doc! {"ts": bson::DateTime::from_millis(1000)}),
            1
        );
        assert_eq!(
            hits(&d, &p, &doc! {"ts": bson::DateTime::from_millis(999)}),
            0
        );
        // Null, MinKey, arrays and documents as bounds: not planned.
        for q in [
            doc! {"ts": {"$gte": null}},
            doc! {"ts": {"$gt": Bson::MinKey}},
            doc! {"ts": {"$lt": [1]}},
            doc! {"ts": {"$lt": {"x": 1}}},
        ] {
            assert!(choose(std::slice::from_ref(&d), &q, None).is_none(), "{q}");
        }
    }

    #[test]
    fn descending_fields_reverse_the_bounds() {
        let d = idx(1, doc! {"key": {"u": 1, "ts": -1}});
        let q = doc! {"u": "a", "ts": {"$gt": 5, "$lte": 9}};
        let p = choose(std::slice::from_ref(&d), &q, Some(&doc! {"ts": -1})).unwrap();
        assert_eq!(
            (p.eq_fields, p.range, p.provides_sort, p.merge),
            (1, true, true, false)
        );
        assert_eq!(p.bounds, doc! {"u": ["[\"a\", \"a\"]"], "ts": ["[9, 5)"]});
        let got: Vec<i32> = (0..12)
            .filter(|i| hits(&d, &p, &doc! {"u": "a", "ts": *i}) == 1)
            .collect();
        assert_eq!(got, vec![6, 7, 8, 9]);
        assert_eq!(hits(&d, &p, &doc! {"u": "b", "ts": 7}), 0);
        // The entries in the interval are in descending ts order.
        let mut keys: Vec<Vec<u8>> = [6, 9, 7]
            .iter()
            .map(|t| d.entries(&doc! {"u": "a", "ts": *t}).unwrap().remove(0))
            .collect();
        keys.sort();
        assert_eq!(keys[0], d.entries(&doc! {"u": "a", "ts": 9}).unwrap()[0]);
    }

    #[test]
    fn multikey_fields_keep_one_bound() {
        let mut d = idx(1, doc! {"key": {"a": 1}});
        let q = doc! {"a": {"$gt": 1, "$lt": 5}};
        let p = choose(std::slice::from_ref(&d), &q, Some(&doc! {"a": 1})).unwrap();
        assert!(p.provides_sort);
        assert_eq!(hits(&d, &p, &doc! {"a": 9}), 0);
        // {a: [0, 9]} matches: its entries must be read.
        d.set_multikey(0);
        let p = choose(std::slice::from_ref(&d), &q, Some(&doc! {"a": 1})).unwrap();
        assert!(
            !p.provides_sort,
            "the first entry in range is not the least element"
        );
        assert_eq!(p.bounds, doc! {"a": ["(1, inf.0]"]});
        assert!(hits(&d, &p, &doc! {"a": [0, 9]}) >= 1);
    }

    #[test]
    fn in_lists_are_points_merged_for_a_sort() {
        let d = idx(1, doc! {"key": {"a": 1, "ts": 1}});
        let q = doc! {"a": {"$in": [3, 1, 1.0, 2]}};
        let p = choose(std::slice::from_ref(&d), &q, Some(&doc! {"ts": 1})).unwrap();
        assert_eq!((p.eq_fields, p.provides_sort, p.merge), (1, true, true));
        assert_eq!(p.intervals.len(), 3, "1 and 1.0 are one point");
        assert!(p.intervals.windows(2).all(|w| w[0].start < w[1].start));
        assert_eq!(
            p.bounds,
            doc! {"a": ["[1, 1]", "[2, 2]", "[3, 3]"], "ts": ["[MinKey, MaxKey]"]}
        );
        assert_eq!(hits(&d, &p, &doc! {"a": 2, "ts": 0}), 1);
        assert_eq!(hits(&d, &p, &doc! {"a": 4, "ts": 0}), 0);
        // $in then a range on the next field.
        let q = doc! {"a": {"$in": [1, 2]}, "ts": {"$lt": 10}};
        let p = choose(std::slice::from_ref(&d), &q, None).unwrap();
        assert_eq!((p.eq_fields, p.range, p.intervals.len()), (1, true, 2));
        assert_eq!(hits(&d, &p, &doc! {"a": 2, "ts": 9}), 1);
        assert_eq!(hits(&d, &p, &doc! {"a": 2, "ts": 10}), 0);
        // An $in with an array is left to the scan; one of null keeps null.
        assert!(choose(std::slice::from_ref(&d), &doc! {"a": {"$in": [[1]]}}, None).is_none());
        let p = choose(
            std::slice::from_ref(&d),
            &doc! {"a": {"$in": [null, 1]}},
            None,
        )
        .unwrap();
        assert_eq!(hits(&d, &p, &doc! {"ts": 1}), 1);
        // Too many runs to merge: the caller sorts.
        let many: Vec<i32> = (0..(MERGE_RUNS_MAX as i32 + 1)).collect();
        let p = choose(
            std::slice::from_ref(&d),
            &doc! {"a": {"$in": many}},
            Some(&doc! {"ts": 1}),
        )
        .unwrap();
        assert!(!p.provides_sort && !p.merge);
        // An equality beats a range.
        let e = idx(2, doc! {"key": {"b": 1}});
        let r = idx(3, doc! {"key": {"c": 1}});
        let p = choose(&[r, e], &doc! {"c": {"$gt": 1}, "b": 2}, None).unwrap();
        assert_eq!(p.index_id, 2);
    }

    #[test]
    fn anchored_regexes_are_string_ranges() {
        assert_eq!(regex_prefix("^abc", "").as_deref(), Some("abc"));
        assert_eq!(regex_prefix("^abc.*", "").as_deref(), Some("abc"));
        assert_eq!(regex_prefix("^ab?", "").as_deref(), Some("a"));
        assert_eq!(regex_prefix("^ab+", "").as_deref(), Some("ab"));
        assert_eq!(regex_prefix("^a\\.b", "").as_deref(), Some("a.b"));
        assert_eq!(regex_prefix("^a\\db", "").as_deref(), Some("a"));
        assert_eq!(regex_prefix("^", "").as_deref(), Some(""));
        assert_eq!(regex_prefix("abc", ""), None);
        assert_eq!(regex_prefix("^abc", "i"), None);
        assert_eq!(regex_prefix("^abc", "m"), None);
        assert_eq!(regex_prefix("^a|b", ""), None);
        let d = idx(1, doc! {"key": {"s": 1}});
        let re = |p: &str, o: &str| {
            Bson::RegularExpression(bson::Regex {
                pattern: p.try_into().unwrap(),
                options: o.try_into().unwrap(),
            })
        };
        for q in [
            doc! {"s": re("^ab", "")},
            doc! {"s": {"$regex": "^ab"}},
            doc! {"s": {"$regex": "^ab", "$options": ""}},
            doc! {"s": {"$in": [re("^ab", "")]}},
        ] {
            let p = choose(std::slice::from_ref(&d), &q, None).unwrap();
            assert!(p.range, "{q}");
            assert_eq!(
                p.bounds,
                doc! {"s": ["[\"ab\", \"ac\")", "[/^ab/, /^ab/]"]},
                "{q}"
            );
            for (v, inside) in [
                (Bson::String("ab".into()), true),
                (Bson::String("abz".into()), true),
                (Bson::String("ab\u{0}".into()), true),
                (Bson::Symbol("abc".into()), true),
                (Bson::String("a".into()), false),
                (Bson::String("ac".into()), false),
                (Bson::String("b".into()), false),
                (re("^ab", ""), true),
                (re("^ab", "i"), false),
            ] {
                assert_eq!(
                    hits(&d, &p, &doc! {"s": v.clone()}) == 1,
                    inside,
                    "{q} {v:?}"
                );
            }
        }
        assert!(choose(std::slice::from_ref(&d), &doc! {"s": re("^ab", "i")}, None).is_none());
        assert!(choose(std::slice::from_ref(&d), &doc! {"s": re("ab", "")}, None).is_none());
        // A descending field holds them in reverse.
        let d = idx(1, doc! {"key": {"s": -1}});
        let p = choose(std::slice::from_ref(&d), &doc! {"s": re("^ab", "")}, None).unwrap();
        assert_eq!(hits(&d, &p, &doc! {"s": "abc"}), 1);
        assert_eq!(hits(&d, &p, &doc! {"s": "ac"}), 0);
        assert_eq!(hits(&d, &p, &doc! {"s": "a"}), 0);
    }

    #[test]
    fn sorts_against_the_index_read_it_backward() {
        let d = idx(1, doc! {"key": {"a": 1, "ts": 1}});
        let one = std::slice::from_ref(&d);
        // find({a: 5}).sort({ts: -1}): the interval from its end.
        let p = choose(one, &doc! {"a": 5}, Some(&doc! {"ts": -1})).unwrap();
        assert_eq!(
            (p.eq_fields, p.provides_sort, p.backward, p.merge),
            (1, true, true, false)
        );
        assert_eq!(p.bounds, doc! {"a": ["[5, 5]"], "ts": ["[MaxKey, MinKey]"]});
        // Every field against the index: the whole index backward.
        let p = choose(one, &doc! {}, Some(&doc! {"a": -1, "ts": -1})).unwrap();
        assert!(p.provides_sort && p.backward && !p.bounded());
        assert_eq!(
            p.bounds,
            doc! {"a": ["[MaxKey, MinKey]"], "ts": ["[MaxKey, MinKey]"]}
        );
        // Mixed: neither direction gives it.
        assert!(choose(one, &doc! {}, Some(&doc! {"a": 1, "ts": -1})).is_none());
        let p = choose(one, &doc! {"a": 5}, Some(&doc! {"a": 1, "ts": -1})).unwrap();
        assert!(p.provides_sort && p.backward, "a is pinned: only ts orders");
        // A range read backward shows its bounds from the top.
        let q = doc! {"a": 5, "ts": {"$gt": 3, "$lte": 9}};
        let p = choose(one, &q, Some(&doc! {"ts": -1})).unwrap();
        assert!(p.backward);
        assert_eq!(p.bounds, doc! {"a": ["[5, 5]"], "ts": ["[9, 3)"]});
        // $in on the sort's first field: the intervals in order, no merge;
        // on the fields after it, the runs merged backward.
        let q = doc! {"a": {"$in": [1, 2]}};
        let p = choose(one, &q, Some(&doc! {"a": -1})).unwrap();
        assert!(p.provides_sort && p.backward && !p.merge);
        assert_eq!(
            p.bounds,
            doc! {"a": ["[2, 2]", "[1, 1]"], "ts": ["[MaxKey, MinKey]"]}
        );
        let p = choose(one, &q, Some(&doc! {"ts": -1})).unwrap();
        assert!(p.provides_sort && p.backward && p.merge);
        // Multikey fields: a pinned one in the sort, or several points on
        // one, give no order.
        let mut mk = d.clone();
        mk.set_multikey(0);
        let one = std::slice::from_ref(&mk);
        assert!(
            !choose(one, &doc! {"a": 5}, Some(&doc! {"a": 1, "ts": 1}))
                .unwrap()
                .provides_sort
        );
        assert!(
            !choose(one, &q, Some(&doc! {"a": -1}))
                .unwrap()
                .provides_sort
        );
        assert!(
            choose(one, &doc! {"a": 5}, Some(&doc! {"ts": -1}))
                .unwrap()
                .provides_sort
        );
        // Nor unbounded: an empty array is null's entry but sorts below it.
        assert!(choose(one, &doc! {}, Some(&doc! {"a": -1})).is_none());
    }

    #[test]
    fn the_id_index_serves_sorts_on_id() {
        let a = idx(1, doc! {"key": {"a": 1}});
        let all = std::slice::from_ref(&a);
        let p = choose(all, &doc! {}, Some(&doc! {"_id": -1})).unwrap();
        assert_eq!((p.index_id, p.name.as_str()), (ID_INDEX, ID_INDEX_NAME));
        assert!(p.on_id() && p.provides_sort && p.backward && !p.bounded());
        assert_eq!(p.bounds, doc! {"_id": ["[MaxKey, MinKey]"]});
        let p = choose(all, &doc! {"_id": {"$gt": 5}}, Some(&doc! {"_id": 1})).unwrap();
        assert!(p.on_id() && p.bounded() && !p.backward);
        assert_eq!(p.bounds, doc! {"_id": ["(5, inf.0]"]});
        // A bound alone is left to the (streaming) scan.
        assert!(choose(all, &doc! {"_id": {"$gt": 5}}, None).is_none());
        // A bounded secondary index beats it.
        let p = choose(all, &doc! {"a": 1}, Some(&doc! {"_id": -1})).unwrap();
        assert_eq!((p.index_id, p.provides_sort), (1, false));
    }

    #[test]
    fn an_or_of_indexed_branches_is_a_union() {
        let a = idx(1, doc! {"key": {"a": 1}});
        let bg = idx(2, doc! {"key": {"b": 1, "g": 1}});
        let x = idx(3, doc! {"key": {"x": 1}});
        let all = [a, bg, x];
        let q = doc! {"$or": [{"a": 1}, {"b": {"$gt": 2}}, {"_id": 7}]};
        let Some(QueryPlan::Or(branches)) = plan(&all, &q, Some(&doc! {"a": 1})) else {
            panic!("no union for {q}");
        };
        let used: Vec<u64> = branches.iter().map(|b| b.index_id).collect();
        assert_eq!(used, vec![1, 2, ID_INDEX]);
        assert!(branches.iter().all(IndexPlan::bounded));
        // The conditions beside the $or bound every branch too.
        let q = doc! {"g": 4, "$or": [{"a": 1}, {"b": 2}]};
        let Some(QueryPlan::Or(branches)) = plan(&all, &q, None) else {
            panic!("no union for {q}");
        };
        assert_eq!(branches[1].eq_fields, 2);
        // An index bounded beside the $or wins.
        let q = doc! {"x": 1, "$or": [{"a": 1}, {"b": 2}]};
        assert!(matches!(plan(&all, &q, None), Some(QueryPlan::Index(p)) if p.index_id == 3));
        // A branch without an index: no union, the sort's index or a scan.
        let q = doc! {"$or": [{"a": 1}, {"c": 2}]};
        assert!(plan(&all, &q, None).is_none());
        assert!(matches!(
            plan(&all, &q, Some(&doc! {"a": 1})),
            Some(QueryPlan::Index(p)) if p.provides_sort && !p.bounded()
        ));
        for q in [doc! {"$or": []}, doc! {"$or": [{}]}, doc! {"$or": 1}] {
            assert!(plan(&all, &q, None).is_none(), "{q}");
        }
    }

    // -- planned reads against a scan of every document ----------------------

    /// A small deterministic generator (xorshift), seeded by proptest.
    struct Gen(u64);

    impl Gen {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }

        fn value(&mut self) -> Bson {
            match self.below(9) {
                0 => Bson::Null,
                1 => Bson::Double(self.below(5) as f64 - 1.5),
                2 => Bson::String(["x", "y", "xy", ""][self.below(4)].into()),
                3 => Bson::Int64(self.below(5) as i64),
                4 => Bson::Boolean(self.below(2) == 0),
                _ => Bson::Int32(self.below(6) as i32 - 2),
            }
        }

        fn field(&mut self) -> &'static str {
            ["a", "b", "c"][self.below(3)]
        }

        fn doc(&mut self, id: i32, arrays: bool) -> Document {
            let mut d = doc! {"_id": id};
            // One array at most: two in one compound key are refused.
            let mut array = arrays;
            for f in ["a", "b", "c"] {
                match self.below(8) {
                    0 => {}
                    1 if array => {
                        array = false;
                        let items: Vec<Bson> = (0..self.below(3)).map(|_| self.value()).collect();
                        d.insert(f, items);
                    }
                    _ => {
                        d.insert(f, self.value());
                    }
                }
            }
            d
        }

        fn condition(&mut self) -> Document {
            let f = self.field();
            match self.below(7) {
                0 => doc! {f: self.value()},
                1 => doc! {f: {"$in": [self.value(), self.value()]}},
                2 => doc! {f: {"$gt": self.value()}},
                3 => doc! {f: {"$gte": self.value(), "$lt": self.value()}},
                4 => doc! {f: {"$lte": self.value()}},
                5 => doc! {"_id": {"$gte": self.below(40) as i32}},
                _ => doc! {f: {"$ne": self.value()}},
            }
        }

        fn filter(&mut self) -> Document {
            let mut q = Document::new();
            for _ in 0..self.below(3) {
                q.extend(self.condition());
            }
            if self.below(2) == 0 {
                let branches: Vec<Bson> = (0..1 + self.below(3))
                    .map(|_| Bson::Document(self.condition()))
                    .collect();
                q.insert("$or", branches);
            }
            q
        }

        fn sort(&mut self) -> Option<Document> {
            let dir = |g: &mut Gen| if g.below(2) == 0 { 1 } else { -1 };
            match self.below(4) {
                0 => None,
                1 => Some(doc! {"_id": dir(self)}),
                2 => Some(doc! {self.field(): dir(self)}),
                _ => {
                    let (f, g) = (self.field(), self.field());
                    let mut s = doc! {f: dir(self)};
                    s.insert(g, dir(self));
                    Some(s)
                }
            }
        }
    }

    /// An index entry of a test: key part, `_id` encoding, document.
    type Entry<'a> = (Vec<u8>, Vec<u8>, &'a Document);

    /// The entries of `def` in key order.
    fn entries_of<'a>(def: &IndexDef, docs: &'a [Document]) -> Vec<Entry<'a>> {
        let mut out = Vec::new();
        for d in docs {
            let id = encode(d.get("_id").unwrap());
            let parts = match def.id {
                ID_INDEX => vec![id.clone()],
                _ => def.entries(d).unwrap(),
            };
            for part in parts {
                out.push((part, id.clone(), d));
            }
        }
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }

    /// What the table service's scan of `plan` over `docs` returns (the
    /// same reading: intervals in order or merged, forward or backward,
    /// each document once, the filter applied).
    fn scan(
        defs: &[IndexDef],
        plan: &IndexPlan,
        docs: &[Document],
        seen: &mut std::collections::HashSet<Vec<u8>>,
        filter: &crate::matcher::Filter,
    ) -> Vec<Document> {
        let id = id_index();
        let def = defs
            .iter()
            .chain([&id])
            .find(|d| d.id == plan.index_id)
            .unwrap();
        let entries = entries_of(def, docs);
        let mut runs: Vec<Vec<&Entry>> = plan
            .intervals
            .iter()
            .map(|i| {
                let mut r: Vec<_> = entries.iter().filter(|e| i.contains(&e.0)).collect();
                if plan.backward {
                    r.reverse();
                }
                r
            })
            .collect();
        let mut order: Vec<&Entry> = Vec::new();
        if plan.merge {
            let key = |run: usize, e: &Entry| {
                (e.0[plan.intervals[run].point_len..].to_vec(), e.1.clone())
            };
            let mut at = vec![0usize; runs.len()];
            loop {
                let heads =
                    (0..runs.len()).filter_map(|r| runs[r].get(at[r]).map(|e| (r, key(r, e))));
                let head = match plan.backward {
                    false => heads.min_by(|a, b| a.1.cmp(&b.1)),
                    true => heads.max_by(|a, b| a.1.cmp(&b.1)),
                };
                let Some((r, _)) = head else { break };
                order.push(runs[r][at[r]]);
                at[r] += 1;
            }
        } else {
            if plan.backward {
                runs.reverse();
            }
            order = runs.into_iter().flatten().collect();
        }
        order
            .into_iter()
            .filter(|e| seen.insert(e.1.clone()))
            .filter(|e| filter.matches(e.2))
            .map(|e| e.2.clone())
            .collect()
    }

    struct NoLookups;

    impl crate::aggregate::StageContext for NoLookups {
        fn lookup(&mut self, _: &str) -> Result<Vec<Document>, crate::DocError> {
            Ok(Vec::new())
        }
        fn now(&self) -> bson::DateTime {
            bson::DateTime::from_millis(0)
        }
    }

    fn sorted(docs: Vec<Document>, sort: &Document) -> Vec<Document> {
        crate::aggregate::Pipeline::parse(&[doc! {"$sort": sort.clone()}])
            .unwrap()
            .run(docs, &mut NoLookups)
            .unwrap()
    }

    /// How many plans of each kind a run checked: unions, backward scans,
    /// sorts given by an index, merges.
    #[derive(Default)]
    struct Tally {
        unions: usize,
        backward: usize,
        sorted: usize,
        merged: usize,
    }

    fn planned_equals_scanned(seed: u64, tally: &mut Tally) {
        let mut g = Gen(seed | 1);
        let arrays = g.below(2) == 0;
        let docs: Vec<Document> = (0..40).map(|i| g.doc(i, arrays)).collect();
        let dir = |g: &mut Gen| if g.below(2) == 0 { 1 } else { -1 };
        let mut defs = Vec::new();
        for (n, spec) in [
            doc! {"key": {"a": dir(&mut g)}},
            doc! {"key": {"a": dir(&mut g), "b": dir(&mut g)}},
            doc! {"key": {"b": dir(&mut g), "c": dir(&mut g)}},
            doc! {"key": {"c": dir(&mut g)}, "sparse": true},
        ]
        .into_iter()
        .enumerate()
        {
            if g.below(3) == 0 {
                continue;
            }
            let mut def = idx(n as u64 + 1, spec);
            for d in &docs {
                if let (_, Some(field)) = def.entries_and_array(d).unwrap() {
                    def.set_multikey(field);
                }
            }
            defs.push(def);
        }
        for _ in 0..20 {
            let q = g.filter();
            let sort = g.sort();
            let Ok(filter) = crate::matcher::Filter::parse(&q) else {
                continue;
            };
            let want: Vec<Document> = docs.iter().filter(|d| filter.matches(d)).cloned().collect();
            let Some(p) = plan(&defs, &q, sort.as_ref()) else {
                continue;
            };
            match &p {
                QueryPlan::Or(_) => tally.unions += 1,
                QueryPlan::Index(one) => {
                    tally.backward += usize::from(one.backward);
                    tally.sorted += usize::from(one.provides_sort && sort.is_some());
                    tally.merged += usize::from(one.merge);
                }
            }
            let mut seen = Default::default();
            let got = match &p {
                QueryPlan::Index(one) => scan(&defs, one, &docs, &mut seen, &filter),
                QueryPlan::Or(branches) => branches
                    .iter()
                    .flat_map(|b| scan(&defs, b, &docs, &mut seen, &filter))
                    .collect(),
            };
            let ids = |v: &[Document]| {
                let mut ids: Vec<Bson> = v.iter().map(|d| d.get("_id").unwrap().clone()).collect();
                ids.sort_by(order::compare);
                ids
            };
            assert_eq!(
                ids(&got),
                ids(&want),
                "seed {seed}: {q} sort {sort:?} by {p:?}"
            );
            if let (Some(s), true) = (&sort, p.provides_sort()) {
                // In the sort's order (a stable sort keeps it as it is).
                assert_eq!(
                    sorted(got.clone(), s),
                    got,
                    "seed {seed}: {q} sort {s} by {p:?}"
                );
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
        #[test]
        fn planned_reads_find_what_a_scan_finds_in_the_sorts_order(seed in proptest::prelude::any::<u64>()) {
            planned_equals_scanned(seed, &mut Tally::default());
        }
    }

    #[test]
    fn the_random_queries_meet_every_kind_of_plan() {
        let mut tally = Tally::default();
        for seed in 0..100 {
            planned_equals_scanned(seed, &mut tally);
        }
        let Tally {
            unions,
            backward,
            sorted,
            merged,
        } = tally;
        assert!(
            unions > 20 && backward > 20 && sorted > 40 && merged > 2,
            "unions {unions}, backward {backward}, sorted {sorted}, merged {merged}"
        );
    }

    #[test]
    fn ttl_interval_holds_the_dates_before_the_cut() {
        let cut = bson::DateTime::from_millis(1_000);
        for dir in [1, -1] {
            let d = idx(1, doc! {"key": {"at": dir}});
            let i = dates_before(&d, cut);
            let has = |v: Bson| {
                d.entries(&doc! {"at": v})
                    .unwrap()
                    .iter()
                    .any(|k| i.contains(k))
            };
            assert!(has(Bson::DateTime(bson::DateTime::from_millis(999))));
            assert!(has(Bson::DateTime(bson::DateTime::from_millis(i64::MIN))));
            assert!(!has(Bson::DateTime(cut)));
            assert!(!has(Bson::Int32(5)));
            assert!(!has(Bson::Timestamp(bson::Timestamp {
                time: 0,
                increment: 0
            })));
            assert!(!has(Bson::Null));
        }
    }

    #[test]
    fn id_ranges_read_the_documents_in_order() {
        let within = |p: &IndexPlan, v: Bson| {
            let mut k = Vec::new();
            keys::encode_value(&v, &mut k);
            p.intervals.iter().any(|i| i.contains(&k))
        };
        // YCSB E: a range on `_id` sorted by it is the `_id` index's.
        let Some(QueryPlan::Index(p)) = plan(
            &[],
            &doc! {"_id": {"$gte": "user5"}},
            Some(&doc! {"_id": 1}),
        ) else {
            panic!("no _id index plan");
        };
        assert!(p.index_id == ID_INDEX && p.range && p.provides_sort);
        assert!(within(&p, Bson::String("user5".into())));
        assert!(within(&p, Bson::String("user9".into())));
        assert!(!within(&p, Bson::String("user4".into())));
        assert!(!within(&p, Bson::Int32(7)), "type bracketing");
        // A range without a sort, streamed; numbers of every type are one
        // class.
        let p = id_range(&doc! {"_id": {"$gt": 1, "$lt": 5}}).unwrap();
        assert!(p.range);
        assert!(within(&p, Bson::Double(1.5)) && within(&p, Bson::Int64(4)));
        assert!(!within(&p, Bson::Int32(1)) && !within(&p, Bson::Int32(5)));
        // Nothing to stream: points (read by key), no condition on `_id`.
        assert!(id_range(&doc! {"_id": 5}).is_none());
        assert!(id_range(&doc! {"x": 1}).is_none());
        assert!(id_range(&doc! {}).is_none());
    }
}
