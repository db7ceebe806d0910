//! What the MongoDB gateway needs from the table service. The gateway only
//! translates the wire protocol into these calls and their answers back;
//! it holds no data and decides no access: every call carries the
//! authenticated principal, and the backend answers with a [`MongoError`]
//! (a MongoDB code and message) that the gateway sends as it is.
//!
//! Filters, updates, projections, sorts, pipelines and index specs stay
//! [`bson::Document`]s: parsing them is the document service's job.
//!
//! Cursors are the backend's: `find`, `aggregate`, `listCollections` and
//! `listIndexes` return a first batch and a cursor id (0 when exhausted);
//! [`Backend::get_more`] and [`Backend::kill_cursors`] check that a cursor
//! belongs to the principal. Cursors outlive the connection that opened
//! them (as in MongoDB, a driver may continue one on another connection of
//! its pool), so the backend expires idle ones itself. A batch should stay
//! under [`BATCH_BYTES_MAX`]: larger answers than a message can carry are
//! refused by the gateway (BSONObjectTooLarge).

use std::future::Future;

use bson::{Bson, Document};

pub use crate::codes::MongoError;
pub use berth_security::scram::Credential as ScramCredential;

/// Bytes of documents in one batch the backend should not exceed (MongoDB's
/// own bound on a reply's batch: `maxBsonObjectSize`).
pub const BATCH_BYTES_MAX: usize = 16 * 1024 * 1024;

/// A collection: database and collection name (`db.coll`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Namespace {
    pub db: String,
    pub coll: String,
}

impl Namespace {
    pub fn new(db: impl Into<String>, coll: impl Into<String>) -> Namespace {
        Namespace {
            db: db.into(),
            coll: coll.into(),
        }
    }
}

impl std::fmt::Display for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.db, self.coll)
    }
}

/// One batch of a cursor.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CursorBatch {
    /// The cursor to ask for more with; 0 when there is no more.
    pub id: i64,
    pub documents: Vec<Document>,
    /// A change stream's position after this batch (`postBatchResumeToken`).
    pub post_batch_resume_token: Option<Document>,
}

/// A retryable write's identity: the session (`lsid.id`) and its
/// `txnNumber`. A statement is that plus its index in the command (its
/// `stmtId`); one already applied is answered, not applied again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryId {
    pub lsid: Vec<u8>,
    pub txn_number: i64,
}

/// A multi-document transaction's identity: the session (`lsid.id`) and
/// its `txnNumber`, on every command with `autocommit: false`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnId {
    pub lsid: Vec<u8>,
    pub txn_number: i64,
    /// `startTransaction: true`: the transaction's first command.
    pub start: bool,
}

/// `insert`.
#[derive(Debug, Clone, PartialEq)]
pub struct Insert {
    pub ns: Namespace,
    /// At least one, at most `maxWriteBatchSize`.
    pub documents: Vec<Document>,
    /// Stop at the first failed document (true) or try them all.
    pub ordered: bool,
    pub bypass_document_validation: bool,
    pub retry: Option<RetryId>,
}

/// The `u` of an update: a document (update operators, or a replacement)
/// or an aggregation pipeline.
#[derive(Debug, Clone, PartialEq)]
pub enum UpdateModification {
    Document(Document),
    Pipeline(Vec<Document>),
}

/// One statement of `update`.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateStatement {
    pub q: Document,
    pub u: UpdateModification,
    pub upsert: bool,
    pub multi: bool,
    pub array_filters: Option<Vec<Document>>,
    pub hint: Option<Bson>,
    pub collation: Option<Document>,
}

/// `update`.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    pub ns: Namespace,
    pub updates: Vec<UpdateStatement>,
    pub ordered: bool,
    pub bypass_document_validation: bool,
    /// `let`: variables for the statements' expressions.
    pub let_vars: Option<Document>,
    pub retry: Option<RetryId>,
}

/// One statement of `delete`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeleteStatement {
    pub q: Document,
    /// `limit: 0`: every match; `limit: 1`: the first only.
    pub multi: bool,
    pub hint: Option<Bson>,
    pub collation: Option<Document>,
}

/// `delete`.
#[derive(Debug, Clone, PartialEq)]
pub struct Delete {
    pub ns: Namespace,
    pub deletes: Vec<DeleteStatement>,
    pub ordered: bool,
    pub let_vars: Option<Document>,
    pub retry: Option<RetryId>,
}

/// A document inserted by an upsert.
#[derive(Debug, Clone, PartialEq)]
pub struct Upserted {
    /// The statement's index in the request.
    pub index: usize,
    pub id: Bson,
}

/// A statement (or document) that failed.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteError {
    /// The statement's (or document's) index in the request.
    pub index: usize,
    pub error: MongoError,
}

/// The outcome of `insert`, `update` or `delete`. Failures of single
/// statements are `write_errors` (the command itself succeeds); an ordered
/// request stops at its first failure, so it has at most one, the last
/// statement tried.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WriteResult {
    /// Documents inserted, matched (update: upserts included) or deleted.
    pub n: i64,
    /// Update only: documents changed.
    pub n_modified: i64,
    pub upserted: Vec<Upserted>,
    pub write_errors: Vec<WriteError>,
}

/// `find`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Find {
    pub ns: Namespace,
    pub filter: Document,
    pub projection: Option<Document>,
    pub sort: Option<Document>,
    pub skip: u64,
    /// 0: no limit.
    pub limit: u64,
    /// Documents in the first batch (None: the backend's default, 101 in
    /// MongoDB).
    pub batch_size: Option<u32>,
    /// Close the cursor after the first batch.
    pub single_batch: bool,
    pub hint: Option<Bson>,
    pub comment: Option<Bson>,
    pub max_time_ms: Option<u64>,
    pub collation: Option<Document>,
    pub let_vars: Option<Document>,
    pub allow_disk_use: Option<bool>,
}

/// `getMore`.
#[derive(Debug, Clone, PartialEq)]
pub struct GetMore {
    /// The collection the driver names (the cursor's).
    pub ns: Namespace,
    pub cursor_id: i64,
    pub batch_size: Option<u32>,
    pub max_time_ms: Option<u64>,
}

/// `killCursors`.
#[derive(Debug, Clone, PartialEq)]
pub struct KillCursors {
    pub ns: Namespace,
    pub cursor_ids: Vec<i64>,
}

/// What `killCursors` did with each id.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct KilledCursors {
    pub killed: Vec<i64>,
    pub not_found: Vec<i64>,
    pub alive: Vec<i64>,
    pub unknown: Vec<i64>,
}

/// `count`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Count {
    pub ns: Namespace,
    pub query: Document,
    pub skip: u64,
    /// 0: no limit.
    pub limit: u64,
    pub hint: Option<Bson>,
    pub collation: Option<Document>,
    pub max_time_ms: Option<u64>,
}

/// `distinct`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Distinct {
    pub ns: Namespace,
    /// The field (dotted path) whose values are wanted.
    pub key: String,
    pub query: Document,
    pub collation: Option<Document>,
    pub max_time_ms: Option<u64>,
}

/// `aggregate`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Aggregate {
    pub db: String,
    /// None for a database-level pipeline (`{aggregate: 1}`).
    pub collection: Option<String>,
    /// Stages as sent (`$out` and `$merge` included).
    pub pipeline: Vec<Document>,
    /// `cursor.batchSize` (None: the default).
    pub batch_size: Option<u32>,
    pub allow_disk_use: Option<bool>,
    pub hint: Option<Bson>,
    pub comment: Option<Bson>,
    pub max_time_ms: Option<u64>,
    pub collation: Option<Document>,
    pub let_vars: Option<Document>,
    pub bypass_document_validation: bool,
}

impl Aggregate {
    /// Whether the pipeline writes (`$out` or `$merge` as its last stage).
    pub fn writes(&self) -> bool {
        self.pipeline
            .last()
            .and_then(|s| s.keys().next())
            .is_some_and(|k| k == "$out" || k == "$merge")
    }
}

/// What `findAndModify` does with the document it finds.
#[derive(Debug, Clone, PartialEq)]
pub enum FindAndModifyAction {
    Remove,
    Update {
        update: UpdateModification,
        upsert: bool,
        /// Return the document after the update (`new: true`).
        return_new: bool,
    },
}

/// `findAndModify`.
#[derive(Debug, Clone, PartialEq)]
pub struct FindAndModify {
    pub ns: Namespace,
    pub query: Document,
    pub sort: Option<Document>,
    pub action: FindAndModifyAction,
    /// Projection of the returned document.
    pub fields: Option<Document>,
    pub array_filters: Option<Vec<Document>>,
    pub hint: Option<Bson>,
    pub collation: Option<Document>,
    pub let_vars: Option<Document>,
    pub bypass_document_validation: bool,
    pub max_time_ms: Option<u64>,
    pub retry: Option<RetryId>,
}

/// The outcome of `findAndModify`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FindAndModifyResult {
    /// Documents found, removed or updated, or upserted: 0 or 1.
    pub n: u64,
    pub updated_existing: bool,
    /// The `_id` of an upserted document.
    pub upserted: Option<Bson>,
    /// The document before or after (as asked), projected; None when none
    /// was found (and none upserted with `new`).
    pub value: Option<Document>,
}

/// `listCollections`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ListCollections {
    pub db: String,
    /// Over the entries (`{name: "x"}`, `{type: "view"}`, ...).
    pub filter: Document,
    /// Only `{name, type}` per collection.
    pub name_only: bool,
    /// Only the collections the principal may use, rather than an error
    /// when it may not list the database.
    pub authorized_collections: bool,
    pub batch_size: Option<u32>,
}

/// `listDatabases`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ListDatabases {
    pub filter: Document,
    pub name_only: bool,
    pub authorized_databases: Option<bool>,
}

/// One database in the answer to `listDatabases`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DatabaseInfo {
    pub name: String,
    pub size_on_disk_bytes: i64,
    pub empty: bool,
}

/// `createIndexes`.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateIndexes {
    pub ns: Namespace,
    /// Index specs as sent (`{key: {...}, name: "...", unique: true, ...}`).
    pub indexes: Vec<Document>,
}

/// The outcome of `createIndexes`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct IndexesCreated {
    pub indexes_before: i64,
    pub indexes_after: i64,
    pub created_collection_automatically: bool,
    /// E.g. "all indexes already exist".
    pub note: Option<String>,
}

/// `listIndexes`.
#[derive(Debug, Clone, PartialEq)]
pub struct ListIndexes {
    pub ns: Namespace,
    pub batch_size: Option<u32>,
}

/// Which indexes `dropIndexes` drops.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexSelector {
    /// `"*"`: every index but `_id`'s.
    All,
    Name(String),
    Names(Vec<String>),
    /// The index with this key pattern.
    Key(Document),
}

/// `dropIndexes`.
#[derive(Debug, Clone, PartialEq)]
pub struct DropIndexes {
    pub ns: Namespace,
    pub index: IndexSelector,
}

/// `renameCollection`.
#[derive(Debug, Clone, PartialEq)]
pub struct RenameCollection {
    pub from: Namespace,
    pub to: Namespace,
    pub drop_target: bool,
}

/// `collStats` (and the `$collStats`-less drivers' `count` shortcuts).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CollStats {
    pub count: u64,
    pub size_bytes: u64,
    pub storage_size_bytes: u64,
    /// Each index's name and size.
    pub index_sizes: Vec<(String, u64)>,
}

/// `dbStats`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DbStats {
    pub collections: u64,
    pub views: u64,
    pub objects: u64,
    pub data_size_bytes: u64,
    pub storage_size_bytes: u64,
    pub indexes: u64,
    pub index_size_bytes: u64,
}

/// How much `explain` tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verbosity {
    QueryPlanner,
    ExecutionStats,
    AllPlansExecution,
}

/// A command `explain` wraps.
#[derive(Debug, Clone, PartialEq)]
pub enum Explainable {
    Find(Find),
    Aggregate(Aggregate),
    Count(Count),
    Distinct(Distinct),
    Update(Update),
    Delete(Delete),
    FindAndModify(FindAndModify),
}

/// `explain`.
#[derive(Debug, Clone, PartialEq)]
pub struct Explain {
    pub verbosity: Verbosity,
    pub command: Explainable,
}

/// The table service as the gateway sees it.
pub trait Backend: Send + Sync + 'static {
    /// Who a connection authenticated as; opaque to the gateway.
    type Principal: Clone + Send + Sync + 'static;

    /// SASL PLAIN: `password` may be a Berth ticket (with any user name, or
    /// the ticket's principal) or the user's password. Err: authentication
    /// failed (the message is logged, never sent to the client).
    fn authenticate_plain(
        &self,
        user: &str,
        password: &str,
    ) -> impl Future<Output = Result<Self::Principal, String>> + Send;

    /// SCRAM-SHA-256: the stored credential of `user` (from the password
    /// as SASLprep leaves it, which for MongoDB's SCRAM-SHA-256 is the
    /// password itself, not SCRAM-SHA-1's MD5 digest); `None` when the user
    /// is unknown or has none. Also asked by `hello` with
    /// `saslSupportedMechs` (MongoDB names the user's mechanisms there).
    fn scram_credential(&self, user: &str) -> impl Future<Output = Option<ScramCredential>> + Send;

    /// The principal of `user` once its SCRAM proof checked out.
    fn scram_principal(
        &self,
        user: &str,
    ) -> impl Future<Output = Result<Self::Principal, String>> + Send;

    fn insert(
        &self,
        p: &Self::Principal,
        req: Insert,
    ) -> impl Future<Output = Result<WriteResult, MongoError>> + Send;

    fn update(
        &self,
        p: &Self::Principal,
        req: Update,
    ) -> impl Future<Output = Result<WriteResult, MongoError>> + Send;

    fn delete(
        &self,
        p: &Self::Principal,
        req: Delete,
    ) -> impl Future<Output = Result<WriteResult, MongoError>> + Send;

    fn find(
        &self,
        p: &Self::Principal,
        req: Find,
    ) -> impl Future<Output = Result<CursorBatch, MongoError>> + Send;

    /// The next batch of a cursor: CursorNotFound (43) when it does not
    /// exist, Unauthorized (13) when it is not the principal's.
    fn get_more(
        &self,
        p: &Self::Principal,
        req: GetMore,
    ) -> impl Future<Output = Result<CursorBatch, MongoError>> + Send;

    fn kill_cursors(
        &self,
        p: &Self::Principal,
        req: KillCursors,
    ) -> impl Future<Output = Result<KilledCursors, MongoError>> + Send;

    fn count(
        &self,
        p: &Self::Principal,
        req: Count,
    ) -> impl Future<Output = Result<u64, MongoError>> + Send;

    fn distinct(
        &self,
        p: &Self::Principal,
        req: Distinct,
    ) -> impl Future<Output = Result<Vec<Bson>, MongoError>> + Send;

    fn aggregate(
        &self,
        p: &Self::Principal,
        req: Aggregate,
    ) -> impl Future<Output = Result<CursorBatch, MongoError>> + Send;

    fn find_and_modify(
        &self,
        p: &Self::Principal,
        req: FindAndModify,
    ) -> impl Future<Output = Result<FindAndModifyResult, MongoError>> + Send;

    /// `create`: `options` is the command without `create` and the generic
    /// fields (`capped`, `validator`, `viewOn`, `pipeline`, ...).
    fn create_collection(
        &self,
        p: &Self::Principal,
        ns: Namespace,
        options: Document,
    ) -> impl Future<Output = Result<(), MongoError>> + Send;

    /// `drop`. Dropping a collection that does not exist succeeds (as in
    /// MongoDB 7).
    fn drop_collection(
        &self,
        p: &Self::Principal,
        ns: Namespace,
    ) -> impl Future<Output = Result<(), MongoError>> + Send;

    fn drop_database(
        &self,
        p: &Self::Principal,
        db: String,
    ) -> impl Future<Output = Result<(), MongoError>> + Send;

    /// Entries as MongoDB gives them: `{name, type: "collection", options,
    /// info: {readOnly, uuid}, idIndex}` (`{name, type}` with `name_only`).
    fn list_collections(
        &self,
        p: &Self::Principal,
        req: ListCollections,
    ) -> impl Future<Output = Result<CursorBatch, MongoError>> + Send;

    fn list_databases(
        &self,
        p: &Self::Principal,
        req: ListDatabases,
    ) -> impl Future<Output = Result<Vec<DatabaseInfo>, MongoError>> + Send;

    fn create_indexes(
        &self,
        p: &Self::Principal,
        req: CreateIndexes,
    ) -> impl Future<Output = Result<IndexesCreated, MongoError>> + Send;

    /// Index specs as MongoDB gives them: `{v: 2, key, name, ...}`.
    fn list_indexes(
        &self,
        p: &Self::Principal,
        req: ListIndexes,
    ) -> impl Future<Output = Result<CursorBatch, MongoError>> + Send;

    /// Returns how many indexes the collection had (`nIndexesWas`).
    fn drop_indexes(
        &self,
        p: &Self::Principal,
        req: DropIndexes,
    ) -> impl Future<Output = Result<i64, MongoError>> + Send;

    fn rename_collection(
        &self,
        p: &Self::Principal,
        req: RenameCollection,
    ) -> impl Future<Output = Result<(), MongoError>> + Send;

    fn coll_stats(
        &self,
        p: &Self::Principal,
        ns: Namespace,
    ) -> impl Future<Output = Result<CollStats, MongoError>> + Send;

    fn db_stats(
        &self,
        p: &Self::Principal,
        db: String,
    ) -> impl Future<Output = Result<DbStats, MongoError>> + Send;

    /// The explain document (`queryPlanner`, ...), without `ok`.
    fn explain(
        &self,
        p: &Self::Principal,
        req: Explain,
    ) -> impl Future<Output = Result<Document, MongoError>> + Send;

    /// Runs `command`, one command of transaction `txn`
    /// (`autocommit: false`), inside it: its reads and writes belong to
    /// the transaction. Starts it when `txn.start`. A backend without
    /// transactions refuses (the default).
    fn in_transaction<T, F>(
        &self,
        p: &Self::Principal,
        txn: &TxnId,
        command: F,
    ) -> impl Future<Output = Result<T, MongoError>> + Send
    where
        T: Send,
        F: Future<Output = Result<T, MongoError>> + Send,
    {
        let _ = (p, txn, command);
        async {
            Err(MongoError::new(
                crate::codes::ILLEGAL_OPERATION,
                "transactions are not supported",
            ))
        }
    }

    /// `commitTransaction`.
    fn commit_transaction(
        &self,
        p: &Self::Principal,
        txn: &TxnId,
    ) -> impl Future<Output = Result<(), MongoError>> + Send {
        let _ = (p, txn);
        async {
            Err(MongoError::new(
                crate::codes::NO_SUCH_TRANSACTION,
                "transactions are not supported: there is no transaction to commit",
            ))
        }
    }

    /// `abortTransaction`, and the abort of a transaction whose command
    /// failed.
    fn abort_transaction(
        &self,
        p: &Self::Principal,
        txn: &TxnId,
    ) -> impl Future<Output = Result<(), MongoError>> + Send {
        let _ = (p, txn);
        async {
            Err(MongoError::new(
                crate::codes::NO_SUCH_TRANSACTION,
                "transactions are not supported: there is no transaction to abort",
            ))
        }
    }
}
