//! Query filters against documents: `matcher::Filter::parse` on a filter
//! made from the input by the generator (`berth_fuzz::Gen`: conditions on
//! paths with every field operator, `$and`/`$or`/`$nor`, `$expr` with
//! expressions, `$regex` from PCRE pieces, and operators the engine
//! refuses), then `matches` and `match_details` on a few generated
//! documents. Parsing and matching must not panic, and regexes must stay
//! within the `regex` crate's bounds (a slow input is a finding).
//!
//! Checks: where `f` parses, `{$and: [f]}` and `{$or: [f]}` parse and match
//! exactly the documents `f` matches, `{$nor: [f]}` exactly the others,
//! and `f` with `{$alwaysTrue: 1}` beside it the same ones; where `f` is
//! refused, so are they. A filter matches a document the same way twice.
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
        check(&filter, &docs);
    }
);

fn wrapped(op: &str, f: &Document) -> Document {
    let mut d = Document::new();
    d.insert(op, vec![Bson::Document(f.clone())]);
    d
}

fn check(filter: &Document, docs: &[Document]) {
    let parsed = Filter::parse(filter);
    let and = Filter::parse(&wrapped("$and", filter));
    let or = Filter::parse(&wrapped("$or", filter));
    let nor = Filter::parse(&wrapped("$nor", filter));
    let mut with_true = filter.clone();
    with_true.insert("$alwaysTrue", 1);
    let with_true = Filter::parse(&with_true);
    let f = match parsed {
        Ok(f) => f,
        Err(_) => {
            assert!(and.is_err(), "{filter}: refused alone, parsed in $and");
            assert!(or.is_err(), "{filter}: refused alone, parsed in $or");
            assert!(nor.is_err(), "{filter}: refused alone, parsed in $nor");
            return;
        }
    };
    // The generator nests at most DEPTH_MAX deep, far below the parser's
    // bound: one more level is no reason to refuse.
    const _: () = assert!(DEPTH_MAX + 2 < berth_docs::matcher::FILTER_DEPTH_MAX);
    let and = and.unwrap_or_else(|e| panic!("{filter}: parsed alone, refused in $and: {e}"));
    let or = or.unwrap_or_else(|e| panic!("{filter}: parsed alone, refused in $or: {e}"));
    let nor = nor.unwrap_or_else(|e| panic!("{filter}: parsed alone, refused in $nor: {e}"));
    // `$alwaysTrue` beside `f`: refused only where `f` already names it.
    let with_true = match with_true {
        Ok(w) => Some(w),
        Err(e) => {
            assert!(filter.contains_key("$alwaysTrue"), "{filter}: {e}");
            None
        }
    };
    for d in docs {
        let m = f.matches(d);
        assert_eq!(f.match_details(d).is_some(), m, "{filter} on {d}: twice");
        assert_eq!(and.matches(d), m, "{filter} on {d}: $and");
        assert_eq!(or.matches(d), m, "{filter} on {d}: $or");
        assert_eq!(nor.matches(d), !m, "{filter} on {d}: $nor");
        if let Some(w) = &with_true {
            assert_eq!(w.matches(d), m, "{filter} on {d}: with $alwaysTrue");
        }
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
