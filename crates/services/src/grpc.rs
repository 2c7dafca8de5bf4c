use std::sync::Arc;

use tonic::service::RoutesBuilder;

pub use crate::message_limits::MessageLimits;

type Register = Box<dyn Fn(&mut RoutesBuilder, MessageLimits) + Send + Sync>;

type Hook = Box<dyn Fn() -> futures::future::BoxFuture<'static, ()> + Send + Sync>;
/// ttrpc services by name, as `ttrpc`'s generated `create_*` functions make them.
pub type TtrpcServices = std::collections::HashMap<String, ttrpc::asynchronous::Service>;
type TtrpcRegister = Box<dyn Fn() -> TtrpcServices + Send + Sync>;

/// What every `io.containerd.grpc.v1` plugin gives the server: routes to add, and an optional
/// hook run once start-up has finished and the socket is accepting.
pub struct GrpcService {
    register: Register,
    on_serving: Option<Hook>,
    /// What the plugin also serves on the daemon's ttrpc socket (shims call there).
    ttrpc: Option<TtrpcRegister>,
}

impl GrpcService {
    pub fn new(
        register: impl Fn(&mut RoutesBuilder, MessageLimits) + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(GrpcService {
            register: Box::new(register),
            on_serving: None,
            ttrpc: None,
        })
    }

    /// A front-end that serves on both sockets: gRPC for clients, ttrpc for shims.
    pub fn with_ttrpc(
        register: impl Fn(&mut RoutesBuilder, MessageLimits) + Send + Sync + 'static,
        ttrpc: impl Fn() -> TtrpcServices + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(GrpcService {
            register: Box::new(register),
            on_serving: None,
            ttrpc: Some(Box::new(ttrpc)),
        })
    }

    pub fn with_on_serving<F, Fut>(
        register: impl Fn(&mut RoutesBuilder, MessageLimits) + Send + Sync + 'static,
        hook: F,
    ) -> Arc<Self>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        Arc::new(GrpcService {
            register: Box::new(register),
            on_serving: Some(Box::new(move || Box::pin(hook()))),
            ttrpc: None,
        })
    }

    pub fn register(&self, routes: &mut RoutesBuilder, limits: MessageLimits) {
        (self.register)(routes, limits)
    }

    /// The ttrpc services this front-end adds to the daemon's ttrpc socket, if any.
    pub fn ttrpc_services(&self) -> TtrpcServices {
        self.ttrpc.as_ref().map(|make| make()).unwrap_or_default()
    }

    pub async fn serving(&self) {
        if let Some(hook) = &self.on_serving {
            hook().await;
        }
    }
}
