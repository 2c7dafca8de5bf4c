//! What the integration tests share: the daemon's binary and a daemon on a private root; for
//! the container tests, a daemon with busybox imported, ctr with a deadline, the
//! bundles left, `ctr events` collected in the background, a task's status.
#![allow(dead_code)] // each test file uses its own part

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crated_testsupport::cmd::ok;
use crated_testsupport::{is_root, tool, wait_until, Daemon};

pub fn crated() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_crated"))
}

/// A crated on a private root, with `config` as its config file.
pub fn start(config: Option<&str>) -> Daemon {
    Daemon::crated(&crated(), config, &[]).expect("starting crated")
}

pub const IMAGE: &str = "docker.io/library/busybox:crated";

/// Starts crated and imports busybox with ctr; None (after saying why) without root or a peer
/// outside CI.
pub fn setup(snapshotter: &str) -> Option<(Daemon, PathBuf, tempfile::TempDir)> {
    setup_with(snapshotter, None)
}

/// [`setup`] with a config file.
pub fn setup_with(
    snapshotter: &str,
    config: Option<&str>,
) -> Option<(Daemon, PathBuf, tempfile::TempDir)> {
    if !is_root() {
        eprintln!("skipped: running containers needs root");
        return None;
    }
    let ctr = tool("ctr", "containerd")?;
    tool("containerd-shim-runc-v2", "containerd")?;
    tool("runc", "runc")?;
    tool("busybox", "busybox-static")?;
    let daemon = Daemon::crated(&crated(), config, &[]).unwrap();
    let work = tempfile::tempdir().unwrap();
    crated_testsupport::oci::import_busybox(&daemon, &ctr, IMAGE, snapshotter, work.path())
        .unwrap();
    Some((daemon, ctr, work))
}

/// Runs ctr with a deadline: a hung call fails the test instead of hanging it.
pub fn ctr(daemon: &Daemon, ctr: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(ctr);
    cmd.arg("--address").arg(&daemon.socket).args(args);
    crated_testsupport::output_within(&mut cmd, Duration::from_secs(60))
}

pub fn bundles(daemon: &Daemon) -> Vec<String> {
    let dir = daemon.state.join("io.containerd.runtime.v2.task/default");
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A command writing to stdout and stderr and exiting with a status of its own.
pub const HI_ERR_EXIT_3: [&str; 3] = ["/bin/sh", "-c", "echo hi; echo err >&2; exit 3"];

/// What a foreground run of [`HI_ERR_EXIT_3`] must give its caller.
pub fn assert_hi_err_exit_3(out: &std::process::Output) {
    assert_eq!(
        out.status.code(),
        Some(3),
        "stdout {} stderr {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("err"));
}

/// `ctr events` in the background, its lines collected.
pub struct Events {
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Events {
    pub fn start(daemon: &Daemon, ctr: &Path) -> Events {
        let mut child = Command::new(ctr)
            .arg("--address")
            .arg(&daemon.socket)
            .arg("events")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Events { child, lines }
    }

    pub fn wait_for(&self, topic: &str, id: &str) {
        wait_until(
            Duration::from_secs(10),
            || {
                self.lines
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|l| l.contains(topic) && l.contains(id))
            },
            || format!("no {topic} for {id} in {:?}", self.lines.lock().unwrap()),
        );
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Column `column` (0 TASK, 1 PID, 2 STATUS) of task `id` in `ctr tasks ls`.
pub fn task_column(daemon: &Daemon, bin: &Path, id: &str, column: usize) -> Option<String> {
    let ls = ok(ctr(daemon, bin, &["tasks", "ls"]));
    ls.lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(column))
        .map(str::to_owned)
}

pub fn task_status(daemon: &Daemon, bin: &Path, id: &str) -> String {
    task_column(daemon, bin, id, 2).unwrap_or_else(|| "none".into())
}

/// Removes what an earlier, failed run of a test left in runc's state for these ids (runc keeps
/// it per namespace under /run/containerd, outside any daemon's root), so a rerun can start.
pub fn clear_stale_runc_state(ids: &[&str]) {
    for id in ids {
        let _ = Command::new("runc")
            .args(["--root", "/run/containerd/runc/default", "delete", "-f", id])
            .stderr(Stdio::null())
            .status();
    }
}
