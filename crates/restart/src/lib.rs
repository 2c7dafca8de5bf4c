//! The restart monitor, plugin `io.containerd.internal.v1.restart`: keeps each container
//! labelled `containerd.io/restart.status` in that status (`running` or `stopped`), checking
//! every `interval` (10s), with containerd's labels: `restart.policy` (`always`, `no`,
//! `on-failure[:N]`, `unless-stopped`), `restart.count`, `restart.explicitly-stopped`, and the
//! task's output in `restart.loguri` (or the older `restart.logpath`).
//!
//! Like containerd's, it is a client of the services in this process: it does what `ctr`
//! would do, through the same calls.

use std::sync::Arc;
use std::time::Duration;

use crated_api::containerd::services::containers::v1 as containers_api;
use crated_api::containerd::services::containers::v1::containers_server::Containers;
use crated_api::containerd::services::snapshots::v1 as snapshots_api;
use crated_api::containerd::services::snapshots::v1::snapshots_server::Snapshots;
use crated_api::containerd::services::tasks::v1 as tasks_api;
use crated_api::containerd::services::tasks::v1::tasks_server::Tasks;
use crated_api::containerd::v1::types::Status as ProcessStatus;
use crated_config::GoDuration;
use crated_metadata::MetadataStore;
use crated_plugin::{types, Instance, Registration};
use serde::{Deserialize, Serialize};
use tonic::{Request, Status};

use crated_services::containers::ContainersService;
use crated_services::request::NAMESPACE_HEADER;
use crated_services::snapshots::SnapshotsService;
use crated_services::tasks::TasksService;

pub const STATUS_LABEL: &str = "containerd.io/restart.status";
pub const POLICY_LABEL: &str = "containerd.io/restart.policy";
pub const COUNT_LABEL: &str = "containerd.io/restart.count";
pub const EXPLICITLY_STOPPED_LABEL: &str = "containerd.io/restart.explicitly-stopped";
pub const LOG_URI_LABEL: &str = "containerd.io/restart.loguri";
pub const LOG_PATH_LABEL: &str = "containerd.io/restart.logpath";

/// `[plugins."io.containerd.internal.v1.restart"]`, containerd's key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RestartConfig {
    pub interval: GoDuration,
}

impl Default for RestartConfig {
    fn default() -> Self {
        RestartConfig {
            interval: GoDuration(Duration::from_secs(10)),
        }
    }
}

/// A restart policy, containerd's `restart.NewPolicy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    Always,
    No,
    UnlessStopped,
    /// Restart after a non-zero exit, at most this many times (0: no limit).
    OnFailure(u32),
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(text: &str) -> Result<Policy, String> {
        let (name, count) = match text.split_once(':') {
            Some((n, c)) => (n, Some(c)),
            None => (text, None),
        };
        match (name, count) {
            ("" | "always", None) => Ok(Policy::Always),
            ("no", None) => Ok(Policy::No),
            ("unless-stopped", None) => Ok(Policy::UnlessStopped),
            ("" | "always" | "no" | "unless-stopped", Some(_)) => Err(format!(
                "restart policy {name:?} not support max retry count"
            )),
            ("on-failure", None) => Ok(Policy::OnFailure(0)),
            ("on-failure", Some(c)) => c
                .parse()
                .map(Policy::OnFailure)
                .map_err(|_| format!("invalid max retry count: {c}")),
            _ => Err(format!("restart policy {text:?} not supported")),
        }
    }
}

/// Whether a container whose task is not running (exit status `exit_status`, 0 when there
/// is no task) is to be started again, by its labels.
pub fn should_restart(
    exit_status: u32,
    labels: &std::collections::HashMap<String, String>,
) -> bool {
    let label = |k: &str| labels.get(k).map(String::as_str).unwrap_or("");
    let policy = match label(POLICY_LABEL).parse::<Policy>() {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("policy reconcile: {e}");
            return false;
        }
    };
    match policy {
        Policy::Always => true,
        Policy::No => false,
        // Go's strconv.ParseBool spellings of true.
        Policy::UnlessStopped => !matches!(
            label(EXPLICITLY_STOPPED_LABEL),
            "1" | "t" | "T" | "true" | "TRUE" | "True"
        ),
        Policy::OnFailure(max) => {
            let count = match label(COUNT_LABEL) {
                "" => 0,
                c => match c.parse::<u32>() {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::error!("policy reconcile: restart count {c:?}: {e}");
                        return false;
                    }
                },
            };
            exit_status != 0 && (max == 0 || count < max)
        }
    }
}

pub struct RestartMonitor {
    db: Arc<MetadataStore>,
    containers: Arc<ContainersService>,
    tasks: Arc<TasksService>,
    snapshots: Arc<SnapshotsService>,
}

/// A call as a client in namespace `ns` makes it.
fn call<T>(ns: &str, message: T) -> Request<T> {
    let mut req = Request::new(message);
    if let Ok(value) = ns.parse() {
        req.metadata_mut().insert(NAMESPACE_HEADER, value);
    }
    req
}

enum Change {
    Start {
        container: containers_api::Container,
        count: u32,
    },
    Stop {
        container: containers_api::Container,
    },
}

impl RestartMonitor {
    async fn run(self: Arc<Self>, interval: Duration) {
        let interval = if interval.is_zero() {
            Duration::from_secs(10)
        } else {
            interval
        };
        loop {
            self.reconcile().await;
            tokio::time::sleep(interval).await;
        }
    }

    /// One pass over every namespace; changes run concurrently, as containerd's do.
    pub async fn reconcile(self: &Arc<Self>) {
        let db = self.db.clone();
        let namespaces = match tokio::task::spawn_blocking(move || db.namespace_list()).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                tracing::error!("restart monitor: listing namespaces: {e}");
                return;
            }
            Err(e) => {
                tracing::error!("restart monitor: {e}");
                return;
            }
        };
        let mut work = tokio::task::JoinSet::new();
        for ns in namespaces {
            let changes = match self.changes(&ns.name).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(namespace = %ns.name, "monitor for changes: {}", e.message());
                    continue;
                }
            };
            for change in changes {
                let (me, ns) = (self.clone(), ns.name.clone());
                work.spawn(async move {
                    if let Err(e) = me.apply(&ns, change).await {
                        tracing::error!(namespace = %ns, "apply change: {}", e.message());
                    }
                });
            }
        }
        while work.join_next().await.is_some() {}
    }

    async fn changes(&self, ns: &str) -> Result<Vec<Change>, Status> {
        let filter = format!("labels.{STATUS_LABEL:?}");
        let list = self
            .containers
            .list(call(
                ns,
                containers_api::ListContainersRequest {
                    filters: vec![filter],
                },
            ))
            .await?
            .into_inner();
        let mut changes = Vec::new();
        for container in list.containers {
            let desired = container
                .labels
                .get(STATUS_LABEL)
                .cloned()
                .unwrap_or_default();
            let task = self
                .tasks
                .get(call(
                    ns,
                    tasks_api::GetRequest {
                        container_id: container.id.clone(),
                        exec_id: String::new(),
                    },
                ))
                .await
                .map(|r| r.into_inner().process.unwrap_or_default());
            let (status, exit_status) = match &task {
                Ok(p) => (
                    ProcessStatus::try_from(p.status)
                        .unwrap_or(ProcessStatus::Unknown)
                        .as_str_name()
                        .to_ascii_lowercase(),
                    p.exit_status,
                ),
                Err(_) => (String::new(), 0),
            };
            if task.is_ok() && desired == status {
                continue;
            }
            if task.is_err() && desired == "stopped" {
                continue;
            }
            match desired.as_str() {
                "running" => {
                    if !should_restart(exit_status, &container.labels) {
                        continue;
                    }
                    let count = container
                        .labels
                        .get(COUNT_LABEL)
                        .and_then(|c| c.parse::<u32>().ok())
                        .unwrap_or(0);
                    changes.push(Change::Start {
                        container,
                        count: count.saturating_add(1),
                    });
                }
                "stopped" => changes.push(Change::Stop { container }),
                _ => {}
            }
        }
        Ok(changes)
    }

    async fn apply(&self, ns: &str, change: Change) -> Result<(), Status> {
        match change {
            Change::Stop { container } => self.kill_task(ns, &container.id).await,
            Change::Start { container, count } => self.start(ns, container, count).await,
        }
    }

    async fn start(
        &self,
        ns: &str,
        mut container: containers_api::Container,
        count: u32,
    ) -> Result<(), Status> {
        let log_uri = container
            .labels
            .get(LOG_URI_LABEL)
            .cloned()
            .unwrap_or_default();
        let log_path = container
            .labels
            .get(LOG_PATH_LABEL)
            .cloned()
            .unwrap_or_default();
        if !log_uri.is_empty() && !log_path.is_empty() {
            tracing::warn!(
                "LogPathLabel={log_path} has been deprecated, using LogURILabel={log_uri}"
            );
        }
        let log = if !log_uri.is_empty() {
            log_uri
        } else if !log_path.is_empty() {
            log_file(&log_path)?
        } else {
            String::new()
        };
        container
            .labels
            .insert(COUNT_LABEL.to_owned(), count.to_string());
        let id = container.id.clone();
        let (snapshotter, key) = (
            container.snapshotter.clone(),
            container.snapshot_key.clone(),
        );
        self.containers
            .update(call(
                ns,
                containers_api::UpdateContainerRequest {
                    container: Some(container),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec![format!("labels.{COUNT_LABEL}")],
                    }),
                },
            ))
            .await?;
        // Best effort, as containerd: a task in the way is removed first.
        let _ = self.kill_task(ns, &id).await;
        let rootfs = if key.is_empty() {
            Vec::new()
        } else {
            self.snapshots
                .mounts(call(ns, snapshots_api::MountsRequest { snapshotter, key }))
                .await?
                .into_inner()
                .mounts
        };
        self.tasks
            .create(call(
                ns,
                tasks_api::CreateTaskRequest {
                    container_id: id.clone(),
                    rootfs,
                    stdout: log.clone(),
                    stderr: log,
                    ..Default::default()
                },
            ))
            .await?;
        self.tasks
            .start(call(
                ns,
                tasks_api::StartRequest {
                    container_id: id.clone(),
                    exec_id: String::new(),
                },
            ))
            .await?;
        tracing::info!(namespace = %ns, %id, count, "restart monitor started the task");
        Ok(())
    }

    /// Kills the container's task, if it has one, waits for it and deletes it.
    async fn kill_task(&self, ns: &str, id: &str) -> Result<(), Status> {
        let get = tasks_api::GetRequest {
            container_id: id.to_owned(),
            exec_id: String::new(),
        };
        if self.tasks.get(call(ns, get)).await.is_err() {
            return Ok(());
        }
        let kill = tasks_api::KillRequest {
            container_id: id.to_owned(),
            exec_id: String::new(),
            signal: libc::SIGKILL as u32,
            all: true,
        };
        let delete = || {
            call(
                ns,
                tasks_api::DeleteTaskRequest {
                    container_id: id.to_owned(),
                },
            )
        };
        if let Err(e) = self.tasks.kill(call(ns, kill)).await {
            return match self.tasks.delete(delete()).await {
                Ok(_) => Ok(()),
                Err(_) => Err(e),
            };
        }
        let wait = tasks_api::WaitRequest {
            container_id: id.to_owned(),
            exec_id: String::new(),
        };
        self.tasks.wait(call(ns, wait)).await?;
        self.tasks.delete(delete()).await?;
        Ok(())
    }
}

/// containerd's `cio.LogFile`: the file is made (with its directory) and both streams go to it.
fn log_file(path: &str) -> Result<String, Status> {
    let p = std::path::Path::new(path);
    let made = p
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map(drop)
        });
    made.map_err(|e| Status::internal(format!("log path {path}: {e}")))?;
    Ok(format!("file://{path}"))
}

pub fn registration() -> Registration {
    Registration::new(types::INTERNAL, "restart", |mut ctx| async move {
        let config: RestartConfig = ctx.config()?;
        let db = ctx.get_single::<MetadataStore>(types::METADATA)?;
        let containers =
            ctx.get_by_id::<ContainersService>(types::SERVICE, "containers-service")?;
        let tasks = ctx.get_by_id::<TasksService>(types::SERVICE, "tasks-service")?;
        let snapshots = ctx.get_by_id::<SnapshotsService>(types::SERVICE, "snapshots-service")?;
        let monitor = Arc::new(RestartMonitor {
            db,
            containers,
            tasks,
            snapshots,
        });
        tokio::spawn(monitor.clone().run(config.interval.0));
        Ok(Instance::new(monitor))
    })
    .requires(&[types::EVENT, types::SERVICE, types::METADATA])
    .with_config::<RestartConfig>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn policies_parse_as_containerd_does() {
        assert_eq!("".parse(), Ok(Policy::Always));
        assert_eq!("always".parse(), Ok(Policy::Always));
        assert_eq!("no".parse(), Ok(Policy::No));
        assert_eq!("on-failure".parse(), Ok(Policy::OnFailure(0)));
        assert_eq!("on-failure:3".parse(), Ok(Policy::OnFailure(3)));
        assert_eq!("unless-stopped".parse(), Ok(Policy::UnlessStopped));
        let err = "always:3".parse::<Policy>().unwrap_err();
        assert!(err.contains("not support max retry count"), "{err}");
        let err = "on-failure:x".parse::<Policy>().unwrap_err();
        assert_eq!(err, "invalid max retry count: x");
        let err = "sometimes".parse::<Policy>().unwrap_err();
        assert_eq!(err, "restart policy \"sometimes\" not supported");
    }

    #[test]
    fn restarts_follow_the_policy_and_its_count() {
        assert!(should_restart(0, &labels(&[])));
        assert!(!should_restart(1, &labels(&[(POLICY_LABEL, "no")])));
        assert!(!should_restart(0, &labels(&[(POLICY_LABEL, "on-failure")])));
        assert!(should_restart(2, &labels(&[(POLICY_LABEL, "on-failure")])));
        let failing = |count: &str| {
            should_restart(
                1,
                &labels(&[(POLICY_LABEL, "on-failure:2"), (COUNT_LABEL, count)]),
            )
        };
        assert!(failing("1"));
        assert!(!failing("2"));
        assert!(!failing("x"));
        assert!(should_restart(
            0,
            &labels(&[(POLICY_LABEL, "unless-stopped")])
        ));
        assert!(!should_restart(
            0,
            &labels(&[
                (POLICY_LABEL, "unless-stopped"),
                (EXPLICITLY_STOPPED_LABEL, "true")
            ])
        ));
        assert!(!should_restart(0, &labels(&[(POLICY_LABEL, "bad")])));
    }
}
