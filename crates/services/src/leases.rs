//! Leases: `io.containerd.service.v1.leases-service` + `io.containerd.grpc.v1.leases`.

use std::sync::Arc;

use crated_api::containerd::services::leases::v1 as api;
use crated_api::containerd::services::leases::v1::leases_server::{Leases, LeasesServer};
use crated_metadata::{Lease, LeaseResource, MetadataStore};
use crated_plugin::{types, Instance, Registration};
use tonic::{Request, Response, Status};

use crate::message_limits::limited;
use crate::request::namespace;
use crate::status::{blocking, filters, status};
use crate::wire::timestamp;
use crate::GrpcService;
use crated_gc::Scheduler;

pub struct LeasesService {
    db: Arc<MetadataStore>,
    /// None when the GC plugin is disabled: a synchronous delete then cannot collect.
    gc: Option<Arc<Scheduler>>,
}

/// What [`crated_gc::STATS_HEADER`] may hold of the removed and failed lists, in bytes of
/// JSON: once base64-encoded, well inside the 8 KiB of metadata that gRPC's C core (Python,
/// C++) accepts by default and the 16 KiB of Go's and hyper's.
const GC_STATS_BUDGET: usize = 4096;
/// One listed item at most, in bytes (a snapshot key may be long).
const GC_STATS_ITEM: usize = 256;

/// Keeps the leading items of `items` that fit in `budget` bytes (each cut to
/// [`GC_STATS_ITEM`]), then a line counting the rest.
fn bounded(items: &mut Vec<String>, budget: &mut usize) {
    let total = items.len();
    let mut kept = 0;
    for item in items.iter_mut() {
        if item.len() > GC_STATS_ITEM {
            let mut cut = GC_STATS_ITEM;
            while !item.is_char_boundary(cut) {
                cut -= 1;
            }
            item.truncate(cut);
            item.push('…');
        }
        // The item, its quotes and comma.
        let cost = item.len() + 3;
        if cost > *budget {
            break;
        }
        *budget -= cost;
        kept += 1;
    }
    items.truncate(kept);
    if kept < total {
        items.push(format!("... and {} more", total - kept));
    }
}

/// A synchronous delete's collection (leases, images): runs one and reports what it removed
/// in the response's [`crated_gc::STATS_HEADER`], bounded in size.
pub(crate) async fn collect_now(
    gc: Option<&Scheduler>,
    metadata: &mut tonic::metadata::MetadataMap,
) -> Result<(), Status> {
    let gc = gc.ok_or_else(|| {
        Status::failed_precondition(
            "synchronous delete needs garbage collection, which is disabled: failed precondition",
        )
    })?;
    let mut stats = gc.schedule_and_wait().await.map_err(|e| status(&e))?;
    let mut budget = GC_STATS_BUDGET;
    bounded(&mut stats.failed, &mut budget);
    bounded(&mut stats.removed, &mut budget);
    if let Ok(json) = serde_json::to_vec(&stats) {
        metadata.insert_bin(
            crated_gc::STATS_HEADER,
            tonic::metadata::MetadataValue::from_bytes(&json),
        );
    }
    Ok(())
}

pub fn registrations() -> Vec<Registration> {
    vec![
        Registration::new(types::SERVICE, "leases-service", |ctx| async move {
            let db = ctx.get_single::<MetadataStore>(types::METADATA)?;
            let gc = ctx.get_single::<Scheduler>(types::GC).ok();
            Ok(Instance::new(Arc::new(LeasesService { db, gc })))
        })
        .requires(&[types::METADATA, types::GC]),
        Registration::new(types::GRPC, "leases", |ctx| async move {
            let service = ctx.get_by_id::<LeasesService>(types::SERVICE, "leases-service")?;
            Ok(Instance::new(GrpcService::new(move |routes, limits| {
                routes.add_service(limited!(LeasesServer::from_arc(service.clone()), limits));
            })))
        })
        .requires(&[types::SERVICE]),
    ]
}

fn to_api(l: Lease) -> api::Lease {
    api::Lease {
        id: l.id,
        created_at: Some(timestamp(l.created_at)),
        labels: l.labels.into_iter().collect(),
    }
}

fn resource(r: Option<api::Resource>) -> Result<LeaseResource, Status> {
    let r = r.ok_or_else(|| Status::invalid_argument("resource is required: invalid argument"))?;
    if r.id.is_empty() || r.r#type.is_empty() {
        return Err(Status::invalid_argument(
            "resource id and type are required: invalid argument",
        ));
    }
    Ok(LeaseResource {
        resource_type: r.r#type,
        id: r.id,
    })
}

#[tonic::async_trait]
impl Leases for LeasesService {
    async fn create(
        &self,
        req: Request<api::CreateRequest>,
    ) -> Result<Response<api::CreateResponse>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let created_at = crated_metadata::now_nanos();
        // containerd's service gives a lease without an id a random one (its WithRandomID).
        let id = if req.id.is_empty() {
            let random = uuid::Uuid::new_v4().simple().to_string();
            format!("{}-{}", created_at % 1_000_000_000, &random[..6])
        } else {
            req.id
        };
        let lease = Lease {
            id,
            created_at,
            labels: req.labels.into_iter().collect(),
        };
        let (db, l) = (self.db.clone(), lease.clone());
        blocking(move || db.lease_create(&ns, &l)).await?;
        Ok(Response::new(api::CreateResponse {
            lease: Some(to_api(lease)),
        }))
    }

    async fn delete(&self, req: Request<api::DeleteRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let db = self.db.clone();
        let id = req.id.clone();
        blocking(move || db.lease_delete(&ns, &id)).await?;
        let mut response = Response::new(());
        if req.sync {
            collect_now(self.gc.as_deref(), response.metadata_mut()).await?;
        }
        Ok(response)
    }

    async fn list(
        &self,
        req: Request<api::ListRequest>,
    ) -> Result<Response<api::ListResponse>, Status> {
        let ns = namespace(&req)?;
        let filter = filters(&req.into_inner().filters)?;
        let db = self.db.clone();
        let all = blocking(move || db.lease_list(&ns)).await?;
        let leases = all
            .into_iter()
            .filter(|l| {
                filter.matches(&|path: &[String]| match path.first().map(String::as_str) {
                    Some("id") => Some(l.id.clone()),
                    Some("labels") => l.labels.get(&path[1..].join(".")).cloned(),
                    _ => None,
                })
            })
            .map(to_api)
            .collect();
        Ok(Response::new(api::ListResponse { leases }))
    }

    async fn add_resource(
        &self,
        req: Request<api::AddResourceRequest>,
    ) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let r = resource(req.resource)?;
        let db = self.db.clone();
        blocking(move || db.lease_add_resource(&ns, &req.id, &r)).await?;
        Ok(Response::new(()))
    }

    async fn delete_resource(
        &self,
        req: Request<api::DeleteResourceRequest>,
    ) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let r = resource(req.resource)?;
        let db = self.db.clone();
        blocking(move || db.lease_delete_resource(&ns, &req.id, &r)).await?;
        Ok(Response::new(()))
    }

    async fn list_resources(
        &self,
        req: Request<api::ListResourcesRequest>,
    ) -> Result<Response<api::ListResourcesResponse>, Status> {
        let ns = namespace(&req)?;
        let id = req.into_inner().id;
        let db = self.db.clone();
        let resources = blocking(move || db.lease_resources(&ns, &id))
            .await?
            .into_iter()
            .map(|r| api::Resource {
                id: r.id,
                r#type: r.resource_type,
            })
            .collect();
        Ok(Response::new(api::ListResourcesResponse { resources }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gc_stats_keep_what_fits_and_count_the_rest() {
        let mut items: Vec<String> = (0..100).map(|i| format!("snapshot {i:0>500}")).collect();
        let mut budget = GC_STATS_BUDGET;
        bounded(&mut items, &mut budget);
        let listed = items.len() - 1;
        assert!(listed > 0 && listed < 100, "{listed}");
        assert_eq!(
            items.last().unwrap(),
            &format!("... and {} more", 100 - listed)
        );
        assert!(items[..listed]
            .iter()
            .all(|i| i.len() <= GC_STATS_ITEM + '…'.len_utf8()));
        let json = serde_json::to_vec(&items).unwrap();
        assert!(json.len() <= GC_STATS_BUDGET + 64, "{}", json.len());

        let mut few = vec!["a".to_string(), "b".to_string()];
        let mut budget = GC_STATS_BUDGET;
        bounded(&mut few, &mut budget);
        assert_eq!(few, ["a", "b"]);
    }
}
