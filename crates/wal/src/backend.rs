//! The redb storage backend of a journal's database (`JournalBackend`): reads and writes go to
//! its member's blocks, and a durable commit appends them to the log as one record.

use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use redb::{BackendError, StorageBackend};

use crate::journal::{zero_fill, Journal};
use crate::member::{blocks, Member, BLOCK};
use crate::record::{encode, record_len};
use crate::Commits;

#[derive(Debug)]
pub(crate) struct JournalBackend {
    pub(crate) journal: Journal,
    pub(crate) member: Arc<Member>,
    pub(crate) commits: Commits,
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
pub(crate) const SPAN_GAP: usize = 32;

/// The spans of `after` (written at `offset`) that differ from `before`, close ones merged.
/// Compared eight bytes at a time: a word's differing bytes are less than `SPAN_GAP` apart, so
/// only its first and last one can start or end a span.
pub(crate) fn changed_spans(offset: u64, before: &[u8], after: &[u8]) -> Vec<(u64, Vec<u8>)> {
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
