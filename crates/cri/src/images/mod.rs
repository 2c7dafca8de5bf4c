//! `runtime.v1.ImageService`: images in namespace `k8s.io`, the same records `ctr -n k8s.io`
//! sees. Reads go to the metadata and content stores; changes go through the images service,
//! so they publish containerd's events as any client's would.

mod pull;
pub mod resolve;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crated_api::containerd::services::images::v1 as images_api;
use crated_api::containerd::services::images::v1::images_server::Images;
use crated_metadata::MetadataStore;
use crated_services::images::ImagesService;
use crated_services::status::status;
use crated_snapshots::Snapshotter;
use k8s_cri::v1 as cri;
use tonic::{Request, Response, Status};

use crate::config::CriConfig;
use crate::{in_namespace, CriError, NAMESPACE};
use crated_transfer::Puller;
pub use resolve::{CriImage, Resolver};

/// What the image filesystem holds, as last measured.
#[derive(Debug, Clone, Copy, Default)]
struct FsUsage {
    at: Option<SystemTime>,
    bytes: u64,
    inodes: u64,
}

pub struct CriImages {
    config: Arc<CriConfig>,
    db: Arc<MetadataStore>,
    images: Arc<ImagesService>,
    /// None when the transfer plugin is disabled: PullImage then fails, naming why.
    puller: Option<Arc<Puller>>,
    resolver: Resolver,
    /// `<root>/io.containerd.snapshotter.v1.<snapshotter>`: the image filesystem's mountpoint.
    snapshotter_root: PathBuf,
    usage: Arc<Mutex<FsUsage>>,
}

impl CriImages {
    pub fn new(
        config: Arc<CriConfig>,
        db: Arc<MetadataStore>,
        images: Arc<ImagesService>,
        puller: Option<Arc<Puller>>,
        resolver: Resolver,
        snapshotter_root: PathBuf,
    ) -> Self {
        CriImages {
            config,
            db,
            images,
            puller,
            resolver,
            snapshotter_root,
            usage: Default::default(),
        }
    }

    /// Measures the snapshots' usage every `period`, as containerd's snapshot store does:
    /// ImageFsInfo then answers at once with the last measure.
    pub fn measure_usage_every(&self, snapshotter: Arc<dyn Snapshotter>, period: Duration) {
        let usage = self.usage.clone();
        tokio::spawn(async move {
            loop {
                match total_usage(&*snapshotter).await {
                    Ok((bytes, inodes)) => {
                        *usage
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) = FsUsage {
                            at: Some(SystemTime::now()),
                            bytes,
                            inodes,
                        }
                    }
                    Err(e) => tracing::warn!("measuring the image filesystem: {e}"),
                }
                tokio::time::sleep(period.max(Duration::from_secs(1))).await;
            }
        });
    }

    /// The image filesystem's mountpoint: the snapshotter's directory.
    pub fn snapshotter_root(&self) -> &std::path::Path {
        &self.snapshotter_root
    }

    /// Every CRI image now, from the records of namespace `k8s.io`.
    pub async fn list(&self) -> Result<Vec<CriImage>, CriError> {
        let db = self.db.clone();
        let records = tokio::task::spawn_blocking(move || db.image_list(NAMESPACE))
            .await
            .map_err(|e| CriError::Internal(e.to_string()))??;
        Ok(self.resolver.images(&records).await)
    }

    pub async fn find(&self, ref_or_id: &str) -> Result<Option<CriImage>, CriError> {
        let images = self.list().await?;
        Ok(resolve::find(&images, ref_or_id).cloned())
    }
}

async fn total_usage(snapshotter: &dyn Snapshotter) -> Result<(u64, u64), CriError> {
    let mut bytes = 0u64;
    let mut inodes = 0u64;
    let infos = snapshotter
        .walk(&[])
        .await
        .map_err(|e| CriError::Internal(e.to_string()))?;
    for info in infos {
        // A snapshot removed since the walk is not counted.
        if let Ok(usage) = snapshotter.usage(&info.name).await {
            bytes += usage.size.max(0) as u64;
            inodes += usage.inodes.max(0) as u64;
        }
    }
    Ok((bytes, inodes))
}

fn to_cri(image: &CriImage) -> cri::Image {
    let (uid, username) = resolve::user_of(&image.resolved.user);
    cri::Image {
        id: image.id.clone(),
        repo_tags: image.repo_tags.clone(),
        repo_digests: image.repo_digests.clone(),
        size: image.resolved.size,
        uid: uid.map(|value| cri::Int64Value { value }),
        username,
        spec: Some(cri::ImageSpec {
            image: image.id.clone(),
            ..Default::default()
        }),
        pinned: image.pinned,
    }
}

fn image_name(spec: Option<cri::ImageSpec>) -> Result<String, Status> {
    let name = spec.map(|s| s.image).unwrap_or_default();
    if name.is_empty() {
        return Err(status(&CriError::InvalidArgument(
            "an image name is required".into(),
        )));
    }
    Ok(name)
}

#[tonic::async_trait]
impl k8s_cri::v1::image_service_server::ImageService for CriImages {
    async fn list_images(
        &self,
        _request: Request<cri::ListImagesRequest>,
    ) -> Result<Response<cri::ListImagesResponse>, Status> {
        // As containerd 1.6: the filter is left to the client.
        let images = self.list().await.map_err(|e| status(&e))?;
        Ok(Response::new(cri::ListImagesResponse {
            images: images.iter().map(to_cri).collect(),
        }))
    }

    async fn image_status(
        &self,
        request: Request<cri::ImageStatusRequest>,
    ) -> Result<Response<cri::ImageStatusResponse>, Status> {
        let request = request.into_inner();
        let verbose = request.verbose;
        let name = image_name(request.image)?;
        let Some(image) = self.find(&name).await.map_err(|e| status(&e))? else {
            // An absent image is an empty answer, not an error.
            return Ok(Response::new(cri::ImageStatusResponse::default()));
        };
        let mut info = std::collections::HashMap::new();
        if verbose {
            let described = serde_json::json!({
                "id": image.id,
                "manifest": image.resolved.manifest_digest,
                "diffIds": image.resolved.diff_ids,
                "user": image.resolved.user,
            });
            info.insert("info".to_owned(), described.to_string());
        }
        Ok(Response::new(cri::ImageStatusResponse {
            image: Some(to_cri(&image)),
            info,
        }))
    }

    async fn pull_image(
        &self,
        request: Request<cri::PullImageRequest>,
    ) -> Result<Response<cri::PullImageResponse>, Status> {
        let request = request.into_inner();
        let name = image_name(request.image)?;
        let config = self.config.clone();
        let image_ref = self.pull(&config, &name, request.auth).await?;
        Ok(Response::new(cri::PullImageResponse { image_ref }))
    }

    async fn remove_image(
        &self,
        request: Request<cri::RemoveImageRequest>,
    ) -> Result<Response<cri::RemoveImageResponse>, Status> {
        let name = image_name(request.into_inner().image)?;
        // Removing what is not there succeeds, as the kubelet expects.
        let Some(image) = self.find(&name).await.map_err(|e| status(&e))? else {
            return Ok(Response::new(cri::RemoveImageResponse {}));
        };
        // The id's own record last: while it is there, a half-removed image still lists.
        let mut names = image.names.clone();
        names.sort_by_key(|n| n == &image.id);
        for (i, name) in names.iter().enumerate() {
            let last = i + 1 == names.len();
            let deleted = self
                .images
                .delete(in_namespace(images_api::DeleteImageRequest {
                    name: name.clone(),
                    sync: last,
                    ..Default::default()
                }))
                .await;
            match deleted {
                Ok(_) => {}
                Err(e) if e.code() == tonic::Code::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Response::new(cri::RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _request: Request<cri::ImageFsInfoRequest>,
    ) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        let usage = *self
            .usage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let at = usage.at.unwrap_or_else(SystemTime::now);
        let nanos = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        let fs = cri::FilesystemUsage {
            timestamp: nanos,
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: self.snapshotter_root.display().to_string(),
            }),
            used_bytes: Some(cri::UInt64Value { value: usage.bytes }),
            inodes_used: Some(cri::UInt64Value {
                value: usage.inodes,
            }),
        };
        Ok(Response::new(cri::ImageFsInfoResponse {
            image_filesystems: vec![fs],
            container_filesystems: Vec::new(),
        }))
    }
}
