//! The gateway's multi-document transactions: each session's transaction
//! by `lsid` and `txnNumber`, as MongoDB keeps them, over
//! `berth_docs::txn::Txn`.
//!
//! A command with `autocommit: false` runs with its transaction as the
//! task's current one ([`CURRENT`]); the backend binds every table it opens
//! meanwhile to it, so the command's reads and writes (a `$lookup`'s
//! included) belong to the transaction. A transaction is aborted past
//! [`LIFETIME`] (MongoDB's `transactionLifetimeLimitSeconds`), and a
//! session's record is forgotten after [`SESSION_IDLE`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_docs::txn::Txn;
use berth_mongo::backend::TxnId;
use berth_mongo::codes::{self, MongoError};
use berth_security::principal::Principal;
use parking_lot::Mutex;

/// How long a transaction may stay open.
pub const LIFETIME: Duration = Duration::from_secs(60);
/// How long a session's last transaction is remembered (a driver retries
/// a commit within it).
const SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
/// Sessions remembered per node.
const SESSIONS_MAX: usize = 100_000;

tokio::task_local! {
    /// The transaction of the command running on this task.
    static CURRENT: Arc<Txn>;
}

/// The transaction of the command running on this task, if any.
pub fn current() -> Option<Arc<Txn>> {
    CURRENT.try_with(|t| t.clone()).ok()
}

/// Runs `f` with `txn` as the task's current transaction.
pub async fn scope<F: std::future::Future>(txn: Arc<Txn>, f: F) -> F::Output {
    CURRENT.scope(txn, f).await
}

enum State {
    Active(Arc<Txn>),
    Committed,
    Aborted,
}

struct Session {
    owner: String,
    number: i64,
    state: State,
    started: Instant,
    used: Instant,
}

#[derive(Default)]
pub struct Transactions {
    sessions: Mutex<HashMap<Vec<u8>, Session>>,
}

impl Transactions {
    /// The transaction `id` names, started when `id.start`.
    pub async fn enter(&self, p: &Principal, id: &TxnId) -> Result<Arc<Txn>, MongoError> {
        let (found, expired) = {
            let mut sessions = self.sessions.lock();
            let expired = sweep(&mut sessions);
            (self.enter_locked(&mut sessions, p, id), expired)
        };
        for t in expired {
            t.abort().await;
        }
        let (txn, replaced) = found?;
        if let Some(old) = replaced {
            old.abort().await;
        }
        Ok(txn)
    }

    /// Returns the transaction, and the one a new start replaced.
    #[allow(clippy::type_complexity)]
    fn enter_locked(
        &self,
        sessions: &mut HashMap<Vec<u8>, Session>,
        p: &Principal,
        id: &TxnId,
    ) -> Result<(Arc<Txn>, Option<Arc<Txn>>), MongoError> {
        let now = Instant::now();
        if let Some(s) = sessions.get(&id.lsid) {
            if s.owner != p.name {
                return Err(other_users_session());
            }
        }
        if id.start {
            let mut replaced = None;
            if let Some(s) = sessions.get_mut(&id.lsid) {
                if id.txn_number < s.number {
                    return Err(MongoError::new(
                        codes::TRANSACTION_TOO_OLD,
                        format!(
                            "txnNumber {} is less than the last txnNumber {} of this session",
                            id.txn_number, s.number
                        ),
                    ));
                }
                if id.txn_number == s.number {
                    return Err(MongoError::new(
                        codes::CONFLICTING_OPERATION_IN_PROGRESS,
                        format!(
                            "transaction {} of this session was already started",
                            id.txn_number
                        ),
                    ));
                }
                if let State::Active(t) = std::mem::replace(&mut s.state, State::Aborted) {
                    replaced = Some(t);
                }
            } else if sessions.len() >= SESSIONS_MAX {
                return Err(MongoError::new(
                    codes::OPERATION_FAILED,
                    "too many sessions with transactions on this node; retry later",
                ));
            }
            let txn = Txn::new();
            sessions.insert(
                id.lsid.clone(),
                Session {
                    owner: p.name.clone(),
                    number: id.txn_number,
                    state: State::Active(txn.clone()),
                    started: now,
                    used: now,
                },
            );
            return Ok((txn, replaced));
        }
        match sessions.get_mut(&id.lsid) {
            Some(s) if s.number == id.txn_number => {
                s.used = now;
                match &s.state {
                    State::Active(t) => Ok((t.clone(), None)),
                    State::Committed => Err(MongoError::new(
                        codes::TRANSACTION_COMMITTED,
                        format!("transaction {} has been committed", id.txn_number),
                    )),
                    State::Aborted => Err(no_such(id)),
                }
            }
            _ => Err(no_such(id)),
        }
    }

    /// `commitTransaction`: commits, or answers again a commit that
    /// succeeded (drivers retry it).
    pub async fn commit(&self, p: &Principal, id: &TxnId) -> Result<(), MongoError> {
        let txn = {
            let mut sessions = self.sessions.lock();
            match sessions.get_mut(&id.lsid) {
                Some(s) if s.owner != p.name => return Err(other_users_session()),
                Some(s) if s.number == id.txn_number => {
                    s.used = Instant::now();
                    match &s.state {
                        State::Active(t) => t.clone(),
                        State::Committed => return Ok(()),
                        State::Aborted => return Err(no_such(id)),
                    }
                }
                _ => return Err(no_such(id)),
            }
        };
        let outcome = txn.commit().await;
        let mut sessions = self.sessions.lock();
        if let Some(s) = sessions.get_mut(&id.lsid) {
            if s.number == id.txn_number {
                s.state = match outcome {
                    Ok(()) => State::Committed,
                    Err(_) => State::Aborted,
                };
            }
        }
        outcome.map_err(super::mongo)
    }

    /// `abortTransaction`, and the abort after a failed command.
    pub async fn abort(&self, p: &Principal, id: &TxnId) -> Result<(), MongoError> {
        let txn = {
            let mut sessions = self.sessions.lock();
            match sessions.get_mut(&id.lsid) {
                Some(s) if s.owner != p.name => return Err(other_users_session()),
                Some(s) if s.number == id.txn_number => {
                    match std::mem::replace(&mut s.state, State::Aborted) {
                        State::Active(t) => t,
                        State::Committed => {
                            s.state = State::Committed;
                            return Err(MongoError::new(
                                codes::TRANSACTION_COMMITTED,
                                format!(
                                    "transaction {} has been committed: it cannot be aborted",
                                    id.txn_number
                                ),
                            ));
                        }
                        State::Aborted => return Err(no_such(id)),
                    }
                }
                _ => return Err(no_such(id)),
            }
        };
        txn.abort().await;
        Ok(())
    }
}

/// Forgets idle sessions and aborts transactions open past [`LIFETIME`]:
/// returns those to abort.
fn sweep(sessions: &mut HashMap<Vec<u8>, Session>) -> Vec<Arc<Txn>> {
    let now = Instant::now();
    let mut expired = Vec::new();
    sessions.retain(|_, s| {
        if now.duration_since(s.started) > LIFETIME {
            if let State::Active(t) = std::mem::replace(&mut s.state, State::Aborted) {
                expired.push(t);
            }
        }
        now.duration_since(s.used) < SESSION_IDLE
    });
    expired
}

fn no_such(id: &TxnId) -> MongoError {
    MongoError::new(
        codes::NO_SUCH_TRANSACTION,
        format!(
            "transaction {} of this session is not in progress (never started, aborted, or past its {} s lifetime)",
            id.txn_number,
            LIFETIME.as_secs()
        ),
    )
}

fn other_users_session() -> MongoError {
    MongoError::new(codes::UNAUTHORIZED, "this session belongs to another user")
}
