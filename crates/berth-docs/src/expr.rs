//! MongoDB aggregation expressions: parsed once into a tree
//! ([`Expr::parse`]), evaluated many times against a document
//! ([`Expr::eval`]).
//!
//! *Missing is not null.* During evaluation a value is an `Option<Bson>`,
//! `None` being MongoDB's "missing" (a field that is not there, `$$REMOVE`,
//! an array index past the end). Operators tell them apart as MongoDB does
//! (`$ifNull`, `$type` answers "missing", `$eq` puts missing below null).
//! [`Expr::eval`] maps a missing result to null; [`Expr::eval_opt`] keeps it,
//! for the stages where a missing result means "no field".
//!
//! *Purity.* No clock, no I/O, no randomness: `$$NOW` is the time given in
//! [`Variables`], and an error without one; `$rand` draws from a generator
//! the caller seeds there, and is an error without one.
//!
//! *Dates are UTC.* The date operators accept a `timezone` of "UTC", "GMT",
//! "Z" or a fixed offset ("+05:30", "-0800", "+03"); Olson names
//! ("Europe/Paris") are refused (there is no time-zone database here).
//!
//! *Decimal128* values compare exactly ([`crate::order`]) but arithmetic on
//! them runs in double precision and converts the result back to decimal128.
//!
//! Architecture invariant: parsing checks everything that does not depend on
//! the document (operator names, arity, variable scopes, option names), so
//! evaluation only fails on what the data brings (types, division by zero).

use std::cmp::Ordering;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;

use bson::{oid::ObjectId, Bson, DateTime, Decimal128, Document};

use crate::error::codes;
use crate::order::{self, Num};
use crate::DocError;

/// MongoDB's InvalidPipelineOperator: an unknown `$operator`.
pub const INVALID_PIPELINE_OPERATOR: i32 = 168;
/// MongoDB's ConversionFailure (`$convert` and the `$to*` operators).
pub const CONVERSION_FAILURE: i32 = 241;
/// MongoDB's ExceededMemoryLimit: a value too large to build (`$range`).
pub const EXCEEDED_MEMORY_LIMIT: i32 = 146;
/// The most elements `$range` builds (MongoDB bounds it by bytes).
pub const RANGE_ELEMENTS_MAX: usize = 1 << 22;
/// The most parts a field path may have (`a.b.c` has three): the path
/// walkers recurse once per part.
pub const PATH_PARTS_MAX: usize = 200;
/// The deepest an expression may nest (documents, arrays, operators), so
/// that parsing and evaluation recurse a bounded number of times (MongoDB
/// refuses BSON nested deeper than about 200 levels in commands).
pub const EXPRESSION_DEPTH_MAX: usize = 150;

/// A value during evaluation: `None` is missing.
type Val = Option<Bson>;
type Result<T> = std::result::Result<T, DocError>;

fn err(code: i32, message: impl Into<String>) -> DocError {
    DocError::new(code, message)
}

/// The values of variables an expression is evaluated with: `$$NOW`, user
/// variables bound outside the expression (`$lookup`'s `let`, a command's
/// `let`), and the source of `$rand`'s numbers.
#[derive(Debug, Clone, Default)]
pub struct Variables {
    now: Option<DateTime>,
    values: Vec<(String, Bson)>,
    /// The state of `$rand`'s generator (SplitMix64), shared by clones so
    /// that each `$rand` evaluated gets the next number.
    rand: Option<Arc<AtomicU64>>,
}

impl Variables {
    pub fn new() -> Variables {
        Variables::default()
    }

    /// These variables with `$$NOW` set to `now`.
    pub fn with_now(mut self, now: DateTime) -> Variables {
        self.now = Some(now);
        self
    }

    /// These variables with `$rand` drawing from a generator seeded with
    /// `seed` (the caller's randomness: evaluation itself has none, so the
    /// same seed gives the same numbers).
    pub fn with_rand(mut self, seed: u64) -> Variables {
        self.rand = Some(Arc::new(AtomicU64::new(seed)));
        self
    }

    /// The next number in [0, 1) of `$rand`'s generator, if one was given.
    fn next_rand(&self) -> Option<f64> {
        let state = self.rand.as_ref()?;
        // SplitMix64: advance by the golden gamma, then mix.
        let mut z = state
            .fetch_add(0x9E37_79B9_7F4A_7C15, AtomicOrdering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // The top 53 bits as a double in [0, 1).
        Some((z >> 11) as f64 / (1u64 << 53) as f64)
    }

    /// The time `$$NOW` stands for, when one was given.
    pub fn now(&self) -> Option<DateTime> {
        self.now
    }

    /// Binds `$$name`; a later binding of a name hides an earlier one.
    pub fn bind(&mut self, name: impl Into<String>, value: Bson) {
        self.values.push((name.into(), value));
    }

    /// The value bound to `$$name`.
    pub fn get(&self, name: &str) -> Option<&Bson> {
        self.values
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// The names of the bound user variables.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.values.iter().map(|(n, _)| n.as_str())
    }
}

/// The variables of a command's `let` (`{name: expression, ...}`) added to
/// `base`: each expression is evaluated once, against no document (so it
/// may use `$$NOW` and `$rand` from `base`, not fields), as MongoDB does.
pub fn let_variables(spec: &Document, mut base: Variables) -> Result<Variables> {
    let empty = Document::new();
    let mut values = Vec::with_capacity(spec.len());
    for (name, v) in spec {
        check_var_name(name, false)?;
        let value = Expr::parse(v)?.eval_with(&empty, &base)?;
        values.push((name.clone(), value));
    }
    for (name, value) in values {
        base.bind(name, value);
    }
    Ok(base)
}

/// A parsed aggregation expression (`"$a.b"`, `{$add: ["$x", 1]}`, literals).
#[derive(Debug, Clone)]
pub struct Expr {
    node: Node,
}

impl Expr {
    /// Parses an expression. User variables must be bound inside it
    /// (`$let`, `$map`, `$filter`, `$reduce`).
    pub fn parse(v: &Bson) -> Result<Expr> {
        Expr::parse_with_vars(v, &[])
    }

    /// Parses an expression that may also use the user variables `names`,
    /// bound outside it (as `$lookup`'s `let` binds them for its pipeline).
    pub fn parse_with_vars(v: &Bson, names: &[&str]) -> Result<Expr> {
        let mut scope = Scope {
            names: names.iter().map(|n| n.to_string()).collect(),
            depth: 0,
        };
        Ok(Expr {
            node: parse_node(v, &mut scope)?,
        })
    }

    /// Evaluates against a document (`$$ROOT` and `$$CURRENT` are `root`);
    /// a missing result is null. `$$NOW` is an error here: no clock is read.
    pub fn eval(&self, root: &Document) -> Result<Bson> {
        self.eval_with(root, &Variables::default())
    }

    /// Evaluates with variables (`$$NOW`, outer user variables); a missing
    /// result is null.
    pub fn eval_with(&self, root: &Document, vars: &Variables) -> Result<Bson> {
        Ok(self.eval_opt(root, vars)?.unwrap_or(Bson::Null))
    }

    /// Evaluates with variables; `None` when the result is missing.
    pub fn eval_opt(&self, root: &Document, vars: &Variables) -> Result<Option<Bson>> {
        let mut env = Env {
            root,
            vars,
            local: Vec::new(),
        };
        eval(&self.node, &mut env)
    }

    /// The constant this expression always evaluates to, if it is one.
    pub fn as_constant(&self) -> Option<&Bson> {
        match &self.node {
            Node::Const(v) => Some(v),
            _ => None,
        }
    }
}

/// MongoDB's truthiness: false, null, undefined, missing and numeric zero are false.
pub fn truthy(v: &Bson) -> bool {
    !matches!(v, Bson::Boolean(false) | Bson::Null | Bson::Undefined)
        && !matches!(crate::order::number(v), Some(crate::order::Num::Int(0)))
        && !matches!(crate::order::number(v), Some(crate::order::Num::Float(f)) if f == 0.0)
}

fn truthy_val(v: &Val) -> bool {
    v.as_ref().is_some_and(truthy)
}

/// Null, undefined or missing: what most operators answer null for.
fn nullish(v: &Val) -> bool {
    matches!(v, None | Some(Bson::Null) | Some(Bson::Undefined))
}

/// MongoDB's name of a value's type, as `$type` reports it.
pub fn type_name(v: Option<&Bson>) -> &'static str {
    v.map_or("missing", crate::order::type_name)
}

fn tn(v: &Val) -> &'static str {
    type_name(v.as_ref())
}

/// Compares two values as the expression language does: missing is below
/// everything, then [`order::compare`].
pub(crate) fn compare_values(a: Option<&Bson>, b: Option<&Bson>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(x), Some(y)) => order::compare(x, y),
    }
}

/// A short rendering of a value for error messages.
fn show(v: &Val) -> String {
    match v {
        None => "missing".to_string(),
        Some(Bson::String(s)) => format!("\"{s}\""),
        Some(Bson::Double(f)) => format_double(*f),
        Some(v) => {
            let s = v.to_string();
            if s.len() > 200 {
                format!("{}...", s.chars().take(200).collect::<String>())
            } else {
                s
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The tree

#[derive(Debug, Clone)]
enum Node {
    Const(Bson),
    /// A path from `$$CURRENT` (which is `$$ROOT` unless a `$let` rebinds it).
    Field(Vec<String>),
    Var(Var, Vec<String>),
    Object(Vec<(String, Node)>),
    Array(Vec<Node>),
    Call {
        op: Op,
        name: &'static str,
        args: Vec<Node>,
    },
    And(Vec<Node>),
    Or(Vec<Node>),
    Cond(Box<[Node; 3]>),
    IfNull(Vec<Node>),
    Switch {
        branches: Vec<(Node, Node)>,
        default: Option<Box<Node>>,
    },
    Let {
        vars: Vec<(String, Node)>,
        body: Box<Node>,
    },
    Map {
        input: Box<Node>,
        var: String,
        body: Box<Node>,
    },
    Filter {
        input: Box<Node>,
        var: String,
        cond: Box<Node>,
        limit: Option<Box<Node>>,
    },
    Reduce {
        input: Box<Node>,
        initial: Box<Node>,
        body: Box<Node>,
    },
    SortArray {
        input: Box<Node>,
        by: SortBy,
    },
    Trim {
        name: &'static str,
        left: bool,
        right: bool,
        input: Box<Node>,
        chars: Option<Box<Node>>,
    },
    Convert {
        input: Box<Node>,
        to: Box<Node>,
        on_error: Option<Box<Node>>,
        on_null: Option<Box<Node>>,
    },
    DatePart {
        part: DatePart,
        name: &'static str,
        date: Box<Node>,
        timezone: Option<Box<Node>>,
    },
    DateToString {
        date: Box<Node>,
        format: Option<Box<Node>>,
        timezone: Option<Box<Node>>,
        on_null: Option<Box<Node>>,
    },
    GetField {
        field: String,
        input: Option<Box<Node>>,
    },
    SetField {
        field: String,
        input: Box<Node>,
        /// `None` for `$unsetField`.
        value: Option<Box<Node>>,
    },
    /// `$rand`: the next number of [`Variables`]' generator.
    Rand,
}

#[derive(Debug, Clone)]
enum Var {
    Root,
    /// `$$CURRENT` when no `$let` rebinds it: the root.
    Current,
    Remove,
    Now,
    User(String),
}

#[derive(Debug, Clone)]
enum SortBy {
    Value { descending: bool },
    Fields(SortPattern),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DatePart {
    Year,
    Month,
    DayOfMonth,
    Hour,
    Minute,
    Second,
    Millisecond,
    DayOfWeek,
    DayOfYear,
}

/// Operators whose arguments are all evaluated before the operator runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
    Cmp,
    Not,
    Add,
    Subtract,
    Multiply,
    Divide,
    Mod,
    Abs,
    Ceil,
    Floor,
    Round,
    Trunc,
    Sqrt,
    Pow,
    Exp,
    Ln,
    Log10,
    Log,
    Concat,
    SubstrBytes,
    SubstrCP,
    ToLower,
    ToUpper,
    StrLenBytes,
    StrLenCP,
    Split,
    IndexOfBytes,
    IndexOfCP,
    Strcasecmp,
    Size,
    ArrayElemAt,
    First,
    Last,
    Slice,
    ConcatArrays,
    In,
    IsArray,
    ReverseArray,
    Range,
    IndexOfArray,
    Type,
    IsNumber,
    To(Target),
    MergeObjects,
    ObjectToArray,
    ArrayToObject,
    Sum,
    Avg,
    Min,
    Max,
    StdDevPop,
    StdDevSamp,
}

const MANY: usize = usize::MAX;

/// The eagerly evaluated operators: name, operator, fewest and most arguments.
const OPS: &[(&str, Op, usize, usize)] = &[
    ("$eq", Op::Eq, 2, 2),
    ("$ne", Op::Ne, 2, 2),
    ("$gt", Op::Gt, 2, 2),
    ("$gte", Op::Gte, 2, 2),
    ("$lt", Op::Lt, 2, 2),
    ("$lte", Op::Lte, 2, 2),
    ("$cmp", Op::Cmp, 2, 2),
    ("$not", Op::Not, 1, 1),
    ("$add", Op::Add, 0, MANY),
    ("$subtract", Op::Subtract, 2, 2),
    ("$multiply", Op::Multiply, 0, MANY),
    ("$divide", Op::Divide, 2, 2),
    ("$mod", Op::Mod, 2, 2),
    ("$abs", Op::Abs, 1, 1),
    ("$ceil", Op::Ceil, 1, 1),
    ("$floor", Op::Floor, 1, 1),
    ("$round", Op::Round, 1, 2),
    ("$trunc", Op::Trunc, 1, 2),
    ("$sqrt", Op::Sqrt, 1, 1),
    ("$pow", Op::Pow, 2, 2),
    ("$exp", Op::Exp, 1, 1),
    ("$ln", Op::Ln, 1, 1),
    ("$log10", Op::Log10, 1, 1),
    ("$log", Op::Log, 2, 2),
    ("$concat", Op::Concat, 0, MANY),
    ("$substr", Op::SubstrBytes, 3, 3),
    ("$substrBytes", Op::SubstrBytes, 3, 3),
    ("$substrCP", Op::SubstrCP, 3, 3),
    ("$toLower", Op::ToLower, 1, 1),
    ("$toUpper", Op::ToUpper, 1, 1),
    ("$strLenBytes", Op::StrLenBytes, 1, 1),
    ("$strLenCP", Op::StrLenCP, 1, 1),
    ("$split", Op::Split, 2, 2),
    ("$indexOfBytes", Op::IndexOfBytes, 2, 4),
    ("$indexOfCP", Op::IndexOfCP, 2, 4),
    ("$strcasecmp", Op::Strcasecmp, 2, 2),
    ("$size", Op::Size, 1, 1),
    ("$arrayElemAt", Op::ArrayElemAt, 2, 2),
    ("$first", Op::First, 1, 1),
    ("$last", Op::Last, 1, 1),
    ("$slice", Op::Slice, 2, 3),
    ("$concatArrays", Op::ConcatArrays, 0, MANY),
    ("$in", Op::In, 2, 2),
    ("$isArray", Op::IsArray, 1, 1),
    ("$reverseArray", Op::ReverseArray, 1, 1),
    ("$range", Op::Range, 2, 3),
    ("$indexOfArray", Op::IndexOfArray, 2, 4),
    ("$type", Op::Type, 1, 1),
    ("$isNumber", Op::IsNumber, 1, 1),
    ("$toString", Op::To(Target::String), 1, 1),
    ("$toInt", Op::To(Target::Int), 1, 1),
    ("$toLong", Op::To(Target::Long), 1, 1),
    ("$toDouble", Op::To(Target::Double), 1, 1),
    ("$toDecimal", Op::To(Target::Decimal), 1, 1),
    ("$toBool", Op::To(Target::Bool), 1, 1),
    ("$toDate", Op::To(Target::Date), 1, 1),
    ("$toObjectId", Op::To(Target::ObjectId), 1, 1),
    ("$mergeObjects", Op::MergeObjects, 0, MANY),
    ("$objectToArray", Op::ObjectToArray, 1, 1),
    ("$arrayToObject", Op::ArrayToObject, 1, 1),
    ("$sum", Op::Sum, 0, MANY),
    ("$avg", Op::Avg, 0, MANY),
    ("$min", Op::Min, 0, MANY),
    ("$max", Op::Max, 0, MANY),
    ("$stdDevPop", Op::StdDevPop, 0, MANY),
    ("$stdDevSamp", Op::StdDevSamp, 0, MANY),
];

// ---------------------------------------------------------------------------
// Parsing

/// The user variables in scope while parsing.
struct Scope {
    names: Vec<String>,
    /// How deep the parser is in the expression's documents and arrays.
    depth: usize,
}

impl Scope {
    fn has(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }
}

fn parse_node(v: &Bson, sc: &mut Scope) -> Result<Node> {
    if sc.depth >= EXPRESSION_DEPTH_MAX {
        return Err(err(
            codes::FAILED_TO_PARSE,
            format!("expression nested deeper than {EXPRESSION_DEPTH_MAX} levels"),
        ));
    }
    sc.depth += 1;
    let node = parse_value(v, sc);
    sc.depth -= 1;
    node
}

fn parse_value(v: &Bson, sc: &mut Scope) -> Result<Node> {
    // Like `eval`, the parsing functions on the recursion only dispatch.
    match v {
        Bson::String(s) if s.starts_with('$') => parse_path(s, sc),
        Bson::Document(d) => parse_object(d, sc),
        Bson::Array(items) => parse_array(v, items, sc),
        other => Ok(Node::Const(other.clone())),
    }
}

fn parse_array(v: &Bson, items: &[Bson], sc: &mut Scope) -> Result<Node> {
    let mut nodes = Vec::with_capacity(items.len());
    for e in items {
        nodes.push(parse_node(e, sc)?);
    }
    if nodes.iter().all(|n| matches!(n, Node::Const(_))) {
        return Ok(Node::Const(v.clone()));
    }
    Ok(Node::Array(nodes))
}

/// Checks the parts of a field path.
pub(crate) fn check_field_path(parts: &[&str]) -> Result<()> {
    for p in parts {
        if p.is_empty() {
            return Err(err(
                15998,
                "FieldPath field names may not be empty strings.",
            ));
        }
        if p.starts_with('$') {
            return Err(err(
                16410,
                format!("FieldPath field names may not start with '$'. Given field '{p}'"),
            ));
        }
    }
    Ok(())
}

pub(crate) fn split_path(s: &str) -> Result<Vec<String>> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() > PATH_PARTS_MAX {
        return Err(err(
            codes::FAILED_TO_PARSE,
            format!("FieldPath is too long: more than {PATH_PARTS_MAX} parts"),
        ));
    }
    check_field_path(&parts)?;
    Ok(parts.into_iter().map(str::to_string).collect())
}

fn parse_path(s: &str, sc: &Scope) -> Result<Node> {
    if let Some(var) = s.strip_prefix("$$") {
        let (name, rest) = match var.split_once('.') {
            Some((n, r)) => (n, Some(r)),
            None => (var, None),
        };
        let path = match rest {
            Some(r) => split_path(r)?,
            None => Vec::new(),
        };
        if name.is_empty() {
            return Err(err(16869, "empty variable names are not allowed"));
        }
        let var = if sc.has(name) {
            Var::User(name.to_string())
        } else {
            match name {
                "ROOT" => Var::Root,
                "CURRENT" => Var::Current,
                "REMOVE" => Var::Remove,
                "NOW" => Var::Now,
                _ => return Err(err(17276, format!("Use of undefined variable: {name}"))),
            }
        };
        return Ok(Node::Var(var, path));
    }
    let rest = &s[1..];
    if rest.is_empty() {
        return Err(err(16872, "'$' by itself is not a valid FieldPath"));
    }
    let path = split_path(rest)?;
    if sc.has("CURRENT") {
        return Ok(Node::Var(Var::User("CURRENT".to_string()), path));
    }
    Ok(Node::Field(path))
}

fn parse_object(d: &Document, sc: &mut Scope) -> Result<Node> {
    match d.iter().next() {
        None => Ok(Node::Const(Bson::Document(Document::new()))),
        Some((first, arg)) if first.starts_with('$') => {
            if d.len() == 1 {
                parse_operator(first, arg, sc)
            } else {
                Err(not_one_operator(d))
            }
        }
        Some(_) => parse_fields(d, sc),
    }
}

fn not_one_operator(d: &Document) -> DocError {
    err(
        15983,
        format!(
            "an expression specification must contain exactly one field, \
             the name of the expression. Found {} fields in {d}",
            d.len()
        ),
    )
}

/// A document of expressions (`{a: "$x", b: {$add: [1, 2]}}`).
fn parse_fields(d: &Document, sc: &mut Scope) -> Result<Node> {
    let mut fields = Vec::with_capacity(d.len());
    for (k, v) in d {
        check_field_name(k)?;
        fields.push((k.clone(), parse_node(v, sc)?));
    }
    if fields.iter().all(|(_, n)| matches!(n, Node::Const(_))) {
        let mut out = Document::new();
        for (k, n) in fields {
            if let Node::Const(v) = n {
                out.insert(k, v);
            }
        }
        return Ok(Node::Const(Bson::Document(out)));
    }
    Ok(Node::Object(fields))
}

fn check_field_name(k: &str) -> Result<()> {
    if k.starts_with('$') {
        return Err(err(
            16410,
            format!("FieldPath field names may not start with '$'. Given field '{k}'"),
        ));
    }
    if k.contains('.') {
        return Err(err(
            16412,
            format!("FieldPath field names may not contain '.'. Given field '{k}'"),
        ));
    }
    if k.is_empty() {
        return Err(err(
            16411,
            "FieldPath field names may not be empty strings.",
        ));
    }
    Ok(())
}

/// An operator's argument list: an array is the list, anything else one argument.
fn arg_list(v: &Bson) -> Vec<&Bson> {
    match v {
        Bson::Array(items) => items.iter().collect(),
        other => vec![other],
    }
}

fn check_arity(name: &str, n: usize, min: usize, max: usize) -> Result<()> {
    if n >= min && n <= max {
        return Ok(());
    }
    let expected = if min == max {
        format!("exactly {min}")
    } else if max == MANY {
        format!("at least {min}")
    } else {
        format!("between {min} and {max}")
    };
    Err(err(
        16020,
        format!("Expression {name} takes {expected} arguments. {n} were passed in."),
    ))
}

fn parse_args(name: &str, v: &Bson, min: usize, max: usize, sc: &mut Scope) -> Result<Vec<Node>> {
    let args = arg_list(v);
    check_arity(name, args.len(), min, max)?;
    let mut nodes = Vec::with_capacity(args.len());
    for a in args {
        nodes.push(parse_node(a, sc)?);
    }
    Ok(nodes)
}

/// The named options of an operator that takes a document.
fn options<'v>(
    name: &str,
    v: &'v Bson,
    allowed: &[&str],
    unknown_code: i32,
) -> Result<Vec<Option<&'v Bson>>> {
    let Bson::Document(d) = v else {
        return Err(err(
            codes::FAILED_TO_PARSE,
            format!(
                "{name} expects an object of named arguments but found: {}",
                type_name(Some(v))
            ),
        ));
    };
    let mut out = vec![None; allowed.len()];
    for (k, val) in d {
        match allowed.iter().position(|a| a == k) {
            Some(i) => out[i] = Some(val),
            None => {
                return Err(err(
                    unknown_code,
                    format!("{name} found an unknown argument: {k}"),
                ))
            }
        }
    }
    Ok(out)
}

fn required<'v>(name: &str, field: &str, v: Option<&'v Bson>, code: i32) -> Result<&'v Bson> {
    v.ok_or_else(|| err(code, format!("{name} requires '{field}' to be specified")))
}

fn boxed(v: &Bson, sc: &mut Scope) -> Result<Box<Node>> {
    Ok(Box::new(parse_node(v, sc)?))
}

fn opt_boxed(v: Option<&Bson>, sc: &mut Scope) -> Result<Option<Box<Node>>> {
    v.map(|v| boxed(v, sc)).transpose()
}

/// Checks a user variable's name (`$let`, `as`).
pub(crate) fn check_var_name(name: &str, allow_current: bool) -> Result<()> {
    if allow_current && name == "CURRENT" {
        return Ok(());
    }
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return Err(err(16866, "empty variable names are not allowed"));
    };
    if first.is_ascii() && !first.is_ascii_lowercase() {
        return Err(err(
            16867,
            format!("'{name}' starts with an invalid character for a user variable name"),
        ));
    }
    if let Some(c) = chars.find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || !c.is_ascii())) {
        return Err(err(
            16868,
            format!("'{name}' contains an invalid character for a variable name: '{c}'"),
        ));
    }
    Ok(())
}

/// Parses `body` with `names` bound.
fn with_vars<T>(
    sc: &mut Scope,
    names: &[String],
    f: impl FnOnce(&mut Scope) -> Result<T>,
) -> Result<T> {
    let n = sc.names.len();
    sc.names.extend(names.iter().cloned());
    let r = f(sc);
    sc.names.truncate(n);
    r
}

fn parse_as(name: &str, v: Option<&Bson>) -> Result<String> {
    match v {
        None => Ok("this".to_string()),
        Some(Bson::String(s)) => {
            check_var_name(s, false)?;
            Ok(s.clone())
        }
        Some(other) => Err(err(
            codes::FAILED_TO_PARSE,
            format!(
                "{name}: 'as' must be a string, found {}",
                type_name(Some(other))
            ),
        )),
    }
}

/// How one operator parses its argument.
type OperatorParser = fn(&str, &Bson, &mut Scope) -> Result<Node>;

fn parse_operator(name: &str, arg: &Bson, sc: &mut Scope) -> Result<Node> {
    // One call site: this frame is on the recursion once per nesting level,
    // so it only picks the parser.
    let parse: OperatorParser = match name {
        "$literal" => |_, arg, _| Ok(Node::Const(arg.clone())),
        "$rand" => |_, arg, _| match arg {
            Bson::Document(d) if d.is_empty() => Ok(Node::Rand),
            _ => Err(err(10065, "invalid parameter: expected an object ($rand)")),
        },
        "$and" => |name, arg, sc| parse_args(name, arg, 0, MANY, sc).map(Node::And),
        "$or" => |name, arg, sc| parse_args(name, arg, 0, MANY, sc).map(Node::Or),
        "$ifNull" => |name, arg, sc| parse_args(name, arg, 2, MANY, sc).map(Node::IfNull),
        "$cond" => |_, arg, sc| parse_cond(arg, sc),
        "$switch" => |_, arg, sc| parse_switch(arg, sc),
        "$let" => |_, arg, sc| parse_let(arg, sc),
        "$map" => |_, arg, sc| parse_map(arg, sc),
        "$filter" => |_, arg, sc| parse_filter(arg, sc),
        "$reduce" => |_, arg, sc| parse_reduce(arg, sc),
        "$sortArray" => |_, arg, sc| parse_sort_array(arg, sc),
        "$trim" => |_, arg, sc| parse_trim("$trim", arg, sc),
        "$ltrim" => |_, arg, sc| parse_trim("$ltrim", arg, sc),
        "$rtrim" => |_, arg, sc| parse_trim("$rtrim", arg, sc),
        "$convert" => |_, arg, sc| parse_convert(arg, sc),
        "$dateToString" => |_, arg, sc| parse_date_to_string(arg, sc),
        "$getField" => |_, arg, sc| parse_get_field(arg, sc),
        "$setField" => |_, arg, sc| parse_set_field(true, arg, sc),
        "$unsetField" => |_, arg, sc| parse_set_field(false, arg, sc),
        _ if date_part(name).is_some() => parse_date_part,
        _ => parse_call,
    };
    parse(name, arg, sc)
}

/// An operator whose arguments are all evaluated first.
fn parse_call(name: &str, arg: &Bson, sc: &mut Scope) -> Result<Node> {
    match OPS.iter().find(|(n, ..)| *n == name) {
        Some(&(name, op, min, max)) => Ok(Node::Call {
            op,
            name,
            args: parse_args(name, arg, min, max, sc)?,
        }),
        None => Err(err(
            INVALID_PIPELINE_OPERATOR,
            format!("Unrecognized expression '{name}'"),
        )),
    }
}

fn parse_map(arg: &Bson, sc: &mut Scope) -> Result<Node> {
    let name = "$map";
    let o = options(name, arg, &["input", "as", "in"], 16879)?;
    let input = boxed(required(name, "input", o[0], 16880)?, sc)?;
    let var = parse_as(name, o[1])?;
    let body = required(name, "in", o[2], 16882)?;
    let body = with_vars(sc, std::slice::from_ref(&var), |sc| boxed(body, sc))?;
    Ok(Node::Map { input, var, body })
}

fn parse_filter(arg: &Bson, sc: &mut Scope) -> Result<Node> {
    let name = "$filter";
    let o = options(name, arg, &["input", "as", "cond", "limit"], 28647)?;
    let input = boxed(required(name, "input", o[0], 28648)?, sc)?;
    let var = parse_as(name, o[1])?;
    let cond = required(name, "cond", o[2], 28650)?;
    let cond = with_vars(sc, std::slice::from_ref(&var), |sc| boxed(cond, sc))?;
    let limit = opt_boxed(o[3], sc)?;
    Ok(Node::Filter {
        input,
        var,
        cond,
        limit,
    })
}

fn parse_reduce(arg: &Bson, sc: &mut Scope) -> Result<Node> {
    let name = "$reduce";
    let o = options(name, arg, &["input", "initialValue", "in"], 40076)?;
    let input = boxed(required(name, "input", o[0], 40077)?, sc)?;
    let initial = boxed(required(name, "initialValue", o[1], 40078)?, sc)?;
    let body = required(name, "in", o[2], 40079)?;
    let names = ["this".to_string(), "value".to_string()];
    let body = with_vars(sc, &names, |sc| boxed(body, sc))?;
    Ok(Node::Reduce {
        input,
        initial,
        body,
    })
}

fn parse_sort_array(arg: &Bson, sc: &mut Scope) -> Result<Node> {
    let name = "$sortArray";
    let o = options(name, arg, &["input", "sortBy"], 2942500)?;
    let input = boxed(required(name, "input", o[0], 2942501)?, sc)?;
    let by = match required(name, "sortBy", o[1], 2942502)? {
        Bson::Document(d) => SortBy::Fields(SortPattern::parse(d, name)?),
        v => match order::number(v) {
            Some(n) if order::compare_numbers(n, Num::Int(1)) == Ordering::Equal => {
                SortBy::Value { descending: false }
            }
            Some(n) if order::compare_numbers(n, Num::Int(-1)) == Ordering::Equal => {
                SortBy::Value { descending: true }
            }
            _ => {
                return Err(err(
                    2942503,
                    "$sortArray: sortBy must be 1, -1 or a sort specification document",
                ))
            }
        },
    };
    Ok(Node::SortArray { input, by })
}

fn parse_trim(name: &'static str, arg: &Bson, sc: &mut Scope) -> Result<Node> {
    let o = options(name, arg, &["input", "chars"], 50694)?;
    let input = boxed(required(name, "input", o[0], 50695)?, sc)?;
    let chars = opt_boxed(o[1], sc)?;
    Ok(Node::Trim {
        name,
        left: name != "$rtrim",
        right: name != "$ltrim",
        input,
        chars,
    })
}

fn parse_convert(arg: &Bson, sc: &mut Scope) -> Result<Node> {
    let name = "$convert";
    let o = options(name, arg, &["input", "to", "onError", "onNull"], 9)?;
    let input = boxed(required(name, "input", o[0], 9)?, sc)?;
    let to = boxed(required(name, "to", o[1], 9)?, sc)?;
    if let Node::Const(t) = to.as_ref() {
        if !matches!(t, Bson::Null | Bson::Undefined) {
            target_of(t)?;
        }
    }
    Ok(Node::Convert {
        input,
        to,
        on_error: opt_boxed(o[2], sc)?,
        on_null: opt_boxed(o[3], sc)?,
    })
}

fn parse_date_to_string(arg: &Bson, sc: &mut Scope) -> Result<Node> {
    let name = "$dateToString";
    let o = options(name, arg, &["date", "format", "timezone", "onNull"], 18534)?;
    let date = boxed(required(name, "date", o[0], 18628)?, sc)?;
    let format = opt_boxed(o[1], sc)?;
    if let Some(Node::Const(Bson::String(f))) = format.as_deref() {
        check_date_format(f)?;
    }
    Ok(Node::DateToString {
        date,
        format,
        timezone: opt_boxed(o[2], sc)?,
        on_null: opt_boxed(o[3], sc)?,
    })
}

fn parse_get_field(arg: &Bson, sc: &mut Scope) -> Result<Node> {
    let name = "$getField";
    let (field, input) = match arg {
        Bson::Document(d) if !d.keys().next().is_some_and(|k| k.starts_with('$')) => {
            let o = options(name, arg, &["field", "input"], 3041701)?;
            let field = const_field_name(name, required(name, "field", o[0], 3041702)?)?;
            (field, opt_boxed(o[1], sc)?)
        }
        other => (const_field_name(name, other)?, None),
    };
    Ok(Node::GetField { field, input })
}

fn parse_set_field(set: bool, arg: &Bson, sc: &mut Scope) -> Result<Node> {
    let (name, allowed): (&str, &[&str]) = if set {
        ("$setField", &["field", "input", "value"])
    } else {
        ("$unsetField", &["field", "input"])
    };
    let o = options(name, arg, allowed, 4161100)?;
    let field = const_field_name(name, required(name, "field", o[0], 4161101)?)?;
    let input = boxed(required(name, "input", o[1], 4161102)?, sc)?;
    let value = if set {
        Some(boxed(required(name, "value", o[2], 4161103)?, sc)?)
    } else {
        None
    };
    Ok(Node::SetField {
        field,
        input,
        value,
    })
}

/// `$getField`'s field: a constant string (or `$literal`).
fn const_field_name(name: &str, v: &Bson) -> Result<String> {
    match v {
        Bson::String(s) if !s.starts_with('$') => Ok(s.clone()),
        Bson::Document(d) if d.len() == 1 => match d.get("$literal") {
            Some(Bson::String(s)) => Ok(s.clone()),
            _ => Err(err(
                5654601,
                format!("{name} requires 'field' to evaluate to a constant string"),
            )),
        },
        _ => Err(err(
            5654601,
            format!("{name} requires 'field' to evaluate to a constant string"),
        )),
    }
}

fn parse_cond(arg: &Bson, sc: &mut Scope) -> Result<Node> {
    let [i, t, e] = match arg {
        Bson::Document(_) => {
            let o = options("$cond", arg, &["if", "then", "else"], 17083)?;
            let get = |i: usize, f: &str, code: i32| {
                o[i].ok_or_else(|| err(code, format!("Missing '{f}' parameter to $cond")))
            };
            [
                get(0, "if", 17080)?,
                get(1, "then", 17081)?,
                get(2, "else", 17082)?,
            ]
        }
        _ => {
            let args = arg_list(arg);
            check_arity("$cond", args.len(), 3, 3)?;
            [args[0], args[1], args[2]]
        }
    };
    Ok(Node::Cond(Box::new([
        parse_node(i, sc)?,
        parse_node(t, sc)?,
        parse_node(e, sc)?,
    ])))
}

fn parse_switch(arg: &Bson, sc: &mut Scope) -> Result<Node> {
    let o = options("$switch", arg, &["branches", "default"], 40067)?;
    let Some(Bson::Array(list)) = o[0] else {
        return Err(err(
            40060,
            "$switch requires that 'branches' input be an array",
        ));
    };
    let mut branches = Vec::with_capacity(list.len());
    for b in list {
        let Bson::Document(bd) = b else {
            return Err(err(40061, "$switch requires each branch be an object"));
        };
        let (mut case, mut then) = (None, None);
        for (k, v) in bd {
            match k.as_str() {
                "case" => case = Some(v),
                "then" => then = Some(v),
                _ => {
                    return Err(err(
                        40063,
                        format!("$switch found an unknown argument to a branch: {k}"),
                    ))
                }
            }
        }
        let case = case.ok_or_else(|| {
            err(
                40064,
                "$switch requires each branch have a 'case' expression",
            )
        })?;
        let then = then.ok_or_else(|| {
            err(
                40065,
                "$switch requires each branch have a 'then' expression",
            )
        })?;
        branches.push((parse_node(case, sc)?, parse_node(then, sc)?));
    }
    if branches.is_empty() {
        return Err(err(40068, "$switch requires at least one branch"));
    }
    Ok(Node::Switch {
        branches,
        default: opt_boxed(o[1], sc)?,
    })
}

fn parse_let(arg: &Bson, sc: &mut Scope) -> Result<Node> {
    let o = options("$let", arg, &["vars", "in"], 16875)?;
    let Some(Bson::Document(vars)) = o[0] else {
        return Err(err(
            16876,
            "Missing 'vars' parameter to $let (it must be an object)",
        ));
    };
    let body = o[1].ok_or_else(|| err(16877, "Missing 'in' parameter to $let"))?;
    let mut bound = Vec::with_capacity(vars.len());
    for (k, v) in vars {
        check_var_name(k, true)?;
        // The variables' own expressions see the outer scope only.
        bound.push((k.clone(), parse_node(v, sc)?));
    }
    let names: Vec<String> = bound.iter().map(|(n, _)| n.clone()).collect();
    let body = with_vars(sc, &names, |sc| boxed(body, sc))?;
    Ok(Node::Let { vars: bound, body })
}

fn date_part(name: &str) -> Option<DatePart> {
    Some(match name {
        "$year" => DatePart::Year,
        "$month" => DatePart::Month,
        "$dayOfMonth" => DatePart::DayOfMonth,
        "$hour" => DatePart::Hour,
        "$minute" => DatePart::Minute,
        "$second" => DatePart::Second,
        "$millisecond" => DatePart::Millisecond,
        "$dayOfWeek" => DatePart::DayOfWeek,
        "$dayOfYear" => DatePart::DayOfYear,
        _ => return None,
    })
}

fn parse_date_part(name: &str, arg: &Bson, sc: &mut Scope) -> Result<Node> {
    let part = date_part(name).expect("a date part operator");
    let name = DATE_PART_NAMES
        .iter()
        .find(|n| **n == name)
        .copied()
        .unwrap_or("$date");
    if let Bson::Document(d) = arg {
        if d.keys().next().is_some_and(|k| !k.starts_with('$')) {
            let o = options(name, arg, &["date", "timezone"], 40535)?;
            let date = o[0].ok_or_else(|| {
                err(
                    40539,
                    format!("missing 'date' argument to {name}, provided: {d}"),
                )
            })?;
            return Ok(Node::DatePart {
                part,
                name,
                date: boxed(date, sc)?,
                timezone: opt_boxed(o[1], sc)?,
            });
        }
    }
    let mut args = parse_args(name, arg, 1, 1, sc)?;
    Ok(Node::DatePart {
        part,
        name,
        date: Box::new(args.remove(0)),
        timezone: None,
    })
}

const DATE_PART_NAMES: &[&str] = &[
    "$year",
    "$month",
    "$dayOfMonth",
    "$hour",
    "$minute",
    "$second",
    "$millisecond",
    "$dayOfWeek",
    "$dayOfYear",
];

// ---------------------------------------------------------------------------
// Evaluation

struct Env<'a> {
    root: &'a Document,
    vars: &'a Variables,
    /// Variables bound inside the expression, innermost last.
    local: Vec<(&'a str, Val)>,
}

impl<'a> Env<'a> {
    /// The value of a user variable: `Some(None)` when it is bound to missing.
    fn lookup(&self, name: &str) -> Option<Option<&Bson>> {
        if let Some((_, v)) = self.local.iter().rev().find(|(n, _)| *n == name) {
            return Some(v.as_ref());
        }
        self.vars.get(name).map(Some)
    }

    fn with<T>(&mut self, name: &'a str, value: Val, f: impl FnOnce(&mut Self) -> T) -> T {
        self.local.push((name, value));
        let r = f(self);
        self.local.pop();
        r
    }
}

fn eval<'a>(node: &'a Node, env: &mut Env<'a>) -> Result<Val> {
    // A dispatcher only: this frame is on the recursion once per nesting
    // level, so the work (and its temporaries) lives in the callees.
    match node {
        Node::Const(v) => Ok(Some(v.clone())),
        Node::Field(path) => Ok(path_in_doc(env.root, path)),
        Node::Var(var, path) => eval_var(var, path, env),
        Node::Rand => match env.vars.next_rand() {
            Some(r) => Ok(Some(Bson::Double(r))),
            None => Err(err(
                codes::BAD_VALUE,
                "$rand is not available here: no source of randomness was given",
            )),
        },
        Node::Object(fields) => eval_object(fields, env),
        Node::Array(items) => eval_array(items, env),
        Node::Call { op, name, args } => eval_call(*op, name, args, env),
        Node::And(args) => eval_and_or(args, false, env),
        Node::Or(args) => eval_and_or(args, true, env),
        Node::Cond(parts) => eval_cond(parts, env),
        Node::IfNull(args) => eval_if_null(args, env),
        Node::Switch { branches, default } => eval_switch(branches, default.as_deref(), env),
        Node::Let { vars, body } => eval_let(vars, body, env),
        Node::Map { input, var, body } => eval_map(input, var, body, env),
        Node::Filter {
            input,
            var,
            cond,
            limit,
        } => eval_filter(input, var, cond, limit.as_deref(), env),
        Node::Reduce {
            input,
            initial,
            body,
        } => eval_reduce(input, initial, body, env),
        Node::SortArray { input, by } => eval_sort_array(input, by, env),
        Node::Trim {
            name,
            left,
            right,
            input,
            chars,
        } => eval_trim(name, *left, *right, input, chars.as_deref(), env),
        Node::Convert {
            input,
            to,
            on_error,
            on_null,
        } => eval_convert(input, to, on_error.as_deref(), on_null.as_deref(), env),
        Node::DatePart {
            part,
            name,
            date,
            timezone,
        } => eval_date_part(*part, name, date, timezone.as_deref(), env),
        Node::DateToString {
            date,
            format,
            timezone,
            on_null,
        } => eval_date_to_string(
            date,
            format.as_deref(),
            timezone.as_deref(),
            on_null.as_deref(),
            env,
        ),
        Node::GetField { field, input } => eval_get_field(field, input.as_deref(), env),
        Node::SetField {
            field,
            input,
            value,
        } => eval_set_field(field, input, value.as_deref(), env),
    }
}

fn eval_object<'a>(fields: &'a [(String, Node)], env: &mut Env<'a>) -> Result<Val> {
    let mut out = Document::new();
    for (k, n) in fields {
        if let Some(v) = eval(n, env)? {
            out.insert(k.clone(), v);
        }
    }
    Ok(Some(Bson::Document(out)))
}

fn eval_array<'a>(items: &'a [Node], env: &mut Env<'a>) -> Result<Val> {
    let mut out = Vec::with_capacity(items.len());
    for n in items {
        out.push(eval(n, env)?.unwrap_or(Bson::Null));
    }
    Ok(Some(Bson::Array(out)))
}

fn eval_call<'a>(op: Op, name: &'static str, args: &'a [Node], env: &mut Env<'a>) -> Result<Val> {
    let mut vals = Vec::with_capacity(args.len());
    for a in args {
        vals.push(eval(a, env)?);
    }
    apply(op, name, vals)
}

/// `$and` (stops at the first false) or `$or` (at the first true).
fn eval_and_or<'a>(args: &'a [Node], or: bool, env: &mut Env<'a>) -> Result<Val> {
    for a in args {
        if truthy_val(&eval(a, env)?) == or {
            return Ok(Some(Bson::Boolean(or)));
        }
    }
    Ok(Some(Bson::Boolean(!or)))
}

fn eval_cond<'a>(parts: &'a [Node; 3], env: &mut Env<'a>) -> Result<Val> {
    let [i, t, e] = parts;
    if truthy_val(&eval(i, env)?) {
        eval(t, env)
    } else {
        eval(e, env)
    }
}

fn eval_if_null<'a>(args: &'a [Node], env: &mut Env<'a>) -> Result<Val> {
    let (last, rest) = args.split_last().expect("arity checked: two or more");
    for a in rest {
        let v = eval(a, env)?;
        if !nullish(&v) {
            return Ok(v);
        }
    }
    eval(last, env)
}

fn eval_switch<'a>(
    branches: &'a [(Node, Node)],
    default: Option<&'a Node>,
    env: &mut Env<'a>,
) -> Result<Val> {
    for (case, then) in branches {
        if truthy_val(&eval(case, env)?) {
            return eval(then, env);
        }
    }
    match default {
        Some(d) => eval(d, env),
        None => Err(err(
            40066,
            "$switch could not find a matching branch for an input, and no default was specified.",
        )),
    }
}

fn eval_let<'a>(vars: &'a [(String, Node)], body: &'a Node, env: &mut Env<'a>) -> Result<Val> {
    let mut values = Vec::with_capacity(vars.len());
    for (name, n) in vars {
        values.push((name.as_str(), eval(n, env)?));
    }
    let depth = env.local.len();
    env.local.extend(values);
    let r = eval(body, env);
    env.local.truncate(depth);
    r
}

fn eval_map<'a>(input: &'a Node, var: &'a str, body: &'a Node, env: &mut Env<'a>) -> Result<Val> {
    let input = eval(input, env)?;
    let items = match input {
        ref v if nullish(v) => return Ok(Some(Bson::Null)),
        Some(Bson::Array(items)) => items,
        v => {
            return Err(err(
                16883,
                format!("input to $map must be an array not {}", tn(&v)),
            ))
        }
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let v = env.with(var, Some(item), |env| eval(body, env))?;
        out.push(v.unwrap_or(Bson::Null));
    }
    Ok(Some(Bson::Array(out)))
}

fn eval_filter<'a>(
    input: &'a Node,
    var: &'a str,
    cond: &'a Node,
    limit: Option<&'a Node>,
    env: &mut Env<'a>,
) -> Result<Val> {
    let input = eval(input, env)?;
    let items = match input {
        ref v if nullish(v) => return Ok(Some(Bson::Null)),
        Some(Bson::Array(items)) => items,
        v => {
            return Err(err(
                28651,
                format!("input to $filter must be an array not {}", tn(&v)),
            ))
        }
    };
    let limit = match limit {
        None => usize::MAX,
        Some(l) => match eval(l, env)? {
            ref v if nullish(v) => usize::MAX,
            Some(v) => match integral(&v) {
                Some(n) if n >= 1 => usize::try_from(n).unwrap_or(usize::MAX),
                Some(_) => {
                    return Err(err(
                        327391,
                        format!("$filter: limit must be greater than 0: {v}"),
                    ))
                }
                None => {
                    return Err(err(
                        327392,
                        format!("$filter: limit must be a whole number: {v}"),
                    ))
                }
            },
            None => usize::MAX,
        },
    };
    let mut out = Vec::new();
    for item in items {
        if out.len() >= limit {
            break;
        }
        let keep = env.with(var, Some(item.clone()), |env| eval(cond, env))?;
        if truthy_val(&keep) {
            out.push(item);
        }
    }
    Ok(Some(Bson::Array(out)))
}

fn eval_reduce<'a>(
    input: &'a Node,
    initial: &'a Node,
    body: &'a Node,
    env: &mut Env<'a>,
) -> Result<Val> {
    let input = eval(input, env)?;
    let items = match input {
        ref v if nullish(v) => return Ok(Some(Bson::Null)),
        Some(Bson::Array(items)) => items,
        v => {
            return Err(err(
                40080,
                format!(
                    "$reduce requires that 'input' be an array, found: {}",
                    show(&v)
                ),
            ))
        }
    };
    let mut acc = eval(initial, env)?;
    for item in items {
        let depth = env.local.len();
        env.local.push(("value", acc));
        env.local.push(("this", Some(item)));
        let r = eval(body, env);
        env.local.truncate(depth);
        acc = r?;
    }
    Ok(acc)
}

fn eval_sort_array<'a>(input: &'a Node, by: &SortBy, env: &mut Env<'a>) -> Result<Val> {
    let items = match eval(input, env)? {
        ref v if nullish(v) => return Ok(Some(Bson::Null)),
        Some(Bson::Array(items)) => items,
        v => {
            return Err(err(
                2942504,
                format!(
                    "The input argument to $sortArray must be an array, but was of type: {}",
                    tn(&v)
                ),
            ))
        }
    };
    Ok(Some(Bson::Array(sort_array(items, by))))
}

fn eval_trim<'a>(
    name: &str,
    left: bool,
    right: bool,
    input: &'a Node,
    chars: Option<&'a Node>,
    env: &mut Env<'a>,
) -> Result<Val> {
    let input = eval(input, env)?;
    let chars = match chars {
        Some(c) => Some(eval(c, env)?),
        None => None,
    };
    trim(name, left, right, input, chars)
}

fn eval_convert<'a>(
    input: &'a Node,
    to: &'a Node,
    on_error: Option<&'a Node>,
    on_null: Option<&'a Node>,
    env: &mut Env<'a>,
) -> Result<Val> {
    let input = eval(input, env)?;
    let to = eval(to, env)?;
    if nullish(&input) {
        return match on_null {
            Some(n) => eval(n, env),
            None => Ok(Some(Bson::Null)),
        };
    }
    if nullish(&to) {
        return Ok(Some(Bson::Null));
    }
    let target = target_of(to.as_ref().expect("not nullish"))?;
    match convert(input.as_ref().expect("not nullish"), target) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.code == CONVERSION_FAILURE => match on_error {
            Some(n) => eval(n, env),
            None => Err(e),
        },
        Err(e) => Err(e),
    }
}

fn eval_date_part<'a>(
    part: DatePart,
    name: &str,
    date: &'a Node,
    timezone: Option<&'a Node>,
    env: &mut Env<'a>,
) -> Result<Val> {
    let date = eval(date, env)?;
    let offset_ms = match timezone {
        None => 0,
        Some(tz) => match eval(tz, env)? {
            ref v if nullish(v) => return Ok(Some(Bson::Null)),
            Some(v) => timezone_offset_ms(&v)?,
            None => 0,
        },
    };
    if nullish(&date) {
        return Ok(Some(Bson::Null));
    }
    let ms = date_millis(date.as_ref().expect("not nullish"), name)?;
    let c = civil(ms.saturating_add(offset_ms));
    let v = match part {
        DatePart::Year => Bson::Int32(i32::try_from(c.year).unwrap_or(i32::MAX)),
        DatePart::Month => Bson::Int32(c.month as i32),
        DatePart::DayOfMonth => Bson::Int32(c.day as i32),
        DatePart::Hour => Bson::Int32(c.hour as i32),
        DatePart::Minute => Bson::Int32(c.minute as i32),
        DatePart::Second => Bson::Int32(c.second as i32),
        DatePart::Millisecond => Bson::Int32(c.millis as i32),
        DatePart::DayOfWeek => Bson::Int32(c.weekday as i32),
        DatePart::DayOfYear => Bson::Int32(c.yday as i32),
    };
    Ok(Some(v))
}

fn eval_date_to_string<'a>(
    date: &'a Node,
    format: Option<&'a Node>,
    timezone: Option<&'a Node>,
    on_null: Option<&'a Node>,
    env: &mut Env<'a>,
) -> Result<Val> {
    let date = eval(date, env)?;
    let format = match format {
        Some(f) => match eval(f, env)? {
            ref v if nullish(v) => return Ok(Some(Bson::Null)),
            Some(Bson::String(s)) => {
                check_date_format(&s)?;
                s
            }
            v => {
                return Err(err(
                    18533,
                    format!(
                        "$dateToString requires that 'format' be a string, found: {}",
                        tn(&v)
                    ),
                ))
            }
        },
        None => "%Y-%m-%dT%H:%M:%S.%LZ".to_string(),
    };
    let offset_ms = match timezone {
        None => 0,
        Some(tz) => match eval(tz, env)? {
            ref v if nullish(v) => return Ok(Some(Bson::Null)),
            Some(v) => timezone_offset_ms(&v)?,
            None => 0,
        },
    };
    if nullish(&date) {
        return match on_null {
            Some(n) => eval(n, env),
            None => Ok(Some(Bson::Null)),
        };
    }
    let ms = date_millis(date.as_ref().expect("not nullish"), "$dateToString")?;
    Ok(Some(Bson::String(format_date(ms, offset_ms, &format))))
}

fn eval_get_field<'a>(field: &str, input: Option<&'a Node>, env: &mut Env<'a>) -> Result<Val> {
    let input = match input {
        Some(i) => eval(i, env)?,
        None => Some(Bson::Document(env.root.clone())),
    };
    match input {
        None => Ok(None),
        Some(Bson::Null | Bson::Undefined) => Ok(Some(Bson::Null)),
        Some(Bson::Document(d)) => Ok(d.get(field).cloned()),
        v => Err(err(
            3041705,
            format!(
                "$getField requires 'input' to evaluate to type Object, but got {}",
                tn(&v)
            ),
        )),
    }
}

fn eval_set_field<'a>(
    field: &str,
    input: &'a Node,
    value: Option<&'a Node>,
    env: &mut Env<'a>,
) -> Result<Val> {
    let input = eval(input, env)?;
    let mut doc = match input {
        ref v if nullish(v) => return Ok(Some(Bson::Null)),
        Some(Bson::Document(d)) => d,
        v => {
            return Err(err(
                4161105,
                format!(
                    "$setField requires 'input' to evaluate to type Object, but got {}",
                    tn(&v)
                ),
            ))
        }
    };
    match value {
        Some(vn) => match eval(vn, env)? {
            Some(v) => {
                doc.insert(field, v);
            }
            None => {
                doc.remove(field);
            }
        },
        None => {
            doc.remove(field);
        }
    }
    Ok(Some(Bson::Document(doc)))
}

fn eval_var(var: &Var, path: &[String], env: &Env<'_>) -> Result<Val> {
    match var {
        Var::Root | Var::Current => {
            if path.is_empty() {
                Ok(Some(Bson::Document(env.root.clone())))
            } else {
                Ok(path_in_doc(env.root, path))
            }
        }
        Var::Remove => Ok(None),
        Var::Now => match env.vars.now() {
            Some(now) => Ok(path_in_value(&Bson::DateTime(now), path)),
            None => Err(err(
                codes::BAD_VALUE,
                "$$NOW is not available here: no time was given to the evaluation",
            )),
        },
        Var::User(name) => match env.lookup(name) {
            Some(Some(v)) => Ok(path_in_value(v, path)),
            Some(None) => Ok(None),
            None => Err(err(17276, format!("Use of undefined variable: {name}"))),
        },
    }
}

/// The value at `path` in `v` as an expression sees it: through arrays of
/// documents (`$a.b` on an array of documents is the array of their `b`s,
/// skipping elements that are not documents or have no `b`).
pub(crate) fn path_in_value(v: &Bson, path: &[String]) -> Val {
    if path.is_empty() {
        return Some(v.clone());
    }
    match v {
        Bson::Document(d) => path_in_doc(d, path),
        Bson::Array(items) => Some(Bson::Array(path_in_array(items, path))),
        _ => None,
    }
}

/// The value at `path` (non-empty) in a document, as an expression sees it.
pub(crate) fn path_in_doc(d: &Document, path: &[String]) -> Val {
    let (first, rest) = path.split_first()?;
    let v = d.get(first)?;
    if rest.is_empty() {
        return Some(v.clone());
    }
    match v {
        Bson::Document(sub) => path_in_doc(sub, rest),
        Bson::Array(items) => Some(Bson::Array(path_in_array(items, rest))),
        _ => None,
    }
}

fn path_in_array(items: &[Bson], path: &[String]) -> Vec<Bson> {
    items
        .iter()
        .filter_map(|e| match e {
            Bson::Document(d) => path_in_doc(d, path),
            _ => None,
        })
        .collect()
}

fn apply(op: Op, name: &'static str, mut args: Vec<Val>) -> Result<Val> {
    let cmp = |args: &[Val]| compare_values(args[0].as_ref(), args[1].as_ref());
    let b = |x: bool| Ok(Some(Bson::Boolean(x)));
    match op {
        Op::Eq => b(cmp(&args) == Ordering::Equal),
        Op::Ne => b(cmp(&args) != Ordering::Equal),
        Op::Gt => b(cmp(&args) == Ordering::Greater),
        Op::Gte => b(cmp(&args) != Ordering::Less),
        Op::Lt => b(cmp(&args) == Ordering::Less),
        Op::Lte => b(cmp(&args) != Ordering::Greater),
        Op::Cmp => Ok(Some(Bson::Int32(match cmp(&args) {
            Ordering::Less => -1,
            Ordering::Equal => 0,
            Ordering::Greater => 1,
        }))),
        Op::Not => b(!truthy_val(&args[0])),
        Op::Add => add(args),
        Op::Subtract => subtract(&args[0], &args[1]),
        Op::Multiply => multiply(args),
        Op::Divide => divide(&args[0], &args[1]),
        Op::Mod => modulo(&args[0], &args[1]),
        Op::Abs => abs(&args[0]),
        Op::Ceil | Op::Floor => ceil_floor(name, &args[0], op == Op::Ceil),
        Op::Round | Op::Trunc => round_trunc(name, &args[0], args.get(1), op == Op::Trunc),
        Op::Sqrt | Op::Exp | Op::Ln | Op::Log10 => unary_float(op, name, &args[0]),
        Op::Log => log(&args[0], &args[1]),
        Op::Pow => pow(&args[0], &args[1]),
        Op::Concat => concat(args),
        Op::SubstrBytes => substr_bytes(name, &args[0], &args[1], &args[2]),
        Op::SubstrCP => substr_cp(&args[0], &args[1], &args[2]),
        Op::ToLower | Op::ToUpper => {
            let s = coerce_to_string(&args[0], name)?;
            Ok(Some(Bson::String(if op == Op::ToLower {
                s.to_ascii_lowercase()
            } else {
                s.to_ascii_uppercase()
            })))
        }
        Op::StrLenBytes | Op::StrLenCP => match &args[0] {
            Some(Bson::String(s)) => {
                let n = if op == Op::StrLenBytes {
                    s.len()
                } else {
                    s.chars().count()
                };
                Ok(Some(int_result(n as i64)))
            }
            v => Err(err(
                if op == Op::StrLenBytes { 34473 } else { 34471 },
                format!("{name} requires a string argument, found: {}", tn(v)),
            )),
        },
        Op::Split => split(&args[0], &args[1]),
        Op::IndexOfBytes | Op::IndexOfCP => index_of_str(op, name, &args),
        Op::Strcasecmp => {
            let x = coerce_to_string(&args[0], name)?.to_ascii_lowercase();
            let y = coerce_to_string(&args[1], name)?.to_ascii_lowercase();
            Ok(Some(Bson::Int32(match x.cmp(&y) {
                Ordering::Less => -1,
                Ordering::Equal => 0,
                Ordering::Greater => 1,
            })))
        }
        Op::Size => match &args[0] {
            Some(Bson::Array(a)) => Ok(Some(int_result(a.len() as i64))),
            v => Err(err(
                17124,
                format!(
                    "The argument to $size must be an array. Type of argument: {}",
                    tn(v)
                ),
            )),
        },
        Op::ArrayElemAt => array_elem_at(name, args.swap_remove(0), &args[0]),
        Op::First => array_elem_at(name, args.swap_remove(0), &Some(Bson::Int32(0))),
        Op::Last => array_elem_at(name, args.swap_remove(0), &Some(Bson::Int32(-1))),
        Op::Slice => slice(args),
        Op::ConcatArrays => {
            let mut out = Vec::new();
            for a in args {
                match a {
                    ref v if nullish(v) => return Ok(Some(Bson::Null)),
                    Some(Bson::Array(items)) => out.extend(items),
                    v => {
                        return Err(err(
                            28664,
                            format!("$concatArrays only supports arrays, not {}", tn(&v)),
                        ))
                    }
                }
            }
            Ok(Some(Bson::Array(out)))
        }
        Op::In => match &args[1] {
            Some(Bson::Array(items)) => b(items
                .iter()
                .any(|e| compare_values(Some(e), args[0].as_ref()) == Ordering::Equal)),
            v => Err(err(
                40081,
                format!(
                    "$in requires an array as a second argument, found: {}",
                    tn(v)
                ),
            )),
        },
        Op::IsArray => b(matches!(args[0], Some(Bson::Array(_)))),
        Op::ReverseArray => match args.swap_remove(0) {
            ref v if nullish(v) => Ok(Some(Bson::Null)),
            Some(Bson::Array(mut items)) => {
                items.reverse();
                Ok(Some(Bson::Array(items)))
            }
            v => Err(err(
                34435,
                format!(
                    "The argument to $reverseArray must be an array, but was of type: {}",
                    tn(&v)
                ),
            )),
        },
        Op::Range => range(&args),
        Op::IndexOfArray => index_of_array(&args),
        Op::Type => Ok(Some(Bson::String(tn(&args[0]).to_string()))),
        Op::IsNumber => b(args[0].as_ref().is_some_and(|v| order::number(v).is_some())),
        Op::To(target) => match args.swap_remove(0) {
            ref v if nullish(v) => Ok(Some(Bson::Null)),
            Some(v) => Ok(Some(convert(&v, target)?)),
            None => Ok(Some(Bson::Null)),
        },
        Op::MergeObjects => {
            let mut out = Document::new();
            for a in args {
                match a {
                    ref v if nullish(v) => {}
                    Some(Bson::Document(d)) => merge_into(&mut out, d),
                    v => {
                        return Err(err(
                            40400,
                            format!(
                                "$mergeObjects requires object inputs, but input {} is of type {}",
                                show(&v),
                                tn(&v)
                            ),
                        ))
                    }
                }
            }
            Ok(Some(Bson::Document(out)))
        }
        Op::ObjectToArray => match args.swap_remove(0) {
            ref v if nullish(v) => Ok(Some(Bson::Null)),
            Some(Bson::Document(d)) => Ok(Some(Bson::Array(
                d.into_iter()
                    .map(|(k, v)| {
                        let mut pair = Document::new();
                        pair.insert("k", k);
                        pair.insert("v", v);
                        Bson::Document(pair)
                    })
                    .collect(),
            ))),
            v => Err(err(
                40390,
                format!(
                    "$objectToArray requires a document input, found: {}",
                    tn(&v)
                ),
            )),
        },
        Op::ArrayToObject => array_to_object(args.swap_remove(0)),
        Op::Sum | Op::Avg | Op::Min | Op::Max | Op::StdDevPop | Op::StdDevSamp => {
            // One argument that is an array: over its elements; else over the arguments.
            let values: Vec<Bson> = if args.len() == 1 {
                match args.swap_remove(0) {
                    Some(Bson::Array(items)) => items,
                    Some(v) => vec![v],
                    None => vec![],
                }
            } else {
                args.into_iter().flatten().collect()
            };
            Ok(Some(summarize(op, &values)))
        }
    }
}

/// `$sum`, `$avg`, `$min`, `$max`, `$stdDev*` over a list of values.
fn summarize(op: Op, values: &[Bson]) -> Bson {
    match op {
        Op::Sum => {
            let mut s = Sum::default();
            for v in values {
                s.add(v);
            }
            s.value()
        }
        Op::Avg => {
            let mut s = Sum::default();
            let mut n = 0u64;
            for v in values {
                if s.add(v) {
                    n += 1;
                }
            }
            s.average(n)
        }
        Op::Min | Op::Max => {
            let want = if op == Op::Min {
                Ordering::Less
            } else {
                Ordering::Greater
            };
            let mut best: Option<&Bson> = None;
            for v in values {
                if matches!(v, Bson::Null | Bson::Undefined) {
                    continue;
                }
                if best.is_none_or(|b| order::compare(v, b) == want) {
                    best = Some(v);
                }
            }
            best.cloned().unwrap_or(Bson::Null)
        }
        _ => {
            let mut s = StdDev::default();
            for v in values {
                s.add(v);
            }
            s.value(op == Op::StdDevSamp)
        }
    }
}

/// Merges `src` into `dst`: later fields replace earlier ones in place.
fn merge_into(dst: &mut Document, src: Document) {
    for (k, v) in src {
        dst.insert(k, v);
    }
}

// ---------------------------------------------------------------------------
// Numbers

/// The numeric types in MongoDB's promotion order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Width {
    Int,
    Long,
    Double,
    Decimal,
}

fn width(v: &Bson) -> Option<Width> {
    match v {
        Bson::Int32(_) => Some(Width::Int),
        Bson::Int64(_) => Some(Width::Long),
        Bson::Double(_) => Some(Width::Double),
        Bson::Decimal128(_) => Some(Width::Decimal),
        _ => None,
    }
}

fn as_f64(v: &Bson) -> f64 {
    match order::number(v) {
        Some(Num::Int(i)) => i as f64,
        Some(Num::Float(f)) => f,
        None => f64::NAN,
    }
}

fn as_i64(v: &Bson) -> Option<i64> {
    match v {
        Bson::Int32(i) => Some(i64::from(*i)),
        Bson::Int64(i) => Some(*i),
        _ => None,
    }
}

/// A whole number's value (any numeric type), if it is one an i64 holds.
pub(crate) fn integral(v: &Bson) -> Option<i64> {
    match order::number(v)? {
        Num::Int(i) => Some(i),
        Num::Float(f)
            if f.fract() == 0.0
                && (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&f) =>
        {
            Some(f as i64)
        }
        Num::Float(_) => None,
    }
}

fn integral_i32(v: &Bson) -> Option<i32> {
    integral(v).and_then(|i| i32::try_from(i).ok())
}

/// An integer result: int32 when it fits, else int64.
fn int_result(x: i64) -> Bson {
    match i32::try_from(x) {
        Ok(i) => Bson::Int32(i),
        Err(_) => Bson::Int64(x),
    }
}

fn make_int(w: Width, x: i64) -> Bson {
    if w == Width::Int {
        int_result(x)
    } else {
        Bson::Int64(x)
    }
}

fn make_float(w: Width, f: f64) -> Bson {
    if w == Width::Decimal {
        Bson::Decimal128(decimal_from_f64(f))
    } else {
        Bson::Double(f)
    }
}

/// A double as decimal128, through its shortest decimal representation.
pub(crate) fn decimal_from_f64(f: f64) -> Decimal128 {
    let s = if f.is_nan() {
        "NaN".to_string()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.to_string()
    } else {
        format!("{f:e}")
    };
    s.parse()
        .or_else(|_| "NaN".parse())
        .expect("NaN is a decimal128")
}

/// A running sum with MongoDB's type promotion: int32 overflows to int64,
/// int64 to double; doubles and decimals widen the result.
#[derive(Debug, Clone)]
pub(crate) struct Sum {
    width: Width,
    int: i64,
    float: f64,
}

impl Default for Sum {
    fn default() -> Sum {
        Sum {
            width: Width::Int,
            int: 0,
            float: 0.0,
        }
    }
}

impl Sum {
    /// Adds a number; `false` (and nothing added) for anything else.
    pub(crate) fn add(&mut self, v: &Bson) -> bool {
        let Some(w) = width(v) else {
            return false;
        };
        self.width = self.width.max(w);
        match as_i64(v) {
            Some(x) => match self.int.checked_add(x) {
                Some(s) => self.int = s,
                None => {
                    self.float += self.int as f64 + x as f64;
                    self.int = 0;
                    self.width = self.width.max(Width::Double);
                }
            },
            None => self.float += as_f64(v),
        }
        true
    }

    fn total_f64(&self) -> f64 {
        self.int as f64 + self.float
    }

    /// The sum, in the widest type seen.
    pub(crate) fn value(&self) -> Bson {
        match self.width {
            Width::Int | Width::Long => make_int(self.width, self.int),
            w => make_float(w, self.total_f64()),
        }
    }

    /// The mean of `n` numbers added: a double (decimal if one was), null for none.
    pub(crate) fn average(&self, n: u64) -> Bson {
        if n == 0 {
            return Bson::Null;
        }
        make_float(self.width.max(Width::Double), self.total_f64() / n as f64)
    }
}

/// Welford's running variance, for `$stdDevPop` and `$stdDevSamp`.
#[derive(Debug, Clone, Default)]
pub(crate) struct StdDev {
    n: u64,
    mean: f64,
    m2: f64,
}

impl StdDev {
    /// Adds a number; anything else is ignored.
    pub(crate) fn add(&mut self, v: &Bson) {
        if width(v).is_none() {
            return;
        }
        let x = as_f64(v);
        self.n += 1;
        let d = x - self.mean;
        self.mean += d / self.n as f64;
        self.m2 += d * (x - self.mean);
    }

    /// The population (or sample) standard deviation; null when too few numbers.
    pub(crate) fn value(&self, sample: bool) -> Bson {
        let n = if sample {
            self.n.saturating_sub(1)
        } else {
            self.n
        };
        if n == 0 || self.n == 0 {
            return Bson::Null;
        }
        Bson::Double((self.m2 / n as f64).sqrt())
    }
}

fn add(args: Vec<Val>) -> Result<Val> {
    let mut sum = Sum::default();
    let mut date: Option<i64> = None;
    for a in args {
        match a {
            ref v if nullish(v) => return Ok(Some(Bson::Null)),
            Some(Bson::DateTime(d)) => {
                if date.is_some() {
                    return Err(err(16612, "only one date allowed in an $add expression"));
                }
                date = Some(d.timestamp_millis());
            }
            Some(v) => {
                if !sum.add(&v) {
                    return Err(err(
                        16554,
                        format!(
                            "$add only supports numeric or date types, not {}",
                            type_name(Some(&v))
                        ),
                    ));
                }
            }
            None => unreachable!("missing is nullish"),
        }
    }
    let Some(ms) = date else {
        return Ok(Some(sum.value()));
    };
    let delta = match sum.width {
        Width::Int | Width::Long => Some(sum.int),
        _ => round_to_i64(sum.total_f64()),
    };
    delta
        .and_then(|d| ms.checked_add(d))
        .map(|ms| Some(Bson::DateTime(DateTime::from_millis(ms))))
        .ok_or_else(|| err(codes::OVERFLOW, "date overflow in $add"))
}

/// A double rounded to the nearest whole number, if an i64 holds it.
fn round_to_i64(f: f64) -> Option<i64> {
    let r = f.round();
    (r.is_finite() && (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&r))
        .then_some(r as i64)
}

/// A binary numeric operation with promotion: exact on integers when the
/// result fits, else in double.
fn arith2(
    a: &Bson,
    b: &Bson,
    int_op: fn(i64, i64) -> Option<i64>,
    float_op: fn(f64, f64) -> f64,
) -> Bson {
    let w = width(a)
        .unwrap_or(Width::Double)
        .max(width(b).unwrap_or(Width::Double));
    if w <= Width::Long {
        if let (Some(x), Some(y)) = (as_i64(a), as_i64(b)) {
            if let Some(r) = int_op(x, y) {
                return make_int(w, r);
            }
        }
        return Bson::Double(float_op(as_f64(a), as_f64(b)));
    }
    make_float(w, float_op(as_f64(a), as_f64(b)))
}

fn is_num(v: &Val) -> bool {
    v.as_ref().is_some_and(|v| width(v).is_some())
}

fn subtract(a: &Val, b: &Val) -> Result<Val> {
    if nullish(a) || nullish(b) {
        return Ok(Some(Bson::Null));
    }
    let (x, y) = (a.as_ref().expect("present"), b.as_ref().expect("present"));
    match (x, y) {
        (Bson::DateTime(p), Bson::DateTime(q)) => p
            .timestamp_millis()
            .checked_sub(q.timestamp_millis())
            .map(|d| Some(Bson::Int64(d)))
            .ok_or_else(|| err(codes::OVERFLOW, "date overflow in $subtract")),
        (Bson::DateTime(p), n) if width(n).is_some() => {
            let d = match as_i64(n) {
                Some(i) => Some(i),
                None => round_to_i64(as_f64(n)),
            };
            d.and_then(|d| p.timestamp_millis().checked_sub(d))
                .map(|ms| Some(Bson::DateTime(DateTime::from_millis(ms))))
                .ok_or_else(|| err(codes::OVERFLOW, "date overflow in $subtract"))
        }
        _ if is_num(a) && is_num(b) => Ok(Some(arith2(x, y, i64::checked_sub, |p, q| p - q))),
        _ => Err(err(
            16556,
            format!("cant $subtract a {} from a {}", tn(b), tn(a)),
        )),
    }
}

fn multiply(args: Vec<Val>) -> Result<Val> {
    let mut w = Width::Int;
    let mut int: i64 = 1;
    let mut float: f64 = 1.0;
    for a in args {
        match a {
            ref v if nullish(v) => return Ok(Some(Bson::Null)),
            Some(v) => {
                let Some(vw) = width(&v) else {
                    return Err(err(
                        16555,
                        format!(
                            "$multiply only supports numeric types, not {}",
                            type_name(Some(&v))
                        ),
                    ));
                };
                w = w.max(vw);
                match as_i64(&v) {
                    Some(x) => match int.checked_mul(x) {
                        Some(p) => int = p,
                        None => {
                            float *= int as f64 * x as f64;
                            int = 1;
                            w = w.max(Width::Double);
                        }
                    },
                    None => float *= as_f64(&v),
                }
            }
            None => unreachable!("missing is nullish"),
        }
    }
    Ok(Some(match w {
        Width::Int | Width::Long => make_int(w, int),
        _ => make_float(w, int as f64 * float),
    }))
}

fn is_zero(v: &Bson) -> bool {
    match order::number(v) {
        Some(Num::Int(i)) => i == 0,
        Some(Num::Float(f)) => f == 0.0,
        None => false,
    }
}

fn divide(a: &Val, b: &Val) -> Result<Val> {
    if nullish(a) || nullish(b) {
        return Ok(Some(Bson::Null));
    }
    if !is_num(a) || !is_num(b) {
        return Err(err(
            16609,
            format!(
                "$divide only supports numeric types, not {} and {}",
                tn(a),
                tn(b)
            ),
        ));
    }
    let (x, y) = (a.as_ref().expect("present"), b.as_ref().expect("present"));
    if is_zero(y) {
        return Err(DocError::bad_value("can't $divide by zero"));
    }
    let w = width(x)
        .expect("number")
        .max(width(y).expect("number"))
        .max(Width::Double);
    Ok(Some(make_float(w, as_f64(x) / as_f64(y))))
}

fn modulo(a: &Val, b: &Val) -> Result<Val> {
    if nullish(a) || nullish(b) {
        return Ok(Some(Bson::Null));
    }
    if !is_num(a) || !is_num(b) {
        return Err(err(
            16611,
            format!(
                "$mod only supports numeric types, not {} and {}",
                tn(a),
                tn(b)
            ),
        ));
    }
    let (x, y) = (a.as_ref().expect("present"), b.as_ref().expect("present"));
    if is_zero(y) {
        return Err(err(16610, "can't $mod by zero"));
    }
    Ok(Some(arith2(
        x,
        y,
        |p, q| Some(p.wrapping_rem(q)),
        |p, q| p % q,
    )))
}

fn non_numeric(name: &str, code: i32, v: &Val) -> DocError {
    err(
        code,
        format!("{name} only supports numeric types, not {}", tn(v)),
    )
}

fn abs(a: &Val) -> Result<Val> {
    if nullish(a) {
        return Ok(Some(Bson::Null));
    }
    Ok(Some(match a.as_ref().expect("present") {
        Bson::Int32(i) => int_result(i64::from(*i).abs()),
        Bson::Int64(i) => Bson::Int64(
            i.checked_abs()
                .ok_or_else(|| err(28680, "can't take $abs of long long min"))?,
        ),
        Bson::Double(f) => Bson::Double(f.abs()),
        Bson::Decimal128(d) => {
            let mut bytes = d.bytes();
            bytes[15] &= 0x7f;
            Bson::Decimal128(Decimal128::from_bytes(bytes))
        }
        _ => return Err(non_numeric("$abs", 28765, a)),
    }))
}

fn ceil_floor(name: &str, a: &Val, ceil: bool) -> Result<Val> {
    if nullish(a) {
        return Ok(Some(Bson::Null));
    }
    let v = a.as_ref().expect("present");
    Ok(Some(match width(v) {
        Some(Width::Int | Width::Long) => v.clone(),
        Some(w) => {
            let f = as_f64(v);
            make_float(w, if ceil { f.ceil() } else { f.floor() })
        }
        None => return Err(non_numeric(name, 28765, a)),
    }))
}

fn round_trunc(name: &str, a: &Val, place: Option<&Val>, trunc: bool) -> Result<Val> {
    let place = match place {
        None => 0,
        Some(p) if nullish(p) => return Ok(Some(Bson::Null)),
        Some(p) => {
            let pv = p.as_ref().expect("present");
            let Some(n) = integral(pv) else {
                return Err(err(
                    51082,
                    format!("precision argument to {name} must be a integral value"),
                ));
            };
            if !(-20..=100).contains(&n) {
                return Err(err(
                    51083,
                    format!(
                        "cannot apply {name} with precision value {n} value must be in [-20, 100]"
                    ),
                ));
            }
            n as i32
        }
    };
    if nullish(a) {
        return Ok(Some(Bson::Null));
    }
    let v = a.as_ref().expect("present");
    Ok(Some(match width(v) {
        Some(w @ (Width::Int | Width::Long)) => {
            let x = as_i64(v).expect("integer");
            match round_int(x, place, trunc) {
                Some(r) => make_int(w, r),
                None => Bson::Double(round_f64(x as f64, place, trunc)),
            }
        }
        Some(w) => make_float(w, round_f64(as_f64(v), place, trunc)),
        None => return Err(non_numeric(name, 51081, a)),
    }))
}

/// Rounds (half to even) or truncates an integer to `place` decimal places
/// (only negative places change it); `None` if the result overflows.
fn round_int(x: i64, place: i32, trunc: bool) -> Option<i64> {
    if place >= 0 {
        return Some(x);
    }
    let p = 10i128.pow(place.unsigned_abs());
    let x = i128::from(x);
    let mut q = x / p;
    let r = x % p;
    if !trunc {
        let twice = r.abs() * 2;
        if twice > p || (twice == p && q % 2 != 0) {
            q += x.signum();
        }
    }
    i64::try_from(q * p).ok()
}

/// Rounds (half to even) or truncates a double at `place` decimal places, on
/// its exact decimal expansion (as MongoDB does through decimal128).
fn round_f64(x: f64, place: i32, trunc: bool) -> f64 {
    if !x.is_finite() || x == 0.0 {
        return x;
    }
    // 34 significant digits, correctly rounded from the exact binary value.
    let s = format!("{:.33e}", x.abs());
    let (mantissa, exp) = s.split_once('e').expect("scientific notation");
    let exp: i32 = exp.parse().expect("an exponent");
    let digits: Vec<u8> = mantissa
        .bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| b - b'0')
        .collect();
    // Digit i weighs 10^(exp - i); keep those weighing at least 10^-place.
    let keep = exp + place + 1;
    if keep >= digits.len() as i32 {
        return x;
    }
    let (kept, first_dropped, rest_nonzero) = if keep < 0 {
        (&digits[..0], 0, true)
    } else {
        let k = keep as usize;
        (
            &digits[..k],
            digits[k],
            digits[k + 1..].iter().any(|d| *d != 0),
        )
    };
    let mut n: u128 = kept.iter().fold(0, |n, d| n * 10 + u128::from(*d));
    if !trunc {
        let odd = n % 2 == 1;
        if first_dropped > 5 || (first_dropped == 5 && (rest_nonzero || odd)) {
            n += 1;
        }
    }
    let r: f64 = format!("{n}e{}", -place).parse().unwrap_or(0.0);
    if x < 0.0 {
        -r
    } else {
        r
    }
}

fn unary_float(op: Op, name: &str, a: &Val) -> Result<Val> {
    if nullish(a) {
        return Ok(Some(Bson::Null));
    }
    let v = a.as_ref().expect("present");
    let Some(w) = width(v) else {
        return Err(non_numeric(name, 28765, a));
    };
    let x = as_f64(v);
    let r = match op {
        Op::Sqrt => {
            if x < 0.0 {
                return Err(err(
                    28714,
                    "$sqrt's argument must be greater than or equal to 0",
                ));
            }
            x.sqrt()
        }
        Op::Exp => x.exp(),
        Op::Ln => {
            if x <= 0.0 {
                return Err(err(
                    28766,
                    format!(
                        "$ln's argument must be a positive number, but is {}",
                        show(a)
                    ),
                ));
            }
            x.ln()
        }
        _ => {
            if x <= 0.0 {
                return Err(err(
                    28761,
                    format!(
                        "$log10's argument must be a positive number, but is {}",
                        show(a)
                    ),
                ));
            }
            x.log10()
        }
    };
    Ok(Some(make_float(w.max(Width::Double), r)))
}

fn log(a: &Val, base: &Val) -> Result<Val> {
    if nullish(a) || nullish(base) {
        return Ok(Some(Bson::Null));
    }
    if !is_num(a) {
        return Err(err(
            28756,
            format!("$log's argument must be numeric, not {}", tn(a)),
        ));
    }
    if !is_num(base) {
        return Err(err(
            28757,
            format!("$log's base must be numeric, not {}", tn(base)),
        ));
    }
    let (x, b) = (
        a.as_ref().expect("present"),
        base.as_ref().expect("present"),
    );
    let (xf, bf) = (as_f64(x), as_f64(b));
    if xf <= 0.0 {
        return Err(err(
            28758,
            format!(
                "$log's argument must be a positive number, but is {}",
                show(a)
            ),
        ));
    }
    if bf <= 0.0 || bf == 1.0 {
        return Err(err(
            28759,
            format!(
                "$log's base must be a positive number not equal to 1, but is {}",
                show(base)
            ),
        ));
    }
    let w = width(x)
        .expect("number")
        .max(width(b).expect("number"))
        .max(Width::Double);
    Ok(Some(make_float(w, xf.ln() / bf.ln())))
}

fn pow(base: &Val, exp: &Val) -> Result<Val> {
    if nullish(base) || nullish(exp) {
        return Ok(Some(Bson::Null));
    }
    if !is_num(base) {
        return Err(err(
            28762,
            format!("$pow's base must be numeric, not {}", tn(base)),
        ));
    }
    if !is_num(exp) {
        return Err(err(
            28763,
            format!("$pow's exponent must be numeric, not {}", tn(exp)),
        ));
    }
    let (b, e) = (
        base.as_ref().expect("present"),
        exp.as_ref().expect("present"),
    );
    let (bf, ef) = (as_f64(b), as_f64(e));
    if bf == 0.0 && ef < 0.0 {
        return Err(err(
            28764,
            "$pow cannot take a base of 0 and a negative exponent",
        ));
    }
    let w = width(b).expect("number").max(width(e).expect("number"));
    if w <= Width::Long {
        let (bi, ei) = (as_i64(b).expect("integer"), as_i64(e).expect("integer"));
        if ei < 0 {
            return Ok(Some(match bi {
                1 => make_int(w, 1),
                -1 => make_int(w, if ei % 2 == 0 { 1 } else { -1 }),
                _ => Bson::Double(bf.powf(ef)),
            }));
        }
        return Ok(Some(match int_pow(bi, ei) {
            Some(r) => make_int(w, r),
            None => Bson::Double(bf.powf(ef)),
        }));
    }
    Ok(Some(make_float(w, bf.powf(ef))))
}

/// `base^exp` for `exp >= 0`, if an i64 holds it.
fn int_pow(base: i64, exp: i64) -> Option<i64> {
    match base {
        0 => return Some(if exp == 0 { 1 } else { 0 }),
        1 => return Some(1),
        -1 => return Some(if exp % 2 == 0 { 1 } else { -1 }),
        _ => {}
    }
    let exp = u32::try_from(exp).ok().filter(|e| *e < 64)?;
    base.checked_pow(exp)
}

// ---------------------------------------------------------------------------
// Strings

/// A double as MongoDB shows it in strings: shortest round-trip digits,
/// exponent notation for very large and very small magnitudes.
pub(crate) fn format_double(f: f64) -> String {
    if f.is_nan() {
        return "NaN".to_string();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.to_string();
    }
    let a = f.abs();
    if a == 0.0 || (1e-5..1e15).contains(&a) {
        return format!("{f}");
    }
    let s = format!("{f:e}");
    match s.split_once('e') {
        Some((m, e)) if !e.starts_with('-') => format!("{m}e+{e}"),
        _ => s,
    }
}

/// A value as the string operators read it: null and missing are "".
fn coerce_to_string(v: &Val, name: &str) -> Result<String> {
    Ok(match v {
        None | Some(Bson::Null | Bson::Undefined) => String::new(),
        Some(Bson::String(s) | Bson::Symbol(s)) => s.clone(),
        Some(Bson::Int32(i)) => i.to_string(),
        Some(Bson::Int64(i)) => i.to_string(),
        Some(Bson::Double(f)) => format_double(*f),
        Some(Bson::Decimal128(d)) => d.to_string(),
        Some(Bson::DateTime(d)) => iso_date(d.timestamp_millis()),
        Some(Bson::Timestamp(t)) => format!("Timestamp({}, {})", t.time, t.increment),
        Some(other) => {
            return Err(err(
                16007,
                format!(
                    "{name}: can't convert from BSON type {} to String",
                    type_name(Some(other))
                ),
            ))
        }
    })
}

fn concat(args: Vec<Val>) -> Result<Val> {
    let mut out = String::new();
    for a in args {
        match a {
            ref v if nullish(v) => return Ok(Some(Bson::Null)),
            Some(Bson::String(s)) => out.push_str(&s),
            v => {
                return Err(err(
                    16702,
                    format!("$concat only supports strings, not {}", tn(&v)),
                ))
            }
        }
    }
    Ok(Some(Bson::String(out)))
}

fn substr_bytes(name: &str, s: &Val, start: &Val, len: &Val) -> Result<Val> {
    let s = coerce_to_string(s, name)?;
    let Some(start) = start.as_ref().filter(|v| width(v).is_some()) else {
        return Err(err(
            16034,
            format!(
                "{name}: starting index must be a numeric type (is BSON type {})",
                tn(start)
            ),
        ));
    };
    let Some(len) = len.as_ref().filter(|v| width(v).is_some()) else {
        return Err(err(
            16035,
            format!(
                "{name}: length must be a numeric type (is BSON type {})",
                tn(len)
            ),
        ));
    };
    let start = as_f64(start).trunc();
    if start < 0.0 {
        return Err(err(
            50752,
            format!("{name}: starting index must be non-negative (got: {start})"),
        ));
    }
    let bytes = s.as_bytes();
    let start = if start >= bytes.len() as f64 {
        return Ok(Some(Bson::String(String::new())));
    } else {
        start as usize
    };
    let len = as_f64(len).trunc();
    let end = if len < 0.0 || start as f64 + len >= bytes.len() as f64 {
        bytes.len()
    } else {
        start + len as usize
    };
    if !s.is_char_boundary(start) {
        return Err(err(
            28656,
            format!("{name}:  Invalid range, starting index is a UTF-8 continuation byte."),
        ));
    }
    if !s.is_char_boundary(end) {
        return Err(err(
            28657,
            format!("{name}:  Invalid range, ending index is in the middle of a UTF-8 character."),
        ));
    }
    Ok(Some(Bson::String(s[start..end].to_string())))
}

fn substr_cp(s: &Val, start: &Val, len: &Val) -> Result<Val> {
    let s = coerce_to_string(s, "$substrCP")?;
    let index = |v: &Val, what: &str, numeric_code: i32, integral_code: i32| -> Result<i32> {
        let Some(x) = v.as_ref().filter(|x| width(x).is_some()) else {
            return Err(err(
                numeric_code,
                format!(
                    "$substrCP: {what} must be a numeric type (is BSON type {})",
                    tn(v)
                ),
            ));
        };
        integral_i32(x).ok_or_else(|| {
            err(
                integral_code,
                format!("$substrCP: {what} cannot be represented as a 32-bit integral value: {x}"),
            )
        })
    };
    let start = index(start, "starting index", 34450, 34451)?;
    let len = index(len, "length", 34452, 34453)?;
    if start < 0 {
        return Err(err(
            34455,
            "$substrCP: the starting index must be nonnegative integer.",
        ));
    }
    if len < 0 {
        return Err(err(
            34454,
            "$substrCP: length must be a nonnegative integer.",
        ));
    }
    let out: String = s.chars().skip(start as usize).take(len as usize).collect();
    Ok(Some(Bson::String(out)))
}

fn split(s: &Val, sep: &Val) -> Result<Val> {
    if nullish(s) {
        return Ok(Some(Bson::Null));
    }
    let Some(Bson::String(s)) = s else {
        return Err(err(
            40085,
            format!("$split requires an expression that evaluates to a string as a first argument, found: {}", tn(s)),
        ));
    };
    let Some(Bson::String(sep)) = sep else {
        return Err(err(
            40086,
            format!("$split requires an expression that evaluates to a string as a second argument, found: {}", tn(sep)),
        ));
    };
    if sep.is_empty() {
        return Err(err(40087, "$split requires a non-empty separator"));
    }
    Ok(Some(Bson::Array(
        s.split(sep.as_str())
            .map(|p| Bson::String(p.to_string()))
            .collect(),
    )))
}

/// A start or end index of `$indexOf*`: a non-negative whole number.
fn index_arg(name: &str, what: &str, v: &Val) -> Result<usize> {
    let x = v.as_ref().and_then(integral);
    match x {
        Some(i) if i >= 0 => Ok(usize::try_from(i).unwrap_or(usize::MAX)),
        Some(i) => Err(err(
            40097,
            format!("{name} requires a nonnegative {what} index, found: {i}"),
        )),
        None => Err(err(
            40096,
            format!(
                "{name} requires an integral {what} index, found a value of type: {}, with value: {}",
                tn(v),
                show(v)
            ),
        )),
    }
}

fn index_of_str(op: Op, name: &str, args: &[Val]) -> Result<Val> {
    if nullish(&args[0]) {
        return Ok(Some(Bson::Null));
    }
    let Some(Bson::String(s)) = &args[0] else {
        return Err(err(
            40091,
            format!(
                "{name} requires a string as the first argument, found: {}",
                tn(&args[0])
            ),
        ));
    };
    let Some(Bson::String(sub)) = &args[1] else {
        return Err(err(
            40092,
            format!(
                "{name} requires a string as the second argument, found: {}",
                tn(&args[1])
            ),
        ));
    };
    let start = match args.get(2) {
        Some(v) => index_arg(name, "starting", v)?,
        None => 0,
    };
    let end = match args.get(3) {
        Some(v) => Some(index_arg(name, "ending", v)?),
        None => None,
    };
    let found = if op == Op::IndexOfBytes {
        find_in(s.as_bytes(), sub.as_bytes(), start, end)
    } else {
        let hay: Vec<char> = s.chars().collect();
        let needle: Vec<char> = sub.chars().collect();
        find_in(&hay, &needle, start, end)
    };
    Ok(Some(int_result(found.map_or(-1, |i| i as i64))))
}

/// The first index at or after `start` where `needle` occurs, ending by `end`.
fn find_in<T: PartialEq>(
    hay: &[T],
    needle: &[T],
    start: usize,
    end: Option<usize>,
) -> Option<usize> {
    let end = end.unwrap_or(hay.len()).min(hay.len());
    if start > end {
        return None;
    }
    if needle.is_empty() {
        return Some(start);
    }
    hay[start..end]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + start)
}

fn is_default_trim_char(c: char) -> bool {
    matches!(
        c,
        '\0' | ' ' | '\t' | '\n' | '\u{0B}' | '\u{0C}' | '\r' | '\u{A0}' | '\u{1680}' | '\u{2000}'
            ..='\u{200A}' | '\u{2028}' | '\u{2029}' | '\u{202F}' | '\u{205F}' | '\u{3000}'
    )
}

fn trim(name: &str, left: bool, right: bool, input: Val, chars: Option<Val>) -> Result<Val> {
    if nullish(&input) {
        return Ok(Some(Bson::Null));
    }
    let Some(Bson::String(s)) = input else {
        return Err(err(
            50699,
            format!(
                "{name} requires its input to be a string, got {} (of type {}) instead.",
                show(&input),
                tn(&input)
            ),
        ));
    };
    let set: Option<Vec<char>> = match chars {
        None => None,
        Some(ref c) if nullish(c) => return Ok(Some(Bson::Null)),
        Some(Some(Bson::String(c))) => Some(c.chars().collect()),
        Some(c) => {
            return Err(err(
                50700,
                format!(
                    "{name} requires 'chars' to be a string, got {} (of type {}) instead.",
                    show(&c),
                    tn(&c)
                ),
            ))
        }
    };
    let is_trimmed = |c: char| match &set {
        Some(set) => set.contains(&c),
        None => is_default_trim_char(c),
    };
    let mut t = s.as_str();
    if left {
        t = t.trim_start_matches(is_trimmed);
    }
    if right {
        t = t.trim_end_matches(is_trimmed);
    }
    Ok(Some(Bson::String(t.to_string())))
}

// ---------------------------------------------------------------------------
// Arrays

fn array_elem_at(name: &str, array: Val, index: &Val) -> Result<Val> {
    if nullish(&array) || nullish(index) {
        return Ok(Some(Bson::Null));
    }
    let Some(Bson::Array(items)) = array else {
        let what = if name == "$arrayElemAt" {
            "$arrayElemAt's first argument"
        } else if name == "$first" {
            "$first's argument"
        } else {
            "$last's argument"
        };
        return Err(err(
            28689,
            format!("{what} must be an array, but is {}", tn(&array)),
        ));
    };
    let iv = index.as_ref().expect("present");
    if width(iv).is_none() {
        return Err(err(
            28690,
            format!(
                "$arrayElemAt's second argument must be a numeric value, but is {}",
                tn(index)
            ),
        ));
    }
    let Some(i) = integral_i32(iv) else {
        return Err(err(
            28691,
            format!(
                "$arrayElemAt's second argument must be representable as a 32-bit integer: {}",
                show(index)
            ),
        ));
    };
    let i = i64::from(i);
    let len = items.len() as i64;
    let at = if i < 0 { len + i } else { i };
    if at < 0 || at >= len {
        return Ok(None);
    }
    Ok(items.into_iter().nth(at as usize))
}

fn slice(mut args: Vec<Val>) -> Result<Val> {
    if args.iter().any(nullish) {
        return Ok(Some(Bson::Null));
    }
    let array = args.remove(0);
    let Some(Bson::Array(items)) = array else {
        return Err(err(
            28724,
            format!(
                "First argument to $slice must be an array, but is of type: {}",
                tn(&array)
            ),
        ));
    };
    let int = |v: &Val, which: &str, numeric_code: i32, integral_code: i32| -> Result<i64> {
        let x = v.as_ref().expect("present");
        if width(x).is_none() {
            return Err(err(
                numeric_code,
                format!(
                    "{which} argument to $slice must be a numeric value, but is of type: {}",
                    tn(v)
                ),
            ));
        }
        integral_i32(x).map(i64::from).ok_or_else(|| {
            err(
                integral_code,
                format!(
                    "{which} argument to $slice can't be represented as a 32-bit integer: {}",
                    show(v)
                ),
            )
        })
    };
    let len = items.len() as i64;
    let (start, count) = if args.len() == 1 {
        let n = int(&args[0], "Second", 28725, 28726)?;
        if n >= 0 {
            (0, n)
        } else {
            ((len + n).max(0), -n)
        }
    } else {
        let pos = int(&args[0], "Second", 28725, 28726)?;
        let n = int(&args[1], "Third", 28727, 28728)?;
        if n <= 0 {
            return Err(err(
                28729,
                format!(
                    "Third argument to $slice must be positive: {}",
                    show(&args[1])
                ),
            ));
        }
        let start = if pos >= 0 {
            pos.min(len)
        } else {
            (len + pos).max(0)
        };
        (start, n)
    };
    Ok(Some(Bson::Array(
        items
            .into_iter()
            .skip(start as usize)
            .take(count as usize)
            .collect(),
    )))
}

fn range(args: &[Val]) -> Result<Val> {
    let int = |v: &Val, what: &str, numeric_code: i32, int_code: i32| -> Result<i64> {
        match v.as_ref().filter(|x| width(x).is_some()) {
            None => Err(err(
                numeric_code,
                format!("$range requires a numeric {what}, found value of type: {}", tn(v)),
            )),
            Some(x) => integral_i32(x).map(i64::from).ok_or_else(|| {
                err(
                    int_code,
                    format!("$range requires a {what} that can be represented as a 32-bit integer, found value: {}", show(v)),
                )
            }),
        }
    };
    let start = int(&args[0], "starting value", 34443, 34444)?;
    let end = int(&args[1], "ending value", 34445, 34446)?;
    let step = match args.get(2) {
        Some(s) => int(s, "step value", 34447, 34448)?,
        None => 1,
    };
    if step == 0 {
        return Err(err(34449, "$range requires a non-zero step value"));
    }
    let count = if (step > 0 && end > start) || (step < 0 && end < start) {
        ((end - start).abs() + step.abs() - 1) / step.abs()
    } else {
        0
    };
    if count as u64 > RANGE_ELEMENTS_MAX as u64 {
        return Err(err(
            EXCEEDED_MEMORY_LIMIT,
            format!(
                "$range would build {count} elements, more than the {RANGE_ELEMENTS_MAX} allowed"
            ),
        ));
    }
    Ok(Some(Bson::Array(
        (0..count)
            .map(|i| Bson::Int32((start + i * step) as i32))
            .collect(),
    )))
}

fn index_of_array(args: &[Val]) -> Result<Val> {
    let name = "$indexOfArray";
    if nullish(&args[0]) {
        return Ok(Some(Bson::Null));
    }
    let Some(Bson::Array(items)) = &args[0] else {
        return Err(err(
            40090,
            format!(
                "$indexOfArray requires an array as a first argument, found: {}",
                tn(&args[0])
            ),
        ));
    };
    let start = match args.get(2) {
        Some(v) => index_arg(name, "starting", v)?,
        None => 0,
    };
    let end = match args.get(3) {
        Some(v) => index_arg(name, "ending", v)?,
        None => items.len(),
    }
    .min(items.len());
    if start >= end {
        return Ok(Some(Bson::Int32(-1)));
    }
    let found = items[start..end]
        .iter()
        .position(|e| compare_values(Some(e), args[1].as_ref()) == Ordering::Equal)
        .map_or(-1, |i| (i + start) as i64);
    Ok(Some(int_result(found)))
}

fn array_to_object(v: Val) -> Result<Val> {
    if nullish(&v) {
        return Ok(Some(Bson::Null));
    }
    let Some(Bson::Array(items)) = v else {
        return Err(err(
            40386,
            format!("$arrayToObject requires an array input, found: {}", tn(&v)),
        ));
    };
    let mut out = Document::new();
    let mut pairs_are_arrays: Option<bool> = None;
    for item in items {
        let (k, v) = match item {
            Bson::Array(mut pair) => {
                if pairs_are_arrays == Some(false) {
                    return Err(err(
                        40391,
                        "$arrayToObject requires a consistent input format. Elements must all be arrays or all be objects. Object was detected, now found: array",
                    ));
                }
                pairs_are_arrays = Some(true);
                if pair.len() != 2 {
                    return Err(err(
                        40397,
                        format!("$arrayToObject requires an array of size 2 arrays,found array of size: {}", pair.len()),
                    ));
                }
                let v = pair.pop().expect("two elements");
                match pair.pop().expect("two elements") {
                    Bson::String(k) => (k, v),
                    k => {
                        return Err(err(
                            40395,
                            format!("$arrayToObject requires an array of key-value pairs, where the key must be of type string. Found key type: {}", type_name(Some(&k))),
                        ))
                    }
                }
            }
            Bson::Document(mut pair) => {
                if pairs_are_arrays == Some(true) {
                    return Err(err(
                        40391,
                        "$arrayToObject requires a consistent input format. Elements must all be arrays or all be objects. Array was detected, now found: object",
                    ));
                }
                pairs_are_arrays = Some(false);
                if pair.len() != 2 {
                    return Err(err(
                        40392,
                        format!("$arrayToObject requires an object keys of 'k' and 'v'. Found incorrect number of keys:{}", pair.len()),
                    ));
                }
                let (Some(k), Some(v)) = (pair.remove("k"), pair.remove("v")) else {
                    return Err(err(
                        40393,
                        "$arrayToObject requires an object with keys 'k' and 'v'. Missing either or both keys",
                    ));
                };
                match k {
                    Bson::String(k) => (k, v),
                    k => {
                        return Err(err(
                            40394,
                            format!("$arrayToObject requires an object with keys 'k' and 'v', where the value of 'k' must be of type string. Found type: {}", type_name(Some(&k))),
                        ))
                    }
                }
            }
            other => {
                return Err(err(
                    40398,
                    format!(
                        "Unrecognised input type format for $arrayToObject: {}",
                        type_name(Some(&other))
                    ),
                ))
            }
        };
        if k.contains('\0') {
            return Err(err(
                4940400,
                "Key field cannot contain an embedded null byte",
            ));
        }
        out.insert(k, v);
    }
    Ok(Some(Bson::Document(out)))
}

fn sort_array(items: Vec<Bson>, by: &SortBy) -> Vec<Bson> {
    match by {
        SortBy::Value { descending } => {
            let mut items = items;
            items.sort_by(|a, b| {
                let o = order::compare(a, b);
                if *descending {
                    o.reverse()
                } else {
                    o
                }
            });
            items
        }
        SortBy::Fields(pattern) => {
            let mut keyed: Vec<(Vec<SortKey>, Bson)> = items
                .into_iter()
                .map(|v| (pattern.key_of_value(&v), v))
                .collect();
            keyed.sort_by(|a, b| pattern.compare(&a.0, &b.0));
            keyed.into_iter().map(|(_, v)| v).collect()
        }
    }
}

// ---------------------------------------------------------------------------
// Sorting (shared with the `$sort` stage)

/// A sort specification (`{a: 1, "b.c": -1}`) with MongoDB's sort keys: a
/// path through arrays yields several candidate values; an ascending key is
/// the smallest, a descending key the largest; missing sorts as null; an
/// empty array sorts below null.
#[derive(Debug, Clone)]
pub(crate) struct SortPattern {
    keys: Vec<(Vec<String>, bool)>,
}

/// One component of a document's sort key.
#[derive(Debug, Clone)]
pub(crate) enum SortKey {
    EmptyArray,
    Value(Bson),
}

fn compare_sort_keys(a: &SortKey, b: &SortKey) -> Ordering {
    match (a, b) {
        (SortKey::EmptyArray, SortKey::EmptyArray) => Ordering::Equal,
        (SortKey::EmptyArray, _) => Ordering::Less,
        (_, SortKey::EmptyArray) => Ordering::Greater,
        (SortKey::Value(x), SortKey::Value(y)) => order::compare(x, y),
    }
}

impl SortPattern {
    /// Parses a sort document; `what` names the stage or operator in errors.
    pub(crate) fn parse(spec: &Document, what: &str) -> Result<SortPattern> {
        if spec.is_empty() {
            return Err(err(
                15976,
                format!("{what} must have at least one sort key"),
            ));
        }
        let mut keys = Vec::with_capacity(spec.len());
        for (k, v) in spec {
            let descending = match order::number(v) {
                Some(n) if order::compare_numbers(n, Num::Int(1)) == Ordering::Equal => false,
                Some(n) if order::compare_numbers(n, Num::Int(-1)) == Ordering::Equal => true,
                _ => {
                    if let Bson::Document(d) = v {
                        if d.contains_key("$meta") {
                            return Err(err(
                                17312,
                                format!("{what}: $meta sort keys are not supported"),
                            ));
                        }
                    }
                    return Err(err(
                        15975,
                        format!(
                            "{what} key ordering must be 1 (for ascending) or -1 (for descending)"
                        ),
                    ));
                }
            };
            keys.push((split_path(k)?, descending));
        }
        Ok(SortPattern { keys })
    }

    /// The sort key of a document.
    pub(crate) fn key_of_doc(&self, d: &Document) -> Vec<SortKey> {
        self.keys
            .iter()
            .map(|(path, descending)| {
                let mut candidates = Vec::new();
                collect_doc(d, path, &mut candidates);
                pick(candidates, *descending)
            })
            .collect()
    }

    /// The sort key of any value (non-documents have only null keys).
    pub(crate) fn key_of_value(&self, v: &Bson) -> Vec<SortKey> {
        match v {
            Bson::Document(d) => self.key_of_doc(d),
            _ => self
                .keys
                .iter()
                .map(|_| SortKey::Value(Bson::Null))
                .collect(),
        }
    }

    /// Compares two sort keys under this pattern's directions.
    pub(crate) fn compare(&self, a: &[SortKey], b: &[SortKey]) -> Ordering {
        for ((x, y), (_, descending)) in a.iter().zip(b).zip(&self.keys) {
            let o = compare_sort_keys(x, y);
            if o != Ordering::Equal {
                return if *descending { o.reverse() } else { o };
            }
        }
        Ordering::Equal
    }
}

fn pick(candidates: Vec<SortKey>, descending: bool) -> SortKey {
    let want = if descending {
        Ordering::Greater
    } else {
        Ordering::Less
    };
    let mut best: Option<SortKey> = None;
    for c in candidates {
        match &best {
            Some(b) if compare_sort_keys(&c, b) != want => {}
            _ => best = Some(c),
        }
    }
    best.unwrap_or(SortKey::Value(Bson::Null))
}

fn collect_doc(d: &Document, path: &[String], out: &mut Vec<SortKey>) {
    collect_value(d.get(&path[0]), &path[1..], out);
}

fn collect_value(v: Option<&Bson>, path: &[String], out: &mut Vec<SortKey>) {
    let Some(v) = v else {
        out.push(SortKey::Value(Bson::Null));
        return;
    };
    if path.is_empty() {
        match v {
            Bson::Array(items) if items.is_empty() => out.push(SortKey::EmptyArray),
            Bson::Array(items) => out.extend(items.iter().map(|e| SortKey::Value(e.clone()))),
            other => out.push(SortKey::Value(other.clone())),
        }
        return;
    }
    match v {
        Bson::Document(d) => collect_doc(d, path, out),
        Bson::Array(items) => {
            if let Ok(i) = path[0].parse::<usize>() {
                if let Some(e) = items.get(i) {
                    collect_value(Some(e), &path[1..], out);
                    return;
                }
            }
            if items.is_empty() {
                out.push(SortKey::Value(Bson::Null));
            }
            for e in items {
                match e {
                    Bson::Document(d) => collect_doc(d, path, out),
                    _ => out.push(SortKey::Value(Bson::Null)),
                }
            }
        }
        _ => out.push(SortKey::Value(Bson::Null)),
    }
}

// ---------------------------------------------------------------------------
// Conversion

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Double,
    String,
    ObjectId,
    Bool,
    Date,
    Int,
    Long,
    Decimal,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Double => "double",
            Target::String => "string",
            Target::ObjectId => "objectId",
            Target::Bool => "bool",
            Target::Date => "date",
            Target::Int => "int",
            Target::Long => "long",
            Target::Decimal => "decimal",
        }
    }
}

fn target_of(v: &Bson) -> Result<Target> {
    let by_name = |s: &str| match s {
        "double" => Some(Target::Double),
        "string" => Some(Target::String),
        "objectId" => Some(Target::ObjectId),
        "bool" => Some(Target::Bool),
        "date" => Some(Target::Date),
        "int" => Some(Target::Int),
        "long" => Some(Target::Long),
        "decimal" => Some(Target::Decimal),
        _ => None,
    };
    let by_code = |c: i64| match c {
        1 => Some(Target::Double),
        2 => Some(Target::String),
        7 => Some(Target::ObjectId),
        8 => Some(Target::Bool),
        9 => Some(Target::Date),
        16 => Some(Target::Int),
        18 => Some(Target::Long),
        19 => Some(Target::Decimal),
        _ => None,
    };
    let t = match v {
        Bson::String(s) => by_name(s),
        v => integral(v).and_then(by_code),
    };
    t.ok_or_else(|| {
        DocError::bad_value(format!(
            "$convert: unknown or unsupported target type {}",
            show(&Some(v.clone()))
        ))
    })
}

fn conversion_failure(message: String) -> DocError {
    err(
        CONVERSION_FAILURE,
        format!("{message} in $convert with no onError value"),
    )
}

fn unsupported(v: &Bson, t: Target) -> DocError {
    conversion_failure(format!(
        "Unsupported conversion from {} to {}",
        type_name(Some(v)),
        t.name()
    ))
}

fn overflow(v: &Bson) -> DocError {
    conversion_failure(format!(
        "Conversion would overflow target type: {}",
        show(&Some(v.clone()))
    ))
}

/// Converts a present, non-null value to `t`, as `$convert` does.
fn convert(v: &Bson, t: Target) -> Result<Bson> {
    let parse_fail =
        |s: &str, why: &str| conversion_failure(format!("Failed to parse number '{s}': {why}"));
    Ok(match t {
        Target::Bool => Bson::Boolean(match v {
            Bson::Boolean(b) => *b,
            v if width(v).is_some() => !is_zero(v),
            _ => true,
        }),
        Target::Double => Bson::Double(match v {
            Bson::Double(f) => *f,
            Bson::Int32(i) => f64::from(*i),
            Bson::Int64(i) => *i as f64,
            Bson::Decimal128(d) => {
                let f = order::decimal_to_f64(d);
                let s = d.to_string();
                if f.is_infinite() && !s.contains("Infinity") {
                    return Err(overflow(v));
                }
                f
            }
            Bson::Boolean(b) => f64::from(u8::from(*b)),
            Bson::DateTime(d) => d.timestamp_millis() as f64,
            Bson::String(s) => s
                .parse::<f64>()
                .map_err(|_| parse_fail(s, "not a number"))?,
            _ => return Err(unsupported(v, t)),
        }),
        Target::Int | Target::Long => {
            let (lo, hi) = if t == Target::Int {
                (f64::from(i32::MIN), f64::from(i32::MAX) + 1.0)
            } else {
                (-9.223_372_036_854_776e18, 9.223_372_036_854_776e18)
            };
            let x: i64 = match v {
                Bson::Int32(i) => i64::from(*i),
                Bson::Int64(i) => *i,
                Bson::Double(_) | Bson::Decimal128(_) => {
                    let f = as_f64(v).trunc();
                    if !(f >= lo && f < hi) {
                        return Err(overflow(v));
                    }
                    f as i64
                }
                Bson::Boolean(b) => i64::from(*b),
                Bson::DateTime(d) if t == Target::Long => d.timestamp_millis(),
                Bson::String(s) => {
                    if t == Target::Int {
                        i64::from(
                            s.parse::<i32>()
                                .map_err(|e| parse_fail(s, &e.to_string()))?,
                        )
                    } else {
                        s.parse::<i64>()
                            .map_err(|e| parse_fail(s, &e.to_string()))?
                    }
                }
                _ => return Err(unsupported(v, t)),
            };
            if t == Target::Int {
                Bson::Int32(i32::try_from(x).map_err(|_| overflow(v))?)
            } else {
                Bson::Int64(x)
            }
        }
        Target::Decimal => Bson::Decimal128(match v {
            Bson::Decimal128(d) => *d,
            Bson::Int32(i) => i.to_string().parse().expect("an integer is a decimal"),
            Bson::Int64(i) => i.to_string().parse().expect("an integer is a decimal"),
            Bson::Double(f) => decimal_from_f64(*f),
            Bson::Boolean(b) => if *b { "1" } else { "0" }.parse().expect("a decimal"),
            Bson::DateTime(d) => d
                .timestamp_millis()
                .to_string()
                .parse()
                .expect("an integer is a decimal"),
            Bson::String(s) => {
                let ok = !s.is_empty()
                    && s.chars().all(|c| c.is_ascii_digit() || ".+-eE".contains(c))
                    || ["NaN", "Infinity", "-Infinity", "inf", "-inf"].contains(&s.as_str());
                if !ok {
                    return Err(parse_fail(s, "not a decimal"));
                }
                s.parse().map_err(|_| parse_fail(s, "not a decimal"))?
            }
            _ => return Err(unsupported(v, t)),
        }),
        Target::String => Bson::String(match v {
            Bson::String(s) => s.clone(),
            Bson::Boolean(b) => b.to_string(),
            Bson::ObjectId(o) => o.to_hex(),
            Bson::Int32(_)
            | Bson::Int64(_)
            | Bson::Double(_)
            | Bson::Decimal128(_)
            | Bson::DateTime(_) => coerce_to_string(&Some(v.clone()), "$convert")?,
            _ => return Err(unsupported(v, t)),
        }),
        Target::ObjectId => match v {
            Bson::ObjectId(o) => Bson::ObjectId(*o),
            Bson::String(s) => Bson::ObjectId(ObjectId::parse_str(s).map_err(|_| {
                conversion_failure(format!(
                    "Failed to parse objectId '{s}': expected 24 hexadecimal digits"
                ))
            })?),
            _ => return Err(unsupported(v, t)),
        },
        Target::Date => Bson::DateTime(DateTime::from_millis(match v {
            Bson::DateTime(d) => d.timestamp_millis(),
            Bson::Int64(i) => *i,
            Bson::Double(_) | Bson::Decimal128(_) => {
                let f = as_f64(v).trunc();
                if !(-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&f) {
                    return Err(overflow(v));
                }
                f as i64
            }
            Bson::Timestamp(ts) => i64::from(ts.time) * 1000,
            Bson::ObjectId(o) => o.timestamp().timestamp_millis(),
            Bson::String(s) => parse_iso_date(s)
                .ok_or_else(|| conversion_failure(format!("Error parsing date string '{s}'")))?,
            _ => return Err(unsupported(v, t)),
        })),
    })
}

// ---------------------------------------------------------------------------
// Dates (UTC, or a fixed offset)

/// A point in time broken down in the proleptic Gregorian calendar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub millis: u32,
    /// 1 (Sunday) to 7 (Saturday), as `$dayOfWeek`.
    pub weekday: u32,
    /// 1 to 366.
    pub yday: u32,
}

const MS_PER_DAY: i64 = 86_400_000;

/// The calendar date of a day number (days since 1970-01-01).
fn date_of_day(z: i64) -> (i64, u32, u32) {
    // Days from 0000-03-01, in 400-year eras of 146097 days.
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The day number (days since 1970-01-01) of a calendar date.
fn day_of_date(year: i64, month: u32, day: u32) -> i64 {
    let y = year - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub(crate) fn civil(ms: i64) -> Civil {
    let days = ms.div_euclid(MS_PER_DAY);
    let in_day = ms.rem_euclid(MS_PER_DAY);
    let (year, month, day) = date_of_day(days);
    Civil {
        year,
        month,
        day,
        hour: (in_day / 3_600_000) as u32,
        minute: (in_day / 60_000 % 60) as u32,
        second: (in_day / 1000 % 60) as u32,
        millis: (in_day % 1000) as u32,
        // 1970-01-01 was a Thursday (5 when Sunday is 1).
        weekday: ((days + 4).rem_euclid(7) + 1) as u32,
        yday: (days - day_of_date(year, 1, 1) + 1) as u32,
    }
}

/// ISO 8601 in UTC with milliseconds, as MongoDB prints dates.
pub(crate) fn iso_date(ms: i64) -> String {
    format_date(ms, 0, "%Y-%m-%dT%H:%M:%S.%LZ")
}

fn check_date_format(f: &str) -> Result<()> {
    let mut chars = f.chars();
    while let Some(c) = chars.next() {
        if c == '%' {
            match chars.next() {
                Some('Y' | 'm' | 'd' | 'H' | 'M' | 'S' | 'L' | 'j' | 'w' | 'u' | 'z' | 'Z' | '%') => {}
                Some(o) => {
                    return Err(err(
                        18536,
                        format!("Invalid format character '%{o}' in format string (%U, %V and %G are not supported)"),
                    ))
                }
                None => return Err(err(18535, "Unmatched '%' at end of format string")),
            }
        }
    }
    Ok(())
}

/// Formats a date (a checked format; `offset_ms` east of UTC).
fn format_date(ms: i64, offset_ms: i64, f: &str) -> String {
    let c = civil(ms.saturating_add(offset_ms));
    let mut out = String::new();
    let mut chars = f.chars();
    while let Some(ch) = chars.next() {
        if ch != '%' {
            out.push(ch);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&format!("{:04}", c.year)),
            Some('m') => out.push_str(&format!("{:02}", c.month)),
            Some('d') => out.push_str(&format!("{:02}", c.day)),
            Some('H') => out.push_str(&format!("{:02}", c.hour)),
            Some('M') => out.push_str(&format!("{:02}", c.minute)),
            Some('S') => out.push_str(&format!("{:02}", c.second)),
            Some('L') => out.push_str(&format!("{:03}", c.millis)),
            Some('j') => out.push_str(&format!("{:03}", c.yday)),
            Some('w') => out.push_str(&c.weekday.to_string()),
            Some('u') => {
                out.push_str(&(if c.weekday == 1 { 7 } else { c.weekday - 1 }).to_string())
            }
            Some('z') => {
                let m = offset_ms / 60_000;
                let sign = if m < 0 { '-' } else { '+' };
                out.push_str(&format!("{sign}{:02}{:02}", m.abs() / 60, m.abs() % 60));
            }
            Some('Z') => out.push_str(&(offset_ms / 60_000).to_string()),
            Some('%') => out.push('%'),
            Some(o) => {
                out.push('%');
                out.push(o);
            }
            None => out.push('%'),
        }
    }
    out
}

fn date_millis(v: &Bson, name: &str) -> Result<i64> {
    match v {
        Bson::DateTime(d) => Ok(d.timestamp_millis()),
        Bson::Timestamp(t) => Ok(i64::from(t.time) * 1000),
        Bson::ObjectId(o) => Ok(o.timestamp().timestamp_millis()),
        other => Err(err(
            16006,
            format!(
                "{name}: can't convert from BSON type {} to Date",
                type_name(Some(other))
            ),
        )),
    }
}

/// A time zone's offset east of UTC: "UTC", "GMT", "Z" or "±HH[[:]MM]".
fn timezone_offset_ms(v: &Bson) -> Result<i64> {
    let Bson::String(s) = v else {
        return Err(err(
            40517,
            format!(
                "timezone must evaluate to a string, found {}",
                type_name(Some(v))
            ),
        ));
    };
    if matches!(s.as_str(), "UTC" | "GMT" | "Z" | "Etc/UTC" | "Etc/GMT") {
        return Ok(0);
    }
    parse_offset(s).ok_or_else(|| {
        err(
            40485,
            format!("unrecognized time zone identifier: \"{s}\" (only UTC and fixed offsets such as \"+05:30\" are supported)"),
        )
    })
}

/// "±HH", "±HHMM" or "±HH:MM" in milliseconds east of UTC.
fn parse_offset(s: &str) -> Option<i64> {
    let sign = match s.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let rest = s[1..].replace(':', "");
    if !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m) = match rest.len() {
        2 => (rest.parse::<i64>().ok()?, 0),
        4 => (
            rest[..2].parse::<i64>().ok()?,
            rest[2..].parse::<i64>().ok()?,
        ),
        _ => return None,
    };
    if h > 23 || m > 59 {
        return None;
    }
    Some(sign * (h * 3_600_000 + m * 60_000))
}

/// Parses "YYYY-MM-DD[(T| )HH:MM[:SS[.fff]]][Z|±HH[:MM]]" to milliseconds.
fn parse_iso_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = s.get(from..from + len)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month as u32) as i64 {
        return None;
    }
    let mut ms = day_of_date(year, month as u32, day as u32) * MS_PER_DAY;
    let mut i = 10;
    if i < b.len() && (b[i] == b'T' || b[i] == b' ') {
        let (h, mi) = (num(i + 1, 2)?, num(i + 4, 2)?);
        if b.get(i + 3) != Some(&b':') || h > 23 || mi > 59 {
            return None;
        }
        ms += h * 3_600_000 + mi * 60_000;
        i += 6;
        if b.get(i) == Some(&b':') {
            let sec = num(i + 1, 2)?;
            if sec > 59 {
                return None;
            }
            ms += sec * 1000;
            i += 3;
            if b.get(i) == Some(&b'.') {
                let start = i + 1;
                let mut end = start;
                while end < b.len() && b[end].is_ascii_digit() {
                    end += 1;
                }
                if end == start {
                    return None;
                }
                let frac = &s[start..end.min(start + 3)];
                let scale = 10i64.pow(3 - frac.len() as u32);
                ms += frac.parse::<i64>().ok()? * scale;
                i = end;
            }
        }
    }
    let rest = &s[i..];
    let offset = match rest {
        "" | "Z" => 0,
        r => parse_offset(r)?,
    };
    Some(ms - offset)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{bson, doc};

    fn parse(e: Bson) -> Expr {
        Expr::parse(&e).unwrap_or_else(|err| panic!("parse {e}: {err:?}"))
    }

    /// Evaluates `e` against `d`; missing as null.
    fn ev(e: Bson, d: &Document) -> Bson {
        parse(e.clone())
            .eval(d)
            .unwrap_or_else(|err| panic!("eval {e}: {err:?}"))
    }

    fn ev0(e: Bson) -> Bson {
        ev(e, &doc! {})
    }

    /// Evaluates `e`, keeping missing.
    fn ev_opt(e: Bson, d: &Document) -> Option<Bson> {
        parse(e).eval_opt(d, &Variables::new()).expect("evaluates")
    }

    /// The error code evaluating (or parsing) `e` fails with.
    fn code(e: Bson, d: &Document) -> i32 {
        match Expr::parse(&e) {
            Err(err) => err.code,
            Ok(x) => x.eval(d).expect_err("fails").code,
        }
    }

    fn date(s: &str) -> Bson {
        Bson::DateTime(DateTime::from_millis(parse_iso_date(s).expect("a date")))
    }

    #[test]
    fn field_paths_walk_through_arrays() {
        let d = doc! {
            "a": [{"b": 1}, {"b": 2}, {"c": 3}, 5, [{"b": 9}]],
            "x": {"y": {"z": "deep"}},
            "n": null,
        };
        assert_eq!(ev0(bson!("$a.b")), Bson::Null, "not in an empty document");
        assert_eq!(ev(bson!("$a.b"), &d), bson!([1, 2]));
        assert_eq!(ev(bson!("$x.y.z"), &d), bson!("deep"));
        assert_eq!(ev_opt(bson!("$x.q"), &d), None);
        assert_eq!(ev_opt(bson!("$n"), &d), Some(Bson::Null));
        assert_eq!(ev_opt(bson!("$n.a"), &d), None);
        assert_eq!(ev(bson!("$$ROOT.x.y"), &d), bson!({"z": "deep"}));
        assert_eq!(ev(bson!("$$CURRENT.x.y.z"), &d), bson!("deep"));
        assert_eq!(ev(bson!("$$ROOT"), &d), Bson::Document(d.clone()));
        assert_eq!(ev_opt(bson!("$$REMOVE"), &d), None);
    }

    #[test]
    fn literals_documents_and_arrays() {
        let d = doc! {"a": 1};
        assert_eq!(ev(bson!({"$literal": "$a"}), &d), bson!("$a"));
        assert_eq!(ev(bson!({"$literal": {"$add": 1}}), &d), bson!({"$add": 1}));
        assert_eq!(
            ev(bson!({"x": "$a", "y": "$missing", "z": {"w": "$a"}}), &d),
            bson!({"x": 1, "z": {"w": 1}})
        );
        assert_eq!(ev(bson!(["$a", "$missing", 3]), &d), bson!([1, null, 3]));
        assert_eq!(ev(bson!("plain"), &d), bson!("plain"));
        assert_eq!(ev(bson!({}), &d), bson!({}));
        assert!(parse(bson!([1, {"a": 2}])).as_constant().is_some());
    }

    #[test]
    fn parse_errors() {
        let d = doc! {};
        assert_eq!(code(bson!({"$foo": 1}), &d), INVALID_PIPELINE_OPERATOR);
        let e = Expr::parse(&bson!({"$foo": 1})).unwrap_err();
        assert_eq!(e.message, "Unrecognized expression '$foo'");
        assert_eq!(code(bson!({"$add": 1, "b": 2}), &d), 15983);
        assert_eq!(code(bson!({"$subtract": [1]}), &d), 16020);
        assert_eq!(code(bson!({"$eq": [1, 2, 3]}), &d), 16020);
        assert_eq!(code(bson!("$"), &d), 16872);
        assert_eq!(code(bson!("$a..b"), &d), 15998);
        assert_eq!(code(bson!("$$undefinedVar"), &d), 17276);
        assert_eq!(code(bson!({"a.b": 1}), &d), 16412);
        assert_eq!(
            code(bson!({"$map": {"input": [], "in": 1, "bogus": 1}}), &d),
            16879
        );
        assert_eq!(
            code(bson!({"$let": {"vars": {"Bad": 1}, "in": 1}}), &d),
            16867
        );
        assert_eq!(
            code(bson!({"$let": {"vars": {"a-b": 1}, "in": 1}}), &d),
            16868
        );
        assert_eq!(code(bson!({"$cond": {"if": true, "then": 1}}), &d), 17082);
        assert_eq!(
            code(bson!({"$convert": {"input": 1, "to": "bogus"}}), &d),
            2
        );
    }

    #[test]
    fn comparison_puts_missing_below_null() {
        let d = doc! {"a": 1, "n": null};
        assert_eq!(ev(bson!({"$eq": ["$missing", null]}), &d), bson!(false));
        assert_eq!(ev(bson!({"$eq": ["$n", null]}), &d), bson!(true));
        assert_eq!(ev(bson!({"$lt": ["$missing", null]}), &d), bson!(true));
        assert_eq!(ev(bson!({"$eq": ["$a", 1.0]}), &d), bson!(true));
        assert_eq!(ev(bson!({"$ne": ["$a", 2]}), &d), bson!(true));
        assert_eq!(ev(bson!({"$gt": ["$a", 0]}), &d), bson!(true));
        assert_eq!(ev(bson!({"$gte": ["$a", 1i64]}), &d), bson!(true));
        assert_eq!(ev(bson!({"$lte": ["$a", 0.5]}), &d), bson!(false));
        // Strings sort above numbers.
        assert_eq!(ev(bson!({"$gt": ["a", 5]}), &d), bson!(true));
        assert_eq!(ev(bson!({"$cmp": ["$a", 2]}), &d), bson!(-1));
        assert_eq!(ev(bson!({"$cmp": ["b", "a"]}), &d), bson!(1));
        assert_eq!(ev(bson!({"$cmp": [[1, 2], [1, 2]]}), &d), bson!(0));
    }

    #[test]
    fn boolean_operators() {
        let d = doc! {"z": 0, "s": ""};
        assert_eq!(ev(bson!({"$and": [1, "abc", "$s"]}), &d), bson!(true));
        assert_eq!(ev(bson!({"$and": [1, "$z"]}), &d), bson!(false));
        assert_eq!(ev(bson!({"$and": []}), &d), bson!(true));
        assert_eq!(ev(bson!({"$or": []}), &d), bson!(false));
        assert_eq!(ev(bson!({"$or": [null, "$missing", [] ]}), &d), bson!(true));
        assert_eq!(ev(bson!({"$not": [null]}), &d), bson!(true));
        assert_eq!(ev(bson!({"$not": "$missing"}), &d), bson!(true));
        assert_eq!(ev(bson!({"$not": [[false]]}), &d), bson!(false));
        // $and stops at the first false: the division by zero never runs.
        assert_eq!(
            ev(bson!({"$and": [false, {"$divide": [1, 0]}]}), &d),
            bson!(false)
        );
        assert!(truthy(&Bson::Double(f64::NAN)));
        assert!(!truthy(&Bson::Decimal128("0.00".parse().unwrap())));
    }

    #[test]
    fn addition_promotes_types() {
        assert_eq!(ev0(bson!({"$add": [1, 2]})), Bson::Int32(3));
        assert_eq!(ev0(bson!({"$add": []})), Bson::Int32(0));
        assert_eq!(ev0(bson!({"$add": [i32::MAX, 1]})), Bson::Int64(1 << 31));
        assert_eq!(ev0(bson!({"$add": [1i64, 1]})), Bson::Int64(2));
        assert_eq!(
            ev0(bson!({"$add": [i64::MAX, 1]})),
            Bson::Double(9.223_372_036_854_776e18)
        );
        assert_eq!(ev0(bson!({"$add": [1, 2.5]})), Bson::Double(3.5));
        assert_eq!(ev0(bson!({"$add": [1, null]})), Bson::Null);
        assert_eq!(ev0(bson!({"$add": [1, "$missing"]})), Bson::Null);
        let dec = ev0(bson!({"$add": [Bson::Decimal128("1.5".parse().unwrap()), 1]}));
        assert_eq!(dec, Bson::Decimal128("2.5".parse().unwrap()));
        let d = doc! {"d": date("2020-01-01T00:00:00Z")};
        assert_eq!(
            ev(bson!({"$add": ["$d", 3_600_000]}), &d),
            date("2020-01-01T01:00:00Z")
        );
        assert_eq!(
            ev(bson!({"$add": [1.6, "$d"]}), &d),
            date("2020-01-01T00:00:00.002Z")
        );
        assert_eq!(code(bson!({"$add": ["$d", "$d"]}), &d), 16612);
        assert_eq!(code(bson!({"$add": [1, "x"]}), &d), 16554);
    }

    #[test]
    fn subtraction_multiplication_division() {
        let d = doc! {
            "a": date("2014-03-01T08:00:00Z"),
            "b": date("2014-03-01T07:00:00Z"),
        };
        assert_eq!(
            ev(bson!({"$subtract": ["$a", "$b"]}), &d),
            Bson::Int64(3_600_000)
        );
        assert_eq!(
            ev(bson!({"$subtract": ["$a", 60_000]}), &d),
            date("2014-03-01T07:59:00Z")
        );
        assert_eq!(code(bson!({"$subtract": [5, "$a"]}), &d), 16556);
        assert_eq!(ev0(bson!({"$subtract": [5, 7]})), Bson::Int32(-2));
        assert_eq!(
            ev0(bson!({"$subtract": [i32::MIN, 1]})),
            Bson::Int64(-(1 << 31) - 1)
        );
        assert_eq!(ev0(bson!({"$subtract": [5, null]})), Bson::Null);
        assert_eq!(ev0(bson!({"$multiply": [2, 3]})), Bson::Int32(6));
        assert_eq!(ev0(bson!({"$multiply": [2, 3.5]})), Bson::Double(7.0));
        assert_eq!(
            ev0(bson!({"$multiply": [65536, 65536]})),
            Bson::Int64(1 << 32)
        );
        assert_eq!(
            ev0(bson!({"$multiply": [i64::MAX, 2]})),
            Bson::Double(i64::MAX as f64 * 2.0)
        );
        assert_eq!(code(bson!({"$multiply": [2, "x"]}), &d), 16555);
        assert_eq!(ev0(bson!({"$divide": [9, 2]})), Bson::Double(4.5));
        assert_eq!(ev0(bson!({"$divide": [8, 2]})), Bson::Double(4.0));
        let e = parse(bson!({"$divide": [1, 0]})).eval(&d).unwrap_err();
        assert_eq!((e.code, e.message.as_str()), (2, "can't $divide by zero"));
        assert_eq!(code(bson!({"$divide": [1, 0.0]}), &d), 2);
        assert_eq!(code(bson!({"$divide": ["1", 2]}), &d), 16609);
        assert_eq!(ev0(bson!({"$divide": [null, 0]})), Bson::Null);
    }

    #[test]
    fn modulo_abs_ceil_floor() {
        assert_eq!(ev0(bson!({"$mod": [10, 3]})), Bson::Int32(1));
        assert_eq!(ev0(bson!({"$mod": [-10, 3]})), Bson::Int32(-1));
        assert_eq!(ev0(bson!({"$mod": [10i64, 3]})), Bson::Int64(1));
        assert_eq!(ev0(bson!({"$mod": [10.5, 3]})), Bson::Double(1.5));
        assert_eq!(ev0(bson!({"$mod": [i64::MIN, -1]})), Bson::Int64(0));
        assert_eq!(code(bson!({"$mod": [5, 0]}), &doc! {}), 16610);
        assert_eq!(ev0(bson!({"$abs": -5})), Bson::Int32(5));
        assert_eq!(ev0(bson!({"$abs": i32::MIN})), Bson::Int64(1 << 31));
        assert_eq!(ev0(bson!({"$abs": -2.5})), Bson::Double(2.5));
        assert_eq!(
            ev0(bson!({"$abs": Bson::Decimal128("-1.25".parse().unwrap())})),
            Bson::Decimal128("1.25".parse().unwrap())
        );
        assert_eq!(code(bson!({"$abs": i64::MIN}), &doc! {}), 28680);
        assert_eq!(ev0(bson!({"$abs": null})), Bson::Null);
        assert_eq!(code(bson!({"$abs": "x"}), &doc! {}), 28765);
        assert_eq!(ev0(bson!({"$ceil": 1.2})), Bson::Double(2.0));
        assert_eq!(ev0(bson!({"$ceil": -1.2})), Bson::Double(-1.0));
        assert_eq!(ev0(bson!({"$floor": -1.2})), Bson::Double(-2.0));
        assert_eq!(ev0(bson!({"$floor": 7})), Bson::Int32(7));
    }

    #[test]
    fn round_and_trunc() {
        let r = |v: Bson, p: i32| ev0(bson!({"$round": [v, p]}));
        let t = |v: Bson, p: i32| ev0(bson!({"$trunc": [v, p]}));
        // Half to even, as MongoDB.
        assert_eq!(r(bson!(10.5), 0), Bson::Double(10.0));
        assert_eq!(r(bson!(11.5), 0), Bson::Double(12.0));
        assert_eq!(r(bson!(-2.5), 0), Bson::Double(-2.0));
        assert_eq!(r(bson!(1.2345), 2), Bson::Double(1.23));
        assert_eq!(
            r(bson!(1.235), 2),
            Bson::Double(1.24),
            "1.235 is above the half"
        );
        // 2.675 is 2.67499999... in binary.
        assert_eq!(r(bson!(2.675), 2), Bson::Double(2.67));
        assert_eq!(r(bson!(0.4), 0), Bson::Double(0.0));
        assert_eq!(r(bson!(0.6), 0), Bson::Double(1.0));
        assert_eq!(r(bson!(0.06), 0), Bson::Double(0.0));
        assert_eq!(r(bson!(1234.5678), -2), Bson::Double(1200.0));
        assert_eq!(r(bson!(1234), -2), Bson::Int32(1200));
        assert_eq!(r(bson!(1250), -2), Bson::Int32(1200));
        assert_eq!(r(bson!(1350), -2), Bson::Int32(1400));
        assert_eq!(r(bson!(-1350i64), -2), Bson::Int64(-1400));
        assert_eq!(r(bson!(7), 3), Bson::Int32(7));
        assert_eq!(ev0(bson!({"$round": 10.5})), Bson::Double(10.0));
        assert_eq!(t(bson!(7.8), 0), Bson::Double(7.0));
        assert_eq!(t(bson!(-7.8), 0), Bson::Double(-7.0));
        assert_eq!(t(bson!(19.25), 1), Bson::Double(19.2));
        assert_eq!(t(bson!(1999), -3), Bson::Int32(1000));
        assert_eq!(ev0(bson!({"$round": [null, 1]})), Bson::Null);
        assert_eq!(ev0(bson!({"$round": [1.5, null]})), Bson::Null);
        assert_eq!(code(bson!({"$round": [1.5, 101]}), &doc! {}), 51083);
        assert_eq!(code(bson!({"$round": [1.5, 1.5]}), &doc! {}), 51082);
        assert_eq!(code(bson!({"$trunc": ["x", 1]}), &doc! {}), 51081);
        assert!(round_f64(f64::NAN, 2, false).is_nan());
    }

    #[test]
    fn powers_roots_and_logs() {
        assert_eq!(ev0(bson!({"$sqrt": 25})), Bson::Double(5.0));
        assert_eq!(code(bson!({"$sqrt": -1}), &doc! {}), 28714);
        assert_eq!(ev0(bson!({"$pow": [5, 0]})), Bson::Int32(1));
        assert_eq!(ev0(bson!({"$pow": [2, 10]})), Bson::Int32(1024));
        assert_eq!(ev0(bson!({"$pow": [2, 40]})), Bson::Int64(1 << 40));
        assert_eq!(ev0(bson!({"$pow": [2i64, 3]})), Bson::Int64(8));
        assert_eq!(ev0(bson!({"$pow": [2, 64]})), Bson::Double(2f64.powi(64)));
        assert_eq!(ev0(bson!({"$pow": [2, -1]})), Bson::Double(0.5));
        assert_eq!(ev0(bson!({"$pow": [-1, -3]})), Bson::Int32(-1));
        assert_eq!(ev0(bson!({"$pow": [4, 0.5]})), Bson::Double(2.0));
        assert_eq!(code(bson!({"$pow": [0, -1]}), &doc! {}), 28764);
        assert_eq!(ev0(bson!({"$exp": 0})), Bson::Double(1.0));
        assert_eq!(ev0(bson!({"$ln": 1})), Bson::Double(0.0));
        assert_eq!(ev0(bson!({"$log10": 100})), Bson::Double(2.0));
        assert_eq!(ev0(bson!({"$log": [8, 2]})), Bson::Double(3.0));
        assert_eq!(code(bson!({"$ln": 0}), &doc! {}), 28766);
        assert_eq!(code(bson!({"$log10": -1}), &doc! {}), 28761);
        assert_eq!(code(bson!({"$log": [8, 1]}), &doc! {}), 28759);
        assert_eq!(ev0(bson!({"$ln": null})), Bson::Null);
    }

    #[test]
    fn string_operators() {
        let d = doc! {"s": "hello", "n": null, "cafe": "cafétéria"};
        assert_eq!(
            ev(bson!({"$concat": ["$s", " ", "world"]}), &d),
            bson!("hello world")
        );
        assert_eq!(ev(bson!({"$concat": ["$s", "$n"]}), &d), Bson::Null);
        assert_eq!(ev(bson!({"$concat": ["$s", "$missing"]}), &d), Bson::Null);
        assert_eq!(code(bson!({"$concat": ["$s", 1]}), &d), 16702);
        assert_eq!(ev(bson!({"$substr": ["$s", 1, 3]}), &d), bson!("ell"));
        assert_eq!(ev(bson!({"$substrBytes": ["$s", 2, -1]}), &d), bson!("llo"));
        assert_eq!(ev(bson!({"$substrBytes": ["$s", 10, 2]}), &d), bson!(""));
        assert_eq!(ev(bson!({"$substrBytes": ["$n", 0, 2]}), &d), bson!(""));
        assert_eq!(ev(bson!({"$substrBytes": [12345, 1, 2]}), &d), bson!("23"));
        assert_eq!(code(bson!({"$substrBytes": ["$cafe", 3, 1]}), &d), 28657);
        assert_eq!(code(bson!({"$substrBytes": ["$cafe", 4, 2]}), &d), 28656);
        assert_eq!(ev(bson!({"$substrBytes": ["$cafe", 3, 2]}), &d), bson!("é"));
        assert_eq!(code(bson!({"$substrBytes": ["$cafe", 4, 3]}), &d), 28656);
        assert_eq!(code(bson!({"$substrBytes": ["$s", -1, 3]}), &d), 50752);
        assert_eq!(
            ev(bson!({"$substrCP": ["$cafe", 0, 5]}), &d),
            bson!("cafét")
        );
        assert_eq!(ev(bson!({"$substrCP": ["$cafe", 7, 5]}), &d), bson!("ia"));
        assert_eq!(code(bson!({"$substrCP": ["$cafe", -1, 5]}), &d), 34455);
        assert_eq!(code(bson!({"$substrCP": ["$cafe", 0, 1.5]}), &d), 34453);
        assert_eq!(ev(bson!({"$toUpper": "$s"}), &d), bson!("HELLO"));
        assert_eq!(ev(bson!({"$toLower": "ABc1"}), &d), bson!("abc1"));
        assert_eq!(ev(bson!({"$toLower": "$n"}), &d), bson!(""));
        assert_eq!(ev(bson!({"$toUpper": 1.5}), &d), bson!("1.5"));
        assert_eq!(ev(bson!({"$strLenBytes": "$cafe"}), &d), bson!(11));
        assert_eq!(ev(bson!({"$strLenCP": "$cafe"}), &d), bson!(9));
        assert_eq!(code(bson!({"$strLenBytes": "$n"}), &d), 34473);
        assert_eq!(code(bson!({"$strLenCP": "$missing"}), &d), 34471);
        assert_eq!(ev(bson!({"$strcasecmp": ["Hello", "$s"]}), &d), bson!(0));
        assert_eq!(ev(bson!({"$strcasecmp": ["a", "B"]}), &d), bson!(-1));
    }

    #[test]
    fn split_trim_index_of() {
        let d = doc! {"cafe": "cafétéria"};
        assert_eq!(
            ev0(bson!({"$split": ["June-15-2013", "-"]})),
            bson!(["June", "15", "2013"])
        );
        assert_eq!(ev0(bson!({"$split": ["abc", "x"]})), bson!(["abc"]));
        assert_eq!(ev0(bson!({"$split": [null, "-"]})), Bson::Null);
        assert_eq!(code(bson!({"$split": ["a", ""]}), &d), 40087);
        assert_eq!(code(bson!({"$split": [1, "-"]}), &d), 40085);
        assert_eq!(code(bson!({"$split": ["a", 1]}), &d), 40086);
        assert_eq!(
            ev0(bson!({"$trim": {"input": "  \n good  bye \t  "}})),
            bson!("good  bye")
        );
        assert_eq!(
            ev0(bson!({"$trim": {"input": "  ggggoodbyeeeee", "chars": "ge "}})),
            bson!("oodby")
        );
        assert_eq!(ev0(bson!({"$ltrim": {"input": "  a  "}})), bson!("a  "));
        assert_eq!(ev0(bson!({"$rtrim": {"input": "  a  "}})), bson!("  a"));
        assert_eq!(ev0(bson!({"$trim": {"input": null}})), Bson::Null);
        assert_eq!(
            ev0(bson!({"$trim": {"input": "x", "chars": null}})),
            Bson::Null
        );
        assert_eq!(code(bson!({"$trim": {"input": 1}}), &d), 50699);
        assert_eq!(code(bson!({"$trim": {"chars": "a"}}), &d), 50695);
        assert_eq!(code(bson!({"$trim": {"input": "a", "x": 1}}), &d), 50694);
        assert_eq!(
            ev(bson!({"$indexOfBytes": ["cafeteria", "e"]}), &d),
            bson!(3)
        );
        assert_eq!(ev(bson!({"$indexOfBytes": ["$cafe", "é"]}), &d), bson!(3));
        assert_eq!(ev(bson!({"$indexOfBytes": ["$cafe", "t"]}), &d), bson!(5));
        assert_eq!(ev(bson!({"$indexOfCP": ["$cafe", "t"]}), &d), bson!(4));
        assert_eq!(
            ev(bson!({"$indexOfBytes": ["foo.bar.fi", ".", 5]}), &d),
            bson!(7)
        );
        assert_eq!(
            ev(bson!({"$indexOfBytes": ["vanilla", "ll", 0, 2]}), &d),
            bson!(-1)
        );
        assert_eq!(
            ev(bson!({"$indexOfBytes": ["vanilla", "ll", 12]}), &d),
            bson!(-1)
        );
        assert_eq!(
            ev(bson!({"$indexOfBytes": ["vanilla", "", 3]}), &d),
            bson!(3)
        );
        assert_eq!(ev(bson!({"$indexOfBytes": [null, "a"]}), &d), Bson::Null);
        assert_eq!(code(bson!({"$indexOfBytes": ["a", null]}), &d), 40092);
        assert_eq!(code(bson!({"$indexOfBytes": ["a", "a", -1]}), &d), 40097);
        assert_eq!(code(bson!({"$indexOfBytes": ["a", "a", 1.5]}), &d), 40096);
    }

    #[test]
    fn array_operators() {
        let d = doc! {"a": [1, 2, 3], "e": [], "n": null, "s": "x"};
        assert_eq!(ev(bson!({"$size": "$a"}), &d), bson!(3));
        assert_eq!(code(bson!({"$size": "$missing"}), &d), 17124);
        assert_eq!(ev(bson!({"$arrayElemAt": ["$a", 0]}), &d), bson!(1));
        assert_eq!(ev(bson!({"$arrayElemAt": ["$a", -1]}), &d), bson!(3));
        assert_eq!(ev_opt(bson!({"$arrayElemAt": ["$a", 15]}), &d), None);
        assert_eq!(ev(bson!({"$arrayElemAt": ["$n", 0]}), &d), Bson::Null);
        assert_eq!(code(bson!({"$arrayElemAt": ["$s", 0]}), &d), 28689);
        assert_eq!(code(bson!({"$arrayElemAt": ["$a", 0.5]}), &d), 28691);
        assert_eq!(ev(bson!({"$first": "$a"}), &d), bson!(1));
        assert_eq!(ev(bson!({"$last": "$a"}), &d), bson!(3));
        assert_eq!(ev_opt(bson!({"$last": "$e"}), &d), None);
        assert_eq!(ev(bson!({"$first": "$missing"}), &d), Bson::Null);
        assert_eq!(ev(bson!({"$slice": ["$a", 1, 1]}), &d), bson!([2]));
        assert_eq!(ev(bson!({"$slice": ["$a", -2]}), &d), bson!([2, 3]));
        assert_eq!(ev(bson!({"$slice": ["$a", 2]}), &d), bson!([1, 2]));
        assert_eq!(ev(bson!({"$slice": ["$a", 15, 2]}), &d), bson!([]));
        assert_eq!(ev(bson!({"$slice": ["$a", -15, 2]}), &d), bson!([1, 2]));
        assert_eq!(ev(bson!({"$slice": ["$n", 1]}), &d), Bson::Null);
        assert_eq!(code(bson!({"$slice": ["$a", 0, 0]}), &d), 28729);
        assert_eq!(code(bson!({"$slice": ["$s", 1]}), &d), 28724);
        assert_eq!(
            ev(bson!({"$concatArrays": ["$a", [4], "$e"]}), &d),
            bson!([1, 2, 3, 4])
        );
        assert_eq!(ev(bson!({"$concatArrays": ["$a", "$n"]}), &d), Bson::Null);
        assert_eq!(code(bson!({"$concatArrays": ["$a", "$s"]}), &d), 28664);
        assert_eq!(ev(bson!({"$in": [2, "$a"]}), &d), bson!(true));
        assert_eq!(ev(bson!({"$in": [2.0, "$a"]}), &d), bson!(true));
        assert_eq!(ev(bson!({"$in": ["2", "$a"]}), &d), bson!(false));
        assert_eq!(code(bson!({"$in": [2, "$s"]}), &d), 40081);
        assert_eq!(ev(bson!({"$isArray": "$a"}), &d), bson!(true));
        assert_eq!(ev(bson!({"$isArray": ["$s"]}), &d), bson!(false));
        assert_eq!(ev(bson!({"$reverseArray": "$a"}), &d), bson!([3, 2, 1]));
        assert_eq!(ev(bson!({"$reverseArray": "$n"}), &d), Bson::Null);
        assert_eq!(code(bson!({"$reverseArray": "$s"}), &d), 34435);
        assert_eq!(
            ev(bson!({"$indexOfArray": [["a", "abc", "a"], "a", 1]}), &d),
            bson!(2)
        );
        assert_eq!(ev(bson!({"$indexOfArray": ["$a", 5]}), &d), bson!(-1));
        assert_eq!(ev(bson!({"$indexOfArray": ["$n", 5]}), &d), Bson::Null);
        assert_eq!(code(bson!({"$indexOfArray": ["$s", 5]}), &d), 40090);
    }

    #[test]
    fn range_is_bounded() {
        assert_eq!(ev0(bson!({"$range": [0, 10, 2]})), bson!([0, 2, 4, 6, 8]));
        assert_eq!(ev0(bson!({"$range": [10, 0, -3]})), bson!([10, 7, 4, 1]));
        assert_eq!(ev0(bson!({"$range": [0, 10, -1]})), bson!([]));
        assert_eq!(ev0(bson!({"$range": [0, 3]})), bson!([0, 1, 2]));
        assert_eq!(code(bson!({"$range": [0, 3, 0]}), &doc! {}), 34449);
        assert_eq!(code(bson!({"$range": [0.5, 3]}), &doc! {}), 34444);
        assert_eq!(code(bson!({"$range": ["a", 3]}), &doc! {}), 34443);
        assert_eq!(
            code(bson!({"$range": [i32::MIN, i32::MAX]}), &doc! {}),
            EXCEEDED_MEMORY_LIMIT
        );
    }

    #[test]
    fn map_filter_reduce() {
        let d = doc! {
            "items": [
                {"item_id": 43, "quantity": 2, "price": 10},
                {"item_id": 2, "quantity": 1, "price": 240},
                {"item_id": 23, "quantity": 3, "price": 110},
            ],
            "nums": [1, 2, 3],
        };
        assert_eq!(
            ev(
                bson!({"$filter": {"input": "$items", "as": "item", "cond": {"$gte": ["$$item.price", 100]}}}),
                &d
            ),
            bson!([
                {"item_id": 2, "quantity": 1, "price": 240},
                {"item_id": 23, "quantity": 3, "price": 110},
            ])
        );
        assert_eq!(
            ev(
                bson!({"$filter": {"input": "$nums", "cond": {"$gte": ["$$this", 2]}, "limit": 1}}),
                &d
            ),
            bson!([2])
        );
        assert_eq!(
            ev(bson!({"$filter": {"input": "$missing", "cond": true}}), &d),
            Bson::Null
        );
        assert_eq!(
            ev(
                bson!({"$map": {"input": "$nums", "as": "x", "in": {"$add": ["$$x", 1]}}}),
                &d
            ),
            bson!([2, 3, 4])
        );
        assert_eq!(
            ev(
                bson!({"$map": {"input": "$items", "in": "$$this.nothing"}}),
                &d
            ),
            bson!([null, null, null])
        );
        assert_eq!(
            ev(
                bson!({"$reduce": {"input": ["a", "b", "c"], "initialValue": "", "in": {"$concat": ["$$value", "$$this"]}}}),
                &d
            ),
            bson!("abc")
        );
        assert_eq!(
            ev(
                bson!({"$reduce": {
                    "input": "$nums",
                    "initialValue": {"sum": 5, "product": 2},
                    "in": {
                        "sum": {"$add": ["$$value.sum", "$$this"]},
                        "product": {"$multiply": ["$$value.product", "$$this"]},
                    }
                }}),
                &d
            ),
            bson!({"sum": 11, "product": 12})
        );
        assert_eq!(code(bson!({"$map": {"input": 1, "in": 1}}), &d), 16883);
        assert_eq!(code(bson!({"$filter": {"input": 1, "cond": 1}}), &d), 28651);
        assert_eq!(
            code(
                bson!({"$reduce": {"input": 1, "initialValue": 0, "in": 1}}),
                &d
            ),
            40080
        );
        // Variables are scoped: $$x is unknown outside its $map.
        assert_eq!(
            code(
                bson!([{"$map": {"input": [], "as": "x", "in": "$$x"}}, "$$x"]),
                &d
            ),
            17276
        );
        // Inner bindings hide outer ones.
        assert_eq!(
            ev(
                bson!({"$map": {"input": [[1, 2], [3]], "in": {"$map": {"input": "$$this", "in": {"$multiply": ["$$this", 10]}}}}}),
                &d
            ),
            bson!([[10, 20], [30]])
        );
    }

    #[test]
    fn sort_array() {
        let team = bson!([
            {"name": "pat", "age": 30, "address": {"street": "12 Baker St", "city": "London"}},
            {"name": "dallas", "age": 36, "address": {"street": "12 Cowper St", "city": "Palo Alto"}},
            {"name": "charlie", "age": 42, "address": {"street": "12 French St", "city": "New Brunswick"}},
        ]);
        let d = doc! {"team": team};
        let names = |by: Bson| {
            ev(
                bson!({"$map": {"input": {"$sortArray": {"input": "$team", "sortBy": by}}, "in": "$$this.name"}}),
                &d,
            )
        };
        assert_eq!(
            names(bson!({"name": 1})),
            bson!(["charlie", "dallas", "pat"])
        );
        assert_eq!(
            names(bson!({"age": -1})),
            bson!(["charlie", "dallas", "pat"])
        );
        assert_eq!(
            names(bson!({"address.city": -1})),
            bson!(["dallas", "charlie", "pat"])
        );
        assert_eq!(
            ev0(
                bson!({"$sortArray": {"input": [20, 4, {"a": "Free"}, 6, 21, 5, "Gratis", {"a": null}, {"a": {"sale": true, "price": 19}}, 10.23, {"a": "On sale"}], "sortBy": 1}})
            ),
            bson!([4, 5, 6, 10.23, 20, 21, "Gratis", {"a": null}, {"a": "Free"}, {"a": "On sale"}, {"a": {"sale": true, "price": 19}}])
        );
        assert_eq!(
            ev0(bson!({"$sortArray": {"input": [3, 1, 2], "sortBy": -1}})),
            bson!([3, 2, 1])
        );
        assert_eq!(
            ev0(bson!({"$sortArray": {"input": null, "sortBy": 1}})),
            Bson::Null
        );
        assert_eq!(
            code(bson!({"$sortArray": {"input": 1, "sortBy": 1}}), &d),
            2942504
        );
        assert_eq!(
            code(bson!({"$sortArray": {"input": [], "sortBy": 2}}), &d),
            2942503
        );
    }

    #[test]
    fn conditionals() {
        let d = doc! {"qty": 250, "n": null, "desc": "x"};
        assert_eq!(
            ev(
                bson!({"$cond": {"if": {"$gte": ["$qty", 250]}, "then": 30, "else": 20}}),
                &d
            ),
            bson!(30)
        );
        assert_eq!(
            ev(bson!({"$cond": [{"$lt": ["$qty", 250]}, 30, 20]}), &d),
            bson!(20)
        );
        assert_eq!(
            ev(bson!({"$ifNull": ["$desc", "Unspecified"]}), &d),
            bson!("x")
        );
        assert_eq!(
            ev(bson!({"$ifNull": ["$n", "Unspecified"]}), &d),
            bson!("Unspecified")
        );
        assert_eq!(ev(bson!({"$ifNull": ["$missing", "$n", 7]}), &d), bson!(7));
        assert_eq!(ev_opt(bson!({"$ifNull": ["$n", "$missing"]}), &d), None);
        assert_eq!(code(bson!({"$ifNull": ["$n"]}), &d), 16020);
        let switch = bson!({"$switch": {
            "branches": [
                {"case": {"$gte": ["$qty", 300]}, "then": "lots"},
                {"case": {"$gte": ["$qty", 200]}, "then": "many"},
            ],
            "default": "few",
        }});
        assert_eq!(ev(switch, &d), bson!("many"));
        assert_eq!(
            code(
                bson!({"$switch": {"branches": [{"case": false, "then": 1}]}}),
                &d
            ),
            40066
        );
        assert_eq!(code(bson!({"$switch": {"branches": []}}), &d), 40068);
        assert_eq!(
            code(bson!({"$switch": {"branches": [{"case": 1}]}}), &d),
            40065
        );
    }

    #[test]
    fn let_binds_and_rebinds_current() {
        let d = doc! {"price": 10, "tax": 0.5, "applyDiscount": true, "sub": {"a": 7}};
        assert_eq!(
            ev(
                bson!({"$let": {
                    "vars": {
                        "total": {"$add": ["$price", "$tax"]},
                        "discounted": {"$cond": {"if": "$applyDiscount", "then": 0.9, "else": 1}},
                    },
                    "in": {"$multiply": ["$$total", "$$discounted"]},
                }}),
                &d
            ),
            Bson::Double(10.5 * 0.9)
        );
        assert_eq!(
            ev(
                bson!({"$let": {"vars": {"CURRENT": "$sub"}, "in": {"$add": ["$a", 1]}}}),
                &d
            ),
            bson!(8)
        );
        assert_eq!(
            ev(
                bson!({"$let": {"vars": {"CURRENT": "$sub"}, "in": "$$ROOT.price"}}),
                &d
            ),
            bson!(10)
        );
        assert_eq!(
            ev_opt(
                bson!({"$let": {"vars": {"x": "$missing"}, "in": "$$x"}}),
                &d
            ),
            None
        );
        assert_eq!(code(bson!({"$let": {"vars": {}, "in": "$$y"}}), &d), 17276);
    }

    #[test]
    fn types_and_conversions() {
        let d = doc! {"i": 1, "l": 1i64, "f": 1.5, "s": "12", "n": null, "a": [], "o": {}};
        let ty = |p: &str| ev(bson!({"$type": p}), &d);
        assert_eq!(ty("$i"), bson!("int"));
        assert_eq!(ty("$l"), bson!("long"));
        assert_eq!(ty("$f"), bson!("double"));
        assert_eq!(ty("$s"), bson!("string"));
        assert_eq!(ty("$n"), bson!("null"));
        assert_eq!(ty("$a"), bson!("array"));
        assert_eq!(ty("$o"), bson!("object"));
        assert_eq!(ty("$missing"), bson!("missing"));
        assert_eq!(ev(bson!({"$isNumber": "$f"}), &d), bson!(true));
        assert_eq!(ev(bson!({"$isNumber": "$s"}), &d), bson!(false));
        assert_eq!(ev(bson!({"$toInt": "$s"}), &d), bson!(12));
        assert_eq!(ev(bson!({"$toInt": 12.9}), &d), bson!(12));
        assert_eq!(ev(bson!({"$toInt": -12.9}), &d), bson!(-12));
        assert_eq!(ev(bson!({"$toInt": true}), &d), bson!(1));
        assert_eq!(ev(bson!({"$toInt": "$n"}), &d), Bson::Null);
        assert_eq!(code(bson!({"$toInt": "1.5"}), &d), CONVERSION_FAILURE);
        assert_eq!(code(bson!({"$toInt": 1e10}), &d), CONVERSION_FAILURE);
        assert_eq!(code(bson!({"$toInt": "$a"}), &d), CONVERSION_FAILURE);
        assert_eq!(ev(bson!({"$toLong": "$s"}), &d), Bson::Int64(12));
        assert_eq!(
            ev(bson!({"$toLong": 1e10}), &d),
            Bson::Int64(10_000_000_000)
        );
        assert_eq!(ev(bson!({"$toDouble": "1.5e3"}), &d), Bson::Double(1500.0));
        assert_eq!(ev(bson!({"$toDouble": "$i"}), &d), Bson::Double(1.0));
        assert_eq!(
            ev(bson!({"$toDecimal": "$f"}), &d),
            Bson::Decimal128("1.5".parse().unwrap())
        );
        assert_eq!(ev(bson!({"$toBool": 0}), &d), bson!(false));
        assert_eq!(ev(bson!({"$toBool": ""}), &d), bson!(true));
        assert_eq!(ev(bson!({"$toBool": "$a"}), &d), bson!(true));
        assert_eq!(ev(bson!({"$toString": "$f"}), &d), bson!("1.5"));
        assert_eq!(ev(bson!({"$toString": 5.0}), &d), bson!("5"));
        assert_eq!(ev(bson!({"$toString": 1e20}), &d), bson!("1e+20"));
        assert_eq!(ev(bson!({"$toString": true}), &d), bson!("true"));
        let oid = ObjectId::parse_str("5ab9cbfa31c2ab715d42129e").unwrap();
        assert_eq!(
            ev(bson!({"$toString": oid}), &d),
            bson!("5ab9cbfa31c2ab715d42129e")
        );
        assert_eq!(
            ev(bson!({"$toObjectId": "5ab9cbfa31c2ab715d42129e"}), &d),
            Bson::ObjectId(oid)
        );
        assert_eq!(code(bson!({"$toObjectId": "5ab9"}), &d), CONVERSION_FAILURE);
        assert_eq!(
            ev(bson!({"$toString": date("2018-03-27T16:58:51.538Z")}), &d),
            bson!("2018-03-27T16:58:51.538Z")
        );
        assert_eq!(
            ev(bson!({"$toDate": "2018-03-03T12:00:00+01:00"}), &d),
            date("2018-03-03T11:00:00Z")
        );
        assert_eq!(
            ev(bson!({"$toDate": "2018-03-03"}), &d),
            date("2018-03-03T00:00:00Z")
        );
        assert_eq!(
            ev(bson!({"$toDate": 120_000_000_000.5}), &d),
            Bson::DateTime(DateTime::from_millis(120_000_000_000))
        );
        assert_eq!(
            code(bson!({"$toDate": "2018-02-30"}), &d),
            CONVERSION_FAILURE
        );
        assert_eq!(
            ev(bson!({"$toLong": date("1970-01-01T00:00:01Z")}), &d),
            Bson::Int64(1000)
        );
        // $convert: onError and onNull.
        assert_eq!(
            ev(
                bson!({"$convert": {"input": "abc", "to": "int", "onError": "bad"}}),
                &d
            ),
            bson!("bad")
        );
        assert_eq!(
            ev(
                bson!({"$convert": {"input": "$missing", "to": "int", "onNull": 0}}),
                &d
            ),
            bson!(0)
        );
        assert_eq!(
            ev(bson!({"$convert": {"input": "5", "to": 16}}), &d),
            bson!(5)
        );
        assert_eq!(
            ev(bson!({"$convert": {"input": "5", "to": "$n"}}), &d),
            Bson::Null
        );
        assert_eq!(
            code(bson!({"$convert": {"input": "5", "to": "$s"}}), &d),
            2,
            "12 is no type code"
        );
    }

    #[test]
    fn date_parts_in_utc_and_fixed_offsets() {
        let d = doc! {"date": date("2014-01-01T08:15:39.736Z")};
        let part = |op: &str| ev(bson!({ op: "$date" }), &d);
        assert_eq!(part("$year"), bson!(2014));
        assert_eq!(part("$month"), bson!(1));
        assert_eq!(part("$dayOfMonth"), bson!(1));
        assert_eq!(part("$hour"), bson!(8));
        assert_eq!(part("$minute"), bson!(15));
        assert_eq!(part("$second"), bson!(39));
        assert_eq!(part("$millisecond"), bson!(736));
        assert_eq!(part("$dayOfYear"), bson!(1));
        assert_eq!(part("$dayOfWeek"), bson!(4), "a Wednesday");
        assert_eq!(ev(bson!({"$year": ["$date"]}), &d), bson!(2014));
        assert_eq!(
            ev(
                bson!({"$hour": {"date": "$date", "timezone": "-09:00"}}),
                &d
            ),
            bson!(23)
        );
        assert_eq!(
            ev(
                bson!({"$dayOfYear": {"date": "$date", "timezone": "-0900"}}),
                &d
            ),
            bson!(365)
        );
        assert_eq!(
            ev(
                bson!({"$minute": {"date": "$date", "timezone": "+05:30"}}),
                &d
            ),
            bson!(45)
        );
        assert_eq!(
            ev(bson!({"$year": {"date": "$date", "timezone": "UTC"}}), &d),
            bson!(2014)
        );
        assert_eq!(
            code(
                bson!({"$hour": {"date": "$date", "timezone": "America/New_York"}}),
                &d
            ),
            40485
        );
        assert_eq!(code(bson!({"$hour": {"timezone": "UTC"}}), &d), 40539);
        assert_eq!(code(bson!({"$hour": {"date": "$date", "x": 1}}), &d), 40535);
        assert_eq!(ev(bson!({"$year": "$missing"}), &d), Bson::Null);
        assert_eq!(code(bson!({"$year": "2014"}), &d), 16006);
        let oid = ObjectId::parse_str("5ab9cbfa31c2ab715d42129e").unwrap();
        assert_eq!(ev(bson!({"$year": oid}), &d), bson!(2018));
        // Leap years and dates before 1970.
        assert_eq!(
            ev(bson!({"$dayOfYear": date("2016-12-31T00:00:00Z")}), &d),
            bson!(366)
        );
        assert_eq!(
            ev(bson!({"$dayOfMonth": date("2000-02-29T00:00:00Z")}), &d),
            bson!(29)
        );
        assert_eq!(
            ev(bson!({"$year": date("1969-12-31T23:59:59.999Z")}), &d),
            bson!(1969)
        );
        assert_eq!(
            ev(
                bson!({"$millisecond": date("1969-12-31T23:59:59.999Z")}),
                &d
            ),
            bson!(999)
        );
        assert_eq!(
            ev(bson!({"$dayOfWeek": date("1969-12-28T00:00:00Z")}), &d),
            bson!(1)
        );
        assert_eq!(
            ev(
                bson!({"$dateToString": {"format": "%Y-%m-%d %H:%M:%S.%L %j %w %u", "date": "$date"}}),
                &d
            ),
            bson!("2014-01-01 08:15:39.736 001 4 3")
        );
        assert_eq!(
            ev(
                bson!({"$dateToString": {"date": "$date", "timezone": "+01:00", "format": "%H:%M %z %Z"}}),
                &d
            ),
            bson!("09:15 +0100 60")
        );
        assert_eq!(
            ev(bson!({"$dateToString": {"date": "$date"}}), &d),
            bson!("2014-01-01T08:15:39.736Z")
        );
        assert_eq!(
            ev(
                bson!({"$dateToString": {"date": "$missing", "onNull": "none"}}),
                &d
            ),
            bson!("none")
        );
        assert_eq!(
            code(
                bson!({"$dateToString": {"date": "$date", "format": "%Q"}}),
                &d
            ),
            18536
        );
    }

    #[test]
    fn calendar_round_trips() {
        for day in (-800_000i64..800_000).step_by(97) {
            let (y, m, dd) = date_of_day(day);
            assert_eq!(day_of_date(y, m, dd), day);
            assert!((1..=12).contains(&m) && dd >= 1 && dd <= days_in_month(y, m));
        }
        assert_eq!(date_of_day(0), (1970, 1, 1));
        assert_eq!(date_of_day(-1), (1969, 12, 31));
        assert_eq!(date_of_day(11_016), (2000, 2, 29));
    }

    #[test]
    fn object_operators() {
        let d = doc! {"a": {"x": 1, "y": 2}, "b": {"y": 3, "z": 4}, "n": null, "dotted": {"price.usd": 45}};
        assert_eq!(
            ev(bson!({"$mergeObjects": ["$a", "$n", "$missing", "$b"]}), &d),
            bson!({"x": 1, "y": 3, "z": 4})
        );
        assert_eq!(
            ev(bson!({"$mergeObjects": "$a"}), &d),
            bson!({"x": 1, "y": 2})
        );
        assert_eq!(code(bson!({"$mergeObjects": ["$a", 1]}), &d), 40400);
        assert_eq!(
            ev(bson!({"$objectToArray": "$a"}), &d),
            bson!([{"k": "x", "v": 1}, {"k": "y", "v": 2}])
        );
        assert_eq!(ev(bson!({"$objectToArray": "$n"}), &d), Bson::Null);
        assert_eq!(code(bson!({"$objectToArray": 1}), &d), 40390);
        assert_eq!(
            ev(
                bson!({"$arrayToObject": [[["item", "abc123"], ["qty", 25], ["qty", 30]]]}),
                &d
            ),
            bson!({"item": "abc123", "qty": 30})
        );
        assert_eq!(
            ev(
                bson!({"$arrayToObject": {"$literal": [{"k": "item", "v": "abc"}]}}),
                &d
            ),
            bson!({"item": "abc"})
        );
        assert_eq!(
            ev(bson!({"$arrayToObject": {"$objectToArray": "$b"}}), &d),
            bson!({"y": 3, "z": 4})
        );
        assert_eq!(
            code(
                bson!({"$arrayToObject": [[["a", 1], {"k": "b", "v": 2}]]}),
                &d
            ),
            40391
        );
        assert_eq!(code(bson!({"$arrayToObject": [[["a"]]]}), &d), 40397);
        assert_eq!(code(bson!({"$arrayToObject": [[[1, 2]]]}), &d), 40395);
        assert_eq!(code(bson!({"$arrayToObject": [[{"k": "a"}]]}), &d), 40392);
        assert_eq!(code(bson!({"$arrayToObject": "x"}), &d), 40386);
        assert_eq!(
            ev(
                bson!({"$getField": {"field": "price.usd", "input": "$dotted"}}),
                &d
            ),
            bson!(45)
        );
        assert_eq!(ev(bson!({"$getField": "a"}), &d), bson!({"x": 1, "y": 2}));
        assert_eq!(
            ev(
                bson!({"$getField": {"field": {"$literal": "$x"}, "input": {"$literal": {"$x": 1}}}}),
                &d
            ),
            bson!(1)
        );
    }

    #[test]
    fn get_and_set_field() {
        let d = doc! {"a": {"x": 1}, "n": null};
        assert_eq!(
            ev_opt(bson!({"$getField": {"field": "q", "input": "$a"}}), &d),
            None
        );
        assert_eq!(
            ev(bson!({"$getField": {"field": "x", "input": "$n"}}), &d),
            Bson::Null
        );
        assert_eq!(
            code(bson!({"$getField": {"field": "x", "input": 5}}), &d),
            3041705
        );
        assert_eq!(code(bson!({"$getField": {"field": "$x"}}), &d), 5654601);
        assert_eq!(
            ev(
                bson!({"$setField": {"field": "a.b", "input": "$a", "value": 2}}),
                &d
            ),
            bson!({"x": 1, "a.b": 2})
        );
        assert_eq!(
            ev(
                bson!({"$setField": {"field": "x", "input": "$a", "value": "$$REMOVE"}}),
                &d
            ),
            bson!({})
        );
        assert_eq!(
            ev(bson!({"$unsetField": {"field": "x", "input": "$a"}}), &d),
            bson!({})
        );
    }

    #[test]
    fn accumulator_expressions() {
        let d = doc! {"quizzes": [10, 6, 7], "mixed": [1, "a", null, 2.5], "e": []};
        assert_eq!(ev(bson!({"$sum": "$quizzes"}), &d), bson!(23));
        assert_eq!(ev(bson!({"$sum": "$mixed"}), &d), bson!(3.5));
        assert_eq!(ev(bson!({"$sum": [1, 2, "x"]}), &d), bson!(3));
        assert_eq!(ev(bson!({"$sum": "$missing"}), &d), bson!(0));
        assert_eq!(ev(bson!({"$avg": "$quizzes"}), &d), bson!(23.0 / 3.0));
        assert_eq!(ev(bson!({"$avg": "$e"}), &d), Bson::Null);
        assert_eq!(ev(bson!({"$max": "$quizzes"}), &d), bson!(10));
        assert_eq!(ev(bson!({"$min": "$mixed"}), &d), bson!(1));
        assert_eq!(ev(bson!({"$max": "$mixed"}), &d), bson!("a"));
        assert_eq!(ev(bson!({"$min": [null, "$missing"]}), &d), Bson::Null);
        assert_eq!(
            ev(bson!({"$stdDevPop": [1, 2, 3, 4]}), &d),
            bson!(1.25f64.sqrt())
        );
        assert_eq!(ev(bson!({"$stdDevSamp": [1]}), &d), Bson::Null);
    }

    #[test]
    fn variables_from_outside() {
        let mut vars = Variables::new().with_now(DateTime::from_millis(86_400_000));
        vars.bind("order_qty", Bson::Int32(5));
        let e = Expr::parse_with_vars(&bson!({"$gte": ["$qty", "$$order_qty"]}), &["order_qty"])
            .unwrap();
        assert_eq!(e.eval_with(&doc! {"qty": 7}, &vars).unwrap(), bson!(true));
        let now = Expr::parse(&bson!({"$dayOfMonth": "$$NOW"})).unwrap();
        assert_eq!(now.eval_with(&doc! {}, &vars).unwrap(), bson!(2));
        assert_eq!(
            now.eval(&doc! {}).unwrap_err().code,
            2,
            "no clock without a time"
        );
        assert_eq!(
            Expr::parse(&bson!("$$order_qty")).unwrap_err().code,
            17276,
            "not in scope unless declared"
        );
    }

    #[test]
    fn probe_depth() {
        let mut e = bson!("$a");
        for _ in 0..225 {
            e = bson!({"$not": [e]});
        }
        eprintln!(
            "built node={} bson={} val={} res={}",
            std::mem::size_of::<Node>(),
            std::mem::size_of::<Bson>(),
            std::mem::size_of::<Val>(),
            std::mem::size_of::<Result<Node>>()
        );
        let r = Expr::parse(&e);
        eprintln!("parsed {:?}", r.as_ref().err());
        drop(r);
        eprintln!("dropped result");
        drop(e);
        eprintln!("dropped bson");
    }

    #[test]
    fn nesting_is_bounded() {
        let mut e = bson!("$a");
        for _ in 0..EXPRESSION_DEPTH_MAX / 2 {
            e = bson!({"$not": [e]});
        }
        assert!(Expr::parse(&e).is_ok());
        for _ in 0..EXPRESSION_DEPTH_MAX {
            e = bson!({"$not": [e]});
        }
        assert_eq!(Expr::parse(&e).unwrap_err().code, codes::FAILED_TO_PARSE);
    }

    /// The deepest expression allowed parses and evaluates within a test
    /// thread's stack (2 MiB) even unoptimized: recursion is bounded.
    #[test]
    fn the_deepest_expression_evaluates() {
        let mut e = bson!("$a");
        for i in 0..EXPRESSION_DEPTH_MAX - 1 {
            e = match i % 5 {
                0 => bson!({"$add": [1, e]}),
                1 => bson!({"$cond": [true, e, 0]}),
                2 => bson!({"$let": {"vars": {"x": 1}, "in": e}}),
                3 => bson!({"$ifNull": [e, 0]}),
                _ => bson!({"$reduce": {"input": [1], "initialValue": 0, "in": e}}),
            };
        }
        let x = Expr::parse(&e).expect("parses at the limit");
        let adds = (EXPRESSION_DEPTH_MAX - 1).div_ceil(5) as i32;
        assert_eq!(x.eval(&doc! {"a": 1}).unwrap(), Bson::Int32(1 + adds));
    }

    #[test]
    fn decimal_helpers() {
        assert_eq!(decimal_from_f64(0.1).to_string(), "0.1");
        assert_eq!(decimal_from_f64(f64::NAN).to_string(), "NaN");
        assert_eq!(decimal_from_f64(-1e300).to_string(), "-1E+300");
        assert_eq!(format_double(0.1), "0.1");
        assert_eq!(format_double(-2.5e-7), "-2.5e-7");
        assert_eq!(format_double(123456789.0), "123456789");
    }

    #[test]
    fn let_variables_are_evaluated_once_against_no_document() {
        let spec = doc! {"id": 1, "y": {"$literal": "$bar"}, "sum": {"$add": [1, 2]}, "t": "$$NOW"};
        let now = DateTime::from_millis(5);
        let vars = let_variables(&spec, Variables::new().with_now(now)).unwrap();
        assert_eq!(vars.get("id"), Some(&bson!(1)));
        assert_eq!(vars.get("y"), Some(&bson!("$bar")));
        assert_eq!(vars.get("sum"), Some(&bson!(3)));
        assert_eq!(vars.get("t"), Some(&Bson::DateTime(now)));
        // Field paths have no document: missing, so null.
        let vars = let_variables(&doc! {"f": "$a"}, Variables::new()).unwrap();
        assert_eq!(vars.get("f"), Some(&Bson::Null));
        for (bad, code) in [(doc! {"Upper": 1}, 16867), (doc! {"a-b": 1}, 16868)] {
            assert_eq!(
                let_variables(&bad, Variables::new()).unwrap_err().code,
                code
            );
        }
        let e = Expr::parse_with_vars(&bson!({"$add": ["$$id", "$$sum"]}), &["id", "sum"]).unwrap();
        let vars = let_variables(&doc! {"id": 1, "sum": 2}, Variables::new()).unwrap();
        assert_eq!(e.eval_with(&doc! {}, &vars).unwrap(), bson!(3));
    }

    #[test]
    fn rand_draws_from_the_given_generator() {
        let e = parse(bson!({"$rand": {}}));
        // No generator given: an error, never a hidden source.
        assert_eq!(e.eval(&doc! {}).unwrap_err().code, codes::BAD_VALUE);
        let vars = Variables::new().with_rand(42);
        let draws: Vec<f64> = (0..100)
            .map(|_| match e.eval_with(&doc! {}, &vars).unwrap() {
                Bson::Double(r) => r,
                other => panic!("{other}"),
            })
            .collect();
        assert!(draws.iter().all(|r| (0.0..1.0).contains(r)));
        // Each draw is new; the same seed gives the same numbers.
        assert!(draws.windows(2).all(|w| w[0] != w[1]));
        let again = Variables::new().with_rand(42);
        assert_eq!(
            e.eval_with(&doc! {}, &again).unwrap(),
            Bson::Double(draws[0])
        );
        assert_eq!(code(bson!({"$rand": 1}), &doc! {}), 10065);
    }
}
