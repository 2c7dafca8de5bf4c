//! One database file of a journal (`Member`) and its writes held in memory by block, until
//! they are logged and then written back to the file.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Mutex, MutexGuard};

use redb::backends::FileBackend;
use redb::StorageBackend;

use crate::backend::changed_spans;
use crate::poisoned;

/// What a database's writes are kept in memory by: redb's page size.
pub(crate) const BLOCK: u64 = 4096;

/// One database file of a journal.
#[derive(Debug)]
pub(crate) struct Member {
    pub(crate) name: String,
    pub(crate) file: FileBackend,
    pub(crate) state: Mutex<MemberState>,
}

/// A database's writes in memory, by block (`BLOCK` bytes from `index * BLOCK`), each block
/// whole as the database sees it.
pub(crate) type Blocks = BTreeMap<u64, Box<[u8]>>;

#[derive(Debug)]
pub(crate) struct MemberState {
    /// The file's length as the database sees it.
    pub(crate) len: u64,
    /// The length the member's last record gave, which the file takes at the next write-back.
    pub(crate) logged_len: u64,
    /// The file's length on disk: it changes only when held blocks are written, so that a
    /// crash never leaves it cut short of what the log's records still need.
    pub(crate) file_len: u64,
    /// Blocks written since the member's last record; reads see them over `held` and the file.
    pub(crate) pending: Blocks,
    /// What of `pending` the next record holds: only the bytes each write changed.
    pub(crate) changed: Vec<(u64, Vec<u8>)>,
    /// Blocks of appended records not yet written to the file, read from here. They are
    /// written at the log's restart, after its flush, or when the database closes.
    pub(crate) held: Blocks,
    pub(crate) resized: bool,
}

impl Member {
    pub(crate) fn lock(&self) -> io::Result<MutexGuard<'_, MemberState>> {
        self.state.lock().map_err(|_| poisoned("database"))
    }

    /// Writes the blocks of its records to the file, flushes the file and forgets them; the
    /// bytes of memory that frees.
    pub(crate) fn write_back(&self) -> io::Result<u64> {
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
    pub(crate) fn overwrite(
        &mut self,
        file: &FileBackend,
        offset: u64,
        data: &[u8],
    ) -> io::Result<()> {
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
    pub(crate) fn read_file(
        &self,
        file: &FileBackend,
        offset: u64,
        out: &mut [u8],
    ) -> io::Result<()> {
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
    pub(crate) fn expose(&mut self, file: &FileBackend, from: u64, to: u64) -> io::Result<()> {
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
    pub(crate) fn holds(&self, offset: u64, len: u64) -> bool {
        blocks(offset, len).all(|i| self.pending.contains_key(&i) || self.held.contains_key(&i))
    }
}

/// The indices of the blocks `offset..offset + len` touches.
pub(crate) fn blocks(offset: u64, len: u64) -> std::ops::Range<u64> {
    if len == 0 {
        return 0..0;
    }
    offset / BLOCK..(offset + len - 1) / BLOCK + 1
}
