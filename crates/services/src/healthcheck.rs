//! `io.containerd.grpc.v1.healthcheck`: `grpc.health.v1.Health`, NOT_SERVING until start-up
//! has finished, SERVING after.

use crated_plugin::{types, Instance, Registration};
use tonic_health::ServingStatus;

use crate::message_limits::limited;
use crate::GrpcService;

pub fn registration() -> Registration {
    Registration::new(types::GRPC, "healthcheck", |_ctx| async {
        let (reporter, server) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
        let serving = reporter.clone();
        Ok(Instance::new(GrpcService::with_on_serving(
            move |routes, limits| {
                routes.add_service(limited!(server.clone(), limits));
            },
            move || {
                let reporter = serving.clone();
                async move {
                    reporter
                        .set_service_status("", ServingStatus::Serving)
                        .await
                }
            },
        )))
    })
}
