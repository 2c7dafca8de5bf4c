//! Diff: `io.containerd.service.v1.diff-service` + `io.containerd.grpc.v1.diff`. The service
//! feeds the differ blobs from the namespaced content store and writes the layers it computes
//! back into it; the differ itself only sees streams and mounts.

use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use crated_api::containerd::services::diff::v1 as api;
use crated_api::containerd::services::diff::v1::diff_server::{Diff, DiffServer};
use crated_api::containerd::types::Descriptor;
use crated_content::ChunkStream;
use crated_diff::media::{LABEL_UNCOMPRESSED, LAYER_TAR};
use crated_diff::{ChunkReader, Compression, WalkingDiffer};
use crated_metadata::NamespacedContentStore;
use crated_plugin::{types, Instance, PluginError, Registration};
use crated_snapshots::wire::mounts_from_api;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::message_limits::limited;
use crate::request::{lease, namespace};
use crate::status::status;
use crate::GrpcService;

/// containerd's keys for the diff service.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DiffServiceConfig {
    /// The differs to use, by id, first one loaded wins.
    pub default: Vec<String>,
}

impl Default for DiffServiceConfig {
    fn default() -> Self {
        DiffServiceConfig {
            default: vec!["walking".into()],
        }
    }
}

pub struct DiffService {
    content: NamespacedContentStore,
    differ: Arc<WalkingDiffer>,
}

pub fn registrations() -> Vec<Registration> {
    vec![
        Registration::new(types::SERVICE, "diff-service", |mut ctx| async move {
            let config: DiffServiceConfig = ctx.config()?;
            let differ = config
                .default
                .iter()
                .find_map(|id| ctx.get_by_id::<WalkingDiffer>(types::DIFF, id).ok())
                .ok_or_else(|| {
                    PluginError::failed(format!("no differ of {:?} is loaded", config.default))
                })?;
            Ok(Instance::new(Arc::new(DiffService {
                content: NamespacedContentStore::from_context(&ctx)?,
                differ,
            })))
        })
        .requires(&[types::DIFF, types::METADATA, types::CONTENT])
        .with_config::<DiffServiceConfig>(),
        Registration::new(types::GRPC, "diff", |ctx| async move {
            let service = ctx.get_by_id::<DiffService>(types::SERVICE, "diff-service")?;
            Ok(Instance::new(GrpcService::new(move |routes, limits| {
                routes.add_service(limited!(DiffServer::from_arc(service.clone()), limits));
            })))
        })
        .requires(&[types::SERVICE]),
    ]
}

/// A blob's chunk stream as a reader for a blocking thread. A failure of the stream (a blob
/// that turns out not to match its digest, say) is kept in `failure`, so the call reports it
/// as such rather than as the read error the differ saw.
fn blocking_reader(
    mut chunks: ChunkStream,
    failure: Arc<Mutex<Option<Status>>>,
) -> ChunkReader<impl FnMut() -> Option<io::Result<Vec<u8>>>> {
    let runtime = tokio::runtime::Handle::current();
    ChunkReader::new(move || {
        Some(match runtime.block_on(chunks.next())? {
            Ok((_, data)) => Ok(data),
            Err(e) => {
                *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(status(&e));
                Err(io::Error::other(e.to_string()))
            }
        })
    })
}

/// Hands what is written to an async task in 1 MiB chunks.
struct ChunkWriter {
    tx: mpsc::Sender<Vec<u8>>,
    buffer: Vec<u8>,
}

const WRITE_CHUNK: usize = 1 << 20;

impl ChunkWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(WRITE_CHUNK));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the blob writer stopped"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(buf);
        if self.buffer.len() >= WRITE_CHUNK {
            self.send()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

fn descriptor(media_type: &str, digest: String, size: u64) -> Descriptor {
    Descriptor {
        media_type: media_type.to_owned(),
        digest,
        size: size as i64,
        annotations: HashMap::new(),
    }
}

fn task_failed(e: tokio::task::JoinError) -> Status {
    Status::internal(format!("diff task failed: {e}"))
}

#[tonic::async_trait]
impl Diff for DiffService {
    async fn apply(
        &self,
        req: Request<api::ApplyRequest>,
    ) -> Result<Response<api::ApplyResponse>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let desc = req
            .diff
            .ok_or_else(|| Status::invalid_argument("a diff descriptor is required"))?;
        let (chunks, _) = self
            .content
            .read(&ns, &desc.digest, 0)
            .await
            .map_err(|e| status(&e))?;
        let failure = Arc::new(Mutex::new(None));
        let reader = blocking_reader(chunks, Arc::clone(&failure));
        let mounts = mounts_from_api(req.mounts);
        let differ = Arc::clone(&self.differ);
        let started = std::time::Instant::now();
        let applied =
            tokio::task::spawn_blocking(move || differ.apply(&desc.media_type, &mounts, reader))
                .await
                .map_err(task_failed)?;
        let applied = match applied {
            Ok(a) => a,
            Err(e) => {
                let stream_failure = failure.lock().unwrap_or_else(|p| p.into_inner()).take();
                return Err(stream_failure.unwrap_or_else(|| status(&e)));
            }
        };
        tracing::debug!(
            diff_id = applied.diff_id,
            size = applied.size,
            elapsed = ?started.elapsed(),
            "layer applied"
        );
        Ok(Response::new(api::ApplyResponse {
            applied: Some(descriptor(LAYER_TAR, applied.diff_id, applied.size)),
        }))
    }

    async fn diff(
        &self,
        req: Request<api::DiffRequest>,
    ) -> Result<Response<api::DiffResponse>, Status> {
        let ns = namespace(&req)?;
        let lease = lease(&req);
        let req = req.into_inner();
        let media_type = if req.media_type.is_empty() {
            Compression::Gzip.layer_media_type().to_owned()
        } else {
            req.media_type.clone()
        };
        let compression = Compression::of_media_type(&media_type).map_err(|e| status(&e))?;
        let reference = if req.r#ref.is_empty() {
            format!("diff-{}", uuid::Uuid::new_v4().simple())
        } else {
            req.r#ref.clone()
        };
        let mut ingest = self
            .content
            .ingest_blob(&ns, lease, &reference)
            .await
            .map_err(|e| status(&e))?;
        let (tx, mut rx) = mpsc::channel(4);
        let (left, right) = (mounts_from_api(req.left), mounts_from_api(req.right));
        let differ = Arc::clone(&self.differ);
        let job = tokio::task::spawn_blocking(move || {
            let mut out = ChunkWriter {
                tx,
                buffer: Vec::with_capacity(WRITE_CHUNK),
            };
            let compared = differ.compare(&left, &right, compression, &mut out)?;
            out.flush()
                .map_err(crated_diff::DiffError::io("writing the layer"))?;
            Ok::<_, crated_diff::DiffError>(compared)
        });
        let mut written = Ok(());
        while let Some(chunk) = rx.recv().await {
            if let Err(e) = ingest.write(chunk).await {
                written = Err(e);
                break;
            }
        }
        drop(rx);
        let compared = job.await.map_err(task_failed)?;
        let compared = match (written, compared) {
            (Ok(()), Ok(c)) => c,
            (Err(e), _) => {
                ingest.abort().await;
                return Err(status(&e));
            }
            (Ok(()), Err(e)) => {
                ingest.abort().await;
                return Err(status(&e));
            }
        };
        let mut labels = req.labels;
        labels.insert(LABEL_UNCOMPRESSED.to_owned(), compared.diff_id);
        let (digest, size) = ingest.commit(labels).await.map_err(|e| status(&e))?;
        Ok(Response::new(api::DiffResponse {
            diff: Some(descriptor(&media_type, digest, size)),
        }))
    }
}
