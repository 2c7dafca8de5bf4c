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

/// Direct I/O wants buffers, offsets and lengths in multiples of the device block; 4 KiB
/// covers every common device.
const BLOCK: usize = 4096;
/// The staging buffer: data is written out once this much (in whole blocks) is gathered.
const STAGE: usize = 8 << 20;
/// Buffered fallback: start writeback of what was written every this many bytes.
const WRITEBACK: u64 = 16 << 20;

pub(crate) struct DataSink {
    /// Buffered descriptor: reads, the partial tail, truncation, fsync.
    file: File,
    direct: Option<File>,
    /// `STAGE + BLOCK` bytes, of which `[start, start + STAGE)` is block-aligned.
    stage: Vec<u8>,
    start: usize,
    staged: usize,
    /// Bytes in the file before the staged ones (a multiple of BLOCK when direct).
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
            .ok();
        let stage = vec![0u8; STAGE + BLOCK];
        let start = stage.as_ptr().align_offset(BLOCK);
        let mut sink = DataSink {
            file,
            direct,
            stage,
            start,
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
                let s = sink.start;
                sink.file.read_exact_at(&mut sink.stage[s..s + tail], at)?;
                sink.staged = tail;
                sink.flushed = at;
            }
        }
        Ok(sink)
    }

    /// After a commit the file is no longer ours to write: drop what is staged (it is in the
    /// file already) so nothing is written again.
    pub fn seal(&mut self) {
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
            let room = STAGE - self.staged;
            let n = room.min(data.len());
            let at = self.start + self.staged;
            self.stage[at..at + n].copy_from_slice(&data[..n]);
            self.staged += n;
            data = &data[n..];
            if self.staged == STAGE {
                self.write_blocks()?;
            }
        }
        Ok(())
    }

    /// Writes the whole blocks of the stage directly, keeping the partial one staged.
    fn write_blocks(&mut self) -> io::Result<()> {
        let Some(direct) = &self.direct else {
            return Ok(());
        };
        let whole = self.staged - self.staged % BLOCK;
        if whole == 0 {
            return Ok(());
        }
        match direct.write_all_at(&self.stage[self.start..self.start + whole], self.flushed) {
            Ok(()) => {}
            // The filesystem took O_DIRECT at open but refuses these writes: go buffered.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::debug!("direct writes refused ({e}); writing through the page cache");
                self.direct = None;
                let staged = self.stage[self.start..self.start + self.staged].to_vec();
                self.staged = 0;
                return self.append(&staged);
            }
            Err(e) => return Err(e),
        }
        self.flushed += whole as u64;
        self.stage
            .copy_within(self.start + whole..self.start + self.staged, self.start);
        self.staged -= whole;
        Ok(())
    }

    /// Puts everything staged into the file (the partial block through the page cache), so the
    /// file holds exactly `len()` bytes. The partial block stays staged for later direct writes.
    pub fn flush(&mut self) -> io::Result<()> {
        self.write_blocks()?;
        if self.staged > 0 {
            self.file.write_all_at(
                &self.stage[self.start..self.start + self.staged],
                self.flushed,
            )?;
        }
        Ok(())
    }

    /// Flushes and makes the data durable.
    pub fn sync(&mut self) -> io::Result<()> {
        self.flush()?;
        self.file.sync_all()
    }

    pub fn truncate(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        self.staged = 0;
        self.flushed = 0;
        self.written_back = 0;
        Ok(())
    }

    pub fn file(&self) -> &File {
        &self.file
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
