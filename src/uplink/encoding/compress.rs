//! Optional compression of a batch body: zstd, or zlib-wrapped deflate (RFC 1950/1951) for
//! consumers without zstd. Decompression is bounded, so a small hostile message cannot expand
//! into all of memory.

use std::io::{Read, Write};

use super::DecodeError;
use crate::config::Compression;

/// zstd's level for batches: the small bodies Cairn sends compress within a few per cent of
/// level 19 at level 9, at a fraction of the CPU (see the README's link benchmark).
const ZSTD_LEVEL: i32 = 9;

/// `body` compressed as `compression` says.
pub fn compress(compression: Compression, body: Vec<u8>) -> Vec<u8> {
    match compression {
        Compression::None => body,
        // Both write into memory, where only allocation can fail.
        Compression::Zstd => zstd::bulk::compress(&body, ZSTD_LEVEL).unwrap_or_default(),
        Compression::Deflate => {
            let mut encoder =
                flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
            let _ = encoder.write_all(&body);
            encoder.finish().unwrap_or_default()
        }
    }
}

/// `data` decompressed, refusing more than `limit` bytes of output.
pub fn decompress(
    compression: Compression,
    data: &[u8],
    limit: usize,
) -> Result<Vec<u8>, DecodeError> {
    let reader: Box<dyn Read + '_> = match compression {
        Compression::None => return Ok(data.to_vec()),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::new(data)
                .map_err(|e| DecodeError::Decompress(e.to_string()))?,
        ),
        Compression::Deflate => Box::new(flate2::read::ZlibDecoder::new(data)),
    };
    let mut out = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| DecodeError::Decompress(e.to_string()))?;
    if out.len() > limit {
        return Err(DecodeError::TooLarge(limit));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_bounds() {
        let body: Vec<u8> = (0..10_000u32).flat_map(|i| (i % 7).to_be_bytes()).collect();
        for c in [Compression::None, Compression::Zstd, Compression::Deflate] {
            let packed = compress(c, body.clone());
            assert_eq!(decompress(c, &packed, body.len()).unwrap(), body, "{c:?}");
            if c != Compression::None {
                assert!(packed.len() < body.len() / 10, "{c:?}: {}", packed.len());
                assert!(matches!(
                    decompress(c, &packed, 1000),
                    Err(DecodeError::TooLarge(1000))
                ));
                assert!(decompress(c, &packed[..packed.len() / 2], body.len()).is_err());
                assert!(decompress(c, b"not compressed at all", 100).is_err());
            }
        }
    }
}
