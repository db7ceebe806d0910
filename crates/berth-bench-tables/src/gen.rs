//! The documents: YCSB's records (10 fields of 100 bytes, `_id`
//! `user<10 digits>`) and the big table's smaller event-like documents.

use mongodb::bson::Document;
use rand::Rng;
use serde_json::{Map, Value};

/// Fields of a YCSB record.
pub const FIELD_COUNT: usize = 10;
/// Bytes of each YCSB field value.
pub const FIELD_BYTES: usize = 100;
/// Distinct `user` values of the big table.
pub const BIG_USERS: u64 = 1000;
/// Distinct `kind` values of the big table (a `{kind: k}` count matches a
/// tenth of it).
pub const BIG_KINDS: u64 = 10;
/// Bytes of a big document's payload string.
pub const BIG_PAYLOAD_BYTES: usize = 160;

/// `_id` of YCSB record `n`.
pub fn ycsb_id(n: u64) -> String {
    format!("user{n:010}")
}

/// `_id` of big document `n`.
pub fn big_id(n: u64) -> String {
    format!("big{n:010}")
}

/// The `user` value of big-table user `u`.
pub fn big_user(u: u64) -> String {
    format!("user{u:04}")
}

/// Name of YCSB field `i`.
pub fn field_name(i: usize) -> &'static str {
    const NAMES: [&str; FIELD_COUNT] = [
        "field0", "field1", "field2", "field3", "field4", "field5", "field6", "field7", "field8",
        "field9",
    ];
    NAMES[i]
}

/// `len` random ASCII letters and digits (the same bytes in BSON and JSON).
pub fn random_string<R: Rng>(rng: &mut R, len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..len)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// A document's fields besides `_id`, in order.
pub enum Fields {
    Ycsb(Vec<String>),
    Big {
        user: String,
        ts: i64,
        kind: i32,
        payload: String,
    },
}

impl Fields {
    pub fn ycsb<R: Rng>(rng: &mut R) -> Fields {
        Fields::Ycsb(
            (0..FIELD_COUNT)
                .map(|_| random_string(rng, FIELD_BYTES))
                .collect(),
        )
    }

    /// Big document `n`: user `n mod 1000`, `ts` = `n` (so a user's newest
    /// documents are its highest numbers), kind `n / 1000 mod 10` (spread
    /// across users).
    pub fn big<R: Rng>(rng: &mut R, n: u64) -> Fields {
        Fields::Big {
            user: big_user(n % BIG_USERS),
            ts: n as i64,
            kind: ((n / BIG_USERS) % BIG_KINDS) as i32,
            payload: random_string(rng, BIG_PAYLOAD_BYTES),
        }
    }

    pub fn into_bson(self, d: &mut Document) {
        match self {
            Fields::Ycsb(values) => {
                for (i, v) in values.into_iter().enumerate() {
                    d.insert(field_name(i), v);
                }
            }
            Fields::Big {
                user,
                ts,
                kind,
                payload,
            } => {
                d.insert("user", user);
                d.insert("ts", ts);
                d.insert("kind", kind);
                d.insert("payload", payload);
            }
        }
    }

    pub fn into_json(self) -> Value {
        let mut m = Map::new();
        match self {
            Fields::Ycsb(values) => {
                for (i, v) in values.into_iter().enumerate() {
                    m.insert(field_name(i).to_string(), Value::String(v));
                }
            }
            Fields::Big {
                user,
                ts,
                kind,
                payload,
            } => {
                m.insert("user".into(), Value::String(user));
                m.insert("ts".into(), ts.into());
                m.insert("kind".into(), kind.into());
                m.insert("payload".into(), Value::String(payload));
            }
        }
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn a_ycsb_record_is_one_kib_of_field_data() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut d = doc! {"_id": ycsb_id(42)};
        Fields::ycsb(&mut rng).into_bson(&mut d);
        assert_eq!(d.get_str("_id").unwrap(), "user0000000042");
        assert_eq!(d.len(), 1 + FIELD_COUNT);
        for i in 0..FIELD_COUNT {
            assert_eq!(d.get_str(field_name(i)).unwrap().len(), FIELD_BYTES);
        }
        let mut encoded = Vec::new();
        d.to_writer(&mut encoded).unwrap();
        let bytes = encoded.len();
        assert!((1000..1200).contains(&bytes), "{bytes} bytes of BSON");
    }

    #[test]
    fn ids_sort_in_numeric_order() {
        assert!(ycsb_id(9) < ycsb_id(10));
        assert!(big_id(99_999) < big_id(100_000));
    }

    #[test]
    fn big_documents_spread_users_and_kinds() {
        let mut rng = StdRng::seed_from_u64(2);
        let Fields::Big { user, ts, kind, .. } = Fields::big(&mut rng, 12_345) else {
            panic!("not a big document");
        };
        assert_eq!(user, "user0345");
        assert_eq!(ts, 12_345);
        assert_eq!(kind, 2);
        let v = Fields::big(&mut rng, 7).into_json();
        assert_eq!(v["user"], "user0007");
        assert_eq!(v["payload"].as_str().unwrap().len(), BIG_PAYLOAD_BYTES);
    }
}
