//! A snapshotter whose snapshots live on this host: the contract's bookkeeping over the
//! [`MetaStore`], with a [`Driver`] doing what differs between native, overlayfs and btrfs.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::fsutil::{make_dir, remove_tree};
use crate::storage::{MetaStore, Snapshot};
use crate::{filter_infos, Info, Kind, Mount, SnapshotError, Snapshotter, Usage};

/// The filesystem side of a local snapshotter. Calls are blocking.
pub trait Driver: Send + Sync + 'static {
    /// Makes the filesystem of a new snapshot; its record is written only if this succeeds.
    fn create(&self, snapshot: &Snapshot) -> io::Result<()>;
    fn mounts(&self, snapshot: &Snapshot) -> Vec<Mount>;
    /// Whether `create` of a snapshot of `kind`, with or without a parent, makes a bounded
    /// number of filesystem calls, whatever the size of the parent's tree: it then runs on the
    /// caller's thread (see [`run_store_work`]).
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

struct Inner<D> {
    store: MetaStore,
    driver: D,
}

pub struct LocalSnapshotter<D> {
    inner: Arc<Inner<D>>,
}

impl<D: Driver> LocalSnapshotter<D> {
    /// Opens the snapshotter keeping its records in `<root>/metadata.db`, and removes what a
    /// crash left behind (directories of snapshots that were never recorded).
    pub fn open(root: &Path, driver: D) -> Result<Self, SnapshotError> {
        Self::open_in(root, driver, None)
    }

    /// [`LocalSnapshotter::open`], its store's commits deferred to `journal` when given: a
    /// call's changes are then durable once the caller's next flushed commit to that journal
    /// returns (the metadata store's, which follows every snapshot call in the daemon).
    pub fn open_in(
        root: &Path,
        driver: D,
        journal: Option<&crated_wal::Journal>,
    ) -> Result<Self, SnapshotError> {
        let store = MetaStore::open_in(&root.join("metadata.db"), journal)?;
        let s = LocalSnapshotter {
            inner: Arc::new(Inner { store, driver }),
        };
        s.inner.cleanup()?;
        Ok(s)
    }

    /// Commit, onto `onto` when it is not empty (checked by the store).
    async fn commit_to(
        &self,
        name: &str,
        key: &str,
        onto: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), SnapshotError> {
        let (name, key, onto) = (name.to_owned(), key.to_owned(), onto.to_owned());
        // A commit walks its snapshot for the usage it records: one of at most
        // SHORT_COMMIT_ENTRIES entries (an empty layer, a container's few changes) here, a
        // bigger one on a blocking thread once this try has given up, changing nothing.
        if self.inner.driver.can_commit_within() {
            let tried = labels.clone();
            let (n, k, o) = (name.clone(), key.clone(), onto.clone());
            let done = self
                .run_where(true, move |s| {
                    s.commit(&n, &k, &o, tried, Some(SHORT_COMMIT_ENTRIES))
                })
                .await?;
            if done {
                return Ok(());
            }
        }
        self.run(move |s| s.commit(&name, &key, &onto, labels, None).map(|_| ()))
            .await
    }

    /// Runs `f`, which may walk or copy trees, on a thread that may block.
    async fn run<T, F>(&self, f: F) -> Result<T, SnapshotError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner<D>) -> Result<T, SnapshotError> + Send + 'static,
    {
        self.run_where(false, f).await
    }

    /// Runs `f` as [`run_store_work`] does: on this thread if its filesystem work is
    /// `constant` (bounded whatever the size of a tree) and the store's commits are short.
    async fn run_where<T, F>(&self, constant: bool, f: F) -> Result<T, SnapshotError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner<D>) -> Result<T, SnapshotError> + Send + 'static,
    {
        let inner = self.inner.clone();
        let short = constant && inner.store.commits_are_short();
        run_store_work(short, move || f(&inner))
            .await
            .map_err(|e| SnapshotError::Io {
                context: "snapshotter task".into(),
                source: io::Error::other(e.to_string()),
            })?
    }
}

/// Runs a short store transaction: on the daemon's multi-threaded runtime in place (the
/// worker's other tasks move on), sparing two thread hand-offs per call, which is most of a
/// snapshot call's time; elsewhere on the blocking pool. Snapshot stores and the metadata
/// store's snapshot records both run theirs here.
pub async fn run_transaction<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    if tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::MultiThread
    {
        return Ok(tokio::task::block_in_place(f));
    }
    tokio::task::spawn_blocking(f).await
}

/// Runs store work on the calling thread when it is `short`, otherwise as [`run_transaction`]
/// does. Short work is a bounded number of store and filesystem calls, whatever the size of
/// any tree, with at most one flush of the journal (a few hundred µs at most). On this
/// project's VMs, handing work to another thread and back costs more CPU than that work
/// (about 65 µs a hand-off, measured, and a snapshot call made two or three), and it was a
/// third of a snapshot call's time.
pub async fn run_store_work<T: Send + 'static>(
    short: bool,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    if short {
        return Ok(f());
    }
    run_transaction(f).await
}

/// Entries a commit may walk on the caller's thread (see [`Driver::commit_within`]).
const SHORT_COMMIT_ENTRIES: usize = 64;

impl<D: Driver> Inner<D> {
    /// Commits the active `key` as `name` (onto `onto` when not empty), unless its driver's
    /// commit would take more than `max_entries` entries' work: then false, and nothing is
    /// changed.
    fn commit(
        &self,
        name: &str,
        key: &str,
        onto: &str,
        labels: HashMap<String, String>,
        max_entries: Option<usize>,
    ) -> Result<bool, SnapshotError> {
        let mut tx = self.store.write()?;
        // The key is looked up first: a missing key is NotFound whatever the name.
        let (id, info, _) = tx.info(key)?;
        if info.kind != Kind::Active {
            return Err(SnapshotError::FailedPrecondition(format!(
                "snapshot {key} is not active"
            )));
        }
        let usage = match max_entries {
            Some(max) => self.driver.commit_within(&id, max),
            None => self.driver.commit(&id).map(Some),
        }
        .map_err(SnapshotError::io(format!("committing {key}")))?;
        let Some(usage) = usage else {
            return Ok(false);
        };
        tx.commit_active(key, name, onto, usage, labels)?;
        tx.commit()?;
        Ok(true)
    }

    fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        let mut tx = self.store.write()?;
        let snapshot = tx.create(kind, key, parent, labels)?;
        self.driver
            .create(&snapshot)
            .map_err(SnapshotError::io(format!("creating snapshot {key}")))?;
        if let Err(e) = tx.commit() {
            // The record is not there: neither may its filesystem be.
            if let Ok(staged) =
                self.driver
                    .detach(&snapshot.id, kind, !snapshot.parent_ids.is_empty())
            {
                let _ = self.driver.purge(&snapshot.id, staged);
            }
            return Err(e);
        }
        Ok(self.driver.mounts(&snapshot))
    }

    /// Removes `keys` in turn in one durable commit, with a result for each; the outer error
    /// is the store's, and then nothing is removed. Each snapshot is checked and its
    /// filesystem detached before its record goes: one that cannot be detached keeps its
    /// record and the others go on. What was detached is purged once the commit is durable.
    fn remove_keys(
        &self,
        keys: &[String],
    ) -> Result<Vec<Result<(), SnapshotError>>, SnapshotError> {
        let mut tx = self.store.write()?;
        let mut results = Vec::with_capacity(keys.len());
        let mut detached = Vec::new();
        for key in keys {
            let taken = tx.removal(key).and_then(|(id, removed)| {
                let staged = self
                    .driver
                    .detach(&id, removed.kind, !removed.parent.is_empty())
                    .map_err(SnapshotError::io(format!("removing {key}")))?;
                Ok((id, staged))
            });
            match taken {
                Ok((id, staged)) => {
                    tx.remove(key)?;
                    detached.push((id, key, staged));
                    results.push(Ok(()));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        if detached.is_empty() {
            // Nothing changed: no commit to make durable.
            return Ok(results);
        }
        tx.commit()?;
        // What is purged cannot come back: the removal must be durable first, whoever
        // (the collector, here) asked for it.
        self.store.sync()?;
        for (id, key, staged) in detached {
            if let Err(e) = self.driver.purge(&id, staged) {
                // The record is gone; Cleanup deletes what is left.
                tracing::warn!("removing {key}: {e}");
            }
        }
        Ok(results)
    }

    fn info(&self, key: &str) -> Result<Info, SnapshotError> {
        let (id, mut info, _) = self.store.read()?.info(key)?;
        self.driver.computed_labels(&id, &mut info);
        Ok(info)
    }

    fn cleanup(&self) -> Result<(), SnapshotError> {
        // A write transaction, though nothing is written: it keeps creates (which build their
        // directory before their record is committed) out while orphans are told apart.
        let tx = self.store.write()?;
        let live = tx
            .all()?
            .into_iter()
            .map(|(id, info)| (id, info.kind))
            .collect();
        let result = self
            .driver
            .cleanup(&live)
            .map_err(SnapshotError::io("cleaning up snapshots"));
        drop(tx);
        result
    }
}

#[async_trait::async_trait]
impl<D: Driver> Snapshotter for LocalSnapshotter<D> {
    async fn stat(&self, key: &str) -> Result<Info, SnapshotError> {
        let key = key.to_owned();
        self.run_where(true, move |s| s.info(&key)).await
    }

    async fn update(&self, info: Info, field_paths: &[String]) -> Result<Info, SnapshotError> {
        let paths = field_paths.to_vec();
        self.run_where(true, move |s| {
            let mut tx = s.store.write()?;
            let id = tx.info(&info.name)?.0;
            let mut out = tx.update(info, &paths)?;
            tx.commit()?;
            s.driver.computed_labels(&id, &mut out);
            Ok(out)
        })
        .await
    }

    async fn usage(&self, key: &str) -> Result<Usage, SnapshotError> {
        let key = key.to_owned();
        self.run(move |s| {
            let (id, info, stored) = s.store.read()?.info(&key)?;
            match info.kind {
                Kind::Active => s
                    .driver
                    .usage(&id)
                    .map_err(SnapshotError::io(format!("usage of {key}"))),
                Kind::Committed => Ok(stored),
                Kind::View => Ok(Usage::default()),
            }
        })
        .await
    }

    async fn mounts(&self, key: &str) -> Result<Vec<Mount>, SnapshotError> {
        let key = key.to_owned();
        self.run_where(true, move |s| {
            let snapshot = s.store.read()?.snapshot(&key)?;
            Ok(s.driver.mounts(&snapshot))
        })
        .await
    }

    async fn prepare(
        &self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        let constant = self
            .inner
            .driver
            .creates_in_constant_time(Kind::Active, !parent.is_empty());
        let (key, parent) = (key.to_owned(), parent.to_owned());
        self.run_where(constant, move |s| {
            s.create(Kind::Active, &key, &parent, labels)
        })
        .await
    }

    async fn view(
        &self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        let constant = self
            .inner
            .driver
            .creates_in_constant_time(Kind::View, !parent.is_empty());
        let (key, parent) = (key.to_owned(), parent.to_owned());
        self.run_where(constant, move |s| {
            s.create(Kind::View, &key, &parent, labels)
        })
        .await
    }

    async fn commit(
        &self,
        name: &str,
        key: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), SnapshotError> {
        self.commit_to(name, key, "", labels).await
    }

    fn can_rebase(&self) -> bool {
        self.inner.driver.can_rebase()
    }

    async fn commit_rebased(
        &self,
        name: &str,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), SnapshotError> {
        self.commit_to(name, key, parent, labels).await
    }

    async fn remove(&self, key: &str) -> Result<(), SnapshotError> {
        let key = key.to_owned();
        self.run(move |s| {
            let mut results = s.remove_keys(std::slice::from_ref(&key))?;
            results.pop().expect("a result for each key")
        })
        .await
    }

    async fn remove_each(&self, keys: &[String]) -> Vec<Result<(), SnapshotError>> {
        let keys = keys.to_vec();
        let count = keys.len();
        match self.run(move |s| s.remove_keys(&keys)).await {
            Ok(results) => results,
            // The store failed: none of the removals is recorded.
            Err(e) => {
                let message = e.to_string();
                (0..count)
                    .map(|_| {
                        Err(SnapshotError::Other {
                            kind: crated_errdefs::HasKind::kind(&e),
                            message: message.clone(),
                        })
                    })
                    .collect()
            }
        }
    }

    async fn walk(&self, filters: &[String]) -> Result<Vec<Info>, SnapshotError> {
        let filters = filters.to_vec();
        self.run(move |s| {
            let mut infos = Vec::new();
            for (id, mut info) in s.store.read()?.all()? {
                s.driver.computed_labels(&id, &mut info);
                infos.push(info);
            }
            filter_infos(infos, &filters)
        })
        .await
    }

    async fn cleanup(&self) -> Result<(), SnapshotError> {
        self.run(|s| s.cleanup()).await
    }

    async fn close(&self) -> Result<(), SnapshotError> {
        Ok(())
    }
}

/// Entries of a snapshots directory that belong to no live snapshot: ids `is_live` refuses,
/// entries of interrupted creates, the `rm-*` leftovers of interrupted removes (and `new-*`
/// of creates of earlier versions, which built entries aside), and spares.
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
/// by a rename instead of making directories. Deleting entries and making new ones instead
/// costs 8–15% of a prepare+commit+remove cycle on this project's disks (a deletion frees
/// blocks: with `discard`, a request to the disk each). A mount made in another mount
/// namespace, or an open directory, is not seen. The list of spares is in memory only: after
/// a restart, Cleanup deletes them.
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

    /// [`Driver::purge`] for a driver whose `detach` staged an entry of this directory.
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

/// Why a snapshotter without the `rebase` capability refuses a commit onto a parent.
pub fn rebase_unsupported(key: &str, parent: &str) -> SnapshotError {
    SnapshotError::NotImplemented(format!(
        "committing {key} onto {parent}: this snapshotter cannot rebase"
    ))
}

#[cfg(test)]
mod tests {
    use crate::{Kind, Snapshotter};
    use crated_errdefs::{HasKind, Kind as ErrKind};

    fn native(root: &std::path::Path) -> crate::LocalSnapshotter<crate::native::Native> {
        let driver = crate::native::Native::new(root).unwrap();
        crate::LocalSnapshotter::open(root, driver).unwrap()
    }

    #[tokio::test]
    async fn a_batch_of_removals_is_one_commit_with_a_result_each() {
        let dir = tempfile::tempdir().unwrap();
        let sn = native(dir.path());
        let none = std::collections::HashMap::new;
        sn.prepare("a", "", none()).await.unwrap();
        sn.commit("base", "a", none()).await.unwrap();
        sn.prepare("b", "base", none()).await.unwrap();
        sn.commit("middle", "b", none()).await.unwrap();
        sn.prepare("top", "middle", none()).await.unwrap();
        sn.prepare("lone", "", none()).await.unwrap();
        let dirs_before = std::fs::read_dir(dir.path().join("snapshots"))
            .unwrap()
            .count();
        assert_eq!(dirs_before, 4);

        let keys: Vec<String> = ["top", "missing", "base", "middle", "lone"]
            .map(String::from)
            .into();
        let results = sn.remove_each(&keys).await;
        let kinds: Vec<Option<ErrKind>> = results
            .iter()
            .map(|r| r.as_ref().err().map(HasKind::kind))
            .collect();
        // "base" still has "middle" when its turn comes; "middle" goes once "top" has.
        assert_eq!(
            kinds,
            [
                None,
                Some(ErrKind::NotFound),
                Some(ErrKind::FailedPrecondition),
                None,
                None
            ]
        );
        drop(sn);

        // Reopened: what was removed is gone for good, files included; "base" is still there.
        let sn = native(dir.path());
        let left: Vec<(String, Kind)> = sn
            .walk(&[])
            .await
            .unwrap()
            .into_iter()
            .map(|i| (i.name, i.kind))
            .collect();
        assert_eq!(left, [("base".to_string(), Kind::Committed)]);
        let dirs: Vec<_> = std::fs::read_dir(dir.path().join("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(dirs.len(), 1, "{dirs:?}");
        assert_eq!(sn.remove_each(&["base".into()]).await.len(), 1);
        assert!(sn.walk(&[]).await.unwrap().is_empty());
    }

    /// Removing purges files, which cannot come back: a store deferring its commits to a
    /// journal flushes the removal first, as the collector calls it with nothing after.
    #[tokio::test]
    async fn a_removal_is_durable_before_its_files_go() {
        let dir = tempfile::tempdir().unwrap();
        let journal = crated_wal::Journal::open(&dir.path().join("stores.wal")).unwrap();
        let driver = crate::native::Native::new(dir.path()).unwrap();
        let sn = crate::LocalSnapshotter::open_in(dir.path(), driver, Some(&journal)).unwrap();
        sn.prepare("a", "", Default::default()).await.unwrap();
        assert!(journal.unflushed().unwrap(), "the store does not defer");
        sn.remove_each(&["a".into()]).await.pop().unwrap().unwrap();
        assert!(!journal.unflushed().unwrap());
        // Its emptied entry is kept for reuse, under another name.
        assert_eq!(entries(dir.path()), ["spare-0"]);
    }

    /// A commit walks a small snapshot on the caller's thread and a bigger one on a blocking
    /// thread, after giving up its first try unchanged: both record what they use.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn commits_record_usage_whether_walked_in_place_or_not() {
        let dir = tempfile::tempdir().unwrap();
        let journal = crated_wal::Journal::open(&dir.path().join("stores.wal")).unwrap();
        let driver = crate::native::Native::new(dir.path()).unwrap();
        let sn = crate::LocalSnapshotter::open_in(dir.path(), driver, Some(&journal)).unwrap();
        let none = std::collections::HashMap::new;
        for (key, files) in [("small", 3), ("big", super::SHORT_COMMIT_ENTRIES + 10)] {
            let mounts = sn.prepare(key, "", none()).await.unwrap();
            for i in 0..files {
                std::fs::write(
                    std::path::Path::new(&mounts[0].source).join(i.to_string()),
                    "x",
                )
                .unwrap();
            }
            let name = format!("{key}-committed");
            sn.commit(&name, key, none()).await.unwrap();
            let usage = sn.usage(&name).await.unwrap();
            assert_eq!(usage.inodes, files as i64 + 1, "{key}");
            assert!(usage.size > 0, "{key}");
            assert_eq!(sn.stat(&name).await.unwrap().kind, Kind::Committed);
            let gone = sn.stat(key).await.unwrap_err();
            assert_eq!(gone.kind(), ErrKind::NotFound, "{key}");
        }
    }

    fn entries(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// An emptied entry that a bind mount still shows is deleted, not kept: that mount must
    /// not come to show the next snapshot.
    #[tokio::test]
    async fn an_entry_still_mounted_is_not_reused() {
        if !crate::testsuite::can_mount("an_entry_still_mounted_is_not_reused") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let sn = native(dir.path());
        let none = std::collections::HashMap::new;
        let first = sn.prepare("a", "", none()).await.unwrap();
        let target = dir.path().join("mnt");
        std::fs::create_dir(&target).unwrap();
        crate::mount::mount_all(&first, &target).unwrap();
        sn.remove("a").await.unwrap();
        let kept = entries(dir.path());
        // Fails: the directory it shows is deleted.
        let late = std::fs::write(target.join("late"), "x");
        let second = sn.prepare("b", "", none()).await.unwrap();
        let reached = std::path::Path::new(&second[0].source)
            .join("late")
            .exists();
        crate::mount::unmount(&target).unwrap();
        assert!(kept.is_empty(), "kept {kept:?}");
        assert!(late.is_err());
        assert!(
            !reached,
            "a write through the old mount reached the new snapshot"
        );
    }

    /// An emptied entry as a new one would be is reused by the next prepare, by a rename; one
    /// that was changed (here, its mode) is deleted.
    #[tokio::test]
    async fn an_emptied_entry_is_reused_and_a_changed_one_is_not() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let sn = native(dir.path());
        let none = std::collections::HashMap::new;
        let first = sn.prepare("a", "", none()).await.unwrap();
        let inode = std::fs::metadata(&first[0].source).unwrap().ino();
        sn.remove("a").await.unwrap();
        assert_eq!(entries(dir.path()), ["spare-0"]);
        let second = sn.prepare("b", "", none()).await.unwrap();
        let meta = std::fs::metadata(&second[0].source).unwrap();
        assert_eq!(meta.ino(), inode, "the spare was not taken");
        assert_eq!(meta.mode() & 0o7777, 0o755);
        assert!(std::fs::read_dir(&second[0].source)
            .unwrap()
            .next()
            .is_none());
        assert_eq!(entries(dir.path()), ["2"]);

        // Used: it has a file, or another mode. Neither is kept.
        std::fs::write(std::path::Path::new(&second[0].source).join("f"), "x").unwrap();
        sn.remove("b").await.unwrap();
        let third = sn.prepare("c", "", none()).await.unwrap();
        std::fs::set_permissions(&third[0].source, std::fs::Permissions::from_mode(0o700)).unwrap();
        sn.remove("c").await.unwrap();
        assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
        let fourth = sn.prepare("d", "", none()).await.unwrap();
        let meta = std::fs::metadata(&fourth[0].source).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o755);
        assert!(std::fs::read_dir(&fourth[0].source)
            .unwrap()
            .next()
            .is_none());

        // A restart forgets spares: Cleanup deletes them.
        sn.remove("d").await.unwrap();
        assert_eq!(entries(dir.path()).len(), 1);
        drop(sn);
        let _reopened = native(dir.path());
        assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
    }
}
