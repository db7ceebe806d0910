//! Update documents: MongoDB's update operators and replacement documents.
//!
//! An update is parsed once ([`Update::parse`]) and applied to each document
//! it targets ([`Update::apply`]). Operator updates are kept as MongoDB keeps
//! them: a tree of the paths they touch. The tree refuses, at parse time, two
//! operators on one path or on a path and its prefix (code 40), and fixes the
//! order in which fields are visited: field names in byte order, numeric
//! names in numeric order, which is where new fields land (`{$set: {z: 1,
//! a: 1}}` appends `a` before `z`, as MongoDB 5.0 and later do).
//!
//! Applying works on a copy: the document is replaced only when every
//! operator succeeded, so a failed update leaves it untouched. `_id` is
//! immutable: any update that would change it fails with code 66, and
//! afterwards `_id` may not be an array, a regular expression or undefined
//! (code 53).
//!
//! Pure: `$currentDate` reads the time from [`ApplyContext::now`]; there is
//! no I/O and no randomness. An upsert's new `_id` is the caller's to make:
//! seed the document with [`upsert_seed`], apply with
//! [`ApplyContext::inserting`] set, then add an `_id` if it still has none.
//!
//! Conditions (`$pull` conditions, `arrayFilters`, and find's `$elemMatch`
//! projection, which borrows `ElementMatcher`) are evaluated here for the
//! comparison subset of the query language (`$eq $ne $gt $gte $lt $lte $in
//! $nin $exists`, `$and $or $nor`, with MongoDB's array traversal) and handed
//! to [`crate::matcher::Filter`] for everything else.

use std::cell::Cell;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use bson::{Bson, Document};

use crate::aggregate::value_size;
use crate::error::codes;
use crate::matcher::Filter;
use crate::order;
use crate::table::DOC_BYTES_MAX;
use crate::DocError;

/// The most nulls an update may add to an array when a numeric path
/// component points past its end (MongoDB's limit).
pub const ARRAY_PADDING_MAX: usize = 1_500_000;

/// MongoDB's CannotBackfillArray (not in [`codes`]: only this module uses it).
const CANNOT_BACKFILL_ARRAY: i32 = 34;

/// MongoDB's code for an update whose result is larger than a document
/// may be (only this module uses it).
const RESULT_TOO_LARGE: i32 = 17419;

/// `$and`/`$or`/`$nor` nesting followed when seeding an upsert or evaluating
/// a condition here; MongoDB refuses filters nested deeper than 100.
const CONDITION_DEPTH_MAX: usize = 100;

/// What applying an update needs to know besides the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplyContext {
    /// The time `$currentDate` sets (a date, or a timestamp of its seconds).
    pub now: bson::DateTime,
    /// The index of the array element the query matched (from
    /// `MatchDetails::array_index`), which the positional `$` stands for.
    pub positional: Option<usize>,
    /// Whether the document is an upsert's new document: `$setOnInsert`
    /// applies only then.
    pub inserting: bool,
}

impl ApplyContext {
    /// An update of an existing document at `now`, without a positional match.
    pub fn new(now: bson::DateTime) -> ApplyContext {
        ApplyContext {
            now,
            positional: None,
            inserting: false,
        }
    }
}

/// A parsed update: operators, or a whole replacement document.
#[derive(Debug, Clone)]
pub enum Update {
    /// `{$set: {...}, $inc: {...}, ...}`: every top-level key an operator.
    Operators(Operators),
    /// A document without operators that replaces the target, keeping its
    /// `_id`.
    Replacement(Document),
}

/// Parsed update operators.
#[derive(Debug, Clone)]
pub struct Operators {
    root: Node,
    array_filters: BTreeMap<String, Condition>,
    positional: bool,
}

impl Operators {
    /// Whether a path uses the positional `$`, so applying needs
    /// [`ApplyContext::positional`].
    pub fn uses_positional(&self) -> bool {
        self.positional
    }
}

impl Update {
    /// Parses an update document and its `arrayFilters`.
    ///
    /// A document whose keys all start with `$` is an operator update; one
    /// with no such key (including `{}`) is a replacement. Everything that can
    /// be checked without the target document is checked here: unknown
    /// operators and malformed operands (codes 9, 2, 14), paths (56, 2, 52),
    /// conflicting paths (40), `arrayFilters` that are malformed (9, 2),
    /// undefined (2) or unused (9), `$unset` or `$rename` of `_id` (66).
    /// As in MongoDB 5.0 and later, an empty operand (`{$set: {}}`) is
    /// accepted and changes nothing.
    pub fn parse(spec: &Document, array_filters: &[Document]) -> Result<Update, DocError> {
        let filters = parse_array_filters(array_filters)?;
        let mut keys = spec.keys();
        let Some(first) = keys.next() else {
            return Ok(Update::Replacement(Document::new()));
        };
        if !first.starts_with('$') {
            if let Some(op) = spec.keys().find(|k| k.starts_with('$')) {
                return Err(DocError::new(
                    codes::DOLLAR_PREFIXED_FIELD_NAME,
                    format!(
                        "The dollar ($) prefixed field '{op}' in '{op}' is not allowed in the \
                         context of an update's replacement document. Consider using an \
                         aggregation pipeline with $replaceWith."
                    ),
                ));
            }
            return Ok(Update::Replacement(spec.clone()));
        }
        let mut parser = Parser {
            root: Node::Object(ObjectNode::default()),
            filters: &filters,
            used_filters: BTreeSet::new(),
            positional: false,
        };
        for (name, operand) in spec {
            let Some(kind) = OperatorKind::from_name(name) else {
                return Err(DocError::parse(format!(
                    "Unknown modifier: {name}. Expected a valid update modifier or \
                     pipeline-style update specified as an array"
                )));
            };
            let Bson::Document(fields) = operand else {
                return Err(DocError::parse(format!(
                    "Modifiers operate on fields but we found type {} instead. For example: \
                     {{$mod: {{<field>: ...}}}} not {{{name}: {}}}",
                    type_name(operand),
                    show(operand)
                )));
            };
            for (path, arg) in fields {
                parser.add(kind, path, arg)?;
            }
        }
        if let Some(unused) = filters.keys().find(|id| !parser.used_filters.contains(*id)) {
            return Err(DocError::parse(format!(
                "The array filter for identifier '{unused}' was not used in the update {}",
                show_document(spec)
            )));
        }
        let Parser {
            root, positional, ..
        } = parser;
        Ok(Update::Operators(Operators {
            root,
            array_filters: filters,
            positional,
        }))
    }

    /// Applies the update to `doc` and says whether it changed.
    ///
    /// On an error `doc` is left as it was. A replacement keeps the
    /// document's `_id` (one that names a different `_id` is code 66); an
    /// operator update may not change `_id` either. An operator update that
    /// writes more than a document may hold (values at its paths and the
    /// nulls padding arrays, over 16 MiB) stops there with code 17419.
    pub fn apply(&self, doc: &mut Document, ctx: &ApplyContext) -> Result<bool, DocError> {
        match self {
            Update::Replacement(replacement) => apply_replacement(replacement, doc),
            Update::Operators(ops) => ops.apply(doc, ctx),
        }
    }
}

/// The document an upsert starts from: the filter's equality conditions
/// (`{a: 1}`, `{a: {$eq: 1}}`, and those inside a top-level `$and`), with
/// dotted paths expanded into embedded documents and `_id` first. Every
/// other condition is ignored. Where two conditions overlap (`{a: 1, "a.b":
/// 2}`, which MongoDB refuses with code 54) the one whose path sorts first
/// wins. For a replacement upsert only the seed's `_id` matters: applying
/// the replacement keeps it and drops the rest.
pub fn upsert_seed(filter: &Document) -> Document {
    let mut equalities = Vec::new();
    collect_equalities(filter, 0, &mut equalities);
    // MongoDB adds the equalities in the order of their paths.
    equalities.sort_by(|a, b| a.0.cmp(&b.0));
    let mut seed = Document::new();
    let mut taken: Vec<String> = Vec::new();
    for (path, value) in equalities {
        let overlaps = taken
            .iter()
            .any(|t| *t == path || is_path_prefix(t, &path) || is_path_prefix(&path, t));
        if overlaps {
            continue;
        }
        let parts: Vec<&str> = path.split('.').collect();
        set_embedded(&mut seed, &parts, value);
        taken.push(path);
    }
    if let Some(id) = seed.remove("_id") {
        let mut with_id = Document::new();
        with_id.insert("_id", id);
        with_id.extend(seed);
        seed = with_id;
    }
    seed
}

fn collect_equalities(filter: &Document, depth: usize, out: &mut Vec<(String, Bson)>) {
    if depth > CONDITION_DEPTH_MAX {
        return;
    }
    for (key, value) in filter {
        if key == "$and" {
            if let Bson::Array(clauses) = value {
                for clause in clauses {
                    if let Bson::Document(clause) = clause {
                        collect_equalities(clause, depth + 1, out);
                    }
                }
            }
            continue;
        }
        if key.split('.').any(|part| part.starts_with('$')) {
            continue;
        }
        match value {
            Bson::Document(d) if d.keys().next().is_some_and(|k| k.starts_with('$')) => {
                if let Some(eq) = d.get("$eq") {
                    out.push((key.clone(), eq.clone()));
                }
            }
            // A regular expression is a pattern to match, not a value.
            Bson::RegularExpression(_) => {}
            _ => out.push((key.clone(), value.clone())),
        }
    }
}

/// Sets `value` at `parts`, creating embedded documents; leaves `doc` alone
/// where a non-document is in the way.
fn set_embedded(doc: &mut Document, parts: &[&str], value: Bson) {
    let Some((last, parents)) = parts.split_last() else {
        return;
    };
    let mut current = doc;
    for part in parents {
        let child = current
            .entry(part.to_string())
            .or_insert_with(|| Bson::Document(Document::new()));
        let Bson::Document(child) = child else {
            return;
        };
        current = child;
    }
    current.insert(last.to_string(), value);
}

/// Whether `prefix` is a proper dotted prefix of `path` (`a` of `a.b`).
fn is_path_prefix(prefix: &str, path: &str) -> bool {
    path.len() > prefix.len() && path.starts_with(prefix) && path.as_bytes()[prefix.len()] == b'.'
}

// ---------------------------------------------------------------------------
// Parsing operators into the path tree.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OperatorKind {
    Set,
    SetOnInsert,
    Unset,
    Inc,
    Mul,
    Min,
    Max,
    Rename,
    CurrentDate,
    Push,
    AddToSet,
    Pop,
    Pull,
    PullAll,
    Bit,
}

impl OperatorKind {
    fn from_name(name: &str) -> Option<OperatorKind> {
        Some(match name {
            "$set" => OperatorKind::Set,
            "$setOnInsert" => OperatorKind::SetOnInsert,
            "$unset" => OperatorKind::Unset,
            "$inc" => OperatorKind::Inc,
            "$mul" => OperatorKind::Mul,
            "$min" => OperatorKind::Min,
            "$max" => OperatorKind::Max,
            "$rename" => OperatorKind::Rename,
            "$currentDate" => OperatorKind::CurrentDate,
            "$push" => OperatorKind::Push,
            "$addToSet" => OperatorKind::AddToSet,
            "$pop" => OperatorKind::Pop,
            "$pull" => OperatorKind::Pull,
            "$pullAll" => OperatorKind::PullAll,
            "$bit" => OperatorKind::Bit,
            _ => return None,
        })
    }
}

/// One component of an update path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Field(String),
    /// `$`: the element the query matched.
    Positional,
    /// `$[]`: every element.
    AllPositional,
    /// `$[id]`: the elements the array filter `id` matches.
    Filtered(String),
}

impl Part {
    fn is_array_update(&self) -> bool {
        matches!(self, Part::AllPositional | Part::Filtered(_))
    }

    fn is_dynamic(&self) -> bool {
        !matches!(self, Part::Field(_))
    }
}

/// A node of the path tree. An object node's children are fields (and the
/// positional `$`); an array node's are `$[]` and `$[id]`.
#[derive(Debug, Clone)]
enum Node {
    Object(ObjectNode),
    Array(BTreeMap<String, Node>),
    Leaf(Op),
}

#[derive(Debug, Clone, Default)]
struct ObjectNode {
    fields: BTreeMap<FieldKey, Node>,
    positional: Option<Box<Node>>,
}

/// A field name ordered as MongoDB visits them: numeric names (array
/// indexes) first and in numeric order, then the rest in byte order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldKey(String);

impl Ord for FieldKey {
    fn cmp(&self, other: &FieldKey) -> Ordering {
        compare_field_names(&self.0, &other.0)
    }
}

impl PartialOrd for FieldKey {
    fn partial_cmp(&self, other: &FieldKey) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

fn is_numeric_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
}

fn compare_field_names(a: &str, b: &str) -> Ordering {
    match (is_numeric_name(a), is_numeric_name(b)) {
        (true, true) => a.len().cmp(&b.len()).then_with(|| a.cmp(b)),
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => a.cmp(b),
    }
}

fn compare_paths(a: &[String], b: &[String]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        let o = compare_field_names(x, y);
        if o != Ordering::Equal {
            return o;
        }
    }
    a.len().cmp(&b.len())
}

/// An operator at the end of a path.
#[derive(Debug, Clone)]
enum Op {
    Set(Bson),
    SetOnInsert(Bson),
    Unset,
    Inc(Bson),
    Mul(Bson),
    Min(Bson),
    Max(Bson),
    CurrentDate(DateKind),
    /// `$rename`'s source: holds the path against conflicts; the move is
    /// done by the `RenameTo` at the destination.
    RenameFrom,
    RenameTo {
        from: Vec<String>,
    },
    Push(Box<Push>),
    AddToSet(Vec<Bson>),
    Pop {
        front: bool,
    },
    Pull(ElementMatcher),
    PullAll(Vec<Bson>),
    Bit(Vec<(BitOp, Bson)>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DateKind {
    Date,
    Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BitOp {
    And,
    Or,
    Xor,
}

#[derive(Debug, Clone)]
struct Push {
    values: Vec<Bson>,
    /// Where to insert; `None` appends.
    position: Option<i64>,
    sort: Option<PushSort>,
    slice: Option<i64>,
}

#[derive(Debug, Clone)]
enum PushSort {
    /// `$sort: 1` or `-1`: by the whole element; `true` is descending.
    Whole(bool),
    /// `$sort: {field: 1, ...}`: by fields of the elements.
    Pattern(Vec<(Vec<String>, bool)>),
}

struct Parser<'f> {
    root: Node,
    filters: &'f BTreeMap<String, Condition>,
    used_filters: BTreeSet<String>,
    positional: bool,
}

impl Parser<'_> {
    fn add(&mut self, kind: OperatorKind, path: &str, arg: &Bson) -> Result<(), DocError> {
        if kind == OperatorKind::Rename {
            return self.add_rename(path, arg);
        }
        let parts = self.parse_path(path)?;
        if kind == OperatorKind::Unset && path == "_id" {
            return Err(immutable_id_error(path));
        }
        let op = parse_operand(kind, path, arg)?;
        self.merge(path, &parts, op)
    }

    fn add_rename(&mut self, from: &str, to: &Bson) -> Result<(), DocError> {
        let from_parts = self.parse_path(from)?;
        self.merge(from, &from_parts, Op::RenameFrom)?;
        let Bson::String(to) = to else {
            return Err(DocError::bad_value(format!(
                "The 'to' field for $rename must be a string: {from}: {}",
                show(to)
            )));
        };
        let to_parts = self.parse_path(to)?;
        if from == to {
            return Err(DocError::bad_value(format!(
                "The source and target field for $rename must differ: {from}: \"{to}\""
            )));
        }
        if is_path_prefix(from, to) || is_path_prefix(to, from) {
            return Err(DocError::bad_value(format!(
                "The source and target field for $rename must not be on the same path: \
                 {from}: \"{to}\""
            )));
        }
        if from_parts.iter().any(Part::is_dynamic) {
            return Err(DocError::bad_value(format!(
                "The source field for $rename may not be dynamic: {from}"
            )));
        }
        if to_parts.iter().any(Part::is_dynamic) {
            return Err(DocError::bad_value(format!(
                "The destination field for $rename may not be dynamic: {to}"
            )));
        }
        // Moving `_id` away always changes it; moving something onto `_id`
        // is caught when applied (it is a no-op when the source is missing).
        if from == "_id" {
            return Err(immutable_id_error(from));
        }
        let from = from.split('.').map(str::to_string).collect();
        self.merge(to, &to_parts, Op::RenameTo { from })
    }

    /// Splits and checks an update path as MongoDB does.
    fn parse_path(&mut self, path: &str) -> Result<Vec<Part>, DocError> {
        if path.is_empty() {
            return Err(DocError::new(
                codes::EMPTY_FIELD_NAME,
                "An empty update path is not valid.",
            ));
        }
        let raw: Vec<&str> = path.split('.').collect();
        if raw.iter().any(|p| p.is_empty()) {
            return Err(DocError::new(
                codes::EMPTY_FIELD_NAME,
                format!(
                    "The update path '{path}' contains an empty field name, which is not \
                     allowed."
                ),
            ));
        }
        let positional_count = raw.iter().filter(|p| **p == "$").count();
        if positional_count > 1 {
            return Err(DocError::bad_value(format!(
                "Too many positional (i.e. '$') elements found in path '{path}'"
            )));
        }
        if raw[0] == "$" {
            return Err(DocError::bad_value(format!(
                "Cannot have positional (i.e. '$') element in the first position in path \
                 '{path}'"
            )));
        }
        let mut parts = Vec::with_capacity(raw.len());
        for (i, p) in raw.iter().enumerate() {
            let part = if *p == "$" {
                self.positional = true;
                Part::Positional
            } else if p.len() >= 3 && p.starts_with("$[") && p.ends_with(']') {
                if i == 0 {
                    return Err(DocError::bad_value(format!(
                        "Cannot have array filter identifier (i.e. '$[<id>]') element in the \
                         first position in path '{path}'"
                    )));
                }
                let id = &p[2..p.len() - 1];
                if id.is_empty() {
                    Part::AllPositional
                } else {
                    if !self.filters.contains_key(id) {
                        return Err(DocError::bad_value(format!(
                            "No array filter found for identifier '{id}' in path '{path}'"
                        )));
                    }
                    self.used_filters.insert(id.to_string());
                    Part::Filtered(id.to_string())
                }
            } else if p.starts_with('$') {
                return Err(DocError::new(
                    codes::DOLLAR_PREFIXED_FIELD_NAME,
                    format!(
                        "The dollar ($) prefixed field '{p}' in '{path}' is not valid for storage."
                    ),
                ));
            } else {
                Part::Field(p.to_string())
            };
            parts.push(part);
        }
        Ok(parts)
    }

    fn merge(&mut self, path: &str, parts: &[Part], op: Op) -> Result<(), DocError> {
        merge_leaf(&mut self.root, path, parts, 0, op)
    }
}

fn immutable_id_error(path: &str) -> DocError {
    DocError::new(
        codes::IMMUTABLE_FIELD,
        format!("Performing an update on the path '{path}' would modify the immutable field '_id'"),
    )
}

fn conflict_error(path: &str, at: &str) -> DocError {
    DocError::new(
        codes::CONFLICTING_UPDATE_OPERATORS,
        format!("Updating the path '{path}' would create a conflict at '{at}'"),
    )
}

/// The dotted prefix of `path` made of its first `n` components.
fn dotted_prefix(path: &str, n: usize) -> &str {
    match path.match_indices('.').nth(n.saturating_sub(1)) {
        Some((i, _)) if n > 0 => &path[..i],
        _ => path,
    }
}

fn has_child(node: &Node, part: &Part) -> bool {
    match (node, part) {
        (Node::Object(o), Part::Field(name)) => o.fields.contains_key(&FieldKey(name.clone())),
        (Node::Object(o), Part::Positional) => o.positional.is_some(),
        (Node::Array(children), Part::AllPositional) => children.contains_key(""),
        (Node::Array(children), Part::Filtered(id)) => children.contains_key(id),
        _ => false,
    }
}

fn child_mut<'n>(node: &'n mut Node, part: &Part) -> Option<&'n mut Node> {
    match (node, part) {
        (Node::Object(o), Part::Field(name)) => o.fields.get_mut(&FieldKey(name.clone())),
        (Node::Object(o), Part::Positional) => o.positional.as_deref_mut(),
        (Node::Array(children), Part::AllPositional) => children.get_mut(""),
        (Node::Array(children), Part::Filtered(id)) => children.get_mut(id),
        _ => None,
    }
}

fn set_child(node: &mut Node, part: &Part, child: Node) {
    match (node, part) {
        (Node::Object(o), Part::Field(name)) => {
            o.fields.insert(FieldKey(name.clone()), child);
        }
        (Node::Object(o), Part::Positional) => o.positional = Some(Box::new(child)),
        (Node::Array(children), Part::AllPositional) => {
            children.insert(String::new(), child);
        }
        (Node::Array(children), Part::Filtered(id)) => {
            children.insert(id.clone(), child);
        }
        // A node's kind is chosen by the part that follows it, so an object
        // node only ever meets field parts and an array node array parts.
        _ => unreachable!("path part {part:?} under the wrong kind of node"),
    }
}

fn merge_leaf(
    node: &mut Node,
    path: &str,
    parts: &[Part],
    i: usize,
    leaf: Op,
) -> Result<(), DocError> {
    let part = &parts[i];
    if i + 1 == parts.len() {
        if has_child(node, part) {
            return Err(conflict_error(path, path));
        }
        set_child(node, part, Node::Leaf(leaf));
        return Ok(());
    }
    let wants_array = parts[i + 1].is_array_update();
    if !has_child(node, part) {
        let child = if wants_array {
            Node::Array(BTreeMap::new())
        } else {
            Node::Object(ObjectNode::default())
        };
        set_child(node, part, child);
    }
    let child = child_mut(node, part).expect("the child was just found or made");
    match (&*child, wants_array) {
        (Node::Array(_), true) | (Node::Object(_), false) => {
            merge_leaf(child, path, parts, i + 1, leaf)
        }
        _ => Err(conflict_error(path, dotted_prefix(path, i + 1))),
    }
}

fn parse_operand(kind: OperatorKind, path: &str, arg: &Bson) -> Result<Op, DocError> {
    Ok(match kind {
        OperatorKind::Set => Op::Set(arg.clone()),
        OperatorKind::SetOnInsert => Op::SetOnInsert(arg.clone()),
        OperatorKind::Unset => Op::Unset,
        OperatorKind::Inc | OperatorKind::Mul => {
            if order::number(arg).is_none() {
                let verb = if kind == OperatorKind::Inc {
                    "increment"
                } else {
                    "multiply"
                };
                return Err(DocError::new(
                    codes::TYPE_MISMATCH,
                    format!(
                        "Cannot {verb} with non-numeric argument: {{{path}: {}}}",
                        show(arg)
                    ),
                ));
            }
            if kind == OperatorKind::Inc {
                Op::Inc(arg.clone())
            } else {
                Op::Mul(arg.clone())
            }
        }
        OperatorKind::Min => Op::Min(arg.clone()),
        OperatorKind::Max => Op::Max(arg.clone()),
        OperatorKind::CurrentDate => Op::CurrentDate(parse_current_date(arg)?),
        OperatorKind::Push => Op::Push(Box::new(parse_push(arg)?)),
        OperatorKind::AddToSet => Op::AddToSet(parse_add_to_set(arg)?),
        OperatorKind::Pop => {
            let n = integer_argument(path, arg)?;
            if n != 1 && n != -1 {
                return Err(DocError::parse(format!("$pop expects 1 or -1, found: {n}")));
            }
            Op::Pop { front: n == -1 }
        }
        OperatorKind::Pull => Op::Pull(ElementMatcher::for_pull(arg)?),
        OperatorKind::PullAll => match arg {
            Bson::Array(values) => Op::PullAll(values.clone()),
            other => {
                return Err(DocError::bad_value(format!(
                    "$pullAll requires an array argument but was given a {}",
                    type_name(other)
                )))
            }
        },
        OperatorKind::Bit => Op::Bit(parse_bit(arg)?),
        OperatorKind::Rename => unreachable!("$rename is parsed by add_rename"),
    })
}

fn parse_current_date(arg: &Bson) -> Result<DateKind, DocError> {
    match arg {
        Bson::Boolean(_) => Ok(DateKind::Date),
        Bson::Document(options) => {
            let mut kind = None;
            for (name, value) in options {
                if name != "$type" {
                    return Err(DocError::bad_value(format!(
                        "Unrecognized $currentDate option: {name}"
                    )));
                }
                match value {
                    Bson::String(s) if s == "date" => kind = Some(DateKind::Date),
                    Bson::String(s) if s == "timestamp" => kind = Some(DateKind::Timestamp),
                    _ => {}
                }
            }
            kind.ok_or_else(|| {
                DocError::bad_value(
                    "The '$type' string field is required to be 'date' or 'timestamp': \
                     {$currentDate: {field : {$type: 'date'}}}",
                )
            })
        }
        other => Err(DocError::bad_value(format!(
            "{} is not valid type for $currentDate. Please use a boolean ('true') or a $type \
             expression ({{$type: 'timestamp/date'}}).",
            type_name(other)
        ))),
    }
}

/// An integral number as MongoDB reads one for `$pop`, `$slice` and
/// `$position`: any numeric type holding an integer that fits an int64.
fn integer_argument(name: &str, v: &Bson) -> Result<i64, DocError> {
    let element = format!("{name}: {}", show(v));
    let f = match v {
        Bson::Int32(i) => return Ok(i64::from(*i)),
        Bson::Int64(i) => return Ok(*i),
        Bson::Double(f) => *f,
        Bson::Decimal128(d) => order::decimal_to_f64(d),
        _ => {
            return Err(DocError::bad_value(format!(
                "Expected a number in: {element}"
            )))
        }
    };
    if f.is_nan() {
        return Err(DocError::bad_value(format!(
            "Expected an integer, but found NaN in: {element}"
        )));
    }
    if f.fract() != 0.0 {
        return Err(DocError::bad_value(format!(
            "Expected an integer: {element}"
        )));
    }
    // 2^63 as a double: the first value an int64 cannot hold.
    if !(-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&f) {
        return Err(DocError::bad_value(format!(
            "Cannot represent as a 64-bit integer: {element}"
        )));
    }
    Ok(f as i64)
}

fn parse_push(arg: &Bson) -> Result<Push, DocError> {
    let Bson::Document(clauses) = arg else {
        return Ok(Push {
            values: vec![arg.clone()],
            position: None,
            sort: None,
            slice: None,
        });
    };
    if !clauses.contains_key("$each") {
        return Ok(Push {
            values: vec![arg.clone()],
            position: None,
            sort: None,
            slice: None,
        });
    }
    let mut push = Push {
        values: Vec::new(),
        position: None,
        sort: None,
        slice: None,
    };
    for (name, value) in clauses {
        match name.as_str() {
            "$each" => match value {
                Bson::Array(values) => push.values = values.clone(),
                other => {
                    return Err(DocError::bad_value(format!(
                        "The argument to $each in $push must be an array but it was of type: {}",
                        type_name(other)
                    )))
                }
            },
            "$slice" => {
                push.slice = Some(integer_argument(name, value).map_err(|_| {
                    DocError::bad_value(format!(
                        "The value for $slice must be an integer value but was given type: {}",
                        type_name(value)
                    ))
                })?)
            }
            "$position" => {
                push.position = Some(integer_argument(name, value).map_err(|_| {
                    DocError::bad_value(format!(
                        "The value for $position must be an integer value, not of type: {}",
                        type_name(value)
                    ))
                })?)
            }
            "$sort" => push.sort = Some(parse_push_sort(value)?),
            other => {
                return Err(DocError::bad_value(format!(
                    "Unrecognized clause in $push: {other}"
                )))
            }
        }
    }
    Ok(push)
}

fn sort_direction(v: &Bson) -> Option<bool> {
    let direction = match order::number(v)? {
        order::Num::Int(i) => i as f64,
        order::Num::Float(f) => f,
    };
    if direction == 1.0 {
        Some(false)
    } else if direction == -1.0 {
        Some(true)
    } else {
        None
    }
}

fn parse_push_sort(v: &Bson) -> Result<PushSort, DocError> {
    const BAD_DIRECTION: &str = "The $sort element value must be either 1 or -1";
    match v {
        Bson::Document(pattern) => {
            if pattern.is_empty() {
                return Err(DocError::bad_value(
                    "The $sort pattern is empty when it should be a set of fields.",
                ));
            }
            let mut fields = Vec::with_capacity(pattern.len());
            for (field, direction) in pattern {
                let descending =
                    sort_direction(direction).ok_or_else(|| DocError::bad_value(BAD_DIRECTION))?;
                if field.is_empty() {
                    return Err(DocError::bad_value("The $sort field cannot be empty"));
                }
                if field.split('.').any(str::is_empty) {
                    return Err(DocError::bad_value(format!(
                        "The $sort field is a dotted field but has an empty part: {field}"
                    )));
                }
                fields.push((field.split('.').map(str::to_string).collect(), descending));
            }
            Ok(PushSort::Pattern(fields))
        }
        _ if order::number(v).is_some() => sort_direction(v)
            .map(PushSort::Whole)
            .ok_or_else(|| DocError::bad_value(BAD_DIRECTION)),
        _ => Err(DocError::bad_value(
            "The $sort is invalid: use 1/-1 to sort the whole element, or {field:1/-1} to sort \
             embedded fields",
        )),
    }
}

fn parse_add_to_set(arg: &Bson) -> Result<Vec<Bson>, DocError> {
    let values = match arg {
        Bson::Document(d) if d.keys().next().is_some_and(|k| k == "$each") => {
            let each = d.get("$each").expect("the first key");
            let Bson::Array(values) = each else {
                return Err(DocError::new(
                    codes::TYPE_MISMATCH,
                    format!(
                        "The argument to $each in $addToSet must be an array but it was of type {}",
                        type_name(each)
                    ),
                ));
            };
            if d.len() > 1 {
                return Err(DocError::bad_value(format!(
                    "Found unexpected fields after $each in $addToSet: {}",
                    show_document(d)
                )));
            }
            values.clone()
        }
        _ => vec![arg.clone()],
    };
    // Duplicates among the values themselves are added once.
    let mut unique: Vec<Bson> = Vec::with_capacity(values.len());
    for v in values {
        if !unique.iter().any(|u| order::equal(u, &v)) {
            unique.push(v);
        }
    }
    Ok(unique)
}

fn parse_bit(arg: &Bson) -> Result<Vec<(BitOp, Bson)>, DocError> {
    let Bson::Document(ops) = arg else {
        return Err(DocError::bad_value(format!(
            "The $bit modifier is not compatible with a {}. You must pass in an embedded \
             document: {{$bit: {{field: {{and/or/xor: #}}}}",
            type_name(arg)
        )));
    };
    let mut parsed = Vec::with_capacity(ops.len());
    for (name, operand) in ops {
        let op = match name.as_str() {
            "and" => BitOp::And,
            "or" => BitOp::Or,
            "xor" => BitOp::Xor,
            _ => {
                return Err(DocError::bad_value(format!(
                    "The $bit modifier only supports 'and', 'or', and 'xor', not '{name}' which \
                     is an unknown operator: {{{name}: {}}}",
                    show(operand)
                )))
            }
        };
        if !matches!(operand, Bson::Int32(_) | Bson::Int64(_)) {
            return Err(DocError::bad_value(format!(
                "The $bit modifier field must be an Integer(32/64 bit); a '{}' is not supported \
                 here: {{{name}: {}}}",
                type_name(operand),
                show(operand)
            )));
        }
        parsed.push((op, operand.clone()));
    }
    if parsed.is_empty() {
        return Err(DocError::bad_value(
            "You must pass in at least one bitwise operation. The format is: {$bit: {field: \
             {and/or/xor: #}}",
        ));
    }
    Ok(parsed)
}

fn parse_array_filters(filters: &[Document]) -> Result<BTreeMap<String, Condition>, DocError> {
    let mut parsed = BTreeMap::new();
    for filter in filters {
        let mut ids: Vec<&str> = Vec::new();
        filter_identifiers(filter, 0, &mut ids);
        let Some(id) = ids.first().copied() else {
            return Err(DocError::parse(
                "Cannot use an expression without a top-level field name in arrayFilters",
            ));
        };
        if let Some(other) = ids.iter().find(|other| **other != id) {
            return Err(DocError::parse(format!(
                "Error parsing array filter :: caused by :: Expected a single top-level field \
                 name, found '{id}' and '{other}'"
            )));
        }
        let mut chars = id.chars();
        let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase())
            && chars.all(|c| c.is_ascii_alphanumeric());
        if !valid {
            return Err(DocError::bad_value(format!(
                "Error parsing array filter :: caused by :: The top-level field name must be an \
                 alphanumeric string beginning with a lowercase letter, found '{id}'"
            )));
        }
        if parsed.contains_key(id) {
            return Err(DocError::parse(format!(
                "Found multiple array filters with the same top-level field name {id}"
            )));
        }
        let condition = Condition::parse(filter).map_err(|e| {
            DocError::new(
                e.code,
                format!("Error parsing array filter :: caused by :: {}", e.message),
            )
        })?;
        parsed.insert(id.to_string(), condition);
    }
    Ok(parsed)
}

/// The top-level names an array filter's conditions are on (the part of each
/// path before its first dot), looking inside `$and`, `$or` and `$nor`.
fn filter_identifiers<'d>(filter: &'d Document, depth: usize, out: &mut Vec<&'d str>) {
    if depth > CONDITION_DEPTH_MAX {
        return;
    }
    for (key, value) in filter {
        if matches!(key.as_str(), "$and" | "$or" | "$nor") {
            if let Bson::Array(clauses) = value {
                for clause in clauses {
                    if let Bson::Document(clause) = clause {
                        filter_identifiers(clause, depth + 1, out);
                    }
                }
            }
        } else if !key.starts_with('$') {
            out.push(key.split('.').next().unwrap_or(""));
        }
    }
}

// ---------------------------------------------------------------------------
// Applying.

impl Operators {
    fn apply(&self, doc: &mut Document, ctx: &ApplyContext) -> Result<bool, DocError> {
        // Resolve `$`, `$[]` and `$[id]` against the document as it is, then
        // visit the concrete paths in MongoDB's order. Resolving first is
        // sound: the path tree keeps every other operator off the arrays
        // that `$[]` and `$[id]` walk.
        let mut targets: Vec<(Vec<String>, &Op)> = Vec::new();
        let mut prefix = Vec::new();
        self.expand(&self.root, doc, &mut prefix, ctx, &mut targets)?;
        targets.sort_by(|a, b| compare_paths(&a.0, &b.0));
        for pair in targets.windows(2) {
            let (a, b) = (&pair[0].0, &pair[1].0);
            if b.len() >= a.len() && b[..a.len()] == a[..] {
                return Err(DocError::new(
                    codes::CONFLICTING_UPDATE_OPERATORS,
                    format!("Update created a conflict at '{}'", a.join(".")),
                ));
            }
        }

        let id_shown = match doc.get("_id") {
            Some(id) => format!("_id: {}", show(id)),
            None => "no id".to_string(),
        };
        let mut work = doc.clone();
        let mut changed = false;
        // What the update wrote, in BSON bytes: the values at its paths
        // after each operator, and the nulls it padded arrays with. The
        // paths are disjoint (checked above), so this is at most the
        // result's size; past the largest document the result could not be
        // stored, and building it on would let one small update fill memory
        // (`$[]` copying a value into every element, many paths each
        // padding an array by `ARRAY_PADDING_MAX`).
        let padded_bytes = Cell::new(0usize);
        let mut written_bytes = 0usize;
        for (path, op) in &targets {
            let env = Env {
                ctx,
                id: &id_shown,
                path: path.join("."),
                padded_bytes: &padded_bytes,
            };
            changed |= apply_leaf(&mut work, path, op, &env)?;
            // A `$rename`'s value counts where it lands, not where it left
            // (its source may come first in the order).
            if !matches!(op, Op::RenameFrom) {
                written_bytes =
                    written_bytes.saturating_add(value_at(&work, path).map_or(0, value_size));
            }
            if written_bytes.saturating_add(padded_bytes.get()) > DOC_BYTES_MAX {
                return Err(DocError::new(
                    RESULT_TOO_LARGE,
                    format!(
                        "Resulting document after update is larger than {DOC_BYTES_MAX} \
                         ({id_shown})"
                    ),
                ));
            }
        }
        if !changed {
            return Ok(false);
        }
        if let Some(old_id) = doc.get("_id") {
            match work.get("_id") {
                Some(new_id) if identical(old_id, new_id) => {}
                Some(_) => return Err(immutable_id_error("_id")),
                None => {
                    return Err(DocError::new(
                        codes::IMMUTABLE_FIELD,
                        "After applying the update, the (immutable) field '_id' was found to \
                         have been removed.",
                    ))
                }
            }
        }
        validate_id(&work)?;
        *doc = work;
        Ok(true)
    }

    fn expand<'u>(
        &'u self,
        node: &'u Node,
        doc: &Document,
        prefix: &mut Vec<String>,
        ctx: &ApplyContext,
        out: &mut Vec<(Vec<String>, &'u Op)>,
    ) -> Result<(), DocError> {
        match node {
            Node::Leaf(leaf) => out.push((prefix.clone(), leaf)),
            Node::Object(object) => {
                if let Some(positional) = &object.positional {
                    let Some(index) = ctx.positional else {
                        return Err(DocError::bad_value(
                            "The positional operator did not find the match needed from the \
                             query.",
                        ));
                    };
                    prefix.push(index.to_string());
                    self.expand(positional, doc, prefix, ctx, out)?;
                    prefix.pop();
                }
                for (name, child) in &object.fields {
                    prefix.push(name.0.clone());
                    self.expand(child, doc, prefix, ctx, out)?;
                    prefix.pop();
                }
            }
            Node::Array(children) => {
                let items = match lookup(doc, prefix) {
                    Some(Bson::Array(items)) => items,
                    Some(other) => {
                        let name = prefix.last().map(String::as_str).unwrap_or("");
                        return Err(DocError::bad_value(format!(
                            "Cannot apply array updates to non-array element {name}: {}",
                            show(other)
                        )));
                    }
                    None => {
                        return Err(DocError::bad_value(format!(
                            "The path '{}' must exist in the document in order to apply array \
                             updates.",
                            prefix.join(".")
                        )))
                    }
                };
                for (index, item) in items.iter().enumerate() {
                    for (id, child) in children {
                        let selected = id.is_empty()
                            || self
                                .array_filters
                                .get(id)
                                .is_some_and(|filter| filter.matches_named(id, item));
                        if selected {
                            prefix.push(index.to_string());
                            self.expand(child, doc, prefix, ctx, out)?;
                            prefix.pop();
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// The value at a path, following array indexes but not traversing arrays.
fn lookup<'d>(doc: &'d Document, path: &[String]) -> Option<&'d Bson> {
    let (first, rest) = path.split_first()?;
    let mut current = doc.get(first)?;
    for part in rest {
        current = match current {
            Bson::Document(d) => d.get(part)?,
            Bson::Array(items) => items.get(array_index(part)?)?,
            _ => return None,
        };
    }
    Some(current)
}

/// An array index as an update path spells one: decimal digits.
fn array_index(part: &str) -> Option<usize> {
    if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    part.parse().ok()
}

/// The value at a concrete path, if there is one.
fn value_at<'d>(doc: &'d Document, path: &[String]) -> Option<&'d Bson> {
    let (first, rest) = path.split_first()?;
    let mut v = doc.get(first)?;
    for part in rest {
        v = match v {
            Bson::Document(d) => d.get(part)?,
            Bson::Array(items) => items.get(array_index(part)?)?,
            _ => return None,
        };
    }
    Some(v)
}

/// The BSON bytes of null elements at array indexes `from..to`: a type
/// byte, the index as a decimal key, its terminator.
fn null_elements_bytes(from: usize, to: usize) -> usize {
    let mut bytes = 0;
    let mut start = from;
    let (mut digits, mut band_end) = (1, 10usize);
    while start < to {
        if start >= band_end {
            digits += 1;
            band_end = band_end.saturating_mul(10);
            continue;
        }
        let end = to.min(band_end);
        bytes += (end - start) * (2 + digits);
        start = end;
    }
    bytes
}

/// What error messages need while one operator is applied.
struct Env<'a> {
    ctx: &'a ApplyContext,
    /// `_id: <value>` of the document, as messages show it.
    id: &'a str,
    /// The concrete dotted path being updated.
    path: String,
    /// BSON bytes of the nulls the update padded arrays with so far.
    padded_bytes: &'a Cell<usize>,
}

impl Env<'_> {
    fn field(&self) -> &str {
        self.path.rsplit('.').next().unwrap_or("")
    }
}

fn apply_leaf(work: &mut Document, path: &[String], op: &Op, env: &Env) -> Result<bool, DocError> {
    match op {
        Op::RenameFrom => Ok(false),
        Op::SetOnInsert(_) if !env.ctx.inserting => Ok(false),
        Op::RenameTo { from } => rename(work, from, path, env),
        _ => modify(&mut Container::Doc(work), "", path, 0, op, env),
    }
}

/// A document or array that a path walks through.
enum Container<'a> {
    Doc(&'a mut Document),
    Arr(&'a mut Vec<Bson>),
}

impl Container<'_> {
    fn get_mut(&mut self, key: &str) -> Option<&mut Bson> {
        match self {
            Container::Doc(d) => d.get_mut(key),
            Container::Arr(items) => items.get_mut(array_index(key)?),
        }
    }

    fn show(&self) -> String {
        match self {
            Container::Doc(d) => show_document(d),
            Container::Arr(items) => show_array(items),
        }
    }
}

/// Applies `op` at `path[i..]` under `c` (named `name` in its parent).
fn modify(
    c: &mut Container<'_>,
    name: &str,
    path: &[String],
    i: usize,
    op: &Op,
    env: &Env,
) -> Result<bool, DocError> {
    let key = path[i].as_str();
    let last = i + 1 == path.len();
    if last && matches!(op, Op::Unset) {
        return Ok(match c {
            Container::Doc(d) => d.remove(key).is_some(),
            // Unsetting an array element leaves a null in its place.
            Container::Arr(items) => match array_index(key).and_then(|n| items.get_mut(n)) {
                Some(Bson::Null) | None => false,
                Some(item) => {
                    *item = Bson::Null;
                    true
                }
            },
        });
    }
    if let Some(child) = c.get_mut(key) {
        if last {
            return op.update(child, env);
        }
        return match child {
            Bson::Document(d) => modify(&mut Container::Doc(d), key, path, i + 1, op, env),
            Bson::Array(items) => modify(&mut Container::Arr(items), key, path, i + 1, op, env),
            scalar => {
                let element = format!("{key}: {}", show(scalar));
                not_viable(op, &path[i + 1], &element, env)
            }
        };
    }
    // `key` is missing from `c`.
    if matches!(op, Op::Unset) {
        return Ok(false);
    }
    let is_array = matches!(c, Container::Arr(_));
    if is_array && array_index(key).is_none() {
        let element = format!("{name}: {}", c.show());
        return not_viable(op, key, &element, env);
    }
    let Some(value) = op.create(env)? else {
        return Ok(false);
    };
    let value = path[i + 1..].iter().rev().fold(value, |inner, part| {
        let mut d = Document::new();
        d.insert(part.clone(), inner);
        Bson::Document(d)
    });
    match c {
        Container::Doc(d) => {
            d.insert(key, value);
        }
        Container::Arr(items) => {
            let index = array_index(key).expect("checked above");
            // The element is missing, so the index is at or past the end.
            debug_assert!(index >= items.len());
            let padding = index.saturating_sub(items.len());
            if padding > ARRAY_PADDING_MAX {
                return Err(DocError::new(
                    CANNOT_BACKFILL_ARRAY,
                    format!("can't backfill more than {ARRAY_PADDING_MAX} elements"),
                ));
            }
            env.padded_bytes
                .set(env.padded_bytes.get() + null_elements_bytes(items.len(), index));
            items.resize(index, Bson::Null);
            items.push(value);
        }
    }
    Ok(true)
}

/// The path cannot go on past `element` (a scalar, or an array met with a
/// field name): an error for operators that would create the rest, nothing
/// for `$unset`.
fn not_viable(op: &Op, next: &str, element: &str, env: &Env) -> Result<bool, DocError> {
    if matches!(op, Op::Unset) {
        return Ok(false);
    }
    let message = if op.creates() {
        format!("Cannot create field '{next}' in element {{{element}}}")
    } else {
        format!(
            "Cannot use the part ({next}) of ({}) to traverse the element ({{{element}}})",
            env.path
        )
    };
    Err(DocError::new(codes::PATH_NOT_VIABLE, message))
}

fn rename(
    work: &mut Document,
    from: &[String],
    to: &[String],
    env: &Env,
) -> Result<bool, DocError> {
    let Some(value) = rename_source(work, from, env)? else {
        return Ok(false);
    };
    // The destination may not lie inside an array either.
    let mut current: &Document = work;
    for part in &to[..to.len() - 1] {
        match current.get(part) {
            Some(Bson::Document(d)) => current = d,
            Some(Bson::Array(_)) => {
                return Err(DocError::bad_value(format!(
                    "The destination field cannot be an array element, '{}' in doc with {} has \
                     an array field called '{part}'",
                    to.join("."),
                    env.id
                )))
            }
            _ => break,
        }
    }
    let to_env = Env {
        ctx: env.ctx,
        id: env.id,
        path: to.join("."),
        padded_bytes: env.padded_bytes,
    };
    modify(
        &mut Container::Doc(work),
        "",
        to,
        0,
        &Op::Set(value),
        &to_env,
    )?;
    let from_env = Env {
        ctx: env.ctx,
        id: env.id,
        path: from.join("."),
        padded_bytes: env.padded_bytes,
    };
    modify(
        &mut Container::Doc(work),
        "",
        from,
        0,
        &Op::Unset,
        &from_env,
    )?;
    Ok(true)
}

/// The value `$rename` moves, if its source exists.
fn rename_source(doc: &Document, from: &[String], env: &Env) -> Result<Option<Bson>, DocError> {
    let dotted = from.join(".");
    let (first, rest) = from.split_first().expect("a path has a first part");
    let Some(mut current) = doc.get(first) else {
        return Ok(None);
    };
    let mut name = first.as_str();
    let mut array_on_path = None;
    for part in rest {
        let child = match current {
            Bson::Document(d) => d.get(part),
            Bson::Array(items) => {
                array_on_path = Some(name);
                match array_index(part) {
                    Some(n) => items.get(n),
                    None => return Err(rename_not_viable(part, &dotted, name, current)),
                }
            }
            other => return Err(rename_not_viable(part, &dotted, name, other)),
        };
        let Some(child) = child else {
            return Ok(None);
        };
        current = child;
        name = part;
    }
    if let Some(array) = array_on_path {
        return Err(DocError::bad_value(format!(
            "The source field cannot be an array element, '{dotted}' in doc with {} has an \
             array field called '{array}'",
            env.id
        )));
    }
    Ok(Some(current.clone()))
}

fn rename_not_viable(part: &str, dotted: &str, name: &str, value: &Bson) -> DocError {
    DocError::new(
        codes::PATH_NOT_VIABLE,
        format!(
            "cannot use the part ({part} of {dotted}) to traverse the element ({{{name}: {}}})",
            show(value)
        ),
    )
}

impl Op {
    /// Whether the operator creates a missing field (as opposed to `$unset`,
    /// `$pop`, `$pull` and `$pullAll`, which leave a missing field alone).
    fn creates(&self) -> bool {
        !matches!(
            self,
            Op::Unset | Op::Pop { .. } | Op::Pull(_) | Op::PullAll(_) | Op::RenameFrom
        )
    }

    /// The value for a missing field, or `None` to leave it missing.
    fn create(&self, env: &Env) -> Result<Option<Bson>, DocError> {
        Ok(Some(match self {
            Op::Set(v) | Op::SetOnInsert(v) | Op::Inc(v) | Op::Min(v) | Op::Max(v) => v.clone(),
            Op::Mul(v) => zero_like(v),
            Op::CurrentDate(kind) => current_date(*kind, env.ctx),
            Op::Push(push) => {
                let mut items = Vec::new();
                perform_push(&mut items, push);
                Bson::Array(items)
            }
            Op::AddToSet(values) => Bson::Array(values.clone()),
            Op::Bit(ops) => apply_bits(Bson::Int32(0), ops)?,
            Op::Unset
            | Op::Pop { .. }
            | Op::Pull(_)
            | Op::PullAll(_)
            | Op::RenameFrom
            | Op::RenameTo { .. } => return Ok(None),
        }))
    }

    /// Updates an existing value; says whether it changed.
    fn update(&self, v: &mut Bson, env: &Env) -> Result<bool, DocError> {
        match self {
            Op::Set(x) | Op::SetOnInsert(x) => Ok(replace(v, x.clone())),
            Op::Inc(x) | Op::Mul(x) => {
                let (name, multiply) = match self {
                    Op::Inc(_) => ("$inc", false),
                    _ => ("$mul", true),
                };
                if order::number(v).is_none() {
                    return Err(DocError::new(
                        codes::TYPE_MISMATCH,
                        format!(
                            "Cannot apply {name} to a value of non-numeric type. {{{}}} has the \
                             field '{}' of non-numeric type {}",
                            env.id,
                            env.field(),
                            type_name(v)
                        ),
                    ));
                }
                let result = arithmetic(v, x, multiply).map_err(|e| match e {
                    ArithmeticError::Overflow => DocError::bad_value(format!(
                        "Failed to apply {name} operations to current value ({}) for document \
                         {{{}}}",
                        debug_number(v),
                        env.id
                    )),
                    ArithmeticError::Decimal => {
                        DocError::bad_value(format!("{name} on decimal128 values is not supported"))
                    }
                })?;
                Ok(replace(v, result))
            }
            Op::Min(x) => Ok(order::compare(x, v) == Ordering::Less && replace(v, x.clone())),
            Op::Max(x) => Ok(order::compare(x, v) == Ordering::Greater && replace(v, x.clone())),
            Op::CurrentDate(kind) => Ok(replace(v, current_date(*kind, env.ctx))),
            Op::Push(push) => {
                let Bson::Array(items) = v else {
                    return Err(DocError::bad_value(format!(
                        "The field '{}' must be an array but is of type {} in document {{{}}}",
                        env.path,
                        type_name(v),
                        env.id
                    )));
                };
                Ok(perform_push(items, push))
            }
            Op::AddToSet(values) => {
                let Bson::Array(items) = v else {
                    return Err(DocError::bad_value(format!(
                        "Cannot apply $addToSet to non-array field. Field named '{}' has \
                         non-array type {}",
                        env.field(),
                        type_name(v)
                    )));
                };
                let mut changed = false;
                for value in values {
                    if !items.iter().any(|item| order::equal(item, value)) {
                        items.push(value.clone());
                        changed = true;
                    }
                }
                Ok(changed)
            }
            Op::Pop { front } => {
                let Bson::Array(items) = v else {
                    return Err(DocError::new(
                        codes::TYPE_MISMATCH,
                        format!(
                            "Path '{}' contains an element of non-array type '{}'",
                            env.path,
                            type_name(v)
                        ),
                    ));
                };
                if items.is_empty() {
                    return Ok(false);
                }
                if *front {
                    items.remove(0);
                } else {
                    items.pop();
                }
                Ok(true)
            }
            Op::Pull(_) | Op::PullAll(_) => {
                let Bson::Array(items) = v else {
                    return Err(DocError::bad_value(
                        "Cannot apply $pull to a non-array value",
                    ));
                };
                let before = items.len();
                match self {
                    Op::Pull(matcher) => items.retain(|item| !matcher.matches(item)),
                    Op::PullAll(values) => {
                        items.retain(|item| !values.iter().any(|v| order::equal(item, v)))
                    }
                    _ => unreachable!("matched above"),
                }
                Ok(items.len() != before)
            }
            Op::Bit(ops) => {
                if !matches!(v, Bson::Int32(_) | Bson::Int64(_)) {
                    return Err(DocError::bad_value(format!(
                        "Cannot apply $bit to a value of non-integral type.{} has the field {} of \
                         non-integer type {}",
                        env.id,
                        env.field(),
                        type_name(v)
                    )));
                }
                let result = apply_bits(v.clone(), ops)?;
                Ok(replace(v, result))
            }
            Op::Unset | Op::RenameFrom | Op::RenameTo { .. } => {
                unreachable!("handled before reaching a value")
            }
        }
    }
}

/// Replaces `v` unless the new value is identical; says whether it did.
fn replace(v: &mut Bson, new: Bson) -> bool {
    if identical(v, &new) {
        return false;
    }
    *v = new;
    true
}

fn current_date(kind: DateKind, ctx: &ApplyContext) -> Bson {
    match kind {
        DateKind::Date => Bson::DateTime(ctx.now),
        // MongoDB takes a timestamp from its cluster clock; here it is the
        // seconds of `now` with increment 1 (the clock is the caller's).
        DateKind::Timestamp => {
            let seconds = ctx.now.timestamp_millis().div_euclid(1000);
            Bson::Timestamp(bson::Timestamp {
                time: u32::try_from(seconds.max(0)).unwrap_or(u32::MAX),
                increment: 1,
            })
        }
    }
}

/// Zero of `v`'s numeric type: what `$mul` sets a missing field to.
fn zero_like(v: &Bson) -> Bson {
    match v {
        Bson::Int64(_) => Bson::Int64(0),
        Bson::Double(_) => Bson::Double(0.0),
        Bson::Decimal128(_) => Bson::Decimal128("0".parse().expect("a valid decimal")),
        _ => Bson::Int32(0),
    }
}

enum ArithmeticError {
    /// An int64 result out of range: MongoDB refuses rather than wrap.
    Overflow,
    /// decimal128 arithmetic is not implemented.
    Decimal,
}

/// `a + b` or `a * b` with MongoDB's types: int32 results that overflow
/// become int64, int64 results that overflow are an error, and a double on
/// either side makes a double.
fn arithmetic(a: &Bson, b: &Bson, multiply: bool) -> Result<Bson, ArithmeticError> {
    if matches!(a, Bson::Decimal128(_)) || matches!(b, Bson::Decimal128(_)) {
        return Err(ArithmeticError::Decimal);
    }
    Ok(match (a, b) {
        (Bson::Int32(x), Bson::Int32(y)) => {
            let wide = if multiply {
                i64::from(*x) * i64::from(*y)
            } else {
                i64::from(*x) + i64::from(*y)
            };
            match i32::try_from(wide) {
                Ok(narrow) => Bson::Int32(narrow),
                Err(_) => Bson::Int64(wide),
            }
        }
        (Bson::Int32(_) | Bson::Int64(_), Bson::Int32(_) | Bson::Int64(_)) => {
            let (x, y) = (as_i64(a), as_i64(b));
            let result = if multiply {
                x.checked_mul(y)
            } else {
                x.checked_add(y)
            };
            Bson::Int64(result.ok_or(ArithmeticError::Overflow)?)
        }
        _ => {
            let (x, y) = (as_f64(a), as_f64(b));
            Bson::Double(if multiply { x * y } else { x + y })
        }
    })
}

fn as_i64(v: &Bson) -> i64 {
    match v {
        Bson::Int32(i) => i64::from(*i),
        Bson::Int64(i) => *i,
        _ => 0,
    }
}

fn as_f64(v: &Bson) -> f64 {
    match order::number(v) {
        Some(order::Num::Int(i)) => i as f64,
        Some(order::Num::Float(f)) => f,
        None => 0.0,
    }
}

/// A number as MongoDB's arithmetic errors show it: `(NumberLong)5`.
fn debug_number(v: &Bson) -> String {
    match v {
        Bson::Int32(i) => format!("(NumberInt){i}"),
        Bson::Int64(i) => format!("(NumberLong){i}"),
        Bson::Double(f) => format!("(NumberDouble){f}"),
        Bson::Decimal128(d) => format!("(NumberDecimal){d}"),
        other => show(other),
    }
}

fn apply_bits(value: Bson, ops: &[(BitOp, Bson)]) -> Result<Bson, DocError> {
    let mut value = value;
    for (op, operand) in ops {
        let combine = |x: i64, y: i64| match op {
            BitOp::And => x & y,
            BitOp::Or => x | y,
            BitOp::Xor => x ^ y,
        };
        value = match (&value, operand) {
            (Bson::Int32(x), Bson::Int32(y)) => {
                let r = combine(i64::from(*x), i64::from(*y));
                Bson::Int32(i32::try_from(r).expect("bitwise ops of int32s are int32s"))
            }
            (Bson::Int32(_) | Bson::Int64(_), Bson::Int32(_) | Bson::Int64(_)) => {
                Bson::Int64(combine(as_i64(&value), as_i64(operand)))
            }
            _ => {
                return Err(DocError::bad_value(format!(
                    "Failed to apply $bit operations to current value: {}",
                    debug_number(&value)
                )))
            }
        };
    }
    Ok(value)
}

/// `$push`: insert at `$position`, then `$sort`, then `$slice`. Says whether
/// the array changed (a `$sort` counts as a change, as in MongoDB).
fn perform_push(items: &mut Vec<Bson>, push: &Push) -> bool {
    let mut changed = false;
    if !push.values.is_empty() {
        let len = i64::try_from(items.len()).unwrap_or(i64::MAX);
        let position = push.position.unwrap_or(i64::MAX);
        let at = if len == 0 || position > len {
            len
        } else if position > 0 {
            position
        } else if position < 0 && position > -len {
            len + position
        } else {
            0
        };
        let at = usize::try_from(at).expect("a position within the array");
        items.splice(at..at, push.values.iter().cloned());
        changed = true;
    }
    if let Some(sort) = &push.sort {
        match sort {
            PushSort::Whole(descending) => items.sort_by(|a, b| {
                let o = order::compare(a, b);
                if *descending {
                    o.reverse()
                } else {
                    o
                }
            }),
            PushSort::Pattern(fields) => items.sort_by(|a, b| compare_by_pattern(a, b, fields)),
        }
        changed = true;
    }
    if let Some(slice) = push.slice {
        let keep = usize::try_from(slice.unsigned_abs()).unwrap_or(usize::MAX);
        if items.len() > keep {
            if slice >= 0 {
                items.truncate(keep);
            } else {
                items.drain(..items.len() - keep);
            }
            changed = true;
        }
    }
    changed
}

fn compare_by_pattern(a: &Bson, b: &Bson, fields: &[(Vec<String>, bool)]) -> Ordering {
    for (path, descending) in fields {
        let x = sort_key(a, path);
        let y = sort_key(b, path);
        let o = order::compare(x, y);
        if o != Ordering::Equal {
            return if *descending { o.reverse() } else { o };
        }
    }
    Ordering::Equal
}

/// A field of an element for `$sort`: followed through documents and array
/// indexes, null when missing (a non-document element has no fields).
fn sort_key<'a>(element: &'a Bson, path: &[String]) -> &'a Bson {
    const NULL: &Bson = &Bson::Null;
    let mut current = element;
    for part in path {
        current = match current {
            Bson::Document(d) => d.get(part),
            Bson::Array(items) => array_index(part).and_then(|i| items.get(i)),
            _ => None,
        }
        .unwrap_or(NULL);
    }
    current
}

fn apply_replacement(replacement: &Document, doc: &mut Document) -> Result<bool, DocError> {
    let new_doc = match (doc.get("_id"), replacement.get("_id")) {
        (Some(old), Some(new)) => {
            if !order::equal(old, new) {
                return Err(DocError::new(
                    codes::IMMUTABLE_FIELD,
                    format!(
                        "After applying the update, the (immutable) field '_id' was found to \
                         have been altered to _id: {}",
                        show(new)
                    ),
                ));
            }
            // Equal by value (1 and 1.0): keep the stored `_id` exactly, so
            // the document's key does not change type.
            let mut d = replacement.clone();
            d.insert("_id", old.clone());
            d
        }
        (Some(old), None) => {
            let mut d = Document::new();
            d.insert("_id", old.clone());
            d.extend(replacement.clone());
            d
        }
        (None, _) => replacement.clone(),
    };
    validate_id(&new_doc)?;
    if documents_identical(&new_doc, doc) {
        return Ok(false);
    }
    *doc = new_doc;
    Ok(true)
}

/// The `_id` a stored document may not have.
fn validate_id(doc: &Document) -> Result<(), DocError> {
    let kind = match doc.get("_id") {
        Some(Bson::Array(_)) => "array",
        Some(Bson::RegularExpression(_)) => "regex",
        Some(Bson::Undefined) => "undefined",
        _ => return Ok(()),
    };
    Err(DocError::new(
        codes::INVALID_ID_FIELD,
        format!("The '_id' value cannot be of type {kind}"),
    ))
}

// ---------------------------------------------------------------------------
// Identity, type names and display.

/// Whether two values are the same BSON: same types, same field order, and
/// doubles bit for bit (`1` and `1.0` differ, as do `0.0` and `-0.0`).
pub(crate) fn identical(a: &Bson, b: &Bson) -> bool {
    match (a, b) {
        (Bson::Double(x), Bson::Double(y)) => x.to_bits() == y.to_bits(),
        (Bson::Document(x), Bson::Document(y)) => documents_identical(x, y),
        (Bson::Array(x), Bson::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| identical(p, q))
        }
        (Bson::JavaScriptCodeWithScope(x), Bson::JavaScriptCodeWithScope(y)) => {
            x.code == y.code && documents_identical(&x.scope, &y.scope)
        }
        _ => a == b,
    }
}

/// [`identical`] for documents (whose `==` ignores field order).
pub(crate) fn documents_identical(a: &Document, b: &Document) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((ka, va), (kb, vb))| ka == kb && identical(va, vb))
}

/// MongoDB's name for a value's type, as error messages use it.
pub(crate) use crate::order::type_name;

/// A value as MongoDB's messages show one (`{ a: 1, b: "x" }`, `[ 1, 2 ]`).
pub(crate) fn show(v: &Bson) -> String {
    let mut out = String::new();
    write_value(&mut out, v);
    out
}

pub(crate) fn show_document(d: &Document) -> String {
    let mut out = String::new();
    write_document(&mut out, d);
    out
}

fn show_array(items: &[Bson]) -> String {
    let mut out = String::new();
    write_array(&mut out, items);
    out
}

fn write_value(out: &mut String, v: &Bson) {
    // Writing to a String cannot fail.
    let _ = match v {
        Bson::Double(f) if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e15 => {
            write!(out, "{f:.1}")
        }
        Bson::Double(f) => write!(out, "{f}"),
        Bson::String(s) => write!(out, "{s:?}"),
        Bson::Int32(i) => write!(out, "{i}"),
        Bson::Int64(i) => write!(out, "{i}"),
        Bson::Boolean(b) => write!(out, "{b}"),
        Bson::Null => write!(out, "null"),
        Bson::Document(d) => {
            write_document(out, d);
            Ok(())
        }
        Bson::Array(items) => {
            write_array(out, items);
            Ok(())
        }
        other => write!(out, "{other}"),
    };
}

fn write_document(out: &mut String, d: &Document) {
    if d.is_empty() {
        out.push_str("{}");
        return;
    }
    out.push_str("{ ");
    for (i, (k, v)) in d.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(k);
        out.push_str(": ");
        write_value(out, v);
    }
    out.push_str(" }");
}

fn write_array(out: &mut String, items: &[Bson]) {
    if items.is_empty() {
        out.push_str("[]");
        return;
    }
    out.push_str("[ ");
    for (i, v) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_value(out, v);
    }
    out.push_str(" ]");
}

// ---------------------------------------------------------------------------
// Conditions: `$pull`, `arrayFilters`, `$elemMatch`.

/// A query condition on one document.
///
/// The comparison subset is evaluated here, with MongoDB's path semantics
/// (a path through an array looks into its documents; a value that is an
/// array matches when the array or any element does; a missing field equals
/// null); any other condition goes to [`Filter`].
#[derive(Debug, Clone)]
pub(crate) enum Condition {
    Simple(Vec<Clause>),
    Matcher(Filter),
}

#[derive(Debug, Clone)]
pub(crate) enum Clause {
    Field { path: Vec<String>, tests: Vec<Test> },
    And(Vec<Vec<Clause>>),
    Or(Vec<Vec<Clause>>),
    Nor(Vec<Vec<Clause>>),
}

#[derive(Debug, Clone)]
pub(crate) enum Test {
    Eq(Bson),
    Ne(Bson),
    Gt(Bson),
    Gte(Bson),
    Lt(Bson),
    Lte(Bson),
    In(Vec<Bson>),
    Nin(Vec<Bson>),
    Exists(bool),
}

impl Condition {
    pub(crate) fn parse(filter: &Document) -> Result<Condition, DocError> {
        match parse_clauses(filter, 0) {
            Some(clauses) => Ok(Condition::Simple(clauses)),
            None => Ok(Condition::Matcher(Filter::parse(filter)?)),
        }
    }

    /// Whether `doc` matches.
    pub(crate) fn matches(&self, doc: &Document) -> bool {
        match self {
            Condition::Simple(clauses) => eval_clauses(clauses, &|k: &str| doc.get(k)),
            Condition::Matcher(filter) => filter.matches(doc),
        }
    }

    /// Whether the document `{name: value}` matches.
    pub(crate) fn matches_named(&self, name: &str, value: &Bson) -> bool {
        match self {
            Condition::Simple(clauses) => {
                eval_clauses(clauses, &|k: &str| (k == name).then_some(value))
            }
            Condition::Matcher(filter) => {
                let mut doc = Document::new();
                doc.insert(name, value.clone());
                filter.matches(&doc)
            }
        }
    }
}

/// The operators that make `{$op: ...}` a condition on a value rather than
/// a document to match (MongoDB's path-accepting keywords).
const VALUE_OPERATORS: &[&str] = &[
    "$eq",
    "$ne",
    "$gt",
    "$gte",
    "$lt",
    "$lte",
    "$in",
    "$nin",
    "$exists",
    "$type",
    "$size",
    "$all",
    "$elemMatch",
    "$mod",
    "$regex",
    "$options",
    "$not",
    "$bitsAllSet",
    "$bitsAllClear",
    "$bitsAnySet",
    "$bitsAnyClear",
    "$geoWithin",
    "$geoIntersects",
    "$within",
    "$near",
    "$nearSphere",
];

fn starts_with_value_operator(d: &Document) -> bool {
    d.keys()
        .next()
        .is_some_and(|k| VALUE_OPERATORS.contains(&k.as_str()))
}

/// How array elements are matched: by `$pull` and by `$elemMatch`.
#[derive(Debug, Clone)]
pub(crate) enum ElementMatcher {
    /// A plain value: elements equal to it (`order::equal`).
    Equal(Bson),
    /// A query on documents: document elements that match it.
    Object(Condition),
    /// Conditions on the element itself (`{$gte: 6}`, a regex), kept as the
    /// condition `{"": <conditions>}` and tried on `{"": <element>}`.
    Value(Condition),
}

impl ElementMatcher {
    /// `$pull`'s argument: a query on document elements, conditions on
    /// values (`{$gte: 6}`, a regex), or a value to remove.
    pub(crate) fn for_pull(arg: &Bson) -> Result<ElementMatcher, DocError> {
        match arg {
            Bson::Document(d) if !starts_with_value_operator(d) => {
                Ok(ElementMatcher::Object(Condition::parse(d)?))
            }
            Bson::Document(_) | Bson::RegularExpression(_) => Ok(ElementMatcher::Value(
                Condition::parse(&wrap_value("", arg.clone()))?,
            )),
            other => Ok(ElementMatcher::Equal(other.clone())),
        }
    }

    /// `$elemMatch`'s argument: conditions on values when it starts with a
    /// value operator, else a query on document elements.
    pub(crate) fn for_elem_match(cond: &Document) -> Result<ElementMatcher, DocError> {
        if starts_with_value_operator(cond) {
            Ok(ElementMatcher::Value(Condition::parse(&wrap_value(
                "",
                Bson::Document(cond.clone()),
            ))?))
        } else {
            Ok(ElementMatcher::Object(Condition::parse(cond)?))
        }
    }

    pub(crate) fn matches(&self, element: &Bson) -> bool {
        match self {
            ElementMatcher::Equal(v) => order::equal(element, v),
            ElementMatcher::Object(c) => matches!(element, Bson::Document(d) if c.matches(d)),
            ElementMatcher::Value(c) => c.matches_named("", element),
        }
    }
}

fn wrap_value(name: &str, v: Bson) -> Document {
    let mut d = Document::new();
    d.insert(name, v);
    d
}

/// The clauses of a filter when all of it is in the subset evaluated here.
fn parse_clauses(filter: &Document, depth: usize) -> Option<Vec<Clause>> {
    if depth > CONDITION_DEPTH_MAX {
        return None;
    }
    let mut clauses = Vec::with_capacity(filter.len());
    for (key, value) in filter {
        if matches!(key.as_str(), "$and" | "$or" | "$nor") {
            let Bson::Array(items) = value else {
                return None;
            };
            if items.is_empty() {
                return None;
            }
            let mut branches = Vec::with_capacity(items.len());
            for item in items {
                let Bson::Document(item) = item else {
                    return None;
                };
                branches.push(parse_clauses(item, depth + 1)?);
            }
            clauses.push(match key.as_str() {
                "$and" => Clause::And(branches),
                "$or" => Clause::Or(branches),
                _ => Clause::Nor(branches),
            });
            continue;
        }
        if key.starts_with('$') {
            return None;
        }
        let tests = match value {
            Bson::Document(d) if d.keys().next().is_some_and(|k| k.starts_with('$')) => {
                parse_tests(d)?
            }
            Bson::RegularExpression(_) => return None,
            other => vec![Test::Eq(other.clone())],
        };
        clauses.push(Clause::Field {
            path: key.split('.').map(str::to_string).collect(),
            tests,
        });
    }
    Some(clauses)
}

fn parse_tests(ops: &Document) -> Option<Vec<Test>> {
    let mut tests = Vec::with_capacity(ops.len());
    for (op, arg) in ops {
        let list = |arg: &Bson| match arg {
            Bson::Array(items)
                if !items
                    .iter()
                    .any(|i| matches!(i, Bson::RegularExpression(_))) =>
            {
                Some(items.clone())
            }
            _ => None,
        };
        tests.push(match op.as_str() {
            "$eq" => Test::Eq(arg.clone()),
            "$ne" => Test::Ne(arg.clone()),
            "$gt" => Test::Gt(arg.clone()),
            "$gte" => Test::Gte(arg.clone()),
            "$lt" => Test::Lt(arg.clone()),
            "$lte" => Test::Lte(arg.clone()),
            "$in" => Test::In(list(arg)?),
            "$nin" => Test::Nin(list(arg)?),
            "$exists" => Test::Exists(crate::expr::truthy(arg)),
            _ => return None,
        });
    }
    Some(tests)
}

fn eval_clauses<'a, F>(clauses: &[Clause], lookup: &F) -> bool
where
    F: Fn(&str) -> Option<&'a Bson>,
{
    clauses.iter().all(|clause| match clause {
        Clause::Field { path, tests } => {
            let mut values = Vec::new();
            let (first, rest) = path.split_first().expect("a path has a first part");
            collect_values(lookup(first), rest, &mut values);
            if values.is_empty() {
                // Nothing on the path at all: the field is missing.
                values.push(None);
            }
            tests.iter().all(|test| eval_test(test, &values))
        }
        Clause::And(branches) => branches.iter().all(|b| eval_clauses(b, lookup)),
        Clause::Or(branches) => branches.iter().any(|b| eval_clauses(b, lookup)),
        Clause::Nor(branches) => !branches.iter().any(|b| eval_clauses(b, lookup)),
    })
}

/// The values a query path reaches (`None` for a missing field): through
/// documents, through array indexes, and into the documents of an array; a
/// value that is an array is given together with its elements.
fn collect_values<'a>(v: Option<&'a Bson>, rest: &[String], out: &mut Vec<Option<&'a Bson>>) {
    let Some(v) = v else {
        out.push(None);
        return;
    };
    let Some((head, tail)) = rest.split_first() else {
        out.push(Some(v));
        if let Bson::Array(items) = v {
            out.extend(items.iter().map(Some));
        }
        return;
    };
    match v {
        Bson::Document(d) => collect_values(d.get(head), tail, out),
        Bson::Array(items) => {
            if let Some(item) = array_index(head).and_then(|i| items.get(i)) {
                collect_values(Some(item), tail, out);
            }
            for item in items {
                if let Bson::Document(d) = item {
                    collect_values(d.get(head), tail, out);
                }
            }
        }
        _ => {}
    }
}

fn equals_for_query(value: Option<&Bson>, operand: &Bson) -> bool {
    match value {
        None => matches!(operand, Bson::Null),
        Some(v) => order::equal(v, operand),
    }
}

fn eval_test(test: &Test, values: &[Option<&Bson>]) -> bool {
    let compare = |operand: &Bson, accept: fn(Ordering) -> bool| {
        values.iter().flatten().any(|v| {
            let bracketed = order::type_rank(v) == order::type_rank(operand)
                || matches!(operand, Bson::MinKey | Bson::MaxKey);
            bracketed && accept(order::compare(v, operand))
        })
    };
    match test {
        Test::Eq(x) => values.iter().any(|v| equals_for_query(*v, x)),
        Test::Ne(x) => !values.iter().any(|v| equals_for_query(*v, x)),
        Test::In(xs) => values
            .iter()
            .any(|v| xs.iter().any(|x| equals_for_query(*v, x))),
        Test::Nin(xs) => !values
            .iter()
            .any(|v| xs.iter().any(|x| equals_for_query(*v, x))),
        Test::Exists(wanted) => values.iter().any(Option::is_some) == *wanted,
        // `$gte: null` and `$lte: null` are equality with null.
        Test::Gte(Bson::Null) | Test::Lte(Bson::Null) => {
            values.iter().any(|v| equals_for_query(*v, &Bson::Null))
        }
        Test::Gt(Bson::Null) | Test::Lt(Bson::Null) => false,
        Test::Gt(x) => compare(x, |o| o == Ordering::Greater),
        Test::Gte(x) => compare(x, |o| o != Ordering::Less),
        Test::Lt(x) => compare(x, |o| o == Ordering::Less),
        Test::Lte(x) => compare(x, |o| o != Ordering::Greater),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn now() -> bson::DateTime {
        bson::DateTime::from_millis(1_700_000_000_123)
    }

    fn ctx() -> ApplyContext {
        ApplyContext::new(now())
    }

    fn parse(spec: Document) -> Update {
        Update::parse(&spec, &[]).unwrap_or_else(|e| panic!("{spec}: {e:?}"))
    }

    fn parse_err(spec: Document) -> DocError {
        match Update::parse(&spec, &[]) {
            Ok(u) => panic!("{spec} parsed: {u:?}"),
            Err(e) => e,
        }
    }

    /// Applies `spec` to `doc`; returns the result and whether it changed.
    fn run(doc: Document, spec: Document) -> (Document, bool) {
        run_with(doc, spec, &[], ctx())
    }

    fn run_with(
        mut doc: Document,
        spec: Document,
        filters: &[Document],
        ctx: ApplyContext,
    ) -> (Document, bool) {
        let update = Update::parse(&spec, filters).unwrap_or_else(|e| panic!("{spec}: {e:?}"));
        let changed = update
            .apply(&mut doc, &ctx)
            .unwrap_or_else(|e| panic!("{spec}: {e:?}"));
        (doc, changed)
    }

    fn apply_err(doc: Document, spec: Document) -> DocError {
        apply_err_with(doc, spec, &[], ctx())
    }

    fn apply_err_with(
        mut doc: Document,
        spec: Document,
        filters: &[Document],
        ctx: ApplyContext,
    ) -> DocError {
        let before = doc.clone();
        let update = Update::parse(&spec, filters).unwrap_or_else(|e| panic!("{spec}: {e:?}"));
        let err = match update.apply(&mut doc, &ctx) {
            Ok(changed) => panic!("{spec} applied (changed: {changed}): {doc}"),
            Err(e) => e,
        };
        assert!(
            documents_identical(&doc, &before),
            "a failed update left {doc}"
        );
        err
    }

    /// Seen in the `update` fuzz target's runs (557 MB peak RSS on inputs
    /// of a few hundred bytes; under its 2 GiB limit, so no crash file):
    /// each path may pad an array by
    /// `ARRAY_PADDING_MAX` nulls, and nothing bounded the sum, so one update
    /// naming many arrays took about 150 MB of memory per path before the
    /// table refused the result as too large. `$[]` copying one value into
    /// every element multiplied the same way. What an update writes is now
    /// bounded by the largest document.
    #[test]
    fn what_an_update_writes_is_bounded_by_the_largest_document() {
        let mut doc = doc! {"_id": 1};
        let mut spec = Document::new();
        for i in 0..8 {
            doc.insert(format!("a{i}"), Bson::Array(vec![]));
            spec.insert(format!("a{i}.{}", ARRAY_PADDING_MAX - 1), 1);
        }
        let e = apply_err(doc.clone(), doc! {"$set": spec});
        assert_eq!(e.code, RESULT_TOO_LARGE, "{e:?}");
        // One array padded to the limit fits in a document, as in MongoDB.
        let one = doc! {"$set": {format!("a0.{}", ARRAY_PADDING_MAX - 1): 1}};
        let (d, changed) = run(doc.clone(), one);
        assert!(changed);
        assert_eq!(d.get_array("a0").unwrap().len(), ARRAY_PADDING_MAX);

        // 2,000 elements, each set to a 10 KB string: 20 MB.
        let big = doc! {"_id": 1, "a": vec![Bson::Int32(0); 2000]};
        let e = apply_err(big.clone(), doc! {"$set": {"a.$[]": "x".repeat(10_000)}});
        assert_eq!(e.code, RESULT_TOO_LARGE, "{e:?}");
        let (d, _) = run(big, doc! {"$set": {"a.$[]": "x".repeat(1_000)}});
        assert_eq!(
            d.get_array("a").unwrap()[1999],
            Bson::String("x".repeat(1_000))
        );

        // A renamed value counts once, where it lands, whichever path
        // comes first.
        let ten_mb = "x".repeat(10 << 20);
        for (from, to) in [("a", "b"), ("b", "a")] {
            let d = doc! {"_id": 1, from: ten_mb.as_str()};
            let (d, changed) = run(d, doc! {"$rename": {from: to}});
            assert!(changed);
            assert_eq!(d.get_str(to).unwrap().len(), 10 << 20);
        }
    }

    #[test]
    fn null_elements_bytes_counts_every_key() {
        let slow =
            |from: usize, to: usize| (from..to).map(|j| 2 + j.to_string().len()).sum::<usize>();
        for (from, to) in [
            (0, 0),
            (0, 1),
            (0, 10),
            (5, 123),
            (9, 11),
            (99, 1001),
            (0, 123_456),
        ] {
            assert_eq!(
                null_elements_bytes(from, to),
                slow(from, to),
                "{from}..{to}"
            );
        }
    }

    /// Asserts exact equality, field order and types included.
    #[track_caller]
    fn same(actual: &Document, expected: &Document) {
        assert!(
            documents_identical(actual, expected),
            "\n  actual: {actual}\nexpected: {expected}"
        );
    }

    // --- classification and parse errors -------------------------------------

    #[test]
    fn operators_replacement_and_mixtures() {
        assert!(matches!(
            parse(doc! {"$set": {"a": 1}}),
            Update::Operators(_)
        ));
        assert!(matches!(parse(doc! {"a": 1}), Update::Replacement(_)));
        assert!(matches!(parse(doc! {}), Update::Replacement(_)));
        let e = parse_err(doc! {"$set": {"a": 1}, "b": 2});
        assert_eq!(e.code, codes::FAILED_TO_PARSE);
        assert!(
            e.message.starts_with("Unknown modifier: b."),
            "{}",
            e.message
        );
        let e = parse_err(doc! {"b": 2, "$set": {"a": 1}});
        assert_eq!(e.code, codes::DOLLAR_PREFIXED_FIELD_NAME);
    }

    #[test]
    fn unknown_operators_and_operand_shapes() {
        let e = parse_err(doc! {"$foo": {"a": 1}});
        assert_eq!(e.code, codes::FAILED_TO_PARSE);
        assert_eq!(
            e.message,
            "Unknown modifier: $foo. Expected a valid update modifier or pipeline-style update \
             specified as an array"
        );
        let e = parse_err(doc! {"$set": 1});
        assert_eq!(e.code, codes::FAILED_TO_PARSE);
        assert_eq!(
            e.message,
            "Modifiers operate on fields but we found type int instead. For example: {$mod: \
             {<field>: ...}} not {$set: 1}"
        );
        let e = parse_err(doc! {"$inc": []});
        assert_eq!(e.code, codes::FAILED_TO_PARSE);
    }

    #[test]
    fn empty_operands_are_noops() {
        // MongoDB 5.0 and later accept `{$set: {}}` and change nothing.
        let (d, changed) = run(doc! {"_id": 1, "a": 1}, doc! {"$set": {}, "$unset": {}});
        assert!(!changed);
        same(&d, &doc! {"_id": 1, "a": 1});
    }

    #[test]
    fn path_errors() {
        let e = parse_err(doc! {"$set": {"": 1}});
        assert_eq!(e.code, codes::EMPTY_FIELD_NAME);
        let e = parse_err(doc! {"$set": {"a..b": 1}});
        assert_eq!(e.code, codes::EMPTY_FIELD_NAME);
        let e = parse_err(doc! {"$set": {"a.": 1}});
        assert_eq!(e.code, codes::EMPTY_FIELD_NAME);
        let e = parse_err(doc! {"$set": {"$.a": 1}});
        assert_eq!(e.code, codes::BAD_VALUE);
        assert!(e.message.contains("first position"), "{}", e.message);
        let e = parse_err(doc! {"$set": {"a.$.b.$": 1}});
        assert_eq!(e.code, codes::BAD_VALUE);
        assert!(
            e.message.starts_with("Too many positional"),
            "{}",
            e.message
        );
        let e = parse_err(doc! {"$set": {"a.$x": 1}});
        assert_eq!(e.code, codes::DOLLAR_PREFIXED_FIELD_NAME);
        let e = parse_err(doc! {"$set": {"$[].a": 1}});
        assert_eq!(e.code, codes::BAD_VALUE);
    }

    #[test]
    fn conflicting_paths() {
        let e = parse_err(doc! {"$set": {"a": 1}, "$inc": {"a": 1}});
        assert_eq!(e.code, codes::CONFLICTING_UPDATE_OPERATORS);
        assert_eq!(
            e.message,
            "Updating the path 'a' would create a conflict at 'a'"
        );
        let e = parse_err(doc! {"$set": {"a": 1, "a.b": 2}});
        assert_eq!(e.code, codes::CONFLICTING_UPDATE_OPERATORS);
        assert_eq!(
            e.message,
            "Updating the path 'a.b' would create a conflict at 'a'"
        );
        let e = parse_err(doc! {"$set": {"a.b.c": 1}, "$unset": {"a.b": 1}});
        assert_eq!(
            e.message,
            "Updating the path 'a.b' would create a conflict at 'a.b'"
        );
        let e = parse_err(doc! {"$set": {"a.b": 1}, "$setOnInsert": {"a": 2}});
        assert_eq!(e.code, codes::CONFLICTING_UPDATE_OPERATORS);
        // $rename holds both of its paths.
        let e = parse_err(doc! {"$rename": {"a": "b"}, "$set": {"a": 1}});
        assert_eq!(e.code, codes::CONFLICTING_UPDATE_OPERATORS);
        let e = parse_err(doc! {"$rename": {"a": "b"}, "$inc": {"b.c": 1}});
        assert_eq!(e.code, codes::CONFLICTING_UPDATE_OPERATORS);
        // An array update and a field of the same array.
        let e = parse_err(doc! {"$set": {"a.$[].b": 1, "a.0": 2}});
        assert_eq!(e.code, codes::CONFLICTING_UPDATE_OPERATORS);
        // Siblings are fine.
        parse(doc! {"$set": {"a.b": 1, "a.c": 2}, "$inc": {"a.d": 1, "b": 1}});
        parse(doc! {"$set": {"a.$.b": 1, "a.$.c": 2}});
    }

    #[test]
    fn id_cannot_be_unset_or_renamed_away() {
        assert_eq!(
            parse_err(doc! {"$unset": {"_id": ""}}).code,
            codes::IMMUTABLE_FIELD
        );
        assert_eq!(
            parse_err(doc! {"$rename": {"_id": "x"}}).code,
            codes::IMMUTABLE_FIELD
        );
    }

    // --- $set and paths ---------------------------------------------------------

    #[test]
    fn set_replaces_in_place_and_appends_new_fields_in_order() {
        let (d, changed) = run(
            doc! {"_id": 1, "b": 1, "a": 1},
            doc! {"$set": {"z": 1, "b": 2, "c": 3, "a": 1}},
        );
        assert!(changed);
        same(&d, &doc! {"_id": 1, "b": 2, "a": 1, "c": 3, "z": 1});
    }

    #[test]
    fn set_same_value_is_not_a_change_but_a_new_type_is() {
        let (_, changed) = run(doc! {"_id": 1, "a": 1}, doc! {"$set": {"a": 1}});
        assert!(!changed);
        let (d, changed) = run(doc! {"_id": 1, "a": 1}, doc! {"$set": {"a": 1.0}});
        assert!(changed);
        same(&d, &doc! {"_id": 1, "a": 1.0});
        // A document with its fields in another order is another document.
        let (_, changed) = run(
            doc! {"_id": 1, "a": {"x": 1, "y": 2}},
            doc! {"$set": {"a": {"y": 2, "x": 1}}},
        );
        assert!(changed);
    }

    #[test]
    fn set_creates_embedded_documents() {
        let (d, _) = run(doc! {"_id": 1}, doc! {"$set": {"a.b.c": 1, "a.b.a": 2}});
        same(&d, &doc! {"_id": 1, "a": {"b": {"a": 2, "c": 1}}});
        let (d, _) = run(doc! {"_id": 1, "a": {"x": 1}}, doc! {"$set": {"a.y.z": 1}});
        same(&d, &doc! {"_id": 1, "a": {"x": 1, "y": {"z": 1}}});
        // A numeric part under a document is a field name.
        let (d, _) = run(doc! {"_id": 1}, doc! {"$set": {"a.0.b": 1}});
        same(&d, &doc! {"_id": 1, "a": {"0": {"b": 1}}});
    }

    #[test]
    fn numeric_parts_index_arrays_and_pad_with_nulls() {
        let (d, _) = run(doc! {"_id": 1, "a": [1, 2, 3]}, doc! {"$set": {"a.1": 9}});
        same(&d, &doc! {"_id": 1, "a": [1, 9, 3]});
        let (d, _) = run(doc! {"_id": 1, "a": [1, 2, 3]}, doc! {"$set": {"a.5": 9}});
        same(
            &d,
            &doc! {"_id": 1, "a": [1, 2, 3, Bson::Null, Bson::Null, 9]},
        );
        let (d, _) = run(
            doc! {"_id": 1, "a": [{"b": 1}, {"b": 2}]},
            doc! {"$set": {"a.1.b": 5, "a.3.c": 1}},
        );
        same(
            &d,
            &doc! {"_id": 1, "a": [{"b": 1}, {"b": 5}, Bson::Null, {"c": 1}]},
        );
        // Numeric order, not byte order: a.2 before a.10.
        let (d, _) = run(
            doc! {"_id": 1, "a": []},
            doc! {"$set": {"a.10": 1, "a.2": 2}},
        );
        let Some(Bson::Array(items)) = d.get("a") else {
            panic!("{d}")
        };
        assert_eq!(items.len(), 11);
        assert_eq!(items[2], Bson::Int32(2));
        assert_eq!(items[10], Bson::Int32(1));
        let e = apply_err(doc! {"_id": 1, "a": []}, doc! {"$set": {"a.2000000": 1}});
        assert_eq!(e.code, CANNOT_BACKFILL_ARRAY);
    }

    #[test]
    fn traversing_a_scalar_is_path_not_viable() {
        let e = apply_err(doc! {"_id": 1, "a": 5}, doc! {"$set": {"a.b": 1}});
        assert_eq!(e.code, codes::PATH_NOT_VIABLE);
        assert_eq!(e.message, "Cannot create field 'b' in element {a: 5}");
        let e = apply_err(doc! {"_id": 1, "a": [1, 2]}, doc! {"$set": {"a.b": 1}});
        assert_eq!(e.code, codes::PATH_NOT_VIABLE);
        assert_eq!(
            e.message,
            "Cannot create field 'b' in element {a: [ 1, 2 ]}"
        );
        let e = apply_err(
            doc! {"_id": 1, "a": {"b": "x"}},
            doc! {"$inc": {"a.b.c": 1}},
        );
        assert_eq!(e.code, codes::PATH_NOT_VIABLE);
        // $unset never fails on a path that is not there.
        let (_, changed) = run(doc! {"_id": 1, "a": 5}, doc! {"$unset": {"a.b": 1}});
        assert!(!changed);
        // $pull and $pop do on one that cannot exist.
        let e = apply_err(doc! {"_id": 1, "a": 5}, doc! {"$pull": {"a.b": 1}});
        assert_eq!(e.code, codes::PATH_NOT_VIABLE);
        let e = apply_err(doc! {"_id": 1, "a": [1]}, doc! {"$pop": {"a.b": 1}});
        assert_eq!(e.code, codes::PATH_NOT_VIABLE);
        let (_, changed) = run(doc! {"_id": 1, "a": {}}, doc! {"$pop": {"a.b": 1}});
        assert!(!changed);
    }

    #[test]
    fn failed_updates_change_nothing() {
        // The first $set succeeds on the copy; the second fails; the
        // document is as it was (apply_err checks).
        let e = apply_err(
            doc! {"_id": 1, "a": 1, "b": 5},
            doc! {"$set": {"a": 2, "b.c": 1}},
        );
        assert_eq!(e.code, codes::PATH_NOT_VIABLE);
    }

    // --- _id ------------------------------------------------------------------

    #[test]
    fn id_is_immutable() {
        let (_, changed) = run(doc! {"_id": 1, "a": 1}, doc! {"$set": {"_id": 1}});
        assert!(!changed);
        let e = apply_err(doc! {"_id": 1}, doc! {"$set": {"_id": 2}});
        assert_eq!(e.code, codes::IMMUTABLE_FIELD);
        let e = apply_err(doc! {"_id": 1}, doc! {"$set": {"_id": 1.0}});
        assert_eq!(e.code, codes::IMMUTABLE_FIELD);
        let e = apply_err(doc! {"_id": {"a": 1}}, doc! {"$set": {"_id.b": 1}});
        assert_eq!(e.code, codes::IMMUTABLE_FIELD);
        let e = apply_err(doc! {"_id": 1, "x": 5}, doc! {"$rename": {"x": "_id"}});
        assert_eq!(e.code, codes::IMMUTABLE_FIELD);
        // An upsert may set the `_id` its filter did not.
        let mut insert = ctx();
        insert.inserting = true;
        let (d, _) = run_with(doc! {"a": 1}, doc! {"$set": {"_id": 7}}, &[], insert);
        same(&d, &doc! {"a": 1, "_id": 7});
        let e = apply_err_with(doc! {}, doc! {"$set": {"_id": [1]}}, &[], insert);
        assert_eq!(e.code, codes::INVALID_ID_FIELD);
    }

    // --- $unset -----------------------------------------------------------------

    #[test]
    fn unset() {
        let (d, changed) = run(
            doc! {"_id": 1, "a": 1, "b": {"c": 1, "d": 2}, "e": 3},
            doc! {"$unset": {"a": "", "b.c": 1, "missing": 1}},
        );
        assert!(changed);
        same(&d, &doc! {"_id": 1, "b": {"d": 2}, "e": 3});
        // An array element becomes null.
        let (d, _) = run(doc! {"_id": 1, "a": [1, 2, 3]}, doc! {"$unset": {"a.1": 1}});
        same(&d, &doc! {"_id": 1, "a": [1, Bson::Null, 3]});
        let (_, changed) = run(doc! {"_id": 1, "a": [1]}, doc! {"$unset": {"a.5": 1}});
        assert!(!changed);
    }

    // --- $inc and $mul ---------------------------------------------------------

    #[test]
    fn inc_types_and_promotion() {
        let cases: Vec<(Bson, Bson, Bson)> = vec![
            (Bson::Int32(1), Bson::Int32(2), Bson::Int32(3)),
            (Bson::Int32(i32::MAX), Bson::Int32(1), Bson::Int64(1 << 31)),
            (
                Bson::Int32(i32::MIN),
                Bson::Int32(-1),
                Bson::Int64(-(1 << 31) - 1),
            ),
            (Bson::Int32(1), Bson::Int64(2), Bson::Int64(3)),
            (Bson::Int64(1), Bson::Int32(2), Bson::Int64(3)),
            (Bson::Int32(1), Bson::Double(0.5), Bson::Double(1.5)),
            (Bson::Double(1.5), Bson::Int32(1), Bson::Double(2.5)),
            (
                Bson::Int64(i64::MAX),
                Bson::Double(1.0),
                Bson::Double(i64::MAX as f64 + 1.0),
            ),
        ];
        for (start, by, expected) in cases {
            let (d, changed) = run(
                doc! {"_id": 1, "a": start.clone()},
                doc! {"$inc": {"a": by.clone()}},
            );
            assert!(changed);
            let got = d.get("a").expect("a");
            assert!(identical(got, &expected), "{start} + {by}: {got}");
        }
    }

    #[test]
    fn inc_int64_overflow_is_an_error() {
        let e = apply_err(doc! {"_id": 1, "a": i64::MAX}, doc! {"$inc": {"a": 1}});
        assert_eq!(e.code, codes::BAD_VALUE);
        assert_eq!(
            e.message,
            "Failed to apply $inc operations to current value ((NumberLong)9223372036854775807) \
             for document {_id: 1}"
        );
        let e = apply_err(doc! {"_id": 1, "a": i64::MIN}, doc! {"$inc": {"a": -1i64}});
        assert_eq!(e.code, codes::BAD_VALUE);
    }

    #[test]
    fn inc_missing_field_and_zero() {
        let (d, _) = run(doc! {"_id": 1}, doc! {"$inc": {"a": 5i64, "b.c": 1.5}});
        same(&d, &doc! {"_id": 1, "a": 5i64, "b": {"c": 1.5}});
        let (_, changed) = run(doc! {"_id": 1, "a": 5}, doc! {"$inc": {"a": 0}});
        assert!(!changed);
        // +0.0 turns an int into a double: a change.
        let (d, changed) = run(doc! {"_id": 1, "a": 5}, doc! {"$inc": {"a": 0.0}});
        assert!(changed);
        same(&d, &doc! {"_id": 1, "a": 5.0});
    }

    #[test]
    fn inc_type_errors() {
        let e = parse_err(doc! {"$inc": {"a": "x"}});
        assert_eq!(e.code, codes::TYPE_MISMATCH);
        assert_eq!(
            e.message,
            "Cannot increment with non-numeric argument: {a: \"x\"}"
        );
        let e = apply_err(doc! {"_id": 1, "a": "x"}, doc! {"$inc": {"a": 1}});
        assert_eq!(e.code, codes::TYPE_MISMATCH);
        assert_eq!(
            e.message,
            "Cannot apply $inc to a value of non-numeric type. {_id: 1} has the field 'a' of \
             non-numeric type string"
        );
        let e = parse_err(doc! {"$mul": {"a": true}});
        assert_eq!(e.code, codes::TYPE_MISMATCH);
        let e = apply_err(doc! {"_id": 1, "a": [1]}, doc! {"$mul": {"a": 2}});
        assert_eq!(e.code, codes::TYPE_MISMATCH);
    }

    #[test]
    fn mul() {
        let (d, _) = run(doc! {"_id": 1, "a": 3}, doc! {"$mul": {"a": 4}});
        same(&d, &doc! {"_id": 1, "a": 12});
        let (d, _) = run(doc! {"_id": 1, "a": 65536}, doc! {"$mul": {"a": 65536}});
        same(&d, &doc! {"_id": 1, "a": 4_294_967_296i64});
        let (d, _) = run(doc! {"_id": 1, "a": 3}, doc! {"$mul": {"a": 2i64}});
        same(&d, &doc! {"_id": 1, "a": 6i64});
        let (d, _) = run(doc! {"_id": 1, "a": 3}, doc! {"$mul": {"a": 0.5}});
        same(&d, &doc! {"_id": 1, "a": 1.5});
        let e = apply_err(doc! {"_id": 1, "a": i64::MAX}, doc! {"$mul": {"a": 2}});
        assert_eq!(e.code, codes::BAD_VALUE);
        // A missing field becomes zero of the operand's type.
        let (d, _) = run(
            doc! {"_id": 1},
            doc! {"$mul": {"a": 5, "b": 5i64, "c": 2.5}},
        );
        same(&d, &doc! {"_id": 1, "a": 0, "b": 0i64, "c": 0.0});
    }

    // --- $min, $max ----------------------------------------------------------

    #[test]
    fn min_and_max_compare_across_types() {
        let (d, changed) = run(doc! {"_id": 1, "a": 5}, doc! {"$min": {"a": 3.5}});
        assert!(changed);
        same(&d, &doc! {"_id": 1, "a": 3.5});
        let (_, changed) = run(doc! {"_id": 1, "a": 5}, doc! {"$min": {"a": 7}});
        assert!(!changed);
        // Equal values of another type: no change.
        let (_, changed) = run(doc! {"_id": 1, "a": 5}, doc! {"$max": {"a": 5.0}});
        assert!(!changed);
        // Strings sort above numbers, null below.
        let (d, _) = run(doc! {"_id": 1, "a": 5}, doc! {"$max": {"a": "x"}});
        same(&d, &doc! {"_id": 1, "a": "x"});
        let (d, _) = run(doc! {"_id": 1, "a": 5}, doc! {"$min": {"a": Bson::Null}});
        same(&d, &doc! {"_id": 1, "a": Bson::Null});
        let (d, _) = run(doc! {"_id": 1}, doc! {"$max": {"a": 1}});
        same(&d, &doc! {"_id": 1, "a": 1});
    }

    // --- $rename ---------------------------------------------------------------

    #[test]
    fn rename() {
        let (d, changed) = run(
            doc! {"_id": 1, "a": 1, "b": 2, "c": 3},
            doc! {"$rename": {"a": "z"}},
        );
        assert!(changed);
        same(&d, &doc! {"_id": 1, "b": 2, "c": 3, "z": 1});
        // Onto an existing field: it keeps its place.
        let (d, _) = run(
            doc! {"_id": 1, "a": 1, "b": 2, "c": 3},
            doc! {"$rename": {"c": "a"}},
        );
        same(&d, &doc! {"_id": 1, "a": 3, "b": 2});
        let (d, _) = run(
            doc! {"_id": 1, "a": {"b": 1, "c": 2}},
            doc! {"$rename": {"a.b": "x.y"}},
        );
        same(&d, &doc! {"_id": 1, "a": {"c": 2}, "x": {"y": 1}});
        let (_, changed) = run(doc! {"_id": 1, "b": 1}, doc! {"$rename": {"a": "c"}});
        assert!(!changed);
    }

    #[test]
    fn rename_rules() {
        assert_eq!(
            parse_err(doc! {"$rename": {"a": 1}}).message,
            "The 'to' field for $rename must be a string: a: 1"
        );
        assert_eq!(
            parse_err(doc! {"$rename": {"a": "a"}}).message,
            "The source and target field for $rename must differ: a: \"a\""
        );
        assert_eq!(
            parse_err(doc! {"$rename": {"a": "a.b"}}).code,
            codes::BAD_VALUE
        );
        assert_eq!(
            parse_err(doc! {"$rename": {"a.b": "a"}}).code,
            codes::BAD_VALUE
        );
        assert_eq!(
            parse_err(doc! {"$rename": {"a.$": "b"}}).code,
            codes::BAD_VALUE
        );
        assert_eq!(
            parse_err(doc! {"$rename": {"a": "b.$[]"}}).code,
            codes::BAD_VALUE
        );
        let e = apply_err(
            doc! {"_id": 1, "a": [{"b": 1}]},
            doc! {"$rename": {"a.0.b": "c"}},
        );
        assert_eq!(e.code, codes::BAD_VALUE);
        assert!(e
            .message
            .starts_with("The source field cannot be an array element"));
        let e = apply_err(
            doc! {"_id": 1, "a": 1, "b": []},
            doc! {"$rename": {"a": "b.0"}},
        );
        assert_eq!(e.code, codes::BAD_VALUE);
        assert!(e
            .message
            .starts_with("The destination field cannot be an array element"));
        let e = apply_err(doc! {"_id": 1, "a": 1}, doc! {"$rename": {"a.b": "c"}});
        assert_eq!(e.code, codes::PATH_NOT_VIABLE);
        let e = apply_err(
            doc! {"_id": 1, "a": 1, "b": 1},
            doc! {"$rename": {"a": "b.c"}},
        );
        assert_eq!(e.code, codes::PATH_NOT_VIABLE);
    }

    // --- $setOnInsert, $currentDate -----------------------------------------

    #[test]
    fn set_on_insert_applies_only_when_inserting() {
        let spec = doc! {"$set": {"a": 1}, "$setOnInsert": {"b": 2}};
        let (d, _) = run(doc! {"_id": 1}, spec.clone());
        same(&d, &doc! {"_id": 1, "a": 1});
        let mut insert = ctx();
        insert.inserting = true;
        let (d, _) = run_with(doc! {"_id": 1}, spec, &[], insert);
        same(&d, &doc! {"_id": 1, "a": 1, "b": 2});
        // Not inserting, even a path through a scalar is left alone.
        let (_, changed) = run(doc! {"_id": 1, "a": 1}, doc! {"$setOnInsert": {"a.b": 1}});
        assert!(!changed);
    }

    #[test]
    fn current_date() {
        let (d, _) = run(
            doc! {"_id": 1, "a": 1},
            doc! {"$currentDate": {"a": true, "b": {"$type": "date"}, "c": {"$type": "timestamp"}}},
        );
        same(
            &d,
            &doc! {
                "_id": 1,
                "a": Bson::DateTime(now()),
                "b": Bson::DateTime(now()),
                "c": Bson::Timestamp(bson::Timestamp { time: 1_700_000_000, increment: 1 }),
            },
        );
        assert_eq!(
            parse_err(doc! {"$currentDate": {"a": {"$type": "x"}}}).code,
            codes::BAD_VALUE
        );
        assert_eq!(
            parse_err(doc! {"$currentDate": {"a": {"x": 1}}}).message,
            "Unrecognized $currentDate option: x"
        );
        assert_eq!(
            parse_err(doc! {"$currentDate": {"a": 1}}).message,
            "int is not valid type for $currentDate. Please use a boolean ('true') or a $type \
             expression ({$type: 'timestamp/date'})."
        );
    }

    // --- $push --------------------------------------------------------------

    #[test]
    fn push() {
        let (d, _) = run(doc! {"_id": 1, "a": [1]}, doc! {"$push": {"a": 2}});
        same(&d, &doc! {"_id": 1, "a": [1, 2]});
        let (d, _) = run(doc! {"_id": 1}, doc! {"$push": {"a": [1, 2]}});
        same(&d, &doc! {"_id": 1, "a": [[1, 2]]});
        // A document without $each is pushed as it is.
        let (d, _) = run(
            doc! {"_id": 1, "a": []},
            doc! {"$push": {"a": {"$slice": 1}}},
        );
        same(&d, &doc! {"_id": 1, "a": [{"$slice": 1}]});
        let e = apply_err(doc! {"_id": 1, "a": 1}, doc! {"$push": {"a": 2}});
        assert_eq!(e.code, codes::BAD_VALUE);
        assert_eq!(
            e.message,
            "The field 'a' must be an array but is of type int in document {_id: 1}"
        );
    }

    #[test]
    fn push_each_position_sort_slice() {
        let base = || doc! {"_id": 1, "a": [1, 2, 3]};
        let cases = vec![
            (doc! {"$each": [4, 5]}, vec![1, 2, 3, 4, 5]),
            (doc! {"$each": [9], "$position": 0}, vec![9, 1, 2, 3]),
            (doc! {"$each": [9], "$position": 1}, vec![1, 9, 2, 3]),
            (doc! {"$each": [9], "$position": 10}, vec![1, 2, 3, 9]),
            (doc! {"$each": [9], "$position": -1}, vec![1, 2, 9, 3]),
            (doc! {"$each": [9], "$position": -5}, vec![9, 1, 2, 3]),
            (doc! {"$each": [0], "$slice": 2}, vec![1, 2]),
            (doc! {"$each": [0], "$slice": -2}, vec![3, 0]),
            (doc! {"$each": [], "$slice": 0}, vec![]),
            (doc! {"$each": [0, 7], "$sort": -1}, vec![7, 3, 2, 1, 0]),
            // Order of application: position, sort, slice.
            (
                doc! {"$slice": 3, "$sort": 1, "$each": [0, 7]},
                vec![0, 1, 2],
            ),
            (
                doc! {"$each": [5], "$slice": -3, "$sort": -1},
                vec![3, 2, 1],
            ),
        ];
        for (clause, expected) in cases {
            let (d, _) = run(base(), doc! {"$push": {"a": clause.clone()}});
            let expected: Vec<Bson> = expected.into_iter().map(Bson::Int32).collect();
            same(&d, &doc! {"_id": 1, "a": expected});
        }
        let (_, changed) = run(base(), doc! {"$push": {"a": {"$each": []}}});
        assert!(!changed);
        let (d, changed) = run(doc! {"_id": 1}, doc! {"$push": {"a": {"$each": []}}});
        assert!(changed);
        same(&d, &doc! {"_id": 1, "a": []});
    }

    #[test]
    fn push_sort_by_fields() {
        let (d, _) = run(
            doc! {"_id": 1, "a": [{"s": 3, "n": "c"}, {"s": 1, "n": "a"}]},
            doc! {"$push": {"a": {"$each": [{"s": 2, "n": "b"}, 5, {"n": "x"}], "$sort": {"s": 1}}}},
        );
        // Elements without the field sort as null (before numbers), stably.
        same(
            &d,
            &doc! {"_id": 1, "a": [5, {"n": "x"}, {"s": 1, "n": "a"}, {"s": 2, "n": "b"}, {"s": 3, "n": "c"}]},
        );
        let (d, _) = run(
            doc! {"_id": 1, "a": [{"x": {"y": 1}, "z": 2}, {"x": {"y": 1}, "z": 3}, {"x": {"y": 2}, "z": 1}]},
            doc! {"$push": {"a": {"$each": [], "$sort": {"x.y": -1, "z": 1}}}},
        );
        same(
            &d,
            &doc! {"_id": 1, "a": [{"x": {"y": 2}, "z": 1}, {"x": {"y": 1}, "z": 2}, {"x": {"y": 1}, "z": 3}]},
        );
    }

    #[test]
    fn push_clause_errors() {
        let cases = vec![
            doc! {"$push": {"a": {"$each": 1}}},
            doc! {"$push": {"a": {"$each": [], "$slice": "x"}}},
            doc! {"$push": {"a": {"$each": [], "$slice": 1.5}}},
            doc! {"$push": {"a": {"$each": [], "$position": "x"}}},
            doc! {"$push": {"a": {"$each": [], "$sort": 2}}},
            doc! {"$push": {"a": {"$each": [], "$sort": {}}}},
            doc! {"$push": {"a": {"$each": [], "$sort": {"a": 0}}}},
            doc! {"$push": {"a": {"$each": [], "$sort": {"a..b": 1}}}},
            doc! {"$push": {"a": {"$each": [], "$sort": "x"}}},
            doc! {"$push": {"a": {"$each": [], "$foo": 1}}},
        ];
        for spec in cases {
            assert_eq!(parse_err(spec).code, codes::BAD_VALUE);
        }
        // An integral double is an integer.
        parse(doc! {"$push": {"a": {"$each": [], "$slice": 2.0, "$position": -1.0}}});
    }

    // --- $addToSet -----------------------------------------------------------

    #[test]
    fn add_to_set() {
        let (d, changed) = run(doc! {"_id": 1, "a": [1, 2]}, doc! {"$addToSet": {"a": 2.0}});
        assert!(!changed);
        same(&d, &doc! {"_id": 1, "a": [1, 2]});
        let (d, _) = run(
            doc! {"_id": 1, "a": [1, {"x": 1}]},
            doc! {"$addToSet": {"a": {"$each": [3, {"x": 1}, 3, {"x": 2}]}}},
        );
        same(&d, &doc! {"_id": 1, "a": [1, {"x": 1}, 3, {"x": 2}]});
        let (d, _) = run(
            doc! {"_id": 1},
            doc! {"$addToSet": {"a": {"$each": [1, 1]}}},
        );
        same(&d, &doc! {"_id": 1, "a": [1]});
        let e = apply_err(doc! {"_id": 1, "a": 1}, doc! {"$addToSet": {"a": 2}});
        assert_eq!(e.code, codes::BAD_VALUE);
        assert_eq!(
            parse_err(doc! {"$addToSet": {"a": {"$each": 1}}}).code,
            codes::TYPE_MISMATCH
        );
        assert_eq!(
            parse_err(doc! {"$addToSet": {"a": {"$each": [], "x": 1}}}).code,
            codes::BAD_VALUE
        );
        // A document whose first field is not $each is a value.
        let (d, _) = run(
            doc! {"_id": 1, "a": []},
            doc! {"$addToSet": {"a": {"x": 1, "$each": [2]}}},
        );
        same(&d, &doc! {"_id": 1, "a": [{"x": 1, "$each": [2]}]});
    }

    // --- $pop -----------------------------------------------------------------

    #[test]
    fn pop() {
        let (d, _) = run(doc! {"_id": 1, "a": [1, 2, 3]}, doc! {"$pop": {"a": 1}});
        same(&d, &doc! {"_id": 1, "a": [1, 2]});
        let (d, _) = run(doc! {"_id": 1, "a": [1, 2, 3]}, doc! {"$pop": {"a": -1.0}});
        same(&d, &doc! {"_id": 1, "a": [2, 3]});
        let (_, changed) = run(doc! {"_id": 1, "a": []}, doc! {"$pop": {"a": 1}});
        assert!(!changed);
        let (_, changed) = run(doc! {"_id": 1}, doc! {"$pop": {"a": 1}});
        assert!(!changed);
        let e = parse_err(doc! {"$pop": {"a": 2}});
        assert_eq!(e.code, codes::FAILED_TO_PARSE);
        assert_eq!(e.message, "$pop expects 1 or -1, found: 2");
        assert_eq!(parse_err(doc! {"$pop": {"a": "x"}}).code, codes::BAD_VALUE);
        let e = apply_err(doc! {"_id": 1, "a": 1}, doc! {"$pop": {"a": 1}});
        assert_eq!(e.code, codes::TYPE_MISMATCH);
        assert_eq!(
            e.message,
            "Path 'a' contains an element of non-array type 'int'"
        );
    }

    // --- $pull, $pullAll --------------------------------------------------------

    #[test]
    fn pull_values_and_conditions() {
        let (d, changed) = run(
            doc! {"_id": 1, "a": [1, 2.0, 3, 2, [2]]},
            doc! {"$pull": {"a": 2}},
        );
        assert!(changed);
        same(&d, &doc! {"_id": 1, "a": [1, 3, [2]]});
        let (d, _) = run(
            doc! {"_id": 1, "a": [1, 5, 6, 9, "x"]},
            doc! {"$pull": {"a": {"$gte": 6}}},
        );
        same(&d, &doc! {"_id": 1, "a": [1, 5, "x"]});
        let (d, _) = run(
            doc! {"_id": 1, "a": [1, 2, 3, 4]},
            doc! {"$pull": {"a": {"$in": [1, 3], "$ne": 4}}},
        );
        same(&d, &doc! {"_id": 1, "a": [2, 4]});
        let (d, _) = run(
            doc! {"_id": 1, "a": [[1, 2], [3]]},
            doc! {"$pull": {"a": [1, 2]}},
        );
        same(&d, &doc! {"_id": 1, "a": [[3]]});
        let (_, changed) = run(doc! {"_id": 1, "a": [1]}, doc! {"$pull": {"a": 7}});
        assert!(!changed);
        let (_, changed) = run(doc! {"_id": 1}, doc! {"$pull": {"a": 7}});
        assert!(!changed);
        let e = apply_err(doc! {"_id": 1, "a": 1}, doc! {"$pull": {"a": 1}});
        assert_eq!(e.code, codes::BAD_VALUE);
    }

    #[test]
    fn pull_documents_by_query() {
        let (d, _) = run(
            doc! {"_id": 1, "r": [
                {"item": "A", "score": 5},
                {"item": "B", "score": 8, "comment": "x"},
                {"item": "B", "score": 4},
                8,
            ]},
            doc! {"$pull": {"r": {"score": 8, "item": "B"}}},
        );
        same(
            &d,
            &doc! {"_id": 1, "r": [{"item": "A", "score": 5}, {"item": "B", "score": 4}, 8]},
        );
        let (d, _) = run(
            doc! {"_id": 1, "r": [{"s": 1}, {"s": 5}, {"t": 1}]},
            doc! {"$pull": {"r": {"s": {"$gt": 2}}}},
        );
        same(&d, &doc! {"_id": 1, "r": [{"s": 1}, {"t": 1}]});
        let (d, _) = run(
            doc! {"_id": 1, "r": [{"s": 1}, {"s": 5}, {"t": 1}]},
            doc! {"$pull": {"r": {"$or": [{"s": 1}, {"t": {"$exists": true}}]}}},
        );
        same(&d, &doc! {"_id": 1, "r": [{"s": 5}]});
        // Paths inside elements traverse their arrays.
        let (d, _) = run(
            doc! {"_id": 1, "r": [{"a": [{"b": 1}, {"b": 2}]}, {"a": [{"b": 3}]}]},
            doc! {"$pull": {"r": {"a.b": 2}}},
        );
        same(&d, &doc! {"_id": 1, "r": [{"a": [{"b": 3}]}]});
        // An empty query matches every document element.
        let (d, _) = run(
            doc! {"_id": 1, "r": [{"a": 1}, 2, {}]},
            doc! {"$pull": {"r": {}}},
        );
        same(&d, &doc! {"_id": 1, "r": [2]});
    }

    #[test]
    fn pull_all() {
        let (d, _) = run(
            doc! {"_id": 1, "a": [0, 2, 5, 5, 1, 0.0]},
            doc! {"$pullAll": {"a": [0, 5]}},
        );
        same(&d, &doc! {"_id": 1, "a": [2, 1]});
        assert_eq!(
            parse_err(doc! {"$pullAll": {"a": 1}}).code,
            codes::BAD_VALUE
        );
        let e = apply_err(doc! {"_id": 1, "a": "x"}, doc! {"$pullAll": {"a": [1]}});
        assert_eq!(e.code, codes::BAD_VALUE);
    }

    // --- $bit ------------------------------------------------------------------

    #[test]
    fn bit() {
        let (d, _) = run(doc! {"_id": 1, "a": 13}, doc! {"$bit": {"a": {"and": 10}}});
        same(&d, &doc! {"_id": 1, "a": 8});
        let (d, _) = run(
            doc! {"_id": 1, "a": 13},
            doc! {"$bit": {"a": {"or": 2, "xor": 1}}},
        );
        same(&d, &doc! {"_id": 1, "a": 14});
        let (d, _) = run(doc! {"_id": 1, "a": 1}, doc! {"$bit": {"a": {"or": 4i64}}});
        same(&d, &doc! {"_id": 1, "a": 5i64});
        let (d, _) = run(
            doc! {"_id": 1, "a": -1i64},
            doc! {"$bit": {"a": {"and": 0xff}}},
        );
        same(&d, &doc! {"_id": 1, "a": 255i64});
        let (d, _) = run(
            doc! {"_id": 1},
            doc! {"$bit": {"a": {"or": 5}, "b": {"and": 5}}},
        );
        same(&d, &doc! {"_id": 1, "a": 5, "b": 0});
        let (_, changed) = run(doc! {"_id": 1, "a": 5}, doc! {"$bit": {"a": {"or": 1}}});
        assert!(!changed);
        for spec in [
            doc! {"$bit": {"a": 5}},
            doc! {"$bit": {"a": {}}},
            doc! {"$bit": {"a": {"nand": 1}}},
            doc! {"$bit": {"a": {"and": 1.0}}},
        ] {
            assert_eq!(parse_err(spec).code, codes::BAD_VALUE);
        }
        let e = apply_err(doc! {"_id": 1, "a": 1.0}, doc! {"$bit": {"a": {"and": 1}}});
        assert_eq!(e.code, codes::BAD_VALUE);
    }

    // --- positional forms ---------------------------------------------------

    #[test]
    fn positional_uses_the_matched_index() {
        let mut with_match = ctx();
        with_match.positional = Some(1);
        let (d, _) = run_with(
            doc! {"_id": 1, "a": [{"b": 1}, {"b": 2}, {"b": 3}]},
            doc! {"$set": {"a.$.b": 20}, "$inc": {"a.$.c": 1}},
            &[],
            with_match,
        );
        same(
            &d,
            &doc! {"_id": 1, "a": [{"b": 1}, {"b": 20, "c": 1}, {"b": 3}]},
        );
        let (d, _) = run_with(
            doc! {"_id": 1, "a": [5, 6, 7]},
            doc! {"$set": {"a.$": 0}},
            &[],
            with_match,
        );
        same(&d, &doc! {"_id": 1, "a": [5, 0, 7]});
        let update = parse(doc! {"$set": {"a.$": 0}});
        assert!(matches!(&update, Update::Operators(ops) if ops.uses_positional()));
        let e = apply_err(doc! {"_id": 1, "a": [1]}, doc! {"$set": {"a.$": 0}});
        assert_eq!(e.code, codes::BAD_VALUE);
        assert_eq!(
            e.message,
            "The positional operator did not find the match needed from the query."
        );
        // `$` and the index it stands for, on one field: a conflict.
        let e = apply_err_with(
            doc! {"_id": 1, "a": [1, 2]},
            doc! {"$set": {"a.$": 0, "a.1": 0}},
            &[],
            with_match,
        );
        assert_eq!(e.code, codes::CONFLICTING_UPDATE_OPERATORS);
    }

    #[test]
    fn all_positional() {
        let (d, _) = run(
            doc! {"_id": 1, "a": [1, 2, 3]},
            doc! {"$inc": {"a.$[]": 10}},
        );
        same(&d, &doc! {"_id": 1, "a": [11, 12, 13]});
        let (d, _) = run(
            doc! {"_id": 1, "a": [{"b": [1, 2]}, {"b": [3]}]},
            doc! {"$mul": {"a.$[].b.$[]": 2}},
        );
        same(&d, &doc! {"_id": 1, "a": [{"b": [2, 4]}, {"b": [6]}]});
        let (_, changed) = run(doc! {"_id": 1, "a": []}, doc! {"$set": {"a.$[]": 1}});
        assert!(!changed);
        let e = apply_err(doc! {"_id": 1}, doc! {"$set": {"a.$[]": 1}});
        assert_eq!(e.code, codes::BAD_VALUE);
        assert_eq!(
            e.message,
            "The path 'a' must exist in the document in order to apply array updates."
        );
        let e = apply_err(doc! {"_id": 1, "a": 5}, doc! {"$set": {"a.$[]": 1}});
        assert_eq!(e.code, codes::BAD_VALUE);
        assert_eq!(
            e.message,
            "Cannot apply array updates to non-array element a: 5"
        );
    }

    #[test]
    fn filtered_positional() {
        let (d, _) = run_with(
            doc! {"_id": 1, "grades": [95, 80, 85, "x"]},
            doc! {"$set": {"grades.$[g]": 100}},
            &[doc! {"g": {"$gte": 85}}],
            ctx(),
        );
        same(&d, &doc! {"_id": 1, "grades": [100, 80, 100, "x"]});
        let (d, _) = run_with(
            doc! {"_id": 1, "grades": [{"grade": 80, "mean": 75}, {"grade": 85, "mean": 90}, {"grade": 90, "mean": 85}]},
            doc! {"$set": {"grades.$[e].mean": 100}},
            &[doc! {"e.grade": {"$gte": 85}, "e.mean": {"$lt": 90}}],
            ctx(),
        );
        same(
            &d,
            &doc! {"_id": 1, "grades": [{"grade": 80, "mean": 75}, {"grade": 85, "mean": 90}, {"grade": 90, "mean": 100}]},
        );
        // Two filters on different fields of the same elements.
        let (d, _) = run_with(
            doc! {"_id": 1, "a": [{"v": 1}, {"v": 2}, {"v": 3}]},
            doc! {"$set": {"a.$[x].big": true, "a.$[y].small": true}},
            &[doc! {"x.v": {"$gte": 2}}, doc! {"y.v": {"$lte": 2}}],
            ctx(),
        );
        same(
            &d,
            &doc! {"_id": 1, "a": [{"v": 1, "small": true}, {"v": 2, "big": true, "small": true}, {"v": 3, "big": true}]},
        );
        // ... or on the same field: a conflict when one element matches both.
        let e = apply_err_with(
            doc! {"_id": 1, "a": [1, 2, 3]},
            doc! {"$set": {"a.$[x]": 0, "a.$[y]": 9}},
            &[doc! {"x": {"$gte": 2}}, doc! {"y": {"$lte": 2}}],
            ctx(),
        );
        assert_eq!(e.code, codes::CONFLICTING_UPDATE_OPERATORS);
        // Nested, with $or in a filter.
        let (d, _) = run_with(
            doc! {"_id": 1, "a": [{"b": [1, 2, 3]}, {"b": [4]}]},
            doc! {"$inc": {"a.$[].b.$[n]": 100}},
            &[doc! {"$or": [{"n": 1}, {"n": {"$gt": 3}}]}],
            ctx(),
        );
        same(
            &d,
            &doc! {"_id": 1, "a": [{"b": [101, 2, 3]}, {"b": [104]}]},
        );
    }

    #[test]
    fn array_filter_errors() {
        let parse_with = |spec: Document, filters: &[Document]| {
            Update::parse(&spec, filters).expect_err("must not parse")
        };
        let e = parse_with(doc! {"$set": {"a.$[x]": 1}}, &[]);
        assert_eq!(e.code, codes::BAD_VALUE);
        assert_eq!(
            e.message,
            "No array filter found for identifier 'x' in path 'a.$[x]'"
        );
        let e = parse_with(doc! {"$set": {"a": 1}}, &[doc! {"x": 1}]);
        assert_eq!(e.code, codes::FAILED_TO_PARSE);
        assert!(e
            .message
            .starts_with("The array filter for identifier 'x' was not used"));
        let e = parse_with(doc! {"$set": {"a.$[x]": 1}}, &[doc! {}]);
        assert_eq!(e.code, codes::FAILED_TO_PARSE);
        let e = parse_with(doc! {"$set": {"a.$[x]": 1}}, &[doc! {"x": 1, "y": 1}]);
        assert_eq!(e.code, codes::FAILED_TO_PARSE);
        let e = parse_with(doc! {"$set": {"a.$[X]": 1}}, &[doc! {"X": 1}]);
        assert_eq!(e.code, codes::BAD_VALUE);
        let e = parse_with(
            doc! {"$set": {"a.$[x]": 1}},
            &[doc! {"x": 1}, doc! {"x": 2}],
        );
        assert_eq!(e.code, codes::FAILED_TO_PARSE);
    }

    // --- replacement ----------------------------------------------------------

    #[test]
    fn replacement_keeps_id() {
        let (d, changed) = run(doc! {"_id": 1, "a": 1, "b": 2}, doc! {"c": 3, "a": 1});
        assert!(changed);
        same(&d, &doc! {"_id": 1, "c": 3, "a": 1});
        let (_, changed) = run(doc! {"_id": 1, "a": 1}, doc! {"a": 1});
        assert!(!changed);
        let (d, _) = run(doc! {"_id": 1, "a": 1}, doc! {"b": 1, "_id": 1.0});
        same(&d, &doc! {"b": 1, "_id": 1});
        let e = apply_err(doc! {"_id": 1, "a": 1}, doc! {"_id": 2});
        assert_eq!(e.code, codes::IMMUTABLE_FIELD);
        let (d, _) = run(doc! {"_id": 1, "a": 1}, doc! {});
        same(&d, &doc! {"_id": 1});
        let e = apply_err(doc! {"a": 1}, doc! {"_id": [1]});
        assert_eq!(e.code, codes::INVALID_ID_FIELD);
    }

    // --- upsert seed ----------------------------------------------------------

    #[test]
    fn upsert_seed_takes_equalities() {
        let seed = upsert_seed(&doc! {
            "b": 1,
            "a.y": {"$eq": 2},
            "a.x": "s",
            "c": {"$gt": 1},
            "d": {"$in": [1]},
            "_id": 7,
            "$and": [{"e": 1}, {"f": {"$lt": 3}}, {"$and": [{"g.h": [1, 2]}]}],
            "$or": [{"o": 1}],
            "r": bson::Regex { pattern: "x".try_into().unwrap(), options: "".try_into().unwrap() },
            "n": Bson::Null,
            "sub": {"k": 1},
        });
        same(
            &seed,
            &doc! {
                "_id": 7,
                "a": {"x": "s", "y": 2},
                "b": 1,
                "e": 1,
                "g": {"h": [1, 2]},
                "n": Bson::Null,
                "sub": {"k": 1},
            },
        );
        // Overlapping paths: the first in path order wins.
        let seed = upsert_seed(&doc! {"a.b": 2, "a": 1});
        same(&seed, &doc! {"a": 1});
    }

    #[test]
    fn upsert_flow() {
        let filter = doc! {"k": "x", "n": {"$gt": 1}};
        let update =
            parse(doc! {"$set": {"v": 1}, "$setOnInsert": {"created": true}, "$inc": {"count": 1}});
        let mut doc = upsert_seed(&filter);
        let mut insert = ctx();
        insert.inserting = true;
        assert!(update.apply(&mut doc, &insert).expect("applies"));
        same(&doc, &doc! {"k": "x", "count": 1, "created": true, "v": 1});
    }

    // --- conditions -------------------------------------------------------------

    #[test]
    fn conditions_follow_query_semantics() {
        let c = |f: Document| Condition::parse(&f).expect("simple");
        let d = doc! {"a": [1, 5], "b": {"c": [{"d": 1}, {"d": 2}, {"e": 3}]}, "n": Bson::Null};
        assert!(c(doc! {"a": 5}).matches(&d));
        assert!(c(doc! {"a": [1, 5]}).matches(&d));
        assert!(c(doc! {"a": {"$gt": 4, "$lt": 6}}).matches(&d));
        assert!(!c(doc! {"a": {"$gt": 5}}).matches(&d));
        assert!(!c(doc! {"a": {"$gt": "a"}}).matches(&d));
        assert!(c(doc! {"b.c.d": 2}).matches(&d));
        assert!(c(doc! {"b.c.1.d": 2}).matches(&d));
        assert!(c(doc! {"b.c.d": Bson::Null}).matches(&d));
        assert!(c(doc! {"zz": Bson::Null}).matches(&d));
        assert!(c(doc! {"n": {"$exists": true}}).matches(&d));
        assert!(c(doc! {"zz": {"$exists": false}}).matches(&d));
        assert!(c(doc! {"a": {"$nin": [2, 3]}}).matches(&d));
        assert!(!c(doc! {"a": {"$ne": 1}}).matches(&d));
        assert!(c(doc! {"$nor": [{"a": 3}]}).matches(&d));
        assert!(c(doc! {"n": {"$gte": Bson::Null}}).matches(&d));
    }

    #[test]
    fn conditions_beyond_the_subset_use_the_matcher() {
        let (d, _) = run(
            doc! {"_id": 1, "a": ["apple", "kiwi", "avocado"]},
            doc! {"$pull": {"a": bson::Regex { pattern: "^a".try_into().unwrap(), options: "".try_into().unwrap() }}},
        );
        same(&d, &doc! {"_id": 1, "a": ["kiwi"]});
        let (d, _) = run(
            doc! {"_id": 1, "r": [{"x": [1, 2]}, {"x": [3]}]},
            doc! {"$pull": {"r": {"x": {"$size": 2}}}},
        );
        same(&d, &doc! {"_id": 1, "r": [{"x": [3]}]});
    }

    #[test]
    fn new_fields_land_in_path_order_across_operators() {
        let (d, _) = run(
            doc! {"_id": 1, "m": 0},
            doc! {"$inc": {"z": 1}, "$push": {"a": 1}, "$set": {"m": 1, "c.y": 1, "c.x": 1}, "$min": {"b": 2}},
        );
        same(
            &d,
            &doc! {"_id": 1, "m": 1, "a": [1], "b": 2, "c": {"x": 1, "y": 1}, "z": 1},
        );
        let (d, _) = run(doc! {"_id": 1}, doc! {"$push": {"x.y": {"$each": [1, 2]}}});
        same(&d, &doc! {"_id": 1, "x": {"y": [1, 2]}});
    }

    #[test]
    fn array_updates_are_all_or_nothing() {
        // The third element is not a number: nothing changes.
        let e = apply_err(
            doc! {"_id": 1, "a": [1, 2, "x", 4]},
            doc! {"$inc": {"a.$[]": 1}},
        );
        assert_eq!(e.code, codes::TYPE_MISMATCH);
        // An upsert's new document has no array to update.
        let mut insert = ctx();
        insert.inserting = true;
        let e = apply_err_with(doc! {"k": 1}, doc! {"$set": {"a.$[]": 1}}, &[], insert);
        assert_eq!(e.code, codes::BAD_VALUE);
    }

    #[test]
    fn other_operators_under_array_updates() {
        let (d, _) = run(
            doc! {"_id": 1, "a": [{"b": 1, "c": 1}, {"c": 2}, 3]},
            doc! {"$unset": {"a.$[].b": 1}},
        );
        same(&d, &doc! {"_id": 1, "a": [{"c": 1}, {"c": 2}, 3]});
        let (d, _) = run(
            doc! {"_id": 1, "a": [{"t": [1, 2, 1]}, {"t": [2]}]},
            doc! {"$pull": {"a.$[].t": 1}, "$push": {"b": 0}},
        );
        same(
            &d,
            &doc! {"_id": 1, "a": [{"t": [2]}, {"t": [2]}], "b": [0]},
        );
        let (d, _) = run_with(
            doc! {"_id": 1, "a": [{"k": "x", "v": [1, 5, 9]}, {"k": "y", "v": [5]}]},
            doc! {"$set": {"a.$[i].v.$[j]": 0}},
            &[doc! {"i.k": "x"}, doc! {"j": {"$gte": 5}}],
            ctx(),
        );
        same(
            &d,
            &doc! {"_id": 1, "a": [{"k": "x", "v": [1, 0, 0]}, {"k": "y", "v": [5]}]},
        );
        let mut with_match = ctx();
        with_match.positional = Some(0);
        let (d, _) = run_with(
            doc! {"_id": 1, "a": [{"b": {"c": 1}}, {"b": {"c": 2}}]},
            doc! {"$set": {"a.$.b.c": 10, "a.$.b.d": 11}},
            &[],
            with_match,
        );
        same(
            &d,
            &doc! {"_id": 1, "a": [{"b": {"c": 10, "d": 11}}, {"b": {"c": 2}}]},
        );
    }

    #[test]
    fn add_to_set_compares_documents_in_field_order() {
        let (d, changed) = run(
            doc! {"_id": 1, "a": [{"x": 1, "y": 2}]},
            doc! {"$addToSet": {"a": {"y": 2, "x": 1}}},
        );
        assert!(changed);
        same(
            &d,
            &doc! {"_id": 1, "a": [{"x": 1, "y": 2}, {"y": 2, "x": 1}]},
        );
        let (_, changed) = run(
            doc! {"_id": 1, "a": [{"x": 1, "y": 2}]},
            doc! {"$addToSet": {"a": {"x": 1.0, "y": 2i64}}},
        );
        assert!(!changed);
    }

    #[test]
    fn decimal_arithmetic_is_refused_not_approximated() {
        let d: bson::Decimal128 = "1.5".parse().expect("decimal");
        let e = apply_err(doc! {"_id": 1, "a": d}, doc! {"$inc": {"a": 1}});
        assert_eq!(e.code, codes::BAD_VALUE);
        // Setting a missing field needs no arithmetic.
        let (out, _) = run(doc! {"_id": 1}, doc! {"$inc": {"a": d}, "$mul": {"b": d}});
        assert_eq!(out.get("a"), Some(&Bson::Decimal128(d)));
        assert!(matches!(out.get("b"), Some(Bson::Decimal128(_))));
    }

    proptest::proptest! {
        #[test]
        fn inc_and_mul_follow_mongodb_integer_promotion(
            a in proptest::prelude::any::<i64>(),
            b in proptest::prelude::any::<i64>(),
            a_narrow in proptest::prelude::any::<bool>(),
            b_narrow in proptest::prelude::any::<bool>(),
            multiply in proptest::prelude::any::<bool>(),
        ) {
            let as_bson = |v: i64, narrow: bool| {
                if narrow { Bson::Int32(v as i32) } else { Bson::Int64(v) }
            };
            let (x, y) = (as_bson(a, a_narrow), as_bson(b, b_narrow));
            let exact = if multiply {
                i128::from(as_i64(&x)) * i128::from(as_i64(&y))
            } else {
                i128::from(as_i64(&x)) + i128::from(as_i64(&y))
            };
            let op = if multiply { "$mul" } else { "$inc" };
            let mut target = doc! {"_id": 1, "v": x.clone()};
            let update = Update::parse(&doc! {op: {"v": y.clone()}}, &[]).expect("parses");
            let result = update.apply(&mut target, &ctx());
            let both_narrow = a_narrow && b_narrow;
            if both_narrow && i32::try_from(exact).is_ok() {
                proptest::prop_assert_eq!(target.get("v"), Some(&Bson::Int32(exact as i32)));
            } else if let Ok(wide) = i64::try_from(exact) {
                proptest::prop_assert_eq!(target.get("v"), Some(&Bson::Int64(wide)));
            } else {
                proptest::prop_assert!(!both_narrow);
                proptest::prop_assert_eq!(result.map_err(|e| e.code), Err(codes::BAD_VALUE));
                proptest::prop_assert_eq!(target.get("v"), Some(&x));
            }
        }
    }

    #[test]
    fn field_order_is_numeric_then_bytes() {
        let mut names = vec!["b", "10", "a", "9", "B", "01"];
        names.sort_by(|a, b| compare_field_names(a, b));
        assert_eq!(names, vec!["9", "10", "01", "B", "a", "b"]);
    }

    #[test]
    fn messages_show_values_as_mongodb_does() {
        assert_eq!(show(&Bson::Double(5.0)), "5.0");
        assert_eq!(show(&Bson::String("x".into())), "\"x\"");
        assert_eq!(
            show(&Bson::Document(doc! {"a": [1, {}]})),
            "{ a: [ 1, {} ] }"
        );
    }
}
