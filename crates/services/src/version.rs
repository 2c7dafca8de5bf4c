//! `io.containerd.grpc.v1.version`: our version and git revision.

use crated_api::containerd::services::version::v1::version_server::{Version, VersionServer};
use crated_api::containerd::services::version::v1::VersionResponse;
use crated_plugin::{types, Instance, Registration};
use tonic::{Request, Response, Status};

use crate::message_limits::limited;
use crate::GrpcService;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The containerd release whose API crated serves: clients (Docker, nerdctl, BuildKit) gate
/// features on the version they are told, so it leads, and crated's own version follows as
/// semver build metadata, which version comparisons ignore.
pub const CONTAINERD_API_LEVEL: &str = "1.6.20";

/// What the version service answers: `1.6.20+crated.0.1.0`.
pub fn reported_version() -> String {
    format!("{CONTAINERD_API_LEVEL}+crated.{VERSION}")
}
pub const REVISION: &str = env!("CRATED_GIT_REVISION");

struct VersionService;

#[tonic::async_trait]
impl Version for VersionService {
    async fn version(&self, _req: Request<()>) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(VersionResponse {
            version: reported_version(),
            revision: REVISION.into(),
        }))
    }
}

pub fn registration() -> Registration {
    Registration::new(types::GRPC, "version", |_ctx| async {
        Ok(Instance::new(GrpcService::new(|routes, limits| {
            routes.add_service(limited!(VersionServer::new(VersionService), limits));
        })))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_reported_version_is_semver_with_containerds_api_level_first() {
        let v = super::reported_version();
        let (release, build) = v.split_once('+').unwrap();
        let parts: Vec<u32> = release.split('.').map(|p| p.parse().unwrap()).collect();
        assert_eq!(parts.len(), 3, "{v}");
        assert!(parts[0] == 1 && parts[1] >= 6, "{v}");
        assert_eq!(build, format!("crated.{}", env!("CARGO_PKG_VERSION")));
    }
}
