//! Support for tests and benchmarks: a daemon (crated or containerd) started on a private temp
//! root and socket, readiness through `grpc.health.v1.Health/Check`, clean stops, and lookup of
//! the peer tools (`ctr`, `containerd`) with a loud skip outside CI and a failure on CI.

pub mod blobs;
pub mod cmd;
pub mod content_suite;
pub mod gate;
pub mod hostile;
pub mod layered;
pub mod oci;
pub mod rebase;
pub mod registry;
pub mod vm;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tonic::transport::{Endpoint, Uri};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Whether we run on CI, where every peer tool must be installed.
pub fn on_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false")
}

/// Finds a tool on PATH. Missing on CI is a failure (.ci/run must install it); elsewhere the
/// caller skips, and this prints why.
pub fn tool(name: &str, package: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            !on_ci(),
            "{name} is not installed on CI: .ci/run must `apt-get install {package}`"
        );
        eprintln!(
            "SKIPPED: {name} not found on PATH (Debian package `{package}`); this test needs it"
        );
    }
    found
}

/// `crictl` or `critest` of cri-tools, as `scripts/setup.sh` builds them with Go into
/// `$CRATED_CRI_TOOLS_DIR` (default `/var/cache/crated-test/cri-tools-v1.37.0`). Missing on CI
/// is a failure; elsewhere the caller skips, and this prints why.
pub fn cri_tool(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("CRATED_CRI_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/crated-test/cri-tools-v1.37.0"));
    let path = dir.join(name);
    if path.is_file() {
        return Some(path);
    }
    assert!(
        !on_ci(),
        "{} is not built on CI: scripts/setup.sh must build cri-tools",
        path.display()
    );
    eprintln!(
        "SKIPPED: {} not found (scripts/setup.sh builds it with Go); this test needs it",
        path.display()
    );
    None
}

/// A binary of this workspace, next to the test executable's `deps` directory.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{} is missing: build the workspace binaries first (`cargo build --workspace --bins`)",
        bin.display()
    );
    bin
}

/// A gRPC channel to a daemon's unix socket, with wide flow-control windows so that bulk
/// streams are not held back by them.
pub async fn channel(socket: &Path) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let path = socket.to_path_buf();
    Endpoint::from_static("http://[::]:0")
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
}

/// `message` as a request in containerd `namespace`, under `lease` when given (the headers
/// containerd's clients send).
pub fn in_namespace<T>(
    message: T,
    namespace: &'static str,
    lease: Option<&'static str>,
) -> tonic::Request<T> {
    use tonic::metadata::MetadataValue;
    let mut request = tonic::Request::new(message);
    let md = request.metadata_mut();
    md.insert(
        "containerd-namespace",
        MetadataValue::from_static(namespace),
    );
    if let Some(lease) = lease {
        md.insert("containerd-lease", MetadataValue::from_static(lease));
    }
    request
}

/// Asks the health service once; true when it answers SERVING.
pub async fn health_check(socket: &Path) -> bool {
    let Ok(channel) = channel(socket).await else {
        return false;
    };
    let mut client = HealthClient::new(channel);
    match client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
    {
        Ok(resp) => resp.into_inner().status == ServingStatus::Serving as i32,
        Err(_) => false,
    }
}

/// Polls until the daemon at `socket` is healthy, the process exits, or `timeout` passes.
pub fn wait_healthy(
    socket: &Path,
    child: &mut Child,
    timeout: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("daemon exited before it was ready: {status}"));
        }
        if socket.exists() && runtime.block_on(health_check(socket)) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            return Err(format!("daemon not healthy after {timeout:?}"));
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// A daemon on a private temp directory; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Daemon {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub stderr_path: PathBuf,
    /// From spawn until the health service answered SERVING.
    pub ready_after: Duration,
    /// The arguments it was started with (config and extra ones included), for restarts.
    args: Vec<std::ffi::OsString>,
}

impl Daemon {
    /// Starts `crated` with `config` (TOML text, or none) and extra arguments, and waits until it
    /// is healthy.
    pub fn crated(bin: &Path, config: Option<&str>, extra: &[&str]) -> Result<Daemon, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let root = dir.path().join("root");
        Self::crated_on_root(bin, dir, root, config, extra)
    }

    /// Like [`Daemon::crated`], on a given root (to restart on the data of an earlier daemon).
    pub fn crated_on_root(
        bin: &Path,
        dir: tempfile::TempDir,
        root: PathBuf,
        config: Option<&str>,
        extra: &[&str],
    ) -> Result<Daemon, String> {
        let state = dir.path().join("state");
        let socket = dir.path().join("crated.sock");
        let mut cmd = crated_command(bin, &root, &state, &socket);
        if let Some(text) = config {
            let path = dir.path().join("config.toml");
            std::fs::write(&path, text).map_err(|e| e.to_string())?;
            cmd.arg("--config").arg(path);
        }
        cmd.args(extra);
        Self::spawn(cmd, dir, root, state, socket)
    }

    /// Starts Debian's containerd on a private root (for side-by-side benchmarks).
    pub fn containerd(bin: &Path, config: Option<&str>) -> Result<Daemon, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let root = dir.path().join("root");
        let state = dir.path().join("state");
        let socket = dir.path().join("containerd.sock");
        let mut cmd = Command::new(bin);
        cmd.arg("--root")
            .arg(&root)
            .arg("--state")
            .arg(&state)
            .arg("--address")
            .arg(&socket);
        if let Some(text) = config {
            let path = dir.path().join("config.toml");
            std::fs::write(&path, text).map_err(|e| e.to_string())?;
            cmd.arg("--config").arg(path);
        }
        Self::spawn(cmd, dir, root, state, socket)
    }

    fn spawn(
        mut cmd: Command,
        dir: tempfile::TempDir,
        root: PathBuf,
        state: PathBuf,
        socket: PathBuf,
    ) -> Result<Daemon, String> {
        let stderr_path = dir.path().join("daemon.log");
        let log = std::fs::File::create(&stderr_path).map_err(|e| e.to_string())?;
        let args = cmd.get_args().map(|a| a.to_os_string()).collect();
        let spawned = Instant::now();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {cmd:?}: {e}"))?;
        let mut daemon = Daemon {
            child,
            dir,
            root,
            state,
            socket,
            stderr_path,
            ready_after: Duration::ZERO,
            args,
        };
        match wait_healthy(&daemon.socket, &mut daemon.child, Duration::from_secs(30)) {
            Ok(_) => daemon.ready_after = spawned.elapsed(),
            Err(e) => return Err(format!("{e}\n--- daemon log ---\n{}", daemon.log())),
        }
        Ok(daemon)
    }

    /// SIGKILLs crated and starts `bin` again with the arguments it had (root, state, socket,
    /// config and extra ones),
    /// its log appended to the same file.
    pub fn restart_after_sigkill(&mut self, bin: &Path) -> Result<(), String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.stderr_path)
            .map_err(|e| e.to_string())?;
        self.child = Command::new(bin)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("restarting {}: {e}", bin.display()))?;
        wait_healthy(&self.socket, &mut self.child, Duration::from_secs(30))
            .map(|_| ())
            .map_err(|e| format!("{e}\n--- daemon log ---\n{}", self.log()))
    }

    /// The hex digests of the blobs in the daemon's local content store, sorted.
    pub fn blob_files(&self) -> Vec<String> {
        blobs::blob_files(&self.root.join("io.containerd.content.v1.content"))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then waits (SIGKILL after 10 s).
    pub fn stop(&mut self) -> ExitStatus {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if started.elapsed() > Duration::from_secs(10) {
                let _ = self.child.kill();
                return self.child.wait().expect("reaping the daemon");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Runs `ctr` (or any containerd client) against this daemon.
    pub fn client(&self, bin: &Path, args: &[&str]) -> Output {
        Command::new(bin)
            .arg("--address")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("running the client")
    }
}

/// `crated` on a private root, state and socket.
fn crated_command(bin: &Path, root: &Path, state: &Path, socket: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("--root")
        .arg(root)
        .arg("--state")
        .arg(state)
        .arg("--address")
        .arg(socket);
    cmd
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
        // A failed test shows what the daemon said last, before its directory goes.
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!(
                "--- daemon log (last {} lines) ---\n{}",
                tail.len(),
                tail.join("\n")
            );
        }
    }
}

/// Resident memory of a process in KiB, from /proc.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// Peak resident memory of a process in KiB (VmHWM), from /proc.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Runs a command to its end, killing it (and failing) if it runs past `timeout`: a daemon that
/// was expected to refuse to start must not hang the test.
pub fn output_within(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the command");
    let started = Instant::now();
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().expect("collecting output");
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collecting output");
            panic!(
                "{cmd:?} still running after {timeout:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A plugin server (`crated-content`, `crated-snapshotter`) listening on a unix socket;
/// killed on drop.
pub struct SocketServer {
    child: Child,
}

impl SocketServer {
    /// Starts the workspace binary `name` with `args` and waits until `socket` accepts.
    pub fn start(name: &str, args: &[&std::ffi::OsStr], socket: &Path) -> SocketServer {
        let child = Command::new(workspace_bin(name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        wait_until(
            Duration::from_secs(10),
            || std::os::unix::net::UnixStream::connect(socket).is_ok(),
            || format!("{name} did not listen on {}", socket.display()),
        );
        SocketServer { child }
    }
}

impl Drop for SocketServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether this process runs as root (mounting tests need it).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Mounts `key` of `snapshotter` at `at` by running the `mount` command that `client`'s
/// (`ctr`'s or `cratectl`'s) `snapshots mounts` prints.
pub fn mount_snapshot(client: &Path, daemon: &Daemon, snapshotter: &str, key: &str, at: &Path) {
    std::fs::create_dir_all(at).unwrap();
    let target = at.to_str().expect("a UTF-8 mount point");
    let out = daemon.client(
        client,
        &[
            "snapshots",
            "--snapshotter",
            snapshotter,
            "mounts",
            target,
            key,
        ],
    );
    let cmd = cmd::ok(out);
    let status = Command::new("sh")
        .arg("-c")
        .arg(cmd.trim())
        .status()
        .unwrap();
    assert!(status.success(), "{cmd}");
}

/// Unmounts what [`mount_snapshot`] mounted.
pub fn unmount(at: &Path) {
    assert!(Command::new("umount").arg(at).status().unwrap().success());
}

/// Waits until `done` holds, polling; past `timeout` it fails with `why()`.
pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool, why: impl Fn() -> String) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{}", why());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every entry under `root` (not `root` itself) with what an unpacked image must get right:
/// type, mode, owner, size, content digest, link target, device number, link count; regular
/// files' mtimes too. Keyed by path relative to `root`.
pub fn tree_listing(root: &Path) -> std::collections::BTreeMap<String, String> {
    use sha2::{Digest as _, Sha256};
    use std::os::unix::fs::MetadataExt;
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let m = std::fs::symlink_metadata(&path).unwrap();
            let common = format!("mode={:o} owner={}:{}", m.mode(), m.uid(), m.gid());
            let ft = m.file_type();
            let what = if ft.is_dir() {
                stack.push(path.clone());
                format!("dir {common}")
            } else if ft.is_symlink() {
                format!(
                    "symlink -> {}",
                    std::fs::read_link(&path).unwrap().display()
                )
            } else if ft.is_file() {
                let digest = Sha256::digest(std::fs::read(&path).unwrap());
                format!(
                    "file {common} size={} links={} mtime={} sha256={digest:x}",
                    m.len(),
                    m.nlink(),
                    m.mtime()
                )
            } else {
                format!("special {common} rdev={}", m.rdev())
            };
            out.insert(rel, what);
        }
    }
    out
}

/// [`assert_same_tree`] for a read-only view of an image unpacked into `snapshotter`. Native's
/// unpack shares the files a layer leaves alone among an image's snapshots (hard links), so in
/// a view of one they count those links too: there link counts are left out. A writable
/// snapshot (a container's) is a copy with the image's own and is compared whole.
pub fn assert_same_view(
    snapshotter: &str,
    expected: &std::collections::BTreeMap<String, String>,
    view: &std::collections::BTreeMap<String, String>,
    at_least: usize,
) {
    if snapshotter != "native" {
        return assert_same_tree(expected, view, at_least);
    }
    assert_same_tree(
        &without_link_counts(expected),
        &without_link_counts(view),
        at_least,
    );
}

/// A [`tree_listing`] without its `links=` fields.
fn without_link_counts(
    tree: &std::collections::BTreeMap<String, String>,
) -> std::collections::BTreeMap<String, String> {
    tree.iter()
        .map(|(path, what)| {
            let kept: Vec<&str> = what
                .split(' ')
                .filter(|field| !field.starts_with("links="))
                .collect();
            (path.clone(), kept.join(" "))
        })
        .collect()
}

/// Fails listing the first differences unless two [`tree_listing`]s are equal, and unless the
/// expected tree has more than `at_least` entries (so an empty unpack cannot pass).
pub fn assert_same_tree(
    expected: &std::collections::BTreeMap<String, String>,
    got: &std::collections::BTreeMap<String, String>,
    at_least: usize,
) {
    let differences: Vec<String> = expected
        .keys()
        .chain(got.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|k| expected.get(*k) != got.get(*k))
        .map(|k| format!("{k}: expected {:?}, got {:?}", expected.get(k), got.get(k)))
        .collect();
    assert!(
        differences.is_empty(),
        "{} differences, first: {:#?}",
        differences.len(),
        &differences[..differences.len().min(10)]
    );
    assert!(
        expected.len() > at_least,
        "the tree has its files: {}",
        expected.len()
    );
}

/// The [`tree_listing`] of `image` as `umoci unpack` gives it (the reference unpacker),
/// working under `work`.
pub fn umoci_tree(
    umoci: &Path,
    image: &oci::OciImage,
    work: &Path,
) -> std::collections::BTreeMap<String, String> {
    let layout = work.join("layout");
    image.write_layout(&layout);
    let bundle = work.join("bundle");
    let out = Command::new(umoci)
        .args(["unpack", "--image"])
        .arg(format!("{}:latest", layout.display()))
        .arg(&bundle)
        .output()
        .expect("running umoci");
    assert!(
        out.status.success(),
        "umoci: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    tree_listing(&bundle.join("rootfs"))
}
