//! Walks a BSON document before the `bson` crate decodes it: every length
//! inside its parent, every string terminated, every element type known,
//! nesting at most [`DEPTH_MAX`] deep, and the elements counted.
//!
//! Why: `bson` decodes nested documents by recursion (a deeply nested
//! document would overflow the stack, which aborts the process rather than
//! failing the request), and a decoded [`bson::Document`] takes far more
//! memory than its bytes (a null field is two bytes on the wire and about a
//! hundred in memory); the element count lets the connection charge a
//! message's decoded size before decoding it. The walk is iterative and
//! allocates only its stack of open documents (at most `DEPTH_MAX`).
//! UTF-8 validity is left to the decoder, which fails cleanly.

/// MongoDB's `maxBsonObjectSize`: the largest document a client may store,
/// as `hello` announces it.
pub const BSON_OBJECT_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Largest BSON document accepted in a message: a command may wrap a
/// document of the largest size with a little more (an update statement
/// around a full-size replacement), as MongoDB allows (its internal limit
/// is 16 KiB above `maxBsonObjectSize`).
pub const DOCUMENT_BYTES_MAX: usize = BSON_OBJECT_BYTES_MAX + 16 * 1024;
/// Deepest nesting of documents and arrays accepted (MongoDB's default
/// maximum BSON depth).
pub const DEPTH_MAX: usize = 200;

/// Why a document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BsonError {
    #[error("invalid BSON at byte {at}: {what}")]
    Invalid { at: usize, what: &'static str },
    #[error("BSON document of {size} bytes exceeds the limit of {DOCUMENT_BYTES_MAX}")]
    TooLarge { size: usize },
    #[error("BSON nested deeper than {DEPTH_MAX} levels")]
    TooDeep,
    #[error("more than {max} BSON elements in one message")]
    TooManyElements { max: usize },
}

/// Counts elements across the documents of one message, up to a bound.
#[derive(Debug)]
pub struct Counter {
    pub elements: usize,
    pub max: usize,
}

impl Counter {
    pub fn new(max: usize) -> Counter {
        Counter { elements: 0, max }
    }
}

fn read_i32(b: &[u8], at: usize) -> Option<i32> {
    let bytes = b.get(at..at.checked_add(4)?)?;
    Some(i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// Checks the document at the start of `bytes` (which may continue past
/// it); returns its length in bytes.
pub fn check(bytes: &[u8], counter: &mut Counter) -> Result<usize, BsonError> {
    let bad = |at: usize, what: &'static str| BsonError::Invalid { at, what };
    let len = read_i32(bytes, 0).ok_or(bad(0, "no document length"))?;
    let len = usize::try_from(len).map_err(|_| bad(0, "negative document length"))?;
    if len > DOCUMENT_BYTES_MAX {
        return Err(BsonError::TooLarge { size: len });
    }
    if len < 5 || len > bytes.len() {
        return Err(bad(0, "document length outside the message"));
    }
    if bytes[len - 1] != 0 {
        return Err(bad(len - 1, "document not terminated"));
    }
    // End offsets (the terminating NUL) of the documents still open.
    let mut open: Vec<usize> = vec![len - 1];
    let mut pos = 4;
    while let Some(&end) = open.last() {
        if pos == end {
            open.pop();
            pos += 1;
            continue;
        }
        debug_assert!(pos < end);
        let at = pos;
        let kind = bytes[pos];
        pos += 1;
        // The key: a C string inside this document.
        let nul = bytes[pos..end]
            .iter()
            .position(|&b| b == 0)
            .ok_or(bad(at, "unterminated key"))?;
        pos += nul + 1;
        counter.elements += 1;
        if counter.elements > counter.max {
            return Err(BsonError::TooManyElements { max: counter.max });
        }
        let need = |pos: usize, n: usize| -> Result<usize, BsonError> {
            let next = pos.checked_add(n).ok_or(bad(at, "length overflow"))?;
            if next > end {
                return Err(bad(at, "value runs past its document"));
            }
            Ok(next)
        };
        let string = |pos: usize| -> Result<usize, BsonError> {
            let n = read_i32(bytes, pos).ok_or(bad(at, "no string length"))?;
            let n = usize::try_from(n).map_err(|_| bad(at, "negative string length"))?;
            if n == 0 {
                return Err(bad(at, "string length 0"));
            }
            let next = need(pos, 4 + n)?;
            if bytes[next - 1] != 0 {
                return Err(bad(at, "string not terminated"));
            }
            Ok(next)
        };
        let cstring = |pos: usize| -> Result<usize, BsonError> {
            let nul = bytes[pos..end]
                .iter()
                .position(|&b| b == 0)
                .ok_or(bad(at, "unterminated C string"))?;
            Ok(pos + nul + 1)
        };
        pos = match kind {
            // double, datetime, timestamp, int64
            0x01 | 0x09 | 0x11 | 0x12 => need(pos, 8)?,
            // string, JavaScript code, symbol
            0x02 | 0x0D | 0x0E => string(pos)?,
            // embedded document, array
            0x03 | 0x04 => {
                let n = read_i32(bytes, pos).ok_or(bad(at, "no document length"))?;
                let n = usize::try_from(n).map_err(|_| bad(at, "negative document length"))?;
                if n < 5 {
                    return Err(bad(at, "document length below 5"));
                }
                let next = need(pos, n)?;
                if bytes[next - 1] != 0 {
                    return Err(bad(at, "document not terminated"));
                }
                open.push(next - 1);
                if open.len() > DEPTH_MAX {
                    return Err(BsonError::TooDeep);
                }
                pos + 4
            }
            // binary: length, subtype, bytes
            0x05 => {
                let n = read_i32(bytes, pos).ok_or(bad(at, "no binary length"))?;
                let n = usize::try_from(n).map_err(|_| bad(at, "negative binary length"))?;
                let next = need(pos, 5 + n)?;
                if bytes[pos + 4] == 0x02 {
                    // The old binary subtype repeats the length inside.
                    let inner = read_i32(bytes, pos + 5).ok_or(bad(at, "short old binary"))?;
                    if usize::try_from(inner).ok().and_then(|i| i.checked_add(4)) != Some(n) {
                        return Err(bad(at, "old binary with inconsistent lengths"));
                    }
                }
                next
            }
            // undefined, null, min key, max key
            0x06 | 0x0A | 0xFF | 0x7F => pos,
            0x07 => need(pos, 12)?,
            0x08 => {
                let next = need(pos, 1)?;
                if bytes[pos] > 1 {
                    return Err(bad(at, "boolean other than 0 or 1"));
                }
                next
            }
            // regular expression: pattern, options
            0x0B => cstring(cstring(pos)?)?,
            // DBPointer: namespace, ObjectId
            0x0C => need(string(pos)?, 12)?,
            // code with scope: total length, code, scope document
            0x0F => {
                let total = read_i32(bytes, pos).ok_or(bad(at, "no code-with-scope length"))?;
                let total = usize::try_from(total).map_err(|_| bad(at, "negative length"))?;
                let next = need(pos, total)?;
                let scope = string(pos + 4)?;
                let n = read_i32(bytes, scope).ok_or(bad(at, "no scope length"))?;
                let n = usize::try_from(n).map_err(|_| bad(at, "negative scope length"))?;
                if n < 5 || scope.checked_add(n) != Some(next) || bytes[next - 1] != 0 {
                    return Err(bad(at, "code with scope of inconsistent lengths"));
                }
                open.push(next - 1);
                if open.len() > DEPTH_MAX {
                    return Err(BsonError::TooDeep);
                }
                scope + 4
            }
            0x10 => need(pos, 4)?,
            0x13 => need(pos, 16)?,
            _ => return Err(bad(at, "unknown element type")),
        };
    }
    debug_assert_eq!(pos, len);
    Ok(len)
}

/// Checks then decodes the document at the start of `bytes`; returns it
/// and its length.
#[cfg(test)]
fn decode(bytes: &[u8], counter: &mut Counter) -> Result<(bson::Document, usize), String> {
    let len = check(bytes, counter).map_err(|e| e.to_string())?;
    let raw = bson::RawDocument::from_bytes(&bytes[..len]).map_err(|e| e.to_string())?;
    let doc = bson::Document::try_from(raw).map_err(|e| format!("invalid BSON: {e}"))?;
    Ok((doc, len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, Binary, Bson, JavaScriptCodeWithScope, Regex, Timestamp};

    fn counter() -> Counter {
        Counter::new(1_000_000)
    }

    #[test]
    fn every_element_type_passes_and_counts() {
        let d = doc! {
            "double": 1.5, "string": "s", "doc": {"a": {"b": [1, 2, {"c": null}]}},
            "bin": Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![1, 2] },
            "oid": bson::oid::ObjectId::new(), "bool": true,
            "date": bson::DateTime::from_millis(5), "null": null,
            "re": Regex { pattern: "a.*".to_string().try_into().unwrap(), options: "i".to_string().try_into().unwrap() },
            "code": Bson::JavaScriptCode("f()".into()),
            "scoped": JavaScriptCodeWithScope { code: "x".into(), scope: doc! {"x": 1} },
            "i32": 7i32, "ts": Timestamp { time: 1, increment: 2 }, "i64": 8i64,
            "dec": bson::Decimal128::from_bytes([0; 16]),
            "min": Bson::MinKey, "max": Bson::MaxKey, "undef": Bson::Undefined,
        };
        let bytes = d.to_vec().unwrap();
        let mut c = counter();
        assert_eq!(check(&bytes, &mut c), Ok(bytes.len()));
        // 18 top-level; a, b, three array items and c; the scope's x.
        assert_eq!(c.elements, 18 + 6 + 1);
        let (back, len) = decode(&bytes, &mut counter()).unwrap();
        assert_eq!((back, len), (d, bytes.len()));
    }

    #[test]
    fn a_document_followed_by_more_bytes() {
        let mut bytes = doc! {"a": 1}.to_vec().unwrap();
        let len = bytes.len();
        bytes.extend_from_slice(b"more");
        assert_eq!(check(&bytes, &mut counter()), Ok(len));
    }

    #[test]
    fn refuses_bad_lengths_and_types() {
        let good = doc! {"a": "xyz", "b": {"c": 1}}.to_vec().unwrap();
        for cut in 0..good.len() {
            assert!(check(&good[..cut], &mut counter()).is_err(), "cut at {cut}");
        }
        // The string's length claims more than its document holds.
        let mut long_string = good.clone();
        long_string[7] = 200;
        assert!(check(&long_string, &mut counter()).is_err());
        // An unknown type byte.
        let mut unknown = good.clone();
        unknown[4] = 0x42;
        assert!(check(&unknown, &mut counter()).is_err());
        // Not terminated.
        let mut open = good.clone();
        *open.last_mut().unwrap() = 1;
        assert!(check(&open, &mut counter()).is_err());
        // A boolean 2.
        let mut b = doc! {"t": true}.to_vec().unwrap();
        b[7] = 2;
        assert!(check(&b, &mut counter()).is_err());
        // Negative and tiny lengths.
        assert!(check(&(-1i32).to_le_bytes(), &mut counter()).is_err());
        assert!(check(&[4, 0, 0, 0, 0], &mut counter()).is_err());
    }

    #[test]
    fn refuses_deep_nesting_without_recursing() {
        // 100,000 levels: would overflow the stack in a recursive decoder.
        fn nested(levels: usize) -> Vec<u8> {
            // Built from the inside out: {"": {"": ... {} ...}}.
            let mut inner = vec![5, 0, 0, 0, 0];
            for _ in 0..levels {
                let len = (inner.len() + 7) as i32;
                let mut d = len.to_le_bytes().to_vec();
                d.push(0x03);
                d.push(0);
                d.extend_from_slice(&inner);
                d.push(0);
                inner = d;
            }
            inner
        }
        assert!(check(&nested(DEPTH_MAX - 1), &mut counter()).is_ok());
        assert_eq!(
            check(&nested(DEPTH_MAX), &mut counter()),
            Err(BsonError::TooDeep)
        );
        assert_eq!(
            check(&nested(100_000), &mut counter()),
            Err(BsonError::TooDeep)
        );
    }

    #[test]
    fn bounds_size_and_elements() {
        let mut huge = ((DOCUMENT_BYTES_MAX + 1) as i32).to_le_bytes().to_vec();
        huge.resize(DOCUMENT_BYTES_MAX + 1, 0);
        assert!(matches!(
            check(&huge, &mut counter()),
            Err(BsonError::TooLarge { .. })
        ));
        let d = doc! {"a": 1, "b": 2, "c": 3}.to_vec().unwrap();
        let mut c = Counter::new(2);
        assert_eq!(
            check(&d, &mut c),
            Err(BsonError::TooManyElements { max: 2 })
        );
    }

    #[test]
    fn invalid_utf8_fails_in_the_decoder_not_the_walk() {
        let mut d = doc! {"a": "xy"}.to_vec().unwrap();
        d[11] = 0xff;
        assert!(check(&d, &mut counter()).is_ok());
        assert!(decode(&d, &mut counter()).is_err());
    }
}
