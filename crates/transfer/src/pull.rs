//! The pull, as containerd's core/transfer/local: resolve a reference, fetch the manifests of
//! the wanted platforms, their configs and layers into the namespaced content store (labelled
//! as containerd labels them, under a lease), unpack the layers into snapshots named by their
//! chain IDs, and record the image. Layers download in parallel while the first one still
//! downloading is unpacked from its live bytes. A blob or snapshot that two pulls want at once
//! is worked on by one of them; the other finds it done.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use crated_diff::WalkingDiffer;
use crated_images::manifest::{self, Document, LABEL_DISTRIBUTION_SOURCE, LABEL_GC_SNAPSHOT};
use crated_images::{Descriptor, Platform, Reference, Registry, RegistryOptions};
use crated_metadata::{
    ImageRecord, Lease, MetadataError, MetadataStore, NamespacedContentStore, ScopedSnapshotter,
};
use tokio::sync::{watch, OwnedMutexGuard, Semaphore};

use crate::error::{Result, TransferError};
use crate::fetch::{self, Download};
use crate::progress::{object_name, Progress};
use crate::resolve::{self, Fetched};

/// Layers downloading at once in one pull.
const PARALLEL_DOWNLOADS: usize = 3;
/// How long the lease of a pull holds what it fetched if the daemon dies mid-pull.
const LEASE_LIFETIME_NANOS: u64 = 24 * 3600 * 1_000_000_000;

pub struct PullRequest {
    pub reference: Reference,
    pub registry: RegistryOptions,
    /// The image record's name.
    pub image_name: String,
    pub labels: HashMap<String, String>,
    /// The manifests to fetch; empty fetches all.
    pub platforms: Vec<Platform>,
    pub unpacks: Vec<Unpack>,
}

/// Where to unpack the manifest of a platform.
pub struct Unpack {
    pub platform: Platform,
    pub snapshotter: String,
}

/// A label every blob of a pull gets.
pub struct Label {
    pub key: String,
    pub value: String,
}

/// The daemon-side pull: the instance of `io.containerd.transfer.v1.local`.
pub struct Puller {
    pub(crate) content: NamespacedContentStore,
    pub(crate) snapshotters: HashMap<String, Arc<dyn ScopedSnapshotter>>,
    pub(crate) differ: Arc<WalkingDiffer>,
    db: Arc<MetadataStore>,
    /// Work in progress by key (a blob, a snapshot): the second comer waits for the first.
    busy: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// What one pull works in.
pub(crate) struct Pull {
    pub ns: String,
    pub lease: String,
    pub registry: Arc<Registry>,
    pub progress: Progress,
    /// Where the blobs came from (`containerd.io/distribution.source.<host>`).
    pub source: Label,
    pub downloads: Arc<Semaphore>,
}

impl Pull {
    /// `labels` and the pull's source label.
    pub fn labels(&self, mut labels: HashMap<String, String>) -> HashMap<String, String> {
        labels.insert(self.source.key.clone(), self.source.value.clone());
        labels
    }
}

/// Runs blocking record work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::result::Result<T, MetadataError> + Send + 'static,
) -> Result<T> {
    let done = tokio::task::spawn_blocking(f).await;
    let result = done.map_err(|e| TransferError::Internal(format!("blocking task failed: {e}")));
    Ok(result??)
}

impl Puller {
    /// A puller unpacking into `snapshotters`, by name.
    pub fn new(
        content: NamespacedContentStore,
        snapshotters: HashMap<String, Arc<dyn ScopedSnapshotter>>,
        differ: Arc<WalkingDiffer>,
        db: Arc<MetadataStore>,
    ) -> Puller {
        Puller {
            content,
            snapshotters,
            differ,
            db,
            busy: Mutex::new(HashMap::new()),
        }
    }

    /// Pulls into namespace `ns`, under `lease` if given (else a lease of its own, deleted at
    /// the end); the image recorded.
    pub async fn pull(
        &self,
        ns: &str,
        lease: Option<String>,
        req: PullRequest,
        progress: Progress,
    ) -> Result<ImageRecord> {
        let shown = req.reference.to_string();
        progress
            .note(format!("Resolving from OCI Registry ({shown})"))
            .await;
        let (registry, root, body) = resolve::resolve(&req.reference, req.registry.clone()).await?;
        progress
            .note(format!("Pulling from OCI Registry ({shown})"))
            .await;
        let temporary = lease.is_none();
        let lease = match lease {
            Some(l) => l,
            None => self.create_lease(ns).await?,
        };
        let pull = Pull {
            ns: ns.to_owned(),
            lease: lease.clone(),
            registry: Arc::new(registry),
            progress: progress.clone(),
            source: Label {
                key: format!("{LABEL_DISTRIBUTION_SOURCE}{}", req.reference.host),
                value: req.reference.repository.clone(),
            },
            downloads: Arc::new(Semaphore::new(PARALLEL_DOWNLOADS)),
        };
        let result = self.fetch_image(&pull, &req, root, body).await;
        if temporary {
            let (db, ns) = (self.db.clone(), ns.to_owned());
            let _ = blocking(move || db.lease_delete(&ns, &lease)).await;
        }
        let image = result?;
        progress
            .object("saved", &image.name, &[], 0, &descriptor_of(&image))
            .await;
        progress
            .note(format!("Completed pull from OCI Registry ({shown})"))
            .await;
        Ok(image)
    }

    /// Holds off other work on `key` (a blob, a snapshot) until the guard is dropped.
    pub(crate) async fn lock_key(&self, key: String) -> OwnedMutexGuard<()> {
        self.key_lock(key).lock_owned().await
    }

    /// The lock of `key`, to take later.
    pub(crate) fn key_lock(&self, key: String) -> Arc<tokio::sync::Mutex<()>> {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        busy.retain(|_, l| Arc::strong_count(l) > 1);
        Arc::clone(busy.entry(key).or_default())
    }

    async fn create_lease(&self, ns: &str) -> Result<String> {
        let now = crated_metadata::now_nanos();
        let lease = Lease {
            id: format!("pull-{now}-{}", uuid::Uuid::new_v4().simple()),
            created_at: now,
            labels: BTreeMap::from([(
                crated_metadata::LABEL_EXPIRE.to_owned(),
                crated_metadata::format_expire(now + LEASE_LIFETIME_NANOS),
            )]),
        };
        let (db, ns, l) = (self.db.clone(), ns.to_owned(), lease.clone());
        blocking(move || db.lease_create(&ns, &l)).await?;
        Ok(lease.id)
    }

    async fn fetch_image(
        &self,
        pull: &Pull,
        req: &PullRequest,
        root: Descriptor,
        body: Vec<u8>,
    ) -> Result<ImageRecord> {
        let root = resolve::root(root, body)?;
        let target = root.desc.clone();
        let mut manifests: Vec<Fetched> = Vec::new();
        let mut indexes: Vec<Fetched> = Vec::new();
        resolve::walk_indexes(
            &pull.registry,
            &req.platforms,
            root,
            0,
            &mut manifests,
            &mut indexes,
        )
        .await?;
        if manifests.is_empty() {
            let wanted: Vec<String> = req.platforms.iter().map(|p| p.to_string()).collect();
            return Err(TransferError::NotFound(format!(
                "no match for platform in manifest: {}: not found",
                wanted.join(", ")
            )));
        }
        for Fetched {
            desc,
            raw,
            doc,
            parents,
        } in &manifests
        {
            let Document::Manifest(m) = doc else { continue };
            let name = object_name("manifest", desc);
            // A manifest is unpacked where an unpack entry's platform runs it (one without a
            // platform is the image's only manifest).
            let snapshotter = req
                .unpacks
                .iter()
                .find(|u| {
                    desc.platform
                        .as_ref()
                        .is_none_or(|mine| u.platform.matches(mine))
                })
                .map(|u| u.snapshotter.clone());
            self.fetch_manifest_tree(pull, m, &name, snapshotter)
                .await?;
            let labels = children_labels(doc);
            self.store_document(pull, desc, raw, labels, &name, parents)
                .await?;
        }
        // An index is stored once its children are, innermost first, so that the GC labels it
        // carries name blobs that are there.
        for index in indexes.iter().rev() {
            let name = object_name("index", &index.desc);
            let labels = children_labels(&index.doc);
            self.store_document(pull, &index.desc, &index.raw, labels, &name, &index.parents)
                .await?;
        }
        let image = ImageRecord {
            name: req.image_name.clone(),
            labels: req.labels.clone().into_iter().collect(),
            target: crated_metadata::Descriptor {
                media_type: target.media_type,
                digest: target.digest,
                size: target.size,
                annotations: Default::default(),
            },
            created_at: 0,
            updated_at: 0,
        };
        let (db, ns) = (self.db.clone(), pull.ns.clone());
        blocking(move || match db.image_create(&ns, &image) {
            Err(MetadataError::AlreadyExists(_)) => db.image_update(&ns, &image, &[]),
            other => other,
        })
        .await
    }

    /// The config and layers of one manifest, unpacked into `snapshotter` if given.
    async fn fetch_manifest_tree(
        &self,
        pull: &Pull,
        m: &crated_images::Manifest,
        manifest_name: &str,
        snapshotter: Option<String>,
    ) -> Result<()> {
        let parents = vec![manifest_name.to_owned()];
        let config = pull.registry.fetch_small_blob(&m.config).await?;
        let diff_ids = manifest::diff_ids(&config)?;
        let config_name = object_name("config", &m.config);
        self.store_document(
            pull,
            &m.config,
            &config,
            HashMap::new(),
            &config_name,
            &parents,
        )
        .await?;
        // Every layer downloads (a few at a time); each tells its outcome through `done`.
        let mut sources = Vec::new();
        for layer in &m.layers {
            let (feed, live) = fetch::feed();
            let (tx, done) = watch::channel(None);
            let download = Download {
                content: self.content.clone(),
                registry: Arc::clone(&pull.registry),
                ns: pull.ns.clone(),
                lease: pull.lease.clone(),
                desc: layer.clone(),
                labels: pull.labels(HashMap::new()),
                progress: pull.progress.clone(),
                name: object_name("layer", layer),
                parents: parents.clone(),
            };
            let slots = Arc::clone(&pull.downloads);
            // Taken inside the task, so waiting for another pull's download of the same blob
            // holds back only this layer.
            let same_blob = self.key_lock(format!("{}/{}", pull.ns, layer.digest));
            tokio::spawn(async move {
                let _same_blob = same_blob.lock_owned().await;
                let _slot = slots.acquire_owned().await;
                let outcome = download.run(feed).await;
                let _ = tx.send(Some(outcome.map_err(Arc::new)));
            });
            sources.push((layer.clone(), Some(live), done));
        }
        let Some(snapshotter) = snapshotter else {
            for (_, _, mut done) in sources {
                fetch::wait(&mut done).await?;
            }
            return Ok(());
        };
        if diff_ids.len() != m.layers.len() {
            return Err(TransferError::InvalidArgument(format!(
                "mismatched image rootfs ({} diff IDs) and manifest layers ({})",
                diff_ids.len(),
                m.layers.len()
            )));
        }
        let top = self.unpack(pull, &snapshotter, &diff_ids, sources).await?;
        Ok(self
            .content
            .add_labels(
                &pull.ns,
                &m.config.digest,
                BTreeMap::from([(format!("{LABEL_GC_SNAPSHOT}{snapshotter}"), top)]),
            )
            .await?)
    }
}

fn descriptor_of(image: &ImageRecord) -> Descriptor {
    Descriptor {
        media_type: image.target.media_type.clone(),
        digest: image.target.digest.clone(),
        size: image.target.size,
        ..Default::default()
    }
}

/// containerd's `containerd.io/gc.ref.content.*` labels of a document's children.
fn children_labels(doc: &Document) -> HashMap<String, String> {
    doc.children()
        .into_iter()
        .map(|(k, d)| (k, d.digest.clone()))
        .collect()
}
