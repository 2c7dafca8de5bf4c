//! Images: `io.containerd.service.v1.images-service` + `io.containerd.grpc.v1.images`. Records
//! live in the metadata store; images are GC roots, so a delete (with `sync`, followed by a
//! collection) is what frees an image's blobs and snapshots.

use std::sync::Arc;

use crated_api::containerd::services::images::v1 as api;
use crated_api::containerd::services::images::v1::images_server::{Images, ImagesServer};
use crated_api::containerd::types;
use crated_events::Exchange;
use crated_gc::Scheduler;
use crated_metadata::{Descriptor, ImageRecord, MetadataStore};
use crated_plugin::{types as plugin_types, Instance, Registration};
use tonic::{Request, Response, Status};

use crate::leases::collect_now;
use crate::message_limits::limited;
use crate::request::namespace;
use crate::status::{blocking, filters};
use crate::wire::timestamp;
use crate::GrpcService;

pub struct ImagesService {
    db: Arc<MetadataStore>,
    /// None when the GC plugin is disabled: a synchronous delete then cannot collect.
    gc: Option<Arc<Scheduler>>,
    exchange: Arc<Exchange>,
}

pub fn registrations() -> Vec<Registration> {
    vec![
        Registration::new(plugin_types::SERVICE, "images-service", |ctx| async move {
            let db = ctx.get_single::<MetadataStore>(plugin_types::METADATA)?;
            let gc = ctx.get_single::<Scheduler>(plugin_types::GC).ok();
            let exchange = ctx.get_single::<Exchange>(plugin_types::EVENT)?;
            Ok(Instance::new(Arc::new(ImagesService { db, gc, exchange })))
        })
        .requires(&[
            plugin_types::EVENT,
            plugin_types::METADATA,
            plugin_types::GC,
        ]),
        Registration::new(plugin_types::GRPC, "images", |ctx| async move {
            let service =
                ctx.get_by_id::<ImagesService>(plugin_types::SERVICE, "images-service")?;
            Ok(Instance::new(GrpcService::new(move |routes, limits| {
                routes.add_service(limited!(ImagesServer::from_arc(service.clone()), limits));
            })))
        })
        .requires(&[plugin_types::SERVICE]),
    ]
}

fn to_api(r: ImageRecord) -> api::Image {
    api::Image {
        name: r.name,
        labels: r.labels.into_iter().collect(),
        target: Some(types::Descriptor {
            media_type: r.target.media_type,
            digest: r.target.digest,
            size: r.target.size,
            annotations: r.target.annotations.into_iter().collect(),
        }),
        created_at: Some(timestamp(r.created_at)),
        updated_at: Some(timestamp(r.updated_at)),
    }
}

fn from_api(i: api::Image) -> ImageRecord {
    let target = i.target.unwrap_or_default();
    ImageRecord {
        name: i.name,
        labels: i.labels.into_iter().collect(),
        target: Descriptor {
            media_type: target.media_type,
            digest: target.digest,
            size: target.size,
            annotations: target.annotations.into_iter().collect(),
        },
        created_at: 0,
        updated_at: 0,
    }
}

/// The fields containerd's image filters see: `name`, `target.digest`, `target.mediatype`,
/// `labels.<key>`.
fn field<'a>(r: &'a ImageRecord) -> impl Fn(&[String]) -> Option<String> + 'a {
    move |path: &[String]| match path.first().map(String::as_str) {
        Some("name") => Some(r.name.clone()),
        Some("target") => match path.get(1).map(String::as_str) {
            Some("digest") => Some(r.target.digest.clone()),
            Some("mediatype") => Some(r.target.media_type.clone()),
            _ => None,
        },
        Some("labels") => r.labels.get(&path[1..].join(".")).cloned(),
        _ => None,
    }
}

fn required(image: Option<api::Image>) -> Result<api::Image, Status> {
    image.ok_or_else(|| Status::invalid_argument("an image is required: invalid argument"))
}

#[tonic::async_trait]
impl Images for ImagesService {
    async fn get(
        &self,
        req: Request<api::GetImageRequest>,
    ) -> Result<Response<api::GetImageResponse>, Status> {
        let ns = namespace(&req)?;
        let name = req.into_inner().name;
        let db = self.db.clone();
        let image = blocking(move || db.image_get(&ns, &name)).await?;
        Ok(Response::new(api::GetImageResponse {
            image: Some(to_api(image)),
        }))
    }

    async fn list(
        &self,
        req: Request<api::ListImagesRequest>,
    ) -> Result<Response<api::ListImagesResponse>, Status> {
        let ns = namespace(&req)?;
        let filter = filters(&req.into_inner().filters)?;
        let db = self.db.clone();
        let all = blocking(move || db.image_list(&ns)).await?;
        let images = all
            .into_iter()
            .filter(|r| filter.matches(&field(r)))
            .map(to_api)
            .collect();
        Ok(Response::new(api::ListImagesResponse { images }))
    }

    async fn create(
        &self,
        req: Request<api::CreateImageRequest>,
    ) -> Result<Response<api::CreateImageResponse>, Status> {
        let ns = namespace(&req)?;
        let image = from_api(required(req.into_inner().image)?);
        let db = self.db.clone();
        let ns2 = ns.clone();
        let made = blocking(move || db.image_create(&ns2, &image)).await?;
        self.exchange.publish_message(
            &ns,
            "/images/create",
            "containerd.services.images.v1.ImageCreate",
            &api::ImageCreate {
                name: made.name.clone(),
                labels: made.labels.clone().into_iter().collect(),
            },
        );
        Ok(Response::new(api::CreateImageResponse {
            image: Some(to_api(made)),
        }))
    }

    async fn update(
        &self,
        req: Request<api::UpdateImageRequest>,
    ) -> Result<Response<api::UpdateImageResponse>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let image = from_api(required(req.image)?);
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let db = self.db.clone();
        let ns2 = ns.clone();
        let updated = blocking(move || db.image_update(&ns2, &image, &paths)).await?;
        self.exchange.publish_message(
            &ns,
            "/images/update",
            "containerd.services.images.v1.ImageUpdate",
            &api::ImageUpdate {
                name: updated.name.clone(),
                labels: updated.labels.clone().into_iter().collect(),
            },
        );
        Ok(Response::new(api::UpdateImageResponse {
            image: Some(to_api(updated)),
        }))
    }

    async fn delete(&self, req: Request<api::DeleteImageRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let target = req.target.map(|t| t.digest);
        let (db, name, ns2) = (self.db.clone(), req.name.clone(), ns.clone());
        blocking(move || db.image_delete(&ns2, &name, target.as_deref())).await?;
        self.exchange.publish_message(
            &ns,
            "/images/delete",
            "containerd.services.images.v1.ImageDelete",
            &api::ImageDelete { name: req.name },
        );
        let mut response = Response::new(());
        if req.sync {
            collect_now(self.gc.as_deref(), response.metadata_mut()).await?;
        }
        Ok(response)
    }
}
