//! Versioned value encoding for everything the cluster layer and the services
//! store: one version byte, then postcard. A reader refuses versions it does
//! not know instead of guessing.

use serde::{de::DeserializeOwned, Serialize};

use crate::Error;

/// Current encoding version of stored records.
pub const VERSION: u8 = 1;

/// Encodes a record as `VERSION · postcard(value)`.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![VERSION];
    // postcard serialisation of our own plain structs cannot fail.
    let body = postcard::to_stdvec(value).expect("postcard encoding of a record");
    out.extend_from_slice(&body);
    out
}

/// Decodes a record written by [`encode`]; `what` names it in errors.
/// Bytes after the record are ignored: fields a newer build added at the
/// end.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, Error> {
    postcard::from_bytes(body(bytes, what)?)
        .map_err(|e| Error::corrupt(format!("{what}: undecodable record: {e}")))
}

/// Like [`decode`], but the record must end where `T` does: how a fallback
/// decoder recognises a record stored in an older, shorter layout, rather
/// than misreading a newer one whose added field it cannot decode.
pub fn decode_exact<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, Error> {
    let (value, rest) = postcard::take_from_bytes(body(bytes, what)?)
        .map_err(|e| Error::corrupt(format!("{what}: undecodable record: {e}")))?;
    if !rest.is_empty() {
        return Err(Error::corrupt(format!(
            "{what}: {} bytes this layout does not explain",
            rest.len()
        )));
    }
    Ok(value)
}

fn body<'a>(bytes: &'a [u8], what: &str) -> Result<&'a [u8], Error> {
    match bytes.split_first() {
        Some((&VERSION, body)) => Ok(body),
        Some((v, _)) => Err(Error::corrupt(format!(
            "{what}: unsupported record version {v} (this build reads {VERSION})"
        ))),
        None => Err(Error::corrupt(format!("{what}: empty record"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct R {
        a: u64,
        b: String,
    }

    #[test]
    fn round_trip_and_version_checks() {
        let r = R {
            a: 7,
            b: "x".into(),
        };
        let bytes = encode(&r);
        assert_eq!(bytes[0], VERSION);
        assert_eq!(decode::<R>(&bytes, "r").unwrap(), r);
        let mut bad = bytes.clone();
        bad[0] = 99;
        assert!(decode::<R>(&bad, "r")
            .unwrap_err()
            .to_string()
            .contains("version 99"));
        assert!(decode::<R>(&[], "r").is_err());
        assert!(decode::<R>(&[VERSION, 0xff], "r").is_err());
        // Trailing bytes: ignored by `decode`, refused by `decode_exact`.
        let mut longer = bytes.clone();
        longer.push(3);
        assert_eq!(decode::<R>(&longer, "r").unwrap(), r);
        assert_eq!(decode_exact::<R>(&bytes, "r").unwrap(), r);
        assert!(decode_exact::<R>(&longer, "r").is_err());
        assert!(decode_exact::<R>(&bad, "r").is_err());
    }
}
