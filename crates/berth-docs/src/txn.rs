//! Multi-document transactions: the reads and writes of several commands
//! (MongoDB's `startTransaction` … `commitTransaction`) in one snapshot
//! transaction of one shard.
//!
//! A [`Txn`] is bound to the shard of the first table it touches; its
//! reads see one point-in-time view of that shard under its own writes
//! (`Router::begin_snapshot`), and its writes (documents, index entries,
//! change records) are buffered and proposed as one conditional Raft
//! command at [`Txn::commit`], conditional on every key it read or wrote
//! being unchanged since the view: of two transactions writing the same
//! document, only the first commits (snapshot isolation). A table in
//! another shard is refused (error 263) rather than committed in two
//! steps.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use berth_meta::map::VolumeRecord;
use berth_meta::{Commit, Tx};
use tokio::sync::{Mutex, OwnedMappedMutexGuard, OwnedMutexGuard};

use crate::error::codes;
use crate::table::{from_meta, TableRef};
use crate::DocError;

/// The most bytes a transaction may write (MongoDB's 16 MiB entry; the
/// whole transaction is one Raft command).
pub const TXN_BYTES_MAX: usize = 16 * 1024 * 1024;

/// One multi-document transaction.
#[derive(Default)]
pub struct Txn {
    slot: Arc<Mutex<Slot>>,
    /// The tables created in it (by path as the commands named them), which
    /// only it sees until it commits; without their transaction.
    created: std::sync::Mutex<Vec<(String, TableRef)>>,
}

#[derive(Default)]
pub(crate) struct Slot {
    /// The snapshot transaction, once a table was touched; `None` again
    /// after commit or abort.
    tx: Option<Tx>,
    /// The volume bound (its tables' shard).
    vol: Option<u64>,
    /// Committed or aborted: nothing more runs in it.
    ended: bool,
}

impl std::fmt::Debug for Txn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Txn")
    }
}

impl Txn {
    pub fn new() -> Arc<Txn> {
        Arc::new(Txn::default())
    }

    /// The transaction's buffered work on table `t`'s shard, starting it
    /// (the snapshot) on the first call.
    pub(crate) async fn join(
        &self,
        router: &Arc<berth_meta::Router>,
        t: &TableRef,
    ) -> Result<OwnedMappedMutexGuard<Slot, Tx>, DocError> {
        self.join_volume(router, &t.vol, &t.entry.path).await
    }

    /// [`Txn::join`] for what is at `path` in volume `vol`.
    pub(crate) async fn join_volume(
        &self,
        router: &Arc<berth_meta::Router>,
        vol: &VolumeRecord,
        path: &str,
    ) -> Result<OwnedMappedMutexGuard<Slot, Tx>, DocError> {
        let Ok(mut slot) = self.slot.clone().try_lock_owned() else {
            return Err(DocError::new(
                codes::CONFLICTING_OPERATION,
                "another operation of this transaction is running",
            ));
        };
        if slot.ended {
            return Err(no_such_transaction());
        }
        match slot.vol {
            Some(v) if v != vol.id => {
                return Err(DocError::new(
                    codes::OPERATION_NOT_SUPPORTED_IN_TRANSACTION,
                    format!(
                        "a transaction reaches the tables of one volume; {path} is in another (volume {})",
                        vol.path
                    ),
                ))
            }
            Some(_) => {}
            None => {
                let tx = router
                    .begin_snapshot(vol.shard_id)
                    .await
                    .map_err(from_meta)?;
                slot.tx = Some(tx);
                slot.vol = Some(vol.id);
            }
        }
        OwnedMutexGuard::try_map(slot, |s| s.tx.as_mut()).map_err(|_| no_such_transaction())
    }

    /// The table the transaction created at `path`, if it did.
    pub(crate) fn created(&self, path: &str) -> Option<TableRef> {
        let created = self.created.lock().unwrap_or_else(|e| e.into_inner());
        created
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, t)| t.clone())
    }

    /// Remembers that the transaction created table `t` at `path`.
    pub(crate) fn add_created(&self, path: &str, mut t: TableRef) {
        t.txn = None;
        let mut created = self.created.lock().unwrap_or_else(|e| e.into_inner());
        created.push((path.to_string(), t));
    }

    /// Commits everything the transaction wrote, atomically; nothing when
    /// a key it read or wrote changed since its snapshot (WriteConflict,
    /// 112: the whole transaction may be run again). Committing a
    /// transaction that touched nothing succeeds.
    pub async fn commit(&self) -> Result<(), DocError> {
        let mut slot = self.slot.lock().await;
        if slot.ended {
            return Err(no_such_transaction());
        }
        slot.ended = true;
        let Some(tx) = slot.tx.take() else {
            return Ok(());
        };
        if tx.write_bytes() > TXN_BYTES_MAX {
            return Err(DocError::new(
                codes::TRANSACTION_TOO_LARGE,
                format!("a transaction writes at most {TXN_BYTES_MAX} bytes"),
            ));
        }
        match tx.commit().await.map_err(from_meta)? {
            Commit::Done(_) => Ok(()),
            Commit::Conflict => Err(DocError::new(
                codes::WRITE_CONFLICT,
                "a document this transaction read or wrote was changed by another write since it started; run the transaction again",
            )),
        }
    }

    /// Drops everything the transaction wrote.
    pub async fn abort(&self) {
        let mut slot = self.slot.lock().await;
        slot.ended = true;
        slot.tx = None;
    }
}

fn no_such_transaction() -> DocError {
    DocError::new(
        codes::NO_SUCH_TRANSACTION,
        "the transaction was committed or aborted",
    )
}

/// A table operation's transaction: its own (committed by the operation)
/// or a multi-document transaction's (buffered until that commits).
pub(crate) enum Work {
    Own(Tx),
    Joined(OwnedMappedMutexGuard<Slot, Tx>),
}

impl Work {
    /// Commits an operation's own transaction; in a multi-document
    /// transaction, keeps the writes for its commit.
    pub(crate) async fn commit(self) -> Result<Commit, DocError> {
        match self {
            Work::Own(tx) => tx.commit().await.map_err(from_meta),
            Work::Joined(tx) => {
                if tx.write_bytes() > TXN_BYTES_MAX {
                    return Err(DocError::new(
                        codes::TRANSACTION_TOO_LARGE,
                        format!("a transaction writes at most {TXN_BYTES_MAX} bytes"),
                    ));
                }
                Ok(Commit::Done(0))
            }
        }
    }
}

impl Deref for Work {
    type Target = Tx;

    fn deref(&self) -> &Tx {
        match self {
            Work::Own(tx) => tx,
            Work::Joined(tx) => tx,
        }
    }
}

impl DerefMut for Work {
    fn deref_mut(&mut self) -> &mut Tx {
        match self {
            Work::Own(tx) => tx,
            Work::Joined(tx) => tx,
        }
    }
}
