//! A content store served bare over containerd's content API: no namespaces, no metadata, no
//! labels (the store is immutable, as containerd's local store without a label store). This is
//! what a proxy content plugin of crated or containerd talks to; `crated-content` runs it.

use std::sync::Arc;

use crated_api::containerd::services::content::v1 as api;
use crated_api::containerd::services::content::v1::content_server::{Content, ContentServer};
use crated_content::{ContentError, ContentStore, ContentWriter, Info};
use tonic::{Request, Response, Status, Streaming};

use super::{list_stream, read_stream, status_to_api, write, BoxStream};
use crate::message_limits::{limited, MessageLimits};
use crate::status::{filters, status};

#[derive(Clone)]
pub struct BareContentServer {
    store: Arc<dyn ContentStore>,
}

impl BareContentServer {
    pub fn new(store: Arc<dyn ContentStore>) -> Self {
        BareContentServer { store }
    }

    /// The tonic service, with containerd's default message limits.
    pub fn into_service(self) -> ContentServer<BareContentServer> {
        limited!(ContentServer::new(self), MessageLimits::default())
    }
}

fn info_to_api(i: Info) -> api::Info {
    api::Info {
        digest: i.digest.to_string(),
        size: i.size as i64,
        created_at: Some(i.created_at.into()),
        updated_at: Some(i.updated_at.into()),
        labels: Default::default(),
    }
}

fn no_labels(digest: &str) -> Status {
    status(&ContentError::FailedPrecondition(format!(
        "update of {digest} not supported on immutable content store"
    )))
}

struct BareIngest {
    store: Arc<dyn ContentStore>,
    reference: String,
}

#[tonic::async_trait]
impl write::Ingest for BareIngest {
    async fn open(
        &self,
        first: &api::WriteContentRequest,
    ) -> Result<Box<dyn ContentWriter>, Status> {
        let expected = (!first.expected.is_empty()).then_some(first.expected.as_str());
        self.store
            .writer(&self.reference, first.total.max(0) as u64, expected)
            .await
            .map_err(|e| status(&e))
    }

    async fn already_there(
        &self,
        req: &api::WriteContentRequest,
    ) -> Result<Option<Status>, Status> {
        Ok(self.store.info(&req.expected).await.ok().map(|_| {
            Status::already_exists(format!("blob with expected digest {} exists", req.expected))
        }))
    }

    async fn discard(&self) {
        let _ = self.store.abort(&self.reference).await;
    }

    async fn commit(
        &self,
        writer: Box<dyn ContentWriter>,
        _digest: String,
        req: &api::WriteContentRequest,
    ) -> Result<String, Status> {
        if !req.labels.is_empty() {
            tracing::debug!("labels of {} dropped: the store keeps none", req.r#ref);
        }
        let expected = (!req.expected.is_empty()).then(|| req.expected.clone());
        writer
            .commit(req.total.max(0) as u64, expected)
            .await
            .map_err(|e| status(&e))
    }
}

#[tonic::async_trait]
impl Content for BareContentServer {
    async fn info(
        &self,
        req: Request<api::InfoRequest>,
    ) -> Result<Response<api::InfoResponse>, Status> {
        let info = self
            .store
            .info(&req.into_inner().digest)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(api::InfoResponse {
            info: Some(info_to_api(info)),
        }))
    }

    async fn update(
        &self,
        req: Request<api::UpdateRequest>,
    ) -> Result<Response<api::UpdateResponse>, Status> {
        let digest = req.into_inner().info.unwrap_or_default().digest;
        self.store.info(&digest).await.map_err(|e| status(&e))?;
        Err(no_labels(&digest))
    }

    async fn list(
        &self,
        req: Request<api::ListContentRequest>,
    ) -> Result<Response<BoxStream<api::ListContentResponse>>, Status> {
        let filter = filters(&req.into_inner().filters)?;
        let all = self.store.walk().await.map_err(|e| status(&e))?;
        let matching: Vec<api::Info> = all
            .into_iter()
            .map(info_to_api)
            .filter(|i| {
                filter.matches(&|path: &[String]| match path.first().map(String::as_str) {
                    Some("digest") => Some(i.digest.clone()),
                    Some("size") => Some(i.size.to_string()),
                    _ => None,
                })
            })
            .collect();
        Ok(Response::new(list_stream(matching)))
    }

    async fn delete(
        &self,
        req: Request<api::DeleteContentRequest>,
    ) -> Result<Response<()>, Status> {
        self.store
            .delete(&req.into_inner().digest)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(()))
    }

    async fn read(
        &self,
        req: Request<api::ReadContentRequest>,
    ) -> Result<Response<BoxStream<api::ReadContentResponse>>, Status> {
        let req = req.into_inner();
        let info = self.store.info(&req.digest).await.map_err(|e| status(&e))?;
        read_stream(self.store.as_ref(), &req, info.size).await
    }

    async fn status(
        &self,
        req: Request<api::StatusRequest>,
    ) -> Result<Response<api::StatusResponse>, Status> {
        let reference = req.into_inner().r#ref;
        let st = self
            .store
            .status(&reference)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(api::StatusResponse {
            status: Some(status_to_api(st, reference)),
        }))
    }

    async fn list_statuses(
        &self,
        req: Request<api::ListStatusesRequest>,
    ) -> Result<Response<api::ListStatusesResponse>, Status> {
        let filter = filters(&req.into_inner().filters)?;
        let all = self.store.list_statuses().await.map_err(|e| status(&e))?;
        let statuses = all
            .into_iter()
            .filter(|s| {
                let r = s.reference.clone();
                filter.matches(&move |path: &[String]| {
                    (path.first().map(String::as_str) == Some("ref")).then(|| r.clone())
                })
            })
            .map(|s| {
                let r = s.reference.clone();
                status_to_api(s, r)
            })
            .collect();
        Ok(Response::new(api::ListStatusesResponse { statuses }))
    }

    async fn write(
        &self,
        req: Request<Streaming<api::WriteContentRequest>>,
    ) -> Result<Response<BoxStream<api::WriteContentResponse>>, Status> {
        let store = self.store.clone();
        Ok(Response::new(write::serve(
            req.into_inner(),
            move |first| BareIngest {
                store,
                reference: first.r#ref.clone(),
            },
        )))
    }

    async fn abort(&self, req: Request<api::AbortRequest>) -> Result<Response<()>, Status> {
        self.store
            .abort(&req.into_inner().r#ref)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(()))
    }
}
