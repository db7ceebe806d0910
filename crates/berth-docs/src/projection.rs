//! Find projections: the fields of a matched document that a query returns.
//!
//! A projection is parsed once ([`Projection::parse`]) and applied to each
//! document a query returns ([`Projection::apply`]), following MongoDB 4.4
//! and later:
//!
//! - An *inclusion* projection (`{a: 1, "b.c": 1}`) keeps the named fields,
//!   in the document's order, plus `_id` unless `_id: 0`. A path through an
//!   array keeps the field in each element document and drops the elements
//!   that are not documents.
//! - An *exclusion* projection (`{a: 0}`) drops the named fields and keeps
//!   everything else. Mixing the two is an error (31253, 31254), `_id` apart.
//! - Computed fields, which make a projection an inclusion: literals
//!   (`{x: "text"}`, `{x: {$literal: 1}}`) and aggregation expressions
//!   (`{x: "$a"}`, `{x: {$add: ...}}`, through [`crate::expr::Expr`]). They
//!   are set after the included fields, in the projection's order.
//! - find's own operators: `$slice` (`n`, `-n`, `[skip, limit]`) and the
//!   positional `a.$` (from [`MatchDetails::array_index`]) are applied to the
//!   projected document; `$elemMatch` sets the first matching element.
//!
//! Pure: no I/O, no clock.

use bson::{Bson, Document};

use crate::expr::Expr;
use crate::matcher::MatchDetails;
use crate::update::{show, type_name, ElementMatcher};
use crate::DocError;

/// A parsed find projection.
#[derive(Debug, Clone)]
pub struct Projection {
    root: Vec<(String, Node)>,
    inclusion: bool,
    /// find's `$slice`s: full path, skip, limit.
    slices: Vec<(Vec<String>, Option<i32>, i32)>,
    /// The path of the positional `a.$`, without the `$`.
    positional: Option<Vec<String>>,
}

/// What a projection does with one field.
#[derive(Debug, Clone)]
enum Node {
    Include,
    Exclude,
    /// A sub-projection: `"a.b"` is `a` with the child `b`.
    Children(Vec<(String, Node)>),
    Literal(Bson),
    Expr(Expr),
    ElemMatch(ElementMatcher),
    /// Included, then sliced (parameters in [`Projection::slices`]).
    Slice,
    /// Included, then cut to the matched element.
    Positional,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Inclusion,
    Exclusion,
}

#[derive(Default)]
struct ParseContext {
    kind: Option<Kind>,
    has_slice: bool,
    has_elem_match: bool,
    id_specified: bool,
    id_included: bool,
    id_excluded: bool,
    slices: Vec<(Vec<String>, Option<i32>, i32)>,
    positional: Option<Vec<String>>,
}

impl Projection {
    /// Parses a projection document. `{}` returns whole documents.
    ///
    /// Errors carry MongoDB's codes: mixing inclusion and exclusion (31253,
    /// 31254), overlapping paths (31249, 31250), bad field paths (40352,
    /// 15998, 16410), malformed `$slice` (31257-31259, 31272, 31273) and
    /// `$elemMatch` (31274, 31275), positional misuse (31255, 31256, 31271,
    /// 31276, 31308, 31394, 31395), expressions in an exclusion (31252,
    /// 31310), and whatever the expression parser reports.
    pub fn parse(spec: &Document) -> Result<Projection, DocError> {
        let mut ctx = ParseContext::default();
        let mut root = Vec::new();
        for (name, value) in spec {
            if name == "_id" || name.starts_with("_id.") {
                ctx.id_specified = true;
            }
            parse_element(&mut ctx, name, value, &[], &mut root)?;
        }
        // find's defaults when no field says which kind it is.
        let kind = ctx.kind.unwrap_or(if ctx.has_slice {
            if ctx.id_included {
                Kind::Inclusion
            } else {
                Kind::Exclusion
            }
        } else if ctx.has_elem_match || ctx.id_included {
            Kind::Inclusion
        } else {
            Kind::Exclusion
        });
        if !ctx.id_specified && kind == Kind::Inclusion {
            root.insert(0, ("_id".to_string(), Node::Include));
        }
        if kind == Kind::Exclusion && ctx.id_included {
            // `{_id: 1}` in an exclusion says nothing: `_id` is kept anyway.
            root.retain(|(name, node)| !(name == "_id" && matches!(node, Node::Include)));
        }
        Ok(Projection {
            root,
            inclusion: kind == Kind::Inclusion,
            slices: ctx.slices,
            positional: ctx.positional,
        })
    }

    /// Whether the projection keeps only the fields it names (as opposed to
    /// dropping the fields it names).
    pub fn is_inclusion(&self) -> bool {
        self.inclusion
    }

    /// Whether the projection has a positional `a.$`, which needs the
    /// query's [`MatchDetails`].
    pub fn uses_positional(&self) -> bool {
        self.positional.is_some()
    }

    /// Projects `doc`. `details` is what the query's match found; only a
    /// positional projection needs it (without it, or without an
    /// `array_index`, projecting through an array is code 51246).
    pub fn apply(
        &self,
        doc: &Document,
        details: Option<&MatchDetails>,
    ) -> Result<Document, DocError> {
        let mut out = if self.inclusion {
            include_document(&self.root, doc)
        } else {
            exclude_document(&self.root, doc)
        };
        apply_computed(&self.root, doc, &mut out)?;
        if let Some(path) = &self.positional {
            apply_positional(&mut out, path, details)?;
        }
        for (path, skip, limit) in &self.slices {
            slice_document(&mut out, path, *skip, *limit);
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------
// Parsing.

fn parse_element(
    ctx: &mut ParseContext,
    name: &str,
    value: &Bson,
    prefix: &[String],
    parent: &mut Vec<(String, Node)>,
) -> Result<(), DocError> {
    let positional = name.ends_with(".$");
    if name.contains(".$.") {
        return Err(DocError::new(
            31394,
            "As of 4.4, it's illegal to specify positional operator in the middle of a path.\
             Positional projection may only be used at the end, for example: a.b.$. If the \
             query previously used a form like a.b.$.d, remove the parts following the '$' and \
             the results will be equivalent.",
        ));
    }
    let is_top_id = prefix.is_empty() && name == "_id";
    match value {
        Bson::Document(sub) => {
            if positional {
                return Err(DocError::new(
                    31271,
                    "positional projection cannot be used with an expression or sub object",
                ));
            }
            if sub.is_empty() {
                return Err(DocError::new(
                    51270,
                    format!("Invalid empty sub-projection: {name}"),
                ));
            }
            let path = field_path(name)?;
            let (op, arg) = sub.iter().next().expect("not empty");
            if sub.len() == 1 && op.starts_with('$') {
                return match op.as_str() {
                    "$slice" => parse_slice(ctx, name, &path, arg, value, prefix, parent),
                    "$elemMatch" => {
                        let Bson::Document(cond) = arg else {
                            return Err(DocError::new(
                                31274,
                                format!(
                                    "elemMatch: Invalid argument, object required, but got {}",
                                    type_name(arg)
                                ),
                            ));
                        };
                        if ctx.positional.is_some() {
                            return Err(DocError::new(
                                31255,
                                "Cannot specify positional operator and $elemMatch.",
                            ));
                        }
                        if path.len() != 1 || !prefix.is_empty() {
                            return Err(DocError::new(
                                31275,
                                "Cannot use $elemMatch projection on a nested field.",
                            ));
                        }
                        let matcher = ElementMatcher::for_elem_match(cond)?;
                        add_node(parent, &path, name, Node::ElemMatch(matcher))?;
                        ctx.has_elem_match = true;
                        Ok(())
                    }
                    _ => parse_expression(ctx, name, &path, op, arg, value, parent),
                };
            }
            // A sub-projection: `{a: {b: 1}}` is `{"a.b": 1}`.
            let children = children_at(parent, &path, name)?;
            let mut sub_prefix = prefix.to_vec();
            sub_prefix.extend(path);
            for (child_name, child_value) in sub {
                parse_element(ctx, child_name, child_value, &sub_prefix, children)?;
            }
            Ok(())
        }
        Bson::Boolean(_)
        | Bson::Int32(_)
        | Bson::Int64(_)
        | Bson::Double(_)
        | Bson::Decimal128(_) => {
            if crate::expr::truthy(value) {
                if !positional {
                    add_node(parent, &field_path(name)?, name, Node::Include)?;
                    if is_top_id {
                        ctx.id_included = true;
                    }
                } else {
                    if ctx.positional.is_some() {
                        return Err(DocError::new(
                            31276,
                            "Cannot specify more than one positional projection per query.",
                        ));
                    }
                    if ctx.has_elem_match {
                        return Err(DocError::new(
                            31256,
                            "Cannot specify positional operator and $elemMatch.",
                        ));
                    }
                    if name == ".$" {
                        return Err(DocError::new(
                            5392900,
                            format!("Projection on field {name} is invalid"),
                        ));
                    }
                    let base = &name[..name.len() - 2];
                    let path = field_path(base)?;
                    add_node(parent, &path, base, Node::Positional)?;
                    let mut full = prefix.to_vec();
                    full.extend(path);
                    ctx.positional = Some(full);
                }
                if !is_top_id {
                    if ctx.kind == Some(Kind::Exclusion) {
                        return Err(DocError::new(
                            31253,
                            format!("Cannot do inclusion on field {name} in exclusion projection"),
                        ));
                    }
                    ctx.kind = Some(Kind::Inclusion);
                }
            } else {
                if positional {
                    return Err(DocError::new(
                        31395,
                        "positional projection cannot be used with exclusion",
                    ));
                }
                add_node(parent, &field_path(name)?, name, Node::Exclude)?;
                if is_top_id {
                    ctx.id_excluded = true;
                } else {
                    if ctx.kind == Some(Kind::Inclusion) {
                        return Err(DocError::new(
                            31254,
                            format!("Cannot do exclusion on field {name} in inclusion projection"),
                        ));
                    }
                    ctx.kind = Some(Kind::Exclusion);
                }
            }
            Ok(())
        }
        _ => {
            if positional {
                return Err(DocError::new(
                    31308,
                    "positional projection cannot be used with a literal",
                ));
            }
            let node = if is_constant(value) {
                Node::Literal(value.clone())
            } else {
                Node::Expr(Expr::parse(value)?)
            };
            add_node(parent, &field_path(name)?, name, node)?;
            if ctx.kind == Some(Kind::Exclusion) {
                return Err(DocError::new(
                    31310,
                    format!(
                        "Cannot use an expression {{{name}: {}}} in an exclusion projection",
                        show(value)
                    ),
                ));
            }
            ctx.kind = Some(Kind::Inclusion);
            Ok(())
        }
    }
}

/// `{x: {$op: ...}}` for an `$op` that is not find's own: an aggregation
/// expression (`$literal` is kept as its value).
fn parse_expression(
    ctx: &mut ParseContext,
    name: &str,
    path: &[String],
    op: &str,
    arg: &Bson,
    value: &Bson,
    parent: &mut Vec<(String, Node)>,
) -> Result<(), DocError> {
    let is_meta = op == "$meta";
    if ctx.kind == Some(Kind::Exclusion) && !is_meta {
        return Err(DocError::new(
            31252,
            "Cannot use expression other than $meta in exclusion projection",
        ));
    }
    if !is_meta && ctx.kind.is_none() {
        ctx.kind = Some(Kind::Inclusion);
    }
    let node = if op == "$literal" {
        Node::Literal(arg.clone())
    } else {
        Node::Expr(Expr::parse(value)?)
    };
    add_node(parent, path, name, node)
}

fn parse_slice(
    ctx: &mut ParseContext,
    name: &str,
    path: &[String],
    arg: &Bson,
    value: &Bson,
    prefix: &[String],
    parent: &mut Vec<(String, Node)>,
) -> Result<(), DocError> {
    match find_slice(arg) {
        Ok((skip, limit)) => {
            add_node(parent, path, name, Node::Slice)?;
            let mut full = prefix.to_vec();
            full.extend(path.iter().cloned());
            ctx.slices.push((full, skip, limit));
            ctx.has_slice = true;
            Ok(())
        }
        // Not find's `$slice`: an array may be the aggregation expression
        // (`{$slice: ["$a", 1, 2]}`).
        Err(find_error) if matches!(arg, Bson::Array(_)) => {
            match parse_expression(ctx, name, path, "$slice", arg, value, parent) {
                Ok(()) => Ok(()),
                Err(expr_error) => Err(DocError::new(
                    expr_error.code,
                    format!(
                        "Invalid $slice syntax. The given syntax {} did not match the find() \
                         syntax because :: Location{}: {} :: The given syntax did not match the \
                         expression $slice syntax. :: caused by :: {}",
                        show(value),
                        find_error.code,
                        find_error.message,
                        expr_error.message
                    ),
                )),
            }
        }
        Err(find_error) => Err(find_error),
    }
}

/// find's `$slice` argument: `n` or `[skip, limit]`.
fn find_slice(arg: &Bson) -> Result<(Option<i32>, i32), DocError> {
    if crate::order::number(arg).is_some() {
        return Ok((None, safe_number_int(arg)));
    }
    let Bson::Array(items) = arg else {
        return Err(DocError::new(
            31273,
            "$slice only supports numbers and [skip, limit] arrays",
        ));
    };
    let [skip, limit] = items.as_slice() else {
        return Err(DocError::new(
            31272,
            "$slice array argument should be of form [skip, limit]",
        ));
    };
    if crate::order::number(skip).is_none() {
        return Err(DocError::new(
            31257,
            format!(
                "$slice expects the skip argument to be a number, got {}",
                type_name(skip)
            ),
        ));
    }
    if crate::order::number(limit).is_none() {
        return Err(DocError::new(
            31258,
            format!(
                "$slice expects the limit argument to be a number, got {}",
                type_name(limit)
            ),
        ));
    }
    let limit = safe_number_int(limit);
    if limit <= 0 {
        return Err(DocError::new(
            31259,
            format!("$slice limit must be positive, got {limit}"),
        ));
    }
    Ok((Some(safe_number_int(skip)), limit))
}

/// A number as an int32 the way MongoDB's `safeNumberInt` makes one:
/// truncated, clamped to the int32 range, NaN as 0.
fn safe_number_int(v: &Bson) -> i32 {
    let f = match crate::order::number(v) {
        Some(crate::order::Num::Int(i)) => {
            return i32::try_from(i).unwrap_or(if i < 0 { i32::MIN } else { i32::MAX })
        }
        Some(crate::order::Num::Float(f)) => f,
        None => return 0,
    };
    if f.is_nan() {
        0
    } else {
        // `as` saturates at the int32 bounds and truncates toward zero.
        f as i32
    }
}

/// A literal value with nothing an expression would evaluate: no `"$..."`
/// strings, no `{$op: ...}` documents.
fn is_constant(v: &Bson) -> bool {
    match v {
        Bson::String(s) => !s.starts_with('$'),
        Bson::Array(items) => items.iter().all(is_constant),
        Bson::Document(d) => d.iter().all(|(k, v)| !k.starts_with('$') && is_constant(v)),
        _ => true,
    }
}

/// Splits and checks a projected field path.
fn field_path(name: &str) -> Result<Vec<String>, DocError> {
    if name.is_empty() {
        return Err(DocError::new(
            crate::error::codes::LOCATION_40352,
            "FieldPath cannot be constructed with empty string",
        ));
    }
    let mut parts = Vec::new();
    for part in name.split('.') {
        if part.is_empty() {
            return Err(DocError::new(
                15998,
                "FieldPath field names may not be empty strings.",
            ));
        }
        if part.starts_with('$') {
            return Err(DocError::new(
                16410,
                format!(
                    "FieldPath field names may not start with '$'. Consider using $getField or \
                     $setField. (found '{part}' in '{name}')"
                ),
            ));
        }
        parts.push(part.to_string());
    }
    Ok(parts)
}

/// Adds `node` at `path` under `children`, refusing overlaps (`a` and
/// `a.b`, or the same path twice).
fn add_node(
    children: &mut Vec<(String, Node)>,
    path: &[String],
    dotted: &str,
    node: Node,
) -> Result<(), DocError> {
    let (first, rest) = path.split_first().expect("a field path has a first part");
    let existing = children.iter().position(|(name, _)| name == first);
    if rest.is_empty() {
        if existing.is_some() {
            return Err(DocError::new(31250, format!("Path collision at {dotted}")));
        }
        children.push((first.clone(), node));
        return Ok(());
    }
    match existing {
        None => {
            let mut sub = Vec::new();
            add_node(&mut sub, rest, dotted, node)?;
            children.push((first.clone(), Node::Children(sub)));
            Ok(())
        }
        Some(i) => match &mut children[i].1 {
            Node::Children(sub) => add_node(sub, rest, dotted, node),
            _ => Err(DocError::new(
                31249,
                format!(
                    "Path collision at {dotted} remaining portion {}",
                    rest.join(".")
                ),
            )),
        },
    }
}

/// The children of the sub-projection at `path`, made if missing.
fn children_at<'c>(
    children: &'c mut Vec<(String, Node)>,
    path: &[String],
    dotted: &str,
) -> Result<&'c mut Vec<(String, Node)>, DocError> {
    let Some((first, rest)) = path.split_first() else {
        return Ok(children);
    };
    let index = match children.iter().position(|(name, _)| name == first) {
        Some(i) => i,
        None => {
            children.push((first.clone(), Node::Children(Vec::new())));
            children.len() - 1
        }
    };
    match &mut children[index].1 {
        Node::Children(sub) => children_at(sub, rest, dotted),
        _ if rest.is_empty() => Err(DocError::new(31250, format!("Path collision at {dotted}"))),
        _ => Err(DocError::new(
            31249,
            format!(
                "Path collision at {dotted} remaining portion {}",
                rest.join(".")
            ),
        )),
    }
}

// ---------------------------------------------------------------------------
// Applying.

fn find<'n>(children: &'n [(String, Node)], name: &str) -> Option<&'n Node> {
    children
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, node)| node)
}

/// The fields an inclusion keeps, in the document's order.
fn include_document(children: &[(String, Node)], input: &Document) -> Document {
    let mut out = Document::new();
    for (name, value) in input {
        match find(children, name) {
            Some(Node::Include | Node::Slice | Node::Positional) => {
                out.insert(name.clone(), value.clone());
            }
            Some(Node::Children(sub)) => {
                if let Some(projected) = include_value(sub, value) {
                    out.insert(name.clone(), projected);
                }
            }
            _ => {}
        }
    }
    out
}

/// A sub-projection of one value: into documents, into each element of an
/// array, and nothing of any other value. Where the sub-projection computes
/// fields, what it would drop becomes an empty document for them to fill
/// (MongoDB keeps the slot until the computed fields are set).
fn include_value(children: &[(String, Node)], value: &Bson) -> Option<Bson> {
    match value {
        Bson::Document(d) => Some(Bson::Document(include_document(children, d))),
        Bson::Array(items) => Some(Bson::Array(
            items
                .iter()
                .filter_map(|item| include_value(children, item))
                .collect(),
        )),
        _ if has_computed(children) => Some(Bson::Document(Document::new())),
        _ => None,
    }
}

/// The document without the fields an exclusion drops.
fn exclude_document(children: &[(String, Node)], input: &Document) -> Document {
    let mut out = Document::new();
    for (name, value) in input {
        match find(children, name) {
            Some(Node::Exclude) => {}
            Some(Node::Children(sub)) => {
                out.insert(name.clone(), exclude_value(sub, value));
            }
            _ => {
                out.insert(name.clone(), value.clone());
            }
        }
    }
    out
}

fn exclude_value(children: &[(String, Node)], value: &Bson) -> Bson {
    match value {
        Bson::Document(d) => Bson::Document(exclude_document(children, d)),
        Bson::Array(items) => Bson::Array(
            items
                .iter()
                .map(|item| exclude_value(children, item))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn has_computed(children: &[(String, Node)]) -> bool {
    children.iter().any(|(_, node)| match node {
        Node::Literal(_) | Node::Expr(_) | Node::ElemMatch(_) => true,
        Node::Children(sub) => has_computed(sub),
        _ => false,
    })
}

/// Sets the computed fields of `children` in `out` (the projected
/// counterpart of a level of `root`): in place where the field is already
/// there, appended otherwise. Expressions see the whole document.
fn apply_computed(
    children: &[(String, Node)],
    root: &Document,
    out: &mut Document,
) -> Result<(), DocError> {
    for (name, node) in children {
        match node {
            Node::Literal(v) => {
                out.insert(name.clone(), v.clone());
            }
            // A missing result leaves the field out, as in MongoDB.
            Node::Expr(expr) => match expr.eval_opt(root, &crate::expr::Variables::new())? {
                Some(v) => {
                    out.insert(name.clone(), v);
                }
                None => {
                    out.remove(name);
                }
            },
            // `$elemMatch` is only allowed at the top, where `root` is the
            // level being projected.
            Node::ElemMatch(matcher) => {
                let first = match root.get(name) {
                    Some(Bson::Array(items)) => items.iter().find(|item| matcher.matches(item)),
                    _ => None,
                };
                match first {
                    Some(item) => {
                        out.insert(name.clone(), Bson::Array(vec![item.clone()]));
                    }
                    None => {
                        out.remove(name);
                    }
                }
            }
            Node::Children(sub) if has_computed(sub) => match out.get_mut(name) {
                Some(value) => fill_computed(sub, root, value)?,
                None => {
                    let mut d = Document::new();
                    apply_computed(sub, root, &mut d)?;
                    out.insert(name.clone(), d);
                }
            },
            _ => {}
        }
    }
    Ok(())
}

/// Computed sub-fields into a value: into a document, into each element of
/// an array, and in place of anything else, a new document.
fn fill_computed(
    children: &[(String, Node)],
    root: &Document,
    value: &mut Bson,
) -> Result<(), DocError> {
    match value {
        Bson::Document(d) => apply_computed(children, root, d),
        Bson::Array(items) => {
            for item in items {
                fill_computed(children, root, item)?;
            }
            Ok(())
        }
        _ => {
            let mut d = Document::new();
            apply_computed(children, root, &mut d)?;
            *value = Bson::Document(d);
            Ok(())
        }
    }
}

/// The positional `a.$`: the first array on the path is cut to the element
/// the query matched.
fn apply_positional(
    out: &mut Document,
    path: &[String],
    details: Option<&MatchDetails>,
) -> Result<(), DocError> {
    let mut current = out;
    for part in path {
        match current.get_mut(part) {
            Some(Bson::Array(items)) => {
                let index = details.and_then(|d| d.array_index).ok_or_else(|| {
                    DocError::new(
                        51246,
                        "positional operator '.$' couldn't find a matching element in the array",
                    )
                })?;
                let item = items.get(index).cloned().ok_or_else(|| {
                    DocError::new(51247, "positional operator '.$' element mismatch")
                })?;
                *items = vec![item];
                return Ok(());
            }
            Some(Bson::Document(d)) => current = d,
            _ => return Ok(()),
        }
    }
    Ok(())
}

/// find's `$slice` at `path`: arrays on the way are looked into element by
/// element; a field that is not an array is left as it is.
fn slice_document(doc: &mut Document, path: &[String], skip: Option<i32>, limit: i32) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    match doc.get_mut(first) {
        Some(Bson::Array(items)) if rest.is_empty() => slice_array(items, skip, limit),
        Some(Bson::Array(items)) => {
            for item in items {
                if let Bson::Document(d) = item {
                    slice_document(d, rest, skip, limit);
                }
            }
        }
        Some(Bson::Document(d)) if !rest.is_empty() => slice_document(d, rest, skip, limit),
        _ => {}
    }
}

fn slice_array(items: &mut Vec<Bson>, skip: Option<i32>, limit: i32) {
    let len = i64::try_from(items.len()).unwrap_or(i64::MAX);
    let limit = i64::from(limit);
    let (start, count) = match skip {
        None if limit < 0 => {
            let start = (len + limit).max(0);
            (start, len - start)
        }
        None => (0, limit.min(len)),
        Some(skip) => {
            let skip = i64::from(skip);
            let start = if skip < 0 {
                (len + skip).max(0)
            } else {
                skip.min(len)
            };
            (start, (len - start).min(limit))
        }
    };
    let start = usize::try_from(start).expect("within the array");
    let count = usize::try_from(count).expect("within the array");
    items.truncate(start + count);
    items.drain(..start);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::codes;
    use crate::update::documents_identical;
    use bson::doc;

    fn project(spec: Document, doc: Document) -> Document {
        Projection::parse(&spec)
            .unwrap_or_else(|e| panic!("{spec}: {e:?}"))
            .apply(&doc, None)
            .unwrap_or_else(|e| panic!("{spec}: {e:?}"))
    }

    fn parse_err(spec: Document) -> DocError {
        match Projection::parse(&spec) {
            Ok(p) => panic!("{spec} parsed: {p:?}"),
            Err(e) => e,
        }
    }

    #[track_caller]
    fn same(actual: &Document, expected: &Document) {
        assert!(
            documents_identical(actual, expected),
            "\n  actual: {actual}\nexpected: {expected}"
        );
    }

    fn sample() -> Document {
        doc! {"x": 0, "_id": 1, "a": 1, "b": {"c": 2, "d": 3}, "e": [1, 2, 3]}
    }

    #[test]
    fn inclusion_keeps_the_documents_order_and_id() {
        let p = Projection::parse(&doc! {"e": 1, "a": true}).expect("parses");
        assert!(p.is_inclusion());
        same(
            &p.apply(&sample(), None).expect("applies"),
            &doc! {"_id": 1, "a": 1, "e": [1, 2, 3]},
        );
        same(&project(doc! {"a": 1, "_id": 0}, sample()), &doc! {"a": 1});
        same(&project(doc! {"_id": 1}, sample()), &doc! {"_id": 1});
        same(
            &project(doc! {"b.d": 1, "zz": 1}, sample()),
            &doc! {"_id": 1, "b": {"d": 3}},
        );
        // Nested form, same as the dotted one.
        same(
            &project(doc! {"b": {"d": 1}}, sample()),
            &doc! {"_id": 1, "b": {"d": 3}},
        );
    }

    #[test]
    fn exclusion_drops_the_named_fields() {
        let p = Projection::parse(&doc! {"a": 0, "b.c": false}).expect("parses");
        assert!(!p.is_inclusion());
        same(
            &p.apply(&sample(), None).expect("applies"),
            &doc! {"x": 0, "_id": 1, "b": {"d": 3}, "e": [1, 2, 3]},
        );
        same(
            &project(doc! {"_id": 0}, sample()),
            &doc! {"x": 0, "a": 1, "b": {"c": 2, "d": 3}, "e": [1, 2, 3]},
        );
        same(&project(doc! {}, sample()), &sample());
        // `_id: 1` in an exclusion changes nothing.
        same(
            &project(doc! {"_id": 1, "a": 0}, sample()),
            &doc! {"x": 0, "_id": 1, "b": {"c": 2, "d": 3}, "e": [1, 2, 3]},
        );
    }

    #[test]
    fn paths_through_arrays() {
        let d = doc! {"_id": 1, "a": [{"b": 1, "c": 2}, {"c": 3}, 5, [{"b": 4, "c": 5}]]};
        same(
            &project(doc! {"a.b": 1, "_id": 0}, d.clone()),
            &doc! {"a": [{"b": 1}, {}, [{"b": 4}]]},
        );
        same(
            &project(doc! {"a.b": 0, "_id": 0}, d),
            &doc! {"a": [{"c": 2}, {"c": 3}, 5, [{"c": 5}]]},
        );
        // A scalar where the path wants a document is dropped by an
        // inclusion.
        same(
            &project(doc! {"a.b": 1}, doc! {"_id": 1, "a": 5}),
            &doc! {"_id": 1},
        );
    }

    #[test]
    fn inclusion_follows_the_document_not_the_projection() {
        // `_id` is not moved to the front: the document's order stands.
        same(
            &project(
                doc! {"c": 1, "a": 1},
                doc! {"a": 1, "_id": 2, "b": 3, "c": 4},
            ),
            &doc! {"a": 1, "_id": 2, "c": 4},
        );
        same(
            &project(
                doc! {"a.b.c": 1, "_id": 0},
                doc! {"a": [[{"b": {"c": 1, "d": 2}}], {"b": [{"c": 3}, {"d": 4}]}]},
            ),
            &doc! {"a": [[{"b": {"c": 1}}], {"b": [{"c": 3}, {}]}]},
        );
    }

    #[test]
    fn mixing_inclusion_and_exclusion() {
        let e = parse_err(doc! {"a": 1, "b": 0});
        assert_eq!(e.code, 31254);
        assert_eq!(
            e.message,
            "Cannot do exclusion on field b in inclusion projection"
        );
        let e = parse_err(doc! {"a": 0, "b": 1});
        assert_eq!(e.code, 31253);
        assert_eq!(
            e.message,
            "Cannot do inclusion on field b in exclusion projection"
        );
        let e = parse_err(doc! {"a": {"b": 0}, "c": 1});
        assert_eq!(e.code, 31253);
        // `_id` only at the top is exempt.
        assert_eq!(parse_err(doc! {"a": 1, "s._id": 0}).code, 31254);
        Projection::parse(&doc! {"a": 1, "_id": 0}).expect("parses");
        Projection::parse(&doc! {"_id": 1, "a": 0}).expect("parses");
    }

    #[test]
    fn path_errors() {
        assert_eq!(parse_err(doc! {"a": 1, "a.b": 1}).code, 31249);
        assert_eq!(
            parse_err(doc! {"a": 1, "a.b": 1}).message,
            "Path collision at a.b remaining portion b"
        );
        assert_eq!(parse_err(doc! {"a.b": 1, "a": 1}).code, 31250);
        assert_eq!(parse_err(doc! {"a.b": 1, "a": {"b": 0}}).code, 31250);
        assert_eq!(parse_err(doc! {"": 1}).code, codes::LOCATION_40352);
        assert_eq!(parse_err(doc! {"a..b": 1}).code, 15998);
        assert_eq!(parse_err(doc! {"$a": 1}).code, 16410);
        assert_eq!(parse_err(doc! {"a": {}}).code, 51270);
        // Sub-projections merge with dotted paths.
        same(
            &project(doc! {"b.c": 1, "b": {"d": 1}}, sample()),
            &doc! {"_id": 1, "b": {"c": 2, "d": 3}},
        );
    }

    #[test]
    fn slice() {
        let d = || doc! {"_id": 1, "a": [1, 2, 3, 4, 5], "b": 1};
        let cases: Vec<(Bson, Vec<i32>)> = vec![
            (Bson::Int32(2), vec![1, 2]),
            (Bson::Int32(-2), vec![4, 5]),
            (Bson::Int32(0), vec![]),
            (Bson::Int32(10), vec![1, 2, 3, 4, 5]),
            (Bson::Int32(-10), vec![1, 2, 3, 4, 5]),
            (Bson::Double(2.7), vec![1, 2]),
            (bson::bson!([1, 2]), vec![2, 3]),
            (bson::bson!([-2, 1]), vec![4]),
            (bson::bson!([-10, 2]), vec![1, 2]),
            (bson::bson!([10, 2]), vec![]),
        ];
        for (arg, expected) in cases {
            let out = project(doc! {"a": {"$slice": arg.clone()}}, d());
            let expected: Vec<Bson> = expected.into_iter().map(Bson::Int32).collect();
            // A $slice alone is an exclusion: every other field stays.
            same(&out, &doc! {"_id": 1, "a": expected, "b": 1});
        }
        // With an inclusion, only the named fields.
        same(
            &project(doc! {"a": {"$slice": 1}, "_id": 0, "c": 1}, d()),
            &doc! {"a": [1]},
        );
        same(
            &project(doc! {"a": {"$slice": 1}, "_id": 1}, d()),
            &doc! {"_id": 1, "a": [1]},
        );
        // Inside arrays of documents, and not on non-arrays.
        same(
            &project(
                doc! {"x.y": {"$slice": -1}},
                doc! {"_id": 1, "x": [{"y": [1, 2]}, {"y": 3}, 4], "z": 1},
            ),
            &doc! {"_id": 1, "x": [{"y": [2]}, {"y": 3}, 4], "z": 1},
        );
        assert_eq!(parse_err(doc! {"a": {"$slice": "x"}}).code, 31273);
        // An array that is not find's [skip, limit] is tried as the
        // aggregation expression, whose error wins; find's is in the message.
        let e = parse_err(doc! {"a": {"$slice": [1]}});
        assert!(e.message.contains("Location31272"), "{}", e.message);
        let code = |arg: Bson| find_slice(&arg).expect_err("not find's $slice").code;
        assert_eq!(code(bson::bson!([1])), 31272);
        assert_eq!(code(bson::bson!([1, 0])), 31259);
        assert_eq!(code(bson::bson!(["x", 1])), 31257);
        assert_eq!(code(bson::bson!([1, "x"])), 31258);
    }

    #[test]
    fn elem_match() {
        let d = doc! {
            "_id": 1,
            "games": [{"score": 3}, {"score": 8, "n": 1}, {"score": 9}],
            "joined": 2020,
            "nums": [1, 5, 7],
            "other": 1,
        };
        // After the included fields, whatever the order in the document.
        same(
            &project(
                doc! {"games": {"$elemMatch": {"score": {"$gt": 5}}}, "joined": 1},
                d.clone(),
            ),
            &doc! {"_id": 1, "joined": 2020, "games": [{"score": 8, "n": 1}]},
        );
        same(
            &project(
                doc! {"nums": {"$elemMatch": {"$gte": 5}}, "_id": 0},
                d.clone(),
            ),
            &doc! {"nums": [5]},
        );
        // No match: the field is left out.
        same(
            &project(doc! {"nums": {"$elemMatch": {"$gt": 50}}}, d.clone()),
            &doc! {"_id": 1},
        );
        // In an exclusion, in place.
        same(
            &project(doc! {"other": 0, "games": {"$elemMatch": {"score": 9}}}, d),
            &doc! {"_id": 1, "games": [{"score": 9}], "joined": 2020, "nums": [1, 5, 7]},
        );
        assert_eq!(parse_err(doc! {"a": {"$elemMatch": 1}}).code, 31274);
        assert_eq!(
            parse_err(doc! {"a.b": {"$elemMatch": {"x": 1}}}).code,
            31275
        );
        assert_eq!(
            parse_err(doc! {"a": {"b": {"$elemMatch": {"x": 1}}}}).code,
            31275
        );
        assert_eq!(
            parse_err(doc! {"a": {"$elemMatch": {"x": 1}}, "b.$": 1}).code,
            31256
        );
        assert_eq!(
            parse_err(doc! {"b.$": 1, "a": {"$elemMatch": {"x": 1}}}).code,
            31255
        );
    }

    #[test]
    fn positional() {
        let p = Projection::parse(&doc! {"grades.$": 1}).expect("parses");
        assert!(p.uses_positional());
        let d = doc! {"_id": 1, "name": "x", "grades": [80, 85, 90]};
        let details = MatchDetails {
            array_index: Some(1),
        };
        same(
            &p.apply(&d, Some(&details)).expect("applies"),
            &doc! {"_id": 1, "grades": [85]},
        );
        let p = Projection::parse(&doc! {"s.g.$": 1, "name": 1}).expect("parses");
        same(
            &p.apply(
                &doc! {"_id": 1, "name": "x", "s": {"g": [1, 2]}},
                Some(&details),
            )
            .expect("applies"),
            &doc! {"_id": 1, "name": "x", "s": {"g": [2]}},
        );
        // Without the match details there is nothing to cut to.
        let p = Projection::parse(&doc! {"grades.$": 1}).expect("parses");
        assert_eq!(p.apply(&d, None).expect_err("no details").code, 51246);
        let far = MatchDetails {
            array_index: Some(7),
        };
        assert_eq!(p.apply(&d, Some(&far)).expect_err("no element").code, 51247);
        // A field that is not an array is left as it is.
        same(
            &p.apply(&doc! {"_id": 1, "grades": 5}, None)
                .expect("applies"),
            &doc! {"_id": 1, "grades": 5},
        );
        assert_eq!(parse_err(doc! {"a.$": 1, "b.$": 1}).code, 31276);
        assert_eq!(parse_err(doc! {"a.$": 0}).code, 31395);
        assert_eq!(parse_err(doc! {"a.$": "x"}).code, 31308);
        assert_eq!(parse_err(doc! {"a.$": {"$slice": 1}}).code, 31271);
        assert_eq!(parse_err(doc! {"a.$.b": 1}).code, 31394);
        assert_eq!(parse_err(doc! {"b": 0, "a.$": 1}).code, 31253);
    }

    #[test]
    fn literals() {
        let out = project(
            doc! {"a": 1, "k": "text", "n": Bson::Null, "arr": [1, {"x": 2}], "lit": {"$literal": "$notAPath"}, "b.c": "seven"},
            sample(),
        );
        // Computed fields come after the included ones, in the spec's order;
        // one already projected is replaced where it is.
        same(
            &out,
            &doc! {
                "_id": 1,
                "a": 1,
                "b": {"c": "seven"},
                "k": "text",
                "n": Bson::Null,
                "arr": [1, {"x": 2}],
                "lit": "$notAPath",
            },
        );
        let out = project(
            doc! {"b.d": 1, "b.new": "v", "e.tag": "t", "a.z": "u"},
            sample(),
        );
        same(
            &out,
            &doc! {
                "_id": 1,
                "a": {"z": "u"},
                "b": {"d": 3, "new": "v"},
                "e": [{"tag": "t"}, {"tag": "t"}, {"tag": "t"}],
            },
        );
        let e = parse_err(doc! {"a": 0, "k": "text"});
        assert_eq!(e.code, 31310);
        let e = parse_err(doc! {"a": 0, "k": {"$literal": 1}});
        assert_eq!(e.code, 31252);
        assert_eq!(parse_err(doc! {"k": "text", "a": 0}).code, 31254);
    }

    #[test]
    fn expressions() {
        let out = project(
            doc! {"_id": 0, "total": {"$add": ["$a", 1]}, "copy": "$b.c", "both": ["$a", "$x"]},
            sample(),
        );
        same(&out, &doc! {"total": 2, "copy": 2, "both": [1, 0]});
        // A $slice that is not find's is the aggregation expression.
        let out = project(doc! {"_id": 0, "s": {"$slice": ["$e", 1, 1]}}, sample());
        same(&out, &doc! {"s": [2]});
    }

    #[test]
    fn expression_parse_errors_surface() {
        // No expression has this name, whatever the expression module knows.
        assert!(Projection::parse(&doc! {"x": {"$noSuchOperator": 1}}).is_err());
    }
}
