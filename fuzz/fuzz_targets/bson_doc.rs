//! A BSON document as a client sends one: the gateway's bounded walk
//! (`guard::check`: lengths, types, nesting, element count) and then
//! `bson::Document::from_reader` on what it accepted, then the document
//! engine's own code over the decoded document:
//! - the stored form (`table::encode_doc`, `decode_doc`) and BSON
//!   re-encoding round-trip to the same bytes, and the walk accepts the
//!   re-encoding and counts exactly the decoded document's elements;
//! - the order-preserving key encoding (`keys::encode_value`) agrees with
//!   MongoDB's order (`order::compare`) on every pair of values taken from
//!   the document (every field value at every depth, and the document
//!   itself), is prefix-free, and compound keys (`keys::encode_key`, with
//!   descending components) order component by component.
//!
//! Seeds: `BERTH_FUZZ_SEEDS=<dir>` writes documents with every BSON type,
//! nested documents and arrays, and numbers that compare across types.

#![no_main]

use std::cmp::Ordering;

use berth_docs::{keys, order, table};
use berth_fuzz::{count_elements, depth};
use berth_mongo::fuzzing::{guard_check, Counter, DEPTH_MAX};
use bson::{doc, Bson, Document};
use libfuzzer_sys::fuzz_target;

/// Values taken from one document for the pairwise checks, at most.
const VALUES_MAX: usize = 32;

fuzz_target!(
    init: {
        if let Some(dir) = std::env::var_os("BERTH_FUZZ_SEEDS") {
            write_seeds(std::path::Path::new(&dir));
            std::process::exit(0);
        }
    },
    |data: &[u8]| {
        let mut counter = Counter::new(berth_mongo::ELEMENTS_MAX_DEFAULT);
        let Ok(len) = guard_check(data, &mut counter) else {
            return;
        };
        assert!(len >= 5 && len <= data.len());
        // UTF-8 validity is left to the decoder, which fails cleanly.
        let Ok(doc) = Document::from_reader(&data[..len]) else {
            return;
        };
        // A decoded document never holds more than was walked (a repeated
        // name keeps one value); the decoded-size charge is an upper bound.
        let elements = count_elements(&doc);
        assert!(elements <= counter.elements, "{elements} > {}", counter.elements);
        assert!(depth(&doc) <= DEPTH_MAX);
        round_trips(&doc, elements);
        keys_agree_with_the_order(&doc);
    }
);

fn round_trips(doc: &Document, elements: usize) {
    let bytes = doc.to_vec().expect("a decoded document encodes");
    let mut counter = Counter::new(usize::MAX);
    assert_eq!(
        guard_check(&bytes, &mut counter),
        Ok(bytes.len()),
        "the walk accepts an encoded document"
    );
    assert_eq!(counter.elements, elements, "the walk counts every element");
    let again = Document::from_reader(&bytes[..]).expect("an encoded document decodes");
    assert_eq!(again.to_vec().unwrap(), bytes, "decode(encode(d)) == d");

    match table::encode_doc(doc) {
        Ok(stored) => {
            let back = table::decode_doc(&stored).expect("a stored document reads back");
            assert_eq!(back.to_vec().unwrap(), bytes, "the stored form round-trips");
        }
        Err(e) => assert!(depth(doc) > table::DOC_DEPTH_MAX, "encode_doc refused: {e}"),
    }
}

fn collect<'a>(v: &'a Bson, out: &mut Vec<&'a Bson>) {
    if out.len() >= VALUES_MAX {
        return;
    }
    out.push(v);
    match v {
        Bson::Document(d) => d.values().for_each(|x| collect(x, out)),
        Bson::Array(a) => a.iter().for_each(|x| collect(x, out)),
        Bson::JavaScriptCodeWithScope(c) => c.scope.values().for_each(|x| collect(x, out)),
        _ => {}
    }
}

fn enc(v: &Bson) -> Vec<u8> {
    let mut out = Vec::new();
    keys::encode_value(v, &mut out);
    out
}

fn keys_agree_with_the_order(doc: &Document) {
    let whole = Bson::Document(doc.clone());
    let mut values = Vec::new();
    collect(&whole, &mut values);
    let encoded: Vec<Vec<u8>> = values.iter().map(|v| enc(v)).collect();
    for (i, (a, ea)) in values.iter().zip(&encoded).enumerate() {
        for (b, eb) in values[i..].iter().zip(&encoded[i..]) {
            let want = order::compare(a, b);
            assert_eq!(ea.cmp(eb), want, "{a:?} vs {b:?}: {ea:02x?} vs {eb:02x?}");
            assert_eq!(order::compare(b, a), want.reverse(), "{a:?} vs {b:?}");
            // Prefix-free: no encoding is a proper prefix of another.
            if ea.len() != eb.len() {
                let (short, long) = if ea.len() < eb.len() {
                    (ea, eb)
                } else {
                    (eb, ea)
                };
                assert!(!long.starts_with(short), "{a:?} and {b:?}: prefix");
            }
        }
    }
    // Compound keys: two components, each ascending or descending, compare
    // component by component.
    let n = values.len().min(6);
    for i in 0..n {
        for j in 0..n {
            let (x1, y1, x2, y2) = (values[i], values[j], values[j], values[(i + j) % n]);
            for desc in 0..4u8 {
                let (d1, d2) = (desc & 1 == 1, desc & 2 == 2);
                let k1 = keys::encode_key(&[(x1.clone(), d1), (y1.clone(), d2)]);
                let k2 = keys::encode_key(&[(x2.clone(), d1), (y2.clone(), d2)]);
                let dir = |o: Ordering, d: bool| if d { o.reverse() } else { o };
                let want = dir(order::compare(x1, x2), d1).then(dir(order::compare(y1, y2), d2));
                assert_eq!(
                    k1.cmp(&k2),
                    want,
                    "({x1:?}, {y1:?}) vs ({x2:?}, {y2:?}) {desc}"
                );
            }
        }
    }
}

fn write_seeds(dir: &std::path::Path) {
    use bson::spec::BinarySubtype;
    use bson::{Binary, Decimal128, JavaScriptCodeWithScope, Regex, Timestamp};
    std::fs::create_dir_all(dir).expect("seed dir");
    let dec = |s: &str| Bson::Decimal128(s.parse::<Decimal128>().unwrap());
    let docs = [
        doc! {
            "double": 1.5, "string": "s", "doc": {"a": {"b": [1, 2, {"c": null}]}},
            "bin": Binary { subtype: BinarySubtype::Generic, bytes: vec![1, 2] },
            "oid": bson::oid::ObjectId::from_bytes([3; 12]), "bool": true,
            "date": bson::DateTime::from_millis(-5), "null": null,
            "re": Regex { pattern: "a.*".to_string().try_into().unwrap(),
                          options: "i".to_string().try_into().unwrap() },
            "code": Bson::JavaScriptCode("f()".into()),
            "scoped": JavaScriptCodeWithScope { code: "x".into(), scope: doc! {"x": 1} },
            "i32": 7i32, "ts": Timestamp { time: 1, increment: 2 }, "i64": 8i64,
            "dec": dec("1.0"), "min": Bson::MinKey, "max": Bson::MaxKey,
            "undef": Bson::Undefined, "sym": Bson::Symbol("sym".into()),
        },
        doc! {
            "_id": 1, "a": 1i64, "b": 1.0, "c": dec("1"), "d": -0.0, "e": f64::NAN,
            "f": dec("NaN"), "g": i64::MAX, "h": 9_223_372_036_854_775_807.0,
            "i": 5e-324, "j": f64::NEG_INFINITY, "k": dec("-Infinity"), "l": i32::MIN,
        },
        doc! {"a": ["x", "x\0", "", "é", Bson::Symbol("x".into())], "b": [[], [[]], {}]},
        doc! {"a": {"b": 1, "c": "x"}, "a2": {"b": 1.0, "c": "x"}, "a3": {"c": "x", "b": 1}},
    ];
    for (i, d) in docs.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:02}")), d.to_vec().unwrap())
            .expect("seed written");
    }
    // Old binary subtype (its length repeated inside) and DBPointer, which
    // bson's encoder does not make from a `doc!`.
    let mut old = Vec::new();
    old.extend_from_slice(&0i32.to_le_bytes());
    old.extend_from_slice(b"\x05b\0");
    old.extend_from_slice(&7i32.to_le_bytes());
    old.push(0x02);
    old.extend_from_slice(&3i32.to_le_bytes());
    old.extend_from_slice(b"abc");
    old.extend_from_slice(b"\x0cp\0");
    old.extend_from_slice(&2i32.to_le_bytes());
    old.extend_from_slice(b"n\0");
    old.extend_from_slice(&[9; 12]);
    old.push(0);
    let n = old.len() as i32;
    old[..4].copy_from_slice(&n.to_le_bytes());
    std::fs::write(dir.join("seed-old"), old).expect("seed written");
}
