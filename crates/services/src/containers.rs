//! Containers: `io.containerd.service.v1.containers-service` + `io.containerd.grpc.v1.containers`.
//! Records live in the metadata store (GC roots for their snapshot); each change is published
//! on containerd's `/containers/*` topics.

use std::sync::Arc;

use crated_api::containerd::events as ev;
use crated_api::containerd::services::containers::v1 as api;
use crated_api::containerd::services::containers::v1::containers_server::{
    Containers, ContainersServer,
};
use crated_events::Exchange;
use crated_metadata::{AnyValue, ContainerRecord, MetadataStore, RuntimeInfo};
use crated_plugin::{types as plugin_types, Instance, Registration};
use tonic::{Request, Response, Status};

use crate::message_limits::limited;
use crate::request::namespace;
use crate::status::{blocking, filters};
use crate::wire::{timestamp, BoxStream};
use crate::GrpcService;

pub struct ContainersService {
    db: Arc<MetadataStore>,
    exchange: Arc<Exchange>,
}

pub fn registrations() -> Vec<Registration> {
    vec![
        Registration::new(
            plugin_types::SERVICE,
            "containers-service",
            |ctx| async move {
                let db = ctx.get_single::<MetadataStore>(plugin_types::METADATA)?;
                let exchange = ctx.get_single::<Exchange>(plugin_types::EVENT)?;
                Ok(Instance::new(Arc::new(ContainersService { db, exchange })))
            },
        )
        .requires(&[plugin_types::EVENT, plugin_types::METADATA]),
        Registration::new(plugin_types::GRPC, "containers", |ctx| async move {
            let service =
                ctx.get_by_id::<ContainersService>(plugin_types::SERVICE, "containers-service")?;
            Ok(Instance::new(GrpcService::new(move |routes, limits| {
                routes.add_service(limited!(
                    ContainersServer::from_arc(service.clone()),
                    limits
                ));
            })))
        })
        .requires(&[plugin_types::SERVICE]),
    ]
}

pub fn any_to_api(a: AnyValue) -> prost_types::Any {
    prost_types::Any {
        type_url: a.type_url,
        value: a.value,
    }
}

pub fn any_from_api(a: prost_types::Any) -> AnyValue {
    AnyValue {
        type_url: a.type_url,
        value: a.value,
    }
}

fn to_api(r: ContainerRecord) -> api::Container {
    api::Container {
        id: r.id,
        labels: r.labels.into_iter().collect(),
        image: r.image,
        runtime: Some(api::container::Runtime {
            name: r.runtime.name,
            options: r.runtime.options.map(any_to_api),
        }),
        spec: r.spec.map(any_to_api),
        snapshotter: r.snapshotter,
        snapshot_key: r.snapshot_key,
        created_at: Some(timestamp(r.created_at)),
        updated_at: Some(timestamp(r.updated_at)),
        extensions: r
            .extensions
            .into_iter()
            .map(|(k, v)| (k, any_to_api(v)))
            .collect(),
        sandbox: r.sandbox,
    }
}

fn from_api(c: api::Container) -> ContainerRecord {
    let runtime = c.runtime.unwrap_or_default();
    ContainerRecord {
        id: c.id,
        labels: c.labels.into_iter().collect(),
        image: c.image,
        runtime: RuntimeInfo {
            name: runtime.name,
            options: runtime.options.map(any_from_api),
        },
        spec: c.spec.map(any_from_api),
        snapshotter: c.snapshotter,
        snapshot_key: c.snapshot_key,
        extensions: c
            .extensions
            .into_iter()
            .map(|(k, v)| (k, any_from_api(v)))
            .collect(),
        sandbox: c.sandbox,
        created_at: 0,
        updated_at: 0,
    }
}

/// The fields containerd's container filters see.
fn field<'a>(r: &'a ContainerRecord) -> impl Fn(&[String]) -> Option<String> + 'a {
    move |path: &[String]| match path.first().map(String::as_str) {
        Some("id") => Some(r.id.clone()),
        Some("image") => Some(r.image.clone()),
        Some("runtime") => match path.get(1).map(String::as_str) {
            Some("name") => Some(r.runtime.name.clone()),
            _ => None,
        },
        Some("snapshotter") => Some(r.snapshotter.clone()),
        Some("labels") => r.labels.get(&path[1..].join(".")).cloned(),
        _ => None,
    }
}

fn required(c: Option<api::Container>) -> Result<api::Container, Status> {
    c.ok_or_else(|| Status::invalid_argument("container must be set: invalid argument"))
}

impl ContainersService {
    async fn matching(&self, ns: String, inputs: &[String]) -> Result<Vec<api::Container>, Status> {
        let filter = filters(inputs)?;
        let db = self.db.clone();
        let all = blocking(move || db.container_list(&ns)).await?;
        Ok(all
            .into_iter()
            .filter(|r| filter.matches(&field(r)))
            .map(to_api)
            .collect())
    }
}

#[tonic::async_trait]
impl Containers for ContainersService {
    async fn get(
        &self,
        req: Request<api::GetContainerRequest>,
    ) -> Result<Response<api::GetContainerResponse>, Status> {
        let ns = namespace(&req)?;
        let id = req.into_inner().id;
        let db = self.db.clone();
        let c = blocking(move || db.container_get(&ns, &id)).await?;
        Ok(Response::new(api::GetContainerResponse {
            container: Some(to_api(c)),
        }))
    }

    async fn list(
        &self,
        req: Request<api::ListContainersRequest>,
    ) -> Result<Response<api::ListContainersResponse>, Status> {
        let ns = namespace(&req)?;
        let containers = self.matching(ns, &req.into_inner().filters).await?;
        Ok(Response::new(api::ListContainersResponse { containers }))
    }

    async fn list_stream(
        &self,
        req: Request<api::ListContainersRequest>,
    ) -> Result<Response<BoxStream<api::ListContainerMessage>>, Status> {
        let ns = namespace(&req)?;
        let containers = self.matching(ns, &req.into_inner().filters).await?;
        let stream = futures::stream::iter(
            containers
                .into_iter()
                .map(|c| Ok(api::ListContainerMessage { container: Some(c) })),
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn create(
        &self,
        req: Request<api::CreateContainerRequest>,
    ) -> Result<Response<api::CreateContainerResponse>, Status> {
        let ns = namespace(&req)?;
        let c = from_api(required(req.into_inner().container)?);
        let db = self.db.clone();
        let ns2 = ns.clone();
        let made = blocking(move || db.container_create(&ns2, &c)).await?;
        self.exchange.publish_message(
            &ns,
            "/containers/create",
            "containerd.events.ContainerCreate",
            &ev::ContainerCreate {
                id: made.id.clone(),
                image: made.image.clone(),
                runtime: Some(ev::container_create::Runtime {
                    name: made.runtime.name.clone(),
                    options: made.runtime.options.clone().map(any_to_api),
                }),
            },
        );
        Ok(Response::new(api::CreateContainerResponse {
            container: Some(to_api(made)),
        }))
    }

    async fn update(
        &self,
        req: Request<api::UpdateContainerRequest>,
    ) -> Result<Response<api::UpdateContainerResponse>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let c = from_api(required(req.container)?);
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let db = self.db.clone();
        let ns2 = ns.clone();
        let updated = blocking(move || db.container_update(&ns2, &c, &paths)).await?;
        self.exchange.publish_message(
            &ns,
            "/containers/update",
            "containerd.events.ContainerUpdate",
            &ev::ContainerUpdate {
                id: updated.id.clone(),
                image: updated.image.clone(),
                labels: updated.labels.clone().into_iter().collect(),
                snapshot_key: updated.snapshot_key.clone(),
            },
        );
        Ok(Response::new(api::UpdateContainerResponse {
            container: Some(to_api(updated)),
        }))
    }

    async fn delete(
        &self,
        req: Request<api::DeleteContainerRequest>,
    ) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let id = req.into_inner().id;
        let db = self.db.clone();
        let (ns2, id2) = (ns.clone(), id.clone());
        blocking(move || db.container_delete(&ns2, &id2)).await?;
        self.exchange.publish_message(
            &ns,
            "/containers/delete",
            "containerd.events.ContainerDelete",
            &ev::ContainerDelete { id },
        );
        Ok(Response::new(()))
    }
}
