//! containerd's CRI plugin, `io.containerd.grpc.v1.cri`: Kubernetes' Container Runtime
//! Interface (`runtime.v1.RuntimeService` and `runtime.v1.ImageService`) on the daemon's own
//! socket, building pods and containers from the same services as every other client, in
//! namespace `k8s.io`.

pub mod config;
pub mod container;
pub mod error;
pub mod images;
pub mod runtime;
pub mod sandbox;

use std::sync::Arc;
use std::time::Duration;

use crated_content::ContentStore;
use crated_metadata::MetadataStore;
use crated_plugin::{types, Instance, PluginError, Registration};
use crated_services::containers::ContainersService;
use crated_services::images::ImagesService;
use crated_services::message_limits::limited;
use crated_services::snapshots::SnapshotsService;
use crated_services::tasks::TasksService;
use crated_services::GrpcService;
use crated_snapshots::Snapshotter;
use crated_transfer::Puller;
use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;

pub use config::CriConfig;
pub use error::CriError;
use images::{CriImages, Resolver};
use runtime::CriRuntime;
use sandbox::Pods;

/// The containerd namespace every CRI object lives in.
pub const NAMESPACE: &str = "k8s.io";

pub fn registration() -> Registration {
    Registration::new(types::GRPC, "cri", |mut ctx| async move {
        let config: CriConfig = ctx.config()?;
        let config = Arc::new(config);
        let db = ctx.get_single::<MetadataStore>(types::METADATA)?;
        let content = ctx.get_single::<Arc<dyn ContentStore>>(types::CONTENT)?;
        let images_service = ctx.get_by_id::<ImagesService>(types::SERVICE, "images-service")?;
        let snapshotter_name = &config.containerd.snapshotter;
        let snapshotter = ctx
            .get_by_id::<Arc<dyn Snapshotter>>(types::SNAPSHOTTER, snapshotter_name)
            .map_err(|e| {
                PluginError::failed(format!("the snapshotter {snapshotter_name:?}: {e}"))
            })?;
        let daemon_root = ctx
            .root_path()
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        let puller = ctx.get_by_id::<Puller>(types::TRANSFER, "local").ok();
        let images = Arc::new(CriImages::new(
            config.clone(),
            db,
            images_service,
            puller,
            Resolver::new((*content).clone()),
            daemon_root.join(format!("{}.{snapshotter_name}", types::SNAPSHOTTER)),
        ));
        let pods = Arc::new(Pods {
            config: config.clone(),
            images: images.clone(),
            container_service: ctx
                .get_by_id::<ContainersService>(types::SERVICE, "containers-service")?,
            tasks: ctx.get_by_id::<TasksService>(types::SERVICE, "tasks-service")?,
            snapshots: ctx.get_by_id::<SnapshotsService>(types::SERVICE, "snapshots-service")?,
            root: ctx.root()?,
            state: ctx.state()?,
            cni: Arc::new(crated_cni::Cni::new(crated_cni::CniOptions {
                conf_dir: config.cni.conf_dir.clone().into(),
                bin_dirs: vec![config.cni.bin_dir.clone().into()],
                max_conf_num: usize::try_from(config.cni.max_conf_num.max(0)).unwrap_or(1),
                ip_pref: crated_cni::IpPreference::from_config(&config.cni.ip_pref),
                ..Default::default()
            })),
            netns_dir: if config.netns_mounts_under_state_dir {
                ctx.state()?.join("netns")
            } else {
                std::path::PathBuf::from(crated_cni::DEFAULT_NETNS_DIR)
            },
            sandboxes: Default::default(),
            containers: Default::default(),
            stats: Default::default(),
            names: Default::default(),
        });
        // As containerd's CRI: pods and containers are back before the first call.
        pods.recover().await;
        let runtime = Arc::new(CriRuntime::new(
            config.clone(),
            pods,
            crated_services::version::reported_version(),
        ));
        images.measure_usage_every(
            (*snapshotter).clone(),
            Duration::from_secs(config.stats_collect_period),
        );
        Ok(Instance::new(GrpcService::new(move |routes, limits| {
            routes.add_service(limited!(
                RuntimeServiceServer::from_arc(runtime.clone()),
                limits
            ));
            routes.add_service(limited!(
                ImageServiceServer::from_arc(images.clone()),
                limits
            ));
        })))
    })
    .requires(&[
        types::EVENT,
        types::SERVICE,
        types::METADATA,
        types::CONTENT,
        types::SNAPSHOTTER,
        types::TRANSFER,
    ])
    .with_config::<CriConfig>()
}

/// `message` as a call in namespace `k8s.io`, for the services this plugin is a client of.
pub(crate) fn in_namespace<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        crated_services::request::NAMESPACE_HEADER,
        tonic::metadata::MetadataValue::from_static(NAMESPACE),
    );
    request
}
