//! What the fuzz targets share: a generator of BSON values, documents,
//! query filters, aggregation expressions and update specifications from
//! the fuzzer's bytes (`matcher` and `update` drive berth-docs with them).
//!
//! The generator draws from small vocabularies (a handful of field names,
//! every operator the engine knows and a few it does not, the edge values
//! of each number type) so that filters and updates name the fields the
//! documents have and most inputs get past parsing. Every choice reads the
//! input; an exhausted input reads as zeros, which picks the first,
//! simplest choice, so every input makes a finite, small value. Nodes are
//! bounded by a budget and nesting by a depth.

use arbitrary::Unstructured;
use bson::oid::ObjectId;
use bson::spec::BinarySubtype;
use bson::{Binary, Bson, DateTime, Decimal128, Document, Regex, Timestamp};

/// Values generated from one input, at most (every call to `value`
/// spends one).
const NODES_MAX: usize = 400;
/// Nesting of generated documents, arrays, filters and expressions.
pub const DEPTH_MAX: usize = 5;

/// Field names of generated documents: few, so that filters, updates and
/// documents meet; numeric ones so that paths index arrays.
const NAMES: &[&str] = &["a", "b", "c", "_id", "0", "1", "x", "2"];
/// Path components: the names, positional and array-filter forms, indexes
/// past an array's end (padding) and past the padding limit, and odd ones
/// that must be refused. (Padding near the limit, 1.5 million nulls, took
/// a tenth of a second per input and most of the run: it is a unit test of
/// berth-docs instead.)
const PARTS: &[&str] = &[
    "a", "b", "c", "_id", "0", "1", "x", "2", "$", "$[]", "$[i]", "$[j]", "10", "01", "", "$x",
    "-1", "1500", "1500001", "$[k]", "a b",
];
const STRINGS: &[&str] = &[
    "",
    "a",
    "b",
    "ab",
    "abc",
    "A",
    "B",
    "é",
    "\u{0}",
    "a\u{0}",
    "x.y",
    "$a",
    "$$ROOT",
    "10",
    "1.5",
    "true",
    "null",
    "\n",
    "ß",
    "İ",
    "2024-01-02T03:04:05Z",
    "a.b",
    "$$CURRENT",
];
const REGEX_PIECES: &[&str] = &[
    "a",
    "b",
    ".",
    "*",
    "+",
    "?",
    "^",
    "$",
    "(",
    ")",
    "[",
    "]",
    "|",
    "\\d",
    "\\w",
    "\\s",
    "\\b",
    "{2}",
    "{2,3}",
    "{1000}",
    "(?i)",
    "(?=",
    "\\1",
    "\\Q",
    "\\E",
    "[^a]",
    "[[:alpha:]]",
    "\\p{L}",
    "é",
    "\\x41",
    "\\",
    "(?#c)",
    "\\h",
    "\\R",
    "\\cA",
    "\\0",
    "{",
    "}",
    "(?<n>",
    "(?:",
    "\\z",
];
const REGEX_OPTIONS: &[&str] = &["", "i", "m", "s", "x", "u", "ims", "q", "ix"];

/// Query operators on a field, those the engine serves and some it refuses.
const FIELD_OPS: &[&str] = &[
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
    "$mod",
    "$regex",
    "$options",
    "$all",
    "$elemMatch",
    "$not",
    "$bitsAllSet",
    "$bitsAnySet",
    "$bitsAllClear",
    "$bitsAnyClear",
    "$near",
    "$foo",
];
const TYPE_NAMES: &[&str] = &[
    "double",
    "string",
    "object",
    "array",
    "binData",
    "objectId",
    "bool",
    "date",
    "null",
    "regex",
    "int",
    "long",
    "decimal",
    "number",
    "minKey",
    "maxKey",
    "timestamp",
    "nope",
];

/// Expression operators: arithmetic, strings, arrays, comparisons,
/// conditionals, conversions and dates.
const EXPR_OPS: &[&str] = &[
    "$add",
    "$subtract",
    "$multiply",
    "$divide",
    "$mod",
    "$abs",
    "$pow",
    "$sqrt",
    "$exp",
    "$ln",
    "$log",
    "$round",
    "$trunc",
    "$ceil",
    "$floor",
    "$eq",
    "$ne",
    "$gt",
    "$gte",
    "$lt",
    "$lte",
    "$cmp",
    "$and",
    "$or",
    "$not",
    "$cond",
    "$ifNull",
    "$switch",
    "$concat",
    "$substr",
    "$substrCP",
    "$substrBytes",
    "$strLenCP",
    "$strLenBytes",
    "$toLower",
    "$toUpper",
    "$split",
    "$trim",
    "$indexOfBytes",
    "$indexOfCP",
    "$strcasecmp",
    "$size",
    "$arrayElemAt",
    "$concatArrays",
    "$filter",
    "$map",
    "$reduce",
    "$range",
    "$reverseArray",
    "$slice",
    "$in",
    "$indexOfArray",
    "$isArray",
    "$sortArray",
    "$first",
    "$last",
    "$max",
    "$min",
    "$sum",
    "$avg",
    "$stdDevPop",
    "$type",
    "$toString",
    "$toInt",
    "$toLong",
    "$toDouble",
    "$toDecimal",
    "$toBool",
    "$toDate",
    "$toObjectId",
    "$convert",
    "$isNumber",
    "$literal",
    "$let",
    "$getField",
    "$setField",
    "$mergeObjects",
    "$objectToArray",
    "$arrayToObject",
    "$year",
    "$dateToString",
    "$rand",
    "$bogus",
];

/// Update operators, served and not.
const UPDATE_OPS: &[&str] = &[
    "$set",
    "$unset",
    "$inc",
    "$mul",
    "$min",
    "$max",
    "$rename",
    "$push",
    "$addToSet",
    "$pop",
    "$pull",
    "$pullAll",
    "$setOnInsert",
    "$currentDate",
    "$bit",
    "$foo",
];

/// Reads choices from the fuzzer's bytes.
pub struct Gen<'a> {
    u: Unstructured<'a>,
    nodes: usize,
}

impl<'a> Gen<'a> {
    pub fn new(data: &'a [u8]) -> Gen<'a> {
        Gen {
            u: Unstructured::new(data),
            nodes: 0,
        }
    }

    pub fn byte(&mut self) -> u8 {
        self.u.arbitrary().unwrap_or(0)
    }

    pub fn bool(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    /// A number in `0..n` (`n` at most 256).
    pub fn below(&mut self, n: usize) -> usize {
        debug_assert!(n > 0 && n <= 256);
        self.byte() as usize % n
    }

    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }

    fn u64(&mut self) -> u64 {
        self.u.arbitrary().unwrap_or(0)
    }

    /// Whether the node budget still allows a nested value.
    fn room(&self) -> bool {
        self.nodes < NODES_MAX
    }

    pub fn int(&mut self) -> i64 {
        match self.below(8) {
            0..=3 => i64::from(self.byte() % 7) - 3,
            4 => self.pick(&[
                i64::from(i32::MAX),
                i64::from(i32::MIN),
                i64::MAX,
                i64::MIN,
                1 << 53,
                (1 << 53) + 1,
                i64::MIN + 1,
                1 << 31,
            ]),
            5 => i64::from(self.byte()),
            _ => self.u64() as i64,
        }
    }

    pub fn double(&mut self) -> f64 {
        match self.below(6) {
            0..=2 => f64::from(i8::try_from(self.byte() % 7).unwrap_or(0) - 3) / 2.0,
            3 => self.pick(&[
                f64::NAN,
                f64::INFINITY,
                f64::NEG_INFINITY,
                -0.0,
                f64::MAX,
                f64::MIN_POSITIVE,
                5e-324,
                9_223_372_036_854_775_808.0,
                -9_223_372_036_854_775_808.0,
                9_007_199_254_740_993.0,
                0.1,
                1e300,
            ]),
            _ => f64::from_bits(self.u64()),
        }
    }

    pub fn decimal(&mut self) -> Decimal128 {
        if self.bool() {
            let s = self.pick(&[
                "0",
                "-0",
                "1",
                "1.0",
                "-1.5",
                "NaN",
                "Infinity",
                "-Infinity",
                "1E+6144",
                "1E-6176",
                "9999999999999999999999999999999999",
                "0.1",
                "3",
            ]);
            s.parse()
                .unwrap_or_else(|_| Decimal128::from_bytes([0; 16]))
        } else {
            let mut b = [0u8; 16];
            for x in &mut b {
                *x = self.byte();
            }
            Decimal128::from_bytes(b)
        }
    }

    pub fn string(&mut self) -> String {
        let n = self.below(3);
        let mut s = String::new();
        for _ in 0..=n {
            s.push_str(self.pick(STRINGS));
            if self.byte() < 200 {
                break;
            }
        }
        s
    }

    pub fn name(&mut self) -> String {
        self.pick(NAMES).to_string()
    }

    /// A dotted path of 1 to 3 components; `special` admits positional
    /// forms, padding indexes and malformed components.
    pub fn path(&mut self, special: bool) -> String {
        let n = 1 + self.below(3);
        let mut parts = Vec::with_capacity(n);
        for _ in 0..n {
            parts.push(if special {
                self.pick(PARTS)
            } else {
                self.pick(NAMES)
            });
        }
        parts.join(".")
    }

    pub fn regex(&mut self) -> Regex {
        let n = self.below(6);
        let mut p = String::new();
        for _ in 0..=n {
            p.push_str(self.pick(REGEX_PIECES));
        }
        Regex {
            pattern: p
                .try_into()
                .unwrap_or_else(|_| "a".to_string().try_into().unwrap()),
            options: self
                .pick(REGEX_OPTIONS)
                .to_string()
                .try_into()
                .unwrap_or_else(|_| String::new().try_into().unwrap()),
        }
    }

    /// Any BSON value, documents and arrays at most `DEPTH_MAX - depth`
    /// deeper.
    pub fn value(&mut self, depth: usize) -> Bson {
        self.nodes += 1;
        let nested = depth < DEPTH_MAX && self.room();
        match self.below(24) {
            0..=2 => Bson::Int32(self.int() as i32),
            3 | 4 => Bson::Int64(self.int()),
            5 | 6 => Bson::Double(self.double()),
            7..=9 => Bson::String(self.string()),
            10 if nested => Bson::Document(self.document(depth + 1)),
            11 if nested => Bson::Array(self.array(depth + 1)),
            12 => Bson::Null,
            13 => Bson::Boolean(self.bool()),
            14 => Bson::Decimal128(self.decimal()),
            15 => Bson::RegularExpression(self.regex()),
            16 => Bson::DateTime(DateTime::from_millis(self.int())),
            17 => Bson::Timestamp(Timestamp {
                time: self.u64() as u32,
                increment: self.byte().into(),
            }),
            18 => {
                let mut b = [0u8; 12];
                b[11] = self.byte();
                Bson::ObjectId(ObjectId::from_bytes(b))
            }
            19 => {
                let subtype = self.pick(&[
                    BinarySubtype::Generic,
                    BinarySubtype::Uuid,
                    BinarySubtype::UserDefined(0x80),
                ]);
                let n = self.below(4);
                let bytes = (0..n).map(|_| self.byte()).collect();
                Bson::Binary(Binary { subtype, bytes })
            }
            20 => [Bson::MinKey, Bson::MaxKey, Bson::Undefined][self.below(3)].clone(),
            21 if nested => Bson::Array(self.array(depth + 1)),
            22 if nested => Bson::Document(self.document(depth + 1)),
            _ => Bson::Int32(i32::from(self.byte() % 4)),
        }
    }

    pub fn array(&mut self, depth: usize) -> Vec<Bson> {
        let n = self.below(5);
        (0..n).map(|_| self.value(depth)).collect()
    }

    /// A document of up to four fields (a later equal name replaces the
    /// value, as a decoded document keeps one).
    pub fn document(&mut self, depth: usize) -> Document {
        let n = self.below(5);
        let mut d = Document::new();
        for _ in 0..n {
            let name = self.name();
            let v = self.value(depth);
            d.insert(name, v);
        }
        d
    }

    /// A stored document: usually with an `_id` first, as the table keeps
    /// them.
    pub fn stored_document(&mut self) -> Document {
        let mut d = Document::new();
        if self.byte() < 230 {
            let id = match self.below(4) {
                0 => Bson::Int32(self.byte().into()),
                1 => Bson::String(self.string()),
                2 => Bson::Document(self.document(DEPTH_MAX - 1)),
                _ => self.value(DEPTH_MAX - 1),
            };
            d.insert("_id", id);
        }
        let rest = self.document(1);
        for (k, v) in rest {
            if k != "_id" {
                d.insert(k, v);
            }
        }
        d
    }

    /// A query filter: conditions on paths, logical operators, `$expr`.
    pub fn filter(&mut self, depth: usize) -> Document {
        self.nodes += 1;
        let n = self.below(4);
        let mut d = Document::new();
        for _ in 0..n {
            let nested = depth < DEPTH_MAX && self.room();
            match self.below(12) {
                0..=5 => {
                    let path = self.path(false);
                    let cond = self.condition(depth);
                    d.insert(path, cond);
                }
                6 | 7 if nested => {
                    let op = self.pick(&["$and", "$or", "$nor"]);
                    let n = self.below(4);
                    let list: Vec<Bson> = (0..n)
                        .map(|_| Bson::Document(self.filter(depth + 1)))
                        .collect();
                    d.insert(op, list);
                }
                8 if nested => {
                    let e = self.expr(depth + 1);
                    d.insert("$expr", e);
                }
                9 => {
                    let op = self.pick(&["$comment", "$alwaysTrue", "$alwaysFalse", "$where"]);
                    let v = if op == "$comment" {
                        Bson::String(self.string())
                    } else {
                        Bson::Int32(1)
                    };
                    d.insert(op, v);
                }
                _ => {
                    let path = self.path(true);
                    let v = self.value(depth);
                    d.insert(path, v);
                }
            }
        }
        d
    }

    /// What a filter says of one path: a value (equality, or a regex
    /// match) or a document of field operators.
    pub fn condition(&mut self, depth: usize) -> Bson {
        if self.below(3) == 0 || depth >= DEPTH_MAX || !self.room() {
            return self.value(depth);
        }
        self.nodes += 1;
        let n = 1 + self.below(3);
        let mut d = Document::new();
        for _ in 0..n {
            let op = self.pick(FIELD_OPS);
            let arg = self.operand(op, depth + 1);
            d.insert(op, arg);
        }
        Bson::Document(d)
    }

    /// The argument of a field operator, mostly of the kind it takes.
    fn operand(&mut self, op: &str, depth: usize) -> Bson {
        if self.byte() >= 240 {
            return self.value(depth);
        }
        match op {
            "$in" | "$nin" | "$all" => {
                let n = self.below(4);
                Bson::Array((0..n).map(|_| self.value(depth)).collect())
            }
            "$exists" => Bson::Boolean(self.bool()),
            "$type" => match self.below(3) {
                0 => Bson::String(self.pick(TYPE_NAMES).into()),
                1 => Bson::Int32(i32::from(self.byte() % 20) - 1),
                _ => Bson::Array(vec![
                    Bson::String(self.pick(TYPE_NAMES).into()),
                    Bson::Int32(i32::from(self.byte() % 20)),
                ]),
            },
            "$size" => match self.below(3) {
                0 => Bson::Int32(i32::from(self.byte() % 4)),
                1 => Bson::Double(self.double()),
                _ => Bson::Int64(self.int()),
            },
            "$mod" => {
                let n = self.below(4);
                Bson::Array(
                    (0..n)
                        .map(|_| match self.below(3) {
                            0 => Bson::Int64(self.int()),
                            1 => Bson::Double(self.double()),
                            _ => Bson::Decimal128(self.decimal()),
                        })
                        .collect(),
                )
            }
            "$regex" | "$not" if self.bool() => Bson::RegularExpression(self.regex()),
            "$regex" => Bson::String(self.regex().pattern.into_string()),
            "$options" => Bson::String(self.pick(REGEX_OPTIONS).into()),
            "$elemMatch" => {
                if self.bool() {
                    Bson::Document(self.filter(depth))
                } else {
                    self.condition(depth)
                }
            }
            "$not" => self.condition(depth),
            "$bitsAllSet" | "$bitsAnySet" | "$bitsAllClear" | "$bitsAnyClear" => {
                match self.below(3) {
                    0 => Bson::Int64(self.int()),
                    1 => Bson::Array(vec![
                        Bson::Int32(i32::from(self.byte() % 70)),
                        Bson::Int32(self.int() as i32),
                    ]),
                    _ => Bson::Binary(Binary {
                        subtype: BinarySubtype::Generic,
                        bytes: vec![self.byte(), self.byte()],
                    }),
                }
            }
            _ => self.value(depth),
        }
    }

    /// An aggregation expression: a field path, a literal or an operator
    /// applied to arguments.
    pub fn expr(&mut self, depth: usize) -> Bson {
        self.nodes += 1;
        if depth >= DEPTH_MAX || !self.room() {
            return self.leaf_expr(depth);
        }
        match self.below(5) {
            0 => self.leaf_expr(depth),
            1 => {
                // `{a: expr, ...}`: an object expression.
                let mut d = Document::new();
                let name = self.name();
                let e = self.expr(depth + 1);
                d.insert(name, e);
                Bson::Document(d)
            }
            _ => {
                let op = self.pick(EXPR_OPS);
                let arg = match op {
                    "$cond" | "$switch" | "$filter" | "$map" | "$reduce" | "$let" | "$convert"
                    | "$getField" | "$setField" | "$dateToString" | "$sortArray"
                        if self.bool() =>
                    {
                        self.named_args(op, depth + 1)
                    }
                    _ if self.below(4) == 0 => self.expr(depth + 1),
                    _ => {
                        let n = self.below(4);
                        Bson::Array((0..n).map(|_| self.expr(depth + 1)).collect())
                    }
                };
                let mut d = Document::new();
                d.insert(op, arg);
                Bson::Document(d)
            }
        }
    }

    fn leaf_expr(&mut self, depth: usize) -> Bson {
        match self.below(4) {
            0 => Bson::String(format!("${}", self.path(false))),
            1 => Bson::String(
                self.pick(&[
                    "$$ROOT",
                    "$$CURRENT",
                    "$$NOW",
                    "$$this",
                    "$$value",
                    "$$x",
                    "$$REMOVE",
                ])
                .into(),
            ),
            _ => self.value(depth.max(DEPTH_MAX - 1)),
        }
    }

    /// The named arguments of the operators that take a document.
    fn named_args(&mut self, op: &str, depth: usize) -> Bson {
        let names: &[&str] = match op {
            "$cond" => &["if", "then", "else"],
            "$switch" => &["branches", "default"],
            "$filter" => &["input", "as", "cond", "limit"],
            "$map" => &["input", "as", "in"],
            "$reduce" => &["input", "initialValue", "in"],
            "$let" => &["vars", "in"],
            "$convert" => &["input", "to", "onError", "onNull"],
            "$getField" => &["field", "input"],
            "$setField" => &["field", "input", "value"],
            "$dateToString" => &["date", "format", "timezone"],
            _ => &["input", "sortBy"],
        };
        let mut d = Document::new();
        for &name in names {
            if self.byte() < 30 {
                continue;
            }
            let v = match name {
                "as" => Bson::String(self.pick(&["x", "this", "", "ROOT"]).into()),
                "to" => Bson::String(self.pick(TYPE_NAMES).into()),
                "vars" => {
                    let mut v = Document::new();
                    let e = self.expr(depth);
                    v.insert(self.pick(&["x", "y", "ROOT", "a b"]), e);
                    Bson::Document(v)
                }
                "branches" => {
                    let mut b = Document::new();
                    b.insert("case", self.expr(depth));
                    b.insert("then", self.expr(depth));
                    Bson::Array(vec![Bson::Document(b)])
                }
                "field" => Bson::String(self.name()),
                "sortBy" if self.bool() => Bson::Int32(self.pick(&[1, -1, 0])),
                "format" => Bson::String(
                    self.pick(&["%Y-%m-%d", "%H:%M:%S.%L", "%%", "%", "%Q"])
                        .into(),
                ),
                _ => self.expr(depth),
            };
            d.insert(name, v);
        }
        Bson::Document(d)
    }

    /// An update: operators on paths, or (rarely) a replacement document.
    pub fn update(&mut self) -> Document {
        if self.byte() < 20 {
            return self.document(1);
        }
        let n = 1 + self.below(3);
        let mut spec = Document::new();
        for _ in 0..n {
            let op = self.pick(UPDATE_OPS);
            let fields = 1 + self.below(3);
            let mut d = Document::new();
            for _ in 0..fields {
                let path = self.path(true);
                let arg = self.update_operand(op);
                d.insert(path, arg);
            }
            spec.insert(op, d);
        }
        spec
    }

    fn update_operand(&mut self, op: &str) -> Bson {
        if self.byte() >= 245 {
            return self.value(2);
        }
        match op {
            "$unset" => Bson::String(String::new()),
            "$inc" | "$mul" => match self.below(4) {
                0 => Bson::Int32(self.int() as i32),
                1 => Bson::Int64(self.int()),
                2 => Bson::Double(self.double()),
                _ => Bson::Decimal128(self.decimal()),
            },
            "$rename" => Bson::String(self.path(true)),
            "$pop" => Bson::Int32(self.pick(&[1, -1, 0, 2])),
            "$currentDate" => match self.below(3) {
                0 => Bson::Boolean(true),
                1 => {
                    let mut d = Document::new();
                    d.insert("$type", self.pick(&["date", "timestamp", "x"]));
                    Bson::Document(d)
                }
                _ => Bson::Boolean(false),
            },
            "$bit" => {
                let mut d = Document::new();
                let n = self.int();
                d.insert(
                    self.pick(&["and", "or", "xor", "nand"]),
                    if self.bool() {
                        Bson::Int64(n)
                    } else {
                        Bson::Int32(n as i32)
                    },
                );
                Bson::Document(d)
            }
            "$push" | "$addToSet" if self.bool() => {
                let mut d = Document::new();
                let n = self.below(4);
                d.insert(
                    "$each",
                    Bson::Array((0..n).map(|_| self.value(3)).collect::<Vec<_>>()),
                );
                if op == "$push" {
                    if self.bool() {
                        d.insert("$position", Bson::Int64(self.int()));
                    }
                    if self.bool() {
                        d.insert("$slice", Bson::Int64(self.int()));
                    }
                    if self.bool() {
                        let sort = match self.below(3) {
                            0 => Bson::Int32(1),
                            1 => Bson::Int32(-1),
                            _ => {
                                let mut s = Document::new();
                                s.insert(self.path(false), self.pick(&[1, -1, 0]));
                                Bson::Document(s)
                            }
                        };
                        d.insert("$sort", sort);
                    }
                }
                Bson::Document(d)
            }
            "$pull" => match self.below(3) {
                0 => self.condition(3),
                1 => Bson::Document(self.filter(3)),
                _ => self.value(3),
            },
            "$pullAll" => Bson::Array(self.array(3)),
            _ => self.value(2),
        }
    }

    /// `arrayFilters`: conditions on the identifiers `i`, `j` (and ones
    /// the update does not use).
    pub fn array_filters(&mut self) -> Vec<Document> {
        let n = self.below(3);
        (0..n)
            .map(|_| {
                let mut d = Document::new();
                let id = self.pick(&["i", "j", "i.a", "j.b", "k", "I", ""]);
                let cond = self.condition(3);
                d.insert(id, cond);
                if self.byte() > 220 {
                    d.insert("i", self.value(4));
                }
                d
            })
            .collect()
    }
}

/// Elements of a document, counted as the BSON walk counts them: every
/// field of every nested document, array and code-with-scope scope.
pub fn count_elements(d: &Document) -> usize {
    d.values().map(|v| 1 + count_in(v)).sum()
}

fn count_in(v: &Bson) -> usize {
    match v {
        Bson::Document(d) => count_elements(d),
        Bson::Array(a) => a.iter().map(|v| 1 + count_in(v)).sum(),
        Bson::JavaScriptCodeWithScope(c) => count_elements(&c.scope),
        _ => 0,
    }
}

/// How deep documents and arrays nest in `d` (a flat document is 1).
pub fn depth(d: &Document) -> usize {
    1 + d.values().map(depth_in).max().unwrap_or(0)
}

fn depth_in(v: &Bson) -> usize {
    match v {
        Bson::Document(d) => depth(d),
        Bson::Array(a) => 1 + a.iter().map(depth_in).max().unwrap_or(0),
        Bson::JavaScriptCodeWithScope(c) => depth(&c.scope),
        _ => 0,
    }
}

/// A document's bytes, or `None` when it cannot be encoded.
pub fn bytes_of(d: &Document) -> Option<Vec<u8>> {
    d.to_vec().ok()
}

/// One value's bytes (inside a one-field document): compares values
/// exactly, NaN payloads and types included.
pub fn value_bytes(v: &Bson) -> Vec<u8> {
    let mut d = Document::new();
    d.insert("v", v.clone());
    d.to_vec().expect("a generated value encodes")
}
