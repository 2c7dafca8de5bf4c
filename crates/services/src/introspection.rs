//! Introspection: `io.containerd.service.v1.introspection-service` and
//! `io.containerd.grpc.v1.introspection`: every plugin with its status, and this server's
//! identity (a UUID kept under the plugin's root, the pid and the pid namespace).

use std::path::Path;
use std::sync::Arc;

use crated_api::containerd::services::introspection::v1 as api;
use crated_api::containerd::services::introspection::v1::introspection_server::{
    Introspection, IntrospectionServer,
};
use crated_api::containerd::types::Platform;
use crated_api::google::rpc::Status as RpcStatus;
use crated_plugin::{
    types, Instance, PluginError, PluginRecord, PluginSet, Registration, Status as PluginStatus,
};
use tonic::{Request, Response, Status};

use crate::message_limits::limited;
use crate::status::{code, filter_status};
use crate::GrpcService;

pub struct IntrospectionService {
    plugins: PluginSet,
    uuid: String,
}

impl IntrospectionService {
    /// The plugins matching containerd filters (any of `filters`), in init order, each with
    /// its status now (an external plugin that is down shows as unavailable).
    pub async fn plugins(
        &self,
        filters: &[String],
    ) -> Result<Vec<api::Plugin>, crated_filters::ParseError> {
        let filter = crated_filters::parse_all(filters)?;
        let records: Vec<_> = self
            .plugins
            .records()
            .into_iter()
            .filter(|r| filter.matches(&adaptor(r)))
            .collect();
        let statuses = futures::future::join_all(records.iter().map(|r| r.current_status())).await;
        Ok(records
            .iter()
            .zip(statuses)
            .map(|(r, status)| to_api(r, &status))
            .collect())
    }
}

fn adaptor(record: &PluginRecord) -> impl Fn(&[String]) -> Option<String> + '_ {
    move |path: &[String]| match path.first().map(String::as_str) {
        Some("type") => Some(record.plugin_type.clone()),
        Some("id") => Some(record.id.clone()),
        Some("capabilities") => {
            let want = path.get(1)?;
            record.meta.capabilities.contains(want).then(String::new)
        }
        _ => None,
    }
}

fn platform(spec: &str) -> Platform {
    let mut parts = spec.splitn(3, '/');
    Platform {
        os: parts.next().unwrap_or_default().to_owned(),
        architecture: parts.next().unwrap_or_default().to_owned(),
        variant: parts.next().unwrap_or_default().to_owned(),
        os_version: String::new(),
    }
}

fn to_api(record: &PluginRecord, status: &PluginStatus) -> api::Plugin {
    let init_err = match status {
        PluginStatus::Ok => None,
        PluginStatus::Skipped(reason) => Some(RpcStatus {
            code: tonic::Code::Unknown as i32,
            message: PluginError::Skip(reason.clone()).to_string(),
            details: Vec::new(),
        }),
        PluginStatus::Failed(err) => Some(RpcStatus {
            code: code(err.kind) as i32,
            message: err.message.clone(),
            details: Vec::new(),
        }),
    };
    api::Plugin {
        r#type: record.plugin_type.clone(),
        id: record.id.clone(),
        requires: record.requires.clone(),
        platforms: record.meta.platforms.iter().map(|p| platform(p)).collect(),
        exports: record.meta.exports.clone().into_iter().collect(),
        capabilities: record.meta.capabilities.clone(),
        init_err,
    }
}

/// Reads the server UUID kept under `dir`, creating it on first start.
fn server_uuid(dir: &Path) -> std::io::Result<String> {
    let path = dir.join("uuid");
    match std::fs::read_to_string(&path) {
        Ok(s) if uuid::Uuid::parse_str(s.trim()).is_ok() => Ok(s.trim().to_owned()),
        Ok(_) | Err(_) => {
            let id = uuid::Uuid::new_v4().to_string();
            let tmp = dir.join("uuid.tmp");
            std::fs::write(&tmp, &id)?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            Ok(id)
        }
    }
}

/// The inode of our pid namespace, as containerd reports it.
fn pid_namespace() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/pid")
        .map(|m| m.ino())
        .unwrap_or(0)
}

pub fn registrations() -> Vec<Registration> {
    vec![
        Registration::new(types::SERVICE, "introspection-service", |ctx| async move {
            let root = ctx.root()?;
            let uuid = tokio::task::spawn_blocking(move || server_uuid(&root))
                .await
                .map_err(PluginError::failed)?
                .map_err(|e| PluginError::failed(format!("server uuid: {e}")))?;
            Ok(Instance::new(Arc::new(IntrospectionService {
                plugins: ctx.plugins(),
                uuid,
            })))
        }),
        Registration::new(types::GRPC, "introspection", |ctx| async move {
            let service =
                ctx.get_by_id::<IntrospectionService>(types::SERVICE, "introspection-service")?;
            Ok(Instance::new(GrpcService::new(move |routes, limits| {
                routes.add_service(limited!(
                    IntrospectionServer::from_arc(service.clone()),
                    limits
                ));
            })))
        })
        .requires(&[types::SERVICE]),
    ]
}

#[tonic::async_trait]
impl Introspection for IntrospectionService {
    async fn plugins(
        &self,
        req: Request<api::PluginsRequest>,
    ) -> Result<Response<api::PluginsResponse>, Status> {
        let filters = req.into_inner().filters;
        let plugins = IntrospectionService::plugins(self, &filters)
            .await
            .map_err(|e| filter_status(&e))?;
        Ok(Response::new(api::PluginsResponse { plugins }))
    }

    async fn server(&self, _req: Request<()>) -> Result<Response<api::ServerResponse>, Status> {
        Ok(Response::new(api::ServerResponse {
            uuid: self.uuid.clone(),
            pid: u64::from(std::process::id()),
            pidns: pid_namespace(),
            deprecations: Vec::new(),
        }))
    }
}
