use crate::error::LayerError;
use flate2::{Compress, Compression, FlushCompress, Status};
use std::io::Read;

/// The deflate implementation every chunk is compressed with. It is part of
/// the format: another implementation or version may emit other bytes, which
/// changes every chunk id. Recorded in each chunk index.
pub const DEFLATE_IMPLEMENTATION: &str = "zlib-rs";

/// Default gzip level, chosen by measurement (see BENCHMARKS.md).
pub const DEFAULT_GZIP_LEVEL: u32 = 6;

/// The fixed 10-byte gzip member header: no name, mtime 0, no extra flags,
/// OS byte 255 ("unknown"), so identical input gives identical bytes.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];

/// Compresses chunks, each into one self-contained gzip member. Reuses its
/// deflate state between chunks; one per worker thread.
pub struct GzipChunkCompressor {
    deflate: Compress,
}

impl GzipChunkCompressor {
    /// A compressor at `level` (0–9).
    pub fn new(level: u32) -> Self {
        GzipChunkCompressor {
            deflate: Compress::new(Compression::new(level.min(9)), false),
        }
    }

    /// One gzip member holding `data`.
    pub fn compress(&mut self, data: &[u8]) -> Result<Vec<u8>, LayerError> {
        self.deflate.reset();
        let mut out = Vec::with_capacity(data.len() / 2 + 64);
        out.extend_from_slice(&GZIP_HEADER);
        let start_in = self.deflate.total_in();
        loop {
            if out.capacity() - out.len() < 1024 {
                out.reserve(out.capacity().max(4096));
            }
            let consumed = (self.deflate.total_in() - start_in) as usize;
            let status = self
                .deflate
                .compress_vec(&data[consumed..], &mut out, FlushCompress::Finish)
                .map_err(|e| LayerError::Compress(e.to_string()))?;
            if status == Status::StreamEnd {
                break;
            }
        }
        let mut crc = flate2::Crc::new();
        crc.update(data);
        out.extend_from_slice(&crc.sum().to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        Ok(out)
    }
}

/// Decompresses a whole (possibly multi-member) gzip stream, as runtimes do.
pub fn gunzip_all(compressed: &[u8]) -> Result<Vec<u8>, LayerError> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(compressed)
        .read_to_end(&mut out)
        .map_err(|e| LayerError::Gzip(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize) -> Vec<u8> {
        let mut x: u32 = 12345;
        (0..n)
            .map(|i| {
                x = x.wrapping_mul(1103515245).wrapping_add(12345);
                if i % 3 == 0 {
                    (x >> 24) as u8
                } else {
                    b"engine code "[(i / 3) % 12]
                }
            })
            .collect()
    }

    #[test]
    fn members_decompress_and_concatenate() {
        let mut c = GzipChunkCompressor::new(DEFAULT_GZIP_LEVEL);
        let a = sample(70_000);
        let b = sample(1000);
        let mut blob = c.compress(&a).unwrap();
        blob.extend(c.compress(&b).unwrap());
        blob.extend(c.compress(&[]).unwrap());
        let mut expected = a.clone();
        expected.extend(&b);
        assert_eq!(gunzip_all(&blob).unwrap(), expected);
    }

    #[test]
    fn reused_compressor_gives_same_bytes_as_fresh_one() {
        let data = sample(100_000);
        let mut used = GzipChunkCompressor::new(DEFAULT_GZIP_LEVEL);
        used.compress(&sample(5000)).unwrap();
        assert_eq!(
            used.compress(&data).unwrap(),
            GzipChunkCompressor::new(DEFAULT_GZIP_LEVEL)
                .compress(&data)
                .unwrap()
        );
    }

    /// The compressed bytes are part of the format (chunk ids). If this
    /// digest changes, the deflate implementation or level changed its
    /// output: every chunk id changes and nodes re-download whole layers once.
    #[test]
    fn output_is_pinned() {
        let out = GzipChunkCompressor::new(DEFAULT_GZIP_LEVEL)
            .compress(&sample(200_000))
            .unwrap();
        assert_eq!(
            gantry_oci::Digest::of(&out).to_string(),
            "sha256:c78cf089de292f7d875405656fc91ce25faf70827cbdb2312e46f837915045d9"
        );
    }
}
