//! Pods: each is a sandbox, a containerd container in `k8s.io` running the pause image, with
//! containerd's labels, its metadata extension and its files (hostname, hosts, resolv.conf,
//! `/dev/shm`). Kept in memory by id and by name; the records are what a restart reads.

pub mod recover;
pub mod spec;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use crated_api::containerd::services::containers::v1 as containers_api;
use crated_api::containerd::services::containers::v1::containers_server::Containers;
use crated_api::containerd::services::snapshots::v1 as snapshots_api;
use crated_api::containerd::services::snapshots::v1::snapshots_server::Snapshots;
use crated_api::containerd::services::tasks::v1 as tasks_api;
use crated_api::containerd::services::tasks::v1::tasks_server::Tasks;
use crated_services::containers::ContainersService;
use crated_services::snapshots::SnapshotsService;
use crated_services::tasks::TasksService;
use k8s_cri::v1 as cri;
use tonic::Status;

use crate::config::CriConfig;
use crate::container::{not_found_ok, now_nanos};
use crate::images::CriImages;
use crate::{in_namespace, CriError};
use spec::{ImageProcess, SandboxFiles, SandboxSpecInput};

/// containerd's labels and extension keys for CRI objects.
pub const KIND_LABEL: &str = "io.cri-containerd.kind";
pub const SANDBOX_METADATA: &str = "io.cri-containerd.sandbox.metadata";
const SANDBOX_METADATA_TYPE: &str = "github.com/containerd/cri/pkg/store/sandbox/Metadata";
const SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Ready,
    NotReady,
}

/// One pod sandbox.
pub struct Sandbox {
    pub id: String,
    pub name: String,
    pub config: cri::PodSandboxConfig,
    pub runtime_handler: String,
    /// Nanoseconds since the epoch.
    pub created_at: i64,
    pub state: Mutex<State>,
    pub ip: String,
    pub additional_ips: Vec<String>,
    pub pid: u32,
    pub shm: Option<PathBuf>,
    /// The pod's own network namespace; None on the host's network.
    pub netns: Option<PathBuf>,
    /// Whether its network still needs tearing down.
    network_up: Mutex<bool>,
}

impl Sandbox {
    pub fn state(&self) -> State {
        *self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set_state(&self, state: State) {
        *self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = state;
    }

    fn to_cri_state(&self) -> i32 {
        match self.state() {
            State::Ready => cri::PodSandboxState::SandboxReady as i32,
            State::NotReady => cri::PodSandboxState::SandboxNotready as i32,
        }
    }
}

/// Names held by a pod (or a container) from the start of its creation to its removal.
#[derive(Default)]
pub struct NameIndex {
    names: Mutex<HashMap<String, String>>,
}

impl NameIndex {
    pub fn reserve(&self, what: &str, name: &str, id: &str) -> Result<(), CriError> {
        let mut names = self
            .names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match names.get(name) {
            Some(holder) if holder != id => Err(CriError::AlreadyExists(format!(
                "failed to reserve {what} name {name:?}: name {name:?} is reserved for {holder:?}"
            ))),
            _ => {
                names.insert(name.to_owned(), id.to_owned());
                Ok(())
            }
        }
    }

    pub fn release(&self, name: &str) {
        self.names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name);
    }
}

/// The services a pod is built from, and the pods.
pub struct Pods {
    pub config: Arc<CriConfig>,
    pub images: Arc<CriImages>,
    pub container_service: Arc<ContainersService>,
    pub tasks: Arc<TasksService>,
    pub snapshots: Arc<SnapshotsService>,
    /// `<root>/io.containerd.grpc.v1.cri` and `<state>/io.containerd.grpc.v1.cri`.
    pub root: PathBuf,
    pub state: PathBuf,
    pub cni: Arc<crated_cni::Cni>,
    /// Where pods' network namespaces are pinned.
    pub netns_dir: PathBuf,
    pub sandboxes: RwLock<HashMap<String, Arc<Sandbox>>>,
    pub containers: RwLock<HashMap<String, Arc<crate::container::CriContainer>>>,
    pub names: NameIndex,
    pub stats: crate::container::stats::StatsCache,
}

/// The entry named by `id`, or by a unique prefix of its id, as containerd's CRI finds pods
/// and containers.
pub(crate) fn by_id_or_prefix<T>(entries: &HashMap<String, Arc<T>>, id: &str) -> Option<Arc<T>> {
    if let Some(found) = entries.get(id) {
        return Some(found.clone());
    }
    let mut matching = entries.iter().filter(|(key, _)| key.starts_with(id));
    match (id.is_empty(), matching.next(), matching.next()) {
        (false, Some((_, found)), None) => Some(found.clone()),
        _ => None,
    }
}

/// A 64-hex id, as containerd's `util.GenerateID`.
pub fn generate_id() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// `resolv.conf` of a pod's DNS config, as containerd writes it.
fn resolv_conf(dns: &cri::DnsConfig) -> String {
    let mut text = String::new();
    if !dns.searches.is_empty() {
        text.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for server in &dns.servers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.options.is_empty() {
        text.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    text
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> CriError {
    CriError::Internal(format!("{what} {}: {e}", path.display()))
}

impl Pods {
    pub(crate) fn sandbox(&self, id: &str) -> Result<Arc<Sandbox>, CriError> {
        let sandboxes = self
            .sandboxes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        by_id_or_prefix(&sandboxes, id).ok_or_else(|| {
            CriError::NotFound(format!("an error occurred when try to find sandbox {id:?}"))
        })
    }

    /// RunPodSandbox. Runs to its end (its cleanup included) even when the caller goes away.
    pub async fn run(
        self: &Arc<Self>,
        config: cri::PodSandboxConfig,
        handler: String,
    ) -> Result<String, Status> {
        let pods = self.clone();
        tokio::spawn(async move { pods.run_to_end(config, handler).await })
            .await
            .map_err(|e| Status::internal(format!("RunPodSandbox failed: {e}")))?
    }

    async fn run_to_end(
        &self,
        config: cri::PodSandboxConfig,
        handler: String,
    ) -> Result<String, Status> {
        let edge = |e: CriError| crated_services::status::status(&e);
        let metadata = config.metadata.clone().unwrap_or_default();
        if metadata.name.is_empty() || metadata.namespace.is_empty() || metadata.uid.is_empty() {
            return Err(edge(CriError::InvalidArgument(
                "sandbox config must include metadata with name, namespace and uid".into(),
            )));
        }
        let name = format!(
            "{}_{}_{}_{}",
            metadata.name, metadata.namespace, metadata.uid, metadata.attempt
        );
        let id = generate_id();
        self.names.reserve("sandbox", &name, &id).map_err(edge)?;
        let mut undo = Undo::default();
        let result = self
            .create_and_start(&id, &name, config, handler, &mut undo)
            .await;
        match result {
            Ok(sandbox) => {
                self.sandboxes
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(id.clone(), sandbox);
                Ok(id)
            }
            Err(e) => {
                undo.run(self, &id).await;
                self.names.release(&name);
                Err(e)
            }
        }
    }

    async fn create_and_start(
        &self,
        id: &str,
        name: &str,
        config: cri::PodSandboxConfig,
        handler: String,
        undo: &mut Undo,
    ) -> Result<Arc<Sandbox>, Status> {
        let edge = |e: CriError| crated_services::status::status(&e);
        let Some((handler_name, runtime)) = self.config.runtime(&handler) else {
            return Err(edge(CriError::NotFound(format!(
                "no runtime for {handler:?} is configured"
            ))));
        };
        let (handler_name, runtime) = (handler_name.to_owned(), runtime.clone());
        let image = match self
            .images
            .find(&self.config.sandbox_image)
            .await
            .map_err(edge)?
        {
            Some(image) => image,
            None => {
                self.images
                    .pull(&self.config, &self.config.sandbox_image, None)
                    .await?;
                self.images
                    .find(&self.config.sandbox_image)
                    .await
                    .map_err(edge)?
                    .ok_or_else(|| {
                        Status::not_found(format!(
                            "sandbox image {:?} was pulled but is not there",
                            self.config.sandbox_image
                        ))
                    })?
            }
        };
        let process = ImageProcess::from_config(&image.resolved.config);

        // The pod's files.
        let root_dir = self.root.join("sandboxes").join(id);
        let state_dir = self.state.join("sandboxes").join(id);
        undo.dirs.push(root_dir.clone());
        undo.dirs.push(state_dir.clone());
        let files = self
            .write_files(&config, &root_dir, &state_dir)
            .await
            .map_err(edge)?;
        undo.shm = files.shm.clone();

        // The pod's network: a namespace of its own, set up by the CNI plugins.
        let mut network = PodNetwork::default();
        if !spec::host_network(&config) {
            let netns = crated_cni::create_netns(&self.netns_dir).map_err(|e| {
                edge(CriError::Internal(format!(
                    "failed to create network namespace: {e}"
                )))
            })?;
            undo.netns = Some(netns.clone());
            self.cni.load().map_err(|e| {
                edge(CriError::Internal(format!(
                    "failed to load CNI config: {e}"
                )))
            })?;
            self.cni.status().map_err(|e| {
                edge(CriError::FailedPrecondition(format!(
                    "failed to setup network for sandbox {id:?}: {e}"
                )))
            })?;
            undo.network = Some(pod_network_args(&config));
            let set_up = self
                .cni
                .setup(id, &netns, &pod_network_args(&config))
                .await
                .map_err(|e| {
                    edge(CriError::Internal(format!(
                        "failed to setup network for sandbox {id:?}: {e}"
                    )))
                })?;
            network = PodNetwork {
                ip: set_up.ip.to_string(),
                additional_ips: set_up
                    .additional_ips
                    .iter()
                    .map(|ip| ip.to_string())
                    .collect(),
                result: serde_json::to_value(&set_up.result).unwrap_or_default(),
                netns: Some(netns),
            };
        }

        let cgroups_path = spec::cgroups_path(&config, id);
        let spec = spec::sandbox_spec(&SandboxSpecInput {
            id,
            config: &config,
            image: &process,
            files: &files,
            cgroups_path,
            oom_score_adj: crate::container::spec::restrict_oom_score_adj(
                spec::SANDBOX_OOM_SCORE_ADJ,
                self.config.restrict_oom_score_adj,
            ),
            netns: network.netns.as_deref(),
            runtime_handler: &handler_name,
        })
        .map_err(edge)?;
        let spec_json = serde_json::to_vec(&spec)
            .map_err(|e| Status::internal(format!("encoding the sandbox spec: {e}")))?;

        let mut labels: HashMap<String, String> = config
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.insert(KIND_LABEL.to_owned(), "sandbox".to_owned());
        let created_at = now_nanos();
        let metadata = serde_json::json!({
            "Version": "v1",
            "Metadata": {
                "ID": id,
                "Name": name,
                "Config": &config,
                "NetNSPath": network.netns.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                "IP": network.ip,
                "AdditionalIPs": network.additional_ips,
                "RuntimeHandler": handler_name,
                "CNIResult": network.result,
                "ProcessLabel": "",
            }
        });
        let snapshotter = self.config.containerd.snapshotter.clone();
        let container = containers_api::Container {
            id: id.to_owned(),
            labels,
            image: image
                .names
                .first()
                .cloned()
                .unwrap_or_else(|| image.id.clone()),
            runtime: Some(containers_api::container::Runtime {
                name: runtime.runtime_type.clone(),
                options: None,
            }),
            spec: Some(prost_types::Any {
                type_url: SPEC_TYPE.into(),
                value: spec_json,
            }),
            snapshotter: snapshotter.clone(),
            snapshot_key: id.to_owned(),
            extensions: HashMap::from([(
                SANDBOX_METADATA.to_owned(),
                prost_types::Any {
                    type_url: SANDBOX_METADATA_TYPE.into(),
                    value: serde_json::to_vec(&metadata).unwrap_or_default(),
                },
            )]),
            ..Default::default()
        };
        self.container_service
            .create(in_namespace(containers_api::CreateContainerRequest {
                container: Some(container),
            }))
            .await?;
        undo.container = true;

        let parent = crated_images::chain_ids(&image.resolved.diff_ids)
            .pop()
            .unwrap_or_default();
        let mounts = self
            .snapshots
            .prepare(in_namespace(snapshots_api::PrepareSnapshotRequest {
                snapshotter: snapshotter.clone(),
                key: id.to_owned(),
                parent,
                labels: HashMap::new(),
            }))
            .await?
            .into_inner()
            .mounts;
        undo.snapshot = Some(snapshotter);

        self.tasks
            .create(in_namespace(tasks_api::CreateTaskRequest {
                container_id: id.to_owned(),
                rootfs: mounts,
                ..Default::default()
            }))
            .await?;
        undo.task = true;
        let pid = self
            .tasks
            .start(in_namespace(tasks_api::StartRequest {
                container_id: id.to_owned(),
                exec_id: String::new(),
            }))
            .await?
            .into_inner()
            .pid;
        let sandbox = Arc::new(Sandbox {
            id: id.to_owned(),
            name: name.to_owned(),
            config,
            runtime_handler: handler_name,
            created_at,
            state: Mutex::new(State::Ready),
            ip: network.ip,
            additional_ips: network.additional_ips,
            pid,
            shm: files.shm,
            network_up: Mutex::new(network.netns.is_some()),
            netns: network.netns,
        });
        self.watch_exit(sandbox.clone());
        Ok(sandbox)
    }

    /// The pod's hostname, hosts and resolv.conf, and its `/dev/shm` (a tmpfs, unless it
    /// shares the host's IPC namespace).
    async fn write_files(
        &self,
        config: &cri::PodSandboxConfig,
        root_dir: &Path,
        state_dir: &Path,
    ) -> Result<SandboxFiles, CriError> {
        let config = config.clone();
        let (root_dir, state_dir) = (root_dir.to_path_buf(), state_dir.to_path_buf());
        tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::DirBuilderExt;
            for dir in [&root_dir, &state_dir] {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(dir)
                    .map_err(|e| io_error("making", dir, e))?;
            }
            let hostname = if config.hostname.is_empty() {
                nix::unistd::gethostname()
                    .map(|h| h.to_string_lossy().into_owned())
                    .unwrap_or_default()
            } else {
                config.hostname.clone()
            };
            let write = |name: &str, text: &[u8]| {
                let path = root_dir.join(name);
                std::fs::write(&path, text).map_err(|e| io_error("writing", &path, e))
            };
            write("hostname", format!("{hostname}\n").as_bytes())?;
            write("hosts", &std::fs::read("/etc/hosts").unwrap_or_default())?;
            let resolv = match &config.dns_config {
                Some(dns) => resolv_conf(dns).into_bytes(),
                None => std::fs::read("/etc/resolv.conf").unwrap_or_default(),
            };
            write("resolv.conf", &resolv)?;
            let shm = if spec::host_ipc(&config) {
                None
            } else {
                let shm = state_dir.join("shm");
                std::fs::create_dir_all(&shm).map_err(|e| io_error("making", &shm, e))?;
                use nix::mount::MsFlags;
                nix::mount::mount(
                    Some("shm"),
                    &shm,
                    Some("tmpfs"),
                    MsFlags::MS_NOEXEC | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                    Some("mode=1777,size=65536k"),
                )
                .map_err(|e| io_error("mounting shm on", &shm, e.into()))?;
                Some(shm)
            };
            Ok(SandboxFiles {
                shm,
                resolv_conf: root_dir.join("resolv.conf"),
            })
        })
        .await
        .map_err(|e| CriError::Internal(e.to_string()))?
    }

    /// Marks the sandbox not ready when its pause process exits.
    fn watch_exit(&self, sandbox: Arc<Sandbox>) {
        let tasks = self.tasks.clone();
        tokio::spawn(async move {
            let waited = tasks
                .wait(in_namespace(tasks_api::WaitRequest {
                    container_id: sandbox.id.clone(),
                    exec_id: String::new(),
                }))
                .await;
            if let Err(e) = waited {
                tracing::debug!(id = %sandbox.id, "waiting for the sandbox: {e}");
            }
            sandbox.set_state(State::NotReady);
        });
    }

    /// Kills and deletes the sandbox's task, if it has one.
    async fn stop_task(&self, id: &str) -> Result<(), Status> {
        let kill = self
            .tasks
            .kill(in_namespace(tasks_api::KillRequest {
                container_id: id.to_owned(),
                exec_id: String::new(),
                signal: libc::SIGKILL as u32,
                all: true,
            }))
            .await;
        match kill {
            Ok(_) => {
                self.tasks
                    .wait(in_namespace(tasks_api::WaitRequest {
                        container_id: id.to_owned(),
                        exec_id: String::new(),
                    }))
                    .await?;
            }
            Err(e) if e.code() == tonic::Code::NotFound => return Ok(()),
            Err(_) => {}
        }
        match self
            .tasks
            .delete(in_namespace(tasks_api::DeleteTaskRequest {
                container_id: id.to_owned(),
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == tonic::Code::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn stop(&self, id: &str) -> Result<(), Status> {
        let sandbox = self
            .sandbox(id)
            .map_err(|e| crated_services::status::status(&e))?;
        for container in self.containers_of(&sandbox.id) {
            self.stop_container(&container.id, 0).await?;
        }
        self.stop_task(&sandbox.id).await?;
        if let Some(shm) = &sandbox.shm {
            unmount(shm).await;
        }
        self.tear_down_network(&sandbox).await;
        sandbox.set_state(State::NotReady);
        Ok(())
    }

    /// Runs the CNI DELs and removes the network namespace, once. A failure is logged, not
    /// returned: a pod whose plugin is gone or keeps failing can still be stopped and removed.
    async fn tear_down_network(&self, sandbox: &Sandbox) {
        let Some(netns) = &sandbox.netns else {
            return;
        };
        let up = std::mem::take(
            &mut *sandbox
                .network_up
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if !up {
            return;
        }
        let args = pod_network_args(&sandbox.config);
        // The networks as configured now: a restart may not have loaded them yet.
        if let Err(e) = self.cni.load() {
            tracing::warn!("loading the CNI config: {e}");
        }
        if let Err(e) = self.cni.remove(&sandbox.id, netns, &args).await {
            tracing::warn!(id = %sandbox.id, "tearing down the pod's network (left as it is): {e}");
        }
        if let Err(e) = crated_cni::remove_netns(netns) {
            tracing::warn!(id = %sandbox.id, "removing the pod's network namespace: {e}");
        }
    }

    /// RemovePodSandbox: stops it first when needed; an unknown pod is no error.
    pub async fn remove(&self, id: &str) -> Result<(), Status> {
        let sandbox = match self.sandbox(id) {
            Ok(sandbox) => sandbox,
            Err(CriError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(crated_services::status::status(&e)),
        };
        self.stop(&sandbox.id).await?;
        for container in self.containers_of(&sandbox.id) {
            self.remove_container(&container.id).await?;
        }
        let undo = Undo {
            dirs: vec![
                self.root.join("sandboxes").join(&sandbox.id),
                self.state.join("sandboxes").join(&sandbox.id),
            ],
            shm: None,
            netns: None,
            network: None,
            container: true,
            snapshot: Some(self.config.containerd.snapshotter.clone()),
            task: false,
        };
        undo.run(self, &sandbox.id).await;
        self.sandboxes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&sandbox.id);
        self.names.release(&sandbox.name);
        Ok(())
    }

    pub fn status(&self, id: &str) -> Result<cri::PodSandboxStatus, CriError> {
        let sandbox = self.sandbox(id)?;
        let options = sandbox
            .config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone());
        Ok(cri::PodSandboxStatus {
            id: sandbox.id.clone(),
            metadata: sandbox.config.metadata.clone(),
            state: sandbox.to_cri_state(),
            created_at: sandbox.created_at,
            network: Some(cri::PodSandboxNetworkStatus {
                ip: sandbox.ip.clone(),
                additional_ips: sandbox
                    .additional_ips
                    .iter()
                    .map(|ip| cri::PodIp { ip: ip.clone() })
                    .collect(),
            }),
            linux: Some(cri::LinuxPodSandboxStatus {
                namespaces: Some(cri::Namespace { options }),
            }),
            labels: sandbox.config.labels.clone(),
            annotations: sandbox.config.annotations.clone(),
            runtime_handler: sandbox.runtime_handler.clone(),
        })
    }

    pub fn list(&self, filter: Option<cri::PodSandboxFilter>) -> Vec<cri::PodSandbox> {
        let sandboxes = self
            .sandboxes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut listed: Vec<cri::PodSandbox> = sandboxes
            .values()
            .filter(|s| match &filter {
                None => true,
                Some(f) => {
                    (f.id.is_empty() || s.id.starts_with(&f.id))
                        && f.state.as_ref().is_none_or(|v| v.state == s.to_cri_state())
                        && f.label_selector
                            .iter()
                            .all(|(k, v)| s.config.labels.get(k) == Some(v))
                }
            })
            .map(|s| cri::PodSandbox {
                id: s.id.clone(),
                metadata: s.config.metadata.clone(),
                state: s.to_cri_state(),
                created_at: s.created_at,
                labels: s.config.labels.clone(),
                annotations: s.config.annotations.clone(),
                runtime_handler: s.runtime_handler.clone(),
            })
            .collect();
        listed.sort_by_key(|s| s.created_at);
        listed
    }
}

async fn unmount(path: &Path) {
    let path = path.to_path_buf();
    let _ = tokio::task::spawn_blocking(move || {
        match nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => tracing::warn!("unmounting {}: {e}", path.display()),
        }
    })
    .await;
}

/// What CNI made of a pod's network.
#[derive(Default)]
struct PodNetwork {
    ip: String,
    additional_ips: Vec<String>,
    result: serde_json::Value,
    netns: Option<PathBuf>,
}

/// The pod as its CNI plugins see it.
fn pod_network_args(config: &cri::PodSandboxConfig) -> crated_cni::PodNetworkArgs {
    let metadata = config.metadata.clone().unwrap_or_default();
    crated_cni::PodNetworkArgs {
        namespace: metadata.namespace,
        name: metadata.name,
        uid: metadata.uid,
        port_mappings: config
            .port_mappings
            .iter()
            .map(|p| crated_cni::PortMapping {
                host_port: p.host_port,
                container_port: p.container_port,
                protocol: cri::Protocol::try_from(p.protocol)
                    .unwrap_or(cri::Protocol::Tcp)
                    .as_str_name()
                    .to_ascii_lowercase(),
                host_ip: p.host_ip.clone(),
            })
            .collect(),
        bandwidth: None,
        dns: config.dns_config.as_ref().map(|d| crated_cni::DnsConfig {
            servers: d.servers.clone(),
            searches: d.searches.clone(),
            options: d.options.clone(),
        }),
        annotations: config
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// What a half-made (or removed) sandbox leaves to undo, in reverse order of making.
#[derive(Default)]
struct Undo {
    dirs: Vec<PathBuf>,
    shm: Option<PathBuf>,
    netns: Option<PathBuf>,
    /// The pod's network was (perhaps partly) set up: its DELs are due.
    network: Option<crated_cni::PodNetworkArgs>,
    container: bool,
    /// The snapshotter holding the snapshot made.
    snapshot: Option<String>,
    task: bool,
}

impl Undo {
    async fn run(&self, pods: &Pods, id: &str) {
        if self.task {
            if let Err(e) = pods.stop_task(id).await {
                tracing::warn!(%id, "cleaning up a sandbox's task: {e}");
            }
        }
        if let Some(snapshotter) = &self.snapshot {
            let removed = pods
                .snapshots
                .remove(in_namespace(snapshots_api::RemoveSnapshotRequest {
                    snapshotter: snapshotter.clone(),
                    key: id.to_owned(),
                }))
                .await;
            if let Err(e) = removed.map(drop).or_else(not_found_ok) {
                tracing::warn!(%id, "cleaning up a sandbox's snapshot: {e}");
            }
        }
        if self.container {
            let deleted = pods
                .container_service
                .delete(in_namespace(containers_api::DeleteContainerRequest {
                    id: id.to_owned(),
                }))
                .await;
            if let Err(e) = deleted.map(drop).or_else(not_found_ok) {
                tracing::warn!(%id, "cleaning up a sandbox's container: {e}");
            }
        }
        if let Some(netns) = &self.netns {
            if let Some(args) = &self.network {
                if let Err(e) = pods.cni.load() {
                    tracing::warn!("loading the CNI config: {e}");
                }
                if let Err(e) = pods.cni.remove(id, netns, args).await {
                    tracing::warn!(%id, "cleaning up a sandbox's network: {e}");
                }
            }
            if let Err(e) = crated_cni::remove_netns(netns) {
                tracing::warn!(%id, "cleaning up a sandbox's network namespace: {e}");
            }
        }
        if let Some(shm) = &self.shm {
            unmount(shm).await;
        }
        for dir in &self.dirs {
            if let Some(shm) = dir.join("shm").exists().then(|| dir.join("shm")) {
                unmount(&shm).await;
            }
            if let Err(e) = tokio::fs::remove_dir_all(dir).await {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(%id, "cleaning up {}: {e}", dir.display());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_held_by_one_id_until_released() {
        let names = NameIndex::default();
        names.reserve("sandbox", "web_default_u1_0", "a").unwrap();
        names.reserve("sandbox", "web_default_u1_0", "a").unwrap();
        let err = names
            .reserve("sandbox", "web_default_u1_0", "b")
            .unwrap_err();
        assert!(err.to_string().contains("is reserved for \"a\""), "{err}");
        names.release("web_default_u1_0");
        names.reserve("sandbox", "web_default_u1_0", "b").unwrap();
    }

    #[test]
    fn dns_config_becomes_resolv_conf() {
        let dns = cri::DnsConfig {
            servers: vec!["10.0.0.10".into()],
            searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(&dns),
            "search default.svc.cluster.local svc.cluster.local\nnameserver 10.0.0.10\noptions ndots:5\n"
        );
    }

    #[test]
    fn ids_are_64_hex() {
        let id = generate_id();
        assert_eq!(id.len(), 64);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(id, generate_id());
    }
}
