//! Update operators on documents: `update::Update::parse` on an update
//! specification and `arrayFilters` made from the input by the generator
//! (`berth_fuzz::Gen`: `$set $unset $inc $mul $min $max $rename $push`
//! with `$each $position $slice $sort`, `$addToSet $pop $pull $pullAll
//! $setOnInsert $currentDate $bit`, paths with the positional `$`, `$[]`
//! and `$[id]`, indexes past an array's end, malformed paths, and
//! replacement documents), then `apply` to a generated document, with and
//! without a positional match, inserting or not.
//!
//! Checks: nothing panics; a failed update leaves the document as it was,
//! and so does one that reports no change; a successful one leaves a
//! document that encodes, whose `_id` is the one it had (MongoDB's
//! immutable `_id`, compared by bytes) and of an allowed type, and whose
//! stored form is within 16 MiB or refused by `table::encode_doc` with an
//! error. Memory is bounded by libFuzzer's malloc limit (2 GiB in
//! `scripts/fuzz`): an update that builds a document far beyond what can
//! be stored is a finding.
//!
//! Seeds: `BERTH_FUZZ_SEEDS=<dir>` writes a few generator inputs.

#![no_main]

use berth_docs::table;
use berth_docs::update::{ApplyContext, Update};
use berth_fuzz::{value_bytes, Gen};
use bson::{Bson, DateTime, Document};
use libfuzzer_sys::fuzz_target;

/// What a stored document may take beyond 16 MiB: the stored form's
/// version byte.
const STORED_SLACK_BYTES: usize = 1;

fuzz_target!(
    init: {
        if let Some(dir) = std::env::var_os("BERTH_FUZZ_SEEDS") {
            write_seeds(std::path::Path::new(&dir));
            std::process::exit(0);
        }
    },
    |data: &[u8]| {
        let mut g = Gen::new(data);
        let spec = g.update();
        let filters = g.array_filters();
        let doc = g.stored_document();
        let ctx = ApplyContext {
            now: DateTime::from_millis(1_700_000_000_000),
            positional: match g.below(4) {
                0 => None,
                n => Some(n - 1),
            },
            inserting: g.bool(),
        };
        let Ok(update) = Update::parse(&spec, &filters) else {
            return;
        };
        let before = doc.to_vec().expect("a generated document encodes");
        let mut after = doc.clone();
        match update.apply(&mut after, &ctx) {
            Err(_) | Ok(false) => {
                assert_eq!(after.to_vec().unwrap(), before, "{spec} on {doc}: changed");
            }
            Ok(true) => {
                check_result(&spec, &doc, &after);
                // Applying again to the result must not panic either.
                let mut again = after.clone();
                if update.apply(&mut again, &ctx).is_ok() {
                    check_result(&spec, &after, &again);
                }
            }
        }
    }
);

fn check_result(spec: &Document, doc: &Document, after: &Document) {
    match (doc.get("_id"), after.get("_id")) {
        (Some(old), Some(new)) => assert_eq!(
            value_bytes(old),
            value_bytes(new),
            "{spec} on {doc}: _id changed to {new}"
        ),
        (Some(_), None) => panic!("{spec} on {doc}: _id removed"),
        (None, _) => {}
    }
    if let Some(id) = after.get("_id") {
        assert!(
            !matches!(
                id,
                Bson::Array(_) | Bson::RegularExpression(_) | Bson::Undefined
            ),
            "{spec} on {doc}: _id of a refused type: {id}"
        );
    }
    // Otherwise refused with an error: too deep or too large for a stored
    // document, or a field name BSON cannot hold.
    if let Ok(stored) = table::encode_doc(after) {
        assert!(stored.len() <= table::DOC_BYTES_MAX + STORED_SLACK_BYTES);
    }
}

fn write_seeds(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).expect("seed dir");
    let seeds: Vec<Vec<u8>> = vec![
        vec![100, 0, 0, 0, 2, 0, 1, 0, 3, 0, 0, 1, 2, 3],
        vec![100, 1, 7, 1, 8, 1, 0, 2, 2, 1, 0, 5, 6, 7, 8, 9],
        vec![100, 2, 8, 0, 9, 0, 10, 1, 1, 7, 9, 9, 1, 2, 3, 4, 5, 6],
        vec![10, 3, 0, 7, 1, 2, 0, 5, 6, 7, 8, 9, 10, 11, 12, 13],
        (0..64u8)
            .map(|i| i.wrapping_mul(29).wrapping_add(40))
            .collect(),
        (0..160u8)
            .map(|i| i.wrapping_mul(101).wrapping_add(33))
            .collect(),
    ];
    for (i, seed) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:02}")), seed).expect("seed written");
    }
}
