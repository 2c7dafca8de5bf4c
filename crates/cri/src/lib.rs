//! containerd's CRI plugin, `io.containerd.grpc.v1.cri`: Kubernetes' Container Runtime
//! Interface (`runtime.v1.RuntimeService` and `runtime.v1.ImageService`) on the daemon's own
//! socket, building pods and containers from the same services as every other client, in
//! namespace `k8s.io`.

pub mod config;
pub mod runtime;

use std::sync::Arc;

use crated_plugin::{types, Instance, Registration};
use crated_services::message_limits::limited;
use crated_services::GrpcService;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;

pub use config::CriConfig;
use runtime::CriRuntime;

/// The containerd namespace every CRI object lives in.
pub const NAMESPACE: &str = "k8s.io";

pub fn registration() -> Registration {
    Registration::new(types::GRPC, "cri", |mut ctx| async move {
        let config: CriConfig = ctx.config()?;
        let config = Arc::new(config);
        let runtime = Arc::new(CriRuntime::new(
            config.clone(),
            crated_services::version::reported_version(),
        ));
        Ok(Instance::new(GrpcService::new(move |routes, limits| {
            routes.add_service(limited!(
                RuntimeServiceServer::from_arc(runtime.clone()),
                limits
            ));
        })))
    })
    .requires(&[types::EVENT, types::SERVICE])
    .with_config::<CriConfig>()
}
