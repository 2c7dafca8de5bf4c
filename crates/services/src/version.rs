//! `io.containerd.grpc.v1.version`: our version and git revision.

use crated_api::containerd::services::version::v1::version_server::{Version, VersionServer};
use crated_api::containerd::services::version::v1::VersionResponse;
use crated_plugin::{types, Instance, Registration};
use tonic::{Request, Response, Status};

use crate::GrpcService;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const REVISION: &str = env!("CRATED_GIT_REVISION");

struct VersionService;

#[tonic::async_trait]
impl Version for VersionService {
    async fn version(&self, _req: Request<()>) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(VersionResponse {
            version: VERSION.into(),
            revision: REVISION.into(),
        }))
    }
}

pub fn registration() -> Registration {
    Registration::new(types::GRPC, "version", |_ctx| async {
        Ok(Instance::new(GrpcService::new(|routes| {
            routes.add_service(VersionServer::new(VersionService));
        })))
    })
}
