//! Query planning: which index, if any, a query reads instead of scanning
//! the whole table. Pure: the indexes and the query are arguments.
//!
//! An index serves a query when the filter requires equality on a leading
//! run of its fields (those values form a key prefix: the scan reads only
//! the entries under it), and/or when the sort asks for the index's next
//! fields in the index's directions (the scan then yields documents in the
//! sort's order, so a limit stops it early: `find({a: 1}).sort({ts: -1})
//! .limit(n)` reads about n entries of an index on `{a: 1, ts: -1}`). The
//! filter is always applied again to the documents read: the index only
//! narrows what is read. Partial indexes are not chosen (the planner does
//! not prove that a filter implies the partial filter); sparse indexes are
//! not chosen for a null equality or for a sort (documents missing the
//! fields have no entry there).

use bson::{Bson, Document};

use crate::index::IndexDef;

/// How a query reads an index.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexPlan {
    pub index_id: u64,
    pub name: String,
    /// `keys::encode_key` of the equality values of the leading fields.
    pub prefix: Vec<u8>,
    /// Leading fields with equality conditions.
    pub eq_fields: usize,
    /// The scan yields documents in the query's sort order.
    pub provides_sort: bool,
    /// The index's key pattern (for explain).
    pub key_pattern: Document,
}

/// The index a query with `filter` and `sort` should read, or `None` for
/// a scan of the table.
pub fn choose(
    indexes: &[IndexDef],
    filter: &Document,
    sort: Option<&Document>,
) -> Option<IndexPlan> {
    let eqs = equalities(filter);
    let sort: Vec<(String, i32)> = sort
        .map(|s| s.iter().map(|(k, v)| (k.clone(), direction(v))).collect())
        .unwrap_or_default();
    let mut best: Option<(usize, bool, IndexPlan)> = None;
    for def in indexes.iter().filter(|d| d.ready && d.partial.is_none()) {
        let mut values = Vec::new();
        for (path, dir) in &def.keys {
            match eqs.iter().find(|(p, _)| p == path) {
                Some((_, Bson::Null)) if def.sparse => break,
                Some((_, v)) => values.push((v.clone(), *dir < 0)),
                None => break,
            }
        }
        let k = values.len();
        let rest = &def.keys[k..];
        let provides_sort = !sort.is_empty()
            && !def.sparse
            && sort.len() <= rest.len()
            && sort
                .iter()
                .zip(rest)
                .all(|((sp, sd), (ip, id))| sp == ip && sd == id);
        if k == 0 && !provides_sort {
            continue;
        }
        let better = match &best {
            None => true,
            Some((bk, bs, _)) => (k, provides_sort) > (*bk, *bs),
        };
        if better {
            let plan = IndexPlan {
                index_id: def.id,
                name: def.name.clone(),
                prefix: crate::keys::encode_key(&values),
                eq_fields: k,
                provides_sort,
                key_pattern: def.key_pattern(),
            };
            best = Some((k, provides_sort, plan));
        }
    }
    best.map(|(_, _, p)| p)
}

fn direction(v: &Bson) -> i32 {
    match crate::order::number(v) {
        Some(crate::order::Num::Int(i)) if i < 0 => -1,
        Some(crate::order::Num::Float(f)) if f < 0.0 => -1,
        _ => 1,
    }
}

/// The equality conditions a filter requires of top-level paths: `{a: v}`
/// and `{a: {$eq: v}}` (also inside a top-level `$and`), for scalar `v`
/// (arrays, regexes and operator documents are left to the scan; an
/// embedded document counts, as it is compared whole).
pub fn equalities(filter: &Document) -> Vec<(String, Bson)> {
    let mut out = Vec::new();
    collect(filter, &mut out);
    out
}

fn collect(filter: &Document, out: &mut Vec<(String, Bson)>) {
    for (k, v) in filter {
        if k == "$and" {
            if let Bson::Array(a) = v {
                for c in a {
                    if let Bson::Document(d) = c {
                        collect(d, out);
                    }
                }
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        let value = match v {
            Bson::Document(d) if d.keys().any(|k| k.starts_with('$')) => {
                match (d.len(), d.get("$eq")) {
                    (1, Some(v)) => v,
                    _ => continue,
                }
            }
            v => v,
        };
        if matches!(
            value,
            Bson::Array(_) | Bson::RegularExpression(_) | Bson::Undefined
        ) {
            continue;
        }
        if let Bson::Document(d) = value {
            if d.keys().any(|k| k.starts_with('$')) {
                continue;
            }
        }
        if !out.iter().any(|(p, _)| p == k) {
            out.push((k.clone(), value.clone()));
        }
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

    #[test]
    fn equality_prefixes_and_sorts_choose_indexes() {
        let a = idx(1, doc! {"key": {"a": 1}});
        let a_ts = idx(2, doc! {"key": {"a": 1, "ts": -1}});
        let all = [a.clone(), a_ts.clone()];
        // The longer equality prefix wins; with a sort on ts, the compound.
        let p = choose(&all, &doc! {"a": 5}, Some(&doc! {"ts": -1})).unwrap();
        assert_eq!((p.index_id, p.eq_fields, p.provides_sort), (2, 1, true));
        // A sort in the other direction is not provided by it.
        let p = choose(&all, &doc! {"a": 5}, Some(&doc! {"ts": 1})).unwrap();
        assert!(!p.provides_sort);
        // Both fields equal.
        let p = choose(&all, &doc! {"a": 5, "ts": {"$eq": 3}}, None).unwrap();
        assert_eq!((p.index_id, p.eq_fields), (2, 2));
        // No condition on a: only a sort on a uses an index.
        assert!(choose(&all, &doc! {"ts": 3}, None).is_none());
        let p = choose(&all, &doc! {}, Some(&doc! {"a": 1})).unwrap();
        assert_eq!((p.eq_fields, p.provides_sort), (0, true));
        // Ranges, regexes and arrays are left to the scan (for now).
        assert!(choose(&all, &doc! {"a": {"$gt": 1}}, None).is_none());
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
        assert!(choose(&[sparse], &doc! {"a": 2}, None).is_some());
    }

    #[test]
    fn the_prefix_is_a_prefix_of_the_entries() {
        let d = idx(1, doc! {"key": {"a": 1, "ts": -1}});
        let p = choose(std::slice::from_ref(&d), &doc! {"a": 5.0}, None).unwrap();
        for e in d.entries(&doc! {"a": 5, "ts": 9}).unwrap() {
            assert!(e.starts_with(&p.prefix));
        }
        for e in d.entries(&doc! {"a": 6, "ts": 9}).unwrap() {
            assert!(!e.starts_with(&p.prefix));
        }
    }
}
