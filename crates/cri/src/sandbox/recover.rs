//! After a restart: every pod and container is rebuilt from its containerd record (labels
//! and metadata extension) and its task, as containerd's CRI does at start. Running ones are
//! watched again, exits that happened while crated was down are recorded, names are held
//! again. A record that cannot be read is left alone, with a warning.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crated_api::containerd::services::containers::v1 as containers_api;
use crated_api::containerd::services::containers::v1::containers_server::Containers;
use crated_api::containerd::services::tasks::v1 as tasks_api;
use crated_api::containerd::services::tasks::v1::tasks_server::Tasks;
use crated_api::containerd::v1::types::{Process, Status as ProcessStatus};
use k8s_cri::v1 as cri;
use serde::Deserialize;

use super::{Pods, Sandbox, State, KIND_LABEL, SANDBOX_METADATA};
use crate::in_namespace;

/// containerd's `{"Version":"v1","Metadata":{...}}` around a CRI object's metadata.
#[derive(Deserialize)]
pub(crate) struct Versioned<T> {
    #[serde(rename = "Metadata")]
    pub(crate) metadata: T,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SandboxMetadata {
    #[serde(rename = "ID")]
    id: String,
    name: String,
    config: cri::PodSandboxConfig,
    #[serde(rename = "NetNSPath", default)]
    netns_path: String,
    #[serde(rename = "IP", default)]
    ip: String,
    #[serde(rename = "AdditionalIPs", default)]
    additional_ips: Option<Vec<String>>,
    #[serde(default)]
    runtime_handler: String,
}

/// Timestamp of a record, in nanoseconds.
pub(crate) fn nanos(at: &Option<prost_types::Timestamp>) -> i64 {
    at.as_ref()
        .map(|t| t.seconds * 1_000_000_000 + i64::from(t.nanos))
        .unwrap_or(0)
}

impl Pods {
    /// The records of one kind (`sandbox`, `container`) in `k8s.io`.
    pub(crate) async fn records_of_kind(
        &self,
        kind: &str,
    ) -> Result<Vec<containers_api::Container>, tonic::Status> {
        Ok(self
            .container_service
            .list(in_namespace(containers_api::ListContainersRequest {
                filters: vec![format!("labels.\"{KIND_LABEL}\"=={kind}")],
            }))
            .await?
            .into_inner()
            .containers)
    }

    /// The task of a container, when it has one.
    pub(crate) async fn task_of(&self, id: &str) -> Option<Process> {
        self.tasks
            .get(in_namespace(tasks_api::GetRequest {
                container_id: id.to_owned(),
                exec_id: String::new(),
            }))
            .await
            .ok()
            .and_then(|r| r.into_inner().process)
    }

    /// Rebuilds every pod, then every container.
    pub async fn recover(self: &Arc<Self>) {
        match self.records_of_kind("sandbox").await {
            Ok(records) => {
                for record in records {
                    if let Err(why) = self.recover_sandbox(&record).await {
                        tracing::warn!(id = %record.id, "not recovering a pod: {why}");
                    }
                }
            }
            Err(e) => tracing::warn!("listing pods to recover: {e}"),
        }
        self.recover_containers().await;
    }

    async fn recover_sandbox(&self, record: &containers_api::Container) -> Result<(), String> {
        let extension = record
            .extensions
            .get(SANDBOX_METADATA)
            .ok_or("no sandbox metadata")?;
        let metadata: Versioned<SandboxMetadata> =
            serde_json::from_slice(&extension.value).map_err(|e| e.to_string())?;
        let metadata = metadata.metadata;
        let task = self.task_of(&record.id).await;
        let running = task
            .as_ref()
            .is_some_and(|p| p.status == ProcessStatus::Running as i32);
        let shm = self.state.join("sandboxes").join(&record.id).join("shm");
        let netns = (!metadata.netns_path.is_empty()).then(|| PathBuf::from(&metadata.netns_path));
        let network_up = netns.as_ref().is_some_and(|p| p.exists());
        let sandbox = Arc::new(Sandbox {
            id: metadata.id.clone(),
            name: metadata.name.clone(),
            config: metadata.config,
            runtime_handler: metadata.runtime_handler,
            created_at: nanos(&record.created_at),
            state: Mutex::new(if running {
                State::Ready
            } else {
                State::NotReady
            }),
            ip: metadata.ip,
            additional_ips: metadata.additional_ips.unwrap_or_default(),
            pid: task.as_ref().map_or(0, |p| p.pid),
            shm: shm.exists().then_some(shm),
            network_up: Mutex::new(network_up),
            netns,
        });
        self.names
            .reserve("sandbox", &sandbox.name, &sandbox.id)
            .map_err(|e| e.to_string())?;
        self.sandboxes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(sandbox.id.clone(), sandbox.clone());
        if running {
            self.watch_exit(sandbox);
        }
        Ok(())
    }
}
