//! A `snapshots` directory with one entry per snapshot id (`SnapshotDirs`), as native and
//! overlayfs keep them, with the emptied entries kept as spares for reuse.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use crate::fsutil::{make_dir, remove_tree};
use crate::Kind;

/// Entries of a snapshots directory that belong to no live snapshot: ids `is_live` refuses,
/// entries of interrupted creates, the `rm-*` leftovers of interrupted removes, and spares.
pub(crate) fn orphans(dir: &Path, is_live: impl Fn(&str) -> bool) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !is_live(&name) {
            out.push(entry.path());
        }
    }
    Ok(out)
}

/// What a new snapshot's entry starts as: a directory with `mode` holding the empty
/// subdirectories `subdirs` (name, mode), all owned by the daemon's user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    pub mode: u32,
    pub subdirs: &'static [(&'static str, u32)],
}

/// How many emptied entries are kept for reuse.
const MAX_SPARES: usize = 1024;
/// Spares are `spare-<n>` in the snapshots directory.
const SPARE_PREFIX: &str = "spare-";

/// A `snapshots` directory holding one entry per snapshot id, as native and overlayfs keep
/// them: built in place, moved to `rm-<id>` to be removed.
///
/// Emptied entries of removed snapshots that are still exactly as [`Layout`] `reused` makes
/// them (modes, owner, no xattrs, nothing inside), and that no mount of this mount namespace
/// still shows, are kept as spares (`spare-<n>`), and the next build of that layout takes one
/// by a rename instead of making directories, as deleting an entry frees its blocks (with
/// `discard`, a request to the disk each). A mount made in another mount namespace, or an open
/// directory, is not seen. The list of spares is in memory only: after a restart, Cleanup deletes them.
pub(crate) struct SnapshotDirs {
    dir: PathBuf,
    reused: Layout,
    spares: std::sync::Mutex<Vec<PathBuf>>,
    spare_names: std::sync::atomic::AtomicU64,
    /// Who owns a directory this process makes.
    owner: (u32, u32),
}

impl SnapshotDirs {
    /// `<root>/snapshots` (mode 0700), created when missing; entries laid out as `reused`
    /// are reused.
    pub fn open(root: &Path, reused: Layout) -> io::Result<Self> {
        let dir = root.join("snapshots");
        if !dir.exists() {
            std::fs::create_dir_all(root)?;
            make_dir(&dir, 0o700)?;
        }
        Ok(SnapshotDirs {
            dir,
            reused,
            spares: Default::default(),
            spare_names: Default::default(),
            owner: (
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
            ),
        })
    }

    pub fn path(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    fn spares(&self) -> std::sync::MutexGuard<'_, Vec<PathBuf>> {
        // The list stays valid whatever panicked while it was held.
        self.spares.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the entry of `id` laid out as `layout`, which `fill` completes. It is made in
    /// place: its record is committed only once it is whole, and Cleanup, which deletes entries
    /// without a record, waits for the create (both hold the store's write transaction), so a
    /// crash in between leaves an orphan for the next Cleanup.
    pub fn build(
        &self,
        id: &str,
        layout: Layout,
        fill: impl FnOnce(&Path) -> io::Result<()>,
    ) -> io::Result<()> {
        let target = self.path(id);
        // Left by a create whose record never got written (the id is free again).
        remove_tree(&target)?;
        let made = self
            .take_spare(&target, layout)
            .and_then(|taken| match taken {
                true => Ok(()),
                false => make_layout(&target, layout),
            })
            .and_then(|()| fill(&target));
        if made.is_err() {
            let _ = remove_tree(&target);
        }
        made
    }

    /// Moves a spare laid out as `layout` to `to`, if there is one; its times become now's,
    /// as a new directory's are.
    fn take_spare(&self, to: &Path, layout: Layout) -> io::Result<bool> {
        if self.reused != layout {
            return Ok(false);
        }
        loop {
            let Some(spare) = self.spares().pop() else {
                return Ok(false);
            };
            match std::fs::rename(&spare, to) {
                Ok(()) => break,
                // Gone from under the list (deleted by hand): try the next.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
        let touch = |p: &Path| {
            use nix::sys::time::TimeSpec;
            nix::sys::stat::utimensat(
                None,
                p,
                &TimeSpec::UTIME_NOW,
                &TimeSpec::UTIME_NOW,
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            )
            .map_err(io::Error::from)
        };
        touch(to)?;
        for (name, _) in layout.subdirs {
            touch(&to.join(name))?;
        }
        Ok(true)
    }

    /// Moves the entry of `id` aside; the returned path is deleted once the removal is durable.
    pub fn stage_removal(&self, id: &str) -> io::Result<PathBuf> {
        let staged = self.dir.join(format!("rm-{id}"));
        std::fs::rename(self.path(id), &staged)?;
        Ok(staged)
    }

    /// Deletes the entry at `path` of a snapshot that is gone, or keeps it as a spare.
    pub fn retire(&self, path: &Path) -> io::Result<()> {
        if self.spares().len() < MAX_SPARES
            && as_made(path, self.reused, self.owner)
            && !still_mounted(path, self.reused)
        {
            let n = self
                .spare_names
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let spare = self.dir.join(format!("{SPARE_PREFIX}{n}"));
            std::fs::rename(path, &spare)?;
            self.spares().push(spare);
            return Ok(());
        }
        remove_tree(path)
    }

    /// [`Driver::purge`](crate::Driver::purge) for a driver whose `detach` staged an entry of this directory.
    pub fn purge(&self, staged: Option<PathBuf>) -> io::Result<()> {
        match staged {
            Some(path) => self.retire(&path),
            None => Ok(()),
        }
    }

    /// Deletes (or keeps as spares) every entry that belongs to no snapshot in `live`.
    pub fn remove_orphans(&self, live: &HashMap<String, Kind>) -> io::Result<()> {
        // Up to MAX_SPARES of them, checked against every entry.
        let spares: std::collections::HashSet<PathBuf> = self.spares().iter().cloned().collect();
        let found = orphans(&self.dir, |id| live.contains_key(id))?;
        // Spares this process does not know of (an earlier one's) go first, so that no
        // new spare's name can meet one of theirs.
        let (old_spares, others): (Vec<PathBuf>, Vec<PathBuf>) = found
            .into_iter()
            .filter(|p| !spares.contains(p))
            .partition(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(SPARE_PREFIX))
            });
        for path in old_spares {
            remove_tree(&path)?;
        }
        for path in others {
            self.retire(&path)?;
        }
        Ok(())
    }
}

/// Makes `path` and its subdirectories as `layout` says.
fn make_layout(path: &Path, layout: Layout) -> io::Result<()> {
    make_dir(path, layout.mode)?;
    for (name, mode) in layout.subdirs {
        make_dir(&path.join(name), *mode)?;
    }
    Ok(())
}

/// Whether `path` is exactly what [`make_layout`] makes, by `owner`: nothing a snapshot's
/// use left (files, other modes or owners, xattrs such as overlayfs's) may come with a reuse.
fn as_made(path: &Path, layout: Layout, owner: (u32, u32)) -> bool {
    use std::os::unix::fs::MetadataExt;
    let bare = |p: &Path, mode: u32| {
        std::fs::symlink_metadata(p)
            .is_ok_and(|m| m.is_dir() && m.mode() & 0o7777 == mode && (m.uid(), m.gid()) == owner)
            && xattr::list(p).is_ok_and(|mut names| names.next().is_none())
    };
    let names = |p: &Path| -> Option<Vec<std::ffi::OsString>> {
        let mut names = std::fs::read_dir(p)
            .ok()?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<Vec<_>>>()
            .ok()?;
        names.sort();
        Some(names)
    };
    let mut expected: Vec<std::ffi::OsString> =
        layout.subdirs.iter().map(|(n, _)| (*n).into()).collect();
    expected.sort();
    bare(path, layout.mode)
        && names(path) == Some(expected)
        && layout.subdirs.iter().all(|(name, mode)| {
            let sub = path.join(name);
            bare(&sub, *mode) && names(&sub).is_some_and(|n| n.is_empty())
        })
}

/// Whether a mount still shows the entry at `path` laid out as `layout` (it or one of its
/// subdirectories): a bind mount of an empty active snapshot that outlived its removal. Its
/// entry must not be reused: writes through that mount would land in another snapshot.
fn still_mounted(path: &Path, layout: Layout) -> bool {
    let subdirs = layout.subdirs.iter().map(|(name, _)| path.join(name));
    let dirs: Vec<PathBuf> = std::iter::once(path.to_path_buf()).chain(subdirs).collect();
    crate::mount::shown_by_a_mount(&dirs)
}
