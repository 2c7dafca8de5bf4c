//! Counting a database's write transactions (`Writers`), open or waiting, so that callers can
//! tell when a commit will be short.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use redb::Database;

use crate::Journal;

/// The write transactions of one database that are open or waiting to open (redb runs one at
/// a time), each counted from before its wait to its end, however it ends. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Writers(Arc<AtomicUsize>);

/// One writer counted in [`Writers`], counted out when dropped.
#[derive(Debug)]
pub(crate) struct Writer(Arc<AtomicUsize>);

impl Writers {
    /// Counts a writer in: called before waiting for the write transaction.
    pub(crate) fn enter(&self) -> Writer {
        self.0.fetch_add(1, Ordering::AcqRel);
        Writer(self.0.clone())
    }

    /// Writers open or waiting now.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Acquire)
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
        self.0.fetch_sub(1, Ordering::AcqRel);
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
