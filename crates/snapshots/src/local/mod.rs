//! A snapshotter whose snapshots live on this host (`LocalSnapshotter`): the contract's
//! bookkeeping over the [`MetaStore`], with a [`Driver`] doing what differs between drivers.

mod driver;

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::Arc;

use crated_wal::work::{run_store_work, Work};

pub use driver::Driver;

use crate::storage::MetaStore;
use crate::{filter_infos, Info, Kind, Mount, SnapshotError, Snapshotter, Usage};

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
                .run_where(Work::Short, move |s| {
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
        self.run_where(Work::Long, f).await
    }

    /// Runs `f` as [`run_store_work`] does: on this thread if its filesystem work is
    /// [`Work::Short`] (bounded whatever the size of a tree) and the store's commits are short.
    async fn run_where<T, F>(&self, work: Work, f: F) -> Result<T, SnapshotError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner<D>) -> Result<T, SnapshotError> + Send + 'static,
    {
        let inner = self.inner.clone();
        let work = match work {
            Work::Short if inner.store.commits_are_short() => Work::Short,
            _ => Work::Long,
        };
        run_store_work(work, move || f(&inner))
            .await
            .map_err(|e| SnapshotError::Io {
                context: "snapshotter task".into(),
                source: io::Error::other(e.to_string()),
            })?
    }

    /// The work of creating a snapshot of `kind`, with or without a parent, as the driver
    /// makes it ([`Driver::creates_in_constant_time`]).
    fn create_work(&self, kind: Kind, has_parent: bool) -> Work {
        match self.inner.driver.creates_in_constant_time(kind, has_parent) {
            true => Work::Short,
            false => Work::Long,
        }
    }
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
        self.run_where(Work::Short, move |s| s.info(&key)).await
    }

    async fn update(&self, info: Info, field_paths: &[String]) -> Result<Info, SnapshotError> {
        let paths = field_paths.to_vec();
        self.run_where(Work::Short, move |s| {
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
        self.run_where(Work::Short, move |s| {
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
        let work = self.create_work(Kind::Active, !parent.is_empty());
        let (key, parent) = (key.to_owned(), parent.to_owned());
        self.run_where(work, move |s| s.create(Kind::Active, &key, &parent, labels))
            .await
    }

    async fn view(
        &self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        let work = self.create_work(Kind::View, !parent.is_empty());
        let (key, parent) = (key.to_owned(), parent.to_owned());
        self.run_where(work, move |s| s.create(Kind::View, &key, &parent, labels))
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

    async fn commit_onto(
        &self,
        name: &str,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), SnapshotError> {
        if !self.can_rebase() {
            return Err(crate::rebase_unsupported(key, parent));
        }
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
