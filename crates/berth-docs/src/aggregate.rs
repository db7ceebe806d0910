//! The aggregation pipeline over an in-memory sequence of documents.
//!
//! [`Pipeline::parse`] checks every stage up front; [`Pipeline::run`] passes
//! the whole `Vec` of documents through the stages in order. Stages:
//! `$match`, `$project`, `$addFields`/`$set`, `$unset`, `$group`, `$sort`,
//! `$limit`, `$skip`, `$unwind`, `$count`, `$lookup` (equality and pipeline
//! forms), `$replaceRoot`/`$replaceWith`, `$facet`, `$sortByCount`,
//! `$unionWith`, `$documents`, and `$out` and `$merge` (parsed, not executed:
//! see [`Pipeline::out`] and [`Pipeline::merge`]).
//!
//! *In memory.* Every stage materializes its output, so a run holds its
//! input and output at once. The stages that would grow without bound hold
//! at most [`Limits`] (documents and approximate BSON bytes): `$group` (its
//! groups and what they accumulate), `$sort` (what it sorts, or only the
//! top N when a `$limit` follows), `$facet` (its input and output),
//! `$sortByCount`, and `$unwind` (what it produces). Past a limit a stage
//! fails with code 292 (QueryExceededMemoryLimitNoDiskUseAllowed): nothing
//! spills to disk.
//!
//! *Pure.* The clock and other collections come from the caller through
//! [`StageContext`]; `$sample` is refused (it needs randomness).
//!
//! `$match`: a filter that is exactly `{$expr: ...}` is evaluated here (so
//! it sees `$lookup`'s `let` variables); any other filter goes to
//! [`crate::matcher::Filter`].

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use bson::{Bson, Document};

use crate::error::codes;
use crate::expr::{
    self, check_var_name, integral, split_path, truthy, type_name, Expr, SortKey, SortPattern,
    StdDev, Sum, Variables,
};
use crate::matcher::Filter;
use crate::merge::Merge;
use crate::order;
use crate::DocError;

/// MongoDB's code for an unknown stage name.
pub const UNRECOGNIZED_STAGE: i32 = 40324;
/// MongoDB's QueryExceededMemoryLimitNoDiskUseAllowed.
pub const QUERY_EXCEEDED_MEMORY_LIMIT: i32 = 292;
/// MongoDB's NotImplemented: a stage Berth knows but does not run.
pub const NOT_IMPLEMENTED: i32 = 238;
/// The deepest sub-pipelines nest (`$lookup` in `$lookup`, `$facet`,
/// `$unionWith`), as in MongoDB.
pub const SUB_PIPELINE_DEPTH_MAX: usize = 20;
/// How deep a projection follows arrays nested in arrays (the data, not the
/// specification, decides that depth; MongoDB stores nothing deeper than 100).
pub const ARRAYS_NESTED_MAX: usize = 100;
/// The most bytes of documents one `$lookup` joins into a document
/// (MongoDB's internal BSON size limit).
pub const LOOKUP_BYTES_MAX: usize = 16 * 1024 * 1024 + 16 * 1024;

type Result<T> = std::result::Result<T, DocError>;

fn err(code: i32, message: impl Into<String>) -> DocError {
    DocError::new(code, message)
}

/// What a pipeline needs from outside: other collections, the time and
/// randomness.
pub trait StageContext {
    /// The documents of collection `from` in the same database (for
    /// `$lookup` and `$unionWith`); called at most once per collection per
    /// [`Pipeline::run`].
    fn lookup(&mut self, from: &str) -> std::result::Result<Vec<Document>, DocError>;

    /// The time `$$NOW` stands for, read once per run.
    fn now(&self) -> bson::DateTime;

    /// The seed of `$rand`'s numbers for a run; None (the default): `$rand`
    /// is an error.
    fn rand_seed(&self) -> Option<u64> {
        None
    }
}

/// Bounds on what one blocking stage holds in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most documents (or groups) a stage holds or produces.
    pub max_documents: usize,
    /// Most bytes (approximate BSON size) a stage holds.
    pub max_bytes: usize,
}

impl Default for Limits {
    /// MongoDB's 100 MiB per stage, and a million documents.
    fn default() -> Limits {
        Limits {
            max_documents: 1_000_000,
            max_bytes: 100 * 1024 * 1024,
        }
    }
}

/// A parsed aggregation pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    stages: Vec<Stage>,
    limits: Limits,
    /// Variables from outside the pipeline (a command's `let`).
    outer: Variables,
}

#[derive(Debug, Clone)]
enum Stage {
    Match {
        spec: Document,
        test: MatchTest,
    },
    Project(Projection),
    AddFields(ProjTree),
    Unset(ProjTree),
    Group(Group),
    Sort {
        spec: Document,
        pattern: SortPattern,
    },
    Limit(u64),
    Skip(u64),
    Unwind(Unwind),
    Count(String),
    Lookup(Box<Lookup>),
    ReplaceRoot {
        expr: Expr,
        what: &'static str,
    },
    Facet(Vec<(String, Pipeline)>),
    SortByCount(Expr),
    UnionWith {
        coll: String,
        pipeline: Option<Pipeline>,
    },
    /// `$documents`: its documents replace the input (first stage only).
    Documents(Expr),
    Out(String),
    Merge(Box<Merge>),
}

#[derive(Debug, Clone)]
enum MatchTest {
    Expr(Expr),
    Filter(Filter),
}

/// Where a pipeline is parsed: sub-pipelines refuse some stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Within {
    Top,
    Lookup,
    Facet,
    UnionWith,
}

/// Stages MongoDB has that Berth does not run.
const UNSUPPORTED_STAGES: &[&str] = &[
    "$bucket",
    "$bucketAuto",
    "$changeStream",
    "$changeStreamSplitLargeEvent",
    "$collStats",
    "$currentOp",
    "$densify",
    "$fill",
    "$geoNear",
    "$graphLookup",
    "$indexStats",
    "$listLocalSessions",
    "$listSearchIndexes",
    "$listSessions",
    "$planCacheStats",
    "$redact",
    "$search",
    "$searchMeta",
    "$setWindowFields",
    "$vectorSearch",
];

impl Pipeline {
    /// Parses a pipeline with the default [`Limits`].
    pub fn parse(stages: &[Document]) -> Result<Pipeline> {
        Pipeline::parse_with(stages, Limits::default())
    }

    /// Parses a pipeline whose blocking stages hold at most `limits`.
    pub fn parse_with(stages: &[Document], limits: Limits) -> Result<Pipeline> {
        parse_pipeline(stages, limits, &[], Within::Top, 0)
    }

    /// Parses a pipeline that may use the variables `vars` (a command's
    /// `let`), which [`run`] binds.
    ///
    /// [`run`]: Pipeline::run
    pub fn parse_with_vars(
        stages: &[Document],
        limits: Limits,
        vars: &Variables,
    ) -> Result<Pipeline> {
        let names: Vec<&str> = vars.names().collect();
        let mut p = parse_pipeline(stages, limits, &names, Within::Top, 0)?;
        p.outer = vars.clone();
        Ok(p)
    }

    /// Parses a pipeline that may use variables named `names`, whose values
    /// [`run_vars`] gives (`$merge`'s `let`).
    ///
    /// [`run_vars`]: Pipeline::run_vars
    pub(crate) fn parse_with_names(
        stages: &[Document],
        limits: Limits,
        names: &[&str],
    ) -> Result<Pipeline> {
        parse_pipeline(stages, limits, names, Within::Top, 0)
    }

    /// Where `$merge` (the last stage) writes, and how: the caller writes
    /// what [`run`] returns there (the stage itself does nothing here).
    ///
    /// [`run`]: Pipeline::run
    pub fn merge(&self) -> Option<&Merge> {
        match self.stages.last() {
            Some(Stage::Merge(m)) => Some(m),
            _ => None,
        }
    }

    /// Whether the pipeline opens with `$documents` (so it needs no
    /// collection: `{aggregate: 1}`).
    pub fn starts_with_documents(&self) -> bool {
        matches!(self.stages.first(), Some(Stage::Documents(_)))
    }

    /// The collection `$out` writes to: the caller writes what [`run`]
    /// returns there (the stage itself does nothing here).
    ///
    /// [`run`]: Pipeline::run
    pub fn out(&self) -> Option<&str> {
        match self.stages.last() {
            Some(Stage::Out(coll)) => Some(coll),
            _ => None,
        }
    }

    /// The first stage's filter when it is `$match`, for the storage layer
    /// to push down. Pushing it down is only an optimization: [`run`] still
    /// applies it, and filtering twice gives the same result.
    ///
    /// [`run`]: Pipeline::run
    pub fn leading_match(&self) -> Option<&Document> {
        match self.stages.first() {
            Some(Stage::Match { spec, .. }) => Some(spec),
            _ => None,
        }
    }

    /// The sort of the `$sort` that opens the pipeline (after the leading
    /// `$match`, if any). The storage layer may return the documents in this
    /// order; [`run`] sorts again (stably, so the same result).
    ///
    /// [`run`]: Pipeline::run
    pub fn leading_sort(&self) -> Option<&Document> {
        match self.stages.get(self.leading_match().is_some() as usize) {
            Some(Stage::Sort { spec, .. }) => Some(spec),
            _ => None,
        }
    }

    /// The `$limit` that directly follows the leading `$match` and `$sort`
    /// (either may be absent): the storage layer may return only this many
    /// documents, provided it applied [`leading_match`] and
    /// [`leading_sort`] first.
    ///
    /// [`leading_match`]: Pipeline::leading_match
    /// [`leading_sort`]: Pipeline::leading_sort
    pub fn leading_limit(&self) -> Option<u64> {
        let i = self.leading_match().is_some() as usize + self.leading_sort().is_some() as usize;
        match self.stages.get(i) {
            Some(Stage::Limit(n)) => Some(*n),
            _ => None,
        }
    }

    /// The limits the pipeline runs under.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Runs the pipeline over `input`. `$$NOW` is `ctx.now()`, read once;
    /// each other collection is read at most once per run (a `$lookup`
    /// nested in another's pipeline reuses what the run already read).
    pub fn run(&self, input: Vec<Document>, ctx: &mut dyn StageContext) -> Result<Vec<Document>> {
        self.run_vars(input, ctx, self.outer.clone())
    }

    /// [`run`] with the outer variables `vars` (`$$NOW` and `$rand` come
    /// from `ctx`).
    ///
    /// [`run`]: Pipeline::run
    pub(crate) fn run_vars(
        &self,
        input: Vec<Document>,
        ctx: &mut dyn StageContext,
        vars: Variables,
    ) -> Result<Vec<Document>> {
        let mut vars = vars.with_now(ctx.now());
        if let Some(seed) = ctx.rand_seed() {
            vars = vars.with_rand(seed);
        }
        let mut once = ReadOnce {
            inner: ctx,
            read: HashMap::new(),
        };
        self.run_with(input, &mut once, &vars)
    }

    fn run_with(
        &self,
        mut docs: Vec<Document>,
        ctx: &mut dyn StageContext,
        vars: &Variables,
    ) -> Result<Vec<Document>> {
        for (i, stage) in self.stages.iter().enumerate() {
            docs = match stage {
                Stage::Match { test, .. } => {
                    let mut out = Vec::with_capacity(docs.len());
                    for d in docs {
                        let keep = match test {
                            MatchTest::Expr(e) => truthy(&e.eval_with(&d, vars)?),
                            MatchTest::Filter(f) => f.matches(&d),
                        };
                        if keep {
                            out.push(d);
                        }
                    }
                    out
                }
                Stage::Project(p) => docs
                    .into_iter()
                    .map(|d| p.apply(d, vars))
                    .collect::<Result<_>>()?,
                Stage::AddFields(tree) => docs
                    .into_iter()
                    .map(|d| {
                        let mut out = d.clone();
                        tree.apply_computed(&mut out, &d, vars)?;
                        Ok(out)
                    })
                    .collect::<Result<_>>()?,
                Stage::Unset(tree) => docs.into_iter().map(|d| tree.exclude(d)).collect(),
                Stage::Group(g) => g.run(docs, vars, &self.limits)?,
                Stage::Sort { pattern, .. } => {
                    let top = match self.stages.get(i + 1) {
                        Some(Stage::Limit(n)) => Some(*n),
                        _ => None,
                    };
                    sort(pattern, docs, top, &self.limits)?
                }
                Stage::Limit(n) => {
                    docs.truncate(usize::try_from(*n).unwrap_or(usize::MAX));
                    docs
                }
                Stage::Skip(n) => {
                    let n = usize::try_from(*n).unwrap_or(usize::MAX).min(docs.len());
                    docs.drain(..n);
                    docs
                }
                Stage::Unwind(u) => u.run(docs, &self.limits)?,
                Stage::Count(field) => {
                    if docs.is_empty() {
                        Vec::new()
                    } else {
                        let mut d = Document::new();
                        d.insert(field.clone(), count_value(docs.len()));
                        vec![d]
                    }
                }
                Stage::Lookup(l) => l.run(docs, ctx, vars)?,
                Stage::ReplaceRoot { expr, what } => docs
                    .into_iter()
                    .map(|d| match expr.eval_opt(&d, vars)? {
                        Some(Bson::Document(new)) => Ok(new),
                        v => Err(err(
                            40228,
                            format!(
                                "'{what}' must evaluate to an object, but resulting value was: {}. \
                                 Type of resulting value: '{}'. Input document: {d}",
                                v.as_ref().map_or("MISSING".to_string(), |v| v.to_string()),
                                type_name(v.as_ref()),
                            ),
                        )),
                    })
                    .collect::<Result<_>>()?,
                Stage::Facet(facets) => facet(facets, docs, ctx, vars, &self.limits)?,
                Stage::SortByCount(e) => sort_by_count(e, docs, vars, &self.limits)?,
                Stage::UnionWith { coll, pipeline } => {
                    let other = ctx.lookup(coll)?;
                    let other = match pipeline {
                        Some(p) => p.run_with(other, ctx, vars)?,
                        None => other,
                    };
                    docs.extend(other);
                    docs
                }
                Stage::Documents(e) => match e.eval_with(&Document::new(), vars)? {
                    Bson::Array(items) => items
                        .into_iter()
                        .map(|v| match v {
                            Bson::Document(d) => Ok(d),
                            other => Err(err(
                                40228,
                                format!(
                                    "$documents must give documents, found {}",
                                    type_name(Some(&other))
                                ),
                            )),
                        })
                        .collect::<Result<_>>()?,
                    other => {
                        return Err(err(
                            5858203,
                            format!(
                                "error during $documents: the expression must give an array,                                  found {}",
                                type_name(Some(&other))
                            ),
                        ))
                    }
                },
                // The caller writes the result to the collection.
                Stage::Out(_) | Stage::Merge(_) => docs,
            };
        }
        Ok(docs)
    }
}

/// A context that reads each collection once and remembers it for the run.
struct ReadOnce<'c> {
    inner: &'c mut dyn StageContext,
    read: HashMap<String, Vec<Document>>,
}

impl StageContext for ReadOnce<'_> {
    fn lookup(&mut self, from: &str) -> Result<Vec<Document>> {
        if let Some(docs) = self.read.get(from) {
            return Ok(docs.clone());
        }
        let docs = self.inner.lookup(from)?;
        self.read.insert(from.to_string(), docs.clone());
        Ok(docs)
    }

    fn now(&self) -> bson::DateTime {
        self.inner.now()
    }

    fn rand_seed(&self) -> Option<u64> {
        self.inner.rand_seed()
    }
}

fn count_value(n: usize) -> Bson {
    match i32::try_from(n) {
        Ok(i) => Bson::Int32(i),
        Err(_) => Bson::Int64(i64::try_from(n).unwrap_or(i64::MAX)),
    }
}

// ---------------------------------------------------------------------------
// Parsing

fn parse_pipeline(
    stages: &[Document],
    limits: Limits,
    scope: &[&str],
    within: Within,
    depth: usize,
) -> Result<Pipeline> {
    let mut parsed = Vec::with_capacity(stages.len());
    for (i, spec) in stages.iter().enumerate() {
        let stage = parse_stage(spec, limits, scope, within, depth)?;
        if matches!(stage, Stage::Out(_)) && i + 1 != stages.len() {
            return Err(err(
                40601,
                "$out can only be the final stage in the pipeline",
            ));
        }
        if matches!(stage, Stage::Merge(_)) && i + 1 != stages.len() {
            return Err(err(
                40601,
                "$merge can only be the final stage in the pipeline",
            ));
        }
        if matches!(stage, Stage::Documents(_)) && i != 0 {
            return Err(err(
                40602,
                "$documents is only valid as the first stage in a pipeline",
            ));
        }
        parsed.push(stage);
    }
    Ok(Pipeline {
        stages: parsed,
        limits,
        outer: Variables::new(),
    })
}

/// A sub-pipeline: an array of stage documents.
fn parse_sub_pipeline(
    v: &Bson,
    what: &str,
    limits: Limits,
    scope: &[&str],
    within: Within,
    depth: usize,
) -> Result<Pipeline> {
    if depth >= SUB_PIPELINE_DEPTH_MAX {
        return Err(err(
            codes::FAILED_TO_PARSE,
            format!("Maximum number of nested sub-pipelines exceeded. Limit is {SUB_PIPELINE_DEPTH_MAX}"),
        ));
    }
    let Bson::Array(items) = v else {
        return Err(err(
            codes::FAILED_TO_PARSE,
            format!(
                "{what} must be an array of stages, found {}",
                type_name(Some(v))
            ),
        ));
    };
    let mut stages = Vec::with_capacity(items.len());
    for s in items {
        match s {
            Bson::Document(d) => stages.push(d.clone()),
            other => {
                return Err(err(
                    codes::FAILED_TO_PARSE,
                    format!(
                        "{what}: each stage must be an object, found {}",
                        type_name(Some(other))
                    ),
                ))
            }
        }
    }
    parse_pipeline(&stages, limits, scope, within, depth + 1)
}

fn parse_stage(
    spec: &Document,
    limits: Limits,
    scope: &[&str],
    within: Within,
    depth: usize,
) -> Result<Stage> {
    let mut it = spec.iter();
    let (Some((name, arg)), None) = (it.next(), it.next()) else {
        return Err(err(
            40323,
            "A pipeline stage specification object must contain exactly one field.",
        ));
    };
    let name = name.as_str();
    match name {
        "$match" => parse_match(arg, scope),
        "$project" => Ok(Stage::Project(Projection::parse(stage_doc(name, arg, 15969)?, scope)?)),
        "$addFields" | "$set" => Ok(Stage::AddFields(ProjTree::parse_add_fields(
            stage_doc(name, arg, 40272)?,
            name,
            scope,
        )?)),
        "$unset" => parse_unset(arg),
        "$group" => Ok(Stage::Group(Group::parse(stage_doc(name, arg, 15947)?, scope)?)),
        "$sort" => {
            let spec = stage_doc(name, arg, 15973)?;
            Ok(Stage::Sort {
                pattern: SortPattern::parse(spec, "$sort")?,
                spec: spec.clone(),
            })
        }
        "$limit" => match integral(arg) {
            Some(n) if n > 0 => Ok(Stage::Limit(n as u64)),
            Some(_) => Err(err(15958, "the limit must be positive")),
            None => Err(err(
                15957,
                format!("the limit must be specified as a whole number, found {arg}"),
            )),
        },
        "$skip" => match integral(arg) {
            Some(n) if n >= 0 => Ok(Stage::Skip(n as u64)),
            Some(n) => Err(err(
                5107200,
                format!("invalid argument to $skip stage: Expected a non-negative number in: $skip: {n}"),
            )),
            None => Err(err(
                15972,
                format!("Argument to $skip must be a whole number, found {arg}"),
            )),
        },
        "$unwind" => Ok(Stage::Unwind(Unwind::parse(arg)?)),
        "$count" => parse_count(arg),
        "$lookup" => Ok(Stage::Lookup(Box::new(Lookup::parse(
            stage_doc(name, arg, codes::FAILED_TO_PARSE)?,
            limits,
            scope,
            depth,
        )?))),
        "$replaceRoot" => {
            let d = stage_doc(name, arg, 40229)?;
            let mut new_root = None;
            for (k, v) in d {
                if k == "newRoot" {
                    new_root = Some(v);
                } else {
                    return Err(err(
                        40415,
                        format!("BSON field '$replaceRoot.{k}' is an unknown field."),
                    ));
                }
            }
            let v = new_root.ok_or_else(|| err(40231, "no newRoot specified for the $replaceRoot stage"))?;
            Ok(Stage::ReplaceRoot {
                expr: Expr::parse_with_vars(v, scope)?,
                what: "newRoot",
            })
        }
        "$replaceWith" => Ok(Stage::ReplaceRoot {
            expr: Expr::parse_with_vars(arg, scope)?,
            what: "replacement document",
        }),
        "$facet" => {
            if within == Within::Facet {
                return Err(err(40600, "$facet is not allowed to be used within a $facet stage"));
            }
            parse_facet(arg, limits, scope, depth)
        }
        "$sortByCount" => {
            let ok = match arg {
                Bson::String(s) => s.starts_with('$'),
                Bson::Document(d) => d.len() == 1 && d.keys().all(|k| k.starts_with('$')),
                _ => false,
            };
            if !ok {
                return Err(err(
                    40148,
                    "the sortByCount field must be defined as a $-prefixed path or an expression",
                ));
            }
            Ok(Stage::SortByCount(Expr::parse_with_vars(arg, scope)?))
        }
        "$unionWith" => parse_union_with(arg, limits, scope, depth),
        "$out" => {
            if within != Within::Top {
                let code = if within == Within::Facet { 40600 } else { 51047 };
                return Err(err(
                    code,
                    format!("$out is not allowed to be used within a {} stage", match within {
                        Within::Facet => "$facet",
                        Within::Lookup => "$lookup",
                        _ => "$unionWith",
                    }),
                ));
            }
            parse_out(arg)
        }
        "$merge" => {
            if within != Within::Top {
                return Err(err(
                    51047,
                    "$merge is not allowed to be used within a sub-pipeline",
                ));
            }
            Ok(Stage::Merge(Box::new(Merge::parse(arg, limits)?)))
        }
        "$documents" => Ok(Stage::Documents(Expr::parse_with_vars(arg, scope)?)),
        "$sample" => Err(err(
            NOT_IMPLEMENTED,
            "$sample is not supported: Berth runs pipelines deterministically, without random \
             numbers; use $sort and $limit to pick documents",
        )),
        _ if UNSUPPORTED_STAGES.contains(&name) => Err(err(
            NOT_IMPLEMENTED,
            format!("{name} is not supported by Berth's aggregation pipeline"),
        )),
        _ => Err(err(
            UNRECOGNIZED_STAGE,
            format!("Unrecognized pipeline stage name: '{name}'"),
        )),
    }
}

/// A stage's argument that must be a document.
fn stage_doc<'a>(name: &str, arg: &'a Bson, code: i32) -> Result<&'a Document> {
    match arg {
        Bson::Document(d) => Ok(d),
        other => Err(err(
            code,
            format!(
                "{name} specification must be an object, found {}",
                type_name(Some(other))
            ),
        )),
    }
}

fn parse_match(arg: &Bson, scope: &[&str]) -> Result<Stage> {
    let Bson::Document(spec) = arg else {
        return Err(err(
            15959,
            "the match filter must be an expression in an object",
        ));
    };
    let test = match (spec.len(), spec.get("$expr")) {
        (1, Some(e)) => MatchTest::Expr(Expr::parse_with_vars(e, scope)?),
        _ => MatchTest::Filter(Filter::parse(spec)?),
    };
    Ok(Stage::Match {
        spec: spec.clone(),
        test,
    })
}

fn parse_unset(arg: &Bson) -> Result<Stage> {
    let paths: Vec<&String> = match arg {
        Bson::String(s) => vec![s],
        Bson::Array(items) if items.is_empty() => {
            return Err(err(31119, "$unset specification must be a string or an array with at least one field"))
        }
        Bson::Array(items) => items
            .iter()
            .map(|i| match i {
                Bson::String(s) => Ok(s),
                _ => Err(err(
                    31120,
                    "$unset specification must be a string or an array containing only string values",
                )),
            })
            .collect::<Result<_>>()?,
        _ => {
            return Err(err(
                31002,
                "$unset specification must be a string or an array",
            ))
        }
    };
    let mut tree = ProjTree::default();
    for p in paths {
        let path = split_path(p)?;
        tree.insert(&path, ProjItem::Exclude, "$unset")?;
    }
    Ok(Stage::Unset(tree))
}

fn parse_count(arg: &Bson) -> Result<Stage> {
    let Bson::String(s) = arg else {
        return Err(err(40156, "the count field must be a non-empty string"));
    };
    if s.is_empty() {
        return Err(err(40156, "the count field must be a non-empty string"));
    }
    if s.starts_with('$') {
        return Err(err(40158, "the count field cannot be a $-prefixed path"));
    }
    if s.contains('.') {
        return Err(err(40160, "the count field cannot contain '.'"));
    }
    Ok(Stage::Count(s.clone()))
}

fn parse_facet(arg: &Bson, limits: Limits, scope: &[&str], depth: usize) -> Result<Stage> {
    let Bson::Document(spec) = arg else {
        return Err(err(
            15947,
            "the $facet specification must be a non-empty object",
        ));
    };
    if spec.is_empty() {
        return Err(err(
            40169,
            "the $facet specification must be a non-empty object",
        ));
    }
    let mut facets = Vec::with_capacity(spec.len());
    for (name, v) in spec {
        if name.is_empty() || name.starts_with('$') || name.contains('.') {
            return Err(err(
                40174,
                format!("$facet output field names must be non-empty, not start with '$' and not contain '.': '{name}'"),
            ));
        }
        if let Bson::Array(a) = v {
            if a.is_empty() {
                return Err(err(
                    40171,
                    format!("sub-pipeline in $facet stage cannot be empty: {name}"),
                ));
            }
        } else {
            return Err(err(
                40170,
                format!(
                    "arguments to $facet must be arrays, {name} is type {}",
                    type_name(Some(v))
                ),
            ));
        }
        facets.push((
            name.clone(),
            parse_sub_pipeline(v, "$facet", limits, scope, Within::Facet, depth)?,
        ));
    }
    Ok(Stage::Facet(facets))
}

fn parse_union_with(arg: &Bson, limits: Limits, scope: &[&str], depth: usize) -> Result<Stage> {
    match arg {
        Bson::String(coll) => Ok(Stage::UnionWith {
            coll: coll.clone(),
            pipeline: None,
        }),
        Bson::Document(d) => {
            let mut coll = None;
            let mut pipeline = None;
            for (k, v) in d {
                match (k.as_str(), v) {
                    ("coll", Bson::String(s)) => coll = Some(s.clone()),
                    ("pipeline", v) => {
                        pipeline = Some(parse_sub_pipeline(
                            v,
                            "$unionWith",
                            limits,
                            scope,
                            Within::UnionWith,
                            depth,
                        )?)
                    }
                    _ => {
                        return Err(err(
                            codes::FAILED_TO_PARSE,
                            format!("$unionWith: unknown or malformed argument '{k}'"),
                        ))
                    }
                }
            }
            let coll =
                coll.ok_or_else(|| err(codes::FAILED_TO_PARSE, "$unionWith requires 'coll'"))?;
            Ok(Stage::UnionWith { coll, pipeline })
        }
        other => Err(err(
            codes::FAILED_TO_PARSE,
            format!(
                "$unionWith takes a collection name or an object, found {}",
                type_name(Some(other))
            ),
        )),
    }
}

fn parse_out(arg: &Bson) -> Result<Stage> {
    let coll = match arg {
        Bson::String(s) => s.clone(),
        Bson::Document(d) => {
            if d.contains_key("db") {
                return Err(err(
                    codes::ILLEGAL_OPERATION,
                    "$out to another database is not supported: name the collection only",
                ));
            }
            match (d.len(), d.get("coll")) {
                (1, Some(Bson::String(s))) => s.clone(),
                _ => {
                    return Err(err(
                        codes::FAILED_TO_PARSE,
                        "$out takes a collection name or {coll: <name>}",
                    ))
                }
            }
        }
        other => {
            return Err(err(
                codes::FAILED_TO_PARSE,
                format!(
                    "$out takes a collection name, found {}",
                    type_name(Some(other))
                ),
            ))
        }
    };
    if coll.is_empty() || coll.contains('$') || coll.contains('\0') {
        return Err(err(
            codes::INVALID_NAMESPACE,
            format!("Invalid $out target namespace: '{coll}'"),
        ));
    }
    Ok(Stage::Out(coll))
}

// ---------------------------------------------------------------------------
// $project, $addFields, $unset

/// A projection's fields, as a tree of paths.
#[derive(Debug, Clone, Default)]
struct ProjTree {
    fields: Vec<(String, ProjItem)>,
}

#[derive(Debug, Clone)]
enum ProjItem {
    Include,
    Exclude,
    Computed(Expr),
    Sub(ProjTree),
}

impl ProjTree {
    fn get(&self, k: &str) -> Option<&ProjItem> {
        self.fields.iter().find(|(n, _)| n == k).map(|(_, i)| i)
    }

    fn insert(&mut self, path: &[String], item: ProjItem, stage: &str) -> Result<()> {
        let (first, rest) = path.split_first().expect("a path has a field");
        let at = self.fields.iter().position(|(k, _)| k == first);
        let collision = || {
            err(
                31250,
                format!(
                    "Invalid {stage} :: caused by :: Path collision at {}",
                    path.join(".")
                ),
            )
        };
        if rest.is_empty() {
            if at.is_some() {
                return Err(collision());
            }
            self.fields.push((first.clone(), item));
            return Ok(());
        }
        match at {
            None => {
                let mut sub = ProjTree::default();
                sub.insert(rest, item, stage)?;
                self.fields.push((first.clone(), ProjItem::Sub(sub)));
                Ok(())
            }
            Some(i) => match &mut self.fields[i].1 {
                ProjItem::Sub(sub) => sub.insert(rest, item, stage).map_err(|e| {
                    if e.code == 31250 {
                        collision()
                    } else {
                        e
                    }
                }),
                _ => Err(collision()),
            },
        }
    }

    fn has_computed(&self) -> bool {
        self.fields.iter().any(|(_, i)| match i {
            ProjItem::Computed(_) => true,
            ProjItem::Sub(s) => s.has_computed(),
            _ => false,
        })
    }

    /// Parses `$addFields`/`$set`: every value is an expression except
    /// non-empty documents without an operator, which are nested paths.
    fn parse_add_fields(spec: &Document, stage: &str, scope: &[&str]) -> Result<ProjTree> {
        let mut tree = ProjTree::default();
        add_fields_into(&mut tree, spec, &[], stage, scope)?;
        Ok(tree)
    }

    /// Sets the computed fields (evaluated against `root`) in `out`; a
    /// missing result removes the field.
    fn apply_computed(&self, out: &mut Document, root: &Document, vars: &Variables) -> Result<()> {
        for (k, item) in &self.fields {
            match item {
                ProjItem::Computed(e) => match e.eval_opt(root, vars)? {
                    Some(v) => {
                        out.insert(k.clone(), v);
                    }
                    None => {
                        out.remove(k);
                    }
                },
                ProjItem::Sub(sub) if sub.has_computed() => match out.get_mut(k) {
                    Some(Bson::Document(d)) => sub.apply_computed(d, root, vars)?,
                    Some(Bson::Array(items)) => sub.apply_computed_array(items, root, vars, 1)?,
                    _ => {
                        let mut d = Document::new();
                        sub.apply_computed(&mut d, root, vars)?;
                        out.insert(k.clone(), Bson::Document(d));
                    }
                },
                _ => {}
            }
        }
        Ok(())
    }

    /// Computed fields under an array path apply to each element; an
    /// element that is not a document becomes one. Arrays nested deeper
    /// than [`ARRAYS_NESTED_MAX`] are left as they are.
    fn apply_computed_array(
        &self,
        items: &mut [Bson],
        root: &Document,
        vars: &Variables,
        depth: usize,
    ) -> Result<()> {
        for e in items {
            match e {
                Bson::Document(d) => self.apply_computed(d, root, vars)?,
                Bson::Array(_) if depth >= ARRAYS_NESTED_MAX => {}
                Bson::Array(inner) => self.apply_computed_array(inner, root, vars, depth + 1)?,
                other => {
                    let mut d = Document::new();
                    self.apply_computed(&mut d, root, vars)?;
                    *other = Bson::Document(d);
                }
            }
        }
        Ok(())
    }

    /// The included fields of `input`, in its order (through arrays:
    /// documents are projected, scalars dropped).
    fn include(&self, input: &Document) -> Document {
        let mut out = Document::new();
        for (k, v) in input {
            match self.get(k) {
                Some(ProjItem::Include) => {
                    out.insert(k.clone(), v.clone());
                }
                Some(ProjItem::Sub(sub)) => match v {
                    Bson::Document(d) => {
                        out.insert(k.clone(), Bson::Document(sub.include(d)));
                    }
                    Bson::Array(items) => {
                        out.insert(k.clone(), Bson::Array(sub.include_array(items, 1)));
                    }
                    _ => {}
                },
                _ => {}
            }
        }
        out
    }

    /// Arrays nested deeper than [`ARRAYS_NESTED_MAX`] are dropped.
    fn include_array(&self, items: &[Bson], depth: usize) -> Vec<Bson> {
        items
            .iter()
            .filter_map(|e| match e {
                Bson::Document(d) => Some(Bson::Document(self.include(d))),
                Bson::Array(_) if depth >= ARRAYS_NESTED_MAX => None,
                Bson::Array(inner) => Some(Bson::Array(self.include_array(inner, depth + 1))),
                _ => None,
            })
            .collect()
    }

    /// `input` without the excluded fields (through arrays).
    fn exclude(&self, input: Document) -> Document {
        let mut out = Document::new();
        for (k, v) in input {
            match self.get(&k) {
                Some(ProjItem::Exclude) => {}
                Some(ProjItem::Sub(sub)) => {
                    let v = match v {
                        Bson::Document(d) => Bson::Document(sub.exclude(d)),
                        Bson::Array(items) => Bson::Array(sub.exclude_array(items, 1)),
                        other => other,
                    };
                    out.insert(k, v);
                }
                _ => {
                    out.insert(k, v);
                }
            }
        }
        out
    }

    /// Arrays nested deeper than [`ARRAYS_NESTED_MAX`] are kept as they are.
    fn exclude_array(&self, items: Vec<Bson>, depth: usize) -> Vec<Bson> {
        items
            .into_iter()
            .map(|e| match e {
                Bson::Document(d) => Bson::Document(self.exclude(d)),
                Bson::Array(inner) if depth < ARRAYS_NESTED_MAX => {
                    Bson::Array(self.exclude_array(inner, depth + 1))
                }
                other => other,
            })
            .collect()
    }
}

fn spec_path(prefix: &[String], key: &str) -> Result<Vec<String>> {
    if key.starts_with('$') {
        return Err(err(
            16410,
            format!("FieldPath field names may not start with '$'. Given field '{key}'"),
        ));
    }
    let mut path = prefix.to_vec();
    path.extend(split_path(key)?);
    if path.len() > expr::PATH_PARTS_MAX {
        return Err(err(
            codes::FAILED_TO_PARSE,
            format!(
                "FieldPath is too long: more than {} parts",
                expr::PATH_PARTS_MAX
            ),
        ));
    }
    Ok(path)
}

fn is_operator_doc(d: &Document) -> bool {
    d.keys().next().is_some_and(|k| k.starts_with('$'))
}

fn add_fields_into(
    tree: &mut ProjTree,
    spec: &Document,
    prefix: &[String],
    stage: &str,
    scope: &[&str],
) -> Result<()> {
    for (k, v) in spec {
        let path = spec_path(prefix, k)?;
        match v {
            Bson::Document(d) if !d.is_empty() && !is_operator_doc(d) => {
                add_fields_into(tree, d, &path, stage, scope)?;
            }
            v => tree.insert(
                &path,
                ProjItem::Computed(Expr::parse_with_vars(v, scope)?),
                stage,
            )?,
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
struct Projection {
    tree: ProjTree,
    /// Inclusion (with computed fields) or exclusion.
    inclusion: bool,
}

impl Projection {
    fn parse(spec: &Document, scope: &[&str]) -> Result<Projection> {
        if spec.is_empty() {
            return Err(err(51272, "Invalid $project :: caused by :: projection specification must have at least one field"));
        }
        let mut tree = ProjTree::default();
        project_into(&mut tree, spec, &[], scope)?;
        let mut flags = Flags::default();
        flags.scan(&tree, "");
        if let Some(excluded) = &flags.exclude {
            if flags.computed {
                return Err(err(
                    31252,
                    format!("Invalid $project :: caused by :: Cannot use expression other than $meta in exclusion projection (excluding {excluded})"),
                ));
            }
            if let Some(included) = &flags.include {
                return Err(err(
                    31254,
                    format!("Invalid $project :: caused by :: Cannot do exclusion on field {excluded} in inclusion projection (including {included})"),
                ));
            }
        }
        let inclusion = flags.include.is_some()
            || flags.computed
            || (flags.exclude.is_none() && matches!(tree.get("_id"), Some(ProjItem::Include)));
        if inclusion && tree.get("_id").is_none() {
            tree.fields
                .insert(0, ("_id".to_string(), ProjItem::Include));
        }
        Ok(Projection { tree, inclusion })
    }

    fn apply(&self, input: Document, vars: &Variables) -> Result<Document> {
        if !self.inclusion {
            return Ok(self.tree.exclude(input));
        }
        let mut out = self.tree.include(&input);
        self.tree.apply_computed(&mut out, &input, vars)?;
        // A computed _id comes first, as MongoDB prints it.
        if matches!(self.tree.get("_id"), Some(ProjItem::Computed(_)))
            && out.keys().next().is_some_and(|k| k != "_id")
        {
            if let Some(id) = out.remove("_id") {
                let mut front = Document::new();
                front.insert("_id", id);
                front.extend(out);
                out = front;
            }
        }
        Ok(out)
    }
}

/// What a `$project` does: the first included, excluded path (other than the
/// top-level `_id`), and whether it computes.
#[derive(Default)]
struct Flags {
    include: Option<String>,
    exclude: Option<String>,
    computed: bool,
}

impl Flags {
    fn scan(&mut self, tree: &ProjTree, prefix: &str) {
        for (k, item) in &tree.fields {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            let top_id = path == "_id";
            match item {
                ProjItem::Include if !top_id => {
                    self.include.get_or_insert(path);
                }
                ProjItem::Exclude if !top_id => {
                    self.exclude.get_or_insert(path);
                }
                ProjItem::Computed(_) => self.computed = true,
                ProjItem::Sub(sub) => self.scan(sub, &path),
                _ => {}
            }
        }
    }
}

fn project_into(
    tree: &mut ProjTree,
    spec: &Document,
    prefix: &[String],
    scope: &[&str],
) -> Result<()> {
    for (k, v) in spec {
        let path = spec_path(prefix, k)?;
        let item = match v {
            Bson::Boolean(b) => Some(*b),
            v if order::number(v).is_some() => Some(truthy(v)),
            _ => None,
        };
        match (item, v) {
            (Some(true), _) => tree.insert(&path, ProjItem::Include, "$project")?,
            (Some(false), _) => tree.insert(&path, ProjItem::Exclude, "$project")?,
            (None, Bson::Document(d)) if d.is_empty() => {
                return Err(err(
                    51270,
                    format!("Invalid $project :: caused by :: An empty sub-projection is not a valid value. Found empty object at path {}", path.join(".")),
                ))
            }
            (None, Bson::Document(d)) if !is_operator_doc(d) => project_into(tree, d, &path, scope)?,
            (None, v) => tree.insert(
                &path,
                ProjItem::Computed(Expr::parse_with_vars(v, scope)?),
                "$project",
            )?,
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Memory accounting

/// The size of a value in BSON (as an element's value), in bytes.
pub(crate) fn value_size(v: &Bson) -> usize {
    match v {
        Bson::Double(_) | Bson::Int64(_) | Bson::DateTime(_) | Bson::Timestamp(_) => 8,
        Bson::Int32(_) => 4,
        Bson::Boolean(_) => 1,
        Bson::Null | Bson::Undefined | Bson::MinKey | Bson::MaxKey => 0,
        Bson::String(s) | Bson::Symbol(s) | Bson::JavaScriptCode(s) => 5 + s.len(),
        Bson::Document(d) => doc_size(d),
        Bson::Array(items) => {
            5 + items
                .iter()
                .enumerate()
                .map(|(i, e)| 2 + decimal_digits(i) + value_size(e))
                .sum::<usize>()
        }
        Bson::Binary(b) => 5 + b.bytes.len(),
        Bson::ObjectId(_) => 12,
        Bson::Decimal128(_) => 16,
        Bson::RegularExpression(r) => r.pattern.as_str().len() + r.options.as_str().len() + 2,
        Bson::JavaScriptCodeWithScope(c) => 4 + 5 + c.code.len() + doc_size(&c.scope),
        // A namespace string and an ObjectId; the namespace is not public.
        Bson::DbPointer(_) => 5 + 64 + 12,
    }
}

/// The size of a document in BSON, in bytes.
pub(crate) fn doc_size(d: &Document) -> usize {
    5 + d
        .iter()
        .map(|(k, v)| 2 + k.len() + value_size(v))
        .sum::<usize>()
}

fn decimal_digits(mut i: usize) -> usize {
    let mut n = 1;
    while i >= 10 {
        i /= 10;
        n += 1;
    }
    n
}

/// What one stage holds, against the limits.
struct Budget<'l> {
    limits: &'l Limits,
    stage: &'static str,
    documents: usize,
    bytes: usize,
}

impl<'l> Budget<'l> {
    fn new(limits: &'l Limits, stage: &'static str) -> Budget<'l> {
        Budget {
            limits,
            stage,
            documents: 0,
            bytes: 0,
        }
    }

    fn exceeded(&self) -> DocError {
        err(
            QUERY_EXCEEDED_MEMORY_LIMIT,
            format!(
                "Exceeded memory limit for {}: it would hold more than {} documents or {} bytes, \
                 and pipelines run in memory here (nothing spills to disk)",
                self.stage, self.limits.max_documents, self.limits.max_bytes
            ),
        )
    }

    fn add_documents(&mut self, n: usize) -> Result<()> {
        self.documents = self.documents.saturating_add(n);
        if self.documents > self.limits.max_documents {
            return Err(self.exceeded());
        }
        Ok(())
    }

    fn add_bytes(&mut self, n: usize) -> Result<()> {
        self.bytes = self.bytes.saturating_add(n);
        if self.bytes > self.limits.max_bytes {
            return Err(self.exceeded());
        }
        Ok(())
    }

    /// Accounts for a held value of `old` bytes replaced by one of `new`.
    fn replace_bytes(&mut self, old: usize, new: usize) -> Result<()> {
        self.bytes = self.bytes.saturating_sub(old);
        self.add_bytes(new)
    }

    fn add_document(&mut self, d: &Document) -> Result<()> {
        self.add_documents(1)?;
        self.add_bytes(doc_size(d))
    }
}

// ---------------------------------------------------------------------------
// $group

/// A value ordered by MongoDB's comparison, for group keys and sets.
#[derive(Debug, Clone)]
struct Ordered(Bson);

impl PartialEq for Ordered {
    fn eq(&self, other: &Ordered) -> bool {
        order::compare(&self.0, &other.0) == std::cmp::Ordering::Equal
    }
}

impl Eq for Ordered {}

impl PartialOrd for Ordered {
    fn partial_cmp(&self, other: &Ordered) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ordered {
    fn cmp(&self, other: &Ordered) -> std::cmp::Ordering {
        order::compare(&self.0, &other.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AccOp {
    Sum,
    Avg,
    Min,
    Max,
    First,
    Last,
    Push,
    AddToSet,
    Count,
    StdDevPop,
    StdDevSamp,
    MergeObjects,
}

fn acc_op(name: &str) -> Option<AccOp> {
    Some(match name {
        "$sum" => AccOp::Sum,
        "$avg" => AccOp::Avg,
        "$min" => AccOp::Min,
        "$max" => AccOp::Max,
        "$first" => AccOp::First,
        "$last" => AccOp::Last,
        "$push" => AccOp::Push,
        "$addToSet" => AccOp::AddToSet,
        "$count" => AccOp::Count,
        "$stdDevPop" => AccOp::StdDevPop,
        "$stdDevSamp" => AccOp::StdDevSamp,
        "$mergeObjects" => AccOp::MergeObjects,
        _ => return None,
    })
}

#[derive(Debug, Clone)]
struct Group {
    id: Expr,
    /// Output field, accumulator, argument (none for `$count`).
    fields: Vec<(String, AccOp, Option<Expr>)>,
}

/// One accumulator's running state.
enum Acc {
    Sum(Sum),
    Avg(Sum, u64),
    Min(Option<Bson>),
    Max(Option<Bson>),
    First(Option<Bson>),
    Last(Bson),
    Push(Vec<Bson>),
    AddToSet(Vec<Bson>, BTreeSet<Ordered>),
    Count(usize),
    StdDev(StdDev, bool),
    Merge(Document),
}

impl Acc {
    fn new(op: AccOp) -> Acc {
        match op {
            AccOp::Sum => Acc::Sum(Sum::default()),
            AccOp::Avg => Acc::Avg(Sum::default(), 0),
            AccOp::Min => Acc::Min(None),
            AccOp::Max => Acc::Max(None),
            AccOp::First => Acc::First(None),
            AccOp::Last => Acc::Last(Bson::Null),
            AccOp::Push => Acc::Push(Vec::new()),
            AccOp::AddToSet => Acc::AddToSet(Vec::new(), BTreeSet::new()),
            AccOp::Count => Acc::Count(0),
            AccOp::StdDevPop => Acc::StdDev(StdDev::default(), false),
            AccOp::StdDevSamp => Acc::StdDev(StdDev::default(), true),
            AccOp::MergeObjects => Acc::Merge(Document::new()),
        }
    }

    fn add(&mut self, v: Option<Bson>, budget: &mut Budget<'_>) -> Result<()> {
        let nullish = matches!(v, None | Some(Bson::Null | Bson::Undefined));
        match self {
            Acc::Sum(s) => {
                if let Some(v) = &v {
                    s.add(v);
                }
            }
            Acc::Avg(s, n) => {
                if v.as_ref().is_some_and(|v| s.add(v)) {
                    *n += 1;
                }
            }
            Acc::Min(best) => keep_extreme(best, v, std::cmp::Ordering::Less, budget)?,
            Acc::Max(best) => keep_extreme(best, v, std::cmp::Ordering::Greater, budget)?,
            Acc::First(first) => {
                if first.is_none() {
                    let v = v.unwrap_or(Bson::Null);
                    budget.add_bytes(value_size(&v))?;
                    *first = Some(v);
                }
            }
            Acc::Last(last) => {
                let v = v.unwrap_or(Bson::Null);
                budget.replace_bytes(value_size(last), value_size(&v))?;
                *last = v;
            }
            Acc::Push(items) => {
                if let Some(v) = v {
                    budget.add_bytes(value_size(&v))?;
                    items.push(v);
                }
            }
            Acc::AddToSet(items, seen) => {
                if let Some(v) = v {
                    if seen.insert(Ordered(v.clone())) {
                        // Held twice: in the set and in the list.
                        budget.add_bytes(2 * value_size(&v))?;
                        items.push(v);
                    }
                }
            }
            Acc::Count(n) => *n += 1,
            Acc::StdDev(s, _) => {
                if let Some(v) = &v {
                    s.add(v);
                }
            }
            Acc::Merge(d) => match v {
                _ if nullish => {}
                Some(Bson::Document(src)) => {
                    budget.add_bytes(doc_size(&src))?;
                    for (k, x) in src {
                        d.insert(k, x);
                    }
                }
                Some(other) => {
                    return Err(err(
                        40400,
                        format!(
                            "$mergeObjects requires object inputs, but input {other} is of type {}",
                            type_name(Some(&other))
                        ),
                    ))
                }
                None => {}
            },
        }
        Ok(())
    }

    fn value(self) -> Bson {
        match self {
            Acc::Sum(s) => s.value(),
            Acc::Avg(s, n) => s.average(n),
            Acc::Min(v) | Acc::Max(v) => v.unwrap_or(Bson::Null),
            Acc::First(v) => v.unwrap_or(Bson::Null),
            Acc::Last(v) => v,
            Acc::Push(items) | Acc::AddToSet(items, _) => Bson::Array(items),
            Acc::Count(n) => count_value(n),
            Acc::StdDev(s, sample) => s.value(sample),
            Acc::Merge(d) => Bson::Document(d),
        }
    }
}

/// Keeps the smallest (`Less`) or largest (`Greater`) value; null,
/// undefined and missing are skipped.
fn keep_extreme(
    best: &mut Option<Bson>,
    v: Option<Bson>,
    want: std::cmp::Ordering,
    budget: &mut Budget<'_>,
) -> Result<()> {
    let Some(v) = v.filter(|v| !matches!(v, Bson::Null | Bson::Undefined)) else {
        return Ok(());
    };
    if best.as_ref().is_none_or(|b| order::compare(&v, b) == want) {
        budget.replace_bytes(best.as_ref().map_or(0, value_size), value_size(&v))?;
        *best = Some(v);
    }
    Ok(())
}

impl Group {
    fn parse(spec: &Document, scope: &[&str]) -> Result<Group> {
        let mut id = None;
        let mut fields = Vec::new();
        for (k, v) in spec {
            if k == "_id" {
                id = Some(Expr::parse_with_vars(v, scope)?);
                continue;
            }
            if k.starts_with('$') {
                return Err(err(
                    40236,
                    format!("The field name '{k}' cannot be an operator name"),
                ));
            }
            if k.contains('.') {
                return Err(err(
                    40235,
                    format!("The field name '{k}' cannot contain '.'"),
                ));
            }
            let Bson::Document(acc) = v else {
                return Err(err(
                    40234,
                    format!("The field '{k}' must be an accumulator object"),
                ));
            };
            let mut it = acc.iter();
            let (Some((name, arg)), None) = (it.next(), it.next()) else {
                return Err(err(
                    40238,
                    format!("The field '{k}' must specify one accumulator"),
                ));
            };
            let op = acc_op(name)
                .ok_or_else(|| err(15952, format!("unknown group operator '{name}'")))?;
            let arg = if op == AccOp::Count {
                if !matches!(arg, Bson::Document(d) if d.is_empty()) {
                    return Err(err(
                        codes::TYPE_MISMATCH,
                        "$count takes no arguments, i.e. $count:{}",
                    ));
                }
                None
            } else {
                if matches!(arg, Bson::Array(_)) {
                    return Err(err(
                        40237,
                        format!("The {name} accumulator is a unary operator"),
                    ));
                }
                Some(Expr::parse_with_vars(arg, scope)?)
            };
            fields.push((k.clone(), op, arg));
        }
        let id = id.ok_or_else(|| err(15955, "a group specification must include an _id"))?;
        Ok(Group { id, fields })
    }

    fn run(&self, docs: Vec<Document>, vars: &Variables, limits: &Limits) -> Result<Vec<Document>> {
        let mut budget = Budget::new(limits, "$group");
        let mut index: BTreeMap<Ordered, usize> = BTreeMap::new();
        let mut groups: Vec<(Bson, Vec<Acc>)> = Vec::new();
        for d in &docs {
            let key = self.id.eval_opt(d, vars)?.unwrap_or(Bson::Null);
            let i = match index.entry(Ordered(key)) {
                Entry::Occupied(e) => *e.get(),
                Entry::Vacant(e) => {
                    let key = &e.key().0;
                    budget.add_documents(1)?;
                    // The key is held twice: in the index and in the output.
                    budget.add_bytes(2 * value_size(key) + 64)?;
                    groups.push((
                        key.clone(),
                        self.fields.iter().map(|(_, op, _)| Acc::new(*op)).collect(),
                    ));
                    *e.insert(groups.len() - 1)
                }
            };
            for ((_, _, arg), acc) in self.fields.iter().zip(groups[i].1.iter_mut()) {
                let v = match arg {
                    Some(e) => e.eval_opt(d, vars)?,
                    None => None,
                };
                acc.add(v, &mut budget)?;
            }
        }
        Ok(groups
            .into_iter()
            .map(|(key, accs)| {
                let mut out = Document::new();
                out.insert("_id", key);
                for ((name, _, _), acc) in self.fields.iter().zip(accs) {
                    out.insert(name.clone(), acc.value());
                }
                out
            })
            .collect())
    }
}

fn sort_by_count(
    e: &Expr,
    docs: Vec<Document>,
    vars: &Variables,
    limits: &Limits,
) -> Result<Vec<Document>> {
    let mut budget = Budget::new(limits, "$sortByCount");
    let mut index: BTreeMap<Ordered, usize> = BTreeMap::new();
    let mut groups: Vec<(Bson, usize)> = Vec::new();
    for d in &docs {
        let key = e.eval_opt(d, vars)?.unwrap_or(Bson::Null);
        match index.entry(Ordered(key)) {
            Entry::Occupied(e) => groups[*e.get()].1 += 1,
            Entry::Vacant(e) => {
                let key = &e.key().0;
                budget.add_documents(1)?;
                budget.add_bytes(2 * value_size(key) + 32)?;
                groups.push((key.clone(), 1));
                e.insert(groups.len() - 1);
            }
        }
    }
    // Stable: equal counts stay in order of first appearance.
    groups.sort_by_key(|g| std::cmp::Reverse(g.1));
    Ok(groups
        .into_iter()
        .map(|(key, n)| {
            let mut d = Document::new();
            d.insert("_id", key);
            d.insert("count", count_value(n));
            d
        })
        .collect())
}

// ---------------------------------------------------------------------------
// $sort

/// Sorts stably by `pattern`; `top` is the `$limit` that follows, if any
/// (then only that many documents count against the limits).
fn sort(
    pattern: &SortPattern,
    docs: Vec<Document>,
    top: Option<u64>,
    limits: &Limits,
) -> Result<Vec<Document>> {
    let held = match top {
        Some(n) => docs.len().min(usize::try_from(n).unwrap_or(usize::MAX)),
        None => docs.len(),
    };
    let mut budget = Budget::new(limits, "$sort");
    budget.add_documents(held)?;
    let mut keyed: Vec<(Vec<SortKey>, Document)> = docs
        .into_iter()
        .map(|d| (pattern.key_of_doc(&d), d))
        .collect();
    keyed.sort_by(|a, b| pattern.compare(&a.0, &b.0));
    for (_, d) in keyed.iter().take(held) {
        budget.add_bytes(doc_size(d))?;
    }
    Ok(keyed.into_iter().map(|(_, d)| d).collect())
}

// ---------------------------------------------------------------------------
// $unwind

#[derive(Debug, Clone)]
struct Unwind {
    path: Vec<String>,
    index_field: Option<Vec<String>>,
    preserve: bool,
}

impl Unwind {
    fn parse(arg: &Bson) -> Result<Unwind> {
        let (path, index_field, preserve) = match arg {
            Bson::String(s) => (s.as_str(), None, false),
            Bson::Document(d) => {
                let mut path = None;
                let mut index = None;
                let mut preserve = false;
                for (k, v) in d {
                    match k.as_str() {
                        "path" => match v {
                            Bson::String(s) => path = Some(s.as_str()),
                            _ => {
                                return Err(err(
                                    28808,
                                    format!("expected a string as the path for $unwind stage, got {}", type_name(Some(v))),
                                ))
                            }
                        },
                        "includeArrayIndex" => match v {
                            Bson::String(s) if !s.is_empty() => {
                                if s.starts_with('$') {
                                    return Err(err(
                                        28822,
                                        format!("includeArrayIndex option to $unwind stage should not be prefixed with a '$': {s}"),
                                    ));
                                }
                                index = Some(split_path(s)?);
                            }
                            _ => {
                                return Err(err(
                                    28810,
                                    "expected a non-empty string for the includeArrayIndex option to $unwind stage",
                                ))
                            }
                        },
                        "preserveNullAndEmptyArrays" => match v {
                            Bson::Boolean(b) => preserve = *b,
                            _ => {
                                return Err(err(
                                    28809,
                                    "expected a boolean for the preserveNullAndEmptyArrays option to $unwind stage",
                                ))
                            }
                        },
                        _ => {
                            return Err(err(
                                28811,
                                format!("unrecognized option to $unwind stage: {k}"),
                            ))
                        }
                    }
                }
                let path = path.ok_or_else(|| err(28812, "no path specified to $unwind stage"))?;
                (path, index, preserve)
            }
            other => {
                return Err(err(
                    15981,
                    format!(
                        "expected either a string or an object as specification for $unwind stage, got {}",
                        type_name(Some(other))
                    ),
                ))
            }
        };
        let Some(rest) = path.strip_prefix('$') else {
            return Err(err(
                28818,
                format!("path option to $unwind stage should be prefixed with a '$': {path}"),
            ));
        };
        Ok(Unwind {
            path: split_path(rest)?,
            index_field,
            preserve,
        })
    }

    fn run(&self, docs: Vec<Document>, limits: &Limits) -> Result<Vec<Document>> {
        let mut budget = Budget::new(limits, "$unwind");
        let mut out = Vec::with_capacity(docs.len());
        for mut d in docs {
            let value = get_dotted(&d, &self.path).cloned();
            match value {
                Some(Bson::Array(items)) if !items.is_empty() => {
                    budget.add_documents(items.len())?;
                    for (i, item) in items.into_iter().enumerate() {
                        let mut copy = d.clone();
                        set_dotted(&mut copy, &self.path, item);
                        if let Some(f) = &self.index_field {
                            set_dotted(&mut copy, f, Bson::Int64(i as i64));
                        }
                        out.push(copy);
                    }
                }
                Some(Bson::Array(_)) | Some(Bson::Null) | None => {
                    if self.preserve {
                        if matches!(value, Some(Bson::Array(_))) {
                            remove_dotted(&mut d, &self.path);
                        }
                        if let Some(f) = &self.index_field {
                            set_dotted(&mut d, f, Bson::Null);
                        }
                        budget.add_documents(1)?;
                        out.push(d);
                    }
                }
                // A value that is not an array unwinds as a one-element array.
                Some(_) => {
                    if let Some(f) = &self.index_field {
                        set_dotted(&mut d, f, Bson::Null);
                    }
                    budget.add_documents(1)?;
                    out.push(d);
                }
            }
        }
        Ok(out)
    }
}

/// The value at a dotted path through documents only (not arrays).
fn get_dotted<'d>(d: &'d Document, path: &[String]) -> Option<&'d Bson> {
    let (first, rest) = path.split_first()?;
    let v = d.get(first)?;
    if rest.is_empty() {
        return Some(v);
    }
    match v {
        Bson::Document(sub) => get_dotted(sub, rest),
        _ => None,
    }
}

/// Sets the value at a dotted path, making documents on the way (replacing
/// what is not a document).
fn set_dotted(d: &mut Document, path: &[String], value: Bson) {
    let (first, rest) = path.split_first().expect("a path has a field");
    if rest.is_empty() {
        d.insert(first.clone(), value);
        return;
    }
    match d.get_mut(first) {
        Some(Bson::Document(sub)) => set_dotted(sub, rest, value),
        _ => {
            let mut sub = Document::new();
            set_dotted(&mut sub, rest, value);
            d.insert(first.clone(), Bson::Document(sub));
        }
    }
}

fn remove_dotted(d: &mut Document, path: &[String]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if rest.is_empty() {
        d.remove(first);
    } else if let Some(Bson::Document(sub)) = d.get_mut(first) {
        remove_dotted(sub, rest);
    }
}

// ---------------------------------------------------------------------------
// $lookup

#[derive(Debug, Clone)]
struct Lookup {
    from: String,
    /// localField and foreignField, for the equality form.
    fields: Option<(Vec<String>, Vec<String>)>,
    as_path: Vec<String>,
    lets: Vec<(String, Expr)>,
    pipeline: Option<Pipeline>,
}

impl Lookup {
    fn parse(spec: &Document, limits: Limits, scope: &[&str], depth: usize) -> Result<Lookup> {
        let mut from = None;
        let mut local = None;
        let mut foreign = None;
        let mut as_field = None;
        let mut lets = None;
        let mut pipeline = None;
        let string = |k: &str, v: &Bson| match v {
            Bson::String(s) => Ok(s.clone()),
            other => Err(err(
                codes::FAILED_TO_PARSE,
                format!(
                    "$lookup argument '{k}' must be a string, found {}",
                    type_name(Some(other))
                ),
            )),
        };
        for (k, v) in spec {
            match k.as_str() {
                "from" => {
                    from = Some(match v {
                        Bson::Document(d) if d.contains_key("db") => {
                            return Err(err(
                                codes::ILLEGAL_OPERATION,
                                "$lookup from another database is not supported",
                            ))
                        }
                        Bson::Document(d) => match d.get("coll") {
                            Some(c) => string("from.coll", c)?,
                            None => {
                                return Err(err(
                                    codes::FAILED_TO_PARSE,
                                    "$lookup 'from' needs 'coll'",
                                ))
                            }
                        },
                        v => string(k, v)?,
                    })
                }
                "localField" => local = Some(string(k, v)?),
                "foreignField" => foreign = Some(string(k, v)?),
                "as" => as_field = Some(string(k, v)?),
                "let" => match v {
                    Bson::Document(d) => lets = Some(d),
                    _ => {
                        return Err(err(
                            codes::FAILED_TO_PARSE,
                            "$lookup argument 'let' must be an object",
                        ))
                    }
                },
                "pipeline" => pipeline = Some(v),
                _ => {
                    return Err(err(
                        codes::FAILED_TO_PARSE,
                        format!("unknown argument to $lookup: {k}"),
                    ))
                }
            }
        }
        let from = from.ok_or_else(|| {
            err(
                codes::FAILED_TO_PARSE,
                "missing 'from' option to $lookup stage specification",
            )
        })?;
        let as_field = as_field.ok_or_else(|| {
            err(
                codes::FAILED_TO_PARSE,
                "must specify 'as' field for a $lookup",
            )
        })?;
        if as_field.starts_with('$') {
            return Err(err(
                16410,
                format!("$lookup 'as' may not start with '$': {as_field}"),
            ));
        }
        let fields = match (local, foreign) {
            (Some(l), Some(f)) => Some((split_path(&l)?, split_path(&f)?)),
            (None, None) => None,
            _ => {
                return Err(err(
                    codes::FAILED_TO_PARSE,
                    "$lookup requires both or neither of 'localField' and 'foreignField' to be specified",
                ))
            }
        };
        if fields.is_none() && pipeline.is_none() {
            return Err(err(
                codes::FAILED_TO_PARSE,
                "$lookup requires either 'pipeline' or both 'localField' and 'foreignField' to be specified",
            ));
        }
        if lets.is_some() && pipeline.is_none() {
            return Err(err(
                codes::FAILED_TO_PARSE,
                "$lookup with 'let' must also specify 'pipeline'",
            ));
        }
        let mut bound = Vec::new();
        for (name, e) in lets.into_iter().flatten() {
            check_var_name(name, false)?;
            bound.push((name.clone(), Expr::parse_with_vars(e, scope)?));
        }
        let pipeline = match pipeline {
            Some(p) => {
                let mut inner: Vec<&str> = scope.to_vec();
                inner.extend(bound.iter().map(|(n, _)| n.as_str()));
                Some(parse_sub_pipeline(
                    p,
                    "$lookup",
                    limits,
                    &inner,
                    Within::Lookup,
                    depth,
                )?)
            }
            None => None,
        };
        Ok(Lookup {
            from,
            fields,
            as_path: split_path(&as_field)?,
            lets: bound,
            pipeline,
        })
    }

    fn run(
        &self,
        docs: Vec<Document>,
        ctx: &mut dyn StageContext,
        vars: &Variables,
    ) -> Result<Vec<Document>> {
        let foreign = ctx.lookup(&self.from)?;
        // The equality form: foreign documents by each value at foreignField.
        let index = self.fields.as_ref().map(|(_, ff)| {
            let mut index: BTreeMap<Ordered, Vec<usize>> = BTreeMap::new();
            for (i, f) in foreign.iter().enumerate() {
                for v in query_values(f, ff) {
                    let slot = index.entry(Ordered(v)).or_default();
                    if slot.last() != Some(&i) {
                        slot.push(i);
                    }
                }
            }
            index
        });
        let mut out = Vec::with_capacity(docs.len());
        for mut d in docs {
            let matched: Vec<Document> = match (&self.fields, &index) {
                (Some((lf, _)), Some(index)) => {
                    let mut hits = BTreeSet::new();
                    for v in local_values(&d, lf) {
                        if let Some(found) = index.get(&Ordered(v)) {
                            hits.extend(found.iter().copied());
                        }
                    }
                    hits.into_iter().map(|i| foreign[i].clone()).collect()
                }
                _ => foreign.clone(),
            };
            let matched = match &self.pipeline {
                Some(p) => {
                    let mut inner = vars.clone();
                    for (name, e) in &self.lets {
                        inner.bind(name.clone(), e.eval_with(&d, vars)?);
                    }
                    p.run_with(matched, ctx, &inner)?
                }
                None => matched,
            };
            let bytes: usize = matched.iter().map(doc_size).sum();
            if bytes > LOOKUP_BYTES_MAX {
                return Err(err(
                    4568,
                    format!(
                        "Total size of documents in {} matching pipeline's $lookup stage exceeds {LOOKUP_BYTES_MAX} bytes",
                        self.from
                    ),
                ));
            }
            set_dotted(
                &mut d,
                &self.as_path,
                Bson::Array(matched.into_iter().map(Bson::Document).collect()),
            );
            out.push(d);
        }
        Ok(out)
    }
}

/// The values at a path through arrays at every level (an array at the end
/// gives its elements); null when there are none, as `$lookup` matches a
/// missing localField against null.
fn local_values(d: &Document, path: &[String]) -> Vec<Bson> {
    fn walk(v: Option<&Bson>, rest: &[String], out: &mut Vec<Bson>) {
        match v {
            None => {}
            Some(Bson::Array(items)) => {
                for e in items {
                    if rest.is_empty() {
                        out.push(e.clone());
                    } else if let Bson::Document(sub) = e {
                        walk(sub.get(&rest[0]), &rest[1..], out);
                    }
                }
            }
            Some(v) if rest.is_empty() => out.push(v.clone()),
            Some(Bson::Document(sub)) => walk(sub.get(&rest[0]), &rest[1..], out),
            Some(_) => {}
        }
    }
    let mut out = Vec::new();
    walk(d.get(&path[0]), &path[1..], &mut out);
    if out.is_empty() {
        out.push(Bson::Null);
    }
    out
}

/// The values an equality query on `path` compares with: through arrays, an
/// array at the end both whole and element by element, and null where the
/// path is missing.
fn query_values(d: &Document, path: &[String]) -> Vec<Bson> {
    fn walk(v: Option<&Bson>, rest: &[String], out: &mut Vec<Bson>, missing: &mut bool) {
        match v {
            None => *missing = true,
            Some(Bson::Array(items)) if rest.is_empty() => {
                out.push(Bson::Array(items.clone()));
                out.extend(items.iter().cloned());
            }
            Some(v) if rest.is_empty() => out.push(v.clone()),
            Some(Bson::Document(sub)) => walk(sub.get(&rest[0]), &rest[1..], out, missing),
            Some(Bson::Array(items)) => {
                if let Ok(i) = rest[0].parse::<usize>() {
                    if let Some(e) = items.get(i) {
                        walk(Some(e), &rest[1..], out, missing);
                    }
                }
                if items.is_empty() {
                    *missing = true;
                }
                for e in items {
                    match e {
                        Bson::Document(sub) => walk(sub.get(&rest[0]), &rest[1..], out, missing),
                        _ => *missing = true,
                    }
                }
            }
            Some(_) => *missing = true,
        }
    }
    let mut out = Vec::new();
    let mut missing = false;
    walk(d.get(&path[0]), &path[1..], &mut out, &mut missing);
    if missing {
        out.push(Bson::Null);
    }
    out
}

// ---------------------------------------------------------------------------
// $facet

fn facet(
    facets: &[(String, Pipeline)],
    docs: Vec<Document>,
    ctx: &mut dyn StageContext,
    vars: &Variables,
    limits: &Limits,
) -> Result<Vec<Document>> {
    let mut budget = Budget::new(limits, "$facet");
    for d in &docs {
        budget.add_document(d)?;
    }
    let mut out = Document::new();
    let mut output = Budget::new(limits, "$facet");
    for (name, p) in facets {
        let result = p.run_with(docs.clone(), ctx, vars)?;
        for d in &result {
            output.add_document(d)?;
        }
        out.insert(
            name.clone(),
            Bson::Array(result.into_iter().map(Bson::Document).collect()),
        );
    }
    Ok(vec![out])
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{bson, doc, DateTime};
    use std::collections::HashMap;

    /// Other collections and a fixed clock.
    #[derive(Default)]
    struct Ctx {
        collections: HashMap<String, Vec<Document>>,
        lookups: usize,
    }

    impl Ctx {
        fn with(mut self, name: &str, docs: Vec<Document>) -> Ctx {
            self.collections.insert(name.to_string(), docs);
            self
        }
    }

    impl StageContext for Ctx {
        fn lookup(&mut self, from: &str) -> std::result::Result<Vec<Document>, DocError> {
            self.lookups += 1;
            Ok(self.collections.get(from).cloned().unwrap_or_default())
        }

        fn now(&self) -> DateTime {
            DateTime::from_millis(1_700_000_000_000)
        }
    }

    fn stages(b: Bson) -> Vec<Document> {
        match b {
            Bson::Array(items) => items
                .into_iter()
                .map(|s| match s {
                    Bson::Document(d) => d,
                    other => panic!("not a stage: {other}"),
                })
                .collect(),
            other => panic!("not a pipeline: {other}"),
        }
    }

    fn docs(b: Bson) -> Vec<Document> {
        stages(b)
    }

    fn run_in(ctx: &mut Ctx, pipeline: Bson, input: Bson) -> Vec<Document> {
        Pipeline::parse(&stages(pipeline))
            .expect("parses")
            .run(docs(input), ctx)
            .expect("runs")
    }

    fn run(pipeline: Bson, input: Bson) -> Vec<Document> {
        run_in(&mut Ctx::default(), pipeline, input)
    }

    fn parse_code(pipeline: Bson) -> i32 {
        Pipeline::parse(&stages(pipeline))
            .expect_err("fails to parse")
            .code
    }

    fn run_code(pipeline: Bson, input: Bson) -> i32 {
        Pipeline::parse(&stages(pipeline))
            .expect("parses")
            .run(docs(input), &mut Ctx::default())
            .expect_err("fails")
            .code
    }

    fn books() -> Bson {
        bson!([{
            "_id": 1,
            "title": "abc123",
            "isbn": "0001122223334",
            "author": {"last": "zzz", "first": "aaa"},
            "copies": 5,
            "lastModified": "2016-07-28",
        }])
    }

    #[test]
    fn stage_names_and_shapes() {
        let e = Pipeline::parse(&stages(bson!([{"$foo": {}}]))).unwrap_err();
        assert_eq!(e.code, UNRECOGNIZED_STAGE);
        assert_eq!(e.message, "Unrecognized pipeline stage name: '$foo'");
        assert_eq!(parse_code(bson!([{"$limit": 1, "$skip": 1}])), 40323);
        assert_eq!(parse_code(bson!([{}])), 40323);
        assert_eq!(
            parse_code(bson!([{"$sample": {"size": 3}}])),
            NOT_IMPLEMENTED
        );
        let e = Pipeline::parse(&stages(bson!([{"$sample": {"size": 3}}]))).unwrap_err();
        assert!(e.message.contains("random"), "{}", e.message);
        assert_eq!(parse_code(bson!([{"$graphLookup": {}}])), NOT_IMPLEMENTED);
        assert!(
            Pipeline::parse(&[])
                .unwrap()
                .run(vec![doc! {"a": 1}], &mut Ctx::default())
                .unwrap()
                .len()
                == 1
        );
    }

    #[test]
    fn out_is_parsed_not_run() {
        let p = Pipeline::parse(&stages(bson!([{"$limit": 1}, {"$out": "archive"}]))).unwrap();
        assert_eq!(p.out(), Some("archive"));
        let out = p
            .run(docs(bson!([{"a": 1}, {"a": 2}])), &mut Ctx::default())
            .unwrap();
        assert_eq!(out, docs(bson!([{"a": 1}])));
        let p = Pipeline::parse(&stages(bson!([{"$out": {"coll": "c"}}]))).unwrap();
        assert_eq!(p.out(), Some("c"));
        assert_eq!(parse_code(bson!([{"$out": "x"}, {"$limit": 1}])), 40601);
        assert_eq!(parse_code(bson!([{"$out": ""}])), codes::INVALID_NAMESPACE);
        assert_eq!(
            parse_code(bson!([{"$out": {"db": "other", "coll": "c"}}])),
            codes::ILLEGAL_OPERATION
        );
        assert_eq!(
            parse_code(bson!([{"$facet": {"a": [{"$out": "x"}]}}])),
            40600
        );
        assert_eq!(
            parse_code(bson!([{"$lookup": {"from": "x", "pipeline": [{"$out": "y"}], "as": "z"}}])),
            51047
        );
        assert_eq!(
            Pipeline::parse(&stages(bson!([{"$limit": 1}])))
                .unwrap()
                .out(),
            None
        );
    }

    #[test]
    fn leading_stages_for_push_down() {
        let p = Pipeline::parse(&stages(bson!([
            {"$match": {"$expr": {"$gt": ["$a", 1]}}},
            {"$sort": {"a": -1}},
            {"$limit": 5},
            {"$skip": 1},
        ])))
        .unwrap();
        assert_eq!(p.leading_match(), Some(&doc! {"$expr": {"$gt": ["$a", 1]}}));
        assert_eq!(p.leading_sort(), Some(&doc! {"a": -1}));
        assert_eq!(p.leading_limit(), Some(5));
        let p = Pipeline::parse(&stages(
            bson!([{"$sort": {"a": 1}}, {"$skip": 1}, {"$limit": 5}]),
        ))
        .unwrap();
        assert_eq!(p.leading_match(), None);
        assert_eq!(p.leading_sort(), Some(&doc! {"a": 1}));
        assert_eq!(p.leading_limit(), None, "a $skip comes first");
        let p = Pipeline::parse(&stages(bson!([{"$limit": 3}]))).unwrap();
        assert_eq!(p.leading_limit(), Some(3));
    }

    #[test]
    fn match_by_expression() {
        let out = run(
            bson!([{"$match": {"$expr": {"$gt": ["$spent", "$budget"]}}}]),
            bson!([
                {"_id": 1, "category": "food", "budget": 400, "spent": 450},
                {"_id": 2, "category": "drinks", "budget": 100, "spent": 150},
                {"_id": 3, "category": "clothes", "budget": 100, "spent": 50},
            ]),
        );
        assert_eq!(
            out.iter()
                .map(|d| d.get_i32("_id").unwrap())
                .collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(parse_code(bson!([{"$match": 1}])), 15959);
    }

    #[test]
    fn match_by_filter() {
        let articles = bson!([
            {"_id": 1, "author": "dave", "score": 80, "views": 100},
            {"_id": 2, "author": "dave", "score": 85, "views": 521},
            {"_id": 3, "author": "ahn", "score": 60, "views": 1000},
            {"_id": 4, "author": "li", "score": 55, "views": 5000},
            {"_id": 5, "author": "annT", "score": 60, "views": 50},
            {"_id": 6, "author": "li", "score": 94, "views": 999},
            {"_id": 7, "author": "ty", "score": 95, "views": 1000},
        ]);
        let out = run(bson!([{"$match": {"author": "dave"}}]), articles.clone());
        assert_eq!(out.len(), 2);
        let out = run(
            bson!([
                {"$match": {"$or": [{"score": {"$gt": 70, "$lt": 90}}, {"views": {"$gte": 1000}}]}},
                {"$group": {"_id": null, "count": {"$sum": 1}}},
            ]),
            articles,
        );
        assert_eq!(out, docs(bson!([{"_id": null, "count": 5}])));
    }

    #[test]
    fn project_includes_excludes_and_computes() {
        assert_eq!(
            run(bson!([{"$project": {"title": 1, "author": 1}}]), books()),
            docs(bson!([{"_id": 1, "title": "abc123", "author": {"last": "zzz", "first": "aaa"}}]))
        );
        assert_eq!(
            run(
                bson!([{"$project": {"_id": 0, "title": 1, "author": 1}}]),
                books()
            ),
            docs(bson!([{"title": "abc123", "author": {"last": "zzz", "first": "aaa"}}]))
        );
        assert_eq!(
            run(
                bson!([{"$project": {"lastModified": 0, "author.first": 0, "isbn": false}}]),
                books()
            ),
            docs(bson!([{"_id": 1, "title": "abc123", "author": {"last": "zzz"}, "copies": 5}]))
        );
        assert_eq!(
            run(
                bson!([{"$project": {"_id": 0}}]),
                bson!([{"_id": 1, "a": 2}])
            ),
            docs(bson!([{"a": 2}]))
        );
        assert_eq!(
            run(
                bson!([{"$project": {"title": 1, "author": {"first": 1}}}]),
                books()
            ),
            docs(bson!([{"_id": 1, "title": "abc123", "author": {"first": "aaa"}}]))
        );
        // The documentation's computed fields.
        assert_eq!(
            run(
                bson!([{"$project": {
                    "title": 1,
                    "isbn": {
                        "prefix": {"$substr": ["$isbn", 0, 3]},
                        "group": {"$substr": ["$isbn", 3, 2]},
                        "publisher": {"$substr": ["$isbn", 5, 4]},
                        "title": {"$substr": ["$isbn", 9, 3]},
                        "checkDigit": {"$substr": ["$isbn", 12, 1]},
                    },
                    "lastName": "$author.last",
                    "copiesSold": "$copies",
                }}]),
                books()
            ),
            docs(bson!([{
                "_id": 1,
                "title": "abc123",
                "isbn": {"prefix": "000", "group": "11", "publisher": "2222", "title": "333", "checkDigit": "4"},
                "lastName": "zzz",
                "copiesSold": 5,
            }]))
        );
        // Literal values and new arrays.
        assert_eq!(
            run(
                bson!([{"$project": {"_id": 0, "kind": "book", "both": ["$title", "$missing"], "lit": {"$literal": 1}}}]),
                books()
            ),
            docs(bson!([{"kind": "book", "both": ["abc123", null], "lit": 1}]))
        );
    }

    #[test]
    fn project_remove_and_missing() {
        let input = bson!([
            {"_id": 1, "title": "abc123", "author": {"last": "zzz", "first": "aaa"}},
            {"_id": 2, "title": "Baked Goods", "author": {"last": "xyz", "first": "abc", "middle": ""}},
        ]);
        let out = run(
            bson!([{"$project": {
                "title": 1,
                "author.first": 1,
                "author.middle": {"$cond": {"if": {"$eq": ["", "$author.middle"]}, "then": "$$REMOVE", "else": "$author.middle"}},
                "gone": "$nothing",
            }}]),
            input,
        );
        assert_eq!(
            out,
            docs(bson!([
                {"_id": 1, "title": "abc123", "author": {"first": "aaa"}},
                {"_id": 2, "title": "Baked Goods", "author": {"first": "abc"}},
            ]))
        );
    }

    #[test]
    fn project_through_arrays() {
        let input = bson!([{"_id": 1, "a": [{"b": 1, "c": 2}, 5, [{"b": 3, "d": 4}], {"c": 6}]}]);
        assert_eq!(
            run(bson!([{"$project": {"a.b": 1}}]), input.clone()),
            docs(bson!([{"_id": 1, "a": [{"b": 1}, [{"b": 3}], {}]}]))
        );
        assert_eq!(
            run(bson!([{"$project": {"a.b": 0}}]), input.clone()),
            docs(bson!([{"_id": 1, "a": [{"c": 2}, 5, [{"d": 4}], {"c": 6}]}]))
        );
        assert_eq!(
            run(bson!([{"$project": {"_id": 0, "a.x": "$_id"}}]), input),
            docs(bson!([{"a": [{"x": 1}, [{"x": 1}], {"x": 1}]}]))
        );
    }

    #[test]
    fn project_id_first_and_errors() {
        assert_eq!(
            run(
                bson!([{"$project": {"x": 1, "_id": "$x"}}]),
                bson!([{"_id": 9, "x": 3}])
            ),
            docs(bson!([{"_id": 3, "x": 3}]))
        );
        let out = run(
            bson!([{"$project": {"x": 1, "_id": "$x"}}]),
            bson!([{"_id": 9, "x": 3}]),
        );
        assert_eq!(out[0].keys().next().map(String::as_str), Some("_id"));
        assert_eq!(parse_code(bson!([{"$project": {}}])), 51272);
        assert_eq!(parse_code(bson!([{"$project": {"a": 1, "b": 0}}])), 31254);
        assert_eq!(
            parse_code(bson!([{"$project": {"a": "$x", "b": 0}}])),
            31252
        );
        assert_eq!(parse_code(bson!([{"$project": {"a": 1, "a.b": 1}}])), 31250);
        assert_eq!(parse_code(bson!([{"$project": {"a.b": 1, "a": 1}}])), 31250);
        assert_eq!(parse_code(bson!([{"$project": {"a": {}}}])), 51270);
        assert_eq!(parse_code(bson!([{"$project": {"$a": 1}}])), 16410);
        assert_eq!(parse_code(bson!([{"$project": {"a": {"$bogus": 1}}}])), 168);
        assert_eq!(parse_code(bson!([{"$project": 1}])), 15969);
        // _id may be excluded in an inclusion and included in an exclusion.
        assert_eq!(
            run(
                bson!([{"$project": {"_id": 1, "a": 0}}]),
                bson!([{"_id": 1, "a": 2, "b": 3}])
            ),
            docs(bson!([{"_id": 1, "b": 3}]))
        );
        assert_eq!(
            run(
                bson!([{"$project": {"_id": 1}}]),
                bson!([{"_id": 1, "a": 2}])
            ),
            docs(bson!([{"_id": 1}]))
        );
    }

    #[test]
    fn add_fields_and_set() {
        let scores = bson!([
            {"_id": 1, "student": "Maya", "homework": [10, 5, 10], "quiz": [10, 8], "extraCredit": 0},
            {"_id": 2, "student": "Ryan", "homework": [5, 6, 5], "quiz": [8, 8], "extraCredit": 8},
        ]);
        let out = run(
            bson!([
                {"$addFields": {"totalHomework": {"$sum": "$homework"}, "totalQuiz": {"$sum": "$quiz"}}},
                {"$set": {"totalScore": {"$add": ["$totalHomework", "$totalQuiz", "$extraCredit"]}}},
            ]),
            scores,
        );
        assert_eq!(
            out,
            docs(bson!([
                {"_id": 1, "student": "Maya", "homework": [10, 5, 10], "quiz": [10, 8], "extraCredit": 0, "totalHomework": 25, "totalQuiz": 18, "totalScore": 43},
                {"_id": 2, "student": "Ryan", "homework": [5, 6, 5], "quiz": [8, 8], "extraCredit": 8, "totalHomework": 16, "totalQuiz": 16, "totalScore": 40},
            ]))
        );
        let vehicles = bson!([{"_id": 1, "type": "car", "specs": {"doors": 4, "wheels": 4}}]);
        let merged = docs(
            bson!([{"_id": 1, "type": "car", "specs": {"doors": 4, "wheels": 4, "fuel_type": "unleaded"}}]),
        );
        assert_eq!(
            run(
                bson!([{"$addFields": {"specs.fuel_type": "unleaded"}}]),
                vehicles.clone()
            ),
            merged
        );
        assert_eq!(
            run(
                bson!([{"$addFields": {"specs": {"fuel_type": "unleaded"}}}]),
                vehicles.clone()
            ),
            merged
        );
        // Overwrite in place, remove with $$REMOVE, set an empty document.
        assert_eq!(
            run(
                bson!([{"$set": {"_id": "$type", "type": "$$REMOVE", "extra": {}}}]),
                vehicles
            ),
            docs(bson!([{"_id": "car", "specs": {"doors": 4, "wheels": 4}, "extra": {}}]))
        );
        // Through arrays: every element gets the field; scalars become documents.
        assert_eq!(
            run(
                bson!([{"$addFields": {"a.b": 1}}]),
                bson!([{"a": [{"c": 0}, 5]}, {"a": 7}])
            ),
            docs(bson!([{"a": [{"c": 0, "b": 1}, {"b": 1}]}, {"a": {"b": 1}}]))
        );
        assert_eq!(
            run(bson!([{"$addFields": {"now": "$$NOW"}}]), bson!([{}])),
            docs(bson!([{"now": DateTime::from_millis(1_700_000_000_000)}]))
        );
        assert_eq!(
            parse_code(bson!([{"$addFields": {"a": 1, "a.b": 2}}])),
            31250
        );
    }

    #[test]
    fn unset() {
        let input = bson!([{"_id": 1, "title": "t", "isbn": "x", "author": {"first": "a", "last": "b"}, "copies": [{"warehouse": "A", "qty": 5}]}]);
        assert_eq!(
            run(
                bson!([{"$unset": ["isbn", "author.first", "copies.warehouse"]}]),
                input.clone()
            ),
            docs(
                bson!([{"_id": 1, "title": "t", "author": {"last": "b"}, "copies": [{"qty": 5}]}])
            )
        );
        assert_eq!(
            run(bson!([{"$unset": "copies"}]), input),
            docs(
                bson!([{"_id": 1, "title": "t", "isbn": "x", "author": {"first": "a", "last": "b"}}])
            )
        );
        assert_eq!(parse_code(bson!([{"$unset": []}])), 31119);
        assert_eq!(parse_code(bson!([{"$unset": [1]}])), 31120);
        assert_eq!(parse_code(bson!([{"$unset": 1}])), 31002);
    }

    fn sales() -> Bson {
        let d = |s: &str| Bson::DateTime(DateTime::parse_rfc3339_str(s).unwrap());
        bson!([
            {"_id": 1, "item": "abc", "price": 10, "quantity": 2, "date": d("2014-03-01T08:00:00Z")},
            {"_id": 2, "item": "jkl", "price": 20, "quantity": 1, "date": d("2014-03-01T09:00:00Z")},
            {"_id": 3, "item": "xyz", "price": 5, "quantity": 10, "date": d("2014-03-15T09:00:00Z")},
            {"_id": 4, "item": "xyz", "price": 5, "quantity": 20, "date": d("2014-04-04T11:21:39.736Z")},
            {"_id": 5, "item": "abc", "price": 10, "quantity": 10, "date": d("2014-04-04T21:23:13.331Z")},
            {"_id": 6, "item": "def", "price": 7.5, "quantity": 5, "date": d("2015-06-04T05:08:13Z")},
            {"_id": 7, "item": "def", "price": 7.5, "quantity": 10, "date": d("2015-09-10T08:43:00Z")},
            {"_id": 8, "item": "abc", "price": 10, "quantity": 5, "date": d("2016-02-06T20:20:13Z")},
        ])
    }

    #[test]
    fn group_with_the_documentation_examples() {
        let out = run(
            bson!([
                {"$match": {"$expr": {"$and": [
                    {"$gte": ["$date", {"$toDate": "2014-01-01"}]},
                    {"$lt": ["$date", {"$toDate": "2015-01-01"}]},
                ]}}},
                {"$group": {
                    "_id": {"$dateToString": {"format": "%Y-%m-%d", "date": "$date"}},
                    "totalSaleAmount": {"$sum": {"$multiply": ["$price", "$quantity"]}},
                    "averageQuantity": {"$avg": "$quantity"},
                    "count": {"$sum": 1},
                }},
                {"$sort": {"totalSaleAmount": -1}},
            ]),
            sales(),
        );
        assert_eq!(
            out,
            docs(bson!([
                {"_id": "2014-04-04", "totalSaleAmount": 200, "averageQuantity": 15.0, "count": 2},
                {"_id": "2014-03-15", "totalSaleAmount": 50, "averageQuantity": 10.0, "count": 1},
                {"_id": "2014-03-01", "totalSaleAmount": 40, "averageQuantity": 1.5, "count": 2},
            ]))
        );
        let out = run(
            bson!([{"$group": {
                "_id": null,
                "totalSaleAmount": {"$sum": {"$multiply": ["$price", "$quantity"]}},
                "averageQuantity": {"$avg": "$quantity"},
                "count": {"$count": {}},
            }}]),
            sales(),
        );
        assert_eq!(
            out,
            docs(
                bson!([{"_id": null, "totalSaleAmount": 452.5, "averageQuantity": 7.875, "count": 8}])
            )
        );
        // Groups come out in order of first appearance.
        let out = run(
            bson!([{"$group": {
                "_id": "$item",
                "first": {"$first": "$quantity"},
                "last": {"$last": "$quantity"},
                "min": {"$min": "$quantity"},
                "max": {"$max": "$quantity"},
                "all": {"$push": "$quantity"},
                "prices": {"$addToSet": "$price"},
            }}]),
            sales(),
        );
        assert_eq!(
            out,
            docs(bson!([
                {"_id": "abc", "first": 2, "last": 5, "min": 2, "max": 10, "all": [2, 10, 5], "prices": [10]},
                {"_id": "jkl", "first": 1, "last": 1, "min": 1, "max": 1, "all": [1], "prices": [20]},
                {"_id": "xyz", "first": 10, "last": 20, "min": 10, "max": 20, "all": [10, 20], "prices": [5]},
                {"_id": "def", "first": 5, "last": 10, "min": 5, "max": 10, "all": [5, 10], "prices": [7.5]},
            ]))
        );
        assert!(run(
            bson!([{"$group": {"_id": null, "n": {"$sum": 1}}}]),
            bson!([])
        )
        .is_empty());
    }

    #[test]
    fn group_keys_null_missing_numbers_documents() {
        let input = bson!([
            {"k": 1, "v": 1}, {"k": 1.0, "v": 2}, {"k": 1i64, "v": 3},
            {"k": null, "v": 4}, {"v": 5},
            {"k": {"a": 1}, "v": 6}, {"k": {"a": 1.0}, "v": 7},
        ]);
        let out = run(
            bson!([{"$group": {"_id": "$k", "vs": {"$push": "$v"}}}]),
            input.clone(),
        );
        assert_eq!(
            out,
            docs(bson!([
                {"_id": 1, "vs": [1, 2, 3]},
                {"_id": null, "vs": [4, 5]},
                {"_id": {"a": 1}, "vs": [6, 7]},
            ]))
        );
        // Fields of an _id document that are missing are left out of the key.
        let out = run(
            bson!([{"$group": {"_id": {"k": "$k"}, "n": {"$sum": 1}}}]),
            input,
        );
        assert_eq!(
            out.iter()
                .map(|d| d.get("_id").unwrap().clone())
                .collect::<Vec<_>>(),
            vec![
                bson!({"k": 1}),
                bson!({"k": null}),
                bson!({}),
                bson!({"k": {"a": 1}})
            ]
        );
        // $first of a missing value is null; $push skips missing values.
        let out = run(
            bson!([{"$group": {"_id": null, "f": {"$first": "$x"}, "p": {"$push": "$x"}, "m": {"$max": "$x"}, "s": {"$stdDevPop": "$v"}}}]),
            bson!([{"v": 1}, {"x": 2, "v": 3}]),
        );
        assert_eq!(
            out,
            docs(bson!([{"_id": null, "f": null, "p": [2], "m": 2, "s": 1.0}]))
        );
        let out = run(
            bson!([{"$group": {"_id": null, "merged": {"$mergeObjects": "$d"}}}]),
            bson!([{"d": {"a": 1, "b": 1}}, {"d": null}, {"d": {"b": 2}}]),
        );
        assert_eq!(
            out,
            docs(bson!([{"_id": null, "merged": {"a": 1, "b": 2}}]))
        );
    }

    #[test]
    fn group_errors() {
        assert_eq!(parse_code(bson!([{"$group": {"n": {"$sum": 1}}}])), 15955);
        assert_eq!(
            parse_code(bson!([{"$group": {"_id": null, "n": {"$bogus": 1}}}])),
            15952
        );
        assert_eq!(
            parse_code(bson!([{"$group": {"_id": null, "n": {"$sum": [1, 2]}}}])),
            40237
        );
        assert_eq!(
            parse_code(bson!([{"$group": {"_id": null, "a.b": {"$sum": 1}}}])),
            40235
        );
        assert_eq!(
            parse_code(bson!([{"$group": {"_id": null, "n": {"$sum": 1, "$avg": 1}}}])),
            40238
        );
        assert_eq!(
            parse_code(bson!([{"$group": {"_id": null, "n": 1}}])),
            40234
        );
        assert_eq!(
            parse_code(bson!([{"$group": {"_id": null, "n": {"$count": 1}}}])),
            codes::TYPE_MISMATCH
        );
        assert_eq!(
            run_code(
                bson!([{"$group": {"_id": null, "m": {"$mergeObjects": "$d"}}}]),
                bson!([{"d": 1}])
            ),
            40400
        );
    }

    #[test]
    fn group_memory_is_bounded() {
        let limits = Limits {
            max_documents: 2,
            max_bytes: 1 << 20,
        };
        let p = Pipeline::parse_with(&stages(bson!([{"$group": {"_id": "$k"}}])), limits).unwrap();
        let e = p
            .run(
                docs(bson!([{"k": 1}, {"k": 2}, {"k": 3}])),
                &mut Ctx::default(),
            )
            .unwrap_err();
        assert_eq!(e.code, QUERY_EXCEEDED_MEMORY_LIMIT);
        assert!(p
            .run(
                docs(bson!([{"k": 1}, {"k": 2}, {"k": 1}])),
                &mut Ctx::default()
            )
            .is_ok());
        let limits = Limits {
            max_documents: 10,
            max_bytes: 1000,
        };
        let p = Pipeline::parse_with(
            &stages(bson!([{"$group": {"_id": null, "all": {"$push": "$s"}}}])),
            limits,
        )
        .unwrap();
        let big = "x".repeat(300);
        let e = p
            .run(
                docs(
                    bson!([{"s": big.clone()}, {"s": big.clone()}, {"s": big.clone()}, {"s": big}]),
                ),
                &mut Ctx::default(),
            )
            .unwrap_err();
        assert_eq!(e.code, QUERY_EXCEEDED_MEMORY_LIMIT);
        // What $first and $last keep counts too: one value per group.
        let p = Pipeline::parse_with(
            &stages(bson!([{"$group": {"_id": "$k", "doc": {"$first": "$$ROOT"}}}])),
            limits,
        )
        .unwrap();
        let input = (0..4)
            .map(|k| doc! {"k": k, "s": "x".repeat(300)})
            .collect();
        assert_eq!(
            p.run(input, &mut Ctx::default()).unwrap_err().code,
            QUERY_EXCEEDED_MEMORY_LIMIT
        );
        let p = Pipeline::parse_with(
            &stages(bson!([{"$group": {"_id": null, "doc": {"$last": "$$ROOT"}}}])),
            limits,
        )
        .unwrap();
        let input = (0..10)
            .map(|k| doc! {"k": k, "s": "x".repeat(300)})
            .collect();
        assert!(
            p.run(input, &mut Ctx::default()).is_ok(),
            "$last holds one value, not all"
        );
    }

    #[test]
    fn sort_semantics() {
        let input = bson!([
            {"_id": 1, "a": [3, 1]},
            {"_id": 2, "a": 2},
            {"_id": 3},
            {"_id": 4, "a": []},
            {"_id": 5, "a": null},
            {"_id": 6, "a": [0, 5]},
            {"_id": 7, "a": "s"},
        ]);
        let ids = |out: Vec<Document>| {
            out.iter()
                .map(|d| d.get_i32("_id").unwrap())
                .collect::<Vec<_>>()
        };
        // Ascending by the smallest element; [] below null; missing as null (stable).
        assert_eq!(
            ids(run(bson!([{"$sort": {"a": 1}}]), input.clone())),
            [4, 3, 5, 6, 1, 2, 7]
        );
        // Descending by the largest element.
        assert_eq!(
            ids(run(bson!([{"$sort": {"a": -1}}]), input)),
            [7, 6, 1, 2, 3, 5, 4]
        );
        let input = bson!([
            {"_id": 1, "x": 1, "y": "b"},
            {"_id": 2, "x": 2, "y": "a"},
            {"_id": 3, "x": 1, "y": "a"},
            {"_id": 4, "x": 1.0, "y": "a"},
        ]);
        assert_eq!(
            ids(run(bson!([{"$sort": {"x": 1, "y": 1}}]), input.clone())),
            [3, 4, 1, 2]
        );
        assert_eq!(
            ids(run(bson!([{"$sort": {"x": -1, "y": -1}}]), input)),
            [2, 1, 3, 4]
        );
        // Paths through arrays of documents.
        let input = bson!([
            {"_id": 1, "a": [{"b": 5}, {"b": 1}]},
            {"_id": 2, "a": [{"b": 3}]},
            {"_id": 3, "a": {"b": 2}},
        ]);
        assert_eq!(
            ids(run(bson!([{"$sort": {"a.b": 1}}]), input.clone())),
            [1, 3, 2]
        );
        assert_eq!(ids(run(bson!([{"$sort": {"a.b": -1}}]), input)), [1, 2, 3]);
        assert_eq!(parse_code(bson!([{"$sort": {}}])), 15976);
        assert_eq!(parse_code(bson!([{"$sort": {"a": 2}}])), 15975);
        assert_eq!(
            parse_code(bson!([{"$sort": {"a": {"$meta": "textScore"}}}])),
            17312
        );
        assert_eq!(parse_code(bson!([{"$sort": 1}])), 15973);
    }

    #[test]
    fn sort_memory_counts_only_the_top_n_before_a_limit() {
        let limits = Limits {
            max_documents: 2,
            max_bytes: 1 << 20,
        };
        let input = bson!([{"a": 3}, {"a": 1}, {"a": 2}]);
        let p = Pipeline::parse_with(&stages(bson!([{"$sort": {"a": 1}}])), limits).unwrap();
        assert_eq!(
            p.run(docs(input.clone()), &mut Ctx::default())
                .unwrap_err()
                .code,
            QUERY_EXCEEDED_MEMORY_LIMIT
        );
        let p = Pipeline::parse_with(&stages(bson!([{"$sort": {"a": 1}}, {"$limit": 2}])), limits)
            .unwrap();
        assert_eq!(
            p.run(docs(input), &mut Ctx::default()).unwrap(),
            docs(bson!([{"a": 1}, {"a": 2}]))
        );
    }

    #[test]
    fn limit_and_skip() {
        let input = bson!([{"a": 1}, {"a": 2}, {"a": 3}]);
        assert_eq!(
            run(bson!([{"$skip": 1}, {"$limit": 1}]), input.clone()),
            docs(bson!([{"a": 2}]))
        );
        assert_eq!(run(bson!([{"$skip": 5}]), input.clone()), vec![]);
        assert_eq!(run(bson!([{"$limit": 5i64}]), input.clone()).len(), 3);
        assert_eq!(run(bson!([{"$limit": 2.0}]), input).len(), 2);
        assert_eq!(parse_code(bson!([{"$limit": 0}])), 15958);
        assert_eq!(parse_code(bson!([{"$limit": "1"}])), 15957);
        assert_eq!(parse_code(bson!([{"$limit": 1.5}])), 15957);
        assert_eq!(parse_code(bson!([{"$skip": -1}])), 5107200);
        assert_eq!(parse_code(bson!([{"$skip": "a"}])), 15972);
    }

    #[test]
    fn unwind() {
        assert_eq!(
            run(
                bson!([{"$unwind": "$sizes"}]),
                bson!([{"_id": 1, "item": "ABC1", "sizes": ["S", "M", "L"]}])
            ),
            docs(bson!([
                {"_id": 1, "item": "ABC1", "sizes": "S"},
                {"_id": 1, "item": "ABC1", "sizes": "M"},
                {"_id": 1, "item": "ABC1", "sizes": "L"},
            ]))
        );
        let inventory = bson!([
            {"_id": 1, "item": "ABC", "sizes": ["S", "M"]},
            {"_id": 2, "item": "EFG", "sizes": []},
            {"_id": 3, "item": "IJK", "sizes": "M"},
            {"_id": 4, "item": "LMN"},
            {"_id": 5, "item": "XYZ", "sizes": null},
        ]);
        assert_eq!(
            run(bson!([{"$unwind": "$sizes"}]), inventory.clone()),
            docs(bson!([
                {"_id": 1, "item": "ABC", "sizes": "S"},
                {"_id": 1, "item": "ABC", "sizes": "M"},
                {"_id": 3, "item": "IJK", "sizes": "M"},
            ]))
        );
        assert_eq!(
            run(
                bson!([{"$unwind": {"path": "$sizes", "includeArrayIndex": "arrayIndex", "preserveNullAndEmptyArrays": true}}]),
                inventory
            ),
            docs(bson!([
                {"_id": 1, "item": "ABC", "sizes": "S", "arrayIndex": 0i64},
                {"_id": 1, "item": "ABC", "sizes": "M", "arrayIndex": 1i64},
                {"_id": 2, "item": "EFG", "arrayIndex": null},
                {"_id": 3, "item": "IJK", "sizes": "M", "arrayIndex": null},
                {"_id": 4, "item": "LMN", "arrayIndex": null},
                {"_id": 5, "item": "XYZ", "sizes": null, "arrayIndex": null},
            ]))
        );
        assert_eq!(
            run(
                bson!([{"$unwind": "$a.b"}]),
                bson!([{"a": {"b": [1, 2], "c": 0}}])
            ),
            docs(bson!([{"a": {"b": 1, "c": 0}}, {"a": {"b": 2, "c": 0}}]))
        );
        assert_eq!(parse_code(bson!([{"$unwind": "sizes"}])), 28818);
        assert_eq!(
            parse_code(bson!([{"$unwind": {"path": "$a", "bogus": 1}}])),
            28811
        );
        assert_eq!(
            parse_code(bson!([{"$unwind": {"includeArrayIndex": "i"}}])),
            28812
        );
        assert_eq!(
            parse_code(bson!([{"$unwind": {"path": "$a", "includeArrayIndex": "$i"}}])),
            28822
        );
        assert_eq!(
            parse_code(bson!([{"$unwind": {"path": "$a", "preserveNullAndEmptyArrays": 1}}])),
            28809
        );
        assert_eq!(parse_code(bson!([{"$unwind": 1}])), 15981);
        let limits = Limits {
            max_documents: 3,
            max_bytes: 1 << 20,
        };
        let p = Pipeline::parse_with(&stages(bson!([{"$unwind": "$a"}])), limits).unwrap();
        assert_eq!(
            p.run(docs(bson!([{"a": [1, 2, 3, 4]}])), &mut Ctx::default())
                .unwrap_err()
                .code,
            QUERY_EXCEEDED_MEMORY_LIMIT
        );
    }

    #[test]
    fn count() {
        let scores = bson!([
            {"_id": 1, "subject": "History", "score": 88},
            {"_id": 2, "subject": "History", "score": 92},
            {"_id": 3, "subject": "History", "score": 97},
            {"_id": 4, "subject": "History", "score": 71},
            {"_id": 5, "subject": "History", "score": 79},
            {"_id": 6, "subject": "History", "score": 83},
        ]);
        assert_eq!(
            run(
                bson!([{"$match": {"$expr": {"$gt": ["$score", 80]}}}, {"$count": "passing_scores"}]),
                scores
            ),
            docs(bson!([{"passing_scores": 4}]))
        );
        assert!(run(bson!([{"$count": "n"}]), bson!([])).is_empty());
        assert_eq!(parse_code(bson!([{"$count": ""}])), 40156);
        assert_eq!(parse_code(bson!([{"$count": "$n"}])), 40158);
        assert_eq!(parse_code(bson!([{"$count": "a.b"}])), 40160);
    }

    #[test]
    fn lookup_equality() {
        let orders = bson!([
            {"_id": 1, "item": "almonds", "price": 12, "quantity": 2},
            {"_id": 2, "item": "pecans", "price": 20, "quantity": 1},
            {"_id": 3},
        ]);
        let inventory = docs(bson!([
            {"_id": 1, "sku": "almonds", "description": "product 1", "instock": 120},
            {"_id": 2, "sku": "bread", "description": "product 2", "instock": 80},
            {"_id": 3, "sku": "cashews", "description": "product 3", "instock": 60},
            {"_id": 4, "sku": "pecans", "description": "product 4", "instock": 70},
            {"_id": 5, "sku": null, "description": "Incomplete"},
            {"_id": 6},
        ]));
        let mut ctx = Ctx::default().with("inventory", inventory);
        let out = run_in(
            &mut ctx,
            bson!([{"$lookup": {"from": "inventory", "localField": "item", "foreignField": "sku", "as": "inventory_docs"}}]),
            orders,
        );
        assert_eq!(
            ctx.lookups, 1,
            "the foreign collection is read once per run"
        );
        assert_eq!(
            out,
            docs(bson!([
                {"_id": 1, "item": "almonds", "price": 12, "quantity": 2, "inventory_docs": [
                    {"_id": 1, "sku": "almonds", "description": "product 1", "instock": 120},
                ]},
                {"_id": 2, "item": "pecans", "price": 20, "quantity": 1, "inventory_docs": [
                    {"_id": 4, "sku": "pecans", "description": "product 4", "instock": 70},
                ]},
                {"_id": 3, "inventory_docs": [
                    {"_id": 5, "sku": null, "description": "Incomplete"},
                    {"_id": 6},
                ]},
            ]))
        );
    }

    #[test]
    fn lookup_matches_arrays_element_wise() {
        let classes = bson!([
            {"_id": 1, "title": "Reading is ...", "enrollmentlist": ["giraffe2", "pandabear", "artie"]},
            {"_id": 2, "title": "But Writing ...", "enrollmentlist": ["giraffe1", "artie"]},
        ]);
        let members = docs(bson!([
            {"_id": 1, "name": "artie"},
            {"_id": 2, "name": "giraffe"},
            {"_id": 3, "name": "giraffe1"},
            {"_id": 4, "name": "panda"},
            {"_id": 5, "name": "pandabear"},
            {"_id": 6, "name": "giraffe2"},
        ]));
        let mut ctx = Ctx::default().with("members", members);
        let out = run_in(
            &mut ctx,
            bson!([
                {"$lookup": {"from": "members", "localField": "enrollmentlist", "foreignField": "name", "as": "enrollee_info"}},
                {"$project": {"ids": "$enrollee_info._id"}},
            ]),
            classes,
        );
        // Foreign documents come in their collection's order.
        assert_eq!(
            out,
            docs(bson!([{"_id": 1, "ids": [1, 5, 6]}, {"_id": 2, "ids": [1, 3]}]))
        );
        // A foreign array matches any of its elements; the join can nest.
        let mut ctx = Ctx::default().with(
            "tags",
            docs(bson!([{"_id": "t", "names": ["x", "y"]}, {"_id": "u", "names": "z"}])),
        );
        let out = run_in(
            &mut ctx,
            bson!([{"$lookup": {"from": "tags", "localField": "tag", "foreignField": "names", "as": "found.tags"}}]),
            bson!([{"tag": "y"}, {"tag": 1}]),
        );
        assert_eq!(
            out,
            docs(bson!([
                {"tag": "y", "found": {"tags": [{"_id": "t", "names": ["x", "y"]}]}},
                {"tag": 1, "found": {"tags": []}},
            ]))
        );
    }

    #[test]
    fn lookup_with_let_and_pipeline() {
        let orders = bson!([
            {"_id": 1, "item": "almonds", "price": 12, "ordered": 2},
            {"_id": 2, "item": "pecans", "price": 20, "ordered": 1},
            {"_id": 3, "item": "cookies", "price": 10, "ordered": 60},
        ]);
        let warehouses = docs(bson!([
            {"_id": 1, "stock_item": "almonds", "warehouse": "A", "instock": 120},
            {"_id": 2, "stock_item": "pecans", "warehouse": "A", "instock": 80},
            {"_id": 3, "stock_item": "almonds", "warehouse": "B", "instock": 60},
            {"_id": 4, "stock_item": "cookies", "warehouse": "B", "instock": 40},
            {"_id": 5, "stock_item": "cookies", "warehouse": "A", "instock": 80},
        ]));
        let mut ctx = Ctx::default().with("warehouses", warehouses);
        let out = run_in(
            &mut ctx,
            bson!([{"$lookup": {
                "from": "warehouses",
                "let": {"order_item": "$item", "order_qty": "$ordered"},
                "pipeline": [
                    {"$match": {"$expr": {"$and": [
                        {"$eq": ["$stock_item", "$$order_item"]},
                        {"$gte": ["$instock", "$$order_qty"]},
                    ]}}},
                    {"$project": {"stock_item": 0, "_id": 0}},
                ],
                "as": "stockdata",
            }}]),
            orders,
        );
        let stock: Vec<Bson> = out
            .iter()
            .map(|d| d.get("stockdata").unwrap().clone())
            .collect();
        assert_eq!(
            stock,
            vec![
                bson!([{"warehouse": "A", "instock": 120}, {"warehouse": "B", "instock": 60}]),
                bson!([{"warehouse": "A", "instock": 80}]),
                bson!([{"warehouse": "A", "instock": 80}]),
            ]
        );
        // The equality and pipeline forms together.
        let mut ctx = Ctx::default().with(
            "w",
            docs(bson!([{"s": "a", "n": 1}, {"s": "a", "n": 5}, {"s": "b", "n": 9}])),
        );
        let out = run_in(
            &mut ctx,
            bson!([{"$lookup": {"from": "w", "localField": "item", "foreignField": "s", "let": {"min": "$min"},
                "pipeline": [{"$match": {"$expr": {"$gte": ["$n", "$$min"]}}}, {"$project": {"_id": 0, "n": 1}}], "as": "hits"}}]),
            bson!([{"item": "a", "min": 2}]),
        );
        assert_eq!(
            out,
            docs(bson!([{"item": "a", "min": 2, "hits": [{"n": 5}]}]))
        );
        assert_eq!(
            parse_code(
                bson!([{"$lookup": {"from": "w", "pipeline": [{"$match": {"$expr": "$$nope"}}], "as": "x"}}])
            ),
            17276
        );
        assert_eq!(
            parse_code(bson!([{"$lookup": {"from": "w", "localField": "a", "as": "x"}}])),
            codes::FAILED_TO_PARSE
        );
        assert_eq!(
            parse_code(bson!([{"$lookup": {"from": "w", "localField": "a", "foreignField": "b"}}])),
            codes::FAILED_TO_PARSE
        );
        assert_eq!(
            parse_code(bson!([{"$lookup": {"from": "w", "pipeline": [], "as": "x", "bogus": 1}}])),
            codes::FAILED_TO_PARSE
        );
        assert_eq!(
            parse_code(
                bson!([{"$lookup": {"from": "w", "pipeline": [], "as": "x", "let": {"Bad": 1}}}])
            ),
            16867
        );
    }

    #[test]
    fn nested_lookups_read_each_collection_once() {
        let mut ctx = Ctx::default()
            .with("b", docs(bson!([{"k": 1, "c": "x"}, {"k": 2, "c": "y"}])))
            .with("c", docs(bson!([{"_id": "x"}, {"_id": "y"}])));
        let out = run_in(
            &mut ctx,
            bson!([{"$lookup": {
                "from": "b",
                "let": {"k": "$k"},
                "pipeline": [
                    {"$match": {"$expr": {"$eq": ["$k", "$$k"]}}},
                    {"$lookup": {"from": "c", "localField": "c", "foreignField": "_id", "as": "cs"}},
                    {"$project": {"_id": 0, "cs": 1}},
                ],
                "as": "bs",
            }}]),
            bson!([{"k": 1}, {"k": 2}, {"k": 3}]),
        );
        assert_eq!(
            out,
            docs(bson!([
                {"k": 1, "bs": [{"cs": [{"_id": "x"}]}]},
                {"k": 2, "bs": [{"cs": [{"_id": "y"}]}]},
                {"k": 3, "bs": []},
            ]))
        );
        assert_eq!(ctx.lookups, 2, "b and c, once each, for three documents");
    }

    #[test]
    fn replace_root_and_with() {
        let people = bson!([
            {"_id": 1, "name": "Arlene", "age": 34, "pets": {"dogs": 2, "cats": 1}},
            {"_id": 2, "name": "Sam", "age": 41, "pets": {"cats": 1, "fish": 3}},
            {"_id": 3, "name": "Maria", "age": 25},
        ]);
        let expected = docs(bson!([
            {"dogs": 2, "cats": 1, "birds": 0, "fish": 0},
            {"dogs": 0, "cats": 1, "birds": 0, "fish": 3},
            {"dogs": 0, "cats": 0, "birds": 0, "fish": 0},
        ]));
        assert_eq!(
            run(
                bson!([{"$replaceRoot": {"newRoot": {"$mergeObjects": [{"dogs": 0, "cats": 0, "birds": 0, "fish": 0}, "$pets"]}}}]),
                people.clone()
            ),
            expected
        );
        assert_eq!(
            run(
                bson!([{"$replaceWith": {"$mergeObjects": [{"dogs": 0, "cats": 0, "birds": 0, "fish": 0}, "$pets"]}}]),
                people.clone()
            ),
            expected
        );
        let e = Pipeline::parse(&stages(bson!([{"$replaceRoot": {"newRoot": "$pets"}}])))
            .unwrap()
            .run(docs(people), &mut Ctx::default())
            .unwrap_err();
        assert_eq!(e.code, 40228);
        assert!(e.message.contains("MISSING"), "{}", e.message);
        assert_eq!(parse_code(bson!([{"$replaceRoot": {}}])), 40231);
        assert_eq!(
            parse_code(bson!([{"$replaceRoot": {"newRoot": "$a", "x": 1}}])),
            40415
        );
    }

    #[test]
    fn facet_runs_each_pipeline_over_the_same_input() {
        let artwork = bson!([
            {"_id": 1, "title": "The Pillars of Society", "price": 199.99, "tags": ["painting", "satire", "oil"]},
            {"_id": 2, "title": "Melancholy III", "price": 280.0, "tags": ["woodcut", "Expressionism"]},
            {"_id": 3, "title": "Dancer", "price": 76.04, "tags": ["oil", "Surrealism", "painting"]},
            {"_id": 4, "title": "The Great Wave off Kanagawa", "price": 167.30, "tags": ["woodblock", "ukiyo-e"]},
        ]);
        let out = run(
            bson!([{"$facet": {
                "categorizedByTags": [{"$unwind": "$tags"}, {"$sortByCount": "$tags"}, {"$limit": 2}],
                "count": [{"$count": "n"}],
                "expensive": [{"$match": {"$expr": {"$gt": ["$price", 190]}}}, {"$project": {"_id": 1}}],
            }}]),
            artwork,
        );
        assert_eq!(
            out,
            docs(bson!([{
                "categorizedByTags": [{"_id": "painting", "count": 2}, {"_id": "oil", "count": 2}],
                "count": [{"n": 4}],
                "expensive": [{"_id": 1}, {"_id": 2}],
            }]))
        );
        assert_eq!(parse_code(bson!([{"$facet": {}}])), 40169);
        assert_eq!(parse_code(bson!([{"$facet": {"a": []}}])), 40171);
        assert_eq!(parse_code(bson!([{"$facet": {"a": 1}}])), 40170);
        assert_eq!(
            parse_code(bson!([{"$facet": {"a": [{"$facet": {"b": [{"$limit": 1}]}}]}}])),
            40600
        );
        let limits = Limits {
            max_documents: 2,
            max_bytes: 1 << 20,
        };
        let p = Pipeline::parse_with(
            &stages(bson!([{"$facet": {"all": [{"$skip": 0}]}}])),
            limits,
        )
        .unwrap();
        assert_eq!(
            p.run(docs(bson!([{}, {}, {}])), &mut Ctx::default())
                .unwrap_err()
                .code,
            QUERY_EXCEEDED_MEMORY_LIMIT
        );
    }

    #[test]
    fn sort_by_count() {
        let out = run(
            bson!([{"$unwind": "$tags"}, {"$sortByCount": "$tags"}]),
            bson!([
                {"tags": ["a", "b"]},
                {"tags": ["b", "c"]},
                {"tags": ["c", "b", "d"]},
            ]),
        );
        assert_eq!(
            out,
            docs(bson!([
                {"_id": "b", "count": 3},
                {"_id": "c", "count": 2},
                {"_id": "a", "count": 1},
                {"_id": "d", "count": 1},
            ]))
        );
        assert_eq!(
            run(
                bson!([{"$sortByCount": {"$mod": ["$n", 2]}}]),
                bson!([{"n": 1}, {"n": 2}, {"n": 3}])
            ),
            docs(bson!([{"_id": 1, "count": 2}, {"_id": 0, "count": 1}]))
        );
        assert_eq!(parse_code(bson!([{"$sortByCount": "tags"}])), 40148);
        assert_eq!(parse_code(bson!([{"$sortByCount": {"a": 1}}])), 40148);
    }

    #[test]
    fn union_with() {
        let mut ctx = Ctx::default().with("b", docs(bson!([{"x": 3}, {"x": 4}])));
        let out = run_in(
            &mut ctx,
            bson!([{"$unionWith": {"coll": "b", "pipeline": [{"$match": {"$expr": {"$gt": ["$x", 3]}}}]}}, {"$unionWith": "b"}]),
            bson!([{"x": 1}]),
        );
        assert_eq!(out, docs(bson!([{"x": 1}, {"x": 4}, {"x": 3}, {"x": 4}])));
        assert_eq!(
            parse_code(bson!([{"$unionWith": {"pipeline": []}}])),
            codes::FAILED_TO_PARSE
        );
    }

    #[test]
    fn nesting_is_bounded() {
        let mut inner = bson!([{"$limit": 1}]);
        for _ in 0..SUB_PIPELINE_DEPTH_MAX {
            inner = bson!([{"$lookup": {"from": "c", "pipeline": inner, "as": "x"}}]);
        }
        assert!(Pipeline::parse(&stages(inner.clone())).is_ok());
        let deeper = bson!([{"$lookup": {"from": "c", "pipeline": inner, "as": "x"}}]);
        assert_eq!(parse_code(deeper), codes::FAILED_TO_PARSE);
        let long_path = vec!["a"; expr::PATH_PARTS_MAX + 1].join(".");
        assert_eq!(
            parse_code(bson!([{"$sort": {long_path.clone(): 1}}])),
            codes::FAILED_TO_PARSE
        );
        assert_eq!(
            parse_code(bson!([{"$project": {long_path: 1}}])),
            codes::FAILED_TO_PARSE
        );
        // Arrays nested past the bound are not followed, and nothing overflows.
        let mut deep = bson!([{"b": 1, "c": 2}]);
        for _ in 0..ARRAYS_NESTED_MAX + 5 {
            deep = Bson::Array(vec![deep]);
        }
        let input = Bson::Array(vec![Bson::Document(doc! {"a": deep})]);
        assert_eq!(
            run(bson!([{"$project": {"a.b": 1, "_id": 0}}]), input.clone()).len(),
            1
        );
        assert_eq!(
            run(bson!([{"$project": {"a.b": 0}}]), input.clone()),
            docs(input.clone())
        );
        assert_eq!(run(bson!([{"$addFields": {"a.z": 1}}]), input).len(), 1);
    }

    #[test]
    fn sizes_match_bson_encoding() {
        let d = doc! {
            "s": "text", "i": 1, "l": 2i64, "f": 1.5, "b": true, "n": null,
            "a": [1, "x", {"y": [null]}], "d": {"e": DateTime::from_millis(0)},
            "o": bson::oid::ObjectId::from_bytes([1; 12]),
            "dec": Bson::Decimal128("1.5".parse().unwrap()),
            "bin": Bson::Binary(bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![1, 2, 3] }),
            "long_array": (0..12).map(Bson::Int32).collect::<Vec<_>>(),
        };
        assert_eq!(doc_size(&d), d.to_vec().unwrap().len());
    }

    #[test]
    fn a_commands_let_reaches_every_stage() {
        let mut vars = Variables::new();
        vars.bind("id", bson!(2));
        vars.bind("tag", bson!("t"));
        let p = Pipeline::parse_with_vars(
            &stages(bson!([
                {"$match": {"$expr": {"$eq": ["$_id", "$$id"]}}},
                {"$project": {"_id": 0, "tag": "$$tag"}},
            ])),
            Limits::default(),
            &vars,
        )
        .unwrap();
        let out = p
            .run(docs(bson!([{"_id": 1}, {"_id": 2}])), &mut Ctx::default())
            .unwrap();
        assert_eq!(out, vec![doc! {"tag": "t"}]);
        // Without them, the names are undefined.
        assert_eq!(parse_code(bson!([{"$project": {"tag": "$$tag"}}])), 17276);
    }

    #[test]
    fn documents_stage_replaces_the_input() {
        let p = Pipeline::parse(&stages(bson!([
            {"$documents": [{"_id": 1, "x": 1}, {"_id": 2, "x": 2}]},
            {"$match": {"x": {"$gt": 1}}},
        ])))
        .unwrap();
        assert!(p.starts_with_documents());
        assert_eq!(
            p.run(docs(bson!([{"_id": 9}])), &mut Ctx::default())
                .unwrap(),
            vec![doc! {"_id": 2, "x": 2}]
        );
        assert_eq!(
            parse_code(bson!([{"$match": {}}, {"$documents": []}])),
            40602
        );
        assert_eq!(run_code(bson!([{"$documents": 5}]), bson!([])), 5858203);
        assert_eq!(run_code(bson!([{"$documents": [1]}]), bson!([])), 40228);
    }

    #[test]
    fn merge_is_the_last_stage_and_left_to_the_caller() {
        let p = Pipeline::parse(&stages(bson!([
            {"$match": {}},
            {"$merge": {"into": "other", "whenMatched": "replace"}},
        ])))
        .unwrap();
        assert_eq!(p.merge().map(|m| m.coll.as_str()), Some("other"));
        assert!(p.out().is_none());
        assert_eq!(
            p.run(docs(bson!([{"_id": 1}])), &mut Ctx::default())
                .unwrap(),
            vec![doc! {"_id": 1}]
        );
        assert_eq!(parse_code(bson!([{"$merge": "a"}, {"$match": {}}])), 40601);
        assert_eq!(
            parse_code(bson!([{"$facet": {"f": [{"$merge": "a"}]}}])),
            51047
        );
    }
}
