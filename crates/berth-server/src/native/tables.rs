//! `berth.v1.Tables`: creating, showing, listing, changing, checking and
//! removing tables. Documents themselves travel through the MongoDB
//! listener; this service only manages. `berth_docs` authorizes every call (its errors are
//! in MongoDB's terms); this file checks arguments and translates, in
//! [`doc_error`], to the codes every native service answers with.

use std::sync::Arc;

use berth_api::v1::tables_server::Tables as TablesApi;
use berth_api::v1::*;
use berth_docs::cdc::CdcTarget;
use berth_docs::check::CheckReport;
use berth_docs::error::codes;
use berth_docs::table::{authorize, Right, TableConfig, TableRef, Tables};
use berth_docs::DocError;
use berth_fs::access::validate_ace;
use berth_fs::namespace::LIST_LIMIT_MAX;
use berth_fs::{EntryInfo, EntryKind};
use berth_meta::map::{normalize_path, split_parent};
use berth_meta::{Code, Error};
use berth_security::principal::Principal;
use tonic::{Request, Response, Status};

use super::namespace::to_entry;
use super::Native;

pub struct TablesService {
    pub native: Arc<Native>,
    pub tables: Arc<Tables>,
    /// Where CDC targets publish.
    pub streams: Arc<berth_streams::Streams>,
}

fn to_check(r: CheckReport) -> TableCheck {
    TableCheck {
        path: r.path,
        documents: r.documents,
        bad_documents: r.bad_documents,
        unindexable: r.unindexable,
        orphan_entries: r.orphan_entries,
        indexes: r
            .indexes
            .into_iter()
            .map(|i| TableCheckIndex {
                id: i.id,
                name: i.name,
                unique: i.unique,
                ready: i.ready,
                entries: i.entries,
                missing: i.missing,
                dangling: i.dangling,
                stale: i.stale,
                duplicates: i.duplicates,
                malformed: i.malformed,
            })
            .collect(),
        problem_count: r.problem_count,
        problems: r
            .problems
            .into_iter()
            .map(|p| TableCheckProblem {
                kind: p.kind.name().to_string(),
                index: p.index.unwrap_or_default(),
                id: p.id,
                detail: p.detail,
            })
            .collect(),
    }
}

fn to_cdc(c: CdcTarget) -> TableCdc {
    let pos = |p: berth_docs::changes::Position| format!("{}.{}", p.index, p.n);
    TableCdc {
        id: c.id,
        start: pos(c.start()),
        published: pos(c.published()),
        table: c.table_path,
        stream: c.stream,
        topic: c.topic,
        owner: c.owner,
    }
}

/// Directory pages one `List` call reads, at most; the caller continues
/// from `next_start_after` when more remain.
const LIST_PAGES_MAX: usize = 64;
/// Tables a `List` call returns when the request says 0.
const LIST_LIMIT_DEFAULT: usize = 1000;
/// Longest `start_after` accepted: a path relative to the listed directory
/// is no longer than a path.
const START_AFTER_BYTES_MAX: usize = 4096;

/// A `berth_docs` error in the native API's terms: MongoDB's code becomes
/// the `berth_meta` code whose gRPC status and `x-berth-code` a client
/// expects. Retryable codes (WriteConflict, NotWritablePrimary) become
/// `EAGAIN`, which the client repeats for the calls that change nothing.
pub fn doc_error(e: DocError) -> Error {
    let code = match e.code {
        codes::NAMESPACE_NOT_FOUND => Code::NotFound,
        codes::NAMESPACE_EXISTS => Code::Exists,
        codes::UNAUTHORIZED => Code::Access,
        codes::WRITE_CONFLICT | codes::NOT_WRITABLE_PRIMARY => Code::Again,
        codes::BAD_VALUE | codes::FAILED_TO_PARSE | codes::INVALID_NAMESPACE => Code::Invalid,
        // A volume's exhausted quota.
        codes::OUT_OF_DISK_SPACE => Code::Quota,
        code => {
            // Kept in the text: the code is the only clue to what failed.
            return Error::new(
                Code::Io,
                format!("{} ({} {code})", e.message, e.code_name()),
            );
        }
    };
    Error::new(code, e.message)
}

fn check_aces(
    read: Option<&String>,
    write: Option<&String>,
    admin: Option<&String>,
) -> Result<(), Error> {
    for (what, ace) in [("read", read), ("write", write), ("admin", admin)] {
        if let Some(a) = ace {
            validate_ace(what, a)?;
        }
    }
    Ok(())
}

/// Checks an edit before it is applied (so a bad ACE fails whole).
fn check_edit(r: &TableEditRequest) -> Result<(), Error> {
    for name in &r.clear_aces {
        if !matches!(name.as_str(), "read" | "write" | "admin") {
            return Err(Error::invalid(format!(
                "clear_aces: {name:?} is not an ACE (read, write, admin)"
            )));
        }
    }
    check_aces(
        r.read_ace.as_ref(),
        r.write_ace.as_ref(),
        r.admin_ace.as_ref(),
    )
}

/// Applies an edit checked by [`check_edit`]: clears first, then sets.
fn apply_edit(c: &mut TableConfig, r: &TableEditRequest) {
    for name in &r.clear_aces {
        match name.as_str() {
            "read" => c.read_ace = None,
            "write" => c.write_ace = None,
            "admin" => c.admin_ace = None,
            _ => {}
        }
    }
    for (ace, given) in [
        (&mut c.read_ace, &r.read_ace),
        (&mut c.write_ace, &r.write_ace),
        (&mut c.admin_ace, &r.admin_ace),
    ] {
        if given.is_some() {
            ace.clone_from(given);
        }
    }
}

/// `stats` is `(documents, bytes)` when the caller may read the table.
fn to_info(t: TableRef, stats: Option<(u64, u64)>) -> TableInfo {
    let c = t.config;
    TableInfo {
        path: t.entry.path.clone(),
        entry: Some(to_entry(t.entry)),
        volume: t.vol.path,
        documents: stats.map(|s| s.0),
        bytes: stats.map(|s| s.1),
        read_ace: c.read_ace,
        write_ace: c.write_ace,
        admin_ace: c.admin_ace,
        format: c.format,
        key_format: u32::from(c.key_format),
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// The components of a `start_after` (a path relative to the listed
/// directory; one name unless `recursive`).
fn parse_start_after(s: &str, recursive: bool) -> Result<Vec<&str>, Error> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    if s.len() > START_AFTER_BYTES_MAX {
        return Err(Error::invalid(format!(
            "start_after: longer than {START_AFTER_BYTES_MAX} bytes"
        )));
    }
    let parts: Vec<&str> = s.split('/').collect();
    if parts
        .iter()
        .any(|c| c.is_empty() || *c == "." || *c == "..")
    {
        return Err(Error::invalid(format!(
            "start_after {s:?}: a path relative to the listed directory, as next_start_after gives"
        )));
    }
    if parts.len() > 1 && !recursive {
        return Err(Error::invalid(format!(
            "start_after {s:?}: one name (paths only with recursive)"
        )));
    }
    Ok(parts)
}

/// One directory of a listing's depth-first walk.
struct Frame {
    /// Its full path.
    dir: String,
    /// Its path relative to the listed directory ("" for that one).
    rel: String,
    /// Its entries are read strictly after this name.
    after: String,
    /// Entries read but not looked at yet (in name order).
    pending: std::collections::VecDeque<EntryInfo>,
    /// No entries remain to be read.
    read_all: bool,
}

impl Frame {
    fn new(dir: String, rel: String, after: String) -> Frame {
        Frame {
            dir,
            rel,
            after,
            pending: Default::default(),
            read_all: false,
        }
    }
}

impl TablesService {
    /// The table at `path` opened with the first of its rights `p` holds;
    /// the read denial is the one reported.
    async fn open_any(&self, p: &Principal, path: &str) -> Result<TableRef, DocError> {
        let mut denial = None;
        for right in [Right::Read, Right::Write, Right::Admin] {
            match self.tables.open(p, path, right).await {
                Ok(t) => return Ok(t),
                Err(e) if e.code == codes::UNAUTHORIZED => {
                    denial.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(denial.unwrap_or_else(|| DocError::new(codes::UNAUTHORIZED, "not authorized")))
    }

    /// The table's settings, with its size when `p` may read it.
    async fn info_of(&self, p: &Principal, t: TableRef) -> Result<TableInfo, Error> {
        let stats = if authorize(p, &t, Right::Read).is_ok() {
            Some(self.tables.stats(p, &t).await.map_err(doc_error)?)
        } else {
            None
        };
        Ok(to_info(t, stats))
    }

    /// Refuses a table whose directory does not exist (as mkdir does
    /// without -p). `berth_docs` creates missing parents, as MongoDB
    /// creates a database on its first collection; the native API asks for
    /// that explicitly. A parent removed between this check and the create
    /// is made again: the race only ever creates what `parents` would have.
    async fn check_parent(&self, p: &Principal, path: &str) -> Result<(), Error> {
        let Some((parent, _)) = split_parent(path) else {
            return Ok(());
        };
        match self.native.ns.stat_following(p, parent).await {
            Ok(e) if e.inode.kind == EntryKind::Dir => Ok(()),
            Ok(e) => Err(Error::new(
                Code::NotDir,
                format!("{} is a {}, not a directory", e.path, e.inode.kind.name()),
            )),
            Err(e) if e.code == Code::NotFound => Err(Error::new(
                Code::NotFound,
                format!(
                    "no directory {parent} for table {path}: create it first, or pass parents \
                     (berth table create -p)"
                ),
            )),
            Err(e) => Err(e),
        }
    }

    /// One page of a listing: the tables in `root` (and its subdirectories
    /// when `recursive`) in depth-first name order, after `start_after`.
    async fn list_tables(&self, p: &Principal, r: TableListRequest) -> Result<TableList, Error> {
        let ns = &self.native.ns;
        let root = normalize_path(&r.path)?;
        let limit = match r.limit {
            0 => LIST_LIMIT_DEFAULT,
            l => (l as usize).min(LIST_LIMIT_MAX),
        };
        // The walk resumes inside every directory the token passes through
        // (a directory named last is walked whole: its entries come after it).
        let token = parse_start_after(&r.start_after, r.recursive)?;
        let mut stack = vec![Frame::new(
            root.clone(),
            String::new(),
            token.first().map(|s| s.to_string()).unwrap_or_default(),
        )];
        if r.recursive {
            for i in 1..=token.len() {
                let rel = token[..i].join("/");
                let after = token.get(i).map(|s| s.to_string()).unwrap_or_default();
                stack.push(Frame::new(join(&root, &rel), rel, after));
            }
        }
        let mut out = TableList::default();
        let mut last = r.start_after.clone();
        let mut pages = 0;
        loop {
            let outermost = stack.len() == 1;
            let Some(top) = stack.last_mut() else {
                break;
            };
            let progressed = last != r.start_after;
            if out.tables.len() >= limit || (pages >= LIST_PAGES_MAX && progressed) {
                out.more = true;
                break;
            }
            let Some(e) = top.pending.pop_front() else {
                if top.read_all {
                    stack.pop();
                    continue;
                }
                let want = (limit - out.tables.len()).clamp(1, LIST_LIMIT_MAX);
                pages += 1;
                match ns.list(p, &top.dir, &top.after, want).await {
                    Ok((entries, more)) => {
                        if let Some(l) = entries.last() {
                            top.after.clone_from(&l.name);
                        }
                        top.pending.extend(entries);
                        top.read_all = !more;
                    }
                    // The listed directory itself: its errors are the answer.
                    Err(e) if outermost => return Err(e),
                    Err(e) if matches!(e.code, Code::Access | Code::Perm) => {
                        out.unreadable.push(top.dir.clone());
                        stack.pop();
                    }
                    // Removed meanwhile, or the token named no directory.
                    Err(e) if matches!(e.code, Code::NotFound | Code::NotDir) => {
                        stack.pop();
                    }
                    Err(e) => return Err(e),
                }
                continue;
            };
            let rel = if top.rel.is_empty() {
                e.name.clone()
            } else {
                format!("{}/{}", top.rel, e.name)
            };
            last.clone_from(&rel);
            match e.inode.kind {
                EntryKind::Table => out.tables.push(to_entry(e)),
                EntryKind::Dir if r.recursive => {
                    stack.push(Frame::new(e.path, rel, String::new()));
                }
                _ => {}
            }
        }
        if out.more {
            out.next_start_after = last;
        }
        Ok(out)
    }
}

#[tonic::async_trait]
impl TablesApi for TablesService {
    async fn cdc_add(
        &self,
        req: Request<TableCdcAddRequest>,
    ) -> Result<Response<TableCdc>, Status> {
        self.native
            .call("Tables/CdcAdd", req, |p, r| async move {
                let t = self
                    .tables
                    .open(&p, &r.path, Right::Admin)
                    .await
                    .map_err(doc_error)?;
                berth_streams::valid_topic_name(&r.topic)?;
                let stream = normalize_path(&r.stream)?;
                let s = self
                    .streams
                    .stream(&p, &stream, berth_streams::Right::Produce)
                    .await?;
                if self.streams.topic(&s, &r.topic).await?.is_none() {
                    self.streams.create_topic(&p, &s, &r.topic, 0).await?;
                }
                let c = self
                    .tables
                    .cdc_add(&p, &t, &s.entry.path, &r.topic)
                    .await
                    .map_err(doc_error)?;
                Ok(to_cdc(c))
            })
            .await
    }

    async fn cdc_list(&self, req: Request<PathRequest>) -> Result<Response<TableCdcList>, Status> {
        self.native
            .call("Tables/CdcList", req, |p, r| async move {
                let t = self
                    .tables
                    .open(&p, &r.path, Right::Read)
                    .await
                    .map_err(doc_error)?;
                let targets = self.tables.cdc_list(&p, &t).await.map_err(doc_error)?;
                Ok(TableCdcList {
                    targets: targets.into_iter().map(to_cdc).collect(),
                })
            })
            .await
    }

    async fn cdc_remove(
        &self,
        req: Request<TableCdcRemoveRequest>,
    ) -> Result<Response<Empty>, Status> {
        self.native
            .call("Tables/CdcRemove", req, |p, r| async move {
                let t = self
                    .tables
                    .open(&p, &r.path, Right::Admin)
                    .await
                    .map_err(doc_error)?;
                match self
                    .tables
                    .cdc_remove(&p, &t, r.id)
                    .await
                    .map_err(doc_error)?
                {
                    true => Ok(Empty {}),
                    false => Err(Error::new(
                        Code::NotFound,
                        format!("{} has no CDC target {}", r.path, r.id),
                    )),
                }
            })
            .await
    }

    async fn check(&self, req: Request<PathRequest>) -> Result<Response<TableCheck>, Status> {
        self.native
            .call("Tables/Check", req, |p, r| async move {
                let t = self
                    .tables
                    .open(&p, &r.path, Right::Admin)
                    .await
                    .map_err(doc_error)?;
                let report = self.tables.check(&p, &t).await.map_err(doc_error)?;
                Ok(to_check(report))
            })
            .await
    }

    async fn create(
        &self,
        req: Request<TableCreateRequest>,
    ) -> Result<Response<TableInfo>, Status> {
        self.native
            .call("Tables/Create", req, |p, r| async move {
                // A bad ACE fails before the table is made.
                check_aces(
                    r.read_ace.as_ref(),
                    r.write_ace.as_ref(),
                    r.admin_ace.as_ref(),
                )?;
                let path = normalize_path(&r.path)?;
                if !r.parents {
                    self.check_parent(&p, &path).await?;
                }
                let mut t = self
                    .tables
                    .create(&p, &path, true)
                    .await
                    .map_err(doc_error)?;
                if r.read_ace.is_some() || r.write_ace.is_some() || r.admin_ace.is_some() {
                    let edit = TableEditRequest {
                        path: path.clone(),
                        read_ace: r.read_ace,
                        write_ace: r.write_ace,
                        admin_ace: r.admin_ace,
                        clear_aces: Vec::new(),
                    };
                    // A second transaction (`berth_docs` creates with the
                    // default settings): a failure here leaves the table
                    // without its ACEs, that is, its owner's only.
                    t.config = self
                        .tables
                        .configure(&p, &path, |c| apply_edit(c, &edit))
                        .await
                        .map_err(|e| {
                            let e = doc_error(e);
                            Error::new(
                                e.code,
                                format!(
                                    "the table {path} was created without its ACEs (the owner \
                                     only): {}; set them with berth table edit {path}",
                                    e.message
                                ),
                            )
                        })?;
                }
                let empty = authorize(&p, &t, Right::Read).is_ok().then_some((0, 0));
                Ok(to_info(t, empty))
            })
            .await
    }

    async fn info(&self, req: Request<PathRequest>) -> Result<Response<TableInfo>, Status> {
        self.native
            .call("Tables/Info", req, |p, r| async move {
                let t = self.open_any(&p, &r.path).await.map_err(doc_error)?;
                self.info_of(&p, t).await
            })
            .await
    }

    async fn list(&self, req: Request<TableListRequest>) -> Result<Response<TableList>, Status> {
        self.native
            .call("Tables/List", req, |p, r| async move {
                self.list_tables(&p, r).await
            })
            .await
    }

    async fn delete(&self, req: Request<PathRequest>) -> Result<Response<Empty>, Status> {
        self.native
            .call("Tables/Delete", req, |p, r| async move {
                match self
                    .tables
                    .drop_table(&p, &r.path)
                    .await
                    .map_err(doc_error)?
                {
                    true => Ok(Empty {}),
                    false => Err(Error::new(
                        Code::NotFound,
                        format!("no table at {}", r.path),
                    )),
                }
            })
            .await
    }

    async fn edit(&self, req: Request<TableEditRequest>) -> Result<Response<TableInfo>, Status> {
        self.native
            .call("Tables/Edit", req, |p, r| async move {
                check_edit(&r)?;
                // Opened first for its entry and volume: after the edit the
                // caller may hold no right left to open it with.
                let mut t = self
                    .tables
                    .open(&p, &r.path, Right::Admin)
                    .await
                    .map_err(doc_error)?;
                t.config = self
                    .tables
                    .configure(&p, &r.path, |c| apply_edit(c, &r))
                    .await
                    .map_err(doc_error)?;
                self.info_of(&p, t).await
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edit(path: &str) -> TableEditRequest {
        TableEditRequest {
            path: path.into(),
            ..Default::default()
        }
    }

    #[test]
    fn doc_errors_map_to_the_native_codes() {
        for (mongo, code, grpc) in [
            (26, Code::NotFound, tonic::Code::NotFound),
            (48, Code::Exists, tonic::Code::AlreadyExists),
            (13, Code::Access, tonic::Code::PermissionDenied),
            (112, Code::Again, tonic::Code::Unavailable),
            (10107, Code::Again, tonic::Code::Unavailable),
            (2, Code::Invalid, tonic::Code::InvalidArgument),
            (9, Code::Invalid, tonic::Code::InvalidArgument),
            (73, Code::Invalid, tonic::Code::InvalidArgument),
            (14031, Code::Quota, tonic::Code::ResourceExhausted),
            (1, Code::Io, tonic::Code::Internal),
            (11000, Code::Io, tonic::Code::Internal),
        ] {
            let e = doc_error(DocError::new(mongo, "m"));
            assert_eq!(e.code, code, "{mongo}");
            assert_eq!(super::super::errors::grpc_code(e.code), grpc, "{mongo}");
            assert!(e.code.is_retryable() == matches!(mongo, 112 | 10107));
            assert!(e.message.starts_with('m'));
        }
        // An unexpected code keeps its number and name in the text.
        let e = doc_error(DocError::new(11000, "dup"));
        assert_eq!(e.message, "dup (DuplicateKey 11000)");
    }

    #[test]
    fn edit_changes_only_what_is_given() {
        let mut c = TableConfig {
            read_ace: Some("u:a".into()),
            write_ace: Some("u:b".into()),
            ..TableConfig::default()
        };
        let mut r = edit("/t");
        r.write_ace = Some("g:dev".into());
        r.clear_aces = vec!["read".into()];
        check_edit(&r).unwrap();
        apply_edit(&mut c, &r);
        assert_eq!(c.read_ace, None);
        assert_eq!(c.write_ace.as_deref(), Some("g:dev"));
        assert_eq!(c.admin_ace, None);

        // Cleared, then set: the given value wins.
        let mut r = edit("/t");
        r.clear_aces = vec!["admin".into()];
        r.admin_ace = Some("u:root".into());
        apply_edit(&mut c, &r);
        assert_eq!(c.admin_ace.as_deref(), Some("u:root"));

        let mut r = edit("/t");
        r.clear_aces = vec!["produce".into()];
        assert_eq!(check_edit(&r).unwrap_err().code, Code::Invalid);
        let mut r = edit("/t");
        r.read_ace = Some("u:alice | (g:dev".into());
        let e = check_edit(&r).unwrap_err();
        assert_eq!(e.code, Code::Invalid);
        assert!(e.message.contains("read ACE"), "{}", e.message);
        // The empty ACE is valid: nobody.
        let mut r = edit("/t");
        r.write_ace = Some(String::new());
        check_edit(&r).unwrap();
    }

    #[test]
    fn start_after_is_a_relative_path() {
        assert_eq!(parse_start_after("", false).unwrap(), Vec::<&str>::new());
        assert_eq!(parse_start_after("c", false).unwrap(), vec!["c"]);
        assert_eq!(parse_start_after("db/c", true).unwrap(), vec!["db", "c"]);
        for (bad, recursive) in [
            ("db/c", false),
            ("/db", true),
            ("db/", true),
            ("db//c", true),
            ("db/../c", true),
            (".", false),
        ] {
            assert_eq!(
                parse_start_after(bad, recursive).unwrap_err().code,
                Code::Invalid,
                "{bad}"
            );
        }
        let long = "a/".repeat(START_AFTER_BYTES_MAX / 2) + "a";
        assert!(parse_start_after(&long, true).is_err());
    }

    #[test]
    fn joins() {
        assert_eq!(join("/", "t"), "/t");
        assert_eq!(join("/tables", "db/c"), "/tables/db/c");
    }
}
