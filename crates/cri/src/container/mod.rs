//! Pod containers: each is a containerd container in `k8s.io` with containerd's labels and
//! metadata extension, its task fed through FIFOs whose output this plugin writes into the
//! pod's log directory in CRI's format. States follow containerd's: created, running (a
//! start time), exited (a finish time, exit code and reason).

pub mod exec;
pub mod log;
mod recover;
pub mod spec;
pub mod stats;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crated_api::containerd::services::containers::v1 as containers_api;
use crated_api::containerd::services::containers::v1::containers_server::Containers;
use crated_api::containerd::services::snapshots::v1 as snapshots_api;
use crated_api::containerd::services::snapshots::v1::snapshots_server::Snapshots;
use crated_api::containerd::services::tasks::v1 as tasks_api;
use crated_api::containerd::services::tasks::v1::tasks_server::Tasks;
use k8s_cri::v1 as cri;
use tokio::sync::watch;
use tonic::Status;

use crate::sandbox::spec::ImageProcess;
use crate::sandbox::{by_id_or_prefix, generate_id, Pods, KIND_LABEL};
use crate::{in_namespace, CriError};
use spec::{ContainerSpecInput, PodParts};

pub const CONTAINER_METADATA: &str = "io.cri-containerd.container.metadata";
const CONTAINER_METADATA_TYPE: &str = "github.com/containerd/cri/pkg/store/container/Metadata";
const SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// How long an exited container's output may take to drain into its log.
const LOG_DRAIN: Duration = Duration::from_secs(10);

/// What a container went through, containerd's status checkpoint.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerStatus {
    pub pid: u32,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
}

impl ContainerStatus {
    fn state(&self) -> cri::ContainerState {
        if self.finished_at != 0 {
            cri::ContainerState::ContainerExited
        } else if self.started_at != 0 {
            cri::ContainerState::ContainerRunning
        } else {
            cri::ContainerState::ContainerCreated
        }
    }
}

pub struct CriContainer {
    pub id: String,
    pub name: String,
    pub sandbox_id: String,
    pub config: cri::ContainerConfig,
    /// The image id.
    pub image_ref: String,
    pub log_path: String,
    pub created_at: i64,
    pub stop_signal: String,
    status: Mutex<ContainerStatus>,
    /// True once the container's exit is recorded.
    exited: watch::Sender<bool>,
    /// `<root>/io.containerd.grpc.v1.cri/containers/<id>/status`: what a restart reads back.
    checkpoint: PathBuf,
    /// Where the running task's output is written, swapped by ReopenContainerLog.
    log: Mutex<Option<log::LogSink>>,
}

impl CriContainer {
    pub fn status(&self) -> ContainerStatus {
        self.status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Changes the status and writes its checkpoint (atomically: a crash leaves the old one).
    async fn update(&self, change: impl FnOnce(&mut ContainerStatus)) {
        let now = {
            let mut status = self
                .status
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            change(&mut status);
            status.clone()
        };
        if let Err(e) = save_checkpoint(&self.checkpoint, self.created_at, &now).await {
            tracing::warn!(id = %self.id, "writing the container's status: {e}");
        }
    }

    async fn wait_exited(&self, timeout: Duration) -> bool {
        let mut exited = self.exited.subscribe();
        tokio::time::timeout(timeout, exited.wait_for(|done| *done))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

pub(crate) fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

pub(crate) fn edge(e: CriError) -> Status {
    crated_services::status::status(&e)
}

/// A signal as images and CRI name it: `SIGTERM`, `TERM` or a number.
pub fn parse_signal(name: &str) -> Option<i32> {
    if let Ok(number) = name.parse::<i32>() {
        return Some(number);
    }
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|s| s as i32)
}

pub(crate) fn not_found_ok(e: Status) -> Result<(), Status> {
    if e.code() == tonic::Code::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

impl Pods {
    pub fn container(&self, id: &str) -> Result<Arc<CriContainer>, CriError> {
        let containers = self
            .containers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        by_id_or_prefix(&containers, id).ok_or_else(|| {
            CriError::NotFound(format!(
                "an error occurred when try to find container {id:?}"
            ))
        })
    }

    /// The containers of a pod.
    pub fn containers_of(&self, sandbox_id: &str) -> Vec<Arc<CriContainer>> {
        self.containers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .filter(|c| c.sandbox_id == sandbox_id)
            .cloned()
            .collect()
    }

    pub async fn create_container(
        &self,
        sandbox_id: &str,
        config: cri::ContainerConfig,
    ) -> Result<String, Status> {
        let sandbox = self.sandbox(sandbox_id).map_err(edge)?;
        let metadata = config.metadata.clone().unwrap_or_default();
        if metadata.name.is_empty() {
            return Err(edge(CriError::InvalidArgument(
                "container config must include metadata with a name".into(),
            )));
        }
        let pod = sandbox.config.metadata.clone().unwrap_or_default();
        let name = format!(
            "{}_{}_{}_{}_{}",
            metadata.name, pod.name, pod.namespace, pod.uid, metadata.attempt
        );
        let id = generate_id();
        self.names.reserve("container", &name, &id).map_err(edge)?;
        let made = self.make_container(&id, &name, &sandbox, config).await;
        match made {
            Ok(container) => {
                self.containers
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(id.clone(), container);
                Ok(id)
            }
            Err(e) => {
                self.delete_container_records(&id).await;
                self.names.release(&name);
                Err(e)
            }
        }
    }

    async fn make_container(
        &self,
        id: &str,
        name: &str,
        sandbox: &crate::sandbox::Sandbox,
        config: cri::ContainerConfig,
    ) -> Result<Arc<CriContainer>, Status> {
        let image_name = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        let image = self
            .images
            .find(&image_name)
            .await
            .map_err(edge)?
            .ok_or_else(|| {
                edge(CriError::NotFound(format!(
                    "failed to resolve image {image_name:?}"
                )))
            })?;
        let process = ImageProcess::from_config(&image.resolved.config);
        let files_dir = self.root.join("sandboxes").join(&sandbox.id);
        let cgroups_path = crate::sandbox::spec::cgroups_path(&sandbox.config, id);
        let spec = spec::container_spec(&ContainerSpecInput {
            id,
            config: &config,
            image: &process,
            image_user: &image.resolved.user,
            image_name: &image_name,
            pod: PodParts {
                sandbox_id: &sandbox.id,
                sandbox_config: &sandbox.config,
                pause_pid: sandbox.pid,
                files_dir: &files_dir,
                shm: sandbox.shm.as_deref(),
            },
            cgroups_path,
            restrict_oom_score_adj: self.config.restrict_oom_score_adj,
        })
        .map_err(edge)?;
        let log_path = if sandbox.config.log_directory.is_empty() || config.log_path.is_empty() {
            String::new()
        } else {
            Path::new(&sandbox.config.log_directory)
                .join(&config.log_path)
                .display()
                .to_string()
        };
        let mut labels: HashMap<String, String> = image
            .resolved
            .config
            .get("config")
            .and_then(|c| c.get("Labels"))
            .and_then(|l| l.as_object())
            .map(|l| {
                l.iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        labels.extend(config.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        labels.insert(KIND_LABEL.to_owned(), "container".to_owned());
        let created_at = now_nanos();
        let stop_signal = image.resolved.stop_signal.clone();
        let metadata = serde_json::json!({
            "Version": "v1",
            "Metadata": {
                "ID": id,
                "Name": name,
                "SandboxID": sandbox.id,
                "Config": &config,
                "ImageRef": image.id,
                "LogPath": log_path,
                "StopSignal": stop_signal,
                "ProcessLabel": "",
            }
        });
        let runtime = self
            .config
            .runtime(&sandbox.runtime_handler)
            .map(|(_, r)| r.runtime_type.clone())
            .unwrap_or_default();
        let snapshotter = self.config.containerd.snapshotter.clone();
        self.container_service
            .create(in_namespace(containers_api::CreateContainerRequest {
                container: Some(containers_api::Container {
                    id: id.to_owned(),
                    labels,
                    image: image
                        .names
                        .first()
                        .cloned()
                        .unwrap_or_else(|| image.id.clone()),
                    runtime: Some(containers_api::container::Runtime {
                        name: runtime,
                        options: None,
                    }),
                    spec: Some(prost_types::Any {
                        type_url: SPEC_TYPE.into(),
                        value: serde_json::to_vec(&spec).map_err(|e| {
                            Status::internal(format!("encoding the container spec: {e}"))
                        })?,
                    }),
                    snapshotter: snapshotter.clone(),
                    snapshot_key: id.to_owned(),
                    extensions: HashMap::from([(
                        CONTAINER_METADATA.to_owned(),
                        prost_types::Any {
                            type_url: CONTAINER_METADATA_TYPE.into(),
                            value: serde_json::to_vec(&metadata).unwrap_or_default(),
                        },
                    )]),
                    ..Default::default()
                }),
            }))
            .await?;
        let parent = crated_images::chain_ids(&image.resolved.diff_ids)
            .pop()
            .unwrap_or_default();
        self.snapshots
            .prepare(in_namespace(snapshots_api::PrepareSnapshotRequest {
                snapshotter,
                key: id.to_owned(),
                parent,
                labels: HashMap::new(),
            }))
            .await?;
        let (exited, _) = watch::channel(false);
        let container = Arc::new(CriContainer {
            id: id.to_owned(),
            name: name.to_owned(),
            sandbox_id: sandbox.id.clone(),
            config,
            image_ref: image.id.clone(),
            log_path,
            created_at,
            stop_signal,
            status: Mutex::new(ContainerStatus::default()),
            exited,
            checkpoint: self.root.join("containers").join(id).join("status"),
            log: Mutex::new(None),
        });
        save_checkpoint(
            &container.checkpoint,
            created_at,
            &ContainerStatus::default(),
        )
        .await
        .map_err(|e| Status::internal(format!("writing the container's status: {e}")))?;
        Ok(container)
    }

    /// The container's record and snapshot, and its directories; each may be absent.
    async fn delete_container_records(&self, id: &str) {
        let snapshotter = self.config.containerd.snapshotter.clone();
        let removed = self
            .snapshots
            .remove(in_namespace(snapshots_api::RemoveSnapshotRequest {
                snapshotter,
                key: id.to_owned(),
            }))
            .await;
        if let Err(e) = removed.map(drop).or_else(not_found_ok) {
            tracing::warn!(%id, "removing a container's snapshot: {e}");
        }
        let deleted = self
            .container_service
            .delete(in_namespace(containers_api::DeleteContainerRequest {
                id: id.to_owned(),
            }))
            .await;
        if let Err(e) = deleted.map(drop).or_else(not_found_ok) {
            tracing::warn!(%id, "removing a container's record: {e}");
        }
        for dir in [
            self.root.join("containers").join(id),
            self.state.join("containers").join(id),
        ] {
            if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(%id, "removing {}: {e}", dir.display());
                }
            }
        }
    }

    pub async fn start_container(&self, id: &str) -> Result<(), Status> {
        let container = self.container(id).map_err(edge)?;
        let state = container.status().state();
        if state != cri::ContainerState::ContainerCreated {
            return Err(edge(CriError::FailedPrecondition(format!(
                "container {:?} is in {} state",
                container.id,
                state.as_str_name()
            ))));
        }
        let sandbox = self.sandbox(&container.sandbox_id).map_err(edge)?;
        if sandbox.state() != crate::sandbox::State::Ready {
            return Err(edge(CriError::FailedPrecondition(format!(
                "sandbox container {:?} is not running",
                sandbox.id
            ))));
        }
        match self.start_task(&container).await {
            Ok(()) => Ok(()),
            Err(e) => {
                // As containerd: a start that fails leaves an exited container, code 128.
                container
                    .update(|s| {
                        s.finished_at = now_nanos();
                        s.exit_code = 128;
                        s.reason = "StartError".into();
                        s.message = e.message().to_owned();
                    })
                    .await;
                container.exited.send_replace(true);
                let _ = self
                    .tasks
                    .delete(in_namespace(tasks_api::DeleteTaskRequest {
                        container_id: container.id.clone(),
                    }))
                    .await;
                Err(e)
            }
        }
    }

    async fn start_task(&self, container: &Arc<CriContainer>) -> Result<(), Status> {
        let id = &container.id;
        let io_dir = self
            .state
            .join("containers")
            .join(id)
            .join("io")
            .join(&generate_id()[..16]);
        let tty = container.config.tty;
        let streams: &[&'static str] = if tty {
            &["stdout"]
        } else {
            &["stdout", "stderr"]
        };
        let (paths, ends) = open_fifos(&io_dir, id, streams).await.map_err(edge)?;
        let sink = open_log(&container.log_path).await.map_err(edge)?;
        *container
            .log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(sink.clone());
        let max_line = self.config.max_log_line();
        let mounts = self
            .snapshots
            .mounts(in_namespace(snapshots_api::MountsRequest {
                snapshotter: self.config.containerd.snapshotter.clone(),
                key: id.clone(),
            }))
            .await?
            .into_inner()
            .mounts;
        self.tasks
            .create(in_namespace(tasks_api::CreateTaskRequest {
                container_id: id.clone(),
                rootfs: mounts,
                stdout: paths[0].display().to_string(),
                stderr: paths
                    .get(1)
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                terminal: tty,
                ..Default::default()
            }))
            .await?;
        // The shim holds the FIFOs' write ends now: ours go, so the copies end with its.
        let mut copies = Vec::new();
        for ((receiver, own_writer), name) in ends.into_iter().zip(streams.iter().copied()) {
            drop(own_writer);
            copies.push(tokio::spawn(log::copy_stream(
                receiver,
                name,
                sink.clone(),
                max_line,
            )));
        }
        let pid = self
            .tasks
            .start(in_namespace(tasks_api::StartRequest {
                container_id: id.clone(),
                exec_id: String::new(),
            }))
            .await?
            .into_inner()
            .pid;
        container
            .update(|s| {
                s.pid = pid;
                s.started_at = now_nanos();
            })
            .await;
        self.watch_container_exit(container.clone(), copies);
        Ok(())
    }

    pub(crate) fn watch_container_exit(
        &self,
        container: Arc<CriContainer>,
        copies: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
    ) {
        let tasks = self.tasks.clone();
        tokio::spawn(async move {
            let id = container.id.clone();
            let waited = tasks
                .wait(in_namespace(tasks_api::WaitRequest {
                    container_id: id.clone(),
                    exec_id: String::new(),
                }))
                .await;
            let (code, finished) = match waited {
                Ok(w) => {
                    let w = w.into_inner();
                    let at = w
                        .exited_at
                        .map(|t| t.seconds * 1_000_000_000 + i64::from(t.nanos))
                        .unwrap_or_else(now_nanos);
                    (w.exit_status as i32, at)
                }
                Err(e) => {
                    tracing::warn!(%id, "waiting for a container: {e}");
                    (255, now_nanos())
                }
            };
            for copy in copies {
                match tokio::time::timeout(LOG_DRAIN, copy).await {
                    Ok(Ok(Err(e))) => tracing::warn!(%id, "writing a container's log: {e}"),
                    Err(_) => tracing::warn!(%id, "a container's output did not end"),
                    _ => {}
                }
            }
            let deleted = tasks
                .delete(in_namespace(tasks_api::DeleteTaskRequest {
                    container_id: id.clone(),
                }))
                .await;
            if let Err(e) = deleted.map(drop).or_else(not_found_ok) {
                tracing::warn!(%id, "deleting an exited container's task: {e}");
            }
            container
                .update(|s| {
                    s.finished_at = finished;
                    s.exit_code = code;
                    if s.reason.is_empty() {
                        s.reason = if code == 0 { "Completed" } else { "Error" }.into();
                    }
                })
                .await;
            container.exited.send_replace(true);
        });
    }

    /// StopContainer: the stop signal, then SIGKILL once `timeout` passed.
    pub async fn stop_container(&self, id: &str, timeout: i64) -> Result<(), Status> {
        let container = self.container(id).map_err(edge)?;
        if container.status().state() != cri::ContainerState::ContainerRunning {
            return Ok(());
        }
        let kill = |signal: i32| {
            self.tasks.kill(in_namespace(tasks_api::KillRequest {
                container_id: container.id.clone(),
                exec_id: String::new(),
                signal: signal as u32,
                all: false,
            }))
        };
        if timeout > 0 {
            let signal = parse_signal(&container.stop_signal).unwrap_or(libc::SIGTERM);
            kill(signal).await.map(drop).or_else(not_found_ok)?;
            if container
                .wait_exited(Duration::from_secs(timeout as u64))
                .await
            {
                return Ok(());
            }
        }
        kill(libc::SIGKILL).await.map(drop).or_else(not_found_ok)?;
        if container.wait_exited(Duration::from_secs(120)).await {
            Ok(())
        } else {
            Err(Status::deadline_exceeded(format!(
                "container {:?} did not exit after SIGKILL",
                container.id
            )))
        }
    }

    /// RemoveContainer: stops it first when running; an unknown container is no error.
    pub async fn remove_container(&self, id: &str) -> Result<(), Status> {
        let container = match self.container(id) {
            Ok(container) => container,
            Err(CriError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(edge(e)),
        };
        self.stop_container(&container.id, 0).await?;
        self.delete_container_records(&container.id).await;
        self.containers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&container.id);
        self.names.release(&container.name);
        Ok(())
    }

    /// ReopenContainerLog: the running container's output goes to a newly opened log file
    /// (the kubelet has rotated the old one away).
    pub async fn reopen_container_log(&self, id: &str) -> Result<(), Status> {
        let container = self.container(id).map_err(edge)?;
        if container.status().state() != cri::ContainerState::ContainerRunning {
            return Err(edge(CriError::FailedPrecondition(format!(
                "container {:?} is not running",
                container.id
            ))));
        }
        let sink = container
            .log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let (Some(sink), false) = (sink, container.log_path.is_empty()) else {
            return Ok(());
        };
        let fresh = open_log(&container.log_path).await.map_err(edge)?;
        let file = std::mem::replace(&mut *fresh.lock().await, Box::new(tokio::io::sink()));
        let mut current = sink.lock().await;
        use tokio::io::AsyncWriteExt;
        let _ = current.flush().await;
        *current = file;
        Ok(())
    }

    /// UpdateContainerResources: the new limits reach the running task.
    pub async fn update_container_resources(
        &self,
        id: &str,
        resources: Option<cri::LinuxContainerResources>,
    ) -> Result<(), Status> {
        let container = self.container(id).map_err(edge)?;
        let Some(resources) = resources else {
            return Ok(());
        };
        if container.status().state() != cri::ContainerState::ContainerRunning {
            return Ok(());
        }
        let limits = spec::linux_resources(&resources);
        self.tasks
            .update(in_namespace(tasks_api::UpdateTaskRequest {
                container_id: container.id.clone(),
                resources: Some(prost_types::Any {
                    type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"
                        .into(),
                    value: serde_json::to_vec(&limits).unwrap_or_default(),
                }),
                ..Default::default()
            }))
            .await?;
        Ok(())
    }

    pub fn container_status(&self, id: &str) -> Result<cri::ContainerStatus, CriError> {
        let c = self.container(id)?;
        let status = c.status();
        Ok(cri::ContainerStatus {
            id: c.id.clone(),
            metadata: c.config.metadata.clone(),
            state: status.state() as i32,
            created_at: c.created_at,
            started_at: status.started_at,
            finished_at: status.finished_at,
            exit_code: status.exit_code,
            image: c.config.image.clone(),
            image_ref: c.image_ref.clone(),
            reason: status.reason,
            message: status.message,
            labels: c.config.labels.clone(),
            annotations: c.config.annotations.clone(),
            mounts: c.config.mounts.clone(),
            log_path: c.log_path.clone(),
            ..Default::default()
        })
    }

    pub fn list_containers(&self, filter: Option<cri::ContainerFilter>) -> Vec<cri::Container> {
        let containers = self
            .containers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut listed: Vec<cri::Container> = containers
            .values()
            .filter(|c| match &filter {
                None => true,
                Some(f) => {
                    (f.id.is_empty() || c.id.starts_with(&f.id))
                        && (f.pod_sandbox_id.is_empty()
                            || c.sandbox_id.starts_with(&f.pod_sandbox_id))
                        && f.state
                            .as_ref()
                            .is_none_or(|v| v.state == c.status().state() as i32)
                        && f.label_selector
                            .iter()
                            .all(|(k, v)| c.config.labels.get(k) == Some(v))
                }
            })
            .map(|c| cri::Container {
                id: c.id.clone(),
                pod_sandbox_id: c.sandbox_id.clone(),
                metadata: c.config.metadata.clone(),
                image: c.config.image.clone(),
                image_ref: c.image_ref.clone(),
                state: c.status().state() as i32,
                created_at: c.created_at,
                labels: c.config.labels.clone(),
                annotations: c.config.annotations.clone(),
                ..Default::default()
            })
            .collect();
        listed.sort_by_key(|c| c.created_at);
        listed
    }
}

/// containerd's status checkpoint: `{"Version":"v1","Pid",...}`, rewritten whole.
async fn save_checkpoint(
    path: &Path,
    created_at: i64,
    status: &ContainerStatus,
) -> std::io::Result<()> {
    let json = serde_json::json!({
        "Version": "v1",
        "Pid": status.pid,
        "CreatedAt": created_at,
        "StartedAt": status.started_at,
        "FinishedAt": status.finished_at,
        "ExitCode": status.exit_code,
        "Reason": status.reason,
        "Message": status.message,
    });
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    let staged = path.with_extension("new");
    tokio::fs::write(&staged, json.to_string()).await?;
    tokio::fs::rename(&staged, path).await
}

/// A status checkpoint read back; None when it is missing or unreadable.
pub(crate) fn load_checkpoint(path: &Path) -> Option<(i64, ContainerStatus)> {
    let bytes = std::fs::read(path).ok()?;
    let json: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let int = |key: &str| json[key].as_i64().unwrap_or(0);
    Some((
        int("CreatedAt"),
        ContainerStatus {
            pid: u32::try_from(int("Pid")).unwrap_or(0),
            started_at: int("StartedAt"),
            finished_at: int("FinishedAt"),
            exit_code: i32::try_from(int("ExitCode")).unwrap_or(0),
            reason: json["Reason"].as_str().unwrap_or_default().to_owned(),
            message: json["Message"].as_str().unwrap_or_default().to_owned(),
        },
    ))
}

pub(crate) type FifoEnds = (tokio::net::unix::pipe::Receiver, std::fs::File);

/// Makes a container's output FIFOs and opens their read ends. Each also gets a write end
/// of ours, held until the shim has its own: a reader alone would see the end at once.
pub(crate) async fn open_fifos(
    dir: &Path,
    id: &str,
    streams: &[&str],
) -> Result<(Vec<PathBuf>, Vec<FifoEnds>), CriError> {
    let dir = dir.to_path_buf();
    let id = id.to_owned();
    let streams: Vec<String> = streams.iter().map(|s| s.to_string()).collect();
    let made = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir)
            .map_err(|e| CriError::Internal(format!("making {}: {e}", dir.display())))?;
        let mut paths = Vec::new();
        for stream in &streams {
            let path = dir.join(format!("{id}-{stream}"));
            nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o700))
                .map_err(|e| CriError::Internal(format!("making {}: {e}", path.display())))?;
            paths.push(path);
        }
        Ok::<_, CriError>(paths)
    })
    .await
    .map_err(|e| CriError::Internal(e.to_string()))??;
    let mut ends = Vec::new();
    for path in &made {
        let receiver = tokio::net::unix::pipe::OpenOptions::new()
            .open_receiver(path)
            .map_err(|e| CriError::Internal(format!("opening {}: {e}", path.display())))?;
        use std::os::unix::fs::OpenOptionsExt;
        let writer = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| CriError::Internal(format!("opening {}: {e}", path.display())))?;
        ends.push((receiver, writer));
    }
    Ok((made, ends))
}

/// The container's log file, appended to (its directory made); None discards output.
pub(crate) async fn open_log(path: &str) -> Result<log::LogSink, CriError> {
    if path.is_empty() {
        return Ok(Arc::new(tokio::sync::Mutex::new(Box::new(
            tokio::io::sink(),
        ))));
    }
    let path = PathBuf::from(path);
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| CriError::Internal(format!("making {}: {e}", parent.display())))?;
    }
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .await
        .map_err(|e| CriError::Internal(format!("opening {}: {e}", path.display())))?;
    Ok(Arc::new(tokio::sync::Mutex::new(Box::new(file))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_are_read_by_name_or_number() {
        assert_eq!(parse_signal("SIGTERM"), Some(libc::SIGTERM));
        assert_eq!(parse_signal("TERM"), Some(libc::SIGTERM));
        assert_eq!(parse_signal("sigquit"), Some(libc::SIGQUIT));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal("NOPE"), None);
        assert_eq!(parse_signal(""), None);
    }

    #[test]
    fn states_follow_the_times() {
        let mut s = ContainerStatus::default();
        assert_eq!(s.state(), cri::ContainerState::ContainerCreated);
        s.started_at = 1;
        assert_eq!(s.state(), cri::ContainerState::ContainerRunning);
        s.finished_at = 2;
        assert_eq!(s.state(), cri::ContainerState::ContainerExited);
    }
}
