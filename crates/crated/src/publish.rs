//! `crated publish --topic T --namespace NS`: what a shim runs (our executable is its
//! `-publish-binary`) to publish one event. The event is a protobuf `Any` on stdin; it goes to
//! the daemon at `--address` through the events service, as containerd's `publish` does.

use std::io::Read;

use anyhow::{bail, Context};
use crated_api::containerd::services::events::v1 as api;
use hyper_util::rt::TokioIo;
use prost::Message;
use tonic::transport::{Endpoint, Uri};

/// How long the daemon may take to answer, as containerd's publish dials with a 2s limit.
const DIAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

pub fn run(address: &str, namespace: &str, topic: &str) -> anyhow::Result<()> {
    if topic.is_empty() {
        bail!("topic required to publish event: invalid argument");
    }
    let mut data = Vec::new();
    std::io::stdin()
        .read_to_end(&mut data)
        .context("reading the event from stdin")?;
    let event = prost_types::Any::decode(&data[..]).context("decoding the event on stdin")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let path = address
            .strip_prefix("unix://")
            .unwrap_or(address)
            .to_owned();
        // The URI is required by tonic but unused: the connector dials the socket.
        let channel = Endpoint::try_from("http://[::]:0")?
            .connect_timeout(DIAL_TIMEOUT)
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .with_context(|| format!("failed to dial {address:?}"))?;
        let mut client = api::events_client::EventsClient::new(channel);
        let mut req = tonic::Request::new(api::PublishRequest {
            topic: topic.to_owned(),
            event: Some(event),
        });
        req.metadata_mut().insert(
            crated_services::request::NAMESPACE_HEADER,
            namespace
                .parse()
                .context("namespace is not valid header text")?,
        );
        client
            .publish(req)
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        Ok(())
    })
}
