//! Small adapters between the differ's streams: a digest taken on the way through, and a
//! reader over a source of chunks.

use std::io::{self, Read, Write};

use sha2::{Digest as _, Sha256};

/// Counts and digests (sha256) what is read or written through it.
pub(crate) struct Digesting<T> {
    inner: T,
    hash: Sha256,
    count: u64,
}

impl<T> Digesting<T> {
    pub(crate) fn new(inner: T) -> Self {
        Digesting {
            inner,
            hash: Sha256::new(),
            count: 0,
        }
    }

    /// `sha256:<hex>` of what went through, and how many bytes.
    pub(crate) fn finish(self) -> (String, u64) {
        (format!("sha256:{:x}", self.hash.finalize()), self.count)
    }

    fn saw(&mut self, bytes: &[u8]) {
        self.hash.update(bytes);
        self.count += bytes.len() as u64;
    }
}

impl<R: Read> Read for Digesting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.saw(&buf[..n]);
        Ok(n)
    }
}

impl<W: Write> Write for Digesting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.saw(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader over the chunks `next` gives, one after another; `None` is the end.
pub struct ChunkReader<F> {
    next: F,
    current: Vec<u8>,
    at: usize,
}

impl<F: FnMut() -> Option<io::Result<Vec<u8>>>> ChunkReader<F> {
    pub fn new(next: F) -> Self {
        ChunkReader {
            next,
            current: Vec::new(),
            at: 0,
        }
    }
}

impl<F: FnMut() -> Option<io::Result<Vec<u8>>>> Read for ChunkReader<F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.current.len() {
            match (self.next)() {
                None => return Ok(0),
                Some(chunk) => {
                    self.current = chunk?;
                    self.at = 0;
                }
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}
