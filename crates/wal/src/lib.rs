//! A redb storage backend whose durable commits are one sequential append to a log. redb makes a
//! commit durable by writing its pages where they live, scattered over the file, and flushing
//! them, which costs more than flushing the same bytes written in one piece. Here a commit's
//! writes go to a log as one checksummed record holding the bytes they changed, flushed. The
//! pages stay in memory, where reads find them, and reach the database file once the log is full
//! (or holds too many of them in memory), each written once however many commits changed it;
//! the files are then flushed and the log starts over. Opening a log replays its records.
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

mod backend;
mod journal;
mod member;
mod record;
mod replay;
pub mod work;
mod writers;

use std::io;
use std::path::{Path, PathBuf};

use redb::{Database, DatabaseError, StorageError};

pub use journal::{Journal, NEAR_RESTART};
pub use writers::{Write, Writers};

/// How much log a database's own journal puts the file's flush off for.
const LOG_CAPACITY: u64 = 1 << 20;

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

fn poisoned(what: &str) -> io::Error {
    io::Error::other(format!("{what} lock poisoned"))
}

#[cfg(test)]
mod tests;
