//! Transfers: `io.containerd.grpc.v1.transfer`, the gRPC front of the daemon's puller
//! (`crated_transfer`), with the streams it talks to clients through ([`streams`]). A transfer
//! is a source and a destination; the one this daemon does is containerd's pull, an OCI
//! registry into the image store, unpacked.

pub mod streams;

use std::sync::Arc;

use crated_api::containerd::services::transfer::v1 as api;
use crated_api::containerd::services::transfer::v1::transfer_server::{Transfer, TransferServer};
use crated_api::containerd::types::transfer as types;
use crated_images::{Credentials, Platform, Reference, RegistryOptions};
use crated_plugin::{types as plugin_types, Instance, Registration};
use crated_transfer::{Progress, ProgressEvent, ProgressSink, PullRequest, Puller, Unpack};
use tonic::{Request, Response, Status};

use crate::message_limits::limited;
use crate::request::{lease, namespace};
use crate::status::status;
use crate::GrpcService;
use streams::{from_any, to_any, type_name, ClientStream, StreamManager};

const OCI_REGISTRY: &str = "containerd.types.transfer.OCIRegistry";
const IMAGE_STORE: &str = "containerd.types.transfer.ImageStore";
const AUTH_REQUEST: &str = "containerd.types.transfer.AuthRequest";
const AUTH_RESPONSE: &str = "containerd.types.transfer.AuthResponse";
const PROGRESS: &str = "containerd.types.transfer.Progress";
/// Where a pull unpacks when the client names no snapshotter, as containerd on Linux.
const DEFAULT_SNAPSHOTTER: &str = "overlayfs";

pub struct TransferService {
    puller: Arc<Puller>,
    streams: Arc<StreamManager>,
}

pub fn registrations() -> Vec<Registration> {
    vec![
        Registration::new(plugin_types::GRPC, "transfer", |ctx| async move {
            let puller = ctx.get_by_id::<Puller>(plugin_types::TRANSFER, "local")?;
            let streams = ctx.get_by_id::<StreamManager>(plugin_types::STREAMING, "manager")?;
            let service = Arc::new(TransferService { puller, streams });
            Ok(Instance::new(GrpcService::new(move |routes, limits| {
                routes.add_service(limited!(TransferServer::from_arc(service.clone()), limits));
            })))
        })
        .requires(&[plugin_types::TRANSFER, plugin_types::STREAMING]),
    ]
}

/// Progress events go to the client's stream as containerd's Progress messages.
#[tonic::async_trait]
impl ProgressSink for ClientStream {
    async fn send(&self, event: ProgressEvent) {
        let message = types::Progress {
            event: event.event,
            name: event.name,
            parents: event.parents,
            progress: event.progress,
            total: event.total,
            desc: event
                .desc
                .map(|d| crated_api::containerd::types::Descriptor {
                    media_type: d.media_type,
                    digest: d.digest,
                    size: d.size,
                    annotations: d.annotations.into_iter().collect(),
                }),
        };
        let _ = ClientStream::send(self, to_any(PROGRESS, &message)).await;
    }
}

fn platform(p: Option<crated_api::containerd::types::Platform>) -> Option<Platform> {
    p.filter(|p| !p.os.is_empty() || !p.architecture.is_empty())
        .map(|p| Platform::new(&p.os, &p.architecture, &p.variant))
}

/// Credentials asked of the client over its auth stream, once per host a registry challenges.
fn credentials_from(
    stream: Arc<ClientStream>,
    reference: String,
) -> crated_images::registry::CredentialSource {
    Arc::new(move |host: String| {
        let (stream, reference) = (Arc::clone(&stream), reference.clone());
        Box::pin(async move {
            let request = types::AuthRequest {
                host,
                reference,
                wwwauthenticate: Vec::new(),
            };
            let answer = stream.request(to_any(AUTH_REQUEST, &request)).await.ok()?;
            let response: types::AuthResponse = from_any(&answer, AUTH_RESPONSE).ok()?;
            match types::AuthType::try_from(response.auth_type) {
                Ok(types::AuthType::Credentials) => Some(Credentials {
                    username: response.username,
                    secret: response.secret,
                }),
                Ok(types::AuthType::Refresh) => Some(Credentials {
                    username: String::new(),
                    secret: response.secret,
                }),
                _ => None,
            }
        })
    })
}

impl TransferService {
    fn pull_request(
        &self,
        ns: &str,
        source: types::OciRegistry,
        store: types::ImageStore,
    ) -> Result<PullRequest, Status> {
        let reference = Reference::parse(&source.reference).map_err(|e| status(&e))?;
        let resolver = source.resolver.unwrap_or_default();
        let credentials = if resolver.auth_stream.is_empty() {
            None
        } else {
            let stream = self.streams.get(ns, &resolver.auth_stream)?;
            Some(credentials_from(stream, source.reference.clone()))
        };
        let registry = RegistryOptions {
            plain_http: resolver.default_scheme == "http",
            headers: resolver.headers.into_iter().collect(),
            credentials,
            // Read by the daemon, as containerd's transfer service reads it.
            host_dir: (!resolver.host_dir.is_empty()).then(|| resolver.host_dir.into()),
        };
        let unpacks = store
            .unpacks
            .into_iter()
            .map(|u| Unpack {
                platform: platform(u.platform).unwrap_or_else(Platform::host),
                snapshotter: if u.snapshotter.is_empty() {
                    DEFAULT_SNAPSHOTTER.to_owned()
                } else {
                    u.snapshotter
                },
            })
            .collect();
        Ok(PullRequest {
            image_name: if store.name.is_empty() {
                source.reference
            } else {
                store.name
            },
            reference,
            registry,
            labels: store.labels,
            platforms: store
                .platforms
                .into_iter()
                .filter_map(|p| platform(Some(p)))
                .collect(),
            unpacks,
        })
    }
}

#[tonic::async_trait]
impl Transfer for TransferService {
    async fn transfer(&self, req: Request<api::TransferRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let lease = lease(&req);
        let req = req.into_inner();
        let (Some(source), Some(destination)) = (req.source, req.destination) else {
            return Err(Status::invalid_argument(
                "a transfer needs a source and a destination",
            ));
        };
        if (type_name(&source), type_name(&destination)) != (OCI_REGISTRY, IMAGE_STORE) {
            return Err(Status::unimplemented(format!(
                "method Transfer not implemented for {} to {}",
                source.type_url, destination.type_url
            )));
        }
        let progress_id = req.options.map(|o| o.progress_stream).unwrap_or_default();
        let progress = if progress_id.is_empty() {
            Progress::default()
        } else {
            Progress::new(self.streams.get(&ns, &progress_id)?)
        };
        let pulled = async {
            let request = self.pull_request(
                &ns,
                from_any(&source, OCI_REGISTRY)?,
                from_any(&destination, IMAGE_STORE)?,
            )?;
            self.puller
                .pull(&ns, lease, request, progress)
                .await
                .map_err(|e| status(&e))
        }
        .await;
        if !progress_id.is_empty() {
            self.streams.close(&ns, &progress_id);
        }
        pulled.map(|image| {
            tracing::info!(image = image.name, digest = image.target.digest, "pulled");
            Response::new(())
        })
    }
}
