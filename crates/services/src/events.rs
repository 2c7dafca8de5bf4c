//! Events: `io.containerd.grpc.v1.events` over the exchange (`io.containerd.event.v1.exchange`).
//! Clients Publish, Forward and Subscribe over gRPC; shims Forward over the daemon's ttrpc
//! socket (`containerd.services.events.ttrpc.v1.Events`), where the runc shim sends its task
//! events.

use std::sync::Arc;

use containerd_shim_protos::shim::events as ttrpc_events;
use containerd_shim_protos::shim_async::{create_events, Events as TtrpcEvents};
use crated_api::containerd::services::events::v1 as api;
use crated_api::containerd::services::events::v1::events_server::{Events, EventsServer};
use crated_api::containerd::types;
use crated_events::{Envelope, Exchange};
use crated_plugin::{types as plugin_types, Instance, Registration};
use crated_runtime::wire::{any_from_shim, time_from_shim};
use tonic::{Request, Response, Status};

use crate::message_limits::limited;
use crate::request::namespace;
use crate::status::{filters, status};
use crate::wire::{timestamp, BoxStream};
use crate::GrpcService;

pub fn registrations() -> Vec<Registration> {
    vec![
        Registration::new(plugin_types::GRPC, "events", |ctx| async move {
            let exchange = ctx.get_single::<Exchange>(plugin_types::EVENT)?;
            let grpc = Arc::new(EventsService {
                exchange: exchange.clone(),
            });
            let forwarder = Arc::new(ShimForwarder { exchange });
            Ok(Instance::new(GrpcService::with_ttrpc(
                move |routes, limits| {
                    routes.add_service(limited!(EventsServer::from_arc(grpc.clone()), limits));
                },
                move || create_events(forwarder.clone()),
            )))
        })
        .requires(&[plugin_types::EVENT]),
    ]
}

pub struct EventsService {
    exchange: Arc<Exchange>,
}

/// Nanoseconds since the epoch; 0 for none or a time before it, the largest for one past
/// what that holds.
fn nanos_of(t: Option<prost_types::Timestamp>) -> u64 {
    t.map_or(0, |t| {
        (t.seconds.max(0) as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(t.nanos.max(0) as u64)
    })
}

fn to_api(e: &Envelope) -> types::Envelope {
    types::Envelope {
        timestamp: Some(timestamp(e.timestamp)),
        namespace: e.namespace.clone(),
        topic: e.topic.clone(),
        event: Some(e.event.clone()),
    }
}

type EnvelopeStream = BoxStream<types::Envelope>;

#[tonic::async_trait]
impl Events for EventsService {
    async fn publish(&self, req: Request<api::PublishRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let event = req
            .event
            .ok_or_else(|| status(&crated_events::EventError::NoEvent))?;
        self.exchange
            .publish(&ns, &req.topic, event)
            .map_err(|e| status(&e))?;
        Ok(Response::new(()))
    }

    async fn forward(&self, req: Request<api::ForwardRequest>) -> Result<Response<()>, Status> {
        let envelope = req
            .into_inner()
            .envelope
            .ok_or_else(|| Status::invalid_argument("envelope must be set"))?;
        let event = envelope
            .event
            .ok_or_else(|| status(&crated_events::EventError::NoEvent))?;
        self.exchange
            .forward(Envelope {
                timestamp: nanos_of(envelope.timestamp),
                namespace: envelope.namespace,
                topic: envelope.topic,
                event,
            })
            .map_err(|e| status(&e))?;
        Ok(Response::new(()))
    }

    async fn subscribe(
        &self,
        req: Request<api::SubscribeRequest>,
    ) -> Result<Response<EnvelopeStream>, Status> {
        let filter = filters(&req.into_inner().filters)?;
        // The subscription lives in the stream: it ends when the client goes away.
        let subscription = self.exchange.subscribe(filter);
        let stream: EnvelopeStream =
            Box::pin(futures::stream::unfold(subscription, |mut s| async move {
                s.next().await.map(|e| (Ok(to_api(&e)), s))
            }));
        Ok(Response::new(stream))
    }
}

/// The ttrpc side: what shims forward.
struct ShimForwarder {
    exchange: Arc<Exchange>,
}

#[async_trait::async_trait]
impl TtrpcEvents for ShimForwarder {
    async fn forward(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: ttrpc_events::ForwardRequest,
    ) -> ttrpc::Result<containerd_shim_protos::protobuf::well_known_types::empty::Empty> {
        let invalid = |msg: String| {
            ttrpc::Error::RpcStatus(ttrpc::get_status(ttrpc::Code::INVALID_ARGUMENT, msg))
        };
        let envelope = req
            .envelope
            .into_option()
            .ok_or_else(|| invalid("envelope must be set".into()))?;
        let event = envelope
            .event
            .as_ref()
            .map(any_from_shim)
            .ok_or_else(|| invalid(crated_events::EventError::NoEvent.to_string()))?;
        self.exchange
            .forward(Envelope {
                timestamp: nanos_of(envelope.timestamp.as_ref().map(time_from_shim)),
                namespace: envelope.namespace,
                topic: envelope.topic,
                event,
            })
            .map_err(|e| invalid(e.to_string()))?;
        Ok(Default::default())
    }
}
