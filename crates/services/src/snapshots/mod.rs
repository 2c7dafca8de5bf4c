//! Snapshots: `io.containerd.service.v1.snapshots-service` + `io.containerd.grpc.v1.snapshots`,
//! every snapshotter by name through the metadata store ([`NamespacedSnapshotter`]). The same
//! gRPC front serves one snapshotter bare, without namespaces ([`SnapshotsService::bare`]): that
//! is what a proxy snapshotter plugin of crated or containerd talks to (`crated-snapshotter`).

use std::collections::HashMap;
use std::sync::Arc;

use crated_api::containerd::events as ev;
use crated_api::containerd::services::snapshots::v1 as api;
use crated_api::containerd::services::snapshots::v1::snapshots_server::{
    Snapshots, SnapshotsServer,
};
use crated_metadata::{
    MetadataStore, NamespacedSnapshotter, Scope, ScopedSnapshotError, ScopedSnapshotter, Unscoped,
};
use crated_plugin::{types, Instance, Registration};
use crated_snapshots::wire::{info_from_api, info_to_api, mounts_to_api};
use crated_snapshots::{SnapshotError, Snapshotter, LABEL_DIFFER_ONLY};
use tonic::{Request, Response, Status};

use crate::message_limits::limited;
use crate::request::{lease, namespace};
use crate::status::status;
use crate::GrpcService;

/// A client's labels, less [`LABEL_DIFFER_ONLY`]: only crated's own unpack may say that no
/// one but its differ writes into a snapshot.
fn from_client(mut labels: HashMap<String, String>) -> HashMap<String, String> {
    labels.remove(LABEL_DIFFER_ONLY);
    labels
}

pub struct SnapshotsService {
    by_name: HashMap<String, Arc<dyn ScopedSnapshotter>>,
    /// Serving one snapshotter bare: every name reaches it.
    only: Option<Arc<dyn ScopedSnapshotter>>,
    /// Where `/snapshot/*` events go (none when serving bare, outside a daemon).
    exchange: Option<Arc<crated_events::Exchange>>,
}

impl SnapshotsService {
    /// Every snapshotter by name, namespaced through the metadata store.
    pub fn namespaced(
        db: Arc<MetadataStore>,
        snapshotters: Vec<(String, Arc<dyn Snapshotter>)>,
    ) -> Self {
        SnapshotsService {
            by_name: snapshotters
                .into_iter()
                .map(|(name, backend)| {
                    let target: Arc<dyn ScopedSnapshotter> =
                        Arc::new(NamespacedSnapshotter::new(db.clone(), &name, backend));
                    (name, target)
                })
                .collect(),
            only: None,
            exchange: None,
        }
    }

    /// One snapshotter, bare, whatever name a call gives.
    pub fn bare(snapshotter: Arc<dyn Snapshotter>) -> Self {
        SnapshotsService {
            by_name: HashMap::new(),
            only: Some(Arc::new(Unscoped(snapshotter))),
            exchange: None,
        }
    }

    /// Publishes containerd's snapshot events on `exchange`.
    pub fn with_events(mut self, exchange: Arc<crated_events::Exchange>) -> Self {
        self.exchange = Some(exchange);
        self
    }

    fn publish<M: prost::Message>(&self, ns: &str, topic: &str, type_name: &str, event: &M) {
        if let Some(exchange) = &self.exchange {
            exchange.publish_message(ns, topic, type_name, event);
        }
    }

    /// The tonic service, with containerd's default message limits.
    pub fn into_service(self) -> SnapshotsServer<SnapshotsService> {
        limited!(
            SnapshotsServer::new(self),
            crate::message_limits::MessageLimits::default()
        )
    }

    /// containerd's lookup: a missing or unknown name is InvalidArgument.
    fn target(&self, name: &str) -> Result<&Arc<dyn ScopedSnapshotter>, Status> {
        if let Some(only) = &self.only {
            return Ok(only);
        }
        if name.is_empty() {
            return Err(Status::invalid_argument(
                "snapshotter argument missing: invalid argument",
            ));
        }
        self.by_name.get(name).ok_or_else(|| {
            Status::invalid_argument(format!("snapshotter not loaded: {name}: invalid argument"))
        })
    }

    /// The namespace of a call; a bare server has none of its own.
    fn namespace<T>(&self, req: &Request<T>) -> Result<String, Status> {
        if self.only.is_some() {
            return Ok(String::new());
        }
        namespace(req)
    }
}

pub fn registrations() -> Vec<Registration> {
    vec![
        Registration::new(types::SERVICE, "snapshots-service", |ctx| async move {
            let db = ctx.get_single::<MetadataStore>(types::METADATA)?;
            let snapshotters = ctx
                .get_by_type::<Arc<dyn Snapshotter>>(types::SNAPSHOTTER)?
                .into_iter()
                .map(|(id, s)| (id, Arc::clone(&*s)))
                .collect();
            let exchange = ctx.get_single::<crated_events::Exchange>(types::EVENT)?;
            Ok(Instance::new(Arc::new(
                SnapshotsService::namespaced(db, snapshotters).with_events(exchange),
            )))
        })
        .requires(&[types::EVENT, types::METADATA, types::SNAPSHOTTER]),
        Registration::new(types::GRPC, "snapshots", |ctx| async move {
            let service = ctx.get_by_id::<SnapshotsService>(types::SERVICE, "snapshots-service")?;
            Ok(Instance::new(GrpcService::new(move |routes, limits| {
                routes.add_service(limited!(SnapshotsServer::from_arc(service.clone()), limits));
            })))
        })
        .requires(&[types::SERVICE]),
    ]
}

fn edge(e: ScopedSnapshotError) -> Status {
    status(&e)
}

type ListStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<api::ListSnapshotsResponse, Status>> + Send>,
>;

/// Infos per List message, as containerd batches them.
const LIST_BATCH: usize = 100;

#[tonic::async_trait]
impl Snapshots for SnapshotsService {
    async fn prepare(
        &self,
        req: Request<api::PrepareSnapshotRequest>,
    ) -> Result<Response<api::PrepareSnapshotResponse>, Status> {
        let (ns, lease) = (self.namespace(&req)?, lease(&req));
        let r = req.into_inner();
        let mounts = self
            .target(&r.snapshotter)?
            .prepare(
                Scope::new(&ns, lease.as_deref()),
                &r.key,
                &r.parent,
                from_client(r.labels),
            )
            .await
            .map_err(edge)?;
        self.publish(
            &ns,
            "/snapshot/prepare",
            "containerd.events.SnapshotPrepare",
            &ev::SnapshotPrepare {
                key: r.key,
                parent: r.parent,
                snapshotter: r.snapshotter,
            },
        );
        Ok(Response::new(api::PrepareSnapshotResponse {
            mounts: mounts_to_api(mounts),
        }))
    }

    async fn view(
        &self,
        req: Request<api::ViewSnapshotRequest>,
    ) -> Result<Response<api::ViewSnapshotResponse>, Status> {
        let (ns, lease) = (self.namespace(&req)?, lease(&req));
        let r = req.into_inner();
        let mounts = self
            .target(&r.snapshotter)?
            .view(
                Scope::new(&ns, lease.as_deref()),
                &r.key,
                &r.parent,
                from_client(r.labels),
            )
            .await
            .map_err(edge)?;
        Ok(Response::new(api::ViewSnapshotResponse {
            mounts: mounts_to_api(mounts),
        }))
    }

    async fn mounts(
        &self,
        req: Request<api::MountsRequest>,
    ) -> Result<Response<api::MountsResponse>, Status> {
        let ns = self.namespace(&req)?;
        let r = req.into_inner();
        let mounts = self
            .target(&r.snapshotter)?
            .mounts(Scope::new(&ns, None), &r.key)
            .await
            .map_err(edge)?;
        Ok(Response::new(api::MountsResponse {
            mounts: mounts_to_api(mounts),
        }))
    }

    async fn commit(
        &self,
        req: Request<api::CommitSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let (ns, lease) = (self.namespace(&req)?, lease(&req));
        let r = req.into_inner();
        let target = self.target(&r.snapshotter)?;
        let scope = Scope::new(&ns, lease.as_deref());
        let labels = from_client(r.labels);
        let committed = if r.parent.is_empty() {
            target.commit(scope, &r.name, &r.key, labels).await
        } else {
            target
                .commit_onto(scope, &r.name, &r.key, &r.parent, labels)
                .await
        };
        committed.map_err(edge)?;
        self.publish(
            &ns,
            "/snapshot/commit",
            "containerd.events.SnapshotCommit",
            &ev::SnapshotCommit {
                key: r.key,
                name: r.name,
                snapshotter: r.snapshotter,
            },
        );
        Ok(Response::new(()))
    }

    async fn remove(
        &self,
        req: Request<api::RemoveSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let ns = self.namespace(&req)?;
        let r = req.into_inner();
        self.target(&r.snapshotter)?
            .remove(Scope::new(&ns, None), &r.key)
            .await
            .map_err(edge)?;
        self.publish(
            &ns,
            "/snapshot/remove",
            "containerd.events.SnapshotRemove",
            &ev::SnapshotRemove {
                key: r.key,
                snapshotter: r.snapshotter,
            },
        );
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        req: Request<api::StatSnapshotRequest>,
    ) -> Result<Response<api::StatSnapshotResponse>, Status> {
        let ns = self.namespace(&req)?;
        let r = req.into_inner();
        let info = self
            .target(&r.snapshotter)?
            .stat(Scope::new(&ns, None), &r.key)
            .await
            .map_err(edge)?;
        Ok(Response::new(api::StatSnapshotResponse {
            info: Some(info_to_api(info)),
        }))
    }

    async fn update(
        &self,
        req: Request<api::UpdateSnapshotRequest>,
    ) -> Result<Response<api::UpdateSnapshotResponse>, Status> {
        let ns = self.namespace(&req)?;
        let r = req.into_inner();
        let info = r.info.ok_or_else(|| {
            status(&SnapshotError::InvalidArgument(
                "snapshot info is required".into(),
            ))
        })?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let mut info = info_from_api(info);
        info.labels = from_client(info.labels);
        let info = self
            .target(&r.snapshotter)?
            .update(Scope::new(&ns, None), info, &paths)
            .await
            .map_err(edge)?;
        Ok(Response::new(api::UpdateSnapshotResponse {
            info: Some(info_to_api(info)),
        }))
    }

    async fn list(
        &self,
        req: Request<api::ListSnapshotsRequest>,
    ) -> Result<Response<ListStream>, Status> {
        let ns = self.namespace(&req)?;
        let r = req.into_inner();
        let infos = self
            .target(&r.snapshotter)?
            .walk(Scope::new(&ns, None), &r.filters)
            .await
            .map_err(edge)?;
        let mut batches = Vec::new();
        let mut infos = infos.into_iter().map(info_to_api).peekable();
        while infos.peek().is_some() {
            batches.push(Ok(api::ListSnapshotsResponse {
                info: infos.by_ref().take(LIST_BATCH).collect(),
            }));
        }
        Ok(Response::new(Box::pin(futures::stream::iter(batches))))
    }

    async fn usage(
        &self,
        req: Request<api::UsageRequest>,
    ) -> Result<Response<api::UsageResponse>, Status> {
        let ns = self.namespace(&req)?;
        let r = req.into_inner();
        let u = self
            .target(&r.snapshotter)?
            .usage(Scope::new(&ns, None), &r.key)
            .await
            .map_err(edge)?;
        Ok(Response::new(api::UsageResponse {
            size: u.size,
            inodes: u.inodes,
        }))
    }

    async fn cleanup(&self, req: Request<api::CleanupRequest>) -> Result<Response<()>, Status> {
        let r = req.into_inner();
        self.target(&r.snapshotter)?.cleanup().await.map_err(edge)?;
        Ok(Response::new(()))
    }
}
