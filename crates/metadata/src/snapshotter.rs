//! Snapshotters as a call reaches them, as containerd's metadata `snapshotter`
//! (core/metadata/snapshot.go). [`ScopedSnapshotter`] is the per-call API: the
//! [`Snapshotter`] API plus the [`Scope`] of the call. [`NamespacedSnapshotter`] keeps keys,
//! parents and labels per namespace in the metadata store, with backend keys of its own
//! (`<ns>/<seq>/<key>`); [`Unscoped`] serves a snapshotter as it is.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crated_errdefs::{HasKind, Kind as ErrKind};
use crated_snapshots::{
    filter_infos, Info, Kind, Mount, SnapshotError, Snapshotter, Usage, INHERITED_LABEL_PREFIX,
    LABEL_DIFFER_ONLY, LABEL_SNAPSHOT_REF,
};
use crated_wal::work::{run_store_work, Work};

use crate::{
    Backend, LeaseResource, MetadataError, MetadataStore, NewSnapshotCheck, SnapshotRecord,
};

#[derive(Debug, thiserror::Error)]
pub enum ScopedSnapshotError {
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("snapshot metadata task failed: {0}")]
    Task(String),
}

impl HasKind for ScopedSnapshotError {
    fn kind(&self) -> ErrKind {
        match self {
            ScopedSnapshotError::Metadata(e) => e.kind(),
            ScopedSnapshotError::Snapshot(e) => e.kind(),
            ScopedSnapshotError::Task(_) => ErrKind::Unknown,
        }
    }
}

type Result<T> = std::result::Result<T, ScopedSnapshotError>;

/// Who a call is for: its namespace, and the lease new snapshots go under.
#[derive(Debug, Clone, Copy, Default)]
pub struct Scope<'a> {
    pub namespace: &'a str,
    pub lease: Option<&'a str>,
}

impl<'a> Scope<'a> {
    pub fn new(namespace: &'a str, lease: Option<&'a str>) -> Self {
        Scope { namespace, lease }
    }
}

/// A snapshotter's API for one call's [`Scope`]; each method is the [`Snapshotter`] one.
#[async_trait::async_trait]
pub trait ScopedSnapshotter: Send + Sync {
    async fn stat(&self, scope: Scope<'_>, key: &str) -> Result<Info>;
    async fn update(&self, scope: Scope<'_>, info: Info, paths: &[String]) -> Result<Info>;
    async fn usage(&self, scope: Scope<'_>, key: &str) -> Result<Usage>;
    async fn mounts(&self, scope: Scope<'_>, key: &str) -> Result<Vec<Mount>>;
    async fn prepare(
        &self,
        scope: Scope<'_>,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>>;
    async fn view(
        &self,
        scope: Scope<'_>,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>>;
    async fn commit(
        &self,
        scope: Scope<'_>,
        name: &str,
        key: &str,
        labels: HashMap<String, String>,
    ) -> Result<()>;
    /// Commits `key`, prepared without a parent, as `name` on top of the committed `parent`
    /// (only where [`ScopedSnapshotter::can_rebase`]).
    async fn commit_onto(
        &self,
        scope: Scope<'_>,
        name: &str,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<()>;
    /// The snapshotter's `rebase` capability.
    fn can_rebase(&self) -> bool;
    async fn remove(&self, scope: Scope<'_>, key: &str) -> Result<()>;
    async fn walk(&self, scope: Scope<'_>, filters: &[String]) -> Result<Vec<Info>>;
    async fn cleanup(&self) -> Result<()>;
}

/// A snapshotter served as it is: keys are the caller's, the scope is ignored. This is what a
/// proxy snapshotter of crated or containerd talks to.
pub struct Unscoped(pub Arc<dyn Snapshotter>);

#[async_trait::async_trait]
impl ScopedSnapshotter for Unscoped {
    async fn stat(&self, _: Scope<'_>, key: &str) -> Result<Info> {
        Ok(self.0.stat(key).await?)
    }
    async fn update(&self, _: Scope<'_>, info: Info, paths: &[String]) -> Result<Info> {
        Ok(self.0.update(info, paths).await?)
    }
    async fn usage(&self, _: Scope<'_>, key: &str) -> Result<Usage> {
        Ok(self.0.usage(key).await?)
    }
    async fn mounts(&self, _: Scope<'_>, key: &str) -> Result<Vec<Mount>> {
        Ok(self.0.mounts(key).await?)
    }
    async fn prepare(
        &self,
        _: Scope<'_>,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>> {
        Ok(self.0.prepare(key, parent, labels).await?)
    }
    async fn view(
        &self,
        _: Scope<'_>,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>> {
        Ok(self.0.view(key, parent, labels).await?)
    }
    async fn commit(
        &self,
        _: Scope<'_>,
        name: &str,
        key: &str,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        Ok(self.0.commit(name, key, labels).await?)
    }
    async fn commit_onto(
        &self,
        _: Scope<'_>,
        name: &str,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        Ok(self.0.commit_onto(name, key, parent, labels).await?)
    }
    fn can_rebase(&self) -> bool {
        self.0.can_rebase()
    }
    async fn remove(&self, _: Scope<'_>, key: &str) -> Result<()> {
        Ok(self.0.remove(key).await?)
    }
    async fn walk(&self, _: Scope<'_>, filters: &[String]) -> Result<Vec<Info>> {
        Ok(self.0.walk(filters).await?)
    }
    async fn cleanup(&self) -> Result<()> {
        Ok(self.0.cleanup().await?)
    }
}

/// A snapshotter seen through the metadata store. Labels live in the records (the backend sees
/// only the `containerd.io/snapshot/` ones it keeps itself), new snapshots go under the call's
/// lease, and Remove forgets the record: the collector removes the backend's snapshot once
/// nothing keeps it.
pub struct NamespacedSnapshotter {
    db: Arc<MetadataStore>,
    name: String,
    /// This snapshotter as the collector sweeps it.
    sweep: Backend,
    backend: Arc<dyn Snapshotter>,
}

/// The next backend key number. One counter for the process, so that two instances over one
/// backend never make the same key; it starts from the clock, so a restart does not reuse one.
fn next_seq() -> u64 {
    static SEQ: OnceLock<AtomicU64> = OnceLock::new();
    SEQ.get_or_init(|| AtomicU64::new(crate::now_nanos()))
        .fetch_add(1, Ordering::Relaxed)
}

/// Labels the backend keeps for itself.
fn inherited(labels: &HashMap<String, String>) -> HashMap<String, String> {
    labels
        .iter()
        .filter(|(k, _)| {
            k.starts_with(INHERITED_LABEL_PREFIX)
                || k.as_str() == LABEL_SNAPSHOT_REF
                || k.as_str() == LABEL_DIFFER_ONLY
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// A key or name a snapshot is made under: containerd's store refuses an empty one.
fn require_key(what: &str, key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(
            MetadataError::InvalidArgument(format!("snapshot {what} must not be empty")).into(),
        );
    }
    Ok(())
}

fn validate_labels(labels: &HashMap<String, String>) -> Result<()> {
    for (k, v) in labels {
        crate::validate::label(k, v)?;
    }
    Ok(())
}

impl NamespacedSnapshotter {
    pub fn new(db: Arc<MetadataStore>, name: &str, backend: Arc<dyn Snapshotter>) -> Self {
        NamespacedSnapshotter {
            db,
            name: name.to_owned(),
            sweep: Backend::Snapshotter(name.to_owned()),
            backend,
        }
    }

    fn backend_key(&self, ns: &str, key: &str) -> String {
        format!("{ns}/{}/{key}", next_seq())
    }

    /// Runs record work on a few records of this snapshotter in namespace `ns`, on this
    /// thread while the store's commits are short (see [`MetadataStore::commits_are_short`]).
    async fn records<T: Send + 'static>(
        &self,
        ns: &str,
        f: impl FnOnce(&MetadataStore, &str, &str) -> std::result::Result<T, MetadataError>
            + Send
            + 'static,
    ) -> Result<T> {
        self.records_where(Work::Short, ns, f).await
    }

    /// Runs record work for this snapshotter in namespace `ns`, on this thread when it is
    /// short (a few records, not all of them) and so are the store's commits now.
    async fn records_where<T: Send + 'static>(
        &self,
        work: Work,
        ns: &str,
        f: impl FnOnce(&MetadataStore, &str, &str) -> std::result::Result<T, MetadataError>
            + Send
            + 'static,
    ) -> Result<T> {
        let work = match work {
            Work::Short if self.db.commits_are_short() => Work::Short,
            _ => Work::Long,
        };
        let (db, ns, sn) = (self.db.clone(), ns.to_owned(), self.name.clone());
        run_store_work(work, move || f(&db, &ns, &sn))
            .await
            .map_err(|e| ScopedSnapshotError::Task(e.to_string()))?
            .map_err(Into::into)
    }

    async fn record(&self, ns: &str, key: &str) -> Result<SnapshotRecord> {
        let key = key.to_owned();
        self.records(ns, move |db, ns, sn| db.snapshot_get(ns, sn, &key))
            .await
    }

    /// The backend's info with the record's name, parent, times and labels over it.
    fn merge(key: &str, record: &SnapshotRecord, backend: Info) -> Info {
        let mut labels = backend.labels;
        labels.extend(record.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        Info {
            name: key.to_owned(),
            parent: record.parent.clone(),
            kind: backend.kind,
            labels,
            created: record.created,
            updated: record.updated,
        }
    }

    /// Records as `target` the committed snapshot the backend made for it (labelled
    /// `containerd.io/snapshot.ref` = `target`, on `backend_parent`), as containerd does for
    /// remote snapshotters; the caller is told it exists already.
    async fn adopt(
        &self,
        scope: Scope<'_>,
        target: &str,
        parent: &str,
        backend_parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>> {
        let filter =
            format!("labels.\"{LABEL_SNAPSHOT_REF}\"=={target},parent==\"{backend_parent}\"");
        // Checked again here: a backend may not apply filters.
        let found = self
            .backend
            .walk(&[filter])
            .await?
            .into_iter()
            .find(|i| {
                i.kind == Kind::Committed
                    && i.parent == backend_parent
                    && i.labels.get(LABEL_SNAPSHOT_REF).map(String::as_str) == Some(target)
            })
            .ok_or_else(|| {
                SnapshotError::NotFound(format!("target snapshot \"{target}\" in backend"))
            })?;
        let mut kept_labels = kept(labels);
        for (k, v) in found.labels {
            kept_labels.entry(k).or_insert(v);
        }
        let record = SnapshotRecord {
            name: found.name,
            parent: parent.to_owned(),
            labels: kept_labels,
            created: found.created,
            updated: found.updated,
            children: Vec::new(),
        };
        let (t, lease) = (target.to_owned(), scope.lease.map(str::to_owned));
        match self
            .records(scope.namespace, move |db, ns, sn| {
                db.snapshot_create(ns, sn, &t, &record, lease.as_deref())
            })
            .await
        {
            Ok(()) => {}
            Err(e) if e.kind() == ErrKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        Err(
            SnapshotError::AlreadyExists(format!("target snapshot \"{target}\" from snapshotter"))
                .into(),
        )
    }

    /// Prepare or View: a record, and the backend's snapshot under a key of its own.
    async fn create(
        &self,
        scope: Scope<'_>,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
        view: bool,
    ) -> Result<Vec<Mount>> {
        require_key("key", key)?;
        validate_labels(&labels)?;
        let ns = scope.namespace;
        let target = labels.get(LABEL_SNAPSHOT_REF).cloned().unwrap_or_default();
        let (k, p, t) = (key.to_owned(), parent.to_owned(), target.clone());
        let checked = self
            .records(ns, move |db, ns, sn| {
                db.snapshot_check_new(ns, sn, &k, &p, &t)
            })
            .await?;
        let backend_parent = match checked {
            NewSnapshotCheck::Free(backend_parent) => backend_parent,
            NewSnapshotCheck::Exists { key, target } => {
                // The caller's lease keeps what it found, as it would what it made.
                if let Some(lease) = scope.lease.map(str::to_owned) {
                    let resource = LeaseResource {
                        resource_type: crate::snapshot_resource(&self.name),
                        id: key.clone(),
                    };
                    self.records(ns, move |db, ns, _| {
                        db.lease_add_resource(ns, &lease, &resource)
                    })
                    .await?;
                }
                let what = if target {
                    format!("target snapshot \"{key}\"")
                } else {
                    format!("snapshot {key}")
                };
                return Err(SnapshotError::AlreadyExists(what).into());
            }
        };
        let backend_key = self.backend_key(ns, key);
        // Held from the backend's create until the record exists, so a collection in between
        // cannot take the new snapshot for garbage.
        let _writing = self.db.writing_to(&self.sweep).await;
        let backend_labels = inherited(&labels);
        let made = if view {
            self.backend
                .view(&backend_key, &backend_parent, backend_labels)
                .await
        } else {
            self.backend
                .prepare(&backend_key, &backend_parent, backend_labels)
                .await
        };
        let mounts = match made {
            Ok(mounts) => mounts,
            // A remote snapshotter (stargz) answers so when it made the target itself.
            Err(e) if e.kind() == ErrKind::AlreadyExists => {
                if target.is_empty() {
                    return Err(SnapshotError::Other {
                        kind: ErrKind::Unknown,
                        message: format!("unexpected error from snapshotter: {e}"),
                    }
                    .into());
                }
                return self
                    .adopt(scope, &target, parent, &backend_parent, labels)
                    .await;
            }
            Err(e) => return Err(e.into()),
        };
        let now = crate::now_nanos();
        let record = SnapshotRecord {
            name: backend_key,
            parent: parent.to_owned(),
            labels: kept(labels),
            created: now,
            updated: now,
            children: Vec::new(),
        };
        let (k, lease) = (key.to_owned(), scope.lease.map(str::to_owned));
        let recorded = self
            .records(ns, move |db, ns, sn| {
                db.snapshot_create(ns, sn, &k, &record, lease.as_deref())
            })
            .await;
        if recorded.is_err() {
            // The backend's snapshot has no record: the next collection removes it.
            self.db.mark_backends_dirty();
        }
        recorded.map(|()| mounts)
    }

    /// Commit, onto `onto` when it is given and is not the snapshot's parent already.
    async fn commit_as(
        &self,
        scope: Scope<'_>,
        name: &str,
        key: &str,
        onto: Option<&str>,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        require_key("name", name)?;
        validate_labels(&labels)?;
        let ns = scope.namespace;
        let (nm, k) = (name.to_owned(), key.to_owned());
        let active = self
            .records(ns, move |db, ns, sn| {
                db.snapshot_check_commit(ns, sn, &nm, &k)
            })
            .await?;
        let backend_name = self.backend_key(ns, name);
        let onto = onto.filter(|p| !p.is_empty() && *p != active.parent);
        let backend_onto = match onto {
            None => None,
            Some(_) if !active.parent.is_empty() => {
                return Err(SnapshotError::InvalidArgument(format!(
                    "cannot change parent of active snapshot {key} on commit"
                ))
                .into());
            }
            Some(onto) => Some(self.record(ns, onto).await?.name),
        };
        let _writing = self.db.writing_to(&self.sweep).await;
        match &backend_onto {
            None => {
                self.backend
                    .commit(&backend_name, &active.name, inherited(&labels))
                    .await?
            }
            Some(parent) => {
                self.backend
                    .commit_onto(&backend_name, &active.name, parent, inherited(&labels))
                    .await?
            }
        }
        // The store sets the times, and the parent unless this is a rebase.
        let committed = SnapshotRecord {
            name: backend_name,
            parent: onto.unwrap_or_default().to_owned(),
            labels: kept(labels),
            created: 0,
            updated: 0,
            children: Vec::new(),
        };
        let (nm, k, lease) = (
            name.to_owned(),
            key.to_owned(),
            scope.lease.map(str::to_owned),
        );
        let recorded = self
            .records(ns, move |db, ns, sn| {
                db.snapshot_commit(ns, sn, &nm, &k, committed, lease.as_deref())
            })
            .await;
        if recorded.is_err() {
            self.db.mark_backends_dirty();
        }
        recorded.map(|_| ())
    }
}

/// Labels as records keep them: an empty value is no label.
fn kept(labels: HashMap<String, String>) -> BTreeMap<String, String> {
    labels.into_iter().filter(|(_, v)| !v.is_empty()).collect()
}

/// Whether an Update field path names labels the backend keeps.
fn backend_path(path: &str) -> bool {
    path == "labels"
        || path
            .strip_prefix("labels.")
            .is_some_and(|l| l.starts_with(INHERITED_LABEL_PREFIX) || l == LABEL_SNAPSHOT_REF)
}

#[async_trait::async_trait]
impl ScopedSnapshotter for NamespacedSnapshotter {
    async fn stat(&self, scope: Scope<'_>, key: &str) -> Result<Info> {
        let record = self.record(scope.namespace, key).await?;
        let backend = self.backend.stat(&record.name).await?;
        Ok(Self::merge(key, &record, backend))
    }

    /// containerd's Update: labels by field paths, in the record; those the backend keeps
    /// are passed on to it.
    async fn update(&self, scope: Scope<'_>, info: Info, paths: &[String]) -> Result<Info> {
        if info.name.is_empty() {
            return Err(
                SnapshotError::InvalidArgument("snapshot name must not be empty".into()).into(),
            );
        }
        validate_labels(&info.labels)?;
        let ns = scope.namespace;
        let record = self.record(ns, &info.name).await?;
        let backend_paths: Vec<String> =
            paths.iter().filter(|p| backend_path(p)).cloned().collect();
        let mut backend_info = None;
        if paths.is_empty() || !backend_paths.is_empty() {
            let mut forwarded = info.clone();
            forwarded.name = record.name.clone();
            forwarded.labels = inherited(&info.labels);
            backend_info = Some(self.backend.update(forwarded, &backend_paths).await?);
        }
        let labels: BTreeMap<String, String> = info.labels.into_iter().collect();
        let (k, p) = (info.name.clone(), paths.to_vec());
        let updated = self
            .records(ns, move |db, ns, sn| {
                db.snapshot_update(ns, sn, &k, &labels, &p)
            })
            .await?;
        let backend = match backend_info {
            Some(b) => b,
            None => self.backend.stat(&updated.name).await?,
        };
        Ok(Self::merge(&info.name, &updated, backend))
    }

    async fn usage(&self, scope: Scope<'_>, key: &str) -> Result<Usage> {
        let record = self.record(scope.namespace, key).await?;
        Ok(self.backend.usage(&record.name).await?)
    }

    async fn mounts(&self, scope: Scope<'_>, key: &str) -> Result<Vec<Mount>> {
        let record = self.record(scope.namespace, key).await?;
        Ok(self.backend.mounts(&record.name).await?)
    }

    async fn prepare(
        &self,
        scope: Scope<'_>,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>> {
        self.create(scope, key, parent, labels, false).await
    }

    async fn view(
        &self,
        scope: Scope<'_>,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>> {
        self.create(scope, key, parent, labels, true).await
    }

    async fn commit(
        &self,
        scope: Scope<'_>,
        name: &str,
        key: &str,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        self.commit_as(scope, name, key, None, labels).await
    }

    async fn commit_onto(
        &self,
        scope: Scope<'_>,
        name: &str,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        self.commit_as(scope, name, key, Some(parent), labels).await
    }

    fn can_rebase(&self) -> bool {
        self.backend.can_rebase()
    }

    async fn remove(&self, scope: Scope<'_>, key: &str) -> Result<()> {
        let k = key.to_owned();
        self.records(scope.namespace, move |db, ns, sn| {
            db.snapshot_remove(ns, sn, &k)
        })
        .await
    }

    /// Every snapshot of the namespace that a filter matches; records whose backend snapshot
    /// is gone are left out.
    async fn walk(&self, scope: Scope<'_>, filters: &[String]) -> Result<Vec<Info>> {
        let records = self
            .records_where(Work::Long, scope.namespace, |db, ns, sn| {
                db.snapshot_list(ns, sn)
            })
            .await?;
        let mut infos = Vec::with_capacity(records.len());
        for (key, record) in records {
            match self.backend.stat(&record.name).await {
                Ok(b) => infos.push(Self::merge(&key, &record, b)),
                Err(e) if e.kind() == ErrKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(filter_infos(infos, filters)?)
    }

    async fn cleanup(&self) -> Result<()> {
        Ok(self.backend.cleanup().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crated_snapshots::overlayfs::{Overlay, OverlayConfig};
    use crated_snapshots::LocalSnapshotter;

    #[tokio::test]
    async fn a_rebased_commit_records_its_new_parent() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(MetadataStore::open(&dir.path().join("meta.db")).unwrap());
        let root = dir.path().join("overlayfs");
        std::fs::create_dir_all(&root).unwrap();
        let overlay = Overlay::new(&root, &OverlayConfig::default()).unwrap();
        let backend: Arc<dyn Snapshotter> =
            Arc::new(LocalSnapshotter::open(&root, overlay).unwrap());
        if !backend.can_rebase() {
            eprintln!("skipping: overlay whiteouts cannot be made here (mknod needs root)");
            return;
        }
        let sn = NamespacedSnapshotter::new(db, "overlayfs", backend);
        assert!(sn.can_rebase());
        let no_labels = HashMap::new;
        sn.prepare(Scope::new("ns", None), "base-key", "", no_labels())
            .await
            .unwrap();
        sn.commit(Scope::new("ns", None), "base", "base-key", no_labels())
            .await
            .unwrap();
        sn.prepare(Scope::new("ns", None), "top-key", "", no_labels())
            .await
            .unwrap();
        // Keys and parents are looked up in the caller's namespace only.
        let elsewhere = sn
            .commit_onto(
                Scope::new("other", None),
                "top",
                "top-key",
                "base",
                no_labels(),
            )
            .await;
        assert_eq!(elsewhere.unwrap_err().kind(), ErrKind::NotFound);
        let missing = sn
            .commit_onto(
                Scope::new("ns", None),
                "top",
                "top-key",
                "nope",
                no_labels(),
            )
            .await;
        assert_eq!(missing.unwrap_err().kind(), ErrKind::NotFound);
        sn.commit_onto(
            Scope::new("ns", None),
            "top",
            "top-key",
            "base",
            no_labels(),
        )
        .await
        .unwrap();
        assert_eq!(
            sn.stat(Scope::new("ns", None), "top").await.unwrap().parent,
            "base"
        );
        // The backend stacked it too: a view of it has both layers below.
        let view = sn
            .view(Scope::new("ns", None), "v", "top", no_labels())
            .await
            .unwrap();
        let lower = view[0]
            .options
            .iter()
            .find_map(|o| o.strip_prefix("lowerdir="));
        assert_eq!(lower.map(|l| l.split(':').count()), Some(2), "{view:?}");
        // A parent with a child stays.
        let removal = sn.remove(Scope::new("ns", None), "base").await;
        assert_eq!(removal.unwrap_err().kind(), ErrKind::FailedPrecondition);
        // A snapshot prepared on a parent cannot be moved to another.
        sn.prepare(Scope::new("ns", None), "child-key", "top", no_labels())
            .await
            .unwrap();
        let moved = sn
            .commit_onto(
                Scope::new("ns", None),
                "child",
                "child-key",
                "base",
                no_labels(),
            )
            .await;
        assert_eq!(moved.unwrap_err().kind(), ErrKind::InvalidArgument);
    }

    /// A backend acting as a remote snapshotter (stargz) does: asked to prepare with a
    /// `containerd.io/snapshot.ref` target, it makes and commits the target itself (as
    /// `remote/<target>`) and answers AlreadyExists. Everything else goes to a native store.
    struct RemoteLike {
        inner: Arc<dyn Snapshotter>,
        prepares: AtomicU64,
        /// Answer every prepare AlreadyExists without making anything (a misbehaving backend).
        claim_only: bool,
    }

    #[async_trait::async_trait]
    impl Snapshotter for RemoteLike {
        async fn stat(&self, key: &str) -> std::result::Result<Info, SnapshotError> {
            self.inner.stat(key).await
        }
        async fn update(
            &self,
            info: Info,
            paths: &[String],
        ) -> std::result::Result<Info, SnapshotError> {
            self.inner.update(info, paths).await
        }
        async fn usage(&self, key: &str) -> std::result::Result<Usage, SnapshotError> {
            self.inner.usage(key).await
        }
        async fn mounts(&self, key: &str) -> std::result::Result<Vec<Mount>, SnapshotError> {
            self.inner.mounts(key).await
        }
        async fn prepare(
            &self,
            key: &str,
            parent: &str,
            labels: HashMap<String, String>,
        ) -> std::result::Result<Vec<Mount>, SnapshotError> {
            self.prepares.fetch_add(1, Ordering::SeqCst);
            if self.claim_only {
                return Err(SnapshotError::AlreadyExists(format!("snapshot {key}")));
            }
            let Some(target) = labels.get(LABEL_SNAPSHOT_REF).cloned() else {
                return self.inner.prepare(key, parent, labels).await;
            };
            let name = format!("remote/{target}");
            if self.inner.stat(&name).await.is_err() {
                self.inner.prepare(key, parent, HashMap::new()).await?;
                let mut committed = labels.clone();
                committed.insert("remote-label".into(), "from-backend".into());
                self.inner.commit(&name, key, committed).await?;
            }
            Err(SnapshotError::AlreadyExists(format!(
                "target snapshot {target}"
            )))
        }
        async fn view(
            &self,
            key: &str,
            parent: &str,
            labels: HashMap<String, String>,
        ) -> std::result::Result<Vec<Mount>, SnapshotError> {
            self.inner.view(key, parent, labels).await
        }
        async fn commit(
            &self,
            name: &str,
            key: &str,
            labels: HashMap<String, String>,
        ) -> std::result::Result<(), SnapshotError> {
            self.inner.commit(name, key, labels).await
        }
        async fn remove(&self, key: &str) -> std::result::Result<(), SnapshotError> {
            self.inner.remove(key).await
        }
        async fn walk(&self, filters: &[String]) -> std::result::Result<Vec<Info>, SnapshotError> {
            self.inner.walk(filters).await
        }
        async fn cleanup(&self) -> std::result::Result<(), SnapshotError> {
            self.inner.cleanup().await
        }
        async fn close(&self) -> std::result::Result<(), SnapshotError> {
            self.inner.close().await
        }
    }

    /// In the daemon a snapshotter's store defers its commits to the journal the metadata
    /// store flushes: every call must end with that flush, or it would answer before its
    /// backend's changes are durable.
    #[tokio::test]
    async fn every_call_leaves_the_shared_journal_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let journal = crated_wal::Journal::open(&dir.path().join("stores.wal")).unwrap();
        let db =
            Arc::new(MetadataStore::open_in(&dir.path().join("meta.db"), Some(&journal)).unwrap());
        let root = dir.path().join("native");
        std::fs::create_dir_all(&root).unwrap();
        let native = crated_snapshots::native::Native::new(&root).unwrap();
        let backend: Arc<dyn Snapshotter> =
            Arc::new(LocalSnapshotter::open_in(&root, native, Some(&journal)).unwrap());
        let flushed = || !journal.unflushed().unwrap();
        // The backend alone defers: what the checks below rule out.
        backend.prepare("probe", "", HashMap::new()).await.unwrap();
        assert!(!flushed(), "the backend's commit was flushed by itself");
        journal.sync().unwrap();
        let sn = NamespacedSnapshotter::new(db, "native", backend);
        let no_labels = HashMap::new;
        sn.prepare(Scope::new("ns", None), "a", "", no_labels())
            .await
            .unwrap();
        assert!(flushed(), "prepare");
        sn.commit(Scope::new("ns", None), "c", "a", no_labels())
            .await
            .unwrap();
        assert!(flushed(), "commit");
        sn.view(Scope::new("ns", None), "v", "c", no_labels())
            .await
            .unwrap();
        assert!(flushed(), "view");
        let mut info = sn.stat(Scope::new("ns", None), "c").await.unwrap();
        info.labels
            .insert("containerd.io/snapshot/x".into(), "y".into());
        sn.update(Scope::new("ns", None), info, &[]).await.unwrap();
        assert!(flushed(), "update");
        sn.remove(Scope::new("ns", None), "v").await.unwrap();
        assert!(flushed(), "remove");
    }

    fn remote_like(
        dir: &std::path::Path,
        claim_only: bool,
    ) -> (Arc<MetadataStore>, NamespacedSnapshotter, Arc<RemoteLike>) {
        let db = Arc::new(MetadataStore::open(&dir.join("meta.db")).unwrap());
        let root = dir.join("native");
        std::fs::create_dir_all(&root).unwrap();
        let native = crated_snapshots::native::Native::new(&root).unwrap();
        let backend = Arc::new(RemoteLike {
            inner: Arc::new(LocalSnapshotter::open(&root, native).unwrap()),
            prepares: AtomicU64::new(0),
            claim_only,
        });
        let sn = NamespacedSnapshotter::new(db.clone(), "stargz", backend.clone());
        (db, sn, backend)
    }

    fn target_labels(target: &str) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_SNAPSHOT_REF.to_owned(), target.to_owned()),
            ("from-client".to_owned(), "yes".to_owned()),
        ])
    }

    #[tokio::test]
    async fn a_target_the_backend_made_is_recorded_and_reported_as_existing() {
        let dir = tempfile::tempdir().unwrap();
        let (db, sn, backend) = remote_like(dir.path(), false);
        db.lease_create(
            "a",
            &crate::Lease {
                id: "pull".into(),
                created_at: 1,
                labels: Default::default(),
            },
        )
        .unwrap();

        let err = sn
            .prepare(
                Scope::new("a", Some("pull")),
                "extract-1",
                "",
                target_labels("layer-1"),
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrKind::AlreadyExists);
        assert!(
            err.to_string()
                .contains("target snapshot \"layer-1\" from snapshotter"),
            "{err}"
        );
        // Recorded under the target's name, committed, with the client's and the backend's
        // labels, under the caller's lease; the key it asked for was never recorded.
        let info = sn.stat(Scope::new("a", None), "layer-1").await.unwrap();
        assert_eq!(info.kind, Kind::Committed);
        assert_eq!(info.labels["from-client"], "yes");
        assert_eq!(info.labels["remote-label"], "from-backend");
        assert_eq!(
            sn.record("a", "layer-1").await.unwrap().name,
            "remote/layer-1"
        );
        assert_eq!(
            sn.stat(Scope::new("a", None), "extract-1")
                .await
                .unwrap_err()
                .kind(),
            ErrKind::NotFound
        );
        let leased = db.lease_resources("a", "pull").unwrap();
        assert!(leased.iter().any(|r| r.id == "layer-1"), "{leased:?}");

        // Asked again: the record answers, the backend is not asked.
        let asked = backend.prepares.load(Ordering::SeqCst);
        let err = sn
            .prepare(
                Scope::new("a", None),
                "extract-2",
                "",
                target_labels("layer-1"),
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrKind::AlreadyExists);
        assert!(
            err.to_string().contains("target snapshot \"layer-1\""),
            "{err}"
        );
        assert_eq!(backend.prepares.load(Ordering::SeqCst), asked);

        // A layer on top, and the same target from another namespace: the backend's one
        // snapshot is recorded in both.
        let err = sn
            .prepare(
                Scope::new("a", None),
                "extract-3",
                "layer-1",
                target_labels("layer-2"),
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrKind::AlreadyExists);
        let top = sn.stat(Scope::new("a", None), "layer-2").await.unwrap();
        assert_eq!(
            (top.kind, top.parent.as_str()),
            (Kind::Committed, "layer-1")
        );
        let err = sn
            .prepare(
                Scope::new("b", None),
                "extract-1",
                "",
                target_labels("layer-1"),
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrKind::AlreadyExists);
        assert_eq!(
            sn.record("b", "layer-1").await.unwrap().name,
            "remote/layer-1"
        );
    }

    #[tokio::test]
    async fn a_backend_claiming_a_target_it_does_not_have_is_not_believed() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, sn, _backend) = remote_like(dir.path(), true);
        let err = sn
            .prepare(
                Scope::new("a", None),
                "extract-1",
                "",
                target_labels("layer-1"),
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrKind::NotFound);
        assert!(
            err.to_string()
                .contains("target snapshot \"layer-1\" in backend"),
            "{err}"
        );
        assert_eq!(
            sn.stat(Scope::new("a", None), "layer-1")
                .await
                .unwrap_err()
                .kind(),
            ErrKind::NotFound
        );
        // Without a target, AlreadyExists for a key the store had free is no answer at all.
        let err = sn
            .prepare(Scope::new("a", None), "plain", "", HashMap::new())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrKind::Unknown);
        assert!(
            err.to_string()
                .contains("unexpected error from snapshotter"),
            "{err}"
        );
    }
}
