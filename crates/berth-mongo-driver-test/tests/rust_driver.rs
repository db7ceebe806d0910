//! The official Rust MongoDB driver (crates.io `mongodb` 3.9, bson 3,
//! rustls on ring) against a real `berth server`, with the checks pymongo
//! runs (`crates/berth/tests/mongo/pymongo_checks.py`): CRUD as a user with
//! SCRAM-SHA-256, the same CRUD as the admin with PLAIN and the admin ticket
//! over a snappy-compressed connection, a table made by one user read and
//! written by another (error 13), and a wrong password. Every connection
//! string is the one a user would write: TLS verified against the cluster
//! CA through `tlsCAFile`.
//!
//! The server is the `berth` binary of this target directory (see the
//! crate's docs), or `$BERTH_TEST_BIN`.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Bson, Document};
use mongodb::error::{Error, ErrorKind, WriteFailure};
use mongodb::event::command::CommandEvent;
use mongodb::event::EventHandler;
use mongodb::options::{ClientOptions, ReturnDocument};
use mongodb::{Client, Cursor};

/// How long a server may take to become ready, and a CLI run to finish.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(120);

/// The `berth` binary: `$BERTH_TEST_BIN`, or the one beside this test's
/// `deps` directory (`target/<profile>/berth`).
fn berth_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("BERTH_TEST_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().expect("the test's executable");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from target/<profile>/deps")
        .join("berth");
    assert!(
        bin.is_file(),
        "{} is missing: build it first (cargo build -p berth), or run \
         cargo test --workspace, which builds it",
        bin.display()
    );
    bin
}

/// A port that was free a moment ago.
fn free_port(taken: &[u16]) -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local addr").port();
        if !taken.contains(&port) {
            return port;
        }
    }
}

/// Variables of the developer's shell that would change what `berth` does.
const ENV_TO_CLEAR: [&str; 7] = [
    "BERTH_TICKET",
    "BERTH_INSECURE",
    "BERTH_DATA_DIR",
    "BERTH_SERVERS",
    "BERTH_TICKET_FILE",
    "BERTH_CA_FILE",
    "BERTH_JOIN_TOKEN",
];

/// One `berth server` on loopback ports in a temporary directory.
struct Server {
    dir: tempfile::TempDir,
    native_port: u16,
    mongo_port: u16,
    child: Child,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::Builder::new()
            .prefix("berth-mongo-rs-")
            .tempdir()
            .expect("tempdir");
        for d in ["home", "work"] {
            std::fs::create_dir_all(dir.path().join(d)).expect("test dirs");
        }
        let mut ports = Vec::new();
        for _ in 0..4 {
            let p = free_port(&ports);
            ports.push(p);
        }
        let log = |name: &str| std::fs::File::create(dir.path().join(name)).expect("log file");
        let mut cmd = Command::new(berth_bin());
        cmd.arg("server")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--native-addr", &format!("127.0.0.1:{}", ports[0])])
            .args(["--admin-addr", &format!("127.0.0.1:{}", ports[1])])
            .args(["--kafka-addr", &format!("127.0.0.1:{}", ports[2])])
            .args(["--mongo-addr", &format!("127.0.0.1:{}", ports[3])])
            .args(["--advertise", "127.0.0.1"])
            .current_dir(dir.path().join("work"))
            .env("HOME", dir.path().join("home"))
            .stdin(Stdio::null())
            .stdout(log("server.stdout.log"))
            .stderr(log("server.stderr.log"));
        for k in ENV_TO_CLEAR {
            cmd.env_remove(k);
        }
        let child = cmd.spawn().expect("spawn berth server");
        let mut s = Server {
            dir,
            native_port: ports[0],
            mongo_port: ports[3],
            child,
        };
        s.wait_ready();
        s
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn ca_file(&self) -> PathBuf {
        self.data().join("tls").join("ca.crt")
    }

    fn admin_ticket(&self) -> String {
        std::fs::read_to_string(self.data().join("admin.ticket"))
            .expect("admin ticket")
            .trim()
            .to_string()
    }

    /// Ready: the admin ticket is written and the native port accepts.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let addr: SocketAddr = ([127, 0, 0, 1], self.native_port).into();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "berth server exited during startup ({status})\n{}",
                    self.log()
                );
            }
            if self.data().join("admin.ticket").is_file()
                && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "berth server not ready after {READY_TIMEOUT:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `berth ARGS` as the admin and expects success.
    fn cli(&self, args: &[&str]) {
        let mut cmd = Command::new(berth_bin());
        for k in ENV_TO_CLEAR {
            cmd.env_remove(k);
        }
        let mut child = cmd
            .args(args)
            .current_dir(self.dir.path().join("work"))
            .env("HOME", self.dir.path().join("home"))
            .env("BERTH_SERVERS", format!("127.0.0.1:{}", self.native_port))
            .env("BERTH_TICKET_FILE", self.data().join("admin.ticket"))
            .env("BERTH_CA_FILE", self.ca_file())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn berth");
        let deadline = Instant::now() + READY_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for berth") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("berth {args:?} did not finish\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "berth {args:?}: {status}\n{}", self.log());
    }

    /// The connection string a user would write.
    fn uri(&self, user: &str, password: &str, mechanism: &str, extra: &str) -> String {
        let mut uri = format!(
            "mongodb://{}:{}@127.0.0.1:{}/?tls=true&tlsCAFile={}&authMechanism={mechanism}",
            escape(user),
            escape(password),
            self.mongo_port,
            self.ca_file().display()
        );
        if mechanism == "PLAIN" {
            uri.push_str("&authSource=$external");
        }
        uri.push_str(extra);
        uri
    }

    fn log(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        format!(
            "--- server stdout ---\n{}\n--- server stderr ---\n{}",
            read("server.stdout.log"),
            read("server.stderr.log")
        )
    }

    /// Runs `check` with a client of `uri`; panics with what failed and
    /// the server log unless it passed.
    fn run<F>(&self, what: &str, uri: &str, check: fn(Client, Arc<AtomicUsize>) -> F)
    where
        F: std::future::Future<Output = Result<(), String>>,
    {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let result = rt.block_on(async {
            let (client, get_mores) = connect(uri).await?;
            match tokio::time::timeout(CHECK_TIMEOUT, check(client.clone(), get_mores)).await {
                Ok(result) => {
                    client.shutdown().await;
                    result
                }
                Err(_) => Err(format!("did not finish in {CHECK_TIMEOUT:?}")),
            }
        });
        if let Err(e) = result {
            panic!("{what} ({uri}): {e}\n{}", self.log());
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `s` with every byte but RFC 3986's unreserved ones percent-encoded, as a
/// user name or password must be in a connection string.
fn escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A client of `uri` and a count of the getMore commands it sends.
async fn connect(uri: &str) -> Result<(Client, Arc<AtomicUsize>), String> {
    let mut options = ClientOptions::parse(uri)
        .await
        .map_err(|e| format!("parse the connection string: {e}"))?;
    let get_mores = Arc::new(AtomicUsize::new(0));
    let counter = get_mores.clone();
    options.command_event_handler = Some(EventHandler::callback(move |e: CommandEvent| {
        if let CommandEvent::Started(started) = e {
            if started.command_name == "getMore" {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        }
    }));
    options.server_selection_timeout = Some(Duration::from_secs(20));
    let client = Client::with_options(options).map_err(|e| format!("client: {e}"))?;
    Ok((client, get_mores))
}

/// Fails the check with a message unless `cond`.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// A driver result, or the check's failure naming `what`.
trait Ctx<T> {
    fn ctx(self, what: &str) -> Result<T, String>;
}

impl<T> Ctx<T> for Result<T, Error> {
    fn ctx(self, what: &str) -> Result<T, String> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

/// The MongoDB error code of `e`, if it has one.
fn code(e: &Error) -> Option<i32> {
    match &*e.kind {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => Some(w.code),
        ErrorKind::InsertMany(m) => m.write_errors.as_ref()?.first().map(|w| w.code),
        _ => None,
    }
}

/// The code of the error `r` must be.
fn error_code<T: std::fmt::Debug>(r: Result<T, Error>, what: &str) -> Result<Option<i32>, String> {
    match r {
        Ok(v) => Err(format!("{what} succeeded: {v:?}")),
        Err(e) => Ok(code(&e)),
    }
}

/// A BSON number as an i64 (int32, int64 and whole doubles).
fn num(v: Option<&Bson>) -> Option<i64> {
    match v? {
        Bson::Int32(n) => Some(i64::from(*n)),
        Bson::Int64(n) => Some(*n),
        Bson::Double(f) if f.fract() == 0.0 => Some(*f as i64),
        _ => None,
    }
}

async fn all(cursor: Result<Cursor<Document>, Error>, what: &str) -> Result<Vec<Document>, String> {
    let mut cursor = cursor.ctx(what)?;
    let mut docs = Vec::new();
    while cursor.advance().await.ctx(what)? {
        docs.push(cursor.deserialize_current().ctx(what)?);
    }
    Ok(docs)
}

async fn crud(c: Client, get_mores: Arc<AtomicUsize>) -> Result<(), String> {
    let db = c.database("shop");
    let users = db.collection::<Document>("users");
    users.drop().await.ctx("drop before")?;

    // Inserts: one, many, generated ObjectIds, a duplicate _id.
    let r = users
        .insert_one(doc! {"_id": 1, "name": "ada", "age": 36, "tags": ["math", "code"]})
        .await
        .ctx("insert_one")?;
    ensure!(
        r.inserted_id == Bson::Int32(1),
        "insert_one id {:?}",
        r.inserted_id
    );
    let many: Vec<Document> = (0..10)
        .map(|i| doc! {"name": format!("user{i}"), "age": 20 + i, "group": i % 3})
        .collect();
    let r = users.insert_many(many).await.ctx("insert_many")?;
    ensure!(
        r.inserted_ids.len() == 10,
        "insert_many ids {:?}",
        r.inserted_ids
    );
    let dup = users.insert_one(doc! {"_id": 1, "name": "dup"}).await;
    let dup = error_code(dup, "a duplicate _id")?;
    ensure!(dup == Some(11000), "duplicate code {dup:?}");
    // 1.0 is the same _id as 1.
    let dup = error_code(
        users.insert_one(doc! {"_id": 1.0}).await,
        "_id 1.0 beside 1",
    )?;
    ensure!(dup == Some(11000), "_id 1.0 code {dup:?}");
    let names = db
        .list_collection_names()
        .await
        .ctx("list_collection_names")?;
    ensure!(
        names.contains(&"users".to_string()),
        "list_collection_names {names:?}"
    );
    let dbs = c.list_database_names().await.ctx("list_database_names")?;
    ensure!(
        dbs.contains(&"shop".to_string()),
        "list_database_names {dbs:?}"
    );

    // Finds: filter, sort, skip, limit, projection, batches.
    let ada = users.find_one(doc! {"name": "ada"}).await.ctx("find_one")?;
    ensure!(
        ada.as_ref().and_then(|d| num(d.get("age"))) == Some(36),
        "find_one {ada:?}"
    );
    let older = all(
        users
            .find(doc! {"age": {"$gte": 25}})
            .sort(doc! {"age": -1})
            .await,
        "sorted find",
    )
    .await?;
    let ages: Vec<Option<i64>> = older.iter().map(|d| num(d.get("age"))).collect();
    let want: Vec<Option<i64>> = [36, 29, 28, 27, 26, 25].into_iter().map(Some).collect();
    ensure!(ages == want, "sorted {older:?}");
    let page = all(
        users
            .find(doc! {})
            .projection(doc! {"name": 1, "_id": 0})
            .sort(doc! {"age": 1})
            .skip(2)
            .limit(3)
            .await,
        "page",
    )
    .await?;
    let want = vec![
        doc! {"name": "user2"},
        doc! {"name": "user3"},
        doc! {"name": "user4"},
    ];
    ensure!(page == want, "page {page:?}");
    let before = get_mores.load(Ordering::SeqCst);
    let batched = all(
        users.find(doc! {"group": 1}).batch_size(2).await,
        "batched find",
    )
    .await?;
    ensure!(batched.len() == 3, "batched find {}", batched.len());
    let every = all(users.find(doc! {}).batch_size(3).await, "find in batches").await?;
    ensure!(
        every.len() == 11,
        "every document in batches of 3: {}",
        every.len()
    );
    let sent = get_mores.load(Ordering::SeqCst) - before;
    ensure!(sent >= 4, "getMores sent: {sent}");
    let tagged = users
        .find_one(doc! {"tags": "code"})
        .await
        .ctx("array element match")?;
    ensure!(
        tagged.as_ref().and_then(|d| num(d.get("_id"))) == Some(1),
        "array element match {tagged:?}"
    );
    let n = users
        .count_documents(doc! {"group": 0})
        .await
        .ctx("count_documents")?;
    ensure!(n == 4, "count_documents {n}");
    let n = users
        .estimated_document_count()
        .await
        .ctx("estimated_document_count")?;
    ensure!(n == 11, "estimated_document_count {n}");
    let groups = users.distinct("group", doc! {}).await.ctx("distinct")?;
    let mut gs: Vec<Option<i64>> = groups.iter().map(|g| num(Some(g))).collect();
    gs.sort();
    ensure!(gs == vec![Some(0), Some(1), Some(2)], "distinct {groups:?}");

    // Updates.
    let r = users
        .update_one(
            doc! {"name": "ada"},
            doc! {"$set": {"city": "London"}, "$inc": {"age": 1}},
        )
        .await
        .ctx("update_one")?;
    ensure!(
        r.matched_count == 1 && r.modified_count == 1,
        "update_one {r:?}"
    );
    let one = users
        .find_one(doc! {"_id": 1})
        .await
        .ctx("find _id 1")?
        .unwrap_or_default();
    ensure!(
        num(one.get("age")) == Some(37) && one.get_str("city").ok() == Some("London"),
        "$inc and $set applied: {one:?}"
    );
    let r = users
        .update_many(doc! {"group": 2}, doc! {"$set": {"flag": true}})
        .await
        .ctx("update_many")?;
    ensure!(
        r.matched_count == 3 && r.modified_count == 3,
        "update_many {r:?}"
    );
    let r = users
        .update_one(doc! {"name": "grace"}, doc! {"$set": {"age": 85}})
        .upsert(true)
        .await
        .ctx("upsert")?;
    ensure!(r.upserted_id.is_some(), "upsert {r:?}");
    let grace = users
        .find_one(doc! {"name": "grace"})
        .await
        .ctx("find upserted")?;
    ensure!(
        grace.as_ref().and_then(|d| num(d.get("age"))) == Some(85),
        "upserted {grace:?}"
    );
    let r = users
        .replace_one(doc! {"_id": 1}, doc! {"name": "ada lovelace"})
        .await
        .ctx("replace_one")?;
    ensure!(r.modified_count == 1, "replace_one {r:?}");
    let replaced = users.find_one(doc! {"_id": 1}).await.ctx("find replaced")?;
    ensure!(
        replaced == Some(doc! {"_id": 1, "name": "ada lovelace"}),
        "replaced {replaced:?}"
    );
    let after = users
        .find_one_and_update(doc! {"name": "user0"}, doc! {"$push": {"log": "seen"}})
        .return_document(ReturnDocument::After)
        .await
        .ctx("find_one_and_update")?
        .unwrap_or_default();
    ensure!(
        after.get_array("log").ok() == Some(&vec![Bson::String("seen".into())]),
        "find_one_and_update {after:?}"
    );

    // Aggregation.
    let groups = all(
        users
            .aggregate(vec![
                doc! {"$match": {"group": {"$exists": true}}},
                doc! {"$group": {"_id": "$group", "n": {"$sum": 1}, "avg": {"$avg": "$age"}}},
                doc! {"$sort": {"_id": 1}},
            ])
            .await,
        "aggregate",
    )
    .await?;
    let ns: Vec<Option<i64>> = groups.iter().map(|g| num(g.get("n"))).collect();
    ensure!(
        ns == vec![Some(4), Some(3), Some(3)],
        "aggregate {groups:?}"
    );
    ensure!(
        groups[0].get("avg") == Some(&Bson::Double(24.5)),
        "aggregate $avg {groups:?}"
    );

    // Deletes.
    let r = users
        .delete_one(doc! {"name": "user1"})
        .await
        .ctx("delete_one")?;
    ensure!(r.deleted_count == 1, "delete_one {r:?}");
    let r = users
        .delete_many(doc! {"group": 2})
        .await
        .ctx("delete_many")?;
    ensure!(r.deleted_count == 3, "delete_many {r:?}");
    let n = users
        .count_documents(doc! {})
        .await
        .ctx("count after deletes")?;
    ensure!(n == 8, "count after deletes {n}");

    // Errors in MongoDB's terms; the connection keeps working after them.
    let bad = error_code(
        users.find_one(doc! {"$bogus": 1}).await,
        "an unknown top-level operator",
    )?;
    ensure!(bad == Some(2), "bad operator code {bad:?}");
    let one = users
        .find_one(doc! {"_id": 1})
        .await
        .ctx("served after an error")?;
    ensure!(one.is_some(), "served after an error");

    users.drop().await.ctx("drop")?;
    let names = db.list_collection_names().await.ctx("list after drop")?;
    ensure!(!names.contains(&"users".to_string()), "dropped: {names:?}");
    Ok(())
}

async fn seed(c: Client, _: Arc<AtomicUsize>) -> Result<(), String> {
    let private = c.database("shop").collection::<Document>("private");
    private
        .insert_one(doc! {"_id": "secret", "x": 1})
        .await
        .ctx("seed insert")?;
    let n = private.count_documents(doc! {}).await.ctx("seed count")?;
    ensure!(n == 1, "seeded {n}");
    Ok(())
}

async fn denied(c: Client, _: Arc<AtomicUsize>) -> Result<(), String> {
    let private = c.database("shop").collection::<Document>("private");
    let read = error_code(private.find_one(doc! {}).await, "a denied read")?;
    ensure!(read == Some(13), "denied read code {read:?}");
    let write = error_code(private.insert_one(doc! {"x": 1}).await, "a denied write")?;
    ensure!(write == Some(13), "denied write code {write:?}");
    Ok(())
}

async fn bad_login(c: Client, _: Arc<AtomicUsize>) -> Result<(), String> {
    match c.database("shop").list_collection_names().await {
        Ok(names) => Err(format!("a wrong password was accepted: {names:?}")),
        Err(e) if matches!(*e.kind, ErrorKind::Authentication { .. }) => Ok(()),
        Err(e) => Err(format!("not an authentication failure: {e}")),
    }
}

/// A transaction commits its writes together, invisible until then; an
/// aborted one leaves nothing; a conflicting one gets a transient error.
async fn transactions(c: Client, _: Arc<AtomicUsize>) -> Result<(), String> {
    let acc = c.database("bank").collection::<Document>("accounts");
    acc.drop().await.ctx("drop before")?;
    acc.insert_many([doc! {"_id": "a", "n": 10}, doc! {"_id": "b", "n": 0}])
        .await
        .ctx("seed")?;
    let mut s = c.start_session().await.ctx("session")?;
    s.start_transaction().await.ctx("start")?;
    acc.update_one(doc! {"_id": "a"}, doc! {"$inc": {"n": -4}})
        .session(&mut s)
        .await
        .ctx("debit")?;
    acc.update_one(doc! {"_id": "b"}, doc! {"$inc": {"n": 4}})
        .session(&mut s)
        .await
        .ctx("credit")?;
    let inside = acc
        .find_one(doc! {"_id": "b"})
        .session(&mut s)
        .await
        .ctx("read inside")?;
    ensure!(
        num(inside.as_ref().and_then(|d| d.get("n"))) == Some(4),
        "inside: {inside:?}"
    );
    let outside = acc.find_one(doc! {"_id": "b"}).await.ctx("read outside")?;
    ensure!(
        num(outside.as_ref().and_then(|d| d.get("n"))) == Some(0),
        "seen before commit: {outside:?}"
    );

    // A write outside to a document the transaction wrote: its commit loses.
    let mut other = c.start_session().await.ctx("session 2")?;
    other.start_transaction().await.ctx("start 2")?;
    acc.update_one(doc! {"_id": "a"}, doc! {"$inc": {"n": 100}})
        .session(&mut other)
        .await
        .ctx("conflicting write")?;
    s.commit_transaction().await.ctx("commit")?;
    match other.commit_transaction().await {
        Ok(()) => return Err("a conflicting transaction committed".into()),
        Err(e) => ensure!(
            e.contains_label("TransientTransactionError"),
            "the conflict is not transient: {e}"
        ),
    }
    let a = acc.find_one(doc! {"_id": "a"}).await.ctx("read a")?;
    let b = acc.find_one(doc! {"_id": "b"}).await.ctx("read b")?;
    ensure!(
        num(a.as_ref().and_then(|d| d.get("n"))) == Some(6)
            && num(b.as_ref().and_then(|d| d.get("n"))) == Some(4),
        "after commit: {a:?} {b:?}"
    );

    s.start_transaction().await.ctx("start again")?;
    acc.delete_many(doc! {})
        .session(&mut s)
        .await
        .ctx("delete inside")?;
    s.abort_transaction().await.ctx("abort")?;
    let n = acc.count_documents(doc! {}).await.ctx("count")?;
    ensure!(n == 2, "an aborted transaction left {n} documents");
    acc.drop().await.ctx("drop")?;
    Ok(())
}

#[test]
fn rust_driver_transactions() {
    let s = Server::start();
    let admin = s.uri("admin", &s.admin_ticket(), "PLAIN", "");
    s.run("transactions as admin", &admin, transactions);
}

#[test]
fn rust_driver_crud_over_scram_and_over_plain_compressed() {
    let s = Server::start();
    s.cli(&["user", "add", "alice", "--password", "alice-pw"]);
    let alice = s.uri("alice", "alice-pw", "SCRAM-SHA-256", "");
    s.run("crud as alice (SCRAM-SHA-256)", &alice, crud);
    let admin = s.uri("admin", &s.admin_ticket(), "PLAIN", "&compressors=snappy");
    s.run("crud as admin (PLAIN, snappy)", &admin, crud);
}

#[test]
fn rust_driver_is_denied_another_users_table() {
    let s = Server::start();
    s.cli(&["user", "add", "alice", "--password", "alice-pw"]);
    s.cli(&["user", "add", "bob", "--password", "bob-pw"]);
    let alice = s.uri("alice", "alice-pw", "SCRAM-SHA-256", "");
    s.run("seed as alice", &alice, seed);
    let bob = s.uri("bob", "bob-pw", "SCRAM-SHA-256", "");
    s.run("denied as bob", &bob, denied);
    let wrong = s.uri("bob", "wrong", "SCRAM-SHA-256", "");
    s.run("a wrong password", &wrong, bad_login);
}
