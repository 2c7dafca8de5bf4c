//! The runtime v2 task manager, plugin `io.containerd.runtime.v2.task`: a task is a shim
//! process (found on PATH by runtime name, started with containerd's start protocol, spoken to
//! over ttrpc) running one container from a bundle under `<state>/<ns>/<id>`. Shims publish
//! their own task events to the daemon's ttrpc socket; this manager publishes the exit of a
//! shim that died, and finds the live shims of a previous run when the daemon starts.

mod bundle;
mod error;
pub mod opt;
pub mod shim;
pub mod v1;
pub mod wire;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::{Message, MessageField};
use crated_api::containerd::events as ev;
use crated_errdefs::{HasKind, Kind};
use crated_events::Exchange;
use crated_metadata::MetadataStore;
use crated_plugin::{types, Instance, PluginError, Registration};
use serde::{Deserialize, Serialize};

pub use bundle::Bundle;
pub use error::RuntimeError;
pub use shim::{DaemonAddresses, ShimClient};

/// `[plugins."io.containerd.runtime.v2.task"]`, containerd's keys.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Platforms the runtime supports (introspection only).
    pub platforms: Vec<String>,
    /// Sets `SCHED_CORE=1` for shims: a core-scheduling group per container.
    pub sched_core: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            platforms: vec![format!("linux/{}", host_arch())],
            sched_core: false,
        }
    }
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// How a task's shim is spoken to.
enum Shim {
    V2(ShimClient),
    /// A runtime v1 shim, its calls turned into v1 ones.
    V1(v1::Client),
}

/// A task: one container's shim.
pub struct Task {
    pub namespace: String,
    pub id: String,
    pub bundle: Bundle,
    binary: PathBuf,
    client: Shim,
}

impl Task {
    /// A call of the shim's task API (`containerd.task.v2.Task/<method>`).
    pub async fn call<Req: Message, Resp: Message>(
        &self,
        method: &str,
        req: &Req,
        timeout: Option<std::time::Duration>,
    ) -> Result<Resp, RuntimeError> {
        match &self.client {
            Shim::V2(client) => client.call(method, req, timeout).await,
            Shim::V1(client) => {
                let payload = req.write_to_bytes().map_err(|e| {
                    RuntimeError::InvalidArgument(format!("encoding {method}: {e}"))
                })?;
                let answer = client.call_v2(method, &payload, timeout).await?;
                Resp::parse_from_bytes(&answer).map_err(|e| {
                    RuntimeError::Unavailable(format!("shim answered {method} badly: {e}"))
                })
            }
        }
    }
}

/// What Create needs besides the container record's spec and runtime.
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    pub namespace: String,
    pub id: String,
    pub runtime: String,
    /// An explicit shim binary (CreateTaskRequest.runtime_path); empty: by runtime name.
    pub runtime_path: String,
    /// The OCI spec JSON, written as `config.json`.
    pub spec: Vec<u8>,
    /// Runtime options: given to `start` on stdin and to Create.
    pub options: Option<prost_types::Any>,
    pub rootfs: Vec<api::Mount>,
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

pub struct TaskManager {
    state: PathBuf,
    root: PathBuf,
    daemon: DaemonAddresses,
    exchange: Arc<Exchange>,
    tasks: Mutex<HashMap<(String, String), Arc<Task>>>,
    /// Runtime v1, once its plugin started.
    v1: std::sync::OnceLock<Arc<v1::Runtime>>,
}

/// containerd's words for a task that is not there.
pub fn not_found(id: &str) -> RuntimeError {
    RuntimeError::NotFound(format!("task {id} not found"))
}

fn key(ns: &str, id: &str) -> (String, String) {
    (ns.to_owned(), id.to_owned())
}

fn now() -> prost_types::Timestamp {
    let n = crated_metadata::now_nanos();
    prost_types::Timestamp {
        seconds: (n / 1_000_000_000) as i64,
        nanos: (n % 1_000_000_000) as i32,
    }
}

impl TaskManager {
    pub fn new(
        state: PathBuf,
        root: PathBuf,
        daemon: DaemonAddresses,
        exchange: Arc<Exchange>,
    ) -> Arc<TaskManager> {
        Arc::new(TaskManager {
            state,
            root,
            daemon,
            exchange,
            tasks: Mutex::new(HashMap::new()),
            v1: std::sync::OnceLock::new(),
        })
    }

    /// Takes runtime v1's tasks from now on, and those its previous run left: live ones are
    /// watched, dead ones buried.
    pub async fn add_v1(self: &Arc<Self>, runtime: Arc<v1::Runtime>) {
        let (live, dead) = runtime.load_existing().await;
        let _ = self.v1.set(runtime);
        for (bundle, client) in live {
            let task = Arc::new(Task {
                namespace: bundle.namespace.clone(),
                id: bundle.id.clone(),
                bundle,
                binary: PathBuf::new(),
                client: Shim::V1(client),
            });
            tracing::info!(ns = %task.namespace, id = %task.id, "reconnected to a runtime v1 shim");
            self.lock()
                .insert(key(&task.namespace, &task.id), task.clone());
            self.clone().watch(task);
        }
        for bundle in dead {
            tracing::warn!(ns = %bundle.namespace, id = %bundle.id, "the v1 shim of a previous run is gone; cleaning up");
            self.bury_v1(&bundle).await;
        }
    }

    fn v1(&self) -> Result<&Arc<v1::Runtime>, RuntimeError> {
        self.v1
            .get()
            .ok_or_else(|| RuntimeError::NotFound(format!("runtime {:?}", v1::RUNTIME_NAME)))
    }

    pub fn get(&self, ns: &str, id: &str) -> Result<Arc<Task>, RuntimeError> {
        self.lock()
            .get(&key(ns, id))
            .cloned()
            .ok_or_else(|| not_found(id))
    }

    pub fn list(&self, ns: &str) -> Vec<Arc<Task>> {
        let mut tasks: Vec<_> = self
            .lock()
            .values()
            .filter(|t| t.namespace == ns)
            .cloned()
            .collect();
        tasks.sort_by(|a, b| a.id.cmp(&b.id));
        tasks
    }

    /// Every task of every namespace.
    pub fn list_all(&self) -> Vec<Arc<Task>> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Arc<Task>>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes the task from the table if it is still this one; whoever removes it owns the
    /// end of its life (delete or dead-shim cleanup), so that happens once.
    fn take(&self, task: &Arc<Task>) -> bool {
        let mut tasks = self.lock();
        match tasks.get(&key(&task.namespace, &task.id)) {
            Some(t) if Arc::ptr_eq(t, task) => {
                tasks.remove(&key(&task.namespace, &task.id));
                true
            }
            _ => false,
        }
    }

    /// Starts a shim for the container and creates its task; returns the task and its pid.
    pub async fn create(
        self: &Arc<Self>,
        req: CreateRequest,
    ) -> Result<(Arc<Task>, u32), RuntimeError> {
        if self.lock().contains_key(&key(&req.namespace, &req.id)) {
            return Err(RuntimeError::AlreadyExists(format!("task {}", req.id)));
        }
        if req.runtime == v1::RUNTIME_NAME {
            let started = self.v1()?.create(&req).await?;
            let task = Arc::new(Task {
                namespace: req.namespace.clone(),
                id: req.id.clone(),
                bundle: started.bundle,
                binary: PathBuf::new(),
                client: Shim::V1(started.client),
            });
            self.lock()
                .insert(key(&task.namespace, &task.id), task.clone());
            self.clone().watch(task.clone());
            return Ok((task, started.pid));
        }
        let binary = shim::resolve_binary(&req.runtime, &req.runtime_path, &self.daemon)?;
        let bundle = Bundle::create(&self.state, &self.root, &req.namespace, &req.id, &req.spec)?;
        let daemon = self.daemon.clone();
        let started = async {
            let address = shim::start(&binary, &bundle, &daemon, req.options.as_ref()).await?;
            ShimClient::connect(&address, &req.namespace).await
        }
        .await;
        let client = match started {
            Ok(c) => c,
            Err(e) => {
                bundle.delete();
                return Err(e);
            }
        };
        let task = Arc::new(Task {
            namespace: req.namespace.clone(),
            id: req.id.clone(),
            bundle,
            binary,
            client: Shim::V2(client),
        });
        let create = api::CreateTaskRequest {
            id: req.id.clone(),
            bundle: task.bundle.path.to_string_lossy().into_owned(),
            rootfs: req.rootfs,
            terminal: req.terminal,
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
            options: MessageField::from_option(req.options.map(wire::any_to_shim)),
            ..Default::default()
        };
        let created: Result<api::CreateTaskResponse, _> =
            task.call("Create", &create, Some(shim::CALL_TIMEOUT)).await;
        let pid = match created {
            Ok(r) => r.pid,
            Err(e) => {
                self.stop_shim(&task).await;
                task.bundle.delete();
                return Err(e);
            }
        };
        // The bundle, made exclusively, kept any other create of this id out.
        self.lock()
            .insert(key(&task.namespace, &task.id), task.clone());
        self.clone().watch(task.clone());
        Ok((task, pid))
    }

    /// Deletes the task's init process, stops its shim and removes the bundle.
    pub async fn delete(&self, ns: &str, id: &str) -> Result<api::DeleteResponse, RuntimeError> {
        let task = self.get(ns, id)?;
        let req = api::DeleteRequest {
            id: id.to_owned(),
            ..Default::default()
        };
        match task
            .call::<_, api::DeleteResponse>("Delete", &req, Some(shim::CALL_TIMEOUT))
            .await
        {
            Ok(resp) => {
                if self.take(&task) {
                    self.stop_shim(&task).await;
                    task.bundle.delete();
                }
                Ok(resp)
            }
            Err(RuntimeError::Unavailable(_)) if self.take(&task) => {
                // The shim is gone: clean up as after a crash, and report what it found.
                Ok(self.bury(&task).await)
            }
            // The shim no longer has the container (deleted another way): as containerd, the
            // task, its shim and its bundle go all the same, and the caller hears NotFound.
            Err(e) if e.kind() == Kind::NotFound => {
                if self.take(&task) {
                    self.stop_shim(&task).await;
                    task.bundle.delete();
                }
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    async fn stop_shim(&self, task: &Task) {
        if let Shim::V1(_) = task.client {
            if let Ok(v1) = self.v1() {
                v1.shutdown(&task.bundle);
            }
            return;
        }
        let req = api::ShutdownRequest {
            id: task.id.clone(),
            ..Default::default()
        };
        // The shim exits without answering; a closed connection is success here.
        let _ = task
            .call::<_, containerd_shim_protos::protobuf::well_known_types::empty::Empty>(
                "Shutdown",
                &req,
                Some(shim::SHUTDOWN_TIMEOUT),
            )
            .await;
    }

    /// Waits on the init process: a normal exit is the shim's to report; a broken connection
    /// means the shim died, and its task is ended here.
    fn watch(self: Arc<Self>, task: Arc<Task>) {
        tokio::spawn(async move {
            let req = api::WaitRequest {
                id: task.id.clone(),
                ..Default::default()
            };
            match task.call::<_, api::WaitResponse>("Wait", &req, None).await {
                Ok(_) => {}
                Err(RuntimeError::Unavailable(e)) => {
                    if self.take(&task) {
                        tracing::warn!(id = %task.id, namespace = %task.namespace, "shim died: {e}");
                        self.bury(&task).await;
                    }
                }
                Err(e) => tracing::debug!(id = %task.id, "waiting on the task: {e}"),
            }
        });
    }

    /// After a shim died: the shim's `delete` action, the bundle, and the exit events
    /// containerd sends (255 when the shim could not say).
    async fn bury(&self, task: &Task) -> api::DeleteResponse {
        if let Shim::V1(_) = task.client {
            return self.bury_v1(&task.bundle).await;
        }
        let resp = match shim::cleanup_dead(&task.binary, &task.bundle, &self.daemon).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(id = %task.id, "cleaning up after a dead shim: {e}");
                api::DeleteResponse {
                    exit_status: 255,
                    ..Default::default()
                }
            }
        };
        task.bundle.delete();
        self.publish_burial(&task.bundle, resp)
    }

    /// A dead v1 shim's task: containerd's cleanup, exit status 137.
    async fn bury_v1(&self, bundle: &Bundle) -> api::DeleteResponse {
        let (pid, exit_status) = match self.v1() {
            Ok(v1) => v1.bury(bundle).await,
            Err(_) => {
                bundle.delete();
                (0, 137)
            }
        };
        self.publish_burial(
            bundle,
            api::DeleteResponse {
                pid,
                exit_status,
                ..Default::default()
            },
        )
    }

    /// The exit and delete events of a task whose shim died.
    fn publish_burial(&self, task: &Bundle, resp: api::DeleteResponse) -> api::DeleteResponse {
        let exited_at = Some(
            resp.exited_at
                .as_ref()
                .map_or_else(now, wire::time_from_shim),
        );
        self.exchange.publish_message(
            &task.namespace,
            "/tasks/exit",
            "containerd.events.TaskExit",
            &ev::TaskExit {
                container_id: task.id.clone(),
                id: task.id.clone(),
                pid: resp.pid,
                exit_status: resp.exit_status,
                exited_at,
            },
        );
        self.exchange.publish_message(
            &task.namespace,
            "/tasks/delete",
            "containerd.events.TaskDelete",
            &ev::TaskDelete {
                container_id: task.id.clone(),
                pid: resp.pid,
                exit_status: resp.exit_status,
                exited_at,
                id: String::new(),
            },
        );
        resp
    }

    /// Finds the shims of a previous run from their bundles: live ones are reconnected and
    /// watched again, dead ones cleaned up; work directories nobody owns are removed.
    pub async fn load_existing(self: &Arc<Self>, db: &MetadataStore) {
        let Ok(namespaces) = std::fs::read_dir(&self.state) else {
            return;
        };
        for ns_entry in namespaces.flatten() {
            let ns = ns_entry.file_name().to_string_lossy().into_owned();
            if ns.starts_with('.') || !ns_entry.path().is_dir() {
                continue;
            }
            let Ok(ids) = std::fs::read_dir(ns_entry.path()) else {
                continue;
            };
            for id_entry in ids.flatten() {
                let id = id_entry.file_name().to_string_lossy().into_owned();
                if id.starts_with('.') {
                    continue;
                }
                self.load_one(db, &ns, &id).await;
            }
        }
        self.remove_orphan_work_dirs();
    }

    async fn load_one(self: &Arc<Self>, db: &MetadataStore, ns: &str, id: &str) {
        let bundle = Bundle::at(&self.state, &self.root, ns, id);
        let binary = match std::fs::read_to_string(bundle.path.join("shim-binary-path")) {
            Ok(p) if !p.is_empty() => Ok(PathBuf::from(p)),
            _ => db
                .container_get(ns, id)
                .map_err(|e| RuntimeError::NotFound(e.to_string()))
                .and_then(|c| shim::resolve_binary(&c.runtime.name, "", &self.daemon)),
        };
        let binary = match binary {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(%ns, %id, "removing a bundle with no runtime: {e}");
                bundle.delete();
                return;
            }
        };
        let address = std::fs::read_to_string(bundle.path.join("address")).unwrap_or_default();
        let connected = async {
            let client = ShimClient::connect(&address, ns).await?;
            let req = api::ConnectRequest {
                id: id.to_owned(),
                ..Default::default()
            };
            client
                .call::<_, api::ConnectResponse>("Connect", &req, Some(shim::LOAD_TIMEOUT))
                .await?;
            Ok::<_, RuntimeError>(client)
        };
        let task = |client| {
            Arc::new(Task {
                namespace: ns.to_owned(),
                id: id.to_owned(),
                bundle: bundle.clone(),
                binary: binary.clone(),
                client: Shim::V2(client),
            })
        };
        match tokio::time::timeout(shim::LOAD_TIMEOUT, connected).await {
            Ok(Ok(client)) => {
                if let Err(e) = shim::follow_log(&bundle) {
                    tracing::warn!(%ns, %id, "shim log: {e}");
                }
                let task = task(client);
                self.lock().insert(key(ns, id), task.clone());
                self.clone().watch(task);
                tracing::info!(%ns, %id, "reconnected to the shim of a running task");
            }
            outcome => {
                let why = match outcome {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".into(),
                };
                tracing::warn!(%ns, %id, "the shim of a previous run is gone ({why}); cleaning up");
                if let Err(e) = shim::cleanup_dead(&binary, &bundle, &self.daemon).await {
                    tracing::warn!(%ns, %id, "{e}");
                }
                bundle.delete();
            }
        }
    }

    fn remove_orphan_work_dirs(&self) {
        let Ok(namespaces) = std::fs::read_dir(&self.root) else {
            return;
        };
        for ns_entry in namespaces.flatten() {
            let ns = ns_entry.file_name().to_string_lossy().into_owned();
            let Ok(ids) = std::fs::read_dir(ns_entry.path()) else {
                continue;
            };
            for id_entry in ids.flatten() {
                let id = id_entry.file_name().to_string_lossy().into_owned();
                if !self.lock().contains_key(&key(&ns, &id)) {
                    let _ = std::fs::remove_dir_all(id_entry.path());
                }
            }
        }
    }
}

pub fn registration() -> Registration {
    Registration::new(types::RUNTIME_V2, "task", |mut ctx| async move {
        let config: RuntimeConfig = ctx.config()?;
        ctx.meta().platforms = config.platforms.clone();
        let exchange = ctx.get_single::<Exchange>(types::EVENT)?;
        let db = ctx.get_single::<MetadataStore>(types::METADATA)?;
        let publish_binary = std::env::current_exe()
            .map_err(|e| PluginError::failed(format!("finding the daemon's executable: {e}")))?;
        let daemon = DaemonAddresses {
            grpc: ctx.grpc_address.clone(),
            ttrpc: ctx.ttrpc_address.clone(),
            publish_binary,
            debug: tracing::enabled!(tracing::Level::DEBUG),
            sched_core: config.sched_core,
            opt: ctx.get_by_id::<opt::OptDirs>(types::INTERNAL, "opt").ok(),
        };
        // 0711 as containerd's: a container whose root is remapped reaches its bundle.
        let (root, state) = ctx.dirs_with_mode(0o711)?;
        let manager = TaskManager::new(state, root, daemon, exchange);
        manager.load_existing(&db).await;
        Ok(Instance::new(manager))
    })
    .requires(&[types::EVENT, types::METADATA])
    .with_config::<RuntimeConfig>()
}

/// `io.containerd.runtime.v1.linux`: runtime v1 ([`v1`]), its tasks kept by the v2 manager.
pub fn v1_registration() -> Registration {
    Registration::new(types::RUNTIME_V1, "linux", |mut ctx| async move {
        let config: v1::Config = ctx.config()?;
        ctx.meta().platforms = vec![format!("linux/{}", host_arch())];
        let exchange = ctx.get_single::<Exchange>(types::EVENT)?;
        let manager = ctx.get_by_id::<TaskManager>(types::RUNTIME_V2, "task")?;
        let daemon_binary = std::env::current_exe()
            .map_err(|e| PluginError::failed(format!("finding the daemon's executable: {e}")))?;
        let (root, state) = ctx.dirs_with_mode(0o711)?;
        let runtime = v1::Runtime::new(
            config,
            root,
            state,
            ctx.grpc_address.clone(),
            daemon_binary,
            exchange,
        )
        .map_err(PluginError::failed)?;
        let runtime = Arc::new(runtime);
        manager.add_v1(runtime.clone()).await;
        Ok(Instance::new(runtime))
    })
    .requires(&[types::EVENT, types::RUNTIME_V2])
    .with_config::<v1::Config>()
}
