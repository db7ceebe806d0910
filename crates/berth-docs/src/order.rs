//! MongoDB's order of BSON values: first by type class (MinKey < null <
//! numbers < strings < objects < arrays < binary < ObjectId < booleans <
//! dates < timestamps < regular expressions < MaxKey), then within the class.
//! Numbers of every type (int32, int64, double, decimal128) compare as
//! numbers, exactly between integers and doubles; NaN sorts below every
//! other number and equals itself.

use std::cmp::Ordering;

use bson::{Bson, Decimal128, Document};

/// The rank of a value's type class in MongoDB's comparison order.
pub fn type_rank(v: &Bson) -> u8 {
    match v {
        Bson::MinKey => 1,
        Bson::Null | Bson::Undefined => 2,
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => 3,
        Bson::String(_) | Bson::Symbol(_) => 4,
        Bson::Document(_) => 5,
        Bson::Array(_) => 6,
        Bson::Binary(_) => 7,
        Bson::ObjectId(_) => 8,
        Bson::Boolean(_) => 9,
        Bson::DateTime(_) => 10,
        Bson::Timestamp(_) => 11,
        Bson::RegularExpression(_) => 12,
        Bson::DbPointer(_) => 13,
        Bson::JavaScriptCode(_) => 14,
        Bson::JavaScriptCodeWithScope(_) => 15,
        Bson::MaxKey => 100,
    }
}

/// MongoDB's name for a value's type (`$type`, error messages).
pub fn type_name(v: &Bson) -> &'static str {
    match v {
        Bson::Double(_) => "double",
        Bson::String(_) => "string",
        Bson::Document(_) => "object",
        Bson::Array(_) => "array",
        Bson::Binary(_) => "binData",
        Bson::Undefined => "undefined",
        Bson::ObjectId(_) => "objectId",
        Bson::Boolean(_) => "bool",
        Bson::DateTime(_) => "date",
        Bson::Null => "null",
        Bson::RegularExpression(_) => "regex",
        Bson::DbPointer(_) => "dbPointer",
        Bson::JavaScriptCode(_) => "javascript",
        Bson::Symbol(_) => "symbol",
        Bson::JavaScriptCodeWithScope(_) => "javascriptWithScope",
        Bson::Int32(_) => "int",
        Bson::Timestamp(_) => "timestamp",
        Bson::Int64(_) => "long",
        Bson::Decimal128(_) => "decimal",
        Bson::MinKey => "minKey",
        Bson::MaxKey => "maxKey",
    }
}

/// A number, widened for comparison.
#[derive(Debug, Clone, Copy)]
pub enum Num {
    Int(i64),
    Float(f64),
}

/// The numeric value of a number (decimal128 approximated by the nearest
/// double); `None` for every other type.
pub fn number(v: &Bson) -> Option<Num> {
    match v {
        Bson::Int32(i) => Some(Num::Int(i64::from(*i))),
        Bson::Int64(i) => Some(Num::Int(*i)),
        Bson::Double(f) => Some(Num::Float(*f)),
        Bson::Decimal128(d) => Some(Num::Float(decimal_to_f64(d))),
        _ => None,
    }
}

/// The value of a decimal128 as the nearest double (NaN and infinities kept).
pub fn decimal_to_f64(d: &Decimal128) -> f64 {
    let b = d.bytes();
    let low = u64::from_le_bytes(b[0..8].try_into().expect("8 bytes"));
    let high = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
    let negative = high >> 63 == 1;
    let sign = if negative { -1.0 } else { 1.0 };
    let (exponent, coefficient) = if (high >> 61) & 0b11 == 0b11 {
        match (high >> 58) & 0b11111 {
            0b11110 => return sign * f64::INFINITY,
            0b11111 => return f64::NAN,
            // A coefficient of 2^113 or more is not canonical: zero.
            _ => (((high >> 47) & 0x3fff) as i32, 0u128),
        }
    } else {
        let exponent = ((high >> 49) & 0x3fff) as i32;
        let coefficient = (u128::from(high & ((1 << 49) - 1)) << 64) | u128::from(low);
        (exponent, coefficient)
    };
    if coefficient == 0 {
        return sign * 0.0;
    }
    // Through the decimal string: the nearest double, correctly rounded.
    format!(
        "{}{coefficient}e{}",
        if negative { "-" } else { "" },
        exponent - 6176
    )
    .parse()
    .unwrap_or(f64::NAN)
}

/// Compares two numbers exactly (an int64 against a double without rounding
/// the integer); NaN is below every other number and equal to NaN.
pub fn compare_numbers(a: Num, b: Num) -> Ordering {
    match (a, b) {
        (Num::Int(x), Num::Int(y)) => x.cmp(&y),
        (Num::Float(x), Num::Float(y)) => compare_floats(x, y),
        (Num::Int(x), Num::Float(y)) => compare_int_float(x, y),
        (Num::Float(x), Num::Int(y)) => compare_int_float(y, x).reverse(),
    }
}

fn compare_floats(x: f64, y: f64) -> Ordering {
    match (x.is_nan(), y.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        // -0.0 equals 0.0, as in MongoDB.
        (false, false) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
    }
}

fn compare_int_float(x: i64, y: f64) -> Ordering {
    if y.is_nan() {
        return Ordering::Greater;
    }
    // 2^63 as a double: every i64 is below it; -2^63 is exact.
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    if y >= TWO_63 {
        return Ordering::Less;
    }
    if y < -TWO_63 {
        return Ordering::Greater;
    }
    let t = y.trunc();
    // |t| < 2^63, so the cast is exact.
    let ti = t as i64;
    match x.cmp(&ti) {
        Ordering::Equal => {
            let frac = y - t;
            if frac > 0.0 {
                Ordering::Less
            } else if frac < 0.0 {
                Ordering::Greater
            } else {
                Ordering::Equal
            }
        }
        o => o,
    }
}

/// MongoDB's comparison of two values.
pub fn compare(a: &Bson, b: &Bson) -> Ordering {
    let (ra, rb) = (type_rank(a), type_rank(b));
    if ra != rb {
        return ra.cmp(&rb);
    }
    match (a, b) {
        _ if ra == 3 => compare_numbers(number(a).expect("a number"), number(b).expect("a number")),
        _ if ra == 4 => string_of(a).cmp(string_of(b)),
        (Bson::Document(x), Bson::Document(y)) => compare_documents(x, y),
        (Bson::Array(x), Bson::Array(y)) => compare_arrays(x, y),
        (Bson::Binary(x), Bson::Binary(y)) => x
            .bytes
            .len()
            .cmp(&y.bytes.len())
            .then_with(|| u8::from(x.subtype).cmp(&u8::from(y.subtype)))
            .then_with(|| x.bytes.cmp(&y.bytes)),
        (Bson::ObjectId(x), Bson::ObjectId(y)) => x.bytes().cmp(&y.bytes()),
        (Bson::Boolean(x), Bson::Boolean(y)) => x.cmp(y),
        (Bson::DateTime(x), Bson::DateTime(y)) => x.timestamp_millis().cmp(&y.timestamp_millis()),
        (Bson::Timestamp(x), Bson::Timestamp(y)) => {
            (x.time, x.increment).cmp(&(y.time, y.increment))
        }
        (Bson::RegularExpression(x), Bson::RegularExpression(y)) => x
            .pattern
            .as_str()
            .cmp(y.pattern.as_str())
            .then_with(|| x.options.as_str().cmp(y.options.as_str())),
        (Bson::JavaScriptCode(x), Bson::JavaScriptCode(y)) => x.cmp(y),
        (Bson::JavaScriptCodeWithScope(x), Bson::JavaScriptCodeWithScope(y)) => x
            .code
            .cmp(&y.code)
            .then_with(|| compare_documents(&x.scope, &y.scope)),
        // MinKey, MaxKey, null/undefined, DbPointer: one value per class.
        _ => Ordering::Equal,
    }
}

fn string_of(v: &Bson) -> &str {
    match v {
        Bson::String(s) | Bson::Symbol(s) => s,
        _ => "",
    }
}

/// Documents compare pair by pair in their order: the value's type class,
/// then the field name, then the value; a document that runs out first is
/// less.
pub fn compare_documents(a: &Document, b: &Document) -> Ordering {
    let mut x = a.iter();
    let mut y = b.iter();
    loop {
        match (x.next(), y.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some((ka, va)), Some((kb, vb))) => {
                let o = type_rank(va)
                    .cmp(&type_rank(vb))
                    .then_with(|| ka.as_str().cmp(kb.as_str()))
                    .then_with(|| compare(va, vb));
                if o != Ordering::Equal {
                    return o;
                }
            }
        }
    }
}

/// Arrays compare element by element; a prefix is less.
pub fn compare_arrays(a: &[Bson], b: &[Bson]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        let o = compare(x, y);
        if o != Ordering::Equal {
            return o;
        }
    }
    a.len().cmp(&b.len())
}

/// Equality as queries mean it: numbers by value across types.
pub fn equal(a: &Bson, b: &Bson) -> bool {
    compare(a, b) == Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, oid::ObjectId};

    #[test]
    fn numbers_compare_across_types() {
        assert!(equal(&Bson::Int32(1), &Bson::Double(1.0)));
        assert!(equal(&Bson::Int64(5), &Bson::Int32(5)));
        assert_eq!(compare(&Bson::Int64(2), &Bson::Double(2.5)), Ordering::Less);
        assert_eq!(
            compare(&Bson::Double(-2.5), &Bson::Int64(-2)),
            Ordering::Less
        );
        // An int64 that a double cannot hold exactly still compares exactly.
        let big = (1i64 << 53) + 1;
        assert_eq!(
            compare(&Bson::Int64(big), &Bson::Double((1u64 << 53) as f64)),
            Ordering::Greater
        );
        assert_eq!(
            compare(&Bson::Int64(i64::MAX), &Bson::Double(9.3e18)),
            Ordering::Less
        );
        assert_eq!(
            compare(&Bson::Double(f64::NAN), &Bson::Int32(i32::MIN)),
            Ordering::Less
        );
        assert!(equal(&Bson::Double(f64::NAN), &Bson::Double(f64::NAN)));
        assert!(equal(&Bson::Double(-0.0), &Bson::Int32(0)));
        let d: Decimal128 = "1.5".parse().unwrap();
        assert_eq!(
            compare(&Bson::Decimal128(d), &Bson::Int32(2)),
            Ordering::Less
        );
        assert!(equal(
            &Bson::Decimal128("2.50".parse().unwrap()),
            &Bson::Double(2.5)
        ));
        assert_eq!(
            compare(
                &Bson::Decimal128("-Infinity".parse().unwrap()),
                &Bson::Int64(i64::MIN)
            ),
            Ordering::Less
        );
    }

    #[test]
    fn type_classes_order() {
        let ordered = [
            Bson::MinKey,
            Bson::Null,
            Bson::Int32(100),
            Bson::String("a".into()),
            Bson::Document(doc! {}),
            Bson::Array(vec![]),
            Bson::Binary(bson::Binary {
                subtype: bson::spec::BinarySubtype::Generic,
                bytes: vec![],
            }),
            Bson::ObjectId(ObjectId::from_bytes([0; 12])),
            Bson::Boolean(false),
            Bson::DateTime(bson::DateTime::from_millis(0)),
            Bson::Timestamp(bson::Timestamp {
                time: 0,
                increment: 0,
            }),
            Bson::RegularExpression(bson::Regex {
                pattern: "a".try_into().unwrap(),
                options: "".try_into().unwrap(),
            }),
            Bson::MaxKey,
        ];
        for w in ordered.windows(2) {
            assert_eq!(
                compare(&w[0], &w[1]),
                Ordering::Less,
                "{:?} < {:?}",
                w[0],
                w[1]
            );
        }
    }

    #[test]
    fn documents_and_arrays() {
        assert_eq!(
            compare(
                &Bson::Document(doc! {"a": 1}),
                &Bson::Document(doc! {"a": 1, "b": 0})
            ),
            Ordering::Less
        );
        // The value's type class decides before the field name.
        assert_eq!(
            compare(
                &Bson::Document(doc! {"b": 1}),
                &Bson::Document(doc! {"a": "x"})
            ),
            Ordering::Less
        );
        assert!(equal(
            &Bson::Document(doc! {"a": 1, "b": [1, 2.0]}),
            &Bson::Document(doc! {"a": 1.0, "b": [1i64, 2]})
        ));
        assert_eq!(
            compare(
                &Bson::Array(vec![1.into(), 2.into()]),
                &Bson::Array(vec![1.into(), 3.into()])
            ),
            Ordering::Less
        );
        assert_eq!(
            compare(
                &Bson::Array(vec![1.into()]),
                &Bson::Array(vec![1.into(), 0.into()])
            ),
            Ordering::Less
        );
    }
}
