//! Files unlinked while open in this mount.
//!
//! POSIX keeps a file whose last name goes alive for the descriptors still
//! open on it. When the kernel unlinks (or renames over) a file this mount
//! holds open, the mount asks the server to keep it (`Keep` in
//! `Inodes.Remove`/`Rename`, with this mount's holder id): the server drops
//! the name and keeps the inode, link count 0, data intact. The mount then
//! renews the file's lease every third of it (`Inodes.KeepOrphans`) and
//! releases it at the last close (`Inodes.ReleaseOrphan`), when the server
//! deletes it. If the mount dies, renewals stop and the server deletes the
//! file once the lease lapses; at unmount, whatever is still kept is
//! released.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_api::v1::{KeepOrphansRequest, ReleaseOrphanRequest};
use berth_client::Client;
use parking_lot::Mutex;
use tokio::runtime::Handle;

use crate::errors::call;

/// Inodes named per renewal call (the server's bound).
const PER_CALL_MAX: usize = 1024;
/// Longest wait for releases at unmount.
const RELEASE_WAIT_MS: u64 = 3_000;

#[derive(Default)]
struct State {
    /// FUSE inode → (volume, inode) of each file kept for this mount.
    kept: HashMap<u64, (u64, u64)>,
    lease_ms: u64,
    renewing: bool,
}

pub struct Orphans {
    client: Client,
    holder: u64,
    state: Mutex<State>,
}

/// splitmix64's finaliser: spreads a seed over every bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Orphans {
    pub fn new(client: Client) -> Arc<Orphans> {
        // Unique per mount instance (time, process, a counter), never 0;
        // the server also checks the principal, so it need not be secret.
        static INSTANCES: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let pid = u64::from(std::process::id());
        let n = INSTANCES.fetch_add(1, Ordering::Relaxed);
        Arc::new(Orphans {
            client,
            holder: mix(nanos ^ (pid << 40) ^ n.rotate_left(20)) | 1,
            state: Mutex::new(State::default()),
        })
    }

    /// This mount's holder id.
    pub fn holder(&self) -> u64 {
        self.holder
    }

    /// Whether FUSE inode `ino` is kept for this mount.
    pub fn is_kept(&self, ino: u64) -> bool {
        self.state.lock().kept.contains_key(&ino)
    }

    /// The server kept `(volume, inode)` (FUSE `ino`) for this mount with
    /// a `lease_ms` lease: renew it until released.
    pub fn kept(self: &Arc<Self>, rt: &Handle, ino: u64, volume: u64, inode: u64, lease_ms: u64) {
        let start = {
            let mut st = self.state.lock();
            st.kept.insert(ino, (volume, inode));
            if lease_ms > 0 {
                st.lease_ms = if st.lease_ms == 0 {
                    lease_ms
                } else {
                    st.lease_ms.min(lease_ms)
                };
            }
            !std::mem::replace(&mut st.renewing, true)
        };
        if start {
            rt.spawn(renew(Arc::downgrade(self)));
        }
    }

    /// The last handle of `ino` closed: releases it on the server.
    pub async fn release(&self, ino: u64) {
        let Some((volume, inode)) = self.state.lock().kept.remove(&ino) else {
            return;
        };
        let r = call("release orphan", "", || {
            let mut c = self.client.inodes();
            let req = ReleaseOrphanRequest {
                volume_id: volume,
                holder: self.holder,
                inode,
            };
            async move { c.release_orphan(req).await }
        })
        .await;
        if let Err(e) = r {
            tracing::warn!(volume, inode, errno = ?e, "could not release a file unlinked while open; the server deletes it when its lease lapses");
        }
    }

    /// Unmount: releases every file still kept (bounded).
    pub async fn release_all(&self) {
        let inos: Vec<u64> = self.state.lock().kept.keys().copied().collect();
        let all = async {
            for ino in inos {
                self.release(ino).await;
            }
        };
        if tokio::time::timeout(Duration::from_millis(RELEASE_WAIT_MS), all)
            .await
            .is_err()
        {
            tracing::warn!("unmount: files unlinked while open are left to their leases");
        }
    }

    /// One renewal round; returns how long to wait for the next, or `None`
    /// when nothing is kept any more.
    async fn renew_once(&self) -> Option<Duration> {
        let (by_volume, lease_ms) = {
            let mut st = self.state.lock();
            if st.kept.is_empty() {
                st.renewing = false;
                return None;
            }
            let mut by_volume: HashMap<u64, Vec<(u64, u64)>> = HashMap::new();
            for (ino, (volume, inode)) in &st.kept {
                by_volume.entry(*volume).or_default().push((*ino, *inode));
            }
            (by_volume, st.lease_ms)
        };
        let every = Duration::from_millis((lease_ms / 3).max(50));
        for (volume, files) in by_volume {
            for chunk in files.chunks(PER_CALL_MAX) {
                let inodes: Vec<u64> = chunk.iter().map(|(_, i)| *i).collect();
                let r = call("keep orphans", "", || {
                    let mut c = self.client.inodes();
                    let req = KeepOrphansRequest {
                        volume_id: volume,
                        holder: self.holder,
                        inodes: inodes.clone(),
                    };
                    async move { c.keep_orphans(req).await }
                })
                .await;
                match r {
                    Ok(resp) => {
                        let mut st = self.state.lock();
                        if resp.lease_ms > 0 {
                            st.lease_ms = resp.lease_ms;
                        }
                        for gone in resp.gone {
                            if let Some((ino, _)) = chunk.iter().find(|(_, i)| *i == gone) {
                                tracing::warn!(
                                    volume,
                                    inode = gone,
                                    "a file unlinked while open here is gone on the server"
                                );
                                st.kept.remove(ino);
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(volume, errno = ?e, "renewing files unlinked while open failed; retrying")
                    }
                }
            }
        }
        Some(every)
    }
}

/// Renews the mount's kept files every third of their lease while any is
/// kept and the mount lives.
async fn renew(me: Weak<Orphans>) {
    loop {
        let wait = match me.upgrade() {
            Some(o) => {
                let lease = o.state.lock().lease_ms;
                Duration::from_millis((lease / 3).max(50))
            }
            None => return,
        };
        tokio::time::sleep(wait).await;
        let Some(o) = me.upgrade() else {
            return;
        };
        if o.renew_once().await.is_none() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::mix;

    #[test]
    fn holder_ids_spread() {
        assert_ne!(mix(1), mix(2));
        assert_ne!(mix(0) | 1, 0);
    }
}
