//! Unpacking a pull's layers into snapshots committed under their chain IDs.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use crated_diff::media::LABEL_UNCOMPRESSED;
use crated_diff::ChunkReader;
use crated_errdefs::{HasKind, Kind};
use crated_images::{chain_ids, Descriptor};
use crated_metadata::{Scope, ScopedSnapshotter};
use crated_snapshots::{LABEL_DIFFER_ONLY, LABEL_SNAPSHOT_REF};
use futures::StreamExt;
use tokio::sync::Semaphore;

use crate::error::{Result, TransferError};
use crate::fetch::{self, LayerSource};
use crate::progress::object_name;
use crate::pull::{Pull, Puller};

/// containerd's labels on an extraction snapshot: the layer's diff ID and its parent's chain ID.
const LABEL_DIFF_ID: &str = "containerd.io/snapshot/diff-id";
const LABEL_PARENT_CHAIN_ID: &str = "containerd.io/snapshot/parent-chain-id";

impl Puller {
    /// Snapshotter `name`, as containerd's lookup: a missing or unknown name is
    /// InvalidArgument.
    fn snapshotter(&self, name: &str) -> Result<Arc<dyn ScopedSnapshotter>> {
        if name.is_empty() {
            return Err(TransferError::InvalidArgument(
                "snapshotter argument missing: invalid argument".into(),
            ));
        }
        self.snapshotters.get(name).cloned().ok_or_else(|| {
            TransferError::InvalidArgument(format!(
                "snapshotter not loaded: {name}: invalid argument"
            ))
        })
    }

    /// Unpacks the layers into snapshots committed under their chain IDs; a chain ID already
    /// there is skipped. Where the snapshotter can rebase, layers are applied side by side,
    /// each into a snapshot without parent, and stacked in order as they are committed (as
    /// containerd's parallel unpack); otherwise each is applied onto the one before. The top
    /// chain ID.
    pub(crate) async fn unpack(
        &self,
        pull: &Pull,
        snapshotter: &str,
        diff_ids: &[String],
        sources: Vec<(Descriptor, Option<fetch::Live>, fetch::Done)>,
    ) -> Result<String> {
        let target = self.snapshotter(snapshotter)?;
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
                Some(_) => Err(TransferError::Aborted("an earlier layer failed".into())),
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
    ) -> Result<Option<LayerCommit>> {
        let Stack {
            target,
            snapshotter,
            side_by_side,
            parent,
        } = *stack;
        // Held until this layer is committed: a second pull of it waits here, then finds it.
        let locked = self
            .lock_key(format!("{}/{snapshotter}/{chain}", pull.ns))
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
            Err(e) if e.kind() == Kind::AlreadyExists => {
                fetch::wait(&mut done).await?;
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        Ok(Some(LayerCommit {
            layer,
            diff_id: diff_id.to_owned(),
            chain: chain.to_owned(),
            key,
            onto: (side_by_side && !parent.is_empty()).then(|| parent.to_owned()),
            labels,
            mounts,
            _locked: locked,
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
    ) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
        let application = self.application(pull, layer, mounts, live, done.clone());
        let (diff_id, digest) = (diff_id.to_owned(), layer.digest.clone());
        async move {
            let applied = application.await;
            let downloaded = fetch::wait(&mut done).await;
            let found = applied?;
            downloaded?;
            if found != diff_id {
                return Err(TransferError::FailedPrecondition(format!(
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
        applied: Result<()>,
    ) -> Result<()> {
        let committed = match applied {
            Ok(()) => {
                let scope = Scope::new(&pull.ns, Some(&pull.lease));
                let committed = match &c.onto {
                    None => {
                        target
                            .commit(scope, &c.chain, &c.key, c.labels.clone())
                            .await
                    }
                    Some(onto) => {
                        target
                            .commit_onto(scope, &c.chain, &c.key, onto, c.labels.clone())
                            .await
                    }
                };
                committed.map_err(TransferError::from)
            }
            Err(e) => Err(e),
        };
        match committed {
            Ok(()) => {}
            // Another client committed the same chain first.
            Err(e) if e.kind() == Kind::AlreadyExists => {
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
            .await?;
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
    /// The parent to commit onto, when the snapshot was not prepared on it.
    onto: Option<String>,
    labels: HashMap<String, String>,
    mounts: Vec<crated_snapshots::Mount>,
    _locked: tokio::sync::OwnedMutexGuard<()>,
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
    ) -> impl std::future::Future<Output = Result<String>> + Send + 'static {
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
                    .map_err(|e| TransferError::Internal(format!("unpack task failed: {e}")))?;
            match applied {
                Ok(a) => Ok(a.diff_id),
                Err(e) => {
                    let cause = failure.lock().unwrap_or_else(|p| p.into_inner()).take();
                    Err(cause.unwrap_or_else(|| e.into()))
                }
            }
        }
    }
}
