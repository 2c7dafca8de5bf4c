//! One collection: mark and sweep in the metadata store, then the backends drop what no record
//! keeps. The metadata store's GC lock is held exclusively through its mark and sweep; each
//! backend's lock from then to the end of that backend's sweep, so nothing written into a
//! backend meanwhile can be taken for garbage, and writers into the others go on.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crated_content::{ContentError, ContentStore};
use crated_errdefs::{HasKind, Kind};
use crated_metadata::{Backend, MetadataStore};
use crated_snapshots::Snapshotter;

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("garbage collection: {0}")]
    Metadata(#[from] crated_metadata::MetadataError),
    #[error("garbage collection task failed: {0}")]
    Task(String),
    #[error("garbage collection failed")]
    Stopped,
}

impl crated_errdefs::HasKind for GcError {
    fn kind(&self) -> crated_errdefs::Kind {
        match self {
            GcError::Metadata(e) => e.kind(),
            GcError::Task(_) | GcError::Stopped => crated_errdefs::Kind::Unknown,
        }
    }
}

/// What a collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// Each removed thing, described (`content ns/sha256:..`, `blob sha256:..`, ...).
    pub removed: Vec<String>,
    /// Removals that failed; the pass went on.
    pub failed: Vec<String>,
    /// How long every writer into a backend was held off: the mark and sweep of the metadata
    /// store. A writer into one backend then waits for that backend's sweep only.
    pub lock_held: Duration,
    /// Marking and sweeping the metadata store, the wait for its lock left out: containerd's
    /// pause (its `MetaD`), by which `pause_threshold` spaces collections. The backends'
    /// sweep after it is not counted, as in containerd: counted, a collection that removes
    /// more spaces the next one further apart, which then has more to remove.
    #[serde(default)]
    pub pause: Duration,
    /// Mark, sweep and backend work together.
    pub elapsed: Duration,
    /// When the next lease or ingest expires (ns since the epoch).
    pub next_expiry: Option<u64>,
}

pub struct Collector {
    db: Arc<MetadataStore>,
    content: Arc<dyn ContentStore>,
    snapshotters: Vec<(String, Arc<dyn Snapshotter>)>,
}

impl Collector {
    pub fn new(
        db: Arc<MetadataStore>,
        content: Arc<dyn ContentStore>,
        snapshotters: Vec<(String, Arc<dyn Snapshotter>)>,
    ) -> Self {
        Collector {
            db,
            content,
            snapshotters,
        }
    }

    pub fn metadata(&self) -> &Arc<MetadataStore> {
        &self.db
    }

    pub async fn collect(&self) -> Result<Stats, GcError> {
        let started = Instant::now();
        let writers_held = self.db.gc_lock().write().await;
        let locked = Instant::now();
        let db = self.db.clone();
        let collection =
            tokio::task::spawn_blocking(move || db.collect_garbage(crated_metadata::now_nanos()))
                .await
                .map_err(|e| GcError::Task(e.to_string()))??;
        let mut stats = Stats {
            pause: locked.elapsed(),
            removed: collection.removed.iter().map(ToString::to_string).collect(),
            next_expiry: collection.next_expiry,
            ..Stats::default()
        };
        for r in &collection.removed {
            tracing::debug!("gc removed {r}");
        }
        // The backends are swept once after start (whatever a crash left), and whenever
        // records went: in this collection, or by a delete or abort since the last one.
        let records_removed = !collection.removed.is_empty();
        if !(self.db.take_backends_dirty() || records_removed) {
            stats.lock_held = locked.elapsed();
            stats.elapsed = started.elapsed();
            return Ok(stats);
        }
        // Every backend's lock is taken before writers are let back in (none can hold one
        // now: a writer takes the collection's lock first), so what the mark found live holds
        // through each backend's sweep, and writers into other backends go on meanwhile.
        let content_lock = self.db.backend_lock(&Backend::Content).write_owned().await;
        let mut snapshotter_locks = Vec::with_capacity(self.snapshotters.len());
        for (name, _) in &self.snapshotters {
            let lock = self.db.backend_lock(&Backend::Snapshotter(name.clone()));
            snapshotter_locks.push(lock.write_owned().await);
        }
        stats.lock_held = locked.elapsed();
        drop(writers_held);
        let content = async {
            let mut swept = Swept::default();
            self.sweep_content(&collection.live_blobs, &collection.live_ingests, &mut swept)
                .await;
            drop(content_lock);
            swept
        };
        let nothing = HashSet::new();
        let snapshotters =
            self.snapshotters
                .iter()
                .zip(snapshotter_locks)
                .map(|((name, snapshotter), lock)| {
                    let live = collection.live_snapshots.get(name).unwrap_or(&nothing);
                    async move {
                        let mut swept = Swept::default();
                        Self::sweep_snapshotter(name, snapshotter.as_ref(), live, &mut swept).await;
                        drop(lock);
                        swept
                    }
                });
        let (content, snapshots) = tokio::join!(content, futures::future::join_all(snapshotters));
        let mut failed = false;
        for swept in std::iter::once(content).chain(snapshots) {
            failed |= !swept.failed.is_empty();
            stats.removed.extend(swept.removed);
            stats.failed.extend(swept.failed);
        }
        if failed {
            self.db.mark_backends_dirty();
        }
        stats.elapsed = started.elapsed();
        Ok(stats)
    }

    /// Deletes every blob no namespace records and aborts every ingest no record keeps. One
    /// failing removal is logged and the sweep goes on.
    async fn sweep_content(
        &self,
        live_blobs: &HashSet<String>,
        live_ingests: &HashSet<String>,
        stats: &mut Swept,
    ) {
        match self.content.walk().await {
            Ok(blobs) => {
                for blob in blobs {
                    let digest = blob.digest.to_string();
                    if live_blobs.contains(&digest) {
                        continue;
                    }
                    match self.content.delete(&digest).await {
                        Ok(()) => stats.removed.push(format!("blob {digest}")),
                        Err(e) => {
                            tracing::warn!("gc: removing blob {digest}: {e}");
                            stats.failed.push(format!("blob {digest}: {e}"));
                            if unreachable(&e) {
                                return;
                            }
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!("gc: listing blobs: {e}");
                stats.failed.push(format!("listing blobs: {e}"));
            }
        }
        match self.content.list_statuses().await {
            Ok(ingests) => {
                for ingest in ingests {
                    if live_ingests.contains(&ingest.reference) {
                        continue;
                    }
                    match self.content.abort(&ingest.reference).await {
                        Ok(()) => stats
                            .removed
                            .push(format!("ingest data {}", ingest.reference)),
                        Err(e) => {
                            tracing::warn!("gc: aborting ingest {}: {e}", ingest.reference);
                            stats
                                .failed
                                .push(format!("ingest {}: {e}", ingest.reference));
                            if unreachable(&e) {
                                return;
                            }
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!("gc: listing ingests: {e}");
                stats.failed.push(format!("listing ingests: {e}"));
            }
        }
    }
}

impl Collector {
    /// Removes from `snapshotter` every snapshot no record keeps, children before their
    /// parents, then lets it clean up. One failing removal is logged and the sweep goes on.
    async fn sweep_snapshotter(
        name: &str,
        snapshotter: &dyn Snapshotter,
        live: &HashSet<String>,
        stats: &mut Swept,
    ) {
        let infos = match snapshotter.walk(&[]).await {
            Ok(infos) => infos,
            Err(e) => {
                tracing::warn!("gc: listing snapshots of {name}: {e}");
                stats
                    .failed
                    .push(format!("listing snapshots of {name}: {e}"));
                return;
            }
        };
        let mut children: HashMap<String, usize> = HashMap::new();
        for info in &infos {
            *children.entry(info.parent.clone()).or_default() += 1;
        }
        let mut garbage: Vec<_> = infos
            .into_iter()
            .filter(|i| !live.contains(&i.name))
            .collect();
        // Leaves first: each round removes what has no children left.
        let mut removed_any = false;
        loop {
            let (leaves, rest): (Vec<_>, Vec<_>) = garbage
                .into_iter()
                .partition(|i| children.get(&i.name).copied().unwrap_or(0) == 0);
            garbage = rest;
            if leaves.is_empty() {
                break;
            }
            let mut progress = false;
            let names: Vec<String> = leaves.iter().map(|i| i.name.clone()).collect();
            let results = snapshotter.remove_each(&names).await;
            for (info, result) in leaves.into_iter().zip(results) {
                match result {
                    Ok(()) => {
                        removed_any = true;
                        progress = true;
                        if let Some(n) = children.get_mut(&info.parent) {
                            *n -= 1;
                        }
                        stats.removed.push(format!("snapshot {name}/{}", info.name));
                    }
                    Err(e) => {
                        tracing::warn!("gc: removing snapshot {name}/{}: {e}", info.name);
                        stats
                            .failed
                            .push(format!("snapshot {name}/{}: {e}", info.name));
                    }
                }
            }
            if !progress {
                break;
            }
        }
        if removed_any {
            match snapshotter.cleanup().await {
                Ok(()) => {}
                Err(e) if e.kind() == Kind::NotImplemented => {}
                Err(e) => {
                    tracing::warn!("gc: cleaning up {name}: {e}");
                    stats.failed.push(format!("cleanup of {name}: {e}"));
                }
            }
        }
    }
}

/// What one backend's sweep removed, and what it failed to.
#[derive(Default)]
struct Swept {
    removed: Vec<String>,
    failed: Vec<String>,
}

/// A store that does not answer: the rest of the sweep waits for the next collection rather
/// than hold writers off through one deadline per item.
fn unreachable(e: &ContentError) -> bool {
    matches!(e.kind(), Kind::Unavailable | Kind::DeadlineExceeded)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use crated_snapshots::{Info, Kind, Mount, SnapshotError, Snapshotter, Usage};

    use super::Collector;

    /// How long the slow snapshotter's cleanup takes.
    const CLEANUP: Duration = Duration::from_millis(300);

    /// A snapshotter holding snapshots no record keeps, whose cleanup after a removal is slow.
    #[derive(Default)]
    struct SlowCleanup {
        names: Mutex<Vec<String>>,
        /// Told when a cleanup starts.
        cleaning: tokio::sync::Notify,
    }

    fn refused(what: &str) -> SnapshotError {
        SnapshotError::NotImplemented(format!("{what} (the collector does not call it)"))
    }

    #[async_trait::async_trait]
    impl Snapshotter for SlowCleanup {
        async fn stat(&self, _: &str) -> Result<Info, SnapshotError> {
            Err(refused("stat"))
        }
        async fn update(&self, _: Info, _: &[String]) -> Result<Info, SnapshotError> {
            Err(refused("update"))
        }
        async fn usage(&self, _: &str) -> Result<Usage, SnapshotError> {
            Err(refused("usage"))
        }
        async fn mounts(&self, _: &str) -> Result<Vec<Mount>, SnapshotError> {
            Err(refused("mounts"))
        }
        async fn prepare(
            &self,
            _: &str,
            _: &str,
            _: HashMap<String, String>,
        ) -> Result<Vec<Mount>, SnapshotError> {
            Err(refused("prepare"))
        }
        async fn view(
            &self,
            _: &str,
            _: &str,
            _: HashMap<String, String>,
        ) -> Result<Vec<Mount>, SnapshotError> {
            Err(refused("view"))
        }
        async fn commit(
            &self,
            _: &str,
            _: &str,
            _: HashMap<String, String>,
        ) -> Result<(), SnapshotError> {
            Err(refused("commit"))
        }
        async fn remove(&self, key: &str) -> Result<(), SnapshotError> {
            let mut names = self.names.lock().map_err(|_| refused("poisoned"))?;
            let before = names.len();
            names.retain(|n| n != key);
            match names.len() < before {
                true => Ok(()),
                false => Err(SnapshotError::NotFound(key.into())),
            }
        }
        async fn walk(&self, _: &[String]) -> Result<Vec<Info>, SnapshotError> {
            let names = self.names.lock().map_err(|_| refused("poisoned"))?;
            Ok(names
                .iter()
                .map(|name| Info {
                    name: name.clone(),
                    parent: String::new(),
                    kind: Kind::Active,
                    labels: HashMap::new(),
                    created: 0,
                    updated: 0,
                })
                .collect())
        }
        async fn cleanup(&self) -> Result<(), SnapshotError> {
            self.cleaning.notify_one();
            tokio::time::sleep(CLEANUP).await;
            Ok(())
        }
        async fn close(&self) -> Result<(), SnapshotError> {
            Ok(())
        }
    }

    /// A metadata store and a content store in `dir`, both empty, and a slow snapshotter
    /// holding one snapshot, `orphan`, that no record keeps.
    fn stores(
        dir: &std::path::Path,
    ) -> (
        Arc<crated_metadata::MetadataStore>,
        Arc<crated_content::LocalStore>,
        Arc<SlowCleanup>,
    ) {
        let db = Arc::new(crated_metadata::MetadataStore::open(&dir.join("meta.db")).unwrap());
        let content = Arc::new(crated_content::LocalStore::open(&dir.join("content")).unwrap());
        let slow = Arc::new(SlowCleanup::default());
        slow.names.lock().unwrap().push("orphan".into());
        db.mark_backends_dirty();
        (db, content, slow)
    }

    #[tokio::test]
    async fn the_pause_leaves_the_backends_sweep_out() {
        let dir = tempfile::tempdir().unwrap();
        let (db, content, slow) = stores(dir.path());
        let collector = Collector::new(db, content, vec![("slow".into(), slow.clone())]);

        let stats = collector.collect().await.unwrap();

        assert_eq!(stats.removed, vec!["snapshot slow/orphan".to_string()]);
        assert!(slow.names.lock().unwrap().is_empty());
        // The backend's sweep, slow cleanup included, is in the collection's time, but
        // neither in the pause that spaces collections nor in how long every writer was held.
        assert!(stats.elapsed >= CLEANUP, "{stats:?}");
        assert!(stats.lock_held < CLEANUP, "{stats:?}");
        assert!(stats.pause < CLEANUP, "{stats:?}");
        assert!(stats.pause <= stats.lock_held, "{stats:?}");
    }

    #[tokio::test]
    async fn a_backends_sweep_holds_off_only_its_own_writers() {
        use crated_metadata::Backend;
        let dir = tempfile::tempdir().unwrap();
        let (db, content, slow) = stores(dir.path());
        let idle = Arc::new(SlowCleanup::default());
        let collector = Collector::new(
            db.clone(),
            content,
            vec![("slow".into(), slow.clone()), ("idle".into(), idle)],
        );
        let collection = tokio::spawn(async move { collector.collect().await });
        slow.cleaning.notified().await;

        // While the slow snapshotter is swept, writers into the content store and into the
        // other snapshotter start at once; its own wait for the sweep to end.
        let prompt = Duration::from_millis(100);
        for other in [Backend::Content, Backend::Snapshotter("idle".into())] {
            let writing = tokio::time::timeout(prompt, db.writing_to(&other)).await;
            assert!(
                writing.is_ok(),
                "{other:?} waited for another backend's sweep"
            );
        }
        let slow_backend = Backend::Snapshotter("slow".into());
        let waited = tokio::time::timeout(prompt, db.writing_to(&slow_backend)).await;
        assert!(
            waited.is_err(),
            "a writer went on during its backend's sweep"
        );
        let stats = collection.await.unwrap().unwrap();
        assert_eq!(stats.removed, vec!["snapshot slow/orphan".to_string()]);
        let writing = tokio::time::timeout(prompt, db.writing_to(&slow_backend)).await;
        assert!(
            writing.is_ok(),
            "the sweep ended but its writers still wait"
        );
    }
}
