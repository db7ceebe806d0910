//! The gateway over a real TCP socket, spoken to with hand-built OP_MSG,
//! OP_QUERY and OP_COMPRESSED messages as a driver sends them, against an
//! in-memory backend.

mod memory;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use berth_mongo::{serve, Compressor, MongoConfig};
use berth_security::scram::{self, Mechanism};
use bson::spec::BinarySubtype;
use bson::{doc, Binary, Bson, Document};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use memory::{Memory, PASSWORD, TICKET};

const IO_TIMEOUT: Duration = Duration::from_secs(5);
const OP_REPLY: i32 = 1;
const OP_QUERY: i32 = 2004;
const OP_COMPRESSED: i32 = 2012;
const OP_MSG: i32 = 2013;
const CHECKSUM_PRESENT: u32 = 1;
const MORE_TO_COME: u32 = 2;

// ------------------------------------------------------------------ server

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start() -> Server {
    start_with(MongoConfig::default()).await
}

async fn start_with(cfg: MongoConfig) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    let done = tokio::spawn(serve(
        listener,
        None,
        Arc::new(Memory::new()),
        cfg,
        async move {
            let _ = rx.await;
        },
    ));
    Server {
        addr,
        stop: Some(tx),
        done,
    }
}

impl Server {
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.done)
            .await
            .expect("serve returns after shutdown")
            .unwrap()
            .unwrap();
    }
}

// ------------------------------------------------------------------ client

fn header(len: usize, id: i32, op: i32) -> Vec<u8> {
    let mut h = (len as i32).to_le_bytes().to_vec();
    h.extend_from_slice(&id.to_le_bytes());
    h.extend_from_slice(&0i32.to_le_bytes());
    h.extend_from_slice(&op.to_le_bytes());
    h
}

/// An OP_MSG: body section, then document sequences, then the checksum.
fn op_msg(id: i32, flags: u32, body: &Document, seqs: &[(&str, &[Document])]) -> Vec<u8> {
    let mut rest = flags.to_le_bytes().to_vec();
    rest.push(0);
    rest.extend(body.to_vec().unwrap());
    for (ident, docs) in seqs {
        let mut s = ident.as_bytes().to_vec();
        s.push(0);
        for d in *docs {
            s.extend(d.to_vec().unwrap());
        }
        rest.push(1);
        rest.extend_from_slice(&((s.len() + 4) as i32).to_le_bytes());
        rest.extend(s);
    }
    let checksum = flags & CHECKSUM_PRESENT != 0;
    let len = 16 + rest.len() + if checksum { 4 } else { 0 };
    let mut m = header(len, id, OP_MSG);
    m.extend(rest);
    if checksum {
        let crc = crc32c::crc32c(&m);
        m.extend_from_slice(&crc.to_le_bytes());
    }
    m
}

fn op_query(id: i32, collection: &str, query: &Document) -> Vec<u8> {
    let mut rest = 0i32.to_le_bytes().to_vec();
    rest.extend_from_slice(collection.as_bytes());
    rest.push(0);
    rest.extend_from_slice(&0i32.to_le_bytes());
    rest.extend_from_slice(&(-1i32).to_le_bytes());
    rest.extend(query.to_vec().unwrap());
    let mut m = header(16 + rest.len(), id, OP_QUERY);
    m.extend(rest);
    m
}

/// OP_COMPRESSED around a whole message, with zlib.
fn zlib_compressed(msg: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(&msg[16..]).unwrap();
    let packed = e.finish().unwrap();
    let id = i32::from_le_bytes(msg[4..8].try_into().unwrap());
    let op = i32::from_le_bytes(msg[12..16].try_into().unwrap());
    let mut m = header(16 + 9 + packed.len(), id, OP_COMPRESSED);
    m.extend_from_slice(&op.to_le_bytes());
    m.extend_from_slice(&((msg.len() - 16) as i32).to_le_bytes());
    m.push(2);
    m.extend(packed);
    m
}

/// An answer as the client reads it.
#[derive(Debug)]
struct Reply {
    response_to: i32,
    op: i32,
    /// The opcode inside, when it came compressed.
    compressed: Option<i32>,
    flags: u32,
    doc: Document,
}

fn bin(bytes: impl Into<Vec<u8>>) -> Binary {
    Binary {
        subtype: BinarySubtype::Generic,
        bytes: bytes.into(),
    }
}

struct Client {
    stream: TcpStream,
    next_id: i32,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        Client {
            stream: TcpStream::connect(addr).await.unwrap(),
            next_id: 1,
        }
    }

    async fn authenticated(addr: SocketAddr) -> Client {
        let mut c = Client::connect(addr).await;
        c.scram("alice", PASSWORD, true).await.unwrap();
        c
    }

    fn id(&mut self) -> i32 {
        self.next_id += 1;
        self.next_id
    }

    async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next answer; None when the server closed the connection.
    async fn read(&mut self) -> Option<Reply> {
        let mut len = [0u8; 4];
        match tokio::time::timeout(IO_TIMEOUT, self.stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return None,
            Err(_) => panic!("no answer within {IO_TIMEOUT:?}"),
        }
        let len = i32::from_le_bytes(len) as usize;
        let mut msg = len.to_le_bytes()[..4].to_vec();
        msg.resize(len, 0);
        tokio::time::timeout(IO_TIMEOUT, self.stream.read_exact(&mut msg[4..]))
            .await
            .unwrap()
            .unwrap();
        Some(parse_reply(&msg))
    }

    async fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(IO_TIMEOUT, self.stream.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    /// Sends `body` on `db` as OP_MSG, returns the answer's document.
    async fn cmd(&mut self, db: &str, mut body: Document) -> Document {
        body.insert("$db", db);
        self.msg(0, &body, &[]).await.doc
    }

    async fn msg(&mut self, flags: u32, body: &Document, seqs: &[(&str, &[Document])]) -> Reply {
        let id = self.id();
        self.write(&op_msg(id, flags, body, seqs)).await;
        let r = self.read().await.expect("an answer");
        assert_eq!(r.response_to, id);
        r
    }

    /// SCRAM-SHA-256 as drivers run it, built from berth-security's client
    /// helpers; Err(the failed answer).
    async fn scram(
        &mut self,
        user: &str,
        password: &str,
        skip_empty: bool,
    ) -> Result<(), Document> {
        let m = Mechanism::Sha256;
        let nonce = scram::nonce();
        let first_bare = format!("n={user},r={nonce}");
        let start = doc! {
            "saslStart": 1, "mechanism": "SCRAM-SHA-256",
            "payload": bin(format!("n,,{first_bare}").into_bytes()),
            "options": {"skipEmptyExchange": skip_empty},
        };
        let r = self.cmd("admin", start).await;
        if r.get_f64("ok").unwrap() != 1.0 {
            return Err(r);
        }
        let server_first = payload_str(&r);
        let last = self.scram_last(m, &first_bare, &server_first, password, &nonce);
        let cont = doc! {"saslContinue": 1, "conversationId": r.get_i32("conversationId").unwrap(),
        "payload": bin(last.0.into_bytes())};
        let r = self.cmd("admin", cont).await;
        if r.get_f64("ok").unwrap() != 1.0 {
            return Err(r);
        }
        assert_eq!(payload_str(&r), last.1, "the server proves it knew the key");
        assert_eq!(r.get_bool("done").unwrap(), skip_empty);
        if !skip_empty {
            let end = doc! {"saslContinue": 1, "conversationId": 1, "payload": bin(vec![])};
            let r = self.cmd("admin", end).await;
            assert_eq!(r.get_f64("ok").unwrap(), 1.0, "{r}");
            assert!(r.get_bool("done").unwrap());
        }
        Ok(())
    }

    /// The client-final and the server-final it expects.
    fn scram_last(
        &self,
        m: Mechanism,
        first_bare: &str,
        server_first: &str,
        password: &str,
        nonce: &str,
    ) -> (String, String) {
        let attr = |k: &str| {
            server_first
                .split(',')
                .find_map(|a| a.strip_prefix(k))
                .unwrap()
                .to_string()
        };
        let (r, s, i) = (attr("r="), attr("s="), attr("i="));
        assert!(r.starts_with(nonce));
        let salt = B64.decode(s).unwrap();
        let salted = m.salted_password(password.as_bytes(), &salt, i.parse().unwrap());
        let without_proof = format!("c=biws,r={r}");
        let auth = format!("{first_bare},{server_first},{without_proof}");
        let proof = scram::client_proof(m, &salted, auth.as_bytes());
        let server_key = m.hmac(&salted, b"Server Key");
        let v = scram::server_signature(m, &server_key, auth.as_bytes());
        (
            format!("{without_proof},p={}", B64.encode(proof)),
            format!("v={}", B64.encode(v)),
        )
    }
}

fn payload_str(d: &Document) -> String {
    String::from_utf8(d.get_binary_generic("payload").unwrap().clone()).unwrap()
}

fn parse_reply(msg: &[u8]) -> Reply {
    let i32_at = |at: usize| i32::from_le_bytes(msg[at..at + 4].try_into().unwrap());
    assert_eq!(i32_at(0) as usize, msg.len());
    let response_to = i32_at(8);
    let op = i32_at(12);
    match op {
        OP_COMPRESSED => {
            let original = i32_at(16);
            let size = i32_at(20) as usize;
            assert_eq!(msg[24], 2, "zlib, as the request");
            let mut content = Vec::new();
            use std::io::Read;
            flate2::read::ZlibDecoder::new(&msg[25..])
                .read_to_end(&mut content)
                .unwrap();
            assert_eq!(content.len(), size);
            let mut inner = header(16 + size, i32_at(4), original);
            inner[8..12].copy_from_slice(&response_to.to_le_bytes());
            inner.extend(content);
            let mut r = parse_reply(&inner);
            r.compressed = Some(original);
            r.op = OP_COMPRESSED;
            r
        }
        OP_MSG => {
            let flags = i32_at(16) as u32;
            let mut end = msg.len();
            if flags & CHECKSUM_PRESENT != 0 {
                end -= 4;
                let crc = u32::from_le_bytes(msg[end..].try_into().unwrap());
                assert_eq!(crc, crc32c::crc32c(&msg[..end]), "the answer's checksum");
            }
            assert_eq!(msg[20], 0, "one body section");
            let doc = Document::from_reader(&msg[21..end]).unwrap();
            Reply {
                response_to,
                op,
                compressed: None,
                flags,
                doc,
            }
        }
        OP_REPLY => {
            assert_eq!(i32_at(32), 1, "one document");
            Reply {
                response_to,
                op,
                compressed: None,
                flags: i32_at(16) as u32,
                doc: Document::from_reader(&msg[36..]).unwrap(),
            }
        }
        other => panic!("answer with opcode {other}"),
    }
}

fn ok(d: &Document) -> bool {
    d.get_f64("ok").ok() == Some(1.0)
}

fn code(d: &Document) -> i32 {
    assert_eq!(d.get_f64("ok").ok(), Some(0.0), "{d}");
    d.get_i32("code").unwrap()
}

// ------------------------------------------------------------------- tests

#[tokio::test]
async fn handshake_over_op_query_then_op_msg() {
    let s = start().await;
    let mut c = Client::connect(s.addr).await;
    // pymongo's first isMaster: OP_QUERY on admin.$cmd, $query-wrapped.
    let q = doc! {"$query": {"isMaster": 1, "helloOk": true, "client": {"driver": {"name": "t"}},
    "compression": ["zstd", "snappy", "lz4"]},
    "$readPreference": {"mode": "primaryPreferred"}};
    c.write(&op_query(5, "admin.$cmd", &q)).await;
    let r = c.read().await.unwrap();
    assert_eq!((r.op, r.response_to), (OP_REPLY, 5));
    let d = r.doc;
    assert!(ok(&d), "{d}");
    assert_eq!(d.get_bool("ismaster").ok(), Some(true));
    assert_eq!(d.get_bool("helloOk").ok(), Some(true));
    assert_eq!(d.get_i32("maxBsonObjectSize").ok(), Some(16 * 1024 * 1024));
    assert_eq!(d.get_i32("maxMessageSizeBytes").ok(), Some(48_000_000));
    assert_eq!(d.get_i32("maxWriteBatchSize").ok(), Some(100_000));
    assert_eq!(d.get_i32("maxWireVersion").ok(), Some(21));
    assert_eq!(d.get_i32("minWireVersion").ok(), Some(0));
    assert_eq!(d.get_i32("logicalSessionTimeoutMinutes").ok(), Some(30));
    assert_eq!(d.get_bool("readOnly").ok(), Some(false));
    assert!(d.get_datetime("localTime").is_ok());
    assert!(d.get_i64("connectionId").is_ok());
    let zs: Vec<Bson> = vec!["zstd".into(), "snappy".into()];
    assert_eq!(d.get_array("compression").unwrap(), &zs);
    assert!(!d.contains_key("topologyVersion"));

    // Then hello over OP_MSG, asking for alice's and bob's mechanisms.
    let d = c
        .cmd(
            "admin",
            doc! {"hello": 1, "saslSupportedMechs": "admin.alice"},
        )
        .await;
    assert_eq!(d.get_bool("isWritablePrimary").ok(), Some(true));
    assert!(!d.contains_key("helloOk"));
    let mechs: Vec<Bson> = vec!["SCRAM-SHA-256".into()];
    assert_eq!(d.get_array("saslSupportedMechs").unwrap(), &mechs);
    let d = c
        .cmd(
            "admin",
            doc! {"hello": 1, "saslSupportedMechs": "admin.bob"},
        )
        .await;
    assert!(d.get_array("saslSupportedMechs").unwrap().is_empty());

    // Informational commands need no authentication.
    assert!(ok(&c.cmd("admin", doc! {"ping": 1}).await));
    let b = c.cmd("admin", doc! {"buildInfo": 1}).await;
    assert_eq!(b.get_str("version").ok(), Some("7.0.0"));
    let v: Vec<Bson> = vec![7.into(), 0.into(), 0.into(), 0.into()];
    assert_eq!(b.get_array("versionArray").unwrap(), &v);
    let p = c
        .cmd(
            "admin",
            doc! {"getParameter": 1, "featureCompatibilityVersion": 1},
        )
        .await;
    assert_eq!(
        p.get_document("featureCompatibilityVersion").unwrap(),
        &doc! {"version": "7.0"}
    );
    let me = c.cmd("admin", doc! {"whatsmyuri": 1}).await;
    assert_eq!(
        me.get_str("you").unwrap(),
        c.stream.local_addr().unwrap().to_string()
    );
    for cmd in [
        doc! {"endSessions": [{"id": 1}]},
        doc! {"killAllSessions": []},
        doc! {"hostInfo": 1},
        doc! {"getLog": "startupWarnings"},
        doc! {"logout": 1},
    ] {
        assert!(ok(&c.cmd("admin", cmd.clone()).await), "{cmd}");
    }
    let st = c.cmd("admin", doc! {"connectionStatus": 1}).await;
    assert!(st
        .get_document("authInfo")
        .unwrap()
        .get_array("authenticatedUsers")
        .unwrap()
        .is_empty());
    s.stop().await;
}

#[tokio::test]
async fn commands_need_authentication() {
    let s = start().await;
    let mut c = Client::connect(s.addr).await;
    for (cmd, name) in [
        (doc! {"find": "c"}, "find"),
        (doc! {"insert": "c", "documents": [{}]}, "insert"),
        (doc! {"listDatabases": 1}, "listDatabases"),
        (doc! {"noSuchThing": 1}, "noSuchThing"),
    ] {
        let d = c.cmd("admin", cmd).await;
        assert_eq!(code(&d), 13);
        assert_eq!(d.get_str("codeName").ok(), Some("Unauthorized"));
        assert_eq!(
            d.get_str("errmsg").unwrap(),
            format!("command {name} requires authentication")
        );
    }
    // After authentication, an unknown command is CommandNotFound.
    c.scram("alice", PASSWORD, false).await.unwrap();
    let d = c.cmd("admin", doc! {"noSuchThing": 1}).await;
    assert_eq!(code(&d), 59);
    assert_eq!(
        d.get_str("errmsg").ok(),
        Some("no such command: 'noSuchThing'")
    );
    let st = c.cmd("admin", doc! {"connectionStatus": 1}).await;
    let users = st
        .get_document("authInfo")
        .unwrap()
        .get_array("authenticatedUsers")
        .unwrap()
        .clone();
    assert_eq!(
        users,
        vec![Bson::Document(doc! {"user": "alice", "db": "admin"})]
    );
    // A transaction needs a session; a backend without transactions
    // refuses them, clearly.
    let d = c
        .cmd(
            "t",
            doc! {"find": "c", "startTransaction": true, "autocommit": false, "txnNumber": 1i64},
        )
        .await;
    assert_eq!(code(&d), 72);
    let lsid =
        doc! {"id": bson::Binary {subtype: bson::spec::BinarySubtype::Uuid, bytes: vec![7; 16]}};
    let d = c
        .cmd(
            "t",
            doc! {"find": "c", "startTransaction": true, "autocommit": false, "txnNumber": 1i64, "lsid": lsid.clone()},
        )
        .await;
    assert_eq!(code(&d), 20);
    assert!(d
        .get_str("errmsg")
        .unwrap()
        .contains("transactions are not supported"));
    // Only some commands run in a transaction.
    let d = c
        .cmd(
            "t",
            doc! {"listCollections": 1, "autocommit": false, "txnNumber": 1i64, "lsid": lsid},
        )
        .await;
    assert_eq!(code(&d), 263);
    s.stop().await;
}

#[tokio::test]
async fn speculative_scram_in_hello() {
    let s = start().await;
    let mut c = Client::connect(s.addr).await;
    let nonce = scram::nonce();
    let first_bare = format!("n=alice,r={nonce}");
    let hello = doc! {
        "hello": 1,
        "saslSupportedMechs": "admin.alice",
        "speculativeAuthenticate": {
            "saslStart": 1, "mechanism": "SCRAM-SHA-256",
            "payload": bin(format!("n,,{first_bare}").into_bytes()),
            "options": {"skipEmptyExchange": true}, "db": "admin",
        },
    };
    let d = c.cmd("admin", hello).await;
    let spec = d.get_document("speculativeAuthenticate").unwrap();
    assert!(!spec.get_bool("done").unwrap());
    let server_first = payload_str(spec);
    let (last, expected) = c.scram_last(
        Mechanism::Sha256,
        &first_bare,
        &server_first,
        PASSWORD,
        &nonce,
    );
    let cont = doc! {"saslContinue": 1, "conversationId": spec.get_i32("conversationId").unwrap(),
    "payload": bin(last.into_bytes())};
    let d = c.cmd("admin", cont).await;
    assert!(ok(&d), "{d}");
    assert!(d.get_bool("done").unwrap());
    assert_eq!(payload_str(&d), expected);
    assert!(ok(&c.cmd("t", doc! {"find": "c"}).await));
    s.stop().await;
}

#[tokio::test]
async fn plain_and_failed_authentication() {
    let s = start().await;
    let mut c = Client::connect(s.addr).await;
    // A ticket as the password, with any user name.
    let start = doc! {"saslStart": 1, "mechanism": "PLAIN",
    "payload": bin(format!("\0someone\0{TICKET}").into_bytes())};
    let d = c.cmd("$external", start).await;
    assert!(ok(&d) && d.get_bool("done").unwrap(), "{d}");
    assert!(ok(&c.cmd("t", doc! {"count": "c"}).await));

    // Wrong passwords and unknown users fail alike; the connection stays
    // until too many failures.
    let mut c = Client::connect(s.addr).await;
    let d = c.scram("alice", "wrong", true).await.unwrap_err();
    assert_eq!(code(&d), 18);
    assert_eq!(d.get_str("errmsg").ok(), Some("Authentication failed."));
    let d = c.scram("mallory", "wrong", true).await.unwrap_err();
    assert_eq!(
        (code(&d), d.get_str("errmsg").ok()),
        (18, Some("Authentication failed."))
    );
    let d = c
        .cmd(
            "admin",
            doc! {"saslStart": 1, "mechanism": "SCRAM-SHA-1", "payload": bin(b"x".to_vec())},
        )
        .await;
    assert_eq!(code(&d), 334);
    for _ in 0..2 {
        let bad =
            doc! {"saslStart": 1, "mechanism": "PLAIN", "payload": bin(b"\0alice\0nope".to_vec())};
        assert_eq!(code(&c.cmd("$external", bad).await), 18);
    }
    // The fifth failure is answered, then the connection closes.
    let bad =
        doc! {"saslStart": 1, "mechanism": "PLAIN", "payload": bin(b"\0alice\0nope".to_vec())};
    assert_eq!(code(&c.cmd("$external", bad).await), 18);
    assert!(c.closed().await);
    s.stop().await;
}

#[tokio::test]
async fn crud_with_cursors() {
    let s = start().await;
    let mut c = Client::authenticated(s.addr).await;
    // Insert through a document sequence, with a checksum.
    let docs: Vec<Document> = (0..5).map(|i| doc! {"_id": i, "k": "v", "i": i}).collect();
    let body = doc! {"insert": "c", "ordered": true, "$db": "t", "lsid": {"id": 1}};
    let r = c
        .msg(CHECKSUM_PRESENT, &body, &[("documents", &docs)])
        .await;
    assert_ne!(r.flags & CHECKSUM_PRESENT, 0, "answered with a checksum");
    assert_eq!(r.doc, doc! {"n": 5, "ok": 1.0});

    // find with batchSize 2, then getMore until exhausted.
    let d = c
        .cmd(
            "t",
            doc! {"find": "c", "filter": {"k": "v"}, "batchSize": 2},
        )
        .await;
    let cursor = d.get_document("cursor").unwrap();
    assert_eq!(cursor.get_str("ns").ok(), Some("t.c"));
    assert_eq!(cursor.get_array("firstBatch").unwrap().len(), 2);
    let id = cursor.get_i64("id").unwrap();
    assert_ne!(id, 0);
    let more = doc! {"getMore": id, "collection": "c", "batchSize": 2};
    let d = c.cmd("t", more.clone()).await;
    let cursor = d.get_document("cursor").unwrap();
    assert_eq!(cursor.get_array("nextBatch").unwrap().len(), 2);
    assert_eq!(cursor.get_i64("id").ok(), Some(id));
    let d = c.cmd("t", more.clone()).await;
    let cursor = d.get_document("cursor").unwrap();
    let last = cursor.get_array("nextBatch").unwrap();
    assert_eq!(
        last,
        &vec![Bson::Document(doc! {"_id": 4, "k": "v", "i": 4})]
    );
    assert_eq!(cursor.get_i64("id").ok(), Some(0));
    assert_eq!(code(&c.cmd("t", more).await), 43);

    // Another cursor, killed.
    let d = c.cmd("t", doc! {"find": "c", "batchSize": 1}).await;
    let id = d.get_document("cursor").unwrap().get_i64("id").unwrap();
    let k = c
        .cmd("t", doc! {"killCursors": "c", "cursors": [id, 12345i64]})
        .await;
    assert_eq!(
        k.get_array("cursorsKilled").unwrap(),
        &vec![Bson::Int64(id)]
    );
    assert_eq!(
        k.get_array("cursorsNotFound").unwrap(),
        &vec![Bson::Int64(12345)]
    );
    let d = c.cmd("t", doc! {"getMore": id, "collection": "c"}).await;
    assert_eq!(code(&d), 43);

    // A cursor is its principal's: bob (PLAIN, ticket) may not continue it.
    let d = c.cmd("t", doc! {"find": "c", "batchSize": 1}).await;
    let id = d.get_document("cursor").unwrap().get_i64("id").unwrap();
    let mut bob = Client::connect(s.addr).await;
    let start = doc! {"saslStart": 1, "mechanism": "PLAIN",
    "payload": bin(format!("\0bob\0{TICKET}").into_bytes())};
    assert!(ok(&bob.cmd("$external", start).await));
    let d = bob.cmd("t", doc! {"getMore": id, "collection": "c"}).await;
    assert_eq!(code(&d), 13);

    // Writes: a duplicate stops an ordered insert, not an unordered one.
    let dup = [doc! {"_id": 10}, doc! {"_id": 0}, doc! {"_id": 11}];
    let ordered = doc! {"insert": "c", "$db": "t"};
    let d = c.msg(0, &ordered, &[("documents", &dup)]).await.doc;
    assert_eq!(d.get_i32("n").ok(), Some(1));
    let errs = d.get_array("writeErrors").unwrap();
    assert_eq!(errs.len(), 1);
    let e = errs[0].as_document().unwrap();
    assert_eq!(
        (e.get_i32("index").ok(), e.get_i32("code").ok()),
        (Some(1), Some(11000))
    );
    assert!(e.get_str("errmsg").unwrap().starts_with("E11000"));
    let dup = [doc! {"_id": 20}, doc! {"_id": 0}, doc! {"_id": 21}];
    let unordered = doc! {"insert": "c", "ordered": false, "$db": "t"};
    let d = c.msg(0, &unordered, &[("documents", &dup)]).await.doc;
    assert_eq!(d.get_i32("n").ok(), Some(2));
    assert!(ok(&d));

    // update (with an upsert) and delete, their sequences named as drivers do.
    let updates = [
        doc! {"q": {"_id": 1}, "u": {"$set": {"x": 1}}},
        doc! {"q": {"_id": 99}, "u": {"$set": {"x": 2}}, "upsert": true},
    ];
    let d = c
        .msg(
            0,
            &doc! {"update": "c", "$db": "t"},
            &[("updates", &updates)],
        )
        .await
        .doc;
    assert_eq!(d.get_i32("n").ok(), Some(2));
    assert_eq!(d.get_i32("nModified").ok(), Some(1));
    assert_eq!(
        d.get_array("upserted").unwrap(),
        &vec![Bson::Document(doc! {"index": 1, "_id": 99})]
    );
    let deletes = [doc! {"q": {"k": "v"}, "limit": 0}];
    let d = c
        .msg(
            0,
            &doc! {"delete": "c", "$db": "t"},
            &[("deletes", &deletes)],
        )
        .await
        .doc;
    assert_eq!(d, doc! {"n": 5, "ok": 1.0});
    let d = c.cmd("t", doc! {"count": "c"}).await;
    assert_eq!(d, doc! {"n": 4, "ok": 1.0}); // 10, 20, 21 and 99

    // findAndModify, distinct, aggregate, catalog commands.
    let d = c
        .cmd(
            "t",
            doc! {"findAndModify": "c", "query": {"_id": 99}, "update": {"$set": {"x": 3}}, "new": true},
        )
        .await;
    assert_eq!(
        d.get_document("lastErrorObject").unwrap(),
        &doc! {"n": 1, "updatedExisting": true}
    );
    assert_eq!(d.get_document("value").unwrap(), &doc! {"_id": 99, "x": 3});
    let d = c
        .cmd(
            "t",
            doc! {"findAndModify": "c", "query": {"_id": 1000}, "remove": true},
        )
        .await;
    assert_eq!(d.get("value"), Some(&Bson::Null));
    let d = c.cmd("t", doc! {"distinct": "c", "key": "x"}).await;
    assert_eq!(d.get_array("values").unwrap(), &vec![Bson::Int32(3)]);
    let d = c
        .cmd(
            "t",
            doc! {"aggregate": "c", "pipeline": [{"$match": {"x": 3}}, {"$count": "n"}], "cursor": {}},
        )
        .await;
    assert_eq!(
        d.get_document("cursor").unwrap(),
        &doc! {"firstBatch": [{"n": 1}], "id": 0i64, "ns": "t.c"}
    );
    let d = c
        .cmd(
            "t",
            doc! {"explain": {"find": "c", "filter": {}}, "verbosity": "queryPlanner"},
        )
        .await;
    assert!(ok(&d) && d.contains_key("queryPlanner"), "{d}");
    assert!(ok(&c.cmd("t", doc! {"create": "d"}).await));
    assert_eq!(code(&c.cmd("t", doc! {"create": "d"}).await), 48);
    let d = c
        .cmd(
            "t",
            doc! {"listCollections": 1, "nameOnly": true, "filter": {"name": "d"}},
        )
        .await;
    assert_eq!(
        d.get_document("cursor").unwrap(),
        &doc! {"firstBatch": [{"name": "d", "type": "collection"}], "id": 0i64,
        "ns": "t.$cmd.listCollections"}
    );
    let d = c
        .cmd(
            "t",
            doc! {"createIndexes": "c", "indexes": [{"key": {"x": 1}, "name": "x_1"}]},
        )
        .await;
    assert_eq!(d.get_i32("numIndexesAfter").ok(), Some(2));
    let d = c.cmd("t", doc! {"listIndexes": "c", "cursor": {}}).await;
    assert_eq!(
        d.get_document("cursor")
            .unwrap()
            .get_array("firstBatch")
            .unwrap()
            .len(),
        2
    );
    let d = c.cmd("t", doc! {"dropIndexes": "c", "index": "x_1"}).await;
    assert_eq!(d.get_i32("nIndexesWas").ok(), Some(2));
    let d = c
        .cmd("admin", doc! {"listDatabases": 1, "nameOnly": true})
        .await;
    assert_eq!(
        d.get_array("databases").unwrap(),
        &vec![Bson::Document(doc! {"name": "t"})]
    );
    assert_eq!(code(&c.cmd("t", doc! {"listDatabases": 1}).await), 13);
    let d = c
        .cmd("admin", doc! {"renameCollection": "t.d", "to": "t.e"})
        .await;
    assert!(ok(&d), "{d}");
    assert!(ok(&c.cmd("t", doc! {"collStats": "c"}).await));
    assert!(ok(&c.cmd("t", doc! {"dbStats": 1}).await));
    assert!(ok(&c.cmd("t", doc! {"drop": "e"}).await));
    assert!(ok(&c.cmd("t", doc! {"dropDatabase": 1}).await));
    // A known field of the wrong type.
    let d = c.cmd("t", doc! {"find": "c", "filter": "x"}).await;
    assert_eq!(code(&d), 14);
    s.stop().await;
}

#[tokio::test]
async fn more_to_come_gets_no_answer() {
    let s = start().await;
    let mut c = Client::authenticated(s.addr).await;
    let body = doc! {"insert": "c", "$db": "t", "writeConcern": {"w": 0}};
    let id = c.id();
    c.write(&op_msg(
        id,
        MORE_TO_COME,
        &body,
        &[("documents", &[doc! {"_id": 1}])],
    ))
    .await;
    // The next answer is the find's: the insert got none.
    let d = c.cmd("t", doc! {"find": "c"}).await;
    assert_eq!(
        d.get_document("cursor")
            .unwrap()
            .get_array("firstBatch")
            .unwrap(),
        &vec![Bson::Document(doc! {"_id": 1})]
    );
    s.stop().await;
}

#[tokio::test]
async fn compressed_requests_get_compressed_answers() {
    let s = start().await;
    let mut c = Client::authenticated(s.addr).await;
    let hello = doc! {"hello": 1, "compression": ["zlib"], "$db": "admin"};
    let id = c.id();
    c.write(&zlib_compressed(&op_msg(id, 0, &hello, &[]))).await;
    let r = c.read().await.unwrap();
    assert_eq!(r.op, OP_MSG, "hello is never answered compressed");
    let zlib: Vec<Bson> = vec!["zlib".into()];
    assert_eq!(r.doc.get_array("compression").unwrap(), &zlib);

    let docs: Vec<Document> = (0..50)
        .map(|i| doc! {"_id": i, "pad": "x".repeat(100)})
        .collect();
    let body = doc! {"insert": "c", "$db": "t"};
    let id = c.id();
    c.write(&zlib_compressed(&op_msg(
        id,
        0,
        &body,
        &[("documents", &docs)],
    )))
    .await;
    let r = c.read().await.unwrap();
    assert_eq!(
        (r.op, r.compressed, r.response_to),
        (OP_COMPRESSED, Some(OP_MSG), id)
    );
    assert_eq!(r.doc, doc! {"n": 50, "ok": 1.0});
    // Uncompressed requests still get uncompressed answers.
    let r = c.msg(0, &doc! {"count": "c", "$db": "t"}, &[]).await;
    assert_eq!(r.op, OP_MSG);
    // An OP_QUERY command inside OP_COMPRESSED gets an OP_REPLY inside one.
    let id = c.id();
    c.write(&zlib_compressed(&op_query(
        id,
        "t.$cmd",
        &doc! {"count": "c"},
    )))
    .await;
    let r = c.read().await.unwrap();
    assert_eq!((r.op, r.compressed), (OP_COMPRESSED, Some(OP_REPLY)));
    assert_eq!(r.doc, doc! {"n": 50, "ok": 1.0});
    s.stop().await;
}

/// Log lines, captured.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

/// The log lines of the whole test binary: one global subscriber (a
/// thread-local one misses lines when other tests warm the same callsites
/// at the same time); each test picks the lines naming its own clients.
fn logs() -> &'static Logs {
    static LOGS: std::sync::OnceLock<Logs> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
        logs
    })
}

impl Logs {
    /// The lines that name `peer`.
    fn about(&self, peer: SocketAddr) -> Vec<String> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .filter(|l| l.contains(&format!("peer={peer}")))
            .map(str::to_string)
            .collect()
    }
}

#[tokio::test]
async fn malformed_messages_close_only_their_connection() {
    let logs = logs();
    let s = start_with(MongoConfig {
        max_message_bytes: 1 << 20,
        ..MongoConfig::default()
    })
    .await;
    let mut good = Client::authenticated(s.addr).await;

    // An intact frame with a bad content: answered, and the connection goes on.
    let mut answered = Client::connect(s.addr).await;
    let mut bad = op_msg(41, 0, &doc! {"ping": 1, "$db": "admin"}, &[]);
    bad.push(7); // a section of unknown kind 7
    let len = bad.len() as i32;
    bad[..4].copy_from_slice(&len.to_le_bytes());
    answered.write(&bad).await;
    let r = answered.read().await.unwrap();
    assert_eq!(r.response_to, 41);
    assert_eq!(code(&r.doc), 17);
    let no_db = answered.msg(0, &doc! {"ping": 1}, &[]).await;
    assert_eq!(code(&no_db.doc), 40571);
    assert!(ok(&answered.cmd("admin", doc! {"ping": 1}).await));

    // Frames that cannot be trusted close their connection only: a length
    // below the header, a message above the limit, a failed checksum, an
    // unknown opcode, a truncated compressed message.
    let mut short = header(16, 1, OP_MSG);
    short[..4].copy_from_slice(&10i32.to_le_bytes());
    let huge = header(2 << 20, 1, OP_MSG);
    let mut crc = op_msg(1, CHECKSUM_PRESENT, &doc! {"ping": 1, "$db": "a"}, &[]);
    let n = crc.len();
    crc[n - 1] ^= 1;
    let mut insert = op_msg(1, 0, &doc! {"a": 1}, &[]);
    insert[12..16].copy_from_slice(&2002i32.to_le_bytes());
    let mut truncated = zlib_compressed(&op_msg(1, 0, &doc! {"ping": 1, "$db": "a"}, &[]));
    truncated.truncate(truncated.len() - 4);
    let len = truncated.len() as i32;
    truncated[..4].copy_from_slice(&len.to_le_bytes());
    let frames = [
        (short, "message length 10"),
        (huge, "exceeds the limit"),
        (crc, "checksum"),
        (insert, "opcode 2002"),
        (truncated, "OP_COMPRESSED"),
    ];
    for (frame, why) in &frames {
        let mut c = Client::connect(s.addr).await;
        let peer = c.stream.local_addr().unwrap();
        c.write(frame).await;
        assert!(c.closed().await);
        // The line is written as the connection's task ends.
        let mut lines = vec![];
        for _ in 0..100 {
            lines = logs.about(peer);
            if !lines.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(lines.len(), 1, "one line per closed connection: {lines:?}");
        let line = &lines[0];
        assert!(
            line.contains("WARN") && line.contains("mongo connection closed"),
            "{line}"
        );
        assert!(line.contains(why), "{why}: {line}");
    }
    // Everyone else is still served, and logged nothing.
    assert!(ok(&good.cmd("t", doc! {"count": "c"}).await));
    assert!(ok(&answered.cmd("admin", doc! {"ping": 1}).await));
    assert!(logs.about(answered.stream.local_addr().unwrap()).is_empty());
    drop(good);
    drop(answered);
    s.stop().await;
}

#[tokio::test]
async fn compressors_offered_are_configurable() {
    let s = start_with(MongoConfig {
        compressors: vec![Compressor::Snappy],
        ..MongoConfig::default()
    })
    .await;
    let mut c = Client::connect(s.addr).await;
    let d = c
        .cmd("admin", doc! {"hello": 1, "compression": ["zstd", "zlib"]})
        .await;
    assert!(d.get_array("compression").unwrap().is_empty());
    s.stop().await;
}

#[tokio::test]
async fn large_messages_only_after_authentication() {
    let s = start().await;
    let docs: Vec<Document> = (0..3)
        .map(|i| doc! {"_id": i, "pad": "x".repeat(800_000)})
        .collect();
    let body = doc! {"insert": "c", "$db": "t"};
    // 2.4 MB before authentication: the connection is closed unread.
    let mut anonymous = Client::connect(s.addr).await;
    let id = anonymous.id();
    anonymous
        .write(&op_msg(id, 0, &body, &[("documents", &docs)]))
        .await;
    assert!(anonymous.closed().await);
    // After it, the same message is served.
    let mut c = Client::authenticated(s.addr).await;
    let r = c.msg(0, &body, &[("documents", &docs)]).await;
    assert_eq!(r.doc, doc! {"n": 3, "ok": 1.0});
    s.stop().await;
}
