//! Open files and their write-behind.
//!
//! A write is answered as soon as its bytes are queued: up to
//! [`IN_FLIGHT_MAX`] `Files.Write` calls of one handle run at once, so a
//! sequential writer keeps the cluster busy instead of waiting one round
//! trip per kernel request. Each call is durable when it returns, so
//! `fsync` and `flush` (close) only wait for the handle's calls in flight
//! and report the first failure; a failure also fails every later write of
//! that handle (the error is sticky). Writes that overlap one in flight wait
//! for it, so bytes land in the order they were written. Reads, attribute
//! reads and truncation of an inode first wait for the writes in flight on
//! it, so this mount always sees its own writes.

use std::sync::Arc;

use berth_api::v1::WriteRequest;
use berth_client::Client;
use fuser::Errno;
use parking_lot::Mutex;
use tokio::sync::Semaphore;

use crate::errors::call;

/// `Files.Write` calls in flight per open file.
pub const IN_FLIGHT_MAX: usize = 8;

/// One open file handle.
pub struct OpenFile {
    /// FUSE inode number.
    pub ino: u64,
    /// Path when opened (for log lines only; the handle names the file).
    pub path: String,
    /// The server-signed capability from `Files.Open`.
    pub handle: Vec<u8>,
    /// Opened for writing.
    pub write: bool,
    /// Its writes in flight.
    pub writes: Arc<Writes>,
}

/// The writes in flight of one open file.
pub struct Writes {
    /// One permit per call in flight; holding all of them means none is.
    slots: Arc<Semaphore>,
    /// Byte ranges `[start, end)` in flight.
    pending: Mutex<Vec<(u64, u64)>>,
    /// The first failure, reported by every later write, flush and fsync.
    error: Mutex<Option<Errno>>,
}

impl Default for Writes {
    fn default() -> Self {
        Writes {
            slots: Arc::new(Semaphore::new(IN_FLIGHT_MAX)),
            pending: Mutex::new(Vec::new()),
            error: Mutex::new(None),
        }
    }
}

impl Writes {
    /// The first failure of a write of this handle.
    pub fn error(&self) -> Option<Errno> {
        *self.error.lock()
    }

    /// True while writes are in flight.
    pub fn busy(&self) -> bool {
        !self.pending.lock().is_empty()
    }

    /// Waits until no write of this handle is in flight. Bounded: every call
    /// is (see [`crate::errors::call`]).
    pub async fn drain(&self) {
        // The semaphore is never closed, so acquiring cannot fail.
        if let Ok(all) = self.slots.acquire_many(IN_FLIGHT_MAX as u32).await {
            drop(all);
        }
    }

    /// Queues `data` at `offset`; returns once the call has started.
    pub async fn submit(
        self: &Arc<Self>,
        client: &Client,
        file: &OpenFile,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<(), Errno> {
        if let Some(e) = self.error() {
            return Err(e);
        }
        let end = offset.checked_add(data.len() as u64).ok_or(Errno::EFBIG)?;
        let overlaps = self
            .pending
            .lock()
            .iter()
            .any(|&(s, e)| s < end && offset < e);
        if overlaps {
            self.drain().await;
        }
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Errno::EIO)?;
        self.pending.lock().push((offset, end));
        let me = self.clone();
        let client = client.clone();
        let handle = file.handle.clone();
        let path = file.path.clone();
        // Shared, not copied, by every attempt of the call.
        let data = tonic::codegen::Bytes::from(data);
        tokio::spawn(async move {
            let r = call("write", &path, || {
                let mut c = client.files();
                let req = WriteRequest {
                    handle: handle.clone(),
                    offset,
                    data: data.clone(),
                };
                async move { c.write(req).await }
            })
            .await;
            if let Err(e) = r {
                me.error.lock().get_or_insert(e);
            }
            {
                let mut p = me.pending.lock();
                if let Some(i) = p.iter().position(|&r| r == (offset, end)) {
                    p.swap_remove(i);
                }
            }
            drop(permit);
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_every_slot() {
        let w = Arc::new(Writes::default());
        let permit = w.slots.clone().acquire_owned().await.unwrap();
        w.pending.lock().push((0, 10));
        assert!(w.busy());
        let w2 = w.clone();
        let waiter = tokio::spawn(async move { w2.drain().await });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        w.pending.lock().clear();
        drop(permit);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert!(!w.busy());
    }

    #[test]
    fn error_is_sticky() {
        let w = Writes::default();
        assert_eq!(w.error(), None);
        w.error.lock().get_or_insert(Errno::EDQUOT);
        w.error.lock().get_or_insert(Errno::EIO);
        assert_eq!(w.error(), Some(Errno::EDQUOT));
    }
}
