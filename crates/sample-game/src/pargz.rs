//! Parallel gzip compression (as pigz does): the input is cut into fixed-size blocks, each
//! compressed independently into raw deflate ending with a sync flush, and the pieces are
//! concatenated into one ordinary single-member gzip stream (any gzip decoder reads it).
//!
//! The output depends only on the input, the block size and the level, never on thread
//! scheduling, so it is deterministic. Blocks do not share history, which costs well under 1%
//! of ratio at 4 MiB blocks.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use flate2::{Compress, Compression, Crc, FlushCompress};

/// Uncompressed bytes per block.
const BLOCK: usize = 4 << 20;

type Job = (u64, Vec<u8>);
type Done = (u64, io::Result<Vec<u8>>);

/// A `Write` that gzips what it is given on several threads.
pub(crate) struct ParGzWriter<W: Write> {
    out: W,
    buf: Vec<u8>,
    crc: Crc,
    jobs: Option<SyncSender<Job>>,
    done: Receiver<Done>,
    pending: BTreeMap<u64, Vec<u8>>,
    next_send: u64,
    next_write: u64,
    max_in_flight: u64,
    workers: Vec<JoinHandle<()>>,
}

fn compress_block(level: u32, block: &[u8]) -> io::Result<Vec<u8>> {
    let mut c = Compress::new(Compression::new(level), false);
    let mut out = Vec::with_capacity(block.len() / 2 + 4096);
    loop {
        let consumed = c.total_in() as usize;
        c.compress_vec(&block[consumed..], &mut out, FlushCompress::Sync)
            .map_err(io::Error::other)?;
        if c.total_in() as usize == block.len() && out.len() < out.capacity() {
            return Ok(out);
        }
        out.reserve(out.capacity().max(64 * 1024));
    }
}

impl<W: Write> ParGzWriter<W> {
    /// Starts a gzip stream on `out` at `level`, compressing on `threads` threads.
    pub(crate) fn new(mut out: W, level: u32, threads: usize) -> io::Result<Self> {
        // Header: magic, deflate, no flags, mtime 0, no extra flags, OS = Unix.
        out.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3])?;
        let threads = threads.max(1);
        let (job_tx, job_rx) = mpsc::sync_channel::<Job>(threads);
        let (done_tx, done_rx) = mpsc::channel::<Done>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let workers = (0..threads)
            .map(|_| {
                let rx = Arc::clone(&job_rx);
                let tx = done_tx.clone();
                std::thread::spawn(move || loop {
                    let job = match rx.lock() {
                        Ok(guard) => guard.recv(),
                        Err(_) => return,
                    };
                    let Ok((idx, block)) = job else { return };
                    if tx.send((idx, compress_block(level, &block))).is_err() {
                        return;
                    }
                })
            })
            .collect();
        Ok(ParGzWriter {
            out,
            buf: Vec::with_capacity(BLOCK),
            crc: Crc::new(),
            jobs: Some(job_tx),
            done: done_rx,
            pending: BTreeMap::new(),
            next_send: 0,
            next_write: 0,
            max_in_flight: threads as u64 * 2 + 1,
            workers,
        })
    }

    /// Waits for one finished block and writes every block that is now in order.
    fn drain_one(&mut self) -> io::Result<()> {
        let (idx, res) = self
            .done
            .recv()
            .map_err(|_| io::Error::other("gzip worker thread died"))?;
        self.pending.insert(idx, res?);
        while let Some(data) = self.pending.remove(&self.next_write) {
            self.out.write_all(&data)?;
            self.next_write += 1;
        }
        Ok(())
    }

    fn send_block(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        while self.next_send - self.next_write >= self.max_in_flight {
            self.drain_one()?;
        }
        let block = std::mem::replace(&mut self.buf, Vec::with_capacity(BLOCK));
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("gzip stream already finished"))?;
        jobs.send((self.next_send, block))
            .map_err(|_| io::Error::other("gzip worker threads died"))?;
        self.next_send += 1;
        Ok(())
    }

    /// Compresses what is left, writes the trailer and returns the inner writer.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.send_block()?;
        self.jobs = None;
        while self.next_write < self.next_send {
            self.drain_one()?;
        }
        for w in self.workers.drain(..) {
            w.join()
                .map_err(|_| io::Error::other("gzip worker thread panicked"))?;
        }
        // An empty final block (fixed Huffman), then CRC-32 and length mod 2^32.
        self.out.write_all(&[0x03, 0x00])?;
        self.out.write_all(&self.crc.sum().to_le_bytes())?;
        self.out.write_all(&self.crc.amount().to_le_bytes())?;
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for ParGzWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = BLOCK - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        self.crc.update(&data[..n]);
        if self.buf.len() == BLOCK {
            self.send_block()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Blocks are cut at fixed sizes for determinism; flushing only flushes the sink.
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::GzDecoder;
    use std::io::Read;

    fn roundtrip(data: &[u8], threads: usize) -> Vec<u8> {
        let mut w = ParGzWriter::new(Vec::new(), 6, threads).expect("new");
        for chunk in data.chunks(100_003) {
            w.write_all(chunk).expect("write");
        }
        let gz = w.finish().expect("finish");
        let mut out = Vec::new();
        GzDecoder::new(gz.as_slice())
            .read_to_end(&mut out)
            .expect("valid gzip");
        assert_eq!(out, data);
        gz
    }

    #[test]
    fn valid_and_deterministic() {
        let mut data = Vec::new();
        let mut x = 1u64;
        while data.len() < BLOCK * 2 + 12_345 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            if x >> 60 < 8 {
                data.extend_from_slice(b"hello world ");
            } else {
                data.extend_from_slice(&x.to_le_bytes());
            }
        }
        let a = roundtrip(&data, 1);
        let b = roundtrip(&data, 3);
        assert_eq!(a, b, "output independent of thread count");
        assert!(a.len() < data.len());
        roundtrip(b"", 2);
        roundtrip(b"x", 2);
    }
}
