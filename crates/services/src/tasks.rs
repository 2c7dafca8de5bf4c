//! Tasks: `io.containerd.service.v1.tasks-service` + `io.containerd.grpc.v1.tasks`. A task is
//! a container's running process, served by its runtime v2 shim through the task manager
//! (crated-runtime); this front-end turns each call into the shim's task API call.

use std::sync::Arc;

use containerd_shim_protos::api as shim;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::protobuf::MessageField;
use crated_api::containerd::services::tasks::v1 as api;
use crated_api::containerd::services::tasks::v1::tasks_server::{Tasks, TasksServer};
use crated_api::containerd::types;
use crated_api::containerd::v1::types as task_types;
use crated_errdefs::{HasKind, Kind};
use crated_metadata::MetadataStore;
use crated_plugin::{types as plugin_types, Instance, Registration};
use crated_runtime::shim::{CALL_TIMEOUT, STATE_TIMEOUT};
use crated_runtime::wire::{any_from_shim, any_to_shim, mount_to_shim, time_from_shim};
use crated_runtime::{CreateRequest, RuntimeError, Task, TaskManager};
use tonic::{Request, Response, Status};

use crate::containers::any_to_api;
use crate::message_limits::limited;
use crate::request::namespace;
use crate::status::{blocking, filters, status};
use crate::GrpcService;

pub struct TasksService {
    db: Arc<MetadataStore>,
    runtime: Arc<TaskManager>,
}

pub fn registrations() -> Vec<Registration> {
    vec![
        Registration::new(plugin_types::SERVICE, "tasks-service", |ctx| async move {
            let db = ctx.get_single::<MetadataStore>(plugin_types::METADATA)?;
            let runtime = ctx.get_by_id::<TaskManager>(plugin_types::RUNTIME_V2, "task")?;
            Ok(Instance::new(Arc::new(TasksService { db, runtime })))
        })
        .requires(&[plugin_types::RUNTIME_V2, plugin_types::METADATA]),
        Registration::new(plugin_types::GRPC, "tasks", |ctx| async move {
            let service = ctx.get_by_id::<TasksService>(plugin_types::SERVICE, "tasks-service")?;
            Ok(Instance::new(GrpcService::new(move |routes, limits| {
                routes.add_service(limited!(TasksServer::from_arc(service.clone()), limits));
            })))
        })
        .requires(&[plugin_types::SERVICE]),
    ]
}

fn err(e: RuntimeError) -> Status {
    status(&e)
}

impl TasksService {
    fn task(&self, ns: &str, id: &str) -> Result<Arc<Task>, Status> {
        self.runtime.get(ns, id).map_err(err)
    }

    async fn state(task: &Task, exec_id: &str) -> Result<task_types::Process, RuntimeError> {
        let req = shim::StateRequest {
            id: task.id.clone(),
            exec_id: exec_id.to_owned(),
            ..Default::default()
        };
        let s: shim::StateResponse = task.call("State", &req, Some(STATE_TIMEOUT)).await?;
        Ok(task_types::Process {
            container_id: String::new(),
            id: if exec_id.is_empty() {
                task.id.clone()
            } else {
                exec_id.to_owned()
            },
            pid: s.pid,
            status: s.status.value(),
            stdin: s.stdin,
            stdout: s.stdout,
            stderr: s.stderr,
            terminal: s.terminal,
            exit_status: s.exit_status,
            exited_at: s.exited_at.as_ref().map(time_from_shim),
        })
    }
}

#[tonic::async_trait]
impl Tasks for TasksService {
    async fn create(
        &self,
        req: Request<api::CreateTaskRequest>,
    ) -> Result<Response<api::CreateTaskResponse>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let db = self.db.clone();
        let (ns2, id) = (ns.clone(), req.container_id.clone());
        let container = blocking(move || db.container_get(&ns2, &id)).await?;
        if req.checkpoint.is_some() {
            return Err(Status::failed_precondition(
                "restoring a checkpoint is not supported: CRIU is not usable on this host",
            ));
        }
        let spec = container
            .spec
            .ok_or_else(|| Status::failed_precondition("container has no spec"))?;
        let options = req
            .options
            .or_else(|| container.runtime.options.map(any_to_api));
        let (_, pid) = self
            .runtime
            .create(CreateRequest {
                namespace: ns,
                id: container.id.clone(),
                runtime: container.runtime.name,
                runtime_path: req.runtime_path,
                spec: spec.value,
                options,
                rootfs: req.rootfs.into_iter().map(mount_to_shim).collect(),
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr,
                terminal: req.terminal,
            })
            .await
            .map_err(err)?;
        Ok(Response::new(api::CreateTaskResponse {
            container_id: container.id,
            pid,
        }))
    }

    async fn start(
        &self,
        req: Request<api::StartRequest>,
    ) -> Result<Response<api::StartResponse>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let task = self.task(&ns, &req.container_id)?;
        let r: shim::StartResponse = task
            .call(
                "Start",
                &shim::StartRequest {
                    id: req.container_id,
                    exec_id: req.exec_id,
                    ..Default::default()
                },
                Some(CALL_TIMEOUT),
            )
            .await
            .map_err(err)?;
        Ok(Response::new(api::StartResponse { pid: r.pid }))
    }

    async fn delete(
        &self,
        req: Request<api::DeleteTaskRequest>,
    ) -> Result<Response<api::DeleteResponse>, Status> {
        let ns = namespace(&req)?;
        let id = req.into_inner().container_id;
        self.task(&ns, &id)?;
        let r = self.runtime.delete(&ns, &id).await.map_err(err)?;
        Ok(Response::new(api::DeleteResponse {
            id,
            pid: r.pid,
            exit_status: r.exit_status,
            exited_at: r.exited_at.as_ref().map(time_from_shim),
        }))
    }

    async fn delete_process(
        &self,
        req: Request<api::DeleteProcessRequest>,
    ) -> Result<Response<api::DeleteResponse>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let task = self.task(&ns, &req.container_id)?;
        let r: shim::DeleteResponse = task
            .call(
                "Delete",
                &shim::DeleteRequest {
                    id: req.container_id,
                    exec_id: req.exec_id.clone(),
                    ..Default::default()
                },
                Some(CALL_TIMEOUT),
            )
            .await
            .map_err(err)?;
        Ok(Response::new(api::DeleteResponse {
            id: req.exec_id,
            pid: r.pid,
            exit_status: r.exit_status,
            exited_at: r.exited_at.as_ref().map(time_from_shim),
        }))
    }

    async fn get(
        &self,
        req: Request<api::GetRequest>,
    ) -> Result<Response<api::GetResponse>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let task = self.task(&ns, &req.container_id)?;
        let process = Self::state(&task, &req.exec_id)
            .await
            .map_err(|e| match e {
                // A shim that is gone has no task any more.
                RuntimeError::Unavailable(_) => err(crated_runtime::not_found(&req.container_id)),
                e => err(e),
            })?;
        Ok(Response::new(api::GetResponse {
            process: Some(process),
        }))
    }

    async fn list(
        &self,
        req: Request<api::ListTasksRequest>,
    ) -> Result<Response<api::ListTasksResponse>, Status> {
        let ns = namespace(&req)?;
        let filter = filters(std::slice::from_ref(&req.into_inner().filter))?;
        let mut tasks = Vec::new();
        for task in self.runtime.list(&ns) {
            match Self::state(&task, "").await {
                Ok(p) => {
                    let fields = |path: &[String]| match path.first().map(String::as_str) {
                        Some("id") => Some(p.id.clone()),
                        Some("pid") => Some(p.pid.to_string()),
                        Some("status") => task_types::Status::try_from(p.status)
                            .ok()
                            .map(|s| s.as_str_name().to_ascii_lowercase()),
                        _ => None,
                    };
                    if filter.matches(&fields) {
                        tasks.push(p);
                    }
                }
                // As containerd: a task being created or deleted (its shim gone, or not yet
                // holding the container) is left out, and other failures are logged rather than
                // failing the whole list.
                Err(RuntimeError::Unavailable(_)) => {}
                Err(e) if e.kind() == Kind::NotFound => {}
                Err(e) => tracing::warn!(id = %task.id, error = %e, "task left out of the list"),
            }
        }
        Ok(Response::new(api::ListTasksResponse { tasks }))
    }

    async fn kill(&self, req: Request<api::KillRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let task = self.task(&ns, &req.container_id)?;
        let _: Empty = task
            .call(
                "Kill",
                &shim::KillRequest {
                    id: req.container_id,
                    exec_id: req.exec_id,
                    signal: req.signal,
                    all: req.all,
                    ..Default::default()
                },
                Some(CALL_TIMEOUT),
            )
            .await
            .map_err(err)?;
        Ok(Response::new(()))
    }

    async fn exec(&self, req: Request<api::ExecProcessRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        if req.exec_id.is_empty() {
            return Err(Status::invalid_argument(
                "exec id must be provided: invalid argument",
            ));
        }
        let task = self.task(&ns, &req.container_id)?;
        let _: shim::ExecProcessResponse = task
            .call(
                "Exec",
                &shim::ExecProcessRequest {
                    id: req.container_id,
                    exec_id: req.exec_id,
                    terminal: req.terminal,
                    stdin: req.stdin,
                    stdout: req.stdout,
                    stderr: req.stderr,
                    spec: MessageField::from_option(req.spec.map(any_to_shim)),
                    ..Default::default()
                },
                Some(CALL_TIMEOUT),
            )
            .await
            .map_err(err)?;
        Ok(Response::new(()))
    }

    async fn resize_pty(
        &self,
        req: Request<api::ResizePtyRequest>,
    ) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let task = self.task(&ns, &req.container_id)?;
        let _: Empty = task
            .call(
                "ResizePty",
                &shim::ResizePtyRequest {
                    id: req.container_id,
                    exec_id: req.exec_id,
                    width: req.width,
                    height: req.height,
                    ..Default::default()
                },
                Some(CALL_TIMEOUT),
            )
            .await
            .map_err(err)?;
        Ok(Response::new(()))
    }

    async fn close_io(&self, req: Request<api::CloseIoRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let task = self.task(&ns, &req.container_id)?;
        let _: Empty = task
            .call(
                "CloseIO",
                &shim::CloseIORequest {
                    id: req.container_id,
                    exec_id: req.exec_id,
                    stdin: req.stdin,
                    ..Default::default()
                },
                Some(CALL_TIMEOUT),
            )
            .await
            .map_err(err)?;
        Ok(Response::new(()))
    }

    async fn pause(&self, req: Request<api::PauseTaskRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let id = req.into_inner().container_id;
        let task = self.task(&ns, &id)?;
        let req = shim::PauseRequest {
            id,
            ..Default::default()
        };
        let _: Empty = task
            .call("Pause", &req, Some(CALL_TIMEOUT))
            .await
            .map_err(err)?;
        Ok(Response::new(()))
    }

    async fn resume(&self, req: Request<api::ResumeTaskRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let id = req.into_inner().container_id;
        let task = self.task(&ns, &id)?;
        let req = shim::ResumeRequest {
            id,
            ..Default::default()
        };
        let _: Empty = task
            .call("Resume", &req, Some(CALL_TIMEOUT))
            .await
            .map_err(err)?;
        Ok(Response::new(()))
    }

    async fn list_pids(
        &self,
        req: Request<api::ListPidsRequest>,
    ) -> Result<Response<api::ListPidsResponse>, Status> {
        let ns = namespace(&req)?;
        let id = req.into_inner().container_id;
        let task = self.task(&ns, &id)?;
        let req = shim::PidsRequest {
            id,
            ..Default::default()
        };
        let r: shim::PidsResponse = task
            .call("Pids", &req, Some(CALL_TIMEOUT))
            .await
            .map_err(err)?;
        let processes = r
            .processes
            .iter()
            .map(|p| task_types::ProcessInfo {
                pid: p.pid,
                info: p.info.as_ref().map(any_from_shim),
            })
            .collect();
        Ok(Response::new(api::ListPidsResponse { processes }))
    }

    async fn checkpoint(
        &self,
        _req: Request<api::CheckpointTaskRequest>,
    ) -> Result<Response<api::CheckpointTaskResponse>, Status> {
        Err(Status::failed_precondition(
            "checkpoint is not supported: CRIU is not usable on this host",
        ))
    }

    async fn update(&self, req: Request<api::UpdateTaskRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let task = self.task(&ns, &req.container_id)?;
        let _: Empty = task
            .call(
                "Update",
                &shim::UpdateTaskRequest {
                    id: req.container_id,
                    resources: MessageField::from_option(req.resources.map(any_to_shim)),
                    annotations: req.annotations.into_iter().collect(),
                    ..Default::default()
                },
                Some(CALL_TIMEOUT),
            )
            .await
            .map_err(err)?;
        Ok(Response::new(()))
    }

    async fn metrics(
        &self,
        req: Request<api::MetricsRequest>,
    ) -> Result<Response<api::MetricsResponse>, Status> {
        let ns = namespace(&req)?;
        let filter = filters(&req.into_inner().filters)?;
        let mut metrics = Vec::new();
        for task in self.runtime.list(&ns) {
            let fields = |path: &[String]| match path.first().map(String::as_str) {
                Some("id") => Some(task.id.clone()),
                Some("namespace") => Some(task.namespace.clone()),
                _ => None,
            };
            if !filter.matches(&fields) {
                continue;
            }
            let req = shim::StatsRequest {
                id: task.id.clone(),
                ..Default::default()
            };
            let stats: shim::StatsResponse =
                match task.call("Stats", &req, Some(CALL_TIMEOUT)).await {
                    Ok(s) => s,
                    Err(RuntimeError::Unavailable(_)) => continue,
                    Err(e) => return Err(err(e)),
                };
            metrics.push(types::Metric {
                timestamp: Some(crate::wire::timestamp(crated_metadata::now_nanos())),
                id: task.id.clone(),
                data: stats.stats.as_ref().map(any_from_shim),
            });
        }
        Ok(Response::new(api::MetricsResponse { metrics }))
    }

    async fn wait(
        &self,
        req: Request<api::WaitRequest>,
    ) -> Result<Response<api::WaitResponse>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let task = self.task(&ns, &req.container_id)?;
        let r: shim::WaitResponse = task
            .call(
                "Wait",
                &shim::WaitRequest {
                    id: req.container_id,
                    exec_id: req.exec_id,
                    ..Default::default()
                },
                None,
            )
            .await
            .map_err(err)?;
        Ok(Response::new(api::WaitResponse {
            exit_status: r.exit_status,
            exited_at: r.exited_at.as_ref().map(time_from_shim),
        }))
    }
}
