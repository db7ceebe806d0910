//! Log compaction's decoders (`compact::parse`: gzip, snappy raw and
//! xerial, lz4 frames, zstd, then the records) on stored batches, and its
//! encoder (`compact::rewrite`) round-tripped through them.
//!
//! Input: a selector byte, then
//! - selector < 0x80: a stored batch as is (any codec in its attributes);
//!   when it also passes the produce checks (`batch::split`), what `parse`
//!   accepts is rewritten with some of its records and parsed again;
//! - selector >= 0x80: an uncompressed records section behind a header from
//!   the project's encoder (record count: the selector's next byte), parsed,
//!   then rewritten compressed with codec `selector & 7` (xerial snappy if
//!   `selector & 8`) and parsed back: the kept records must come out as
//!   they went in.
//!
//! Seeds: `BERTH_FUZZ_SEEDS=<dir>` writes batches of every codec (made by
//! `compact::rewrite` itself) to `<dir>` and exits.

#![no_main]

use berth_streams::batch::{self, Record};
use berth_streams::compact::{self, Parsed};
use libfuzzer_sys::fuzz_target;

/// Base offset given to the batches built here.
const BASE: i64 = 1000;

fuzz_target!(
    init: {
        if let Some(dir) = std::env::var_os("BERTH_FUZZ_SEEDS") {
            write_seeds(std::path::Path::new(&dir));
            std::process::exit(0);
        }
    },
    |data: &[u8]| {
        let Some((&mode, rest)) = data.split_first() else {
            return;
        };
        if mode < 0x80 {
            let Ok(p) = compact::parse(rest) else {
                return;
            };
            check(rest, &p);
            // Compaction rewrites only stored batches, which passed the
            // produce checks (magic, CRC, counts) first.
            if batch::split(rest).is_ok_and(|b| b.len() == 1) {
                let keep: Vec<usize> = (0..p.keys.len()).step_by(2).collect();
                round_trip(rest, &p, &keep);
            }
            return;
        }
        let Some((&count, section)) = rest.split_first() else {
            return;
        };
        let mut plain = batch::encode_batch(section, count.into(), 0, 0, None);
        batch::place(&mut plain, BASE, 0);
        let Ok(mut p) = compact::parse(&plain) else {
            return;
        };
        check(&plain, &p);
        let codec = i16::from(mode & 7);
        if codec > 4 {
            return;
        }
        p.codec = codec;
        p.xerial = codec == 2 && mode & 8 != 0;
        let mut header = batch::encode_batch(&[], count.into(), codec, 0, None);
        batch::place(&mut header, BASE, 0);
        let keep: Vec<usize> = (0..p.keys.len()).collect();
        round_trip(&header, &p, &keep);
    }
);

/// What `parse` returns must describe the batch it read: one key per
/// record the header counts, at offsets inside the batch, ascending, whose
/// spans follow each other inside the records section.
fn check(b: &[u8], p: &Parsed) {
    let count = i32::from_be_bytes(b[57..61].try_into().unwrap());
    assert_eq!(p.keys.len(), usize::try_from(count).unwrap_or(0));
    let first = batch::base_offset(b);
    let last = first.saturating_add(batch::offsets(b) - 1);
    let mut end = 0;
    let mut prev = None;
    for k in &p.keys {
        assert!(
            (first..=last).contains(&k.offset),
            "record offset {} outside the batch's {first}..={last}",
            k.offset
        );
        assert!(prev < Some(k.offset), "record offsets not ascending");
        prev = Some(k.offset);
        assert_eq!(k.span.start, end);
        assert!(k.span.end <= p.records.len());
        end = k.span.end;
    }
}

/// Rewrites `b` (parsed as `p`) with the records `keep` and parses the
/// result: a valid batch at the same offsets with exactly those records.
fn round_trip(b: &[u8], p: &Parsed, keep: &[usize]) {
    if keep.is_empty() {
        return;
    }
    let out = compact::rewrite(b, p, keep).expect("every codec compresses");
    let info = batch::split(&out).expect("a rewritten batch passes the broker's checks");
    assert_eq!(info.len(), 1);
    assert_eq!(batch::base_offset(&out), batch::base_offset(b));
    assert_eq!(batch::offsets(&out), batch::offsets(b));
    let q = compact::parse(&out).expect("a rewritten batch parses");
    assert_eq!(q.codec, p.codec);
    assert_eq!(q.xerial, p.xerial);
    assert_eq!(q.keys.len(), keep.len());
    for (k, &i) in q.keys.iter().zip(keep) {
        let want = &p.keys[i];
        assert_eq!(
            (k.offset, &k.key, k.tombstone),
            (want.offset, &want.key, want.tombstone)
        );
        assert_eq!(q.records[k.span.clone()], p.records[want.span.clone()]);
    }
}

fn write_seeds(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).expect("seed dir");
    let recs = [
        Record {
            key: Some(b"a"),
            value: Some(b"1"),
        },
        Record {
            key: None,
            value: Some(b"2"),
        },
        Record {
            key: Some(b"b"),
            value: None,
        },
        Record {
            key: Some(b"a"),
            value: Some(b"hello hello hello hello"),
        },
    ];
    let section = batch::encode_records(&recs);
    let mut seeds = Vec::new();
    // Structured: the section, compressed by each codec on the way back.
    for mode in [0x80u8, 0x81, 0x82, 0x8a, 0x83, 0x84] {
        let mut s = vec![mode, recs.len() as u8];
        s.extend_from_slice(&section);
        seeds.push(s);
    }
    // Stored batches of every codec, compressed by compaction's own encoder.
    let mut plain = batch::encode_batch(&section, recs.len() as u32, 0, 0, None);
    batch::place(&mut plain, BASE, 0);
    let p = compact::parse(&plain).expect("the seed parses");
    let all: Vec<usize> = (0..recs.len()).collect();
    for (codec, xerial) in [
        (0, false),
        (1, false),
        (2, false),
        (2, true),
        (3, false),
        (4, false),
    ] {
        let mut header = batch::encode_batch(&[], recs.len() as u32, codec, 0, None);
        batch::place(&mut header, BASE, 0);
        let mut q = p.clone();
        q.codec = codec;
        q.xerial = xerial;
        let mut s = vec![0u8];
        s.extend_from_slice(&compact::rewrite(&header, &q, &all).expect("the seed compresses"));
        seeds.push(s);
    }
    for (i, seed) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:02}")), seed).expect("seed written");
    }
}
