//! A redb storage backend whose durable commits are one sequential append to a log. redb makes a
//! commit durable by writing its pages where they live, scattered over the file, and flushing
//! them: on this project's disks that flush costs about twice what a flush of the same bytes
//! written in one piece does. Here a commit's writes go to a log as one checksummed record
//! holding the bytes they changed, flushed. The pages stay in memory, where reads find them, and
//! reach the database file once the log is full (or holds too many of them in memory), each
//! written once however many commits changed it; the files are then flushed and the log starts
//! over. Opening a log replays its records.
//!
//! A log is a [`Journal`], which several databases can share: the daemon's metadata store and
//! its snapshotters' stores write to one, so that a snapshot call, which commits to a
//! snapshotter's store and then to the metadata store, flushes once. A database opened with
//! [`Commits::Deferred`] appends its records without flushing: they are durable once a later
//! flush of the journal returns (a commit of a [`Commits::Flushed`] database, or
//! [`Journal::sync`]). A file never holds a commit that could still be lost: its pages are
//! written only after a flush. [`open`] gives a database its own journal beside it
//! (`<file>.wal`).
//!
//! A record is `CWL2`, epoch, sequence number, the file's length after the commit, the number
//! of writes, the body's length and the length of the database's name; the body is that name
//! (its path relative to the journal's directory) then each write (offset, length, bytes); a
//! CRC-32 of all of it ends it. Replay takes records from the start of the log while they are
//! whole, of the first record's epoch and in sequence: each restart of the log takes a new
//! epoch, so what an older epoch left further on is never taken for a newer record, and a
//! record torn by a crash fails its checksum. Records of a `<file>.wal` written before logs had
//! names (`CWAL`, no name) belong to `<file>`.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use redb::backends::FileBackend;
use redb::{BackendError, Database, DatabaseError, StorageBackend, StorageError};

/// How much log a database's own journal puts the file's flush off for.
const LOG_CAPACITY: u64 = 1 << 20;
/// The same for a journal shared by the daemon's stores.
const SHARED_CAPACITY: u64 = 4 << 20;
/// Pages held in memory for their files, past which the log restarts early (bytes).
const MAX_HELD: u64 = 8 << 20;
/// What a database's writes are kept in memory by: redb's page size.
const BLOCK: u64 = 4096;
/// Records [`Journal::restart_near`] looks ahead by: well over what a commit of a few records
/// logs (a snapshot call's are 1–10 KiB).
pub const NEAR_RESTART: u64 = 64 << 10;
const MAGIC: &[u8; 4] = b"CWL2";
/// The magic of records without a name, which only a database's own log holds.
const MAGIC_UNNAMED: &[u8; 4] = b"CWAL";
/// Magic, epoch, sequence number, file length, write count, body length.
const HEADER_UNNAMED: usize = 4 + 8 + 8 + 8 + 4 + 4;
/// The same and the name's length.
const HEADER: usize = HEADER_UNNAMED + 2;
/// Offset and length of one write.
const WRITE_HEADER: usize = 8 + 4;
const TRAILER: usize = 4;

/// Opens (or creates) the redb database at `path` with a journal of its own, `<path>.wal`,
/// replaying what the journal holds. Every durable commit is flushed before it returns.
pub fn open(path: &Path) -> Result<Database, DatabaseError> {
    open_with_capacity(path, LOG_CAPACITY)
}

/// Opens the redb database at `path` in `journal` with `commits`, or, without a journal, with
/// one of its own (see [`open`]), where every commit is flushed.
pub fn open_in(
    path: &Path,
    journal: Option<&Journal>,
    commits: Commits,
) -> Result<Database, DatabaseError> {
    match journal {
        Some(j) => j.database(path, commits),
        None => open(path),
    }
}

fn open_with_capacity(path: &Path, capacity: u64) -> Result<Database, DatabaseError> {
    Journal::open_with_capacity(&log_path(path), capacity)
        .map_err(storage)?
        .database(path, Commits::Flushed)
}

fn storage(e: io::Error) -> DatabaseError {
    DatabaseError::Storage(StorageError::Io(e))
}

/// The journal [`open`] gives the database file `path`.
pub fn log_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".wal");
    PathBuf::from(name)
}

/// When a database's durable commits are on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commits {
    /// Before the commit returns.
    Flushed,
    /// At the journal's next flush, which the caller makes sure comes before it reports the
    /// commit done to anyone.
    Deferred,
}

/// A log that the databases opened through it share. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Journal {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    path: PathBuf,
    /// Names in records are relative to this directory.
    dir: PathBuf,
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
    /// Records were appended since the last flush.
    unflushed: bool,
    /// Members with records in this epoch: their held blocks are written to their files, and
    /// the files flushed, before the log restarts.
    written: Vec<Arc<Member>>,
    /// Bytes of blocks the members hold for their files.
    held: u64,
    /// Past this many held bytes the log restarts.
    max_held: u64,
}

/// One database file of a journal.
#[derive(Debug)]
struct Member {
    name: String,
    file: FileBackend,
    state: Mutex<MemberState>,
}

/// A database's writes in memory, by block (`BLOCK` bytes from `index * BLOCK`), each block
/// whole as the database sees it.
type Blocks = BTreeMap<u64, Box<[u8]>>;

#[derive(Debug)]
struct MemberState {
    /// The file's length as the database sees it.
    len: u64,
    /// The length the member's last record gave, which the file takes at the next write-back.
    logged_len: u64,
    /// The file's length on disk: it changes only when held blocks are written, so that a
    /// crash never leaves it cut short of what the log's records still need.
    file_len: u64,
    /// Blocks written since the member's last record; reads see them over `held` and the file.
    pending: Blocks,
    /// What of `pending` the next record holds: only the bytes each write changed.
    changed: Vec<(u64, Vec<u8>)>,
    /// Blocks of appended records not yet written to the file, read from here. They are
    /// written at the log's restart, after its flush, or when the database closes.
    held: Blocks,
    resized: bool,
}

fn poisoned(what: &str) -> io::Error {
    io::Error::other(format!("{what} lock poisoned"))
}

impl Member {
    fn lock(&self) -> io::Result<MutexGuard<'_, MemberState>> {
        self.state.lock().map_err(|_| poisoned("database"))
    }

    /// Writes the blocks of its records to the file, flushes the file and forgets them; the
    /// bytes of memory that frees.
    fn write_back(&self) -> io::Result<u64> {
        let mut state = self.lock()?;
        let freed = state.held.len() as u64 * BLOCK;
        for (index, block) in &state.held {
            let start = index * BLOCK;
            let within = state.logged_len.saturating_sub(start).min(BLOCK) as usize;
            if within > 0 {
                self.file.write(start, &block[..within])?;
            }
        }
        if state.file_len != state.logged_len {
            self.file.set_len(state.logged_len)?;
            state.file_len = state.logged_len;
        }
        state.held.clear();
        drop(state);
        self.file.sync_data()?;
        Ok(freed)
    }
}

impl MemberState {
    /// Block `index` as the database sees it, to be changed and put back in `pending`: taken
    /// from there, else copied from `held` or read from the file.
    fn take_block(&mut self, file: &FileBackend, index: u64) -> io::Result<Box<[u8]>> {
        if let Some(block) = self.pending.remove(&index) {
            return Ok(block);
        }
        if let Some(block) = self.held.get(&index) {
            return Ok(block.clone());
        }
        let mut block = vec![0u8; BLOCK as usize].into_boxed_slice();
        self.read_file(file, index * BLOCK, &mut block)?;
        Ok(block)
    }

    /// Writes `data` at `offset` into the pending blocks, noting the bytes it changed for the
    /// next record. Only those go to the log: a commit rewrites whole pages to change a few
    /// bytes of each, and the flush costs by the byte. Replay stays exact, as every byte that
    /// changed since the log started is in it, and the file only ever holds bytes the log had
    /// before they got there.
    fn overwrite(&mut self, file: &FileBackend, offset: u64, data: &[u8]) -> io::Result<()> {
        let end = offset + data.len() as u64;
        for index in blocks(offset, data.len() as u64) {
            let start = index * BLOCK;
            let (from, to) = (offset.max(start), end.min(start + BLOCK));
            let mut block = self.take_block(file, index)?;
            let written = &data[(from - offset) as usize..(to - offset) as usize];
            let within = (from - start) as usize..(to - start) as usize;
            let spans = changed_spans(from, &block[within.clone()], written);
            self.changed.extend(spans);
            block[within].copy_from_slice(written);
            self.pending.insert(index, block);
        }
        Ok(())
    }

    /// Reads from the file, zeros past its end on disk.
    fn read_file(&self, file: &FileBackend, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let within = self.file_len.saturating_sub(offset).min(out.len() as u64) as usize;
        if within > 0 {
            file.read(offset, &mut out[..within])?;
        }
        out[within..].fill(0);
        Ok(())
    }

    /// The database's file grows from `from` to `to`: that span reads as zeros, whatever an
    /// earlier, longer file left in memory or on disk. Where it did not hold zeros, the change
    /// is logged, as replay may find those bytes there.
    fn expose(&mut self, file: &FileBackend, from: u64, to: u64) -> io::Result<()> {
        let last = |blocks: &Blocks| blocks.last_key_value().map_or(0, |(i, _)| (i + 1) * BLOCK);
        let reach = self
            .file_len
            .max(last(&self.pending))
            .max(last(&self.held))
            .min(to);
        if reach <= from {
            return Ok(());
        }
        const ZEROS: [u8; BLOCK as usize] = [0; BLOCK as usize];
        for index in blocks(from, reach - from) {
            // Each block from `from` to its end.
            let at = from.max(index * BLOCK);
            self.overwrite(file, at, &ZEROS[(at - index * BLOCK) as usize..])?;
        }
        Ok(())
    }

    /// Whether every block of `offset..offset + len` is in memory.
    fn holds(&self, offset: u64, len: u64) -> bool {
        blocks(offset, len).all(|i| self.pending.contains_key(&i) || self.held.contains_key(&i))
    }
}

/// The indices of the blocks `offset..offset + len` touches.
fn blocks(offset: u64, len: u64) -> std::ops::Range<u64> {
    if len == 0 {
        return 0..0;
    }
    offset / BLOCK..(offset + len - 1) / BLOCK + 1
}

impl Journal {
    /// Opens (or creates) the journal at `path`, first replaying its records onto their
    /// database files, which are then flushed.
    pub fn open(path: &Path) -> io::Result<Journal> {
        Journal::open_with_capacity(path, SHARED_CAPACITY)
    }

    fn open_with_capacity(path: &Path, capacity: u64) -> io::Result<Journal> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let file = open_or_create(path)?;
        // Unnamed records are those of a database's own log, `<file>.wal`.
        let unnamed = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(|n| n.strip_suffix(".wal").unwrap_or(n).to_owned())
            .unwrap_or_default();
        let replayed = replay(&dir, &unnamed, &file)?;
        if replayed.records > 0 {
            // Its records are in their flushed files now. They must never be applied again,
            // over whatever those files hold by the next open: the first one is spoilt.
            file.write_all_at(&[0u8; 4], 0)?;
            file.sync_data()?;
        }
        // Log space is written out once, so that appending to it later changes no file
        // metadata and its flush stays a flush of data only.
        if file.metadata()?.len() < capacity {
            zero_fill(&file, capacity)?;
            file.sync_all()?;
            File::open(&dir)?.sync_all()?;
        }
        let capacity = capacity.max(file.metadata()?.len());
        Ok(Journal {
            shared: Arc::new(Shared {
                path: path.to_path_buf(),
                dir,
                log: Mutex::new(Log {
                    file,
                    capacity,
                    end: 0,
                    epoch: next_epoch(replayed.epoch),
                    seq: 0,
                    unflushed: false,
                    written: Vec::new(),
                    held: 0,
                    max_held: MAX_HELD,
                }),
            }),
        })
    }

    /// Opens (or creates) the redb database at `path`, its commits written to this journal.
    pub fn database(&self, path: &Path, commits: Commits) -> Result<Database, DatabaseError> {
        let member = self.member(path).map_err(storage)?;
        Database::builder().create_with_backend(JournalBackend {
            journal: self.clone(),
            member,
            commits,
        })
    }

    fn member(&self, path: &Path) -> io::Result<Arc<Member>> {
        let own_log = log_path(path);
        if own_log != self.shared.path && own_log.exists() {
            // Left from when the database had a journal of its own: its records go to the
            // file first.
            drop(Journal::open_with_capacity(&own_log, 0)?);
            std::fs::remove_file(&own_log)?;
        }
        let name = match path.strip_prefix(&self.shared.dir) {
            Ok(relative) => relative,
            Err(_) => path,
        };
        let name = name
            .to_str()
            .filter(|n| n.len() <= u16::MAX as usize)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "database path {} cannot be named in a journal",
                        path.display()
                    ),
                )
            })?
            .to_owned();
        let file = open_or_create(path)?;
        let len = file.metadata()?.len();
        Ok(Arc::new(Member {
            name,
            file: FileBackend::new(file).map_err(io::Error::other)?,
            state: Mutex::new(MemberState {
                len,
                logged_len: len,
                file_len: len,
                pending: Blocks::new(),
                changed: Vec::new(),
                held: Blocks::new(),
                resized: false,
            }),
        }))
    }

    /// Makes every record appended so far durable.
    pub fn sync(&self) -> io::Result<()> {
        self.lock()?.flush()
    }

    /// Whether records were appended since the last flush: commits not yet durable.
    pub fn unflushed(&self) -> io::Result<bool> {
        Ok(self.lock()?.unflushed)
    }

    /// Whether the next commits may restart the log, which writes every page it holds back to
    /// its file and flushes the files: milliseconds, where a commit otherwise takes one append
    /// and at most one flush. "Next" is [`NEAR_RESTART`] bytes of records.
    pub fn restart_near(&self) -> bool {
        match self.lock() {
            Ok(log) => {
                log.end + NEAR_RESTART > log.capacity || log.held + NEAR_RESTART > log.max_held
            }
            // A poisoned journal fails the commit anyway.
            Err(_) => true,
        }
    }

    fn lock(&self) -> io::Result<MutexGuard<'_, Log>> {
        self.shared.log.lock().map_err(|_| poisoned("journal"))
    }
}

/// Opens `path` for reading and writing, creating it empty when missing, readable by its
/// owner alone: a journal holds what its stores commit (container specs among it).
fn open_or_create(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
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

fn body_len(name: &str, writes: &[(u64, Vec<u8>)]) -> usize {
    name.len()
        + writes
            .iter()
            .map(|(_, d)| WRITE_HEADER + d.len())
            .sum::<usize>()
}

fn record_len(name: &str, writes: &[(u64, Vec<u8>)]) -> u64 {
    (HEADER + body_len(name, writes) + TRAILER) as u64
}

fn encode(epoch: u64, seq: u64, name: &str, file_len: u64, writes: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let body = body_len(name, writes);
    let mut record = Vec::with_capacity(HEADER + body + TRAILER);
    record.extend_from_slice(MAGIC);
    record.extend_from_slice(&epoch.to_le_bytes());
    record.extend_from_slice(&seq.to_le_bytes());
    record.extend_from_slice(&file_len.to_le_bytes());
    record.extend_from_slice(&(writes.len() as u32).to_le_bytes());
    record.extend_from_slice(&(body as u32).to_le_bytes());
    record.extend_from_slice(&(name.len() as u16).to_le_bytes());
    record.extend_from_slice(name.as_bytes());
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
    /// None in an unnamed record.
    name: Option<&'a str>,
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
    let header = match b.get(..4)? {
        m if m == MAGIC => HEADER,
        m if m == MAGIC_UNNAMED => HEADER_UNNAMED,
        _ => return None,
    };
    if b.len() < header + TRAILER {
        return None;
    }
    let (epoch, seq, file_len) = (le_u64(&b[4..]), le_u64(&b[12..]), le_u64(&b[20..]));
    let (count, body) = (le_u32(&b[28..]) as usize, le_u32(&b[32..]) as usize);
    let end = header.checked_add(body)?;
    let size = end.checked_add(TRAILER)?;
    if b.len() < size || crc32fast::hash(&b[..end]) != le_u32(&b[end..]) {
        return None;
    }
    let mut at = header;
    let name = if header == HEADER {
        let len = u16::from_le_bytes([b[HEADER_UNNAMED], b[HEADER_UNNAMED + 1]]) as usize;
        let name = b.get(at..at.checked_add(len)?)?;
        at += len;
        Some(std::str::from_utf8(name).ok()?)
    } else {
        None
    };
    let mut writes = Vec::with_capacity(count.min(body / WRITE_HEADER));
    for _ in 0..count {
        if at + WRITE_HEADER > end {
            return None;
        }
        let (offset, len) = (le_u64(&b[at..]), le_u32(&b[at + 8..]) as usize);
        at += WRITE_HEADER;
        let data = b.get(at..at.checked_add(len)?)?;
        at += len;
        writes.push((offset, data));
    }
    (at == end).then_some(Record {
        epoch,
        seq,
        name,
        file_len,
        writes,
        size,
    })
}

struct Replayed {
    epoch: Option<u64>,
    records: usize,
}

/// Applies the log's whole records, of one epoch and in sequence from its start, to the files
/// they name under `dir` (`unnamed` for records without a name), and flushes those files. A
/// file that is not there is left so: the records belong to a database since deleted.
fn replay(dir: &Path, unnamed: &str, log: &File) -> io::Result<Replayed> {
    let len = log.metadata()?.len() as usize;
    let mut bytes = vec![0u8; len];
    log.read_exact_at(&mut bytes, 0)?;
    let mut at = 0;
    let mut epoch = None;
    let mut seq = 0;
    let mut files: HashMap<&str, Option<File>> = HashMap::new();
    while let Some(record) = decode(&bytes[at..]) {
        if epoch.is_some_and(|e| e != record.epoch) || record.seq != seq {
            break;
        }
        epoch = Some(record.epoch);
        let name = record.name.unwrap_or(unnamed);
        if !files.contains_key(name) {
            let opened = match OpenOptions::new().write(true).open(dir.join(name)) {
                Ok(f) => Some(f),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            };
            files.insert(name, opened);
        }
        if let Some(Some(file)) = files.get(name) {
            for (offset, data) in &record.writes {
                file.write_all_at(data, *offset)?;
            }
            file.set_len(record.file_len)?;
        }
        seq += 1;
        at += record.size;
    }
    for file in files.values().flatten() {
        file.sync_all()?;
    }
    Ok(Replayed {
        epoch,
        records: seq as usize,
    })
}

impl Log {
    /// Makes the records appended so far durable.
    fn flush(&mut self) -> io::Result<()> {
        if self.unflushed {
            self.file.sync_data()?;
            self.unflushed = false;
        }
        Ok(())
    }

    /// Once every database file with records in the log holds them, flushed, the records are
    /// no longer needed: the log starts over, under a new epoch.
    fn restart(&mut self) -> io::Result<()> {
        self.flush()?;
        while let Some(member) = self.written.last() {
            member.write_back()?;
            self.written.pop();
        }
        self.held = 0;
        self.epoch = next_epoch(Some(self.epoch));
        self.seq = 0;
        self.end = 0;
        Ok(())
    }
}

#[derive(Debug)]
struct JournalBackend {
    journal: Journal,
    member: Arc<Member>,
    commits: Commits,
}

impl JournalBackend {
    /// Appends the writes since the last record as a record, flushed when `commits` says so.
    fn append(&self, commits: Commits) -> io::Result<()> {
        let mut log = self.journal.lock()?;
        let size = {
            let state = self.member.lock()?;
            (!state.pending.is_empty() || state.resized)
                .then(|| record_len(&self.member.name, &state.changed))
        };
        if let Some(size) = size {
            if log.end + size > log.capacity || log.held > log.max_held {
                log.restart()?;
                if size > log.capacity {
                    zero_fill(&log.file, size)?;
                    log.file.sync_all()?;
                    log.capacity = size;
                }
            }
            let mut state = self.member.lock()?;
            let record = encode(
                log.epoch,
                log.seq,
                &self.member.name,
                state.len,
                &state.changed,
            );
            let end = log.end;
            log.file.write_all_at(&record, end)?;
            log.end += record.len() as u64;
            log.seq += 1;
            log.unflushed = true;
            state.changed.clear();
            state.resized = false;
            state.logged_len = state.len;
            for (index, block) in std::mem::take(&mut state.pending) {
                if state.held.insert(index, block).is_none() {
                    log.held += BLOCK;
                }
            }
            drop(state);
            if !log.written.iter().any(|m| Arc::ptr_eq(m, &self.member)) {
                log.written.push(self.member.clone());
            }
        }
        if commits == Commits::Flushed {
            log.flush()?;
        }
        Ok(())
    }
}

/// Unchanged bytes between two changed ones that are logged anyway rather than start another
/// write (whose header is 12 bytes).
const SPAN_GAP: usize = 32;

/// The spans of `after` (written at `offset`) that differ from `before`, close ones merged.
/// Compared eight bytes at a time: a word's differing bytes are less than `SPAN_GAP` apart, so
/// only its first and last one can start or end a span (a byte at a time, a page rewritten
/// whole cost thousands of comparisons).
fn changed_spans(offset: u64, before: &[u8], after: &[u8]) -> Vec<(u64, Vec<u8>)> {
    const WORD: usize = 8;
    let span = |(start, end): (usize, usize)| (offset + start as u64, after[start..end].to_vec());
    let mut spans = Vec::new();
    // The span being grown: its start and the end of its last differing byte.
    let mut open: Option<(usize, usize)> = None;
    let mut note = |first: usize, last: usize| match &mut open {
        Some((_, end)) if first - *end <= SPAN_GAP => *end = last + 1,
        open => spans.extend(open.replace((first, last + 1)).map(span)),
    };
    let whole = after.len().min(before.len()) / WORD * WORD;
    let word = |bytes: &[u8], at: usize| {
        let mut w = [0u8; WORD];
        w.copy_from_slice(&bytes[at..at + WORD]);
        u64::from_le_bytes(w)
    };
    for at in (0..whole).step_by(WORD) {
        let differing = word(before, at) ^ word(after, at);
        if differing != 0 {
            let first = at + differing.trailing_zeros() as usize / 8;
            let last = at + WORD - 1 - differing.leading_zeros() as usize / 8;
            note(first, last);
        }
    }
    for (at, byte) in after.iter().enumerate().skip(whole) {
        if before.get(at) != Some(byte) {
            note(at, at);
        }
    }
    spans.extend(open.map(span));
    spans
}

impl StorageBackend for JournalBackend {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.member.lock()?.len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let state = self.member.lock()?;
        let len = out.len() as u64;
        if offset + len > state.len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "read of {len} bytes at {offset} past the end ({})",
                    state.len
                ),
            ));
        }
        if !state.holds(offset, len) {
            state.read_file(&self.member.file, offset, out)?;
        }
        for index in blocks(offset, len) {
            let Some(block) = state.pending.get(&index).or_else(|| state.held.get(&index)) else {
                continue;
            };
            let start = index * BLOCK;
            let (from, to) = (offset.max(start), (offset + len).min(start + BLOCK));
            out[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&block[(from - start) as usize..(to - start) as usize]);
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        // The file itself takes the length at the next write-back: cut now, it could lose
        // bytes that records of this epoch, the ones a crash would replay, do not hold.
        let mut state = self.member.lock()?;
        if len > state.len {
            let from = state.len;
            state.expose(&self.member.file, from, len)?;
        }
        state.len = len;
        state.resized = true;
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.append(self.commits)
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut state = self.member.lock()?;
        let end = offset + data.len() as u64;
        if end > state.len {
            // As a file grows when written past its end.
            let from = state.len;
            state.expose(&self.member.file, from, end)?;
            state.len = end;
            state.resized = true;
        }
        state.overwrite(&self.member.file, offset, data)
    }

    fn close(&self) -> Result<(), io::Error> {
        // Writes of commits made without durability, and deferred ones, would be lost with the
        // process otherwise, which they are not with redb's own backend. The file gets what the
        // log holds for it, so that nothing of this database is left in memory.
        self.append(Commits::Flushed)?;
        let mut log = self.journal.lock()?;
        let freed = self.member.write_back()?;
        log.held = log.held.saturating_sub(freed);
        log.written.retain(|m| !Arc::ptr_eq(m, &self.member));
        drop(log);
        self.member.file.close()
    }

    fn try_lock_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.member.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.member.file.try_lock_shared_range(start, end)
    }

    fn lock_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<(), BackendError> {
        self.member.file.lock_range(start, end)
    }

    fn lock_shared_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<(), BackendError> {
        self.member.file.lock_shared_range(start, end)
    }

    fn unlock_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<(), BackendError> {
        self.member.file.unlock_range(start, end)
    }

    fn query_lock_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.member.file.query_lock_range(start, end)
    }
}

/// The write transactions of one database that are open or waiting to open (redb runs one at
/// a time), each counted from before its wait to its end, however it ends. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Writers(Arc<std::sync::atomic::AtomicUsize>);

/// One writer counted in [`Writers`], counted out when dropped.
#[derive(Debug)]
struct Writer(Arc<std::sync::atomic::AtomicUsize>);

impl Writers {
    /// Counts a writer in: called before waiting for the write transaction.
    fn enter(&self) -> Writer {
        self.0.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Writer(self.0.clone())
    }

    /// Writers open or waiting now.
    pub fn count(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether a write of this database would start at once and commit with no more than an
    /// append to `journal`, shared, and its flush: no writer is open or waiting (one may be
    /// long: a copy, a big walk, a collection), and the journal is not near a restart. False
    /// for a database with a journal of its own (`None`).
    pub fn commits_are_short(&self, journal: Option<&Journal>) -> bool {
        self.count() == 0 && journal.is_some_and(|j| !j.restart_near())
    }

    /// Opens a write transaction of `db`, whose writers these are.
    pub fn begin(&self, db: &Database) -> Result<Write, redb::TransactionError> {
        let open = self.enter();
        let tx = db.begin_write()?;
        Ok(Write { tx, _open: open })
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// A write transaction counted in its database's [`Writers`] from before the wait for it
/// until it ends ([`Writers::begin`]).
pub struct Write {
    tx: redb::WriteTransaction,
    /// Dropped after `tx`, which ends the transaction.
    _open: Writer,
}

impl Write {
    pub fn commit(self) -> Result<(), redb::CommitError> {
        self.tx.commit()
    }
}

impl std::ops::Deref for Write {
    type Target = redb::WriteTransaction;

    fn deref(&self) -> &redb::WriteTransaction {
        &self.tx
    }
}

impl std::ops::DerefMut for Write {
    fn deref_mut(&mut self) -> &mut redb::WriteTransaction {
        &mut self.tx
    }
}

#[cfg(test)]
mod tests;
