//! Transfers done by the daemon itself: the `io.containerd.transfer.v1.local` plugin
//! ([`registration`]) and the pull it does, an OCI registry into the namespaced content store
//! and snapshotters, as containerd's core/transfer/local. `resolve` finds the manifests,
//! `fetch` stores blobs, `unpack` makes snapshots and `pull` runs them together. The gRPC
//! service that decodes transfer requests lives in `crated-services`.

mod error;
mod fetch;
mod progress;
mod pull;
mod resolve;
mod unpack;

use std::collections::HashMap;
use std::sync::Arc;

use crated_diff::WalkingDiffer;
use crated_metadata::{
    MetadataStore, NamespacedContentStore, NamespacedSnapshotter, ScopedSnapshotter,
};
use crated_plugin::{types, Instance, Registration};
use crated_snapshots::Snapshotter;

pub use error::TransferError;
pub use progress::{Progress, ProgressEvent, ProgressSink};
pub use pull::{Label, PullRequest, Puller, Unpack};

/// `io.containerd.transfer.v1.local`: a [`Puller`] over every snapshotter, namespaced.
pub fn registration() -> Registration {
    Registration::new(types::TRANSFER, "local", |ctx| async move {
        let db = ctx.get_single::<MetadataStore>(types::METADATA)?;
        let snapshotters: HashMap<String, Arc<dyn ScopedSnapshotter>> = ctx
            .get_by_type::<Arc<dyn Snapshotter>>(types::SNAPSHOTTER)?
            .into_iter()
            .map(|(name, backend)| {
                let namespaced =
                    NamespacedSnapshotter::new(db.clone(), &name, Arc::clone(&*backend));
                (name, Arc::new(namespaced) as Arc<dyn ScopedSnapshotter>)
            })
            .collect();
        let differ = ctx.get_by_id::<WalkingDiffer>(types::DIFF, "walking")?;
        let content = NamespacedContentStore::from_context(&ctx)?;
        Ok(Instance::new(Arc::new(Puller::new(
            content,
            snapshotters,
            differ,
            db,
        ))))
    })
    // The services start first: start-up order stays as it is.
    .requires(&[types::METADATA, types::CONTENT, types::DIFF, types::SERVICE])
}
