//! Consistency check of a table (`berth table check`): every document
//! decodes and is stored under its own `_id`'s key, and every secondary
//! index holds exactly the entries its definition gives the documents.
//!
//! Two passes, each a page at a time (never the whole table in memory):
//! 1. documents → entries: each document decodes, and each entry
//!    [`entry_keys`] gives it for a ready index is there, holding its `_id`
//!    (a unique index's entry held by another document that gives the same
//!    key is a duplicate);
//! 2. entries → documents: each key in the table's index range parses,
//!    belongs to an index the table has, and points at a document whose
//!    current values give that very key (else dangling: no document, or
//!    stale: the document gives other keys).
//!
//! The reads of a pass are not one snapshot: a write committing between
//! them could look like a problem. So what a page's first look suspects is
//! looked at again in a transaction whose reads are all conditions, and
//! committed with a no-op write (the delete of a key that never exists)
//! so Raft checks them: a problem is reported only when every read that
//! shows it held at one instant. A suspect that is fine on the second look
//! was a write in flight. The check changes nothing else.

use berth_meta::codec::decode;
use berth_meta::router::{backoff, TX_RETRIES_MAX};
use berth_meta::{Commit, Tx};
use berth_security::principal::Principal;
use berth_store::keys::{object_range, Key, KeyReader, Kind};
use bson::{Bson, Document};

use crate::index::IndexDef;
use crate::table::{
    authorize, decode_doc, entry_keys, from_meta, id_encoding, transient, Right, TableConfig,
    TableRef, Tables, SCAN_PAGE,
};
use crate::DocError;

/// Problems a report lists (all are counted).
pub const PROBLEMS_LISTED_MAX: usize = 100;
/// Suspects looked at again in one confirming transaction: bounds the
/// conditions one Raft command carries.
const CONFIRM_BATCH: usize = 32;

/// What is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProblemKind {
    /// A stored document that does not decode, or is stored under another
    /// `_id`'s key.
    BadDocument,
    /// A document that gives an index no valid entries (parallel arrays,
    /// too many entries).
    Unindexable,
    /// An entry a document's values give is not there.
    Missing,
    /// An entry whose document is not there.
    Dangling,
    /// An entry whose document's current values give other keys.
    Stale,
    /// Two documents give one key of a unique index.
    Duplicate,
    /// An entry whose key does not parse, or whose value is not the `_id`
    /// its key names.
    Malformed,
    /// An entry of an index the table does not have.
    Orphan,
}

impl ProblemKind {
    pub fn name(self) -> &'static str {
        match self {
            ProblemKind::BadDocument => "bad-document",
            ProblemKind::Unindexable => "unindexable",
            ProblemKind::Missing => "missing-entry",
            ProblemKind::Dangling => "dangling-entry",
            ProblemKind::Stale => "stale-entry",
            ProblemKind::Duplicate => "duplicate-key",
            ProblemKind::Malformed => "malformed-entry",
            ProblemKind::Orphan => "orphan-entry",
        }
    }
}

/// One problem found.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub kind: ProblemKind,
    /// The index's name (none for a document's own problems and orphans).
    pub index: Option<String>,
    /// The document's `_id` as text, or its key encoding in hex (`key:…`)
    /// when no document tells it.
    pub id: String,
    pub detail: String,
}

/// One index's counts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IndexCheck {
    pub id: u64,
    pub name: String,
    pub unique: bool,
    /// Only ready indexes are checked for missing entries (a building one
    /// lacks those of the documents it has not reached yet).
    pub ready: bool,
    /// Entries found in its range.
    pub entries: u64,
    pub missing: u64,
    pub dangling: u64,
    pub stale: u64,
    pub duplicates: u64,
    pub malformed: u64,
}

/// What [`Tables::check`] found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckReport {
    pub path: String,
    pub documents: u64,
    pub bad_documents: u64,
    pub unindexable: u64,
    /// Entries of no index the table has.
    pub orphan_entries: u64,
    pub indexes: Vec<IndexCheck>,
    /// Every problem counted.
    pub problem_count: u64,
    /// The first [`PROBLEMS_LISTED_MAX`].
    pub problems: Vec<Problem>,
}

impl CheckReport {
    /// Whether nothing is wrong.
    pub fn ok(&self) -> bool {
        self.problem_count == 0
    }

    fn add(&mut self, p: Problem) {
        let index = p
            .index
            .as_ref()
            .and_then(|n| self.indexes.iter_mut().find(|i| &i.name == n));
        match (p.kind, index) {
            (ProblemKind::BadDocument, _) => self.bad_documents += 1,
            (ProblemKind::Unindexable, _) => self.unindexable += 1,
            (ProblemKind::Orphan, _) => self.orphan_entries += 1,
            (ProblemKind::Missing, Some(i)) => i.missing += 1,
            (ProblemKind::Dangling, Some(i)) => i.dangling += 1,
            (ProblemKind::Stale, Some(i)) => i.stale += 1,
            (ProblemKind::Duplicate, Some(i)) => i.duplicates += 1,
            (ProblemKind::Malformed, Some(i)) => i.malformed += 1,
            // Every finding of an index names one of `indexes`.
            (_, None) => debug_assert!(false, "a problem of an unknown index: {p:?}"),
        }
        self.problem_count += 1;
        if self.problems.len() < PROBLEMS_LISTED_MAX {
            self.problems.push(p);
        }
    }
}

/// Which pass a suspect comes from (what its key is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    Documents,
    Entries,
}

/// A check's reads: peeks on the first look, conditions when confirming.
struct Reads<'a> {
    tx: &'a mut Tx,
    confirm: bool,
}

impl Reads<'_> {
    async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, DocError> {
        if self.confirm {
            self.tx.get(key).await.map_err(from_meta)
        } else {
            self.tx.peek(key).await.map_err(from_meta)
        }
    }
}

/// `_id` as text, for a problem's report.
fn id_text(doc: &Document) -> String {
    doc.get("_id")
        .map(Bson::to_string)
        .unwrap_or_else(|| "(none)".into())
}

/// An `_id` known only by its key encoding.
fn enc_text(id_enc: &[u8]) -> String {
    let hex: String = id_enc.iter().map(|b| format!("{b:02x}")).collect();
    format!("key:{hex}")
}

/// The key never written (index ids start at 1) whose delete makes a
/// confirming transaction go through Raft, which checks its conditions.
fn no_op_key(t: &TableRef) -> Vec<u8> {
    Key::new(t.vol.id, Kind::TableIndex, t.entry.ino)
        .u64(0)
        .build()
}

/// The problems of the document stored at `key` (`raw`, none when it is
/// gone) against the ready indexes of `config`.
async fn document_problems(
    r: &mut Reads<'_>,
    t: &TableRef,
    config: &TableConfig,
    key: &[u8],
    raw: Option<Vec<u8>>,
) -> Result<Vec<Problem>, DocError> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    let problem = |kind, index: Option<&IndexDef>, id: String, detail: String| Problem {
        kind,
        index: index.map(|d| d.name.clone()),
        id,
        detail,
    };
    let doc = match decode_doc(&raw) {
        Ok(d) => d,
        Err(e) => {
            let id = key_id_text(key);
            return Ok(vec![problem(ProblemKind::BadDocument, None, id, e.message)]);
        }
    };
    let id = id_text(&doc);
    if doc.get("_id").is_none_or(|i| t.doc_key(i) != key) {
        let detail = format!("stored under the key of another _id ({})", key_id_text(key));
        return Ok(vec![problem(ProblemKind::BadDocument, None, id, detail)]);
    }
    let id_enc = id_encoding(doc.get("_id"));
    let mut out = Vec::new();
    for def in config.indexes.iter().filter(|d| d.ready) {
        let keys = match entry_keys(t, def, &doc, &id_enc) {
            Ok(k) => k,
            Err(e) => {
                out.push(problem(
                    ProblemKind::Unindexable,
                    None,
                    id.clone(),
                    e.message,
                ));
                continue;
            }
        };
        for k in keys {
            let holder = match r.get(&k).await? {
                Some(v) if v == id_enc => continue,
                None => {
                    let detail = format!("no entry for {}", dup_values(def, &doc));
                    out.push(problem(ProblemKind::Missing, Some(def), id.clone(), detail));
                    continue;
                }
                Some(v) => v,
            };
            if !def.unique {
                let detail = "its entry holds another _id".to_string();
                out.push(problem(
                    ProblemKind::Malformed,
                    Some(def),
                    id.clone(),
                    detail,
                ));
                continue;
            }
            // A unique key held by another document: a duplicate when
            // that document gives the key too, else this one's entry is
            // missing (and the holder's is stale or dangling: pass 2).
            let other = match r.get(&t.doc_key_enc(&holder)).await? {
                Some(raw) => decode_doc(&raw).ok(),
                None => None,
            };
            let gives = match &other {
                Some(o) => entry_keys(t, def, o, &holder).is_ok_and(|ks| ks.contains(&k)),
                None => false,
            };
            let (kind, detail) = match other {
                Some(o) if gives => (
                    ProblemKind::Duplicate,
                    format!("{} is also _id {}'s", dup_values(def, &doc), id_text(&o)),
                ),
                _ => (
                    ProblemKind::Missing,
                    format!(
                        "the entry for {} holds {}",
                        dup_values(def, &doc),
                        enc_text(&holder)
                    ),
                ),
            };
            out.push(problem(kind, Some(def), id.clone(), detail));
        }
    }
    Ok(out)
}

/// The problems of the index entry at `key` (`value`, none when it is
/// gone) against the indexes of `config`.
async fn entry_problems(
    r: &mut Reads<'_>,
    t: &TableRef,
    config: &TableConfig,
    key: &[u8],
    value: Option<Vec<u8>>,
) -> Result<Vec<Problem>, DocError> {
    let Some(id_enc) = value else {
        return Ok(Vec::new());
    };
    let orphan = |detail: String| {
        Ok(vec![Problem {
            kind: ProblemKind::Orphan,
            index: None,
            id: enc_text(&id_enc),
            detail,
        }])
    };
    let mut reader = match KeyReader::new(key) {
        Ok(rd) => rd,
        Err(e) => return orphan(format!("an entry key that does not parse: {e}")),
    };
    let index_id = match reader.next_u64() {
        Ok(i) => i,
        Err(e) => return orphan(format!("an entry key without an index id: {e}")),
    };
    let Some(def) = config.indexes.iter().find(|d| d.id == index_id) else {
        return orphan(format!(
            "an entry of index id {index_id}, which the table does not have"
        ));
    };
    let malformed = |detail: String| {
        Ok(vec![Problem {
            kind: ProblemKind::Malformed,
            index: Some(def.name.clone()),
            id: enc_text(&id_enc),
            detail,
        }])
    };
    if let Err(e) = reader.next_bytes() {
        return malformed(format!("an entry key without its index key: {e}"));
    }
    if !def.unique {
        match reader.next_bytes() {
            Ok(named) if named == id_enc => {}
            Ok(named) => {
                return malformed(format!(
                    "its key names {} but it holds another _id",
                    enc_text(&named)
                ))
            }
            Err(e) => return malformed(format!("an entry key without its _id: {e}")),
        }
    }
    if !reader.is_at_end() {
        return malformed("an entry key with more components than its index's".into());
    }
    let Some(raw) = r.get(&t.doc_key_enc(&id_enc)).await? else {
        return Ok(vec![Problem {
            kind: ProblemKind::Dangling,
            index: Some(def.name.clone()),
            id: enc_text(&id_enc),
            detail: "no document has this _id".into(),
        }]);
    };
    // A document that does not decode or index is the first pass's problem.
    let Ok(doc) = decode_doc(&raw) else {
        return Ok(Vec::new());
    };
    let Ok(keys) = entry_keys(t, def, &doc, &id_enc) else {
        return Ok(Vec::new());
    };
    if keys.iter().any(|k| k == key) {
        return Ok(Vec::new());
    }
    Ok(vec![Problem {
        kind: ProblemKind::Stale,
        index: Some(def.name.clone()),
        id: id_text(&doc),
        detail: format!(
            "the document now gives {}, not this entry",
            dup_values(def, &doc)
        ),
    }])
}

/// `{a: 1, b: "x"}`: a document's values for an index, for messages.
fn dup_values(def: &IndexDef, doc: &Document) -> String {
    def.key_values(doc).to_string()
}

/// The `_id` a document key names, as its encoding in hex (a document
/// that does not decode tells nothing else).
fn key_id_text(key: &[u8]) -> String {
    match KeyReader::new(key).and_then(|mut r| r.next_bytes()) {
        Ok(enc) => enc_text(&enc),
        Err(_) => enc_text(key),
    }
}

impl Tables {
    /// Checks table `t` (admin and read rights: the report names
    /// documents): see the module's documentation. Only settings whose
    /// indexes change during the check make it fail (WriteConflict: run it
    /// again); documents may change meanwhile.
    pub async fn check(&self, p: &Principal, t: &TableRef) -> Result<CheckReport, DocError> {
        authorize(p, t, Right::Admin)?;
        authorize(p, t, Right::Read)?;
        let tx = self.begin(t).await?;
        let config_raw = tx.peek(&t.config_key()).await.map_err(from_meta)?;
        let config: TableConfig = match &config_raw {
            Some(b) => decode(b, "table settings").map_err(from_meta)?,
            None => TableConfig::default(),
        };
        let mut report = CheckReport {
            path: t.entry.path.clone(),
            indexes: config
                .indexes
                .iter()
                .map(|d| IndexCheck {
                    id: d.id,
                    name: d.name.clone(),
                    unique: d.unique,
                    ready: d.ready,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        // Pass 1: documents → entries.
        let (start, end) = t.doc_range();
        self.check_range(t, &config, Pass::Documents, start, end, &mut report)
            .await?;
        // Pass 2: entries → documents (the settings key itself is the
        // range's first key, and no entry: start after it).
        let (_, end) = object_range(t.vol.id, Kind::TableIndex, t.entry.ino);
        let mut start = t.config_key();
        start.push(0);
        self.check_range(t, &config, Pass::Entries, start, end, &mut report)
            .await?;
        // Indexes added, dropped or made ready meanwhile: the passes
        // checked a set that is no longer the table's.
        let tx = self.begin(t).await?;
        let now = tx.peek(&t.config_key()).await.map_err(from_meta)?;
        if now != config_raw && indexes_of(now.as_deref())? != config.indexes {
            return Err(indexes_changed());
        }
        Ok(report)
    }

    /// One pass over `[start, end)`, a page at a time; what a page's first
    /// look suspects is confirmed before it is reported.
    async fn check_range(
        &self,
        t: &TableRef,
        config: &TableConfig,
        pass: Pass,
        mut start: Vec<u8>,
        end: Vec<u8>,
        report: &mut CheckReport,
    ) -> Result<(), DocError> {
        loop {
            let mut tx = self.begin(t).await?;
            let rows = tx
                .peek_range(&start, &end, SCAN_PAGE)
                .await
                .map_err(from_meta)?;
            let more = rows.len() == SCAN_PAGE;
            let mut suspects = Vec::new();
            let mut r = Reads {
                tx: &mut tx,
                confirm: false,
            };
            for (k, v) in &rows {
                match pass {
                    Pass::Documents => report.documents += 1,
                    Pass::Entries => {
                        let id = KeyReader::new(k).and_then(|mut rd| rd.next_u64()).ok();
                        if let Some(i) = report.indexes.iter_mut().find(|i| Some(i.id) == id) {
                            i.entries += 1;
                        }
                    }
                }
                let found = match pass {
                    Pass::Documents => {
                        document_problems(&mut r, t, config, k, Some(v.to_vec())).await?
                    }
                    Pass::Entries => entry_problems(&mut r, t, config, k, Some(v.to_vec())).await?,
                };
                if !found.is_empty() {
                    suspects.push(k.to_vec());
                }
            }
            for chunk in suspects.chunks(CONFIRM_BATCH) {
                for problem in self.confirm(t, config, pass, chunk).await? {
                    report.add(problem);
                }
            }
            match rows.last() {
                Some((k, _)) if more => {
                    start = k.to_vec();
                    start.push(0);
                }
                _ => return Ok(()),
            }
        }
    }

    /// Looks at `keys` again with every read a condition, and commits a
    /// no-op so Raft checks them: the problems returned held at one
    /// instant. Retried (bounded) while writes keep changing what was read.
    async fn confirm(
        &self,
        t: &TableRef,
        config: &TableConfig,
        pass: Pass,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Problem>, DocError> {
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let mut tx = self.begin(t).await?;
            // Conditional on the settings too: the problems are problems
            // of these indexes.
            let now = tx.get(&t.config_key()).await.map_err(from_meta)?;
            if indexes_of(now.as_deref())? != config.indexes {
                return Err(indexes_changed());
            }
            let mut found = Vec::new();
            {
                let mut r = Reads {
                    tx: &mut tx,
                    confirm: true,
                };
                for k in keys {
                    let v = r.get(k).await?;
                    found.extend(match pass {
                        Pass::Documents => document_problems(&mut r, t, config, k, v).await?,
                        Pass::Entries => entry_problems(&mut r, t, config, k, v).await?,
                    });
                }
            }
            if found.is_empty() {
                return Ok(found); // writes in flight on the first look
            }
            tx.delete(no_op_key(t));
            match tx.commit().await.map_err(from_meta)? {
                Commit::Done(_) => return Ok(found),
                Commit::Conflict => continue,
            }
        }
        Err(transient(
            "the table kept changing under the check's confirmations; run it again",
        ))
    }
}

/// The index definitions in stored settings.
fn indexes_of(raw: Option<&[u8]>) -> Result<Vec<IndexDef>, DocError> {
    match raw {
        Some(b) => Ok(decode::<TableConfig>(b, "table settings")
            .map_err(from_meta)?
            .indexes),
        None => Ok(Vec::new()),
    }
}

fn indexes_changed() -> DocError {
    transient("the table's indexes changed during the check; run it again")
}
