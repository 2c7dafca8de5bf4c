//! ExecSync: a command in a running container, its output gathered (at most 16 MiB a
//! stream, as containerd keeps), its exit code returned; killed when it outlasts its timeout.

use std::time::Duration;

use crated_api::containerd::services::containers::v1 as containers_api;
use crated_api::containerd::services::containers::v1::containers_server::Containers;
use crated_api::containerd::services::tasks::v1 as tasks_api;
use crated_api::containerd::services::tasks::v1::tasks_server::Tasks;
use k8s_cri::v1 as cri;
use tokio::io::AsyncReadExt;
use tonic::Status;

use super::{edge, open_fifos};
use crate::sandbox::{generate_id, Pods};
use crate::{in_namespace, CriError};

/// What containerd keeps of each output stream of an ExecSync.
pub const MAX_EXEC_OUTPUT: usize = 16 << 20;
const PROCESS_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";

/// Reads a stream to its end, keeping at most `limit` bytes of it.
async fn read_capped<R: tokio::io::AsyncRead + Unpin>(mut reader: R, limit: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = limit.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    kept
}

impl Pods {
    pub async fn exec_sync(
        &self,
        request: cri::ExecSyncRequest,
    ) -> Result<cri::ExecSyncResponse, Status> {
        let container = self.container(&request.container_id).map_err(edge)?;
        if container.status().state() != cri::ContainerState::ContainerRunning {
            return Err(edge(CriError::FailedPrecondition(format!(
                "container {:?} is not running",
                container.id
            ))));
        }
        if request.cmd.is_empty() {
            return Err(edge(CriError::InvalidArgument(
                "a command to run is required".into(),
            )));
        }
        // The exec runs as the container's process does, with the command given.
        let record = self
            .container_service
            .get(in_namespace(containers_api::GetContainerRequest {
                id: container.id.clone(),
            }))
            .await?
            .into_inner()
            .container
            .and_then(|c| c.spec)
            .ok_or_else(|| Status::internal("the container has no spec"))?;
        let spec: serde_json::Value = serde_json::from_slice(&record.value)
            .map_err(|e| Status::internal(format!("the container's spec: {e}")))?;
        let mut process = spec["process"].clone();
        process["args"] = serde_json::json!(request.cmd);
        process["terminal"] = serde_json::json!(false);

        let exec_id = generate_id()[..32].to_owned();
        let io_dir = self
            .state
            .join("containers")
            .join(&container.id)
            .join("io")
            .join(&exec_id);
        let (paths, ends) = open_fifos(&io_dir, &exec_id, &["stdout", "stderr"])
            .await
            .map_err(edge)?;
        let result = self
            .run_exec(
                &container.id,
                &exec_id,
                process,
                &paths,
                ends,
                request.timeout,
            )
            .await;
        let _ = tokio::fs::remove_dir_all(&io_dir).await;
        result
    }

    async fn run_exec(
        &self,
        container_id: &str,
        exec_id: &str,
        process: serde_json::Value,
        paths: &[std::path::PathBuf],
        ends: Vec<super::FifoEnds>,
        timeout: i64,
    ) -> Result<cri::ExecSyncResponse, Status> {
        self.tasks
            .exec(in_namespace(tasks_api::ExecProcessRequest {
                container_id: container_id.to_owned(),
                exec_id: exec_id.to_owned(),
                stdout: paths[0].display().to_string(),
                stderr: paths[1].display().to_string(),
                terminal: false,
                spec: Some(prost_types::Any {
                    type_url: PROCESS_TYPE.into(),
                    value: serde_json::to_vec(&process).unwrap_or_default(),
                }),
                ..Default::default()
            }))
            .await?;
        // An exec's FIFOs are opened by the shim at start: our write ends stay until then.
        let mut readers = Vec::new();
        let mut own_writers = Vec::new();
        for (receiver, own_writer) in ends {
            own_writers.push(own_writer);
            readers.push(tokio::spawn(read_capped(receiver, MAX_EXEC_OUTPUT)));
        }
        let started = self
            .tasks
            .start(in_namespace(tasks_api::StartRequest {
                container_id: container_id.to_owned(),
                exec_id: exec_id.to_owned(),
            }))
            .await;
        drop(own_writers);
        let outcome = match started {
            Err(e) => Err(e),
            Ok(_) => {
                let wait = self.tasks.wait(in_namespace(tasks_api::WaitRequest {
                    container_id: container_id.to_owned(),
                    exec_id: exec_id.to_owned(),
                }));
                if timeout > 0 {
                    match tokio::time::timeout(Duration::from_secs(timeout as u64), wait).await {
                        Ok(waited) => waited.map(|w| w.into_inner().exit_status),
                        Err(_) => {
                            let _ = self
                                .tasks
                                .kill(in_namespace(tasks_api::KillRequest {
                                    container_id: container_id.to_owned(),
                                    exec_id: exec_id.to_owned(),
                                    signal: libc::SIGKILL as u32,
                                    all: false,
                                }))
                                .await;
                            Err(Status::deadline_exceeded(format!(
                                "timeout {timeout}s exceeded: context deadline exceeded"
                            )))
                        }
                    }
                } else {
                    wait.await.map(|w| w.into_inner().exit_status)
                }
            }
        };
        let mut outputs = Vec::new();
        for reader in readers {
            let read = tokio::time::timeout(Duration::from_secs(10), reader).await;
            outputs.push(read.ok().and_then(Result::ok).unwrap_or_default());
        }
        let deleted = self
            .tasks
            .delete_process(in_namespace(tasks_api::DeleteProcessRequest {
                container_id: container_id.to_owned(),
                exec_id: exec_id.to_owned(),
            }))
            .await;
        if let Err(e) = deleted {
            tracing::debug!(%container_id, %exec_id, "deleting an exec: {e}");
        }
        let exit_code = outcome? as i32;
        let mut outputs = outputs.into_iter();
        Ok(cri::ExecSyncResponse {
            stdout: outputs.next().unwrap_or_default(),
            stderr: outputs.next().unwrap_or_default(),
            exit_code,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::read_capped;

    #[tokio::test]
    async fn output_past_the_limit_is_read_and_dropped() {
        let input = vec![7u8; 100_000];
        let kept = read_capped(&input[..], 1000).await;
        assert_eq!(kept.len(), 1000);
        let all = read_capped(&b"short"[..], 1000).await;
        assert_eq!(all, b"short");
    }
}
