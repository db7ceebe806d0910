//! Retryable writes: a statement of a write sent with a session and a
//! `txnNumber` leaves a mark in the same transaction as its change, keyed
//! by the session, the number and the statement's index, holding its
//! outcome. A driver that retries the command (after a lost connection or
//! an election) gets the recorded outcome for the statements already
//! applied, which are not applied again.
//!
//! Marks live in the table's volume (`vol · TableChange · 3 · bytes(lsid) ·
//! u64(txnNumber) · u64(stmt)`) and are removed once older than
//! [`MARK_TTL_MS`] (MongoDB's `logicalSessionTimeoutMinutes`, after which
//! a driver no longer retries).

use berth_store::keys::{object_range, Key, Kind};
use bson::{doc, Bson, Document};

use crate::DocError;

/// How long a mark is kept.
pub const MARK_TTL_MS: i64 = 30 * 60 * 1000;

/// One statement of a retryable write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stmt<'a> {
    pub lsid: &'a [u8],
    pub txn_number: i64,
    pub index: u64,
    /// Whether the mark keeps the document the statement returns
    /// (`findAndModify`'s before or after image, the document it removed).
    pub image: bool,
}

impl Stmt<'_> {
    /// The key of its mark in volume `vol`.
    pub fn key(&self, vol: u64) -> Vec<u8> {
        Key::new(vol, Kind::TableChange, 3)
            .bytes(self.lsid)
            .u64(self.txn_number as u64)
            .u64(self.index)
            .build()
    }

    /// The range of the marks of the session's previous `txnNumber`: a
    /// driver uses a session for one command at a time, so a new number
    /// means the earlier ones are never retried, and the write that
    /// leaves the new mark removes them. Drivers number a session's
    /// writes one after the other, so the previous number holds what is
    /// left; the marks of a number skipped over (used on another volume,
    /// or by a transaction) wait for the sweep ([`MARK_TTL_MS`]). Only
    /// that one number: the store deletes a range by walking it, and the
    /// session's older numbers are a run of deleted keys that would be
    /// walked again by every write.
    pub fn stale_range(&self, vol: u64) -> (Vec<u8>, Vec<u8>) {
        let session = Key::new(vol, Kind::TableChange, 3).bytes(self.lsid);
        (
            session
                .clone()
                .u64(self.txn_number.saturating_sub(1).max(0) as u64)
                .build(),
            session.u64(self.txn_number as u64).build(),
        )
    }
}

/// The range of every mark of a volume.
pub fn marks_range(vol: u64) -> (Vec<u8>, Vec<u8>) {
    object_range(vol, Kind::TableChange, 3)
}

/// What an applied statement did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Outcome {
    /// Documents inserted, matched or deleted.
    pub n: u64,
    pub modified: u64,
    pub upserted: Option<Bson>,
    /// The document returned, when the statement keeps it.
    pub image: Option<Document>,
}

impl Outcome {
    pub fn encode(&self, now: bson::DateTime) -> Vec<u8> {
        let mut d = doc! {"n": self.n as i64, "m": self.modified as i64, "w": now};
        if let Some(u) = &self.upserted {
            d.insert("u", u.clone());
        }
        if let Some(i) = &self.image {
            d.insert("i", i.clone());
        }
        let mut out = Vec::new();
        // A document of plain values always serializes.
        d.to_writer(&mut out).unwrap_or_default();
        out
    }

    pub fn decode(raw: &[u8]) -> Result<(Outcome, bson::DateTime), DocError> {
        let d = Document::from_reader(raw)
            .map_err(|e| DocError::internal(format!("retryable write mark: {e}")))?;
        Ok((
            Outcome {
                n: d.get_i64("n").unwrap_or(0) as u64,
                modified: d.get_i64("m").unwrap_or(0) as u64,
                upserted: d.get("u").cloned(),
                image: d.get_document("i").ok().cloned(),
            },
            d.get_datetime("w").copied().unwrap_or(bson::DateTime::MIN),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip_and_sort_by_session() {
        let o = Outcome {
            n: 1,
            modified: 1,
            upserted: Some(Bson::Int32(4)),
            image: Some(doc! {"_id": 4, "a": [1]}),
        };
        let now = bson::DateTime::from_millis(9);
        assert_eq!(Outcome::decode(&o.encode(now)).unwrap(), (o, now));
        let s = |i| Stmt {
            lsid: b"session",
            txn_number: 3,
            index: i,
            image: false,
        };
        let (start, end) = marks_range(1);
        assert!(start <= s(0).key(1) && s(0).key(1) < s(1).key(1) && s(1).key(1) < end);
        let earlier = Stmt {
            txn_number: 2,
            ..s(7)
        };
        let (from, to) = s(0).stale_range(1);
        assert!(from <= earlier.key(1) && earlier.key(1) < to);
        assert!(to <= s(0).key(1));
        let other = Stmt {
            lsid: b"sessio",
            ..earlier
        };
        assert!(!(from <= other.key(1) && other.key(1) < to));
    }
}
