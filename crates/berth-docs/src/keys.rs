//! (being written: a stub of the API until the key encoding lands)
use bson::Bson;

pub fn encode_value(v: &Bson, out: &mut Vec<u8>) {
    out.push(crate::order::type_rank(v));
    out.extend_from_slice(format!("{v}").as_bytes());
}
