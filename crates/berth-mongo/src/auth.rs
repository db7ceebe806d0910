//! Authentication: MongoDB's SASL conversation (`saslStart`, then
//! `saslContinue` until `done`) for SCRAM-SHA-256 and PLAIN, also started
//! speculatively inside `hello` (`speculativeAuthenticate`).
//!
//! - SCRAM-SHA-256 (RFC 7677) runs `berth_security::scram`, the exchange
//!   every gateway shares, against [`Backend::scram_credential`]. An
//!   unknown user gets a fake credential and fails at the proof exactly as
//!   a wrong password does. MongoDB's conversation: saslStart carries the
//!   client-first and gets the server-first; saslContinue carries the
//!   client-final and gets the server-final, with `done: true` when the
//!   client asked for `options: {skipEmptyExchange: true}`, else one more
//!   empty round closes the conversation.
//! - PLAIN (RFC 4616): one saslStart, `authzid NUL user NUL password`; the
//!   password may be a Berth ticket, [`Backend::authenticate_plain`]
//!   decides.
//!
//! A failure answers AuthenticationFailed (18) with MongoDB's message,
//! never the reason (which is logged): the client cannot tell an unknown
//! user from a wrong password. After [`FAILURES_MAX`] failures the
//! connection is closed.

use berth_security::scram;
use bson::spec::BinarySubtype;
use bson::{doc, Binary, Bson, Document};

use crate::backend::Backend;
use crate::codes::{self, MongoError};

/// Mechanisms offered (SCRAM-SHA-1 is not: it stores an MD5 digest of the
/// password, which Berth does not keep).
pub const MECHANISMS: &[&str] = &["SCRAM-SHA-256", "PLAIN"];
/// The one conversation a connection has at a time.
pub const CONVERSATION_ID: i32 = 1;
/// Bound on a SASL payload (tickets are longer than RFC 4616's 255 bytes).
pub const PAYLOAD_BYTES_MAX: usize = 16 * 1024;
/// Failed authentications after which a connection is closed.
pub const FAILURES_MAX: u32 = 5;

/// Who a connection authenticated as, as `connectionStatus` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub db: String,
}

/// Where a connection is in its authentication.
#[derive(Debug, Clone)]
pub enum State<P> {
    None,
    /// SCRAM server-first sent: the next message is the client-final.
    ScramFirst {
        exchange: Box<scram::ServerExchange>,
        db: String,
        skip_empty: bool,
    },
    /// SCRAM server-final sent: the client closes with an empty message.
    ScramFinal {
        principal: P,
        user: User,
    },
    Authenticated {
        principal: P,
        user: User,
    },
}

impl<P> State<P> {
    pub fn principal(&self) -> Option<(&P, &User)> {
        match self {
            State::Authenticated { principal, user } => Some((principal, user)),
            _ => None,
        }
    }
}

/// A failed step: what the client is told, and why (logged only).
#[derive(Debug)]
pub struct Failure {
    pub error: MongoError,
    pub reason: String,
}

impl Failure {
    /// AuthenticationFailed, MongoDB's words.
    fn auth(reason: impl Into<String>) -> Failure {
        Failure {
            error: MongoError::new(codes::AUTHENTICATION_FAILED, "Authentication failed."),
            reason: reason.into(),
        }
    }

    fn other(error: MongoError) -> Failure {
        Failure {
            reason: error.message.clone(),
            error,
        }
    }

    /// Whether this counts towards [`FAILURES_MAX`].
    pub fn is_auth_failure(&self) -> bool {
        self.error.code == codes::AUTHENTICATION_FAILED
    }
}

fn payload(cmd: &Document) -> Result<Vec<u8>, Failure> {
    let bytes = match cmd.get("payload") {
        Some(Bson::Binary(b)) => b.bytes.clone(),
        // Some clients (libmongoc's PLAIN, old shells) send the payload as
        // a string holding its base64, as MongoDB reads it.
        Some(Bson::String(s)) => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(s.trim())
                .map_err(|_| Failure::auth("a string payload must be base64"))?
        }
        Some(_) => {
            return Err(Failure::other(MongoError::type_mismatch(
                "payload must be BinData or a string",
            )))
        }
        None => return Err(Failure::other(MongoError::bad_value("no payload"))),
    };
    if bytes.len() > PAYLOAD_BYTES_MAX {
        return Err(Failure::auth("payload too long"));
    }
    Ok(bytes)
}

fn answer(done: bool, payload: Vec<u8>) -> Document {
    doc! {
        "conversationId": CONVERSATION_ID,
        "done": done,
        "payload": Binary { subtype: BinarySubtype::Generic, bytes: payload },
    }
}

/// `saslStart` (or the saslStart inside `speculativeAuthenticate`) against
/// database `db`; returns the answer without `ok`.
pub async fn start<B: Backend>(
    backend: &B,
    state: &mut State<B::Principal>,
    cmd: &Document,
    db: &str,
) -> Result<Document, Failure> {
    if let State::Authenticated { user, .. } = state {
        return Err(Failure::other(MongoError::new(
            codes::ILLEGAL_OPERATION,
            format!(
                "each connection may authenticate once; already authenticated as {}@{}",
                user.name, user.db
            ),
        )));
    }
    // A new start abandons any conversation in progress.
    *state = State::None;
    let mechanism = match cmd.get("mechanism") {
        Some(Bson::String(m)) => m.as_str(),
        _ => {
            return Err(Failure::other(MongoError::bad_value(
                "saslStart needs a mechanism",
            )))
        }
    };
    let payload = payload(cmd)?;
    match mechanism {
        "SCRAM-SHA-256" => {
            let m = scram::Mechanism::Sha256;
            let first = scram::parse_client_first(&payload)
                .map_err(|e| Failure::auth(format!("SCRAM-SHA-256: {e}")))?;
            let credential = match backend.scram_credential(&first.user).await {
                Some(c) => c,
                None => scram::fake_credential(&first.user, m, fake_secret()),
            };
            let (exchange, server_first) =
                scram::ServerExchange::start(m, first, credential, &scram::nonce());
            let skip_empty = cmd
                .get_document("options")
                .ok()
                .and_then(|o| o.get("skipEmptyExchange"))
                .is_some_and(truthy);
            *state = State::ScramFirst {
                exchange: Box::new(exchange),
                db: db.to_string(),
                skip_empty,
            };
            Ok(answer(false, server_first.into_bytes()))
        }
        "PLAIN" => {
            let (user, password) =
                parse_plain(&payload).map_err(|e| Failure::auth(format!("PLAIN: {e}")))?;
            let principal = backend
                .authenticate_plain(user, password)
                .await
                .map_err(|e| Failure::auth(format!("PLAIN for user {user:?}: {e}")))?;
            *state = State::Authenticated {
                principal,
                user: User {
                    name: user.to_string(),
                    db: db.to_string(),
                },
            };
            Ok(answer(true, Vec::new()))
        }
        other => Err(Failure::other(MongoError::new(
            codes::MECHANISM_UNAVAILABLE,
            format!(
                "Received authentication for mechanism {other} which is not enabled \
                 (offered: {})",
                MECHANISMS.join(", ")
            ),
        ))),
    }
}

/// `saslContinue`; returns the answer without `ok`.
pub async fn continue_<B: Backend>(
    backend: &B,
    state: &mut State<B::Principal>,
    cmd: &Document,
) -> Result<Document, Failure> {
    let id = cmd.get("conversationId").and_then(crate::commands::as_i64);
    if id != Some(i64::from(CONVERSATION_ID)) {
        return Err(Failure::other(MongoError::new(
            codes::PROTOCOL_ERROR,
            "sasl: mismatched conversation id",
        )));
    }
    let payload = payload(cmd)?;
    match std::mem::replace(state, State::None) {
        State::ScramFirst {
            exchange,
            db,
            skip_empty,
        } => {
            let user = exchange.user().to_string();
            let server_final = exchange
                .finish(&payload)
                .map_err(|e| Failure::auth(format!("SCRAM-SHA-256 for user {user:?}: {e}")))?;
            let principal = backend
                .scram_principal(&user)
                .await
                .map_err(|e| Failure::auth(format!("SCRAM-SHA-256 for user {user:?}: {e}")))?;
            let user = User { name: user, db };
            *state = if skip_empty {
                State::Authenticated { principal, user }
            } else {
                State::ScramFinal { principal, user }
            };
            Ok(answer(skip_empty, server_final.into_bytes()))
        }
        State::ScramFinal { principal, user } => {
            if !payload.is_empty() {
                return Err(Failure::auth("SCRAM: a last message that is not empty"));
            }
            *state = State::Authenticated { principal, user };
            Ok(answer(true, Vec::new()))
        }
        other => {
            *state = other;
            Err(Failure::other(MongoError::new(
                codes::PROTOCOL_ERROR,
                "No SASL session state found",
            )))
        }
    }
}

/// MongoDB's loose truth: booleans, and numbers other than 0.
pub fn truthy(v: &Bson) -> bool {
    match v {
        Bson::Boolean(b) => *b,
        Bson::Int32(i) => *i != 0,
        Bson::Int64(i) => *i != 0,
        Bson::Double(d) => *d != 0.0,
        Bson::Null | Bson::Undefined => false,
        _ => true,
    }
}

/// The key unknown users' fake SCRAM credentials derive from: random per
/// process, so they cannot be told from real ones by recomputing them.
fn fake_secret() -> &'static [u8; 32] {
    static SECRET: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    SECRET.get_or_init(rand::random)
}

/// User and password of a PLAIN message. An authorization id other than the
/// user is refused: one may not act as someone else by asking.
pub fn parse_plain(msg: &[u8]) -> Result<(&str, &str), &'static str> {
    let text = std::str::from_utf8(msg).map_err(|_| "message is not UTF-8")?;
    let mut parts = text.split('\0');
    let (Some(authzid), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("message is not authzid\\0user\\0password");
    };
    if user.is_empty() || password.is_empty() {
        return Err("empty user or password");
    }
    if !authzid.is_empty() && authzid != user {
        return Err("authorization id differs from the user");
    }
    Ok((user, password))
}

/// What a SCRAM-SHA-256 client sends and checks, for tests (here and in
/// the integration tests, which build it from `berth_security::scram`'s
/// client helpers the same way).
#[cfg(test)]
pub(crate) mod client {
    use super::*;
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;

    pub struct ScramClient {
        pub password: String,
        pub first_bare: String,
        pub nonce: String,
        pub server_first: String,
        pub server_signature: Vec<u8>,
    }

    impl ScramClient {
        pub fn new(user: &str, password: &str) -> ScramClient {
            let nonce = scram::nonce();
            ScramClient {
                password: password.into(),
                first_bare: format!("n={user},r={nonce}"),
                nonce,
                server_first: String::new(),
                server_signature: Vec::new(),
            }
        }

        pub fn first(&self) -> Vec<u8> {
            format!("n,,{}", self.first_bare).into_bytes()
        }

        /// The client-final for the server-first.
        pub fn last(&mut self, server_first: &[u8]) -> Vec<u8> {
            let m = scram::Mechanism::Sha256;
            let sf = std::str::from_utf8(server_first).unwrap().to_string();
            let mut r = None;
            let mut s = None;
            let mut i = None;
            for attr in sf.split(',') {
                match attr.split_at(2) {
                    ("r=", v) => r = Some(v.to_string()),
                    ("s=", v) => s = Some(STANDARD.decode(v).unwrap()),
                    ("i=", v) => i = Some(v.parse::<u32>().unwrap()),
                    _ => {}
                }
            }
            let (r, s, i) = (r.unwrap(), s.unwrap(), i.unwrap());
            assert!(r.starts_with(&self.nonce));
            let salted = m.salted_password(self.password.as_bytes(), &s, i);
            let without_proof = format!("c=biws,r={r}");
            let auth = format!("{},{sf},{without_proof}", self.first_bare);
            let proof = scram::client_proof(m, &salted, auth.as_bytes());
            let server_key = m.hmac(&salted, b"Server Key");
            self.server_signature = scram::server_signature(m, &server_key, auth.as_bytes());
            self.server_first = sf;
            format!("{without_proof},p={}", STANDARD.encode(proof)).into_bytes()
        }

        /// Whether the server-final proves the server knew the credential.
        pub fn verify(&self, server_final: &[u8]) -> bool {
            let expected = format!("v={}", STANDARD.encode(&self.server_signature));
            server_final == expected.as_bytes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::client::ScramClient;
    use super::*;
    use crate::backend::*;
    use std::future::Future;

    /// A backend that knows only authentication: alice, password "secret".
    struct Auth {
        credential: ScramCredential,
    }

    async fn unused<T>() -> Result<T, MongoError> {
        Err(MongoError::internal("not in this test"))
    }

    impl Backend for Auth {
        type Principal = String;
        async fn authenticate_plain(&self, user: &str, password: &str) -> Result<String, String> {
            if password == "secret" || password == "ticket.alice" {
                Ok(user.to_string())
            } else {
                Err("wrong password".into())
            }
        }
        async fn scram_credential(&self, user: &str) -> Option<ScramCredential> {
            (user == "alice").then(|| self.credential.clone())
        }
        async fn scram_principal(&self, user: &str) -> Result<String, String> {
            Ok(format!("principal:{user}"))
        }
        fn insert(
            &self,
            _: &String,
            _: Insert,
        ) -> impl Future<Output = Result<WriteResult, MongoError>> + Send {
            unused()
        }
        fn update(
            &self,
            _: &String,
            _: Update,
        ) -> impl Future<Output = Result<WriteResult, MongoError>> + Send {
            unused()
        }
        fn delete(
            &self,
            _: &String,
            _: Delete,
        ) -> impl Future<Output = Result<WriteResult, MongoError>> + Send {
            unused()
        }
        fn find(
            &self,
            _: &String,
            _: Find,
        ) -> impl Future<Output = Result<CursorBatch, MongoError>> + Send {
            unused()
        }
        fn get_more(
            &self,
            _: &String,
            _: GetMore,
        ) -> impl Future<Output = Result<CursorBatch, MongoError>> + Send {
            unused()
        }
        fn kill_cursors(
            &self,
            _: &String,
            _: KillCursors,
        ) -> impl Future<Output = Result<KilledCursors, MongoError>> + Send {
            unused()
        }
        fn count(
            &self,
            _: &String,
            _: Count,
        ) -> impl Future<Output = Result<u64, MongoError>> + Send {
            unused()
        }
        fn distinct(
            &self,
            _: &String,
            _: Distinct,
        ) -> impl Future<Output = Result<Vec<Bson>, MongoError>> + Send {
            unused()
        }
        fn aggregate(
            &self,
            _: &String,
            _: Aggregate,
        ) -> impl Future<Output = Result<CursorBatch, MongoError>> + Send {
            unused()
        }
        fn find_and_modify(
            &self,
            _: &String,
            _: FindAndModify,
        ) -> impl Future<Output = Result<FindAndModifyResult, MongoError>> + Send {
            unused()
        }
        fn create_collection(
            &self,
            _: &String,
            _: Namespace,
            _: Document,
        ) -> impl Future<Output = Result<(), MongoError>> + Send {
            unused()
        }
        fn drop_collection(
            &self,
            _: &String,
            _: Namespace,
        ) -> impl Future<Output = Result<(), MongoError>> + Send {
            unused()
        }
        fn drop_database(
            &self,
            _: &String,
            _: String,
        ) -> impl Future<Output = Result<(), MongoError>> + Send {
            unused()
        }
        fn list_collections(
            &self,
            _: &String,
            _: ListCollections,
        ) -> impl Future<Output = Result<CursorBatch, MongoError>> + Send {
            unused()
        }
        fn list_databases(
            &self,
            _: &String,
            _: ListDatabases,
        ) -> impl Future<Output = Result<Vec<DatabaseInfo>, MongoError>> + Send {
            unused()
        }
        fn create_indexes(
            &self,
            _: &String,
            _: CreateIndexes,
        ) -> impl Future<Output = Result<IndexesCreated, MongoError>> + Send {
            unused()
        }
        fn list_indexes(
            &self,
            _: &String,
            _: ListIndexes,
        ) -> impl Future<Output = Result<CursorBatch, MongoError>> + Send {
            unused()
        }
        fn drop_indexes(
            &self,
            _: &String,
            _: DropIndexes,
        ) -> impl Future<Output = Result<i64, MongoError>> + Send {
            unused()
        }
        fn rename_collection(
            &self,
            _: &String,
            _: RenameCollection,
        ) -> impl Future<Output = Result<(), MongoError>> + Send {
            unused()
        }
        fn coll_stats(
            &self,
            _: &String,
            _: Namespace,
        ) -> impl Future<Output = Result<CollStats, MongoError>> + Send {
            unused()
        }
        fn db_stats(
            &self,
            _: &String,
            _: String,
        ) -> impl Future<Output = Result<DbStats, MongoError>> + Send {
            unused()
        }
        fn explain(
            &self,
            _: &String,
            _: Explain,
        ) -> impl Future<Output = Result<Document, MongoError>> + Send {
            unused()
        }
    }

    fn backend() -> Auth {
        Auth {
            credential: scram::credential("secret", scram::Mechanism::Sha256).unwrap(),
        }
    }

    fn bin(bytes: Vec<u8>) -> Binary {
        Binary {
            subtype: BinarySubtype::Generic,
            bytes,
        }
    }

    fn payload_of(d: &Document) -> Vec<u8> {
        d.get_binary_generic("payload").unwrap().clone()
    }

    async fn scram(password: &str, skip_empty: bool) -> (State<String>, Result<(), Failure>) {
        let b = backend();
        let mut state = State::None;
        let mut client = ScramClient::new("alice", password);
        let start = doc! {
            "saslStart": 1, "mechanism": "SCRAM-SHA-256", "payload": bin(client.first()),
            "options": {"skipEmptyExchange": skip_empty},
        };
        let first = super::start(&b, &mut state, &start, "admin").await.unwrap();
        assert_eq!(first.get_i32("conversationId").unwrap(), CONVERSATION_ID);
        assert!(!first.get_bool("done").unwrap());
        let last = client.last(&payload_of(&first));
        let cont = doc! {"saslContinue": 1, "conversationId": 1, "payload": bin(last)};
        let second = match continue_(&b, &mut state, &cont).await {
            Ok(d) => d,
            Err(f) => return (state, Err(f)),
        };
        assert!(client.verify(&payload_of(&second)), "server signature");
        assert_eq!(second.get_bool("done").unwrap(), skip_empty);
        if !skip_empty {
            assert!(state.principal().is_none(), "not before the last round");
            let empty = doc! {"saslContinue": 1, "conversationId": 1, "payload": bin(vec![])};
            let third = continue_(&b, &mut state, &empty).await.unwrap();
            assert!(third.get_bool("done").unwrap());
        }
        (state, Ok(()))
    }

    #[tokio::test]
    async fn scram_sha_256_conversation() {
        for skip_empty in [true, false] {
            let (state, r) = scram("secret", skip_empty).await;
            r.unwrap();
            let (p, user) = state.principal().unwrap();
            assert_eq!(p, "principal:alice");
            assert_eq!(
                user,
                &User {
                    name: "alice".into(),
                    db: "admin".into()
                }
            );
        }
    }

    #[tokio::test]
    async fn scram_wrong_password_and_unknown_user_fail_alike() {
        let (state, r) = scram("wrong", true).await;
        let f = r.unwrap_err();
        assert!(f.is_auth_failure());
        assert_eq!(f.error.message, "Authentication failed.");
        assert!(state.principal().is_none());

        let b = backend();
        let mut state = State::None;
        let mut client = ScramClient::new("mallory", "secret");
        let start = doc! {"mechanism": "SCRAM-SHA-256", "payload": bin(client.first())};
        let first = super::start(&b, &mut state, &start, "admin").await.unwrap();
        let cont = doc! {"conversationId": 1, "payload": bin(client.last(&payload_of(&first)))};
        let f = continue_(&b, &mut state, &cont).await.unwrap_err();
        assert!(f.is_auth_failure());
        assert!(f.reason.contains("mallory"), "{}", f.reason);
    }

    #[tokio::test]
    async fn plain_and_other_mechanisms() {
        let b = backend();
        let mut state = State::None;
        let start = doc! {"mechanism": "PLAIN", "payload": bin(b"\0bob\0ticket.alice".to_vec())};
        let d = super::start(&b, &mut state, &start, "$external")
            .await
            .unwrap();
        assert!(d.get_bool("done").unwrap());
        assert_eq!(state.principal().unwrap().0, "bob");
        // Once is enough.
        let again = super::start(&b, &mut state, &start, "$external").await;
        assert_eq!(again.unwrap_err().error.code, codes::ILLEGAL_OPERATION);

        let mut state = State::None;
        let wrong = doc! {"mechanism": "PLAIN", "payload": bin(b"\0bob\0nope".to_vec())};
        let f = super::start(&b, &mut state, &wrong, "$external")
            .await
            .unwrap_err();
        assert!(f.is_auth_failure());
        let sha1 = doc! {"mechanism": "SCRAM-SHA-1", "payload": bin(b"n,,n=a,r=b".to_vec())};
        let f = super::start(&b, &mut state, &sha1, "admin")
            .await
            .unwrap_err();
        assert_eq!(f.error.code, codes::MECHANISM_UNAVAILABLE);
        // saslContinue without a conversation, or with another id.
        let cont = doc! {"conversationId": 1, "payload": bin(vec![])};
        let f = continue_(&b, &mut state, &cont).await.unwrap_err();
        assert_eq!(f.error.code, codes::PROTOCOL_ERROR);
        let cont = doc! {"conversationId": 2, "payload": bin(vec![])};
        let f = continue_(&b, &mut state, &cont).await.unwrap_err();
        assert_eq!(f.error.code, codes::PROTOCOL_ERROR);
    }

    #[test]
    fn plain_messages() {
        assert_eq!(parse_plain(b"\0alice\0pw"), Ok(("alice", "pw")));
        assert_eq!(parse_plain(b"alice\0alice\0pw"), Ok(("alice", "pw")));
        for bad in [
            &b""[..],
            b"alice",
            b"\0alice\0",
            b"\0\0pw",
            b"bob\0alice\0pw",
            b"\0a\0b\0c",
            b"\0al\xffice\0pw",
        ] {
            assert!(parse_plain(bad).is_err(), "{bad:?}");
        }
    }
}
