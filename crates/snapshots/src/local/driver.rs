//! The filesystem side of a local snapshotter (`Driver`): what differs between native,
//! overlayfs, btrfs, zfs and devmapper under the shared bookkeeping.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;

use crate::fsutil::remove_tree;
use crate::storage::Snapshot;
use crate::{Info, Kind, Mount, Usage};

/// The filesystem side of a local snapshotter. Calls are blocking.
pub trait Driver: Send + Sync + 'static {
    /// Makes the filesystem of a new snapshot; its record is written only if this succeeds.
    fn create(&self, snapshot: &Snapshot) -> io::Result<()>;
    fn mounts(&self, snapshot: &Snapshot) -> Vec<Mount>;
    /// Whether `create` of a snapshot of `kind`, with or without a parent, makes a bounded
    /// number of filesystem calls, whatever the size of the parent's tree: it then runs on the
    /// caller's thread (see [`crated_wal::work::Work::Short`]).
    fn creates_in_constant_time(&self, _kind: Kind, _has_parent: bool) -> bool {
        false
    }
    /// Seals the active snapshot `id` for commit and returns what it uses.
    fn commit(&self, id: &str) -> io::Result<Usage>;
    /// `commit`, if it takes no more than `max_entries` entries' work; otherwise None, having
    /// changed nothing, and `commit` is called where it may take its time.
    fn commit_within(&self, _id: &str, _max_entries: usize) -> io::Result<Option<Usage>> {
        Ok(None)
    }
    /// Whether `commit_within` ever commits: a driver without it (the default) has every
    /// commit go straight where it may take its time, without a try that must give up.
    fn can_commit_within(&self) -> bool {
        false
    }
    /// Takes the filesystem of a snapshot being removed out of use. What it returns is
    /// deleted once the removal is durable.
    fn detach(&self, id: &str, kind: Kind, has_parent: bool) -> io::Result<Option<PathBuf>>;
    /// Finishes the removal of `id` once it is durable, given what `detach` returned.
    fn purge(&self, _id: &str, staged: Option<PathBuf>) -> io::Result<()> {
        match staged {
            Some(path) => remove_tree(&path),
            None => Ok(()),
        }
    }
    /// What the active snapshot `id` uses now.
    fn usage(&self, id: &str) -> io::Result<Usage>;
    /// Deletes whatever belongs to no snapshot in `live` (ids and their kinds).
    fn cleanup(&self, live: &HashMap<String, Kind>) -> io::Result<()>;
    /// Labels the driver computes for a snapshot (overlayfs's `upperdir_label`).
    fn computed_labels(&self, _id: &str, _info: &mut Info) {}
    /// Whether a snapshot made without a parent can be committed onto one (the `rebase`
    /// capability): true where a snapshot's directory holds only its own changes.
    fn can_rebase(&self) -> bool {
        false
    }
}
