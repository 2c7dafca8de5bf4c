//! One collection: mark and sweep in the metadata store, then the backends drop what no record
//! keeps. The metadata store's GC lock is held exclusively from the mark to the end of the
//! backend sweep, so nothing committed meanwhile can be taken for garbage.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crated_content::{ContentError, ContentStore};
use crated_errdefs::{HasKind, Kind};
use crated_metadata::{MetadataStore, Resource};

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
    /// How long writers were held off.
    pub lock_held: Duration,
    /// Mark, sweep and backend work together.
    pub elapsed: Duration,
    /// When the next lease or ingest expires (ns since the epoch).
    pub next_expiry: Option<u64>,
}

pub struct Collector {
    db: Arc<MetadataStore>,
    content: Arc<dyn ContentStore>,
}

impl Collector {
    pub fn new(db: Arc<MetadataStore>, content: Arc<dyn ContentStore>) -> Self {
        Collector { db, content }
    }

    pub fn metadata(&self) -> &Arc<MetadataStore> {
        &self.db
    }

    pub async fn collect(&self) -> Result<Stats, GcError> {
        let started = Instant::now();
        let _writers_held = self.db.gc_lock().write().await;
        let locked = Instant::now();
        let db = self.db.clone();
        let collection =
            tokio::task::spawn_blocking(move || db.collect_garbage(crated_metadata::now_nanos()))
                .await
                .map_err(|e| GcError::Task(e.to_string()))??;
        let mut stats = Stats {
            removed: collection.removed.iter().map(ToString::to_string).collect(),
            next_expiry: collection.next_expiry,
            ..Stats::default()
        };
        for r in &collection.removed {
            tracing::debug!("gc removed {r}");
        }
        // The backends are swept once after start (whatever a crash left), and whenever
        // records went: in this collection, or by a delete or abort since the last one.
        let records_removed = collection
            .removed
            .iter()
            .any(|r| matches!(r, Resource::Content { .. } | Resource::Ingest { .. }));
        if self.db.take_backends_dirty() || records_removed {
            self.sweep_content(&collection.live_blobs, &collection.live_ingests, &mut stats)
                .await;
            if !stats.failed.is_empty() {
                self.db.mark_backends_dirty();
            }
        }
        stats.lock_held = locked.elapsed();
        stats.elapsed = started.elapsed();
        Ok(stats)
    }

    /// Deletes every blob no namespace records and aborts every ingest no record keeps. One
    /// failing removal is logged and the sweep goes on.
    async fn sweep_content(
        &self,
        live_blobs: &HashSet<String>,
        live_ingests: &HashSet<String>,
        stats: &mut Stats,
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

/// A store that does not answer: the rest of the sweep waits for the next collection rather
/// than hold writers off through one deadline per item.
fn unreachable(e: &ContentError) -> bool {
    matches!(e.kind(), Kind::Unavailable | Kind::DeadlineExceeded)
}
