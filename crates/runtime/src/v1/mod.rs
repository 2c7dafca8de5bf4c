//! Runtime v1, plugin `io.containerd.runtime.v1.linux`, for containers whose runtime is named
//! so (`ctr run --runtime io.containerd.runtime.v1.linux`): each task is a `containerd-shim`
//! process (shim v1, the API containerd 1.x deprecated and 2.0 removed), started as
//! containerd 1.6 starts it, with its bundle under this plugin's own directories. It is kept
//! small: its tasks live in the v2 task manager's table and are spoken to through
//! [`client::Client`], which turns the v2 task API into v1 calls.

mod client;
pub mod proto;

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crated_events::Exchange;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{Bundle, CreateRequest, RuntimeError};
pub use client::Client;

/// The runtime name containers give, and this plugin's id under its type.
pub const RUNTIME_NAME: &str = "io.containerd.runtime.v1.linux";

/// `[plugins."io.containerd.runtime.v1.linux"]`, containerd's keys.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The shim binary, on PATH unless a path.
    pub shim: String,
    /// The OCI runtime the shim runs (a container's RuncOptions may name another).
    pub runtime: String,
    /// The runtime's state root (`-runtime-root`); empty: the shim's default.
    pub runtime_root: String,
    /// containerd's in-daemon shim; not supported here.
    pub no_shim: bool,
    /// The shim logs at debug level, its output in the daemon's log.
    pub shim_debug: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            shim: "containerd-shim".into(),
            runtime: "runc".into(),
            runtime_root: String::new(),
            no_shim: false,
            shim_debug: false,
        }
    }
}

/// Where v1 shims listen: containerd 1.6's fixed directory, a socket per daemon address,
/// namespace and task (a hash of them, so two daemons never meet).
const SOCKET_DIR: &str = "/run/containerd/s";

pub struct Runtime {
    config: Config,
    state: PathBuf,
    root: PathBuf,
    grpc_address: String,
    daemon_binary: PathBuf,
    exchange: Arc<Exchange>,
}

/// A v1 shim started for a task.
pub struct Started {
    pub bundle: Bundle,
    pub client: Client,
    pub pid: u32,
}

fn socket_path(grpc_address: &str, ns: &str, id: &str) -> PathBuf {
    let key = Path::new(grpc_address).join(ns).join(id);
    let hash = Sha256::digest(key.as_os_str().as_encoded_bytes());
    Path::new(SOCKET_DIR).join(format!("{hash:x}"))
}

/// The container's `containerd.linux.runc.RuncOptions`, if it gave any.
fn runc_options(options: Option<&prost_types::Any>) -> Result<proto::RuncOptions, RuntimeError> {
    match options {
        None => Ok(proto::RuncOptions::default()),
        Some(any)
            if any
                .type_url
                .trim_start_matches('/')
                .ends_with(proto::RUNC_OPTIONS) =>
        {
            prost::Message::decode(&any.value[..])
                .map_err(|e| RuntimeError::InvalidArgument(format!("runtime options: {e}")))
        }
        Some(_) => Err(RuntimeError::InvalidArgument(
            "invalid runtime options format".into(),
        )),
    }
}

impl Runtime {
    pub fn new(
        config: Config,
        root: PathBuf,
        state: PathBuf,
        grpc_address: String,
        daemon_binary: PathBuf,
        exchange: Arc<Exchange>,
    ) -> Result<Runtime, RuntimeError> {
        if config.no_shim {
            return Err(RuntimeError::InvalidArgument(
                "no_shim: running tasks inside the daemon is not supported".into(),
            ));
        }
        Ok(Runtime {
            config,
            state,
            root,
            grpc_address,
            daemon_binary,
            exchange,
        })
    }

    fn bundle(&self, ns: &str, id: &str) -> Bundle {
        Bundle::at(&self.state, &self.root, ns, id)
    }

    /// Makes the bundle, starts a shim for it and creates the task; its pid.
    pub async fn create(&self, req: &CreateRequest) -> Result<Started, RuntimeError> {
        let options = runc_options(req.options.as_ref())?;
        let bundle = Bundle::create(&self.state, &self.root, &req.namespace, &req.id, &req.spec)?;
        let started = async {
            let client = self.start_shim(&bundle, &options).await?;
            let runtime = if options.runtime.is_empty() {
                self.config.runtime.clone()
            } else {
                options.runtime.clone()
            };
            let create = proto::CreateTaskRequest {
                id: req.id.clone(),
                bundle: bundle.path.to_string_lossy().into_owned(),
                runtime,
                rootfs: req
                    .rootfs
                    .iter()
                    .map(|m| proto::Mount {
                        r#type: m.type_.clone(),
                        source: m.source.clone(),
                        target: m.target.clone(),
                        options: m.options.clone(),
                    })
                    .collect(),
                terminal: req.terminal,
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                ..Default::default()
            };
            let created: Result<proto::CreateTaskResponse, _> = client
                .call("Create", &create, Some(crate::shim::CALL_TIMEOUT))
                .await;
            match created {
                Ok(r) => Ok((client, r.pid)),
                Err(e) => {
                    self.kill_shim(&bundle);
                    Err(e)
                }
            }
        }
        .await;
        match started {
            Ok((client, pid)) => {
                self.exchange.publish_message(
                    &req.namespace,
                    "/tasks/create",
                    "containerd.events.TaskCreate",
                    &crated_api::containerd::events::TaskCreate {
                        container_id: req.id.clone(),
                        bundle: bundle.path.to_string_lossy().into_owned(),
                        rootfs: Vec::new(),
                        io: None,
                        checkpoint: String::new(),
                        pid,
                    },
                );
                Ok(Started {
                    bundle,
                    client,
                    pid,
                })
            }
            Err(e) => {
                self.remove(&bundle);
                Err(e)
            }
        }
    }

    /// Starts `containerd-shim` on a socket of ours, as containerd does: the listener as fd 3,
    /// the work directory's FIFOs as its output, its address and pid in the bundle.
    async fn start_shim(
        &self,
        bundle: &Bundle,
        options: &proto::RuncOptions,
    ) -> Result<Client, RuntimeError> {
        let socket = socket_path(&self.grpc_address, &bundle.namespace, &bundle.id);
        std::fs::create_dir_all(SOCKET_DIR)
            .map_err(RuntimeError::io(format!("creating {SOCKET_DIR}")))?;
        let _ = std::fs::remove_file(&socket);
        let listener = std::os::unix::net::UnixListener::bind(&socket).map_err(
            RuntimeError::io(format!("listening on {}", socket.display())),
        )?;
        std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(RuntimeError::io("setting the shim socket's mode"))?;
        let output = |name: &str| -> Result<std::fs::File, RuntimeError> {
            let path = bundle.work.join(name);
            if !path.exists() {
                nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o700))
                    .map_err(|e| RuntimeError::io(format!("creating {name}"))(e.into()))?;
            }
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(RuntimeError::io(format!("opening {name}")))
        };
        let (stdout, stderr) = (output("shim.stdout.log")?, output("shim.stderr.log")?);
        for (log, name) in [(&stdout, "stdout"), (&stderr, "stderr")] {
            drain(
                log.try_clone().map_err(RuntimeError::io("shim log"))?,
                &bundle.id,
                name,
            );
        }
        let mut cmd = std::process::Command::new(&self.config.shim);
        cmd.arg("-namespace")
            .arg(&bundle.namespace)
            .arg("-workdir")
            .arg(&bundle.work)
            .arg("-address")
            .arg(&self.grpc_address)
            .arg("-containerd-binary")
            .arg(&self.daemon_binary);
        let runtime_root = if options.runtime_root.is_empty() {
            &self.config.runtime_root
        } else {
            &options.runtime_root
        };
        if !runtime_root.is_empty() {
            cmd.arg("-runtime-root").arg(runtime_root);
        }
        if options.systemd_cgroup {
            cmd.arg("-systemd-cgroup");
        }
        if self.config.shim_debug {
            cmd.arg("-debug");
        }
        let fd = listener.as_raw_fd();
        cmd.current_dir(&bundle.path)
            .env("GOMAXPROCS", "2")
            .stdin(std::process::Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0);
        // SAFETY: dup2 is async-signal-safe; the listener outlives the spawn.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(RuntimeError::io(format!("starting {}", self.config.shim)))?;
        drop(listener);
        let address = format!("unix://{}", socket.display());
        write_file(&bundle.path.join("address"), address.as_bytes())?;
        write_file(
            &bundle.path.join("shim.pid"),
            child.id().to_string().as_bytes(),
        )?;
        reap(child);
        Client::connect(
            &address,
            &bundle.namespace,
            &bundle.id,
            self.exchange.clone(),
        )
        .await
    }

    fn kill_shim(&self, bundle: &Bundle) {
        if let Some(pid) = std::fs::read_to_string(bundle.path.join("shim.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// Stops the shim of a deleted task and removes its socket and bundle.
    pub fn shutdown(&self, bundle: &Bundle) {
        self.kill_shim(bundle);
        self.remove(bundle);
    }

    fn remove(&self, bundle: &Bundle) {
        let _ = std::fs::remove_file(socket_path(
            &self.grpc_address,
            &bundle.namespace,
            &bundle.id,
        ));
        bundle.delete();
    }

    /// After a shim died: as containerd, the runtime's container is force-deleted, the rootfs
    /// unmounted, the exit reported as 137 and the bundle removed.
    pub async fn bury(&self, bundle: &Bundle) -> (u32, u32) {
        let pid = std::fs::read_to_string(bundle.path.join("init.pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(0);
        let root = if self.config.runtime_root.is_empty() {
            "/run/containerd/runc".to_owned()
        } else {
            self.config.runtime_root.clone()
        };
        let runc = if self.config.runtime.is_empty() {
            "runc"
        } else {
            &self.config.runtime
        };
        let deleted = tokio::process::Command::new(runc)
            .arg("--root")
            .arg(Path::new(&root).join(&bundle.namespace))
            .args(["delete", "--force", &bundle.id])
            .kill_on_drop(true)
            .output()
            .await;
        if let Ok(out) = &deleted {
            if !out.status.success() {
                tracing::debug!(id = %bundle.id, "runc delete: {}", String::from_utf8_lossy(&out.stderr).trim());
            }
        }
        self.kill_shim(bundle);
        self.remove(bundle);
        (pid, 137)
    }

    /// The v1 tasks of a previous run: each bundle's shim dialled again, or its task buried.
    pub async fn load_existing(&self) -> (Vec<(Bundle, Client)>, Vec<Bundle>) {
        let (mut live, mut dead) = (Vec::new(), Vec::new());
        let Ok(namespaces) = std::fs::read_dir(&self.state) else {
            return (live, dead);
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
                let bundle = self.bundle(&ns, &id);
                let address =
                    std::fs::read_to_string(bundle.path.join("address")).unwrap_or_default();
                let connected = tokio::time::timeout(
                    crate::shim::LOAD_TIMEOUT,
                    Client::connect(address.trim(), &ns, &id, self.exchange.clone()),
                )
                .await;
                match connected {
                    Ok(Ok(client)) => {
                        let info: Result<proto::ShimInfoResponse, _> = client
                            .call("ShimInfo", &(), Some(crate::shim::LOAD_TIMEOUT))
                            .await;
                        match info {
                            Ok(_) => live.push((bundle, client)),
                            Err(_) => dead.push(bundle),
                        }
                    }
                    _ => dead.push(bundle),
                }
            }
        }
        (live, dead)
    }
}

fn write_file(path: &Path, data: &[u8]) -> Result<(), RuntimeError> {
    let staged = path.with_extension("new");
    std::fs::write(&staged, data)
        .and_then(|_| std::fs::rename(&staged, path))
        .map_err(RuntimeError::io(format!("writing {}", path.display())))
}

/// Reads a shim's output FIFO for as long as the shim writes it, into our log.
fn drain(mut fifo: std::fs::File, id: &str, name: &str) {
    let (id, name) = (id.to_owned(), name.to_owned());
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = fifo.read(&mut buf) {
            if n == 0 {
                break;
            }
            tracing::debug!(target: "shim", %id, stream = %name, "{}", String::from_utf8_lossy(&buf[..n]).trim_end());
        }
    });
}

/// Waits for the shim process, so it leaves no zombie when it exits.
fn reap(mut child: std::process::Child) {
    std::thread::spawn(move || {
        let _ = child.wait();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_options_are_read_and_other_types_refused() {
        let options = proto::RuncOptions {
            runtime: "crun".into(),
            ..Default::default()
        };
        let any = prost_types::Any {
            type_url: proto::RUNC_OPTIONS.into(),
            value: prost::Message::encode_to_vec(&options),
        };
        assert_eq!(runc_options(Some(&any)).unwrap().runtime, "crun");
        assert_eq!(runc_options(None).unwrap(), proto::RuncOptions::default());
        let other = prost_types::Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: Vec::new(),
        };
        let err = runc_options(Some(&other)).unwrap_err().to_string();
        assert!(err.contains("invalid runtime options format"), "{err}");
    }

    #[test]
    fn a_tasks_socket_depends_on_the_daemon_namespace_and_id() {
        let a = socket_path("/run/crated.sock", "default", "x");
        assert_eq!(a, socket_path("/run/crated.sock", "default", "x"));
        assert_ne!(a, socket_path("/run/containerd.sock", "default", "x"));
        assert_ne!(a, socket_path("/run/crated.sock", "k8s.io", "x"));
        assert!(a.as_os_str().len() < 108);
    }
}
