//! MongoDB's wire messages: the 16-byte header, OP_MSG (2013), OP_QUERY
//! (2004, only for commands on `<db>.$cmd`, as drivers send their first
//! handshake), OP_REPLY (1, the answer to OP_QUERY) and OP_COMPRESSED
//! (2012) around either.
//!
//! A message is read in two steps. [`parse`] walks it: the header, the
//! compression, OP_MSG's flag bits, checksum and sections, and every BSON
//! document in it ([`crate::guard`]); it counts the elements and decodes
//! nothing. [`Walked::decode`] then builds the command document (merging
//! OP_MSG document sequences into it as arrays). Between the two the
//! connection charges the message's decoded size to the server's budget.
//!
//! Errors come in two kinds ([`WireError`]): a message whose frame cannot
//! be trusted (unknown opcode, failed checksum, corrupt compression) closes
//! the connection; an intact frame with a bad content (unknown section
//! kind, invalid BSON, a second body) is answered with an error document in
//! the format the client waits for, and the connection goes on.

use std::ops::Range;

use bson::Document;
use bytes::Bytes;

use crate::codes::{self, MongoError};
use crate::compress::{self, Compressor};
use crate::guard::{self, BsonError, Counter};

pub const HEADER_BYTES: usize = 16;

pub const OP_REPLY: i32 = 1;
pub const OP_QUERY: i32 = 2004;
pub const OP_COMPRESSED: i32 = 2012;
pub const OP_MSG: i32 = 2013;

/// OP_MSG flag bits.
pub const CHECKSUM_PRESENT: u32 = 1;
pub const MORE_TO_COME: u32 = 1 << 1;
/// Optional, and ignored: answers are never streamed (exhaust).
#[allow(dead_code)]
pub const EXHAUST_ALLOWED: u32 = 1 << 16;
/// Bits 0-15 are required: a receiver must refuse those it does not know.
const REQUIRED_BITS: u32 = 0xffff;

/// OP_REPLY flag bits.
pub const REPLY_QUERY_FAILURE: i32 = 1 << 1;
pub const REPLY_AWAIT_CAPABLE: i32 = 1 << 3;

/// Documents in one OP_MSG document sequence, at most (MongoDB's
/// `maxWriteBatchSize`: drivers split larger batches).
pub const SEQUENCE_DOCUMENTS_MAX: usize = 100_000;
/// Sections in one OP_MSG, at most (a body and a sequence per command
/// array; real messages have one or two).
pub const SECTIONS_MAX: usize = 16;

/// The standard message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The whole message, header included.
    pub length: usize,
    pub request_id: i32,
    pub response_to: i32,
    pub op_code: i32,
}

fn read_i32(b: &[u8], at: usize) -> Option<i32> {
    let bytes = b.get(at..at.checked_add(4)?)?;
    Some(i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// The header at the start of `b`; `None` when fewer than 16 bytes or a
/// negative length.
pub fn read_header(b: &[u8]) -> Option<Header> {
    Some(Header {
        length: usize::try_from(read_i32(b, 0)?).ok()?,
        request_id: read_i32(b, 4)?,
        response_to: read_i32(b, 8)?,
        op_code: read_i32(b, 12)?,
    })
}

fn put_header(out: &mut Vec<u8>, length: usize, request_id: i32, response_to: i32, op: i32) {
    // Callers bound messages far below 2 GiB.
    let length = i32::try_from(length).expect("message length fits in int32");
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&request_id.to_le_bytes());
    out.extend_from_slice(&response_to.to_le_bytes());
    out.extend_from_slice(&op.to_le_bytes());
}

/// How the client expects its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OP_MSG with one body section.
    Msg,
    /// OP_REPLY with one document (the request was OP_QUERY).
    Reply,
}

/// What answering a request needs to know of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyTo {
    pub request_id: i32,
    pub format: Format,
    /// OP_MSG moreToCome: the client waits for no answer.
    pub more_to_come: bool,
    /// The request carried a CRC-32C: so does the answer.
    pub checksum: bool,
    /// The request came compressed with this: the answer may be too.
    pub compressor: Option<Compressor>,
}

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum WireError {
    /// The frame cannot be trusted: close the connection.
    Fatal(String),
    /// The frame is intact but its content is not: answer with this error
    /// (unless the client expects no answer) and go on.
    Bad { to: ReplyTo, error: MongoError },
}

/// Bounds on one message.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest message (MongoDB's `maxMessageSizeBytes`), also after
    /// decompression.
    pub message_bytes_max: usize,
    /// BSON elements in one message, at most (see [`crate::guard`]).
    pub elements_max: usize,
}

/// A message walked by [`parse`], not decoded yet.
#[derive(Debug)]
pub struct Walked {
    pub to: ReplyTo,
    /// BSON elements in the message.
    pub elements: usize,
    /// The message (decompressed), header included.
    bytes: Bytes,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Msg {
        body: Range<usize>,
        sequences: Vec<(String, Vec<Range<usize>>)>,
    },
    Query {
        collection: String,
        query: Range<usize>,
    },
}

/// A decoded request.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// OP_MSG: the command, with its document sequences merged in.
    Msg { command: Document },
    /// OP_QUERY: the namespace (`<db>.$cmd` for a command) and the query.
    Query { collection: String, query: Document },
}

fn bson_error(to: ReplyTo, what: &str, e: BsonError) -> WireError {
    let code = match e {
        BsonError::Invalid { .. } => codes::INVALID_BSON,
        BsonError::TooDeep => codes::OVERFLOW,
        BsonError::TooLarge { .. } | BsonError::TooManyElements { .. } => {
            codes::BSON_OBJECT_TOO_LARGE
        }
    };
    WireError::Bad {
        to,
        error: MongoError::new(code, format!("{what}: {e}")),
    }
}

/// Walks a whole message (`frame`: header included, its length already
/// checked against `limits` by the reader).
pub fn parse(frame: Bytes, limits: &Limits) -> Result<Walked, WireError> {
    let h = read_header(&frame).ok_or_else(|| WireError::Fatal("short header".into()))?;
    if h.length != frame.len() {
        return Err(WireError::Fatal(format!(
            "message length {} but {} bytes",
            h.length,
            frame.len()
        )));
    }
    if h.op_code != OP_COMPRESSED {
        return parse_plain(frame, h, None, limits);
    }
    // OP_COMPRESSED: originalOpcode, uncompressedSize, compressorId, data.
    let fatal = |why: String| WireError::Fatal(format!("OP_COMPRESSED: {why}"));
    let (Some(original), Some(size), Some(&id)) =
        (read_i32(&frame, 16), read_i32(&frame, 20), frame.get(24))
    else {
        return Err(fatal("shorter than its fields".into()));
    };
    if original != OP_MSG && original != OP_QUERY {
        return Err(fatal(format!("wraps opcode {original}")));
    }
    let size = usize::try_from(size).map_err(|_| fatal(format!("uncompressed size {size}")))?;
    if size > limits.message_bytes_max - HEADER_BYTES {
        return Err(fatal(format!(
            "uncompressed size {size} exceeds the limit of {}",
            limits.message_bytes_max
        )));
    }
    let content = compress::decompress(id, &frame[25..], size).map_err(fatal)?;
    let compressor = Compressor::from_id(id);
    // The message as it was before compression: the checksum of an OP_MSG
    // covers its own header.
    let mut inner = Vec::with_capacity(HEADER_BYTES + size);
    put_header(
        &mut inner,
        HEADER_BYTES + size,
        h.request_id,
        h.response_to,
        original,
    );
    inner.extend_from_slice(&content);
    drop(content);
    let inner_header = Header {
        length: inner.len(),
        op_code: original,
        ..h
    };
    parse_plain(Bytes::from(inner), inner_header, compressor, limits)
}

fn parse_plain(
    bytes: Bytes,
    h: Header,
    compressor: Option<Compressor>,
    limits: &Limits,
) -> Result<Walked, WireError> {
    match h.op_code {
        OP_MSG => parse_msg(bytes, h, compressor, limits),
        OP_QUERY => parse_query(bytes, h, compressor, limits),
        op => Err(WireError::Fatal(format!("unsupported opcode {op}"))),
    }
}

fn parse_msg(
    bytes: Bytes,
    h: Header,
    compressor: Option<Compressor>,
    limits: &Limits,
) -> Result<Walked, WireError> {
    let flags = read_i32(&bytes, 16)
        .ok_or_else(|| WireError::Fatal("OP_MSG without flag bits".into()))? as u32;
    let to = ReplyTo {
        request_id: h.request_id,
        format: Format::Msg,
        more_to_come: flags & MORE_TO_COME != 0,
        checksum: flags & CHECKSUM_PRESENT != 0,
        compressor,
    };
    let bad = |code: i32, what: String| WireError::Bad {
        to,
        error: MongoError::new(code, what),
    };
    let mut end = bytes.len();
    if to.checksum {
        if end < HEADER_BYTES + 4 + 4 {
            return Err(WireError::Fatal("OP_MSG too short for its checksum".into()));
        }
        end -= 4;
        let sent = u32::from_le_bytes([bytes[end], bytes[end + 1], bytes[end + 2], bytes[end + 3]]);
        let computed = crc32c::crc32c(&bytes[..end]);
        if sent != computed {
            return Err(WireError::Fatal(format!(
                "OP_MSG checksum {sent:#010x}, computed {computed:#010x}"
            )));
        }
    }
    let unknown = flags & REQUIRED_BITS & !(CHECKSUM_PRESENT | MORE_TO_COME);
    if unknown != 0 {
        return Err(bad(
            codes::PROTOCOL_ERROR,
            format!("OP_MSG with unknown required flag bits {unknown:#x}"),
        ));
    }
    let mut counter = Counter::new(limits.elements_max);
    let mut body = None;
    let mut sequences: Vec<(String, Vec<Range<usize>>)> = Vec::new();
    let mut pos = 20;
    let mut sections = 0;
    while pos < end {
        sections += 1;
        if sections > SECTIONS_MAX {
            return Err(bad(
                codes::PROTOCOL_ERROR,
                format!("OP_MSG with more than {SECTIONS_MAX} sections"),
            ));
        }
        let kind = bytes[pos];
        pos += 1;
        match kind {
            0 => {
                if body.is_some() {
                    return Err(bad(
                        codes::PROTOCOL_ERROR,
                        "OP_MSG with more than one body section".into(),
                    ));
                }
                let len = guard::check(&bytes[pos..end], &mut counter)
                    .map_err(|e| bson_error(to, "OP_MSG body", e))?;
                body = Some(pos..pos + len);
                pos += len;
            }
            1 => {
                let size = read_i32(&bytes[..end], pos)
                    .and_then(|s| usize::try_from(s).ok())
                    .filter(|&s| s >= 4 + 2 && s <= end - pos)
                    .ok_or_else(|| {
                        bad(
                            codes::PROTOCOL_ERROR,
                            "OP_MSG document sequence of a bad size".into(),
                        )
                    })?;
                let section_end = pos + size;
                let mut at = pos + 4;
                let nul = bytes[at..section_end]
                    .iter()
                    .position(|&b| b == 0)
                    .ok_or_else(|| {
                        bad(
                            codes::PROTOCOL_ERROR,
                            "OP_MSG document sequence without an identifier".into(),
                        )
                    })?;
                let id = std::str::from_utf8(&bytes[at..at + nul])
                    .ok()
                    .filter(|id| !id.is_empty())
                    .ok_or_else(|| {
                        bad(
                            codes::PROTOCOL_ERROR,
                            "OP_MSG document sequence with a bad identifier".into(),
                        )
                    })?
                    .to_string();
                if sequences.iter().any(|(other, _)| *other == id) {
                    return Err(bad(
                        codes::PROTOCOL_ERROR,
                        format!("OP_MSG with two document sequences {id:?}"),
                    ));
                }
                at += nul + 1;
                let mut docs = Vec::new();
                while at < section_end {
                    if docs.len() == SEQUENCE_DOCUMENTS_MAX {
                        return Err(bad(
                            codes::INVALID_LENGTH,
                            format!(
                                "document sequence {id:?} holds more than \
                                 {SEQUENCE_DOCUMENTS_MAX} documents"
                            ),
                        ));
                    }
                    let len = guard::check(&bytes[at..section_end], &mut counter)
                        .map_err(|e| bson_error(to, "OP_MSG document sequence", e))?;
                    docs.push(at..at + len);
                    at += len;
                }
                sequences.push((id, docs));
                pos = section_end;
            }
            k => {
                return Err(bad(
                    codes::PROTOCOL_ERROR,
                    format!("OP_MSG with unknown section kind {k}"),
                ))
            }
        }
    }
    let body = body.ok_or_else(|| {
        bad(
            codes::PROTOCOL_ERROR,
            "OP_MSG without a body section".into(),
        )
    })?;
    Ok(Walked {
        to,
        elements: counter.elements,
        bytes,
        kind: Kind::Msg { body, sequences },
    })
}

fn parse_query(
    bytes: Bytes,
    h: Header,
    compressor: Option<Compressor>,
    limits: &Limits,
) -> Result<Walked, WireError> {
    let to = ReplyTo {
        request_id: h.request_id,
        format: Format::Reply,
        more_to_come: false,
        checksum: false,
        compressor,
    };
    let bad = |what: String| WireError::Bad {
        to,
        error: MongoError::new(codes::PROTOCOL_ERROR, format!("OP_QUERY: {what}")),
    };
    // flags, fullCollectionName, numberToSkip, numberToReturn, query,
    // [returnFieldsSelector].
    let mut pos = 20;
    let nul = bytes
        .get(pos..)
        .and_then(|rest| rest.iter().position(|&b| b == 0))
        .ok_or_else(|| bad("no collection name".into()))?;
    let collection = std::str::from_utf8(&bytes[pos..pos + nul])
        .map_err(|_| bad("collection name is not UTF-8".into()))?
        .to_string();
    pos += nul + 1 + 8;
    if pos > bytes.len() {
        return Err(bad("shorter than its fields".into()));
    }
    let mut counter = Counter::new(limits.elements_max);
    let len = guard::check(&bytes[pos..], &mut counter)
        .map_err(|e| bson_error(to, "OP_QUERY query", e))?;
    let query = pos..pos + len;
    pos += len;
    if pos < bytes.len() {
        // The field selector: checked, then ignored (commands have none).
        let len = guard::check(&bytes[pos..], &mut counter)
            .map_err(|e| bson_error(to, "OP_QUERY field selector", e))?;
        pos += len;
    }
    if pos != bytes.len() {
        return Err(bad(format!(
            "{} bytes after the documents",
            bytes.len() - pos
        )));
    }
    Ok(Walked {
        to,
        elements: counter.elements,
        bytes,
        kind: Kind::Query { collection, query },
    })
}

impl Walked {
    /// The message's size in bytes (decompressed).
    pub fn size_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Decodes the walked documents into the request.
    pub fn decode(self) -> Result<Request, WireError> {
        let to = self.to;
        let doc = |r: &Range<usize>| -> Result<Document, WireError> {
            let raw = bson::RawDocument::from_bytes(&self.bytes[r.clone()])
                .and_then(Document::try_from)
                .map_err(|e| WireError::Bad {
                    to,
                    error: MongoError::new(codes::INVALID_BSON, format!("invalid BSON: {e}")),
                })?;
            Ok(raw)
        };
        match &self.kind {
            Kind::Msg { body, sequences } => {
                let mut command = doc(body)?;
                for (id, docs) in sequences {
                    if command.contains_key(id) {
                        return Err(WireError::Bad {
                            to,
                            error: MongoError::new(
                                codes::PROTOCOL_ERROR,
                                format!("field {id:?} both in the body and as a document sequence"),
                            ),
                        });
                    }
                    let array = docs
                        .iter()
                        .map(|r| doc(r).map(bson::Bson::Document))
                        .collect::<Result<Vec<_>, _>>()?;
                    command.insert(id.clone(), array);
                }
                Ok(Request::Msg { command })
            }
            Kind::Query { collection, query } => Ok(Request::Query {
                collection: collection.clone(),
                query: doc(query)?,
            }),
        }
    }
}

/// Encodes an answer to `to`: OP_MSG or OP_REPLY as the request was (an
/// OP_REPLY flagged QueryFailure when `query_failure`), with a checksum
/// when the request had one, compressed with the request's compressor when
/// `compress`.
pub fn encode_reply(
    to: &ReplyTo,
    response_id: i32,
    doc: &Document,
    compress: bool,
    query_failure: bool,
) -> Result<Vec<u8>, String> {
    let body = doc.to_vec().map_err(|e| format!("encoding a reply: {e}"))?;
    let msg = match to.format {
        Format::Msg => encode_msg(response_id, to.request_id, &body, to.checksum),
        Format::Reply => encode_op_reply(response_id, to.request_id, &body, query_failure),
    };
    match to.compressor {
        Some(c) if compress => compress_message(&msg, c),
        _ => Ok(msg),
    }
}

/// OP_MSG with one body section (`body`: an encoded document).
pub fn encode_msg(request_id: i32, response_to: i32, body: &[u8], checksum: bool) -> Vec<u8> {
    let length = HEADER_BYTES + 4 + 1 + body.len() + if checksum { 4 } else { 0 };
    let mut out = Vec::with_capacity(length);
    put_header(&mut out, length, request_id, response_to, OP_MSG);
    let flags = if checksum { CHECKSUM_PRESENT } else { 0 };
    out.extend_from_slice(&flags.to_le_bytes());
    out.push(0);
    out.extend_from_slice(body);
    if checksum {
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
    }
    debug_assert_eq!(out.len(), length);
    out
}

/// OP_REPLY with one document (`doc`: encoded).
pub fn encode_op_reply(request_id: i32, response_to: i32, doc: &[u8], failure: bool) -> Vec<u8> {
    let length = HEADER_BYTES + 4 + 8 + 4 + 4 + doc.len();
    let mut out = Vec::with_capacity(length);
    put_header(&mut out, length, request_id, response_to, OP_REPLY);
    let mut flags = REPLY_AWAIT_CAPABLE;
    if failure {
        flags |= REPLY_QUERY_FAILURE;
    }
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&0i64.to_le_bytes()); // cursorID
    out.extend_from_slice(&0i32.to_le_bytes()); // startingFrom
    out.extend_from_slice(&1i32.to_le_bytes()); // numberReturned
    out.extend_from_slice(doc);
    debug_assert_eq!(out.len(), length);
    out
}

/// Wraps a whole message (header included) in OP_COMPRESSED.
pub fn compress_message(msg: &[u8], c: Compressor) -> Result<Vec<u8>, String> {
    let h = read_header(msg).ok_or("compressing a message without a header")?;
    let content = &msg[HEADER_BYTES..];
    let packed = c.compress(content)?;
    let length = HEADER_BYTES + 9 + packed.len();
    let mut out = Vec::with_capacity(length);
    put_header(&mut out, length, h.request_id, h.response_to, OP_COMPRESSED);
    out.extend_from_slice(&h.op_code.to_le_bytes());
    let size = i32::try_from(content.len()).map_err(|_| "message too large to compress")?;
    out.extend_from_slice(&size.to_le_bytes());
    out.push(c.id());
    out.extend_from_slice(&packed);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, Bson};

    const LIMITS: Limits = Limits {
        message_bytes_max: 48_000_000,
        elements_max: 1_000_000,
    };

    /// An OP_MSG as a client builds it: a body, then document sequences.
    fn op_msg(id: i32, flags: u32, body: &Document, seqs: &[(&str, Vec<Document>)]) -> Vec<u8> {
        let mut sections = vec![0u8];
        sections.extend(body.to_vec().unwrap());
        for (ident, docs) in seqs {
            let mut s = Vec::new();
            s.extend_from_slice(ident.as_bytes());
            s.push(0);
            for d in docs {
                s.extend(d.to_vec().unwrap());
            }
            sections.push(1);
            sections.extend_from_slice(&((s.len() + 4) as i32).to_le_bytes());
            sections.extend(s);
        }
        raw_msg(id, flags, &sections)
    }

    fn raw_msg(id: i32, flags: u32, sections: &[u8]) -> Vec<u8> {
        let checksum = flags & CHECKSUM_PRESENT != 0;
        let len = 16 + 4 + sections.len() + if checksum { 4 } else { 0 };
        let mut out = Vec::new();
        put_header(&mut out, len, id, 0, OP_MSG);
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(sections);
        if checksum {
            let crc = crc32c::crc32c(&out);
            out.extend_from_slice(&crc.to_le_bytes());
        }
        out
    }

    fn op_query(id: i32, coll: &str, q: &Document) -> Vec<u8> {
        let mut rest = 0i32.to_le_bytes().to_vec();
        rest.extend_from_slice(coll.as_bytes());
        rest.push(0);
        rest.extend_from_slice(&0i32.to_le_bytes());
        rest.extend_from_slice(&(-1i32).to_le_bytes());
        rest.extend(q.to_vec().unwrap());
        let mut out = Vec::new();
        put_header(&mut out, 16 + rest.len(), id, 0, OP_QUERY);
        out.extend(rest);
        out
    }

    fn walk(bytes: Vec<u8>) -> Result<Walked, WireError> {
        parse(Bytes::from(bytes), &LIMITS)
    }

    fn decode(bytes: Vec<u8>) -> Result<(ReplyTo, Request), WireError> {
        let w = walk(bytes)?;
        let to = w.to;
        Ok((to, w.decode()?))
    }

    fn bad_code(r: Result<(ReplyTo, Request), WireError>) -> i32 {
        match r {
            Err(WireError::Bad { error, .. }) => error.code,
            other => panic!("expected a Bad, got {other:?}"),
        }
    }

    #[test]
    fn op_msg_with_sequences_merges_them() {
        let body = doc! {"insert": "c", "ordered": true, "$db": "test"};
        let docs = vec![doc! {"_id": 1}, doc! {"_id": 2, "x": "y"}];
        let bytes = op_msg(7, 0, &body, &[("documents", docs.clone())]);
        let (to, req) = decode(bytes).unwrap();
        assert_eq!(to.request_id, 7);
        assert_eq!(to.format, Format::Msg);
        assert!(!to.more_to_come && !to.checksum && to.compressor.is_none());
        let Request::Msg { command } = req else {
            panic!("not a Msg")
        };
        assert_eq!(command.get_str("insert").unwrap(), "c");
        let merged: Vec<Bson> = docs.into_iter().map(Bson::Document).collect();
        assert_eq!(command.get_array("documents").unwrap(), &merged);
        // An empty sequence is an empty array.
        let (_, req) = decode(op_msg(8, 0, &body, &[("documents", vec![])])).unwrap();
        let Request::Msg { command } = req else {
            panic!()
        };
        assert!(command.get_array("documents").unwrap().is_empty());
    }

    #[test]
    fn op_msg_checksum_and_flags() {
        let body = doc! {"ping": 1, "$db": "admin"};
        let good = op_msg(1, CHECKSUM_PRESENT | EXHAUST_ALLOWED, &body, &[]);
        let (to, _) = decode(good.clone()).unwrap();
        assert!(to.checksum);
        // A flipped bit anywhere fails the checksum: the frame is corrupt.
        let mut bad = good.clone();
        bad[25] ^= 1;
        assert!(matches!(walk(bad), Err(WireError::Fatal(_))));
        let mut bad_crc = good;
        let n = bad_crc.len();
        bad_crc[n - 1] ^= 0x80;
        assert!(matches!(walk(bad_crc), Err(WireError::Fatal(_))));

        let (to, _) = decode(op_msg(2, MORE_TO_COME, &body, &[])).unwrap();
        assert!(to.more_to_come);
        // An unknown required bit is refused, an unknown optional one not.
        assert_eq!(
            bad_code(decode(op_msg(3, 1 << 5, &body, &[]))),
            codes::PROTOCOL_ERROR
        );
        assert!(decode(op_msg(4, 1 << 20, &body, &[])).is_ok());
    }

    #[test]
    fn malformed_op_msgs_are_answered() {
        let body = doc! {"ping": 1, "$db": "admin"};
        let body_bytes = body.to_vec().unwrap();
        // No body.
        assert_eq!(bad_code(decode(raw_msg(1, 0, &[]))), codes::PROTOCOL_ERROR);
        // Two bodies.
        let mut two = vec![0];
        two.extend(&body_bytes);
        two.push(0);
        two.extend(&body_bytes);
        assert_eq!(bad_code(decode(raw_msg(1, 0, &two))), codes::PROTOCOL_ERROR);
        // Section kind 2 (internal to MongoDB) and unknown kinds.
        let mut kind2 = vec![0];
        kind2.extend(&body_bytes);
        kind2.push(2);
        assert_eq!(
            bad_code(decode(raw_msg(1, 0, &kind2))),
            codes::PROTOCOL_ERROR
        );
        // A body whose length runs past the message.
        let mut short = vec![0];
        short.extend(&body_bytes[..body_bytes.len() - 3]);
        assert_eq!(bad_code(decode(raw_msg(1, 0, &short))), codes::INVALID_BSON);
        // A sequence whose size runs past the message, or without identifier.
        let mut seq = vec![0];
        seq.extend(&body_bytes);
        seq.push(1);
        seq.extend_from_slice(&1000i32.to_le_bytes());
        seq.extend_from_slice(b"documents\0");
        assert_eq!(bad_code(decode(raw_msg(1, 0, &seq))), codes::PROTOCOL_ERROR);
        let mut noid = vec![0];
        noid.extend(&body_bytes);
        noid.push(1);
        noid.extend_from_slice(&7i32.to_le_bytes());
        noid.extend_from_slice(b"abc");
        assert_eq!(
            bad_code(decode(raw_msg(1, 0, &noid))),
            codes::PROTOCOL_ERROR
        );
        // A field both in the body and as a sequence; two equal sequences.
        let dup = doc! {"insert": "c", "documents": [], "$db": "t"};
        let r = decode(op_msg(1, 0, &dup, &[("documents", vec![doc! {}])]));
        assert_eq!(bad_code(r), codes::PROTOCOL_ERROR);
        let r = decode(op_msg(
            1,
            0,
            &body,
            &[("documents", vec![]), ("documents", vec![])],
        ));
        assert_eq!(bad_code(r), codes::PROTOCOL_ERROR);
        // Garbage inside a sequence document.
        let mut garbage = op_msg(1, 0, &body, &[("documents", vec![doc! {"a": 1}])]);
        let n = garbage.len();
        garbage[n - 8] = 0x42; // the element type of "a"
        assert_eq!(bad_code(decode(garbage)), codes::INVALID_BSON);
        // Every Bad answers the request it came with.
        match walk(raw_msg(99, 0, &[])) {
            Err(WireError::Bad { to, .. }) => assert_eq!(to.request_id, 99),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sequences_are_bounded() {
        let body = doc! {"insert": "c", "$db": "t"};
        let docs = vec![doc! {}; SEQUENCE_DOCUMENTS_MAX + 1];
        let r = decode(op_msg(1, 0, &body, &[("documents", docs)]));
        assert_eq!(bad_code(r), codes::INVALID_LENGTH);
        let limits = Limits {
            elements_max: 10,
            ..LIMITS
        };
        let docs = vec![doc! {"a": 1, "b": 2}; 6];
        let bytes = op_msg(1, 0, &body, &[("documents", docs)]);
        match parse(Bytes::from(bytes), &limits) {
            Err(WireError::Bad { error, .. }) => {
                assert_eq!(error.code, codes::BSON_OBJECT_TOO_LARGE)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn op_query_and_op_reply() {
        let q = doc! {"isMaster": 1, "helloOk": true};
        let (to, req) = decode(op_query(5, "admin.$cmd", &q)).unwrap();
        assert_eq!(to.format, Format::Reply);
        assert_eq!(to.request_id, 5);
        assert_eq!(
            req,
            Request::Query {
                collection: "admin.$cmd".into(),
                query: q.clone()
            }
        );
        // With a field selector; with trailing garbage.
        let mut with_fields = op_query(5, "admin.$cmd", &q);
        with_fields.extend(doc! {"a": 1}.to_vec().unwrap());
        let len = with_fields.len() as i32;
        with_fields[..4].copy_from_slice(&len.to_le_bytes());
        assert!(decode(with_fields.clone()).is_ok());
        with_fields.push(0);
        with_fields[..4].copy_from_slice(&(len + 1).to_le_bytes());
        assert_eq!(bad_code(decode(with_fields)), codes::PROTOCOL_ERROR);

        let reply = doc! {"ismaster": true, "ok": 1.0};
        let bytes = encode_reply(&to, 77, &reply, false, false).unwrap();
        let h = read_header(&bytes).unwrap();
        assert_eq!(
            (h.length, h.request_id, h.response_to, h.op_code),
            (bytes.len(), 77, 5, OP_REPLY)
        );
        assert_eq!(read_i32(&bytes, 16), Some(REPLY_AWAIT_CAPABLE));
        assert_eq!(read_i32(&bytes, 32), Some(1)); // numberReturned
        assert_eq!(Document::from_reader(&bytes[36..]).unwrap(), reply);
        let failed = encode_reply(&to, 78, &reply, false, true).unwrap();
        assert_eq!(
            read_i32(&failed, 16),
            Some(REPLY_AWAIT_CAPABLE | REPLY_QUERY_FAILURE)
        );
    }

    /// A reply as a client reads it: OP_MSG (checksum verified) or
    /// OP_COMPRESSED around one.
    fn read_reply(bytes: &[u8]) -> (Header, u32, Document) {
        let h = read_header(bytes).unwrap();
        assert_eq!(h.length, bytes.len());
        if h.op_code == OP_COMPRESSED {
            let size = read_i32(bytes, 20).unwrap() as usize;
            let content = compress::decompress(bytes[24], &bytes[25..], size).unwrap();
            let mut inner = Vec::new();
            put_header(&mut inner, 16 + size, h.request_id, h.response_to, OP_MSG);
            inner.extend(content);
            return read_reply(&inner);
        }
        assert_eq!(h.op_code, OP_MSG);
        let flags = read_i32(bytes, 16).unwrap() as u32;
        let mut end = bytes.len();
        if flags & CHECKSUM_PRESENT != 0 {
            end -= 4;
            let crc = u32::from_le_bytes(bytes[end..].try_into().unwrap());
            assert_eq!(crc, crc32c::crc32c(&bytes[..end]));
        }
        assert_eq!(bytes[20], 0);
        (h, flags, Document::from_reader(&bytes[21..end]).unwrap())
    }

    #[test]
    fn op_compressed_each_codec_both_ways() {
        let body = doc! {"find": "c", "filter": {"a": "x".repeat(500)}, "$db": "t"};
        for c in Compressor::ALL {
            for flags in [0, CHECKSUM_PRESENT] {
                let plain = op_msg(11, flags, &body, &[("documents", vec![doc! {"z": 1}])]);
                let packed = compress_message(&plain, c).unwrap();
                assert!(packed.len() < plain.len(), "{c:?}");
                let (to, req) = decode(packed).unwrap();
                assert_eq!(to.compressor, Some(c));
                assert_eq!(to.checksum, flags != 0);
                let Request::Msg { command } = req else {
                    panic!()
                };
                assert_eq!(command.get_str("find").unwrap(), "c");

                // The answer: compressed with the same codec when asked.
                let reply = doc! {"ok": 1.0, "pad": "y".repeat(500)};
                let bytes = encode_reply(&to, 12, &reply, true, false).unwrap();
                assert_eq!(read_header(&bytes).unwrap().op_code, OP_COMPRESSED);
                assert_eq!(bytes[24], c.id());
                let (h, rflags, got) = read_reply(&bytes);
                assert_eq!((h.request_id, h.response_to), (12, 11));
                assert_eq!(rflags & CHECKSUM_PRESENT != 0, flags != 0);
                assert_eq!(got, reply);
                // Not when the command's answer must stay uncompressed.
                let bytes = encode_reply(&to, 13, &reply, false, false).unwrap();
                assert_eq!(read_header(&bytes).unwrap().op_code, OP_MSG);
            }
        }
        // noop (id 0) content.
        let plain = op_msg(1, 0, &doc! {"ping": 1, "$db": "a"}, &[]);
        let mut noop = Vec::new();
        put_header(&mut noop, 25 + plain.len() - 16, 1, 0, OP_COMPRESSED);
        noop.extend_from_slice(&OP_MSG.to_le_bytes());
        noop.extend_from_slice(&((plain.len() - 16) as i32).to_le_bytes());
        noop.push(0);
        noop.extend_from_slice(&plain[16..]);
        let (to, _) = decode(noop).unwrap();
        assert_eq!(to.compressor, None);
    }

    #[test]
    fn bad_compressed_frames_close() {
        let plain = op_msg(1, 0, &doc! {"ping": 1, "$db": "a"}, &[]);
        let good = compress_message(&plain, Compressor::Zlib).unwrap();
        // Wrong announced size, corrupt content, unknown codec, wrapped
        // opcode not served, a size above the limit.
        let mut wrong_size = good.clone();
        wrong_size[20] = wrong_size[20].wrapping_add(1);
        let mut corrupt = good.clone();
        let n = corrupt.len();
        corrupt[n - 3] ^= 0xff;
        let mut codec = good.clone();
        codec[24] = 9;
        let mut opcode = good.clone();
        opcode[16..20].copy_from_slice(&OP_COMPRESSED.to_le_bytes());
        let mut huge = good.clone();
        huge[20..24].copy_from_slice(&i32::MAX.to_le_bytes());
        for bad in [wrong_size, corrupt, codec, opcode, huge] {
            assert!(matches!(walk(bad), Err(WireError::Fatal(_))));
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// A message header around `rest`, with a length that agrees.
        fn framed(op: i32, rest: &[u8]) -> Bytes {
            let mut m = Vec::new();
            put_header(&mut m, 16 + rest.len(), 1, 0, op);
            m.extend_from_slice(rest);
            Bytes::from(m)
        }

        fn parse_and_decode(bytes: Bytes) {
            if let Ok(w) = parse(bytes, &LIMITS) {
                let _ = w.decode();
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// Arbitrary content under each opcode never panics.
            #[test]
            fn arbitrary_content(
                op in prop::sample::select(vec![OP_MSG, OP_QUERY, OP_COMPRESSED, 1, 2002]),
                rest in prop::collection::vec(any::<u8>(), 0..300),
            ) {
                parse_and_decode(framed(op, &rest));
            }

            /// A valid message with bytes changed decodes or is refused,
            /// never panics.
            #[test]
            fn mutated_messages(
                edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
                compress in any::<bool>(),
            ) {
                let body = doc! {"insert": "c", "$db": "t", "n": {"a": [1, "x", {"b": null}]}};
                let docs = vec![doc! {"_id": 1, "s": "abc"}, doc! {"_id": 2.5}];
                let mut m = op_msg(3, CHECKSUM_PRESENT, &body, &[("documents", docs)]);
                // Without the checksum the edits reach the sections.
                m.truncate(m.len() - 4);
                m[16] = 0;
                let len = m.len() as i32;
                m[..4].copy_from_slice(&len.to_le_bytes());
                if compress {
                    m = compress_message(&m, Compressor::Snappy).unwrap();
                }
                for (at, byte) in edits {
                    let i = at.index(m.len() - 4) + 4;
                    m[i] = byte;
                }
                parse_and_decode(Bytes::from(m));
            }

            /// Whatever documents the client sends come back as sent.
            #[test]
            fn sequences_round_trip(
                values in prop::collection::vec(
                    prop::collection::vec(("[a-z]{1,5}", any::<i64>()), 0..5), 0..20),
            ) {
                let docs: Vec<Document> = values
                    .into_iter()
                    .map(|kv| kv.into_iter().map(|(k, v)| (k, Bson::Int64(v))).collect())
                    .collect();
                let body = doc! {"insert": "c", "$db": "t"};
                let m = op_msg(1, 0, &body, &[("documents", docs.clone())]);
                let Request::Msg { command } = parse(Bytes::from(m), &LIMITS)
                    .unwrap()
                    .decode()
                    .unwrap()
                else {
                    panic!("not a Msg")
                };
                let merged: Vec<Bson> = docs.into_iter().map(Bson::Document).collect();
                prop_assert_eq!(command.get_array("documents").unwrap(), &merged);
            }
        }
    }

    #[test]
    fn untrusted_frames_close() {
        // Unknown opcode (OP_INSERT), a length that disagrees, short.
        let mut insert = op_msg(1, 0, &doc! {"a": 1}, &[]);
        insert[12..16].copy_from_slice(&2002i32.to_le_bytes());
        assert!(matches!(walk(insert), Err(WireError::Fatal(_))));
        let mut len = op_msg(1, 0, &doc! {"a": 1}, &[]);
        len[0] += 1;
        assert!(matches!(walk(len), Err(WireError::Fatal(_))));
        assert!(matches!(walk(vec![1, 2, 3]), Err(WireError::Fatal(_))));
        let mut flagless = Vec::new();
        put_header(&mut flagless, 18, 1, 0, OP_MSG);
        flagless.extend_from_slice(&[0, 0]);
        assert!(matches!(walk(flagless), Err(WireError::Fatal(_))));
    }
}
