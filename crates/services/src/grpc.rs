use std::sync::Arc;

use tonic::service::RoutesBuilder;

type Register = Box<dyn Fn(&mut RoutesBuilder) + Send + Sync>;
type Hook = Box<dyn Fn() -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// What every `io.containerd.grpc.v1` plugin gives the server: routes to add, and an optional
/// hook run once start-up has finished and the socket is accepting.
pub struct GrpcService {
    register: Register,
    on_serving: Option<Hook>,
}

impl GrpcService {
    pub fn new(register: impl Fn(&mut RoutesBuilder) + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(GrpcService {
            register: Box::new(register),
            on_serving: None,
        })
    }

    pub fn with_on_serving<F, Fut>(
        register: impl Fn(&mut RoutesBuilder) + Send + Sync + 'static,
        hook: F,
    ) -> Arc<Self>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        Arc::new(GrpcService {
            register: Box::new(register),
            on_serving: Some(Box::new(move || Box::pin(hook()))),
        })
    }

    pub fn register(&self, routes: &mut RoutesBuilder) {
        (self.register)(routes)
    }

    pub async fn serving(&self) {
        if let Some(hook) = &self.on_serving {
            hook().await;
        }
    }
}
