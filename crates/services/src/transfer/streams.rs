//! Streams a client opens for a later call to use (`io.containerd.streaming.v1.manager` +
//! `io.containerd.grpc.v1.streaming`): progress going out, credentials asked for and answered.
//! The client's first message is `StreamInit{id}`, answered with an empty message; from then on
//! the stream belongs to whichever call names it (by namespace and id). The stream ends when
//! that call closes it, or when the client goes away.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crated_api::containerd::services::streaming::v1 as api;
use crated_api::containerd::services::streaming::v1::streaming_server::{
    Streaming, StreamingServer,
};
use crated_api::prost::Message;
use crated_api::prost_types::Any;
use crated_plugin::{types, Instance, Registration};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::message_limits::limited;
use crate::request::namespace;
use crate::GrpcService;

const STREAM_INIT: &str = "containerd.services.streaming.v1.StreamInit";
const EMPTY: &str = "google.protobuf.Empty";

/// `message` as an Any under its bare protobuf name, as containerd's typeurl marshals it.
pub fn to_any(type_name: &str, message: &impl Message) -> Any {
    Any {
        type_url: type_name.to_owned(),
        value: message.encode_to_vec(),
    }
}

/// The type name of `any`, without a URL prefix if it has one.
pub fn type_name(any: &Any) -> &str {
    any.type_url.rsplit('/').next().unwrap_or_default()
}

/// The message in `any` if it is of `type_name` (with or without a URL prefix).
pub fn from_any<M: Message + Default>(any: &Any, type_name: &str) -> Result<M, Status> {
    if self::type_name(any) != type_name {
        return Err(Status::invalid_argument(format!(
            "expected a {type_name}, got {}",
            any.type_url
        )));
    }
    M::decode(any.value.as_slice())
        .map_err(|e| Status::invalid_argument(format!("malformed {type_name}: {e}")))
}

/// Both directions of one registered stream.
pub struct ClientStream {
    to_client: mpsc::Sender<Result<Any, Status>>,
    from_client: tokio::sync::Mutex<mpsc::Receiver<Any>>,
}

impl ClientStream {
    pub async fn send(&self, message: Any) -> Result<(), Status> {
        self.to_client
            .send(Ok(message))
            .await
            .map_err(|_| Status::cancelled("the client closed the stream"))
    }

    /// Sends `message` and waits for the client's answer; one exchange at a time.
    pub async fn request(&self, message: Any) -> Result<Any, Status> {
        let mut answers = self.from_client.lock().await;
        self.send(message).await?;
        answers
            .recv()
            .await
            .ok_or_else(|| Status::cancelled("the client closed the stream"))
    }
}

#[derive(Default)]
pub struct StreamManager {
    streams: Arc<Mutex<StreamMap>>,
}

type StreamMap = HashMap<(String, String), Arc<ClientStream>>;

impl StreamManager {
    /// The stream `id` of namespace `ns`.
    pub fn get(&self, ns: &str, id: &str) -> Result<Arc<ClientStream>, Status> {
        self.lock()
            .get(&(ns.to_owned(), id.to_owned()))
            .cloned()
            .ok_or_else(|| Status::not_found(format!("stream {id:?}: not found")))
    }

    /// Ends stream `id`: the client sees the end of its messages.
    pub fn close(&self, ns: &str, id: &str) {
        self.lock().remove(&(ns.to_owned(), id.to_owned()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StreamMap> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub fn registrations() -> Vec<Registration> {
    vec![
        Registration::new(types::STREAMING, "manager", |_| async move {
            Ok(Instance::new(Arc::new(StreamManager::default())))
        })
        .requires(&[types::METADATA]),
        Registration::new(types::GRPC, "streaming", |ctx| async move {
            let manager = ctx.get_by_id::<StreamManager>(types::STREAMING, "manager")?;
            Ok(Instance::new(GrpcService::new(move |routes, limits| {
                routes.add_service(limited!(StreamingServer::from_arc(manager.clone()), limits));
            })))
        })
        .requires(&[types::STREAMING]),
    ]
}

type AnyStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<Any, Status>> + Send>>;

#[tonic::async_trait]
impl Streaming for StreamManager {
    async fn stream(
        &self,
        req: Request<tonic::Streaming<Any>>,
    ) -> Result<Response<AnyStream>, Status> {
        let ns = namespace(&req)?;
        let mut inbound = req.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("a stream starts with StreamInit"))?;
        let init: api::StreamInit = from_any(&first, STREAM_INIT)?;
        if init.id.is_empty() {
            return Err(Status::invalid_argument("StreamInit needs an id"));
        }
        let (to_client, out) = mpsc::channel(64);
        let (forward, from_client) = mpsc::channel(16);
        let key = (ns, init.id.clone());
        {
            let mut streams = self.lock();
            if streams.contains_key(&key) {
                return Err(Status::already_exists(format!(
                    "stream {:?}: already exists",
                    init.id
                )));
            }
            let _ = to_client.try_send(Ok(Any {
                type_url: EMPTY.into(),
                value: Vec::new(),
            }));
            streams.insert(
                key.clone(),
                Arc::new(ClientStream {
                    to_client,
                    from_client: tokio::sync::Mutex::new(from_client),
                }),
            );
        }
        // The client's messages go to whoever reads the stream. A client that goes away
        // takes its stream along; one that only stops sending keeps receiving.
        let streams = Arc::clone(&self.streams);
        tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(message)) => {
                        if forward.send(message).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            streams
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out),
        )))
    }
}
