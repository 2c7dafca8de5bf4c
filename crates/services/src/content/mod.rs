//! Content: `io.containerd.service.v1.content-service` + `io.containerd.grpc.v1.content`, the
//! gRPC front of the namespaced content store ([`NamespacedContentStore`]).

use std::sync::Arc;

use crated_api::containerd::services::content::v1 as api;
use crated_api::containerd::services::content::v1::content_server::{Content, ContentServer};
use crated_content::{ContentStore, ContentWriter, IngestStatus};
use crated_metadata::{ContentRecord, ContentStoreError, NamespacedContentStore, NamespacedIngest};
use crated_plugin::{types, InitContext, Instance, PluginError, Registration};
use tonic::{Request, Response, Status, Streaming};

use crate::message_limits::limited;
use crate::request::{lease, namespace};
use crate::status::{filters, status};
use crate::wire::timestamp;
use crate::GrpcService;

use crate::wire::BoxStream;

mod raw;
mod write;

pub use raw::BareContentServer;

const LIST_BATCH: usize = 100;

#[derive(Clone)]
pub struct ContentService {
    content: NamespacedContentStore,
    /// Where `/content/delete` goes (none when the event plugin is not up).
    exchange: Option<Arc<crated_events::Exchange>>,
}

pub fn registrations() -> Vec<Registration> {
    vec![
        Registration::new(types::SERVICE, "content-service", |ctx| async move {
            Ok(Instance::new(Arc::new(ContentService::from_context(&ctx)?)))
        })
        .requires(&[types::EVENT, types::METADATA, types::CONTENT]),
        Registration::new(types::GRPC, "content", |ctx| async move {
            let service = ctx.get_by_id::<ContentService>(types::SERVICE, "content-service")?;
            Ok(Instance::new(GrpcService::new(move |routes, limits| {
                routes.add_service(limited!(ContentServer::from_arc(service.clone()), limits));
            })))
        })
        .requires(&[types::SERVICE]),
    ]
}

fn to_api(r: ContentRecord) -> api::Info {
    api::Info {
        digest: r.digest,
        size: r.size as i64,
        created_at: Some(timestamp(r.created_at)),
        updated_at: Some(timestamp(r.updated_at)),
        labels: r.labels.into_iter().collect(),
    }
}

pub(crate) fn status_to_api(s: IngestStatus, reference: String) -> api::Status {
    api::Status {
        started_at: Some(s.started_at.into()),
        updated_at: Some(s.updated_at.into()),
        r#ref: reference,
        offset: s.offset as i64,
        total: s.total as i64,
        expected: s.expected.map(|d| d.to_string()).unwrap_or_default(),
    }
}

fn record_adaptor(r: &ContentRecord) -> impl Fn(&[String]) -> Option<String> + '_ {
    move |path: &[String]| match path.first().map(String::as_str) {
        Some("digest") => Some(r.digest.clone()),
        Some("size") => Some(r.size.to_string()),
        Some("labels") => r.labels.get(&path[1..].join(".")).cloned(),
        _ => None,
    }
}

/// The Read answer for a blob of `size` bytes: the requested range, streamed.
pub(crate) async fn read_stream(
    store: &dyn ContentStore,
    req: &api::ReadContentRequest,
    size: u64,
) -> Result<Response<BoxStream<api::ReadContentResponse>>, Status> {
    let offset = req.offset.max(0) as u64;
    if offset > size {
        return Err(Status::out_of_range(format!(
            "offset {offset} beyond size {size}"
        )));
    }
    let end = if req.size > 0 {
        offset.saturating_add(req.size as u64).min(size)
    } else {
        size
    };
    let chunks = store
        .read(&req.digest, offset, end, size)
        .await
        .map_err(|e| status(&e))?;
    let responses = futures::StreamExt::map(chunks, |chunk| match chunk {
        Ok((offset, data)) => Ok(api::ReadContentResponse {
            offset: offset as i64,
            data,
        }),
        Err(e) => Err(status(&e)),
    });
    Ok(Response::new(Box::pin(responses)))
}

/// Answers a List with `infos` in batches.
pub(crate) fn list_stream(infos: Vec<api::Info>) -> BoxStream<api::ListContentResponse> {
    let batches: Vec<Result<api::ListContentResponse, Status>> = infos
        .chunks(LIST_BATCH)
        .map(|c| Ok(api::ListContentResponse { info: c.to_vec() }))
        .collect();
    Box::pin(tokio_stream::iter(batches))
}

fn edge(e: ContentStoreError) -> Status {
    status(&e)
}

impl ContentService {
    /// The service for a plugin that requires the metadata and content plugins.
    fn from_context(ctx: &InitContext) -> Result<Self, PluginError> {
        Ok(ContentService {
            content: NamespacedContentStore::from_context(ctx)?,
            exchange: ctx.get_single::<crated_events::Exchange>(types::EVENT).ok(),
        })
    }
}

fn expected(req: &api::WriteContentRequest) -> Option<&str> {
    (!req.expected.is_empty()).then_some(req.expected.as_str())
}

/// A Write stream of one namespace.
#[tonic::async_trait]
impl write::Ingest for NamespacedIngest {
    async fn open(
        &self,
        first: &api::WriteContentRequest,
    ) -> Result<Box<dyn ContentWriter>, Status> {
        NamespacedIngest::open(self, first.total, expected(first), &first.labels)
            .await
            .map_err(edge)
    }

    /// When the expected blob is already in the namespace, a write is pointless: containerd
    /// answers AlreadyExists.
    async fn already_there(
        &self,
        req: &api::WriteContentRequest,
    ) -> Result<Option<Status>, Status> {
        if self.has(&req.expected).await {
            return Ok(Some(Status::already_exists(format!(
                "blob with expected digest {} exists",
                req.expected
            ))));
        }
        Ok(None)
    }

    async fn discard(&self) {
        NamespacedIngest::discard(self).await
    }

    async fn commit(
        &self,
        writer: Box<dyn ContentWriter>,
        digest: String,
        req: &api::WriteContentRequest,
    ) -> Result<String, Status> {
        NamespacedIngest::commit(
            self,
            writer,
            digest,
            req.total,
            expected(req),
            req.labels.clone(),
        )
        .await
        .map_err(edge)
    }
}

#[tonic::async_trait]
impl Content for ContentService {
    async fn info(
        &self,
        req: Request<api::InfoRequest>,
    ) -> Result<Response<api::InfoResponse>, Status> {
        let ns = namespace(&req)?;
        let record = self
            .content
            .info(&ns, &req.into_inner().digest)
            .await
            .map_err(edge)?;
        Ok(Response::new(api::InfoResponse {
            info: Some(to_api(record)),
        }))
    }

    async fn update(
        &self,
        req: Request<api::UpdateRequest>,
    ) -> Result<Response<api::UpdateResponse>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let info = req.info.unwrap_or_default();
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let labels = info.labels.into_iter().collect();
        let record = self
            .content
            .update(&ns, &info.digest, labels, paths)
            .await
            .map_err(edge)?;
        Ok(Response::new(api::UpdateResponse {
            info: Some(to_api(record)),
        }))
    }

    async fn list(
        &self,
        req: Request<api::ListContentRequest>,
    ) -> Result<Response<BoxStream<api::ListContentResponse>>, Status> {
        let ns = namespace(&req)?;
        let filter = filters(&req.into_inner().filters)?;
        let records = self.content.list(&ns).await.map_err(edge)?;
        let matching: Vec<api::Info> = records
            .into_iter()
            .filter(|r| filter.matches(&record_adaptor(r)))
            .map(to_api)
            .collect();
        Ok(Response::new(list_stream(matching)))
    }

    async fn delete(
        &self,
        req: Request<api::DeleteContentRequest>,
    ) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let digest = req.into_inner().digest;
        self.content.delete(&ns, &digest).await.map_err(edge)?;
        if let Some(exchange) = &self.exchange {
            exchange.publish_message(
                &ns,
                "/content/delete",
                "containerd.events.ContentDelete",
                &crated_api::containerd::events::ContentDelete { digest },
            );
        }
        Ok(Response::new(()))
    }

    async fn read(
        &self,
        req: Request<api::ReadContentRequest>,
    ) -> Result<Response<BoxStream<api::ReadContentResponse>>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let record = self.content.info(&ns, &req.digest).await.map_err(edge)?;
        read_stream(self.content.backend().as_ref(), &req, record.size).await
    }

    async fn status(
        &self,
        req: Request<api::StatusRequest>,
    ) -> Result<Response<api::StatusResponse>, Status> {
        let ns = namespace(&req)?;
        let reference = req.into_inner().r#ref;
        let st = self.content.status(&ns, &reference).await.map_err(|e| {
            let s = status(&e);
            Status::new(
                s.code(),
                format!(
                    "could not get status for ref {reference:?}: {}",
                    s.message()
                ),
            )
        })?;
        Ok(Response::new(api::StatusResponse {
            status: Some(status_to_api(st, reference.clone())),
        }))
    }

    async fn list_statuses(
        &self,
        req: Request<api::ListStatusesRequest>,
    ) -> Result<Response<api::ListStatusesResponse>, Status> {
        let ns = namespace(&req)?;
        let filter = filters(&req.into_inner().filters)?;
        let wanted = |reference: &str| {
            filter.matches(&|path: &[String]| {
                (path.first().map(String::as_str) == Some("ref")).then(|| reference.to_owned())
            })
        };
        let statuses = self
            .content
            .statuses(&ns, wanted)
            .await
            .map_err(edge)?
            .into_iter()
            .map(|(reference, st)| status_to_api(st, reference))
            .collect();
        Ok(Response::new(api::ListStatusesResponse { statuses }))
    }

    async fn write(
        &self,
        req: Request<Streaming<api::WriteContentRequest>>,
    ) -> Result<Response<BoxStream<api::WriteContentResponse>>, Status> {
        let ns = namespace(&req)?;
        let lease = lease(&req);
        let content = self.content.clone();
        Ok(Response::new(write::serve(
            req.into_inner(),
            move |first| content.ingest(&ns, lease, &first.r#ref),
        )))
    }

    async fn abort(&self, req: Request<api::AbortRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let reference = req.into_inner().r#ref;
        self.content.abort(&ns, &reference).await.map_err(edge)?;
        Ok(Response::new(()))
    }
}
