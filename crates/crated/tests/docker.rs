//! Debian's `dockerd` (20.10, package `docker.io`) started with `--containerd` on a fresh crated:
//! it must come up on a root where its namespaces do not exist yet, then load an image, run,
//! exec, show logs, stop, restart a failing container by its policy, and keep a container
//! running through a SIGKILL and restart of crated.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crated_testsupport::cmd::ok;
use crated_testsupport::{is_root, output_within, tool, wait_until, Daemon};

mod common;

use common::crated;

const IMAGE: &str = "crated-test/busybox:latest";

/// dockerd on private directories, talking to `containerd` (crated's socket).
struct Dockerd {
    child: Child,
    docker: PathBuf,
    host: String,
    log: PathBuf,
}

impl Dockerd {
    fn start(dockerd: &Path, docker: &Path, containerd: &Path, dir: &Path) -> Dockerd {
        let config = dir.join("daemon.json");
        std::fs::write(&config, "{}").unwrap();
        let log = dir.join("dockerd.log");
        let host = format!("unix://{}", dir.join("docker.sock").display());
        let child = Command::new(dockerd)
            .arg(format!("--containerd={}", containerd.display()))
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .arg("--config-file")
            .arg(&config)
            .args(["-H", &host, "--iptables=false", "--bridge=none"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut d = Dockerd {
            child,
            docker: docker.to_path_buf(),
            host,
            log,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !d.docker(&["version"]).status.success() {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("dockerd exited: {status}\n{}", d.log());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "dockerd did not answer\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        d
    }

    fn docker(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(&self.docker);
        cmd.args(["-H", &self.host]).args(args);
        output_within(&mut cmd, Duration::from_secs(120))
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?}: {}\n--- dockerd log ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // Containers first, so that no shim outlives the test.
        let ids = self.docker(&["ps", "-aq"]);
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            let _ = self.docker(&["rm", "-f", id]);
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while matches!(self.child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- dockerd log ---\n{}", self.log());
        }
    }
}

#[test]
fn dockerd_runs_containers_on_a_fresh_crated() {
    if !is_root() {
        eprintln!("skipped: dockerd and running containers need root");
        return;
    }
    let (Some(dockerd), Some(docker)) = (tool("dockerd", "docker.io"), tool("docker", "docker.io"))
    else {
        return;
    };
    if tool("containerd-shim-runc-v2", "containerd").is_none()
        || tool("runc", "runc").is_none()
        || tool("busybox", "busybox-static").is_none()
    {
        return;
    }
    let mut daemon = Daemon::crated(&crated(), None, &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A fresh root: neither `moby` nor `plugins.moby` exists when dockerd starts.
    let d = Dockerd::start(&dockerd, &docker, &daemon.socket, dir.path());

    let version = d.ok(&["version", "--format", "{{json .Server.Components}}"]);
    assert!(version.contains("1.6.20+crated."), "{version}");

    let archive = dir.path().join("busybox-docker.tar");
    let (image, _) = crated_testsupport::oci::busybox("unused");
    image.write_docker_archive(&archive, IMAGE);
    let loaded = d.ok(&["load", "-i", archive.to_str().unwrap()]);
    assert!(loaded.contains(IMAGE), "{loaded}");

    // Foreground: output and exit status come back.
    let out = d.docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        IMAGE,
        "/bin/sh",
        "-c",
        "echo hi; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");

    // Detached, then exec, logs, stop.
    let id = d
        .ok(&[
            "run",
            "-d",
            "--name",
            "long",
            "--network",
            "none",
            IMAGE,
            "/bin/sh",
            "-c",
            "echo started; exec /bin/busybox sleep 1000",
        ])
        .trim()
        .to_owned();
    assert!(!id.is_empty());
    assert_eq!(
        d.ok(&["exec", "long", "/bin/sh", "-c", "echo in-exec"]),
        "in-exec\n"
    );
    wait_until(
        Duration::from_secs(10),
        || d.docker(&["logs", "long"]).stdout == b"started\n",
        || format!("{:?}", d.docker(&["logs", "long"])),
    );

    // A restart policy: the failing container is started again by dockerd.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "flaky",
        "--network",
        "none",
        "--restart",
        "on-failure:3",
        IMAGE,
        "/bin/sh",
        "-c",
        "exit 1",
    ]);
    wait_until(
        Duration::from_secs(60),
        || {
            d.ok(&["inspect", "-f", "{{.RestartCount}}", "flaky"])
                .trim()
                .parse::<u32>()
                .is_ok_and(|n| n >= 2)
        },
        || {
            d.ok(&[
                "inspect",
                "-f",
                "{{.RestartCount}} {{.State.Status}}",
                "flaky",
            ])
        },
    );

    // crated killed under the running container and started again: dockerd reconnects, and the
    // container still runs and answers exec.
    daemon.restart_after_sigkill(&crated()).unwrap();
    wait_until(
        Duration::from_secs(60),
        || {
            d.docker(&["exec", "long", "/bin/sh", "-c", "echo after-restart"])
                .stdout
                == b"after-restart\n"
        },
        || {
            format!(
                "{:?}",
                d.docker(&["exec", "long", "/bin/sh", "-c", "echo after-restart"])
            )
        },
    );
    assert_eq!(
        d.ok(&["inspect", "-f", "{{.State.Running}}", "long"])
            .trim(),
        "true"
    );
    d.ok(&["stop", "-t", "1", "long"]);
    assert_eq!(
        d.ok(&["inspect", "-f", "{{.State.Running}}", "long"])
            .trim(),
        "false"
    );
    d.ok(&["rm", "long"]);

    // Docker's containers are crated's, in its `moby` namespace.
    let ctr = tool("ctr", "containerd").unwrap();
    let listed = ok(daemon.client(&ctr, &["-n", "moby", "containers", "ls", "-q"]));
    assert!(!listed.contains(&id), "{listed}");
    let namespaces = ok(daemon.client(&ctr, &["namespaces", "ls", "-q"]));
    assert!(namespaces.lines().any(|l| l == "moby"), "{namespaces}");
}
