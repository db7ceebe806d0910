//! Commands: the handshake and the commands that need no authentication,
//! answered here; every other command parsed into a typed request for the
//! [`Backend`] and its answer written back in MongoDB's reply format.
//!
//! Parsing is lenient where MongoDB's is strict: fields the gateway does not
//! know are ignored (drivers add generic ones: `lsid`, `$clusterTime`,
//! `txnNumber`, `$readPreference`, `readConcern`, `writeConcern`,
//! `apiVersion`, ...), but a known field of the wrong type is refused with
//! TypeMismatch as MongoDB does.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bson::{doc, Bson, Document};

use crate::auth;
use crate::backend::*;
use crate::codes::{self, MongoError};
use crate::compress::Compressor;
use crate::MongoConfig;

/// MongoDB 7.0's wire version: OP_MSG, sessions, `hello`; drivers of today
/// need at least 17 (MongoDB 6.0) or 21 (7.0) for some features.
pub const MAX_WIRE_VERSION: i32 = 21;
/// The server version reported by `buildInfo`.
pub const VERSION: &str = "7.0.0";
pub const VERSION_ARRAY: [i32; 4] = [7, 0, 0, 0];
/// MongoDB's `maxWriteBatchSize`.
pub const WRITE_BATCH_MAX: usize = 100_000;
/// MongoDB's `logicalSessionTimeoutMinutes`.
pub const SESSION_TIMEOUT_MINUTES: i32 = 30;

/// Commands whose answers are never compressed, even when the request was
/// (the compression spec's list: authentication and the handshake).
const UNCOMPRESSED: &[&str] = &[
    "hello",
    "isMaster",
    "ismaster",
    "saslStart",
    "saslContinue",
    "getnonce",
    "authenticate",
    "createUser",
    "updateUser",
    "copydbSaslStart",
    "copydbgetnonce",
    "copydb",
];

/// What a connection knows that commands need.
pub struct Conn<'a, B: Backend> {
    pub backend: &'a B,
    pub cfg: &'a MongoConfig,
    pub auth: &'a mut auth::State<B::Principal>,
    pub connection_id: i64,
    pub peer: SocketAddr,
    /// Compressors agreed in `hello` (the client may compress with these).
    pub compressors: &'a mut Vec<Compressor>,
    /// When the server started (`serverStatus`' uptime).
    pub started: std::time::Instant,
}

/// The answer to a command.
#[derive(Debug)]
pub struct Outcome {
    pub reply: Document,
    /// Whether the answer may be compressed (when the request was).
    pub compressible: bool,
    /// A failed authentication: why (logged, never sent).
    pub auth_failure: Option<String>,
}

/// Runs one command against database `db`.
pub async fn run<B: Backend>(c: &mut Conn<'_, B>, db: &str, cmd: Document) -> Outcome {
    let name = cmd.keys().next().cloned().unwrap_or_default();
    let mut auth_failure = None;
    let result = dispatch(c, db, &name, &cmd, &mut auth_failure).await;
    let reply = match result {
        Ok(mut d) => {
            d.insert("ok", 1.0);
            d
        }
        Err(e) => error_reply(&e),
    };
    Outcome {
        reply,
        compressible: !UNCOMPRESSED.contains(&name.as_str()),
        auth_failure,
    }
}

/// `{ok: 0, errmsg, code, codeName}` and the error's extra fields.
pub fn error_reply(e: &MongoError) -> Document {
    let mut d = doc! {
        "ok": 0.0,
        "errmsg": e.message.clone(),
        "code": e.code,
        "codeName": e.code_name().into_owned(),
    };
    add_info(&mut d, e);
    d
}

/// An error's extra fields (`keyPattern`, `keyValue`, ...) into its reply,
/// never over the fields the reply already has.
fn add_info(d: &mut Document, e: &MongoError) {
    for (k, v) in e.info.iter().flat_map(|i| i.iter()) {
        if !d.contains_key(k) {
            d.insert(k.clone(), v.clone());
        }
    }
}

async fn dispatch<B: Backend>(
    c: &mut Conn<'_, B>,
    db: &str,
    name: &str,
    cmd: &Document,
    auth_failure: &mut Option<String>,
) -> Result<Document, MongoError> {
    let auth_result = |r: Result<Document, auth::Failure>, slot: &mut Option<String>| {
        r.map_err(|f| {
            if f.is_auth_failure() {
                *slot = Some(f.reason);
            }
            f.error
        })
    };
    match name {
        "" => Err(MongoError::failed_to_parse("empty command")),
        "hello" | "isMaster" | "ismaster" => Ok(hello(c, db, name, cmd, auth_failure).await),
        "saslStart" => auth_result(auth::start(c.backend, c.auth, cmd, db).await, auth_failure),
        "saslContinue" => auth_result(auth::continue_(c.backend, c.auth, cmd).await, auth_failure),
        "ping" => Ok(Document::new()),
        "buildInfo" | "buildinfo" => Ok(build_info()),
        "getParameter" => get_parameter(cmd),
        "getLog" => get_log(cmd),
        "whatsmyuri" => Ok(doc! {"you": c.peer.to_string()}),
        // Sessions are only ids to the gateway: nothing to end.
        "endSessions" | "killAllSessions" | "killSessions" | "refreshSessions" => {
            Ok(Document::new())
        }
        "hostInfo" => Ok(host_info(c.cfg)),
        "connectionStatus" => Ok(connection_status(c.auth, cmd)),
        "logout" => {
            *c.auth = auth::State::None;
            Ok(Document::new())
        }
        _ => {
            let Some((p, _)) = c.auth.principal() else {
                return Err(MongoError::new(
                    codes::UNAUTHORIZED,
                    format!("command {name} requires authentication"),
                ));
            };
            let p = p.clone();
            let b = c.backend;
            match (name, txn_id(cmd)?) {
                ("commitTransaction" | "abortTransaction", None) => Err(MongoError::new(
                    codes::ILLEGAL_OPERATION,
                    format!("{name} runs in a transaction: it needs lsid, txnNumber and autocommit: false"),
                )),
                ("commitTransaction" | "abortTransaction", Some(_)) if db != "admin" => {
                    Err(MongoError::new(
                        codes::UNAUTHORIZED,
                        format!("{name} may only be run against the admin database"),
                    ))
                }
                ("commitTransaction", Some(txn)) => {
                    b.commit_transaction(&p, &txn)
                        .await
                        .map_err(transaction_error)?;
                    Ok(Document::new())
                }
                ("abortTransaction", Some(txn)) => {
                    b.abort_transaction(&p, &txn).await?;
                    Ok(Document::new())
                }
                (_, Some(txn)) => {
                    if !IN_TRANSACTION.contains(&name) {
                        return Err(MongoError::new(
                            codes::OPERATION_NOT_SUPPORTED_IN_TRANSACTION,
                            format!("Cannot run '{name}' in a multi-document transaction."),
                        ));
                    }
                    let reply = b
                        .in_transaction(&p, &txn, authenticated(c, &p, db, name, cmd))
                        .await;
                    // A failed command (or a write error) aborts its
                    // transaction, as in MongoDB.
                    let failed = match &reply {
                        Ok(d) => d.contains_key("writeErrors"),
                        Err(e) => e.code != codes::NO_SUCH_TRANSACTION,
                    };
                    if failed {
                        let _ = b.abort_transaction(&p, &txn).await;
                    }
                    reply.map_err(transaction_error)
                }
                (_, None) => authenticated(c, &p, db, name, cmd).await,
            }
        }
    }
}

/// The commands a transaction may run (MongoDB's list, without `count`
/// and the catalogue changes).
const IN_TRANSACTION: &[&str] = &[
    "find",
    "getMore",
    "killCursors",
    "insert",
    "update",
    "delete",
    "findAndModify",
    "aggregate",
    "distinct",
];

/// The transaction a command belongs to: `autocommit: false` with a
/// session and a `txnNumber`.
fn txn_id(cmd: &Document) -> Result<Option<TxnId>, MongoError> {
    let start = cmd.get("startTransaction").is_some_and(auth::truthy);
    match cmd.get("autocommit") {
        None if start => {
            return Err(MongoError::new(
                codes::INVALID_OPTIONS,
                "startTransaction needs autocommit: false",
            ))
        }
        None => return Ok(None),
        Some(Bson::Boolean(false)) => {}
        Some(_) => {
            return Err(MongoError::new(
                codes::INVALID_OPTIONS,
                "autocommit may only be given as false",
            ))
        }
    }
    let lsid = match cmd.get_document("lsid").ok().and_then(|l| l.get("id")) {
        Some(Bson::Binary(b)) => b.bytes.clone(),
        _ => {
            return Err(MongoError::new(
                codes::INVALID_OPTIONS,
                "a transaction needs a session (lsid with an id)",
            ))
        }
    };
    let txn_number = cmd.get("txnNumber").and_then(as_i64).ok_or_else(|| {
        MongoError::new(
            codes::INVALID_OPTIONS,
            "a transaction needs a txnNumber (a long)",
        )
    })?;
    Ok(Some(TxnId {
        lsid,
        txn_number,
        start,
    }))
}

/// A transaction's error as drivers expect it: a conflict or a lost
/// transaction is labelled `TransientTransactionError`, so the driver
/// (`with_transaction`) runs the whole transaction again.
fn transaction_error(e: MongoError) -> MongoError {
    if e.code != codes::WRITE_CONFLICT && e.code != codes::NO_SUCH_TRANSACTION {
        return e;
    }
    let mut info = e.info.as_deref().cloned().unwrap_or_default();
    info.insert("errorLabels", vec!["TransientTransactionError"]);
    e.with_info(info)
}

async fn authenticated<B: Backend>(
    c: &mut Conn<'_, B>,
    p: &B::Principal,
    db: &str,
    name: &str,
    cmd: &Document,
) -> Result<Document, MongoError> {
    let b = c.backend;
    let a = Args { cmd, name };
    match name {
        "insert" => {
            let req = parse_insert(&a, db)?;
            let count = req.documents.len();
            let r = b.insert(p, req).await?;
            Ok(write_reply(r, count, false))
        }
        "update" => {
            let req = parse_update(&a, db)?;
            let count = req.updates.len();
            let r = b.update(p, req).await?;
            Ok(write_reply(r, count, true))
        }
        "delete" => {
            let req = parse_delete(&a, db)?;
            let count = req.deletes.len();
            let r = b.delete(p, req).await?;
            Ok(write_reply(r, count, false))
        }
        "find" => {
            let req = parse_find(&a, db)?;
            let ns = req.ns.to_string();
            let max = req.max_time_ms;
            let batch = bounded(max, b.find(p, req)).await?;
            Ok(cursor_reply(&ns, batch, true))
        }
        "getMore" => {
            let req = parse_get_more(&a, db)?;
            let ns = req.ns.to_string();
            let batch = b.get_more(p, req).await?;
            Ok(cursor_reply(&ns, batch, false))
        }
        "killCursors" => {
            let ns = a.namespace(db)?;
            let cursor_ids = a
                .array("cursors")?
                .ok_or_else(|| missing(&a, "cursors"))?
                .iter()
                .map(|v| as_i64(v).ok_or_else(|| a.wrong_type("cursors", v, "long")))
                .collect::<Result<Vec<_>, _>>()?;
            let k = b.kill_cursors(p, KillCursors { ns, cursor_ids }).await?;
            Ok(doc! {
                "cursorsKilled": k.killed,
                "cursorsNotFound": k.not_found,
                "cursorsAlive": k.alive,
                "cursorsUnknown": k.unknown,
            })
        }
        "count" => {
            let req = parse_count(&a, db)?;
            let max = req.max_time_ms;
            let n = bounded(max, b.count(p, req)).await?;
            Ok(doc! {"n": int(n)})
        }
        "distinct" => {
            let req = parse_distinct(&a, db)?;
            let max = req.max_time_ms;
            let values = bounded(max, b.distinct(p, req)).await?;
            Ok(doc! {"values": values})
        }
        "aggregate" => {
            let req = parse_aggregate(&a, db)?;
            if a.bool("explain", false)? {
                let verbosity = Verbosity::QueryPlanner;
                let command = Explainable::Aggregate(req);
                return b.explain(p, Explain { verbosity, command }).await;
            }
            let ns = match &req.collection {
                Some(coll) => format!("{db}.{coll}"),
                None => format!("{db}.$cmd.aggregate"),
            };
            let max = if req.writes() { None } else { req.max_time_ms };
            let batch = bounded(max, b.aggregate(p, req)).await?;
            Ok(cursor_reply(&ns, batch, true))
        }
        "findAndModify" | "findandmodify" => {
            let req = parse_find_and_modify(&a, db)?;
            let remove = matches!(req.action, FindAndModifyAction::Remove);
            let r = b.find_and_modify(p, req).await?;
            let mut last = doc! {"n": int(r.n)};
            if !remove {
                last.insert("updatedExisting", r.updated_existing);
                if let Some(id) = r.upserted {
                    last.insert("upserted", id);
                }
            }
            Ok(doc! {
                "lastErrorObject": last,
                "value": r.value.map_or(Bson::Null, Bson::Document),
            })
        }
        "create" => {
            let ns = a.namespace(db)?;
            let mut options = cmd.clone();
            options.remove(name);
            for generic in GENERIC_FIELDS {
                options.remove(*generic);
            }
            b.create_collection(p, ns, options).await?;
            Ok(Document::new())
        }
        "drop" => {
            let ns = a.namespace(db)?;
            let full = ns.to_string();
            b.drop_collection(p, ns).await?;
            Ok(doc! {"ns": full})
        }
        "dropDatabase" => {
            check_db(db)?;
            b.drop_database(p, db.to_string()).await?;
            Ok(doc! {"dropped": db})
        }
        "listCollections" => {
            check_db(db)?;
            let req = ListCollections {
                db: db.to_string(),
                filter: a.doc("filter")?.unwrap_or_default(),
                name_only: a.bool("nameOnly", false)?,
                authorized_collections: a.bool("authorizedCollections", false)?,
                batch_size: cursor_batch_size(&a)?,
            };
            let batch = b.list_collections(p, req).await?;
            Ok(cursor_reply(
                &format!("{db}.$cmd.listCollections"),
                batch,
                true,
            ))
        }
        "listDatabases" => {
            if db != "admin" {
                return Err(MongoError::new(
                    codes::UNAUTHORIZED,
                    "listDatabases may only be run against the admin database.",
                ));
            }
            let name_only = a.bool("nameOnly", false)?;
            let req = ListDatabases {
                filter: a.doc("filter")?.unwrap_or_default(),
                name_only,
                authorized_databases: a.get("authorizedDatabases").map(auth::truthy),
            };
            let dbs = b.list_databases(p, req).await?;
            let total: i64 = dbs.iter().map(|d| d.size_on_disk_bytes).sum();
            let list: Vec<Bson> = dbs
                .into_iter()
                .map(|d| {
                    Bson::Document(if name_only {
                        doc! {"name": d.name}
                    } else {
                        doc! {"name": d.name, "sizeOnDisk": d.size_on_disk_bytes, "empty": d.empty}
                    })
                })
                .collect();
            let mut reply = doc! {"databases": list};
            if !name_only {
                reply.insert("totalSize", total);
                reply.insert("totalSizeMb", total / (1024 * 1024));
            }
            Ok(reply)
        }
        "createIndexes" => {
            let ns = a.namespace(db)?;
            let indexes = a.docs("indexes")?.ok_or_else(|| missing(&a, "indexes"))?;
            if indexes.is_empty() {
                return Err(MongoError::bad_value(
                    "Must specify at least one index to create",
                ));
            }
            let r = b.create_indexes(p, CreateIndexes { ns, indexes }).await?;
            let mut reply = doc! {
                "numIndexesBefore": int(r.indexes_before),
                "numIndexesAfter": int(r.indexes_after),
                "createdCollectionAutomatically": r.created_collection_automatically,
            };
            if let Some(note) = r.note {
                reply.insert("note", note);
            }
            Ok(reply)
        }
        "listIndexes" => {
            let ns = a.namespace(db)?;
            let full = ns.to_string();
            let req = ListIndexes {
                ns,
                batch_size: cursor_batch_size(&a)?,
            };
            let batch = b.list_indexes(p, req).await?;
            Ok(cursor_reply(&full, batch, true))
        }
        "dropIndexes" | "deleteIndexes" => {
            let ns = a.namespace(db)?;
            let index = match a.get("index") {
                Some(Bson::String(s)) if s == "*" => IndexSelector::All,
                Some(Bson::String(s)) => IndexSelector::Name(s.clone()),
                Some(Bson::Document(d)) => IndexSelector::Key(d.clone()),
                Some(Bson::Array(names)) => IndexSelector::Names(
                    names
                        .iter()
                        .map(|n| match n {
                            Bson::String(s) => Ok(s.clone()),
                            other => Err(a.wrong_type("index", other, "string")),
                        })
                        .collect::<Result<_, _>>()?,
                ),
                Some(other) => return Err(a.wrong_type("index", other, "string")),
                None => return Err(missing(&a, "index")),
            };
            let was = b.drop_indexes(p, DropIndexes { ns, index }).await?;
            Ok(doc! {"nIndexesWas": int(was)})
        }
        "renameCollection" => {
            if db != "admin" {
                return Err(MongoError::new(
                    codes::UNAUTHORIZED,
                    "renameCollection may only be run against the admin database.",
                ));
            }
            let from = full_namespace(&a, name)?;
            let to = full_namespace(&a, "to")?;
            let drop_target = a.bool("dropTarget", false)?;
            b.rename_collection(
                p,
                RenameCollection {
                    from,
                    to,
                    drop_target,
                },
            )
            .await?;
            Ok(Document::new())
        }
        "collStats" => {
            let ns = a.namespace(db)?;
            let full = ns.to_string();
            let s = b.coll_stats(p, ns).await?;
            let index_total: u64 = s.index_sizes.iter().map(|(_, n)| n).sum();
            let sizes: Document = s
                .index_sizes
                .iter()
                .map(|(name, n)| (name.clone(), int(*n)))
                .collect();
            Ok(doc! {
                "ns": full,
                "count": int(s.count),
                "size": int(s.size_bytes),
                "avgObjSize": int(s.size_bytes.checked_div(s.count).unwrap_or(0)),
                "storageSize": int(s.storage_size_bytes),
                "nindexes": int(s.index_sizes.len() as u64),
                "totalIndexSize": int(index_total),
                "totalSize": int(s.storage_size_bytes + index_total),
                "indexSizes": sizes,
                "scaleFactor": 1,
                "capped": false,
            })
        }
        "dbStats" => {
            check_db(db)?;
            let s = b.db_stats(p, db.to_string()).await?;
            Ok(doc! {
                "db": db,
                "collections": int(s.collections),
                "views": int(s.views),
                "objects": int(s.objects),
                "avgObjSize": s.data_size_bytes.checked_div(s.objects).unwrap_or(0) as f64,
                "dataSize": s.data_size_bytes as f64,
                "storageSize": s.storage_size_bytes as f64,
                "indexes": int(s.indexes),
                "indexSize": s.index_size_bytes as f64,
                "totalSize": (s.storage_size_bytes + s.index_size_bytes) as f64,
                "scaleFactor": 1,
            })
        }
        "explain" => {
            let inner = a.doc("explain")?.ok_or_else(|| missing(&a, "explain"))?;
            let verbosity = match a.string("verbosity")?.as_deref() {
                None | Some("allPlansExecution") => Verbosity::AllPlansExecution,
                Some("queryPlanner") => Verbosity::QueryPlanner,
                Some("executionStats") => Verbosity::ExecutionStats,
                Some(other) => {
                    return Err(MongoError::bad_value(format!(
                        "verbosity string must be one of queryPlanner, executionStats, \
                         allPlansExecution; got {other:?}"
                    )))
                }
            };
            let inner_name = inner.keys().next().cloned().unwrap_or_default();
            let ia = Args {
                cmd: &inner,
                name: &inner_name,
            };
            let command = match inner_name.as_str() {
                "find" => Explainable::Find(parse_find(&ia, db)?),
                "aggregate" => Explainable::Aggregate(parse_aggregate(&ia, db)?),
                "count" => Explainable::Count(parse_count(&ia, db)?),
                "distinct" => Explainable::Distinct(parse_distinct(&ia, db)?),
                "update" => Explainable::Update(parse_update(&ia, db)?),
                "delete" => Explainable::Delete(parse_delete(&ia, db)?),
                "findAndModify" | "findandmodify" => {
                    Explainable::FindAndModify(parse_find_and_modify(&ia, db)?)
                }
                other => {
                    return Err(MongoError::new(
                        codes::COMMAND_NOT_FOUND,
                        format!("Explain failed due to unknown command: {other}"),
                    ))
                }
            };
            b.explain(p, Explain { verbosity, command }).await
        }
        "getCmdLineOpts" => Ok(doc! {"argv": [], "parsed": {}}),
        "serverStatus" => {
            let up = c.started.elapsed();
            Ok(doc! {
                "host": c.cfg.host.clone(),
                "version": VERSION,
                "process": "berth",
                "uptime": up.as_secs_f64().floor(),
                "uptimeMillis": i64::try_from(up.as_millis()).unwrap_or(i64::MAX),
                "localTime": bson::DateTime::now(),
            })
        }
        other => Err(MongoError::new(
            codes::COMMAND_NOT_FOUND,
            format!("no such command: '{other}'"),
        )),
    }
}

/// Fields every command may carry that say nothing about what it does.
const GENERIC_FIELDS: &[&str] = &[
    "$db",
    "lsid",
    "$clusterTime",
    "txnNumber",
    "autocommit",
    "startTransaction",
    "$readPreference",
    "readConcern",
    "writeConcern",
    "apiVersion",
    "apiStrict",
    "apiDeprecationErrors",
    "comment",
    "maxTimeMS",
];

/// Runs a read within the client's `maxTimeMS`, as MongoDB bounds it: past
/// it the read is abandoned (the future dropped) with MaxTimeMSExpired.
async fn bounded<T>(
    max_time_ms: Option<u64>,
    f: impl Future<Output = Result<T, MongoError>>,
) -> Result<T, MongoError> {
    match max_time_ms {
        Some(ms) if ms > 0 => tokio::time::timeout(Duration::from_millis(ms), f)
            .await
            .unwrap_or_else(|_| {
                Err(MongoError::new(
                    codes::MAX_TIME_MS_EXPIRED,
                    "operation exceeded time limit",
                ))
            }),
        _ => f.await,
    }
}

// ------------------------------------------------------------- the handshake

async fn hello<B: Backend>(
    c: &mut Conn<'_, B>,
    db: &str,
    name: &str,
    cmd: &Document,
    auth_failure: &mut Option<String>,
) -> Document {
    let mut d = Document::new();
    if cmd.get("helloOk").is_some_and(auth::truthy) {
        d.insert("helloOk", true);
    }
    // `hello` says isWritablePrimary; the legacy names say ismaster. No
    // topologyVersion: without it drivers poll (every heartbeat) instead of
    // streaming, which would need answers held back until a change.
    if name == "hello" {
        d.insert("isWritablePrimary", true);
    } else {
        d.insert("ismaster", true);
    }
    // Every Berth node routes any request to the shard that holds its data,
    // as a mongos does, and a client may use any of them: drivers then see
    // a sharded cluster, so they retry writes with a txnNumber, run
    // transactions and balance over the nodes of the connection string.
    d.insert("msg", "isdbgrid");
    d.insert(
        "maxBsonObjectSize",
        crate::guard::BSON_OBJECT_BYTES_MAX as i32,
    );
    d.insert(
        "maxMessageSizeBytes",
        i32::try_from(c.cfg.max_message_bytes).unwrap_or(i32::MAX),
    );
    d.insert("maxWriteBatchSize", WRITE_BATCH_MAX as i32);
    d.insert("localTime", bson::DateTime::now());
    d.insert("logicalSessionTimeoutMinutes", SESSION_TIMEOUT_MINUTES);
    d.insert("connectionId", c.connection_id);
    d.insert("minWireVersion", 0);
    d.insert("maxWireVersion", MAX_WIRE_VERSION);
    d.insert("readOnly", false);
    if let Ok(asked) = cmd.get_array("compression") {
        // The client's order: it picks the first it offered that we name.
        *c.compressors = asked
            .iter()
            .filter_map(|n| n.as_str().and_then(Compressor::from_name))
            .filter(|comp| c.cfg.compressors.contains(comp))
            .fold(Vec::new(), |mut v, comp| {
                if !v.contains(&comp) {
                    v.push(comp);
                }
                v
            });
        let names: Vec<&str> = c.compressors.iter().map(|comp| comp.name()).collect();
        d.insert("compression", names);
    }
    if let Ok(who) = cmd.get_str("saslSupportedMechs") {
        // `db.user`: MongoDB lists the user's mechanisms; for Berth that is
        // SCRAM-SHA-256 when the user has a SCRAM credential.
        let user = who.split_once('.').map_or(who, |(_, u)| u);
        let mechs: Vec<&str> = if c.backend.scram_credential(user).await.is_some() {
            vec!["SCRAM-SHA-256"]
        } else {
            vec![]
        };
        d.insert("saslSupportedMechs", mechs);
    }
    if let Ok(spec) = cmd.get_document("speculativeAuthenticate") {
        if c.auth.principal().is_none() {
            let auth_db = spec.get_str("db").unwrap_or(db).to_string();
            // A failed speculative start is left out of the answer: the
            // driver then authenticates the ordinary way (and fails there).
            match auth::start(c.backend, c.auth, spec, &auth_db).await {
                Ok(answer) => {
                    d.insert("speculativeAuthenticate", answer);
                }
                Err(f) => {
                    if f.is_auth_failure() {
                        *auth_failure = Some(f.reason);
                    }
                }
            }
        }
    }
    d
}

fn build_info() -> Document {
    doc! {
        "version": VERSION,
        "gitVersion": "berth",
        "versionArray": VERSION_ARRAY.to_vec(),
        "bits": 64,
        "debug": false,
        "maxBsonObjectSize": crate::guard::BSON_OBJECT_BYTES_MAX as i32,
        "storageEngines": ["berth"],
        "javascriptEngine": "none",
        "modules": [],
        "openssl": {"running": "rustls"},
        "buildEnvironment": {},
        "sysInfo": "deprecated",
        "allocator": "system",
    }
}

fn get_parameter(cmd: &Document) -> Result<Document, MongoError> {
    let all = matches!(cmd.get("getParameter"), Some(Bson::String(s)) if s == "*");
    let known = [
        (
            "featureCompatibilityVersion",
            Bson::Document(doc! {"version": "7.0"}),
        ),
        (
            "authenticationMechanisms",
            Bson::Array(auth::MECHANISMS.iter().map(|m| Bson::from(*m)).collect()),
        ),
        ("maxBSONDepth", Bson::Int32(crate::guard::DEPTH_MAX as i32)),
    ];
    let mut d = Document::new();
    for (name, value) in known {
        if all || cmd.contains_key(name) {
            d.insert(name, value);
        }
    }
    if d.is_empty() {
        return Err(MongoError::new(
            codes::INVALID_OPTIONS,
            "no option found to get",
        ));
    }
    Ok(d)
}

fn get_log(cmd: &Document) -> Result<Document, MongoError> {
    match cmd.get("getLog") {
        Some(Bson::String(s)) if s == "*" => Ok(doc! {"names": ["global", "startupWarnings"]}),
        Some(Bson::String(s)) if s == "global" || s == "startupWarnings" => {
            Ok(doc! {"totalLinesWritten": 0, "log": []})
        }
        _ => Err(MongoError::bad_value(
            "getLog: only 'global', 'startupWarnings' and '*' are known",
        )),
    }
}

fn host_info(cfg: &MongoConfig) -> Document {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as i32;
    doc! {
        "system": {
            "currentTime": bson::DateTime::now(),
            "hostname": cfg.host.clone(),
            "cpuAddrSize": 64,
            "numCores": cores,
            "cpuArch": std::env::consts::ARCH,
        },
        "os": {"type": std::env::consts::OS, "name": std::env::consts::OS},
        "extra": {},
    }
}

fn connection_status<P>(state: &auth::State<P>, cmd: &Document) -> Document {
    let users: Vec<Bson> = state
        .principal()
        .map(|(_, u)| Bson::Document(doc! {"user": u.name.clone(), "db": u.db.clone()}))
        .into_iter()
        .collect();
    let mut info = doc! {"authenticatedUsers": users, "authenticatedUserRoles": []};
    if cmd.get("showPrivileges").is_some_and(auth::truthy) {
        info.insert("authenticatedUserPrivileges", Bson::Array(vec![]));
    }
    doc! {"authInfo": info}
}

// ----------------------------------------------------------------- replies

/// A count as MongoDB sends it: int32 when it fits, else int64.
fn int<T: TryInto<i64> + Copy>(n: T) -> Bson {
    let n: i64 = n.try_into().unwrap_or(i64::MAX);
    match i32::try_from(n) {
        Ok(small) => Bson::Int32(small),
        Err(_) => Bson::Int64(n),
    }
}

/// `{cursor: {firstBatch|nextBatch, id, ns}}`.
pub fn cursor_reply(ns: &str, batch: CursorBatch, first: bool) -> Document {
    let docs: Vec<Bson> = batch.documents.into_iter().map(Bson::Document).collect();
    let key = if first { "firstBatch" } else { "nextBatch" };
    let mut cursor = doc! {key: docs, "id": batch.id, "ns": ns};
    if let Some(token) = batch.post_batch_resume_token {
        cursor.insert("postBatchResumeToken", token);
    }
    doc! {"cursor": cursor}
}

/// `{n, nModified, upserted, writeErrors}` (`nModified` for updates only;
/// the lists only when not empty).
pub fn write_reply(r: WriteResult, statements: usize, update: bool) -> Document {
    // The backend's contract; a breach is its bug, not the client's.
    debug_assert!(r.write_errors.iter().all(|e| e.index < statements));
    debug_assert!(r.upserted.iter().all(|u| u.index < statements));
    let mut d = doc! {"n": int(r.n)};
    if update {
        d.insert("nModified", int(r.n_modified));
    }
    if !r.upserted.is_empty() {
        let list: Vec<Bson> = r
            .upserted
            .into_iter()
            .map(|u| Bson::Document(doc! {"index": int(u.index as u64), "_id": u.id}))
            .collect();
        d.insert("upserted", list);
    }
    if !r.write_errors.is_empty() {
        let list: Vec<Bson> = r
            .write_errors
            .into_iter()
            .map(|e| {
                let mut d = doc! {
                    "index": int(e.index as u64),
                    "code": e.error.code,
                    "errmsg": e.error.message.clone(),
                };
                add_info(&mut d, &e.error);
                Bson::Document(d)
            })
            .collect();
        d.insert("writeErrors", list);
    }
    d
}

// ----------------------------------------------------------------- parsing

/// An integer as MongoDB accepts one: int32, int64, or a double without a
/// fraction.
pub fn as_i64(v: &Bson) -> Option<i64> {
    match v {
        Bson::Int32(i) => Some(i64::from(*i)),
        Bson::Int64(i) => Some(*i),
        Bson::Double(d) if d.fract() == 0.0 && d.abs() < 9.0e18 => Some(*d as i64),
        _ => None,
    }
}

/// MongoDB's name of a BSON type, as its error messages use it.
fn type_name(v: &Bson) -> &'static str {
    match v {
        Bson::Double(_) => "double",
        Bson::String(_) => "string",
        Bson::Document(_) => "object",
        Bson::Array(_) => "array",
        Bson::Binary(_) => "binData",
        Bson::Undefined => "undefined",
        Bson::ObjectId(_) => "objectId",
        Bson::Boolean(_) => "bool",
        Bson::DateTime(_) => "date",
        Bson::Null => "null",
        Bson::RegularExpression(_) => "regex",
        Bson::DbPointer(_) => "dbPointer",
        Bson::JavaScriptCode(_) => "javascript",
        Bson::Symbol(_) => "symbol",
        Bson::JavaScriptCodeWithScope(_) => "javascriptWithScope",
        Bson::Int32(_) => "int",
        Bson::Timestamp(_) => "timestamp",
        Bson::Int64(_) => "long",
        Bson::Decimal128(_) => "decimal",
        Bson::MinKey => "minKey",
        Bson::MaxKey => "maxKey",
    }
}

/// A command's fields, with MongoDB's type checks.
struct Args<'a> {
    cmd: &'a Document,
    name: &'a str,
}

fn missing(a: &Args<'_>, field: &str) -> MongoError {
    MongoError::new(
        40414,
        format!(
            "BSON field '{}.{field}' is missing but a required field",
            a.name
        ),
    )
}

impl Args<'_> {
    fn wrong_type(&self, field: &str, v: &Bson, expected: &str) -> MongoError {
        MongoError::type_mismatch(format!(
            "BSON field '{}.{field}' is the wrong type '{}', expected type '{expected}'",
            self.name,
            type_name(v)
        ))
    }

    /// The field, unless absent or null.
    fn get(&self, field: &str) -> Option<&Bson> {
        self.cmd.get(field).filter(|v| !matches!(v, Bson::Null))
    }

    fn doc(&self, field: &str) -> Result<Option<Document>, MongoError> {
        match self.get(field) {
            None => Ok(None),
            Some(Bson::Document(d)) => Ok(Some(d.clone())),
            Some(v) => Err(self.wrong_type(field, v, "object")),
        }
    }

    fn array(&self, field: &str) -> Result<Option<&Vec<Bson>>, MongoError> {
        match self.get(field) {
            None => Ok(None),
            Some(Bson::Array(a)) => Ok(Some(a)),
            Some(v) => Err(self.wrong_type(field, v, "array")),
        }
    }

    fn docs(&self, field: &str) -> Result<Option<Vec<Document>>, MongoError> {
        let Some(items) = self.array(field)? else {
            return Ok(None);
        };
        items
            .iter()
            .map(|v| match v {
                Bson::Document(d) => Ok(d.clone()),
                other => Err(self.wrong_type(field, other, "object")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    fn bool(&self, field: &str, default: bool) -> Result<bool, MongoError> {
        match self.get(field) {
            None => Ok(default),
            Some(v @ (Bson::Boolean(_) | Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_))) => {
                Ok(auth::truthy(v))
            }
            Some(v) => Err(self.wrong_type(field, v, "bool")),
        }
    }

    fn i64(&self, field: &str) -> Result<Option<i64>, MongoError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => as_i64(v)
                .map(Some)
                .ok_or_else(|| self.wrong_type(field, v, "long")),
        }
    }

    /// A non-negative integer.
    fn u64(&self, field: &str) -> Result<Option<u64>, MongoError> {
        match self.i64(field)? {
            None => Ok(None),
            Some(n) => u64::try_from(n).map(Some).map_err(|_| {
                MongoError::bad_value(format!(
                    "BSON field '{}.{field}' value must be >= 0, actual value '{n}'",
                    self.name
                ))
            }),
        }
    }

    fn string(&self, field: &str) -> Result<Option<String>, MongoError> {
        match self.get(field) {
            None => Ok(None),
            Some(Bson::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(self.wrong_type(field, v, "string")),
        }
    }

    /// Refuses a field not in `known`, as MongoDB's parsers do (40415).
    fn known_fields(&self, known: &[&str]) -> Result<(), MongoError> {
        match self.cmd.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(MongoError::new(
                codes::UNKNOWN_FIELD,
                format!("BSON field '{}.{k}' is an unknown field.", self.name),
            )),
            None => Ok(()),
        }
    }

    /// Any value (hints are strings or documents, comments anything).
    fn any(&self, field: &str) -> Option<Bson> {
        self.get(field).cloned()
    }

    /// The collection the command names (its first field's value) in `db`.
    fn namespace(&self, db: &str) -> Result<Namespace, MongoError> {
        check_db(db)?;
        match self.cmd.get(self.name) {
            Some(Bson::String(coll)) => {
                check_collection(db, coll)?;
                Ok(Namespace::new(db, coll.clone()))
            }
            Some(v) => Err(MongoError::new(
                codes::INVALID_NAMESPACE,
                format!("collection name has invalid type {}", type_name(v)),
            )),
            None => Err(missing(self, self.name)),
        }
    }

    fn max_time_ms(&self) -> Result<Option<u64>, MongoError> {
        self.u64("maxTimeMS")
    }
}

fn check_db(db: &str) -> Result<(), MongoError> {
    if db.is_empty() || db.len() > 64 || db.contains(['/', '\\', '.', ' ', '"', '$', '\0']) {
        return Err(MongoError::new(
            codes::INVALID_NAMESPACE,
            format!("Invalid database name: '{db}'"),
        ));
    }
    Ok(())
}

fn check_collection(db: &str, coll: &str) -> Result<(), MongoError> {
    if coll.is_empty() || coll.contains(['$', '\0']) || coll.starts_with('.') {
        return Err(MongoError::new(
            codes::INVALID_NAMESPACE,
            format!("Invalid namespace specified '{db}.{coll}'"),
        ));
    }
    Ok(())
}

/// `db.coll` (renameCollection's names).
fn full_namespace(a: &Args<'_>, field: &str) -> Result<Namespace, MongoError> {
    let full = a.string(field)?.ok_or_else(|| missing(a, field))?;
    let (db, coll) = full.split_once('.').ok_or_else(|| {
        MongoError::new(
            codes::INVALID_NAMESPACE,
            format!("Invalid namespace specified '{full}'"),
        )
    })?;
    check_db(db)?;
    check_collection(db, coll)?;
    Ok(Namespace::new(db, coll))
}

/// A batch size; larger than u32 means "all" anyway.
fn batch_size(v: Option<u64>) -> Option<u32> {
    v.map(|n| u32::try_from(n).unwrap_or(u32::MAX))
}

/// `cursor: {batchSize}`.
fn cursor_batch_size(a: &Args<'_>) -> Result<Option<u32>, MongoError> {
    let Some(cursor) = a.doc("cursor")? else {
        return Ok(None);
    };
    let inner = Args {
        cmd: &cursor,
        name: "cursor",
    };
    let n = inner.u64("batchSize")?;
    Ok(batch_size(n))
}

fn check_batch(n: usize) -> Result<(), MongoError> {
    if n == 0 || n > WRITE_BATCH_MAX {
        return Err(MongoError::new(
            codes::INVALID_LENGTH,
            format!(
                "Write batch sizes must be between 1 and {WRITE_BATCH_MAX}. Got {n} operations."
            ),
        ));
    }
    Ok(())
}

fn parse_insert(a: &Args<'_>, db: &str) -> Result<Insert, MongoError> {
    let ns = a.namespace(db)?;
    let documents = a
        .docs("documents")?
        .ok_or_else(|| missing(a, "documents"))?;
    check_batch(documents.len())?;
    Ok(Insert {
        ns,
        documents,
        ordered: a.bool("ordered", true)?,
        bypass_document_validation: a.bool("bypassDocumentValidation", false)?,
        retry: retry_id(a)?,
    })
}

/// A retryable write's session and `txnNumber`, when the command carries
/// both.
fn retry_id(a: &Args<'_>) -> Result<Option<RetryId>, MongoError> {
    let Some(txn) = a.cmd.get("txnNumber") else {
        return Ok(None);
    };
    if a.cmd.contains_key("autocommit") {
        // The number of a transaction, not of a retryable write.
        return Ok(None);
    }
    let txn_number = as_i64(txn).ok_or_else(|| a.wrong_type("txnNumber", txn, "long"))?;
    let lsid = match a.cmd.get_document("lsid").ok().and_then(|l| l.get("id")) {
        Some(Bson::Binary(b)) => b.bytes.clone(),
        _ => {
            return Err(MongoError::new(
                codes::INVALID_OPTIONS,
                "txnNumber needs a session (lsid with an id)",
            ))
        }
    };
    Ok(Some(RetryId { lsid, txn_number }))
}

fn update_modification(a: &Args<'_>, field: &str) -> Result<UpdateModification, MongoError> {
    match a.get(field) {
        Some(Bson::Document(d)) => Ok(UpdateModification::Document(d.clone())),
        Some(Bson::Array(_)) => Ok(UpdateModification::Pipeline(
            a.docs(field)?.unwrap_or_default(),
        )),
        Some(v) => Err(a.wrong_type(field, v, "object")),
        None => Err(missing(a, field)),
    }
}

/// The fields of an update statement in MongoDB 7.0 (the version `hello`
/// reports): another is refused as MongoDB refuses it (40415), not ignored,
/// so a driver option this server lacks (8.0's `sort`) fails rather than
/// being silently dropped.
const UPDATE_STATEMENT_FIELDS: &[&str] = &[
    "q",
    "u",
    "c",
    "upsert",
    "multi",
    "arrayFilters",
    "hint",
    "collation",
    "upsertSupplied",
    "sampleId",
    "allowShardKeyUpdatesWithoutFullShardKeyInQuery",
];

/// The fields of a delete statement in MongoDB 7.0.
const DELETE_STATEMENT_FIELDS: &[&str] = &["q", "limit", "hint", "collation", "sampleId"];

fn parse_update(a: &Args<'_>, db: &str) -> Result<Update, MongoError> {
    let ns = a.namespace(db)?;
    let statements = a.docs("updates")?.ok_or_else(|| missing(a, "updates"))?;
    check_batch(statements.len())?;
    let mut updates = Vec::with_capacity(statements.len());
    for s in &statements {
        let sa = Args {
            cmd: s,
            name: "update.updates",
        };
        sa.known_fields(UPDATE_STATEMENT_FIELDS)?;
        updates.push(UpdateStatement {
            q: sa.doc("q")?.ok_or_else(|| missing(&sa, "q"))?,
            u: update_modification(&sa, "u")?,
            upsert: sa.bool("upsert", false)?,
            multi: sa.bool("multi", false)?,
            array_filters: sa.docs("arrayFilters")?,
            hint: sa.any("hint"),
            collation: sa.doc("collation")?,
        });
    }
    Ok(Update {
        ns,
        updates,
        ordered: a.bool("ordered", true)?,
        bypass_document_validation: a.bool("bypassDocumentValidation", false)?,
        let_vars: a.doc("let")?,
        retry: retry_id(a)?,
    })
}

fn parse_delete(a: &Args<'_>, db: &str) -> Result<Delete, MongoError> {
    let ns = a.namespace(db)?;
    let statements = a.docs("deletes")?.ok_or_else(|| missing(a, "deletes"))?;
    check_batch(statements.len())?;
    let mut deletes = Vec::with_capacity(statements.len());
    for s in &statements {
        let sa = Args {
            cmd: s,
            name: "delete.deletes",
        };
        sa.known_fields(DELETE_STATEMENT_FIELDS)?;
        let limit = sa.i64("limit")?.ok_or_else(|| missing(&sa, "limit"))?;
        if limit != 0 && limit != 1 {
            return Err(MongoError::failed_to_parse(format!(
                "The limit field in delete objects must be 0 or 1. Got {limit}"
            )));
        }
        deletes.push(DeleteStatement {
            q: sa.doc("q")?.ok_or_else(|| missing(&sa, "q"))?,
            multi: limit == 0,
            hint: sa.any("hint"),
            collation: sa.doc("collation")?,
        });
    }
    Ok(Delete {
        ns,
        deletes,
        ordered: a.bool("ordered", true)?,
        let_vars: a.doc("let")?,
        retry: retry_id(a)?,
    })
}

fn parse_find(a: &Args<'_>, db: &str) -> Result<Find, MongoError> {
    let ns = a.namespace(db)?;
    Ok(Find {
        ns,
        filter: a.doc("filter")?.unwrap_or_default(),
        projection: a.doc("projection")?,
        sort: a.doc("sort")?,
        skip: a.u64("skip")?.unwrap_or(0),
        limit: a.u64("limit")?.unwrap_or(0),
        batch_size: batch_size(a.u64("batchSize")?),
        single_batch: a.bool("singleBatch", false)?,
        hint: a.any("hint"),
        comment: a.any("comment"),
        max_time_ms: a.max_time_ms()?,
        collation: a.doc("collation")?,
        let_vars: a.doc("let")?,
        allow_disk_use: match a.get("allowDiskUse") {
            Some(_) => Some(a.bool("allowDiskUse", false)?),
            None => None,
        },
    })
}

fn parse_get_more(a: &Args<'_>, db: &str) -> Result<GetMore, MongoError> {
    let cursor_id = a.i64(a.name)?.ok_or_else(|| missing(a, a.name))?;
    let coll = a
        .string("collection")?
        .ok_or_else(|| missing(a, "collection"))?;
    check_db(db)?;
    // A database-level aggregation's cursor (a database's change stream)
    // is named `db.$cmd.aggregate`.
    if coll != "$cmd.aggregate" {
        check_collection(db, &coll)?;
    }
    Ok(GetMore {
        ns: Namespace::new(db, coll),
        cursor_id,
        batch_size: batch_size(a.u64("batchSize")?),
        max_time_ms: a.max_time_ms()?,
    })
}

fn parse_count(a: &Args<'_>, db: &str) -> Result<Count, MongoError> {
    let ns = a.namespace(db)?;
    Ok(Count {
        ns,
        query: a.doc("query")?.unwrap_or_default(),
        skip: a.u64("skip")?.unwrap_or(0),
        // MongoDB counts a negative limit as its absolute value.
        limit: a.i64("limit")?.map_or(0, |l| l.unsigned_abs()),
        hint: a.any("hint"),
        collation: a.doc("collation")?,
        max_time_ms: a.max_time_ms()?,
    })
}

fn parse_distinct(a: &Args<'_>, db: &str) -> Result<Distinct, MongoError> {
    let ns = a.namespace(db)?;
    Ok(Distinct {
        ns,
        key: a.string("key")?.ok_or_else(|| missing(a, "key"))?,
        query: a.doc("query")?.unwrap_or_default(),
        collation: a.doc("collation")?,
        max_time_ms: a.max_time_ms()?,
    })
}

fn parse_aggregate(a: &Args<'_>, db: &str) -> Result<Aggregate, MongoError> {
    check_db(db)?;
    let collection = match a.cmd.get(a.name) {
        Some(Bson::String(_)) => Some(a.namespace(db)?.coll),
        Some(v) if as_i64(v) == Some(1) => None,
        Some(v) => {
            return Err(MongoError::new(
                codes::INVALID_NAMESPACE,
                format!(
                    "{} must be a collection name or 1, not {}",
                    a.name,
                    type_name(v)
                ),
            ))
        }
        None => return Err(missing(a, a.name)),
    };
    let pipeline = a.docs("pipeline")?.ok_or_else(|| missing(a, "pipeline"))?;
    // MongoDB's rule: a pipeline that writes cannot read linearizably.
    let linearizable = a
        .cmd
        .get_document("readConcern")
        .ok()
        .and_then(|rc| rc.get_str("level").ok())
        == Some("linearizable");
    if linearizable {
        if let Some(stage) = pipeline
            .last()
            .and_then(|s| s.keys().next())
            .filter(|k| *k == "$out" || *k == "$merge")
        {
            return Err(MongoError::new(
                codes::INVALID_OPTIONS,
                format!("{stage} cannot be used with a 'linearizable' read concern level"),
            ));
        }
    }
    if a.doc("cursor")?.is_none() && !a.bool("explain", false)? {
        return Err(MongoError::failed_to_parse(
            "The 'cursor' option is required, except for aggregate with the explain argument",
        ));
    }
    Ok(Aggregate {
        db: db.to_string(),
        collection,
        pipeline,
        batch_size: cursor_batch_size(a)?,
        allow_disk_use: match a.get("allowDiskUse") {
            Some(_) => Some(a.bool("allowDiskUse", false)?),
            None => None,
        },
        hint: a.any("hint"),
        comment: a.any("comment"),
        max_time_ms: a.max_time_ms()?,
        collation: a.doc("collation")?,
        let_vars: a.doc("let")?,
        bypass_document_validation: a.bool("bypassDocumentValidation", false)?,
    })
}

fn parse_find_and_modify(a: &Args<'_>, db: &str) -> Result<FindAndModify, MongoError> {
    let ns = a.namespace(db)?;
    let remove = a.bool("remove", false)?;
    let has_update = a.get("update").is_some();
    let return_new = a.bool("new", false)?;
    let upsert = a.bool("upsert", false)?;
    let action = match (remove, has_update) {
        (true, true) => {
            return Err(MongoError::failed_to_parse(
                "Cannot specify both an update and remove=true",
            ))
        }
        (false, false) => {
            return Err(MongoError::failed_to_parse(
                "Either an update or remove=true must be specified",
            ))
        }
        (true, false) => {
            if upsert {
                return Err(MongoError::failed_to_parse(
                    "Cannot specify both upsert=true and remove=true",
                ));
            }
            if return_new {
                return Err(MongoError::failed_to_parse(
                    "Cannot specify both new=true and remove=true; 'remove' always returns \
                     the deleted document",
                ));
            }
            FindAndModifyAction::Remove
        }
        (false, true) => FindAndModifyAction::Update {
            update: update_modification(a, "update")?,
            upsert,
            return_new,
        },
    };
    Ok(FindAndModify {
        ns,
        query: a.doc("query")?.unwrap_or_default(),
        sort: a.doc("sort")?,
        action,
        fields: a.doc("fields")?,
        array_filters: a.docs("arrayFilters")?,
        hint: a.any("hint"),
        collation: a.doc("collation")?,
        let_vars: a.doc("let")?,
        bypass_document_validation: a.bool("bypassDocumentValidation", false)?,
        max_time_ms: a.max_time_ms()?,
        retry: retry_id(a)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args<'a>(cmd: &'a Document) -> Args<'a> {
        Args {
            cmd,
            name: cmd.keys().next().unwrap(),
        }
    }

    #[test]
    fn parses_find() {
        let cmd = doc! {
            "find": "c", "filter": {"a": 1}, "sort": {"b": -1}, "projection": {"a": 1},
            "skip": 2, "limit": 5i64, "batchSize": 3.0, "singleBatch": true,
            "hint": "a_1", "comment": "hi", "maxTimeMS": 100, "lsid": {"id": 1},
        };
        let f = parse_find(&args(&cmd), "db").unwrap();
        assert_eq!(f.ns, Namespace::new("db", "c"));
        assert_eq!(f.filter, doc! {"a": 1});
        assert_eq!(f.sort, Some(doc! {"b": -1}));
        assert_eq!((f.skip, f.limit, f.batch_size), (2, 5, Some(3)));
        assert!(f.single_batch);
        assert_eq!(f.hint, Some(Bson::from("a_1")));
        assert_eq!(f.max_time_ms, Some(100));

        let bad = doc! {"find": "c", "filter": 1};
        let e = parse_find(&args(&bad), "db").unwrap_err();
        assert_eq!(e.code, codes::TYPE_MISMATCH);
        assert_eq!(
            e.message,
            "BSON field 'find.filter' is the wrong type 'int', expected type 'object'"
        );
        let negative = doc! {"find": "c", "limit": -1};
        assert_eq!(
            parse_find(&args(&negative), "db").unwrap_err().code,
            codes::BAD_VALUE
        );
        let no_coll = doc! {"find": 5};
        assert_eq!(
            parse_find(&args(&no_coll), "db").unwrap_err().code,
            codes::INVALID_NAMESPACE
        );
        assert_eq!(
            parse_find(&args(&doc! {"find": "c"}), "a.b")
                .unwrap_err()
                .code,
            codes::INVALID_NAMESPACE
        );
    }

    #[test]
    fn parses_writes() {
        let ins = doc! {"insert": "c", "documents": [{"_id": 1}], "ordered": false};
        let i = parse_insert(&args(&ins), "db").unwrap();
        assert!(!i.ordered);
        assert_eq!(i.documents, vec![doc! {"_id": 1}]);
        let empty = doc! {"insert": "c", "documents": []};
        assert_eq!(
            parse_insert(&args(&empty), "db").unwrap_err().code,
            codes::INVALID_LENGTH
        );

        let upd = doc! {"update": "c", "updates": [
            {"q": {"a": 1}, "u": {"$set": {"b": 2}}, "upsert": true, "multi": true,
             "arrayFilters": [{"x.y": 1}], "hint": {"a": 1}},
            {"q": {}, "u": [{"$set": {"c": 3}}]},
        ]};
        let u = parse_update(&args(&upd), "db").unwrap();
        assert!(u.ordered);
        assert!(u.updates[0].upsert && u.updates[0].multi);
        assert_eq!(u.updates[0].array_filters, Some(vec![doc! {"x.y": 1}]));
        assert_eq!(
            u.updates[1].u,
            UpdateModification::Pipeline(vec![doc! {"$set": {"c": 3}}])
        );
        let no_u = doc! {"update": "c", "updates": [{"q": {}}]};
        assert_eq!(parse_update(&args(&no_u), "db").unwrap_err().code, 40414);
        // 8.0's sort is not 7.0's: refused, not ignored.
        let sort = doc! {"update": "c", "updates": [{"q": {}, "u": {}, "sort": {"a": 1}}]};
        let e = parse_update(&args(&sort), "db").unwrap_err();
        assert_eq!(e.code, codes::UNKNOWN_FIELD);
        assert_eq!(
            e.message,
            "BSON field 'update.updates.sort' is an unknown field."
        );
        let bad = doc! {"delete": "c", "deletes": [{"q": {}, "limit": 0, "x": 1}]};
        assert_eq!(
            parse_delete(&args(&bad), "db").unwrap_err().code,
            codes::UNKNOWN_FIELD
        );

        let del =
            doc! {"delete": "c", "deletes": [{"q": {"a": 1}, "limit": 0}, {"q": {}, "limit": 1}]};
        let d = parse_delete(&args(&del), "db").unwrap();
        assert!(d.deletes[0].multi && !d.deletes[1].multi);
        let bad = doc! {"delete": "c", "deletes": [{"q": {}, "limit": 2}]};
        assert_eq!(
            parse_delete(&args(&bad), "db").unwrap_err().code,
            codes::FAILED_TO_PARSE
        );
    }

    #[test]
    fn parses_find_and_modify() {
        let fam = doc! {"findAndModify": "c", "query": {"a": 1}, "update": {"$inc": {"n": 1}},
        "new": true, "upsert": true, "fields": {"n": 1}};
        let f = parse_find_and_modify(&args(&fam), "db").unwrap();
        assert_eq!(
            f.action,
            FindAndModifyAction::Update {
                update: UpdateModification::Document(doc! {"$inc": {"n": 1}}),
                upsert: true,
                return_new: true
            }
        );
        let rm = doc! {"findandmodify": "c", "remove": true};
        assert_eq!(
            parse_find_and_modify(&args(&rm), "db").unwrap().action,
            FindAndModifyAction::Remove
        );
        for bad in [
            doc! {"findAndModify": "c"},
            doc! {"findAndModify": "c", "remove": true, "update": {}},
            doc! {"findAndModify": "c", "remove": true, "new": true},
            doc! {"findAndModify": "c", "remove": true, "upsert": true},
        ] {
            assert_eq!(
                parse_find_and_modify(&args(&bad), "db").unwrap_err().code,
                codes::FAILED_TO_PARSE,
                "{bad}"
            );
        }
    }

    #[test]
    fn parses_aggregate() {
        let agg = doc! {"aggregate": "c", "pipeline": [{"$match": {}}, {"$out": "d"}],
        "cursor": {"batchSize": 0}};
        let a = parse_aggregate(&args(&agg), "db").unwrap();
        assert_eq!(a.collection.as_deref(), Some("c"));
        assert_eq!(a.batch_size, Some(0));
        assert!(a.writes());
        let db_level = doc! {"aggregate": 1, "pipeline": [], "cursor": {}};
        assert_eq!(
            parse_aggregate(&args(&db_level), "db").unwrap().collection,
            None
        );
        let no_cursor = doc! {"aggregate": "c", "pipeline": []};
        assert_eq!(
            parse_aggregate(&args(&no_cursor), "db").unwrap_err().code,
            codes::FAILED_TO_PARSE
        );
    }

    #[test]
    fn reply_formats() {
        let batch = CursorBatch {
            id: 42,
            documents: vec![doc! {"_id": 1}],
            ..Default::default()
        };
        assert_eq!(
            cursor_reply("db.c", batch.clone(), true),
            doc! {"cursor": {"firstBatch": [{"_id": 1}], "id": 42i64, "ns": "db.c"}}
        );
        assert_eq!(
            cursor_reply("db.c", batch, false),
            doc! {"cursor": {"nextBatch": [{"_id": 1}], "id": 42i64, "ns": "db.c"}}
        );
        let r = WriteResult {
            n: 1,
            n_modified: 0,
            upserted: vec![Upserted {
                index: 1,
                id: Bson::Int32(9),
            }],
            write_errors: vec![WriteError {
                index: 2,
                error: MongoError::new(codes::DUPLICATE_KEY, "E11000 duplicate key"),
            }],
        };
        assert_eq!(
            write_reply(r, 3, true),
            doc! {
                "n": 1, "nModified": 0,
                "upserted": [{"index": 1, "_id": 9}],
                "writeErrors": [{"index": 2, "code": 11000, "errmsg": "E11000 duplicate key"}],
            }
        );
        assert_eq!(write_reply(WriteResult::default(), 1, false), doc! {"n": 0});
        // An error's extra fields (a duplicate key's) reach both forms,
        // never over the reply's own.
        let dup = MongoError::new(codes::DUPLICATE_KEY, "E11000")
            .with_info(doc! {"keyPattern": {"x": 1}, "keyValue": {"x": 2}, "code": 5});
        assert_eq!(
            error_reply(&dup),
            doc! {"ok": 0.0, "errmsg": "E11000", "code": 11000, "codeName": "DuplicateKey",
            "keyPattern": {"x": 1}, "keyValue": {"x": 2}}
        );
        let r = WriteResult {
            write_errors: vec![WriteError {
                index: 0,
                error: dup,
            }],
            ..Default::default()
        };
        assert_eq!(
            write_reply(r, 1, false),
            doc! {"n": 0, "writeErrors": [{"index": 0, "code": 11000, "errmsg": "E11000",
            "keyPattern": {"x": 1}, "keyValue": {"x": 2}}]}
        );
        assert_eq!(
            error_reply(&MongoError::new(59, "no such command: 'x'")),
            doc! {"ok": 0.0, "errmsg": "no such command: 'x'", "code": 59, "codeName": "CommandNotFound"}
        );
        assert_eq!(int(5u64), Bson::Int32(5));
        assert_eq!(int(1u64 << 40), Bson::Int64(1 << 40));
    }

    #[test]
    fn integers_and_truth() {
        assert_eq!(as_i64(&Bson::Double(3.0)), Some(3));
        assert_eq!(as_i64(&Bson::Double(3.5)), None);
        assert_eq!(as_i64(&Bson::String("3".into())), None);
        assert!(auth::truthy(&Bson::Int32(1)) && !auth::truthy(&Bson::Double(0.0)));
    }
}
