//! Record batches as a produce request carries them: `batch::split`'s
//! header, length and CRC-32C checks, then the accessors the log uses on a
//! stored batch (`place`, `base_offset`, `offsets`, `max_timestamp`).
//!
//! Input: a selector byte, then either the raw records bytes (even
//! selector) or, odd, the fields of one batch that the project's own
//! encoder (`batch::encode_batch`) turns into a batch with a valid length
//! and CRC, so the fuzzer gets past the CRC to the checks behind it:
//! `count: u32 | attributes: i16 | timestamp: i64 | producer id: i64 |
//! records section...` (big-endian, missing bytes read as zero).
//!
//! Seeds: `BERTH_FUZZ_SEEDS=<dir>` writes valid batches to `<dir>` and exits.

#![no_main]

use berth_streams::batch::{self, Record};
use libfuzzer_sys::fuzz_target;

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
        if mode & 1 == 0 {
            check(rest.to_vec());
            return;
        }
        let mut head = [0u8; 22];
        let n = rest.len().min(head.len());
        head[..n].copy_from_slice(&rest[..n]);
        let section = &rest[n..];
        let count = u32::from_be_bytes(head[0..4].try_into().unwrap());
        let attributes = i16::from_be_bytes(head[4..6].try_into().unwrap());
        let ts = i64::from_be_bytes(head[6..14].try_into().unwrap());
        let pid = i64::from_be_bytes(head[14..22].try_into().unwrap());
        let producer = (pid >= 0).then_some((pid, 0, 0));
        let b = batch::encode_batch(section, count, attributes, ts, producer);
        // What a broker refuses: no records, more than i32 can count, and
        // transactional or control batches.
        let acceptable = (1..=i32::MAX as u32).contains(&count) && attributes & 0x30 == 0;
        assert_eq!(
            batch::split(&b).is_ok(),
            acceptable,
            "count {count}, attributes {attributes:#x}"
        );
        check(b);
    }
);

/// Splits `buf`; what it accepts must be well-formed for the log.
fn check(mut buf: Vec<u8>) {
    let Ok(infos) = batch::split(&buf) else {
        return;
    };
    let mut at = 0;
    for info in &infos {
        assert_eq!(info.start, at, "batches follow each other");
        assert!(info.len >= batch::HEADER_LEN);
        assert!(info.offsets >= 1);
        at += info.len;
    }
    assert_eq!(at, buf.len(), "batches cover the records");
    for (i, info) in infos.iter().enumerate() {
        let b = &mut buf[info.start..info.start + info.len];
        // The broker's placement is outside the CRC: the batch stays valid.
        let base = 1000 * i as i64;
        batch::place(b, base, 3);
        assert_eq!(batch::split(b).map(|v| v.len()), Ok(1));
        assert_eq!(batch::base_offset(b), base);
        assert_eq!(batch::offsets(b), i64::from(info.offsets));
        assert_eq!(batch::max_timestamp(b), info.max_timestamp);
    }
}

fn write_seeds(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).expect("seed dir");
    let kv = Record {
        key: Some(b"key"),
        value: Some(b"value"),
    };
    let tombstone = Record {
        key: Some(b"key"),
        value: None,
    };
    let mut two = batch::encode(&[kv, tombstone], 1_700_000_000_000, Some((7, 1, 42)));
    two.extend_from_slice(&batch::encode(&[kv], 1_700_000_000_001, None));
    let mut seeds = vec![
        batch::encode(&[kv], 0, None),
        batch::encode(&[kv, kv, tombstone], 5, Some((1, 0, 0))),
        two,
    ];
    for s in &mut seeds {
        s.insert(0, 0);
    }
    // Odd selector: the encoder's fields.
    let mut fields = vec![1u8];
    fields.extend_from_slice(&2u32.to_be_bytes());
    fields.extend_from_slice(&0i16.to_be_bytes());
    fields.extend_from_slice(&1_700_000_000_000i64.to_be_bytes());
    fields.extend_from_slice(&(-1i64).to_be_bytes());
    fields.extend_from_slice(&batch::encode_records(&[kv, tombstone]));
    seeds.push(fields);
    for (i, seed) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:02}")), seed).expect("seed written");
    }
}
