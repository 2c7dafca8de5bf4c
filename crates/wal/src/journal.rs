//! The log databases share (`Journal`): opening it, appending space, flushing it and restarting
//! it once its records are in their files.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use redb::backends::FileBackend;
use redb::{Database, DatabaseError};

use crate::backend::JournalBackend;
use crate::member::{Blocks, Member, MemberState};
use crate::replay::replay;
use crate::{log_path, poisoned, storage, Commits};

/// How much log a journal shared by the daemon's stores puts the files' flush off for.
const SHARED_CAPACITY: u64 = 4 << 20;
/// Pages held in memory for their files, past which the log restarts early (bytes).
const MAX_HELD: u64 = 8 << 20;
/// Records [`Journal::restart_near`] looks ahead by: well over what a commit of a few records
/// logs.
pub const NEAR_RESTART: u64 = 64 << 10;

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
pub(crate) struct Log {
    pub(crate) file: File,
    pub(crate) capacity: u64,
    /// Where the next record goes.
    pub(crate) end: u64,
    pub(crate) epoch: u64,
    pub(crate) seq: u64,
    /// Records were appended since the last flush.
    pub(crate) unflushed: bool,
    /// Members with records in this epoch: their held blocks are written to their files, and
    /// the files flushed, before the log restarts.
    pub(crate) written: Vec<Arc<Member>>,
    /// Bytes of blocks the members hold for their files.
    pub(crate) held: u64,
    /// Past this many held bytes the log restarts.
    pub(crate) max_held: u64,
}

impl Journal {
    /// Opens (or creates) the journal at `path`, first replaying its records onto their
    /// database files, which are then flushed.
    pub fn open(path: &Path) -> io::Result<Journal> {
        Journal::open_with_capacity(path, SHARED_CAPACITY)
    }

    pub(crate) fn open_with_capacity(path: &Path, capacity: u64) -> io::Result<Journal> {
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

    pub(crate) fn member(&self, path: &Path) -> io::Result<Arc<Member>> {
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

    pub(crate) fn lock(&self) -> io::Result<MutexGuard<'_, Log>> {
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

pub(crate) fn zero_fill(file: &File, to: u64) -> io::Result<()> {
    let zeros = vec![0u8; 1 << 20];
    let mut at = file.metadata()?.len();
    while at < to {
        let n = (to - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

impl Log {
    /// Makes the records appended so far durable.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        if self.unflushed {
            self.file.sync_data()?;
            self.unflushed = false;
        }
        Ok(())
    }

    /// Once every database file with records in the log holds them, flushed, the records are
    /// no longer needed: the log starts over, under a new epoch.
    pub(crate) fn restart(&mut self) -> io::Result<()> {
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
