//! Progress of a transfer as containerd reports it (`containerd.types.transfer.Progress`),
//! best effort: a client that stopped listening does not stop the transfer.

use std::sync::Arc;

use crated_images::Descriptor;

/// One progress event. `name` is the object's (`layer-sha256:...` and the like), empty for a
/// line about the whole transfer.
#[derive(Debug, Clone, Default)]
pub struct ProgressEvent {
    pub event: String,
    pub name: String,
    pub parents: Vec<String>,
    pub progress: i64,
    pub total: i64,
    pub desc: Option<Descriptor>,
}

/// Where progress events go, such as the stream a client named.
#[async_trait::async_trait]
pub trait ProgressSink: Send + Sync {
    async fn send(&self, event: ProgressEvent);
}

/// The progress of one transfer: to a sink, or nowhere.
#[derive(Clone, Default)]
pub struct Progress {
    sink: Option<Arc<dyn ProgressSink>>,
}

impl Progress {
    pub fn new(sink: Arc<dyn ProgressSink>) -> Progress {
        Progress { sink: Some(sink) }
    }

    /// A line about the whole transfer (`Resolving from OCI Registry (...)`).
    pub async fn note(&self, event: String) {
        self.send(ProgressEvent {
            event,
            ..Default::default()
        })
        .await;
    }

    /// An event of one object.
    pub async fn object(
        &self,
        event: &str,
        name: &str,
        parents: &[String],
        progress: i64,
        desc: &Descriptor,
    ) {
        self.send(ProgressEvent {
            event: event.to_owned(),
            name: name.to_owned(),
            parents: parents.to_vec(),
            progress,
            total: desc.size,
            desc: Some(desc.clone()),
        })
        .await;
    }

    async fn send(&self, event: ProgressEvent) {
        if let Some(sink) = &self.sink {
            sink.send(event).await;
        }
    }
}

/// containerd's progress name of a descriptor: `<kind>-<digest>`.
pub fn object_name(kind: &str, desc: &Descriptor) -> String {
    match desc.annotations.get("org.opencontainers.image.ref.name") {
        Some(r) => format!("{kind}-{r}@{}", desc.digest),
        None => format!("{kind}-{}", desc.digest),
    }
}
