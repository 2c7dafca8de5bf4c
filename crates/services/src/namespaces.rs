//! Namespaces: `io.containerd.service.v1.namespaces-service` and `io.containerd.grpc.v1.namespaces`.

use std::collections::BTreeMap;
use std::sync::Arc;

use crated_api::containerd::events as ev;
use crated_api::containerd::services::namespaces::v1 as api;
use crated_api::containerd::services::namespaces::v1::namespaces_server::{
    Namespaces, NamespacesServer,
};
use crated_metadata::{MetadataError, MetadataStore, Namespace};
use crated_plugin::{types, Instance, Registration};
use tonic::{Request, Response, Status};

use crate::message_limits::limited;
use crate::request::caller_namespace;
use crate::status::{blocking, filter_status, status};
use crate::GrpcService;

/// The namespaces service: containerd's semantics over the metadata store.
pub struct NamespacesService {
    store: Arc<MetadataStore>,
    exchange: Arc<crated_events::Exchange>,
}

impl NamespacesService {
    pub fn new(store: Arc<MetadataStore>, exchange: Arc<crated_events::Exchange>) -> Self {
        NamespacesService { store, exchange }
    }

    fn store(&self) -> Arc<MetadataStore> {
        self.store.clone()
    }
}

pub fn registrations() -> Vec<Registration> {
    vec![
        Registration::new(types::SERVICE, "namespaces-service", |ctx| async move {
            let store = ctx.get_single::<MetadataStore>(types::METADATA)?;
            let exchange = ctx.get_single::<crated_events::Exchange>(types::EVENT)?;
            Ok(Instance::new(Arc::new(NamespacesService::new(
                store, exchange,
            ))))
        })
        .requires(&[types::EVENT, types::METADATA]),
        Registration::new(types::GRPC, "namespaces", |ctx| async move {
            let service =
                ctx.get_by_id::<NamespacesService>(types::SERVICE, "namespaces-service")?;
            Ok(Instance::new(GrpcService::new(move |routes, limits| {
                routes.add_service(limited!(
                    NamespacesServer::from_arc(service.clone()),
                    limits
                ));
            })))
        })
        .requires(&[types::SERVICE]),
    ]
}

fn to_api(ns: Namespace) -> api::Namespace {
    api::Namespace {
        name: ns.name,
        labels: ns.labels.into_iter().collect(),
    }
}

fn adaptor(ns: &Namespace) -> impl Fn(&[String]) -> Option<String> + '_ {
    move |path: &[String]| match path.first().map(String::as_str) {
        Some("name") => Some(ns.name.clone()),
        Some("labels") => {
            let key = path[1..].join(".");
            ns.labels.get(&key).cloned()
        }
        _ => None,
    }
}

#[tonic::async_trait]
impl Namespaces for NamespacesService {
    async fn get(
        &self,
        req: Request<api::GetNamespaceRequest>,
    ) -> Result<Response<api::GetNamespaceResponse>, Status> {
        let name = req.into_inner().name;
        let store = self.store();
        let ns = blocking(move || store.namespace_get(&name)).await?;
        Ok(Response::new(api::GetNamespaceResponse {
            namespace: Some(to_api(ns)),
        }))
    }

    async fn list(
        &self,
        req: Request<api::ListNamespacesRequest>,
    ) -> Result<Response<api::ListNamespacesResponse>, Status> {
        let filter = req.into_inner().filter;
        let filter = if filter.is_empty() {
            crated_filters::Filter::always()
        } else {
            crated_filters::parse(&filter).map_err(|e| filter_status(&e))?
        };
        let store = self.store();
        let all = blocking(move || store.namespace_list()).await?;
        let namespaces = all
            .into_iter()
            .filter(|ns| filter.matches(&adaptor(ns)))
            .map(to_api)
            .collect();
        Ok(Response::new(api::ListNamespacesResponse { namespaces }))
    }

    async fn create(
        &self,
        req: Request<api::CreateNamespaceRequest>,
    ) -> Result<Response<api::CreateNamespaceResponse>, Status> {
        let caller = caller_namespace(&req)?;
        let ns = req.into_inner().namespace.unwrap_or_default();
        // An empty value means "no such label", as containerd's store treats it.
        let ns = Namespace {
            name: ns.name,
            labels: ns
                .labels
                .into_iter()
                .filter(|(_, v)| !v.is_empty())
                .collect(),
        };
        let store = self.store();
        let created = ns.clone();
        blocking(move || store.namespace_create(&ns)).await?;
        // containerd publishes in the caller's namespace; a caller that sent none gets no event.
        if let Some(caller) = &caller {
            self.exchange.publish_message(
                caller,
                "/namespaces/create",
                "containerd.events.NamespaceCreate",
                &ev::NamespaceCreate {
                    name: created.name.clone(),
                    labels: created.labels.clone().into_iter().collect(),
                },
            );
        }
        Ok(Response::new(api::CreateNamespaceResponse {
            namespace: Some(to_api(created)),
        }))
    }

    async fn update(
        &self,
        req: Request<api::UpdateNamespaceRequest>,
    ) -> Result<Response<api::UpdateNamespaceResponse>, Status> {
        let caller = caller_namespace(&req)?;
        let req = req.into_inner();
        let ns = req.namespace.unwrap_or_default();
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let given: BTreeMap<String, String> = ns.labels.into_iter().collect();
        // containerd: with field paths, only `labels.<key>` may be named (each set, or removed
        // when absent or empty); without them, the labels are replaced whole.
        let (changes, replace) = if paths.is_empty() {
            (given, true)
        } else {
            let mut changes = BTreeMap::new();
            for path in &paths {
                match path.strip_prefix("labels.") {
                    Some(key) => {
                        changes.insert(key.to_owned(), given.get(key).cloned().unwrap_or_default());
                    }
                    None => {
                        return Err(status(&MetadataError::InvalidArgument(format!(
                            "cannot update {path:?} field"
                        ))))
                    }
                }
            }
            (changes, false)
        };
        let store = self.store();
        let name = ns.name;
        let updated =
            blocking(move || store.namespace_update_labels(&name, &changes, replace)).await?;
        if let Some(caller) = &caller {
            self.exchange.publish_message(
                caller,
                "/namespaces/update",
                "containerd.events.NamespaceUpdate",
                &ev::NamespaceUpdate {
                    name: updated.name.clone(),
                    labels: updated.labels.clone().into_iter().collect(),
                },
            );
        }
        Ok(Response::new(api::UpdateNamespaceResponse {
            namespace: Some(to_api(updated)),
        }))
    }

    async fn delete(
        &self,
        req: Request<api::DeleteNamespaceRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = caller_namespace(&req)?;
        let name = req.into_inner().name;
        let store = self.store();
        let deleted = name.clone();
        blocking(move || store.namespace_delete(&name)).await?;
        if let Some(caller) = &caller {
            self.exchange.publish_message(
                caller,
                "/namespaces/delete",
                "containerd.events.NamespaceDelete",
                &ev::NamespaceDelete { name: deleted },
            );
        }
        Ok(Response::new(()))
    }
}
