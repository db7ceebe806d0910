//! OP_COMPRESSED's codecs: snappy (raw blocks), zlib and zstd, all pure
//! Rust. Decompression is bounded by the size the message announces (which
//! the caller has bounded by the largest message): a message that inflates
//! past it is refused before it takes more memory.

use std::io::Read;

/// A compressor a client may negotiate in `hello` (`compression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compressor {
    Snappy,
    Zlib,
    Zstd,
}

/// The compressor id of uncompressed OP_COMPRESSED content (`noop`).
pub const NOOP_ID: u8 = 0;

impl Compressor {
    pub const ALL: [Compressor; 3] = [Compressor::Snappy, Compressor::Zlib, Compressor::Zstd];

    /// The name used in `hello`'s `compression` list.
    pub fn name(self) -> &'static str {
        match self {
            Compressor::Snappy => "snappy",
            Compressor::Zlib => "zlib",
            Compressor::Zstd => "zstd",
        }
    }

    pub fn from_name(name: &str) -> Option<Compressor> {
        Compressor::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The `compressorId` byte of OP_COMPRESSED.
    pub fn id(self) -> u8 {
        match self {
            Compressor::Snappy => 1,
            Compressor::Zlib => 2,
            Compressor::Zstd => 3,
        }
    }

    pub fn from_id(id: u8) -> Option<Compressor> {
        Compressor::ALL.into_iter().find(|c| c.id() == id)
    }

    pub fn compress(self, data: &[u8]) -> Result<Vec<u8>, String> {
        match self {
            Compressor::Snappy => snap::raw::Encoder::new()
                .compress_vec(data)
                .map_err(|e| format!("snappy: {e}")),
            Compressor::Zlib => {
                use std::io::Write;
                let mut e =
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(data)
                    .and_then(|()| e.finish())
                    .map_err(|e| format!("zlib: {e}"))
            }
            Compressor::Zstd => Ok(ruzstd::encoding::compress_to_vec(
                data,
                ruzstd::encoding::CompressionLevel::Fastest,
            )),
        }
    }
}

/// Decompresses OP_COMPRESSED content of compressor `id` that must inflate
/// to exactly `size` bytes.
pub fn decompress(id: u8, data: &[u8], size: usize) -> Result<Vec<u8>, String> {
    let out = match id {
        NOOP_ID => data.to_vec(),
        _ => match Compressor::from_id(id) {
            None => return Err(format!("unknown compressor id {id}")),
            Some(Compressor::Snappy) => {
                let n = snap::raw::decompress_len(data).map_err(|e| format!("snappy: {e}"))?;
                if n != size {
                    return Err(format!("snappy block of {n} bytes, {size} announced"));
                }
                snap::raw::Decoder::new()
                    .decompress_vec(data)
                    .map_err(|e| format!("snappy: {e}"))?
            }
            Some(Compressor::Zlib) => read_bounded(flate2::read::ZlibDecoder::new(data), size)
                .map_err(|e| format!("zlib: {e}"))?,
            Some(Compressor::Zstd) => {
                let d = ruzstd::decoding::StreamingDecoder::new(data)
                    .map_err(|e| format!("zstd: {e}"))?;
                read_bounded(d, size).map_err(|e| format!("zstd: {e}"))?
            }
        },
    };
    if out.len() != size {
        return Err(format!("inflated to {} bytes, {size} announced", out.len()));
    }
    Ok(out)
}

/// Reads at most `size + 1` bytes: one more than announced is enough to
/// tell that the content is longer.
fn read_bounded(r: impl Read, size: usize) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(size.min(1 << 20));
    r.take(size as u64 + 1).read_to_end(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_codec() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for c in Compressor::ALL {
            let packed = c.compress(&data).unwrap();
            assert!(packed.len() < data.len(), "{c:?} compresses");
            assert_eq!(decompress(c.id(), &packed, data.len()).unwrap(), data);
            assert_eq!(Compressor::from_name(c.name()), Some(c));
            assert_eq!(Compressor::from_id(c.id()), Some(c));
            // The announced size must be exact, either way.
            assert!(
                decompress(c.id(), &packed, data.len() - 1).is_err(),
                "{c:?}"
            );
            assert!(
                decompress(c.id(), &packed, data.len() + 1).is_err(),
                "{c:?}"
            );
            // Garbage fails cleanly.
            assert!(
                decompress(c.id(), b"\xff\xfe\xfd garbage", 10).is_err(),
                "{c:?}"
            );
        }
        assert_eq!(decompress(NOOP_ID, b"abc", 3).unwrap(), b"abc");
        assert!(decompress(9, b"abc", 3).is_err());
    }

    /// A zip bomb stops one byte past the announced size.
    #[test]
    fn inflation_is_bounded() {
        let zeros = vec![0u8; 10 << 20];
        for c in Compressor::ALL {
            let packed = c.compress(&zeros).unwrap();
            let err = decompress(c.id(), &packed, 1000).unwrap_err();
            assert!(err.contains("1000"), "{c:?}: {err}");
        }
    }
}
