//! Advisory locks shared by every client of the cluster: POSIX record locks
//! (fcntl) and whole-file flock locks.
//!
//! Where they live: in memory, on the node serving the file's volume (the
//! leader of its shard), as NFSv4 servers keep theirs. Locks are not
//! replicated and do not survive a restart of that node; clients then find
//! their session unknown (ESTALE) and learn that their locks are gone, like
//! NFS clients without reclaim. A lock is keyed by the file (volume id,
//! inode) and held by a [`Holder`]: a client session plus the lock owner the
//! client names (the kernel's owner: a process's file table for POSIX locks,
//! an open file description for flock).
//!
//! Sessions are leases: a client opens one, renews it (every lock call also
//! renews it), and closes it at unmount. When a lease runs out the server
//! drops every lock of the session, so a dead client never wedges others.
//!
//! Semantics, as Linux has them locally:
//! - POSIX locks cover byte ranges (both ends inclusive here; a lock "to the
//!   end of file" reaches `u64::MAX`). A holder's locks never overlap each
//!   other: a new lock replaces the holder's overlapping parts (splitting
//!   them), adjacent locks of the same type merge, unlocking a range splits.
//!   A holder never conflicts with itself; two holders conflict where their
//!   ranges overlap and at least one lock is a write (exclusive) lock.
//! - flock locks are the same machinery over the whole file.
//! - POSIX and flock locks never conflict with each other.
//! - A conflicting request fails at once or, when asked to wait, waits a
//!   bounded time ([`WAIT_MS_MAX`]); the client repeats the call to wait
//!   longer. Every release wakes the waiters of that file.
//! - Deadlock detection (EDEADLK) across clients is not done: a waiter in a
//!   cycle waits until a lock is released or its lease ends.
//!
//! Authorization: every call on a file presents a handle from `open`, which
//! names the file and proves that the principal was allowed to open it (for
//! reading or writing: a lock on a file opened write-only is legal in POSIX).
//! A session belongs to the principal that opened it; nobody else may use it.
//!
//! [`LockTable`] is the pure logic (no clock, no I/O: time is an argument),
//! [`LockService`] adds the clock, the waiting and the authorization.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_meta::{Code, Error, Meta};
use berth_security::principal::Principal;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// Lease of a session when the server is not told otherwise.
pub const LEASE_MS_DEFAULT: u64 = 30_000;
/// Shortest lease the server accepts (tests use short leases).
pub const LEASE_MS_MIN: u64 = 300;
/// Longest lease the server accepts.
pub const LEASE_MS_MAX: u64 = 600_000;
/// Longest one waiting call waits before answering (capped further to a
/// third of the lease, so a waiting client renews in time).
pub const WAIT_MS_MAX: u64 = 5_000;
/// Sessions one node keeps at most.
pub const SESSIONS_MAX: usize = 16_384;
/// Lock records one session holds at most.
pub const LOCKS_PER_SESSION_MAX: usize = 65_536;
/// Lock records one node holds at most.
pub const LOCKS_MAX: usize = 1_000_000;
/// Wake-up channels waiters are spread over (by file).
const WAKE_SHARDS: usize = 64;

pub type SessionId = u64;

/// POSIX record locks and flock locks live side by side and never conflict
/// with each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LockKind {
    Posix,
    Flock,
}

/// Shared (read) or exclusive (write).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockType {
    Read,
    Write,
}

/// Who holds a lock: a client session and the owner the client names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Holder {
    pub session: SessionId,
    pub owner: u64,
}

/// A locked file: volume id and inode, and the snapshot it is read from
/// (a file in a snapshot is another file than its live self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileKey {
    pub volume: u64,
    pub ino: u64,
    pub snapshot: Option<u64>,
}

/// A byte range, both ends inclusive. `end == u64::MAX` reaches past any
/// end of file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    /// The whole file, however far it grows.
    pub const WHOLE: ByteRange = ByteRange {
        start: 0,
        end: u64::MAX,
    };

    /// From a start and a length, as fcntl gives them (0 = to the end of
    /// file). A range ending beyond `u64::MAX` is EINVAL.
    pub fn from_len(start: u64, len: u64) -> Result<ByteRange, Error> {
        if len == 0 {
            return Ok(ByteRange {
                start,
                end: u64::MAX,
            });
        }
        let end = start.checked_add(len - 1).ok_or_else(|| {
            Error::invalid(format!(
                "lock range {start}+{len} ends beyond the largest offset"
            ))
        })?;
        Ok(ByteRange { start, end })
    }

    /// The length as fcntl reports it (0 = to the end of file).
    pub fn length(&self) -> u64 {
        if self.end == u64::MAX {
            0
        } else {
            self.end - self.start + 1
        }
    }

    pub fn overlaps(&self, o: &ByteRange) -> bool {
        self.start <= o.end && o.start <= self.end
    }

    /// Whether `o` starts right after `self` ends.
    fn precedes(&self, o: &ByteRange) -> bool {
        self.end != u64::MAX && self.end + 1 == o.start
    }
}

/// One held lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    pub holder: Holder,
    pub kind: LockKind,
    pub typ: LockType,
    pub range: ByteRange,
    /// The process that took the lock, as the holder's kernel reported it
    /// (meaningful only on the holder's host).
    pub pid: u32,
}

impl Lock {
    fn conflicts(&self, holder: Holder, kind: LockKind, typ: LockType, range: &ByteRange) -> bool {
        self.kind == kind
            && self.holder != holder
            && self.range.overlaps(range)
            && (self.typ == LockType::Write || typ == LockType::Write)
    }
}

/// What a request for a lock found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Granted,
    /// Not granted: this lock is in the way.
    Conflict(Lock),
}

/// A session's state in the table.
#[derive(Debug)]
struct SessionState {
    principal: String,
    expires_at_ms: u64,
    /// Files on which the session holds at least one lock.
    files: HashSet<FileKey>,
    /// Lock records the session holds.
    locks: usize,
}

fn stale(session: SessionId) -> Error {
    Error::new(
        Code::Stale,
        format!(
            "lock session {session:x} is unknown to this server: it restarted or the \
             session's lease ran out, and every lock held under it is lost"
        ),
    )
}

/// Every lock and session of one node. Pure: time comes in as `now_ms`, a
/// monotonic millisecond count.
#[derive(Debug)]
pub struct LockTable {
    lease_ms: u64,
    files: HashMap<FileKey, Vec<Lock>>,
    sessions: HashMap<SessionId, SessionState>,
    /// Lock records in `files`.
    locks: usize,
    locks_per_session_max: usize,
    locks_max: usize,
}

impl LockTable {
    pub fn new(lease_ms: u64) -> LockTable {
        LockTable::with_limits(lease_ms, LOCKS_PER_SESSION_MAX, LOCKS_MAX)
    }

    /// A table with other limits on lock records (tests).
    pub fn with_limits(lease_ms: u64, locks_per_session_max: usize, locks_max: usize) -> LockTable {
        assert!(lease_ms > 0, "a lease must last");
        LockTable {
            lease_ms,
            files: HashMap::new(),
            sessions: HashMap::new(),
            locks: 0,
            locks_per_session_max,
            locks_max,
        }
    }

    pub fn lease_ms(&self) -> u64 {
        self.lease_ms
    }

    /// Starts session `id` for `principal`.
    pub fn open_session(
        &mut self,
        id: SessionId,
        principal: &str,
        now_ms: u64,
    ) -> Result<(), Error> {
        if id == 0 || self.sessions.contains_key(&id) {
            return Err(Error::exists(format!("lock session {id:x}")));
        }
        if self.sessions.len() >= SESSIONS_MAX {
            return Err(Error::new(
                Code::NoLocks,
                format!("this node already serves {SESSIONS_MAX} lock sessions"),
            ));
        }
        self.sessions.insert(
            id,
            SessionState {
                principal: principal.to_string(),
                expires_at_ms: now_ms.saturating_add(self.lease_ms),
                files: HashSet::new(),
                locks: 0,
            },
        );
        Ok(())
    }

    /// Checks that `id` is a live session of `principal` and extends its
    /// lease.
    pub fn touch(&mut self, id: SessionId, principal: &str, now_ms: u64) -> Result<(), Error> {
        let s = self.sessions.get_mut(&id).ok_or_else(|| stale(id))?;
        if s.expires_at_ms <= now_ms {
            // Expired but not swept yet: as good as gone.
            return Err(stale(id));
        }
        if s.principal != principal {
            return Err(Error::access(format!(
                "lock session {id:x} belongs to another principal"
            )));
        }
        s.expires_at_ms = now_ms.saturating_add(self.lease_ms);
        Ok(())
    }

    /// Ends a session of `principal`, releasing its locks; returns the files
    /// that had locks.
    pub fn close_session(&mut self, id: SessionId, principal: &str) -> Result<Vec<FileKey>, Error> {
        match self.sessions.get(&id) {
            None => return Err(stale(id)),
            Some(s) if s.principal != principal => {
                return Err(Error::access(format!(
                    "lock session {id:x} belongs to another principal"
                )))
            }
            Some(_) => {}
        }
        Ok(self.drop_session(id))
    }

    /// Drops every session whose lease ran out by `now_ms`; returns them
    /// with the files that had their locks.
    pub fn expire(&mut self, now_ms: u64) -> Vec<(SessionId, Vec<FileKey>)> {
        let dead: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.expires_at_ms <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        dead.into_iter()
            .map(|id| (id, self.drop_session(id)))
            .collect()
    }

    /// Forgets every session holding a lock on a file of `volume` (their
    /// holders then get ESTALE and learn their locks are gone); returns the
    /// files that had their locks. For a volume whose leadership moved away
    /// and back: what this table holds for it may be stale.
    pub fn drop_volume(&mut self, volume: u64) -> Vec<FileKey> {
        let holders: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.files.iter().any(|f| f.volume == volume))
            .map(|(id, _)| *id)
            .collect();
        holders
            .into_iter()
            .flat_map(|id| self.drop_session(id))
            .collect()
    }

    fn drop_session(&mut self, id: SessionId) -> Vec<FileKey> {
        let Some(s) = self.sessions.remove(&id) else {
            return Vec::new();
        };
        let files: Vec<FileKey> = s.files.into_iter().collect();
        for key in &files {
            if let Some(list) = self.files.get_mut(key) {
                let before = list.len();
                list.retain(|l| l.holder.session != id);
                self.locks -= before - list.len();
                if list.is_empty() {
                    self.files.remove(key);
                }
            }
        }
        files
    }

    /// The first lock that keeps `holder` from taking `typ` over `range`.
    pub fn test(
        &self,
        key: FileKey,
        holder: Holder,
        kind: LockKind,
        typ: LockType,
        range: ByteRange,
    ) -> Option<Lock> {
        self.files
            .get(&key)?
            .iter()
            .find(|l| l.conflicts(holder, kind, typ, &range))
            .cloned()
    }

    /// Takes (or changes to) `typ` over `range` for `holder` unless another
    /// holder's lock conflicts. The session must be live (see [`touch`]).
    ///
    /// [`touch`]: LockTable::touch
    pub fn set(
        &mut self,
        key: FileKey,
        holder: Holder,
        kind: LockKind,
        typ: LockType,
        range: ByteRange,
        pid: u32,
    ) -> Result<Outcome, Error> {
        if let Some(c) = self.test(key, holder, kind, typ, range) {
            return Ok(Outcome::Conflict(c));
        }
        let new = Lock {
            holder,
            kind,
            typ,
            range,
            pid,
        };
        self.change(key, holder, kind, range, Some(new))?;
        Ok(Outcome::Granted)
    }

    /// Releases `holder`'s locks of `kind` over `range` (splitting locks that
    /// reach beyond it). Returns whether anything changed.
    pub fn unlock(
        &mut self,
        key: FileKey,
        holder: Holder,
        kind: LockKind,
        range: ByteRange,
    ) -> Result<bool, Error> {
        self.change(key, holder, kind, range, None)
    }

    /// Releases every lock of `kind` that `holder` holds on the file.
    pub fn release_owner(&mut self, key: FileKey, holder: Holder, kind: LockKind) -> bool {
        self.change(key, holder, kind, ByteRange::WHOLE, None)
            .expect("releasing never adds a lock record")
    }

    /// The locks held on a file, in no particular order.
    pub fn locks(&self, key: FileKey) -> &[Lock] {
        self.files.get(&key).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Lock records held in the whole table.
    pub fn lock_count(&self) -> usize {
        self.locks
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Cuts `range` out of `holder`'s locks of `kind` on the file, then adds
    /// `new` (which covers `range`) merged with its same-type neighbours.
    /// Checks the limits before changing anything. Returns whether the
    /// file's locks changed.
    fn change(
        &mut self,
        key: FileKey,
        holder: Holder,
        kind: LockKind,
        range: ByteRange,
        new: Option<Lock>,
    ) -> Result<bool, Error> {
        let old: &[Lock] = self.files.get(&key).map(Vec::as_slice).unwrap_or(&[]);
        let mut list: Vec<Lock> = Vec::with_capacity(old.len() + 2);
        let mut changed = false;
        for l in old {
            if l.holder != holder || l.kind != kind || !l.range.overlaps(&range) {
                list.push(l.clone());
                continue;
            }
            changed = true;
            if l.range.start < range.start {
                let mut left = l.clone();
                left.range.end = range.start - 1;
                list.push(left);
            }
            if l.range.end > range.end {
                let mut right = l.clone();
                right.range.start = range.end + 1;
                list.push(right);
            }
        }
        if let Some(mut n) = new {
            changed = true;
            // Merge with the holder's same-type locks right before and after.
            let mine = |l: &Lock| l.holder == holder && l.kind == kind && l.typ == n.typ;
            if let Some(i) = list
                .iter()
                .position(|l| mine(l) && l.range.precedes(&n.range))
            {
                n.range.start = list.swap_remove(i).range.start;
            }
            if let Some(i) = list
                .iter()
                .position(|l| mine(l) && n.range.precedes(&l.range))
            {
                n.range.end = list.swap_remove(i).range.end;
            }
            list.push(n);
        }
        if !changed {
            return Ok(false);
        }
        let count = |v: &[Lock]| {
            v.iter()
                .filter(|l| l.holder.session == holder.session)
                .count()
        };
        let (before, after) = (count(old), count(&list));
        let old_len = old.len();
        let session = self
            .sessions
            .get_mut(&holder.session)
            .ok_or_else(|| stale(holder.session))?;
        if after > before {
            let grow = after - before;
            if session.locks + grow > self.locks_per_session_max {
                return Err(Error::new(
                    Code::NoLocks,
                    format!(
                        "a lock session holds at most {} locks",
                        self.locks_per_session_max
                    ),
                ));
            }
            if self.locks + grow > self.locks_max {
                return Err(Error::new(
                    Code::NoLocks,
                    format!("this node holds at most {} locks", self.locks_max),
                ));
            }
        }
        session.locks = session.locks + after - before;
        self.locks = self.locks + list.len() - old_len;
        if after > 0 {
            session.files.insert(key);
        } else {
            session.files.remove(&key);
        }
        if list.is_empty() {
            self.files.remove(&key);
        } else {
            self.files.insert(key, list);
        }
        Ok(true)
    }

    /// Checks the table's invariants (tests and debug builds).
    pub fn check_invariants(&self) {
        let mut total = 0;
        let mut per_session: HashMap<SessionId, usize> = HashMap::new();
        for (key, list) in &self.files {
            assert!(!list.is_empty(), "empty lock list kept for {key:?}");
            total += list.len();
            for (i, a) in list.iter().enumerate() {
                assert!(a.range.start <= a.range.end, "inverted range {a:?}");
                let s = self
                    .sessions
                    .get(&a.holder.session)
                    .unwrap_or_else(|| panic!("lock of an unknown session: {a:?}"));
                assert!(s.files.contains(key), "session does not list {key:?}");
                *per_session.entry(a.holder.session).or_default() += 1;
                for b in &list[i + 1..] {
                    if a.holder == b.holder && a.kind == b.kind {
                        assert!(
                            !a.range.overlaps(&b.range),
                            "own locks overlap: {a:?} {b:?}"
                        );
                        if a.typ == b.typ {
                            assert!(
                                !a.range.precedes(&b.range) && !b.range.precedes(&a.range),
                                "adjacent same-type locks not merged: {a:?} {b:?}"
                            );
                        }
                    } else if a.kind == b.kind && a.range.overlaps(&b.range) {
                        assert!(
                            a.typ == LockType::Read && b.typ == LockType::Read,
                            "conflicting locks held together: {a:?} {b:?}"
                        );
                    }
                }
            }
        }
        assert_eq!(total, self.locks, "lock count");
        for (id, s) in &self.sessions {
            assert_eq!(
                per_session.get(id).copied().unwrap_or(0),
                s.locks,
                "lock count of session {id:x}"
            );
        }
    }
}

/// What a lock call asks for, as the service receives it.
#[derive(Debug, Clone)]
pub struct LockArgs {
    pub session: SessionId,
    /// A handle from `open`.
    pub handle: Vec<u8>,
    pub owner: u64,
    pub kind: LockKind,
    /// `None` releases the range.
    pub typ: Option<LockType>,
    pub range: ByteRange,
    pub pid: u32,
    /// Wait (bounded) while the lock conflicts.
    pub wait: bool,
    /// How long to wait at most; 0 = the service's cap.
    pub wait_ms: u64,
}

/// The lock service of one node: the table, its clock, waiting and
/// authorization.
pub struct LockService {
    meta: Arc<Meta>,
    table: Mutex<LockTable>,
    wake: Vec<Notify>,
    epoch: Instant,
    /// Session ids: a bijective mix of a counter and a random seed, so they
    /// never repeat within a process and are not guessable across restarts.
    next_id: Mutex<u64>,
    seed: u64,
    /// The Raft term in which this node last served each shard's locks: a
    /// new term means leadership may have been elsewhere meanwhile.
    terms: Mutex<HashMap<u64, u64>>,
}

/// splitmix64's finaliser: a bijection on u64.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl LockService {
    /// A service with `lease_ms` leases (clamped to
    /// [`LEASE_MS_MIN`]..=[`LEASE_MS_MAX`]); `seed` makes session ids
    /// unpredictable (pass a random number).
    pub fn new(meta: Arc<Meta>, lease_ms: u64, seed: u64) -> Arc<LockService> {
        let lease_ms = lease_ms.clamp(LEASE_MS_MIN, LEASE_MS_MAX);
        Arc::new(LockService {
            meta,
            table: Mutex::new(LockTable::new(lease_ms)),
            wake: (0..WAKE_SHARDS).map(|_| Notify::new()).collect(),
            epoch: Instant::now(),
            next_id: Mutex::new(0),
            seed,
            terms: Mutex::new(HashMap::new()),
        })
    }

    pub fn lease_ms(&self) -> u64 {
        self.table.lock().lease_ms()
    }

    /// The longest one waiting call waits.
    pub fn wait_ms_max(&self) -> u64 {
        WAIT_MS_MAX.min(self.lease_ms() / 3)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn wake_for(&self, key: FileKey) -> &Notify {
        let h = mix(key.volume ^ mix(key.ino));
        &self.wake[(h % WAKE_SHARDS as u64) as usize]
    }

    fn wake_files(&self, files: &[FileKey]) {
        for key in files {
            self.wake_for(*key).notify_waiters();
        }
    }

    /// Opens a session for `p`; returns its id and lease.
    pub fn open_session(&self, p: &Principal) -> Result<(SessionId, u64), Error> {
        let now = self.now_ms();
        let mut table = self.table.lock();
        // A bijection of distinct counters: ids never collide, but 0 is
        // reserved, so skip it (bounded: at most one skip).
        for _ in 0..2 {
            let id = {
                let mut n = self.next_id.lock();
                *n += 1;
                mix(self
                    .seed
                    .wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
            };
            if id != 0 {
                table.open_session(id, &p.name, now)?;
                tracing::debug!(session = %format!("{id:x}"), principal = %p.name, "lock session opened");
                return Ok((id, table.lease_ms()));
            }
        }
        Err(Error::new(Code::Again, "no lock session id; retry"))
    }

    /// Extends a session's lease; returns the lease.
    pub fn renew(&self, p: &Principal, session: SessionId) -> Result<u64, Error> {
        self.check_terms();
        let now = self.now_ms();
        let mut table = self.table.lock();
        table.touch(session, &p.name, now)?;
        Ok(table.lease_ms())
    }

    /// Ends a session and releases its locks.
    pub fn close_session(&self, p: &Principal, session: SessionId) -> Result<(), Error> {
        let files = self.table.lock().close_session(session, &p.name)?;
        tracing::debug!(session = %format!("{session:x}"), locks_on = files.len(), "lock session closed");
        self.wake_files(&files);
        Ok(())
    }

    /// Drops the sessions whose lease ran out; returns how many.
    pub fn expire(&self) -> usize {
        let now = self.now_ms();
        let dead = self.table.lock().expire(now);
        for (id, files) in &dead {
            tracing::info!(
                session = %format!("{id:x}"),
                files = files.len(),
                "lock session lease ran out: its locks are released"
            );
            self.wake_files(files);
        }
        dead.len()
    }

    /// Sweeps expired sessions until `stop` turns true.
    pub async fn run_expiry(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let every = Duration::from_millis((self.lease_ms() / 4).clamp(50, 1_000));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.expire();
                }
                r = stop.wait_for(|s| *s) => {
                    let _ = r;
                    return;
                }
            }
        }
    }

    /// The file a handle names, after checking it belongs to `p` and that
    /// this node serves the file's volume.
    fn file_of(&self, p: &Principal, handle: &[u8]) -> Result<FileKey, Error> {
        let h = self.meta.open_handle(handle, &p.name)?;
        if !h.read && !h.write {
            return Err(Error::access(
                "the handle grants neither reading nor writing",
            ));
        }
        let vol = self.meta.map().volume(h.volume).cloned().ok_or_else(|| {
            Error::new(
                Code::Again,
                format!("volume {} is not in the cluster map yet; retry", h.volume),
            )
        })?;
        // Locks live with the volume's leader, so that every client of the
        // volume meets the same table.
        let router = self.meta.router();
        if router.raft().leader(vol.shard_id) != Some(router.node_id()) {
            let message = format!(
                "the locks of volume {} are served by the leader of shard {}; retry there",
                vol.path, vol.shard_id
            );
            // Refused before anything was done: name the leader when known.
            return Err(match router.leader_of(vol.shard_id) {
                Some(l) if l != router.node_id() => Error::elsewhere(l, message),
                _ => Error::new(Code::Again, message),
            });
        }
        self.check_terms();
        if let Some(term) = router.raft().term(vol.shard_id) {
            self.terms.lock().entry(vol.shard_id).or_insert(term);
        }
        Ok(FileKey {
            volume: h.volume,
            ino: h.ino,
            snapshot: h.snapshot,
        })
    }

    /// Leadership that moved away (and maybe came back) leaves locks here
    /// that other leaders never saw, while clients may have been told they
    /// were lost: for every shard whose locks this node served in another
    /// term, or no longer leads, the locks go with their sessions (their
    /// holders get ESTALE).
    fn check_terms(&self) {
        let raft = self.meta.router().raft();
        let me = self.meta.router().node_id();
        let changed: Vec<u64> = {
            let mut terms = self.terms.lock();
            let gone: Vec<u64> = terms
                .iter()
                .filter(|(s, t)| raft.leader(**s) != Some(me) || raft.term(**s) != Some(**t))
                .map(|(s, _)| *s)
                .collect();
            for s in &gone {
                terms.remove(s);
            }
            gone
        };
        if changed.is_empty() {
            return;
        }
        let volumes: Vec<u64> = self
            .meta
            .map()
            .volumes
            .iter()
            .filter(|v| changed.contains(&v.shard_id))
            .map(|v| v.id)
            .collect();
        let files: Vec<FileKey> = {
            let mut t = self.table.lock();
            volumes.iter().flat_map(|v| t.drop_volume(*v)).collect()
        };
        if !files.is_empty() {
            tracing::info!(shards = ?changed, "leadership moved: the locks held here are dropped");
        }
        self.wake_files(&files);
    }

    /// A lock the caller may see: the pid only when the holder is in the
    /// caller's own session (on another host the number means nothing).
    fn reported(l: Lock, session: SessionId) -> Lock {
        let pid = if l.holder.session == session {
            l.pid
        } else {
            0
        };
        Lock { pid, ..l }
    }

    /// Takes, changes or releases a lock; with `wait`, waits (bounded)
    /// while it conflicts. Returns `None` when done, or the lock in the way.
    pub async fn set(&self, p: &Principal, a: &LockArgs) -> Result<Option<Lock>, Error> {
        let key = self.file_of(p, &a.handle)?;
        let holder = Holder {
            session: a.session,
            owner: a.owner,
        };
        let range = match a.kind {
            LockKind::Posix => a.range,
            LockKind::Flock => ByteRange::WHOLE,
        };
        let cap = self.wait_ms_max();
        let wait_ms = if a.wait_ms == 0 {
            cap
        } else {
            a.wait_ms.min(cap)
        };
        let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
        let wake = self.wake_for(key);
        loop {
            // Registered before looking, so a release in between is not missed.
            let notified = wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let outcome = {
                let now = self.now_ms();
                let mut table = self.table.lock();
                table.touch(a.session, &p.name, now)?;
                match a.typ {
                    None => {
                        table.unlock(key, holder, a.kind, range)?;
                        Outcome::Granted
                    }
                    Some(typ) => table.set(key, holder, a.kind, typ, range, a.pid)?,
                }
            };
            match outcome {
                Outcome::Granted => {
                    // Releasing, or changing a lock's type or range, may let
                    // a waiter in.
                    wake.notify_waiters();
                    return Ok(None);
                }
                Outcome::Conflict(l) => {
                    if !a.wait || tokio::time::Instant::now() >= deadline {
                        return Ok(Some(Self::reported(l, a.session)));
                    }
                }
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    /// The lock that keeps the caller from taking `a` now, if any (F_GETLK).
    /// `a.session` may be 0 (no session: every lock counts as another's).
    pub fn test(&self, p: &Principal, a: &LockArgs) -> Result<Option<Lock>, Error> {
        let key = self.file_of(p, &a.handle)?;
        let Some(typ) = a.typ else {
            return Err(Error::invalid(
                "testing for a lock needs a read or write type",
            ));
        };
        let range = match a.kind {
            LockKind::Posix => a.range,
            LockKind::Flock => ByteRange::WHOLE,
        };
        let holder = Holder {
            session: a.session,
            owner: a.owner,
        };
        let now = self.now_ms();
        let mut table = self.table.lock();
        // Session 0: a client that holds no locks asks without a session.
        if a.session != 0 {
            table.touch(a.session, &p.name, now)?;
        }
        Ok(table
            .test(key, holder, a.kind, typ, range)
            .map(|l| Self::reported(l, a.session)))
    }

    /// Releases every lock of `kind` the owner holds on the handle's file
    /// (close of a file: POSIX locks at flush, flock locks at release).
    pub fn release(
        &self,
        p: &Principal,
        session: SessionId,
        handle: &[u8],
        owner: u64,
        kind: LockKind,
    ) -> Result<(), Error> {
        let key = self.file_of(p, handle)?;
        let now = self.now_ms();
        let changed = {
            let mut table = self.table.lock();
            table.touch(session, &p.name, now)?;
            table.release_owner(key, Holder { session, owner }, kind)
        };
        if changed {
            self.wake_for(key).notify_waiters();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: FileKey = FileKey {
        volume: 1,
        ino: 7,
        snapshot: None,
    };
    const G: FileKey = FileKey {
        volume: 1,
        ino: 7,
        snapshot: Some(3),
    };
    const LEASE: u64 = 1_000;

    fn r(start: u64, end: u64) -> ByteRange {
        ByteRange { start, end }
    }
    fn h(session: SessionId, owner: u64) -> Holder {
        Holder { session, owner }
    }

    fn table() -> LockTable {
        let mut t = LockTable::new(LEASE);
        t.open_session(1, "alice", 0).unwrap();
        t.open_session(2, "bob", 0).unwrap();
        t
    }

    /// The holder's locks of `kind` on F, sorted: (type, start, end).
    fn mine(t: &LockTable, holder: Holder, kind: LockKind) -> Vec<(LockType, u64, u64)> {
        let mut v: Vec<_> = t
            .locks(F)
            .iter()
            .filter(|l| l.holder == holder && l.kind == kind)
            .map(|l| (l.typ, l.range.start, l.range.end))
            .collect();
        v.sort_by_key(|x| x.1);
        v
    }

    fn set(t: &mut LockTable, holder: Holder, typ: LockType, range: ByteRange) -> Outcome {
        let o = t.set(F, holder, LockKind::Posix, typ, range, 42).unwrap();
        t.check_invariants();
        o
    }

    use LockType::{Read as R, Write as W};

    #[test]
    fn ranges_from_fcntl_lengths() {
        assert_eq!(ByteRange::from_len(10, 0).unwrap(), r(10, u64::MAX));
        assert_eq!(ByteRange::from_len(10, 5).unwrap(), r(10, 14));
        assert_eq!(ByteRange::from_len(10, 5).unwrap().length(), 5);
        assert_eq!(ByteRange::from_len(3, 0).unwrap().length(), 0);
        assert_eq!(
            ByteRange::from_len(u64::MAX, 2).unwrap_err().code,
            Code::Invalid
        );
        assert!(r(0, 9).overlaps(&r(9, 20)));
        assert!(!r(0, 9).overlaps(&r(10, 20)));
        assert!(r(0, 9).precedes(&r(10, 20)));
        assert!(!ByteRange::WHOLE.precedes(&r(0, 1)));
    }

    #[test]
    fn a_new_lock_splits_and_replaces_the_owners_older_one() {
        let mut t = table();
        let a = h(1, 1);
        assert_eq!(set(&mut t, a, R, r(0, 99)), Outcome::Granted);
        // A write lock in the middle splits the read lock in three.
        assert_eq!(set(&mut t, a, W, r(40, 59)), Outcome::Granted);
        assert_eq!(
            mine(&t, a, LockKind::Posix),
            [(R, 0, 39), (W, 40, 59), (R, 60, 99)]
        );
        // Back to read over the middle: the three merge again.
        assert_eq!(set(&mut t, a, R, r(40, 59)), Outcome::Granted);
        assert_eq!(mine(&t, a, LockKind::Posix), [(R, 0, 99)]);
        // Unlocking a range splits; unlocking what is not held changes nothing.
        assert!(t.unlock(F, a, LockKind::Posix, r(10, 19)).unwrap());
        assert_eq!(mine(&t, a, LockKind::Posix), [(R, 0, 9), (R, 20, 99)]);
        assert!(!t.unlock(F, a, LockKind::Posix, r(200, 300)).unwrap());
        // Adjacent same-type locks merge; different types do not.
        assert_eq!(set(&mut t, a, R, r(10, 19)), Outcome::Granted);
        assert_eq!(mine(&t, a, LockKind::Posix), [(R, 0, 99)]);
        assert_eq!(set(&mut t, a, W, r(100, 109)), Outcome::Granted);
        assert_eq!(mine(&t, a, LockKind::Posix), [(R, 0, 99), (W, 100, 109)]);
        // A lock over several of them replaces them all.
        assert_eq!(set(&mut t, a, W, r(50, u64::MAX)), Outcome::Granted);
        assert_eq!(
            mine(&t, a, LockKind::Posix),
            [(R, 0, 49), (W, 50, u64::MAX)]
        );
        // Unlock to the end of file releases the tail only.
        t.unlock(F, a, LockKind::Posix, r(60, u64::MAX)).unwrap();
        assert_eq!(mine(&t, a, LockKind::Posix), [(R, 0, 49), (W, 50, 59)]);
        t.check_invariants();
        assert_eq!(t.lock_count(), 2);
    }

    #[test]
    fn conflicts_between_holders() {
        let mut t = table();
        let (a, b, a2) = (h(1, 1), h(2, 1), h(1, 2));
        assert_eq!(set(&mut t, a, W, r(0, 9)), Outcome::Granted);
        // Overlapping: another session, or another owner of the same session.
        for other in [b, a2] {
            match set(&mut t, other, R, r(5, 20)) {
                Outcome::Conflict(l) => {
                    assert_eq!((l.holder, l.typ, l.range, l.pid), (a, W, r(0, 9), 42))
                }
                o => panic!("expected a conflict, got {o:?}"),
            }
            assert!(t.test(F, other, LockKind::Posix, W, r(9, 9)).is_some());
        }
        // Not overlapping: fine. A holder never conflicts with itself.
        assert_eq!(set(&mut t, b, W, r(10, 19)), Outcome::Granted);
        assert_eq!(set(&mut t, a, W, r(0, 5)), Outcome::Granted);
        assert!(t.test(F, a, LockKind::Posix, W, r(0, 9)).is_none());
        // Shared locks coexist; a write over them conflicts.
        assert_eq!(set(&mut t, a, R, r(100, 199)), Outcome::Granted);
        assert_eq!(set(&mut t, b, R, r(150, 249)), Outcome::Granted);
        assert!(matches!(
            set(&mut t, b, W, r(150, 150)),
            Outcome::Conflict(_)
        ));
        // Other files are independent.
        assert_eq!(
            t.set(G, b, LockKind::Posix, W, r(0, 9), 1).unwrap(),
            Outcome::Granted
        );
        t.check_invariants();
    }

    #[test]
    fn flock_and_posix_locks_do_not_conflict() {
        let mut t = table();
        let (a, b) = (h(1, 1), h(2, 9));
        assert_eq!(
            t.set(F, a, LockKind::Flock, W, ByteRange::WHOLE, 1)
                .unwrap(),
            Outcome::Granted
        );
        assert_eq!(set(&mut t, b, W, r(0, 9)), Outcome::Granted);
        assert!(t.test(F, b, LockKind::Posix, W, ByteRange::WHOLE).is_none());
        assert!(t.test(F, b, LockKind::Flock, R, ByteRange::WHOLE).is_some());
        // Shared flocks coexist; converting one to exclusive conflicts with
        // the other holder's.
        t.release_owner(F, a, LockKind::Flock);
        for who in [a, b] {
            assert_eq!(
                t.set(F, who, LockKind::Flock, R, ByteRange::WHOLE, 1)
                    .unwrap(),
                Outcome::Granted
            );
        }
        assert!(matches!(
            t.set(F, a, LockKind::Flock, W, ByteRange::WHOLE, 1)
                .unwrap(),
            Outcome::Conflict(_)
        ));
        // Releasing flocks leaves the POSIX lock alone.
        assert!(t.release_owner(F, b, LockKind::Flock));
        assert_eq!(mine(&t, b, LockKind::Posix), [(W, 0, 9)]);
        t.check_invariants();
    }

    #[test]
    fn release_owner_frees_only_that_owner() {
        let mut t = table();
        let (a1, a2) = (h(1, 1), h(1, 2));
        set(&mut t, a1, R, r(0, 9));
        set(&mut t, a1, W, r(20, 29));
        set(&mut t, a2, R, r(0, 9));
        assert!(t.release_owner(F, a1, LockKind::Posix));
        assert!(mine(&t, a1, LockKind::Posix).is_empty());
        assert_eq!(mine(&t, a2, LockKind::Posix), [(R, 0, 9)]);
        assert!(!t.release_owner(F, a1, LockKind::Posix));
        t.check_invariants();
    }

    #[test]
    fn dropping_a_volume_forgets_its_holders_sessions() {
        let mut t = table();
        let a = FileKey {
            volume: 7,
            ino: 1,
            snapshot: None,
        };
        let b = FileKey {
            volume: 8,
            ino: 1,
            snapshot: None,
        };
        assert!(matches!(
            t.set(a, h(1, 1), LockKind::Posix, LockType::Write, r(0, 9), 5),
            Ok(Outcome::Granted)
        ));
        assert!(matches!(
            t.set(b, h(2, 1), LockKind::Posix, LockType::Write, r(0, 9), 5),
            Ok(Outcome::Granted)
        ));
        assert_eq!(t.drop_volume(7), vec![a]);
        // Alice's session is gone (ESTALE), her lock with it; Bob's stays.
        assert_eq!(t.touch(1, "alice", 1).unwrap_err().code, Code::Stale);
        assert!(t.locks(a).is_empty());
        assert_eq!(t.locks(b).len(), 1);
        t.touch(2, "bob", 1).unwrap();
        t.check_invariants();
    }

    #[test]
    fn sessions_expire_unless_touched_and_take_their_locks_along() {
        let mut t = table();
        let (a, b) = (h(1, 1), h(2, 1));
        set(&mut t, a, W, r(0, 9));
        t.set(G, a, LockKind::Flock, W, ByteRange::WHOLE, 1)
            .unwrap();
        set(&mut t, b, R, r(20, 29));
        // Bob renews; alice does not.
        t.touch(2, "bob", 900).unwrap();
        assert!(t.expire(999).is_empty());
        let dead = t.expire(1_000);
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].0, 1);
        let mut files = dead[0].1.clone();
        files.sort_by_key(|k| k.snapshot);
        assert_eq!(files, [F, G]);
        t.check_invariants();
        assert_eq!(t.locks(G).len(), 0);
        assert_eq!(t.locks(F).len(), 1);
        assert_eq!(set(&mut t, b, W, r(0, 9)), Outcome::Granted);
        // The lost session is stale: a clear error, not silent success.
        assert_eq!(t.touch(1, "alice", 1_000).unwrap_err().code, Code::Stale);
        assert_eq!(
            t.set(F, a, LockKind::Posix, W, r(50, 59), 1)
                .unwrap_err()
                .code,
            Code::Stale
        );
        // Expired but not yet swept counts as gone too.
        assert_eq!(t.touch(2, "bob", 1_900).unwrap_err().code, Code::Stale);
        assert_eq!(t.expire(1_900).len(), 1);
        assert_eq!(t.lock_count(), 0);
        assert_eq!(t.session_count(), 0);
        t.check_invariants();
    }

    #[test]
    fn sessions_belong_to_their_principal() {
        let mut t = table();
        assert_eq!(t.touch(1, "bob", 1).unwrap_err().code, Code::Access);
        assert_eq!(t.close_session(1, "bob").unwrap_err().code, Code::Access);
        assert_eq!(t.open_session(1, "bob", 1).unwrap_err().code, Code::Exists);
        assert_eq!(t.open_session(0, "bob", 1).unwrap_err().code, Code::Exists);
        set(&mut t, h(1, 1), W, r(0, 0));
        assert_eq!(t.close_session(1, "alice").unwrap(), [F]);
        assert_eq!(t.close_session(1, "alice").unwrap_err().code, Code::Stale);
        assert_eq!(t.lock_count(), 0);
        t.check_invariants();
    }

    #[test]
    fn lock_records_are_bounded() {
        let mut t = LockTable::with_limits(LEASE, 4, 6);
        t.open_session(1, "alice", 0).unwrap();
        t.open_session(2, "bob", 0).unwrap();
        let (a, b) = (h(1, 1), h(2, 1));
        for i in 0..4 {
            // Every other byte: nothing merges.
            t.set(F, a, LockKind::Posix, W, r(2 * i, 2 * i), 1).unwrap();
        }
        let full = t.set(F, a, LockKind::Posix, W, r(100, 100), 1).unwrap_err();
        assert_eq!(full.code, Code::NoLocks);
        // Changing a lock in place needs no room.
        t.set(F, a, LockKind::Posix, R, r(2, 2), 1).unwrap();
        // Releasing makes room.
        assert!(t.unlock(F, a, LockKind::Posix, r(0, 0)).unwrap());
        t.set(F, a, LockKind::Posix, W, r(100, 100), 1).unwrap();
        // The node-wide bound.
        t.set(G, b, LockKind::Posix, W, r(0, 0), 1).unwrap();
        t.set(G, b, LockKind::Posix, W, r(2, 2), 1).unwrap();
        let e = t.set(G, b, LockKind::Posix, W, r(4, 4), 1).unwrap_err();
        assert_eq!(e.code, Code::NoLocks);
        t.check_invariants();
        assert_eq!(t.lock_count(), 6);
        // A full table still lets everyone release.
        assert!(t.release_owner(F, a, LockKind::Posix));
        assert_eq!(t.lock_count(), 2);
    }

    /// A small model check: random operations by three holders on one file
    /// keep the invariants, and byte-level ownership matches a naive model.
    #[test]
    fn random_operations_match_a_byte_model() {
        const BYTES: u64 = 24;
        let holders = [h(1, 1), h(1, 2), h(2, 1)];
        let mut t = table();
        // model[byte] = per holder: None, Some(R), Some(W).
        let mut model = vec![[None::<LockType>; 3]; BYTES as usize];
        let mut x = 12345u64;
        let mut rnd = |n: u64| {
            x = mix(x);
            x % n
        };
        for _ in 0..3_000 {
            let who = rnd(3) as usize;
            let start = rnd(BYTES);
            let end = start + rnd(BYTES - start);
            let range = r(start, end);
            match rnd(3) {
                0 => {
                    t.unlock(F, holders[who], LockKind::Posix, range).unwrap();
                    for b in start..=end {
                        model[b as usize][who] = None;
                    }
                }
                k => {
                    let typ = if k == 1 { R } else { W };
                    let blocked = (start..=end).any(|b| {
                        (0..3).any(|o| {
                            o != who
                                && match model[b as usize][o] {
                                    Some(W) => true,
                                    Some(R) => typ == W,
                                    None => false,
                                }
                        })
                    });
                    let out = t
                        .set(F, holders[who], LockKind::Posix, typ, range, 1)
                        .unwrap();
                    assert_eq!(matches!(out, Outcome::Conflict(_)), blocked);
                    if !blocked {
                        for b in start..=end {
                            model[b as usize][who] = Some(typ);
                        }
                    }
                }
            }
            t.check_invariants();
            for (i, holder) in holders.iter().enumerate() {
                for b in 0..BYTES {
                    let held = t
                        .locks(F)
                        .iter()
                        .find(|l| l.holder == *holder && l.range.overlaps(&r(b, b)))
                        .map(|l| l.typ);
                    assert_eq!(held, model[b as usize][i], "holder {i} byte {b}");
                }
            }
        }
    }
}
