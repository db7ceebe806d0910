//! Reading the keys out of record batches, for log compaction: the records
//! section is decompressed (gzip, snappy — raw or in the xerial framing the
//! Java client writes —, lz4 frames, zstd; all decoders pure Rust) and each
//! record's offset, key and whether it is a tombstone (null value) are
//! read. Nothing is rewritten: compaction deletes whole batches whose every
//! record is superseded by a later record with the same key.

use std::io::Read;

use crate::batch;

/// Decompressed records larger than this are not examined (a batch is then
/// kept): a bound on what one small compressed batch can make us allocate.
pub const RECORDS_BYTES_MAX: u64 = 64 << 20;
/// Bytes of the batch header before the records.
const HEADER_LEN: usize = batch::HEADER_LEN;
const ATTRIBUTES_AT: usize = 21;
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
}

/// The records of a stored batch (its base offset already placed). Err: the
/// batch cannot be read (unknown codec, corrupt, too large) — keep it.
pub fn record_keys(b: &[u8]) -> Result<Vec<RecordKey>, String> {
    if b.len() < HEADER_LEN {
        return Err("short batch".into());
    }
    let base = batch::base_offset(b);
    let attributes = i16::from_be_bytes([b[ATTRIBUTES_AT], b[ATTRIBUTES_AT + 1]]);
    let count = i32::from_be_bytes(b[57..61].try_into().map_err(|_| "count")?);
    let body = &b[HEADER_LEN..];
    let records = match attributes & 0x7 {
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
    let mut out = Vec::with_capacity(usize::try_from(count).unwrap_or(0).min(1 << 16));
    for _ in 0..count {
        let len = r.varint()?;
        let end =
            r.at.checked_add(usize::try_from(len).map_err(|_| "negative record length")?)
                .filter(|e| *e <= r.buf.len())
                .ok_or("record past the end")?;
        let _attributes = r.byte()?;
        let _timestamp_delta = r.varint()?;
        let offset_delta = r.varint()?;
        let key = r.bytes()?;
        let value = r.bytes()?;
        out.push(RecordKey {
            offset: base + offset_delta,
            key: key.map(<[u8]>::to_vec),
            tombstone: value.is_none(),
        });
        r.at = end; // headers are not needed
    }
    Ok(out)
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
            let got = record_keys(&b).unwrap();
            assert_eq!(
                got,
                vec![
                    RecordKey {
                        offset: 100,
                        key: Some(b"a".to_vec()),
                        tombstone: false
                    },
                    RecordKey {
                        offset: 101,
                        key: None,
                        tombstone: false
                    },
                    RecordKey {
                        offset: 102,
                        key: Some(b"b".to_vec()),
                        tombstone: true
                    },
                ],
                "codec {codec}"
            );
        }
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
}
