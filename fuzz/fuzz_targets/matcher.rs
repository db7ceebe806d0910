//! Query filters against documents: `matcher::Filter::parse` on a filter
//! made from the input by the generator (`berth_fuzz::Gen`: conditions on
//! paths with every field operator, `$and`/`$or`/`$nor`, `$expr` with
//! expressions, `$regex` from PCRE pieces, and operators the engine
//! refuses), then `matches` and `match_details` on a few generated
//! documents. Parsing and matching must not panic, and regexes must stay
//! within the `regex` crate's bounds (a slow input is a finding).
//!
//! Checks (one of the four per input, chosen by it): where `f` parses,
//! `{$and: [f]}` and `{$or: [f]}` parse and match exactly the documents `f`
//! matches, `{$nor: [f]}` exactly the others, and `f` with `{$alwaysTrue:
//! 1}` beside it the same ones; where `f` is refused, so are they. A filter
//! matches a document the same way twice.
//!
//! Seeds: `BERTH_FUZZ_SEEDS=<dir>` writes a few generator inputs.

#![no_main]

use berth_docs::matcher::Filter;
use berth_fuzz::{Gen, DEPTH_MAX};
use bson::{Bson, Document};
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        if let Some(dir) = std::env::var_os("BERTH_FUZZ_SEEDS") {
            write_seeds(std::path::Path::new(&dir));
            std::process::exit(0);
        }
    },
    |data: &[u8]| {
        let mut g = Gen::new(data);
        let filter = g.filter(0);
        let n = 1 + g.below(4);
        let docs: Vec<Document> = (0..n).map(|_| g.stored_document()).collect();
        let which = g.below(4);
        check(&filter, &docs, which);
    }
);

/// The filters that must match as `f` does (`false`) or exactly where it
/// does not (`true`). One is checked per input: each parse compiles the
/// filter's regexes again, and the fuzzer's speed is its coverage.
fn equivalent(f: &Document, which: usize) -> (Document, bool) {
    let wrapped = |op: &str| {
        let mut d = Document::new();
        d.insert(op, vec![Bson::Document(f.clone())]);
        d
    };
    match which {
        0 => (wrapped("$and"), false),
        1 => (wrapped("$or"), false),
        2 => (wrapped("$nor"), true),
        _ => {
            let mut d = f.clone();
            d.insert("$alwaysTrue", 1);
            (d, false)
        }
    }
}

fn check(filter: &Document, docs: &[Document], which: usize) {
    let (other, negated) = equivalent(filter, which);
    let f = match Filter::parse(filter) {
        Ok(f) => f,
        Err(_) => {
            let o = Filter::parse(&other);
            assert!(o.is_err(), "{filter}: refused alone, parsed as {other}");
            return;
        }
    };
    // The generator nests at most DEPTH_MAX deep, far below the parser's
    // bound: one more level is no reason to refuse.
    const _: () = assert!(DEPTH_MAX + 2 < berth_docs::matcher::FILTER_DEPTH_MAX);
    let o = match Filter::parse(&other) {
        Ok(o) => o,
        // `$alwaysTrue` beside `f` replaces one `f` already has.
        Err(_) if which == 3 && filter.contains_key("$alwaysTrue") => return,
        Err(e) => panic!("{filter}: parsed alone, refused as {other}: {e}"),
    };
    for d in docs {
        let m = f.matches(d);
        assert_eq!(f.match_details(d).is_some(), m, "{filter} on {d}: twice");
        assert_eq!(o.matches(d), m != negated, "{filter} on {d}: {other}");
    }
}

fn write_seeds(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).expect("seed dir");
    // Generator inputs: arbitrary bytes are valid inputs; these lean to
    // operator documents, logical operators and $expr.
    let seeds: Vec<Vec<u8>> = vec![
        vec![3, 0, 0, 1, 2, 0, 9, 1, 4, 2, 0, 1, 3, 1, 2],
        vec![2, 6, 0, 3, 1, 0, 0, 5, 2, 1, 2, 0, 8, 7, 0, 3, 1, 2, 3, 4],
        vec![1, 8, 2, 0, 5, 3, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13],
        (0..64u8).collect(),
        (0..128u8).map(|i| i.wrapping_mul(37)).collect(),
        (0..200u8)
            .map(|i| i.wrapping_mul(101).wrapping_add(7))
            .collect(),
    ];
    for (i, seed) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:02}")), seed).expect("seed written");
    }
    // Show what the generator makes of them, for whoever writes seeds.
    if std::env::var_os("BERTH_FUZZ_SHOW").is_some() {
        for seed in &seeds {
            let mut g = Gen::new(seed);
            eprintln!("{}", g.filter(0));
        }
    }
}
