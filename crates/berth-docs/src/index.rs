//! Secondary indexes: their definitions and the entries a document gives
//! each of them. Pure: the table service stores the entries beside the
//! documents, in the same transactions.
//!
//! An entry's key part is `keys::encode_key` of the document's values at the
//! index's paths (descending components inverted), so a scan of the index
//! range visits documents in the index's order. A missing field is indexed
//! as null (as MongoDB does), except in a sparse index, which skips
//! documents missing every indexed field. An array value makes the index
//! multikey: one entry per element (an empty array is indexed as
//! undefined, below null in MongoDB; here as null); two array fields in one
//! compound key are refused ("cannot index parallel arrays"). Which fields
//! have met an array is kept per index (`multikey`, MongoDB's multikey
//! paths), so the planner knows where bounds may be intersected.
//!
//! A TTL index (`expireAfterSeconds`, a single field) is an ordinary index
//! whose expired entries the table service's sweep reads and deletes (see
//! `Tables::expire`).

use bson::{Bson, Document};
use serde::{Deserialize, Serialize};

use crate::matcher::Filter;
use crate::DocError;

/// MongoDB's code for an index that cannot be made (bad spec).
pub const CANNOT_CREATE_INDEX: i32 = 67;
/// MongoDB's code for a document that gives parallel arrays to one index.
pub const CANNOT_INDEX_PARALLEL_ARRAYS: i32 = 171;
/// Most fields in one compound index (MongoDB's limit).
pub const KEY_FIELDS_MAX: usize = 32;
/// Most secondary indexes per table (MongoDB's limit is 64 with `_id`).
pub const INDEXES_MAX: usize = 63;
/// Most entries one document may give one index (multikey arrays).
pub const ENTRIES_PER_DOC_MAX: usize = 10_000;
/// The largest `expireAfterSeconds` (MongoDB's: a 32-bit signed integer).
pub const EXPIRE_AFTER_SECS_MAX: i64 = i32::MAX as i64;

/// A secondary index, stored in the table's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexDef {
    /// Its number in the table's key range (≥ 1; never reused).
    pub id: u64,
    pub name: String,
    /// Paths and directions (1 ascending, -1 descending).
    pub keys: Vec<(String, i32)>,
    pub unique: bool,
    pub sparse: bool,
    /// `partialFilterExpression`, as BSON bytes.
    pub partial: Option<Vec<u8>>,
    /// The spec as `listIndexes` gives it back, as BSON bytes.
    pub spec: Vec<u8>,
    /// False while its entries for the documents written before it are
    /// being made; queries use it only once true. Writes maintain it
    /// either way.
    pub ready: bool,
    /// A bit per key field that has met an array in some document (the
    /// field is multikey); `None` when unknown (an index made before they
    /// were kept: every field may be). Not in this struct's stored layout:
    /// `TableConfig` keeps them after its other fields, so a reader of the
    /// older layout still reads the settings.
    #[serde(skip)]
    pub multikey: Option<u64>,
}

impl IndexDef {
    /// Parses a `createIndexes` spec (`{key: {a: 1, b: -1}, name, unique,
    /// sparse, partialFilterExpression, expireAfterSeconds}`).
    pub fn parse(id: u64, spec: &Document) -> Result<IndexDef, DocError> {
        let bad = |m: String| DocError::new(CANNOT_CREATE_INDEX, m);
        let key = spec
            .get_document("key")
            .map_err(|_| bad("an index spec needs a 'key' document".into()))?;
        if key.is_empty() {
            return Err(bad("an index key pattern must not be empty".into()));
        }
        if key.len() > KEY_FIELDS_MAX {
            return Err(bad(format!(
                "an index may have at most {KEY_FIELDS_MAX} fields"
            )));
        }
        let mut keys = Vec::new();
        for (path, dir) in key {
            if path.is_empty() || path.starts_with('$') || path.split('.').any(str::is_empty) {
                return Err(bad(format!("bad index key path {path:?}")));
            }
            let dir = match dir {
                Bson::Int32(1) | Bson::Int64(1) => 1,
                Bson::Int32(-1) | Bson::Int64(-1) => -1,
                Bson::Double(d) if *d == 1.0 => 1,
                Bson::Double(d) if *d == -1.0 => -1,
                Bson::String(kind) => {
                    return Err(DocError::new(
                        crate::error::codes::BAD_VALUE,
                        format!("{kind:?} indexes are not supported by Berth tables (only ascending and descending keys)"),
                    ))
                }
                other => return Err(bad(format!("bad index key direction {other} for {path:?}"))),
            };
            if path == "_id" && key.len() == 1 {
                return Err(bad("the _id index exists already".into()));
            }
            keys.push((path.clone(), dir));
        }
        let name = match spec.get("name") {
            Some(Bson::String(n)) if !n.is_empty() => n.clone(),
            Some(_) => return Err(bad("an index name must be a non-empty string".into())),
            None => default_name(&keys),
        };
        if name == "_id_" {
            return Err(bad("the name _id_ is the _id index's".into()));
        }
        let flag = |k: &str| -> Result<bool, DocError> {
            match spec.get(k) {
                None => Ok(false),
                Some(Bson::Boolean(b)) => Ok(*b),
                Some(v) => Ok(crate::expr::truthy(v)),
            }
        };
        let partial = match spec.get("partialFilterExpression") {
            None => None,
            Some(Bson::Document(d)) => {
                Filter::parse(d)?;
                let mut b = Vec::new();
                d.to_writer(&mut b)
                    .map_err(|e| bad(format!("partialFilterExpression: {e}")))?;
                Some(b)
            }
            Some(_) => return Err(bad("partialFilterExpression must be a document".into())),
        };
        for k in spec.keys() {
            match k.as_str() {
                "key"
                | "name"
                | "unique"
                | "sparse"
                | "partialFilterExpression"
                | "v"
                | "background"
                | "ns"
                | "expireAfterSeconds" => {}
                other => {
                    return Err(DocError::new(
                        115,
                        format!("the index option {other:?} is not supported by Berth tables"),
                    ))
                }
            }
        }
        let expire = match spec.get("expireAfterSeconds") {
            None => None,
            Some(v) => Some(parse_expire(v, &keys)?),
        };
        let unique = flag("unique")?;
        let sparse = flag("sparse")?;
        let mut listed = bson::doc! {"v": 2, "key": key.clone(), "name": &name};
        if unique {
            listed.insert("unique", true);
        }
        if sparse {
            listed.insert("sparse", true);
        }
        if let Some(Bson::Document(d)) = spec.get("partialFilterExpression") {
            listed.insert("partialFilterExpression", d.clone());
        }
        if let Some(secs) = expire {
            // Within i32 (checked): listed as MongoDB lists it, an int.
            listed.insert("expireAfterSeconds", secs as i32);
        }
        let mut spec_bytes = Vec::new();
        listed
            .to_writer(&mut spec_bytes)
            .map_err(|e| bad(format!("index spec: {e}")))?;
        Ok(IndexDef {
            id,
            name,
            keys,
            unique,
            sparse,
            partial,
            spec: spec_bytes,
            ready: false,
            // A new index: its entries are all made by this build, which
            // keeps the marks.
            multikey: Some(0),
        })
    }

    /// `expireAfterSeconds` of a TTL index.
    pub fn expire_after_secs(&self) -> Option<i64> {
        match self.listed().get("expireAfterSeconds") {
            Some(Bson::Int32(s)) => Some(i64::from(*s)),
            Some(Bson::Int64(s)) => Some(*s),
            _ => None,
        }
    }

    /// Whether key field `field` may hold arrays (it has met one, or that
    /// is not known).
    pub fn is_multikey(&self, field: usize) -> bool {
        self.multikey.is_none_or(|bits| bits & (1 << field) != 0)
    }

    /// Marks key field `field` multikey; returns whether that is new.
    pub fn set_multikey(&mut self, field: usize) -> bool {
        match &mut self.multikey {
            Some(bits) if *bits & (1 << field) == 0 => {
                *bits |= 1 << field;
                true
            }
            _ => false,
        }
    }

    /// The spec as `listIndexes` shows it.
    pub fn listed(&self) -> Document {
        Document::from_reader(self.spec.as_slice()).unwrap_or_default()
    }

    /// The key pattern as a document (`{a: 1, b: -1}`).
    pub fn key_pattern(&self) -> Document {
        let mut d = Document::new();
        for (p, dir) in &self.keys {
            d.insert(p.clone(), *dir);
        }
        d
    }

    /// Whether two definitions describe the same index (same keys and options).
    pub fn same_as(&self, other: &IndexDef) -> bool {
        self.keys == other.keys
            && self.unique == other.unique
            && self.sparse == other.sparse
            && self.partial == other.partial
            && self.expire_after_secs() == other.expire_after_secs()
    }

    /// `doc`'s value at each of this index's paths (null when missing), as
    /// `{path: value}`.
    pub fn key_values(&self, doc: &Document) -> Document {
        self.keys
            .iter()
            .map(|(p, _)| {
                let v = p
                    .split('.')
                    .try_fold(Bson::Document(doc.clone()), |v, k| match v {
                        Bson::Document(d) => d.get(k).cloned(),
                        _ => None,
                    })
                    .unwrap_or(Bson::Null);
                (p.clone(), v)
            })
            .collect()
    }

    /// What MongoDB's duplicate key error (11000) on this index tells
    /// drivers beside its message: `keyPattern` and `doc`'s `keyValue`.
    pub fn duplicate_info(&self, doc: &Document) -> Document {
        bson::doc! {"keyPattern": self.key_pattern(), "keyValue": self.key_values(doc)}
    }

    /// The key parts of the entries `doc` gives this index (none when a
    /// sparse index or a partial filter leaves it out), without duplicates.
    pub fn entries(&self, doc: &Document) -> Result<Vec<Vec<u8>>, DocError> {
        Ok(self.entries_and_array(doc)?.0)
    }

    /// [`IndexDef::entries`], and the key field at which `doc` has an
    /// array (at most one: parallel arrays are refused).
    pub fn entries_and_array(
        &self,
        doc: &Document,
    ) -> Result<(Vec<Vec<u8>>, Option<usize>), DocError> {
        if let Some(p) = &self.partial {
            let filter = Document::from_reader(p.as_slice())
                .map_err(|e| DocError::new(1, format!("stored partial filter: {e}")))?;
            if !Filter::parse(&filter)?.matches(doc) {
                return Ok((Vec::new(), None));
            }
        }
        let mut per_field: Vec<Vec<Bson>> = Vec::with_capacity(self.keys.len());
        let mut present = false;
        let mut arrays = 0;
        let mut array_field = None;
        for (i, (path, _)) in self.keys.iter().enumerate() {
            let mut vals = Vec::new();
            let mut is_array = false;
            values_at(doc, path, &mut vals, &mut is_array);
            if !vals.is_empty() {
                present = true;
            }
            if is_array {
                array_field = Some(i);
                arrays += 1;
                if arrays > 1 {
                    return Err(DocError::new(
                        CANNOT_INDEX_PARALLEL_ARRAYS,
                        format!("cannot index parallel arrays in index {}", self.name),
                    ));
                }
            }
            if vals.is_empty() {
                vals.push(Bson::Null);
            }
            per_field.push(vals);
        }
        if self.sparse && !present {
            return Ok((Vec::new(), None));
        }
        let mut out: Vec<Vec<u8>> = Vec::new();
        let mut combo = vec![0usize; per_field.len()];
        loop {
            let values: Vec<(Bson, bool)> = combo
                .iter()
                .zip(&per_field)
                .zip(&self.keys)
                .map(|((i, vals), (_, dir))| (vals[*i].clone(), *dir < 0))
                .collect();
            let k = crate::keys::encode_key(&values);
            if !out.contains(&k) {
                out.push(k);
                if out.len() > ENTRIES_PER_DOC_MAX {
                    return Err(DocError::new(
                        CANNOT_CREATE_INDEX,
                        format!(
                            "a document gives index {} more than {ENTRIES_PER_DOC_MAX} entries",
                            self.name
                        ),
                    ));
                }
            }
            // Next combination (only one field can have several values).
            let mut f = per_field.len();
            loop {
                if f == 0 {
                    return Ok((out, array_field));
                }
                f -= 1;
                combo[f] += 1;
                if combo[f] < per_field[f].len() {
                    break;
                }
                combo[f] = 0;
            }
        }
    }
}

/// A TTL index's `expireAfterSeconds`: a whole number of seconds from 0
/// to [`EXPIRE_AFTER_SECS_MAX`], on a single-field index.
fn parse_expire(v: &Bson, keys: &[(String, i32)]) -> Result<i64, DocError> {
    let bad = |m: String| DocError::new(CANNOT_CREATE_INDEX, m);
    let secs = match v {
        Bson::Int32(s) => i64::from(*s),
        Bson::Int64(s) => *s,
        Bson::Double(f) if f.fract() == 0.0 && f.abs() <= 1e18 => *f as i64,
        other => {
            return Err(bad(format!(
                "expireAfterSeconds must be a whole number of seconds, not {other}"
            )))
        }
    };
    if !(0..=EXPIRE_AFTER_SECS_MAX).contains(&secs) {
        return Err(bad(format!(
            "expireAfterSeconds must be within [0, {EXPIRE_AFTER_SECS_MAX}], not {secs}"
        )));
    }
    if keys.len() != 1 {
        return Err(bad(
            "TTL indexes are single-field indexes; compound indexes do not support expireAfterSeconds".into(),
        ));
    }
    Ok(secs)
}

/// MongoDB's default index name: `a_1_b_-1`.
pub fn default_name(keys: &[(String, i32)]) -> String {
    keys.iter()
        .map(|(p, d)| format!("{p}_{d}"))
        .collect::<Vec<_>>()
        .join("_")
}

/// The values a path reaches in a document, arrays expanded one level at
/// the end and traversed (element documents) on the way; `is_array` when an
/// array was met.
fn values_at(doc: &Document, path: &str, out: &mut Vec<Bson>, is_array: &mut bool) {
    fn walk(v: &Bson, rest: &[&str], out: &mut Vec<Bson>, is_array: &mut bool) {
        match (rest.split_first(), v) {
            (None, Bson::Array(a)) => {
                *is_array = true;
                if a.is_empty() {
                    out.push(Bson::Null);
                }
                for e in a {
                    if !out.iter().any(|o| crate::order::equal(o, e)) {
                        out.push(e.clone());
                    }
                }
            }
            (None, v) => out.push(v.clone()),
            (Some((k, more)), Bson::Document(d)) => {
                if let Some(v) = d.get(*k) {
                    walk(v, more, out, is_array);
                }
            }
            (Some((k, more)), Bson::Array(a)) => {
                *is_array = true;
                if let Ok(i) = k.parse::<usize>() {
                    if let Some(v) = a.get(i) {
                        walk(v, more, out, is_array);
                    }
                }
                for e in a {
                    if let Bson::Document(_) = e {
                        walk(e, rest, out, is_array);
                    }
                }
            }
            _ => {}
        }
    }
    let parts: Vec<&str> = path.split('.').collect();
    if let Some(v) = doc.get(parts[0]) {
        walk(v, &parts[1..], out, is_array);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn def(spec: Document) -> IndexDef {
        IndexDef::parse(1, &spec).unwrap()
    }

    #[test]
    fn specs_parse_and_get_default_names() {
        let d = def(doc! {"key": {"a": 1, "b.c": -1}});
        assert_eq!(d.name, "a_1_b.c_-1");
        assert_eq!(d.keys, vec![("a".into(), 1), ("b.c".into(), -1)]);
        assert_eq!(
            d.listed(),
            doc! {"v": 2, "key": {"a": 1, "b.c": -1}, "name": "a_1_b.c_-1"}
        );
        let u = def(doc! {"key": {"email": 1}, "unique": true, "name": "em"});
        assert!(u.unique);
        assert_eq!(u.listed().get_bool("unique").ok(), Some(true));
        for bad in [
            doc! {"key": {}},
            doc! {"key": {"a": 2}},
            doc! {"key": {"a": "text"}},
            doc! {"key": {"a": 1}, "expireAfterSeconds": -1},
            doc! {"key": {"a": 1}, "expireAfterSeconds": 1.5},
            doc! {"key": {"a": 1}, "expireAfterSeconds": "5"},
            doc! {"key": {"a": 1}, "expireAfterSeconds": 1i64 << 40},
            doc! {"key": {"a": 1, "b": 1}, "expireAfterSeconds": 5},
            doc! {"key": {"_id": 1}},
            doc! {"name": "x"},
        ] {
            assert!(IndexDef::parse(1, &bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ttl_specs_keep_their_expiry() {
        let d = def(doc! {"key": {"at": 1}, "expireAfterSeconds": 3600.0});
        assert_eq!(d.expire_after_secs(), Some(3600));
        assert_eq!(
            d.listed(),
            doc! {"v": 2, "key": {"at": 1}, "name": "at_1", "expireAfterSeconds": 3600}
        );
        assert_eq!(
            def(doc! {"key": {"at": 1}, "expireAfterSeconds": 0}).expire_after_secs(),
            Some(0)
        );
        assert_eq!(def(doc! {"key": {"at": 1}}).expire_after_secs(), None);
        // Another expiry is another index's options.
        assert!(!d.same_as(&def(doc! {"key": {"at": 1}, "expireAfterSeconds": 60})));
        assert!(d.same_as(&def(doc! {"key": {"at": 1}, "expireAfterSeconds": 3600})));
    }

    #[test]
    fn array_fields_are_reported_for_the_multikey_marks() {
        let mut d = def(doc! {"key": {"a": 1, "b.c": 1}});
        assert_eq!(
            d.entries_and_array(&doc! {"a": 1, "b": {"c": 2}})
                .unwrap()
                .1,
            None
        );
        assert_eq!(
            d.entries_and_array(&doc! {"a": [1], "b": {"c": 2}})
                .unwrap()
                .1,
            Some(0)
        );
        assert_eq!(
            d.entries_and_array(&doc! {"a": 1, "b": [{"c": 2}]})
                .unwrap()
                .1,
            Some(1)
        );
        assert!(!d.is_multikey(1));
        assert!(d.set_multikey(1) && !d.set_multikey(1));
        assert!(d.is_multikey(1) && !d.is_multikey(0));
        d.multikey = None;
        assert!(d.is_multikey(0), "unknown: may be");
    }

    #[test]
    fn duplicate_info_names_the_pattern_and_the_values() {
        let d = def(doc! {"key": {"a.b": 1, "c": -1}, "unique": true});
        assert_eq!(
            d.duplicate_info(&doc! {"_id": 1, "a": {"b": "x"}}),
            doc! {"keyPattern": {"a.b": 1, "c": -1}, "keyValue": {"a.b": "x", "c": null}}
        );
    }

    #[test]
    fn entries_follow_values_arrays_and_options() {
        let d = def(doc! {"key": {"a": 1}});
        assert_eq!(d.entries(&doc! {"a": 5}).unwrap().len(), 1);
        // 5 and 5.0 give the same entry; a missing field is null.
        assert_eq!(
            d.entries(&doc! {"a": 5}).unwrap(),
            d.entries(&doc! {"a": 5.0}).unwrap()
        );
        assert_eq!(
            d.entries(&doc! {}).unwrap(),
            d.entries(&doc! {"a": null}).unwrap()
        );
        // Multikey: one entry per distinct element.
        assert_eq!(d.entries(&doc! {"a": [1, 2, 2, 3]}).unwrap().len(), 3);
        // Through arrays of documents.
        let n = def(doc! {"key": {"x.y": 1}});
        assert_eq!(
            n.entries(&doc! {"x": [{"y": 1}, {"y": 2}]}).unwrap().len(),
            2
        );
        // Parallel arrays refused.
        let c = def(doc! {"key": {"a": 1, "b": 1}});
        let e = c.entries(&doc! {"a": [1], "b": [2]}).unwrap_err();
        assert_eq!(e.code, CANNOT_INDEX_PARALLEL_ARRAYS);
        assert_eq!(c.entries(&doc! {"a": [1, 2], "b": 3}).unwrap().len(), 2);
        // Sparse: documents missing every field are left out.
        let s = def(doc! {"key": {"a": 1, "b": 1}, "sparse": true});
        assert!(s.entries(&doc! {"c": 1}).unwrap().is_empty());
        assert_eq!(s.entries(&doc! {"b": 1}).unwrap().len(), 1);
        // Partial: only matching documents.
        let p = def(doc! {"key": {"a": 1}, "partialFilterExpression": {"live": true}});
        assert!(p.entries(&doc! {"a": 1}).unwrap().is_empty());
        assert_eq!(p.entries(&doc! {"a": 1, "live": true}).unwrap().len(), 1);
    }

    #[test]
    fn entries_sort_in_index_order() {
        let d = def(doc! {"key": {"a": 1, "t": -1}});
        let k = |a: i32, t: i32| d.entries(&doc! {"a": a, "t": t}).unwrap().remove(0);
        assert!(k(1, 9) < k(1, 3), "descending second field");
        assert!(k(1, 0) < k(2, 9), "ascending first field");
    }
}
