//! The `$merge` stage: where an aggregation's results go and how each one
//! meets the target collection's document with the same `on` fields.
//! Parsed and decided here (pure); the caller, which owns the collections,
//! finds the matching documents and writes what [`Merge::combine`] says, one
//! result at a time (as MongoDB, not atomically across results).

use bson::{Bson, Document};

use crate::aggregate::{Limits, Pipeline, StageContext};
use crate::error::codes;
use crate::expr::{self, Variables};
use crate::DocError;

type Result<T> = std::result::Result<T, DocError>;

/// MongoDB's code for a `$merge` result without a usable `on` value.
pub const MERGE_ON_FIELD_INVALID: i32 = 51132;
/// MongoDB's code for `whenNotMatched: "fail"` meeting an unmatched result.
pub const MERGE_NO_MATCH: i32 = 13113;
/// MongoDB's code for `on` fields without a unique index to back them.
pub const MERGE_ON_NOT_UNIQUE: i32 = 51183;

/// A parsed `$merge`.
#[derive(Debug, Clone)]
pub struct Merge {
    /// The target's database, when not the pipeline's.
    pub db: Option<String>,
    pub coll: String,
    /// The fields a result and a target document are matched on (`_id`
    /// unless given); other than `_id`, a unique index must have exactly
    /// these fields (the caller checks: it knows the indexes).
    pub on: Vec<String>,
    pub when_matched: WhenMatched,
    pub when_not_matched: WhenNotMatched,
}

/// What becomes of a target document a result matches.
#[derive(Debug, Clone)]
pub enum WhenMatched {
    /// The result replaces it.
    Replace,
    /// It stays as it is.
    KeepExisting,
    /// The result's fields are set in it (the default).
    Merge,
    /// The whole `$merge` fails (DuplicateKey).
    Fail,
    /// An update pipeline runs over it, with the result as `$$new` (or the
    /// `let` variables).
    Pipeline(Box<UpdatePipeline>),
}

/// A `whenMatched` pipeline and the `let` it runs with.
#[derive(Debug, Clone)]
pub struct UpdatePipeline {
    pipeline: Pipeline,
    /// `let` (`{new: "$$ROOT"}` when not given), evaluated on each result.
    vars: Vec<(String, expr::Expr)>,
}

/// What becomes of a result no target document matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenNotMatched {
    Insert,
    Discard,
    Fail,
}

/// The stages a `whenMatched` pipeline may have (MongoDB's update
/// pipelines').
const UPDATE_STAGES: &[&str] = &[
    "$addFields",
    "$set",
    "$project",
    "$unset",
    "$replaceRoot",
    "$replaceWith",
];

impl Merge {
    /// Parses `$merge`'s argument: a collection name, or `{into, on, let,
    /// whenMatched, whenNotMatched}`.
    pub fn parse(arg: &Bson, limits: Limits) -> Result<Merge> {
        let bad = |code: i32, m: String| DocError::new(code, m);
        let spec = match arg {
            Bson::String(coll) => {
                let mut d = Document::new();
                d.insert("into", coll.clone());
                d
            }
            Bson::Document(d) => d.clone(),
            other => {
                return Err(bad(
                    51182,
                    format!(
                        "$merge only supports a string or object argument, not {}",
                        expr::type_name(Some(other))
                    ),
                ))
            }
        };
        let mut into = None;
        let mut on = vec!["_id".to_string()];
        let mut let_spec = None;
        let mut when_matched = None;
        let mut when_not_matched = WhenNotMatched::Insert;
        for (k, v) in &spec {
            match k.as_str() {
                "into" => into = Some(v),
                "on" => on = parse_on(v)?,
                "let" => match v {
                    Bson::Document(d) => let_spec = Some(d.clone()),
                    _ => {
                        return Err(bad(
                            codes::TYPE_MISMATCH,
                            "$merge's let must be an object".into(),
                        ))
                    }
                },
                "whenMatched" => when_matched = Some(v),
                "whenNotMatched" => {
                    when_not_matched = match v.as_str() {
                        Some("insert") => WhenNotMatched::Insert,
                        Some("discard") => WhenNotMatched::Discard,
                        Some("fail") => WhenNotMatched::Fail,
                        _ => return Err(bad_enum("whenNotMatched", &v.to_string())),
                    }
                }
                other => {
                    return Err(bad(
                        40415,
                        format!("BSON field '$merge.{other}' is an unknown field."),
                    ))
                }
            }
        }
        let (db, coll) = match into {
            Some(Bson::String(c)) => (None, c.clone()),
            Some(Bson::Document(d)) => {
                let coll = match d.get("coll") {
                    Some(Bson::String(c)) => c.clone(),
                    _ => {
                        return Err(bad(
                            codes::FAILED_TO_PARSE,
                            "$merge's into needs a 'coll' name".into(),
                        ))
                    }
                };
                let db = match d.get("db") {
                    None => None,
                    Some(Bson::String(db)) => Some(db.clone()),
                    Some(_) => {
                        return Err(bad(
                            codes::TYPE_MISMATCH,
                            "$merge's into.db must be a string".into(),
                        ))
                    }
                };
                (db, coll)
            }
            Some(_) => {
                return Err(bad(
                    51178,
                    "$merge 'into' field must be either a string or an object".into(),
                ))
            }
            None => {
                return Err(bad(
                    40414,
                    "BSON field '$merge.into' is missing but a required field".into(),
                ))
            }
        };
        if coll.is_empty() || coll.contains('$') || coll.contains('\0') {
            return Err(bad(
                codes::INVALID_NAMESPACE,
                format!("Invalid $merge target namespace: '{coll}'"),
            ));
        }
        let when_matched = match when_matched {
            None => WhenMatched::Merge,
            Some(Bson::String(s)) => match s.as_str() {
                "replace" => WhenMatched::Replace,
                "keepExisting" => WhenMatched::KeepExisting,
                "merge" => WhenMatched::Merge,
                "fail" => WhenMatched::Fail,
                // "pipeline" too: a pipeline is given as an array.
                other => return Err(bad_enum("whenMatched", other)),
            },
            Some(Bson::Array(stages)) => {
                let stages: Vec<Document> = stages
                    .iter()
                    .map(|s| match s {
                        Bson::Document(d) => Ok(d.clone()),
                        _ => Err(bad(
                            codes::TYPE_MISMATCH,
                            "$merge's whenMatched pipeline stages must be objects".into(),
                        )),
                    })
                    .collect::<Result<_>>()?;
                for s in &stages {
                    let name = s.keys().next().map(String::as_str).unwrap_or("");
                    if !UPDATE_STAGES.contains(&name) {
                        return Err(bad(
                            72,
                            format!("{name} is not allowed to be used within an update"),
                        ));
                    }
                }
                let let_spec = let_spec.take().unwrap_or_else(|| {
                    let mut d = Document::new();
                    d.insert("new", "$$ROOT");
                    d
                });
                let mut vars = Vec::with_capacity(let_spec.len());
                for (name, v) in &let_spec {
                    expr::check_var_name(name, false)?;
                    vars.push((name.clone(), expr::Expr::parse(v)?));
                }
                let names: Vec<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
                let pipeline = Pipeline::parse_with_names(&stages, limits, &names)?;
                WhenMatched::Pipeline(Box::new(UpdatePipeline { pipeline, vars }))
            }
            Some(other) => {
                return Err(bad(
                    51191,
                    format!(
                        "$merge's whenMatched must be a string or an array, not {}",
                        expr::type_name(Some(other))
                    ),
                ))
            }
        };
        if let_spec.is_some() {
            return Err(bad(
                51199,
                "Cannot use 'let' variables with 'whenMatched: <string>' mode".into(),
            ));
        }
        Ok(Merge {
            db,
            coll,
            on,
            when_matched,
            when_not_matched,
        })
    }

    /// The `on` fields' values of a result, as the equality filter that
    /// finds its target document (`{_id: 5}`, `{a: 1, "b.c": 2}`). A result
    /// without `_id` matches nothing when `on` is `_id` (it is inserted with
    /// a new one); any other missing, null or array value is an error.
    pub fn target_filter(&self, result: &Document) -> Result<Option<Document>> {
        let mut filter = Document::new();
        for field in &self.on {
            let v = field
                .split('.')
                .try_fold(Bson::Document(result.clone()), |v, k| match v {
                    Bson::Document(d) => d.get(k).cloned(),
                    _ => None,
                });
            match v {
                None if field == "_id" && self.on.len() == 1 => return Ok(None),
                None | Some(Bson::Null | Bson::Undefined | Bson::Array(_)) => {
                    return Err(DocError::new(
                        MERGE_ON_FIELD_INVALID,
                        format!(
                            "$merge write error: 'on' field '{field}' cannot be missing, null, \
                             undefined or an array"
                        ),
                    ))
                }
                Some(v) => {
                    let mut eq = Document::new();
                    eq.insert("$eq", v);
                    filter.insert(field.clone(), eq);
                }
            }
        }
        Ok(Some(filter))
    }

    /// What becomes of `existing`, the target document `result` matched:
    /// the document to write in its place (None: leave it). The result
    /// keeps the existing `_id`; a different one is error 66.
    pub fn combine(
        &self,
        existing: &Document,
        result: &Document,
        ctx: &mut dyn StageContext,
    ) -> Result<Option<Document>> {
        let mut new = match &self.when_matched {
            WhenMatched::KeepExisting => return Ok(None),
            WhenMatched::Fail => {
                let mut key = Document::new();
                let mut pattern = Document::new();
                for f in &self.on {
                    pattern.insert(f.clone(), 1);
                    key.insert(f.clone(), existing.get(f).cloned().unwrap_or(Bson::Null));
                }
                return Err(DocError::new(
                    codes::DUPLICATE_KEY,
                    format!(
                        "$merge failed: E11000 duplicate key error collection: {} dup key: {key}",
                        self.coll
                    ),
                )
                .with_info(bson::doc! {"keyPattern": pattern, "keyValue": key}));
            }
            WhenMatched::Replace => result.clone(),
            WhenMatched::Merge => {
                let mut d = existing.clone();
                for (k, v) in result {
                    d.insert(k.clone(), v.clone());
                }
                d
            }
            WhenMatched::Pipeline(p) => {
                // `let` is evaluated on the result ($$ROOT), then the
                // pipeline runs over the target document with it.
                let base = Variables::new().with_now(ctx.now());
                let mut vars = base.clone();
                for (name, e) in &p.vars {
                    vars.bind(name.clone(), e.eval_with(result, &base)?);
                }
                let mut out = p.pipeline.run_vars(vec![existing.clone()], ctx, vars)?;
                match out.len() {
                    1 => out.remove(0),
                    n => {
                        return Err(DocError::bad_value(format!(
                            "a $merge whenMatched pipeline must give one document, not {n}"
                        )))
                    }
                }
            }
        };
        match (existing.get("_id"), new.get("_id")) {
            (Some(id), None) => {
                let mut with = Document::new();
                with.insert("_id", id.clone());
                with.extend(new);
                new = with;
            }
            (Some(a), Some(b)) if a != b => {
                return Err(DocError::new(
                    codes::IMMUTABLE_FIELD,
                    "$merge failed to update the matching document, did you attempt to modify \
                     the _id or the shard key?",
                ))
            }
            _ => {}
        }
        Ok((new != *existing).then_some(new))
    }

    /// The error of a result that matched nothing with `whenNotMatched:
    /// "fail"`.
    pub fn no_match(&self) -> DocError {
        DocError::new(
            MERGE_NO_MATCH,
            "$merge could not find a matching document in the target collection for at least \
             one document in the source collection",
        )
    }
}

/// MongoDB's error for a value outside an option's choices.
fn bad_enum(field: &str, value: &str) -> DocError {
    DocError::new(
        codes::BAD_VALUE,
        format!("Enumeration value '{value}' for field '{field}' is not a valid value."),
    )
}

fn parse_on(v: &Bson) -> Result<Vec<String>> {
    let bad = || {
        DocError::new(
            51186,
            "$merge 'on' field must be either a string or an array of strings",
        )
    };
    let fields: Vec<String> = match v {
        Bson::String(s) => vec![s.clone()],
        Bson::Array(items) if !items.is_empty() => items
            .iter()
            .map(|i| i.as_str().map(str::to_string).ok_or_else(bad))
            .collect::<Result<_>>()?,
        Bson::Array(_) => {
            return Err(DocError::new(
                51187,
                "If explicitly specifying $merge 'on', must include at least one field",
            ))
        }
        _ => return Err(bad()),
    };
    for (i, f) in fields.iter().enumerate() {
        expr::split_path(f)?;
        if fields[..i].contains(f) {
            return Err(DocError::new(
                31465,
                format!("Found a duplicate field '{f}' in $merge 'on'"),
            ));
        }
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{bson, doc, DateTime};

    struct Ctx;

    impl StageContext for Ctx {
        fn lookup(&mut self, _: &str) -> Result<Vec<Document>> {
            Ok(Vec::new())
        }

        fn now(&self) -> DateTime {
            DateTime::from_millis(0)
        }
    }

    fn merge(arg: Bson) -> Merge {
        Merge::parse(&arg, Limits::default()).expect("parses")
    }

    #[test]
    fn parses_the_forms_and_defaults() {
        let m = merge(bson!("out"));
        assert_eq!((m.db.as_deref(), m.coll.as_str()), (None, "out"));
        assert_eq!(m.on, vec!["_id"]);
        assert!(matches!(m.when_matched, WhenMatched::Merge));
        assert_eq!(m.when_not_matched, WhenNotMatched::Insert);
        let m = merge(bson!({"into": {"db": "d", "coll": "c"}, "on": ["a", "b.c"],
            "whenMatched": "keepExisting", "whenNotMatched": "discard"}));
        assert_eq!((m.db.as_deref(), m.coll.as_str()), (Some("d"), "c"));
        assert_eq!(m.on, vec!["a", "b.c"]);
        assert_eq!(m.when_not_matched, WhenNotMatched::Discard);
        for (bad, code) in [
            (bson!(5), 51182),
            (bson!({}), 40414),
            (bson!({"into": "c", "x": 1}), 40415),
            (bson!({"into": "c", "on": []}), 51187),
            (bson!({"into": "c", "on": ["a", "a"]}), 31465),
            (bson!({"into": "c", "whenMatched": "nope"}), 2),
            (bson!({"into": "c", "let": {"x": 1}}), 51199),
            (
                bson!({"into": "c", "whenMatched": [{"$group": {"_id": 1}}]}),
                72,
            ),
        ] {
            assert_eq!(
                Merge::parse(&bad, Limits::default()).unwrap_err().code,
                code,
                "{bad}"
            );
        }
    }

    #[test]
    fn target_filters_follow_on() {
        let m = merge(bson!("c"));
        assert_eq!(
            m.target_filter(&doc! {"_id": 2, "x": 1}).unwrap(),
            Some(doc! {"_id": {"$eq": 2}})
        );
        assert_eq!(m.target_filter(&doc! {"x": 1}).unwrap(), None);
        let m = merge(bson!({"into": "c", "on": ["a", "b.c"]}));
        assert_eq!(
            m.target_filter(&doc! {"a": 1, "b": {"c": 2}}).unwrap(),
            Some(doc! {"a": {"$eq": 1}, "b.c": {"$eq": 2}})
        );
        for bad in [
            doc! {"a": 1},
            doc! {"a": null, "b": {"c": 1}},
            doc! {"a": [1], "b": {"c": 1}},
        ] {
            assert_eq!(
                m.target_filter(&bad).unwrap_err().code,
                MERGE_ON_FIELD_INVALID
            );
        }
    }

    #[test]
    fn combines_as_each_mode_says() {
        let existing = doc! {"_id": 1, "a": 1, "b": 1};
        let result = doc! {"_id": 1, "b": 2, "c": 3};
        let mut ctx = Ctx;
        let combined = |m: Merge, ctx: &mut Ctx| m.combine(&existing, &result, ctx);
        assert_eq!(
            combined(merge(bson!("c")), &mut ctx).unwrap(),
            Some(doc! {"_id": 1, "a": 1, "b": 2, "c": 3})
        );
        assert_eq!(
            combined(
                merge(bson!({"into": "c", "whenMatched": "replace"})),
                &mut ctx
            )
            .unwrap(),
            Some(result.clone())
        );
        assert_eq!(
            combined(
                merge(bson!({"into": "c", "whenMatched": "keepExisting"})),
                &mut ctx
            )
            .unwrap(),
            None
        );
        let e = combined(merge(bson!({"into": "c", "whenMatched": "fail"})), &mut ctx).unwrap_err();
        assert_eq!(e.code, codes::DUPLICATE_KEY);
        assert_eq!(
            e.info.as_deref(),
            Some(&doc! {"keyPattern": {"_id": 1}, "keyValue": {"_id": 1}})
        );
        let p = merge(
            bson!({"into": "c", "whenMatched": [{"$set": {"sum": {"$add": ["$a", "$$new.c"]}}}]}),
        );
        assert_eq!(
            combined(p, &mut ctx).unwrap(),
            Some(doc! {"_id": 1, "a": 1, "b": 1, "sum": 4})
        );
        let p = merge(
            bson!({"into": "c", "let": {"v": "$c"}, "whenMatched": [{"$set": {"v": "$$v"}}]}),
        );
        assert_eq!(
            combined(p, &mut ctx).unwrap(),
            Some(doc! {"_id": 1, "a": 1, "b": 1, "v": 3})
        );
        // The _id cannot change; a result without one keeps the target's.
        let m = merge(bson!({"into": "c", "whenMatched": "replace"}));
        let e = m
            .combine(&existing, &doc! {"_id": 9}, &mut ctx)
            .unwrap_err();
        assert_eq!(e.code, codes::IMMUTABLE_FIELD);
        assert_eq!(
            m.combine(&existing, &doc! {"z": 1}, &mut ctx).unwrap(),
            Some(doc! {"_id": 1, "z": 1})
        );
    }
}
