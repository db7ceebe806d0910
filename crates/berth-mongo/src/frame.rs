//! Reading whole messages off a stream: the first four bytes of a message
//! are its length, header included. A length below the header's 16 bytes
//! or above the limit closes the connection before its body is read.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::conn::Close;
use crate::wire::HEADER_BYTES;

/// Bytes read per step while a message arrives: memory follows what the
/// peer actually sent, not the length it announced.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Reads messages from a stream. [`Reader::next`] is cancellation safe (it
/// keeps what it has read in its buffer), so a connection can wait for the
/// next message and for shutdown at the same time.
pub struct Reader {
    buf: BytesMut,
    max_bytes: usize,
}

impl Reader {
    pub fn new(max_bytes: usize) -> Reader {
        Reader {
            buf: BytesMut::new(),
            max_bytes,
        }
    }

    /// Changes the bound on the next messages.
    pub fn set_max_bytes(&mut self, max_bytes: usize) {
        self.max_bytes = max_bytes;
    }

    /// The next whole message, header included. `Ok(None)`: the peer
    /// closed the connection between messages (a clean close).
    pub async fn next<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> Result<Option<Bytes>, Close> {
        loop {
            let mut want = 4;
            if self.buf.len() >= 4 {
                let size = i32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
                let size = usize::try_from(size)
                    .ok()
                    .filter(|&s| s >= HEADER_BYTES)
                    .ok_or_else(|| Close::Malformed(format!("message length {size}")))?;
                if size > self.max_bytes {
                    return Err(Close::TooLarge {
                        size,
                        max_bytes: self.max_bytes,
                    });
                }
                if self.buf.len() >= size {
                    return Ok(Some(self.buf.split_to(size).freeze()));
                }
                want = size;
            }
            let missing = want - self.buf.len();
            self.buf.reserve(missing.clamp(4, READ_CHUNK_BYTES));
            let n = match r.read_buf(&mut self.buf).await {
                Ok(n) => n,
                // A client process that exits resets its connections, and
                // drivers close TLS without close_notify (rustls reports
                // UnexpectedEof): between messages either is a close like
                // any other.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
                    ) && self.buf.is_empty() =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(Close::Io(e)),
            };
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(Close::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed after {} of {want} message bytes",
                        self.buf.len()
                    ),
                )));
            }
        }
    }

    /// Bytes read of a message that is not whole yet.
    #[cfg(test)]
    fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// Writes one whole message and flushes it.
pub async fn write<W: AsyncWrite + Unpin>(w: &mut W, msg: &[u8]) -> Result<(), Close> {
    w.write_all(msg).await.map_err(Close::Io)?;
    w.flush().await.map_err(Close::Io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(body: &[u8]) -> Vec<u8> {
        let mut m = ((HEADER_BYTES + body.len()) as i32).to_le_bytes().to_vec();
        m.extend_from_slice(&[0; 12]);
        m.extend_from_slice(body);
        m
    }

    async fn read_from(bytes: &[u8], max: usize) -> Result<Option<Bytes>, Close> {
        let mut r = bytes;
        Reader::new(max).next(&mut r).await
    }

    #[tokio::test]
    async fn whole_messages_and_clean_eof() {
        let m = message(b"hello");
        let got = read_from(&m, 100).await.unwrap().unwrap();
        assert_eq!(&got[..], &m[..]);
        assert!(read_from(b"", 100).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn limits_and_truncation() {
        let m = message(b"hello");
        assert!(matches!(
            read_from(&m, 20).await,
            Err(Close::TooLarge {
                size: 21,
                max_bytes: 20
            })
        ));
        for bad_len in [-1i32, 0, 15] {
            let r = read_from(&bad_len.to_le_bytes(), 100).await;
            assert!(matches!(r, Err(Close::Malformed(_))), "{bad_len}");
        }
        assert!(matches!(read_from(&m[..10], 100).await, Err(Close::Io(_))));
        assert!(matches!(read_from(&m[..2], 100).await, Err(Close::Io(_))));
    }

    #[tokio::test]
    async fn messages_larger_than_a_chunk_and_back_to_back() {
        let big = message(&vec![7u8; READ_CHUNK_BYTES * 2 + 3]);
        let small = message(b"x");
        let mut both = big.clone();
        both.extend_from_slice(&small);
        let mut r = &both[..];
        let mut reader = Reader::new(big.len());
        assert_eq!(&reader.next(&mut r).await.unwrap().unwrap()[..], &big[..]);
        assert_eq!(&reader.next(&mut r).await.unwrap().unwrap()[..], &small[..]);
        assert_eq!(reader.pending(), 0);
        assert!(reader.next(&mut r).await.unwrap().is_none());
    }
}
