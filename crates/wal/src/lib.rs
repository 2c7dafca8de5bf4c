//! A redb storage backend whose durable commits are one sequential append to a log beside the
//! database file (`<file>.wal`). redb makes a commit durable by writing its pages where they
//! live, scattered over the file, and flushing them: on this project's disks that flush costs
//! about twice what a flush of the same bytes written in one piece does. Here a commit's writes
//! go to the log as one checksummed record, flushed; they then reach the database file without
//! a flush. Once the log is full the database file is flushed and the log starts over. Opening
//! replays the log's records onto the database file.
//!
//! A record is `CWAL`, epoch, sequence number, the file's length after the commit, the number
//! of writes and the body's length, then each write (offset, length, bytes), then a CRC-32 of
//! all of it. Replay takes records from the start of the log while they are whole, of the first
//! record's epoch and in sequence: each restart of the log takes a new epoch, so what an older
//! epoch left further on is never taken for a newer record, and a record torn by a crash fails
//! its checksum.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use redb::backends::FileBackend;
use redb::{BackendError, Database, DatabaseError, StorageBackend, StorageError};

/// How much log the database file's flush is put off for.
const LOG_CAPACITY: u64 = 1 << 20;
const MAGIC: &[u8; 4] = b"CWAL";
/// Magic, epoch, sequence number, file length, write count, body length.
const HEADER: usize = 4 + 8 + 8 + 8 + 4 + 4;
/// Offset and length of one write.
const WRITE_HEADER: usize = 8 + 4;
const TRAILER: usize = 4;

/// Opens (or creates) the redb database at `path` with its log, replaying what the log holds.
pub fn open(path: &Path) -> Result<Database, DatabaseError> {
    open_with_capacity(path, LOG_CAPACITY)
}

fn open_with_capacity(path: &Path, capacity: u64) -> Result<Database, DatabaseError> {
    let backend = WalBackend::open(path, capacity).map_err(storage)?;
    Database::builder().create_with_backend(backend)
}

fn storage(e: io::Error) -> DatabaseError {
    DatabaseError::Storage(StorageError::Io(e))
}

/// The log of the database file `path`.
pub fn log_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".wal");
    PathBuf::from(name)
}

#[derive(Debug)]
struct WalBackend {
    file: FileBackend,
    log: Mutex<Log>,
}

#[derive(Debug)]
struct Log {
    file: File,
    capacity: u64,
    /// Where the next record goes.
    end: u64,
    epoch: u64,
    seq: u64,
    /// Writes since the last record, in order; reads see them over the file.
    pending: Vec<(u64, Vec<u8>)>,
    resized: bool,
}

impl WalBackend {
    fn open(path: &Path, capacity: u64) -> io::Result<WalBackend> {
        let log_path = log_path(path);
        let fresh = !path.exists();
        if fresh {
            // A log without its database belongs to an older one: none of it applies.
            match std::fs::remove_file(&log_path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let log = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&log_path)?;
        let last_epoch = replay(&file, &log)?;
        // Log space is written out once, so that appending to it later changes no file
        // metadata and its flush stays a flush of data only.
        if log.metadata()?.len() < capacity {
            zero_fill(&log, capacity)?;
            log.sync_all()?;
            if let Some(dir) = path.parent() {
                File::open(if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                })?
                .sync_all()?;
            }
        }
        let capacity = capacity.max(log.metadata()?.len());
        Ok(WalBackend {
            file: FileBackend::new(file).map_err(io::Error::other)?,
            log: Mutex::new(Log {
                file: log,
                capacity,
                end: 0,
                epoch: next_epoch(last_epoch),
                seq: 0,
                pending: Vec::new(),
                resized: false,
            }),
        })
    }

    fn lock(&self) -> io::Result<std::sync::MutexGuard<'_, Log>> {
        self.log
            .lock()
            .map_err(|_| io::Error::other("database log lock poisoned"))
    }
}

/// An epoch above `last` and above any earlier one a log could hold.
fn next_epoch(last: Option<u64>) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    now.max(last.map_or(0, |e| e + 1))
}

fn zero_fill(file: &File, to: u64) -> io::Result<()> {
    let zeros = vec![0u8; 1 << 20];
    let mut at = file.metadata()?.len();
    while at < to {
        let n = (to - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

fn body_len(writes: &[(u64, Vec<u8>)]) -> usize {
    writes.iter().map(|(_, d)| WRITE_HEADER + d.len()).sum()
}

fn encode(epoch: u64, seq: u64, file_len: u64, writes: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let body = body_len(writes);
    let mut record = Vec::with_capacity(HEADER + body + TRAILER);
    record.extend_from_slice(MAGIC);
    record.extend_from_slice(&epoch.to_le_bytes());
    record.extend_from_slice(&seq.to_le_bytes());
    record.extend_from_slice(&file_len.to_le_bytes());
    record.extend_from_slice(&(writes.len() as u32).to_le_bytes());
    record.extend_from_slice(&(body as u32).to_le_bytes());
    for (offset, data) in writes {
        record.extend_from_slice(&offset.to_le_bytes());
        record.extend_from_slice(&(data.len() as u32).to_le_bytes());
        record.extend_from_slice(data);
    }
    let crc = crc32fast::hash(&record);
    record.extend_from_slice(&crc.to_le_bytes());
    record
}

/// One record read back from a log.
struct Record<'a> {
    epoch: u64,
    seq: u64,
    file_len: u64,
    writes: Vec<(u64, &'a [u8])>,
    size: usize,
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

/// The record at the start of `b`, if a whole one is there.
fn decode(b: &[u8]) -> Option<Record<'_>> {
    if b.len() < HEADER + TRAILER || &b[..4] != MAGIC {
        return None;
    }
    let (epoch, seq, file_len) = (le_u64(&b[4..]), le_u64(&b[12..]), le_u64(&b[20..]));
    let (count, body) = (le_u32(&b[28..]) as usize, le_u32(&b[32..]) as usize);
    let size = HEADER.checked_add(body)?.checked_add(TRAILER)?;
    if b.len() < size || crc32fast::hash(&b[..HEADER + body]) != le_u32(&b[HEADER + body..]) {
        return None;
    }
    let mut writes = Vec::with_capacity(count);
    let mut at = HEADER;
    for _ in 0..count {
        if at + WRITE_HEADER > HEADER + body {
            return None;
        }
        let (offset, len) = (le_u64(&b[at..]), le_u32(&b[at + 8..]) as usize);
        at += WRITE_HEADER;
        let data = b.get(at..at.checked_add(len)?)?;
        at += len;
        writes.push((offset, data));
    }
    (at == HEADER + body).then_some(Record {
        epoch,
        seq,
        file_len,
        writes,
        size,
    })
}

/// Applies the log's whole records, of one epoch and in sequence from its start, to `file`,
/// and flushes it; returns that epoch.
fn replay(file: &File, log: &File) -> io::Result<Option<u64>> {
    let len = log.metadata()?.len() as usize;
    let mut bytes = vec![0u8; len];
    log.read_exact_at(&mut bytes, 0)?;
    let mut at = 0;
    let mut epoch = None;
    let mut seq = 0;
    while let Some(record) = decode(&bytes[at..]) {
        if epoch.is_some_and(|e| e != record.epoch) || record.seq != seq {
            break;
        }
        epoch = Some(record.epoch);
        for (offset, data) in &record.writes {
            file.write_all_at(data, *offset)?;
        }
        file.set_len(record.file_len)?;
        seq += 1;
        at += record.size;
    }
    if epoch.is_some() {
        file.sync_all()?;
    }
    Ok(epoch)
}

impl Log {
    /// The database file is flushed, so the log's records are no longer needed: it starts
    /// over, under a new epoch.
    fn restart(&mut self, file: &FileBackend) -> io::Result<()> {
        file.sync_data()?;
        self.epoch = next_epoch(Some(self.epoch));
        self.seq = 0;
        self.end = 0;
        Ok(())
    }
}

impl StorageBackend for WalBackend {
    fn len(&self) -> Result<u64, io::Error> {
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let log = self.lock()?;
        self.file.read(offset, out)?;
        let end = offset + out.len() as u64;
        for (at, data) in &log.pending {
            let (from, to) = (offset.max(*at), end.min(*at + data.len() as u64));
            if from < to {
                out[(from - offset) as usize..(to - offset) as usize]
                    .copy_from_slice(&data[(from - at) as usize..(to - at) as usize]);
            }
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let mut log = self.lock()?;
        self.file.set_len(len)?;
        // As the file would: what was written beyond the new end is gone.
        log.pending.retain_mut(|(at, data)| {
            if *at >= len {
                return false;
            }
            data.truncate((len - *at).min(data.len() as u64) as usize);
            true
        });
        log.resized = true;
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        let mut log = self.lock()?;
        if log.pending.is_empty() && !log.resized {
            return Ok(());
        }
        let size = (HEADER + body_len(&log.pending) + TRAILER) as u64;
        if log.end + size > log.capacity {
            log.restart(&self.file)?;
            if size > log.capacity {
                zero_fill(&log.file, size)?;
                log.file.sync_all()?;
                log.capacity = size;
            }
        }
        let record = encode(log.epoch, log.seq, self.file.len()?, &log.pending);
        log.file.write_all_at(&record, log.end)?;
        log.file.sync_data()?;
        log.end += record.len() as u64;
        log.seq += 1;
        for (at, data) in std::mem::take(&mut log.pending) {
            self.file.write(at, &data)?;
        }
        log.resized = false;
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.lock()?.pending.push((offset, data.to_vec()));
        Ok(())
    }

    fn close(&self) -> Result<(), io::Error> {
        // Writes of commits made without durability would be lost with the process otherwise,
        // which they are not with redb's own backend.
        self.sync_data()?;
        self.file.close()
    }

    fn try_lock_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.file.try_lock_shared_range(start, end)
    }

    fn lock_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<(), BackendError> {
        self.file.lock_range(start, end)
    }

    fn lock_shared_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<(), BackendError> {
        self.file.lock_shared_range(start, end)
    }

    fn unlock_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<(), BackendError> {
        self.file.unlock_range(start, end)
    }

    fn query_lock_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.file.query_lock_range(start, end)
    }
}

#[cfg(test)]
mod tests;
