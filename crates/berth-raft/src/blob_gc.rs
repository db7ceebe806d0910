//! Reclaiming blob segments (see berth-store `blobs`).
//!
//! A blob is referenced from a log entry of this node (its bytes moved out
//! when the entry was persisted) and, once applied, from the state machine
//! (a versioned value that is exactly the blob). A sealed segment (no
//! longer appended to, and pinned by no append whose reference is still
//! only in memory) is dead when neither the log nor the state refers to it
//! in one consistent store snapshot taken after it was listed: no reference
//! can appear later, since the only sources of new references to an old
//! blob are entries in the log (seen) and copies of state values (seen).
//!
//! A dead segment is deleted only when it was already dead at the previous
//! pass, an interval earlier, so a reader that fetched a reference just
//! before the value changed (a file read racing an overwrite, a Raft
//! snapshot being built) finishes with the bytes it asked for.
//!
//! Segments with some live blobs are kept whole: space taken by overwritten
//! data in them comes back only when all of their blobs are dead.

use std::collections::BTreeSet;
use std::sync::Arc;

use berth_store::{Space, Store, StoreError};

/// The two-pass collector's memory: segments found dead at the last pass.
#[derive(Default)]
pub(crate) struct BlobGc {
    suspects: BTreeSet<u64>,
}

impl BlobGc {
    /// One pass: finds the dead sealed segments and deletes those that were
    /// dead at the previous pass too. Returns how many were deleted.
    pub(crate) fn pass(&mut self, store: &Arc<Store>) -> Result<usize, StoreError> {
        let sealed = store.blobs().sealed();
        if sealed.is_empty() {
            self.suspects.clear();
            return Ok(0);
        }
        let view = store.snapshot();
        let mut live = BTreeSet::new();
        view.each_blob_ref(Space::Data, |r| {
            live.insert(r.segment);
        })?;
        let mut bad = 0usize;
        view.each_raw(
            Space::RaftLog,
            b"",
            b"",
            |_, rec| match crate::storage::entry_blob_refs(rec) {
                Some(refs) => {
                    for b in refs {
                        if let Some(r) = store.blobs().parse(&b) {
                            live.insert(r.segment);
                        }
                    }
                }
                None => bad += 1,
            },
        )?;
        if bad > 0 {
            // Unreadable log records might hold references: delete nothing.
            tracing::warn!(records = bad, "blob gc: undecodable log records; skipped");
            return Ok(0);
        }
        let dead: BTreeSet<u64> = sealed.into_iter().filter(|s| !live.contains(s)).collect();
        let mut removed = 0;
        for s in dead.intersection(&self.suspects) {
            store.blobs().remove(*s)?;
            removed += 1;
        }
        if removed > 0 {
            tracing::debug!(removed, "blob gc: deleted dead segments");
        }
        self.suspects = dead.difference(&self.suspects).copied().collect();
        Ok(removed)
    }
}
