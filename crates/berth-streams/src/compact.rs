//! Log compaction's view of record batches: the records section is
//! decompressed (gzip, snappy — raw or in the xerial framing the Java
//! client writes —, lz4 frames, zstd; all pure Rust) and each record's
//! offset, key, whether it is a tombstone (null value) and where its bytes
//! are is read ([`parse`]). [`rewrite`] builds the batch again with some of
//! its records: same base offset, same last offset delta (so the batch keeps
//! its key in the log and its offset range, as Kafka's cleaner does), same
//! timestamps and producer fields, the kept records' bytes untouched, the
//! section compressed again with the batch's own codec.

use std::io::{Read, Write};
use std::ops::Range;

use crate::batch;

/// Decompressed records larger than this are not examined (a batch is then
/// kept): a bound on what one small compressed batch can make us allocate.
pub const RECORDS_BYTES_MAX: u64 = 64 << 20;
/// Bytes of the batch header before the records.
const HEADER_LEN: usize = batch::HEADER_LEN;
const ATTRIBUTES_AT: usize = 21;
const CRC_AT: usize = 17;
const LAST_OFFSET_DELTA_AT: usize = 23;
const RECORDS_COUNT_AT: usize = 57;
/// The xerial snappy framing's magic (the Java client's).
const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00";

/// One record's place and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordKey {
    pub offset: i64,
    /// `None`: the record has no key (never compacted away).
    pub key: Option<Vec<u8>>,
    /// The value is null: a deletion marker.
    pub tombstone: bool,
    /// The record's bytes (length prefix included) in [`Parsed::records`].
    pub span: Range<usize>,
    /// The value's bytes in [`Parsed::records`] (`None`: null).
    pub value: Option<Range<usize>>,
}

/// A batch's records, decompressed.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub keys: Vec<RecordKey>,
    /// The records section, uncompressed.
    pub records: Vec<u8>,
    /// The attributes' codec bits (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd).
    pub codec: i16,
    /// Snappy in the xerial framing.
    pub xerial: bool,
}

/// The records of a stored batch (its base offset already placed). Err: the
/// batch cannot be read (unknown codec, corrupt, too large) — keep it.
pub fn record_keys(b: &[u8]) -> Result<Vec<RecordKey>, String> {
    parse(b).map(|p| p.keys)
}

/// Reads a stored batch's records; see [`record_keys`].
pub fn parse(b: &[u8]) -> Result<Parsed, String> {
    if b.len() < HEADER_LEN {
        return Err("short batch".into());
    }
    let base = batch::base_offset(b);
    let attributes = i16::from_be_bytes([b[ATTRIBUTES_AT], b[ATTRIBUTES_AT + 1]]);
    let count = i32::from_be_bytes(
        b[RECORDS_COUNT_AT..RECORDS_COUNT_AT + 4]
            .try_into()
            .map_err(|_| "count")?,
    );
    let last_delta = i32::from_be_bytes(
        b[LAST_OFFSET_DELTA_AT..LAST_OFFSET_DELTA_AT + 4]
            .try_into()
            .map_err(|_| "last offset delta")?,
    );
    let body = &b[HEADER_LEN..];
    let codec = attributes & 0x7;
    let records = match codec {
        0 => body.to_vec(),
        1 => read_bounded(flate2::read::MultiGzDecoder::new(body))?,
        2 => snappy(body)?,
        3 => read_bounded(lz4_flex::frame::FrameDecoder::new(body))?,
        4 => {
            let d = ruzstd::decoding::StreamingDecoder::new(body).map_err(|e| e.to_string())?;
            read_bounded(d)?
        }
        c => return Err(format!("unknown compression codec {c}")),
    };
    let mut r = Cursor {
        buf: &records,
        at: 0,
    };
    // Every record takes bytes: the count on the wire sizes nothing larger.
    let mut keys = Vec::with_capacity(usize::try_from(count).unwrap_or(0).min(records.len()));
    let mut prev_delta = -1;
    for _ in 0..count {
        let start = r.at;
        let len = r.varint()?;
        let end =
            r.at.checked_add(usize::try_from(len).map_err(|_| "negative record length")?)
                .filter(|e| *e <= r.buf.len())
                .ok_or("record past the end")?;
        // The fields are read within the record's length: a key running on
        // into the next record's bytes (or past the last record) is not
        // the record's key, and a rewrite copies only the record's bytes.
        let mut f = Cursor {
            buf: &records[..end],
            at: r.at,
        };
        let _attributes = f.byte()?;
        let _timestamp_delta = f.varint()?;
        let offset_delta = f.varint()?;
        // Producers number records 0.., compaction only removes some: the
        // deltas ascend within the batch. A record claiming any other
        // offset would decide which record of its key is the latest (and
        // so delete a later one), so such a batch is unreadable: kept whole.
        if offset_delta <= prev_delta || offset_delta > i64::from(last_delta) {
            return Err(format!(
                "record offset delta {offset_delta} after {prev_delta}, last {last_delta}"
            ));
        }
        prev_delta = offset_delta;
        let offset = base
            .checked_add(offset_delta)
            .ok_or("record offset past the end of the log")?;
        let key = f.bytes()?;
        let value = f.bytes()?;
        let value_at = value.map(|v| {
            let at = v.as_ptr() as usize - records.as_ptr() as usize;
            at..at + v.len()
        });
        keys.push(RecordKey {
            offset,
            key: key.map(<[u8]>::to_vec),
            tombstone: value.is_none(),
            span: start..end,
            value: value_at,
        });
        r.at = end; // headers are not needed
    }
    Ok(Parsed {
        keys,
        xerial: codec == 2 && body.starts_with(XERIAL_MAGIC),
        records,
        codec,
    })
}

/// Batch `b` (as parsed into `p`) with only the records `keep` (indexes
/// into `p.keys`, ascending, not empty): the header is kept but for the
/// record count, length and CRC; the kept records' bytes are copied as they
/// are (their offset and timestamp deltas still hold, since the base offset
/// and timestamp do not change) and compressed again with the batch's
/// codec. Err: the codec could not compress.
pub fn rewrite(b: &[u8], p: &Parsed, keep: &[usize]) -> Result<Vec<u8>, String> {
    let mut section = Vec::with_capacity(keep.iter().map(|i| p.keys[*i].span.len()).sum());
    for i in keep {
        section.extend_from_slice(&p.records[p.keys[*i].span.clone()]);
    }
    let section = compress(p.codec, p.xerial, section)?;
    let mut out = Vec::with_capacity(HEADER_LEN + section.len());
    out.extend_from_slice(&b[..HEADER_LEN]);
    out.extend_from_slice(&section);
    out[RECORDS_COUNT_AT..RECORDS_COUNT_AT + 4].copy_from_slice(&(keep.len() as i32).to_be_bytes());
    let len = i32::try_from(out.len() - 12).map_err(|_| "batch too large")?;
    out[8..12].copy_from_slice(&len.to_be_bytes());
    let crc = batch::crc32c(&out[ATTRIBUTES_AT..]);
    out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    Ok(out)
}

fn compress(codec: i16, xerial: bool, section: Vec<u8>) -> Result<Vec<u8>, String> {
    let err = |e: std::io::Error| e.to_string();
    Ok(match codec {
        0 => section,
        1 => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(&section).map_err(err)?;
            e.finish().map_err(err)?
        }
        2 => {
            let block = snap::raw::Encoder::new()
                .compress_vec(&section)
                .map_err(|e| e.to_string())?;
            if !xerial {
                return Ok(block);
            }
            // Magic, version 1, compatible version 1, one block.
            let mut out = XERIAL_MAGIC.to_vec();
            out.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1]);
            out.extend_from_slice(&(block.len() as u32).to_be_bytes());
            out.extend_from_slice(&block);
            out
        }
        3 => {
            // Independent blocks, no content size: what Kafka's own LZ4
            // stream reads.
            let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
            e.write_all(&section).map_err(err)?;
            e.finish().map_err(|e| e.to_string())?
        }
        4 => ruzstd::encoding::compress_to_vec(
            section.as_slice(),
            ruzstd::encoding::CompressionLevel::Fastest,
        ),
        c => return Err(format!("unknown compression codec {c}")),
    })
}

fn read_bounded(r: impl Read) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    r.take(RECORDS_BYTES_MAX + 1)
        .read_to_end(&mut out)
        .map_err(|e| e.to_string())?;
    if out.len() as u64 > RECORDS_BYTES_MAX {
        return Err("records too large to examine".into());
    }
    Ok(out)
}

/// Raw snappy, or xerial framing: magic, version and compatible version
/// (4 bytes each), then blocks of `length: u32 BE` + raw snappy.
fn snappy(body: &[u8]) -> Result<Vec<u8>, String> {
    let mut dec = snap::raw::Decoder::new();
    let mut one = |block: &[u8], out: &mut Vec<u8>| -> Result<(), String> {
        let n = snap::raw::decompress_len(block).map_err(|e| e.to_string())?;
        if out.len() as u64 + n as u64 > RECORDS_BYTES_MAX {
            return Err("records too large to examine".into());
        }
        let start = out.len();
        out.resize(start + n, 0);
        dec.decompress(block, &mut out[start..])
            .map_err(|e| e.to_string())?;
        Ok(())
    };
    let mut out = Vec::new();
    if !body.starts_with(XERIAL_MAGIC) {
        one(body, &mut out)?;
        return Ok(out);
    }
    let mut at = XERIAL_MAGIC.len() + 8;
    while at < body.len() {
        let len = body
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
            .ok_or("truncated xerial block")? as usize;
        let block = body
            .get(at + 4..at + 4 + len)
            .ok_or("truncated xerial block")?;
        one(block, &mut out)?;
        at += 4 + len;
    }
    Ok(out)
}

struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn byte(&mut self) -> Result<u8, String> {
        let b = *self.buf.get(self.at).ok_or("record truncated")?;
        self.at += 1;
        Ok(b)
    }

    /// A zigzag varint (Kafka's varint and varlong).
    fn varint(&mut self) -> Result<i64, String> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(((v >> 1) as i64) ^ -((v & 1) as i64));
            }
        }
        Err("varint too long".into())
    }

    /// A length-prefixed byte string; length -1 is null.
    fn bytes(&mut self) -> Result<Option<&'a [u8]>, String> {
        let len = self.varint()?;
        if len < 0 {
            return Ok(None);
        }
        let len = usize::try_from(len).map_err(|_| "length")?;
        let s = self
            .buf
            .get(self.at..self.at + len)
            .ok_or("record truncated")?;
        self.at += len;
        Ok(Some(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A record's key and value (`None`: null).
    type Kv<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

    /// A batch of records with these (key, value) pairs, the records section
    /// compressed with `codec` (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd),
    /// base offset 100.
    fn batch_with(records: &[Kv], codec: i16) -> Vec<u8> {
        let recs: Vec<batch::Record> = records
            .iter()
            .map(|&(key, value)| batch::Record { key, value })
            .collect();
        let body = batch::encode_records(&recs);
        let body = match codec {
            0 => body,
            1 => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(&body).unwrap();
                e.finish().unwrap()
            }
            2 => snap::raw::Encoder::new().compress_vec(&body).unwrap(),
            3 => {
                let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
                e.write_all(&body).unwrap();
                e.finish().unwrap()
            }
            4 => ruzstd::encoding::compress_to_vec(
                body.as_slice(),
                ruzstd::encoding::CompressionLevel::Fastest,
            ),
            _ => unreachable!(),
        };
        let mut b = batch::encode_batch(&body, recs.len() as u32, codec, 0, None);
        batch::place(&mut b, 100, 0);
        b
    }

    #[test]
    fn keys_come_out_of_every_codec() {
        let recs: [Kv; 3] = [
            (Some(b"a"), Some(b"1")),
            (None, Some(b"2")),
            (Some(b"b"), None),
        ];
        for codec in 0..=4 {
            let b = batch_with(&recs, codec);
            assert!(batch::split(&b).is_ok());
            let got: Vec<_> = record_keys(&b)
                .unwrap()
                .into_iter()
                .map(|r| (r.offset, r.key, r.tombstone))
                .collect();
            assert_eq!(
                got,
                vec![
                    (100, Some(b"a".to_vec()), false),
                    (101, None, false),
                    (102, Some(b"b".to_vec()), true),
                ],
                "codec {codec}"
            );
        }
    }

    #[test]
    fn rewritten_batches_keep_their_place_in_every_codec() {
        let recs: [Kv; 4] = [
            (Some(b"a"), Some(b"1")),
            (Some(b"b"), Some(b"2")),
            (Some(b"a"), Some(b"3")),
            (Some(b"c"), Some(b"4")),
        ];
        for codec in 0..=4 {
            let b = batch_with(&recs, codec);
            let p = parse(&b).unwrap();
            let out = rewrite(&b, &p, &[1, 2]).unwrap();
            // A valid batch (length, CRC) at the same offsets, same codec.
            let info = batch::split(&out).unwrap();
            assert_eq!(info.len(), 1, "codec {codec}");
            assert_eq!(info[0].offsets, 4, "codec {codec}");
            assert_eq!(batch::base_offset(&out), 100);
            let q = parse(&out).unwrap();
            assert_eq!(q.codec, codec);
            let got: Vec<_> = q.keys.iter().map(|r| (r.offset, r.key.clone())).collect();
            assert_eq!(
                got,
                vec![(101, Some(b"b".to_vec())), (102, Some(b"a".to_vec()))],
                "codec {codec}"
            );
        }
        // Xerial framing stays xerial.
        let mut framed = XERIAL_MAGIC.to_vec();
        framed.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1]);
        let body = batch::encode_records(
            &[batch::Record {
                key: Some(b"k"),
                value: Some(b"v"),
            }; 2],
        );
        let block = snap::raw::Encoder::new().compress_vec(&body).unwrap();
        framed.extend_from_slice(&(block.len() as u32).to_be_bytes());
        framed.extend_from_slice(&block);
        let mut b = batch::encode_batch(&framed, 2, 2, 0, None);
        batch::place(&mut b, 7, 0);
        let p = parse(&b).unwrap();
        assert!(p.xerial);
        let out = rewrite(&b, &p, &[1]).unwrap();
        assert!(out[batch::HEADER_LEN..].starts_with(XERIAL_MAGIC));
        assert_eq!(parse(&out).unwrap().keys[0].offset, 8);
    }

    #[test]
    fn xerial_snappy_and_garbage() {
        let body = b"hello snappy hello snappy";
        let block = snap::raw::Encoder::new().compress_vec(body).unwrap();
        let mut framed = XERIAL_MAGIC.to_vec();
        framed.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1]);
        framed.extend_from_slice(&(block.len() as u32).to_be_bytes());
        framed.extend_from_slice(&block);
        assert_eq!(snappy(&framed).unwrap(), body);
        let mut b = batch_with(&[(Some(b"k"), Some(b"v"))], 1);
        let n = b.len();
        b[n - 5] ^= 0xff;
        assert!(record_keys(&b).is_err());
        assert!(record_keys(&[0; 10]).is_err());
    }

    /// An uncompressed batch of `count` records around `section` as given,
    /// base offset 1000.
    fn raw_batch(section: &[u8], count: u32) -> Vec<u8> {
        let mut b = batch::encode_batch(section, count, 0, 0, None);
        batch::place(&mut b, 1000, 0);
        b
    }

    /// One record with this offset delta, key `k` and value `v`.
    fn record(delta: u8, out: &mut Vec<u8>) {
        // attributes, timestamp delta, offset delta (zigzag), key "k",
        // value "v", no headers
        let body = [0, 0, delta * 2, 2, b'k', 2, b'v', 0];
        out.push(body.len() as u8 * 2);
        out.extend_from_slice(&body);
    }

    /// Offset deltas must ascend within the batch's last offset delta: a
    /// record claiming a later offset would make compaction delete the
    /// real latest record of its key.
    #[test]
    fn refuses_records_out_of_their_batch() {
        let section = |deltas: &[u8]| {
            let mut s = Vec::new();
            for d in deltas {
                record(*d, &mut s);
            }
            s
        };
        // Two records left of three, as compaction leaves them.
        let mut compacted = raw_batch(&section(&[0, 2]), 3);
        compacted[RECORDS_COUNT_AT..RECORDS_COUNT_AT + 4].copy_from_slice(&2i32.to_be_bytes());
        let ok = parse(&compacted).unwrap();
        let offsets: Vec<i64> = ok.keys.iter().map(|k| k.offset).collect();
        assert_eq!(offsets, [1000, 1002], "gaps are fine (compacted)");
        // Batch of 2: last offset delta 1.
        for bad in [&[0, 0][..], &[1, 0], &[0, 5]] {
            let err = parse(&raw_batch(&section(bad), 2)).unwrap_err();
            assert!(err.contains("offset delta"), "{bad:?}: {err}");
        }
        // Found by fuzz/compaction (input: selector 0x8a, count 4, then
        // this section): the second record is 0 bytes long, and the fields
        // read after it, from the next record's bytes, claimed offset 1000
        // again. Refused now for both reasons.
        const SECTION: &[u8] =
            b"\x10\0\0\0\x02a\x01\0\0\0\0\0\0\0\x021\0\x0e\0\0\x02\x01\x022\0\x0e\
            \0\0\x04\x02b\x01\0<\0\0\x06\x02a.hello hello hel9lo hello\0";
        assert!(parse(&raw_batch(SECTION, 4)).is_err());
    }

    /// Found by fuzz/compaction: the last record's value ran past its
    /// length into the section's trailing bytes. Parsed, its key and value
    /// were not its own, and its rewritten batch (the record's bytes only)
    /// could not be parsed again. A record's fields stay within it now.
    #[test]
    fn record_fields_stay_within_the_record() {
        // Selector 0x82, count 4, then the section: records 0-2 are fine,
        // record 3 is 30 bytes long, but after its 23-byte key its value
        // runs past them.
        const SECTION: &[u8] = b"\x10\0\0\0\x02a\x021\0\x0e\0\0\x02\x01\x022\0\x0e\0\0\x04\x02b\
            \x01\0<\0\0\x06.hello\0\x02\x01\x022\0\x0e\0\0\x04\x02b\x01\0<\0\
            \0 hel\xa6\xa6\xa6\xa6\xa6\xa6\xa6\xa6\xa6\xa6\xa6\xa6\xa6\xa6\
            \xa6\xa6\xa6\xa6\xa6\xa6\xa6\xa6\xa6\xa6\xa6\xa6\xa6\xa6\xa6\xa6\
            \xa6\xa6\xa6\xa6\xa6\xa6\xa6\xa6\xa6\xa6\xa6\xa6\xa6\xa6\xa6\xa6\
            \xa6\xa6\xa6\xa6\xa6\xa6\xa6\xa6\xa6\xa6\xa6\xa6lo hello hello\0";
        let err = parse(&raw_batch(SECTION, 4)).unwrap_err();
        assert!(err.contains("truncated"), "{err}");
        // The same records without the overlong one parse.
        let three = parse(&raw_batch(&SECTION[..25], 3)).unwrap();
        assert_eq!(three.keys.len(), 3);
        assert_eq!(three.keys[2].span.end, 25);
    }
}
