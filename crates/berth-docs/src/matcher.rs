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

use crate::expr::{self, Expr};
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
        Ok(Filter {
            root: parse_query(filter, 0, true)?,
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
}

/// A node of the filter tree: logical operators over conditions on paths.
#[derive(Debug, Clone)]
enum Node {
    And(Vec<Node>),
    Or(Vec<Node>),
    Nor(Vec<Node>),
    Field { path: Vec<Part>, cond: Cond },
    Expr(Box<Expr>),
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
            Node::Field { path, cond } => cond.eval_path(doc, path),
            // An expression that fails to evaluate matches nothing.
            Node::Expr(e) => match e.eval(doc) {
                Ok(v) if expr::truthy(&v) => Some(MatchDetails::default()),
                _ => None,
            },
            Node::Const(b) => b.then(MatchDetails::default),
        }
    }
}

impl Cond {
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

/// Parses a query document. `top` is false inside `$elemMatch`, where
/// `$expr` has no document to evaluate against.
fn parse_query(doc: &Document, depth: usize, top: bool) -> Result<Node, DocError> {
    check_depth(depth)?;
    let mut nodes = Vec::with_capacity(doc.len());
    for (key, value) in doc {
        if !key.starts_with('$') {
            nodes.push(Node::Field {
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
            "$expr" if top => nodes.push(Node::Expr(Box::new(Expr::parse(value)?))),
            "$expr" => return Err(bad("$expr can only be applied to the top-level document")),
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
    top: bool,
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
        Ok(Leaf::ElemMatchDoc(Box::new(parse_query(d, depth, false)?)))
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
            '\\' => i = translate_escape(&chars, i, &mut out)?,
            '[' => i = translate_class(&chars, i, &mut out)?,
            '(' => i = translate_group(&chars, i, &mut out)?,
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
fn translate_escape(chars: &[char], i: usize, out: &mut String) -> Result<usize, DocError> {
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
        '1'..='9' | 'g' | 'k' => return Err(unsupported("a backreference")),
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
        '0' => {
            // \0 and up to two more octal digits.
            let mut code = 0;
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
