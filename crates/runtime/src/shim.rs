//! One runtime v2 shim: how it is found and started (containerd's start protocol), its log
//! FIFO, the ttrpc task client, and the `delete` action that cleans up after a dead one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::Message;
use tokio::io::AsyncBufReadExt;

use crate::bundle::Bundle;
use crate::RuntimeError;

/// The ttrpc service the shims of containerd 1.6 serve.
pub const TASK_SERVICE: &str = "containerd.task.v2.Task";
/// The metadata key carrying the namespace on ttrpc calls.
const NAMESPACE_KEY: &str = "containerd-namespace-ttrpc";

/// containerd's timeouts: state queries, shim shutdown, reconnection, dead-shim cleanup.
pub const STATE_TIMEOUT: Duration = Duration::from_secs(2);
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);
pub const LOAD_TIMEOUT: Duration = Duration::from_secs(5);
pub const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Calls without a natural end (Create, Start, Exec, ...) still get one, so a wedged shim
/// cannot hang a client forever.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// `io.containerd.runc.v2` is `containerd-shim-runc-v2`: the last two parts of the name. A
/// path is used as it is.
pub fn binary_name(runtime: &str) -> Result<String, RuntimeError> {
    let parts: Vec<&str> = runtime.split('.').collect();
    if parts.len() < 2 || parts.iter().any(|p| p.is_empty()) {
        return Err(RuntimeError::InvalidArgument(format!(
            "invalid runtime name {runtime}, correct runtime name should be either format like `io.containerd.runc.v2` or a full path to the binary"
        )));
    }
    Ok(format!(
        "containerd-shim-{}-{}",
        parts[parts.len() - 2],
        parts[parts.len() - 1]
    ))
}

/// The shim binary of a runtime: an absolute path as is; else found on PATH (after the opt
/// plugin's `bin`), then beside the daemon's executable.
pub fn resolve_binary(
    runtime: &str,
    runtime_path: &str,
    daemon: &DaemonAddresses,
) -> Result<PathBuf, RuntimeError> {
    if !runtime_path.is_empty() {
        return Ok(PathBuf::from(runtime_path));
    }
    if runtime.starts_with('/') {
        return Ok(PathBuf::from(runtime));
    }
    let name = binary_name(runtime)?;
    let path = daemon
        .opt
        .as_ref()
        .map(|o| o.path())
        .or_else(|| std::env::var_os("PATH"));
    let mut dirs: Vec<PathBuf> = path
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        dirs.push(dir);
    }
    dirs.into_iter()
        .map(|d| d.join(&name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            RuntimeError::NotFound(format!("runtime {runtime:?} binary not installed {name:?}"))
        })
}

/// What the shim start protocol needs from the daemon.
#[derive(Debug, Clone)]
pub struct DaemonAddresses {
    pub grpc: String,
    pub ttrpc: String,
    /// The daemon's own executable, passed as `-publish-binary`.
    pub publish_binary: PathBuf,
    pub debug: bool,
    /// containerd's `sched_core`: shims put each container in its own core-scheduling group.
    pub sched_core: bool,
    /// The opt plugin's directories, searched first by shims (none when it is disabled).
    pub opt: Option<std::sync::Arc<crate::opt::OptDirs>>,
}

fn base_args(
    binary: &Path,
    namespace: &str,
    id: &str,
    daemon: &DaemonAddresses,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(binary);
    cmd.arg("-namespace")
        .arg(namespace)
        .arg("-address")
        .arg(&daemon.grpc)
        .arg("-publish-binary")
        .arg(&daemon.publish_binary)
        .arg("-id")
        .arg(id);
    if daemon.debug {
        cmd.arg("-debug");
    }
    cmd.env("TTRPC_ADDRESS", &daemon.ttrpc)
        .env("GOMAXPROCS", "2");
    if daemon.sched_core {
        cmd.env("SCHED_CORE", "1");
    }
    if let Some(opt) = &daemon.opt {
        cmd.env("PATH", opt.path())
            .env("LD_LIBRARY_PATH", opt.library_path());
    }
    cmd
}

/// Opens the bundle's `log` FIFO for reading and writing (so the shim never blocks opening
/// it, and never sees it without a reader) and passes its lines to our log until the shim goes.
pub fn follow_log(bundle: &Bundle) -> Result<(), RuntimeError> {
    let path = bundle.path.join("log");
    if !path.exists() {
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o700))
            .map_err(|e| RuntimeError::io("creating the shim log FIFO")(e.into()))?;
    }
    let receiver = tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(&path)
        .map_err(RuntimeError::io("opening the shim log FIFO"))?;
    let id = bundle.id.clone();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(receiver).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::info!(target: "shim", id = %id, "{line}");
        }
    });
    Ok(())
}

/// Runs `<shim> ... start` in the bundle, with the runtime options (a protobuf `Any`) on stdin,
/// and returns the address it prints.
pub async fn start(
    binary: &Path,
    bundle: &Bundle,
    daemon: &DaemonAddresses,
    options: Option<&prost_types::Any>,
) -> Result<String, RuntimeError> {
    use std::process::Stdio;
    use tokio::io::AsyncWriteExt;
    follow_log(bundle)?;
    let mut cmd = base_args(binary, &bundle.namespace, &bundle.id, daemon);
    cmd.arg("start")
        .current_dir(&bundle.path)
        .stdin(if options.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(RuntimeError::io(format!("starting {}", binary.display())))?;
    if let (Some(options), Some(mut stdin)) = (options, child.stdin.take()) {
        stdin
            .write_all(&prost::Message::encode_to_vec(options))
            .await
            .map_err(RuntimeError::io("writing the shim's options"))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(RuntimeError::io("waiting for the shim to start"))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    let text = text.trim().to_owned();
    if !out.status.success() {
        return Err(RuntimeError::Unavailable(format!(
            "{text}: start failed: {}",
            out.status
        )));
    }
    std::fs::write(
        bundle.path.join("shim-binary-path"),
        binary.as_os_str().as_encoded_bytes(),
    )
    .map_err(RuntimeError::io("writing shim-binary-path"))?;
    Ok(text)
}

/// Runs `<shim> ... -bundle B delete` after a shim died: the runtime removes what is left of
/// the container; the shim prints the exit it found.
pub async fn cleanup_dead(
    binary: &Path,
    bundle: &Bundle,
    daemon: &DaemonAddresses,
) -> Result<api::DeleteResponse, RuntimeError> {
    let mut cmd = base_args(binary, &bundle.namespace, &bundle.id, daemon);
    cmd.arg("-bundle")
        .arg(&bundle.path)
        .arg("delete")
        .current_dir(&bundle.path)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(CLEANUP_TIMEOUT, cmd.output())
        .await
        .map_err(|_| RuntimeError::Unavailable("shim delete timed out".into()))?
        .map_err(RuntimeError::io(format!(
            "running {} delete",
            binary.display()
        )))?;
    if !out.status.success() {
        return Err(RuntimeError::Unavailable(format!(
            "{}: shim delete failed: {}",
            String::from_utf8_lossy(&out.stderr).trim(),
            out.status
        )));
    }
    api::DeleteResponse::parse_from_bytes(&out.stdout)
        .map_err(|e| RuntimeError::Unavailable(format!("shim delete printed no exit: {e}")))
}

/// The ttrpc task client of one shim.
pub struct ShimClient {
    client: ttrpc::asynchronous::Client,
    namespace: String,
}

impl ShimClient {
    pub async fn connect(address: &str, namespace: &str) -> Result<ShimClient, RuntimeError> {
        let address = if address.contains("://") {
            address.to_owned()
        } else {
            format!("unix://{address}")
        };
        let client = ttrpc::asynchronous::Client::connect(&address)
            .await
            .map_err(|e| RuntimeError::Unavailable(format!("connecting to shim {address}: {e}")))?;
        Ok(ShimClient {
            client,
            namespace: namespace.to_owned(),
        })
    }

    /// One call of the task service; `timeout` None waits as long as the shim takes (Wait).
    pub async fn call<Req: Message, Resp: Message>(
        &self,
        method: &str,
        req: &Req,
        timeout: Option<Duration>,
    ) -> Result<Resp, RuntimeError> {
        let payload = req
            .write_to_bytes()
            .map_err(|e| RuntimeError::InvalidArgument(format!("encoding {method}: {e}")))?;
        let mut kv = ttrpc::proto::KeyValue::new();
        kv.key = NAMESPACE_KEY.into();
        kv.value = self.namespace.clone();
        let request = ttrpc::Request {
            service: TASK_SERVICE.into(),
            method: method.into(),
            payload,
            timeout_nano: timeout.map_or(0, |t| t.as_nanos() as i64),
            metadata: vec![kv],
            ..Default::default()
        };
        let response = self.client.request(request).await?;
        Resp::parse_from_bytes(&response.payload)
            .map_err(|e| RuntimeError::Unavailable(format!("shim answered {method} badly: {e}")))
    }
}
