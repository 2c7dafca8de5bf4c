//! Progress of a transfer as containerd reports it: `containerd.types.transfer.Progress`
//! messages on the stream the client named, best effort (a client that stopped listening does
//! not stop the transfer).

use std::sync::Arc;

use crated_api::containerd::types::transfer as types;
use crated_api::containerd::types::Descriptor;
use crated_images::Descriptor as ImageDescriptor;

use super::streams::{to_any, ClientStream};

const PROGRESS: &str = "containerd.types.transfer.Progress";

#[derive(Clone, Default)]
pub struct Progress {
    stream: Option<Arc<ClientStream>>,
}

impl Progress {
    pub fn new(stream: Option<Arc<ClientStream>>) -> Progress {
        Progress { stream }
    }

    /// A line about the whole transfer (`Resolving from OCI Registry (...)`).
    pub async fn note(&self, event: String) {
        self.send(types::Progress {
            event,
            ..Default::default()
        })
        .await;
    }

    /// An event of one object: `name` is `layer-sha256:...` and the like.
    pub async fn object(
        &self,
        event: &str,
        name: &str,
        parents: &[String],
        progress: i64,
        desc: &ImageDescriptor,
    ) {
        self.send(types::Progress {
            event: event.to_owned(),
            name: name.to_owned(),
            parents: parents.to_vec(),
            progress,
            total: desc.size,
            desc: Some(to_api(desc)),
        })
        .await;
    }

    async fn send(&self, message: types::Progress) {
        if let Some(stream) = &self.stream {
            let _ = stream.send(to_any(PROGRESS, &message)).await;
        }
    }
}

pub fn to_api(d: &ImageDescriptor) -> Descriptor {
    Descriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size,
        annotations: d.annotations.clone().into_iter().collect(),
    }
}

/// containerd's progress name of a descriptor: `<kind>-<digest>`.
pub fn object_name(kind: &str, desc: &ImageDescriptor) -> String {
    match desc.annotations.get("org.opencontainers.image.ref.name") {
        Some(r) => format!("{kind}-{r}@{}", desc.digest),
        None => format!("{kind}-{}", desc.digest),
    }
}
