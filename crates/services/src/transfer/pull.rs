//! The daemon-side pull: resolve a reference, fetch the index or manifest, the manifests of
//! the wanted platforms, their configs and layers into the namespaced content store (labelled
//! as containerd labels them, under a lease), unpack the layers into snapshots named by their
//! chain IDs, and record the image. Layers download in parallel; the first layer still
//! downloading is unpacked from its live bytes, so download, digest, decompression and
//! extraction overlap. A layer (blob or snapshot) that two pulls want at once is worked on by
//! one of them; the other finds it done.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use crated_diff::media::LABEL_UNCOMPRESSED;
use crated_diff::{ChunkReader, WalkingDiffer};
use crated_images::manifest::{self, Document, LABEL_DISTRIBUTION_SOURCE, LABEL_GC_SNAPSHOT};
use crated_images::{chain_ids, Descriptor, Platform, Reference, Registry, RegistryOptions};
use crated_metadata::{
    ImageRecord, Lease, MetadataStore, NamespacedContentStore, Scope, ScopedSnapshotter,
};
use crated_snapshots::{LABEL_DIFFER_ONLY, LABEL_SNAPSHOT_REF};
use futures::StreamExt;
use tokio::sync::{watch, Semaphore};
use tonic::Status;

use super::fetch::{self, Download, LayerSource};
use super::progress::{object_name, Progress};
use crate::edge::{blocking, status};
use crate::snapshots::SnapshotsService;

/// containerd's labels on an extraction snapshot: the layer's diff ID and its parent's chain ID.
const LABEL_DIFF_ID: &str = "containerd.io/snapshot/diff-id";
const LABEL_PARENT_CHAIN_ID: &str = "containerd.io/snapshot/parent-chain-id";
/// Layers downloading at once in one pull.
const PARALLEL_DOWNLOADS: usize = 3;
/// How deep indexes may nest in an image (an index whose entries are indexes...).
const MAX_INDEX_DEPTH: usize = 4;
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
    /// Where to unpack which platform: (platform, snapshotter).
    pub unpacks: Vec<(Platform, String)>,
}

pub struct Puller {
    pub content: NamespacedContentStore,
    pub snapshots: Arc<SnapshotsService>,
    pub differ: Arc<WalkingDiffer>,
    pub db: Arc<MetadataStore>,
    /// Work in progress by key (a blob, a snapshot): the second comer waits for the first.
    busy: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A manifest or index fetched: its descriptor, bytes, parsed document, and the progress names
/// of its parents.
struct Fetched {
    desc: Descriptor,
    raw: Vec<u8>,
    doc: Document,
    parents: Vec<String>,
}

/// What one pull works in.
struct Pull {
    ns: String,
    lease: String,
    registry: Arc<Registry>,
    progress: Progress,
    source: (String, String),
    downloads: Arc<Semaphore>,
}

impl Pull {
    fn labels(&self, mut labels: HashMap<String, String>) -> HashMap<String, String> {
        labels.insert(self.source.0.clone(), self.source.1.clone());
        labels
    }
}

impl Puller {
    pub fn new(
        content: NamespacedContentStore,
        snapshots: Arc<SnapshotsService>,
        differ: Arc<WalkingDiffer>,
        db: Arc<MetadataStore>,
    ) -> Puller {
        Puller {
            content,
            snapshots,
            differ,
            db,
            busy: Mutex::new(HashMap::new()),
        }
    }

    /// One at a time per `key`.
    async fn once(&self, key: String) -> tokio::sync::OwnedMutexGuard<()> {
        self.busy_lock(key).lock_owned().await
    }

    pub async fn pull(
        &self,
        ns: &str,
        lease: Option<String>,
        req: PullRequest,
        progress: Progress,
    ) -> Result<ImageRecord, Status> {
        let shown = req.reference.to_string();
        progress
            .note(format!("Resolving from OCI Registry ({shown})"))
            .await;
        let registry =
            Registry::new(&req.reference, req.registry.clone()).map_err(|e| status(&e))?;
        let (root, body) = registry.resolve().await.map_err(|e| status(&e))?;
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
            source: (
                format!("{LABEL_DISTRIBUTION_SOURCE}{}", req.reference.host),
                req.reference.repository.clone(),
            ),
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

    async fn create_lease(&self, ns: &str) -> Result<String, Status> {
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
    ) -> Result<ImageRecord, Status> {
        let document = Document::parse(&root.media_type, &body).map_err(|e| status(&e))?;
        let root = Descriptor {
            media_type: match (&document, root.media_type.is_empty()) {
                (Document::Index(_), true) => manifest::OCI_INDEX.into(),
                (Document::Manifest(_), true) => manifest::OCI_MANIFEST.into(),
                _ => root.media_type,
            },
            ..root
        };
        let target = root.clone();
        let mut manifests: Vec<Fetched> = Vec::new();
        let mut indexes: Vec<Fetched> = Vec::new();
        let root = Fetched {
            desc: root,
            raw: body,
            doc: document,
            parents: Vec::new(),
        };
        self.walk_indexes(pull, req, root, 0, &mut manifests, &mut indexes)
            .await?;
        if manifests.is_empty() {
            let wanted: Vec<String> = req.platforms.iter().map(|p| p.to_string()).collect();
            return Err(Status::not_found(format!(
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
                .find(|(p, _)| desc.platform.as_ref().is_none_or(|mine| p.matches(mine)))
                .map(|(_, s)| s.clone());
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
            Err(crated_metadata::MetadataError::AlreadyExists(_)) => {
                db.image_update(&ns, &image, &[])
            }
            other => other,
        })
        .await
    }

    /// Walks an index tree from `node`: the manifests the request's platforms want go into
    /// `manifests`, the indexes on the way into `indexes` (outermost first). An index inside an
    /// index is followed as containerd does, a few levels deep at most.
    async fn walk_indexes(
        &self,
        pull: &Pull,
        req: &PullRequest,
        node: Fetched,
        depth: usize,
        manifests: &mut Vec<Fetched>,
        indexes: &mut Vec<Fetched>,
    ) -> Result<(), Status> {
        let Document::Index(index) = &node.doc else {
            manifests.push(node);
            return Ok(());
        };
        if depth >= MAX_INDEX_DEPTH {
            return Err(Status::invalid_argument(format!(
                "index {} is nested more than {MAX_INDEX_DEPTH} deep",
                node.desc.digest
            )));
        }
        let parents = vec![object_name("index", &node.desc)];
        let mut children = Vec::new();
        for desc in manifest::select(index, &req.platforms) {
            let raw = pull
                .registry
                .fetch_manifest(desc)
                .await
                .map_err(|e| status(&e))?;
            let doc = Document::parse(&desc.media_type, &raw).map_err(|e| status(&e))?;
            children.push(Fetched {
                desc: desc.clone(),
                raw,
                doc,
                parents: parents.clone(),
            });
        }
        indexes.push(node);
        for child in children {
            Box::pin(self.walk_indexes(pull, req, child, depth + 1, manifests, indexes)).await?;
        }
        Ok(())
    }

    /// Stores a manifest or index document with its children's GC labels.
    async fn store_document(
        &self,
        pull: &Pull,
        desc: &Descriptor,
        raw: &[u8],
        labels: HashMap<String, String>,
        name: &str,
        parents: &[String],
    ) -> Result<(), Status> {
        let labels = pull.labels(labels);
        if fetch::already_there(&self.content, &pull.ns, desc, &labels, &pull.progress, name)
            .await?
        {
            return Ok(());
        }
        let _once = self.once(format!("{}/{}", pull.ns, desc.digest)).await;
        let mut ingest = self
            .content
            .ingest_blob(&pull.ns, Some(pull.lease.clone()), name)
            .await
            .map_err(|e| status(&e))?;
        let written = ingest.write(raw.to_vec()).await;
        if let Err(e) = written {
            ingest.abort().await;
            return Err(status(&e));
        }
        match ingest
            .commit_checked(Some((&desc.digest, desc.size.max(0) as u64)), labels)
            .await
        {
            Ok(_) => {}
            Err(e) if crated_errdefs::HasKind::kind(&e) == crated_errdefs::Kind::AlreadyExists => {}
            Err(e) => return Err(status(&e)),
        }
        pull.progress
            .object("complete", name, parents, desc.size, desc)
            .await;
        Ok(())
    }

    /// The config and layers of one manifest, unpacked into `snapshotter` if given.
    async fn fetch_manifest_tree(
        &self,
        pull: &Pull,
        m: &crated_images::Manifest,
        manifest_name: &str,
        snapshotter: Option<String>,
    ) -> Result<(), Status> {
        let parents = vec![manifest_name.to_owned()];
        let config = pull
            .registry
            .fetch_small_blob(&m.config)
            .await
            .map_err(|e| status(&e))?;
        let diff_ids = manifest::diff_ids(&config).map_err(|e| status(&e))?;
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
            let same_blob = self.busy_lock(format!("{}/{}", pull.ns, layer.digest));
            tokio::spawn(async move {
                let _same_blob = same_blob.lock_owned().await;
                let _slot = slots.acquire_owned().await;
                let outcome = download.run(feed).await;
                let _ = tx.send(Some(outcome));
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
            return Err(Status::invalid_argument(format!(
                "mismatched image rootfs ({} diff IDs) and manifest layers ({})",
                diff_ids.len(),
                m.layers.len()
            )));
        }
        let top = self.unpack(pull, &snapshotter, &diff_ids, sources).await?;
        self.content
            .add_labels(
                &pull.ns,
                &m.config.digest,
                BTreeMap::from([(format!("{LABEL_GC_SNAPSHOT}{snapshotter}"), top)]),
            )
            .await
            .map_err(|e| status(&e))
    }

    fn busy_lock(&self, key: String) -> Arc<tokio::sync::Mutex<()>> {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        busy.retain(|_, l| Arc::strong_count(l) > 1);
        Arc::clone(busy.entry(key).or_default())
    }

    /// Unpacks the layers into snapshots committed under their chain IDs; a chain ID already
    /// there is skipped. Where the snapshotter can rebase, layers are applied side by side,
    /// each into a snapshot without parent, and stacked in order as they are committed (as
    /// containerd's parallel unpack); otherwise each is applied onto the one before. The top
    /// chain ID.
    async fn unpack(
        &self,
        pull: &Pull,
        snapshotter: &str,
        diff_ids: &[String],
        sources: Vec<(Descriptor, Option<fetch::Live>, fetch::Done)>,
    ) -> Result<String, Status> {
        let target = self.snapshots.target_of(snapshotter)?;
        let chains = chain_ids(diff_ids);
        let side_by_side = target.can_rebase();
        let appliers = Arc::new(Semaphore::new(
            std::thread::available_parallelism().map_or(2, |n| n.get()),
        ));
        let mut extracting = futures::stream::FuturesOrdered::new();
        let mut failed = None;
        let mut parent = String::new();
        for (i, (layer, live, done)) in sources.into_iter().enumerate() {
            let chain = chains[i].clone();
            let stack = Stack {
                target: &*target,
                snapshotter,
                side_by_side,
                parent: &parent,
            };
            let prepared = self
                .prepare_layer(pull, &stack, layer, &diff_ids[i], &chain, done.clone())
                .await;
            let layer_commit = match prepared {
                Ok(Some(prepared)) => prepared,
                Ok(None) => {
                    parent = chain;
                    continue;
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            let mut mounts = layer_commit.mounts.clone();
            if side_by_side && !parent.is_empty() {
                // Whiteouts must be made for the overlay this layer will join.
                mounts = upper_only(mounts);
            }
            pull.progress
                .object(
                    "extracting",
                    &object_name("layer", &layer_commit.layer),
                    &[],
                    0,
                    &layer_commit.layer,
                )
                .await;
            let applied = self.extract(pull, &layer_commit.layer, &diff_ids[i], mounts, live, done);
            if side_by_side {
                let appliers = Arc::clone(&appliers);
                extracting.push_back(async move {
                    let _applier = appliers.acquire_owned().await;
                    (layer_commit, applied.await)
                });
            } else {
                let applied = applied.await;
                self.finish(pull, &*target, layer_commit, applied).await?;
            }
            parent = chain;
        }
        // Side by side: committed in order as each is applied; after a failure the rest are
        // waited for, then removed.
        while let Some((layer_commit, applied)) = extracting.next().await {
            let applied = match failed {
                None => applied,
                Some(_) => Err(Status::aborted("an earlier layer failed")),
            };
            if let Err(e) = self.finish(pull, &*target, layer_commit, applied).await {
                failed.get_or_insert(e);
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(parent),
        }
    }

    /// Makes the extraction snapshot of the layer whose chain ID is `chain`, on `parent` or
    /// (side by side) on nothing, holding off a second pull of the same chain; `None` when the
    /// chain is there already (its download is then waited for).
    async fn prepare_layer(
        &self,
        pull: &Pull,
        stack: &Stack<'_>,
        layer: Descriptor,
        diff_id: &str,
        chain: &str,
        mut done: fetch::Done,
    ) -> Result<Option<LayerCommit>, Status> {
        let Stack {
            target,
            snapshotter,
            side_by_side,
            parent,
        } = *stack;
        // Held until this layer is committed: a second pull of it waits here, then finds it.
        let once = self
            .once(format!("{}/{snapshotter}/{chain}", pull.ns))
            .await;
        if target.stat(Scope::new(&pull.ns, None), chain).await.is_ok() {
            fetch::wait(&mut done).await?;
            return Ok(None);
        }
        let key = format!(
            "extract-{}-{} {chain}",
            crated_metadata::now_nanos(),
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        );
        let mut labels = HashMap::from([(LABEL_SNAPSHOT_REF.to_owned(), chain.to_owned())]);
        labels.insert(LABEL_DIFF_ID.into(), diff_id.to_owned());
        // Only this pull's differ writes into the snapshot: a native one may share its
        // parent's files.
        labels.insert(LABEL_DIFFER_ONLY.into(), "true".into());
        if !parent.is_empty() {
            labels.insert(LABEL_PARENT_CHAIN_ID.into(), parent.to_owned());
        }
        let below = if side_by_side { "" } else { parent };
        let created = target
            .prepare(
                Scope::new(&pull.ns, Some(&pull.lease)),
                &key,
                below,
                labels.clone(),
            )
            .await;
        let mounts = match created {
            Ok(mounts) => mounts,
            // Made meanwhile by another client, or by a remote snapshotter from the target
            // label: nothing to unpack.
            Err(e) if crated_errdefs::HasKind::kind(&e) == crated_errdefs::Kind::AlreadyExists => {
                fetch::wait(&mut done).await?;
                return Ok(None);
            }
            Err(e) => return Err(status(&e)),
        };
        Ok(Some(LayerCommit {
            layer,
            diff_id: diff_id.to_owned(),
            chain: chain.to_owned(),
            key,
            onto: if side_by_side {
                parent.to_owned()
            } else {
                String::new()
            },
            labels,
            mounts,
            _once: once,
        }))
    }

    /// Applies one layer and checks its diff ID and download. The work starts when the future
    /// is first polled.
    fn extract(
        &self,
        pull: &Pull,
        layer: &Descriptor,
        diff_id: &str,
        mounts: Vec<crated_snapshots::Mount>,
        live: Option<fetch::Live>,
        mut done: fetch::Done,
    ) -> impl std::future::Future<Output = Result<(), Status>> + Send + 'static {
        let application = self.application(pull, layer, mounts, live, done.clone());
        let (diff_id, digest) = (diff_id.to_owned(), layer.digest.clone());
        async move {
            let applied = application.await;
            let downloaded = fetch::wait(&mut done).await;
            let found = applied?;
            downloaded?;
            if found != diff_id {
                return Err(Status::failed_precondition(format!(
                    "wrong diff id {found} calculated on extraction of {digest}, expected {diff_id}"
                )));
            }
            Ok(())
        }
    }

    /// Commits an applied layer (onto its parent when it was applied without), labels its
    /// blob with its diff ID; a failed one's snapshot is removed.
    async fn finish(
        &self,
        pull: &Pull,
        target: &dyn ScopedSnapshotter,
        c: LayerCommit,
        applied: Result<(), Status>,
    ) -> Result<(), Status> {
        let committed = match applied {
            Ok(()) => {
                let scope = Scope::new(&pull.ns, Some(&pull.lease));
                let committed = if c.onto.is_empty() {
                    target
                        .commit(scope, &c.chain, &c.key, c.labels.clone())
                        .await
                } else {
                    target
                        .commit_onto(scope, &c.chain, &c.key, &c.onto, c.labels.clone())
                        .await
                };
                committed.map_err(|e| status(&e))
            }
            Err(e) => Err(e),
        };
        match committed {
            Ok(()) => {}
            // Another client committed the same chain first.
            Err(e) if e.code() == tonic::Code::AlreadyExists => {
                let _ = target.remove(Scope::new(&pull.ns, None), &c.key).await;
            }
            Err(e) => {
                let _ = target.remove(Scope::new(&pull.ns, None), &c.key).await;
                return Err(e);
            }
        }
        self.content
            .add_labels(
                &pull.ns,
                &c.layer.digest,
                BTreeMap::from([(LABEL_UNCOMPRESSED.to_owned(), c.diff_id)]),
            )
            .await
            .map_err(|e| status(&e))?;
        pull.progress
            .object(
                "extracted",
                &object_name("layer", &c.layer),
                &[],
                c.layer.size,
                &c.layer,
            )
            .await;
        Ok(())
    }
}

/// Where a pull's layers are being stacked, and the top so far.
#[derive(Clone, Copy)]
struct Stack<'a> {
    target: &'a dyn ScopedSnapshotter,
    snapshotter: &'a str,
    /// Layers are applied side by side and rebased on commit.
    side_by_side: bool,
    parent: &'a str,
}

/// A layer's extraction snapshot on its way to being committed under its chain ID.
struct LayerCommit {
    layer: Descriptor,
    diff_id: String,
    chain: String,
    key: String,
    /// The parent to commit onto; empty when the snapshot was prepared on it.
    onto: String,
    labels: HashMap<String, String>,
    mounts: Vec<crated_snapshots::Mount>,
    _once: tokio::sync::OwnedMutexGuard<()>,
}

/// The bind mount of a snapshot prepared without parent, as an overlay mount with only its
/// upper directory: the differ then writes whiteouts as overlayfs's, for the overlay the
/// layer joins once rebased (containerd's `bindToOverlay`). Other mounts are kept.
fn upper_only(mounts: Vec<crated_snapshots::Mount>) -> Vec<crated_snapshots::Mount> {
    match mounts.as_slice() {
        [m] if m.r#type == "bind" => vec![crated_snapshots::Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options: vec![format!("upperdir={}", m.source)],
        }],
        _ => mounts,
    }
}

impl Puller {
    /// Applies one layer onto `mounts` from its source; the diff ID. The work starts when the
    /// future is first polled.
    fn application(
        &self,
        pull: &Pull,
        layer: &Descriptor,
        mounts: Vec<crated_snapshots::Mount>,
        live: Option<fetch::Live>,
        done: fetch::Done,
    ) -> impl std::future::Future<Output = Result<String, Status>> + Send + 'static {
        let failure = Arc::new(Mutex::new(None));
        let mut source = LayerSource {
            runtime: tokio::runtime::Handle::current(),
            live,
            done,
            content: self.content.clone(),
            ns: pull.ns.clone(),
            desc: layer.clone(),
            offset: 0,
            stored: None,
            failure: Arc::clone(&failure),
        };
        let reader = ChunkReader::new(move || source.next_chunk());
        let differ = Arc::clone(&self.differ);
        let media_type = layer.media_type.clone();
        async move {
            let applied =
                tokio::task::spawn_blocking(move || differ.apply(&media_type, &mounts, reader))
                    .await
                    .map_err(|e| Status::internal(format!("unpack task failed: {e}")))?;
            match applied {
                Ok(a) => Ok(a.diff_id),
                Err(e) => {
                    let cause = failure.lock().unwrap_or_else(|p| p.into_inner()).take();
                    Err(cause.unwrap_or_else(|| status(&e)))
                }
            }
        }
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
