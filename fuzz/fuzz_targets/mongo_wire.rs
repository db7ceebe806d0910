//! The bytes a MongoDB client sends on a connection, through everything the
//! gateway does with them before a command runs, as `conn` does it: the
//! frame reader (`frame::Reader`, length bounds, back-to-back messages,
//! with the bound before authentication), the walk (`wire::parse`: header,
//! OP_MSG flag bits, CRC-32C checksum, moreToCome, kind-0 body and kind-1
//! document sequences, OP_QUERY on `$cmd`, OP_COMPRESSED with snappy, zlib
//! and zstd under the message limit, every BSON document through the
//! guard), the decoded-size charge, the decoding (`Walked::decode`, the
//! sequences merged into the command) and the routing to a database
//! (`conn::route`). Then the answer the request gets (`encode_reply`, an
//! error for a refused content) is read back.
//!
//! Checks besides "no panic": an answer names the request it answers and
//! comes back as it was encoded (checksum and compression as requested); a
//! decoded command, encoded again as a one-section OP_MSG, walks and
//! decodes to the same bytes, and the walk counts exactly its elements
//! (the basis of the decoded-size charge).
//!
//! Seeds: `BERTH_FUZZ_SEEDS=<dir>` writes real messages to `<dir>` and
//! exits: hello, ping with a checksum, insert and update with document
//! sequences, moreToCome, each compressor, OP_QUERY isMaster plain and
//! wrapped in `$query`, and two messages back to back.

#![no_main]

use std::future::Future;
use std::task::{Context, Poll, Waker};

use berth_fuzz::{count_elements, depth};
use berth_mongo::fuzzing::*;
use berth_mongo::{Compressor, MongoConfig};
use bson::{doc, Bson, Document};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

/// Messages read from one input, at most.
const MESSAGES_MAX: usize = 8;

fuzz_target!(
    init: {
        if let Some(dir) = std::env::var_os("BERTH_FUZZ_SEEDS") {
            write_seeds(std::path::Path::new(&dir));
            std::process::exit(0);
        }
    },
    |data: &[u8]| {
        let cfg = MongoConfig::default();
        let limits = Limits {
            message_bytes_max: cfg.max_message_bytes,
            elements_max: cfg.elements_max,
        };
        // Before authentication, as every connection starts.
        let mut reader = Reader::new(cfg.max_message_bytes.min(UNAUTHENTICATED_MESSAGE_BYTES_MAX));
        let mut stream = data;
        for _ in 0..MESSAGES_MAX {
            let next = now(reader.next(&mut stream));
            match next {
                Ok(Some(frame)) => {
                    assert!(frame.len() >= HEADER_BYTES);
                    message(frame, &limits, &cfg);
                }
                // A clean close, or a frame that closes the connection.
                Ok(None) | Err(_) => break,
            }
        }
    }
);

/// Polls a future that cannot wait: the stream is a byte slice, always
/// ready.
fn now<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("reading from a byte slice waited"),
    }
}

fn message(frame: Bytes, limits: &Limits, cfg: &MongoConfig) {
    let header = read_header(&frame).expect("the reader returns whole headers");
    let walked = match parse(frame.clone(), limits) {
        Ok(w) => w,
        Err(WireError::Fatal(_)) => return,
        Err(WireError::Bad { to, error }) => {
            check_to(&to, &header, &frame);
            let reply = doc! {"ok": 0.0, "errmsg": error.message, "code": error.code};
            answer(&to, &reply, false);
            return;
        }
    };
    let to = walked.to;
    check_to(&to, &header, &frame);
    let cost_bytes = decode_cost_bytes(&walked);
    assert!(cost_bytes >= walked.size_bytes());
    if cost_bytes > cfg.decode_budget_bytes {
        return;
    }
    let request = match walked.decode() {
        Ok(r) => r,
        Err(WireError::Fatal(_)) => panic!("decoding a walked message is never fatal"),
        Err(WireError::Bad { to: bad_to, .. }) => {
            assert_eq!(bad_to, to, "an error answers the request it came with");
            return;
        }
    };
    let is_msg = matches!(request, Request::Msg { .. });
    assert_eq!(is_msg, to.format == Format::Msg);
    if let Request::Msg { command } = &request {
        same_after_reencoding(command, &to);
    }
    match route(request) {
        Route::Command { db, command } => {
            let reply = doc! {"ok": 1.0, "db": db, "n": count_elements(&command) as i64};
            answer(&to, &reply, true);
        }
        Route::Refuse(e) => {
            assert!(is_msg);
            answer(&to, &doc! {"ok": 0.0, "code": e.code}, false);
        }
        Route::LegacyQuery { collection } => {
            assert!(!is_msg && !collection.ends_with(".$cmd"));
        }
    }
}

/// What the walk says of the request agrees with its header.
fn check_to(to: &ReplyTo, h: &Header, frame: &[u8]) {
    assert_eq!(to.request_id, h.request_id);
    let op = if h.op_code == OP_COMPRESSED {
        assert!(to.compressor.is_some() || frame.get(24) == Some(&0));
        i32::from_le_bytes(frame[16..20].try_into().unwrap())
    } else {
        assert!(to.compressor.is_none());
        h.op_code
    };
    match op {
        OP_MSG => assert_eq!(to.format, Format::Msg),
        OP_QUERY => {
            assert_eq!(to.format, Format::Reply);
            assert!(!to.more_to_come && !to.checksum);
        }
        other => panic!("walked opcode {other}"),
    }
}

/// A decoded OP_MSG command, sent again as one body section, walks and
/// decodes to itself, and the walk counts exactly its elements.
fn same_after_reencoding(command: &Document, to: &ReplyTo) {
    let body = command.to_vec().expect("a decoded command encodes");
    let msg = encode_msg(to.request_id, 0, &body, to.checksum);
    let limits = Limits {
        message_bytes_max: msg.len().max(HEADER_BYTES + 1),
        elements_max: usize::MAX,
    };
    // Merging the sequences nests their documents two levels deeper than
    // they were walked; past the guard's depth the walk refuses them.
    if depth(command) > DEPTH_MAX {
        return;
    }
    let walked = parse(Bytes::from(msg), &limits).expect("a re-encoded command walks");
    assert_eq!(walked.elements, count_elements(command), "elements counted");
    let Ok(Request::Msg { command: again }) = walked.decode() else {
        panic!("a re-encoded command decodes");
    };
    assert_eq!(again.to_vec().unwrap(), body);
}

/// The answer to `to` reads back as the reply it carries, in the format,
/// checksum and compression the request asked for.
fn answer(to: &ReplyTo, reply: &Document, compressible: bool) {
    if to.more_to_come {
        return;
    }
    let bytes = encode_reply(to, 1, reply, compressible, false).expect("an answer encodes");
    let h = read_header(&bytes).expect("an answer has a header");
    assert_eq!(h.length, bytes.len());
    assert_eq!(h.response_to, to.request_id);
    let compressed = h.op_code == OP_COMPRESSED;
    assert_eq!(compressed, compressible && to.compressor.is_some());
    match to.format {
        Format::Msg => {
            let limits = Limits {
                message_bytes_max: MongoConfig::default().max_message_bytes,
                elements_max: usize::MAX,
            };
            let walked = parse(Bytes::from(bytes), &limits).expect("an answer walks");
            assert_eq!(walked.to.checksum, to.checksum);
            assert_eq!(
                walked.to.compressor,
                if compressed { to.compressor } else { None }
            );
            let Ok(Request::Msg { command }) = walked.decode() else {
                panic!("an answer decodes");
            };
            assert_eq!(&command, reply);
        }
        Format::Reply => {
            let plain = if compressed {
                let size = i32::from_le_bytes(bytes[20..24].try_into().unwrap()) as usize;
                let mut p = bytes[..16].to_vec();
                p.extend(decompress(bytes[24], &bytes[25..], size).expect("an answer inflates"));
                p
            } else {
                bytes
            };
            assert_eq!(i32::from_le_bytes(plain[32..36].try_into().unwrap()), 1);
            let got = Document::from_reader(&plain[36..]).expect("the reply document");
            assert_eq!(&got, reply);
        }
    }
}

// Seeds.

fn header(out: &mut Vec<u8>, request_id: i32, op: i32) {
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&request_id.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&op.to_le_bytes());
}

fn set_length(m: &mut [u8]) {
    let n = m.len() as i32;
    m[..4].copy_from_slice(&n.to_le_bytes());
}

/// OP_MSG with a body and document sequences, as a driver sends it.
fn op_msg(request_id: i32, flags: u32, body: &Document, seqs: &[(&str, Vec<Document>)]) -> Vec<u8> {
    let mut m = Vec::new();
    header(&mut m, request_id, OP_MSG);
    m.extend_from_slice(&flags.to_le_bytes());
    m.push(0);
    m.extend(body.to_vec().unwrap());
    for (id, docs) in seqs {
        m.push(1);
        let mut s = Vec::new();
        s.extend_from_slice(id.as_bytes());
        s.push(0);
        for d in docs {
            s.extend(d.to_vec().unwrap());
        }
        m.extend_from_slice(&((s.len() + 4) as i32).to_le_bytes());
        m.extend(s);
    }
    if flags & CHECKSUM_PRESENT != 0 {
        m.extend_from_slice(&[0; 4]);
        set_length(&mut m);
        let end = m.len() - 4;
        let crc = crc32c::crc32c(&m[..end]);
        m[end..].copy_from_slice(&crc.to_le_bytes());
    } else {
        set_length(&mut m);
    }
    m
}

/// OP_QUERY on `<collection>`, as drivers send their first handshake.
fn op_query(
    request_id: i32,
    collection: &str,
    query: &Document,
    fields: Option<&Document>,
) -> Vec<u8> {
    let mut m = Vec::new();
    header(&mut m, request_id, OP_QUERY);
    m.extend_from_slice(&0i32.to_le_bytes());
    m.extend_from_slice(collection.as_bytes());
    m.push(0);
    m.extend_from_slice(&0i32.to_le_bytes());
    m.extend_from_slice(&(-1i32).to_le_bytes());
    m.extend(query.to_vec().unwrap());
    if let Some(f) = fields {
        m.extend(f.to_vec().unwrap());
    }
    set_length(&mut m);
    m
}

fn write_seeds(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).expect("seed dir");
    let hello = doc! {
        "hello": 1, "helloOk": true,
        "compression": ["snappy", "zlib", "zstd"],
        "client": {"driver": {"name": "fuzz", "version": "1"}, "os": {"type": "Linux"}},
        "$db": "admin",
    };
    let ping = doc! {"ping": 1, "$db": "admin"};
    let insert = doc! {"insert": "c", "ordered": true, "$db": "t"};
    let docs = vec![
        doc! {"_id": 1, "s": "abc", "n": {"a": [1, 2.5, null]}},
        doc! {"_id": bson::oid::ObjectId::from_bytes([7; 12]), "t": true},
    ];
    let update = doc! {"update": "c", "$db": "t", "lsid": {"id": Bson::Binary(bson::Binary {
    subtype: bson::spec::BinarySubtype::Uuid, bytes: vec![1; 16] })}};
    let updates = vec![doc! {"q": {"_id": 1}, "u": {"$set": {"a": 1}}, "upsert": true}];
    let find = doc! {"find": "c", "filter": {"a": {"$gt": 1}}, "batchSize": 2, "$db": "t"};
    let is_master = doc! {"isMaster": 1, "helloOk": true, "client": {"application": {"name": "x"}}};

    let mut seeds: Vec<Vec<u8>> = vec![
        op_msg(1, 0, &hello, &[]),
        op_msg(2, CHECKSUM_PRESENT, &ping, &[]),
        op_msg(3, 0, &insert, &[("documents", docs.clone())]),
        op_msg(4, CHECKSUM_PRESENT, &insert, &[("documents", docs.clone())]),
        op_msg(5, MORE_TO_COME, &insert, &[("documents", docs.clone())]),
        op_msg(6, 0, &update, &[("updates", updates)]),
        op_msg(7, 0, &find, &[]),
        op_msg(8, 0, &doc! {"ping": 1}, &[]),
        op_query(9, "admin.$cmd", &is_master, None),
        op_query(
            10,
            "admin.$cmd",
            &doc! {"$query": {"isMaster": 1}, "$readPreference": {"mode": "primary"}},
            Some(&doc! {"ok": 1}),
        ),
        op_query(11, "t.c", &doc! {"a": 1}, None),
    ];
    for c in Compressor::ALL {
        for m in [
            op_msg(12, 0, &insert, &[("documents", docs.clone())]),
            op_msg(13, CHECKSUM_PRESENT, &find, &[]),
            op_query(14, "admin.$cmd", &is_master, None),
        ] {
            seeds.push(compress_message(&m, c).expect("compresses"));
        }
    }
    // Two messages back to back on one connection.
    let mut two = op_msg(15, 0, &hello, &[]);
    two.extend(op_msg(16, 0, &find, &[]));
    seeds.push(two);
    for (i, seed) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:02}")), seed).expect("seed written");
    }
}
