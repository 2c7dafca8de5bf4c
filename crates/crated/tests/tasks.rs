//! Containers and tasks through Debian's `ctr` against crated, with Debian's
//! `containerd-shim-runc-v2` and `runc`: `ctr run` in the foreground and detached, the task
//! commands, events, and a daemon killed with SIGKILL that finds its running task again.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crated_testsupport::cmd::{fails, ok};
use crated_testsupport::{wait_until, Daemon};

mod common;

use common::*;

fn run_rm_reports_output_and_exit_status(snapshotter: &str) {
    let Some((daemon, bin, _work)) = setup(snapshotter) else {
        return;
    };
    // Ids are unique across tests: runc keeps its state per namespace under /run/containerd.
    let id = format!("rm-{snapshotter}");
    let out = ctr(
        &daemon,
        &bin,
        &["run", "--rm", "--snapshotter", snapshotter, IMAGE, &id]
            .into_iter()
            .chain(HI_ERR_EXIT_3)
            .collect::<Vec<_>>(),
    );
    assert_hi_err_exit_3(&out);
    // --rm: no task, container, snapshot or bundle left.
    let tasks = ok(ctr(&daemon, &bin, &["tasks", "ls", "-q"]));
    assert!(tasks.trim().is_empty(), "{tasks}");
    let containers = ok(ctr(&daemon, &bin, &["containers", "ls", "-q"]));
    assert!(containers.trim().is_empty(), "{containers}");
    let snaps = ok(ctr(
        &daemon,
        &bin,
        &["snapshots", "--snapshotter", snapshotter, "ls"],
    ));
    assert!(!snaps.contains(&id), "{snaps}");
    assert!(bundles(&daemon).is_empty(), "{:?}", bundles(&daemon));
}

#[test]
fn ctr_run_rm_with_overlayfs() {
    run_rm_reports_output_and_exit_status("overlayfs");
}

#[test]
fn ctr_run_rm_with_native() {
    run_rm_reports_output_and_exit_status("native");
}

/// SIGKILL, the exit event, STOPPED in `tasks ls`, then task and container removed.
fn kill_and_remove(daemon: &Daemon, bin: &Path, events: &Events, id: &str) {
    ok(ctr(
        daemon,
        bin,
        &["tasks", "kill", "--signal", "SIGKILL", id],
    ));
    events.wait_for("/tasks/exit", id);
    wait_until(
        Duration::from_secs(10),
        || task_status(daemon, bin, id) == "STOPPED",
        || task_status(daemon, bin, id),
    );
    ok(ctr(daemon, bin, &["tasks", "rm", id]));
    ok(ctr(daemon, bin, &["containers", "rm", id]));
}

/// A task whose shim no longer has its container (deleted under the daemon, as happens for an
/// instant in every delete) is left out of the task list instead of failing it, and deleting it
/// ends it all the same with NotFound, as containerd does; the other tasks are untouched.
#[test]
fn a_task_its_shim_no_longer_has_is_left_out_and_can_be_deleted() {
    use crated_api::containerd::services::tasks::v1::{
        tasks_client::TasksClient, DeleteTaskRequest,
    };
    let Some((daemon, bin, _work)) = setup("overlayfs") else {
        return;
    };
    clear_stale_runc_state(&["gone", "stays"]);
    for id in ["gone", "stays"] {
        ok(ctr(
            &daemon,
            &bin,
            &["run", "-d", IMAGE, id, "/bin/sh", "-c", "sleep 1000"],
        ));
    }
    ok(ctr(
        &daemon,
        &bin,
        &["tasks", "kill", "-s", "SIGKILL", "gone"],
    ));
    wait_until(
        Duration::from_secs(10),
        || task_status(&daemon, &bin, "gone") == "STOPPED",
        || ok(ctr(&daemon, &bin, &["tasks", "ls"])),
    );
    let bundle = daemon
        .state
        .join("io.containerd.runtime.v2.task/default/gone");
    let address = std::fs::read_to_string(bundle.join("address")).unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let shim = crated_runtime::ShimClient::connect(address.trim(), "default")
            .await
            .unwrap();
        let req = containerd_shim_protos::api::DeleteRequest {
            id: "gone".into(),
            ..Default::default()
        };
        let _: containerd_shim_protos::api::DeleteResponse = shim
            .call("Delete", &req, Some(Duration::from_secs(10)))
            .await
            .unwrap();
    });

    let ls = ok(ctr(&daemon, &bin, &["tasks", "ls"]));
    assert!(!ls.contains("gone") && ls.contains("stays"), "{ls}");
    // ctr cannot load such a task to delete it; a client deleting it by id over the API can.
    let deleted = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let channel = crated_testsupport::channel(&daemon.socket).await.unwrap();
        TasksClient::new(channel)
            .delete(crated_testsupport::in_namespace(
                DeleteTaskRequest {
                    container_id: "gone".into(),
                },
                "default",
                None,
            ))
            .await
    });
    assert_eq!(deleted.unwrap_err().code(), tonic::Code::NotFound);
    assert!(!bundle.exists(), "the bundle of the deleted task is left");
    wait_until(
        Duration::from_secs(10),
        || shim_pid(&daemon, "gone").is_none(),
        || "the shim of the deleted task still runs".into(),
    );
    assert_eq!(task_status(&daemon, &bin, "stays"), "RUNNING");
    ok(ctr(&daemon, &bin, &["containers", "rm", "gone"]));
    ok(ctr(&daemon, &bin, &["tasks", "rm", "-f", "stays"]));
    ok(ctr(&daemon, &bin, &["containers", "rm", "stays"]));
}

#[test]
fn ctr_detached_task_lifecycle_with_events() {
    let Some((daemon, bin, _work)) = setup("overlayfs") else {
        return;
    };
    let events = Events::start(&daemon, &bin);
    // Subscribed before anything happens.
    std::thread::sleep(Duration::from_millis(300));
    ok(ctr(
        &daemon,
        &bin,
        &["images", "tag", IMAGE, "docker.io/library/d1:tag"],
    ));
    ok(ctr(
        &daemon,
        &bin,
        &["images", "rm", "docker.io/library/d1:tag"],
    ));
    events.wait_for("/images/create", "d1:tag");
    events.wait_for("/images/delete", "d1:tag");
    ok(ctr(
        &daemon,
        &bin,
        &["run", "-d", IMAGE, "d1", "/bin/sh", "-c", "sleep 1000"],
    ));
    assert_eq!(task_status(&daemon, &bin, "d1"), "RUNNING");
    let info = ok(ctr(&daemon, &bin, &["containers", "info", "d1"]));
    assert!(
        info.contains("io.containerd.runc.v2") && info.contains(IMAGE),
        "{info}"
    );
    let listed = ok(ctr(&daemon, &bin, &["containers", "ls"]));
    assert!(listed.contains("d1"), "{listed}");

    let ps = ok(ctr(&daemon, &bin, &["tasks", "ps", "d1"]));
    assert!(ps.lines().count() >= 2, "{ps}");

    let exec = ok(ctr(
        &daemon,
        &bin,
        &[
            "tasks",
            "exec",
            "--exec-id",
            "e1",
            "d1",
            "/bin/sh",
            "-c",
            "echo from-exec",
        ],
    ));
    assert_eq!(exec, "from-exec\n");
    let failing = ctr(
        &daemon,
        &bin,
        &[
            "tasks",
            "exec",
            "--exec-id",
            "e2",
            "d1",
            "/bin/sh",
            "-c",
            "exit 7",
        ],
    );
    assert_eq!(failing.status.code(), Some(7));

    ok(ctr(&daemon, &bin, &["tasks", "pause", "d1"]));
    assert_eq!(task_status(&daemon, &bin, "d1"), "PAUSED");
    ok(ctr(&daemon, &bin, &["tasks", "resume", "d1"]));
    assert_eq!(task_status(&daemon, &bin, "d1"), "RUNNING");

    let metrics = ok(ctr(&daemon, &bin, &["tasks", "metrics", "d1"]));
    assert!(
        metrics.contains("d1") && metrics.contains("memory"),
        "{metrics}"
    );

    // A task that runs cannot be deleted; killed, it can.
    let busy = fails(ctr(&daemon, &bin, &["tasks", "rm", "d1"]));
    assert!(!busy.is_empty());
    kill_and_remove(&daemon, &bin, &events, "d1");
    for topic in [
        "/snapshot/prepare",
        "/containers/create",
        "/tasks/create",
        "/tasks/start",
        "/tasks/exec-added",
        "/tasks/paused",
        "/tasks/resumed",
        "/tasks/delete",
        "/snapshot/remove",
        "/containers/delete",
    ] {
        events.wait_for(topic, "d1");
    }
    assert!(bundles(&daemon).is_empty(), "{:?}", bundles(&daemon));
}

#[test]
fn a_daemon_killed_with_sigkill_finds_its_running_task_again() {
    let Some((mut daemon, bin, _work)) = setup("overlayfs") else {
        return;
    };
    ok(ctr(
        &daemon,
        &bin,
        &["run", "-d", IMAGE, "k1", "/bin/sh", "-c", "sleep 1000"],
    ));
    assert_eq!(task_status(&daemon, &bin, "k1"), "RUNNING");
    daemon.restart_after_sigkill(&crated()).unwrap();
    assert!(daemon.log().contains("reconnected"), "{}", daemon.log());
    assert_eq!(task_status(&daemon, &bin, "k1"), "RUNNING");
    let events = Events::start(&daemon, &bin);
    std::thread::sleep(Duration::from_millis(300));
    kill_and_remove(&daemon, &bin, &events, "k1");
    assert!(bundles(&daemon).is_empty(), "{:?}", bundles(&daemon));
}

/// The pid of the shim serving task `id` of this daemon, from /proc.
fn shim_pid(daemon: &Daemon, id: &str) -> Option<i32> {
    let address = daemon.socket.to_string_lossy().into_owned();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_shim = args.first()?.ends_with("containerd-shim-runc-v2")
            && args.windows(2).any(|w| w[0] == "-id" && w[1] == id)
            && args
                .windows(2)
                .any(|w| w[0] == "-address" && w[1] == address);
        is_shim.then_some(pid)
    })
}

#[test]
fn a_shim_that_dies_ends_its_task_without_hanging_calls() {
    let Some((daemon, bin, _work)) = setup("overlayfs") else {
        return;
    };
    ok(ctr(
        &daemon,
        &bin,
        &["run", "-d", IMAGE, "s1", "/bin/sh", "-c", "sleep 1000"],
    ));
    let events = Events::start(&daemon, &bin);
    std::thread::sleep(Duration::from_millis(300));
    // A client waiting on the task when the shim goes.
    let mut waiting = Command::new(&bin)
        .arg("--address")
        .arg(&daemon.socket)
        .args(["tasks", "attach", "s1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let pid = shim_pid(&daemon, "s1").expect("the shim of s1 runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    events.wait_for("/tasks/exit", "s1");
    events.wait_for("/tasks/delete", "s1");
    wait_until(
        Duration::from_secs(10),
        || matches!(waiting.try_wait(), Ok(Some(_))),
        || "the waiting client still hangs".into(),
    );
    assert_eq!(task_status(&daemon, &bin, "s1"), "none");
    assert!(bundles(&daemon).is_empty(), "{:?}", bundles(&daemon));
    ok(ctr(&daemon, &bin, &["containers", "rm", "s1"]));
}

fn cratectl() -> PathBuf {
    crated_testsupport::workspace_bin("cratectl")
}

#[test]
fn cratectl_run_foreground_detached_and_with_a_terminal() {
    let Some((daemon, bin, _work)) = setup("overlayfs") else {
        return;
    };
    let ours = cratectl();
    let out = ctr(
        &daemon,
        &ours,
        &["run", "--rm", IMAGE, "cr1"]
            .into_iter()
            .chain(HI_ERR_EXIT_3)
            .collect::<Vec<_>>(),
    );
    assert_hi_err_exit_3(&out);
    assert!(ok(ctr(&daemon, &bin, &["containers", "ls", "-q"]))
        .trim()
        .is_empty());

    // The image's config gives the command (busybox: /bin/sh), stdin reaches it.
    let mut child = Command::new(&ours)
        .arg("--address")
        .arg(&daemon.socket)
        .args(["run", "--rm", IMAGE, "cr2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"echo from-stdin; exit 5\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-stdin\n");

    // Detached, managed with cratectl, seen by ctr.
    ok(ctr(
        &daemon,
        &ours,
        &["run", "-d", IMAGE, "cr3", "/bin/sh", "-c", "sleep 1000"],
    ));
    let ls = ok(ctr(&daemon, &ours, &["tasks", "ls"]));
    assert!(
        ls.lines()
            .any(|l| l.starts_with("cr3") && l.contains("RUNNING")),
        "{ls}"
    );
    assert_eq!(task_status(&daemon, &bin, "cr3"), "RUNNING");
    let containers = ok(ctr(&daemon, &ours, &["containers", "ls"]));
    assert!(containers.contains("cr3") && containers.contains("io.containerd.runc.v2"));
    let info = ok(ctr(&daemon, &ours, &["containers", "info", "cr3"]));
    assert!(info.contains("\"cgroupsPath\": \"/default/cr3\""), "{info}");
    let ps = ok(ctr(&daemon, &ours, &["tasks", "ps", "cr3"]));
    assert!(ps.lines().count() >= 2, "{ps}");
    let metrics = ok(ctr(&daemon, &ours, &["tasks", "metrics", "cr3"]));
    assert!(metrics.contains("io.containerd.cgroups"), "{metrics}");
    ok(ctr(&daemon, &ours, &["tasks", "rm", "-f", "cr3"]));
    ok(ctr(&daemon, &ours, &["containers", "rm", "cr3"]));
    assert!(ok(ctr(&daemon, &bin, &["containers", "ls", "-q"]))
        .trim()
        .is_empty());

    // A terminal: `script` gives cratectl a pty, the container sees one too.
    let line = format!(
        "{} --address {} run -t --rm {IMAGE} cr4 /bin/sh -c 'tty; exit 4'",
        ours.display(),
        daemon.socket.display()
    );
    let out = crated_testsupport::output_within(
        Command::new("script").args(["-qefc", &line, "/dev/null"]),
        Duration::from_secs(60),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{text}");
    assert!(text.contains("/dev/pts/"), "{text}");
    assert!(bundles(&daemon).is_empty(), "{:?}", bundles(&daemon));
}

#[test]
fn cratectl_create_start_exec_attach_and_named_image_users() {
    let Some((daemon, bin, work)) = setup("overlayfs") else {
        return;
    };
    clear_stale_runc_state(&["cc1", "cu1", "cu2"]);
    let cc1_fifos = || -> Vec<PathBuf> {
        std::fs::read_dir("/run/crated/fifo")
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("cc1-"))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    };
    for stale in cc1_fifos() {
        let _ = std::fs::remove_dir_all(stale);
    }
    let ours = cratectl();
    // A container made without a task, then started detached and managed.
    ok(ctr(
        &daemon,
        &ours,
        &[
            "containers",
            "create",
            "--label",
            "team=a",
            IMAGE,
            "cc1",
            "/bin/sh",
            "-c",
            "echo started; sleep 1000",
        ],
    ));
    let info = ok(ctr(&daemon, &bin, &["containers", "info", "cc1"]));
    assert!(info.contains("\"team\": \"a\""), "{info}");
    assert_eq!(task_status(&daemon, &bin, "cc1"), "none");
    ok(ctr(&daemon, &ours, &["tasks", "start", "-d", "cc1"]));
    assert_eq!(task_status(&daemon, &bin, "cc1"), "RUNNING");

    // exec: output, stdin, exit status; the process is gone after.
    let out = ctr(
        &daemon,
        &ours,
        &[
            "tasks",
            "exec",
            "--exec-id",
            "x1",
            "cc1",
            "/bin/sh",
            "-c",
            "echo in-exec; exit 6",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "in-exec\n");
    let missing = ctr(&daemon, &ours, &["tasks", "exec", "cc1", "/bin/true"]);
    assert!(!missing.status.success());

    // attach: a client on the detached task's FIFOs sees its exit.
    let mut attached = std::process::Command::new(&ours)
        .arg("--address")
        .arg(&daemon.socket)
        .args(["tasks", "attach", "cc1"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    ok(ctr(
        &daemon,
        &bin,
        &["tasks", "kill", "-s", "SIGKILL", "cc1"],
    ));
    wait_until(
        Duration::from_secs(10),
        || matches!(attached.try_wait(), Ok(Some(_))),
        || "attach still waits".into(),
    );
    assert_eq!(attached.wait().unwrap().code(), Some(137));
    // The detached start left its FIFOs for attaching; removing the task removes them.
    assert_eq!(cc1_fifos().len(), 1, "{:?}", cc1_fifos());
    ok(ctr(&daemon, &ours, &["tasks", "rm", "cc1"]));
    let fifo_dirs = cc1_fifos();
    assert!(fifo_dirs.is_empty(), "FIFOs left: {fifo_dirs:?}");
    ok(ctr(&daemon, &ours, &["containers", "rm", "cc1"]));

    // The image's User by name, looked up in the image's own /etc/passwd and /etc/group.
    let archive = work.path().join("users.tar");
    let import_as = |name: &str, user: &str| {
        crated_testsupport::oci::busybox_as_user(name, user).write_archive(&archive);
        ok(ctr(
            &daemon,
            &bin,
            &[
                "images",
                "import",
                "--snapshotter",
                "overlayfs",
                archive.to_str().unwrap(),
            ],
        ));
    };
    import_as("docker.io/library/users:1", "www:staff");
    let out = ok(ctr(
        &daemon,
        &ours,
        &[
            "run",
            "--rm",
            "docker.io/library/users:1",
            "cu1",
            "/bin/sh",
            "-c",
            "id -u; id -g",
        ],
    ));
    assert_eq!(out, "33\n50\n");
    import_as("docker.io/library/users:2", "nobody");
    let out = ctr(
        &daemon,
        &ours,
        &[
            "run",
            "--rm",
            "docker.io/library/users:2",
            "cu2",
            "/bin/true",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"nobody\" is not in /etc/passwd"), "{err}");
    // Nothing is left of the container that could not be made.
    assert!(ok(ctr(&daemon, &bin, &["containers", "ls", "-q"]))
        .trim()
        .is_empty());
    let snaps = ok(ctr(&daemon, &bin, &["snapshots", "ls"]));
    assert!(!snaps.contains("cu2"), "{snaps}");
}

/// A container's snapshot is made before its record; a collection in between (here one after
/// every synchronous lease removal another client makes) must not take it, as containerd's
/// client holds a lease over the two. The image names its user, so each creation mounts the rootfs to look it up
/// and the gap between snapshot and record is wide.
#[test]
fn containers_made_while_collections_run_keep_their_snapshots() {
    let Some((daemon, bin, work)) = setup("overlayfs") else {
        return;
    };
    let archive = work.path().join("named-user.tar");
    crated_testsupport::oci::busybox_as_user("docker.io/library/named-user:1", "www:staff")
        .write_archive(&archive);
    ok(ctr(
        &daemon,
        &bin,
        &["images", "import", "--snapshotter", "overlayfs"]
            .into_iter()
            .chain([archive.to_str().unwrap()])
            .collect::<Vec<_>>(),
    ));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let (stop, socket, bin) = (stop.clone(), daemon.socket.clone(), bin.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let id = format!("churn-{n}");
                for args in [
                    &["leases", "create", "--id"][..],
                    &["leases", "rm", "--sync"],
                ] {
                    let out = Command::new(&bin)
                        .arg("--address")
                        .arg(&socket)
                        .args(args)
                        .arg(&id)
                        .output()
                        .unwrap();
                    assert!(out.status.success(), "{out:?}");
                }
                n += 1;
            }
            n
        })
    };
    let ours = cratectl();
    let ids: Vec<String> = (0..12).map(|i| format!("gc-race-{i}")).collect();
    for id in &ids {
        let made = ctr(
            &daemon,
            &ours,
            &["containers", "create", "docker.io/library/named-user:1", id],
        );
        let info = ctr(
            &daemon,
            &bin,
            &["snapshots", "--snapshotter", "overlayfs", "info", id],
        );
        if !made.status.success() || !info.status.success() {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            panic!(
                "{id}: create {:?} / snapshot info {:?}",
                String::from_utf8_lossy(&made.stderr),
                String::from_utf8_lossy(&info.stderr)
            );
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let collections = churn.join().unwrap();
    assert!(
        collections > 0,
        "no lease was removed while containers were made"
    );
    for id in &ids {
        ok(ctr(&daemon, &ours, &["containers", "rm", id]));
    }
}
