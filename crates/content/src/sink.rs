//! Where an ingest's bytes go: the `data` file, written with O_DIRECT in whole blocks from an
//! aligned staging buffer, so the data goes from our buffer to the device without a copy into
//! the page cache, and the fsync at commit has little left to do. The partial block at the end
//! is written through the page cache when the writer pauses (answering a status, committing,
//! closing). Filesystems without O_DIRECT get plain buffered writes.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

/// Direct I/O wants buffers, offsets and lengths in multiples of the device block; 4 KiB
/// covers every common device.
const BLOCK: usize = 4096;
/// The staging buffer: data is written out once this much (in whole blocks) is gathered.
/// Every open ingest holds one, so it is kept small: 2 MiB writes keep the disk as busy as
/// 8 MiB ones did (the ingest bench) and halved a pull's peak RSS.
const STAGE: usize = 2 << 20;
/// Buffered fallback: start writeback of what was written every this many bytes.
const WRITEBACK: u64 = 16 << 20;

/// A block-aligned buffer of `STAGE` bytes.
struct Stage {
    bytes: Vec<u8>,
    /// Where the aligned `STAGE` bytes start in `bytes`.
    start: usize,
}

impl Stage {
    fn new() -> Stage {
        let bytes = vec![0u8; STAGE + BLOCK];
        let start = bytes.as_ptr().align_offset(BLOCK);
        Stage { bytes, start }
    }

    fn get(&self, len: usize) -> &[u8] {
        &self.bytes[self.start..self.start + len]
    }

    fn get_mut(&mut self, from: usize, len: usize) -> &mut [u8] {
        &mut self.bytes[self.start + from..self.start + from + len]
    }
}

/// A direct write running on its own thread, so the device works while the next data is
/// received, hashed and staged. One runs at a time, in order: the file is always a prefix of
/// the data.
struct InFlight {
    at: u64,
    len: usize,
    done: std::thread::JoinHandle<(Stage, io::Result<()>)>,
}

pub(crate) struct DataSink {
    /// Buffered descriptor: reads, the partial tail, truncation, fsync.
    file: File,
    direct: Option<Arc<File>>,
    stage: Stage,
    /// The other buffer, while no write is in flight.
    spare: Option<Stage>,
    in_flight: Option<InFlight>,
    staged: usize,
    /// Bytes in the file (or being written to it) before the staged ones; a multiple of BLOCK
    /// when direct.
    flushed: u64,
    written_back: u64,
}

impl DataSink {
    /// Opens (creating) the data file; `len` is what it already holds.
    pub fn open(path: &Path, len: u64) -> io::Result<DataSink> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let direct = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok()
            .map(Arc::new);
        let mut sink = DataSink {
            file,
            direct,
            stage: Stage::new(),
            spare: None,
            in_flight: None,
            staged: 0,
            flushed: len,
            written_back: len,
        };
        if sink.direct.is_some() {
            // Direct writes start on a block boundary: the partial block at the end of what is
            // there is read back into the stage and written again with what follows.
            let tail = (len % BLOCK as u64) as usize;
            if tail > 0 {
                let at = len - tail as u64;
                sink.file.read_exact_at(sink.stage.get_mut(0, tail), at)?;
                sink.staged = tail;
                sink.flushed = at;
            }
        }
        Ok(sink)
    }

    /// After a commit the file is no longer ours to write: drop what is staged (it is in the
    /// file already) so nothing is written again.
    pub fn seal(&mut self) {
        let _ = self.land();
        self.staged = 0;
        self.direct = None;
    }

    pub fn append(&mut self, mut data: &[u8]) -> io::Result<()> {
        if self.direct.is_none() {
            self.file.write_all_at(data, self.flushed)?;
            self.flushed += data.len() as u64;
            if self.flushed - self.written_back >= WRITEBACK {
                // SAFETY: a plain syscall on a descriptor we own.
                unsafe {
                    libc::sync_file_range(
                        self.file.as_raw_fd(),
                        self.written_back as libc::off64_t,
                        (self.flushed - self.written_back) as libc::off64_t,
                        libc::SYNC_FILE_RANGE_WRITE,
                    );
                }
                self.written_back = self.flushed;
            }
            return Ok(());
        }
        while !data.is_empty() {
            let n = (STAGE - self.staged).min(data.len());
            self.stage
                .get_mut(self.staged, n)
                .copy_from_slice(&data[..n]);
            self.staged += n;
            data = &data[n..];
            if self.staged == STAGE {
                self.write_blocks()?;
                if self.direct.is_none() {
                    // Direct writes were refused: the rest goes through the page cache.
                    return self.append(data);
                }
            }
        }
        Ok(())
    }

    /// Waits for the write in flight, if any. A filesystem that took O_DIRECT at open but
    /// refuses the writes gets them again through the page cache, and no more direct ones.
    fn land(&mut self) -> io::Result<()> {
        let Some(flight) = self.in_flight.take() else {
            return Ok(());
        };
        let (stage, result) = flight
            .done
            .join()
            .map_err(|_| io::Error::other("direct write thread panicked"))?;
        let result = match result {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::debug!("direct writes refused ({e}); writing through the page cache");
                self.direct = None;
                self.file.write_all_at(stage.get(flight.len), flight.at)
            }
            other => other,
        };
        self.spare = Some(stage);
        result
    }

    /// Sends the whole blocks of the stage to the device on a thread of their own, keeping the
    /// partial block staged (in the other buffer, which becomes the stage).
    fn write_blocks(&mut self) -> io::Result<()> {
        self.land()?;
        let Some(direct) = self.direct.clone() else {
            // Direct writes were refused: what is staged goes through the page cache.
            self.file
                .write_all_at(self.stage.get(self.staged), self.flushed)?;
            self.flushed += self.staged as u64;
            self.staged = 0;
            return Ok(());
        };
        let whole = self.staged - self.staged % BLOCK;
        if whole == 0 {
            return Ok(());
        }
        let mut next = self.spare.take().unwrap_or_else(Stage::new);
        let rest = self.staged - whole;
        next.get_mut(0, rest)
            .copy_from_slice(&self.stage.get(self.staged)[whole..]);
        let full = std::mem::replace(&mut self.stage, next);
        let at = self.flushed;
        let done = std::thread::Builder::new()
            .name("ingest-write".into())
            .spawn(move || {
                let result = direct.write_all_at(full.get(whole), at);
                (full, result)
            })?;
        self.in_flight = Some(InFlight {
            at,
            len: whole,
            done,
        });
        self.flushed += whole as u64;
        self.staged = rest;
        Ok(())
    }

    /// Puts everything staged into the file (the partial block through the page cache), so the
    /// file holds exactly `len()` bytes. The partial block stays staged for later direct writes.
    pub fn flush(&mut self) -> io::Result<()> {
        self.write_blocks()?;
        self.land()?;
        if self.staged > 0 {
            self.file
                .write_all_at(self.stage.get(self.staged), self.flushed)?;
        }
        Ok(())
    }

    /// Flushes and makes the data durable.
    pub fn sync(&mut self) -> io::Result<()> {
        self.flush()?;
        self.file.sync_all()
    }

    pub fn truncate(&mut self) -> io::Result<()> {
        // A write still landing would put old bytes back after the truncation.
        let landed = self.land();
        self.file.set_len(0)?;
        self.staged = 0;
        self.flushed = 0;
        self.written_back = 0;
        landed.or(Ok(()))
    }
}

impl Drop for DataSink {
    fn drop(&mut self) {
        // The next writer of this ref reads the file: no write may still be landing then.
        if let Err(e) = self.land() {
            tracing::warn!("finishing an ingest write: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_sized_appends_resume_and_flushes_keep_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let data: Vec<u8> = (0..(STAGE * 2 + 12_345))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let mut sink = DataSink::open(&path, 0).unwrap();
        let mut at = 0;
        for (i, size) in [1usize, 4095, 4097, 1 << 20, 3, STAGE, 777]
            .iter()
            .cycle()
            .enumerate()
        {
            if at >= data.len() {
                break;
            }
            let end = (at + size).min(data.len());
            sink.append(&data[at..end]).unwrap();
            at = end;
            if i % 3 == 0 {
                sink.flush().unwrap();
            }
            if i == 4 {
                // A writer that went away and came back: resume from what the file holds.
                sink.flush().unwrap();
                let len = std::fs::metadata(&path).unwrap().len();
                assert_eq!(len, at as u64);
                sink = DataSink::open(&path, len).unwrap();
            }
        }
        sink.sync().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
        sink.truncate().unwrap();
        sink.append(b"again").unwrap();
        sink.sync().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"again");
    }
}
