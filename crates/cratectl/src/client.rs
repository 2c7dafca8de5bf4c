//! A gRPC channel over the daemon's unix socket, with the namespace header on every call.

use anyhow::Context;
use crated_api::containerd::services::containers::v1::containers_client::ContainersClient;
use crated_api::containerd::services::content::v1::content_client::ContentClient;
use crated_api::containerd::services::diff::v1::diff_client::DiffClient;
use crated_api::containerd::services::events::v1::events_client::EventsClient;
use crated_api::containerd::services::images::v1::images_client::ImagesClient;
use crated_api::containerd::services::introspection::v1::introspection_client::IntrospectionClient;
use crated_api::containerd::services::leases::v1::leases_client::LeasesClient;
use crated_api::containerd::services::namespaces::v1::namespaces_client::NamespacesClient;
use crated_api::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
use crated_api::containerd::services::streaming::v1::streaming_client::StreamingClient;
use crated_api::containerd::services::tasks::v1::tasks_client::TasksClient;
use crated_api::containerd::services::transfer::v1::transfer_client::TransferClient;
use crated_api::containerd::services::version::v1::version_client::VersionClient;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint, Uri};

/// Cheap to clone: the channel is shared.
#[derive(Clone)]
pub struct Connection {
    channel: Channel,
    namespace: MetadataValue<tonic::metadata::Ascii>,
    lease: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl Connection {
    pub async fn connect(
        address: &str,
        namespace: &str,
        lease: Option<&str>,
    ) -> anyhow::Result<Self> {
        let path = address
            .strip_prefix("unix://")
            .unwrap_or(address)
            .to_owned();
        // The URI is required by tonic but unused: the connector dials the socket.
        let channel =
            Endpoint::try_from("http://[::]:0")?
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
                    }
                }))
                .await
                .with_context(|| format!("failed to dial {address:?}"))?;
        let namespace = namespace
            .parse()
            .context("namespace is not valid header text")?;
        let lease = lease
            .map(|l| l.parse().context("lease is not valid header text"))
            .transpose()?;
        Ok(Connection {
            channel,
            namespace,
            lease,
        })
    }

    /// A request carrying the namespace header, and the lease header when a lease was given.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        req.metadata_mut()
            .insert("containerd-namespace", self.namespace.clone());
        if let Some(lease) = &self.lease {
            req.metadata_mut().insert("containerd-lease", lease.clone());
        }
        req
    }

    /// The same connection with calls under lease `id`.
    pub fn with_lease(&self, id: &str) -> anyhow::Result<Connection> {
        Ok(Connection {
            lease: Some(id.parse().context("lease is not valid header text")?),
            ..self.clone()
        })
    }

    pub fn diff(&self) -> DiffClient<Channel> {
        DiffClient::new(self.channel.clone())
    }

    pub fn namespace(&self) -> &str {
        self.namespace.to_str().unwrap_or_default()
    }

    pub fn version(&self) -> VersionClient<Channel> {
        VersionClient::new(self.channel.clone())
    }

    pub fn introspection(&self) -> IntrospectionClient<Channel> {
        IntrospectionClient::new(self.channel.clone())
    }

    pub fn content(&self) -> ContentClient<Channel> {
        ContentClient::new(self.channel.clone())
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX)
    }

    pub fn leases(&self) -> LeasesClient<Channel> {
        LeasesClient::new(self.channel.clone())
    }

    pub fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel.clone())
    }

    pub fn namespaces(&self) -> NamespacesClient<Channel> {
        NamespacesClient::new(self.channel.clone())
    }

    pub fn images(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel.clone())
    }

    pub fn streaming(&self) -> StreamingClient<Channel> {
        StreamingClient::new(self.channel.clone())
    }

    pub fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel.clone())
    }

    pub fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel.clone())
    }

    pub fn events(&self) -> EventsClient<Channel> {
        EventsClient::new(self.channel.clone())
    }

    pub fn transfer(&self) -> TransferClient<Channel> {
        TransferClient::new(self.channel.clone())
    }
}
