//! Content: `io.containerd.content.v1.content` (the local store), and the namespaced service over
//! it, `io.containerd.service.v1.content-service` + `io.containerd.grpc.v1.content`. A namespace
//! sees a blob once it has a record of it in the metadata store; with the `shared` policy a
//! namespace may claim a blob another namespace has without writing it again (see
//! [`shared`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use crated_api::containerd::services::content::v1 as api;
use crated_api::containerd::services::content::v1::content_server::{Content, ContentServer};
use crated_content::{ContentError, ContentStore, ContentWriter, IngestStatus, LocalStore};
use crated_metadata::{Backend, ContentRecord, MetadataStore};
use crated_plugin::{types, InitContext, Instance, PluginError, Registration};
use tonic::{Request, Response, Status, Streaming};

use crate::edge::{blocking, filters, lease, namespace, status, timestamp};
use crate::message_limits::limited;
use crate::GrpcService;

use crate::edge::BoxStream;

mod blob;
mod raw;
mod shared;
mod write;

pub use raw::BareContentServer;

const LIST_BATCH: usize = 100;

#[derive(Clone)]
pub struct ContentService {
    db: Arc<MetadataStore>,
    store: Arc<dyn ContentStore>,
    /// Where `/content/delete` goes (none when the event plugin is not up).
    exchange: Option<Arc<crated_events::Exchange>>,
}

pub fn registrations() -> Vec<Registration> {
    vec![
        Registration::new(types::CONTENT, "content", |ctx| async move {
            let root = ctx.root()?;
            let store = tokio::task::spawn_blocking(move || LocalStore::open(&root))
                .await
                .map_err(PluginError::failed)?
                .map_err(PluginError::failed)?;
            let store: Arc<dyn ContentStore> = Arc::new(store);
            Ok(Instance::new(Arc::new(store)))
        }),
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

fn check_digest(digest: &str) -> Result<(), Status> {
    crated_content::validate_digest(digest).map_err(|e| status(&e))
}

impl ContentService {
    /// The namespaced service for a plugin that requires the metadata and content plugins.
    pub(crate) fn from_context(ctx: &InitContext) -> Result<Self, PluginError> {
        let db = ctx.get_single::<MetadataStore>(types::METADATA)?;
        // The first content store that started, as containerd's metadata plugin picks it:
        // a proxy store serves when the local one is disabled.
        let store = ctx.get_single::<Arc<dyn ContentStore>>(types::CONTENT)?;
        Ok(ContentService {
            db,
            store: Arc::clone(&store),
            exchange: ctx.get_single::<crated_events::Exchange>(types::EVENT).ok(),
        })
    }

    async fn record(&self, ns: &str, digest: &str) -> Result<ContentRecord, Status> {
        check_digest(digest)?;
        let (db, ns, digest) = (self.db.clone(), ns.to_owned(), digest.to_owned());
        blocking(move || db.content_get(&ns, &digest)).await
    }

    /// Records a committed (or claimed) blob in the namespace, under the lease if any, ending
    /// the ingest that wrote it.
    async fn add_record(
        &self,
        ns: &str,
        digest: String,
        size: u64,
        labels: BTreeMap<String, String>,
        lease: Option<String>,
        ingest: Option<String>,
    ) -> Result<(), Status> {
        let now = crated_metadata::now_nanos();
        let record = ContentRecord {
            digest,
            size,
            created_at: now,
            updated_at: now,
            labels,
        };
        let (db, ns) = (self.db.clone(), ns.to_owned());
        blocking(move || db.content_add(&ns, &record, lease.as_deref(), ingest.as_deref())).await
    }

    /// When the expected blob is already in the namespace, a write is pointless: containerd
    /// answers AlreadyExists.
    async fn already_there(
        &self,
        ns: &str,
        req: &api::WriteContentRequest,
    ) -> Result<Option<Status>, Status> {
        if self.record(ns, &req.expected).await.is_ok() {
            return Ok(Some(Status::already_exists(format!(
                "blob with expected digest {} exists",
                req.expected
            ))));
        }
        Ok(None)
    }

    /// With the shared policy, the size of blob `digest` when the store has it (for another
    /// namespace) and it is the size the writer declared, if any.
    async fn shared_blob(&self, digest: &str, declared: i64) -> Option<u64> {
        if digest.is_empty() || !self.db.shared_content() {
            return None;
        }
        let info = self.store.info(digest).await.ok()?;
        (declared <= 0 || info.size == declared as u64).then_some(info.size)
    }

    fn drop_ingest_record(
        &self,
        ns: &str,
        reference: &str,
    ) -> impl std::future::Future<Output = ()> {
        let (db, ns, r) = (self.db.clone(), ns.to_owned(), reference.to_owned());
        async move {
            let _ = blocking(move || db.ingest_remove(&ns, &r)).await;
        }
    }
}

/// A Write stream of one namespace: its ingest is recorded (under the call's lease, or
/// expiring), and the committed blob recorded in the namespace.
struct NamespacedIngest {
    service: ContentService,
    ns: String,
    lease: Option<String>,
    reference: String,
    backend_ref: std::sync::Mutex<String>,
}

#[tonic::async_trait]
impl write::Ingest for NamespacedIngest {
    async fn open(
        &self,
        first: &api::WriteContentRequest,
    ) -> Result<Box<dyn ContentWriter>, Status> {
        let expires_at = first
            .labels
            .get(crated_metadata::gc::LABEL_EXPIRE)
            .and_then(|v| crated_metadata::gc::parse_expire(v));
        // Held from the record to the writer's start, so GC sees the ingest or none of it.
        let _start = self.service.db.writing_to(&Backend::Content).await;
        let (db, ns, r, lease) = (
            self.service.db.clone(),
            self.ns.clone(),
            self.reference.clone(),
            self.lease.clone(),
        );
        let (record, created) =
            blocking(move || db.ingest_open(&ns, &r, lease.as_deref(), expires_at)).await?;
        record
            .backend_ref
            .clone_into(&mut self.backend_ref.lock().unwrap_or_else(|p| p.into_inner()));
        let expected = (!first.expected.is_empty()).then_some(first.expected.as_str());
        if let Some(size) = self.service.shared_blob(&first.expected, first.total).await {
            return Ok(Box::new(shared::SharedBlobWriter::new(
                self.service.store.clone(),
                record.backend_ref,
                first.expected.clone(),
                size,
            )));
        }
        let opened = self
            .service
            .store
            .writer(&record.backend_ref, first.total.max(0) as u64, expected)
            .await;
        if opened.is_err() && created {
            // Nothing was written under this record: it must not hold the ref for a day. (A
            // record that was there before belongs to a writer that may still be at work.)
            self.service
                .drop_ingest_record(&self.ns, &self.reference)
                .await;
        }
        opened.map_err(|e| status(&e))
    }

    async fn already_there(
        &self,
        req: &api::WriteContentRequest,
    ) -> Result<Option<Status>, Status> {
        self.service.already_there(&self.ns, req).await
    }

    async fn discard(&self) {
        self.service
            .drop_ingest_record(&self.ns, &self.reference)
            .await;
        let backend_ref = self
            .backend_ref
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Err(e) = self.service.store.abort(&backend_ref).await {
            tracing::debug!("aborting ingest {backend_ref}: {e}");
        }
    }

    async fn commit(
        &self,
        writer: Box<dyn ContentWriter>,
        digest: String,
        req: &api::WriteContentRequest,
    ) -> Result<String, Status> {
        let size = writer.offset();
        let expected = (!req.expected.is_empty()).then(|| req.expected.clone());
        // Held from the backend's commit to the record, so GC never sees the blob unrecorded.
        let _commit = self.service.db.writing_to(&Backend::Content).await;
        let digest = match writer.commit(req.total.max(0) as u64, expected).await {
            Ok(d) => d,
            // Same bytes already in the store (checked against the digest): this namespace
            // still gets its record.
            Err(ContentError::AlreadyExists(_)) => digest,
            Err(e) => return Err(status(&e)),
        };
        let labels = req.labels.clone().into_iter().collect();
        let added = self
            .service
            .add_record(
                &self.ns,
                digest.clone(),
                size,
                labels,
                self.lease.clone(),
                Some(self.reference.clone()),
            )
            .await;
        if let Err(s) = added {
            if s.code() == tonic::Code::AlreadyExists {
                self.service
                    .drop_ingest_record(&self.ns, &self.reference)
                    .await;
            }
            return Err(s);
        }
        Ok(digest)
    }
}

#[tonic::async_trait]
impl Content for ContentService {
    async fn info(
        &self,
        req: Request<api::InfoRequest>,
    ) -> Result<Response<api::InfoResponse>, Status> {
        let ns = namespace(&req)?;
        let record = self.record(&ns, &req.into_inner().digest).await?;
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
        check_digest(&info.digest)?;
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let labels = info.labels.into_iter().collect();
        let db = self.db.clone();
        let record =
            blocking(move || db.content_update(&ns, &info.digest, &labels, &paths)).await?;
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
        let db = self.db.clone();
        let records = blocking(move || db.content_list(&ns)).await?;
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
        check_digest(&digest)?;
        let db = self.db.clone();
        let (ns2, deleted) = (ns.clone(), digest.clone());
        // The blob itself stays on disk until garbage collection, as in containerd.
        blocking(move || db.content_delete(&ns2, &digest)).await?;
        if let Some(exchange) = &self.exchange {
            exchange.publish_message(
                &ns,
                "/content/delete",
                "containerd.events.ContentDelete",
                &crated_api::containerd::events::ContentDelete { digest: deleted },
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
        let record = self.record(&ns, &req.digest).await?;
        read_stream(self.store.as_ref(), &req, record.size).await
    }

    async fn status(
        &self,
        req: Request<api::StatusRequest>,
    ) -> Result<Response<api::StatusResponse>, Status> {
        let ns = namespace(&req)?;
        let reference = req.into_inner().r#ref;
        let context = |s: Status| {
            Status::new(
                s.code(),
                format!(
                    "could not get status for ref {reference:?}: {}",
                    s.message()
                ),
            )
        };
        let (db, r) = (self.db.clone(), reference.clone());
        let record = blocking(move || db.ingest_get(&ns, &r))
            .await
            .map_err(context)?;
        let st = self
            .store
            .status(&record.backend_ref)
            .await
            .map_err(|e| context(status(&e)))?;
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
        let db = self.db.clone();
        let records = blocking(move || db.ingest_list(&ns)).await?;
        let mut statuses = Vec::new();
        for record in records {
            let r = record.reference.clone();
            let adaptor = move |path: &[String]| {
                (path.first().map(String::as_str) == Some("ref")).then(|| r.clone())
            };
            if !filter.matches(&adaptor) {
                continue;
            }
            // A record whose writer never wrote anything has no backend status yet.
            if let Ok(st) = self.store.status(&record.backend_ref).await {
                statuses.push(status_to_api(st, record.reference));
            }
        }
        Ok(Response::new(api::ListStatusesResponse { statuses }))
    }

    async fn write(
        &self,
        req: Request<Streaming<api::WriteContentRequest>>,
    ) -> Result<Response<BoxStream<api::WriteContentResponse>>, Status> {
        let ns = namespace(&req)?;
        let lease = lease(&req);
        let service = self.clone();
        Ok(Response::new(write::serve(
            req.into_inner(),
            move |first| NamespacedIngest {
                service,
                ns,
                lease,
                reference: first.r#ref.clone(),
                backend_ref: Default::default(),
            },
        )))
    }

    async fn abort(&self, req: Request<api::AbortRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let reference = req.into_inner().r#ref;
        let db = self.db.clone();
        let record = blocking(move || db.ingest_remove(&ns, &reference)).await?;
        match self.store.abort(&record.backend_ref).await {
            Ok(()) | Err(ContentError::NotFound(_)) => Ok(Response::new(())),
            Err(e) => Err(status(&e)),
        }
    }
}
