//! Advisory locks through the mount: fcntl record locks and flock locks
//! become `berth.v1.Locks` calls, so they hold across every client of the
//! cluster (the server keeps them; see `berth_fs::locks`).
//!
//! - *One session per mount*, opened at the first lock and renewed every
//!   third of its lease by a background task; unmount closes it. If the
//!   mount dies, the lease runs out and the server drops its locks.
//! - *Owners*: the kernel's lock owner — a process's file table for POSIX
//!   locks, an open file description for flock — is the owner within the
//!   session. fuser does not pass the kernel's `FUSE_LK_FLOCK` flag on, so
//!   the mount cannot tell a flock from a whole-file record lock: it keeps
//!   flock locks as record locks of their open file description, as Linux
//!   NFS does, and they conflict with fcntl locks on the same file (on a
//!   local Linux file system they would not). The server's `Flock` kind is
//!   there for clients that can tell them apart. Close releases: `flush`
//!   carries the POSIX owner whose locks on the file go, `release` with the
//!   flock flag the flock owner. Open file description locks (F_OFD_SETLK)
//!   reach us as POSIX locks of an owner that no `flush` ever names; the
//!   POSIX owners still holding locks taken through an open file at its
//!   `release` are those, and their locks go then.
//! - *Lost locks are never silent*: when the server no longer knows the
//!   session (it restarted, or the lease ran out while the server was out
//!   of reach), every owner that held locks under it gets EIO for its lock
//!   calls on that file until it closes the file, as Linux NFS clients do;
//!   other owners carry on with a new session.
//! - *Blocking waits* (F_SETLKW, flock without LOCK_NB) run on the tokio
//!   runtime, not on a FUSE thread, as rounds of bounded server-side waits
//!   ([`WAIT_ROUND_MS`]). fuser answers FUSE_INTERRUPT with ENOSYS, so a
//!   signal to the waiting process never reaches us; between rounds the
//!   waiter's pending signals are read from /proc instead, and a pending
//!   signal it neither blocks nor ignores ends the wait with EINTR (the
//!   kernel then restarts the call or delivers the signal, as for a local
//!   lock). The wait itself is unbounded, as POSIX specifies.
//! - `F_GETLK` reports the conflicting lock's pid only when its holder uses
//!   this mount (the same session); a holder on another host reports pid 0.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use berth_api::v1::{
    Empty, HeldLock, LockKind as ApiKind, LockRequest, LockSessionRequest, LockType as ApiType,
    ReleaseLocksRequest,
};
use berth_client::{Client, ClientError};
use fuser::Errno;
use parking_lot::Mutex;

use crate::errors::call;

/// Longest one waiting lock call asks the server to wait: short, so that a
/// signal to the waiting process is noticed soon.
pub const WAIT_ROUND_MS: u32 = 1_000;
/// Fresh sessions tried for one lock call whose session the server forgot.
const STALE_RETRIES_MAX: usize = 2;
/// Longest wait for `CloseSession` at unmount.
pub const CLOSE_WAIT_MS: u64 = 3_000;
/// The largest offset in kernel lock ranges (`OFFSET_MAX`): "to the end of
/// file".
pub const OFFSET_MAX: u64 = i64::MAX as u64;

/// The lock kinds the mount takes: record locks only (flock arrives as
/// one, see the module docs); the API also has `Flock`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Posix,
}

impl Kind {
    fn api(self) -> i32 {
        match self {
            Kind::Posix => ApiKind::Posix as i32,
        }
    }
}

/// What a lock request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    Read,
    Write,
    Unlock,
}

impl Want {
    /// From the kernel's `F_RDLCK`/`F_WRLCK`/`F_UNLCK`.
    pub fn from_kernel(typ: i32) -> Result<Want, Errno> {
        match typ {
            libc::F_RDLCK => Ok(Want::Read),
            libc::F_WRLCK => Ok(Want::Write),
            libc::F_UNLCK => Ok(Want::Unlock),
            _ => Err(Errno::EINVAL),
        }
    }

    fn api(self) -> i32 {
        match self {
            Want::Read => ApiType::Read as i32,
            Want::Write => ApiType::Write as i32,
            Want::Unlock => ApiType::Unlock as i32,
        }
    }
}

/// A lock as `getlk` answers the kernel: inclusive range, type, pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelLock {
    pub start: u64,
    pub end: u64,
    pub typ: i32,
    pub pid: u32,
}

/// A kernel range (both ends inclusive, `OFFSET_MAX` = to the end of file)
/// as the API's start and length (0 = to the end of file).
pub fn api_range(start: u64, end: u64) -> Result<(u64, u64), Errno> {
    if end < start {
        return Err(Errno::EINVAL);
    }
    if end >= OFFSET_MAX {
        return Ok((start, 0));
    }
    Ok((start, end - start + 1))
}

/// A held lock from the API as the kernel wants it (ranges end at
/// `OFFSET_MAX` at most, or the kernel rejects the answer).
pub fn kernel_lock(h: &HeldLock) -> KernelLock {
    let start = h.start.min(OFFSET_MAX);
    let end = match h.length {
        0 => OFFSET_MAX,
        n => start.saturating_add(n - 1).min(OFFSET_MAX),
    };
    let typ = match ApiType::try_from(h.r#type) {
        Ok(ApiType::Read) => libc::F_RDLCK,
        _ => libc::F_WRLCK,
    };
    KernelLock {
        start,
        end,
        typ,
        pid: h.pid,
    }
}

/// (FUSE inode, owner, kind): the unit the mount tracks.
type Key = (u64, u64, Kind);

struct Session {
    id: u64,
    renewer: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct State {
    session: Option<Session>,
    /// Owners that may hold locks on a file under the current session
    /// (cleared when they close it), so closing a file that never saw a
    /// lock costs no call.
    held: HashSet<Key>,
    /// Owners whose locks on a file were lost with a session.
    lost: HashSet<Key>,
    /// Per open file (FUSE file handle): its inode and the POSIX owners
    /// that took locks through it and have not closed the file since.
    through: HashMap<u64, (u64, HashSet<u64>)>,
    /// Unmounting: no new session.
    closed: bool,
}

/// The lock state of one mount.
pub struct LockClient {
    client: Client,
    state: Mutex<State>,
    /// Serialises opening the session.
    opening: tokio::sync::Mutex<()>,
}

impl LockClient {
    pub fn new(client: Client) -> Arc<LockClient> {
        Arc::new(LockClient {
            client,
            state: Mutex::new(State::default()),
            opening: tokio::sync::Mutex::new(()),
        })
    }

    fn current(&self) -> Option<u64> {
        self.state.lock().session.as_ref().map(|s| s.id)
    }

    /// The mount's session, opened on first use.
    async fn session(self: &Arc<Self>) -> Result<u64, Errno> {
        if let Some(id) = self.current() {
            return Ok(id);
        }
        let _opening = self.opening.lock().await;
        if let Some(id) = self.current() {
            return Ok(id);
        }
        if self.state.lock().closed {
            return Err(Errno::EIO);
        }
        let s = call("open lock session", "/", || {
            let mut c = self.client.locks();
            async move { c.open_session(Empty {}).await }
        })
        .await?;
        let renewer = tokio::spawn(renew(Arc::downgrade(self), s.session, s.lease_ms));
        tracing::debug!(
            session = %format!("{:x}", s.session),
            lease_ms = s.lease_ms,
            "lock session opened"
        );
        let mut st = self.state.lock();
        if st.closed {
            renewer.abort();
            return Err(Errno::EIO);
        }
        st.session = Some(Session {
            id: s.session,
            renewer,
        });
        Ok(s.session)
    }

    /// The server no longer knows session `id`: the locks held under it are
    /// gone, and their owners must hear it.
    fn lose(&self, id: u64) {
        let mut st = self.state.lock();
        if st.session.as_ref().map(|s| s.id) != Some(id) {
            return; // already replaced
        }
        if let Some(s) = st.session.take() {
            s.renewer.abort();
        }
        let held: Vec<Key> = st.held.drain().collect();
        if !held.is_empty() {
            tracing::warn!(
                session = %format!("{id:x}"),
                owners = held.len(),
                "the server lost this mount's lock session (restart or expired lease): \
                 locks held through it are gone; their lock calls fail with EIO until the \
                 files are closed"
            );
        }
        st.lost.extend(held);
    }

    /// Takes, changes or releases a lock (setlk). `waiter` is the thread
    /// that asked (for its pending signals while `wait`ing).
    #[allow(clippy::too_many_arguments)]
    pub async fn set(
        self: &Arc<Self>,
        (ino, fh): (u64, u64),
        handle: &[u8],
        owner: u64,
        kind: Kind,
        want: Want,
        (start, end): (u64, u64),
        pid: u32,
        wait: bool,
        waiter: u32,
    ) -> Result<(), Errno> {
        let key = (ino, owner, kind);
        {
            let st = self.state.lock();
            if st.lost.contains(&key) {
                return match want {
                    Want::Unlock => Ok(()),
                    _ => Err(Errno::EIO),
                };
            }
            if want == Want::Unlock && !st.held.contains(&key) {
                return Ok(()); // nothing held: nothing to release
            }
        }
        let (start, length) = match kind {
            Kind::Posix => api_range(start, end)?,
        };
        let wait = wait && want != Want::Unlock;
        let mut stale = 0;
        loop {
            let session = self.session().await?;
            let req = LockRequest {
                session,
                handle: handle.to_vec(),
                owner,
                kind: kind.api(),
                r#type: want.api(),
                start,
                length,
                pid,
                wait,
                wait_ms: if wait { WAIT_ROUND_MS } else { 0 },
            };
            let r = call("setlk", "", || {
                let mut c = self.client.locks();
                let req = req.clone();
                async move { c.set_lock(req).await }
            })
            .await;
            match r {
                Ok(resp) if resp.granted => {
                    if want != Want::Unlock {
                        let mut st = self.state.lock();
                        st.held.insert(key);
                        if kind == Kind::Posix {
                            let (_, owners) = st
                                .through
                                .entry(fh)
                                .or_insert_with(|| (ino, HashSet::new()));
                            owners.insert(owner);
                        }
                    }
                    return Ok(());
                }
                // EWOULDBLOCK for flock is the same number.
                Ok(_) if !wait => return Err(Errno::EAGAIN),
                Ok(_) => {
                    if interrupted(waiter) {
                        return Err(Errno::EINTR);
                    }
                }
                Err(e) if e == Errno::ESTALE => {
                    self.lose(session);
                    if self.state.lock().lost.contains(&key) {
                        return match want {
                            Want::Unlock => Ok(()),
                            _ => Err(Errno::EIO),
                        };
                    }
                    stale += 1;
                    if stale > STALE_RETRIES_MAX {
                        return Err(Errno::EIO);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The lock that keeps `owner` from taking `want` over the range now
    /// (getlk); `None` when nothing does.
    pub async fn test(
        self: &Arc<Self>,
        ino: u64,
        handle: &[u8],
        owner: u64,
        want: Want,
        (start, end): (u64, u64),
    ) -> Result<Option<KernelLock>, Errno> {
        if self.state.lock().lost.contains(&(ino, owner, Kind::Posix)) {
            return Err(Errno::EIO);
        }
        if want == Want::Unlock {
            return Err(Errno::EINVAL);
        }
        let (start, length) = api_range(start, end)?;
        // Without a session the server counts every lock as another's,
        // which is right: this mount holds none.
        let mut session = self.current().unwrap_or(0);
        for _ in 0..=STALE_RETRIES_MAX {
            let req = LockRequest {
                session,
                handle: handle.to_vec(),
                owner,
                kind: Kind::Posix.api(),
                r#type: want.api(),
                start,
                length,
                ..Default::default()
            };
            let r = call("getlk", "", || {
                let mut c = self.client.locks();
                let req = req.clone();
                async move { c.test_lock(req).await }
            })
            .await;
            match r {
                Ok(resp) => {
                    return Ok(resp
                        .conflict
                        .filter(|_| !resp.granted)
                        .map(|h| kernel_lock(&h)))
                }
                Err(e) if e == Errno::ESTALE => {
                    self.lose(session);
                    if self.state.lock().lost.contains(&(ino, owner, Kind::Posix)) {
                        return Err(Errno::EIO);
                    }
                    session = 0;
                }
                Err(e) => return Err(e),
            }
        }
        Err(Errno::EIO)
    }

    /// Releases every lock of `kind` that `owner` holds on the file (close:
    /// `flush` for POSIX locks, `release` for flock).
    pub async fn release(
        &self,
        ino: u64,
        handle: &[u8],
        owner: u64,
        kind: Kind,
    ) -> Result<(), Errno> {
        let r = self.release_held(ino, handle, owner, kind).await;
        if r.is_ok() && kind == Kind::Posix {
            // The owner closed the file: none of its locks is an OFD lock.
            for (i, owners) in self.state.lock().through.values_mut() {
                if *i == ino {
                    owners.remove(&owner);
                }
            }
        }
        r
    }

    /// The last close of open file `fh` (release): the POSIX owners still
    /// holding locks taken through it never closed the file, so they are
    /// the open file description's own (F_OFD_*) locks, which end now.
    pub async fn file_closed(&self, fh: u64, handle: &[u8]) -> Result<(), Errno> {
        let Some((ino, owners)) = self.state.lock().through.remove(&fh) else {
            return Ok(());
        };
        let mut r = Ok(());
        for owner in owners {
            if let Err(e) = self.release_held(ino, handle, owner, Kind::Posix).await {
                r = Err(e);
            }
        }
        r
    }

    async fn release_held(
        &self,
        ino: u64,
        handle: &[u8],
        owner: u64,
        kind: Kind,
    ) -> Result<(), Errno> {
        let key = (ino, owner, kind);
        let session = {
            let mut st = self.state.lock();
            if st.lost.remove(&key) || !st.held.contains(&key) {
                return Ok(());
            }
            match st.session.as_ref().map(|s| s.id) {
                Some(id) => id,
                None => {
                    st.held.remove(&key);
                    return Ok(());
                }
            }
        };
        let r = call("release locks", "", || {
            let mut c = self.client.locks();
            let req = ReleaseLocksRequest {
                session,
                handle: handle.to_vec(),
                owner,
                kind: kind.api(),
            };
            async move { c.release_locks(req).await }
        })
        .await;
        match r {
            Ok(_) => {
                self.state.lock().held.remove(&key);
                Ok(())
            }
            Err(e) if e == Errno::ESTALE => {
                // Gone with the session anyway; the file is being closed.
                self.lose(session);
                self.state.lock().lost.remove(&key);
                Ok(())
            }
            // Still held on the server (released with the session at the
            // latest); a later close tries again.
            Err(e) => Err(e),
        }
    }

    /// Unmount: releases every lock of the mount and ends its session.
    pub async fn close(&self) {
        let session = {
            let mut st = self.state.lock();
            st.closed = true;
            st.held.clear();
            st.lost.clear();
            st.through.clear();
            st.session.take()
        };
        let Some(s) = session else {
            return;
        };
        s.renewer.abort();
        let mut c = self.client.locks();
        let req = LockSessionRequest { session: s.id };
        match tokio::time::timeout(Duration::from_millis(CLOSE_WAIT_MS), c.close_session(req)).await
        {
            Ok(Ok(_)) => tracing::debug!(session = %format!("{:x}", s.id), "lock session closed"),
            Ok(Err(status)) => tracing::warn!(
                "closing the lock session: {}; its locks go when its lease runs out",
                ClientError::from_status(status)
            ),
            Err(_) => tracing::warn!(
                "closing the lock session: no answer in {CLOSE_WAIT_MS} ms; its locks go \
                 when its lease runs out"
            ),
        }
    }
}

/// Renews session `id` every third of its lease until the mount goes, the
/// session is replaced, or the server says it lost it.
async fn renew(me: Weak<LockClient>, id: u64, lease_ms: u64) {
    let every = Duration::from_millis((lease_ms / 3).max(50));
    loop {
        tokio::time::sleep(every).await;
        let Some(lc) = me.upgrade() else {
            return;
        };
        if lc.current() != Some(id) {
            return;
        }
        let mut c = lc.client.locks();
        let req = LockSessionRequest { session: id };
        match tokio::time::timeout(every, c.renew(req)).await {
            Ok(Ok(_)) => {}
            Ok(Err(status)) => {
                let e = ClientError::from_status(status);
                if e.is("ESTALE") {
                    lc.lose(id);
                    return;
                }
                tracing::warn!("renewing the lock session: {e}; retrying");
            }
            Err(_) => tracing::warn!("renewing the lock session: no answer; retrying"),
        }
    }
}

/// Whether thread `tid` (of the caller, as the kernel named it) has a
/// signal pending that it neither blocks nor ignores. Reads
/// `/proc/<tid>/status`; when that cannot be read, nothing is pending as
/// far as we know (answering EINTR without a pending signal would be wrong).
fn interrupted(tid: u32) -> bool {
    if tid == 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{tid}/status")) {
        Ok(text) => pending_signal(&text),
        Err(_) => false,
    }
}

/// Parses the signal masks of a `/proc/<pid>/status` text.
fn pending_signal(status: &str) -> bool {
    let mask = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    let pending = mask("SigPnd:") | mask("ShdPnd:");
    let masked = mask("SigBlk:") | mask("SigIgn:");
    pending & !masked != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(api_range(0, OFFSET_MAX), Ok((0, 0)));
        assert_eq!(api_range(10, 19), Ok((10, 10)));
        assert_eq!(api_range(5, 5), Ok((5, 1)));
        assert_eq!(api_range(5, 4), Err(Errno::EINVAL));
        let h = |start, length, t: ApiType| HeldLock {
            r#type: t as i32,
            start,
            length,
            pid: 7,
            kind: 0,
        };
        assert_eq!(
            kernel_lock(&h(10, 10, ApiType::Write)),
            KernelLock {
                start: 10,
                end: 19,
                typ: libc::F_WRLCK,
                pid: 7
            }
        );
        let eof = kernel_lock(&h(3, 0, ApiType::Read));
        assert_eq!(
            (eof.start, eof.end, eof.typ),
            (3, OFFSET_MAX, libc::F_RDLCK)
        );
        // Beyond what the kernel accepts: clamped.
        let far = kernel_lock(&h(u64::MAX - 5, 3, ApiType::Read));
        assert_eq!((far.start, far.end), (OFFSET_MAX, OFFSET_MAX));
        assert_eq!(Want::from_kernel(libc::F_UNLCK), Ok(Want::Unlock));
        assert_eq!(Want::from_kernel(99), Err(Errno::EINVAL));
    }

    #[test]
    fn pending_signals() {
        let status = |pnd: &str, shd: &str, blk: &str, ign: &str| {
            format!(
                "Name:\tx\nSigQ:\t0/1\nSigPnd:\t{pnd}\nShdPnd:\t{shd}\nSigBlk:\t{blk}\n\
                 SigIgn:\t{ign}\nSigCgt:\t0\n"
            )
        };
        let none = "0000000000000000";
        assert!(!pending_signal(&status(none, none, none, none)));
        // SIGKILL (9) pending for the process.
        assert!(pending_signal(&status(
            none,
            "0000000000000100",
            none,
            none
        )));
        // SIGINT (2) pending for the thread, but blocked / ignored.
        assert!(!pending_signal(&status(
            "0000000000000002",
            none,
            "0000000000000002",
            none
        )));
        assert!(!pending_signal(&status(
            "0000000000000002",
            none,
            none,
            "0000000000000002"
        )));
        assert!(pending_signal(&status(
            "0000000000000002",
            none,
            none,
            none
        )));
        assert!(!pending_signal("garbage"));
        // Our own thread has nothing pending.
        assert!(!interrupted(std::process::id()));
        assert!(!interrupted(0));
    }
}
