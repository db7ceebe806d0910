//! Kafka framing: a 4-byte big-endian size, then that many bytes. The same
//! for requests, responses and raw SASL tokens (handshake v0).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::conn::Close;

/// Bytes read per step while a frame arrives: memory follows what the peer
/// actually sent, not the size it announced.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Reads frames from a stream. [`Reader::next`] is cancellation safe (it
/// keeps what it has read so far in its buffer), so a connection can wait
/// for the next request and for earlier answers at the same time.
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

    /// The next frame. `Ok(None)`: the peer closed the connection between
    /// frames (a clean close).
    pub async fn next<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> Result<Option<Bytes>, Close> {
        loop {
            let mut want = 4;
            if self.buf.len() >= 4 {
                let size = i32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
                if size < 0 {
                    return Err(Close::Malformed(format!("negative frame size {size}")));
                }
                let size = size as usize;
                if size > self.max_bytes {
                    return Err(Close::TooLarge {
                        size,
                        max_bytes: self.max_bytes,
                    });
                }
                if self.buf.len() >= 4 + size {
                    self.buf.advance(4);
                    return Ok(Some(self.buf.split_to(size).freeze()));
                }
                want = 4 + size;
            }
            // Memory follows what the peer sent, a chunk at a time.
            let missing = want - self.buf.len();
            self.buf.reserve(missing.clamp(4, READ_CHUNK_BYTES));
            let n = r.read_buf(&mut self.buf).await.map_err(Close::Io)?;
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let what = if self.buf.len() < 4 {
                    "size prefix".to_string()
                } else {
                    format!("{} of {} frame bytes", self.buf.len() - 4, want - 4)
                };
                return Err(Close::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("connection closed after {what}"),
                )));
            }
        }
    }
}

/// A buffer with room for the size prefix, to be filled by [`finish`].
pub fn start() -> BytesMut {
    let mut buf = BytesMut::with_capacity(256);
    buf.put_i32(0);
    buf
}

/// Writes the size prefix reserved by [`start`].
pub fn finish(mut buf: BytesMut) -> Result<Bytes, Close> {
    assert!(buf.len() >= 4, "frame buffer without its size prefix");
    let size = i32::try_from(buf.len() - 4)
        .map_err(|_| Close::Internal(format!("response of {} bytes", buf.len())))?;
    buf[..4].copy_from_slice(&size.to_be_bytes());
    Ok(buf.freeze())
}

/// Writes one finished frame (size prefix included) and flushes it.
pub async fn write<W: AsyncWrite + Unpin>(w: &mut W, frame: &[u8]) -> Result<(), Close> {
    w.write_all(frame).await.map_err(Close::Io)?;
    w.flush().await.map_err(Close::Io)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_from(bytes: &[u8], max: usize) -> Result<Option<Bytes>, Close> {
        let mut r = bytes;
        Reader::new(max).next(&mut r).await
    }

    #[tokio::test]
    async fn round_trip() {
        let mut buf = start();
        buf.put_slice(b"hello");
        let frame = finish(buf).unwrap();
        assert_eq!(&frame[..], b"\0\0\0\x05hello");
        let got = read_from(&frame, 5).await.unwrap().unwrap();
        assert_eq!(&got[..], b"hello");
    }

    #[tokio::test]
    async fn clean_eof_between_frames() {
        assert!(read_from(b"", 10).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn limits_and_truncation() {
        let too_big = read_from(&6i32.to_be_bytes(), 5).await;
        assert!(matches!(
            too_big,
            Err(Close::TooLarge {
                size: 6,
                max_bytes: 5
            })
        ));
        let negative = read_from(&(-1i32).to_be_bytes(), 5).await;
        assert!(matches!(negative, Err(Close::Malformed(_))));
        let short = read_from(b"\0\0\0\x05hel", 5).await;
        assert!(matches!(short, Err(Close::Io(_))));
        let half_prefix = read_from(b"\0\0", 5).await;
        assert!(matches!(half_prefix, Err(Close::Io(_))));
    }

    #[tokio::test]
    async fn frames_larger_than_one_chunk() {
        let body = vec![7u8; READ_CHUNK_BYTES * 2 + 3];
        let mut buf = start();
        buf.put_slice(&body);
        let frame = finish(buf).unwrap();
        let got = read_from(&frame, body.len()).await.unwrap().unwrap();
        assert_eq!(&got[..], &body[..]);
    }

    /// Frames arriving a few bytes at a time, the read cancelled between
    /// them: nothing is lost, and two frames in one read both come out.
    #[tokio::test]
    async fn cancelled_reads_lose_nothing() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let mut bytes = Vec::new();
        for body in [&b"first"[..], b"second", b"third"] {
            let mut buf = start();
            buf.put_slice(body);
            bytes.extend_from_slice(&finish(buf).unwrap());
        }
        let mut reader = Reader::new(100);
        let mut got = Vec::new();
        for chunk in bytes.chunks(3) {
            client.write_all(chunk).await.unwrap();
            // A read that finds no whole frame yet is cancelled.
            let wait = std::time::Duration::from_millis(5);
            if let Ok(f) = tokio::time::timeout(wait, reader.next(&mut server)).await {
                got.push(f.unwrap().unwrap());
            }
        }
        drop(client);
        while let Some(f) = reader.next(&mut server).await.unwrap() {
            got.push(f);
        }
        let got: Vec<&[u8]> = got.iter().map(|b| &b[..]).collect();
        assert_eq!(got, [&b"first"[..], b"second", b"third"]);
    }
}
