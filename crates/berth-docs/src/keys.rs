//! Order-preserving byte encoding of BSON values, for storage keys: a
//! document's `_id` and secondary index entries live in an ordered key-value
//! store, so the byte order of encodings must be MongoDB's order of values.
//!
//! *Invariant:* for all values `a`, `b`: `encode(a).cmp(&encode(b)) ==
//! order::compare(a, b)`. In particular values `order::equal` calls equal
//! encode to the same bytes (int32 1, int64 1 and double 1.0 are one `_id`;
//! -0.0 is 0; every NaN is one NaN), and every encoding is *prefix-free* (no
//! encoding is a proper prefix of another), so concatenations compare
//! component by component. Inverting every byte of a prefix-free encoding
//! reverses its order and keeps it prefix-free: that is a descending
//! component of a compound key.
//!
//! The format, version [`KEY_FORMAT_VERSION`] (stored by whoever stores keys,
//! not in each key):
//! - One byte of type class, `order::type_rank` (MinKey 1 ... MaxKey 100).
//! - Null, undefined, MinKey, MaxKey, DBPointer: nothing more (`order`
//!   compares every DBPointer equal).
//! - Numbers: a tag, `NAN` < `NEG_INF` < `NEG` < `ZERO` < `POS` < `POS_INF`.
//!   A finite nonzero number's magnitude is exactly `2^(e-1) * 1.f` (binary):
//!   two bytes of biased exponent `e`, then the fraction bits `f` seven to a
//!   byte from the most significant, each byte `bits << 1 | more` (the low
//!   bit says whether another byte follows; trailing zero bytes are not
//!   written, one byte at least). That is exact for every int64 (63 fraction
//!   bits at most) and every double (52), so an int64 beyond 2^53 and the
//!   double next to it stay apart. Negative numbers invert the exponent and
//!   fraction bytes. Decimal128 is encoded through its nearest double
//!   (`order::decimal_to_f64`), which is how `order` compares it too: two
//!   decimals closer than a double can tell apart are one key.
//! - Strings and symbols (and regex patterns and options, JavaScript code,
//!   field names): the UTF-8 bytes with 0x00 written 0x00 0xFF, then the
//!   terminator 0x00 0x00, which sorts below every content byte.
//! - Documents: per field, the type class of its value, the name as a
//!   string, the value without its class byte; then 0x00 (below every type
//!   class). That is `order::compare_documents`: class, then name, then value.
//! - Arrays: each element's encoding, then 0x00.
//! - Binary: length (8 bytes, big-endian), subtype, the bytes.
//! - ObjectId: its 12 bytes. Booleans: 0 or 1. Dates: signed milliseconds
//!   with the sign bit flipped, big-endian. Timestamps: time then increment,
//!   big-endian. Regular expressions: pattern, options. JavaScript with
//!   scope: code, then the scope as a document.
//!
//! Pure: no clock, no I/O.

use bson::{Bson, Document};

use crate::order;

/// The version of this encoding. A store of keys records it; a change in the
/// bytes of any value needs a new version and a migration.
pub const KEY_FORMAT_VERSION: u8 = 1;

/// Ends a document or an array: below every type-class byte.
const END: u8 = 0x00;

// Number tags, after the class byte.
const NAN: u8 = 0x01;
const NEG_INF: u8 = 0x02;
const NEG: u8 = 0x03;
const ZERO: u8 = 0x04;
const POS: u8 = 0x05;
const POS_INF: u8 = 0x06;

/// Added to a number's binary exponent so that it is positive: doubles span
/// -1073 (the smallest subnormal) to 1024, int64 up to 64.
const EXPONENT_BIAS: i32 = 1100;

/// Appends the encoding of `v` to `out`.
pub fn encode_value(v: &Bson, out: &mut Vec<u8>) {
    out.push(order::type_rank(v));
    encode_body(v, out);
}

/// The encoding of a compound index key: the components in order, each
/// descending one (`true`) with every byte inverted.
pub fn encode_key(values: &[(Bson, bool)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (v, descending) in values {
        let start = out.len();
        encode_value(v, &mut out);
        if *descending {
            invert(&mut out[start..]);
        }
    }
    out
}

fn invert(bytes: &mut [u8]) {
    for b in bytes {
        *b = !*b;
    }
}

/// A value's encoding after its class byte.
fn encode_body(v: &Bson, out: &mut Vec<u8>) {
    match v {
        Bson::MinKey | Bson::MaxKey | Bson::Null | Bson::Undefined | Bson::DbPointer(_) => {}
        Bson::Int32(i) => encode_int(i64::from(*i), out),
        Bson::Int64(i) => encode_int(*i, out),
        Bson::Double(f) => encode_float(*f, out),
        Bson::Decimal128(d) => encode_float(order::decimal_to_f64(d), out),
        Bson::String(s) | Bson::Symbol(s) | Bson::JavaScriptCode(s) => encode_str(s, out),
        Bson::Document(d) => encode_document(d, out),
        Bson::Array(items) => {
            for item in items {
                encode_value(item, out);
            }
            out.push(END);
        }
        Bson::Binary(b) => {
            out.extend_from_slice(&(b.bytes.len() as u64).to_be_bytes());
            out.push(u8::from(b.subtype));
            out.extend_from_slice(&b.bytes);
        }
        Bson::ObjectId(id) => out.extend_from_slice(&id.bytes()),
        Bson::Boolean(b) => out.push(u8::from(*b)),
        Bson::DateTime(d) => {
            let flipped = (d.timestamp_millis() as u64) ^ (1 << 63);
            out.extend_from_slice(&flipped.to_be_bytes());
        }
        Bson::Timestamp(t) => {
            out.extend_from_slice(&t.time.to_be_bytes());
            out.extend_from_slice(&t.increment.to_be_bytes());
        }
        Bson::RegularExpression(r) => {
            encode_str(r.pattern.as_str(), out);
            encode_str(r.options.as_str(), out);
        }
        Bson::JavaScriptCodeWithScope(c) => {
            encode_str(&c.code, out);
            encode_document(&c.scope, out);
        }
    }
}

fn encode_document(d: &Document, out: &mut Vec<u8>) {
    for (name, v) in d {
        out.push(order::type_rank(v));
        encode_str(name, out);
        encode_body(v, out);
    }
    out.push(END);
}

fn encode_str(s: &str, out: &mut Vec<u8>) {
    for &b in s.as_bytes() {
        out.push(b);
        if b == 0x00 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0x00, 0x00]);
}

fn encode_int(i: i64, out: &mut Vec<u8>) {
    if i == 0 {
        out.push(ZERO);
    } else {
        encode_magnitude(i < 0, i.unsigned_abs(), 0, out);
    }
}

fn encode_float(f: f64, out: &mut Vec<u8>) {
    if f.is_nan() {
        out.push(NAN);
    } else if f.is_infinite() {
        out.push(if f < 0.0 { NEG_INF } else { POS_INF });
    } else if f == 0.0 {
        // -0.0 too.
        out.push(ZERO);
    } else {
        let bits = f.to_bits();
        let exponent = ((bits >> 52) & 0x7ff) as i32;
        let mantissa = bits & ((1 << 52) - 1);
        let (m, k) = if exponent == 0 {
            (mantissa, -1074)
        } else {
            (mantissa | (1 << 52), exponent - 1075)
        };
        encode_magnitude(f < 0.0, m, k, out);
    }
}

/// A nonzero number whose magnitude is `m * 2^k`, exactly.
fn encode_magnitude(negative: bool, m: u64, k: i32, out: &mut Vec<u8>) {
    assert!(m != 0, "zero has its own tag");
    let bits = 64 - m.leading_zeros() as i32;
    // The magnitude lies in [2^(e-1), 2^e).
    let e = bits + k;
    // The bits below the leading one, left-aligned (63 at most).
    let mut fraction = if bits == 1 { 0 } else { m << (65 - bits) };
    out.push(if negative { NEG } else { POS });
    let start = out.len();
    let biased = u16::try_from(e + EXPONENT_BIAS)
        .expect("the exponents of int64 and double lie within the bias");
    out.extend_from_slice(&biased.to_be_bytes());
    loop {
        let group = (fraction >> 57) as u8;
        fraction <<= 7;
        let more = fraction != 0;
        out.push((group << 1) | u8::from(more));
        if !more {
            break;
        }
    }
    if negative {
        invert(&mut out[start..]);
    }
}

#[cfg(test)]
mod tests {
    use std::cmp::Ordering;

    use bson::oid::ObjectId;
    use bson::spec::BinarySubtype;
    use bson::{doc, Binary, Decimal128, Regex, Timestamp};
    use proptest::prelude::*;

    use super::*;

    fn enc(v: &Bson) -> Vec<u8> {
        let mut out = Vec::new();
        encode_value(v, &mut out);
        out
    }

    fn dec(s: &str) -> Bson {
        Bson::Decimal128(s.parse::<Decimal128>().expect("a decimal"))
    }

    fn check_pair(a: &Bson, b: &Bson) {
        let (ea, eb) = (enc(a), enc(b));
        assert_eq!(
            ea.cmp(&eb),
            order::compare(a, b),
            "{a:?} vs {b:?}: {ea:02x?} vs {eb:02x?}"
        );
    }

    #[test]
    fn equal_numbers_encode_the_same() {
        for group in [
            vec![
                Bson::Int32(1),
                Bson::Int64(1),
                Bson::Double(1.0),
                dec("1.0"),
            ],
            vec![
                Bson::Int32(0),
                Bson::Int64(0),
                Bson::Double(0.0),
                Bson::Double(-0.0),
                dec("-0"),
                dec("0E+100"),
            ],
            vec![Bson::Double(f64::NAN), Bson::Double(-f64::NAN), dec("NaN")],
            vec![
                Bson::Int32(-7),
                Bson::Int64(-7),
                Bson::Double(-7.0),
                dec("-7"),
            ],
            vec![Bson::Double(f64::INFINITY), dec("Infinity")],
            vec![Bson::Int64(1 << 53), Bson::Double(9_007_199_254_740_992.0)],
            vec![
                Bson::Int64(i64::MIN),
                Bson::Double(-9_223_372_036_854_775_808.0),
            ],
        ] {
            for w in group.windows(2) {
                assert_eq!(enc(&w[0]), enc(&w[1]), "{:?} and {:?}", w[0], w[1]);
            }
        }
    }

    #[test]
    fn numbers_order_exactly() {
        let ordered = [
            Bson::Double(f64::NAN),
            Bson::Double(f64::NEG_INFINITY),
            Bson::Double(-1e300),
            Bson::Int64(i64::MIN),
            Bson::Int64(i64::MIN + 1),
            Bson::Int64(-(1 << 53) - 1),
            Bson::Double(-9_007_199_254_740_992.0),
            Bson::Int32(-2),
            Bson::Double(-1.5),
            Bson::Int32(-1),
            Bson::Double(-f64::MIN_POSITIVE),
            Bson::Double(-5e-324),
            Bson::Int32(0),
            Bson::Double(5e-324),
            Bson::Double(1e-10),
            Bson::Double(0.5),
            Bson::Int32(1),
            Bson::Double(1.000_000_000_000_000_2),
            dec("1.5"),
            Bson::Int64(2),
            Bson::Double(9_007_199_254_740_992.0),
            Bson::Int64((1 << 53) + 1),
            Bson::Double(9_007_199_254_740_994.0),
            Bson::Int64(i64::MAX - 1),
            Bson::Int64(i64::MAX),
            Bson::Double(9_223_372_036_854_775_808.0),
            Bson::Double(f64::MAX),
            Bson::Double(f64::INFINITY),
        ];
        for w in ordered.windows(2) {
            check_pair(&w[0], &w[1]);
            assert_eq!(
                enc(&w[0]).cmp(&enc(&w[1])),
                Ordering::Less,
                "{:?} < {:?}",
                w[0],
                w[1]
            );
        }
        // Small integers are short: class, tag, exponent, one fraction byte.
        assert_eq!(enc(&Bson::Int32(1)).len(), 5);
        assert_eq!(enc(&Bson::Int32(0)).len(), 2);
    }

    #[test]
    fn strings_with_nul_bytes() {
        let ordered = [
            "", "\0", "\0\0", "\0a", "a", "a\0", "a\0\0", "a\x01", "ab", "b",
        ];
        for w in ordered.windows(2) {
            let (a, b) = (Bson::String(w[0].into()), Bson::String(w[1].into()));
            check_pair(&a, &b);
            assert!(enc(&a) < enc(&b), "{:?} < {:?}", w[0], w[1]);
        }
        assert_eq!(
            enc(&Bson::String("x".into())),
            enc(&Bson::Symbol("x".into()))
        );
    }

    #[test]
    fn type_classes_and_containers() {
        let ordered = [
            Bson::MinKey,
            Bson::Null,
            Bson::Int32(100),
            Bson::String("a".into()),
            Bson::Document(doc! {}),
            Bson::Document(doc! {"a": 1}),
            Bson::Document(doc! {"a": 1, "b": 0}),
            Bson::Document(doc! {"b": 2}),
            // The value's class decides before the field name.
            Bson::Document(doc! {"a": "x"}),
            Bson::Array(vec![]),
            Bson::Array(vec![Bson::Null]),
            Bson::Array(vec![1.into()]),
            Bson::Array(vec![1.into(), 0.into()]),
            Bson::Array(vec![2.into()]),
            Bson::Binary(Binary {
                subtype: BinarySubtype::Uuid,
                bytes: vec![9],
            }),
            Bson::Binary(Binary {
                subtype: BinarySubtype::Generic,
                bytes: vec![0, 0],
            }),
            Bson::ObjectId(ObjectId::from_bytes([0; 12])),
            Bson::ObjectId(ObjectId::from_bytes([1; 12])),
            Bson::Boolean(false),
            Bson::Boolean(true),
            Bson::DateTime(bson::DateTime::from_millis(-1)),
            Bson::DateTime(bson::DateTime::from_millis(0)),
            Bson::Timestamp(Timestamp {
                time: 0,
                increment: 9,
            }),
            Bson::Timestamp(Timestamp {
                time: 1,
                increment: 0,
            }),
            Bson::RegularExpression(Regex {
                pattern: "a".try_into().unwrap(),
                options: "".try_into().unwrap(),
            }),
            Bson::RegularExpression(Regex {
                pattern: "a".try_into().unwrap(),
                options: "i".try_into().unwrap(),
            }),
            Bson::MaxKey,
        ];
        for w in ordered.windows(2) {
            check_pair(&w[0], &w[1]);
        }
        assert_eq!(
            enc(&Bson::Document(doc! {"a": 1, "b": [1, 2.0]})),
            enc(&Bson::Document(doc! {"a": 1.0, "b": [1i64, 2]}))
        );
    }

    #[test]
    fn compound_keys_with_descending_components() {
        let key = |a: Bson, b: Bson| encode_key(&[(a, true), (b, false)]);
        // Descending first: the longer string is first, whatever follows.
        assert!(key("ab".into(), 0.into()) < key("a".into(), 9.into()));
        assert!(key("a".into(), 0.into()) < key("a".into(), 1.into()));
        assert!(key(2.into(), "z".into()) < key(1.into(), "a".into()));
        assert!(
            key(Bson::Array(vec![1.into(), 2.into()]), 5.into())
                < key(Bson::Array(vec![1.into()]), 0.into())
        );
    }

    // -- properties ----------------------------------------------------------

    fn number() -> impl Strategy<Value = Bson> {
        let edges = prop::sample::select(vec![
            Bson::Int32(i32::MIN),
            Bson::Int32(i32::MAX),
            Bson::Int64(i64::MIN),
            Bson::Int64(i64::MAX),
            Bson::Int64(1 << 53),
            Bson::Int64((1 << 53) + 1),
            Bson::Int64(-(1 << 53) - 1),
            Bson::Double(9_007_199_254_740_992.0),
            Bson::Double(9_223_372_036_854_775_808.0),
            Bson::Double(-9_223_372_036_854_775_808.0),
            Bson::Double(f64::NAN),
            Bson::Double(f64::INFINITY),
            Bson::Double(f64::NEG_INFINITY),
            Bson::Double(0.0),
            Bson::Double(-0.0),
            Bson::Double(f64::MIN_POSITIVE),
            Bson::Double(5e-324),
            Bson::Double(-5e-324),
            Bson::Double(f64::MAX),
            Bson::Double(f64::MIN),
            Bson::Double(0.1),
            dec("NaN"),
            dec("-Infinity"),
            dec("0.1"),
            dec("1E+6144"),
            dec("-1E-6176"),
        ]);
        // The same small value in every type, to find the equal cases.
        let small = (-4i32..4, 0..4u8).prop_map(|(n, t)| match t {
            0 => Bson::Int32(n),
            1 => Bson::Int64(n.into()),
            2 => Bson::Double(f64::from(n) / 2.0),
            _ => dec(&n.to_string()),
        });
        prop_oneof![
            edges,
            small,
            any::<i32>().prop_map(Bson::Int32),
            any::<i64>().prop_map(Bson::Int64),
            any::<f64>().prop_map(Bson::Double),
            // An int64 and the doubles around it.
            any::<i64>().prop_map(|i| Bson::Double(i as f64)),
            (any::<bool>(), 0u64..1_000_000_000_000, -30i32..30)
                .prop_map(|(neg, c, e)| dec(&format!("{}{c}E{e}", if neg { "-" } else { "" }))),
            any::<[u8; 16]>().prop_map(|b| Bson::Decimal128(Decimal128::from_bytes(b))),
        ]
    }

    fn scalar() -> impl Strategy<Value = Bson> {
        prop_oneof![
            4 => number(),
            // Few letters, so that one string is often a prefix of another.
            2 => "[a\\x00]{0,3}".prop_map(Bson::String),
            1 => "[a\\x00\\x01\\xff]{0,4}".prop_map(Bson::String),
            1 => "[ab\\x00]{0,2}".prop_map(Bson::Symbol),
            1 => Just(Bson::Null),
            1 => Just(Bson::Undefined),
            1 => Just(Bson::MinKey),
            1 => Just(Bson::MaxKey),
            1 => any::<bool>().prop_map(Bson::Boolean),
            1 => any::<i64>().prop_map(|m| Bson::DateTime(bson::DateTime::from_millis(m))),
            1 => (0u32..3, 0u32..3).prop_map(|(time, increment)| Bson::Timestamp(Timestamp { time, increment })),
            1 => (0u8..3, prop::collection::vec(0u8..3, 0..3)).prop_map(|(s, bytes)| Bson::Binary(Binary {
                subtype: BinarySubtype::from(s),
                bytes,
            })),
            1 => any::<[u8; 12]>().prop_map(|b| Bson::ObjectId(ObjectId::from_bytes(b))),
            1 => ("[ab]{0,2}", prop::sample::select(vec!["", "i", "im"])).prop_map(|(p, o)| {
                Bson::RegularExpression(Regex {
                    pattern: p.as_str().try_into().unwrap(),
                    options: o.try_into().unwrap(),
                })
            }),
            1 => "[ab]{0,2}".prop_map(Bson::JavaScriptCode),
        ]
    }

    fn value() -> impl Strategy<Value = Bson> {
        scalar().prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Bson::Array),
                prop::collection::vec(("[ab\\x00]{0,2}", inner), 0..4)
                    .prop_map(|fields| Bson::Document(fields.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn numbers_encode_in_order(a in number(), b in number()) {
            prop_assert_eq!(enc(&a).cmp(&enc(&b)), order::compare(&a, &b), "{:?} vs {:?}", a, b);
        }

        #[test]
        fn strings_encode_in_order_and_prefix_free(a in "[a\\x00]{0,3}", b in "[a\\x00]{0,3}") {
            let (a, b) = (Bson::String(a), Bson::String(b));
            let (ea, eb) = (enc(&a), enc(&b));
            prop_assert_eq!(ea.cmp(&eb), order::compare(&a, &b));
            let (ia, ib) = (encode_key(&[(a.clone(), true)]), encode_key(&[(b.clone(), true)]));
            prop_assert_eq!(ia.cmp(&ib), order::compare(&a, &b).reverse());
            if a != b {
                prop_assert!(!ea.starts_with(&eb) && !eb.starts_with(&ea));
                prop_assert!(!ia.starts_with(&ib) && !ib.starts_with(&ia));
            }
        }

        #[test]
        fn values_encode_in_order(a in value(), b in value()) {
            let (ea, eb) = (enc(&a), enc(&b));
            prop_assert_eq!(ea.cmp(&eb), order::compare(&a, &b), "{:?} vs {:?}", a, b);
            // Prefix-free, ascending and inverted.
            if ea != eb {
                prop_assert!(!ea.starts_with(&eb) && !eb.starts_with(&ea));
                let (ia, ib) = (encode_key(&[(a.clone(), true)]), encode_key(&[(b.clone(), true)]));
                prop_assert!(!ia.starts_with(&ib) && !ib.starts_with(&ia));
                prop_assert_eq!(ia.cmp(&ib), order::compare(&a, &b).reverse());
            }
        }

        #[test]
        fn compound_keys_compare_component_by_component(
            parts in prop::collection::vec((value(), value(), any::<bool>()), 1..4)
        ) {
            let a: Vec<(Bson, bool)> = parts.iter().map(|(x, _, d)| (x.clone(), *d)).collect();
            let b: Vec<(Bson, bool)> = parts.iter().map(|(_, y, d)| (y.clone(), *d)).collect();
            let expected = parts
                .iter()
                .map(|(x, y, d)| {
                    let o = order::compare(x, y);
                    if *d { o.reverse() } else { o }
                })
                .find(|o| o.is_ne())
                .unwrap_or(Ordering::Equal);
            prop_assert_eq!(encode_key(&a).cmp(&encode_key(&b)), expected);
        }
    }
}
