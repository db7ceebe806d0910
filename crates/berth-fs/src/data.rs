//! File data: open (permission check once, as open(2) does, returning a
//! signed handle), read and write through the handle, truncation, and the
//! removal of a file's data with its last link.
//!
//! A file's chunks, size and write time live in the same shard as its inode
//! (see `records`), so one write — every chunk it touches, the new size, the
//! volume's byte count — is one atomic command. Writes use commutative value
//! operations (splice, max, add), so concurrent writers of one file never
//! conflict with each other; they only wait for their own command.
//!
//! Chunks are versioned (see `records`): the kernel copies a chunk a
//! snapshot still reads before the first write after the snapshot changes
//! it, and leaves an empty version behind when a truncate or unlink removes
//! it, so writes never need to know about snapshots; reads pick the newest
//! version their view may see.
//!
//! Quota: a write that would grow the volume's stored bytes past its quota
//! fails with EDQUOT. The check reads the byte count before the command, so
//! concurrent writers near the limit may overshoot it by what is in flight.

use berth_meta::map::VolumeRecord;
use berth_meta::router::{backoff, too_much_contention, Commit, Tx, TX_RETRIES_MAX};
use berth_meta::{Code, Error};
use berth_raft::cmd::Op;
use berth_security::handle::HandleBody;
use berth_security::principal::Principal;

use crate::access::{check_entry, Need};
use crate::namespace::{now_ns, EntryInfo, Namespace};
use crate::records::*;

/// Largest read or write in one call.
pub const IO_BYTES_MAX: usize = 4 << 20;
/// How long a file handle stays valid.
pub const HANDLE_TTL_SECS: u64 = 24 * 3600;
/// Largest file size (2^62 bytes), far below offset overflow.
pub const FILE_SIZE_MAX: u64 = 1 << 62;

/// What an open asks for: reading, writing, and truncation (with writing).
#[derive(Debug, Clone, Copy, Default)]
pub struct Rights {
    pub read: bool,
    pub write: bool,
    pub truncate: bool,
}

/// What `open` is asked for.
#[derive(Debug, Clone, Default)]
pub struct OpenSpec {
    pub path: String,
    pub read: bool,
    pub write: bool,
    pub create: bool,
    pub exclusive: bool,
    pub truncate: bool,
    pub mode: u32,
}

impl Namespace {
    /// Opens (and with `create`, creates) a file; returns a handle granting
    /// the rights checked now.
    pub async fn open(
        &self,
        p: &Principal,
        spec: &OpenSpec,
    ) -> Result<(Vec<u8>, EntryInfo), Error> {
        if !spec.read && !spec.write {
            return Err(Error::invalid("open needs read, write or both"));
        }
        let mut created = false;
        let mut entry = None;
        for _ in 0..TX_RETRIES_MAX {
            match self.stat_following(p, &spec.path).await {
                Ok(e) => {
                    if spec.create && spec.exclusive {
                        return Err(Error::exists(&e.path));
                    }
                    entry = Some(e);
                    break;
                }
                Err(e) if e.code == Code::NotFound && spec.create => {
                    match self
                        .create(p, &spec.path, EntryKind::File, spec.mode, true)
                        .await
                    {
                        Ok(e) => {
                            created = true;
                            entry = Some(e);
                            break;
                        }
                        // Lost a race with another creator: open theirs.
                        Err(e) if e.code == Code::Exists && !spec.exclusive => continue,
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        let entry = entry.ok_or_else(|| too_much_contention(&spec.path))?;
        let rights = Rights {
            read: spec.read,
            write: spec.write,
            truncate: spec.truncate,
        };
        self.grant(p, entry, rights, created).await
    }

    /// Opens the file `entry` (found by path or by inode, authorized up to
    /// it) for `rights`: checks them as open(2) does, unless the caller
    /// just `created` it, truncates when asked, and returns a handle.
    pub(crate) async fn grant(
        &self,
        p: &Principal,
        mut entry: EntryInfo,
        rights: Rights,
        created: bool,
    ) -> Result<(Vec<u8>, EntryInfo), Error> {
        if !rights.read && !rights.write {
            return Err(Error::invalid("open needs read, write or both"));
        }
        match entry.inode.kind {
            EntryKind::File => {}
            EntryKind::Dir => {
                return Err(Error::new(
                    Code::IsDir,
                    format!("is a directory: {}", entry.path),
                ))
            }
            k => {
                return Err(Error::invalid(format!(
                    "{} is a {}, not a file",
                    entry.path,
                    k.name()
                )))
            }
        }
        let vol = self.volume(entry.volume_id)?;
        if rights.write && !entry.view.is_live() {
            return Err(read_only(&entry.path));
        }
        if !created {
            if rights.read {
                check_entry(p, &entry.path, &vol, &entry.inode, Need::Read)?;
            }
            if rights.write {
                check_entry(p, &entry.path, &vol, &entry.inode, Need::Write)?;
            }
            if rights.write && rights.truncate {
                entry = self.truncate_file(&vol, entry, 0).await?;
            }
        }
        let map = self.meta().map();
        let handle = self.meta().seal_handle(&HandleBody {
            cluster: map.cluster_name().to_string(),
            principal: p.name.clone(),
            volume: vol.id,
            ino: entry.ino,
            read: rights.read,
            write: rights.write,
            expires_at: berth_security::now_secs() + HANDLE_TTL_SECS,
            snapshot: match entry.view {
                View::Snapshot(id) => Some(id),
                _ => None,
            },
        })?;
        Ok((handle, entry))
    }

    /// Reads up to `len` bytes at `offset`; returns the bytes (short at end
    /// of file, zeros in holes) and the file size.
    pub async fn read(
        &self,
        p: &Principal,
        handle: &[u8],
        offset: u64,
        len: usize,
    ) -> Result<(Vec<u8>, u64), Error> {
        let h = self.meta().open_handle(handle, &p.name)?;
        if !h.read {
            return Err(Error::access("the file was not opened for reading"));
        }
        if len > IO_BYTES_MAX {
            return Err(Error::invalid(format!(
                "read of {len} bytes exceeds {IO_BYTES_MAX}"
            )));
        }
        let vol = self.volume(h.volume)?;
        let view = h.snapshot.map_or(View::Live, View::Snapshot);
        let tx = self.meta().router().begin(vol.shard_id).await?;
        if tx
            .peek(&view.key(inode_key(vol.id, h.ino)))
            .await?
            .is_none()
        {
            return Err(Error::not_found("the file was removed"));
        }
        let size = read_u64(tx.peek(&view.key(file_size_key(vol.id, h.ino))).await?);
        if offset >= size || len == 0 {
            return Ok((Vec::new(), size));
        }
        let end = size.min(offset + len as u64);
        let cs = u64::from(vol.chunk_size);
        let want = (end - offset) as usize;
        let mut out = Vec::new();
        let first = offset / cs;
        let last = (end - 1) / cs;
        // Which version of each chunk this view sees: the newest not above
        // the view's version (keys are in index, then version order).
        let keys = tx
            .peek_keys(
                &chunk_base(vol.id, h.ino, first),
                &chunk_base(vol.id, h.ino, last + 1),
                usize::MAX,
            )
            .await?;
        let mut chosen: Vec<(u64, Vec<u8>)> = Vec::new();
        for k in keys {
            let (idx, ver) = chunk_index(&k)?;
            if ver > view.version() {
                continue;
            }
            match chosen.last_mut() {
                Some((i, key)) if *i == idx => *key = k,
                _ => chosen.push((idx, k)),
            }
        }
        for (idx, k) in chosen {
            let cstart = idx * cs;
            // The part of this chunk in [offset, end), relative to the chunk.
            let from = offset.max(cstart) - cstart;
            let to = end.min(cstart + cs) - cstart;
            // A version removed since the scan was superseded by a newer
            // write; reading it as a hole is what a racing read may see.
            let Some(v) = tx.peek_part(&k, from as u32, (to - from) as u32).await? else {
                continue;
            };
            if v.len() == want {
                // One chunk held every byte asked for: no copy.
                return Ok((v, size));
            }
            // The value may be shorter than the chunk (zeros beyond it).
            out.resize(want, 0);
            let at = (cstart + from - offset) as usize;
            out[at..at + v.len()].copy_from_slice(&v);
        }
        out.resize(want, 0);
        Ok((out, size))
    }

    /// Writes `data` at `offset`; durable (replicated, fsynced) on return.
    /// Returns the file size after the write.
    pub async fn write(
        &self,
        p: &Principal,
        handle: &[u8],
        offset: u64,
        data: &[u8],
    ) -> Result<u64, Error> {
        let h = self.meta().open_handle(handle, &p.name)?;
        if h.snapshot.is_some() {
            return Err(read_only("a snapshot"));
        }
        if !h.write {
            return Err(Error::access("the file was not opened for writing"));
        }
        if data.len() > IO_BYTES_MAX {
            return Err(Error::invalid(format!(
                "write of {} bytes exceeds {IO_BYTES_MAX}",
                data.len()
            )));
        }
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|e| *e <= FILE_SIZE_MAX)
            .ok_or_else(|| Error::invalid("write beyond the largest file size (2^62 bytes)"))?;
        let vol = self.volume(h.volume)?;
        let cs = u64::from(vol.chunk_size);
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            // The first attempt reads without a barrier (everything that
            // decides the write is a condition); a retry reads through one.
            let router = self.meta().router();
            let optimistic = attempt == 0;
            let mut tx = if optimistic {
                router.begin_optimistic(vol.shard_id)?
            } else {
                router.begin(vol.shard_id).await?
            };
            // Condition on the inode: a write racing with the file's removal
            // (or a chmod/rename) retries instead of leaving orphan data.
            if tx.get(&inode_key(vol.id, h.ino)).await?.is_none() {
                if optimistic {
                    // Perhaps not applied here yet: ask again through a barrier.
                    continue;
                }
                return Err(Error::not_found("the file was removed"));
            }
            let size = read_u64(tx.peek(&file_size_key(vol.id, h.ino)).await?);
            if vol.quota_bytes > 0 && end > size {
                let used = read_usage(tx.peek(&usage_key(vol.id)).await?);
                if used.saturating_add(end - size) > vol.quota_bytes {
                    if optimistic {
                        continue; // confirm on fresh reads before refusing
                    }
                    return Err(Error::new(
                        Code::Quota,
                        format!(
                            "volume {} quota of {} bytes exceeded",
                            vol.path, vol.quota_bytes
                        ),
                    ));
                }
            }
            if data.is_empty() {
                return Ok(size);
            }
            let mut pos = offset;
            let mut rest = data;
            while !rest.is_empty() {
                let idx = pos / cs;
                let in_chunk = pos % cs;
                let n = rest.len().min((cs - in_chunk) as usize);
                tx.op(Op::VSplice {
                    base: chunk_base(vol.id, h.ino, idx),
                    offset: in_chunk as u32,
                    data: rest[..n].to_vec(),
                    counter: Some(usage_key(vol.id)),
                    state: versions_key(vol.id),
                });
                pos += n as u64;
                rest = &rest[n..];
            }
            tx.max_u64(file_size_key(vol.id, h.ino), end);
            tx.max_u64(file_mtime_key(vol.id, h.ino), now_ns().max(0) as u64);
            if let Commit::Done(_) = tx.commit().await? {
                return Ok(size.max(end));
            }
        }
        Err(too_much_contention("write"))
    }

    /// Sets a file's size (shrinking deletes the data beyond it).
    async fn truncate_file(
        &self,
        vol: &VolumeRecord,
        mut entry: EntryInfo,
        size: u64,
    ) -> Result<EntryInfo, Error> {
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let mut tx = self.meta().router().begin(vol.shard_id).await?;
            let key = inode_key(vol.id, entry.ino);
            let mut inode = decode_inode(
                &tx.get(&key)
                    .await?
                    .ok_or_else(|| Error::not_found(&entry.path))?,
            )?;
            let now = now_ns();
            truncate_ops(&mut tx, vol, entry.ino, size, now);
            inode.ctime_ns = now;
            inode.mtime_ns = now;
            inode.size = size;
            tx.put(key, encode_inode(&inode));
            if let Commit::Done(_) = tx.commit().await? {
                entry.inode = inode;
                return Ok(entry);
            }
        }
        Err(too_much_contention(&entry.path))
    }
}

/// The operations that set file `ino`'s size to `size`: the size key, the
/// chunks wholly beyond it deleted, the chunk it falls in cut.
pub(crate) fn truncate_ops(tx: &mut Tx, vol: &VolumeRecord, ino: u64, size: u64, now: i64) {
    let cs = u64::from(vol.chunk_size);
    let keep = size.div_ceil(cs);
    let (_, end) = chunks_range(vol.id, ino);
    tx.op(Op::VDeleteRange {
        start: chunk_base(vol.id, ino, keep),
        end,
        counter: usage_key(vol.id),
        state: versions_key(vol.id),
    });
    if !size.is_multiple_of(cs) {
        tx.op(Op::VTruncate {
            base: chunk_base(vol.id, ino, size / cs),
            len: (size % cs) as u32,
            counter: Some(usage_key(vol.id)),
            state: versions_key(vol.id),
        });
    }
    tx.put(file_size_key(vol.id, ino), size.to_be_bytes().to_vec());
    tx.max_u64(file_mtime_key(vol.id, ino), now.max(0) as u64);
}

/// The operations that delete file `ino`'s data (its last link is going).
/// Versions a snapshot reads stay.
pub(crate) fn delete_data_ops(tx: &mut Tx, vol: &VolumeRecord, ino: u64) {
    let (start, end) = chunks_range(vol.id, ino);
    tx.op(Op::VDeleteRange {
        start,
        end,
        counter: usage_key(vol.id),
        state: versions_key(vol.id),
    });
    tx.delete(file_size_key(vol.id, ino));
    tx.delete(file_mtime_key(vol.id, ino));
}

/// The error for a change under a snapshot.
pub(crate) fn read_only(what: &str) -> Error {
    Error::new(
        Code::ReadOnly,
        format!("read-only file system: {what} is in a snapshot"),
    )
}

/// Overlays the size and write time kept beside a file's chunks onto its
/// inode record.
pub(crate) async fn overlay_file_attrs(
    tx: &Tx,
    view: View,
    vol: u64,
    ino: u64,
    inode: &mut Inode,
) -> Result<(), Error> {
    if inode.kind != EntryKind::File {
        return Ok(());
    }
    inode.size = read_u64(tx.peek(&view.key(file_size_key(vol, ino))).await?);
    let written = read_u64(tx.peek(&view.key(file_mtime_key(vol, ino))).await?) as i64;
    inode.mtime_ns = inode.mtime_ns.max(written);
    inode.ctime_ns = inode.ctime_ns.max(written);
    Ok(())
}
