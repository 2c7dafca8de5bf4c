//! A snapshotter seen through the metadata store, as containerd's metadata `snapshotter`:
//! keys are per namespace, the backend gets keys of its own (`<ns>/<seq>/<key>`), labels live
//! in the records (the backend sees only the `containerd.io/snapshot/` ones it keeps itself),
//! new snapshots go under the call's lease, and Remove forgets the record: the collector
//! removes the backend's snapshot once nothing keeps it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::Target;
use crated_errdefs::{HasKind, Kind as ErrKind};
use crated_metadata::{MetadataError, MetadataStore, SnapshotRecord};
use crated_snapshots::{
    filter_infos, Info, Mount, SnapshotError, Snapshotter, Usage, INHERITED_LABEL_PREFIX,
    LABEL_SNAPSHOT_REF,
};

#[derive(Debug, thiserror::Error)]
pub enum NamespacedError {
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("snapshot metadata task failed: {0}")]
    Task(String),
}

impl HasKind for NamespacedError {
    fn kind(&self) -> ErrKind {
        match self {
            NamespacedError::Metadata(e) => e.kind(),
            NamespacedError::Snapshot(e) => e.kind(),
            NamespacedError::Task(_) => ErrKind::Unknown,
        }
    }
}

type Result<T> = std::result::Result<T, NamespacedError>;

pub struct NamespacedSnapshotter {
    db: Arc<MetadataStore>,
    name: String,
    backend: Arc<dyn Snapshotter>,
    /// Makes backend keys unique: started from the clock, so a restart does not reuse one.
    seq: AtomicU64,
}

/// Labels the backend keeps for itself.
fn inherited(labels: &HashMap<String, String>) -> HashMap<String, String> {
    labels
        .iter()
        .filter(|(k, _)| k.starts_with(INHERITED_LABEL_PREFIX) || k.as_str() == LABEL_SNAPSHOT_REF)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn validate_labels(labels: &HashMap<String, String>) -> Result<()> {
    for (k, v) in labels {
        crated_metadata::validate::label(k, v)?;
    }
    Ok(())
}

impl NamespacedSnapshotter {
    pub fn new(db: Arc<MetadataStore>, name: &str, backend: Arc<dyn Snapshotter>) -> Self {
        NamespacedSnapshotter {
            db,
            name: name.to_owned(),
            backend,
            seq: AtomicU64::new(crated_metadata::now_nanos()),
        }
    }

    fn backend_key(&self, ns: &str, key: &str) -> String {
        format!("{ns}/{}/{key}", self.seq.fetch_add(1, Ordering::Relaxed))
    }

    /// Runs record work for this snapshotter in namespace `ns` as a short store transaction
    /// ([`crated_snapshots::run_transaction`]).
    async fn records<T: Send + 'static>(
        &self,
        ns: &str,
        f: impl FnOnce(&MetadataStore, &str, &str) -> std::result::Result<T, MetadataError>
            + Send
            + 'static,
    ) -> Result<T> {
        let (db, ns, sn) = (self.db.clone(), ns.to_owned(), self.name.clone());
        crated_snapshots::run_transaction(move || f(&db, &ns, &sn))
            .await
            .map_err(|e| NamespacedError::Task(e.to_string()))?
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

#[tonic::async_trait]
impl Target for NamespacedSnapshotter {
    async fn stat(&self, ns: &str, key: &str) -> Result<Info> {
        let record = self.record(ns, key).await?;
        let backend = self.backend.stat(&record.name).await?;
        Ok(Self::merge(key, &record, backend))
    }

    async fn create(
        &self,
        ns: &str,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
        lease: Option<String>,
        view: bool,
    ) -> Result<Vec<Mount>> {
        validate_labels(&labels)?;
        let (k, p) = (key.to_owned(), parent.to_owned());
        let backend_parent = self
            .records(ns, move |db, ns, sn| db.snapshot_check_new(ns, sn, &k, &p))
            .await?;
        let backend_key = self.backend_key(ns, key);
        // Held from the backend's create until the record exists, so a collection in between
        // cannot take the new snapshot for garbage.
        let _writing = self.db.gc_lock().read().await;
        let backend_labels = inherited(&labels);
        let mounts = if view {
            self.backend
                .view(&backend_key, &backend_parent, backend_labels)
                .await?
        } else {
            self.backend
                .prepare(&backend_key, &backend_parent, backend_labels)
                .await?
        };
        let now = crated_metadata::now_nanos();
        let record = SnapshotRecord {
            name: backend_key,
            parent: parent.to_owned(),
            labels: kept(labels),
            created: now,
            updated: now,
            children: Vec::new(),
        };
        let k = key.to_owned();
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

    async fn mounts(&self, ns: &str, key: &str) -> Result<Vec<Mount>> {
        let record = self.record(ns, key).await?;
        Ok(self.backend.mounts(&record.name).await?)
    }

    async fn commit(
        &self,
        ns: &str,
        name: &str,
        key: &str,
        onto: &str,
        labels: HashMap<String, String>,
        lease: Option<String>,
    ) -> Result<()> {
        validate_labels(&labels)?;
        let (nm, k) = (name.to_owned(), key.to_owned());
        let active = self
            .records(ns, move |db, ns, sn| {
                db.snapshot_check_commit(ns, sn, &nm, &k)
            })
            .await?;
        let backend_name = self.backend_key(ns, name);
        let backend_onto = if onto.is_empty() || onto == active.parent {
            None
        } else if !active.parent.is_empty() {
            return Err(SnapshotError::InvalidArgument(format!(
                "cannot change parent of active snapshot {key} on commit"
            ))
            .into());
        } else {
            Some(self.record(ns, onto).await?.name)
        };
        let _writing = self.db.gc_lock().read().await;
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
            parent: if backend_onto.is_some() {
                onto.to_owned()
            } else {
                String::new()
            },
            labels: kept(labels),
            created: 0,
            updated: 0,
            children: Vec::new(),
        };
        let (nm, k) = (name.to_owned(), key.to_owned());
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

    fn can_rebase(&self) -> bool {
        self.backend.can_rebase()
    }

    async fn remove(&self, ns: &str, key: &str) -> Result<()> {
        let k = key.to_owned();
        self.records(ns, move |db, ns, sn| db.snapshot_remove(ns, sn, &k))
            .await
    }

    async fn usage(&self, ns: &str, key: &str) -> Result<Usage> {
        let record = self.record(ns, key).await?;
        Ok(self.backend.usage(&record.name).await?)
    }

    /// containerd's Update: labels by field paths, in the record; those the backend keeps
    /// are passed on to it.
    async fn update(&self, ns: &str, info: Info, paths: &[String]) -> Result<Info> {
        if info.name.is_empty() {
            return Err(
                SnapshotError::InvalidArgument("snapshot name must not be empty".into()).into(),
            );
        }
        validate_labels(&info.labels)?;
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

    /// Every snapshot of the namespace that a filter matches; records whose backend snapshot
    /// is gone are left out.
    async fn walk(&self, ns: &str, filters: &[String]) -> Result<Vec<Info>> {
        let records = self
            .records(ns, |db, ns, sn| db.snapshot_list(ns, sn))
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
        sn.create("ns", "base-key", "", no_labels(), None, false)
            .await
            .unwrap();
        sn.commit("ns", "base", "base-key", "", no_labels(), None)
            .await
            .unwrap();
        sn.create("ns", "top-key", "", no_labels(), None, false)
            .await
            .unwrap();
        // Keys and parents are looked up in the caller's namespace only.
        let elsewhere = sn
            .commit("other", "top", "top-key", "base", no_labels(), None)
            .await;
        assert_eq!(elsewhere.unwrap_err().kind(), ErrKind::NotFound);
        let missing = sn
            .commit("ns", "top", "top-key", "nope", no_labels(), None)
            .await;
        assert_eq!(missing.unwrap_err().kind(), ErrKind::NotFound);
        sn.commit("ns", "top", "top-key", "base", no_labels(), None)
            .await
            .unwrap();
        assert_eq!(sn.stat("ns", "top").await.unwrap().parent, "base");
        // The backend stacked it too: a view of it has both layers below.
        let view = sn
            .create("ns", "v", "top", no_labels(), None, true)
            .await
            .unwrap();
        let lower = view[0]
            .options
            .iter()
            .find_map(|o| o.strip_prefix("lowerdir="));
        assert_eq!(lower.map(|l| l.split(':').count()), Some(2), "{view:?}");
        // A parent with a child stays.
        let removal = sn.remove("ns", "base").await;
        assert_eq!(removal.unwrap_err().kind(), ErrKind::FailedPrecondition);
        // A snapshot prepared on a parent cannot be moved to another.
        sn.create("ns", "child-key", "top", no_labels(), None, false)
            .await
            .unwrap();
        let moved = sn
            .commit("ns", "child", "child-key", "base", no_labels(), None)
            .await;
        assert_eq!(moved.unwrap_err().kind(), ErrKind::InvalidArgument);
    }
}
