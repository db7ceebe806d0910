//! Query filters: MongoDB's `find` predicate language (`{a: 5}`, `{a: {$gt:
//! 1}}`, `$and`/`$or`/`$nor`, `$elemMatch`, `$regex`, ...), parsed once into
//! a tree and matched against documents.
//!
//! The semantics are MongoDB's, which differ from "compare the field" in
//! three ways that everything below is built around:
//! - **Paths fan out.** A dotted path yields a *set* of values: at an array it
//!   continues into every element (a numeric part may also pick one element),
//!   and at its end an array yields each of its elements and then itself. A
//!   condition on the path holds when any yielded value satisfies it. A value
//!   that is not there yields "missing", which `null` matches.
//! - **Negations apply to the whole set.** `$ne`, `$nin`, `$not` and `$exists:
//!   false` hold when the positive condition holds for no value on the path, so
//!   `{a: {$ne: 1}}` does not match `{a: [1, 2]}`.
//! - **Type bracketing.** Comparisons hold only between values of one type
//!   class (numbers of all four types are one class); `$gt: MinKey` and
//!   `$lt: MaxKey` are the exceptions.
//!
//! Invariant: pure. No clock, no I/O, no randomness; regexes run on the
//! `regex` crate (linear time, size-limited), never a backtracking engine.

use std::cmp::Ordering;

use bson::{Bson, Document};

use crate::expr::{self, Expr, Variables};
use crate::order::{self, Num};
use crate::DocError;

/// Filters nest at most this deep (`$and` in `$or` in `$elemMatch` ...);
/// MongoDB's limit is 100 as well. Bounds the parser's recursion.
pub const FILTER_DEPTH_MAX: usize = 100;

/// The longest `$regex` pattern accepted, in bytes (MongoDB refuses patterns
/// over 32 764 bytes).
pub const REGEX_PATTERN_MAX_BYTES: usize = 32 * 1024;

/// The most memory one compiled regex may take (the `regex` crate's program
/// and lazy-DFA cache limits); bigger patterns (`(a{100}){100}` and the like)
/// are refused with BadValue instead of being built.
pub const REGEX_COMPILED_MAX_BYTES: usize = 2 * 1024 * 1024;

/// A parsed query filter.
#[derive(Debug, Clone)]
pub struct Filter {
    root: Node,
}

/// What a match found, for the update operators' positional `$`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MatchDetails {
    /// The index of the array element that matched the filter's condition
    /// on an array field, when one did.
    pub array_index: Option<usize>,
}

impl Filter {
    /// Parses a filter document (`{a: 1, b: {$gt: 2}}`).
    pub fn parse(filter: &Document) -> Result<Filter, DocError> {
        Filter::parse_with(filter, &Variables::new())
    }

    /// Parses a filter whose `$expr` may use `vars` (a command's `let`,
    /// `$$NOW`).
    pub fn parse_with(filter: &Document, vars: &Variables) -> Result<Filter, DocError> {
        Ok(Filter {
            root: parse_query(filter, 0, Some(vars))?,
        })
    }

    /// Whether `doc` matches.
    pub fn matches(&self, doc: &Document) -> bool {
        self.match_details(doc).is_some()
    }

    /// `Some` when `doc` matches, with what the match found.
    ///
    /// `array_index` follows MongoDB: it is the index, in the first array a
    /// path went through, of the element that satisfied a condition (for
    /// `$elemMatch` on an array field, the matching element). Conditions under
    /// `$or`, `$nor` and negations do not report one, as in MongoDB. When
    /// several conditions of an `$and` report one, the first (in filter order)
    /// wins; MongoDB reorders conditions and takes the last, so a filter that
    /// depends on this is ambiguous there too.
    pub fn match_details(&self, doc: &Document) -> Option<MatchDetails> {
        self.root.eval(doc)
    }

    /// The equality conditions the whole filter requires, as (dotted path,
    /// value) in filter order: `{a: 1, b: {$eq: 2, $gt: 0}, $and: [{"c.d":
    /// 3}]}` gives `a = 1`, `b = 2`, `c.d = 3`. What an upsert seeds its new
    /// document with; conditions under `$or`, `$nor` or negations, regexes
    /// and `$in` give nothing.
    pub fn equalities(&self) -> Vec<(String, Bson)> {
        let mut found = Vec::new();
        self.root.collect_equalities(&mut found);
        found
    }

    /// Whether the filter has no condition (`{}`): every document matches.
    pub fn matches_all(&self) -> bool {
        match &self.root {
            Node::And(children) => children.is_empty(),
            Node::Const(c) => *c,
            _ => false,
        }
    }

    /// The `_id`s a matching document may have, when the filter requires
    /// `_id` to equal a value or to be `$in` a list (without regexes):
    /// those documents can be read by key instead of by a scan. `None`:
    /// any `_id` may match.
    pub fn id_candidates(&self) -> Option<Vec<Bson>> {
        let children = match &self.root {
            Node::And(children) => children.as_slice(),
            one => std::slice::from_ref(one),
        };
        children.iter().find_map(|c| match c {
            Node::Field { dotted, cond, .. } if dotted == "_id" => cond.id_candidates(),
            _ => None,
        })
    }
}

/// A node of the filter tree: logical operators over conditions on paths.
#[derive(Debug, Clone)]
enum Node {
    And(Vec<Node>),
    Or(Vec<Node>),
    Nor(Vec<Node>),
    Field {
        /// The path as written, `a.b.0`.
        dotted: String,
        path: Vec<Part>,
        cond: Cond,
    },
    /// `$expr`, with the variables it is evaluated with.
    Expr(Box<(Expr, Variables)>),
    Const(bool),
}

/// One component of a dotted path.
#[derive(Debug, Clone)]
struct Part {
    name: String,
    /// The array index this part names, when it is a canonical decimal
    /// number ("0", "12", not "01"): an array's fields are named that way.
    index: Option<usize>,
}

/// A condition on the set of values a path yields.
#[derive(Debug, Clone)]
enum Cond {
    /// Some value on the path satisfies the leaf.
    Any(Leaf),
    /// The inner condition does not hold (`$ne`, `$nin`, `$not`, `$exists:
    /// false`).
    Not(Box<Cond>),
    /// Every condition holds, each on its own (`{$gt: 1, $lt: 5}` matches
    /// `[0, 10]`: that is what `$elemMatch` is for).
    All(Vec<Cond>),
}

/// A test of one value (`None`: missing).
#[derive(Debug, Clone)]
enum Leaf {
    Cmp(CmpOp, Bson),
    In(InSet),
    Regex(Box<Re>),
    Exists,
    Type(Vec<i32>),
    Size(usize),
    Mod {
        divisor: i64,
        remainder: i64,
    },
    /// `$elemMatch: {$gte: 80, $lt: 85}`: one element satisfies all.
    ElemMatchValue(Box<Cond>),
    /// `$elemMatch: {b: 1, c: {$gt: 2}}`: one element (a document) matches.
    ElemMatchDoc(Box<Node>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CmpOp {
    Eq,
    Lt,
    Lte,
    Gt,
    Gte,
}

/// The values of an `$in`: sorted by `order::compare` for a binary search.
#[derive(Debug, Clone, Default)]
struct InSet {
    /// `null` is in the list: matches null and missing.
    null: bool,
    sorted: Vec<Bson>,
    regexes: Vec<Re>,
}

/// A compiled `$regex`, with the pattern and options as given: a stored
/// regular expression with exactly these matches too, as in MongoDB.
#[derive(Debug, Clone)]
struct Re {
    pattern: String,
    options: String,
    compiled: regex::Regex,
}

// ---------------------------------------------------------------------------
// Matching

impl Node {
    fn collect_equalities(&self, found: &mut Vec<(String, Bson)>) {
        match self {
            Node::And(children) => {
                for child in children {
                    child.collect_equalities(found);
                }
            }
            Node::Field { dotted, cond, .. } => cond.collect_equalities(dotted, found),
            Node::Or(_) | Node::Nor(_) | Node::Expr(_) | Node::Const(_) => {}
        }
    }

    fn eval(&self, doc: &Document) -> Option<MatchDetails> {
        match self {
            Node::And(children) => {
                let mut details = MatchDetails::default();
                for child in children {
                    let found = child.eval(doc)?;
                    details.array_index = details.array_index.or(found.array_index);
                }
                Some(details)
            }
            // MongoDB records no array index through $or and $nor.
            Node::Or(children) => children
                .iter()
                .any(|c| c.eval(doc).is_some())
                .then(MatchDetails::default),
            Node::Nor(children) => {
                (!children.iter().any(|c| c.eval(doc).is_some())).then(MatchDetails::default)
            }
            Node::Field { path, cond, .. } => cond.eval_path(doc, path),
            // An expression that fails to evaluate matches nothing.
            Node::Expr(e) => match e.0.eval_with(doc, &e.1) {
                Ok(v) if expr::truthy(&v) => Some(MatchDetails::default()),
                _ => None,
            },
            Node::Const(b) => b.then(MatchDetails::default),
        }
    }
}

impl Cond {
    /// The values an `_id` satisfying this condition can have, when they
    /// are a finite list.
    fn id_candidates(&self) -> Option<Vec<Bson>> {
        match self {
            Cond::Any(Leaf::Cmp(CmpOp::Eq, v)) => Some(vec![v.clone()]),
            Cond::Any(Leaf::In(set)) if set.regexes.is_empty() => {
                let mut values = set.sorted.clone();
                if set.null {
                    values.push(Bson::Null);
                }
                Some(values)
            }
            Cond::All(conds) => conds.iter().find_map(Cond::id_candidates),
            _ => None,
        }
    }

    fn collect_equalities(&self, dotted: &str, found: &mut Vec<(String, Bson)>) {
        match self {
            Cond::Any(Leaf::Cmp(CmpOp::Eq, v)) => found.push((dotted.to_owned(), v.clone())),
            Cond::All(conds) => {
                for c in conds {
                    c.collect_equalities(dotted, found);
                }
            }
            Cond::Any(_) | Cond::Not(_) => {}
        }
    }

    /// Whether the condition holds for the values at `path` in `doc`.
    fn eval_path(&self, doc: &Document, path: &[Part]) -> Option<MatchDetails> {
        match self {
            Cond::Any(leaf) => {
                let mut found = None;
                walk_document(
                    doc,
                    path,
                    None,
                    leaf.expands_arrays(),
                    &mut |v, outer| match leaf.test(v) {
                        Some(inner) => {
                            found = Some(MatchDetails {
                                array_index: outer.or(inner),
                            });
                            true
                        }
                        None => false,
                    },
                );
                found
            }
            Cond::Not(inner) => inner
                .eval_path(doc, path)
                .is_none()
                .then(MatchDetails::default),
            Cond::All(conds) => {
                let mut details = MatchDetails::default();
                for c in conds {
                    let found = c.eval_path(doc, path)?;
                    details.array_index = details.array_index.or(found.array_index);
                }
                Some(details)
            }
        }
    }

    /// Whether the condition holds for one value, as `$elemMatch`'s value
    /// form applies it to each element: no fanning out into nested arrays.
    fn eval_value(&self, v: &Bson) -> bool {
        match self {
            Cond::Any(leaf) => leaf.test(Some(v)).is_some(),
            Cond::Not(inner) => !inner.eval_value(v),
            Cond::All(conds) => conds.iter().all(|c| c.eval_value(v)),
        }
    }
}

impl Leaf {
    /// Whether an array at the end of the path also yields its elements.
    /// `$size` and `$elemMatch` are about the array itself.
    fn expands_arrays(&self) -> bool {
        !matches!(
            self,
            Leaf::Size(_) | Leaf::ElemMatchValue(_) | Leaf::ElemMatchDoc(_)
        )
    }

    /// `Some` when `v` satisfies the leaf, with the index of the array
    /// element that made it (for `$elemMatch`).
    fn test(&self, v: Option<&Bson>) -> Option<Option<usize>> {
        let hit = match self {
            Leaf::Cmp(op, rhs) => compare_matches(*op, v, rhs),
            Leaf::In(set) => set.contains(v),
            Leaf::Regex(re) => v.is_some_and(|v| re.matches(v)),
            Leaf::Exists => v.is_some(),
            Leaf::Type(codes) => v.is_some_and(|v| codes.contains(&type_code(v))),
            Leaf::Size(n) => matches!(v, Some(Bson::Array(a)) if a.len() == *n),
            Leaf::Mod { divisor, remainder } => v
                .and_then(mod_dividend)
                .is_some_and(|x| x.wrapping_rem(*divisor) == *remainder),
            Leaf::ElemMatchValue(cond) => {
                let Some(Bson::Array(items)) = v else {
                    return None;
                };
                return items.iter().position(|e| cond.eval_value(e)).map(Some);
            }
            Leaf::ElemMatchDoc(node) => {
                let Some(Bson::Array(items)) = v else {
                    return None;
                };
                return items
                    .iter()
                    .position(|e| match e {
                        Bson::Document(d) => node.eval(d).is_some(),
                        // An array is a document with fields "0", "1", ...
                        Bson::Array(inner) => node.eval(&array_as_document(inner)).is_some(),
                        _ => false,
                    })
                    .map(Some);
            }
        };
        hit.then_some(None)
    }
}

/// A comparison of a value on the path with the operand, with MongoDB's type
/// bracketing.
fn compare_matches(op: CmpOp, v: Option<&Bson>, rhs: &Bson) -> bool {
    // Across type classes (and for a missing value) nothing compares, except
    // that MinKey is below and MaxKey above everything, and missing is null.
    let bracket = |rhs: &Bson| match rhs {
        Bson::MinKey => matches!(op, CmpOp::Gt | CmpOp::Gte),
        Bson::MaxKey => matches!(op, CmpOp::Lt | CmpOp::Lte),
        _ => false,
    };
    let Some(v) = v else {
        return match rhs {
            Bson::Null => matches!(op, CmpOp::Eq | CmpOp::Lte | CmpOp::Gte),
            _ => bracket(rhs),
        };
    };
    if order::type_rank(v) != order::type_rank(rhs) {
        return bracket(rhs);
    }
    // `order` ranks undefined with null; queries on null no longer match it
    // (MongoDB 6.0 and later).
    if matches!(v, Bson::Undefined) != matches!(rhs, Bson::Undefined) {
        return false;
    }
    // NaN sorts below every number but compares as unordered: it matches
    // only $eq, $lte and $gte against NaN.
    let v_nan = is_nan(v);
    if v_nan || is_nan(rhs) {
        return v_nan && is_nan(rhs) && matches!(op, CmpOp::Eq | CmpOp::Lte | CmpOp::Gte);
    }
    let o = order::compare(v, rhs);
    match op {
        CmpOp::Eq => o == Ordering::Equal,
        CmpOp::Lt => o == Ordering::Less,
        CmpOp::Lte => o != Ordering::Greater,
        CmpOp::Gt => o == Ordering::Greater,
        CmpOp::Gte => o != Ordering::Less,
    }
}

fn is_nan(v: &Bson) -> bool {
    matches!(order::number(v), Some(Num::Float(f)) if f.is_nan())
}

impl InSet {
    fn contains(&self, v: Option<&Bson>) -> bool {
        match v {
            None | Some(Bson::Null) => self.null,
            Some(v) => {
                self.sorted
                    .binary_search_by(|x| order::compare(x, v))
                    .is_ok()
                    || self.regexes.iter().any(|re| re.matches(v))
            }
        }
    }
}

impl Re {
    fn matches(&self, v: &Bson) -> bool {
        match v {
            Bson::String(s) | Bson::Symbol(s) => self.compiled.is_match(s),
            Bson::RegularExpression(r) => {
                r.pattern.as_str() == self.pattern && r.options.as_str() == self.options
            }
            _ => false,
        }
    }
}

/// The integer `$mod` divides: numbers truncated toward zero (saturating at
/// the int64 range); NaN and infinities match no `$mod`.
fn mod_dividend(v: &Bson) -> Option<i64> {
    match order::number(v)? {
        Num::Int(i) => Some(i),
        Num::Float(f) if f.is_finite() => Some(f.trunc() as i64),
        Num::Float(_) => None,
    }
}

/// MongoDB's numeric type codes, as `$type` names them.
fn type_code(v: &Bson) -> i32 {
    match v {
        Bson::Double(_) => 1,
        Bson::String(_) => 2,
        Bson::Document(_) => 3,
        Bson::Array(_) => 4,
        Bson::Binary(_) => 5,
        Bson::Undefined => 6,
        Bson::ObjectId(_) => 7,
        Bson::Boolean(_) => 8,
        Bson::DateTime(_) => 9,
        Bson::Null => 10,
        Bson::RegularExpression(_) => 11,
        Bson::DbPointer(_) => 12,
        Bson::JavaScriptCode(_) => 13,
        Bson::Symbol(_) => 14,
        Bson::JavaScriptCodeWithScope(_) => 15,
        Bson::Int32(_) => 16,
        Bson::Timestamp(_) => 17,
        Bson::Int64(_) => 18,
        Bson::Decimal128(_) => 19,
        Bson::MinKey => -1,
        Bson::MaxKey => 127,
    }
}

fn array_as_document(items: &[Bson]) -> Document {
    items
        .iter()
        .enumerate()
        .map(|(i, v)| (i.to_string(), v.clone()))
        .collect()
}

/// Visits every value MongoDB finds at `path` below `doc` (`None` where the
/// path ends at nothing), with the index of the element of the first array
/// the path went through. Stops at the first visit that returns true, and
/// returns whether one did.
///
/// The recursion is bounded by the path's length.
fn walk_document(
    doc: &Document,
    path: &[Part],
    outer: Option<usize>,
    expand: bool,
    visit: &mut dyn FnMut(Option<&Bson>, Option<usize>) -> bool,
) -> bool {
    let Some((part, rest)) = path.split_first() else {
        debug_assert!(false, "paths have at least one part");
        return false;
    };
    match doc.get(&part.name) {
        None => visit(None, outer),
        Some(v) => walk_value(v, rest, outer, expand, visit),
    }
}

/// `walk_document` from a value found at some point of the path, with the
/// rest of the path still to go.
fn walk_value(
    v: &Bson,
    rest: &[Part],
    outer: Option<usize>,
    expand: bool,
    visit: &mut dyn FnMut(Option<&Bson>, Option<usize>) -> bool,
) -> bool {
    let Some((part, after)) = rest.split_first() else {
        // The end of the path: an array yields its elements, then itself.
        if let (true, Bson::Array(items)) = (expand, v) {
            for (i, item) in items.iter().enumerate() {
                if visit(Some(item), outer.or(Some(i))) {
                    return true;
                }
            }
        }
        return visit(Some(v), outer);
    };
    match v {
        Bson::Document(d) => walk_document(d, rest, outer, expand, visit),
        Bson::Array(items) => {
            // The path goes on into each element that is a document. Every
            // other element, and an empty array, is a place where the path
            // finds nothing: `{"a.b": null}` matches `{a: [1]}` and `{a: []}`
            // (MongoDB 9.0, SERVER-36681; earlier servers skipped them). A
            // numeric part instead picks its element, so there the other
            // elements say nothing.
            if items.is_empty() && part.index.is_none() {
                return visit(None, outer);
            }
            for (i, item) in items.iter().enumerate() {
                let at = outer.or(Some(i));
                let stop = match item {
                    Bson::Document(d) => walk_document(d, rest, at, expand, visit),
                    _ if part.index.is_none() => visit(None, at),
                    _ => false,
                };
                if stop {
                    return true;
                }
                if part.index == Some(i) && walk_position(item, after, outer, expand, visit) {
                    return true;
                }
            }
            false
        }
        _ => visit(None, outer),
    }
}

/// The path continued from an array element picked by position (`a.0.b`).
/// It is not an implicit traversal: a picked array at the end of the path is
/// not expanded, and a picked array in the middle is a document whose fields
/// are its indexes.
fn walk_position(
    item: &Bson,
    after: &[Part],
    outer: Option<usize>,
    expand: bool,
    visit: &mut dyn FnMut(Option<&Bson>, Option<usize>) -> bool,
) -> bool {
    let Some((next, _)) = after.split_first() else {
        return visit(Some(item), outer);
    };
    match item {
        Bson::Document(d) => walk_document(d, after, outer, expand, visit),
        Bson::Array(inner) => match next.index.and_then(|j| inner.get(j)) {
            Some(picked) => walk_value(picked, &after[1..], outer, expand, visit),
            None => visit(None, outer),
        },
        _ => visit(None, outer),
    }
}

// ---------------------------------------------------------------------------
// Parsing

fn bad(message: impl Into<String>) -> DocError {
    DocError::bad_value(message)
}

fn check_depth(depth: usize) -> Result<(), DocError> {
    if depth > FILTER_DEPTH_MAX {
        return Err(bad(format!(
            "exceeded depth limit of {FILTER_DEPTH_MAX} when parsing the filter"
        )));
    }
    Ok(())
}

/// Parses a query document. `top` is the variables of `$expr`, None inside
/// `$elemMatch`, where `$expr` has no document to evaluate against.
fn parse_query(doc: &Document, depth: usize, top: Option<&Variables>) -> Result<Node, DocError> {
    check_depth(depth)?;
    let mut nodes = Vec::with_capacity(doc.len());
    for (key, value) in doc {
        if !key.starts_with('$') {
            nodes.push(Node::Field {
                dotted: key.clone(),
                path: parse_path(key),
                cond: parse_field_value(value, depth + 1)?,
            });
            continue;
        }
        match key.as_str() {
            "$and" | "$or" | "$nor" => {
                let children = parse_query_list(key, value, depth + 1, top)?;
                nodes.push(match key.as_str() {
                    "$and" => Node::And(children),
                    "$or" => Node::Or(children),
                    _ => Node::Nor(children),
                });
            }
            "$comment" => {}
            "$expr" => {
                let Some(vars) = top else {
                    return Err(bad("$expr can only be applied to the top-level document"));
                };
                let names: Vec<&str> = vars.names().collect();
                let e = Expr::parse_with_vars(value, &names)?;
                nodes.push(Node::Expr(Box::new((e, vars.clone()))));
            }
            "$alwaysTrue" | "$alwaysFalse" => {
                if !matches!(order::number(value), Some(Num::Int(1))) {
                    return Err(bad(format!("{key} must be an integer value of 1")));
                }
                nodes.push(Node::Const(key == "$alwaysTrue"));
            }
            "$where" | "$text" | "$jsonSchema" | "$sampleRate" | "$atomic" | "$isolated" => {
                return Err(bad(format!("{key} is not supported")))
            }
            _ => return Err(bad(format!("unknown top level operator: {key}"))),
        }
    }
    Ok(match <[Node; 1]>::try_from(nodes) {
        Ok([only]) => only,
        Err(nodes) => Node::And(nodes),
    })
}

fn parse_query_list(
    op: &str,
    value: &Bson,
    depth: usize,
    top: Option<&Variables>,
) -> Result<Vec<Node>, DocError> {
    let Bson::Array(items) = value else {
        return Err(bad(format!("{op} must be an array")));
    };
    if items.is_empty() {
        return Err(bad("$and/$or/$nor must be a nonempty array"));
    }
    items
        .iter()
        .map(|item| match item {
            Bson::Document(d) => parse_query(d, depth, top),
            _ => Err(bad("$or/$and/$nor entries need to be full objects")),
        })
        .collect()
}

fn parse_path(dotted: &str) -> Vec<Part> {
    dotted
        .split('.')
        .map(|name| Part {
            name: name.to_owned(),
            index: array_index(name),
        })
        .collect()
}

fn array_index(name: &str) -> Option<usize> {
    let canonical = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_digit())
        && (name == "0" || !name.starts_with('0'));
    if canonical {
        name.parse().ok()
    } else {
        None
    }
}

/// Whether a document is a set of operators (`{$gt: 1}`) rather than a value
/// to compare with: MongoDB looks at the first field, and a DBRef
/// (`{$ref, $id}`) is a value.
fn is_operator_document(d: &Document) -> bool {
    d.keys()
        .next()
        .is_some_and(|k| k.starts_with('$') && !matches!(k.as_str(), "$ref" | "$id" | "$db"))
}

/// The value of a field in a query: an operator document, a regex, or a
/// value to equal.
fn parse_field_value(value: &Bson, depth: usize) -> Result<Cond, DocError> {
    match value {
        Bson::Document(d) if is_operator_document(d) => parse_operators(d, depth),
        Bson::RegularExpression(r) => Ok(Cond::Any(Leaf::Regex(Box::new(Re::new(
            r.pattern.as_str(),
            r.options.as_str(),
        )?)))),
        v => Ok(Cond::Any(Leaf::Cmp(CmpOp::Eq, comparand("$eq", v)?))),
    }
}

/// An operator document, `{$gt: 1, $lt: 5}`: each operator a condition.
fn parse_operators(d: &Document, depth: usize) -> Result<Cond, DocError> {
    check_depth(depth)?;
    let mut conds = Vec::with_capacity(d.len());
    for (op, arg) in d {
        let cond = match op.as_str() {
            "$eq" => Cond::Any(Leaf::Cmp(CmpOp::Eq, comparand(op, arg)?)),
            "$ne" => Cond::Not(Box::new(Cond::Any(Leaf::Cmp(
                CmpOp::Eq,
                ordered_comparand(op, arg)?,
            )))),
            "$lt" => Cond::Any(Leaf::Cmp(CmpOp::Lt, ordered_comparand(op, arg)?)),
            "$lte" => Cond::Any(Leaf::Cmp(CmpOp::Lte, ordered_comparand(op, arg)?)),
            "$gt" => Cond::Any(Leaf::Cmp(CmpOp::Gt, ordered_comparand(op, arg)?)),
            "$gte" => Cond::Any(Leaf::Cmp(CmpOp::Gte, ordered_comparand(op, arg)?)),
            "$in" => Cond::Any(Leaf::In(parse_in(op, arg)?)),
            "$nin" => Cond::Not(Box::new(Cond::Any(Leaf::In(parse_in(op, arg)?)))),
            "$exists" => {
                if expr::truthy(arg) {
                    Cond::Any(Leaf::Exists)
                } else {
                    Cond::Not(Box::new(Cond::Any(Leaf::Exists)))
                }
            }
            "$type" => Cond::Any(Leaf::Type(parse_type(arg)?)),
            "$size" => Cond::Any(Leaf::Size(parse_size(arg)?)),
            "$mod" => {
                let (divisor, remainder) = parse_mod(arg)?;
                Cond::Any(Leaf::Mod { divisor, remainder })
            }
            "$regex" => Cond::Any(Leaf::Regex(Box::new(parse_regex_operator(d)?))),
            "$options" => {
                if !d.contains_key("$regex") {
                    return Err(bad("$options needs a $regex"));
                }
                continue;
            }
            "$all" => parse_all(arg, depth + 1)?,
            "$elemMatch" => Cond::Any(parse_elem_match(arg, depth + 1)?),
            "$not" => Cond::Not(Box::new(parse_not(arg, depth + 1)?)),
            "$near" | "$nearSphere" | "$geoWithin" | "$geoIntersects" | "$within"
            | "$bitsAllSet" | "$bitsAllClear" | "$bitsAnySet" | "$bitsAnyClear" => {
                return Err(bad(format!("{op} is not supported")))
            }
            _ => return Err(bad(format!("unknown operator: {op}"))),
        };
        conds.push(cond);
    }
    Ok(match <[Cond; 1]>::try_from(conds) {
        Ok([only]) => only,
        Err(conds) => Cond::All(conds),
    })
}

/// The operand of `$eq` (and implicit equality): any value but undefined.
fn comparand(op: &str, v: &Bson) -> Result<Bson, DocError> {
    if matches!(v, Bson::Undefined) {
        return Err(bad(format!("cannot compare to undefined in {op}")));
    }
    Ok(v.clone())
}

/// The operand of an ordering comparison or `$ne`: not a regex either.
fn ordered_comparand(op: &str, v: &Bson) -> Result<Bson, DocError> {
    if matches!(v, Bson::RegularExpression(_)) {
        return Err(bad(format!("Can't have RegEx as arg to {op}")));
    }
    comparand(op, v)
}

fn parse_in(op: &str, arg: &Bson) -> Result<InSet, DocError> {
    let Bson::Array(items) = arg else {
        return Err(bad(format!("{op} needs an array")));
    };
    let mut set = InSet::default();
    for item in items {
        match item {
            Bson::Null => set.null = true,
            Bson::Undefined => return Err(bad(format!("{op} cannot contain undefined"))),
            Bson::RegularExpression(r) => set
                .regexes
                .push(Re::new(r.pattern.as_str(), r.options.as_str())?),
            Bson::Document(d) if is_operator_document(d) => {
                return Err(bad(format!("cannot nest $ under {op}")))
            }
            v => set.sorted.push(v.clone()),
        }
    }
    set.sorted.sort_by(order::compare);
    Ok(set)
}

fn parse_type(arg: &Bson) -> Result<Vec<i32>, DocError> {
    let mut codes = Vec::new();
    match arg {
        Bson::Array(items) => {
            if items.is_empty() {
                return Err(bad("$type must match at least one type"));
            }
            for item in items {
                push_type_code(item, &mut codes)?;
            }
        }
        v => push_type_code(v, &mut codes)?,
    }
    Ok(codes)
}

fn push_type_code(v: &Bson, codes: &mut Vec<i32>) -> Result<(), DocError> {
    const NUMBERS: [i32; 4] = [1, 16, 18, 19];
    let code = match v {
        Bson::String(alias) => match alias.as_str() {
            "number" => {
                codes.extend(NUMBERS);
                return Ok(());
            }
            "double" => 1,
            "string" => 2,
            "object" => 3,
            "array" => 4,
            "binData" => 5,
            "undefined" => 6,
            "objectId" => 7,
            "bool" => 8,
            "date" => 9,
            "null" => 10,
            "regex" => 11,
            "dbPointer" => 12,
            "javascript" => 13,
            "symbol" => 14,
            "javascriptWithScope" => 15,
            "int" => 16,
            "timestamp" => 17,
            "long" => 18,
            "decimal" => 19,
            "minKey" => -1,
            "maxKey" => 127,
            _ => return Err(bad(format!("unknown type name alias: {alias}"))),
        },
        v => {
            let code = integral(v).ok_or_else(|| {
                bad(format!(
                    "type must be represented as a number or a string, not {v}"
                ))
            })?;
            match code {
                -1 | 1..=19 | 127 => code as i32,
                _ => return Err(bad(format!("invalid numerical type code: {code}"))),
            }
        }
    };
    codes.push(code);
    Ok(())
}

/// 2^63, the first double above every int64.
const TWO_63: f64 = 9_223_372_036_854_775_808.0;

/// A number with an integral value, as an int64.
fn integral(v: &Bson) -> Option<i64> {
    match order::number(v)? {
        Num::Int(i) => Some(i),
        // The range check keeps the cast exact (2^63 itself is excluded).
        Num::Float(f) if f.fract() == 0.0 && f.abs() < TWO_63 => Some(f as i64),
        Num::Float(_) => None,
    }
}

fn parse_size(arg: &Bson) -> Result<usize, DocError> {
    if order::number(arg).is_none() {
        return Err(bad("$size needs a number"));
    }
    let n = integral(arg).ok_or_else(|| bad(format!("$size must be a whole number, not {arg}")))?;
    usize::try_from(n).map_err(|_| bad(format!("$size may not be negative: {n}")))
}

fn parse_mod(arg: &Bson) -> Result<(i64, i64), DocError> {
    let Bson::Array(items) = arg else {
        return Err(bad("malformed mod, needs to be an array"));
    };
    let (divisor, remainder) = match items.as_slice() {
        [d, r] => (d, r),
        [] | [_] => return Err(bad("malformed mod, not enough elements")),
        _ => return Err(bad("malformed mod, too many elements")),
    };
    let truncate = |v: &Bson, what: &str| -> Result<i64, DocError> {
        match order::number(v) {
            None => Err(bad(format!("malformed mod, {what} not a number"))),
            Some(Num::Int(i)) => Ok(i),
            Some(Num::Float(f)) => {
                let t = f.trunc();
                if !t.is_finite() || t.abs() >= TWO_63 {
                    return Err(bad(format!(
                        "malformed mod, {what} value is invalid: {f} is not an int64"
                    )));
                }
                Ok(t as i64)
            }
        }
    };
    let divisor = truncate(divisor, "divisor")?;
    let remainder = truncate(remainder, "remainder")?;
    if divisor == 0 {
        return Err(bad("divisor cannot be 0"));
    }
    Ok((divisor, remainder))
}

/// `$regex` with its `$options` from the same operator document.
fn parse_regex_operator(d: &Document) -> Result<Re, DocError> {
    let options = match d.get("$options") {
        None => None,
        Some(Bson::String(o)) => Some(o.as_str()),
        Some(_) => return Err(bad("$options has to be a string")),
    };
    match d.get("$regex") {
        Some(Bson::String(p)) => Re::new(p, options.unwrap_or("")),
        Some(Bson::RegularExpression(r)) => {
            let own = r.options.as_str();
            match options {
                Some(o) if !o.is_empty() && !own.is_empty() => {
                    Err(bad("options set in both $regex and $options"))
                }
                Some(o) if !o.is_empty() => Re::new(r.pattern.as_str(), o),
                _ => Re::new(r.pattern.as_str(), own),
            }
        }
        _ => Err(bad("$regex has to be a string")),
    }
}

fn parse_not(arg: &Bson, depth: usize) -> Result<Cond, DocError> {
    match arg {
        Bson::RegularExpression(r) => Ok(Cond::Any(Leaf::Regex(Box::new(Re::new(
            r.pattern.as_str(),
            r.options.as_str(),
        )?)))),
        Bson::Document(d) if d.is_empty() => Err(bad("$not cannot be empty")),
        Bson::Document(d) => parse_operators(d, depth),
        _ => Err(bad("$not needs a regex or a document")),
    }
}

fn parse_elem_match(arg: &Bson, depth: usize) -> Result<Leaf, DocError> {
    let Bson::Document(d) = arg else {
        return Err(bad("$elemMatch needs an Object"));
    };
    // Operators (`{$gt: 1}`) apply to each element; a query (`{b: 1}`, or one
    // starting with a logical operator) to each element that is a document.
    let value_form = is_operator_document(d)
        && !d.keys().next().is_some_and(|k| {
            matches!(
                k.as_str(),
                "$and" | "$or" | "$nor" | "$expr" | "$where" | "$comment" | "$text"
            )
        });
    if value_form {
        Ok(Leaf::ElemMatchValue(Box::new(parse_operators(d, depth)?)))
    } else {
        Ok(Leaf::ElemMatchDoc(Box::new(parse_query(d, depth, None)?)))
    }
}

/// `$all`: every listed value is on the path (equality or regex each), or
/// every listed `$elemMatch` holds. `$all: []` matches nothing.
fn parse_all(arg: &Bson, depth: usize) -> Result<Cond, DocError> {
    let Bson::Array(items) = arg else {
        return Err(bad("$all needs an array"));
    };
    if items.is_empty() {
        return Ok(Cond::Any(Leaf::In(InSet::default())));
    }
    let is_elem_match = |v: &Bson| matches!(v, Bson::Document(d) if d.keys().next().is_some_and(|k| k == "$elemMatch"));
    let elem_matches = is_elem_match(&items[0]);
    let mut conds = Vec::with_capacity(items.len());
    for item in items {
        if is_elem_match(item) != elem_matches {
            return Err(bad("$all/$elemMatch has to be consistent"));
        }
        let cond = match item {
            Bson::Document(d) if elem_matches => {
                if d.len() != 1 {
                    return Err(bad("$elemMatch inside $all takes no other operators"));
                }
                Cond::Any(parse_elem_match(
                    d.get("$elemMatch").unwrap_or(&Bson::Null),
                    depth,
                )?)
            }
            Bson::Document(d) if is_operator_document(d) => {
                return Err(bad("no $ expressions in $all"))
            }
            Bson::RegularExpression(r) => Cond::Any(Leaf::Regex(Box::new(Re::new(
                r.pattern.as_str(),
                r.options.as_str(),
            )?))),
            v => Cond::Any(Leaf::Cmp(CmpOp::Eq, comparand("$all", v)?)),
        };
        conds.push(cond);
    }
    Ok(Cond::All(conds))
}

// ---------------------------------------------------------------------------
// Regular expressions

impl Re {
    fn new(pattern: &str, options: &str) -> Result<Re, DocError> {
        Ok(Re {
            pattern: pattern.to_owned(),
            options: options.to_owned(),
            compiled: compile_regex(pattern, options)?,
        })
    }
}

/// Compiles a MongoDB regular expression (PCRE syntax) with its options
/// (`i`, `m`, `s`, `x`; `u` is accepted and changes nothing) for the `regex`
/// crate. Errors are BadValue.
///
/// The pattern is translated, not passed through, where the two syntaxes
/// mean different things: `\d`, `\w`, `\s` and `\b` are ASCII as in MongoDB's
/// PCRE; `$` also matches before a final newline; `[` inside a class is a
/// literal; `\Q...\E`, `\h`, `\v`, `\R`, `\e`, `\cX`, octal escapes and `(?#...)`
/// are rewritten; a `{` that is not a quantifier is a literal. What needs a
/// backtracking engine (backreferences, lookaround, atomic groups,
/// possessive quantifiers, recursion, conditionals, `\G`, `\K`, verbs) is
/// refused with a message saying so. Known differences left: `$` consumes
/// the final newline it matches before, which only shows when more pattern
/// follows it; an inline `(?x)` does not make the translation skip comments.
pub fn compile_regex(pattern: &str, options: &str) -> Result<regex::Regex, DocError> {
    if pattern.len() > REGEX_PATTERN_MAX_BYTES {
        return Err(bad(format!(
            "regular expression is too long ({} bytes, at most {REGEX_PATTERN_MAX_BYTES})",
            pattern.len()
        )));
    }
    let (mut caseless, mut multiline, mut dotall, mut extended) = (false, false, false, false);
    for flag in options.chars() {
        match flag {
            'i' => caseless = true,
            'm' => multiline = true,
            's' => dotall = true,
            'x' => extended = true,
            'u' => {}
            _ => return Err(bad(format!("invalid flag in regex options: {flag}"))),
        }
    }
    let translated = translate_pcre(pattern, extended)?;
    regex::RegexBuilder::new(&translated)
        .case_insensitive(caseless)
        .multi_line(multiline)
        .dot_matches_new_line(dotall)
        .size_limit(REGEX_COMPILED_MAX_BYTES)
        .dfa_size_limit(REGEX_COMPILED_MAX_BYTES)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(limit) => bad(format!(
                "regular expression /{pattern}/ is too large (over {limit} bytes compiled)"
            )),
            other => bad(format!("invalid regular expression /{pattern}/: {other}")),
        })
}

fn unsupported(what: &str) -> DocError {
    bad(format!(
        "regular expression: {what} is not supported (matching runs without backtracking)"
    ))
}

const ASCII_DIGIT: &str = "[0-9]";
const ASCII_WORD: &str = "[0-9A-Za-z_]";
// PCRE's \s: space, \t, \n, \v, \f, \r.
const ASCII_SPACE: &str = r"[\t\n\x0B\x0C\r\x20]";
const HORIZONTAL_SPACE: &str =
    r"[\t\x20\xA0\x{1680}\x{180E}\x{2000}-\x{200A}\x{202F}\x{205F}\x{3000}]";
const VERTICAL_SPACE: &str = r"[\n\x0B\x0C\r\x{85}\x{2028}\x{2029}]";

/// `[class]` to `[^class]`, for the negated escapes.
fn negated(class: &str) -> String {
    format!("[^{}", &class[1..])
}

/// Appends a literal character, escaped so that it means itself in any
/// position (inside or outside a class, whatever the flags).
fn push_literal(c: char, out: &mut String) {
    if c.is_alphanumeric() || c == '_' {
        out.push(c);
    } else {
        out.push_str(&format!("\\x{{{:X}}}", u32::from(c)));
    }
}

fn translate_pcre(pattern: &str, extended: bool) -> Result<String, DocError> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::with_capacity(pattern.len() + 16);
    // Capture groups opened so far: `\12` is a backreference after twelve
    // of them and an octal escape before.
    let mut groups = 0;
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        i += 1;
        match c {
            ' ' | '\t' | '\n' | '\r' | '\x0B' | '\x0C' if extended => {}
            '#' if extended => {
                while chars.get(i).is_some_and(|&c| c != '\n') {
                    i += 1;
                }
            }
            '\\' => i = translate_escape(&chars, i, groups, &mut out)?,
            '[' => i = translate_class(&chars, i, &mut out)?,
            '(' => {
                let captures = match chars.get(i) {
                    Some('?') => match chars.get(i + 1) {
                        Some('<') => !matches!(chars.get(i + 2), Some('=' | '!')),
                        Some('P') => chars.get(i + 2) == Some(&'<'),
                        Some('\'') => true,
                        _ => false,
                    },
                    Some('*') => false,
                    _ => true,
                };
                groups += usize::from(captures);
                i = translate_group(&chars, i, &mut out)?;
            }
            // PCRE's `$` (without `m`) also matches before a final newline.
            '$' => out.push_str(r"(?:$|\n\z)"),
            '{' => match quantifier_end(&chars, i) {
                Some(end) => {
                    out.push('{');
                    out.extend(&chars[i..end]);
                    i = end;
                    reject_possessive(&chars, i)?;
                }
                // Not a quantifier: a literal brace, as in PCRE.
                None => push_literal('{', &mut out),
            },
            '*' | '+' | '?' => {
                out.push(c);
                reject_possessive(&chars, i)?;
            }
            '}' | ']' => push_literal(c, &mut out),
            // `.`, `^`, `|`, `)` and literal characters mean the same.
            _ => out.push(c),
        }
    }
    Ok(out)
}

fn reject_possessive(chars: &[char], i: usize) -> Result<(), DocError> {
    if chars.get(i) == Some(&'+') {
        return Err(unsupported("a possessive quantifier"));
    }
    Ok(())
}

/// The end of a `{n}`, `{n,}` or `{n,m}` quantifier whose `{` is just before
/// `i`, if that is what follows.
fn quantifier_end(chars: &[char], mut i: usize) -> Option<usize> {
    let start = i;
    while chars.get(i).is_some_and(char::is_ascii_digit) {
        i += 1;
    }
    if i == start {
        return None;
    }
    if chars.get(i) == Some(&',') {
        i += 1;
        while chars.get(i).is_some_and(char::is_ascii_digit) {
            i += 1;
        }
    }
    (chars.get(i) == Some(&'}')).then_some(i + 1)
}

/// A group opening whose `(` is just before `i`.
fn translate_group(chars: &[char], i: usize, out: &mut String) -> Result<usize, DocError> {
    match chars.get(i) {
        Some('*') => return Err(unsupported("a backtracking verb (*...)")),
        Some('?') => {}
        _ => {
            out.push('(');
            return Ok(i);
        }
    }
    let at = |k: usize| chars.get(i + k).copied();
    match at(1) {
        Some(':') => {
            out.push_str("(?:");
            Ok(i + 2)
        }
        Some('#') => {
            // A comment, to the next `)`.
            let end = chars[i..]
                .iter()
                .position(|&c| c == ')')
                .ok_or_else(|| bad("regular expression: missing ) after (?# comment"))?;
            Ok(i + end + 1)
        }
        Some('=' | '!') => Err(unsupported("lookahead")),
        Some('<') if matches!(at(2), Some('=' | '!')) => Err(unsupported("lookbehind")),
        Some('<') => {
            out.push_str("(?<");
            Ok(i + 2)
        }
        Some('P') => match at(2) {
            Some('<') => {
                out.push_str("(?P<");
                Ok(i + 3)
            }
            Some('=') => Err(unsupported("a backreference")),
            _ => Err(unsupported("recursion")),
        },
        Some('\'') => {
            let end = chars[i + 2..]
                .iter()
                .position(|&c| c == '\'')
                .ok_or_else(|| bad("regular expression: unterminated group name"))?;
            out.push_str("(?<");
            out.extend(&chars[i + 2..i + 2 + end]);
            out.push('>');
            Ok(i + 2 + end + 1)
        }
        Some('>') => Err(unsupported("an atomic group")),
        Some('|') => Err(unsupported("a branch reset group")),
        Some('(') => Err(unsupported("a conditional group")),
        Some('C') => Err(unsupported("a callout")),
        Some('R' | '&' | '+' | '0'..='9') => Err(unsupported("recursion")),
        Some('-') if at(2).is_some_and(|c| c.is_ascii_digit()) => Err(unsupported("recursion")),
        _ => {
            // Inline flags: `(?i)`, `(?im-sx)`, `(?i:...)`.
            let mut k = i + 1;
            while let Some(&c) = chars.get(k) {
                match c {
                    'i' | 'm' | 's' | 'x' | 'U' | '-' => k += 1,
                    ')' | ':' => {
                        out.push('(');
                        out.extend(&chars[i..=k]);
                        return Ok(k + 1);
                    }
                    _ => break,
                }
            }
            Err(bad(format!(
                "regular expression: unsupported group (?{}",
                chars[i + 1..].iter().take(8).collect::<String>()
            )))
        }
    }
}

/// An escape outside a class whose `\` is just before `i`.
fn translate_escape(
    chars: &[char],
    i: usize,
    groups: usize,
    out: &mut String,
) -> Result<usize, DocError> {
    let Some(&c) = chars.get(i) else {
        return Err(bad("regular expression: \\ at end of pattern"));
    };
    let next = i + 1;
    match c {
        'd' => out.push_str(ASCII_DIGIT),
        'D' => out.push_str(&negated(ASCII_DIGIT)),
        'w' => out.push_str(ASCII_WORD),
        'W' => out.push_str(&negated(ASCII_WORD)),
        's' => out.push_str(ASCII_SPACE),
        'S' => out.push_str(&negated(ASCII_SPACE)),
        'h' => out.push_str(HORIZONTAL_SPACE),
        'H' => out.push_str(&negated(HORIZONTAL_SPACE)),
        'v' => out.push_str(VERTICAL_SPACE),
        'V' => out.push_str(&negated(VERTICAL_SPACE)),
        'R' => {
            out.push_str(r"(?:\r\n|");
            out.push_str(VERTICAL_SPACE);
            out.push(')');
        }
        'N' if chars.get(next) == Some(&'{') => {
            return Err(bad("regular expression: \\N{...} is not supported"))
        }
        'N' => out.push_str(r"[^\n]"),
        'b' => out.push_str(r"(?-u:\b)"),
        'B' => out.push_str(r"(?-u:\B)"),
        'A' => out.push_str(r"\A"),
        'z' => out.push_str(r"\z"),
        'Z' => out.push_str(r"(?:\n?\z)"),
        'Q' => return Ok(quoted(chars, next, out)),
        'E' => {}
        'p' | 'P' => return copy_property(chars, i, out),
        'G' => return Err(unsupported("\\G")),
        'K' => return Err(unsupported("\\K")),
        'X' | 'C' => return Err(bad(format!("regular expression: \\{c} is not supported"))),
        '1'..='9' => {
            // PCRE: a backreference when under 10, starting with 8 or 9, or
            // when that many groups are open; otherwise octal.
            let digits: String = chars[i..]
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            let n: usize = digits.parse().unwrap_or(usize::MAX);
            if n < 10 || matches!(c, '8' | '9') || n <= groups {
                return Err(unsupported("a backreference"));
            }
            let (literal, next) = escaped_char(chars, i)?;
            push_literal(literal, out);
            return Ok(next);
        }
        'g' | 'k' => return Err(unsupported("a backreference")),
        _ => {
            let (literal, next) = escaped_char(chars, i)?;
            push_literal(literal, out);
            return Ok(next);
        }
    }
    Ok(next)
}

/// `\Q...\E`: everything up to `\E` (or the end) is literal.
fn quoted(chars: &[char], mut i: usize, out: &mut String) -> usize {
    while let Some(&c) = chars.get(i) {
        if c == '\\' && chars.get(i + 1) == Some(&'E') {
            return i + 2;
        }
        push_literal(c, out);
        i += 1;
    }
    i
}

/// `\p{Greek}`, `\pL`, `\P{L}`: the same syntax in both; the `regex` crate
/// judges the property name.
fn copy_property(chars: &[char], i: usize, out: &mut String) -> Result<usize, DocError> {
    out.push('\\');
    out.push(chars[i]);
    match chars.get(i + 1) {
        Some('{') => {
            let end = chars[i + 1..]
                .iter()
                .position(|&c| c == '}')
                .ok_or_else(|| bad("regular expression: malformed \\p{...}"))?;
            out.extend(&chars[i + 1..=i + 1 + end]);
            Ok(i + 2 + end)
        }
        Some(&c) if c.is_ascii_alphabetic() => {
            out.push(c);
            Ok(i + 2)
        }
        _ => Err(bad("regular expression: malformed \\p")),
    }
}

/// A single-character escape whose letter is at `i`: the character and
/// where the escape ends.
fn escaped_char(chars: &[char], i: usize) -> Result<(char, usize), DocError> {
    let c = chars[i];
    let mut next = i + 1;
    let code = match c {
        'a' => 0x07,
        'e' => 0x1B,
        'f' => 0x0C,
        'n' => 0x0A,
        'r' => 0x0D,
        't' => 0x09,
        'x' if chars.get(next) == Some(&'{') => {
            let len = chars[next..]
                .iter()
                .position(|&c| c == '}')
                .ok_or_else(|| bad("regular expression: malformed \\x{...}"))?;
            let digits: String = chars[next + 1..next + len].iter().collect();
            next += len + 1;
            u32::from_str_radix(&digits, 16).map_err(|_| {
                bad(format!(
                    "regular expression: bad hex escape \\x{{{digits}}}"
                ))
            })?
        }
        'x' => {
            // Up to two hex digits; none is NUL.
            let mut code = 0;
            for _ in 0..2 {
                match chars.get(next).and_then(|c| c.to_digit(16)) {
                    Some(d) => {
                        code = code * 16 + d;
                        next += 1;
                    }
                    None => break,
                }
            }
            code
        }
        'o' if chars.get(next) == Some(&'{') => {
            let len = chars[next..]
                .iter()
                .position(|&c| c == '}')
                .ok_or_else(|| bad("regular expression: malformed \\o{...}"))?;
            let digits: String = chars[next + 1..next + len].iter().collect();
            next += len + 1;
            u32::from_str_radix(&digits, 8).map_err(|_| {
                bad(format!(
                    "regular expression: bad octal escape \\o{{{digits}}}"
                ))
            })?
        }
        '0'..='7' => {
            // Up to three octal digits.
            let mut code = c.to_digit(8).unwrap_or(0);
            for _ in 0..2 {
                match chars.get(next).and_then(|c| c.to_digit(8)) {
                    Some(d) => {
                        code = code * 8 + d;
                        next += 1;
                    }
                    None => break,
                }
            }
            code
        }
        'c' => {
            let Some(&x) = chars
                .get(next)
                .filter(|c| c.is_ascii() && !c.is_ascii_control())
            else {
                return Err(bad(
                    "regular expression: \\c needs a printable ASCII character",
                ));
            };
            next += 1;
            u32::from(x.to_ascii_uppercase()) ^ 0x40
        }
        c if c.is_ascii_alphanumeric() => {
            return Err(bad(format!(
                "regular expression: unrecognized escape \\{c}"
            )))
        }
        // Any other escaped character is itself.
        c => u32::from(c),
    };
    let c = char::from_u32(code).ok_or_else(|| {
        bad(format!(
            "regular expression: escape is not a character (U+{code:X})"
        ))
    })?;
    Ok((c, next))
}

/// One item of a character class.
enum ClassItem {
    Char(char),
    /// Already translated: a nested class, a POSIX class or a property.
    Set(String),
}

/// A character class whose `[` is just before `i`. Every item is written out
/// again so that what PCRE takes literally (`[`, `&&`, `--`, `~~`) stays
/// literal for the `regex` crate.
fn translate_class(chars: &[char], mut i: usize, out: &mut String) -> Result<usize, DocError> {
    let negate = chars.get(i) == Some(&'^');
    if negate {
        i += 1;
    }
    let mut body = String::new();
    let mut first = true;
    loop {
        let Some(&c) = chars.get(i) else {
            return Err(bad(
                "regular expression: missing terminating ] for character class",
            ));
        };
        // A `]` first in the class is a literal.
        if c == ']' && !first {
            i += 1;
            break;
        }
        first = false;
        let (item, next) = class_item(chars, i)?;
        i = next;
        match item {
            ClassItem::Char(lo)
                if chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(|&c| c != ']') =>
            {
                let (hi, next) = class_item(chars, i + 1)?;
                let ClassItem::Char(hi) = hi else {
                    return Err(bad("regular expression: invalid range in character class"));
                };
                if hi < lo {
                    return Err(bad(
                        "regular expression: range out of order in character class",
                    ));
                }
                i = next;
                push_literal(lo, &mut body);
                body.push('-');
                push_literal(hi, &mut body);
            }
            ClassItem::Char(c) => push_literal(c, &mut body),
            ClassItem::Set(s) => body.push_str(&s),
        }
    }
    out.push('[');
    if negate {
        out.push('^');
    }
    out.push_str(&body);
    out.push(']');
    Ok(i)
}

fn class_item(chars: &[char], i: usize) -> Result<(ClassItem, usize), DocError> {
    let c = chars[i];
    if c == '[' {
        match chars.get(i + 1) {
            Some(':') => {
                let end = chars[i + 2..]
                    .windows(2)
                    .position(|w| w == [':', ']'])
                    .ok_or_else(|| bad("regular expression: malformed POSIX class"))?;
                let name: String = chars[i + 2..i + 2 + end].iter().collect();
                let known = matches!(
                    name.trim_start_matches('^'),
                    "alnum"
                        | "alpha"
                        | "ascii"
                        | "blank"
                        | "cntrl"
                        | "digit"
                        | "graph"
                        | "lower"
                        | "print"
                        | "punct"
                        | "space"
                        | "upper"
                        | "word"
                        | "xdigit"
                );
                if !known {
                    return Err(bad(format!(
                        "regular expression: unknown POSIX class name [:{name}:]"
                    )));
                }
                return Ok((ClassItem::Set(format!("[:{name}:]")), i + 2 + end + 2));
            }
            Some('.' | '=') => {
                return Err(bad(
                    "regular expression: POSIX collating elements are not supported",
                ))
            }
            _ => return Ok((ClassItem::Char('['), i + 1)),
        }
    }
    if c != '\\' {
        return Ok((ClassItem::Char(c), i + 1));
    }
    let Some(&e) = chars.get(i + 1) else {
        return Err(bad("regular expression: \\ at end of pattern"));
    };
    let set = |s: &str| Ok((ClassItem::Set(s.to_owned()), i + 2));
    match e {
        'd' => set(ASCII_DIGIT),
        'D' => set(&negated(ASCII_DIGIT)),
        'w' => set(ASCII_WORD),
        'W' => set(&negated(ASCII_WORD)),
        's' => set(ASCII_SPACE),
        'S' => set(&negated(ASCII_SPACE)),
        'h' => set(HORIZONTAL_SPACE),
        'H' => set(&negated(HORIZONTAL_SPACE)),
        'v' => set(VERTICAL_SPACE),
        'V' => set(&negated(VERTICAL_SPACE)),
        // In a class, \b is a backspace.
        'b' => Ok((ClassItem::Char('\x08'), i + 2)),
        'p' | 'P' => {
            let mut s = String::new();
            let next = copy_property(chars, i + 1, &mut s)?;
            Ok((ClassItem::Set(s), next))
        }
        'Q' => {
            let mut s = String::new();
            let next = quoted(chars, i + 2, &mut s);
            Ok((ClassItem::Set(s), next))
        }
        'E' => Ok((ClassItem::Set(String::new()), i + 2)),
        _ => {
            let (c, next) = escaped_char(chars, i + 1)?;
            Ok((ClassItem::Char(c), next))
        }
    }
}

#[cfg(test)]
mod tests {
    use bson::{doc, Decimal128, Regex};
    use proptest::prelude::*;

    use super::*;

    fn filter(f: Document) -> Filter {
        Filter::parse(&f).unwrap_or_else(|e| panic!("{f}: {e}"))
    }

    fn matches(f: Document, d: Document) -> bool {
        filter(f).matches(&d)
    }

    /// The documents of `docs` (by `_id`) that `f` matches.
    fn matching(f: Document, docs: &[Document]) -> Vec<String> {
        let f = filter(f);
        docs.iter()
            .filter(|d| f.matches(d))
            .map(|d| d.get_str("_id").unwrap_or("?").to_owned())
            .collect()
    }

    fn error(f: Document) -> DocError {
        match Filter::parse(&f) {
            Ok(_) => panic!("{f} parsed"),
            Err(e) => e,
        }
    }

    fn bad_value(f: Document, message_part: &str) {
        let e = error(f.clone());
        assert_eq!(e.code, crate::error::codes::BAD_VALUE, "{f}: {e}");
        assert!(
            e.message.contains(message_part),
            "{f}: {:?} should mention {message_part:?}",
            e.message
        );
    }

    fn dec(s: &str) -> Bson {
        Bson::Decimal128(s.parse::<Decimal128>().unwrap())
    }

    fn re(pattern: &str, options: &str) -> Bson {
        Bson::RegularExpression(Regex {
            pattern: pattern.try_into().unwrap(),
            options: options.try_into().unwrap(),
        })
    }

    fn index(f: Document, d: Document) -> Option<usize> {
        filter(f).match_details(&d).expect("a match").array_index
    }

    #[test]
    fn empty_filter_matches_everything() {
        assert!(matches(doc! {}, doc! {}));
        assert!(matches(doc! {}, doc! {"a": 1}));
    }

    #[test]
    fn equality_and_numeric_equivalence() {
        assert!(matches(doc! {"a": 5}, doc! {"a": 5}));
        assert!(!matches(doc! {"a": 5}, doc! {"a": 6}));
        assert!(!matches(doc! {"a": 5}, doc! {"b": 5}));
        assert!(!matches(doc! {"a": 5}, doc! {"a": "5"}));
        let fives = [
            Bson::Int32(5),
            Bson::Int64(5),
            Bson::Double(5.0),
            dec("5"),
            dec("5.000"),
        ];
        for x in &fives {
            for y in &fives {
                assert!(
                    matches(doc! {"a": x.clone()}, doc! {"a": y.clone()}),
                    "{x} = {y}"
                );
                assert!(matches(
                    doc! {"a": {"$eq": x.clone()}},
                    doc! {"a": y.clone()}
                ));
                assert!(!matches(
                    doc! {"a": {"$ne": x.clone()}},
                    doc! {"a": y.clone()}
                ));
                assert!(matches(
                    doc! {"a": {"$gte": x.clone(), "$lte": y.clone()}},
                    doc! {"a": 5}
                ));
            }
        }
        // Exact across int64 and double.
        let big = (1i64 << 53) + 1;
        assert!(!matches(doc! {"a": (1i64 << 53) as f64}, doc! {"a": big}));
        assert!(matches(
            doc! {"a": {"$gt": (1i64 << 53) as f64}},
            doc! {"a": big}
        ));
        assert!(matches(doc! {"a": -0.0}, doc! {"a": 0}));
        assert!(matches(doc! {"a": dec("1.5")}, doc! {"a": 1.5}));
    }

    #[test]
    fn embedded_documents_compare_whole_and_in_order() {
        let d = doc! {"a": {"b": 1, "c": 2}};
        assert!(matches(doc! {"a": {"b": 1, "c": 2}}, d.clone()));
        assert!(matches(doc! {"a": {"b": 1.0, "c": 2i64}}, d.clone()));
        assert!(!matches(doc! {"a": {"c": 2, "b": 1}}, d.clone()));
        assert!(!matches(doc! {"a": {"b": 1}}, d.clone()));
        assert!(matches(doc! {"a.b": 1}, d.clone()));
        assert!(matches(doc! {"a": {}}, doc! {"a": {}}));
        // A DBRef is a value, not operators.
        let r = doc! {"r": {"$ref": "c", "$id": 1}};
        assert!(matches(r.clone(), r.clone()));
    }

    #[test]
    fn arrays_match_by_element_or_whole() {
        let d = doc! {"a": [1, 2, [3, 4]]};
        assert!(matches(doc! {"a": 1}, d.clone()));
        assert!(matches(doc! {"a": [3, 4]}, d.clone()));
        assert!(matches(doc! {"a": [1, 2, [3, 4]]}, d.clone()));
        // One level of arrays only.
        assert!(!matches(doc! {"a": 3}, d.clone()));
        assert!(!matches(doc! {"a": [1, 2]}, d.clone()));
        assert!(matches(doc! {"a": {"$gt": 1}}, d.clone()));
        assert!(!matches(doc! {"a": {"$gt": 2}}, d.clone()));
        // Arrays compare with arrays.
        assert!(matches(doc! {"a": {"$gt": [3]}}, d.clone()));
        // Each condition on its own: 0 < 1 and 10 > 5.
        assert!(matches(
            doc! {"a": {"$lt": 1, "$gt": 5}},
            doc! {"a": [0, 10]}
        ));
        assert!(!matches(
            doc! {"a": {"$elemMatch": {"$lt": 1, "$gt": 5}}},
            doc! {"a": [0, 10]}
        ));
        assert!(!matches(doc! {"a": {"$ne": 1}}, doc! {"a": [1, 2]}));
        assert!(matches(doc! {"a": {"$ne": 3}}, doc! {"a": [1, 2]}));
        assert!(matches(doc! {"a": []}, doc! {"a": [[]]}));
        assert!(matches(doc! {"a": []}, doc! {"a": []}));
        assert!(!matches(doc! {"a": []}, doc! {"a": [1]}));
    }

    #[test]
    fn dotted_paths_through_documents_and_arrays() {
        let d = doc! {"a": [{"b": 1}, {"b": [2, 3]}, {"c": {"d": 4}}], "x": {"y": {"z": 5}}};
        assert!(matches(doc! {"a.b": 1}, d.clone()));
        assert!(matches(doc! {"a.b": 3}, d.clone()));
        assert!(matches(doc! {"a.b": [2, 3]}, d.clone()));
        assert!(matches(doc! {"a.c.d": 4}, d.clone()));
        assert!(matches(doc! {"x.y.z": 5}, d.clone()));
        assert!(!matches(doc! {"x.y.z.w": 5}, d.clone()));
        // Positional parts.
        assert!(matches(doc! {"a.0.b": 1}, d.clone()));
        assert!(!matches(doc! {"a.1.b": 1}, d.clone()));
        assert!(matches(doc! {"a.1.b": 2}, d.clone()));
        assert!(matches(doc! {"a.1.b.1": 3}, d.clone()));
        assert!(matches(doc! {"a.2": {"c": {"d": 4}}}, d.clone()));
        assert!(!matches(doc! {"a.01.b": 2}, d.clone()));
        assert!(matches(doc! {"a.0": 5}, doc! {"a": [5, 6]}));
        assert!(!matches(doc! {"a.0": 6}, doc! {"a": [5, 6]}));
        // A field named "0" in an element counts too.
        assert!(matches(doc! {"a.0": 7}, doc! {"a": [{"0": 7}]}));
        // An element picked by position is not expanded.
        assert!(!matches(doc! {"a.0": 1}, doc! {"a": [[1, 2]]}));
        assert!(matches(doc! {"a.0": [1, 2]}, doc! {"a": [[1, 2]]}));
        assert!(matches(doc! {"a.0.1": 2}, doc! {"a": [[1, 2]]}));
        // Implicit traversal does not enter arrays nested in arrays.
        assert!(!matches(doc! {"a.b": 1}, doc! {"a": [[{"b": 1}]]}));
        assert!(matches(doc! {"a.b.c": 1}, doc! {"a": [{"b": [{"c": 1}]}]}));
        assert!(matches(doc! {"": 1}, doc! {"": 1}));
    }

    /// The cases of MongoDB's null_query_semantics test (jstests/core/query),
    /// as MongoDB 9.0 answers them.
    fn null_docs() -> Vec<Document> {
        vec![
            doc! {"_id": "a_empty_subobject", "a": {}},
            doc! {"_id": "a_null", "a": null},
            doc! {"_id": "a_number", "a": 4},
            doc! {"_id": "a_subobject_b_not_null", "a": {"b": "hi"}},
            doc! {"_id": "a_subobject_b_null", "a": {"b": null}},
            doc! {"_id": "a_subobject_b_undefined", "a": {"b": Bson::Undefined}},
            doc! {"_id": "a_undefined", "a": Bson::Undefined},
            doc! {"_id": "no_a"},
            doc! {"_id": "a_double_array", "a": [[]]},
            doc! {"_id": "a_empty_array", "a": []},
            doc! {"_id": "a_object_array_b_mix", "a": [{"b": null}, {"b": Bson::Undefined}, {"b": null}, {}]},
            doc! {"_id": "a_object_array_no_b_nulls", "a": [{"b": 1}, {"b": 3}, {"b": "string"}]},
            doc! {"_id": "a_object_array_some_b_nulls", "a": [{"b": null}, {"b": 3}, {"b": null}]},
            doc! {"_id": "a_object_array_some_b_undefined", "a": [{"b": Bson::Undefined}, {"b": 3}]},
            doc! {"_id": "a_object_array_some_b_missing", "a": [{"b": 3}, {}]},
            doc! {"_id": "a_value_array_all_nulls", "a": [null, null]},
            doc! {"_id": "a_value_array_no_nulls", "a": [1, "string", 4]},
            doc! {"_id": "a_value_array_with_null", "a": [1, "string", null, 4]},
            doc! {"_id": "a_value_array_with_undefined", "a": [1, "string", Bson::Undefined, 4]},
        ]
    }

    fn all_ids_but(docs: &[Document], but: &[&str]) -> Vec<String> {
        docs.iter()
            .map(|d| d.get_str("_id").unwrap().to_owned())
            .filter(|id| !but.contains(&id.as_str()))
            .collect()
    }

    #[test]
    fn null_and_missing() {
        let docs = null_docs();
        let eq_null = [
            "a_null",
            "no_a",
            "a_value_array_all_nulls",
            "a_value_array_with_null",
        ];
        assert_eq!(matching(doc! {"a": null}, &docs), eq_null);
        assert_eq!(matching(doc! {"a": {"$eq": null}}, &docs), eq_null);
        assert_eq!(matching(doc! {"a": {"$gte": null}}, &docs), eq_null);
        assert_eq!(matching(doc! {"a": {"$lte": null}}, &docs), eq_null);
        assert_eq!(
            matching(doc! {"a": {"$ne": null}}, &docs),
            all_ids_but(&docs, &eq_null)
        );
        assert_eq!(
            matching(doc! {"a": {"$not": {"$gte": null}}}, &docs),
            all_ids_but(&docs, &eq_null)
        );
        assert!(matching(doc! {"a": {"$gt": null}}, &docs).is_empty());
        assert!(matching(doc! {"a": {"$lt": null}}, &docs).is_empty());
        let in_null = [
            "a_null",
            "a_number",
            "no_a",
            "a_value_array_all_nulls",
            "a_value_array_no_nulls",
            "a_value_array_with_null",
            "a_value_array_with_undefined",
        ];
        assert_eq!(matching(doc! {"a": {"$in": [null, 4]}}, &docs), in_null);
        assert_eq!(
            matching(doc! {"$or": [{"a": null}, {"a": 4}]}, &docs),
            in_null
        );
        assert_eq!(
            matching(doc! {"a": {"$nin": [null, 4]}}, &docs),
            all_ids_but(&docs, &in_null)
        );
        assert_eq!(
            matching(doc! {"a": {"$nin": [null, []]}}, &docs),
            all_ids_but(
                &docs,
                &[
                    "a_null",
                    "no_a",
                    "a_double_array",
                    "a_empty_array",
                    "a_value_array_all_nulls",
                    "a_value_array_with_null"
                ]
            )
        );
        assert_eq!(
            matching(doc! {"a": {"$nin": [null, re("^str.*", "")]}}, &docs),
            all_ids_but(
                &docs,
                &[
                    "a_null",
                    "no_a",
                    "a_value_array_all_nulls",
                    "a_value_array_with_null",
                    "a_value_array_no_nulls",
                    "a_value_array_with_undefined"
                ]
            )
        );
        assert_eq!(matching(doc! {"a": {"$exists": false}}, &docs), ["no_a"]);
        assert_eq!(
            matching(doc! {"a": {"$exists": true}}, &docs),
            all_ids_but(&docs, &["no_a"])
        );
        assert_eq!(
            matching(doc! {"a": {"$elemMatch": {"$eq": null}}}, &docs),
            ["a_value_array_all_nulls", "a_value_array_with_null"]
        );
        assert_eq!(
            matching(doc! {"a": {"$elemMatch": {"$ne": null}}}, &docs),
            [
                "a_double_array",
                "a_object_array_b_mix",
                "a_object_array_no_b_nulls",
                "a_object_array_some_b_nulls",
                "a_object_array_some_b_undefined",
                "a_object_array_some_b_missing",
                "a_value_array_no_nulls",
                "a_value_array_with_null",
                "a_value_array_with_undefined",
            ]
        );
        assert_eq!(
            matching(doc! {"a": {"$elemMatch": {"b": {"$eq": null}}}}, &docs),
            [
                "a_double_array",
                "a_object_array_b_mix",
                "a_object_array_some_b_nulls",
                "a_object_array_some_b_missing"
            ]
        );
        assert_eq!(
            matching(doc! {"a": {"$elemMatch": {"b": {"$ne": null}}}}, &docs),
            [
                "a_object_array_b_mix",
                "a_object_array_no_b_nulls",
                "a_object_array_some_b_nulls",
                "a_object_array_some_b_undefined",
                "a_object_array_some_b_missing",
            ]
        );
    }

    #[test]
    fn null_on_dotted_paths() {
        let docs = null_docs();
        let dotted_null = [
            "a_empty_subobject",
            "a_null",
            "a_number",
            "a_subobject_b_null",
            "a_undefined",
            "no_a",
            "a_double_array",
            "a_empty_array",
            "a_object_array_b_mix",
            "a_object_array_some_b_nulls",
            "a_object_array_some_b_missing",
            "a_value_array_all_nulls",
            "a_value_array_no_nulls",
            "a_value_array_with_null",
            "a_value_array_with_undefined",
        ];
        assert_eq!(matching(doc! {"a.b": null}, &docs), dotted_null);
        assert_eq!(
            matching(doc! {"a.b": {"$in": [null, 75]}}, &docs),
            dotted_null
        );
        let not_null = [
            "a_subobject_b_not_null",
            "a_subobject_b_undefined",
            "a_object_array_no_b_nulls",
            "a_object_array_some_b_undefined",
        ];
        assert_eq!(matching(doc! {"a.b": {"$ne": null}}, &docs), not_null);
        assert_eq!(
            matching(doc! {"a.b": {"$nin": [null, 75]}}, &docs),
            not_null
        );
        assert_eq!(
            matching(doc! {"a.b": {"$nin": [null, re("^str.*", "")]}}, &docs),
            [
                "a_subobject_b_not_null",
                "a_subobject_b_undefined",
                "a_object_array_some_b_undefined"
            ]
        );
        assert!(matching(doc! {"a.b": {"$elemMatch": {"$eq": null}}}, &docs).is_empty());
        assert_eq!(
            matching(doc! {"a.b": {"$exists": false}}, &docs),
            [
                "a_empty_subobject",
                "a_null",
                "a_number",
                "a_undefined",
                "no_a",
                "a_double_array",
                "a_empty_array",
                "a_value_array_all_nulls",
                "a_value_array_no_nulls",
                "a_value_array_with_null",
                "a_value_array_with_undefined",
            ]
        );
        // SERVER-36681: a scalar element is a place where "a.b" is missing.
        assert!(matches(doc! {"a.b": null}, doc! {"a": [5, {"b": 5}]}));
        assert!(!matches(
            doc! {"a.b": {"$ne": null}},
            doc! {"a": [1, {"c": 1}]}
        ));
        // ... but not where a numeric part picks an element.
        assert!(!matches(doc! {"a.0": null}, doc! {"a": [5]}));
    }

    #[test]
    fn comparisons_bracket_types() {
        assert!(!matches(doc! {"a": {"$gt": 5}}, doc! {"a": "x"}));
        assert!(!matches(doc! {"a": {"$lt": "x"}}, doc! {"a": 5}));
        assert!(matches(doc! {"a": {"$gt": "a"}}, doc! {"a": "b"}));
        assert!(matches(doc! {"a": {"$gte": 5, "$lt": 6}}, doc! {"a": 5.5}));
        assert!(matches(doc! {"a": {"$lt": dec("5.5")}}, doc! {"a": 5i64}));
        assert!(!matches(doc! {"a": {"$gt": 5}}, doc! {}));
        for v in [
            Bson::Int32(1),
            Bson::String("x".into()),
            Bson::Null,
            Bson::Document(doc! {}),
            Bson::MaxKey,
        ] {
            assert!(
                matches(doc! {"a": {"$gt": Bson::MinKey}}, doc! {"a": v.clone()}),
                "{v}"
            );
        }
        for v in [
            Bson::Int32(1),
            Bson::String("x".into()),
            Bson::Null,
            Bson::MinKey,
        ] {
            assert!(
                matches(doc! {"a": {"$lt": Bson::MaxKey}}, doc! {"a": v.clone()}),
                "{v}"
            );
        }
        assert!(!matches(
            doc! {"a": {"$lt": Bson::MaxKey}},
            doc! {"a": Bson::MaxKey}
        ));
        assert!(matches(
            doc! {"a": {"$lte": Bson::MaxKey}},
            doc! {"a": Bson::MaxKey}
        ));
        assert!(!matches(
            doc! {"a": {"$gt": Bson::MinKey}},
            doc! {"a": Bson::MinKey}
        ));
        assert!(matches(doc! {"a": Bson::MinKey}, doc! {"a": Bson::MinKey}));
        // NaN is only equal to NaN.
        let nan = doc! {"a": f64::NAN};
        assert!(matches(doc! {"a": f64::NAN}, nan.clone()));
        assert!(matches(doc! {"a": {"$gte": f64::NAN}}, nan.clone()));
        assert!(!matches(doc! {"a": {"$lt": 0}}, nan.clone()));
        assert!(!matches(doc! {"a": {"$gt": 0}}, nan.clone()));
        assert!(!matches(doc! {"a": {"$lt": f64::NAN}}, doc! {"a": 0}));
        assert!(!matches(doc! {"a": {"$gte": f64::NAN}}, doc! {"a": 0}));
        assert!(matches(doc! {"a": {"$in": [f64::NAN]}}, nan));
        // Dates, ObjectIds, booleans compare within their class.
        let t = bson::DateTime::from_millis(1000);
        assert!(matches(
            doc! {"a": {"$gt": bson::DateTime::from_millis(0)}},
            doc! {"a": t}
        ));
        assert!(!matches(doc! {"a": {"$gt": 0}}, doc! {"a": t}));
        assert!(matches(doc! {"a": {"$gt": false}}, doc! {"a": true}));
    }

    #[test]
    fn in_and_nin() {
        let f = doc! {"a": {"$in": [1, "x", re("^ab", "i"), [1, 2]]}};
        assert!(matches(f.clone(), doc! {"a": 1.0}));
        assert!(matches(f.clone(), doc! {"a": "x"}));
        assert!(matches(f.clone(), doc! {"a": "ABC"}));
        assert!(matches(f.clone(), doc! {"a": ["zz", "abz"]}));
        assert!(matches(f.clone(), doc! {"a": [1, 2]}));
        assert!(matches(f.clone(), doc! {"a": [[1, 2]]}));
        assert!(!matches(f.clone(), doc! {"a": 2}));
        assert!(!matches(f.clone(), doc! {}));
        assert!(matches(doc! {"a": {"$in": [null]}}, doc! {}));
        assert!(!matches(doc! {"a": {"$in": []}}, doc! {"a": 1}));
        assert!(matches(doc! {"a": {"$nin": []}}, doc! {"a": 1}));
        assert!(matches(doc! {"a": {"$nin": [1, 2]}}, doc! {"a": [3, 4]}));
        assert!(!matches(doc! {"a": {"$nin": [1, 2]}}, doc! {"a": [3, 2]}));
        assert!(matches(doc! {"a": {"$nin": [1]}}, doc! {}));
        // A stored regex equals the same regex.
        assert!(matches(
            doc! {"a": {"$in": [re("^ab", "i")]}},
            doc! {"a": re("^ab", "i")}
        ));
        assert!(!matches(
            doc! {"a": {"$in": [re("^ab", "i")]}},
            doc! {"a": re("^ab", "")}
        ));
        bad_value(doc! {"a": {"$in": 1}}, "$in needs an array");
        bad_value(doc! {"a": {"$nin": {"x": 1}}}, "$nin needs an array");
        bad_value(doc! {"a": {"$in": [{"$gt": 1}]}}, "cannot nest $ under $in");
    }

    #[test]
    fn logical_operators() {
        let d = doc! {"a": 1, "b": 2};
        assert!(matches(doc! {"$and": [{"a": 1}, {"b": 2}]}, d.clone()));
        assert!(!matches(doc! {"$and": [{"a": 1}, {"b": 3}]}, d.clone()));
        assert!(matches(doc! {"$or": [{"a": 2}, {"b": 2}]}, d.clone()));
        assert!(!matches(doc! {"$or": [{"a": 2}, {"b": 3}]}, d.clone()));
        assert!(matches(doc! {"$nor": [{"a": 2}, {"b": 3}]}, d.clone()));
        assert!(!matches(doc! {"$nor": [{"a": 1}, {"b": 3}]}, d.clone()));
        assert!(matches(
            doc! {"a": 1, "$or": [{"b": {"$gt": 5}}, {"$and": [{"b": 2}, {"c": {"$exists": false}}]}]},
            d.clone()
        ));
        assert!(matches(doc! {"a": 1, "$comment": "why"}, d.clone()));
        assert!(matches(doc! {"$alwaysTrue": 1}, d.clone()));
        assert!(!matches(doc! {"$alwaysFalse": 1}, d.clone()));
        bad_value(doc! {"$and": []}, "nonempty");
        bad_value(doc! {"$or": {"a": 1}}, "must be an array");
        bad_value(doc! {"$nor": [1]}, "full objects");
        bad_value(doc! {"$foo": 1}, "unknown top level operator: $foo");
        bad_value(doc! {"$where": "true"}, "$where is not supported");
    }

    #[test]
    fn not_with_operators_and_regexes() {
        assert!(matches(doc! {"a": {"$not": {"$gt": 5}}}, doc! {"a": 3}));
        assert!(!matches(doc! {"a": {"$not": {"$gt": 5}}}, doc! {"a": 7}));
        assert!(matches(doc! {"a": {"$not": {"$gt": 5}}}, doc! {}));
        assert!(matches(doc! {"a": {"$not": {"$gt": 5}}}, doc! {"a": "x"}));
        assert!(!matches(
            doc! {"a": {"$not": {"$gt": 5}}},
            doc! {"a": [1, 7]}
        ));
        assert!(matches(
            doc! {"a": {"$not": re("^x", "")}},
            doc! {"a": "yx"}
        ));
        assert!(!matches(
            doc! {"a": {"$not": re("^x", "i")}},
            doc! {"a": "Xy"}
        ));
        assert!(matches(doc! {"a": {"$not": re("^x", "")}}, doc! {"a": 5}));
        assert!(matches(
            doc! {"a": {"$not": {"$regex": "^x"}}},
            doc! {"a": "y"}
        ));
        assert!(matches(
            doc! {"a": {"$not": {"$in": [1, 2]}}},
            doc! {"a": 3}
        ));
        assert!(matches(
            doc! {"a": {"$not": {"$not": {"$eq": 1}}}},
            doc! {"a": 1}
        ));
        assert!(matches(
            doc! {"a": {"$not": {"$elemMatch": {"$gt": 5}}}},
            doc! {"a": [1, 2]}
        ));
        bad_value(doc! {"a": {"$not": {}}}, "$not cannot be empty");
        bad_value(doc! {"a": {"$not": 5}}, "$not needs a regex or a document");
        bad_value(doc! {"a": {"$not": {"b": 1}}}, "unknown operator: b");
    }

    #[test]
    fn exists() {
        assert!(matches(doc! {"a": {"$exists": true}}, doc! {"a": null}));
        assert!(matches(doc! {"a": {"$exists": 1}}, doc! {"a": []}));
        assert!(!matches(doc! {"a": {"$exists": 0}}, doc! {"a": 0}));
        assert!(matches(
            doc! {"a.b": {"$exists": true}},
            doc! {"a": [{"c": 1}, {"b": 1}]}
        ));
        assert!(!matches(
            doc! {"a.b": {"$exists": true}},
            doc! {"a": [{"c": 1}]}
        ));
        assert!(matches(
            doc! {"a.b": {"$exists": false}},
            doc! {"a": [{"c": 1}]}
        ));
        assert!(!matches(
            doc! {"a.b": {"$exists": false}},
            doc! {"a": [{"c": 1}, {"b": 1}]}
        ));
    }

    #[test]
    fn type_by_alias_and_number() {
        let cases: Vec<(Bson, &str, i32)> = vec![
            (Bson::Double(1.5), "double", 1),
            (Bson::String("s".into()), "string", 2),
            (Bson::Document(doc! {}), "object", 3),
            (Bson::Array(vec![]), "array", 4),
            (
                Bson::Binary(bson::Binary {
                    subtype: bson::spec::BinarySubtype::Generic,
                    bytes: vec![],
                }),
                "binData",
                5,
            ),
            (
                Bson::ObjectId(bson::oid::ObjectId::from_bytes([1; 12])),
                "objectId",
                7,
            ),
            (Bson::Boolean(true), "bool", 8),
            (Bson::DateTime(bson::DateTime::from_millis(0)), "date", 9),
            (Bson::Null, "null", 10),
            (re("a", ""), "regex", 11),
            (Bson::Int32(1), "int", 16),
            (
                Bson::Timestamp(bson::Timestamp {
                    time: 1,
                    increment: 1,
                }),
                "timestamp",
                17,
            ),
            (Bson::Int64(1), "long", 18),
            (dec("1"), "decimal", 19),
            (Bson::MinKey, "minKey", -1),
            (Bson::MaxKey, "maxKey", 127),
        ];
        for (v, alias, code) in &cases {
            let d = doc! {"a": v.clone()};
            assert!(
                matches(doc! {"a": {"$type": *alias}}, d.clone()),
                "{v} is {alias}"
            );
            assert!(
                matches(doc! {"a": {"$type": *code}}, d.clone()),
                "{v} is {code}"
            );
            assert!(matches(doc! {"a": {"$type": f64::from(*code)}}, d.clone()));
            for (_, other, _) in cases.iter().filter(|c| c.1 != *alias) {
                assert!(
                    !matches(doc! {"a": {"$type": *other}}, d.clone()),
                    "{v} is not {other}"
                );
            }
        }
        for n in [Bson::Int32(1), Bson::Int64(1), Bson::Double(1.0), dec("1")] {
            assert!(matches(doc! {"a": {"$type": "number"}}, doc! {"a": n}));
        }
        assert!(!matches(doc! {"a": {"$type": "number"}}, doc! {"a": "1"}));
        assert!(matches(
            doc! {"a": {"$type": ["string", "int"]}},
            doc! {"a": 1}
        ));
        // Elements of arrays are looked at too, and the array itself.
        assert!(matches(
            doc! {"a": {"$type": "string"}},
            doc! {"a": [1, "x"]}
        ));
        assert!(matches(doc! {"a": {"$type": "array"}}, doc! {"a": [1]}));
        assert!(!matches(doc! {"a": {"$type": "null"}}, doc! {}));
        bad_value(doc! {"a": {"$type": "strng"}}, "unknown type name alias");
        bad_value(doc! {"a": {"$type": 42}}, "invalid numerical type code");
        bad_value(doc! {"a": {"$type": 2.5}}, "number or a string");
        bad_value(doc! {"a": {"$type": []}}, "at least one type");
    }

    #[test]
    fn all() {
        let d = doc! {"tags": ["ssl", "security", "web"]};
        assert!(matches(doc! {"tags": {"$all": ["ssl", "web"]}}, d.clone()));
        assert!(!matches(doc! {"tags": {"$all": ["ssl", "db"]}}, d.clone()));
        assert!(matches(
            doc! {"tags": {"$all": [re("^sec", "")]}},
            d.clone()
        ));
        assert!(!matches(doc! {"tags": {"$all": []}}, d.clone()));
        assert!(matches(
            doc! {"tags": {"$all": ["ssl"]}},
            doc! {"tags": "ssl"}
        ));
        // A nested array is a value to find.
        assert!(matches(doc! {"a": {"$all": [[1, 2]]}}, doc! {"a": [1, 2]}));
        assert!(matches(
            doc! {"a": {"$all": [[1, 2]]}},
            doc! {"a": [[1, 2], 3]}
        ));
        let items = doc! {"qty": [{"size": "S", "num": 10}, {"size": "M", "num": 45}]};
        assert!(matches(
            doc! {"qty": {"$all": [
                {"$elemMatch": {"size": "M", "num": {"$gt": 40}}},
                {"$elemMatch": {"num": 10}},
            ]}},
            items.clone()
        ));
        assert!(!matches(
            doc! {"qty": {"$all": [
                {"$elemMatch": {"size": "M", "num": {"$gt": 50}}},
                {"$elemMatch": {"num": 10}},
            ]}},
            items
        ));
        bad_value(doc! {"a": {"$all": 1}}, "$all needs an array");
        bad_value(
            doc! {"a": {"$all": [{"$elemMatch": {"b": 1}}, 1]}},
            "consistent",
        );
        bad_value(
            doc! {"a": {"$all": [1, {"$elemMatch": {"b": 1}}]}},
            "consistent",
        );
        bad_value(
            doc! {"a": {"$all": [{"$gt": 1}]}},
            "no $ expressions in $all",
        );
    }

    #[test]
    fn elem_match() {
        let d = doc! {"results": [82, 85, 88]};
        assert!(matches(
            doc! {"results": {"$elemMatch": {"$gte": 80, "$lt": 85}}},
            d.clone()
        ));
        assert!(!matches(
            doc! {"results": {"$elemMatch": {"$gte": 90}}},
            d.clone()
        ));
        assert!(!matches(
            doc! {"results": {"$elemMatch": {"$gte": 80}}},
            doc! {"results": 82}
        ));
        let d = doc! {"results": [{"product": "abc", "score": 10}, {"product": "xyz", "score": 5}]};
        assert!(matches(
            doc! {"results": {"$elemMatch": {"product": "xyz", "score": {"$gte": 5}}}},
            d.clone()
        ));
        assert!(!matches(
            doc! {"results": {"$elemMatch": {"product": "xyz", "score": {"$gte": 8}}}},
            d.clone()
        ));
        // Unlike two separate conditions on "results.product" and "results.score".
        assert!(matches(
            doc! {"results.product": "xyz", "results.score": {"$gte": 8}},
            d.clone()
        ));
        assert!(matches(
            doc! {"results": {"$elemMatch": {"$or": [{"score": 100}, {"product": "abc"}]}}},
            d.clone()
        ));
        // Nested.
        let d = doc! {"a": [{"b": [{"c": 1, "d": 2}, {"c": 3, "d": 4}]}]};
        assert!(matches(
            doc! {"a": {"$elemMatch": {"b": {"$elemMatch": {"c": 3, "d": 4}}}}},
            d.clone()
        ));
        assert!(!matches(
            doc! {"a": {"$elemMatch": {"b": {"$elemMatch": {"c": 1, "d": 4}}}}},
            d.clone()
        ));
        assert!(matches(
            doc! {"m": {"$elemMatch": {"$elemMatch": {"$gt": 5}}}},
            doc! {"m": [[1], [2, 6]]}
        ));
        // No fanning out of nested arrays in the value form.
        assert!(!matches(
            doc! {"m": {"$elemMatch": {"$gt": 5}}},
            doc! {"m": [[1, 6]]}
        ));
        assert!(matches(doc! {"a": {"$elemMatch": {}}}, doc! {"a": [1, {}]}));
        assert!(!matches(doc! {"a": {"$elemMatch": {}}}, doc! {"a": [1, 2]}));
        bad_value(doc! {"a": {"$elemMatch": 1}}, "$elemMatch needs an Object");
        bad_value(
            doc! {"a": {"$elemMatch": {"$expr": {"$eq": 1}}}},
            "top-level",
        );
    }

    #[test]
    fn size() {
        assert!(matches(doc! {"a": {"$size": 2}}, doc! {"a": [1, [2, 3]]}));
        assert!(matches(doc! {"a": {"$size": 0}}, doc! {"a": []}));
        assert!(matches(doc! {"a": {"$size": 2.0}}, doc! {"a": [1, 2]}));
        assert!(matches(doc! {"a": {"$size": 1}}, doc! {"a": [[1, 2]]}));
        assert!(!matches(doc! {"a": {"$size": 2}}, doc! {"a": [[1, 2]]}));
        assert!(!matches(doc! {"a": {"$size": 1}}, doc! {"a": 1}));
        assert!(matches(
            doc! {"a.b": {"$size": 2}},
            doc! {"a": [{"b": [1]}, {"b": [1, 2]}]}
        ));
        bad_value(doc! {"a": {"$size": "2"}}, "$size needs a number");
        bad_value(doc! {"a": {"$size": 2.5}}, "whole number");
        bad_value(doc! {"a": {"$size": -1}}, "negative");
    }

    #[test]
    fn modulo() {
        assert!(matches(doc! {"a": {"$mod": [4, 0]}}, doc! {"a": 8}));
        assert!(!matches(doc! {"a": {"$mod": [4, 0]}}, doc! {"a": 9}));
        assert!(matches(doc! {"a": {"$mod": [4, 1]}}, doc! {"a": 9.9}));
        assert!(matches(doc! {"a": {"$mod": [4.7, 1.2]}}, doc! {"a": 5}));
        assert!(matches(doc! {"a": {"$mod": [4, -1]}}, doc! {"a": -5}));
        assert!(matches(doc! {"a": {"$mod": [-1, 0]}}, doc! {"a": i64::MIN}));
        assert!(matches(doc! {"a": {"$mod": [3, 2]}}, doc! {"a": [1, 5]}));
        assert!(!matches(doc! {"a": {"$mod": [3, 2]}}, doc! {"a": "5"}));
        assert!(!matches(doc! {"a": {"$mod": [3, 0]}}, doc! {"a": f64::NAN}));
        bad_value(doc! {"a": {"$mod": [0, 1]}}, "divisor cannot be 0");
        bad_value(doc! {"a": {"$mod": [0.5, 1]}}, "divisor cannot be 0");
        bad_value(doc! {"a": {"$mod": [4]}}, "not enough elements");
        bad_value(doc! {"a": {"$mod": [4, 1, 2]}}, "too many elements");
        bad_value(doc! {"a": {"$mod": 4}}, "needs to be an array");
        bad_value(doc! {"a": {"$mod": ["4", 1]}}, "divisor not a number");
        bad_value(
            doc! {"a": {"$mod": [f64::NAN, 1]}},
            "divisor value is invalid",
        );
    }

    #[test]
    fn regexes_and_options() {
        let d = doc! {"s": "Hello\nWorld"};
        assert!(matches(doc! {"s": re("^Hello", "")}, d.clone()));
        assert!(matches(
            doc! {"s": {"$regex": "^hello", "$options": "i"}},
            d.clone()
        ));
        assert!(!matches(doc! {"s": {"$regex": "^world"}}, d.clone()));
        assert!(matches(
            doc! {"s": {"$regex": "^World", "$options": "m"}},
            d.clone()
        ));
        assert!(!matches(doc! {"s": {"$regex": "o.W"}}, d.clone()));
        assert!(matches(
            doc! {"s": {"$regex": "o.W", "$options": "s"}},
            d.clone()
        ));
        assert!(matches(
            doc! {"s": {"$regex": "H e l l o # a comment\n", "$options": "x"}},
            d.clone()
        ));
        assert!(matches(
            doc! {"s": {"$regex": re("^hello", "i")}},
            d.clone()
        ));
        assert!(matches(
            doc! {"s": {"$options": "i", "$regex": "^HELLO"}},
            d.clone()
        ));
        assert!(matches(
            doc! {"s": {"$regex": re("^HELLO", ""), "$options": "i"}},
            d.clone()
        ));
        assert!(matches(
            doc! {"s": re("l+", "")},
            doc! {"s": ["x", "hello"]}
        ));
        assert!(!matches(doc! {"s": re("1", "")}, doc! {"s": 1}));
        assert!(matches(
            doc! {"s": re("x", "")},
            doc! {"s": Bson::Symbol("x".into())}
        ));
        // A stored regex matches the same regex.
        assert!(matches(
            doc! {"s": re("a.c", "i")},
            doc! {"s": re("a.c", "i")}
        ));
        assert!(!matches(
            doc! {"s": re("a.c", "i")},
            doc! {"s": re("a.c", "")}
        ));
        assert!(matches(
            doc! {"s": {"$eq": re("a.c", "")}},
            doc! {"s": re("a.c", "")}
        ));
        assert!(!matches(
            doc! {"s": {"$eq": re("a.c", "")}},
            doc! {"s": "abc"}
        ));
        bad_value(doc! {"s": {"$options": "i"}}, "$options needs a $regex");
        bad_value(
            doc! {"s": {"$regex": re("a", "i"), "$options": "m"}},
            "options set in both",
        );
        bad_value(doc! {"s": {"$regex": 5}}, "$regex has to be a string");
        bad_value(doc! {"s": {"$regex": "a", "$options": "q"}}, "invalid flag");
        bad_value(doc! {"s": {"$regex": "(a"}}, "invalid regular expression");
        bad_value(doc! {"s": {"$ne": re("a", "")}}, "Can't have RegEx");
        bad_value(doc! {"s": {"$gt": re("a", "")}}, "Can't have RegEx");
    }

    #[test]
    fn pcre_translation() {
        let m = |pattern: &str, options: &str, s: &str| {
            compile_regex(pattern, options)
                .unwrap_or_else(|e| panic!("/{pattern}/: {e}"))
                .is_match(s)
        };
        // ASCII classes, as MongoDB's PCRE has them.
        assert!(m(r"^\d+$", "", "123"));
        assert!(!m(r"^\d+$", "", "١٢٣"));
        assert!(!m(r"^\w+$", "", "é"));
        assert!(m(r"^\W$", "", "é"));
        assert!(m(r"^[\d_]+$", "", "1_2"));
        assert!(m(r"^[^\d]+$", "", "abc"));
        assert!(m(r"\bfoo\b", "", "a foo b"));
        assert!(m(r"\s", "", "\x0B"));
        // `$` matches before a final newline; `\z` does not.
        assert!(m("abc$", "", "abc\n"));
        assert!(!m(r"abc\z", "", "abc\n"));
        assert!(m(r"abc\Z", "", "abc\n"));
        assert!(!m("abc$", "", "abc\nx"));
        assert!(m("abc$", "m", "abc\nx"));
        // Class syntax PCRE reads literally.
        assert!(m("[[]", "", "["));
        assert!(m("[]a]", "", "]"));
        assert!(m("[^]a]", "", "b"));
        assert!(m("[a&&b]", "", "&"));
        assert!(m("[a-]", "", "-"));
        assert!(m(r"[a\-z]", "", "-"));
        assert!(!m(r"[a\-z]", "", "b"));
        assert!(m("[-a]", "", "-"));
        assert!(compile_regex("[a--]", "").is_err());
        assert!(m("[[:digit:]x]", "", "7"));
        assert!(m(r"[\b]", "", "\x08"));
        assert!(m("[ ]", "x", " "));
        // Literal braces and quoting.
        assert!(m("a{", "", "a{"));
        assert!(m("x{1,2}y", "", "xxy"));
        assert!(m("a{,2}", "", "a{,2}"));
        assert!(m(r"\Qa.b*\E", "", "a.b*"));
        assert!(!m(r"\Qa.b\E", "", "axb"));
        assert!(m(r"\x41\x{42}\103\e", "", "ABC\x1B"));
        assert!(m(r"\cA", "", "\x01"));
        assert!(m(r"[\101]", "", "A"));
        assert!(compile_regex(r"(a)(b)(c)(d)(e)(f)(g)(h)(i)(j)\10", "").is_err());
        assert!(m(r"(a)\10", "", "a\x08"));
        assert!(m(r"\<a\>", "", "<a>"));
        assert!(m(r"a(?#comment)b", "", "ab"));
        assert!(m(r"(?i)AB(?-i:c)", "", "abc"));
        assert!(!m(r"(?i)AB(?-i:c)", "", "abC"));
        assert!(m(r"(?<year>\d{4})-(?'month'\d\d)", "", "2024-05"));
        assert!(m(r"a\hb\vc\Rd", "", "a\tb\nc\r\nd"));
        assert!(m(r"\p{Greek}", "", "λ"));
        assert!(m("é", "i", "É"));
        // Everyday patterns.
        let email = r"^[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\.[a-zA-Z]{2,}$";
        assert!(m(email, "", "first.last+tag@example.co.uk"));
        assert!(!m(email, "", "first last@example.com"));
        assert!(m(r"^\d{3}-\d{4}$", "", "555-1234"));
        assert!(m(r"^/api/v\d+/users/?$", "", "/api/v2/users/"));
        assert!(m(r".*foo.*", "", "xxfooyy"));
        assert!(m(r"^(?:a|b)+?c$", "", "ababc"));
        assert!(m(r"[^\s\S]|x", "", "x"));
        assert!(!m(r"[^\s\S]", "", "x"));
        assert!(m(r"\.\[\]\(\)\{\}\*\+\?\|\^\$\/\-", "", ".[](){}*+?|^$/-"));
        assert!(m("^ab$", "i", "AB"));
        assert!(m("^$", "", ""));
        // What needs backtracking is refused, with a reason.
        for pattern in [
            r"(a)\1", "a(?=b)", "a(?!b)", "(?<=a)b", "(?<!a)b", "(?>a)", "a++", "a*+", r"\Gx",
            "(?R)", r"a\Kb", "(*UTF)a",
        ] {
            let e = compile_regex(pattern, "").expect_err(pattern);
            assert_eq!(e.code, crate::error::codes::BAD_VALUE);
            assert!(
                e.message.contains("not supported"),
                "{pattern}: {}",
                e.message
            );
        }
        // Hostile sizes are refused, not built.
        let e = compile_regex("((a{100}){100}){100}", "").expect_err("too large");
        assert!(e.message.contains("too large"), "{}", e.message);
        let e = compile_regex(&"a".repeat(REGEX_PATTERN_MAX_BYTES + 1), "").expect_err("too long");
        assert!(e.message.contains("too long"), "{}", e.message);
        assert!(compile_regex(r"\y", "").is_err());
        assert!(compile_regex("[a", "").is_err());
        assert!(compile_regex("[z-a]", "").is_err());
    }

    #[test]
    fn operator_errors() {
        bad_value(doc! {"a": {"$foo": 1}}, "unknown operator: $foo");
        bad_value(doc! {"a": {"$gt": 1, "b": 2}}, "unknown operator: b");
        bad_value(doc! {"a": {"$near": [0, 0]}}, "$near is not supported");
        bad_value(doc! {"a": {"$eq": Bson::Undefined}}, "undefined");
        bad_value(doc! {"$or": [{"a": {"$bad": 1}}]}, "unknown operator: $bad");
        // Nesting is bounded.
        let mut f = doc! {"a": 1};
        for _ in 0..=FILTER_DEPTH_MAX {
            f = doc! {"$and": [f]};
        }
        bad_value(f, "depth limit");
        let mut f = doc! {"$gt": 1};
        for _ in 0..=FILTER_DEPTH_MAX {
            f = doc! {"$not": f};
        }
        bad_value(doc! {"a": f}, "depth limit");
    }

    #[test]
    fn expr_parse_errors_are_passed_on() {
        // The expression module is written separately; whatever its parser
        // says about an expression is what the filter says.
        let v = Bson::Document(doc! {"$eq": ["$a", 1]});
        match (Expr::parse(&v), Filter::parse(&doc! {"$expr": v.clone()})) {
            (Err(expected), Err(got)) => assert_eq!(expected, got),
            (Ok(_), Ok(f)) => {
                assert!(f.matches(&doc! {"a": 1}));
                assert!(!f.matches(&doc! {"a": 2}));
            }
            (e, f) => panic!("Expr::parse gave {e:?} but the filter {f:?}"),
        }
    }

    #[test]
    fn equalities_for_upserts() {
        let f = filter(doc! {
            "a": 1,
            "b": {"$eq": 2, "$gt": 0},
            "$and": [{"c.d": 3}, {"e": {"$in": [4]}}],
            "$or": [{"f": 5}],
            "g": {"$ne": 6},
            "h": {"x": 7},
            "i": re("j", ""),
        });
        assert_eq!(
            f.equalities(),
            vec![
                ("a".to_owned(), Bson::Int32(1)),
                ("b".to_owned(), Bson::Int32(2)),
                ("c.d".to_owned(), Bson::Int32(3)),
                ("h".to_owned(), Bson::Document(doc! {"x": 7})),
            ]
        );
    }

    #[test]
    fn positional_index() {
        let d = doc! {"grades": [80, 85, 90]};
        assert_eq!(index(doc! {"grades": 85}, d.clone()), Some(1));
        assert_eq!(index(doc! {"grades": {"$gte": 86}}, d.clone()), Some(2));
        assert_eq!(index(doc! {"grades": [80, 85, 90]}, d.clone()), None);
        let d = doc! {"_id": 1, "items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 5}]};
        assert_eq!(index(doc! {"items.sku": "b"}, d.clone()), Some(1));
        assert_eq!(
            index(doc! {"_id": 1, "items.qty": {"$gt": 2}}, d.clone()),
            Some(1)
        );
        assert_eq!(
            index(
                doc! {"items": {"$elemMatch": {"sku": "b", "qty": 5}}},
                d.clone()
            ),
            Some(1)
        );
        assert_eq!(index(doc! {"_id": 1}, d.clone()), None);
        assert_eq!(index(doc! {"items.0.sku": "a"}, d.clone()), None);
        // The first array on the path gives the index.
        let d = doc! {"a": [{"b": [1, 2]}, {"b": [3, 4]}]};
        assert_eq!(index(doc! {"a.b": 4}, d.clone()), Some(1));
        // Not through $or or negations, as in MongoDB.
        assert_eq!(index(doc! {"$or": [{"a.b": 4}]}, d.clone()), None);
        assert_eq!(index(doc! {"a.b": {"$ne": 9}}, d.clone()), None);
        // $and: the first condition that reports one.
        assert_eq!(index(doc! {"a.b": 3, "$and": [{"a.b": 1}]}, d), Some(1));
    }

    // -- properties ----------------------------------------------------------

    /// Scalars of one type class: numbers (no NaN), or strings.
    fn same_class_pair() -> impl Strategy<Value = (Bson, Bson)> {
        let number = prop_oneof![
            any::<i32>().prop_map(Bson::Int32),
            any::<i64>().prop_map(Bson::Int64),
            any::<f64>()
                .prop_filter("NaN is unordered", |f| !f.is_nan())
                .prop_map(Bson::Double),
            (-3i32..3).prop_map(Bson::Int32),
            (-3i32..3).prop_map(|i| Bson::Double(f64::from(i))),
            (-3i64..3).prop_map(|i| dec(&i.to_string())),
        ];
        prop_oneof![
            (number.clone(), number),
            ("[ab]{0,3}", "[ab]{0,3}").prop_map(|(a, b)| (Bson::String(a), Bson::String(b))),
        ]
    }

    #[test]
    fn expr_sees_the_commands_let_variables() {
        let mut vars = Variables::new();
        vars.bind("id", Bson::Int32(2));
        let f = Filter::parse_with(
            &doc! {"$or": [{"$expr": {"$eq": ["$_id", "$$id"]}}, {"x": 9}]},
            &vars,
        )
        .unwrap();
        assert!(f.matches(&doc! {"_id": 2}));
        assert!(!f.matches(&doc! {"_id": 1}));
        // Without them the variable is undefined (17276), as in MongoDB.
        let e = Filter::parse(&doc! {"$expr": {"$eq": ["$_id", "$$id"]}}).unwrap_err();
        assert_eq!(e.code, 17276);
    }

    proptest! {
        #[test]
        fn gt_and_lte_are_complementary((v, x) in same_class_pair()) {
            let d = doc! {"a": v.clone()};
            let gt = matches(doc! {"a": {"$gt": x.clone()}}, d.clone());
            let lte = matches(doc! {"a": {"$lte": x.clone()}}, d.clone());
            prop_assert!(gt != lte, "{} vs {}", v, x);
            let lt = matches(doc! {"a": {"$lt": x.clone()}}, d.clone());
            let gte = matches(doc! {"a": {"$gte": x.clone()}}, d.clone());
            prop_assert!(lt != gte);
            prop_assert_eq!(matches(doc! {"a": x.clone()}, d.clone()), lte && gte);
            prop_assert_eq!(matches(doc! {"a": {"$not": {"$gt": x.clone()}}}, d.clone()), lte);
            prop_assert_eq!(matches(doc! {"a": {"$in": [x.clone()]}}, d.clone()), lte && gte);
            prop_assert_eq!(matches(doc! {"a": {"$nin": [x.clone()]}}, d), gt || lt);
        }

        #[test]
        fn any_element_decides((v, x) in same_class_pair(), others in prop::collection::vec(any::<i32>(), 0..3)) {
            // A condition on an array holds when it holds for some element
            // (or the array); $ne and $not hold when it holds for none.
            let mut items: Vec<Bson> = others.iter().map(|&i| Bson::Int32(i)).collect();
            items.push(v.clone());
            let d = doc! {"a": items.clone()};
            let any_gt = items.iter().any(|e| matches(doc! {"a": {"$gt": x.clone()}}, doc! {"a": e.clone()}));
            prop_assert_eq!(matches(doc! {"a": {"$gt": x.clone()}}, d.clone()), any_gt);
            prop_assert_eq!(matches(doc! {"a": {"$not": {"$gt": x.clone()}}}, d), !any_gt);
        }
    }

    #[test]
    fn id_candidates_are_the_ids_a_filter_pins() {
        let ids = |f: Document| Filter::parse(&f).unwrap().id_candidates();
        assert_eq!(ids(doc! {"_id": 5}), Some(vec![Bson::Int32(5)]));
        assert_eq!(
            ids(doc! {"a": 1, "_id": {"$eq": "x"}}),
            Some(vec![Bson::String("x".into())])
        );
        assert_eq!(
            ids(doc! {"_id": {"$in": [2, 1, null]}}).map(|v| v.len()),
            Some(3)
        );
        assert_eq!(ids(doc! {"$and": [{"_id": 1}]}), Some(vec![Bson::Int32(1)]));
        assert_eq!(ids(doc! {"_id": {"$gt": 1}}), None);
        let re = Bson::RegularExpression(bson::Regex {
            pattern: "a".try_into().unwrap(),
            options: "".try_into().unwrap(),
        });
        assert_eq!(ids(doc! {"_id": {"$in": [1, re]}}), None);
        assert_eq!(ids(doc! {"_id": {"$ne": 1}}), None);
        assert_eq!(ids(doc! {"$or": [{"_id": 1}, {"_id": 2}]}), None);
        assert_eq!(ids(doc! {"a": 1}), None);
        assert!(Filter::parse(&doc! {}).unwrap().matches_all());
        assert!(Filter::parse(&doc! {"$comment": "x"})
            .unwrap()
            .matches_all());
        assert!(!Filter::parse(&doc! {"a": 1}).unwrap().matches_all());
    }
}
