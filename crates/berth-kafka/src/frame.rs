//! Kafka framing: a 4-byte big-endian size, then that many bytes. The same
//! for requests, responses and raw SASL tokens (handshake v0).

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::conn::Close;

/// Bytes read per step while a frame arrives: memory follows what the peer
/// actually sent, not the size it announced.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Reads one frame. `Ok(None)`: the peer closed the connection between
/// frames (a clean close).
pub async fn read<R: AsyncRead + Unpin>(
    r: &mut R,
    max_bytes: usize,
) -> Result<Option<Bytes>, Close> {
    let mut size = [0u8; 4];
    let first = r.read(&mut size).await.map_err(Close::Io)?;
    if first == 0 {
        return Ok(None);
    }
    r.read_exact(&mut size[first..])
        .await
        .map_err(|e| Close::truncated(e, "size prefix"))?;
    let size = i32::from_be_bytes(size);
    if size < 0 {
        return Err(Close::Malformed(format!("negative frame size {size}")));
    }
    let size = size as usize;
    if size > max_bytes {
        return Err(Close::TooLarge { size, max_bytes });
    }
    let mut buf = BytesMut::with_capacity(size.min(READ_CHUNK_BYTES));
    while buf.len() < size {
        if buf.capacity() == buf.len() {
            buf.reserve((size - buf.len()).min(READ_CHUNK_BYTES));
        }
        let want = size - buf.len();
        let n = (&mut *r)
            .take(want as u64)
            .read_buf(&mut buf)
            .await
            .map_err(Close::Io)?;
        if n == 0 {
            return Err(Close::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed after {} of {size} frame bytes",
                    buf.len()
                ),
            )));
        }
    }
    debug_assert_eq!(buf.len(), size);
    Ok(Some(buf.freeze()))
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
        read(&mut r, max).await
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
}
