//! Content: `io.containerd.content.v1.content` (the local store), and the namespaced service over
//! it, `io.containerd.service.v1.content-service` + `io.containerd.grpc.v1.content`. A namespace
//! sees a blob once it has a record of it in the metadata store; with the `shared` policy a
//! namespace may claim a blob another namespace has without writing it again.

use std::collections::BTreeMap;
use std::sync::Arc;

use crated_api::containerd::services::content::v1 as api;
use crated_api::containerd::services::content::v1::content_server::{Content, ContentServer};
use crated_api::containerd::services::content::v1::WriteAction;
use crated_content::{ContentError, IngestStatus, LocalStore, Writer};
use crated_metadata::{ContentRecord, MetadataStore};
use crated_plugin::{types, Instance, PluginError, Registration};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::edge::{blocking, filters, lease, namespace, status, timestamp};
use crate::GrpcService;

type BoxStream<T> =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send + 'static>>;

const READ_CHUNK: usize = 1 << 20;
const LIST_BATCH: usize = 100;

#[derive(Clone)]
pub struct ContentService {
    db: Arc<MetadataStore>,
    store: Arc<LocalStore>,
}

pub fn registrations() -> Vec<Registration> {
    vec![
        Registration::new(types::CONTENT, "content", |ctx| async move {
            let root = ctx.root()?;
            let store = tokio::task::spawn_blocking(move || LocalStore::open(&root))
                .await
                .map_err(PluginError::failed)?
                .map_err(PluginError::failed)?;
            Ok(Instance::new(Arc::new(store)))
        }),
        Registration::new(types::SERVICE, "content-service", |ctx| async move {
            let db = ctx.get_single::<MetadataStore>(types::METADATA)?;
            let store = ctx.get_single::<LocalStore>(types::CONTENT)?;
            Ok(Instance::new(Arc::new(ContentService { db, store })))
        })
        .requires(&[types::METADATA, types::CONTENT]),
        Registration::new(types::GRPC, "content", |ctx| async move {
            let service = ctx.get_by_id::<ContentService>(types::SERVICE, "content-service")?;
            Ok(Instance::new(GrpcService::new(move |routes| {
                routes.add_service(
                    ContentServer::from_arc(service.clone())
                        .max_decoding_message_size(usize::MAX)
                        .max_encoding_message_size(usize::MAX),
                );
            })))
        })
        .requires(&[types::SERVICE]),
    ]
}

/// Ingest refs are kept per namespace in the one local store.
fn backend_ref(ns: &str, reference: &str) -> String {
    format!("{ns}/{reference}")
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

fn status_to_api(s: IngestStatus, reference: String) -> api::Status {
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

/// Waits for a write handed to a blocking thread and gives its writer back.
async fn finish(
    write: tokio::task::JoinHandle<Result<Writer, ContentError>>,
) -> Result<Writer, Status> {
    write
        .await
        .map_err(|e| Status::internal(format!("write task failed: {e}")))?
        .map_err(|e| status(&e))
}

fn check_digest(digest: &str) -> Result<(), Status> {
    crated_content::validate_digest(digest).map_err(|e| status(&e))
}

impl ContentService {
    async fn record(&self, ns: &str, digest: &str) -> Result<ContentRecord, Status> {
        check_digest(digest)?;
        let (db, ns, digest) = (self.db.clone(), ns.to_owned(), digest.to_owned());
        blocking(move || db.content_get(&ns, &digest)).await
    }

    /// Records a committed (or claimed) blob in the namespace, under the lease if any.
    async fn add_record(
        &self,
        ns: &str,
        digest: String,
        size: u64,
        labels: BTreeMap<String, String>,
        lease: Option<String>,
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
        blocking(move || db.content_add(&ns, &record, lease.as_deref())).await
    }

    /// One Write stream, as containerd's service runs it: the first message names the ref and
    /// locks its writer; each message gets one answer. A plain write is handed to a blocking
    /// thread and answered as accepted, so the next message is received while the data is
    /// written and hashed; every other action, and the end of the stream, first waits for it
    /// (a failed write fails the next answer).
    async fn write_session(
        &self,
        ns: String,
        lease: Option<String>,
        inbound: &mut Streaming<api::WriteContentRequest>,
        out: &mpsc::Sender<Result<api::WriteContentResponse, Status>>,
    ) -> Result<(), Status> {
        let Some(mut req) = inbound.message().await? else {
            return Ok(());
        };
        if req.r#ref.is_empty() {
            return Err(Status::invalid_argument(
                "first message must have a reference",
            ));
        }
        let reference = backend_ref(&ns, &req.r#ref);
        let (store, r, total, expected) = (
            self.store.clone(),
            reference.clone(),
            req.total.max(0) as u64,
            req.expected.clone(),
        );
        let mut writer: Option<Writer> =
            Some(blocking(move || store.writer(&r, total, Some(&expected))).await?);
        let mut pending: Option<tokio::task::JoinHandle<Result<Writer, ContentError>>> = None;
        loop {
            if let Some(write) = pending.take() {
                writer = Some(finish(write).await?);
            }
            let Some(mut w) = writer.take() else {
                return Err(Status::failed_precondition("writer already committed"));
            };
            let mut msg = api::WriteContentResponse {
                action: req.action,
                offset: w.offset() as i64,
                ..Default::default()
            };
            if !req.expected.is_empty() {
                if let Some(done) = self.already_there(&ns, &req, &lease).await? {
                    drop(w);
                    let (store, r) = (self.store.clone(), reference.clone());
                    if let Err(e) = blocking(move || store.abort(&r)).await {
                        tracing::debug!("aborting ingest {}: {}", reference, e.message());
                    }
                    return Err(done);
                }
                w.set_expected(&req.expected).map_err(|e| status(&e))?;
            }
            w.set_total(req.total.max(0) as u64);
            match WriteAction::try_from(req.action) {
                Ok(WriteAction::Stat) => {
                    let st = w.status();
                    msg.digest = w.digest().to_string();
                    msg.started_at = Some(st.started_at.into());
                    msg.updated_at = Some(st.updated_at.into());
                    msg.total = st.total as i64;
                    writer = Some(w);
                }
                Ok(action @ (WriteAction::Write | WriteAction::Commit)) => {
                    let offset = w.offset();
                    if req.offset > 0 && req.offset as u64 != offset {
                        return Err(Status::out_of_range(format!(
                            "write @{} must occur at current offset {offset}",
                            req.offset
                        )));
                    }
                    let reset = req.offset == 0 && offset > 0;
                    let data = std::mem::take(&mut req.data);
                    let accepted = if reset { 0 } else { offset } + data.len() as u64;
                    let work = move || -> Result<Writer, ContentError> {
                        if reset {
                            w.truncate()?;
                        }
                        w.write(&data)?;
                        Ok(w)
                    };
                    if action == WriteAction::Write {
                        pending = Some(tokio::task::spawn_blocking(work));
                        msg.offset = accepted as i64;
                    } else {
                        let w = finish(tokio::task::spawn_blocking(work)).await?;
                        msg.offset = w.offset() as i64;
                        msg.digest = w.digest().to_string();
                        let size = w.offset();
                        let total = req.total.max(0) as u64;
                        let expected = req.expected.clone();
                        let store = self.store.clone();
                        let committed = tokio::task::spawn_blocking(move || {
                            store.commit(w, total, Some(&expected))
                        })
                        .await
                        .map_err(|e| Status::internal(e.to_string()))?;
                        let digest = match committed {
                            Ok(d) => d.to_string(),
                            // Same bytes already in the store (checked against the digest):
                            // this namespace still gets its record.
                            Err(ContentError::AlreadyExists(_)) => msg.digest.clone(),
                            Err(e) => return Err(status(&e)),
                        };
                        let labels = req.labels.clone().into_iter().collect();
                        self.add_record(&ns, digest, size, labels, lease.clone())
                            .await?;
                    }
                }
                Err(_) => {
                    return Err(Status::invalid_argument(format!(
                        "unknown write action {}",
                        req.action
                    )))
                }
            }
            if out.send(Ok(msg)).await.is_err() {
                // The client went away; the ingest stays resumable once its data is written.
                if let Some(write) = pending.take() {
                    finish(write).await?;
                }
                return Ok(());
            }
            match inbound.message().await? {
                Some(next) => req = next,
                None => {
                    if let Some(write) = pending.take() {
                        finish(write).await?;
                    }
                    return Ok(());
                }
            }
            if writer.is_none() && pending.is_none() {
                return Err(Status::failed_precondition("writer already committed"));
            }
        }
    }

    /// When the expected blob is already in the namespace (or, with the shared policy, in the
    /// store), the write is pointless: containerd answers AlreadyExists, after recording a
    /// shared blob in this namespace.
    async fn already_there(
        &self,
        ns: &str,
        req: &api::WriteContentRequest,
        lease: &Option<String>,
    ) -> Result<Option<Status>, Status> {
        let exists =
            || Status::already_exists(format!("blob with expected digest {} exists", req.expected));
        if self.record(ns, &req.expected).await.is_ok() {
            return Ok(Some(exists()));
        }
        if !self.db.shared_content() {
            return Ok(None);
        }
        let (store, digest) = (self.store.clone(), req.expected.clone());
        let Ok(info) = blocking(move || store.info(&digest)).await else {
            return Ok(None);
        };
        if req.total > 0 && info.size != req.total as u64 {
            return Ok(None);
        }
        let labels = req.labels.clone().into_iter().collect();
        match self
            .add_record(ns, req.expected.clone(), info.size, labels, lease.clone())
            .await
        {
            Ok(()) => Ok(Some(exists())),
            Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(Some(exists())),
            Err(s) => Err(s),
        }
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
        let batches: Vec<Result<api::ListContentResponse, Status>> = matching
            .chunks(LIST_BATCH)
            .map(|c| Ok(api::ListContentResponse { info: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn delete(
        &self,
        req: Request<api::DeleteContentRequest>,
    ) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let digest = req.into_inner().digest;
        check_digest(&digest)?;
        let db = self.db.clone();
        // The blob itself stays on disk until garbage collection, as in containerd.
        blocking(move || db.content_delete(&ns, &digest)).await?;
        Ok(Response::new(()))
    }

    async fn read(
        &self,
        req: Request<api::ReadContentRequest>,
    ) -> Result<Response<BoxStream<api::ReadContentResponse>>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let record = self.record(&ns, &req.digest).await?;
        let offset = req.offset.max(0) as u64;
        if offset > record.size {
            return Err(Status::out_of_range(format!(
                "offset {offset} beyond size {}",
                record.size
            )));
        }
        let end = if req.size > 0 {
            (offset + req.size as u64).min(record.size)
        } else {
            record.size
        };
        let store = self.store.clone();
        let digest = req.digest.clone();
        // A read from the start (how clients read a blob) first checks the data against its
        // digest, unless this very file was checked already.
        let file = blocking(move || {
            if offset == 0 {
                store.open_verified(&digest)
            } else {
                store.open_blob(&digest)
            }
        })
        .await?;
        let (tx, rx) = mpsc::channel(4);
        // A read of the whole blob is checked against its digest on the way: the last chunk is
        // only sent once the data proved to be what it claims, so a blob corrupted on disk is
        // reported, never served as valid.
        let whole = offset == 0 && end == record.size;
        tokio::task::spawn_blocking(move || {
            use sha2::Digest as _;
            use std::os::unix::fs::FileExt;
            let mut hasher = whole.then(sha2::Sha256::new);
            let mut at = offset;
            while at < end {
                let len = ((end - at) as usize).min(READ_CHUNK);
                let mut data = vec![0u8; len];
                let item = match file.read_at(&mut data, at) {
                    Ok(0) => Err(Status::data_loss(format!(
                        "content {} is shorter on disk than its recorded size {}",
                        req.digest, record.size
                    ))),
                    Ok(n) => {
                        data.truncate(n);
                        Ok(api::ReadContentResponse {
                            offset: at as i64,
                            data,
                        })
                    }
                    Err(e) => Err(Status::internal(format!("reading {}: {e}", req.digest))),
                };
                let item = match (item, hasher.as_mut()) {
                    (Ok(r), Some(h)) => {
                        h.update(&r.data);
                        let last = at + r.data.len() as u64 >= end;
                        let actual = last.then(|| format!("sha256:{:x}", h.clone().finalize()));
                        match actual {
                            Some(actual) if actual != req.digest => {
                                Err(Status::data_loss(format!(
                                    "content {} is corrupt on disk: its data has digest {actual}",
                                    req.digest
                                )))
                            }
                            _ => Ok(r),
                        }
                    }
                    (item, _) => item,
                };
                let failed = item.is_err();
                if let Ok(ref r) = item {
                    at += r.data.len() as u64;
                }
                if tx.blocking_send(item).is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn status(
        &self,
        req: Request<api::StatusRequest>,
    ) -> Result<Response<api::StatusResponse>, Status> {
        let ns = namespace(&req)?;
        let reference = req.into_inner().r#ref;
        let (store, r) = (self.store.clone(), backend_ref(&ns, &reference));
        let st = blocking(move || store.status(&r)).await.map_err(|s| {
            Status::new(
                s.code(),
                format!(
                    "could not get status for ref {reference:?}: {}",
                    s.message()
                ),
            )
        })?;
        Ok(Response::new(api::StatusResponse {
            status: Some(status_to_api(st, reference)),
        }))
    }

    async fn list_statuses(
        &self,
        req: Request<api::ListStatusesRequest>,
    ) -> Result<Response<api::ListStatusesResponse>, Status> {
        let ns = namespace(&req)?;
        let filter = filters(&req.into_inner().filters)?;
        let store = self.store.clone();
        let all = blocking(move || store.list_statuses()).await?;
        let prefix = format!("{ns}/");
        let statuses = all
            .into_iter()
            .filter_map(|s| {
                let reference = s.reference.strip_prefix(&prefix)?.to_owned();
                let r = reference.clone();
                let adaptor = move |path: &[String]| {
                    (path.first().map(String::as_str) == Some("ref")).then(|| r.clone())
                };
                filter
                    .matches(&adaptor)
                    .then(|| status_to_api(s, reference))
            })
            .collect();
        Ok(Response::new(api::ListStatusesResponse { statuses }))
    }

    async fn write(
        &self,
        req: Request<Streaming<api::WriteContentRequest>>,
    ) -> Result<Response<BoxStream<api::WriteContentResponse>>, Status> {
        let ns = namespace(&req)?;
        let lease = lease(&req);
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let service = self.clone();
        tokio::spawn(async move {
            if let Err(e) = service.write_session(ns, lease, &mut inbound, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn abort(&self, req: Request<api::AbortRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let (store, r) = (
            self.store.clone(),
            backend_ref(&ns, &req.into_inner().r#ref),
        );
        blocking(move || store.abort(&r)).await?;
        Ok(Response::new(()))
    }
}
