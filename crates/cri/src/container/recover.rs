//! Containers rebuilt after a restart: each from its record's metadata extension and its
//! status checkpoint, reconciled with its task (running: its output is copied again and its
//! exit watched; exited while crated was down: the exit recorded, the task deleted).

use std::sync::{Arc, Mutex};

use crated_api::containerd::services::containers::v1 as containers_api;
use crated_api::containerd::services::tasks::v1 as tasks_api;
use crated_api::containerd::services::tasks::v1::tasks_server::Tasks;
use crated_api::containerd::v1::types::Status as ProcessStatus;
use k8s_cri::v1 as cri;
use serde::Deserialize;
use tokio::sync::watch;

use super::{load_checkpoint, log, open_log, CriContainer, CONTAINER_METADATA};
use crate::in_namespace;
use crate::sandbox::recover::{nanos, Versioned};
use crate::sandbox::Pods;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerMetadata {
    #[serde(rename = "ID")]
    id: String,
    name: String,
    #[serde(rename = "SandboxID")]
    sandbox_id: String,
    config: cri::ContainerConfig,
    #[serde(default)]
    image_ref: String,
    #[serde(default)]
    log_path: String,
    #[serde(default)]
    stop_signal: String,
}

impl Pods {
    pub(crate) async fn recover_containers(&self) {
        let records = match self.records_of_kind("container").await {
            Ok(records) => records,
            Err(e) => {
                tracing::warn!("listing containers to recover: {e}");
                return;
            }
        };
        for record in records {
            if let Err(why) = self.recover_container(&record).await {
                tracing::warn!(id = %record.id, "not recovering a container: {why}");
            }
        }
    }

    async fn recover_container(&self, record: &containers_api::Container) -> Result<(), String> {
        let extension = record
            .extensions
            .get(CONTAINER_METADATA)
            .ok_or("no container metadata")?;
        let metadata: Versioned<ContainerMetadata> =
            serde_json::from_slice(&extension.value).map_err(|e| e.to_string())?;
        let metadata = metadata.metadata;
        let checkpoint = self
            .root
            .join("containers")
            .join(&metadata.id)
            .join("status");
        let (created_at, status) = load_checkpoint(&checkpoint)
            .unwrap_or_else(|| (nanos(&record.created_at), Default::default()));
        let (exited, _) = watch::channel(status.finished_at != 0);
        let container = Arc::new(CriContainer {
            id: metadata.id.clone(),
            name: metadata.name.clone(),
            sandbox_id: metadata.sandbox_id,
            config: metadata.config,
            image_ref: metadata.image_ref,
            log_path: metadata.log_path,
            created_at,
            stop_signal: metadata.stop_signal,
            status: Mutex::new(status.clone()),
            exited,
            checkpoint,
            log: Mutex::new(None),
        });
        self.names
            .reserve("container", &container.name, &container.id)
            .map_err(|e| e.to_string())?;
        self.containers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(container.id.clone(), container.clone());

        let task = self.task_of(&container.id).await;
        match task {
            Some(process) if process.status == ProcessStatus::Running as i32 => {
                let sink = open_log(&container.log_path)
                    .await
                    .map_err(|e| e.to_string())?;
                let max_line = self.config.max_log_line();
                *container
                    .log
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(sink.clone());
                let mut copies = Vec::new();
                for (path, name) in [(&process.stdout, "stdout"), (&process.stderr, "stderr")] {
                    if path.is_empty() {
                        continue;
                    }
                    // The shim holds the write end, so the copy ends with its.
                    match tokio::net::unix::pipe::OpenOptions::new().open_receiver(path) {
                        Ok(receiver) => copies.push(tokio::spawn(log::copy_stream(
                            receiver,
                            name,
                            sink.clone(),
                            max_line,
                        ))),
                        Err(e) => tracing::warn!(id = %container.id, "reopening {path}: {e}"),
                    }
                }
                if status.started_at == 0 {
                    let pid = process.pid;
                    container
                        .update(|s| {
                            s.pid = pid;
                            s.started_at = super::now_nanos();
                        })
                        .await;
                }
                self.watch_container_exit(container, copies);
            }
            Some(process) if process.status == ProcessStatus::Stopped as i32 => {
                let finished = nanos(&process.exited_at);
                let code = process.exit_status as i32;
                container
                    .update(|s| {
                        s.finished_at = if finished == 0 {
                            super::now_nanos()
                        } else {
                            finished
                        };
                        s.exit_code = code;
                        if s.reason.is_empty() {
                            s.reason = if code == 0 { "Completed" } else { "Error" }.into();
                        }
                    })
                    .await;
                container.exited.send_replace(true);
                let _ = self
                    .tasks
                    .delete(in_namespace(tasks_api::DeleteTaskRequest {
                        container_id: container.id.clone(),
                    }))
                    .await;
            }
            _ => {
                // Started, with no task left: it exited while crated was down.
                if status.started_at != 0 && status.finished_at == 0 {
                    container
                        .update(|s| {
                            s.finished_at = super::now_nanos();
                            s.exit_code = 255;
                            s.reason = "Unknown".into();
                        })
                        .await;
                    container.exited.send_replace(true);
                }
            }
        }
        Ok(())
    }
}
