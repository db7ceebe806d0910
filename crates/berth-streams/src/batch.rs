//! Kafka record batches (format v2, "magic 2") as the broker sees them: a
//! header it reads and, for the offset and leader epoch, rewrites; the
//! records themselves (possibly compressed) are passed through untouched.
//!
//! ```text
//! baseOffset: i64 | batchLength: i32 | partitionLeaderEpoch: i32 | magic: i8 (= 2)
//! crc: u32 (CRC-32C of everything after it) | attributes: i16 | lastOffsetDelta: i32
//! baseTimestamp: i64 | maxTimestamp: i64 | producerId: i64 | producerEpoch: i16
//! baseSequence: i32 | recordsCount: i32 | records...
//! ```
//! `batchLength` counts the bytes after itself. The CRC does not cover the
//! base offset or the leader epoch, which is why a broker may set them.

/// Bytes before `batchLength`'s count starts (baseOffset + batchLength).
const LOG_OVERHEAD: usize = 12;
/// Smallest valid batch: the whole header with zero records.
pub const HEADER_LEN: usize = 61;
const MAGIC_AT: usize = 16;
const CRC_AT: usize = 17;
const ATTRIBUTES_AT: usize = 21;
const LAST_OFFSET_DELTA_AT: usize = 23;
const MAX_TIMESTAMP_AT: usize = 35;
const PRODUCER_ID_AT: usize = 43;
const PRODUCER_EPOCH_AT: usize = 51;
const BASE_SEQUENCE_AT: usize = 53;
const RECORDS_COUNT_AT: usize = 57;
/// Attributes bit: the batch belongs to a transaction.
const TRANSACTIONAL: i16 = 1 << 4;
/// Attributes bit: a transaction control batch.
const CONTROL: i16 = 1 << 5;

/// One batch's header fields the broker uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchInfo {
    /// Where the batch starts in the buffer given to [`split`].
    pub start: usize,
    /// Its total length in bytes.
    pub len: usize,
    /// Offsets it takes: `lastOffsetDelta + 1`.
    pub offsets: u32,
    pub max_timestamp: i64,
    /// -1 unless an idempotent producer wrote it.
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// Sequence number of the first record (-1 without a producer id).
    pub base_sequence: i32,
}

/// Splits a produce request's records into batches and checks each: magic 2,
/// consistent lengths, CRC-32C, a sane offset count, no transactional or
/// control batches (transactions are not supported). Err: why, for
/// CORRUPT_MESSAGE / INVALID_RECORD.
pub fn split(buf: &[u8]) -> Result<Vec<BatchInfo>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    if buf.is_empty() {
        return Err("no record batch".into());
    }
    while at < buf.len() {
        let rest = &buf[at..];
        if rest.len() < HEADER_LEN {
            return Err(format!(
                "truncated batch at byte {at}: {} bytes left",
                rest.len()
            ));
        }
        let batch_len = i32::from_be_bytes(rest[8..12].try_into().unwrap_or_default());
        let len = usize::try_from(batch_len)
            .ok()
            .and_then(|l| l.checked_add(LOG_OVERHEAD))
            .filter(|l| *l >= HEADER_LEN && *l <= rest.len())
            .ok_or_else(|| format!("batch at byte {at}: bad length {batch_len}"))?;
        let b = &rest[..len];
        if b[MAGIC_AT] != 2 {
            return Err(format!(
                "batch at byte {at}: magic {} (only record batch v2 is accepted)",
                b[MAGIC_AT]
            ));
        }
        let want = u32::from_be_bytes(b[CRC_AT..CRC_AT + 4].try_into().unwrap_or_default());
        let got = crc32c(&b[ATTRIBUTES_AT..]);
        if want != got {
            return Err(format!(
                "batch at byte {at}: CRC-32C {got:08x}, header says {want:08x}"
            ));
        }
        let attributes = i16::from_be_bytes([b[ATTRIBUTES_AT], b[ATTRIBUTES_AT + 1]]);
        if attributes & (TRANSACTIONAL | CONTROL) != 0 {
            return Err("transactional batches are not supported".into());
        }
        let delta = i32::from_be_bytes(
            b[LAST_OFFSET_DELTA_AT..LAST_OFFSET_DELTA_AT + 4]
                .try_into()
                .unwrap_or_default(),
        );
        let count = i32::from_be_bytes(
            b[RECORDS_COUNT_AT..RECORDS_COUNT_AT + 4]
                .try_into()
                .unwrap_or_default(),
        );
        // A producer's batch numbers its records 0..count, so the last delta
        // is count - 1 (compaction may leave gaps, but producers do not).
        if delta < 0 || count <= 0 || delta < count - 1 {
            return Err(format!(
                "batch at byte {at}: {count} records with last offset delta {delta}"
            ));
        }
        out.push(BatchInfo {
            start: at,
            len,
            offsets: delta as u32 + 1,
            max_timestamp: read_i64(b, MAX_TIMESTAMP_AT),
            producer_id: read_i64(b, PRODUCER_ID_AT),
            producer_epoch: i16::from_be_bytes([b[PRODUCER_EPOCH_AT], b[PRODUCER_EPOCH_AT + 1]]),
            base_sequence: i32::from_be_bytes(
                b[BASE_SEQUENCE_AT..BASE_SEQUENCE_AT + 4]
                    .try_into()
                    .unwrap_or_default(),
            ),
        });
        at += len;
    }
    Ok(out)
}

/// Gives a batch its place in the log: the base offset and the leader epoch
/// (neither is covered by the CRC).
pub fn place(batch: &mut [u8], base_offset: i64, leader_epoch: i32) {
    batch[0..8].copy_from_slice(&base_offset.to_be_bytes());
    batch[12..16].copy_from_slice(&leader_epoch.to_be_bytes());
}

/// The base offset of a stored batch.
pub fn base_offset(batch: &[u8]) -> i64 {
    read_i64(batch, 0)
}

/// Offsets a stored batch takes (its last offset delta + 1).
pub fn offsets(batch: &[u8]) -> i64 {
    batch
        .get(LAST_OFFSET_DELTA_AT..LAST_OFFSET_DELTA_AT + 4)
        .and_then(|s| s.try_into().ok())
        .map(|b| i64::from(i32::from_be_bytes(b)) + 1)
        .unwrap_or(1)
        .max(1)
}

/// The max timestamp of a stored batch.
pub fn max_timestamp(batch: &[u8]) -> i64 {
    read_i64(batch, MAX_TIMESTAMP_AT)
}

fn read_i64(b: &[u8], at: usize) -> i64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(i64::from_be_bytes)
        .unwrap_or(-1)
}

/// One record to encode: key and value, `None` for null.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
}

/// Who wrote a batch, for idempotent producers: id, epoch, first sequence.
pub type Producer = (i64, i16, i32);

/// The records section of a batch (uncompressed): offset deltas 0.., no
/// timestamp deltas, no headers.
pub fn encode_records(records: &[Record]) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let mut one = vec![0u8]; // attributes
        zigzag(0, &mut one); // timestamp delta
        zigzag(i as i64, &mut one); // offset delta
        for field in [r.key, r.value] {
            match field {
                Some(b) => {
                    zigzag(b.len() as i64, &mut one);
                    one.extend_from_slice(b);
                }
                None => zigzag(-1, &mut one),
            }
        }
        zigzag(0, &mut one); // headers
        zigzag(one.len() as i64, &mut body);
        body.extend_from_slice(&one);
    }
    body
}

/// A whole batch around a records section of `count` records, `section`
/// compressed with `codec` (the attributes' low bits) or not (0), with a
/// valid CRC; base offset 0 (the broker places it). A `count` of 0 or above
/// `i32::MAX` gives a batch that [`split`] refuses.
pub fn encode_batch(
    section: &[u8],
    count: u32,
    codec: i16,
    timestamp_ms: i64,
    producer: Option<Producer>,
) -> Vec<u8> {
    let (pid, epoch, seq) = producer.unwrap_or((-1, -1, -1));
    let mut b = Vec::with_capacity(HEADER_LEN + section.len());
    b.extend_from_slice(&0i64.to_be_bytes()); // base offset
    b.extend_from_slice(&0i32.to_be_bytes()); // length, set below
    b.extend_from_slice(&(-1i32).to_be_bytes()); // partition leader epoch
    b.push(2);
    b.extend_from_slice(&0u32.to_be_bytes()); // crc, set below
    b.extend_from_slice(&codec.to_be_bytes());
    // Wrapping: an unrepresentable count makes a refused batch, not a panic.
    b.extend_from_slice(&(count as i32).wrapping_sub(1).to_be_bytes());
    b.extend_from_slice(&timestamp_ms.to_be_bytes());
    b.extend_from_slice(&timestamp_ms.to_be_bytes());
    b.extend_from_slice(&pid.to_be_bytes());
    b.extend_from_slice(&epoch.to_be_bytes());
    b.extend_from_slice(&seq.to_be_bytes());
    b.extend_from_slice(&(count as i32).to_be_bytes());
    b.extend_from_slice(section);
    let len = (b.len() - LOG_OVERHEAD) as i32;
    b[8..12].copy_from_slice(&len.to_be_bytes());
    let crc = crc32c(&b[ATTRIBUTES_AT..]);
    b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    b
}

/// An uncompressed batch of `records`.
pub fn encode(records: &[Record], timestamp_ms: i64, producer: Option<Producer>) -> Vec<u8> {
    encode_batch(
        &encode_records(records),
        records.len() as u32,
        0,
        timestamp_ms,
        producer,
    )
}

/// Appends a zigzag varint (Kafka's varint and varlong).
fn zigzag(v: i64, out: &mut Vec<u8>) {
    let mut u = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        let b = (u & 0x7f) as u8;
        u >>= 7;
        if u == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// CRC-32C (Castagnoli), as Kafka's batches use; the `crc32c` crate uses
/// the CPU's CRC instruction where there is one (SSE 4.2, ARMv8).
pub fn crc32c(data: &[u8]) -> u32 {
    ::crc32c::crc32c(data)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A batch of `n` records without key or value, max timestamp `ts`.
    pub fn batch(n: u32, max_ts: i64) -> Vec<u8> {
        let r = Record {
            key: None,
            value: None,
        };
        encode(&vec![r; n as usize], max_ts, None)
    }

    #[test]
    fn crc32c_known_value() {
        // RFC 3720 test vector: 32 bytes of zeros.
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn splits_and_checks_batches() {
        let mut two = batch(3, 10);
        two.extend_from_slice(&batch(1, 20));
        let got = split(&two).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].offsets, 3);
        assert_eq!(got[1].offsets, 1);
        assert_eq!(got[1].start, got[0].len);
        assert_eq!(got[1].max_timestamp, 20);
    }

    #[test]
    fn placing_keeps_the_crc_valid() {
        let mut b = batch(2, 0);
        place(&mut b, 1234, 7);
        assert_eq!(base_offset(&b), 1234);
        assert!(split(&b).is_ok());
    }

    #[test]
    fn refuses_bad_batches() {
        let good = batch(2, 0);
        let mut bad_crc = good.clone();
        let last = bad_crc.len() - 1;
        bad_crc[last] ^= 1;
        assert!(split(&bad_crc).unwrap_err().contains("CRC"));
        let mut magic = good.clone();
        magic[MAGIC_AT] = 1;
        assert!(split(&magic).unwrap_err().contains("magic"));
        assert!(split(&good[..good.len() - 1]).is_err());
        assert!(split(&[]).is_err());
        let mut txn = good.clone();
        txn[ATTRIBUTES_AT + 1] |= TRANSACTIONAL as u8;
        let crc = crc32c(&txn[ATTRIBUTES_AT..]);
        txn[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        assert!(split(&txn).unwrap_err().contains("transactional"));
    }

    /// Found by fuzz/record_batch: a count above i32::MAX overflowed the
    /// last offset delta (input: selector 1, count 0x8000_0000, the rest
    /// zero, a 20-byte section ending in b'5').
    #[test]
    fn unrepresentable_counts_make_refused_batches() {
        let mut section = [0u8; 20];
        section[19] = b'5';
        for count in [0, 1 << 31, u32::MAX] {
            let b = encode_batch(&section, count, 0, 0, Some((0, 0, 0)));
            assert!(split(&b).is_err(), "{count}");
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = split(&bytes);
        }
    }
}
